//! Gradient checks. Every backward op is checked against central finite differences of
//! its forward op, both evaluated in `f64` without rounding: with the objective
//! `L(x) = Σ r·op(x)` for a random `r`, the backward op fed `dy = r` must give
//! `∂L/∂x_i ≈ (L(x + h·e_i) − L(x − h·e_i)) / 2h` with `h = 1e-5`. The truncation error is
//! `O(h²)·L'''` and the rounding error `O(ε_f64/h)`, both far below the stated tolerance
//! `|analytic − numeric| ≤ 1e-6·max(1, |numeric|)`. Whole models are checked the same way
//! through the interpreter's exact mode, and `gradients` (the f32 reference API) is checked
//! against those exact gradients.

use std::collections::{BTreeMap, HashMap};

use super::{Array, Interpreter, Params, SplitMix64, apply, gradients, init_params};
use crate::DType;
use crate::Tensor;
use crate::interp::grad::gradients_with;
use crate::ir::{Conv2dAttrs, Conv2dGradInputAttrs, Conv2dGradWeightAttrs, Op, PoolAttrs, shape};
use crate::ir::{Dim, TensorType};
use crate::passes::{Mode, PassManager, default_pipeline};
use crate::text::parse;

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

fn random(rng: &mut SplitMix64, shape: &[usize], lo: f64, hi: f64) -> Array {
    let n = shape.iter().product();
    Array::new(
        shape.to_vec(),
        (0..n).map(|_| lo + (hi - lo) * rng.next_f64()).collect(),
    )
}

fn labels(values: &[i32]) -> Array {
    Array {
        shape: vec![values.len()],
        data: values.iter().map(|&v| f64::from(v)).collect(),
        dtype: DType::I32,
    }
}

/// `Σ r·y` in f64.
fn dot(r: &Array, y: &Array) -> f64 {
    assert_eq!(r.shape, y.shape);
    r.data.iter().zip(&y.data).map(|(a, b)| a * b).sum()
}

#[track_caller]
fn assert_grad(what: &str, analytic: &Array, numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{what}");
    for (i, (&a, &n)) in analytic.data.iter().zip(numeric).enumerate() {
        let tol = TOL * n.abs().max(1.0);
        assert!(
            (a - n).abs() <= tol,
            "{what}: element {i}: analytic {a} vs numeric {n}"
        );
    }
}

/// The type of a concrete array (batch fixed), for checking the shape rules.
fn ty(a: &Array) -> TensorType {
    TensorType {
        dtype: a.dtype,
        dims: a.shape.iter().map(|&d| Dim::Fixed(d)).collect(),
    }
}

/// Checks the gradient of `forward` w.r.t. its operand `slot`, as computed by
/// `backward` on operands `backward_operands(dy, y)`, against finite differences, and
/// checks that the backward op's shape rule gives the type of the operand.
fn check(
    what: &str,
    forward: &Op,
    operands: &[Array],
    slot: usize,
    backward: &Op,
    backward_operands: impl Fn(&Array, &Array) -> Vec<Array>,
) {
    let mut rng = SplitMix64::new(what.len() as u64 * 7919 + slot as u64);
    let eval = |ops: &[Array]| {
        let refs: Vec<&Array> = ops.iter().collect();
        apply(forward, &refs, Mode::Train).unwrap()
    };
    let y = eval(operands);
    let r = random(&mut rng, &y.shape, -1.0, 1.0);
    let bops = backward_operands(&r, &y);
    let brefs: Vec<&Array> = bops.iter().collect();
    let analytic = apply(backward, &brefs, Mode::Train).unwrap();
    let types: Vec<TensorType> = bops.iter().map(ty).collect();
    let type_refs: Vec<&TensorType> = types.iter().collect();
    let inferred = shape::infer(backward, &type_refs).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(inferred.result, ty(&operands[slot]), "{what}: shape rule");
    assert_eq!(analytic.shape, operands[slot].shape, "{what}: kernel shape");
    let mut numeric = Vec::with_capacity(operands[slot].len());
    for i in 0..operands[slot].len() {
        let mut plus = operands.to_vec();
        plus[slot].data[i] += H;
        let mut minus = operands.to_vec();
        minus[slot].data[i] -= H;
        numeric.push((dot(&r, &eval(&plus)) - dot(&r, &eval(&minus))) / (2.0 * H));
    }
    assert_grad(what, &analytic, &numeric);
}

