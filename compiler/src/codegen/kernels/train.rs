//! The training kernels in loop IR: convolution and dense forward with the BatchNorm batch
//! statistics accumulated in their epilogue, the fused normalize+activation+pool that also
//! saves the activation for the backward pass, and the weight gradients of convolution and
//! dense layers.
//!
//! Reductions along a contiguous axis use a one-trip `Vector` loop over a lane variable `j`
//! (`0..4` step 4): inside it, the serial reduction loops address element `4 * i + j`, so each
//! lane keeps its own partial sum in a vector register; the four lanes are then stored to a
//! small stack array and summed in a fixed order, which keeps results deterministic.

use super::conv::{PADDED_LOCAL_MAX, conv2d_with, copy_row, fill};
use super::dense::dense_with;
use super::simple::{map_lanes, per_image};
use super::{act, pool_plane};
use crate::codegen::loop_ir::{
    Buf, Guard, IVar, Idx, Kernel, KernelBuilder, LoopKind, N_BEGIN, N_END, Stmt, Val, for_, reg,
    split, v,
};
use crate::codegen::{Activation, Epilogue, KernelSpec, Width, window_out};

/// Lowers the training specs; the forward convolutions and dense layers use vectors of
/// `width`.
pub(super) fn lower(index: usize, spec: &KernelSpec, width: Width) -> Kernel {
    match *spec {
        KernelSpec::TrainConv2d { c_out, stats, .. } => {
            // The forward convolution is the inference kernel without activation.
            let conv = spec.forward_conv();
            let [_, oh, ow] = spec.out_chw();
            conv2d_with(
                index,
                &conv,
                width,
                "train_conv2d",
                u32::from(stats),
                |b, n, out| {
                    if !stats {
                        return (vec![], vec![]);
                    }
                    let Buf::Param(o) = out else {
                        unreachable!("outputs are parameters")
                    };
                    plane_stats(b, n, out, Buf::Param(o + 1), c_out, oh * ow)
                },
            )
        }
        KernelSpec::TrainDense {
            in_f,
            out_f,
            bias,
            stats,
        } => {
            let epi = Epilogue {
                bias,
                ..Epilogue::NONE
            };
            dense_with(
                index,
                in_f,
                out_f,
                epi,
                width,
                "train_dense",
                u32::from(stats),
                |b, out| {
                    let Buf::Param(o) = out else {
                        unreachable!("outputs are parameters")
                    };
                    if stats {
                        feature_stats(b, out, Buf::Param(o + 1), out_f)
                    } else {
                        vec![]
                    }
                },
            )
        }
        KernelSpec::BnActPool {
            c,
            h,
            w,
            act: a,
            pool,
        } => bn_act_pool(index, c, h, w, a, pool, width),
        KernelSpec::ConvGradW {
            c_in,
            h,
            w,
            c_out,
            kernel,
            padding,
        } => conv_grad_w(index, c_in, (h, w), c_out, kernel, padding),
        KernelSpec::DenseGradW { in_f, out_f } => dense_grad_w(index, in_f, out_f),
        _ => unreachable!("not a training spec"),
    }
}

pub(super) fn set(r: u32, val: Val) -> Stmt {
    Stmt::Set {
        reg: reg(r, 0usize),
        val,
    }
}

pub(super) fn get(r: u32) -> Val {
    Val::Get(reg(r, 0usize))
}

pub(super) fn store(buf: Buf, idx: impl Into<Idx>, val: Val) -> Stmt {
    Stmt::Store {
        buf,
        idx: idx.into(),
        val,
    }
}

/// The sum of the four lanes `l[base..base + 4]`, in lane order.
pub(super) fn lane_sum(l: Buf, base: usize) -> Val {
    (0..4)
        .map(|j| Val::load(l, base + j))
        .reduce(|a, b| a + b)
        .expect("four lanes")
}

