//! Inline `exp` for scalar `f32` and `F32X4` values. Cranelift has no exponential
//! instruction and a libm call per element is several times slower, so this emits the
//! Cephes `expf` scheme: clamp, split `x = n ln2 + r` with a two-constant Cody-Waite
//! reduction, a degree-7 polynomial for `exp(r)` (`1 + r + r^2 P(r)`, `P` of degree 5 in Estrin's scheme) on `|r| <= ln2/2`, and scaling by `2^n` built
//! from exponent bits. The relative error is below 2e-7 on the normal range.
//!
//! The clamp keeps `n` in `-126..=127`, so large inputs saturate to about `1.22e-38` or
//! `1.65e38` instead of producing infinities; the clamp is a compare-and-select that keeps a
//! NaN argument, and the polynomial then carries it to the result.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_frontend::FunctionBuilder;

/// The clamp range of the argument (see the module comment).
pub(crate) const EXP_LO: f32 = -87.3;
/// The upper clamp: `floor(88.0 * log2(e) + 0.5) = 127`, the largest normal exponent.
pub(crate) const EXP_HI: f32 = 88.0;

/// A float constant of type `ty` (scalar or splatted).
pub(crate) fn fconst(b: &mut FunctionBuilder, ty: Type, c: f32) -> Value {
    let s = b.ins().f32const(c);
    if ty.is_vector() {
        b.ins().splat(ty, s)
    } else {
        s
    }
}

/// Emits `exp(x)` for `x` of type `F32` or `F32X4`.
pub(crate) fn exp(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let ity = if ty.is_vector() {
        types::I32X4
    } else {
        types::I32
    };
    let lo = fconst(b, ty, EXP_LO);
    let hi = fconst(b, ty, EXP_HI);
    let x = max(b, x, lo);
    let x = min(b, x, hi);
    // n = floor(x * log2(e) + 1/2), so that r below lies in [-ln2/2, ln2/2].
    let log2e = fconst(b, ty, std::f32::consts::LOG2_E);
    let half = fconst(b, ty, 0.5);
    let t = b.ins().fma(x, log2e, half);
    let n = b.ins().floor(t);
    // r = x - n*ln2 with ln2 split into an exactly representable head and a small tail.
    let c1 = fconst(b, ty, -0.693_359_4);
    let c2 = fconst(b, ty, 2.121_944_4e-4);
    let r = b.ins().fma(n, c1, x);
    let r = b.ins().fma(n, c2, r);
    // P(r) = p0 + p1 r + ... + p5 r^5 (Cephes), evaluated in Estrin's scheme: three
    // independent pairs, then two FMAs, a shorter dependency chain than Horner's six FMAs,
    // which is what bounds an elementwise sigmoid.
    let p = [
        0.5, // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32.
        1.666_666_5e-1,
        4.166_579_6e-2,
        8.333_452e-3,
        1.398_199_9e-3,
        1.987_569_1e-4,
    ];
    let pair = |b: &mut FunctionBuilder, lo: f32, hi: f32| {
        let (lo, hi) = (fconst(b, ty, lo), fconst(b, ty, hi));
        b.ins().fma(hi, r, lo)
    };
    let a01 = pair(b, p[0], p[1]);
    let a23 = pair(b, p[2], p[3]);
    let a45 = pair(b, p[4], p[5]);
    let r2 = b.ins().fmul(r, r);
    let r4 = b.ins().fmul(r2, r2);
    let y = b.ins().fma(a23, r2, a01);
    let y = b.ins().fma(a45, r4, y);
    // exp(r) = 1 + r + r^2 * P(r).
    let one = fconst(b, ty, 1.0);
    let r1 = b.ins().fadd(r, one);
    let y = b.ins().fma(y, r2, r1);
    // 2^n from the exponent field, (n + 127) << 23, reading the integer n off the mantissa of
    // n + 1.5 * 2^23 rather than with a (much longer) saturating conversion.
    let magic = fconst(b, ty, 12_582_912.0);
    let t = b.ins().fadd(n, magic);
    let bits = b.ins().bitcast(ity, lanes(), t);
    let bias = b.ins().iconst(types::I32, 127 - 0x4B40_0000);
    let bias = if ty.is_vector() {
        b.ins().splat(ity, bias)
    } else {
        bias
    };
    let e = b.ins().iadd(bits, bias);
    let e = b.ins().ishl_imm_s(e, 23);
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
