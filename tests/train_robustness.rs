//! `bnc train` when things go wrong, as a user meets it: a run killed with SIGKILL in the
//! middle of an epoch resumes from its checkpoint and ends bit for bit where an
//! uninterrupted run ends; a diverging run stops with the node that produced the first
//! non-finite value; a model too large to train is refused before it allocates; resuming
//! with a different recipe or model is refused. Runs train on a subset of the real
//! Fashion-MNIST so that each takes a second or two.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bnc::runtime::checkpoint::{Checkpoint, Resume};
use common::{bnc, ok};

/// Runs bnc, expects exit status `code`, returns (stdout, stderr).
fn fails(code: i32, args: &[&str]) -> (String, String) {
    let o = bnc(args);
    let (out, err) = (
        String::from_utf8(o.stdout).expect("UTF-8"),
        String::from_utf8(o.stderr).expect("UTF-8"),
    );
    assert_eq!(o.status.code(), Some(code), "bnc {args:?}:\n{out}\n{err}");
    (out, err)
}

/// A fresh directory for one test, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("bnc-train-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 16 batches of 64 per epoch, two epochs.
const RECIPE: [&str; 7] = [
    "models/lenet_bn.ir",
    "--limit-train",
    "1024",
    "--batch",
    "64",
    "--epochs",
    "2",
];

fn train(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["train".to_string()];
    args.extend(RECIPE.iter().chain(extra).map(|s| s.to_string()));
    args
}

/// Starts a run that checkpoints after every batch, waits for its first checkpoint and
/// kills it with SIGKILL; returns the checkpoint's (completed epochs, batches).
fn start_and_kill(ckpt: &str) -> (u32, u64) {
    let args = train(&["--checkpoint", ckpt, "--checkpoint-every", "1"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bnc"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the bnc binary starts");
    while !Path::new(ckpt).exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "bnc exited before its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // The checkpoint is whole (never half-written): it loads as a checkpoint.
    let Resume::Checkpoint(c) = Checkpoint::load(Path::new(ckpt)).expect("a whole checkpoint")
    else {
        panic!("{ckpt} is not a checkpoint");
    };
    (c.state.progress.epochs_done, c.state.progress.step)
}

/// The per-epoch metrics without the timings, which differ between runs.
fn metrics(json: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).expect("valid JSON");
    let mut rows = v["epochs"].as_array().unwrap().clone();
    for r in &mut rows {
        let r = r.as_object_mut().unwrap();
        assert!(r.remove("seconds").is_some() && r.remove("images_per_s").is_some());
    }
    rows
}

#[test]
fn a_run_killed_mid_epoch_resumes_bit_for_bit() {
    let dir = Dir::new("kill");
    let (whole, whole_json) = (dir.file("whole.safetensors"), dir.file("whole.json"));
    let mut args = train(&["--save", &whole, "--json", &whole_json]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let ckpt = dir.file("run.ckpt");
    // The kill lands mid-epoch unless it happens to fall between an epoch's last
    // checkpoint and the next batch; try again in that case.
    let mut at = start_and_kill(&ckpt);
    for _ in 0..3 {
        if at.1 > 0 {
            break;
        }
        std::fs::remove_file(&ckpt).unwrap();
        at = start_and_kill(&ckpt);
    }
    let (epochs_done, step) = at;
    assert!(step > 0 && epochs_done < 2, "killed mid-epoch: {at:?}");
    // Nothing else is left but possibly the hidden temporary file of an interrupted write.
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            ["whole.safetensors", "whole.json", "run.ckpt"].contains(&name.as_str())
                || name.starts_with(".run.ckpt.tmp-"),
            "unexpected file {name}"
        );
    }

    let (resumed, resumed_json) = (dir.file("resumed.safetensors"), dir.file("resumed.json"));
    // On one thread instead of two: the thread count changes nothing in the result.
    args = vec![
        "train",
        "models/lenet_bn.ir",
        "--threads",
        "1",
        "--resume",
        &ckpt,
        "--checkpoint",
        &ckpt,
        "--save",
        &resumed,
        "--json",
        &resumed_json,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let o = bnc(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "resuming {ckpt} after {epochs_done} epoch(s) and {step} batch(es)"
        )),
        "{err}"
    );
    // The table has both epochs, the resumed run's weights are the uninterrupted run's.
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.lines().nth(2).unwrap().trim_start().starts_with("2 "),
        "{out}"
    );
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&resumed).unwrap(),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert_eq!(metrics(&whole_json), metrics(&resumed_json));

    // The finished checkpoint resumes to nothing more to do, and still saves.
    let again = dir.file("again.safetensors");
    ok(&[
        "train",
        "models/lenet_bn.ir",
        "--resume",
        &ckpt,
        "--save",
        &again,
    ]);
    assert!(std::fs::read(&whole).unwrap() == std::fs::read(&again).unwrap());

    // A resumed run keeps its recipe and its model.
    let (_, e) = fails(
        1,
        &[
            "train",
            "models/lenet_bn.ir",
            "--resume",
            &ckpt,
            "--lr",
            "0.5",
        ],
    );
    assert!(
        e.contains(&format!(
            "--lr 0.5 differs from the 1 that checkpoint {ckpt} was trained with"
        )),
        "{e}"
    );
    let (_, e) = fails(1, &["train", "models/lenet.ir", "--resume", &ckpt]);
    assert!(e.contains("was written for another model"), "{e}");
}

