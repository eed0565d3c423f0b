//! The `bnc` binary as a user runs it: exit codes, what goes to stdout and to stderr, and
//! the `error: FILE:LINE:COL: message` form of errors.

mod common;

use std::path::Path;

use bnc::compiler::passes::{Mode, REGISTRY, default_pipeline};
use common::{bnc, fails, ok, stderr, stdout};

#[test]
fn passes_lists_every_registered_pass_with_its_summary() {
    let out = ok(&["passes"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), REGISTRY.len(), "{out}");
    for (line, p) in lines.iter().zip(REGISTRY) {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(p.name), "{line}");
        assert!(line.ends_with(p.summary), "{line}");
    }
}

#[test]
fn compile_prints_the_canonical_ir() {
    let out = ok(&["compile", "models/lenet_bn.ir"]);
    assert!(out.starts_with("input x: f32[N,1,28,28]\n"), "{out}");
    // The mode-less batch_norm is gone after the infer pipeline (lowered, then folded).
    assert!(!out.contains("= batch_norm("), "{out}");
    assert!(out.contains(": f32[N,10]\n"), "{out}");
    assert!(out.ends_with("output fc3\n"), "{out}");
    let train = ok(&["compile", "models/lenet_bn.ir", "--mode", "train"]);
    // fuse-bn-train has split every BatchNorm into the fused kernels' pieces.
    assert!(
        train.contains("bn1.stats = batch_stats(conv1, bn1.running_mean, bn1.running_var, "),
        "{train}"
    );
    assert!(
        train.contains("bn1 = batch_norm_apply(conv1, bn1.stats, "),
        "{train}"
    );
    assert!(
        train.contains("grad.bn1.sums = batch_norm_grad_sums(grad.bn1, conv1, bn1.stats, "),
        "{train}"
    );
    assert!(!train.contains("batch_norm_train"), "{train}");
    assert!(train.contains("input labels: i32[N]\n"), "{train}");
    // autodiff appends one gradient per trainable parameter; redundant-bias has removed
    // the biases before BatchNorm, so conv1 has a weight gradient only.
    assert!(
        train.contains("grad.conv1.weight = conv2d_grad_weight(grad.conv1, x, "),
        "{train}"
    );
    assert!(!train.contains("grad.conv1.bias"), "{train}");
    assert!(
        train.ends_with("output loss, fc3, grad.conv1.weight, grad.bn1.weight, grad.bn1.bias, grad.conv2.weight, grad.bn2.weight, grad.bn2.bias, grad.fc1.weight, grad.bn3.weight, grad.bn3.bias, grad.fc2.weight, grad.bn4.weight, grad.bn4.bias, grad.fc3.weight, grad.fc3.bias\n"),
        "{train}"
    );
}

#[test]
fn a_malformed_file_is_an_error_with_file_line_and_column() {
    let file = "tests/filetests/errors/unknown_op.ir";
    let err = fails(&["compile", file]);
    assert_eq!(
        err,
        format!("error: {file}:4:5: unknown op `rellu` (did you mean `relu`?)\n")
    );
}

#[test]
fn a_shape_error_is_an_error_with_file_line_and_column() {
    let file = "tests/filetests/errors/kernel_too_large.ir";
    let err = fails(&["compile", file]);
    assert_eq!(
        err,
        format!("error: {file}:4:5: conv2d kernel 5x5 is larger than the padded 4x4 input\n")
    );
}

#[test]
fn invalid_utf8_is_an_error_not_a_crash() {
    let file = "tests/filetests/errors/invalid_utf8.ir";
    let err = fails(&["compile", file]);
    assert_eq!(
        err,
        format!("error: {file}:3:11: the file is not valid UTF-8\n")
    );
}

#[test]
fn an_unknown_pass_suggests_the_closest() {
    let err = fails(&["compile", "models/lenet.ir", "--passes=dcee"]);
    assert_eq!(err, "error: unknown pass `dcee` (did you mean `dce`?)\n");
    let err = fails(&["compile", "models/lenet.ir", "--print-after=dcee"]);
    assert_eq!(err, "error: unknown pass `dcee` (did you mean `dce`?)\n");
}

#[test]
fn passes_runs_the_named_passes_in_order() {
    let out = ok(&["compile", "models/lenet_bn.ir", "--passes=infer-shapes,dce"]);
    // lower-batch-norm did not run.
    assert!(out.contains("bn1 = batch_norm(conv1, "), "{out}");
    assert!(out.contains(": f32[N,10]\n"), "{out}");
}

