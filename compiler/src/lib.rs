//! bnc's compiler: the IR and its text format, shape inference, the passes, the reference
//! interpreter and Cranelift code generation. It knows nothing of datasets, epochs or
//! optimizers; `bnc-runtime` builds on it.

pub mod codegen;
pub mod interp;
pub mod ir;
pub mod lower;
pub mod passes;
pub mod suggest;
pub mod tensor;
pub mod text;

pub use tensor::{DType, Tensor, TensorData};
