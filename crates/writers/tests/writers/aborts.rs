//! Every abort path: afterwards nothing is frozen (the database takes a write at once),
//! the failed copy is recorded as failed with its reason and its data is gone, and the
//! next shadow set succeeds.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use shadowcopy_catalog::Catalog;
use shadowcopy_core::journal::{Journal, NewCopy};
use shadowcopy_core::{CopyState, Error, EventSink, Origin, Phase};
use shadowcopy_testing::faults::{FaultyProvider, FaultyWriter, ProviderFault, WriterFault};
use shadowcopy_testing::{bank, wait};

use crate::support::{assert_writable, Env};

fn assert_aborted_cleanly(
    env: &Env,
    result: Result<shadowcopy_core::CreatedCopy, Error>,
    expected: fn(&Error) -> bool,
) {
    let err = result.expect_err("the shadow set must fail");
    assert!(expected(&err), "unexpected error: {err:?}");
    assert_writable(&env.db);
    let copies = env.catalog.list(None).unwrap();
    let last = copies.last().expect("the failed copy is recorded");
    assert_eq!(last.state, CopyState::Failed, "{last:?}");
    assert!(
        last.error.as_deref().is_some_and(|e| !e.is_empty()),
        "the reason is recorded"
    );
    assert!(
        copies.iter().all(|c| c.state != CopyState::Usable),
        "nothing half-listed as usable"
    );
    if let Some(loc) = &last.location {
        assert!(
            !std::path::Path::new(loc).exists(),
            "partial copy {loc} must be discarded"
        );
    }
    let (next, _) = env.create(env.request(
        vec![env.writer()],
        env.provider("copy"),
        Duration::from_secs(10),
    ));
    next.expect("the next shadow set succeeds");
}

#[test]
fn writer_that_fails_after_locking_is_thawed() {
    let env = Env::new(true, None);
    let w = Box::new(FaultyWriter {
        inner: env.writer(),
        fault: WriterFault::FreezeAfterLocking,
    });
    let (r, _) = env.create(env.request(vec![w], env.provider("copy"), Duration::from_secs(10)));
    assert_aborted_cleanly(&env, r, |e| {
        matches!(
            e,
            Error::Writer {
                phase: Phase::Freeze,
                ..
            }
        )
    });
}

#[test]
fn writer_that_fails_in_prepare_aborts_before_freezing() {
    let env = Env::new(true, None);
    let w = Box::new(FaultyWriter {
        inner: env.writer(),
        fault: WriterFault::Prepare,
    });
    let (r, began) =
        env.create(env.request(vec![w], env.provider("copy"), Duration::from_secs(10)));
    assert!(began.is_none(), "no freeze after a failed prepare");
    assert_aborted_cleanly(&env, r, |e| {
        matches!(
            e,
            Error::Writer {
                phase: Phase::Prepare,
                ..
            }
        )
    });
}

#[test]
fn writer_whose_thaw_fails_fails_the_set() {
    let env = Env::new(true, None);
    let w = Box::new(FaultyWriter {
        inner: env.writer(),
        fault: WriterFault::Thaw,
    });
    let (r, _) = env.create(env.request(vec![w], env.provider("copy"), Duration::from_secs(10)));
    assert_aborted_cleanly(&env, r, |e| {
        matches!(
            e,
            Error::Writer {
                phase: Phase::Thaw,
                ..
            }
        )
    });
}

