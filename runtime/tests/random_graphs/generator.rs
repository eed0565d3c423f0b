//! A proptest generator of valid models in bnc's text IR, from the whole forward op set:
//! `conv2d` (kernels, strides, padding, groups, with and without bias), `dense`,
//! `batch_norm` (every attribute) and the lowered `batch_norm_infer`/`batch_norm_train`,
//! the three activations, both pools (padding, `count_include_pad`), `flatten`, `add`,
//! `softmax`, and the ops `fold-bn` emits written by hand (`scale_shift`, `bn_scale`,
//! `bn_shift`, `channel_scale`, `channel_affine`). The backward ops and
//! `softmax_cross_entropy` are exercised by every train-mode check, which adds them.
//!
//! BatchNorm appears in every position: after a convolution and after a dense layer (in a
//! layer, where it folds), on its own after an input, activation, pool or add (so before
//! a convolution or dense layer), on a residual branch and on the skip path of an `add`,
//! and on a shared producer (a convolution or dense whose output feeds the BatchNorm and
//! something else, so it cannot fold).
//!
//! A model is a list of [`Block`]s rendered against the current shape: every field is a
//! raw choice that the renderer fits to the shape (a kernel larger than the input shrinks,
//! a pool on a rank-2 value is dropped), so any list, and so any list proptest shrinks to,
//! renders to a valid model. Half the models are *chains* of
//! `conv2d|dense -> [batch_norm] -> [activation] -> [pool]` layers with stride-1, ungrouped
//! convolutions, the shape the JIT trainer compiles; the other half use every block.
//! Shapes stay small: batch 1 to 4, spatial sizes up to 12, at most 8 channels.

use std::fmt;

use proptest::prelude::*;

/// The largest spatial size a value may grow to.
const MAX_HW: usize = 12;
/// The most channels or features.
const MAX_CH: usize = 8;

/// An activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `sigmoid`.
    Sigmoid,
    /// `relu`.
    Relu,
    /// `tanh`.
    Tanh,
}

impl Act {
    fn op(self) -> &'static str {
        match self {
            Act::Sigmoid => "sigmoid",
            Act::Relu => "relu",
            Act::Tanh => "tanh",
        }
    }
}

/// BatchNorm attributes: `eps` and `momentum` are picked from a short list, or left at
/// their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bn {
    /// 0: default `1e-5`; 1: `1e-3`; 2: `0.1`.
    pub eps: u8,
    /// 0: default `0.9`; 1: `0.0`; 2: `0.5`; 3: `1` (written as an integer).
    pub momentum: u8,
    /// `running_var=unbiased`.
    pub unbiased: bool,
}

impl Bn {
    fn attrs(self) -> String {
        let mut a = String::new();
        match self.eps {
            1 => a.push_str(", eps=1e-3"),
            2 => a.push_str(", eps=0.1"),
            _ => {}
        }
        match self.momentum {
            1 => a.push_str(", momentum=0.0"),
            2 => a.push_str(", momentum=0.5"),
            3 => a.push_str(", momentum=1"),
            _ => {}
        }
        if self.unbiased {
            a.push_str(", running_var=unbiased");
        }
        a
    }
}

/// A convolution on an image, or a dense layer on features (an image is flattened first
/// when `dense` is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Output channels or units, 1 to 8.
    pub ch: usize,
    /// Kernel height and width, 1 to 3 (shrunk to fit the padded input).
    pub kernel: [usize; 2],
    /// Stride, 1 or 2 (1 in chains).
    pub stride: usize,
    /// Padding, 0 or 1 (less than the kernel in chains).
    pub pad: usize,
    /// Picks the group count among the common divisors of the channel counts (1 in chains).
    pub groups: usize,
    /// Whether the op has a bias.
    pub bias: bool,
    /// Flatten an image and apply a dense layer instead of a convolution.
    pub dense: bool,
}

/// A pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// `max_pool2d` instead of `avg_pool2d`.
    pub max: bool,
    /// Window height and width, 1 to 3.
    pub kernel: [usize; 2],
    /// Stride, 1 to 3 (the default, the window, when 0).
    pub stride: usize,
    /// Padding, at most half the window.
    pub pad: usize,
    /// `count_include_pad=false` (average pooling only).
    pub exclude_pad: bool,
}

