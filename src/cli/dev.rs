//! `ehr dev`: run a node on an embedded single-machine default.
//!
//! Everything lives under one data directory (default `./data`): the IPFS repository in
//! `ipfs/`. The swarm listens on 127.0.0.1 with ephemeral TCP and QUIC ports, which are printed
//! at start so other IPFS peers (Kubo, Helia) can dial in and fetch sealed records by CID. As
//! the ledger and the HTTP API land, this command grows into the whole embedded consortium.

use std::path::PathBuf;

use anyhow::Context as _;
use ehr_storage::blockstore::{Blockstore, BlockstoreConfig};

/// Arguments of `ehr dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory holding all of the node's state (created if absent).
    #[arg(long, env = "EHR_DATA_DIR", default_value = "data", value_name = "DIR")]
    pub data_dir: PathBuf,
}

/// Runs `ehr dev` until Ctrl-C (or SIGTERM).
pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let cfg = BlockstoreConfig {
        repo: args.data_dir.join("ipfs"),
        ..BlockstoreConfig::default()
    };
    let store = Blockstore::open(cfg).await.with_context(|| {
        format!(
            "cannot open the IPFS repository under {} (is another `ehr` using it?)",
            args.data_dir.display()
        )
    })?;
    let report = store.open_report();
    if !report.is_clean() {
        tracing::warn!(?report, "the IPFS repository needed attention at open");
    }
    let peer = store.peer_id();
    println!("ehr dev: data directory {}", args.data_dir.display());
    println!("ehr dev: IPFS peer {peer}");
    for addr in store
        .listen_addrs()
        .await
        .context("cannot read the swarm's listen addresses")?
    {
        println!("ehr dev: IPFS swarm listening on {addr}/p2p/{peer}");
    }
    println!("ehr dev: ready (Ctrl-C to stop)");

    shutdown_signal().await;
    println!("ehr dev: stopping");
    store.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what Kubernetes and `kill` send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
