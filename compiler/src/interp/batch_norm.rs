//! BatchNorm, exactly as DESIGN.md states it. For X of rank 2 `[N, C]` the statistics run
//! over axis 0; for rank 4 `[N, C, H, W]` over axes 0, 2, 3: one mean and one variance
//! per channel, over `n = N` or `n = N*H*W` elements.
//!
//! - train: `mu = mean(X)`, `var = mean((X - mu)^2)` (biased, two passes in `f64`),
//!   `Y = gamma * (X - mu) / sqrt(var + eps) + beta`; then
//!   `running_mean = m * running_mean + (1 - m) * mu` and
//!   `running_var = m * running_var + (1 - m) * v`, where `v = var` for
//!   `running_var=biased` and `v = var * n / (n - 1)` for `running_var=unbiased`.
//!   With `n = 1` the unbiased variance is undefined (0/0); we use the biased one (0),
//!   where PyTorch would refuse to train. With `n = 0` (an empty batch) there are no
//!   statistics: the output is empty and the running statistics stay unchanged.
//! - infer: `Y = gamma * (X - running_mean) / sqrt(running_var + eps) + beta`.
//!
//! `m` is the `momentum` attribute in the MXNet/d2l convention (0.9 is PyTorch's 0.1).
//! Every formula is evaluated in `f64`; the interpreter rounds each result to `f32` once.

use super::array::Array;
use crate::ir::{BatchNormAttrs, VarConvention};

/// How a BatchNorm input is laid out around its channel axis: `outer` blocks (the batch)
/// of `channels` channels of `inner` contiguous elements (1 for rank 2, `H*W` for rank 4).
pub(super) struct Layout {
    /// The batch size `N`.
    pub outer: usize,
    /// The channel count `C`.
    pub channels: usize,
    /// Elements per channel and batch item: 1 or `H*W`.
    pub inner: usize,
}

impl Layout {
    /// The layout of a rank-2 or rank-4 array.
    pub fn of(x: &Array) -> Layout {
        let s = &x.shape;
        Layout {
            outer: s[0],
            channels: s[1],
            inner: s[2..].iter().product(),
        }
    }

    /// The flat indices of channel `c`'s elements.
    pub fn channel(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.outer).flat_map(move |o| {
            (0..self.inner).map(move |i| (o * self.channels + c) * self.inner + i)
        })
    }

    /// The channel of flat index `i`.
    pub fn channel_of(&self, i: usize) -> usize {
        (i / self.inner) % self.channels
    }
}

/// The per-channel batch statistics of a BatchNorm input.
pub(super) struct BatchStats {
    /// The mean of each channel.
    pub mean: Vec<f64>,
    /// The biased variance of each channel.
    pub var: Vec<f64>,
    /// The number of elements per channel, `n`.
    pub count: usize,
}

impl BatchStats {
    /// Two-pass statistics: the mean first, then the mean squared deviation.
    pub fn of(x: &Array) -> BatchStats {
        let l = Layout::of(x);
        let data = &x.data;
        let count = l.outer * l.inner;
        let mut mean = vec![0.0; l.channels];
        let mut var = vec![0.0; l.channels];
        for c in 0..l.channels {
            let sum: f64 = l.channel(c).map(|i| data[i]).sum();
            mean[c] = sum / count as f64;
            let sq: f64 = l.channel(c).map(|i| (data[i] - mean[c]).powi(2)).sum();
            var[c] = sq / count as f64;
        }
        BatchStats { mean, var, count }
    }

    /// The variance that updates the running variance: biased, or corrected by
    /// `n / (n - 1)` (biased again for `n = 1`, see the module comment).
    pub fn running_var_update(&self, a: &BatchNormAttrs) -> Vec<f64> {
        let n = self.count as f64;
        match a.running_var {
            VarConvention::Unbiased if self.count > 1 => {
                self.var.iter().map(|v| v * n / (n - 1.0)).collect()
            }
            _ => self.var.clone(),
        }
    }
}

