//! Fusion decisions: which ops become one kernel. This is kept apart from lowering (how a
//! group becomes loops) so that the rules read as a table:
//!
//! | group starts with | may absorb, in order, each only if it is the single use |
//! |---|---|
//! | conv2d | scale_shift, activation, pool |
//! | dense | scale_shift, activation |
//! | scale_shift | activation, pool |
//! | add | activation |
//! | activation, pool, softmax | nothing |
//! | flatten | a view: no kernel |
//!
//! An intermediate value is absorbed only when it has exactly one use and is not a graph
//! output, because a fused kernel never writes it to memory.

use super::LowerError;
use crate::ir::{Graph, NodeId, Op};

/// Ops fused into one kernel, producer first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The nodes, in dataflow order.
    pub nodes: Vec<NodeId>,
}

/// The only user of `id` (reading it in slot 0), if it has exactly one use and is not a
/// graph output.
fn sole_user(g: &Graph, id: NodeId) -> Option<NodeId> {
    let users = g.users(id);
    match users[..] {
        [(u, 0)] if !g.outputs().contains(&id) => Some(u),
        _ => None,
    }
}

fn absorb(g: &Graph, nodes: &mut Vec<NodeId>, pred: fn(&Op) -> bool) {
    let last = *nodes.last().unwrap_or(&nodes[0]);
    if let Some(u) = sole_user(g, last)
        && g.node(u).op().is_some_and(pred)
    {
        nodes.push(u);
    }
}

fn is_act(op: &Op) -> bool {
    matches!(op, Op::Sigmoid | Op::Relu | Op::Tanh)
}

fn is_pool(op: &Op) -> bool {
    matches!(op, Op::AvgPool2d(_) | Op::MaxPool2d(_))
}

/// Groups the non-constant ops of a typed inference graph into kernels, in execution order.
pub fn fuse(g: &Graph) -> Result<Vec<Group>, LowerError> {
    let order = g.topo_order().unwrap_or_default();
    let mut taken = std::collections::HashSet::new();
    let mut groups = Vec::new();
    let param_only = g.param_only();
    for id in order {
        let Some(op) = g.node(id).op() else { continue };
        if taken.contains(&id) || param_only.contains(&id) {
            continue;
        }
        let mut nodes = vec![id];
        match op {
            Op::Conv2d(_) => {
                absorb(g, &mut nodes, |o| matches!(o, Op::ScaleShift));
                absorb(g, &mut nodes, is_act);
                absorb(g, &mut nodes, is_pool);
            }
            Op::Dense(_) => {
                absorb(g, &mut nodes, |o| matches!(o, Op::ScaleShift));
                absorb(g, &mut nodes, is_act);
            }
            Op::ScaleShift => {
                absorb(g, &mut nodes, is_act);
                absorb(g, &mut nodes, is_pool);
            }
            Op::Add => absorb(g, &mut nodes, is_act),
            Op::Sigmoid
            | Op::Relu
            | Op::Tanh
            | Op::AvgPool2d(_)
            | Op::MaxPool2d(_)
            | Op::Softmax
            | Op::Flatten => {}
            Op::BatchNorm(_) | Op::BatchNormInfer(_) => {
                return Err(LowerError::Unsupported {
                    node: g.node(id).name.clone(),
                    op: op.name(),
                    hint: "run fold-bn or bn-scale-shift first",
                });
            }
            other => {
                return Err(LowerError::Unsupported {
                    node: g.node(id).name.clone(),
                    op: other.name(),
                    hint: "the inference backend runs infer-mode graphs only",
                });
            }
        }
        taken.extend(nodes.iter().copied());
        groups.push(Group { nodes });
    }
    Ok(groups)
}
