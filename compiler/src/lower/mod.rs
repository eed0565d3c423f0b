//! From an optimized inference graph to an executable plan: which ops become one kernel
//! (`fuse`), how each group becomes a `KernelSpec` with its buffer arguments, where every
//! activation lives (`memory`: buffers reused by liveness), and which parameter-only
//! expressions the runtime evaluates once at bind time (`consteval`, in f64).

pub mod consteval;
mod fuse;
mod memory;
pub mod train;

use std::collections::HashMap;

use thiserror::Error;

pub use fuse::{Group, fuse};

use crate::codegen::{self, Activation, Epilogue, KernelSpec, Pool2d, PoolKind};
use crate::ir::{Graph, NodeId, Op, PoolAttrs, TensorType};

/// Why a graph cannot be lowered to kernels.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LowerError {
    /// An op (or a use of it) that the backend cannot compile.
    #[error("`{node}`: the native backend cannot compile this {op}; {hint}")]
    Unsupported {
        /// The node.
        node: String,
        /// The op's name.
        op: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// A node has no type: shape inference did not run.
    #[error("`{node}` has no type; run infer-shapes first")]
    Untyped {
        /// The node.
        node: String,
    },
    /// The graph must have exactly one input.
    #[error("the native backend needs exactly one f32 graph input, found {found}")]
    Inputs {
        /// How many inputs there are.
        found: usize,
    },
}

/// Where a kernel argument lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arg {
    /// The caller's input buffer.
    Input,
    /// An activation buffer of the plan.
    Slot(usize),
    /// A weight prepared at bind time.
    Weight(usize),
}

/// One kernel of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedKernel {
    /// The group's node names joined by `+` (`conv1+act1+pool1`).
    pub name: String,
    /// The fused nodes, producer first.
    pub nodes: Vec<NodeId>,
    /// What to compile.
    pub spec: KernelSpec,
    /// The buffers, in the order of `spec.buffer_names()`.
    pub args: Vec<Arg>,
}

/// A tensor the runtime computes from parameters when it binds weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Weight {
    /// The parameter or parameter-only expression.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Set when the kernel wants the weight in a packed layout (`codegen::pack_weight`).
    pub pack: Option<KernelSpec>,
}

/// A graph output and where its value is.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOutput {
    /// The output node's name.
    pub name: String,
    /// Its buffer.
    pub arg: Arg,
    /// Its shape for one image (without the batch axis).
    pub dims: Vec<usize>,
}

/// An executable inference plan: kernels in order, buffers, weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Kernels in execution order.
    pub kernels: Vec<PlannedKernel>,
    /// Size of each activation buffer, in f32 elements per image.
    pub slots: Vec<usize>,
    /// Weights to prepare at bind time.
    pub weights: Vec<Weight>,
    /// The input's name.
    pub input_name: String,
    /// The input's shape for one image.
    pub input_dims: Vec<usize>,
    /// The input's batch size when the model declares it fixed (`f32[32,1,28,28]`); `None`
    /// for the symbolic `N`.
    pub input_batch: Option<usize>,
    /// The outputs.
    pub outputs: Vec<PlanOutput>,
}

/// Static figures of a plan (`bnc compile --emit stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Number of kernels.
    pub kernels: usize,
    /// Floating-point operations per image.
    pub flops_per_image: u64,
    /// Bytes read and written per image.
    pub bytes_per_image: u64,
    /// Activation memory per image (all buffers, input included), in bytes.
    pub activation_bytes_per_image: u64,
}

impl Plan {
    /// The plan's static figures.
    pub fn stats(&self) -> Stats {
        let per_image: usize =
            self.slots.iter().sum::<usize>() + self.input_dims.iter().product::<usize>();
        Stats {
            kernels: self.kernels.len(),
            flops_per_image: self.kernels.iter().map(|k| codegen::flops(&k.spec)).sum(),
            bytes_per_image: self.kernels.iter().map(|k| codegen::bytes(&k.spec)).sum(),
            activation_bytes_per_image: per_image as u64 * 4,
        }
    }

    /// The kernel specs in order (what `JitKernels::compile` takes).
    pub fn specs(&self) -> Vec<KernelSpec> {
        self.kernels.iter().map(|k| k.spec).collect()
    }
}

