//! JIT checks of Cranelift's 256-bit vectors (`F32X8`, and `I32X8` for bit tricks) on x86-64
//! with AVX2 and FMA, which the vendored, patched `cranelift-codegen` provides (see
//! `vendor/README.md`). Every operation bnc's vector loops may emit on these types is built
//! with `cranelift-frontend`, compiled for the host like `codegen::jit` does, run on varied
//! data, and compared lane by lane, bit for bit, with scalar Rust. The register-pressure tests
//! keep more `F32X8` values live than there are YMM registers and check, in the disassembly,
//! that spills and reloads move all 256 bits.
//!
//! Each test prints a message and passes if the host lacks AVX2 or FMA.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    AbiParam, BlockArg, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value, types,
};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};

const F32X8: Type = types::F32X8;
const I32X8: Type = types::I32X8;
const F32X4: Type = types::F32X4;
const PTR: Type = types::I64;

fn host_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

macro_rules! require_avx2 {
    () => {
        if !host_has_avx2() {
            eprintln!("skipped: the host lacks AVX2/FMA, which 256-bit vectors need");
            return;
        }
    };
}

/// The optimization levels every test compiles at: bnc's (`none`) and Cranelift's default
/// optimizing pipeline (`speed`), whose rewrites must not produce unsupported forms.
const OPT_LEVELS: [&str; 2] = ["none", "speed"];

fn host_isa(opt_level: &str, avx2: bool) -> OwnedTargetIsa {
    let mut flags = settings::builder();
    flags.set("opt_level", opt_level).unwrap();
    flags.set("is_pic", "false").unwrap();
    let mut isa = cranelift_native::builder().unwrap();
    if !avx2 {
        isa.set("has_avx2", "false").unwrap();
    }
    isa.finish(settings::Flags::new(flags)).unwrap()
}

/// One compiled function; dropping it frees the code.
struct Jit {
    module: Option<JITModule>,
    code: *const u8,
    disasm: String,
}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the code pointer is not used after the `Jit` is dropped.
            unsafe { m.free_memory() };
        }
    }
}

/// Compiles a function of `params` (no results) whose body `body` builds from the entry
/// block's parameters; it must end the function itself (`return_`).
fn try_compile(
    opt_level: &str,
    avx2: bool,
    params: &[Type],
    body: impl FnOnce(&mut FunctionBuilder, &[Value]),
) -> Result<Jit, String> {
    let mut module = JITModule::new(JITBuilder::with_isa(
        host_isa(opt_level, avx2),
        default_libcall_names(),
    ));
    let mut ctx = module.make_context();
    for &p in params {
        ctx.func.signature.params.push(AbiParam::new(p));
    }
    let id = module
        .declare_function("f", Linkage::Local, &ctx.func.signature)
        .unwrap();
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let args = b.block_params(entry).to_vec();
    body(&mut b, &args);
    let config = module.target_config();
    b.finalize(config);
    ctx.set_disasm(true);
    let res = module.define_function(id, &mut ctx);
    if let Err(e) = res {
        let text = format!("{e:?}");
        // SAFETY: nothing was finalized.
        unsafe { module.free_memory() };
        return Err(text);
    }
    let disasm = ctx.compiled_code().unwrap().vcode.clone().unwrap();
    module.clear_context(&mut ctx);
    module.finalize_definitions().unwrap();
    let code = module.get_finalized_function(id);
    Ok(Jit {
        module: Some(module),
        code,
        disasm,
    })
}

fn compile(
    opt_level: &str,
    params: &[Type],
    body: impl FnOnce(&mut FunctionBuilder, &[Value]),
) -> Jit {
    try_compile(opt_level, true, params, body).unwrap()
}

impl Jit {
    fn call2(&self, a: *const f32, b: *mut f32) {
        // SAFETY: compiled with two pointer parameters; the tests pass valid buffers.
        let f: extern "C" fn(*const f32, *mut f32) = unsafe { std::mem::transmute(self.code) };
        f(a, b)
    }
    fn call3(&self, a: *const f32, b: *const f32, c: *mut f32) {
        // SAFETY: as `call2`, three pointers.
        let f: extern "C" fn(*const f32, *const f32, *mut f32) =
            unsafe { std::mem::transmute(self.code) };
        f(a, b, c)
    }
    fn call4(&self, a: *const f32, b: *const f32, c: *const f32, d: *mut f32) {
        // SAFETY: as `call2`, four pointers.
        let f: extern "C" fn(*const f32, *const f32, *const f32, *mut f32) =
            unsafe { std::mem::transmute(self.code) };
        f(a, b, c, d)
    }
}

fn flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

fn lanes() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

fn load(b: &mut FunctionBuilder, ty: Type, p: Value, offset: i32) -> Value {
    b.ins().load(ty, flags(), p, offset)
}

fn store(b: &mut FunctionBuilder, v: Value, p: Value, offset: i32) {
    b.ins().store(flags(), v, p, offset);
}

/// Varied values: zeros of both signs, small and large magnitudes, infinities, and
/// pseudo-random values of both signs (no NaN: which NaN an operation returns is not fixed).
fn data(n: usize, seed: u32) -> Vec<f32> {
    const SPECIAL: [f32; 16] = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        3.5,
        -2.25,
        1e30,
        -1e30,
        1e-30,
        65504.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.1,
        -7.0,
    ];
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            if (s >> 8).is_multiple_of(3) {
                SPECIAL[(s as usize >> 12) % SPECIAL.len()]
            } else {
                let m = (s >> 9) as f32 / (1u32 << 23) as f32 * 200.0 - 100.0;
                m * if i % 5 == 0 { 1e-3 } else { 1.0 }
            }
        })
        .collect()
}

/// Asserts bit-for-bit equality, lane by lane.
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: lane {i}: got {g:e}, want {w:e}"
        );
    }
}

