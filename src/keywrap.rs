//! Rewrapping a record's data key for one named participant (grants).
//!
//! The grantee is known only by its Ed25519 public key (its ledger identity), so the key is
//! wrapped to the X25519 key derived from it, the way `age`'s ssh-ed25519 recipients and
//! libsodium's `crypto_sign_ed25519_pk_to_curve25519` / `_sk_to_curve25519` do: the grantee's
//! Edwards point is mapped to its Montgomery u-coordinate, and the grantee's X25519 secret is
//! the clamped first half of SHA-512 of its Ed25519 seed.
//!
//! # Encoding (version 1)
//!
//! ```text
//! wrapped  = version:u8 (= 1) || ephemeral:[u8; 32] || AES-256-GCM(key) || tag:[u8; 16]
//! shared   = X25519(ephemeral secret, grantee u)         (all-zero output refused)
//! wrap key = HKDF-SHA256(ikm = shared, salt = ephemeral || grantee u,
//!                        info = "ehr-keywrap/v1 aes-256-gcm")
//! nonce    = 12 zero bytes (every wrap key is used once: the ephemeral key is fresh)
//! aad      = "ehr-keywrap/v1\0" || version || grantee Ed25519 key:[u8; 32]
//!            || len(cid):u16 big-endian || cid
//! ```
//!
//! Unwrapping with the wrong signing key, for another CID, or of bytes changed anywhere fails
//! with [`KeywrapError::Decrypt`], which deliberately does not say which.

use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// The only encoding version written and read.
pub const KEYWRAP_VERSION: u8 = 1;
/// The longest data key that can be wrapped, in bytes.
pub const MAX_WRAPPED_DATA_KEY: usize = 64;
/// The longest CID bound into a wrap, in bytes.
pub const MAX_CID_LEN: usize = 1024;
/// Bytes a wrap adds to the data key: version, ephemeral public key, GCM tag.
pub const KEYWRAP_OVERHEAD: usize = 1 + 32 + 16;

const AAD_DOMAIN: &[u8] = b"ehr-keywrap/v1\0";
const HKDF_INFO: &[u8] = b"ehr-keywrap/v1 aes-256-gcm";

/// Why a key could not be wrapped or unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeywrapError {
    /// The grantee key is not a valid Ed25519 public key (not a curve point, or of small order).
    #[error("grantee: not a valid Ed25519 public key (must be a point of large order)")]
    InvalidGranteeKey,
    /// The data key is empty or longer than [`MAX_WRAPPED_DATA_KEY`].
    #[error("data key: length {0} outside 1..={MAX_WRAPPED_DATA_KEY}")]
    KeyLength(usize),
    /// The CID is empty or longer than [`MAX_CID_LEN`].
    #[error("cid: length {0} outside 1..={MAX_CID_LEN}")]
    CidLength(usize),
    /// The wrapped bytes are too short or too long to be a wrapped key.
    #[error(
        "wrapped key: length {0} outside {min}..={max}",
        min = KEYWRAP_OVERHEAD + 1,
        max = KEYWRAP_OVERHEAD + MAX_WRAPPED_DATA_KEY
    )]
    Length(usize),
    /// The wrapped bytes name an encoding version this code does not read.
    #[error("wrapped key: version {0} unsupported (this node reads version 1)")]
    UnsupportedVersion(u8),
    /// The ephemeral key is a low-order point (the shared secret would be all zero).
    #[error("wrapped key: the ephemeral key is a low-order point")]
    LowOrderPoint,
    /// Authentication failed: wrong recipient, wrong CID, or altered bytes.
    #[error(
        "wrapped key: does not open for this signing key and CID (wrong grantee or CID, or altered)"
    )]
    Decrypt,
}

fn aad(grantee: &[u8; 32], cid: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_DOMAIN.len() + 1 + 32 + 2 + cid.len());
    a.extend_from_slice(AAD_DOMAIN);
    a.push(KEYWRAP_VERSION);
    a.extend_from_slice(grantee);
    a.extend_from_slice(
        &u16::try_from(cid.len())
            .expect("invariant: cid length checked against MAX_CID_LEN")
            .to_be_bytes(),
    );
    a.extend_from_slice(cid);
    a
}

