//! The closed set of operations. Each op has typed attributes; one table (`OpKind::info`)
//! gives its text name, data arity and summary. Parameters (weights, biases, running
//! statistics) are operands after the data operands, named by `Op::param_slots`.

use std::fmt;

/// How the running variance of a BatchNorm is updated from the batch variance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VarConvention {
    /// The biased batch variance (divide by n), as MXNet/d2l do.
    Biased,
    /// The unbiased batch variance (divide by n-1), as PyTorch does.
    Unbiased,
}

/// Attributes of `conv2d`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dAttrs {
    /// Number of output channels.
    pub channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Zero padding on each side along height and width.
    pub padding: [usize; 2],
    /// Number of groups; input and output channels must be divisible by it.
    pub groups: usize,
    /// Whether the op has a bias parameter.
    pub bias: bool,
}

/// Attributes of `dense`.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseAttrs {
    /// Number of output features.
    pub units: usize,
    /// Whether the op has a bias parameter.
    pub bias: bool,
}

/// Attributes of the BatchNorm family.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormAttrs {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Running-statistics momentum in the MXNet/d2l convention:
    /// `running = momentum * running + (1 - momentum) * batch`.
    pub momentum: f64,
    /// Which batch variance updates the running variance.
    pub running_var: VarConvention,
    /// `batch_norm_train` and `batch_stats` only: the last operand is a per-channel bias
    /// that `redundant-bias` took off the input. It cancels in the output (the batch mean
    /// subtracts it) and has no gradient, but the running mean tracks the mean of the
    /// input with it, so the update adds it to the batch mean.
    pub input_bias: bool,
}

impl Default for BatchNormAttrs {
    fn default() -> Self {
        BatchNormAttrs {
            eps: 1e-5,
            momentum: 0.9,
            running_var: VarConvention::Biased,
            input_bias: false,
        }
    }
}

/// Attributes of `avg_pool2d` and `max_pool2d`.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolAttrs {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width (defaults to the kernel).
    pub stride: [usize; 2],
    /// Implicit padding on each side along height and width.
    pub padding: [usize; 2],
    /// Average pooling only: whether padded zeros count in the divisor (PyTorch's default).
    pub count_include_pad: bool,
}

/// Attributes of `conv2d_grad_input`: the forward convolution's window and the size of
/// its input (which the stride makes ambiguous otherwise); the kernel and the channel
/// counts come from the weight operand.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dGradInputAttrs {
    /// Height and width of the forward input, the result's spatial size.
    pub input_size: [usize; 2],
    /// The forward stride.
    pub stride: [usize; 2],
    /// The forward zero padding on each side.
    pub padding: [usize; 2],
    /// The forward number of groups.
    pub groups: usize,
}

/// Attributes of `conv2d_grad_weight`: the forward convolution's window (the kernel size
/// is the result's spatial size).
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dGradWeightAttrs {
    /// The forward kernel height and width.
    pub kernel: [usize; 2],
    /// The forward stride.
    pub stride: [usize; 2],
    /// The forward zero padding on each side.
    pub padding: [usize; 2],
    /// The forward number of groups.
    pub groups: usize,
}

