//! The ledger's network driver: PBFT replicas talking over TCP.
//!
//! - [`frame`]: `u32` length-prefixed frames with a maximum size.
//! - [`handshake`]: both ends prove possession of their validator Ed25519 key over fresh
//!   nonces, the chain id and both replica ids.
//! - [`transport`]: one outgoing connection task per peer with a bounded queue and
//!   reconnects, incoming connections forwarded into one bounded channel; generic over the
//!   listener and connector so tests run it on a simulated network.
//! - [`driver`]: the task that owns the replica and its store and executes its actions in
//!   order ([`LedgerNode`] starts it together with the transport).
//! - [`client`]: submitting a transaction and waiting for its commit certificate, or for
//!   f+1 matching replies.

pub mod client;
pub mod driver;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod transport;

pub use client::{Client, Committed, PendingCommit, submit_quorum};
pub use driver::{DriverConfig, LedgerEvent, LedgerNode, Status};
pub use error::NetError;
pub use handshake::{Identity, ValidatorSet};
pub use transport::{Connector, Inbound, Listener, TcpConnector, Transport, TransportConfig};
