//! Threshold key issuance: the FABEO master secret `alpha` is Shamir-shared t-of-n among the
//! validators; validator `i` holding `alpha_i = f(i)` issues a partial key
//! `(h^{r_i}, g^{alpha_i} H(b)^{r_i}, {H(y)^{r_i}})` with its own fresh `r_i`; the user checks
//! each partial against `vk_i = e(g,h)^{alpha_i}` and combines any `t` of them with Lagrange
//! coefficients into a FABEO key with `alpha = sum l_i alpha_i` and `r = sum l_i r_i`.
//!
//! Setup uses a dealer at genesis ([`setup_dealer`]); see `search/CRYPTO.md` for the trust
//! assumption and the argument that this is as secure as single-authority FABEO.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ark_bls12_381::{Bls12_381, Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::pairing::Pairing;
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{UniformRand, Zero};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::encoding::{Reader, Writer, kind};
use super::{
    Gt, KeyBody, MAX_VALIDATORS, MasterKeyShare, PublicParams, UserKey, check_user_id, egh, hash,
    issue_body, normalize_attrs, random_nonzero,
};
use crate::error::AbeError;
use crate::policy::lagrange_at_zero;

const PARTIAL_BATCH_DOMAIN: &[u8] = b"ehr-search/abe/v1/partial-check";
const PARAMS_BATCH_DOMAIN: &[u8] = b"ehr-search/abe/v1/params-check";

/// A validator's partial key for one key request (user identifier and attribute set).
/// Secret (it is a FABEO key under the validator's share): zeroized on drop, redacted `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct PartialKey {
    index: u32,
    body: KeyBody,
}

impl fmt::Debug for PartialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialKey")
            .field("index", &self.index)
            .field("attributes", &self.body.attrs.len())
            .field("components", &"<redacted>")
            .finish()
    }
}

impl PartialKey {
    /// The issuing validator's index (1-based).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Versioned encoding: kind 0x04, version 1, `u32 index`, then the same body as a
    /// [`UserKey`] (user id, `K1`, `K2`, attributes with their points).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut w = Writer::new(kind::PARTIAL_KEY);
        w.u32(self.index);
        self.body.write(&mut w);
        zeroize::Zeroizing::new(w.buf)
    }

    /// Decodes a partial key (it still has to pass [`PublicParams::verify_partial`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AbeError> {
        const WHAT: &str = "partial key";
        let mut r = Reader::new(bytes, WHAT, kind::PARTIAL_KEY)?;
        let index = r.u32("index")?;
        if index == 0 || index as usize > MAX_VALIDATORS {
            return Err(AbeError::Decode {
                what: WHAT,
                field: "index",
                reason: "must be between 1 and 256",
            });
        }
        let body = KeyBody::read(&mut r, WHAT)?;
        r.finish()?;
        Ok(PartialKey { index, body })
    }
}

/// Genesis setup by a trusted dealer: a random `alpha`, a random polynomial `f` of degree
/// `t - 1` with `f(0) = alpha`, shares `alpha_i = f(i)` for `i = 1..=n` and verification keys
/// `e(g,h)^{alpha_i}`. The dealer must erase `alpha` and the shares it handed out.
pub fn setup_dealer<R: RngCore + CryptoRng + ?Sized>(
    n: usize,
    t: usize,
    rng: &mut R,
) -> Result<(PublicParams, Vec<MasterKeyShare>), AbeError> {
    if n == 0 || n > MAX_VALIDATORS {
        return Err(AbeError::InvalidInput {
            field: "n",
            reason: format!("must be between 1 and {MAX_VALIDATORS}, got {n}"),
        });
    }
    if t == 0 || t > n {
        return Err(AbeError::InvalidInput {
            field: "t",
            reason: format!("must be between 1 and n = {n}, got {t}"),
        });
    }
    let mut coeffs: Vec<Fr> = (0..t).map(|_| random_nonzero(rng)).collect();
    let base = egh();
    let egh_alpha = base * coeffs[0];
    let mut shares = Vec::with_capacity(n);
    let mut vks = Vec::with_capacity(n);
    for i in 1..=n {
        let x = Fr::from(i as u64);
        // Horner evaluation of f(x).
        let mut y = Fr::zero();
        for c in coeffs.iter().rev() {
            y = y * x + c;
        }
        vks.push(base * y);
        shares.push(MasterKeyShare {
            index: i as u32,
            share: y,
        });
        y.zeroize();
    }
    coeffs.zeroize();
    let pp = PublicParams {
        threshold: t as u16,
        egh_alpha,
        vks,
    };
    Ok((pp, shares))
}

