//! One training step, run by every thread over the units of the batch.
//!
//! The batch is cut into *units*: contiguous image ranges, each with its own activation,
//! gradient and partial-gradient buffers. How a batch is cut depends only on its size
//! ([`partition`]), never on the thread count, and every reduction over images adds the
//! units' partials in unit order; so the result of a step depends only on its inputs and
//! parameters, and one thread or eight give the same bits.
//!
//! The step is a fixed [`schedule`] of segments. A segment is the kernels that can run on a
//! unit without seeing the rest of the batch; it ends where a BatchNorm needs the whole
//! batch's statistics (forward) or sums (backward). Within a segment the threads claim
//! units from a shared counter, so a thread that runs faster (the two vCPUs of a VM drift
//! apart by tens of percent) takes more units instead of waiting for the other. At the end
//! of a segment each unit's partial has been published to the [`Exchange`]; every thread
//! waits at its barrier, then merges all partials in unit order and gets the same bits.
//!
//! Units start large and shrink (64, 64, 64, 32, 16, 8, 8 images for a batch of 256): the
//! first claims amortize the per-call work and the per-unit weight-gradient partials, and
//! the last ones are small, so the thread that finishes a segment first waits at most one
//! small unit for the other. A thread first claims, most recent first, the units it ran in
//! the previous segment, whose buffers are still in its cache; which thread runs a unit
//! changes nothing in the result.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bnc_compiler::codegen::KernelFn;
use bnc_compiler::lower::train::TrainPlan;

use super::exchange::Exchange;
use super::{LayerBufs, LayerKernels, LayerParams};
use crate::sgd::Sgd;
use crate::train_bwd::{BnSums, Stats, backward_elementwise, lane_sum};

/// The largest unit, in images.
const MAX_UNIT: usize = 64;
/// The smallest unit, and the multiple unit sizes are rounded to.
const MIN_UNIT: usize = 8;

/// The image ranges a batch of `b` images is cut into: each unit takes half of what is
/// left, rounded down to a multiple of [`MIN_UNIT`] and clamped to
/// [`MIN_UNIT`]..=[`MAX_UNIT`]; a rest smaller than [`MIN_UNIT`] joins the unit before it.
pub(super) fn partition(b: usize) -> Vec<(usize, usize)> {
    let mut units = Vec::new();
    let mut start = 0;
    while start < b {
        let rest = b - start;
        let mut size = (rest / 2).clamp(MIN_UNIT, MAX_UNIT) / MIN_UNIT * MIN_UNIT;
        if rest.saturating_sub(size) < MIN_UNIT {
            size = rest;
        }
        units.push((start, start + size));
        start += size;
    }
    units
}

/// A unit of the batch: its image range in the current step and its buffers.
#[derive(Debug, Default)]
pub(super) struct Unit {
    /// The first image and one past the last.
    pub(super) range: (usize, usize),
    /// How many images the buffers hold.
    pub(super) capacity: usize,
    /// Per layer.
    pub(super) layers: Vec<LayerBufs>,
    /// The summed cross-entropy of the unit's images.
    pub(super) loss: f64,
    /// The unit's images whose largest logit is at their label.
    pub(super) correct: usize,
}

impl Unit {
    fn images(&self) -> usize {
        self.range.1 - self.range.0
    }
}

/// What runs on one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// Layer `i`'s linear kernel (with its statistics epilogue under BatchNorm).
    Linear(usize),
    /// Layer `i`'s BatchNorm apply, activation and pool, or its activation and pool.
    Post(usize),
    /// The cross-entropy of the last layer's output and its gradient.
    Loss,
    /// Layer `i`'s pool and activation backward, with the bias or BatchNorm sums.
    Back(usize),
    /// Layer `i`'s BatchNorm input gradient.
    BnDx(usize),
    /// Layer `i`'s input gradient (the next layer down's output gradient).
    InputGrad(usize),
    /// Layer `i`'s weight gradient.
    WeightGrad(usize),
}

