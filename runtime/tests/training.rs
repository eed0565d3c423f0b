//! Tests of JIT training: the fused training step against the reference interpreter (loss,
//! gradients, updates, running statistics), bit-for-bit reproducibility, and one epoch of
//! LeNet-BN on the real Fashion-MNIST.
//!
//! The reference is the interpreter: `interp::gradients` (the autodiff graph) for loss
//! and gradients, its train-mode forward for running statistics, and plain SGD on the
//! reference gradients for the updated weights. Tolerance: max |a−b|/max(1,|b|) < 1e-4.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::Path;

use bnc_compiler::Tensor;
use bnc_compiler::interp::{Params, SplitMix64, gradients, init_params, run};
use bnc_compiler::ir::Graph;
use bnc_compiler::passes::{Mode, PassManager};
use bnc_compiler::text::parse;
use bnc_runtime::data::{DEFAULT_DIR, Split, load};
use bnc_runtime::model::{CompileConfig, InferenceModel};
use bnc_runtime::train::{TrainConfig, Trainer};
use bnc_runtime::weights::ParamStore;

const LENET_BN: &str = include_str!("../../models/lenet_bn.ir");
const LENET: &str = include_str!("../../models/lenet.ir");
const MLP_BN: &str = include_str!("../../models/mlp_bn.ir");
const VGG_BN: &str = include_str!("../../models/vgg_bn.ir");

/// The parsed model and its typed train graph (with the loss attached).
fn graphs(src: &str) -> (Graph, Graph) {
    let g = parse(src).expect("model parses");
    let mut train = g.clone();
    PassManager::new(&["infer-shapes", "lower-batch-norm", "attach-loss"])
        .unwrap()
        .run(&mut train, Mode::Train)
        .unwrap();
    (g, train)
}

fn to_store(p: &Params) -> ParamStore {
    let mut s = ParamStore::new();
    for (k, v) in p {
        s.insert(k.clone(), v.clone());
    }
    s
}

