//! Fault-injecting wrappers around real writers and providers. They delegate to the real
//! thing and then fail at a chosen step, so the coordinator's abort path is exercised
//! against real SQLite locks and real partial copies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowcopy_core::model::{Component, CopyView, FileEntry, VerifyReport};
use shadowcopy_core::provider::{CommitControl, CommitRequest, Provider, Unsupported};
use shadowcopy_core::{BoxError, KeptCopies, Writer};

/// Where a [`FaultyWriter`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterFault {
    /// The real freeze succeeds (the lock is held), then an error is reported: the
    /// coordinator must still thaw.
    FreezeAfterLocking,
    Prepare,
    Thaw,
    /// The copy verified, then the writer's log truncation fails: the copy must stay
    /// usable and the failure be reported.
    BackupComplete,
}

pub struct FaultyWriter {
    pub inner: Box<dyn Writer>,
    pub fault: WriterFault,
}

fn injected(step: &str) -> BoxError {
    format!("injected fault in {step}").into()
}

impl Writer for FaultyWriter {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn name(&self) -> String {
        format!("faulty-{}", self.inner.name())
    }
    fn identify(&mut self) -> Result<Vec<Component>, BoxError> {
        let name = self.name();
        let mut c = self.inner.identify()?;
        for comp in &mut c {
            comp.writer = name.clone();
        }
        Ok(c)
    }
    fn prepare(&mut self) -> Result<(), BoxError> {
        self.inner.prepare()?;
        if self.fault == WriterFault::Prepare {
            return Err(injected("prepare"));
        }
        Ok(())
    }
    fn freeze(&mut self, deadline: Instant) -> Result<(), BoxError> {
        self.inner.freeze(deadline)?;
        if self.fault == WriterFault::FreezeAfterLocking {
            return Err(injected("freeze"));
        }
        Ok(())
    }
    fn thaw(&mut self) -> Result<(), BoxError> {
        self.inner.thaw()?;
        if self.fault == WriterFault::Thaw {
            return Err(injected("thaw"));
        }
        Ok(())
    }
    fn verify(&self, copy: &CopyView) -> Result<VerifyReport, BoxError> {
        self.inner.verify(copy)
    }
    fn backup_complete(
        &mut self,
        copy: &CopyView,
        kept: &dyn KeptCopies,
    ) -> Result<Option<String>, BoxError> {
        let note = self.inner.backup_complete(copy, kept)?;
        if self.fault == WriterFault::BackupComplete {
            return Err(injected("backup-complete"));
        }
        Ok(note)
    }
}

/// Where a [`FaultyProvider`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderFault {
    /// The real commit writes the copy, then an error is reported: a partial copy exists
    /// and must be discarded.
    CommitAfterWriting,
    /// The commit hangs (honouring cancellation) for this long before delegating: the
    /// freeze deadline must fire.
    SlowCommit(Duration),
    /// Like `SlowCommit`, but ignores cancellation (a provider that hangs).
    HungCommit(Duration),
}

pub struct FaultyProvider {
    pub inner: Arc<dyn Provider>,
    pub fault: ProviderFault,
}

impl Provider for FaultyProvider {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn rank(&self) -> u32 {
        self.inner.rank()
    }
    fn check(&self, paths: &[PathBuf]) -> Result<(), Unsupported> {
        self.inner.check(paths)
    }
    fn location(&self, request: &CommitRequest) -> Result<String, BoxError> {
        self.inner.location(request)
    }
    fn commit(
        &self,
        request: &CommitRequest,
        location: &str,
        control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError> {
        match self.fault {
            ProviderFault::CommitAfterWriting => {
                self.inner.commit(request, location, control)?;
                Err(injected("commit"))
            }
            ProviderFault::SlowCommit(d) | ProviderFault::HungCommit(d) => {
                let honour = matches!(self.fault, ProviderFault::SlowCommit(_));
                let until = Instant::now() + d;
                while Instant::now() < until {
                    if honour && control.cancelled() {
                        return Err("cancelled".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.inner.commit(request, location, control)
            }
        }
    }
    fn delete(&self, location: &str) -> Result<(), BoxError> {
        self.inner.delete(location)
    }
    fn expose(&self, location: &str, files: &[FileEntry]) -> Result<CopyView, BoxError> {
        self.inner.expose(location, files)
    }
    fn restore_file(&self, location: &str, original: &Path, dest: &Path) -> Result<(), BoxError> {
        self.inner.restore_file(location, original, dest)
    }
}
