//! Direct 2-d convolution with a fused epilogue, written in loop IR. The output width is on
//! the vector lanes (for LeNet's conv1 that is 28 pixels, not 6 channels), two vectors of
//! pixels per trip, and a block of up to five output channels is kept in registers, so each
//! input vector loaded feeds five FMAs and each broadcast weight feeds two. With a pool in the
//! epilogue, the conv rows one pooled row needs are written to a small stack array and then
//! pooled, so only the pooled tensor reaches memory.

use super::{EpiBufs, pool_plane};
use crate::codegen::loop_ir::{
    Buf, Guard, IVar, Idx, Kernel, KernelBuilder, LoopKind, N_BEGIN, N_END, Stmt, Val, for_, reg,
    split, v,
};
use crate::codegen::{Epilogue, KernelSpec, window_out};

/// Output channels per register block: five channels times two F32X4 pixel vectors of
/// accumulators, two input vectors, the weight broadcast and the copy `vfmadd213` needs fit
/// the 16 XMM registers Cranelift allocates; a block of six spilled in the inner loop.
const CHANNEL_BLOCK: usize = 5;

/// The static shape facts the row emitter needs.
struct Conv {
    c_in: usize,
    h: usize,
    w: usize,
    cg: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    ow: usize,
    epi: Epilogue,
}

/// Lowers a `Conv2d` spec.
pub(super) fn conv2d(index: usize, spec: &KernelSpec) -> Kernel {
    conv2d_with(index, spec, "conv2d", 0, |_, _, _| (vec![], vec![]))
}

/// Lowers a `Conv2d` spec with `extra` buffers after the output and the statements of `hook`
/// (given the builder, the image variable and the output buffer) in its epilogue.
pub(super) fn conv2d_with(
    index: usize,
    spec: &KernelSpec,
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
    let conv = Conv {
        c_in,
        h,
        w,
        cg: c_in / groups,
        kernel,
        stride,
        padding,
        ow,
        epi,
    };
    let og = c_out / groups;
    let bufs = EpiBufs::new(&epi);
    let mut b = KernelBuilder::new();
    // Split each group's channels into blocks of nearly equal size (e.g. 16 = 4 + 4 + 4 + 4).
    let blocks = og.div_ceil(CHANNEL_BLOCK);
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
                let pre = |b: &mut KernelBuilder, ph, lo, hi| {
                    // Conv rows oy = ph*sh - pad + ky for the window rows inside the output.
                    let ky = b.var();
                    let oy = v(ph) * pool.stride[0] + v(ky) - pool.padding[0];
                    let to_local = |cb: Idx, x: Idx| (local, (v(ky) * width + cb) * ow + x);
                    let row = conv.row(b, &bufs, v(n), v(g), oy, co0.clone(), size, &to_local);
                    vec![for_(ky, lo, hi, LoopKind::Serial, row)]
                };
                pool_plane(&mut b, &pool, (oh, ow), size, src, dst, pre)
            }
        };
        per_group.push(for_(bi, 0usize, count, LoopKind::Serial, body));
    }
    let (mut body, per_image) = hook(&mut b, n, bufs.out);
    let mut image = vec![for_(g, 0usize, groups, LoopKind::Serial, per_group)];
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
        split(
            b,
            0usize.into(),
            self.ow.into(),
            &[8, 4, 1],
            true,
            |b, ox, step| {
                let nv = (step / 4).max(1);
                let (acc, xr, wr) = (b.reg(), b.reg(), b.reg());
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
                let ix = (v(ox) + v(u) * 4usize) * sw + v(kx) - pad_w;
                let guards = Guard::padded(ix, pad_w, w);
                let x = Val::Load {
                    buf: Buf::Param(0),
                    idx: v(xrow) + v(u) * (4 * sw) + v(kx),
                    guards,
                };
                let wt = Val::load(Buf::Param(1), v(wrow) + v(cb) * (cg * kh * kw) + v(kx));
                // Cranelift's vfmadd213 overwrites its first operand, so the operand with fewer
                // uses (the weight, used by `nv` FMAs rather than `size`) goes first: fewer copies.
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
                // Kernel rows whose input row iy = oy*sh + ky - pad_h lies inside the image.
                let ky_lo = Idx::Const(0).max(Idx::from(pad_h) - oy.clone() * sh);
                let ky_hi = Idx::from(kh).min(Idx::from(h + pad_h) - oy.clone() * sh);
                let chan = (n.clone() * self.c_in + g.clone() * cg + v(ci)) * h;
                let lets = vec![
                    Stmt::Let {
                        var: xrow,
                        idx: (chan + oy.clone() * sh + v(ky) - pad_h) * w + v(ox) * sw - pad_w,
                    },
                    Stmt::Let {
                        var: wrow,
                        idx: (co0.clone() * cg + v(ci)) * (kh * kw) + v(ky) * kw,
                    },
                    taps,
                ];
                let reduce = for_(
                    ci,
                    0usize,
                    cg,
                    LoopKind::Serial,
                    vec![for_(ky, ky_lo, ky_hi, LoopKind::Serial, lets)],
                );
                let out = self.epi_store(
                    bufs,
                    acc_at(),
                    co0.clone() + v(cb),
                    dst(v(cb), v(ox) + v(u) * 4usize),
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