/// Updates one running statistic in place: `running = m * running + (1 - m) * batch`.
/// The caller skips empty batches, whose statistics are 0/0.
pub(super) fn update_running(running: &mut Array, batch: &[f64], momentum: f64) {
    for (r, &b) in running.data.iter_mut().zip(batch) {
        *r = momentum * *r + (1.0 - momentum) * b;
    }
}

/// `Y = gamma * (X - mean) / sqrt(var + eps) + beta` per channel.
fn normalize(x: &Array, gamma: &Array, beta: &Array, mean: &[f64], var: &[f64], eps: f64) -> Array {
    let l = Layout::of(x);
    let (g, b) = (&gamma.data, &beta.data);
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let y = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = l.channel_of(i);
            g[c] * ((v - mean[c]) * inv_std[c]) + b[c]
        })
        .collect();
    Array::new(x.shape.clone(), y)
}

/// Train-mode BatchNorm output from the batch statistics (the caller updates the running
/// statistics with [`update_running`]).
pub(super) fn train(
    x: &Array,
    gamma: &Array,
    beta: &Array,
    stats: &BatchStats,
    a: &BatchNormAttrs,
) -> Array {
    normalize(x, gamma, beta, &stats.mean, &stats.var, a.eps)
}

/// Infer-mode BatchNorm: normalizes with the running statistics.
pub(super) fn infer(
    x: &Array,
    gamma: &Array,
    beta: &Array,
    running_mean: &Array,
    running_var: &Array,
    a: &BatchNormAttrs,
) -> Array {
    normalize(x, gamma, beta, &running_mean.data, &running_var.data, a.eps)
}

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::interp::tests::{assert_close, compile, feed, random, t};
    use crate::interp::{Params, SplitMix64, init_params, run};
    use crate::ir::Graph;
    use crate::passes::Mode;

    /// A one-BatchNorm graph `bn` over `x` of type `x_ty`, with `attrs`, compiled for `mode`,
    /// and its parameters: gamma, beta, running mean and running variance as given.
    fn bn_graph(x_ty: &str, attrs: &str, mode: Mode, p: [&[f32]; 4]) -> (Graph, Params) {
        let src = format!("input x: {x_ty}\nbn = batch_norm(x{attrs})\noutput bn");
        let g = compile(&src, mode);
        let mut params = init_params(&g, 0);
        for (slot, v) in ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .zip(p)
        {
            params.insert(format!("bn.{slot}"), t(&[v.len()], v));
        }
        (g, params)
    }

    fn f32s<'a>(p: &'a Params, name: &str) -> &'a [f32] {
        p[name].as_f32().unwrap()
    }

    // The hand-computed cases share one batch, with eps = 16 so that every sqrt(var + eps)
    // is an integer. Channel 0 holds 1, 7, 1, 7: mean 4, deviations -3, 3, -3, 3, biased
    // var 36/4 = 9, sqrt(9 + 16) = 5, xhat = -0.6, 0.6, -0.6, 0.6; with gamma 2, beta 1:
    // y = -0.2, 2.2, -0.2, 2.2. Channel 1 holds 4, 8, 12, 16: mean 10, deviations -6, -2,
    // 2, 6, var (36+4+4+36)/4 = 20, sqrt(20 + 16) = 6, xhat = -1, -1/3, 1/3, 1; with
    // gamma 0.5, beta -1: y = -1.5, -7/6, -5/6, -0.5. With momentum 0.9 from running
    // mean 0 and running var 1: running_mean = 0.1 * (4, 10) = (0.4, 1.0) and, biased,
    // running_var = 0.9 + 0.1 * (9, 20) = (1.8, 2.9).
    const GAMMA: &[f32] = &[2.0, 0.5];
    const BETA: &[f32] = &[1.0, -1.0];

    #[test]
    fn rank2_train_hand_computed() {
        let (g, mut p) = bn_graph(
            "f32[N,2]",
            ", eps=16",
            Mode::Train,
            [GAMMA, BETA, &[0.0; 2], &[1.0; 2]],
        );
        // Rows are batch items: (ch0, ch1).
        let x = t(&[4, 2], &[1.0, 4.0, 7.0, 8.0, 1.0, 12.0, 7.0, 16.0]);
        let out = run(&g, Mode::Train, &feed("x", x), &mut p).unwrap();
        let y = [-0.2, -1.5, 2.2, -7.0 / 6.0, -0.2, -5.0 / 6.0, 2.2, -0.5];
        assert_close(out.outputs[0].as_f32().unwrap(), &y, 1e-6);
        assert_close(f32s(&p, "bn.running_mean"), &[0.4, 1.0], 1e-6);
        assert_close(f32s(&p, "bn.running_var"), &[1.8, 2.9], 1e-6);
    }

    #[test]
    fn rank4_train_hand_computed() {
        let (g, mut p) = bn_graph(
            "f32[N,2,1,2]",
            ", eps=16",
            Mode::Train,
            [GAMMA, BETA, &[0.0; 2], &[1.0; 2]],
        );
        // Layout [n][c][h][w]: item 0 has ch0 = (1, 7), ch1 = (4, 8); item 1 has ch0 =
        // (1, 7), ch1 = (12, 16): the same per-channel values as the rank-2 case.
        let x = t(&[2, 2, 1, 2], &[1.0, 7.0, 4.0, 8.0, 1.0, 7.0, 12.0, 16.0]);
        let out = run(&g, Mode::Train, &feed("x", x), &mut p).unwrap();
        let y = [-0.2, 2.2, -1.5, -7.0 / 6.0, -0.2, 2.2, -5.0 / 6.0, -0.5];
        assert_close(out.outputs[0].as_f32().unwrap(), &y, 1e-6);
        assert_close(f32s(&p, "bn.running_mean"), &[0.4, 1.0], 1e-6);
        assert_close(f32s(&p, "bn.running_var"), &[1.8, 2.9], 1e-6);
    }

    // Infer: running mean (1, -2), running var (9, 0), eps 16, so the divisors are
    // sqrt(25) = 5 and sqrt(16) = 4. Channel 0 holds 1, 6: xhat = 0, 1, y = 2*xhat + 1 =
    // 1, 3. Channel 1 holds -2, 2: xhat = 0, 1, y = 0.5*xhat - 1 = -1, -0.5.
    const RUNNING: [&[f32]; 4] = [GAMMA, BETA, &[1.0, -2.0], &[9.0, 0.0]];

    #[test]
    fn rank2_infer_hand_computed() {
        let (g, mut p) = bn_graph("f32[N,2]", ", eps=16", Mode::Infer, RUNNING);
        let before = p.clone();
        let x = t(&[2, 2], &[1.0, -2.0, 6.0, 2.0]);
        let out = run(&g, Mode::Infer, &feed("x", x), &mut p).unwrap();
        assert_close(
            out.outputs[0].as_f32().unwrap(),
            &[1.0, -1.0, 3.0, -0.5],
            1e-6,
        );
        assert_eq!(p, before, "infer mode leaves the running statistics alone");
    }

    #[test]
    fn rank4_infer_hand_computed() {
        let (g, mut p) = bn_graph("f32[N,2,2,1]", ", eps=16", Mode::Infer, RUNNING);
        let before = p.clone();
        let x = t(&[1, 2, 2, 1], &[1.0, 6.0, -2.0, 2.0]);
        let out = run(&g, Mode::Infer, &feed("x", x), &mut p).unwrap();
        assert_close(
            out.outputs[0].as_f32().unwrap(),
            &[1.0, 3.0, -1.0, -0.5],
            1e-6,
        );
        assert_eq!(p, before);
    }

    // Two train steps, the second on the first batch doubled. Step 1 as above: mean
    // (4, 10), biased var (9, 20), unbiased var (9, 20) * 4/3 = (12, 80/3). Step 2: mean
    // (8, 20), biased var (36, 80), unbiased (48, 320/3).
    // running_mean: (0.4, 1.0), then 0.9 * (0.4, 1.0) + 0.1 * (8, 20) = (1.16, 2.9).
    // biased running_var: (1.8, 2.9), then 0.9 * (1.8, 2.9) + 0.1 * (36, 80) =
    // (1.62 + 3.6, 2.61 + 8) = (5.22, 10.61).
    // unbiased running_var: 0.9 + 0.1 * (12, 80/3) = (2.1, 3.5666667), then
    // 0.9 * (2.1, 3.5666667) + 0.1 * (48, 320/3) = (1.89 + 4.8, 3.21 + 10.6666667) =
    // (6.69, 13.8766667).
    #[test]
    fn running_stats_after_two_train_steps_in_both_conventions() {
        let cases = [("biased", [5.22, 10.61]), ("unbiased", [6.69, 13.876_667])];
        let batches = [
            (
                "f32[N,2]",
                vec![4, 2],
                [1.0, 4.0, 7.0, 8.0, 1.0, 12.0, 7.0, 16.0],
            ),
            (
                "f32[N,2,1,2]",
                vec![2, 2, 1, 2],
                [1.0, 7.0, 4.0, 8.0, 1.0, 7.0, 12.0, 16.0],
            ),
        ];
        for (convention, running_var) in cases {
            for (ty, shape, data) in &batches {
                let attrs = format!(", eps=16, running_var={convention}");
                let init = [GAMMA, BETA, &[0.0; 2], &[1.0; 2]];
                let (g, mut p) = bn_graph(ty, &attrs, Mode::Train, init);
                for scale in [1.0, 2.0] {
                    let x = data.iter().map(|v| v * scale).collect();
                    let x = Tensor::new(shape.clone(), x).unwrap();
                    run(&g, Mode::Train, &feed("x", x), &mut p).unwrap();
                }
                assert_close(f32s(&p, "bn.running_mean"), &[1.16, 2.9], 1e-5);
                assert_close(f32s(&p, "bn.running_var"), &running_var, 1e-5);
            }
        }
    }

    // A batch of one item: mean = x, biased var = 0, so xhat = 0 and y = beta. The
    // unbiased variance 0/0 is undefined; by definition it falls back to the biased 0:
    // running_var = 0.9 * 1 + 0.1 * 0 = 0.9, running_mean = 0.1 * x = (0.3, -0.5).
    #[test]
    fn a_single_element_batch_updates_with_the_biased_variance() {
        let init = [GAMMA, BETA, &[0.0; 2], &[1.0; 2]];
        let (g, mut p) = bn_graph("f32[N,2]", ", running_var=unbiased", Mode::Train, init);
        let out = run(
            &g,
            Mode::Train,
            &feed("x", t(&[1, 2], &[3.0, -5.0])),
            &mut p,
        )
        .unwrap();
        assert_close(out.outputs[0].as_f32().unwrap(), BETA, 0.0);
        assert_close(f32s(&p, "bn.running_mean"), &[0.3, -0.5], 1e-7);
        assert_close(f32s(&p, "bn.running_var"), &[0.9, 0.9], 1e-7);
    }

    #[test]
    fn an_empty_batch_leaves_the_running_statistics_alone() {
        let init = [GAMMA, BETA, &[0.5; 2], &[2.0; 2]];
        let (g, mut p) = bn_graph("f32[N,2]", "", Mode::Train, init);
        let before = p.clone();
        let out = run(&g, Mode::Train, &feed("x", Tensor::zeros(&[0, 2])), &mut p).unwrap();
        assert_eq!(out.outputs[0].shape(), &[0, 2]);
        assert_eq!(p, before);
    }

    /// A straightforward two-pass reference over `[N, C, H, W]` (H = W = 1 for rank 2):
    /// returns y in train mode, y in infer mode, and the updated running mean and var.
    #[allow(clippy::type_complexity)]
    fn reference(
        x: &[f32],
        [n, c, h, w]: [usize; 4],
        p: [&[f32]; 4],
        eps: f64,
        m: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let at = |ni: usize, ci: usize, hi: usize, wi: usize| ((ni * c + ci) * h + hi) * w + wi;
        let count = (n * h * w) as f64;
        let (mut train, mut infer) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let (mut rm, mut rv) = (vec![0.0; c], vec![0.0; c]);
        for ci in 0..c {
            let (mut sum, mut sq) = (0.0f64, 0.0f64);
            for ni in 0..n {
                for hi in 0..h {
                    for wi in 0..w {
                        sum += x[at(ni, ci, hi, wi)] as f64;
                    }
                }
            }
            let mean = sum / count;
            for ni in 0..n {
                for hi in 0..h {
                    for wi in 0..w {
                        sq += (x[at(ni, ci, hi, wi)] as f64 - mean).powi(2);
                    }
                }
            }
            let var = sq / count;
            let (gamma, beta) = (p[0][ci] as f64, p[1][ci] as f64);
            let (run_mean, run_var) = (p[2][ci] as f64, p[3][ci] as f64);
            for ni in 0..n {
                for hi in 0..h {
                    for wi in 0..w {
                        let i = at(ni, ci, hi, wi);
                        let v = x[i] as f64;
                        train[i] = gamma * (v - mean) / (var + eps).sqrt() + beta;
                        infer[i] = gamma * (v - run_mean) / (run_var + eps).sqrt() + beta;
                    }
                }
            }
            rm[ci] = m * run_mean + (1.0 - m) * mean;
            rv[ci] = m * run_var + (1.0 - m) * var * count / (count - 1.0);
        }
        (train, infer, rm, rv)
    }

    /// Relative agreement: |got - want| <= 1e-6 * max(1, |want|). The interpreter rounds
    /// each f64 result to f32 once (relative error 2^-24 ~ 6e-8), so 1e-6 leaves room
    /// only for summation-order differences.
    #[track_caller]
    fn assert_rel(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let tol = 1e-6 * w.abs().max(1.0);
            assert!((g as f64 - w).abs() <= tol, "element {i}: {g} vs {w}");
        }
    }

    #[test]
    fn agrees_with_a_two_pass_reference_on_random_data() {
        let mut rng = SplitMix64::new(2024);
        for (ty, dims) in [("f32[N,5]", [7, 5, 1, 1]), ("f32[N,4,5,6]", [3, 4, 5, 6])] {
            let c = dims[1];
            let shape: Vec<usize> = if dims[2] == 1 {
                dims[..2].to_vec()
            } else {
                dims.to_vec()
            };
            // An offset of 100 makes a one-pass E[x^2] - E[x]^2 lose digits; two passes
            // do not.
            let x = random(&mut rng, &shape, 97.0, 105.0);
            let gamma = random(&mut rng, &[c], 0.5, 2.0);
            let beta = random(&mut rng, &[c], -1.0, 1.0);
            let rm = random(&mut rng, &[c], 95.0, 105.0);
            let rv = random(&mut rng, &[c], 0.5, 3.0);
            let p = [
                gamma.as_f32().unwrap(),
                beta.as_f32().unwrap(),
                rm.as_f32().unwrap(),
                rv.as_f32().unwrap(),
            ];
            let xs = x.as_f32().unwrap();
            let (train, infer, new_rm, new_rv) = reference(xs, dims, p, 1e-3, 0.75);
            let attrs = ", eps=0.001, momentum=0.75, running_var=unbiased";

            let (g, mut params) = bn_graph(ty, attrs, Mode::Infer, p);
            let out = run(&g, Mode::Infer, &feed("x", x.clone()), &mut params).unwrap();
            assert_rel(out.outputs[0].as_f32().unwrap(), &infer);

            let (g, mut params) = bn_graph(ty, attrs, Mode::Train, p);
            let out = run(&g, Mode::Train, &feed("x", x.clone()), &mut params).unwrap();
            assert_rel(out.outputs[0].as_f32().unwrap(), &train);
            assert_rel(f32s(&params, "bn.running_mean"), &new_rm);
            assert_rel(f32s(&params, "bn.running_var"), &new_rv);
        }
    }
}
