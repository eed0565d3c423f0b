//! The `F32X8` kernels against the `F32X4` ones. A vector lane computes one output element
//! with the same operations in the same order at either width, so the two must agree bit
//! for bit on every buffer they write; the other tests check the host's width (`F32X8`
//! where the CPU has AVX2) against the reference. Also: the emitter refuses per-lane code
//! in a `Wide` loop instead of miscompiling it.

use super::loop_ir::{Buf, Guard, KernelBuilder, LoopKind, Stmt, Val, for_, v};
use super::tests::{Lcg, elementwise_lanes, random_inputs};
use super::*;

/// Whether this host runs `F32X8` kernels; prints why a test is skipped if not.
fn wide_host() -> bool {
    let ok = Width::host() == Width::F32x8;
    if !ok {
        eprintln!("skipped: the host has no AVX2 and FMA (or BNC_VECTOR_WIDTH=4)");
    }
    ok
}

/// Every buffer of `spec` after one call on `n` random images, compiled for `width`.
fn run(spec: KernelSpec, width: Width, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let lens = spec.buffer_lens(n);
    let names = spec.buffer_names();
    let outputs = ["output", "stats", "saved", "sums"];
    let inputs = names.iter().filter(|n| !outputs.contains(n)).count();
    let mut bufs = random_inputs(&spec, n, inputs, &mut Lcg(seed));
    if names.get(1) == Some(&"weight") {
        bufs[1] = pack_weight(&spec, &bufs[1]);
    }
    bufs.extend(lens[inputs..].iter().map(|&len| vec![f32::NAN; len]));
    let jit = JitKernels::compile_for(&[spec], width, false).expect("compiles");
    jit.run_bufs(0, &mut bufs, n).expect("buffers fit");
    bufs
}

fn assert_same_bits(spec: KernelSpec, n: usize) {
    let narrow = run(spec, Width::F32x4, n, 7);
    let wide = run(spec, Width::F32x8, n, 7);
    for (i, (a, b)) in narrow.iter().zip(&wide).enumerate() {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{spec:?}: buffer {i} differs between F32X4 and F32X8");
    }
}

const AVG2: Pool2d = Pool2d {
    kind: PoolKind::Avg,
    kernel: [2, 2],
    stride: [2, 2],
    padding: [0, 0],
    count_include_pad: true,
};

const SIGMOID_AVG: Epilogue = Epilogue {
    bias: true,
    scale_shift: false,
    act: Activation::Sigmoid,
    pool: Some(AVG2),
};

fn conv(
    c_in: usize,
    hw: [usize; 2],
    c_out: usize,
    k: usize,
    pad: usize,
    epi: Epilogue,
) -> KernelSpec {
    KernelSpec::Conv2d {
        c_in,
        h: hw[0],
        w: hw[1],
        c_out,
        kernel: [k, k],
        stride: [1, 1],
        padding: [pad, pad],
        groups: 1,
        epi,
    }
}

/// `spec` (a `Conv2d`) with stride 2 and `groups` groups.
fn strided(spec: KernelSpec, groups: usize) -> KernelSpec {
    let KernelSpec::Conv2d {
        c_in,
        h,
        w,
        c_out,
        kernel,
        padding,
        epi,
        ..
    } = spec
    else {
        unreachable!("a Conv2d")
    };
    KernelSpec::Conv2d {
        c_in,
        h,
        w,
        c_out,
        kernel,
        stride: [2, 2],
        padding,
        groups,
        epi,
    }
}

/// A training convolution's forward, stride 1.
fn train_conv(
    c_in: usize,
    hw: [usize; 2],
    c_out: usize,
    k: usize,
    pad: usize,
    bias: bool,
    stats: bool,
) -> KernelSpec {
    KernelSpec::TrainConv2d {
        c_in,
        h: hw[0],
        w: hw[1],
        c_out,
        kernel: [k, k],
        stride: [1, 1],
        padding: [pad, pad],
        bias,
        stats,
    }
}

