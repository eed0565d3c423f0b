//! Shape rules: for each op, the result type and the parameter types from the types of
//! the data operands. Channel counts and parameter shapes are inferred here, so model
//! files never write them.

use thiserror::Error;

#[path = "shape_backward.rs"]
mod backward;

use super::op::{Conv2dAttrs, Op, PoolAttrs};
use super::types::{Dim, Span, TensorType};
use crate::DType;

/// Largest number of elements a tensor may have per batch item; bigger shapes are refused
/// at compile time rather than exhausting memory at run time.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Why an op cannot accept the types of its operands.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ShapeErrorKind {
    /// The operand has the wrong rank.
    #[error("{op} expects a rank-{expected} input, got {got}")]
    Rank {
        /// The op's text name.
        op: &'static str,
        /// The ranks it accepts, as text (`4`, `2 or 4`).
        expected: &'static str,
        /// The operand's type.
        got: TensorType,
    },
    /// The operand has the wrong element type.
    #[error("{op} expects {expected} operand {slot}, got {got}")]
    DType {
        /// The op's text name.
        op: &'static str,
        /// The accepted element type.
        expected: DType,
        /// The operand slot.
        slot: usize,
        /// The operand's type.
        got: TensorType,
    },
    /// A dimension the op needs to know at compile time is symbolic.
    #[error("{op} needs dimension {axis} of {got} to be a fixed size")]
    Symbolic {
        /// The op's text name.
        op: &'static str,
        /// The axis.
        axis: usize,
        /// The operand's type.
        got: TensorType,
    },
    /// The window does not fit into the padded input.
    #[error("{op} kernel {kh}x{kw} is larger than the padded {h}x{w} input")]
    KernelTooLarge {
        /// The op's text name.
        op: &'static str,
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// Padded input height.
        h: usize,
        /// Padded input width.
        w: usize,
    },
    /// Padding of a pool window must be at most half the window.
    #[error("{op} padding {pad} is more than half the kernel {kernel}")]
    PoolPadding {
        /// The op's text name.
        op: &'static str,
        /// The padding.
        pad: usize,
        /// The kernel size.
        kernel: usize,
    },
    /// Channels not divisible by the number of groups.
    #[error("conv2d {what} channels {channels} are not divisible by groups {groups}")]
    Groups {
        /// "input" or "output".
        what: &'static str,
        /// The channel count.
        channels: usize,
        /// The group count.
        groups: usize,
    },
    /// The two operands of an elementwise op differ in type.
    #[error("{op} of mismatched types {lhs} and {rhs}")]
    Mismatch {
        /// The op's text name.
        op: &'static str,
        /// The first operand's type.
        lhs: TensorType,
        /// The second operand's type.
        rhs: TensorType,
    },
    /// Labels must be `i32[N]` with the batch of the logits.
    #[error("softmax_cross_entropy labels must be i32[{batch}], got {got}")]
    Labels {
        /// The batch dimension of the logits.
        batch: Dim,
        /// The labels' type.
        got: TensorType,
    },
    /// A parameter was declared with a type other than the one the op needs.
    #[error("parameter `{name}` has type {got}, expected {expected}")]
    Param {
        /// The parameter's name.
        name: String,
        /// Its declared type.
        got: TensorType,
        /// The type the op needs.
        expected: TensorType,
    },
    /// A result type written in the text disagrees with the shape rule.
    #[error("declared type {got} of `{name}` does not match the inferred {expected}")]
    Declared {
        /// The node's name.
        name: String,
        /// The declared type.
        got: TensorType,
        /// The inferred type.
        expected: TensorType,
    },
    /// An operand has no type, because it is a parameter used outside a parameter slot
    /// before any op inferred its type.
    #[error("operand `{name}` has no type")]
    Untyped {
        /// The operand's name.
        name: String,
    },
    /// A backward op's incoming gradient has another spatial size than the forward
    /// window gives.
    #[error("{op} expects a gradient of spatial size {h}x{w}, got {got}")]
    GradSize {
        /// The op's text name.
        op: &'static str,
        /// The height the forward window gives.
        h: usize,
        /// The width the forward window gives.
        w: usize,
        /// The incoming gradient's type.
        got: TensorType,
    },
    /// A tensor would have more than [`MAX_ELEMENTS`] elements per batch item.
    #[error("{ty} is too large: more than {max} elements", max = MAX_ELEMENTS)]
    TooLarge {
        /// The offending type.
        ty: TensorType,
    },
}

/// A shape error at a node.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{kind}")]
pub struct ShapeError {
    /// Where the node was written.
    pub span: Span,
    /// The node's name.
    pub node: String,
    /// What is wrong (boxed: the kinds carry whole types).
    pub kind: Box<ShapeErrorKind>,
}

/// The inferred types of an op: its result and its parameters in slot order.
#[derive(Clone, Debug, PartialEq)]
pub struct Inferred {
    /// The result type.
    pub result: TensorType,
    /// The parameter types, in the order of `Op::param_slots`.
    pub params: Vec<TensorType>,
}

