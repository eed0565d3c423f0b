//! Renaming the tensors of a safetensors file with a name map, both ways: a PyTorch
//! `state_dict` (`0.weight`, `1.running_var`, ...) to bnc's names (`conv1.weight`,
//! `bn1.running_var`) and back, so weights move between PyTorch and bnc.
//!
//! A map is text, one `FROM TO` pair a line (`#` starts a comment). A tensor named `FROM`
//! becomes `TO`, and a tensor named `FROM.rest` becomes `TO.rest`; the longest matching
//! `FROM` wins, so a line may name a whole module (`1 bn1`) or one tensor. Read backwards
//! (`TO FROM`) the same map converts the other way.
//!
//! The layouts of PyTorch and bnc are the same (conv `[out, in/groups, kh, kw]`, linear
//! `[out, in]`, BatchNorm vectors `[C]`), so data is copied byte for byte, in its own
//! dtype. The running statistics are copied unchanged too: both frameworks normalize
//! with `running_var` as stored, so converting it would change the logits; what differs
//! is only how training *updates* it (see `docs/BATCHNORM.md`). PyTorch's
//! `num_batches_tracked` counters have no bnc counterpart: converting to bnc drops them,
//! and converting to PyTorch adds a zero for every BatchNorm module (every tensor named
//! `*.running_var`) that lacks one, so that a strict `load_state_dict` accepts the file.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, View};

use crate::weights::{WeightsError, check_offsets};

/// PyTorch's per-module counter of training batches, which bnc does not keep.
pub const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// Everything that can go wrong reading a map or renaming a file's tensors.
#[derive(Debug, thiserror::Error)]
pub enum RenameError {
    /// A map line is not two names.
    #[error("{file}:{line}: expected `FROM TO`, found `{text}`")]
    MapSyntax {
        /// The map file.
        file: String,
        /// The line, from 1.
        line: usize,
        /// The line's text.
        text: String,
    },
    /// A name appears twice on one side of the map.
    #[error("{file}:{line}: `{name}` is already mapped on line {first}")]
    MapDuplicate {
        /// The map file.
        file: String,
        /// The line, from 1.
        line: usize,
        /// The name.
        name: String,
        /// The line that mapped it first.
        first: usize,
    },
    /// The map has no line.
    #[error("{file}: the map has no `FROM TO` line")]
    MapEmpty {
        /// The map file.
        file: String,
    },
    /// A tensor matches no line of the map.
    #[error("tensor `{name}` matches no line of the map")]
    Unmapped {
        /// The tensor's name.
        name: String,
    },
    /// Two tensors would get one name.
    #[error("tensors `{first}` and `{second}` would both be named `{target}`")]
    Collision {
        /// One tensor.
        first: String,
        /// The other.
        second: String,
        /// The name both map to.
        target: String,
    },
    /// A tensor bnc cannot use has a dtype other than F32.
    #[error("tensor `{name}` has dtype {dtype}; bnc reads F32 weights (save them as float32)")]
    Dtype {
        /// The tensor's name.
        name: String,
        /// The dtype as safetensors spells it.
        dtype: String,
    },
    /// The input could not be read or the output written.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// Which way to rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the map's left names (PyTorch) to its right names (bnc).
    ToBnc,
    /// From the right names (bnc) to the left names (PyTorch).
    ToTorch,
}

/// A parsed name map: `(from, to)` pairs in PyTorch-to-bnc order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameMap {
    pairs: Vec<(String, String)>,
}

impl NameMap {
    /// Parses map text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<NameMap, RenameError> {
        let mut pairs = Vec::new();
        let mut seen: [HashMap<String, usize>; 2] = [HashMap::new(), HashMap::new()];
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("");
            let words: Vec<&str> = content.split_whitespace().collect();
            match words[..] {
                [] => continue,
                [from, to] => {
                    for (side, name) in [from, to].into_iter().enumerate() {
                        if let Some(&first) = seen[side].get(name) {
                            return Err(RenameError::MapDuplicate {
                                file: file.to_string(),
                                line,
                                name: name.to_string(),
                                first,
                            });
                        }
                        seen[side].insert(name.to_string(), line);
                    }
                    pairs.push((from.to_string(), to.to_string()));
                }
                _ => {
                    return Err(RenameError::MapSyntax {
                        file: file.to_string(),
                        line,
                        text: raw.trim().to_string(),
                    });
                }
            }
        }
        if pairs.is_empty() {
            return Err(RenameError::MapEmpty {
                file: file.to_string(),
            });
        }
        Ok(NameMap { pairs })
    }

    /// The new name of tensor `name` going in `direction`, if a line matches it.
    pub fn rename(&self, name: &str, direction: Direction) -> Option<String> {
        let mut best: Option<(&str, &str)> = None;
        for (from, to) in &self.pairs {
            let (from, to) = match direction {
                Direction::ToBnc => (from.as_str(), to.as_str()),
                Direction::ToTorch => (to.as_str(), from.as_str()),
            };
            let matches = name == from
                || name
                    .strip_prefix(from)
                    .is_some_and(|rest| rest.starts_with('.'));
            if matches && best.is_none_or(|(b, _)| from.len() > b.len()) {
                best = Some((from, to));
            }
        }
        best.map(|(from, to)| format!("{to}{}", &name[from.len()..]))
    }
}

