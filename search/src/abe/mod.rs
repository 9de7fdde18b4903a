//! FABEO CP-ABE (Riepel-Wee, CCS 2022, Fig. 1 left) on BLS12-381, used as a CCA-secure KEM to
//! wrap short secrets, with t-of-n threshold key issuance.
//!
//! - [`setup`] / [`keygen`]: a single authority (tests, benches, single-node deployments).
//! - [`setup_dealer`], [`MasterKeyShare::issue_partial`], [`PublicParams::verify_partial`],
//!   [`combine`]: the master secret shared among the validators; a user combines any `t`
//!   verified partial keys into a [`UserKey`].
//! - [`wrap`] / [`unwrap`]: encrypt a short secret (a data key or search key) under a
//!   [`Policy`]; a Fujisaki-Okamoto transform makes it CCA-secure.
//!
//! The equations, encodings and the security argument are in `search/CRYPTO.md`.

mod encoding;
mod fixed;
pub mod hash;
mod kem;
mod threshold;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use ark_bls12_381::{Bls12_381, Fr, G1Affine, G1Projective, G2Affine};
use ark_ec::pairing::{Pairing, PairingOutput};
use ark_ec::{AffineRepr, CurveGroup};
use ark_ff::{UniformRand, Zero};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroize;

use crate::error::AbeError;
use crate::policy::validate_attribute;
use encoding::{Reader, Writer, kind};

pub use kem::{MAX_SECRET_LEN, WrappedKey, unwrap, wrap};
pub use threshold::{PartialKey, combine, setup_dealer};

/// The target group GT of the BLS12-381 pairing (written additively by arkworks).
pub type Gt = PairingOutput<Bls12_381>;

/// Longest accepted user / key-request identifier, in bytes.
pub const MAX_USER_ID_LEN: usize = 256;
/// Most attributes one key may hold.
pub const MAX_KEY_ATTRIBUTES: usize = 1024;
/// Most validators (shares) the threshold setup supports.
pub const MAX_VALIDATORS: usize = 256;

/// `e(g, h)` for the standard generators, computed once.
fn egh() -> Gt {
    static EGH: OnceLock<Gt> = OnceLock::new();
    *EGH.get_or_init(|| Bls12_381::pairing(G1Affine::generator(), G2Affine::generator()))
}

/// A uniformly random non-zero scalar.
fn random_nonzero<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Fr {
    loop {
        let s = Fr::rand(rng);
        if !s.is_zero() {
            return s;
        }
    }
}

/// The public parameters: `e(g,h)^alpha`, the threshold `t` and the validators' verification
/// keys `e(g,h)^{alpha_i}` (one per validator, index `i = 1..=n`).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicParams {
    threshold: u16,
    egh_alpha: Gt,
    vks: Vec<Gt>,
}

impl fmt::Debug for PublicParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicParams")
            .field("threshold", &self.threshold)
            .field("validators", &self.vks.len())
            .finish_non_exhaustive()
    }
}

impl PublicParams {
    /// The number `t` of partial keys needed to form a user key.
    pub fn threshold(&self) -> usize {
        self.threshold as usize
    }

    /// The number `n` of validators holding master-key shares.
    pub fn validators(&self) -> usize {
        self.vks.len()
    }

    /// Versioned encoding: kind 0x01, version 1, `u16 n`, `u16 t`, `e(g,h)^alpha`, then
    /// `n` verification keys (GT elements, 576 bytes each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(kind::PUBLIC_PARAMS);
        w.u16(u16::try_from(self.vks.len()).expect("invariant: n <= MAX_VALIDATORS"));
        w.u16(self.threshold);
        w.point(&self.egh_alpha);
        for vk in &self.vks {
            w.point(vk);
        }
        w.buf
    }

    /// Decodes and validates public parameters, including that the verification keys lie on
    /// one polynomial of degree `t - 1` whose value at 0 is `e(g,h)^alpha`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AbeError> {
        const WHAT: &str = "public parameters";
        let mut r = Reader::new(bytes, WHAT, kind::PUBLIC_PARAMS)?;
        let n = r.u16("validators")? as usize;
        let t = r.u16("threshold")?;
        if n == 0 || n > MAX_VALIDATORS {
            return Err(AbeError::Decode {
                what: WHAT,
                field: "validators",
                reason: "must be between 1 and 256",
            });
        }
        if t == 0 || t as usize > n {
            return Err(AbeError::Decode {
                what: WHAT,
                field: "threshold",
                reason: "must be between 1 and the number of validators",
            });
        }
        let egh_alpha = r.gt("egh_alpha")?;
        let mut vks = Vec::with_capacity(n);
        for _ in 0..n {
            vks.push(r.gt("verification_key")?);
        }
        r.finish()?;
        let pp = PublicParams {
            threshold: t,
            egh_alpha,
            vks,
        };
        pp.verify_consistency()?;
        Ok(pp)
    }
}

