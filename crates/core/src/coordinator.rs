//! The coordinator: drives one shadow set through identify → prepare → precommit →
//! freeze → commit → thaw → post-snapshot → verify → backup-complete → done, recording
//! each step in the journal before it runs, except inside the freeze window: there the
//! freeze's start (and the copy's location) are recorded before it, and the phases in it
//! right after the thaw, so the application never waits for the catalog.
//!
//! The protocol order is in the types: each phase consumes the state the one before it
//! returned (`Identified` → `Prepared` → `Precommitted` → `Frozen` → `Committed` →
//! `Thawed` → `Snapshotted` → `Verified` → done), so no phase can run out of
//! order or be skipped. The freeze window lives in `window`: a frozen state can only be
//! committed or thawed, a failure inside the window is a state whose one exit is the
//! thaw, and dropping any of them (a panic) thaws every writer that was asked to freeze.
//!
//! Every other step that changes the world pushes its undo on an undo stack (`undo`)
//! as it runs, as a saga pairs each action with its undo: the copy begun in the journal
//! → record it failed with the reason; a writer prepared → its thaw (again) and abort;
//! the location recorded (and the commit started there) → wait for the cancelled
//! commit, delete the location, record it discarded. Any error takes the abort path,
//! which runs the stack in reverse. A copy recorded usable empties the stack: a failed
//! verify keeps its copy.

#[cfg(test)]
mod tests;
mod undo;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::error::{chain, error_chain};
use crate::error::{BoxError, Error};
use crate::events::EventSink;
use crate::journal::{Journal, NewCopy};
use crate::model::{
    Component, CopyId, CopyState, CopyView, FileEntry, Origin, Phase, VerifyReport,
};
use crate::provider::{CommitControl, CommitRequest, Provider};
use crate::verify::{verify_copy, Verification, VerifyBase, VerifySummary};
use crate::writer::{KeptCopies, Writer};

use undo::{Undo, UndoStack};
use window::Frozen;

/// The default window from the first freeze to the end of the commit.
pub const DEFAULT_FREEZE_DEADLINE: Duration = Duration::from_secs(10);

/// One request for a shadow set.
pub struct ShadowSetRequest {
    pub set_name: String,
    pub spec_json: String,
    pub origin: Origin,
    pub writers: Vec<Box<dyn Writer>>,
    /// Components copied without a writer (the raw `pre-restore` copy of data nobody
    /// holds open).
    pub unmanaged_components: Vec<Component>,
    pub provider: Arc<dyn Provider>,
    pub freeze_deadline: Duration,
    pub verify: bool,
    /// A verified copy of the set to verify this one against: blocks they share are not
    /// read again, and writers check what changed (`None`: a full verification).
    pub verify_base: Option<VerifyBase>,
    /// The set's other usable copies, for writers that truncate logs after a verified
    /// copy (`backup_complete`).
    pub kept_copies: Box<dyn KeptCopies>,
}

/// A copy that was made and recorded as usable.
#[derive(Clone, Debug)]
pub struct CreatedCopy {
    pub id: CopyId,
    pub location: String,
    pub freeze_window: Duration,
    pub files: Vec<FileEntry>,
    pub verification: Option<VerifySummary>,
    pub phases: Vec<(Phase, Duration)>,
    /// What writers did after the verified copy (logs truncated), one line each.
    pub notes: Vec<String>,
    /// Problems that did not make the copy unusable (a failed log truncation).
    pub warnings: Vec<String>,
}

pub struct Coordinator<'a> {
    journal: &'a dyn Journal,
    events: Arc<dyn EventSink>,
}

impl<'a> Coordinator<'a> {
    pub fn new(journal: &'a dyn Journal, events: Arc<dyn EventSink>) -> Self {
        Coordinator { journal, events }
    }

    /// Runs one shadow set to the end. On error nothing is left frozen and no partial
    /// copy is left usable; the error says what failed.
    pub fn create(&self, mut request: ShadowSetRequest) -> Result<CreatedCopy, Error> {
        let id = self
            .journal
            .begin_copy(&NewCopy {
                set_name: &request.set_name,
                spec_json: &request.spec_json,
                origin: request.origin,
                provider: request.provider.kind(),
                freeze_deadline: request.freeze_deadline,
            })
            .map_err(Error::journal("start of the copy"))?;
        self.events.copy_started(id, &request.set_name);
        let mut run = Run {
            rec: Recorder {
                id,
                journal: self.journal,
                events: self.events.clone(),
                phases: Vec::new(),
            },
            provider: request.provider.clone(),
            // The copy is in the journal, in progress: from here on an error records it
            // failed.
            undo: UndoStack::begun(),
        };
        match run.execute(&mut request) {
            Ok(created) => Ok(created),
            Err(error) => {
                run.abort(&mut request.writers, &error);
                Err(error)
            }
        }
    }
}

