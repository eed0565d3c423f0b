//! The fused train-mode BatchNorm ops of `fuse-bn-train`, evaluated exactly as the unfused
//! `batch_norm_train` and its backward ops are (see `batch_norm.rs` and `backward.rs`), but
//! from a statistics operand: `batch_stats` is `f32[2, C]` (mean; biased variance), so the
//! interpreter rounds the statistics to `f32` once, as the JIT kernels hand them on.

use super::array::Array;
use super::batch_norm::{BatchStats, Layout};

/// Mean and biased variance per channel as `[2, C]` (two passes in `f64`).
pub(super) fn batch_stats(x: &Array) -> Array {
    let s = BatchStats::of(x);
    let mut data = s.mean;
    data.extend(s.var);
    Array::new(vec![2, data.len() / 2], data)
}

/// Per channel `(mean, 1/√(var + ε))` from a `[2, C]` statistics array.
fn mean_rstd(stats: &Array, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let c = stats.shape[1];
    let mean = stats.data[..c].to_vec();
    let rstd = stats.data[c..]
        .iter()
        .map(|v| 1.0 / (v + eps).sqrt())
        .collect();
    (mean, rstd)
}

/// `x̂ = (x − mean)·rstd` per element.
fn xhat(x: &Array, stats: &Array, eps: f64) -> (Layout, Vec<f64>, Vec<f64>) {
    let l = Layout::of(x);
    let (mean, rstd) = mean_rstd(stats, eps);
    let xhat = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = l.channel_of(i);
            (v - mean[c]) * rstd[c]
        })
        .collect();
    (l, xhat, rstd)
}

/// `γ·x̂ + β`.
pub(super) fn apply(x: &Array, stats: &Array, gamma: &Array, beta: &Array, eps: f64) -> Array {
    let (l, xhat, _) = xhat(x, stats, eps);
    let y = xhat
        .iter()
        .enumerate()
        .map(|(i, &h)| {
            let c = l.channel_of(i);
            gamma.data[c] * h + beta.data[c]
        })
        .collect();
    Array::new(x.shape.clone(), y)
}

/// `[Σ dy; Σ dy·x̂]` per channel.
pub(super) fn grad_sums(dy: &Array, x: &Array, stats: &Array, eps: f64) -> Array {
    let (l, xhat, _) = xhat(x, stats, eps);
    let c = l.channels;
    let mut data = vec![0.0; 2 * c];
    for ch in 0..c {
        data[ch] = l.channel(ch).map(|i| dy.data[i]).sum();
        data[c + ch] = l.channel(ch).map(|i| dy.data[i] * xhat[i]).sum();
    }
    Array::new(vec![2, c], data)
}

/// `dx = γ·rstd/m·(m·dy − Σdy − x̂·Σdy·x̂)` over the `m` elements of each channel.
pub(super) fn grad_apply(
    dy: &Array,
    x: &Array,
    stats: &Array,
    sums: &Array,
    gamma: &Array,
    eps: f64,
) -> Array {
    let (l, xhat, rstd) = xhat(x, stats, eps);
    let c = l.channels;
    let m = (l.outer * l.inner) as f64;
    let dx = dy
        .data
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let ch = l.channel_of(i);
            let (db, dg) = (sums.data[ch], sums.data[c + ch]);
            gamma.data[ch] * rstd[ch] / m * (m * d - db - xhat[i] * dg)
        })
        .collect();
    Array::new(x.shape.clone(), dx)
}

/// Row `index` of `[R, C]`.
pub(super) fn select_row(t: &Array, index: usize) -> Array {
    let c = t.shape[1];
    Array::new(vec![c], t.data[index * c..(index + 1) * c].to_vec())
}
