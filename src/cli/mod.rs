//! The `ehr` command line: argument parsing and dispatch. Each area lives in its own module.

pub mod dev;
mod init;
mod ipfs;
mod node;
mod seal;

use clap::{Parser, Subcommand};

/// The encrypted EHR storage and search node, and its command-line client.
///
/// Records are sealed (chunked AES-256-GCM, key-committing) and stored as content-addressed
/// blobs in an IPFS repository; CIDs are the ones Kubo gives with `ipfs add --cid-version=1`.
#[derive(Debug, Parser)]
#[command(name = "ehr", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr. Logs never contain plaintext records, keywords or keys; the level
    /// comes from `RUST_LOG` (default: warnings, and info for ehr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EHR_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Installs the process-wide `tracing` subscriber (stderr, so stdout stays for command output).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,ehr=info,ehr_storage=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second initialisation (tests calling `main` twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an embedded 4-replica consortium on 127.0.0.1 (state under ./ehr-dev).
    Dev(dev::DevArgs),
    /// Work with the local IPFS repository: add files, read them back, pin, export CARs.
    #[command(subcommand)]
    Ipfs(ipfs::IpfsCmd),
    /// Create a consortium: keys, ABE shares, consortium.json and per-node configurations
    /// (the trusted dealer: see --help).
    InitConsortium(init::InitArgs),
    /// Run a node from its configuration file until SIGTERM or Ctrl-C.
    Node(node::NodeArgs),
    /// Seal a local file: encrypt it into an authenticated, key-committing envelope.
    Seal(seal::SealArgs),
    /// Open a sealed envelope: verify and decrypt it with its data key.
    Open(seal::OpenArgs),
}

/// Parses the command line and runs the chosen command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Ipfs(cmd) => ipfs::run(cmd),
        Command::InitConsortium(args) => init::run(args),
        Command::Node(args) => node::run(args),
        Command::Seal(args) => seal::run_seal(args),
        Command::Open(args) => seal::run_open(args),
    }
}
