//! The `bnc` command line: compile, inspect, initialize, run and benchmark models.
//! Every error is printed as `error: ...` (with `file:line:col` where the input has one)
//! and exits with status 1; usage errors exit with status 2.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