/// LeNet's convolutions and dense layers, rows and feature counts that leave tails (an
/// overlapping last vector, a four-lane rest, scalars), padding with and without the
/// bordered copy, every epilogue part, and the training forwards with their statistics.
#[test]
fn wide_kernels_match_narrow_bit_for_bit() {
    if !wide_host() {
        return;
    }
    let relu = Epilogue {
        act: Activation::Relu,
        ..Epilogue::NONE
    };
    let tanh_ss = Epilogue {
        scale_shift: true,
        act: Activation::Tanh,
        ..Epilogue::NONE
    };
    let specs = [
        conv(1, [28, 28], 6, 5, 0, SIGMOID_AVG),
        conv(6, [12, 12], 16, 5, 0, SIGMOID_AVG),
        conv(3, [14, 14], 7, 3, 0, relu),
        conv(2, [13, 19], 5, 3, 1, tanh_ss),
        conv(4, [9, 9], 9, 3, 1, SIGMOID_AVG),
        // Too large for the bordered copy: guarded taps, which stay on four lanes.
        conv(4, [70, 70], 3, 3, 1, relu),
        conv(3, [6, 6], 2, 3, 0, Epilogue::NONE),
        strided(conv(4, [11, 11], 6, 3, 0, relu), 2),
        // A column stride: gathers, so the rows stay on four lanes.
        strided(conv(2, [41, 41], 3, 3, 0, tanh_ss), 1),
        KernelSpec::Dense {
            in_f: 256,
            out_f: 120,
            epi: Epilogue {
                bias: true,
                act: Activation::Sigmoid,
                ..Epilogue::NONE
            },
        },
        KernelSpec::Dense {
            in_f: 120,
            out_f: 84,
            epi: tanh_ss,
        },
        KernelSpec::Dense {
            in_f: 84,
            out_f: 10,
            epi: Epilogue {
                bias: true,
                ..Epilogue::NONE
            },
        },
        KernelSpec::Dense {
            in_f: 7,
            out_f: 29,
            epi: relu,
        },
        train_conv(1, [28, 28], 6, 5, 0, false, true),
        // Statistics on eight lanes (8 x 8 and 24 x 24 planes) and on four (6 x 6).
        train_conv(6, [12, 12], 16, 5, 0, false, true),
        train_conv(2, [10, 10], 3, 5, 0, false, true),
        train_conv(3, [10, 10], 4, 3, 1, true, false),
        KernelSpec::TrainDense {
            in_f: 256,
            out_f: 120,
            bias: false,
            stats: true,
        },
        KernelSpec::TrainDense {
            in_f: 30,
            out_f: 13,
            bias: true,
            stats: false,
        },
        // The BatchNorm apply and `dx` passes: pair sums and pair duplication on eight
        // lanes, a four-lane rest (12 pooled columns), and the forms that stay on four.
        KernelSpec::BnActPool {
            c: 6,
            h: 24,
            w: 24,
            act: Activation::Sigmoid,
            pool: AVG2,
        },
        KernelSpec::BnActPool {
            c: 3,
            h: 9,
            w: 13,
            act: Activation::Relu,
            pool: Pool2d {
                kind: PoolKind::Max,
                ..AVG2
            },
        },
        KernelSpec::BnBackDx {
            c: 6,
            h: 24,
            w: 24,
            back: Some((Activation::Sigmoid, Some(AVG2))),
        },
        KernelSpec::BnBackDx {
            c: 4,
            h: 8,
            w: 8,
            back: Some((Activation::Relu, Some(AVG2))),
        },
        KernelSpec::BnBackDx {
            c: 3,
            h: 10,
            w: 13,
            back: Some((Activation::Tanh, None)),
        },
        KernelSpec::BnBackDx {
            c: 2,
            h: 12,
            w: 12,
            back: Some((
                Activation::Sigmoid,
                Some(Pool2d {
                    kernel: [3, 3],
                    stride: [3, 3],
                    ..AVG2
                }),
            )),
        },
        // The pool and activation backward with its sums: on eight lanes where vectors
        // of eight cover the rows (24 and 8 columns), summed in four-lane order.
        KernelSpec::PoolActBack {
            c: 6,
            h: 24,
            w: 24,
            act: Activation::Sigmoid,
            pool: Some(AVG2),
            bn: true,
        },
        KernelSpec::PoolActBack {
            c: 6,
            h: 24,
            w: 24,
            act: Activation::Sigmoid,
            pool: Some(AVG2),
            bn: false,
        },
        KernelSpec::PoolActBack {
            c: 16,
            h: 8,
            w: 8,
            act: Activation::Relu,
            pool: Some(AVG2),
            bn: true,
        },
        KernelSpec::PoolActBack {
            c: 3,
            h: 13,
            w: 12,
            act: Activation::Tanh,
            pool: Some(AVG2),
            bn: false,
        },
        KernelSpec::PoolActBack {
            c: 4,
            h: 9,
            w: 16,
            act: Activation::Tanh,
            pool: None,
            bn: true,
        },
        // Dense layers' backward: features on the lanes, 120 and 84 (a four-lane rest).
        KernelSpec::PoolActBack {
            c: 120,
            h: 1,
            w: 1,
            act: Activation::Sigmoid,
            pool: None,
            bn: true,
        },
        KernelSpec::PoolActBack {
            c: 84,
            h: 1,
            w: 1,
            act: Activation::Relu,
            pool: None,
            bn: false,
        },
        KernelSpec::BnBackDx {
            c: 84,
            h: 1,
            w: 1,
            back: Some((Activation::Sigmoid, None)),
        },
        KernelSpec::BnBackDx {
            c: 29,
            h: 1,
            w: 1,
            back: None,
        },
        // The memory-bound kernels: elementwise maps with tails, pooling in both forms.
        KernelSpec::Pool {
            c: 6,
            h: 24,
            w: 24,
            pool: AVG2,
        },
        KernelSpec::Pool {
            c: 2,
            h: 11,
            w: 11,
            pool: Pool2d {
                kind: PoolKind::Max,
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 1],
                count_include_pad: false,
            },
        },
        KernelSpec::Unary {
            len: 29,
            act: Activation::Sigmoid,
        },
        KernelSpec::Add {
            len: 100,
            act: Activation::Relu,
        },
        KernelSpec::ScaleShift {
            c: 3,
            h: 7,
            w: 9,
            act: Activation::Tanh,
            pool: None,
        },
        KernelSpec::ScaleShift {
            c: 3,
            h: 12,
            w: 12,
            act: Activation::Sigmoid,
            pool: Some(AVG2),
        },
        KernelSpec::ScaleShift {
            c: 21,
            h: 1,
            w: 1,
            act: Activation::Relu,
            pool: None,
        },
    ];
    for spec in specs {
        for n in [1, 3, 8] {
            assert_same_bits(spec, n);
        }
    }
}

