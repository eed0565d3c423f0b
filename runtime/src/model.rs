//! Compiled inference models: parse → passes → fusion and memory plan → Cranelift kernels,
//! then bind weights and run on tensors. The compiled model owns its JIT code (freed on
//! drop), its prepared weights and its activation buffers; running splits the batch over
//! threads, each executing every kernel on its own images, which needs no
//! synchronization because inference kernels never mix images.
//!
//! ```
//! use bnc_compiler::{Tensor, text::parse};
//! use bnc_runtime::model::{CompileConfig, InferenceModel};
//!
//! let src = "input x: f32[N,4]\nfc = dense(x, units=3)\nbn = batch_norm(fc)\ny = sigmoid(bn)\noutput y\n";
//! let graph = parse(src).unwrap();
//! let mut model = InferenceModel::compile(&graph, &CompileConfig::default())?;
//! let params: bnc_runtime::weights::ParamStore = bnc_compiler::interp::init_params(model.graph(), 0).into_iter().collect();
//! model.bind(&params)?;
//! let y = model.run(&Tensor::new(vec![2, 4], vec![0.5; 8]).unwrap())?;
//! assert_eq!(y.shape(), &[2, 3]);
//! # Ok::<(), bnc_runtime::model::RuntimeError>(())
//! ```

use std::time::{Duration, Instant};

use thiserror::Error;

use bnc_compiler::codegen::{CodegenError, JitKernels, Width, pack_weight};
use bnc_compiler::ir::Graph;
use bnc_compiler::lower::consteval::{ConstError, ConstEval};
use bnc_compiler::lower::{Arg, LowerError, Plan, lower};
use bnc_compiler::passes::{Mode, PassError, PassManager, Step, inference_pipeline};
use bnc_compiler::{DType, Tensor};

use crate::weights::ParamStore;
use crate::workers::workers;

