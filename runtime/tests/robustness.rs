//! Robustness of JIT training: the numerics guard names the node that produced the first
//! non-finite value, a trainer rebuilt from a checkpoint's state continues bit for bit, and
//! a model too large to train is refused before anything is allocated.

use bnc_compiler::Tensor;
use bnc_compiler::interp::{SplitMix64, init_params};
use bnc_compiler::ir::Graph;
use bnc_compiler::passes::{Mode, PassManager};
use bnc_compiler::text::parse;
use bnc_runtime::checkpoint::{Checkpoint, Progress, Recipe, Resume, TrainState, VERSION};
use bnc_runtime::train::{NonFinite, Site, TrainConfig, TrainError, Trainer};
use bnc_runtime::weights::ParamStore;

const LENET_BN: &str = include_str!("../../models/lenet_bn.ir");
const MLP_BN: &str = include_str!("../../models/mlp_bn.ir");

/// The parsed model and freshly initialized parameters.
fn model(src: &str, seed: u64) -> (Graph, ParamStore) {
    let g = parse(src).expect("model parses");
    let mut typed = g.clone();
    PassManager::new(&["infer-shapes"])
        .unwrap()
        .run(&mut typed, Mode::Infer)
        .unwrap();
    (g, init_params(&typed, seed).into_iter().collect())
}

fn cfg(threads: usize) -> TrainConfig {
    TrainConfig {
        lr: 0.5,
        momentum: 0.9,
        weight_decay: 1e-3,
        threads,
        batch: 16,
    }
}

/// A random batch: images in [0, 1), labels in 0..10.
fn batch(rng: &mut SplitMix64, n: usize) -> (Vec<f32>, Vec<i32>) {
    let images = (0..n * 784).map(|_| rng.uniform(0.0, 1.0)).collect();
    let labels = (0..n)
        .map(|_| (rng.uniform(0.0, 10.0) as i32).min(9))
        .collect();
    (images, labels)
}

/// Sets element `i` of parameter `name` to `v`.
fn poke(params: &mut ParamStore, name: &str, i: usize, v: f32) {
    let t = params.get(name).expect("parameter exists");
    let mut data = t.as_f32().unwrap().to_vec();
    data[i] = v;
    params.insert(name, Tensor::new(t.shape().to_vec(), data).unwrap());
}

/// One step on a batch of 16 (the given image poked with `pixel`), keeping every buffer
/// for the guard as `bnc train --check-numerics` does, then the guard.
fn first_non_finite(src: &str, params: ParamStore, pixel: Option<(usize, f32)>) -> NonFinite {
    first_non_finite_kept(src, params, pixel, true)
}

fn first_non_finite_kept(
    src: &str,
    params: ParamStore,
    pixel: Option<(usize, f32)>,
    keep_z: bool,
) -> NonFinite {
    let (g, _) = model(src, 0);
    let mut t = Trainer::new(&g, params, &cfg(2)).unwrap();
    t.keep_z(keep_z);
    let (mut images, labels) = batch(&mut SplitMix64::new(1), 16);
    if let Some((i, v)) = pixel {
        images[i] = v;
    }
    t.step(&images, &labels).unwrap();
    t.check_numerics().expect_err("a non-finite value")
}

fn output_of(e: &NonFinite) -> (&str, &'static str, Vec<&str>, usize) {
    match &e.site {
        Site::Output { node, with, image } => (
            node.name.as_str(),
            node.op,
            with.iter().map(|n| n.name.as_str()).collect(),
            *image,
        ),
        other => panic!("expected a forward output, got {other:?}"),
    }
}

/// A finite step passes the guard, on one thread and on two, with and without `z` kept.
#[test]
fn finite_steps_pass() {
    for (threads, keep_z) in [(1, false), (2, false), (2, true)] {
        let (g, params) = model(LENET_BN, 0);
        let mut t = Trainer::new(&g, params, &cfg(threads)).unwrap();
        t.keep_z(keep_z);
        let mut rng = SplitMix64::new(2);
        for n in [16, 5] {
            let (images, labels) = batch(&mut rng, n);
            t.step(&images, &labels).unwrap();
            t.check_numerics().unwrap();
            t.check_parameters().unwrap();
        }
    }
}

/// A NaN in a weight shows first in the output of the node that uses it, for every image;
/// a NaN pixel shows in the first convolution's output for that image only.
#[test]
fn the_guard_names_the_node_that_produced_the_value() {
    let (_, mut params) = model(LENET_BN, 0);
    poke(&mut params, "conv2.weight", 7, f32::NAN);
    let e = first_non_finite(LENET_BN, params, None);
    assert!(e.value.is_nan());
    assert_eq!(output_of(&e), ("conv2", "conv2d", vec![], 0));
    assert_eq!(
        e.to_string(),
        "non-finite value NaN in the output of `conv2` (conv2d) for image 0 of the batch"
    );

    let (_, params) = model(LENET_BN, 0);
    let e = first_non_finite(LENET_BN, params, Some((11 * 784 + 300, f32::INFINITY)));
    assert_eq!(output_of(&e), ("conv1", "conv2d", vec![], 11));

    // γ is applied by the kernel that also runs the activation; its output is act2's.
    let (_, mut params) = model(LENET_BN, 0);
    poke(&mut params, "bn2.weight", 3, f32::NAN);
    let e = first_non_finite(LENET_BN, params, None);
    assert_eq!(output_of(&e), ("act2", "sigmoid", vec!["bn2"], 0));
    assert!(
        e.to_string().contains(
            "the output of `act2` (sigmoid), computed in one kernel with `bn2` (batch_norm_apply)"
        ),
        "{e}"
    );

    // Without `z` kept, the BatchNorm dx pass overwrote it, and a NaN weight shows in the
    // activation that `z` feeds; an infinite pixel spreads through the batch statistics
    // to every image.
    let (_, mut params) = model(LENET_BN, 0);
    poke(&mut params, "conv2.weight", 7, f32::NAN);
    let e = first_non_finite_kept(LENET_BN, params, None, false);
    assert_eq!(output_of(&e), ("act2", "sigmoid", vec!["bn2"], 0));
    let (_, params) = model(LENET_BN, 0);
    let e = first_non_finite_kept(
        LENET_BN,
        params,
        Some((11 * 784 + 300, f32::INFINITY)),
        false,
    );
    assert_eq!(output_of(&e), ("act1", "sigmoid", vec!["bn1"], 0));

    // A dense layer without BatchNorm or activation: its own output.
    let (_, mut params) = model(MLP_BN, 0);
    poke(&mut params, "fc3.bias", 9, f32::NEG_INFINITY);
    let e = first_non_finite(MLP_BN, params, None);
    assert_eq!(e.value, f32::NEG_INFINITY);
    assert_eq!(output_of(&e), ("fc3", "dense", vec![], 0));
}