#[test]
fn load_store_unaligned_offsets() {
    require_avx2!();
    for opt in OPT_LEVELS {
        // (load offset, store offset) in bytes: aligned, 4-byte, and odd multiples.
        let pairs = [(0, 0), (4, 36), (12, 8), (100, 68)];
        let jit = compile(opt, &[PTR, PTR], |b, a| {
            for (k, &(lo, so)) in pairs.iter().enumerate() {
                // One access through `p + offset` addressing, one through a computed pointer.
                let v = load(b, F32X8, a[0], lo);
                store(b, v, a[1], so + 128 * k as i32);
                let p = b.ins().iadd_imm_s(a[0], i64::from(lo));
                let v = load(b, F32X8, p, 0);
                let q = b
                    .ins()
                    .iadd_imm_s(a[1], i64::from(so) + 128 * k as i64 + 64);
                store(b, v, q, 0);
            }
            b.ins().return_(&[]);
        });
        let src = data(64, 1);
        let mut dst = vec![0f32; 128 * pairs.len() / 4 + 32];
        jit.call2(src.as_ptr(), dst.as_mut_ptr());
        for (k, &(lo, so)) in pairs.iter().enumerate() {
            let (lo, so) = (lo as usize / 4, so as usize / 4 + 32 * k);
            assert_bits(&dst[so..so + 8], &src[lo..lo + 8], "load/store");
            assert_bits(&dst[so + 16..so + 24], &src[lo..lo + 8], "computed address");
        }
        assert!(jit.disasm.contains("vmovups"), "{}", jit.disasm);
        assert!(jit.disasm.contains("%ymm"), "{}", jit.disasm);
        assert_vzeroupper_before_ret(&jit.disasm);
    }
}

/// Asserts that a function using 256-bit vectors clears the upper halves before returning.
fn assert_vzeroupper_before_ret(disasm: &str) {
    let lines: Vec<&str> = disasm.lines().map(str::trim).collect();
    let rets: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == "retq").collect();
    assert!(!rets.is_empty(), "{disasm}");
    for r in rets {
        assert!(
            lines[..r].iter().rev().take(8).any(|l| *l == "vzeroupper"),
            "no vzeroupper before a return:\n{disasm}"
        );
    }
}

#[test]
fn arithmetic_matches_scalar() {
    require_avx2!();
    type Op = fn(&mut FunctionBuilder, Value, Value) -> Value;
    type Scalar = fn(f32, f32) -> f32;
    let ops: [(&str, Op, Scalar); 4] = [
        ("fadd", |b, x, y| b.ins().fadd(x, y), |x, y| x + y),
        ("fsub", |b, x, y| b.ins().fsub(x, y), |x, y| x - y),
        ("fmul", |b, x, y| b.ins().fmul(x, y), |x, y| x * y),
        ("fdiv", |b, x, y| b.ins().fdiv(x, y), |x, y| x / y),
    ];
    const N: usize = 8 * 6;
    for opt in OPT_LEVELS {
        for (name, op, scalar) in ops {
            let jit = compile(opt, &[PTR, PTR, PTR], |b, a| {
                for k in 0..N / 8 {
                    let off = 32 * k as i32;
                    let x = load(b, F32X8, a[0], off);
                    let y = load(b, F32X8, a[1], off);
                    // Half the vectors with a register operand only (the other operand
                    // used twice cannot be folded into the instruction as a memory operand).
                    let r = if k % 2 == 0 {
                        op(b, x, y)
                    } else {
                        let r = op(b, x, y);
                        let _ = op(b, y, y);
                        r
                    };
                    store(b, r, a[2], off);
                }
                b.ins().return_(&[]);
            });
            for seed in 0..4 {
                let (x, y) = (data(N, seed * 2 + 10), data(N, seed * 2 + 11));
                let mut out = vec![0f32; N];
                jit.call3(x.as_ptr(), y.as_ptr(), out.as_mut_ptr());
                let want: Vec<f32> = x.iter().zip(&y).map(|(&x, &y)| scalar(x, y)).collect();
                assert_bits(&out, &want, name);
            }
            let mnemonic = format!("v{}ps", &name[1..]);
            assert!(
                jit.disasm.contains(&mnemonic) && jit.disasm.contains("%ymm"),
                "{name}: {}",
                jit.disasm
            );
        }
    }
}

#[test]
fn fma_accumulates_into_the_addend() {
    require_avx2!();
    const N: usize = 8 * 4;
    for opt in OPT_LEVELS {
        let jit = compile(opt, &[PTR, PTR, PTR, PTR], |b, a| {
            for k in 0..N / 8 {
                let off = 32 * k as i32;
                let x = load(b, F32X8, a[0], off);
                let y = load(b, F32X8, a[1], off);
                let z = load(b, F32X8, a[2], off);
                let r = b.ins().fma(x, y, z);
                store(b, r, a[3], off);
            }
            b.ins().return_(&[]);
        });
        for seed in 0..4 {
            let x = data(N, 3 * seed + 20);
            let y = data(N, 3 * seed + 21);
            let z = data(N, 3 * seed + 22);
            let mut out = vec![0f32; N];
            jit.call4(x.as_ptr(), y.as_ptr(), z.as_ptr(), out.as_mut_ptr());
            let want: Vec<f32> = (0..N).map(|i| x[i].mul_add(y[i], z[i])).collect();
            assert_bits(&out, &want, "fma");
        }
        assert!(
            jit.disasm
                .lines()
                .any(|l| l.contains("vfmadd231ps") && l.contains("%ymm")),
            "{}",
            jit.disasm
        );
    }
}