/// Two sums kept per lane, each in `chains` independent registers `reg(r[i], k)` (so that
/// consecutive vectors need not wait on one add's latency): a one-trip `Vector` loop over the
/// lane variable `j` zeroes them, runs `inner` (which addresses element `4 * i + j`, so each
/// lane sums its own elements), adds the chains in a fixed order ([`chain_total`]) and parks
/// the lanes in `lanes` (8 floats); after it, the registers `reg(r[i], 0)` hold the scalar
/// totals, the lanes added in a fixed order.
pub(super) fn lane_sums(
    j: IVar,
    r: [u32; 2],
    chains: usize,
    lanes: Buf,
    inner: Vec<Stmt>,
) -> Vec<Stmt> {
    lane_sums_n(j, r, chains, lanes, 4, inner)
}

/// [`lane_sums`] whose loop over `j` has `width` lanes: on eight (a `Wide` loop, `lanes`
/// then 16 floats for the bounds checker, which counts a four-float store as eight) the
/// registers hold four lanes, and `inner` adds each eight-lane value to them as its low
/// half, then its high half ([`Val::LowHalf`]), so the sums see the values in the order the
/// four-lane loop gives them.
pub(super) fn lane_sums_n(
    j: IVar,
    r: [u32; 2],
    chains: usize,
    lanes: Buf,
    width: usize,
    inner: Vec<Stmt>,
) -> Vec<Stmt> {
    let zero = if width == 8 {
        Val::LowHalf(Box::new(Val::Const(0.0)))
    } else {
        Val::Const(0.0)
    };
    let mut body: Vec<Stmt> = (0..chains)
        .flat_map(|k| {
            r.map(|r| Stmt::Set {
                reg: reg(r, k),
                val: zero.clone(),
            })
        })
        .collect();
    body.extend(inner);
    body.push(store(lanes, v(j), chain_total(r[0], chains)));
    body.push(store(lanes, v(j) + 4usize, chain_total(r[1], chains)));
    vec![
        on_lanes_n(j, width, body),
        set(r[0], lane_sum(lanes, 0)),
        set(r[1], lane_sum(lanes, 4)),
    ]
}

/// The sum of the chains `reg(r, 0..chains)`, added pairwise: `(0 + 1) + (2 + 3)` for four.
pub(super) fn chain_total(r: u32, chains: usize) -> Val {
    let mut level: Vec<Val> = (0..chains).map(|k| Val::Get(reg(r, k))).collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut it = level.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => a + b,
                None => a,
            });
        }
        level = next;
    }
    level.pop().expect("at least one chain")
}

/// A one-trip `Vector` loop over the lane variable `j` (`0..4`): inside, `j` is lane `k`'s
/// own `k`, so serial loops that address `4 * i + j` keep one partial result per lane.
pub(super) fn on_lanes(j: IVar, body: Vec<Stmt>) -> Stmt {
    on_lanes_n(j, 4, body)
}

/// [`on_lanes`] with `lanes` lanes (4: a `Vector` loop, 8: a `Wide` one).
pub(super) fn on_lanes_n(j: IVar, lanes: usize, body: Vec<Stmt>) -> Stmt {
    Stmt::Loop {
        var: j,
        lo: 0usize.into(),
        hi: lanes.into(),
        step: lanes as i64,
        kind: LoopKind::vector(lanes),
        body,
    }
}

/// Independent accumulator pairs of [`plane_stats`]: one pair would chain every vector of a
/// plane through the FMA latency (four cycles a vector on this machine's cores); four keep
/// the FMA units busy instead.
const STATS_CHAINS: usize = 4;

