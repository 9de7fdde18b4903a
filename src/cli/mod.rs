//! The `ehr` command line: argument parsing and dispatch. Each area lives in its own module.

mod ipfs;
mod seal;

use clap::{Parser, Subcommand};

/// The encrypted EHR storage and search node, and its command-line client.
///
/// Records are sealed (chunked AES-256-GCM, key-committing) and stored as content-addressed
/// blobs in an IPFS repository; CIDs are the ones Kubo gives with `ipfs add --cid-version=1`.
#[derive(Debug, Parser)]
#[command(name = "ehr", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with the local IPFS repository: add files, read them back, pin, export CARs.
    #[command(subcommand)]
    Ipfs(ipfs::IpfsCmd),
    /// Seal a local file: encrypt it into an authenticated, key-committing envelope.
    Seal(seal::SealArgs),
    /// Open a sealed envelope: verify and decrypt it with its data key.
    Open(seal::OpenArgs),
}

/// Parses the command line and runs the chosen command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ipfs(cmd) => ipfs::run(cmd),
        Command::Seal(args) => seal::run_seal(args),
        Command::Open(args) => seal::run_open(args),
    }
}
