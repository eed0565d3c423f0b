//! Helpers shared by the integration tests: running `bnc`, temporary directories, a tiny
//! Fashion-MNIST-shaped data set (so that `bnc train` runs in a fraction of a second), and
//! an ONNX writer for import fixtures.

#![allow(dead_code)] // each test file uses its own subset

pub mod onnx_writer;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `bnc ARGS` in the package root, so that paths like `models/lenet.ir` resolve.
pub fn bnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bnc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the bnc binary runs")
}

/// The standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

/// The standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("stderr is UTF-8")
}

/// Asserts success and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = bnc(args);
    assert!(o.status.success(), "bnc {args:?} failed:\n{}", stderr(&o));
    stdout(&o)
}

/// Asserts failure with status 1 and nothing on stdout; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let o = bnc(args);
    assert_eq!(o.status.code(), Some(1), "bnc {args:?}:\n{}", stderr(&o));
    assert_eq!(stdout(&o), "", "bnc {args:?} printed to stdout on failure");
    stderr(&o)
}

/// A fresh directory, removed with its contents on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A directory unique to this process and call.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("bnc-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A path inside the directory, as a string for command lines.
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn idx(type_code: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, type_code, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(body);
    bytes
}

/// Writes un-gzipped IDX files of `train` and `test` random 28×28 images with labels
/// 0..10 into `dir`, named as Fashion-MNIST's (`bnc --data DIR` reads them).
pub fn tiny_dataset(dir: &Path, train: u32, test: u32) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let pixels: Vec<u8> = (0..n * 784).map(|_| next() as u8).collect();
        let labels: Vec<u8> = (0..n).map(|_| (next() % 10) as u8).collect();
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx(8, &[n, 28, 28], &pixels),
        )
        .expect("write images");
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx(8, &[n], &labels),
        )
        .expect("write labels");
    }
}
