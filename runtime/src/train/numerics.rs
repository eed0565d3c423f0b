//! The numerics guard (`bnc train --check-numerics`): after a step, every buffer the step
//! wrote is scanned for NaN and infinity in the order the step produced them, so the first
//! non-finite value found is the one an op made from finite inputs, and the error names
//! that op's IR node (from the plan's [`LayerNodes`]).
//!
//! The order is the step's: forward layer by layer (the linear output `z`, the activation
//! output `a`, the pooled output), then backward from the loss (the gradient with respect
//! to each layer's output, then to its linear output, then the bias and weight gradients),
//! then the merged gradients, the updated parameters and the running statistics. Within a
//! buffer the units are visited in order; each unit's buffers are read only for the images
//! it ran.

use thiserror::Error;

use bnc_compiler::lower::train::{LayerNodes, NodeRef, TrainLayer};

use super::{LayerBufs, Trainer};

/// Where a non-finite value was found.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Site {
    /// The forward output of a node, for one image of the batch.
    #[error("the output of {node}{} for image {image} of the batch", Fused(with))]
    Output {
        /// The node that produced the value.
        node: NodeRef,
        /// The nodes computed before it in the same kernel (whose output is not stored).
        with: Vec<NodeRef>,
        /// The image's index in the batch.
        image: usize,
    },
    /// The gradient with respect to a node's output, for one image.
    #[error(
        "the gradient with respect to the output of {of}, computed by the backward of {by}, \
         for image {image} of the batch"
    )]
    Gradient {
        /// The node whose output the gradient is taken with respect to.
        of: NodeRef,
        /// The node whose backward computed it.
        by: NodeRef,
        /// The image's index in the batch.
        image: usize,
    },
    /// The gradient of a trainable parameter.
    #[error("the gradient of `{param}`, computed by the backward of {by}")]
    ParamGradient {
        /// The parameter's name.
        param: String,
        /// The node that uses the parameter.
        by: NodeRef,
    },
    /// A trainable parameter after the optimizer's update.
    #[error("`{param}` after the SGD update")]
    Param {
        /// The parameter's name.
        param: String,
    },
    /// A running statistic after its update.
    #[error("`{param}` after the running-statistics update of {by}")]
    RunningStat {
        /// The running mean's or variance's name.
        param: String,
        /// The BatchNorm node.
        by: NodeRef,
    },
}

/// Prints `, computed in one kernel with ...` for a non-empty list of nodes.
struct Fused<'a>(&'a [NodeRef]);

impl std::fmt::Display for Fused<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            let sep = if i == 0 {
                ", computed in one kernel with "
            } else {
                " and "
            };
            write!(f, "{sep}{n}")?;
        }
        Ok(())
    }
}

/// The first NaN or infinity a step produced.
#[derive(Clone, Debug, Error, PartialEq)]
#[error("non-finite value {value} in {site}")]
pub struct NonFinite {
    /// The value: NaN, `inf` or `-inf`.
    pub value: f32,
    /// Where it was found.
    pub site: Site,
}

/// The node whose output the layer hands to the next one.
fn last_node(n: &LayerNodes) -> &NodeRef {
    n.pool
        .as_ref()
        .or(n.act.as_ref())
        .or(n.bn.as_ref())
        .unwrap_or(&n.linear)
}

/// The node whose output is stored in `a` and the nodes its kernel computes before it:
/// with a BatchNorm, the normalize-activate(-pool) kernel; without, the linear kernel,
/// which applies the bias and activation in its epilogue.
fn a_node(n: &LayerNodes) -> (&NodeRef, Vec<NodeRef>) {
    match (&n.bn, &n.act) {
        (Some(bn), Some(act)) => (act, vec![bn.clone()]),
        (Some(bn), None) => (bn, Vec::new()),
        (None, Some(act)) => (act, vec![n.linear.clone()]),
        (None, None) => (&n.linear, Vec::new()),
    }
}

/// The nodes the kernel that writes the pooled output computes before the pool.
fn pool_with(n: &LayerNodes) -> Vec<NodeRef> {
    match &n.bn {
        Some(bn) => std::iter::once(bn).chain(&n.act).cloned().collect(),
        None => Vec::new(),
    }
}

/// The node right after the linear one, whose backward yields the gradient of `z`.
fn after_linear(n: &LayerNodes) -> &NodeRef {
    n.bn.as_ref()
        .or(n.act.as_ref())
        .or(n.pool.as_ref())
        .unwrap_or(&n.linear)
}

/// The first non-finite value of `data` as (index, value).
fn first_bad(data: &[f32]) -> Option<(usize, f32)> {
    data.iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, data[i]))
}

