//! A small scoped worker pool: `threads` workers take job indexes in order until the
//! jobs run out, one fails, or the commit is cancelled. A worker that panics becomes an
//! error, never a panic of the caller.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Why a pool run stopped early.
#[derive(Debug)]
pub(crate) enum Stop<E> {
    Failed(E),
    Cancelled,
    Panicked,
}

/// Runs `work(i)` for every `i < jobs` on up to `threads` threads. `cancelled` is
/// checked before each job.
pub(crate) fn run<E: Send>(
    jobs: usize,
    threads: usize,
    cancelled: &(dyn Fn() -> bool + Sync),
    work: &(dyn Fn(usize) -> Result<(), E> + Sync),
) -> Result<(), Stop<E>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    let was_cancelled = AtomicBool::new(false);
    let worker = || loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if cancelled() {
            was_cancelled.store(true, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
            return;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= jobs {
            return;
        }
        if let Err(e) = work(i) {
            stop.store(true, Ordering::SeqCst);
            let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e);
            }
            return;
        }
    };
    let threads = threads.max(1).min(jobs.max(1));
    let mut panicked = false;
    if threads == 1 {
        // No thread needed; a panic here is a bug of `work` and propagates normally.
        worker();
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    std::thread::Builder::new()
                        .name("shadowcopy-copy".into())
                        .spawn_scoped(scope, worker)
                })
                .collect();
            let mut started = 0;
            for h in handles {
                match h {
                    Ok(h) => {
                        started += 1;
                        panicked |= h.join().is_err();
                    }
                    // Could not start a thread: the others still take every job.
                    Err(e) => tracing::warn!("cannot start a copy thread: {e}"),
                }
            }
            if started == 0 {
                worker();
            }
        });
    }
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(Stop::Failed(e));
    }
    if panicked {
        return Err(Stop::Panicked);
    }
    if was_cancelled.load(Ordering::SeqCst) {
        return Err(Stop::Cancelled);
    }
    Ok(())
}
