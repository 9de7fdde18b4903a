//! Signed ledger transactions: the canonical byte encoding, signing, and decoding of hostile
//! bytes.
//!
//! # Encoding (version 1)
//!
//! ```text
//! tx        = version:u8 (= 1) || body || signer:[u8; 32] || signature:[u8; 64]
//! body      = postcard(TxBody)            (chain id, sender, nonce, kind)
//! signed    = "ehr-ledger/tx-body/v1\0" || version || body
//! tx id     = SHA3-256(tx)
//! ```
//!
//! Decoding is strict: the whole input is at most [`MAX_TX_BYTES`], the body must re-encode to
//! exactly the bytes it was read from (so every transaction has one encoding and one id), the
//! signature block must follow it with nothing after, and every variable-length field is
//! bounded (see the `MAX_*` constants). Strings are few and constrained so that no free text
//! (and so no health data) reaches the ledger: chain ids and labels are `[a-z0-9._:@-]`, a
//! patient has no label at all, access purposes are an enumeration, and attributes and
//! policies follow the policy language ([`crate::policy`]).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};
use spki::SubjectPublicKeyInfoRef;
use spki::der::asn1::{ObjectIdentifier, UintRef};
use spki::der::{Decode, Reader, SliceReader, Tag, Tagged};

use crate::app::{Hash, TxReject};

/// The only encoding version this crate reads and writes.
pub const TX_VERSION: u8 = 1;
/// The largest accepted encoded transaction, in bytes.
pub const MAX_TX_BYTES: usize = 64 * 1024;
/// The longest chain id, in bytes.
pub const MAX_CHAIN_ID: usize = 64;
/// The longest participant label, in bytes.
pub const MAX_LABEL: usize = 64;
/// The longest attribute string (`key:value`), in bytes (as in the search crate's policies).
pub const MAX_ATTRIBUTE_LEN: usize = 256;
/// The most attributes one transaction may assign or revoke.
pub const MAX_ATTRIBUTES_PER_TX: usize = 64;
/// The longest capsule policy text, in bytes (as in the search crate's policies).
pub const MAX_POLICY_LEN: usize = 16 * 1024;
/// The longest wrapped (CP-ABE encapsulated) key, in bytes.
pub const MAX_WRAPPED_KEY: usize = 4096;
/// The longest content identifier, in bytes.
pub const MAX_CID_LEN: usize = 128;
/// The most search labels one record may carry.
pub const MAX_SEARCH_LABELS: usize = 2048;
/// The most records one `RegisterRecords` transaction may register (the encoded transaction
/// must also fit [`MAX_TX_BYTES`]).
pub const MAX_RECORDS_PER_TX: usize = 256;
/// The longest registered authentication key (SubjectPublicKeyInfo DER), in bytes.
pub const MAX_AUTH_KEY_DER: usize = 1024;
/// The smallest accepted RSA modulus of an authentication key, in bits.
pub const MIN_RSA_MODULUS_BITS: usize = 2048;
/// The largest accepted RSA modulus of an authentication key, in bits.
pub const MAX_RSA_MODULUS_BITS: usize = 4096;

/// Domain separator prepended to the bytes an Ed25519 signature covers.
const SIGN_DOMAIN: &[u8] = b"ehr-ledger/tx-body/v1\0";
/// Length of the signer key and signature that close every transaction.
const TRAILER_LEN: usize = 32 + 64;

