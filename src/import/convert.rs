//! The converter's driver: graph inputs, value names, node names, outputs, and the final
//! shape inference that checks the result. Each ONNX op's translation is in `ops.rs`.
//!
//! Names: a bnc op is named after its ONNX node (or, for an unnamed node, its first
//! output), with every run of characters outside `[A-Za-z0-9]` turned into one `_`
//! (`/features/features.0/Conv` becomes `features_features_0_Conv`) and a suffix `_2`,
//! `_3`, ... where two nodes would get one name; its parameters are `<name>.<slot>`
//! whatever the initializers were called. The input's first axis becomes the batch
//! symbol `N`, whatever the file says, since bnc models take any batch size.

use std::collections::{HashMap, HashSet};

use bnc_compiler::Tensor;
use bnc_compiler::ir::{Dim, Graph, Node, NodeId, NodeKind, Op, Span, TensorType, VarConvention};
use bnc_compiler::passes::{Mode, PassError, PassManager};
use bnc_runtime::weights::ParamStore;

use super::onnx::{DimProto, GraphProto, Model, NodeProto, TensorProto, data_type, decode_model};
use super::{ImportError, Imported, MAX_FILE_BYTES, NodeRef};

/// The oldest default-domain opset bnc reads.
const MIN_OPSET: i64 = 7;

/// What an ONNX value name stands for.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// A value computed by a bnc node (or a graph input).
    Node(NodeId),
    /// A constant: an initializer or the output of a Constant node.
    Const(&'a TensorProto<'a>),
}

/// The state of one conversion.
pub struct Converter<'a> {
    /// The default domain's opset version.
    pub opset: i64,
    /// The graph being built.
    pub graph: Graph,
    /// The parameters, by bnc name.
    pub params: ParamStore,
    /// ONNX value names to what they stand for.
    values: HashMap<&'a str, Value<'a>>,
    /// For each value name, the indices of the nodes that use it.
    pub consumers: HashMap<&'a str, Vec<usize>>,
    /// The graph's output names.
    pub graph_outputs: HashSet<&'a str>,
    /// Nodes already translated as part of another (the Add after a MatMul).
    pub absorbed: HashSet<usize>,
    /// The ONNX node each bnc op came from, by bnc name, for errors.
    origin: HashMap<String, NodeRef>,
    /// Reshapes translated as `flatten`, checked once shapes are known.
    pub reshapes: Vec<(NodeId, NodeRef, Vec<i64>)>,
    /// The running-variance convention of every imported BatchNorm.
    pub running_var: VarConvention,
    /// The ONNX graph.
    pub onnx: &'a GraphProto<'a>,
}

/// Decodes and converts an ONNX model.
pub fn import_onnx(bytes: &[u8]) -> Result<Imported, ImportError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ImportError::TooLarge {
            len: bytes.len() as u64,
        });
    }
    let model = decode_model(bytes)?;
    convert(&model)
}

