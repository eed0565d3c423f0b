//! Worker threads kept between calls. Starting a thread costs about 0.17 ms on this
//! machine, a few percent of a 256-image inference batch or training step, so the
//! executor and the trainer each keep theirs in a rayon pool. The pool is used only as a
//! set of threads: each call hands every worker one job and waits for all of them.

use rayon::{ThreadPool, ThreadPoolBuilder};

/// `n` worker threads from `pool`, started the first time they are needed (and again if
/// more are needed); `None` when `n` is zero or the system refuses new threads, in which
/// case the caller does all the work on its own thread.
pub(crate) fn workers<'p>(
    pool: &'p mut Option<ThreadPool>,
    n: usize,
    name: &'static str,
) -> Option<&'p ThreadPool> {
    if n == 0 {
        return None;
    }
    if pool.as_ref().is_none_or(|p| p.current_num_threads() < n) {
        *pool = ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(move |i| format!("{name}-{}", i + 1))
            .build()
            .ok();
    }
    pool.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers are started once and kept; more are started only when more are needed.
    #[test]
    fn workers_are_kept_between_calls() {
        let mut pool = None;
        assert!(workers(&mut pool, 0, "t").is_none());
        let first = workers(&mut pool, 2, "t").map(|p| p as *const ThreadPool);
        assert_eq!(pool.as_ref().map(ThreadPool::current_num_threads), Some(2));
        let again = workers(&mut pool, 1, "t").map(|p| p as *const ThreadPool);
        assert_eq!(first, again, "a pool large enough is reused");
        workers(&mut pool, 3, "t");
        assert_eq!(pool.as_ref().map(ThreadPool::current_num_threads), Some(3));
    }
}
