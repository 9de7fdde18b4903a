//! `ehr`: the encrypted EHR storage and search node and its command-line client.

fn main() -> std::process::ExitCode {
    match ehr::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: what failed and why.
            eprintln!("error: {err:#}");
            // 1 usage/input, 2 refused by the node, 3 node or network failure.
            std::process::ExitCode::from(ehr::client::exit_code_of(&err))
        }
    }
}
