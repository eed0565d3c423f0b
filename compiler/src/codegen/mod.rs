//! Native code generation for CPU inference kernels with Cranelift. A [`KernelSpec`] names one
//! fused kernel with compile-time shapes; `kernels/` lowers each spec to the small loop-nest IR
//! of [`loop_ir`], and the single emitter in `emit.rs` turns that IR into Cranelift IR, so a new
//! kernel kind is a few dozen lines of loop IR rather than a new emitter. [`JitKernels`] compiles
//! a list of specs into one JIT module and owns the machine code; [`reference`] is the slow,
//! plain-Rust truth every kernel is tested against.
//!
//! # Calling convention
//!
//! Every kernel has the signature
//! `unsafe extern "C" fn(bufs: *const *mut f32, n_begin: i64, n_end: i64)`.
//! `bufs` points to an array of buffer base pointers in the order given by
//! [`KernelSpec::buffer_names`]; every buffer is a full-batch, contiguous NCHW (or NC) array and
//! the kernel reads and writes only images `n_begin..n_end`, so threads may split a batch into
//! disjoint ranges and call the same kernel at once. Dense weights are expected in the packed
//! layout of [`pack_weight`]; all other buffers are in PyTorch layout. No kernel needs scratch
//! memory from the caller: the fused conv+pool kernel keeps its few rows on its own stack.

mod emit;
mod jit;
mod kernels;
pub mod loop_ir;
mod math;
mod reference;
mod reference_train;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_train;

pub use jit::{JitKernels, KernelFn};
pub use reference::reference;
pub use reference_train::reference_train;

/// An elementwise activation applied in a kernel's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// The identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + exp(-x))`, with an inlined polynomial `exp`.
    Sigmoid,
    /// `1 - 2 / (exp(2x) + 1)`, with an inlined polynomial `exp`.
    Tanh,
}

/// The reduction of a pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// The mean of the window (see [`Pool2d::count_include_pad`]).
    Avg,
    /// The maximum of the window; padding never wins.
    Max,
}

/// A 2-d pooling window with PyTorch semantics (floor output size, no ceil mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2d {
    /// Average or max.
    pub kind: PoolKind,
    /// Window size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Window stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Implicit padding `[ph, pw]`; at most half the window, as in PyTorch.
    pub padding: [usize; 2],
    /// For average pooling, divide by the full window size even where it covers padding.
    pub count_include_pad: bool,
}

impl Pool2d {
    /// The pooled size of an `h x w` plane.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            window_out(h, self.kernel[0], self.stride[0], self.padding[0]),
            window_out(w, self.kernel[1], self.stride[1], self.padding[1]),
        )
    }
}

/// What is applied to each output element of a producer kernel, in order: `+ bias[c]` (if
/// `bias`), then `* scale[c] + shift[c]` (if `scale_shift`), then the activation, then the pool
/// (if any; only the pooled tensor is written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epilogue {
    /// Add a per-output-channel bias buffer.
    pub bias: bool,
    /// Multiply by a per-channel scale and add a per-channel shift (an unfolded BatchNorm).
    pub scale_shift: bool,
    /// The activation applied after bias and scale/shift.
    pub act: Activation,
    /// An optional pooling of the activated output; only valid on spatial producers.
    pub pool: Option<Pool2d>,
}

impl Epilogue {
    /// The epilogue that writes the raw accumulator.
    pub const NONE: Epilogue = Epilogue {
        bias: false,
        scale_shift: false,
        act: Activation::None,
        pool: None,
    };
}