#[test]
fn conv2d_gradients_with_stride_padding_and_groups() {
    let cases = [
        // (input [N,C,H,W], channels, kernel, stride, padding, groups)
        ([2, 3, 6, 5], 4, [3, 3], [1, 1], [0, 0], 1),
        ([2, 4, 7, 6], 6, [3, 2], [2, 1], [1, 2], 2),
        ([1, 4, 5, 5], 4, [2, 2], [2, 2], [1, 0], 4),
    ];
    for (x_shape, channels, kernel, stride, padding, groups) in cases {
        let mut rng = SplitMix64::new(channels as u64);
        let a = Conv2dAttrs {
            channels,
            kernel,
            stride,
            padding,
            groups,
            bias: true,
        };
        let x = random(&mut rng, &x_shape, -1.0, 1.0);
        let w_shape = [channels, x_shape[1] / groups, kernel[0], kernel[1]];
        let w = random(&mut rng, &w_shape, -1.0, 1.0);
        let b = random(&mut rng, &[channels], -1.0, 1.0);
        let ops = [x.clone(), w.clone(), b];
        let f = Op::Conv2d(a);
        let what = format!("conv2d {x_shape:?} k{kernel:?} s{stride:?} p{padding:?} g{groups}");
        let gi = Op::Conv2dGradInput(Conv2dGradInputAttrs {
            input_size: [x_shape[2], x_shape[3]],
            stride,
            padding,
            groups,
        });
        check(&format!("{what} dx"), &f, &ops, 0, &gi, |dy, _| {
            vec![dy.clone(), w.clone()]
        });
        let gw = Op::Conv2dGradWeight(Conv2dGradWeightAttrs {
            kernel,
            stride,
            padding,
            groups,
        });
        check(&format!("{what} dw"), &f, &ops, 1, &gw, |dy, _| {
            vec![dy.clone(), x.clone()]
        });
        check(
            &format!("{what} db"),
            &f,
            &ops,
            2,
            &Op::BiasGrad,
            |dy, _| vec![dy.clone()],
        );
    }
}

#[test]
fn dense_gradients() {
    let mut rng = SplitMix64::new(3);
    let (x, w, b) = (
        random(&mut rng, &[4, 5], -1.0, 1.0),
        random(&mut rng, &[3, 5], -1.0, 1.0),
        random(&mut rng, &[3], -1.0, 1.0),
    );
    let f = Op::Dense(crate::ir::DenseAttrs {
        units: 3,
        bias: true,
    });
    let ops = [x.clone(), w.clone(), b];
    check("dense dx", &f, &ops, 0, &Op::DenseGradInput, |dy, _| {
        vec![dy.clone(), w.clone()]
    });
    check("dense dw", &f, &ops, 1, &Op::DenseGradWeight, |dy, _| {
        vec![dy.clone(), x.clone()]
    });
    check("dense db", &f, &ops, 2, &Op::BiasGrad, |dy, _| {
        vec![dy.clone()]
    });
}

#[test]
fn batch_norm_train_gradients_rank_2_and_4() {
    for (shape, eps) in [(vec![5, 3], 1e-5), (vec![3, 2, 3, 4], 0.1)] {
        let mut rng = SplitMix64::new(shape.len() as u64);
        let c = shape[1];
        let x = random(&mut rng, &shape, -2.0, 3.0);
        let gamma = random(&mut rng, &[c], 0.5, 2.0);
        let ops = [
            x.clone(),
            gamma.clone(),
            random(&mut rng, &[c], -1.0, 1.0),
            random(&mut rng, &[c], -1.0, 1.0),
            random(&mut rng, &[c], 0.5, 2.0),
        ];
        let f = Op::BatchNormTrain(crate::ir::BatchNormAttrs {
            eps,
            ..Default::default()
        });
        let what = format!("batch_norm_train {shape:?}");
        let dx = Op::BatchNormTrainGrad { eps };
        check(&format!("{what} dx"), &f, &ops, 0, &dx, |dy, _| {
            vec![dy.clone(), x.clone(), gamma.clone()]
        });
        let dg = Op::BatchNormWeightGrad { eps };
        check(&format!("{what} dgamma"), &f, &ops, 1, &dg, |dy, _| {
            vec![dy.clone(), x.clone()]
        });
        check(
            &format!("{what} dbeta"),
            &f,
            &ops,
            2,
            &Op::BiasGrad,
            |dy, _| vec![dy.clone()],
        );
    }
}

