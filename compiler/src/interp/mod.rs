//! The reference interpreter: the truth that every JIT kernel, every pass and every
//! gradient is tested against. It executes a verified, shape-inferred graph op by op in
//! topological order, in infer or train mode, forward ops and the backward ops that
//! `autodiff` emits alike. It is slow on purpose and simple: `f32` storage, every op
//! computed in `f64` (every sum, every transcendental function) and its result rounded
//! to `f32` once, naive loops, no `unsafe`, no SIMD, no threads.
//!
//! Parameters live outside the graph in a [`Params`] map keyed by parameter node names
//! (`conv1.weight`, `bn1.running_mean`); train-mode BatchNorm updates the running
//! statistics in that map in place. [`init_params`] creates a fresh set.
//!
//! ```text
//! let outputs = interp::run(&graph, Mode::Infer, &inputs, &mut params)?;   // outputs only
//! let all = interp::run_all(&graph, Mode::Train, &inputs, &mut params)?;   // + every value
//! let g = interp::gradients(&model, &inputs, &params)?;  // loss, logits and every gradient
//! ```

mod array;
mod backward;
mod batch_norm;
mod fold;
mod fused_bn;
mod grad;
#[cfg(test)]
mod grad_tests;
mod init;
mod ops;
mod rng;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;

use crate::Tensor;
use crate::ir::{Dim, Graph, NodeId, NodeKind, Op, TensorType};
use crate::passes::Mode;

pub(crate) use array::Array;
pub use grad::{GradError, Gradients, gradients};
pub use init::init_params;
pub use rng::SplitMix64;

/// The parameter store: every parameter's value, by parameter node name.
pub type Params = BTreeMap<String, Tensor>;

/// Why the interpreter refused to run or stopped.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InterpError {
    /// The graph has a cycle, so there is no order to execute it in.
    #[error("the graph has a cycle")]
    Cycle,
    /// A node has no type: shape inference has not run on the graph.
    #[error("graph not typed: `{node}` has no type (run infer-shapes first)")]
    Untyped {
        /// The first node without a type.
        node: String,
    },
    /// The caller did not bind a graph input.
    #[error("missing input `{name}`")]
    MissingInput {
        /// The input's name.
        name: String,
    },
    /// An input tensor's element type, rank or fixed dimensions differ from the declared
    /// type.
    #[error("input `{name}` has type {got}, expected {expected}")]
    InputType {
        /// The input's name.
        name: String,
        /// The type of the tensor given.
        got: TensorType,
        /// The declared type.
        expected: TensorType,
    },
    /// Two inputs (or two axes of one input) give a symbolic dimension different sizes.
    #[error("input `{name}` binds `{symbol}` to {got}, but input `{first}` bound it to {bound}")]
    SymbolMismatch {
        /// The input that disagrees.
        name: String,
        /// The symbol (`N`).
        symbol: String,
        /// The size this input gives it.
        got: usize,
        /// The input that bound it first.
        first: String,
        /// The size it was bound to first.
        bound: usize,
    },
    /// A parameter's type has a symbolic dimension that no input binds.
    #[error("parameter `{name}` has dimension `{symbol}` that no input binds")]
    UnboundSymbol {
        /// The parameter's name.
        name: String,
        /// The unbound symbol.
        symbol: String,
    },
    /// The parameter store has no value for a parameter of the graph.
    #[error("missing parameter `{name}`")]
    MissingParam {
        /// The parameter's name.
        name: String,
    },
    /// A parameter's value has another element type or shape than the graph needs.
    #[error("parameter `{name}` has type {got}, expected {expected}")]
    ParamType {
        /// The parameter's name.
        name: String,
        /// The type of the stored tensor.
        got: TensorType,
        /// The type the graph needs.
        expected: TensorType,
    },
    /// A class label is negative or not below the number of classes.
    #[error("label {label} at index {index} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// The label.
        label: i32,
        /// Its position in the batch.
        index: usize,
        /// The number of classes (columns of the logits).
        classes: usize,
    },
}

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    /// The graph outputs, in the order of the graph's `output` statement.
    pub outputs: Vec<Tensor>,
    /// Every node's value by node name: inputs, parameters (as read at the start of the
    /// run, before any running-statistics update) and op results. Empty unless the run
    /// kept them ([`run_all`], [`Interpreter::with_keep_all`]).
    pub values: BTreeMap<String, Tensor>,
}

/// An interpreter for one graph and mode. Creating it checks the graph once (acyclic and
/// typed); each [`run`](Interpreter::run) then binds inputs and parameters and executes.
#[derive(Clone, Debug)]
pub struct Interpreter<'g> {
    /// The graph, checked acyclic and typed.
    graph: &'g Graph,
    /// Decides the meaning of the mode-less `batch_norm`.
    mode: Mode,
    /// Every node in a topological order.
    order: Vec<NodeId>,
    /// Whether runs keep every node's value.
    keep_all: bool,
}

