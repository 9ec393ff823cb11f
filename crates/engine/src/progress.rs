//! What a use case tells its front end while it runs: the coordinator's events (phases,
//! bytes, warnings, notes) and the engine's own (waiting for the queue, what was
//! recovered, each copy deleted). The CLI prints them; a daemon can stream them.

use shadowcopy_catalog::{QueueHolder, Wait};
use shadowcopy_core::{CopyState, EventSink};

/// Receives progress from the engine. Every method has a no-op default.
pub trait Progress: EventSink {
    /// The queue is held (by `holder`, when it is known); the command waits as `wait` says.
    fn queued_behind(&self, _holder: Option<&QueueHolder>, _wait: Wait) {}
    /// The command, holding the queue, finished or cleaned up what a dead one left
    /// (an interrupted restore, a copy left in progress): one line each.
    fn recovered(&self, _line: &str) {}
    /// Copy `id` of `set`, which was `state`, was deleted (or, in a dry run, would be).
    fn deleted(&self, _id: i64, _set: &str, _state: CopyState, _dry_run: bool) {}
}

/// Progress nobody watches.
pub struct Silent;
impl EventSink for Silent {}
impl Progress for Silent {}
