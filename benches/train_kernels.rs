//! Criterion benchmarks of conv1's elementwise training kernels at LeNet's shapes, batch 256,
//! one thread, each with its buffers in cache (`hot`: the same call again) and out of it
//! (`cold`: a 64 MiB sweep between calls, as in a training step, where the forward pass
//! wrote them long before): `train_kernels/<kernel>/<hot|cold>`.
//!
//! - `bn_sums`: BatchNorm's backward reduction pass (`PoolActBack` with BatchNorm): reads
//!   the pooled gradient, `a` and `z`.
//! - `bn_dx`: BatchNorm's input-gradient pass (`BnBackDx` recomputing `dy`): reads the
//!   same, writes `dz`.
//! - `act_back`: plain LeNet's pool and activation backward (`PoolActBack` without
//!   BatchNorm), the baseline: reads the pooled gradient and `a`, writes `dz`.
//! - `bn_apply`: BatchNorm's forward apply (`BnActPool`): reads `z`, writes `a` and the
//!   pooled output; in the step it reads `z` right after the convolution wrote it.
//!
//! The hot/cold pairs show which passes wait on memory in a step: see docs/BATCHNORM.md,
//! "What the backward pass costs".
//!
//! `train_kernels/conv_grad_w/<padded|unpadded>`: the conv weight gradient of a 3x3 layer
//! with and without padding, the same FMAs: what padding costs it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bnc::compiler::codegen::{Activation, JitKernels, KernelSpec, Pool2d, PoolKind};
use criterion::{Criterion, criterion_group, criterion_main};

const BATCH: usize = 256;

fn specs() -> [(&'static str, KernelSpec); 4] {
    let pool = Pool2d {
        kind: PoolKind::Avg,
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
        count_include_pad: true,
    };
    let (c, h, w, act) = (6, 24, 24, Activation::Sigmoid);
    [
        (
            "bn_sums",
            KernelSpec::PoolActBack {
                c,
                h,
                w,
                act,
                pool: Some(pool),
                bn: true,
            },
        ),
        (
            "bn_dx",
            KernelSpec::BnBackDx {
                c,
                h,
                w,
                back: Some((act, Some(pool))),
            },
        ),
        (
            "act_back",
            KernelSpec::PoolActBack {
                c,
                h,
                w,
                act,
                pool: Some(pool),
                bn: false,
            },
        ),
        ("bn_apply", KernelSpec::BnActPool { c, h, w, act, pool }),
    ]
}

fn train_kernels(c: &mut Criterion) {
    let specs = specs();
    let jit = JitKernels::compile(&specs.map(|(_, s)| s)).expect("compiles");
    let mut group = c.benchmark_group("train_kernels");
    group.sample_size(20);
    // Larger than the last-level cache (32 MiB here), so a sweep evicts every buffer.
    let mut sweep = vec![0u8; 64 << 20];
    for (i, (name, spec)) in specs.iter().enumerate() {
        // Activations in (0, 1), the rest around 1: no NaN, no denormal.
        let mut bufs: Vec<Vec<f32>> = spec
            .buffer_lens(BATCH)
            .iter()
            .enumerate()
            .map(|(b, &len)| {
                (0..len)
                    .map(|j| 0.25 + 0.5 * ((b * 7 + j) % 97) as f32 / 97.0)
                    .collect()
            })
            .collect();
        group.bench_function(format!("{name}/hot"), |b| {
            b.iter(|| jit.run_bufs(i, black_box(&mut bufs), BATCH).expect("runs"))
        });
        group.bench_function(format!("{name}/cold"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for k in 0..iters {
                    for x in sweep.iter_mut().step_by(64) {
                        *x = x.wrapping_add(k as u8);
                    }
                    black_box(&sweep);
                    let start = Instant::now();
                    jit.run_bufs(i, black_box(&mut bufs), BATCH).expect("runs");
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

/// The conv weight gradient of a VGG-style 3x3 layer (16 -> 32 channels, 14x14 outputs, 64
/// images: one unit of a step) with padding 1, against the same layer on a 16x16 input
/// without padding: the same outputs and FMAs, so the ratio of the two is what padding
/// costs (`train_kernels/conv_grad_w/<padded|unpadded>`).
fn conv_grad_w(c: &mut Criterion) {
    const IMAGES: usize = 64;
    let spec = |hw, p| KernelSpec::ConvGradW {
        c_in: 16,
        h: hw,
        w: hw,
        c_out: 32,
        kernel: [3, 3],
        padding: [p, p],
    };
    let specs = [("padded", spec(14, 1)), ("unpadded", spec(16, 0))];
    let jit = JitKernels::compile(&specs.map(|(_, s)| s)).expect("compiles");
    let mut group = c.benchmark_group("train_kernels/conv_grad_w");
    group.sample_size(20);
    for (i, (name, spec)) in specs.iter().enumerate() {
        let mut bufs: Vec<Vec<f32>> = spec
            .buffer_lens(IMAGES)
            .iter()
            .map(|&len| (0..len).map(|j| (j % 89) as f32 / 89.0 - 0.5).collect())
            .collect();
        group.bench_function(*name, |b| {
            b.iter(|| jit.run_bufs(i, black_box(&mut bufs), IMAGES).expect("runs"))
        });
    }
    group.finish();
}

criterion_group!(benches, train_kernels, conv_grad_w);
criterion_main!(benches);