/// Stable reject codes of the application (the `code` of [`TxReject`]).
pub mod codes {
    /// The bytes do not decode as a transaction.
    pub const MALFORMED: &str = "malformed";
    /// The transaction is larger than the encoding allows.
    pub const TOO_LARGE: &str = "too-large";
    /// The encoding version is not one this ledger reads.
    pub const UNSUPPORTED_VERSION: &str = "unsupported-version";
    /// The bytes decode but are not the canonical encoding of what they decode to.
    pub const NON_CANONICAL: &str = "non-canonical";
    /// A field is empty, too long, or has characters outside its set.
    pub const INVALID_FIELD: &str = "invalid-field";
    /// The Ed25519 signature does not verify (strictly) over the signed bytes.
    pub const BAD_SIGNATURE: &str = "bad-signature";
    /// The transaction names another chain.
    pub const WRONG_CHAIN: &str = "wrong-chain";
    /// The sender is not a registered participant.
    pub const UNKNOWN_SENDER: &str = "unknown-sender";
    /// The signer key is not the sender's current key.
    pub const WRONG_SIGNER: &str = "wrong-signer";
    /// The nonce was already used by this sender.
    pub const NONCE_REPLAYED: &str = "nonce-replayed";
    /// The nonce skips ahead of the sender's next nonce.
    pub const NONCE_GAP: &str = "nonce-gap";
    /// The sender's role or relation does not permit this transaction.
    pub const NOT_PERMITTED: &str = "not-permitted";
    /// The participant, capsule, record or key already exists.
    pub const DUPLICATE: &str = "duplicate";
    /// A named participant is not registered.
    pub const UNKNOWN_PARTICIPANT: &str = "unknown-participant";
    /// A named capsule is not published.
    pub const UNKNOWN_CAPSULE: &str = "unknown-capsule";
    /// A named record is not registered.
    pub const UNKNOWN_RECORD: &str = "unknown-record";
    /// A named grant does not exist.
    pub const UNKNOWN_GRANT: &str = "unknown-grant";
    /// A capsule epoch is not the expected one.
    pub const WRONG_EPOCH: &str = "wrong-epoch";
    /// The record has been superseded.
    pub const RECORD_INACTIVE: &str = "record-inactive";
    /// The grant is already revoked or expired.
    pub const GRANT_INACTIVE: &str = "grant-inactive";
    /// An expiry height is not in the future.
    pub const EXPIRED: &str = "expired";
    /// The public key is already used (now or formerly) by a participant.
    pub const KEY_IN_USE: &str = "key-in-use";
    /// The policy text does not parse.
    pub const BAD_POLICY: &str = "bad-policy";
    /// A per-participant limit would be exceeded.
    pub const LIMIT_EXCEEDED: &str = "limit-exceeded";
    /// An attribute to revoke is not assigned to the participant.
    pub const NOT_ASSIGNED: &str = "not-assigned";
    /// A snapshot does not decode or does not match the expected state root.
    pub const BAD_SNAPSHOT: &str = "bad-snapshot";
    /// A named authentication key is not registered to the sender.
    pub const UNKNOWN_AUTH_KEY: &str = "unknown-auth-key";
}

pub(crate) fn reject(code: &'static str, reason: impl Into<String>) -> TxReject {
    TxReject {
        code,
        reason: reason.into(),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(&self.0[..8]))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
    };
}

id_type!(
    /// A participant's permanent id: the public key it was registered with (it survives key
    /// rotation).
    ParticipantId
);
id_type!(
    /// A capsule's id, chosen by the publishing hospital.
    CapsuleId
);
id_type!(
    /// A grant's id: the id of the `Grant` transaction that created it.
    GrantId
);

/// A content identifier of a sealed record (the binary CID), at most [`MAX_CID_LEN`] bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cid(pub Vec<u8>);

impl std::fmt::Debug for Cid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cid({})", hex::encode(&self.0))
    }
}

/// What a participant is in the consortium.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A consensus node operator (fixed at genesis in v1).
    Validator,
    /// A data owner: publishes capsules and registers records.
    Hospital,
    /// A data user: searches and reads what its attributes or grants allow.
    Researcher,
    /// A data subject: may grant and revoke access to its own records.
    Patient,
    /// Registers participants and assigns attributes.
    AttributeAuthority,
}

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Fetch and decrypt the record.
    Read,
}

/// Why a record was accessed (an enumeration, never free text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// Care of the patient.
    Treatment,
    /// An approved study.
    Research,
    /// Compliance review.
    Audit,
    /// Break-glass emergency access.
    Emergency,
    /// The patient asked for its own record.
    PatientRequest,
}

/// The signature algorithm of a registered authentication key (JWS names `ES384`, `RS384`).
///
/// A participant's Ed25519 key (`EdDSA`) needs no registration: it is its ledger key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AuthAlg {
    /// ECDSA over P-384 with SHA-384; the key is a P-384 SubjectPublicKeyInfo.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-384; the key is an RSA SubjectPublicKeyInfo of
    /// [`MIN_RSA_MODULUS_BITS`]..=[`MAX_RSA_MODULUS_BITS`] bits.
    Rs384,
}

impl AuthAlg {
    /// The JWS `alg` name.
    pub fn jws_name(&self) -> &'static str {
        match self {
            AuthAlg::Es384 => "ES384",
            AuthAlg::Rs384 => "RS384",
        }
    }
}

