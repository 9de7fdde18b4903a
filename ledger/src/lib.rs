//! `ehr-ledger`: the consortium's replicated ledger, as a sans-IO PBFT state machine.
//!
//! - [`app`]: the contract between consensus and the replicated application ([`app::App`]).
//! - [`replica`]: the PBFT replica core (normal case, checkpoints, view change, state transfer).
//! - [`block`], [`merkle`], [`crypto`]: blocks, commit and checkpoint certificates, inclusion
//!   proofs for light clients, the Ed25519 signer/verifier traits.
//! - [`store`]: durable consensus state (redb) and an in-memory store.
//! - [`sim`]: the seeded deterministic simulator and a small test application.
//! - [`state`]: the application: participants, attributes, capsules, records, grants, audit.
//!
//! Nothing in this crate reads a clock, draws randomness or does network I/O: time arrives as
//! ticks, randomness and signing keys are given, and effects leave as actions.

pub mod app;
pub mod block;
mod bytes_serde;
pub mod crypto;
pub mod error;
pub mod merkle;
pub mod policy;
pub mod replica;
pub mod sim;
pub mod smt;
pub mod state;
pub mod store;
pub mod tx;
