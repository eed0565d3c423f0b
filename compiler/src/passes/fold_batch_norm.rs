//! `fold-bn` (infer mode): a conv2d or dense whose only consumer is an inference
//! BatchNorm becomes one conv2d/dense with rescaled weights; a BatchNorm that cannot be
//! folded becomes a per-channel `scale_shift`, which fusion then merges with its
//! neighbours. Either way the BatchNorm op is gone, and every decision is explained in a
//! remark (`bnc compile --explain`).
//!
//! The identity, per output channel `o`, with `s = γ/√(var+ε)`:
//! `BN(W·x + b) = γ·(W·x + b − mean)/√(var+ε) + β = (s·W)·x + (b·s + β − mean·s)`,
//! so `W' = s·W` (every weight of output channel `o`, axis 0 of PyTorch's layout, which
//! also holds for grouped convolutions) and `b' = b·s + t` with `t = β − mean·s`
//! (`b = 0` for a producer without bias). The new weights are not data in the IR but
//! parameter-only expressions (`bn_scale`, `bn_shift`, `channel_scale`,
//! `channel_affine`) that the runtime evaluates once, in f64, when it binds weights.
//!
//! ```text
//! before:  conv1 = conv2d(x, conv1.weight, conv1.bias, ...)
//!          bn1 = batch_norm_infer(conv1, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, eps=1e-5, ...)
//! after:   bn1.scale = bn_scale(bn1.weight, bn1.running_var, eps=1e-5)
//!          bn1.shift = bn_shift(bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, eps=1e-5)
//!          conv1.weight_folded = channel_scale(conv1.weight, bn1.scale)
//!          conv1.bias_folded = channel_affine(conv1.bias, bn1.scale, bn1.shift)
//!          conv1 = conv2d(x, conv1.weight_folded, conv1.bias_folded, ...)
//! ```
//!
//! `bn-scale-shift` is the same pass with folding turned off (`bnc --no-fold`): every
//! inference BatchNorm becomes a `scale_shift`.

use super::{Mode, Pass, PassContext, PassError, Remark, infer_shapes};
use crate::ir::{Graph, NodeId, NodeKind, Op, Span};

/// The `fold-bn` pass (and, with `fold: false`, `bn-scale-shift`).
pub struct FoldBatchNorm {
    /// Whether to fold into producers at all.
    pub fold: bool,
}

fn fresh(g: &Graph, base: String) -> String {
    let mut name = base.clone();
    let mut i = 1;
    while g.lookup(&name).is_some() {
        name = format!("{base}{i}");
        i += 1;
    }
    name
}

/// Adds a parameter-only op; its name is fresh, so adding cannot fail.
fn add(g: &mut Graph, name: String, op: Op, operands: &[NodeId]) -> NodeId {
    let name = fresh(g, name);
    match g.add_op(name, op, operands, Span::default()) {
        Ok(id) => id,
        Err(d) => d.existing,
    }
}

/// Why the BatchNorm `bn` whose input is `x` cannot be folded, or `None` if it can.
fn not_foldable(g: &Graph, x: NodeId) -> Option<String> {
    let p = g.node(x);
    match &p.kind {
        NodeKind::Op(Op::Conv2d(_) | Op::Dense(_)) => {}
        NodeKind::Op(op) => return Some(format!("its input `{}` is a {}, not a conv2d or dense", p.name, op.name())),
        NodeKind::Input => return Some(format!("its input `{}` is a graph input", p.name)),
        NodeKind::Param => return Some(format!("its input `{}` is a parameter", p.name)),
    }
    if g.outputs().contains(&x) {
        return Some(format!("its producer `{}` is also a graph output", p.name));
    }
    let users = g.users(x);
    if users.len() > 1 {
        let others: Vec<String> = users.iter().map(|(u, _)| format!("`{}`", g.node(*u).name)).collect();
        return Some(format!("its producer `{}` has other consumers ({})", p.name, others.join(", ")));
    }
    None
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        if self.fold { "fold-bn" } else { "bn-scale-shift" }
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<bool, PassError> {
        if cx.mode != Mode::Infer {
            return Ok(false);
        }
        let mut changed = false;
        for bn in g.topo_order().unwrap_or_default() {
            let Some(Op::BatchNormInfer(a)) = g.node(bn).op() else { continue };
            let eps = a.eps;
            let ops = g.operands(bn);
            let [x, gamma, beta, mean, var] = ops[..] else { continue };
            let bn_name = g.node(bn).name.clone();
            let scale = add(g, format!("{bn_name}.scale"), Op::BnScale { eps }, &[gamma, var]);
            let shift = add(g, format!("{bn_name}.shift"), Op::BnShift { eps }, &[gamma, beta, mean, var]);
            changed = true;
            let reason = if self.fold { not_foldable(g, x) } else { Some("folding is off (--no-fold)".to_string()) };
            if let Some(reason) = reason {
                // BN(x) = x·s + t per channel: a scale_shift that fusion merges with its neighbours.
                g.node_mut(bn).kind = NodeKind::Op(Op::ScaleShift);
                for (slot, o) in [(1, scale), (2, shift)] {
                    g.set_operand(bn, slot, o);
                }
                for (slot, _) in g.operand_slots(bn).into_iter().filter(|(s, _)| *s > 2) {
                    g.remove_edge_at(bn, slot);
                }
                cx.remarks.push(Remark { node: bn_name, message: format!("not folded: {reason}; runs as a per-channel scale_shift") });
                continue;
            }
            let p_name = g.node(x).name.clone();
            let p_ops = g.operands(x);
            // W' = s·W along the output-channel axis.
            let w = add(g, format!("{p_name}.weight_folded"), Op::ChannelScale, &[p_ops[1], scale]);
            g.set_operand(x, 1, w);
            // b' = b·s + t, or t alone when the producer had no bias (b = 0).
            let b = match p_ops.get(2) {
                Some(&b) => add(g, format!("{p_name}.bias_folded"), Op::ChannelAffine, &[b, scale, shift]),
                None => shift,
            };
            if let Some(NodeKind::Op(op)) = Some(&mut g.node_mut(x).kind) {
                match op {
                    Op::Conv2d(c) => c.bias = true,
                    Op::Dense(d) => d.bias = true,
                    _ => {}
                }
            }
            g.set_operand(x, 2, b);
            g.replace_all_uses(bn, x);
            g.remove(bn);
            cx.remarks.push(Remark { node: bn_name, message: format!("folded into `{p_name}`") });
        }
        if changed {
            infer_shapes(g)?;
        }
        Ok(changed)
    }
}
