//! Errors of the ledger's network layer.

use std::io;

/// Why the ledger's network layer refused a peer, a frame or a submission.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The socket failed (connect, read, write).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A frame announced more bytes than the configured maximum; the peer is dropped.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// A frame announced zero bytes, which no message encodes to.
    #[error("empty frame")]
    EmptyFrame,
    /// A frame's kind byte is not one this node knows (or its body does not fit the kind).
    #[error("unknown frame kind {0}")]
    BadFrameKind(u8),
    /// The peer sent nothing (not even a keepalive) for longer than the idle timeout.
    #[error("peer idle for longer than {0:?}")]
    Idle(std::time::Duration),
    /// The stream ended inside a frame (after `got` of `want` bytes).
    #[error("stream ended inside a frame after {got} of {want} bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        want: usize,
    },
    /// A handshake message does not decode; the text names the field.
    #[error("malformed handshake: {0}")]
    MalformedHandshake(&'static str),
    /// The peer speaks a handshake version this node does not.
    #[error("unsupported handshake version {0}")]
    UnsupportedVersion(u16),
    /// The peer belongs to another chain.
    #[error("peer is on another chain")]
    WrongChain,
    /// The peer claims a replica id outside the validator set (or this node's own id).
    #[error("peer claims unknown replica id {0}")]
    UnknownReplica(u32),
    /// The dialled address answered as another replica than the one expected there.
    #[error("expected replica {expected} at this address, peer claims {got}")]
    UnexpectedReplica {
        /// The replica configured at the address.
        expected: u32,
        /// The replica the peer claimed to be.
        got: u32,
    },
    /// The peer's proof of possession of its validator key does not verify.
    #[error("handshake signature of replica {0} does not verify")]
    BadSignature(u32),
    /// The peer did not complete the handshake in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The configuration is invalid; the text names the field.
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// The durable store refused a persist action; the driver stops rather than vote unsafely.
    #[error("store: {0}")]
    Store(String),
    /// The driver has stopped (shut down or failed), so nothing can be submitted.
    #[error("the ledger driver is not running")]
    DriverStopped,
    /// The driver's submission queue is full; retry later.
    #[error("the ledger driver is overloaded")]
    Overloaded,
    /// The transaction was not committed within the timeout (it may still commit later).
    #[error("no commit within {0:?}")]
    Timeout(std::time::Duration),
    /// The replica refused the submitted transaction before ordering it.
    #[error("transaction refused: {0}")]
    Refused(String),
}