/// Converts a decoded model.
pub fn convert(model: &Model<'_>) -> Result<Imported, ImportError> {
    let onnx = model.graph.as_ref().ok_or(ImportError::NoGraph)?;
    let opset = model
        .opsets
        .iter()
        .find(|(domain, _)| domain.is_empty() || domain == "ai.onnx")
        .map_or(0, |&(_, v)| v);
    if opset < MIN_OPSET {
        return Err(ImportError::Opset { version: opset });
    }
    // PyTorch updates the running variance with the unbiased batch variance; ONNX's
    // reference (and MXNet, Keras, d2l) with the biased one. See docs/BATCHNORM.md.
    let running_var = if model.producer_name == "pytorch" {
        VarConvention::Unbiased
    } else {
        VarConvention::Biased
    };
    let mut c = Converter {
        opset,
        graph: Graph::new(),
        params: ParamStore::new(),
        values: HashMap::new(),
        consumers: HashMap::new(),
        graph_outputs: onnx.outputs.iter().map(|o| o.name.as_str()).collect(),
        absorbed: HashSet::new(),
        origin: HashMap::new(),
        reshapes: Vec::new(),
        running_var,
        onnx,
    };
    for t in &onnx.initializers {
        c.values.insert(t.name.as_str(), Value::Const(t));
    }
    for (i, n) in onnx.nodes.iter().enumerate() {
        for input in n.inputs.iter().filter(|s| !s.is_empty()) {
            c.consumers.entry(input.as_str()).or_default().push(i);
        }
    }
    c.add_inputs()?;
    for (i, n) in onnx.nodes.iter().enumerate() {
        if !c.absorbed.contains(&i) {
            c.node(i, n)?;
        }
    }
    let mut outputs = Vec::with_capacity(onnx.outputs.len());
    for o in &onnx.outputs {
        match c.values.get(o.name.as_str()) {
            Some(Value::Node(id)) if !matches!(c.graph.node(*id).kind, NodeKind::Input) => {
                outputs.push(*id)
            }
            _ => {
                return Err(ImportError::Output {
                    name: o.name.clone(),
                });
            }
        }
    }
    c.graph.set_outputs(outputs);
    c.finish(model, onnx.nodes.len())
}

impl<'a> Converter<'a> {
    /// Adds the graph inputs that are not initializers.
    fn add_inputs(&mut self) -> Result<(), ImportError> {
        for v in &self.onnx.inputs {
            if matches!(self.values.get(v.name.as_str()), Some(Value::Const(_))) {
                continue;
            }
            let problem = |p: &str| ImportError::Input {
                name: v.name.clone(),
                problem: p.to_string(),
            };
            match v.elem_type {
                Some(data_type::FLOAT) => {}
                Some(t) => {
                    return Err(problem(&format!(
                        "element type {} is not supported (only FLOAT)",
                        data_type::name(t)
                    )));
                }
                None => return Err(problem("it has no tensor type")),
            }
            let dims = v
                .dims
                .as_ref()
                .ok_or_else(|| problem("its shape is not given"))?;
            if dims.is_empty() {
                return Err(problem("it is a scalar"));
            }
            let mut bnc_dims = vec![Dim::Sym("N".to_string())];
            for (axis, d) in dims.iter().enumerate().skip(1) {
                match d {
                    DimProto::Value(n) if *n > 0 => bnc_dims.push(Dim::Fixed(*n as usize)),
                    _ => {
                        return Err(problem(&format!(
                            "axis {axis} has no fixed size (only axis 0, the batch, may be symbolic)"
                        )));
                    }
                }
            }
            let name = self.fresh_name(&v.name, "input");
            let id = self
                .graph
                .add_node(Node {
                    name,
                    kind: NodeKind::Input,
                    ty: Some(TensorType::f32(bnc_dims)),
                    span: Span::default(),
                })
                .map_err(|_| ImportError::DuplicateName {
                    name: v.name.clone(),
                })?;
            self.values.insert(v.name.as_str(), Value::Node(id));
        }
        if self.graph.inputs().is_empty() {
            return Err(ImportError::NoInput);
        }
        Ok(())
    }

    /// A name that no node has yet, from an ONNX name.
    fn fresh_name(&self, onnx_name: &str, fallback: &str) -> String {
        let mut base = String::new();
        for ch in onnx_name.chars() {
            if ch.is_ascii_alphanumeric() {
                base.push(ch);
            } else if !base.is_empty() && !base.ends_with('_') {
                base.push('_');
            }
        }
        while base.ends_with('_') {
            base.pop();
        }
        if base.is_empty() {
            base = fallback.to_string();
        }
        if base.starts_with(|ch: char| ch.is_ascii_digit()) {
            base.insert(0, 'n');
        }
        let mut name = base.clone();
        let mut k = 2;
        while self.graph.lookup(&name).is_some() {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// What the value `name` stands for, as an input of `node`.
    pub fn value(&self, node: &NodeRef, name: &str) -> Result<Value<'a>, ImportError> {
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| ImportError::Undefined {
                node: node.clone(),
                value: name.to_string(),
            })
    }

