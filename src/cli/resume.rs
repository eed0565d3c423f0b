//! How `bnc train` starts: a new run from the recipe flags (and fresh or given weights), or
//! a run resumed from a checkpoint, which keeps the checkpoint's recipe so that it ends
//! exactly where an uninterrupted run would.
//!
//! `--resume FILE` with a checkpoint (a file `--checkpoint` wrote) continues that run: the
//! model must be the same (by fingerprint), the training set must have the same size, and
//! any recipe flag given must agree with the checkpoint, except `--epochs`, which may
//! lengthen or shorten the run. `--resume FILE` with a plain weights file (`--save`,
//! `bnc init`) starts a new run from those weights, with the recipe from the flags and
//! fresh optimizer state.

use std::fmt::Display;
use std::path::Path;

use anyhow::{Context, bail};

use bnc::Graph;
use bnc::compiler::interp::init_params;
use bnc::runtime::checkpoint::{
    Checkpoint, Progress, Recipe, Resume, TrainState, VERSION, model_fingerprint,
};
use bnc::runtime::data::{Dataset, Split, load};
use bnc::runtime::train::footprint;
use bnc::runtime::weights::ParamStore;

use super::infer::typed_model;
use super::train::TrainArgs;

/// Everything a run starts from.
pub struct Start {
    /// The model as parsed.
    pub source: Graph,
    /// The parameters and running statistics to start from.
    pub params: ParamStore,
    /// The momentum buffers, when resuming a checkpoint.
    pub velocities: Option<ParamStore>,
    /// The recipe, the progress so far and the metrics of completed epochs.
    pub state: TrainState,
    /// The training set (limited by `--limit-train`).
    pub train: Dataset,
}

/// The recipe of a new run: the flags, with the defaults of the d2l recipe.
fn new_recipe(a: &TrainArgs) -> Recipe {
    Recipe {
        epochs: a.epochs.unwrap_or(10),
        lr: f64::from(a.lr.unwrap_or(1.0)),
        momentum: f64::from(a.momentum.unwrap_or(0.0)),
        weight_decay: f64::from(a.weight_decay.unwrap_or(0.0)),
        batch: a.batch.unwrap_or(256) as usize,
        seed: a.seed.unwrap_or(0),
        threads: a.threads.unwrap_or(2) as usize,
        limit_train: a.limit_train.map(|n| n as usize),
    }
}

/// Refuses a flag that was given and disagrees with the checkpoint's recipe.
fn agree<T: PartialEq + Display>(
    flag: &str,
    given: Option<T>,
    kept: T,
    path: &Path,
) -> anyhow::Result<()> {
    match given {
        Some(g) if g != kept => bail!(
            "{flag} {g} differs from the {kept} that checkpoint {} was trained with: a resumed \
             run keeps its recipe, so that it ends where an uninterrupted run would",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// The checkpoint's recipe, checked against the flags; `--epochs` and `--threads`
/// override.
fn kept_recipe(a: &TrainArgs, kept: &Recipe, path: &Path) -> anyhow::Result<Recipe> {
    agree("--lr", a.lr.map(f64::from), kept.lr, path)?;
    agree("--momentum", a.momentum.map(f64::from), kept.momentum, path)?;
    agree(
        "--weight-decay",
        a.weight_decay.map(f64::from),
        kept.weight_decay,
        path,
    )?;
    agree("--batch", a.batch.map(|b| b as usize), kept.batch, path)?;
    agree("--seed", a.seed, kept.seed, path)?;
    let limit = |n: Option<usize>| n.map_or_else(|| "all".to_string(), |n| n.to_string());
    agree(
        "--limit-train",
        a.limit_train.map(|n| limit(Some(n as usize))),
        limit(kept.limit_train),
        path,
    )?;
    // The thread count changes only the speed: a step's result does not depend on it.
    Ok(Recipe {
        epochs: a.epochs.unwrap_or(kept.epochs),
        threads: a.threads.map_or(kept.threads, |t| t as usize),
        ..kept.clone()
    })
}

/// The first `limit` examples of `data` (all of them without a limit).
fn limited(data: Dataset, limit: Option<usize>) -> anyhow::Result<Dataset> {
    let Some(n) = limit else {
        return Ok(data);
    };
    if n > data.len() {
        bail!(
            "--limit-train {n} is more than the {} training images",
            data.len()
        );
    }
    let p = data.pixels_per_image();
    Dataset::new(
        data.images()[..n * p].to_vec(),
        data.labels()[..n].to_vec(),
        data.rows(),
        data.cols(),
    )
    .context("training subset")
}

/// Reads the model, the `--resume` file and the training set, and decides the recipe.
pub fn start(a: &TrainArgs) -> anyhow::Result<Start> {
    let file = a.file.display().to_string();
    let typed = typed_model(&a.file)?;
    let source = bnc::load_model(&a.file)?;
    let fingerprint = model_fingerprint(&source);
    let resumed = match &a.resume {
        Some(path) => Some((path, Checkpoint::load(path)?)),
        None => None,
    };
    let recipe = match &resumed {
        Some((path, Resume::Checkpoint(c))) => {
            if c.state.fingerprint != fingerprint {
                bail!(
                    "checkpoint {} was written for another model ({}, fingerprint {}), not {file} \
                     (fingerprint {fingerprint})",
                    path.display(),
                    c.state.model,
                    c.state.fingerprint
                );
            }
            kept_recipe(a, &c.state.recipe, path)?
        }
        _ => new_recipe(a),
    };
    if recipe.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    // Refuse a model too large to train before any of its tensors is allocated.
    footprint(&source, &recipe.train_config()).with_context(|| format!("{file}: cannot train"))?;
    let train = limited(load(&a.data, Split::Train)?, recipe.limit_train)?;
    let fresh = |recipe: Recipe| TrainState {
        version: VERSION,
        model: file.clone(),
        fingerprint: fingerprint.clone(),
        train_images: train.len(),
        recipe,
        progress: Progress::default(),
        metrics: Vec::new(),
    };
    let (params, velocities, state) = match resumed {
        Some((path, Resume::Checkpoint(c))) => {
            let c = *c;
            if c.state.train_images != train.len() {
                bail!(
                    "checkpoint {} was trained on {} images, but the training set has {}",
                    path.display(),
                    c.state.train_images,
                    train.len()
                );
            }
            let p = &c.state.progress;
            eprintln!(
                "resuming {} after {} epoch(s) and {} batch(es)",
                path.display(),
                p.epochs_done,
                p.step
            );
            let state = TrainState { recipe, ..c.state };
            (c.params, Some(c.velocities), state)
        }
        Some((_, Resume::Weights(w))) => (w, None, fresh(recipe)),
        None => {
            let params = init_params(&typed, recipe.seed).into_iter().collect();
            (params, None, fresh(recipe))
        }
    };
    Ok(Start {
        source,
        params,
        velocities,
        state,
        train,
    })
}
