//! `fuse-bn-train` (train mode, after `autodiff`): splits every train-mode BatchNorm and
//! its backward into the pieces the training kernels compute, so the IR shows the fusion
//! the runtime performs.
//!
//! - Forward: `batch_norm_train(x, γ, β, running_mean, running_var)` becomes
//!   `s = batch_stats(x, running_mean, running_var)`, the per-channel mean and biased
//!   variance that the kernel producing `x` accumulates in its epilogue, which also
//!   updates the running statistics in the same step, and `batch_norm_apply(x, s, γ, β)`,
//!   the normalize/scale/shift that runs in one kernel with the activation and pooling
//!   after it.
//! - Backward: `batch_norm_train_grad(dy, x, γ)`, `batch_norm_weight_grad(dy, x)` and
//!   `bias_grad(dy)` (for β) become one reduction pass `sums = batch_norm_grad_sums(dy,
//!   x, s)` giving `Σdy` and `Σdy·x̂` together, the input gradient as one elementwise pass
//!   `batch_norm_grad_apply(dy, x, s, sums, γ)`, and `dγ`, `dβ` as rows of `sums`. The
//!   elementwise pass is merged with the activation and pool backward by the runtime.
//!
//! The identities: with `μ, σ²` the batch statistics of `x` (what `batch_stats` returns),
//! `batch_norm_train(x) = γ·(x − μ)/√(σ² + ε) + β = batch_norm_apply(x, s)`;
//! `dβ = Σ dy = sums[0]`, `dγ = Σ dy·x̂ = sums[1]`, and
//! `dx = γ/(m·√(σ²+ε))·(m·dy − Σdy − x̂·Σdy·x̂)`, the unfused backward written with the
//! same sums. The only change in value is that the statistics pass through `f32` once.
//!
//! ```text
//! before:  bn1 = batch_norm_train(conv1, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, eps=1e-5, ...)
//!          grad.conv1 = batch_norm_train_grad(grad.bn1, conv1, bn1.weight, eps=1e-5)
//!          grad.bn1.weight = batch_norm_weight_grad(grad.bn1, conv1, eps=1e-5)
//!          grad.bn1.bias = bias_grad(grad.bn1)
//! after:   bn1.stats = batch_stats(conv1, bn1.running_mean, bn1.running_var, eps=1e-5, ...)
//!          bn1 = batch_norm_apply(conv1, bn1.stats, bn1.weight, bn1.bias, eps=1e-5)
//!          grad.bn1.sums = batch_norm_grad_sums(grad.bn1, conv1, bn1.stats, eps=1e-5)
//!          grad.conv1 = batch_norm_grad_apply(grad.bn1, conv1, bn1.stats, grad.bn1.sums, bn1.weight, eps=1e-5)
//!          grad.bn1.weight = select_row(grad.bn1.sums, index=1)
//!          grad.bn1.bias = select_row(grad.bn1.sums, index=0)
//! ```

use super::autodiff::fresh;
use super::{Mode, Pass, PassContext, PassError, Remark};
use crate::ir::{Graph, NodeId, Op, Span};

/// The `fuse-bn-train` pass.
pub struct FuseBnTrain;

/// Adds `op` named `base` or, if taken, `base` with a suffix; fresh names cannot collide.
fn add(g: &mut Graph, base: String, op: Op, operands: &[NodeId], span: Span) -> NodeId {
    let name = fresh(g, base);
    match g.add_op(name, op, operands, span) {
        Ok(id) => id,
        Err(d) => d.existing,
    }
}

/// Adds `op` under a temporary name, moves every use of `old` to it, removes `old` and
/// gives the new node `old`'s name (free again), so later IR reads the same.
fn replace(g: &mut Graph, old: NodeId, op: Op, operands: &[NodeId]) -> NodeId {
    let name = g.node(old).name.clone();
    let span = g.node(old).span;
    let new = add(g, format!("{name}.fused"), op, operands, span);
    g.replace_all_uses(old, new);
    g.remove(old);
    // The name was just freed, so this cannot fail; if it did the node keeps a fresh name.
    let _ = g.rename(new, name);
    new
}

/// A user of `id` (as its first operand) whose op satisfies `pred`, for remarks.
fn user_where(g: &Graph, id: NodeId, pred: impl Fn(&Op) -> bool) -> Option<NodeId> {
    g.users(id)
        .into_iter()
        .find(|&(u, slot)| slot == 0 && g.node(u).op().is_some_and(&pred))
        .map(|(u, _)| u)
}