/// A tensor of any dtype, as raw little-endian bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTensor {
    /// The element type.
    pub dtype: Dtype,
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The elements, little-endian.
    pub data: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The tensors of a safetensors file by name, whatever their dtypes, with its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawStore {
    /// The tensors, by name.
    pub tensors: BTreeMap<String, RawTensor>,
    /// The `__metadata__` entries.
    pub metadata: HashMap<String, String>,
}

impl RawStore {
    /// Reads a safetensors file; never panics on any input.
    pub fn load(path: &Path) -> Result<RawStore, WeightsError> {
        let bytes = fs::read(path).map_err(|source| WeightsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let malformed = |source| WeightsError::Malformed {
            path: path.to_path_buf(),
            source,
        };
        check_offsets(&bytes).map_err(malformed)?;
        let file = SafeTensors::deserialize(&bytes).map_err(malformed)?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(malformed)?;
        let mut store = RawStore {
            metadata: meta.metadata().clone().unwrap_or_default(),
            ..RawStore::default()
        };
        for (name, view) in file.tensors() {
            let t = RawTensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            store.tensors.insert(name, t);
        }
        Ok(store)
    }

    /// Writes the store atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let encode = |source| WeightsError::Encode {
            path: path.to_path_buf(),
            source,
        };
        let metadata = (!self.metadata.is_empty()).then(|| self.metadata.clone());
        let bytes = safetensors::serialize(&self.tensors, metadata).map_err(encode)?;
        crate::atomic::write_atomically(path, &bytes).map_err(|source| WeightsError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// What a rename did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Tensors renamed.
    pub renamed: usize,
    /// Tensors left out (`num_batches_tracked`, going to bnc).
    pub dropped: Vec<String>,
    /// Tensors added (`num_batches_tracked` = 0, going to PyTorch).
    pub added: Vec<String>,
}

/// Renames every tensor of `input` with `map` in `direction` (see the module docs).
pub fn rename(
    input: &RawStore,
    map: &NameMap,
    direction: Direction,
) -> Result<(RawStore, Report), RenameError> {
    let mut out = RawStore::default();
    let mut report = Report::default();
    let mut sources: HashMap<String, &str> = HashMap::new();
    for (name, t) in &input.tensors {
        let counter = name.rsplit('.').next() == Some(NUM_BATCHES_TRACKED);
        if counter && direction == Direction::ToBnc {
            report.dropped.push(name.clone());
            continue;
        }
        let target = map
            .rename(name, direction)
            .ok_or_else(|| RenameError::Unmapped { name: name.clone() })?;
        if direction == Direction::ToBnc && t.dtype != Dtype::F32 {
            return Err(RenameError::Dtype {
                name: name.clone(),
                dtype: t.dtype.to_string(),
            });
        }
        if let Some(first) = sources.insert(target.clone(), name) {
            return Err(RenameError::Collision {
                first: first.to_string(),
                second: name.clone(),
                target,
            });
        }
        out.tensors.insert(target, t.clone());
        report.renamed += 1;
    }
    match direction {
        Direction::ToBnc => {
            out.metadata.insert("format".into(), "bnc".into());
        }
        Direction::ToTorch => {
            // What `safetensors.torch.save_file` writes.
            out.metadata.insert("format".into(), "pt".into());
            let modules: Vec<String> = out
                .tensors
                .keys()
                .filter_map(|n| n.strip_suffix(".running_var"))
                .map(str::to_string)
                .collect();
            for module in modules {
                let counter = format!("{module}.{NUM_BATCHES_TRACKED}");
                if !out.tensors.contains_key(&counter) {
                    let zero = RawTensor {
                        dtype: Dtype::I64,
                        shape: Vec::new(),
                        data: 0i64.to_le_bytes().to_vec(),
                    };
                    out.tensors.insert(counter.clone(), zero);
                    report.added.push(counter);
                }
            }
        }
    }
    Ok((out, report))
}

/// Reads `input`, renames its tensors and writes `output` atomically.
pub fn rename_file(
    input: &Path,
    output: &Path,
    map: &NameMap,
    direction: Direction,
) -> Result<Report, RenameError> {
    let store = RawStore::load(input)?;
    let (renamed, report) = rename(&store, map, direction)?;
    renamed.save(output)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testdir::TestDir;

    const D2L: &str = "# d2l LeNet-BN\n0 conv1\n1 bn1  # the first BatchNorm\n\n4 conv2\n";

    fn f32_tensor(shape: &[usize]) -> RawTensor {
        let n: usize = shape.iter().product();
        RawTensor {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        }
    }

    #[test]
    fn module_prefixes_and_whole_names_map_both_ways() {
        let map = NameMap::parse(D2L, "d2l.map").expect("parses");
        assert_eq!(
            map.rename("0.weight", Direction::ToBnc).as_deref(),
            Some("conv1.weight")
        );
        assert_eq!(
            map.rename("1.running_var", Direction::ToBnc).as_deref(),
            Some("bn1.running_var")
        );
        assert_eq!(map.rename("1", Direction::ToBnc).as_deref(), Some("bn1"));
        assert_eq!(
            map.rename("10.weight", Direction::ToBnc),
            None,
            "10 is not 1"
        );
        assert_eq!(
            map.rename("bn1.bias", Direction::ToTorch).as_deref(),
            Some("1.bias")
        );
        // The longest prefix wins.
        let map = NameMap::parse("a x\na.b y\n", "m").expect("parses");
        assert_eq!(
            map.rename("a.b.c", Direction::ToBnc).as_deref(),
            Some("y.c")
        );
        assert_eq!(map.rename("a.c", Direction::ToBnc).as_deref(), Some("x.c"));
    }

    #[test]
    fn bad_maps_name_the_line() {
        let err = NameMap::parse("0 conv1\n1 bn1 extra\n", "m.map").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.map:2: expected `FROM TO`, found `1 bn1 extra`"
        );
        let err = NameMap::parse("0 conv1\n1 conv1\n", "m.map").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.map:2: `conv1` is already mapped on line 1"
        );
        let err = NameMap::parse("# nothing\n", "m.map").unwrap_err();
        assert_eq!(err.to_string(), "m.map: the map has no `FROM TO` line");
    }

    /// To bnc drops the counters; back to PyTorch restores them (as zero) and every other
    /// tensor comes back byte for byte under its old name.
    #[test]
    fn a_state_dict_round_trips_through_bnc_names() {
        let map = NameMap::parse(D2L, "d2l.map").expect("parses");
        let mut torch = RawStore::default();
        for (name, shape) in [
            ("0.weight", &[6, 1, 5, 5][..]),
            ("0.bias", &[6]),
            ("1.weight", &[6]),
            ("1.bias", &[6]),
            ("1.running_mean", &[6]),
            ("1.running_var", &[6]),
        ] {
            torch.tensors.insert(name.into(), f32_tensor(shape));
        }
        let zero = RawTensor {
            dtype: Dtype::I64,
            shape: vec![],
            data: vec![0; 8],
        };
        torch.tensors.insert("1.num_batches_tracked".into(), zero);
        let (bnc, report) = rename(&torch, &map, Direction::ToBnc).expect("renames");
        assert_eq!(report.renamed, 6);
        assert_eq!(report.dropped, ["1.num_batches_tracked"]);
        let names: Vec<&str> = bnc.tensors.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var",
                "bn1.weight",
                "conv1.bias",
                "conv1.weight"
            ]
        );
        let (back, report) = rename(&bnc, &map, Direction::ToTorch).expect("renames");
        assert_eq!(report.added, ["1.num_batches_tracked"]);
        assert_eq!(back.tensors, torch.tensors);

        let dir = TestDir::new("rename_round_trip");
        let path = dir.path().join("w.safetensors");
        back.save(&path).expect("save");
        assert_eq!(RawStore::load(&path).expect("load"), back);
    }

    #[test]
    fn unmapped_colliding_and_non_f32_tensors_are_refused() {
        let map = NameMap::parse("0 conv1\n0.weight conv1.bias\n", "m").expect("parses");
        let mut store = RawStore::default();
        store.tensors.insert("7.weight".into(), f32_tensor(&[2]));
        let err = rename(&store, &map, Direction::ToBnc).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `7.weight` matches no line of the map"
        );

        let mut store = RawStore::default();
        store.tensors.insert("0.bias".into(), f32_tensor(&[2]));
        store.tensors.insert("0.weight".into(), f32_tensor(&[2]));
        let err = rename(&store, &map, Direction::ToBnc).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensors `0.bias` and `0.weight` would both be named `conv1.bias`"
        );

        let mut store = RawStore::default();
        let mut half = f32_tensor(&[2]);
        half.dtype = Dtype::F16;
        store.tensors.insert("0.weight".into(), half);
        let err = rename(&store, &map, Direction::ToBnc).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("tensor `0.weight` has dtype F16"),
            "{err}"
        );
    }
}
