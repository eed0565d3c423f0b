//! How the threads of one training step swap their partial results (BatchNorm statistics
//! and backward sums): each publishes a vector, waits for the others, and reads them all in
//! thread order.
//!
//! The waits are short (a few microseconds between two kernels), so the barrier spins
//! before it yields: parking a thread on a futex and waking it costs more than the wait.
//! The slots are double-buffered by the call's parity, which makes one barrier per exchange
//! enough: a thread can only write a slot of parity `p` again after the next exchange's
//! barrier, which every thread reaches only after reading this one's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Spins before a waiting thread starts yielding its core.
const SPINS: u32 = 1 << 14;

/// A reusable barrier for a fixed number of threads that spins, then yields.
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(threads: usize) -> SpinBarrier {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Returns once all `threads` have called `wait` for this generation.
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            // The last one in resets the count and releases the others.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < SPINS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Partial results exchanged between the threads of one step.
pub(super) struct Exchange {
    /// Per parity, per thread.
    slots: [Vec<Mutex<Vec<f64>>>; 2],
    barrier: SpinBarrier,
    /// How many exchanges each thread has made (its own count).
    calls: Vec<AtomicUsize>,
}

impl Exchange {
    pub(super) fn new(threads: usize) -> Exchange {
        let slots = || (0..threads).map(|_| Mutex::new(Vec::new())).collect();
        Exchange {
            slots: [slots(), slots()],
            barrier: SpinBarrier::new(threads),
            calls: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Publishes thread `t`'s partial and returns everyone's, in thread order. Every thread
    /// must make the same sequence of calls.
    pub(super) fn all_gather(&self, t: usize, data: Vec<f64>) -> Vec<Vec<f64>> {
        let parity = self.calls[t].fetch_add(1, Ordering::Relaxed) % 2;
        let slots = &self.slots[parity];
        *slots[t].lock().unwrap_or_else(|e| e.into_inner()) = data;
        self.barrier.wait();
        slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many back-to-back exchanges between three threads each see exactly that round's
    /// values from every thread, in thread order (a slot overwritten too early, or a
    /// barrier released too soon, would mix rounds).
    #[test]
    fn rounds_never_mix() {
        let threads = 3;
        let ex = Exchange::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let ex = &ex;
                s.spawn(move || {
                    for round in 0..2000 {
                        let all = ex.all_gather(t, vec![round as f64, t as f64]);
                        let want: Vec<Vec<f64>> =
                            (0..threads).map(|u| vec![round as f64, u as f64]).collect();
                        assert_eq!(all, want, "thread {t} round {round}");
                    }
                });
            }
        });
    }
}
