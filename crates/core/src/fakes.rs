//! Scripted fakes of the three contracts (journal, writer, provider) for the core's own
//! tests. Every call to any of them goes to one shared, ordered [`Log`], so a test can
//! check the order of calls across all three; the log also watches the freeze-window
//! rule: a journal call while a writer is asked to freeze and not yet thawed is
//! recorded as a violation. Each fake can fail at a chosen call; the writer can sleep
//! or panic in it; the provider's commit can hang until cancelled, ignore the
//! cancellation, or panic. The provider writes real files under a directory, so that a
//! copy can be verified and restored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::coordinator::{Coordinator, CreatedCopy, ShadowSetRequest, DEFAULT_FREEZE_DEADLINE};
use crate::error::{BoxError, Error};
use crate::events::EventSink;
use crate::journal::{Journal, JournalError, NewCopy};
use crate::model::Origin;
use crate::model::{
    Component, ComponentRole, CopyId, CopyState, CopyView, FileEntry, Phase, VerifyReport,
};
use crate::provider::{CommitControl, CommitRequest, Provider, Unsupported};
use crate::writer::{KeptCopies, KeptCopiesUnknown, RestoreMode, RestorePlan, Writer};

/// The calls to every fake, in order, and the freeze-window rule's violations.
#[derive(Default)]
pub struct Log {
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    calls: Vec<String>,
    /// Writers asked to freeze and not yet thawed.
    frozen: BTreeSet<String>,
    violations: Vec<String>,
}

impl Log {
    pub fn new() -> Arc<Log> {
        Arc::new(Log::default())
    }

    fn call(&self, call: String) {
        self.state.lock().unwrap().calls.push(call);
    }

    fn journal_call(&self, call: String) {
        let mut s = self.state.lock().unwrap();
        if !s.frozen.is_empty() {
            let v = format!("{call} while {:?} frozen", s.frozen);
            s.violations.push(v);
        }
        s.calls.push(call);
    }

    fn froze(&self, writer: &str) {
        let mut s = self.state.lock().unwrap();
        s.frozen.insert(writer.to_string());
        s.calls.push(format!("{writer}.freeze"));
    }

