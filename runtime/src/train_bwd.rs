//! The parts of a training step that run in plain Rust between the JIT kernels: merging the
//! BatchNorm statistics (Chan's parallel formula in `f64`), the cross-entropy loss and its
//! gradient, and the fused elementwise backward of pool, activation and BatchNorm (one pass
//! that also reduces `Σdy` and `Σdy·x̂`, one pass for `dz`).

use bnc_compiler::codegen::pool_act_back_sums;
use bnc_compiler::codegen::{Activation, Pool2d, PoolKind};
use bnc_compiler::lower::train::{BnPlan, TrainLayer};

/// Batch statistics of one BatchNorm: per channel mean and biased variance over `count`
/// values.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stats {
    pub count: f64,
    pub mean: Vec<f64>,
    /// Biased variance (or, before `merge`, the sum of squared deviations).
    pub var: Vec<f64>,
}

impl Stats {
    /// One thread's statistics from a `train_stats` buffer over `n` images of `hw` pixels:
    /// mean and sum of squared deviations `M2`.
    pub fn from_shifted(buf: &[f32], c: usize, n: usize, hw: [usize; 2]) -> Stats {
        let count = (n * hw[0] * hw[1]) as f64;
        let mut mean = Vec::with_capacity(c);
        let mut m2 = Vec::with_capacity(c);
        for ch in 0..c {
            let (shift, s1, s2) = (
                f64::from(buf[ch]),
                f64::from(buf[c + ch]),
                f64::from(buf[2 * c + ch]),
            );
            mean.push(shift + s1 / count);
            m2.push((s2 - s1 * s1 / count).max(0.0));
        }
        Stats {
            count,
            mean,
            var: m2,
        }
    }

    /// `[count, mean..., M2...]`.
    pub fn pack(&self) -> Vec<f64> {
        let mut v = vec![self.count];
        v.extend(&self.mean);
        v.extend(&self.var);
        v
    }

    /// Merges packed per-thread `(count, mean, M2)` in order with Chan's formula
    /// `M2 = M2a + M2b + δ²·na·nb/(na+nb)`; returns mean and biased variance.
    pub fn merge(parts: &[Vec<f64>], c: usize) -> Stats {
        let mut n = 0.0;
        let mut mean = vec![0.0; c];
        let mut m2 = vec![0.0; c];
        for p in parts {
            let nb = p[0];
            if nb == 0.0 {
                continue;
            }
            let total = n + nb;
            for ch in 0..c {
                let delta = p[1 + ch] - mean[ch];
                mean[ch] += delta * nb / total;
                m2[ch] += p[1 + c + ch] + delta * delta * n * nb / total;
            }
            n = total;
        }
        Stats {
            count: n,
            mean,
            var: m2.iter().map(|m| m / n.max(1.0)).collect(),
        }
    }

    /// The BatchNorm as a per-channel affine map: `scale = γ/√(var+ε)`, `shift = β - mean·scale`.
    pub fn scale_shift(&self, gamma: &[f32], beta: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
        let mut scale = Vec::with_capacity(gamma.len());
        let mut shift = Vec::with_capacity(gamma.len());
        for c in 0..gamma.len() {
            let s = f64::from(gamma[c]) / (self.var[c] + eps).sqrt();
            scale.push(s as f32);
            shift.push((f64::from(beta[c]) - self.mean[c] * s) as f32);
        }
        (scale, shift)
    }

    /// `1/√(var+ε)` per channel.
    pub fn inv_std(&self, eps: f64) -> Vec<f64> {
        self.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
    }
}

/// The BatchNorm backward sums per channel: `dβ = Σdy`, `dγ = Σdy·x̂`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct BnSums {
    pub dbeta: Vec<f64>,
    pub dgamma: Vec<f64>,
}

impl BnSums {
    /// `[dβ..., dγ...]`.
    pub fn pack(&self) -> Vec<f64> {
        let mut v = self.dbeta.clone();
        v.extend(&self.dgamma);
        v
    }

    /// One thread's sums from the per-image `sums` buffer of `PoolActBack` over `n` images
    /// (`Σdy` per channel, then `Σdy·x̂` with `bn`), added in `f64` in image order.
    pub fn from_images(buf: &[f32], c: usize, n: usize, bn: bool) -> BnSums {
        let per = pool_act_back_sums(c, bn);
        let mut s = BnSums {
            dbeta: vec![0.0; c],
            dgamma: vec![0.0; if bn { c } else { 0 }],
        };
        for img in buf[..n * per].chunks_exact(per) {
            for (acc, &x) in s.dbeta.iter_mut().zip(&img[..c]) {
                *acc += f64::from(x);
            }
            for (acc, &x) in s.dgamma.iter_mut().zip(&img[c..]) {
                *acc += f64::from(x);
            }
        }
        s
    }

