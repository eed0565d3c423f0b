//! The kernels of the backward ops that `autodiff` emits, in `f64` like the forward ones.
//! Each states the derivative it computes; `passes/autodiff.rs` states which forward op
//! and operand it is the gradient of, and `grad_tests.rs` checks each against central
//! finite differences of the forward kernel.

use super::InterpError;
use super::array::Array;
use super::batch_norm::{BatchStats, Layout};
use super::ops::{Conv, avg_divisor, classes, for_each_window, softmax, window_argmax};
use crate::ir::{Conv2dGradInputAttrs, Conv2dGradWeightAttrs, PoolAttrs};

/// `∂L/∂x` of the mean cross-entropy `L = mean_i (logsumexp(x_i) − x_i[label_i])`:
/// `(softmax(x_i) − onehot(label_i)) / N` per row.
pub(super) fn softmax_cross_entropy_grad(
    logits: &Array,
    labels: &Array,
) -> Result<Array, InterpError> {
    let (n, k) = (logits.shape[0], logits.shape[1]);
    let mut dx = softmax(logits);
    for (i, class) in classes(labels, n, k)?.into_iter().enumerate() {
        dx.data[i * k + class] -= 1.0;
    }
    for v in &mut dx.data {
        *v /= n as f64;
    }
    Ok(dx)
}

/// Softmax per row: `dx_j = y_j·(dy_j − Σ_l dy_l·y_l)`.
pub(super) fn softmax_grad(dy: &Array, y: &Array) -> Array {
    let k = y.shape[1].max(1);
    let mut dx = Vec::with_capacity(y.len());
    for (dr, yr) in dy.data.chunks(k).zip(y.data.chunks(k)) {
        let dot: f64 = dr.iter().zip(yr).map(|(d, y)| d * y).sum();
        dx.extend(dr.iter().zip(yr).map(|(d, y)| y * (d - dot)));
    }
    Array::new(y.shape.clone(), dx)
}

/// An elementwise derivative `dx = dy·f'(v)` from the operand or result `v`.
pub(super) fn pointwise(dy: &Array, v: &Array, f: impl Fn(f64, f64) -> f64) -> Array {
    let dx = dy
        .data
        .iter()
        .zip(&v.data)
        .map(|(&d, &v)| f(d, v))
        .collect();
    Array::new(dy.shape.clone(), dx)
}

/// `dense` w.r.t. `x`: `dx[n,k] = Σ_u dy[n,u]·W[u,k]`.
pub(super) fn dense_grad_input(dy: &Array, w: &Array) -> Array {
    let (n, u, k) = (dy.shape[0], w.shape[0], w.shape[1]);
    let mut dx = vec![0.0; n * k];
    for i in 0..n {
        for j in 0..u {
            let d = dy.data[i * u + j];
            for l in 0..k {
                dx[i * k + l] += d * w.data[j * k + l];
            }
        }
    }
    Array::new(vec![n, k], dx)
}

/// `dense` w.r.t. `W`: `dW[u,k] = Σ_n dy[n,u]·x[n,k]`.
pub(super) fn dense_grad_weight(dy: &Array, x: &Array) -> Array {
    let (n, u, k) = (dy.shape[0], dy.shape[1], x.shape[1]);
    let mut dw = vec![0.0; u * k];
    for i in 0..n {
        for j in 0..u {
            let d = dy.data[i * u + j];
            for l in 0..k {
                dw[j * k + l] += d * x.data[i * k + l];
            }
        }
    }
    Array::new(vec![u, k], dw)
}

/// A bias (or β) added per channel of axis 1: `db[c] = Σ dy[.., c, ..]`.
pub(super) fn bias_grad(dy: &Array) -> Array {
    let l = Layout::of(dy);
    let db = (0..l.channels)
        .map(|c| l.channel(c).map(|i| dy.data[i]).sum())
        .collect();
    Array::new(vec![l.channels], db)
}

/// `conv2d` w.r.t. `x`: every multiply `y[yi] += x[xi]·w[wi]` of the forward contributes
/// `dx[xi] += dy[yi]·w[wi]` (the transposed convolution).
pub(super) fn conv2d_grad_input(dy: &Array, w: &Array, a: &Conv2dGradInputAttrs) -> Array {
    let [n, _, _, _] = dy.dims4();
    let [_, cg, _, _] = w.dims4();
    let [h, wd] = a.input_size;
    let x = [n, cg * a.groups, h, wd];
    let geo = Conv::new(x, w.dims4(), a.stride, a.padding, a.groups);
    let mut dx = vec![0.0; x.iter().product()];
    geo.for_each(|xi, wi, yi| dx[xi] += dy.data[yi] * w.data[wi]);
    Array::new(x.to_vec(), dx)
}