/// An operation with its attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// 2-D convolution over NCHW input.
    Conv2d(Conv2dAttrs),
    /// Fully connected layer over `[N, features]`.
    Dense(DenseAttrs),
    /// BatchNorm whose mode is not chosen yet (what model files write).
    BatchNorm(BatchNormAttrs),
    /// BatchNorm with batch statistics, updating the running statistics.
    BatchNormTrain(BatchNormAttrs),
    /// BatchNorm with the running statistics.
    BatchNormInfer(BatchNormAttrs),
    /// Logistic sigmoid.
    Sigmoid,
    /// Rectified linear unit.
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// 2-D average pooling.
    AvgPool2d(PoolAttrs),
    /// 2-D max pooling.
    MaxPool2d(PoolAttrs),
    /// Flattens all but the first axis.
    Flatten,
    /// Elementwise sum of two tensors of one shape.
    Add,
    /// Softmax over axis 1 of a rank-2 tensor.
    Softmax,
    /// Mean softmax cross-entropy of logits `[N, K]` against `i32` labels `[N]`.
    SoftmaxCrossEntropy,
    /// Per-channel `x·scale[c] + shift[c]` over axis 1: an inference BatchNorm that was
    /// not folded (operands: x, scale, shift).
    ScaleShift,
    /// Parameter-only: `γ/√(var+ε)` per channel (operands: γ, running_var).
    BnScale {
        /// The BatchNorm's ε.
        eps: f64,
    },
    /// Parameter-only: `β − mean·γ/√(var+ε)` per channel (operands: γ, β, running_mean,
    /// running_var).
    BnShift {
        /// The BatchNorm's ε.
        eps: f64,
    },
    /// Parameter-only: `w[o, ...]·s[o]`, scaling a weight per output channel (axis 0).
    ChannelScale,
    /// Parameter-only: `b·s + t` per channel.
    ChannelAffine,
    /// Backward of the mean `softmax_cross_entropy` (operands: logits, labels): the
    /// gradient of the loss w.r.t. the logits, `(softmax(x) − onehot(labels)) / N`.
    SoftmaxCrossEntropyGrad,
    /// Backward of `softmax` (operands: dy, y): `y·(dy − Σ_j dy_j·y_j)` per row.
    SoftmaxGrad,
    /// Backward of `dense` w.r.t. its input (operands: dy `[N,U]`, w `[U,K]`): `dy·W`.
    DenseGradInput,
    /// Backward of `dense` w.r.t. its weight (operands: dy `[N,U]`, x `[N,K]`): `dyᵀ·x`.
    DenseGradWeight,
    /// Sum over every axis but axis 1 (operands: dy of rank 2 or 4): the gradient of a
    /// conv2d/dense bias or of a BatchNorm's β.
    BiasGrad,
    /// Backward of `conv2d` w.r.t. its input (operands: dy, w): the transposed
    /// convolution.
    Conv2dGradInput(Conv2dGradInputAttrs),
    /// Backward of `conv2d` w.r.t. its weight (operands: dy, x).
    Conv2dGradWeight(Conv2dGradWeightAttrs),
    /// Backward of `batch_norm_train` w.r.t. its input (operands: dy, x, γ), from the
    /// batch statistics of `x`.
    BatchNormTrainGrad {
        /// The BatchNorm's ε.
        eps: f64,
    },
    /// Backward of `batch_norm_train` w.r.t. γ (operands: dy, x): `Σ dy·xhat` per channel.
    BatchNormWeightGrad {
        /// The BatchNorm's ε.
        eps: f64,
    },
    /// Backward of `sigmoid` (operands: dy, y): `dy·y·(1 − y)`.
    SigmoidGrad,
    /// Backward of `relu` (operands: dy, x): `dy` where `x > 0`, else 0.
    ReluGrad,
    /// Backward of `tanh` (operands: dy, y): `dy·(1 − y²)`.
    TanhGrad,
    /// Backward of `avg_pool2d` (operands: dy, x; the forward's attributes).
    AvgPool2dGrad(PoolAttrs),
    /// Backward of `max_pool2d` (operands: dy, x; the forward's attributes): `dy` routed
    /// to the element each window's maximum came from.
    MaxPool2dGrad(PoolAttrs),
    /// Backward of `flatten` (operands: dy, like): `dy` reshaped to the shape of `like`.
    Unflatten,
    /// Fused train-mode BatchNorm (`fuse-bn-train`; operands: x, running_mean,
    /// running_var, and the input bias with `input_bias`): the batch statistics of `x`
    /// (rank 2 or 4) as `f32[2, C]`, row 0 the mean and row 1 the biased variance,
    /// computed in the epilogue of the kernel that produces `x`. In train mode it updates
    /// the running statistics from them, as `batch_norm_train` does (the BatchNorm's
    /// attributes).
    BatchStats(BatchNormAttrs),
    /// Fused train-mode BatchNorm: `γ·(x − mean)/√(var + ε) + β` from `batch_stats`
    /// (operands: x, stats, γ, β).
    BatchNormApply {
        /// The BatchNorm's ε.
        eps: f64,
    },
    /// Fused BatchNorm backward, one reduction pass (operands: dy, x, stats): `f32[2, C]`
    /// with row 0 `Σ dy` (= dβ) and row 1 `Σ dy·x̂` (= dγ).
    BatchNormGradSums {
        /// The BatchNorm's ε.
        eps: f64,
    },
    /// Fused BatchNorm backward, one elementwise pass (operands: dy, x, stats, sums, γ):
    /// `dx = γ/(m·√(var + ε))·(m·dy − Σdy − x̂·Σdy·x̂)` over the `m` values per channel.
    BatchNormGradApply {
        /// The BatchNorm's ε.
        eps: f64,
    },
    /// Row `index` of a rank-2 tensor `[R, C]`, as `[C]`.
    SelectRow {
        /// The row.
        index: usize,
    },
}

