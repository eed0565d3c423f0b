//! `bnc train`: SGD on Fashion-MNIST with the JIT training step, a row per epoch (train
//! loss and accuracy, test accuracy in inference mode with BatchNorm folded, seconds,
//! images/s), the learned γ and β of the first BatchNorm at the end (as the d2l lesson
//! shows them), and optional weights, metrics and an SVG plot of the curves.
//!
//! Runs survive crashes: `--checkpoint` writes the whole training state atomically after
//! every epoch (and every `--checkpoint-every` batches), and `--resume` continues from it
//! bit for bit (see `runtime::checkpoint` and `resume.rs`). Divergence stops the run: after
//! every step the loss, the parameters and the running statistics are checked for NaN and
//! infinity, and with `--check-numerics` every buffer the step wrote, so that the error
//! names the node and op that produced the first non-finite value.

use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use bnc::compiler::Tensor;
use bnc::runtime::checkpoint::{Checkpoint, EpochMetrics, Progress, TrainState};
use bnc::runtime::data::{DEFAULT_DIR, Dataset, Split, load};
use bnc::runtime::model::{CompileConfig, InferenceModel};
use bnc::runtime::train::{Feed, Trainer};

use super::resume::{Start, start};
use super::{Verbosity, plot};

/// The numbers of one epoch (what `--json` and `--plot` write).
pub type Epoch = EpochMetrics;

/// Arguments of `bnc train`. The recipe flags (epochs to seed) take their defaults in a
/// new run; a run resumed from a checkpoint keeps the checkpoint's recipe, may only
/// change `--epochs` and `--threads`, and refuses any other recipe flag that disagrees
/// with it.
#[derive(Args)]
pub struct TrainArgs {
    /// The model file (`*.ir`).
    pub file: PathBuf,
    /// The Fashion-MNIST directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub data: PathBuf,
    /// Epochs in the whole run, counting those a resumed checkpoint completed [default: 10]
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Learning rate [default: 1.0]
    #[arg(long)]
    pub lr: Option<f32>,
    /// SGD momentum (PyTorch semantics) [default: 0]
    #[arg(long)]
    pub momentum: Option<f32>,
    /// L2 weight decay [default: 0]
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Images per batch [default: 256]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    /// Seed of the weight initialization and of the per-epoch shuffle [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Threads to split each batch over (only the speed depends on it) [default: 2]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
    /// Train on the first N training images only (quick runs and tests).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_train: Option<u64>,
    /// Continue the run a checkpoint holds, bit for bit, with its recipe (other recipe flags
    /// may only repeat it; --epochs and --threads may change), or start a new run from the
    /// weights of a plain weights file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub resume: Option<PathBuf>,
    /// Write the whole training state here (atomically) after every epoch.
    #[arg(long, value_name = "CKPT.safetensors")]
    pub checkpoint: Option<PathBuf>,
    /// Also write the checkpoint every N batches within an epoch.
    #[arg(long, value_name = "N", requires = "checkpoint", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    /// Check every buffer after every step for NaN and infinity and stop at the first,
    /// naming the node and op that produced it (the step keeps every buffer for it, which
    /// makes it a little slower).
    #[arg(long)]
    pub check_numerics: bool,
    /// Write the trained weights and running statistics (atomically).
    #[arg(long, value_name = "W.safetensors")]
    pub save: Option<PathBuf>,
    /// Write an SVG of loss and accuracies per epoch.
    #[arg(long, value_name = "curve.svg")]
    pub plot: Option<PathBuf>,
    /// Write the per-epoch numbers as JSON.
    #[arg(long, value_name = "metrics.json")]
    pub json: Option<PathBuf>,
}

fn accuracy(
    model: &mut InferenceModel,
    test: &Dataset,
    batch: NonZeroUsize,
) -> anyhow::Result<f64> {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let mut batches = test.batches(batch);
    let mut correct = 0usize;
    while let Some(b) = batches.next_into(&mut images, &mut labels) {
        let x = Tensor::new(
            vec![b, 1, test.rows(), test.cols()],
            std::mem::take(&mut images),
        )
        .context("batch shape")?;
        let y = model.run(&x)?;
        images = x.into_f32().map(|(_, d)| d).unwrap_or_default();
        let k = y.shape()[1].max(1);
        for (row, &label) in y.as_f32().unwrap_or(&[]).chunks(k).zip(&labels) {
            let arg = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            correct += usize::from(arg as i32 == label);
        }
    }
    Ok(correct as f64 / test.len().max(1) as f64)
}

