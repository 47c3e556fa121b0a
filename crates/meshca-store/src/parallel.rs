//! Work spread over threads with the order of a plain loop kept: what the folder store's batches
//! and the trust reconciler's per-cluster work use.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Runs `job(i)` for every `i` in `0..n` on up to `workers` threads, the calling one among them,
/// each thread taking the next index when it finishes one (so that a slow job, an RSA key say,
/// holds up no fixed share). Once a result satisfies `stop`, no new index is taken. Returns the
/// results of indices `0..m` in order, `m <= n`: every index below a stopping one has run, so the
/// first stopping result in order is the one a plain loop would have stopped at.
pub fn in_parallel<R: Send>(
    n: usize,
    workers: usize,
    stop: impl Fn(&R) -> bool + Sync,
    job: impl Fn(usize) -> R + Sync,
) -> Vec<R> {
    let workers = workers.min(n);
    if workers <= 1 {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let r = job(i);
            let done = stop(&r);
            out.push(r);
            if done {
                break;
            }
        }
        return out;
    }
    let next = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let work = || {
        let mut out = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            let r = job(i);
            if stop(&r) {
                stopped.store(true, Ordering::Relaxed);
            }
            out.push((i, r));
        }
        out
    };
    let mut all = std::thread::scope(|s| {
        let others: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in others {
            match h.join() {
                Ok(part) => all.extend(part),
                // A job panicked: carry on unwinding, as a plain loop would have.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// [`in_parallel`] for jobs that can fail: every result in order, or the first failure in order.
pub fn try_in_parallel<T: Send, E: Send>(
    n: usize,
    workers: usize,
    job: impl Fn(usize) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    in_parallel(n, workers, Result::is_err, job)
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_runs_keep_order_and_stop_at_the_first_failure_in_order() {
        let all = try_in_parallel(1000, 4, |i| Ok::<_, usize>(i * 2)).unwrap();
        assert_eq!(all, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
        for workers in [1, 2, 8] {
            let err = try_in_parallel(1000, workers, |i| {
                if i == 700 || i == 300 { Err(i) } else { Ok(i) }
            });
            assert_eq!(err, Err(300), "{workers} workers");
        }
        assert!(try_in_parallel(0, 4, Ok::<_, ()>).unwrap().is_empty());
    }
}
