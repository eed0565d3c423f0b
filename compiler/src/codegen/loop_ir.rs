//! The loop-nest IR every kernel is written in: nested loops over integer index variables,
//! float loads and stores addressed by index expressions, float arithmetic on named registers,
//! and per-loop annotations (`Serial`, `Unroll`, `Vector`) that tell the single emitter how to
//! generate code. Shapes are compile-time constants, so index expressions fold to affine forms
//! whose constant part becomes a load's immediate offset; only the batch bounds
//! ([`N_BEGIN`], [`N_END`]) are runtime values.
//!
//! A `Vector` loop runs its body four lanes at a time: inside it every float value is an
//! `F32X4` whose lane `j` is the body evaluated at `var + j` (a `Wide` loop, for hosts with
//! AVX2, eight lanes in an `F32X8`). A load whose address does not
//! move with the vector variable becomes a broadcast, one that moves by one float becomes a
//! vector load, and anything else becomes a per-lane gather; the emitter decides from the
//! index expression, so kernels never mention lanes. Reductions are plain registers updated
//! inside serial loops.

use std::ops::{Add, Mul, Sub};

/// An integer index variable: a loop counter, a `Let` binding, or a kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IVar(pub u32);

/// The first image to process, a runtime argument.
pub const N_BEGIN: IVar = IVar(0);
/// One past the last image to process, a runtime argument.
pub const N_END: IVar = IVar(1);

/// An integer index expression; multiplication and division are by constants only, which
/// keeps every expression affine in the loop variables except for `Min`/`Max`/`Div`.
#[derive(Clone, Debug, PartialEq)]
pub enum Idx {
    /// A constant.
    Const(i64),
    /// The current value of a variable.
    Var(IVar),
    /// A sum.
    Add(Box<Idx>, Box<Idx>),
    /// A product with a constant.
    Mul(Box<Idx>, i64),
    /// Floor division of a non-negative value by a positive constant.
    Div(Box<Idx>, i64),
    /// The smaller of two values.
    Min(Box<Idx>, Box<Idx>),
    /// The larger of two values.
    Max(Box<Idx>, Box<Idx>),
}

impl Idx {
    /// The smaller of `self` and `o`.
    pub fn min(self, o: impl Into<Idx>) -> Idx {
        Idx::Min(Box::new(self), Box::new(o.into()))
    }
    /// The larger of `self` and `o`.
    pub fn max(self, o: impl Into<Idx>) -> Idx {
        Idx::Max(Box::new(self), Box::new(o.into()))
    }
    /// `self / k`, rounding down.
    pub fn floor_div(self, k: i64) -> Idx {
        Idx::Div(Box::new(self), k)
    }
}

impl From<i64> for Idx {
    fn from(c: i64) -> Idx {
        Idx::Const(c)
    }
}
impl From<usize> for Idx {
    fn from(c: usize) -> Idx {
        Idx::Const(c as i64)
    }
}
impl From<IVar> for Idx {
    fn from(v: IVar) -> Idx {
        Idx::Var(v)
    }
}
impl<T: Into<Idx>> Add<T> for Idx {
    type Output = Idx;
    fn add(self, o: T) -> Idx {
        Idx::Add(Box::new(self), Box::new(o.into()))
    }
}
impl<T: Into<Idx>> Sub<T> for Idx {
    type Output = Idx;
    fn sub(self, o: T) -> Idx {
        Idx::Add(Box::new(self), Box::new(Idx::Mul(Box::new(o.into()), -1)))
    }
}
impl Mul<i64> for Idx {
    type Output = Idx;
    fn mul(self, k: i64) -> Idx {
        Idx::Mul(Box::new(self), k)
    }
}
impl Mul<usize> for Idx {
    type Output = Idx;
    fn mul(self, k: usize) -> Idx {
        Idx::Mul(Box::new(self), k as i64)
    }
}

/// Shorthand for `Idx::Var`.
pub fn v(x: IVar) -> Idx {
    Idx::Var(x)
}

