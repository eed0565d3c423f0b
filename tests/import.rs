//! `bnc import`: ONNX files written by the test exporter (`common/onnx_writer.rs`) from
//! the shipped models, and one written by `onnx.helper` with ONNX Runtime's logits
//! (`scripts/make-onnx-fixtures.py`), are imported and must compute what the original
//! computes; unsupported ops and attributes are errors naming the node, the op and the
//! attribute; no byte string makes the importer panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bnc::compiler::Tensor;
use bnc::compiler::interp::{self, Params, SplitMix64};
use bnc::compiler::ir::{Dim, VarConvention};
use bnc::import::{ImportError, Imported, import_onnx};
use bnc::runtime::model::{CompileConfig, InferenceModel};
use bnc::runtime::weights::ParamStore;
use bnc::{CompileOptions, Graph, Mode};
use common::onnx_writer::{self as w, Style, export};
use proptest::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A shipped model after shape inference.
fn typed(name: &str) -> Graph {
    let g = bnc::load_model(root().join("models").join(name)).expect("model parses");
    let opts = CompileOptions {
        passes: Some(vec!["infer-shapes".into()]),
        ..Default::default()
    };
    bnc::compile(g, Mode::Infer, &opts).expect("shapes").0
}

/// Random parameters, with running variances in [0.5, 2] so that BatchNorm matters.
fn random_params(g: &Graph, seed: u64) -> Params {
    let mut rng = SplitMix64::new(seed);
    g.params()
        .into_iter()
        .map(|id| {
            let n = g.node(id);
            let shape = n.ty.as_ref().expect("typed").concrete(0);
            let len = shape.iter().product();
            let (lo, hi) = if n.name.ends_with(".running_var") {
                (0.5, 2.0)
            } else {
                (-0.5, 0.5)
            };
            let data = (0..len).map(|_| rng.uniform(lo, hi)).collect();
            (n.name.clone(), Tensor::new(shape, data).expect("shape"))
        })
        .collect()
}

fn random_input(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let data = (0..shape.iter().product())
        .map(|_| rng.uniform(0.0, 1.0))
        .collect();
    Tensor::new(shape.to_vec(), data).expect("shape")
}

/// The interpreter's first output in inference mode.
fn logits(g: &Graph, params: &Params, x: &Tensor) -> Vec<f32> {
    let input = g.node(g.inputs()[0]).name.clone();
    let inputs = HashMap::from([(input, x.clone())]);
    let out = interp::run(g, Mode::Infer, &inputs, &mut params.clone()).expect("runs");
    out.outputs[0].as_f32().expect("f32").to_vec()
}

fn params_of(store: &ParamStore) -> Params {
    store
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}: element {i}: {g} vs {w}");
    }
}

/// Exports `model` with random weights in `style`, imports it, and checks the logits.
fn round_trip(model: &str, style: Style) -> (Imported, Params) {
    let g = typed(model);
    let params = random_params(&g, 7);
    let bytes = export(&g, &params, style);
    let imported = import_onnx(&bytes).unwrap_or_else(|e| panic!("{model}: {e}"));
    let x = random_input(&[3, 1, 28, 28], 11);
    let want = logits(&g, &params, &x);
    let got = logits(&imported.graph, &params_of(&imported.params), &x);
    assert_close(&got, &want, 1e-4, model);
    (imported, params)
}

/// Every node keeps its name, so every parameter keeps its name and its value bit for
/// bit, though the initializers were called `init_<k>` and, for MatMul, stored
/// transposed.
#[test]
fn shipped_models_round_trip_through_onnx_with_their_parameter_names() {
    for (model, style) in [
        ("lenet_bn.ir", Style::default()),
        ("mlp_bn.ir", Style::default()),
        ("resnet_bn.ir", Style::default()),
        (
            "lenet_bn.ir",
            Style {
                matmul: true,
                reshape: true,
                ..Style::default()
            },
        ),
        (
            "mlp_bn.ir",
            Style {
                matmul: true,
                ..Style::default()
            },
        ),
    ] {
        let (imported, params) = round_trip(model, style);
        assert_eq!(imported.params.len(), params.len(), "{model}");
        for (name, t) in &params {
            let got = imported.params.get(name);
            assert_eq!(got, Some(t), "{model}: parameter {name}");
        }
        assert_eq!(imported.running_var, VarConvention::Biased);
        // The printed model reads back as the same graph.
        let text = imported.ir_text("model.onnx");
        let reparsed = bnc::parse_model("model.ir", text.as_bytes()).expect("parses");
        assert_eq!(
            bnc::compiler::text::print(&reparsed),
            bnc::compiler::text::print(&imported.graph)
        );
    }
}

