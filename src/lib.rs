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

/// Runs blocking work (file I/O with fsync) from async code without stalling the runtime's
/// other tasks: on a multi-threaded runtime the worker hands its tasks over while `f` runs
/// (`block_in_place`); elsewhere (current-thread runtimes, tests, simulation) `f` runs inline.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        .unwrap_or(false);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
