//! Tests of the static bounds check ([`bounds`]): every kernel kind, over random shapes,
//! touches only its buffers, writes all of its outputs and none of its inputs; and kernels
//! that step outside a buffer are caught, while guarded reads are not mistaken for such.

use proptest::prelude::*;

use super::bounds::{self, extents};
use super::loop_ir::{Buf, Guard, Idx, KernelBuilder, LoopKind, Stmt, Val, for_, v};
use super::tests::act;
use super::*;

/// Disjoint average windows, the pools `PoolActBack` differentiates.
fn back_pool() -> impl Strategy<Value = Pool2d> {
    (1usize..5, 1usize..5).prop_map(|(kh, kw)| Pool2d {
        kind: PoolKind::Avg,
        kernel: [kh, kw],
        stride: [kh, kw],
        padding: [0, 0],
        count_include_pad: true,
    })
}

/// Windows up to 3 with strides up to 3 and padding up to half the window.
fn pool() -> impl Strategy<Value = Pool2d> {
    (
        any::<bool>(),
        1usize..4,
        1usize..4,
        1usize..4,
        0usize..2,
        any::<bool>(),
    )
        .prop_map(|(max, kh, kw, s, p, inc)| Pool2d {
            kind: if max { PoolKind::Max } else { PoolKind::Avg },
            kernel: [kh, kw],
            stride: [s, 4 - s],
            padding: [p.min(kh / 2), p.min(kw / 2)],
            count_include_pad: inc,
        })
}

fn epilogue(pool_ok: bool) -> impl Strategy<Value = Epilogue> {
    (
        any::<bool>(),
        any::<bool>(),
        act(),
        prop::option::of(pool()),
    )
        .prop_map(move |(bias, scale_shift, act, pool)| Epilogue {
            bias,
            scale_shift,
            act,
            pool: pool.filter(|_| pool_ok),
        })
}

