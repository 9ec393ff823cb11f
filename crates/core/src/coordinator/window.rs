//! The freeze window as states: [`Frozen`] (every writer asked to freeze), whose only
//! exits are [`Frozen::commit`] and the thaw; [`Committed`] (the commit returned in
//! time, the writers still frozen), whose only exit is the thaw; and [`WindowFailed`]
//! (a freeze or the commit failed), whose only exit is the thaw too. The writers asked
//! to freeze are held by a guard that thaws them (in reverse order) when it is dropped,
//! so a panic anywhere in the window thaws them as well.
//!
//! Nothing is written to the journal in the window: its phases are kept in a
//! [`Window`] and recorded right after the thaw.

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use super::{error_chain, provider_error, writer_error, Precommitted, Run, Thawed};
use crate::error::Error;
use crate::events::EventSink;
use crate::journal::Journal;
use crate::model::{CopyId, FileEntry, Phase};
use crate::provider::CommitControl;
use crate::writer::Writer;

/// Every writer was asked to freeze and did, within the deadline. Dropping it thaws.
pub(super) struct Frozen<'w> {
    writers: FreezeGuard<'w>,
    window: Window,
    started: Instant,
    deadline: Instant,
    deadline_len: Duration,
    rest: Precommitted,
}

/// The commit returned its files in time; the writers are still frozen.
pub(super) struct Committed<'w> {
    frozen: Frozen<'w>,
    files: Vec<FileEntry>,
}

/// A freeze or the commit failed; the writers asked to freeze may still be frozen.
pub(super) struct WindowFailed<'w> {
    frozen: Box<Frozen<'w>>,
    error: Error,
}

impl<'w> Frozen<'w> {
    /// Freezes each writer in order, with `deadline_len` from now as the deadline.
    pub(super) fn freeze(
        rest: Precommitted,
        writers: &'w mut [Box<dyn Writer>],
        deadline_len: Duration,
        events: &dyn EventSink,
    ) -> Result<Self, WindowFailed<'w>> {
        let started = Instant::now();
        let mut frozen = Frozen {
            writers: FreezeGuard { writers, asked: 0 },
            window: Window::default(),
            started,
            deadline: started + deadline_len,
            deadline_len,
            rest,
        };
        let deadline = frozen.deadline;
        let froze = frozen.window.run(events, Phase::Freeze, || {
            frozen.writers.freeze_all(deadline, deadline_len)
        });
        match froze {
            Ok(()) => Ok(frozen),
            Err(error) => Err(WindowFailed {
                frozen: Box::new(frozen),
                error,
            }),
        }
    }

    /// Runs the provider's commit on its own thread (registered on the undo stack with
    /// the location it writes to) and waits for it until the deadline; past it, cancels.
    /// A commit that ends after the deadline is refused: a watchdog may have thawed under
    /// it.
    pub(super) fn commit(mut self, run: &mut Run) -> Result<Committed<'w>, WindowFailed<'w>> {
        let events = run.rec.events.clone();
        let provider = run.provider.clone();
        let control = CommitControl::new(events.clone());
        let (tx, rx) = mpsc::channel();
        let spawned = {
            let provider = provider.clone();
            let request = self.rest.frozen_request.clone();
            let location = self.rest.location.clone();
            let control = control.clone();
            std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || {
                    let _ = tx.send(provider.commit(&request, &location, &control));
                })
        };
        let (deadline, deadline_len) = (self.deadline, self.deadline_len);
        let undo = &mut run.undo;
        let committed = self.window.run(&*events, Phase::Commit, || {
            let thread =
                spawned.map_err(|e| provider_error(&*provider, Phase::Commit)(Box::new(e)))?;
            undo.commit_started(thread);
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
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
        });
        match committed {
            Ok(files) => Ok(Committed {
                frozen: self,
                files,
            }),
            Err(error) => Err(WindowFailed {
                frozen: Box::new(self),
                error,
            }),
        }
    }

    /// The window's one way out: thaws every writer that was asked to freeze (reverse
    /// order, all of them even if one fails), then records the window's phases (every
    /// record attempted).
    fn thaw(self, run: &mut Run) -> Result<Thawed, Error> {
        let Frozen {
            mut writers,
            mut window,
            started,
            rest,
            ..
        } = self;
        let events = run.rec.events.clone();
        let thawed = window.run(&*events, Phase::Thaw, || writers.thaw_all());
        let freeze_window = started.elapsed();
        drop(writers);
        let recorded = window.record(run.rec.journal, run.rec.id, freeze_window);
        run.rec
            .phases
            .extend(window.phases.iter().map(|p| (p.phase, p.took)));
        thawed?;
        recorded?;
        Ok(Thawed {
            location: rest.location,
            files: rest.early_files,
            freeze_window,
        })
    }
}

impl Committed<'_> {
    /// Thaws; the copy then holds the commit's files and the precommit's.
    pub(super) fn thaw(self, run: &mut Run) -> Result<Thawed, Error> {
        let mut thawed = self.frozen.thaw(run)?;
        let mut files = self.files;
        files.append(&mut thawed.files);
        thawed.files = files;
        run.undo.commit_ended();
        Ok(thawed)
    }
}

impl WindowFailed<'_> {
    /// Thaws; the error is what failed in the window (a failed thaw or record after it
    /// is not what the caller needs to hear first), unless that was only a busy moment
    /// and the thaw failed for real: then the thaw's, so that the set is not run again
    /// over an application that may still be frozen.
    pub(super) fn thaw(self, run: &mut Run) -> Error {
        match self.frozen.thaw(run) {
            Err(thaw) if is_transient(&self.error) && !is_transient(&thaw) => thaw,
            Err(thaw) => {
                tracing::warn!("also while thawing: {}", crate::error::error_chain(&thaw));
                self.error
            }
            Ok(_) => self.error,
        }
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
struct FreezeGuard<'w> {
    writers: &'w mut [Box<dyn Writer>],
    asked: usize,
}

impl FreezeGuard<'_> {
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
    /// Thaws every writer asked to freeze, last first. Of several failures the first
    /// that is not [`Transient`](crate::error::Transient) is the one reported: a set is
    /// run again only when every failure was only a busy moment.
    fn thaw_all(&mut self) -> Result<(), Error> {
        let mut reported: Option<Error> = None;
        for i in (0..self.asked).rev() {
            let w = &mut self.writers[i];
            if let Err(e) = w.thaw() {
                let e = writer_error(&**w, Phase::Thaw)(e);
                let replaces = match &reported {
                    None => true,
                    Some(r) => is_transient(r) && !is_transient(&e),
                };
                if replaces {
                    reported = Some(e);
                } else {
                    tracing::warn!("also while thawing: {}", crate::error::error_chain(&e));
                }
            }
        }
        self.asked = 0;
        reported.map_or(Ok(()), Err)
    }
}

impl Drop for FreezeGuard<'_> {
    fn drop(&mut self) {
        let _ = self.thaw_all();
    }
}

/// Whether `e` is only a busy moment ([`Transient`](crate::error::Transient)).
fn is_transient(e: &Error) -> bool {
    crate::error::Transient::in_chain(e)
}
