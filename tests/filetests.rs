//! File tests: data-driven tests over `tests/filetests/**/*.ir`, in the manner of
//! Cranelift's `*.clif` and MLIR's `lit` tests. Each file says in its first line what to
//! do with it, and one insta snapshot per file records the result for review.
//!
//! - `parse/*.ir` and `passes/*.ir` hold valid IR. The first line is a directive
//!   `# run: WORDS`, where the words are `parse` (no passes), `infer` or `train` (the
//!   mode's default pipeline, or the mode for the passes that follow), `passes=a,b`, or a
//!   bare pass name (`# run: infer-shapes`). The snapshot is the canonical print after the
//!   run, headed by the passes that ran and whether each changed the graph. The harness
//!   also checks `print(parse(print(g))) == print(g)` before the passes, after every pass,
//!   and at the end.
//! - `errors/*.ir` hold malformed input. The first line is `# error: LINE:COL: message`
//!   (or, where the file cannot hold a comment, a sidecar `NAME.ir.err` holds it); an
//!   optional second line `# run: ...` picks the passes. The harness parses the bytes,
//!   compiles with `bnc::compile` if that succeeds, and asserts that the error renders
//!   exactly as expected; the snapshot records the message too, so rewording is reviewed.

use std::path::Path;

use bnc::compiler::text::{parse, print};
use bnc::{CompileOptions, Error, Mode, PrintAfter, Step};

/// What a `# run:` directive asks for.
#[derive(Debug)]
struct Run {
    mode: Mode,
    /// `None` runs the mode's default pipeline; `Some(vec![])` runs nothing.
    passes: Option<Vec<String>>,
}

/// Reads the `# run:` directive on `line`; `None` if the line is not one.
fn parse_run(line: &str) -> Option<Result<Run, String>> {
    let words = line.trim().strip_prefix("# run:")?;
    let mut run = Run {
        mode: Mode::Infer,
        passes: None,
    };
    let mut list: Option<Vec<String>> = None;
    for word in words.split_whitespace() {
        match word {
            "infer" => run.mode = Mode::Infer,
            "train" => run.mode = Mode::Train,
            "parse" => {
                list.get_or_insert_with(Vec::new);
            }
            _ => {
                let names = word.strip_prefix("passes=").unwrap_or(word);
                if names.is_empty() {
                    return Some(Err(format!("empty pass list in directive `{line}`")));
                }
                list.get_or_insert_with(Vec::new)
                    .extend(names.split(',').map(str::to_string));
            }
        }
    }
    run.passes = list;
    Some(Ok(run))
}

/// Compiles `g` as `run` says, keeping the IR after every pass; errors come rendered.
fn compile(g: bnc::Graph, run: &Run) -> Result<(bnc::Graph, Vec<Step>), String> {
    let opts = CompileOptions {
        passes: run.passes.clone(),
        print_after: PrintAfter::All,
    };
    bnc::compile(g, run.mode, &opts).map_err(|e| render(&e))
}

/// Renders an error as `LINE:COL: message`, the form the expectations are written in.
fn render(e: &Error) -> String {
    let message = match e {
        Error::Parse { error, .. } => error.to_string(),
        Error::Shape { error, .. } => error.to_string(),
        Error::Invalid { error, .. } => error.to_string(),
        other => return format!("(no location): {other}"),
    };
    match e.span() {
        Some(span) => format!("{span}: {message}"),
        None => format!("(no location): {message}"),
    }
}

/// Checks `print(parse(text)) == text` for canonical text `text`.
fn check_round_trip(text: &str, when: &str) -> Result<(), String> {
    let g = parse(text).map_err(|e| {
        format!(
            "{when}: the printed IR does not parse: {}: {e}\n{text}",
            e.span
        )
    })?;
    let again = print(&g);
    if again == text {
        Ok(())
    } else {
        Err(format!(
            "{when}: the round trip changed the IR\n--- printed:\n{text}--- reprinted:\n{again}"
        ))
    }
}

/// Runs one valid file; returns the snapshot text, or every problem found.
fn run_valid(src: &str) -> Result<String, String> {
    let first = src.lines().next().unwrap_or_default();
    let run = parse_run(first)
        .ok_or("the first line must be a `# run: ...` directive")?
        .map_err(|e| e.to_string())?;
    if src.contains("# error:") {
        return Err("a valid file must not hold an `# error:` expectation".into());
    }
    let g = bnc::parse_model("", src.as_bytes()).map_err(|e| render(&e))?;
    check_round_trip(&print(&g), "after parsing")?;
    let (g, steps) = if run.passes.as_deref() == Some(&[]) {
        (g, Vec::new())
    } else {
        compile(g, &run)?
    };
    for step in &steps {
        let ir = step.ir.as_deref().ok_or("print_after=All kept no IR")?;
        check_round_trip(ir, &format!("after pass `{}`", step.pass))?;
    }
    let out = print(&g);
    check_round_trip(&out, "at the end")?;
    let header: Vec<String> = steps
        .iter()
        .map(|s| {
            let changed = if s.changed { "changed" } else { "unchanged" };
            format!("{} ({changed})", s.pass)
        })
        .collect();
    let header = if header.is_empty() {
        "no passes".to_string()
    } else {
        header.join(", ")
    };
    Ok(format!("// mode {}: {header}\n{out}", run.mode.name()))
}

