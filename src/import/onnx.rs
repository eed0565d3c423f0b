//! The ONNX messages bnc reads, decoded from protobuf by hand (field numbers from
//! `onnx.proto`, ONNX IR version 10). Only the fields an importer of inference graphs needs
//! are kept; everything else (doc strings, metadata, training info, functions) is skipped.
//! Tensor data stays a borrowed slice of the file until the converter asks for it, and
//! its size is checked against the dimensions before anything is allocated for it.

use super::proto::{Field, ProtoError, Reader};

/// The ONNX `TensorProto.DataType` codes bnc reads.
pub mod data_type {
    /// 32-bit float.
    pub const FLOAT: i32 = 1;
    /// 32-bit signed integer.
    pub const INT32: i32 = 6;
    /// 64-bit signed integer.
    pub const INT64: i32 = 7;
    /// 64-bit float.
    pub const DOUBLE: i32 = 11;

    /// The name `onnx.proto` gives a data type code.
    pub fn name(code: i32) -> &'static str {
        const NAMES: [&str; 24] = [
            "UNDEFINED",
            "FLOAT",
            "UINT8",
            "INT8",
            "UINT16",
            "INT16",
            "INT32",
            "INT64",
            "STRING",
            "BOOL",
            "FLOAT16",
            "DOUBLE",
            "UINT32",
            "UINT64",
            "COMPLEX64",
            "COMPLEX128",
            "BFLOAT16",
            "FLOAT8E4M3FN",
            "FLOAT8E4M3FNUZ",
            "FLOAT8E5M2",
            "FLOAT8E5M2FNUZ",
            "UINT4",
            "INT4",
            "FLOAT4E2M1",
        ];
        usize::try_from(code)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .unwrap_or("unknown")
    }
}

/// `ModelProto`.
#[derive(Clone, Debug, Default)]
pub struct Model<'a> {
    /// The ONNX IR version.
    pub ir_version: i64,
    /// The tool that wrote the file (`pytorch`, `onnx.helper`, ...).
    pub producer_name: String,
    /// Operator sets imported: `(domain, version)`.
    pub opsets: Vec<(String, i64)>,
    /// The graph, if the file has one.
    pub graph: Option<GraphProto<'a>>,
}

/// `GraphProto`.
#[derive(Clone, Debug, Default)]
pub struct GraphProto<'a> {
    /// The nodes, in topological order (as ONNX requires).
    pub nodes: Vec<NodeProto<'a>>,
    /// Constant tensors: the weights.
    pub initializers: Vec<TensorProto<'a>>,
    /// The graph inputs (which may also list initializers, in old files).
    pub inputs: Vec<ValueInfo>,
    /// The graph outputs.
    pub outputs: Vec<ValueInfo>,
}

/// `NodeProto`.
#[derive(Clone, Debug, Default)]
pub struct NodeProto<'a> {
    /// The node's name (may be empty).
    pub name: String,
    /// The operator (`Conv`).
    pub op_type: String,
    /// The operator set's domain; empty for the default `ai.onnx`.
    pub domain: String,
    /// Input value names; an empty name is an omitted optional input.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// The attributes.
    pub attributes: Vec<Attribute<'a>>,
}

/// `AttributeProto`, with its value resolved from its `type` field (or, in files that
/// leave `type` out, from the field that is set).
#[derive(Clone, Debug)]
pub struct Attribute<'a> {
    /// The attribute's name.
    pub name: String,
    /// Its value.
    pub value: AttrValue<'a>,
}

/// The value of an attribute.
#[derive(Clone, Debug)]
pub enum AttrValue<'a> {
    /// `FLOAT`.
    Float(f32),
    /// `INT`.
    Int(i64),
    /// `STRING` (bytes, UTF-8 by convention).
    String(Vec<u8>),
    /// `TENSOR`.
    Tensor(TensorProto<'a>),
    /// `FLOATS`.
    Floats(Vec<f32>),
    /// `INTS`.
    Ints(Vec<i64>),
    /// Any other type (graphs, sparse tensors, lists of strings...), by its type code.
    Other(i64),
}

