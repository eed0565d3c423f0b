//! A protobuf writer and a bnc-to-ONNX exporter for tests: it writes a typed bnc graph and
//! its parameters as an ONNX model, so that the importer can be tested on files whose
//! every byte the test controls. Field numbers are those of `onnx.proto`.

use bnc::Graph;
use bnc::compiler::Tensor;
use bnc::compiler::interp::Params;
use bnc::compiler::ir::{Dim, NodeKind, Op, PoolAttrs};

/// A protobuf message being written.
#[derive(Clone, Default)]
pub struct Msg(pub Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    /// A varint field (`int64`, `int32`, `enum`).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Msg {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }

    /// A `float` field.
    pub fn float(&mut self, field: u32, v: f32) -> &mut Msg {
        self.key(field, 5);
        self.0.extend(v.to_le_bytes());
        self
    }

    /// A length-delimited field.
    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Msg {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend(b);
        self
    }

    /// A string field.
    pub fn string(&mut self, field: u32, s: &str) -> &mut Msg {
        self.bytes(field, s.as_bytes())
    }

    /// A nested message.
    pub fn msg(&mut self, field: u32, m: &Msg) -> &mut Msg {
        self.bytes(field, &m.0)
    }

    /// A packed repeated varint field.
    pub fn packed_ints(&mut self, field: u32, v: &[i64]) -> &mut Msg {
        let mut inner = Msg::default();
        for &x in v {
            inner.varint(x as u64);
        }
        self.bytes(field, &inner.0)
    }
}

/// An `AttributeProto` of type INT.
pub fn attr_int(name: &str, v: i64) -> Msg {
    let mut m = Msg::default();
    m.string(1, name).int(3, v).int(20, 2);
    m
}

/// An `AttributeProto` of type FLOAT.
pub fn attr_float(name: &str, v: f32) -> Msg {
    let mut m = Msg::default();
    m.string(1, name).float(2, v).int(20, 1);
    m
}

/// An `AttributeProto` of type INTS, written unpacked as proto2 writers do.
pub fn attr_ints(name: &str, v: &[i64]) -> Msg {
    let mut m = Msg::default();
    m.string(1, name);
    for &x in v {
        m.int(8, x);
    }
    m.int(20, 7);
    m
}

/// A `TensorProto` of FLOATs in `raw_data`.
pub fn tensor_f32(name: &str, shape: &[usize], data: &[f32]) -> Msg {
    let mut m = Msg::default();
    m.packed_ints(1, &shape.iter().map(|&d| d as i64).collect::<Vec<_>>())
        .int(2, 1)
        .string(8, name);
    let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    m.bytes(9, &raw);
    m
}

/// A `TensorProto` of INT64s in `int64_data`.
pub fn tensor_i64(name: &str, data: &[i64]) -> Msg {
    let mut m = Msg::default();
    m.packed_ints(1, &[data.len() as i64])
        .int(2, 7)
        .string(8, name)
        .packed_ints(7, data);
    m
}

/// A `NodeProto`.
pub fn node(name: &str, op_type: &str, inputs: &[&str], outputs: &[&str], attrs: &[Msg]) -> Msg {
    let mut m = Msg::default();
    for i in inputs {
        m.string(1, i);
    }
    for o in outputs {
        m.string(2, o);
    }
    m.string(3, name).string(4, op_type);
    for a in attrs {
        m.msg(5, a);
    }
    m
}

/// A `ValueInfoProto` of a FLOAT tensor with the given dimensions.
pub fn value_info(name: &str, dims: &[Dim]) -> Msg {
    let mut shape = Msg::default();
    for d in dims {
        let mut dim = Msg::default();
        match d {
            Dim::Fixed(n) => dim.int(1, *n as i64),
            Dim::Sym(s) => dim.string(2, s),
        };
        shape.msg(1, &dim);
    }
    let mut tensor = Msg::default();
    tensor.int(1, 1).msg(2, &shape);
    let mut ty = Msg::default();
    ty.msg(1, &tensor);
    let mut m = Msg::default();
    m.string(1, name).msg(2, &ty);
    m
}

/// A `ModelProto` around a graph's nodes, initializers, inputs and outputs.
pub fn model(producer: &str, opset: i64, graph: &Msg) -> Vec<u8> {
    let mut opset_id = Msg::default();
    opset_id.string(1, "").int(2, opset);
    let mut m = Msg::default();
    m.int(1, 8)
        .string(2, producer)
        .msg(7, graph)
        .msg(8, &opset_id);
    m.0
}

/// How the exporter writes what ONNX can say several ways.
#[derive(Clone, Copy, Default)]
pub struct Style {
    /// Dense layers as MatMul by `[in, out]` plus Add, instead of Gemm with transB=1.
    pub matmul: bool,
    /// Flatten as Reshape to `[0, -1]` (the shape an initializer).
    pub reshape: bool,
    /// Node names as a PyTorch export writes them (`/conv1/Conv`) instead of bnc's.
    pub torch_names: bool,
}

