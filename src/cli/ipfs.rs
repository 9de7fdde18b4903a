//! `ehr ipfs ...` (being written).

/// IPFS repository commands.
#[derive(Debug, clap::Subcommand)]
pub enum IpfsCmd {
    /// Print the CID of each file (being written).
    Add {
        /// Files to add.
        files: Vec<std::path::PathBuf>,
    },
}

/// Runs an `ehr ipfs` command.
pub fn run(cmd: IpfsCmd) -> anyhow::Result<()> {
    match cmd {
        IpfsCmd::Add { .. } => anyhow::bail!("`ehr ipfs add` is not available in this build yet"),
    }
}
