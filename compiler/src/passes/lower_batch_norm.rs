//! `lower-batch-norm`: a model file writes `batch_norm`, whose meaning depends on the mode;
//! after this pass each one is `batch_norm_infer` (running statistics) or
//! `batch_norm_train` (batch statistics, updating the running ones), so that later passes
//! and kernels never branch on a mode flag.
//!
//! ```text
//! before:  bn1 = batch_norm(conv1, ...)
//! after:   bn1 = batch_norm_infer(conv1, ...)      # --mode infer
//! ```

use super::{Mode, Pass, PassContext, PassError};
use crate::ir::{Graph, NodeKind, Op};

/// The `lower-batch-norm` pass.
pub struct LowerBatchNorm;

impl Pass for LowerBatchNorm {
    fn name(&self) -> &'static str {
        "lower-batch-norm"
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<bool, PassError> {
        let mut changed = false;
        for id in g.node_ids() {
            if let NodeKind::Op(Op::BatchNorm(a)) = &g.node(id).kind {
                let a = a.clone();
                g.node_mut(id).kind = NodeKind::Op(match cx.mode {
                    Mode::Infer => Op::BatchNormInfer(a),
                    Mode::Train => Op::BatchNormTrain(a),
                });
                changed = true;
            }
        }
        Ok(changed)
    }
}
