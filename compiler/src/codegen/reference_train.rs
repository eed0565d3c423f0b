//! The plain-Rust reference for the training specs (`TrainConv2d`, `TrainDense`,
//! `BnActPool`, `ConvGradW`, `DenseGradW`, `PoolActBack`, `BnBackDx`), which write more than one buffer or reduce over
//! the batch: direct loops in `f64`.

use super::reference::{act, pool, reference};
use super::{Activation, Epilogue, KernelSpec, Pool2d, train_stats, window_out};

/// Computes a training `spec` for images `0..n`. `inputs` are the buffers before the first
/// output in calling order, with weights in PyTorch layout; returns every written buffer in
/// calling order (`output` then `stats`; `saved` then `output`; the weight gradient).
/// Panics on an inference spec.
pub fn reference_train(spec: &KernelSpec, inputs: &[&[f32]], n: usize) -> Vec<Vec<f32>> {
    match *spec {
        KernelSpec::TrainConv2d { c_out, stats, .. } => {
            // The forward convolution is the inference kernel without activation.
            let conv = spec.forward_conv();
            let mut out = vec![0.0; n * conv.out_len()];
            reference(&conv, inputs, &mut out, n);
            let [_, oh, ow] = spec.out_chw();
            with_stats(out, c_out, oh * ow, n, stats)
        }
        KernelSpec::TrainDense {
            in_f,
            out_f,
            bias,
            stats,
        } => {
            let dense = KernelSpec::Dense {
                in_f,
                out_f,
                epi: Epilogue {
                    bias,
                    ..Epilogue::NONE
                },
            };
            let mut out = vec![0.0; n * out_f];
            reference(&dense, inputs, &mut out, n);
            with_stats(out, out_f, 1, n, stats)
        }
        KernelSpec::BnActPool {
            c,
            h,
            w,
            act: a,
            pool: p,
        } => {
            let hw = h * w;
            let saved: Vec<f64> = inputs[0][..n * c * hw]
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let ch = (i / hw) % c;
                    let y = f64::from(x) * f64::from(inputs[1][ch]) + f64::from(inputs[2][ch]);
                    act(y, a)
                })
                .collect();
            let mut out = Vec::new();
            for img in saved.chunks(c * hw) {
                // Pool the activation as the kernel does: after rounding it to f32.
                let rounded: Vec<f64> = img.iter().map(|&v| f64::from(v as f32)).collect();
                out.extend(pool(&p, &rounded, c, h, w));
            }
            vec![f32s(&saved), f32s(&out)]
        }
        KernelSpec::ConvGradW {
            c_in,
            h,
            w,
            c_out,
            kernel: [kh, kw],
            padding: [ph, pw],
        } => {
            let (oh, ow) = (window_out(h, kh, 1, ph), window_out(w, kw, 1, pw));
            let (x, dy) = (inputs[0], inputs[1]);
            let mut dw = vec![0.0f64; c_out * c_in * kh * kw];
            for img in 0..n {
                for co in 0..c_out {
                    for ci in 0..c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let mut acc = 0.0;
                                for oy in 0..oh {
                                    for ox in 0..ow {
                                        let iy = (oy + ky) as isize - ph as isize;
                                        let ix = (ox + kx) as isize - pw as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        let g = dy[((img * c_out + co) * oh + oy) * ow + ox];
                                        let xv = x[((img * c_in + ci) * h + iy as usize) * w
                                            + ix as usize];
                                        acc += f64::from(g) * f64::from(xv);
                                    }
                                }
                                dw[((co * c_in + ci) * kh + ky) * kw + kx] += acc;
                            }
                        }
                    }
                }
            }
            vec![f32s(&dw)]
        }
        KernelSpec::DenseGradW { in_f, out_f } => {
            let (x, dy) = (inputs[0], inputs[1]);
            let mut dw = vec![0.0f64; out_f * in_f];
            for img in 0..n {
                for o in 0..out_f {
                    for i in 0..in_f {
                        dw[o * in_f + i] +=
                            f64::from(dy[img * out_f + o]) * f64::from(x[img * in_f + i]);
                    }
                }
            }
            vec![f32s(&dw)]
        }
        KernelSpec::PoolActBack {
            c,
            h,
            w,
            act,
            pool,
            bn,
        } => {
            let hw = h * w;
            let dy = pool_act_back(inputs[0], inputs[1], [c, h, w], act, pool, n);
            let nsums = super::pool_act_back_sums(c, bn);
            let mut sums = vec![0.0f64; n * nsums];
            for (at, &d) in dy.iter().enumerate() {
                let (img, ch) = (at / (c * hw), (at / hw) % c);
                sums[img * nsums + ch] += d;
                if bn {
                    let (z, mean, inv) = (inputs[2], inputs[3], inputs[4]);
                    let xhat = (f64::from(z[at]) - f64::from(mean[ch])) * f64::from(inv[ch]);
                    sums[img * nsums + c + ch] += d * xhat;
                }
            }
            if bn {
                vec![f32s(&sums)]
            } else {
                vec![f32s(&dy), f32s(&sums)]
            }
        }
        KernelSpec::BnBackDx { c, h, w, back } => {
            let hw = h * w;
            let (dy, rest) = match back {
                Some((act, pool)) => (
                    pool_act_back(inputs[0], inputs[1], [c, h, w], act, pool, n),
                    &inputs[2..],
                ),
                None => (
                    inputs[0].iter().map(|&x| f64::from(x)).collect(),
                    &inputs[1..],
                ),
            };
            let (z, coef) = (rest[0], rest[1]);
            let dz: Vec<f64> = (0..n * c * hw)
                .map(|i| {
                    let ch = (i / hw) % c;
                    let k = |j: usize| f64::from(coef[j * c + ch]);
                    k(0) * dy[i] + k(1) * (f64::from(z[i]) - k(3)) + k(2)
                })
                .collect();
            vec![f32s(&dz)]
        }
        _ => panic!("reference_train covers only the training specs"),
    }
}

