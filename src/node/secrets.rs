//! Secrets the node keeps on its own disk, always encrypted under keys derived from the
//! hospital key: the search-key owner state of the hospital's capsule, and each uploaded
//! record's data key (the owner key store, needed to rewrap a key for a grant).
//!
//! Keys: `HKDF-SHA256(ikm = hospital key seed, salt = "ehr/node/v1", info = purpose)`.
//! Values: AES-256-GCM with a random 96-bit nonce, `nonce || ciphertext || tag`, the purpose
//! and the value's name (e.g. the CID) as associated data.

use std::path::Path;

use ehr_storage::seal::DataKey;
use redb::{Database, ReadableDatabase, TableDefinition};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Failures of the node's secret stores.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A sealed value did not decrypt (wrong hospital key, or tampered).
    #[error("{what}: does not decrypt under this hospital's key (wrong key or tampered)")]
    Decrypt {
        /// Which value.
        what: &'static str,
    },
    /// The store failed.
    #[error("{what}: {reason}")]
    Store {
        /// Which store.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

const SALT: &[u8] = b"ehr/node/v1";

/// An AES-256-GCM key derived for one purpose. Zeroized on drop (ring's key holds its own
/// expanded copy, dropped with it).
pub struct SealedBox {
    key: LessSafeKey,
    purpose: &'static [u8],
}

impl std::fmt::Debug for SealedBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBox")
            .field("purpose", &String::from_utf8_lossy(self.purpose))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SealedBox {
    /// Derives the key for `purpose` from the hospital key's seed.
    pub fn derive(hospital_seed: &[u8; 32], purpose: &'static [u8]) -> Self {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(SALT), hospital_seed);
        let mut okm = Zeroizing::new([0u8; 32]);
        hk.expand(purpose, &mut *okm)
            .expect("invariant: 32 bytes is a valid HKDF-SHA256 output length");
        let key =
            UnboundKey::new(&AES_256_GCM, &*okm).expect("invariant: 32 bytes is an AES-256 key");
        SealedBox {
            key: LessSafeKey::new(key),
            purpose,
        }
    }

    fn aad(&self, name: &[u8]) -> Vec<u8> {
        let mut a = Vec::with_capacity(self.purpose.len() + 1 + name.len());
        a.extend_from_slice(self.purpose);
        a.push(0);
        a.extend_from_slice(name);
        a
    }

    /// Encrypts `plain`, bound to `name`.
    pub fn seal(&self, name: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("invariant: the system RNG works");
        let mut buf = Vec::with_capacity(12 + plain.len() + 16);
        buf.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(name)),
                &mut body,
            )
            .expect("invariant: AES-GCM sealing of a small value succeeds");
        buf.extend_from_slice(&body);
        zeroize::Zeroize::zeroize(&mut body);
        buf
    }

    /// Decrypts what [`SealedBox::seal`] made for `name`.
    pub fn open(
        &self,
        what: &'static str,
        name: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        if sealed.len() < 12 + 16 {
            return Err(SecretError::Decrypt { what });
        }
        let nonce: [u8; 12] = sealed[..12].try_into().expect("12 bytes");
        let mut body = Zeroizing::new(sealed[12..].to_vec());
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(name)),
                &mut body,
            )
            .map_err(|_| SecretError::Decrypt { what })?
            .len();
        body.truncate(n);
        Ok(body)
    }
}

/// Writes `bytes` to `path` atomically (0600, fsynced).
pub fn write_file_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    crate::consortium::write_private_atomically(path, bytes).map_err(|e| SecretError::Store {
        what: "secret file",
        reason: e.to_string(),
    })
}

const DATA_KEYS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("data_keys");

/// Each uploaded record's data key, encrypted under a key derived from the hospital key, in a
/// redb database: what the owner's node needs to rewrap a key for a grant.
pub struct OwnerKeyStore {
    db: Database,
    sealer: SealedBox,
    /// Puts commit without fsync and are made durable together (group commit).
    sync: crate::node::group_commit::GroupSync,
}

impl std::fmt::Debug for OwnerKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerKeyStore").finish_non_exhaustive()
    }
}

fn store_err(e: impl std::fmt::Display) -> SecretError {
    SecretError::Store {
        what: "owner key store",
        reason: e.to_string(),
    }
}

