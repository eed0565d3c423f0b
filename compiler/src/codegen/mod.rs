//! Native code generation for CPU inference kernels with Cranelift. A [`KernelSpec`] names one
//! fused kernel with compile-time shapes; `kernels/` lowers each spec to the small loop-nest IR
//! of [`loop_ir`], and the single emitter in `emit.rs` turns that IR into Cranelift IR, so a new
//! kernel kind is a few dozen lines of loop IR rather than a new emitter. [`JitKernels`] compiles
//! a list of specs into one JIT module and owns the machine code; the private `reference`
//! module is the slow, plain-Rust truth every kernel is tested against.
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
//!
//! # Bounds
//!
//! No kernel reads or writes outside its buffers: [`bounds`] derives from the loop IR the
//! largest and smallest index each kernel touches in each buffer and checks it against
//! [`KernelSpec::buffer_lens`]. [`JitKernels`] does this for every kernel it compiles in
//! debug builds; the runtime checks the buffers it passes against `buffer_lens`.

pub mod bounds;
mod emit;
mod jit;
mod kernels;
pub mod loop_ir;
mod math;
mod reference;
mod reference_train;
mod spec;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounds;
#[cfg(test)]
mod tests_train;
#[cfg(test)]
mod tests_wide;

pub use jit::{JitKernels, KernelFn};

/// The environment variable that sets the vector width of the kernels (see [`Width::host`]).
pub const VECTOR_WIDTH_VAR: &str = "BNC_VECTOR_WIDTH";

/// The vector width kernels are generated for: the lanes of their widest vector loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    /// `F32X4` (SSE/AVX 128-bit registers) everywhere.
    F32x4,
    /// `F32X8` (AVX2 256-bit registers, with FMA) in the loops that have no per-lane code
    /// (`loop_ir::LoopKind::Wide`), `F32X4` in the rest.
    F32x8,
}

impl Width {
    /// The width kernels are built for by default: the widest the host runs (`F32x8` where
    /// the CPU has AVX2 and FMA, which the vendored Cranelift's 256-bit lowering needs, else
    /// `F32x4`), unless the environment variable [`VECTOR_WIDTH_VAR`] asks for `F32x4` (as
    /// oneDNN's `ONEDNN_MAX_CPU_ISA` caps its ISA; for comparing the two). A value
    /// [`Width::requested`] rejects is ignored here; the CLI refuses it at start-up.
    pub fn host() -> Width {
        match Width::requested() {
            Ok(Some(w)) => w,
            _ => Width::widest(),
        }
    }

    /// The widest vectors the host's CPU runs.
    pub fn widest() -> Width {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Width::F32x8;
        }
        Width::F32x4
    }

    /// The width [`VECTOR_WIDTH_VAR`] asks for: `None` if it is unset; an error that names
    /// the value unless it is `4` or `8`, or if it is `8` on a CPU without AVX2 and FMA.
    pub fn requested() -> Result<Option<Width>, String> {
        let Some(value) = std::env::var_os(VECTOR_WIDTH_VAR) else {
            return Ok(None);
        };
        match value.to_str() {
            Some("4") => Ok(Some(Width::F32x4)),
            Some("8") if Width::widest() == Width::F32x8 => Ok(Some(Width::F32x8)),
            Some("8") => Err(format!(
                "{VECTOR_WIDTH_VAR}=8 needs a CPU with AVX2 and FMA, which this one lacks; \
                 use 4 or unset it"
            )),
            _ => Err(format!(
                "{VECTOR_WIDTH_VAR}={} is not a vector width: use 4 (128-bit vectors) or 8 \
                 (256-bit, AVX2), or unset it for the CPU's widest",
                value.to_string_lossy()
            )),
        }
    }

    /// The lanes of the widest vector loops.
    pub fn lanes(self) -> usize {
        match self {
            Width::F32x4 => 4,
            Width::F32x8 => 8,
        }
    }
}
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
    /// Backward of a training layer's pool and activation with its sums, in one pass:
    /// `dy = unpool(grad) · act'(saved)` per element of `[n, c, h, w]`, and per image and
    /// channel `Σdy` into `sums` (`c` floats per image). Without `bn`, `dy` goes to `output`
    /// (the bias gradient is `Σdy`). With `bn` there is no `output`: the sums are `Σdy` and
    /// `Σdy·x̂` (`2c` floats per image), `x̂ = (z - mean[c])·inv_std[c]`, and `BnBackDx`
    /// recomputes `dy` once they are merged. Only disjoint average windows (stride = kernel,
    /// no padding) are supported.
    PoolActBack {
        /// Channels.
        c: usize,
        /// Height of the unpooled plane.
        h: usize,
        /// Width of the unpooled plane.
        w: usize,
        /// The activation whose derivative is taken from its saved output.
        act: Activation,
        /// The pool whose gradient `grad` is, if any.
        pool: Option<Pool2d>,
        /// Also read `z`, `mean` and `inv_std`, write `Σdy·x̂` and no `output`.
        bn: bool,
    },
    /// The train-mode BatchNorm input gradient as a per-channel affine map of `dy` and `z`:
    /// `dz = A·dy + B·(z - mean) + C` with `coef = [A; C], [B; C], [C; C], [mean; C]` (the
    /// runtime folds `γ`, `1/σ`, the batch size and the merged sums into them). Without
    /// `back`, `dy` is the buffer `grad` and `output` may be `grad` itself. With `back`
    /// (the activation and pool of `PoolActBack`), `grad` is the layer's output gradient and
    /// `dy = unpool(grad) · act'(saved)` is recomputed, so nothing between the two passes
    /// stores `dy`, and `output` may be `z` itself.
    BnBackDx {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// The activation and pool whose backward gives `dy`, if it is recomputed.
        back: Option<(Activation, Option<Pool2d>)>,
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

/// Whether [`KernelSpec::PoolActBack`] supports `pool`: disjoint average windows.
pub fn pool_backward_supported(pool: &Pool2d) -> bool {
    pool.kind == PoolKind::Avg && pool.stride == pool.kernel && pool.padding == [0, 0]
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
    /// A pool backward other than disjoint average windows was asked of the JIT.
    #[error(
        "kernel {index}: the pool backward needs an average pool with stride = kernel and no padding"
    )]
    PoolBackward {
        /// Position of the spec in the compiled list.
        index: usize,
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
    /// A kernel would read or write outside a buffer ([`bounds::check`]); this is a
    /// lowering bug, caught before the kernel is compiled.
    #[error(
        "kernel {kernel}: buffer {buffer} is accessed at element {index} \
         but holds {len} floats for a batch of {batch}"
    )]
    OutOfBounds {
        /// The kernel's name.
        kernel: String,
        /// The buffer: its name in the spec's calling order, or `local N`.
        buffer: String,
        /// The offending element index.
        index: i64,
        /// The buffer's length in floats.
        len: usize,
        /// The batch size checked.
        batch: usize,
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

pub use spec::{bytes, flops, pack_weight, pool_act_back_sums};
pub(crate) use spec::{validate, window_out};
