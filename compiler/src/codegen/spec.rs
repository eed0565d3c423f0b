//! What a `KernelSpec` implies without compiling it: its buffers and their lengths, the
//! packed weight layout, FLOP and byte counts, and validation of the spec.

use super::*;

/// The output size of a sliding window (PyTorch floor semantics). Callers validate first.
pub(crate) fn window_out(x: usize, k: usize, s: usize, p: usize) -> usize {
    (x + 2 * p - k) / s + 1
}

impl KernelSpec {
    /// The inference `Conv2d` that computes a `TrainConv2d`'s output (bias only, no
    /// epilogue); any other spec is returned unchanged.
    pub fn forward_conv(&self) -> KernelSpec {
        match *self {
            KernelSpec::TrainConv2d {
                c_in,
                h,
                w,
                c_out,
                kernel,
                stride,
                padding,
                bias,
                ..
            } => KernelSpec::Conv2d {
                c_in,
                h,
                w,
                c_out,
                kernel,
                stride,
                padding,
                groups: 1,
                epi: Epilogue {
                    bias,
                    ..Epilogue::NONE
                },
            },
            other => other,
        }
    }

    /// The names of the kernel's buffers in calling order; the last one is the output.
    pub fn buffer_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        match *self {
            KernelSpec::Conv2d { epi, .. } | KernelSpec::Dense { epi, .. } => {
                v.extend(["input", "weight"]);
                if epi.bias {
                    v.push("bias");
                }
                if epi.scale_shift {
                    v.extend(["scale", "shift"]);
                }
            }
            KernelSpec::ScaleShift { .. } => v.extend(["input", "scale", "shift"]),
            KernelSpec::Add { .. } => v.extend(["a", "b"]),
            KernelSpec::Pool { .. } | KernelSpec::Unary { .. } | KernelSpec::Softmax { .. } => {
                v.push("input")
            }
            KernelSpec::TrainConv2d { bias, stats, .. }
            | KernelSpec::TrainDense { bias, stats, .. } => {
                v.extend(["input", "weight"]);
                if bias {
                    v.push("bias");
                }
                v.push("output");
                if stats {
                    v.push("stats");
                }
                return v;
            }
            KernelSpec::BnActPool { .. } => {
                return vec!["input", "scale", "shift", "saved", "output"];
            }
            KernelSpec::ConvGradW { .. } | KernelSpec::DenseGradW { .. } => {
                v.extend(["input", "grad"])
            }
            KernelSpec::PoolActBack { bn, .. } => {
                v.extend(["grad", "activation"]);
                if bn {
                    v.extend(["z", "mean", "inv_std", "sums"]);
                } else {
                    v.extend(["output", "sums"]);
                }
                return v;
            }
            KernelSpec::BnBackDx { back, .. } => {
                v.push("grad");
                if back.is_some() {
                    v.push("activation");
                }
                v.extend(["z", "coef"]);
            }
        }
        v.push("output");
        v
    }

    /// Input elements per image.
    pub fn in_len(&self) -> usize {
        match *self {
            KernelSpec::Conv2d { c_in, h, w, .. } => c_in * h * w,
            KernelSpec::Dense { in_f, .. } => in_f,
            KernelSpec::ScaleShift { c, h, w, .. } | KernelSpec::Pool { c, h, w, .. } => c * h * w,
            KernelSpec::Unary { len, .. } | KernelSpec::Add { len, .. } => len,
            KernelSpec::Softmax { classes } => classes,
            KernelSpec::TrainConv2d { c_in, h, w, .. }
            | KernelSpec::ConvGradW { c_in, h, w, .. } => c_in * h * w,
            KernelSpec::TrainDense { in_f, .. } | KernelSpec::DenseGradW { in_f, .. } => in_f,
            KernelSpec::BnActPool { c, h, w, .. }
            | KernelSpec::BnBackDx {
                c,
                h,
                w,
                back: None,
            } => c * h * w,
            KernelSpec::PoolActBack { c, h, w, pool, .. }
            | KernelSpec::BnBackDx {
                c,
                h,
                w,
                back: Some((_, pool)),
            } => match pool {
                Some(p) => {
                    let (oh, ow) = p.out_hw(h, w);
                    c * oh * ow
                }
                None => c * h * w,
            },
        }
    }

    /// The output shape of one image `[c, h, w]` (`h = w = 1` for rank-2 outputs).
    pub fn out_chw(&self) -> [usize; 3] {
        let pooled = |c, h, w, pool: Option<Pool2d>| match pool {
            Some(p) => {
                let (ph, pw) = p.out_hw(h, w);
                [c, ph, pw]
            }
            None => [c, h, w],
        };
        match *self {
            KernelSpec::Conv2d {
                h,
                w,
                c_out,
                kernel,
                stride,
                padding,
                epi,
                ..
            } => {
                let oh = window_out(h, kernel[0], stride[0], padding[0]);
                let ow = window_out(w, kernel[1], stride[1], padding[1]);
                pooled(c_out, oh, ow, epi.pool)
            }
            KernelSpec::Dense { out_f, .. } => [out_f, 1, 1],
            KernelSpec::ScaleShift { c, h, w, pool, .. } => pooled(c, h, w, pool),
            KernelSpec::Pool { c, h, w, pool } => pooled(c, h, w, Some(pool)),
            KernelSpec::Unary { len, .. } | KernelSpec::Add { len, .. } => [len, 1, 1],
            KernelSpec::Softmax { classes } => [classes, 1, 1],
            KernelSpec::TrainConv2d {
                h,
                w,
                c_out,
                kernel,
                stride,
                padding,
                ..
            } => [
                c_out,
                window_out(h, kernel[0], stride[0], padding[0]),
                window_out(w, kernel[1], stride[1], padding[1]),
            ],
            KernelSpec::TrainDense { out_f, .. } => [out_f, 1, 1],
            KernelSpec::BnActPool { c, h, w, pool, .. } => pooled(c, h, w, Some(pool)),
            // Weight gradients are not per image; see `buffer_lens`.
            KernelSpec::ConvGradW {
                c_in,
                c_out,
                kernel,
                ..
            } => [c_out * c_in * kernel[0] * kernel[1], 1, 1],
            KernelSpec::DenseGradW { in_f, out_f } => [out_f * in_f, 1, 1],
            KernelSpec::PoolActBack { c, h, w, .. } | KernelSpec::BnBackDx { c, h, w, .. } => {
                [c, h, w]
            }
        }
    }

    /// Output elements per image.
    pub fn out_len(&self) -> usize {
        self.out_chw().iter().product()
    }

    /// The number of floats each buffer must hold for a batch of `n` images, in calling order
    /// (weights in the packed length of [`pack_weight`]).
    pub fn buffer_lens(&self, n: usize) -> Vec<usize> {
        let mut v = vec![n * self.in_len()];
        match *self {
            KernelSpec::Conv2d {
                c_in,
                c_out,
                kernel,
                groups,
                epi,
                ..
            } => {
                v.push(c_out * (c_in / groups.max(1)) * kernel[0] * kernel[1]);
                per_channel(&mut v, epi, c_out);
            }
            KernelSpec::Dense { in_f, out_f, epi } => {
                v.push(in_f * out_f);
                per_channel(&mut v, epi, out_f);
            }
            KernelSpec::ScaleShift { c, .. } => v.extend([c, c]),
            KernelSpec::Add { len, .. } => v.push(n * len),
            KernelSpec::Pool { .. } | KernelSpec::Unary { .. } | KernelSpec::Softmax { .. } => {}
            KernelSpec::TrainConv2d {
                c_in,
                c_out,
                kernel,
                bias,
                stats,
                ..
            } => {
                v.push(c_out * c_in * kernel[0] * kernel[1]);
                return train_lens(v, n * self.out_len(), c_out, bias, stats);
            }
            KernelSpec::TrainDense {
                in_f,
                out_f,
                bias,
                stats,
            } => {
                v.push(in_f * out_f);
                return train_lens(v, n * out_f, out_f, bias, stats);
            }
            KernelSpec::BnActPool { c, h, w, .. } => {
                v.extend([c, c, n * c * h * w, n * self.out_len()]);
                return v;
            }
            KernelSpec::ConvGradW {
                h,
                w,
                c_out,
                kernel,
                padding,
                ..
            } => {
                let oh = window_out(h, kernel[0], 1, padding[0]);
                let ow = window_out(w, kernel[1], 1, padding[1]);
                v.extend([n * c_out * oh * ow, self.out_len()]);
                return v;
            }
            KernelSpec::DenseGradW { out_f, .. } => {
                v.extend([n * out_f, self.out_len()]);
                return v;
            }
            KernelSpec::PoolActBack { c, h, w, bn, .. } => {
                let plane = n * c * h * w;
                v.push(plane);
                if bn {
                    v.extend([plane, c, c]);
                } else {
                    v.push(plane);
                }
                v.push(n * pool_act_back_sums(c, bn));
                return v;
            }
            KernelSpec::BnBackDx { c, h, w, back } => {
                let plane = n * c * h * w;
                if back.is_some() {
                    v.extend([plane, plane]);
                } else {
                    v.push(plane);
                }
                v.push(4 * c);
            }
        }
        v.push(n * self.out_len());
        v
    }
}