/// PyTorch export's node names become bnc names by replacing what the IR cannot spell.
#[test]
fn torch_style_names_become_identifiers() {
    let style = Style {
        torch_names: true,
        ..Style::default()
    };
    let (imported, _) = round_trip("lenet_bn.ir", style);
    let names: Vec<&str> = imported.params.names().collect();
    assert!(names.contains(&"conv1_conv2d.weight"), "{names:?}");
    assert!(names.contains(&"bn1_batch_norm.running_var"), "{names:?}");
}

/// The imported model runs natively too: the JIT with BatchNorm folded gives the
/// interpreter's logits.
#[test]
fn an_imported_model_compiles_and_runs_natively() {
    let (imported, params) = round_trip("resnet_bn.ir", Style::default());
    let x = random_input(&[2, 1, 28, 28], 3);
    let want = logits(&imported.graph, &params, &x);
    let cfg = CompileConfig {
        threads: 1,
        fold: true,
        ..CompileConfig::default()
    };
    let mut model = InferenceModel::compile(&imported.graph, &cfg).expect("compiles");
    model.bind(&imported.params).expect("binds");
    let got = model.run(&x).expect("runs");
    assert_close(got.as_f32().expect("f32"), &want, 1e-4, "jit");
}

/// The file written by `onnx.helper` (Gemm with transB=1 and 0 and a [1, N] bias,
/// MatMul+Add, Reshape with a Constant shape) gives ONNX Runtime's logits.
#[test]
fn lenet_bn_from_onnx_helper_matches_onnx_runtime() {
    let fixtures = root().join("tests/fixtures");
    let imported = bnc::import::import_file(&fixtures.join("lenet_bn.onnx")).expect("imports");
    let io = ParamStore::load(&fixtures.join("lenet_bn_onnx_io.safetensors")).expect("io");
    let (x, want) = (io.get("x").expect("x"), io.get("logits").expect("logits"));
    let want = want.as_f32().expect("f32");
    let got = logits(&imported.graph, &params_of(&imported.params), x);
    assert_close(&got, want, 1e-4, "interpreter vs onnxruntime");
    let mut model =
        InferenceModel::compile(&imported.graph, &CompileConfig::default()).expect("compiles");
    model.bind(&imported.params).expect("binds");
    let got = model.run(x).expect("runs");
    assert_close(got.as_f32().expect("f32"), want, 1e-4, "jit vs onnxruntime");
    let names: Vec<&str> = imported.params.names().collect();
    assert!(
        names.contains(&"fc2.weight") && names.contains(&"fc2.bias"),
        "{names:?}"
    );
    assert_eq!(
        imported.params.get("fc3.bias").map(|t| t.shape()),
        Some(&[10][..])
    );
}

/// A one-node model: `x: float[N,1,8,8]` through `node`, with `inits` as initializers.
fn one_node(node: w::Msg, inits: &[w::Msg], opset: i64) -> Vec<u8> {
    let mut g = w::Msg::default();
    g.msg(1, &node);
    for i in inits {
        g.msg(5, i);
    }
    let dims = [
        Dim::Sym("N".into()),
        Dim::Fixed(1),
        Dim::Fixed(8),
        Dim::Fixed(8),
    ];
    g.msg(11, &w::value_info("x", &dims));
    g.msg(12, &w::value_info("y", &[]));
    w::model("tests", opset, &g)
}

fn conv_weight() -> w::Msg {
    w::tensor_f32("W", &[2, 1, 3, 3], &[0.5; 18])
}

fn error(bytes: &[u8]) -> ImportError {
    match import_onnx(bytes) {
        Ok(_) => panic!("the import succeeded"),
        Err(e) => e,
    }
}