/// After identify: every component of the set, recorded in the journal.
struct Identified {
    components: Vec<Component>,
}

/// After prepare: the writers prepared (each one's `abort` on the undo stack), the
/// provider checked, and the copy's location recorded (its discard on the undo stack).
struct Prepared {
    request: CommitRequest,
    location: String,
}

/// After precommit: the pinned components are in the copy if the provider copies them
/// before the freeze; what is left for the freeze window.
struct Precommitted {
    location: String,
    early_files: Vec<FileEntry>,
    frozen_request: CommitRequest,
}

/// After the thaw: every writer that was asked to freeze is thawed, the window's phases
/// are recorded, and the commit's files are known.
struct Thawed {
    location: String,
    files: Vec<FileEntry>,
    freeze_window: Duration,
}

/// After post-snapshot: the writers' late files added, the copy durable and exposed,
/// its manifest recorded.
struct Snapshotted {
    location: String,
    files: Vec<FileEntry>,
    view: CopyView,
    freeze_window: Duration,
}

/// After verify and backup-complete (when the request asked for a verify): the copy can
/// be recorded usable.
struct Verified {
    copy: Snapshotted,
    verification: Option<VerifySummary>,
    notes: Vec<String>,
    warnings: Vec<String>,
}

/// Records phases in the journal and reports them as events.
struct Recorder<'a> {
    id: CopyId,
    journal: &'a dyn Journal,
    events: Arc<dyn EventSink>,
    phases: Vec<(Phase, Duration)>,
}

impl Recorder<'_> {
    /// Records `phase` as entered, runs it, records how it ended.
    fn step<T>(&mut self, phase: Phase, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        self.journal
            .enter_phase(self.id, phase)
            .map_err(Error::journal("phase start"))?;
        self.events.phase_started(phase);
        let started = Instant::now();
        let result = f();
        let took = started.elapsed();
        self.phases.push((phase, took));
        self.events.phase_finished(phase, took, result.is_ok());
        let message = result.as_ref().err().map(error_chain);
        let recorded = self
            .journal
            .finish_phase(self.id, phase, took, message.as_deref())
            .map_err(Error::journal("phase end"));
        match (result, recorded) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(v), Ok(())) => Ok(v),
        }
    }

    /// Like [`Recorder::step`] for a phase whose failures do not fail the set: `f`
    /// returns what went right and what went wrong; the latter is recorded as the phase's
    /// error.
    fn step_keeping_failures(
        &mut self,
        phase: Phase,
        f: impl FnOnce() -> (Vec<String>, Vec<String>),
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        self.journal
            .enter_phase(self.id, phase)
            .map_err(Error::journal("phase start"))?;
        self.events.phase_started(phase);
        let started = Instant::now();
        let (done, failed) = f();
        let took = started.elapsed();
        self.phases.push((phase, took));
        self.events.phase_finished(phase, took, failed.is_empty());
        let message = (!failed.is_empty()).then(|| failed.join("; "));
        self.journal
            .finish_phase(self.id, phase, took, message.as_deref())
            .map_err(Error::journal("phase end"))?;
        Ok((done, failed))
    }
}

/// One shadow set on its way: the phases recorded so far and what an abort must undo.
struct Run<'a> {
    rec: Recorder<'a>,
    provider: Arc<dyn Provider>,
    undo: UndoStack,
}

