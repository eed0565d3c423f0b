//! Behaviour common to every subcommand: `--quiet` and `--verbose`, the progress bar only
//! on a terminal, the exit statuses in `--help`, shell completions, and the same flag
//! names and defaults wherever a flag appears.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{TempDir, bnc, ok, stderr, stdout, tiny_dataset};

#[test]
fn help_documents_the_exit_statuses_the_binary_uses() {
    let help = ok(&["--help"]);
    let section = help.split_once("Exit status:").expect("exit statuses").1;
    for code in ["0  success", "1  error", "2  usage error"] {
        assert!(section.contains(code), "{code}: {help}");
    }
    // What the help says is what happens: 2 for usage errors, 1 for errors, 0 for success.
    assert_eq!(bnc(&["compile"]).status.code(), Some(2));
    assert_eq!(bnc(&["compile", "--frobnicate"]).status.code(), Some(2));
    assert_eq!(bnc(&["compile", "models/none.ir"]).status.code(), Some(1));
    assert_eq!(bnc(&["passes"]).status.code(), Some(0));
}

#[test]
fn quiet_and_verbose_exclude_each_other() {
    let o = bnc(&["-q", "-v", "passes"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

#[test]
fn init_notes_are_on_stderr_and_quiet_drops_them() {
    let dir = TempDir::new("init");
    let w = dir.file("w.safetensors");
    let o = bnc(&["init", "models/lenet.ir", "-o", &w]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o), format!("wrote 10 tensors to {w}\n"));

    // --quiet may come after the subcommand too (a global flag).
    let o = bnc(&["init", "models/lenet.ir", "-o", &w, "--quiet"]);
    assert!(o.status.success());
    assert_eq!((stdout(&o), stderr(&o)), (String::new(), String::new()));
    assert!(std::path::Path::new(&w).exists());

    let o = bnc(&["--verbose", "init", "models/lenet.ir", "-o", &w]);
    let err = stderr(&o);
    assert!(
        err.lines()
            .any(|l| l.starts_with("conv1.weight ") && l.ends_with("[6, 1, 5, 5]")),
        "{err}"
    );
    assert!(
        err.ends_with(&format!("wrote 10 tensors to {w}\n")),
        "{err}"
    );
}

#[test]
fn verbose_compile_times_the_passes_and_keeps_stdout_clean() {
    let plain = bnc(&["compile", "models/lenet_bn.ir"]);
    let verbose = bnc(&["compile", "models/lenet_bn.ir", "-v"]);
    assert_eq!(stdout(&plain), stdout(&verbose));
    assert_eq!(stderr(&plain), "");
    let err = stderr(&verbose);
    assert!(err.starts_with("pass"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("fold-bn") && l.contains("ms")),
        "{err}"
    );
}

#[test]
fn verbose_run_lists_the_kernels() {
    let dir = TempDir::new("run");
    tiny_dataset(dir.path(), 1, 16);
    let w = dir.file("w.safetensors");
    ok(&["init", "models/lenet.ir", "-o", &w]);
    let data = dir.path().to_str().unwrap();
    let o = bnc(&[
        "run",
        "models/lenet.ir",
        "--weights",
        &w,
        "--data",
        data,
        "-v",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("parse to native code: "), "{err}");
    assert!(err.contains("kernel conv1+act1+pool1 "), "{err}");
    assert!(stdout(&o).starts_with("test accuracy: "));
    let o = bnc(&[
        "run",
        "models/lenet.ir",
        "--weights",
        &w,
        "--data",
        data,
        "-q",
    ]);
    assert_eq!(stderr(&o), "");
    assert!(stdout(&o).starts_with("test accuracy: "));
}

#[test]
fn train_quiet_prints_only_the_table_and_verbose_adds_the_layers() {
    let dir = TempDir::new("train");
    tiny_dataset(dir.path(), 128, 32);
    let data = dir.path().to_str().unwrap();
    let args = [
        "train",
        "models/lenet_bn.ir",
        "--data",
        data,
        "--epochs",
        "1",
        "--batch",
        "64",
    ];
    let o = bnc(&[&args[..], &["-q"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert!(stdout(&o).starts_with("epoch"), "{}", stdout(&o));
    let o = bnc(&[&args[..], &["-v"]].concat());
    let err = stderr(&o);
    assert!(err.contains("layer conv1+bn1+act1+pool1 "), "{err}");
    assert!(err.contains("layer fc3 "), "{err}");
}

/// Runs `bnc ARGS` with stdin, stdout and stderr on a pseudo-terminal (util-linux
/// `script`) and returns everything the terminal received.
fn on_a_terminal(args: &[&str]) -> String {
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_bnc"))
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("util-linux `script` runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_progress_bar_shows_on_a_terminal_only_and_not_with_quiet() {
    let dir = TempDir::new("bar");
    tiny_dataset(dir.path(), 2048, 16);
    let data = dir.path().to_str().unwrap();
    let args = [
        "train",
        "models/lenet.ir",
        "--data",
        data,
        "--epochs",
        "1",
        "--batch",
        "16",
    ];
    let tty = on_a_terminal(&args);
    assert!(tty.contains("batches  loss"), "{tty}");
    let quiet = on_a_terminal(&[&args[..], &["-q"]].concat());
    assert!(!quiet.contains("batches"), "{quiet}");
    assert!(quiet.contains("epoch"), "{quiet}");
    // Piped (as in every other test here): no bar either.
    let piped = bnc(&args);
    assert!(!stderr(&piped).contains("batches") && !stdout(&piped).contains("batches"));
}

#[test]
fn completions_are_generated_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = ok(&["completions", shell]);
        for word in ["compile", "train", "compare", "quiet", "threads"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    assert!(ok(&["completions", "bash"]).contains("complete -F _bnc"));
    assert_eq!(bnc(&["completions", "tcsh"]).status.code(), Some(2));
}

/// Each long flag of a subcommand with its `<VALUE>` name and `[default: ...]`.
type Flags = BTreeMap<String, (String, String)>;

/// The flags that `bnc SUB --help` lists.
fn flags(sub: &str) -> Flags {
    let help = ok(&[sub, "--help"]);
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        let starts_flag = t.starts_with("--") || (t.starts_with('-') && t.contains(", --"));
        if starts_flag {
            let long = &t[t.find("--").unwrap()..];
            let mut words = long.split_whitespace();
            let name = words.next().unwrap().to_string();
            let value = words
                .next()
                .filter(|w| w.starts_with('<'))
                .unwrap_or("")
                .to_string();
            out.insert(name.clone(), (value, String::new()));
            current = Some(name);
        }
        if let (Some(name), Some(i)) = (&current, line.find("[default: ")) {
            let d = &line[i + 10..];
            out.get_mut(name).unwrap().1 = d[..d.find(']').unwrap()].to_string();
        }
    }
    out
}

#[test]
fn a_flag_has_one_name_value_and_default_everywhere() {
    let subs = ["compile", "init", "run", "bench", "train", "compare"];
    let all: Vec<(&str, Flags)> = subs.iter().map(|s| (*s, flags(s))).collect();
    // Near-miss spellings of the shared flags never appear.
    for (sub, f) in &all {
        for bad in [
            "--thread",
            "--num-threads",
            "--batch-size",
            "--weight",
            "--out",
            "--dataset",
        ] {
            assert!(!f.contains_key(bad), "bnc {sub} has {bad}");
        }
        assert!(
            f.contains_key("--quiet") && f.contains_key("--verbose"),
            "{sub}"
        );
    }
    // The same value name and default wherever a shared flag appears. Two exceptions:
    // compile's --batch is a list of batch sizes for its statistics, and train's --json
    // names a file (its stdout holds the table) where elsewhere it is a switch.
    for flag in [
        "--threads",
        "--seed",
        "--data",
        "--weights",
        "--json",
        "--batch",
    ] {
        let uses: Vec<(&str, &(String, String))> = all
            .iter()
            .filter(|(sub, _)| !(flag == "--batch" && *sub == "compile"))
            .filter(|(sub, _)| !(flag == "--json" && *sub == "train"))
            .filter_map(|(sub, f)| f.get(flag).map(|v| (*sub, v)))
            .collect();
        assert!(uses.len() >= 2, "{flag}: {uses:?}");
        for (sub, v) in &uses[1..] {
            assert_eq!(*v, uses[0].1, "{flag}: bnc {sub} vs bnc {}", uses[0].0);
        }
    }
    assert_eq!(all[4].1["--threads"].1, "2");
    assert_eq!(all[4].1["--data"].1, "/usr/share/datasets/fashion-mnist");
}

/// `bnc` run with the environment variable `BNC_VECTOR_WIDTH` set to `width`.
fn bnc_width(width: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bnc"))
        .args(args)
        .env("BNC_VECTOR_WIDTH", width)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the bnc binary runs")
}

/// `BNC_VECTOR_WIDTH` picks the kernels' vectors: 4 compiles 128-bit code only, the
/// default uses 256-bit registers where the CPU has AVX2; anything but 4 or 8 is a usage
/// error that names the value, and `--help` documents it.
#[test]
fn vector_width_variable_selects_the_kernels_vectors() {
    assert!(ok(&["--help"]).contains("BNC_VECTOR_WIDTH=4|8"));
    let args = ["compile", "models/lenet_bn.ir", "--emit", "asm"];
    let narrow = bnc_width("4", &args);
    assert!(narrow.status.success(), "{}", stderr(&narrow));
    assert!(stdout(&narrow).contains("%xmm") && !stdout(&narrow).contains("%ymm"));
    let wide =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let default = ok(&args);
    assert_eq!(default.contains("%ymm"), wide);
    if wide {
        assert_eq!(ok(&args), stdout(&bnc_width("8", &args)));
    }
    for bad in ["5", "eight", ""] {
        let o = bnc_width(bad, &["passes"]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("BNC_VECTOR_WIDTH={bad} is not a vector width")),
            "{}",
            stderr(&o)
        );
    }
}
