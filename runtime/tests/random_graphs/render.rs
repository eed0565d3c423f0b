//! Rendering of generated cases to model text: each block is written against the shape of
//! the value it applies to, and every raw choice is fitted to that shape (a kernel larger
//! than the input shrinks, padding that would grow a value past `MAX_HW` is dropped, a pool
//! on a rank-2 value is skipped), so that any case renders to a valid model.

use crate::generator::{
    Act, Block, Bn, Case, Folded, Input, Linear, MAX_CH, MAX_HW, Pool, SharedUse,
};

/// The value being built on, and its per-image shape.
#[derive(Clone, Debug)]
struct Cur {
    name: String,
    shape: Shape,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Image { c: usize, h: usize, w: usize },
    Flat { f: usize },
}

impl Shape {
    fn channels(self) -> usize {
        match self {
            Shape::Image { c, .. } => c,
            Shape::Flat { f } => f,
        }
    }
}

/// Renders blocks to text, numbering the nodes it writes.
struct Writer {
    lines: Vec<String>,
    next: usize,
    chain: bool,
}

/// A convolution fitted to its input.
struct Conv {
    c_in: usize,
    ch: usize,
    kernel: [usize; 2],
    stride: usize,
    pad: [usize; 2],
    groups: usize,
    out: Shape,
}

impl Conv {
    /// The attributes, with the bias flag `bias`.
    fn attrs(&self, bias: bool) -> String {
        format!(
            "channels={}, kernel=[{},{}], stride={}, padding=[{},{}], groups={}, bias={bias}",
            self.ch,
            self.kernel[0],
            self.kernel[1],
            self.stride,
            self.pad[0],
            self.pad[1],
            self.groups
        )
    }

    /// The weight's shape `[ch, c_in/groups, kh, kw]`, as a type's dimensions.
    fn weight_dims(&self) -> String {
        format!(
            "{},{},{},{}",
            self.ch,
            self.c_in / self.groups,
            self.kernel[0],
            self.kernel[1]
        )
    }
}

/// The group count that `pick` selects among the common divisors of `a` and `b`.
fn groups(a: usize, b: usize, pick: usize) -> usize {
    let common: Vec<usize> = (1..=a.min(b))
        .filter(|&g| a.is_multiple_of(g) && b.is_multiple_of(g))
        .collect();
    common[pick % common.len()]
}

