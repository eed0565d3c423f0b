//! Static bounds checking of kernels: the largest and smallest element index every kernel
//! reads or writes in each buffer, derived from its loop IR before any code runs, and
//! compared with the buffer lengths its spec promises ([`KernelSpec::buffer_lens`]).
//!
//! Every shape in a kernel is a compile-time constant and only the batch range
//! `N_BEGIN..N_END` is a run-time value, so the set of addresses a kernel touches for a
//! batch of `n` images is a function of `n` alone. [`extents`] computes it exactly by
//! executing the kernel's index arithmetic, and nothing else: loops run, `Let`s bind, guards
//! are evaluated per lane, and every load and store records its index; float values are
//! never computed. A guarded load whose guard fails reads the buffer's first element
//! instead (see `emit.rs`), which is recorded as an access to element 0. Index expressions
//! are affine in the image variable and buffer lengths are linear in `n`, so checking two
//! batch sizes ([`check`] uses 1 and 2) covers every batch.
//!
//! `JitKernels` runs [`check`] on every kernel it compiles in debug builds; the tests run
//! it in release builds over every kernel kind and over every kernel of the random graphs
//! of `runtime/tests/random_graphs.rs`.

use super::loop_ir::{Buf, Guard, IVar, Idx, Kernel, N_BEGIN, N_END, Stmt, Val};
use super::{CodegenError, KernelSpec, Width};

/// The most lanes a vector loop has (`Wide`, `F32X8`).
const LANES: usize = 8;

/// The element indices a kernel touches in one buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    /// The smallest index read or written, `None` if the buffer is never touched.
    pub min: Option<i64>,
    /// The largest index read or written, `None` if the buffer is never touched.
    pub max: Option<i64>,
    /// The largest index written, `None` if the kernel never writes the buffer.
    pub max_written: Option<i64>,
}

impl Extent {
    fn record(&mut self, i: i64, write: bool) {
        self.min = Some(self.min.map_or(i, |m| m.min(i)));
        self.max = Some(self.max.map_or(i, |m| m.max(i)));
        if write {
            self.max_written = Some(self.max_written.map_or(i, |m| m.max(i)));
        }
    }
}

/// What a kernel touches for one batch size: one [`Extent`] per pointer argument and per
/// local array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extents {
    /// Per entry of the `bufs` argument, in calling order.
    pub params: Vec<Extent>,
    /// Per local (stack) array.
    pub locals: Vec<Extent>,
}

/// Executes the index arithmetic of `kernel` for images `0..batch` and returns what it
/// touches. Fails on malformed loop IR: an unbound variable, a non-positive step, a
/// division of a negative index (the emitter divides run-time values with truncation, so
/// the loop IR promises non-negative dividends), or a buffer number past the argument list.
pub fn extents(kernel: &Kernel, batch: usize) -> Result<Extents, CodegenError> {
    let mut x = Exec {
        kernel,
        env: Vec::new(),
        vector: 1,
        out: Extents {
            params: vec![Extent::default(); kernel.params as usize],
            locals: vec![Extent::default(); kernel.locals.len()],
        },
    };
    x.bind(N_BEGIN, [0; LANES]);
    x.bind(N_END, [batch as i64; LANES]);
    x.stmts(&kernel.body)?;
    Ok(x.out)
}

