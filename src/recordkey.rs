//! How a record's data key is encapsulated under its capsule's policy (the `wrapped_key` of a
//! registered record, released to readers as `ehr-wrapped-key` with key kind `abe`).
//!
//! Two encodings, told apart by their first byte:
//!
//! - **direct**: a CP-ABE [`WrappedKey`] (first byte `0x05`) of the data key, with associated
//!   data [`record_key_aad`]`(capsule, cid)`. Clients that seal records themselves write it.
//! - **batched** (written by nodes): a key-encryption key (KEK) is CP-ABE wrapped once under the
//!   capsule's policy and then wraps the data keys of many records of that capsule with
//!   AES-256-GCM. One pairing-group encryption (~10 ms) then serves many uploads instead of one.
//!
//! ```text
//! batched = "ehrk" || 0x01 || u16 len || WrappedKey(KEK) || nonce:[u8; 12] || AES-256-GCM(data key) || tag
//! KEK aad = "ehr/record-kek/v1" || capsule id          (the CP-ABE wrap of the KEK)
//! key aad = record_key_aad(capsule, cid)                (the AES-GCM wrap of each data key)
//! ```
//!
//! Why sharing a KEK between records does not widen access: every record of a batch is under
//! the same capsule, so whoever can open the KEK (its attributes satisfy the policy) could open
//! each record's direct CP-ABE wrap just as well; the node still authorises every release of a
//! ciphertext against the ledger. A KEK lives only in the uploading node's memory (zeroized),
//! is used for at most [`KEK_MAX_USES`] records and [`KEK_MAX_AGE`], with random 96-bit nonces
//! (collision probability below 2^-56 per KEK). Each data key's wrap binds its capsule and
//! CID, so a wrap cannot be moved to another record, and the KEK's wrap binds the capsule.

use std::time::{Duration, Instant};

use ehr_search::AbeError;
use ehr_search::abe::{self, PublicParams, UserKey, WrappedKey};
use ehr_search::policy::Policy;
use rand_core::{CryptoRng, RngCore};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::node::upload::record_key_aad;

/// The first bytes of a batched encapsulation (magic and version 1).
pub const BATCHED_MAGIC: &[u8; 5] = b"ehrk\x01";
/// Domain separation of a KEK's CP-ABE associated data.
pub const KEK_AAD_PREFIX: &[u8] = b"ehr/record-kek/v1";
/// The most data keys one KEK wraps.
pub const KEK_MAX_USES: u32 = 4096;
/// How long a node uses one KEK.
pub const KEK_MAX_AGE: Duration = Duration::from_secs(300);
/// The length of a data key this module wraps (an AES-256 key).
pub const DATA_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why an encapsulated key could not be made, read or opened.
#[derive(Debug, thiserror::Error)]
pub enum RecordKeyError {
    /// The bytes are not a valid encapsulation: which part and why.
    #[error("wrapped key: {0}")]
    Decode(String),
    /// The CP-ABE layer refused (policy not satisfied, altered bytes, bad encoding).
    #[error("wrapped key: {0}")]
    Abe(#[from] AbeError),
    /// The AES-GCM layer did not open: another record's wrap, or altered bytes.
    #[error("wrapped key: does not open for this capsule and CID (another record's, or altered)")]
    Decrypt,
}

/// The KEK's CP-ABE associated data for `capsule`.
pub fn kek_aad(capsule: &[u8; 32]) -> Vec<u8> {
    let mut a = Vec::with_capacity(KEK_AAD_PREFIX.len() + 32);
    a.extend_from_slice(KEK_AAD_PREFIX);
    a.extend_from_slice(capsule);
    a
}

/// A key-encryption key of one capsule and its CP-ABE wrap (see the module docs).
pub struct Kek {
    capsule: [u8; 32],
    key: LessSafeKey,
    wrapped: Vec<u8>,
    uses: u32,
    born: Instant,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("capsule", &hex::encode(self.capsule))
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// A fresh KEK for `capsule`, CP-ABE wrapped under `policy` (one pairing-group
    /// encryption: run it on a blocking thread).
    pub fn generate(
        pp: &PublicParams,
        policy: &Policy,
        capsule: [u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Kek, AbeError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        let wrapped = abe::wrap(pp, policy, secret.as_ref(), &kek_aad(&capsule), rng)?;
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, secret.as_ref())
                .expect("invariant: AES-256-GCM takes a 32-byte key"),
        );
        Ok(Kek {
            capsule,
            key,
            wrapped: wrapped.to_bytes(),
            uses: 0,
            born: Instant::now(),
        })
    }