/// Floats per image of `PoolActBack`'s `sums`: `Σdy` per channel, then `Σdy·x̂` with `bn`.
pub fn pool_act_back_sums(c: usize, bn: bool) -> usize {
    if bn { 2 * c } else { c }
}

fn train_lens(mut v: Vec<usize>, out: usize, c: usize, bias: bool, stats: bool) -> Vec<usize> {
    if bias {
        v.push(c);
    }
    v.push(out);
    if stats {
        v.push(train_stats(c));
    }
    v
}

fn per_channel(v: &mut Vec<usize>, epi: Epilogue, c: usize) {
    if epi.bias {
        v.push(c);
    }
    if epi.scale_shift {
        v.extend([c, c]);
    }
}

/// Rearranges a weight from PyTorch layout into the layout the compiled kernel reads; the
/// runtime calls it once when weights are bound. Dense weights `[out_f, in_f]` become
/// `[in_f, out_f]` so that consecutive output features sit on the vector lanes; convolution
/// weights are returned unchanged (the kernel broadcasts them one scalar at a time). Other
/// kinds have no weight and get a copy.
pub fn pack_weight(spec: &KernelSpec, weight: &[f32]) -> Vec<f32> {
    match *spec {
        KernelSpec::Dense { in_f, out_f, .. } | KernelSpec::TrainDense { in_f, out_f, .. } => {
            let mut packed = vec![0.0; in_f * out_f];
            for o in 0..out_f {
                for i in 0..in_f {
                    packed[i * out_f + o] = weight[o * in_f + i];
                }
            }
            packed
        }
        _ => weight.to_vec(),
    }
}