/// Checks that `kernel`, compiled for `spec`, touches only elements `0..len` of every
/// buffer for batches of 1 and 2 images, where `len` is the spec's
/// [`buffer_lens`](KernelSpec::buffer_lens) (a buffer a guarded load may fall back on must
/// hold at least one element), and only the declared elements of its local arrays.
pub fn check(spec: &KernelSpec, kernel: &Kernel) -> Result<(), CodegenError> {
    for batch in [1, 2] {
        let lens = spec.buffer_lens(batch);
        if lens.len() != kernel.params as usize {
            return Err(CodegenError::MalformedLoopIr {
                kernel: kernel.name.clone(),
                reason: "the kernel takes another number of buffers than its spec",
            });
        }
        let e = extents(kernel, batch)?;
        let names = spec.buffer_names();
        let params = e
            .params
            .iter()
            .zip(&lens)
            .enumerate()
            .map(|(i, (x, &len))| {
                let name = names.get(i).map_or("?", |n| n);
                (format!("`{name}`"), x, len)
            });
        let locals = (e.locals.iter().zip(&kernel.locals).enumerate())
            .map(|(i, (x, &len))| (format!("local {i}"), x, len));
        for (buffer, x, len) in params.chain(locals) {
            let (Some(min), Some(max)) = (x.min, x.max) else {
                continue;
            };
            let index = if min < 0 { min } else { max };
            if min < 0 || max >= len as i64 {
                return Err(CodegenError::OutOfBounds {
                    kernel: kernel.name.clone(),
                    buffer,
                    index,
                    len,
                    batch,
                });
            }
        }
    }
    Ok(())
}

/// Lowers every spec as [`JitKernels::compile`](super::JitKernels::compile) would (after
/// validating it), for both vector widths, and [`check`]s its kernels; for tests and debug
/// tooling, since release builds skip the check when compiling.
pub fn check_specs(specs: &[KernelSpec]) -> Result<(), CodegenError> {
    for (i, spec) in specs.iter().enumerate() {
        super::validate(i, spec)?;
        for width in [Width::F32x4, Width::F32x8] {
            check(spec, &super::kernels::lower(i, spec, width))?;
        }
    }
    Ok(())
}

/// The interpreter of index arithmetic.
struct Exec<'k> {
    kernel: &'k Kernel,
    /// Each variable's value per lane (all lanes equal outside vector loops).
    env: Vec<Option<[i64; LANES]>>,
    /// Lanes of the vector loop around (1 outside one).
    vector: usize,
    out: Extents,
}

