//! `autodiff` (train mode, after `attach-loss`): appends the backward graph of the loss
//! w.r.t. every trainable parameter and makes the graph outputs `loss, logits, <the
//! gradient of each parameter, in parameter creation order>`. Trainable parameters are
//! the `weight` and `bias` of conv2d and dense and the `weight` (γ) and `bias` (β) of a
//! BatchNorm, never its running statistics; the gradient of parameter `p` is the node
//! `grad.p` (`grad.conv1.weight`). A graph that already holds backward ops is left alone.
//!
//! Reverse mode: the nodes are visited in reverse topological order; each receives the
//! gradients its users send it (`∂L/∂v` per use), sums them (`v` used twice gets
//! `add(g1, g2)`: the chain rule sums over every path), and sends its operands their
//! share by the rules below. Only values that depend on a trainable parameter receive a
//! gradient, so the input `x` never gets one. With `dy = ∂L/∂y` for `y = op(...)`:
//!
//! - loss `L = mean_i CE(z_i, label_i)`: `∂L/∂z = (softmax(z) − onehot(labels))/N`
//!   — `softmax_cross_entropy_grad(z, labels)`, the seed.
//! - `y = conv2d(x, W, b)`, `y[o] = Σ W[o,c,k]·x[c, s·i+k−p] + b[o]`:
//!   `dx = conv2d_grad_input(dy, W)` (the transposed convolution, `Σ_o W·dy`),
//!   `dW = conv2d_grad_weight(dy, x)` (`Σ_{n,i} dy·x`), `db = bias_grad(dy)` (`Σ dy`).
//! - `y = dense(x, W, b) = x·Wᵀ + b`: `dx = dy·W` (`dense_grad_input`),
//!   `dW = dyᵀ·x` (`dense_grad_weight`), `db = Σ_n dy` (`bias_grad`).
//! - `y = batch_norm_train(x; γ, β)` with batch statistics over the `m` elements of each
//!   channel, `xhat = (x − mu)·rstd`, `rstd = 1/√(var+ε)`, `y = γ·xhat + β`:
//!   `dγ = Σ dy·xhat` (`batch_norm_weight_grad`), `dβ = Σ dy` (`bias_grad`),
//!   `dx = γ·rstd/m · (m·dy − dβ − xhat·dγ)` (`batch_norm_train_grad`; mu and var
//!   depend on x, hence the two correction terms). The running statistics get none.
//! - `y = sigmoid(x)`: `dx = dy·y·(1 − y)` (`sigmoid_grad(dy, y)`).
//! - `y = tanh(x)`: `dx = dy·(1 − y²)` (`tanh_grad(dy, y)`).
//! - `y = relu(x)`: `dx = dy·[x > 0]` (`relu_grad(dy, x)`).
//! - `y = softmax(x)`: `dx = y·(dy − Σ_j dy_j·y_j)` per row (`softmax_grad(dy, y)`).
//! - `y = avg_pool2d(x)`: each window's `dy/divisor` goes to each of its elements;
//!   `y = max_pool2d(x)`: each window's `dy` goes to its maximum (`avg_pool2d_grad`,
//!   `max_pool2d_grad`, both `(dy, x)` with the forward attributes).
//! - `y = flatten(x)`: `dx = dy` reshaped, `unflatten(dy, x)`.
//! - `y = add(a, b)`: `da = db = dy`, the identity: no new node.
//!
//! Other ops (`batch_norm_infer`, `scale_shift`, the parameter-only fold ops) have no
//! rule; one on the way from a parameter to the loss is an error.
//!
//! ```text
//! before:  fc = dense(flat, fc.weight, fc.bias, units=10)
//!          loss = softmax_cross_entropy(fc, labels)
//!          output loss, fc
//! after:   grad.fc = softmax_cross_entropy_grad(fc, labels)
//!          grad.fc.weight = dense_grad_weight(grad.fc, flat)
//!          grad.fc.bias = bias_grad(grad.fc)
//!          output loss, fc, grad.fc.weight, grad.fc.bias
//! ```

