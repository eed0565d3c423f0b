//! Tensor types of the IR: an element type and a shape whose dimensions are either fixed
//! sizes or the symbolic batch size (written `N`). Every value has one type; shape
//! inference fills them in, the printer writes them after a `:`.

use std::fmt;

use crate::DType;

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A size known at compile time.
    Fixed(usize),
    /// A size bound at run time, by name (the batch size `N`).
    Sym(String),
}

impl Dim {
    /// The fixed size, if known.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// The type of a value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// The element type.
    pub dtype: DType,
    /// The dimensions, outermost first.
    pub dims: Vec<Dim>,
}

impl TensorType {
    /// An `f32` type with the given dimensions.
    pub fn f32(dims: Vec<Dim>) -> TensorType {
        TensorType {
            dtype: DType::F32,
            dims,
        }
    }

    /// An `f32` type whose dimensions are all fixed.
    pub fn f32_fixed(dims: &[usize]) -> TensorType {
        TensorType::f32(dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    /// The rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The concrete shape with every symbol bound to `batch`.
    pub fn concrete(&self, batch: usize) -> Vec<usize> {
        self.dims
            .iter()
            .map(|d| d.fixed().unwrap_or(batch))
            .collect()
    }

    /// The product of the fixed dimensions, or `None` if any is symbolic or it overflows.
    pub fn fixed_elements(&self) -> Option<usize> {
        self.dims
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(d.fixed()?))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// A position in a source file, 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Line, starting at 1.
    pub line: u32,
    /// Column in characters, starting at 1.
    pub col: u32,
}

impl Span {
    /// A span at `line:col`.
    pub fn new(line: u32, col: u32) -> Span {
        Span { line, col }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}
