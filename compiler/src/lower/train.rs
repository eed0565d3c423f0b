//! The training plan (`fuse-bn-train`): from a typed train graph (after `infer-shapes`,
//! `lower-batch-norm` and `attach-loss`) to layers, each a linear producer with what it
//! absorbs, the kernels that run it forward and backward, and what it saves for the backward
//! pass. A layer is
//!
//! ```text
//! conv2d | dense  [-> batch_norm_train]  [-> activation]  [-> pool]     (flatten is a view)
//! ```
//!
//! and runs as follows (per thread, on its contiguous range of the batch):
//!
//! | step | with BatchNorm | without |
//! |---|---|---|
//! | forward | `TrainConv2d`/`TrainDense` writes `z` and the per-channel statistics in its epilogue; the runtime merges them across threads (Chan, `f64`) and updates the running statistics | `Conv2d`/`Dense` with bias and activation writes `a` |
//! | apply | `BnActPool` (normalize, scale, shift, activation, pool; saves `a`) or `ScaleShift` (no pool) | `Pool` if pooled |
//! | backward | `PoolActBack`: one pass for the pool and activation backward that also reduces `Σdy` and `Σdy·x̂` per image; the runtime merges them across threads, then `BnBackDx` writes `dz` in one elementwise pass | `PoolActBack` gives `dz` and `Σdz`, the bias gradient |
//! | weights | `ConvGradW`/`DenseGradW` per thread, merged in thread order | same |
//! | input | `Conv2d` with flipped weights or `Dense` with the stored weight, except for the first layer | same |
//!
//! Saved for the backward pass: the layer input, `z` (BatchNorm only), `a` and the batch
//! statistics. A max or overlapping pool has no `PoolActBack`; the runtime runs that
//! backward in plain Rust. A bias before a BatchNorm is kept as a parameter, but its
//! gradient is exactly zero (the batch mean cancels any shift of `z`, the identity behind
//! `redundant-bias`), so no pass computes it.

use crate::codegen::{Activation, Epilogue, KernelSpec, Pool2d, pool_backward_supported};
use crate::ir::{BatchNormAttrs, Graph, NodeId, Op, VarConvention};

use super::{LowerError, activation, chw, image_dims, pool2d, ty};

/// A train-mode BatchNorm absorbed into a layer.
#[derive(Clone, Debug, PartialEq)]
pub struct BnPlan {
    /// The node's name.
    pub name: String,
    /// Parameter names: gamma, beta, running mean, running variance.
    pub gamma: String,
    /// Beta's name.
    pub beta: String,
    /// The running mean's name.
    pub running_mean: String,
    /// The running variance's name.
    pub running_var: String,
    /// Epsilon.
    pub eps: f64,
    /// Momentum in the d2l convention: `running = m * running + (1 - m) * batch`.
    pub momentum: f64,
    /// Whether the running variance takes the unbiased batch variance.
    pub unbiased: bool,
}

/// An IR node that a layer fuses: its name and its op's text name, so that the runtime can
/// say which node produced a buffer (`bnc train --check-numerics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRef {
    /// The node's name, as in the model file (`conv2`).
    pub name: String,
    /// The op's text name (`conv2d`).
    pub op: &'static str,
}

