//! `ehr ledger head` and `ehr ledger verify CID` (a light-client check of a record's
//! registration with the consortium file's validator keys only).

use super::client::{Common, block_on, cid_bytes};
use crate::client::proof::{VerifiedInclusion, verify_record_proof};

/// `ehr ledger ...`.
#[derive(Debug, clap::Subcommand)]
pub enum LedgerCmd {
    /// Show the ledger head (height, hash, view, state root) as the node reports it.
    Head(HeadArgs),
    /// Verify that a record is registered on the ledger, trusting only the consortium file.
    #[command(after_long_help = "\
Example:
  ehr ledger verify bafkrei... --consortium consortium.json --identity researcher.json

Fetches the registering transaction, its Merkle path and the block's commit certificate from
the node, and checks them with the validator keys in the consortium file: the transaction is
validly signed and registers this CID on this chain, the path leads to the block's transaction
root, and at least n-f distinct validators signed the commit. Exit code 3 if any check fails.")]
    Verify(VerifyArgs),
}

/// Arguments of `ehr ledger head`.
#[derive(Debug, clap::Args)]
pub struct HeadArgs {
    #[command(flatten)]
    pub common: Common,
}

/// Arguments of `ehr ledger verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The record's CID.
    pub cid: String,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `ehr ledger ...`.
pub fn run(cmd: LedgerCmd) -> anyhow::Result<()> {
    block_on(async move {
        match cmd {
            LedgerCmd::Head(a) => {
                let (id, _) = a.common.identity()?;
                let h = a.common.api(&id)?.head().await?;
                println!("height      {}", h.height);
                println!("hash        {}", h.hash);
                println!("view        {}", h.view);
                println!("state_root  {}", h.state_root);
            }
            LedgerCmd::Verify(a) => {
                let cid = cid_bytes(&a.cid)?;
                let consortium = a.common.consortium()?;
                let (id, _) = a.common.identity()?;
                let answer = a.common.api(&id)?.proof(a.cid.trim()).await?;
                let v = verify_record_proof(&consortium, &cid, &answer)?;
                print_verified(a.cid.trim(), &v);
            }
        }
        Ok(())
    })
}

/// Prints what a proof established.
pub fn print_verified(cid: &str, v: &VerifiedInclusion) {
    println!("verified: {cid}");
    println!(
        "  registered at height {} of chain {}, transaction {} of {}",
        v.height, v.chain_id, v.index, v.tx_count
    );
    println!("  transaction {} signed by its sender {}", v.tx_id, v.owner);
    println!("  capsule {}, {} sealed bytes", v.capsule, v.size);
    println!(
        "  commit certificate: view {}, {} valid signatures (validators {:?}; {} required)",
        v.view,
        v.signers.len(),
        v.signers,
        v.quorum
    );
    println!("  Merkle path from the transaction to the block's transaction root: ok");
}
