//! How much memory training a model needs, computed from the training plan before anything
//! is allocated, so that a model with huge declared shapes fails with a clear "too large"
//! error instead of exhausting memory.
//!
//! Shape inference already refuses any single tensor with more than 2^31 elements per
//! image; that still lets through models whose tensors, times the batch and the number of
//! buffers a training step keeps, need hundreds of gigabytes. The estimate counts what the
//! [`Trainer`](super::Trainer) holds: each trainable tensor five times (value, gradient,
//! momentum, and the two layouts the kernels read), the saved activations and gradients of
//! every layer for the whole batch, and per unit of the batch its partial weight
//! gradients. The dataset and the inference model used for evaluation are not counted.

use bnc_compiler::ir::Graph;
use bnc_compiler::lower::train::TrainPlan;

use super::{TrainConfig, TrainError, train_plan};

/// The most memory a [`Trainer`](super::Trainer) may need: 16 GiB. It is a guard against
/// shapes that are clearly wrong, not a tuned budget; LeNet-BN at batch 256 needs about
/// 20 MB.
pub const MAX_TRAIN_BYTES: u64 = 16 << 30;

/// Bytes a trainer needs, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Parameters, running statistics and optimizer state.
    pub params: u64,
    /// Activations and gradients for a full batch, and the units' partial weight gradients.
    pub buffers: u64,
}

impl Footprint {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.params.saturating_add(self.buffers)
    }
}

/// The memory that training `model` (as parsed) with `cfg` needs; an error if it is more
/// than [`MAX_TRAIN_BYTES`] or the model cannot be planned for training. Nothing is
/// allocated for the model's tensors, so callers can check before initializing weights.
pub fn footprint(model: &Graph, cfg: &TrainConfig) -> Result<Footprint, TrainError> {
    check(&train_plan(model)?, cfg)
}

/// The footprint of `plan` under `cfg`, refused above [`MAX_TRAIN_BYTES`].
pub(super) fn check(plan: &TrainPlan, cfg: &TrainConfig) -> Result<Footprint, TrainError> {
    let units = super::step::partition(cfg.batch.max(1)).len() as u128;
    let (mut params, mut per_image, mut per_unit) = (0u128, 0u128, 0u128);
    for l in &plan.layers {
        let c = l.channels as u128;
        let weight: u128 = l.weight_shape.iter().map(|&d| d as u128).product();
        let bias = if l.bias.is_some() { c } else { 0 };
        let bn = if l.bn.is_some() { 2 * c } else { 0 };
        // Value, gradient and momentum of every trainable tensor; the weight twice more in
        // the kernels' layouts; running mean and variance.
        params += 3 * (weight + bias + bn) + 2 * weight + bn;
        let (z, out) = (l.z_len as u128, l.out_len as u128);
        // z (BatchNorm only), a, d_z; d_out; the pooled output. A BatchNorm layer writes
        // `dz` over `z` unless the trainer keeps `z` (`Trainer::keep_z`), so its `d_z` is
        // counted for that case.
        per_image += if l.bn.is_some() { 3 * z } else { 2 * z } + out;
        if l.pool.is_some() {
            per_image += out;
        }
        // The per-image sums of the pool/activation backward: Σdy (and Σdy·x̂).
        per_image += if l.bn.is_some() { 2 * c } else { c };
        // Partial weight and bias gradients and the statistics of one unit.
        per_unit += weight + 4 * c;
    }
    let bytes = |floats: u128| u64::try_from(floats.saturating_mul(4)).unwrap_or(u64::MAX);
    let needed = Footprint {
        params: bytes(params),
        buffers: bytes(
            (cfg.batch.max(1) as u128)
                .saturating_mul(per_image)
                .saturating_add(units.saturating_mul(per_unit)),
        ),
    };
    if needed.total() > MAX_TRAIN_BYTES {
        return Err(TrainError::TooLarge {
            needed,
            batch: cfg.batch,
            limit: MAX_TRAIN_BYTES,
        });
    }
    Ok(needed)
}

/// `bytes` in binary units with one decimal: `9.6 MiB`, `240.0 GiB`.
pub(super) fn gib(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bnc_compiler::text::parse;

    fn cfg(batch: usize, threads: usize) -> TrainConfig {
        TrainConfig {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            threads,
            batch,
        }
    }

    /// A small dense model's footprint, counted by hand.
    #[test]
    fn counts_parameters_and_buffers() {
        let g = parse("input x: f32[N,1,2,2]\nf = flatten(x)\nfc = dense(f, units=3)\noutput fc\n")
            .unwrap();
        let fp = footprint(&g, &cfg(8, 2)).unwrap();
        // weight 3x4 = 12, bias 3: 3 * 15 + 2 * 12 = 69 floats.
        assert_eq!(fp.params, 69 * 4);
        // Per image: a, d_z, d_out and the backward's sums (3 each); per unit 12 + 4 * 3.
        // A batch of 8 is one unit of 8 images, whatever the thread count.
        assert_eq!(fp.buffers, (8 * 12 + 24) * 4);
        assert_eq!(footprint(&g, &cfg(8, 1)).unwrap(), fp);
    }

    /// Shapes that each pass shape inference but together need far too much are refused,
    /// with the sizes in the message.
    #[test]
    fn huge_models_are_too_large() {
        let g = parse(
            "input x: f32[N,1,28,28]\nc = conv2d(x, channels=100000, kernel=1)\n\
             f = flatten(c)\ny = dense(f, units=10)\noutput y\n",
        )
        .unwrap();
        let e = footprint(&g, &cfg(256, 2)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("training needs "), "{msg}");
        assert!(
            msg.ends_with("more than the limit of 16.0 GiB: the model is too large"),
            "{msg}"
        );
        let lenet = parse(include_str!("../../../models/lenet_bn.ir")).unwrap();
        assert!(footprint(&lenet, &cfg(256, 2)).unwrap().total() < 64 << 20);
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(gib(12), "12 bytes");
        assert_eq!(gib(10 << 20), "10.0 MiB");
        assert_eq!(gib(3 << 29), "1.5 GiB");
        assert_eq!(gib(u64::MAX), "16384.0 PiB");
    }
}