/// A spec of any kind with small shapes; windows fit the input (`h, w >= 6 > 2 * 3`), though
/// not always the output of a strided conv.
fn any_spec() -> impl Strategy<Value = KernelSpec> {
    let hw = (6usize..14, 6usize..14);
    let window = (1usize..4, 1usize..4, 1usize..3, 0usize..2);
    prop_oneof![
        (
            1usize..4,
            1usize..3,
            1usize..6,
            hw.clone(),
            window.clone(),
            epilogue(true)
        )
            .prop_map(
                |(cg, groups, og, (h, w), (kh, kw, s, p), epi)| KernelSpec::Conv2d {
                    c_in: cg * groups,
                    h,
                    w,
                    c_out: og * groups,
                    kernel: [kh, kw],
                    stride: [s, 3 - s],
                    padding: [p, 1 - p],
                    groups,
                    epi,
                }
            ),
        (1usize..40, 1usize..20, epilogue(false))
            .prop_map(|(in_f, out_f, epi)| KernelSpec::Dense { in_f, out_f, epi }),
        (1usize..5, hw.clone(), act(), prop::option::of(pool()))
            .prop_map(|(c, (h, w), act, pool)| KernelSpec::ScaleShift { c, h, w, act, pool }),
        (1usize..5, hw.clone(), pool()).prop_map(|(c, (h, w), pool)| KernelSpec::Pool {
            c,
            h,
            w,
            pool
        }),
        (1usize..50, act()).prop_map(|(len, act)| KernelSpec::Unary { len, act }),
        (1usize..50, act()).prop_map(|(len, act)| KernelSpec::Add { len, act }),
        (1usize..30).prop_map(|classes| KernelSpec::Softmax { classes }),
        (
            1usize..4,
            1usize..6,
            hw.clone(),
            window.clone(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(c_in, c_out, (h, w), (kh, kw, s, p), bias, stats)| {
                KernelSpec::TrainConv2d {
                    c_in,
                    h,
                    w,
                    c_out,
                    kernel: [kh, kw],
                    stride: [s, s],
                    padding: [p, p],
                    bias,
                    stats,
                }
            }),
        (1usize..40, 1usize..20, any::<bool>(), any::<bool>()).prop_map(
            |(in_f, out_f, bias, stats)| KernelSpec::TrainDense {
                in_f,
                out_f,
                bias,
                stats
            }
        ),
        (1usize..5, hw.clone(), act(), pool())
            .prop_map(|(c, (h, w), act, pool)| KernelSpec::BnActPool { c, h, w, act, pool }),
        (1usize..4, 1usize..6, hw.clone(), window).prop_map(
            |(c_in, c_out, (h, w), (kh, kw, _, p))| {
                KernelSpec::ConvGradW {
                    c_in,
                    h,
                    w,
                    c_out,
                    kernel: [kh, kw],
                    padding: [p, p],
                }
            }
        ),
        (1usize..40, 1usize..20).prop_map(|(in_f, out_f)| KernelSpec::DenseGradW { in_f, out_f }),
        (
            1usize..4,
            hw.clone(),
            act(),
            prop::option::of(back_pool()),
            any::<bool>()
        )
            .prop_map(|(c, (h, w), act, pool, bn)| KernelSpec::PoolActBack {
                c,
                h,
                w,
                act,
                pool,
                bn
            }),
        (
            1usize..40,
            any::<bool>(),
            act(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(c, bn, act, dx, back)| if dx {
                KernelSpec::BnBackDx {
                    c,
                    h: 1,
                    w: 1,
                    back: back.then_some((act, None)),
                }
            } else {
                KernelSpec::PoolActBack {
                    c,
                    h: 1,
                    w: 1,
                    act,
                    pool: None,
                    bn,
                }
            }),
        (
            1usize..4,
            hw,
            prop::option::of((act(), prop::option::of(back_pool())))
        )
            .prop_map(|(c, (h, w), back)| KernelSpec::BnBackDx { c, h, w, back }),
    ]
}

/// Whether buffer `name` is one the kernel writes.
fn written(name: &str) -> bool {
    matches!(name, "output" | "saved" | "stats" | "sums")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every kernel stays inside its buffers, writes every element of each buffer it
    /// produces, and never writes a buffer it reads.
    #[test]
    fn every_kernel_stays_inside_its_buffers(
        spec in any_spec(),
        batch in 1usize..4,
        width in prop::sample::select(vec![Width::F32x4, Width::F32x8]),
    ) {
        // A strided conv can leave fewer rows than its pool's window (the case in
        // proptest-regressions); such specs are rejected before lowering, so skip them.
        prop_assume!(validate(0, &spec).is_ok());
        let kernel = kernels::lower(0, &spec, width);
        bounds::check(&spec, &kernel).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let e = extents(&kernel, batch).expect("well-formed loop ir");
        for ((name, len), x) in spec.buffer_names().into_iter().zip(spec.buffer_lens(batch)).zip(&e.params) {
            prop_assert!(x.min.is_none_or(|m| m >= 0), "{name}: {x:?}");
            prop_assert!(x.max.is_none_or(|m| m < len as i64), "{name}: {x:?} of {len}");
            if written(name) {
                prop_assert_eq!(x.max_written, Some(len as i64 - 1), "{} is not fully written", name);
            } else {
                prop_assert_eq!(x.max_written, None, "{} is an input but is written", name);
            }
        }
    }
}

/// The LeNet-BN inference kernels at batch 2: each reads its whole input and weight and
/// writes exactly its output, so the derived extents are the buffer lengths.
#[test]
fn lenet_extents_are_the_buffer_lengths() {
    let epi = Epilogue {
        bias: true,
        scale_shift: true,
        act: Activation::Sigmoid,
        pool: Some(Pool2d {
            kind: PoolKind::Avg,
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            count_include_pad: true,
        }),
    };
    let specs = [
        KernelSpec::Conv2d {
            c_in: 1,
            h: 28,
            w: 28,
            c_out: 6,
            kernel: [5, 5],
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            epi,
        },
        KernelSpec::Dense {
            in_f: 256,
            out_f: 120,
            epi: Epilogue { pool: None, ..epi },
        },
    ];
    bounds::check_specs(&specs).expect("in bounds");
    for (spec, width) in specs
        .iter()
        .flat_map(|&s| [(s, Width::F32x4), (s, Width::F32x8)])
    {
        let e = extents(&kernels::lower(0, &spec, width), 2).unwrap();
        let maxima: Vec<Option<i64>> = e.params.iter().map(|x| x.max).collect();
        let lens: Vec<Option<i64>> = spec
            .buffer_lens(2)
            .iter()
            .map(|&l| Some(l as i64 - 1))
            .collect();
        assert_eq!(maxima, lens, "{spec:?}");
    }
}

/// A one-buffer kernel `for n in 0..images { for i in lo..hi step 4 (vector) { out[n*len + i] = 1 } }`.
fn store_kernel(len: usize, lo: i64, hi: i64, vector: bool) -> loop_ir::Kernel {
    let mut b = KernelBuilder::new();
    let (n, i) = (b.var(), b.var());
    let store = Stmt::Store {
        buf: Buf::Param(1),
        idx: v(n) * len + v(i),
        val: Val::load(Buf::Param(0), v(n) * len + v(i)),
    };
    let inner = Stmt::Loop {
        var: i,
        lo: Idx::Const(lo),
        hi: Idx::Const(hi),
        step: if vector { 4 } else { 1 },
        kind: if vector {
            LoopKind::Vector
        } else {
            LoopKind::Serial
        },
        body: vec![store],
    };
    let body = vec![for_(
        n,
        loop_ir::N_BEGIN,
        loop_ir::N_END,
        LoopKind::Serial,
        vec![inner],
    )];
    b.finish("probe".into(), 2, body)
}

/// An off-by-one loop, a loop starting before the buffer, and a vector loop whose trip
/// count is not a whole number of vectors are each caught, naming the buffer and index.
#[test]
fn out_of_bounds_accesses_are_caught() {
    let spec = KernelSpec::Unary {
        len: 6,
        act: Activation::None,
    };
    bounds::check(&spec, &store_kernel(6, 0, 6, false)).expect("in bounds");
    bounds::check(&spec, &store_kernel(6, 0, 4, true)).expect("in bounds");
    let err = |k| bounds::check(&spec, &k).unwrap_err().to_string();
    assert_eq!(
        err(store_kernel(6, 0, 7, false)),
        "kernel probe: buffer `input` is accessed at element 6 but holds 6 floats for a batch of 1"
    );
    assert_eq!(
        err(store_kernel(6, -1, 6, false)),
        "kernel probe: buffer `input` is accessed at element -1 but holds 6 floats for a batch of 1"
    );
    // Lanes 4..8 of the second trip: elements 6 and 7 do not exist.
    assert_eq!(
        err(store_kernel(6, 0, 6, true)),
        "kernel probe: buffer `input` is accessed at element 7 but holds 6 floats for a batch of 1"
    );
    // The image stride is wrong (7 for rows of 6): only the second image shows it.
    assert_eq!(
        err(store_kernel(7, 0, 6, false)),
        "kernel probe: buffer `input` is accessed at element 12 but holds 12 floats for a batch of 2"
    );
    // The compiler refuses such a kernel in debug builds.
    if cfg!(debug_assertions) {
        let e = JitKernels::build(vec![(spec, store_kernel(6, 0, 7, false))], false).unwrap_err();
        assert!(
            matches!(e, CodegenError::OutOfBounds { index: 6, .. }),
            "{e}"
        );
    }
}

/// A load whose guard fails reads element 0 (and discards it), so an index outside the
/// buffer under a failing guard is no violation; the same load without the guard is.
#[test]
fn guarded_loads_only_count_where_the_guard_holds() {
    let mut b = KernelBuilder::new();
    let (n, i) = (b.var(), b.var());
    let load = |guards| Val::Load {
        buf: Buf::Param(0),
        idx: v(n) * 4usize + v(i) - 1i64,
        guards,
    };
    let guarded = load(vec![Guard {
        coord: v(i) - 1i64,
        lo: 0,
        hi: 4,
    }]);
    let kernel = |val| {
        let store = Stmt::Store {
            buf: Buf::Param(1),
            idx: v(n) * 4usize + v(i),
            val,
        };
        let inner = Stmt::Loop {
            var: i,
            lo: Idx::Const(0),
            hi: Idx::Const(4),
            step: 4,
            kind: LoopKind::Vector,
            body: vec![store],
        };
        KernelBuilder::new().finish(
            "shift".into(),
            2,
            vec![for_(
                n,
                loop_ir::N_BEGIN,
                loop_ir::N_END,
                LoopKind::Serial,
                vec![inner],
            )],
        )
    };
    let spec = KernelSpec::Unary {
        len: 4,
        act: Activation::None,
    };
    bounds::check(&spec, &kernel(guarded)).expect("guarded");
    let e = extents(&kernel(load(vec![])), 1).unwrap();
    assert_eq!(e.params[0].min, Some(-1));
    assert!(bounds::check(&spec, &kernel(load(vec![]))).is_err());
}

/// A negative dividend or an unbound variable is malformed loop IR, not a silent pass.
#[test]
fn malformed_index_arithmetic_is_reported() {
    let mut b = KernelBuilder::new();
    let (i, unbound) = (b.var(), b.var());
    let store = |idx| Stmt::Store {
        buf: Buf::Param(1),
        idx,
        val: Val::Const(0.0),
    };
    let spec = KernelSpec::Unary {
        len: 4,
        act: Activation::None,
    };
    let k = |idx| {
        KernelBuilder::new().finish(
            "bad".into(),
            2,
            vec![for_(i, 0usize, 4usize, LoopKind::Serial, vec![store(idx)])],
        )
    };
    let e = bounds::check(&spec, &k((v(i) - 2i64).floor_div(2))).unwrap_err();
    assert!(matches!(e, CodegenError::MalformedLoopIr { .. }), "{e}");
    let e = bounds::check(&spec, &k(v(unbound))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel bad: malformed loop ir: use of an unbound index variable"
    );
}

/// How long the bounds check of the LeNet-BN inference kernels takes next to compiling
/// them, on this build; run with `-- --ignored --nocapture` (in a debug build, where
/// `JitKernels` runs the check on every compile, this is its cost).
#[test]
#[ignore = "timing, not a test"]
fn bounds_check_cost() {
    let specs = super::tests::lenet();
    let start = std::time::Instant::now();
    bounds::check_specs(&specs).unwrap();
    let check = start.elapsed();
    let start = std::time::Instant::now();
    JitKernels::compile(&specs).unwrap();
    let compile = start.elapsed();
    println!("bounds check {check:?}, compile (check included in debug builds) {compile:?}");
}