#[test]
fn writer_whose_backup_complete_fails_leaves_the_verified_copy_usable() {
    let env = Env::new(true, None);
    let w = Box::new(FaultyWriter {
        inner: env.writer(),
        fault: WriterFault::BackupComplete,
    });
    let (r, _) = env.create(env.request(vec![w], env.provider("copy"), Duration::from_secs(10)));
    let created = r.expect("a failed backup-complete does not fail the set");
    assert_eq!(created.warnings.len(), 1, "{:?}", created.warnings);
    assert!(
        created.warnings[0].contains("injected fault in backup-complete"),
        "{:?}",
        created.warnings
    );
    let summary = env.catalog.summary(created.id).unwrap();
    assert_eq!(summary.state, CopyState::Usable);
    let detail = env.catalog.detail(created.id).unwrap();
    let phase = detail
        .phases
        .iter()
        .find(|p| p.phase == "backup-complete")
        .expect("the phase is recorded");
    assert!(
        phase
            .error
            .as_deref()
            .unwrap_or("")
            .contains("injected fault"),
        "{phase:?}"
    );
}

#[test]
fn provider_that_fails_after_writing_leaves_no_partial_copy() {
    let env = Env::new(true, None);
    let p = Arc::new(FaultyProvider {
        inner: env.provider("copy"),
        fault: ProviderFault::CommitAfterWriting,
    });
    let (r, _) = env.create(env.request(vec![env.writer()], p, Duration::from_secs(10)));
    assert_aborted_cleanly(&env, r, |e| {
        matches!(
            e,
            Error::Provider {
                phase: Phase::Commit,
                ..
            }
        )
    });
}

#[test]
fn deadline_exceeded_thaws_at_the_deadline() {
    let env = Env::new(true, None);
    let transfers = bank::start_transfers(&env.db, 2, Duration::from_millis(1));
    // The load runs before the set begins, so its stall spans the freeze.
    wait::until(
        Duration::from_secs(30),
        || transfers.committed() >= 20,
        || {
            format!(
                "the load committed only {} transfers",
                transfers.committed()
            )
        },
    );
    let deadline = Duration::from_millis(300);
    let p = Arc::new(FaultyProvider {
        inner: env.provider("copy"),
        fault: ProviderFault::SlowCommit(Duration::from_secs(20)),
    });
    transfers.reset_longest_stall();
    let started = Instant::now();
    let (r, _) = env.create(env.request(vec![env.writer()], p, deadline));
    let took = started.elapsed();
    let stall = transfers.longest_stall();
    let stats = transfers.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert!(
        took < deadline + Duration::from_secs(1),
        "the set ended {took:?} after it began"
    );
    assert!(
        stall < deadline + Duration::from_secs(1),
        "the application stalled {stall:?}"
    );
    assert_aborted_cleanly(&env, r, |e| {
        matches!(
            e,
            Error::DeadlineExceeded {
                phase: Phase::Commit,
                ..
            }
        )
    });
}

/// Tells the test when the commit begins (the writers are frozen then) and records when
/// the thaw begins.
#[derive(Default)]
struct WindowClock {
    commit_began: Mutex<Option<mpsc::Sender<Instant>>>,
    thaw_began: Mutex<Option<Instant>>,
}

impl EventSink for WindowClock {
    fn phase_started(&self, phase: Phase) {
        match phase {
            Phase::Commit => {
                if let Some(tx) = self.commit_began.lock().unwrap().take() {
                    let _ = tx.send(Instant::now());
                }
            }
            Phase::Thaw => *self.thaw_began.lock().unwrap() = Some(Instant::now()),
            _ => {}
        }
    }
}

