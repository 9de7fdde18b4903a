//! Errors of the ledger crate.

/// Why the ledger refused an input.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A message or transaction could not be decoded.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}

/// Why the application state refused an input that is not a transaction (genesis, policies,
/// proofs, snapshots).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The genesis configuration is invalid; the message names the field.
    #[error("invalid genesis: {0}")]
    Genesis(String),
    /// An access policy does not parse; the message says where.
    #[error("invalid policy: {0}")]
    Policy(String),
    /// A state proof does not verify against the root, key and value.
    #[error("state proof does not verify: {0}")]
    Proof(&'static str),
    /// A proof or snapshot could not be decoded.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}
