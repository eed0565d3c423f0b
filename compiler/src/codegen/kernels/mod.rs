//! Lowering of each [`KernelSpec`] to loop IR, plus the pieces kernels share: activations,
//! the bias/scale/shift epilogue, and a pooling plane that reads any per-element source.
//! Specs are validated before they get here, so lowering never fails.

pub(super) mod conv;
mod dense;
mod simple;
pub(super) mod train;
mod train_back;

use super::loop_ir::{
    BinOp, Buf, Guard, IVar, Idx, Kernel, KernelBuilder, LoopKind, Stmt, Val, for_, reg,
    split_lanes, v,
};
use super::{Activation, Epilogue, KernelSpec, Pool2d, PoolKind, Width};

/// Lowers spec number `index` to loop IR for vectors of `width`.
pub(crate) fn lower(index: usize, spec: &KernelSpec, width: Width) -> Kernel {
    match *spec {
        KernelSpec::Conv2d { .. } => conv::conv2d(index, spec, width),
        KernelSpec::Dense { in_f, out_f, epi } => dense::dense(index, in_f, out_f, epi, width),
        KernelSpec::TrainConv2d { .. }
        | KernelSpec::TrainDense { .. }
        | KernelSpec::BnActPool { .. }
        | KernelSpec::ConvGradW { .. }
        | KernelSpec::DenseGradW { .. } => train::lower(index, spec, width),
        KernelSpec::PoolActBack { .. } | KernelSpec::BnBackDx { .. } => {
            train_back::lower(index, spec, width)
        }
        _ => simple::lower(index, spec, width),
    }
}

/// The most kernel or window rows a loop unrolls (LeNet's are 5 and 2); taller ones stay
/// loops, so that a large window cannot blow up the code.
pub(super) const UNROLL_ROWS: usize = 7;

/// The activation `a` applied to `x`.
pub(super) fn act(x: Val, a: Activation) -> Val {
    match a {
        Activation::None => x,
        Activation::Relu => Val::bin(BinOp::Max, x, Val::Const(0.0)),
        Activation::Sigmoid => {
            let e = x.exp_neg();
            Val::bin(BinOp::Div, Val::Const(1.0), e + Val::Const(1.0))
        }
        Activation::Tanh => {
            // tanh x = 1 - 2 / (exp(2x) + 1): saturates to ±1 without inf/inf.
            let e = (x * Val::Const(2.0)).exp();
            Val::Const(1.0) - Val::bin(BinOp::Div, Val::Const(2.0), e + Val::Const(1.0))
        }
    }
}

/// The per-channel buffers of a producer's epilogue, in calling order after the weight.
pub(super) struct EpiBufs {
    pub bias: Option<Buf>,
    pub scale_shift: Option<(Buf, Buf)>,
    pub out: Buf,
}

impl EpiBufs {
    /// Assigns parameter numbers from 2 on (after input and weight).
    pub fn new(epi: &Epilogue) -> EpiBufs {
        let mut next = 2;
        let mut take = || {
            next += 1;
            Buf::Param(next - 1)
        };
        let bias = epi.bias.then(&mut take);
        let scale_shift = epi.scale_shift.then(|| (take(), take()));
        EpiBufs {
            bias,
            scale_shift,
            out: take(),
        }
    }

    /// The number of parameters.
    pub fn params(&self) -> u32 {
        match self.out {
            Buf::Param(i) => i + 1,
            Buf::Local(_) => unreachable!("the output is a parameter"),
        }
    }

    /// Bias, scale/shift and activation applied to `x` of output channel `c`.
    pub fn apply(&self, x: Val, c: Idx, a: Activation) -> Val {
        let mut x = x;
        if let Some(b) = self.bias {
            x = x + Val::load(b, c.clone());
        }
        if let Some((s, t)) = self.scale_shift {
            x = Val::fma(x, Val::load(s, c.clone()), Val::load(t, c));
        }
        act(x, a)
    }
}

