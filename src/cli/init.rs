//! `ehr init-consortium`: the genesis ceremony (see [`crate::consortium`]).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::consortium::{InitOptions, init_consortium};

/// Creates a consortium: validator, hospital, authority and demo researcher keys, the t-of-n
/// shares of the CP-ABE master secret, IPFS identities, `consortium.json`, and one directory per
/// node (`node-<i>/node.toml`, `node-<i>/secrets/*.key`).
///
/// SECURITY: this command is the trusted dealer. It sees the CP-ABE master secret (erased when
/// it exits) and writes every node's secret keys. Run it on a trusted, offline machine; then copy
/// each `node-<i>/secrets/` to its node only, hand each identity file to its holder, and delete
/// the secrets left in the output directory.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Number of nodes (validators and hospitals): 1, or 3f+1 >= 4.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Output directory (created; must be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The chain id.
    #[arg(long, default_value = "ehr-dev")]
    pub chain_id: String,
    /// Partial keys needed for an attribute key (default f+1).
    #[arg(long)]
    pub threshold: Option<usize>,
    /// Host name of node i (`{i}` is replaced by the id).
    #[arg(long, default_value = "ehr-{i}.ehr-peers")]
    pub host_pattern: String,
    /// HTTP port of every node.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// PBFT peer port of every node.
    #[arg(long, default_value_t = 7000)]
    pub peer_port: u16,
    /// IPFS swarm port of every node.
    #[arg(long, default_value_t = 4001)]
    pub ipfs_port: u16,
    /// Demo researchers registered at genesis (researcher-0 holds role:researcher and
    /// irb:study-42, the others role:researcher only), with their attribute keys.
    #[arg(long, default_value_t = 1)]
    pub researchers: usize,
    /// Also create a private-network key (a consortium-only, TCP-only IPFS swarm).
    #[arg(long)]
    pub private_network: bool,
}

/// Runs the ceremony and prints what it wrote.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let opts = InitOptions {
        nodes: args.nodes,
        out: args.out,
        chain_id: args.chain_id,
        threshold: args.threshold,
        host_pattern: args.host_pattern,
        http_port: args.http_port,
        peer_port: args.peer_port,
        ipfs_port: args.ipfs_port,
        researchers: args.researchers,
        private_network: args.private_network,
    };
    let report = init_consortium(&opts).context("init-consortium")?;
    println!("consortium: {}", report.consortium.display());
    for p in &report.node_configs {
        println!("node config: {}", p.display());
    }
    println!("authority identity: {}", report.authority.display());
    for p in report.hospitals.iter().chain(&report.researchers) {
        println!("identity: {}", p.display());
    }
    println!(
        "Now copy each node-<i>/secrets/ to its node only, hand out the identity files, and \
         delete the secrets left here."
    );
    Ok(())
}