    /// The computed value `name`, as a data input of `node`.
    pub fn data(&self, node: &NodeRef, name: &str) -> Result<NodeId, ImportError> {
        match self.value(node, name)? {
            Value::Node(id) => Ok(id),
            Value::Const(_) => Err(ImportError::ConstantData {
                node: node.clone(),
                value: name.to_string(),
            }),
        }
    }

    /// Records that ONNX value `name` is the constant `t` (a Constant node's output).
    pub fn define_const(&mut self, name: &'a str, t: &'a TensorProto<'a>) {
        self.values.insert(name, Value::Const(t));
    }

    /// Adds a parameter `<owner>.<slot>` holding `data` with `shape`; returns its node.
    pub fn param(
        &mut self,
        owner: &str,
        slot: &str,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<NodeId, ImportError> {
        let name = format!("{owner}.{slot}");
        let ty = TensorType::f32_fixed(&shape);
        // Parameter names contain a `.`, which node names never do, so this cannot clash.
        let id = self
            .graph
            .add_node(Node {
                name: name.clone(),
                kind: NodeKind::Param,
                ty: Some(ty),
                span: Span::default(),
            })
            .map_err(|_| ImportError::DuplicateName { name: name.clone() })?;
        // `Tensor::new` only refuses data that does not fill the shape, which the
        // callers have checked.
        if let Some(t) = Tensor::new(shape, data) {
            self.params.insert(name, t);
        }
        Ok(id)
    }

    /// Adds the bnc op for ONNX node `node` (whose first output is `output`), with its
    /// operands; returns the op's node and the name it was given.
    pub fn op(
        &mut self,
        node: &NodeRef,
        proto: &NodeProto<'_>,
        op: Op,
        data: &[NodeId],
    ) -> Result<(NodeId, String), ImportError> {
        let first_output = proto.outputs.first().map_or("", String::as_str);
        let source = if proto.name.is_empty() {
            first_output
        } else {
            proto.name.as_str()
        };
        let name = self.fresh_name(source, &proto.op_type.to_ascii_lowercase());
        let id = self
            .graph
            .add_op(name.clone(), op, data, Span::default())
            .map_err(|_| ImportError::DuplicateName { name: name.clone() })?;
        self.origin.insert(name.clone(), node.clone());
        Ok((id, name))
    }

    /// Connects parameters after an op's data operands, in slot order.
    pub fn connect_params(&mut self, id: NodeId, first_slot: usize, params: &[NodeId]) {
        for (i, &p) in params.iter().enumerate() {
            self.graph.connect(p, id, (first_slot + i) as u32);
        }
    }

    /// Makes ONNX value `name` stand for bnc node `id`.
    pub fn define(&mut self, name: &'a str, id: NodeId) {
        self.values.insert(name, Value::Node(id));
    }

    /// Runs shape inference over the built graph and checks the Reshapes.
    fn finish(mut self, model: &Model<'_>, nodes: usize) -> Result<Imported, ImportError> {
        let mut pm = PassManager::new(&["infer-shapes"]).map_err(ImportError::Pass)?;
        if let Err(e) = pm.run(&mut self.graph, Mode::Infer) {
            return Err(match e {
                PassError::Shape(error) => {
                    let node = self
                        .origin
                        .get(&error.node)
                        .cloned()
                        .unwrap_or_else(|| NodeRef::new(&error.node, 0, "?"));
                    ImportError::Shape { node, error }
                }
                other => ImportError::Pass(other),
            });
        }
        for (id, node, shape) in &self.reshapes {
            super::ops::check_reshape(&self.graph, *id, node, shape)?;
        }
        Ok(Imported {
            graph: self.graph,
            params: self.params,
            producer: model.producer_name.clone(),
            opset: self.opset,
            running_var: self.running_var,
            nodes,
        })
    }
}
