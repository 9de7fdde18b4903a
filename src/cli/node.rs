//! `ehr node --config FILE`: runs one node until SIGTERM or Ctrl-C.

use std::path::PathBuf;

/// Arguments of `ehr node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's TOML configuration file.
    #[arg(long, env = "EHR_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs the node.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let cfg = crate::config::NodeConfig::load(&args.config)?;
    anyhow::bail!("node runtime not wired yet for {}", cfg.chain_id)
}
