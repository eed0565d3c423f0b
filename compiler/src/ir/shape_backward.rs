//! Shape rules of the backward ops that `autodiff` emits, and of the fused BatchNorm ops
//! that `fuse-bn-train` makes of a train-mode BatchNorm and its backward. Each checks its operands the
//! way the forward op checks its own (often by running the forward rule on them) and
//! gives the gradient the type of the value it is the gradient of. Backward ops have no
//! parameter slots.

use super::{
    Inferred, R, ShapeErrorKind, conv2d, expect_f32, expect_rank, fixed, infer as infer_forward,
    pool,
};
use crate::ir::op::{Conv2dAttrs, Op};
use crate::ir::types::{Dim, TensorType};

fn result(ty: TensorType) -> Inferred {
    Inferred {
        result: ty,
        params: Vec::new(),
    }
}

/// Requires two operands of one type (the incoming gradient and a forward value).
fn same(op: &'static str, a: &TensorType, b: &TensorType) -> R<()> {
    if a == b {
        Ok(())
    } else {
        Err(ShapeErrorKind::Mismatch {
            op,
            lhs: a.clone(),
            rhs: b.clone(),
        })
    }
}

/// Requires the incoming gradient `dy` to have exactly the type `expected` of the
/// forward result.
fn grad_of(op: &'static str, dy: &TensorType, expected: &TensorType) -> R<()> {
    expect_f32(op, 0, dy)?;
    if dy.rank() == 4
        && expected.rank() == 4
        && dy.dims[..2] == expected.dims[..2]
        && dy.dims[2..] != expected.dims[2..]
        && let (Some(h), Some(w)) = (expected.dims[2].fixed(), expected.dims[3].fixed())
    {
        return Err(ShapeErrorKind::GradSize {
            op,
            h,
            w,
            got: dy.clone(),
        });
    }
    same(op, dy, expected)
}

