//! Test support: self-cleaning temporary directories and builders for synthetic IDX
//! files, shared by the data and weights tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::Compression;
use flate2::write::GzEncoder;

/// A fresh directory under the system temp dir, removed with its contents on drop.
pub(crate) struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates a directory whose name is unique per process, test and call, so tests
    /// running in parallel (or several `cargo test` processes) never share one.
    pub(crate) fn new(tag: &str) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("bnc-runtime-test-{tag}-{}-{n}", std::process::id()));
        // A leftover from an earlier crashed run with the same pid must not leak in.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The bytes of an IDX file: magic with `type_code`, the dimensions, then `body` (which
/// need not match the dimensions, so that broken files can be built too).
pub(crate) fn idx_bytes(type_code: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let rank = u8::try_from(dims.len()).expect("rank fits in a byte");
    let mut bytes = vec![0, 0, type_code, rank];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(body);
    bytes
}

/// `bytes` wrapped in a gzip stream.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("write to memory");
    encoder.finish().expect("finish gzip")
}