    fn thawed(&self, writer: &str) {
        let mut s = self.state.lock().unwrap();
        s.frozen.remove(writer);
        s.calls.push(format!("{writer}.thaw"));
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Journal calls made between a writer's freeze and its thaw.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// The calls that start with `prefix`, in order.
    pub fn matching(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    /// Where the first call equal to `call` is.
    pub fn position(&self, call: &str) -> Option<usize> {
        self.calls().iter().position(|c| c == call)
    }

    /// Where the last call equal to `call` is.
    pub fn last_position(&self, call: &str) -> Option<usize> {
        self.calls().iter().rposition(|c| c == call)
    }
}

/// What the fake journal knows of one copy.
#[derive(Clone, Debug)]
pub struct CopyRecord {
    pub state: CopyState,
    pub error: Option<String>,
    pub location: Option<String>,
}

/// An in-memory journal that logs every call (`journal.enter_phase freeze`) and fails
/// the first call with a chosen label.
pub struct FakeJournal {
    log: Arc<Log>,
    fail: Mutex<Option<String>>,
    copies: Mutex<BTreeMap<CopyId, CopyRecord>>,
}

impl FakeJournal {
    pub fn new(log: &Arc<Log>) -> Self {
        FakeJournal {
            log: log.clone(),
            fail: Mutex::new(None),
            copies: Mutex::new(BTreeMap::new()),
        }
    }

    /// The first call logged as `label` (`journal.record_files`) fails.
    pub fn fail_at(&self, label: &str) {
        *self.fail.lock().unwrap() = Some(label.to_string());
    }

    pub fn copy(&self, id: CopyId) -> CopyRecord {
        self.copies.lock().unwrap()[&id].clone()
    }

    /// Every copy, oldest first.
    pub fn copies(&self) -> Vec<(CopyId, CopyRecord)> {
        let copies = self.copies.lock().unwrap();
        copies.iter().map(|(id, c)| (*id, c.clone())).collect()
    }

    fn call(&self, label: String) -> Result<(), JournalError> {
        self.log.journal_call(label.clone());
        let mut fail = self.fail.lock().unwrap();
        if fail.as_deref() == Some(label.as_str()) {
            *fail = None;
            return Err(format!("injected fault at {label}").into());
        }
        Ok(())
    }

    fn update(&self, id: CopyId, f: impl FnOnce(&mut CopyRecord)) {
        f(self
            .copies
            .lock()
            .unwrap()
            .get_mut(&id)
            .expect("a begun copy"));
    }
}

impl Journal for FakeJournal {
    fn begin_copy(&self, _copy: &NewCopy<'_>) -> Result<CopyId, JournalError> {
        self.call("journal.begin_copy".into())?;
        let mut copies = self.copies.lock().unwrap();
        let id = copies.len() as CopyId + 1;
        copies.insert(
            id,
            CopyRecord {
                state: CopyState::InProgress,
                error: None,
                location: None,
            },
        );
        Ok(id)
    }
    fn set_location(&self, id: CopyId, location: &str) -> Result<(), JournalError> {
        self.call("journal.set_location".into())?;
        self.update(id, |c| c.location = Some(location.to_string()));
        Ok(())
    }
    fn discarded(&self, id: CopyId) -> Result<(), JournalError> {
        self.call("journal.discarded".into())?;
        self.update(id, |c| c.location = None);
        Ok(())
    }
    fn enter_phase(&self, _id: CopyId, phase: Phase) -> Result<(), JournalError> {
        self.call(format!("journal.enter_phase {phase}"))
    }
    fn finish_phase(
        &self,
        _id: CopyId,
        phase: Phase,
        _took: Duration,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let how = if error.is_some() { "failed" } else { "ok" };
        self.call(format!("journal.finish_phase {phase} {how}"))
    }
    fn record_phase(
        &self,
        _id: CopyId,
        phase: Phase,
        _started: SystemTime,
        _took: Duration,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let how = if error.is_some() { "failed" } else { "ok" };
        self.call(format!("journal.record_phase {phase} {how}"))
    }
    fn record_components(&self, _id: CopyId, _c: &[Component]) -> Result<(), JournalError> {
        self.call("journal.record_components".into())
    }
    fn record_files(&self, _id: CopyId, _files: &[FileEntry]) -> Result<(), JournalError> {
        self.call("journal.record_files".into())
    }
    fn record_freeze_window(&self, _id: CopyId, _window: Duration) -> Result<(), JournalError> {
        self.call("journal.record_freeze_window".into())
    }
    fn record_verification(
        &self,
        _id: CopyId,
        _verification: &crate::verify::Verification,
        _took: Duration,
    ) -> Result<(), JournalError> {
        self.call("journal.record_verification".into())
    }
    fn finish_copy(
        &self,
        id: CopyId,
        state: CopyState,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        self.call(format!("journal.finish_copy {state}"))?;
        self.update(id, |c| {
            c.state = state;
            c.error = error.map(str::to_string);
        });
        Ok(())
    }
    fn begin_restore(&self, _copy_id: CopyId, _record: &str) -> Result<i64, JournalError> {
        self.call("journal.begin_restore".into())?;
        Ok(1)
    }
    fn record_restore(&self, _restore: i64, _record: &str) -> Result<(), JournalError> {
        self.call("journal.record_restore".into())
    }
    fn end_restore(&self, _restore: i64) -> Result<(), JournalError> {
        self.call("journal.end_restore".into())
    }
}

/// What a fake does when it reaches the method it is scripted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Fail,
    Panic,
    /// Fails as only a busy moment ([`crate::error::Transient`]).
    Busy,
}

/// A writer of one file (its component) that logs every call as `NAME.method`.
pub struct FakeWriter {
    name: String,
    log: Arc<Log>,
    file: PathBuf,
    pinned: bool,
    at: Option<(&'static str, Act)>,
    freeze_sleep: Duration,
    late_file: Option<(PathBuf, PathBuf)>,
}

impl FakeWriter {
    pub fn new(name: &str, log: &Arc<Log>, file: &Path) -> Self {
        FakeWriter {
            name: name.to_string(),
            log: log.clone(),
            file: file.to_path_buf(),
            pinned: false,
            at: None,
            freeze_sleep: Duration::ZERO,
            late_file: None,
        }
    }

    /// `method` fails (`verify`: reports the copy damaged).
    pub fn fail_at(mut self, method: &'static str) -> Self {
        self.at = Some((method, Act::Fail));
        self
    }