/// Floating-point operations per image: two per multiply-accumulate, one per epilogue or
/// elementwise step, and about twenty per `exp`. It drives the GFLOP/s statistics.
pub fn flops(spec: &KernelSpec) -> u64 {
    let act_cost = |a: Activation| match a {
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::Sigmoid | Activation::Tanh => 20,
    };
    let epi_cost =
        |e: &Epilogue| u64::from(e.bias) + 2 * u64::from(e.scale_shift) + act_cost(e.act);
    let pool_cost = |p: Option<Pool2d>, c: usize, h: usize, w: usize| match p {
        Some(p) => {
            let (ph, pw) = p.out_hw(h, w);
            (c * ph * pw * p.kernel[0] * p.kernel[1]) as u64
        }
        None => 0,
    };
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
            let oh = window_out(h, kernel[0], stride[0], padding[0]);
            let ow = window_out(w, kernel[1], stride[1], padding[1]);
            let macs = (c_out * oh * ow * (c_in / groups) * kernel[0] * kernel[1]) as u64;
            2 * macs
                + (c_out * oh * ow) as u64 * epi_cost(&epi)
                + pool_cost(epi.pool, c_out, oh, ow)
        }
        KernelSpec::Dense { in_f, out_f, epi } => {
            2 * (in_f * out_f) as u64 + out_f as u64 * epi_cost(&epi)
        }
        KernelSpec::ScaleShift { c, h, w, act, pool } => {
            (c * h * w) as u64 * (2 + act_cost(act)) + pool_cost(pool, c, h, w)
        }
        KernelSpec::Pool { c, h, w, pool } => pool_cost(Some(pool), c, h, w),
        KernelSpec::Unary { len, act } => len as u64 * act_cost(act),
        KernelSpec::Add { len, act } => len as u64 * (1 + act_cost(act)),
        KernelSpec::Softmax { classes } => classes as u64 * 23,
        KernelSpec::TrainConv2d {
            c_in,
            c_out,
            kernel,
            ..
        } => {
            let [_, oh, ow] = spec.out_chw();
            (2 * c_out * oh * ow * c_in * kernel[0] * kernel[1] + 4 * c_out * oh * ow) as u64
        }
        KernelSpec::TrainDense { in_f, out_f, .. } => (2 * in_f * out_f + 4 * out_f) as u64,
        KernelSpec::BnActPool { c, h, w, act, pool } => {
            (c * h * w) as u64 * (2 + act_cost(act)) + pool_cost(Some(pool), c, h, w)
        }
        KernelSpec::ConvGradW {
            c_in,
            h,
            w,
            c_out,
            kernel,
            padding,
        } => {
            let oh = window_out(h, kernel[0], 1, padding[0]);
            let ow = window_out(w, kernel[1], 1, padding[1]);
            2 * (c_out * c_in * kernel[0] * kernel[1] * oh * ow) as u64
        }
        KernelSpec::DenseGradW { in_f, out_f } => 2 * (in_f * out_f) as u64,
        KernelSpec::PoolActBack {
            c, h, w, act, bn, ..
        } => (c * h * w) as u64 * (3 + act_cost(act) + 4 * u64::from(bn)),
        KernelSpec::BnBackDx { c, h, w, back } => {
            (c * h * w) as u64 * (4 + back.map_or(0, |(act, _)| 1 + act_cost(act)))
        }
    }
}

