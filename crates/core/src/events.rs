//! Progress events from the coordinator to whoever drives it (the CLI prints them).

use std::time::Duration;

use crate::model::{CopyId, Phase};

/// Receives progress from the coordinator. Every method has a no-op default.
pub trait EventSink: Send + Sync {
    fn copy_started(&self, _id: CopyId, _set: &str) {}
    fn phase_started(&self, _phase: Phase) {}
    fn phase_finished(&self, _phase: Phase, _took: Duration, _ok: bool) {}
    /// Bytes committed so far out of the total (providers call it from worker threads).
    fn bytes(&self, _done: u64, _total: u64) {}
    fn warning(&self, _message: &str) {}
    /// Something the user should know that is not a problem (how a restore went about it).
    fn note(&self, _message: &str) {}
}

/// An event sink that ignores everything.
pub struct NoEvents;
impl EventSink for NoEvents {}