#[test]
fn fma_accumulators_share_a_broadcast_weight() {
    require_avx2!();
    // The shape of bnc's register-blocked loops: one broadcast weight, several accumulators.
    const ACC: usize = 6;
    for opt in OPT_LEVELS {
        let jit = compile(opt, &[PTR, PTR, PTR], |b, a| {
            let w = b.ins().load(types::F32, flags(), a[1], 0);
            let w = b.ins().splat(F32X8, w);
            for k in 0..ACC {
                let off = 32 * k as i32;
                let acc = load(b, F32X8, a[2], off);
                let x = load(b, F32X8, a[0], off);
                let r = b.ins().fma(x, w, acc);
                store(b, r, a[2], off);
            }
            b.ins().return_(&[]);
        });
        let x = data(8 * ACC, 30);
        let w = [-1.75f32];
        let mut acc = data(8 * ACC, 31);
        let want: Vec<f32> = (0..8 * ACC).map(|i| x[i].mul_add(w[0], acc[i])).collect();
        jit.call3(x.as_ptr(), w.as_ptr(), acc.as_mut_ptr());
        assert_bits(&acc, &want, "fma with a broadcast weight");
        assert!(jit.disasm.contains("vbroadcastss"), "{}", jit.disasm);
        assert!(jit.disasm.contains("vfmadd231ps"), "{}", jit.disasm);
    }
}

#[test]
fn splat_and_constants() {
    require_avx2!();
    let consts: [f32; 8] = [1.0, -2.0, 0.5, -0.0, 1e20, -3.25, 7.0, f32::MIN_POSITIVE];
    for opt in OPT_LEVELS {
        let jit = compile(opt, &[PTR, PTR], |b, a| {
            // Splat of a loaded scalar (a sinkable load), of a scalar in a register, and of a
            // constant; a 32-byte constant; a zero constant.
            let x = b.ins().load(types::F32, flags(), a[0], 0);
            let s = b.ins().splat(F32X8, x);
            store(b, s, a[1], 0);
            let x2 = b.ins().fadd(x, x);
            let s = b.ins().splat(F32X8, x2);
            store(b, s, a[1], 32);
            let c = b.ins().f32const(2.5);
            let s = b.ins().splat(F32X8, c);
            store(b, s, a[1], 64);
            let bytes: Vec<u8> = consts.iter().flat_map(|v| v.to_le_bytes()).collect();
            let handle = b.func.dfg.constants.insert(ConstantData::from(bytes));
            let v = b.ins().vconst(F32X8, handle);
            store(b, v, a[1], 96);
            let handle = b
                .func
                .dfg
                .constants
                .insert(ConstantData::from(vec![0u8; 32]));
            let v = b.ins().vconst(F32X8, handle);
            store(b, v, a[1], 128);
            b.ins().return_(&[]);
        });
        for x in [-3.0f32, 0.0, 1e-30, 12345.678] {
            let mut out = vec![f32::NAN; 40];
            jit.call2([x].as_ptr(), out.as_mut_ptr());
            assert_bits(&out[0..8], &[x; 8], "splat of a load");
            assert_bits(&out[8..16], &[x + x; 8], "splat of a register");
            assert_bits(&out[16..24], &[2.5; 8], "splat of a constant");
            assert_bits(&out[24..32], &consts, "vconst");
            assert_bits(&out[32..40], &[0.0; 8], "zero vconst");
        }
    }
}

#[test]
fn compare_and_select() {
    require_avx2!();
    const N: usize = 8 * 4;
    for opt in OPT_LEVELS {
        // out: [lt mask | gt mask | blend by lt | min pattern | max pattern] per vector.
        let jit = compile(opt, &[PTR, PTR, PTR], |b, a| {
            for k in 0..N / 8 {
                let off = 32 * k as i32;
                let o = 5 * off;
                let x = load(b, F32X8, a[0], off);
                let y = load(b, F32X8, a[1], off);
                let lt = b.ins().fcmp(FloatCC::LessThan, x, y);
                let gt = b.ins().fcmp(FloatCC::GreaterThan, x, y);
                store(b, lt, a[2], o);
                store(b, gt, a[2], o + 32);
                // Select by `gt` between other values than the compared ones: a blend.
                let gtf = b.ins().bitcast(F32X8, lanes(), gt);
                let xy = b.ins().fmul(x, y);
                let sel = b.ins().bitselect(gtf, xy, y);
                store(b, sel, a[2], o + 64);
                // bnc's min and max shapes (`vminps` / `vmaxps`).
                let ltf = b.ins().bitcast(F32X8, lanes(), lt);
                let min = b.ins().bitselect(ltf, x, y);
                store(b, min, a[2], o + 96);
                let ylt = b.ins().fcmp(FloatCC::LessThan, y, x);
                let yltf = b.ins().bitcast(F32X8, lanes(), ylt);
                let max = b.ins().bitselect(yltf, x, y);
                store(b, max, a[2], o + 128);
            }
            b.ins().return_(&[]);
        });
        for seed in 0..4 {
            let mut x = data(N, 2 * seed + 40);
            let mut y = data(N, 2 * seed + 41);
            // Comparisons and selects with NaNs, and equal operands.
            x[3] = f32::NAN;
            y[9] = f32::NAN;
            x[12] = y[12];
            x[13] = 0.0;
            y[13] = -0.0;
            let mut out = vec![0f32; 5 * N];
            jit.call3(x.as_ptr(), y.as_ptr(), out.as_mut_ptr());
            let mask = |c: bool| f32::from_bits(if c { u32::MAX } else { 0 });
            for k in 0..N / 8 {
                for l in 0..8 {
                    let (i, o) = (8 * k + l, 40 * k + l);
                    let (xi, yi) = (x[i], y[i]);
                    let what = format!("lane {i}: x={xi}, y={yi}");
                    let sel = if xi > yi { xi * yi } else { yi };
                    let min = if xi < yi { xi } else { yi };
                    let max = if yi < xi { xi } else { yi };
                    for (got, want, op) in [
                        (out[o], mask(xi < yi), "lt"),
                        (out[o + 8], mask(xi > yi), "gt"),
                        (out[o + 16], sel, "select by gt"),
                        (out[o + 24], min, "min"),
                        (out[o + 32], max, "max"),
                    ] {
                        assert_eq!(got.to_bits(), want.to_bits(), "{op}, {what}");
                    }
                }
            }
        }
        let d = &jit.disasm;
        assert!(d.contains("vcmpps") && d.contains("vblendvps"), "{d}");
        assert!(d.contains("vminps") && d.contains("vmaxps"), "{d}");
    }
}

