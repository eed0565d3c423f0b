//! `bnc compare`: two training runs side by side, as the d2l lesson compares LeNet with
//! LeNet-BN. Reads the metrics that `bnc train --json` writes (or, with `--train`, trains
//! both models first), prints a table (final and best test accuracy, mean seconds per
//! epoch, and the differences and time ratio of the second run to the first) and draws
//! both runs on one SVG figure.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use super::Verbosity;
use super::plot;
use super::train::Epoch;

/// Arguments of `bnc compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// The first run's metrics (`bnc train --json A.json`), or with --train its model.
    a: PathBuf,
    /// The second run's metrics, or with --train its model.
    b: PathBuf,
    /// Train both models first (A and B are `*.ir` files), then compare the runs.
    #[arg(long)]
    train: bool,
    /// With --train: passes over the training set.
    #[arg(long, requires = "train", default_value_t = 10)]
    epochs: u32,
    /// With --train: the learning rate, or one per model (`0.9,1.0`, the lesson's).
    #[arg(long, requires = "train", value_delimiter = ',', default_value = "1.0")]
    lr: Vec<f32>,
    /// With --train: images per batch.
    #[arg(long, requires = "train", default_value_t = 256)]
    batch: u32,
    /// With --train: seed of the initialization and the shuffle.
    #[arg(long, requires = "train", default_value_t = 0)]
    seed: u64,
    /// With --train: threads to split each batch over.
    #[arg(long, requires = "train", default_value_t = 2)]
    threads: u32,
    /// With --train: the Fashion-MNIST directory.
    #[arg(long, requires = "train", default_value = bnc::runtime::data::DEFAULT_DIR)]
    data: PathBuf,
    /// Names of the two runs in the table and legend (default: the file stems).
    #[arg(long, value_delimiter = ',', num_args = 1, value_name = "A,B")]
    labels: Option<Vec<String>>,
    /// Where to write the SVG figure (train loss, train and test accuracy per epoch).
    #[arg(short, long, value_name = "compare.svg")]
    output: Option<PathBuf>,
    /// Print the table as one JSON object to stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// One number of one epoch row, with the file and row named in the error.
fn field(path: &Path, row: usize, e: &Value, key: &str) -> anyhow::Result<f64> {
    e.get(key).and_then(Value::as_f64).with_context(|| {
        format!(
            "{}: epochs[{row}]: missing or non-numeric `{key}`",
            path.display()
        )
    })
}

/// Reads a metrics file written by `bnc train --json`.
pub fn read_metrics(path: &Path) -> anyhow::Result<Vec<Epoch>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON metrics file", path.display()))?;
    let rows = v.get("epochs").and_then(Value::as_array).with_context(|| {
        format!(
            "{}: expected an object with an `epochs` array (as `bnc train --json` writes)",
            path.display()
        )
    })?;
    if rows.is_empty() {
        bail!("{}: the `epochs` array is empty", path.display());
    }
    rows.iter()
        .enumerate()
        .map(|(i, e)| {
            let epoch = field(path, i, e, "epoch")?;
            if epoch < 1.0 || epoch.fract() != 0.0 || epoch > f64::from(u32::MAX) {
                bail!(
                    "{}: epochs[{i}]: `epoch` must be a positive integer, found {epoch}",
                    path.display()
                );
            }
            Ok(Epoch {
                epoch: epoch as u32,
                train_loss: field(path, i, e, "train_loss")?,
                train_acc: field(path, i, e, "train_acc")?,
                test_acc: field(path, i, e, "test_acc")?,
                seconds: field(path, i, e, "seconds")?,
                images_per_s: field(path, i, e, "images_per_s")?,
            })
        })
        .collect()
}