impl NodeRef {
    fn of(g: &Graph, id: NodeId) -> NodeRef {
        NodeRef {
            name: g.node(id).name.clone(),
            op: g.node(id).op().map_or("parameter", Op::name),
        }
    }
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` ({})", self.name, self.op)
    }
}

/// The IR nodes a layer fuses, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerNodes {
    /// The conv2d or dense node.
    pub linear: NodeRef,
    /// The train-mode BatchNorm, if any.
    pub bn: Option<NodeRef>,
    /// The activation, if any.
    pub act: Option<NodeRef>,
    /// The pool, if any.
    pub pool: Option<NodeRef>,
}

/// One layer of the training plan.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainLayer {
    /// The fused nodes' names joined by `+`.
    pub name: String,
    /// The weight parameter's name (PyTorch layout).
    pub weight: String,
    /// The weight's shape.
    pub weight_shape: Vec<usize>,
    /// The bias parameter's name, if any.
    pub bias: Option<String>,
    /// The BatchNorm, if any.
    pub bn: Option<BnPlan>,
    /// The activation.
    pub act: Activation,
    /// The pool, if any.
    pub pool: Option<Pool2d>,
    /// Channels (or features) of the linear output.
    pub channels: usize,
    /// Spatial size `[h, w]` of the linear output (`[1, 1]` for dense).
    pub hw: [usize; 2],
    /// Floats per image: layer input, linear output, activation, layer output.
    pub in_len: usize,
    /// Floats per image of the linear output (`z` or `a`).
    pub z_len: usize,
    /// Floats per image of the layer output (pooled if pooled).
    pub out_len: usize,
    /// The linear kernel: `TrainConv2d`/`TrainDense` with stats under a BatchNorm, else
    /// `Conv2d`/`Dense` with bias and activation.
    pub linear: KernelSpec,
    /// The kernel after the linear one: `BnActPool`, `ScaleShift` or `Pool`.
    pub post: Option<KernelSpec>,
    /// The pool and activation backward with the BatchNorm sums (`PoolActBack`), or `None`
    /// for a pool it does not differentiate (max or overlapping windows), which the runtime
    /// then runs in plain Rust.
    pub back: Option<KernelSpec>,
    /// The BatchNorm input gradient (`BnBackDx`), with BatchNorm only.
    pub bn_dx: Option<KernelSpec>,
    /// The weight gradient kernel.
    pub grad_w: KernelSpec,
    /// The input gradient kernel (`None` for the first layer): for a convolution, the full
    /// correlation of `dz` with the flipped, transposed weight, padded by `kernel - 1 -
    /// padding` (rows outside `dz` are skipped, columns read a zero-bordered copy).
    pub grad_x: Option<KernelSpec>,
    /// The fused IR nodes.
    pub nodes: LayerNodes,
}

/// An executable training plan for a chain of layers ending in softmax cross-entropy.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainPlan {
    /// The image input's name.
    pub input_name: String,
    /// The image input's per-image shape.
    pub input_dims: Vec<usize>,
    /// Classes (logits per image).
    pub classes: usize,
    /// The layers in order.
    pub layers: Vec<TrainLayer>,
    /// The softmax cross-entropy node.
    pub loss: NodeRef,
}

impl TrainPlan {
    /// Every kernel in a fixed order: per layer linear, post, back, bn_dx, grad_w, grad_x
    /// (present ones).
    pub fn specs(&self) -> Vec<KernelSpec> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.push(l.linear);
            v.extend(l.post);
            v.extend(l.back);
            v.extend(l.bn_dx);
            v.push(l.grad_w);
            v.extend(l.grad_x);
        }
        v
    }
}

fn unsupported(g: &Graph, id: NodeId, hint: &'static str) -> LowerError {
    LowerError::Unsupported {
        node: g.node(id).name.clone(),
        op: g.node(id).op().map_or("parameter", Op::name),
        hint,
    }
}

/// The only user of `id`, if exactly one.
fn next(g: &Graph, id: NodeId) -> Option<NodeId> {
    match g.users(id)[..] {
        [(u, 0)] => Some(u),
        _ => None,
    }
}