/// The key material inside a structurally valid authentication key (see [`parse_auth_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKeyMaterial<'a> {
    /// A P-384 point in uncompressed SEC1 form (`0x04 || X || Y`, 97 bytes). Whether the
    /// point is on the curve is checked when a signature is verified, not here.
    P384 {
        /// The SEC1 bytes.
        point: &'a [u8],
    },
    /// An RSA public key.
    Rsa {
        /// The PKCS#1 `RSAPublicKey` DER (the SubjectPublicKeyInfo's key bits).
        pkcs1: &'a [u8],
        /// The modulus length in bits.
        modulus_bits: usize,
    },
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxKind {
    /// Registers a participant under `key` (which becomes its permanent id).
    RegisterParticipant {
        /// The new participant's Ed25519 public key.
        key: [u8; 32],
        /// Its role.
        role: Role,
        /// A short public label such as `hospital-a` (`[a-z0-9._:@-]`); empty for patients.
        label: String,
    },
    /// Replaces the sender's signing key.
    RotateKey {
        /// The new Ed25519 public key.
        new_key: [u8; 32],
    },
    /// Assigns attributes to a participant (authority only).
    AssignAttributes {
        /// Who receives them.
        participant: ParticipantId,
        /// The attribute strings, such as `role:researcher`.
        attributes: Vec<String>,
        /// The first height at which they no longer hold, if any.
        expiry_height: Option<u64>,
    },
    /// Removes attributes from a participant (authority only).
    RevokeAttributes {
        /// Whose attributes.
        participant: ParticipantId,
        /// Which attributes.
        attributes: Vec<String>,
    },
    /// Publishes a capsule: a policy and the search key wrapped under it (hospital only).
    PublishCapsule {
        /// The new capsule's id.
        capsule: CapsuleId,
        /// The access policy text (AND/OR/k-of-n over attributes).
        policy: String,
        /// The search-key epoch the wrapped key belongs to.
        epoch: u64,
        /// The search key wrapped with CP-ABE under the policy.
        wrapped_search_key: Vec<u8>,
    },
    /// Starts the next epoch of a capsule's search key (its owner only).
    RotateCapsuleEpoch {
        /// The capsule.
        capsule: CapsuleId,
        /// The new epoch: exactly the current epoch plus one.
        epoch: u64,
        /// The new epoch's search key wrapped under the policy.
        wrapped_search_key: Vec<u8>,
    },
    /// Registers a sealed record stored under `cid` (the capsule's owner only).
    RegisterRecord {
        /// The record's content identifier.
        cid: Cid,
        /// The capsule (policy and search key) it was sealed and indexed under.
        capsule: CapsuleId,
        /// The capsule epoch its search labels were computed with (the current one).
        epoch: u64,
        /// The data key wrapped with CP-ABE under the capsule's policy.
        wrapped_key: Vec<u8>,
        /// Opaque per-entry search labels.
        search_labels: Vec<[u8; 16]>,
        /// Ciphertext size in bytes.
        size: u64,
        /// The record's patient, if it is a registered participant.
        patient: Option<ParticipantId>,
    },
    /// Grants a participant access to a record (the record's owner or patient only).
    Grant {
        /// The record.
        cid: Cid,
        /// Who may read it.
        grantee: ParticipantId,
        /// What the grant allows.
        scope: Scope,
        /// The first height at which the grant no longer holds.
        expiry_height: u64,
        /// The record's data key rewrapped for the grantee.
        rewrapped_key: Vec<u8>,
    },
    /// Revokes a grant (the record's owner or patient, or the grantor).
    Revoke {
        /// The grant.
        grant: GrantId,
    },
    /// Replaces an active record by a newer active record of the same owner.
    Supersede {
        /// The record being replaced.
        old: Cid,
        /// Its replacement.
        new: Cid,
    },
    /// Records that a node released a record to an accessor (audit).
    RecordAccess {
        /// The record released.
        cid: Cid,
        /// Who received it.
        accessor: ParticipantId,
        /// Why.
        purpose: Purpose,
    },
    /// Registers an additional key the sender may authenticate API requests with (ES384 or
    /// RS384 client assertions); at most a few per participant.
    RegisterAuthKey {
        /// The algorithm the key is for.
        alg: AuthAlg,
        /// The public key as a DER SubjectPublicKeyInfo (at most [`MAX_AUTH_KEY_DER`] bytes).
        public_key_der: Vec<u8>,
    },
    /// Removes one of the sender's registered authentication keys.
    RevokeAuthKey {
        /// The key's hash ([`auth_key_hash`] of its DER).
        key_hash: [u8; 32],
    },
    /// Registers several sealed records of one capsule atomically: all of them or none (a FHIR
    /// transaction Bundle). Each is judged as a `RegisterRecord` would be.
    RegisterRecords {
        /// The capsule (policy and search key) they were sealed and indexed under.
        capsule: CapsuleId,
        /// The capsule epoch their search labels were computed with (the current one).
        epoch: u64,
        /// The records, in order (1..=[`MAX_RECORDS_PER_TX`], distinct CIDs).
        records: Vec<NewRecord>,
    },
}

