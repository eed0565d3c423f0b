//! The per-op forward kernels of the reference interpreter, other than BatchNorm: naive
//! loops over row-major [`Array`]s, `f64` for every sum and every transcendental
//! function. Operands are assumed to satisfy the op's shape rule, which the verifier and
//! the interpreter's input and parameter checks guarantee.

use super::InterpError;
use super::array::Array;
use crate::ir::shape::window_out;
use crate::ir::{Conv2dAttrs, PoolAttrs};

/// An elementwise function.
pub(super) fn map(x: &Array, f: impl Fn(f64) -> f64) -> Array {
    Array::new(x.shape.clone(), x.data.iter().map(|&v| f(v)).collect())
}

/// The elementwise sum of two arrays of one shape.
pub(super) fn add(x: &Array, y: &Array) -> Array {
    let z = x.data.iter().zip(&y.data).map(|(a, b)| a + b).collect();
    Array::new(x.shape.clone(), z)
}

/// Flattens every axis after the first: `[N, d1, d2, ...] -> [N, d1*d2*...]`. Keeps the
/// element type (labels may be flattened too).
pub(super) fn flatten(x: &Array) -> Array {
    let s = &x.shape;
    x.reshaped(vec![s[0], s[1..].iter().product()])
}

/// Row-major strides of a `[C, H, W]` plane block, for the convolution index math.
#[derive(Clone, Copy)]
pub(super) struct Conv {
    /// Batch, input channels, input height, input width.
    pub x: [usize; 4],
    /// Output channels, input channels per group, kernel height, kernel width.
    pub w: [usize; 4],
    /// Output height and width.
    pub out: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding.
    pub padding: [usize; 2],
    /// Output channels per group.
    pub og: usize,
}

impl Conv {
    /// The geometry of a convolution of `x` (shape `x`) with a weight of shape `w`.
    pub fn new(
        x: [usize; 4],
        w: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        groups: usize,
    ) -> Conv {
        let oh = window_out(x[2], w[2], stride[0], padding[0]).unwrap_or(0);
        let ow = window_out(x[3], w[3], stride[1], padding[1]).unwrap_or(0);
        Conv {
            x,
            w,
            out: [oh, ow],
            stride,
            padding,
            og: (w[0] / groups.max(1)).max(1),
        }
    }

