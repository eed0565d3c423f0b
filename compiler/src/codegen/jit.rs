//! The JIT module that owns compiled kernels. [`JitKernels::compile`] validates the specs,
//! lowers each to loop IR, emits and compiles them into one Cranelift JIT module for the host
//! CPU (with its FMA/AVX features), and, from [`JitKernels::compile_with_text`], keeps the
//! CLIF text and disassembly for `--emit clif` / `--emit asm`. Dropping it frees the machine code, which Cranelift would
//! otherwise leak.

use cranelift_codegen::ir::{AbiParam, types};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};

use super::loop_ir::Kernel;
use super::{CodegenError, KernelSpec, Width, bounds, emit, kernels, validate};

/// The machine-level signature of every kernel (see the module docs of `codegen`).
type RawKernel = unsafe extern "C" fn(bufs: *const *mut f32, n_begin: i64, n_end: i64);

/// A copyable handle to one compiled kernel. It is `Send + Sync`: the code is read-only and
/// keeps no state, so several threads may call it at once on disjoint batch ranges.
#[derive(Clone, Copy, Debug)]
pub struct KernelFn {
    f: RawKernel,
    params: usize,
}

impl KernelFn {
    /// The number of buffers the kernel expects.
    pub fn buffer_count(&self) -> usize {
        self.params
    }

    /// Runs the kernel on images `n_begin..n_end`.
    ///
    /// # Safety
    /// The [`JitKernels`] this handle came from must still be alive; `bufs` must hold
    /// [`buffer_count`](Self::buffer_count) pointers, in the order of
    /// [`KernelSpec::buffer_names`], each valid for the full batch lengths of
    /// [`KernelSpec::buffer_lens`] (for some batch size `>= n_end`); and no other thread may
    /// write the inputs or the output rows of `n_begin..n_end` during the call.
    pub unsafe fn call(&self, bufs: &[*mut f32], n_begin: usize, n_end: usize) {
        debug_assert_eq!(bufs.len(), self.params);
        // SAFETY: the caller upholds the contract above, which is exactly what the generated
        // code assumes; the pointer has the `RawKernel` signature it was compiled with.
        unsafe { (self.f)(bufs.as_ptr(), n_begin as i64, n_end as i64) }
    }
}

struct Compiled {
    spec: KernelSpec,
    f: KernelFn,
    clif: Option<String>,
    disasm: Option<String>,
}

/// A set of kernels compiled into one JIT module. It owns the machine code; handles from
/// [`kernel`](Self::kernel) must not be called after it is dropped.
pub struct JitKernels {
    /// `None` only transiently inside `Drop`.
    module: Option<JITModule>,
    kernels: Vec<Compiled>,
}

impl std::fmt::Debug for JitKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitKernels")
            .field("kernels", &self.kernels.len())
            .finish()
    }
}

impl Drop for JitKernels {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the code is only reachable through `KernelFn` handles, whose contract
            // forbids calls after the owning `JitKernels` is dropped.
            unsafe { module.free_memory() };
        }
    }
}

fn module_err(index: usize) -> impl Fn(cranelift_module::ModuleError) -> CodegenError {
    move |e| CodegenError::Module {
        index,
        source: Box::new(e),
    }
}

impl JitKernels {
    /// Compiles all `specs` into one module for the host CPU, without keeping the code as
    /// text ([`JitKernels::clif`] and [`JitKernels::disasm`] return `None`).
    pub fn compile(specs: &[KernelSpec]) -> Result<JitKernels, CodegenError> {
        Self::compile_specs(specs, Width::host(), false)
    }

    /// Compiles like [`JitKernels::compile`] (or, if `text`,
    /// [`JitKernels::compile_with_text`]) for vectors of `width` instead of the host's widest
    /// ([`Width::F32x8`] needs a host with AVX2 and FMA).
    pub fn compile_for(
        specs: &[KernelSpec],
        width: Width,
        text: bool,
    ) -> Result<JitKernels, CodegenError> {
        Self::compile_specs(specs, width, text)
    }

