//! The ops that `fold-bn` introduces: `scale_shift` on activations and the
//! parameter-only `bn_scale`, `bn_shift`, `channel_scale` and `channel_affine`, in `f64`.

use super::array::Array;

/// `x·s[c] + t[c]` with `c` the index along axis 1 (rank 2 or 4).
pub(super) fn scale_shift(x: &Array, s: &Array, t: &Array) -> Array {
    let c = x.shape.get(1).copied().unwrap_or(1).max(1);
    let inner: usize = x.shape.iter().skip(2).product();
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / inner.max(1)) % c;
            v * s.data[ch] + t.data[ch]
        })
        .collect();
    Array::new(x.shape.clone(), data)
}

/// `γ/√(var+ε)` per channel.
pub(super) fn bn_scale(gamma: &Array, var: &Array, eps: f64) -> Array {
    let data = gamma
        .data
        .iter()
        .zip(&var.data)
        .map(|(&g, &v)| g / (v + eps).sqrt())
        .collect();
    Array::new(gamma.shape.clone(), data)
}

/// `β − mean·γ/√(var+ε)` per channel.
pub(super) fn bn_shift(gamma: &Array, beta: &Array, mean: &Array, var: &Array, eps: f64) -> Array {
    let data = (0..gamma.len())
        .map(|c| beta.data[c] - mean.data[c] * (gamma.data[c] / (var.data[c] + eps).sqrt()))
        .collect();
    Array::new(gamma.shape.clone(), data)
}

/// `w[o, ...]·s[o]` along axis 0.
pub(super) fn channel_scale(w: &Array, s: &Array) -> Array {
    let per = (w.len() / s.len().max(1)).max(1);
    let data = w
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| v * s.data[i / per])
        .collect();
    Array::new(w.shape.clone(), data)
}

/// `b·s + t` per channel.
pub(super) fn channel_affine(b: &Array, s: &Array, t: &Array) -> Array {
    let data = (0..b.len())
        .map(|c| b.data[c] * s.data[c] + t.data[c])
        .collect();
    Array::new(b.shape.clone(), data)
}
