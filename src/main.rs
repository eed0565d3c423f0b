//! The `bnc` command line: compile, inspect and (in later subcommands) run models.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use bnc::compiler::passes::REGISTRY;
use bnc::compiler::text::{print, to_dot};
use bnc::{CompileOptions, Mode, PrintAfter};

/// bnc: a batch-norm-aware graph compiler and JIT runtime for convolutional networks.
#[derive(Parser)]
#[command(name = "bnc", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Inference: BatchNorm uses running statistics.
    Infer,
    /// Training: BatchNorm uses batch statistics; a loss is attached.
    Train,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The canonical text IR.
    Ir,
    /// A Graphviz DOT graph (render with `dot -Tsvg`).
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model: run the pass pipeline and print the resulting IR.
    Compile {
        /// The model file (`*.ir`).
        file: String,
        /// Compile for inference or for training.
        #[arg(long, value_enum, default_value = "infer")]
        mode: ModeArg,
        /// Run these passes (comma-separated) instead of the mode's default pipeline.
        #[arg(long, value_delimiter = ',')]
        passes: Option<Vec<String>>,
        /// Print the IR after every pass.
        #[arg(long)]
        print_after_all: bool,
        /// Print the IR after every pass that changed it.
        #[arg(long, conflicts_with = "print_after_all")]
        print_after_change: bool,
        /// Print the IR after the named pass (repeatable).
        #[arg(long, value_name = "NAME")]
        print_after: Vec<String>,
        /// Print each pass's wall time to stderr.
        #[arg(long)]
        time_passes: bool,
        /// Explain the passes' decisions (which BatchNorms were folded, and why not), as
        /// `#` comments before the IR.
        #[arg(long)]
        explain: bool,
        /// What to print at the end.
        #[arg(long, value_enum, default_value = "ir")]
        emit: Emit,
    },
    /// List the registered passes with one-line summaries.
    Passes,
}

fn run(cli: Cli) -> Result<(), bnc::Error> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Passes => {
            for p in REGISTRY {
                let _ = writeln!(out, "{:<18} {}", p.name, p.summary);
            }
        }
        Command::Compile {
            file,
            mode,
            passes,
            print_after_all,
            print_after_change,
            print_after,
            time_passes,
            explain,
            emit,
        } => {
            let mode = match mode {
                ModeArg::Infer => Mode::Infer,
                ModeArg::Train => Mode::Train,
            };
            for name in &print_after {
                bnc::compiler::passes::lookup(name).map_err(bnc::Error::Pass)?;
            }
            let print_after = if print_after_all {
                PrintAfter::All
            } else if print_after_change {
                PrintAfter::Change
            } else if !print_after.is_empty() {
                PrintAfter::Named(print_after)
            } else {
                PrintAfter::Never
            };
            let g = bnc::load_model(&file)?;
            let opts = CompileOptions {
                passes,
                print_after,
            };
            let (g, steps) = bnc::compile(g, mode, &opts).map_err(|e| e.in_file(&file))?;
            for step in &steps {
                if let Some(ir) = &step.ir {
                    let _ = writeln!(out, "// ----- IR after {} -----\n{ir}", step.pass);
                }
            }
            if explain {
                for step in &steps {
                    for r in &step.remarks {
                        let _ = writeln!(out, "# {}: {}: {}", step.pass, r.node, r.message);
                    }
                }
            }
            if time_passes {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{:<18} {:>10}  changed", "pass", "time");
                for s in &steps {
                    let _ = writeln!(
                        err,
                        "{:<18} {:>8.3}ms  {}",
                        s.pass,
                        s.elapsed.as_secs_f64() * 1e3,
                        s.changed
                    );
                }
            }
            let text = match emit {
                Emit::Ir => print(&g),
                Emit::Dot => to_dot(&g),
            };
            let _ = write!(out, "{text}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
