//! JIT training: a [`Trainer`] compiles a model's training plan (`lower::train`) into native
//! kernels and runs SGD steps on batches split across threads.
//!
//! Each step runs inside one `std::thread::scope`. Thread `t` owns a contiguous range of the
//! batch and its own activation and gradient buffers; where a reduction must see the whole
//! batch (BatchNorm statistics, the BatchNorm backward sums) every thread publishes its partial
//! result, waits at a barrier, and merges all partials in thread order, so every thread gets
//! the same bits. Weight gradients are per-thread partials summed in thread order after the
//! scope. The result depends only on the inputs, the parameters and the thread count.

mod exchange;
mod footprint;
mod numerics;

use std::sync::Mutex;
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
use crate::train_bwd::{BnSums, Stats, backward_elementwise, lane_sum};
use crate::weights::{ParamStore, WeightsError};
use exchange::Exchange;

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
    /// Threads to split each batch over.
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
        "training needs {} for a batch of {batch} on {threads} thread(s) ({} of parameters \
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
        /// The configured threads.
        threads: usize,
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
    /// The bias `redundant-bias` removed from before the BatchNorm: still a parameter (saved,
    /// loaded, subject to weight decay, as in PyTorch) with a gradient of exactly zero, and
    /// added to the batch mean in the running-mean update, which is the one place it shows.
    cancelled_bias: Option<usize>,
    /// gamma, beta, running mean, running variance.
    bn: Option<(usize, usize, Vec<f32>, Vec<f32>)>,
    /// The weight in the forward kernel's layout.
    w_fwd: Vec<f32>,
    /// The weight in the input-gradient kernel's layout.
    w_bwd: Vec<f32>,
}

/// One thread's buffers for one layer, each for `capacity` images.
#[derive(Debug, Default)]
struct LayerBufs {
    /// Linear output before BatchNorm (BatchNorm layers only).
    z: Vec<f32>,
    /// Activation output (before the pool).
    a: Vec<f32>,
    /// Pooled output (pooled layers only).
    p: Vec<f32>,
    /// Gradient with respect to the layer output.
    d_out: Vec<f32>,
    /// Gradient with respect to the linear output.
    d_z: Vec<f32>,
    /// Statistics written by the linear kernel.
    stats: Vec<f32>,
    /// Per-image sums written by the pool/activation backward kernel.
    sums: Vec<f32>,
    /// Partial weight gradient of this thread.
    gw: Vec<f32>,
    /// Partial bias gradient of this thread.
    gb: Vec<f32>,
}

