//! Criterion benchmarks of JIT inference: LeNet, LeNet-BN folded and LeNet-BN unfolded
//! at batch 1 (one thread: latency) and batch 256 (two threads: throughput), with stable
//! names `infer/<model>/b<batch>`. The folded/plain pair is the "BatchNorm costs nothing at
//! inference" ratio, and `lenet_bn_folded_f32x4` against `lenet_bn_folded` what the host's
//! eight-lane kernels gain over four lanes; compare with ../shared/peers/ort_lenet_bn.py run
//! in the same session.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use bnc::compiler::Tensor;
use bnc::compiler::codegen::Width;
use bnc::compiler::interp::{SplitMix64, init_params};
use bnc::compiler::passes::{Mode, PassManager};
use bnc::runtime::model::{CompileConfig, InferenceModel};
use bnc::runtime::weights::ParamStore;

fn model(name: &str, fold: bool, threads: usize, width: Width) -> InferenceModel {
    let path = format!("{}/models/{name}.ir", env!("CARGO_MANIFEST_DIR"));
    let g = bnc::load_model(&path).expect("model parses");
    let mut typed = g.clone();
    PassManager::new(&["infer-shapes"])
        .expect("pass")
        .run(&mut typed, Mode::Infer)
        .expect("shapes");
    let params: ParamStore = init_params(&typed, 0).into_iter().collect();
    let mut m = InferenceModel::compile(
        &g,
        &CompileConfig {
            threads,
            fold,
            width,
            ..CompileConfig::default()
        },
    )
    .expect("compiles");
    m.bind(&params).expect("binds");
    m
}

fn input(batch: usize) -> Tensor {
    let mut rng = SplitMix64::new(7);
    Tensor::new(
        vec![batch, 1, 28, 28],
        (0..batch * 784).map(|_| rng.next_f32()).collect(),
    )
    .expect("shape")
}

fn inference(c: &mut Criterion) {
    let mut group = c.benchmark_group("infer");
    for (batch, threads) in [(1, 1), (256, 2)] {
        let x = input(batch);
        group.throughput(Throughput::Elements(batch as u64));
        let host = Width::host();
        for (label, name, fold, width) in [
            ("lenet", "lenet", true, host),
            ("lenet_bn_folded", "lenet_bn", true, host),
            ("lenet_bn_unfolded", "lenet_bn", false, host),
            // The same kernels on four lanes: what the eight-lane ones gain (equal where
            // the host has no AVX2).
            ("lenet_bn_folded_f32x4", "lenet_bn", true, Width::F32x4),
        ] {
            let mut m = model(name, fold, threads, width);
            group.bench_with_input(BenchmarkId::new(label, format!("b{batch}")), &x, |b, x| {
                b.iter(|| m.run(x).expect("runs"))
            });
        }
    }
    group.finish();
}

fn compile_time(c: &mut Criterion) {
    let path = format!("{}/models/lenet_bn.ir", env!("CARGO_MANIFEST_DIR"));
    c.bench_function("compile/lenet_bn", |b| {
        b.iter(|| {
            let g = bnc::load_model(&path).expect("parses");
            InferenceModel::compile(&g, &CompileConfig::default()).expect("compiles")
        })
    });
}

criterion_group!(benches, inference, compile_time);
criterion_main!(benches);
