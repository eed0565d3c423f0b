//! `bnc init`, `bnc run`, `bnc bench` and the inference outputs of `bnc compile`
//! (`--explain`, `--emit stats|clif|asm`, also of the training step, `--no-fold`) as a user runs them, on the real
//! Fashion-MNIST test set.

mod common;

use std::path::PathBuf;

use common::{TempDir, bnc, fails, ok, stderr, tiny_dataset};

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
        "stats",
    ]);
    assert!(
        e.contains("--emit stats describes the default inference pipeline"),
        "{e}"
    );
    let e = fails(&[
        "compile",
        "models/lenet.ir",
        "--passes",
        "infer-shapes",
        "--emit",
        "asm",
    ]);
    assert!(e.contains("drop --passes"), "{e}");
}

/// With --mode train, the training step's kernels as the trainer compiles them: LeNet-BN's
/// 27, named by layer and role, the BatchNorm `dx` pass among them.
#[test]
fn emit_asm_and_clif_of_the_training_step() {
    let args = ["compile", "models/lenet_bn.ir", "--mode", "train", "--emit"];
    let asm = ok(&[&args[..], &["asm"]].concat());
    assert_eq!(asm.matches("; ----- kernel ").count(), 27, "{asm}");
    assert!(
        asm.contains("; ----- kernel 3: conv1+bn1+act1+pool1: bn dx -----"),
        "{asm}"
    );
    assert!(asm.contains("vfmadd231ps"), "{asm}");
    let clif = ok(&[&args[..], &["clif"]].concat());
    assert_eq!(clif.matches("; ----- kernel ").count(), 27);
    assert!(clif.contains("function"), "{clif}");
}

#[test]
fn init_then_run_evaluates_the_test_set_and_saves_the_logits() {
    let w = temp("w.safetensors");
    let logits = temp("logits.safetensors");
    let o = bnc(&[
        "init",
        "models/lenet_bn.ir",
        "--seed",
        "3",
        "-o",
        w.to_str().unwrap(),
    ]);
    // The note goes to stderr; stdout stays for results.
    let note = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && o.stdout.is_empty(), "{note}");
    assert!(note.starts_with("wrote 26 tensors"), "{note}");
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
    // The cause is said once, though the error quotes its source and main prints causes.
    assert_eq!(e.matches("(os error 2)").count(), 1, "{e}");
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