/// Derives the AES-256-GCM key of one wrap; refuses an all-zero shared secret.
fn wrap_key(
    shared: &MontgomeryPoint,
    ephemeral: &[u8; 32],
    grantee_u: &[u8; 32],
) -> Result<LessSafeKey, KeywrapError> {
    if bool::from(shared.as_bytes().ct_eq(&[0u8; 32])) {
        return Err(KeywrapError::LowOrderPoint);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(grantee_u);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(HKDF_INFO, okm.as_mut())
        .expect("invariant: 32 bytes is a valid HKDF-SHA256 output length");
    let key = UnboundKey::new(&AES_256_GCM, okm.as_ref())
        .expect("invariant: AES-256-GCM takes a 32-byte key");
    Ok(LessSafeKey::new(key))
}

fn check_cid(cid: &[u8]) -> Result<(), KeywrapError> {
    if cid.is_empty() || cid.len() > MAX_CID_LEN {
        return Err(KeywrapError::CidLength(cid.len()));
    }
    Ok(())
}

/// Wraps `key` (a record's data key) for the participant whose Ed25519 public key is
/// `grantee`, bound to `cid`, with a fresh ephemeral key from `rng`.
pub fn wrap_for(
    grantee: &[u8; 32],
    cid: &[u8],
    key: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, KeywrapError> {
    if key.is_empty() || key.len() > MAX_WRAPPED_DATA_KEY {
        return Err(KeywrapError::KeyLength(key.len()));
    }
    check_cid(cid)?;
    let edwards = VerifyingKey::from_bytes(grantee).map_err(|_| KeywrapError::InvalidGranteeKey)?;
    if edwards.is_weak() {
        return Err(KeywrapError::InvalidGranteeKey);
    }
    let grantee_u = edwards.to_montgomery();
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut());
    let ephemeral = MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
    let shared = grantee_u.mul_clamped(*secret);
    let sealing = wrap_key(&shared, &ephemeral, grantee_u.as_bytes())?;
    let mut out = Vec::with_capacity(KEYWRAP_OVERHEAD + key.len());
    out.push(KEYWRAP_VERSION);
    out.extend_from_slice(&ephemeral);
    let mut body = key.to_vec();
    let tag = sealing
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(aad(grantee, cid)),
            &mut body,
        )
        .expect("invariant: AES-GCM seals a short in-memory buffer");
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    body.zeroize();
    Ok(out)
}