/// Statistics of the `c` planes of `hw` pixels of image `n` in `z`, added to `s` (layout of
/// [`crate::codegen::train_stats`]); the prologue zeroes the sums. The shift is the first pixel
/// of the channel in the first image of the call, which is written before any image's stats.
/// Vector `i` of a plane goes to chain `i % STATS_CHAINS` (the last `hw / 4 % STATS_CHAINS`
/// vectors to chain 0); the chains are added in a fixed order, so results stay deterministic.
fn plane_stats(
    b: &mut KernelBuilder,
    n: IVar,
    z: Buf,
    s: Buf,
    c: usize,
    hw: usize,
) -> (Vec<Stmt>, Vec<Stmt>) {
    let ch0 = b.var();
    let prologue = vec![for_(
        ch0,
        0usize,
        c,
        LoopKind::Serial,
        vec![
            store(s, v(ch0) + c, Val::Const(0.0)),
            store(s, v(ch0) + 2 * c, Val::Const(0.0)),
        ],
    )];
    let (ch, j, i4, k, t) = (b.var(), b.var(), b.var(), b.var(), b.var());
    let (r1, r2, d, e, sh) = (b.reg(), b.reg(), b.reg(), b.reg(), b.reg());
    let lanes = b.local(8);
    let plane = (v(n) * c + v(ch)) * hw;
    let shift = || Val::load(z, (v(N_BEGIN) * c + v(ch)) * hw);
    let vectors = hw / 4;
    let rounds = vectors / STATS_CHAINS;
    let full = vectors * 4;
    let chains = |body: Vec<Stmt>| for_(k, 0usize, STATS_CHAINS, LoopKind::Unroll, body);
    // Adds vector `at` (an index of `plane`'s vectors) to chain `chain`.
    let accumulate = |at: Idx, chain: Idx| {
        vec![
            Stmt::Set {
                reg: reg(d, chain.clone()),
                val: Val::load(z, plane.clone() + at * 4usize + v(j)) - get(sh),
            },
            Stmt::Set {
                reg: reg(r1, chain.clone()),
                val: Val::Get(reg(r1, chain.clone())) + Val::Get(reg(d, chain.clone())),
            },
            Stmt::Set {
                reg: reg(r2, chain.clone()),
                val: Val::fma(
                    Val::Get(reg(d, chain.clone())),
                    Val::Get(reg(d, chain.clone())),
                    Val::Get(reg(r2, chain)),
                ),
            },
        ]
    };
    let mut body = Vec::new();
    if full > 0 {
        body.extend(lane_sums(
            j,
            [r1, r2],
            STATS_CHAINS,
            lanes,
            vec![
                set(sh, shift()),
                for_(
                    i4,
                    0usize,
                    rounds,
                    LoopKind::Serial,
                    vec![chains(accumulate(v(i4) * STATS_CHAINS + v(k), v(k)))],
                ),
                for_(
                    i4,
                    rounds * STATS_CHAINS,
                    vectors,
                    LoopKind::Serial,
                    accumulate(v(i4), 0usize.into()),
                ),
            ],
        ));
    } else {
        body.push(set(r1, Val::Const(0.0)));
        body.push(set(r2, Val::Const(0.0)));
    }
    body.push(for_(
        t,
        full,
        hw,
        LoopKind::Serial,
        vec![
            set(e, Val::load(z, plane.clone() + v(t)) - shift()),
            set(r1, get(r1) + get(e)),
            set(r2, Val::fma(get(e), get(e), get(r2))),
        ],
    ));
    body.push(store(s, v(ch), shift()));
    body.push(store(s, v(ch) + c, Val::load(s, v(ch) + c) + get(r1)));
    body.push(store(
        s,
        v(ch) + 2 * c,
        Val::load(s, v(ch) + 2 * c) + get(r2),
    ));
    (prologue, vec![for_(ch, 0usize, c, LoopKind::Serial, body)])
}

/// Per-feature statistics of `z[n, f]` over the call's images, features on the lanes.
fn feature_stats(b: &mut KernelBuilder, z: Buf, s: Buf, f: usize) -> Vec<Stmt> {
    split(b, 0usize.into(), f.into(), &[4, 1], true, |b, j, _| {
        let n = b.var();
        let (sh, a1, a2, d) = (b.reg(), b.reg(), b.reg(), b.reg());
        vec![
            set(sh, Val::load(z, v(N_BEGIN) * f + v(j))),
            set(a1, Val::Const(0.0)),
            set(a2, Val::Const(0.0)),
            for_(
                n,
                N_BEGIN,
                N_END,
                LoopKind::Serial,
                vec![
                    set(d, Val::load(z, v(n) * f + v(j)) - get(sh)),
                    set(a1, get(a1) + get(d)),
                    set(a2, Val::fma(get(d), get(d), get(a2))),
                ],
            ),
            store(s, v(j), get(sh)),
            store(s, v(j) + f, get(a1)),
            store(s, v(j) + 2 * f, get(a2)),
        ]
    })
}