    /// The capsule this KEK belongs to.
    pub fn capsule(&self) -> &[u8; 32] {
        &self.capsule
    }

    /// Whether this KEK may still wrap a data key (uses and age within bounds).
    pub fn is_fresh(&self) -> bool {
        self.uses < KEK_MAX_USES && self.born.elapsed() < KEK_MAX_AGE
    }

    /// The batched encapsulation of `data_key` for the record `cid` of this KEK's capsule.
    pub fn wrap(
        &mut self,
        cid: &[u8],
        data_key: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<u8> {
        assert_eq!(
            data_key.len(),
            DATA_KEY_LEN,
            "invariant: record data keys are AES-256 keys"
        );
        self.uses += 1;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let len = u16::try_from(self.wrapped.len())
            .expect("invariant: a wrapped key is shorter than 64 KiB (ledger limit)");
        let mut out = Vec::with_capacity(
            BATCHED_MAGIC.len() + 2 + self.wrapped.len() + NONCE_LEN + DATA_KEY_LEN + TAG_LEN,
        );
        out.extend_from_slice(BATCHED_MAGIC);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.wrapped);
        out.extend_from_slice(&nonce);
        let mut sealed = data_key.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(record_key_aad(&self.capsule, cid)),
                &mut sealed,
            )
            .expect("invariant: AES-GCM seals a 32-byte key");
        out.extend_from_slice(&sealed);
        out
    }
}

/// A parsed encapsulation (see the module docs).
#[derive(Debug)]
pub enum Encapsulated {
    /// The data key itself CP-ABE wrapped.
    Direct(WrappedKey),
    /// The data key wrapped by a KEK that is CP-ABE wrapped.
    Batched {
        /// The KEK's CP-ABE wrap.
        kek: WrappedKey,
        /// The AES-GCM nonce.
        nonce: [u8; NONCE_LEN],
        /// The AES-GCM ciphertext and tag of the data key.
        sealed: Vec<u8>,
    },
}

impl Encapsulated {
    /// Parses hostile bytes: never panics; the CP-ABE parts are fully validated.
    pub fn parse(bytes: &[u8]) -> Result<Encapsulated, RecordKeyError> {
        let Some(rest) = bytes.strip_prefix(BATCHED_MAGIC.as_slice()) else {
            return Ok(Encapsulated::Direct(WrappedKey::from_bytes(bytes)?));
        };
        let bad = |r: &str| RecordKeyError::Decode(r.to_owned());
        let (len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| bad("truncated before the KEK length"))?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() != len + NONCE_LEN + DATA_KEY_LEN + TAG_LEN {
            return Err(bad(&format!(
                "batched encapsulation of {} bytes, expected {}",
                bytes.len(),
                BATCHED_MAGIC.len() + 2 + len + NONCE_LEN + DATA_KEY_LEN + TAG_LEN
            )));
        }
        let (kek, rest) = rest.split_at(len);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        Ok(Encapsulated::Batched {
            kek: WrappedKey::from_bytes(kek)?,
            nonce: nonce.try_into().expect("invariant: split at NONCE_LEN"),
            sealed: sealed.to_vec(),
        })
    }

    /// The policy the data key is (directly or through the KEK) wrapped under.
    pub fn policy(&self) -> &Policy {
        match self {
            Encapsulated::Direct(w) => w.policy(),
            Encapsulated::Batched { kek, .. } => kek.policy(),
        }
    }

