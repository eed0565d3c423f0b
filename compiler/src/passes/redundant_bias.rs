//! `redundant-bias` (train mode): a conv2d or dense whose only consumer is a train-mode
//! BatchNorm loses its bias, because the BatchNorm subtracts the batch mean, which
//! cancels any per-channel constant (d2l asks this as an exercise). The op becomes
//! `bias=false` and its bias operand is dropped; `dce` then removes the parameter from the
//! train graph. Each removal is explained in a remark.
//!
//! The identity, per channel `c` with batch statistics over the channel's elements:
//! `mean(W·x + b) = mean(W·x) + b` and `var(W·x + b) = var(W·x)`, so
//! `BN_train(W·x + b) = γ·(W·x + b − mean(W·x) − b)/√(var(W·x)+ε) + β = BN_train(W·x)`.
//! The loss and every other gradient are therefore unchanged, and the bias's own
//! gradient is exactly zero: training leaves the bias at its value.
//!
//! The running mean is the one quantity that sees the bias: without it, the running
//! mean tracks `mean(W·x)` instead of `mean(W·x) + b`. The inference graph keeps the
//! bias (the parameter stays in the store), so inference computes
//! `γ·(W·x + b − running_mean)/√(running_var+ε) + β`, which is exact when `b = 0`, as
//! fresh weights have it (Xavier weights, zero biases). A store whose bias is not zero
//! (a PyTorch checkpoint, say) must first move it into the running mean —
//! `running_mean −= b; b = 0`, which changes no inference output — so that the running
//! mean absorbs it; the runtime must do that before it trains from such a store.
//!
//! ```text
//! before:  conv1 = conv2d(x, conv1.weight, conv1.bias, ..., bias=true)
//!          bn1 = batch_norm_train(conv1, ...)
//! after:   conv1 = conv2d(x, conv1.weight, ..., bias=false)
//!          bn1 = batch_norm_train(conv1, ...)
//! ```

use super::{Mode, Pass, PassContext, PassError, Remark};
use crate::ir::{Graph, NodeId, NodeKind, Op};

/// The `redundant-bias` pass.
pub struct RedundantBias;

/// The train-mode BatchNorm that is the only consumer of `id`, if any.
fn sole_batch_norm(g: &Graph, id: NodeId) -> Option<NodeId> {
    if g.outputs().contains(&id) {
        return None;
    }
    match g.users(id)[..] {
        [(bn, 0)] if matches!(g.node(bn).op(), Some(Op::BatchNormTrain(_))) => Some(bn),
        _ => None,
    }
}

impl Pass for RedundantBias {
    fn name(&self) -> &'static str {
        "redundant-bias"
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<bool, PassError> {
        if cx.mode != Mode::Train {
            return Ok(false);
        }
        let mut changed = false;
        for id in g.node_ids() {
            let has_bias = match g.node(id).op() {
                Some(Op::Conv2d(a)) => a.bias,
                Some(Op::Dense(a)) => a.bias,
                _ => false,
            };
            let Some(bn) = has_bias.then(|| sole_batch_norm(g, id)).flatten() else {
                continue;
            };
            // BN_train(W·x + b) = BN_train(W·x): the batch mean cancels b.
            if let NodeKind::Op(Op::Conv2d(a)) = &mut g.node_mut(id).kind {
                a.bias = false;
            } else if let NodeKind::Op(Op::Dense(a)) = &mut g.node_mut(id).kind {
                a.bias = false;
            }
            g.remove_edge_at(id, 2);
            changed = true;
            cx.remarks.push(Remark {
                node: g.node(id).name.clone(),
                message: format!(
                    "removed the bias of `{}`: batch_norm_train `{}` subtracts the batch mean, which cancels it",
                    g.node(id).name,
                    g.node(bn).name
                ),
            });
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use crate::passes::{Mode, PassManager};
    use crate::text::parse;

    #[test]
    fn every_removal_is_explained() {
        let mut g = parse(
            "input x: f32[N,1,6,6]\nconv1 = conv2d(x, channels=2, kernel=3)\nbn1 = batch_norm(conv1)\n\
             f = flatten(bn1)\nfc = dense(f, units=3)\nbn2 = batch_norm(fc)\nr = relu(fc)\noutput bn2, r\n",
        )
        .unwrap();
        let steps = PassManager::new(&["infer-shapes", "lower-batch-norm", "redundant-bias"])
            .unwrap()
            .run(&mut g, Mode::Train)
            .unwrap();
        let remarks: Vec<String> = steps
            .iter()
            .flat_map(|s| {
                s.remarks
                    .iter()
                    .map(|r| format!("{}: {}", r.node, r.message))
            })
            .collect();
        // fc also feeds relu, so its bias stays.
        assert_eq!(
            remarks,
            [
                "conv1: removed the bias of `conv1`: batch_norm_train `bn1` subtracts the batch mean, which cancels it"
            ]
        );
    }

    #[test]
    fn infer_mode_keeps_every_bias() {
        let mut g =
            parse("input x: f32[N,3]\nfc = dense(x, units=2)\nbn = batch_norm(fc)\noutput bn\n")
                .unwrap();
        let steps = PassManager::new(&["infer-shapes", "lower-batch-norm", "redundant-bias"])
            .unwrap()
            .run(&mut g, Mode::Infer)
            .unwrap();
        assert!(!steps[2].changed);
        assert!(steps[2].remarks.is_empty());
    }
}
