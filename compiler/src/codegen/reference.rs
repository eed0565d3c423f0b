//! The plain-Rust reference for every [`KernelSpec`]: direct loops in `f64`, written for
//! obviousness rather than speed, against which the JIT kernels are tested.

use super::{Activation, Epilogue, KernelSpec, Pool2d, PoolKind, window_out};

pub(super) fn act(x: f64, a: Activation) -> f64 {
    match a {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
    }
}

/// Pools a `[c, h, w]` plane stack with PyTorch semantics.
pub(super) fn pool(p: &Pool2d, x: &[f64], c: usize, h: usize, w: usize) -> Vec<f64> {
    let (oh, ow) = p.out_hw(h, w);
    let mut out = Vec::with_capacity(c * oh * ow);
    for ch in 0..c {
        for py in 0..oh {
            for px in 0..ow {
                let (mut acc, mut count) = (
                    if p.kind == PoolKind::Max {
                        f64::NEG_INFINITY
                    } else {
                        0.0
                    },
                    0,
                );
                for ky in 0..p.kernel[0] {
                    for kx in 0..p.kernel[1] {
                        let iy = (py * p.stride[0] + ky) as isize - p.padding[0] as isize;
                        let ix = (px * p.stride[1] + kx) as isize - p.padding[1] as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = x[(ch * h + iy as usize) * w + ix as usize];
                        acc = if p.kind == PoolKind::Max {
                            acc.max(v)
                        } else {
                            acc + v
                        };
                        count += 1;
                    }
                }
                if p.kind == PoolKind::Avg {
                    let div = if p.count_include_pad {
                        p.kernel[0] * p.kernel[1]
                    } else {
                        count
                    };
                    acc /= div as f64;
                }
                out.push(acc);
            }
        }
    }
    out
}

/// Applies bias, scale/shift and activation to channel-major values of one image.
fn epilogue(epi: &Epilogue, per_chan: &[&[f32]], y: &mut [f64], c: usize) {
    let hw = y.len() / c;
    let mut k = 0;
    let bias = epi.bias.then(|| {
        k += 1;
        per_chan[k - 1]
    });
    let ss = epi.scale_shift.then(|| (per_chan[k], per_chan[k + 1]));
    for (i, v) in y.iter_mut().enumerate() {
        let ch = i / hw;
        if let Some(b) = bias {
            *v += f64::from(b[ch]);
        }
        if let Some((s, t)) = ss {
            *v = *v * f64::from(s[ch]) + f64::from(t[ch]);
        }
        *v = act(*v, epi.act);
    }
}

/// Computes `spec` for images `0..n`. `bufs` are the kernel's buffers in calling order
/// without the output, with weights in PyTorch layout (not packed); `out` receives
/// `n * spec.out_len()` floats.
pub fn reference(spec: &KernelSpec, bufs: &[&[f32]], out: &mut [f32], n: usize) {
    let (il, ol) = (spec.in_len(), spec.out_len());
    for img in 0..n {
        let x: Vec<f64> = bufs[0][img * il..(img + 1) * il]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let y = image(spec, bufs, &x, img);
        for (o, v) in out[img * ol..(img + 1) * ol].iter_mut().zip(y) {
            *o = v as f32;
        }
    }
}

fn image(spec: &KernelSpec, bufs: &[&[f32]], x: &[f64], img: usize) -> Vec<f64> {
    match *spec {
        KernelSpec::Conv2d {
            c_in,
            h,
            w,
            c_out,
            kernel,
            stride,
            padding,
            groups,
            epi,
        } => {
            let (oh, ow) = (
                window_out(h, kernel[0], stride[0], padding[0]),
                window_out(w, kernel[1], stride[1], padding[1]),
            );
            let (cg, og) = (c_in / groups, c_out / groups);
            let wt = bufs[1];
            let mut y = vec![0.0; c_out * oh * ow];
            for co in 0..c_out {
                let g = co / og;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for ci in 0..cg {
                            for ky in 0..kernel[0] {
                                for kx in 0..kernel[1] {
                                    let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                                    let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((g * cg + ci) * h + iy as usize) * w + ix as usize];
                                    let wv = wt[((co * cg + ci) * kernel[0] + ky) * kernel[1] + kx];
                                    acc += xv * f64::from(wv);
                                }
                            }
                        }
                        y[(co * oh + oy) * ow + ox] = acc;
                    }
                }
            }
            epilogue(&epi, &bufs[2..], &mut y, c_out);
            match epi.pool {
                Some(p) => pool(&p, &y, c_out, oh, ow),
                None => y,
            }
        }
        KernelSpec::Dense { in_f, out_f, epi } => {
            let mut y: Vec<f64> = (0..out_f)
                .map(|o| {
                    (0..in_f)
                        .map(|i| x[i] * f64::from(bufs[1][o * in_f + i]))
                        .sum()
                })
                .collect();
            epilogue(&epi, &bufs[2..], &mut y, out_f);
            y
        }
        KernelSpec::ScaleShift {
            c,
            h,
            w,
            act: a,
            pool: p,
        } => {
            let hw = h * w;
            let y: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    act(
                        v * f64::from(bufs[1][i / hw]) + f64::from(bufs[2][i / hw]),
                        a,
                    )
                })
                .collect();
            match p {
                Some(p) => pool(&p, &y, c, h, w),
                None => y,
            }
        }
        KernelSpec::Pool { c, h, w, pool: p } => pool(&p, x, c, h, w),
        KernelSpec::Unary { act: a, .. } => x.iter().map(|&v| act(v, a)).collect(),
        KernelSpec::Add { len, act: a } => {
            let b = &bufs[1][img * len..(img + 1) * len];
            x.iter()
                .zip(b)
                .map(|(&u, &v)| act(u + f64::from(v), a))
                .collect()
        }
        KernelSpec::Softmax { .. } => {
            let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        }
        // Training specs write several buffers; `reference_train` covers them.
        _ => Vec::new(),
    }
}
