//! The client side of the node's API, as the `ehr` CLI uses it: identity and consortium files,
//! an authenticated HTTP client, and the cryptography that stays on the user's machine
//! (opening capsules, building trapdoors, unwrapping and opening records, checking ledger
//! proofs). Secret attribute keys and signing keys never leave this module except as
//! signatures, tokens and trapdoors.

pub mod api;
pub mod consortium;
pub mod crypto;
pub mod error;
pub mod http;
pub mod identity;
pub mod load;
pub mod problem;
pub mod proof;
pub mod record;
pub mod synthetic;

pub use consortium::Consortium;
pub use error::{ClientError, exit_code_of};
pub use http::{NodeClient, Retry};
pub use identity::{Identity, IdentityRole};
pub use problem::Problem;
