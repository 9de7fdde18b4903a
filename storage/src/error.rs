//! Errors of the storage crate: one enum per module, each variant one documented failure.

/// Why sealing or opening an envelope failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// An I/O error while reading the input or writing the output.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A `SealConfig` field (or the segment length read from a header) is out of range.
    #[error("invalid seal configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A `SealContext` field is too long to be bound.
    #[error("invalid seal context `{field}`: {reason}")]
    InvalidContext {
        /// The offending field.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The operating system's random generator failed; nothing was sealed.
    #[error("the system random generator failed")]
    Random,
    /// The input does not start with the envelope magic bytes: it is not a sealed envelope.
    #[error("not a sealed envelope: bad magic bytes at offset 0")]
    BadMagic,
    /// The envelope has a format version this build cannot open.
    #[error(
        "unsupported envelope version {found} at offset 8 (this build opens version {supported})"
    )]
    UnsupportedVersion {
        /// The version byte found in the header.
        found: u8,
        /// The version this build supports.
        supported: u8,
    },
    /// A header field is malformed (reserved bytes set, segment length out of range).
    #[error("malformed envelope header: {reason}")]
    MalformedHeader {
        /// What is wrong with the header.
        reason: String,
    },
    /// The key commitment in the header does not match: wrong data key (or an altered header).
    #[error(
        "wrong data key: the header's key commitment does not match (or the header was altered)"
    )]
    WrongKey,
    /// The key is right but the envelope was sealed for another context (policy or record).
    #[error("context mismatch: the envelope was sealed for a different policy or record context")]
    ContextMismatch,
    /// The envelope ends inside its header.
    #[error("truncated envelope: it ends inside the header ({len} of {expected} bytes)")]
    TruncatedHeader {
        /// Bytes present.
        len: u64,
        /// Header length.
        expected: u64,
    },
    /// The envelope ends before its final segment (cut at a segment boundary or in the header).
    #[error("truncated envelope: it ends after {segments} segment(s), before the final segment")]
    Truncated {
        /// Segments that were present and authenticated.
        segments: u64,
    },
    /// Bytes follow the final segment.
    #[error("trailing data after the final segment {segment} (at sealed offset {offset})")]
    TrailingData {
        /// Index of the final segment.
        segment: u64,
        /// Sealed byte offset where the extra data starts.
        offset: u64,
    },
    /// A segment failed authentication: it was altered, moved, duplicated or cut.
    #[error(
        "segment {segment} (sealed bytes {offset}..{end}) failed authentication: tampered, reordered, duplicated or truncated"
    )]
    SegmentAuth {
        /// Index of the failing segment.
        segment: u64,
        /// Sealed byte offset where the segment starts.
        offset: u64,
        /// Sealed byte offset where the segment ends (exclusive).
        end: u64,
    },
    /// The sealed length cannot be produced by this format (cut inside a segment or padded).
    #[error(
        "invalid sealed length {len}: no plaintext length seals to it with segment length {segment_len}"
    )]
    InvalidSealedLen {
        /// The sealed length.
        len: u64,
        /// The envelope's segment length.
        segment_len: u32,
    },
    /// A requested plaintext range does not fit the record.
    #[error("invalid plaintext range {start}..{end} for a record of {len} bytes")]
    InvalidRange {
        /// Requested start offset.
        start: u64,
        /// Requested end offset (exclusive).
        end: u64,
        /// The record's plaintext length.
        len: u64,
    },
    /// A push-style `Sealer` or `Opener` was used after it returned an error.
    #[error("the {what} is poisoned by an earlier error and cannot be used")]
    Poisoned {
        /// `Sealer` or `Opener`.
        what: &'static str,
    },
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
