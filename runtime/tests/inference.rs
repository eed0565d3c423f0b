//! The JIT inference path against the reference interpreter, for every model, folded and
//! unfolded, on one and two threads; the kernel list of folded LeNet-BN; and the typed
//! errors of the runtime API.

use std::collections::HashMap;

use bnc_compiler::interp::{Params, SplitMix64, init_params, run};
use bnc_compiler::ir::Graph;
use bnc_compiler::passes::{Mode, PassManager};
use bnc_compiler::text::parse;
use bnc_compiler::{DType, Tensor};
use bnc_runtime::model::{CompileConfig, InferenceModel, RuntimeError};
use bnc_runtime::weights::ParamStore;

fn model(name: &str) -> Graph {
    let path = format!("{}/../models/{name}.ir", env!("CARGO_MANIFEST_DIR"));
    parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The graph as the interpreter runs it: typed, nothing else changed.
fn typed(g: &Graph) -> Graph {
    let mut typed = g.clone();
    PassManager::new(&["infer-shapes"])
        .unwrap()
        .run(&mut typed, Mode::Infer)
        .unwrap();
    typed
}

/// Xavier weights plus BatchNorm statistics far from their defaults, so that folding and
/// scale/shift have something to do.
fn params(g: &Graph, seed: u64) -> Params {
    let mut p = init_params(&typed(g), seed);
    let mut rng = SplitMix64::new(seed + 100);
    for (name, t) in p.iter_mut() {
        let bn = name.contains("bn");
        for v in t.as_f32_mut().unwrap() {
            if name.ends_with("running_var") {
                *v = rng.uniform(0.05, 2.0);
            } else if bn || name.ends_with(".bias") {
                *v = rng.uniform(-1.0, 1.0);
            }
        }
    }
    p
}

fn input(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.uniform(0.0, 1.0)).collect(),
    )
    .unwrap()
}

/// The stated tolerance: max |jit − ref| / max(1, |ref|) ≤ 1e-4.
fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

#[test]
fn jit_matches_the_interpreter_for_every_model() {
    for name in ["lenet", "lenet_bn", "mlp_bn", "resnet_bn", "vgg_bn"] {
        let g = model(name);
        let reference = typed(&g);
        let p = params(&g, 1);
        let store: ParamStore = p.clone().into_iter().collect();
        for fold in [true, false] {
            for threads in [1, 2] {
                let cfg = CompileConfig {
                    threads,
                    fold,
                    ..CompileConfig::default()
                };
                let mut m = InferenceModel::compile(&g, &cfg).unwrap();
                m.bind(&store).unwrap();
                for batch in [1, 7, 33] {
                    let x = input(&[batch, 1, 28, 28], batch as u64);
                    let got = m.run(&x).unwrap();
                    let inputs = HashMap::from([("x".to_string(), x)]);
                    let want = run(&reference, Mode::Infer, &inputs, &mut p.clone()).unwrap();
                    let err = max_rel_err(&got, &want.outputs[0]);
                    assert!(
                        err <= 1e-4,
                        "{name} fold={fold} threads={threads} batch={batch}: {err}"
                    );
                }
            }
        }
    }
}

#[test]
fn folded_lenet_bn_runs_exactly_the_kernels_of_lenet() {
    let cfg = CompileConfig::default();
    let plain = InferenceModel::compile(&model("lenet"), &cfg).unwrap();
    let folded = InferenceModel::compile(&model("lenet_bn"), &cfg).unwrap();
    let list = |m: &InferenceModel| {
        m.plan()
            .kernels
            .iter()
            .map(|k| (k.name.clone(), k.spec))
            .collect::<Vec<_>>()
    };
    assert_eq!(list(&folded), list(&plain));
    let names: Vec<String> = list(&plain).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "conv1+act1+pool1",
            "conv2+act2+pool2",
            "fc1+act3",
            "fc2+act4",
            "fc3"
        ]
    );
    // Unfolded, each BatchNorm is a scale/shift fused into its producer's epilogue.
    let unfolded = InferenceModel::compile(
        &model("lenet_bn"),
        &CompileConfig {
            threads: 1,
            fold: false,
            ..CompileConfig::default()
        },
    )
    .unwrap();
    let names: Vec<String> = unfolded
        .plan()
        .kernels
        .iter()
        .map(|k| k.name.clone())
        .collect();
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
}

#[test]
fn activations_reuse_buffers() {
    let m = InferenceModel::compile(&model("lenet_bn"), &CompileConfig::default()).unwrap();
    // Five kernels in a chain need two ping-pong buffers.
    assert_eq!(m.plan().slots.len(), 2);
    let stats = m.plan().stats();
    assert_eq!(stats.kernels, 5);
}

fn bound(name: &str) -> InferenceModel {
    let g = model(name);
    let mut m = InferenceModel::compile(&g, &CompileConfig::default()).unwrap();
    m.bind(&params(&g, 0).into_iter().collect()).unwrap();
    m
}

