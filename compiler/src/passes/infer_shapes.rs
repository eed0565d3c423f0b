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
use crate::ir::{Graph, NodeKind, ShapeError, ShapeErrorKind, shape};

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
pub fn infer_shapes(g: &mut Graph) -> Result<bool, ShapeError> {
    let mut changed = false;
    // The parser and the verifier guarantee an acyclic graph; an empty order then only
    // means there is nothing to do.
    let order = g.topo_order().unwrap_or_default();
    for id in order {
        let node = g.node(id);
        let fail = |kind| ShapeError {
            span: node.span,
            node: node.name.clone(),
            kind,
        };
        let NodeKind::Op(op) = &node.kind else {
            if let Some(ty) = &node.ty {
                shape::check_size(ty).map_err(fail)?;
            }
            continue;
        };
        let operands = g.operands(id);
        let mut data = Vec::new();
        for &o in &operands[..op.data_arity()] {
            let on = g.node(o);
            data.push(on.ty.as_ref().ok_or_else(|| {
                fail(ShapeErrorKind::Untyped {
                    name: on.name.clone(),
                })
            })?);
        }
        let inferred = shape::infer(op, &data).map_err(fail)?;
        if let Some(declared) = &node.ty
            && *declared != inferred.result
        {
            return Err(fail(ShapeErrorKind::Param {
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
    }
    Ok(changed)
}