impl Pass for FuseBnTrain {
    fn name(&self) -> &'static str {
        "fuse-bn-train"
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<bool, PassError> {
        if cx.mode != Mode::Train {
            return Ok(false);
        }
        let mut changed = false;
        for bn in g.node_ids() {
            // Earlier rewrites remove the backward nodes they replace.
            if !g.contains(bn) {
                continue;
            }
            let Some(Op::BatchNormTrain(a)) = g.node(bn).op().cloned() else {
                continue;
            };
            let eps = a.eps;
            let ops = g.operands(bn);
            let (x, gamma, beta, rm, rv) = (ops[0], ops[1], ops[2], ops[3], ops[4]);
            let bn_name = g.node(bn).name.clone();
            let span = g.node(bn).span;
            // Forward: BN_train(x) = apply(x, stats(x)).
            // The input bias, if `redundant-bias` moved one here, goes with the running
            // statistics it updates.
            let stats_ops: Vec<NodeId> =
                [x, rm, rv].into_iter().chain(ops.get(5).copied()).collect();
            let op = Op::BatchStats(a);
            let stats = add(g, format!("{bn_name}.stats"), op, &stats_ops, span);
            let stats_name = g.node(stats).name.clone();
            let apply = replace(g, bn, Op::BatchNormApply { eps }, &[x, stats, gamma, beta]);
            // Backward: the input gradient of this BatchNorm is the one with its (x, γ).
            let grads: Vec<NodeId> = g
                .users(x)
                .into_iter()
                .filter(|&(u, slot)| {
                    slot == 1
                        && matches!(g.node(u).op(), Some(Op::BatchNormTrainGrad { .. }))
                        && g.operands(u)[2] == gamma
                })
                .map(|(u, _)| u)
                .collect();
            let mut sums_name = None;
            for gx in grads {
                let dy = g.operands(gx)[0];
                let op = Op::BatchNormGradSums { eps };
                let sums = add(g, format!("grad.{bn_name}.sums"), op, &[dy, x, stats], span);
                let name = g.node(sums).name.clone();
                // dx = γ·rstd/m·(m·dy − Σdy − x̂·Σdy·x̂), from the same sums.
                replace(
                    g,
                    gx,
                    Op::BatchNormGradApply { eps },
                    &[dy, x, stats, sums, gamma],
                );
                // dγ = Σ dy·x̂ = sums[1]; dβ = Σ dy = sums[0].
                for (u, _) in g.users(x) {
                    if matches!(g.node(u).op(), Some(Op::BatchNormWeightGrad { .. }))
                        && g.operands(u)[0] == dy
                    {
                        replace(g, u, Op::SelectRow { index: 1 }, &[sums]);
                    }
                }
                for (u, _) in g.users(dy) {
                    if matches!(g.node(u).op(), Some(Op::BiasGrad)) {
                        replace(g, u, Op::SelectRow { index: 0 }, &[sums]);
                    }
                }
                sums_name = Some(name);
            }
            changed = true;
            let producer = match g.node(x).op() {
                Some(Op::Conv2d(_) | Op::Dense(_)) => {
                    format!("in the epilogue of `{}`", g.node(x).name)
                }
                _ => format!("in one pass over `{}`", g.node(x).name),
            };
            let mut group = vec![bn_name.clone()];
            let act = user_where(g, apply, |op| {
                matches!(op, Op::Sigmoid | Op::Relu | Op::Tanh)
            });
            if let Some(act) = act {
                group.push(g.node(act).name.clone());
                let pool = user_where(g, act, |op| {
                    matches!(op, Op::AvgPool2d(_) | Op::MaxPool2d(_))
                });
                if let Some(pool) = pool {
                    group.push(g.node(pool).name.clone());
                }
            }
            let backward = match &sums_name {
                Some(s) => format!(
                    "; backward: dγ, dβ and both sums in one pass (`{s}`), the input gradient in one elementwise pass"
                ),
                None => String::new(),
            };
            cx.remarks.push(Remark {
                node: bn_name.clone(),
                message: format!(
                    "batch statistics `{stats_name}` {producer}; {} run as one kernel; running statistics updated from `{stats_name}` in the same step{backward}",
                    group.join("+")
                ),
            });
        }
        if changed {
            // The new nodes get their types like every other: from their operands'.
            super::infer_shapes(g).map_err(|e| PassError::Shape(Box::new(e)))?;
        }
        Ok(changed)
    }
}
