//! The catalog as the coordinator's journal: a copy's life recorded call by call (phases,
//! components, manifest, verification, end), recovery of a copy a dead process left in
//! progress (and of the data a failed abort left), and the queue's lock.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shadowcopy_catalog::{Catalog, QueueError, QueueHolder, Wait};
use shadowcopy_core::journal::{Journal, NewCopy};
use shadowcopy_core::verify::Verification;
use shadowcopy_core::{
    BoxError, CommitControl, CommitRequest, Component, ComponentRole, CopyId, CopyState, CopyView,
    FileEntry, Origin, Phase, Provider, Unsupported, VerifyReport, VerifyState,
};

fn begin(catalog: &Catalog) -> CopyId {
    catalog
        .begin_copy(&NewCopy {
            set_name: "bank",
            spec_json: r#"{"writers":[]}"#,
            origin: Origin::Create,
            provider: "copy",
            freeze_deadline: Duration::from_secs(10),
        })
        .unwrap()
}

fn holder(set: &str) -> QueueHolder {
    QueueHolder {
        pid: std::process::id(),
        set: set.into(),
        command: "create".into(),
        since_ms: 0,
    }
}

/// A provider that can only delete (a directory), as recovery needs.
struct Deleter;

impl Provider for Deleter {
    fn kind(&self) -> &'static str {
        "copy"
    }
    fn rank(&self) -> u32 {
        0
    }
    fn check(&self, _paths: &[PathBuf]) -> Result<(), Unsupported> {
        Ok(())
    }
    fn location(&self, _request: &CommitRequest) -> Result<String, BoxError> {
        Err("not in these tests".into())
    }
    fn commit(
        &self,
        _request: &CommitRequest,
        _location: &str,
        _control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError> {
        Err("not in these tests".into())
    }
    fn delete(&self, location: &str) -> Result<(), BoxError> {
        match std::fs::remove_dir_all(location) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
    fn expose(&self, _location: &str, _files: &[FileEntry]) -> Result<CopyView, BoxError> {
        Err("not in these tests".into())
    }
    fn restore_file(&self, _l: &str, _o: &Path, _d: &Path) -> Result<(), BoxError> {
        Err("not in these tests".into())
    }
}

#[test]
fn a_copy_is_recorded_call_by_call() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let id = begin(&catalog);
    let s = catalog.summary(id).unwrap();
    assert_eq!(s.state, CopyState::InProgress);
    assert_eq!(s.pid, std::process::id(), "the process is recorded");

    catalog.enter_phase(id, Phase::Identify).unwrap();
    let odd = PathBuf::from(OsStr::from_bytes(b"/srv/bad\xffname.db"));
    let components = vec![Component {
        writer: "sqlite:/srv/bad.db".into(),
        name: "db".into(),
        role: ComponentRole::Data,
        path: odd.clone(),
        required: true,
        pinned: true,
    }];
    catalog
        .finish_phase(id, Phase::Identify, Duration::from_millis(3), None)
        .unwrap();
    catalog.record_components(id, &components).unwrap();
    let location = dir.path().join("copies/copy-1");
    catalog
        .set_location(id, location.to_str().unwrap())
        .unwrap();
    catalog.enter_phase(id, Phase::Freeze).unwrap();
    assert_eq!(catalog.summary(id).unwrap().phase, "freeze");
    catalog
        .record_freeze_window(id, Duration::from_micros(1500))
        .unwrap();
    catalog
        .finish_phase(id, Phase::Freeze, Duration::from_micros(700), None)
        .unwrap();
    catalog
        .record_phase(
            id,
            Phase::Commit,
            SystemTime::now(),
            Duration::from_micros(600),
            Some("slow"),
        )
        .unwrap();
    let files = vec![FileEntry {
        path: odd.clone(),
        size: 4096,
        mode: 0o644,
        mtime_ns: 17,
        blake3: Some("ab".repeat(32)),
    }];
    catalog.record_files(id, &files).unwrap();
    catalog
        .record_verification(
            id,
            &Verification::without_hashes(VerifyReport {
                ok: true,
                detail: "fine".into(),
            }),
            Duration::from_millis(5),
        )
        .unwrap();
    catalog.enter_phase(id, Phase::Done).unwrap();
    catalog.finish_copy(id, CopyState::Usable, None).unwrap();

    let detail = catalog.detail(id).unwrap();
    let s = &detail.summary;
    assert_eq!(s.state, CopyState::Usable);
    assert_eq!(s.location.as_deref(), location.to_str());
    assert_eq!(s.freeze_window_us, Some(1500));
    assert_eq!(s.verify_state, VerifyState::Passed);
    assert_eq!((s.files, s.bytes), (1, 4096));
    assert!(s.finished_ms.is_some());
    let phases: Vec<(&str, Option<&str>)> = detail
        .phases
        .iter()
        .map(|p| (p.phase.as_str(), p.error.as_deref()))
        .collect();
    for expected in [
        ("identify", None),
        ("freeze", None),
        ("commit", Some("slow")),
    ] {
        assert!(phases.contains(&expected), "{expected:?} in {phases:?}");
    }
    assert_eq!(
        catalog.components(id).unwrap(),
        components,
        "paths as bytes"
    );
    assert_eq!(catalog.manifest(id).unwrap(), files);
    assert_eq!(detail.verifications.len(), 1);
    assert!(detail.verifications[0].ok);
    assert_eq!(detail.spec["writers"], serde_json::json!([]));

    let reopened = Catalog::open_existing(dir.path()).unwrap();
    assert_eq!(
        reopened.summary(id).unwrap().state,
        CopyState::Usable,
        "durable"
    );
}

