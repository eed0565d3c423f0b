//! bnc's runtime: weights (safetensors), datasets, the executor and the training loop.

pub mod atomic;
pub mod checkpoint;
pub mod data;
pub mod model;
pub mod rename;
pub mod sgd;
pub mod train;
mod train_bwd;
pub mod weights;
mod workers;
