//! The one Cranelift emitter for the loop IR of [`super::loop_ir`]. It walks the statement
//! tree once, keeping an environment from index variables to constants (inside unrolled
//! loops), Cranelift variables (loop counters) or SSA values (`Let` bindings).
//!
//! Kernels are compiled with `opt_level=none` because Cranelift's optimizer reschedules the
//! register-blocked inner loops into spills, so the emitter does the few optimizations that
//! matter itself: index expressions are folded to an affine form whose constant part becomes
//! the load's immediate offset, and the variable part of every address is computed once per
//! loop body (a scoped cache) rather than once per load. The part of an index that does not
//! depend on the innermost loop is summed once before that loop, and so is every load of a
//! read-only parameter whose index does not move in it (a per-channel coefficient is one
//! broadcast per plane, not per vector). Inside `Vector` loops it picks
//! broadcast, vector load, guarded vector load (a fast unguarded path plus a per-lane slow
//! path), or per-lane gather from the lane stride of each index expression.

use std::collections::HashMap;

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    BlockArg, Inst, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Type, Value, types,
};
use cranelift_frontend::{FunctionBuilder, Variable};

use super::CodegenError;
use super::loop_ir::{
    BinOp, Buf, Guard, IVar, Idx, Kernel, LoopKind, N_BEGIN, N_END, Reg, Stmt, Val,
};
use super::math;

/// What an index variable stands for at the current emission point.
#[derive(Clone, Copy)]
enum Bind {
    /// A constant, inside an unrolled loop.
    Const(i64),
    /// A loop counter (its header's block parameter), a `Let` value or an argument; `stride`
    /// is its per-lane increment (1 for the vector loop's counter), `None` if it depends
    /// non-affinely on lanes.
    Val {
        val: Value,
        key: u32,
        stride: Option<i64>,
    },
}

/// `Σ coef * value + c`; terms are sorted by binding key, which identifies the value.
struct Affine {
    terms: Vec<(u32, Value, i64)>,
    c: i64,
}

type AddrKey = Vec<(u32, i64)>;

/// A loop being emitted, seen from its body: where code that does not depend on it can go.
struct Frame {
    /// The jump from the preheader into the loop's header; hoisted code goes before it.
    entry: Inst,
    /// Whether the loop has constant bounds and runs at least once, so that a load placed
    /// before it reads nothing the loop itself would not.
    runs: bool,
    /// Index sums computed before the loop, by their terms.
    sums: HashMap<AddrKey, Value>,
    /// Read-only values loaded before the loop, by buffer, index terms, constant and width.
    loads: HashMap<(Buf, AddrKey, i64, i64), Value>,
    /// Whether the body has no loop of its own (unrolled loops aside), so that vector
    /// constants are emitted before the loop ([`math::Consts`]).
    leaf: bool,
    /// Vector constants emitted before the loop, by their bits.
    consts: HashMap<u32, Value>,
}

/// Where vector constants go: before the innermost loop if it has no loop of its own.
fn consts(frames: &mut [Frame]) -> math::Consts<'_> {
    math::Consts {
        hoist: frames
            .last_mut()
            .filter(|f| f.leaf)
            .map(|f| (f.entry, &mut f.consts)),
    }
}

/// Whether `body` holds a serial or vector loop (unrolled loops are looked into).
fn has_loop(body: &[Stmt]) -> bool {
    body.iter().any(|s| match s {
        Stmt::Loop {
            kind: LoopKind::Unroll,
            body,
            ..
        } => has_loop(body),
        Stmt::Loop { .. } => true,
        _ => false,
    })
}

/// Emits `kernel` into the function of `b`, whose signature is `(ptr, i64, i64)`.
pub(crate) fn emit_kernel(kernel: &Kernel, b: &mut FunctionBuilder) -> Result<(), CodegenError> {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let args = b.block_params(entry).to_vec();
    // The buffer table is read once at entry; these values dominate the whole body.
    let mut bases = Vec::new();
    for i in 0..kernel.params {
        bases.push(
            b.ins()
                .load(types::I64, MemFlagsData::trusted(), args[0], (8 * i) as i32),
        );
    }
    let mut locals = Vec::new();
    for &len in &kernel.locals {
        let data = StackSlotData::new(StackSlotKind::ExplicitSlot, (4 * len) as u32, 4);
        let slot = b.create_sized_stack_slot(data);
        locals.push(b.ins().stack_addr(types::I64, slot, 0));
    }
    let mut em = Emitter {
        b,
        name: &kernel.name,
        bases,
        locals,
        env: HashMap::new(),
        lanes: 1,
        regs: HashMap::new(),
        reg_width: HashMap::new(),
        cache: vec![HashMap::new()],
        next_key: 0,
        frames: Vec::new(),
        depth: HashMap::new(),
        read_only: &kernel.read_only,
    };
    for (var, val) in [(N_BEGIN, args[1]), (N_END, args[2])] {
        let key = em.fresh_key();
        em.env.insert(
            var,
            Bind::Val {
                val,
                key,
                stride: Some(0),
            },
        );
    }
    em.stmts(&kernel.body)?;
    em.b.ins().return_(&[]);
    em.b.seal_all_blocks();
    Ok(())
}

