//! Work the application should not feel (verification: hashing every byte of a copy,
//! the database's own checks) runs at background priority: the calling thread gets the
//! lowest CPU priority, nice 19, and with it (Linux derives a thread's I/O priority from
//! its nice value unless one was set) the lowest best-effort I/O priority; threads and
//! processes it starts inherit both. It takes mostly what the application leaves
//! without being starved outright (the idle classes could wait forever on a busy host,
//! and the job queue with them). The guard puts the thread back as it was.
//! `SHADOWCOPY_VERIFY_PRIORITY=normal` turns it off (to measure, or to finish sooner on
//! a host with room to spare).

use rustix::process::{getpriority_process, setpriority_process, Pid};

/// The variable that turns background priority off (`normal`).
pub const PRIORITY_VAR: &str = "SHADOWCOPY_VERIFY_PRIORITY";

/// The lowest CPU priority.
pub const LOWEST_NICE: i32 = 19;

/// While alive, the thread that made it runs at background priority.
pub struct Background {
    /// The thread and the nice value it had.
    restore: Option<(Pid, i32)>,
}

/// Lowers the calling thread's priority until the guard is dropped (unless turned off
/// by [`PRIORITY_VAR`]). Failing to lower it is not an error: the work runs as it would
/// have.
pub fn background() -> Background {
    let off = std::env::var(PRIORITY_VAR).is_ok_and(|v| v == "normal");
    let tid = rustix::thread::gettid();
    let restore = match getpriority_process(Some(tid)) {
        Ok(nice) if !off => match setpriority_process(Some(tid), LOWEST_NICE) {
            Ok(()) => Some((tid, nice)),
            Err(e) => {
                tracing::debug!("cannot lower the verification's priority: {e}");
                None
            }
        },
        _ => None,
    };
    Background { restore }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some((tid, nice)) = self.restore.take() {
            // Raising it back takes the privilege shadowcopy runs with (root); without
            // it, the thread stays low, which only slows what follows.
            if let Err(e) = setpriority_process(Some(tid), nice) {
                tracing::debug!("cannot raise the thread's priority back to {nice}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[test]
    fn background_work_runs_low_and_the_thread_comes_back_as_it_was() {
        // On a thread of its own: priorities are per thread, and tests share a process.
        std::thread::spawn(|| {
            let before = nice();
            {
                let _low = background();
                assert_eq!(nice(), LOWEST_NICE);
                // A thread started meanwhile inherits it.
                assert_eq!(std::thread::spawn(nice).join().unwrap(), LOWEST_NICE);
            }
            // Raising a priority back takes root's privilege.
            if rustix::process::geteuid().is_root() {
                assert_eq!(nice(), before, "back as it was");
            }
        })
        .join()
        .unwrap();
    }
}