    /// Compiles like [`JitKernels::compile`] and keeps each kernel's CLIF and machine code as
    /// text (what `bnc compile --emit clif|asm` prints). Printing them costs about a quarter
    /// of the compile time, so only this variant does.
    pub fn compile_with_text(specs: &[KernelSpec]) -> Result<JitKernels, CodegenError> {
        Self::compile_specs(specs, Width::host(), true)
    }

    fn compile_specs(
        specs: &[KernelSpec],
        width: Width,
        text: bool,
    ) -> Result<JitKernels, CodegenError> {
        for (i, s) in specs.iter().enumerate() {
            validate(i, s)?;
        }
        let lowered = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, kernels::lower(i, s, width)))
            .collect();
        Self::build(lowered, text)
    }

    /// Compiles loop-IR kernels, each paired with the spec whose buffer layout it follows;
    /// keeps their code as text if `text`.
    pub(crate) fn build(
        lowered: Vec<(KernelSpec, Kernel)>,
        text: bool,
    ) -> Result<JitKernels, CodegenError> {
        let mut flags = settings::builder();
        // The optimizer's scheduling spills the register-blocked loops (about 24 vs 40 GFLOP/s
        // measured), and the emitter already folds addresses, so codegen runs unoptimized.
        flags.set("opt_level", "none")?;
        flags.set("is_pic", "false")?;
        let isa = cranelift_native::builder()
            .map_err(CodegenError::UnsupportedHost)?
            .finish(settings::Flags::new(flags))?;
        let module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        // Own the module before anything can fail, so that an error still frees its memory.
        let mut this = JitKernels {
            module: Some(module),
            kernels: Vec::new(),
        };
        let module = this.module.as_mut().expect("set above");
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        // (function, spec, buffer count, CLIF text, machine code text) per kernel.
        type Pending = (FuncId, KernelSpec, u32, Option<String>, Option<String>);
        let mut pending: Vec<Pending> = Vec::new();
        for (i, (spec, kernel)) in lowered.into_iter().enumerate() {
            // Every access in bounds for the spec's buffer lengths (see `bounds`). It walks
            // every access of three images, so it costs more than compiling (LeNet-BN's
            // kernels: about 55 ms against 30 ms in release, 250 ms in a debug build): paid
            // in debug builds only, while the tests run it on every kernel kind and on every
            // kernel of the random graphs.
            if cfg!(debug_assertions) {
                bounds::check(&spec, &kernel)?;
            }
            let ptr = module.target_config().pointer_type();
            ctx.func.signature.params.extend([
                AbiParam::new(ptr),
                AbiParam::new(types::I64),
                AbiParam::new(types::I64),
            ]);
            let id = module
                .declare_function(&kernel.name, Linkage::Local, &ctx.func.signature)
                .map_err(module_err(i))?;
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            emit::emit_kernel(&kernel, &mut b)?;
            b.finalize(module.target_config());
            let clif = text.then(|| ctx.func.display().to_string());
            ctx.set_disasm(text);
            module
                .define_function(id, &mut ctx)
                .map_err(module_err(i))?;
            let disasm = ctx.compiled_code().and_then(|c| c.vcode.clone());
            module.clear_context(&mut ctx);
            pending.push((id, spec, kernel.params, clif, disasm));
        }
        module
            .finalize_definitions()
            .map_err(module_err(usize::MAX))?;
        for (id, spec, params, clif, disasm) in pending {
            let code = module.get_finalized_function(id);
            // SAFETY: `code` is the entry of a finalized function compiled with the host's
            // default (System V) calling convention and the parameters `(ptr, i64, i64)`,
            // which is the ABI of `RawKernel`.
            let f = unsafe { std::mem::transmute::<*const u8, RawKernel>(code) };
            this.kernels.push(Compiled {
                spec,
                f: KernelFn {
                    f,
                    params: params as usize,
                },
                clif,
                disasm,
            });
        }
        Ok(this)
    }

    /// The number of compiled kernels.
    pub fn len(&self) -> usize {
        self.kernels.len()
    }

    /// Whether no kernel was compiled.
    pub fn is_empty(&self) -> bool {
        self.kernels.is_empty()
    }

    /// The callable handle of kernel `i`. Panics if `i >= self.len()`.
    pub fn kernel(&self, i: usize) -> KernelFn {
        self.kernels[i].f
    }

    /// The spec kernel `i` was compiled from. Panics if `i >= self.len()`.
    pub fn spec(&self, i: usize) -> &KernelSpec {
        &self.kernels[i].spec
    }

    /// The CLIF text of kernel `i`, before Cranelift's lowering, if the code was compiled
    /// [with text](JitKernels::compile_with_text). Panics if `i >= self.len()`.
    pub fn clif(&self, i: usize) -> Option<&str> {
        self.kernels[i].clif.as_deref()
    }

    /// The machine code of kernel `i` as Cranelift's VCode text, if the code was compiled
    /// [with text](JitKernels::compile_with_text).
    /// Panics if `i >= self.len()`.
    pub fn disasm(&self, i: usize) -> Option<&str> {
        self.kernels[i].disasm.as_deref()
    }

    /// Safely runs kernel `i` on images `0..batch` after checking every buffer's length;
    /// `inputs` are all buffers but the last (packed weights for dense kernels).
    pub fn run(
        &self,
        i: usize,
        inputs: &[&[f32]],
        output: &mut [f32],
        batch: usize,
    ) -> Result<(), CodegenError> {
        let c = self.kernels.get(i).ok_or(CodegenError::NoKernel {
            index: i,
            len: self.kernels.len(),
        })?;
        let lens = c.spec.buffer_lens(batch);
        if inputs.len() + 1 != lens.len() {
            return Err(CodegenError::BufferCount {
                index: i,
                expected: lens.len(),
                got: inputs.len() + 1,
            });
        }
        if batch == 0 {
            return Ok(());
        }
        let sizes = inputs.iter().map(|b| b.len()).chain([output.len()]);
        for (buffer, (got, expected)) in sizes.zip(lens).enumerate() {
            // Buffers must also be non-empty: guarded loads fall back to reading element 0.
            if got < expected.max(1) {
                return Err(CodegenError::BufferLen {
                    index: i,
                    buffer,
                    expected: expected.max(1),
                    got,
                });
            }
        }
        let mut ptrs: Vec<*mut f32> = inputs.iter().map(|b| b.as_ptr().cast_mut()).collect();
        ptrs.push(output.as_mut_ptr());
        // SAFETY: `self` is alive, the buffers were checked against `buffer_lens(batch)`, the
        // kernel never writes its inputs (so casting them to `*mut` is sound), and `output`
        // is exclusively borrowed for the call.
        unsafe { c.f.call(&ptrs, 0, batch) };
        Ok(())
    }

    /// Safely runs kernel `i` on images `0..batch` with all its buffers in calling order
    /// (inputs and outputs alike, for kernels that write several buffers) after checking
    /// every buffer's length.
    pub fn run_bufs(
        &self,
        i: usize,
        bufs: &mut [Vec<f32>],
        batch: usize,
    ) -> Result<(), CodegenError> {
        let c = self.kernels.get(i).ok_or(CodegenError::NoKernel {
            index: i,
            len: self.kernels.len(),
        })?;
        let lens = c.spec.buffer_lens(batch);
        if bufs.len() != lens.len() {
            return Err(CodegenError::BufferCount {
                index: i,
                expected: lens.len(),
                got: bufs.len(),
            });
        }
        if batch == 0 {
            return Ok(());
        }
        for (buffer, (b, expected)) in bufs.iter().zip(lens).enumerate() {
            if b.len() < expected.max(1) {
                return Err(CodegenError::BufferLen {
                    index: i,
                    buffer,
                    expected: expected.max(1),
                    got: b.len(),
                });
            }
        }
        let ptrs: Vec<*mut f32> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        // SAFETY: `self` is alive, every buffer was checked against `buffer_lens(batch)`, and
        // the buffers are distinct vectors exclusively borrowed for the call.
        unsafe { c.f.call(&ptrs, 0, batch) };
        Ok(())
    }
}
