//! `bnc init`, `bnc run`, `bnc bench` and the inference outputs of `bnc compile`
//! (`--explain`, `--emit stats|clif|asm`, `--no-fold`) as a user runs them, on the real
//! Fashion-MNIST test set.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bnc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the bnc binary runs")
}

fn ok(args: &[&str]) -> String {
    let o = bnc(args);
    assert!(
        o.status.success(),
        "bnc {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("UTF-8")
}

fn fails(args: &[&str]) -> String {
    let o = bnc(args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "bnc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stderr).expect("UTF-8")
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bnc-cli-run-{}-{name}", std::process::id()))
}

#[test]
fn explain_says_what_fold_bn_decided_for_every_batch_norm() {
    insta::assert_snapshot!(
        "explain_lenet_bn",
        ok(&[
            "compile",
            "models/lenet_bn.ir",
            "--explain",
            "--emit",
            "stats"
        ])
    );
    let src = "input x: f32[N,3,8,8]\nc = conv2d(x, channels=4, kernel=3)\nbn = batch_norm(c)\nr = relu(c)\nbn2 = batch_norm(x)\noutput bn, r, bn2\n";
    let path = temp("explain.ir");
    std::fs::write(&path, src).unwrap();
    insta::assert_snapshot!(
        "explain_not_folded",
        ok(&["compile", path.to_str().unwrap(), "--explain"])
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn no_fold_keeps_batch_norm_as_scale_shift() {
    let ir = ok(&["compile", "models/lenet_bn.ir", "--no-fold"]);
    assert_eq!(ir.matches("= scale_shift(").count(), 4, "{ir}");
    assert!(!ir.contains("channel_scale"));
    let stats = ok(&[
        "compile",
        "models/lenet_bn.ir",
        "--no-fold",
        "--emit",
        "stats",
    ]);
    assert!(stats.contains("conv1+bn1+act1+pool1"), "{stats}");
}

#[test]
fn emit_clif_and_asm_print_every_kernel() {
    let clif = ok(&["compile", "models/lenet.ir", "--emit", "clif"]);
    assert_eq!(clif.matches("; ----- kernel ").count(), 5);
    assert!(clif.contains("function"), "{clif}");
    let asm = ok(&["compile", "models/lenet.ir", "--emit", "asm"]);
    assert_eq!(asm.matches("; ----- kernel ").count(), 5);
    let e = fails(&[
        "compile",
        "models/lenet.ir",
        "--mode",
        "train",
        "--emit",
        "clif",
    ]);
    assert!(e.contains("--emit stats, clif and asm"), "{e}");
}

#[test]
fn init_then_run_evaluates_the_test_set_and_saves_the_logits() {
    let w = temp("w.safetensors");
    let logits = temp("logits.safetensors");
    let out = ok(&[
        "init",
        "models/lenet_bn.ir",
        "--seed",
        "3",
        "-o",
        w.to_str().unwrap(),
    ]);
    assert!(out.starts_with("wrote 26 tensors"), "{out}");
    let json = ok(&[
        "run",
        "models/lenet_bn.ir",
        "--weights",
        w.to_str().unwrap(),
        "--json",
        "--save-outputs",
        logits.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let acc = v["test_accuracy"].as_f64().unwrap();
    // Untrained weights: about one class in ten, but a real evaluation of all 10,000 images.
    assert!((0.0..=0.3).contains(&acc), "{acc}");
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    let saved = bnc::runtime::weights::ParamStore::load(&logits).unwrap();
    assert_eq!(saved.get("logits").unwrap().shape(), &[10000, 10]);
    // Folded and unfolded runs of the same weights agree on the accuracy.
    let text = ok(&[
        "run",
        "models/lenet_bn.ir",
        "--weights",
        w.to_str().unwrap(),
        "--no-fold",
        "--threads",
        "1",
        "--batch",
        "1000",
    ]);
    assert!(
        text.starts_with(&format!("test accuracy: {acc:.4}")),
        "{text} vs {acc}"
    );
    for p in [w, logits] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn run_errors_name_what_is_wrong() {
    let w = temp("lenet.safetensors");
    ok(&["init", "models/lenet.ir", "-o", w.to_str().unwrap()]);
    // LeNet's weights lack every BatchNorm tensor of LeNet-BN.
    let e = fails(&[
        "run",
        "models/lenet_bn.ir",
        "--weights",
        w.to_str().unwrap(),
    ]);
    assert!(
        e.contains("cannot bind the weights: missing parameter `bn1."),
        "{e}"
    );
    let e = fails(&[
        "run",
        "models/lenet.ir",
        "--weights",
        w.to_str().unwrap(),
        "--data",
        "/nonexistent",
    ]);
    assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
    let e = fails(&[
        "run",
        "models/lenet.ir",
        "--weights",
        "/nonexistent.safetensors",
    ]);
    assert!(e.contains("/nonexistent.safetensors"), "{e}");
    std::fs::remove_file(w).unwrap();
}

#[test]
fn bench_json_has_the_documented_fields() {
    let json = ok(&[
        "bench",
        "models/lenet_bn.ir",
        "--batch",
        "8",
        "--threads",
        "2",
        "--reps",
        "3",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    for key in [
        "model",
        "mode",
        "batch",
        "threads",
        "images_per_s",
        "compile_ms",
        "kernels",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(v["batch"], 8);
    let kernels = v["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 5);
    assert!(
        kernels
            .iter()
            .all(|k| k["name"].is_string() && k["us"].as_f64().is_some())
    );
}