#[test]
fn activation_softmax_and_flatten_gradients() {
    let mut rng = SplitMix64::new(11);
    let x = random(&mut rng, &[2, 3, 2, 2], -3.0, 3.0);
    check(
        "sigmoid",
        &Op::Sigmoid,
        std::slice::from_ref(&x),
        0,
        &Op::SigmoidGrad,
        |dy, y| vec![dy.clone(), y.clone()],
    );
    check(
        "tanh",
        &Op::Tanh,
        std::slice::from_ref(&x),
        0,
        &Op::TanhGrad,
        |dy, y| vec![dy.clone(), y.clone()],
    );
    // Keep relu's operand away from the kink, where the derivative does not exist.
    let mut away = x.clone();
    for v in &mut away.data {
        *v += if *v >= 0.0 { 0.1 } else { -0.1 };
    }
    check(
        "relu",
        &Op::Relu,
        &[away.clone()],
        0,
        &Op::ReluGrad,
        |dy, _| vec![dy.clone(), away.clone()],
    );
    check(
        "flatten",
        &Op::Flatten,
        std::slice::from_ref(&x),
        0,
        &Op::Unflatten,
        |dy, _| vec![dy.clone(), x.clone()],
    );
    let z = random(&mut rng, &[3, 5], -3.0, 3.0);
    check(
        "softmax",
        &Op::Softmax,
        &[z],
        0,
        &Op::SoftmaxGrad,
        |dy, y| vec![dy.clone(), y.clone()],
    );
}

#[test]
fn softmax_cross_entropy_gradient() {
    let mut rng = SplitMix64::new(12);
    let z = random(&mut rng, &[4, 5], -3.0, 3.0);
    let l = labels(&[0, 4, 2, 2]);
    // The loss is a scalar; the rule is for dy = 1, so the objective uses r = 1.
    let f = Op::SoftmaxCrossEntropy;
    let loss = |z: &Array| apply(&f, &[z, &l], Mode::Train).unwrap().data[0];
    let analytic = apply(&Op::SoftmaxCrossEntropyGrad, &[&z, &l], Mode::Train).unwrap();
    let numeric: Vec<f64> = (0..z.len())
        .map(|i| {
            let (mut p, mut m) = (z.clone(), z.clone());
            p.data[i] += H;
            m.data[i] -= H;
            (loss(&p) - loss(&m)) / (2.0 * H)
        })
        .collect();
    assert_grad("softmax_cross_entropy", &analytic, &numeric);
    let inferred = shape::infer(&Op::SoftmaxCrossEntropyGrad, &[&ty(&z), &ty(&l)]).unwrap();
    assert_eq!(inferred.result, ty(&z));
}

#[test]
fn pooling_gradients_with_padding() {
    let pools = [
        ([2, 2], [2, 2], [0, 0], true),
        ([3, 2], [2, 1], [1, 1], true),
        ([3, 3], [2, 2], [1, 1], false),
    ];
    for (kernel, stride, padding, count_include_pad) in pools {
        let a = PoolAttrs {
            kernel,
            stride,
            padding,
            count_include_pad,
        };
        let mut rng = SplitMix64::new(kernel[0] as u64 * 31 + stride[1] as u64);
        // Distinct values a grid apart, so that no maximum is near a tie.
        let x = random(&mut rng, &[2, 2, 5, 6], 0.0, 1.0);
        let mut spread = x.clone();
        for (i, v) in spread.data.iter_mut().enumerate() {
            *v = ((i * 37) % 120) as f64 * 0.1 + *v * 1e-3;
        }
        let what = format!("pool k{kernel:?} s{stride:?} p{padding:?} cip={count_include_pad}");
        check(
            &format!("avg {what}"),
            &Op::AvgPool2d(a.clone()),
            std::slice::from_ref(&x),
            0,
            &Op::AvgPool2dGrad(a.clone()),
            |dy, _| vec![dy.clone(), x.clone()],
        );
        check(
            &format!("max {what}"),
            &Op::MaxPool2d(a.clone()),
            &[spread.clone()],
            0,
            &Op::MaxPool2dGrad(a.clone()),
            |dy, _| vec![dy.clone(), spread.clone()],
        );
    }
}