/// A buffer: one of the kernel's pointer arguments or a stack-allocated local array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// The `i`-th entry of the `bufs` argument.
    Param(u32),
    /// The `i`-th local array declared by [`KernelBuilder::local`].
    Local(u32),
}

/// A lane predicate `lo <= coord < hi`; loads under a failing guard read nothing and yield 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    /// The checked coordinate.
    pub coord: Idx,
    /// The inclusive lower bound.
    pub lo: i64,
    /// The exclusive upper bound.
    pub hi: i64,
}

impl Guard {
    /// The guards that keep a padded coordinate inside `0..size`: one when there is
    /// padding (only padding can take the coordinate out of range), none otherwise.
    pub fn padded(coord: Idx, pad: usize, size: usize) -> Vec<Guard> {
        if pad > 0 {
            vec![Guard {
                coord,
                lo: 0,
                hi: size as i64,
            }]
        } else {
            vec![]
        }
    }
}

/// A float register: element `elem` (constant once unrolled loops are substituted) of a
/// register array, so that unrolled code can keep a block of accumulators.
#[derive(Clone, Debug, PartialEq)]
pub struct Reg {
    /// The register array.
    pub id: u32,
    /// The element, which must fold to a constant.
    pub elem: Idx,
}

/// A binary float operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// The larger; `a` if either is NaN (so `max(x, 0)` keeps a NaN `x`).
    Max,
    /// The smaller; `a` if either is NaN.
    Min,
}

/// A float expression; scalar outside vector loops, four lanes inside `Vector` loops and
/// eight inside `Wide` ones.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    /// A constant.
    Const(f32),
    /// `buf[idx]`, or 0 where a guard fails (then nothing is read).
    Load {
        /// The buffer.
        buf: Buf,
        /// The element index.
        idx: Idx,
        /// Predicates that must hold for the element to be read.
        guards: Vec<Guard>,
    },
    /// A register's current value.
    Get(Reg),
    /// A binary operation.
    Bin(BinOp, Box<Val>, Box<Val>),
    /// `a * b + c` with one rounding.
    Fma(Box<Val>, Box<Val>, Box<Val>),
    /// `exp(x)` by an inlined polynomial (see `math.rs`).
    Exp(Box<Val>),
    /// `exp(-x)`, as cheap as `exp(x)` (see `math.rs`).
    ExpNeg(Box<Val>),
    /// `buf[idx] + buf[idx + 1]`, unguarded. Where `idx` steps by 2 per lane (a 2-wide,
    /// stride-2 pooling window) a vector of it is two contiguous loads and two `shufps`
    /// instead of an 8-lane gather.
    PairSum {
        /// The buffer read.
        buf: Buf,
        /// The first element of each pair.
        idx: Idx,
    },
    /// A value stored pre-broadcast: `buf[idx..idx + lanes]` holds a copy of it per lane of
    /// the loop (four, or eight in a `Wide` loop), which a vector reads with one plain load
    /// (a broadcast from memory that several FMAs share costs Cranelift a scalar load and a
    /// shuffle on four lanes) and a scalar reads the first of. `idx` must not depend on the
    /// vector loop's variable.
    Splatted {
        /// The buffer read.
        buf: Buf,
        /// The first of the copies.
        idx: Idx,
    },
    /// `buf[idx]` where, in a vector loop, `idx` is `[i, i, i + 1, i + 1]` across the lanes
    /// (`[i, i, .., i + 3, i + 3]` on eight; `i` at lane 0; a 2-wide pooling window's
    /// gradient spread back over its columns): one 8-byte (16-byte) load and a shuffle
    /// instead of a gather. The bounds checker proves the lane
    /// pattern for every iteration it walks; the emitter trusts it.
    PairDup {
        /// The buffer read.
        buf: Buf,
        /// The element index, typically `base + x / 2` for the vector variable `x`.
        idx: Idx,
    },
    /// The low four lanes of an eight-lane value, as a four-lane value: only in a `Wide`
    /// loop, for a four-lane register that sums the halves of eight-lane values in the order
    /// four lanes would (low half, then high half), so that a reduction keeps its bits at
    /// either width. Such a register may be set and read inside the `Wide` loop and stored
    /// (four floats, though the bounds checker counts eight).
    LowHalf(Box<Val>),
    /// The high four lanes of an eight-lane value (see [`Val::LowHalf`]).
    HighHalf(Box<Val>),
    /// `1` where `x > 0`, else `0` (also for NaN): the derivative of ReLU.
    Positive(Box<Val>),
    /// An index value converted to float.
    FromIdx(Idx),
    /// `a` where every guard holds, else `b` (both are evaluated).
    Select {
        /// The predicates.
        guards: Vec<Guard>,
        /// The value where they hold.
        a: Box<Val>,
        /// The value elsewhere.
        b: Box<Val>,
    },
}