fn to_params(s: &ParamStore) -> Params {
    s.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn f32s(t: &Tensor) -> &[f32] {
    t.as_f32().expect("f32 tensor")
}

/// `max |a - b| / max(1, |b|)`.
fn metric(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// A random batch: images in [0, 1), labels in 0..10.
fn batch(rng: &mut SplitMix64, n: usize) -> (Vec<f32>, Vec<i32>) {
    let images = (0..n * 784).map(|_| rng.uniform(0.0, 1.0)).collect();
    let labels = (0..n)
        .map(|_| (rng.uniform(0.0, 10.0) as i32).min(9))
        .collect();
    (images, labels)
}

/// The interpreter's train-mode loss; updates the running statistics in `params`.
fn interp_loss(g: &Graph, images: &[f32], labels: &[i32], params: &mut Params) -> f64 {
    let n = labels.len();
    let inputs = HashMap::from([
        (
            "x".to_string(),
            Tensor::new(vec![n, 1, 28, 28], images.to_vec()).unwrap(),
        ),
        (
            "labels".to_string(),
            Tensor::new_i32(vec![n], labels.to_vec()).unwrap(),
        ),
    ]);
    let out = run(g, Mode::Train, &inputs, params).expect("interpreter runs");
    f64::from(f32s(&out.outputs[0])[0])
}

/// `params` with every bias (conv, dense and BatchNorm β) set to distinct non-zero values:
/// fresh initialization zeroes them, which would hide a bias the trainer drops. A bias
/// before a BatchNorm (`redundant-bias` removes it from the train graph) must still show in
/// the running mean, as the interpreter's train-mode run of the model computes it.
fn nonzero_biases(mut params: Params) -> Params {
    for (name, t) in params.iter_mut() {
        if name.ends_with(".bias") {
            let b = t.as_f32_mut().expect("f32 bias");
            for (i, v) in b.iter_mut().enumerate() {
                *v = 0.3 * ((i as f32) * 0.7).sin() + 0.1;
            }
        }
    }
    params
}

/// Trains `src` for three SGD steps (with momentum and weight decay) on batches of 16 with
/// the JIT and checks every quantity against the interpreter.
fn check_against_interpreter(src: &str, threads: usize) {
    check_with(src, threads, false);
}

/// [`check_against_interpreter`] from fresh weights, or with [`nonzero_biases`].
fn check_with(src: &str, threads: usize, biases: bool) {
    let (model, g) = graphs(src);
    let mut init = init_params(&g, 7);
    if biases {
        init = nonzero_biases(init);
    }
    let cfg = TrainConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-3,
        threads,
        batch: 16,
    };
    let mut trainer = Trainer::new(&model, to_store(&init), &cfg).expect("compiles");
    let mut rng = SplitMix64::new(11);
    // The reference state: weights, running statistics and momentum buffers.
    let mut reference = init.clone();
    let mut velocity: HashMap<String, Vec<f32>> = HashMap::new();
    for step in 0..3 {
        let (images, labels) = batch(&mut rng, 16);
        let before = reference.clone();
        let want_loss = interp_loss(&g, &images, &labels, &mut reference);
        let stats = trainer.step(&images, &labels).expect("step runs");
        let loss_err = (f64::from(stats.loss) - want_loss).abs() / want_loss.abs().max(1.0);
        assert!(
            loss_err < 1e-4,
            "step {step}: loss {} vs {want_loss}",
            stats.loss
        );
        // Every gradient against the interpreter's backward pass (`interp::gradients`,
        // which runs the autodiff pass). A bias that `redundant-bias` moved to a BatchNorm's
        // `input_bias` has no reference gradient: the BatchNorm cancels it, so the JIT's
        // must be ~0.
        let inputs = HashMap::from([
            (
                "x".to_string(),
                Tensor::new(vec![16, 1, 28, 28], images.clone()).unwrap(),
            ),
            (
                "labels".to_string(),
                Tensor::new_i32(vec![16], labels.clone()).unwrap(),
            ),
        ]);
        let want = gradients(&model, &inputs, &before).expect("reference gradients");
        assert!((want.loss - stats.loss).abs() / want.loss.abs().max(1.0) < 1e-4);
        let grads = trainer.gradients();
        for (name, grad) in grads.iter() {
            match want.grads.get(name) {
                Some(w) => {
                    let e = metric(f32s(grad), f32s(w));
                    assert!(e < 1e-4, "step {step}, gradient of {name}: error {e}");
                }
                None => {
                    let m = f32s(grad).iter().fold(0.0f32, |m, g| m.max(g.abs()));
                    assert!(
                        m < 1e-4,
                        "step {step}, {name}: a cancelled bias has gradient {m}"
                    );
                }
            }
        }
        for name in want.grads.keys() {
            assert!(
                grads.get(name).is_some(),
                "the JIT has no gradient for {name}"
            );
        }
        // `interp::gradients` runs the train pipeline, whose `redundant-bias` moves a bias
        // into the BatchNorm's running-mean update; the reference is the model's own
        // train-mode run, with the bias in place. The two agree, biases or not.
        for (name, want) in &want.running {
            let e = metric(f32s(&reference[name]), f32s(want));
            assert!(
                e < 1e-6,
                "step {step}: the two interpreter runs disagree on {name}"
            );
        }
        // The SGD update with the reference gradients (PyTorch semantics).
        for (name, grad) in grads.iter() {
            let zeros = vec![0.0; grad.len()];
            let g_ref = want.grads.get(name).map_or(&zeros[..], |t| f32s(t));
            let w = reference.get_mut(name).unwrap().as_f32_mut().unwrap();
            let v = velocity
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; w.len()]);
            for ((w, &g), v) in w.iter_mut().zip(g_ref).zip(v.iter_mut()) {
                let g = g + cfg.weight_decay * *w;
                *v = cfg.momentum * *v + g;
                *w -= cfg.lr * *v;
            }
        }
        let got = to_params(&trainer.params());
        assert_eq!(got.len(), reference.len());
        for (name, want) in &reference {
            let e = metric(f32s(&got[name]), f32s(want));
            assert!(e < 1e-4, "step {step}, {name}: error {e}");
        }
    }
}

#[test]
fn lenet_bn_step_matches_interpreter_on_one_thread() {
    check_against_interpreter(LENET_BN, 1);
}

#[test]
fn lenet_bn_step_matches_interpreter_on_two_threads() {
    check_against_interpreter(LENET_BN, 2);
}

#[test]
fn lenet_step_matches_interpreter() {
    check_against_interpreter(LENET, 1);
    check_against_interpreter(LENET, 2);
}

#[test]
fn mlp_bn_step_matches_interpreter() {
    check_against_interpreter(MLP_BN, 1);
    check_against_interpreter(MLP_BN, 2);
}