impl Exec<'_> {
    fn bad(&self, reason: &'static str) -> CodegenError {
        CodegenError::MalformedLoopIr {
            kernel: self.kernel.name.clone(),
            reason,
        }
    }

    fn bind(&mut self, var: IVar, lanes: [i64; LANES]) {
        let i = var.0 as usize;
        if self.env.len() <= i {
            self.env.resize(i + 1, None);
        }
        self.env[i] = Some(lanes);
    }

    fn lanes(&self) -> usize {
        self.vector
    }

    fn eval(&self, idx: &Idx, lane: usize) -> Result<i64, CodegenError> {
        Ok(match idx {
            Idx::Const(c) => *c,
            Idx::Var(v) => self
                .env
                .get(v.0 as usize)
                .copied()
                .flatten()
                .ok_or_else(|| self.bad("use of an unbound index variable"))?[lane],
            Idx::Add(a, b) => self.eval(a, lane)? + self.eval(b, lane)?,
            Idx::Mul(a, k) => self.eval(a, lane)? * k,
            Idx::Div(a, k) => {
                let a = self.eval(a, lane)?;
                if a < 0 || *k <= 0 {
                    return Err(self.bad("division of a negative index or by a non-positive"));
                }
                a / k
            }
            Idx::Min(a, b) => self.eval(a, lane)?.min(self.eval(b, lane)?),
            Idx::Max(a, b) => self.eval(a, lane)?.max(self.eval(b, lane)?),
        })
    }

    fn extent(&mut self, buf: Buf) -> Result<&mut Extent, CodegenError> {
        let e = match buf {
            Buf::Param(i) => self.out.params.get_mut(i as usize),
            Buf::Local(i) => self.out.locals.get_mut(i as usize),
        };
        e.ok_or_else(|| CodegenError::MalformedLoopIr {
            kernel: self.kernel.name.clone(),
            reason: "a buffer number past the kernel's buffers",
        })
    }

    fn guards_hold(&self, guards: &[Guard], lane: usize) -> Result<bool, CodegenError> {
        for g in guards {
            let c = self.eval(&g.coord, lane)?;
            if c < g.lo || c >= g.hi {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn stmts(&mut self, body: &[Stmt]) -> Result<(), CodegenError> {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), CodegenError> {
        match s {
            Stmt::Loop {
                var,
                lo,
                hi,
                step,
                kind,
                body,
            } => {
                if *step <= 0 {
                    return Err(self.bad("loop step must be positive"));
                }
                // The emitter evaluates loop bounds once, at lane 0.
                let (lo, hi) = (self.eval(lo, 0)?, self.eval(hi, 0)?);
                let saved = self.env.get(var.0 as usize).copied().flatten();
                let outer = self.vector;
                let vector = kind.lanes() > 1;
                if vector {
                    self.vector = kind.lanes();
                }
                let mut i = lo;
                while i < hi {
                    let lanes = if vector {
                        std::array::from_fn(|j| i + j as i64)
                    } else {
                        [i; LANES]
                    };
                    self.bind(*var, lanes);
                    self.stmts(body)?;
                    i += step;
                }
                self.vector = outer;
                if let Some(lanes) = saved {
                    self.bind(*var, lanes);
                }
                Ok(())
            }
            Stmt::Let { var, idx } => {
                let mut lanes = [0; LANES];
                for (j, l) in lanes.iter_mut().enumerate().take(self.lanes()) {
                    *l = self.eval(idx, j)?;
                }
                if self.vector == 1 {
                    lanes = [lanes[0]; LANES];
                }
                self.bind(*var, lanes);
                Ok(())
            }
            Stmt::Set { val, .. } => self.val(val),
            Stmt::Store { buf, idx, val } => {
                self.val(val)?;
                for lane in 0..self.lanes() {
                    let i = self.eval(idx, lane)?;
                    self.extent(*buf)?.record(i, true);
                }
                Ok(())
            }
        }
    }

    fn val(&mut self, v: &Val) -> Result<(), CodegenError> {
        match v {
            Val::Const(_) | Val::Get(_) | Val::FromIdx(_) => Ok(()),
            Val::Load { buf, idx, guards } => {
                for lane in 0..self.lanes() {
                    // A lane whose guard fails reads element 0 and discards it.
                    let i = if self.guards_hold(guards, lane)? {
                        self.eval(idx, lane)?
                    } else {
                        0
                    };
                    self.extent(*buf)?.record(i, false);
                }
                Ok(())
            }
            Val::Bin(_, a, b) => {
                self.val(a)?;
                self.val(b)
            }
            Val::Fma(a, b, c) => {
                self.val(a)?;
                self.val(b)?;
                self.val(c)
            }
            Val::Exp(x) | Val::ExpNeg(x) | Val::LowHalf(x) | Val::HighHalf(x) => self.val(x),
            Val::Splatted { buf, idx } => {
                let i = self.eval(idx, 0)?;
                let n = self.lanes() as i64;
                for k in 0..n {
                    self.extent(*buf)?.record(i + k, false);
                }
                Ok(())
            }
            Val::PairDup { buf, idx } => {
                let first = self.eval(idx, 0)?;
                for lane in 0..self.lanes() {
                    let i = self.eval(idx, lane)?;
                    if i != first + lane as i64 / 2 {
                        return Err(self.bad("a pair-duplicated index is not [i, i, i+1, i+1]"));
                    }
                    self.extent(*buf)?.record(i, false);
                }
                Ok(())
            }
            Val::Positive(x) => self.val(x),
            Val::PairSum { buf, idx } => {
                for lane in 0..self.lanes() {
                    let i = self.eval(idx, lane)?;
                    self.extent(*buf)?.record(i, false);
                    self.extent(*buf)?.record(i + 1, false);
                }
                Ok(())
            }
            Val::Select { a, b, .. } => {
                self.val(a)?;
                self.val(b)
            }
        }
    }
}