    pub fn panic_at(mut self, method: &'static str) -> Self {
        self.at = Some((method, Act::Panic));
        self
    }

    /// `method` fails as a busy moment ([`crate::error::Transient`]).
    pub fn busy_at(mut self, method: &'static str) -> Self {
        self.at = Some((method, Act::Busy));
        self
    }

    /// `freeze` takes this long (and then succeeds).
    pub fn sleep_in_freeze(mut self, d: Duration) -> Self {
        self.freeze_sleep = d;
        self
    }

    /// Its component is pinned from prepare to thaw (copied early where the provider
    /// wants that).
    pub fn pinned(mut self) -> Self {
        self.pinned = true;
        self
    }

    /// After the thaw, the copy must also hold `source`'s content as `original`.
    pub fn with_late_file(mut self, original: &Path, source: &Path) -> Self {
        self.late_file = Some((original.to_path_buf(), source.to_path_buf()));
        self
    }

    /// Logs `method` and acts as scripted.
    fn enter(&self, method: &str) -> Result<(), BoxError> {
        self.log.call(format!("{}.{method}", self.name));
        self.act(method)
    }

    fn act(&self, method: &str) -> Result<(), BoxError> {
        match self.at {
            Some((m, Act::Fail)) if m == method => {
                Err(format!("injected fault in {}.{method}", self.name).into())
            }
            Some((m, Act::Panic)) if m == method => {
                panic!("injected panic in {}.{method}", self.name)
            }
            Some((m, Act::Busy)) if m == method => Err(crate::error::Transient::boxed(format!(
                "injected busy moment in {}.{method}",
                self.name
            ))),
            _ => Ok(()),
        }
    }
}

impl Writer for FakeWriter {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn identify(&mut self) -> Result<Vec<Component>, BoxError> {
        self.enter("identify")?;
        Ok(vec![Component {
            writer: self.name.clone(),
            name: "data".into(),
            role: ComponentRole::Data,
            path: self.file.clone(),
            required: true,
            pinned: self.pinned,
        }])
    }
    fn prepare(&mut self) -> Result<(), BoxError> {
        self.enter("prepare")
    }
    fn freeze(&mut self, _deadline: Instant) -> Result<(), BoxError> {
        self.log.froze(&self.name);
        std::thread::sleep(self.freeze_sleep);
        self.act("freeze")
    }
    fn thaw(&mut self) -> Result<(), BoxError> {
        // A thaw that fails has thawed all the same (as a real one that cannot report it).
        self.log.thawed(&self.name);
        self.act("thaw")
    }
    fn after_thaw_files(&mut self) -> Result<Vec<(PathBuf, PathBuf)>, BoxError> {
        self.enter("after_thaw_files")?;
        Ok(self.late_file.iter().cloned().collect())
    }
    fn post_snapshot(&mut self, _copy: &CopyView) -> Result<(), BoxError> {
        self.enter("post_snapshot")
    }
    fn abort(&mut self) -> Result<(), BoxError> {
        self.enter("abort")
    }
    fn verify(&self, copy: &CopyView) -> Result<VerifyReport, BoxError> {
        self.log.call(format!("{}.verify", self.name));
        let damaged = matches!(self.at, Some(("verify", Act::Fail)));
        Ok(VerifyReport {
            ok: !damaged && copy.path_of(&self.file).is_some(),
            detail: if damaged {
                "injected damage".into()
            } else {
                "fine".into()
            },
        })
    }
    fn backup_complete(
        &mut self,
        _copy: &CopyView,
        _kept: &dyn KeptCopies,
    ) -> Result<Option<String>, BoxError> {
        self.enter("backup_complete")?;
        Ok(Some(format!("{} truncated its logs", self.name)))
    }
    fn check_restore_target(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        self.enter("check_restore_target")
    }
    fn pre_restore(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        self.enter("pre_restore")
    }
    fn post_restore(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        self.enter("post_restore")
    }
    fn finish_restore(
        &self,
        staged: &[(PathBuf, PathBuf)],
        _mode: &RestoreMode,
    ) -> Result<RestorePlan, BoxError> {
        self.enter("finish_restore")?;
        Ok(RestorePlan {
            install: staged.iter().map(|(t, s)| (s.clone(), t.clone())).collect(),
            remove: Vec::new(),
            discard: Vec::new(),
            notes: Vec::new(),
        })
    }
}

/// How the fake provider's `commit` behaves (inside the freeze window; a precommit
/// always copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    Copy,
    /// Waits until cancelled, then fails, as the contract asks.
    HangUntilCancelled,
    /// Ignores cancellation: fails after this long, having written nothing.
    IgnoreCancel(Duration),
    Panic,
}

/// A provider whose copies are directories under `root`, one file per original (named
/// by its path); logs every call as `provider.method`.
pub struct FakeProvider {
    log: Arc<Log>,
    root: PathBuf,
    fail: Vec<&'static str>,
    commit: CommitMode,
    pinned_early: bool,
}

impl FakeProvider {
    pub fn new(log: &Arc<Log>, root: &Path) -> Self {
        FakeProvider {
            log: log.clone(),
            root: root.to_path_buf(),
            fail: Vec::new(),
            commit: CommitMode::Copy,
            pinned_early: false,
        }
    }