impl Val {
    /// An unguarded load.
    pub fn load(buf: Buf, idx: impl Into<Idx>) -> Val {
        Val::Load {
            buf,
            idx: idx.into(),
            guards: Vec::new(),
        }
    }
    /// A binary operation.
    pub fn bin(op: BinOp, a: Val, b: Val) -> Val {
        Val::Bin(op, Box::new(a), Box::new(b))
    }
    /// `a * b + c`.
    pub fn fma(a: Val, b: Val, c: Val) -> Val {
        Val::Fma(Box::new(a), Box::new(b), Box::new(c))
    }
    /// `exp(self)`.
    pub fn exp(self) -> Val {
        Val::Exp(Box::new(self))
    }
    /// `exp(-self)`.
    pub fn exp_neg(self) -> Val {
        Val::ExpNeg(Box::new(self))
    }
}

impl Add for Val {
    type Output = Val;
    fn add(self, o: Val) -> Val {
        Val::bin(BinOp::Add, self, o)
    }
}
impl Sub for Val {
    type Output = Val;
    fn sub(self, o: Val) -> Val {
        Val::bin(BinOp::Sub, self, o)
    }
}
impl Mul for Val {
    type Output = Val;
    fn mul(self, o: Val) -> Val {
        Val::bin(BinOp::Mul, self, o)
    }
}

/// How the emitter generates a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopKind {
    /// A real loop.
    Serial,
    /// Fully unrolled; the bounds must fold to constants and the variable becomes a constant
    /// in each copy.
    Unroll,
    /// A real loop whose body runs on four lanes; the step must be a multiple of 4 and the
    /// trip range a multiple of the step (see [`split`]).
    Vector,
    /// A `Vector` loop on eight lanes (`F32X8`, 256-bit AVX2 registers), for hosts with AVX2
    /// and FMA ([`super::Width`]); the step must be a multiple of 8. Its body may use only
    /// what needs no per-lane code: loads and stores that move by one float per lane or
    /// not at all, unguarded or with lane-invariant guards, registers, constants,
    /// arithmetic, `Exp`/`ExpNeg`, `Positive`, `Splatted` (eight copies), `PairSum` and
    /// `PairDup` (lane moves of the vendored Cranelift). A gather, a scatter, a
    /// lane-varying `FromIdx` or a guarded `Select` is malformed IR there.
    Wide,
}

impl LoopKind {
    /// The lanes of the loop's float values: 1 for `Serial` and `Unroll`, else 4 or 8.
    pub fn lanes(self) -> usize {
        match self {
            LoopKind::Serial | LoopKind::Unroll => 1,
            LoopKind::Vector => 4,
            LoopKind::Wide => 8,
        }
    }

    /// The vector loop kind of `lanes` lanes (4 or 8).
    pub fn vector(lanes: usize) -> LoopKind {
        if lanes == 8 {
            LoopKind::Wide
        } else {
            LoopKind::Vector
        }
    }
}

