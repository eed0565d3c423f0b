//! ONNX import: an `.onnx` file becomes a bnc model (a typed [`Graph`], printed as IR
//! text) and a parameter store (written as safetensors).
//!
//! The file is decoded by a small hand-written protobuf reader ([`proto`], [`onnx`]); the
//! converter ([`convert`]) maps each ONNX node to a bnc op and each initializer to a bnc
//! parameter named `<node>.<slot>` with bnc's (PyTorch's) layout, transposing where ONNX
//! stores a matrix the other way. Supported: Conv, BatchNormalization, Gemm, MatMul
//! (with a following Add of a constant as its bias), Relu, Sigmoid, Tanh, AveragePool,
//! MaxPool, Flatten, Reshape (to 2-D), Add, Softmax and Constant. Anything else, and any
//! attribute value bnc cannot express, is an [`ImportError`] naming the node, its op type
//! and the attribute. Decoding never panics and never allocates from a size it has not
//! checked against the file: a length prefix is a slice of the input, and a tensor's
//! element count is checked against its data before the data is copied.
//!
//! ```no_run
//! let bytes = std::fs::read("lenet_bn.onnx")?;
//! let imported = bnc::import::import_onnx(&bytes)?;
//! imported.save("lenet_bn.onnx", "lenet_bn.ir".as_ref(), "lenet_bn.safetensors".as_ref())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod convert;
pub mod onnx;
mod ops;
pub mod proto;
mod tensor;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use bnc_compiler::ir::ShapeError;
use bnc_compiler::passes::PassError;
use bnc_compiler::text::print;
use bnc_runtime::weights::{ParamStore, WeightsError};

use crate::Graph;

pub use convert::import_onnx;
pub use proto::ProtoError;

/// The largest file bnc reads: protobuf messages are limited to 2 GiB.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// An ONNX node as errors name it: its name (or its position, when it has none) and its
/// op type. Boxed, so that errors stay small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRef(Box<NodeInfo>);

/// What [`NodeRef`] holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name in the file; empty when it has none.
    pub name: String,
    /// Its position among the graph's nodes, from 0.
    pub index: usize,
    /// The op type (`Conv`).
    pub op_type: String,
}

impl NodeRef {
    /// The node at `index` named `name` (possibly empty) of type `op_type`.
    pub fn new(name: &str, index: usize, op_type: &str) -> NodeRef {
        NodeRef(Box::new(NodeInfo {
            name: name.to_string(),
            index,
            op_type: op_type.to_string(),
        }))
    }

    /// The node's name, index and op type.
    pub fn info(&self) -> &NodeInfo {
        &self.0
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.0;
        if n.name.is_empty() {
            write!(f, "node #{} ({})", n.index, n.op_type)
        } else {
            write!(f, "node `{}` ({})", n.name, n.op_type)
        }
    }
}

