//! The `Journal` contract: how the coordinator records every transition before it
//! happens. The catalog crate implements it on SQLite.
//!
//! Rules an implementation MUST keep:
//! - every call is durable when it returns (a crash right after loses nothing recorded);
//! - `begin_copy` records the calling process so an interrupted set can be recognised;
//! - a copy is offered for restore only once `finish_copy(.., Usable, ..)` was recorded.
//!
//! The coordinator writes nothing between the first freeze and the last thaw: the
//! `freeze` phase start (with the location recorded before it) is what recovery needs,
//! and the phases inside the window are recorded with [`Journal::record_phase`] after
//! the thaw, so the application never waits for the catalog's fsync.

use std::time::{Duration, SystemTime};

use crate::model::{Component, CopyId, CopyState, FileEntry, Origin, Phase};
use crate::verify::Verification;

pub type JournalError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What is known of a copy when it begins.
#[derive(Clone, Debug)]
pub struct NewCopy<'a> {
    pub set_name: &'a str,
    /// The set's specification (writers, options) as JSON, so the copy can be verified
    /// and restored later without the config file.
    pub spec_json: &'a str,
    pub origin: Origin,
    pub provider: &'a str,
    pub freeze_deadline: Duration,
}

pub trait Journal {
    fn begin_copy(&self, copy: &NewCopy<'_>) -> Result<CopyId, JournalError>;
    /// Where the provider will put the copy; recorded before anything is written there.
    /// A recorded location means data may exist there: recovery discards the location of
    /// every copy that is not usable until [`Journal::discarded`] is recorded.
    fn set_location(&self, id: CopyId, location: &str) -> Result<(), JournalError>;
    /// The data of a failed copy is gone (its location is forgotten).
    fn discarded(&self, id: CopyId) -> Result<(), JournalError>;
    fn enter_phase(&self, id: CopyId, phase: Phase) -> Result<(), JournalError>;
    fn finish_phase(
        &self,
        id: CopyId,
        phase: Phase,
        took: Duration,
        error: Option<&str>,
    ) -> Result<(), JournalError>;
    /// Records a phase that already ran (one inside the freeze window), with its start.
    fn record_phase(
        &self,
        id: CopyId,
        phase: Phase,
        started: SystemTime,
        took: Duration,
        error: Option<&str>,
    ) -> Result<(), JournalError>;
    fn record_components(&self, id: CopyId, components: &[Component]) -> Result<(), JournalError>;
    fn record_files(&self, id: CopyId, files: &[FileEntry]) -> Result<(), JournalError>;
    fn record_freeze_window(&self, id: CopyId, window: Duration) -> Result<(), JournalError>;
    /// The outcome of a verification, what it built on, and (when it passed) the leaf
    /// hashes the next copy's verification can build on.
    fn record_verification(
        &self,
        id: CopyId,
        verification: &Verification,
        took: Duration,
    ) -> Result<(), JournalError>;
    fn finish_copy(
        &self,
        id: CopyId,
        state: CopyState,
        error: Option<&str>,
    ) -> Result<(), JournalError>;
    /// A restore of `copy_id` begins (with the calling process): `record` is its
    /// [`crate::swap::SwapRecord`] as JSON. Until [`Journal::end_restore`], the next
    /// command that takes the queue finishes it.
    fn begin_restore(&self, copy_id: CopyId, record: &str) -> Result<i64, JournalError>;
    /// The restore's record changed (a staging area was created, the swap's renames are
    /// about to run).
    fn record_restore(&self, restore: i64, record: &str) -> Result<(), JournalError>;
    /// The restore ended: done, or failed with the live data as it was.
    fn end_restore(&self, restore: i64) -> Result<(), JournalError>;
}
