//! Hashing attributes to G1 with RFC 9380 hash-to-curve (suite
//! `BLS12381G1_XMD:SHA-256_SSWU_RO_`), and a bounded cache of attribute points.
//!
//! Every hashed point has an unknown discrete logarithm (unlike `g^H(x)`), which FABEO's
//! security argument needs: a user who knew the logs of their attribute points could forge key
//! components for attributes they were never given.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use ark_bls12_381::{G1Affine, G1Projective, g1};
use ark_ec::hashing::HashToCurve;
use ark_ec::hashing::curve_maps::wb::WBMap;
use ark_ec::hashing::map_to_curve_hasher::MapToCurveBasedHasher;
use ark_ff::field_hashers::DefaultFieldHasher;
use sha2::Sha256;

/// The domain-separation tag for attribute points `H(y)`.
pub const ATTRIBUTE_DST: &[u8] = b"EHR-SEARCH-ABE-V01-CS01-with-BLS12381G1_XMD:SHA-256_SSWU_RO_";
/// The domain-separation tag for FABEO's extra point `H(b)` (hashed from the empty message).
pub const B_POINT_DST: &[u8] = b"EHR-SEARCH-ABE-V01-CS02-with-BLS12381G1_XMD:SHA-256_SSWU_RO_";

/// Entries the attribute-point cache holds before it is emptied.
const CACHE_CAPACITY: usize = 16 * 1024;

type G1Hasher =
    MapToCurveBasedHasher<G1Projective, DefaultFieldHasher<Sha256, 128>, WBMap<g1::Config>>;

/// RFC 9380 `hash_to_curve` for `BLS12381G1_XMD:SHA-256_SSWU_RO_` with the given DST.
///
/// # Panics
/// If the DST is empty or longer than 255 bytes (the DSTs of this crate are constants).
pub fn hash_to_g1(dst: &[u8], msg: &[u8]) -> G1Affine {
    assert!(
        !dst.is_empty() && dst.len() <= 255,
        "hash_to_g1 invariant: DST of 1..=255 bytes"
    );
    // `new` only stores the DST, and `hash` fails only for a map that does not suit the curve,
    // which the ark-bls12-381 constants rule out.
    G1Hasher::new(dst)
        .and_then(|h| h.hash(msg))
        .expect("hash_to_g1 invariant: the SSWU map for BLS12-381 G1 is valid")
}

/// `H(y)`: the point of attribute `y`, from a process-wide cache (the points are public).
pub fn attribute_point(attr: &str) -> G1Affine {
    let cache = cache();
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(attr) {
        return *p;
    }
    let p = hash_to_g1(ATTRIBUTE_DST, attr.as_bytes());
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    if guard.len() >= CACHE_CAPACITY {
        guard.clear();
    }
    guard.insert(attr.to_owned(), p);
    p
}

/// `H(b)`: FABEO's fixed extra point, outside the attribute domain by its own DST.
pub fn b_point() -> G1Affine {
    static B: OnceLock<G1Affine> = OnceLock::new();
    *B.get_or_init(|| hash_to_g1(B_POINT_DST, b""))
}

fn cache() -> &'static Mutex<HashMap<String, G1Affine>> {
    static CACHE: OnceLock<Mutex<HashMap<String, G1Affine>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_ec::AffineRepr;
    use ark_ff::{BigInteger, PrimeField};

    /// RFC 9380 Appendix J.9.1, suite BLS12381G1_XMD:SHA-256_SSWU_RO_.
    const RFC_DST: &[u8] = b"QUUX-V01-CS02-with-BLS12381G1_XMD:SHA-256_SSWU_RO_";

    fn coords_hex(p: &G1Affine) -> (String, String) {
        let (x, y) = p.xy().expect("not the identity");
        (
            hex::encode(x.into_bigint().to_bytes_be()),
            hex::encode(y.into_bigint().to_bytes_be()),
        )
    }

    #[test]
    fn rfc9380_j_9_1_vectors() {
        let q128 = format!("q128_{}", "q".repeat(128));
        let a512 = format!("a512_{}", "a".repeat(512));
        let vectors: [(&[u8], &str, &str); 5] = [
            (
                b"",
                "052926add2207b76ca4fa57a8734416c8dc95e24501772c814278700eed6d1e4e8cf62d9c09db0fac349612b759e79a1",
                "08ba738453bfed09cb546dbb0783dbb3a5f1f566ed67bb6be0e8c67e2e81a4cc68ee29813bb7994998f3eae0c9c6a265",
            ),
            (
                b"abc",
                "03567bc5ef9c690c2ab2ecdf6a96ef1c139cc0b2f284dca0a9a7943388a49a3aee664ba5379a7655d3c68900be2f6903",
                "0b9c15f3fe6e5cf4211f346271d7b01c8f3b28be689c8429c85b67af215533311f0b8dfaaa154fa6b88176c229f2885d",
            ),
            (
                b"abcdef0123456789",
                "11e0b079dea29a68f0383ee94fed1b940995272407e3bb916bbf268c263ddd57a6a27200a784cbc248e84f357ce82d98",
                "03a87ae2caf14e8ee52e51fa2ed8eefe80f02457004ba4d486d6aa1f517c0889501dc7413753f9599b099ebcbbd2d709",
            ),
            (
                q128.as_bytes(),
                "15f68eaa693b95ccb85215dc65fa81038d69629f70aeee0d0f677cf22285e7bf58d7cb86eefe8f2e9bc3f8cb84fac488",
                "1807a1d50c29f430b8cafc4f8638dfeeadf51211e1602a5f184443076715f91bb90a48ba1e370edce6ae1062f5e6dd38",
            ),
            (
                a512.as_bytes(),
                "082aabae8b7dedb0e78aeb619ad3bfd9277a2f77ba7fad20ef6aabdc6c31d19ba5a6d12283553294c1825c4b3ca2dcfe",
                "05b84ae5a942248eea39e1d91030458c40153f3b654ab7872d779ad1e942856a20c438e8d99bc8abfbf74729ce1f7ac8",
            ),
        ];
        for (msg, x, y) in vectors {
            let p = hash_to_g1(RFC_DST, msg);
            assert_eq!(coords_hex(&p), (x.to_owned(), y.to_owned()), "msg {msg:?}");
        }
    }

    #[test]
    fn our_dst_gives_valid_distinct_points() {
        let a = attribute_point("role:researcher");
        let b = attribute_point("irb:study-42");
        assert_ne!(a, b);
        for p in [a, b, b_point()] {
            assert!(!p.is_zero());
            assert!(p.is_on_curve());
            assert!(p.is_in_correct_subgroup_assuming_on_curve());
        }
        // Our DST separates our points from the RFC suite's and H(b) from every attribute.
        assert_ne!(
            a,
            hash_to_g1(
                b"QUUX-V01-CS02-with-BLS12381G1_XMD:SHA-256_SSWU_RO_",
                b"role:researcher"
            )
        );
        assert_ne!(b_point(), hash_to_g1(ATTRIBUTE_DST, b""));
        // The cache returns what hashing returns.
        assert_eq!(
            attribute_point("role:researcher"),
            hash_to_g1(ATTRIBUTE_DST, b"role:researcher")
        );
    }
}
