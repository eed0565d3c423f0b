//! The memory-bound kernels in loop IR: per-channel scale/shift (an unfolded BatchNorm) with
//! activation and optional pool, standalone pooling, elementwise activation and addition, and
//! row softmax. Contiguous runs are vectorized two vectors per trip with a scalar tail.

use super::{act, pool_plane};
use crate::codegen::loop_ir::{
    BinOp, Buf, IVar, Idx, Kernel, KernelBuilder, LoopKind, N_BEGIN, N_END, Stmt, Val, for_, reg,
    split_lanes, step_lanes, v,
};
use crate::codegen::{Activation, KernelSpec, Pool2d, Width};

/// `out[base + i] = f(i)` for `i in 0..len`, vectorized with a scalar tail.
pub(super) fn map(
    b: &mut KernelBuilder,
    len: usize,
    out: Buf,
    base: Idx,
    f: impl Fn(Idx) -> Val,
) -> Vec<Stmt> {
    map_lanes(b, len, out, base, 4, f)
}

/// [`map`] on vectors of up to `lanes` (4 or 8): two of them per trip, then one, then (for
/// 8) a vector of four, then scalars. `f` must have no per-lane code for 8 (see
/// [`LoopKind::Wide`]).
pub(super) fn map_lanes(
    b: &mut KernelBuilder,
    len: usize,
    out: Buf,
    base: Idx,
    lanes: usize,
    f: impl Fn(Idx) -> Val,
) -> Vec<Stmt> {
    let steps: &[usize] = if lanes == 8 {
        &[16, 8, 4, 1]
    } else {
        &[8, 4, 1]
    };
    split_lanes(b, 0usize.into(), len.into(), steps, lanes, |b, i, step| {
        let l = step_lanes(step, lanes);
        let u = b.var();
        let at = v(i) + v(u) * l;
        let store = Stmt::Store {
            buf: out,
            idx: base.clone() + at.clone(),
            val: f(at),
        };
        vec![for_(
            u,
            0usize,
            (step / l).max(1),
            LoopKind::Unroll,
            vec![store],
        )]
    })
}

/// Wraps `body(b, n)` in the loop over the batch range.
pub(super) fn per_image(
    b: &mut KernelBuilder,
    body: impl FnOnce(&mut KernelBuilder, IVar) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let n = b.var();
    let inner = body(b, n);
    vec![for_(n, N_BEGIN, N_END, LoopKind::Serial, inner)]
}