/// Unwraps a data key wrapped by [`wrap_for`] for the holder of `sk`, bound to `cid`.
pub fn unwrap_with(
    sk: &SigningKey,
    cid: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeywrapError> {
    check_cid(cid)?;
    if wrapped.len() <= KEYWRAP_OVERHEAD || wrapped.len() > KEYWRAP_OVERHEAD + MAX_WRAPPED_DATA_KEY
    {
        return Err(KeywrapError::Length(wrapped.len()));
    }
    if wrapped[0] != KEYWRAP_VERSION {
        return Err(KeywrapError::UnsupportedVersion(wrapped[0]));
    }
    let mut ephemeral = [0u8; 32];
    ephemeral.copy_from_slice(&wrapped[1..33]);
    let grantee = sk.verifying_key().to_bytes();
    let grantee_u = sk.verifying_key().to_montgomery();
    let secret = Zeroizing::new(sk.to_scalar_bytes());
    let shared = MontgomeryPoint(ephemeral).mul_clamped(*secret);
    let opening = wrap_key(&shared, &ephemeral, grantee_u.as_bytes())?;
    let mut body = Zeroizing::new(wrapped[33..].to_vec());
    let plain_len = opening
        .open_in_place(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(aad(&grantee, cid)),
            body.as_mut_slice(),
        )
        .map_err(|_| KeywrapError::Decrypt)?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn sk(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    const CID: &[u8] = b"\x01\x55\x12\x20cid-bytes-of-a-record";

    #[test]
    fn round_trip() {
        let g = sk(1);
        let key = [0x42u8; 32];
        let w = wrap_for(&g.verifying_key().to_bytes(), CID, &key, &mut rng()).unwrap();
        assert_eq!(w.len(), KEYWRAP_OVERHEAD + 32);
        assert_eq!(w[0], KEYWRAP_VERSION);
        assert_eq!(unwrap_with(&g, CID, &w).unwrap().as_slice(), &key);
        // Other key lengths.
        for len in [1, 16, 64] {
            let key = vec![9u8; len];
            let w = wrap_for(&g.verifying_key().to_bytes(), CID, &key, &mut rng()).unwrap();
            assert_eq!(*unwrap_with(&g, CID, &w).unwrap(), key);
        }
        // Fresh ephemeral keys: two wraps of the same key differ.
        let mut r = rng();
        let a = wrap_for(&g.verifying_key().to_bytes(), CID, &key, &mut r).unwrap();
        let b = wrap_for(&g.verifying_key().to_bytes(), CID, &key, &mut r).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn matches_the_standard_ed25519_to_x25519_conversion() {
        // The grantee's X25519 public key from its Ed25519 public key equals the X25519
        // public key of its converted secret (SHA-512 of the seed, first half, clamped).
        use sha2::{Digest, Sha512};
        for seed in [1u8, 2, 77, 255] {
            let g = sk(seed);
            let h = Sha512::digest(g.to_bytes());
            let mut x = [0u8; 32];
            x.copy_from_slice(&h[..32]);
            assert_eq!(x, g.to_scalar_bytes());
            assert_eq!(
                MontgomeryPoint::mul_base_clamped(x),
                g.verifying_key().to_montgomery()
            );
        }
    }

    #[test]
    fn wrong_grantee_or_cid_fails() {
        let g = sk(1);
        let w = wrap_for(&g.verifying_key().to_bytes(), CID, &[1; 32], &mut rng()).unwrap();
        assert_eq!(unwrap_with(&sk(2), CID, &w), Err(KeywrapError::Decrypt));
        assert_eq!(
            unwrap_with(&g, b"another-cid", &w),
            Err(KeywrapError::Decrypt)
        );
        assert_eq!(
            unwrap_with(&g, &CID[..CID.len() - 1], &w),
            Err(KeywrapError::Decrypt)
        );
    }

    #[test]
    fn truncation_and_bad_lengths_fail() {
        let g = sk(1);
        let w = wrap_for(&g.verifying_key().to_bytes(), CID, &[1; 32], &mut rng()).unwrap();
        for cut in 0..w.len() {
            assert!(unwrap_with(&g, CID, &w[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = w.clone();
        longer.push(0);
        assert_eq!(unwrap_with(&g, CID, &longer), Err(KeywrapError::Decrypt));
        let huge = vec![1u8; KEYWRAP_OVERHEAD + MAX_WRAPPED_DATA_KEY + 1];
        assert!(matches!(
            unwrap_with(&g, CID, &huge),
            Err(KeywrapError::Length(_))
        ));
        let mut v2 = w.clone();
        v2[0] = 2;
        assert_eq!(
            unwrap_with(&g, CID, &v2),
            Err(KeywrapError::UnsupportedVersion(2))
        );
        let gk = g.verifying_key().to_bytes();
        assert_eq!(
            wrap_for(&gk, CID, &[], &mut rng()),
            Err(KeywrapError::KeyLength(0))
        );
        assert_eq!(
            wrap_for(&gk, CID, &[0; 65], &mut rng()),
            Err(KeywrapError::KeyLength(65))
        );
        assert_eq!(
            wrap_for(&gk, &[], &[0; 32], &mut rng()),
            Err(KeywrapError::CidLength(0))
        );
        assert_eq!(unwrap_with(&g, &[], &w), Err(KeywrapError::CidLength(0)));
    }

    #[test]
    fn invalid_and_low_order_points_rejected() {
        // Grantee keys: the identity, a point of order 2 and one of order 4 (small order), and
        // a y-coordinate with no point on the curve.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut order2 = [0u8; 32];
        order2[0] = 0xec;
        order2[1..31].fill(0xff);
        order2[31] = 0x7f;
        let order4 = [0u8; 32];
        let not_on_curve = (2u8..)
            .map(|y| {
                let mut k = [0u8; 32];
                k[0] = y;
                k
            })
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .expect("some small y is not on the curve");
        for (what, k) in [
            ("identity", identity),
            ("order 2", order2),
            ("order 4", order4),
            ("not on curve", not_on_curve),
        ] {
            assert_eq!(
                wrap_for(&k, CID, &[1; 32], &mut rng()),
                Err(KeywrapError::InvalidGranteeKey),
                "{what}"
            );
        }
        // Ephemeral keys of low order (u = 0, u = 1, and the order-8 points): the shared
        // secret is all zero and is refused.
        let g = sk(1);
        let w = wrap_for(&g.verifying_key().to_bytes(), CID, &[1; 32], &mut rng()).unwrap();
        let low_order: [[u8; 32]; 4] = [
            [0; 32],
            {
                let mut u = [0u8; 32];
                u[0] = 1;
                u
            },
            hex_u("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            hex_u("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        ];
        for u in low_order {
            let mut bad = w.clone();
            bad[1..33].copy_from_slice(&u);
            assert_eq!(
                unwrap_with(&g, CID, &bad),
                Err(KeywrapError::LowOrderPoint),
                "{u:?}"
            );
        }
    }

    fn hex_u(s: &str) -> [u8; 32] {
        let mut u = [0u8; 32];
        hex::decode_to_slice(s, &mut u).unwrap();
        u
    }

    #[test]
    fn errors_and_debug_do_not_leak_the_key() {
        let g = sk(1);
        let key = [0xA5u8; 32];
        let w = wrap_for(&g.verifying_key().to_bytes(), CID, &key, &mut rng()).unwrap();
        assert!(!w.windows(32).any(|x| x == key));
        let e = unwrap_with(&sk(2), CID, &w).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("a5a5"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Flipping any bit of a wrapped key makes unwrapping fail.
        #[test]
        fn any_bit_flip_fails(i in 0usize..(KEYWRAP_OVERHEAD + 32) * 8) {
            let g = sk(3);
            let w = wrap_for(&g.verifying_key().to_bytes(), CID, &[7; 32], &mut rng()).unwrap();
            let mut bad = w.clone();
            bad[i / 8] ^= 1 << (i % 8);
            prop_assert!(unwrap_with(&g, CID, &bad).is_err());
        }

        /// Wrapping then unwrapping returns the key, for any key, CID and grantee.
        #[test]
        fn round_trips(seed in any::<[u8; 32]>(), key in proptest::collection::vec(any::<u8>(), 1..=64),
                       cid in proptest::collection::vec(any::<u8>(), 1..100)) {
            let g = SigningKey::from_bytes(&seed);
            let w = wrap_for(&g.verifying_key().to_bytes(), &cid, &key, &mut rng()).unwrap();
            prop_assert_eq!(&*unwrap_with(&g, &cid, &w).unwrap(), &key);
        }
    }
}
