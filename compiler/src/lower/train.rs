//! The training plan: from the train graph the default train pipeline leaves (`infer-shapes`,
//! `lower-batch-norm`, `attach-loss`, `redundant-bias`, `autodiff`, `fuse-bn-train`, `dce`;
//! what `bnc compile --mode train` prints) to layers, each a linear producer with what it
//! absorbs, the kernels that run it forward and backward, and what it saves for the backward
//! pass. The layers are read from the forward nodes (those the loss depends on); a layer is
//!
//! ```text
//! conv2d | dense  [-> batch_stats + batch_norm_apply]  [-> activation]  [-> pool]   (flatten is a view)
//! ```
//!
//! A BatchNorm must be in the form `fuse-bn-train` gives it, its backward included
//! (`batch_norm_grad_sums` and `batch_norm_grad_apply` on its statistics): those nodes are
//! what the kernels below compute. An unfused `batch_norm_train` is refused. A conv2d or
//! dense before a BatchNorm has no bias here when `redundant-bias` removed it.
//!
//! and runs as follows (on each unit, a contiguous range of images, of the batch):
//!
//! | step | with BatchNorm | without |
//! |---|---|---|
//! | forward | `TrainConv2d`/`TrainDense` writes `z` and the per-channel statistics in its epilogue; the runtime merges them across units (Chan, `f64`) and updates the running statistics | `Conv2d`/`Dense` with bias and activation writes `a` |
//! | apply | `BnActPool` (normalize, scale, shift, activation, pool; saves `a`) or `ScaleShift` (no pool) | `Pool` if pooled |
//! | backward | `PoolActBack`: one pass through the pool and activation backward that only reduces `Σdy` and `Σdy·x̂` per image; the runtime merges them across units, then `BnBackDx` runs the pool and activation backward again and writes `dz` in the same elementwise pass | `PoolActBack` gives `dz` and `Σdz`, the bias gradient |
//! | weights | `ConvGradW`/`DenseGradW` per unit, merged in unit order | same |
//! | input | `Conv2d` with flipped weights or `Dense` with the stored weight, except for the first layer | same |
//!
//! Saved for the backward pass: the layer input, `z` (BatchNorm only), `a` and the batch
//! statistics. A max or overlapping pool has no `PoolActBack`; the runtime runs that
//! backward in plain Rust.

use std::collections::HashSet;

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
    /// The bias `redundant-bias` took off the linear output (the `batch_stats` input
    /// bias): no part of the output or the gradients, but added to the batch mean in the
    /// running-mean update.
    pub input_bias: Option<String>,
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
    /// The BatchNorm's `batch_norm_apply` (named as the BatchNorm), if any.
    pub bn: Option<NodeRef>,
    /// The BatchNorm's `batch_stats`, which also updates the running statistics.
    pub bn_stats: Option<NodeRef>,
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
    /// The BatchNorm input gradient (`BnBackDx`), with BatchNorm only: with `back`, it
    /// recomputes `dy` from the layer's output gradient and `a`; without (no `PoolActBack`),
    /// it reads the `dy` that the runtime's plain-Rust backward wrote to the `dz` buffer and
    /// overwrites it with `dz`.
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
        self.named_specs().into_iter().map(|(_, s)| s).collect()
    }

    /// [`TrainPlan::specs`] with a name for each: the layer's and the kernel's role
    /// (`conv1+bn1+act1+pool1: bn dx`).
    pub fn named_specs(&self) -> Vec<(String, KernelSpec)> {
        let mut v = Vec::new();
        for l in &self.layers {
            let roles = [
                ("linear", Some(l.linear)),
                ("post", l.post),
                ("pool+act backward", l.back),
                ("bn dx", l.bn_dx),
                ("weight gradient", Some(l.grad_w)),
                ("input gradient", l.grad_x),
            ];
            for (role, spec) in roles {
                if let Some(spec) = spec {
                    v.push((format!("{}: {role}", l.name), spec));
                }
            }
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

/// The nodes the loss depends on: the forward pass. After `autodiff` the forward values
/// also feed backward nodes, which the chain walk must not see.
fn forward_nodes(g: &Graph) -> HashSet<NodeId> {
    let mut stack: Vec<NodeId> = (g.node_ids().into_iter())
        .filter(|&id| matches!(g.node(id).op(), Some(Op::SoftmaxCrossEntropy)))
        .collect();
    let mut seen = HashSet::new();
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(g.operands(id));
        }
    }
    seen
}