impl MasterKeyShare {
    /// Issues this validator's partial key for `user_id` (the user / key-request identifier)
    /// and `attrs`, with fresh randomness `r_i`.
    pub fn issue_partial<R, I>(
        &self,
        pp: &PublicParams,
        user_id: &[u8],
        attrs: I,
        rng: &mut R,
    ) -> Result<PartialKey, AbeError>
    where
        R: RngCore + CryptoRng + ?Sized,
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        if self.index as usize > pp.validators() {
            return Err(AbeError::InvalidInput {
                field: "share",
                reason: format!(
                    "index {} exceeds the {} validators",
                    self.index,
                    pp.validators()
                ),
            });
        }
        check_user_id(user_id)?;
        let attrs = normalize_attrs(attrs)?;
        Ok(PartialKey {
            index: self.index,
            body: issue_body(&self.share, user_id, &attrs, rng),
        })
    }
}

impl PublicParams {
    /// Checks a partial key: issued by a known validator, for this `user_id` and exactly this
    /// attribute set, and well formed under the validator's verification key:
    /// `e(K2 + sum d_y K3_y, h) = vk_i * e(H(b) + sum d_y H(y), K1)` for random `d_y`, which
    /// holds (except with probability about 1/r) iff `e(K2, h) = vk_i e(H(b), K1)` and
    /// `e(K3_y, h) = e(H(y), K1)` for every `y`.
    pub fn verify_partial<I>(
        &self,
        user_id: &[u8],
        attrs: I,
        partial: &PartialKey,
    ) -> Result<(), AbeError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let index = partial.index;
        let invalid = |reason| AbeError::InvalidPartial { index, reason };
        if index == 0 || index as usize > self.vks.len() {
            return Err(invalid("no validator has this index"));
        }
        if partial.body.user_id != user_id {
            return Err(invalid("issued for another user or key request"));
        }
        let attrs = normalize_attrs(attrs)?;
        if partial.body.attrs.len() != attrs.len() || !partial.body.attrs.keys().eq(attrs.iter()) {
            return Err(invalid("issued for another attribute set"));
        }
        let mut rng = ChaCha20Rng::from_seed(
            Sha256::new()
                .chain_update(PARTIAL_BATCH_DOMAIN)
                .chain_update(&*partial.to_bytes())
                .finalize()
                .into(),
        );
        let m = partial.body.attrs.len();
        let mut left_bases: Vec<G1Affine> = Vec::with_capacity(m + 1);
        let mut right_bases: Vec<G1Affine> = Vec::with_capacity(m + 1);
        let mut scalars: Vec<Fr> = Vec::with_capacity(m + 1);
        left_bases.push(partial.body.k2);
        right_bases.push(hash::b_point());
        scalars.push(Fr::from(1u64));
        for (name, k3) in &partial.body.attrs {
            left_bases.push(*k3);
            right_bases.push(hash::attribute_point(name));
            scalars.push(Fr::rand(&mut rng));
        }
        let left = G1Projective::msm(&left_bases, &scalars).expect("MSM invariant: equal lengths");
        let right =
            G1Projective::msm(&right_bases, &scalars).expect("MSM invariant: equal lengths");
        left_bases.zeroize();
        let lhs: Gt = Bls12_381::multi_pairing(
            [left.into_affine(), (-right).into_affine()],
            [G2Affine::generator(), partial.body.k1],
        );
        if lhs != self.vks[index as usize - 1] {
            return Err(invalid("pairing check against the verification key failed"));
        }
        Ok(())
    }

    /// Checks that the verification keys lie on one polynomial of degree `t - 1` whose value
    /// at 0 is `e(g,h)^alpha`, with one random linear combination of all the equations.
    pub fn verify_consistency(&self) -> Result<(), AbeError> {
        let n = self.vks.len();
        let t = self.threshold as usize;
        if t == 0 || t > n || n > MAX_VALIDATORS {
            return Err(AbeError::InconsistentParams("threshold out of range"));
        }
        let mut rng = ChaCha20Rng::from_seed(
            Sha256::new()
                .chain_update(PARAMS_BATCH_DOMAIN)
                .chain_update(self.to_bytes())
                .finalize()
                .into(),
        );
        // Base points x = 1..=t; the others (x = 0 for e(g,h)^alpha and x = t+1..=n) must
        // equal the interpolation sum_i L_i(x) vk_i.
        let base_x: Vec<Fr> = (1..=t).map(|i| Fr::from(i as u64)).collect();
        let mut coeff_base = vec![Fr::zero(); t];
        let mut elems: Vec<Gt> = Vec::with_capacity(n + 1);
        let mut scalars: Vec<Fr> = Vec::with_capacity(n + 1);
        let mut check = |target: Gt, x: Fr, elems: &mut Vec<Gt>, scalars: &mut Vec<Fr>| {
            let rho = Fr::rand(&mut rng);
            elems.push(target);
            scalars.push(rho);
            for (i, c) in coeff_base.iter_mut().enumerate() {
                *c -= rho * lagrange_at(&base_x, i, x);
            }
        };
        check(self.egh_alpha, Fr::zero(), &mut elems, &mut scalars);
        for j in t + 1..=n {
            check(
                self.vks[j - 1],
                Fr::from(j as u64),
                &mut elems,
                &mut scalars,
            );
        }
        elems.extend_from_slice(&self.vks[..t]);
        scalars.extend_from_slice(&coeff_base);
        let sum = Gt::msm(&elems, &scalars).expect("MSM invariant: equal lengths");
        if sum.is_zero() {
            Ok(())
        } else {
            Err(AbeError::InconsistentParams(
                "verification keys do not interpolate to e(g,h)^alpha",
            ))
        }
    }
}

