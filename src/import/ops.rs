//! One translation per ONNX op: which attributes it reads, which inputs must be
//! constants, and how its initializers become bnc parameters in bnc's layouts.
//!
//! | ONNX | bnc | parameters |
//! |---|---|---|
//! | Conv | `conv2d` | `W` [M, C/group, kh, kw] as `weight` (same layout), `B` as `bias` |
//! | BatchNormalization | `batch_norm` | `scale`, `B`, `input_mean`, `input_var` as `weight`, `bias`, `running_mean`, `running_var` |
//! | Gemm | `dense` | `B` as `weight` [N, K] (transposed when `transB=0`), `C` as `bias` |
//! | MatMul (+ Add) | `dense` | `B` [K, N] transposed to `weight` [N, K]; the Add's constant as `bias` |
//! | AveragePool, MaxPool | `avg_pool2d`, `max_pool2d` | |
//! | Flatten (axis 1), Reshape to `[batch, features]` | `flatten` | |
//! | Relu, Sigmoid, Tanh, Add, Softmax (last axis of 2-D) | `relu`, `sigmoid`, `tanh`, `add`, `softmax` | |
//!
//! BatchNormalization's `momentum` means the same in ONNX and bnc (the weight of the old
//! running value: `running = momentum * running + (1 - momentum) * batch`), so it is
//! copied; `epsilon` too. Both are `float` in ONNX and are read back as the shortest
//! decimal that gives the same `float` (`1e-5`, not `9.99999974737875e-6`).

use bnc_compiler::ir::{BatchNormAttrs, Conv2dAttrs, DenseAttrs, Graph, NodeId, Op, PoolAttrs};

use super::convert::{Converter, Value};
use super::onnx::{AttrValue, NodeProto, TensorProto};
use super::tensor::{Attrs, floats, ints};
use super::{ImportError, NodeRef};

/// An `f32` attribute as the `f64` its shortest decimal form denotes.
fn widen(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(f64::from(x))
}

/// Transposes a row-major `[rows, cols]` matrix.
fn transpose(rows: usize, cols: usize, data: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Input `i` of `n`, which the op requires.
fn input<'a>(
    node: &NodeRef,
    n: &'a NodeProto<'_>,
    i: usize,
    schema: &'static str,
) -> Result<&'a str, ImportError> {
    match n.inputs.get(i) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ImportError::MissingInput {
            node: node.clone(),
            input: schema,
        }),
    }
}

