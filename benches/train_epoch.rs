//! Training throughput: 20 SGD steps at batch 256 on random Fashion-MNIST-shaped data, for
//! LeNet-BN and LeNet on one and two threads (an epoch is 235 steps); and the training
//! loop over the real data's first 40 shuffled batches, gathering each batch after the
//! step (`step`) or on the worker during the update (`step_and`, as `bnc train` does).

use std::hint::black_box;

use bnc_compiler::interp::{SplitMix64, init_params};
use bnc_compiler::passes::{Mode, PassManager};
use bnc_compiler::text::parse;
use bnc_runtime::data::{DEFAULT_DIR, Split, load};
use bnc_runtime::train::{Feed, TrainConfig, Trainer};
use bnc_runtime::weights::ParamStore;
use criterion::{Criterion, criterion_group, criterion_main};

fn trainer(src: &str, threads: usize) -> Trainer {
    let model = parse(src).expect("model parses");
    let mut g = model.clone();
    PassManager::new(&["infer-shapes", "lower-batch-norm"])
        .expect("known passes")
        .run(&mut g, Mode::Train)
        .expect("model types");
    let mut store = ParamStore::new();
    for (k, v) in init_params(&g, 0) {
        store.insert(k, v);
    }
    let cfg = TrainConfig {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        threads,
        batch: 256,
    };
    Trainer::new(&model, store, &cfg).expect("compiles")
}

fn train_steps(c: &mut Criterion) {
    let mut rng = SplitMix64::new(1);
    let images: Vec<f32> = (0..256 * 784).map(|_| rng.uniform(0.0, 1.0)).collect();
    let labels: Vec<i32> = (0..256).map(|i| i % 10).collect();
    let mut group = c.benchmark_group("train_20_steps");
    group.sample_size(10);
    for (name, src) in [
        ("lenet_bn", include_str!("../models/lenet_bn.ir")),
        ("lenet", include_str!("../models/lenet.ir")),
    ] {
        for threads in [1, 2] {
            let mut t = trainer(src, threads);
            group.bench_function(format!("{name}/{threads}t"), |b| {
                b.iter(|| {
                    for _ in 0..20 {
                        black_box(t.step(&images, &labels).expect("step"));
                    }
                })
            });
        }
    }
    group.finish();
}

/// The first 40 batches of epoch 1 on the installed Fashion-MNIST, LeNet-BN on two
/// threads: gathering each batch between steps against gathering it beside the update.
fn train_loop(c: &mut Criterion) {
    let Ok(data) = load(std::path::Path::new(DEFAULT_DIR), Split::Train) else {
        eprintln!("train_loop: no Fashion-MNIST in {DEFAULT_DIR} (scripts/install-data); skipped");
        return;
    };
    let size = std::num::NonZeroUsize::new(256).expect("nonzero");
    let mut group = c.benchmark_group("train_loop_40_batches");
    group.sample_size(10);
    let mut t = trainer(include_str!("../models/lenet_bn.ir"), 2);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    group.bench_function("lenet_bn/2t/step", |b| {
        b.iter(|| {
            let mut batches = data.shuffled_batches(size, 0, 0);
            for _ in 0..40 {
                batches.next_into(&mut images, &mut labels);
                black_box(t.step(&images, &labels).expect("step"));
            }
        })
    });
    group.bench_function("lenet_bn/2t/step_and", |b| {
        b.iter(|| {
            let mut feed = Feed::new(data.shuffled_batches(size, 0, 0));
            for _ in 0..40 {
                let Some(result) = feed.step(&mut t) else {
                    break;
                };
                black_box(result.expect("step"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, train_steps, train_loop);
criterion_main!(benches);
