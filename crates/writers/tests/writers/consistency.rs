//! Copies taken while transfer threads run must open, pass integrity_check, keep the
//! total balance, and hold every transfer acknowledged before the freeze began.

use std::time::Duration;

use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind};
use shadowcopy_testing::{bank, wait};

use crate::support::{read_bank, Env};

/// Waits until the transfer load is running: it has committed a few transfers.
fn wait_for_load(transfers: &bank::Transfers) {
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
}

fn copies_under_load(env: &Env, provider_kind: &str, copies: usize) {
    let transfers = bank::start_transfers(&env.db, 4, Duration::ZERO);
    wait_for_load(&transfers);
    for round in 0..copies {
        let provider = env.provider(provider_kind);
        let (result, began) = env.create(env.request(
            vec![env.writer()],
            provider.clone(),
            Duration::from_secs(10),
        ));
        let created = result.unwrap_or_else(|e| panic!("copy {round} failed: {e:?}"));
        let began = began.expect("the freeze began");
        let acked = transfers.acknowledged_before(began);
        assert!(
            !acked.is_empty(),
            "the load was running before copy {round}"
        );
        assert!(
            created.verification.as_ref().expect("verified").ok,
            "{:?}",
            created.verification
        );

        let view = provider.expose(&created.location, &created.files).unwrap();
        let content = read_bank(view.path_of(&env.db).expect("the copy holds the database"));
        assert_eq!(content.summary.integrity, "ok", "copy {round}");
        assert!(
            content.summary.balanced(),
            "copy {round} is not balanced: {:?}",
            content.summary
        );
        let missing: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|id| content.ids.binary_search(id).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "copy {round} lost acknowledged transfers {missing:?}"
        );

        // The application goes on writing after the thaw. A slow fsync on a busy machine
        // (btrfs, rollback journal) may hold one commit for a while, so this waits for
        // progress rather than expecting it within a fixed slice.
        let before = transfers.committed();
        let resumed = std::time::Instant::now();
        while transfers.committed() == before {
            assert!(
                resumed.elapsed() < Duration::from_secs(10),
                "writes did not resume within 10 s after copy {round}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let stats = transfers.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let live = read_bank(&env.db);
    assert!(live.summary.balanced());
}

#[test]
fn wal_copies_under_load_hold_every_acknowledged_transfer() {
    copies_under_load(&Env::new(true, None), "copy", 5);
}

#[test]
fn rollback_journal_copies_under_load_hold_every_acknowledged_transfer() {
    copies_under_load(&Env::new(false, None), "copy", 4);
}

#[test]
fn reflink_copies_on_xfs_under_load() {
    let Some(fs) = loopfs_or_skip("reflink_copies_on_xfs_under_load", FsKind::Xfs, 512 << 20)
    else {
        return;
    };
    let env = Env::new(true, Some(fs.path()));
    copies_under_load(&env, "reflink", 5);
    drop(env);
}

#[test]
fn reflink_copies_on_btrfs_under_load() {
    let Some(fs) = loopfs_or_skip(
        "reflink_copies_on_btrfs_under_load",
        FsKind::Btrfs,
        512 << 20,
    ) else {
        return;
    };
    let env = Env::new(false, Some(fs.path()));
    copies_under_load(&env, "reflink", 3);
    drop(env);
}

#[test]
fn catalog_records_phases_in_order_with_timings_and_hashes() {
    let env = Env::new(true, None);
    let (result, _) = env.create(env.request(
        vec![env.writer()],
        env.provider("copy"),
        Duration::from_secs(10),
    ));
    let created = result.unwrap();
    let d = env.catalog.detail(created.id).unwrap();
    let phases: Vec<&str> = d.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(
        phases,
        [
            "identify",
            "prepare",
            "precommit",
            "freeze",
            "commit",
            "thaw",
            "post-snapshot",
            "verify",
            "backup-complete",
            "done"
        ]
    );
    assert!(
        d.phases[..9]
            .iter()
            .all(|p| p.took_us.is_some() && p.error.is_none()),
        "{:?}",
        d.phases
    );
    assert_eq!(d.summary.state, shadowcopy_core::CopyState::Usable);
    assert_eq!(d.summary.verify_state, shadowcopy_core::VerifyState::Passed);
    assert!(d.summary.freeze_window_us.unwrap() > 0);
    let names: Vec<(&str, bool)> = d
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.pinned))
        .collect();
    assert_eq!(
        names,
        [("db", true), ("wal", false)],
        "WAL mode pins the database file"
    );
    assert!(
        !d.manifest.is_empty()
            && d.manifest
                .iter()
                .all(|f| f.blake3.as_ref().is_some_and(|h| h.len() == 64))
    );
}