/// Each unsupported construct is refused with a message naming the node, its op type
/// and the attribute at fault.
#[test]
fn unsupported_ops_and_attributes_are_named() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            one_node(w::node("act", "LeakyRelu", &["x"], &["y"], &[]), &[], 17),
            "node `act` (LeakyRelu): unsupported op `LeakyRelu`",
        ),
        (
            one_node(
                w::node(
                    "c",
                    "Conv",
                    &["x", "W"],
                    &["y"],
                    &[w::attr_ints("dilations", &[2, 2])],
                ),
                &[conv_weight()],
                17,
            ),
            "node `c` (Conv): attribute `dilations` = [2, 2] is not supported (supported: all ones (no dilation))",
        ),
        (
            one_node(
                w::node(
                    "c",
                    "Conv",
                    &["x", "W"],
                    &["y"],
                    &[w::attr_ints("pads", &[1, 1, 0, 0])],
                ),
                &[conv_weight()],
                17,
            ),
            "node `c` (Conv): attribute `pads` = [1, 1, 0, 0] is not supported",
        ),
        (
            one_node(
                w::node("c", "Conv", &["x", "W"], &["y"], &[w::attr_int("fancy", 1)]),
                &[conv_weight()],
                17,
            ),
            "node `c` (Conv): unsupported attribute `fancy`",
        ),
        (
            one_node(
                w::node(
                    "p",
                    "MaxPool",
                    &["x"],
                    &["y"],
                    &[
                        w::attr_ints("kernel_shape", &[2, 2]),
                        w::attr_int("ceil_mode", 1),
                    ],
                ),
                &[],
                17,
            ),
            "node `p` (MaxPool): attribute `ceil_mode` = 1 is not supported (supported: 0 (floor))",
        ),
        (
            one_node(w::node("p", "AveragePool", &["x"], &["y"], &[]), &[], 17),
            "node `p` (AveragePool): missing attribute `kernel_shape`",
        ),
        (
            one_node(w::node("c", "Conv", &["x", "x"], &["y"], &[]), &[], 17),
            "node `c` (Conv): input W (`x`) must be an initializer or a Constant",
        ),
        (
            one_node(
                w::node("r", "Reshape", &["x", "s"], &["y"], &[]),
                &[w::tensor_i64("s", &[0, 8, -1])],
                17,
            ),
            "node `r` (Reshape): Reshape to [0, 8, -1] is not supported",
        ),
        (
            one_node(
                w::node("r", "Reshape", &["x", "s"], &["y"], &[]),
                &[w::tensor_i64("s", &[0, 32])],
                17,
            ),
            "node `r` (Reshape): Reshape to [0, 32] is not supported (only to 2-D, [batch, features] from f32[N,1,8,8])",
        ),
        (
            one_node(w::node("s", "Softmax", &["x"], &["y"], &[]), &[], 17),
            "node `s` (Softmax): softmax expects a rank-2 input",
        ),
        (
            one_node(
                w::node("", "Flatten", &["x"], &["y"], &[w::attr_int("axis", 2)]),
                &[],
                17,
            ),
            "node #0 (Flatten): attribute `axis` = 2 is not supported (supported: 1 (keep the batch axis))",
        ),
        (
            one_node(w::node("z", "Relu", &["nothing"], &["y"], &[]), &[], 17),
            "node `z` (Relu): input `nothing` is not defined before the node",
        ),
        (
            one_node(w::node("a", "Relu", &["x"], &["y"], &[]), &[], 6),
            "ONNX opset 6 is not supported (7 or newer is)",
        ),
    ];
    for (bytes, want) in cases {
        let msg = error(&bytes).to_string();
        assert!(msg.starts_with(want), "got:  {msg}\nwant: {want}");
    }
}

/// A BatchNormalization in training mode, whose statistics outputs are used, is refused.
#[test]
fn batch_norm_training_outputs_are_refused() {
    let vecs: Vec<w::Msg> = ["g", "b", "m", "v"]
        .iter()
        .map(|n| w::tensor_f32(n, &[1], &[1.0]))
        .collect();
    let bn = w::node(
        "bn",
        "BatchNormalization",
        &["x", "g", "b", "m", "v"],
        &["y", "mean"],
        &[],
    );
    let mut g = w::Msg::default();
    g.msg(1, &bn);
    for v in &vecs {
        g.msg(5, v);
    }
    let dims = [
        Dim::Sym("N".into()),
        Dim::Fixed(1),
        Dim::Fixed(2),
        Dim::Fixed(2),
    ];
    g.msg(11, &w::value_info("x", &dims));
    g.msg(12, &w::value_info("y", &[]))
        .msg(12, &w::value_info("mean", &[]));
    let err = error(&w::model("tests", 15, &g));
    assert_eq!(
        err.to_string(),
        "node `bn` (BatchNormalization): output 1 (`mean`) is not supported (only the first output is)"
    );
}

