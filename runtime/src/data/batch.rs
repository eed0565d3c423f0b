//! Minibatches and the seeded per-epoch shuffle.
//!
//! The shuffle must give the same order on every machine, compiler and crate version, so
//! that a training run is reproducible from its seed: it uses its own documented
//! generator (SplitMix64) and a Fisher–Yates shuffle with unbiased bounded draws, all in
//! `u64` arithmetic so that the width of `usize` does not matter. Like d2l's DataLoader
//! (PyTorch's `drop_last=False`), the last partial batch is kept, so every example is
//! seen once per epoch.

use std::num::NonZeroUsize;

use bnc_compiler::Tensor;

use super::Dataset;

/// The SplitMix64 generator (Steele, Lea and Flood, 2014; the reference is Vigna's
/// `splitmix64.c`): a 64-bit counter advanced by the golden-ratio increment, each output
/// the counter passed through a bijective mixing function. Small, fast, platform
/// independent, and good enough for shuffling and weight initialization.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The golden-ratio increment, `2^64 / phi` rounded to odd.
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator starting from `seed`; every seed, including 0, is fine.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The generator for one epoch of a run seeded with `seed`: the two numbers are mixed
    /// into one starting state, so consecutive epochs (and seeds) start far apart.
    pub fn for_epoch(seed: u64, epoch: u64) -> SplitMix64 {
        SplitMix64::new(mix(seed ^ mix(epoch.wrapping_add(Self::GAMMA))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        mix(self.state)
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits scaled by 2^-53 are exactly representable and uniform.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `[0, bound)`, without modulo bias (Lemire's multiply-shift
    /// with rejection, 2019); 0 when `bound` is 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        let mut product = u128::from(self.next_u64()) * u128::from(bound);
        if (product as u64) < bound {
            // Reject the few low words that would make some results more likely.
            let threshold = bound.wrapping_neg() % bound;
            while (product as u64) < threshold {
                product = u128::from(self.next_u64()) * u128::from(bound);
            }
        }
        (product >> 64) as u64
    }
}

/// SplitMix64's output function (a variant of MurmurHash3's finalizer): a bijection on
/// `u64` that spreads every input bit over every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A permutation of `0..n` for epoch `epoch` of a run seeded with `seed`: a Fisher–Yates
/// shuffle driven by [`SplitMix64::for_epoch`]. The same arguments give the same order on
/// every platform.
pub fn shuffled_indices(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::for_epoch(seed, epoch);
    for i in (1..n).rev() {
        // `j <= i < n`, so converting back to usize cannot truncate.
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// One minibatch: images `f32[b, 1, rows, cols]` scaled to `[0, 1]` and class labels
/// `i32[b]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The images, `f32[b, 1, rows, cols]`.
    pub images: Tensor,
    /// The labels, `i32[b]`.
    pub labels: Tensor,
}

/// The minibatches of one pass over a [`Dataset`] in a given order; made by
/// [`Dataset::batches`] or [`Dataset::shuffled_batches`]. Either iterate (each batch is a
/// fresh pair of tensors) or call [`Batches::next_into`] to reuse two buffers.
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    dataset: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    next: usize,
}

impl<'a> Batches<'a> {
    /// Batches over `dataset` in `order`, whose entries must all be below `dataset.len()`.
    pub(crate) fn new(dataset: &'a Dataset, order: Vec<usize>, batch_size: NonZeroUsize) -> Self {
        Batches {
            dataset,
            order,
            batch_size: batch_size.get(),
            next: 0,
        }
    }

    /// The order in which examples are visited this pass.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The number of examples per batch (the last batch may hold fewer).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The indices of the next batch, advancing past them; `None` at the end.
    fn advance(&mut self) -> Option<&[usize]> {
        let start = self.next;
        if start >= self.order.len() {
            return None;
        }
        let end = self.order.len().min(start + self.batch_size);
        self.next = end;
        Some(&self.order[start..end])
    }

    /// Gathers the next batch into `images` (`b * rows * cols` pixels, row-major) and
    /// `labels` (`b` classes), replacing their contents, and returns `b`; `None` at the
    /// end. Once the buffers have grown to a full batch this never allocates.
    pub fn next_into(&mut self, images: &mut Vec<f32>, labels: &mut Vec<i32>) -> Option<usize> {
        let dataset = self.dataset;
        let indices = self.advance()?;
        dataset.gather(indices, images, labels);
        Some(indices.len())
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        let b = self.next_into(&mut images, &mut labels)?;
        let (rows, cols) = (self.dataset.rows(), self.dataset.cols());
        // `gather` wrote exactly b*rows*cols pixels and b labels, so both shapes match.
        let images = Tensor::new(vec![b, 1, rows, cols], images)?;
        let labels = Tensor::new_i32(vec![b], labels)?;
        Some(Batch { images, labels })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.order.len().saturating_sub(self.next);
        let n = left.div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("nonzero")
    }

    /// SplitMix64 reproduces the reference implementation's outputs for seed 1234567.
    #[test]
    fn splitmix64_matches_reference() {
        let mut rng = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    /// Bounded draws stay in range and floats stay in [0, 1).
    #[test]
    fn bounded_draws_in_range() {
        let mut rng = SplitMix64::new(7);
        for bound in [1u64, 2, 3, 10, 1 << 40, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.below(bound) < bound);
            }
        }
        assert_eq!(rng.below(0), 0);
        for _ in 0..1000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }

    /// The shuffle is a permutation, reproducible from (seed, epoch), and different for
    /// another epoch or seed; the pinned prefix guards against silent changes.
    #[test]
    fn shuffle_is_deterministic_permutation() {
        let a = shuffled_indices(1000, 42, 0);
        assert_eq!(a, shuffled_indices(1000, 42, 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, shuffled_indices(1000, 42, 1));
        assert_ne!(a, shuffled_indices(1000, 43, 0));
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        assert_eq!(shuffled_indices(10, 42, 0), PINNED_10_42_0);

        assert!(shuffled_indices(0, 1, 2).is_empty());
        assert_eq!(shuffled_indices(1, 1, 2), [0]);
    }

    /// `shuffled_indices(10, 42, 0)`, cross-checked against an independent Python
    /// implementation of the documented algorithm when the shuffle was written.
    const PINNED_10_42_0: [usize; 10] = [5, 1, 4, 8, 6, 3, 9, 2, 0, 7];

    fn tiny_dataset(n: usize) -> Dataset {
        // Image i is filled with i/10, and its label is i % 10.
        let images = (0..n).flat_map(|i| [i as f32 / 10.0; 4]).collect();
        let labels = (0..n).map(|i| (i % 10) as i32).collect();
        Dataset::new(images, labels, 2, 2).expect("consistent parts")
    }

    /// Batches cover the data in order, keep the last partial batch, and have the
    /// documented shapes.
    #[test]
    fn batches_keep_the_last_partial_batch() {
        let data = tiny_dataset(7);
        let batches: Vec<Batch> = data.batches(nz(3)).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].images.shape(), &[3, 1, 2, 2]);
        assert_eq!(batches[2].images.shape(), &[1, 1, 2, 2]);
        assert_eq!(batches[2].labels.as_i32(), Some(&[6][..]));
        assert_eq!(batches[1].labels.as_i32(), Some(&[3, 4, 5][..]));
        assert_eq!(
            batches[1].images.as_f32().map(|p| p[4]),
            Some(0.4),
            "image 4's first pixel"
        );
        assert_eq!(data.batches(nz(3)).len(), 3);
        assert_eq!(data.batches(nz(7)).len(), 1);
        assert_eq!(tiny_dataset(0).batches(nz(3)).count(), 0);
    }

    /// Shuffled batches follow `shuffled_indices`, and `next_into` reuses its buffers.
    #[test]
    fn shuffled_batches_follow_the_shuffle() {
        let data = tiny_dataset(25);
        let order = shuffled_indices(25, 9, 3);
        let mut batches = data.shuffled_batches(nz(10), 9, 3);
        assert_eq!(batches.order(), &order[..]);

        let (mut images, mut labels) = (Vec::new(), Vec::new());
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        while let Some(b) = batches.next_into(&mut images, &mut labels) {
            assert_eq!(images.len(), b * 4);
            assert_eq!(labels.len(), b);
            sizes.push(b);
            seen.extend(images.chunks(4).map(|img| (img[0] * 10.0).round() as usize));
        }
        assert_eq!(sizes, [10, 10, 5]);
        assert_eq!(seen, order);
    }
}