/// Everything that can go wrong importing an ONNX file.
#[derive(Debug, Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is larger than a protobuf message can be.
    #[error("the file has {len} bytes, more than the 2 GiB a protobuf message can hold")]
    TooLarge {
        /// Its size in bytes.
        len: u64,
    },
    /// The bytes are not a valid protobuf encoding of an ONNX model.
    #[error("malformed ONNX file: {0}")]
    Decode(#[from] ProtoError),
    /// The model has no graph.
    #[error("the ONNX model has no graph")]
    NoGraph,
    /// The default operator set is missing or older than bnc reads.
    #[error("ONNX opset {version} is not supported (7 or newer is)")]
    Opset {
        /// The default domain's opset version (0 when the file imports none).
        version: i64,
    },
    /// An operator bnc does not import.
    #[error(
        "{node}: unsupported op `{}` (bnc imports Conv, BatchNormalization, Gemm, MatMul, Add, Relu, Sigmoid, Tanh, AveragePool, MaxPool, Flatten, Reshape, Softmax, Constant)",
        qualified(&node.info().op_type, domain)
    )]
    UnsupportedOp {
        /// The node.
        node: NodeRef,
        /// Its domain, when not the default one.
        domain: String,
    },
    /// An attribute that the op does not define, or that bnc does not read.
    #[error("{node}: unsupported attribute `{attribute}`")]
    UnknownAttribute {
        /// The node.
        node: NodeRef,
        /// The attribute's name.
        attribute: String,
    },
    /// An attribute value that bnc cannot express.
    #[error("{node}: attribute `{attribute}` = {value} is not supported (supported: {supported})")]
    UnsupportedAttribute {
        /// The node.
        node: NodeRef,
        /// The attribute's name.
        attribute: String,
        /// The value found, as text.
        value: String,
        /// What bnc supports, in words.
        supported: &'static str,
    },
    /// An attribute of the wrong type.
    #[error("{node}: attribute `{attribute}` must be of type {expected}")]
    AttributeType {
        /// The node.
        node: NodeRef,
        /// The attribute's name.
        attribute: String,
        /// The type it must have.
        expected: &'static str,
    },
    /// A required attribute is absent.
    #[error("{node}: missing attribute `{attribute}`")]
    MissingAttribute {
        /// The node.
        node: NodeRef,
        /// The attribute's name.
        attribute: String,
    },
    /// A required input is absent.
    #[error("{node}: missing input {input}")]
    MissingInput {
        /// The node.
        node: NodeRef,
        /// The input's name in the operator's schema (`W`).
        input: &'static str,
    },
    /// An input that bnc needs as a constant (a weight) is computed by the graph.
    #[error("{node}: input {input} (`{value}`) must be an initializer or a Constant")]
    NotConstant {
        /// The node.
        node: NodeRef,
        /// The input's name in the schema.
        input: &'static str,
        /// The value's name.
        value: String,
    },
    /// A data input is a constant, which bnc ops cannot take.
    #[error(
        "{node}: input `{value}` is a constant; bnc imports constants only as weights, biases and BatchNorm statistics"
    )]
    ConstantData {
        /// The node.
        node: NodeRef,
        /// The value's name.
        value: String,
    },
    /// An input names a value that no earlier node, graph input or initializer defines.
    #[error("{node}: input `{value}` is not defined before the node")]
    Undefined {
        /// The node.
        node: NodeRef,
        /// The value's name.
        value: String,
    },
    /// A node uses an optional output that bnc does not compute.
    #[error("{node}: output {position} (`{value}`) is not supported (only the first output is)")]
    ExtraOutput {
        /// The node.
        node: NodeRef,
        /// The output's position, from 0.
        position: usize,
        /// The value's name.
        value: String,
    },
    /// A weight has a shape the op cannot use.
    #[error("{node}: input {input} `{value}` has shape {shape:?}, expected {expected}")]
    WeightShape {
        /// The node.
        node: NodeRef,
        /// The input's name in the schema.
        input: &'static str,
        /// The initializer's name.
        value: String,
        /// Its dimensions.
        shape: Vec<usize>,
        /// What the op needs, in words.
        expected: &'static str,
    },
    /// A Reshape that is not a flatten to `[batch, features]`.
    #[error(
        "{node}: Reshape to {shape:?} is not supported (only to 2-D, [batch, features] from {input})"
    )]
    Reshape {
        /// The node.
        node: NodeRef,
        /// The target shape.
        shape: Vec<i64>,
        /// The type of the data input.
        input: String,
    },
    /// A tensor of an element type bnc does not read.
    #[error("tensor `{tensor}` has data type {data_type}, expected {expected}")]
    TensorType {
        /// The tensor's name.
        tensor: String,
        /// The type found.
        data_type: &'static str,
        /// The type needed.
        expected: &'static str,
    },
    /// A tensor whose data is in an external file.
    #[error("tensor `{tensor}` keeps its data in an external file, which bnc does not read")]
    ExternalData {
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor with negative or absurdly large dimensions.
    #[error("tensor `{tensor}` has dimensions {dims:?}, which bnc cannot hold")]
    TensorDims {
        /// The tensor's name.
        tensor: String,
        /// Its dimensions.
        dims: Vec<i64>,
    },
    /// A tensor whose data does not match its dimensions.
    #[error("tensor `{tensor}` has {found}, expected {expected} elements")]
    TensorData {
        /// The tensor's name.
        tensor: String,
        /// The element count the dimensions give.
        expected: usize,
        /// What the data holds, in words.
        found: String,
    },
    /// A graph input bnc cannot take.
    #[error("graph input `{name}`: {problem}")]
    Input {
        /// The input's name.
        name: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// The graph has no input that is not an initializer.
    #[error("the graph has no input")]
    NoInput,
    /// A graph output that no node computes.
    #[error("graph output `{name}` is not computed by any node")]
    Output {
        /// The output's name.
        name: String,
    },
    /// The converted graph fails shape inference: the ONNX model's shapes do not fit
    /// together (or not in a way bnc supports).
    #[error("{node}: {error}")]
    Shape {
        /// The ONNX node the failing bnc op came from.
        node: NodeRef,
        /// The shape error.
        error: Box<ShapeError>,
    },
    /// Two bnc nodes would get one name (a bug in the importer, whose names are unique).
    #[error("internal error: the imported graph names two values `{name}`")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// The converted graph breaks a bnc invariant (a bug in the importer).
    #[error("the imported graph is invalid: {0}")]
    Pass(PassError),
    /// The IR file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The IR file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The weights file could not be written.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

fn qualified(op_type: &str, domain: &str) -> String {
    if domain.is_empty() || domain == "ai.onnx" {
        op_type.to_string()
    } else {
        format!("{domain}.{op_type}")
    }
}

/// An imported model: the typed graph and its parameters, with where it came from.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The graph after shape inference, every parameter typed.
    pub graph: Graph,
    /// The parameters, by bnc name.
    pub params: ParamStore,
    /// The file's `producer_name`.
    pub producer: String,
    /// The default domain's opset version.
    pub opset: i64,
    /// How BatchNorm's running variance is updated in training (see `docs/BATCHNORM.md`):
    /// `unbiased` for files written by PyTorch, else ONNX's `biased`.
    pub running_var: bnc_compiler::ir::VarConvention,
    /// The number of ONNX nodes imported.
    pub nodes: usize,
}

impl Imported {
    /// The model as IR text: a comment naming the source, then the canonical form.
    pub fn ir_text(&self, source: &str) -> String {
        let producer = if self.producer.is_empty() {
            "unknown producer"
        } else {
            &self.producer
        };
        format!(
            "# Imported from {source} ({producer}, opset {}) by `bnc import`.\n\
             # BatchNorm: momentum as in ONNX (weight of the old running value), running_var={}.\n{}",
            self.opset,
            self.running_var,
            print(&self.graph)
        )
    }

    /// Writes the IR text to `ir` and the parameters to `weights`, each atomically (a
    /// temporary file renamed into place), weights first.
    pub fn save(&self, source: &str, ir: &Path, weights: &Path) -> Result<(), ImportError> {
        // The IR goes to a temporary file beside its target first, so that an IR path
        // that cannot be written (a missing directory, say) fails before the weights
        // are written; the weights are saved atomically; the rename then puts the IR in
        // place. A failure leaves neither new file behind.
        let write = |source| ImportError::Write {
            path: ir.to_path_buf(),
            source,
        };
        let name = ir
            .file_name()
            .ok_or_else(|| write(std::io::Error::other("the path does not name a file")))?;
        let tmp = ir.with_file_name(format!(
            ".{}.import-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let cleanup = |e: ImportError| {
            let _ = std::fs::remove_file(&tmp);
            e
        };
        std::fs::write(&tmp, self.ir_text(source).as_bytes()).map_err(|e| cleanup(write(e)))?;
        self.params.save(weights).map_err(|e| cleanup(e.into()))?;
        std::fs::rename(&tmp, ir).map_err(|e| cleanup(write(e)))
    }
}

/// Reads and imports an ONNX file, refusing files over [`MAX_FILE_BYTES`] before reading
/// them.
pub fn import_file(path: &Path) -> Result<Imported, ImportError> {
    let read = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_FILE_BYTES {
        return Err(ImportError::TooLarge { len });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    import_onnx(&bytes)
}