#[test]
fn print_after_a_pass_prints_one_dump() {
    let out = ok(&[
        "compile",
        "models/lenet_bn.ir",
        "--print-after=infer-shapes",
    ]);
    assert_eq!(out.matches("// ----- IR after ").count(), 1, "{out}");
    assert!(
        out.starts_with("// ----- IR after infer-shapes -----\ninput x"),
        "{out}"
    );
    // The dump is taken before lowering; the final IR follows it.
    let (dump, rest) = out.split_once("\n\n").expect("a blank line ends the dump");
    assert!(dump.contains("= batch_norm(conv1, "), "{dump}");
    assert!(!rest.contains("= batch_norm("), "{rest}");
    assert!(rest.ends_with("output fc3\n"), "{rest}");
}

#[test]
fn print_after_all_prints_one_dump_per_pass() {
    for (mode, flag) in [(Mode::Infer, "infer"), (Mode::Train, "train")] {
        let out = ok(&[
            "compile",
            "models/lenet_bn.ir",
            "--mode",
            flag,
            "--print-after-all",
        ]);
        let headers: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("// ----- IR after "))
            .collect();
        let expected: Vec<String> = default_pipeline(mode)
            .iter()
            .map(|p| format!("// ----- IR after {p} -----"))
            .collect();
        assert_eq!(headers, expected, "{flag}");
    }
}

#[test]
fn print_after_change_skips_passes_that_changed_nothing() {
    // In lenet.ir there is no batch_norm to lower and no dead code.
    let out = ok(&["compile", "models/lenet.ir", "--print-after-change"]);
    let headers: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("// ----- IR after "))
        .collect();
    assert_eq!(headers, ["// ----- IR after infer-shapes -----"], "{out}");
}

#[test]
fn emit_dot_writes_a_digraph() {
    let out = ok(&["compile", "models/lenet_bn.ir", "--emit", "dot"]);
    assert!(out.starts_with("digraph"), "{out}");
    assert!(out.trim_end().ends_with('}'), "{out}");
    assert!(out.contains("conv1"), "{out}");
}

#[test]
fn time_passes_writes_a_table_to_stderr() {
    let o = bnc(&["compile", "models/lenet_bn.ir", "--time-passes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    let pipeline = default_pipeline(Mode::Infer);
    assert!(lines.len() > pipeline.len(), "{err}");
    assert!(lines[0].starts_with("pass"), "{err}");
    for (line, pass) in lines[1..].iter().zip(pipeline) {
        assert!(line.starts_with(pass), "{err}");
        assert!(line.contains("ms"), "{err}");
    }
    // The IR still goes to stdout, untouched by the table.
    assert!(stdout(&o).starts_with("input x"));
}

#[test]
fn a_missing_file_is_an_error_naming_the_path() {
    let err = fails(&["compile", "models/no_such_model.ir"]);
    assert!(err.starts_with("error: models/no_such_model.ir: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn an_unknown_mode_is_a_usage_error() {
    let o = bnc(&["compile", "models/lenet.ir", "--mode", "trian"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("trian"), "{}", stderr(&o));
}

/// The subcommands that `bnc --help` lists, `help` excluded.
fn subcommands() -> Vec<String> {
    let help = ok(&["--help"]);
    let section = help
        .split_once("Commands:")
        .expect("`bnc --help` lists commands")
        .1;
    section
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn help_works_for_every_subcommand() {
    let commands = subcommands();
    for expected in ["compile", "passes"] {
        assert!(commands.iter().any(|c| c == expected), "{commands:?}");
    }
    for c in &commands {
        for args in [vec![c.as_str(), "--help"], vec!["help", c.as_str()]] {
            let out = ok(&args);
            assert!(
                out.contains(&format!("Usage: bnc {c}")),
                "bnc {args:?}:\n{out}"
            );
        }
    }
    assert!(ok(&["--version"]).starts_with("bnc "));
}

#[test]
fn no_subcommand_is_a_usage_error() {
    let o = bnc(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage: bnc"), "{}", stderr(&o));
}

#[test]
fn the_error_files_fail_from_the_command_line_too() {
    // Every error file fails with status 1 and one `error: FILE:...` line, never a panic.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests/errors");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ir") {
            continue;
        }
        let path = path.display().to_string();
        let first = std::fs::read(&path).unwrap();
        let directive = first.split(|&b| b == b'\n').nth(1).unwrap_or_default();
        if directive.starts_with(b"# run:") {
            continue; // runs passes that the default command line does not
        }
        let err = fails(&["compile", &path]);
        assert!(err.starts_with(&format!("error: {path}:")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
