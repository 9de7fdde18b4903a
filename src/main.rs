//! `ehr`: the encrypted EHR storage and search node and its command-line client.

mod cli;

fn main() -> anyhow::Result<()> {
    cli::main()
}
