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
    /// An I/O error on the repository or on the caller's reader or writer.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A configuration field is invalid; nothing was opened.
    #[error("invalid blockstore configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field of `BlockstoreConfig`.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The node identity file could not be read, parsed or created.
    #[error("node identity `{path}`: {reason}")]
    Identity {
        /// The identity file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The underlying IPFS repository or swarm reported a failure.
    #[error("ipfs repository: {0}")]
    Repo(String),
    /// A block needed for the operation is not in the local repository.
    #[error("block {cid} is not in the local repository")]
    BlockMissing {
        /// The missing block.
        cid: String,
    },
    /// A stored or received block does not hash to its CID (corruption or tampering).
    #[error("block {cid} does not match its hash")]
    HashMismatch {
        /// The block whose bytes do not match.
        cid: String,
    },
    /// The CID uses a multihash this store cannot verify.
    #[error("block {cid} uses unsupported multihash code {code:#x}")]
    UnsupportedHash {
        /// The CID.
        cid: String,
        /// Its multihash code.
        code: u64,
    },
    /// The CID uses a codec that is not a UnixFS file (raw or dag-pb).
    #[error(
        "block {cid} has codec {codec:#x}, which is not a UnixFS file (raw 0x55 or dag-pb 0x70)"
    )]
    UnsupportedCodec {
        /// The CID.
        cid: String,
        /// Its codec.
        codec: u64,
    },
    /// A DAG node could not be decoded as a UnixFS file node, or its sizes are inconsistent.
    #[error("malformed UnixFS node {cid}: {reason}")]
    MalformedNode {
        /// The node.
        cid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A byte range does not fit the file.
    #[error("invalid byte range {start}..{end} for a file of {size} bytes")]
    InvalidRange {
        /// Requested start offset.
        start: u64,
        /// Requested end offset (exclusive).
        end: u64,
        /// The file's size.
        size: u64,
    },
    /// A CAR archive could not be read, written or fully imported.
    #[error("CAR archive: {0}")]
    Car(String),
    /// A DAG is not completely present locally (so it cannot be pinned or exported).
    #[error("DAG {root} is incomplete: block {missing} is not in the local repository")]
    IncompleteDag {
        /// The root of the DAG.
        root: String,
        /// The first missing block found.
        missing: String,
    },
    /// A swarm operation (listen, dial) failed.
    #[error("network: {0}")]
    Network(String),
}