/// The kind of an op, without attributes: the key of the op table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// See [`Op::Conv2d`].
    Conv2d,
    /// See [`Op::Dense`].
    Dense,
    /// See [`Op::BatchNorm`].
    BatchNorm,
    /// See [`Op::BatchNormTrain`].
    BatchNormTrain,
    /// See [`Op::BatchNormInfer`].
    BatchNormInfer,
    /// See [`Op::Sigmoid`].
    Sigmoid,
    /// See [`Op::Relu`].
    Relu,
    /// See [`Op::Tanh`].
    Tanh,
    /// See [`Op::AvgPool2d`].
    AvgPool2d,
    /// See [`Op::MaxPool2d`].
    MaxPool2d,
    /// See [`Op::Flatten`].
    Flatten,
    /// See [`Op::Add`].
    Add,
    /// See [`Op::Softmax`].
    Softmax,
    /// See [`Op::SoftmaxCrossEntropy`].
    SoftmaxCrossEntropy,
    /// See [`Op::ScaleShift`].
    ScaleShift,
    /// See [`Op::BnScale`].
    BnScale,
    /// See [`Op::BnShift`].
    BnShift,
    /// See [`Op::ChannelScale`].
    ChannelScale,
    /// See [`Op::ChannelAffine`].
    ChannelAffine,
    /// See [`Op::SoftmaxCrossEntropyGrad`].
    SoftmaxCrossEntropyGrad,
    /// See [`Op::SoftmaxGrad`].
    SoftmaxGrad,
    /// See [`Op::DenseGradInput`].
    DenseGradInput,
    /// See [`Op::DenseGradWeight`].
    DenseGradWeight,
    /// See [`Op::BiasGrad`].
    BiasGrad,
    /// See [`Op::Conv2dGradInput`].
    Conv2dGradInput,
    /// See [`Op::Conv2dGradWeight`].
    Conv2dGradWeight,
    /// See [`Op::BatchNormTrainGrad`].
    BatchNormTrainGrad,
    /// See [`Op::BatchNormWeightGrad`].
    BatchNormWeightGrad,
    /// See [`Op::SigmoidGrad`].
    SigmoidGrad,
    /// See [`Op::ReluGrad`].
    ReluGrad,
    /// See [`Op::TanhGrad`].
    TanhGrad,
    /// See [`Op::AvgPool2dGrad`].
    AvgPool2dGrad,
    /// See [`Op::MaxPool2dGrad`].
    MaxPool2dGrad,
    /// See [`Op::Unflatten`].
    Unflatten,
    /// See [`Op::BatchStats`].
    BatchStats,
    /// See [`Op::BatchNormApply`].
    BatchNormApply,
    /// See [`Op::BatchNormGradSums`].
    BatchNormGradSums,
    /// See [`Op::BatchNormGradApply`].
    BatchNormGradApply,
    /// See [`Op::SelectRow`].
    SelectRow,
}