#[test]
fn a_failed_copy_keeps_its_reason_and_forgets_a_discarded_location() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let id = begin(&catalog);
    catalog.set_location(id, "/nowhere/copy-1").unwrap();
    catalog.discarded(id).unwrap();
    catalog
        .finish_copy(
            id,
            CopyState::Failed,
            Some("provider copy failed during commit"),
        )
        .unwrap();
    let s = catalog.summary(id).unwrap();
    assert_eq!(s.state, CopyState::Failed);
    assert_eq!(s.location, None);
    assert_eq!(
        s.error.as_deref(),
        Some("provider copy failed during commit")
    );
}

#[test]
fn recovery_discards_a_copy_a_dead_process_left_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let usable = begin(&catalog);
    catalog
        .finish_copy(usable, CopyState::Usable, None)
        .unwrap();
    let id = begin(&catalog);
    let location = dir.path().join("copies/copy-2");
    std::fs::create_dir_all(&location).unwrap();
    std::fs::write(location.join("partial"), b"half").unwrap();
    catalog
        .set_location(id, location.to_str().unwrap())
        .unwrap();
    catalog.enter_phase(id, Phase::Freeze).unwrap();

    let guard = catalog
        .acquire_queue(&holder("bank"), Wait::No, |_| {})
        .unwrap();
    let provider: Arc<dyn Provider> = Arc::new(Deleter);
    let recovered = catalog
        .recover_interrupted(&guard, &|_| Ok(provider.clone()))
        .unwrap();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].id, id);
    let s = catalog.summary(id).unwrap();
    assert_eq!(s.state, CopyState::Failed);
    let reason = s.error.unwrap();
    assert!(reason.contains("interrupted"), "{reason}");
    assert!(reason.contains("freeze window"), "{reason}");
    assert_eq!(s.location, None);
    assert!(!location.exists(), "the partial copy is gone");
    assert_eq!(catalog.summary(usable).unwrap().state, CopyState::Usable);
    assert!(
        catalog
            .recover_interrupted(&guard, &|_| Ok(provider.clone()))
            .unwrap()
            .is_empty(),
        "done once"
    );
}

