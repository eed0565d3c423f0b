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
//! A model is a list of [`Block`]s rendered (`render.rs`) against the current shape: every
//! field is a raw choice that the renderer fits to the shape (a kernel larger than the input shrinks,
//! a pool on a rank-2 value is dropped), so any list, and so any list proptest shrinks to,
//! renders to a valid model. Half the models are *chains* of
//! `conv2d|dense -> [batch_norm] -> [activation] -> [pool]` layers with stride-1, ungrouped
//! convolutions, the shape the JIT trainer compiles; the other half use every block.
//! Shapes stay small: batch 1 to 4, spatial sizes up to 12, at most 8 channels.

use std::fmt;

use proptest::prelude::*;

/// The largest spatial size a value may grow to.
pub const MAX_HW: usize = 12;
/// The most channels or features.
pub const MAX_CH: usize = 8;

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
    /// The op's text name.
    pub fn op(self) -> &'static str {
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
    /// The attributes as written after the operand (`, eps=1e-3, ...`).
    pub fn attrs(self) -> String {
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
