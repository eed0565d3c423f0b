//! Inline `exp` for scalar `f32`, `F32X4` and `F32X8` values. Cranelift has no exponential
//! instruction and a libm call per element is several times slower, so this emits a short
//! scheme tuned for throughput (sigmoid is most of the elementwise work in LeNet): clamp,
//! `n = round(x log2 e)` read off the mantissa of `x log2 e + M` with one FMA (`M` =
//! 1.5·2^23 + 127, so the same bits shifted left by 23 are the float `2^n`), a one-constant
//! reduction `r = x - n ln2`, and a degree-5 minimax polynomial `1 + r + r^2 P(r)` on
//! `|r| <= ln2/2`. The relative error is below 4e-7 on the normal range (the polynomial
//! contributes 1e-7; the one-constant reduction, whose `ln2` is 1.9e-9 off, at most
//! `127 * 1.9e-9 = 2.4e-7`).
//!
//! [`exp_signed`] also evaluates `exp(-x)` without a negation: the reduction runs on `x`
//! and the odd coefficients change sign.
//!
//! The clamp keeps `n` in `-126..=127`, so large inputs saturate to about `1.22e-38` or
//! `1.65e38` instead of producing infinities; the clamp is a compare-and-select that keeps a
//! NaN argument, and the polynomial then carries it to the result.

use std::collections::HashMap;

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{Inst, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// The clamp range of the argument (see the module comment).
pub(crate) const EXP_LO: f32 = -87.3;
/// The upper clamp: `floor(88.0 * log2(e) + 0.5) = 127`, the largest normal exponent.
pub(crate) const EXP_HI: f32 = 88.0;

/// A float constant of type `ty` (scalar or splatted), emitted at the builder's position.
pub(crate) fn fconst(b: &mut FunctionBuilder, ty: Type, c: f32) -> Value {
    let s = b.ins().f32const(c);
    if ty.is_vector() {
        b.ins().splat(ty, s)
    } else {
        s
    }
}

/// Where the vector constants of an expression go. Code is compiled unoptimized, so nothing
/// moves a constant out of a loop afterwards: at the use, every vector costs a broadcast from
/// the constant pool per constant (a dozen per `exp`). With `hoist`, vector constants are
/// emitted once before the jump `Inst` into the loop (a loop without inner loops, so that the
/// registers they hold are only live across short code) and reused from the map.
pub(crate) struct Consts<'a> {
    pub(crate) hoist: Option<(Inst, &'a mut HashMap<u32, Value>)>,
}

impl Consts<'_> {
    /// The constant `c` of type `ty`.
    pub(crate) fn get(&mut self, b: &mut FunctionBuilder, ty: Type, c: f32) -> Value {
        match &mut self.hoist {
            Some((entry, map)) if ty.is_vector() => *map.entry(c.to_bits()).or_insert_with(|| {
                let mut pos = FuncCursor::new(b.func).at_inst(*entry);
                let s = pos.ins().f32const(c);
                pos.ins().splat(ty, s)
            }),
            _ => fconst(b, ty, c),
        }
    }
}

/// Emits `exp(x)` for `x` of type `F32`, `F32X4` or `F32X8`.
pub(crate) fn exp(b: &mut FunctionBuilder, k: &mut Consts, x: Value) -> Value {
    exp_signed(b, k, x, false)
}

/// The minimax coefficients of `P` in `exp(r) = 1 + r + r^2 P(r)` on `|r| <= ln2/2`
/// (relative error 1.05e-7), fitted by iteratively reweighted least squares.
const EXP_P: [f32; 4] = [0.499_992_3, 0.166_671_14, 0.041_890_1, 0.008_312_51];