/// What ends a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// Merge layer `i`'s batch statistics.
    Stats(usize),
    /// Merge layer `i`'s BatchNorm backward sums.
    Sums(usize),
    /// The end of the step.
    End,
}

/// Kernels that run unit by unit, then the exchange that ends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    work: Vec<Work>,
    then: Sync,
}

/// The segments of a training step for `plan`: forward layer by layer, the loss, backward
/// from the last layer, cut at every BatchNorm.
pub(super) fn schedule(plan: &TrainPlan) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut work = Vec::new();
    let mut cut = |work: &mut Vec<Work>, then| {
        segments.push(Segment {
            work: std::mem::take(work),
            then,
        });
    };
    for (i, l) in plan.layers.iter().enumerate() {
        work.push(Work::Linear(i));
        if l.bn.is_some() {
            cut(&mut work, Sync::Stats(i));
        }
        if l.bn.is_some() || l.post.is_some() {
            work.push(Work::Post(i));
        }
    }
    work.push(Work::Loss);
    // A layer's weight gradient runs right after its input gradient: both read the layer's
    // `dz`, which the input gradient leaves in the cache. Deferring it past the next
    // exchange, as the step did before, made both models' steps 1.5-2% slower (alternated
    // in one process).
    for (i, l) in plan.layers.iter().enumerate().rev() {
        work.push(Work::Back(i));
        if l.bn.is_some() {
            cut(&mut work, Sync::Sums(i));
            work.push(Work::BnDx(i));
        }
        if i > 0 {
            work.push(Work::InputGrad(i));
        }
        work.push(Work::WeightGrad(i));
    }
    cut(&mut work, Sync::End);
    segments
}

/// What a thread knows after the exchanges: per layer, the merged batch statistics and
/// what the kernels need from them, and the merged backward sums.
#[derive(Debug, Default)]
pub(super) struct Merged {
    /// Batch statistics of each BatchNorm layer.
    pub(super) stats: Vec<Option<Stats>>,
    /// BatchNorm backward sums (dβ, dγ) of each BatchNorm layer.
    pub(super) sums: Vec<Option<BnSums>>,
    /// The apply kernel's per-channel scale and shift.
    scale_shift: Vec<(Vec<f32>, Vec<f32>)>,
    /// The backward kernel's per-channel mean and inverse standard deviation.
    mean_inv: Vec<(Vec<f32>, Vec<f32>)>,
    /// The BatchNorm `dx` kernel's coefficients.
    coef: Vec<Vec<f32>>,
}

/// Everything the threads of a step share.
pub(super) struct StepCtx<'a> {
    pub(super) plan: &'a TrainPlan,
    pub(super) fns: &'a [KernelFn],
    pub(super) kernels: &'a [LayerKernels],
    pub(super) layers: &'a [LayerParams],
    pub(super) sgd: &'a Sgd,
    pub(super) images: &'a [f32],
    pub(super) labels: &'a [i32],
    pub(super) batch: usize,
    pub(super) schedule: &'a [Segment],
    /// The units of this step, each locked by the thread that claimed it.
    pub(super) units: Vec<Mutex<&'a mut Unit>>,
    /// Per segment and unit, whether a thread has claimed it.
    pub(super) claimed: Vec<Vec<AtomicBool>>,
    pub(super) ex: Exchange,
    /// Whether BatchNorm layers keep `z` ([`super::Trainer::keep_z`]).
    pub(super) keep_z: bool,
    /// Nanoseconds the threads spent running work (summed over threads).
    pub(super) busy_ns: AtomicU64,
    /// Where phase times go when profiling (one thread).
    pub(super) prof: Option<&'a Mutex<Vec<(String, Duration)>>>,
}

/// Adds `time` to the phase `what` (a phase runs once per unit).
fn record(prof: &Mutex<Vec<(String, Duration)>>, what: String, time: Duration) {
    let mut phases = prof.lock().unwrap_or_else(|e| e.into_inner());
    match phases.iter_mut().find(|(name, _)| *name == what) {
        Some((_, t)) => *t += time,
        None => phases.push((what, time)),
    }
}

