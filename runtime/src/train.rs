//! JIT training: a [`Trainer`] compiles a model's training plan (`lower::train`) into native
//! kernels and runs SGD steps on batches split across threads.
//!
//! Each step runs on the caller's thread and on worker threads kept between steps (a rayon
//! pool, used only as a set of threads: one job per worker). The batch is cut into units by
//! its size alone; the threads claim units as they go, and where a reduction must see the
//! whole batch (BatchNorm statistics, the BatchNorm backward sums) every unit's partial is
//! published, the threads meet at a barrier, and each merges all partials in unit order.
//! Weight gradients are per-unit partials summed in unit order once the threads are done.
//! So the result depends only on the inputs and the parameters, not on the thread count
//! (`step` has the details).

mod arena;
mod exchange;
mod feed;
mod footprint;
mod numerics;
mod step;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use thiserror::Error;

use bnc_compiler::Tensor;
use bnc_compiler::codegen::{
    CodegenError, JitKernels, KernelFn, KernelSpec, pack_weight, pool_act_back_sums,
};
use bnc_compiler::ir::{Graph, NodeKind, Op};
use bnc_compiler::lower::LowerError;
use bnc_compiler::lower::train::{TrainLayer, TrainPlan, plan};
use bnc_compiler::passes::{Mode, PassError, PassManager};

use crate::sgd::{Sgd, SgdParam};
use crate::weights::{ParamStore, WeightsError};
use crate::workers::workers;
use arena::{Arena, Span};
use exchange::Exchange;
pub use feed::Feed;
use step::{Merged, Segment, StepCtx, Unit};

pub use footprint::{Footprint, MAX_TRAIN_BYTES, footprint};
pub use numerics::{NonFinite, Site};

/// How to train.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Learning rate.
    pub lr: f32,
    /// SGD momentum (0 for plain SGD).
    pub momentum: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Threads to run each step on (the result does not depend on it).
    pub threads: usize,
    /// The largest batch a step accepts (buffers are sized for it).
    pub batch: usize,
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The mean cross-entropy of the batch, before the update.
    pub loss: f32,
    /// Images whose largest logit is at their label.
    pub correct: usize,
}

/// Why training could not start or a step was refused.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The train pipeline rejected the model.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The model has a shape the training backend does not handle.
    #[error(transparent)]
    Lower(#[from] LowerError),
    /// Code generation failed.
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// A parameter is missing or has the wrong shape.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The batch is empty or larger than the configured batch.
    #[error("batch of {got} images, expected 1 to {max}")]
    BatchSize {
        /// Images given.
        got: usize,
        /// The configured batch.
        max: usize,
    },
    /// The image buffer does not hold a whole number of images matching the labels.
    #[error("{images} floats of images for {labels} labels; expected {per_image} per image")]
    Images {
        /// Floats given.
        images: usize,
        /// Labels given.
        labels: usize,
        /// Floats per image.
        per_image: usize,
    },
    /// Training the model at the configured batch would need more memory than
    /// [`MAX_TRAIN_BYTES`]; refused before anything is allocated.
    #[error(
        "training needs {} for a batch of {batch} ({} of parameters \
         and optimizer state, {} of activations and gradients), more than the limit of {}: \
         the model is too large",
        footprint::gib(needed.total()),
        footprint::gib(needed.params),
        footprint::gib(needed.buffers),
        footprint::gib(*limit)
    )]
    TooLarge {
        /// What training would need.
        needed: Footprint,
        /// The configured batch.
        batch: usize,
        /// The limit in bytes.
        limit: u64,
    },
    /// A step produced a NaN or an infinity (found by [`Trainer::check_numerics`]).
    #[error(transparent)]
    NonFinite(#[from] NonFinite),
    /// A label is outside `0..classes`.
    #[error("label {label} at index {index} is out of range for {classes} classes")]
    Label {
        /// The label.
        label: i32,
        /// Its position.
        index: usize,
        /// The number of classes.
        classes: usize,
    },
}

/// Kernel indices of one layer in the compiled module.
#[derive(Clone, Copy, Debug)]
struct LayerKernels {
    linear: usize,
    post: Option<usize>,
    back: Option<usize>,
    bn_dx: Option<usize>,
    grad_w: usize,
    grad_x: Option<usize>,
}

