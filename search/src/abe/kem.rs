//! CCA-secure wrapping of short secrets: FABEO encapsulation made deterministic in a seed
//! `sigma` (Fujisaki-Okamoto), then a one-time encrypt-then-MAC DEM keyed from `sigma`.
//!
//! Wrap (see `search/CRYPTO.md` for the full equations):
//! 1. `sigma` <- 32 random bytes; coins `(s0, s_1..s_tau, v_2..v_n2) = G(sigma, policy)`.
//! 2. FABEO: `C0 = h^s0`, `C_j = h^{s_j}`, `C_i = H(b)^{lambda_i} H(rho(i))^{s_{j(i)}}` with
//!    `lambda = M (s0, v)`, and `Z = e(g,h)^{alpha s0}`.
//! 3. `c_sigma = sigma XOR HKDF(Z)`; header = encoding of (policy, C0, C_j, C_i, c_sigma).
//! 4. `(k_enc, k_mac) = HKDF(sigma, SHA-256(header))`; `payload = secret XOR stream(k_enc)`,
//!    `tag = HMAC-SHA256(k_mac, SHA-256(header) || aad || payload)`.
//!
//! Unwrap recovers `Z` with three pairings, then `sigma`, re-derives the coins and checks that
//! the whole header is exactly the deterministic encryption of `sigma` before it checks the tag.

use std::fmt;

use ark_bls12_381::{Bls12_381, Fr, G1Affine, G1Projective, G2Affine};
use ark_ec::pairing::Pairing;
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{One, UniformRand, Zero};
use ark_serialize::CanonicalSerialize;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::encoding::{Reader, Writer, kind};
use super::{Gt, PublicParams, UserKey, fixed, hash, random_nonzero};
use crate::error::AbeError;
use crate::policy::{Lsss, MAX_POLICY_LEN, Policy};

type G2Prepared = <Bls12_381 as Pairing>::G2Prepared;

/// Longest secret [`wrap`] accepts, in bytes (it is meant for keys, not records).
pub const MAX_SECRET_LEN: usize = 4096;

const COINS_SALT: &[u8] = b"ehr-search/abe/v1/fo-coins";
const MASK_SALT: &[u8] = b"ehr-search/abe/v1/kem-mask";
const DEM_SALT: &[u8] = b"ehr-search/abe/v1/dem";
const BATCH_DOMAIN: &[u8] = b"ehr-search/abe/v1/batch-check";

/// A secret wrapped under a policy: the FABEO ciphertext, the masked seed and the DEM part.
///
/// Public data (it travels on the ledger); only the policy is meaningful to read.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    policy: Policy,
    c0: G2Affine,
    cj: Vec<G2Affine>,
    rows: Vec<G1Affine>,
    c_sigma: [u8; 32],
    payload: Vec<u8>,
    tag: [u8; 32],
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("policy", &self.policy)
            .field("rows", &self.rows.len())
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// The FO coins; secret, zeroized on drop.
struct Coins {
    s: Vec<Fr>,
    v: Vec<Fr>,
}

impl Drop for Coins {
    fn drop(&mut self) {
        self.s.zeroize();
        self.v.zeroize();
    }
}

impl Coins {
    /// `G(sigma, policy)`: `v[0] = s0`, `v[1..]` the LSSS randomness, `s[j]` per occurrence.
    fn derive(sigma: &[u8; 32], policy_text: &str, lsss: &Lsss) -> Coins {
        let mut seed = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(COINS_SALT), sigma)
            .expand(policy_text.as_bytes(), &mut seed[..])
            .expect("HKDF invariant: 32 bytes is a valid output length");
        let mut rng = ChaCha20Rng::from_seed(*seed);
        let mut v = Vec::with_capacity(lsss.columns());
        v.push(random_nonzero(&mut rng));
        for _ in 1..lsss.columns() {
            v.push(Fr::rand(&mut rng));
        }
        let s = (0..lsss.max_occurrence())
            .map(|_| random_nonzero(&mut rng))
            .collect();
        Coins { s, v }
    }

    fn s0(&self) -> Fr {
        self.v[0]
    }
}

fn mask(z: &Gt) -> Zeroizing<[u8; 32]> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(576));
    z.serialize_compressed(&mut *bytes)
        .expect("encoding invariant: writing to a Vec cannot fail");
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(MASK_SALT), &bytes)
        .expand(b"sigma mask", &mut out[..])
        .expect("HKDF invariant: 32 bytes is a valid output length");
    out
}

fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

