//! Differential tests of the training kernels against [`reference_train`], property-based
//! over shapes, plus the accuracy of the batch statistics on data with a large mean.

use proptest::prelude::*;

use super::loop_ir::{Buf, KernelBuilder, LoopKind, Stmt, Val, for_, v};
use super::tests::{Lcg, act, metric, random_inputs};
use super::*;

/// Runs a training spec on `n` random images through the JIT and the reference; returns the
/// worst error over its outputs.
fn train_error(spec: KernelSpec, n: usize, seed: u64) -> f32 {
    let mut rng = Lcg(seed);
    let names = spec.buffer_names();
    let lens = spec.buffer_lens(n);
    let first_out = names
        .iter()
        .position(|&b| matches!(b, "output" | "saved" | "sums"))
        .expect("an output");
    let inputs = random_inputs(&spec, n, first_out, &mut rng);
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let want = reference_train(&spec, &refs, n);
    let mut bufs = inputs.clone();
    if names[1] == "weight" {
        bufs[1] = pack_weight(&spec, &inputs[1]);
    }
    bufs.extend(lens[first_out..].iter().map(|&l| vec![f32::NAN; l]));
    let jit = JitKernels::compile(&[spec]).expect("compiles");
    jit.run_bufs(0, &mut bufs, n).expect("buffers fit");
    want.iter()
        .zip(&bufs[first_out..])
        .map(|(w, g)| metric(g, w))
        .fold(0.0, f32::max)
}

const TOL: f32 = 1e-4;

/// An average pool with disjoint `kh x kw` windows, the kind the backward kernels take.
fn avg_pool((kh, kw): (usize, usize)) -> Pool2d {
    Pool2d {
        kind: PoolKind::Avg,
        kernel: [kh, kw],
        stride: [kh, kw],
        padding: [0, 0],
        count_include_pad: true,
    }
}