/// `saved = act(x * scale[c] + shift[c])`, then `out = pool(saved)`, one channel plane at a
/// time so the pool reads the plane while it is in cache.
fn bn_act_pool(
    index: usize,
    c: usize,
    h: usize,
    w: usize,
    a: Activation,
    pool: crate::codegen::Pool2d,
    width: Width,
) -> Kernel {
    let (x, scale, shift, saved, out) = (
        Buf::Param(0),
        Buf::Param(1),
        Buf::Param(2),
        Buf::Param(3),
        Buf::Param(4),
    );
    let (oh, ow) = pool.out_hw(h, w);
    let mut b = KernelBuilder::new();
    b.read_only(&[scale, shift]);
    let body = per_image(&mut b, |b, n| {
        let ch = b.var();
        let plane = v(n) * c + v(ch);
        let base = plane.clone() * (h * w);
        let mut inner = map_lanes(b, h * w, saved, base, width.lanes(), |at| {
            let xv = Val::load(x, plane.clone() * (h * w) + at);
            act(
                Val::fma(xv, Val::load(scale, v(ch)), Val::load(shift, v(ch))),
                a,
            )
        });
        let src = |_, _, ih: Idx, iw, guards| Val::Load {
            buf: saved,
            idx: (plane.clone() * h + ih) * w + iw,
            guards,
        };
        let dst = |_, y: Idx, xx| (out, (plane.clone() * oh + y) * ow + xx);
        inner.extend(pool_plane(
            b,
            &pool,
            (h, w),
            1,
            width.lanes(),
            src,
            dst,
            |_, _, _, _, _| vec![],
        ));
        vec![for_(ch, 0usize, c, LoopKind::Serial, inner)]
    });
    b.finish(format!("k{index}_bn_act_pool"), 5, body)
}

/// Output channels per register block of the conv weight gradient for kernel rows of `kw`
/// taps: `channels x kw` vector accumulators, a `dy` vector per channel and an input vector.
/// Five taps (LeNet) take two channels, ten accumulators; three taps take four, twelve
/// accumulators (against two: a VGG-style 3x3 layer's weight gradient in 0.6 of the time,
/// per-phase medians of eight alternated runs; five or six channels were slower again).
fn grad_w_channels(kw: usize) -> usize {
    (12 / kw).clamp(2, 4)
}

/// Images per tile of the conv weight gradient: every `(co, ci, ky)` block streams the tile's
/// `dy` and input rows, so a tile (LeNet's conv2: 16 images, about 120 KiB) should stay in L2.
pub(crate) const GRAD_W_TILE: usize = 16;

/// The column vectors `lo..hi` (of `full`, four output columns each) whose input columns
/// `4 * ox4 + kx - pw .. + 4` lie inside `0..w` for every tap `kx < kw`; `lo == hi` when
/// there are none. Without padding that is every vector.
fn unguarded_vectors(w: usize, pw: usize, kw: usize, full: usize) -> (usize, usize) {
    // First column >= 0 at kx = 0: 4 * ox4 >= pw.
    let lo = pw.div_ceil(4).min(full);
    // Last column < w at kx = kw - 1: 4 * ox4 + 3 + kw - 1 - pw < w.
    let hi = (w + pw + 1)
        .checked_sub(kw + 3)
        .map_or(0, |room| room.div_ceil(4))
        .min(full);
    (lo, hi.max(lo))
}

/// Whether `ow` output columns leave a tail past the last whole vector of four.
fn has_tail(ow: usize) -> bool {
    !ow.is_multiple_of(4)
}

/// The most floats of carried sums (`5 * taps`: four lanes and a tail per tap) that the
/// tiled weight gradient keeps on the stack: 128 KiB (LeNet's conv2 needs 48 KiB). A larger
/// layer keeps each block's sums in registers over all the call's images instead, since
/// stack arrays sized by the layer overflowed the stack of a worker thread.
pub(crate) const GRAD_W_LOCAL_MAX: usize = 32 * 1024;