/// The forward users of `id`.
fn forward_users(g: &Graph, fwd: &HashSet<NodeId>, id: NodeId) -> Vec<(NodeId, u32)> {
    (g.users(id).into_iter())
        .filter(|(u, _)| fwd.contains(u))
        .collect()
}

/// The only forward user of `id`, if exactly one.
fn next(g: &Graph, fwd: &HashSet<NodeId>, id: NodeId) -> Option<NodeId> {
    match forward_users(g, fwd, id)[..] {
        [(u, 0)] => Some(u),
        _ => None,
    }
}

/// The BatchNorm `fuse-bn-train` made of the forward users of `x`: `batch_stats(x, ..)`
/// and `batch_norm_apply(x, stats, γ, β)`, with the statistics used by nothing else forward.
fn fused_bn(
    g: &Graph,
    fwd: &HashSet<NodeId>,
    x: NodeId,
) -> Option<(NodeId, NodeId, BatchNormAttrs)> {
    let users = forward_users(g, fwd, x);
    let [(a, 0), (b, 0)] = users[..] else {
        return None;
    };
    let (stats, apply, attrs) = match (g.node(a).op(), g.node(b).op()) {
        (Some(Op::BatchStats(s)), Some(Op::BatchNormApply { .. })) => (a, b, s),
        (Some(Op::BatchNormApply { .. }), Some(Op::BatchStats(s))) => (b, a, s),
        _ => return None,
    };
    let fused = g.operands(apply).get(1) == Some(&stats)
        && forward_users(g, fwd, stats)[..] == [(apply, 1)];
    fused.then(|| (stats, apply, attrs.clone()))
}

/// Whether the backward of the BatchNorm with statistics `stats` is fused as the kernels
/// compute it: one `batch_norm_grad_sums` and one `batch_norm_grad_apply` reading them.
fn fused_backward(g: &Graph, stats: NodeId) -> bool {
    let has =
        |f: fn(&Op) -> bool| (g.users(stats).iter()).any(|&(u, _)| g.node(u).op().is_some_and(f));
    has(|op| matches!(op, Op::BatchNormGradSums { .. }))
        && has(|op| matches!(op, Op::BatchNormGradApply { .. }))
}

/// Builds the training plan of a train graph after the default train pipeline.
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
    let fwd = forward_nodes(g);
    let mut layers: Vec<TrainLayer> = Vec::new();
    let mut cur = input;
    let mut in_len: usize = input_dims.iter().product();
    loop {
        let Some(u) = next(g, &fwd, cur) else {
            if let Some((_, apply, _)) = fused_bn(g, &fwd, cur) {
                return Err(unsupported(
                    g,
                    apply,
                    "the training backend fuses conv2d/dense -> batch_norm -> activation -> pool chains",
                ));
            }
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
                let (layer, last) = layer(g, &fwd, u, in_len, layers.is_empty())?;
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
    fwd: &HashSet<NodeId>,
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
        bn_stats: None,
        act: None,
        pool: None,
    };
    let mut last = first;
    let mut bn = None;
    let mut act = Activation::None;
    let mut pool = None;
    // Absorb, in order, a BatchNorm (as fuse-bn-train splits it), an activation and a
    // pool, each the sole forward user.
    if let Some(&(u, _)) = (forward_users(g, fwd, last).iter())
        .find(|&&(u, _)| matches!(g.node(u).op(), Some(Op::BatchNormTrain(_))))
    {
        return Err(unsupported(
            g,
            u,
            "the trainer runs a BatchNorm as fuse-bn-train splits it; lower the default train pipeline's output",
        ));
    }
    if let Some((stats, apply, a)) = fused_bn(g, fwd, last) {
        if !fused_backward(g, stats) {
            return Err(unsupported(
                g,
                apply,
                "the BatchNorm backward must be fused too (batch_norm_grad_sums and batch_norm_grad_apply)",
            ));
        }
        bn = Some(bn_plan(g, stats, apply, &a));
        nodes.bn = Some(NodeRef::of(g, apply));
        nodes.bn_stats = Some(NodeRef::of(g, stats));
        names.push(g.node(apply).name.clone());
        last = apply;
    }
    if let Some(u) = next(g, fwd, last)
        && let Some(a) = g.node(u).op().and_then(activation)
    {
        act = a;
        nodes.act = Some(NodeRef::of(g, u));
        names.push(g.node(u).name.clone());
        last = u;
    }
    if let Some(u) = next(g, fwd, last)
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
            // With a `PoolActBack`, the dx pass recomputes `dy` as it does; without (a pool
            // it does not differentiate), it reads the `dy` the runtime wrote.
            bn_dx: stats.then_some(KernelSpec::BnBackDx {
                c: channels,
                h,
                w,
                back: pool
                    .is_none_or(|p| pool_backward_supported(&p))
                    .then_some((act, pool)),
            }),
            grad_w,
            grad_x: (!is_first).then_some(grad_x),
            nodes,
        },
        last,
    ))
}