fn ty(g: &Graph, id: NodeId) -> Result<&TensorType, LowerError> {
    g.node(id).ty.as_ref().ok_or_else(|| LowerError::Untyped {
        node: g.node(id).name.clone(),
    })
}

/// Per-image dims (without the batch axis; none for a scalar).
fn image_dims(t: &TensorType) -> Vec<usize> {
    t.concrete(1).get(1..).unwrap_or_default().to_vec()
}

fn chw(t: &TensorType) -> (usize, usize, usize) {
    let d = image_dims(t);
    match d[..] {
        [c, h, w] => (c, h, w),
        [c] => (c, 1, 1),
        _ => (d.iter().product(), 1, 1),
    }
}

fn activation(op: &Op) -> Option<Activation> {
    match op {
        Op::Sigmoid => Some(Activation::Sigmoid),
        Op::Relu => Some(Activation::Relu),
        Op::Tanh => Some(Activation::Tanh),
        _ => None,
    }
}

fn pool2d(op: &Op) -> Option<Pool2d> {
    let (kind, a): (PoolKind, &PoolAttrs) = match op {
        Op::AvgPool2d(a) => (PoolKind::Avg, a),
        Op::MaxPool2d(a) => (PoolKind::Max, a),
        _ => return None,
    };
    Some(Pool2d {
        kind,
        kernel: a.kernel,
        stride: a.stride,
        padding: a.padding,
        count_include_pad: a.count_include_pad,
    })
}