#[test]
fn bitselect_by_an_arbitrary_mask_and_bitwise_ops() {
    require_avx2!();
    const N: usize = 8 * 2;
    for opt in OPT_LEVELS {
        // out per vector: [bitselect F32X8 | bitselect I32X8 | band | bor | bxor (F32X8) |
        //                  band | bor | bxor (I32X8)]
        let jit = compile(opt, &[PTR, PTR, PTR, PTR], |b, a| {
            for k in 0..N / 8 {
                let off = 32 * k as i32;
                let o = 8 * off;
                let x = load(b, F32X8, a[0], off);
                let y = load(b, F32X8, a[1], off);
                let m = load(b, I32X8, a[2], off);
                let mf = b.ins().bitcast(F32X8, lanes(), m);
                let sel = b.ins().bitselect(mf, x, y);
                store(b, sel, a[3], o);
                let xi = b.ins().bitcast(I32X8, lanes(), x);
                let yi = b.ins().bitcast(I32X8, lanes(), y);
                let sel = b.ins().bitselect(m, xi, yi);
                store(b, sel, a[3], o + 32);
                let r = b.ins().band(x, y);
                store(b, r, a[3], o + 64);
                let r = b.ins().bor(x, y);
                store(b, r, a[3], o + 96);
                let r = b.ins().bxor(x, y);
                store(b, r, a[3], o + 128);
                let r = b.ins().band(xi, m);
                store(b, r, a[3], o + 160);
                let r = b.ins().bor(yi, m);
                store(b, r, a[3], o + 192);
                let r = b.ins().bxor(xi, yi);
                store(b, r, a[3], o + 224);
            }
            b.ins().return_(&[]);
        });
        let x = data(N, 50);
        let y = data(N, 51);
        let m: Vec<f32> = (0..N as u32)
            .map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9) ^ 0x0F0F_00FF))
            .collect();
        let mut out = vec![0f32; 8 * N];
        jit.call4(x.as_ptr(), y.as_ptr(), m.as_ptr(), out.as_mut_ptr());
        for i in 0..N {
            let (xb, yb, mb) = (x[i].to_bits(), y[i].to_bits(), m[i].to_bits());
            let o = 64 * (i / 8) + i % 8;
            let sel = (xb & mb) | (yb & !mb);
            let want = [
                sel,
                sel,
                xb & yb,
                xb | yb,
                xb ^ yb,
                xb & mb,
                yb | mb,
                xb ^ yb,
            ];
            for (j, w) in want.iter().enumerate() {
                assert_eq!(out[o + 8 * j].to_bits(), *w, "lane {i}, result {j}");
            }
        }
        let d = &jit.disasm;
        for m in ["vandps", "vandnps", "vorps", "vxorps"] {
            assert!(d.contains(m), "{m}: {d}");
        }
    }
}

#[test]
fn integer_lanes_add_shift_and_bitcast() {
    require_avx2!();
    const N: usize = 8 * 2;
    for opt in OPT_LEVELS {
        // 2^n the way bnc's exp builds it: ((n + 127) << 23) as the bits of an f32; and
        // iadd of two vectors, and shifts by 0, 31 and 35 (which shifts by 35 mod 32 = 3).
        let jit = compile(opt, &[PTR, PTR, PTR], |b, a| {
            let bias: Vec<u8> = (0..8).flat_map(|_| 127i32.to_le_bytes()).collect();
            let bias = b.func.dfg.constants.insert(ConstantData::from(bias));
            let bias = b.ins().vconst(I32X8, bias);
            for k in 0..N / 8 {
                let off = 32 * k as i32;
                let o = 5 * off;
                let n = load(b, I32X8, a[0], off);
                let e = b.ins().iadd(n, bias);
                let e = b.ins().ishl_imm_s(e, 23);
                let p = b.ins().bitcast(F32X8, lanes(), e);
                store(b, p, a[2], o);
                let xf = load(b, F32X8, a[1], off);
                let xi = b.ins().bitcast(I32X8, lanes(), xf);
                let s = b.ins().iadd(n, xi);
                store(b, s, a[2], o + 32);
                for (j, sh) in [0i64, 31, 35].into_iter().enumerate() {
                    let amt = b.ins().iconst(types::I32, sh);
                    let r = b.ins().ishl(xi, amt);
                    store(b, r, a[2], o + 64 + 32 * j as i32);
                }
            }
            b.ins().return_(&[]);
        });
        let n: Vec<i32> = (0..N as i32).map(|i| (i * 37) % 250 - 126).collect();
        let x = data(N, 60);
        let mut out = vec![0f32; 5 * N];
        jit.call3(n.as_ptr().cast(), x.as_ptr(), out.as_mut_ptr());
        for i in 0..N {
            let o = 40 * (i / 8) + i % 8;
            let xb = x[i].to_bits();
            assert_eq!(out[o], 2f32.powi(n[i]), "2^{}", n[i]);
            let sum = (n[i] as u32).wrapping_add(xb);
            assert_eq!(out[o + 8].to_bits(), sum, "iadd, lane {i}");
            assert_eq!(out[o + 16].to_bits(), xb, "shift by 0, lane {i}");
            assert_eq!(out[o + 24].to_bits(), xb << 31, "shift by 31, lane {i}");
            assert_eq!(out[o + 32].to_bits(), xb << 3, "shift by 35, lane {i}");
        }
        let d = &jit.disasm;
        assert!(d.contains("vpaddd") && d.contains("vpslld"), "{d}");
    }
}

