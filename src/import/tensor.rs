//! Reading ONNX tensors and attributes: initializer data as `f32` or integer vectors (size
//! checked against the dimensions before anything is allocated), and typed attribute
//! look-ups that refuse attributes an op does not know.

use super::onnx::{AttrValue, Attribute, NodeProto, TensorProto, data_type};
use super::{ImportError, NodeRef};

/// The largest initializer bnc imports, in elements (the same bound as the IR's shapes).
const MAX_ELEMENTS: u64 = 1 << 31;

/// The checked dimensions and element count of a tensor.
fn shape(t: &TensorProto<'_>) -> Result<(Vec<usize>, usize), ImportError> {
    let bad = || ImportError::TensorDims {
        tensor: t.name.clone(),
        dims: t.dims.clone(),
    };
    let mut count: u64 = 1;
    let mut dims = Vec::with_capacity(t.dims.len().min(8));
    for &d in &t.dims {
        let d = u64::try_from(d).map_err(|_| bad())?;
        count = count
            .checked_mul(d)
            .filter(|&c| c <= MAX_ELEMENTS)
            .ok_or_else(bad)?;
        dims.push(usize::try_from(d).map_err(|_| bad())?);
    }
    Ok((dims, usize::try_from(count).map_err(|_| bad())?))
}

/// Refuses external data, then returns `raw_data` checked to hold `count` elements of
/// `size` bytes, if the tensor has it.
fn raw<'a>(
    t: &TensorProto<'a>,
    count: usize,
    size: usize,
) -> Result<Option<&'a [u8]>, ImportError> {
    if t.external {
        return Err(ImportError::ExternalData {
            tensor: t.name.clone(),
        });
    }
    match t.raw_data {
        Some(b) if b.len() as u64 != count as u64 * size as u64 => Err(ImportError::TensorData {
            tensor: t.name.clone(),
            expected: count,
            found: format!("{} bytes of raw data", b.len()),
        }),
        other => Ok(other),
    }
}

fn check_len(t: &TensorProto<'_>, count: usize, len: usize) -> Result<(), ImportError> {
    if len == count {
        Ok(())
    } else {
        Err(ImportError::TensorData {
            tensor: t.name.clone(),
            expected: count,
            found: format!("{len} elements"),
        })
    }
}

/// A `FLOAT` tensor's shape and elements.
pub fn floats(t: &TensorProto<'_>) -> Result<(Vec<usize>, Vec<f32>), ImportError> {
    if t.data_type != data_type::FLOAT {
        return Err(ImportError::TensorType {
            tensor: t.name.clone(),
            data_type: data_type::name(t.data_type),
            expected: "FLOAT",
        });
    }
    let (dims, count) = shape(t)?;
    let data = match raw(t, count, 4)? {
        Some(b) => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        None => {
            check_len(t, count, t.float_data.len())?;
            t.float_data.clone()
        }
    };
    Ok((dims, data))
}

/// An `INT64` or `INT32` tensor's shape and elements.
pub fn ints(t: &TensorProto<'_>) -> Result<(Vec<usize>, Vec<i64>), ImportError> {
    let (dims, count) = shape(t)?;
    let data = match t.data_type {
        data_type::INT64 => match raw(t, count, 8)? {
            Some(b) => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            None => {
                check_len(t, count, t.int64_data.len())?;
                t.int64_data.clone()
            }
        },
        data_type::INT32 => match raw(t, count, 4)? {
            Some(b) => b
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            None => {
                check_len(t, count, t.int32_data.len())?;
                t.int32_data.clone()
            }
        },
        other => {
            return Err(ImportError::TensorType {
                tensor: t.name.clone(),
                data_type: data_type::name(other),
                expected: "INT64",
            });
        }
    };
    Ok((dims, data))
}

/// The attributes of one node, checked against the names its op defines.
pub struct Attrs<'n, 'a> {
    node: &'n NodeRef,
    attrs: &'n [Attribute<'a>],
}

impl<'n, 'a> Attrs<'n, 'a> {
    /// The attributes of `proto`; an attribute not in `known` is an error naming it.
    pub fn new(
        node: &'n NodeRef,
        proto: &'n NodeProto<'a>,
        known: &[&str],
    ) -> Result<Attrs<'n, 'a>, ImportError> {
        if let Some(a) = proto
            .attributes
            .iter()
            .find(|a| !known.contains(&a.name.as_str()))
        {
            return Err(ImportError::UnknownAttribute {
                node: node.clone(),
                attribute: a.name.clone(),
            });
        }
        Ok(Attrs {
            node,
            attrs: &proto.attributes,
        })
    }