/// Why a model could not be compiled, bound or run.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A pass failed.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The graph cannot be lowered to kernels.
    #[error(transparent)]
    Lower(#[from] LowerError),
    /// Code generation failed.
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// A weight is missing or has the wrong shape or type.
    #[error(transparent)]
    Weights(#[from] ConstError),
    /// `run` was called before `bind`.
    #[error("no weights are bound; call bind first")]
    NotBound,
    /// The input tensor has the wrong element type.
    #[error("input `{name}` must be f32, got {got}")]
    InputDType {
        /// The input's name.
        name: String,
        /// The given element type.
        got: DType,
    },
    /// The input tensor has the wrong shape: another rank, another size of one image, or
    /// another batch size than a model with a fixed batch (`f32[32,1,28,28]`) declares.
    #[error("input `{name}` has shape {got:?}, expected [{}]", expected_shape(*.batch, .expected))]
    InputShape {
        /// The input's name.
        name: String,
        /// The given shape.
        got: Vec<usize>,
        /// The shape of one image.
        expected: Vec<usize>,
        /// The batch size the model declares, or `None` for the symbolic `N`.
        batch: Option<usize>,
    },
}

/// The declared input shape as the IR writes it: `N,1,28,28` or `32,1,28,28`.
fn expected_shape(batch: Option<usize>, image: &[usize]) -> String {
    let first = batch.map_or("N".to_string(), |b| b.to_string());
    std::iter::once(first)
        .chain(image.iter().map(|d| d.to_string()))
        .collect::<Vec<_>>()
        .join(",")
}

/// How to compile.
#[derive(Clone, Debug)]
pub struct CompileConfig {
    /// Threads to split each batch over.
    pub threads: usize,
    /// Fold BatchNorm into the preceding conv2d/dense (`false`: run it as scale_shift).
    pub fold: bool,
    /// Keep each kernel's CLIF and machine code as text (see
    /// [`JitKernels::compile_with_text`]); costs about a quarter of the compile time.
    pub code_text: bool,
    /// The vector width of the kernels; by default the host's widest ([`Width::host`]).
    pub width: Width,
}

impl Default for CompileConfig {
    fn default() -> Self {
        CompileConfig {
            threads: 1,
            fold: true,
            code_text: false,
            width: Width::host(),
        }
    }
}

/// A model compiled for inference, owning its native code.
pub struct InferenceModel {
    graph: Graph,
    plan: Plan,
    jit: JitKernels,
    steps: Vec<Step>,
    compile_time: Duration,
    weights: Option<Vec<Vec<f32>>>,
    /// Activation buffers per thread, each for `capacity` images.
    slots: Vec<Vec<Vec<f32>>>,
    capacity: usize,
    threads: usize,
    /// Worker threads kept between calls.
    pool: Option<rayon::ThreadPool>,
}

/// Raw buffer pointers handed to kernel threads.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: the pointers are only dereferenced by kernels on disjoint image ranges while the
// owning buffers are alive and not otherwise accessed (see `InferenceModel::execute`).
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl InferenceModel {
    /// Compiles a parsed graph for inference: the inference pipeline, fusion, memory
    /// planning and Cranelift code generation.
    pub fn compile(source: &Graph, cfg: &CompileConfig) -> Result<InferenceModel, RuntimeError> {
        let start = Instant::now();
        let mut graph = source.clone();
        let steps = PassManager::new(inference_pipeline(cfg.fold))?.run(&mut graph, Mode::Infer)?;
        let plan = lower(&graph)?;
        let jit = JitKernels::compile_for(&plan.specs(), cfg.width, cfg.code_text)?;
        Ok(InferenceModel {
            graph,
            plan,
            jit,
            steps,
            compile_time: start.elapsed(),
            weights: None,
            slots: Vec::new(),
            capacity: 0,
            threads: cfg.threads.max(1),
            pool: None,
        })
    }

    /// The optimized graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The execution plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The passes that ran.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The compiled kernels (for `--emit clif` and `--emit asm`).
    pub fn kernels(&self) -> &JitKernels {
        &self.jit
    }

    /// Wall time from graph to native code.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Prepares the weights: evaluates folded expressions in f64, rounds once, and packs
    /// what the kernels want packed. Checks every parameter's presence and shape.
    pub fn bind(&mut self, params: &ParamStore) -> Result<(), RuntimeError> {
        let lookup = |name: &str| params.get(name);
        let mut eval = ConstEval::new(&self.graph, &lookup);
        let mut weights = Vec::with_capacity(self.plan.weights.len());
        for w in &self.plan.weights {
            let t = eval.eval_f32(w.node)?;
            let data = t.as_f32().unwrap_or(&[]);
            weights.push(match &w.pack {
                Some(spec) => pack_weight(spec, data),
                None => data.to_vec(),
            });
        }
        self.weights = Some(weights);
        Ok(())
    }

    fn check_input(&self, input: &Tensor) -> Result<usize, RuntimeError> {
        let name = self.plan.input_name.clone();
        if input.dtype() != DType::F32 {
            return Err(RuntimeError::InputDType {
                name,
                got: input.dtype(),
            });
        }
        let shape = input.shape();
        let batch_ok = |b: usize| self.plan.input_batch.is_none_or(|fixed| fixed == b);
        match shape.split_first() {
            Some((&batch, image)) if image == self.plan.input_dims && batch_ok(batch) => Ok(batch),
            _ => Err(RuntimeError::InputShape {
                name,
                got: shape.to_vec(),
                expected: self.plan.input_dims.clone(),
                batch: self.plan.input_batch,
            }),
        }
    }

    /// Runs the model on a batch; returns the first output (`[batch, ...]`).
    ///
    /// The input is checked before any native code runs: it must be `f32` (an `i32`
    /// tensor is [`RuntimeError::InputDType`]) and have the declared shape, `[batch, image
    /// dims...]` with any batch for a model written with `N` and exactly the declared
    /// batch otherwise ([`RuntimeError::InputShape`]). A [`Tensor`] is always one
    /// contiguous row-major buffer holding exactly the product of its shape (its
    /// constructors refuse anything else), so a strided or short buffer cannot reach a
    /// kernel. An empty batch gives empty outputs.
    pub fn run(&mut self, input: &Tensor) -> Result<Tensor, RuntimeError> {
        Ok(self.run_all(input)?.swap_remove(0))
    }

    /// Runs the model on a batch; returns every output.
    pub fn run_all(&mut self, input: &Tensor) -> Result<Vec<Tensor>, RuntimeError> {
        let batch = self.check_input(input)?;
        let data = input.as_f32().unwrap_or(&[]);
        let ranges = self.execute(data, batch, None)?;
        let mut outs = Vec::new();
        for o in &self.plan.outputs {
            let per: usize = o.dims.iter().product();
            let mut values = Vec::with_capacity(per * batch);
            for (t, &(n0, n1)) in ranges.iter().enumerate().filter(|(_, (n0, n1))| n1 > n0) {
                values.extend_from_slice(match o.arg {
                    Arg::Input => &data[n0 * per..n1 * per],
                    Arg::Slot(s) => &self.slots[t][s][..(n1 - n0) * per],
                    Arg::Weight(_) => &[],
                });
            }
            let mut shape = vec![batch];
            shape.extend(&o.dims);
            outs.push(Tensor::new(shape, values).unwrap_or_else(|| Tensor::zeros(&[0])));
        }
        Ok(outs)
    }

    /// Runs the kernels one after the other over the whole batch on one thread and
    /// returns the time of each, in plan order (for `bnc bench`).
    pub fn profile(&mut self, input: &Tensor) -> Result<Vec<Duration>, RuntimeError> {
        let batch = self.check_input(input)?;
        let mut times = vec![Duration::ZERO; self.plan.kernels.len()];
        self.execute(input.as_f32().unwrap_or(&[]), batch, Some(&mut times))?;
        Ok(times)
    }

    /// Splits the batch into one contiguous range of images per thread. Each thread runs
    /// every kernel on its images with its own activation buffers: buffers are reused by
    /// values of different sizes, so sharing them across threads would let one thread's
    /// rows overlap another's. Returns the ranges.
    fn execute(
        &mut self,
        input: &[f32],
        batch: usize,
        times: Option<&mut Vec<Duration>>,
    ) -> Result<Vec<(usize, usize)>, RuntimeError> {
        let weights = self.weights.as_mut().ok_or(RuntimeError::NotBound)?;
        let threads = if times.is_some() {
            1
        } else {
            self.threads.min(batch).max(1)
        };
        let chunk = batch.div_ceil(threads).max(1);
        let ranges: Vec<(usize, usize)> = (0..threads)
            .map(|t| ((t * chunk).min(batch), ((t + 1) * chunk).min(batch)))
            .collect();
        if batch == 0 {
            return Ok(ranges);
        }
        if chunk > self.capacity || self.slots.len() < threads {
            let per_thread = |_| {
                self.plan
                    .slots
                    .iter()
                    .map(|&len| vec![0.0; len * chunk])
                    .collect()
            };
            self.slots = (0..threads).map(per_thread).collect();
            self.capacity = chunk;
        }
        let in_len: usize = self.plan.input_dims.iter().product();
        // Every buffer a kernel gets must hold what its spec says it touches for this
        // thread's images (`codegen::bounds` checks the kernels against the same lengths).
        for (t, &(n0, n1)) in ranges.iter().enumerate() {
            for (index, k) in self.plan.kernels.iter().enumerate() {
                let needed = k.spec.buffer_lens(n1 - n0);
                for (buffer, (arg, &expected)) in k.args.iter().zip(&needed).enumerate() {
                    let got = match *arg {
                        Arg::Input => input.len().saturating_sub(n0 * in_len),
                        Arg::Slot(s) => self.slots[t].get(s).map_or(0, Vec::len),
                        Arg::Weight(w) => weights.get(w).map_or(0, Vec::len),
                    };
                    if got < expected {
                        return Err(RuntimeError::Codegen(CodegenError::BufferLen {
                            index,
                            buffer,
                            expected,
                            got,
                        }));
                    }
                }
            }
        }
        let weight_ptrs: Vec<Ptr> = weights.iter_mut().map(|w| Ptr(w.as_mut_ptr())).collect();
        let kernels: Vec<bnc_compiler::codegen::KernelFn> =
            (0..self.jit.len()).map(|i| self.jit.kernel(i)).collect();
        // One argument list per thread and kernel, resolved before any thread starts.
        let calls: Vec<Vec<Vec<Ptr>>> = ranges
            .iter()
            .zip(self.slots.iter_mut())
            .map(|(&(n0, _), slots)| {
                // Kernels only read the input, but their signature takes mutable pointers.
                let input_ptr = Ptr(input[n0 * in_len..].as_ptr() as *mut f32);
                let slot_ptrs: Vec<Ptr> = slots.iter_mut().map(|s| Ptr(s.as_mut_ptr())).collect();
                self.plan
                    .kernels
                    .iter()
                    .map(|k| {
                        k.args
                            .iter()
                            .map(|a| match *a {
                                Arg::Input => input_ptr,
                                Arg::Slot(s) => slot_ptrs[s],
                                Arg::Weight(w) => weight_ptrs[w],
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let run_thread = |t: usize, times: Option<&mut Vec<Duration>>| {
            let (n0, n1) = ranges[t];
            let mut times = times;
            let mut raw: Vec<*mut f32> = Vec::new();
            for (i, (f, ptrs)) in kernels.iter().zip(&calls[t]).enumerate() {
                raw.clear();
                raw.extend(ptrs.iter().map(|p| p.0));
                let start = Instant::now();
                // SAFETY: `self.jit` outlives this call. The input was checked against the
                // plan's shape and its pointer starts at this thread's first image; the
                // activation buffers are this thread's own, sized for `chunk >= n1 - n0`
                // images; weights are only read. Every buffer was checked above to hold the
                // spec's `buffer_lens(n1 - n0)`, and kernels touch nothing beyond those
                // (`codegen::bounds`).
                unsafe { f.call(&raw, 0, n1 - n0) };
                if let Some(t) = times.as_deref_mut() {
                    t[i] += start.elapsed();
                }
            }
        };
        if threads == 1 {
            run_thread(0, times);
            return Ok(ranges);
        }
        match workers(&mut self.pool, threads - 1, "bnc-run") {
            Some(pool) => pool.in_place_scope(|s| {
                for t in 1..threads {
                    let run_thread = &run_thread;
                    s.spawn(move |_| run_thread(t, None));
                }
                run_thread(0, None);
            }),
            // No worker could be started: the ranges run one after another.
            None => (0..threads).for_each(|t| run_thread(t, None)),
        }
        Ok(ranges)
    }
}
