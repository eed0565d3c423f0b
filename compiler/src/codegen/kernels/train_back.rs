//! The elementwise backward kernels of a training layer: the pool and activation backward
//! with its reductions (`PoolActBack`), and the BatchNorm input gradient as one per-channel
//! affine map of `dy` and `z` (`BnBackDx`).
//!
//! Under BatchNorm the pool and activation backward runs twice: once for the sums `Σdy` and
//! `Σdy·x̂`, writing nothing else, and again after the sums are merged over the batch, where
//! `BnBackDx` recomputes `dy` from the layer's output gradient and saved activation (a
//! multiply or two per element) instead of reading it back from a buffer the first pass would
//! have had to write: one plane-sized write and read fewer per layer.
//!
//! A channel plane is walked once: four pixels on the lanes, the sums in vector registers,
//! added across lanes in a fixed order per image and channel, so results are deterministic.
//! One value per channel (a dense layer) puts the channels on the lanes instead, and then
//! each image's sums are its own values.

use super::simple::{map_lanes, per_image};
use super::train::{get, lane_sums_n, on_lanes_n, set, store};
use crate::codegen::loop_ir::{
    Buf, IVar, Idx, Kernel, KernelBuilder, LoopKind, Stmt, Val, for_, split_lanes, v,
};
use crate::codegen::{Activation, KernelSpec, Pool2d, Width};

/// The most vectors of a plane's covered pixels that [`Source::walk`] unrolls whole.
const UNROLL_PLANE: usize = 16;