/// Input `i` of `n`, if given.
fn optional<'a>(n: &'a NodeProto<'_>, i: usize) -> Option<&'a str> {
    n.inputs
        .get(i)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// A vector weight `[len]` (or `[1, len]`, as Gemm's and Add's broadcast biases are often
/// written), as its elements.
fn vector(
    node: &NodeRef,
    t: &TensorProto<'_>,
    schema: &'static str,
    len: Option<usize>,
    expected: &'static str,
) -> Result<Vec<f32>, ImportError> {
    let (dims, data) = floats(t)?;
    let n = data.len();
    let fits = match dims[..] {
        [a] | [1, a] => a > 0 && len.is_none_or(|l| l == a),
        _ => false,
    };
    if fits {
        debug_assert_eq!(n, dims.iter().product::<usize>());
        Ok(data)
    } else {
        Err(ImportError::WeightShape {
            node: node.clone(),
            input: schema,
            value: t.name.clone(),
            shape: dims,
            expected,
        })
    }
}

impl<'a> Converter<'a> {
    /// Input `i` of `n`, which must be a constant.
    fn constant(
        &self,
        node: &NodeRef,
        n: &'a NodeProto<'a>,
        i: usize,
        schema: &'static str,
    ) -> Result<&'a TensorProto<'a>, ImportError> {
        let name = input(node, n, i, schema)?;
        match self.value(node, name)? {
            Value::Const(t) => Ok(t),
            Value::Node(_) => Err(ImportError::NotConstant {
                node: node.clone(),
                input: schema,
                value: name.to_string(),
            }),
        }
    }

    /// Whether ONNX value `name` is read by a node or is a graph output.
    fn used(&self, name: &str) -> bool {
        self.consumers.contains_key(name) || self.graph_outputs.contains(name)
    }

    /// Translates node `index`.
    pub fn node(&mut self, index: usize, n: &'a NodeProto<'a>) -> Result<(), ImportError> {
        let node = NodeRef::new(&n.name, index, &n.op_type);
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(ImportError::UnsupportedOp {
                node,
                domain: n.domain.clone(),
            });
        }
        // bnc computes one result per op; the optional extra outputs (BatchNorm's
        // training statistics, MaxPool's indices) may be named but not used.
        for (position, out) in n.outputs.iter().enumerate().skip(1) {
            if !out.is_empty() && self.used(out) {
                return Err(ImportError::ExtraOutput {
                    node,
                    position,
                    value: out.clone(),
                });
            }
        }
        let output = n.outputs.first().map_or("", String::as_str);
        let id = match n.op_type.as_str() {
            "Conv" => self.conv(&node, n)?,
            "BatchNormalization" => self.batch_norm(&node, n)?,
            "Gemm" => self.gemm(&node, n)?,
            "MatMul" => self.matmul(&node, n)?,
            "Relu" | "Sigmoid" | "Tanh" | "Add" => self.elementwise(&node, n)?,
            "AveragePool" | "MaxPool" => self.pool(&node, n)?,
            "Flatten" => self.flatten(&node, n)?,
            "Reshape" => self.reshape(&node, n)?,
            "Softmax" => self.softmax(&node, n)?,
            "Constant" => {
                Attrs::new(&node, n, &["value"])?.tensor("value")?;
                let t = n.attributes.iter().find_map(|a| match &a.value {
                    AttrValue::Tensor(t) if a.name == "value" => Some(t),
                    _ => None,
                });
                let t = t.ok_or_else(|| ImportError::MissingAttribute {
                    node: node.clone(),
                    attribute: "value".to_string(),
                })?;
                self.define_const(output, t);
                return Ok(());
            }
            _ => {
                return Err(ImportError::UnsupportedOp {
                    node,
                    domain: String::new(),
                });
            }
        };
        self.define(output, id);
        Ok(())
    }

    fn conv(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        let known = [
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ];
        let a = Attrs::new(node, n, &known)?;
        a.explicit_padding()?;
        a.no_dilation()?;
        let x = self.data(node, input(node, n, 0, "X")?)?;
        let w = self.constant(node, n, 1, "W")?;
        let (w_dims, w_data) = floats(w)?;
        let &[out, _, kh, kw] = &w_dims[..] else {
            return Err(ImportError::WeightShape {
                node: node.clone(),
                input: "W",
                value: w.name.clone(),
                shape: w_dims,
                expected: "[M, C/group, kh, kw] (a 2-D convolution)",
            });
        };
        if w_data.is_empty() {
            return Err(ImportError::WeightShape {
                node: node.clone(),
                input: "W",
                value: w.name.clone(),
                shape: w_dims,
                expected: "no zero dimension",
            });
        }
        let kernel = [kh, kw];
        if let Some(k) = a.ints("kernel_shape")?
            && k != [kh as i64, kw as i64]
        {
            return Err(a.unsupported("kernel_shape", "the weight's [kh, kw]"));
        }
        let groups = a.int("group", 1)?;
        let groups = usize::try_from(groups)
            .ok()
            .filter(|&g| g > 0)
            .ok_or_else(|| a.unsupported("group", "a positive integer"))?;
        let bias = match optional(n, 2) {
            Some(_) => {
                let b = self.constant(node, n, 2, "B")?;
                Some(vector(
                    node,
                    b,
                    "B",
                    Some(out),
                    "[M], one per output channel",
                )?)
            }
            None => None,
        };
        let op = Op::Conv2d(Conv2dAttrs {
            channels: out,
            kernel,
            stride: a.pair("strides", Some([1, 1]))?,
            padding: a.pads()?,
            groups,
            bias: bias.is_some(),
        });
        let (id, name) = self.op(node, n, op, &[x])?;
        let mut params = vec![self.param(&name, "weight", w_dims, w_data)?];
        if let Some(b) = bias {
            params.push(self.param(&name, "bias", vec![out], b)?);
        }
        self.connect_params(id, 1, &params);
        Ok(id)
    }

    fn batch_norm(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        let a = Attrs::new(
            node,
            n,
            &["epsilon", "momentum", "spatial", "training_mode"],
        )?;
        a.require("spatial", 1, 1, "1 (one statistic per channel)")?;
        a.require("training_mode", 0, 0, "0 (inference)")?;
        let eps = widen(a.float("epsilon", 1e-5)?);
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(a.unsupported("epsilon", "a positive number"));
        }
        let momentum = widen(a.float("momentum", 0.9)?);
        if !(0.0..=1.0).contains(&momentum) {
            return Err(a.unsupported("momentum", "a number in [0, 1]"));
        }
        let x = self.data(node, input(node, n, 0, "X")?)?;
        let slots = [
            ("scale", "weight"),
            ("B", "bias"),
            ("input_mean", "running_mean"),
            ("input_var", "running_var"),
        ];
        let mut data = Vec::with_capacity(4);
        let mut channels = None;
        for (i, &(schema, _)) in slots.iter().enumerate() {
            let t = self.constant(node, n, i + 1, schema)?;
            let v = vector(
                node,
                t,
                schema,
                channels,
                "[C], one per channel, all four alike",
            )?;
            channels = Some(v.len());
            data.push(v);
        }
        let op = Op::BatchNorm(BatchNormAttrs {
            eps,
            momentum,
            running_var: self.running_var,
            input_bias: false,
        });
        let (id, name) = self.op(node, n, op, &[x])?;
        let mut params = Vec::with_capacity(4);
        for ((_, slot), v) in slots.iter().zip(data) {
            params.push(self.param(&name, slot, vec![v.len()], v)?);
        }
        self.connect_params(id, 1, &params);
        Ok(id)
    }

    /// A weight matrix input as bnc's `[out, in]` layout: `transposed` when the file
    /// stores it `[in, out]`.
    fn matrix(
        &self,
        node: &NodeRef,
        n: &'a NodeProto<'a>,
        transposed: bool,
    ) -> Result<(Vec<usize>, Vec<f32>), ImportError> {
        let b = self.constant(node, n, 1, "B")?;
        let (dims, data) = floats(b)?;
        match dims[..] {
            [k, m] if k > 0 && m > 0 && transposed => Ok((vec![m, k], transpose(k, m, &data))),
            [_, _] if !data.is_empty() => Ok((dims, data)),
            _ => Err(ImportError::WeightShape {
                node: node.clone(),
                input: "B",
                value: b.name.clone(),
                shape: dims,
                expected: "a non-empty matrix",
            }),
        }
    }

    fn dense(
        &mut self,
        node: &NodeRef,
        n: &'a NodeProto<'a>,
        (w_dims, w_data): (Vec<usize>, Vec<f32>),
        bias: Option<Vec<f32>>,
    ) -> Result<NodeId, ImportError> {
        let x = self.data(node, input(node, n, 0, "A")?)?;
        let units = w_dims[0];
        let op = Op::Dense(DenseAttrs {
            units,
            bias: bias.is_some(),
        });
        let (id, name) = self.op(node, n, op, &[x])?;
        let mut params = vec![self.param(&name, "weight", w_dims, w_data)?];
        if let Some(b) = bias {
            params.push(self.param(&name, "bias", vec![units], b)?);
        }
        self.connect_params(id, 1, &params);
        Ok(id)
    }

    fn gemm(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        let a = Attrs::new(node, n, &["alpha", "beta", "transA", "transB"])?;
        if a.float("alpha", 1.0)? != 1.0 {
            return Err(a.unsupported("alpha", "1.0"));
        }
        a.require("transA", 0, 0, "0")?;
        let trans_b = match a.int("transB", 0)? {
            0 => false,
            1 => true,
            _ => return Err(a.unsupported("transB", "0 or 1")),
        };
        // Gemm computes A·B (+ C); bnc's dense weight is [out, in], which is B when
        // transB=1 and B transposed otherwise.
        let w = self.matrix(node, n, !trans_b)?;
        let bias = match optional(n, 2) {
            Some(_) => {
                if a.float("beta", 1.0)? != 1.0 {
                    return Err(a.unsupported("beta", "1.0"));
                }
                let c = self.constant(node, n, 2, "C")?;
                Some(vector(node, c, "C", Some(w.0[0]), "[N] or [1, N]")?)
            }
            None => None,
        };
        self.dense(node, n, w, bias)
    }

    /// MatMul by a constant `[K, N]` is a dense layer; when its only user is an Add of a
    /// constant `[N]` (as exporters write `x @ W + b`), that Add becomes the bias.
    fn matmul(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        Attrs::new(node, n, &[])?;
        let w = self.matrix(node, n, true)?;
        let output = n.outputs.first().map_or("", String::as_str);
        let onnx = self.onnx;
        let add = match self.consumers.get(output).map(Vec::as_slice) {
            Some(&[j]) if !self.graph_outputs.contains(output) => Some(j),
            _ => None,
        };
        let bias = add.and_then(|j| {
            let add = &onnx.nodes[j];
            let is_add = add.op_type == "Add"
                && (add.domain.is_empty() || add.domain == "ai.onnx")
                && add.attributes.is_empty()
                && add.inputs.len() == 2;
            let other = add.inputs.iter().find(|s| s.as_str() != output)?;
            let Ok(Value::Const(t)) = self.value(node, other) else {
                return None;
            };
            let b = vector(node, t, "B", Some(w.0[0]), "").ok()?;
            is_add.then_some((j, b))
        });
        let id = match bias {
            Some((j, b)) => {
                let id = self.dense(node, n, w, Some(b))?;
                self.absorbed.insert(j);
                if let Some(out) = onnx.nodes[j].outputs.first() {
                    self.define(out, id);
                }
                id
            }
            None => self.dense(node, n, w, None)?,
        };
        Ok(id)
    }

    fn elementwise(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        Attrs::new(node, n, &[])?;
        let first = if n.op_type == "Add" { "A" } else { "X" };
        let x = self.data(node, input(node, n, 0, first)?)?;
        let (op, data) = match n.op_type.as_str() {
            "Relu" => (Op::Relu, vec![x]),
            "Sigmoid" => (Op::Sigmoid, vec![x]),
            "Tanh" => (Op::Tanh, vec![x]),
            _ => (Op::Add, vec![x, self.data(node, input(node, n, 1, "B")?)?]),
        };
        Ok(self.op(node, n, op, &data)?.0)
    }

    fn pool(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        let max = n.op_type == "MaxPool";
        let last = if max {
            "storage_order"
        } else {
            "count_include_pad"
        };
        let known = [
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
            last,
        ];
        let a = Attrs::new(node, n, &known)?;
        a.explicit_padding()?;
        a.no_dilation()?;
        a.require("ceil_mode", 0, 0, "0 (floor)")?;
        let count_include_pad = match a.int("count_include_pad", 0)? {
            0 => false,
            1 => true,
            _ => return Err(a.unsupported("count_include_pad", "0 or 1")),
        };
        let attrs = PoolAttrs {
            kernel: a.pair("kernel_shape", None)?,
            stride: a.pair("strides", Some([1, 1]))?,
            padding: a.pads()?,
            count_include_pad,
        };
        let x = self.data(node, input(node, n, 0, "X")?)?;
        let op = if max {
            Op::MaxPool2d(attrs)
        } else {
            Op::AvgPool2d(attrs)
        };
        Ok(self.op(node, n, op, &[x])?.0)
    }

    fn flatten(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        let a = Attrs::new(node, n, &["axis"])?;
        a.require("axis", 1, 1, "1 (keep the batch axis)")?;
        let x = self.data(node, input(node, n, 0, "input")?)?;
        Ok(self.op(node, n, Op::Flatten, &[x])?.0)
    }

    /// A Reshape to `[batch, features]` is a flatten; whether the target shape is one is
    /// checked once shape inference knows the input's shape ([`check_reshape`]).
    fn reshape(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        let a = Attrs::new(node, n, &["allowzero"])?;
        let x = self.data(node, input(node, n, 0, "data")?)?;
        let (_, shape) = ints(self.constant(node, n, 1, "shape")?)?;
        if a.int("allowzero", 0)? != 0 && shape.contains(&0) {
            return Err(a.unsupported("allowzero", "0 when the shape has a 0"));
        }
        if shape.len() != 2 {
            return Err(ImportError::Reshape {
                node: node.clone(),
                shape,
                input: "its input".to_string(),
            });
        }
        let id = self.op(node, n, Op::Flatten, &[x])?.0;
        self.reshapes.push((id, node.clone(), shape));
        Ok(id)
    }

    fn softmax(&mut self, node: &NodeRef, n: &'a NodeProto<'a>) -> Result<NodeId, ImportError> {
        let a = Attrs::new(node, n, &["axis"])?;
        // The default axis was 1 before opset 13 and -1 since; bnc's softmax takes a
        // 2-D input, where both are the last axis.
        let default = if self.opset < 13 { 1 } else { -1 };
        if !matches!(a.int("axis", default)?, 1 | -1) {
            return Err(a.unsupported("axis", "1 or -1 (the classes of a 2-D input)"));
        }
        let x = self.data(node, input(node, n, 0, "input")?)?;
        Ok(self.op(node, n, Op::Softmax, &[x])?.0)
    }
}

/// Checks that a Reshape translated as `flatten` (node `id`, now typed `[N, F]`) asked for
/// `[batch, F]`: the first entry 0 (copy), -1 (infer, with F given) or a batch size (the
/// input's batch axis is symbolic in bnc), the second -1 or F.
pub fn check_reshape(
    g: &Graph,
    id: NodeId,
    node: &NodeRef,
    shape: &[i64],
) -> Result<(), ImportError> {
    let features = g
        .node(id)
        .ty
        .as_ref()
        .and_then(|t| t.dims.get(1))
        .and_then(|d| d.fixed());
    let ok = match *shape {
        [a, b] => {
            let second = b == -1 || (b > 0 && Some(b as usize) == features);
            second && (a >= 0 || (a == -1 && b != -1))
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let input = g
        .operands(id)
        .first()
        .and_then(|&x| g.node(x).ty.as_ref())
        .map_or_else(|| "an untyped value".to_string(), |t| t.to_string());
    Err(ImportError::Reshape {
        node: node.clone(),
        shape: shape.to_vec(),
        input,
    })
}