#[test]
fn recovery_keeps_a_location_it_cannot_discard() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let id = begin(&catalog);
    let location = dir.path().join("copies/copy-1");
    catalog
        .set_location(id, location.to_str().unwrap())
        .unwrap();
    let guard = catalog
        .acquire_queue(&holder("bank"), Wait::No, |_| {})
        .unwrap();
    let recovered = catalog
        .recover_interrupted(&guard, &|_| Err("no such provider".into()))
        .unwrap();
    assert_eq!(recovered.len(), 1);
    let s = catalog.summary(id).unwrap();
    assert_eq!(s.state, CopyState::Failed);
    assert!(s.error.unwrap().contains("no such provider"));
    assert!(s.location.is_some(), "left for the next run to try again");
}

#[test]
fn the_queue_admits_one_holder_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Catalog::open(dir.path()).unwrap();
    let second = Catalog::open(dir.path()).unwrap();
    let guard = first
        .acquire_queue(&holder("bank"), Wait::No, |_| {})
        .unwrap();
    match second.acquire_queue(&holder("other"), Wait::No, |_| {}) {
        Err(QueueError::Busy { holder: Some(h) }) => {
            assert_eq!((h.set.as_str(), h.pid), ("bank", std::process::id()));
        }
        Err(e) => panic!("busy with the holder named, not {e}"),
        Ok(_) => panic!("the queue is held"),
    }
    let mut told = None;
    let waited = second.acquire_queue(
        &holder("other"),
        Wait::Upto(Duration::from_millis(200)),
        |h| told = h.map(|h| h.set.clone()),
    );
    assert!(matches!(waited, Err(QueueError::TimedOut { .. })));
    assert_eq!(
        told.as_deref(),
        Some("bank"),
        "the waiter is told who holds it"
    );
    drop(guard);
    second
        .acquire_queue(&holder("other"), Wait::No, |_| {})
        .expect("free once the holder is gone");
}

#[test]
fn copies_list_in_pages_and_count_per_set() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for (set, state, size) in [
        ("bank", CopyState::Usable, 10),
        ("ledger", CopyState::Usable, 20),
        ("bank", CopyState::Usable, 30),
        ("bank", CopyState::Failed, 40),
        ("ledger", CopyState::InProgress, 50),
    ] {
        let id = catalog
            .begin_copy(&NewCopy {
                set_name: set,
                spec_json: "{}",
                origin: Origin::Create,
                provider: "copy",
                freeze_deadline: Duration::from_secs(10),
            })
            .unwrap();
        let file = |name: &str, size| FileEntry {
            path: PathBuf::from(name),
            size,
            mode: 0o600,
            mtime_ns: 0,
            blake3: None,
        };
        catalog
            .record_files(id, &[file("/d/a", size), file("/d/b", 1)])
            .unwrap();
        if state != CopyState::InProgress {
            catalog.finish_copy(id, state, None).unwrap();
        }
        ids.push(id);
    }

    let page = |set, after, limit| -> Vec<CopyId> {
        let copies = catalog.list_page(set, after, limit).unwrap();
        copies.iter().map(|c| c.id).collect()
    };
    assert_eq!(page(None, 0, 2), ids[..2]);
    assert_eq!(page(None, ids[1], 2), ids[2..4]);
    assert_eq!(page(None, ids[3], 2), ids[4..]);
    assert_eq!(page(None, ids[4], 2), Vec::<CopyId>::new(), "the end");
    assert_eq!(page(Some("bank"), ids[0], 10), vec![ids[2], ids[3]]);
    assert_eq!(page(None, 0, usize::MAX), page(None, 0, 100));
    let listed = catalog.list(None).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|c| (c.files, c.bytes))
            .collect::<Vec<_>>(),
        vec![(2, 11), (2, 21), (2, 31), (2, 41), (2, 51)],
        "each copy's file count and bytes as its manifest has them"
    );

    let totals = catalog.set_totals().unwrap();
    let bank = &totals["bank"];
    assert_eq!(bank.copies, 3);
    let mut by_state = bank.by_state.clone();
    by_state.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        by_state,
        vec![(CopyState::Failed, 1), (CopyState::Usable, 2)]
    );
    let newest = bank.newest_usable.as_ref().unwrap();
    assert_eq!(
        (newest.id, newest.bytes),
        (ids[2], 31),
        "the newest usable, not the failed one after it"
    );
    let ledger = &totals["ledger"];
    assert_eq!(ledger.copies, 2);
    assert_eq!(ledger.newest_usable.as_ref().unwrap().id, ids[1]);
    assert_eq!(totals.len(), 2);
}

