//! Datasets: Fashion-MNIST read from IDX files, and the batching and seeded per-epoch
//! shuffling that the training loop consumes. Reading never panics and never trusts a
//! header: every size a file claims is checked against a cap and against the bytes that
//! are really there before anything is allocated for it.

mod batch;
pub mod fashion_mnist;
pub mod idx;

pub use batch::{Batch, Batches, SplitMix64, shuffled_indices};
pub use fashion_mnist::{CLASS_NAMES, DEFAULT_DIR, Dataset, NUM_CLASSES, Split, load};
pub use idx::{IdxArray, MAX_ELEMENTS, parse_idx, read_idx};

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading a dataset. Each message names the file at
/// fault and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset file is not where the dataset should be; the message says how to get it.
    #[error(
        "fashion-mnist file {} not found: install the dataset with \
         `apt-get install dataset-fashion-mnist` (it goes to {}) or pass `--data DIR` \
         with a directory holding the IDX files",
        path.display(),
        fashion_mnist::DEFAULT_DIR
    )]
    DatasetMissing {
        /// The file that was looked for (the gzip name; the raw name was tried too).
        path: PathBuf,
    },
    /// The operating system refused to open or read a file.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file starts like gzip but does not decompress.
    #[error("{}: corrupt gzip stream: {source}", path.display())]
    CorruptGzip {
        /// The file being read.
        path: PathBuf,
        /// The decompressor's complaint.
        source: io::Error,
    },
    /// The first two bytes are not the IDX magic `0x00 0x00`.
    #[error(
        "{}: bad magic 0x{:02x} 0x{:02x}, an IDX file starts with 0x00 0x00",
        path.display(),
        found[0],
        found[1]
    )]
    BadMagic {
        /// The file being read.
        path: PathBuf,
        /// The two bytes found instead.
        found: [u8; 2],
    },
    /// The element type code is not unsigned byte (0x08), the only type Fashion-MNIST uses.
    #[error(
        "{}: unsupported IDX type code 0x{code:02x}, only 0x08 (unsigned byte) is supported",
        path.display()
    )]
    UnsupportedType {
        /// The file being read.
        path: PathBuf,
        /// The type code from the third header byte.
        code: u8,
    },
    /// The file holds an array of the wrong rank (images need 3 dims, labels 1).
    #[error("{}: expected {expected} dimensions, found {found}", path.display())]
    WrongDims {
        /// The file being read.
        path: PathBuf,
        /// The rank the caller asked for.
        expected: usize,
        /// The rank the header declares.
        found: usize,
    },
    /// The header claims more elements than [`MAX_ELEMENTS`]; refused before allocating.
    #[error(
        "{}: header claims dimensions {dims:?}, more than the limit of {limit} elements",
        path.display()
    )]
    TooLarge {
        /// The file being read.
        path: PathBuf,
        /// The dimensions the header declares.
        dims: Vec<u32>,
        /// The element cap.
        limit: usize,
    },
    /// The file ends inside the header.
    #[error(
        "{}: truncated header: expected {expected} bytes, got {got}",
        path.display()
    )]
    TruncatedHeader {
        /// The file being read.
        path: PathBuf,
        /// The header length implied by the rank byte (or the 4-byte minimum).
        expected: usize,
        /// The bytes actually present.
        got: usize,
    },
    /// The file ends before all the elements the header declares.
    #[error("{}: truncated data: expected {expected} bytes, got {got}", path.display())]
    TruncatedData {
        /// The file being read.
        path: PathBuf,
        /// The data length the header declares.
        expected: usize,
        /// The data bytes actually present.
        got: usize,
    },
    /// The file goes on after all the elements the header declares.
    #[error(
        "{}: {extra} trailing bytes after the {expected} data bytes the header declares",
        path.display()
    )]
    TrailingBytes {
        /// The file being read.
        path: PathBuf,
        /// The data length the header declares.
        expected: usize,
        /// How many bytes follow it.
        extra: u64,
    },
    /// A label is not a class index 0..=9.
    #[error(
        "{}: label {label} at index {index} is out of range, expected 0..=9",
        path.display()
    )]
    LabelOutOfRange {
        /// The labels file.
        path: PathBuf,
        /// The position of the bad label.
        index: usize,
        /// The bad label.
        label: u8,
    },
    /// The images file and the labels file hold different numbers of examples.
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// Its number of images.
        images: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Its number of labels.
        labels: usize,
    },
}

#[cfg(test)]
pub(crate) mod testdir;