use std::collections::{HashMap, HashSet};

use super::{Mode, Pass, PassContext, PassError, infer_shapes};
use crate::ir::{Conv2dGradInputAttrs, Conv2dGradWeightAttrs, Graph, NodeId, NodeKind, Op, Span};

/// The `autodiff` pass.
pub struct Autodiff;

/// The parameters that get gradients: those in a `weight` or `bias` slot of conv2d,
/// dense or a BatchNorm.
fn trainable(g: &Graph) -> HashSet<NodeId> {
    let mut set = HashSet::new();
    for id in g.node_ids() {
        let Some(op) = g.node(id).op() else { continue };
        let ops = g.operands(id);
        for (i, slot) in op.param_slots().iter().enumerate() {
            if matches!(*slot, "weight" | "bias")
                && let Some(&p) = ops.get(op.data_arity() + i)
                && matches!(g.node(p).kind, NodeKind::Param)
            {
                set.insert(p);
            }
        }
    }
    set
}

/// The outputs that `autodiff` added, as `(parameter, its gradient)`: every output named
/// `grad.<p>` for a parameter `p`.
pub fn gradient_outputs(g: &Graph) -> Vec<(NodeId, NodeId)> {
    g.outputs()
        .iter()
        .filter_map(|&o| {
            let p = g.lookup(g.node(o).name.strip_prefix("grad.")?)?;
            matches!(g.node(p).kind, NodeKind::Param).then_some((p, o))
        })
        .collect()
}

/// `base`, or `base` with the first free numeric suffix (shared with `fuse-bn-train`).
pub(super) fn fresh(g: &Graph, base: String) -> String {
    let mut name = base.clone();
    let mut i = 1;
    while g.lookup(&name).is_some() {
        name = format!("{base}{i}");
        i += 1;
    }
    name
}

/// One gradient sent to a value: a node, and whether it was made for this value alone
/// (so that it may be renamed `grad.<value>`) or is the user's own gradient passed on.
type Contribution = (NodeId, bool);

/// The state of one run: the graph and the gradients sent so far.
struct Backward<'g> {
    g: &'g mut Graph,
    sent: HashMap<NodeId, Vec<Contribution>>,
}