/// The BatchNorm of `stats = batch_stats(x, running_mean, running_var[, input_bias])` and
/// `apply = batch_norm_apply(x, stats, γ, β)`.
fn bn_plan(g: &Graph, stats: NodeId, apply: NodeId, a: &BatchNormAttrs) -> BnPlan {
    let name = |id: NodeId, i: usize| g.node(g.operands(id)[i]).name.clone();
    BnPlan {
        name: g.node(apply).name.clone(),
        gamma: name(apply, 2),
        beta: name(apply, 3),
        running_mean: name(stats, 1),
        running_var: name(stats, 2),
        eps: a.eps,
        momentum: a.momentum,
        unbiased: a.running_var != VarConvention::Biased,
        input_bias: a.input_bias.then(|| name(stats, 3)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::{Mode, PassManager, default_pipeline};
    use crate::text::parse;

    const LENET_BN: &str = include_str!("../../../models/lenet_bn.ir");

    fn after(passes: &[&str]) -> Graph {
        let mut g = parse(LENET_BN).expect("parses");
        PassManager::new(passes)
            .expect("known passes")
            .run(&mut g, Mode::Train)
            .expect("passes run");
        g
    }

    /// The plan reads the BatchNorms as `fuse-bn-train` left them and the convolutions as
    /// `redundant-bias` left them (no bias before a BatchNorm).
    #[test]
    fn lenet_bn_plan_lowers_the_fused_graph() {
        let p = plan(&after(default_pipeline(Mode::Train))).expect("plans");
        let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv1+bn1+act1+pool1",
                "conv2+bn2+act2+pool2",
                "fc1+bn3+act3",
                "fc2+bn4+act4",
                "fc3"
            ]
        );
        let l = &p.layers[0];
        assert_eq!(l.bias, None);
        let bn = l.bn.as_ref().expect("bn1");
        assert_eq!(
            [&bn.gamma, &bn.beta, &bn.running_mean, &bn.running_var],
            [
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var"
            ]
        );
        let op = |n: &Option<NodeRef>| n.as_ref().map(|n| (n.name.clone(), n.op));
        assert_eq!(op(&l.nodes.bn), Some(("bn1".into(), "batch_norm_apply")));
        assert_eq!(
            op(&l.nodes.bn_stats),
            Some(("bn1.stats".into(), "batch_stats"))
        );
        assert_eq!(p.layers[4].bias.as_deref(), Some("fc3.bias"));
    }

    /// A graph whose BatchNorm is not fused is refused with a message that says so.
    #[test]
    fn an_unfused_batch_norm_is_refused() {
        let passes = [
            "infer-shapes",
            "lower-batch-norm",
            "attach-loss",
            "redundant-bias",
            "autodiff",
            "dce",
        ];
        let e = plan(&after(&passes)).expect_err("refused").to_string();
        assert!(e.contains("`bn1`") && e.contains("fuse-bn-train"), "{e}");
    }
}