/// Pools one `h x w` plane for `chans` channels at once (unrolled). `src(chan, ky, ih, iw,
/// guards)` gives the value at an input position, with its loads under `guards`; `dst(chan,
/// ph, pw)` gives where a pooled value goes. `pre(b, ph, ky_lo, ky_hi)` may emit code at the
/// start of each pooled row, e.g. the producer rows the window reads. The pooled columns run
/// on vectors of `lanes` (4 or 8) in the pair-sum form, on four otherwise.
#[allow(clippy::too_many_arguments)]
pub(super) fn pool_plane(
    b: &mut KernelBuilder,
    pool: &Pool2d,
    (h, w): (usize, usize),
    chans: usize,
    lanes: usize,
    src: impl Fn(Idx, IVar, Idx, Idx, Vec<Guard>) -> Val,
    dst: impl Fn(Idx, Idx, Idx) -> (Buf, Idx),
    pre: impl FnOnce(&mut KernelBuilder, IVar, Idx, Idx, LoopKind) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let (oh, ow) = pool.out_hw(h, w);
    let [kh, kw] = pool.kernel;
    let [sh, sw] = pool.stride;
    let [pad_h, pad_w] = pool.padding;
    let ph = b.var();
    // The window rows inside the input: ih = ph*sh - pad_h + ky in [0, h); without row
    // padding, every row of every window (the rows then unroll, up to `UNROLL_ROWS`).
    let (ky_lo, ky_hi, ky_kind) = if pad_h == 0 && kh <= UNROLL_ROWS {
        (Idx::Const(0), Idx::from(kh), LoopKind::Unroll)
    } else {
        (
            Idx::Const(0).max(Idx::from(pad_h) - v(ph) * sh),
            Idx::from(kh).min(Idx::from(h + pad_h) - v(ph) * sh),
            LoopKind::Serial,
        )
    };
    let mut body = pre(b, ph, ky_lo.clone(), ky_hi.clone(), ky_kind);
    let fill = match pool.kind {
        PoolKind::Avg => 0.0,
        PoolKind::Max => f32::NEG_INFINITY,
    };
    // A 2-wide, stride-2 average window sums each row's pair at once, which a vector
    // reads as two contiguous loads instead of gathering every other element; only that
    // form runs on eight lanes (the others gather or guard per lane).
    let pairs = pool.kind == PoolKind::Avg && kw == 2 && sw == 2 && pad_w == 0;
    let lanes = if pairs { lanes } else { 4 };
    let steps: &[usize] = if lanes == 8 { &[8, 4, 1] } else { &[4, 1] };
    body.extend(split_lanes(
        b,
        0usize.into(),
        ow.into(),
        steps,
        lanes,
        |b, pw, _| {
            let (c, ky, kx) = (b.var(), b.var(), b.var());
            let acc = b.reg();
            let ih = v(ph) * sh + v(ky) - pad_h;
            let iw = v(pw) * sw + v(kx) - pad_w;
            let guards = Guard::padded(iw.clone(), pad_w, w);
            let x = Val::Select {
                guards: guards.clone(),
                a: Box::new(src(v(c), ky, ih.clone(), iw, guards)),
                b: Box::new(Val::Const(fill)),
            };
            let op = if pool.kind == PoolKind::Avg {
                BinOp::Add
            } else {
                BinOp::Max
            };
            let get = Val::Get(reg(acc, v(c)));
            let pair = match pairs.then(|| src(v(c), ky, ih, v(pw) * 2usize, vec![])) {
                Some(Val::Load { buf, idx, guards }) if guards.is_empty() => {
                    Some(Val::PairSum { buf, idx })
                }
                _ => None,
            };
            let row = match pair {
                Some(p) => Stmt::Set {
                    reg: reg(acc, v(c)),
                    val: Val::bin(op, get.clone(), p),
                },
                None => for_(
                    kx,
                    0usize,
                    kw,
                    LoopKind::Unroll,
                    vec![Stmt::Set {
                        reg: reg(acc, v(c)),
                        val: Val::bin(op, get.clone(), x),
                    }],
                ),
            };
            let window = for_(ky, ky_lo.clone(), ky_hi.clone(), ky_kind, vec![row]);
            let result = match pool.kind {
                PoolKind::Max => get,
                PoolKind::Avg if pool.count_include_pad || pool.padding == [0, 0] => {
                    // Every window has kh*kw elements. A power-of-two count divides exactly
                    // as a multiplication, which costs a fraction of a vector division.
                    let n = kh * kw;
                    if n.is_power_of_two() {
                        Val::bin(BinOp::Mul, get, Val::Const(1.0 / n as f32))
                    } else {
                        Val::bin(BinOp::Div, get, Val::Const(n as f32))
                    }
                }
                PoolKind::Avg => {
                    let kx_lo = Idx::Const(0).max(Idx::from(pad_w) - v(pw) * sw);
                    let kx_hi = Idx::from(kw).min(Idx::from(w + pad_w) - v(pw) * sw);
                    let count =
                        Val::FromIdx(ky_hi.clone() - ky_lo.clone()) * Val::FromIdx(kx_hi - kx_lo);
                    Val::bin(BinOp::Div, get, count)
                }
            };
            let (buf, idx) = dst(v(c), v(ph), v(pw));
            vec![for_(
                c,
                0usize,
                chans,
                LoopKind::Unroll,
                vec![
                    Stmt::Set {
                        reg: reg(acc, v(c)),
                        val: Val::Const(fill),
                    },
                    window,
                    Stmt::Store {
                        buf,
                        idx,
                        val: result,
                    },
                ],
            )]
        },
    ));
    vec![for_(ph, 0usize, oh, LoopKind::Serial, body)]
}
