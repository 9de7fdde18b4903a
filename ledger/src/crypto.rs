//! Signing and verification of consensus votes, behind traits so the replica core never holds
//! a concrete key type.
//!
//! - [`Ed25519Signer`] / [`Ed25519Verifier`]: the production scheme. Votes are Ed25519
//!   signatures (verified strictly), so a set of 2f+1 of them is a transferable certificate.
//! - [`InsecureTestSigner`] / [`InsecureTestVerifier`]: a deterministic keyed-hash stand-in used
//!   by the simulator so that thousands of seeds run quickly in debug builds. It is **not** a
//!   signature scheme (anyone holding the public value can forge it) and must never be wired
//!   into a node.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha3::{Digest, Sha3_256};

/// The index of a validator in the ordered validator set of an epoch.
pub type ReplicaId = u32;

/// Produces this replica's signatures.
pub trait Signer: Send {
    /// Signs `msg` (already domain-separated by the caller).
    fn sign(&self, msg: &[u8]) -> [u8; 64];
    /// The 32-byte public key matching this signer.
    fn public_key(&self) -> [u8; 32];
}

/// Checks signatures of the validators of one epoch.
pub trait Verifier: Send {
    /// Whether `sig` is `signer`'s valid signature over `msg`. Unknown signers are invalid.
    fn verify(&self, signer: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool;
}

/// The production signer: an Ed25519 key (zeroized on drop by `ed25519-dalek`).
pub struct Ed25519Signer {
    key: SigningKey,
}

impl Ed25519Signer {
    /// Wraps a signing key.
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// Builds a signer from 32 secret bytes.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(secret),
        }
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field(
                "public_key",
                &hex::encode(self.key.verifying_key().as_bytes()),
            )
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Signer for Ed25519Signer {
    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

/// The production verifier: the epoch's ordered Ed25519 validator keys.
#[derive(Debug, Clone)]
pub struct Ed25519Verifier {
    keys: Vec<Option<VerifyingKey>>,
}

impl Ed25519Verifier {
    /// Builds a verifier over the ordered validator public keys. A key that is not a valid
    /// curve point makes that validator's signatures always invalid.
    pub fn new(validators: &[[u8; 32]]) -> Self {
        Self {
            keys: validators
                .iter()
                .map(|k| VerifyingKey::from_bytes(k).ok())
                .collect(),
        }
    }
}

impl Verifier for Ed25519Verifier {
    fn verify(&self, signer: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Some(Some(key)) = self.keys.get(signer as usize) else {
            return false;
        };
        key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
    }
}

/// Deterministic keyed-hash "signatures" for the simulator only (see the module docs).
#[derive(Debug, Clone)]
pub struct InsecureTestSigner {
    public: [u8; 32],
}

/// The public value of simulated replica `id` under the insecure test scheme.
pub fn insecure_test_public_key(id: ReplicaId) -> [u8; 32] {
    let mut h = Sha3_256::new();
    h.update(b"ehr-ledger/insecure-test-key\0");
    h.update(id.to_be_bytes());
    h.finalize().into()
}

fn insecure_tag(public: &[u8; 32], msg: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, half) in out.chunks_mut(32).enumerate() {
        let mut h = Sha3_256::new();
        h.update(b"ehr-ledger/insecure-test-sig\0");
        h.update([i as u8]);
        h.update(public);
        h.update(msg);
        half.copy_from_slice(&h.finalize());
    }
    out
}

impl InsecureTestSigner {
    /// The test signer of simulated replica `id`.
    pub fn new(id: ReplicaId) -> Self {
        Self {
            public: insecure_test_public_key(id),
        }
    }
}

impl Signer for InsecureTestSigner {
    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        insecure_tag(&self.public, msg)
    }

    fn public_key(&self) -> [u8; 32] {
        self.public
    }
}

/// Verifier for [`InsecureTestSigner`] (simulator only).
#[derive(Debug, Clone)]
pub struct InsecureTestVerifier {
    keys: Vec<[u8; 32]>,
}

impl InsecureTestVerifier {
    /// Verifier over the given public values (see [`insecure_test_public_key`]).
    pub fn new(validators: &[[u8; 32]]) -> Self {
        Self {
            keys: validators.to_vec(),
        }
    }
}

impl Verifier for InsecureTestVerifier {
    fn verify(&self, signer: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
        use subtle::ConstantTimeEq;
        match self.keys.get(signer as usize) {
            Some(k) => insecure_tag(k, msg).ct_eq(sig).into(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_round_trip_and_rejects() {
        let s0 = Ed25519Signer::from_bytes(&[7u8; 32]);
        let s1 = Ed25519Signer::from_bytes(&[8u8; 32]);
        let v = Ed25519Verifier::new(&[s0.public_key(), s1.public_key()]);
        let sig = s0.sign(b"hello");
        assert!(v.verify(0, b"hello", &sig));
        assert!(!v.verify(1, b"hello", &sig), "wrong signer");
        assert!(!v.verify(0, b"hellO", &sig), "wrong message");
        assert!(!v.verify(2, b"hello", &sig), "unknown signer");
        let mut bad = sig;
        bad[3] ^= 1;
        assert!(!v.verify(0, b"hello", &bad));
        assert!(!format!("{s0:?}").contains("0707"));
    }

    #[test]
    fn insecure_scheme_is_deterministic_and_checks_signer() {
        let s = InsecureTestSigner::new(1);
        let v =
            InsecureTestVerifier::new(&[insecure_test_public_key(0), insecure_test_public_key(1)]);
        assert_eq!(s.sign(b"m"), s.sign(b"m"));
        assert!(v.verify(1, b"m", &s.sign(b"m")));
        assert!(!v.verify(0, b"m", &s.sign(b"m")));
        assert!(!v.verify(1, b"n", &s.sign(b"m")));
    }
}