/// A plain weights file starts a new run from those weights.
#[test]
fn resume_from_plain_weights_starts_a_new_run() {
    let dir = Dir::new("weights");
    let w = dir.file("init.safetensors");
    ok(&["init", "models/lenet_bn.ir", "--seed", "0", "-o", &w]);
    let (a, b) = (dir.file("a.safetensors"), dir.file("b.safetensors"));
    let short = ["--limit-train", "256", "--batch", "64", "--epochs", "1"];
    let run = |extra: &[&str]| {
        let mut args = vec!["train", "models/lenet_bn.ir"];
        args.extend(short);
        args.extend(extra);
        ok(&args)
    };
    run(&["--save", &a]);
    let out = run(&["--resume", &w, "--save", &b]);
    assert!(
        out.lines().nth(1).unwrap().trim_start().starts_with("1 "),
        "{out}"
    );
    // `bnc init --seed 0` is the initialization a new run with seed 0 makes.
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

/// A run whose parameters overflow stops at the step that overflowed, naming the tensor or
/// (with --check-numerics) the op; no accuracy row is printed for it.
#[test]
fn a_diverging_run_stops_with_the_first_non_finite_value() {
    let args = [
        "train",
        "models/mlp_bn.ir",
        "--lr",
        "100",
        "--limit-train",
        "5120",
        "--epochs",
        "1",
    ];
    for check in [false, true] {
        let mut a = args.to_vec();
        if check {
            a.push("--check-numerics");
        }
        let (out, err) = fails(1, &a);
        assert_eq!(out.lines().count(), 1, "only the header: {out}");
        assert!(err.starts_with("error: epoch 1, batch "), "{err}");
        assert!(err.contains(": non-finite value "), "{err}");
        // The site names an IR node with its op: "`bn2.stats` (batch_stats)".
        assert!(err.contains("` (") && err.contains(')'), "{err}");
        assert!(
            err.contains("training diverged (--lr 100 may be too large)"),
            "{err}"
        );
        assert_eq!(err.contains("rerun with --check-numerics"), !check, "{err}");
    }
}

/// Shapes that each pass shape inference but would need hundreds of gigabytes to train
/// are refused before anything is allocated or any data is read.
#[test]
fn a_model_too_large_to_train_is_refused() {
    let dir = Dir::new("large");
    let model = dir.file("big.ir");
    std::fs::write(
        &model,
        "input x: f32[N,1,28,28]\nc = conv2d(x, channels=100000, kernel=1)\n\
         f = flatten(c)\ny = dense(f, units=10)\noutput y\n",
    )
    .unwrap();
    let (_, e) = fails(1, &["train", &model, "--data", "/nonexistent"]);
    assert!(
        e.starts_with(&format!("error: {model}: cannot train: training needs ")),
        "{e}"
    );
    assert!(
        e.trim_end()
            .ends_with("more than the limit of 16.0 GiB: the model is too large"),
        "{e}"
    );
    let (_, e) = fails(2, &["train", &model, "--checkpoint-every", "5"]);
    assert!(e.contains("--checkpoint <CKPT.safetensors>"), "{e}");
}
