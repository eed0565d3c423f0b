//! Training checkpoints: everything `bnc train --resume` needs to continue a run so that
//! its result is bit-for-bit the one an uninterrupted run with the same recipe gives.
//!
//! A checkpoint is a safetensors file, written atomically (temporary file, sync, rename):
//!
//! - every parameter under its own name (weights, biases, BatchNorm γ and β, running mean
//!   and variance), so a checkpoint is also a weights file for `bnc run --weights`;
//! - the SGD momentum buffer of every trainable parameter as `sgd.velocity.<name>`;
//! - in the header's `__metadata__` map, next to `"format": "bnc"`, the key
//!   `bnc.checkpoint` holding the training state as JSON ([`TrainState`]): a version
//!   number, the model's name and fingerprint, the number of training images, the recipe
//!   (epochs, lr, momentum, weight decay, batch, seed, threads, training-set limit), the
//!   progress (epochs completed, batches done in the current epoch and that epoch's running
//!   loss sum, correct count, images seen and seconds) and the metrics of every completed
//!   epoch. Floats are written in the shortest form that reads back to the same bits.
//!
//! The random state needs no bytes of its own: weights are initialized once from the seed,
//! and the shuffle of epoch `e` is `shuffled_indices(n, seed, e)`, a pure function of the
//! seed and the epoch (`data::SplitMix64::for_epoch`), so the seed, the epoch and the
//! number of batches already taken from it restore the data order exactly. Gradients are
//! not saved: each step overwrites them before use.
//!
//! A safetensors file without `bnc.checkpoint` (for example one `bnc train --save` or
//! `bnc init` wrote) loads as [`Resume::Weights`]: a new run that starts from those
//! weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use bnc_compiler::ir::Graph;
use bnc_compiler::text::print;

use crate::train::{TrainConfig, Trainer};
use crate::weights::{ParamStore, WeightsError};

/// The metadata key that holds the training state.
pub const STATE_KEY: &str = "bnc.checkpoint";
/// The prefix of the momentum buffers' tensor names.
pub const VELOCITY_PREFIX: &str = "sgd.velocity.";
/// The version of the training state this code writes and reads.
pub const VERSION: u32 = 1;

/// Why a checkpoint could not be written or read.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The safetensors file could not be written or read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The training state in the metadata is not valid JSON of the expected form.
    #[error("{}: unreadable training state in the checkpoint metadata: {source}", path.display())]
    State {
        /// The checkpoint.
        path: PathBuf,
        /// What the JSON reader found wrong.
        source: serde_json::Error,
    },
    /// The checkpoint was written by another version of the format.
    #[error(
        "{}: checkpoint version {found} is not supported (this bnc reads version {VERSION})",
        path.display()
    )]
    Version {
        /// The checkpoint.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// A parameter's name starts with the prefix reserved for momentum buffers.
    #[error(
        "cannot write {}: parameter '{name}' starts with '{VELOCITY_PREFIX}', which \
         checkpoints reserve for optimizer state",
        path.display()
    )]
    ReservedName {
        /// The checkpoint.
        path: PathBuf,
        /// The parameter's name.
        name: String,
    },
}

/// How the run trains; a resumed run keeps it, so that it ends where an uninterrupted run
/// would. The learning rate, momentum and weight decay are `f32` values kept as `f64` so
/// that they read back to the same bits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Epochs the run was asked for.
    pub epochs: u32,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Images per batch.
    pub batch: usize,
    /// The seed of the initialization and the shuffle.
    pub seed: u64,
    /// Threads each batch is split over (the result depends on it).
    pub threads: usize,
    /// Training on the first this-many images only, if set.
    pub limit_train: Option<usize>,
}

impl Recipe {
    /// The trainer configuration of this recipe.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            lr: self.lr as f32,
            momentum: self.momentum as f32,
            weight_decay: self.weight_decay as f32,
            threads: self.threads,
            batch: self.batch,
        }
    }
}

/// The numbers of one completed epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: u32,
    /// Mean training loss over the epoch's batches (weighted by batch size).
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_acc: f64,
    /// Test accuracy after the epoch, in inference mode.
    pub test_acc: f64,
    /// Wall time of the training pass (test evaluation and checkpoints excluded).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_s: f64,
}

