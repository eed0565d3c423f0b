//! Tests of the interpreter as a whole: the model files end to end in both modes, and one
//! test per error with its exact message. Also the helpers the kernel tests share.

use std::collections::HashMap;

use super::*;
use crate::ir::{Node, Span};
use crate::passes::PassManager;
use crate::text::parse;

/// Parses `src` and runs `infer-shapes` and `lower-batch-norm` for `mode` (no loss is
/// attached, so a one-op graph stays one op).
pub(crate) fn compile(src: &str, mode: Mode) -> Graph {
    let mut g = parse(src).unwrap();
    PassManager::new(&["infer-shapes", "lower-batch-norm"])
        .unwrap()
        .run(&mut g, mode)
        .unwrap();
    g
}

/// Parses `src` and runs the default pipeline of `mode` (train mode attaches the loss).
fn compile_default(src: &str, mode: Mode) -> Graph {
    let mut g = parse(src).unwrap();
    PassManager::for_mode(mode).run(&mut g, mode).unwrap();
    g
}

/// An `f32` tensor with uniform elements in `[lo, hi)`.
pub(crate) fn random(rng: &mut SplitMix64, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.uniform(lo, hi)).collect(),
    )
    .unwrap()
}

/// An `f32` tensor from literal elements.
pub(crate) fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
}

/// A one-entry input map.
pub(crate) fn feed(name: &str, value: Tensor) -> HashMap<String, Tensor> {
    HashMap::from([(name.to_string(), value)])
}

/// Asserts that two `f32` slices agree within `tol` absolutely.
#[track_caller]
pub(crate) fn assert_close(got: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(got.len(), expected.len(), "{got:?} vs {expected:?}");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g - e).abs() <= tol,
            "element {i}: {g} vs {e}\n got {got:?}\nwant {expected:?}"
        );
    }
}

fn models() -> [(&'static str, &'static str); 4] {
    [
        ("lenet", include_str!("../../../models/lenet.ir")),
        ("lenet_bn", include_str!("../../../models/lenet_bn.ir")),
        ("mlp_bn", include_str!("../../../models/mlp_bn.ir")),
        ("resnet_bn", include_str!("../../../models/resnet_bn.ir")),
    ]
}

/// Checks every kept value against its node's type with the batch bound to `batch`.
fn assert_values_match_types(g: &Graph, values: &BTreeMap<String, Tensor>, batch: usize) {
    for id in g.node_ids() {
        let node = g.node(id);
        let ty = node.ty.as_ref().unwrap();
        let v = &values[&node.name];
        assert_eq!(v.shape(), ty.concrete(batch), "shape of `{}`", node.name);
        assert_eq!(v.dtype(), ty.dtype, "dtype of `{}`", node.name);
    }
}

#[test]
fn every_model_runs_in_infer_mode_at_batch_3() {
    for (name, src) in models() {
        let g = compile_default(src, Mode::Infer);
        let mut params = init_params(&g, 1);
        let before = params.clone();
        let mut rng = SplitMix64::new(2);
        let x = random(&mut rng, &[3, 1, 28, 28], 0.0, 1.0);
        let out = run_all(&g, Mode::Infer, &feed("x", x), &mut params).unwrap();
        assert_eq!(out.outputs.len(), 1, "{name}");
        let logits = &out.outputs[0];
        assert_eq!(logits.shape(), &[3, 10], "{name}");
        assert!(
            logits.as_f32().unwrap().iter().all(|v| v.is_finite()),
            "{name}"
        );
        assert_values_match_types(&g, &out.values, 3);
        assert_eq!(
            params, before,
            "{name}: infer mode must not touch the parameters"
        );
    }
}

#[test]
fn every_model_runs_in_train_mode_at_batch_3_and_updates_running_stats() {
    for (name, src) in models() {
        let g = compile_default(src, Mode::Train);
        let mut params = init_params(&g, 1);
        let before = params.clone();
        let mut rng = SplitMix64::new(2);
        let mut inputs = feed("x", random(&mut rng, &[3, 1, 28, 28], 0.0, 1.0));
        inputs.insert(
            "labels".into(),
            Tensor::new_i32(vec![3], vec![0, 9, 4]).unwrap(),
        );
        let out = run_all(&g, Mode::Train, &inputs, &mut params).unwrap();
        let [loss, logits, grads @ ..] = &out.outputs[..] else {
            panic!("{name}: expected outputs loss, logits, gradients");
        };
        // One gradient per trainable parameter, each finite and of its parameter's shape.
        let pairs = crate::passes::gradient_outputs(&g);
        assert_eq!(grads.len(), pairs.len(), "{name}");
        for (grad, (p, _)) in grads.iter().zip(pairs) {
            assert_eq!(grad.shape(), params[&g.node(p).name].shape(), "{name}");
            assert!(
                grad.as_f32().unwrap().iter().all(|v| v.is_finite()),
                "{name}"
            );
        }
        assert_eq!(loss.shape(), &[] as &[usize], "{name}");
        let loss = loss.as_f32().unwrap()[0];
        assert!(loss.is_finite() && loss > 0.0, "{name}: loss {loss}");
        assert_eq!(logits.shape(), &[3, 10], "{name}");
        assert!(
            logits.as_f32().unwrap().iter().all(|v| v.is_finite()),
            "{name}"
        );
        assert_values_match_types(&g, &out.values, 3);
        for (p, v) in &params {
            let changed = *v != before[p];
            let is_running = p.ends_with(".running_mean") || p.ends_with(".running_var");
            assert_eq!(changed, is_running, "{name}: parameter `{p}`");
        }
    }
}