/// Lowers a typed inference graph (after `fold-bn` or `bn-scale-shift`) to a plan.
pub fn lower(g: &Graph) -> Result<Plan, LowerError> {
    let inputs = g.inputs();
    let is_f32 = |i: NodeId| ty(g, i).is_ok_and(|t| t.dtype == crate::DType::F32);
    let [input] = inputs[..] else {
        return Err(LowerError::Inputs {
            found: inputs.len(),
        });
    };
    if !is_f32(input) {
        // One input, but not an f32 tensor the kernels could read.
        return Err(LowerError::Inputs { found: 0 });
    }
    if ty(g, input)?.dims.is_empty() {
        // A scalar input has no batch axis to split over images.
        return Err(LowerError::Unsupported {
            node: g.node(input).name.clone(),
            op: "input",
            hint: "the input needs a batch axis (a rank of at least 1)",
        });
    }
    let groups = fuse(g)?;
    let mut weights: Vec<Weight> = Vec::new();
    let mut weight_of: HashMap<(NodeId, bool), usize> = HashMap::new();
    let mut weight = |id: NodeId, pack: Option<KernelSpec>| -> Result<Arg, LowerError> {
        let key = (id, pack.is_some());
        if let Some(&i) = weight_of.get(&key) {
            return Ok(Arg::Weight(i));
        }
        let shape = ty(g, id)?.concrete(1);
        weights.push(Weight {
            node: id,
            name: g.node(id).name.clone(),
            shape,
            pack,
        });
        weight_of.insert(key, weights.len() - 1);
        Ok(Arg::Weight(weights.len() - 1))
    };
    // Values are numbered as kernels produce them; `memory` maps them to buffers.
    let mut value_of: HashMap<NodeId, memory::Val> = HashMap::new();
    value_of.insert(input, memory::Val::Input);
    let mut kernels = Vec::new();
    let mut planner = memory::Planner::default();
    for group in &groups {
        let nodes = &group.nodes;
        let first = nodes[0];
        let last = *nodes.last().unwrap_or(&first);
        let Some(op) = g.node(first).op() else {
            continue;
        };
        if let Op::Flatten = op {
            // A flatten is a new view of the same row-major buffer.
            let src = value_of[&g.operands(first)[0]];
            value_of.insert(first, src);
            continue;
        }
        let ops = g.operands(first);
        let x = ty(g, ops[0])?;
        let find = |pred: fn(&Op) -> bool| {
            nodes
                .iter()
                .copied()
                .find(|&n| g.node(n).op().is_some_and(pred))
        };
        let act = nodes
            .iter()
            .find_map(|&n| g.node(n).op().and_then(activation))
            .unwrap_or(Activation::None);
        let pool = nodes.iter().find_map(|&n| g.node(n).op().and_then(pool2d));
        let ss = find(|o| matches!(o, Op::ScaleShift));
        let mut args = vec![value_of[&ops[0]].arg()];
        let mut inputs_used = vec![ops[0]];
        let spec = match op {
            Op::Conv2d(_) | Op::Dense(_) => {
                let (bias, out) = match op {
                    Op::Conv2d(a) => (a.bias, a.channels),
                    Op::Dense(d) => (d.bias, d.units),
                    _ => (false, 0),
                };
                let epi = Epilogue {
                    bias,
                    scale_shift: ss.is_some(),
                    act,
                    pool,
                };
                let spec = match op {
                    Op::Conv2d(a) => {
                        let (c_in, h, w) = chw(x);
                        KernelSpec::Conv2d {
                            c_in,
                            h,
                            w,
                            c_out: out,
                            kernel: a.kernel,
                            stride: a.stride,
                            padding: a.padding,
                            groups: a.groups,
                            epi,
                        }
                    }
                    _ => KernelSpec::Dense {
                        in_f: image_dims(x).iter().product(),
                        out_f: out,
                        epi,
                    },
                };
                // Dense kernels want their weight transposed; conv weights stay as stored.
                let pack = matches!(spec, KernelSpec::Dense { .. }).then_some(spec);
                args.push(weight(ops[1], pack)?);
                if bias {
                    args.push(weight(ops[2], None)?);
                }
                if let Some(ss) = ss {
                    let so = g.operands(ss);
                    args.push(weight(so[1], None)?);
                    args.push(weight(so[2], None)?);
                }
                spec
            }
            Op::ScaleShift => {
                let (c, h, w) = chw(x);
                args.push(weight(ops[1], None)?);
                args.push(weight(ops[2], None)?);
                KernelSpec::ScaleShift { c, h, w, act, pool }
            }
            Op::AvgPool2d(_) | Op::MaxPool2d(_) => {
                let (c, h, w) = chw(x);
                // `pool` is the first node's own window: the group starts with it.
                let pool = pool2d(op).ok_or_else(|| LowerError::Unsupported {
                    node: g.node(first).name.clone(),
                    op: op.name(),
                    hint: "not a pooling op",
                })?;
                KernelSpec::Pool { c, h, w, pool }
            }
            Op::Sigmoid | Op::Relu | Op::Tanh => KernelSpec::Unary {
                len: image_dims(x).iter().product(),
                act,
            },
            Op::Add => {
                args.push(value_of[&ops[1]].arg());
                inputs_used.push(ops[1]);
                KernelSpec::Add {
                    len: image_dims(x).iter().product(),
                    act,
                }
            }
            Op::Softmax => KernelSpec::Softmax {
                classes: image_dims(x).iter().product(),
            },
            other => {
                return Err(LowerError::Unsupported {
                    node: g.node(first).name.clone(),
                    op: other.name(),
                    hint: "see fuse",
                });
            }
        };
        let out_len = spec.out_len();
        let uses: Vec<memory::Val> = inputs_used.iter().map(|i| value_of[i]).collect();
        let out = planner.produce(out_len, kernels.len(), &uses);
        value_of.insert(last, out);
        args.push(out.arg());
        let name = nodes
            .iter()
            .map(|&n| g.node(n).name.as_str())
            .collect::<Vec<_>>()
            .join("+");
        kernels.push(PlannedKernel {
            name,
            nodes: nodes.clone(),
            spec,
            args,
        });
    }
    let mut outputs = Vec::new();
    for &o in g.outputs() {
        let v = *value_of.get(&o).ok_or_else(|| LowerError::Unsupported {
            node: g.node(o).name.clone(),
            op: g.node(o).op().map_or("parameter", Op::name),
            hint: "a graph output must be computed from the input",
        })?;
        planner.keep(v);
        outputs.push(PlanOutput {
            name: g.node(o).name.clone(),
            arg: v.arg(),
            dims: image_dims(ty(g, o)?),
        });
    }
    let (slots, map) = planner.assign();
    for k in &mut kernels {
        for a in &mut k.args {
            if let Arg::Slot(v) = a {
                *v = map[*v];
            }
        }
    }
    for o in &mut outputs {
        if let Arg::Slot(v) = &mut o.arg {
            *v = map[*v];
        }
    }
    Ok(Plan {
        kernels,
        slots,
        weights,
        input_name: g.node(input).name.clone(),
        input_dims: image_dims(ty(g, input)?),
        input_batch: ty(g, input)?.dims.first().and_then(|d| d.fixed()),
        outputs,
    })
}
