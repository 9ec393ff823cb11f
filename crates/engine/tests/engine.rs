//! The engine as a front end other than the CLI uses it: options from JSON (unknown
//! fields refused), the whole cycle on a live SQLite bank (create → verify → restore →
//! delete) with typed reports and the progress a daemon would stream, and bad input
//! refused before anything is written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shadowcopy_core::{CopyId, CopyState, EventSink, Phase};
use shadowcopy_engine::{
    CreateOptions, DeleteOptions, Engine, EngineOptions, Progress, RestoreOptions, Silent,
    UsageError, WaitOptions,
};
use shadowcopy_sample as bank;

/// Everything the engine reported, in order, as one line each.
#[derive(Default)]
struct Recorded(Mutex<Vec<String>>);

impl Recorded {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl EventSink for Recorded {
    fn copy_started(&self, id: CopyId, set: &str) {
        self.push(format!("copy {id} of {set}"));
    }
    fn phase_finished(&self, phase: Phase, _took: Duration, ok: bool) {
        self.push(format!("{phase} {}", if ok { "ok" } else { "failed" }));
    }
}

impl Progress for Recorded {
    fn deleted(&self, id: i64, _set: &str, _state: CopyState, dry_run: bool) {
        self.push(format!("deleted {id} dry_run={dry_run}"));
    }
}

fn engine(dir: &Path) -> Engine {
    Engine::new(&EngineOptions {
        catalog: Some(dir.join("catalog")),
        config: None,
    })
    .unwrap()
}

fn usage_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.downcast_ref::<UsageError>().is_some())
}

#[test]
fn options_come_from_json_and_unknown_fields_are_refused() {
    let create: CreateOptions = serde_json::from_str(
        r#"{"sqlite": "/srv/app.db", "paths": ["/srv/files"], "freeze_deadline": "5s", "provider": "copy"}"#,
    )
    .unwrap();
    assert_eq!(create.sqlite, Some(PathBuf::from("/srv/app.db")));
    assert_eq!(create.path, vec![PathBuf::from("/srv/files")]);
    assert_eq!(
        create.freeze_deadline.map(|d| d.0),
        Some(Duration::from_secs(5))
    );
    let err = serde_json::from_str::<CreateOptions>(r#"{"sqlite": "/a.db", "freez": "5s"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `freez`"), "{err}");

    let restore: RestoreOptions =
        serde_json::from_str(r#"{"id": 4, "mode": "roll-forward", "until": "0/3000060"}"#).unwrap();
    assert_eq!(restore.id, 4);
    assert!(serde_json::from_str::<RestoreOptions>(r#"{"id": 4, "mode": "sideways"}"#).is_err());
    assert!(serde_json::from_str::<RestoreOptions>(r#"{"mode": "point-in-time"}"#).is_err());

    let delete: DeleteOptions =
        serde_json::from_str(r#"{"older_than": "7d", "set": "bank"}"#).unwrap();
    assert_eq!(
        delete.older_than.map(|d| d.0),
        Some(Duration::from_secs(7 * 24 * 3600))
    );
    let wait: WaitOptions = serde_json::from_str(r#"{"no_wait": true}"#).unwrap();
    assert!(wait.no_wait);
}

#[test]
fn the_whole_cycle_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    bank::create(&db, 20, true).unwrap();
    let engine = engine(dir.path());
    let wait = WaitOptions::default();
    let progress = Arc::new(Recorded::default());

    let created = engine
        .create(
            &CreateOptions {
                sqlite: Some(db.clone()),
                provider: Some("copy".into()),
                ..CreateOptions::default()
            },
            &wait,
            progress.clone(),
        )
        .unwrap();
    assert_eq!(created.set, "bank.db");
    assert_eq!(created.provider, "copy");
    assert!(created.files >= 1 && created.bytes > 0, "{created:?}");
    assert!(created.verification.as_ref().is_some_and(|v| v.ok));
    let json = serde_json::to_value(&created).unwrap();
    for field in [
        "id",
        "freeze_window_us",
        "phases",
        "verification",
        "warnings",
    ] {
        assert!(json.get(field).is_some(), "{field} missing in {json}");
    }
    let lines = progress.lines();
    assert_eq!(
        lines.first(),
        Some(&format!("copy {} of bank.db", created.id))
    );
    for phase in ["freeze ok", "commit ok", "thaw ok", "verify ok"] {
        assert!(lines.iter().any(|l| l == phase), "{phase} not in {lines:?}");
    }

    let verified = engine.verify(created.id, false, &wait, &Silent).unwrap();
    assert!(verified.ok, "{verified:?}");

    // Damage the live bank, restore in place: the copy is back, the damage kept aside.
    let point_in_time_until = RestoreOptions {
        until: Some("0/3000060".into()),
        ..RestoreOptions::new(created.id)
    };
    let err = engine
        .restore(&point_in_time_until, &wait, Arc::new(Silent))
        .unwrap_err();
    assert!(
        usage_error(&err) && format!("{err}").contains("--mode roll-forward"),
        "{err:#}"
    );
    std::fs::write(&db, b"not a database").unwrap();
    let restored = engine
        .restore(&RestoreOptions::new(created.id), &wait, Arc::new(Silent))
        .unwrap();
    assert!(!restored.elsewhere);
    let pre = restored.pre_restore.expect("a pre-restore copy");
    let summary = bank::summarize(&db).unwrap();
    assert!(summary.balanced(), "{summary:?}");

    let listed = engine.list(None).unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![created.id, pre]
    );
    assert_eq!(engine.show(created.id).unwrap().summary.id, created.id);

    let progress = Recorded::default();
    let deleted = engine
        .delete(
            &DeleteOptions {
                ids: vec![pre],
                ..DeleteOptions::default()
            },
            &wait,
            &progress,
        )
        .unwrap();
    assert_eq!(deleted.copies.len(), 1);
    assert_eq!(
        progress.lines(),
        vec![format!("deleted {pre} dry_run=false")]
    );
    assert_eq!(engine.list(None).unwrap().len(), 1);
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let wait = WaitOptions::default();
    let nothing = engine
        .create(&CreateOptions::default(), &wait, Arc::new(Silent))
        .unwrap_err();
    assert!(usage_error(&nothing), "{nothing:#}");
    let missing = engine
        .create(
            &CreateOptions {
                path: vec![dir.path().join("no-such-dir")],
                ..CreateOptions::default()
            },
            &wait,
            Arc::new(Silent),
        )
        .unwrap_err();
    assert!(usage_error(&missing), "{missing:#}");
    assert!(
        format!("{missing:#}").contains("does not exist"),
        "{missing:#}"
    );
    let too_old: DeleteOptions = serde_json::from_str(r#"{"older_than": "300000000y"}"#).unwrap();
    let err = engine.delete(&too_old, &wait, &Silent).unwrap_err();
    assert!(usage_error(&err), "{err:#}");
    assert!(format!("{err:#}").contains("out of range"), "{err:#}");
    assert!(
        !dir.path().join("catalog").exists(),
        "bad input created the catalog"
    );
}
