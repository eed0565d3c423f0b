//! The interpreter's working values: a shape and `f64` elements. Tensors (`f32` or `i32`
//! storage) are widened exactly on the way in; a normal run rounds every op result to
//! its storage type once, so that it computes exactly what `f32` storage with `f64`
//! arithmetic would. The exact mode used by the finite-difference tests never rounds.

use crate::{DType, Tensor, TensorData};

/// A dense row-major array of `f64` with the element type it is stored as.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Array {
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<f64>,
    /// The storage type (`i32` for labels).
    pub dtype: DType,
}

impl Array {
    /// An `f32`-typed array; the caller sizes `data` as the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Array {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Array {
            shape,
            data,
            dtype: DType::F32,
        }
    }

    /// An `f32`-typed array of zeros.
    pub fn zeros(shape: &[usize]) -> Array {
        Array::new(shape.to_vec(), vec![0.0; shape.iter().product()])
    }

    /// The exact widening of a tensor.
    pub fn from_tensor(t: &Tensor) -> Array {
        let data = match t.data() {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        };
        Array {
            shape: t.shape().to_vec(),
            data,
            dtype: t.dtype(),
        }
    }

    /// The tensor this array is stored as: every element rounded to `f32` (or
    /// truncated to `i32` for labels, which are whole numbers).
    pub fn to_tensor(&self) -> Tensor {
        let shape = self.shape.clone();
        let t = match self.dtype {
            DType::F32 => Tensor::new(shape, self.data.iter().map(|&v| v as f32).collect()),
            DType::I32 => Tensor::new_i32(shape, self.data.iter().map(|&v| v as i32).collect()),
        };
        // `data` always holds the product of `shape` elements.
        t.unwrap_or_else(|| Tensor::zeros(&self.shape))
    }

    /// Rounds every element to `f32` precision, as storing it would.
    pub fn round_f32(&mut self) {
        if self.dtype == DType::F32 {
            for v in &mut self.data {
                *v = f64::from(*v as f32);
            }
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The four dimensions of a rank-4 array.
    pub fn dims4(&self) -> [usize; 4] {
        let s = &self.shape;
        [s[0], s[1], s[2], s[3]]
    }

    /// The same elements with another shape of as many elements.
    pub fn reshaped(&self, shape: Vec<usize>) -> Array {
        Array {
            shape,
            data: self.data.clone(),
            dtype: self.dtype,
        }
    }
}
