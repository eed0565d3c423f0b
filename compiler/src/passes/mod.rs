//! The pass manager and the registry of passes. One table (name, summary, constructor)
//! backs `--passes`, `--print-after=NAME` and "did you mean". The manager runs each pass,
//! verifies the graph after it, optionally keeps a dump of the IR, and times it. Passes
//! never print, read files or the environment, or keep global state.

mod attach_loss;
mod autodiff;
mod dead_code;
mod fold_batch_norm;
mod fuse_bn_train;
mod infer_shapes;
mod lower_batch_norm;
mod redundant_bias;

use std::time::{Duration, Instant};

use thiserror::Error;

pub use attach_loss::AttachLoss;
pub use autodiff::{Autodiff, gradient_outputs};
pub use dead_code::DeadCodeElimination;
pub use fold_batch_norm::{FoldBatchNorm, folded_into};
pub use fuse_bn_train::FuseBnTrain;
pub use infer_shapes::{InferShapes, infer_shapes};
pub use lower_batch_norm::LowerBatchNorm;
pub use redundant_bias::RedundantBias;

use crate::ir::{Graph, ShapeError, VerifyError, verify};
use crate::suggest::suggest;
use crate::text::print_marked;

/// What the compiled graph is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Inference: BatchNorm uses running statistics.
    Infer,
    /// Training: BatchNorm uses batch statistics; the graph ends in a loss.
    Train,
}

impl Mode {
    /// `infer` or `train`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Infer => "infer",
            Mode::Train => "train",
        }
    }
}

/// A graph-to-graph rewrite.
pub trait Pass {
    /// The registry name (`dce`).
    fn name(&self) -> &'static str;
    /// Rewrites the graph; returns whether anything changed.
    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<bool, PassError>;
}

/// What a pass may read and report besides the graph: the mode, and remarks that explain
/// its decisions (`bnc compile --explain` prints them; passes themselves never print).
#[derive(Clone, Debug)]
pub struct PassContext {
    /// The mode being compiled for.
    pub mode: Mode,
    /// Remarks of the pass that is running.
    pub remarks: Vec<Remark>,
}

/// One explained decision of a pass, about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remark {
    /// The node the decision is about.
    pub node: String,
    /// The decision and its reason, as a lowercase sentence without a trailing period.
    pub message: String,
}

/// Why compilation stopped.
#[derive(Debug, Error)]
pub enum PassError {
    /// The model's shapes do not fit together: a user error with a location.
    #[error(transparent)]
    Shape(Box<ShapeError>),
    /// A pass name that is not registered.
    #[error("unknown pass `{name}`{}", suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownPass {
        /// The name given.
        name: String,
        /// The closest registered name.
        suggestion: Option<&'static str>,
    },
    /// The verifier failed after a pass: a compiler bug. Carries the IR with the bad
    /// node marked.
    #[error("internal error: the verifier failed after pass `{pass}`: {error}\n{ir}")]
    Verify {
        /// The pass that broke the graph.
        pass: &'static str,
        /// The failure.
        error: Box<VerifyError>,
        /// The IR after the pass, with the bad node marked.
        ir: String,
    },
    /// Train mode needs a graph with one output (the logits) or a loss output.
    #[error(
        "train mode needs one output (the logits) or a softmax_cross_entropy output, found {count} outputs"
    )]
    TrainOutputs {
        /// The number of outputs.
        count: usize,
    },
    /// `autodiff` needs a loss to differentiate.
    #[error("autodiff needs a softmax_cross_entropy output (run attach-loss first)")]
    NoLoss,
    /// An op on the way from a trainable parameter to the loss has no gradient rule.
    #[error("autodiff cannot differentiate `{node}`: {op} has no gradient rule")]
    NotDifferentiable {
        /// The node.
        node: String,
        /// Its op's text name.
        op: &'static str,
    },
    /// The name of a parameter's gradient, `grad.<param>`, is taken by another node.
    #[error("autodiff names the gradient of `{param}` `grad.{param}`, but that name is taken")]
    GradName {
        /// The parameter.
        param: String,
    },
    /// The verifier failed on the graph as given (before any pass).
    #[error(transparent)]
    Invalid(Box<VerifyError>),
}

impl From<ShapeError> for PassError {
    fn from(e: ShapeError) -> PassError {
        PassError::Shape(Box::new(e))
    }
}

/// One row of the registry.
pub struct PassInfo {
    /// The CLI name.
    pub name: &'static str,
    /// One line for `bnc passes`.
    pub summary: &'static str,
    /// Creates the pass.
    pub make: fn() -> Box<dyn Pass>,
}