#[test]
fn extractlane_every_lane_and_a_lane_sum() {
    require_avx2!();
    for opt in OPT_LEVELS {
        let jit = compile(opt, &[PTR, PTR], |b, a| {
            let v = load(b, F32X8, a[0], 0);
            // A value computed in registers, so that the lanes come from a register.
            let v = b.ins().fadd(v, v);
            let mut sum = None;
            for lane in 0..8u8 {
                let x = b.ins().extractlane(v, lane);
                b.ins().store(flags(), x, a[1], 4 * i32::from(lane));
                sum = Some(match sum {
                    None => x,
                    Some(s) => b.ins().fadd(s, x),
                });
            }
            b.ins().store(flags(), sum.unwrap(), a[1], 32);
            b.ins().return_(&[]);
        });
        for seed in 0..4 {
            let x: Vec<f32> = data(8, 70 + seed)
                .into_iter()
                .map(|v| if v.is_finite() { v } else { 1.5 })
                .collect();
            let mut out = vec![f32::NAN; 9];
            jit.call2(x.as_ptr(), out.as_mut_ptr());
            let doubled: Vec<f32> = x.iter().map(|v| v + v).collect();
            assert_bits(&out[..8], &doubled, "extractlane");
            let sum = doubled[1..].iter().fold(doubled[0], |s, v| s + v);
            assert_bits(&out[8..], &[sum], "lane sum");
        }
        assert!(jit.disasm.contains("vextractf128"), "{}", jit.disasm);
    }
}

/// The spill and reload lines of a disassembly: moves between a register and the stack.
fn stack_moves(disasm: &str) -> Vec<&str> {
    disasm
        .lines()
        .filter(|l| l.contains("(%rsp)") && l.contains("mm"))
        .collect()
}

/// Asserts that the function spilled and reloaded vector registers, all as 256-bit moves.
fn assert_256_bit_spills(disasm: &str) {
    let moves = stack_moves(disasm);
    let spills = moves
        .iter()
        .filter(|l| l.trim_start().starts_with("vmovups %ymm"))
        .count();
    let reloads = moves
        .iter()
        .filter(|l| l.trim_start().starts_with("vmovups") && l.trim_end().contains("), %ymm"))
        .count();
    assert!(spills > 0 && reloads > 0, "no 256-bit spills:\n{disasm}");
    for l in &moves {
        assert!(
            l.contains("%ymm"),
            "a vector spill or reload narrower than 256 bits: {l}"
        );
    }
    // Register-to-register copies of vectors must move all 256 bits too.
    for l in disasm.lines() {
        let t = l.trim_start();
        for narrow in ["movdqa ", "movaps ", "vmovaps %xmm", "vmovdqa %xmm"] {
            assert!(!t.starts_with(narrow), "a 128-bit vector move: {l}");
        }
    }
}

/// Compiles `r_i = v_i * v_(i+1) + v_(i+7)` over `count` vectors of type `ty`, all loaded
/// before any is stored so that they are live at once, runs it and checks every lane; returns
/// the compiled function for its disassembly.
fn live_vectors(opt: &str, ty: Type, count: usize, seed: u32) -> Jit {
    let (lanes, bytes) = (ty.lane_count() as usize, ty.bytes() as i32);
    let jit = compile(opt, &[PTR, PTR], |b, a| {
        let v: Vec<Value> = (0..count)
            .map(|i| load(b, ty, a[0], bytes * i as i32))
            .collect();
        let r: Vec<Value> = (0..count)
            .map(|i| {
                let p = b.ins().fmul(v[i], v[(i + 1) % count]);
                b.ins().fadd(p, v[(i + 7) % count])
            })
            .collect();
        for (i, &r) in r.iter().enumerate().rev() {
            store(b, r, a[1], bytes * i as i32);
        }
        b.ins().return_(&[]);
    });
    let x = data(lanes * count, seed);
    let mut out = vec![0f32; lanes * count];
    jit.call2(x.as_ptr(), out.as_mut_ptr());
    let want: Vec<f32> = (0..lanes * count)
        .map(|i| {
            let (vi, l) = (i / lanes, i % lanes);
            x[i] * x[lanes * ((vi + 1) % count) + l] + x[lanes * ((vi + 7) % count) + l]
        })
        .collect();
    assert_bits(&out, &want, &format!("{count} live {ty} vectors"));
    jit
}

#[test]
fn spills_keep_all_256_bits_straight_line() {
    require_avx2!();
    for opt in OPT_LEVELS {
        let jit = live_vectors(opt, F32X8, 32, 80);
        if opt == "none" {
            assert_256_bit_spills(&jit.disasm);
        }
    }
}

