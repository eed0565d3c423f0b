//! How the threads of one training step swap their partial results (BatchNorm statistics
//! and backward sums): each publishes a vector per unit it ran, waits for the others, and
//! reads them all in unit order.
//!
//! The waits are short (a few microseconds between two kernels), so the barrier spins
//! before it yields: parking a thread on a futex and waking it costs more than the wait.
//! The slots are double-buffered by the call's parity, which makes one barrier per exchange
//! enough: a thread can only write a slot of parity `p` again after the next exchange's
//! barrier, which every thread reaches only after reading this one's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Spins before a waiting thread starts yielding its core.
const SPINS: u32 = 1 << 14;

/// A reusable barrier for a fixed number of threads that spins, then yields.
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Set when a thread of the step panicked: it will never arrive.
    poisoned: AtomicBool,
}

impl SpinBarrier {
    fn new(threads: usize) -> SpinBarrier {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Returns once all `threads` have called `wait` for this generation; panics if the
    /// barrier is poisoned first, since a thread that panicked never arrives.
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
            assert!(
                !self.poisoned.load(Ordering::Relaxed),
                "another thread of the training step panicked"
            );
            if spins < SPINS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Partial results exchanged between the threads of one step, one slot per unit.
pub(super) struct Exchange {
    /// Per parity, per unit.
    slots: [Vec<Mutex<Vec<f64>>>; 2],
    barrier: SpinBarrier,
}

impl Exchange {
    pub(super) fn new(threads: usize, units: usize) -> Exchange {
        let slots = || (0..units).map(|_| Mutex::new(Vec::new())).collect();
        Exchange {
            slots: [slots(), slots()],
            barrier: SpinBarrier::new(threads),
        }
    }

    /// Publishes unit `u`'s partial for exchange `k`. Exchanges are numbered in the order
    /// the threads reach them, and every thread reaches every one (through [`gather`]).
    ///
    /// [`gather`]: Exchange::gather
    pub(super) fn publish(&self, k: usize, u: usize, data: Vec<f64>) {
        *self.slots[k % 2][u]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = data;
    }

    /// Releases the threads waiting at the barrier, and any that arrive later, with a
    /// panic of their own: the calling thread is unwinding and will never arrive. Without
    /// it a panic in one thread (a bug: inputs are checked before the step starts) would
    /// leave the others spinning forever.
    pub(super) fn poison(&self) {
        self.barrier.poisoned.store(true, Ordering::Relaxed);
    }

    /// Waits until every thread is done publishing for exchange `k`, then returns every
    /// unit's partial, in unit order.
    pub(super) fn gather(&self, k: usize) -> Vec<Vec<f64>> {
        self.barrier.wait();
        self.slots[k % 2]
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread waiting at the barrier is released, with a panic, when another thread
    /// poisons the exchange instead of arriving.
    #[test]
    fn a_poisoned_exchange_releases_the_waiting_threads() {
        let ex = Exchange::new(2, 2);
        let waited = std::thread::scope(|s| {
            let waiting =
                s.spawn(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ex.gather(0))));
            std::thread::sleep(std::time::Duration::from_millis(20));
            ex.poison();
            waiting.join().expect("the waiting thread returns")
        });
        assert!(
            waited.is_err(),
            "the waiting thread must not pass the barrier"
        );
    }

    /// Many back-to-back exchanges between three threads, each publishing its share of
    /// seven units, see exactly that round's value of every unit, in unit order (a slot
    /// overwritten too early, or a barrier released too soon, would mix rounds).
    #[test]
    fn rounds_never_mix() {
        let (threads, units) = (3, 7);
        let ex = Exchange::new(threads, units);
        std::thread::scope(|s| {
            for t in 0..threads {
                let ex = &ex;
                s.spawn(move || {
                    for round in 0..2000 {
                        for u in (t..units).step_by(threads) {
                            ex.publish(round, u, vec![round as f64, u as f64]);
                        }
                        let all = ex.gather(round);
                        let want: Vec<Vec<f64>> =
                            (0..units).map(|u| vec![round as f64, u as f64]).collect();
                        assert_eq!(all, want, "thread {t} round {round}");
                    }
                });
            }
        });
    }
}