/// Writes a typed bnc graph (before lowering) and its parameters as an ONNX model.
/// Initializers are named `init_<k>`, so an importer must name parameters by node.
pub fn export(g: &Graph, params: &Params, style: Style) -> Vec<u8> {
    let mut graph = Msg::default();
    graph.string(2, "exported");
    let mut k = 0;
    let mut init = |graph: &mut Msg, t: &Tensor, transpose: bool| -> String {
        let name = format!("init_{k}");
        k += 1;
        let data = t.as_f32().expect("f32 parameter");
        let (shape, data) = if transpose {
            let (r, c) = (t.shape()[0], t.shape()[1]);
            let mut out = vec![0.0; data.len()];
            for i in 0..r {
                for j in 0..c {
                    out[j * r + i] = data[i * c + j];
                }
            }
            (vec![c, r], out)
        } else {
            (t.shape().to_vec(), data.to_vec())
        };
        graph.msg(5, &tensor_f32(&name, &shape, &data));
        name
    };
    let order = g.topo_order().expect("acyclic");
    for id in order {
        let n = g.node(id);
        let name = if style.torch_names {
            format!("/{}/{}", n.name, n.op().map_or("", |o| o.name()))
        } else {
            n.name.clone()
        };
        let op = match &n.kind {
            NodeKind::Input => {
                let dims = &n.ty.as_ref().expect("typed").dims;
                graph.msg(11, &value_info(&n.name, dims));
                continue;
            }
            NodeKind::Param => continue,
            NodeKind::Op(op) => op,
        };
        let operands = g.operands(id);
        let data: Vec<String> = operands[..op.data_arity()]
            .iter()
            .map(|&o| g.node(o).name.clone())
            .collect();
        let param = |i: usize| &params[&g.node(operands[op.data_arity() + i]).name];
        let mut inputs = data.clone();
        let out = n.name.as_str();
        let pool_attrs = |a: &PoolAttrs| {
            vec![
                attr_ints("kernel_shape", &[a.kernel[0] as i64, a.kernel[1] as i64]),
                attr_ints("strides", &[a.stride[0] as i64, a.stride[1] as i64]),
                attr_ints("pads", &pads(a.padding)),
            ]
        };
        let node_msg = match op {
            Op::Conv2d(a) => {
                for i in 0..op.param_slots().len() {
                    inputs.push(init(&mut graph, param(i), false));
                }
                let attrs = [
                    attr_ints("kernel_shape", &[a.kernel[0] as i64, a.kernel[1] as i64]),
                    attr_ints("strides", &[a.stride[0] as i64, a.stride[1] as i64]),
                    attr_ints("pads", &pads(a.padding)),
                    attr_ints("dilations", &[1, 1]),
                    attr_int("group", a.groups as i64),
                ];
                node(&name, "Conv", &refs(&inputs), &[out], &attrs)
            }
            Op::BatchNorm(a) => {
                for i in 0..4 {
                    inputs.push(init(&mut graph, param(i), false));
                }
                let attrs = [
                    attr_float("epsilon", a.eps as f32),
                    attr_float("momentum", a.momentum as f32),
                ];
                node(&name, "BatchNormalization", &refs(&inputs), &[out], &attrs)
            }
            Op::Dense(a) if style.matmul => {
                let mm = format!("{out}_mm");
                inputs.push(init(&mut graph, param(0), true));
                if a.bias {
                    let bias = init(&mut graph, param(1), false);
                    graph.msg(1, &node(&name, "MatMul", &refs(&inputs), &[&mm], &[]));
                    node(&format!("{name}_bias"), "Add", &[&mm, &bias], &[out], &[])
                } else {
                    node(&name, "MatMul", &refs(&inputs), &[out], &[])
                }
            }
            Op::Dense(_) => {
                for i in 0..op.param_slots().len() {
                    inputs.push(init(&mut graph, param(i), false));
                }
                let attrs = [attr_int("transB", 1)];
                node(&name, "Gemm", &refs(&inputs), &[out], &attrs)
            }
            Op::Sigmoid => node(&name, "Sigmoid", &refs(&inputs), &[out], &[]),
            Op::Relu => node(&name, "Relu", &refs(&inputs), &[out], &[]),
            Op::Tanh => node(&name, "Tanh", &refs(&inputs), &[out], &[]),
            Op::Add => node(&name, "Add", &refs(&inputs), &[out], &[]),
            Op::Softmax => node(&name, "Softmax", &refs(&inputs), &[out], &[]),
            Op::AvgPool2d(a) => {
                let mut attrs = pool_attrs(a);
                attrs.push(attr_int("count_include_pad", a.count_include_pad as i64));
                node(&name, "AveragePool", &refs(&inputs), &[out], &attrs)
            }
            Op::MaxPool2d(a) => node(&name, "MaxPool", &refs(&inputs), &[out], &pool_attrs(a)),
            Op::Flatten if style.reshape => {
                let shape = format!("{out}_shape");
                graph.msg(5, &tensor_i64(&shape, &[0, -1]));
                inputs.push(shape);
                node(&name, "Reshape", &refs(&inputs), &[out], &[])
            }
            Op::Flatten => node(
                &name,
                "Flatten",
                &refs(&inputs),
                &[out],
                &[attr_int("axis", 1)],
            ),
            other => panic!("the test exporter does not write {}", other.name()),
        };
        graph.msg(1, &node_msg);
    }
    for &o in g.outputs() {
        let n = g.node(o);
        graph.msg(
            12,
            &value_info(&n.name, &n.ty.as_ref().expect("typed").dims),
        );
    }
    model("bnc-tests", 17, &graph)
}

fn pads(p: [usize; 2]) -> [i64; 4] {
    [p[0] as i64, p[1] as i64, p[0] as i64, p[1] as i64]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
