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
    // A bad vector width is a usage error, refused before any work.
    if let Err(e) = bnc::compiler::codegen::Width::requested() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text the message
/// already contains (many error types quote their source in their own message).
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}