/// One record of a [`TxKind::RegisterRecords`] transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecord {
    /// The record's content identifier.
    pub cid: Cid,
    /// The data key wrapped with CP-ABE under the capsule's policy.
    pub wrapped_key: Vec<u8>,
    /// Opaque per-entry search labels.
    pub search_labels: Vec<[u8; 16]>,
    /// Ciphertext size in bytes.
    pub size: u64,
    /// The record's patient, if it is a registered participant.
    pub patient: Option<ParticipantId>,
}

impl NewRecord {
    fn validate_fields(&self) -> Result<(), TxReject> {
        check_len("cid", self.cid.0.len(), 1, MAX_CID_LEN)?;
        check_len("wrapped_key", self.wrapped_key.len(), 1, MAX_WRAPPED_KEY)?;
        check_len(
            "search_labels",
            self.search_labels.len(),
            0,
            MAX_SEARCH_LABELS,
        )
    }
}

impl TxKind {
    /// A short name of the kind, for logs and reasons.
    pub fn name(&self) -> &'static str {
        match self {
            TxKind::RegisterParticipant { .. } => "RegisterParticipant",
            TxKind::RotateKey { .. } => "RotateKey",
            TxKind::AssignAttributes { .. } => "AssignAttributes",
            TxKind::RevokeAttributes { .. } => "RevokeAttributes",
            TxKind::PublishCapsule { .. } => "PublishCapsule",
            TxKind::RotateCapsuleEpoch { .. } => "RotateCapsuleEpoch",
            TxKind::RegisterRecord { .. } => "RegisterRecord",
            TxKind::Grant { .. } => "Grant",
            TxKind::Revoke { .. } => "Revoke",
            TxKind::Supersede { .. } => "Supersede",
            TxKind::RecordAccess { .. } => "RecordAccess",
            TxKind::RegisterAuthKey { .. } => "RegisterAuthKey",
            TxKind::RevokeAuthKey { .. } => "RevokeAuthKey",
            TxKind::RegisterRecords { .. } => "RegisterRecords",
        }
    }
}

/// The signed content of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxBody {
    /// The chain this transaction is for; a transaction for another chain is rejected.
    pub chain_id: String,
    /// The participant sending it.
    pub sender: ParticipantId,
    /// The sender's next nonce (its previous nonce plus one; the first is 1).
    pub nonce: u64,
    /// What it does.
    pub kind: TxKind,
}

impl TxBody {
    /// A transaction body.
    pub fn new(chain_id: &str, sender: ParticipantId, nonce: u64, kind: TxKind) -> Self {
        TxBody {
            chain_id: chain_id.to_owned(),
            sender,
            nonce,
            kind,
        }
    }