/// The other use of a shared producer `p` next to `batch_norm(p)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedUse {
    /// `add(..., p)`.
    Identity,
    /// `add(..., act(p))`.
    Act(Act),
    /// `add(..., batch_norm(p))`: two BatchNorms on one producer.
    Bn(Bn),
}

/// How a hand-written folded op appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Folded {
    /// `scale_shift(x, bn_scale(...), bn_shift(...))`.
    ScaleShift,
    /// A convolution or dense layer whose weight is `channel_scale(w, bn_scale(...))` and
    /// whose bias is `channel_affine(b, s, bn_shift(...))` (or `bn_shift(...)` alone).
    Linear(Linear),
}

/// One step of a model, applied to the current value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// `conv2d|dense -> [batch_norm] -> [activation] -> [pool]`.
    Layer {
        /// The producer.
        linear: Linear,
        /// A BatchNorm after it.
        bn: Option<Bn>,
        /// An activation after that.
        act: Option<Act>,
        /// A pool after that (images only).
        pool: Option<Pool>,
    },
    /// A BatchNorm on whatever the current value is, then maybe an activation.
    Bn(Bn, Option<Act>),
    /// An activation.
    Act(Act),
    /// A pool (images only).
    Pool(Pool),
    /// `flatten`.
    Flatten,
    /// `add(act(bn(linear(x))), bn(x))` with every part optional; the linear op keeps the
    /// shape (same-padded convolution, or dense with as many units as features).
    Residual {
        /// The branch's producer; only `kernel[0]` (1 or 3), `groups` and `bias` are used.
        linear: Linear,
        /// A BatchNorm on the branch.
        bn: Option<Bn>,
        /// An activation on the branch.
        act: Option<Act>,
        /// A BatchNorm on the skip path.
        skip_bn: Option<Bn>,
        /// An activation after the add.
        after: Option<Act>,
    },
    /// `p = linear(x); add(act(batch_norm(p)), use(p))`.
    Shared {
        /// The shared producer.
        linear: Linear,
        /// The BatchNorm on it.
        bn: Bn,
        /// An activation after the BatchNorm.
        act: Option<Act>,
        /// The other use of `p`.
        other: SharedUse,
    },
    /// Folded ops written by hand.
    Folded(Folded),
    /// `batch_norm_infer` (`train = false`) or `batch_norm_train` written directly.
    LoweredBn {
        /// Which one.
        train: bool,
        /// Its attributes.
        bn: Bn,
    },
}

/// The model's last layer: `dense(classes)`, maybe a BatchNorm, maybe a softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Classes, 2 to 6.
    pub classes: usize,
    /// The dense layer's bias.
    pub bias: bool,
    /// A BatchNorm on the logits.
    pub bn: Option<Bn>,
    /// A softmax on the logits (free models only).
    pub softmax: bool,
}

/// The input's per-image shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// `f32[N,c,h,w]`.
    Image {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// `f32[N,f]`.
    Flat {
        /// Features.
        f: usize,
    },
}

/// A generated test case: the model and everything needed to reproduce its check.
#[derive(Clone, PartialEq, Eq)]
pub struct Case {
    /// Whether the model is a chain of trainable layers.
    pub chain: bool,
    /// The input.
    pub input: Input,
    /// The blocks, in order.
    pub blocks: Vec<Block>,
    /// The last layer.
    pub head: Head,
    /// The batch size, 1 to 4.
    pub batch: usize,
    /// Threads for the JIT, 1 or 2.
    pub threads: usize,
    /// The seed of the parameters and inputs.
    pub seed: u64,
}

impl fmt::Debug for Case {
    /// A case prints as the model file that reproduces it (proptest prints the minimal
    /// failing case with this).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n{}", self.ir())
    }
}

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
        .filter(|g| a % g == 0 && b % g == 0)
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

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![Just(Act::Relu), Just(Act::Sigmoid), Just(Act::Tanh)]
}

fn bn() -> impl Strategy<Value = Bn> {
    (0u8..3, 0u8..4, prop::bool::weighted(0.3)).prop_map(|(eps, momentum, unbiased)| Bn {
        eps,
        momentum,
        unbiased,
    })
}