fn write_json(path: &Path, epochs: &[Epoch]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&serde_json::json!({ "epochs": epochs }))?;
    bnc::write_atomically(path, text.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

fn print_row(e: &Epoch) {
    println!(
        "{:>5} {:>10.4} {:>9.4} {:>9.4} {:>8.2} {:>10.0}",
        e.epoch, e.train_loss, e.train_acc, e.test_acc, e.seconds, e.images_per_s
    );
}

/// What to say when training produced a NaN or an infinity.
fn diverged(lr: f64) -> String {
    format!("training diverged (--lr {lr} may be too large)")
}

/// Writes a checkpoint of `trainer` at `state`; returns the time taken.
fn write_checkpoint(
    path: &Path,
    trainer: &Trainer,
    state: &TrainState,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    Checkpoint::of(trainer, state.clone())
        .save(path)
        .with_context(|| format!("cannot write the checkpoint {}", path.display()))?;
    Ok(start.elapsed())
}

/// Runs `bnc train`.
pub fn run(a: TrainArgs, v: Verbosity) -> anyhow::Result<()> {
    let file = a.file.display().to_string();
    let Start {
        source,
        params,
        velocities,
        mut state,
        train,
    } = start(&a)?;
    let test = load(&a.data, Split::Test)?;
    let recipe = state.recipe.clone();
    let cfg = recipe.train_config();
    let batch = NonZeroUsize::new(recipe.batch).unwrap_or(NonZeroUsize::MIN);
    let mut trainer = Trainer::new(&source, params, &cfg)
        .with_context(|| format!("{file}: cannot compile for training"))?;
    // The guard names a non-finite BatchNorm input only if the step keeps it.
    trainer.keep_z(a.check_numerics);
    if let Some(v) = &velocities {
        trainer
            .set_velocities(v)
            .context("the checkpoint's optimizer state does not fit the model")?;
    }
    let infer_cfg = CompileConfig {
        threads: recipe.threads,
        fold: true,
        ..CompileConfig::default()
    };
    let mut evaluator = InferenceModel::compile(&source, &infer_cfg)
        .with_context(|| format!("{file}: cannot compile"))?;
    if v.details() {
        for l in &trainer.plan().layers {
            eprintln!("layer {:<28} {:?}", l.name, l.linear);
        }
    }
    // The bar draws on stderr: only when that is a terminal, and not with --quiet.
    let tty = std::io::stderr().is_terminal() && v.notes();
    println!(
        "{:>5} {:>10} {:>9} {:>9} {:>8} {:>10}",
        "epoch", "train loss", "train acc", "test acc", "seconds", "images/s"
    );
    state.metrics.iter().for_each(print_row);
    let every = a.checkpoint_every.unwrap_or(u64::MAX);
    for epoch in state.progress.epochs_done + 1..=recipe.epochs {
        let mut batches = train.shuffled_batches(batch, recipe.seed, u64::from(epoch - 1));
        // Resuming mid-epoch: the shuffle is a function of the seed and the epoch, so
        // skipping the batches already trained on restores the data order.
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..state.progress.step {
            batches.next_into(&mut images, &mut labels);
        }
        let bar = if tty {
            ProgressBar::new(batches.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} batches  loss {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let start = Instant::now();
        let mut paused = Duration::ZERO;
        let seconds_before = state.progress.seconds;
        // Each next batch is gathered by a worker thread while the step's update runs.
        let mut feed = Feed::new(batches);
        while let Some(result) = feed.step(&mut trainer) {
            let (s, b) = result?;
            let p = &mut state.progress;
            p.step += 1;
            let at = || format!("epoch {epoch}, batch {}", p.step);
            // Every step: the loss, then the parameters and running statistics (cheap); with
            // --check-numerics every buffer, in the order the step computed them.
            if a.check_numerics
                && let Err(e) = trainer.check_numerics()
            {
                bail!("{}: {e}: {}", at(), diverged(recipe.lr));
            }
            if !s.loss.is_finite() {
                bail!(
                    "{}: the training loss is {}: {}; rerun with --check-numerics to find \
                     the op that first produced a non-finite value",
                    at(),
                    s.loss,
                    diverged(recipe.lr)
                );
            }
            if let Err(e) = trainer.check_parameters() {
                bail!(
                    "{}: {e}: {}; rerun with --check-numerics to find the op that first \
                     produced a non-finite value",
                    at(),
                    diverged(recipe.lr)
                );
            }
            p.loss_sum += f64::from(s.loss) * b as f64;
            p.correct += s.correct as u64;
            p.seen += b as u64;
            bar.inc(1);
            bar.set_message(format!("{:.4}", p.loss_sum / p.seen as f64));
            if p.step % every == 0
                && feed.has_next()
                && let Some(path) = &a.checkpoint
            {
                state.progress.seconds = seconds_before + (start.elapsed() - paused).as_secs_f64();
                paused += write_checkpoint(path, &trainer, &state)?;
            }
        }
        let seconds = seconds_before + (start.elapsed() - paused).as_secs_f64();
        bar.finish_and_clear();
        evaluator.bind(&trainer.params())?;
        let p = &state.progress;
        let e = Epoch {
            epoch,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            train_acc: p.correct as f64 / p.seen.max(1) as f64,
            test_acc: accuracy(&mut evaluator, &test, batch)?,
            seconds,
            images_per_s: p.seen as f64 / seconds.max(1e-9),
        };
        print_row(&e);
        state.metrics.push(e);
        state.progress = Progress {
            epochs_done: epoch,
            ..Progress::default()
        };
        if let Some(path) = &a.checkpoint {
            write_checkpoint(path, &trainer, &state)?;
        }
    }
    let learned = trainer.params();
    if let (Some(g), Some(b)) = (learned.get("bn1.weight"), learned.get("bn1.bias")) {
        let fmt = |t: &Tensor| {
            t.as_f32()
                .unwrap_or(&[])
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("bn1 gamma: [{}]", fmt(g));
        println!("bn1 beta:  [{}]", fmt(b));
    }
    if let Some(path) = &a.save {
        learned.save(path)?;
    }
    if let Some(path) = &a.json {
        write_json(path, &state.metrics)?;
    }
    if let Some(path) = &a.plot {
        plot::write(path, &file, &state.metrics)?;
    }
    Ok(())
}