/// One fused kernel with compile-time shapes; only the batch size is a runtime value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelSpec {
    /// NCHW input `[n, c_in, h, w]`, weight `[c_out, c_in/groups, kh, kw]` (PyTorch layout),
    /// output NCHW (pooled if `epi.pool`).
    Conv2d {
        /// Input channels.
        c_in: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Output channels.
        c_out: usize,
        /// Kernel size `[kh, kw]`.
        kernel: [usize; 2],
        /// Stride `[sh, sw]`.
        stride: [usize; 2],
        /// Zero padding `[ph, pw]`.
        padding: [usize; 2],
        /// Channel groups; divides both `c_in` and `c_out`.
        groups: usize,
        /// The fused epilogue.
        epi: Epilogue,
    },
    /// Input `[n, in_f]`, weight `[out_f, in_f]` (PyTorch layout; the kernel wants it packed by
    /// [`pack_weight`]), output `[n, out_f]`. The epilogue may not pool.
    Dense {
        /// Input features.
        in_f: usize,
        /// Output features.
        out_f: usize,
        /// The fused epilogue.
        epi: Epilogue,
    },
    /// Per-channel `y = x * scale[c] + shift[c]`, then the activation, then an optional pool;
    /// input `[n, c, h, w]` (`h = w = 1` for rank 2).
    ScaleShift {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// The activation.
        act: Activation,
        /// An optional pool of the activated values.
        pool: Option<Pool2d>,
    },
    /// Standalone NCHW pooling.
    Pool {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// The pooling window.
        pool: Pool2d,
    },
    /// An elementwise activation over `len` elements per image.
    Unary {
        /// Elements per image.
        len: usize,
        /// The activation.
        act: Activation,
    },
    /// Elementwise `a + b`, then the activation, over `len` elements per image.
    Add {
        /// Elements per image.
        len: usize,
        /// The activation.
        act: Activation,
    },
    /// Row softmax over `[n, classes]`.
    Softmax {
        /// Row length.
        classes: usize,
    },
    /// Training forward of a convolution (groups 1): writes the raw output (plus bias) and,
    /// if `stats`, accumulates in its epilogue the per-channel batch statistics of that output
    /// over the call's images (see [`train_stats`] for the layout).
    TrainConv2d {
        /// Input channels.
        c_in: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Output channels.
        c_out: usize,
        /// Kernel size `[kh, kw]`.
        kernel: [usize; 2],
        /// Stride `[sh, sw]`.
        stride: [usize; 2],
        /// Zero padding `[ph, pw]`.
        padding: [usize; 2],
        /// Add a bias.
        bias: bool,
        /// Also write the statistics buffer.
        stats: bool,
    },
    /// Training forward of a dense layer (weight packed by [`pack_weight`] as for `Dense`):
    /// raw output plus bias and, if `stats`, per-feature batch statistics over the call's images.
    TrainDense {
        /// Input features.
        in_f: usize,
        /// Output features.
        out_f: usize,
        /// Add a bias.
        bias: bool,
        /// Also write the statistics buffer.
        stats: bool,
    },
    /// Train-mode BatchNorm apply: `a = act(x * scale[c] + shift[c])` saved for the backward
    /// pass, then pooled into the output, in one kernel.
    BnActPool {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// The activation.
        act: Activation,
        /// The pool applied to the saved activation.
        pool: Pool2d,
    },
    /// Weight gradient of a stride-1, groups-1 convolution over the call's images:
    /// `dw[co, ci, ky, kx] = Σ_n Σ_oy,ox dy[n, co, oy, ox] · x[n, ci, oy+ky-ph, ox+kx-pw]`.
    ConvGradW {
        /// Input channels.
        c_in: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Output channels.
        c_out: usize,
        /// Kernel size `[kh, kw]`.
        kernel: [usize; 2],
        /// Zero padding `[ph, pw]`.
        padding: [usize; 2],
    },
    /// Weight gradient of a dense layer over the call's images, in PyTorch layout:
    /// `dw[o, i] = Σ_n dy[n, o] · x[n, i]`.
    DenseGradW {
        /// Input features.
        in_f: usize,
        /// Output features.
        out_f: usize,
    },
}

/// The layout of the statistics buffer of `TrainConv2d`/`TrainDense` for `c` channels:
/// three planes of `c` floats, `shift[c]`, `Σ (x - shift)` and `Σ (x - shift)²` over the
/// call's images (and pixels), where `shift` is the channel's first value of the first image.
/// Shifting by a sample keeps both sums small, so the variance `(s2 - s1²/m) / m` does not
/// cancel catastrophically even for data with a large mean; the runtime merges the per-thread
/// triples in `f64` with Chan's formula.
pub fn train_stats(c: usize) -> usize {
    3 * c
}