/// Where the run stands: completed epochs, and how far into the next one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed (their metrics are in [`TrainState::metrics`]).
    pub epochs_done: u32,
    /// Batches of epoch `epochs_done + 1` already trained on.
    pub step: u64,
    /// Sum over those batches of loss × batch size.
    pub loss_sum: f64,
    /// Correct predictions in those batches.
    pub correct: u64,
    /// Images in those batches.
    pub seen: u64,
    /// Seconds spent training on them.
    pub seconds: f64,
}

/// The training state a checkpoint carries in its metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The format version, [`VERSION`].
    pub version: u32,
    /// The model file the run trains (for messages).
    pub model: String,
    /// The model's fingerprint ([`model_fingerprint`]).
    pub fingerprint: String,
    /// Images in the training set the run uses.
    pub train_images: usize,
    /// The recipe.
    pub recipe: Recipe,
    /// How far the run got.
    pub progress: Progress,
    /// The metrics of the completed epochs.
    pub metrics: Vec<EpochMetrics>,
}

/// A training checkpoint: parameters, optimizer state and training state.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Weights, biases, BatchNorm parameters and running statistics.
    pub params: ParamStore,
    /// The momentum buffer of every trainable parameter, by parameter name.
    pub velocities: ParamStore,
    /// Recipe, progress and metrics.
    pub state: TrainState,
}

/// What `--resume` found in a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Resume {
    /// A checkpoint: continue the run.
    Checkpoint(Box<Checkpoint>),
    /// A plain weights file: start a new run from these weights.
    Weights(ParamStore),
}

