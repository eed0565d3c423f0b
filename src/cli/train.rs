//! `bnc train`: SGD on Fashion-MNIST with the JIT training step, a row per epoch (train
//! loss and accuracy, test accuracy in inference mode with BatchNorm folded, seconds,
//! images/s), the learned γ and β of the first BatchNorm at the end (as the d2l lesson
//! shows them), and optional weights, metrics and an SVG plot of the curves.

use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use bnc::compiler::Tensor;
use bnc::compiler::interp::init_params;
use bnc::runtime::data::{DEFAULT_DIR, Dataset, Split, load};
use bnc::runtime::model::{CompileConfig, InferenceModel};
use bnc::runtime::train::{TrainConfig, Trainer};
use bnc::runtime::weights::ParamStore;

use super::infer::typed_model;
use super::{Verbosity, plot};

/// Arguments of `bnc train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The model file (`*.ir`).
    file: PathBuf,
    /// The Fashion-MNIST directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    /// Learning rate.
    #[arg(long, default_value_t = 1.0)]
    lr: f32,
    /// SGD momentum (PyTorch semantics).
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Images per batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Seed of the weight initialization and of the per-epoch shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads to split each batch over.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Start from these weights (and running statistics) instead of a fresh initialization.
    #[arg(long, value_name = "W.safetensors")]
    resume: Option<PathBuf>,
    /// Write the trained weights and running statistics (atomically).
    #[arg(long, value_name = "W.safetensors")]
    save: Option<PathBuf>,
    /// Write an SVG of loss and accuracies per epoch.
    #[arg(long, value_name = "curve.svg")]
    plot: Option<PathBuf>,
    /// Write the per-epoch numbers as JSON.
    #[arg(long, value_name = "metrics.json")]
    json: Option<PathBuf>,
}

/// The numbers of one epoch.
#[derive(Clone, Debug)]
pub struct Epoch {
    /// 1-based epoch number.
    pub epoch: u32,
    /// Mean training loss over the epoch's batches (weighted by batch size).
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_acc: f64,
    /// Test accuracy after the epoch, in inference mode.
    pub test_acc: f64,
    /// Wall time of the training pass (test evaluation excluded).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_s: f64,
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
    let rows: Vec<_> = epochs
        .iter()
        .map(|e| {
            serde_json::json!({
                "epoch": e.epoch, "train_loss": e.train_loss, "train_acc": e.train_acc,
                "test_acc": e.test_acc, "seconds": e.seconds, "images_per_s": e.images_per_s,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "epochs": rows }))?;
    bnc::write_atomically(path, text.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Runs `bnc train`.
pub fn run(a: TrainArgs, v: Verbosity) -> anyhow::Result<()> {
    let file = a.file.display().to_string();
    if a.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    let typed = typed_model(&a.file)?;
    let params: ParamStore = match &a.resume {
        Some(p) => ParamStore::load(p)?,
        None => init_params(&typed, a.seed).into_iter().collect(),
    };
    let train = load(&a.data, Split::Train)?;
    let test = load(&a.data, Split::Test)?;
    let batch = NonZeroUsize::new(a.batch as usize).unwrap_or(NonZeroUsize::MIN);
    let source = bnc::load_model(&a.file)?;
    let cfg = TrainConfig {
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        threads: a.threads as usize,
        batch: batch.get(),
    };
    let mut trainer = Trainer::new(&source, params, &cfg)
        .with_context(|| format!("{file}: cannot compile for training"))?;
    let infer_cfg = CompileConfig {
        threads: a.threads as usize,
        fold: true,
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
    let mut epochs = Vec::new();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for epoch in 1..=a.epochs {
        let mut batches = train.shuffled_batches(batch, a.seed, u64::from(epoch - 1));
        let bar = if tty {
            ProgressBar::new(batches.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} batches  loss {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let start = Instant::now();
        while let Some(b) = batches.next_into(&mut images, &mut labels) {
            let s = trainer.step(&images, &labels)?;
            if !s.loss.is_finite() {
                bail!(
                    "epoch {epoch}: the training loss became {} (try a smaller --lr)",
                    s.loss
                );
            }
            loss_sum += f64::from(s.loss) * b as f64;
            correct += s.correct;
            seen += b;
            bar.inc(1);
            bar.set_message(format!("{:.4}", loss_sum / seen as f64));
        }
        let seconds = start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        evaluator.bind(&trainer.params())?;
        let e = Epoch {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc: accuracy(&mut evaluator, &test, batch)?,
            seconds,
            images_per_s: seen as f64 / seconds.max(1e-9),
        };
        println!(
            "{:>5} {:>10.4} {:>9.4} {:>9.4} {:>8.2} {:>10.0}",
            e.epoch, e.train_loss, e.train_acc, e.test_acc, e.seconds, e.images_per_s
        );
        epochs.push(e);
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
        write_json(path, &epochs)?;
    }
    if let Some(path) = &a.plot {
        plot::write(path, &file, &epochs)?;
    }
    Ok(())
}