    /// The canonical encoding of the body (without the version byte).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("invariant: postcard serialises an in-memory TxBody")
    }

    /// Signs the body with `key`, producing a transaction whose signer is `key`'s public key.
    pub fn sign(self, key: &SigningKey) -> SignedTx {
        let body_bytes = self.encode();
        let signature = key.sign(&signing_message(&body_bytes));
        SignedTx {
            body: self,
            signer: key.verifying_key().to_bytes(),
            signature: signature.to_bytes(),
        }
    }

    /// Checks every field's length and character set. Stateless.
    pub fn validate_fields(&self) -> Result<(), TxReject> {
        check_len("chain_id", self.chain_id.len(), 1, MAX_CHAIN_ID)?;
        if !self.chain_id.bytes().all(is_label_byte) {
            return Err(reject(
                codes::INVALID_FIELD,
                "chain_id: only [a-z0-9._:@-] allowed",
            ));
        }
        match &self.kind {
            TxKind::RegisterParticipant { label, role, .. } => {
                check_label(label)?;
                if *role == Role::Patient && !label.is_empty() {
                    return Err(reject(
                        codes::INVALID_FIELD,
                        "label: must be empty for a patient (no identifying data on the ledger)",
                    ));
                }
                if *role != Role::Patient && label.is_empty() {
                    return Err(reject(codes::INVALID_FIELD, "label: must not be empty"));
                }
            }
            TxKind::RotateKey { .. } | TxKind::Revoke { .. } | TxKind::RevokeAuthKey { .. } => {}
            TxKind::AssignAttributes { attributes, .. }
            | TxKind::RevokeAttributes { attributes, .. } => {
                check_len("attributes", attributes.len(), 1, MAX_ATTRIBUTES_PER_TX)?;
                for a in attributes {
                    check_attribute(a)?;
                }
                let mut sorted: Vec<&String> = attributes.iter().collect();
                sorted.sort();
                if sorted.windows(2).any(|w| w[0] == w[1]) {
                    return Err(reject(
                        codes::INVALID_FIELD,
                        "attributes: contains a duplicate",
                    ));
                }
            }
            TxKind::PublishCapsule {
                policy,
                wrapped_search_key,
                ..
            } => {
                check_len("policy", policy.len(), 1, MAX_POLICY_LEN)?;
                check_len(
                    "wrapped_search_key",
                    wrapped_search_key.len(),
                    1,
                    MAX_WRAPPED_KEY,
                )?;
            }
            TxKind::RotateCapsuleEpoch {
                wrapped_search_key, ..
            } => {
                check_len(
                    "wrapped_search_key",
                    wrapped_search_key.len(),
                    1,
                    MAX_WRAPPED_KEY,
                )?;
            }
            TxKind::RegisterRecord {
                cid,
                wrapped_key,
                search_labels,
                ..
            } => {
                check_len("cid", cid.0.len(), 1, MAX_CID_LEN)?;
                check_len("wrapped_key", wrapped_key.len(), 1, MAX_WRAPPED_KEY)?;
                check_len("search_labels", search_labels.len(), 0, MAX_SEARCH_LABELS)?;
            }
            TxKind::Grant {
                cid, rewrapped_key, ..
            } => {
                check_len("cid", cid.0.len(), 1, MAX_CID_LEN)?;
                check_len("rewrapped_key", rewrapped_key.len(), 1, MAX_WRAPPED_KEY)?;
            }
            TxKind::Supersede { old, new } => {
                check_len("old", old.0.len(), 1, MAX_CID_LEN)?;
                check_len("new", new.0.len(), 1, MAX_CID_LEN)?;
                if old == new {
                    return Err(reject(codes::INVALID_FIELD, "new: must differ from old"));
                }
            }
            TxKind::RecordAccess { cid, .. } => {
                check_len("cid", cid.0.len(), 1, MAX_CID_LEN)?;
            }
            TxKind::RegisterAuthKey {
                alg,
                public_key_der,
            } => {
                parse_auth_key(*alg, public_key_der)?;
            }
            TxKind::RegisterRecords { records, .. } => {
                check_len("records", records.len(), 1, MAX_RECORDS_PER_TX)?;
                let mut cids = std::collections::BTreeSet::new();
                for (i, r) in records.iter().enumerate() {
                    r.validate_fields().map_err(|mut e| {
                        e.reason = format!("records[{i}].{}", e.reason);
                        e
                    })?;
                    if !cids.insert(&r.cid) {
                        return Err(reject(
                            codes::INVALID_FIELD,
                            format!("records[{i}].cid: appears twice in the transaction"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A transaction: a body, the signer's public key and its Ed25519 signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTx {
    /// The signed content.
    pub body: TxBody,
    /// The public key that signed it (must be the sender's current key).
    pub signer: [u8; 32],
    /// The Ed25519 signature over the domain-separated body.
    pub signature: [u8; 64],
}

impl SignedTx {
    /// The canonical encoding (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = self.body.encode();
        let mut out = Vec::with_capacity(1 + body.len() + TRAILER_LEN);
        out.push(TX_VERSION);
        out.extend_from_slice(&body);
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.signature);
        out
    }

    /// The transaction id: SHA3-256 of the canonical encoding.
    pub fn id(&self) -> Hash {
        tx_id(&self.to_bytes())
    }

    /// Decodes hostile bytes: never panics; refuses oversize, unknown versions, trailing bytes,
    /// non-canonical encodings and out-of-bounds fields. Does not check the signature.
    pub fn decode(bytes: &[u8]) -> Result<SignedTx, TxReject> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(reject(
                codes::TOO_LARGE,
                format!("transaction: {} bytes > {MAX_TX_BYTES}", bytes.len()),
            ));
        }
        let (&version, rest) = bytes
            .split_first()
            .ok_or_else(|| reject(codes::MALFORMED, "transaction: empty"))?;
        if version != TX_VERSION {
            return Err(reject(
                codes::UNSUPPORTED_VERSION,
                format!("version: {version} (this ledger reads {TX_VERSION})"),
            ));
        }
        let (body, trailer): (TxBody, &[u8]) = postcard::take_from_bytes(rest)
            .map_err(|e| reject(codes::MALFORMED, format!("body: {e}")))?;
        if trailer.len() != TRAILER_LEN {
            return Err(reject(
                codes::MALFORMED,
                format!(
                    "signer/signature: {} bytes follow the body, expected {TRAILER_LEN}",
                    trailer.len()
                ),
            ));
        }
        let body_len = rest.len() - TRAILER_LEN;
        if body.encode() != rest[..body_len] {
            return Err(reject(
                codes::NON_CANONICAL,
                "body: not the canonical encoding",
            ));
        }
        body.validate_fields()?;
        let mut signer = [0u8; 32];
        signer.copy_from_slice(&trailer[..32]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&trailer[32..]);
        Ok(SignedTx {
            body,
            signer,
            signature,
        })
    }

    /// The exact bytes the signature covers.
    pub fn signing_message(&self) -> Vec<u8> {
        signing_message(&self.body.encode())
    }

    /// Verifies the signature with `verify_strict` (rejects small-order keys and points and
    /// non-canonical scalars).
    pub fn verify_signature(&self) -> Result<(), TxReject> {
        let key = VerifyingKey::from_bytes(&self.signer)
            .map_err(|_| reject(codes::BAD_SIGNATURE, "signer: not a valid Ed25519 point"))?;
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.signing_message(), &sig)
            .map_err(|_| reject(codes::BAD_SIGNATURE, "signature: does not verify"))
    }
}

/// SHA3-256 of the bytes: the id of a transaction given in canonical encoding.
pub fn tx_id(bytes: &[u8]) -> Hash {
    Sha3_256::digest(bytes).into()
}

/// Domain separator of authentication key hashes.
const AUTH_KEY_DOMAIN: &[u8] = b"ehr-ledger/auth-key/v1\0";

/// The hash naming a registered authentication key:
/// `SHA3-256("ehr-ledger/auth-key/v1\0" || der)`.
pub fn auth_key_hash(public_key_der: &[u8]) -> Hash {
    let mut h = Sha3_256::new();
    h.update(AUTH_KEY_DOMAIN);
    h.update(public_key_der);
    h.finalize().into()
}

/// OID 1.2.840.10045.2.1 (id-ecPublicKey).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// OID 1.3.132.0.34 (secp384r1).
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// OID 1.2.840.113549.1.1.1 (rsaEncryption).
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Checks that `der` is a strict DER SubjectPublicKeyInfo of the kind `alg` names and returns
/// the key material in it: for [`AuthAlg::Es384`] an id-ecPublicKey on secp384r1 with an
/// uncompressed 97-byte point; for [`AuthAlg::Rs384`] an rsaEncryption key (NULL parameters)
/// whose modulus has [`MIN_RSA_MODULUS_BITS`]..=[`MAX_RSA_MODULUS_BITS`] bits and whose public
/// exponent is odd and in `3..2^33`. Structure only (the ledger has no curve arithmetic):
/// whether a P-384 point lies on the curve is checked by signature verification.
pub fn parse_auth_key(alg: AuthAlg, der: &[u8]) -> Result<AuthKeyMaterial<'_>, TxReject> {
    check_len("public_key_der", der.len(), 1, MAX_AUTH_KEY_DER)?;
    let bad = |why: String| reject(codes::INVALID_FIELD, format!("public_key_der: {why}"));
    let spki = SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| bad(format!("not a DER SubjectPublicKeyInfo ({e})")))?;
    let key_bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("key bit string has unused bits".into()))?;
    match alg {
        AuthAlg::Es384 => {
            if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
                return Err(bad("ES384 needs an EC key (id-ecPublicKey)".into()));
            }
            match spki.algorithm.parameters_oid() {
                Ok(curve) if curve == OID_SECP384R1 => {}
                _ => {
                    return Err(bad(
                        "ES384 needs a key on the P-384 curve (secp384r1)".into()
                    ));
                }
            }
            if key_bits.len() != 97 || key_bits[0] != 0x04 {
                return Err(bad(
                    "P-384 point must be uncompressed (0x04 || X || Y, 97 bytes)".into(),
                ));
            }
            Ok(AuthKeyMaterial::P384 { point: key_bits })
        }
        AuthAlg::Rs384 => {
            if spki.algorithm.oid != OID_RSA_ENCRYPTION {
                return Err(bad("RS384 needs an RSA key (rsaEncryption)".into()));
            }
            match spki.algorithm.parameters {
                Some(p) if p.tag() == Tag::Null && p.value().is_empty() => {}
                _ => return Err(bad("rsaEncryption parameters must be NULL".into())),
            }
            let (n, e) = decode_rsa_public_key(key_bits)
                .map_err(|e| bad(format!("not a PKCS#1 RSAPublicKey ({e})")))?;
            let modulus_bits = bit_length(n);
            if !(MIN_RSA_MODULUS_BITS..=MAX_RSA_MODULUS_BITS).contains(&modulus_bits) {
                return Err(bad(format!(
                    "RSA modulus of {modulus_bits} bits outside \
                     {MIN_RSA_MODULUS_BITS}..={MAX_RSA_MODULUS_BITS}"
                )));
            }
            if n.last().is_some_and(|b| b & 1 == 0) {
                return Err(bad("RSA modulus is even".into()));
            }
            let e_ok = e.len() <= 5
                && e.last().is_some_and(|b| b & 1 == 1)
                && bit_length(e) >= 2
                && bit_length(e) <= 33;
            if !e_ok {
                return Err(bad("RSA exponent must be odd and in 3..2^33".into()));
            }
            Ok(AuthKeyMaterial::Rsa {
                pkcs1: key_bits,
                modulus_bits,
            })
        }
    }
}