/// The Lagrange basis polynomial `L_j` over the points `xs`, evaluated at `x`.
fn lagrange_at(xs: &[Fr], j: usize, x: Fr) -> Fr {
    if x.is_zero() {
        return lagrange_at_zero(xs, j);
    }
    let mut num = Fr::from(1u64);
    let mut den = Fr::from(1u64);
    for (m, xm) in xs.iter().enumerate() {
        if m != j {
            num *= x - xm;
            den *= xs[j] - xm;
        }
    }
    num * ark_ff::Field::inverse(&den).expect("Lagrange invariant: points are distinct")
}

/// Combines partial keys into a user key. Partials that fail [`PublicParams::verify_partial`]
/// (or repeat a validator) are skipped with a warning; the first `t` valid ones are used.
/// Fails with [`AbeError::NotEnoughPartials`] if fewer than `t` are valid.
pub fn combine<I>(
    pp: &PublicParams,
    user_id: &[u8],
    attrs: I,
    partials: &[PartialKey],
) -> Result<UserKey, AbeError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    check_user_id(user_id)?;
    let attrs: BTreeSet<String> = normalize_attrs(attrs)?;
    let t = pp.threshold();
    let mut chosen: BTreeMap<u32, &PartialKey> = BTreeMap::new();
    for p in partials {
        if chosen.len() == t {
            break;
        }
        if chosen.contains_key(&p.index) {
            tracing::warn!(validator = p.index, "duplicate partial key skipped");
            continue;
        }
        match pp.verify_partial(user_id, &attrs, p) {
            Ok(()) => {
                chosen.insert(p.index, p);
            }
            Err(e) => {
                tracing::warn!(validator = p.index, error = %e, "invalid partial key skipped")
            }
        }
    }
    if chosen.len() < t {
        return Err(AbeError::NotEnoughPartials {
            needed: t,
            got: chosen.len(),
        });
    }
    let xs: Vec<Fr> = chosen.keys().map(|i| Fr::from(u64::from(*i))).collect();
    let mut lambdas: Vec<Fr> = (0..xs.len()).map(|j| lagrange_at_zero(&xs, j)).collect();
    let parts: Vec<&PartialKey> = chosen.values().copied().collect();

    let k1_bases: Vec<G2Affine> = parts.iter().map(|p| p.body.k1).collect();
    let k1 = G2Projective::msm(&k1_bases, &lambdas)
        .expect("MSM invariant: equal lengths")
        .into_affine();
    let mut g1s: Vec<G1Projective> = Vec::with_capacity(attrs.len() + 1);
    let mut bases: Vec<G1Affine> = parts.iter().map(|p| p.body.k2).collect();
    g1s.push(G1Projective::msm(&bases, &lambdas).expect("MSM invariant: equal lengths"));
    for a in &attrs {
        for (b, p) in bases.iter_mut().zip(&parts) {
            *b = *p
                .body
                .attrs
                .get(a)
                .expect("combine invariant: verified partials hold every requested attribute");
        }
        g1s.push(G1Projective::msm(&bases, &lambdas).expect("MSM invariant: equal lengths"));
    }
    bases.zeroize();
    lambdas.zeroize();
    let mut affine = G1Projective::normalize_batch(&g1s);
    g1s.zeroize();
    let body = KeyBody {
        user_id: user_id.to_vec(),
        k1,
        k2: affine[0],
        attrs: attrs.into_iter().zip(affine[1..].iter().copied()).collect(),
    };
    affine.zeroize();
    if body.k1.is_zero() || body.k2.is_zero() {
        // Only possible if r = sum l_i r_i happens to be 0: negligible, but never hand it out.
        return Err(AbeError::InvalidInput {
            field: "partials",
            reason: "the combined key is degenerate; request fresh partial keys".into(),
        });
    }
    Ok(UserKey::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abe::{unwrap, wrap};
    use crate::policy::Policy;

    const ATTRS: [&str; 2] = ["role:researcher", "irb:study-42"];

    #[test]
    fn t_partials_work_and_t_minus_one_do_not() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let (pp, shares) = setup_dealer(4, 3, &mut rng).unwrap();
        pp.verify_consistency().unwrap();
        assert_eq!(PublicParams::from_bytes(&pp.to_bytes()).unwrap(), pp);
        let partials: Vec<PartialKey> = shares
            .iter()
            .map(|s| {
                s.issue_partial(&pp, b"alice/req-1", ATTRS, &mut rng)
                    .unwrap()
            })
            .collect();
        for p in &partials {
            pp.verify_partial(b"alice/req-1", ATTRS, p).unwrap();
            assert_eq!(&PartialKey::from_bytes(&p.to_bytes()).unwrap(), p);
        }
        let pol = Policy::parse("role:researcher and irb:study-42").unwrap();
        let wk = wrap(&pp, &pol, b"data key", b"aad", &mut rng).unwrap();
        // Any 3 of the 4 validators.
        for skip in 0..4 {
            let subset: Vec<PartialKey> = partials
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| p.clone())
                .collect();
            let key = combine(&pp, b"alice/req-1", ATTRS, &subset).unwrap();
            assert_eq!(&unwrap(&key, &wk, b"aad").unwrap()[..], b"data key");
        }
        // Two partials are refused by combine ...
        assert_eq!(
            combine(&pp, b"alice/req-1", ATTRS, &partials[..2]).unwrap_err(),
            AbeError::NotEnoughPartials { needed: 3, got: 2 }
        );
        // ... and interpolating only two of them (as if t were 2) gives a key that fails.
        let pp2 = PublicParams {
            threshold: 2,
            egh_alpha: pp.egh_alpha,
            vks: pp.vks.clone(),
        };
        let forged = combine(&pp2, b"alice/req-1", ATTRS, &partials[..2]).unwrap();
        assert_eq!(
            unwrap(&forged, &wk, b"aad").unwrap_err(),
            AbeError::DecryptionFailed
        );
        assert!(pp2.verify_consistency().is_err());
    }

    #[test]
    fn corrupted_and_mismatched_partials_are_detected() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let (pp, shares) = setup_dealer(4, 2, &mut rng).unwrap();
        let good = shares[0]
            .issue_partial(&pp, b"bob", ATTRS, &mut rng)
            .unwrap();
        // Corrupt K2, K1, one K3.
        let mut bad = good.clone();
        bad.body.k2 = (bad.body.k2 + G1Affine::generator()).into_affine();
        assert!(pp.verify_partial(b"bob", ATTRS, &bad).is_err());
        let mut bad = good.clone();
        bad.body.k1 = (bad.body.k1 + G2Affine::generator()).into_affine();
        assert!(pp.verify_partial(b"bob", ATTRS, &bad).is_err());
        let mut bad = good.clone();
        let k = bad.body.attrs.get_mut("irb:study-42").unwrap();
        *k = (*k + G1Affine::generator()).into_affine();
        assert!(pp.verify_partial(b"bob", ATTRS, &bad).is_err());
        // A partial claiming another validator's index.
        let mut bad = good.clone();
        bad.index = 2;
        assert!(pp.verify_partial(b"bob", ATTRS, &bad).is_err());
        // Another user, another attribute set.
        assert!(pp.verify_partial(b"carol", ATTRS, &good).is_err());
        assert!(
            pp.verify_partial(b"bob", ["role:researcher"], &good)
                .is_err()
        );
        // combine skips the corrupted one and still succeeds with two good ones.
        let mut corrupt = shares[1]
            .issue_partial(&pp, b"bob", ATTRS, &mut rng)
            .unwrap();
        corrupt.body.k2 = (corrupt.body.k2 + G1Affine::generator()).into_affine();
        let third = shares[2]
            .issue_partial(&pp, b"bob", ATTRS, &mut rng)
            .unwrap();
        let key = combine(&pp, b"bob", ATTRS, &[good.clone(), corrupt.clone(), third]).unwrap();
        let pol = Policy::parse("irb:study-42").unwrap();
        let wk = wrap(&pp, &pol, b"k", b"", &mut rng).unwrap();
        assert_eq!(&unwrap(&key, &wk, b"").unwrap()[..], b"k");
        assert!(matches!(
            combine(&pp, b"bob", ATTRS, &[good.clone(), corrupt, good]),
            Err(AbeError::NotEnoughPartials { needed: 2, got: 1 })
        ));
    }

    #[test]
    fn partials_of_different_requests_do_not_mix() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let (pp, shares) = setup_dealer(3, 2, &mut rng).unwrap();
        let p1 = shares[0]
            .issue_partial(&pp, b"alice/req-1", ATTRS, &mut rng)
            .unwrap();
        let p2 = shares[1]
            .issue_partial(&pp, b"alice/req-2", ATTRS, &mut rng)
            .unwrap();
        assert!(matches!(
            combine(&pp, b"alice/req-1", ATTRS, &[p1, p2]),
            Err(AbeError::NotEnoughPartials { needed: 2, got: 1 })
        ));
    }

    #[test]
    fn dealer_rejects_bad_parameters_and_params_decode_checks_consistency() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        assert!(setup_dealer(0, 0, &mut rng).is_err());
        assert!(setup_dealer(3, 4, &mut rng).is_err());
        assert!(setup_dealer(3, 0, &mut rng).is_err());
        assert!(setup_dealer(MAX_VALIDATORS + 1, 1, &mut rng).is_err());
        let (pp, _) = setup_dealer(3, 2, &mut rng).unwrap();
        let (other, _) = setup_dealer(3, 2, &mut rng).unwrap();
        let mut mixed = pp.clone();
        mixed.vks[2] = other.vks[2];
        assert!(matches!(
            PublicParams::from_bytes(&mixed.to_bytes()),
            Err(AbeError::InconsistentParams(_))
        ));
        let share =
            MasterKeyShare::from_bytes(&setup_dealer(3, 2, &mut rng).unwrap().1[0].to_bytes())
                .unwrap();
        assert_eq!(share.index(), 1);
        assert_eq!(
            format!("{share:?}"),
            "MasterKeyShare { index: 1, share: \"<redacted>\" }"
        );
    }
}