impl<'g> Interpreter<'g> {
    /// An interpreter for `graph` in `mode`. The mode only decides the meaning of the
    /// mode-less `batch_norm` (batch statistics in train mode, running statistics in
    /// infer mode); `batch_norm_train` and `batch_norm_infer` mean what they say in
    /// either mode. Fails on a cycle or on a node without a type.
    pub fn new(graph: &'g Graph, mode: Mode) -> Result<Interpreter<'g>, InterpError> {
        let order = graph.topo_order().map_err(|_| InterpError::Cycle)?;
        if let Some(&id) = order.iter().find(|&&id| graph.node(id).ty.is_none()) {
            return Err(InterpError::Untyped {
                node: graph.node(id).name.clone(),
            });
        }
        Ok(Interpreter {
            graph,
            mode,
            order,
            keep_all: false,
        })
    }

    /// Whether runs keep every node's value in [`Outputs::values`].
    pub fn with_keep_all(mut self, keep_all: bool) -> Interpreter<'g> {
        self.keep_all = keep_all;
        self
    }

    /// Runs the graph forward. `inputs` binds every graph input by name (extra entries are
    /// ignored, so one map can feed both the infer and the train graph); the symbolic
    /// batch size is taken from the inputs and must agree across them. `params` must hold
    /// every parameter with the shape the graph needs; train-mode BatchNorm updates its
    /// running statistics there in place, in topological order (a running statistic
    /// shared by two BatchNorms is updated twice, as calling one PyTorch module twice
    /// would).
    pub fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &mut Params,
    ) -> Result<Outputs, InterpError> {
        let g = self.graph;
        let symbols = bind_inputs(g, inputs)?;
        // Every parameter is checked before any op runs, so that a failing run leaves the
        // running statistics untouched.
        let mut env: HashMap<NodeId, Array> = HashMap::new();
        let mut store = BTreeMap::new();
        for id in g.params() {
            let node = g.node(id);
            let value = read_param(&node.name, node.ty.as_ref(), &symbols, params)?;
            let value = Array::from_tensor(&value);
            store.insert(node.name.clone(), value.clone());
            env.insert(id, value);
        }
        for id in g.inputs() {
            env.insert(id, Array::from_tensor(&inputs[&g.node(id).name]));
        }
        let (env, updated) = self.execute(env, &mut store, true)?;
        for name in updated {
            if let Some(p) = params.get_mut(&name) {
                *p = store[&name].to_tensor();
            }
        }
        let outputs = g.outputs().iter().map(|o| env[o].to_tensor()).collect();
        let values = if self.keep_all {
            env.into_iter()
                .map(|(id, t)| (g.node(id).name.clone(), t.to_tensor()))
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(Outputs { outputs, values })
    }

    /// Runs the graph without rounding any value to `f32`: everything stays `f64`, for
    /// finite-difference checks. Inputs and parameters are bound by name without checks
    /// (the caller builds them from the graph's types); `params` receives the running
    /// statistics. Returns the outputs.
    #[cfg(test)]
    pub(crate) fn run_exact(
        &self,
        inputs: &HashMap<String, Array>,
        params: &mut BTreeMap<String, Array>,
    ) -> Result<Vec<Array>, InterpError> {
        let g = self.graph;
        let mut env = HashMap::new();
        for id in g.inputs().into_iter().chain(g.params()) {
            let name = &g.node(id).name;
            let value = inputs
                .get(name)
                .or_else(|| params.get(name))
                .ok_or_else(|| InterpError::MissingInput { name: name.clone() })?;
            env.insert(id, value.clone());
        }
        let (env, _) = self.execute(env, params, false)?;
        Ok(g.outputs().iter().map(|o| env[o].clone()).collect())
    }

    /// Executes every op in order on the bound inputs and parameters in `env`. Train-mode
    /// BatchNorm updates the running statistics in `store` (rounded to `f32` when `round`,
    /// as storing them would); returns every value and the names of the updated ones.
    fn execute(
        &self,
        mut env: HashMap<NodeId, Array>,
        store: &mut BTreeMap<String, Array>,
        round: bool,
    ) -> Result<(HashMap<NodeId, Array>, Vec<String>), InterpError> {
        let g = self.graph;
        let mut updated = Vec::new();
        for &id in &self.order {
            let NodeKind::Op(op) = &g.node(id).kind else {
                continue;
            };
            let operands = g.operands(id);
            let x: Vec<&Array> = operands.iter().map(|o| &env[o]).collect();
            let mut value = apply(op, &x, self.mode)?;
            // The BatchNorm ops that update running statistics, and the slot of the first.
            let train_bn = match op {
                Op::BatchNormTrain(a) => Some((a, 3)),
                Op::BatchNorm(a) if self.mode == Mode::Train => Some((a, 3)),
                Op::BatchStats(a) if self.mode == Mode::Train => Some((a, 1)),
                _ => None,
            };
            if let Some((a, first)) = train_bn {
                let stats = batch_norm::BatchStats::of(x[0]);
                // The running statistics are read from the store, not from the snapshot
                // in `x`, so that updates by earlier BatchNorms sharing them compose. An
                // empty batch has no statistics and leaves them unchanged.
                if stats.count > 0 {
                    let running_var = stats.running_var_update(a);
                    // The mean of the input with the bias `redundant-bias` took off it.
                    let mut mean = stats.mean.clone();
                    if a.input_bias
                        && let Some(b) = x.get(first + 2)
                    {
                        mean.iter_mut().zip(&b.data).for_each(|(m, b)| *m += b);
                    }
                    for (slot, stat) in [(first, &mean), (first + 1, &running_var)] {
                        let name = &g.node(operands[slot]).name;
                        if let Some(t) = store.get_mut(name) {
                            batch_norm::update_running(t, stat, a.momentum);
                            if round {
                                t.round_f32();
                            }
                            updated.push(name.clone());
                        }
                    }
                }
            }
            if round {
                value.round_f32();
            }
            env.insert(id, value);
        }
        Ok((env, updated))
    }
}

