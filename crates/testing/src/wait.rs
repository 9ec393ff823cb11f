//! Waiting in a test for the state it needs: poll the condition itself, bounded, and
//! panic with what never happened. A test that sleeps for a guessed time instead passes
//! or fails with the machine's load; one that polls waits only as long as it must.

use std::time::{Duration, Instant};

/// How often [`until`] and [`until_some`] look again.
const POLL: Duration = Duration::from_millis(5);

/// Polls `condition` until it holds. Panics once `limit` has passed, with the message
/// `why` builds then (say what should have happened and what the state is instead).
pub fn until(limit: Duration, mut condition: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    until_some(limit, || condition().then_some(()), why);
}

/// Polls `probe` until it returns a value and returns that value; panics as [`until`]
/// does once `limit` has passed.
pub fn until_some<T>(
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
    why: impl FnOnce() -> String,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if started.elapsed() >= limit {
            panic!("after {limit:?}: {}", why());
        }
        std::thread::sleep(POLL);
    }
}