struct Emitter<'a, 'f> {
    b: &'a mut FunctionBuilder<'f>,
    name: &'a str,
    bases: Vec<Value>,
    locals: Vec<Value>,
    env: HashMap<IVar, Bind>,
    /// Lanes of the float values here: 1 outside vector loops, 4 inside a `Vector` loop
    /// (`F32X4`), 8 inside a `Wide` one (`F32X8`).
    lanes: i64,
    regs: HashMap<(u32, i64, i64), Variable>,
    /// The lanes at which each register was last assigned.
    reg_width: HashMap<(u32, i64), i64>,
    /// Scoped cache of address bases; a scope is pushed for every block region so a cached
    /// value always dominates its later uses.
    cache: Vec<HashMap<AddrKey, Value>>,
    next_key: u32,
    /// The loops around the emission point, outermost first.
    frames: Vec<Frame>,
    /// The number of loops around the definition of each binding key.
    depth: HashMap<u32, usize>,
    read_only: &'a [Buf],
}

/// Memory accesses never trap (kernels are only entered with full-size buffers) but are not
/// assumed aligned, since lane groups start at arbitrary elements.
fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Little-endian lane order for vector bitcasts.
fn lane_order() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

impl Emitter<'_, '_> {
    fn bad(&self, reason: &'static str) -> CodegenError {
        CodegenError::MalformedLoopIr {
            kernel: self.name.to_string(),
            reason,
        }
    }

    fn fresh_key(&mut self) -> u32 {
        self.next_key += 1;
        self.depth.insert(self.next_key, self.frames.len());
        self.next_key
    }

    /// Whether we are inside a vector loop.
    fn vec(&self) -> bool {
        self.lanes > 1
    }

    /// The type of float values here.
    fn fty(&self) -> Type {
        match self.lanes {
            1 => types::F32,
            4 => types::F32X4,
            _ => types::F32X8,
        }
    }

    /// A float value `x` splatted to the lanes here (unchanged outside vector loops).
    fn splat(&mut self, x: Value) -> Value {
        if self.vec() {
            let ty = self.fty();
            self.b.ins().splat(ty, x)
        } else {
            x
        }
    }

    /// Fails inside a `Wide` loop, which has no per-lane code (see [`LoopKind::Wide`]).
    fn narrow(&self, what: &'static str) -> Result<(), CodegenError> {
        if self.lanes == 8 {
            return Err(self.bad(what));
        }
        Ok(())
    }

