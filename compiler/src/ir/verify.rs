//! The verifier: structural invariants that every graph satisfies after parsing and after
//! every pass. Once types are inferred, it also re-derives every op's types from the shape
//! rules, so a pass that rewires a graph without fixing types is caught at once.

use thiserror::Error;

use super::graph::{Graph, NodeKind};
use super::shape::{self, ShapeErrorKind};
use super::types::{Span, TensorType};

/// A broken invariant.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum VerifyErrorKind {
    /// An op has the wrong number of operands.
    #[error("{op} has {got} operands, expected {expected}")]
    OperandCount {
        /// The op's name.
        op: &'static str,
        /// Operands present.
        got: usize,
        /// Operands required.
        expected: usize,
    },
    /// Operand slots are not `0..n`, each once.
    #[error("operand slots {slots:?} are not 0..{n}")]
    Slots {
        /// The slots present.
        slots: Vec<u32>,
        /// The operand count.
        n: usize,
    },
    /// An input or parameter has operands.
    #[error("an input or parameter has operands")]
    LeafWithOperands,
    /// The graph has no outputs.
    #[error("the graph has no outputs")]
    NoOutputs,
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// A node has no type after shape inference.
    #[error("no type after shape inference")]
    Untyped,
    /// A node's type disagrees with its shape rule.
    #[error("type {got} disagrees with the inferred {expected}")]
    TypeMismatch {
        /// The inferred type.
        expected: TensorType,
        /// The recorded type.
        got: TensorType,
    },
    /// The shape rule itself refuses the operands.
    #[error("{0}")]
    Shape(ShapeErrorKind),
}

/// A verifier failure at a node.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("`{node}`: {kind}")]
pub struct VerifyError {
    /// The node's name (empty for graph-level problems).
    pub node: String,
    /// Where the node was written.
    pub span: Span,
    /// What is wrong (boxed: the kinds carry whole types).
    pub kind: Box<VerifyErrorKind>,
}

/// Checks the graph's invariants; with `typed`, also every type against the shape rules.
pub fn verify(g: &Graph, typed: bool) -> Result<(), VerifyError> {
    let graph_err = |kind| VerifyError {
        node: String::new(),
        span: Span::default(),
        kind: Box::new(kind),
    };
    if g.outputs().is_empty() {
        return Err(graph_err(VerifyErrorKind::NoOutputs));
    }
    let order = g
        .topo_order()
        .map_err(|_| graph_err(VerifyErrorKind::Cycle))?;
    for id in order {
        let node = g.node(id);
        let fail = |kind| VerifyError {
            node: node.name.clone(),
            span: node.span,
            kind: Box::new(kind),
        };
        let slots = g.operand_slots(id);
        let NodeKind::Op(op) = &node.kind else {
            if !slots.is_empty() {
                return Err(fail(VerifyErrorKind::LeafWithOperands));
            }
            if typed && node.ty.is_none() {
                return Err(fail(VerifyErrorKind::Untyped));
            }
            continue;
        };
        if slots.len() != op.arity() {
            return Err(fail(VerifyErrorKind::OperandCount {
                op: op.name(),
                got: slots.len(),
                expected: op.arity(),
            }));
        }
        if slots.iter().enumerate().any(|(i, (s, _))| *s as usize != i) {
            return Err(fail(VerifyErrorKind::Slots {
                slots: slots.iter().map(|s| s.0).collect(),
                n: slots.len(),
            }));
        }
        if !typed {
            continue;
        }
        let mut types = Vec::new();
        for (_, o) in &slots {
            types.push(
                g.node(*o)
                    .ty
                    .as_ref()
                    .ok_or_else(|| fail(VerifyErrorKind::Untyped))?,
            );
        }
        let inferred = shape::infer(op, &types[..op.data_arity()])
            .map_err(|k| fail(VerifyErrorKind::Shape(k)))?;
        let expected = std::iter::once(&inferred.result).chain(&inferred.params);
        let got = std::iter::once(node.ty.as_ref())
            .chain(types[op.data_arity()..].iter().map(|t| Some(*t)));
        for (e, g) in expected.zip(got) {
            match g {
                None => return Err(fail(VerifyErrorKind::Untyped)),
                Some(g) if g != e => {
                    return Err(fail(VerifyErrorKind::TypeMismatch {
                        expected: e.clone(),
                        got: g.clone(),
                    }));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}