/// A running variance that is already infinite is found after the step, named as such.
#[test]
fn the_guard_checks_running_statistics() {
    let (g, mut params) = model(MLP_BN, 0);
    poke(&mut params, "bn2.running_var", 0, f32::INFINITY);
    let mut t = Trainer::new(&g, params, &cfg(1)).unwrap();
    let (images, labels) = batch(&mut SplitMix64::new(1), 8);
    t.step(&images, &labels).unwrap();
    let e = t.check_parameters().unwrap_err();
    assert_eq!(
        e.to_string(),
        "non-finite value inf in `bn2.running_var` after the running-statistics update of \
         `bn2.stats` (batch_stats)"
    );
    assert_eq!(t.check_numerics().unwrap_err(), e);
}

fn bits(store: &ParamStore) -> Vec<(String, Vec<u32>)> {
    store
        .iter()
        .map(|(n, t)| {
            let b = t.as_f32().unwrap().iter().map(|v| v.to_bits()).collect();
            (n.to_string(), b)
        })
        .collect()
}

/// Six steps in one go equal three steps, a checkpoint written and read back, and three
/// more steps in a new trainer, bit for bit; without the momentum buffers they differ.
#[test]
fn a_trainer_rebuilt_from_a_checkpoint_continues_bit_for_bit() {
    let (g, params) = model(LENET_BN, 4);
    let mut rng = SplitMix64::new(9);
    let batches: Vec<_> = (0..6).map(|i| batch(&mut rng, 16 - i)).collect();
    let run = |t: &mut Trainer, range: std::ops::Range<usize>| {
        for (images, labels) in &batches[range] {
            t.step(images, labels).unwrap();
        }
    };
    let mut whole = Trainer::new(&g, params.clone(), &cfg(2)).unwrap();
    run(&mut whole, 0..6);

    let mut first = Trainer::new(&g, params, &cfg(2)).unwrap();
    run(&mut first, 0..3);
    let state = TrainState {
        version: VERSION,
        model: "lenet_bn.ir".into(),
        fingerprint: bnc_runtime::checkpoint::model_fingerprint(&g),
        train_images: 6,
        recipe: Recipe {
            epochs: 1,
            lr: 0.5,
            momentum: f64::from(0.9f32),
            weight_decay: f64::from(1e-3f32),
            batch: 16,
            seed: 4,
            threads: 2,
            limit_train: None,
        },
        progress: Progress {
            step: 3,
            ..Progress::default()
        },
        metrics: Vec::new(),
    };
    let path = std::env::temp_dir().join(format!("bnc-robustness-{}.ckpt", std::process::id()));
    Checkpoint::of(&first, state).save(&path).unwrap();
    let Resume::Checkpoint(c) = Checkpoint::load(&path).unwrap() else {
        panic!("a checkpoint loads as one");
    };
    std::fs::remove_file(&path).unwrap();
    assert_eq!(c.state.recipe.train_config(), cfg(2));

    let mut resumed = Trainer::new(&g, c.params.clone(), &c.state.recipe.train_config()).unwrap();
    resumed.set_velocities(&c.velocities).unwrap();
    run(&mut resumed, 3..6);
    assert_eq!(bits(&resumed.params()), bits(&whole.params()));
    assert_eq!(bits(&resumed.velocities()), bits(&whole.velocities()));

    let mut forgetful = Trainer::new(&g, c.params.clone(), &cfg(2)).unwrap();
    run(&mut forgetful, 3..6);
    assert_ne!(bits(&forgetful.params()), bits(&whole.params()));

    let mut wrong = ParamStore::new();
    wrong.insert("conv1.weight", Tensor::zeros(&[6, 1, 5, 4]));
    let e = resumed.set_velocities(&wrong).unwrap_err().to_string();
    assert_eq!(
        e,
        "tensor 'conv1.weight' has shape [6,1,5,4], expected [6,1,5,5]"
    );
}

/// A model whose shapes each pass shape inference but which would need hundreds of
/// gigabytes to train is refused by `Trainer::new` before anything is allocated.
#[test]
fn a_huge_model_is_too_large_to_train() {
    let g = parse(
        "input x: f32[N,1,28,28]\nc = conv2d(x, channels=100000, kernel=1)\n\
         f = flatten(c)\ny = dense(f, units=10)\noutput y\n",
    )
    .unwrap();
    let cfg = TrainConfig {
        batch: 256,
        ..cfg(2)
    };
    let e = Trainer::new(&g, ParamStore::new(), &cfg).unwrap_err();
    assert!(matches!(e, TrainError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("the model is too large"), "{e}");
}