fn pool() -> impl Strategy<Value = Pool2d> {
    (any::<bool>(), 2usize..4, 1usize..3, 0usize..2).prop_map(|(max, k, s, p)| Pool2d {
        kind: if max { PoolKind::Max } else { PoolKind::Avg },
        kernel: [k, k],
        stride: [s, s],
        padding: [p.min(k / 2), p.min(k / 2)],
        count_include_pad: true,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn train_conv2d_matches_reference(c_in in 1usize..4, hw in 5usize..13, c_out in 1usize..8, k in 1usize..4, s in 1usize..3, p in 0usize..2, bias in any::<bool>(), stats in any::<bool>(), n in 1usize..6, seed in any::<u64>()) {
        let spec = KernelSpec::TrainConv2d { c_in, h: hw, w: hw + 1, c_out, kernel: [k, k], stride: [s, s], padding: [p, p], bias, stats };
        prop_assert!(train_error(spec, n, seed) < TOL);
    }

    #[test]
    fn train_dense_matches_reference(in_f in 1usize..40, out_f in 1usize..20, bias in any::<bool>(), stats in any::<bool>(), n in 1usize..12, seed in any::<u64>()) {
        let spec = KernelSpec::TrainDense { in_f, out_f, bias, stats };
        prop_assert!(train_error(spec, n, seed) < TOL);
    }

    #[test]
    fn bn_act_pool_matches_reference(c in 1usize..4, h in 4usize..12, w in 4usize..12, act in act(), pool in pool(), n in 1usize..5, seed in any::<u64>()) {
        let spec = KernelSpec::BnActPool { c, h, w, act, pool };
        prop_assert!(train_error(spec, n, seed) < TOL);
    }

    #[test]
    fn conv_grad_w_matches_reference(c_in in 1usize..4, h in 3usize..12, w in 3usize..13, c_out in 1usize..5, k in 1usize..4, p in 0usize..2, n in 1usize..40, seed in any::<u64>()) {
        let spec = KernelSpec::ConvGradW { c_in, h, w, c_out, kernel: [k, k], padding: [p, p] };
        prop_assert!(train_error(spec, n, seed) < TOL);
    }

    /// Pool and activation backward with the BatchNorm sums, for planes with column tails,
    /// rows and columns outside every window, and one value per channel.
    #[test]
    fn pool_act_back_matches_reference(c in 1usize..4, h in 1usize..12, w in 1usize..13, act in act(), k in (1usize..5, 1usize..5), pooled in any::<bool>(), bn in any::<bool>(), n in 1usize..5, seed in any::<u64>()) {
        let pool = (pooled && k.0 <= h && k.1 <= w).then_some(avg_pool(k));
        let spec = KernelSpec::PoolActBack { c, h, w, act, pool, bn };
        prop_assert!(train_error(spec, n, seed) < TOL, "{:?}", spec);
    }

    /// The BatchNorm input gradient from a `dy` buffer, per plane and with channels on the
    /// lanes.
    #[test]
    fn bn_back_dx_matches_reference(c in 1usize..40, hw in prop::sample::select(vec![(1, 1), (3, 5), (8, 8)]), n in 1usize..5, seed in any::<u64>()) {
        let spec = KernelSpec::BnBackDx { c, h: hw.0, w: hw.1, back: None };
        prop_assert!(train_error(spec, n, seed) < TOL, "{:?}", spec);
    }

    /// The BatchNorm input gradient recomputing `dy` through the pool and activation, for
    /// planes with column tails, rows and columns outside every window (where `dy` is zero
    /// but `dz` is not), and one value per channel.
    #[test]
    fn bn_back_dx_through_pool_and_activation_matches_reference(c in 1usize..6, h in 1usize..12, w in 1usize..13, act in act(), k in (1usize..5, 1usize..5), pooled in any::<bool>(), n in 1usize..5, seed in any::<u64>()) {
        let pool = (pooled && k.0 <= h && k.1 <= w).then_some(avg_pool(k));
        let spec = KernelSpec::BnBackDx { c, h, w, back: Some((act, pool)) };
        prop_assert!(train_error(spec, n, seed) < TOL, "{:?}", spec);
    }

    #[test]
    fn dense_grad_w_matches_reference(in_f in 1usize..40, out_f in 1usize..20, n in 1usize..12, seed in any::<u64>()) {
        let spec = KernelSpec::DenseGradW { in_f, out_f };
        prop_assert!(train_error(spec, n, seed) < TOL);
    }
}

/// The LeNet-BN training shapes compile and match the reference.
#[test]
fn lenet_training_shapes() {
    let specs = [
        KernelSpec::TrainConv2d {
            c_in: 1,
            h: 28,
            w: 28,
            c_out: 6,
            kernel: [5, 5],
            stride: [1, 1],
            padding: [0, 0],
            bias: true,
            stats: true,
        },
        KernelSpec::ConvGradW {
            c_in: 6,
            h: 12,
            w: 12,
            c_out: 16,
            kernel: [5, 5],
            padding: [0, 0],
        },
        KernelSpec::TrainDense {
            in_f: 256,
            out_f: 120,
            bias: true,
            stats: true,
        },
        KernelSpec::DenseGradW {
            in_f: 256,
            out_f: 120,
        },
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let e = train_error(spec, 5, i as u64);
        assert!(e < TOL, "{spec:?}: {e}");
    }
}

/// The three forms of the conv weight gradient against the reference: tiled over a copy of
/// the input with zero borders (padding, or a column tail, whose taps go on the lanes),
/// tiled reading the input itself (no tail, or a padded input too large for the copy:
/// guarded vectors at the row ends), and untiled, for a layer with more taps than the
/// tiled form's stack arrays hold (which overflowed a worker thread's stack).
#[test]
fn conv_grad_w_forms_match_reference() {
    use super::kernels::conv::PADDED_LOCAL_MAX;
    use super::kernels::train::{GRAD_W_LOCAL_MAX, GRAD_W_TILE};
    // (c_in, h, w, c_out, k, p, images, bordered copy, tiled)
    let cases = [
        (3, 14, 14, 5, 3, 1, 20, true, true),
        (2, 9, 13, 3, 5, 2, 3, true, true),
        (4, 10, 16, 6, 3, 0, 18, true, true),
        (2, 10, 10, 3, 3, 0, 5, false, true),
        (1, 40, 41, 2, 3, 1, 17, false, true),
        (1, 40, 42, 2, 5, 2, 3, false, true),
        (32, 5, 6, 24, 3, 1, 3, false, false),
        (32, 5, 7, 24, 3, 0, 2, false, false),
    ];
    for (c_in, h, w, c_out, k, p, n, copy, tiled) in cases {
        let taps = c_out * c_in * k * k;
        assert_eq!(5 * taps <= GRAD_W_LOCAL_MAX, tiled, "taps {taps}");
        let fits = GRAD_W_TILE * h * (w + 2 * p) + 4 <= PADDED_LOCAL_MAX;
        let tail = (w + 2 * p + 1 - k) % 4 != 0;
        assert_eq!(tiled && (p > 0 || tail) && fits, copy);
        let spec = KernelSpec::ConvGradW {
            c_in,
            h,
            w,
            c_out,
            kernel: [k, k],
            padding: [p, p],
        };
        let e = train_error(spec, n, n as u64);
        assert!(e < TOL, "{spec:?}: {e}");
    }
}

/// Statistics of data with mean 1e4 and standard deviation 1e-2 keep their variance to 1e-3
/// relative (vs a two-pass f64 reference), where a one-pass f32 `E[x²] - E[x]²` loses it.
#[test]
fn batch_stats_survive_a_large_mean() {
    let (c, hw, n) = (3, 144, 16);
    let spec = KernelSpec::TrainConv2d {
        c_in: 1,
        h: hw,
        w: 1,
        c_out: c,
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0, 0],
        bias: true,
        stats: true,
    };
    let mut rng = Lcg(42);
    let x: Vec<f32> = (0..n * hw).map(|_| 0.02 * rng.next()).collect();
    // Identity weights and a bias of 1e4 put the large mean in the kernel's own output.
    let bufs = &mut [
        x,
        vec![1.0, 0.5, 2.0],
        vec![1e4, -1e4, 3e4],
        vec![0.0; n * c * hw],
        vec![0.0; train_stats(c)],
    ];
    let jit = JitKernels::compile(&[spec]).unwrap();
    jit.run_bufs(0, bufs, n).unwrap();
    let (z, s) = (&bufs[3], &bufs[4]);
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| z[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter())
            .map(|&v| f64::from(v))
            .collect();
        let m = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / m;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        let (shift, s1, s2) = (
            f64::from(s[ch]),
            f64::from(s[c + ch]),
            f64::from(s[2 * c + ch]),
        );
        let got_mean = shift + s1 / m;
        let got_var = (s2 - s1 * s1 / m) / m;
        assert!(
            (got_mean - mean).abs() <= 1e-6 * mean.abs(),
            "{got_mean} vs {mean}"
        );
        assert!((got_var - var).abs() <= 1e-3 * var, "{got_var} vs {var}");
        // The naive one-pass f32 formula fails on the same data.
        let (sx, sxx) = vals.iter().fold((0f32, 0f32), |(a, b), &v| {
            (a + v as f32, b + (v as f32) * (v as f32))
        });
        let naive = sxx / m as f32 - (sx / m as f32).powi(2);
        assert!((f64::from(naive) - var).abs() > 0.5 * var);
    }
}

