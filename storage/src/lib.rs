//! `ehr-storage`: turns a health record into an encrypted, content-addressed IPFS object.
//!
//! - [`seal`]: the streaming AEAD envelope (segments, per-segment nonces, final flag,
//!   key commitment, bound context).
//! - [`blockstore`]: the on-disk IPFS repo (rust-ipfs) behind a concrete facade: Kubo-identical
//!   CIDs, streaming add and verified read, pins, GC, CAR, and the swarm.

pub mod blockstore;
pub mod error;
pub mod seal;

pub use error::{SealError, StoreError};