impl Writer {
    fn name(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn line(&mut self, s: String) {
        self.lines.push(s);
    }

    fn flatten(&mut self, cur: &Cur) -> Cur {
        match cur.shape {
            Shape::Flat { .. } => cur.clone(),
            Shape::Image { c, h, w } => {
                let n = self.name("flat");
                self.line(format!("{n} = flatten({})", cur.name));
                Cur {
                    name: n,
                    shape: Shape::Flat { f: c * h * w },
                }
            }
        }
    }

    fn unary(&mut self, cur: &Cur, op: &str, prefix: &str, attrs: &str) -> Cur {
        let n = self.name(prefix);
        self.line(format!("{n} = {op}({}{attrs})", cur.name));
        Cur {
            name: n,
            shape: cur.shape,
        }
    }

    fn bn(&mut self, cur: &Cur, bn: Bn) -> Cur {
        self.unary(cur, "batch_norm", "bn", &bn.attrs())
    }

    fn act(&mut self, cur: &Cur, act: Act) -> Cur {
        self.unary(cur, act.op(), "act", "")
    }

    fn add(&mut self, a: &Cur, b: &Cur) -> Cur {
        let n = self.name("add");
        self.line(format!("{n} = add({}, {})", a.name, b.name));
        Cur {
            name: n,
            shape: a.shape,
        }
    }

    /// The geometry of the convolution `l` on a `c x h x w` image, fitted to it: the kernel
    /// shrinks to the padded input, padding is dropped where it would grow the output
    /// past [`MAX_HW`], and chains use stride 1, one group and padding below the kernel.
    fn conv(&self, l: &Linear, (c, h, w): (usize, usize, usize)) -> Conv {
        let ch = l.ch.clamp(1, MAX_CH);
        let (stride, g) = if self.chain {
            (1, 1)
        } else {
            (l.stride.clamp(1, 2), groups(c, ch, l.groups))
        };
        let mut pad = [l.pad.min(1); 2];
        let mut kernel = [l.kernel[0].clamp(1, 3), l.kernel[1].clamp(1, 3)];
        let mut out = [0; 2];
        for (a, size) in [h, w].into_iter().enumerate() {
            if self.chain {
                pad[a] = pad[a].min(kernel[a] - 1);
            }
            kernel[a] = kernel[a].min(size + 2 * pad[a]);
            out[a] = (size + 2 * pad[a] - kernel[a]) / stride + 1;
            if out[a] > MAX_HW {
                pad[a] = 0;
                kernel[a] = kernel[a].min(size);
                out[a] = (size - kernel[a]) / stride + 1;
            }
        }
        Conv {
            c_in: c,
            ch,
            kernel,
            stride,
            pad,
            groups: g,
            out: Shape::Image {
                c: ch,
                h: out[0],
                w: out[1],
            },
        }
    }

    /// Writes the producer `l` (a convolution on an image, unless `l.dense`), with
    /// `operands` after its data operand when given (for hand-folded weights).
    fn linear(&mut self, cur: &Cur, l: &Linear) -> Cur {
        let cur = if l.dense {
            self.flatten(cur)
        } else {
            cur.clone()
        };
        match cur.shape {
            Shape::Image { c, h, w } => {
                let conv = self.conv(l, (c, h, w));
                let n = self.name("conv");
                self.line(format!(
                    "{n} = conv2d({}, {})",
                    cur.name,
                    conv.attrs(l.bias)
                ));
                Cur {
                    name: n,
                    shape: conv.out,
                }
            }
            Shape::Flat { .. } => {
                let ch = l.ch.clamp(1, MAX_CH);
                let n = self.name("fc");
                self.line(format!(
                    "{n} = dense({}, units={ch}, bias={})",
                    cur.name, l.bias
                ));
                Cur {
                    name: n,
                    shape: Shape::Flat { f: ch },
                }
            }
        }
    }

    fn pool(&mut self, cur: &Cur, p: &Pool) -> Cur {
        let Shape::Image { c, h, w } = cur.shape else {
            return cur.clone();
        };
        let ks = [p.kernel[0].clamp(1, 3), p.kernel[1].clamp(1, 3)];
        let mut pads = [p.pad.min(ks[0] / 2), p.pad.min(ks[1] / 2)];
        if ks[0] > h + 2 * pads[0] || ks[1] > w + 2 * pads[1] {
            return cur.clone();
        }
        let stride = p.stride.min(3);
        let s = |a: usize| if stride == 0 { ks[a] } else { stride };
        for (a, size) in [h, w].into_iter().enumerate() {
            // Padding may grow a stride-1 pool's output; keep it within MAX_HW.
            if (size + 2 * pads[a] - ks[a]) / s(a) + 1 > MAX_HW {
                pads[a] = 0;
            }
        }
        let out = |a: usize, size: usize| (size + 2 * pads[a] - ks[a]) / s(a) + 1;
        let stride_attr = if stride == 0 {
            String::new()
        } else {
            format!(", stride={stride}")
        };
        let (op, extra) = if p.max {
            ("max_pool2d", String::new())
        } else {
            (
                "avg_pool2d",
                if p.exclude_pad {
                    ", count_include_pad=false".to_string()
                } else {
                    String::new()
                },
            )
        };
        let n = self.name("pool");
        self.line(format!(
            "{n} = {op}({}, kernel=[{},{}]{stride_attr}, padding=[{},{}]{extra})",
            cur.name, ks[0], ks[1], pads[0], pads[1]
        ));
        Cur {
            name: n,
            shape: Shape::Image {
                c,
                h: out(0, h),
                w: out(1, w),
            },
        }
    }

    /// Declares the four BatchNorm-like parameters of a hand-folded op named `n` over `c`
    /// channels and writes `n.scale = bn_scale(...)` and `n.shift = bn_shift(...)`.
    fn scale_shift_params(&mut self, n: &str, c: usize, eps: &str) {
        for slot in ["weight", "bias", "running_mean", "running_var"] {
            self.line(format!("param {n}.{slot}: f32[{c}]"));
        }
        self.line(format!(
            "{n}.scale = bn_scale({n}.weight, {n}.running_var{eps})"
        ));
        self.line(format!(
            "{n}.shift = bn_shift({n}.weight, {n}.bias, {n}.running_mean, {n}.running_var{eps})"
        ));
    }

    fn folded(&mut self, cur: &Cur, f: &Folded) -> Cur {
        match f {
            Folded::ScaleShift => {
                let n = self.name("ss");
                self.scale_shift_params(&n, cur.shape.channels(), "");
                self.line(format!(
                    "{n} = scale_shift({}, {n}.scale, {n}.shift)",
                    cur.name
                ));
                Cur {
                    name: n,
                    shape: cur.shape,
                }
            }
            Folded::Linear(l) => {
                let cur = if l.dense {
                    self.flatten(cur)
                } else {
                    cur.clone()
                };
                let n = self.name("fold");
                // The folded op always has a bias: the BatchNorm's shift.
                let (op, attrs, shape, w_shape) = match cur.shape {
                    Shape::Image { c, h, w } => {
                        let conv = self.conv(l, (c, h, w));
                        ("conv2d", conv.attrs(true), conv.out, conv.weight_dims())
                    }
                    Shape::Flat { f } => {
                        let ch = l.ch.clamp(1, MAX_CH);
                        let attrs = format!("units={ch}, bias=true");
                        ("dense", attrs, Shape::Flat { f: ch }, format!("{ch},{f}"))
                    }
                };
                let ch = shape.channels();
                self.scale_shift_params(&n, ch, ", eps=1e-3");
                self.line(format!("param {n}.w: f32[{w_shape}]"));
                self.line(format!("{n}.w_folded = channel_scale({n}.w, {n}.scale)"));
                let bias = if l.bias {
                    self.line(format!("param {n}.b: f32[{ch}]"));
                    self.line(format!(
                        "{n}.b_folded = channel_affine({n}.b, {n}.scale, {n}.shift)"
                    ));
                    format!("{n}.b_folded")
                } else {
                    format!("{n}.shift")
                };
                self.line(format!(
                    "{n} = {op}({}, {n}.w_folded, {bias}, {attrs})",
                    cur.name
                ));
                Cur { name: n, shape }
            }
        }
    }

    fn block(&mut self, cur: &Cur, b: &Block) -> Cur {
        match b {
            Block::Layer {
                linear,
                bn,
                act,
                pool,
            } => {
                let mut x = self.linear(cur, linear);
                if let Some(bn) = bn {
                    x = self.bn(&x, *bn);
                }
                if let Some(a) = act {
                    x = self.act(&x, *a);
                }
                match (pool, x.shape) {
                    (Some(p), Shape::Image { .. }) => self.pool(&x, p),
                    _ => x,
                }
            }
            Block::Bn(bn, act) => {
                let x = self.bn(cur, *bn);
                match act {
                    Some(a) => self.act(&x, *a),
                    None => x,
                }
            }
            Block::Act(a) => self.act(cur, *a),
            Block::Pool(p) => self.pool(cur, p),
            Block::Flatten => self.flatten(cur),
            Block::Residual {
                linear,
                bn,
                act,
                skip_bn,
                after,
            } => {
                let mut branch = match cur.shape {
                    Shape::Image { c, .. } => {
                        let k = if linear.kernel[0] >= 2 { 3 } else { 1 };
                        let g = groups(c, c, linear.groups);
                        let n = self.name("conv");
                        self.line(format!(
                            "{n} = conv2d({}, channels={c}, kernel={k}, padding={}, groups={g}, bias={})",
                            cur.name,
                            k / 2,
                            linear.bias
                        ));
                        Cur {
                            name: n,
                            shape: cur.shape,
                        }
                    }
                    Shape::Flat { f } => {
                        let n = self.name("fc");
                        self.line(format!(
                            "{n} = dense({}, units={f}, bias={})",
                            cur.name, linear.bias
                        ));
                        Cur {
                            name: n,
                            shape: cur.shape,
                        }
                    }
                };
                if let Some(bn) = bn {
                    branch = self.bn(&branch, *bn);
                }
                if let Some(a) = act {
                    branch = self.act(&branch, *a);
                }
                let skip = match skip_bn {
                    Some(bn) => self.bn(cur, *bn),
                    None => cur.clone(),
                };
                let y = self.add(&branch, &skip);
                match after {
                    Some(a) => self.act(&y, *a),
                    None => y,
                }
            }
            Block::Shared {
                linear,
                bn,
                act,
                other,
            } => {
                let p = self.linear(cur, linear);
                let mut y = self.bn(&p, *bn);
                if let Some(a) = act {
                    y = self.act(&y, *a);
                }
                let o = match other {
                    SharedUse::Identity => p,
                    SharedUse::Act(a) => self.act(&p, *a),
                    SharedUse::Bn(bn) => self.bn(&p, *bn),
                };
                self.add(&y, &o)
            }
            Block::Folded(f) => self.folded(cur, f),
            Block::LoweredBn { train, bn } => {
                let op = if *train {
                    "batch_norm_train"
                } else {
                    "batch_norm_infer"
                };
                self.unary(cur, op, "bn", &bn.attrs())
            }
        }
    }
}

impl Case {
    /// The model text, headed by comments giving the batch, threads and seed of the check
    /// (the harness reads them back when it replays a file).
    pub fn ir(&self) -> String {
        let mut w = Writer {
            lines: Vec::new(),
            next: 0,
            chain: self.chain,
        };
        let (decl, shape) = match self.input {
            Input::Image { c, h, w } => (format!("f32[N,{c},{h},{w}]"), Shape::Image { c, h, w }),
            Input::Flat { f } => (format!("f32[N,{f}]"), Shape::Flat { f }),
        };
        w.line(format!(
            "# random graph: batch {}, threads {}, seed {}{}",
            self.batch,
            self.threads,
            self.seed,
            if self.chain { ", chain" } else { "" }
        ));
        w.line(format!("input x: {decl}"));
        let mut cur = Cur {
            name: "x".into(),
            shape,
        };
        for b in &self.blocks {
            cur = w.block(&cur, b);
        }
        let flat = w.flatten(&cur);
        let n = w.name("fc");
        w.line(format!(
            "{n} = dense({}, units={}, bias={})",
            flat.name, self.head.classes, self.head.bias
        ));
        let mut out = Cur {
            name: n,
            shape: Shape::Flat {
                f: self.head.classes,
            },
        };
        if let Some(bn) = self.head.bn {
            out = w.bn(&out, bn);
        }
        if self.head.softmax && !self.chain {
            out = w.unary(&out, "softmax", "prob", "");
        }
        w.line(format!("output {}", out.name));
        let mut text = w.lines.join("\n");
        text.push('\n');
        text
    }
}