/// The batch statistics of a plane accumulate `Σ(z - shift)²` in four independent registers
/// (one would chain every vector of the plane through the FMA latency), and the shift is
/// broadcast once per plane rather than reloaded for every vector.
#[test]
fn plane_stats_run_four_independent_chains() {
    let spec = KernelSpec::TrainConv2d {
        c_in: 1,
        h: 16,
        w: 16,
        c_out: 2,
        kernel: [5, 5],
        stride: [1, 1],
        padding: [0, 0],
        bias: false,
        stats: true,
    };
    // The statistics loop runs on four lanes at either width; on eight, the convolution's
    // own weight broadcasts would count below.
    let jit = JitKernels::compile_for(&[spec], Width::F32x4, true).expect("compiles");
    let asm = jit.disasm(0).expect("text");
    // `vfmadd231ps %xmmD, %xmmD, %xmmA` squares `D` into the accumulator `A`.
    let squares: std::collections::BTreeSet<&str> = asm
        .lines()
        .filter_map(|l| {
            let ops = l.trim().strip_prefix("vfmadd231ps ")?;
            let ops: Vec<&str> = ops.split(", ").collect();
            (ops.len() == 3 && ops[0] == ops[1]).then_some(ops[2])
        })
        .collect();
    assert_eq!(squares.len(), 4, "accumulators {squares:?}:\n{asm}");
    let reloads = asm
        .lines()
        .filter(|l| l.contains("vbroadcastss %xmm"))
        .count();
    assert!(reloads <= 2, "{reloads} register broadcasts:\n{asm}");
    assert!(train_error(spec, 3, 11) < TOL);
}