#[test]
fn train_one_epoch_writes_table_weights_metrics_and_plot() {
    let (w, json, svg) = (
        temp("trained.safetensors"),
        temp("metrics.json"),
        temp("curve.svg"),
    );
    let out = ok(&[
        "train",
        "models/lenet_bn.ir",
        "--epochs",
        "1",
        "--seed",
        "5",
        "--save",
        w.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "epoch", "train", "loss", "train", "acc", "test", "acc", "seconds", "images/s"
        ]
    );
    // Not a terminal: no progress bar in the output, just the rows.
    assert!(!out.contains('█') && !out.contains("batches"), "{out}");
    assert!(lines[1].trim_start().starts_with("1 "), "{out}");
    assert!(
        lines[2].starts_with("bn1 gamma: [") && lines[3].starts_with("bn1 beta:  ["),
        "{out}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let e = &m["epochs"][0];
    for key in [
        "epoch",
        "train_loss",
        "train_acc",
        "test_acc",
        "seconds",
        "images_per_s",
    ] {
        assert!(e.get(key).is_some(), "missing {key}: {m}");
    }
    assert!(
        e["train_loss"].as_f64().unwrap() < 0.8 && e["test_acc"].as_f64().unwrap() > 0.65,
        "{m}"
    );
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    // The saved weights evaluate to the reported test accuracy.
    let run = ok(&[
        "run",
        "models/lenet_bn.ir",
        "--weights",
        w.to_str().unwrap(),
    ]);
    assert!(
        run.starts_with(&format!(
            "test accuracy: {:.4}",
            e["test_acc"].as_f64().unwrap()
        )),
        "{run} vs {m}"
    );
    for p in [w, json, svg] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn train_errors_are_clear() {
    let e = fails(&["train", "models/lenet_bn.ir", "--data", "/nonexistent"]);
    assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
    let e = fails(&["train", "models/lenet_bn.ir", "--epochs", "0"]);
    assert!(e.contains("--epochs must be at least 1"), "{e}");
    let e = fails(&[
        "train",
        "models/lenet_bn.ir",
        "--resume",
        "/nonexistent.safetensors",
    ]);
    assert!(e.contains("/nonexistent.safetensors"), "{e}");
}

#[test]
fn bench_train_reports_a_training_step() {
    let json = bench_train("2", &["--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["mode"], "train");
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    // Idle thread time is at most the step's time on every thread but the busy one.
    let (idle, step) = (&v["idle_us_per_step"], &v["us_per_step"]);
    let (idle, step) = (idle.as_f64().unwrap(), step.as_f64().unwrap());
    assert_eq!(v["threads"], 2);
    assert!((0.0..=2.0 * step).contains(&idle), "{json}");
}

/// `bnc bench models/lenet_bn.ir --mode train` on batches of 16, `reps` times, with `extra`.
fn bench_train(reps: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "bench",
        "models/lenet_bn.ir",
        "--mode",
        "train",
        "--batch",
        "16",
        "--reps",
        reps,
    ];
    args.extend(extra);
    ok(&args)
}

/// `--epochs N` times whole epochs over the training images of `--data` (each model one
/// epoch per turn with a baseline), reports them per step, and names a missing dataset.
#[test]
fn bench_train_epochs_on_real_files() {
    let dir = TempDir::new("bench-epochs");
    // 40 images: three batches of 16 per epoch, the last one short.
    tiny_dataset(dir.path(), 40, 8);
    let data = dir.path().to_str().unwrap();
    let json = bench_train(
        "1",
        &[
            "--epochs",
            "2",
            "--data",
            data,
            "--baseline",
            "models/lenet.ir",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["epochs"], 2, "{json}");
    assert!(v["us_per_step"].as_f64().unwrap() > 0.0, "{json}");
    let ratio = v["baseline"]["ratio"].as_f64().unwrap();
    assert!(ratio.is_finite() && ratio > 0.0, "{json}");
    let text = bench_train("1", &["--epochs", "1", "--data", data]);
    assert!(
        text.contains(&format!("median of 1 epoch(s) over {data}")),
        "{text}"
    );
    let e = fails(&[
        "bench",
        "models/lenet_bn.ir",
        "--mode",
        "train",
        "--epochs",
        "1",
        "--data",
        "/nonexistent-bnc-data",
    ]);
    assert!(
        e.contains("/nonexistent-bnc-data") && e.contains("apt-get install dataset-fashion-mnist"),
        "{e}"
    );
    let e = fails(&["bench", "models/lenet_bn.ir", "--epochs", "1"]);
    assert!(
        e.contains("--epochs times training epochs; add --mode train"),
        "{e}"
    );
}

/// `--baseline` times a second model's step beside each step of the first and reports the
/// ratio; it compares training steps only.
#[test]
fn bench_train_against_a_baseline() {
    let json = bench_train("3", &["--baseline", "models/lenet.ir", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let b = &v["baseline"];
    assert_eq!(b["model"], "models/lenet.ir", "{json}");
    assert_eq!(b["turn"], 4, "the default turn: {json}");
    assert!(v["us_per_step"].as_f64().unwrap() > 0.0, "{json}");
    assert!(b["us_per_step"].as_f64().unwrap() > 0.0, "{json}");
    let ratio = b["ratio"].as_f64().unwrap();
    assert!(ratio.is_finite() && ratio > 0.0, "{json}");
    // The spread of the per-repetition ratios brackets their median.
    let (q1, q3) = (
        b["ratio_q1"].as_f64().unwrap(),
        b["ratio_q3"].as_f64().unwrap(),
    );
    assert!(0.0 < q1 && q1 <= ratio && ratio <= q3, "{json}");
    let text = bench_train("1", &["--baseline", "models/lenet.ir", "--turn", "2"]);
    assert!(
        text.contains("baseline models/lenet.ir on 2 thread(s):")
            && text.contains("in turns of 2 steps")
            && text.contains("quartiles"),
        "{text}"
    );
    // A turn must hold a timed step after its untimed first one, and turns need a baseline.
    for (args, want) in [
        (
            &["--baseline", "models/lenet.ir", "--turn", "1"][..],
            "--turn",
        ),
        (&["--turn", "3"][..], "--baseline"),
    ] {
        let mut all = vec!["bench", "models/lenet_bn.ir", "--mode", "train"];
        all.extend(args);
        let o = bnc(&all);
        // A usage error: clap's exit code 2, and the message names the flag.
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    // The model against itself on one thread: what the second thread gains.
    let json = bench_train(
        "2",
        &[
            "--baseline",
            "models/lenet_bn.ir",
            "--baseline-threads",
            "1",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (&v["threads"], &v["baseline"]["threads"]),
        (&2.into(), &1.into()),
        "{json}"
    );
    let e = fails(&[
        "bench",
        "models/lenet_bn.ir",
        "--baseline",
        "models/lenet.ir",
    ]);
    assert!(
        e.contains("--baseline compares training steps; add --mode train"),
        "{e}"
    );
    let e = fails(&[
        "bench",
        "models/lenet_bn.ir",
        "--mode",
        "train",
        "--baseline",
        "/nonexistent.ir",
    ]);
    assert!(e.contains("/nonexistent.ir"), "{e}");
}