/// Lowers the specs that are neither convolutions nor dense layers, on vectors of `width`
/// where their loops allow it.
pub(super) fn lower(index: usize, spec: &KernelSpec, width: Width) -> Kernel {
    let lanes = width.lanes();
    let mut b = KernelBuilder::new();
    let x = Buf::Param(0);
    let (name, params, body) = match *spec {
        KernelSpec::Unary { len, act: a } => {
            let body = per_image(&mut b, |b, n| {
                map_lanes(b, len, Buf::Param(1), v(n) * len, lanes, |i| {
                    act(Val::load(x, v(n) * len + i), a)
                })
            });
            ("unary", 2, body)
        }
        KernelSpec::Add { len, act: a } => {
            let body = per_image(&mut b, |b, n| {
                map_lanes(b, len, Buf::Param(2), v(n) * len, lanes, |i| {
                    let at = v(n) * len + i;
                    act(Val::load(x, at.clone()) + Val::load(Buf::Param(1), at), a)
                })
            });
            ("add", 3, body)
        }
        KernelSpec::ScaleShift {
            c,
            h,
            w,
            act: a,
            pool,
        } => {
            let (scale, shift, out) = (Buf::Param(1), Buf::Param(2), Buf::Param(3));
            b.read_only(&[scale, shift]);
            let body = if h * w == 1 && pool.is_none() {
                // One value per channel (a dense layer): the channels go on the lanes.
                per_image(&mut b, |b, n| {
                    map_lanes(b, c, out, v(n) * c, lanes, |ch| {
                        let x = Val::load(x, v(n) * c + ch.clone());
                        act(
                            Val::fma(x, Val::load(scale, ch.clone()), Val::load(shift, ch)),
                            a,
                        )
                    })
                })
            } else {
                scale_shift_planes(&mut b, x, (c, h, w), a, pool, lanes)
            };
            ("scale_shift", 4, body)
        }
        KernelSpec::Pool { c, h, w, pool } => {
            let (oh, ow) = pool.out_hw(h, w);
            let body = per_image(&mut b, |b, n| {
                let ch = b.var();
                let plane = v(n) * c + v(ch);
                let src = |_, _, ih: Idx, iw, guards| Val::Load {
                    buf: x,
                    idx: (plane.clone() * h + ih) * w + iw,
                    guards,
                };
                let dst = |_, y: Idx, x| (Buf::Param(1), (plane.clone() * oh + y) * ow + x);
                let inner =
                    pool_plane(b, &pool, (h, w), 1, lanes, src, dst, |_, _, _, _, _| vec![]);
                vec![for_(ch, 0usize, c, LoopKind::Serial, inner)]
            });
            ("pool", 2, body)
        }
        KernelSpec::Softmax { classes } => {
            let out = Buf::Param(1);
            let body = per_image(&mut b, |b, n| {
                // Subtracting the row maximum keeps exp in range; the sum is then >= 1.
                let (m, s, k1, k2) = (b.reg(), b.reg(), b.var(), b.var());
                let row = |k: IVar| v(n) * classes + v(k);
                let e = (Val::load(x, row(k2)) - Val::Get(reg(m, 0usize))).exp();
                let mut body = vec![
                    Stmt::Set {
                        reg: reg(m, 0usize),
                        val: Val::Const(f32::NEG_INFINITY),
                    },
                    for_(
                        k1,
                        0usize,
                        classes,
                        LoopKind::Serial,
                        vec![Stmt::Set {
                            reg: reg(m, 0usize),
                            val: Val::bin(
                                BinOp::Max,
                                Val::Get(reg(m, 0usize)),
                                Val::load(x, row(k1)),
                            ),
                        }],
                    ),
                    Stmt::Set {
                        reg: reg(s, 0usize),
                        val: Val::Const(0.0),
                    },
                    for_(
                        k2,
                        0usize,
                        classes,
                        LoopKind::Serial,
                        vec![
                            Stmt::Store {
                                buf: out,
                                idx: row(k2),
                                val: e,
                            },
                            Stmt::Set {
                                reg: reg(s, 0usize),
                                val: Val::Get(reg(s, 0usize)) + Val::load(out, row(k2)),
                            },
                        ],
                    ),
                    Stmt::Set {
                        reg: reg(s, 0usize),
                        val: Val::bin(BinOp::Div, Val::Const(1.0), Val::Get(reg(s, 0usize))),
                    },
                ];
                let base = v(n) * classes;
                body.extend(map(b, classes, out, base.clone(), |i| {
                    Val::load(out, base.clone() + i) * Val::Get(reg(s, 0usize))
                }));
                body
            });
            ("softmax", 2, body)
        }
        _ => unreachable!("lowered by conv.rs, dense.rs and train.rs"),
    };
    b.finish(format!("k{index}_{name}"), params, body)
}

/// `ScaleShift` one channel plane at a time (optionally pooled).
fn scale_shift_planes(
    b: &mut KernelBuilder,
    x: Buf,
    (c, h, w): (usize, usize, usize),
    a: Activation,
    pool: Option<Pool2d>,
    lanes: usize,
) -> Vec<Stmt> {
    let (scale, shift, out) = (Buf::Param(1), Buf::Param(2), Buf::Param(3));
    per_image(b, |b, n| {
        let ch = b.var();
        let plane = v(n) * c + v(ch);
        let f = |at: Idx, guards| {
            let x = Val::Load {
                buf: x,
                idx: plane.clone() * (h * w) + at,
                guards,
            };
            act(
                Val::fma(x, Val::load(scale, v(ch)), Val::load(shift, v(ch))),
                a,
            )
        };
        let inner = match pool {
            None => map_lanes(b, h * w, out, plane.clone() * (h * w), lanes, |at| {
                f(at, vec![])
            }),
            Some(p) => {
                let (oh, ow) = p.out_hw(h, w);
                let src = |_, _, ih: Idx, iw, guards| f(ih * w + iw, guards);
                let dst = |_, y: Idx, x| (out, (plane.clone() * oh + y) * ow + x);
                // The window reads computed values, not loads: no pair sums, four lanes.
                pool_plane(b, &p, (h, w), 1, 4, src, dst, |_, _, _, _, _| vec![])
            }
        };
        vec![for_(ch, 0usize, c, LoopKind::Serial, inner)]
    })
}
