//! `bnc bench`: images/s (median of repeated runs after warm-up), the time from text to
//! native code, and per-kernel times, on random inputs and random (or given) weights.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use bnc::compiler::Tensor;
use bnc::compiler::interp::{SplitMix64, init_params};
use bnc::runtime::data::{DEFAULT_DIR, Dataset, Split, load};
use bnc::runtime::model::{CompileConfig, InferenceModel};
use bnc::runtime::train::{Feed, TrainConfig, Trainer};
use bnc::runtime::weights::ParamStore;

use super::infer::typed_model;
use super::{ExecArgs, ModeArg, Verbosity};

/// Arguments of `bnc bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// The model file (`*.ir`).
    file: PathBuf,
    /// What to measure.
    #[arg(long, value_enum, default_value = "infer")]
    mode: ModeArg,
    #[command(flatten)]
    exec: ExecArgs,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use these weights instead of random ones (safetensors, PyTorch names and layouts).
    #[arg(long, value_name = "W.safetensors")]
    weights: Option<PathBuf>,
    /// Print one JSON object to stdout instead of text.
    #[arg(long)]
    json: bool,
    /// With --mode train: also time this model's step (random weights from the seed),
    /// taking turns with FILE's so that both see the same machine, and report FILE's time
    /// as a ratio of it: the median and quartiles of the ratios of steps paired across
    /// neighbouring turns (e.g. `lenet_bn.ir --baseline lenet.ir`: the cost of BatchNorm).
    #[arg(long, value_name = "B.ir")]
    baseline: Option<PathBuf>,
    /// Threads for the baseline's step (default: --threads); with FILE as its own
    /// baseline, `--threads 2 --baseline-threads 1` measures what the second thread gains.
    #[arg(long, value_name = "N", requires = "baseline", value_parser = clap::value_parser!(u32).range(1..))]
    baseline_threads: Option<u32>,
    /// With --baseline: consecutive steps each model runs per turn. The first step of a
    /// turn is not timed: it follows the other model's steps, which no step of a training
    /// epoch does (its caches hold the other model's buffers, and a worker thread the
    /// other model left idle starts cold). 2 times every other step.
    #[arg(long, value_name = "N", default_value_t = 4, requires = "baseline", conflicts_with = "epochs", value_parser = clap::value_parser!(u32).range(2..))]
    turn: u32,
    /// With --mode train: time N whole epochs over the training images of --data instead
    /// of single steps on random data, gathering each next batch beside the update as
    /// `bnc train` does (reported per step: the epoch's time over its batches). With
    /// --baseline the models take turns of one epoch, and the ratios are of paired epochs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    epochs: Option<u32>,
    /// Where the Fashion-MNIST files are, for --epochs.
    #[arg(long, default_value = DEFAULT_DIR, requires = "epochs")]
    data: PathBuf,
}

/// Trains `t` for one epoch over `data` (shuffled as `bnc train` shuffles epoch `epoch`
/// of a run seeded with `seed`), gathering each next batch beside the step's update;
/// returns the time per step.
fn epoch(
    t: &mut Trainer,
    data: &Dataset,
    batch: NonZeroUsize,
    seed: u64,
    epoch: u64,
) -> anyhow::Result<Duration> {
    let mut feed = Feed::new(data.shuffled_batches(batch, seed, epoch));
    let start = Instant::now();
    let mut steps = 0u32;
    while let Some(result) = feed.step(t) {
        std::hint::black_box(result?);
        steps += 1;
    }
    Ok(start.elapsed() / steps.max(1))
}

/// Which model runs a step of a comparison, and whether the step is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Turn {
    baseline: bool,
    timed: bool,
}

/// The steps of a comparison with `reps` timed steps of each model, in turns of `turn`
/// (at least 2) consecutive steps of one model whose first step is untimed warm-up. The
/// models alternate which goes first in a round of two turns, so neither is always the
/// one that follows the other.
fn turns(reps: usize, turn: usize) -> Vec<Turn> {
    let timed = turn.max(2) - 1;
    let rounds = reps.div_ceil(timed);
    let mut steps = Vec::new();
    for round in 0..rounds {
        let left = (reps - round * timed).min(timed);
        for baseline in [round % 2 == 1, round % 2 == 0] {
            steps.push(Turn {
                baseline,
                timed: false,
            });
            steps.extend((0..left).map(|_| Turn {
                baseline,
                timed: true,
            }));
        }
    }
    steps
}