/// Builds the training plan of a typed train graph.
pub fn plan(g: &Graph) -> Result<TrainPlan, LowerError> {
    let images: Vec<NodeId> = g
        .inputs()
        .into_iter()
        .filter(|&i| ty(g, i).is_ok_and(|t| t.dtype == crate::DType::F32))
        .collect();
    let [input] = images[..] else {
        return Err(LowerError::Inputs {
            found: images.len(),
        });
    };
    let input_dims = image_dims(ty(g, input)?);
    let mut layers: Vec<TrainLayer> = Vec::new();
    let mut cur = input;
    let mut in_len: usize = input_dims.iter().product();
    loop {
        let Some(u) = next(g, cur) else {
            return Err(unsupported(
                g,
                cur,
                "training needs a chain: every value has one user up to the loss",
            ));
        };
        let op = g.node(u).op().cloned();
        match op {
            Some(Op::Flatten) => cur = u,
            Some(Op::SoftmaxCrossEntropy) => {
                let classes = image_dims(ty(g, cur)?).iter().product();
                if layers.is_empty() {
                    return Err(unsupported(g, u, "the model has no conv2d or dense layer"));
                }
                return Ok(TrainPlan {
                    input_name: g.node(input).name.clone(),
                    input_dims,
                    classes,
                    layers,
                    loss: NodeRef::of(g, u),
                });
            }
            Some(Op::Conv2d(_)) | Some(Op::Dense(_)) => {
                let (layer, last) = layer(g, u, in_len, layers.is_empty())?;
                in_len = layer.out_len;
                layers.push(layer);
                cur = last;
            }
            _ => {
                return Err(unsupported(
                    g,
                    u,
                    "the training backend fuses conv2d/dense -> batch_norm -> activation -> pool chains",
                ));
            }
        }
    }
}