type R<T> = Result<T, ShapeErrorKind>;

fn expect_f32(op: &'static str, slot: usize, t: &TensorType) -> R<()> {
    if t.dtype == DType::F32 {
        Ok(())
    } else {
        Err(ShapeErrorKind::DType {
            op,
            expected: DType::F32,
            slot,
            got: t.clone(),
        })
    }
}

fn expect_rank(op: &'static str, t: &TensorType, ranks: &[usize], expected: &'static str) -> R<()> {
    if ranks.contains(&t.rank()) {
        Ok(())
    } else {
        Err(ShapeErrorKind::Rank {
            op,
            expected,
            got: t.clone(),
        })
    }
}

fn fixed(op: &'static str, t: &TensorType, axis: usize) -> R<usize> {
    t.dims[axis]
        .fixed()
        .ok_or_else(|| ShapeErrorKind::Symbolic {
            op,
            axis,
            got: t.clone(),
        })
}

/// Output size of a sliding window along one axis, or `None` when it does not fit.
pub fn window_out(size: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    let padded = size + 2 * pad;
    (padded >= kernel && stride > 0).then(|| (padded - kernel) / stride + 1)
}

fn window(
    op: &'static str,
    t: &TensorType,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> R<(usize, usize)> {
    let (h, w) = (fixed(op, t, 2)?, fixed(op, t, 3)?);
    match (
        window_out(h, kernel[0], stride[0], padding[0]),
        window_out(w, kernel[1], stride[1], padding[1]),
    ) {
        (Some(oh), Some(ow)) => Ok((oh, ow)),
        _ => Err(ShapeErrorKind::KernelTooLarge {
            op,
            kh: kernel[0],
            kw: kernel[1],
            h: h + 2 * padding[0],
            w: w + 2 * padding[1],
        }),
    }
}

fn conv2d(a: &Conv2dAttrs, x: &TensorType) -> R<Inferred> {
    let op = "conv2d";
    expect_f32(op, 0, x)?;
    expect_rank(op, x, &[4], "4")?;
    let c = fixed(op, x, 1)?;
    for (what, channels) in [("input", c), ("output", a.channels)] {
        if channels % a.groups != 0 {
            return Err(ShapeErrorKind::Groups {
                what,
                channels,
                groups: a.groups,
            });
        }
    }
    let (oh, ow) = window(op, x, a.kernel, a.stride, a.padding)?;
    let result = TensorType::f32(vec![
        x.dims[0].clone(),
        Dim::Fixed(a.channels),
        Dim::Fixed(oh),
        Dim::Fixed(ow),
    ]);
    let mut params = vec![TensorType::f32_fixed(&[
        a.channels,
        c / a.groups,
        a.kernel[0],
        a.kernel[1],
    ])];
    if a.bias {
        params.push(TensorType::f32_fixed(&[a.channels]));
    }
    Ok(Inferred { result, params })
}

fn pool(op: &'static str, a: &PoolAttrs, x: &TensorType) -> R<Inferred> {
    expect_f32(op, 0, x)?;
    expect_rank(op, x, &[4], "4")?;
    for i in 0..2 {
        if 2 * a.padding[i] > a.kernel[i] {
            return Err(ShapeErrorKind::PoolPadding {
                op,
                pad: a.padding[i],
                kernel: a.kernel[i],
            });
        }
    }
    let (oh, ow) = window(op, x, a.kernel, a.stride, a.padding)?;
    let mut dims = x.dims.clone();
    dims[2] = Dim::Fixed(oh);
    dims[3] = Dim::Fixed(ow);
    Ok(Inferred {
        result: TensorType::f32(dims),
        params: Vec::new(),
    })
}

/// Infers the result and parameter types of `op` from its data operand types.
pub fn infer(op: &Op, data: &[&TensorType]) -> Result<Inferred, ShapeErrorKind> {
    let name = op.name();
    let inferred = match op {
        Op::Conv2d(a) => conv2d(a, data[0])?,
        Op::Dense(a) => {
            let x = data[0];
            expect_f32(name, 0, x)?;
            expect_rank(name, x, &[2], "2")?;
            let k = fixed(name, x, 1)?;
            let mut params = vec![TensorType::f32_fixed(&[a.units, k])];
            if a.bias {
                params.push(TensorType::f32_fixed(&[a.units]));
            }
            Inferred {
                result: TensorType::f32(vec![x.dims[0].clone(), Dim::Fixed(a.units)]),
                params,
            }
        }
        Op::BatchNorm(_) | Op::BatchNormTrain(_) | Op::BatchNormInfer(_) => {
            let x = data[0];
            expect_f32(name, 0, x)?;
            expect_rank(name, x, &[2, 4], "2 or 4")?;
            let c = fixed(name, x, 1)?;
            Inferred {
                result: x.clone(),
                params: vec![TensorType::f32_fixed(&[c]); op.param_slots().len()],
            }
        }
        Op::Sigmoid | Op::Relu | Op::Tanh => {
            expect_f32(name, 0, data[0])?;
            Inferred {
                result: data[0].clone(),
                params: Vec::new(),
            }
        }
        Op::AvgPool2d(a) | Op::MaxPool2d(a) => pool(name, a, data[0])?,
        Op::Flatten => {
            let x = data[0];
            if x.rank() < 2 {
                return Err(ShapeErrorKind::Rank {
                    op: name,
                    expected: "2 or more",
                    got: x.clone(),
                });
            }
            let mut n = 1usize;
            for axis in 1..x.rank() {
                n = n.saturating_mul(fixed(name, x, axis)?);
            }
            Inferred {
                result: TensorType {
                    dtype: x.dtype,
                    dims: vec![x.dims[0].clone(), Dim::Fixed(n)],
                },
                params: Vec::new(),
            }
        }
        Op::Add => {
            expect_f32(name, 0, data[0])?;
            expect_f32(name, 1, data[1])?;
            if data[0] != data[1] {
                return Err(ShapeErrorKind::Mismatch {
                    op: name,
                    lhs: data[0].clone(),
                    rhs: data[1].clone(),
                });
            }
            Inferred {
                result: data[0].clone(),
                params: Vec::new(),
            }
        }
        Op::Softmax => {
            expect_f32(name, 0, data[0])?;
            expect_rank(name, data[0], &[2], "2")?;
            Inferred {
                result: data[0].clone(),
                params: Vec::new(),
            }
        }
        Op::ScaleShift => {
            let x = data[0];
            expect_f32(name, 0, x)?;
            expect_rank(name, x, &[2, 4], "2 or 4")?;
            let c = TensorType::f32_fixed(&[fixed(name, x, 1)?]);
            for &t in &data[1..] {
                if *t != c {
                    return Err(ShapeErrorKind::Mismatch {
                        op: name,
                        lhs: c,
                        rhs: t.clone(),
                    });
                }
            }
            Inferred {
                result: x.clone(),
                params: Vec::new(),
            }
        }
        Op::BnScale { .. } | Op::BnShift { .. } | Op::ChannelAffine => {
            let c = data[0];
            expect_rank(name, c, &[1], "1")?;
            for &t in data {
                if t != c || t.dtype != DType::F32 {
                    return Err(ShapeErrorKind::Mismatch {
                        op: name,
                        lhs: c.clone(),
                        rhs: t.clone(),
                    });
                }
            }
            Inferred {
                result: c.clone(),
                params: Vec::new(),
            }
        }
        Op::ChannelScale => {
            let (w, s) = (data[0], data[1]);
            expect_f32(name, 0, w)?;
            if w.rank() == 0 {
                return Err(ShapeErrorKind::Rank {
                    op: name,
                    expected: "1 or more",
                    got: w.clone(),
                });
            }
            let c = TensorType::f32_fixed(&[fixed(name, w, 0)?]);
            if *s != c {
                return Err(ShapeErrorKind::Mismatch {
                    op: name,
                    lhs: c,
                    rhs: s.clone(),
                });
            }
            Inferred {
                result: w.clone(),
                params: Vec::new(),
            }
        }
        Op::SoftmaxCrossEntropyGrad
        | Op::SoftmaxGrad
        | Op::DenseGradInput
        | Op::DenseGradWeight
        | Op::BiasGrad
        | Op::Conv2dGradInput(_)
        | Op::Conv2dGradWeight(_)
        | Op::BatchNormTrainGrad { .. }
        | Op::BatchNormWeightGrad { .. }
        | Op::SigmoidGrad
        | Op::ReluGrad
        | Op::TanhGrad
        | Op::AvgPool2dGrad(_)
        | Op::MaxPool2dGrad(_)
        | Op::Unflatten
        | Op::BatchStats(_)
        | Op::BatchNormApply { .. }
        | Op::BatchNormGradSums { .. }
        | Op::BatchNormGradApply { .. }
        | Op::SelectRow { .. } => backward::infer(op, data)?,
        Op::SoftmaxCrossEntropy => {
            let (x, labels) = (data[0], data[1]);
            expect_f32(name, 0, x)?;
            expect_rank(name, x, &[2], "2")?;
            if labels.dtype != DType::I32 || labels.dims.len() != 1 || labels.dims[0] != x.dims[0] {
                return Err(ShapeErrorKind::Labels {
                    batch: x.dims[0].clone(),
                    got: labels.clone(),
                });
            }
            Inferred {
                result: TensorType::f32(Vec::new()),
                params: Vec::new(),
            }
        }
    };
    for ty in std::iter::once(&inferred.result).chain(&inferred.params) {
        check_size(ty)?;
    }
    Ok(inferred)
}

/// Refuses types with more than [`MAX_ELEMENTS`] elements per batch item.
pub fn check_size(ty: &TensorType) -> Result<(), ShapeErrorKind> {
    let per_item = ty
        .dims
        .iter()
        .filter_map(Dim::fixed)
        .try_fold(1usize, |acc, d| acc.checked_mul(d));
    match per_item {
        Some(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(ShapeErrorKind::TooLarge { ty: ty.clone() }),
    }
}