/// Calls kernel `f` on images `0..n` of the given buffers.
fn call(f: KernelFn, bufs: &[*mut f32], n: usize) {
    // SAFETY: the trainer owns the JIT module for the whole step; every pointer is a buffer
    // of the unit this thread has claimed (or a shared read-only weight, coefficient or
    // input slice) sized for at least `n` images in the layout of the kernel's
    // `buffer_lens`, and no other thread touches it during the call.
    unsafe { f.call(bufs, 0, n) }
}

impl<'a> StepCtx<'a> {
    /// Runs `f`, adding its time to `what()` when profiling.
    fn timed<R>(&self, what: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        if let Some(p) = self.prof {
            record(p, what(), start.elapsed());
        }
        r
    }

    /// Claims an unclaimed unit of segment `k`: first the units this thread ran in the
    /// previous segment, most recent first (their buffers are still in its cache), then
    /// any in unit order (the large ones first).
    fn claim(
        &self,
        k: usize,
        previous: &mut Vec<usize>,
    ) -> Option<(usize, MutexGuard<'_, &'a mut Unit>)> {
        let claimed = &self.claimed[k];
        let take = |u: &usize| !claimed[*u].swap(true, Ordering::Relaxed);
        let u = match std::iter::from_fn(|| previous.pop()).find(take) {
            Some(u) => u,
            None => (0..self.units.len()).find(take)?,
        };
        Some((u, self.units[u].lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// Runs the whole schedule on one thread, sharing the units with the others; returns
    /// what this thread merged (every thread merges the same).
    pub(super) fn run(&self) -> Merged {
        /// Poisons the exchange if the thread unwinds, so the others stop waiting for it.
        struct Unwinding<'e>(&'e Exchange);
        impl Drop for Unwinding<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.poison();
                }
            }
        }
        let _unwinding = Unwinding(&self.ex);
        let layers = self.plan.layers.len();
        let mut m = Merged {
            stats: vec![None; layers],
            sums: vec![None; layers],
            scale_shift: vec![Default::default(); layers],
            mean_inv: vec![Default::default(); layers],
            coef: vec![Vec::new(); layers],
        };
        let start = Instant::now();
        let mut waited = Duration::ZERO;
        let (mut previous, mut ran) = (Vec::new(), Vec::new());
        for (k, segment) in self.schedule.iter().enumerate() {
            while let Some((u, mut unit)) = self.claim(k, &mut previous) {
                for &w in &segment.work {
                    self.work(w, k, u, &mut unit, &m);
                }
                ran.push(u);
            }
            previous = std::mem::take(&mut ran);
            let mut gather = |k| {
                let t = Instant::now();
                let parts = self.ex.gather(k);
                waited += t.elapsed();
                parts
            };
            match segment.then {
                Sync::Stats(i) => self.merge_stats(i, &gather(k), &mut m),
                Sync::Sums(i) => self.merge_sums(i, &gather(k), &mut m),
                Sync::End => {}
            }
        }
        let busy = start.elapsed().saturating_sub(waited);
        let busy = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(busy, Ordering::Relaxed);
        m
    }

    fn merge_stats(&self, i: usize, parts: &[Vec<f64>], m: &mut Merged) {
        let (l, lp) = (&self.plan.layers[i], &self.layers[i]);
        let (Some(bn), Some((gamma, beta, _, _))) = (&l.bn, &lp.bn) else {
            return;
        };
        let s = Stats::merge(parts, l.channels);
        let (gamma, beta) = (
            &self.sgd.params[*gamma].value,
            &self.sgd.params[*beta].value,
        );
        m.scale_shift[i] = s.scale_shift(gamma, beta, bn.eps);
        m.mean_inv[i] = (
            s.mean.iter().map(|&v| v as f32).collect(),
            s.inv_std(bn.eps).iter().map(|&v| v as f32).collect(),
        );
        m.stats[i] = Some(s);
    }

    fn merge_sums(&self, i: usize, parts: &[Vec<f64>], m: &mut Merged) {
        let (l, lp) = (&self.plan.layers[i], &self.layers[i]);
        let (Some(s), Some((gamma, _, _, _))) = (&m.stats[i], &lp.bn) else {
            return;
        };
        let sums = BnSums::merge(parts, l.channels);
        m.coef[i] = sums.dx_coefficients(s, &self.sgd.params[*gamma].value, l.bn.as_ref());
        m.sums[i] = Some(sums);
    }

    /// Layer `i`'s `dz`: over `z` where the BatchNorm dx pass may write it there, else its
    /// own buffer.
    fn d_z(&self, i: usize, lb: &mut LayerBufs) -> *mut f32 {
        if super::dz_in_z(&self.plan.layers[i], self.keep_z) {
            lb.z.as_mut_ptr()
        } else {
            lb.d_z.as_mut_ptr()
        }
    }

    /// The input of layer `i` for `unit`: its images, or the previous layer's output.
    fn input(&self, i: usize, unit: &mut Unit) -> *mut f32 {
        if i == 0 {
            let per_image: usize = self.plan.input_dims.iter().product();
            let (n0, n1) = unit.range;
            return self.images[n0 * per_image..n1 * per_image]
                .as_ptr()
                .cast_mut();
        }
        let prev = &mut unit.layers[i - 1];
        if self.plan.layers[i - 1].pool.is_some() {
            prev.p.as_mut_ptr()
        } else {
            prev.a.as_mut_ptr()
        }
    }

    /// Runs `w` on unit `u` of segment `k`.
    fn work(&self, w: Work, k: usize, u: usize, unit: &mut Unit, m: &Merged) {
        let n = unit.images();
        match w {
            Work::Linear(i) => {
                let (l, lk, lp) = (&self.plan.layers[i], &self.kernels[i], &self.layers[i]);
                let x = self.input(i, unit);
                let lb = &mut unit.layers[i];
                let mut args = vec![x, lp.w_fwd.as_ptr().cast_mut()];
                if let Some(bi) = lp.bias {
                    args.push(self.sgd.params[bi].value.as_ptr().cast_mut());
                }
                if l.bn.is_some() {
                    args.extend([lb.z.as_mut_ptr(), lb.stats.as_mut_ptr()]);
                } else {
                    args.push(lb.a.as_mut_ptr());
                }
                self.timed(
                    || format!("fwd {}: linear", l.name),
                    || call(self.fns[lk.linear], &args, n),
                );
                if l.bn.is_some() {
                    let s = Stats::from_shifted(&lb.stats, l.channels, n, l.hw);
                    self.ex.publish(k, u, s.pack());
                }
            }
            Work::Post(i) => {
                let (l, lk) = (&self.plan.layers[i], &self.kernels[i]);
                let lb = &mut unit.layers[i];
                let k = lk.post.expect("a post step has a post kernel");
                if l.bn.is_some() {
                    let (scale, shift) = &m.scale_shift[i];
                    let mut a = vec![
                        lb.z.as_mut_ptr(),
                        scale.as_ptr().cast_mut(),
                        shift.as_ptr().cast_mut(),
                        lb.a.as_mut_ptr(),
                    ];
                    if l.pool.is_some() {
                        a.push(lb.p.as_mut_ptr());
                    }
                    self.timed(
                        || format!("fwd {}: bn+act+pool", l.name),
                        || call(self.fns[k], &a, n),
                    );
                } else {
                    self.timed(
                        || format!("fwd {}: post", l.name),
                        || call(self.fns[k], &[lb.a.as_mut_ptr(), lb.p.as_mut_ptr()], n),
                    );
                }
            }
            Work::Loss => self.loss(unit),
            Work::Back(i) => self.back(i, k, u, unit, m),
            Work::BnDx(i) => {
                let (l, lk) = (&self.plan.layers[i], &self.kernels[i]);
                let lb = &mut unit.layers[i];
                let kernel = lk.bn_dx.expect("a BatchNorm layer has a dx kernel");
                let d_z = self.d_z(i, lb);
                let coef = m.coef[i].as_ptr().cast_mut();
                // With a `PoolActBack` the kernel recomputes `dy` from `d_out` and `a`;
                // without, it reads the `dy` that `backward_elementwise` left in `d_z`.
                let args = if lk.back.is_some() {
                    vec![
                        lb.d_out.as_mut_ptr(),
                        lb.a.as_mut_ptr(),
                        lb.z.as_mut_ptr(),
                        coef,
                        d_z,
                    ]
                } else {
                    vec![d_z, lb.z.as_mut_ptr(), coef, d_z]
                };
                self.timed(
                    || format!("bwd {}: bn dx", l.name),
                    || call(self.fns[kernel], &args, n),
                );
            }
            Work::WeightGrad(i) => {
                let (l, lk) = (&self.plan.layers[i], &self.kernels[i]);
                let x = self.input(i, unit);
                let lb = &mut unit.layers[i];
                let args = [x, self.d_z(i, lb), lb.gw.as_mut_ptr()];
                self.timed(
                    || format!("bwd {}: weight gradient", l.name),
                    || call(self.fns[lk.grad_w], &args, n),
                );
            }
            Work::InputGrad(i) => {
                let (l, lk, lp) = (&self.plan.layers[i], &self.kernels[i], &self.layers[i]);
                let Some(kernel) = lk.grad_x else {
                    return;
                };
                let (before, rest) = unit.layers.split_at_mut(i);
                let args = [
                    self.d_z(i, &mut rest[0]),
                    lp.w_bwd.as_ptr().cast_mut(),
                    before[i - 1].d_out.as_mut_ptr(),
                ];
                self.timed(
                    || format!("bwd {}: input gradient", l.name),
                    || call(self.fns[kernel], &args, n),
                );
            }
        }
    }

    /// The loss of `unit`'s images and its gradient, the mean over the whole batch.
    fn loss(&self, unit: &mut Unit) {
        let last = self.plan.layers.len() - 1;
        let classes = self.plan.classes;
        let (n0, n) = (unit.range.0, unit.images());
        let lb = &mut unit.layers[last];
        let logits = if self.plan.layers[last].pool.is_some() {
            &lb.p
        } else {
            &lb.a
        };
        let (mut loss, mut correct) = (0.0, 0);
        for img in 0..n {
            let row = &logits[img * classes..(img + 1) * classes];
            let label = self.labels[n0 + img] as usize;
            let (l, c) = crate::train_bwd::softmax_xent(
                row,
                label,
                self.batch,
                &mut lb.d_out[img * classes..],
            );
            loss += l;
            correct += usize::from(c);
        }
        unit.loss = loss;
        unit.correct = correct;
    }

    /// Layer `i`'s pool and activation backward on `unit`. With BatchNorm it publishes the
    /// unit's `Σdy` and `Σdy·x̂` (and leaves `d_z` to the dx pass, except in the plain-Rust
    /// backward); without, it writes `d_z`, and `Σdy` is the unit's bias gradient.
    fn back(&self, i: usize, k: usize, u: usize, unit: &mut Unit, m: &Merged) {
        let n = unit.images();
        let (l, lk, lp) = (&self.plan.layers[i], &self.kernels[i], &self.layers[i]);
        let lb = &mut unit.layers[i];
        let elementwise = || format!("bwd {}: pool+act backward, bn sums", l.name);
        let partial = match lk.back {
            Some(kernel) => self.timed(elementwise, || {
                let mut args = vec![lb.d_out.as_mut_ptr(), lb.a.as_mut_ptr()];
                if l.bn.is_some() {
                    // Only the sums: `BnBackDx` recomputes `dy` once they are merged.
                    let (mean, inv) = &m.mean_inv[i];
                    args.extend([
                        lb.z.as_mut_ptr(),
                        mean.as_ptr().cast_mut(),
                        inv.as_ptr().cast_mut(),
                    ]);
                } else {
                    args.push(lb.d_z.as_mut_ptr());
                }
                args.push(lb.sums.as_mut_ptr());
                call(self.fns[kernel], &args, n);
                BnSums::from_images(&lb.sums, l.channels, n, l.bn.is_some())
            }),
            None => self.timed(elementwise, || {
                backward_elementwise(l, super::lb_view(lb), n, m.stats[i].as_ref())
            }),
        };
        lb.gb.iter_mut().for_each(|v| *v = 0.0);
        if l.bn.is_some() {
            self.ex.publish(k, u, partial.pack());
        } else if lp.bias.is_some() {
            if lk.back.is_some() {
                for (g, &s) in lb.gb.iter_mut().zip(&partial.dbeta) {
                    *g = s as f32;
                }
            } else {
                let hw = l.hw[0] * l.hw[1];
                self.timed(
                    || format!("bwd {}: bias gradient", l.name),
                    || {
                        for img in 0..n {
                            for c in 0..l.channels {
                                let base = (img * l.channels + c) * hw;
                                lb.gb[c] += lane_sum(&lb.d_z[base..base + hw]) as f32;
                            }
                        }
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule_of(source: &str) -> Vec<String> {
        let plan = super::super::train_plan(&bnc_compiler::text::parse(source).unwrap()).unwrap();
        schedule(&plan)
            .iter()
            .map(|s| format!("{:?} -> {:?}", s.work, s.then))
            .collect()
    }

    /// LeNet-BN's step: cut at every BatchNorm exchange, each layer's weight gradient
    /// right after its input gradient, which leaves `dz` in the cache for it.
    #[test]
    fn lenet_bn_schedule() {
        assert_eq!(
            schedule_of(include_str!("../../../models/lenet_bn.ir")),
            [
                "[Linear(0)] -> Stats(0)",
                "[Post(0), Linear(1)] -> Stats(1)",
                "[Post(1), Linear(2)] -> Stats(2)",
                "[Post(2), Linear(3)] -> Stats(3)",
                "[Post(3), Linear(4), Loss, Back(4), InputGrad(4), WeightGrad(4), Back(3)] -> Sums(3)",
                "[BnDx(3), InputGrad(3), WeightGrad(3), Back(2)] -> Sums(2)",
                "[BnDx(2), InputGrad(2), WeightGrad(2), Back(1)] -> Sums(1)",
                "[BnDx(1), InputGrad(1), WeightGrad(1), Back(0)] -> Sums(0)",
                "[BnDx(0), WeightGrad(0)] -> End",
            ]
        );
    }

    /// Plain LeNet's step is one segment, with the same order per layer.
    #[test]
    fn lenet_schedule() {
        assert_eq!(
            schedule_of(include_str!("../../../models/lenet.ir")),
            [
                "[Linear(0), Post(0), Linear(1), Post(1), Linear(2), Linear(3), Linear(4), Loss, \
                 Back(4), InputGrad(4), WeightGrad(4), Back(3), InputGrad(3), WeightGrad(3), \
                 Back(2), InputGrad(2), WeightGrad(2), Back(1), InputGrad(1), WeightGrad(1), \
                 Back(0), WeightGrad(0)] -> End",
            ]
        );
    }

    /// Units cover the batch in order without gaps, shrink from 64 images to 8, and a
    /// batch too small to cut is one unit.
    #[test]
    fn partitions_cover_the_batch_and_shrink() {
        let sizes = |b| partition(b).iter().map(|&(s, e)| e - s).collect::<Vec<_>>();
        assert_eq!(sizes(256), [64, 64, 64, 32, 16, 8, 8]);
        assert_eq!(sizes(96), [48, 24, 8, 8, 8]);
        assert_eq!(sizes(31), [8, 8, 15]);
        assert_eq!(sizes(6), [6]);
        assert_eq!(sizes(1), [1]);
        assert!(partition(0).is_empty());
        for b in 1..600 {
            let p = partition(b);
            assert_eq!(p[0].0, 0);
            assert_eq!(p.last().map(|r| r.1), Some(b));
            assert!(p.windows(2).all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1));
            assert!(p.iter().all(|&(s, e)| e - s <= MAX_UNIT + MIN_UNIT));
        }
    }
}
