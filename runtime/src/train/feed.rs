//! Batches fed to a [`Trainer`] one ahead: each next batch is gathered by a worker thread
//! while the step's update runs ([`Trainer::step_and`]), as `bnc train` does.

use super::{StepStats, TrainError, Trainer};
use crate::data::Batches;

/// The batches of an epoch with the one to train on next already gathered, and two
/// buffer pairs that trade places after every step.
pub struct Feed<'a> {
    batches: Batches<'a>,
    images: Vec<f32>,
    labels: Vec<i32>,
    next_images: Vec<f32>,
    next_labels: Vec<i32>,
    /// The size of the batch in `images`, if there is one.
    ready: Option<usize>,
}

impl<'a> Feed<'a> {
    /// Gathers the first of `batches`.
    pub fn new(mut batches: Batches<'a>) -> Feed<'a> {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        let ready = batches.next_into(&mut images, &mut labels);
        Feed {
            batches,
            images,
            labels,
            next_images: Vec::new(),
            next_labels: Vec::new(),
            ready,
        }
    }

    /// Whether a batch is left to train on.
    pub fn has_next(&self) -> bool {
        self.ready.is_some()
    }

    /// Trains `t` on the next batch, gathering the one after it beside the update; returns
    /// the step's result and the batch's size, or `None` once the batches are done (or
    /// after a refused batch, which gathers nothing).
    pub fn step(&mut self, t: &mut Trainer) -> Option<Result<(StepStats, usize), TrainError>> {
        let size = self.ready?;
        let mut next = None;
        let (batches, images, labels) = (
            &mut self.batches,
            &mut self.next_images,
            &mut self.next_labels,
        );
        let result = t.step_and(&self.images, &self.labels, &mut || {
            next = batches.next_into(images, labels);
        });
        self.ready = next;
        std::mem::swap(&mut self.images, &mut self.next_images);
        std::mem::swap(&mut self.labels, &mut self.next_labels);
        Some(result.map(|s| (s, size)))
    }
}