/// Per-layer parameter indices into the optimizer's list and prepared weights.
#[derive(Debug)]
struct LayerParams {
    weight: usize,
    bias: Option<usize>,
    /// The bias `redundant-bias` moved from the linear op to the BatchNorm's `input_bias`:
    /// still a parameter (saved, loaded, subject to weight decay, as in PyTorch) with a
    /// gradient of exactly zero, and added to the batch mean in the running-mean update,
    /// which is the one place it shows.
    input_bias: Option<usize>,
    /// gamma, beta, running mean, running variance.
    bn: Option<(usize, usize, Vec<f32>, Vec<f32>)>,
    /// The weight in the forward kernel's layout.
    w_fwd: Vec<f32>,
    /// The weight in the input-gradient kernel's layout.
    w_bwd: Vec<f32>,
}

/// One unit's buffers for one layer, sized for the unit's capacity in images. The
/// activations and gradients are spans of the trainer's [`Arena`].
#[derive(Debug, Default)]
struct LayerBufs {
    /// Linear output before BatchNorm (BatchNorm layers only).
    z: Span,
    /// Activation output (before the pool).
    a: Span,
    /// Pooled output (pooled layers only).
    p: Span,
    /// Gradient with respect to the layer output.
    d_out: Span,
    /// Gradient with respect to the linear output.
    d_z: Span,
    /// Statistics written by the linear kernel.
    stats: Vec<f32>,
    /// Per-image sums written by the pool/activation backward kernel.
    sums: Vec<f32>,
    /// Partial weight gradient of the unit.
    gw: Vec<f32>,
    /// Partial bias gradient of the unit.
    gb: Vec<f32>,
}

