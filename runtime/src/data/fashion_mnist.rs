//! Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 70 000 grey 28×28 images of clothing
//! in ten classes, 60 000 for training and 10 000 for testing, as four IDX files.
//!
//! Debian's `dataset-fashion-mnist` package installs the gzipped files in
//! [`DEFAULT_DIR`]; the CLI's `--data DIR` points elsewhere. Un-gzipped copies under the
//! same names without `.gz` are accepted too. Pixels are scaled from `0..=255` to
//! `[0, 1]`, as d2l's `ToTensor` does; labels are checked to be class indices.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use super::DataError;
use super::batch::{Batches, shuffled_indices};
use super::idx::read_idx;

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The number of classes.
pub const NUM_CLASSES: usize = 10;

/// The class names, indexed by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which half of the dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The 60 000 training examples (`train-*` files).
    Train,
    /// The 10 000 test examples (`t10k-*` files).
    Test,
}

impl Split {
    /// The split's name: `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    /// The prefix of the split's file names.
    fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Labelled grey images held in memory: `len()` images of `rows × cols` pixels in
/// `[0, 1]`, row-major, with one class label each.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    images: Vec<f32>,
    labels: Vec<i32>,
    n: usize,
    rows: usize,
    cols: usize,
}

impl Dataset {
    /// A dataset from its parts; `None` unless `images` holds exactly
    /// `labels.len() * rows * cols` pixels.
    pub fn new(images: Vec<f32>, labels: Vec<i32>, rows: usize, cols: usize) -> Option<Dataset> {
        let n = labels.len();
        let pixels = n.checked_mul(rows)?.checked_mul(cols)?;
        (images.len() == pixels).then_some(Dataset {
            images,
            labels,
            n,
            rows,
            cols,
        })
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The image height in pixels.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The image width in pixels.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Pixels per image, `rows * cols`.
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// All pixels, image after image, each image row-major.
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    /// All labels, one per image.
    pub fn labels(&self) -> &[i32] {
        &self.labels
    }

    /// The pixels of image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        let p = self.pixels_per_image();
        self.images
            .get(i.checked_mul(p)?..i.checked_add(1)?.checked_mul(p)?)
    }

    /// The label of example `i`, or `None` past the end.
    pub fn label(&self, i: usize) -> Option<i32> {
        self.labels.get(i).copied()
    }

    /// Copies the examples at `indices` into `images` and `labels`, replacing their
    /// contents; the buffers' capacity is reused, so a loop over equal-sized batches
    /// allocates only once.
    ///
    /// # Panics
    ///
    /// If an index is `>= len()`, like slice indexing; [`Batches`] only passes valid ones.
    pub fn gather(&self, indices: &[usize], images: &mut Vec<f32>, labels: &mut Vec<i32>) {
        let p = self.pixels_per_image();
        images.clear();
        labels.clear();
        images.reserve(indices.len() * p);
        labels.reserve(indices.len());
        for &i in indices {
            images.extend_from_slice(&self.images[i * p..(i + 1) * p]);
            labels.push(self.labels[i]);
        }
    }

    /// The batches of one pass in file order (for evaluation).
    pub fn batches(&self, batch_size: NonZeroUsize) -> Batches<'_> {
        Batches::new(self, (0..self.n).collect(), batch_size)
    }

    /// The batches of training epoch `epoch` of a run seeded with `seed`, in the order of
    /// [`shuffled_indices`]`(len, seed, epoch)`.
    pub fn shuffled_batches(&self, batch_size: NonZeroUsize, seed: u64, epoch: u64) -> Batches<'_> {
        Batches::new(self, shuffled_indices(self.n, seed, epoch), batch_size)
    }
}

/// Loads one split of Fashion-MNIST from `dir` (usually [`DEFAULT_DIR`]), preferring the
/// gzipped files and falling back to un-gzipped ones.
pub fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let prefix = split.file_prefix();
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;

    let images = read_idx(&images_path, 3)?;
    let labels = read_idx(&labels_path, 1)?;
    let (n, rows, cols) = (images.dims()[0], images.dims()[1], images.dims()[2]);
    if labels.dims()[0] != n {
        return Err(DataError::CountMismatch {
            images_path,
            images: n,
            labels_path,
            labels: labels.dims()[0],
        });
    }
    if let Some((index, &label)) = labels
        .data()
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= NUM_CLASSES)
    {
        return Err(DataError::LabelOutOfRange {
            path: labels_path,
            index,
            label,
        });
    }

    // Dividing by 255 (not multiplying by 1/255) gives exactly 0.0 and 1.0 at the ends
    // and the correctly rounded quotient in between, as torchvision's ToTensor does.
    let pixels = images
        .into_data()
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    let labels = labels.data().iter().map(|&l| i32::from(l)).collect();
    Ok(Dataset {
        images: pixels,
        labels,
        n,
        rows,
        cols,
    })
}