/// 3x3 convolutions with padding 1 and 14-column outputs (the weight gradient's bordered
/// copy, tail vectors and four-channel blocks), relu and max pooling.
#[test]
fn vgg_bn_step_matches_interpreter() {
    check_against_interpreter(VGG_BN, 1);
    check_against_interpreter(VGG_BN, 2);
}

/// Padded convolutions (whose weight gradient reads a zero-bordered copy of the input), max
/// pooling, relu, and a convolution with more taps than the tiled weight gradient keeps on
/// the stack (128 x 8 x 3 x 3 = 9216, above 6553: it runs untiled, reading the padded input
/// with guards).
const PADDED_WIDE: &str = "input x: f32[N,1,28,28]
c1 = conv2d(x, channels=8, kernel=3, padding=1, bias=false)
b1 = batch_norm(c1)
r1 = relu(b1)
p1 = max_pool2d(r1, kernel=2, stride=2)
c2 = conv2d(p1, channels=128, kernel=3, padding=1)
r2 = relu(c2)
p2 = avg_pool2d(r2, kernel=7, stride=7)
f = flatten(p2)
fc = dense(f, units=10)
output fc
";

#[test]
fn padded_and_wide_convolutions_match_interpreter() {
    check_against_interpreter(PADDED_WIDE, 1);
    check_against_interpreter(PADDED_WIDE, 2);
}

/// A convolution with 64 x 256 x 3 x 3 taps: the tiled weight gradient's stack arrays would
/// take 2.9 MB, more than a worker thread's 2 MB stack, which killed the process on two
/// threads. One step's gradients against the interpreter's.
#[test]
fn a_layer_too_wide_for_stack_arrays_trains_on_two_threads() {
    let src = "input x: f32[N,1,28,28]
c1 = conv2d(x, channels=64, kernel=3)
r1 = relu(c1)
p1 = max_pool2d(r1, kernel=2, stride=2)
c2 = conv2d(p1, channels=256, kernel=3)
r2 = relu(c2)
p2 = avg_pool2d(r2, kernel=11, stride=11)
f = flatten(p2)
fc = dense(f, units=10)
output fc
";
    let (model, g) = graphs(src);
    let init = init_params(&g, 3);
    let cfg = TrainConfig {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        threads: 2,
        batch: 4,
    };
    let mut trainer = Trainer::new(&model, to_store(&init), &cfg).expect("compiles");
    let (images, labels) = batch(&mut SplitMix64::new(5), 4);
    let stats = trainer.step(&images, &labels).expect("step runs");
    let inputs = HashMap::from([
        (
            "x".to_string(),
            Tensor::new(vec![4, 1, 28, 28], images).unwrap(),
        ),
        (
            "labels".to_string(),
            Tensor::new_i32(vec![4], labels).unwrap(),
        ),
    ]);
    let want = gradients(&model, &inputs, &init).expect("reference gradients");
    assert!((want.loss - stats.loss).abs() / want.loss.abs().max(1.0) < 1e-4);
    let grads = trainer.gradients();
    for (name, w) in &want.grads {
        let got = grads.get(name).expect("a gradient for every parameter");
        let e = metric(f32s(got), f32s(w));
        assert!(e < 1e-4, "gradient of {name}: error {e}");
    }
}

/// The trainer lowers the train pipeline's output, where `redundant-bias` moved the biases
/// before each BatchNorm into its running-mean update (`input_bias`); they stay parameters
/// (decayed, saved) and, when not zero, must still shift the running mean as in the model,
/// in the JIT and in the interpreter's train pipeline alike.
#[test]
fn biases_before_batch_norm_match_interpreter() {
    check_with(LENET_BN, 2, true);
    check_with(MLP_BN, 1, true);
    check_with(LENET, 1, true);
}

