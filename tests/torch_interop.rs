//! PyTorch interop, checked against PyTorch itself: `tests/fixtures/d2l_lenet_bn_torch*`
//! were written by `scripts/make-torch-fixtures.py` (torch 2.15) from d2l's LeNet-BN
//! `nn.Sequential` with random weights and running statistics. After `bnc weights rename`
//! bnc computes PyTorch's eval-mode logits; renamed back, the file has exactly the
//! `state_dict`'s names, shapes and dtypes; and with `running_var=unbiased` one train-mode
//! forward pass updates the running statistics exactly as PyTorch's did.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bnc::compiler::Tensor;
use bnc::compiler::interp::{self, Params};
use bnc::runtime::model::{CompileConfig, InferenceModel};
use bnc::runtime::rename::{Direction, NameMap, RawStore, rename};
use bnc::runtime::weights::ParamStore;
use bnc::{CompileOptions, Graph, Mode};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn d2l_map() -> NameMap {
    let text = std::fs::read_to_string(root().join("models/d2l_lenet_bn.map")).expect("map");
    NameMap::parse(&text, "models/d2l_lenet_bn.map").expect("parses")
}

/// The PyTorch state_dict renamed to bnc's names, as bnc parameters.
fn bnc_params() -> Params {
    let torch = RawStore::load(&fixture("d2l_lenet_bn_torch.safetensors")).expect("fixture");
    let (renamed, report) = rename(&torch, &d2l_map(), Direction::ToBnc).expect("renames");
    assert_eq!(report.renamed, 26);
    assert_eq!(report.dropped.len(), 4);
    renamed
        .tensors
        .iter()
        .map(|(name, t)| {
            let data = t
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (
                name.clone(),
                Tensor::new(t.shape.clone(), data).expect("shape"),
            )
        })
        .collect()
}

