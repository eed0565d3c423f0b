//! Dense (fully connected) layer with a fused epilogue, as a register-blocked GEMM in loop
//! IR. The weight is packed `[in_f, out_f]` (see `pack_weight`) so output features sit on the
//! vector lanes; a tile of `IMAGES` images by `VECTORS` vectors of features keeps its
//! accumulators in registers, so per input feature it loads `VECTORS` weight vectors and
//! `IMAGES` broadcasts for `IMAGES * VECTORS` FMAs. Leftover images and features fall to
//! smaller tiles and finally scalar code.

use super::EpiBufs;
use crate::codegen::loop_ir::{
    Buf, Kernel, KernelBuilder, LoopKind, N_BEGIN, N_END, Stmt, Val, for_, reg, split, split_lanes,
    step_lanes, v,
};
use crate::codegen::{Epilogue, Width};

/// Images per register tile.
const IMAGES: usize = 4;
/// F32X4 vectors of output features per register tile. Cranelift allocates only 16 XMM
/// registers: 4 x 2 accumulators, 2 weights and the broadcast input fit, while the 4 x 3
/// tile spilled and ran slower (measured again with the vendored `vfmadd231ps` lowering:
/// fc1 0.44 ms against 0.61 ms per 256 images).
const VECTORS: usize = 2;

/// Lowers a `Dense` spec.
pub(super) fn dense(
    index: usize,
    in_f: usize,
    out_f: usize,
    epi: Epilogue,
    width: Width,
) -> Kernel {
    dense_with(index, in_f, out_f, epi, width, "dense", 0, |_, _| vec![])
}

/// Lowers a `Dense` spec with `extra` buffers after the output and the statements of `hook`
/// (given the builder and the output buffer) after the whole batch range is written.
/// Features run on vectors of `width`, then of four (the rest of a multiple of 8), then
/// scalars.
#[allow(clippy::too_many_arguments)]
pub(super) fn dense_with(
    index: usize,
    in_f: usize,
    out_f: usize,
    epi: Epilogue,
    width: Width,
    name: &str,
    extra: u32,
    hook: impl FnOnce(&mut KernelBuilder, Buf) -> Vec<Stmt>,
) -> Kernel {
    let bufs = EpiBufs::new(&epi);
    let mut b = KernelBuilder::new();
    let body = split(
        &mut b,
        N_BEGIN.into(),
        N_END.into(),
        &[IMAGES, 1],
        false,
        |b, n, images| {
            let lanes = width.lanes();
            let steps: &[usize] = if lanes == 8 {
                &[8 * VECTORS, 8, 4, 1]
            } else {
                &[4 * VECTORS, 4, 1]
            };
            split_lanes(
                b,
                0usize.into(),
                out_f.into(),
                steps,
                lanes,
                |b, j, step| {
                    let l = step_lanes(step, lanes);
                    let nv = (step / l).max(1);
                    let (acc, wr, xr) = (b.reg(), b.reg(), b.reg());
                    let (i, u) = (b.var(), b.var());
                    let acc_at = || reg(acc, v(i) * nv + v(u));
                    let unroll = |var, n: usize, body| for_(var, 0usize, n, LoopKind::Unroll, body);
                    let init = unroll(
                        i,
                        images,
                        vec![unroll(
                            u,
                            nv,
                            vec![Stmt::Set {
                                reg: acc_at(),
                                val: Val::Const(0.0),
                            }],
                        )],
                    );
                    let fma = Val::fma(
                        Val::Get(reg(xr, 0usize)),
                        Val::Get(reg(wr, v(u))),
                        Val::Get(acc_at()),
                    );
                    // Four input features per trip halve the loop overhead and the moves Cranelift
                    // inserts to carry accumulators around the back edge.
                    let mut reduce = split(
                        b,
                        0usize.into(),
                        in_f.into(),
                        &[4, 1],
                        false,
                        |b, k0, step| {
                            let kk = b.var();
                            let k = v(k0) + v(kk);
                            let wt = Val::load(Buf::Param(1), k.clone() * out_f + v(j) + v(u) * l);
                            let x = Val::load(Buf::Param(0), (v(n) + v(i)) * in_f + k);
                            vec![unroll(
                                kk,
                                step,
                                vec![
                                    unroll(
                                        u,
                                        nv,
                                        vec![Stmt::Set {
                                            reg: reg(wr, v(u)),
                                            val: wt,
                                        }],
                                    ),
                                    unroll(
                                        i,
                                        images,
                                        vec![
                                            Stmt::Set {
                                                reg: reg(xr, 0usize),
                                                val: x,
                                            },
                                            unroll(
                                                u,
                                                nv,
                                                vec![Stmt::Set {
                                                    reg: acc_at(),
                                                    val: fma.clone(),
                                                }],
                                            ),
                                        ],
                                    ),
                                ],
                            )]
                        },
                    );
                    let mut stmts = vec![init];
                    stmts.append(&mut reduce);
                    let feature = v(j) + v(u) * l;
                    let out = Stmt::Store {
                        buf: bufs.out,
                        idx: (v(n) + v(i)) * out_f + feature.clone(),
                        val: bufs.apply(Val::Get(acc_at()), feature, epi.act),
                    };
                    stmts.push(unroll(i, images, vec![unroll(u, nv, vec![out])]));
                    stmts
                },
            )
        },
    );
    let mut body = body;
    body.extend(hook(&mut b, bufs.out));
    b.finish(format!("k{index}_{name}"), bufs.params() + extra, body)
}
