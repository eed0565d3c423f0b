//! The `bnc` command line: compile, inspect, initialize, run and benchmark models.
//! Every error is printed as `error: ...` (with `file:line:col` where the input has one)
//! and exits with status 1; usage errors exit with status 2.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A closed stdout (`bnc ... | head`) ends the process quietly, as for other Unix tools,
    // instead of making the next `println!` panic with a broken pipe.
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
