//! The coordinator: drives one shadow set through identify → prepare → precommit →
//! freeze → commit → thaw → post-snapshot → verify → backup-complete → done, recording
//! each step in the journal before it runs, except inside the freeze window: there the
//! freeze's start (and the copy's location) are recorded before it, and the phases in it
//! right after the thaw, so the application never waits for the catalog. Any error takes
//! the abort path: thaw every writer that was asked to freeze, stop the commit, discard
//! the partial copy, record why.
//!
//! Freeze and thaw are a do/undo pair held by [`Frozen`]: whatever happens after the
//! first `freeze` call (an error, the deadline, a panic), every writer is thawed.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{BoxError, Error};
use crate::events::EventSink;
use crate::journal::{Journal, NewCopy};
use crate::model::{Component, CopyId, CopyState, FileEntry, Origin, Phase, VerifyReport};
use crate::provider::{CommitControl, CommitRequest, Provider};
use crate::verify::verify_copy;
use crate::writer::{KeptCopies, Writer};

/// The default window from the first freeze to the end of the commit.
pub const DEFAULT_FREEZE_DEADLINE: Duration = Duration::from_secs(10);

/// How long the abort path waits for a cancelled commit to stop before it gives up and
/// leaves the partial copy to the cleanup of the next run.
const CANCELLED_COMMIT_GRACE: Duration = Duration::from_secs(30);

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
    pub verification: Option<VerifyReport>,
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
            id,
            journal: self.journal,
            events: self.events.clone(),
            location: None,
            commit_thread: None,
            phases: Vec::new(),
        };
        match run.execute(&mut request) {
            Ok(created) => Ok(created),
            Err(error) => {
                run.abort(&mut request, &error);
                Err(error)
            }
        }
    }
}

struct Run<'a> {
    id: CopyId,
    journal: &'a dyn Journal,
    events: Arc<dyn EventSink>,
    location: Option<String>,
    commit_thread: Option<JoinHandle<()>>,
    phases: Vec<(Phase, Duration)>,
}