impl OwnerKeyStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, hospital_seed: &[u8; 32]) -> Result<Self, SecretError> {
        // A small cache: keys are written once and read on grants (redb's default is 1 GiB).
        let db = redb::Builder::new()
            .set_cache_size(8 * 1024 * 1024)
            .create(path)
            .map_err(store_err)?;
        let tx = db.begin_write().map_err(store_err)?;
        tx.open_table(DATA_KEYS).map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(OwnerKeyStore {
            db,
            sealer: SealedBox::derive(hospital_seed, b"owner-data-keys"),
            sync: crate::node::group_commit::GroupSync::new(),
        })
    }

    /// Stores the data key of `cid`; durable when this returns. Blocks on the disk.
    pub fn put(&self, cid: &[u8], key: &DataKey) -> Result<(), SecretError> {
        self.put_many(&[(cid.to_vec(), key)])
    }

    /// Stores the data keys of several records; durable when this returns. Concurrent calls
    /// share one fsync: each commits without one, and the first to wait makes every commit
    /// so far durable with an empty durable commit (redb persists earlier non-durable commits
    /// with the next durable one). Blocks on the disk.
    pub fn put_many(&self, keys: &[(Vec<u8>, &DataKey)]) -> Result<(), SecretError> {
        let mut tx = self.db.begin_write().map_err(store_err)?;
        tx.set_durability(redb::Durability::None)
            .map_err(store_err)?;
        {
            let mut t = tx.open_table(DATA_KEYS).map_err(store_err)?;
            for (cid, key) in keys {
                let sealed = self.sealer.seal(cid, key.expose_secret());
                t.insert(cid.as_slice(), sealed.as_slice())
                    .map_err(store_err)?;
            }
        }
        tx.commit().map_err(store_err)?;
        let ticket = self.sync.ticket();
        self.sync.wait(ticket, || {
            let tx = self.db.begin_write().map_err(store_err)?;
            tx.commit().map_err(store_err)
        })
    }

    /// The data key of `cid`, if this node uploaded it.
    pub fn get(&self, cid: &[u8]) -> Result<Option<DataKey>, SecretError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let t = tx.open_table(DATA_KEYS).map_err(store_err)?;
        let Some(v) = t.get(cid).map_err(store_err)? else {
            return Ok(None);
        };
        let plain = self.sealer.open("record data key", cid, v.value())?;
        DataKey::from_slice(&plain)
            .map(Some)
            .map_err(|e| store_err(format!("stored data key: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_are_bound_to_key_and_name() {
        let a = SealedBox::derive(&[1; 32], b"p");
        let b = SealedBox::derive(&[2; 32], b"p");
        let c = SealedBox::derive(&[1; 32], b"q");
        let s = a.seal(b"name", b"secret value");
        assert!(!s.windows(6).any(|w| w == b"secret"));
        assert_eq!(&*a.open("v", b"name", &s).unwrap(), b"secret value");
        assert!(a.open("v", b"other", &s).is_err());
        assert!(b.open("v", b"name", &s).is_err());
        assert!(c.open("v", b"name", &s).is_err());
        let mut t = s.clone();
        t[20] ^= 1;
        assert!(a.open("v", b"name", &t).is_err());
        assert!(a.open("v", b"name", &s[..10]).is_err());
    }

    #[test]
    fn owner_store_round_trips_and_refuses_another_hospital() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.redb");
        let k = DataKey::generate().unwrap();
        {
            let s = OwnerKeyStore::open(&p, &[5; 32]).unwrap();
            s.put(b"cid-1", &k).unwrap();
            assert!(s.get(b"cid-2").unwrap().is_none());
        }
        let s = OwnerKeyStore::open(&p, &[5; 32]).unwrap();
        assert_eq!(
            s.get(b"cid-1").unwrap().unwrap().expose_secret(),
            k.expose_secret()
        );
        drop(s);
        let other = OwnerKeyStore::open(&p, &[6; 32]).unwrap();
        assert!(other.get(b"cid-1").is_err());
        let raw = std::fs::read(&p).unwrap();
        assert!(!raw.windows(32).any(|w| w == k.expose_secret()));
    }

    #[test]
    fn concurrent_puts_share_commits_and_all_persist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.redb");
        let keys: Vec<DataKey> = (0..64).map(|_| DataKey::generate().unwrap()).collect();
        {
            let s = OwnerKeyStore::open(&p, &[5; 32]).unwrap();
            std::thread::scope(|scope| {
                for (t, chunk) in keys.chunks(8).enumerate() {
                    let s = &s;
                    scope.spawn(move || {
                        for (i, k) in chunk.iter().enumerate() {
                            s.put(format!("cid-{t}-{i}").as_bytes(), k).unwrap();
                        }
                    });
                }
            });
        }
        let s = OwnerKeyStore::open(&p, &[5; 32]).unwrap();
        for (t, chunk) in keys.chunks(8).enumerate() {
            for (i, k) in chunk.iter().enumerate() {
                let got = s.get(format!("cid-{t}-{i}").as_bytes()).unwrap().unwrap();
                assert_eq!(got.expose_secret(), k.expose_secret());
            }
        }
    }
}