/// DEM: `(k_enc, k_mac) = HKDF(sigma, header digest)`; keystream from `k_enc`.
struct Dem {
    keys: Zeroizing<[u8; 64]>,
}

impl Dem {
    fn new(sigma: &[u8; 32], header_digest: &[u8; 32]) -> Dem {
        let mut keys = Zeroizing::new([0u8; 64]);
        Hkdf::<Sha256>::new(Some(DEM_SALT), sigma)
            .expand(header_digest, &mut keys[..])
            .expect("HKDF invariant: 64 bytes is a valid output length");
        Dem { keys }
    }

    fn apply_stream(&self, data: &mut [u8]) {
        let hk = Hkdf::<Sha256>::from_prk(&self.keys[..32])
            .expect("HKDF invariant: a 32-byte PRK is long enough");
        let mut stream = Zeroizing::new(vec![0u8; data.len()]);
        hk.expand(b"dem stream", &mut stream)
            .expect("HKDF invariant: MAX_SECRET_LEN is within 255 blocks");
        for (d, s) in data.iter_mut().zip(stream.iter()) {
            *d ^= s;
        }
    }

    fn tag(&self, header_digest: &[u8; 32], aad: &[u8], payload: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.keys[32..])
            .expect("HMAC invariant: any key length is accepted");
        mac.update(header_digest);
        mac.update(&(aad.len() as u64).to_be_bytes());
        mac.update(aad);
        mac.update(&(payload.len() as u64).to_be_bytes());
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }
}

/// The FABEO ciphertext components for the given coins.
fn encapsulate(lsss: &Lsss, coins: &Coins) -> (G2Affine, Vec<G2Affine>, Vec<G1Affine>) {
    let c0 = fixed::h_mul(&coins.s0());
    let cj = fixed::h_mul_many(&coins.s);
    let mut lambdas: Vec<Fr> = (0..lsss.rows().len())
        .map(|i| lsss.share(i, &coins.v))
        .collect();
    let b_parts = fixed::b_mul_many(&lambdas);
    lambdas.zeroize();
    let rows: Vec<G1Projective> = lsss
        .rows()
        .iter()
        .zip(&b_parts)
        .map(|(row, b)| *b + hash::attribute_point(&row.attribute) * coins.s[row.occurrence])
        .collect();
    (c0, cj, G1Projective::normalize_batch(&rows))
}

impl WrappedKey {
    /// The policy the secret is wrapped under.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The encoding of everything but the DEM part (the "header" bound into the DEM keys).
    fn header_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(kind::WRAPPED_KEY);
        w.bytes16(self.policy.to_string().as_bytes());
        w.point(&self.c0);
        w.u16(u16::try_from(self.cj.len()).expect("invariant: tau <= MAX_LEAVES"));
        for c in &self.cj {
            w.point(c);
        }
        w.u16(u16::try_from(self.rows.len()).expect("invariant: rows <= MAX_LEAVES"));
        for c in &self.rows {
            w.point(c);
        }
        w.raw(&self.c_sigma);
        w.buf
    }

    fn header_digest(&self) -> [u8; 32] {
        Sha256::digest(self.header_bytes()).into()
    }

    /// Versioned encoding: kind 0x05, version 1, `u16 len, policy` (canonical text), `C0` (G2),
    /// `u16 tau`, `tau` G2 points `C_j`, `u16 n1`, `n1` G1 points `C_i` (one per policy
    /// attribute occurrence, in order), 32-byte `c_sigma`, `u16 len, payload`, 32-byte tag.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.header_bytes();
        let mut w = Writer { buf: Vec::new() };
        w.bytes16(&self.payload);
        w.raw(&self.tag);
        b.extend_from_slice(&w.buf);
        b
    }

    /// Decodes a wrapped key: the policy must be canonical and its shape must match the
    /// number of components; all points are checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AbeError> {
        const WHAT: &str = "wrapped key";
        let bad = |field, reason| AbeError::Decode {
            what: WHAT,
            field,
            reason,
        };
        let mut r = Reader::new(bytes, WHAT, kind::WRAPPED_KEY)?;
        let text =
            std::str::from_utf8(r.bytes16("policy")?).map_err(|_| bad("policy", "not UTF-8"))?;
        let policy = Policy::parse(text)?;
        if policy.to_string() != text {
            return Err(bad("policy", "not in canonical form"));
        }
        let lsss = policy.lsss();
        let c0 = r.g2("c0")?;
        let tau = r.u16("tau")? as usize;
        if tau != lsss.max_occurrence() {
            return Err(bad("tau", "does not match the policy"));
        }
        let mut cj = Vec::with_capacity(tau);
        for _ in 0..tau {
            cj.push(r.g2("c_j")?);
        }
        let n1 = r.u16("rows")? as usize;
        if n1 != lsss.rows().len() {
            return Err(bad("rows", "does not match the policy's attribute count"));
        }
        let mut rows = Vec::with_capacity(n1);
        for _ in 0..n1 {
            rows.push(r.g1("c_i")?);
        }
        let c_sigma = r.array32("c_sigma")?;
        let payload = r.bytes16("payload")?.to_vec();
        if payload.is_empty() || payload.len() > MAX_SECRET_LEN {
            return Err(bad("payload", "must be 1 to 4096 bytes"));
        }
        let tag = r.array32("tag")?;
        r.finish()?;
        Ok(WrappedKey {
            policy,
            c0,
            cj,
            rows,
            c_sigma,
            payload,
            tag,
        })
    }
}