impl Run<'_> {
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

    /// Like [`Run::step`] for a phase whose failures do not fail the set: `f` returns what
    /// went right and what went wrong; the latter is recorded as the phase's error.
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

    fn execute(&mut self, request: &mut ShadowSetRequest) -> Result<CreatedCopy, Error> {
        let provider = request.provider.clone();

        let components = self.step(Phase::Identify, || {
            let mut all = request.unmanaged_components.clone();
            for w in request.writers.iter_mut() {
                let found = w.identify().map_err(writer_error(&**w, Phase::Identify))?;
                all.extend(found);
            }
            Ok(all)
        })?;
        self.journal
            .record_components(self.id, &components)
            .map_err(Error::journal("components"))?;
        let commit_request = CommitRequest {
            copy_id: self.id,
            set_name: request.set_name.clone(),
            components,
            continues: false,
        };

        let location = self.step(Phase::Prepare, || {
            if let Err(why) = provider.check(&commit_request.paths()) {
                return Err(Error::usage(format!(
                    "provider {} cannot serve this set: {why}",
                    provider.kind()
                )));
            }
            for w in request.writers.iter_mut() {
                w.prepare().map_err(writer_error(&**w, Phase::Prepare))?;
            }
            provider
                .location(&commit_request)
                .map_err(provider_error(&*provider, Phase::Prepare))
        })?;
        self.journal
            .set_location(self.id, &location)
            .map_err(Error::journal("copy location"))?;
        self.location = Some(location.clone());

        // Pinned components go first, outside the freeze, where the provider wants that.
        let (early, late): (Vec<Component>, Vec<Component>) = if provider.copies_pinned_early() {
            commit_request
                .components
                .iter()
                .cloned()
                .partition(|c| c.pinned)
        } else {
            (Vec::new(), commit_request.components.clone())
        };
        let mut early_files = Vec::new();
        let precommitted = !early.is_empty();
        if precommitted {
            let early_request = CommitRequest {
                components: early,
                ..commit_request.clone()
            };
            let control = CommitControl::new(self.events.clone());
            early_files = self.step(Phase::Precommit, || {
                provider
                    .commit(&early_request, &location, &control)
                    .map_err(provider_error(&*provider, Phase::Precommit))
            })?;
        }
        let frozen_request = CommitRequest {
            components: late,
            continues: precommitted,
            ..commit_request
        };

        // Freeze, commit, thaw: the thaw runs whatever happened before it. The freeze's
        // start is recorded before it; nothing is written to the journal inside the
        // window (see journal.rs), the phases in it are recorded after the thaw.
        let deadline_len = request.freeze_deadline;
        self.journal
            .enter_phase(self.id, Phase::Freeze)
            .map_err(Error::journal("phase start"))?;
        let freeze_started = Instant::now();
        let deadline = freeze_started + deadline_len;
        let mut window = Window::default();
        let mut frozen = Frozen::new(&mut request.writers);
        let events = self.events.clone();
        let froze = window.run(&*events, Phase::Freeze, || {
            frozen.freeze_all(deadline, deadline_len)
        });
        let files = match froze {
            Ok(()) => {
                let control = CommitControl::new(events.clone());
                let (tx, rx) = mpsc::channel();
                let spawned = {
                    let provider = provider.clone();
                    let request = frozen_request.clone();
                    let location = location.clone();
                    let control = control.clone();
                    std::thread::Builder::new()
                        .name("commit".into())
                        .spawn(move || {
                            let _ = tx.send(provider.commit(&request, &location, &control));
                        })
                };
                window.run(&*events, Phase::Commit, || {
                    self.commit_thread = Some(
                        spawned
                            .map_err(|e| provider_error(&*provider, Phase::Commit)(Box::new(e)))?,
                    );
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(remaining) {
                        // A commit that ends after the deadline (this process was stopped,
                        // say) may have copied from thawed data: a watchdog thaws then.
                        Ok(Ok(files)) if Instant::now() <= deadline => Ok(files),
                        Ok(Ok(_)) => Err(Error::DeadlineExceeded {
                            deadline: deadline_len,
                            phase: Phase::Commit,
                        }),
                        Ok(Err(e)) => Err(provider_error(&*provider, Phase::Commit)(e)),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            control.cancel();
                            Err(Error::DeadlineExceeded {
                                deadline: deadline_len,
                                phase: Phase::Commit,
                            })
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            Err(provider_error(&*provider, Phase::Commit)(
                                "the commit thread panicked".into(),
                            ))
                        }
                    }
                })
            }
            Err(e) => Err(e),
        };
        let thawed = window.run(&*events, Phase::Thaw, || frozen.thaw_all());
        let freeze_window = freeze_started.elapsed();
        drop(frozen);
        let recorded = window.record(self.journal, self.id, freeze_window);
        self.phases
            .extend(window.phases.iter().map(|p| (p.phase, p.took)));
        let mut files = files?;
        thawed?;
        recorded?;
        files.extend(early_files);
        if let Some(t) = self.commit_thread.take() {
            let _ = t.join();
        }

        let view = self.step(Phase::PostSnapshot, || {
            let mut added = Vec::new();
            for w in request.writers.iter_mut() {
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
            for w in request.writers.iter_mut() {
                w.post_snapshot(&view)
                    .map_err(writer_error(&**w, Phase::PostSnapshot))?;
            }
            Ok(view)
        })?;
        self.journal
            .record_files(self.id, &files)
            .map_err(Error::journal("file manifest"))?;

        let mut verification = None;
        let mut notes = Vec::new();
        let mut warnings = Vec::new();
        if request.verify {
            let started = Instant::now();
            let events = self.events.clone();
            // A check that cannot run (no scratch space, say) counts as failed: the copy is
            // kept, and no log is truncated on its account.
            let report = self.step(Phase::Verify, || {
                Ok(
                    verify_copy(&view, &mut files, &request.writers, &*events).unwrap_or_else(
                        |e| VerifyReport {
                            ok: false,
                            detail: format!("the check could not run: {}", error_chain(&e)),
                        },
                    ),
                )
            })?;
            self.journal
                .record_files(self.id, &files)
                .map_err(Error::journal("file hashes"))?;
            self.journal
                .record_verification(self.id, &report, started.elapsed())
                .map_err(Error::journal("verification"))?;
            if !report.ok {
                // The copy is complete but damaged: keep it for inspection, never let the
                // application drop logs because of it.
                self.journal
                    .finish_copy(self.id, CopyState::Usable, None)
                    .map_err(Error::journal("end of the copy"))?;
                return Err(Error::VerifyFailed {
                    id: self.id,
                    detail: report.detail,
                });
            }
            // A writer failing here (say, a log truncation) leaves a verified copy: the
            // failure is recorded on the phase and reported, and the copy stays usable.
            let kept = &*request.kept_copies;
            let (done, failed) = self.step_keeping_failures(Phase::BackupComplete, || {
                let mut done = Vec::new();
                let mut failed = Vec::new();
                for w in request.writers.iter_mut() {
                    match w.backup_complete(&view, kept) {
                        Ok(note) => done.extend(note),
                        Err(e) => {
                            failed.push(format!("{} at backup-complete: {}", w.name(), chain(&*e)))
                        }
                    }
                }
                (done, failed)
            })?;
            for line in &done {
                self.events.note(line);
            }
            for line in &failed {
                self.events.warning(line);
            }
            notes = done;
            warnings = failed;
            verification = Some(report);
        }

        self.journal
            .enter_phase(self.id, Phase::Done)
            .map_err(Error::journal("phase start"))?;
        self.journal
            .finish_copy(self.id, CopyState::Usable, None)
            .map_err(Error::journal("end of the copy"))?;
        Ok(CreatedCopy {
            id: self.id,
            location,
            freeze_window,
            files,
            verification,
            phases: std::mem::take(&mut self.phases),
            notes,
            warnings,
        })
    }

    /// The undo path: thaw (again: idempotent), stop the commit, discard the partial
    /// copy, record the reason. Errors here are reported as warnings; the original error
    /// is what the caller sees.
    fn abort(&mut self, request: &mut ShadowSetRequest, error: &Error) {
        if matches!(error, Error::VerifyFailed { .. }) {
            return;
        }
        let _ = self.journal.enter_phase(self.id, Phase::Abort);
        let started = Instant::now();
        let mut problems = Vec::new();
        for w in request.writers.iter_mut().rev() {
            if let Err(e) = w.thaw() {
                problems.push(format!("thaw of {} failed: {}", w.name(), chain(&*e)));
            }
        }
        for w in request.writers.iter_mut() {
            if let Err(e) = w.abort() {
                problems.push(format!("abort of {} failed: {}", w.name(), chain(&*e)));
            }
        }
        if let Some(thread) = self.commit_thread.take() {
            let waited = Instant::now();
            while !thread.is_finished() && waited.elapsed() < CANCELLED_COMMIT_GRACE {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !thread.is_finished() {
                problems.push(
                    "the provider did not stop after cancellation; its partial copy is left for the next run to discard".into(),
                );
                // The location stays recorded: recovery discards it on the next start.
                self.location = None;
            }
        }
        if let Some(location) = &self.location {
            match request.provider.delete(location) {
                Ok(()) => {
                    let _ = self.journal.discarded(self.id);
                }
                Err(e) => problems.push(format!(
                    "discarding the partial copy at {location} failed (the next run retries): {}",
                    chain(&*e)
                )),
            }
        }
        for p in &problems {
            self.events.warning(p);
        }
        let mut reason = error_chain(error);
        if !problems.is_empty() {
            reason.push_str("; during abort: ");
            reason.push_str(&problems.join("; "));
        }
        let _ = self
            .journal
            .finish_phase(self.id, Phase::Abort, started.elapsed(), Some(&reason));
        let _ = self
            .journal
            .finish_copy(self.id, CopyState::Failed, Some(&reason));
    }
}