/// The conv weight gradient as a reduction over every pixel of every image of the call, a
/// tile of images at a time: for a block of output channels and one kernel row `(ci, ky)`,
/// the `size x kw` accumulators (four pixels on the lanes) stay in registers over the tile's
/// images, rows and column vectors; each loaded `dy` vector feeds `kw` FMAs and each input
/// vector `size`. Columns past the last whole vector are summed in scalar registers. Between
/// tiles the sums wait in stack arrays; at the end the lanes are added in a fixed order, so
/// results are deterministic.
///
/// With column padding or a column tail, each tile's input channel is first copied into a
/// stack array with zero side borders, so that no tap needs a bounds check (a guarded
/// vector load branches per vector and falls back to a gather at the border, which made
/// padded layers five times slower), and a tail column's taps go on the lanes of one vector
/// FMA instead of one scalar FMA each. A layer whose sums would not fit
/// [`GRAD_W_LOCAL_MAX`] runs untiled, each block's accumulators in registers over all the
/// images of the call, and reads the input with guards. Every accumulator sees the same
/// FMAs in the same order in all three forms, so they give the same bits.
fn conv_grad_w(
    index: usize,
    c_in: usize,
    (h, w): (usize, usize),
    c_out: usize,
    [kh, kw]: [usize; 2],
    [ph, pw]: [usize; 2],
) -> Kernel {
    let oh = window_out(h, kh, 1, ph);
    let ow = window_out(w, kw, 1, pw);
    let (x, dy, dw) = (Buf::Param(0), Buf::Param(1), Buf::Param(2));
    let taps = c_out * c_in * kh * kw;
    let mut b = KernelBuilder::new();
    let tiled = 5 * taps <= GRAD_W_LOCAL_MAX;
    let mut body = Vec::new();
    let wp = w + 2 * pw;
    // A layer with column padding, or with a column tail (whose taps then go on the lanes),
    // reads a copy of each tile's input channel.
    let pad_copy =
        tiled && (pw > 0 || has_tail(ow)) && GRAD_W_TILE * h * wp + 4 <= PADDED_LOCAL_MAX;
    // The copy has four floats of slack: a tail vector of taps may read past its last row.
    let padded = pad_copy.then(|| b.local(GRAD_W_TILE * h * wp + 4));
    if let Some(p) = padded {
        // The borders are zeroed once per call; each tile overwrites only the interior.
        body.extend(fill(&mut b, p, GRAD_W_TILE * h * wp + 4));
    }
    // Over the bordered copy, a tail column's taps `kx` go on the lanes (`chunks` vectors of
    // four per kernel row), carried from tile to tile per kernel row in `vtails`.
    let chunks = kw.div_ceil(4);
    let rows_of_taps = c_out * c_in * kh;
    let vtails = (padded.is_some() && has_tail(ow)).then(|| b.local(rows_of_taps * 4 * chunks));
    if let Some(t) = vtails {
        body.extend(fill(&mut b, t, rows_of_taps * 4 * chunks));
    }
    // Per tap: four vector lanes, and a scalar tail sum unless `vtails` holds it, carried
    // from tile to tile; untiled, one block's lanes, parked for the final sum.
    let (lanes, tails) = if tiled {
        let tails = if vtails.is_some() { 1 } else { taps };
        (b.local(4 * taps), b.local(tails))
    } else {
        (b.local(4 * grad_w_channels(kw) * kw), b.local(1))
    };
    if tiled {
        body.extend(fill(&mut b, lanes, 4 * taps));
        if vtails.is_none() {
            body.extend(fill(&mut b, tails, taps));
        }
    }
    let (tile, ci, ky) = (b.var(), b.var(), b.var());
    // The images of a tile, or all of the call's.
    let (first, last) = if tiled {
        (v(tile), (v(tile) + GRAD_W_TILE).min(Idx::Var(N_END)))
    } else {
        (Idx::Var(N_BEGIN), Idx::Var(N_END))
    };
    let full = ow / 4;
    // A short row of column vectors (LeNet's conv2 has two) is unrolled: its loop overhead
    // would cost as much as its ten FMAs.
    let columns = if full <= 4 {
        LoopKind::Unroll
    } else {
        LoopKind::Serial
    };
    let per_ci = split(
        &mut b,
        0usize.into(),
        c_out.into(),
        &[grad_w_channels(kw), 1],
        false,
        |b, co, size| {
            let (n, j, oy, ox4, ox, c, kx) = (
                b.var(),
                b.var(),
                b.var(),
                b.var(),
                b.var(),
                b.var(),
                b.var(),
            );
            let (acc, d, tacc) = (b.reg(), b.reg(), b.reg());
            let at = |c: Idx, kx: Idx| c * kw + kx;
            let slot = (((v(co) + v(c)) * c_in + v(ci)) * kh + v(ky)) * kw + v(kx);
            let unroll = |var, n: usize, body| for_(var, 0usize, n, LoopKind::Unroll, body);
            let each = |body: Vec<Stmt>| unroll(c, size, vec![unroll(kx, kw, body)]);
            // Output rows whose input row oy + ky - ph lies inside the image.
            let oy_lo = Idx::Const(0).max(Idx::from(ph) - v(ky));
            let oy_hi = Idx::from(oh).min(Idx::from(h + ph) - v(ky));
            let dyrow = |c: Idx| ((v(n) * c_out + v(co) + c) * oh + v(oy)) * ow;
            // The input at output column `col` under tap `kx`: from the bordered copy, or
            // from the input with a guard when `guarded` (only columns near the row's ends
            // can fall into the padding).
            let x_at = |col: Idx, guarded: bool| match padded {
                Some(p) => Val::load(
                    p,
                    ((v(n) - first.clone()) * h + v(oy) + v(ky) - ph) * wp + col,
                ),
                None => {
                    let col = col - pw;
                    Val::Load {
                        buf: x,
                        idx: ((v(n) * c_in + v(ci)) * h + v(oy) + v(ky) - ph) * w + col.clone(),
                        guards: if guarded {
                            Guard::padded(col, pw, w)
                        } else {
                            vec![]
                        },
                    }
                }
            };
            // The images, and their rows.
            let rows = |inner: Vec<Stmt>| {
                for_(
                    n,
                    first.clone(),
                    last.clone(),
                    LoopKind::Serial,
                    vec![for_(
                        oy,
                        oy_lo.clone(),
                        oy_hi.clone(),
                        LoopKind::Serial,
                        inner,
                    )],
                )
            };
            let mut per_row = Vec::new();
            if full > 0 {
                let step = |guarded: bool| {
                    vec![
                        unroll(
                            c,
                            size,
                            vec![Stmt::Set {
                                reg: reg(d, v(c)),
                                val: Val::load(dy, dyrow(v(c)) + v(ox4) * 4usize + v(j)),
                            }],
                        ),
                        unroll(
                            kx,
                            kw,
                            vec![unroll(
                                c,
                                size,
                                vec![Stmt::Set {
                                    reg: reg(acc, at(v(c), v(kx))),
                                    // The input load is the second factor: `vfmadd231ps`
                                    // takes it straight from memory.
                                    val: Val::fma(
                                        Val::Get(reg(d, v(c))),
                                        x_at(v(ox4) * 4usize + v(j) + v(kx), guarded),
                                        Val::Get(reg(acc, at(v(c), v(kx)))),
                                    ),
                                }],
                            )],
                        ),
                    ]
                };
                // Reading the input itself, the vectors whose every tap lies inside the row
                // need no guard; they still run in column order.
                let (inner_lo, inner_hi) = if padded.is_some() {
                    (0, full)
                } else {
                    unguarded_vectors(w, pw, kw, full)
                };
                let mut column_loops = Vec::new();
                for (lo, hi, guarded) in [
                    (0, inner_lo, true),
                    (inner_lo, inner_hi, false),
                    (inner_hi, full, true),
                ] {
                    if lo < hi {
                        column_loops.push(for_(ox4, lo, hi, columns, step(guarded)));
                    }
                }
                let (start, park) = if tiled {
                    let lane = slot.clone() * 4usize + v(j);
                    (Val::load(lanes, lane.clone()), lane)
                } else {
                    (Val::Const(0.0), at(v(c), v(kx)) * 4usize + v(j))
                };
                per_row.push(on_lanes(
                    j,
                    vec![
                        each(vec![Stmt::Set {
                            reg: reg(acc, at(v(c), v(kx))),
                            val: start,
                        }]),
                        rows(column_loops),
                        each(vec![store(
                            lanes,
                            park,
                            Val::Get(reg(acc, at(v(c), v(kx)))),
                        )]),
                    ],
                ));
            }
            let tail_start = if tiled {
                Val::load(tails, slot.clone())
            } else {
                Val::Const(0.0)
            };
            if let (Some(t), Some(p)) = (vtails, padded) {
                // `tv[c][k]` lane `j` is tap `4k + j`'s sum: the same FMAs, in the same
                // order, as a scalar sum per tap, one vector FMA doing up to four of them.
                let trow = ((v(co) + v(c)) * c_in + v(ci)) * kh + v(ky);
                let tslot = |k: usize| trow.clone() * (4 * chunks) + k * 4 + v(j);
                let tv = |k: usize| reg(tacc, v(c) * chunks + k);
                let per_chunk =
                    |f: &dyn Fn(usize) -> Stmt| unroll(c, size, (0..chunks).map(f).collect());
                let xrow = ((v(n) - first.clone()) * h + v(oy) + v(ky) - ph) * wp;
                per_row.push(on_lanes(
                    j,
                    vec![
                        per_chunk(&|k| Stmt::Set {
                            reg: tv(k),
                            val: Val::load(t, tslot(k)),
                        }),
                        rows(vec![for_(
                            ox,
                            full * 4,
                            ow,
                            LoopKind::Serial,
                            vec![per_chunk(&|k| Stmt::Set {
                                reg: tv(k),
                                val: Val::fma(
                                    Val::load(dy, dyrow(v(c)) + v(ox)),
                                    Val::load(p, xrow.clone() + v(ox) + k * 4 + v(j)),
                                    Val::Get(tv(k)),
                                ),
                            })],
                        )]),
                        per_chunk(&|k| store(t, tslot(k), Val::Get(tv(k)))),
                    ],
                ));
            } else if full * 4 < ow {
                per_row.push(each(vec![Stmt::Set {
                    reg: reg(tacc, at(v(c), v(kx))),
                    val: tail_start.clone(),
                }]));
                per_row.push(rows(vec![for_(
                    ox,
                    full * 4,
                    ow,
                    LoopKind::Serial,
                    vec![each(vec![Stmt::Set {
                        reg: reg(tacc, at(v(c), v(kx))),
                        val: Val::fma(
                            Val::load(dy, dyrow(v(c)) + v(ox)),
                            x_at(v(ox) + v(kx), true),
                            Val::Get(reg(tacc, at(v(c), v(kx)))),
                        ),
                    }])],
                )]));
            } else if !tiled {
                per_row.push(each(vec![Stmt::Set {
                    reg: reg(tacc, at(v(c), v(kx))),
                    val: tail_start,
                }]));
            }
            if tiled {
                if full * 4 < ow && vtails.is_none() {
                    per_row.push(each(vec![store(
                        tails,
                        slot.clone(),
                        Val::Get(reg(tacc, at(v(c), v(kx)))),
                    )]));
                }
            } else {
                // This block is done: its taps' totals, the lanes added as the tiled form
                // adds them.
                let lane = |l: usize| Val::load(lanes, at(v(c), v(kx)) * 4usize + l);
                let lanes_total = if full > 0 {
                    ((lane(0) + lane(1)) + (lane(2) + lane(3)))
                        + Val::Get(reg(tacc, at(v(c), v(kx))))
                } else {
                    Val::Const(0.0) + Val::Get(reg(tacc, at(v(c), v(kx))))
                };
                per_row.push(each(vec![store(dw, slot.clone(), lanes_total)]));
            }
            let per_ky = for_(ky, 0usize, kh, LoopKind::Serial, per_row);
            if padded.is_some() {
                vec![per_ky]
            } else {
                // Without a copy to share, the block's `dy` rows serve every input channel.
                vec![for_(ci, 0usize, c_in, LoopKind::Serial, vec![per_ky])]
            }
        },
    );
    let per_tile = if let Some(p) = padded {
        // This tile's images of input channel `ci`, into the bordered copy.
        let (n, y) = (b.var(), b.var());
        let copy = copy_row(
            &mut b,
            w,
            (x, ((v(n) * c_in + v(ci)) * h + v(y)) * w),
            (p, ((v(n) - first.clone()) * h + v(y)) * wp + pw),
        );
        let mut s = vec![for_(
            n,
            first.clone(),
            last.clone(),
            LoopKind::Serial,
            vec![for_(y, 0usize, h, LoopKind::Serial, copy)],
        )];
        s.extend(per_ci);
        // Each input channel is copied once per tile and serves every block.
        vec![for_(ci, 0usize, c_in, LoopKind::Serial, s)]
    } else {
        per_ci
    };
    if tiled {
        body.push(Stmt::Loop {
            var: tile,
            lo: Idx::Var(N_BEGIN),
            hi: Idx::Var(N_END),
            step: GRAD_W_TILE as i64,
            kind: LoopKind::Serial,
            body: per_tile,
        });
        let (r, kx) = (b.var(), b.var());
        let tap = |e: Idx, tail: Val| {
            let lane = |l: usize| Val::load(lanes, e.clone() * 4usize + l);
            let total = ((lane(0) + lane(1)) + (lane(2) + lane(3))) + tail;
            store(dw, e, total)
        };
        body.push(match vtails {
            // Per kernel row, its taps' tail sums on the lanes of `chunks` vectors.
            Some(t) => for_(
                r,
                0usize,
                rows_of_taps,
                LoopKind::Serial,
                vec![for_(
                    kx,
                    0usize,
                    kw,
                    LoopKind::Unroll,
                    vec![tap(
                        v(r) * kw + v(kx),
                        Val::load(t, v(r) * (4 * chunks) + v(kx)),
                    )],
                )],
            ),
            None => for_(
                r,
                0usize,
                taps,
                LoopKind::Serial,
                vec![tap(v(r), Val::load(tails, v(r)))],
            ),
        });
    } else {
        body.extend(per_tile);
    }
    b.finish(format!("k{index}_conv_grad_w"), 3, body)
}

