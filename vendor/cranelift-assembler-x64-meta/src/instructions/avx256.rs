//! bnc patch: VEX.256 (AVX/AVX2/FMA) instructions on YMM registers.
//!
//! Upstream Cranelift 0.135 defines only 128-bit (and EVEX) vector
//! instructions. These are the 256-bit forms bnc's kernels need for `F32X8`
//! (and `I32X8` bit tricks): they mirror the `L128` definitions in the other
//! files with `vex(L256)` and YMM operands. The format names end in `256`
//! (so `vaddps` with format `B256` is `vaddps_b256`).

use crate::dsl::{Customization::*, Feature::*, Inst, Length::*, Location::*};
use crate::dsl::{fmt, inst, r, rw, vex, w};

#[rustfmt::skip] // Keeps instructions on a single line.
pub fn list() -> Vec<Inst> {
    let binop = || [w(ymm1), r(ymm2), r(ymm_m256)];
    let fma_ops = || [rw(ymm1), r(ymm2), r(ymm_m256)];
    vec![
        // Moves: unaligned loads/stores and register-to-register moves.
        inst("vmovups", fmt("A256", [w(ymm1), r(ymm_m256)]), vex(L256)._0f().op(0x10).r(), (_64b | compat) & avx),
        inst("vmovups", fmt("B256", [w(ymm_m256), r(ymm1)]), vex(L256)._0f().op(0x11).r(), (_64b | compat) & avx),
        inst("vmovaps", fmt("A256", [w(ymm1), r(ymm_m256)]), vex(L256)._0f().op(0x28).r(), (_64b | compat) & avx),

        // Broadcast the low lane of an XMM register (AVX2) or a 32-bit load (AVX).
        inst("vbroadcastss", fmt("A_M256", [w(ymm1), r(m32)]), vex(L256)._66()._0f38().w0().op(0x18).r(), (_64b | compat) & avx),
        inst("vbroadcastss", fmt("A_R256", [w(ymm1), r(xmm2)]), vex(L256)._66()._0f38().w0().op(0x18).r(), (_64b | compat) & avx2),

        // Extract the low or high 128 bits.
        inst("vextractf128", fmt("MR256", [w(xmm_m128), r(ymm1), r(imm8)]), vex(L256)._66()._0f3a().w0().op(0x19).r().ib(), (_64b | compat) & avx),

        // Lane moves (for bnc's `x86_pairsum256`, `x86_pairdup256`).
        inst("vshufps", fmt("B256", [w(ymm1), r(ymm2), r(ymm_m256), r(imm8)]), vex(L256)._0f().op(0xC6).r().ib(), (_64b | compat) & avx),
        inst("vpermpd", fmt("A256", [w(ymm1), r(ymm_m256), r(imm8)]), vex(L256)._66()._0f3a().w1().op(0x01).r().ib(), (_64b | compat) & avx2),
        inst("vpmovzxdq", fmt("A256", [w(ymm1), r(xmm_m128)]), vex(L256)._66()._0f38().op(0x35).r(), (_64b | compat) & avx2),
        inst("vmovsldup", fmt("A256", [w(ymm1), r(ymm_m256)]), vex(L256)._f3()._0f().op(0x12).r(), (_64b | compat) & avx),

        // Packed single-precision arithmetic.
        inst("vaddps", fmt("B256", binop()), vex(L256)._0f().op(0x58).r(), (_64b | compat) & avx),
        inst("vsubps", fmt("B256", binop()), vex(L256)._0f().op(0x5C).r(), (_64b | compat) & avx),
        inst("vmulps", fmt("B256", binop()), vex(L256)._0f().op(0x59).r(), (_64b | compat) & avx),
        inst("vdivps", fmt("B256", binop()), vex(L256)._0f().op(0x5E).r(), (_64b | compat) & avx),
        inst("vminps", fmt("B256", binop()), vex(L256)._0f().op(0x5D).r(), (_64b | compat) & avx),
        inst("vmaxps", fmt("B256", binop()), vex(L256)._0f().op(0x5F).r(), (_64b | compat) & avx),

        // Fused multiply-add; see `fma.rs` for the meaning of the digits.
        inst("vfmadd132ps", fmt("A256", fma_ops()), vex(L256)._66()._0f38().w0().op(0x98).r(), (_64b | compat) & fma),
        inst("vfmadd213ps", fmt("A256", fma_ops()), vex(L256)._66()._0f38().w0().op(0xA8).r(), (_64b | compat) & fma),
        inst("vfmadd231ps", fmt("A256", fma_ops()), vex(L256)._66()._0f38().w0().op(0xB8).r(), (_64b | compat) & fma),

        // Comparison into a lane mask, and a blend by a lane mask.
        inst("vcmpps", fmt("B256", [w(ymm1), r(ymm2), r(ymm_m256), r(imm8)]), vex(L256)._0f().op(0xC2).r().ib(), (_64b | compat) & avx),
        inst("vblendvps", fmt("RVMR256", [w(ymm1), r(ymm2), r(ymm_m256), r(ymm3)]), vex(L256)._66()._0f3a().w0().op(0x4A).r().is4(), (_64b | compat) & avx),

        // Bitwise logic (floating-point domain; also used for integer vectors).
        inst("vandps", fmt("B256", binop()), vex(L256)._0f().op(0x54).r(), (_64b | compat) & avx),
        inst("vandnps", fmt("B256", binop()), vex(L256)._0f().op(0x55).r(), (_64b | compat) & avx),
        inst("vorps", fmt("B256", binop()), vex(L256)._0f().op(0x56).r(), (_64b | compat) & avx),
        inst("vxorps", fmt("B256", binop()), vex(L256)._0f().op(0x57).r(), (_64b | compat) & avx),

        // 32-bit integer lanes (AVX2).
        inst("vpaddd", fmt("B256", binop()), vex(L256)._66()._0f().op(0xFE).r(), (_64b | compat) & avx2),
        inst("vpslld", fmt("D256", [w(ymm1), r(ymm2), r(imm8)]), vex(L256)._66()._0f().op(0x72).digit(6).ib(), (_64b | compat) & avx2),

        // Zero the upper halves of all YMM registers (before returning to
        // code that may use legacy SSE encodings).
        inst("vzeroupper", fmt("ZO", []), vex(L128)._0f().op(0x77), (_64b | compat) & avx).custom(Encode),
    ]
}
