//! The agent's jobs in the catalog: a job whose process died, or whose lease ran out
//! while its pid lives on (hung, or the pid reused), is marked interrupted with why; a
//! job whose owner renews its lease, or that this process holds, is left alone.

use std::process::{Child, Command};
use std::time::Duration;

use shadowcopy_catalog::Catalog;

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().unwrap()
}

fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Rewrites job `id` as another process's, last renewed `ago` ago.
fn owned_by(dir: &std::path::Path, id: i64, pid: u32, state: &str, ago: Duration) {
    let conn = rusqlite::Connection::open(dir.join("catalog.db")).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    conn.execute(
        "UPDATE jobs SET pid = ?2, state = ?3, heartbeat_ms = ?4 WHERE id = ?1",
        rusqlite::params![id, pid, state, now - ago.as_millis() as i64],
    )
    .unwrap();
}

#[test]
fn dead_and_lapsed_jobs_are_interrupted_live_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let lease = Duration::from_secs(120);
    let ids: Vec<i64> = (0..5)
        .map(|i| {
            catalog
                .queue_job("create", &format!("s{i}"), "schedule")
                .unwrap()
        })
        .collect();
    let mut live = sleeper();
    let mut also_live = sleeper();
    owned_by(dir.path(), ids[0], dead_pid(), "running", Duration::ZERO);
    owned_by(
        dir.path(),
        ids[1],
        live.id(),
        "running",
        Duration::from_secs(600),
    );
    owned_by(
        dir.path(),
        ids[2],
        also_live.id(),
        "queued",
        Duration::from_secs(5),
    );
    owned_by(
        dir.path(),
        ids[3],
        live.id(),
        "queued",
        Duration::from_secs(121),
    );
    // ids[4] stays this process's own, queued.

    let interrupted = catalog.interrupt_dead_jobs(lease).unwrap();
    let got: Vec<i64> = interrupted.iter().map(|j| j.id).collect();
    assert_eq!(got, vec![ids[0], ids[1], ids[3]]);
    let why = |id: i64| catalog.job(id).unwrap().unwrap().result.unwrap_or_default();
    assert!(
        why(ids[0]).contains("ended while it was running"),
        "{}",
        why(ids[0])
    );
    assert!(
        why(ids[1]).contains("stopped renewing its lease 600 s ago while it was running"),
        "{}",
        why(ids[1])
    );
    assert!(
        why(ids[3]).contains("while it was queued"),
        "{}",
        why(ids[3])
    );
    for id in [ids[2], ids[4]] {
        assert_eq!(catalog.job(id).unwrap().unwrap().state, "queued");
    }
    // Renewed leases keep this process's jobs; nothing more to interrupt.
    catalog.heartbeat_jobs().unwrap();
    assert!(catalog.interrupt_dead_jobs(lease).unwrap().is_empty());
    assert!(catalog.cancel_job(ids[4], "cancelled by a test").unwrap());
    assert!(
        !catalog.cancel_job(ids[4], "twice").unwrap(),
        "only a queued job is cancelled"
    );
    assert_eq!(catalog.job(ids[4]).unwrap().unwrap().state, "cancelled");
    live.kill().unwrap();
    also_live.kill().unwrap();
    let _ = live.wait();
    let _ = also_live.wait();
}
