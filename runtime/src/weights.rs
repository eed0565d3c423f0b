//! The parameter store: named tensors (weights, biases, BatchNorm's gamma, beta and
//! running statistics) kept outside the IR and saved as safetensors files.
//!
//! Files carry `{"format": "bnc"}` in their metadata and hold only `F32` and `I32`
//! tensors; files written elsewhere (e.g. by PyTorch's `safetensors.torch.save_file`) load
//! too as long as their dtypes are those two. Saving is atomic: the bytes go to a hidden
//! temporary file in the target's directory, are flushed to disk, and only then renamed
//! over the target, so a crash or a full disk never leaves a half-written weights file.
//! Loading never panics on any input: the safetensors crate validates the header, and
//! the offsets are checked against the file size first so that its arithmetic cannot
//! overflow.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bnc_compiler::{DType, Tensor, TensorData};
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};

/// The metadata key and value that mark a file as written by bnc.
const FORMAT_KEY: &str = "format";
/// See [`FORMAT_KEY`].
const FORMAT_VALUE: &str = "bnc";
/// The header key safetensors reserves for metadata; no tensor may be called this.
const METADATA_KEY: &str = "__metadata__";

/// Everything that can go wrong loading, saving or binding parameters. Messages name the
/// file, the tensor and the shape at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The weights file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file could not be written (nothing was left behind).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The weights file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{}: malformed safetensors file: {source}", path.display())]
    Malformed {
        /// The weights file.
        path: PathBuf,
        /// What the safetensors parser found wrong.
        source: SafeTensorError,
    },
    /// The tensors could not be encoded as safetensors.
    #[error("cannot encode {} as safetensors: {source}", path.display())]
    Encode {
        /// The weights file.
        path: PathBuf,
        /// What the safetensors encoder refused.
        source: SafeTensorError,
    },
    /// A tensor in the file has a dtype other than F32 or I32.
    #[error(
        "{}: tensor '{name}' has dtype {dtype}, only F32 and I32 are supported",
        path.display()
    )]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype as safetensors spells it (`F64`, `BF16`, ...).
        dtype: String,
    },
    /// A tensor is named `__metadata__`, which the safetensors header reserves.
    #[error(
        "cannot save {}: the tensor name '__metadata__' is reserved by safetensors",
        path.display()
    )]
    ReservedName {
        /// The weights file.
        path: PathBuf,
    },
    /// A parameter the model needs is not in the store.
    #[error("missing tensor '{name}'")]
    Missing {
        /// The parameter's name.
        name: String,
    },
    /// A parameter has a different shape than the model needs.
    #[error(
        "tensor '{name}' has shape {}, expected {}",
        ShapeDisplay(found),
        ShapeDisplay(expected)
    )]
    ShapeMismatch {
        /// The parameter's name.
        name: String,
        /// The stored shape.
        found: Vec<usize>,
        /// The shape the model needs.
        expected: Vec<usize>,
    },
    /// A parameter has a different element type than the model needs.
    #[error("tensor '{name}' has dtype {found}, expected {expected}")]
    DtypeMismatch {
        /// The parameter's name.
        name: String,
        /// The stored element type.
        found: DType,
        /// The element type the model needs.
        expected: DType,
    },
}

