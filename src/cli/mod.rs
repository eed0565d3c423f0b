//! Argument parsing and dispatch; one module per subcommand.

mod bench;
mod compare;
mod compile;
mod import;
mod infer;
mod plot;
mod resume;
mod train;
mod weights;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use bnc::Mode;

/// The environment and the exit statuses, as `bnc --help` and the README list them.
pub const EXIT_STATUS: &str = "\
Environment:
  BNC_VECTOR_WIDTH=4|8  vectors of the native kernels: 8 (256-bit, AVX2) is the default
                        where the CPU has AVX2 and FMA, else 4 (128-bit); the results are
                        the same bits either way

Exit status:
  0  success
  1  error: a model, weights, data or metrics file that cannot be read, parsed, compiled
     or written, or training that diverged; one `error: ...` line on stderr
  2  usage error: an unknown subcommand or flag, or a bad flag value";

/// bnc: a batch-norm-aware graph compiler and JIT runtime for convolutional networks.
#[derive(Parser)]
#[command(name = "bnc", version, about, long_about = None, after_help = EXIT_STATUS)]
pub struct Cli {
    /// Print only results and errors: no progress bars, no notes.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print what happens inside, to stderr: pass timings, kernels, compile times.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

/// How much a command prints besides its results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Results and errors only (`--quiet`).
    Quiet,
    /// Results, progress bars on a terminal, and short notes.
    Normal,
    /// Also pass timings, kernels and compile times on stderr (`--verbose`).
    Verbose,
}

impl Verbosity {
    /// Whether notes and progress bars are shown.
    pub fn notes(self) -> bool {
        self != Verbosity::Quiet
    }

    /// Whether details are shown.
    pub fn details(self) -> bool {
        self == Verbosity::Verbose
    }
}

/// What the graph is compiled for.
#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Inference: BatchNorm uses running statistics (and is folded).
    Infer,
    /// Training: BatchNorm uses batch statistics; a loss is attached.
    Train,
}

impl ModeArg {
    fn mode(self) -> Mode {
        match self {
            ModeArg::Infer => Mode::Infer,
            ModeArg::Train => Mode::Train,
        }
    }
}

/// Options shared by the commands that execute a model (`run`, `bench`; `train` has the
/// same `--batch` and `--threads`).
#[derive(Args, Clone)]
pub struct ExecArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Threads to split each batch over.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Run BatchNorm as a separate per-channel scale and shift instead of folding it.
    #[arg(long)]
    no_fold: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model: run the pass pipeline and print the result.
    Compile(compile::CompileArgs),
    /// List the registered passes with one-line summaries.
    Passes,
    /// Write freshly initialized weights (Xavier-uniform; BatchNorm γ=1 β=0 mean=0 var=1).
    Init {
        /// The model file (`*.ir`).
        file: PathBuf,
        /// Seed of the random initialization.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write the safetensors file.
        #[arg(short, long, value_name = "W.safetensors")]
        output: PathBuf,
    },
    /// Evaluate a model on the Fashion-MNIST test set: accuracy and images/s.
    Run(infer::RunArgs),
    /// Measure speed: inference images/s, compile time and per-kernel time, or (--mode train)
    /// training-step images/s.
    Bench(bench::BenchArgs),
    /// Train a model on Fashion-MNIST with SGD: a row per epoch, then the learned bn1 γ and β.
    Train(train::TrainArgs),
    /// Compare two training runs (`bnc train --json` files): a table and one SVG figure.
    Compare(compare::CompareArgs),
    /// Print a shell completion script (e.g. `bnc completions bash > /etc/bash_completion.d/bnc`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Import an ONNX model: write it as bnc IR and its initializers as safetensors weights.
    Import(import::ImportArgs),
    /// Work on weights files: `bnc weights rename` maps PyTorch names to bnc's and back.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let v = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    match cli.command {
        Command::Compile(args) => compile::run(args, v),
        Command::Passes => {
            for p in bnc::compiler::passes::REGISTRY {
                println!("{:<18} {}", p.name, p.summary);
            }
            Ok(())
        }
        Command::Init { file, seed, output } => infer::init(&file, seed, &output, v),
        Command::Run(args) => infer::run(args, v),
        Command::Bench(args) => bench::run(args, v),
        Command::Train(args) => train::run(args, v),
        Command::Compare(args) => compare::run(args, v),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "bnc", &mut std::io::stdout());
            Ok(())
        }
        Command::Import(args) => import::run(args),
        Command::Weights(cmd) => weights::run(cmd),
    }
}