/// Lowers `PoolActBack` and `BnBackDx` (the latter on vectors of `width` where it can).
pub(super) fn lower(index: usize, spec: &KernelSpec, width: Width) -> Kernel {
    match *spec {
        KernelSpec::PoolActBack {
            c,
            h,
            w,
            act,
            pool,
            bn,
        } => pool_act_back(index, c, (h, w), act, pool, bn, width),
        KernelSpec::BnBackDx { c, h, w, back } => bn_back_dx(index, c, (h, w), back, width),
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

/// Where `dy = unpool(grad) · act'(saved)` comes from: the layer's output gradient, its
/// saved activation, and the activation and pool to differentiate.
#[derive(Clone, Copy)]
struct Source {
    grad: Buf,
    saved: Buf,
    act: Activation,
    pool: Option<Pool2d>,
}

/// One channel plane `ch` of image `n` of a `[n, c, h, w]` buffer.
#[derive(Clone, Copy)]
struct Plane {
    n: IVar,
    ch: IVar,
    c: usize,
    h: usize,
    w: usize,
}

impl Plane {
    /// The element index of pixel `(y, x)`.
    fn at(&self, y: Idx, x: Idx) -> Idx {
        (v(self.n) * self.c + v(self.ch)) * (self.h * self.w) + y * self.w + x
    }

    /// The rows and columns covered by the pool's windows (all of them without a pool).
    fn covered(&self, pool: Option<Pool2d>) -> (usize, usize) {
        match pool {
            Some(p) => {
                let (oh, ow) = p.out_hw(self.h, self.w);
                (p.kernel[0] * oh, p.kernel[1] * ow)
            }
            None => (self.h, self.w),
        }
    }
}

/// The index of the first pooled gradient of the windows covering row `y` of the plane.
fn grad_row(p: &Plane, pool: &Pool2d, y: Idx) -> Idx {
    let (oh, ow) = pool.out_hw(p.h, p.w);
    ((v(p.n) * p.c + v(p.ch)) * oh + y.floor_div(pool.kernel[0] as i64)) * ow
}

impl Source {
    /// The lanes [`Source::walk`] can run for vectors of `width`: eight where a pool window
    /// is one or two columns wide (a contiguous or pair-duplicated gradient) or there is no
    /// pool, else four.
    fn wide(&self, width: Width) -> usize {
        match self.pool {
            Some(p) if p.kernel[1] > 2 => 4,
            _ => width.lanes(),
        }
    }

    /// The gradient reaching pixel `(y, x)` of the plane through the pool (inside a window).
    fn grad_at(&self, p: &Plane, y: Idx, x: Idx) -> Val {
        let Some(pool) = self.pool else {
            return Val::load(self.grad, p.at(y, x));
        };
        let [kh, kw] = pool.kernel;
        let idx = grad_row(p, &pool, y) + x.floor_div(kw as i64);
        Val::load(self.grad, idx) * Val::Const(1.0 / (kh * kw) as f32)
    }

    /// Every pixel of the plane: `inside(dy, at)` for the pixels in a pool window, with
    /// `dy` in a register; `outside(at)` for the rest, whose `dy` is zero. The covered
    /// columns run `lanes` pixels to the lanes (`wrap` gets the lane variable and that loop
    /// nest and places it, to keep per-lane sums), then a scalar tail. Eight lanes need a
    /// pool window one or two columns wide, or none ([`Source::wide`]).
    fn walk(
        &self,
        b: &mut KernelBuilder,
        p: &Plane,
        lanes: usize,
        inside: impl Fn(Val, Idx) -> Vec<Stmt>,
        outside: Option<&dyn Fn(Idx) -> Stmt>,
        wrap: impl FnOnce(IVar, Stmt) -> Vec<Stmt>,
    ) -> Vec<Stmt> {
        let (rows, cols) = p.covered(self.pool);
        let (dy, a, scale) = (b.reg(), b.reg(), b.reg());
        let (y, x4, j, x) = (b.var(), b.var(), b.var(), b.var());
        let pixel = |at: Idx, g: Val| -> Vec<Stmt> {
            let mut s = vec![
                set(a, Val::load(self.saved, at.clone())),
                set(dy, act_back(g, get(a), self.act)),
            ];
            s.extend(inside(get(dy), at));
            s
        };
        // The vector loop binds each row's first pixel and first pooled gradient once, so
        // that the pixels' addresses are affine (the emitter folds them into the loads) and
        // the window's `1/(kh·kw)` is broadcast once per row.
        let (row, row_grad, lane_window) = (b.var(), b.var(), b.var());
        let mut per_row = vec![Stmt::Let {
            var: row,
            idx: p.at(v(y), Idx::Const(0)),
        }];
        let grad = match self.pool {
            None => Val::load(self.grad, v(row) + v(x4) * lanes + v(j)),
            Some(pool) => {
                let [kh, kw] = pool.kernel;
                per_row.extend([
                    Stmt::Let {
                        var: row_grad,
                        idx: grad_row(p, &pool, v(y)),
                    },
                    set(scale, Val::Const(1.0 / (kh * kw) as f32)),
                ]);
                // Lane `l` of column vector `x4` is in window `(lanes·x4 + l) / kw`.
                let g = match kw {
                    1 => Val::load(self.grad, v(row_grad) + v(x4) * lanes + v(j)),
                    2 => {
                        // Lanes `[0, 0, 1, 1, ..]` of the windows from `lanes/2·x4`; only
                        // lane 0's index is used, so the lane-dependent `l / 2` may be a let.
                        per_row.push(Stmt::Let {
                            var: lane_window,
                            idx: v(j).floor_div(2),
                        });
                        Val::PairDup {
                            buf: self.grad,
                            idx: v(row_grad) + v(x4) * (lanes / 2) + v(lane_window),
                        }
                    }
                    // One window per column vector: the same gradient on every lane.
                    4 => Val::load(self.grad, v(row_grad) + v(x4)),
                    _ => Val::load(
                        self.grad,
                        v(row_grad) + (v(x4) * 4usize + v(j)).floor_div(kw as i64),
                    ),
                };
                g * get(scale)
            }
        };
        let full = cols / lanes;
        let unroll_cols = if full <= 8 {
            LoopKind::Unroll
        } else {
            LoopKind::Serial
        };
        per_row.push(for_(
            x4,
            0usize,
            full,
            unroll_cols,
            pixel(v(row) + v(x4) * lanes + v(j), grad),
        ));
        // A small plane (LeNet's conv2: 8 rows of two vectors) unrolls its rows too: the
        // per-row loop and address work would otherwise be about a third of its instructions.
        let unroll_rows = if unroll_cols == LoopKind::Unroll && rows * full <= UNROLL_PLANE {
            LoopKind::Unroll
        } else {
            LoopKind::Serial
        };
        let rows_cols = for_(y, 0usize, rows, unroll_rows, per_row);
        let mut body = wrap(j, rows_cols);
        if full * lanes < cols {
            body.push(for_(
                y,
                0usize,
                rows,
                LoopKind::Serial,
                vec![for_(
                    x,
                    full * lanes,
                    cols,
                    LoopKind::Serial,
                    pixel(p.at(v(y), v(x)), self.grad_at(p, v(y), v(x))),
                )],
            ));
        }
        let Some(outside) = outside else {
            return body;
        };
        if cols < p.w {
            body.push(for_(
                y,
                0usize,
                rows,
                LoopKind::Serial,
                vec![for_(
                    x,
                    cols,
                    p.w,
                    LoopKind::Serial,
                    vec![outside(p.at(v(y), v(x)))],
                )],
            ));
        }
        if rows < p.h {
            body.push(for_(
                y,
                rows,
                p.h,
                LoopKind::Serial,
                vec![for_(
                    x,
                    0usize,
                    p.w,
                    LoopKind::Serial,
                    vec![outside(p.at(v(y), v(x)))],
                )],
            ));
        }
        body
    }
}

/// `PoolActBack`: without BatchNorm, `dy` into `out` and `Σdy` per image and channel into
/// `sums`; with BatchNorm only the sums `Σdy` and `Σdy·x̂`, `x̂ = (z - mean[c])·inv_std[c]`.
fn pool_act_back(
    index: usize,
    c: usize,
    (h, w): (usize, usize),
    act: Activation,
    pool: Option<Pool2d>,
    bn: bool,
    width: Width,
) -> Kernel {
    let mut params = 0;
    let mut take = || {
        params += 1;
        Buf::Param(params - 1)
    };
    let src = Source {
        grad: take(),
        saved: take(),
        act,
        pool,
    };
    let bn_bufs = bn.then(|| (take(), take(), take()));
    let out = (!bn).then(&mut take);
    let sums = take();
    let nsums = crate::codegen::pool_act_back_sums(c, bn);
    let mut b = KernelBuilder::new();
    if let Some((_, mean, inv)) = bn_bufs {
        b.read_only(&[mean, inv]);
    }
    // `dy · x̂` at element `at` of channel `ch`.
    let dy_xhat = |dy: Val, at: Idx, ch: Idx| {
        bn_bufs.map(|(z, mean, inv)| {
            dy * ((Val::load(z, at) - Val::load(mean, ch.clone())) * Val::load(inv, ch))
        })
    };
    let body = if h * w == 1 && pool.is_none() {
        // One value per channel: channels on the lanes; each image's sums are its own `dy`
        // and `dy·x̂`.
        let steps: &[usize] = if width == Width::F32x8 {
            &[8, 4, 1]
        } else {
            &[4, 1]
        };
        per_image(&mut b, |b, n| {
            split_lanes(
                b,
                0usize.into(),
                c.into(),
                steps,
                width.lanes(),
                |b, ch, _| {
                    let (dy, a) = (b.reg(), b.reg());
                    let at = v(n) * c + v(ch);
                    let mut s = vec![
                        set(a, Val::load(src.saved, at.clone())),
                        set(dy, act_back(Val::load(src.grad, at.clone()), get(a), act)),
                        store(sums, v(n) * nsums + v(ch), get(dy)),
                    ];
                    if let Some(out) = out {
                        s.push(store(out, at.clone(), get(dy)));
                    }
                    if let Some(p) = dy_xhat(get(dy), at, v(ch)) {
                        s.push(store(sums, v(n) * nsums + v(ch) + c, p));
                    }
                    s
                },
            )
        })
    } else {
        per_image(&mut b, |b, n| {
            let ch = b.var();
            let p = Plane { n, ch, c, h, w };
            let (s1, s2, pr) = (b.reg(), b.reg(), b.reg());
            // Eight lanes where whole vectors of eight cover each row's columns: the sums
            // then take each vector's low half, then its high half, which is the order
            // four lanes give them (so the same bits at either width).
            let wide = src.wide(width) == 8 && p.covered(src.pool).1.is_multiple_of(8);
            let width = if wide { 8 } else { 4 };
            let lanes = b.local(2 * width);
            let halves = |x: Val| -> Vec<Val> {
                if wide {
                    vec![
                        Val::LowHalf(Box::new(x.clone())),
                        Val::HighHalf(Box::new(x)),
                    ]
                } else {
                    vec![x]
                }
            };
            let inside = |dy: Val, at: Idx| {
                let mut s = Vec::new();
                if let Some(out) = out {
                    s.push(store(out, at.clone(), dy.clone()));
                }
                for h in halves(dy.clone()) {
                    s.push(set(s1, get(s1) + h));
                }
                if let Some(prod) = dy_xhat(dy, at, v(ch)) {
                    s.push(set(pr, prod));
                    for h in halves(get(pr)) {
                        s.push(set(s2, h + get(s2)));
                    }
                }
                s
            };
            // Pixels outside every window get no gradient.
            let zero = out.map(|out| move |at: Idx| store(out, at, Val::Const(0.0)));
            let outside = zero.as_ref().map(|f| f as &dyn Fn(Idx) -> Stmt);
            let mut inner = src.walk(b, &p, width, inside, outside, |j, rows_cols| {
                lane_sums_n(j, [s1, s2], 1, lanes, width, vec![rows_cols])
            });
            let at = v(n) * nsums + v(ch);
            inner.push(store(sums, at.clone(), get(s1)));
            if bn {
                inner.push(store(sums, at + c, get(s2)));
            }
            vec![for_(ch, 0usize, c, LoopKind::Serial, inner)]
        })
    };
    b.finish(format!("k{index}_pool_act_back"), params, body)
}

/// `dz = A[c]·dy + B[c]·(z - mean[c]) + C[c]`, channel planes of `h x w` values (or channels
/// on the lanes when a plane is one value). Without `back`, `dy` is read from `grad` and the
/// output may be `grad` itself (each element is read before it is written); with `back`,
/// `dy = unpool(grad) · act'(saved)` is recomputed as `PoolActBack` computes it, and the
/// output may be `z` itself (the trainer writes `dz` over `z`, read at the same index just
/// before).
fn bn_back_dx(
    index: usize,
    c: usize,
    (h, w): (usize, usize),
    back: Option<(Activation, Option<Pool2d>)>,
    width: Width,
) -> Kernel {
    let mut params = 0;
    let mut take = || {
        params += 1;
        Buf::Param(params - 1)
    };
    let grad = take();
    let saved = back.map(|_| take());
    let (z, coef, out) = (take(), take(), take());
    let mut b = KernelBuilder::new();
    b.read_only(&[coef]);
    let dz = |dy: Val, at: Idx, ch: Idx| {
        let centered = Val::load(z, at) - Val::load(coef, ch.clone() + 3 * c);
        let bz = Val::fma(
            Val::load(coef, ch.clone() + c),
            centered,
            Val::load(coef, ch.clone() + 2 * c),
        );
        Val::fma(Val::load(coef, ch), dy, bz)
    };
    let hw = h * w;
    let body = match (back, saved) {
        (Some((act, pool)), Some(saved)) if hw > 1 || pool.is_some() => {
            let src = Source {
                grad,
                saved,
                act,
                pool,
            };
            per_image(&mut b, |b, n| {
                let ch = b.var();
                let p = Plane { n, ch, c, h, w };
                let inside = |dy: Val, at: Idx| vec![store(out, at.clone(), dz(dy, at, v(ch)))];
                let outside = |at: Idx| store(out, at.clone(), dz(Val::Const(0.0), at, v(ch)));
                // Eight lanes only where vectors of eight cover each row's columns: a rest
                // would run as scalars.
                let lanes = if p.covered(src.pool).1.is_multiple_of(8) {
                    src.wide(width)
                } else {
                    4
                };
                let inner = src.walk(b, &p, lanes, inside, Some(&outside), |j, rows_cols| {
                    vec![on_lanes_n(j, lanes, vec![rows_cols])]
                });
                vec![for_(ch, 0usize, c, LoopKind::Serial, inner)]
            })
        }
        _ => per_image(&mut b, |b, n| {
            let dy = |at: Idx| match (back, saved) {
                (Some((act, _)), Some(saved)) => {
                    act_back(Val::load(grad, at.clone()), Val::load(saved, at), act)
                }
                _ => Val::load(grad, at),
            };
            if hw == 1 {
                return map_lanes(b, c, out, v(n) * c, width.lanes(), |ch| {
                    let at = v(n) * c + ch.clone();
                    dz(dy(at.clone()), at, ch)
                });
            }
            let ch = b.var();
            let base = (v(n) * c + v(ch)) * hw;
            let inner = map_lanes(b, hw, out, base.clone(), width.lanes(), |at| {
                let at = base.clone() + at;
                dz(dy(at.clone()), at, v(ch))
            });
            vec![for_(ch, 0usize, c, LoopKind::Serial, inner)]
        }),
    };
    b.finish(format!("k{index}_bn_back_dx"), params, body)
}