/// Emits `exp(-x)` if `neg`, else `exp(x)`, for `x` of type `F32`, `F32X4` or `F32X8`.
pub(crate) fn exp_signed(b: &mut FunctionBuilder, k: &mut Consts, x: Value, neg: bool) -> Value {
    let ty = b.func.dfg.value_type(x);
    let ity = ty.as_int();
    let s = if neg { -1.0 } else { 1.0 };
    // Clamp s*x to [EXP_LO, EXP_HI].
    let (lo, hi) = if neg {
        (-EXP_HI, -EXP_LO)
    } else {
        (EXP_LO, EXP_HI)
    };
    let lo = k.get(b, ty, lo);
    let hi = k.get(b, ty, hi);
    let x = max(b, x, lo);
    let x = min(b, x, hi);
    // t = s*x*log2(e) + M rounds s*x*log2(e) to the nearest integer n, held in t's low
    // mantissa bits as n + 127; t - M is n as a float.
    let magic = 12_582_912.0 + 127.0;
    let log2e = k.get(b, ty, s * std::f32::consts::LOG2_E);
    let m = k.get(b, ty, magic);
    let t = b.ins().fma(x, log2e, m);
    let n = b.ins().fsub(t, m);
    // u = x - s*n*ln2, so that r = s*x - n*ln2 = s*u.
    let ln2 = k.get(b, ty, -s * std::f32::consts::LN_2);
    let u = b.ins().fma(n, ln2, x);
    // exp(r) = 1 + s*u + u^2 (p0 + s*p1 u + (p2 + s*p3 u) u^2).
    let pair = |b: &mut FunctionBuilder, k: &mut Consts, lo: f32, hi: f32| {
        let (lo, hi) = (k.get(b, ty, lo), k.get(b, ty, s * hi));
        b.ins().fma(hi, u, lo)
    };
    let a01 = pair(b, k, EXP_P[0], EXP_P[1]);
    let a23 = pair(b, k, EXP_P[2], EXP_P[3]);
    let u2 = b.ins().fmul(u, u);
    let p = b.ins().fma(a23, u2, a01);
    let one = k.get(b, ty, 1.0);
    let lin = if neg {
        b.ins().fsub(one, u)
    } else {
        b.ins().fadd(u, one)
    };
    let y = b.ins().fma(p, u2, lin);
    // 2^n: the low 9 bits of t's integer image are n + 127 (1..=254), the rest of the bits
    // shift out.
    let bits = b.ins().bitcast(ity, lanes(), t);
    let e = b.ins().ishl_imm_s(bits, 23);
    let pow2n = b.ins().bitcast(ty, lanes(), e);
    b.ins().fmul(y, pow2n)
}

fn lanes() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

/// `y` if `x < y`, else `x` (so a NaN in `x` propagates): a compare and a select, where
/// Cranelift's IEEE `fmax` costs a dozen instructions on x64. On vectors the compare is
/// written `x < y` so that Cranelift matches it to one `maxps` (whose second operand, `x`,
/// is what it returns for a NaN); a `y > x` compare became a compare and a blend.
pub(crate) fn max(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let take = b.ins().fcmp(FloatCC::LessThan, x, y);
    if ty.is_vector() {
        let mask = b.ins().bitcast(ty, lanes(), take);
        b.ins().bitselect(mask, y, x)
    } else {
        b.ins().select(take, y, x)
    }
}

/// `1` where `x > 0`, else `0` (NaN gives `0`).
pub(crate) fn positive(b: &mut FunctionBuilder, k: &mut Consts, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let (one, zero) = (k.get(b, ty, 1.0), k.get(b, ty, 0.0));
    let take = b.ins().fcmp(FloatCC::GreaterThan, x, zero);
    if ty.is_vector() {
        let mask = b.ins().bitcast(ty, lanes(), take);
        b.ins().band(mask, one)
    } else {
        b.ins().select(take, one, zero)
    }
}

/// `b` if `b < a`, else `a` (so a NaN in `a` propagates).
pub(crate) fn min(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    pick_if(b, FloatCC::LessThan, x, y)
}

/// `y` if `y cc x`, else `x`.
fn pick_if(b: &mut FunctionBuilder, cc: FloatCC, x: Value, y: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let take = b.ins().fcmp(cc, y, x);
    if ty.is_vector() {
        let mask = b.ins().bitcast(ty, lanes(), take);
        b.ins().bitselect(mask, y, x)
    } else {
        b.ins().select(take, y, x)
    }
}
