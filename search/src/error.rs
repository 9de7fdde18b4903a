//! Errors of the search crate: one enum per area, each variant one documented failure.

/// Why a policy could not be parsed or compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy text is empty.
    #[error("the policy is empty")]
    Empty,
}

/// Why a CP-ABE operation (setup, key issuance, wrap, unwrap, decode) failed.
#[derive(Debug, thiserror::Error)]
pub enum AbeError {
    /// The attributes do not satisfy the policy.
    #[error("the attributes do not satisfy the policy")]
    NotSatisfied,
}

/// Why a search-key, trapdoor or index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// An error from the tantivy index.
    #[error("index error: {0}")]
    Tantivy(String),
}
