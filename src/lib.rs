//! bnc: a batch-norm-aware graph compiler and JIT runtime for convolutional networks.
//!
//! This facade re-exports the two crates and adds what every caller needs: reading a
//! model file into a verified graph and compiling it for a mode, with errors that name
//! `file:line:col`.
//!
//! ```
//! let g = bnc::load_model("models/lenet_bn.ir")?;
//! let (g, _steps) = bnc::compile(g, bnc::Mode::Infer, &bnc::CompileOptions::default())
//!     .map_err(|e| e.in_file("models/lenet_bn.ir"))?;
//! assert_eq!(g.outputs().len(), 1);
//! # Ok::<(), bnc::Error>(())
//! ```

use std::path::Path;

/// The README's Rust example runs as a doctest, so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

use thiserror::Error;

pub mod import;

pub use bnc_compiler as compiler;
pub use bnc_compiler::ir::Graph;
pub use bnc_compiler::passes::{Mode, PassError, PrintAfter, Step};
pub use bnc_runtime as runtime;
pub use bnc_runtime::atomic::write_atomically;

use bnc_compiler::ir::{ShapeError, Span, VerifyError};
use bnc_compiler::passes::{PassManager, default_pipeline};
use bnc_compiler::text::{ParseError, parse_bytes};

/// The bodies of the fuzz targets, shared with the corpus replay test.
#[doc(hidden)]
pub mod fuzzing;

/// An error while loading or compiling a model, with its location in the file.
#[derive(Debug, Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text does not parse.
    #[error("{file}:{}: {error}", error.span)]
    Parse {
        /// The file.
        file: String,
        /// The error.
        error: ParseError,
    },
    /// The shapes do not fit together.
    #[error("{file}:{}: {error}", error.span)]
    Shape {
        /// The file.
        file: String,
        /// The error.
        error: Box<ShapeError>,
    },
    /// The graph as written breaks an invariant.
    #[error("{file}:{}: {error}", error.span)]
    Invalid {
        /// The file.
        file: String,
        /// The error.
        error: Box<VerifyError>,
    },
    /// A pass failed (unknown pass name, or a compiler bug caught by the verifier).
    #[error("{0}")]
    Pass(PassError),
}

impl Error {
    /// Attaches the file name to an error from [`compile`], which knows no file.
    pub fn in_file(self, file: &str) -> Error {
        match self {
            Error::Shape { error, .. } => Error::Shape {
                file: file.into(),
                error,
            },
            Error::Invalid { error, .. } => Error::Invalid {
                file: file.into(),
                error,
            },
            Error::Parse { error, .. } => Error::Parse {
                file: file.into(),
                error,
            },
            other => other,
        }
    }

    /// The location in the file, when the error has one.
    pub fn span(&self) -> Option<Span> {
        match self {
            Error::Parse { error, .. } => Some(error.span),
            Error::Shape { error, .. } => Some(error.span),
            Error::Invalid { error, .. } => Some(error.span),
            _ => None,
        }
    }
}

impl From<PassError> for Error {
    fn from(e: PassError) -> Error {
        match e {
            PassError::Shape(error) => Error::Shape {
                file: String::new(),
                error,
            },
            PassError::Invalid(error) => Error::Invalid {
                file: String::new(),
                error,
            },
            other => Error::Pass(other),
        }
    }
}

/// Parses model text; `file` names it in errors.
pub fn parse_model(file: &str, src: &[u8]) -> Result<Graph, Error> {
    parse_bytes(src).map_err(|error| Error::Parse {
        file: file.into(),
        error,
    })
}

/// Reads and parses a model file.
pub fn load_model(path: impl AsRef<Path>) -> Result<Graph, Error> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let src = std::fs::read(path).map_err(|source| Error::Io {
        path: file.clone(),
        source,
    })?;
    parse_model(&file, &src)
}

/// How to compile: which passes and which dumps.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// The passes to run, by name; `None` for the mode's default pipeline.
    pub passes: Option<Vec<String>>,
    /// When to keep IR dumps.
    pub print_after: PrintAfter,
}

/// Runs the pass pipeline over a parsed graph; returns the final graph and each step
/// (its pass, whether it changed the graph, its time, an optional IR dump, and the
/// remarks that explain its decisions).
///
/// ```
/// let src = b"input x: f32[N,3,8,8]\nc = conv2d(x, channels=4, kernel=3)\nbn = batch_norm(c)\noutput bn\n";
/// let g = bnc::parse_model("m.ir", src)?;
/// let (g, steps) = bnc::compile(g, bnc::Mode::Infer, &bnc::CompileOptions::default())?;
/// // fold-bn folded the BatchNorm into the convolution and says so.
/// let remarks: Vec<String> = steps
///     .iter()
///     .flat_map(|s| s.remarks.iter().map(move |r| format!("{}: {}: {}", s.pass, r.node, r.message)))
///     .collect();
/// assert_eq!(remarks, ["fold-bn: bn: folded into `c`"]);
/// assert_eq!(g.node(g.outputs()[0]).name, "c");
/// # Ok::<(), bnc::Error>(())
/// ```
pub fn compile(
    mut g: Graph,
    mode: Mode,
    opts: &CompileOptions,
) -> Result<(Graph, Vec<Step>), Error> {
    let names: Vec<String> = match &opts.passes {
        Some(p) => p.clone(),
        None => default_pipeline(mode)
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let mut pm = PassManager::new(&names)?.with_print_after(opts.print_after.clone());
    let steps = pm.run(&mut g, mode)?;
    Ok((g, steps))
}
