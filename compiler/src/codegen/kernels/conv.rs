//! Direct 2-d convolution with a fused epilogue, written in loop IR. The output width is on
//! the vector lanes (for LeNet's conv1 that is 24 pixels, not 6 channels), two or three
//! vectors of pixels per trip, and a block of up to five output channels is kept in
//! registers, so each input vector loaded feeds every channel of the block and each
//! broadcast weight feeds every pixel vector. With a pool in the
//! epilogue, the conv rows one pooled row needs are written to a small stack array and then
//! pooled, so only the pooled tensor reaches memory.

use super::{EpiBufs, UNROLL_ROWS, pool_plane};
use crate::codegen::loop_ir::{
    Buf, Guard, IVar, Idx, Kernel, KernelBuilder, LoopKind, N_BEGIN, N_END, Stmt, Val, for_, reg,
    split_overlapping, split_overlapping_lanes, v,
};
use crate::codegen::{Epilogue, KernelSpec, Width, window_out};

/// Pixel vectors of `lanes` lanes per register block of an output row `ow` pixels wide.
/// F32X4: three where rows are wide enough to fill them (LeNet's conv1, 24 pixels, measured
/// 9% faster than two), else two (conv2's 8-pixel rows would leave three-vector blocks
/// empty). F32X8: as many as the row fills, up to three.
fn pixel_vectors(ow: usize, lanes: usize) -> usize {
    if lanes == 8 {
        (ow / 8).clamp(1, 3)
    } else if ow.is_multiple_of(12) || ow >= 24 {
        3
    } else {
        2
    }
}

/// Output channels per register block: the accumulators (channels x pixel vectors), the
/// input vectors and a weight broadcast must fit the 16 vector registers Cranelift
/// allocates. Five channels by two vectors, or four by three, measured best on LeNet's
/// convs (six by two spilled).
fn channel_block(ow: usize, lanes: usize) -> usize {
    match pixel_vectors(ow, lanes) {
        3 => 4,
        2 => 5,
        _ => 8,
    }
}

/// The largest zero-bordered image copy (in floats) kept on the stack: 64 KiB, well inside
/// the stack of any thread that runs kernels.
pub(crate) const PADDED_LOCAL_MAX: usize = 16 * 1024;

/// The largest pre-broadcast weight table (in floats) kept on the stack: 64 KiB, LeNet's
/// conv2 needs 37.5 KiB.
const SPLATTED_LOCAL_MAX: usize = 16 * 1024;

/// Zero-fills local `buf` of `len` floats.
pub(super) fn fill(b: &mut KernelBuilder, buf: Buf, len: usize) -> Vec<Stmt> {
    split_overlapping(b, len, &[8, 4], |b, i, step| {
        let u = b.var();
        vec![for_(
            u,
            0usize,
            (step / 4).max(1),
            LoopKind::Unroll,
            vec![Stmt::Store {
                buf,
                idx: v(i) + v(u) * 4usize,
                val: Val::Const(0.0),
            }],
        )]
    })
}

/// Copies `w` floats from `src` at `from` to `dst` at `to` (a row into a zero-bordered copy),
/// two vectors at a time, the last vector overlapping the one before when `w` is not a
/// multiple of four.
pub(super) fn copy_row(
    b: &mut KernelBuilder,
    w: usize,
    (src, from): (Buf, Idx),
    (dst, to): (Buf, Idx),
) -> Vec<Stmt> {
    split_overlapping(b, w, &[8, 4], |b, xv, step| {
        let u = b.var();
        let at = v(xv) + v(u) * 4usize;
        vec![for_(
            u,
            0usize,
            (step / 4).max(1),
            LoopKind::Unroll,
            vec![Stmt::Store {
                buf: dst,
                idx: to.clone() + at.clone(),
                val: Val::load(src, from.clone() + at),
            }],
        )]
    })
}

/// The static shape facts the row emitter needs. `h`, `w` and `padding` describe the
/// buffer the taps read (`x`): the input itself, or its zero-bordered copy with no padding.
struct Conv {
    /// Lanes of the row loops' vectors (4 or 8).
    lanes: usize,
    /// What the taps read.
    x: Buf,
    /// Whether `x` holds the whole batch (the input) rather than the current image.
    x_image: bool,
    c_in: usize,
    h: usize,
    w: usize,
    cg: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    ow: usize,
    epi: Epilogue,
    /// The weights, each stored `lanes` times (see [`Val::Splatted`]), if they fit the
    /// stack.
    splatted: Option<Buf>,
}

