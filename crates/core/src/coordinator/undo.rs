//! The undo stack of a shadow set. Each step that changes the world pushes its undo as
//! it runs (as a saga pairs each action with its undo), and the abort path pops them,
//! newest first:
//!
//! | done                                   | undo                                         |
//! |----------------------------------------|----------------------------------------------|
//! | the copy begun in the journal          | record it failed, with the reason            |
//! | a writer's `prepare` called            | the writer's `thaw` (what prepare holds, a   |
//! |                                        | SQLite pin, is released there), then `abort` |
//! | the location recorded, commits there   | wait for the cancelled commit, `delete` the  |
//! |                                        | location, record it discarded                |
//! | writers asked to freeze                | thaw them, reverse order: held by the window |
//! |                                        | itself (see `window`), not by this stack     |
//!
//! The freeze's undo is not on this stack because it must run before anything is
//! recorded and even when a panic unwinds: the window's states thaw on every exit and
//! when dropped. A thaw that failed there is tried again here, by the writer's own undo
//! (the `Writer` contract: thaw is idempotent and called on every error path; `abort`
//! comes after it). A copy recorded usable has nothing left to undo: the stack is
//! emptied, which is why a failed verify keeps its copy. Undo steps that fail are
//! reported as warnings and added to the recorded reason; the original error is what
//! the caller sees. A panic runs no undo step but the thaw: the copy stays in progress
//! in the journal, and the next run's recovery discards it.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{chain, error_chain, Run};
use crate::error::Error;
use crate::model::{CopyState, Phase};
use crate::writer::Writer;

/// How long the abort path waits for a cancelled commit to stop before it gives up and
/// leaves the partial copy to the cleanup of the next run.
#[cfg(not(test))]
const CANCELLED_COMMIT_GRACE: Duration = Duration::from_secs(30);
/// The core's own tests do not wait that long for a commit that ignores cancellation.
#[cfg(test)]
pub(super) const CANCELLED_COMMIT_GRACE: Duration = Duration::from_millis(500);

/// One undo step.
pub(super) enum Undo {
    /// The copy is recorded in progress: record it failed (and the abort phase).
    RecordFailed,
    /// The writer at this index was asked to prepare: `thaw` it (again, if it was
    /// frozen), then `abort` it.
    Release(usize),
    /// The location is recorded, so data may exist there; `commit` is the provider's
    /// commit thread writing there, once started. Wait for it to stop (it was
    /// cancelled), then delete the location and record it discarded. A commit that does
    /// not stop leaves the location recorded, for the next run's recovery.
    Discard {
        location: String,
        commit: Option<JoinHandle<()>>,
    },
}

/// What an abort must undo, oldest first.
pub(super) struct UndoStack {
    steps: Vec<Undo>,
}

impl UndoStack {
    /// The copy was begun in the journal.
    pub(super) fn begun() -> Self {
        UndoStack {
            steps: vec![Undo::RecordFailed],
        }
    }

    pub(super) fn push(&mut self, step: Undo) {
        self.steps.push(step);
    }

    /// The provider's commit thread started writing to the recorded location.
    pub(super) fn commit_started(&mut self, thread: JoinHandle<()>) {
        match self.steps.iter_mut().rev().find_map(|s| match s {
            Undo::Discard { commit, .. } => Some(commit),
            _ => None,
        }) {
            Some(commit) => *commit = Some(thread),
            None => debug_assert!(false, "a commit started with no location recorded"),
        }
    }

    /// The commit returned its files: its thread ends now.
    pub(super) fn commit_ended(&mut self) {
        for step in self.steps.iter_mut().rev() {
            if let Undo::Discard { commit, .. } = step {
                if let Some(thread) = commit.take() {
                    let _ = thread.join();
                }
            }
        }
    }

    /// The copy is recorded usable: nothing is left to undo.
    pub(super) fn complete(&mut self) {
        self.steps.clear();
    }
}

impl Run<'_> {
    /// The abort path: runs the undo stack, newest first. Does nothing once the copy is
    /// recorded usable (a failed verify keeps its copy).
    pub(super) fn abort(&mut self, writers: &mut [Box<dyn Writer>], error: &Error) {
        let steps = std::mem::take(&mut self.undo.steps);
        if steps.is_empty() {
            return;
        }
        let _ = self.rec.journal.enter_phase(self.rec.id, Phase::Abort);
        let started = Instant::now();
        let mut problems = Vec::new();
        for step in steps.into_iter().rev() {
            match step {
                Undo::Discard { location, commit } => {
                    if let Some(problem) = self.discard(&location, commit) {
                        problems.push(problem);
                    }
                }
                Undo::Release(i) => {
                    let w = &mut writers[i];
                    if let Err(e) = w.thaw() {
                        problems.push(format!("thaw of {} failed: {}", w.name(), chain(&*e)));
                    }
                    if let Err(e) = w.abort() {
                        problems.push(format!("abort of {} failed: {}", w.name(), chain(&*e)));
                    }
                }
                Undo::RecordFailed => self.record_failed(error, &problems, started),
            }
        }
    }

    /// Waits for a cancelled commit, then deletes the partial copy; what went wrong, if
    /// anything.
    fn discard(&self, location: &str, commit: Option<JoinHandle<()>>) -> Option<String> {
        if let Some(thread) = commit {
            let waited = Instant::now();
            while !thread.is_finished() && waited.elapsed() < CANCELLED_COMMIT_GRACE {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !thread.is_finished() {
                // The location stays recorded: recovery discards it on the next start.
                return Some(
                    "the provider did not stop after cancellation; its partial copy is left for the next run to discard".into(),
                );
            }
        }
        match self.provider.delete(location) {
            Ok(()) => {
                let _ = self.rec.journal.discarded(self.rec.id);
                None
            }
            Err(e) => Some(format!(
                "discarding the partial copy at {location} failed (the next run retries): {}",
                chain(&*e)
            )),
        }
    }

    /// Reports the undo steps' problems and records the copy failed with the reason.
    fn record_failed(&self, error: &Error, problems: &[String], started: Instant) {
        for p in problems {
            self.rec.events.warning(p);
        }
        let mut reason = error_chain(error);
        if !problems.is_empty() {
            reason.push_str("; during abort: ");
            reason.push_str(&problems.join("; "));
        }
        let (journal, id) = (self.rec.journal, self.rec.id);
        let _ = journal.finish_phase(id, Phase::Abort, started.elapsed(), Some(&reason));
        let _ = journal.finish_copy(id, CopyState::Failed, Some(&reason));
    }
}
