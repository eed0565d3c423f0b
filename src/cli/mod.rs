//! Argument parsing and dispatch; one module per subcommand.

mod bench;
mod compile;
mod import;
mod infer;
mod plot;
mod train;
mod weights;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use bnc::Mode;

/// bnc: a batch-norm-aware graph compiler and JIT runtime for convolutional networks.
#[derive(Parser)]
#[command(name = "bnc", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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

/// Options shared by the commands that execute a model.
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
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write the safetensors file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Evaluate a model on the Fashion-MNIST test set: accuracy and images/s.
    Run(infer::RunArgs),
    /// Measure speed: inference images/s, compile time and per-kernel time, or (--mode train)
    /// training-step images/s.
    Bench(bench::BenchArgs),
    /// Train a model on Fashion-MNIST with SGD: a row per epoch, then the learned bn1 γ and β.
    Train(train::TrainArgs),
    /// Import an ONNX model: write it as bnc IR and its initializers as safetensors weights.
    Import(import::ImportArgs),
    /// Work on weights files: `bnc weights rename` maps PyTorch names to bnc's and back.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Compile(args) => compile::run(args),
        Command::Passes => {
            for p in bnc::compiler::passes::REGISTRY {
                println!("{:<18} {}", p.name, p.summary);
            }
            Ok(())
        }
        Command::Init { file, seed, output } => infer::init(&file, seed, &output),
        Command::Run(args) => infer::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train::run(args),
        Command::Import(args) => import::run(args),
        Command::Weights(cmd) => weights::run(cmd),
    }
}