/// Lowers a `Conv2d` spec.
pub(super) fn conv2d(index: usize, spec: &KernelSpec, width: Width) -> Kernel {
    conv2d_with(index, spec, width, "conv2d", 0, |_, _, _| (vec![], vec![]))
}

/// Lowers a `Conv2d` spec with `extra` buffers after the output and the statements of `hook`
/// (given the builder, the image variable and the output buffer) in its epilogue. Output
/// rows run on vectors of `width` unless the taps need column guards (padding without the
/// bordered copy) or gathers (a column stride), whose per-lane code only `F32X4` loops have.
pub(super) fn conv2d_with(
    index: usize,
    spec: &KernelSpec,
    width: Width,
    name: &str,
    extra: u32,
    mut hook: impl FnMut(&mut KernelBuilder, IVar, Buf) -> (Vec<Stmt>, Vec<Stmt>),
) -> Kernel {
    let KernelSpec::Conv2d {
        c_in,
        h,
        w,
        c_out,
        kernel,
        stride,
        padding,
        groups,
        epi,
    } = *spec
    else {
        unreachable!("conv2d lowers only Conv2d specs")
    };
    let oh = window_out(h, kernel[0], stride[0], padding[0]);
    let ow = window_out(w, kernel[1], stride[1], padding[1]);
    let og = c_out / groups;
    let bufs = EpiBufs::new(&epi);
    let mut b = KernelBuilder::new();
    // An image with column padding, if small enough for the stack, is copied into a local
    // array with zero side borders once per image, so the taps need no bounds checks: a
    // guarded vector load that straddles the border falls back to a per-lane gather. Rows
    // need no copy: the loop over kernel rows already skips rows outside the image.
    let wp = w + 2 * padding[1];
    let pad_copy = padding[1] > 0 && c_in * h * wp <= PADDED_LOCAL_MAX;
    let (x, x_image, cw, cpad) = if pad_copy {
        (b.local(c_in * h * wp), false, wp, [padding[0], 0])
    } else {
        (Buf::Param(0), true, w, padding)
    };
    // The pool reads rows the kernel wrote to a stack array: any width.
    let pool_lanes = width.lanes();
    // Guarded taps and strided columns need per-lane code, which only four lanes have.
    let lanes = if cpad[1] > 0 || stride[1] > 1 {
        4
    } else {
        width.lanes()
    };
    let mut conv = Conv {
        lanes,
        x,
        x_image,
        c_in,
        h,
        w: cw,
        cg: c_in / groups,
        kernel,
        stride,
        padding: cpad,
        ow,
        epi,
        splatted: None,
    };
    // Each weight stored `lanes` times, once per call, so that a vector of it is a plain load.
    let weights = c_out * (c_in / groups) * kernel[0] * kernel[1];
    let mut splat_fill = Vec::new();
    if lanes * weights <= SPLATTED_LOCAL_MAX {
        let table = b.local(lanes * weights);
        let (i, j) = (b.var(), b.var());
        splat_fill.push(for_(
            i,
            0usize,
            weights,
            LoopKind::Serial,
            vec![Stmt::Loop {
                var: j,
                lo: 0usize.into(),
                hi: lanes.into(),
                step: lanes as i64,
                kind: LoopKind::vector(lanes),
                body: vec![Stmt::Store {
                    buf: table,
                    idx: v(i) * lanes + v(j),
                    val: Val::load(Buf::Param(1), v(i)),
                }],
            }],
        ));
        conv.splatted = Some(table);
    }
    // Split each group's channels into blocks of nearly equal size (e.g. 16 = 4 + 4 + 4 + 4).
    let blocks = og.div_ceil(channel_block(ow, lanes));
    let small = og / blocks;
    let classes = [
        (small + 1, og % blocks, 0),
        (small, blocks - og % blocks, (og % blocks) * (small + 1)),
    ];
    let rows = epi.pool.map(|p| p.kernel[0]).unwrap_or(0);
    let local = b.local((rows * (small + 1) * ow).max(1));
    let (n, g) = (b.var(), b.var());
    let mut per_group = Vec::new();
    for (size, count, start) in classes {
        if count == 0 || size == 0 {
            continue;
        }
        let bi = b.var();
        let co0 = v(g) * og + start + v(bi) * size;
        let body = match epi.pool {
            None => {
                let oy = b.var();
                let dst = |cb: Idx, x: Idx| {
                    (
                        bufs.out,
                        ((v(n) * c_out + co0.clone() + cb) * oh + v(oy)) * ow + x,
                    )
                };
                let row = conv.row(&mut b, &bufs, v(n), v(g), v(oy), co0.clone(), size, &dst);
                vec![for_(oy, 0usize, oh, LoopKind::Serial, row)]
            }
            Some(pool) => {
                let (poh, pow) = pool.out_hw(oh, ow);
                let width = small + 1;
                let src = |cb: Idx, ky, _ih, iw: Idx, guards| Val::Load {
                    buf: local,
                    idx: (v(ky) * width + cb) * ow + iw,
                    guards,
                };
                let dst = |cb: Idx, py: Idx, px: Idx| {
                    (
                        bufs.out,
                        ((v(n) * c_out + co0.clone() + cb) * poh + py) * pow + px,
                    )
                };
                let pre = |b: &mut KernelBuilder, ph, lo, hi, kind| {
                    // Conv rows oy = ph*sh - pad + ky for the window rows inside the output.
                    let ky = b.var();
                    let oy = v(ph) * pool.stride[0] + v(ky) - pool.padding[0];
                    let to_local = |cb: Idx, x: Idx| (local, (v(ky) * width + cb) * ow + x);
                    let row = conv.row(b, &bufs, v(n), v(g), oy, co0.clone(), size, &to_local);
                    vec![for_(ky, lo, hi, kind, row)]
                };
                pool_plane(&mut b, &pool, (oh, ow), size, pool_lanes, src, dst, pre)
            }
        };
        per_group.push(for_(bi, 0usize, count, LoopKind::Serial, body));
    }
    let (mut body, per_image) = hook(&mut b, n, bufs.out);
    body.extend(splat_fill);
    let mut image = Vec::new();
    if pad_copy {
        // The border is zeroed once per call; each image overwrites only the interior.
        body.extend(fill(&mut b, x, c_in * h * wp));
        let (c, y) = (b.var(), b.var());
        let copy = copy_row(
            &mut b,
            w,
            (Buf::Param(0), ((v(n) * c_in + v(c)) * h + v(y)) * w),
            (x, (v(c) * h + v(y)) * wp + padding[1]),
        );
        image.push(for_(
            c,
            0usize,
            c_in,
            LoopKind::Serial,
            vec![for_(y, 0usize, h, LoopKind::Serial, copy)],
        ));
    }
    image.push(for_(g, 0usize, groups, LoopKind::Serial, per_group));
    image.extend(per_image);
    body.push(for_(n, N_BEGIN, N_END, LoopKind::Serial, image));
    b.finish(format!("k{index}_{name}"), bufs.params() + extra, body)
}

