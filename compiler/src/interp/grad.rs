//! One training step's numbers from the reference interpreter: the loss, the logits,
//! the gradient of the loss w.r.t. every trainable parameter and the running statistics
//! after the step. This is the reference the JIT training kernels are tested against.
//!
//! ```text
//! let step = interp::gradients(&model, &inputs, &params)?;   // model as parsed
//! step.grads["conv1.weight"]                                // ∂loss/∂conv1.weight
//! ```

use std::collections::HashMap;

use thiserror::Error;

use super::{InterpError, Params, run_all};
use crate::Tensor;
use crate::ir::{Graph, NodeId, Op};
use crate::passes::{Mode, PassError, PassManager, default_pipeline};

/// The result of one training step on the reference interpreter.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// The mean softmax cross-entropy of the batch.
    pub loss: f32,
    /// The logits the loss was computed from.
    pub logits: Tensor,
    /// `∂loss/∂p` for every trainable parameter `p` of the train graph, keyed by the
    /// parameter's name (`conv1.weight`). A bias that `redundant-bias` removed is not in
    /// the train graph and has no entry: training leaves it unchanged.
    pub grads: Params,
    /// The running statistics (`bn1.running_mean`, ...) after the step.
    pub running: Params,
}

/// Why [`gradients`] failed.
#[derive(Debug, Error)]
pub enum GradError {
    /// The train pipeline refused the model.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The interpreter refused the inputs or parameters.
    #[error(transparent)]
    Interp(#[from] InterpError),
    /// The compiled graph has no `softmax_cross_entropy` output.
    #[error("the train graph has no loss output")]
    NoLoss,
}

/// Compiles a copy of `g` (a model as parsed, or typed) with the default train pipeline
/// but `fuse-bn-train` (`infer-shapes`, `lower-batch-norm`, `attach-loss`,
/// `redundant-bias`, `autodiff`, `dce`: the reference keeps `batch_norm_train`, which
/// also updates the running statistics) and runs it on the interpreter. `inputs` binds
/// `x` and `labels`; `params` is not modified (the updated running statistics are
/// returned instead).
pub fn gradients(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
    params: &Params,
) -> Result<Gradients, GradError> {
    let passes: Vec<&str> = default_pipeline(Mode::Train)
        .iter()
        .copied()
        .filter(|&p| p != "fuse-bn-train")
        .collect();
    gradients_with(g, &passes, inputs, params)
}

/// [`gradients`] with another pass list (tests compare pipelines with it).
pub(crate) fn gradients_with(
    g: &Graph,
    passes: &[&str],
    inputs: &HashMap<String, Tensor>,
    params: &Params,
) -> Result<Gradients, GradError> {
    let mut g = g.clone();
    PassManager::new(passes)?.run(&mut g, Mode::Train)?;
    let mut params = params.clone();
    let out = run_all(&g, Mode::Train, inputs, &mut params)?;
    let loss = *g
        .outputs()
        .iter()
        .find(|&&o| matches!(g.node(o).op(), Some(Op::SoftmaxCrossEntropy)))
        .ok_or(GradError::NoLoss)?;
    let value = |id: NodeId| out.values[&g.node(id).name].clone();
    let loss_value = value(loss).as_f32().map_or(f32::NAN, |v| v[0]);
    let logits = value(g.operands(loss)[0]);
    let mut grads = Params::new();
    for (param, grad) in crate::passes::gradient_outputs(&g) {
        grads.insert(g.node(param).name.clone(), value(grad));
    }
    let mut running = Params::new();
    for id in g.node_ids() {
        let first = match g.node(id).op() {
            Some(Op::BatchNormTrain(_) | Op::BatchNorm(_)) => 3,
            Some(Op::BatchStats(_)) => 1,
            _ => continue,
        };
        {
            for &stat in &g.operands(id)[first..first + 2] {
                let name = &g.node(stat).name;
                if let Some(t) = params.get(name) {
                    running.insert(name.clone(), t.clone());
                }
            }
        }
    }
    Ok(Gradients {
        loss: loss_value,
        logits,
        grads,
        running,
    })
}