#[test]
fn the_mode_less_batch_norm_follows_the_mode_argument() {
    // Without lower-batch-norm the graph keeps `batch_norm`; the run's mode decides.
    let mut g = parse("input x: f32[N,1]\ny = batch_norm(x)\noutput y").unwrap();
    crate::passes::infer_shapes(&mut g).unwrap();
    let x = t(&[2, 1], &[0.0, 2.0]);
    let mut p = init_params(&g, 0);
    let infer = run(&g, Mode::Infer, &feed("x", x.clone()), &mut p).unwrap();
    // Running stats 0 and 1: y = x / sqrt(1 + 1e-5).
    assert_close(infer.outputs[0].as_f32().unwrap(), &[0.0, 1.99999], 1e-6);
    let train = run(&g, Mode::Train, &feed("x", x), &mut p).unwrap();
    // Batch stats mean 1, var 1: y = (x - 1) / sqrt(1 + 1e-5).
    assert_close(
        train.outputs[0].as_f32().unwrap(),
        &[-0.999995, 0.999995],
        1e-6,
    );
}

#[test]
fn a_graph_with_a_cycle_is_refused() {
    let mut g = Graph::new();
    let ty = Some(TensorType::f32_fixed(&[1]));
    let x = g
        .add_node(Node {
            name: "x".into(),
            kind: NodeKind::Input,
            ty: ty.clone(),
            span: Span::default(),
        })
        .unwrap();
    let a = g.add_op("a", Op::Add, &[x], Span::default()).unwrap();
    let b = g.add_op("b", Op::Relu, &[a], Span::default()).unwrap();
    g.connect(b, a, 1);
    g.set_outputs(vec![b]);
    let err = run(
        &g,
        Mode::Infer,
        &feed("x", t(&[1], &[1.0])),
        &mut Params::new(),
    );
    assert_eq!(err.unwrap_err().to_string(), "the graph has a cycle");
}

#[test]
fn an_untyped_graph_is_refused() {
    let g = parse("input x: f32[N,4]\nh = relu(x)\noutput h").unwrap();
    let err = Interpreter::new(&g, Mode::Infer).unwrap_err();
    assert_eq!(
        err.to_string(),
        "graph not typed: `h` has no type (run infer-shapes first)"
    );
}

const LENET_PREFIX: &str = "input x: f32[N,1,28,28]\nconv1 = conv2d(x, channels=6, kernel=5)\n";

#[test]
fn a_missing_input_is_named() {
    let g = compile(&format!("{LENET_PREFIX}output conv1"), Mode::Infer);
    let mut p = init_params(&g, 0);
    let err = run(&g, Mode::Infer, &HashMap::new(), &mut p).unwrap_err();
    assert_eq!(err.to_string(), "missing input `x`");
}

#[test]
fn an_input_of_the_wrong_shape_or_dtype_is_refused() {
    let g = compile(&format!("{LENET_PREFIX}output conv1"), Mode::Infer);
    let mut p = init_params(&g, 0);
    let err = run(
        &g,
        Mode::Infer,
        &feed("x", Tensor::zeros(&[2, 28, 28])),
        &mut p,
    );
    assert_eq!(
        err.unwrap_err().to_string(),
        "input `x` has type f32[2,28,28], expected f32[N,1,28,28]"
    );
    let err = run(
        &g,
        Mode::Infer,
        &feed("x", Tensor::zeros(&[2, 3, 28, 28])),
        &mut p,
    );
    assert_eq!(
        err.unwrap_err().to_string(),
        "input `x` has type f32[2,3,28,28], expected f32[N,1,28,28]"
    );
    let labels = Tensor::new_i32(vec![2, 1, 28, 28], vec![0; 2 * 28 * 28]).unwrap();
    let err = run(&g, Mode::Infer, &feed("x", labels), &mut p);
    assert_eq!(
        err.unwrap_err().to_string(),
        "input `x` has type i32[2,1,28,28], expected f32[N,1,28,28]"
    );
}