impl Run<'_> {
    /// The phases in protocol order, each taking the state the one before returned.
    fn execute(&mut self, request: &mut ShadowSetRequest) -> Result<CreatedCopy, Error> {
        let identified = self.identify(request)?;
        let prepared = self.prepare(identified, request)?;
        let precommitted = self.precommit(prepared)?;
        let thawed =
            self.freeze_commit_thaw(precommitted, &mut request.writers, request.freeze_deadline)?;
        let snapshotted = self.post_snapshot(thawed, &mut request.writers)?;
        let verified = self.verify(snapshotted, request)?;
        self.done(verified)
    }

    fn identify(&mut self, request: &mut ShadowSetRequest) -> Result<Identified, Error> {
        let components = self.rec.step(Phase::Identify, || {
            let mut all = request.unmanaged_components.clone();
            for w in request.writers.iter_mut() {
                let found = w.identify().map_err(writer_error(&**w, Phase::Identify))?;
                all.extend(found);
            }
            Ok(all)
        })?;
        self.rec
            .journal
            .record_components(self.rec.id, &components)
            .map_err(Error::journal("components"))?;
        Ok(Identified { components })
    }

    fn prepare(
        &mut self,
        identified: Identified,
        request: &mut ShadowSetRequest,
    ) -> Result<Prepared, Error> {
        let commit_request = CommitRequest {
            copy_id: self.rec.id,
            set_name: request.set_name.clone(),
            components: identified.components,
            continues: false,
        };
        let provider = self.provider.clone();
        let undo = &mut self.undo;
        let location = self.rec.step(Phase::Prepare, || {
            if let Err(why) = provider.check(&commit_request.paths()) {
                return Err(Error::usage(format!(
                    "provider {} cannot serve this set: {why}",
                    provider.kind()
                )));
            }
            for (i, w) in request.writers.iter_mut().enumerate() {
                // Pushed before the call: a writer that fails halfway is aborted too.
                undo.push(Undo::Release(i));
                w.prepare().map_err(writer_error(&**w, Phase::Prepare))?;
            }
            provider
                .location(&commit_request)
                .map_err(provider_error(&*provider, Phase::Prepare))
        })?;
        self.rec
            .journal
            .set_location(self.rec.id, &location)
            .map_err(Error::journal("copy location"))?;
        // Recorded: data may exist there from now on.
        self.undo.push(Undo::Discard {
            location: location.clone(),
            commit: None,
        });
        Ok(Prepared {
            request: commit_request,
            location,
        })
    }

    /// Pinned components go first, outside the freeze, where the provider wants that.
    fn precommit(&mut self, prepared: Prepared) -> Result<Precommitted, Error> {
        let Prepared { request, location } = prepared;
        let provider = self.provider.clone();
        let (early, late): (Vec<Component>, Vec<Component>) = if provider.copies_pinned_early() {
            request.components.iter().cloned().partition(|c| c.pinned)
        } else {
            (Vec::new(), request.components.clone())
        };
        let mut early_files = Vec::new();
        let precommitted = !early.is_empty();
        if precommitted {
            let early_request = CommitRequest {
                components: early,
                ..request.clone()
            };
            let control = CommitControl::new(self.rec.events.clone());
            early_files = self.rec.step(Phase::Precommit, || {
                provider
                    .commit(&early_request, &location, &control)
                    .map_err(provider_error(&*provider, Phase::Precommit))
            })?;
        }
        Ok(Precommitted {
            location,
            early_files,
            frozen_request: CommitRequest {
                components: late,
                continues: precommitted,
                ..request
            },
        })
    }

    /// Freeze, commit, thaw: the thaw runs whatever happened before it. The freeze's
    /// start is recorded before it; nothing is written to the journal inside the window
    /// (see journal.rs), the phases in it are recorded after the thaw.
    fn freeze_commit_thaw(
        &mut self,
        precommitted: Precommitted,
        writers: &mut [Box<dyn Writer>],
        deadline: Duration,
    ) -> Result<Thawed, Error> {
        self.rec
            .journal
            .enter_phase(self.rec.id, Phase::Freeze)
            .map_err(Error::journal("phase start"))?;
        let committed = Frozen::freeze(precommitted, writers, deadline, &*self.rec.events)
            .and_then(|frozen| frozen.commit(self));
        match committed {
            Ok(committed) => committed.thaw(self),
            Err(failed) => Err(failed.thaw(self)),
        }
    }

    /// Files writers only have after the thaw, then the copy made durable and exposed.
    fn post_snapshot(
        &mut self,
        thawed: Thawed,
        writers: &mut [Box<dyn Writer>],
    ) -> Result<Snapshotted, Error> {
        let Thawed {
            location,
            mut files,
            freeze_window,
        } = thawed;
        let provider = self.provider.clone();
        let view = self.rec.step(Phase::PostSnapshot, || {
            let mut added = Vec::new();
            for w in writers.iter_mut() {
                added.extend(
                    w.after_thaw_files()
                        .map_err(writer_error(&**w, Phase::PostSnapshot))?,
                );
            }
            if !added.is_empty() {
                let entries = provider
                    .add_files(&location, &added)
                    .map_err(provider_error(&*provider, Phase::PostSnapshot))?;
                let replaced: std::collections::BTreeSet<&std::path::Path> =
                    entries.iter().map(|e| e.path.as_path()).collect();
                files.retain(|f| !replaced.contains(f.path.as_path()));
                files.extend(entries);
            }
            provider
                .persist(&location)
                .map_err(provider_error(&*provider, Phase::PostSnapshot))?;
            let view = provider
                .expose(&location, &files)
                .map_err(provider_error(&*provider, Phase::PostSnapshot))?;
            for w in writers.iter_mut() {
                w.post_snapshot(&view)
                    .map_err(writer_error(&**w, Phase::PostSnapshot))?;
            }
            Ok(view)
        })?;
        self.rec
            .journal
            .record_files(self.rec.id, &files)
            .map_err(Error::journal("file manifest"))?;
        Ok(Snapshotted {
            location,
            files,
            view,
            freeze_window,
        })
    }

    /// The copy checked, then the writers told (when the request asks for a verify).
    fn verify(
        &mut self,
        mut copy: Snapshotted,
        request: &mut ShadowSetRequest,
    ) -> Result<Verified, Error> {
        if !request.verify {
            return Ok(Verified {
                copy,
                verification: None,
                notes: Vec::new(),
                warnings: Vec::new(),
            });
        }
        let report = self.check(&mut copy, &request.writers, request.verify_base.as_ref())?;
        let (notes, warnings) =
            self.backup_complete(&copy.view, &mut request.writers, &*request.kept_copies)?;
        Ok(Verified {
            copy,
            verification: Some(report),
            notes,
            warnings,
        })
    }

    /// Hashes and checks the copy. A damaged copy is recorded usable (kept for
    /// inspection, nothing left to undo) and ends the set with `VerifyFailed`.
    fn check(
        &mut self,
        copy: &mut Snapshotted,
        writers: &[Box<dyn Writer>],
        base: Option<&VerifyBase>,
    ) -> Result<VerifySummary, Error> {
        let started = Instant::now();
        let events = self.rec.events.clone();
        // A check that cannot run (no scratch space, say) counts as failed: the copy is
        // kept, and no log is truncated on its account.
        let verification = self.rec.step(Phase::Verify, || {
            Ok(
                verify_copy(&copy.view, &mut copy.files, writers, &*events, base).unwrap_or_else(
                    |e| {
                        Verification::without_hashes(VerifyReport {
                            ok: false,
                            detail: format!("the check could not run: {}", error_chain(&e)),
                        })
                    },
                ),
            )
        })?;
        let (journal, id) = (self.rec.journal, self.rec.id);
        journal
            .record_files(id, &copy.files)
            .map_err(Error::journal("file hashes"))?;
        journal
            .record_verification(id, &verification, started.elapsed())
            .map_err(Error::journal("verification"))?;
        let summary = verification.summary();
        let report = verification.report;
        if !report.ok {
            // The copy is complete but damaged: keep it for inspection, never let the
            // application drop logs because of it.
            journal
                .finish_copy(id, CopyState::Usable, None)
                .map_err(Error::journal("end of the copy"))?;
            self.undo.complete();
            return Err(Error::VerifyFailed {
                id,
                detail: report.detail,
            });
        }
        Ok(summary)
    }

    /// A writer failing here (say, a log truncation) leaves a verified copy: the failure
    /// is recorded on the phase and reported, and the copy stays usable.
    fn backup_complete(
        &mut self,
        view: &CopyView,
        writers: &mut [Box<dyn Writer>],
        kept: &dyn KeptCopies,
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        let (done, failed) = self.rec.step_keeping_failures(Phase::BackupComplete, || {
            let mut done = Vec::new();
            let mut failed = Vec::new();
            for w in writers.iter_mut() {
                match w.backup_complete(view, kept) {
                    Ok(note) => done.extend(note),
                    Err(e) => {
                        failed.push(format!("{} at backup-complete: {}", w.name(), chain(&*e)))
                    }
                }
            }
            (done, failed)
        })?;
        for line in &done {
            self.rec.events.note(line);
        }
        for line in &failed {
            self.rec.events.warning(line);
        }
        Ok((done, failed))
    }

    /// The copy recorded usable: from here on there is nothing to undo.
    fn done(&mut self, verified: Verified) -> Result<CreatedCopy, Error> {
        let (journal, id) = (self.rec.journal, self.rec.id);
        journal
            .enter_phase(id, Phase::Done)
            .map_err(Error::journal("phase start"))?;
        journal
            .finish_copy(id, CopyState::Usable, None)
            .map_err(Error::journal("end of the copy"))?;
        self.undo.complete();
        let Verified {
            copy,
            verification,
            notes,
            warnings,
        } = verified;
        Ok(CreatedCopy {
            id,
            location: copy.location,
            freeze_window: copy.freeze_window,
            files: copy.files,
            verification,
            phases: std::mem::take(&mut self.rec.phases),
            notes,
            warnings,
        })
    }
}

fn writer_error(w: &dyn Writer, phase: Phase) -> impl FnOnce(BoxError) -> Error {
    let writer = w.name();
    move |source| Error::Writer {
        writer,
        phase,
        source,
    }
}

fn provider_error(p: &dyn Provider, phase: Phase) -> impl FnOnce(BoxError) -> Error {
    let provider = p.kind().to_string();
    move |source| Error::Provider {
        provider,
        phase,
        source,
    }
}