fn model(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../models/{name}.ir",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A batch of 4 random images and labels.
fn batch(seed: u64) -> HashMap<String, Tensor> {
    let mut rng = SplitMix64::new(seed);
    let x: Vec<f32> = (0..4 * 28 * 28).map(|_| rng.next_f32()).collect();
    HashMap::from([
        ("x".to_string(), Tensor::new(vec![4, 1, 28, 28], x).unwrap()),
        (
            "labels".to_string(),
            Tensor::new_i32(vec![4], vec![3, 0, 9, 3]).unwrap(),
        ),
    ])
}

/// Parameters with BatchNorm's γ and β moved off their initial 1 and 0, so that no
/// gradient is trivially structured.
fn stirred_params(g: &crate::ir::Graph, seed: u64) -> Params {
    let mut params = init_params(g, seed);
    let mut rng = SplitMix64::new(seed + 1);
    for (name, t) in params.iter_mut() {
        if name.starts_with("bn") && (name.ends_with(".weight") || name.ends_with(".bias")) {
            for v in t.as_f32_mut().unwrap() {
                *v += rng.uniform(-0.3, 0.3);
            }
        }
    }
    params
}

/// Checks a model's gradients (from the train graph, run in exact f64) against central
/// differences of its loss for a sample of elements of every trainable parameter; also
/// checks that `gradients` (f32 storage) agrees with the exact gradients to 1e-3.
fn check_model(name: &str) {
    let src = model(name);
    let mut g = parse(&src).unwrap();
    PassManager::new(default_pipeline(Mode::Train))
        .unwrap()
        .run(&mut g, Mode::Train)
        .unwrap();
    // The fused train graph (differentiated below) has no running statistics; the
    // reference `gradients` keeps `batch_norm_train` and needs them, so the parameters
    // come from the graph before fusion.
    let mut unfused = parse(&src).unwrap();
    let passes: Vec<&str> = default_pipeline(Mode::Train)
        .iter()
        .copied()
        .filter(|&p| p != "fuse-bn-train")
        .collect();
    PassManager::new(&passes)
        .unwrap()
        .run(&mut unfused, Mode::Train)
        .unwrap();
    let params = stirred_params(&unfused, 5);
    let inputs = batch(6);
    let exact_inputs: HashMap<String, Array> = inputs
        .iter()
        .map(|(k, v)| (k.clone(), Array::from_tensor(v)))
        .collect();
    let exact_params: BTreeMap<String, Array> = params
        .iter()
        .map(|(k, v)| (k.clone(), Array::from_tensor(v)))
        .collect();
    let interp = Interpreter::new(&g, Mode::Train).unwrap();
    let run =
        |p: &BTreeMap<String, Array>| interp.run_exact(&exact_inputs, &mut p.clone()).unwrap();
    let out = run(&exact_params);
    let grad_outputs = crate::passes::gradient_outputs(&g);
    assert!(!grad_outputs.is_empty());
    let reference = gradients(&parse(&src).unwrap(), &inputs, &params).unwrap();
    assert!((f64::from(reference.loss) - out[0].data[0]).abs() < 1e-5);
    let position = |id| g.outputs().iter().position(|&o| o == id).unwrap();
    let mut rng = SplitMix64::new(9);
    for (p, d) in grad_outputs {
        let pname = g.node(p).name.clone();
        let analytic = &out[position(d)];
        // The f32 reference API agrees with the exact gradients.
        let f32_grad = reference.grads[&pname].as_f32().unwrap();
        for (i, (&a, &e)) in f32_grad.iter().zip(&analytic.data).enumerate() {
            assert!(
                (f64::from(a) - e).abs() <= 1e-3 * e.abs().max(1e-2),
                "{name} {pname}[{i}]: f32 {a} vs exact {e}"
            );
        }
        for _ in 0..3 {
            let i = rng.below(analytic.len() as u64) as usize;
            let mut plus = exact_params.clone();
            plus.get_mut(&pname).unwrap().data[i] += H;
            let mut minus = exact_params.clone();
            minus.get_mut(&pname).unwrap().data[i] -= H;
            let numeric = (run(&plus)[0].data[0] - run(&minus)[0].data[0]) / (2.0 * H);
            let a = analytic.data[i];
            assert!(
                (a - numeric).abs() <= TOL * numeric.abs().max(1.0),
                "{name}: d loss / d {pname}[{i}]: analytic {a} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn lenet_bn_gradients_match_finite_differences() {
    check_model("lenet_bn");
}

#[test]
fn mlp_bn_gradients_match_finite_differences() {
    check_model("mlp_bn");
}

#[test]
fn resnet_bn_gradients_match_finite_differences() {
    // relu, max pooling, strided and padded convolutions and a residual add (fan-out).
    check_model("resnet_bn");
}

/// Without `redundant-bias`, the train graph keeps every bias; the loss, the logits and
/// the gradients of every other parameter must not change, and the removed biases'
/// gradients are zero (up to rounding).
#[test]
fn redundant_bias_changes_neither_the_loss_nor_the_other_gradients() {
    let src = model("lenet_bn");
    let g = parse(&src).unwrap();
    let with = default_pipeline(Mode::Train);
    let without: Vec<&str> = with
        .iter()
        .copied()
        .filter(|&p| p != "redundant-bias")
        .collect();
    let mut typed = g.clone();
    PassManager::new(&without)
        .unwrap()
        .run(&mut typed, Mode::Train)
        .unwrap();
    let mut params = stirred_params(&typed, 8);
    // Nonzero biases: the batch mean cancels them all the same.
    let mut rng = SplitMix64::new(4);
    for (name, t) in params.iter_mut() {
        if (name.starts_with("conv") || name.starts_with("fc")) && name.ends_with(".bias") {
            for v in t.as_f32_mut().unwrap() {
                *v = rng.uniform(-0.5, 0.5);
            }
        }
    }
    let inputs = batch(2);
    let a = gradients_with(&g, with, &inputs, &params).unwrap();
    let b = gradients_with(&g, &without, &inputs, &params).unwrap();
    assert!(
        (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs(),
        "{} vs {}",
        a.loss,
        b.loss
    );
    // Both runs store every value in f32, and the bias shifts what the convolutions'
    // outputs round to; BatchNorm divides those rounding differences by the batch's
    // standard deviation. So the tolerance is relative to each tensor's largest element:
    // |a − b| ≤ 1e-3·max|b|.
    let close = |x: &Tensor, y: &Tensor, what: &str| {
        let y = y.as_f32().unwrap();
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (p, q) in x.as_f32().unwrap().iter().zip(y) {
            assert!((p - q).abs() <= 1e-3 * scale, "{what}: {p} vs {q}");
        }
    };
    close(&a.logits, &b.logits, "logits");
    let removed = ["conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias"];
    assert_eq!(b.grads.len(), a.grads.len() + removed.len());
    for (name, grad) in &b.grads {
        match a.grads.get(name) {
            Some(ga) => close(ga, grad, name),
            None => {
                assert!(removed.contains(&name.as_str()), "{name}");
                let max = grad
                    .as_f32()
                    .unwrap()
                    .iter()
                    .fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(max < 1e-5, "{name}: gradient {max} should vanish");
            }
        }
    }
}

/// `fuse-bn-train` changes no value beyond rounding the batch statistics to f32 once: the
/// loss and every gradient of LeNet-BN and the BatchNorm MLP agree with and without it,
/// within 1e-4 of each tensor's largest element.
#[test]
fn fused_batch_norm_training_graph_matches_unfused() {
    let with = default_pipeline(Mode::Train);
    assert!(with.contains(&"fuse-bn-train"));
    let without: Vec<&str> = with
        .iter()
        .copied()
        .filter(|&p| p != "fuse-bn-train")
        .collect();
    for src in [
        include_str!("../../../models/lenet_bn.ir"),
        include_str!("../../../models/mlp_bn.ir"),
    ] {
        let g = parse(src).unwrap();
        let mut typed = g.clone();
        PassManager::new(&without)
            .unwrap()
            .run(&mut typed, Mode::Train)
            .unwrap();
        let params = stirred_params(&typed, 5);
        let inputs = batch(6);
        let a = gradients_with(&g, with, &inputs, &params).unwrap();
        let b = gradients_with(&g, &without, &inputs, &params).unwrap();
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs(),
            "{} vs {}",
            a.loss,
            b.loss
        );
        assert_eq!(a.grads.len(), b.grads.len());
        for (name, y) in &b.grads {
            let (x, y) = (a.grads[name].as_f32().unwrap(), y.as_f32().unwrap());
            let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() <= 1e-4 * scale, "{name}: {p} vs {q}");
            }
        }
    }
}