#[test]
fn spills_in_a_loop_with_24_accumulators() {
    require_avx2!();
    const ACC: usize = 24;
    const ITERS: usize = 5;
    for opt in OPT_LEVELS {
        // acc_i += x[k][i] * w[k] for k in 0..ITERS, the accumulators carried as block
        // parameters around the loop: more live vectors than YMM registers across a back edge.
        let jit = compile(opt, &[PTR, PTR, PTR], |b, a| {
            let (xs, ws, out) = (a[0], a[1], a[2]);
            let header = b.create_block();
            let body = b.create_block();
            let exit = b.create_block();
            for _ in 0..ACC {
                b.append_block_param(header, F32X8);
                b.append_block_param(exit, F32X8);
            }
            b.append_block_param(header, PTR); // x pointer
            b.append_block_param(header, PTR); // w pointer
            b.append_block_param(header, types::I64); // iterations left
            let init: Vec<Value> = (0..ACC)
                .map(|i| load(b, F32X8, out, 32 * i as i32))
                .collect();
            let n = b.ins().iconst(types::I64, ITERS as i64);
            let mut args: Vec<_> = init.iter().map(|&v| v.into()).collect();
            args.extend([xs, ws, n].map(BlockArg::from));
            b.ins().jump(header, &args);

            b.switch_to_block(header);
            let p = b.block_params(header).to_vec();
            let (accs, xp, wp, left) = (&p[..ACC], p[ACC], p[ACC + 1], p[ACC + 2]);
            let acc_args: Vec<_> = accs.iter().map(|&v| v.into()).collect();
            b.ins().brif(left, body, &[], exit, &acc_args);

            b.switch_to_block(body);
            let w = b.ins().load(types::F32, flags(), wp, 0);
            let w = b.ins().splat(F32X8, w);
            let mut next: Vec<_> = (0..ACC)
                .map(|i| {
                    let x = load(b, F32X8, xp, 32 * i as i32);
                    b.ins().fma(x, w, accs[i]).into()
                })
                .collect();
            let xp2 = b.ins().iadd_imm_s(xp, 32 * ACC as i64);
            let wp2 = b.ins().iadd_imm_s(wp, 4);
            let left2 = b.ins().iadd_imm_s(left, -1);
            next.extend([xp2, wp2, left2].map(BlockArg::from));
            b.ins().jump(header, &next);

            b.switch_to_block(exit);
            let res = b.block_params(exit).to_vec();
            for (i, &r) in res.iter().enumerate() {
                store(b, r, out, 32 * i as i32);
            }
            b.ins().return_(&[]);
            b.seal_all_blocks();
        });
        let x = data(8 * ACC * ITERS, 90);
        let w: Vec<f32> = data(ITERS, 91)
            .into_iter()
            .map(|v| {
                if v.is_finite() {
                    v.clamp(-4.0, 4.0)
                } else {
                    0.5
                }
            })
            .collect();
        let mut acc = data(8 * ACC, 92);
        let mut want = acc.clone();
        for k in 0..ITERS {
            for (i, a) in want.iter_mut().enumerate() {
                *a = x[8 * ACC * k + i].mul_add(w[k], *a);
            }
        }
        jit.call3(x.as_ptr(), w.as_ptr(), acc.as_mut_ptr());
        assert_bits(&acc, &want, "24 accumulators");
        assert_256_bit_spills(&jit.disasm);
        assert_vzeroupper_before_ret(&jit.disasm);
    }
}

#[test]
fn mixed_f32x4_and_f32x8() {
    require_avx2!();
    const V: usize = 12;
    for opt in OPT_LEVELS {
        // 12 F32X8, 12 F32X4 and a few F32 values live at once (spilled), crosswise combined:
        // r8_i = v8_i * v8_(i+1) + v8_(i+5), r4_i = v4_i * v4_(i+1) + v4_(i+5), and a scalar
        // from lane i % 4 of r4_i and lane i % 8 of r8_i.
        let jit = compile(opt, &[PTR, PTR, PTR], |b, a| {
            let v8: Vec<Value> = (0..V)
                .map(|i| load(b, F32X8, a[0], 32 * i as i32))
                .collect();
            let v4: Vec<Value> = (0..V)
                .map(|i| load(b, F32X4, a[1], 16 * i as i32))
                .collect();
            let mut outs = Vec::new();
            for i in 0..V {
                let p = b.ins().fmul(v8[i], v8[(i + 1) % V]);
                let r8 = b.ins().fadd(p, v8[(i + 5) % V]);
                let p = b.ins().fmul(v4[i], v4[(i + 1) % V]);
                let r4 = b.ins().fadd(p, v4[(i + 5) % V]);
                let e4 = b.ins().extractlane(r4, (i % 4) as u8);
                let e8 = b.ins().extractlane(r8, (i % 8) as u8);
                let s = b.ins().fadd(e4, e8);
                outs.push((r8, r4, s));
            }
            for (i, &(r8, r4, s)) in outs.iter().enumerate().rev() {
                let o = 52 * i as i32;
                store(b, r8, a[2], o);
                store(b, r4, a[2], o + 32);
                b.ins().store(flags(), s, a[2], o + 48);
            }
            b.ins().return_(&[]);
        });
        let x8 = data(8 * V, 100);
        let x4 = data(4 * V, 101);
        let mut out = vec![0f32; 13 * V];
        jit.call3(x8.as_ptr(), x4.as_ptr(), out.as_mut_ptr());
        for i in 0..V {
            let r8: Vec<f32> = (0..8)
                .map(|l| x8[8 * i + l] * x8[8 * ((i + 1) % V) + l] + x8[8 * ((i + 5) % V) + l])
                .collect();
            let r4: Vec<f32> = (0..4)
                .map(|l| x4[4 * i + l] * x4[4 * ((i + 1) % V) + l] + x4[4 * ((i + 5) % V) + l])
                .collect();
            let o = 13 * i;
            assert_bits(&out[o..o + 8], &r8, "F32X8 result");
            assert_bits(&out[o + 8..o + 12], &r4, "F32X4 result");
            assert_bits(&out[o + 12..o + 13], &[r4[i % 4] + r8[i % 8]], "scalar");
        }
        if opt == "none" {
            assert_256_bit_spills(&jit.disasm);
        }
    }
}

#[test]
fn f32x4_code_is_unchanged_without_wide_vectors() {
    require_avx2!();
    // A function with no 256-bit value keeps upstream's 128-bit spills and moves.
    let jit = live_vectors("none", F32X4, 24, 110);
    let moves = stack_moves(&jit.disasm);
    assert!(!moves.is_empty(), "{}", jit.disasm);
    assert!(
        moves
            .iter()
            .all(|l| l.contains("movdqu") && l.contains("%xmm")),
        "{}",
        jit.disasm
    );
    assert!(!jit.disasm.contains("%ymm"), "{}", jit.disasm);
    assert!(!jit.disasm.contains("vzeroupper"), "{}", jit.disasm);
}