impl Backward<'_> {
    /// Adds a backward op with a fresh name; fresh names cannot collide.
    fn add(&mut self, name: String, op: Op, operands: &[NodeId]) -> NodeId {
        let name = fresh(self.g, name);
        match self.g.add_op(name, op, operands, Span::default()) {
            Ok(id) => id,
            Err(d) => d.existing,
        }
    }

    /// Sends operand `to` of `user` the gradient `op(operands)`.
    fn send(&mut self, to: NodeId, user: NodeId, op: Op, operands: &[NodeId]) {
        let name = format!(
            "grad.{}.from_{}",
            self.g.node(to).name,
            self.g.node(user).name
        );
        let id = self.add(name, op, operands);
        self.sent.entry(to).or_default().push((id, true));
    }

    /// The gradient of `v`: the sum of what its users sent, named `grad.<v>`.
    fn total(&mut self, v: NodeId) -> Result<Option<NodeId>, PassError> {
        let sent = self.sent.remove(&v).unwrap_or_default();
        let name = format!("grad.{}", self.g.node(v).name);
        let is_param = matches!(self.g.node(v).kind, NodeKind::Param);
        let target = if is_param {
            // The gradient outputs are found by this exact name.
            if self.g.lookup(&name).is_some() {
                return Err(PassError::GradName {
                    param: self.g.node(v).name.clone(),
                });
            }
            name.clone()
        } else {
            fresh(self.g, name.clone())
        };
        Ok(match sent[..] {
            [] => None,
            [(only, true)] => {
                // The name is free (checked or fresh), so renaming cannot fail.
                let _ = self.g.rename(only, target);
                Some(only)
            }
            [(only, false)] => Some(only),
            _ => {
                let mut acc = sent[0].0;
                for (k, &(c, _)) in sent.iter().enumerate().skip(1) {
                    let n = if k + 1 == sent.len() {
                        target.clone()
                    } else {
                        format!("{name}.sum{k}")
                    };
                    // ∂L/∂v = Σ over the uses of v.
                    acc = self.add(n, Op::Add, &[acc, c]);
                }
                Some(acc)
            }
        })
    }

    /// Sends the operands of `y = op(...)` that need one their gradient, given `dy`.
    fn rules(
        &mut self,
        y: NodeId,
        op: &Op,
        dy: NodeId,
        needs: &HashSet<NodeId>,
    ) -> Result<(), PassError> {
        let ops = self.g.operands(y);
        let x = ops[0];
        let wants = |slot: usize| ops.get(slot).filter(|o| needs.contains(o)).copied();
        let not_differentiable = |g: &Graph| PassError::NotDifferentiable {
            node: g.node(y).name.clone(),
            op: op.name(),
        };
        match op {
            Op::Conv2d(a) => {
                if let Some(to) = wants(0) {
                    let dims = self.g.node(x).ty.as_ref().map(|t| t.concrete(0));
                    let Some([_, _, h, w]) =
                        dims.as_deref().and_then(|d| <[usize; 4]>::try_from(d).ok())
                    else {
                        return Err(not_differentiable(self.g));
                    };
                    let attrs = Conv2dGradInputAttrs {
                        input_size: [h, w],
                        stride: a.stride,
                        padding: a.padding,
                        groups: a.groups,
                    };
                    // dx = Σ_o W[o]ᵀ ⋆ dy[o]: the transposed convolution.
                    self.send(to, y, Op::Conv2dGradInput(attrs), &[dy, ops[1]]);
                }
                if let Some(to) = wants(1) {
                    let attrs = Conv2dGradWeightAttrs {
                        kernel: a.kernel,
                        stride: a.stride,
                        padding: a.padding,
                        groups: a.groups,
                    };
                    // dW[o,c,k] = Σ_{n,i} dy[n,o,i]·x[n,c,s·i+k−p].
                    self.send(to, y, Op::Conv2dGradWeight(attrs), &[dy, x]);
                }
                if let Some(to) = wants(2) {
                    // db[o] = Σ_{n,i} dy[n,o,i].
                    self.send(to, y, Op::BiasGrad, &[dy]);
                }
            }
            Op::Dense(_) => {
                if let Some(to) = wants(0) {
                    // y = x·Wᵀ + b ⇒ dx = dy·W.
                    self.send(to, y, Op::DenseGradInput, &[dy, ops[1]]);
                }
                if let Some(to) = wants(1) {
                    // dW = dyᵀ·x.
                    self.send(to, y, Op::DenseGradWeight, &[dy, x]);
                }
                if let Some(to) = wants(2) {
                    // db = Σ_n dy.
                    self.send(to, y, Op::BiasGrad, &[dy]);
                }
            }
            Op::BatchNormTrain(a) | Op::BatchNorm(a) => {
                let eps = a.eps;
                if let Some(to) = wants(0) {
                    // dx = γ·rstd/m · (m·dy − Σdy − xhat·Σ(dy·xhat)).
                    self.send(to, y, Op::BatchNormTrainGrad { eps }, &[dy, x, ops[1]]);
                }
                if let Some(to) = wants(1) {
                    // dγ = Σ dy·xhat.
                    self.send(to, y, Op::BatchNormWeightGrad { eps }, &[dy, x]);
                }
                if let Some(to) = wants(2) {
                    // dβ = Σ dy.
                    self.send(to, y, Op::BiasGrad, &[dy]);
                }
            }
            // σ' = σ·(1 − σ), from the result.
            Op::Sigmoid => self.unary(&wants, y, Op::SigmoidGrad, &[dy, y]),
            // tanh' = 1 − tanh², from the result.
            Op::Tanh => self.unary(&wants, y, Op::TanhGrad, &[dy, y]),
            // relu' = [x > 0], from the operand.
            Op::Relu => self.unary(&wants, y, Op::ReluGrad, &[dy, x]),
            // dx = y·(dy − Σ dy·y), from the result.
            Op::Softmax => self.unary(&wants, y, Op::SoftmaxGrad, &[dy, y]),
            Op::AvgPool2d(a) => self.unary(&wants, y, Op::AvgPool2dGrad(a.clone()), &[dy, x]),
            Op::MaxPool2d(a) => self.unary(&wants, y, Op::MaxPool2dGrad(a.clone()), &[dy, x]),
            // flatten is a reshape; its gradient is the reshape back.
            Op::Flatten => self.unary(&wants, y, Op::Unflatten, &[dy, x]),
            Op::Add => {
                // ∂(a + b)/∂a = ∂(a + b)/∂b = 1: both operands get dy itself.
                for slot in 0..2 {
                    if let Some(to) = wants(slot) {
                        self.sent.entry(to).or_default().push((dy, false));
                    }
                }
            }
            _ => return Err(not_differentiable(self.g)),
        }
        Ok(())
    }

    /// A one-operand op: operand 0 gets `op(operands)` if it needs a gradient.
    fn unary(
        &mut self,
        wants: &impl Fn(usize) -> Option<NodeId>,
        y: NodeId,
        op: Op,
        operands: &[NodeId],
    ) {
        if let Some(to) = wants(0) {
            self.send(to, y, op, operands);
        }
    }
}