/// Prints a shape compactly, `[6,1,5,5]`, as the IR's text format does.
struct ShapeDisplay<'a>(&'a [usize]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Named tensors in name order, loaded from and saved to safetensors files.
///
/// ```
/// use bnc_compiler::Tensor;
/// use bnc_runtime::weights::ParamStore;
///
/// let mut store = ParamStore::new();
/// store.insert("bn1.weight", Tensor::new(vec![3], vec![1.0, 2.0, 3.0]).unwrap());
/// let path = std::env::temp_dir().join(format!("bnc-doc-{}.safetensors", std::process::id()));
/// store.save(&path)?; // atomically: a temporary file, then a rename
/// let back = ParamStore::load(&path)?;
/// assert_eq!(back, store);
/// // A missing or mis-shaped tensor is a typed error naming it.
/// assert!(back.expect("bn1.weight", &[4]).is_err());
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), bnc_runtime::weights::WeightsError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamStore {
    tensors: BTreeMap<String, Tensor>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The tensor called `name`, mutably (for in-place optimizer updates).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(name)
    }

    /// Stores `tensor` as `name`, returning the tensor it replaces.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.tensors.insert(name.into(), tensor)
    }

    /// Removes and returns the tensor called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// True when a tensor is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensors in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(name, t)| (name.as_str(), t))
    }

    /// The names in order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the store holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor called `name`, checked to have `shape`: what the runtime calls when it
    /// binds a model's parameters, so a wrong weights file fails with the name at fault.
    pub fn expect(&self, name: &str, shape: &[usize]) -> Result<&Tensor, WeightsError> {
        let tensor = self.get(name).ok_or_else(|| WeightsError::Missing {
            name: name.to_string(),
        })?;
        if tensor.shape() != shape {
            return Err(WeightsError::ShapeMismatch {
                name: name.to_string(),
                found: tensor.shape().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(tensor)
    }

    /// The elements of the `f32` tensor called `name`, checked to have `shape`.
    pub fn expect_f32(&self, name: &str, shape: &[usize]) -> Result<&[f32], WeightsError> {
        let tensor = self.expect(name, shape)?;
        tensor.as_f32().ok_or_else(|| WeightsError::DtypeMismatch {
            name: name.to_string(),
            found: tensor.dtype(),
            expected: DType::F32,
        })
    }

    /// Reads a safetensors file holding only `F32` and `I32` tensors.
    pub fn load(path: &Path) -> Result<ParamStore, WeightsError> {
        let bytes = fs::read(path).map_err(|source| WeightsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ParamStore::decode(&bytes, path)
    }

    /// Reads a file like [`ParamStore::load`], and also returns the header's metadata
    /// (empty when the file has none).
    pub fn load_with_metadata(
        path: &Path,
    ) -> Result<(ParamStore, BTreeMap<String, String>), WeightsError> {
        let bytes = fs::read(path).map_err(|source| WeightsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ParamStore::decode_with_metadata(&bytes, path)
    }

    /// Writes the store to `path` as safetensors with `{"format": "bnc"}` metadata,
    /// atomically: the bytes go to `.{file name}.tmp-{pid}` in the same directory, are
    /// synced to disk, and the temporary file is renamed over `path`. On failure the
    /// temporary file is removed and `path` is untouched. (Two threads of one process
    /// must not save to the same path at once: they would share the temporary name.)
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        self.save_with_metadata(path, &BTreeMap::new())
    }

    /// Writes the store like [`ParamStore::save`], with the `extra` entries in the header's
    /// metadata next to `{"format": "bnc"}` (which they may not replace).
    pub fn save_with_metadata(
        &self,
        path: &Path,
        extra: &BTreeMap<String, String>,
    ) -> Result<(), WeightsError> {
        let bytes = self.encode(path, extra)?;
        crate::atomic::write_atomically(path, &bytes).map_err(|source| WeightsError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The safetensors bytes of the store; `path` only names the file in errors.
    fn encode(
        &self,
        path: &Path,
        extra: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, WeightsError> {
        if self.contains(METADATA_KEY) {
            return Err(WeightsError::ReservedName {
                path: path.to_path_buf(),
            });
        }
        let mut metadata: HashMap<String, String> = extra.clone().into_iter().collect();
        metadata.insert(FORMAT_KEY.to_string(), FORMAT_VALUE.to_string());
        let views = self
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), LeView(t)));
        safetensors::serialize(views, Some(metadata)).map_err(|source| WeightsError::Encode {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses the bytes of a safetensors file holding only `F32` and `I32` tensors; `path`
    /// only names the file in errors. Never panics, and allocates no more than the bytes
    /// hold: every tensor's extent is checked against the input before it is copied.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<ParamStore, WeightsError> {
        ParamStore::decode_with_metadata(bytes, path).map(|(store, _)| store)
    }

    /// [`ParamStore::decode`], also returning the header's metadata.
    fn decode_with_metadata(
        bytes: &[u8],
        path: &Path,
    ) -> Result<(ParamStore, BTreeMap<String, String>), WeightsError> {
        let malformed = |source| WeightsError::Malformed {
            path: path.to_path_buf(),
            source,
        };
        check_offsets(bytes).map_err(malformed)?;
        let file = SafeTensors::deserialize(bytes).map_err(malformed)?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(malformed)?;
        let metadata = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();

        // Visit tensors in name order so that, of several bad tensors, the same one is
        // always reported.
        let mut names = file.names();
        names.sort_unstable();
        let mut tensors = BTreeMap::new();
        for name in names {
            let view = file.tensor(name).map_err(malformed)?;
            let shape = view.shape().to_vec();
            let words = view
                .data()
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]]);
            let tensor = match view.dtype() {
                Dtype::F32 => Tensor::new(shape, words.map(f32::from_le_bytes).collect()),
                Dtype::I32 => Tensor::new_i32(shape, words.map(i32::from_le_bytes).collect()),
                other => {
                    return Err(WeightsError::UnsupportedDtype {
                        path: path.to_path_buf(),
                        name: name.to_string(),
                        dtype: other.to_string(),
                    });
                }
            };
            // The parser checked that the data is exactly shape × 4 bytes, so this only
            // fires if that guarantee is ever broken.
            let tensor = tensor.ok_or_else(|| malformed(SafeTensorError::TensorInvalidInfo))?;
            tensors.insert(name.to_string(), tensor);
        }
        Ok((ParamStore { tensors }, metadata))
    }
}

impl FromIterator<(String, Tensor)> for ParamStore {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> ParamStore {
        ParamStore {
            tensors: iter.into_iter().collect(),
        }
    }
}

/// A tensor seen through safetensors' [`View`]: little-endian bytes, as the format
/// requires whatever the host's byte order.
struct LeView<'a>(&'a Tensor);

impl View for LeView<'_> {
    fn dtype(&self) -> Dtype {
        match self.0.dtype() {
            DType::F32 => Dtype::F32,
            DType::I32 => Dtype::I32,
        }
    }

    fn shape(&self) -> &[usize] {
        self.0.shape()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = match self.0.data() {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.0.len() * 4
    }
}

/// Refuses data offsets beyond the end of the buffer before the safetensors crate sees
/// them: it adds the last offset to the header size unchecked, which overflows (and
/// panics in debug builds) for a crafted header whose offsets approach `usize::MAX`.
/// Anything this check cannot read is left for the crate to report.
pub(crate) fn check_offsets(bytes: &[u8]) -> Result<(), SafeTensorError> {
    let Some(len_bytes) = bytes.first_chunk::<8>() else {
        return Ok(());
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    let Some(header) = usize::try_from(header_len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return Ok(());
    };
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(header) else {
        return Ok(());
    };
    for (name, entry) in &entries {
        let offsets = entry.get("data_offsets").and_then(|o| o.as_array());
        let beyond = offsets.is_some_and(|o| {
            o.iter()
                .any(|v| v.as_u64().is_some_and(|x| x > bytes.len() as u64))
        });
        if beyond {
            return Err(SafeTensorError::InvalidOffset(name.clone()));
        }
    }
    Ok(())
}

/// Writes `bytes` to a fresh file at `path` and syncs it to disk.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testdir::TestDir;
    use proptest::prelude::*;
    use safetensors::tensor::TensorView;

    fn sample() -> ParamStore {
        let mut store = ParamStore::new();
        // Values that expose any rounding or byte-order slip: subnormals, -0.0, NaN
        // payloads and extremes must come back bit for bit.
        let tricky = vec![
            1.0,
            -0.0,
            f32::MIN_POSITIVE / 3.0,
            f32::MAX,
            f32::from_bits(0x7fc0_1234),
            std::f32::consts::PI,
        ];
        let conv = Tensor::new(vec![6, 1, 1, 1], tricky).expect("shape");
        store.insert("conv1.weight", conv);
        store.insert("bn1.gamma", Tensor::full(&[6], 1.0));
        store.insert("scalar", Tensor::scalar(0.5));
        store.insert("empty", Tensor::zeros(&[0, 3]));
        let ids = Tensor::new_i32(vec![3], vec![i32::MIN, 0, i32::MAX]).expect("shape");
        store.insert("steps", ids);
        store
    }

    fn bits(store: &ParamStore) -> Vec<(String, Vec<usize>, Vec<u32>)> {
        store
            .iter()
            .map(|(name, t)| {
                let bits = match t.data() {
                    TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
                    TensorData::I32(v) => v.iter().map(|&x| x as u32).collect(),
                };
                (name.to_string(), t.shape().to_vec(), bits)
            })
            .collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Save then load gives back every tensor bit for bit, with the bnc metadata.
    #[test]
    fn round_trip_is_bit_exact() {
        let dir = TestDir::new("weights_round_trip");
        let path = dir.path().join("w.safetensors");
        let store = sample();
        store.save(&path).expect("save");
        let loaded = ParamStore::load(&path).expect("load");
        assert_eq!(bits(&loaded), bits(&store));
        assert_eq!(
            loaded.names().collect::<Vec<_>>(),
            ["bn1.gamma", "conv1.weight", "empty", "scalar", "steps"]
        );

        let bytes = fs::read(&path).expect("read");
        let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("valid file");
        let format = metadata.metadata().as_ref().and_then(|m| m.get("format"));
        assert_eq!(format.map(String::as_str), Some("bnc"));

        // Saving over an existing file replaces it.
        let mut smaller = ParamStore::new();
        smaller.insert("only", Tensor::scalar(2.0));
        smaller.save(&path).expect("save again");
        assert_eq!(ParamStore::load(&path).expect("load").len(), 1);
    }

    /// A successful save leaves only the target; a failed one leaves nothing at all.
    #[test]
    fn atomic_save_leaves_no_temporary_file() {
        let dir = TestDir::new("weights_atomic");
        sample()
            .save(&dir.path().join("w.safetensors"))
            .expect("save");
        assert_eq!(entries(dir.path()), ["w.safetensors"]);

        // The target is a directory, so the final rename fails after the write.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).expect("mkdir");
        fs::write(blocked.join("keep"), b"x").expect("write");
        let err = sample()
            .save(&blocked)
            .expect_err("rename onto a directory");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot write {}: ", blocked.display())),
            "{err}"
        );
        assert_eq!(entries(dir.path()), ["blocked", "w.safetensors"]);

        // The directory does not exist, so the temporary file cannot even be created.
        let missing = dir.path().join("no/such/dir/w.safetensors");
        assert!(matches!(
            sample().save(&missing),
            Err(WeightsError::Write { .. })
        ));
        assert_eq!(entries(dir.path()), ["blocked", "w.safetensors"]);
    }

    /// A tensor named like the metadata key is refused rather than written corrupt.
    #[test]
    fn reserved_name_is_refused() {
        let dir = TestDir::new("weights_reserved");
        let path = dir.path().join("w.safetensors");
        let mut store = ParamStore::new();
        store.insert("__metadata__", Tensor::scalar(1.0));
        assert_eq!(
            store.save(&path).expect_err("reserved").to_string(),
            format!(
                "cannot save {}: the tensor name '__metadata__' is reserved by safetensors",
                path.display()
            )
        );
        assert!(entries(dir.path()).is_empty());
    }

    /// Load errors name the file: missing, garbage, and an unsupported dtype (which also
    /// names the tensor).
    #[test]
    fn load_errors() {
        let dir = TestDir::new("weights_load_errors");
        let missing = dir.path().join("missing.safetensors");
        let err = ParamStore::load(&missing).expect_err("missing").to_string();
        assert!(
            err.starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );

        let garbage = dir.path().join("garbage.safetensors");
        fs::write(&garbage, b"this is not a safetensors file").expect("write");
        let err = ParamStore::load(&garbage).expect_err("garbage").to_string();
        assert!(
            err.starts_with(&format!(
                "{}: malformed safetensors file: ",
                garbage.display()
            )),
            "{err}"
        );

        let f64_path = dir.path().join("f64.safetensors");
        let data = [0u8; 16];
        let ok = Tensor::scalar(1.0);
        let bad = TensorView::new(Dtype::F64, vec![2], &data).expect("view");
        let ok_bytes = ok.as_f32().expect("f32")[0].to_le_bytes();
        let ok_view = TensorView::new(Dtype::F32, vec![], &ok_bytes).expect("view");
        let bytes = safetensors::serialize([("a.ok", ok_view), ("b.running_var", bad)], None)
            .expect("serialize");
        fs::write(&f64_path, bytes).expect("write");
        assert_eq!(
            ParamStore::load(&f64_path).expect_err("f64").to_string(),
            format!(
                "{}: tensor 'b.running_var' has dtype F64, only F32 and I32 are supported",
                f64_path.display()
            )
        );
    }

    /// `expect` and `expect_f32` report the missing name, the wrong shape and the wrong
    /// dtype exactly.
    #[test]
    fn expect_messages() {
        let mut store = ParamStore::new();
        store.insert("conv1.weight", Tensor::zeros(&[6, 1, 5, 5]));
        store.insert(
            "labels",
            Tensor::new_i32(vec![2], vec![0, 1]).expect("shape"),
        );

        assert_eq!(
            store
                .expect("conv1.weight", &[6, 1, 5, 5])
                .expect("ok")
                .len(),
            150
        );
        assert_eq!(
            store
                .expect("conv1.bias", &[6])
                .expect_err("missing")
                .to_string(),
            "missing tensor 'conv1.bias'"
        );
        assert_eq!(
            store
                .expect("conv1.weight", &[6, 1, 3, 3])
                .expect_err("shape")
                .to_string(),
            "tensor 'conv1.weight' has shape [6,1,5,5], expected [6,1,3,3]"
        );
        assert_eq!(
            store
                .expect_f32("conv1.weight", &[6, 1, 5, 5])
                .expect("ok")
                .len(),
            150
        );
        assert_eq!(
            store
                .expect_f32("labels", &[2])
                .expect_err("dtype")
                .to_string(),
            "tensor 'labels' has dtype i32, expected f32"
        );
        assert_eq!(
            store.expect("labels", &[]).expect_err("shape").to_string(),
            "tensor 'labels' has shape [2], expected []"
        );
    }

    /// A header whose offsets add up to nearly 2^64 is refused, not overflowed.
    #[test]
    fn refuses_offsets_past_the_end() {
        // Fifteen 2^60-byte tensors and one 2^60 - 1 byte tensor end at usize::MAX.
        let mut header = String::from("{");
        for k in 0u64..16 {
            let start = k << 60;
            let end = if k == 15 { u64::MAX } else { (k + 1) << 60 };
            let len = end - start;
            if k > 0 {
                header.push(',');
            }
            header.push_str(&format!(
                "\"t{k:02}\":{{\"dtype\":\"U8\",\"shape\":[{len}],\"data_offsets\":[{start},{end}]}}"
            ));
        }
        header.push('}');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let err = ParamStore::decode(&bytes, Path::new("huge.safetensors")).expect_err("huge");
        assert!(
            err.to_string()
                .starts_with("huge.safetensors: malformed safetensors file: "),
            "{err}"
        );
    }

    proptest! {
        /// Arbitrary bytes load as Ok or Err, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ParamStore::decode(&bytes, Path::new("fuzz"));
        }

        /// A valid file with arbitrary bytes flipped loads as Ok or Err, never a panic.
        #[test]
        fn corrupted_files_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = sample().encode(Path::new("fuzz"), &BTreeMap::new()).expect("encode");
            for (index, x) in flips {
                let i = index.index(bytes.len());
                bytes[i] ^= x;
            }
            let _ = ParamStore::decode(&bytes, Path::new("fuzz"));
        }
    }
}
