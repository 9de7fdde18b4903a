//! Placeholder: replaced by the crate's implementation.