/// `conv2d` w.r.t. `W`: every multiply `y[yi] += x[xi]·w[wi]` contributes
/// `dW[wi] += dy[yi]·x[xi]`.
pub(super) fn conv2d_grad_weight(dy: &Array, x: &Array, a: &Conv2dGradWeightAttrs) -> Array {
    let [_, o, _, _] = dy.dims4();
    let c = x.shape[1];
    let w = [o, c / a.groups.max(1), a.kernel[0], a.kernel[1]];
    let geo = Conv::new(x.dims4(), w, a.stride, a.padding, a.groups);
    let mut dw = vec![0.0; w.iter().product()];
    geo.for_each(|xi, wi, yi| dw[wi] += dy.data[yi] * x.data[xi]);
    Array::new(w.to_vec(), dw)
}

/// The per-channel `xhat = (x − mu)·rstd` of a train-mode BatchNorm, with `rstd`.
fn xhat(x: &Array, eps: f64) -> (Layout, Vec<f64>, Vec<f64>) {
    let stats = BatchStats::of(x);
    let l = Layout::of(x);
    let rstd: Vec<f64> = stats.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let xhat = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = l.channel_of(i);
            (v - stats.mean[c]) * rstd[c]
        })
        .collect();
    (l, xhat, rstd)
}

/// `batch_norm_train` w.r.t. γ: `dγ[c] = Σ dy·xhat` over the channel's `m` elements.
pub(super) fn batch_norm_weight_grad(dy: &Array, x: &Array, eps: f64) -> Array {
    let (l, xhat, _) = xhat(x, eps);
    let dg = (0..l.channels)
        .map(|c| l.channel(c).map(|i| dy.data[i] * xhat[i]).sum())
        .collect();
    Array::new(vec![l.channels], dg)
}

/// `batch_norm_train` w.r.t. `x` (batch statistics, biased variance, `m` elements per
/// channel): `dx = γ·rstd/m · (m·dy − dβ − xhat·dγ)` with `dβ = Σ dy`, `dγ = Σ dy·xhat`.
pub(super) fn batch_norm_train_grad(dy: &Array, x: &Array, gamma: &Array, eps: f64) -> Array {
    let (l, xhat, rstd) = xhat(x, eps);
    let m = (l.outer * l.inner) as f64;
    let mut dx = vec![0.0; x.len()];
    for (c, &rstd) in rstd.iter().enumerate() {
        let db: f64 = l.channel(c).map(|i| dy.data[i]).sum();
        let dg: f64 = l.channel(c).map(|i| dy.data[i] * xhat[i]).sum();
        let k = gamma.data[c] * rstd / m;
        for i in l.channel(c) {
            dx[i] = k * (m * dy.data[i] - db - xhat[i] * dg);
        }
    }
    Array::new(x.shape.clone(), dx)
}

/// `avg_pool2d`: each window's `dy` is spread evenly, `dy / divisor`, over its in-bounds
/// elements (padding takes its share and drops it).
pub(super) fn avg_pool2d_grad(dy: &Array, x: &Array, a: &PoolAttrs) -> Array {
    let mut dx = Array::zeros(&x.shape);
    for_each_window(&x.shape, a, |o, win| {
        let share = dy.data[o] / avg_divisor(a, win.len());
        for &i in win {
            dx.data[i] += share;
        }
    });
    dx
}

/// `max_pool2d`: each window's `dy` goes to the element its maximum came from.
pub(super) fn max_pool2d_grad(dy: &Array, x: &Array, a: &PoolAttrs) -> Array {
    let mut dx = Array::zeros(&x.shape);
    for_each_window(&x.shape, a, |o, win| {
        if let Some(i) = window_argmax(&x.data, win) {
            dx.data[i] += dy.data[o];
        }
    });
    dx
}

/// `flatten`: `dy` reshaped to the shape of the flattened value.
pub(super) fn unflatten(dy: &Array, like: &Array) -> Array {
    let mut dx = dy.reshaped(like.shape.clone());
    dx.dtype = crate::DType::F32;
    dx
}