    fn bind(&self, v: IVar) -> Result<Bind, CodegenError> {
        self.env
            .get(&v)
            .copied()
            .ok_or_else(|| self.bad("use of an unbound index variable"))
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
            } => self.lp(*var, lo, hi, *step, *kind, body),
            Stmt::Let { var, idx } => {
                let val = self.idx_value(idx, 0)?;
                let stride = self.stride(idx)?;
                let key = self.fresh_key();
                self.env.insert(*var, Bind::Val { val, key, stride });
                Ok(())
            }
            Stmt::Set { reg, val } => {
                let x = self.val(val)?;
                let elem = self.const_of(&reg.elem)?;
                // The value's own lanes: those of the loop, or four for a half of eight.
                let ty = self.b.func.dfg.value_type(x);
                let wide = i64::from(ty.lane_count());
                let var = match self.regs.get(&(reg.id, elem, wide)) {
                    Some(&v) => v,
                    None => {
                        let v = self.b.declare_var(ty);
                        self.regs.insert((reg.id, elem, wide), v);
                        v
                    }
                };
                self.b.def_var(var, x);
                self.reg_width.insert((reg.id, elem), wide);
                Ok(())
            }
            Stmt::Store { buf, idx, val } => {
                if self.read_only.contains(buf) {
                    return Err(self.bad("a store to a read-only buffer"));
                }
                let x = self.val(val)?;
                if self.vec() && self.stride(idx)? != Some(1) {
                    // A scatter: lanes do not land on consecutive floats.
                    self.narrow("a scatter in a Wide loop")?;
                    for j in 0..self.lanes {
                        let e = self.b.ins().extractlane(x, j as u8);
                        let (p, off) = self.addr(*buf, idx, j)?;
                        self.b.ins().store(flags(), e, p, off);
                    }
                } else {
                    let (p, off) = self.addr(*buf, idx, 0)?;
                    self.b.ins().store(flags(), x, p, off);
                }
                Ok(())
            }
        }
    }

    fn lp(
        &mut self,
        var: IVar,
        lo: &Idx,
        hi: &Idx,
        step: i64,
        kind: LoopKind,
        body: &[Stmt],
    ) -> Result<(), CodegenError> {
        if step <= 0 {
            return Err(self.bad("loop step must be positive"));
        }
        let saved = self.env.get(&var).copied();
        if kind == LoopKind::Unroll {
            let (lo, hi) = (self.const_of(lo)?, self.const_of(hi)?);
            let mut i = lo;
            while i < hi {
                self.env.insert(var, Bind::Const(i));
                self.stmts(body)?;
                i += step;
            }
        } else {
            let vector = matches!(kind, LoopKind::Vector | LoopKind::Wide);
            let lanes = kind.lanes() as i64;
            if vector && (self.vec() || step % lanes != 0) {
                return Err(self.bad("vector loops must not nest and must step by whole vectors"));
            }
            let runs = match (self.affine(lo, 0)?, self.affine(hi, 0)?) {
                (Some(l), Some(h)) if l.terms.is_empty() && h.terms.is_empty() => {
                    if l.c >= h.c {
                        // A loop with constant bounds that never runs (the tail of a split
                        // loop whose length divides evenly) emits nothing.
                        return Ok(());
                    }
                    true
                }
                _ => false,
            };
            let lo_v = self.idx_value(lo, 0)?;
            let hi_v = self.idx_value(hi, 0)?;
            // The counter is the header's block parameter, so it dominates the whole body
            // and code hoisted into inner preheaders may use it.
            let header = self.b.create_block();
            let i = self.b.append_block_param(header, types::I64);
            let body_block = self.b.create_block();
            let exit = self.b.create_block();
            let entry = self.b.ins().jump(header, &[BlockArg::Value(lo_v)]);
            self.b.switch_to_block(header);
            let more = self.b.ins().icmp(IntCC::SignedLessThan, i, hi_v);
            self.b.ins().brif(more, body_block, &[], exit, &[]);
            self.b.switch_to_block(body_block);
            self.frames.push(Frame {
                entry,
                runs,
                sums: HashMap::new(),
                loads: HashMap::new(),
                leaf: !has_loop(body),
                consts: HashMap::new(),
            });
            let key = self.fresh_key();
            self.env.insert(
                var,
                Bind::Val {
                    val: i,
                    key,
                    stride: Some(i64::from(vector)),
                },
            );
            let outer_lanes = self.lanes;
            if vector {
                self.lanes = lanes;
            }
            self.cache.push(HashMap::new());
            self.stmts(body)?;
            self.cache.pop();
            self.lanes = outer_lanes;
            self.frames.pop();
            let next = self.b.ins().iadd_imm_s(i, step);
            self.b.ins().jump(header, &[BlockArg::Value(next)]);
            self.b.switch_to_block(exit);
        }
        match saved {
            Some(s) => self.env.insert(var, s),
            None => self.env.remove(&var),
        };
        Ok(())
    }

    /// Folds `idx` (at lane `lane` of the vector loop) to an affine form, or `None` if it uses
    /// `Min`/`Max`/`Div` of non-constant values.
    fn affine(&mut self, idx: &Idx, lane: i64) -> Result<Option<Affine>, CodegenError> {
        Ok(Some(match idx {
            Idx::Const(c) => Affine {
                terms: vec![],
                c: *c,
            },
            Idx::Var(v) => match self.bind(*v)? {
                Bind::Const(c) => Affine { terms: vec![], c },
                Bind::Val { val, key, stride } => {
                    let s = if lane == 0 {
                        0
                    } else {
                        stride.ok_or_else(|| self.bad("lane-dependent non-affine let"))?
                    };
                    Affine {
                        terms: vec![(key, val, 1)],
                        c: lane * s,
                    }
                }
            },
            Idx::Add(a, b) => {
                let (Some(a), Some(b)) = (self.affine(a, lane)?, self.affine(b, lane)?) else {
                    return Ok(None);
                };
                let mut terms = a.terms;
                for (k, v, c) in b.terms {
                    match terms.iter_mut().find(|t| t.0 == k) {
                        Some(t) => t.2 += c,
                        None => terms.push((k, v, c)),
                    }
                }
                terms.retain(|t| t.2 != 0);
                terms.sort_by_key(|t| t.0);
                Affine {
                    terms,
                    c: a.c + b.c,
                }
            }
            Idx::Mul(a, k) => {
                let Some(a) = self.affine(a, lane)? else {
                    return Ok(None);
                };
                let terms = if *k == 0 {
                    vec![]
                } else {
                    a.terms
                        .into_iter()
                        .map(|(key, v, c)| (key, v, c * k))
                        .collect()
                };
                Affine { terms, c: a.c * k }
            }
            Idx::Div(a, k) => match self.affine(a, lane)? {
                Some(a) if a.terms.is_empty() => Affine {
                    terms: vec![],
                    c: a.c.div_euclid(*k),
                },
                _ => return Ok(None),
            },
            Idx::Min(a, b) | Idx::Max(a, b) => {
                let (a, b) = (self.affine(a, lane)?, self.affine(b, lane)?);
                match (a, b) {
                    (Some(a), Some(b)) if a.terms.is_empty() && b.terms.is_empty() => {
                        let c = if matches!(idx, Idx::Min(..)) {
                            a.c.min(b.c)
                        } else {
                            a.c.max(b.c)
                        };
                        Affine { terms: vec![], c }
                    }
                    _ => return Ok(None),
                }
            }
        }))
    }

    fn const_of(&mut self, idx: &Idx) -> Result<i64, CodegenError> {
        match self.affine(idx, 0)? {
            Some(a) if a.terms.is_empty() => Ok(a.c),
            _ => Err(self.bad("expected a compile-time constant index")),
        }
    }

    fn sum_terms(
        &mut self,
        terms: &[(u32, Value, i64)],
        scale: i64,
        init: Option<Value>,
    ) -> Option<Value> {
        let mut acc = init;
        for &(_, v, c) in terms {
            let t = if c * scale == 1 {
                v
            } else {
                self.b.ins().imul_imm_s(v, c * scale)
            };
            acc = Some(match acc {
                Some(a) => self.b.ins().iadd(a, t),
                None => t,
            });
        }
        acc
    }

    /// The value of `idx` at lane `lane` as an `i64`.
    fn idx_value(&mut self, idx: &Idx, lane: i64) -> Result<Value, CodegenError> {
        if let Some(a) = self.affine(idx, lane)? {
            return Ok(match self.sum_terms(&a.terms, 1, None) {
                Some(s) if a.c == 0 => s,
                Some(s) => self.b.ins().iadd_imm_s(s, a.c),
                None => self.b.ins().iconst(types::I64, a.c),
            });
        }
        Ok(match idx {
            Idx::Add(a, b) => {
                let (a, b) = (self.idx_value(a, lane)?, self.idx_value(b, lane)?);
                self.b.ins().iadd(a, b)
            }
            Idx::Mul(a, k) => {
                let a = self.idx_value(a, lane)?;
                self.b.ins().imul_imm_s(a, *k)
            }
            Idx::Div(a, k) => {
                let a = self.idx_value(a, lane)?;
                if *k > 0 && (*k as u64).is_power_of_two() {
                    // Floor division by 2^s is an arithmetic shift (Cranelift would emit
                    // `idiv`, tens of cycles).
                    self.b.ins().sshr_imm_s(a, i64::from(k.trailing_zeros()))
                } else {
                    self.b.ins().sdiv_imm_s(a, *k)
                }
            }
            Idx::Min(a, b) | Idx::Max(a, b) => {
                let (x, y) = (self.idx_value(a, lane)?, self.idx_value(b, lane)?);
                if matches!(idx, Idx::Min(..)) {
                    self.b.ins().smin(x, y)
                } else {
                    self.b.ins().smax(x, y)
                }
            }
            Idx::Const(_) | Idx::Var(_) => unreachable!("constants and variables are affine"),
        })
    }

    /// How far `idx` moves from one lane to the next, if it moves by a constant.
    fn stride(&self, idx: &Idx) -> Result<Option<i64>, CodegenError> {
        Ok(match idx {
            Idx::Const(_) => Some(0),
            Idx::Var(v) => match self.bind(*v)? {
                Bind::Const(_) => Some(0),
                Bind::Val { stride, .. } => stride,
            },
            Idx::Add(a, b) => self.stride(a)?.zip(self.stride(b)?).map(|(a, b)| a + b),
            Idx::Mul(a, k) => self.stride(a)?.map(|s| s * k),
            Idx::Div(a, _) => self.stride(a)?.filter(|&s| s == 0),
            Idx::Min(a, b) | Idx::Max(a, b) => {
                (self.stride(a)? == Some(0) && self.stride(b)? == Some(0)).then_some(0)
            }
        })
    }

    fn base(&self, buf: Buf) -> Value {
        match buf {
            Buf::Param(i) => self.bases[i as usize],
            Buf::Local(i) => self.locals[i as usize],
        }
    }

    /// The address of `buf[idx]` at lane `lane` as a pointer plus an immediate byte offset.
    fn addr(&mut self, buf: Buf, idx: &Idx, lane: i64) -> Result<(Value, i32), CodegenError> {
        let base = self.base(buf);
        let Some(a) = self.affine(idx, lane)? else {
            let i = self.idx_value(idx, lane)?;
            let off = self.b.ins().imul_imm_s(i, 4);
            return Ok((self.b.ins().iadd(base, off), 0));
        };
        let off = i32::try_from(4 * a.c).map_err(|_| self.bad("offset exceeds 32 bits"))?;
        if a.terms.is_empty() {
            return Ok((base, off));
        }
        // The element index Σ terms is shared by every buffer addressed with the same terms;
        // `base + (index << 2)` folds into the x64 addressing mode.
        let key: AddrKey = a.terms.iter().map(|t| (t.0, t.2)).collect();
        let i = match self.cache.iter().rev().find_map(|scope| scope.get(&key)) {
            Some(&i) => i,
            None => {
                let i = self.index_sum(&a.terms);
                self.cache
                    .last_mut()
                    .expect("the root scope is never popped")
                    .insert(key, i);
                i
            }
        };
        let scaled = self.b.ins().ishl_imm_u(i, 2);
        Ok((self.b.ins().iadd(base, scaled), off))
    }

    /// `Σ terms` (not empty), with the terms that do not depend on the innermost loop summed
    /// before it.
    fn index_sum(&mut self, terms: &[(u32, Value, i64)]) -> Value {
        let len = self.frames.len();
        let (outer, inner): (Vec<(u32, Value, i64)>, Vec<_>) =
            terms.iter().partition(|t| self.depth[&t.0] < len);
        if outer.len() < 2 && outer.iter().all(|t| t.2 == 1) {
            return self.sum_terms(terms, 1, None).expect("at least one term");
        }
        let at = outer
            .iter()
            .map(|t| self.depth[&t.0])
            .max()
            .expect("not empty");
        let key: AddrKey = outer.iter().map(|t| (t.0, t.2)).collect();
        let hoisted = match self.frames[at].sums.get(&key) {
            Some(&v) => v,
            None => {
                let mut pos = FuncCursor::new(self.b.func).at_inst(self.frames[at].entry);
                let v = sum_at(&mut pos, &outer).expect("not empty");
                self.frames[at].sums.insert(key, v);
                v
            }
        };
        self.sum_terms(&inner, 1, Some(hoisted))
            .expect("the hoisted part")
    }

    /// `buf[idx]` loaded once before the outermost loop it does not depend on, if `buf` is
    /// read-only, `idx` is the same on every lane and every loop from there in runs.
    fn hoisted_load(&mut self, buf: Buf, idx: &Idx) -> Result<Option<Value>, CodegenError> {
        if !self.read_only.contains(&buf) || (self.vec() && self.stride(idx)? != Some(0)) {
            return Ok(None);
        }
        let Some(a) = self.affine(idx, 0)? else {
            return Ok(None);
        };
        let len = self.frames.len();
        let after = a.terms.iter().map(|t| self.depth[&t.0]).max().unwrap_or(0);
        // The outermost frame at or inside `after` from which every loop runs.
        let Some(at) = (after..len).find(|&k| self.frames[k..].iter().all(|f| f.runs)) else {
            return Ok(None);
        };
        let key = (
            buf,
            a.terms.iter().map(|t| (t.0, t.2)).collect(),
            a.c,
            self.lanes,
        );
        if let Some(&x) = self.frames[at].loads.get(&key) {
            return Ok(Some(x));
        }
        let off = i32::try_from(4 * a.c).map_err(|_| self.bad("offset exceeds 32 bits"))?;
        let base = self.base(buf);
        let (vec, ty) = (self.vec(), self.fty());
        let mut pos = FuncCursor::new(self.b.func).at_inst(self.frames[at].entry);
        let p = match sum_at(&mut pos, &a.terms) {
            Some(i) => {
                let scaled = pos.ins().ishl_imm_u(i, 2);
                pos.ins().iadd(base, scaled)
            }
            None => base,
        };
        let x = pos.ins().load(types::F32, flags(), p, off);
        let x = if vec { pos.ins().splat(ty, x) } else { x };
        self.frames[at].loads.insert(key, x);
        Ok(Some(x))
    }

    /// The conjunction of `guards` at lane `lane`, or `None` when there are none.
    fn guard_ok(&mut self, guards: &[Guard], lane: i64) -> Result<Option<Value>, CodegenError> {
        let mut ok = None;
        for g in guards {
            let c = self.idx_value(&g.coord, lane)?;
            let t = self.in_range(c, c, g);
            ok = Some(match ok {
                Some(o) => self.b.ins().band(o, t),
                None => t,
            });
        }
        Ok(ok)
    }

    fn in_range(&mut self, low: Value, high: Value, g: &Guard) -> Value {
        let a = self
            .b
            .ins()
            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, low, g.lo);
        let b = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, high, g.hi);
        self.b.ins().band(a, b)
    }

    /// One scalar element, reading nothing (and yielding 0) where a guard fails.
    fn load_lane(
        &mut self,
        buf: Buf,
        idx: &Idx,
        guards: &[Guard],
        lane: i64,
    ) -> Result<Value, CodegenError> {
        let (p, off) = self.addr(buf, idx, lane)?;
        Ok(match self.guard_ok(guards, lane)? {
            None => self.b.ins().load(types::F32, flags(), p, off),
            Some(ok) => {
                // Out-of-range lanes read the buffer's first element instead, then discard it.
                let real = self.b.ins().iadd_imm_s(p, i64::from(off));
                let base = self.base(buf);
                let safe = self.b.ins().select(ok, real, base);
                let x = self.b.ins().load(types::F32, flags(), safe, 0);
                let zero = self.b.ins().f32const(0.0);
                self.b.ins().select(ok, x, zero)
            }
        })
    }

    fn gather(&mut self, buf: Buf, idx: &Idx, guards: &[Guard]) -> Result<Value, CodegenError> {
        self.narrow("a gather in a Wide loop")?;
        let mut acc = math::fconst(self.b, types::F32X4, 0.0);
        for j in 0..self.lanes {
            let x = self.load_lane(buf, idx, guards, j)?;
            acc = self.b.ins().insertlane(acc, x, j as u8);
        }
        Ok(acc)
    }

    fn load(&mut self, buf: Buf, idx: &Idx, guards: &[Guard]) -> Result<Value, CodegenError> {
        if guards.is_empty()
            && let Some(x) = self.hoisted_load(buf, idx)?
        {
            return Ok(x);
        }
        if !self.vec() {
            return self.load_lane(buf, idx, guards, 0);
        }
        let s = self.stride(idx)?;
        let gs = guards
            .iter()
            .map(|g| self.stride(&g.coord))
            .collect::<Result<Vec<_>, _>>()?;
        if s == Some(0) && gs.iter().all(|g| *g == Some(0)) {
            let x = self.load_lane(buf, idx, guards, 0)?;
            return Ok(self.splat(x));
        }
        if s != Some(1) || gs.iter().any(Option::is_none) {
            return self.gather(buf, idx, guards);
        }
        let ty = self.fty();
        if guards.is_empty() {
            let (p, off) = self.addr(buf, idx, 0)?;
            return Ok(self.b.ins().load(ty, flags(), p, off));
        }
        // In a Wide loop only lane-invariant guards, which fail on all lanes or none.
        let invariant = gs.iter().all(|g| *g == Some(0));
        if !invariant {
            self.narrow("a lane-varying guard in a Wide loop")?;
        }
        // Affine guards hold on all lanes iff they hold on the first and the last one.
        let mut ok = None;
        for (g, st) in guards.iter().zip(gs) {
            let st = st.expect("checked above");
            let first = self.idx_value(&g.coord, 0)?;
            let last = self.b.ins().iadd_imm_s(first, (self.lanes - 1) * st);
            let (low, high) = if st >= 0 {
                (first, last)
            } else {
                (last, first)
            };
            let t = self.in_range(low, high, g);
            ok = Some(match ok {
                Some(o) => self.b.ins().band(o, t),
                None => t,
            });
        }
        let ok = ok.expect("guards are not empty");
        let fast = self.b.create_block();
        let slow = self.b.create_block();
        let merge = self.b.create_block();
        let result = self.b.append_block_param(merge, ty);
        self.b.ins().brif(ok, fast, &[], slow, &[]);
        for (block, gather) in [(fast, false), (slow, true)] {
            self.b.switch_to_block(block);
            self.cache.push(HashMap::new());
            let x = if gather && self.lanes == 8 {
                // Lane-invariant guards failed on every lane.
                math::fconst(self.b, ty, 0.0)
            } else if gather {
                self.gather(buf, idx, guards)?
            } else {
                let (p, off) = self.addr(buf, idx, 0)?;
                self.b.ins().load(ty, flags(), p, off)
            };
            self.cache.pop();
            self.b.ins().jump(merge, &[BlockArg::Value(x)]);
        }
        self.b.switch_to_block(merge);
        Ok(result)
    }

    /// `buf[idx] + buf[idx + 1]` (see [`Val::PairSum`]).
    fn pair_sum(&mut self, buf: Buf, idx: &Idx) -> Result<Value, CodegenError> {
        let next = idx.clone() + 1usize;
        if !self.vec() || self.stride(idx)? != Some(2) {
            let a = self.load(buf, idx, &[])?;
            let b = self.load(buf, &next, &[])?;
            return Ok(self.b.ins().fadd(a, b));
        }
        if self.lanes == 8 {
            // The 16 contiguous floats in two vectors; the vendored Cranelift's pair sum
            // adds each even element to the odd one after it and puts the sums in order.
            let (p, off) = self.addr(buf, idx, 0)?;
            let lo = self.b.ins().load(types::F32X8, flags(), p, off);
            let (p, off) = self.addr(buf, idx, 4)?;
            let hi = self.b.ins().load(types::F32X8, flags(), p, off);
            return Ok(self.b.ins().x86_pairsum256(lo, hi));
        }
        // Lanes j of the pairs are elements 2j and 2j + 1 of the 8 contiguous floats.
        let (p, off) = self.addr(buf, idx, 0)?;
        let lo = self.b.ins().load(types::F32X4, flags(), p, off);
        let (p, off) = self.addr(buf, idx, 2)?;
        let hi = self.b.ins().load(types::F32X4, flags(), p, off);
        let pick = |s: &mut Self, first: u8| {
            let bytes: Vec<u8> = (0..4u8)
                .flat_map(|j| (0..4u8).map(move |k| (first + 2 * j) * 4 + k))
                .collect();
            let mask = s.b.func.dfg.immediates.push(bytes.into());
            let (a, b) = (
                s.b.ins().bitcast(types::I8X16, lane_order(), lo),
                s.b.ins().bitcast(types::I8X16, lane_order(), hi),
            );
            let x = s.b.ins().shuffle(a, b, mask);
            s.b.ins().bitcast(types::F32X4, lane_order(), x)
        };
        let even = pick(self, 0);
        let odd = pick(self, 1);
        Ok(self.b.ins().fadd(even, odd))
    }

    fn val(&mut self, v: &Val) -> Result<Value, CodegenError> {
        let ty = self.fty();
        Ok(match v {
            Val::Const(c) => consts(&mut self.frames).get(self.b, ty, *c),
            Val::Load { buf, idx, guards } => self.load(*buf, idx, guards)?,
            Val::Get(Reg { id, elem }) => {
                let elem = self.const_of(elem)?;
                let wide = *self
                    .reg_width
                    .get(&(*id, elem))
                    .ok_or_else(|| self.bad("read of an unset register"))?;
                let half = wide == 4 && self.lanes == 8;
                if wide > 1 && wide != self.lanes && !half {
                    return Err(self.bad("vector register read outside its vector loop"));
                }
                let x = self.b.use_var(self.regs[&(*id, elem, wide)]);
                if self.vec() && wide == 1 {
                    self.splat(x)
                } else {
                    x
                }
            }
            Val::Bin(op, a, b) => {
                let (a, b) = (self.val(a)?, self.val(b)?);
                match op {
                    BinOp::Add => self.b.ins().fadd(a, b),
                    BinOp::Sub => self.b.ins().fsub(a, b),
                    BinOp::Mul => self.b.ins().fmul(a, b),
                    BinOp::Div => self.b.ins().fdiv(a, b),
                    BinOp::Max => math::max(self.b, a, b),
                    BinOp::Min => math::min(self.b, a, b),
                }
            }
            Val::Fma(a, b, c) => {
                let (a, b, c) = (self.val(a)?, self.val(b)?, self.val(c)?);
                self.b.ins().fma(a, b, c)
            }
            Val::Exp(x) => {
                let x = self.val(x)?;
                math::exp(self.b, &mut consts(&mut self.frames), x)
            }
            Val::ExpNeg(x) => {
                let x = self.val(x)?;
                math::exp_signed(self.b, &mut consts(&mut self.frames), x, true)
            }
            Val::PairSum { buf, idx } => self.pair_sum(*buf, idx)?,
            Val::PairDup { buf, idx } => {
                if !self.vec() {
                    return self.load(*buf, idx, &[]);
                }
                if self.lanes == 8 {
                    // Four floats, each on two lanes.
                    let (p, off) = self.addr(*buf, idx, 0)?;
                    let x = self.b.ins().load(types::F32X4, flags(), p, off);
                    return Ok(self.b.ins().x86_pairdup256(x));
                }
                // Two floats zero-extended into the two 64-bit halves (one `vpmovzxdq` from
                // memory), then lanes [0, 0, 2, 2].
                let (p, off) = self.addr(*buf, idx, 0)?;
                let wide = self.b.ins().uload32x2(flags(), p, off);
                let bytes: Vec<u8> = [0u8, 0, 2, 2]
                    .iter()
                    .flat_map(|&l| (0..4u8).map(move |k| l * 4 + k))
                    .collect();
                let mask = self.b.func.dfg.immediates.push(bytes.into());
                let x = self.b.ins().bitcast(types::I8X16, lane_order(), wide);
                let x = self.b.ins().shuffle(x, x, mask);
                self.b.ins().bitcast(types::F32X4, lane_order(), x)
            }
            Val::Positive(x) => {
                let x = self.val(x)?;
                math::positive(self.b, &mut consts(&mut self.frames), x)
            }
            Val::LowHalf(x) | Val::HighHalf(x) => {
                if self.lanes != 8 {
                    return Err(self.bad("a half of a vector outside a Wide loop"));
                }
                let x = self.val(x)?;
                if matches!(v, Val::LowHalf(_)) {
                    self.b.ins().x86_lowhalf256(x)
                } else {
                    self.b.ins().x86_highhalf256(x)
                }
            }
            Val::Splatted { buf, idx } => {
                if self.vec() && self.stride(idx)? != Some(0) {
                    return Err(self.bad("a splatted value's index varies across lanes"));
                }
                let (p, off) = self.addr(*buf, idx, 0)?;
                self.b.ins().load(ty, flags(), p, off)
            }
            Val::FromIdx(idx) => {
                if !self.vec() || self.stride(idx)? == Some(0) {
                    let i = self.idx_value(idx, 0)?;
                    let x = self.b.ins().fcvt_from_sint(types::F32, i);
                    self.splat(x)
                } else {
                    self.narrow("a lane-varying index value in a Wide loop")?;
                    let mut acc = math::fconst(self.b, types::F32X4, 0.0);
                    for j in 0..self.lanes {
                        let i = self.idx_value(idx, j)?;
                        let x = self.b.ins().fcvt_from_sint(types::F32, i);
                        acc = self.b.ins().insertlane(acc, x, j as u8);
                    }
                    acc
                }
            }
            Val::Select { guards, a, b } => {
                let (a, b) = (self.val(a)?, self.val(b)?);
                if guards.is_empty() {
                    return Ok(a);
                }
                if !self.vec() {
                    match self.guard_ok(guards, 0)? {
                        Some(ok) => self.b.ins().select(ok, a, b),
                        None => a,
                    }
                } else {
                    self.narrow("a select in a Wide loop")?;
                    let mut acc = b;
                    for j in 0..self.lanes {
                        if let Some(ok) = self.guard_ok(guards, j)? {
                            let ea = self.b.ins().extractlane(a, j as u8);
                            let eb = self.b.ins().extractlane(b, j as u8);
                            let e = self.b.ins().select(ok, ea, eb);
                            acc = self.b.ins().insertlane(acc, e, j as u8);
                        } else {
                            acc = a;
                        }
                    }
                    acc
                }
            }
        })
    }
}

/// `Σ coef * value` at `pos`, or `None` for no terms.
fn sum_at(pos: &mut FuncCursor, terms: &[(u32, Value, i64)]) -> Option<Value> {
    let mut acc = None;
    for &(_, v, c) in terms {
        let t = if c == 1 {
            v
        } else {
            pos.ins().imul_imm_s(v, c)
        };
        acc = Some(match acc {
            Some(a) => pos.ins().iadd(a, t),
            None => t,
        });
    }
    acc
}
