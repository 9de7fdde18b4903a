//! The `ehr` command line: argument parsing and dispatch. Each area lives in its own module.

mod client;
mod client_progress;
mod demo;
pub mod dev;
mod init;
mod ipfs;
mod ledger;
mod load;
mod node;
mod seal;
mod search;
mod upload;

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
    /// Create an identity, or fetch and combine your attribute key (--abe).
    Keygen(client::KeygenArgs),
    /// Register participants (attribute authority).
    #[command(subcommand)]
    Participant(client::ParticipantCmd),
    /// Assign or revoke attributes (attribute authority).
    #[command(subcommand)]
    Attributes(client::AttributesCmd),
    /// Upload records to your hospital's node; prints one CID per record.
    Upload(upload::UploadArgs),
    /// Search records by keyword without revealing the keywords to the node.
    Search(search::SearchArgs),
    /// Fetch a record, decrypt it locally and write it to a file.
    Get(search::GetArgs),
    /// Grant a participant access to a record.
    Grant(client::GrantArgs),
    /// Revoke a grant.
    Revoke(client::RevokeArgs),
    /// Inspect the ledger and verify records' ledger proofs.
    #[command(subcommand)]
    Ledger(ledger::LedgerCmd),
    /// A scripted walkthrough on the development consortium: upload, search, read, verify.
    Demo(demo::DemoArgs),
    /// Load-test a 4-node consortium: concurrent uploads and searches, latency, memory per node.
    Load(load::LoadArgs),
}

/// Parses the command line and runs the chosen command.
///
/// Usage errors print clap's message and exit with status 1 (`--help` and `--version` with 0),
/// the client commands' convention.
pub fn main() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    init_logging(cli.log_format);
    match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Ipfs(cmd) => ipfs::run(cmd),
        Command::InitConsortium(args) => init::run(args),
        Command::Node(args) => node::run(args),
        Command::Seal(args) => seal::run_seal(args),
        Command::Open(args) => seal::run_open(args),
        Command::Keygen(args) => client::run_keygen(args),
        Command::Participant(cmd) => client::run_participant(cmd),
        Command::Attributes(cmd) => client::run_attributes(cmd),
        Command::Upload(args) => upload::run(args),
        Command::Search(args) => search::run_search(args),
        Command::Get(args) => search::run_get(args),
        Command::Grant(args) => client::run_grant(args),
        Command::Revoke(args) => client::run_revoke(args),
        Command::Ledger(cmd) => ledger::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Load(args) => load::run(args),
    }
}