/// Why a set of kernels could not be compiled or run.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// A size, stride or group count that must be positive is zero.
    #[error("kernel {index}: {what} must be positive")]
    ZeroSize {
        /// Position of the spec in the compiled list.
        index: usize,
        /// Which field is zero.
        what: &'static str,
    },
    /// `groups` does not divide the input or output channel count.
    #[error("kernel {index}: groups {groups} does not divide {channels} channels")]
    Groups {
        /// Position of the spec in the compiled list.
        index: usize,
        /// The group count.
        groups: usize,
        /// The channel count it should divide.
        channels: usize,
    },
    /// A convolution or pooling window is larger than its padded input.
    #[error("kernel {index}: window {window} exceeds padded extent {padded}")]
    WindowTooLarge {
        /// Position of the spec in the compiled list.
        index: usize,
        /// The window size along the offending axis.
        window: usize,
        /// The padded input extent along that axis.
        padded: usize,
    },
    /// Pool padding larger than half the window, which PyTorch rejects too.
    #[error("kernel {index}: pool padding {padding} exceeds half the window {window}")]
    PoolPadding {
        /// Position of the spec in the compiled list.
        index: usize,
        /// The padding.
        padding: usize,
        /// The window size.
        window: usize,
    },
    /// A dense kernel was asked to pool, but its output has no spatial axes.
    #[error("kernel {index}: a dense output has no spatial axes to pool")]
    PoolOnDense {
        /// Position of the spec in the compiled list.
        index: usize,
    },
    /// Cranelift does not support the host machine.
    #[error("the host machine is not supported by cranelift: {0}")]
    UnsupportedHost(&'static str),
    /// A Cranelift flag could not be set.
    #[error("invalid cranelift setting: {0}")]
    Setting(#[from] cranelift_codegen::settings::SetError),
    /// Cranelift could not build the target ISA.
    #[error("cranelift could not build the target isa: {0}")]
    Isa(#[from] cranelift_codegen::CodegenError),
    /// Cranelift rejected a generated function; this is a codegen bug.
    #[error("cranelift rejected kernel {index}: {source}")]
    Module {
        /// Position of the spec in the compiled list, or `usize::MAX` for the module itself.
        index: usize,
        /// The Cranelift error.
        #[source]
        source: Box<cranelift_module::ModuleError>,
    },
    /// A kernel's loop IR broke an emitter invariant; this is a lowering bug.
    #[error("kernel {kernel}: malformed loop ir: {reason}")]
    MalformedLoopIr {
        /// The kernel's name.
        kernel: String,
        /// The broken invariant.
        reason: &'static str,
    },
    /// [`JitKernels::run`] got the wrong number of buffers.
    #[error("kernel {index}: expected {expected} buffers, got {got}")]
    BufferCount {
        /// Position of the kernel.
        index: usize,
        /// Buffers the kernel takes.
        expected: usize,
        /// Buffers passed.
        got: usize,
    },
    /// [`JitKernels::run`] got a buffer that is too short for the batch.
    #[error("kernel {index}: buffer {buffer} holds {got} floats but needs {expected}")]
    BufferLen {
        /// Position of the kernel.
        index: usize,
        /// Position of the buffer.
        buffer: usize,
        /// Floats needed.
        expected: usize,
        /// Floats present.
        got: usize,
    },
    /// [`JitKernels::kernel`] and friends got an index past the end.
    #[error("no kernel {index}: only {len} were compiled")]
    NoKernel {
        /// The requested index.
        index: usize,
        /// How many kernels exist.
        len: usize,
    },
}

/// The output size of a sliding window (PyTorch floor semantics). Callers validate first.
pub(crate) fn window_out(x: usize, k: usize, s: usize, p: usize) -> usize {
    (x + 2 * p - k) / s + 1
}

impl KernelSpec {
    /// The names of the kernel's buffers in calling order; the last one is the output.
    pub fn buffer_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        match *self {
            KernelSpec::Conv2d { epi, .. } | KernelSpec::Dense { epi, .. } => {
                v.extend(["input", "weight"]);
                if epi.bias {
                    v.push("bias");
                }
                if epi.scale_shift {
                    v.extend(["scale", "shift"]);
                }
            }
            KernelSpec::ScaleShift { .. } => v.extend(["input", "scale", "shift"]),
            KernelSpec::Add { .. } => v.extend(["a", "b"]),
            KernelSpec::Pool { .. } | KernelSpec::Unary { .. } | KernelSpec::Softmax { .. } => {
                v.push("input")
            }
            KernelSpec::TrainConv2d { bias, stats, .. }
            | KernelSpec::TrainDense { bias, stats, .. } => {
                v.extend(["input", "weight"]);
                if bias {
                    v.push("bias");
                }
                v.push("output");
                if stats {
                    v.push("stats");
                }
                return v;
            }
            KernelSpec::BnActPool { .. } => {
                return vec!["input", "scale", "shift", "saved", "output"];
            }
            KernelSpec::ConvGradW { .. } | KernelSpec::DenseGradW { .. } => {
                v.extend(["input", "grad"])
            }
        }
        v.push("output");
        v
    }

    /// Input elements per image.
    pub fn in_len(&self) -> usize {
        match *self {
            KernelSpec::Conv2d { c_in, h, w, .. } => c_in * h * w,
            KernelSpec::Dense { in_f, .. } => in_f,
            KernelSpec::ScaleShift { c, h, w, .. } | KernelSpec::Pool { c, h, w, .. } => c * h * w,
            KernelSpec::Unary { len, .. } | KernelSpec::Add { len, .. } => len,
            KernelSpec::Softmax { classes } => classes,
            KernelSpec::TrainConv2d { c_in, h, w, .. }
            | KernelSpec::ConvGradW { c_in, h, w, .. } => c_in * h * w,
            KernelSpec::TrainDense { in_f, .. } | KernelSpec::DenseGradW { in_f, .. } => in_f,
            KernelSpec::BnActPool { c, h, w, .. } => c * h * w,
        }
    }

    /// The output shape of one image `[c, h, w]` (`h = w = 1` for rank-2 outputs).
    pub fn out_chw(&self) -> [usize; 3] {
        let pooled = |c, h, w, pool: Option<Pool2d>| match pool {
            Some(p) => {
                let (ph, pw) = p.out_hw(h, w);
                [c, ph, pw]
            }
            None => [c, h, w],
        };
        match *self {
            KernelSpec::Conv2d {
                h,
                w,
                c_out,
                kernel,
                stride,
                padding,
                epi,
                ..
            } => {
                let oh = window_out(h, kernel[0], stride[0], padding[0]);
                let ow = window_out(w, kernel[1], stride[1], padding[1]);
                pooled(c_out, oh, ow, epi.pool)
            }
            KernelSpec::Dense { out_f, .. } => [out_f, 1, 1],
            KernelSpec::ScaleShift { c, h, w, pool, .. } => pooled(c, h, w, pool),
            KernelSpec::Pool { c, h, w, pool } => pooled(c, h, w, Some(pool)),
            KernelSpec::Unary { len, .. } | KernelSpec::Add { len, .. } => [len, 1, 1],
            KernelSpec::Softmax { classes } => [classes, 1, 1],
            KernelSpec::TrainConv2d {
                h,
                w,
                c_out,
                kernel,
                stride,
                padding,
                ..
            } => [
                c_out,
                window_out(h, kernel[0], stride[0], padding[0]),
                window_out(w, kernel[1], stride[1], padding[1]),
            ],
            KernelSpec::TrainDense { out_f, .. } => [out_f, 1, 1],
            KernelSpec::BnActPool { c, h, w, pool, .. } => pooled(c, h, w, Some(pool)),
            // Weight gradients are not per image; see `buffer_lens`.
            KernelSpec::ConvGradW {
                c_in,
                c_out,
                kernel,
                ..
            } => [c_out * c_in * kernel[0] * kernel[1], 1, 1],
            KernelSpec::DenseGradW { in_f, out_f } => [out_f * in_f, 1, 1],
        }
    }

    /// Output elements per image.
    pub fn out_len(&self) -> usize {
        self.out_chw().iter().product()
    }

    /// The number of floats each buffer must hold for a batch of `n` images, in calling order
    /// (weights in the packed length of [`pack_weight`]).
    pub fn buffer_lens(&self, n: usize) -> Vec<usize> {
        let mut v = vec![n * self.in_len()];
        match *self {
            KernelSpec::Conv2d {
                c_in,
                c_out,
                kernel,
                groups,
                epi,
                ..
            } => {
                v.push(c_out * (c_in / groups.max(1)) * kernel[0] * kernel[1]);
                per_channel(&mut v, epi, c_out);
            }
            KernelSpec::Dense { in_f, out_f, epi } => {
                v.push(in_f * out_f);
                per_channel(&mut v, epi, out_f);
            }
            KernelSpec::ScaleShift { c, .. } => v.extend([c, c]),
            KernelSpec::Add { len, .. } => v.push(n * len),
            KernelSpec::Pool { .. } | KernelSpec::Unary { .. } | KernelSpec::Softmax { .. } => {}
            KernelSpec::TrainConv2d {
                c_in,
                c_out,
                kernel,
                bias,
                stats,
                ..
            } => {
                v.push(c_out * c_in * kernel[0] * kernel[1]);
                return train_lens(v, n * self.out_len(), c_out, bias, stats);
            }
            KernelSpec::TrainDense {
                in_f,
                out_f,
                bias,
                stats,
            } => {
                v.push(in_f * out_f);
                return train_lens(v, n * out_f, out_f, bias, stats);
            }
            KernelSpec::BnActPool { c, h, w, .. } => {
                v.extend([c, c, n * c * h * w, n * self.out_len()]);
                return v;
            }
            KernelSpec::ConvGradW {
                h,
                w,
                c_out,
                kernel,
                padding,
                ..
            } => {
                let oh = window_out(h, kernel[0], 1, padding[0]);
                let ow = window_out(w, kernel[1], 1, padding[1]);
                v.extend([n * c_out * oh * ow, self.out_len()]);
                return v;
            }
            KernelSpec::DenseGradW { out_f, .. } => {
                v.extend([n * out_f, self.out_len()]);
                return v;
            }
        }
        v.push(n * self.out_len());
        v
    }
}

fn train_lens(mut v: Vec<usize>, out: usize, c: usize, bias: bool, stats: bool) -> Vec<usize> {
    if bias {
        v.push(c);
    }
    v.push(out);
    if stats {
        v.push(train_stats(c));
    }
    v
}

fn per_channel(v: &mut Vec<usize>, epi: Epilogue, c: usize) {
    if epi.bias {
        v.push(c);
    }
    if epi.scale_shift {
        v.extend([c, c]);
    }
}

/// Rearranges a weight from PyTorch layout into the layout the compiled kernel reads; the
/// runtime calls it once when weights are bound. Dense weights `[out_f, in_f]` become
/// `[in_f, out_f]` so that consecutive output features sit on the vector lanes; convolution
/// weights are returned unchanged (the kernel broadcasts them one scalar at a time). Other
/// kinds have no weight and get a copy.
pub fn pack_weight(spec: &KernelSpec, weight: &[f32]) -> Vec<f32> {
    match *spec {
        KernelSpec::Dense { in_f, out_f, .. } | KernelSpec::TrainDense { in_f, out_f, .. } => {
            let mut packed = vec![0.0; in_f * out_f];
            for o in 0..out_f {
                for i in 0..in_f {
                    packed[i * out_f + o] = weight[o * in_f + i];
                }
            }
            packed
        }
        _ => weight.to_vec(),
    }
}

/// Floating-point operations per image: two per multiply-accumulate, one per epilogue or
/// elementwise step, and about twenty per `exp`. It drives the GFLOP/s statistics.
pub fn flops(spec: &KernelSpec) -> u64 {
    let act_cost = |a: Activation| match a {
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::Sigmoid | Activation::Tanh => 20,
    };
    let epi_cost =
        |e: &Epilogue| u64::from(e.bias) + 2 * u64::from(e.scale_shift) + act_cost(e.act);
    let pool_cost = |p: Option<Pool2d>, c: usize, h: usize, w: usize| match p {
        Some(p) => {
            let (ph, pw) = p.out_hw(h, w);
            (c * ph * pw * p.kernel[0] * p.kernel[1]) as u64
        }
        None => 0,
    };
    match *spec {
        KernelSpec::Conv2d {
            c_in,
            h,
            w,
            c_out,
            kernel,
            stride,
            padding,
            groups,
            epi,
        } => {
            let oh = window_out(h, kernel[0], stride[0], padding[0]);
            let ow = window_out(w, kernel[1], stride[1], padding[1]);
            let macs = (c_out * oh * ow * (c_in / groups) * kernel[0] * kernel[1]) as u64;
            2 * macs
                + (c_out * oh * ow) as u64 * epi_cost(&epi)
                + pool_cost(epi.pool, c_out, oh, ow)
        }
        KernelSpec::Dense { in_f, out_f, epi } => {
            2 * (in_f * out_f) as u64 + out_f as u64 * epi_cost(&epi)
        }
        KernelSpec::ScaleShift { c, h, w, act, pool } => {
            (c * h * w) as u64 * (2 + act_cost(act)) + pool_cost(pool, c, h, w)
        }
        KernelSpec::Pool { c, h, w, pool } => pool_cost(Some(pool), c, h, w),
        KernelSpec::Unary { len, act } => len as u64 * act_cost(act),
        KernelSpec::Add { len, act } => len as u64 * (1 + act_cost(act)),
        KernelSpec::Softmax { classes } => classes as u64 * 23,
        KernelSpec::TrainConv2d {
            c_in,
            c_out,
            kernel,
            ..
        } => {
            let [_, oh, ow] = spec.out_chw();
            (2 * c_out * oh * ow * c_in * kernel[0] * kernel[1] + 4 * c_out * oh * ow) as u64
        }
        KernelSpec::TrainDense { in_f, out_f, .. } => (2 * in_f * out_f + 4 * out_f) as u64,
        KernelSpec::BnActPool { c, h, w, act, pool } => {
            (c * h * w) as u64 * (2 + act_cost(act)) + pool_cost(Some(pool), c, h, w)
        }
        KernelSpec::ConvGradW {
            c_in,
            h,
            w,
            c_out,
            kernel,
            padding,
        } => {
            let oh = window_out(h, kernel[0], 1, padding[0]);
            let ow = window_out(w, kernel[1], 1, padding[1]);
            2 * (c_out * c_in * kernel[0] * kernel[1] * oh * ow) as u64
        }
        KernelSpec::DenseGradW { in_f, out_f } => 2 * (in_f * out_f) as u64,
    }
}

/// Bytes of activations moved per image (inputs read plus output written, 4 bytes a float);
/// weights and per-channel vectors are excluded because they are shared by the whole batch.
pub fn bytes(spec: &KernelSpec) -> u64 {
    let inputs = match spec {
        KernelSpec::Add { len, .. } => 2 * len,
        _ => spec.in_len(),
    };
    4 * (inputs + spec.out_len()) as u64
}

/// Checks the spec at position `index` so that lowering can assume consistent shapes.
pub(crate) fn validate(index: usize, spec: &KernelSpec) -> Result<(), CodegenError> {
    let pos = |what: &'static str, x: usize| {
        if x == 0 {
            Err(CodegenError::ZeroSize { index, what })
        } else {
            Ok(())
        }
    };
    let window = |x: usize, k: usize, p: usize| {
        if k > x + 2 * p {
            Err(CodegenError::WindowTooLarge {
                index,
                window: k,
                padded: x + 2 * p,
            })
        } else {
            Ok(())
        }
    };
    let pool_ok = |p: &Pool2d, h: usize, w: usize| -> Result<(), CodegenError> {
        for a in 0..2 {
            pos("pool kernel", p.kernel[a])?;
            pos("pool stride", p.stride[a])?;
            if 2 * p.padding[a] > p.kernel[a] {
                return Err(CodegenError::PoolPadding {
                    index,
                    padding: p.padding[a],
                    window: p.kernel[a],
                });
            }
        }
        window(h, p.kernel[0], p.padding[0])?;
        window(w, p.kernel[1], p.padding[1])
    };
    match spec {
        KernelSpec::Conv2d {
            c_in,
            h,
            w,
            c_out,
            kernel,
            stride,
            padding,
            groups,
            epi,
        } => {
            for (what, x) in [
                ("c_in", c_in),
                ("h", h),
                ("w", w),
                ("c_out", c_out),
                ("groups", groups),
            ] {
                pos(what, *x)?;
            }
            for a in 0..2 {
                pos("kernel", kernel[a])?;
                pos("stride", stride[a])?;
            }
            for channels in [*c_in, *c_out] {
                if channels % groups != 0 {
                    return Err(CodegenError::Groups {
                        index,
                        groups: *groups,
                        channels,
                    });
                }
            }
            window(*h, kernel[0], padding[0])?;
            window(*w, kernel[1], padding[1])?;
            if let Some(p) = &epi.pool {
                let oh = window_out(*h, kernel[0], stride[0], padding[0]);
                let ow = window_out(*w, kernel[1], stride[1], padding[1]);
                pool_ok(p, oh, ow)?;
            }
        }
        KernelSpec::Dense { in_f, out_f, epi } => {
            pos("in_f", *in_f)?;
            pos("out_f", *out_f)?;
            if epi.pool.is_some() {
                return Err(CodegenError::PoolOnDense { index });
            }
        }
        KernelSpec::ScaleShift { c, h, w, pool, .. } => {
            for (what, x) in [("c", c), ("h", h), ("w", w)] {
                pos(what, *x)?;
            }
            if let Some(p) = pool {
                pool_ok(p, *h, *w)?;
            }
        }
        KernelSpec::Pool { c, h, w, pool } => {
            for (what, x) in [("c", c), ("h", h), ("w", w)] {
                pos(what, *x)?;
            }
            pool_ok(pool, *h, *w)?;
        }
        KernelSpec::Unary { len, .. } | KernelSpec::Add { len, .. } => pos("len", *len)?,
        KernelSpec::Softmax { classes } => pos("classes", *classes)?,
        KernelSpec::TrainConv2d {
            c_in,
            h,
            w,
            c_out,
            kernel,
            stride,
            padding,
            ..
        } => validate(
            index,
            &KernelSpec::Conv2d {
                c_in: *c_in,
                h: *h,
                w: *w,
                c_out: *c_out,
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
                groups: 1,
                epi: Epilogue::NONE,
            },
        )?,
        KernelSpec::TrainDense { in_f, out_f, .. } | KernelSpec::DenseGradW { in_f, out_f } => {
            pos("in_f", *in_f)?;
            pos("out_f", *out_f)?;
        }
        KernelSpec::BnActPool { c, h, w, pool, .. } => {
            for (what, x) in [("c", c), ("h", h), ("w", w)] {
                pos(what, *x)?;
            }
            pool_ok(pool, *h, *w)?;
        }
        KernelSpec::ConvGradW {
            c_in,
            h,
            w,
            c_out,
            kernel,
            padding,
        } => validate(
            index,
            &KernelSpec::Conv2d {
                c_in: *c_in,
                h: *h,
                w: *w,
                c_out: *c_out,
                kernel: *kernel,
                stride: [1, 1],
                padding: *padding,
                groups: 1,
                epi: Epilogue::NONE,
            },
        )?,
    }
    Ok(())
}