/// One row of the op table.
#[derive(Debug)]
pub struct OpInfo {
    /// The kind.
    pub kind: OpKind,
    /// The text-format name.
    pub name: &'static str,
    /// Number of data operands (parameters come after them).
    pub data_arity: usize,
    /// Attribute names in canonical print order.
    pub attrs: &'static [&'static str],
    /// One line for `docs/IR.md` and error messages.
    pub summary: &'static str,
}

const CONV_ATTRS: &[&str] = &["channels", "kernel", "stride", "padding", "groups", "bias"];
const BN_ATTRS: &[&str] = &["eps", "momentum", "running_var"];
const BN_TRAIN_ATTRS: &[&str] = &["eps", "momentum", "running_var", "input_bias"];
const AVG_POOL_ATTRS: &[&str] = &["kernel", "stride", "padding", "count_include_pad"];
const MAX_POOL_ATTRS: &[&str] = &["kernel", "stride", "padding"];
const CONV_GRAD_INPUT_ATTRS: &[&str] = &["input_size", "stride", "padding", "groups"];
const CONV_GRAD_WEIGHT_ATTRS: &[&str] = &["kernel", "stride", "padding", "groups"];

/// The op table, in documentation order.
pub const OPS: &[OpInfo] = &[
    OpInfo {
        kind: OpKind::Conv2d,
        name: "conv2d",
        data_arity: 1,
        attrs: CONV_ATTRS,
        summary: "2-D convolution, NCHW, weight [out, in/groups, kh, kw]",
    },
    OpInfo {
        kind: OpKind::Dense,
        name: "dense",
        data_arity: 1,
        attrs: &["units", "bias"],
        summary: "fully connected layer, weight [out, in]",
    },
    OpInfo {
        kind: OpKind::BatchNorm,
        name: "batch_norm",
        data_arity: 1,
        attrs: BN_ATTRS,
        summary: "batch normalization over axis 0 (rank 2) or axes 0,2,3 (rank 4)",
    },
    OpInfo {
        kind: OpKind::BatchNormTrain,
        name: "batch_norm_train",
        data_arity: 1,
        attrs: BN_TRAIN_ATTRS,
        summary: "batch normalization with batch statistics, updating running statistics",
    },
    OpInfo {
        kind: OpKind::BatchNormInfer,
        name: "batch_norm_infer",
        data_arity: 1,
        attrs: BN_ATTRS,
        summary: "batch normalization with running statistics",
    },
    OpInfo {
        kind: OpKind::Sigmoid,
        name: "sigmoid",
        data_arity: 1,
        attrs: &[],
        summary: "logistic sigmoid",
    },
    OpInfo {
        kind: OpKind::Relu,
        name: "relu",
        data_arity: 1,
        attrs: &[],
        summary: "rectified linear unit",
    },
    OpInfo {
        kind: OpKind::Tanh,
        name: "tanh",
        data_arity: 1,
        attrs: &[],
        summary: "hyperbolic tangent",
    },
    OpInfo {
        kind: OpKind::AvgPool2d,
        name: "avg_pool2d",
        data_arity: 1,
        attrs: AVG_POOL_ATTRS,
        summary: "2-D average pooling",
    },
    OpInfo {
        kind: OpKind::MaxPool2d,
        name: "max_pool2d",
        data_arity: 1,
        attrs: MAX_POOL_ATTRS,
        summary: "2-D max pooling",
    },
    OpInfo {
        kind: OpKind::Flatten,
        name: "flatten",
        data_arity: 1,
        attrs: &[],
        summary: "flatten all axes after the first",
    },
    OpInfo {
        kind: OpKind::Add,
        name: "add",
        data_arity: 2,
        attrs: &[],
        summary: "elementwise sum of two tensors of one shape",
    },
    OpInfo {
        kind: OpKind::Softmax,
        name: "softmax",
        data_arity: 1,
        attrs: &[],
        summary: "softmax over axis 1 of a rank-2 tensor",
    },
    OpInfo {
        kind: OpKind::SoftmaxCrossEntropy,
        name: "softmax_cross_entropy",
        data_arity: 2,
        attrs: &[],
        summary: "mean softmax cross-entropy of logits [N,K] against i32 labels [N]",
    },
    OpInfo {
        kind: OpKind::ScaleShift,
        name: "scale_shift",
        data_arity: 3,
        attrs: &[],
        summary: "per-channel x*scale[c] + shift[c] over axis 1 (an unfolded inference BatchNorm)",
    },
    OpInfo {
        kind: OpKind::BnScale,
        name: "bn_scale",
        data_arity: 2,
        attrs: &["eps"],
        summary: "parameter-only: gamma/sqrt(var+eps) per channel",
    },
    OpInfo {
        kind: OpKind::BnShift,
        name: "bn_shift",
        data_arity: 4,
        attrs: &["eps"],
        summary: "parameter-only: beta - mean*gamma/sqrt(var+eps) per channel",
    },
    OpInfo {
        kind: OpKind::ChannelScale,
        name: "channel_scale",
        data_arity: 2,
        attrs: &[],
        summary: "parameter-only: w[o,...]*s[o], a weight scaled per output channel",
    },
    OpInfo {
        kind: OpKind::ChannelAffine,
        name: "channel_affine",
        data_arity: 3,
        attrs: &[],
        summary: "parameter-only: b*s + t per channel",
    },
    OpInfo {
        kind: OpKind::SoftmaxCrossEntropyGrad,
        name: "softmax_cross_entropy_grad",
        data_arity: 2,
        attrs: &[],
        summary: "backward of softmax_cross_entropy: (softmax(logits) - onehot(labels)) / N",
    },
    OpInfo {
        kind: OpKind::SoftmaxGrad,
        name: "softmax_grad",
        data_arity: 2,
        attrs: &[],
        summary: "backward of softmax: y*(dy - sum(dy*y)) per row",
    },
    OpInfo {
        kind: OpKind::DenseGradInput,
        name: "dense_grad_input",
        data_arity: 2,
        attrs: &[],
        summary: "backward of dense w.r.t. its input: dy [N,U] times w [U,K]",
    },
    OpInfo {
        kind: OpKind::DenseGradWeight,
        name: "dense_grad_weight",
        data_arity: 2,
        attrs: &[],
        summary: "backward of dense w.r.t. its weight: dy^T [U,N] times x [N,K]",
    },
    OpInfo {
        kind: OpKind::BiasGrad,
        name: "bias_grad",
        data_arity: 1,
        attrs: &[],
        summary: "sum over every axis but 1: the gradient of a bias or of a BatchNorm beta",
    },
    OpInfo {
        kind: OpKind::Conv2dGradInput,
        name: "conv2d_grad_input",
        data_arity: 2,
        attrs: CONV_GRAD_INPUT_ATTRS,
        summary: "backward of conv2d w.r.t. its input (dy, w): the transposed convolution",
    },
    OpInfo {
        kind: OpKind::Conv2dGradWeight,
        name: "conv2d_grad_weight",
        data_arity: 2,
        attrs: CONV_GRAD_WEIGHT_ATTRS,
        summary: "backward of conv2d w.r.t. its weight (dy, x)",
    },
    OpInfo {
        kind: OpKind::BatchNormTrainGrad,
        name: "batch_norm_train_grad",
        data_arity: 3,
        attrs: &["eps"],
        summary: "backward of batch_norm_train w.r.t. its input (dy, x, gamma), batch statistics",
    },
    OpInfo {
        kind: OpKind::BatchNormWeightGrad,
        name: "batch_norm_weight_grad",
        data_arity: 2,
        attrs: &["eps"],
        summary: "backward of batch_norm_train w.r.t. gamma (dy, x): sum of dy*xhat per channel",
    },
    OpInfo {
        kind: OpKind::SigmoidGrad,
        name: "sigmoid_grad",
        data_arity: 2,
        attrs: &[],
        summary: "backward of sigmoid (dy, y): dy*y*(1-y)",
    },
    OpInfo {
        kind: OpKind::ReluGrad,
        name: "relu_grad",
        data_arity: 2,
        attrs: &[],
        summary: "backward of relu (dy, x): dy where x > 0, else 0",
    },
    OpInfo {
        kind: OpKind::TanhGrad,
        name: "tanh_grad",
        data_arity: 2,
        attrs: &[],
        summary: "backward of tanh (dy, y): dy*(1-y^2)",
    },
    OpInfo {
        kind: OpKind::AvgPool2dGrad,
        name: "avg_pool2d_grad",
        data_arity: 2,
        attrs: AVG_POOL_ATTRS,
        summary: "backward of avg_pool2d (dy, x)",
    },
    OpInfo {
        kind: OpKind::MaxPool2dGrad,
        name: "max_pool2d_grad",
        data_arity: 2,
        attrs: MAX_POOL_ATTRS,
        summary: "backward of max_pool2d (dy, x): dy routed to each window's maximum",
    },
    OpInfo {
        kind: OpKind::Unflatten,
        name: "unflatten",
        data_arity: 2,
        attrs: &[],
        summary: "backward of flatten (dy, like): dy reshaped to the shape of like",
    },
    OpInfo {
        kind: OpKind::BatchStats,
        name: "batch_stats",
        data_arity: 3,
        attrs: BN_TRAIN_ATTRS,
        summary: "fused BN (x, running_mean, running_var[, input_bias]): batch mean and biased variance as f32[2,C], updating the running statistics",
    },
    OpInfo {
        kind: OpKind::BatchNormApply,
        name: "batch_norm_apply",
        data_arity: 4,
        attrs: &["eps"],
        summary: "fused BN: gamma*(x-mean)/sqrt(var+eps)+beta (x, stats, gamma, beta)",
    },
    OpInfo {
        kind: OpKind::BatchNormGradSums,
        name: "batch_norm_grad_sums",
        data_arity: 3,
        attrs: &["eps"],
        summary: "fused BN backward (dy, x, stats): f32[2,C] of sum(dy) and sum(dy*xhat)",
    },
    OpInfo {
        kind: OpKind::BatchNormGradApply,
        name: "batch_norm_grad_apply",
        data_arity: 5,
        attrs: &["eps"],
        summary: "fused BN backward (dy, x, stats, sums, gamma): the input gradient",
    },
    OpInfo {
        kind: OpKind::SelectRow,
        name: "select_row",
        data_arity: 1,
        attrs: &["index"],
        summary: "row `index` of a rank-2 tensor [R,C], as [C]",
    },
];