/// Every pass, in the order `bnc passes` lists them.
pub const REGISTRY: &[PassInfo] = &[
    PassInfo {
        name: "infer-shapes",
        summary: "infer every value's type and every parameter's shape from the inputs",
        make: || Box::new(InferShapes),
    },
    PassInfo {
        name: "verify",
        summary: "check the graph's invariants and types (also runs after every pass)",
        make: || Box::new(VerifyPass),
    },
    PassInfo {
        name: "lower-batch-norm",
        summary: "turn batch_norm into batch_norm_infer or batch_norm_train for the mode",
        make: || Box::new(LowerBatchNorm),
    },
    PassInfo {
        name: "attach-loss",
        summary: "train mode: add i32 labels and a mean softmax cross-entropy loss",
        make: || Box::new(AttachLoss),
    },
    PassInfo {
        name: "redundant-bias",
        summary: "train mode: drop the bias of a conv2d/dense whose only consumer is a batch_norm_train",
        make: || Box::new(RedundantBias),
    },
    PassInfo {
        name: "autodiff",
        summary: "train mode: append the gradient of the loss w.r.t. every trainable parameter",
        make: || Box::new(Autodiff),
    },
    PassInfo {
        name: "fuse-bn-train",
        summary: "train mode: split batch_norm_train and its backward into the fused kernels' pieces (statistics, apply, one-pass sums)",
        make: || Box::new(FuseBnTrain),
    },
    PassInfo {
        name: "fold-bn",
        summary: "infer mode: fold batch_norm_infer into the preceding conv2d/dense, else make it a scale_shift",
        make: || Box::new(FoldBatchNorm { fold: true }),
    },
    PassInfo {
        name: "bn-scale-shift",
        summary: "infer mode: turn every batch_norm_infer into a scale_shift without folding (--no-fold)",
        make: || Box::new(FoldBatchNorm { fold: false }),
    },
    PassInfo {
        name: "dce",
        summary: "remove nodes and parameters that no output depends on",
        make: || Box::new(DeadCodeElimination),
    },
];

/// The default pipeline for a mode.
pub fn default_pipeline(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Infer => inference_pipeline(true),
        Mode::Train => &[
            "infer-shapes",
            "lower-batch-norm",
            "attach-loss",
            "redundant-bias",
            "autodiff",
            "fuse-bn-train",
            "dce",
        ],
    }
}

/// The inference pipeline, with or without folding BatchNorm into its producer.
pub fn inference_pipeline(fold: bool) -> &'static [&'static str] {
    if fold {
        &["infer-shapes", "lower-batch-norm", "fold-bn", "dce"]
    } else {
        &["infer-shapes", "lower-batch-norm", "bn-scale-shift", "dce"]
    }
}

/// Looks a pass up by name.
pub fn lookup(name: &str) -> Result<&'static PassInfo, PassError> {
    REGISTRY
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| PassError::UnknownPass {
            name: name.to_string(),
            suggestion: suggest(name, REGISTRY.iter().map(|p| p.name)),
        })
}

/// The `verify` pass: the verifier on demand.
pub struct VerifyPass;

impl Pass for VerifyPass {
    fn name(&self) -> &'static str {
        "verify"
    }

    fn run(&mut self, g: &mut Graph, _cx: &mut PassContext) -> Result<bool, PassError> {
        verify(g, is_typed(g)).map_err(|e| PassError::Invalid(Box::new(e)))?;
        Ok(false)
    }
}

/// Whether every node has a type (shape inference has run).
pub fn is_typed(g: &Graph) -> bool {
    g.node_ids().into_iter().all(|id| g.node(id).ty.is_some())
}

/// When to keep a dump of the IR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PrintAfter {
    /// Never.
    #[default]
    Never,
    /// After every pass.
    All,
    /// After every pass that changed the graph.
    Change,
    /// After the named passes.
    Named(Vec<String>),
}

/// What happened in one pass.
#[derive(Clone, Debug)]
pub struct Step {
    /// The pass.
    pub pass: &'static str,
    /// Whether it changed the graph.
    pub changed: bool,
    /// Its wall time, verification excluded.
    pub elapsed: Duration,
    /// The IR after it, when asked for.
    pub ir: Option<String>,
    /// The decisions it explained.
    pub remarks: Vec<Remark>,
}

/// Runs a sequence of passes with verification after each.
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    print_after: PrintAfter,
}

impl PassManager {
    /// A manager for the named passes; unknown names are an error with a suggestion.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<PassManager, PassError> {
        let passes = names
            .iter()
            .map(|n| lookup(n.as_ref()).map(|p| (p.make)()))
            .collect::<Result<_, _>>()?;
        Ok(PassManager {
            passes,
            print_after: PrintAfter::Never,
        })
    }

    /// The default pipeline for a mode.
    pub fn for_mode(mode: Mode) -> PassManager {
        PassManager::new(default_pipeline(mode)).unwrap_or_else(|_| PassManager {
            passes: Vec::new(),
            print_after: PrintAfter::Never,
        })
    }

    /// Keeps IR dumps as `print_after` says.
    pub fn with_print_after(mut self, print_after: PrintAfter) -> PassManager {
        self.print_after = print_after;
        self
    }

    /// Runs the passes in order. The graph is verified before the first pass and after
    /// each; a failure after a pass names the pass and marks the node.
    pub fn run(&mut self, g: &mut Graph, mode: Mode) -> Result<Vec<Step>, PassError> {
        verify(g, is_typed(g)).map_err(|e| PassError::Invalid(Box::new(e)))?;
        let mut steps = Vec::new();
        for pass in &mut self.passes {
            let start = Instant::now();
            let mut cx = PassContext {
                mode,
                remarks: Vec::new(),
            };
            let changed = pass.run(g, &mut cx)?;
            let elapsed = start.elapsed();
            let name = pass.name();
            if let Err(error) = verify(g, is_typed(g)) {
                let mark = g.lookup(&error.node);
                return Err(PassError::Verify {
                    pass: name,
                    ir: print_marked(g, mark),
                    error: Box::new(error),
                });
            }
            let dump = match &self.print_after {
                PrintAfter::Never => false,
                PrintAfter::All => true,
                PrintAfter::Change => changed,
                PrintAfter::Named(names) => names.iter().any(|n| n == name),
            };
            steps.push(Step {
                pass: name,
                changed,
                elapsed,
                ir: dump.then(|| crate::text::print(g)),
                remarks: cx.remarks,
            });
        }
        Ok(steps)
    }
}
