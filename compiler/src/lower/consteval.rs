//! Bind-time evaluation of parameter-only expressions (what `fold-bn` creates: folded
//! weights and biases, BatchNorm scales and shifts). Everything is computed in f64 from
//! the stored f32 parameters and rounded to f32 once, at the end, so folding adds no
//! rounding beyond that of the result.

use std::collections::HashMap;

use thiserror::Error;

use crate::Tensor;
use crate::ir::{Graph, NodeId, NodeKind, Op};

/// Why a parameter expression cannot be evaluated.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConstError {
    /// A parameter is not in the store.
    #[error("missing parameter `{name}`")]
    Missing {
        /// The parameter's name.
        name: String,
    },
    /// A parameter in the store has the wrong shape.
    #[error("parameter `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        /// The parameter's name.
        name: String,
        /// Its shape in the store.
        got: Vec<usize>,
        /// The shape the graph needs.
        expected: Vec<usize>,
    },
    /// A parameter in the store is not f32.
    #[error("parameter `{name}` is not f32")]
    DType {
        /// The parameter's name.
        name: String,
    },
    /// An op that has no bind-time evaluation.
    #[error("`{node}`: {op} cannot be evaluated from parameters")]
    Unsupported {
        /// The node.
        node: String,
        /// The op's name.
        op: &'static str,
    },
}

/// A value in f64 with its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Value64 {
    /// The shape.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<f64>,
}

/// Evaluates parameter-only nodes, memoizing shared subexpressions.
pub struct ConstEval<'a> {
    g: &'a Graph,
    params: &'a dyn Fn(&str) -> Option<&'a Tensor>,
    memo: HashMap<NodeId, Value64>,
}

impl<'a> ConstEval<'a> {
    /// An evaluator over `g` reading parameters through `params`.
    pub fn new(g: &'a Graph, params: &'a dyn Fn(&str) -> Option<&'a Tensor>) -> ConstEval<'a> {
        ConstEval {
            g,
            params,
            memo: HashMap::new(),
        }
    }

    /// The value of `id`, rounded once to f32.
    pub fn eval_f32(&mut self, id: NodeId) -> Result<Tensor, ConstError> {
        let v = self.eval(id)?;
        let data = v.data.iter().map(|&x| x as f32).collect();
        Ok(Tensor::new(v.shape, data).unwrap_or_else(|| Tensor::zeros(&[0])))
    }

    /// The value of `id` in f64.
    pub fn eval(&mut self, id: NodeId) -> Result<Value64, ConstError> {
        if let Some(v) = self.memo.get(&id) {
            return Ok(v.clone());
        }
        let node = self.g.node(id);
        let expected = node.ty.as_ref().map(|t| t.concrete(1)).unwrap_or_default();
        let v = match &node.kind {
            NodeKind::Param => {
                let t = (self.params)(&node.name).ok_or_else(|| ConstError::Missing {
                    name: node.name.clone(),
                })?;
                if t.shape() != expected {
                    return Err(ConstError::Shape {
                        name: node.name.clone(),
                        got: t.shape().to_vec(),
                        expected,
                    });
                }
                let data = t.as_f32().ok_or_else(|| ConstError::DType {
                    name: node.name.clone(),
                })?;
                Value64 {
                    shape: expected,
                    data: data.iter().map(|&x| f64::from(x)).collect(),
                }
            }
            NodeKind::Input => {
                return Err(ConstError::Unsupported {
                    node: node.name.clone(),
                    op: "input",
                });
            }
            NodeKind::Op(op) => {
                let mut args = Vec::new();
                for o in self.g.operands(id) {
                    args.push(self.eval(o)?);
                }
                let d = |i: usize| &args[i].data;
                let data: Vec<f64> = match op {
                    // s = γ / √(var + ε)
                    Op::BnScale { eps } => d(0)
                        .iter()
                        .zip(d(1))
                        .map(|(g, v)| g / (v + eps).sqrt())
                        .collect(),
                    // t = β − mean·γ/√(var + ε)
                    Op::BnShift { eps } => (0..d(0).len())
                        .map(|c| d(1)[c] - d(2)[c] * d(0)[c] / (d(3)[c] + eps).sqrt())
                        .collect(),
                    // W'[o, ...] = W[o, ...]·s[o]
                    Op::ChannelScale => {
                        let per = d(0).len() / d(1).len().max(1);
                        d(0).iter()
                            .enumerate()
                            .map(|(i, w)| w * d(1)[i / per.max(1)])
                            .collect()
                    }
                    // b' = b·s + t
                    Op::ChannelAffine => (0..d(0).len())
                        .map(|c| d(0)[c] * d(1)[c] + d(2)[c])
                        .collect(),
                    other => {
                        return Err(ConstError::Unsupported {
                            node: node.name.clone(),
                            op: other.name(),
                        });
                    }
                };
                Value64 {
                    shape: expected,
                    data,
                }
            }
        };
        self.memo.insert(id, v.clone());
        Ok(v)
    }
}