impl Trainer {
    /// Checks every buffer the last [`Trainer::step`] wrote, and the parameters and running
    /// statistics it updated, for NaN and infinity; the error names the first value in the
    /// order the step computed them and the IR node that produced it. Costs a pass over the
    /// step's memory, which is small next to the step's arithmetic. A BatchNorm layer's `z`
    /// is checked only if the step kept it ([`Trainer::keep_z`]); otherwise a non-finite `z`
    /// is found in the activation it feeds.
    pub fn check_numerics(&self) -> Result<(), NonFinite> {
        let layers = &self.plan.layers;
        // Per-image buffers of every thread, in production order.
        let per_image = |i: usize,
                         buf: fn(&LayerBufs) -> &[f32],
                         len: usize,
                         site: &dyn Fn(usize) -> Site|
         -> Result<(), NonFinite> {
            for unit in &self.units[..self.used] {
                let (n0, n1) = unit.range;
                let data = buf(&unit.layers[i]);
                let end = ((n1 - n0) * len).min(data.len());
                if let Some((k, value)) = first_bad(&data[..end]) {
                    return Err(NonFinite {
                        value,
                        site: site(n0 + k / len.max(1)),
                    });
                }
            }
            Ok(())
        };
        let output = |node: &NodeRef, with: Vec<NodeRef>| {
            let node = node.clone();
            move |image| Site::Output {
                node: node.clone(),
                with: with.clone(),
                image,
            }
        };
        // Layers whose `dz` the step wrote over `z` (see `Trainer::keep_z`): their `z` is
        // gone, and the buffer is checked as the gradient it now holds.
        let dz_in_z = |l: &TrainLayer| self.z_overwritten && super::dz_in_z(l, false);
        for (i, l) in layers.iter().enumerate() {
            let n = &l.nodes;
            if l.bn.is_some() && !dz_in_z(l) {
                per_image(i, |b| &b.z, l.z_len, &output(&n.linear, Vec::new()))?;
            }
            let (a, with) = a_node(n);
            per_image(i, |b| &b.a, l.z_len, &output(a, with))?;
            if let Some(pool) = &n.pool {
                per_image(i, |b| &b.p, l.out_len, &output(pool, pool_with(n)))?;
            }
        }
        for (i, l) in layers.iter().enumerate().rev() {
            let n = &l.nodes;
            let by = match layers.get(i + 1) {
                Some(next) => next.nodes.linear.clone(),
                None => self.plan.loss.clone(),
            };
            let gradient = |of: &NodeRef, by: NodeRef| {
                let of = of.clone();
                move |image| Site::Gradient {
                    of: of.clone(),
                    by: by.clone(),
                    image,
                }
            };
            per_image(i, |b| &b.d_out, l.out_len, &gradient(last_node(n), by))?;
            per_image(
                i,
                if dz_in_z(l) { |b| &b.z } else { |b| &b.d_z },
                l.z_len,
                &gradient(&n.linear, after_linear(n).clone()),
            )?;
            self.check_partials(i, l)?;
        }
        for (lp, l) in self.layers.iter().zip(layers) {
            let bn = l.nodes.bn.as_ref();
            let trainable = [
                (Some(lp.weight), &l.nodes.linear),
                (lp.bias, &l.nodes.linear),
                (lp.bn.as_ref().map(|b| b.0), bn.unwrap_or(&l.nodes.linear)),
                (lp.bn.as_ref().map(|b| b.1), bn.unwrap_or(&l.nodes.linear)),
            ];
            for (index, by) in trainable {
                if let Some(p) = index.map(|k| &self.sgd.params[k]) {
                    found(&p.grad, || Site::ParamGradient {
                        param: p.name.clone(),
                        by: by.clone(),
                    })?;
                }
            }
        }
        self.check_parameters()
    }

    /// Checks the trainable parameters and the running statistics for NaN and infinity:
    /// what [`Trainer::check_numerics`] ends with, cheap enough to run after every epoch.
    pub fn check_parameters(&self) -> Result<(), NonFinite> {
        for p in &self.sgd.params {
            found(&p.value, || Site::Param {
                param: p.name.clone(),
            })?;
        }
        for (lp, l) in self.layers.iter().zip(&self.plan.layers) {
            if let (Some((_, _, rm, rv)), Some(bn), Some(node)) = (&lp.bn, &l.bn, &l.nodes.bn_stats)
            {
                for (stat, name) in [(rm, &bn.running_mean), (rv, &bn.running_var)] {
                    found(stat, || Site::RunningStat {
                        param: name.clone(),
                        by: node.clone(),
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The per-unit bias and weight gradients of layer `i`, `l` (whole buffers: they do not
    /// depend on the number of images).
    fn check_partials(&self, i: usize, l: &TrainLayer) -> Result<(), NonFinite> {
        let lp = &self.layers[i];
        let params = [(lp.bias, true), (Some(lp.weight), false)];
        for (index, is_bias) in params {
            let Some(p) = index.map(|k| &self.sgd.params[k]) else {
                continue;
            };
            for unit in &self.units[..self.used] {
                let lb = &unit.layers[i];
                let data = if is_bias { &lb.gb } else { &lb.gw };
                found(data, || Site::ParamGradient {
                    param: p.name.clone(),
                    by: l.nodes.linear.clone(),
                })?;
            }
        }
        Ok(())
    }
}

/// An error at `site` if `data` holds a non-finite value.
fn found(data: &[f32], site: impl FnOnce() -> Site) -> Result<(), NonFinite> {
    match first_bad(data) {
        Some((_, value)) => Err(NonFinite {
            value,
            site: site(),
        }),
        None => Ok(()),
    }
}