/// `exp` and `exp_neg` on eight lanes give the four-lane bits, over the whole range the
/// four-lane accuracy test covers (saturation, infinities, NaN-free).
#[test]
fn wide_exp_matches_narrow() {
    if !wide_host() {
        return;
    }
    let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.06).collect();
    xs.extend([
        -1e30,
        -88.8,
        -87.3,
        88.0,
        89.0,
        1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    for f in [Val::exp, Val::exp_neg] {
        let mut outs = Vec::new();
        for lanes in [4, 8] {
            let jit = elementwise_lanes(xs.len(), lanes, f);
            let mut out = vec![0.0; xs.len()];
            jit.run(0, &[&xs], &mut out, 1).unwrap();
            outs.push(out);
        }
        assert!(
            outs[0]
                .iter()
                .zip(&outs[1])
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}

/// A load whose index moves by two floats per lane needs a gather, which `Wide` loops do
/// not have: the emitter says so instead of emitting wrong code.
#[test]
fn wide_loops_refuse_per_lane_code() {
    let mut b = KernelBuilder::new();
    let i = b.var();
    let body = vec![Stmt::Loop {
        var: i,
        lo: 0usize.into(),
        hi: 8usize.into(),
        step: 8,
        kind: LoopKind::Wide,
        body: vec![Stmt::Store {
            buf: Buf::Param(1),
            idx: v(i),
            val: Val::load(Buf::Param(0), v(i) * 2usize),
        }],
    }];
    let kernel = b.finish("gather".into(), 2, body);
    let spec = KernelSpec::Unary {
        len: 16,
        act: Activation::None,
    };
    let err = JitKernels::build(vec![(spec, kernel)], false).unwrap_err();
    assert!(err.to_string().contains("a gather in a Wide loop"), "{err}");
}

/// A guard that does not move with the lanes (a row index, say) holds on all eight lanes or
/// none: the `Wide` loop loads a vector where it holds and zero where not, as four lanes do.
#[test]
fn lane_invariant_guards_on_eight_lanes() {
    if !wide_host() {
        return;
    }
    let (rows, cols) = (5usize, 16usize);
    let x: Vec<f32> = (0..rows * cols).map(|i| i as f32 + 0.5).collect();
    let mut outs = Vec::new();
    for lanes in [4usize, 8] {
        let mut b = KernelBuilder::new();
        let (r, i) = (b.var(), b.var());
        let guarded = Val::Load {
            buf: Buf::Param(0),
            idx: v(r) * cols + v(i),
            guards: vec![Guard {
                coord: v(r) * 1usize,
                lo: 1,
                hi: 3,
            }],
        };
        let body = vec![for_(
            r,
            0usize,
            rows,
            LoopKind::Serial,
            vec![Stmt::Loop {
                var: i,
                lo: 0usize.into(),
                hi: cols.into(),
                step: lanes as i64,
                kind: LoopKind::vector(lanes),
                body: vec![Stmt::Store {
                    buf: Buf::Param(1),
                    idx: v(r) * cols + v(i),
                    val: guarded.clone(),
                }],
            }],
        )];
        let kernel = b.finish("guarded".into(), 2, body);
        let spec = KernelSpec::Unary {
            len: rows * cols,
            act: Activation::None,
        };
        let jit = JitKernels::build(vec![(spec, kernel)], false).expect("compiles");
        let mut out = vec![f32::NAN; rows * cols];
        jit.run(0, &[&x], &mut out, 1).expect("buffers fit");
        outs.push(out);
    }
    let want: Vec<f32> = (0..rows * cols)
        .map(|i| {
            if (1..3).contains(&(i / cols)) {
                x[i]
            } else {
                0.0
            }
        })
        .collect();
    assert_eq!(outs[0], want);
    assert_eq!(outs[1], want);
}
