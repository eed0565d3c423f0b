//! `redundant-bias` (train mode): a conv2d or dense whose only consumer is a train-mode
//! BatchNorm loses its bias, because the BatchNorm subtracts the batch mean, which
//! cancels any per-channel constant (d2l asks this as an exercise). The op becomes
//! `bias=false`, and its bias operand moves to the BatchNorm as its `input_bias`, where
//! only the running-mean update reads it. Each move is explained in a remark.
//!
//! The identity, per channel `c` with batch statistics over the channel's elements:
//! `mean(W·x + b) = mean(W·x) + b` and `var(W·x + b) = var(W·x)`, so
//! `BN_train(W·x + b) = γ·(W·x + b − mean(W·x) − b)/√(var(W·x)+ε) + β = BN_train(W·x)`.
//! The loss and every other gradient are therefore unchanged, and the bias's own
//! gradient is exactly zero (`autodiff` gives an `input_bias` none): training leaves the
//! bias at its value, as PyTorch does.
//!
//! The running mean is the one quantity that sees the bias: it tracks
//! `mean(W·x + b) = mean(W·x) + b`, which is what the BatchNorm's `input_bias` adds back,
//! so the pass changes no value the graph computes or updates, whatever the bias holds.
//!
//! ```text
//! before:  conv1 = conv2d(x, conv1.weight, conv1.bias, ..., bias=true)
//!          bn1 = batch_norm_train(conv1, bn1.weight, bn1.bias, bn1.running_mean,
//!                                 bn1.running_var, ..., input_bias=false)
//! after:   conv1 = conv2d(x, conv1.weight, ..., bias=false)
//!          bn1 = batch_norm_train(conv1, bn1.weight, bn1.bias, bn1.running_mean,
//!                                 bn1.running_var, conv1.bias, ..., input_bias=true)
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
        [(bn, 0)]
            if matches!(
                g.node(bn).op(),
                Some(Op::BatchNormTrain(a)) if !a.input_bias
            ) =>
        {
            Some(bn)
        }
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
            // BN_train(W·x + b) = BN_train(W·x): the batch mean cancels b; the running
            // mean, which tracks mean(W·x) + b, gets b from the BatchNorm's input_bias.
            let bias = g.operands(id)[2];
            if let NodeKind::Op(Op::Conv2d(a)) = &mut g.node_mut(id).kind {
                a.bias = false;
            } else if let NodeKind::Op(Op::Dense(a)) = &mut g.node_mut(id).kind {
                a.bias = false;
            }
            g.remove_edge_at(id, 2);
            if let NodeKind::Op(Op::BatchNormTrain(a)) = &mut g.node_mut(bn).kind {
                a.input_bias = true;
            }
            let slot = u32::try_from(g.operands(bn).len()).unwrap_or(u32::MAX);
            g.connect(bias, bn, slot);
            changed = true;
            cx.remarks.push(Remark {
                node: g.node(id).name.clone(),
                message: format!(
                    "removed the bias of `{}`: batch_norm_train `{}` subtracts the batch mean, which cancels it (its running mean still adds it)",
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
    use crate::ir::Op;
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
                "conv1: removed the bias of `conv1`: batch_norm_train `bn1` subtracts the batch mean, which cancels it (its running mean still adds it)"
            ]
        );
        // The bias moved to bn1, whose running-mean update reads it.
        let bn1 = g.lookup("bn1").unwrap();
        let last = *g.operands(bn1).last().unwrap();
        assert_eq!(g.node(last).name, "conv1.bias");
        assert!(matches!(g.node(bn1).op(), Some(Op::BatchNormTrain(a)) if a.input_bias));
    }

    /// With a nonzero bias, the pass changes neither the loss nor the running statistics
    /// the train-mode run updates: the running mean gets the bias from `input_bias`.
    #[test]
    fn running_statistics_keep_the_bias() {
        use crate::Tensor;
        use crate::interp::{Params, init_params, run};
        let src = "input x: f32[N,1,4,4]\nconv1 = conv2d(x, channels=2, kernel=3)\n\
                   bn1 = batch_norm(conv1)\ny = sigmoid(bn1)\noutput y\n";
        let run = |passes: &[&str]| {
            let mut g = parse(src).unwrap();
            PassManager::new(passes)
                .unwrap()
                .run(&mut g, Mode::Train)
                .unwrap();
            let mut typed = parse(src).unwrap();
            PassManager::new(&["infer-shapes"])
                .unwrap()
                .run(&mut typed, Mode::Train)
                .unwrap();
            let mut params = init_params(&typed, 1);
            let bias = Tensor::new(vec![2], vec![0.75, -2.5]).unwrap();
            params.insert("conv1.bias".to_string(), bias);
            let x = Tensor::new(
                vec![2, 1, 4, 4],
                (0..32).map(|i| (i % 5) as f32 * 0.3).collect(),
            );
            let inputs = [("x".to_string(), x.unwrap())].into_iter().collect();
            let out = run(&g, Mode::Train, &inputs, &mut params).unwrap();
            (out.outputs, params)
        };
        let lowered = ["infer-shapes", "lower-batch-norm"];
        let (want, want_params) = run(&lowered);
        let (got, got_params) = run(&[&lowered[..], &["redundant-bias"]].concat());
        // Equal up to the rounding of `W·x + b` to f32 before the mean is taken: 1e-6.
        let close = |a: &Tensor, b: &Tensor| {
            let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6)
        };
        assert!(close(&got[0], &want[0]), "{got:?} vs {want:?}");
        for stat in ["bn1.running_mean", "bn1.running_var"] {
            assert!(close(&got_params[stat], &want_params[stat]), "{stat}");
        }
        let mean = |p: &Params| p["bn1.running_mean"].as_f32().unwrap()[0];
        assert!(
            mean(&got_params) > 0.05,
            "the bias shows in the running mean"
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
