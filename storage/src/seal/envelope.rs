//! The header, per-envelope key derivation, key commitment, and one-segment AEAD.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::key::DataKey;
use super::layout::SealConfig;
use crate::error::SealError;

/// Magic bytes that start every envelope.
pub const MAGIC: [u8; 8] = *b"EHR-SEAL";
/// The envelope format version this build writes and opens.
pub const VERSION: u8 = 1;
/// Length of the envelope header in bytes.
pub const HEADER_LEN: usize = 112;
/// Length of the authentication tag at the end of every segment.
pub const TAG_LEN: usize = 16;

const SALT: std::ops::Range<usize> = 16..48;
const COMMITMENT: std::ops::Range<usize> = 48..80;
const CONTEXT_TAG: std::ops::Range<usize> = 80..112;
/// Header bytes covered by the commitment and the context tag.
const PREFIX: std::ops::Range<usize> = 0..48;

const LABEL_COMMIT_KEY: &[u8] = b"ehr-seal v1 commitment key";
const LABEL_AEAD_KEY: &[u8] = b"ehr-seal v1 aead key";
const LABEL_COMMITMENT: &[u8] = b"ehr-seal v1 key commitment";
const LABEL_CONTEXT: &[u8] = b"ehr-seal v1 context";

type HmacSha256 = Hmac<Sha256>;

/// The AEAD of one envelope: its header (the AAD of every segment) and its derived key.
pub(crate) struct SegmentCipher {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    config: SealConfig,
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCipher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Derived {
    commit_key: Zeroizing<[u8; 32]>,
    aead_key: Zeroizing<[u8; 32]>,
}

fn derive(key: &DataKey, salt: &[u8], ctx: &[u8]) -> Derived {
    let hk = Hkdf::<Sha256>::new(Some(salt), key.expose_secret());
    let mut commit_key = Zeroizing::new([0u8; 32]);
    let mut aead_key = Zeroizing::new([0u8; 32]);
    hk.expand(LABEL_COMMIT_KEY, commit_key.as_mut())
        .expect("HKDF-SHA256 can expand 32 bytes");
    hk.expand_multi_info(&[LABEL_AEAD_KEY, ctx], aead_key.as_mut())
        .expect("HKDF-SHA256 can expand 32 bytes");
    Derived {
        commit_key,
        aead_key,
    }
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256-GCM takes 32-byte keys"))
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

impl SegmentCipher {
    /// A new envelope: fresh salt, derived keys, and its header with commitment and context tag.
    pub(crate) fn for_sealing(
        key: &DataKey,
        ctx: &[u8],
        config: SealConfig,
    ) -> Result<Self, SealError> {
        config.validate()?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8] = VERSION;
        header[12..16].copy_from_slice(&config.segment_len.to_be_bytes());
        SystemRandom::new()
            .fill(&mut header[SALT])
            .map_err(|_| SealError::Random)?;
        let d = derive(key, &header[SALT], ctx);
        let commitment = mac(&d.commit_key, &[LABEL_COMMITMENT, &header[PREFIX]]);
        let context_tag = mac(&d.commit_key, &[LABEL_CONTEXT, &header[PREFIX], ctx]);
        header[COMMITMENT].copy_from_slice(&commitment);
        header[CONTEXT_TAG].copy_from_slice(&context_tag);
        Ok(Self {
            key: aead_key(&d.aead_key),
            header,
            config,
        })
    }

    /// Parses and checks a header: format, then key commitment, then context.
    pub(crate) fn for_opening(
        key: &DataKey,
        ctx: &[u8],
        header: &[u8; HEADER_LEN],
    ) -> Result<Self, SealError> {
        if header[..8] != MAGIC {
            return Err(SealError::BadMagic);
        }
        if header[8] != VERSION {
            return Err(SealError::UnsupportedVersion {
                found: header[8],
                supported: VERSION,
            });
        }
        if header[9..12] != [0, 0, 0] {
            return Err(SealError::MalformedHeader {
                reason: "reserved bytes 9..12 are not zero".into(),
            });
        }
        let segment_len = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
        let config = SealConfig { segment_len };
        config.validate().map_err(|e| SealError::MalformedHeader {
            reason: format!("segment length at offset 12: {e}"),
        })?;
        let d = derive(key, &header[SALT], ctx);
        let commitment = mac(&d.commit_key, &[LABEL_COMMITMENT, &header[PREFIX]]);
        if !bool::from(commitment.ct_eq(&header[COMMITMENT])) {
            tracing::debug!("envelope key commitment mismatch");
            return Err(SealError::WrongKey);
        }
        let context_tag = mac(&d.commit_key, &[LABEL_CONTEXT, &header[PREFIX], ctx]);
        if !bool::from(context_tag.ct_eq(&header[CONTEXT_TAG])) {
            tracing::debug!("envelope context tag mismatch");
            return Err(SealError::ContextMismatch);
        }
        Ok(Self {
            key: aead_key(&d.aead_key),
            header: *header,
            config,
        })
    }

    /// The header bytes to write before segment 0.
    pub(crate) fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// The envelope's layout.
    pub(crate) fn config(&self) -> SealConfig {
        self.config
    }

    /// Encrypts `buf` in place as segment `index` and returns its tag.
    pub(crate) fn seal_segment(&self, index: u64, last: bool, buf: &mut [u8]) -> [u8; TAG_LEN] {
        debug_assert!(buf.len() as u64 <= self.config.segment_capacity(index));
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(index, last), Aad::from(&self.header[..]), buf)
            .expect("a segment is far below the AES-GCM length limit");
        tag.as_ref().try_into().expect("AES-GCM tags are 16 bytes")
    }

