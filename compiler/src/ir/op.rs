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
}

impl Default for BatchNormAttrs {
    fn default() -> Self {
        BatchNormAttrs {
            eps: 1e-5,
            momentum: 0.9,
            running_var: VarConvention::Biased,
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
const AVG_POOL_ATTRS: &[&str] = &["kernel", "stride", "padding", "count_include_pad"];
const MAX_POOL_ATTRS: &[&str] = &["kernel", "stride", "padding"];

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
        attrs: BN_ATTRS,
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
];

impl OpKind {
    /// The table row of this kind.
    pub fn info(self) -> &'static OpInfo {
        // The table lists every kind exactly once (checked by a unit test).
        OPS.iter().find(|i| i.kind == self).unwrap_or(&OPS[0])
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
            Op::BatchNorm(_) | Op::BatchNormTrain(_) | Op::BatchNormInfer(_) => {
                &["weight", "bias", "running_mean", "running_var"]
            }
            _ => &[],
        }
    }

    /// The total operand count: data operands and parameters.
    pub fn arity(&self) -> usize {
        self.data_arity() + self.param_slots().len()
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
            Op::BatchNorm(a) | Op::BatchNormTrain(a) | Op::BatchNormInfer(a) => vec![
                ("eps", format!("{:?}", a.eps)),
                ("momentum", format!("{:?}", a.momentum)),
                ("running_var", a.running_var.to_string()),
            ],
            Op::BnScale { eps } | Op::BnShift { eps } => vec![("eps", format!("{eps:?}"))],
            Op::AvgPool2d(a) | Op::MaxPool2d(a) => {
                let mut v = vec![
                    ("kernel", pair(a.kernel)),
                    ("stride", pair(a.stride)),
                    ("padding", pair(a.padding)),
                ];
                if matches!(self, Op::AvgPool2d(_)) {
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
        assert_eq!(OPS.len(), 19);
    }
}