/// Decodes a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
/// (both positive), returning their big-endian magnitudes without leading zeros.
fn decode_rsa_public_key(bytes: &[u8]) -> Result<(&[u8], &[u8]), spki::der::Error> {
    let mut reader = SliceReader::new(bytes)?;
    let (n, e) = reader.sequence(|r| {
        let n = UintRef::decode(r)?;
        let e = UintRef::decode(r)?;
        Ok((n.as_bytes(), e.as_bytes()))
    })?;
    reader.finish((n, e))
}

/// The bit length of a big-endian magnitude without leading zero bytes.
fn bit_length(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(&top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_DOMAIN.len() + 1 + body.len());
    m.extend_from_slice(SIGN_DOMAIN);
    m.push(TX_VERSION);
    m.extend_from_slice(body);
    m
}

fn check_len(field: &str, len: usize, min: usize, max: usize) -> Result<(), TxReject> {
    if len < min || len > max {
        Err(reject(
            codes::INVALID_FIELD,
            format!("{field}: length {len} outside {min}..={max}"),
        ))
    } else {
        Ok(())
    }
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-')
}

fn check_label(label: &str) -> Result<(), TxReject> {
    check_len("label", label.len(), 0, MAX_LABEL)?;
    if !label.bytes().all(is_label_byte) {
        return Err(reject(
            codes::INVALID_FIELD,
            "label: only [a-z0-9._:@-] allowed",
        ));
    }
    Ok(())
}