    /// Opens the data key of record `cid` of `capsule` with an attribute key.
    pub fn open(
        &self,
        key: &UserKey,
        capsule: &[u8; 32],
        cid: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RecordKeyError> {
        match self {
            Encapsulated::Direct(w) => Ok(abe::unwrap(key, w, &record_key_aad(capsule, cid))?),
            Encapsulated::Batched { kek, nonce, sealed } => {
                let secret = abe::unwrap(key, kek, &kek_aad(capsule))?;
                let aes = UnboundKey::new(&AES_256_GCM, &secret)
                    .map_err(|_| RecordKeyError::Decode("the KEK is not 32 bytes".into()))?;
                let mut buf = Zeroizing::new(sealed.clone());
                let plain = LessSafeKey::new(aes)
                    .open_in_place(
                        Nonce::assume_unique_for_key(*nonce),
                        Aad::from(record_key_aad(capsule, cid)),
                        &mut buf,
                    )
                    .map_err(|_| RecordKeyError::Decrypt)?;
                Ok(Zeroizing::new(plain.to_vec()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn fixture() -> (PublicParams, Policy, UserKey, UserKey) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let (pp, msk) = abe::setup(&mut rng);
        let policy = Policy::parse("role:researcher").unwrap();
        let yes = abe::keygen(&pp, &msk, b"r1", ["role:researcher"], &mut rng).unwrap();
        let no = abe::keygen(&pp, &msk, b"r2", ["role:nurse"], &mut rng).unwrap();
        (pp, policy, yes, no)
    }

    #[test]
    fn batched_keys_open_for_their_record_only() {
        let (pp, policy, yes, no) = fixture();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let cap = [3u8; 32];
        let mut kek = Kek::generate(&pp, &policy, cap, &mut rng).unwrap();
        let a = kek.wrap(b"cid-a", &[1; 32], &mut rng);
        let b = kek.wrap(b"cid-b", &[2; 32], &mut rng);
        let pa = Encapsulated::parse(&a).unwrap();
        assert_eq!(pa.policy(), &policy);
        assert_eq!(&*pa.open(&yes, &cap, b"cid-a").unwrap(), &[1; 32]);
        let pb = Encapsulated::parse(&b).unwrap();
        assert_eq!(&*pb.open(&yes, &cap, b"cid-b").unwrap(), &[2; 32]);
        // Another record's CID, another capsule, a key that does not satisfy the policy.
        assert!(matches!(
            pa.open(&yes, &cap, b"cid-b"),
            Err(RecordKeyError::Decrypt)
        ));
        assert!(pa.open(&yes, &[4; 32], b"cid-a").is_err());
        assert!(matches!(
            pa.open(&no, &cap, b"cid-a"),
            Err(RecordKeyError::Abe(_))
        ));
        // Every flipped bit and every truncation is refused.
        for i in [0, 5, 6, 40, a.len() - 40, a.len() - 1] {
            let mut t = a.clone();
            t[i] ^= 1;
            let r = Encapsulated::parse(&t).and_then(|e| e.open(&yes, &cap, b"cid-a"));
            assert!(r.is_err(), "bit flip at {i} accepted");
        }
        for n in [0, 4, 6, 100, a.len() - 1] {
            assert!(Encapsulated::parse(&a[..n]).is_err(), "truncated to {n}");
        }
        let mut long = a.clone();
        long.push(0);
        assert!(Encapsulated::parse(&long).is_err());
    }

    #[test]
    fn direct_wraps_still_open_and_kek_freshness_is_bounded() {
        let (pp, policy, yes, _) = fixture();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let cap = [5u8; 32];
        let w = abe::wrap(
            &pp,
            &policy,
            &[7; 32],
            &record_key_aad(&cap, b"c"),
            &mut rng,
        )
        .unwrap();
        let e = Encapsulated::parse(&w.to_bytes()).unwrap();
        assert!(matches!(e, Encapsulated::Direct(_)));
        assert_eq!(&*e.open(&yes, &cap, b"c").unwrap(), &[7; 32]);
        let mut kek = Kek::generate(&pp, &policy, cap, &mut rng).unwrap();
        assert!(kek.is_fresh());
        kek.uses = KEK_MAX_USES;
        assert!(!kek.is_fresh());
        assert!(!format!("{kek:?}").contains("key:"));
    }
}