/// The value of one op on its operands (data operands, then parameters in slot order),
/// without side effects: a train-mode BatchNorm normalizes with the batch statistics but
/// updates no running statistic (the interpreter does that). `mode` decides the meaning
/// of the mode-less `batch_norm`.
pub(crate) fn apply(op: &Op, x: &[&Array], mode: Mode) -> Result<Array, InterpError> {
    Ok(match op {
        Op::Conv2d(a) => ops::conv2d(x[0], x[1], x.get(2).copied(), a),
        Op::Dense(_) => ops::dense(x[0], x[1], x.get(2).copied()),
        Op::BatchNormInfer(a) => batch_norm::infer(x[0], x[1], x[2], x[3], x[4], a),
        Op::BatchNorm(a) if mode == Mode::Infer => {
            batch_norm::infer(x[0], x[1], x[2], x[3], x[4], a)
        }
        Op::BatchNorm(a) | Op::BatchNormTrain(a) => {
            let stats = batch_norm::BatchStats::of(x[0]);
            batch_norm::train(x[0], x[1], x[2], &stats, a)
        }
        Op::Sigmoid => ops::map(x[0], sigmoid),
        Op::Relu => ops::map(x[0], |v| if v < 0.0 { 0.0 } else { v }),
        Op::Tanh => ops::map(x[0], f64::tanh),
        Op::AvgPool2d(a) => ops::avg_pool2d(x[0], a),
        Op::MaxPool2d(a) => ops::max_pool2d(x[0], a),
        Op::Flatten => ops::flatten(x[0]),
        Op::Add => ops::add(x[0], x[1]),
        Op::Softmax => ops::softmax(x[0]),
        Op::SoftmaxCrossEntropy => ops::softmax_cross_entropy(x[0], x[1])?,
        Op::ScaleShift => fold::scale_shift(x[0], x[1], x[2]),
        Op::BnScale { eps } => fold::bn_scale(x[0], x[1], *eps),
        Op::BnShift { eps } => fold::bn_shift(x[0], x[1], x[2], x[3], *eps),
        Op::ChannelScale => fold::channel_scale(x[0], x[1]),
        Op::ChannelAffine => fold::channel_affine(x[0], x[1], x[2]),
        Op::SoftmaxCrossEntropyGrad => backward::softmax_cross_entropy_grad(x[0], x[1])?,
        Op::SoftmaxGrad => backward::softmax_grad(x[0], x[1]),
        Op::DenseGradInput => backward::dense_grad_input(x[0], x[1]),
        Op::DenseGradWeight => backward::dense_grad_weight(x[0], x[1]),
        Op::BiasGrad => backward::bias_grad(x[0]),
        Op::Conv2dGradInput(a) => backward::conv2d_grad_input(x[0], x[1], a),
        Op::Conv2dGradWeight(a) => backward::conv2d_grad_weight(x[0], x[1], a),
        Op::BatchNormTrainGrad { eps } => backward::batch_norm_train_grad(x[0], x[1], x[2], *eps),
        Op::BatchNormWeightGrad { eps } => backward::batch_norm_weight_grad(x[0], x[1], *eps),
        // σ'(v) = σ(v)·(1 − σ(v)), from the result y = σ(v).
        Op::SigmoidGrad => backward::pointwise(x[0], x[1], |d, y| d * y * (1.0 - y)),
        // relu'(v) = 1 for v > 0, else 0 (0 at the kink, as PyTorch).
        Op::ReluGrad => backward::pointwise(x[0], x[1], |d, v| if v > 0.0 { d } else { 0.0 }),
        // tanh'(v) = 1 − tanh(v)², from the result y = tanh(v).
        Op::TanhGrad => backward::pointwise(x[0], x[1], |d, y| d * (1.0 - y * y)),
        Op::AvgPool2dGrad(a) => backward::avg_pool2d_grad(x[0], x[1], a),
        Op::MaxPool2dGrad(a) => backward::max_pool2d_grad(x[0], x[1], a),
        Op::Unflatten => backward::unflatten(x[0], x[1]),
        Op::BatchStats(_) => fused_bn::batch_stats(x[0]),
        Op::BatchNormApply { eps } => fused_bn::apply(x[0], x[1], x[2], x[3], *eps),
        Op::BatchNormGradSums { eps } => fused_bn::grad_sums(x[0], x[1], x[2], *eps),
        Op::BatchNormGradApply { eps } => fused_bn::grad_apply(x[0], x[1], x[2], x[3], x[4], *eps),
        Op::SelectRow { index } => fused_bn::select_row(x[0], *index),
    })
}

