//! Errors of the ledger crate.

/// Why the ledger refused an input.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A message or transaction could not be decoded.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}
