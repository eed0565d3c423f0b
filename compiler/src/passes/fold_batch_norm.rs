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

/// The start of the remark that says a BatchNorm was folded (`folded into `conv1``).
const FOLDED_INTO: &str = "folded into `";

/// The producer that a `fold-bn` remark says its BatchNorm was folded into, if it says
/// so (pictures annotate that producer: `conv1 (+bn1 folded)`).
pub fn folded_into(r: &Remark) -> Option<&str> {
    r.message.strip_prefix(FOLDED_INTO)?.strip_suffix('`')
}

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
        NodeKind::Op(op) => {
            return Some(format!(
                "its input `{}` is a {}, not a conv2d or dense",
                p.name,
                op.name()
            ));
        }
        NodeKind::Input => return Some(format!("its input `{}` is a graph input", p.name)),
        NodeKind::Param => return Some(format!("its input `{}` is a parameter", p.name)),
    }
    if g.outputs().contains(&x) {
        return Some(format!("its producer `{}` is also a graph output", p.name));
    }
    let users = g.users(x);
    if users.len() > 1 {
        let others: Vec<String> = users
            .iter()
            .map(|(u, _)| format!("`{}`", g.node(*u).name))
            .collect();
        return Some(format!(
            "its producer `{}` has other consumers ({})",
            p.name,
            others.join(", ")
        ));
    }
    None
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        if self.fold {
            "fold-bn"
        } else {
            "bn-scale-shift"
        }
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<bool, PassError> {
        if cx.mode != Mode::Infer {
            return Ok(false);
        }
        let mut changed = false;
        for bn in g.topo_order().unwrap_or_default() {
            let Some(Op::BatchNormInfer(a)) = g.node(bn).op() else {
                continue;
            };
            let eps = a.eps;
            let ops = g.operands(bn);
            let [x, gamma, beta, mean, var] = ops[..] else {
                continue;
            };
            let bn_name = g.node(bn).name.clone();
            let scale = add(
                g,
                format!("{bn_name}.scale"),
                Op::BnScale { eps },
                &[gamma, var],
            );
            let shift = add(
                g,
                format!("{bn_name}.shift"),
                Op::BnShift { eps },
                &[gamma, beta, mean, var],
            );
            changed = true;
            let reason = if self.fold {
                not_foldable(g, x)
            } else {
                Some("folding is off (--no-fold)".to_string())
            };
            if let Some(reason) = reason {
                // BN(x) = x·s + t per channel: a scale_shift that fusion merges with its neighbours.
                g.node_mut(bn).kind = NodeKind::Op(Op::ScaleShift);
                for (slot, o) in [(1, scale), (2, shift)] {
                    g.set_operand(bn, slot, o);
                }
                for (slot, _) in g.operand_slots(bn).into_iter().filter(|(s, _)| *s > 2) {
                    g.remove_edge_at(bn, slot);
                }
                cx.remarks.push(Remark {
                    node: bn_name,
                    message: format!("not folded: {reason}; runs as a per-channel scale_shift"),
                });
                continue;
            }
            let p_name = g.node(x).name.clone();
            let p_ops = g.operands(x);
            // W' = s·W along the output-channel axis.
            let w = add(
                g,
                format!("{p_name}.weight_folded"),
                Op::ChannelScale,
                &[p_ops[1], scale],
            );
            g.set_operand(x, 1, w);
            // b' = b·s + t, or t alone when the producer had no bias (b = 0).
            let b = match p_ops.get(2) {
                Some(&b) => add(
                    g,
                    format!("{p_name}.bias_folded"),
                    Op::ChannelAffine,
                    &[b, scale, shift],
                ),
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
            cx.remarks.push(Remark {
                node: bn_name,
                message: format!("{FOLDED_INTO}{p_name}`"),
            });
        }
        if changed {
            infer_shapes(g)?;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::interp::{Params, SplitMix64, init_params, run};
    use crate::passes::{Mode, PassManager, inference_pipeline};
    use crate::text::parse;
    use crate::{Tensor, ir::Graph};

    /// Random weights that stress the fold: γ = 0 and negative γ, running_var ≈ 0, and
    /// nonzero running means and biases.
    fn stress_params(g: &Graph, seed: u64) -> Params {
        let mut params = init_params(g, seed);
        let mut rng = SplitMix64::new(seed ^ 0x5eed);
        for (name, t) in params.iter_mut() {
            let data = t.as_f32_mut().unwrap();
            for (i, v) in data.iter_mut().enumerate() {
                *v = if name.ends_with("running_var") {
                    if i % 3 == 0 {
                        1e-7
                    } else {
                        rng.uniform(0.01, 3.0)
                    }
                } else if name.starts_with("bn") || name.contains("_bn") {
                    if name.ends_with(".weight") && i % 4 == 0 {
                        0.0
                    } else {
                        rng.uniform(-2.0, 2.0)
                    }
                } else if name.ends_with(".bias") {
                    rng.uniform(-0.5, 0.5)
                } else {
                    *v
                };
            }
        }
        params
    }

    fn compile(src: &str, fold: bool) -> Graph {
        let mut g = parse(src).unwrap();
        PassManager::new(inference_pipeline(fold))
            .unwrap()
            .run(&mut g, Mode::Infer)
            .unwrap();
        g
    }

    /// The stated tolerance: max |a − b| / max(1, |b|) ≤ 1e-4.
    fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(err <= 1e-4, "{what}: relative error {err}");
    }

    fn check_fold_preserves_logits(src: &str, input_shape: &[usize]) {
        let reference = compile(src, false);
        let folded = compile(src, true);
        for seed in 0..3 {
            let mut params = stress_params(&reference, seed);
            let mut rng = SplitMix64::new(seed);
            let n: usize = input_shape.iter().product();
            let x = Tensor::new(
                input_shape.to_vec(),
                (0..n).map(|_| rng.uniform(0.0, 1.0)).collect(),
            )
            .unwrap();
            let inputs = HashMap::from([("x".to_string(), x)]);
            let before = run(&reference, Mode::Infer, &inputs, &mut params.clone()).unwrap();
            let after = run(&folded, Mode::Infer, &inputs, &mut params).unwrap();
            assert_close(
                &after.outputs[0],
                &before.outputs[0],
                &format!("seed {seed}"),
            );
        }
    }

    fn model(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/../models/{name}.ir",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn folding_preserves_the_logits_of_every_bn_model() {
        check_fold_preserves_logits(&model("lenet_bn"), &[5, 1, 28, 28]);
        check_fold_preserves_logits(&model("mlp_bn"), &[5, 1, 28, 28]);
        // resnet_bn has convolutions without bias and BN on both residual branches.
        check_fold_preserves_logits(&model("resnet_bn"), &[3, 1, 28, 28]);
    }

    #[test]
    fn a_shared_producer_or_graph_output_is_not_folded_but_scale_shifted() {
        let src = "input x: f32[N,3,9,9]\n\
                   c = conv2d(x, channels=4, kernel=3, groups=1)\n\
                   bn = batch_norm(c)\n\
                   r = relu(c)\n\
                   s = add(bn, r)\n\
                   g = conv2d(s, channels=4, kernel=3, groups=2, bias=false)\n\
                   bn2 = batch_norm(g)\n\
                   bn3 = batch_norm(bn2)\n\
                   output bn3, g\n";
        let g = compile(src, true);
        let ops: Vec<&str> = g
            .node_ids()
            .into_iter()
            .filter_map(|id| g.node(id).op().map(|o| o.name()))
            .collect();
        assert!(!ops.contains(&"batch_norm_infer"), "{ops:?}");
        assert_eq!(
            ops.iter().filter(|o| **o == "scale_shift").count(),
            3,
            "{ops:?}"
        );
        check_fold_preserves_logits(src, &[2, 3, 9, 9]);
    }

    #[test]
    fn grouped_and_strided_convolutions_fold() {
        // Axis 0 of a grouped weight [out, in/groups, kh, kw] still indexes every output
        // channel, so one per-channel scale serves all groups.
        let src = "input x: f32[N,4,9,9]\n\
                   c = conv2d(x, channels=6, kernel=3, stride=2, padding=1, groups=2)\n\
                   bn = batch_norm(c)\n\
                   d = conv2d(bn, channels=6, kernel=1, groups=6, bias=false)\n\
                   bn2 = batch_norm(d)\n\
                   output bn2\n";
        let g = compile(src, true);
        let ops: Vec<&str> = g
            .node_ids()
            .into_iter()
            .filter_map(|id| g.node(id).op().map(|o| o.name()))
            .collect();
        assert!(
            !ops.contains(&"scale_shift") && !ops.contains(&"batch_norm_infer"),
            "{ops:?}"
        );
        check_fold_preserves_logits(src, &[3, 4, 9, 9]);
    }

    #[test]
    fn every_decision_is_explained() {
        let mut g = parse(
            "input x: f32[N,3,9,9]\nc = conv2d(x, channels=4, kernel=3)\nbn = batch_norm(c)\nr = relu(c)\n\
             bn2 = batch_norm(x)\nf = flatten(x)\nd = dense(f, units=2)\nbn3 = batch_norm(d)\noutput bn, r, bn2, bn3\n",
        )
        .unwrap();
        let steps = PassManager::new(inference_pipeline(true))
            .unwrap()
            .run(&mut g, Mode::Infer)
            .unwrap();
        let remarks: Vec<String> = steps
            .iter()
            .flat_map(|s| {
                s.remarks
                    .iter()
                    .map(|r| format!("{}: {}", r.node, r.message))
            })
            .collect();
        assert_eq!(
            remarks,
            [
                "bn: not folded: its producer `c` has other consumers (`bn`, `r`); runs as a per-channel scale_shift",
                "bn2: not folded: its input `x` is a graph input; runs as a per-channel scale_shift",
                "bn3: folded into `d`",
            ]
        );
        // Pictures read the folds back from the remarks.
        let folds: Vec<(&str, &str)> = steps
            .iter()
            .flat_map(|s| &s.remarks)
            .filter_map(|r| Some((r.node.as_str(), super::folded_into(r)?)))
            .collect();
        assert_eq!(folds, [("bn3", "d")]);
    }
}
