//! `ehr-search`: attribute-based access and leak-resistant encrypted keyword search.
//!
//! - [`policy`]: the policy language and its compilation to an LSSS (monotone span program).
//! - [`abe`]: FABEO CP-ABE on BLS12-381 as a CCA-secure KEM, with threshold key issuance.
//! - [`sse`]: search keys, epochs with key regression, per-entry labels, trapdoors.
//! - [`index`]: the tantivy index of opaque labels, built only from ledger events.

pub mod abe;
pub mod error;
pub mod index;
pub mod policy;
pub mod sse;

pub use error::{AbeError, IndexError, PolicyError, SseError};