impl Pass for Autodiff {
    fn name(&self) -> &'static str {
        "autodiff"
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<bool, PassError> {
        let has_backward = g
            .node_ids()
            .into_iter()
            .any(|id| g.node(id).op().is_some_and(Op::is_backward));
        if cx.mode != Mode::Train || has_backward {
            return Ok(false);
        }
        let loss = g
            .outputs()
            .iter()
            .copied()
            .find(|&o| matches!(g.node(o).op(), Some(Op::SoftmaxCrossEntropy)))
            .ok_or(PassError::NoLoss)?;
        // The gradient ops take sizes from the forward types.
        infer_shapes(g)?;
        let trainable = trainable(g);
        let order = g.topo_order().unwrap_or_default();
        // The values that depend on a trainable parameter: only they get gradients.
        let mut needs = HashSet::new();
        for &id in &order {
            let depends = match g.node(id).kind {
                NodeKind::Param => trainable.contains(&id),
                NodeKind::Input => false,
                NodeKind::Op(_) => g.operands(id).iter().any(|o| needs.contains(o)),
            };
            if depends {
                needs.insert(id);
            }
        }
        let mut bw = Backward {
            g,
            sent: HashMap::new(),
        };
        let loss_ops = bw.g.operands(loss);
        if needs.contains(&loss_ops[0]) {
            // ∂L/∂z = (softmax(z) − onehot(labels)) / N: the seed.
            bw.send(loss_ops[0], loss, Op::SoftmaxCrossEntropyGrad, &loss_ops);
        }
        let mut grads = Vec::new();
        for &v in order.iter().rev() {
            if v == loss || !needs.contains(&v) {
                continue;
            }
            let Some(dv) = bw.total(v)? else { continue };
            match &bw.g.node(v).kind {
                NodeKind::Param => grads.push((v, dv)),
                NodeKind::Op(op) => {
                    let op = op.clone();
                    bw.rules(v, &op, dv, &needs)?;
                }
                NodeKind::Input => {}
            }
        }
        let g = bw.g;
        // Parameter creation order.
        grads.sort();
        let mut outputs = g.outputs().to_vec();
        outputs.extend(grads.iter().map(|&(_, d)| d));
        g.set_outputs(outputs);
        infer_shapes(g)?;
        Ok(!grads.is_empty())
    }
}