#[test]
fn hung_provider_is_abandoned_and_the_writers_thawed_at_the_deadline() {
    let env = Env::new(true, None);
    let deadline = Duration::from_millis(500);
    let hang = Duration::from_secs(2);
    let catalog_dir = env.root.join("catalog");
    let db = env.db.clone();
    let inner = env.provider("copy");
    let (tx, commit_began) = mpsc::channel();
    let clock = Arc::new(WindowClock {
        commit_began: Mutex::new(Some(tx)),
        ..WindowClock::default()
    });
    // The application's connection, opened before the freeze; SQLite's busy handler lets
    // its write wait for the lock.
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    let worker = {
        let clock = clock.clone();
        std::thread::spawn(move || {
            let catalog = Catalog::open(&catalog_dir).unwrap();
            let p = Arc::new(FaultyProvider {
                inner,
                fault: ProviderFault::HungCommit(hang),
            });
            let w: Box<dyn shadowcopy_core::Writer> =
                Box::new(shadowcopy_writers::sqlite::SqliteWriter::new(
                    shadowcopy_writers::sqlite::SqliteOptions { path: db },
                ));
            shadowcopy_core::Coordinator::new(&catalog, clock).create(
                shadowcopy_core::ShadowSetRequest {
                    set_name: "bank".into(),
                    spec_json: "{}".into(),
                    origin: Origin::Create,
                    writers: vec![w],
                    unmanaged_components: Vec::new(),
                    provider: p,
                    freeze_deadline: deadline,
                    verify: true,
                    verify_base: None,
                    kept_copies: Box::new(Vec::<shadowcopy_core::KeptCopy>::new()),
                },
            )
        })
    };
    // A write attempted while the provider hangs inside the freeze window waits for the
    // thaw, and the thaw comes at the deadline, not when the provider returns.
    let in_window = commit_began
        .recv_timeout(Duration::from_secs(30))
        .expect("the commit never began: the writers were not frozen");
    let attempted = Instant::now();
    conn.execute_batch(
        "BEGIN IMMEDIATE; UPDATE accounts SET balance = balance WHERE id = 1; COMMIT;",
    )
    .unwrap();
    let written = Instant::now();
    let thaw_began = *clock.thaw_began.lock().unwrap();
    let Some(thaw_began) = thaw_began else {
        panic!(
            "the write went through {:?} after the commit began, before any thaw: the \
             freeze did not block it",
            written - in_window
        );
    };
    assert!(
        attempted < thaw_began,
        "the write was attempted only {:?} after the thaw began: the machine was too slow \
         for this test to see the freeze",
        attempted - thaw_began
    );
    assert!(
        written >= thaw_began,
        "the write went through {:?} before the thaw began: the freeze did not block it",
        thaw_began - written
    );
    let writable_after = written - started;
    assert!(
        writable_after < deadline + Duration::from_secs(1),
        "writable only after {writable_after:?}"
    );
    assert!(
        written < in_window + hang,
        "writable only {:?} after the commit began, once the provider's hang of {hang:?} \
         ended: the deadline did not thaw",
        written - in_window
    );
    let r = worker.join().unwrap();
    drop(conn);
    assert_aborted_cleanly(&env, r, |e| matches!(e, Error::DeadlineExceeded { .. }));
}

