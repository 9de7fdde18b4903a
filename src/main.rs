//! `ehr`: the encrypted EHR storage and search node and its command-line client.

fn main() -> std::process::ExitCode {
    match ehr::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: what failed and why.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
