//! Replays the committed fuzz corpus (`tests/corpus/{ir,safetensors,idx}/`) through the
//! readers of user input, exactly as the fuzz targets in `fuzz/` do (`bnc::fuzzing`): every
//! file must give `ok` or a typed error, never a panic. The outcome of every file is
//! recorded in one insta snapshot, so a changed error message or a file that starts or
//! stops parsing is reviewed. The corpus holds hand-written edge cases, inputs the fuzzers
//! found interesting (minimized), and every input that once crashed a reader; see
//! `docs/FUZZING.md` for how to run the fuzzers and add to it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// A reader as the fuzz targets call it: bytes in, a one-line outcome out.
type Reader = fn(&[u8]) -> String;

/// The corpus directories and the reader each one feeds.
const READERS: [(&str, Reader); 3] = [
    ("ir", bnc::fuzzing::ir),
    ("safetensors", bnc::fuzzing::safetensors),
    ("idx", bnc::fuzzing::idx),
];

#[test]
fn every_corpus_file_gives_ok_or_a_typed_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut listing = String::new();
    let mut panics = Vec::new();
    for (dir, read) in READERS {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("tests/corpus/{dir}: {e}"))
            .map(|e| e.expect("directory entry").path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 20,
            "tests/corpus/{dir} holds only {} files",
            files.len()
        );
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).expect("corpus file");
            match catch_unwind(AssertUnwindSafe(|| read(&bytes))) {
                Ok(outcome) => listing.push_str(&format!("{dir}/{name}: {outcome}\n")),
                Err(_) => panics.push(format!("{dir}/{name}")),
            }
        }
    }
    assert!(panics.is_empty(), "readers panicked on {panics:?}");
    insta::assert_snapshot!("corpus_outcomes", listing);
}

/// Prints the outcome of every file in `$BNC_CORPUS_DIR` for reader `$BNC_CORPUS_READER`
/// (`ir`, `safetensors` or `idx`), one `file: outcome` line each, to pick fuzzer finds
/// worth committing (`docs/FUZZING.md`). Run with `-- --ignored --nocapture`.
#[test]
#[ignore = "a tool for curating the corpus, not a test"]
fn classify_a_directory() {
    let (Ok(dir), Ok(reader)) = (
        std::env::var("BNC_CORPUS_DIR"),
        std::env::var("BNC_CORPUS_READER"),
    ) else {
        eprintln!("set BNC_CORPUS_DIR and BNC_CORPUS_READER");
        return;
    };
    let read = READERS
        .iter()
        .find(|(name, _)| *name == reader)
        .map(|(_, read)| read)
        .expect("a reader name: ir, safetensors or idx");
    for entry in std::fs::read_dir(&dir).expect("a directory") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("file");
        println!("{}\t{}\t{}", path.display(), bytes.len(), read(&bytes));
    }
}