#[test]
fn without_avx2_wide_vectors_are_unsupported() {
    // Compiling only: the target ISA lacks AVX2 whatever the host has.
    let err = try_compile("none", false, &[PTR, PTR], |b, a| {
        let v = load(b, F32X8, a[0], 0);
        store(b, v, a[1], 0);
        b.ins().return_(&[]);
    })
    .err()
    .expect("F32X8 without AVX2 must not compile");
    assert!(err.contains("Unexpected SSA-value type: f32x8"), "{err}");
}

// Lane moves: bnc's x86-specific instructions `x86_pairsum256`, `x86_pairdup256`,
// `x86_lowhalf256` and `x86_highhalf256` (vendored `cranelift-codegen-meta`).

/// NaNs with distinct payloads, quiet and signaling, of both signs: which one an operation
/// returns shows the operand order, and a lane move must keep every bit.
const NANS: [u32; 4] = [0x7FC0_0001, 0xFFC1_2345, 0x7F80_0001, 0xFF80_7F00];

/// `data`, with some lanes replaced by the NaNs of `NANS`.
fn data_with_nans(n: usize, seed: u32) -> Vec<f32> {
    let mut v = data(n, seed);
    for (i, x) in v.iter_mut().enumerate() {
        let k = i.wrapping_mul(7).wrapping_add(seed as usize) % 11;
        if k < NANS.len() {
            *x = f32::from_bits(NANS[k]);
        }
    }
    v
}

/// `x + y` as x86's `addss`/`vaddps` computes it: a NaN operand, the first one if both are,
/// is returned quieted; otherwise the IEEE sum (Rust's `+`, which rounds once).
fn x86_fadd(x: f32, y: f32) -> f32 {
    const QUIET: u32 = 0x0040_0000;
    if x.is_nan() {
        f32::from_bits(x.to_bits() | QUIET)
    } else if y.is_nan() {
        f32::from_bits(y.to_bits() | QUIET)
    } else {
        x + y
    }
}

/// Asserts that every line of the disassembly containing `mnemonic` has a YMM operand and
/// that there is at least one.
fn assert_ymm_instruction(disasm: &str, mnemonic: &str) {
    let lines: Vec<&str> = disasm
        .lines()
        .map(str::trim)
        .filter(|l| l.split_whitespace().next() == Some(mnemonic))
        .collect();
    assert!(!lines.is_empty(), "no {mnemonic}:\n{disasm}");
    for l in lines {
        assert!(l.contains("%ymm"), "{mnemonic} without a YMM operand: {l}");
    }
}

#[test]
fn pairsum256_adds_adjacent_pairs() {
    require_avx2!();
    const GROUPS: usize = 4;
    for opt in OPT_LEVELS {
        // out[8k..8k+8] = pair sums of x[16k..16k+16]; the first and third groups from loads
        // used once, the others from values also stored unchanged (in registers).
        let jit = compile(opt, &[PTR, PTR], |b, a| {
            for k in 0..GROUPS {
                let off = 64 * k as i32;
                let lo = load(b, F32X8, a[0], off);
                let hi = load(b, F32X8, a[0], off + 32);
                let s = b.ins().x86_pairsum256(lo, hi);
                store(b, s, a[1], 32 * k as i32);
                if k % 2 == 1 {
                    store(b, hi, a[1], 32 * (GROUPS + k) as i32);
                    store(b, lo, a[1], 32 * (GROUPS + k - 1) as i32);
                }
            }
            b.ins().return_(&[]);
        });
        for seed in 0..6 {
            let x = if seed < 3 {
                data(16 * GROUPS, 120 + seed)
            } else {
                data_with_nans(16 * GROUPS, 120 + seed)
            };
            let mut out = vec![0f32; 16 * GROUPS];
            jit.call2(x.as_ptr(), out.as_mut_ptr());
            let want: Vec<f32> = (0..8 * GROUPS)
                .map(|i| x86_fadd(x[2 * i], x[2 * i + 1]))
                .collect();
            assert_bits(&out[..8 * GROUPS], &want, "pair sums");
            for k in (1..GROUPS).step_by(2) {
                let (o, i) = (8 * (GROUPS + k - 1), 16 * k);
                assert_bits(&out[o..o + 16], &x[i..i + 16], "operands kept");
            }
        }
        // Sums that round (1 + eps/2 is a tie, to 1) or cancel exactly (1e8 - 1e8).
        let x: Vec<f32> = (0..16 * GROUPS)
            .map(|i| match i % 4 {
                0 => 1.0,
                1 => f32::EPSILON / 2.0,
                2 => 1e8,
                _ => -1e8,
            })
            .collect();
        let mut out = vec![0f32; 16 * GROUPS];
        jit.call2(x.as_ptr(), out.as_mut_ptr());
        for (i, s) in out[..8 * GROUPS].iter().enumerate() {
            assert_eq!(s.to_bits(), (x[2 * i] + x[2 * i + 1]).to_bits(), "lane {i}");
        }
        let d = &jit.disasm;
        assert_ymm_instruction(d, "vshufps");
        assert_ymm_instruction(d, "vaddps");
        assert_ymm_instruction(d, "vpermpd");
        assert_eq!(d.matches("vshufps").count(), 2 * GROUPS, "{d}");
        assert_eq!(d.matches("vpermpd").count(), GROUPS, "{d}");
        assert!(
            d.contains("$0x88") && d.contains("$0xdd") && d.contains("$0xd8"),
            "{d}"
        );
        assert_vzeroupper_before_ret(d);
    }
}