/// The logistic sigmoid.
fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// Runs `g` forward in `mode` and returns its outputs; see [`Interpreter::run`].
pub fn run(
    g: &Graph,
    mode: Mode,
    inputs: &HashMap<String, Tensor>,
    params: &mut Params,
) -> Result<Outputs, InterpError> {
    Interpreter::new(g, mode)?.run(inputs, params)
}

/// Like [`run`], and also keeps every node's value in [`Outputs::values`], for tests that
/// compare every intermediate.
pub fn run_all(
    g: &Graph,
    mode: Mode,
    inputs: &HashMap<String, Tensor>,
    params: &mut Params,
) -> Result<Outputs, InterpError> {
    Interpreter::new(g, mode)?
        .with_keep_all(true)
        .run(inputs, params)
}

/// The type of a concrete tensor, for error messages.
fn type_of(t: &Tensor) -> TensorType {
    TensorType {
        dtype: t.dtype(),
        dims: t.shape().iter().map(|&d| Dim::Fixed(d)).collect(),
    }
}

/// Checks every graph input against its declared type and binds the symbolic dimensions;
/// returns each symbol's size and the input that bound it.
fn bind_inputs(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
) -> Result<HashMap<String, (usize, String)>, InterpError> {
    let mut symbols: HashMap<String, (usize, String)> = HashMap::new();
    for id in g.inputs() {
        let node = g.node(id);
        let name = &node.name;
        let t = inputs
            .get(name)
            .ok_or_else(|| InterpError::MissingInput { name: name.clone() })?;
        // `Interpreter::new` has checked that every node is typed.
        let Some(expected) = &node.ty else { continue };
        let type_error = || InterpError::InputType {
            name: name.clone(),
            got: type_of(t),
            expected: expected.clone(),
        };
        if t.dtype() != expected.dtype || t.shape().len() != expected.rank() {
            return Err(type_error());
        }
        for (dim, &size) in expected.dims.iter().zip(t.shape()) {
            match dim {
                Dim::Fixed(d) if *d != size => return Err(type_error()),
                Dim::Fixed(_) => {}
                Dim::Sym(s) => match symbols.get(s) {
                    Some((bound, first)) if *bound != size => {
                        return Err(InterpError::SymbolMismatch {
                            name: name.clone(),
                            symbol: s.clone(),
                            got: size,
                            first: first.clone(),
                            bound: *bound,
                        });
                    }
                    Some(_) => {}
                    None => {
                        symbols.insert(s.clone(), (size, name.clone()));
                    }
                },
            }
        }
    }
    Ok(symbols)
}

/// Reads a parameter from the store, checking it against the graph's type.
fn read_param(
    name: &str,
    ty: Option<&TensorType>,
    symbols: &HashMap<String, (usize, String)>,
    params: &Params,
) -> Result<Tensor, InterpError> {
    let t = params.get(name).ok_or_else(|| InterpError::MissingParam {
        name: name.to_string(),
    })?;
    if let Some(ty) = ty {
        let mut dims = Vec::with_capacity(ty.rank());
        for d in &ty.dims {
            dims.push(match d {
                Dim::Fixed(n) => *n,
                Dim::Sym(s) => {
                    symbols
                        .get(s)
                        .ok_or_else(|| InterpError::UnboundSymbol {
                            name: name.to_string(),
                            symbol: s.clone(),
                        })?
                        .0
                }
            });
        }
        if t.dtype() != ty.dtype || t.shape() != dims {
            return Err(InterpError::ParamType {
                name: name.to_string(),
                got: type_of(t),
                expected: TensorType {
                    dtype: ty.dtype,
                    dims: dims.into_iter().map(Dim::Fixed).collect(),
                },
            });
        }
    }
    Ok(t.clone())
}