impl OpKind {
    /// The table row of this kind.
    pub fn info(self) -> &'static OpInfo {
        // The table lists every kind exactly once (checked by a unit test).
        OPS.iter().find(|i| i.kind == self).unwrap_or(&OPS[0])
    }

    /// Whether ops of this kind are backward ops (see [`Op::is_backward`]).
    pub fn is_backward(self) -> bool {
        // The backward ops are the table's rows from `softmax_cross_entropy_grad` to
        // `unflatten`; the fused BatchNorm ops follow them.
        let at = |k: OpKind| OPS.iter().position(|i| i.kind == k).unwrap_or(OPS.len());
        let (first, last) = (at(OpKind::SoftmaxCrossEntropyGrad), at(OpKind::Unflatten));
        OPS[first..=last.min(OPS.len() - 1)]
            .iter()
            .any(|i| i.kind == self)
    }

    /// Looks a kind up by its text name.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OPS.iter().find(|i| i.name == name).map(|i| i.kind)
    }
}

impl Op {
    /// The kind of this op.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Conv2d(_) => OpKind::Conv2d,
            Op::Dense(_) => OpKind::Dense,
            Op::BatchNorm(_) => OpKind::BatchNorm,
            Op::BatchNormTrain(_) => OpKind::BatchNormTrain,
            Op::BatchNormInfer(_) => OpKind::BatchNormInfer,
            Op::Sigmoid => OpKind::Sigmoid,
            Op::Relu => OpKind::Relu,
            Op::Tanh => OpKind::Tanh,
            Op::AvgPool2d(_) => OpKind::AvgPool2d,
            Op::MaxPool2d(_) => OpKind::MaxPool2d,
            Op::Flatten => OpKind::Flatten,
            Op::Add => OpKind::Add,
            Op::Softmax => OpKind::Softmax,
            Op::SoftmaxCrossEntropy => OpKind::SoftmaxCrossEntropy,
            Op::ScaleShift => OpKind::ScaleShift,
            Op::BnScale { .. } => OpKind::BnScale,
            Op::BnShift { .. } => OpKind::BnShift,
            Op::ChannelScale => OpKind::ChannelScale,
            Op::ChannelAffine => OpKind::ChannelAffine,
            Op::SoftmaxCrossEntropyGrad => OpKind::SoftmaxCrossEntropyGrad,
            Op::SoftmaxGrad => OpKind::SoftmaxGrad,
            Op::DenseGradInput => OpKind::DenseGradInput,
            Op::DenseGradWeight => OpKind::DenseGradWeight,
            Op::BiasGrad => OpKind::BiasGrad,
            Op::Conv2dGradInput(_) => OpKind::Conv2dGradInput,
            Op::Conv2dGradWeight(_) => OpKind::Conv2dGradWeight,
            Op::BatchNormTrainGrad { .. } => OpKind::BatchNormTrainGrad,
            Op::BatchNormWeightGrad { .. } => OpKind::BatchNormWeightGrad,
            Op::SigmoidGrad => OpKind::SigmoidGrad,
            Op::ReluGrad => OpKind::ReluGrad,
            Op::TanhGrad => OpKind::TanhGrad,
            Op::AvgPool2dGrad(_) => OpKind::AvgPool2dGrad,
            Op::MaxPool2dGrad(_) => OpKind::MaxPool2dGrad,
            Op::Unflatten => OpKind::Unflatten,
            Op::BatchStats(_) => OpKind::BatchStats,
            Op::BatchNormApply { .. } => OpKind::BatchNormApply,
            Op::BatchNormGradSums { .. } => OpKind::BatchNormGradSums,
            Op::BatchNormGradApply { .. } => OpKind::BatchNormGradApply,
            Op::SelectRow { .. } => OpKind::SelectRow,
        }
    }

    /// The text-format name.
    pub fn name(&self) -> &'static str {
        self.kind().info().name
    }

    /// The number of data operands.
    pub fn data_arity(&self) -> usize {
        self.kind().info().data_arity
    }

    /// The parameter operands, by suffix, in slot order after the data operands.
    /// A parameter of node `conv1` in slot "weight" is named `conv1.weight`.
    pub fn param_slots(&self) -> &'static [&'static str] {
        match self {
            Op::Conv2d(Conv2dAttrs { bias: true, .. })
            | Op::Dense(DenseAttrs { bias: true, .. }) => &["weight", "bias"],
            Op::Conv2d(_) | Op::Dense(_) => &["weight"],
            Op::BatchNormTrain(BatchNormAttrs {
                input_bias: true, ..
            }) => &[
                "weight",
                "bias",
                "running_mean",
                "running_var",
                "input_bias",
            ],
            Op::BatchNorm(_) | Op::BatchNormTrain(_) | Op::BatchNormInfer(_) => {
                &["weight", "bias", "running_mean", "running_var"]
            }
            Op::BatchStats(BatchNormAttrs {
                input_bias: true, ..
            }) => &["input_bias"],
            _ => &[],
        }
    }

    /// The total operand count: data operands and parameters.
    pub fn arity(&self) -> usize {
        self.data_arity() + self.param_slots().len()
    }

    /// Whether this is a backward op, which `autodiff` emits (and which has no gradient
    /// rule of its own).
    pub fn is_backward(&self) -> bool {
        self.kind().is_backward()
    }

    /// The BatchNorm attributes of any BatchNorm op.
    pub fn batch_norm_attrs(&self) -> Option<&BatchNormAttrs> {
        match self {
            Op::BatchNorm(a) | Op::BatchNormTrain(a) | Op::BatchNormInfer(a) => Some(a),
            _ => None,
        }
    }

    /// Attributes as `(name, printed value)` pairs in canonical order.
    pub fn attrs(&self) -> Vec<(&'static str, String)> {
        let pair = |v: [usize; 2]| format!("[{},{}]", v[0], v[1]);
        match self {
            Op::Conv2d(a) => vec![
                ("channels", a.channels.to_string()),
                ("kernel", pair(a.kernel)),
                ("stride", pair(a.stride)),
                ("padding", pair(a.padding)),
                ("groups", a.groups.to_string()),
                ("bias", a.bias.to_string()),
            ],
            Op::Dense(a) => vec![("units", a.units.to_string()), ("bias", a.bias.to_string())],
            Op::BatchNorm(a) | Op::BatchNormInfer(a) => vec![
                ("eps", format!("{:?}", a.eps)),
                ("momentum", format!("{:?}", a.momentum)),
                ("running_var", a.running_var.to_string()),
            ],
            Op::BatchNormTrain(a) | Op::BatchStats(a) => vec![
                ("eps", format!("{:?}", a.eps)),
                ("momentum", format!("{:?}", a.momentum)),
                ("running_var", a.running_var.to_string()),
                ("input_bias", a.input_bias.to_string()),
            ],
            Op::BnScale { eps }
            | Op::BnShift { eps }
            | Op::BatchNormTrainGrad { eps }
            | Op::BatchNormWeightGrad { eps }
            | Op::BatchNormApply { eps }
            | Op::BatchNormGradSums { eps }
            | Op::BatchNormGradApply { eps } => vec![("eps", format!("{eps:?}"))],
            Op::SelectRow { index } => vec![("index", index.to_string())],
            Op::Conv2dGradInput(a) => vec![
                ("input_size", pair(a.input_size)),
                ("stride", pair(a.stride)),
                ("padding", pair(a.padding)),
                ("groups", a.groups.to_string()),
            ],
            Op::Conv2dGradWeight(a) => vec![
                ("kernel", pair(a.kernel)),
                ("stride", pair(a.stride)),
                ("padding", pair(a.padding)),
                ("groups", a.groups.to_string()),
            ],
            Op::AvgPool2d(a) | Op::MaxPool2d(a) | Op::AvgPool2dGrad(a) | Op::MaxPool2dGrad(a) => {
                let mut v = vec![
                    ("kernel", pair(a.kernel)),
                    ("stride", pair(a.stride)),
                    ("padding", pair(a.padding)),
                ];
                if matches!(self, Op::AvgPool2d(_) | Op::AvgPool2dGrad(_)) {
                    v.push(("count_include_pad", a.count_include_pad.to_string()));
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for VarConvention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VarConvention::Biased => "biased",
            VarConvention::Unbiased => "unbiased",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_kind_once_with_a_unique_name() {
        for (i, a) in OPS.iter().enumerate() {
            assert_eq!(a.kind.info().name, a.name);
            assert_eq!(OpKind::from_name(a.name), Some(a.kind));
            for b in &OPS[i + 1..] {
                assert_ne!(a.kind, b.kind);
                assert_ne!(a.name, b.name);
            }
        }
        assert_eq!(OPS.len(), 39);
    }
}