/// The layer that starts at linear node `first`; returns it and its last node.
fn layer(
    g: &Graph,
    first: NodeId,
    in_len: usize,
    is_first: bool,
) -> Result<(TrainLayer, NodeId), LowerError> {
    let ops = g.operands(first);
    let x = ty(g, ops[0])?;
    let zt = ty(g, first)?;
    let (channels, h, w) = chw(zt);
    let mut names = vec![g.node(first).name.clone()];
    let mut nodes = LayerNodes {
        linear: NodeRef::of(g, first),
        bn: None,
        act: None,
        pool: None,
    };
    let mut last = first;
    let mut bn = None;
    let mut act = Activation::None;
    let mut pool = None;
    // Absorb, in order, a BatchNorm, an activation and a pool, each the sole user.
    if let Some(u) = next(g, last)
        && let Some(Op::BatchNormTrain(a)) = g.node(u).op()
    {
        bn = Some(bn_plan(g, u, a));
        nodes.bn = Some(NodeRef::of(g, u));
        names.push(g.node(u).name.clone());
        last = u;
    }
    if let Some(u) = next(g, last)
        && let Some(a) = g.node(u).op().and_then(activation)
    {
        act = a;
        nodes.act = Some(NodeRef::of(g, u));
        names.push(g.node(u).name.clone());
        last = u;
    }
    if let Some(u) = next(g, last)
        && let Some(p) = g.node(u).op().and_then(pool2d)
    {
        pool = Some(p);
        nodes.pool = Some(NodeRef::of(g, u));
        names.push(g.node(u).name.clone());
        last = u;
    }
    let z_len = channels * h * w;
    let out_len = image_dims(ty(g, last)?).iter().product();
    let weight = g.node(ops[1]).name.clone();
    let weight_shape = ty(g, ops[1])?.concrete(1);
    let has_bias = ops.len() > 2;
    let bias = has_bias.then(|| g.node(ops[2]).name.clone());
    let stats = bn.is_some();
    let epi = Epilogue {
        bias: has_bias,
        scale_shift: false,
        act: if stats { Activation::None } else { act },
        pool: None,
    };
    let (linear, grad_w, grad_x) = match g.node(first).op() {
        Some(Op::Conv2d(a)) => {
            let (c_in, ih, iw) = chw(x);
            if a.groups != 1 || a.stride != [1, 1] {
                return Err(unsupported(
                    g,
                    first,
                    "training supports stride-1 convolutions without groups",
                ));
            }
            let linear = if stats {
                KernelSpec::TrainConv2d {
                    c_in,
                    h: ih,
                    w: iw,
                    c_out: channels,
                    kernel: a.kernel,
                    stride: a.stride,
                    padding: a.padding,
                    bias: has_bias,
                    stats,
                }
            } else {
                KernelSpec::Conv2d {
                    c_in,
                    h: ih,
                    w: iw,
                    c_out: channels,
                    kernel: a.kernel,
                    stride: a.stride,
                    padding: a.padding,
                    groups: 1,
                    epi,
                }
            };
            let grad_w = KernelSpec::ConvGradW {
                c_in,
                h: ih,
                w: iw,
                c_out: channels,
                kernel: a.kernel,
                padding: a.padding,
            };
            // dx = the full correlation of dz with the flipped, transposed weight.
            if a.padding[0] >= a.kernel[0] || a.padding[1] >= a.kernel[1] {
                return Err(unsupported(
                    g,
                    first,
                    "padding must be smaller than the kernel",
                ));
            }
            let pad = [
                a.kernel[0] - 1 - a.padding[0],
                a.kernel[1] - 1 - a.padding[1],
            ];
            let grad_x = KernelSpec::Conv2d {
                c_in: channels,
                h,
                w,
                c_out: c_in,
                kernel: a.kernel,
                stride: [1, 1],
                padding: pad,
                groups: 1,
                epi: Epilogue::NONE,
            };
            (linear, grad_w, grad_x)
        }
        _ => {
            let in_f = in_len;
            let linear = if stats {
                KernelSpec::TrainDense {
                    in_f,
                    out_f: channels,
                    bias: has_bias,
                    stats,
                }
            } else {
                KernelSpec::Dense {
                    in_f,
                    out_f: channels,
                    epi,
                }
            };
            let grad_w = KernelSpec::DenseGradW {
                in_f,
                out_f: channels,
            };
            // dx = dz · W: a dense layer whose packed weight is W as stored.
            let grad_x = KernelSpec::Dense {
                in_f: channels,
                out_f: in_f,
                epi: Epilogue::NONE,
            };
            if pool.is_some() {
                return Err(unsupported(g, first, "a dense output cannot be pooled"));
            }
            (linear, grad_w, grad_x)
        }
    };
    let post = match (stats, pool) {
        (true, Some(pool)) => Some(KernelSpec::BnActPool {
            c: channels,
            h,
            w,
            act,
            pool,
        }),
        (true, None) => Some(KernelSpec::ScaleShift {
            c: channels,
            h,
            w,
            act,
            pool: None,
        }),
        (false, Some(pool)) => Some(KernelSpec::Pool {
            c: channels,
            h,
            w,
            pool,
        }),
        (false, None) => None,
    };
    Ok((
        TrainLayer {
            name: names.join("+"),
            weight,
            weight_shape,
            bias,
            bn,
            act,
            pool,
            channels,
            hw: [h, w],
            in_len,
            z_len,
            out_len,
            linear,
            post,
            back: pool.is_none_or(|p| pool_backward_supported(&p)).then_some(
                KernelSpec::PoolActBack {
                    c: channels,
                    h,
                    w,
                    act,
                    pool,
                    bn: stats,
                },
            ),
            bn_dx: stats.then_some(KernelSpec::BnBackDx { c: channels, h, w }),
            grad_w,
            grad_x: (!is_first).then_some(grad_x),
            nodes,
        },
        last,
    ))
}

fn bn_plan(g: &Graph, id: NodeId, a: &BatchNormAttrs) -> BnPlan {
    let ops = g.operands(id);
    let name = |i: usize| g.node(ops[i]).name.clone();
    BnPlan {
        name: g.node(id).name.clone(),
        gamma: name(1),
        beta: name(2),
        running_mean: name(3),
        running_var: name(4),
        eps: a.eps,
        momentum: a.momentum,
        unbiased: a.running_var != VarConvention::Biased,
    }
}
