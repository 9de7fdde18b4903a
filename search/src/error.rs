//! Errors of the search crate: one enum per area, each variant one documented failure.

/// Why a policy could not be parsed or compiled, or an attribute is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy text is empty.
    #[error("the policy is empty")]
    Empty,
    /// The policy text is longer than the limit.
    #[error("the policy is {len} bytes long; at most {max} are accepted")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The text at a byte offset is malformed; the reason is given.
    #[error("at byte {pos}: {reason}")]
    Invalid {
        /// Byte offset of the fault.
        pos: usize,
        /// Why the text there was rejected.
        reason: &'static str,
    },
    /// A token appears where something else was expected.
    #[error("at byte {pos}: expected {expected}, found {found}")]
    Unexpected {
        /// Byte offset of the token.
        pos: usize,
        /// The token found.
        found: String,
        /// What the grammar expected there.
        expected: &'static str,
    },
    /// The text ends where more was expected.
    #[error("at byte {pos} (end of the policy): expected {expected}")]
    UnexpectedEnd {
        /// Byte offset of the end.
        pos: usize,
        /// What the grammar expected there.
        expected: &'static str,
    },
    /// A threshold `k of (...)` has k = 0 or k greater than its number of children.
    #[error("at byte {pos}: threshold {k} of {n} children is out of range (1..={n})")]
    ThresholdOutOfRange {
        /// Byte offset of the threshold.
        pos: usize,
        /// The threshold written.
        k: u64,
        /// How many children the gate has.
        n: usize,
    },
    /// Parentheses or gates nest deeper than the limit.
    #[error("at byte {pos}: nesting deeper than {max} levels")]
    TooDeep {
        /// Byte offset where the limit was exceeded.
        pos: usize,
        /// The depth limit.
        max: usize,
    },
    /// The policy mentions more attribute occurrences than the limit.
    #[error("the policy has more than {max} attribute occurrences")]
    TooManyAttributes {
        /// The limit.
        max: usize,
    },
    /// An attribute string (outside a policy) is malformed; the reason is given.
    #[error("invalid attribute {attribute:?}: {reason}")]
    InvalidAttribute {
        /// The attribute (its first 64 characters).
        attribute: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// Why a CP-ABE operation (setup, key issuance, wrap, unwrap, decode) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbeError {
    /// The key's attributes do not satisfy the ciphertext's policy.
    #[error("the attributes do not satisfy the policy")]
    NotSatisfied,
    /// Decryption failed: the wrapped key was tampered with, the associated data differs, or the key is not valid for it.
    #[error("decryption failed (tampered ciphertext, wrong associated data or invalid key)")]
    DecryptionFailed,
    /// An encoding is malformed; what was being decoded, the field and the reason are given.
    #[error("malformed {what}: field {field}: {reason}")]
    Decode {
        /// The object being decoded (e.g. "wrapped key").
        what: &'static str,
        /// The field at fault.
        field: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An encoding has a version or kind this implementation does not read.
    #[error("unsupported {what} encoding: kind {kind}, version {version}")]
    UnsupportedVersion {
        /// The object being decoded.
        what: &'static str,
        /// The kind byte found.
        kind: u8,
        /// The version byte found.
        version: u8,
    },
    /// An argument is invalid; the parameter and the reason are given.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The parameter at fault.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A partial key failed verification against its validator's verification key or request.
    #[error("partial key from validator {index} is invalid: {reason}")]
    InvalidPartial {
        /// The validator index the partial claims.
        index: u32,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Fewer valid partial keys than the threshold were supplied.
    #[error("need {needed} partial keys from distinct validators, got {got}")]
    NotEnoughPartials {
        /// The threshold t.
        needed: usize,
        /// How many distinct valid partials were supplied.
        got: usize,
    },
    /// The public parameters are inconsistent (verification keys do not match the master key).
    #[error("inconsistent public parameters: {0}")]
    InconsistentParams(&'static str),
    /// A policy or attribute was rejected.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
}

/// Why an index operation (open, apply, commit, search) failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// An error from the tantivy index.
    #[error("index error: {0}")]
    Tantivy(String),
    /// Reading or writing the index directory failed.
    #[error("index I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is invalid; the field and the reason are given.
    #[error("invalid index configuration: {field}: {reason}")]
    Config {
        /// The configuration field at fault.
        field: &'static str,
        /// Why its value was rejected.
        reason: String,
    },
    /// An event field is malformed; the field and the reason are given.
    #[error("invalid index event: {field}: {reason}")]
    InvalidEvent {
        /// The event field at fault.
        field: &'static str,
        /// Why its value was rejected.
        reason: String,
    },
    /// An event older than the last applied height would change the index.
    #[error(
        "event at height {event_height} is older than the last applied height {applied_height}"
    )]
    OutOfOrder {
        /// The height the event carries.
        event_height: u64,
        /// The highest height already applied.
        applied_height: u64,
    },
    /// A record with this CID exists with different contents (conflicting ledger events).
    #[error("record {cid_hex} already indexed with different contents")]
    Conflict {
        /// The CID, hex-encoded.
        cid_hex: String,
    },
    /// A removal names a record the index never saw.
    #[error("record {cid_hex} is not in the index")]
    UnknownRecord {
        /// The CID, hex-encoded.
        cid_hex: String,
    },
    /// A query is malformed or exceeds the configured limits; the reason is given.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A pagination cursor could not be decoded.
    #[error("invalid cursor: {0}")]
    InvalidCursor(&'static str),
    /// The index directory holds data this version cannot read.
    #[error("corrupt index: {0}")]
    Corrupt(String),
}

impl From<tantivy::TantivyError> for IndexError {
    fn from(e: tantivy::TantivyError) -> Self {
        IndexError::Tantivy(e.to_string())
    }
}

/// Why a search-key, keyword, label, counter or trapdoor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// A keyword is empty, too long or contains forbidden characters; the reason is given.
    #[error("invalid keyword for field {field}: {reason}")]
    InvalidKeyword {
        /// The keyword's field name.
        field: &'static str,
        /// Why the keyword was rejected.
        reason: &'static str,
    },
    /// The requested epoch is later than the key state held, so it cannot be derived.
    #[error("epoch {requested} cannot be derived from a state of epoch {held}")]
    EpochNotDerivable {
        /// The epoch asked for.
        requested: u32,
        /// The epoch of the state held.
        held: u32,
    },
    /// The key-regression chain has no epoch left; a new search key is needed.
    #[error("the search key's chain is exhausted at epoch {0}")]
    ChainExhausted(u32),
    /// A serialized key, state or trapdoor is malformed; the reason is given.
    #[error("malformed encoding of {what}: {reason}")]
    Encoding {
        /// What was being decoded.
        what: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A label counter would overflow.
    #[error("label counter overflow")]
    CounterOverflow,
    /// A counter entry failed authentication (tampered or written under another key).
    #[error("counter store entry failed authentication")]
    CounterTampered,
    /// Reading or writing the counter store failed.
    #[error("counter store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The counter store file is corrupt; the reason is given.
    #[error("corrupt counter store: {0}")]
    CorruptStore(&'static str),
    /// Sealing or opening a capsule failed in the CP-ABE layer.
    #[error("capsule: {0}")]
    Abe(#[from] AbeError),
    /// An opened capsule holds a state for another epoch than its header says.
    #[error("capsule for epoch {header} holds a state of epoch {inner}")]
    CapsuleEpochMismatch {
        /// The epoch in the capsule header.
        header: u32,
        /// The epoch of the wrapped state.
        inner: u32,
    },
}