/// The master secret `alpha` of a single authority. Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct MasterKey {
    alpha: Fr,
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.alpha.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Versioned encoding: kind 0x06, version 1, the 32-byte scalar. Secret: store it sealed.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut w = Writer::new(kind::MASTER_KEY);
        w.point(&self.alpha);
        zeroize::Zeroizing::new(w.buf)
    }

    /// Decodes a master key (canonical, non-zero scalar).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AbeError> {
        let mut r = Reader::new(bytes, "master key", kind::MASTER_KEY)?;
        let alpha = r.fr("alpha")?;
        r.finish()?;
        Ok(MasterKey { alpha })
    }
}

/// A validator's Shamir share `alpha_i = f(i)` of the master secret. Zeroized on drop;
/// `Debug` shows only the index.
#[derive(Clone)]
pub struct MasterKeyShare {
    index: u32,
    share: Fr,
}

impl Drop for MasterKeyShare {
    fn drop(&mut self) {
        self.share.zeroize();
    }
}

impl fmt::Debug for MasterKeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeyShare")
            .field("index", &self.index)
            .field("share", &"<redacted>")
            .finish()
    }
}

impl MasterKeyShare {
    /// The validator's index `i` (1-based), its x-coordinate in the sharing.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Versioned encoding: kind 0x02, version 1, `u32 index`, the 32-byte share. Secret.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut w = Writer::new(kind::MASTER_KEY_SHARE);
        w.u32(self.index);
        w.point(&self.share);
        zeroize::Zeroizing::new(w.buf)
    }

    /// Decodes a share (index >= 1, canonical non-zero scalar).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AbeError> {
        const WHAT: &str = "master key share";
        let mut r = Reader::new(bytes, WHAT, kind::MASTER_KEY_SHARE)?;
        let index = r.u32("index")?;
        if index == 0 || index as usize > MAX_VALIDATORS {
            return Err(AbeError::Decode {
                what: WHAT,
                field: "index",
                reason: "must be between 1 and 256",
            });
        }
        let share = r.fr("share")?;
        r.finish()?;
        Ok(MasterKeyShare { index, share })
    }
}

/// The common body of user keys and partial keys:
/// `K1 = h^r`, `K2 = g^alpha H(b)^r`, `K3_y = H(y)^r` for each attribute `y`.
#[derive(Clone, PartialEq, Eq)]
struct KeyBody {
    user_id: Vec<u8>,
    k1: G2Affine,
    k2: G1Affine,
    attrs: BTreeMap<String, G1Affine>,
}

impl Drop for KeyBody {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
        for p in self.attrs.values_mut() {
            p.zeroize();
        }
    }
}

impl KeyBody {
    fn write(&self, w: &mut Writer) {
        w.bytes16(&self.user_id);
        w.point(&self.k1);
        w.point(&self.k2);
        w.u16(u16::try_from(self.attrs.len()).expect("invariant: attrs <= MAX_KEY_ATTRIBUTES"));
        for (name, p) in &self.attrs {
            w.bytes16(name.as_bytes());
            w.point(p);
        }
    }

    fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Self, AbeError> {
        let bad = |field, reason| AbeError::Decode {
            what,
            field,
            reason,
        };
        let user_id = r.bytes16("user_id")?.to_vec();
        if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
            return Err(bad("user_id", "must be 1 to 256 bytes"));
        }
        let k1 = r.g2("k1")?;
        let k2 = r.g1("k2")?;
        let m = r.u16("attribute_count")? as usize;
        if m == 0 || m > MAX_KEY_ATTRIBUTES {
            return Err(bad("attribute_count", "must be between 1 and 1024"));
        }
        let mut attrs = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..m {
            let name = std::str::from_utf8(r.bytes16("attribute")?)
                .map_err(|_| bad("attribute", "not UTF-8"))?
                .to_owned();
            validate_attribute(&name).map_err(|_| bad("attribute", "not a valid key:value"))?;
            if last.as_ref().is_some_and(|l| *l >= name) {
                return Err(bad("attribute", "attributes must be strictly ascending"));
            }
            last = Some(name.clone());
            let p = r.g1("attribute_point")?;
            attrs.insert(name, p);
        }
        Ok(KeyBody {
            user_id,
            k1,
            k2,
            attrs,
        })
    }

    fn redacted(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("attributes", &self.attrs.len())
            .field("components", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A user's decryption key for a set of attributes. Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct UserKey {
    body: KeyBody,
    /// `K1` prepared for the pairing (its Miller-loop line coefficients), computed on the first
    /// unwrap and reused by every later one. Derived from `K1`, so it is as secret as the key.
    k1_prepared: OnceLock<PreparedG2>,
}

impl PartialEq for UserKey {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body
    }
}

