//! Dense, contiguous, row-major tensors: the values the reference interpreter computes with
//! and the runtime stores weights in. Storage is `f32` (or `i32` for class labels); the
//! interpreter accumulates in `f64` where it reduces.

use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float: activations and parameters.
    F32,
    /// 32-bit signed integer: class labels.
    I32,
}

impl DType {
    /// The text-format spelling (`f32`, `i32`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
        }
    }

    /// Parses the text-format spelling.
    pub fn from_name(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "i32" => Some(DType::I32),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The elements of a tensor, in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `i32` elements.
    I32(Vec<i32>),
}

/// A dense row-major tensor with a concrete shape. Its elements are always one contiguous
/// buffer of exactly the product of the shape (there are no strided views), and that product
/// never overflows `usize`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// The number of elements of `shape`, or `None` when the product overflows `usize` (a
/// shape such as `[2^60, 784]` must not wrap around to a small count).
pub fn checked_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl Tensor {
    /// An `f32` tensor; `None` when `data.len()` is not the product of `shape` (or the
    /// product overflows).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Tensor> {
        (checked_len(&shape) == Some(data.len())).then_some(Tensor {
            shape,
            data: TensorData::F32(data),
        })
    }

    /// An `i32` tensor; `None` when `data.len()` is not the product of `shape` (or the
    /// product overflows).
    pub fn new_i32(shape: Vec<usize>, data: Vec<i32>) -> Option<Tensor> {
        (checked_len(&shape) == Some(data.len())).then_some(Tensor {
            shape,
            data: TensorData::I32(data),
        })
    }

    /// An `f32` tensor of zeros. Panics, as `Vec` does on capacity overflow, when the
    /// product of `shape` overflows `usize`.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// An `f32` tensor with every element `value`. Panics, as `Vec` does on capacity
    /// overflow, when the product of `shape` overflows `usize`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        let n = checked_len(shape).expect("tensor shape overflows usize");
        Tensor {
            shape: shape.to_vec(),
            data: TensorData::F32(vec![value; n]),
        }
    }

    /// An `f32` scalar (shape `[]`).
    pub fn scalar(value: f32) -> Tensor {
        Tensor {
            shape: Vec::new(),
            data: TensorData::F32(vec![value]),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::I32(_) => DType::I32,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The `f32` elements, or `None` for an `i32` tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I32(_) => None,
        }
    }

    /// The `f32` elements, mutably, or `None` for an `i32` tensor.
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I32(_) => None,
        }
    }

    /// The `i32` elements, or `None` for an `f32` tensor.
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            TensorData::I32(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    /// Consumes the tensor and returns its shape and `f32` elements (`None` for `i32`).
    pub fn into_f32(self) -> Option<(Vec<usize>, Vec<f32>)> {
        match self.data {
            TensorData::F32(v) => Some((self.shape, v)),
            TensorData::I32(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_the_element_count() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_some());
        assert!(Tensor::new(vec![2, 3], vec![0.0; 5]).is_none());
        assert_eq!(Tensor::scalar(1.5).len(), 1);
        assert_eq!(
            Tensor::new_i32(vec![2], vec![1, 2]).unwrap().dtype(),
            DType::I32
        );
    }

    /// A shape whose product wraps around `usize` (2^60 · 784 = 49 · 2^64) is refused, so an
    /// empty buffer can never claim 2^60 images.
    #[test]
    fn new_refuses_overflowing_shapes() {
        assert!(Tensor::new(vec![1 << 60, 1, 28, 28], vec![]).is_none());
        assert!(Tensor::new_i32(vec![1 << 32, 1 << 32], vec![]).is_none());
        assert_eq!(checked_len(&[1 << 60, 784]), None);
        assert_eq!(checked_len(&[1 << 60, 784, 0]), None);
        assert_eq!(checked_len(&[]), Some(1));
        assert_eq!(checked_len(&[3, 0, 5]), Some(0));
    }
}