/// Checks an attribute string `key:value` (the policy language's form, value unquoted):
/// at most [`MAX_ATTRIBUTE_LEN`] bytes; the key starts with an ASCII letter and holds only
/// letters, digits, `_`, `.` and `-`; the value is not empty and has no control characters.
pub fn check_attribute(a: &str) -> Result<(), TxReject> {
    check_len("attribute", a.len(), 3, MAX_ATTRIBUTE_LEN)?;
    let bad = |why: &str| Err(reject(codes::INVALID_FIELD, format!("attribute: {why}")));
    let Some((key, value)) = a.split_once(':') else {
        return bad("missing ':' between key and value");
    };
    let mut k = key.chars();
    if !k.next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return bad("key must start with a letter");
    }
    if !k.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return bad("key may hold only letters, digits, '_', '.' and '-'");
    }
    if value.is_empty() {
        return bad("empty value");
    }
    if value.chars().any(char::is_control) {
        return bad("value contains a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sample() -> SignedTx {
        let k = key(1);
        TxBody::new(
            "test-chain",
            ParticipantId(k.verifying_key().to_bytes()),
            1,
            TxKind::RegisterRecord {
                cid: Cid(vec![1, 0x55, 0x12, 0x20, 7, 7, 7]),
                capsule: CapsuleId([3; 32]),
                epoch: 0,
                wrapped_key: vec![9; 200],
                search_labels: vec![[5; 16], [6; 16]],
                size: 4096,
                patient: None,
            },
        )
        .sign(&k)
    }

    #[test]
    fn round_trip_and_signature() {
        let tx = sample();
        let bytes = tx.to_bytes();
        let back = SignedTx::decode(&bytes).unwrap();
        assert_eq!(back, tx);
        back.verify_signature().unwrap();
        assert_eq!(back.id(), tx_id(&bytes));
    }

    #[test]
    fn tampered_body_fails_signature() {
        let mut tx = sample();
        tx.body.nonce = 2;
        assert_eq!(
            tx.verify_signature().unwrap_err().code,
            codes::BAD_SIGNATURE
        );
        let mut tx = sample();
        tx.body.chain_id = "other-chain".into();
        assert_eq!(
            tx.verify_signature().unwrap_err().code,
            codes::BAD_SIGNATURE
        );
    }

    #[test]
    fn trailing_and_truncated_bytes_refused() {
        let bytes = sample().to_bytes();
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            SignedTx::decode(&longer).unwrap_err().code,
            codes::MALFORMED
        );
        for cut in [0, 1, 10, bytes.len() - 1] {
            assert!(SignedTx::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn version_and_size_checked() {
        let mut bytes = sample().to_bytes();
        bytes[0] = 2;
        assert_eq!(
            SignedTx::decode(&bytes).unwrap_err().code,
            codes::UNSUPPORTED_VERSION
        );
        let huge = vec![1u8; MAX_TX_BYTES + 1];
        assert_eq!(SignedTx::decode(&huge).unwrap_err().code, codes::TOO_LARGE);
    }

    #[test]
    fn non_canonical_varint_refused() {
        // nonce 1 is encoded as the single byte 0x01; 0x81 0x00 is an overlong form of it.
        let tx = sample();
        let body = tx.body.encode();
        let chain_len = 1 + tx.body.chain_id.len();
        let nonce_at = chain_len + 32;
        assert_eq!(body[nonce_at], 1);
        let mut alt = vec![TX_VERSION];
        alt.extend_from_slice(&body[..nonce_at]);
        alt.extend_from_slice(&[0x81, 0x00]);
        alt.extend_from_slice(&body[nonce_at + 1..]);
        alt.extend_from_slice(&tx.signer);
        alt.extend_from_slice(&tx.signature);
        match SignedTx::decode(&alt) {
            Err(r) => assert!(r.code == codes::NON_CANONICAL || r.code == codes::MALFORMED),
            Ok(_) => panic!("overlong varint accepted"),
        }
    }

    #[test]
    fn field_limits() {
        let k = key(2);
        let me = ParticipantId(k.verifying_key().to_bytes());
        let bad = [
            TxKind::RegisterParticipant {
                key: [1; 32],
                role: Role::Patient,
                label: "alice".into(),
            },
            TxKind::RegisterParticipant {
                key: [1; 32],
                role: Role::Hospital,
                label: "Hospital A".into(),
            },
            TxKind::AssignAttributes {
                participant: me,
                attributes: vec!["role:x".into(), "role:x".into()],
                expiry_height: None,
            },
            TxKind::AssignAttributes {
                participant: me,
                attributes: vec!["and".into()],
                expiry_height: None,
            },
            TxKind::AssignAttributes {
                participant: me,
                attributes: vec![],
                expiry_height: None,
            },
            TxKind::RegisterRecord {
                cid: Cid(vec![]),
                capsule: CapsuleId([0; 32]),
                epoch: 0,
                wrapped_key: vec![1],
                search_labels: vec![],
                size: 0,
                patient: None,
            },
            TxKind::Supersede {
                old: Cid(vec![1]),
                new: Cid(vec![1]),
            },
        ];
        for kind in bad {
            let name = kind.name();
            let tx = TxBody::new("c", me, 1, kind).sign(&k);
            let err = SignedTx::decode(&tx.to_bytes()).unwrap_err();
            assert_eq!(err.code, codes::INVALID_FIELD, "{name}: {err:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SignedTx::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_tx_never_panics(idx in 0usize..400, val in any::<u8>(), cut in 0usize..400) {
            let mut bytes = sample().to_bytes();
            let i = idx % bytes.len();
            bytes[i] = val;
            let c = cut.min(bytes.len());
            let _ = SignedTx::decode(&bytes[..c]);
            if let Ok(tx) = SignedTx::decode(&bytes) {
                // Anything that decodes re-encodes to the same bytes.
                prop_assert_eq!(tx.to_bytes(), bytes);
            }
        }
    }
}