impl Eq for UserKey {}

/// A prepared G2 point of a key, zeroized on drop.
#[derive(Clone)]
struct PreparedG2(<Bls12_381 as Pairing>::G2Prepared);

impl Drop for PreparedG2 {
    fn drop(&mut self) {
        for (a, b, c) in &mut self.0.ell_coeffs {
            a.zeroize();
            b.zeroize();
            c.zeroize();
        }
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.body.redacted("UserKey", f)
    }
}

impl UserKey {
    fn new(body: KeyBody) -> UserKey {
        UserKey {
            body,
            k1_prepared: OnceLock::new(),
        }
    }

    /// `K1` prepared for pairings (computed once per key).
    fn k1_prepared(&self) -> &<Bls12_381 as Pairing>::G2Prepared {
        &self
            .k1_prepared
            .get_or_init(|| PreparedG2(self.body.k1.into()))
            .0
    }

    /// The user / key-request identifier the key was issued for.
    pub fn user_id(&self) -> &[u8] {
        &self.body.user_id
    }

    /// The attributes the key holds, sorted.
    pub fn attributes(&self) -> impl Iterator<Item = &str> + '_ {
        self.body.attrs.keys().map(String::as_str)
    }

    /// Versioned encoding: kind 0x03, version 1, then `u16 len, user_id`, `K1` (G2),
    /// `K2` (G1), `u16 m`, and `m` times `u16 len, attribute, K3` (G1), attributes ascending.
    /// Secret: store it sealed.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut w = Writer::new(kind::USER_KEY);
        self.body.write(&mut w);
        zeroize::Zeroizing::new(w.buf)
    }

    /// Decodes a user key (lengths, attribute syntax and order, points checked).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AbeError> {
        let mut r = Reader::new(bytes, "user key", kind::USER_KEY)?;
        let body = KeyBody::read(&mut r, "user key")?;
        r.finish()?;
        Ok(UserKey::new(body))
    }
}

/// Validates and normalises (sorts, de-duplicates) an attribute set for a key.
fn normalize_attrs<I>(attrs: I) -> Result<BTreeSet<String>, AbeError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut set = BTreeSet::new();
    for a in attrs {
        let a = a.as_ref();
        validate_attribute(a)?;
        set.insert(a.to_owned());
        if set.len() > MAX_KEY_ATTRIBUTES {
            return Err(AbeError::InvalidInput {
                field: "attributes",
                reason: format!("more than {MAX_KEY_ATTRIBUTES} attributes"),
            });
        }
    }
    if set.is_empty() {
        return Err(AbeError::InvalidInput {
            field: "attributes",
            reason: "a key needs at least one attribute".into(),
        });
    }
    Ok(set)
}

fn check_user_id(user_id: &[u8]) -> Result<(), AbeError> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
        return Err(AbeError::InvalidInput {
            field: "user_id",
            reason: format!(
                "must be 1 to {MAX_USER_ID_LEN} bytes, got {}",
                user_id.len()
            ),
        });
    }
    Ok(())
}

/// FABEO KeyGen with master secret (or share) `alpha`: fresh `r`, then
/// `K1 = h^r`, `K2 = g^alpha H(b)^r`, `K3_y = H(y)^r`.
fn issue_body<R: RngCore + CryptoRng + ?Sized>(
    alpha: &Fr,
    user_id: &[u8],
    attrs: &BTreeSet<String>,
    rng: &mut R,
) -> KeyBody {
    let mut r = random_nonzero(rng);
    let k1 = fixed::h_mul(&r);
    let mut g1s: Vec<G1Projective> = Vec::with_capacity(attrs.len() + 1);
    g1s.push(fixed::g_mul(alpha) + fixed::b_mul(&r));
    for a in attrs {
        g1s.push(hash::attribute_point(a) * r);
    }
    r.zeroize();
    let mut affine = G1Projective::normalize_batch(&g1s);
    for p in &mut g1s {
        p.zeroize();
    }
    let k2 = affine[0];
    let body = KeyBody {
        user_id: user_id.to_vec(),
        k1,
        k2,
        attrs: attrs
            .iter()
            .cloned()
            .zip(affine[1..].iter().copied())
            .collect(),
    };
    for p in &mut affine {
        p.zeroize();
    }
    body
}

