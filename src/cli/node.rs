//! `ehr node --config FILE`: runs one node until SIGTERM or Ctrl-C, then shuts down gracefully
//! (requests in flight finish, the ledger driver stops after its last fsync, the index and
//! blockstore close).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::NodeConfig;
use crate::node::{Node, StartOptions};

/// Arguments of `ehr node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's TOML configuration file.
    #[arg(long, env = "EHR_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs the node.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let node = Node::start(cfg, StartOptions::default())
            .await
            .context("cannot start the node")?;
        tracing::info!(http = %node.http_addr(), ledger = %node.ledger_addr(), "node running");
        super::dev::shutdown_signal().await;
        tracing::info!("stopping");
        node.shutdown().await;
        Ok(())
    })
}