/// The path of the file `stem` in `dir`: `stem.gz` if present, else `stem`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    let raw = dir.join(stem);
    if raw.exists() {
        return Ok(raw);
    }
    Err(DataError::DatasetMissing { path: gz })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testdir::{TestDir, gzip, idx_bytes};
    use std::fs;

    /// Writes a tiny split (`t10k-*`) of `labels.len()` 2×2 images into `dir`.
    fn write_split(dir: &Path, labels: &[u8], label_count: u32, gz: bool) {
        let n = u32::try_from(labels.len()).expect("small");
        let pixels: Vec<u8> = (0..4 * labels.len())
            .map(|i| (i * 17 % 256) as u8)
            .collect();
        let images = idx_bytes(0x08, &[n, 2, 2], &pixels);
        let labels = idx_bytes(0x08, &[label_count], labels);
        let (images, labels, ext) = if gz {
            (gzip(&images), gzip(&labels), ".gz")
        } else {
            (images, labels, "")
        };
        fs::write(dir.join(format!("t10k-images-idx3-ubyte{ext}")), images).expect("write");
        fs::write(dir.join(format!("t10k-labels-idx1-ubyte{ext}")), labels).expect("write");
    }

    fn load_err(dir: &Path) -> String {
        match load(dir, Split::Test) {
            Ok(d) => panic!("expected an error, loaded {} examples", d.len()),
            Err(err) => err.to_string(),
        }
    }

    /// Tiny synthetic splits load from gzip and raw files, scaled to [0, 1].
    #[test]
    fn loads_synthetic_split() {
        for gz in [true, false] {
            let dir = TestDir::new("fmnist_ok");
            write_split(dir.path(), &[3, 9, 0], 3, gz);
            let data = load(dir.path(), Split::Test).expect("valid split");
            assert_eq!((data.len(), data.rows(), data.cols()), (3, 2, 2));
            assert_eq!(data.labels(), &[3, 9, 0]);
            assert_eq!(
                data.image(1),
                Some(&[68.0 / 255.0, 85.0 / 255.0, 102.0 / 255.0, 119.0 / 255.0][..])
            );
            assert_eq!(data.image(3), None);
        }
    }

    /// A missing dataset says how to install it and how to point elsewhere.
    #[test]
    fn missing_dataset_says_how_to_install() {
        let dir = TestDir::new("fmnist_missing");
        let expected = format!(
            "fashion-mnist file {} not found: install the dataset with \
             `apt-get install dataset-fashion-mnist` (it goes to \
             /usr/share/datasets/fashion-mnist) or pass `--data DIR` with a directory \
             holding the IDX files",
            dir.path().join("t10k-images-idx3-ubyte.gz").display()
        );
        assert_eq!(load_err(dir.path()), expected);
        assert!(load_err(&dir.path().join("nonexistent")).contains("--data DIR"));
    }

    /// A label outside 0..=9 is refused with its position.
    #[test]
    fn label_out_of_range() {
        let dir = TestDir::new("fmnist_label");
        write_split(dir.path(), &[1, 2, 10], 3, true);
        assert_eq!(
            load_err(dir.path()),
            format!(
                "{}: label 10 at index 2 is out of range, expected 0..=9",
                dir.path().join("t10k-labels-idx1-ubyte.gz").display()
            )
        );
    }

    /// Images and labels must agree on the number of examples.
    #[test]
    fn count_mismatch() {
        let dir = TestDir::new("fmnist_count");
        write_split(dir.path(), &[1, 2], 2, false);
        // Rewrite the labels with three entries.
        let labels = idx_bytes(0x08, &[3], &[1, 2, 3]);
        fs::write(dir.path().join("t10k-labels-idx1-ubyte"), labels).expect("write");
        assert_eq!(
            load_err(dir.path()),
            format!(
                "{} holds 2 images but {} holds 3 labels",
                dir.path().join("t10k-images-idx3-ubyte").display(),
                dir.path().join("t10k-labels-idx1-ubyte").display()
            )
        );
    }

    /// Image and label files of the wrong rank are refused by name.
    #[test]
    fn wrong_rank_files() {
        let dir = TestDir::new("fmnist_rank");
        write_split(dir.path(), &[1], 1, false);
        fs::write(
            dir.path().join("t10k-images-idx3-ubyte"),
            idx_bytes(0x08, &[4], &[0; 4]),
        )
        .expect("write");
        assert_eq!(
            load_err(dir.path()),
            format!(
                "{}: expected 3 dimensions, found 1",
                dir.path().join("t10k-images-idx3-ubyte").display()
            )
        );
    }

    fn real_dir() -> &'static Path {
        Path::new(DEFAULT_DIR)
    }

    /// The real training split: 60 000 images, 6 000 per class, pixels in [0, 1], and the
    /// first example an ankle boot.
    #[test]
    fn real_train_split() {
        let data = load(real_dir(), Split::Train).expect("install dataset-fashion-mnist");
        check_real(&data, 60_000);
        assert_eq!(data.label(0), Some(9));
        assert_eq!(CLASS_NAMES[9], "Ankle boot");
    }

    /// The real test split: 10 000 images, 1 000 per class.
    #[test]
    fn real_test_split() {
        let data = load(real_dir(), Split::Test).expect("install dataset-fashion-mnist");
        check_real(&data, 10_000);
    }

    fn check_real(data: &Dataset, n: usize) {
        assert_eq!((data.len(), data.rows(), data.cols()), (n, 28, 28));
        assert_eq!(data.images().len(), n * 28 * 28);
        let mut histogram = [0usize; NUM_CLASSES];
        for &l in data.labels() {
            histogram[l as usize] += 1;
        }
        assert_eq!(histogram, [n / 10; NUM_CLASSES]);
        let (lo, hi) = data
            .images()
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &p| {
                (lo.min(p), hi.max(p))
            });
        assert_eq!((lo, hi), (0.0, 1.0));
        let first = data.shuffled_batches(NonZeroUsize::new(256).expect("nonzero"), 0, 0);
        assert_eq!(first.len(), n.div_ceil(256));
    }
}
