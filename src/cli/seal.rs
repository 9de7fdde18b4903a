//! `ehr seal` and `ehr open` (being written).

/// Arguments of `ehr seal`.
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// The file to seal.
    pub input: std::path::PathBuf,
}

/// Arguments of `ehr open`.
#[derive(Debug, clap::Args)]
pub struct OpenArgs {
    /// The sealed file to open.
    pub input: std::path::PathBuf,
}

/// Runs `ehr seal`.
pub fn run_seal(_args: SealArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ehr seal` is not available in this build yet")
}

/// Runs `ehr open`.
pub fn run_open(_args: OpenArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ehr open` is not available in this build yet")
}
