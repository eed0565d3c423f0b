//! `attach-loss` (train mode): a model file describes the network up to its logits; for
//! training, this pass adds an `i32[N]` input `labels` and `loss =
//! softmax_cross_entropy(logits, labels)`, and makes the outputs `loss, logits` (the
//! logits give the training accuracy). A graph that already ends in a loss is left alone.
//!
//! ```text
//! before:  output fc3
//! after:   input labels: i32[N]
//!          loss = softmax_cross_entropy(fc3, labels): f32[]
//!          output loss, fc3
//! ```

use super::{Mode, Pass, PassContext, PassError, infer_shapes};
use crate::DType;
use crate::ir::{Dim, Graph, Node, NodeKind, Op, Span, TensorType};

/// The `attach-loss` pass.
pub struct AttachLoss;

fn fresh(g: &Graph, base: &str) -> String {
    let mut name = base.to_string();
    let mut i = 1;
    while g.lookup(&name).is_some() {
        name = format!("{base}{i}");
        i += 1;
    }
    name
}

impl Pass for AttachLoss {
    fn name(&self) -> &'static str {
        "attach-loss"
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<bool, PassError> {
        let has_loss = g
            .outputs()
            .iter()
            .any(|&o| matches!(g.node(o).op(), Some(Op::SoftmaxCrossEntropy)));
        if cx.mode != Mode::Train || has_loss {
            return Ok(false);
        }
        if g.outputs().len() != 1 {
            return Err(PassError::TrainOutputs {
                count: g.outputs().len(),
            });
        }
        let logits = g.outputs()[0];
        let batch = match g.node(logits).ty.as_ref().and_then(|t| t.dims.first()) {
            Some(d) => d.clone(),
            None => Dim::Sym("N".into()),
        };
        let labels = Node {
            name: fresh(g, "labels"),
            kind: NodeKind::Input,
            ty: Some(TensorType {
                dtype: DType::I32,
                dims: vec![batch],
            }),
            span: Span::default(),
        };
        // The names are fresh, so adding cannot collide.
        let Ok(labels) = g.add_node(labels) else {
            return Ok(false);
        };
        let name = fresh(g, "loss");
        // Errors about the loss point at the logits' statement.
        let span = g.node(logits).span;
        let Ok(loss) = g.add_op(name, Op::SoftmaxCrossEntropy, &[logits, labels], span) else {
            return Ok(false);
        };
        g.set_outputs(vec![loss, logits]);
        infer_shapes(g)?;
        Ok(true)
    }
}