/// Wraps `secret` (1 to [`MAX_SECRET_LEN`] bytes) under `policy`, binding `aad`.
pub fn wrap<R: RngCore + CryptoRng + ?Sized>(
    pp: &PublicParams,
    policy: &Policy,
    secret: &[u8],
    aad: &[u8],
    rng: &mut R,
) -> Result<WrappedKey, AbeError> {
    if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return Err(AbeError::InvalidInput {
            field: "secret",
            reason: format!("must be 1 to {MAX_SECRET_LEN} bytes, got {}", secret.len()),
        });
    }
    let text = policy.to_string();
    if text.len() > MAX_POLICY_LEN {
        return Err(AbeError::InvalidInput {
            field: "policy",
            reason: format!("canonical text is longer than {MAX_POLICY_LEN} bytes"),
        });
    }
    let mut sigma = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut sigma[..]);
    let lsss = policy.lsss();
    let coins = Coins::derive(&sigma, &text, &lsss);
    let (c0, cj, rows) = encapsulate(&lsss, &coins);
    let z = Zeroizing::new(pp.egh_alpha * coins.s0());
    drop(coins);
    let c_sigma = xor32(&sigma, &mask(&z));
    let mut wk = WrappedKey {
        policy: policy.clone(),
        c0,
        cj,
        rows,
        c_sigma,
        payload: secret.to_vec(),
        tag: [0u8; 32],
    };
    let digest = wk.header_digest();
    let dem = Dem::new(&sigma, &digest);
    dem.apply_stream(&mut wk.payload);
    wk.tag = dem.tag(&digest, aad, &wk.payload);
    Ok(wk)
}