    /// Verifies and decrypts `buf` (ciphertext || tag) in place as segment `index`; returns the
    /// plaintext length. On failure `buf` holds no plaintext.
    pub(crate) fn open_segment(&self, index: u64, last: bool, buf: &mut [u8]) -> Option<usize> {
        if buf.len() < TAG_LEN {
            buf.fill(0);
            return None;
        }
        self.key
            .open_in_place(nonce(index, last), Aad::from(&self.header[..]), buf)
            .ok()
            .map(|plain| plain.len())
    }

    /// Whether `sealed` authenticates as segment `index` with the given flag, without
    /// touching it (error-path diagnosis only: it copies the segment).
    pub(crate) fn authenticates(&self, index: u64, last: bool, sealed: &[u8]) -> bool {
        let mut copy = Zeroizing::new(sealed.to_vec());
        self.open_segment(index, last, &mut copy).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Vec<u8> {
        super::super::SealContext::new(b"policy".to_vec())
            .encode()
            .unwrap()
    }

    #[test]
    fn header_round_trips_and_checks_in_order() {
        let key = DataKey::from_bytes([1; 32]);
        let c = SegmentCipher::for_sealing(&key, &ctx(), SealConfig::default()).unwrap();
        let h = *c.header();
        assert_eq!(&h[..8], b"EHR-SEAL");
        assert_eq!(h[8], 1);
        let o = SegmentCipher::for_opening(&key, &ctx(), &h).unwrap();
        assert_eq!(o.config(), SealConfig::default());

        let other = DataKey::from_bytes([2; 32]);
        assert!(matches!(
            SegmentCipher::for_opening(&other, &ctx(), &h),
            Err(SealError::WrongKey)
        ));
        let other_ctx = super::super::SealContext::new(b"policy2".to_vec())
            .encode()
            .unwrap();
        assert!(matches!(
            SegmentCipher::for_opening(&key, &other_ctx, &h),
            Err(SealError::ContextMismatch)
        ));
        let mut bad = h;
        bad[0] ^= 1;
        assert!(matches!(
            SegmentCipher::for_opening(&key, &ctx(), &bad),
            Err(SealError::BadMagic)
        ));
        let mut bad = h;
        bad[8] = 2;
        assert!(matches!(
            SegmentCipher::for_opening(&key, &ctx(), &bad),
            Err(SealError::UnsupportedVersion { found: 2, .. })
        ));
        let mut bad = h;
        bad[10] = 1;
        assert!(matches!(
            SegmentCipher::for_opening(&key, &ctx(), &bad),
            Err(SealError::MalformedHeader { .. })
        ));
        let mut bad = h;
        bad[12] = 0xff;
        assert!(matches!(
            SegmentCipher::for_opening(&key, &ctx(), &bad),
            Err(SealError::MalformedHeader { .. })
        ));
        // Any change to salt or commitment is caught by the commitment.
        for i in [16, 47, 48, 79] {
            let mut bad = h;
            bad[i] ^= 0x80;
            assert!(matches!(
                SegmentCipher::for_opening(&key, &ctx(), &bad),
                Err(SealError::WrongKey)
            ));
        }
    }

    #[test]
    fn salts_are_fresh() {
        let key = DataKey::from_bytes([1; 32]);
        let a = SegmentCipher::for_sealing(&key, &ctx(), SealConfig::default()).unwrap();
        let b = SegmentCipher::for_sealing(&key, &ctx(), SealConfig::default()).unwrap();
        assert_ne!(a.header()[SALT], b.header()[SALT]);
    }

    #[test]
    fn segment_flags_and_indices_are_bound() {
        let key = DataKey::from_bytes([3; 32]);
        let c = SegmentCipher::for_sealing(&key, &ctx(), SealConfig::default()).unwrap();
        let mut buf = b"hello".to_vec();
        let tag = c.seal_segment(4, false, &mut buf);
        buf.extend_from_slice(&tag);
        assert!(c.authenticates(4, false, &buf));
        assert!(!c.authenticates(4, true, &buf));
        assert!(!c.authenticates(5, false, &buf));
        assert!(!c.authenticates(4, false, &buf[..TAG_LEN - 1]));
        let n = c.open_segment(4, false, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
    }
}
