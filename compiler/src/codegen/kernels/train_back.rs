//! The elementwise backward kernels of a training layer: the pool and activation backward
//! with the BatchNorm reductions in the same pass (`PoolActBack`), and the BatchNorm input
//! gradient as one per-channel affine map of `dy` and `z` (`BnBackDx`).
//!
//! A channel plane is walked once: four pixels on the lanes, the sums `Σdy` and `Σdy·x̂` in
//! vector registers, added across lanes in a fixed order per image and channel, so results
//! are deterministic. One value per channel (a dense layer) puts the channels on the lanes
//! instead, and then each image's sums are its own values.

use super::simple::{map, per_image};
use super::train::{get, lane_sums, set, store};
use crate::codegen::loop_ir::{
    Buf, IVar, Idx, Kernel, KernelBuilder, LoopKind, Stmt, Val, for_, split, v,
};
use crate::codegen::{Activation, KernelSpec, Pool2d};

/// Lowers `PoolActBack` and `BnBackDx`.
pub(super) fn lower(index: usize, spec: &KernelSpec) -> Kernel {
    match *spec {
        KernelSpec::PoolActBack {
            c,
            h,
            w,
            act,
            pool,
            bn,
        } => pool_act_back(index, c, (h, w), act, pool, bn),
        KernelSpec::BnBackDx { c, h, w } => bn_back_dx(index, c, h * w),
        _ => unreachable!("not a backward spec"),
    }
}

/// `g · act'(a)`, the derivative taken from the activation's output `a` (a register, so
/// that using it twice loads it once).
fn act_back(g: Val, a: Val, act: Activation) -> Val {
    match act {
        Activation::None => g,
        Activation::Relu => g * Val::Positive(Box::new(a)),
        // σ' = σ(1 - σ).
        Activation::Sigmoid => g * (a.clone() - a.clone() * a),
        // tanh' = 1 - tanh².
        Activation::Tanh => g * (Val::Const(1.0) - a.clone() * a),
    }
}

/// The buffers of `PoolActBack` in calling order.
struct Bufs {
    grad: Buf,
    saved: Buf,
    /// `z`, `mean`, `inv_std` with BatchNorm.
    bn: Option<(Buf, Buf, Buf)>,
    out: Buf,
    sums: Buf,
}

impl Bufs {
    fn new(bn: bool) -> (Bufs, u32) {
        let mut next = 0;
        let mut take = || {
            next += 1;
            Buf::Param(next - 1)
        };
        let (grad, saved) = (take(), take());
        let bn = bn.then(|| (take(), take(), take()));
        let (out, sums) = (take(), take());
        (
            Bufs {
                grad,
                saved,
                bn,
                out,
                sums,
            },
            next,
        )
    }

    /// `dy · x̂` at element `at` of channel `ch`.
    fn dy_xhat(&self, dy: Val, at: Idx, ch: Idx) -> Option<Val> {
        self.bn.map(|(z, mean, inv)| {
            let xhat = (Val::load(z, at) - Val::load(mean, ch.clone())) * Val::load(inv, ch);
            dy * xhat
        })
    }
}

fn pool_act_back(
    index: usize,
    c: usize,
    (h, w): (usize, usize),
    act: Activation,
    pool: Option<Pool2d>,
    bn: bool,
) -> Kernel {
    let (bufs, params) = Bufs::new(bn);
    let nsums = crate::codegen::pool_act_back_sums(c, bn);
    let mut b = KernelBuilder::new();
    if let Some((_, mean, inv)) = bufs.bn {
        b.read_only(&[mean, inv]);
    }
    let body = if h * w == 1 && pool.is_none() {
        per_image(&mut b, |b, n| features(b, &bufs, n, c, act, nsums))
    } else {
        per_image(&mut b, |b, n| {
            let ch = b.var();
            let inner = plane(b, &bufs, n, ch, c, (h, w), act, pool, nsums);
            vec![for_(ch, 0usize, c, LoopKind::Serial, inner)]
        })
    };
    b.finish(format!("k{index}_pool_act_back"), params, body)
}

/// One value per channel: channels on the lanes; each image's sums are its own `dy` and
/// `dy·x̂`.
fn features(
    b: &mut KernelBuilder,
    bufs: &Bufs,
    n: IVar,
    c: usize,
    act: Activation,
    nsums: usize,
) -> Vec<Stmt> {
    split(b, 0usize.into(), c.into(), &[4, 1], true, |b, ch, _| {
        let (dy, a) = (b.reg(), b.reg());
        let at = v(n) * c + v(ch);
        let mut s = vec![
            set(a, Val::load(bufs.saved, at.clone())),
            set(dy, act_back(Val::load(bufs.grad, at.clone()), get(a), act)),
            store(bufs.out, at.clone(), get(dy)),
            store(bufs.sums, v(n) * nsums + v(ch), get(dy)),
        ];
        if let Some(p) = bufs.dy_xhat(get(dy), at, v(ch)) {
            s.push(store(bufs.sums, v(n) * nsums + v(ch) + c, p));
        }
        s
    })
}