/// `dy = unpool(grad) · act'(saved)` for `n` images of `[c, h, w]`: the gradient of a
/// disjoint average pool's window spread over it, zero outside every window.
fn pool_act_back(
    grad: &[f32],
    saved: &[f32],
    [c, h, w]: [usize; 3],
    act: Activation,
    pool: Option<Pool2d>,
    n: usize,
) -> Vec<f64> {
    let hw = h * w;
    let mut dy = vec![0.0f64; n * c * hw];
    for plane in 0..n * c {
        for y in 0..h {
            for x in 0..w {
                let g = match pool {
                    None => f64::from(grad[plane * hw + y * w + x]),
                    Some(p) => {
                        let (oh, ow) = p.out_hw(h, w);
                        let [kh, kw] = p.kernel;
                        if y < kh * oh && x < kw * ow {
                            let at = (plane * oh + y / kh) * ow + x / kw;
                            f64::from(grad[at]) / (kh * kw) as f64
                        } else {
                            0.0
                        }
                    }
                };
                let at = plane * hw + y * w + x;
                dy[at] = g * act_grad(f64::from(saved[at]), act);
            }
        }
    }
    dy
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Appends the statistics buffer of `c` channels of `hw` pixels over `n` images of `out`.
fn with_stats(out: Vec<f32>, c: usize, hw: usize, n: usize, stats: bool) -> Vec<Vec<f32>> {
    if !stats {
        return vec![out];
    }
    let mut s = vec![0.0f32; train_stats(c)];
    for ch in 0..c {
        let shift = f64::from(out[ch * hw]);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for img in 0..n {
            for &x in &out[(img * c + ch) * hw..(img * c + ch + 1) * hw] {
                let d = f64::from(x) - shift;
                s1 += d;
                s2 += d * d;
            }
        }
        s[ch] = shift as f32;
        s[c + ch] = s1 as f32;
        s[2 * c + ch] = s2 as f32;
    }
    vec![out, s]
}

/// The derivative of activation `a` at the point where its output is `y`.
fn act_grad(y: f64, a: Activation) -> f64 {
    match a {
        Activation::None => 1.0,
        Activation::Relu => {
            if y > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Tanh => 1.0 - y * y,
    }
}
