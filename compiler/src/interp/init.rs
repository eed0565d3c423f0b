//! Fresh parameters for a typed graph, as the d2l recipe initializes them: convolution
//! and dense weights Xavier-uniform, their biases zero; BatchNorm gamma one, beta zero,
//! running mean zero, running variance one. Random numbers come from [`SplitMix64`], so
//! a seed gives the same weights on every platform.

use super::{Params, SplitMix64};
use crate::ir::{Graph, NodeId, Op, OpKind};
use crate::{DType, Tensor};

/// What a parameter is, from the op that uses it and the slot it fills.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    /// A conv2d or dense weight: Xavier-uniform.
    Weight,
    /// Filled with one value.
    Constant(f32),
}

/// The role of the parameter in slot `slot` of an op of kind `kind`.
fn role(kind: OpKind, slot: &str) -> Role {
    match (kind, slot) {
        (OpKind::Conv2d | OpKind::Dense, "weight") => Role::Weight,
        (OpKind::BatchNorm | OpKind::BatchNormTrain | OpKind::BatchNormInfer, "weight") => {
            Role::Constant(1.0)
        }
        (_, "running_var") => Role::Constant(1.0),
        _ => Role::Constant(0.0),
    }
}

/// The role of parameter `p`: from the first op that uses it in a parameter slot, else
/// from its name `<owner>.<slot>` and the owner's op, else zero.
fn role_of(g: &Graph, p: NodeId) -> Role {
    for (user, slot) in g.users(p) {
        // `fuse-bn-train`'s batch_stats takes the running statistics as data operands.
        if let Some(Op::BatchStats(_)) = g.node(user).op()
            && let Some(name) = ["running_mean", "running_var"].get((slot as usize).wrapping_sub(1))
        {
            return role(OpKind::BatchNormTrain, name);
        }
        if let Some(op) = g.node(user).op()
            && let Some(i) = (slot as usize).checked_sub(op.data_arity())
            && let Some(name) = op.param_slots().get(i)
        {
            return role(op.kind(), name);
        }
    }
    let name = &g.node(p).name;
    name.rsplit_once('.')
        .and_then(|(owner, slot)| {
            let op = match g.node(g.lookup(owner)?).op().map(Op::kind)? {
                // After `fuse-bn-train` the BatchNorm's node is its batch_norm_apply.
                OpKind::BatchNormApply => OpKind::BatchNormTrain,
                op => op,
            };
            Some(role(op, slot))
        })
        .unwrap_or(Role::Constant(0.0))
}

/// Xavier-uniform (Glorot) in PyTorch's convention: for a weight of shape
/// `[out, in, k...]`, `fan_in = in * prod(k)`, `fan_out = out * prod(k)` and the values
/// are uniform in `[-b, b)` with `b = sqrt(6 / (fan_in + fan_out))`.
fn xavier_uniform(shape: &[usize], rng: &mut SplitMix64) -> Vec<f32> {
    let receptive: usize = shape.iter().skip(2).product();
    let fan_in = shape.get(1).copied().unwrap_or(1) * receptive;
    let fan_out = shape.first().copied().unwrap_or(1) * receptive;
    let bound = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt() as f32;
    (0..shape.iter().product::<usize>())
        .map(|_| rng.uniform(-bound, bound))
        .collect()
}

/// Creates every parameter of a typed graph, keyed by parameter name. The role of each
/// parameter comes from the op and slot that use it (`conv1.weight` in conv2d's weight
/// slot is Xavier-uniform, `bn1.running_var` is ones, ...); a parameter used in no
/// parameter slot takes its role from its name `<owner>.<slot>`, and is zero when that
/// says nothing either. Weights are drawn in parameter creation order from one
/// `SplitMix64::new(seed)` stream. Parameters without a type or with a symbolic
/// dimension are left out (a run then reports them missing).
pub fn init_params(g: &Graph, seed: u64) -> Params {
    let mut rng = SplitMix64::new(seed);
    let mut params = Params::new();
    for p in g.params() {
        let node = g.node(p);
        let Some(shape) = node
            .ty
            .as_ref()
            .and_then(|t| t.dims.iter().map(|d| d.fixed()).collect::<Option<Vec<_>>>())
        else {
            continue;
        };
        let data = match role_of(g, p) {
            Role::Weight => xavier_uniform(&shape, &mut rng),
            Role::Constant(v) => vec![v; shape.iter().product()],
        };
        let dtype_ok = node.ty.as_ref().is_some_and(|t| t.dtype == DType::F32);
        let t = if dtype_ok {
            Tensor::new(shape, data)
        } else {
            Tensor::new_i32(shape, data.iter().map(|&v| v as i32).collect())
        };
        if let Some(t) = t {
            params.insert(node.name.clone(), t);
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::tests::compile;
    use crate::passes::Mode;

    #[test]
    fn lenet_bn_parameters_get_their_roles() {
        let g = compile(include_str!("../../../models/lenet_bn.ir"), Mode::Infer);
        let p = init_params(&g, 7);
        assert_eq!(p.len(), g.params().len());
        assert_eq!(p["conv1.weight"].shape(), &[6, 1, 5, 5]);
        // conv1: fan_in = 1*25, fan_out = 6*25, bound = sqrt(6/175).
        let bound = (6.0f32 / 175.0).sqrt();
        let w = p["conv1.weight"].as_f32().unwrap();
        assert!(w.iter().all(|v| v.abs() <= bound));
        assert!(w.iter().any(|v| v.abs() > bound / 2.0));
        // fc1: fan_in = 256, fan_out = 120.
        let bound = (6.0f32 / 376.0).sqrt();
        assert!(
            p["fc1.weight"]
                .as_f32()
                .unwrap()
                .iter()
                .all(|v| v.abs() <= bound)
        );
        assert!(p["conv1.bias"].as_f32().unwrap().iter().all(|&v| v == 0.0));
        assert!(p["bn1.weight"].as_f32().unwrap().iter().all(|&v| v == 1.0));
        assert!(p["bn1.bias"].as_f32().unwrap().iter().all(|&v| v == 0.0));
        assert!(
            p["bn3.running_mean"]
                .as_f32()
                .unwrap()
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(
            p["bn3.running_var"]
                .as_f32()
                .unwrap()
                .iter()
                .all(|&v| v == 1.0)
        );
        assert_eq!(p["bn3.running_var"].shape(), &[120]);
    }

    #[test]
    fn the_same_seed_gives_the_same_weights() {
        let g = compile(include_str!("../../../models/lenet.ir"), Mode::Infer);
        assert_eq!(init_params(&g, 1), init_params(&g, 1));
        assert_ne!(init_params(&g, 1), init_params(&g, 2));
    }

    #[test]
    fn explicit_parameters_take_the_role_of_their_slot() {
        let g = compile(
            "input x: f32[N,3]\nparam w: f32[4,3]\nparam b\nfc = dense(x, w, b, units=4)\noutput fc",
            Mode::Infer,
        );
        let p = init_params(&g, 3);
        assert!(p["w"].as_f32().unwrap().iter().any(|&v| v != 0.0));
        assert!(p["b"].as_f32().unwrap().iter().all(|&v| v == 0.0));
    }
}