    /// The coefficients of `BnBackDx` for the merged sums: the BatchNorm input gradient
    /// `dz = γ·inv/M · (M·dy - Σdy - x̂·Σdy·x̂)` with `x̂ = (z - mean)·inv` is
    /// `A·dy + B·(z - mean) + C` with `A = γ·inv`, `B = -γ·inv²·Σdy·x̂/M`, `C = -γ·inv·Σdy/M`
    /// (computed in `f64`); the fourth block is the mean.
    pub fn dx_coefficients(&self, s: &Stats, gamma: &[f32], bn: Option<&BnPlan>) -> Vec<f32> {
        let c = gamma.len();
        let inv = s.inv_std(bn.map_or(1e-5, |b| b.eps));
        let mut coef = vec![0.0f32; 4 * c];
        for ch in 0..c {
            let k = f64::from(gamma[ch]) * inv[ch];
            coef[ch] = k as f32;
            coef[c + ch] = (-k * inv[ch] * self.dgamma[ch] / s.count) as f32;
            coef[2 * c + ch] = (-k * self.dbeta[ch] / s.count) as f32;
            coef[3 * c + ch] = s.mean[ch] as f32;
        }
        coef
    }

    /// Sums packed per-thread partials in thread order.
    pub fn merge(parts: &[Vec<f64>], c: usize) -> BnSums {
        let mut s = BnSums {
            dbeta: vec![0.0; c],
            dgamma: vec![0.0; c],
        };
        for p in parts {
            for ch in 0..c {
                s.dbeta[ch] += p[ch];
                s.dgamma[ch] += p[c + ch];
            }
        }
        s
    }
}

/// The buffers of one layer the elementwise backward uses.
pub(crate) struct BwdBufs<'a> {
    pub z: &'a [f32],
    pub a: &'a [f32],
    pub d_out: &'a [f32],
    pub d_z: &'a mut [f32],
}

