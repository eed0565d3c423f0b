//! The text format: a line-oriented IR (see `docs/IR.md`). `parse` builds a graph from
//! text, creating parameters that the text leaves implicit; `print` writes the canonical
//! form with every attribute and type, which `parse` reads back to the same graph.
//! Pictures of a graph come from here too: DOT for Graphviz (`to_dot_annotated`) and a
//! standalone SVG with its own layered layout (`to_svg`), both showing the fused kernels
//! and folded BatchNorms given as `Annotations`.

mod dot;
mod layout;
mod lexer;
mod parser;
mod picture;
mod printer;
mod svg;

use thiserror::Error;

pub use dot::{to_dot, to_dot_annotated};
pub use layout::{Item, Layout, layout};
pub use parser::parse;
pub use parser::parse_bytes;
pub use picture::{Annotations, Cluster, NodeLook, Shape, look};
pub use printer::{print, print_marked};
pub use svg::{to_svg, xml_escape};

use crate::ir::Span;

/// Lines longer than this are refused: no model needs them, and refusing them bounds the
/// parser's work on hostile input.
pub const MAX_LINE_CHARS: usize = 4096;

/// What is wrong with the text.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The file is not UTF-8.
    #[error("the file is not valid UTF-8")]
    InvalidUtf8,
    /// The file has no statements.
    #[error("empty model: expected `input` and `output` statements")]
    Empty,
    /// A line is too long.
    #[error("line is {len} characters long; the limit is {max}", max = MAX_LINE_CHARS)]
    LineTooLong {
        /// The line's length in characters.
        len: usize,
    },
    /// A character that starts no token.
    #[error("unexpected character `{}`", ch.escape_debug())]
    UnexpectedChar {
        /// The character.
        ch: char,
    },
    /// A number that does not parse or is out of range.
    #[error("invalid number `{text}`")]
    BadNumber {
        /// The text of the number.
        text: String,
    },
    /// A token other than the grammar allows here.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar allows.
        expected: &'static str,
        /// What was there (`end of line` at the end).
        found: String,
    },
    /// An op name that is not in the op table.
    #[error("unknown op `{name}`{}", did_you_mean(.suggestion))]
    UnknownOp {
        /// The name written.
        name: String,
        /// The closest op name.
        suggestion: Option<&'static str>,
    },
    /// An element type other than `f32` or `i32`.
    #[error("unknown element type `{name}`; expected `f32` or `i32`")]
    UnknownDType {
        /// The name written.
        name: String,
    },
    /// A symbolic dimension other than the batch size `N`.
    #[error(
        "symbolic dimension `{name}` is not supported; only the batch size `N` may be symbolic"
    )]
    UnknownSymbol {
        /// The name written.
        name: String,
    },
    /// An attribute the op does not have.
    #[error("{op} has no attribute `{attr}`{}", did_you_mean(.suggestion))]
    UnknownAttr {
        /// The op's name.
        op: &'static str,
        /// The attribute written.
        attr: String,
        /// The closest attribute name.
        suggestion: Option<&'static str>,
    },
    /// An attribute given twice.
    #[error("attribute `{attr}` is given twice")]
    DuplicateAttr {
        /// The attribute.
        attr: String,
    },
    /// A required attribute is missing.
    #[error("{op} requires attribute `{attr}`")]
    MissingAttr {
        /// The op's name.
        op: &'static str,
        /// The attribute.
        attr: &'static str,
    },
    /// An attribute value of the wrong kind or out of range.
    #[error("attribute `{attr}` of {op} expects {expected}, found {found}")]
    BadValue {
        /// The op's name.
        op: &'static str,
        /// The attribute.
        attr: &'static str,
        /// What it accepts.
        expected: &'static str,
        /// What was written.
        found: String,
    },
    /// A wrong number of operands.
    #[error("{op} takes {data} operand{s}{with}, got {got}",
        s = if *.data == 1 { "" } else { "s" },
        with = if .all > .data { format!(" ({} with its parameters)", .all) } else { String::new() })]
    Arity {
        /// The op's name.
        op: &'static str,
        /// Its data operand count.
        data: usize,
        /// Its operand count with parameters.
        all: usize,
        /// The count written.
        got: usize,
    },
    /// A name used but never defined.
    #[error("undefined value `{name}`")]
    Undefined {
        /// The name.
        name: String,
    },
    /// A name defined twice.
    #[error("`{name}` is already defined at {first}")]
    DuplicateName {
        /// The name.
        name: String,
        /// Where it was first defined (0:0 for a parameter created implicitly).
        first: Span,
    },
    /// The values depend on each other in a cycle.
    #[error("cycle through {}", .names.join(" -> "))]
    Cycle {
        /// The names on or behind the cycle, in definition order.
        names: Vec<String>,
    },
    /// No `input` statement.
    #[error("model has no `input` statement")]
    NoInput,
    /// No `output` statement.
    #[error("model has no `output` statement")]
    NoOutput,
    /// More than one `output` statement.
    #[error("second `output` statement; list all outputs in one")]
    SecondOutput,
}

fn did_you_mean(s: &Option<&'static str>) -> String {
    s.map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// A parse error and where it is.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{kind}")]
pub struct ParseError {
    /// Where the problem is.
    pub span: Span,
    /// What the problem is.
    pub kind: ParseErrorKind,
}