/// One channel plane of image `n`: `dy` for every pixel and the plane's sums. With a pool,
/// the pixels past the last whole window get `dy = 0`.
#[allow(clippy::too_many_arguments)]
fn plane(
    b: &mut KernelBuilder,
    bufs: &Bufs,
    n: IVar,
    ch: IVar,
    c: usize,
    (h, w): (usize, usize),
    act: Activation,
    pool: Option<Pool2d>,
    nsums: usize,
) -> Vec<Stmt> {
    let base = (v(n) * c + v(ch)) * (h * w);
    // Rows and columns covered by windows, and the gradient reaching pixel (y, x).
    let (rows, cols) = match pool {
        Some(p) => {
            let (oh, ow) = p.out_hw(h, w);
            (p.kernel[0] * oh, p.kernel[1] * ow)
        }
        None => (h, w),
    };
    let grad_at = |y: Idx, x: Idx| -> Val {
        let Some(p) = pool else {
            return Val::load(bufs.grad, base.clone() + y * w + x);
        };
        let (oh, ow) = p.out_hw(h, w);
        let [kh, kw] = p.kernel;
        let idx = ((v(n) * c + v(ch)) * oh + y.floor_div(kh as i64)) * ow + x.floor_div(kw as i64);
        let g = if kw == 2 {
            Val::PairDup {
                buf: bufs.grad,
                idx,
            }
        } else {
            Val::load(bufs.grad, idx)
        };
        g * Val::Const(1.0 / (kh * kw) as f32)
    };
    let (s1, s2, dy, a) = (b.reg(), b.reg(), b.reg(), b.reg());
    let lanes = b.local(8);
    let (y, x4, j, x) = (b.var(), b.var(), b.var(), b.var());
    // The pixel body: dy, its store, and the sums.
    let pixel = |y: Idx, x: Idx| -> Vec<Stmt> {
        let at = base.clone() + y.clone() * w + x.clone();
        let mut s = vec![
            set(a, Val::load(bufs.saved, at.clone())),
            set(dy, act_back(grad_at(y, x), get(a), act)),
            store(bufs.out, at.clone(), get(dy)),
            set(s1, get(s1) + get(dy)),
        ];
        if let Some(p) = bufs.dy_xhat(get(dy), at, v(ch)) {
            s.push(set(s2, p + get(s2)));
        }
        s
    };
    let full = cols / 4;
    let unroll_cols = if full <= 8 {
        LoopKind::Unroll
    } else {
        LoopKind::Serial
    };
    let rows_cols = for_(
        y,
        0usize,
        rows,
        LoopKind::Serial,
        vec![for_(
            x4,
            0usize,
            full,
            unroll_cols,
            pixel(v(y), v(x4) * 4usize + v(j)),
        )],
    );
    let mut body = lane_sums(j, [s1, s2], lanes, rows_cols);
    if full * 4 < cols {
        body.push(for_(
            y,
            0usize,
            rows,
            LoopKind::Serial,
            vec![for_(x, full * 4, cols, LoopKind::Serial, pixel(v(y), v(x)))],
        ));
    }
    // Pixels outside every window get no gradient.
    let zero = |y: Idx, x: Idx| store(bufs.out, base.clone() + y * w + x, Val::Const(0.0));
    if cols < w {
        body.push(for_(
            y,
            0usize,
            rows,
            LoopKind::Serial,
            vec![for_(x, cols, w, LoopKind::Serial, vec![zero(v(y), v(x))])],
        ));
    }
    if rows < h {
        body.push(for_(
            y,
            rows,
            h,
            LoopKind::Serial,
            vec![for_(x, 0usize, w, LoopKind::Serial, vec![zero(v(y), v(x))])],
        ));
    }
    let at = v(n) * nsums + v(ch);
    body.push(store(bufs.sums, at.clone(), get(s1)));
    if bufs.bn.is_some() {
        body.push(store(bufs.sums, at + c, get(s2)));
    }
    body
}

/// `dz = A[c]·dy + B[c]·(z - mean[c]) + C[c]`, channel planes of `hw` values (or channels on the lanes
/// when `hw` is 1). The output may be the `grad` buffer itself: each element is read before
/// it is written.
fn bn_back_dx(index: usize, c: usize, hw: usize) -> Kernel {
    let (z, dy, coef, out) = (Buf::Param(0), Buf::Param(1), Buf::Param(2), Buf::Param(3));
    let mut b = KernelBuilder::new();
    b.read_only(&[coef]);
    let f = |at: Idx, ch: Idx| {
        let centered = Val::load(z, at.clone()) - Val::load(coef, ch.clone() + 3 * c);
        let bz = Val::fma(
            Val::load(coef, ch.clone() + c),
            centered,
            Val::load(coef, ch.clone() + 2 * c),
        );
        Val::fma(Val::load(coef, ch), Val::load(dy, at), bz)
    };
    let body = per_image(&mut b, |b, n| {
        if hw == 1 {
            return map(b, c, out, v(n) * c, |ch| f(v(n) * c + ch.clone(), ch));
        }
        let ch = b.var();
        let base = (v(n) * c + v(ch)) * hw;
        let inner = map(b, hw, out, base.clone(), |at| f(base.clone() + at, v(ch)));
        vec![for_(ch, 0usize, c, LoopKind::Serial, inner)]
    });
    b.finish(format!("k{index}_bn_back_dx"), 4, body)
}