/// PyTorch-written files get PyTorch's running-variance convention.
#[test]
fn pytorch_files_update_running_var_with_the_unbiased_variance() {
    let vecs: Vec<w::Msg> = ["g", "b", "m", "v"]
        .iter()
        .map(|n| w::tensor_f32(n, &[1], &[1.0]))
        .collect();
    let mut g = w::Msg::default();
    g.msg(
        1,
        &w::node(
            "bn",
            "BatchNormalization",
            &["x", "g", "b", "m", "v"],
            &["y"],
            &[],
        ),
    );
    for v in &vecs {
        g.msg(5, v);
    }
    let dims = [
        Dim::Sym("N".into()),
        Dim::Fixed(1),
        Dim::Fixed(2),
        Dim::Fixed(2),
    ];
    g.msg(11, &w::value_info("x", &dims))
        .msg(12, &w::value_info("y", &[]));
    let imported = import_onnx(&w::model("pytorch", 17, &g)).expect("imports");
    assert_eq!(imported.running_var, VarConvention::Unbiased);
    assert!(imported.ir_text("m.onnx").contains("running_var=unbiased"));
}

/// Truncated files and garbage are decode errors with a byte offset.
#[test]
fn malformed_files_are_decode_errors() {
    let bytes = std::fs::read(root().join("tests/fixtures/lenet_bn.onnx")).expect("fixture");
    let err = error(&bytes[..bytes.len() / 2]);
    assert!(matches!(err, ImportError::Decode(_)), "{err}");
    assert!(
        err.to_string().starts_with("malformed ONNX file: byte "),
        "{err}"
    );
    assert!(matches!(error(b"not a model"), ImportError::Decode(_)));
    assert!(matches!(error(&[]), ImportError::NoGraph));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes give a model or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = import_onnx(&bytes);
    }

    /// A real model with bytes overwritten gives a model or an error, never a panic or an
    /// allocation as large as a corrupted size field says.
    #[test]
    fn corrupted_models_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let g = w::node("c", "Conv", &["x", "W"], &["h"], &[w::attr_ints("pads", &[1, 1, 1, 1])]);
        let mut graph = w::Msg::default();
        graph.msg(1, &g).msg(1, &w::node("r", "Relu", &["h"], &["y"], &[])).msg(5, &conv_weight());
        let dims = [Dim::Sym("N".into()), Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(8)];
        graph.msg(11, &w::value_info("x", &dims)).msg(12, &w::value_info("y", &[]));
        let mut bytes = w::model("tests", 17, &graph);
        prop_assert!(import_onnx(&bytes).is_ok());
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = import_onnx(&bytes);
        let _ = import_onnx(&bytes[..cut.index(bytes.len())]);
    }
}

fn bnc(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bnc"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("bnc runs")
}

/// `bnc import` writes the IR and the weights; `bnc compile` and the weights then work
/// together. On an error it exits 1, names the file, and writes nothing.
#[test]
fn the_cli_imports_and_refuses() {
    let dir = std::env::temp_dir().join(format!("bnc-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let onnx = root().join("tests/fixtures/lenet_bn.onnx");
    let onnx = onnx.to_str().expect("utf-8 path");
    let o = bnc(
        &["import", onnx, "-o", "m.ir", "--weights", "m.safetensors"],
        &dir,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        out.trim(),
        "imported 18 ONNX nodes (opset 17) as 16 bnc ops: wrote m.ir and 26 tensors to m.safetensors"
    );
    let o = bnc(&["compile", "m.ir", "--emit", "stats"], &dir);
    assert!(String::from_utf8_lossy(&o.stdout).contains("kernels: 5"));
    let weights = ParamStore::load(&dir.join("m.safetensors")).expect("weights load");
    assert_eq!(weights.len(), 26);

    std::fs::write(
        dir.join("bad.onnx"),
        one_node(w::node("act", "Elu", &["x"], &["y"], &[]), &[], 17),
    )
    .expect("write");
    let o = bnc(
        &[
            "import",
            "bad.onnx",
            "-o",
            "bad.ir",
            "--weights",
            "bad.safetensors",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: bad.onnx: node `act` (Elu): unsupported op `Elu`"),
        "{err}"
    );
    assert!(!dir.join("bad.ir").exists() && !dir.join("bad.safetensors").exists());

    // An IR path that cannot be written fails before the weights are written.
    let o = bnc(
        &[
            "import",
            onnx,
            "-o",
            "no/such/dir/m2.ir",
            "--weights",
            "m2.safetensors",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no/such/dir/m2.ir"), "{err}");
    assert!(!dir.join("m2.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