#[test]
fn long_write_transaction_times_the_freeze_out_and_keeps_its_work() {
    let env = Env::new(true, None);
    let other = rusqlite::Connection::open(&env.db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE; UPDATE accounts SET balance = balance - 5 WHERE id = 1; UPDATE accounts SET balance = balance + 5 WHERE id = 2;").unwrap();
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let (r, _) = env.create(env.request(vec![env.writer()], env.provider("copy"), deadline));
    assert!(
        started.elapsed() < deadline + Duration::from_millis(500),
        "gave up at the deadline"
    );
    let err = r.expect_err("the lock could not be taken");
    let chain = format!("{:?}", err);
    assert!(chain.contains("LockTimeout"), "{chain}");
    other
        .execute_batch("COMMIT")
        .expect("the application's transaction commits");
    drop(other);
    assert_aborted_cleanly(&env, Err(err), |e| {
        matches!(
            e,
            Error::Writer {
                phase: Phase::Freeze,
                ..
            }
        )
    });
}

#[test]
fn interrupted_run_is_discarded_by_the_next_start() {
    let env = Env::new(true, None);
    let id = env
        .catalog
        .begin_copy(&NewCopy {
            set_name: "bank",
            spec_json: "{}",
            origin: Origin::Create,
            provider: "copy",
            freeze_deadline: Duration::from_secs(10),
        })
        .unwrap();
    let location = env.root.join("copies/copy-999");
    std::fs::create_dir_all(location.join("files")).unwrap();
    std::fs::write(location.join("files/partial"), b"half").unwrap();
    env.catalog
        .set_location(id, location.to_str().unwrap())
        .unwrap();
    env.catalog.enter_phase(id, Phase::Commit).unwrap();
    // The "process" ends here without finishing. The next holder of the queue cleans up.
    let guard = env.queue();
    let provider = env.provider("copy");
    let recovered = env
        .catalog
        .recover_interrupted(&guard, &|_| Ok(provider.clone()))
        .unwrap();
    assert_eq!(recovered.len(), 1);
    let s = env.catalog.summary(id).unwrap();
    assert_eq!(s.state, CopyState::Failed);
    assert!(
        s.error.as_deref().unwrap().contains("interrupted"),
        "{:?}",
        s.error
    );
    assert!(!location.exists());
    drop(guard);
    let (next, _) = env.create(env.request(
        vec![env.writer()],
        env.provider("copy"),
        Duration::from_secs(10),
    ));
    next.unwrap();
}

/// The copy provider runs out of space: before the freeze (WAL mode, the pinned database
/// file) or inside it (rollback journal).
#[test]
fn full_disk_during_the_copy_aborts_cleanly() {
    use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind};
    for (wal, phase) in [(true, Phase::Precommit), (false, Phase::Commit)] {
        let Some(fs) = loopfs_or_skip(
            "full_disk_during_the_copy_aborts_cleanly",
            FsKind::Ext4,
            64 << 20,
        ) else {
            return;
        };
        let env = Env::new(wal, None);
        bank::pad_to(&env.db, 96 << 20).unwrap();
        let opts = shadowcopy_providers::ProviderOptions {
            copies_dir: Some(fs.path().join("copies")),
            default_copies_dir: env.root.join("copies"),
            parallelism: 2,
            exec: Vec::new(),
        };
        let full = shadowcopy_providers::build("copy", &opts).unwrap();
        let (r, _) = env.create(env.request(vec![env.writer()], full, Duration::from_secs(60)));
        let err = r.expect_err("the copy cannot fit");
        assert!(format!("{err:?}").contains("NoSpace"), "{err:?}");
        assert!(
            matches!(err, Error::Provider { phase: p, .. } if p == phase),
            "wal={wal}: {err:?}"
        );
        assert!(
            std::fs::read_dir(fs.path().join("copies")).map_or(true, |mut d| d.next().is_none()),
            "partial copy discarded"
        );
        assert_aborted_cleanly(&env, Err(err), |e| matches!(e, Error::Provider { .. }));
        drop(env);
        drop(fs);
    }
}

#[test]
fn data_a_failed_abort_left_behind_is_discarded_by_the_next_start() {
    let env = Env::new(true, None);
    let id = env
        .catalog
        .begin_copy(&NewCopy {
            set_name: "bank",
            spec_json: "{}",
            origin: Origin::Create,
            provider: "copy",
            freeze_deadline: Duration::from_secs(10),
        })
        .unwrap();
    let location = env.root.join("copies/copy-998-leftover");
    std::fs::create_dir_all(location.join("files")).unwrap();
    env.catalog
        .set_location(id, location.to_str().unwrap())
        .unwrap();
    // The abort could not discard it (a provider that would not stop, a busy mount).
    env.catalog
        .finish_copy(id, CopyState::Failed, Some("injected"))
        .unwrap();
    let guard = env.queue();
    let provider = env.provider("copy");
    let recovered = env
        .catalog
        .recover_interrupted(&guard, &|_| Ok(provider.clone()))
        .unwrap();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(!location.exists());
    let s = env.catalog.summary(id).unwrap();
    assert_eq!(
        (s.state, s.location.as_deref(), s.error.as_deref()),
        (CopyState::Failed, None, Some("injected"))
    );
    assert!(
        env.catalog
            .recover_interrupted(&guard, &|_| Ok(provider.clone()))
            .unwrap()
            .is_empty(),
        "done once"
    );
}