    /// Calls `f(x index, w index, y index)` for every multiply of the convolution: output
    /// `[n, o, i, j]` reads input `[n, c, i*sh + ky - ph, j*sw + kx - pw]` of `o`'s group
    /// and weight `[o, c - group start, ky, kx]`; taps in the padding are skipped.
    pub fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [n, c, h, wd] = self.x;
        let [o, cg, kh, kw] = self.w;
        let [oh, ow] = self.out;
        for ni in 0..n {
            for oc in 0..o {
                let c0 = (oc / self.og) * cg;
                for i in 0..oh {
                    for j in 0..ow {
                        let yi = ((ni * o + oc) * oh + i) * ow + j;
                        for ci in 0..cg {
                            for ky in 0..kh {
                                let Some(iy) = tap(i, ky, self.stride[0], self.padding[0], h)
                                else {
                                    continue;
                                };
                                for kx in 0..kw {
                                    let Some(ix) = tap(j, kx, self.stride[1], self.padding[1], wd)
                                    else {
                                        continue;
                                    };
                                    let xi = ((ni * c + c0 + ci) * h + iy) * wd + ix;
                                    let wi = ((oc * cg + ci) * kh + ky) * kw + kx;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `conv2d` over NCHW input: `y[n,o,i,j] = b[o] + sum over c in o's group, ky, kx of
/// x[n, c, i*sh + ky - ph, j*sw + kx - pw] * w[o, c - group start, ky, kx]`, where
/// positions outside the input read as zero. Weight `[O, C/groups, kh, kw]`.
pub(super) fn conv2d(x: &Array, w: &Array, b: Option<&Array>, a: &Conv2dAttrs) -> Array {
    let geo = Conv::new(x.dims4(), w.dims4(), a.stride, a.padding, a.groups);
    let (n, o, [oh, ow]) = (geo.x[0], geo.w[0], geo.out);
    let mut y = vec![0.0f64; n * o * oh * ow];
    geo.for_each(|xi, wi, yi| y[yi] += x.data[xi] * w.data[wi]);
    if let Some(b) = b {
        for (i, v) in y.iter_mut().enumerate() {
            *v += b.data[(i / (oh * ow)) % o];
        }
    }
    Array::new(vec![n, o, oh, ow], y)
}

/// `dense`: `y = x W^T + b` with `x: [N, K]`, `W: [U, K]`, `b: [U]`.
pub(super) fn dense(x: &Array, w: &Array, b: Option<&Array>) -> Array {
    let (n, k) = (x.shape[0], x.shape[1]);
    let u = w.shape[0];
    let mut y = vec![0.0f64; n * u];
    for i in 0..n {
        for j in 0..u {
            let mut sum = b.map_or(0.0, |b| b.data[j]);
            for l in 0..k {
                sum += x.data[i * k + l] * w.data[j * k + l];
            }
            y[i * u + j] = sum;
        }
    }
    Array::new(vec![n, u], y)
}

/// The input row (or column) that output position `out`, kernel tap `k` reads, or `None`
/// when it falls into the padding.
pub(super) fn tap(out: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (out * stride + k)
        .checked_sub(pad)
        .filter(|&pos| pos < size)
}

/// Calls `f(output index, in-bounds input indices)` for every pooling window.
pub(super) fn for_each_window(x: &[usize], a: &PoolAttrs, mut f: impl FnMut(usize, &[usize])) {
    let [n, c, h, w] = [x[0], x[1], x[2], x[3]];
    let oh = window_out(h, a.kernel[0], a.stride[0], a.padding[0]).unwrap_or(0);
    let ow = window_out(w, a.kernel[1], a.stride[1], a.padding[1]).unwrap_or(0);
    let mut window = Vec::with_capacity(a.kernel[0] * a.kernel[1]);
    for plane in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                window.clear();
                for ky in 0..a.kernel[0] {
                    let Some(iy) = tap(i, ky, a.stride[0], a.padding[0], h) else {
                        continue;
                    };
                    for kx in 0..a.kernel[1] {
                        if let Some(ix) = tap(j, kx, a.stride[1], a.padding[1], w) {
                            window.push((plane * h + iy) * w + ix);
                        }
                    }
                }
                f((plane * oh + i) * ow + j, &window);
            }
        }
    }
}

/// The output shape of a pooling op.
pub(super) fn pool_shape(x: &[usize], a: &PoolAttrs) -> Vec<usize> {
    let oh = window_out(x[2], a.kernel[0], a.stride[0], a.padding[0]).unwrap_or(0);
    let ow = window_out(x[3], a.kernel[1], a.stride[1], a.padding[1]).unwrap_or(0);
    vec![x[0], x[1], oh, ow]
}

/// The divisor of an average-pooling window with `taps` in-bounds elements: `kh*kw`
/// when `count_include_pad` (padded zeros count, PyTorch's default), else `taps`. The
/// shape rule keeps padding at most half the kernel, so no window is all padding.
pub(super) fn avg_divisor(a: &PoolAttrs, taps: usize) -> f64 {
    if a.count_include_pad {
        (a.kernel[0] * a.kernel[1]) as f64
    } else {
        taps as f64
    }
}

/// `avg_pool2d`: the window sum divided by [`avg_divisor`].
pub(super) fn avg_pool2d(x: &Array, a: &PoolAttrs) -> Array {
    let shape = pool_shape(&x.shape, a);
    let mut y = vec![0.0; shape.iter().product()];
    for_each_window(&x.shape, a, |o, win| {
        let sum: f64 = win.iter().map(|&i| x.data[i]).sum();
        y[o] = sum / avg_divisor(a, win.len());
    });
    Array::new(shape, y)
}

/// The input index a max-pooling window takes its value from: the first strictly
/// largest, padding counting as `-inf` (it never wins); a NaN wins and stays, as in
/// PyTorch. `None` only for a window without elements, which the shape rule excludes.
pub(super) fn window_argmax(x: &[f64], win: &[usize]) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut m = f64::NEG_INFINITY;
    for &i in win {
        let v = x[i];
        // Once `m` is NaN no comparison is true, so it stays NaN.
        if v.is_nan() || v > m || best.is_none() && v == m {
            m = v;
            best = Some(i);
        }
    }
    best
}

/// `max_pool2d`: the window maximum (see [`window_argmax`]).
pub(super) fn max_pool2d(x: &Array, a: &PoolAttrs) -> Array {
    let shape = pool_shape(&x.shape, a);
    let mut y = vec![f64::NEG_INFINITY; shape.iter().product()];
    for_each_window(&x.shape, a, |o, win| {
        if let Some(i) = window_argmax(&x.data, win) {
            y[o] = x.data[i];
        }
    });
    Array::new(shape, y)
}

/// Softmax over axis 1 of `[N, K]`, stable: `exp(x - max)` over the row sum.
pub(super) fn softmax(x: &Array) -> Array {
    let k = x.shape[1];
    let mut y = Vec::with_capacity(x.len());
    for row in x.data.chunks(k.max(1)) {
        let max = row_max(row);
        let e: Vec<f64> = row.iter().map(|&v| (v - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        y.extend(e.iter().map(|v| v / sum));
    }
    Array::new(x.shape.clone(), y)
}

/// The largest element of a row (NaN elements are skipped here and propagate through
/// the exponentials instead).
fn row_max(row: &[f64]) -> f64 {
    row.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The class of every label, checked against the number of classes `k`.
pub(super) fn classes(labels: &Array, n: usize, k: usize) -> Result<Vec<usize>, InterpError> {
    labels
        .data
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, &l)| {
            let label = l as i32;
            usize::try_from(label)
                .ok()
                .filter(|&c| c < k)
                .ok_or(InterpError::LabelOutOfRange {
                    label,
                    index: i,
                    classes: k,
                })
        })
        .collect()
}

/// Mean softmax cross-entropy of logits `[N, K]` against `i32` labels `[N]`, as a scalar:
/// `mean_i (logsumexp(x_i) - x_i[label_i])`, with `logsumexp(r) = max(r) + ln sum
/// exp(r - max(r))`. An empty batch gives NaN (0/0), as PyTorch's mean does.
pub(super) fn softmax_cross_entropy(logits: &Array, labels: &Array) -> Result<Array, InterpError> {
    let (n, k) = (logits.shape[0], logits.shape[1]);
    let mut total = 0.0f64;
    for (i, class) in classes(labels, n, k)?.into_iter().enumerate() {
        let row = &logits.data[i * k..(i + 1) * k];
        let max = row_max(row);
        let lse = max + row.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
        total += lse - row[class];
    }
    Ok(Array::new(Vec::new(), vec![total / n as f64]))
}

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::interp::tests::{assert_close, compile, feed, random, t};
    use crate::interp::{Params, SplitMix64, run};
    use crate::passes::Mode;

    /// Runs the one-op graph `y = <op>` over input `x: x_ty` with `params`.
    fn run_op(x_ty: &str, op: &str, x: Tensor, params: &[(&str, Tensor)]) -> Vec<f32> {
        let g = compile(&format!("input x: {x_ty}\ny = {op}\noutput y"), Mode::Infer);
        let mut p: Params = params
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        let out = run(&g, Mode::Infer, &feed("x", x), &mut p).unwrap();
        out.outputs[0].as_f32().unwrap().to_vec()
    }

    fn iota(shape: &[usize], start: f32) -> Tensor {
        let n = shape.iter().product::<usize>();
        t(shape, &(0..n).map(|i| start + i as f32).collect::<Vec<_>>())
    }

    // Channel 0 of x holds 1..9 and channel 1 holds 10..18, both 3x3. Padding 1 makes a
    // 5x5 plane; kernel 2 at stride 2 sees the windows starting at padded (0,0), (0,2),
    // (2,0), (2,2), which hold [0,0;0,1] [0,0;2,3] [0,4;0,7] [5,6;8,9] in channel 0 and
    // [0,0;0,10] [0,0;11,12] [0,13;0,16] [14,15;17,18] in channel 1. With groups 2 output
    // 0 sees only channel 0, weight [1,2;3,4], bias 0.5: 4*1 = 4, 3*2 + 4*3 = 18,
    // 2*4 + 4*7 = 36, 5 + 2*6 + 3*8 + 4*9 = 77, each plus 0.5.
    // Output 1 sees only channel 1, weight [1,0;0,-1], bias -1: -10, -12, -16, 14 - 18 =
    // -4, minus 1.
    #[test]
    fn conv2d_with_stride_padding_and_groups_hand_computed() {
        let w = t(&[2, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, -1.0]);
        let b = t(&[2], &[0.5, -1.0]);
        let y = run_op(
            "f32[N,2,3,3]",
            "conv2d(x, channels=2, kernel=2, stride=2, padding=1, groups=2)",
            iota(&[1, 2, 3, 3], 1.0),
            &[("y.weight", w), ("y.bias", b)],
        );
        assert_close(&y, &[4.5, 18.5, 36.5, 77.5, -11.0, -13.0, -17.0, -5.0], 0.0);
    }

    // A 1x1 convolution with weight (1, -1) across two channels subtracts channel 1
    // (5..8) from channel 0 (1..4): -4 everywhere. A 1x2 kernel at stride 1 on 1..4
    // (2x2) with weight (1, 10) gives 1 + 20 = 21 and 3 + 40 = 43.
    #[test]
    fn conv2d_sums_over_input_channels_and_takes_rectangular_kernels() {
        let y = run_op(
            "f32[N,2,2,2]",
            "conv2d(x, channels=1, kernel=1, bias=false)",
            iota(&[1, 2, 2, 2], 1.0),
            &[("y.weight", t(&[1, 2, 1, 1], &[1.0, -1.0]))],
        );
        assert_close(&y, &[-4.0; 4], 0.0);
        let y = run_op(
            "f32[N,1,2,2]",
            "conv2d(x, channels=1, kernel=[1,2], bias=false)",
            iota(&[1, 1, 2, 2], 1.0),
            &[("y.weight", t(&[1, 1, 1, 2], &[1.0, 10.0]))],
        );
        assert_close(&y, &[21.0, 43.0], 0.0);
    }

    // y = x W^T + b: row (1,2,3) gives 1 - 3 + 1 = -1 and 0.5 * 6 = 3; row (4,5,6) gives
    // 4 - 6 + 1 = -1 and 0.5 * 15 = 7.5.
    #[test]
    fn dense_hand_computed() {
        let w = t(&[2, 3], &[1.0, 0.0, -1.0, 0.5, 0.5, 0.5]);
        let y = run_op(
            "f32[N,3]",
            "dense(x, units=2)",
            iota(&[2, 3], 1.0),
            &[("y.weight", w), ("y.bias", t(&[2], &[1.0, 0.0]))],
        );
        assert_close(&y, &[-1.0, 3.0, -1.0, 7.5], 0.0);
    }

    // x = 1..9 (3x3), kernel 2, stride 2, padding 1: the windows hold only 1; 2, 3; 4, 7;
    // 5, 6, 8, 9. Counting the padding the divisor is 4: 0.25, 1.25, 2.75, 7; without it
    // 1, 2, 3 and 4: 1, 2.5, 5.5, 7.
    #[test]
    fn avg_pool2d_with_padding_in_both_count_include_pad_settings() {
        let op = "avg_pool2d(x, kernel=2, stride=2, padding=1";
        let x = iota(&[1, 1, 3, 3], 1.0);
        let with = run_op("f32[N,1,3,3]", &format!("{op})"), x.clone(), &[]);
        assert_close(&with, &[0.25, 1.25, 2.75, 7.0], 0.0);
        let without = format!("{op}, count_include_pad=false)");
        let without = run_op("f32[N,1,3,3]", &without, x, &[]);
        assert_close(&without, &[1.0, 2.5, 5.5, 7.0], 0.0);
    }

    // Same windows; on -1..-9 a zero padding would win every edge window, -inf never does.
    #[test]
    fn max_pool2d_pads_with_minus_infinity() {
        let op = "max_pool2d(x, kernel=2, stride=2, padding=1)";
        let y = run_op("f32[N,1,3,3]", op, iota(&[1, 1, 3, 3], 1.0), &[]);
        assert_close(&y, &[1.0, 3.0, 7.0, 9.0], 0.0);
        let neg = t(
            &[1, 1, 3, 3],
            &[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0],
        );
        let y = run_op("f32[N,1,3,3]", op, neg, &[]);
        assert_close(&y, &[-1.0, -2.0, -4.0, -5.0], 0.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_large_logits_do_not_overflow() {
        let mut rng = SplitMix64::new(5);
        let y = run_op(
            "f32[N,7]",
            "softmax(x)",
            random(&mut rng, &[4, 7], -20.0, 20.0),
            &[],
        );
        for row in y.chunks(7) {
            let sum: f64 = row.iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() < 1e-6, "row sums to {sum}");
        }
        // softmax(1, 2, 3) = e^(0,1,2) / (1 + e + e^2); adding 999 changes nothing.
        let x = t(&[2, 3], &[1.0, 2.0, 3.0, 1000.0, 1001.0, 1002.0]);
        let y = run_op("f32[N,3]", "softmax(x)", x, &[]);
        let p = [0.090_030_57, 0.244_728_47, 0.665_240_96];
        assert_close(&y, &[p, p].concat(), 1e-7);
    }

    fn cross_entropy(logits: Tensor, labels: &[i32]) -> f32 {
        let k = logits.shape()[1];
        let src = format!(
            "input x: f32[N,{k}]\ninput labels: i32[N]\nloss = softmax_cross_entropy(x, labels)\noutput loss"
        );
        let g = compile(&src, Mode::Train);
        let mut inputs = feed("x", logits);
        let labels = Tensor::new_i32(vec![labels.len()], labels.to_vec()).unwrap();
        inputs.insert("labels".into(), labels);
        let out = run(&g, Mode::Train, &inputs, &mut Params::new()).unwrap();
        assert_eq!(out.outputs[0].shape(), &[] as &[usize]);
        out.outputs[0].as_f32().unwrap()[0]
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_ln_k() {
        let loss = cross_entropy(Tensor::full(&[4, 10], 3.5), &[0, 3, 9, 5]);
        assert_close(&[loss], &[10f32.ln()], 1e-6);
    }

    // Row (0, ln 3) with label 0: logsumexp = ln(1 + 3) = ln 4, loss ln 4 - 0. Row
    // (1000, 0) with label 1: logsumexp = 1000 + ln(1 + e^-1000) = 1000, loss 1000 (a
    // naive exp(1000) would overflow). Mean: (ln 4 + 1000) / 2.
    #[test]
    fn cross_entropy_hand_computed_and_stable() {
        let logits = t(&[2, 2], &[0.0, 3f32.ln(), 1000.0, 0.0]);
        let loss = cross_entropy(logits, &[0, 1]);
        assert_close(&[loss], &[(4f32.ln() + 1000.0) / 2.0], 1e-4);
    }

    #[test]
    fn elementwise_ops_flatten_and_add() {
        let x = t(&[1, 4], &[-2.0, -0.0, 0.5, 3.0]);
        assert_close(
            &run_op("f32[N,4]", "relu(x)", x.clone(), &[]),
            &[0.0, 0.0, 0.5, 3.0],
            0.0,
        );
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        let sig = run_op("f32[N,4]", "sigmoid(x)", x.clone(), &[]);
        assert_close(&sig, &[s(-2.0), 0.5, s(0.5), s(3.0)], 1e-7);
        let th = run_op("f32[N,4]", "tanh(x)", x.clone(), &[]);
        assert_close(
            &th,
            &[(-2f32).tanh(), 0.0, 0.5f32.tanh(), 3f32.tanh()],
            1e-7,
        );
        let y = run_op("f32[N,2,1,2]", "flatten(x)", iota(&[2, 2, 1, 2], 0.0), &[]);
        assert_close(&y, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 0.0);
        let g = compile("input x: f32[N,4]\ny = add(x, x)\noutput y", Mode::Infer);
        let out = run(&g, Mode::Infer, &feed("x", x), &mut Params::new()).unwrap();
        assert_eq!(out.outputs[0].as_f32().unwrap(), &[-4.0, 0.0, 1.0, 6.0]);
        assert_eq!(out.outputs[0].shape(), &[1, 4]);
    }
}