/// The weights to measure with: the given file, or a random initialization from the seed.
fn weights(a: &BenchArgs) -> anyhow::Result<ParamStore> {
    Ok(match &a.weights {
        Some(path) => ParamStore::load(path)?,
        None => init_params(&typed_model(&a.file)?, a.seed)
            .into_iter()
            .collect(),
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The lower quartile, median and upper quartile of `v` (the elements at ranks `n/4`, `n/2`
/// and `3n/4` once sorted; NaN when empty).
fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    [n / 4, n / 2, 3 * n / 4].map(|i| v.get(i).copied().unwrap_or(f64::NAN))
}

/// Runs `bnc bench`.
pub fn run(a: BenchArgs, v: Verbosity) -> anyhow::Result<()> {
    if let ModeArg::Train = a.mode {
        return train(&a, v);
    }
    if a.baseline.is_some() {
        anyhow::bail!("--baseline compares training steps; add --mode train");
    }
    if a.epochs.is_some() {
        anyhow::bail!("--epochs times training epochs; add --mode train");
    }
    let file = a.file.display().to_string();
    let (batch, threads) = (a.exec.batch as usize, a.exec.threads as usize);
    let cfg = CompileConfig {
        threads,
        fold: !a.exec.no_fold,
        ..CompileConfig::default()
    };
    // Parse → JIT-ready, as a user pays it.
    let start = Instant::now();
    let g = bnc::load_model(&a.file)?;
    let mut model =
        InferenceModel::compile(&g, &cfg).with_context(|| format!("{file}: cannot compile"))?;
    let compile = start.elapsed();
    model.bind(&weights(&a)?)?;
    if v.details() {
        for k in &model.plan().kernels {
            eprintln!("kernel {:<28} {:?}", k.name, k.spec);
        }
    }
    let dims = model.plan().input_dims.clone();
    let mut rng = SplitMix64::new(a.seed.wrapping_add(1));
    let n = batch * dims.iter().product::<usize>();
    let mut shape = vec![batch];
    shape.extend(&dims);
    let x = Tensor::new(shape, (0..n).map(|_| rng.next_f32()).collect()).context("input shape")?;
    for _ in 0..3 {
        model.run(&x)?;
    }
    let mut times = Vec::new();
    for _ in 0..a.reps {
        let t = Instant::now();
        std::hint::black_box(model.run(&x)?);
        times.push(t.elapsed());
    }
    let per_batch = median(times);
    let ips = batch as f64 / per_batch.as_secs_f64().max(1e-12);
    let mut per_kernel: Vec<Vec<Duration>> = vec![Vec::new(); model.plan().kernels.len()];
    for _ in 0..a.reps.min(10) {
        for (k, t) in model.profile(&x)?.into_iter().enumerate() {
            per_kernel[k].push(t);
        }
    }
    let kernels: Vec<(String, f64)> = model
        .plan()
        .kernels
        .iter()
        .zip(per_kernel)
        .map(|(k, t)| (k.name.clone(), median(t).as_secs_f64() * 1e6))
        .collect();
    let compile_ms = compile.as_secs_f64() * 1e3;
    if a.json {
        let ks: Vec<_> = kernels
            .iter()
            .map(|(name, us)| serde_json::json!({ "name": name, "us": us }))
            .collect();
        let obj = serde_json::json!({
            "model": file, "mode": "infer", "batch": batch, "threads": threads, "fold": !a.exec.no_fold,
            "images_per_s": ips, "us_per_batch": per_batch.as_secs_f64() * 1e6,
            "compile_ms": compile_ms, "kernels": ks,
        });
        println!("{obj}");
    } else {
        println!(
            "{file}: batch {batch}, {threads} thread(s), fold {}",
            !a.exec.no_fold
        );
        println!(
            "images/s: {ips:.0} ({:.1} µs per batch, median of {})",
            per_batch.as_secs_f64() * 1e6,
            a.reps
        );
        println!("parse to native code: {compile_ms:.2} ms");
        println!("per kernel (1 thread, whole batch):");
        for (name, us) in &kernels {
            println!("  {name:<28} {us:>10.1} µs");
        }
    }
    Ok(())
}

/// `bnc bench --mode train`: images/s of a full training step (forward, backward, SGD
/// update) on random images and labels, median of the repetitions after warm-up.
fn train(a: &BenchArgs, v: Verbosity) -> anyhow::Result<()> {
    let file = a.file.display().to_string();
    let (batch, threads) = (a.exec.batch as usize, a.exec.threads as usize);
    let start = Instant::now();
    let g = bnc::load_model(&a.file)?;
    let params = weights(a)?;
    let cfg = TrainConfig {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        threads,
        batch,
    };
    let mut trainer = Trainer::new(&g, params, &cfg)
        .with_context(|| format!("{file}: cannot compile for training"))?;
    let compile = start.elapsed();
    let mut baseline = match &a.baseline {
        Some(path) => {
            let name = path.display().to_string();
            let g = bnc::load_model(path)?;
            let params = init_params(&typed_model(path)?, a.seed)
                .into_iter()
                .collect();
            let cfg = TrainConfig {
                threads: a.baseline_threads.map_or(threads, |t| t as usize),
                ..cfg.clone()
            };
            let t = Trainer::new(&g, params, &cfg)
                .with_context(|| format!("{name}: cannot compile for training"))?;
            Some((name, t))
        }
        None => None,
    };
    let base_threads = baseline.as_ref().map(|(_, t)| t.config().threads);
    if v.details() {
        for l in &trainer.plan().layers {
            eprintln!("layer {:<28} {:?}", l.name, l.linear);
        }
    }
    let mut rng = SplitMix64::new(a.seed.wrapping_add(1));
    let images: Vec<f32> = (0..batch * 784).map(|_| rng.next_f32()).collect();
    let labels: Vec<i32> = (0..batch).map(|_| rng.below(10) as i32).collect();
    let step = |t: &mut Trainer| -> anyhow::Result<Duration> {
        let start = Instant::now();
        std::hint::black_box(t.step(&images, &labels)?);
        Ok(start.elapsed())
    };
    for _ in 0..3 {
        step(&mut trainer)?;
        if let Some((_, b)) = &mut baseline {
            step(b)?;
        }
    }
    let (mut times, mut idle, mut base_times) = (Vec::new(), Vec::new(), Vec::new());
    let reps = a.reps as usize;
    if let Some(n) = a.epochs {
        let data = load(&a.data, Split::Train)?;
        let size = NonZeroUsize::new(batch).unwrap_or(NonZeroUsize::MIN);
        for round in 0..u64::from(n) {
            // One epoch of each, which goes first alternating with the round.
            for base in [round % 2 == 1, round % 2 == 0] {
                match (&mut baseline, base) {
                    (Some((_, b)), true) => base_times.push(epoch(b, &data, size, a.seed, round)?),
                    (None, true) => {}
                    _ => {
                        times.push(epoch(&mut trainer, &data, size, a.seed, round)?);
                        idle.push(trainer.last_idle());
                    }
                }
            }
        }
    }
    let plan = match baseline {
        _ if a.epochs.is_some() => Vec::new(),
        Some(_) => turns(reps, a.turn as usize),
        None => vec![
            Turn {
                baseline: false,
                timed: true
            };
            reps
        ],
    };
    for t in plan {
        match (&mut baseline, t.baseline) {
            (Some((_, b)), true) => {
                let time = step(b)?;
                if t.timed {
                    base_times.push(time);
                }
            }
            _ => {
                let time = step(&mut trainer)?;
                if t.timed {
                    times.push(time);
                    idle.push(trainer.last_idle());
                }
            }
        }
    }
    // The n-th timed step over the baseline's n-th: the same place in neighbouring turns.
    let ratios: Vec<f64> = times
        .iter()
        .zip(&base_times)
        .map(|(t, b)| t.as_secs_f64() / b.as_secs_f64().max(1e-12))
        .collect();
    let base = baseline
        .as_ref()
        .map(|(name, _)| (name.clone(), median(base_times), quartiles(ratios)));
    let per_step = median(times);
    let idle = median(idle);
    // Of the thread time a step takes, the share spent without work.
    let idle_share = idle.as_secs_f64() / (per_step.as_secs_f64() * threads as f64).max(1e-12);
    let ips = batch as f64 / per_step.as_secs_f64().max(1e-12);
    let compile_ms = compile.as_secs_f64() * 1e3;
    // Per phase on one thread: the median over up to ten profiled steps.
    let mut phases: Vec<(String, Vec<Duration>)> = Vec::new();
    for _ in 0..a.reps.min(10) {
        for (i, (name, t)) in trainer
            .profile_step(&images, &labels)?
            .into_iter()
            .enumerate()
        {
            match phases.get_mut(i) {
                Some((_, ts)) => ts.push(t),
                None => phases.push((name, vec![t])),
            }
        }
    }
    let phases: Vec<(String, f64)> = phases
        .into_iter()
        .map(|(name, t)| (name, median(t).as_secs_f64() * 1e6))
        .collect();
    if a.json {
        let ks: Vec<_> = phases
            .iter()
            .map(|(name, us)| serde_json::json!({ "name": name, "us": us }))
            .collect();
        let mut obj = serde_json::json!({
            "model": file, "mode": "train", "batch": batch, "threads": threads,
            "images_per_s": ips, "us_per_step": per_step.as_secs_f64() * 1e6,
            "idle_us_per_step": idle.as_secs_f64() * 1e6,
            "compile_ms": compile_ms, "kernels": ks,
        });
        if let Some(n) = a.epochs {
            obj["epochs"] = n.into();
        }
        if let Some((name, t, [q1, ratio, q3])) = &base {
            obj["baseline"] = serde_json::json!({
                "model": name, "threads": base_threads, "turn": a.turn,
                "us_per_step": t.as_secs_f64() * 1e6,
                "images_per_s": batch as f64 / t.as_secs_f64().max(1e-12),
                "ratio": ratio, "ratio_q1": q1, "ratio_q3": q3,
            });
        }
        println!("{obj}");
    } else {
        println!("{file}: training step, batch {batch}, {threads} thread(s)");
        let (of, turns) = match a.epochs {
            Some(n) => (
                format!("{n} epoch(s) over {}", a.data.display()),
                "turns of one epoch".to_string(),
            ),
            None => (
                a.reps.to_string(),
                format!("turns of {} steps, the first untimed,", a.turn),
            ),
        };
        println!(
            "images/s: {ips:.0} ({:.1} ms per step, median of {of})",
            per_step.as_secs_f64() * 1e3,
        );
        println!("epoch of 60000 images at this rate: {:.2} s", 60000.0 / ips);
        if let Some((name, t, [q1, ratio, q3])) = &base {
            println!(
                "baseline {name} on {} thread(s): {:.1} ms per step (median, in {turns} with \
                 the above); ratio {ratio:.3} (median over paired steps or epochs of FILE's \
                 / the baseline's; quartiles {q1:.3}-{q3:.3})",
                base_threads.unwrap_or(threads),
                t.as_secs_f64() * 1e3,
            );
        }
        println!(
            "threads idle: {:.2} ms per step over {threads} thread(s), {:.1}% of their time \
             (starting, waiting at BatchNorm exchanges and for the last to finish)",
            idle.as_secs_f64() * 1e3,
            idle_share * 100.0
        );
        println!("parse to native code: {compile_ms:.2} ms");
        println!("per phase (1 thread, whole batch):");
        for (name, us) in &phases {
            println!("  {name:<48} {us:>10.1} µs");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each model gets `reps` timed steps; every timed step follows a step of the same
    /// model; turns alternate between the models and so does which goes first.
    #[test]
    fn comparison_turns() {
        for (reps, turn) in [(1, 2), (3, 2), (40, 4), (7, 4), (10, 5)] {
            let steps = turns(reps, turn);
            for baseline in [false, true] {
                let timed = steps.iter().filter(|t| t.baseline == baseline && t.timed);
                assert_eq!(timed.count(), reps, "reps {reps} turn {turn}");
            }
            assert!(!steps[0].timed);
            for w in steps.windows(2) {
                if w[1].timed {
                    assert_eq!(w[0].baseline, w[1].baseline, "{steps:?}");
                }
            }
            let starts: Vec<bool> = steps
                .iter()
                .filter(|t| !t.timed)
                .map(|t| t.baseline)
                .collect();
            assert_eq!(starts.len(), 2 * reps.div_ceil(turn - 1));
            // Rounds of two turns: the model first in one round is second in the next.
            for (r, pair) in starts.chunks(2).enumerate() {
                assert_eq!(pair, [r % 2 == 1, r % 2 == 0], "{steps:?}");
            }
        }
        let per_step = turns(3, 2);
        let want = [
            false, false, true, true, true, true, false, false, false, false, true, true,
        ];
        assert_eq!(
            per_step.iter().map(|t| t.baseline).collect::<Vec<_>>(),
            want
        );
    }
}