/// LeNet-BN after shape inference, its BatchNorms' `running_var` attribute set to `conv`.
fn lenet_bn(conv: &str) -> Graph {
    let text = std::fs::read_to_string(root().join("models/lenet_bn.ir")).expect("model");
    let text: String = text
        .lines()
        .map(|l| {
            if l.contains("= batch_norm(") {
                format!(
                    "{}, running_var={conv})\n",
                    l.trim_end().trim_end_matches(')')
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let g = bnc::parse_model("lenet_bn.ir", text.as_bytes()).expect("parses");
    let opts = CompileOptions {
        passes: Some(vec!["infer-shapes".into()]),
        ..Default::default()
    };
    bnc::compile(g, Mode::Infer, &opts).expect("shapes").0
}

fn io() -> ParamStore {
    ParamStore::load(&fixture("d2l_lenet_bn_torch_io.safetensors")).expect("io fixture")
}

fn f32s<'a>(store: &'a ParamStore, name: &str) -> &'a [f32] {
    store.get(name).and_then(Tensor::as_f32).expect(name)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn renamed_pytorch_weights_give_pytorch_eval_logits() {
    let io = io();
    let x = io.get("x").expect("x");
    let want = f32s(&io, "logits");
    let g = lenet_bn("biased");
    let mut params = bnc_params();
    let inputs = HashMap::from([("x".to_string(), x.clone())]);
    let out = interp::run(&g, Mode::Infer, &inputs, &mut params).expect("runs");
    let got = out.outputs[0].as_f32().expect("f32");
    assert!(
        max_diff(got, want) <= 1e-4,
        "interpreter: {got:?} vs {want:?}"
    );

    // And natively, with every BatchNorm folded into its conv or dense.
    let store: ParamStore = bnc_params().into_iter().collect();
    let mut model = InferenceModel::compile(&g, &CompileConfig::default()).expect("compiles");
    model.bind(&store).expect("binds");
    let got = model.run(x).expect("runs");
    let got = got.as_f32().expect("f32");
    assert!(max_diff(got, want) <= 1e-4, "jit: {got:?} vs {want:?}");
}

/// bnc's names renamed back are exactly the state_dict's: every name, shape and dtype,
/// and every float tensor byte for byte; the counters come back as zero.
#[test]
fn reverse_rename_reproduces_the_state_dict_layout() {
    let torch = RawStore::load(&fixture("d2l_lenet_bn_torch.safetensors")).expect("fixture");
    let (bnc, _) = rename(&torch, &d2l_map(), Direction::ToBnc).expect("to bnc");
    let (back, report) = rename(&bnc, &d2l_map(), Direction::ToTorch).expect("to torch");
    assert_eq!(report.added.len(), 4);
    let layout = |s: &RawStore| -> Vec<(String, String, Vec<usize>)> {
        s.tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dtype.to_string(), t.shape.clone()))
            .collect()
    };
    assert_eq!(layout(&back), layout(&torch));
    for (name, t) in &torch.tensors {
        if !name.ends_with(".num_batches_tracked") {
            assert_eq!(back.tensors[name].data, t.data, "{name}");
        }
    }
    let counter = &back.tensors["1.num_batches_tracked"];
    assert_eq!(
        (counter.dtype.to_string().as_str(), &counter.shape[..]),
        ("I64", &[][..])
    );
    assert_eq!(counter.data, 0i64.to_le_bytes());
    assert_eq!(back.metadata.get("format").map(String::as_str), Some("pt"));
}

/// One train-mode forward pass: with `running_var=unbiased` (and the default momentum
/// 0.9, PyTorch's 0.1) bnc's running statistics are PyTorch's. The check is on the
/// batch's share of the update, `after - 0.9 * before` (= `0.1 * batch statistic`), to 0.1%
/// of its size: d2l's `biased` convention, whose share is smaller by (n-1)/n, fails it
/// for the BatchNorms after a dense layer, where n is the batch, 8.
#[test]
fn train_mode_running_statistics_follow_pytorch_with_running_var_unbiased() {
    let io = io();
    let x = io.get("train_x").expect("train_x");
    let inputs = HashMap::from([("x".to_string(), x.clone())]);
    let map = d2l_map();
    let before = bnc_params();
    let updated = |conv: &str| -> Params {
        let mut params = bnc_params();
        let out = interp::run(&lenet_bn(conv), Mode::Train, &inputs, &mut params).expect("runs");
        let want = f32s(&io, "train_logits");
        let got = out.outputs[0].as_f32().expect("f32");
        assert!(
            max_diff(got, want) <= 1e-4,
            "train logits: {got:?} vs {want:?}"
        );
        params
    };
    // How far the batch's share in `after` is from PyTorch's, relative to its largest.
    let update_error = |after: &Params, name: &str, want: &[f32]| -> f32 {
        let old = before[name].as_f32().expect("f32");
        let got = after[name].as_f32().expect("f32");
        let delta =
            |v: &[f32]| -> Vec<f32> { v.iter().zip(old).map(|(a, b)| a - 0.9 * b).collect() };
        let (got, want) = (delta(got), delta(want));
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        max_diff(&got, &want) / scale
    };
    let unbiased = updated("unbiased");
    let biased = updated("biased");
    let mut checked = 0;
    for (name, t) in io.iter() {
        let Some(torch_name) = name.strip_prefix("after.") else {
            continue;
        };
        let bnc_name = map.rename(torch_name, Direction::ToBnc).expect("mapped");
        let want = t.as_f32().expect("f32");
        let err = update_error(&unbiased, &bnc_name, want);
        assert!(
            err <= 1e-3,
            "{bnc_name}: the update is off by {err} of its size"
        );
        if bnc_name == "bn3.running_var" || bnc_name == "bn4.running_var" {
            let err = update_error(&biased, &bnc_name, want);
            assert!(
                err > 0.1,
                "{bnc_name}: the biased update should be off ({err})"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 8);
}

fn bnc(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bnc"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("bnc runs")
}

/// The documented command, with the preset and with the map file, and its errors.
#[test]
fn the_cli_renames_with_the_preset_or_the_map() {
    let dir = std::env::temp_dir().join(format!("bnc-rename-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let torch = fixture("d2l_lenet_bn_torch.safetensors");
    let torch = torch.to_str().expect("utf-8");
    let map = root().join("models/d2l_lenet_bn.map");
    let map = map.to_str().expect("utf-8");
    let o = bnc(
        &[
            "weights",
            "rename",
            torch,
            "-o",
            "a.safetensors",
            "--preset",
            "d2l-lenet-bn",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("renamed 26 tensors, dropped 4 num_batches_tracked (bnc keeps no batch counter); wrote a.safetensors\n"),
        "{out}"
    );
    let o = bnc(
        &[
            "weights",
            "rename",
            torch,
            "-o",
            "b.safetensors",
            "--map",
            map,
        ],
        &dir,
    );
    assert!(o.status.success());
    let a = std::fs::read(dir.join("a.safetensors")).expect("a");
    assert_eq!(a, std::fs::read(dir.join("b.safetensors")).expect("b"));
    assert_eq!(
        ParamStore::load(&dir.join("a.safetensors"))
            .expect("loads")
            .len(),
        26
    );

    let o = bnc(
        &[
            "weights",
            "rename",
            "a.safetensors",
            "-o",
            "c.safetensors",
            "--preset",
            "d2l-lenet-bn",
            "--reverse",
        ],
        &dir,
    );
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .starts_with("renamed 26 tensors, added 4 num_batches_tracked = 0")
    );

    std::fs::write(dir.join("short.map"), "0 conv1\n").expect("write");
    let o = bnc(
        &[
            "weights",
            "rename",
            torch,
            "-o",
            "d.safetensors",
            "--map",
            "short.map",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.ends_with("tensor `1.bias` matches no line of the map\n"),
        "{err}"
    );
    assert!(!dir.join("d.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
