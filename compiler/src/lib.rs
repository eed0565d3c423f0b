//! bnc's compiler: the IR and its text format, shape inference, the passes, the reference
//! interpreter and Cranelift code generation. It knows nothing of datasets, epochs or
//! optimizers; `bnc-runtime` builds on it.

pub mod codegen;
pub mod tensor;

pub use tensor::{DType, Tensor, TensorData};