/// What a thread hands back from a step.
#[derive(Debug, Default)]
struct ThreadOut {
    loss: f64,
    correct: usize,
    /// Per BatchNorm layer: merged batch statistics and backward sums.
    bn: Vec<Option<(Stats, BnSums)>>,
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
    bufs: Vec<Vec<LayerBufs>>,
    capacity: usize,
    /// The image range of each thread in the last step (what `check_numerics` inspects).
    last_ranges: Vec<(usize, usize)>,
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
        let mut names = std::iter::once(&l.weight).chain(&l.bias).chain(bn);
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
            let cancelled_bias = match (&l.bias, &l.bn) {
                (None, Some(_)) => model_bias(model, &l.nodes.linear.name),
                _ => None,
            };
            let cancelled_bias = cancelled_bias.map(|b| add(&b, &c)).transpose()?;
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
                cancelled_bias,
                bn,
                w_fwd: Vec::new(),
                w_bwd: Vec::new(),
            });
        }
        let mut t = Trainer {
            plan,
            jit,
            kernels,
            layers,
            sgd: Sgd::new(sgd_params),
            cfg: cfg.clone(),
            bufs: Vec::new(),
            capacity: 0,
            last_ranges: Vec::new(),
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

    fn alloc(&mut self, threads: usize, chunk: usize) {
        if chunk <= self.capacity && self.bufs.len() >= threads {
            return;
        }
        let make = |l: &TrainLayer| LayerBufs {
            z: if l.bn.is_some() {
                vec![0.0; chunk * l.z_len]
            } else {
                Vec::new()
            },
            a: vec![0.0; chunk * l.z_len],
            p: if l.pool.is_some() {
                vec![0.0; chunk * l.out_len]
            } else {
                Vec::new()
            },
            d_out: vec![0.0; chunk * l.out_len],
            d_z: vec![0.0; chunk * l.z_len],
            stats: vec![0.0; 3 * l.channels],
            sums: vec![0.0; chunk * pool_act_back_sums(l.channels, l.bn.is_some())],
            gw: vec![0.0; l.weight_shape.iter().product()],
            gb: vec![0.0; l.channels],
        };
        self.bufs = (0..threads)
            .map(|_| self.plan.layers.iter().map(make).collect())
            .collect();
        self.capacity = chunk;
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
        self.step_with(images, labels, None)
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
        let result = self.step_with(images, labels, Some(&prof));
        self.cfg.threads = threads;
        result?;
        Ok(prof.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    fn step_with(
        &mut self,
        images: &[f32],
        labels: &[i32],
        prof: Option<&Mutex<Vec<(String, Duration)>>>,
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
        let threads = self.cfg.threads.max(1).min(b);
        let chunk = b.div_ceil(threads);
        let cap = self.cfg.batch.div_ceil(self.cfg.threads.max(1)).max(chunk);
        self.alloc(self.cfg.threads.max(1).max(threads), cap);
        let ranges: Vec<(usize, usize)> = (0..threads)
            .map(|t| ((t * chunk).min(b), ((t + 1) * chunk).min(b)))
            .collect();
        let ex = Exchange::new(threads);
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
            ex: &ex,
            prof,
        };
        let mut outs: Vec<ThreadOut> = Vec::with_capacity(threads);
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            let mut bufs = self.bufs.iter_mut();
            let first = bufs.next().expect("at least one thread");
            for (t, tb) in bufs.enumerate().take(threads - 1) {
                let ctx = &ctx;
                let range = ranges[t + 1];
                handles.push(s.spawn(move || ctx.run(t + 1, range, tb)));
            }
            outs.push(ctx.run(0, ranges[0], first));
            for h in handles {
                outs.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
        });
        let loss: f64 = outs.iter().map(|o| o.loss).sum();
        let correct = outs.iter().map(|o| o.correct).sum();
        let start = Instant::now();
        self.finish_step(&outs[0], threads);
        if let Some(p) = prof {
            record(
                p,
                "update (merge, running stats, SGD, repack)".into(),
                start,
            );
        }
        self.last_ranges = ranges;
        Ok(StepStats {
            loss: (loss / b as f64) as f32,
            correct,
        })
    }

    /// Merges weight gradients in thread order, updates running statistics, applies SGD.
    fn finish_step(&mut self, out0: &ThreadOut, threads: usize) {
        for (i, (lp, l)) in self.layers.iter_mut().zip(&self.plan.layers).enumerate() {
            let sum = |f: &dyn Fn(&LayerBufs) -> &Vec<f32>| -> Vec<f32> {
                let mut acc = f(&self.bufs[0][i]).clone();
                for tb in &self.bufs[1..threads] {
                    for (a, x) in acc.iter_mut().zip(f(&tb[i])) {
                        *a += x;
                    }
                }
                acc
            };
            self.sgd.params[lp.weight].grad = sum(&|b| &b.gw);
            if let Some(bi) = lp.bias {
                self.sgd.params[bi].grad = sum(&|b| &b.gb);
            }
            if let (Some((gamma, beta, rm, rv)), Some(bn), Some(Some((stats, sums)))) =
                (&mut lp.bn, &l.bn, out0.bn.get(i))
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
                let bias = lp.cancelled_bias.map(|b| &self.sgd.params[b].value);
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

/// The bias parameter of the conv2d or dense node `name` in `model` (as parsed), if it has
/// one.
fn model_bias(model: &Graph, name: &str) -> Option<String> {
    let id = model.lookup(name)?;
    let has_bias = match model.node(id).op()? {
        Op::Conv2d(a) => a.bias,
        Op::Dense(a) => a.bias,
        _ => false,
    };
    let ops = model.operands(id);
    (has_bias && ops.len() > 2).then(|| model.node(ops[2]).name.clone())
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::new(shape.to_vec(), data).unwrap_or_else(|| Tensor::zeros(&[0]))
}

/// Everything a thread reads during a step.
struct StepCtx<'a> {
    plan: &'a TrainPlan,
    fns: &'a [KernelFn],
    kernels: &'a [LayerKernels],
    layers: &'a [LayerParams],
    sgd: &'a Sgd,
    images: &'a [f32],
    labels: &'a [i32],
    batch: usize,
    ex: &'a Exchange,
    /// Where phase times go when profiling (one thread).
    prof: Option<&'a Mutex<Vec<(String, Duration)>>>,
}

fn record(prof: &Mutex<Vec<(String, Duration)>>, what: String, start: Instant) {
    let t = start.elapsed();
    prof.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((what, t));
}

/// Calls kernel `k` on images `0..n` of the given buffers.
fn call(f: KernelFn, bufs: &[*mut f32], n: usize) {
    // SAFETY: the trainer owns the JIT module for the whole step; every pointer is a buffer
    // of this thread (or a shared read-only weight or input slice) sized for at least `n`
    // images in the layout of the kernel's `buffer_lens`, and no other thread writes it.
    unsafe { f.call(bufs, 0, n) }
}

impl StepCtx<'_> {
    /// Runs `f`, recording its time under `what()` when profiling.
    fn timed<R>(&self, what: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        if let Some(p) = self.prof {
            record(p, what(), start);
        }
        r
    }

    fn run(&self, t: usize, (n0, n1): (usize, usize), bufs: &mut [LayerBufs]) -> ThreadOut {
        let n = n1 - n0;
        let per_image: usize = self.plan.input_dims.iter().product();
        let input = self.images[n0 * per_image..n1 * per_image]
            .as_ptr()
            .cast_mut();
        let mut out = ThreadOut {
            bn: vec![None; self.plan.layers.len()],
            ..ThreadOut::default()
        };
        let mut stats: Vec<Option<Stats>> = vec![None; self.plan.layers.len()];
        // Forward.
        let mut x = input;
        for (i, l) in self.plan.layers.iter().enumerate() {
            let (lk, lp, lb) = (&self.kernels[i], &self.layers[i], &mut bufs[i]);
            let mut args = vec![x, lp.w_fwd.as_ptr().cast_mut()];
            if let Some(bi) = lp.bias {
                args.push(self.sgd.params[bi].value.as_ptr().cast_mut());
            }
            let linear_out = if l.bn.is_some() { &mut lb.z } else { &mut lb.a };
            args.push(linear_out.as_mut_ptr());
            if l.bn.is_some() {
                args.push(lb.stats.as_mut_ptr());
            }
            self.timed(
                || format!("fwd {}: linear", l.name),
                || call(self.fns[lk.linear], &args, n),
            );
            if let (Some(bn), Some((gamma, beta, _, _))) = (&l.bn, &lp.bn) {
                let all = self.ex.all_gather(
                    t,
                    Stats::from_shifted(&lb.stats, l.channels, n, l.hw).pack(),
                );
                let s = Stats::merge(&all, l.channels);
                let (scale, shift) = s.scale_shift(
                    &self.sgd.params[*gamma].value,
                    &self.sgd.params[*beta].value,
                    bn.eps,
                );
                let mut a = vec![lb.z.as_mut_ptr(), scale.as_ptr().cast_mut()];
                a.push(shift.as_ptr().cast_mut());
                a.push(lb.a.as_mut_ptr());
                if l.pool.is_some() {
                    a.push(lb.p.as_mut_ptr());
                }
                let k = lk.post.expect("bn has a post kernel");
                self.timed(
                    || format!("fwd {}: bn+act+pool", l.name),
                    || call(self.fns[k], &a, n),
                );
                stats[i] = Some(s);
            } else if let Some(k) = lk.post {
                self.timed(
                    || format!("fwd {}: post", l.name),
                    || call(self.fns[k], &[lb.a.as_mut_ptr(), lb.p.as_mut_ptr()], n),
                );
            }
            x = if l.pool.is_some() {
                lb.p.as_mut_ptr()
            } else {
                lb.a.as_mut_ptr()
            };
        }
        // Loss and its gradient, mean over the whole batch.
        let last = self.plan.layers.len() - 1;
        let k = self.plan.classes;
        {
            let lb = &mut bufs[last];
            let logits = if self.plan.layers[last].pool.is_some() {
                &lb.p
            } else {
                &lb.a
            };
            for img in 0..n {
                let row = &logits[img * k..(img + 1) * k];
                let label = self.labels[n0 + img] as usize;
                let (loss, correct) = crate::train_bwd::softmax_xent(
                    row,
                    label,
                    self.batch,
                    &mut lb.d_out[img * k..],
                );
                out.loss += loss;
                out.correct += usize::from(correct);
            }
        }
        // Backward.
        for i in (0..self.plan.layers.len()).rev() {
            let l = &self.plan.layers[i];
            let (lk, lp) = (&self.kernels[i], &self.layers[i]);
            let (before, rest) = bufs.split_at_mut(i);
            let lb = &mut rest[0];
            let elementwise = || format!("bwd {}: pool+act backward, bn sums", l.name);
            let stats_i = stats[i].as_ref();
            // dy (pool and activation backward) into d_z, with this thread's sums: Σdy per
            // channel (the bias gradient without BatchNorm) and, with BatchNorm, Σdy·x̂.
            let partial = match lk.back {
                Some(k) => self.timed(elementwise, || {
                    let mut args = vec![lb.d_out.as_mut_ptr(), lb.a.as_mut_ptr()];
                    let (mean, inv);
                    if let (Some(s), Some(bn)) = (stats_i, &l.bn) {
                        mean = s.mean.iter().map(|&m| m as f32).collect::<Vec<f32>>();
                        inv = s
                            .inv_std(bn.eps)
                            .iter()
                            .map(|&v| v as f32)
                            .collect::<Vec<f32>>();
                        args.extend([
                            lb.z.as_mut_ptr(),
                            mean.as_ptr().cast_mut(),
                            inv.as_ptr().cast_mut(),
                        ]);
                    }
                    args.extend([lb.d_z.as_mut_ptr(), lb.sums.as_mut_ptr()]);
                    call(self.fns[k], &args, n);
                    BnSums::from_images(&lb.sums, l.channels, n, l.bn.is_some())
                }),
                None => self.timed(elementwise, || {
                    backward_elementwise(l, lb_view(lb), n, stats_i)
                }),
            };
            lb.gb.iter_mut().for_each(|v| *v = 0.0);
            if let (Some(s), Some((g, _, _, _))) = (stats_i, &lp.bn) {
                let sums = BnSums::merge(&self.ex.all_gather(t, partial.pack()), l.channels);
                let coef = sums.dx_coefficients(s, &self.sgd.params[*g].value, l.bn.as_ref());
                let k = lk.bn_dx.expect("a BatchNorm layer has a dx kernel");
                let d_z = lb.d_z.as_mut_ptr();
                self.timed(
                    || format!("bwd {}: bn dx", l.name),
                    || {
                        call(
                            self.fns[k],
                            &[lb.z.as_mut_ptr(), d_z, coef.as_ptr().cast_mut(), d_z],
                            n,
                        )
                    },
                );
                out.bn[i] = Some(((*s).clone(), sums));
            } else if lp.bias.is_some() {
                if lk.back.is_some() {
                    // Without BatchNorm, Σdy is the bias gradient.
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
            let x = if i == 0 {
                input
            } else {
                let pb = &mut before[i - 1];
                if self.plan.layers[i - 1].pool.is_some() {
                    pb.p.as_mut_ptr()
                } else {
                    pb.a.as_mut_ptr()
                }
            };
            self.timed(
                || format!("bwd {}: weight gradient", l.name),
                || {
                    call(
                        self.fns[lk.grad_w],
                        &[x, lb.d_z.as_mut_ptr(), lb.gw.as_mut_ptr()],
                        n,
                    )
                },
            );
            if let Some(k) = lk.grad_x {
                let dst = before[i - 1].d_out.as_mut_ptr();
                let src = lb.d_z.as_mut_ptr();
                self.timed(
                    || format!("bwd {}: input gradient", l.name),
                    || call(self.fns[k], &[src, lp.w_bwd.as_ptr().cast_mut(), dst], n),
                );
            }
        }
        out
    }
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