/// A model compiled for training, with its parameters and optimizer state.
///
/// ```
/// use bnc_compiler::{interp::init_params, passes::{Mode, PassManager}, text::parse};
/// use bnc_runtime::train::{TrainConfig, Trainer};
/// use bnc_runtime::weights::ParamStore;
///
/// let src = "input x: f32[N,1,4,4]\nf = flatten(x)\nfc = dense(f, units=8)\n\
///            bn = batch_norm(fc)\ny = relu(bn)\nout = dense(y, units=3)\noutput out\n";
/// let model = parse(src).unwrap();
/// // Fresh weights need the parameter shapes, which shape inference gives.
/// let mut typed = model.clone();
/// PassManager::new(&["infer-shapes"])?.run(&mut typed, Mode::Train)?;
/// let params: ParamStore = init_params(&typed, 0).into_iter().collect();
/// let cfg = TrainConfig { lr: 0.5, momentum: 0.0, weight_decay: 0.0, threads: 2, batch: 6 };
/// let mut trainer = Trainer::new(&model, params, &cfg)?;
/// let images: Vec<f32> = (0..6 * 16).map(|i| (i % 7) as f32 / 7.0).collect();
/// let labels = [0, 1, 2, 0, 1, 2];
/// let first = trainer.step(&images, &labels)?.loss;
/// for _ in 0..20 {
///     trainer.step(&images, &labels)?;
/// }
/// assert!(trainer.step(&images, &labels)?.loss < first);
/// // The learned weights and running statistics, with PyTorch's names and layouts.
/// assert_eq!(trainer.params().get("bn.running_var").unwrap().shape(), &[8]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Trainer {
    plan: TrainPlan,
    jit: JitKernels,
    kernels: Vec<LayerKernels>,
    layers: Vec<LayerParams>,
    sgd: Sgd,
    cfg: TrainConfig,
    /// The segments of a step.
    schedule: Vec<Segment>,
    /// The units' buffers; the first `used` were the last step's.
    units: Vec<Unit>,
    used: usize,
    /// The memory of the units' activations and gradients.
    arena: Arena,
    /// Whether that memory is advised as huge pages ([`Trainer::huge_pages`]).
    huge_pages: bool,
    /// Thread time the last step's threads spent not running work.
    last_idle: Duration,
    /// Whether BatchNorm layers keep `z` through the step ([`Trainer::keep_z`]).
    keep_z: bool,
    /// Whether the last step wrote `dz` over `z` in the layers where it may.
    z_overwritten: bool,
    /// The worker threads that run a step beside the caller's, started by the first step
    /// on more than one thread and kept.
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("layers", &self.plan.layers.len())
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// `w'[ci, co, ky, kx] = w[co, ci, kh-1-ky, kw-1-kx]`: the weight of the input-gradient conv.
fn flip_conv(w: &[f32], shape: &[usize]) -> Vec<f32> {
    let (co_n, ci_n, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
    let mut out = vec![0.0; w.len()];
    for co in 0..co_n {
        for ci in 0..ci_n {
            for ky in 0..kh {
                for kx in 0..kw {
                    out[((ci * co_n + co) * kh + kh - 1 - ky) * kw + kw - 1 - kx] =
                        w[((co * ci_n + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
    out
}

/// Refuses a layer whose weight, bias or BatchNorm parameter is a computed value (a
/// hand-folded `channel_scale(w, s)`, say) rather than a parameter: the trainer updates
/// parameters in place, so it cannot train through such an expression.
fn computed_params(g: &Graph, plan: &TrainPlan) -> Result<(), LowerError> {
    for l in &plan.layers {
        let bn =
            l.bn.iter()
                .flat_map(|b| [&b.gamma, &b.beta, &b.running_mean, &b.running_var]);
        let input_bias = l.bn.iter().filter_map(|b| b.input_bias.as_ref());
        let mut names = std::iter::once(&l.weight)
            .chain(&l.bias)
            .chain(bn)
            .chain(input_bias);
        let is_param = |name: &String| {
            g.lookup(name)
                .is_some_and(|id| matches!(g.node(id).kind, NodeKind::Param))
        };
        if names.all(is_param) {
            continue;
        }
        let node = l.name.split('+').next().unwrap_or(&l.name);
        let op = g.lookup(node).and_then(|id| g.node(id).op());
        return Err(LowerError::Unsupported {
            node: node.to_string(),
            op: op.map_or("layer", Op::name),
            hint: "training needs its weight, bias and BatchNorm statistics to be parameters, not computed values",
        });
    }
    Ok(())
}

impl Trainer {
    /// Compiles `model` (as parsed) for training with `params` (every parameter, running
    /// statistics included, in PyTorch layout).
    pub fn new(
        model: &Graph,
        params: ParamStore,
        cfg: &TrainConfig,
    ) -> Result<Trainer, TrainError> {
        let plan = train_plan(model)?;
        footprint::check(&plan, cfg)?;
        let specs = plan.specs();
        let jit = JitKernels::compile(&specs)?;
        let mut next = 0;
        let mut take = || {
            next += 1;
            next - 1
        };
        let mut kernels = Vec::new();
        let mut sgd_params = Vec::new();
        let mut layers = Vec::new();
        for l in &plan.layers {
            kernels.push(LayerKernels {
                linear: take(),
                post: l.post.map(|_| take()),
                back: l.back.map(|_| take()),
                bn_dx: l.bn_dx.map(|_| take()),
                grad_w: take(),
                grad_x: l.grad_x.map(|_| take()),
            });
            let mut add = |name: &str, shape: &[usize]| -> Result<usize, TrainError> {
                let t = params.expect(name, shape)?;
                sgd_params.push(SgdParam::new(name, shape, t.as_f32().unwrap_or(&[])));
                Ok(sgd_params.len() - 1)
            };
            let c = [l.channels];
            let weight = add(&l.weight, &l.weight_shape)?;
            let bias = l.bias.as_deref().map(|b| add(b, &c)).transpose()?;
            let input_bias = l.bn.as_ref().and_then(|b| b.input_bias.as_deref());
            let input_bias = input_bias.map(|b| add(b, &c)).transpose()?;
            let bn = match &l.bn {
                Some(bn) => {
                    let gamma = add(&bn.gamma, &c)?;
                    let beta = add(&bn.beta, &c)?;
                    let rm = params.expect_f32(&bn.running_mean, &c)?.to_vec();
                    let rv = params.expect_f32(&bn.running_var, &c)?.to_vec();
                    Some((gamma, beta, rm, rv))
                }
                None => None,
            };
            layers.push(LayerParams {
                weight,
                bias,
                input_bias,
                bn,
                w_fwd: Vec::new(),
                w_bwd: Vec::new(),
            });
        }
        let mut t = Trainer {
            schedule: step::schedule(&plan),
            plan,
            jit,
            kernels,
            layers,
            sgd: Sgd::new(sgd_params),
            cfg: cfg.clone(),
            units: Vec::new(),
            used: 0,
            arena: Arena::empty(),
            huge_pages: true,
            last_idle: Duration::ZERO,
            keep_z: false,
            z_overwritten: false,
            pool: None,
        };
        t.prepare_weights();
        Ok(t)
    }

    /// Lays the current weights out as the kernels want them.
    fn prepare_weights(&mut self) {
        for (lp, l) in self.layers.iter_mut().zip(&self.plan.layers) {
            let w = &self.sgd.params[lp.weight].value;
            lp.w_fwd = pack_weight(&l.linear, w);
            lp.w_bwd = match l.linear {
                KernelSpec::Conv2d { .. } | KernelSpec::TrainConv2d { .. } => {
                    flip_conv(w, &l.weight_shape)
                }
                _ => w.clone(),
            };
        }
    }

    /// Cuts a batch of `b` images into units. When a unit's buffers are too small, every
    /// unit's are carved anew from one fresh [`Arena`], each unit sized for the larger of
    /// its old capacity and its new range (so capacities never shrink, and the short last
    /// batch of an epoch allocates nothing).
    fn alloc(&mut self, b: usize) {
        let ranges = step::partition(b);
        if self.units.len() < ranges.len() {
            self.units.resize_with(ranges.len(), Unit::default);
        }
        for (unit, &(n0, n1)) in self.units.iter_mut().zip(&ranges) {
            unit.range = (n0, n1);
        }
        self.used = ranges.len();
        if self.units[..self.used]
            .iter()
            .all(|u| u.capacity >= u.range.1 - u.range.0)
        {
            return;
        }
        let keep_z = self.keep_z;
        // Per layer, the floats per image of `z`, `a`, `p`, `d_out` and `d_z`.
        let per_image: Vec<[usize; 5]> = self
            .plan
            .layers
            .iter()
            .map(|l| {
                let bn = if l.bn.is_some() { l.z_len } else { 0 };
                let pooled = if l.pool.is_some() { l.out_len } else { 0 };
                // A BatchNorm layer with a `PoolActBack` writes `dz` over `z`.
                let d_z = if dz_in_z(l, keep_z) { 0 } else { l.z_len };
                [bn, l.z_len, pooled, l.out_len, d_z]
            })
            .collect();
        let images: Vec<usize> = self
            .units
            .iter()
            .map(|u| u.capacity.max(u.range.1 - u.range.0))
            .collect();
        let lens = || {
            images
                .iter()
                .flat_map(|&n| per_image.iter().flatten().map(move |&f| n * f))
        };
        let mut arena = Arena::new(Arena::floats(lens()), self.huge_pages);
        for (unit, &n) in self.units.iter_mut().zip(&images) {
            unit.layers = self
                .plan
                .layers
                .iter()
                .zip(&per_image)
                .map(|(l, &[z, a, p, d_out, d_z])| LayerBufs {
                    z: arena.take(n * z),
                    a: arena.take(n * a),
                    p: arena.take(n * p),
                    d_out: arena.take(n * d_out),
                    d_z: arena.take(n * d_z),
                    stats: vec![0.0; 3 * l.channels],
                    sums: vec![0.0; n * pool_act_back_sums(l.channels, l.bn.is_some())],
                    gw: vec![0.0; l.weight_shape.iter().product()],
                    gb: vec![0.0; l.channels],
                })
                .collect();
            unit.capacity = n;
        }
        // Every span of the old arena was replaced above, so it can go.
        self.arena = arena;
    }

    /// One SGD step on a batch: `images` is `f32[b, ...input dims]` flattened, `labels` has
    /// `b <= cfg.batch` entries in `0..classes`.
    ///
    /// Everything is checked before any native code runs. The element types are fixed by
    /// the signature (`f32` images, `i32` labels), and plain slices are contiguous, so what
    /// can be wrong is checked here: an empty batch or one larger than `cfg.batch`
    /// ([`TrainError::BatchSize`]), an image buffer that does not hold exactly one image per
    /// label ([`TrainError::Images`]), and a label outside `0..classes`
    /// ([`TrainError::Label`]).
    pub fn step(&mut self, images: &[f32], labels: &[i32]) -> Result<StepStats, TrainError> {
        self.step_with(images, labels, None, None)
    }

    /// Runs one SGD step like [`Trainer::step`], and `meanwhile` (for instance, gathering
    /// the next batch) on a worker thread while the caller's thread applies the update, the
    /// part of a step that runs on one thread; on one thread, `meanwhile` runs after the
    /// step. Nothing runs it if the batch is refused. The step's results do not depend on
    /// it: it must not touch what the step reads (`images`, `labels`), which the borrows
    /// already forbid.
    pub fn step_and(
        &mut self,
        images: &[f32],
        labels: &[i32],
        meanwhile: &mut (dyn FnMut() + Send),
    ) -> Result<StepStats, TrainError> {
        self.step_with(images, labels, None, Some(meanwhile))
    }

    /// Runs one SGD step like [`Trainer::step`] but on one thread, timing each phase: per
    /// layer the forward kernels, the elementwise backward, the BatchNorm input gradient, the
    /// weight and input gradient kernels, then the loss and the update. For `bnc bench`.
    pub fn profile_step(
        &mut self,
        images: &[f32],
        labels: &[i32],
    ) -> Result<Vec<(String, Duration)>, TrainError> {
        let threads = self.cfg.threads;
        self.cfg.threads = 1;
        let prof = Mutex::new(Vec::new());
        let result = self.step_with(images, labels, Some(&prof), None);
        self.cfg.threads = threads;
        result?;
        Ok(prof.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    fn step_with(
        &mut self,
        images: &[f32],
        labels: &[i32],
        prof: Option<&Mutex<Vec<(String, Duration)>>>,
        meanwhile: Option<&mut (dyn FnMut() + Send)>,
    ) -> Result<StepStats, TrainError> {
        let b = labels.len();
        let per_image: usize = self.plan.input_dims.iter().product();
        if b == 0 || b > self.cfg.batch {
            return Err(TrainError::BatchSize {
                got: b,
                max: self.cfg.batch,
            });
        }
        if images.len() != b * per_image {
            return Err(TrainError::Images {
                images: images.len(),
                labels: b,
                per_image,
            });
        }
        let classes = self.plan.classes;
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::try_from(l).map_or(true, |l| l >= classes))
        {
            return Err(TrainError::Label {
                label,
                index,
                classes,
            });
        }
        self.alloc(b);
        let units = self.used;
        let threads = self.cfg.threads.max(1).min(units);
        let pool = workers(&mut self.pool, threads - 1, "bnc-train");
        // Without workers (one thread, or none could be started) the caller runs it all.
        let threads = if pool.is_some() { threads } else { 1 };
        let fns: Vec<KernelFn> = (0..self.jit.len()).map(|i| self.jit.kernel(i)).collect();
        let ctx = StepCtx {
            plan: &self.plan,
            fns: &fns,
            kernels: &self.kernels,
            layers: &self.layers,
            sgd: &self.sgd,
            images,
            labels,
            batch: b,
            schedule: &self.schedule,
            units: self.units[..units].iter_mut().map(Mutex::new).collect(),
            claimed: self
                .schedule
                .iter()
                .map(|_| (0..units).map(|_| AtomicBool::new(false)).collect())
                .collect(),
            ex: Exchange::new(threads, units),
            keep_z: self.keep_z,
            busy_ns: AtomicU64::new(0),
            prof,
        };
        let start = Instant::now();
        let merged = match pool {
            Some(pool) => pool.in_place_scope(|s| {
                let ctx = &ctx;
                for _ in 1..threads {
                    s.spawn(move |_| {
                        ctx.run();
                    });
                }
                ctx.run()
            }),
            None => ctx.run(),
        };
        let all = start.elapsed() * u32::try_from(threads).unwrap_or(u32::MAX);
        self.last_idle = all.saturating_sub(Duration::from_nanos(ctx.busy_ns.into_inner()));
        self.z_overwritten = !self.keep_z;
        drop(ctx.units);
        let done = &self.units[..units];
        let loss: f64 = done.iter().map(|u| u.loss).sum();
        let correct = done.iter().map(|u| u.correct).sum();
        let start = Instant::now();
        // The update runs on this thread; a worker, idle until the next step, takes
        // `meanwhile`. The pool is moved out for the scope so that `self` can be borrowed.
        match (meanwhile, self.pool.take()) {
            (Some(meanwhile), Some(pool)) if threads > 1 => {
                pool.in_place_scope(|s| {
                    s.spawn(move |_| meanwhile());
                    self.finish_step(&merged);
                });
                self.pool = Some(pool);
            }
            (meanwhile, pool) => {
                self.pool = pool;
                self.finish_step(&merged);
                if let Some(meanwhile) = meanwhile {
                    meanwhile();
                }
            }
        }
        if let Some(p) = prof {
            p.lock().unwrap_or_else(|e| e.into_inner()).push((
                "update (merge, running stats, SGD, repack)".into(),
                start.elapsed(),
            ));
        }
        Ok(StepStats {
            loss: (loss / b as f64) as f32,
            correct,
        })
    }

    /// Merges weight gradients in unit order, updates running statistics, applies SGD.
    fn finish_step(&mut self, merged: &Merged) {
        let units = &self.units[..self.used];
        for (i, (lp, l)) in self.layers.iter_mut().zip(&self.plan.layers).enumerate() {
            let sum = |f: &dyn Fn(&LayerBufs) -> &Vec<f32>| -> Vec<f32> {
                let mut acc = f(&units[0].layers[i]).clone();
                for unit in &units[1..] {
                    for (a, x) in acc.iter_mut().zip(f(&unit.layers[i])) {
                        *a += x;
                    }
                }
                acc
            };
            self.sgd.params[lp.weight].grad = sum(&|b| &b.gw);
            if let Some(bi) = lp.bias {
                self.sgd.params[bi].grad = sum(&|b| &b.gb);
            }
            if let (Some((gamma, beta, rm, rv)), Some(bn), Some(stats), Some(sums)) =
                (&mut lp.bn, &l.bn, &merged.stats[i], &merged.sums[i])
            {
                self.sgd.params[*gamma].grad = sums.dgamma.iter().map(|&v| v as f32).collect();
                self.sgd.params[*beta].grad = sums.dbeta.iter().map(|&v| v as f32).collect();
                let m = bn.momentum;
                let n = stats.count;
                let unbias = if bn.unbiased && n > 1.0 {
                    n / (n - 1.0)
                } else {
                    1.0
                };
                // The batch mean of `z + b`, as the model (with its bias) defines it.
                let bias = lp.input_bias.map(|b| &self.sgd.params[b].value);
                for c in 0..l.channels {
                    let mean = stats.mean[c] + bias.map_or(0.0, |b| f64::from(b[c]));
                    rm[c] = (m * f64::from(rm[c]) + (1.0 - m) * mean) as f32;
                    rv[c] = (m * f64::from(rv[c]) + (1.0 - m) * stats.var[c] * unbias) as f32;
                }
            }
        }
        self.sgd
            .step(self.cfg.lr, self.cfg.momentum, self.cfg.weight_decay);
        self.prepare_weights();
    }

    /// The parameters (weights and running statistics) as PyTorch-layout tensors.
    pub fn params(&self) -> ParamStore {
        let mut store = ParamStore::new();
        for p in &self.sgd.params {
            store.insert(p.name.clone(), tensor(&p.shape, p.value.clone()));
        }
        for (lp, l) in self.layers.iter().zip(&self.plan.layers) {
            if let (Some((_, _, rm, rv)), Some(bn)) = (&lp.bn, &l.bn) {
                store.insert(bn.running_mean.clone(), tensor(&[l.channels], rm.clone()));
                store.insert(bn.running_var.clone(), tensor(&[l.channels], rv.clone()));
            }
        }
        store
    }

    /// The last step's gradients of the trainable parameters, by parameter name.
    pub fn gradients(&self) -> ParamStore {
        let mut store = ParamStore::new();
        for p in &self.sgd.params {
            store.insert(p.name.clone(), tensor(&p.shape, p.grad.clone()));
        }
        store
    }

    /// The optimizer's momentum buffers, by parameter name (zero until a step with
    /// momentum), for checkpoints.
    pub fn velocities(&self) -> ParamStore {
        let mut store = ParamStore::new();
        for p in &self.sgd.params {
            store.insert(p.name.clone(), tensor(&p.shape, p.velocity.clone()));
        }
        store
    }

    /// Restores the momentum buffers saved by [`Trainer::velocities`]; every trainable
    /// parameter must have one of its shape. Nothing changes on error.
    pub fn set_velocities(&mut self, velocities: &ParamStore) -> Result<(), TrainError> {
        let restored = self
            .sgd
            .params
            .iter()
            .map(|p| Ok(velocities.expect_f32(&p.name, &p.shape)?.to_vec()))
            .collect::<Result<Vec<_>, TrainError>>()?;
        for (p, v) in self.sgd.params.iter_mut().zip(restored) {
            p.velocity = v;
        }
        Ok(())
    }

    /// The thread time the last step's threads spent without work, summed over threads:
    /// starting, waiting at the BatchNorm exchanges for the others to finish a segment, and
    /// waiting at the end for the last one. Near zero on one thread, up to the step's time
    /// times the threads less one; `bnc bench --mode train` reports it.
    pub fn last_idle(&self) -> Duration {
        self.last_idle
    }

    /// Whether BatchNorm layers keep `z`, their linear output, until the step ends.
    ///
    /// By default the BatchNorm input-gradient pass writes `dz` over `z`, which it is the
    /// last to read: one buffer less per layer, and a pass that reads and writes the same
    /// memory instead of filling a fresh buffer. [`Trainer::check_numerics`] then cannot see
    /// `z` and finds a non-finite `z` in the activation it feeds. With `keep` the pass
    /// writes `dz` to its own buffer (the step is a little slower and needs that buffer) so
    /// that the guard names the linear op itself; `bnc train --check-numerics` sets it. The
    /// results are the same bits either way. Takes effect at the next step.
    pub fn keep_z(&mut self, keep: bool) {
        if keep != self.keep_z {
            self.keep_z = keep;
            // Reallocate, to add or drop the `dz` buffers.
            self.units.iter_mut().for_each(|u| u.capacity = 0);
        }
    }

    /// Whether the units' activations and gradients live in memory advised as transparent
    /// huge pages (on Linux; the default), or in ordinary 4 KB pages from the global
    /// allocator. Huge pages spare the step's memory-bound passes most TLB misses, which a
    /// hypervisor makes dearer; some systems prefer to avoid them (memory held in 2 MB
    /// blocks, the kernel compacting memory to find them). The results are the same bits
    /// either way. Takes effect at the next step.
    pub fn huge_pages(&mut self, on: bool) {
        if on != self.huge_pages {
            self.huge_pages = on;
            // Reallocate, in the other kind of memory.
            self.units.iter_mut().for_each(|u| u.capacity = 0);
        }
    }

    /// The configuration the trainer was built with.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The training plan.
    pub fn plan(&self) -> &TrainPlan {
        &self.plan
    }
}

/// The training plan of `model` (as parsed): the default train pipeline (what `bnc compile
/// --mode train` prints, `fuse-bn-train` included), then `lower::train::plan` on its output.
fn train_plan(model: &Graph) -> Result<TrainPlan, TrainError> {
    let mut g = model.clone();
    PassManager::for_mode(Mode::Train).run(&mut g, Mode::Train)?;
    let plan = plan(&g)?;
    computed_params(&g, &plan)?;
    Ok(plan)
}

/// Whether layer `l` writes its `dz` over `z`: a BatchNorm layer whose input-gradient pass
/// recomputes `dy` from the pooled gradient and `a` (so reads no `dz` buffer), unless the
/// trainer keeps `z`.
fn dz_in_z(l: &TrainLayer, keep_z: bool) -> bool {
    l.bn.is_some() && l.back.is_some() && !keep_z
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::new(shape.to_vec(), data).unwrap_or_else(|| Tensor::zeros(&[0]))
}

/// The buffers the elementwise backward pass reads and writes.
fn lb_view(lb: &mut LayerBufs) -> crate::train_bwd::BwdBufs<'_> {
    crate::train_bwd::BwdBufs {
        z: &lb.z,
        a: &lb.a,
        d_out: &lb.d_out,
        d_z: &mut lb.d_z,
    }
}