/// Five steps from the same seed give bit-identical losses and parameters, run twice on
/// the same thread count and on one, two or three threads: the batch is cut into units by
/// its size alone, and every partial is merged in unit order. Keeping `z` for the guard
/// changes nothing either, nor does memory in ordinary pages instead of huge pages. The
/// batches grow and shrink, so the units' buffers are carved anew in between.
#[test]
fn training_is_bit_for_bit_reproducible_on_any_thread_count() {
    let (model, g) = graphs(LENET_BN);
    let train = |threads, keep_z, huge| {
        let cfg = TrainConfig {
            lr: 0.5,
            momentum: 0.9,
            weight_decay: 0.0,
            threads,
            batch: 64,
        };
        let mut t = Trainer::new(&model, to_store(&init_params(&g, 3)), &cfg).unwrap();
        t.keep_z(keep_z);
        t.huge_pages(huge);
        let mut rng = SplitMix64::new(5);
        let mut losses = Vec::new();
        for n in [20, 63, 31, 64, 7] {
            let (images, labels) = batch(&mut rng, n);
            let s = t.step(&images, &labels).unwrap();
            losses.push((s.loss.to_bits(), s.correct));
        }
        (losses, t.params())
    };
    let bits = |t: &Tensor| f32s(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let (want_losses, want) = train(2, false, true);
    // Keeping `z` (for the numerics guard) moves where `dz` is written, not its bits.
    for (threads, keep_z, huge) in [
        (2, false, true),
        (1, false, true),
        (3, false, true),
        (2, true, true),
        (2, false, false),
    ] {
        let (losses, got) = train(threads, keep_z, huge);
        let run = format!("{threads} thread(s), keep_z {keep_z}, huge pages {huge}");
        assert_eq!(losses, want_losses, "losses on {run}");
        for (name, t) in want.iter() {
            assert_eq!(bits(t), bits(got.get(name).unwrap()), "{name} on {run}");
        }
    }
}

/// `step_and` runs its work once per step: on a worker thread, beside the update, when
/// the step has one, else on the caller's thread; the step's bits are `step`'s; a refused
/// batch runs nothing.
#[test]
fn step_and_runs_its_work_once_beside_the_update() {
    let (model, g) = graphs(LENET_BN);
    for threads in [1, 2] {
        let cfg = TrainConfig {
            lr: 0.5,
            momentum: 0.9,
            weight_decay: 0.0,
            threads,
            batch: 32,
        };
        let fresh = || Trainer::new(&model, to_store(&init_params(&g, 3)), &cfg).unwrap();
        let (mut plain, mut with) = (fresh(), fresh());
        let mut rng = SplitMix64::new(5);
        let caller = std::thread::current().id();
        for _ in 0..3 {
            let (images, labels) = batch(&mut rng, 32);
            let want = plain.step(&images, &labels).unwrap();
            let mut ran = Vec::new();
            let got = with
                .step_and(&images, &labels, &mut || {
                    ran.push(std::thread::current().id())
                })
                .unwrap();
            assert_eq!(
                (got.loss.to_bits(), got.correct),
                (want.loss.to_bits(), want.correct)
            );
            assert_eq!(ran.len(), 1, "{threads} thread(s)");
            assert_eq!(ran[0] == caller, threads == 1, "{threads} thread(s)");
        }
        for (name, t) in plain.params().iter() {
            assert_eq!(f32s(t), f32s(with.params().get(name).unwrap()), "{name}");
        }
        let (images, mut labels) = batch(&mut rng, 32);
        labels[3] = 10;
        let mut ran = false;
        assert!(with.step_and(&images, &labels, &mut || ran = true).is_err());
        assert!(!ran, "a refused batch ran the work");
    }
}

/// A wrong batch or label is refused with a typed error, not a panic.
#[test]
fn bad_batches_are_refused() {
    let (model, g) = graphs(MLP_BN);
    let cfg = TrainConfig {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        threads: 1,
        batch: 4,
    };
    let mut t = Trainer::new(&model, to_store(&init_params(&g, 1)), &cfg).unwrap();
    let e = t.step(&[0.0; 784 * 5], &[0; 5]).unwrap_err();
    assert_eq!(e.to_string(), "batch of 5 images, expected 1 to 4");
    let e = t.step(&[0.0; 784], &[10]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "label 10 at index 0 is out of range for 10 classes"
    );
    let e = t.step(&[0.0; 784], &[-1]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "label -1 at index 0 is out of range for 10 classes"
    );
    let e = t.step(&[], &[]).unwrap_err();
    assert_eq!(e.to_string(), "batch of 0 images, expected 1 to 4");
    // One float short, one float over, and images for another batch size.
    for len in [784 * 2 - 1, 784 * 2 + 1, 784 * 3] {
        let e = t.step(&vec![0.0; len], &[0, 1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{len} floats of images for 2 labels; expected 784 per image")
        );
    }
    // Nothing was half-applied: a valid step still matches a fresh trainer's.
    let (images, labels) = batch(&mut SplitMix64::new(3), 2);
    let mut fresh = Trainer::new(&model, to_store(&init_params(&g, 1)), &cfg).unwrap();
    assert_eq!(
        t.step(&images, &labels).unwrap(),
        fresh.step(&images, &labels).unwrap()
    );
}

/// A layer whose weight is computed (a hand-folded `channel_scale`) cannot be trained in
/// place: the trainer says so instead of reporting a missing tensor.
#[test]
fn computed_weights_are_refused() {
    let src = "input x: f32[N,3]\nparam s: f32[2]\nparam w: f32[2,3]\n\
               ws = channel_scale(w, s)\nfc = dense(x, ws, units=2, bias=false)\noutput fc\n";
    let (model, g) = graphs(src);
    let cfg = TrainConfig {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        threads: 1,
        batch: 2,
    };
    let e = Trainer::new(&model, to_store(&init_params(&g, 1)), &cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`fc`: the native backend cannot compile this dense; training needs its weight, \
         bias and BatchNorm statistics to be parameters, not computed values"
    );
}

/// One epoch of LeNet-BN (lr 1.0, batch 256, Xavier init) on Fashion-MNIST reaches a test
/// accuracy of at least 0.70 in infer mode and a train loss below 0.8.
#[test]
fn lenet_bn_learns_fashion_mnist_in_one_epoch() {
    let dir = Path::new(DEFAULT_DIR);
    let train_set = load(dir, Split::Train).expect("fashion-mnist is installed");
    let test_set = load(dir, Split::Test).expect("fashion-mnist is installed");
    let (model, g) = graphs(LENET_BN);
    let cfg = TrainConfig {
        lr: 1.0,
        momentum: 0.0,
        weight_decay: 0.0,
        threads: 2,
        batch: 256,
    };
    let mut trainer = Trainer::new(&model, to_store(&init_params(&g, 0)), &cfg).unwrap();
    let mut batches = train_set.shuffled_batches(NonZeroUsize::new(256).unwrap(), 0, 0);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let (mut loss_sum, mut seen) = (0.0f64, 0usize);
    while let Some(n) = batches.next_into(&mut images, &mut labels) {
        let s = trainer.step(&images, &labels).unwrap();
        loss_sum += f64::from(s.loss) * n as f64;
        seen += n;
    }
    let train_loss = loss_sum / seen as f64;
    let mut infer = InferenceModel::compile(
        &model,
        &CompileConfig {
            threads: 2,
            fold: true,
            ..CompileConfig::default()
        },
    )
    .unwrap();
    infer.bind(&trainer.params()).unwrap();
    let n = test_set.len();
    let x = Tensor::new(vec![n, 1, 28, 28], test_set.images().to_vec()).unwrap();
    let logits = infer.run(&x).unwrap();
    let logits = f32s(&logits);
    let correct = (0..n)
        .filter(|&i| {
            let row = &logits[i * 10..(i + 1) * 10];
            let best = (0..10).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            best as i32 == test_set.labels()[i]
        })
        .count();
    let acc = correct as f64 / n as f64;
    eprintln!("one epoch: train loss {train_loss:.4}, test accuracy {acc:.4}");
    assert!(acc >= 0.70, "test accuracy {acc}");
    assert!(train_loss < 0.8, "train loss {train_loss}");
}

/// Seconds per epoch (60 000 images, batch 256) of LeNet-BN and LeNet on one and two threads;
/// run with `cargo test --release -p bnc-runtime --test training -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a test"]
fn epoch_timing() {
    let train_set = load(Path::new(DEFAULT_DIR), Split::Train).expect("fashion-mnist");
    for (name, src) in [("lenet_bn", LENET_BN), ("lenet", LENET)] {
        let (model, g) = graphs(src);
        for threads in [1, 2] {
            let cfg = TrainConfig {
                lr: 0.9,
                momentum: 0.0,
                weight_decay: 0.0,
                threads,
                batch: 256,
            };
            let mut t = Trainer::new(&model, to_store(&init_params(&g, 0)), &cfg).unwrap();
            let mut batches = train_set.shuffled_batches(NonZeroUsize::new(256).unwrap(), 0, 0);
            let (mut images, mut labels) = (Vec::new(), Vec::new());
            let start = std::time::Instant::now();
            while batches.next_into(&mut images, &mut labels).is_some() {
                t.step(&images, &labels).unwrap();
            }
            let s = start.elapsed().as_secs_f64();
            eprintln!("{name}: {threads} thread(s): {s:.3} s/epoch");
        }
    }
}
