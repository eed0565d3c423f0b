//! bnc's runtime: weights (safetensors), datasets, the executor and the training loop.

pub mod data;
pub mod model;
pub mod weights;