fn linear(dense_weight: f64) -> impl Strategy<Value = Linear> {
    (
        1usize..=MAX_CH,
        (1usize..=3, 1usize..=3),
        1usize..=2,
        0usize..=1,
        0usize..4,
        any::<bool>(),
        prop::bool::weighted(dense_weight),
    )
        .prop_map(|(ch, (kh, kw), stride, pad, groups, bias, dense)| Linear {
            ch,
            kernel: [kh, kw],
            stride,
            pad,
            groups,
            bias,
            dense,
        })
}

fn pool() -> impl Strategy<Value = Pool> {
    (
        any::<bool>(),
        (1usize..=3, 1usize..=3),
        0usize..=3,
        0usize..=1,
        any::<bool>(),
    )
        .prop_map(|(max, (kh, kw), stride, pad, exclude_pad)| Pool {
            max,
            kernel: [kh, kw],
            stride,
            pad,
            exclude_pad,
        })
}

/// A trainable layer: BatchNorm more often than not.
fn layer() -> impl Strategy<Value = Block> {
    (
        linear(0.3),
        prop::option::weighted(0.6, bn()),
        prop::option::of(act()),
        prop::option::weighted(0.4, pool()),
    )
        .prop_map(|(linear, bn, act, pool)| Block::Layer {
            linear,
            bn,
            act,
            pool,
        })
}

/// Any block; the layer and the BatchNorm positions weigh most.
fn block() -> impl Strategy<Value = Block> {
    let shared_use = prop_oneof![
        Just(SharedUse::Identity),
        act().prop_map(SharedUse::Act),
        bn().prop_map(SharedUse::Bn),
    ];
    prop_oneof![
        4 => layer(),
        2 => (bn(), prop::option::of(act())).prop_map(|(b, a)| Block::Bn(b, a)),
        1 => act().prop_map(Block::Act),
        1 => pool().prop_map(Block::Pool),
        1 => Just(Block::Flatten),
        2 => (
            linear(0.0),
            prop::option::weighted(0.7, bn()),
            prop::option::of(act()),
            prop::option::weighted(0.4, bn()),
            prop::option::of(act()),
        )
            .prop_map(|(linear, bn, act, skip_bn, after)| Block::Residual {
                linear,
                bn,
                act,
                skip_bn,
                after,
            }),
        2 => (linear(0.3), bn(), prop::option::of(act()), shared_use).prop_map(
            |(linear, bn, act, other)| Block::Shared {
                linear,
                bn,
                act,
                other,
            }
        ),
        1 => prop_oneof![
            Just(Folded::ScaleShift),
            linear(0.3).prop_map(Folded::Linear)
        ]
        .prop_map(Block::Folded),
        1 => (prop::bool::weighted(0.3), bn())
            .prop_map(|(train, bn)| Block::LoweredBn { train, bn }),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => (1usize..=3, 4usize..=MAX_HW, 4usize..=MAX_HW)
            .prop_map(|(c, h, w)| Input::Image { c, h, w }),
        1 => (1usize..=MAX_CH).prop_map(|f| Input::Flat { f }),
    ]
}

fn head(chain: bool) -> impl Strategy<Value = Head> {
    (
        2usize..=6,
        any::<bool>(),
        prop::option::weighted(0.25, bn()),
        prop::bool::weighted(if chain { 0.0 } else { 0.15 }),
    )
        .prop_map(|(classes, bias, bn, softmax)| Head {
            classes,
            bias,
            bn,
            softmax,
        })
}

/// A whole case: half chains of one to three layers, half free models of one to five
/// blocks.
pub fn case() -> impl Strategy<Value = Case> {
    any::<bool>().prop_flat_map(|chain| {
        let blocks = if chain {
            prop::collection::vec(layer(), 1..=3).boxed()
        } else {
            prop::collection::vec(block(), 1..=5).boxed()
        };
        (
            input(),
            blocks,
            head(chain),
            1usize..=4,
            1usize..=2,
            any::<u64>(),
        )
            .prop_map(move |(input, blocks, head, batch, threads, seed)| Case {
                chain,
                input,
                blocks,
                head,
                batch,
                threads,
                seed,
            })
    })
}