/// The constants of the sigmoid (a dozen in its `exp`) are broadcast once before the element
/// loop, which has no loop inside it, instead of once per vector from the constant pool.
#[test]
fn sigmoid_constants_are_hoisted_out_of_the_element_loop() {
    let spec = KernelSpec::BnActPool {
        c: 3,
        h: 8,
        w: 8,
        act: Activation::Sigmoid,
        pool: avg_pool((2, 2)),
    };
    let jit = JitKernels::compile_with_text(&[spec]).expect("compiles");
    let asm = jit.disasm(0).expect("text");
    let mut blocks = asm.split("\nblock");
    let element_loop = blocks
        .find(|b| b.contains("vdivps"))
        .expect("the sigmoid's division");
    assert!(
        !element_loop.contains("(%rip)"),
        "constant-pool loads in the element loop:\n{element_loop}"
    );
    assert!(train_error(spec, 3, 5) < TOL);
}

/// A small plane's pool and activation backward unrolls its rows as well as its columns:
/// for LeNet's conv2 (8 x 8) the pooled-gradient pairs of all 16 vectors of four (8 of
/// eight) are loaded in straight-line code; conv1 (24 x 24) keeps its row loop around one
/// row's 6 vectors (3).
#[test]
fn small_planes_unroll_their_rows() {
    let per = 4 / (Width::host().lanes() / 4);
    for bn in [false, true] {
        for (hw, pair_loads) in [(8, 4 * per), (24, 3 * per / 2)] {
            let spec = KernelSpec::PoolActBack {
                c: 3,
                h: hw,
                w: hw,
                act: Activation::Sigmoid,
                pool: Some(avg_pool((2, 2))),
                bn,
            };
            let jit = JitKernels::compile_with_text(&[spec]).expect("compiles");
            let asm = jit.disasm(0).expect("text");
            assert_eq!(
                asm.matches("vpmovzxdq").count(),
                pair_loads,
                "{spec:?}:\n{asm}"
            );
            assert!(train_error(spec, 3, 11) < TOL, "{spec:?}");
        }
    }
}

/// The per-channel coefficients of the BatchNorm kernels are read-only, so each is loaded
/// (and broadcast) once per plane before the element loop; without the hoisting every
/// vector of the loop reloads them with `vbroadcastss` from memory.
#[test]
fn channel_coefficients_are_loaded_once_per_plane() {
    for spec in [
        KernelSpec::BnBackDx {
            c: 3,
            h: 6,
            w: 8,
            back: None,
        },
        KernelSpec::BnBackDx {
            c: 3,
            h: 6,
            w: 8,
            back: Some((Activation::Sigmoid, Some(avg_pool((2, 2))))),
        },
        KernelSpec::BnActPool {
            c: 3,
            h: 6,
            w: 8,
            act: Activation::Relu,
            pool: avg_pool((2, 2)),
        },
    ] {
        let jit = JitKernels::compile_with_text(&[spec]).expect("compiles");
        let asm = jit.disasm(0).expect("text");
        assert!(asm.contains("vbroadcastss %xmm"), "{spec:?}:\n{asm}");
        // Constants are broadcast from the constant pool (`%rip`); nothing else may be.
        let reloads = asm
            .lines()
            .filter(|l| l.contains("vbroadcastss (") && !l.contains("(%rip)"));
        assert_eq!(reloads.count(), 0, "{spec:?}:\n{asm}");
        assert!(train_error(spec, 3, 7) < TOL, "{spec:?}");
    }
}

/// A kernel that stores to a parameter it declared read-only is malformed: the emitter may
/// have hoisted that parameter's loads out of the loop that writes it.
#[test]
fn store_to_read_only_buffer_is_malformed() {
    let mut b = KernelBuilder::new();
    let i = b.var();
    b.read_only(&[Buf::Param(1)]);
    let body = vec![for_(
        i,
        0usize,
        4usize,
        LoopKind::Serial,
        vec![Stmt::Store {
            buf: Buf::Param(1),
            idx: v(i),
            val: Val::load(Buf::Param(0), v(i)),
        }],
    )];
    let kernel = b.finish("bad".into(), 2, body);
    let spec = KernelSpec::Unary {
        len: 4,
        act: Activation::None,
    };
    let e = JitKernels::build(vec![(spec, kernel)], false).expect_err("rejected");
    assert_eq!(
        e.to_string(),
        "kernel bad: malformed loop ir: a store to a read-only buffer"
    );
}