/// Bytes of activations moved per image (inputs read plus output written, 4 bytes a float);
/// weights and per-channel vectors are excluded because they are shared by the whole batch.
pub fn bytes(spec: &KernelSpec) -> u64 {
    let inputs = match spec {
        KernelSpec::Add { len, .. } => 2 * len,
        _ => spec.in_len(),
    };
    4 * (inputs + spec.out_len()) as u64
}

/// Checks the spec at position `index` so that lowering can assume consistent shapes.
pub(crate) fn validate(index: usize, spec: &KernelSpec) -> Result<(), CodegenError> {
    let pos = |what: &'static str, x: usize| {
        if x == 0 {
            Err(CodegenError::ZeroSize { index, what })
        } else {
            Ok(())
        }
    };
    let window = |x: usize, k: usize, p: usize| {
        if k > x + 2 * p {
            Err(CodegenError::WindowTooLarge {
                index,
                window: k,
                padded: x + 2 * p,
            })
        } else {
            Ok(())
        }
    };
    let pool_ok = |p: &Pool2d, h: usize, w: usize| -> Result<(), CodegenError> {
        for a in 0..2 {
            pos("pool kernel", p.kernel[a])?;
            pos("pool stride", p.stride[a])?;
            if 2 * p.padding[a] > p.kernel[a] {
                return Err(CodegenError::PoolPadding {
                    index,
                    padding: p.padding[a],
                    window: p.kernel[a],
                });
            }
        }
        window(h, p.kernel[0], p.padding[0])?;
        window(w, p.kernel[1], p.padding[1])
    };
    match spec {
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
            for (what, x) in [
                ("c_in", c_in),
                ("h", h),
                ("w", w),
                ("c_out", c_out),
                ("groups", groups),
            ] {
                pos(what, *x)?;
            }
            for a in 0..2 {
                pos("kernel", kernel[a])?;
                pos("stride", stride[a])?;
            }
            for channels in [*c_in, *c_out] {
                if channels % groups != 0 {
                    return Err(CodegenError::Groups {
                        index,
                        groups: *groups,
                        channels,
                    });
                }
            }
            window(*h, kernel[0], padding[0])?;
            window(*w, kernel[1], padding[1])?;
            if let Some(p) = &epi.pool {
                let oh = window_out(*h, kernel[0], stride[0], padding[0]);
                let ow = window_out(*w, kernel[1], stride[1], padding[1]);
                pool_ok(p, oh, ow)?;
            }
        }
        KernelSpec::Dense { in_f, out_f, epi } => {
            pos("in_f", *in_f)?;
            pos("out_f", *out_f)?;
            if epi.pool.is_some() {
                return Err(CodegenError::PoolOnDense { index });
            }
        }
        KernelSpec::ScaleShift { c, h, w, pool, .. } => {
            for (what, x) in [("c", c), ("h", h), ("w", w)] {
                pos(what, *x)?;
            }
            if let Some(p) = pool {
                pool_ok(p, *h, *w)?;
            }
        }
        KernelSpec::Pool { c, h, w, pool } => {
            for (what, x) in [("c", c), ("h", h), ("w", w)] {
                pos(what, *x)?;
            }
            pool_ok(pool, *h, *w)?;
        }
        KernelSpec::Unary { len, .. } | KernelSpec::Add { len, .. } => pos("len", *len)?,
        KernelSpec::Softmax { classes } => pos("classes", *classes)?,
        KernelSpec::TrainConv2d {
            c_in,
            h,
            w,
            c_out,
            kernel,
            stride,
            padding,
            ..
        } => validate(
            index,
            &KernelSpec::Conv2d {
                c_in: *c_in,
                h: *h,
                w: *w,
                c_out: *c_out,
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
                groups: 1,
                epi: Epilogue::NONE,
            },
        )?,
        KernelSpec::TrainDense { in_f, out_f, .. } | KernelSpec::DenseGradW { in_f, out_f } => {
            pos("in_f", *in_f)?;
            pos("out_f", *out_f)?;
        }
        KernelSpec::BnActPool { c, h, w, pool, .. } => {
            for (what, x) in [("c", c), ("h", h), ("w", w)] {
                pos(what, *x)?;
            }
            pool_ok(pool, *h, *w)?;
        }
        KernelSpec::PoolActBack { c, h, w, pool, .. } => {
            for (what, x) in [("c", c), ("h", h), ("w", w)] {
                pos(what, *x)?;
            }
            if let Some(p) = pool {
                pool_ok(p, *h, *w)?;
                if !pool_backward_supported(p) {
                    return Err(CodegenError::PoolBackward { index });
                }
            }
        }
        KernelSpec::BnBackDx { c, h, w, back } => {
            for (what, x) in [("c", c), ("h", h), ("w", w)] {
                pos(what, *x)?;
            }
            if let Some((_, Some(p))) = back {
                pool_ok(p, *h, *w)?;
                if !pool_backward_supported(p) {
                    return Err(CodegenError::PoolBackward { index });
                }
            }
        }
        KernelSpec::ConvGradW {
            c_in,
            h,
            w,
            c_out,
            kernel,
            padding,
        } => validate(
            index,
            &KernelSpec::Conv2d {
                c_in: *c_in,
                h: *h,
                w: *w,
                c_out: *c_out,
                kernel: *kernel,
                stride: [1, 1],
                padding: *padding,
                groups: 1,
                epi: Epilogue::NONE,
            },
        )?,
    }
    Ok(())
}