#[test]
fn pairdup256_duplicates_each_lane() {
    require_avx2!();
    for opt in OPT_LEVELS {
        // out[0..8]: from a 16-byte load used once (sunk into `vpmovzxdq`);
        // out[8..16]: from a load also stored unchanged (in a register), at out[16..20];
        // out[24..32]: from a computed F32X4 (x + x).
        let jit = compile(opt, &[PTR, PTR], |b, a| {
            let x = load(b, F32X4, a[0], 0);
            let d = b.ins().x86_pairdup256(x);
            store(b, d, a[1], 0);
            let y = load(b, F32X4, a[0], 16);
            let d = b.ins().x86_pairdup256(y);
            store(b, d, a[1], 32);
            store(b, y, a[1], 64);
            let z = load(b, F32X4, a[0], 32);
            let z = b.ins().fadd(z, z);
            let d = b.ins().x86_pairdup256(z);
            store(b, d, a[1], 96);
            b.ins().return_(&[]);
        });
        for seed in 0..6 {
            let x = if seed < 2 {
                data(12, 130 + seed)
            } else {
                data_with_nans(12, 130 + seed)
            };
            let mut out = vec![0f32; 32];
            jit.call2(x.as_ptr(), out.as_mut_ptr());
            let dup = |v: &[f32]| -> Vec<f32> { v.iter().flat_map(|&e| [e, e]).collect() };
            assert_bits(&out[0..8], &dup(&x[0..4]), "pairdup of a sunk load");
            assert_bits(&out[8..16], &dup(&x[4..8]), "pairdup of a register");
            assert_bits(&out[16..20], &x[4..8], "operand kept");
            let doubled: Vec<f32> = x[8..12].iter().map(|&v| x86_fadd(v, v)).collect();
            assert_bits(&out[24..32], &dup(&doubled), "pairdup of a computed value");
        }
        let d = &jit.disasm;
        assert_ymm_instruction(d, "vpmovzxdq");
        assert_ymm_instruction(d, "vmovsldup");
        assert_eq!(d.matches("vpmovzxdq").count(), 3, "{d}");
        assert_eq!(d.matches("vmovsldup").count(), 3, "{d}");
        assert!(
            d.lines()
                .any(|l| l.contains("vpmovzxdq") && l.contains("(%") && l.contains("%ymm")),
            "the 16-byte load is not sunk into vpmovzxdq:\n{d}"
        );
        assert_vzeroupper_before_ret(d);
    }
}

#[test]
fn lowhalf256_and_highhalf256_split_a_vector() {
    require_avx2!();
    for opt in OPT_LEVELS {
        // The halves of a loaded and of a computed F32X8, stored as F32X4, and a reduction
        // step: low + high as F32X4.
        let jit = compile(opt, &[PTR, PTR], |b, a| {
            let v = load(b, F32X8, a[0], 0);
            let lo = b.ins().x86_lowhalf256(v);
            let hi = b.ins().x86_highhalf256(v);
            store(b, lo, a[1], 0);
            store(b, hi, a[1], 16);
            let w = load(b, F32X8, a[0], 32);
            let w = b.ins().fmul(w, v);
            let lo = b.ins().x86_lowhalf256(w);
            let hi = b.ins().x86_highhalf256(w);
            let s = b.ins().fadd(lo, hi);
            store(b, s, a[1], 32);
            store(b, w, a[1], 64);
            b.ins().return_(&[]);
        });
        for seed in 0..6 {
            let x = if seed < 2 {
                data(16, 140 + seed)
            } else {
                data_with_nans(16, 140 + seed)
            };
            let mut out = vec![0f32; 24];
            jit.call2(x.as_ptr(), out.as_mut_ptr());
            assert_bits(&out[0..8], &x[0..8], "halves of a load");
            let w = &out[16..24];
            let want: Vec<f32> = (0..4).map(|i| x86_fadd(w[i], w[i + 4])).collect();
            assert_bits(&out[8..12], &want, "low + high of a computed value");
        }
        // The product itself, checked without NaNs (which NaN a product returns is x86's).
        let x = data(16, 150);
        let mut out = vec![0f32; 24];
        jit.call2(x.as_ptr(), out.as_mut_ptr());
        let w: Vec<f32> = (0..8).map(|i| x[8 + i] * x[i]).collect();
        assert_bits(&out[16..24], &w, "product");
        let d = &jit.disasm;
        assert_eq!(d.matches("vextractf128").count(), 2, "{d}");
        assert_ymm_instruction(d, "vextractf128");
        assert_vzeroupper_before_ret(d);
    }
}

#[test]
fn without_avx2_lane_moves_are_unsupported() {
    type Build = fn(&mut FunctionBuilder, &[Value]);
    let cases: [(&str, Build); 4] = [
        ("x86_pairsum256", |b, a| {
            let lo = load(b, F32X8, a[0], 0);
            let hi = load(b, F32X8, a[0], 32);
            let s = b.ins().x86_pairsum256(lo, hi);
            store(b, s, a[1], 0);
        }),
        ("x86_pairdup256", |b, a| {
            let x = load(b, F32X4, a[0], 0);
            let d = b.ins().x86_pairdup256(x);
            store(b, d, a[1], 0);
        }),
        ("x86_lowhalf256", |b, a| {
            let v = load(b, F32X8, a[0], 0);
            let h = b.ins().x86_lowhalf256(v);
            store(b, h, a[1], 0);
        }),
        ("x86_highhalf256", |b, a| {
            let v = load(b, F32X8, a[0], 0);
            let h = b.ins().x86_highhalf256(v);
            store(b, h, a[1], 0);
        }),
    ];
    for opt in OPT_LEVELS {
        for (name, build) in cases {
            // Compiling only: the target ISA lacks AVX2 whatever the host has.
            let err = try_compile(opt, false, &[PTR, PTR], |b, a| {
                build(b, a);
                b.ins().return_(&[]);
            })
            .err()
            .unwrap_or_else(|| panic!("{name} without AVX2 must not compile"));
            assert!(
                err.contains("Unsupported") && err.contains("Unexpected SSA-value type: f32x8"),
                "{name}: {err}"
            );
        }
    }
}
