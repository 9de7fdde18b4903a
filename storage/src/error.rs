//! Errors of the storage crate: one enum per module, each variant one documented failure.

/// Why sealing or opening an envelope failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// An I/O error while reading the input or writing the output.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a blockstore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on the repository.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}