/// Cross-entropy of one row of logits against `label`; writes `(softmax - onehot) / batch`
/// into `d` and returns the row's loss and whether its argmax is the label.
pub(crate) fn softmax_xent(row: &[f32], label: usize, batch: usize, d: &mut [f32]) -> (f64, bool) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = row.iter().map(|&x| f64::from(x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    for (k, (dk, ek)) in d.iter_mut().zip(&e).enumerate() {
        let onehot = if k == label { 1.0 } else { 0.0 };
        *dk = ((ek / s - onehot) / batch as f64) as f32;
    }
    let argmax = row
        .iter()
        .enumerate()
        .fold(0, |best, (k, &x)| if x > row[best] { k } else { best });
    (
        s.ln() + f64::from(m) - f64::from(row[label]),
        argmax == label,
    )
}

/// Calls `f` with the activation's derivative (from its output) as a concrete closure, so
/// the per-element loops are monomorphized and vectorize.
fn with_act_grad<R>(act: Activation, f: impl PlaneFn<R>) -> R {
    match act {
        Activation::None => f.call(|_| 1.0),
        Activation::Relu => f.call(|a| if a > 0.0 { 1.0 } else { 0.0 }),
        Activation::Sigmoid => f.call(|a| a * (1.0 - a)),
        Activation::Tanh => f.call(|a| 1.0 - a * a),
    }
}

/// A computation generic over the activation derivative `g`.
trait PlaneFn<R> {
    fn call<G: Fn(f32) -> f32 + Copy>(self, g: G) -> R;
}

/// Lanes of the partial sums: enough independent chains for the vector units, and a fixed
/// order of additions, so results are deterministic.
const SUM_LANES: usize = 8;

/// `Σ x` of a slice in `SUM_LANES` f32 partial sums, combined in f64.
pub(crate) fn lane_sum(xs: &[f32]) -> f64 {
    let mut acc = [0.0f32; SUM_LANES];
    let chunks = xs.chunks_exact(SUM_LANES);
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    for c in chunks {
        for j in 0..SUM_LANES {
            acc[j] += c[j];
        }
    }
    acc.iter().map(|&x| f64::from(x)).sum::<f64>() + tail
}

/// Writes the pool's input gradient for one plane into `dz` (`h x w`) from the pooled
/// gradient `g` (`oh x ow`); `a` is the pool's input (for max pooling).
fn pool_backward(p: &Pool2d, [h, w]: [usize; 2], g: &[f32], a: &[f32], dz: &mut [f32]) {
    let (oh, ow) = p.out_hw(h, w);
    let [kh, kw] = p.kernel;
    if p.kind == PoolKind::Avg && p.stride == p.kernel && p.padding == [0, 0] {
        // Disjoint windows: every input pixel gets its window's gradient / window size, or
        // zero past the last whole window.
        let scale = 1.0 / (kh * kw) as f32;
        dz.iter_mut().for_each(|v| *v = 0.0);
        for py in 0..oh {
            let grow = &g[py * ow..(py + 1) * ow];
            for y in py * kh..(py + 1) * kh {
                let row = &mut dz[y * w..y * w + ow * kw];
                for (win, &gv) in row.chunks_exact_mut(kw).zip(grow) {
                    win.iter_mut().for_each(|v| *v = gv * scale);
                }
            }
        }
        return;
    }
    dz.iter_mut().for_each(|v| *v = 0.0);
    for py in 0..oh {
        for px in 0..ow {
            let gv = g[py * ow + px];
            let y0 = (py * p.stride[0]) as isize - p.padding[0] as isize;
            let x0 = (px * p.stride[1]) as isize - p.padding[1] as isize;
            let ys = y0.max(0) as usize..((y0 + kh as isize).min(h as isize)) as usize;
            let xs = x0.max(0) as usize..((x0 + kw as isize).min(w as isize)) as usize;
            match p.kind {
                PoolKind::Avg => {
                    let div = if p.count_include_pad {
                        kh * kw
                    } else {
                        ys.len() * xs.len()
                    };
                    let gv = gv / div as f32;
                    for y in ys {
                        for x in xs.clone() {
                            dz[y * w + x] += gv;
                        }
                    }
                }
                PoolKind::Max => {
                    let mut best = (ys.start * w + xs.start, f32::NEG_INFINITY);
                    for y in ys {
                        for x in xs.clone() {
                            if a[y * w + x] > best.1 {
                                best = (y * w + x, a[y * w + x]);
                            }
                        }
                    }
                    dz[best.0] += gv;
                }
            }
        }
    }
}

/// Pool backward, activation backward and (with `stats`) the BatchNorm sums, one channel
/// plane at a time: `d_z` receives `dy = pool_back(d_out) · act'(a)`. Returns this thread's
/// partial sums (empty without BatchNorm). Within a plane the sums run in `SUM_LANES` f32
/// lanes (a plane is at most a few thousand values of `dy` and `dy·x̂`, both O(|dy|)); planes
/// are added in f64.
pub(crate) fn backward_elementwise(
    l: &TrainLayer,
    b: BwdBufs<'_>,
    n: usize,
    stats: Option<&Stats>,
) -> BnSums {
    struct Run<'a, 'b> {
        l: &'a TrainLayer,
        b: BwdBufs<'b>,
        n: usize,
        stats: Option<&'a Stats>,
    }
    impl PlaneFn<BnSums> for Run<'_, '_> {
        fn call<G: Fn(f32) -> f32 + Copy>(self, grad: G) -> BnSums {
            let Run { l, b, n, stats } = self;
            let [h, w] = l.hw;
            let hw = h * w;
            let c = l.channels;
            let mut sums = BnSums {
                dbeta: vec![0.0; c],
                dgamma: vec![0.0; c],
            };
            let eps = l.bn.as_ref().map_or(1e-5, |bn| bn.eps);
            let inv = stats.map(|s| s.inv_std(eps));
            let pooled = l.pool.map(|p| p.out_hw(h, w));
            for img in 0..n {
                for ch in 0..c {
                    let plane = (img * c + ch) * hw;
                    let dz = &mut b.d_z[plane..plane + hw];
                    let a = &b.a[plane..plane + hw];
                    match (&l.pool, pooled) {
                        (Some(p), Some((oh, ow))) => {
                            let pplane = (img * c + ch) * oh * ow;
                            let g = &b.d_out[pplane..pplane + oh * ow];
                            pool_backward(p, [h, w], g, a, dz);
                        }
                        _ => dz.copy_from_slice(&b.d_out[plane..plane + hw]),
                    }
                    let (Some(s), Some(inv)) = (stats, &inv) else {
                        for (d, &av) in dz.iter_mut().zip(a) {
                            *d *= grad(av);
                        }
                        continue;
                    };
                    let (mean, inv) = (s.mean[ch] as f32, inv[ch] as f32);
                    let z = &b.z[plane..plane + hw];
                    let (mut s1, mut s2) = ([0.0f32; SUM_LANES], [0.0f32; SUM_LANES]);
                    let (mut t1, mut t2) = (0.0f64, 0.0f64);
                    let mut dzc = dz.chunks_exact_mut(SUM_LANES);
                    let mut ac = a.chunks_exact(SUM_LANES);
                    let mut zc = z.chunks_exact(SUM_LANES);
                    for ((d8, a8), z8) in (&mut dzc).zip(&mut ac).zip(&mut zc) {
                        for j in 0..SUM_LANES {
                            let d = d8[j] * grad(a8[j]);
                            d8[j] = d;
                            s1[j] += d;
                            s2[j] += d * ((z8[j] - mean) * inv);
                        }
                    }
                    let rest = dzc.into_remainder().iter_mut().zip(ac.remainder());
                    for ((d, &av), &zv) in rest.zip(zc.remainder()) {
                        *d *= grad(av);
                        t1 += f64::from(*d);
                        t2 += f64::from(*d * ((zv - mean) * inv));
                    }
                    let total = |s: [f32; SUM_LANES]| s.iter().map(|&x| f64::from(x)).sum::<f64>();
                    sums.dbeta[ch] += total(s1) + t1;
                    sums.dgamma[ch] += total(s2) + t2;
                }
            }
            sums
        }
    }
    with_act_grad(l.act, Run { l, b, n, stats })
}