/// Infers the result type of a backward op from its operand types.
pub(super) fn infer(op: &Op, data: &[&TensorType]) -> R<Inferred> {
    let name = op.name();
    Ok(match op {
        Op::SoftmaxCrossEntropyGrad => {
            // The operands are those of the loss; the gradient has the logits' type.
            infer_forward(&Op::SoftmaxCrossEntropy, data).map_err(|e| rename(e, name))?;
            result(data[0].clone())
        }
        Op::SoftmaxGrad => {
            let (dy, y) = (data[0], data[1]);
            expect_f32(name, 0, dy)?;
            expect_rank(name, dy, &[2], "2")?;
            same(name, dy, y)?;
            result(dy.clone())
        }
        Op::SigmoidGrad | Op::ReluGrad | Op::TanhGrad => {
            expect_f32(name, 0, data[0])?;
            expect_f32(name, 1, data[1])?;
            same(name, data[0], data[1])?;
            result(data[0].clone())
        }
        Op::DenseGradInput => {
            let (dy, w) = (data[0], data[1]);
            expect_f32(name, 0, dy)?;
            expect_rank(name, dy, &[2], "2")?;
            expect_f32(name, 1, w)?;
            expect_rank(name, w, &[2], "2")?;
            let (u, k) = (fixed(name, w, 0)?, fixed(name, w, 1)?);
            if fixed(name, dy, 1)? != u {
                return Err(ShapeErrorKind::Mismatch {
                    op: name,
                    lhs: dy.clone(),
                    rhs: w.clone(),
                });
            }
            result(TensorType::f32(vec![dy.dims[0].clone(), Dim::Fixed(k)]))
        }
        Op::DenseGradWeight => {
            let (dy, x) = (data[0], data[1]);
            for (slot, t) in [(0, dy), (1, x)] {
                expect_f32(name, slot, t)?;
                expect_rank(name, t, &[2], "2")?;
            }
            let (u, k) = (fixed(name, dy, 1)?, fixed(name, x, 1)?);
            if dy.dims[0] != x.dims[0] {
                return Err(ShapeErrorKind::Mismatch {
                    op: name,
                    lhs: dy.clone(),
                    rhs: x.clone(),
                });
            }
            result(TensorType::f32_fixed(&[u, k]))
        }
        Op::BiasGrad => {
            let dy = data[0];
            expect_f32(name, 0, dy)?;
            expect_rank(name, dy, &[2, 4], "2 or 4")?;
            result(TensorType::f32_fixed(&[fixed(name, dy, 1)?]))
        }
        Op::Conv2dGradInput(a) => {
            let (dy, w) = (data[0], data[1]);
            expect_f32(name, 0, dy)?;
            expect_rank(name, dy, &[4], "4")?;
            expect_f32(name, 1, w)?;
            expect_rank(name, w, &[4], "4")?;
            let dims: Vec<usize> = (0..4).map(|i| fixed(name, w, i)).collect::<R<_>>()?;
            let (o, cg, kh, kw) = (dims[0], dims[1], dims[2], dims[3]);
            // Run the forward rule on the input the attributes describe.
            let x = TensorType::f32(vec![
                dy.dims[0].clone(),
                Dim::Fixed(cg * a.groups),
                Dim::Fixed(a.input_size[0]),
                Dim::Fixed(a.input_size[1]),
            ]);
            let forward = Conv2dAttrs {
                channels: o,
                kernel: [kh, kw],
                stride: a.stride,
                padding: a.padding,
                groups: a.groups,
                bias: false,
            };
            let y = conv2d(&forward, &x).map_err(|e| rename(e, name))?;
            grad_of(name, dy, &y.result)?;
            result(x)
        }
        Op::Conv2dGradWeight(a) => {
            let (dy, x) = (data[0], data[1]);
            expect_f32(name, 1, x)?;
            expect_rank(name, x, &[4], "4")?;
            expect_rank(name, dy, &[4], "4")?;
            let forward = Conv2dAttrs {
                channels: fixed(name, dy, 1)?,
                kernel: a.kernel,
                stride: a.stride,
                padding: a.padding,
                groups: a.groups,
                bias: false,
            };
            let y = conv2d(&forward, x).map_err(|e| rename(e, name))?;
            grad_of(name, dy, &y.result)?;
            result(y.params[0].clone())
        }
        Op::BatchNormTrainGrad { .. } | Op::BatchNormWeightGrad { .. } => {
            let (dy, x) = (data[0], data[1]);
            expect_f32(name, 1, x)?;
            expect_rank(name, x, &[2, 4], "2 or 4")?;
            let c = TensorType::f32_fixed(&[fixed(name, x, 1)?]);
            grad_of(name, dy, x)?;
            if let Some(&gamma) = data.get(2) {
                same(name, &c, gamma)?;
                result(x.clone())
            } else {
                result(c)
            }
        }
        Op::AvgPool2dGrad(a) | Op::MaxPool2dGrad(a) => {
            let (dy, x) = (data[0], data[1]);
            let y = pool(name, a, x)?;
            grad_of(name, dy, &y.result)?;
            result(x.clone())
        }
        Op::Unflatten => {
            let (dy, like) = (data[0], data[1]);
            expect_f32(name, 0, dy)?;
            expect_f32(name, 1, like)?;
            let flat = infer_forward(&Op::Flatten, &[like]).map_err(|e| rename(e, name))?;
            same(name, dy, &flat.result)?;
            result(like.clone())
        }
        Op::BatchStats(_) => {
            let x = data[0];
            expect_f32(name, 0, x)?;
            expect_rank(name, x, &[2, 4], "2 or 4")?;
            let c = fixed(name, x, 1)?;
            for &running in &data[1..] {
                same(name, &TensorType::f32_fixed(&[c]), running)?;
            }
            // The input bias, if any, is a parameter of the channel's shape.
            Inferred {
                result: TensorType::f32_fixed(&[2, c]),
                params: vec![TensorType::f32_fixed(&[c]); op.param_slots().len()],
            }
        }
        Op::BatchNormApply { .. }
        | Op::BatchNormGradSums { .. }
        | Op::BatchNormGradApply { .. } => {
            // Operands: (x, stats, γ, β), (dy, x, stats) or (dy, x, stats, sums, γ).
            let x_slot = usize::from(!matches!(op, Op::BatchNormApply { .. }));
            let x = data[x_slot];
            expect_f32(name, x_slot, x)?;
            expect_rank(name, x, &[2, 4], "2 or 4")?;
            let c = fixed(name, x, 1)?;
            let (rows, chan) = (TensorType::f32_fixed(&[2, c]), TensorType::f32_fixed(&[c]));
            match op {
                Op::BatchNormApply { .. } => {
                    same(name, &rows, data[1])?;
                    same(name, &chan, data[2])?;
                    same(name, &chan, data[3])?;
                    result(x.clone())
                }
                Op::BatchNormGradSums { .. } => {
                    grad_of(name, data[0], x)?;
                    same(name, &rows, data[2])?;
                    result(rows)
                }
                _ => {
                    grad_of(name, data[0], x)?;
                    same(name, &rows, data[2])?;
                    same(name, &rows, data[3])?;
                    same(name, &chan, data[4])?;
                    result(x.clone())
                }
            }
        }
        Op::SelectRow { index } => {
            let t = data[0];
            expect_f32(name, 0, t)?;
            expect_rank(name, t, &[2], "2")?;
            if *index >= fixed(name, t, 0)? {
                return Err(ShapeErrorKind::Mismatch {
                    op: name,
                    lhs: t.clone(),
                    rhs: TensorType::f32_fixed(&[index + 1, fixed(name, t, 1)?]),
                });
            }
            result(TensorType::f32_fixed(&[fixed(name, t, 1)?]))
        }
        // Only backward ops reach here (see `shape::infer`).
        _ => result(data[0].clone()),
    })
}

/// Names the backward op, not the forward rule it borrowed, in an error.
fn rename(e: ShapeErrorKind, name: &'static str) -> ShapeErrorKind {
    match e {
        ShapeErrorKind::Rank { expected, got, .. } => ShapeErrorKind::Rank {
            op: name,
            expected,
            got,
        },
        ShapeErrorKind::DType {
            expected,
            slot,
            got,
            ..
        } => ShapeErrorKind::DType {
            op: name,
            expected,
            slot,
            got,
        },
        ShapeErrorKind::Symbolic { axis, got, .. } => ShapeErrorKind::Symbolic {
            op: name,
            axis,
            got,
        },
        ShapeErrorKind::KernelTooLarge { kh, kw, h, w, .. } => ShapeErrorKind::KernelTooLarge {
            op: name,
            kh,
            kw,
            h,
            w,
        },
        other => other,
    }
}