/// The pinned database file is copied before the freeze while pages all over it change
/// and checkpoints (passive ones, and restarts that try to reset the WAL) run
/// continuously: every copy must still open as the state at the freeze.
#[test]
fn pinned_database_copied_under_churn_and_checkpoints_stays_consistent() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let env = Env::new(true, None);
    bank::pad_to(&env.db, 64 << 20).unwrap();
    let stop = AtomicBool::new(false);
    let checkpoints = AtomicU64::new(0);
    /// Stops the churn thread however the scope ends (a failed assertion included).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        let _stop_churn = StopOnDrop(&stop);
        // Rewrites filler rows across the file and checkpoints aggressively.
        scope.spawn(|| {
            let conn = rusqlite::Connection::open(&env.db).unwrap();
            conn.busy_timeout(Duration::from_millis(20)).unwrap();
            let rows: i64 = conn
                .query_row("SELECT MAX(id) FROM filler", [], |r| r.get(0))
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = (i.wrapping_mul(7919) % rows as u64) as i64 + 1;
                let _ = conn.execute(
                    "UPDATE filler SET data = randomblob(length(data)) WHERE id = ?1",
                    [id],
                );
                let pragma = if i.is_multiple_of(5) {
                    "PRAGMA wal_checkpoint(RESTART)"
                } else {
                    "PRAGMA wal_checkpoint(PASSIVE)"
                };
                if conn.query_row(pragma, [], |_| Ok(())).is_ok() {
                    checkpoints.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let transfers = bank::start_transfers(&env.db, 2, Duration::ZERO);
        wait_for_load(&transfers);
        for round in 0..4 {
            let provider = env.provider("copy");
            let (result, began) = env.create(env.request(
                vec![env.writer()],
                provider.clone(),
                Duration::from_secs(30),
            ));
            let created = result.unwrap_or_else(|e| panic!("copy {round} failed: {e:?}"));
            assert!(
                created
                    .phases
                    .iter()
                    .any(|(p, _)| *p == shadowcopy_core::Phase::Precommit),
                "the database file was copied before the freeze"
            );
            let verification = created.verification.as_ref().expect("verified");
            assert!(verification.ok, "copy {round}: {}", verification.detail);
            let acked = transfers.acknowledged_before(began.unwrap());
            let view = provider.expose(&created.location, &created.files).unwrap();
            let content = read_bank(view.path_of(&env.db).unwrap());
            assert_eq!(content.summary.integrity, "ok", "copy {round}");
            assert!(
                content.summary.balanced(),
                "copy {round}: {:?}",
                content.summary
            );
            let missing = acked
                .iter()
                .filter(|id| content.ids.binary_search(id).is_err())
                .count();
            assert_eq!(missing, 0, "copy {round} lost acknowledged transfers");
        }
        let stats = transfers.stop();
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    });
    assert!(
        checkpoints.load(Ordering::Relaxed) > 10,
        "checkpoints ran during the test"
    );
}

#[test]
fn btrfs_snapshots_under_load_and_restore_from_a_snapshot() {
    let Some(fs) = loopfs_or_skip(
        "btrfs_snapshots_under_load_and_restore_from_a_snapshot",
        FsKind::Btrfs,
        512 << 20,
    ) else {
        return;
    };
    let subvolume = fs.path().join("app");
    let ok = std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&subvolume)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let env = Env::new(true, Some(&subvolume));
    copies_under_load(&env, "btrfs", 4);
    let last = env.catalog.list(None).unwrap().pop().unwrap();
    assert_eq!(last.provider, "btrfs");
    let provider = env.provider("btrfs");
    let files = env.catalog.manifest(last.id).unwrap();
    let view = provider
        .expose(last.location.as_deref().unwrap(), &files)
        .unwrap();
    let in_snapshot = read_bank(view.path_of(&env.db).unwrap()).ids;
    let outcome = shadowcopy_core::Restorer::new(
        &env.catalog,
        std::sync::Arc::new(shadowcopy_core::NoEvents),
    )
    .restore(shadowcopy_core::RestoreRequest {
        copy_id: last.id,
        set_name: last.set.clone(),
        spec_json: last.spec_json.clone(),
        location: last.location.clone().unwrap(),
        files,
        components: env.catalog.components(last.id).unwrap(),
        writers: vec![env.writer()],
        provider,
        to: None,
        force: false,
        keep_current: true,
        mode: Default::default(),
    })
    .unwrap();
    let restored = read_bank(&env.db);
    assert_eq!(restored.ids, in_snapshot);
    assert!(restored.summary.balanced());
    assert!(outcome.pre_restore.is_some());
    drop(env);
}
