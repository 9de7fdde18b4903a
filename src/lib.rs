//! The `ehr` node: the command line, and (as they land) the HTTP API, the ledger's network
//! driver and the wiring of storage, search and ledger. The binary in `main.rs` only calls
//! [`cli::main`]; everything lives in this library so end-to-end tests and benches can use it.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod consortium;
pub mod fhir;
pub mod http;
pub mod keywrap;
pub mod ledger_net;
pub mod node;
pub mod recordkey;
