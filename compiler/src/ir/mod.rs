//! The intermediate representation: types, the op set, the graph, shape rules and the
//! verifier.

mod graph;
mod op;
pub mod shape;
mod types;
mod verify;

pub use graph::{DuplicateName, Graph, Node, NodeId, NodeKind};
pub use op::{
    BatchNormAttrs, Conv2dAttrs, Conv2dGradInputAttrs, Conv2dGradWeightAttrs, DenseAttrs, OPS, Op,
    OpInfo, OpKind, PoolAttrs, VarConvention,
};
pub use shape::{ShapeError, ShapeErrorKind};
pub use types::{Dim, Span, TensorType};
pub use verify::{VerifyError, VerifyErrorKind, verify};