/// Unwraps a secret with a user key. Fails with [`AbeError::NotSatisfied`] if the key's
/// attributes do not satisfy the policy, and with [`AbeError::DecryptionFailed`] for any
/// tampering, a different `aad` or a key that is not valid under these parameters.
pub fn unwrap(key: &UserKey, wk: &WrappedKey, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, AbeError> {
    let lsss = wk.policy.lsss();
    let omega = lsss
        .reconstruct(key.attributes())
        .ok_or(AbeError::NotSatisfied)?;
    let body = &key.body;
    let tau = lsss.max_occurrence();

    // A = sum w_i C_i and B_j = sum_{i: j(i)=j} w_i K3_{rho(i)}.
    let mut a_bases = Vec::with_capacity(omega.len());
    let mut a_scalars = Vec::with_capacity(omega.len());
    let mut b_bases: Vec<Vec<G1Affine>> = vec![Vec::new(); tau];
    let mut b_scalars: Vec<Vec<Fr>> = vec![Vec::new(); tau];
    for (i, w) in &omega {
        let row = &lsss.rows()[*i];
        let k3 = body
            .attrs
            .get(&row.attribute)
            .ok_or(AbeError::NotSatisfied)?;
        a_bases.push(wk.rows[*i]);
        a_scalars.push(*w);
        b_bases[row.occurrence].push(*k3);
        b_scalars[row.occurrence].push(*w);
    }
    let lincomb = |bases: &[G1Affine], scalars: &[Fr]| -> G1Projective {
        if scalars.iter().all(One::is_one) {
            bases.iter().fold(G1Projective::zero(), |acc, p| acc + p)
        } else {
            G1Projective::msm(bases, scalars).expect("MSM invariant: equal lengths")
        }
    };
    let a = lincomb(&a_bases, &a_scalars);
    let mut g1s: Vec<G1Projective> = vec![body.k2.into_group(), -a];
    let mut g2s: Vec<G2Prepared> = vec![wk.c0.into(), key.k1_prepared().clone()];
    for j in 0..tau {
        if !b_bases[j].is_empty() {
            g1s.push(lincomb(&b_bases[j], &b_scalars[j]));
            g2s.push(wk.cj[j].into());
        }
    }
    let g1a = G1Projective::normalize_batch(&g1s);
    g1s.zeroize();
    b_bases.iter_mut().for_each(Zeroize::zeroize);
    let z = Zeroizing::new(Bls12_381::multi_pairing(g1a, g2s));
    let sigma = Zeroizing::new(xor32(&wk.c_sigma, &mask(&z)));

    // Fujisaki-Okamoto: the header must be the deterministic encryption of sigma.
    let text = wk.policy.to_string();
    let coins = Coins::derive(&sigma, &text, &lsss);
    if !g2_match(&coins, wk) {
        return Err(AbeError::DecryptionFailed);
    }
    let digest = wk.header_digest();
    if !rows_match(&lsss, &coins, &wk.rows, &sigma, &digest) {
        return Err(AbeError::DecryptionFailed);
    }
    drop(coins);

    let dem = Dem::new(&sigma, &digest);
    let tag = dem.tag(&digest, aad, &wk.payload);
    if !bool::from(tag.ct_eq(&wk.tag)) {
        return Err(AbeError::DecryptionFailed);
    }
    let mut out = Zeroizing::new(wk.payload.clone());
    dem.apply_stream(&mut out);
    Ok(out)
}

/// Checks `C0 == h^{s0}` and every `C'_j == h^{s_j}`, in projective coordinates (no
/// normalisation).
fn g2_match(coins: &Coins, wk: &WrappedKey) -> bool {
    let mut ok = fixed::h_mul_projective(&coins.s0()) == wk.c0;
    for (s_j, c_j) in coins.s.iter().zip(&wk.cj) {
        ok &= fixed::h_mul_projective(s_j) == *c_j;
    }
    ok && coins.s.len() == wk.cj.len()
}

/// Checks every `C_i == H(b)^{lambda_i} H(rho(i))^{s_{j(i)}}` at once, in two rounds: with
/// random odd 64-bit `d_i` (derived from `sigma` and the header),
/// `sum d_i C_i == H(b)^{sum d_i lambda_i} * sum_j s_j (sum_{j(i)=j} d_i H(rho(i)))`.
/// A header with any wrong row passes one round with probability at most 2^-63 (for fixed
/// other `d`, one value of `d_k` mod r cancels the error), both with at most 2^-126; the `d_i`
/// depend on the header, so they cannot be chosen around. 64-bit scalars keep the
/// multi-scalar multiplications about four times cheaper than full-size ones.
fn rows_match(
    lsss: &Lsss,
    coins: &Coins,
    rows: &[G1Affine],
    sigma: &[u8; 32],
    digest: &[u8; 32],
) -> bool {
    let mut seed_hasher = Sha256::new();
    seed_hasher.update(BATCH_DOMAIN);
    seed_hasher.update(sigma);
    seed_hasher.update(digest);
    let mut rng = ChaCha20Rng::from_seed(seed_hasher.finalize().into());
    let n = rows.len();
    let attr_points: Vec<G1Affine> = lsss
        .rows()
        .iter()
        .map(|r| hash::attribute_point(&r.attribute))
        .collect();
    let mut lambdas: Vec<Fr> = (0..n).map(|i| lsss.share(i, &coins.v)).collect();
    let mut ok = true;
    for _round in 0..2 {
        let d: Vec<u64> = (0..n).map(|_| rng.next_u64() | 1).collect();
        let lhs = G1Projective::msm_u64(rows, &d);
        let mut b_coeff = Fr::zero();
        for (di, lambda) in d.iter().zip(&lambdas) {
            b_coeff += Fr::from(*di) * lambda;
        }
        let mut rhs = fixed::b_mul(&b_coeff).into_group();
        b_coeff.zeroize();
        for (j, s_j) in coins.s.iter().enumerate() {
            let (bases, ds): (Vec<G1Affine>, Vec<u64>) = lsss
                .rows()
                .iter()
                .enumerate()
                .filter(|(_, r)| r.occurrence == j)
                .map(|(i, _)| (attr_points[i], d[i]))
                .unzip();
            rhs += G1Projective::msm_u64(&bases, &ds) * s_j;
        }
        ok &= lhs == rhs;
    }
    lambdas.zeroize();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abe::{keygen, setup};

    #[test]
    fn tampering_any_byte_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (pp, msk) = setup(&mut rng);
        let key = keygen(&pp, &msk, b"u", ["a:1", "b:2", "c:3"], &mut rng).unwrap();
        let pol = Policy::parse("a:1 and (b:2 or 2 of (c:3, d:4, a:1))").unwrap();
        let wk = wrap(&pp, &pol, &[42u8; 32], b"ctx", &mut rng).unwrap();
        assert_eq!(&unwrap(&key, &wk, b"ctx").unwrap()[..], &[42u8; 32]);
        assert_eq!(
            unwrap(&key, &wk, b"ctx2").unwrap_err(),
            AbeError::DecryptionFailed
        );
        let bytes = wk.to_bytes();
        assert_eq!(WrappedKey::from_bytes(&bytes).unwrap(), wk);
        // Flip one bit in every byte position past the header: decoding or unwrapping fails.
        let step = 7;
        for pos in (2..bytes.len()).step_by(step) {
            let mut b = bytes.clone();
            b[pos] ^= 0x04;
            if let Ok(t) = WrappedKey::from_bytes(&b) {
                assert!(unwrap(&key, &t, b"ctx").is_err(), "byte {pos} accepted");
            }
        }
    }

    #[test]
    fn a_replaced_row_is_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let (pp, msk) = setup(&mut rng);
        let key = keygen(&pp, &msk, b"u", ["a:1"], &mut rng).unwrap();
        // The key uses only the a:1 row; the b:2 row is unused in decryption but still checked.
        let pol = Policy::parse("a:1 or b:2").unwrap();
        let mut wk = wrap(&pp, &pol, b"secret", b"", &mut rng).unwrap();
        wk.rows[1] = (wk.rows[1] + G1Affine::generator()).into_affine();
        assert_eq!(
            unwrap(&key, &wk, b"").unwrap_err(),
            AbeError::DecryptionFailed
        );
    }

    #[test]
    fn tampered_or_swapped_rows_are_rejected_with_repeated_attributes() {
        let mut rng = ChaCha20Rng::seed_from_u64(15);
        let (pp, msk) = setup(&mut rng);
        let key = keygen(&pp, &msk, b"u", ["a:1", "b:2"], &mut rng).unwrap();
        let pol = Policy::parse("(a:1 and b:2) or (a:1 and c:3)").unwrap();
        let wk = wrap(&pp, &pol, b"s", b"", &mut rng).unwrap();
        for i in 0..wk.rows.len() {
            let mut t = wk.clone();
            t.rows[i] = (t.rows[i] + hash::b_point()).into_affine();
            assert_eq!(
                unwrap(&key, &t, b"").unwrap_err(),
                AbeError::DecryptionFailed,
                "row {i}"
            );
        }
        let mut t = wk.clone();
        t.rows.swap(0, 2);
        assert_eq!(
            unwrap(&key, &t, b"").unwrap_err(),
            AbeError::DecryptionFailed
        );
        let mut t = wk.clone();
        t.cj.swap(0, 1);
        assert_eq!(
            unwrap(&key, &t, b"").unwrap_err(),
            AbeError::DecryptionFailed
        );
    }

    #[test]
    fn repeated_attributes_use_separate_randomness() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let (pp, msk) = setup(&mut rng);
        let pol = Policy::parse("(a:1 and b:2) or (a:1 and c:3)").unwrap();
        let wk = wrap(&pp, &pol, b"s", b"", &mut rng).unwrap();
        assert_eq!(wk.cj.len(), 2);
        let ab = keygen(&pp, &msk, b"u", ["a:1", "b:2"], &mut rng).unwrap();
        let ac = keygen(&pp, &msk, b"v", ["a:1", "c:3"], &mut rng).unwrap();
        let a = keygen(&pp, &msk, b"w", ["a:1"], &mut rng).unwrap();
        assert_eq!(&unwrap(&ab, &wk, b"").unwrap()[..], b"s");
        assert_eq!(&unwrap(&ac, &wk, b"").unwrap()[..], b"s");
        assert_eq!(unwrap(&a, &wk, b"").unwrap_err(), AbeError::NotSatisfied);
    }

    #[test]
    fn wrap_rejects_bad_secrets() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let (pp, _) = setup(&mut rng);
        let pol = Policy::parse("a:1").unwrap();
        assert!(matches!(
            wrap(&pp, &pol, b"", b"", &mut rng),
            Err(AbeError::InvalidInput {
                field: "secret",
                ..
            })
        ));
        assert!(wrap(&pp, &pol, &vec![0u8; MAX_SECRET_LEN + 1], b"", &mut rng).is_err());
    }
}