impl AttrValue<'_> {
    /// The value as ONNX writes it in documentation, for error messages.
    pub fn describe(&self) -> String {
        match self {
            AttrValue::Float(x) => format!("{x}"),
            AttrValue::Int(i) => format!("{i}"),
            AttrValue::String(s) => format!("\"{}\"", String::from_utf8_lossy(s)),
            AttrValue::Tensor(t) => format!("a tensor of shape {:?}", t.dims),
            AttrValue::Floats(v) => format!("{v:?}"),
            AttrValue::Ints(v) => format!("{v:?}"),
            AttrValue::Other(code) => format!("a value of attribute type {code}"),
        }
    }
}

/// `TensorProto`: dimensions, data type and the data, still encoded.
#[derive(Clone, Debug, Default)]
pub struct TensorProto<'a> {
    /// The tensor's name.
    pub name: String,
    /// The dimensions (checked non-negative by the converter).
    pub dims: Vec<i64>,
    /// The `DataType` code.
    pub data_type: i32,
    /// `raw_data`: little-endian elements.
    pub raw_data: Option<&'a [u8]>,
    /// `float_data`.
    pub float_data: Vec<f32>,
    /// `int32_data`.
    pub int32_data: Vec<i64>,
    /// `int64_data`.
    pub int64_data: Vec<i64>,
    /// `double_data`.
    pub double_data: Vec<f64>,
    /// Whether the data lives in an external file (`data_location = EXTERNAL`).
    pub external: bool,
}

/// `ValueInfoProto` of a tensor: its name, element type and shape when given.
#[derive(Clone, Debug, Default)]
pub struct ValueInfo {
    /// The value's name.
    pub name: String,
    /// The element type code, when the type is a tensor type.
    pub elem_type: Option<i32>,
    /// The dimensions, when a shape is given.
    pub dims: Option<Vec<DimProto>>,
}

/// `TensorShapeProto.Dimension`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DimProto {
    /// `dim_value`.
    Value(i64),
    /// `dim_param`: a symbolic size such as `batch`.
    Param(String),
    /// Neither is set: an unknown size.
    Unknown,
}

type R<T> = Result<T, ProtoError>;

/// Decodes a `ModelProto`.
pub fn decode_model(bytes: &[u8]) -> R<Model<'_>> {
    let mut model = Model::default();
    let mut r = Reader::new(bytes, "ModelProto");
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => model.ir_version = f.int()?,
            2 => model.producer_name = f.string()?,
            7 => model.graph = Some(decode_graph(&f)?),
            8 => model.opsets.push(decode_opset(&f)?),
            _ => {}
        }
    }
    Ok(model)
}

fn decode_opset(field: &Field<'_>) -> R<(String, i64)> {
    let (mut domain, mut version) = (String::new(), 0);
    let mut r = Reader::nested(field, "OperatorSetIdProto")?;
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => domain = f.string()?,
            2 => version = f.int()?,
            _ => {}
        }
    }
    Ok((domain, version))
}

fn decode_graph<'a>(field: &Field<'a>) -> R<GraphProto<'a>> {
    let mut g = GraphProto::default();
    let mut r = Reader::nested(field, "GraphProto")?;
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => g.nodes.push(decode_node(&f)?),
            5 => g.initializers.push(decode_tensor(&f)?),
            11 => g.inputs.push(decode_value_info(&f)?),
            12 => g.outputs.push(decode_value_info(&f)?),
            _ => {}
        }
    }
    Ok(g)
}

fn decode_node<'a>(field: &Field<'a>) -> R<NodeProto<'a>> {
    let mut n = NodeProto::default();
    let mut r = Reader::nested(field, "NodeProto")?;
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => n.inputs.push(f.string()?),
            2 => n.outputs.push(f.string()?),
            3 => n.name = f.string()?,
            4 => n.op_type = f.string()?,
            5 => n.attributes.push(decode_attribute(&f)?),
            7 => n.domain = f.string()?,
            _ => {}
        }
    }
    Ok(n)
}