/// A finished copy of set `bank` whose verification `passed` (or not), built on `base`
/// with `leaves` for one file.
fn verified_copy(catalog: &Catalog, passed: bool, base: Option<CopyId>, leaves: u8) -> CopyId {
    use shadowcopy_core::leaf_hash::LeafHashes;
    let id = begin(catalog);
    catalog.finish_copy(id, CopyState::Usable, None).unwrap();
    let verification = Verification {
        report: VerifyReport {
            ok: passed,
            detail: String::new(),
        },
        leaves: vec![(
            PathBuf::from("/data/bank.db"),
            LeafHashes {
                leaf_size: 16384,
                size: 2 * 16384,
                cvs: vec![[leaves; 32], [leaves; 32]],
            },
        )],
        base,
        bytes_read: 0,
        bytes: 2 * 16384,
    };
    catalog
        .record_verification(id, &verification, Duration::from_millis(1))
        .unwrap();
    id
}

/// Incremental verification builds on the set's newest verified copy: one copy's
/// leaves are kept per set, a failed verification is never built on, an older copy
/// verified again does not take the newest's place, and a chain whose full
/// verification is older than the set allows ends (the next one is full).
#[test]
fn a_verification_builds_on_the_newest_passed_copy_within_the_full_period() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let now = shadowcopy_catalog::now_ms();
    assert!(
        catalog.verify_base("bank", None, 0).unwrap().is_none(),
        "nothing yet"
    );

    let first = verified_copy(&catalog, true, None, 1);
    let base = catalog
        .verify_base("bank", None, now - 1000)
        .unwrap()
        .unwrap();
    assert_eq!(base.copy, first);
    let leaves = &base.leaves[Path::new("/data/bank.db")];
    assert_eq!((leaves.size, leaves.cvs[1]), (2 * 16384, [1; 32]));
    // A copy is never its own base.
    assert!(catalog
        .verify_base("bank", Some(first), 0)
        .unwrap()
        .is_none());
    assert!(catalog.verify_base("other", None, 0).unwrap().is_none());

    // Built on the first: the chain still goes back to the first's full verification.
    let second = verified_copy(&catalog, true, Some(first), 2);
    let base = catalog
        .verify_base("bank", None, now - 1000)
        .unwrap()
        .unwrap();
    assert_eq!(base.copy, second);
    // Only the newest copy's leaves are kept.
    assert!(catalog
        .verify_base("bank", Some(second), 0)
        .unwrap()
        .is_none());

    // A failed verification is not built on, and takes nothing away from the second.
    let third = verified_copy(&catalog, false, Some(second), 3);
    assert_eq!(
        catalog.verify_base("bank", None, 0).unwrap().unwrap().copy,
        second
    );
    assert!(catalog
        .verify_base("bank", Some(second), 0)
        .unwrap()
        .is_none());
    let _ = third;

    // The first verified again (in full): the second keeps its place.
    let verification = Verification::without_hashes(VerifyReport {
        ok: true,
        detail: String::new(),
    });
    catalog
        .record_verification(first, &verification, Duration::from_millis(1))
        .unwrap();
    assert_eq!(
        catalog.verify_base("bank", None, 0).unwrap().unwrap().copy,
        second
    );

    // The full verification the chain goes back to is older than allowed: none.
    assert!(catalog
        .verify_base("bank", None, now + 60_000)
        .unwrap()
        .is_none());
}