/// The expected error of an error file: its `# error:` first line, or its sidecar.
fn expectation(path: &Path, src: &[u8]) -> Result<String, String> {
    let sidecar = path.with_extension("ir.err");
    let first = src.split(|&b| b == b'\n').next().unwrap_or_default();
    let inline = std::str::from_utf8(first)
        .ok()
        .and_then(|l| l.trim_end().strip_prefix("# error: "))
        .map(str::to_string);
    match (inline, std::fs::read_to_string(&sidecar).ok()) {
        (Some(e), None) => Ok(e),
        (None, Some(e)) => Ok(e.trim_end_matches('\n').to_string()),
        (Some(_), Some(_)) => Err("both an `# error:` line and a sidecar `.ir.err`".into()),
        (None, None) => Err("no `# error: LINE:COL: message` first line and no sidecar".into()),
    }
}

/// Runs one error file; returns the rendered error, or the problem found.
fn run_error(path: &Path) -> Result<String, String> {
    let src = std::fs::read(path).map_err(|e| e.to_string())?;
    let expected = expectation(path, &src)?;
    let second = src
        .split(|&b| b == b'\n')
        .nth(1)
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or_default();
    let run = match parse_run(second) {
        Some(run) => run?,
        None => Run {
            mode: Mode::Infer,
            passes: None,
        },
    };
    let result = bnc::parse_model("", &src)
        .map_err(|e| render(&e))
        .and_then(|g| compile(g, &run));
    let got = match result {
        Ok((g, _)) => {
            return Err(format!(
                "expected `{expected}`, but the file compiled:\n{}",
                print(&g)
            ));
        }
        Err(e) => e,
    };
    if got == expected {
        Ok(got)
    } else {
        Err(format!("expected `{expected}`\n     got `{got}`"))
    }
}

/// insta's `glob!` keeps its failure count in a process-wide stack, so a snapshot failing
/// on another test thread while a glob runs is charged to the glob (and does not fail its
/// own test); every snapshot test takes its turn instead.
fn glob_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reports a problem at once (a later snapshot failure would hide it) and keeps it.
fn fail(failures: &mut Vec<String>, path: &Path, problem: &str) {
    let msg = format!("{}: {problem}", path.display());
    eprintln!("FAILED {msg}\n");
    failures.push(msg);
}

fn finish(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} file test(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs every valid file of `tests/filetests/{dir}`; snapshots are named `{dir}@FILE`.
fn valid_files(dir: &str) {
    let _turn = glob_lock();
    let mut failures = Vec::new();
    insta::glob!("filetests", &format!("{dir}/*.ir"), |path| {
        let src = std::fs::read_to_string(path).unwrap_or_default();
        match run_valid(&src) {
            Ok(out) => insta::assert_snapshot!(dir, out),
            Err(problem) => fail(&mut failures, path, &problem),
        }
    });
    finish(failures);
}

#[test]
fn parse_files() {
    valid_files("parse");
}

#[test]
fn pass_files() {
    valid_files("passes");
}

#[test]
fn error_files() {
    let _turn = glob_lock();
    let mut failures = Vec::new();
    let mut count = 0;
    insta::glob!("filetests", "errors/*.ir", |path| {
        count += 1;
        match run_error(path) {
            Ok(message) => insta::assert_snapshot!("errors", message),
            Err(problem) => fail(&mut failures, path, &problem),
        }
    });
    assert!(count >= 25, "only {count} error files");
    finish(failures);
}

/// The directive parser itself: a typo in a directive must not silently test nothing.
#[test]
fn run_directives() {
    let run = |l: &str| parse_run(l).map(|r| r.map(|r| (r.mode, r.passes)));
    let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(run("# run: infer"), Some(Ok((Mode::Infer, None))));
    assert_eq!(run("# run: train"), Some(Ok((Mode::Train, None))));
    assert_eq!(run("# run: parse"), Some(Ok((Mode::Infer, list(&[])))));
    assert_eq!(
        run("# run: infer-shapes"),
        Some(Ok((Mode::Infer, list(&["infer-shapes"]))))
    );
    assert_eq!(
        run("# run: train passes=infer-shapes,attach-loss"),
        Some(Ok((Mode::Train, list(&["infer-shapes", "attach-loss"]))))
    );
    assert!(matches!(run("# run: passes="), Some(Err(_))));
    assert_eq!(run("# a comment"), None);
}
