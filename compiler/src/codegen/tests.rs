//! Differential tests of every JIT kernel against [`reference`], property-based over shapes
//! and exhaustive over epilogues, plus the `exp` polynomial's accuracy, concurrent calls, the
//! LeNet shapes, and an ignored GFLOP/s benchmark.
//!
//! The error metric throughout is `max_i |jit_i - ref_i| / max(1, |ref_i|)`: relative for large
//! values and absolute near zero, where a relative error of float sums is meaningless.

use proptest::prelude::*;

use super::loop_ir::{Buf, KernelBuilder, LoopKind, Stmt, Val, for_, split_lanes, v};
use super::*;

/// A deterministic generator so that failures reproduce from the proptest seed alone.
pub(super) struct Lcg(pub(super) u64);

impl Lcg {
    pub(super) fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

pub(super) fn metric(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// Random contents for the first `count` buffers of `spec` at batch `n`. Scales near 1 keep
/// the interesting range of the activations in play.
pub(super) fn random_inputs(
    spec: &KernelSpec,
    n: usize,
    count: usize,
    rng: &mut Lcg,
) -> Vec<Vec<f32>> {
    let (lens, names) = (spec.buffer_lens(n), spec.buffer_names());
    lens[..count]
        .iter()
        .zip(&names)
        .map(|(&len, &name)| {
            (0..len)
                .map(|_| {
                    if name == "scale" {
                        1.0 + 0.5 * rng.next()
                    } else {
                        rng.next()
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs `spec` on `n` random images through the JIT and the reference; returns the error.
fn jit_error(spec: KernelSpec, n: usize, seed: u64) -> f32 {
    let mut rng = Lcg(seed);
    let lens = spec.buffer_lens(n);
    let names = spec.buffer_names();
    let inputs = random_inputs(&spec, n, lens.len() - 1, &mut rng);
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let mut want = vec![0.0; lens[lens.len() - 1]];
    reference(&spec, &refs, &mut want, n);
    let mut packed = inputs.clone();
    if names.get(1) == Some(&"weight") {
        packed[1] = pack_weight(&spec, &inputs[1]);
    }
    let packed_refs: Vec<&[f32]> = packed.iter().map(Vec::as_slice).collect();
    let jit = JitKernels::compile(&[spec]).expect("compiles");
    let mut got = vec![f32::NAN; want.len()];
    jit.run(0, &packed_refs, &mut got, n).expect("buffers fit");
    metric(&got, &want)
}

const TOL: f32 = 1e-4;
const ACTS: [Activation; 4] = [
    Activation::None,
    Activation::Relu,
    Activation::Sigmoid,
    Activation::Tanh,
];

/// Any of the four activations.
pub(super) fn act() -> impl Strategy<Value = Activation> {
    prop::sample::select(ACTS.to_vec())
}

/// Pools 2/2 and 3/2 of both kinds, with padding up to half the window.
fn pool() -> impl Strategy<Value = Option<Pool2d>> {
    prop_oneof![
        Just(None),
        (
            prop::bool::ANY,
            prop::sample::select(vec![2usize, 3]),
            0usize..2,
            prop::bool::ANY
        )
            .prop_map(|(max, k, p, inc)| {
                Some(Pool2d {
                    kind: if max { PoolKind::Max } else { PoolKind::Avg },
                    kernel: [k, k],
                    stride: [2, 2],
                    padding: [p.min(k / 2), p.min(k / 2)],
                    count_include_pad: inc,
                })
            }),
    ]
}

fn epilogue(allow_pool: bool) -> impl Strategy<Value = Epilogue> {
    (prop::bool::ANY, prop::bool::ANY, act(), pool()).prop_map(
        move |(bias, scale_shift, act, pool)| Epilogue {
            bias,
            scale_shift,
            act,
            pool: pool.filter(|_| allow_pool),
        },
    )
}

fn conv_spec() -> impl Strategy<Value = KernelSpec> {
    (
        1usize..5,
        1usize..4,
        1usize..7,
        1usize..14,
        1usize..14,
        1usize..6,
        1usize..6,
        1usize..4,
        0usize..3,
        epilogue(true),
    )
        .prop_map(
            |(cg, groups, og, h, w, kh, kw, s, p, epi)| KernelSpec::Conv2d {
                c_in: cg * groups,
                h: h + kh,
                w: w + kw,
                c_out: og * groups,
                kernel: [kh, kw],
                stride: [s, (s % 3) + 1],
                padding: [p, (p + 1) % 3],
                groups,
                epi,
            },
        )
}

fn spatial() -> impl Strategy<Value = (usize, usize, usize)> {
    (1usize..20, 3usize..16, 3usize..16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Convolutions of every shape class (groups, strides, padding, pools) match the reference.
    #[test]
    fn conv2d_matches_reference(spec in conv_spec(), n in 1usize..33, seed in any::<u64>()) {
        prop_assume!(validate(0, &spec).is_ok());
        let err = jit_error(spec, n, seed);
        prop_assert!(err <= TOL, "{spec:?}: error {err}");
    }

    /// Dense layers with any epilogue match the reference, including feature/batch tails.
    #[test]
    fn dense_matches_reference(in_f in 1usize..70, out_f in 1usize..40, epi in epilogue(false), n in 1usize..33, seed in any::<u64>()) {
        let err = jit_error(KernelSpec::Dense { in_f, out_f, epi }, n, seed);
        prop_assert!(err <= TOL, "error {err}");
    }

    /// Per-channel scale/shift with activation and optional pool matches the reference.
    #[test]
    fn scale_shift_matches_reference((c, h, w) in spatial(), act in act(), pool in pool(), n in 1usize..33, seed in any::<u64>()) {
        let spec = KernelSpec::ScaleShift { c, h, w, act, pool };
        prop_assume!(validate(0, &spec).is_ok());
        let err = jit_error(spec, n, seed);
        prop_assert!(err <= TOL, "{spec:?}: error {err}");
    }

    /// A scale/shift over one value per channel (a dense BatchNorm: channels on the lanes)
    /// matches the reference, including channel tails.
    #[test]
    fn feature_scale_shift_matches_reference(c in 1usize..140, act in act(), n in 1usize..9, seed in any::<u64>()) {
        let spec = KernelSpec::ScaleShift { c, h: 1, w: 1, act, pool: None };
        let err = jit_error(spec, n, seed);
        prop_assert!(err <= TOL, "{spec:?}: error {err}");
    }

    /// Standalone pooling matches the reference.
    #[test]
    fn pool_matches_reference((c, h, w) in spatial(), pool in pool(), n in 1usize..33, seed in any::<u64>()) {
        let Some(pool) = pool else { return Ok(()) };
        let spec = KernelSpec::Pool { c, h, w, pool };
        prop_assume!(validate(0, &spec).is_ok());
        let err = jit_error(spec, n, seed);
        prop_assert!(err <= TOL, "{spec:?}: error {err}");
    }

    /// Elementwise kernels and softmax match the reference for any length.
    #[test]
    fn elementwise_matches_reference(len in 1usize..100, act in act(), n in 1usize..33, seed in any::<u64>()) {
        for spec in [KernelSpec::Unary { len, act }, KernelSpec::Add { len, act }, KernelSpec::Softmax { classes: len }] {
            let err = jit_error(spec, n, seed);
            prop_assert!(err <= TOL, "{spec:?}: error {err}");
        }
    }
}

/// A conv with column padding reads a stack copy of each image with zero side borders when
/// it fits in 16K floats and bounds-checks every tap otherwise; both paths, with widths that
/// leave a vector tail (recomputed by an overlapping vector), strides, and row-only padding.
#[test]
fn padded_conv_copy_and_guarded_paths() {
    // (c_in, h, w, stride, padding): the first two fit the copy, the next two do not
    // (20 * 30 * 33 floats after padding), the last pads rows only.
    for (c_in, h, w, stride, padding) in [
        (3, 12, 13, 1, [1, 1]),
        (3, 29, 30, 2, [2, 2]),
        (20, 30, 31, 1, [1, 1]),
        (20, 29, 30, 2, [2, 2]),
        (4, 9, 11, 1, [2, 0]),
    ] {
        let spec = KernelSpec::Conv2d {
            c_in,
            h,
            w,
            c_out: 7,
            kernel: [3, 3],
            stride: [stride; 2],
            padding,
            groups: 1,
            epi: Epilogue {
                bias: true,
                act: Activation::Sigmoid,
                ..Epilogue::NONE
            },
        };
        let err = jit_error(spec, 3, 7);
        assert!(err <= TOL, "{spec:?}: relative error {err}");
    }
}

/// Unpadded kernel and window rows unroll up to `UNROLL_ROWS` and loop beyond; weights are
/// read pre-broadcast from a stack table when it fits, else broadcast per use. Each case
/// takes the other path of one of the two: a 9-row kernel, a 9-row average window (and a
/// 2x2 one, summed as pairs), and 4,800 weights (19,200 floats splatted).
#[test]
fn tall_windows_and_large_weight_tables() {
    let avg = |k: usize, s: usize| Pool2d {
        kind: PoolKind::Avg,
        kernel: [k, k],
        stride: [s, s],
        padding: [0, 0],
        count_include_pad: false,
    };
    // (c_in, h, w, c_out, kernel, pool)
    for (c_in, h, w, c_out, k, pool) in [
        (2, 17, 19, 3, 9, Some(avg(2, 2))),
        (1, 20, 21, 2, 3, Some(avg(9, 2))),
        (24, 9, 10, 8, 5, None),
    ] {
        let spec = KernelSpec::Conv2d {
            c_in,
            h,
            w,
            c_out,
            kernel: [k, k],
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            epi: Epilogue {
                bias: true,
                act: Activation::Sigmoid,
                pool,
                ..Epilogue::NONE
            },
        };
        let err = jit_error(spec, 3, 11);
        assert!(err <= TOL, "{spec:?}: relative error {err}");
    }
}

/// Every epilogue combination (bias x scale/shift x activation x pool) on a padded conv, and
/// every pool-free one on a dense layer.
#[test]
fn every_epilogue_combination() {
    let pools = [
        None,
        Some(Pool2d {
            kind: PoolKind::Avg,
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            count_include_pad: true,
        }),
        Some(Pool2d {
            kind: PoolKind::Max,
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            count_include_pad: false,
        }),
        Some(Pool2d {
            kind: PoolKind::Avg,
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            count_include_pad: false,
        }),
    ];
    for bias in [false, true] {
        for scale_shift in [false, true] {
            for act in ACTS {
                for pool in pools {
                    let epi = Epilogue {
                        bias,
                        scale_shift,
                        act,
                        pool,
                    };
                    let conv = KernelSpec::Conv2d {
                        c_in: 3,
                        h: 11,
                        w: 13,
                        c_out: 7,
                        kernel: [3, 3],
                        stride: [1, 1],
                        padding: [1, 1],
                        groups: 1,
                        epi,
                    };
                    let err = jit_error(conv, 3, 7);
                    assert!(err <= TOL, "{conv:?}: error {err}");
                }
                let epi = Epilogue {
                    bias,
                    scale_shift,
                    act,
                    pool: None,
                };
                let err = jit_error(
                    KernelSpec::Dense {
                        in_f: 19,
                        out_f: 23,
                        epi,
                    },
                    6,
                    11,
                );
                assert!(err <= TOL, "dense {epi:?}: error {err}");
            }
        }
    }
}

const SIGMOID_AVG2: Epilogue = Epilogue {
    bias: true,
    scale_shift: false,
    act: Activation::Sigmoid,
    pool: Some(Pool2d {
        kind: PoolKind::Avg,
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
        count_include_pad: true,
    }),
};

pub(super) fn lenet() -> [KernelSpec; 5] {
    let dense = |in_f, out_f, act| KernelSpec::Dense {
        in_f,
        out_f,
        epi: Epilogue {
            bias: true,
            act,
            ..Epilogue::NONE
        },
    };
    [
        KernelSpec::Conv2d {
            c_in: 1,
            h: 28,
            w: 28,
            c_out: 6,
            kernel: [5, 5],
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            epi: SIGMOID_AVG2,
        },
        KernelSpec::Conv2d {
            c_in: 6,
            h: 12,
            w: 12,
            c_out: 16,
            kernel: [5, 5],
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            epi: SIGMOID_AVG2,
        },
        dense(256, 120, Activation::Sigmoid),
        dense(120, 84, Activation::Sigmoid),
        dense(84, 10, Activation::None),
    ]
}

/// LeNet's kernels: conv1 1->6 k5 on 28x28 and conv2 6->16 k5 on 12x12, both with
/// sigmoid + avg-pool 2, then dense 256->120->84->10; also d2l's padded conv1 variant.
#[test]
fn lenet_shapes() {
    let specs = lenet();
    assert_eq!(specs[0].out_chw(), [6, 12, 12]);
    assert_eq!(specs[1].out_chw(), [16, 4, 4]);
    for spec in specs {
        let err = jit_error(spec, 9, 3);
        assert!(err <= TOL, "{spec:?}: error {err}");
    }
    let KernelSpec::Conv2d { epi, .. } = specs[0] else {
        unreachable!()
    };
    let padded = KernelSpec::Conv2d {
        c_in: 1,
        h: 28,
        w: 28,
        c_out: 6,
        kernel: [5, 5],
        stride: [1, 1],
        padding: [2, 2],
        groups: 1,
        epi,
    };
    assert!(jit_error(padded, 5, 4) <= TOL);
}

/// Two threads calling one kernel on disjoint halves of a batch give the one-call result.
#[test]
fn concurrent_calls_on_disjoint_ranges() {
    fn shareable<T: Copy + Send + Sync>() {}
    fn movable<T: Send>() {}
    shareable::<KernelFn>();
    movable::<JitKernels>();
    let spec = lenet()[0];
    let n = 20;
    let lens = spec.buffer_lens(n);
    let mut rng = Lcg(5);
    let inputs: Vec<Vec<f32>> = lens[..lens.len() - 1]
        .iter()
        .map(|&l| (0..l).map(|_| rng.next()).collect())
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let jit = JitKernels::compile(&[spec]).unwrap();
    let mut once = vec![0.0; lens[lens.len() - 1]];
    jit.run(0, &refs, &mut once, n).unwrap();
    let mut split_out = vec![0.0f32; once.len()];
    let kernel = jit.kernel(0);
    let mut ptrs: Vec<usize> = inputs.iter().map(|b| b.as_ptr() as usize).collect();
    ptrs.push(split_out.as_mut_ptr() as usize);
    std::thread::scope(|s| {
        for (lo, hi) in [(0, 11), (11, n)] {
            let ptrs = ptrs.clone();
            s.spawn(move || {
                let bufs: Vec<*mut f32> = ptrs.iter().map(|&p| p as *mut f32).collect();
                // SAFETY: `jit` outlives the scope, every buffer holds the full batch, inputs
                // are only read, and the two threads write disjoint image ranges.
                unsafe { kernel.call(&bufs, lo, hi) };
            });
        }
    });
    assert_eq!(once, split_out);
}

/// Compiles `out = f(x)` over `len` floats as a bare loop-IR kernel.
fn elementwise_ir(len: usize, f: impl Fn(Val) -> Val) -> JitKernels {
    elementwise_lanes(len, 4, f)
}

/// [`elementwise_ir`] on vectors of `lanes` (4 or 8), then scalars.
pub(super) fn elementwise_lanes(len: usize, lanes: usize, f: impl Fn(Val) -> Val) -> JitKernels {
    let mut b = KernelBuilder::new();
    let body = split_lanes(
        &mut b,
        0usize.into(),
        len.into(),
        &[lanes, 1],
        lanes,
        |_, i, _| {
            vec![Stmt::Store {
                buf: Buf::Param(1),
                idx: v(i),
                val: f(Val::load(Buf::Param(0), v(i))),
            }]
        },
    );
    let n = b.var();
    let kernel = b.finish(
        "elementwise".into(),
        2,
        vec![for_(n, 0usize, 1usize, LoopKind::Serial, body)],
    );
    JitKernels::build(
        vec![(
            KernelSpec::Unary {
                len,
                act: Activation::None,
            },
            kernel,
        )],
        false,
    )
    .unwrap()
}

fn wide_range() -> Vec<f32> {
    let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.06).collect();
    xs.extend([
        -1e30,
        -1e4,
        -88.8,
        -88.0,
        -87.3,
        87.9,
        88.0,
        88.5,
        89.0,
        1e4,
        1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
    ]);
    xs
}

/// `exp` and `exp_neg` have relative error below 1e-6 wherever the result is a normal
/// float, saturate (never inf/NaN) beyond, and the vector body and the scalar tail agree.
#[test]
fn exp_polynomial_accuracy() {
    let xs = wide_range();
    let jit = elementwise_ir(xs.len(), Val::exp);
    let mut out = vec![0.0; xs.len()];
    jit.run(0, &[&xs], &mut out, 1).unwrap();
    check_exp(&xs, &out);
    // exp(-x) at -x: the same values, through the sign-folded scheme.
    let neg: Vec<f32> = xs.iter().map(|x| -x).collect();
    let jit = elementwise_ir(xs.len(), Val::exp_neg);
    jit.run(0, &[&neg], &mut out, 1).unwrap();
    check_exp(&xs, &out);
}

fn check_exp(xs: &[f32], out: &[f32]) {
    for (&x, &y) in xs.iter().zip(out) {
        assert!(y.is_finite() && y >= 0.0, "exp({x}) = {y}");
        if (-87.0..=88.0).contains(&x) {
            let want = f64::from(x).exp();
            let rel = ((f64::from(y) - want) / want).abs();
            assert!(rel < 1e-6, "exp({x}) = {y}, want {want}, rel {rel}");
        } else if x < -87.3 {
            assert!(y < 1.3e-38, "exp({x}) = {y}");
        } else if x > 88.0 {
            assert!(y > 1.6e38, "exp({x}) = {y}");
        }
    }
}

/// Sigmoid and tanh stay within 2e-6 of the truth everywhere, with no NaN for huge inputs.
/// A NaN stays a NaN through every activation, in vector lanes and in the scalar tail, and
/// infinities saturate: the numerics guard relies on a NaN reaching the next buffer.
#[test]
fn activations_propagate_nan() {
    let xs = [
        f32::NAN,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -2.0,
        f32::NAN,
    ];
    for a in ACTS {
        let spec = KernelSpec::Unary {
            len: xs.len(),
            act: a,
        };
        let jit = JitKernels::compile(&[spec]).unwrap();
        let mut out = vec![0.0; xs.len()];
        jit.run(0, &[&xs], &mut out, 1).unwrap();
        assert!(out[0].is_nan() && out[5].is_nan(), "{a:?}: {out:?}");
        assert!(out[1..5].iter().all(|y| !y.is_nan()), "{a:?}: {out:?}");
    }
}

#[test]
fn sigmoid_and_tanh_accuracy() {
    let xs = wide_range();
    for a in [Activation::Sigmoid, Activation::Tanh] {
        let spec = KernelSpec::Unary {
            len: xs.len(),
            act: a,
        };
        let jit = JitKernels::compile(&[spec]).unwrap();
        let mut out = vec![0.0; xs.len()];
        jit.run(0, &[&xs], &mut out, 1).unwrap();
        for (&x, &y) in xs.iter().zip(&out) {
            let x = f64::from(x);
            let want = if a == Activation::Sigmoid {
                1.0 / (1.0 + (-x).exp())
            } else {
                x.tanh()
            };
            assert!(
                (f64::from(y) - want).abs() < 2e-6,
                "{a:?}({x}) = {y}, want {want}"
            );
        }
    }
}

/// Bad specs are rejected with a precise error instead of miscompiling.
#[test]
fn invalid_specs_are_rejected() {
    let conv = lenet()[0];
    let KernelSpec::Conv2d { epi, .. } = conv else {
        unreachable!()
    };
    let bad_groups = KernelSpec::Conv2d {
        c_in: 1,
        c_out: 6,
        h: 28,
        w: 28,
        kernel: [5, 5],
        stride: [1, 1],
        padding: [2, 2],
        groups: 4,
        epi,
    };
    assert!(matches!(
        JitKernels::compile(&[bad_groups]),
        Err(CodegenError::Groups { groups: 4, .. })
    ));
    let pooled_dense = KernelSpec::Dense {
        in_f: 3,
        out_f: 3,
        epi,
    };
    assert!(matches!(
        JitKernels::compile(&[conv, pooled_dense]),
        Err(CodegenError::PoolOnDense { index: 1 })
    ));
    let jit = JitKernels::compile(&[conv]).unwrap();
    let mut out = vec![0.0; 10];
    assert!(matches!(
        jit.run(0, &[&[0.0]], &mut out, 1),
        Err(CodegenError::BufferCount { .. })
    ));
    // Code text only on request (printing it costs a quarter of the compile time).
    assert!(jit.clif(0).is_none() && jit.disasm(0).is_none());
    let jit = JitKernels::compile_with_text(&[conv]).unwrap();
    assert!(jit.clif(0).is_some_and(|c| c.contains("fma")));
    // The vendored Cranelift accumulates in place (see vendor/README.md).
    assert!(jit.disasm(0).is_some_and(|d| d.contains("vfmadd231ps")));
}

/// The best of five timings of `f`, in seconds per call; the best is the least disturbed by
/// other processes competing for the two cores.
fn best_of(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let (t, mut calls) = (std::time::Instant::now(), 0);
            while t.elapsed().as_secs_f64() < 0.1 {
                f();
                calls += 1;
            }
            t.elapsed().as_secs_f64() / f64::from(calls)
        })
        .fold(f64::INFINITY, f64::min)
}

/// GFLOP/s of a loop-IR kernel that only runs 12 independent F32X4 FMA chains: the ceiling
/// the emitter can reach on this machine, to put the kernels in scale.
fn fma_ceiling() -> f64 {
    let trips = 100_000usize;
    let mut b = KernelBuilder::new();
    let (lane, i, u) = (b.var(), b.var(), b.var());
    let acc = || super::loop_ir::reg(0, v(u));
    // The constants live in registers: re-broadcasting them would make the loop load-bound.
    let (k1, k2) = (
        super::loop_ir::reg(1, 0usize),
        super::loop_ir::reg(2, 0usize),
    );
    let fma = Val::fma(Val::Get(acc()), Val::Get(k1.clone()), Val::Get(k2.clone()));
    let unroll = |body| for_(u, 0usize, 12usize, LoopKind::Unroll, body);
    let body = vec![
        Stmt::Set {
            reg: k1,
            val: Val::Const(0.999),
        },
        Stmt::Set {
            reg: k2,
            val: Val::Const(1e-3),
        },
        unroll(vec![Stmt::Set {
            reg: acc(),
            val: Val::load(Buf::Param(0), v(lane)),
        }]),
        for_(
            i,
            0usize,
            trips,
            LoopKind::Serial,
            vec![unroll(vec![Stmt::Set {
                reg: acc(),
                val: fma,
            }])],
        ),
        unroll(vec![Stmt::Store {
            buf: Buf::Param(1),
            idx: v(lane),
            val: Val::Get(acc()),
        }]),
    ];
    let vector = Stmt::Loop {
        var: lane,
        lo: 0usize.into(),
        hi: 4usize.into(),
        step: 4,
        kind: LoopKind::Vector,
        body,
    };
    let kernel = b.finish("fma_ceiling".into(), 2, vec![vector]);
    let jit = JitKernels::build(
        vec![(
            KernelSpec::Unary {
                len: 4,
                act: Activation::None,
            },
            kernel,
        )],
        false,
    )
    .unwrap();
    let (x, mut y) = ([1.0f32; 4], [0.0f32; 4]);
    let secs = best_of(|| jit.run(0, &[&x], &mut y, 1).unwrap());
    (trips * 12 * 8) as f64 / secs / 1e9
}

/// Single-thread GFLOP/s of the LeNet kernels at batch 256 (best of five); run with
/// `cargo test -p bnc-compiler --release codegen::tests::bench_lenet -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_lenet() {
    println!("F32X4 FMA ceiling: {:.1} GFLOP/s", fma_ceiling());
    let n = 256;
    for spec in lenet() {
        let lens = spec.buffer_lens(n);
        let mut rng = Lcg(1);
        let inputs: Vec<Vec<f32>> = lens[..lens.len() - 1]
            .iter()
            .map(|&l| (0..l).map(|_| rng.next()).collect())
            .collect();
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let jit = JitKernels::compile(&[spec]).unwrap();
        let mut out = vec![0.0; lens[lens.len() - 1]];
        let secs = best_of(|| jit.run(0, &refs, &mut out, n).unwrap());
        let gflop = flops(&spec) as f64 * n as f64 / 1e9;
        println!(
            "{spec:?}\n    {:.3} ms/batch, {:.1} GFLOP/s",
            secs * 1e3,
            gflop / secs
        );
    }
}