/// Output features per register tile of the dense weight gradient.
const FEATURES: usize = 4;

/// The dense weight gradient as a register-blocked GEMM `dyᵀ · x`: a tile of `FEATURES`
/// output features by two vectors of input features accumulates over the call's images.
fn dense_grad_w(index: usize, in_f: usize, out_f: usize) -> Kernel {
    let (x, dy, dw) = (Buf::Param(0), Buf::Param(1), Buf::Param(2));
    let mut b = KernelBuilder::new();
    let body = split(
        &mut b,
        0usize.into(),
        out_f.into(),
        &[FEATURES, 1],
        false,
        |b, o, feats| {
            split(
                b,
                0usize.into(),
                in_f.into(),
                &[8, 4, 1],
                true,
                |b, i, step| {
                    let nv = (step / 4).max(1);
                    let (acc, xr, dr) = (b.reg(), b.reg(), b.reg());
                    let (f, u, n) = (b.var(), b.var(), b.var());
                    let acc_at = || reg(acc, v(f) * nv + v(u));
                    let unroll = |var, n: usize, body| for_(var, 0usize, n, LoopKind::Unroll, body);
                    let col = v(i) + v(u) * 4usize;
                    vec![
                        unroll(
                            f,
                            feats,
                            vec![unroll(
                                u,
                                nv,
                                vec![Stmt::Set {
                                    reg: acc_at(),
                                    val: Val::Const(0.0),
                                }],
                            )],
                        ),
                        for_(
                            n,
                            N_BEGIN,
                            N_END,
                            LoopKind::Serial,
                            vec![
                                unroll(
                                    u,
                                    nv,
                                    vec![Stmt::Set {
                                        reg: reg(xr, v(u)),
                                        val: Val::load(x, v(n) * in_f + col.clone()),
                                    }],
                                ),
                                unroll(
                                    f,
                                    feats,
                                    vec![
                                        set(dr, Val::load(dy, v(n) * out_f + v(o) + v(f))),
                                        unroll(
                                            u,
                                            nv,
                                            vec![Stmt::Set {
                                                reg: acc_at(),
                                                val: Val::fma(
                                                    get(dr),
                                                    Val::Get(reg(xr, v(u))),
                                                    Val::Get(acc_at()),
                                                ),
                                            }],
                                        ),
                                    ],
                                ),
                            ],
                        ),
                        unroll(
                            f,
                            feats,
                            vec![unroll(
                                u,
                                nv,
                                vec![store(
                                    dw,
                                    (v(o) + v(f)) * in_f + col.clone(),
                                    Val::Get(acc_at()),
                                )],
                            )],
                        ),
                    ]
                },
            )
        },
    );
    b.finish(format!("k{index}_dense_grad_w"), 3, body)
}