    /// `method` fails (`precommit`: the commit before the freeze); more than one may.
    pub fn fail_at(mut self, method: &'static str) -> Self {
        self.fail.push(method);
        self
    }

    pub fn commit_mode(mut self, mode: CommitMode) -> Self {
        self.commit = mode;
        self
    }

    /// Commits pinned components before the freeze.
    pub fn pinned_early(mut self) -> Self {
        self.pinned_early = true;
        self
    }

    fn enter(&self, method: &str) -> Result<(), BoxError> {
        self.log.call(format!("provider.{method}"));
        if self.fail.contains(&method) {
            return Err(format!("injected fault in provider.{method}").into());
        }
        Ok(())
    }

    /// Where the copy of `original` lives in `location`.
    pub fn in_copy(location: &str, original: &Path) -> PathBuf {
        let name = original.to_string_lossy().replace('/', "%");
        Path::new(location).join(name)
    }

    fn copy_in(location: &str, original: &Path, source: &Path) -> Result<FileEntry, BoxError> {
        std::fs::create_dir_all(location)?;
        let size = std::fs::copy(source, Self::in_copy(location, original))?;
        Ok(FileEntry {
            path: original.to_path_buf(),
            size,
            mode: 0o644,
            mtime_ns: 0,
            blake3: None,
        })
    }
}

impl Provider for FakeProvider {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn rank(&self) -> u32 {
        0
    }
    fn copies_pinned_early(&self) -> bool {
        self.pinned_early
    }
    fn check(&self, _paths: &[PathBuf]) -> Result<(), Unsupported> {
        self.enter("check").map_err(|e| Unsupported {
            reason: e.to_string(),
        })
    }
    fn location(&self, request: &CommitRequest) -> Result<String, BoxError> {
        self.enter("location")?;
        let dir = self.root.join(format!("copy-{}", request.copy_id));
        Ok(dir.to_string_lossy().into_owned())
    }
    fn commit(
        &self,
        request: &CommitRequest,
        location: &str,
        control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError> {
        // The coordinator's first call, with only pinned components, is the precommit.
        let early = self.pinned_early
            && !request.continues
            && !request.components.is_empty()
            && request.components.iter().all(|c| c.pinned);
        let stage = if early { "precommit" } else { "commit" };
        self.enter(stage)?;
        if stage == "commit" {
            match self.commit {
                CommitMode::Copy => {}
                CommitMode::HangUntilCancelled => loop {
                    if control.cancelled() {
                        self.log.call("provider.commit cancelled".into());
                        return Err("cancelled".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                },
                CommitMode::IgnoreCancel(d) => {
                    std::thread::sleep(d);
                    return Err("too late".into());
                }
                CommitMode::Panic => panic!("injected panic in provider.commit"),
            }
        }
        request
            .components
            .iter()
            .filter(|c| c.path.exists())
            .map(|c| Self::copy_in(location, &c.path, &c.path))
            .collect()
    }
    fn persist(&self, _location: &str) -> Result<(), BoxError> {
        self.enter("persist")
    }
    fn delete(&self, location: &str) -> Result<(), BoxError> {
        self.enter("delete")?;
        match std::fs::remove_dir_all(location) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
    fn add_files(
        &self,
        location: &str,
        files: &[(PathBuf, PathBuf)],
    ) -> Result<Vec<FileEntry>, BoxError> {
        self.enter("add_files")?;
        files
            .iter()
            .map(|(original, source)| Self::copy_in(location, original, source))
            .collect()
    }
    fn expose(&self, location: &str, files: &[FileEntry]) -> Result<CopyView, BoxError> {
        self.enter("expose")?;
        Ok(CopyView {
            files: files
                .iter()
                .map(|f| (f.path.clone(), Self::in_copy(location, &f.path)))
                .collect(),
        })
    }
    fn restore_file(&self, location: &str, original: &Path, dest: &Path) -> Result<(), BoxError> {
        self.enter("restore_file")?;
        std::fs::copy(Self::in_copy(location, original), dest)?;
        Ok(())
    }
}

/// Records the coordinator's events (`phase_started freeze`, `warning …`), in order.
#[derive(Default)]
pub struct FakeEvents {
    events: Mutex<Vec<String>>,
    /// Progress in bytes `(done, total)`, apart from the events (verification reports
    /// it too, as often as it likes).
    bytes: Mutex<Vec<(u64, u64)>>,
}

impl FakeEvents {
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    pub fn bytes(&self) -> Vec<(u64, u64)> {
        self.bytes.lock().unwrap().clone()
    }

    fn push(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }
}

impl EventSink for FakeEvents {
    fn copy_started(&self, id: CopyId, set: &str) {
        self.push(format!("copy_started {id} {set}"));
    }
    fn phase_started(&self, phase: Phase) {
        self.push(format!("phase_started {phase}"));
    }
    fn phase_finished(&self, phase: Phase, _took: Duration, ok: bool) {
        self.push(format!("phase_finished {phase} {ok}"));
    }
    fn warning(&self, message: &str) {
        self.push(format!("warning {message}"));
    }
    fn note(&self, message: &str) {
        self.push(format!("note {message}"));
    }
    fn bytes(&self, done: u64, total: u64) {
        self.bytes.lock().unwrap().push((done, total));
    }
}

/// A set of writers (`w0`, `w1`, …), each of one file in a temporary directory, with
/// the fakes' log, journal and events.
pub struct Set {
    pub dir: tempfile::TempDir,
    pub log: Arc<Log>,
    pub journal: FakeJournal,
    pub events: Arc<FakeEvents>,
    pub files: Vec<PathBuf>,
}

impl Set {
    pub fn new(writers: usize) -> Set {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let files = (0..writers)
            .map(|i| {
                let f = dir.path().join(format!("data/w{i}.db"));
                std::fs::write(&f, format!("the data of w{i}")).unwrap();
                f
            })
            .collect();
        let log = Log::new();
        Set {
            journal: FakeJournal::new(&log),
            log,
            dir,
            events: Arc::new(FakeEvents::default()),
            files,
        }
    }

    pub fn writer(&self, i: usize) -> FakeWriter {
        FakeWriter::new(&format!("w{i}"), &self.log, &self.files[i])
    }

    pub fn writers(&self) -> Vec<FakeWriter> {
        (0..self.files.len()).map(|i| self.writer(i)).collect()
    }

    pub fn provider(&self) -> FakeProvider {
        FakeProvider::new(&self.log, &self.dir.path().join("copies"))
    }

    pub fn create(
        &self,
        writers: Vec<FakeWriter>,
        provider: FakeProvider,
    ) -> Result<CreatedCopy, Error> {
        self.create_within(writers, provider, DEFAULT_FREEZE_DEADLINE)
    }

    pub fn create_within(
        &self,
        writers: Vec<FakeWriter>,
        provider: FakeProvider,
        freeze_deadline: Duration,
    ) -> Result<CreatedCopy, Error> {
        Coordinator::new(&self.journal, self.events.clone()).create(ShadowSetRequest {
            set_name: "set".into(),
            spec_json: "{}".into(),
            origin: Origin::Create,
            writers: writers
                .into_iter()
                .map(|w| Box::new(w) as Box<dyn crate::writer::Writer>)
                .collect(),
            unmanaged_components: Vec::new(),
            provider: Arc::new(provider),
            freeze_deadline,
            verify: true,
            verify_base: None,
            kept_copies: Box::new(KeptCopiesUnknown),
        })
    }
}
