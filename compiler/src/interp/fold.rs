//! The ops that `fold-bn` introduces: `scale_shift` on activations and the
//! parameter-only `bn_scale`, `bn_shift`, `channel_scale` and `channel_affine`. Each is
//! computed in f64 from its f32 operands and rounded once.

use crate::Tensor;

fn f32s(t: &Tensor) -> &[f32] {
    t.as_f32().unwrap_or(&[])
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::new(shape.to_vec(), data).unwrap_or_else(|| Tensor::zeros(&[0]))
}

/// `x·s[c] + t[c]` with `c` the index along axis 1 (rank 2 or 4).
pub fn scale_shift(x: &Tensor, s: &Tensor, t: &Tensor) -> Tensor {
    let shape = x.shape();
    let c = shape.get(1).copied().unwrap_or(1).max(1);
    let inner: usize = shape.iter().skip(2).product();
    let (s, t) = (f32s(s), f32s(t));
    let data = f32s(x)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / inner.max(1)) % c;
            (f64::from(v) * f64::from(s[ch]) + f64::from(t[ch])) as f32
        })
        .collect();
    tensor(shape, data)
}

/// `γ/√(var+ε)` per channel.
pub fn bn_scale(gamma: &Tensor, var: &Tensor, eps: f64) -> Tensor {
    let data = f32s(gamma)
        .iter()
        .zip(f32s(var))
        .map(|(&g, &v)| (f64::from(g) / (f64::from(v) + eps).sqrt()) as f32)
        .collect();
    tensor(gamma.shape(), data)
}

/// `β − mean·γ/√(var+ε)` per channel.
pub fn bn_shift(gamma: &Tensor, beta: &Tensor, mean: &Tensor, var: &Tensor, eps: f64) -> Tensor {
    let (g, b, m, v) = (f32s(gamma), f32s(beta), f32s(mean), f32s(var));
    let data = (0..g.len())
        .map(|c| {
            let s = f64::from(g[c]) / (f64::from(v[c]) + eps).sqrt();
            (f64::from(b[c]) - f64::from(m[c]) * s) as f32
        })
        .collect();
    tensor(gamma.shape(), data)
}

/// `w[o, ...]·s[o]` along axis 0.
pub fn channel_scale(w: &Tensor, s: &Tensor) -> Tensor {
    let s = f32s(s);
    let per = w.len() / s.len().max(1);
    let data = f32s(w)
        .iter()
        .enumerate()
        .map(|(i, &v)| (f64::from(v) * f64::from(s[i / per.max(1)])) as f32)
        .collect();
    tensor(w.shape(), data)
}

/// `b·s + t` per channel.
pub fn channel_affine(b: &Tensor, s: &Tensor, t: &Tensor) -> Tensor {
    let (bv, s, t) = (f32s(b), f32s(s), f32s(t));
    let data = (0..bv.len())
        .map(|c| (f64::from(bv[c]) * f64::from(s[c]) + f64::from(t[c])) as f32)
        .collect();
    tensor(b.shape(), data)
}