/// Single-authority setup: a fresh master secret `alpha`, public `e(g,h)^alpha`
/// (`n = t = 1`, the only verification key being `e(g,h)^alpha`).
pub fn setup<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> (PublicParams, MasterKey) {
    let alpha = random_nonzero(rng);
    let egh_alpha = egh() * alpha;
    let pp = PublicParams {
        threshold: 1,
        egh_alpha,
        vks: vec![egh_alpha],
    };
    (pp, MasterKey { alpha })
}

/// Single-authority key generation for `attrs` (validated, de-duplicated), bound to `user_id`.
pub fn keygen<R, I>(
    _pp: &PublicParams,
    msk: &MasterKey,
    user_id: &[u8],
    attrs: I,
    rng: &mut R,
) -> Result<UserKey, AbeError>
where
    R: RngCore + CryptoRng + ?Sized,
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    check_user_id(user_id)?;
    let attrs = normalize_attrs(attrs)?;
    Ok(UserKey::new(issue_body(&msk.alpha, user_id, &attrs, rng)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn keys_and_params_round_trip_through_bytes() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (pp, msk) = setup(&mut rng);
        let key = keygen(
            &pp,
            &msk,
            b"alice",
            ["role:researcher", "org:St. Mary's"],
            &mut rng,
        )
        .expect("keygen");
        assert_eq!(PublicParams::from_bytes(&pp.to_bytes()).unwrap(), pp);
        assert_eq!(UserKey::from_bytes(&key.to_bytes()).unwrap(), key);
        let msk2 = MasterKey::from_bytes(&msk.to_bytes()).unwrap();
        assert_eq!(msk2.alpha, msk.alpha);
        assert_eq!(
            format!("{key:?}"),
            "UserKey { attributes: 2, components: \"<redacted>\", .. }"
        );
        assert_eq!(format!("{msk:?}"), "MasterKey(<redacted>)");
        let pol = Policy::parse("role:researcher").unwrap();
        let wk = wrap(&pp, &pol, b"k", b"", &mut rng).unwrap();
        assert_eq!(&unwrap(&key, &wk, b"").unwrap()[..], b"k");
    }

    #[test]
    fn keygen_rejects_bad_input() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (pp, msk) = setup(&mut rng);
        let none: [&str; 0] = [];
        assert!(matches!(
            keygen(&pp, &msk, b"u", none, &mut rng),
            Err(AbeError::InvalidInput {
                field: "attributes",
                ..
            })
        ));
        assert!(matches!(
            keygen(&pp, &msk, b"u", ["no-colon"], &mut rng),
            Err(AbeError::Policy(_))
        ));
        assert!(matches!(
            keygen(&pp, &msk, b"", ["a:b"], &mut rng),
            Err(AbeError::InvalidInput {
                field: "user_id",
                ..
            })
        ));
    }

    #[test]
    fn decoding_rejects_non_canonical_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (pp, msk) = setup(&mut rng);
        let key = keygen(&pp, &msk, b"bob", ["a:1", "b:2"], &mut rng).unwrap();
        let bytes = key.to_bytes();
        // Wrong kind, wrong version, truncations, trailing byte.
        let mut b = bytes.to_vec();
        b[0] = kind::WRAPPED_KEY;
        assert!(matches!(
            UserKey::from_bytes(&b),
            Err(AbeError::UnsupportedVersion { .. })
        ));
        let mut b = bytes.to_vec();
        b[1] = 9;
        assert!(matches!(
            UserKey::from_bytes(&b),
            Err(AbeError::UnsupportedVersion { .. })
        ));
        for cut in 0..bytes.len() {
            assert!(UserKey::from_bytes(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut b = bytes.to_vec();
        b.push(0);
        assert!(matches!(
            UserKey::from_bytes(&b),
            Err(AbeError::Decode { field: "end", .. })
        ));
        // A flipped bit in K2 gives an invalid point (or one off the subgroup).
        let mut b = bytes.to_vec();
        let k2_at = 2 + 2 + 3 + 96 + 10;
        b[k2_at] ^= 0x01;
        assert!(UserKey::from_bytes(&b).is_err());
    }
}