/// Trains both models with `bnc train` (in this process, with the same flags a user
/// would give it) and reads back their metrics.
fn train_both(a: &CompareArgs, v: Verbosity) -> anyhow::Result<[Vec<Epoch>; 2]> {
    let lrs = match a.lr[..] {
        [lr] => [lr, lr],
        [la, lb] => [la, lb],
        _ => bail!(
            "--lr takes one rate or two separated by a comma, got {}",
            a.lr.len()
        ),
    };
    let dir = std::env::temp_dir();
    let mut runs = Vec::new();
    for (i, (model, lr)) in [&a.a, &a.b].into_iter().zip(lrs).enumerate() {
        let json = dir.join(format!("bnc-compare-{}-{i}.json", std::process::id()));
        let mut argv: Vec<String> = ["bnc", "train"].map(String::from).to_vec();
        argv.push(model.display().to_string());
        for (flag, value) in [
            ("--epochs", a.epochs.to_string()),
            ("--lr", lr.to_string()),
            ("--batch", a.batch.to_string()),
            ("--seed", a.seed.to_string()),
            ("--threads", a.threads.to_string()),
            ("--data", a.data.display().to_string()),
            ("--json", json.display().to_string()),
        ] {
            argv.extend([flag.to_string(), value]);
        }
        match v {
            Verbosity::Quiet => argv.push("--quiet".into()),
            Verbosity::Verbose => argv.push("--verbose".into()),
            Verbosity::Normal => {}
        }
        if v.notes() {
            eprintln!("training {} (lr {lr})", model.display());
        }
        let cli = <super::Cli as clap::Parser>::try_parse_from(&argv)?;
        let trained = super::run(cli).and_then(|()| read_metrics(&json));
        let _ = std::fs::remove_file(&json);
        runs.push(trained?);
    }
    let [ra, rb]: [Vec<Epoch>; 2] = runs
        .try_into()
        .map_err(|_| anyhow::anyhow!("two runs expected"))?;
    Ok([ra, rb])
}

/// The summary of one run.
struct Summary {
    final_acc: f64,
    best_acc: f64,
    best_epoch: u32,
    mean_seconds: f64,
}

fn summary(epochs: &[Epoch]) -> Summary {
    let best = epochs.iter().fold(
        &epochs[0],
        |b, e| if e.test_acc > b.test_acc { e } else { b },
    );
    Summary {
        final_acc: epochs[epochs.len() - 1].test_acc,
        best_acc: best.test_acc,
        best_epoch: best.epoch,
        mean_seconds: epochs.iter().map(|e| e.seconds).sum::<f64>() / epochs.len() as f64,
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Runs `bnc compare`.
pub fn run(a: CompareArgs, v: Verbosity) -> anyhow::Result<()> {
    let labels = match &a.labels {
        Some(l) if l.len() == 2 => l.clone(),
        Some(l) => bail!(
            "--labels takes two names separated by a comma, got {}",
            l.len()
        ),
        None => vec![stem(&a.a), stem(&a.b)],
    };
    let runs = if a.train {
        train_both(&a, v)?
    } else {
        [read_metrics(&a.a)?, read_metrics(&a.b)?]
    };
    let [sa, sb] = [summary(&runs[0]), summary(&runs[1])];
    let time_ratio = sb.mean_seconds / sa.mean_seconds;
    if a.json {
        let row = |label: &str, s: &Summary, n: usize| {
            serde_json::json!({
                "label": label, "epochs": n, "final_test_acc": s.final_acc,
                "best_test_acc": s.best_acc, "best_epoch": s.best_epoch,
                "mean_epoch_seconds": s.mean_seconds,
            })
        };
        let obj = serde_json::json!({
            "runs": [row(&labels[0], &sa, runs[0].len()), row(&labels[1], &sb, runs[1].len())],
            "final_test_acc_difference": sb.final_acc - sa.final_acc,
            "best_test_acc_difference": sb.best_acc - sa.best_acc,
            "epoch_seconds_ratio": time_ratio,
        });
        println!("{obj}");
    } else {
        let w = labels.iter().map(|l| l.len()).max().unwrap_or(0).max(5);
        println!(
            "{:<w$} {:>6} {:>14} {:>13} {:>10} {:>13}",
            "run", "epochs", "final test acc", "best test acc", "best epoch", "mean epoch s"
        );
        for (label, (s, r)) in labels.iter().zip([(&sa, &runs[0]), (&sb, &runs[1])]) {
            println!(
                "{label:<w$} {:>6} {:>14.4} {:>13.4} {:>10} {:>13.2}",
                r.len(),
                s.final_acc,
                s.best_acc,
                s.best_epoch,
                s.mean_seconds
            );
        }
        println!(
            "{} vs {}: test accuracy {:+.4} final, {:+.4} best; {:.2}x the seconds per epoch",
            labels[1],
            labels[0],
            sb.final_acc - sa.final_acc,
            sb.best_acc - sa.best_acc,
            time_ratio
        );
    }
    if let Some(path) = &a.output {
        plot::write_comparison(path, [(&labels[0], &runs[0]), (&labels[1], &runs[1])])?;
        if v.notes() {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
