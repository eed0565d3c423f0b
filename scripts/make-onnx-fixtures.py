#!/usr/bin/env python3
"""Writes the ONNX fixture that `tests/import.rs` imports: d2l's LeNet-BN built node by node
with `onnx.helper` (random weights and running statistics), and ONNX Runtime's logits for a
fixed input.

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install numpy onnx onnxruntime safetensors
    /tmp/peers/bin/python scripts/make-onnx-fixtures.py          # from the repository root

Outputs (committed; rerunning with the same packages rewrites them identically):
  tests/fixtures/lenet_bn.onnx                the model, opset 17, input x: float[N,1,28,28]
  tests/fixtures/lenet_bn_onnx_io.safetensors x: f32[4,1,28,28] and ORT's logits: f32[4,10]

The three dense layers are written three ways that exporters use (Gemm with transB=1,
MatMul followed by Add, Gemm with transB=0) and the flatten as a Reshape to [0, -1] whose
shape is a Constant node, so the test covers each of those import paths against ORT.
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
rng = np.random.default_rng(6)
inits = []


def init(name, array):
    inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
    return name


def xavier(shape, fan_in, fan_out):
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def conv(name, x, c_in, c_out, k):
    w = init(f"W_{name}", xavier((c_out, c_in, k, k), c_in * k * k, c_out * k * k))
    b = init(f"B_{name}", rng.normal(0, 0.1, c_out))
    return helper.make_node("Conv", [x, w, b], [name], name=name, kernel_shape=[k, k],
                            strides=[1, 1], pads=[0, 0, 0, 0], group=1, dilations=[1, 1])


def bn(name, x, c):
    args = [init(f"{name}_{s}", v) for s, v in [
        ("gamma", rng.uniform(0.5, 1.5, c)), ("beta", rng.normal(0, 0.5, c)),
        ("mean", rng.normal(0, 0.5, c)), ("var", rng.uniform(0.5, 2.0, c))]]
    return helper.make_node("BatchNormalization", [x, *args], [name], name=name,
                            epsilon=1e-5, momentum=0.9)


nodes = [
    conv("conv1", "x", 1, 6, 5), bn("bn1", "conv1", 6),
    helper.make_node("Sigmoid", ["bn1"], ["act1"], name="act1"),
    helper.make_node("AveragePool", ["act1"], ["pool1"], name="pool1", kernel_shape=[2, 2],
                     strides=[2, 2]),
    conv("conv2", "pool1", 6, 16, 5), bn("bn2", "conv2", 16),
    helper.make_node("Sigmoid", ["bn2"], ["act2"], name="act2"),
    helper.make_node("AveragePool", ["act2"], ["pool2"], name="pool2", kernel_shape=[2, 2],
                     strides=[2, 2]),
    helper.make_node("Constant", [], ["flat_shape"], name="flat_shape",
                     value=numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape")),
    helper.make_node("Reshape", ["pool2", "flat_shape"], ["flat"], name="flat"),
    # fc1: Gemm with B stored [out, in] (transB=1), as PyTorch exports nn.Linear.
    helper.make_node("Gemm", ["flat", init("W_fc1", xavier((120, 256), 256, 120)),
                              init("B_fc1", rng.normal(0, 0.1, 120))], ["fc1"], name="fc1",
                     transB=1),
    bn("bn3", "fc1", 120), helper.make_node("Sigmoid", ["bn3"], ["act3"], name="act3"),
    # fc2: MatMul by B stored [in, out], then Add of the bias.
    helper.make_node("MatMul", ["act3", init("W_fc2", xavier((120, 84), 120, 84))],
                     ["fc2_mm"], name="fc2"),
    helper.make_node("Add", ["fc2_mm", init("B_fc2", rng.normal(0, 0.1, 84))], ["fc2"],
                     name="fc2_bias"),
    bn("bn4", "fc2", 84), helper.make_node("Sigmoid", ["bn4"], ["act4"], name="act4"),
    # fc3: Gemm with B stored [in, out] (transB=0) and a [1, out] bias.
    helper.make_node("Gemm", ["act4", init("W_fc3", xavier((84, 10), 84, 10)),
                              init("B_fc3", rng.normal(0, 0.1, (1, 10)))], ["logits"],
                     name="fc3"),
]
graph = helper.make_graph(
    nodes, "lenet_bn",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
    initializer=inits)
model = helper.make_model(graph, producer_name="bnc-fixtures",
                          opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
os.makedirs(OUT, exist_ok=True)
path = os.path.join(OUT, "lenet_bn.onnx")
onnx.save(model, path)

x = rng.uniform(0.0, 1.0, (4, 1, 28, 28)).astype(np.float32)
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
(logits,) = sess.run(None, {"x": x})
save_file({"x": x, "logits": logits.astype(np.float32)},
          os.path.join(OUT, "lenet_bn_onnx_io.safetensors"))
print(f"wrote {path} ({os.path.getsize(path)} bytes); onnx {onnx.__version__}, "
      f"onnxruntime {ort.__version__}")
print("logits[0]:", np.array2string(logits[0], precision=4))