/// The phases run inside the freeze window, recorded in the journal after the thaw.
#[derive(Default)]
struct Window {
    phases: Vec<WindowPhase>,
}

struct WindowPhase {
    phase: Phase,
    started: SystemTime,
    took: Duration,
    error: Option<String>,
}

impl Window {
    fn run<T>(
        &mut self,
        events: &dyn EventSink,
        phase: Phase,
        f: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        events.phase_started(phase);
        let started = SystemTime::now();
        let clock = Instant::now();
        let result = f();
        let took = clock.elapsed();
        events.phase_finished(phase, took, result.is_ok());
        self.phases.push(WindowPhase {
            phase,
            started,
            took,
            error: result.as_ref().err().map(error_chain),
        });
        result
    }

    /// The freeze's start was recorded before the window: this finishes it and adds the
    /// rest. Every record is attempted even if one fails.
    fn record(
        &self,
        journal: &dyn Journal,
        id: CopyId,
        freeze_window: Duration,
    ) -> Result<(), Error> {
        let mut first_error = journal.record_freeze_window(id, freeze_window).err();
        for p in &self.phases {
            let r = if p.phase == Phase::Freeze {
                journal.finish_phase(id, p.phase, p.took, p.error.as_deref())
            } else {
                journal.record_phase(id, p.phase, p.started, p.took, p.error.as_deref())
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(source) => Err(Error::Journal {
                what: "phases of the freeze window",
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Writers that were asked to freeze; dropping it thaws them (reverse order).
struct Frozen<'w> {
    writers: &'w mut [Box<dyn Writer>],
    asked: usize,
}

impl<'w> Frozen<'w> {
    fn new(writers: &'w mut [Box<dyn Writer>]) -> Self {
        Frozen { writers, asked: 0 }
    }

    fn freeze_all(&mut self, deadline: Instant, deadline_len: Duration) -> Result<(), Error> {
        for i in 0..self.writers.len() {
            if Instant::now() >= deadline {
                return Err(Error::DeadlineExceeded {
                    deadline: deadline_len,
                    phase: Phase::Freeze,
                });
            }
            // Counted before the call: a writer that fails halfway is thawed too.
            self.asked = i + 1;
            let w = &mut self.writers[i];
            w.freeze(deadline)
                .map_err(writer_error(&**w, Phase::Freeze))?;
        }
        if Instant::now() > deadline {
            return Err(Error::DeadlineExceeded {
                deadline: deadline_len,
                phase: Phase::Freeze,
            });
        }
        Ok(())
    }

    /// Thaws every writer that was asked to freeze, in reverse order; reports the first
    /// failure after trying all.
    fn thaw_all(&mut self) -> Result<(), Error> {
        let mut first = None;
        for i in (0..self.asked).rev() {
            let w = &mut self.writers[i];
            if let Err(e) = w.thaw() {
                first.get_or_insert(writer_error(&**w, Phase::Thaw)(e));
            }
        }
        self.asked = 0;
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = self.thaw_all();
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

/// An error and all its sources on one line: `a: b: c`.
pub fn error_chain(e: &Error) -> String {
    chain(e)
}

/// Any error and its sources on one line; a source whose text the line already holds
/// (an error that prints its source itself) is not repeated.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}