    fn get(&self, name: &str) -> Option<&'n AttrValue<'a>> {
        self.attrs.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    fn wrong_type(&self, name: &str, expected: &'static str) -> ImportError {
        ImportError::AttributeType {
            node: self.node.clone(),
            attribute: name.to_string(),
            expected,
        }
    }

    /// An error for an attribute value bnc cannot import.
    pub fn unsupported(&self, name: &str, supported: &'static str) -> ImportError {
        ImportError::UnsupportedAttribute {
            node: self.node.clone(),
            attribute: name.to_string(),
            value: self
                .get(name)
                .map_or_else(|| "(absent)".to_string(), AttrValue::describe),
            supported,
        }
    }

    /// An `INT` attribute, or `default` when absent.
    pub fn int(&self, name: &str, default: i64) -> Result<i64, ImportError> {
        match self.get(name) {
            None => Ok(default),
            Some(AttrValue::Int(i)) => Ok(*i),
            Some(_) => Err(self.wrong_type(name, "INT")),
        }
    }

    /// A `FLOAT` attribute, or `default` when absent.
    pub fn float(&self, name: &str, default: f32) -> Result<f32, ImportError> {
        match self.get(name) {
            None => Ok(default),
            Some(AttrValue::Float(x)) => Ok(*x),
            Some(_) => Err(self.wrong_type(name, "FLOAT")),
        }
    }

    /// An `INTS` attribute, if present.
    pub fn ints(&self, name: &str) -> Result<Option<&'n [i64]>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(AttrValue::Ints(v)) => Ok(Some(v)),
            Some(_) => Err(self.wrong_type(name, "INTS")),
        }
    }

    /// A `STRING` attribute, or `default` when absent.
    pub fn string(&self, name: &str, default: &str) -> Result<String, ImportError> {
        match self.get(name) {
            None => Ok(default.to_string()),
            Some(AttrValue::String(s)) => Ok(String::from_utf8_lossy(s).into_owned()),
            Some(_) => Err(self.wrong_type(name, "STRING")),
        }
    }

    /// A `TENSOR` attribute, if present.
    pub fn tensor(&self, name: &str) -> Result<Option<&'n TensorProto<'a>>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(AttrValue::Tensor(t)) => Ok(Some(t)),
            Some(_) => Err(self.wrong_type(name, "TENSOR")),
        }
    }

    /// A two-element `INTS` attribute of positive values (`strides`, `kernel_shape`), or
    /// `default` when absent.
    pub fn pair(&self, name: &str, default: Option<[usize; 2]>) -> Result<[usize; 2], ImportError> {
        match (self.ints(name)?, default) {
            (Some(&[a, b]), _) if a > 0 && b > 0 => Ok([a as usize, b as usize]),
            (Some(_), _) => Err(self.unsupported(name, "two positive integers")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(ImportError::MissingAttribute {
                node: self.node.clone(),
                attribute: name.to_string(),
            }),
        }
    }

    /// `pads` as bnc's symmetric `[h, w]` padding: ONNX writes `[top, left, bottom,
    /// right]`, and bnc pads both sides of an axis alike.
    pub fn pads(&self) -> Result<[usize; 2], ImportError> {
        match self.ints("pads")? {
            None => Ok([0, 0]),
            Some(&[t, l, b, r]) if t == b && l == r && t >= 0 && l >= 0 => {
                Ok([t as usize, l as usize])
            }
            Some(_) => Err(self.unsupported(
                "pads",
                "four non-negative integers, equal at both ends of each axis",
            )),
        }
    }

    /// Checks that `dilations` is absent or all ones.
    pub fn no_dilation(&self) -> Result<(), ImportError> {
        match self.ints("dilations")? {
            Some(d) if d.iter().any(|&x| x != 1) => {
                Err(self.unsupported("dilations", "all ones (no dilation)"))
            }
            _ => Ok(()),
        }
    }

    /// Checks that `auto_pad` is absent, `NOTSET` or `VALID` (explicit padding only);
    /// `VALID` also requires `pads` to be absent or zero.
    pub fn explicit_padding(&self) -> Result<(), ImportError> {
        match self.string("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" => Ok(()),
            "VALID" if self.pads()? == [0, 0] => Ok(()),
            _ => Err(self.unsupported("auto_pad", "NOTSET or VALID")),
        }
    }

    /// Checks that an `INT` attribute has the one value bnc supports.
    pub fn require(
        &self,
        name: &str,
        default: i64,
        want: i64,
        supported: &'static str,
    ) -> Result<(), ImportError> {
        if self.int(name, default)? == want {
            Ok(())
        } else {
            Err(self.unsupported(name, supported))
        }
    }
}
