//! `infer-shapes`: gives every op its result type and every parameter its shape, from the
//! input types forward, so that model files never write channel counts or weight shapes.
//! Types already written in the text are checked against the inferred ones.
//!
//! ```text
//! before:  bn1 = batch_norm(conv1, eps=1e-5, momentum=0.9, running_var=biased)
//! after:   param bn1.weight: f32[6]
//!          ...
//!          bn1 = batch_norm(conv1, bn1.weight, ..., running_var=biased): f32[N,6,24,24]
//! ```

use super::{Pass, PassContext, PassError};
use crate::ir::{Graph, NodeId, NodeKind, ShapeError, ShapeErrorKind, shape};

/// The `infer-shapes` pass.
pub struct InferShapes;

impl Pass for InferShapes {
    fn name(&self) -> &'static str {
        "infer-shapes"
    }

    fn run(&mut self, g: &mut Graph, _cx: &mut PassContext) -> Result<bool, PassError> {
        Ok(infer_shapes(g)?)
    }
}

/// Infers all types in place; returns whether any type was filled in.
///
/// Nodes are visited in topological order, except that a node reading an untyped
/// parameter as data waits until the op that owns the parameter has given it a type.
pub fn infer_shapes(g: &mut Graph) -> Result<bool, ShapeError> {
    let mut changed = false;
    // The parser and the verifier guarantee an acyclic graph; an empty order then only
    // means there is nothing to do.
    let mut pending = g.topo_order().unwrap_or_default();
    loop {
        let mut waiting = Vec::new();
        for &id in &pending {
            match infer_node(g, id, false)? {
                Some(c) => changed |= c,
                None => waiting.push(id),
            }
        }
        if waiting.is_empty() {
            return Ok(changed);
        }
        if waiting.len() == pending.len() {
            // No progress: report the first node that still lacks an operand type.
            infer_node(g, waiting[0], true)?;
            return Ok(changed);
        }
        pending = waiting;
    }
}

/// Infers one node; `None` when it must wait for a parameter's type (unless `force`).
fn infer_node(g: &mut Graph, id: NodeId, force: bool) -> Result<Option<bool>, ShapeError> {
    let mut changed = false;
    let node = g.node(id);
    let fail = |kind| ShapeError {
        span: node.span,
        node: node.name.clone(),
        kind: Box::new(kind),
    };
    let NodeKind::Op(op) = &node.kind else {
        if let Some(ty) = &node.ty {
            shape::check_size(ty).map_err(fail)?;
        }
        return Ok(Some(false));
    };
    let operands = g.operands(id);
    let mut data = Vec::new();
    for &o in &operands[..op.data_arity()] {
        let on = g.node(o);
        match &on.ty {
            Some(t) => data.push(t),
            // An operand without a type yet is a parameter typed by a later op (or
            // depends on one): wait for it.
            None if !force => return Ok(None),
            None => {
                return Err(fail(ShapeErrorKind::Untyped {
                    name: on.name.clone(),
                }));
            }
        }
    }
    let inferred = shape::infer(op, &data).map_err(fail)?;
    if let Some(declared) = &node.ty
        && *declared != inferred.result
    {
        return Err(fail(ShapeErrorKind::Declared {
            name: node.name.clone(),
            got: declared.clone(),
            expected: inferred.result,
        }));
    }
    let mut updates = vec![(id, inferred.result)];
    for (&p, expected) in operands[op.data_arity()..].iter().zip(inferred.params) {
        let pn = g.node(p);
        match &pn.ty {
            Some(got) if *got != expected => {
                return Err(fail(ShapeErrorKind::Param {
                    name: pn.name.clone(),
                    got: got.clone(),
                    expected,
                }));
            }
            Some(_) => {}
            None => updates.push((p, expected)),
        }
    }
    for (n, ty) in updates {
        let slot = &mut g.node_mut(n).ty;
        if slot.is_none() {
            *slot = Some(ty);
            changed = true;
        }
    }
    Ok(Some(changed))
}