/// A statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `for var in (lo..hi).step_by(step) { body }`.
    Loop {
        /// The loop variable.
        var: IVar,
        /// The first value.
        lo: Idx,
        /// The exclusive end.
        hi: Idx,
        /// The increment.
        step: i64,
        /// How to generate it.
        kind: LoopKind,
        /// The body.
        body: Vec<Stmt>,
    },
    /// Binds `var` to the value of `idx` here, hoisting an address computation.
    Let {
        /// The bound variable.
        var: IVar,
        /// Its value.
        idx: Idx,
    },
    /// Assigns a register.
    Set {
        /// The register.
        reg: Reg,
        /// Its new value.
        val: Val,
    },
    /// `buf[idx] = val`.
    Store {
        /// The buffer.
        buf: Buf,
        /// The element index.
        idx: Idx,
        /// The stored value.
        val: Val,
    },
}

/// A kernel in loop IR: its name, the number of pointer arguments, its local arrays and body.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// The function name in the JIT module.
    pub name: String,
    /// The number of entries of `bufs`.
    pub params: u32,
    /// The length in floats of each local array.
    pub locals: Vec<usize>,
    /// Parameters the kernel only reads and that no output aliases (per-channel
    /// coefficients): the emitter may load them once before a loop instead of on every
    /// iteration. A store to one of them is malformed IR.
    pub read_only: Vec<Buf>,
    /// The body; the batch range is `N_BEGIN..N_END`.
    pub body: Vec<Stmt>,
}

/// Hands out fresh variables, registers and locals while a kernel is written.
#[derive(Debug)]
pub struct KernelBuilder {
    next_var: u32,
    next_reg: u32,
    locals: Vec<usize>,
    read_only: Vec<Buf>,
}

impl Default for KernelBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelBuilder {
    /// A builder whose first free variable follows the two batch arguments.
    pub fn new() -> Self {
        KernelBuilder {
            next_var: 2,
            next_reg: 0,
            locals: Vec::new(),
            read_only: Vec::new(),
        }
    }
    /// A fresh index variable.
    pub fn var(&mut self) -> IVar {
        self.next_var += 1;
        IVar(self.next_var - 1)
    }
    /// A fresh register array.
    pub fn reg(&mut self) -> u32 {
        self.next_reg += 1;
        self.next_reg - 1
    }
    /// A fresh local array of `len` floats.
    pub fn local(&mut self, len: usize) -> Buf {
        self.locals.push(len);
        Buf::Local(self.locals.len() as u32 - 1)
    }
    /// Declares parameters read-only (see [`Kernel::read_only`]).
    pub fn read_only(&mut self, bufs: &[Buf]) {
        self.read_only.extend_from_slice(bufs);
    }
    /// Finishes the kernel.
    pub fn finish(self, name: String, params: u32, body: Vec<Stmt>) -> Kernel {
        Kernel {
            name,
            params,
            locals: self.locals,
            read_only: self.read_only,
            body,
        }
    }
}

/// Element `elem` of register array `id`.
pub fn reg(id: u32, elem: impl Into<Idx>) -> Reg {
    Reg {
        id,
        elem: elem.into(),
    }
}

/// A loop statement.
pub fn for_(
    var: IVar,
    lo: impl Into<Idx>,
    hi: impl Into<Idx>,
    kind: LoopKind,
    body: Vec<Stmt>,
) -> Stmt {
    Stmt::Loop {
        var,
        lo: lo.into(),
        hi: hi.into(),
        step: 1,
        kind,
        body,
    }
}

/// Covers the constant range `0..n` with vector loops of decreasing `steps` (each a multiple
/// of 4, the last one 4) and, instead of a scalar tail, one more vector trip at `n - 4` that
/// recomputes up to three elements the loops before it already did; below four elements it
/// is a scalar loop. Only for bodies whose stores overwrite with values that do not depend
/// on the trip (a recomputed element is written twice with the same value): a scalar tail
/// element costs as much as four vector ones.
pub fn split_overlapping(
    b: &mut KernelBuilder,
    n: usize,
    steps: &[usize],
    body: impl FnMut(&mut KernelBuilder, IVar, usize) -> Vec<Stmt>,
) -> Vec<Stmt> {
    split_overlapping_lanes(b, n, steps, 4, body)
}