/// A fingerprint of a model: FNV-1a (64 bits, hex) of its canonical text, so that a
/// checkpoint is not resumed with a different model whose parameters happen to fit.
pub fn model_fingerprint(model: &Graph) -> String {
    let hash = print(model).bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

impl Checkpoint {
    /// The checkpoint of `trainer` at `state`.
    pub fn of(trainer: &Trainer, state: TrainState) -> Checkpoint {
        Checkpoint {
            params: trainer.params(),
            velocities: trainer.velocities(),
            state,
        }
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let mut store = self.params.clone();
        if let Some(name) = store.names().find(|n| n.starts_with(VELOCITY_PREFIX)) {
            return Err(CheckpointError::ReservedName {
                path: path.to_path_buf(),
                name: name.to_string(),
            });
        }
        for (name, v) in self.velocities.iter() {
            store.insert(format!("{VELOCITY_PREFIX}{name}"), v.clone());
        }
        // Serializing plain numbers and strings cannot fail.
        let state = serde_json::to_string(&self.state).unwrap_or_default();
        let metadata = BTreeMap::from([(STATE_KEY.to_string(), state)]);
        Ok(store.save_with_metadata(path, &metadata)?)
    }

    /// Reads `path`: a checkpoint if its metadata holds a training state, else plain
    /// weights.
    pub fn load(path: &Path) -> Result<Resume, CheckpointError> {
        let (store, metadata) = ParamStore::load_with_metadata(path)?;
        let Some(text) = metadata.get(STATE_KEY) else {
            return Ok(Resume::Weights(store));
        };
        let bad_state = |source| CheckpointError::State {
            path: path.to_path_buf(),
            source,
        };
        // Read the version first, so that a future format gets a version error rather than
        // a complaint about a field.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let found = serde_json::from_str::<Versioned>(text)
            .map_err(bad_state)?
            .version;
        if found != VERSION {
            return Err(CheckpointError::Version {
                path: path.to_path_buf(),
                found,
            });
        }
        let state: TrainState = serde_json::from_str(text).map_err(bad_state)?;
        let (mut params, mut velocities) = (ParamStore::new(), ParamStore::new());
        for (name, t) in store.iter() {
            match name.strip_prefix(VELOCITY_PREFIX) {
                Some(param) => velocities.insert(param, t.clone()),
                None => params.insert(name, t.clone()),
            };
        }
        Ok(Resume::Checkpoint(Box::new(Checkpoint {
            params,
            velocities,
            state,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testdir::TestDir;
    use bnc_compiler::Tensor;

    fn state() -> TrainState {
        TrainState {
            version: VERSION,
            model: "models/lenet_bn.ir".into(),
            fingerprint: "0123456789abcdef".into(),
            train_images: 60_000,
            recipe: Recipe {
                epochs: 10,
                lr: f64::from(0.9f32),
                momentum: f64::from(0.1f32),
                weight_decay: 0.0,
                batch: 256,
                seed: u64::MAX,
                threads: 2,
                limit_train: Some(1000),
            },
            progress: Progress {
                epochs_done: 1,
                step: 17,
                // Values whose shortest decimal form needs all 17 digits.
                loss_sum: 0.1 + 0.2,
                correct: 3000,
                seen: 4352,
                seconds: 1.0 / 3.0,
            },
            metrics: vec![EpochMetrics {
                epoch: 1,
                train_loss: std::f64::consts::PI,
                train_acc: 0.732_583_333_333_333_4,
                test_acc: 5e-324,
                seconds: 7.83,
                images_per_s: 7_658.123_456_789,
            }],
        }
    }

    fn checkpoint() -> Checkpoint {
        let mut params = ParamStore::new();
        params.insert("fc.weight", Tensor::new(vec![2], vec![1.5, -0.0]).unwrap());
        params.insert("bn.running_var", Tensor::full(&[2], 0.25));
        let mut velocities = ParamStore::new();
        velocities.insert("fc.weight", Tensor::new(vec![2], vec![1e-38, 3.0]).unwrap());
        Checkpoint {
            params,
            velocities,
            state: state(),
        }
    }

    /// Everything comes back bit for bit, floats included.
    #[test]
    fn round_trips_exactly() {
        let dir = TestDir::new("checkpoint-roundtrip");
        let path = dir.path().join("c.safetensors");
        let c = checkpoint();
        c.save(&path).unwrap();
        let Resume::Checkpoint(back) = Checkpoint::load(&path).unwrap() else {
            panic!("a checkpoint loads as a checkpoint");
        };
        assert_eq!(*back, c);
        let p = &back.state.progress;
        assert_eq!(p.loss_sum.to_bits(), (0.1f64 + 0.2).to_bits());
        assert_eq!(
            back.state.recipe.train_config().lr.to_bits(),
            0.9f32.to_bits()
        );
        // The file is a weights file too: the parameters under their own names.
        let plain = ParamStore::load(&path).unwrap();
        assert_eq!(plain.get("fc.weight"), c.params.get("fc.weight"));
        assert!(plain.contains("sgd.velocity.fc.weight"));
    }

    /// A file without training state is plain weights.
    #[test]
    fn weights_files_load_as_weights() {
        let dir = TestDir::new("checkpoint-weights");
        let path = dir.path().join("w.safetensors");
        let c = checkpoint();
        c.params.save(&path).unwrap();
        assert_eq!(
            Checkpoint::load(&path).unwrap(),
            Resume::Weights(c.params.clone())
        );
    }

    /// A parameter may not take the momentum buffers' prefix; a bad state or a future
    /// version is an error naming the file.
    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = TestDir::new("checkpoint-errors");
        let path = dir.path().join("c.safetensors");
        let mut c = checkpoint();
        c.params.insert("sgd.velocity.x", Tensor::full(&[1], 0.0));
        let e = c.save(&path).unwrap_err().to_string();
        assert!(e.contains("parameter 'sgd.velocity.x' starts with"), "{e}");
        assert!(!path.exists());

        let store = checkpoint().params;
        for (text, expected) in [
            ("{\"version\": 2}", "checkpoint version 2 is not supported"),
            ("{\"version\": 1}", "unreadable training state"),
            ("not json", "unreadable training state"),
        ] {
            let metadata = BTreeMap::from([(STATE_KEY.to_string(), text.to_string())]);
            store.save_with_metadata(&path, &metadata).unwrap();
            let e = Checkpoint::load(&path).unwrap_err().to_string();
            assert!(e.starts_with(&path.display().to_string()), "{e}");
            assert!(e.contains(expected), "{e}");
        }
    }
}