impl Conv {
    /// One output row `oy` of channels `co0..co0+size` of image `n`, group `g`, with the
    /// epilogue (but not the pool) applied and stored through `dst(channel offset, ox)`.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        b: &mut KernelBuilder,
        bufs: &EpiBufs,
        n: Idx,
        g: Idx,
        oy: Idx,
        co0: Idx,
        size: usize,
        dst: &dyn Fn(Idx, Idx) -> (Buf, Idx),
    ) -> Vec<Stmt> {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [pad_h, pad_w] = self.padding;
        let (h, w, cg) = (self.h, self.w, self.cg);
        let lanes = self.lanes;
        split_overlapping_lanes(
            b,
            self.ow,
            &[lanes * pixel_vectors(self.ow, lanes), lanes],
            lanes,
            |b, ox, step| {
                let nv = (step / lanes).max(1);
                let (acc, xr) = (b.reg(), b.reg());
                let (cb, u, ci, ky, kx, xrow, wrow) = (
                    b.var(),
                    b.var(),
                    b.var(),
                    b.var(),
                    b.var(),
                    b.var(),
                    b.var(),
                );
                let acc_at = || reg(acc, v(cb) * nv + v(u));
                let unroll = |var, n: usize, body| for_(var, 0usize, n, LoopKind::Unroll, body);
                let init = unroll(
                    cb,
                    size,
                    vec![unroll(
                        u,
                        nv,
                        vec![Stmt::Set {
                            reg: acc_at(),
                            val: Val::Const(0.0),
                        }],
                    )],
                );
                // Input column ix = ox*sw + kx - pad_w; only padding can take it out of range.
                let ix = (v(ox) + v(u) * lanes) * sw + v(kx) - pad_w;
                let guards = Guard::padded(ix, pad_w, w);
                let x = Val::Load {
                    buf: self.x,
                    idx: v(xrow) + v(ky) * w + v(u) * (lanes * sw) + v(kx),
                    guards,
                };
                let w_at = v(wrow) + v(ky) * kw + v(cb) * (cg * kh * kw) + v(kx);
                let wt = match self.splatted {
                    Some(table) => Val::Splatted {
                        buf: table,
                        idx: w_at * lanes,
                    },
                    None => Val::load(Buf::Param(1), w_at),
                };
                // One broadcast of each weight feeds the `nv` FMAs of its channel: the vendored
                // Cranelift accumulates with `vfmadd231ps`, which leaves both multiplicands live.
                let wr = b.reg();
                let fma = Val::fma(
                    Val::Get(reg(wr, 0usize)),
                    Val::Get(reg(xr, v(u))),
                    Val::Get(acc_at()),
                );
                let taps = unroll(
                    kx,
                    kw,
                    vec![
                        unroll(
                            u,
                            nv,
                            vec![Stmt::Set {
                                reg: reg(xr, v(u)),
                                val: x,
                            }],
                        ),
                        unroll(
                            cb,
                            size,
                            vec![
                                Stmt::Set {
                                    reg: reg(wr, 0usize),
                                    val: wt,
                                },
                                unroll(
                                    u,
                                    nv,
                                    vec![Stmt::Set {
                                        reg: acc_at(),
                                        val: fma,
                                    }],
                                ),
                            ],
                        ),
                    ],
                );
                // Kernel rows whose input row iy = oy*sh + ky - pad_h lies inside the image. With
                // no row padding that is every row, and the rows unroll: the loop's index
                // arithmetic would otherwise cost as much as a fifth of its FMAs.
                let (ky_lo, ky_hi, ky_kind) = if pad_h == 0 && kh <= UNROLL_ROWS {
                    (Idx::Const(0), Idx::from(kh), LoopKind::Unroll)
                } else {
                    (
                        Idx::Const(0).max(Idx::from(pad_h) - oy.clone() * sh),
                        Idx::from(kh).min(Idx::from(h + pad_h) - oy.clone() * sh),
                        LoopKind::Serial,
                    )
                };
                let image = if self.x_image {
                    n.clone() * self.c_in
                } else {
                    Idx::Const(0)
                };
                let chan = (image + g.clone() * cg + v(ci)) * h;
                // The row bases are bound once per input channel; a kernel row adds a
                // constant offset when the rows unroll, which folds into the addressing.
                let lets = vec![
                    Stmt::Let {
                        var: xrow,
                        idx: (chan + oy.clone() * sh - pad_h) * w + v(ox) * sw - pad_w,
                    },
                    Stmt::Let {
                        var: wrow,
                        idx: (co0.clone() * cg + v(ci)) * (kh * kw),
                    },
                    for_(ky, ky_lo, ky_hi, ky_kind, vec![taps]),
                ];
                let reduce = for_(ci, 0usize, cg, LoopKind::Serial, lets);
                let out = self.epi_store(
                    bufs,
                    acc_at(),
                    co0.clone() + v(cb),
                    dst(v(cb), v(ox) + v(u) * lanes),
                );
                vec![
                    init,
                    reduce,
                    unroll(cb, size, vec![unroll(u, nv, vec![out])]),
                ]
            },
        )
    }

    fn epi_store(
        &self,
        bufs: &EpiBufs,
        acc: crate::codegen::loop_ir::Reg,
        c: Idx,
        (buf, idx): (Buf, Idx),
    ) -> Stmt {
        Stmt::Store {
            buf,
            idx,
            val: bufs.apply(Val::Get(acc), c, self.epi.act),
        }
    }
}