/// [`split_overlapping`] with vectors of `lanes` lanes (4: `Vector` loops, 8: `Wide` ones):
/// the steps are multiples of `lanes`, the last one `lanes`, and the overlapping trip is at
/// `n - lanes`; below `lanes` elements it is a scalar loop.
pub fn split_overlapping_lanes(
    b: &mut KernelBuilder,
    n: usize,
    steps: &[usize],
    lanes: usize,
    mut body: impl FnMut(&mut KernelBuilder, IVar, usize) -> Vec<Stmt>,
) -> Vec<Stmt> {
    debug_assert!(steps.last() == Some(&lanes) && steps.iter().all(|s| s % lanes == 0));
    if n < lanes {
        return split(b, 0usize.into(), n.into(), &[1], false, body);
    }
    let main = n - n % lanes;
    let kind = LoopKind::vector(lanes);
    let mut out = split_lanes(b, 0usize.into(), main.into(), steps, lanes, &mut body);
    if main < n {
        let var = b.var();
        let stmts = body(b, var, lanes);
        out.push(Stmt::Loop {
            var,
            lo: (n - lanes).into(),
            hi: n.into(),
            step: lanes as i64,
            kind,
            body: stmts,
        });
    }
    out
}

/// Splits `lo..hi` into consecutive loops with decreasing steps so each covers a whole number
/// of steps: e.g. steps `[8, 4, 1]` give a vector loop taking two vectors per trip, one taking
/// one vector, and a scalar tail. `body(b, var, step)` writes the body for one step size
/// (which should process `var..var + step`). Steps above 1 become `Vector` loops when
/// `vectorize`, else `Serial` loops (e.g. blocking over the batch).
pub fn split(
    b: &mut KernelBuilder,
    lo: Idx,
    hi: Idx,
    steps: &[usize],
    vectorize: bool,
    body: impl FnMut(&mut KernelBuilder, IVar, usize) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let lanes = if vectorize { 4 } else { 1 };
    split_lanes(b, lo, hi, steps, lanes, body)
}

/// [`split`] whose steps become vector loops of up to `lanes` lanes: a step that is a
/// multiple of `lanes` (above 1) a loop of that many (`Wide` for 8, `Vector` for 4), any
/// other step above 1 a `Vector` loop, and steps of 1 (or all steps, for `lanes` 1) `Serial`
/// loops. The body of a step sees its lanes as [`step_lanes`] gives them.
pub fn split_lanes(
    b: &mut KernelBuilder,
    lo: Idx,
    hi: Idx,
    steps: &[usize],
    lanes: usize,
    mut body: impl FnMut(&mut KernelBuilder, IVar, usize) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let mut out = Vec::new();
    let mut start = lo;
    for (i, &step) in steps.iter().enumerate() {
        let var = b.var();
        let end = if i + 1 == steps.len() {
            hi.clone()
        } else {
            start.clone() + (hi.clone() - start.clone()).floor_div(step as i64) * step
        };
        let kind = LoopKind::vector(step_lanes(step, lanes));
        let kind = if step > 1 && lanes > 1 {
            kind
        } else {
            LoopKind::Serial
        };
        let stmts = body(b, var, step);
        out.push(Stmt::Loop {
            var,
            lo: start,
            hi: end.clone(),
            step: step as i64,
            kind,
            body: stmts,
        });
        start = end;
    }
    out
}

/// The lanes of the vector loop [`split_lanes`] makes of `step` with vectors of up to
/// `lanes`: `lanes` if the step is a multiple of it, else 4.
pub fn step_lanes(step: usize, lanes: usize) -> usize {
    if step.is_multiple_of(lanes) { lanes } else { 4 }
}