fn decode_attribute<'a>(field: &Field<'a>) -> R<Attribute<'a>> {
    let mut name = String::new();
    let mut ty = None;
    let (mut float, mut int, mut string, mut tensor) = (None, None, None, None);
    let (mut floats, mut ints) = (Vec::new(), Vec::new());
    let mut other = None;
    let mut r = Reader::nested(field, "AttributeProto")?;
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => name = f.string()?,
            2 => float = Some(f.float()?),
            3 => int = Some(f.int()?),
            4 => string = Some(f.bytes()?.to_vec()),
            5 => tensor = Some(decode_tensor(&f)?),
            7 => f.push_floats(&mut floats)?,
            8 => f.push_ints(&mut ints)?,
            20 => ty = Some(f.int()?),
            // g, graphs, tensors, strings, sparse tensors, type protos: kept as a code.
            6 => other = Some(5),
            9 => other = Some(8),
            10 => other = Some(9),
            11 => other = Some(10),
            22 => other = Some(11),
            23 => other = Some(12),
            14 => other = Some(13),
            15 => other = Some(14),
            _ => {}
        }
    }
    // The `type` field decides when present; without it (files from before IR version
    // 0.0.2 made it required) the one field that is set does.
    let value = match ty {
        Some(1) => AttrValue::Float(float.unwrap_or(0.0)),
        Some(2) => AttrValue::Int(int.unwrap_or(0)),
        Some(3) => AttrValue::String(string.unwrap_or_default()),
        Some(4) => match tensor {
            Some(t) => AttrValue::Tensor(t),
            None => AttrValue::Other(4),
        },
        Some(6) => AttrValue::Floats(floats),
        Some(7) => AttrValue::Ints(ints),
        Some(code) => AttrValue::Other(code),
        None => {
            if let Some(x) = float {
                AttrValue::Float(x)
            } else if let Some(i) = int {
                AttrValue::Int(i)
            } else if let Some(s) = string {
                AttrValue::String(s)
            } else if let Some(t) = tensor {
                AttrValue::Tensor(t)
            } else if !floats.is_empty() {
                AttrValue::Floats(floats)
            } else if !ints.is_empty() {
                AttrValue::Ints(ints)
            } else {
                AttrValue::Other(other.unwrap_or(0))
            }
        }
    };
    Ok(Attribute { name, value })
}

fn decode_tensor<'a>(field: &Field<'a>) -> R<TensorProto<'a>> {
    let mut t = TensorProto::default();
    let mut r = Reader::nested(field, "TensorProto")?;
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => f.push_ints(&mut t.dims)?,
            2 => t.data_type = i32::try_from(f.int()?).unwrap_or(-1),
            4 => f.push_floats(&mut t.float_data)?,
            5 => f.push_ints(&mut t.int32_data)?,
            7 => f.push_ints(&mut t.int64_data)?,
            8 => t.name = f.string()?,
            9 => t.raw_data = Some(f.bytes()?),
            10 => f.push_doubles(&mut t.double_data)?,
            14 => t.external = f.int()? == 1,
            _ => {}
        }
    }
    Ok(t)
}

fn decode_value_info(field: &Field<'_>) -> R<ValueInfo> {
    let mut v = ValueInfo::default();
    let mut r = Reader::nested(field, "ValueInfoProto")?;
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => v.name = f.string()?,
            2 => decode_type(&f, &mut v)?,
            _ => {}
        }
    }
    Ok(v)
}

/// `TypeProto`: only `tensor_type` (field 1) is read.
fn decode_type(field: &Field<'_>, v: &mut ValueInfo) -> R<()> {
    let mut r = Reader::nested(field, "TypeProto")?;
    while let Some(f) = r.next_field()? {
        if f.number != 1 {
            continue;
        }
        let mut t = Reader::nested(&f, "TypeProto.Tensor")?;
        while let Some(f) = t.next_field()? {
            match f.number {
                1 => v.elem_type = Some(i32::try_from(f.int()?).unwrap_or(-1)),
                2 => v.dims = Some(decode_shape(&f)?),
                _ => {}
            }
        }
    }
    Ok(())
}

fn decode_shape(field: &Field<'_>) -> R<Vec<DimProto>> {
    let mut dims = Vec::new();
    let mut r = Reader::nested(field, "TensorShapeProto")?;
    while let Some(f) = r.next_field()? {
        if f.number != 1 {
            continue;
        }
        let mut dim = DimProto::Unknown;
        let mut d = Reader::nested(&f, "TensorShapeProto.Dimension")?;
        while let Some(f) = d.next_field()? {
            match f.number {
                1 => dim = DimProto::Value(f.int()?),
                2 => dim = DimProto::Param(f.string()?),
                _ => {}
            }
        }
        dims.push(dim);
    }
    Ok(dims)
}