#[test]
fn the_batch_size_must_agree_across_inputs() {
    let g = compile(
        "input x: f32[N,4]\ninput labels: i32[N]\nloss = softmax_cross_entropy(x, labels)\noutput loss",
        Mode::Train,
    );
    let mut inputs = feed("x", Tensor::zeros(&[3, 4]));
    inputs.insert(
        "labels".into(),
        Tensor::new_i32(vec![2], vec![0, 1]).unwrap(),
    );
    let err = run(&g, Mode::Train, &inputs, &mut Params::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input `labels` binds `N` to 2, but input `x` bound it to 3"
    );
}

#[test]
fn a_label_out_of_range_is_refused() {
    let g = compile(
        "input x: f32[N,10]\ninput labels: i32[N]\nloss = softmax_cross_entropy(x, labels)\noutput loss",
        Mode::Train,
    );
    let mut inputs = feed("x", Tensor::zeros(&[4, 10]));
    let labels = Tensor::new_i32(vec![4], vec![0, 9, 3, 12]).unwrap();
    inputs.insert("labels".into(), labels);
    let err = run(&g, Mode::Train, &inputs, &mut Params::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "label 12 at index 3 is out of range for 10 classes"
    );
    let labels = Tensor::new_i32(vec![4], vec![0, -1, 3, 2]).unwrap();
    inputs.insert("labels".into(), labels);
    let err = run(&g, Mode::Train, &inputs, &mut Params::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "label -1 at index 1 is out of range for 10 classes"
    );
}

#[test]
fn a_missing_or_misshapen_parameter_is_named() {
    let g = compile(&format!("{LENET_PREFIX}output conv1"), Mode::Infer);
    let x = feed("x", Tensor::zeros(&[1, 1, 28, 28]));
    let mut p = init_params(&g, 0);
    p.remove("conv1.weight");
    let err = run(&g, Mode::Infer, &x, &mut p).unwrap_err();
    assert_eq!(err.to_string(), "missing parameter `conv1.weight`");
    p.insert("conv1.weight".into(), Tensor::zeros(&[6, 1, 3, 3]));
    let err = run(&g, Mode::Infer, &x, &mut p).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter `conv1.weight` has type f32[6,1,3,3], expected f32[6,1,5,5]"
    );
}

#[test]
fn a_failing_run_leaves_the_running_statistics_untouched() {
    // fc3 runs after every BatchNorm, so its missing weight would be found too late.
    let g = compile(include_str!("../../../models/lenet_bn.ir"), Mode::Train);
    let mut p = init_params(&g, 0);
    p.remove("fc3.weight");
    let before = p.clone();
    let x = feed("x", Tensor::full(&[2, 1, 28, 28], 0.5));
    let err = run(&g, Mode::Train, &x, &mut p).unwrap_err();
    assert_eq!(err.to_string(), "missing parameter `fc3.weight`");
    assert_eq!(p, before);
}

#[test]
fn a_parameter_with_an_unbound_batch_dimension_is_refused() {
    let g = compile(
        "input x: f32[4]\nparam p: f32[N,3]\ny = relu(p)\noutput y",
        Mode::Infer,
    );
    let mut p = Params::from([("p".to_string(), Tensor::zeros(&[2, 3]))]);
    let err = run(&g, Mode::Infer, &feed("x", Tensor::zeros(&[4])), &mut p).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter `p` has dimension `N` that no input binds"
    );
}

#[test]
fn only_run_all_keeps_the_intermediates() {
    let g = compile(
        "input x: f32[N,2]\nh = relu(x)\ny = tanh(h)\noutput y",
        Mode::Infer,
    );
    let x = feed("x", t(&[1, 2], &[-1.0, 0.5]));
    let out = run(&g, Mode::Infer, &x, &mut Params::new()).unwrap();
    assert!(out.values.is_empty());
    let all = run_all(&g, Mode::Infer, &x, &mut Params::new()).unwrap();
    assert_eq!(all.values["h"].as_f32().unwrap(), &[0.0, 0.5]);
    assert_eq!(all.values["x"].as_f32().unwrap(), &[-1.0, 0.5]);
    assert_eq!(all.outputs, out.outputs);
    assert_close(
        out.outputs[0].as_f32().unwrap(),
        &[0.0, 0.5f32.tanh()],
        1e-7,
    );
}