#[test]
fn wrong_inputs_are_refused_before_any_kernel_runs() {
    let mut m = bound("lenet_bn");
    let e = m.run(&Tensor::zeros(&[2, 1, 28, 27])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input `x` has shape [2, 1, 28, 27], expected [N,1,28,28]"
    );
    let e = m.run(&Tensor::zeros(&[784])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input `x` has shape [784], expected [N,1,28,28]"
    );
    let labels = Tensor::new_i32(vec![1, 1, 28, 28], vec![0; 784]).unwrap();
    let e = m.run(&labels).unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::InputDType {
                got: DType::I32,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.to_string(), "input `x` must be f32, got i32");
}

#[test]
fn running_before_binding_and_bad_weights_are_typed_errors() {
    let g = model("lenet_bn");
    let mut m = InferenceModel::compile(&g, &CompileConfig::default()).unwrap();
    let e = m.run(&Tensor::zeros(&[1, 1, 28, 28])).unwrap_err();
    assert_eq!(e.to_string(), "no weights are bound; call bind first");
    let mut store: ParamStore = params(&g, 0).into_iter().collect();
    store.remove("bn1.running_var");
    assert_eq!(
        m.bind(&store).unwrap_err().to_string(),
        "missing parameter `bn1.running_var`"
    );
    store.insert("bn1.running_var", Tensor::zeros(&[7]));
    assert_eq!(
        m.bind(&store).unwrap_err().to_string(),
        "parameter `bn1.running_var` has shape [7], expected [6]"
    );
}

#[test]
fn an_empty_batch_gives_an_empty_output() {
    let mut m = bound("lenet");
    let y = m.run(&Tensor::zeros(&[0, 1, 28, 28])).unwrap();
    assert_eq!(y.shape(), &[0, 10]);
}

/// Every way an input tensor can be wrong is a typed error before any kernel runs: rank,
/// image size, element type, a scalar, and the batch of a model that declares a fixed one.
/// Wrong lengths and strided views cannot be expressed: a `Tensor` is one contiguous buffer
/// of exactly the product of its shape, and a shape whose product overflows is refused.
#[test]
fn every_input_misuse_is_a_typed_error() {
    let mut m = bound("mlp_bn");
    let shape_err = |m: &mut InferenceModel, t: &Tensor| match m.run(t) {
        Err(RuntimeError::InputShape { got, .. }) => got,
        other => panic!("expected an input shape error, got {other:?}"),
    };
    assert_eq!(shape_err(&mut m, &Tensor::scalar(1.0)), Vec::<usize>::new());
    assert_eq!(shape_err(&mut m, &Tensor::zeros(&[2, 784])), [2, 784]);
    assert_eq!(
        shape_err(&mut m, &Tensor::zeros(&[2, 1, 28, 28, 1])),
        [2, 1, 28, 28, 1]
    );
    assert_eq!(
        shape_err(&mut m, &Tensor::zeros(&[2, 28, 1, 28])),
        [2, 28, 1, 28]
    );
    let e = m
        .run(&Tensor::new_i32(vec![2, 1, 28, 28], vec![0; 1568]).unwrap())
        .unwrap_err();
    assert_eq!(e.to_string(), "input `x` must be f32, got i32");
    // A batch of 2^60 images in an empty buffer would wrap the element count to zero.
    assert!(Tensor::new(vec![1 << 60, 1, 28, 28], vec![]).is_none());
    // After all those refusals the model still runs.
    assert_eq!(
        m.run(&Tensor::zeros(&[3, 1, 28, 28])).unwrap().shape(),
        &[3, 10]
    );

    // A model that declares its batch accepts exactly that batch.
    let src = "input x: f32[4,3]\nfc = dense(x, units=2)\noutput fc\n";
    let g = parse(src).unwrap();
    let mut fixed = InferenceModel::compile(&g, &CompileConfig::default()).unwrap();
    fixed
        .bind(&init_params(&typed(&g), 0).into_iter().collect())
        .unwrap();
    assert_eq!(fixed.run(&Tensor::zeros(&[4, 3])).unwrap().shape(), &[4, 2]);
    let e = fixed.run(&Tensor::zeros(&[2, 3])).unwrap_err();
    assert_eq!(e.to_string(), "input `x` has shape [2, 3], expected [4,3]");
    assert!(fixed.profile(&Tensor::zeros(&[5, 3])).is_err());
}

/// Models the native backend cannot run are refused at compile time, not at run time: a
/// scalar input (no batch axis) and an `i32` input.
#[test]
fn inputs_without_a_batch_axis_or_of_i32_are_refused_at_compile_time() {
    let cfg = CompileConfig::default();
    let scalar = parse("input x: f32[]\ny = relu(x)\noutput y\n").unwrap();
    let e = InferenceModel::compile(&scalar, &cfg)
        .err()
        .expect("refused");
    assert_eq!(
        e.to_string(),
        "`x`: the native backend cannot compile this input; \
         the input needs a batch axis (a rank of at least 1)"
    );
    let ints = parse("input x: i32[N,4]\ny = flatten(x)\noutput y\n").unwrap();
    let e = InferenceModel::compile(&ints, &cfg).err().expect("refused");
    assert_eq!(
        e.to_string(),
        "the native backend needs exactly one f32 graph input, found 0"
    );
}
