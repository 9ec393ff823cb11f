//! The PostgreSQL writer's abort paths, each on a real cluster under a ledger load: the
//! server stopped mid-set, `pg_backup_stop` failing at the thaw, the freeze deadline
//! overrun, and shadowcopy itself killed with SIGKILL. Every path must end the same way:
//! `create` exits 1 naming the cause, the catalog lists the attempt as `failed` (never
//! `usable`) and its partial copy is gone, the server is left with no backup running (no
//! shadowcopy session, no temporary slot: in PostgreSQL 15 a non-exclusive backup belongs
//! to its session and ends with it, so no session means no backup) and stays writable,
//! the ledger keeps committing, and the next `create` succeeds and verifies.
//!
//! Each test drives the moment of failure with a second writer, an `--exec-writer` hook:
//! writers freeze in order (postgres, then the hook) and thaw in reverse, so the hook's
//! `freeze` runs after the backup started and the connection was checked alive, and
//! before `pg_backup_stop`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use shadowcopy_testing::postgres::{pg_bin, postgres_or_skip, Ledger, PgCluster, PgOptions};

use crate::support::{describe, kill9, stderr, Cli};

/// What the backup's session is called on the server.
const APP: &str = "shadowcopy";
/// How long the server may take to notice a session is gone and drop its slot.
const CLEANUP_LIMIT: Duration = Duration::from_secs(15);

/// The hook: logs every event to `$HOOK_DIR/events`; at `freeze` does what
/// `$HOOK_FREEZE` says:
/// - `wait`: touches `frozen`, then waits (up to 120 s) until the test touches `go`;
/// - `terminate`: ends the backup's session with `pg_terminate_backend` (and waits for it
///   to be gone), failing unless exactly one session was ended;
/// - `hang`: touches `frozen` and sleeps far past any deadline (`sleep 89`).
const HOOK: &str = r#"#!/bin/bash
echo "$1" >> "$HOOK_DIR/events"
[ "$1" = freeze ] || exit 0
case "$HOOK_FREEZE" in
  wait)
    touch "$HOOK_DIR/frozen"
    for _ in $(seq 6000); do [ -e "$HOOK_DIR/go" ] && exit 0; sleep 0.02; done
    echo "the test never said go" >&2; exit 1 ;;
  terminate)
    n=$("$HOOK_PSQL" -X -A -t -v ON_ERROR_STOP=1 -h "$HOOK_PGHOST" -p "$HOOK_PGPORT" -U postgres -d postgres \
        -c "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE application_name = 'shadowcopy'") || exit 1
    echo "$n" > "$HOOK_DIR/terminated"
    [ "$n" = 1 ] || { echo "ended $n backup sessions instead of 1" >&2; exit 1; } ;;
  hang)
    touch "$HOOK_DIR/frozen"
    exec sleep 89 ;;
esac
exit 0
"#;

/// A cluster under a ledger load, a catalog, and the hook.
struct Scenario {
    cli: Cli,
    hook: PathBuf,
    hook_dir: PathBuf,
    ledger: Option<Ledger>,
    // Declared last: dropped (stopped) after the ledger's writers are told to stop.
    cluster: PgCluster,
}

impl Scenario {
    fn new(test: &str) -> Option<Scenario> {
        let cluster = postgres_or_skip(test, PgOptions::new().data_checksums(true))?;
        let cli = Cli::new();
        let hook = cli.path("hook.sh");
        std::fs::write(&hook, HOOK).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hook_dir = cli.path("hook");
        std::fs::create_dir(&hook_dir).unwrap();
        Ledger::setup(&mut cluster.connect()).unwrap();
        let ledger = Ledger::start(&cluster.config(), 2, Duration::from_millis(1));
        assert!(
            ledger.wait_for_commits(50, Duration::from_secs(30)),
            "the ledger does not commit:\n{}",
            cluster.log()
        );
        Some(Scenario {
            cli,
            hook,
            hook_dir,
            ledger: Some(ledger),
            cluster,
        })
    }

    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().unwrap()
    }

    /// `create --postgres URL --exec-writer HOOK --provider copy --json EXTRA...`, the hook
    /// doing `freeze_mode` at its freeze.
    fn create_cmd(&self, freeze_mode: &str, extra: &[&str]) -> Command {
        let url = self.cluster.url();
        let mut args = vec![
            "create",
            "--postgres",
            &url,
            "--exec-writer",
            self.hook.to_str().unwrap(),
            "--provider",
            "copy",
            "--json",
        ];
        args.extend_from_slice(extra);
        let mut cmd = self.cli.cmd(&args);
        cmd.env("HOOK_DIR", &self.hook_dir)
            .env("HOOK_FREEZE", freeze_mode)
            .env("HOOK_PSQL", pg_bin("psql"))
            .env("HOOK_PGHOST", self.cluster.socket_dir())
            .env("HOOK_PGPORT", self.cluster.port().to_string());
        cmd
    }

    fn create(&self, freeze_mode: &str, extra: &[&str]) -> Output {
        self.create_cmd(freeze_mode, extra).output().unwrap()
    }

    /// Forgets what the hook did in an earlier create.
    fn reset_hook(&self) {
        for name in ["events", "frozen", "go", "terminated"] {
            let _ = std::fs::remove_file(self.marker(name));
        }
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.hook_dir.join(name)
    }

    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.marker("events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until the hook touched `frozen` (its freeze runs); panics after `limit`.
    fn wait_for_hook_freeze(&self, limit: Duration) {
        let waited = Instant::now();
        while !self.marker("frozen").exists() {
            assert!(
                waited.elapsed() < limit,
                "the hook's freeze did not run within {limit:?}; events {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sessions of shadowcopy and temporary slots of ours on the server.
    fn leftovers(&self) -> (String, String) {
        let sessions = self.cluster.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}'"
        ));
        let slots = self
            .cluster
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'shadowcopy%'");
        (sessions, slots)
    }

    /// No backup left running on the server: no shadowcopy session (a PostgreSQL 15
    /// non-exclusive backup lives and dies with its session) and no temporary slot of
    /// ours. The server needs a moment to notice a dropped connection; the state must be
    /// reached within [`CLEANUP_LIMIT`] and stay so.
    fn assert_no_backup_running(&self) {
        let waited = Instant::now();
        loop {
            let left = self.leftovers();
            if left == ("0".into(), "0".into()) {
                break;
            }
            assert!(
                waited.elapsed() < CLEANUP_LIMIT,
                "after {CLEANUP_LIMIT:?} the server still has {} shadowcopy sessions and {} \
                 shadowcopy slots:\n{}\nserver log:\n{}",
                left.0,
                left.1,
                self.cluster.psql(
                    "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = 'shadowcopy'"
                ),
                self.cluster.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Nothing holds back WAL or checkpoints for us: a checkpoint and a WAL switch go
        // through, and a write commits.
        self.cluster.psql("CHECKPOINT");
        self.cluster.psql("SELECT pg_switch_wal()");
        self.cluster.psql(
            "CREATE TABLE IF NOT EXISTS after_abort (at timestamptz);
             INSERT INTO after_abort VALUES (now())",
        );
    }

    /// The ledger commits 50 more transactions within 30 s.
    fn assert_ledger_commits(&self) {
        let n = self.ledger().committed() + 50;
        assert!(
            self.ledger().wait_for_commits(n, Duration::from_secs(30)),
            "the ledger stopped committing ({} committed, errors {}):\n{}",
            self.ledger().committed(),
            self.ledger().error_count(),
            self.cluster.log()
        );
    }

    /// The catalog's view of the failed attempt `id`: failed, its error naming `cause`,
    /// its partial copy discarded, and no usable copy in the catalog at all.
    fn assert_attempt_failed(&self, id: i64, cause: &str) {
        let listed = self.cli.json(&["list", "--json"]);
        let copies = listed.as_array().unwrap();
        let copy = copies
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("copy {id} is not listed: {listed}"));
        assert_eq!(copy["state"], "failed", "{copy}");
        assert!(
            copy["error"].as_str().unwrap_or_default().contains(cause),
            "the recorded error names {cause:?}: {copy}"
        );
        assert!(
            copies.iter().all(|c| c["state"] != "usable"),
            "no usable copy from a failed attempt: {listed}"
        );
        if let Some(location) = copy["location"].as_str() {
            assert!(
                !Path::new(location).exists(),
                "the partial copy at {location} was discarded"
            );
        }
    }

    /// The next create (the hook doing nothing at freeze) succeeds, verifies, is listed
    /// usable, and leaves no backup running.
    fn assert_next_create_succeeds(&self) -> Output {
        let out = self.create("none", &[]);
        assert!(
            out.status.success(),
            "{}\nserver log:\n{}",
            describe(&out),
            self.cluster.log()
        );
        let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(created["verification"]["ok"], true, "{created}");
        let id = created["id"].as_i64().unwrap();
        let listed = self.cli.json(&["list", "--json"]);
        let copy = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap();
        assert_eq!(copy["state"], "usable", "{listed}");
        self.assert_no_backup_running();
        out
    }

    /// Stops the load; the live cluster holds every acknowledged commit, balanced.
    fn finish(mut self) {
        let stats = self.ledger.take().unwrap().stop();
        let state = Ledger::check(&mut self.cluster.connect()).unwrap();
        if let Err(e) = state.verify(&stats.acknowledged) {
            panic!("the live cluster after the abort: {e}");
        }
    }
}

/// A spawned create, killed (SIGKILL) and reaped if still held when dropped.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The id of the single copy `create --json` failed to make (the newest in the catalog).
fn failed_attempt(cli: &Cli) -> i64 {
    let (id, state, _) = cli.newest_copy().expect("the attempt was recorded");
    assert_ne!(state, "usable");
    id
}

/// Exit 1 (the operation failed) and `cause` in what the user sees.
fn assert_failed_with(out: &Output, cause: &str) {
    eprintln!("create failed (as it must): {}", stderr(out).trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    assert!(
        stderr(out).contains(cause),
        "the error names {cause:?}: {}",
        describe(out)
    );
}

/// Runs its closure when dropped: cleanup that must happen when an assertion fails too.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// How the server goes away in [`lose_server_mid_set`].
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `pg_ctl stop -m fast`: sessions are ended, a shutdown checkpoint is written.
    Fast,
    /// `pg_ctl stop -m immediate`: every process quits at once; crash recovery at the
    /// next start, with the backup's WAL and (in PostgreSQL 15) no backup_label behind.
    Immediate,
}

/// Runs a create whose hook holds the freeze while the server is stopped `how`, then
/// starts the server again. Returns the create's output.
fn lose_server_mid_set(s: &Scenario, how: Stop) -> Output {
    s.reset_hook();
    let out = std::thread::scope(|scope| {
        // The hook waits for `go`: said on every path, so a failing assertion cannot
        // leave the create (and this scope) waiting.
        let _go = OnDrop(|| {
            let _ = std::fs::write(s.marker("go"), b"");
        });
        let create = scope.spawn(|| s.create("wait", &["--freeze-deadline", "60s"]));
        s.wait_for_hook_freeze(Duration::from_secs(60));
        assert_eq!(
            s.leftovers(),
            ("1".into(), "1".into()),
            "the backup runs on its session with its slot while the hook holds the freeze"
        );
        match how {
            Stop::Fast => s.cluster.stop(),
            Stop::Immediate => s.cluster.stop_immediate(),
        }
        std::fs::write(s.marker("go"), b"").unwrap();
        create.join().unwrap()
    });
    s.cluster.start();
    out
}

/// The server stops while the set is frozen, between `pg_backup_start` and
/// `pg_backup_stop`, first with a fast shutdown (every session, the backup's included,
/// is ended), then, on a second attempt, with an immediate one (crash recovery on the
/// next start). Each time the thaw's `pg_backup_stop` finds the connection gone and the
/// set aborts; started again, the server has no backup running, the load commits again,
/// and the next create works.
#[test]
fn postgres_server_stopped_mid_set_aborts_and_the_next_create_succeeds() {
    let Some(s) = Scenario::new("postgres_server_stopped_mid_set_aborts") else {
        return;
    };
    for how in [Stop::Fast, Stop::Immediate] {
        let out = lose_server_mid_set(&s, how);
        eprintln!("after a {how:?} stop:");
        assert_failed_with(&out, "pg_backup_stop failed");
        let id = failed_attempt(&s.cli);
        assert_eq!(
            s.events(),
            ["prepare", "freeze", "thaw", "abort"],
            "the hook was thawed and told of the abort"
        );
        s.assert_attempt_failed(id, "pg_backup_stop failed");
        s.assert_no_backup_running();
        s.assert_ledger_commits();
    }
    s.assert_next_create_succeeds();
    s.finish();
}

/// `pg_backup_stop` fails at the thaw while the server runs: the hook's freeze ends the
/// backup's session with `pg_terminate_backend`, after the postgres writer's freeze
/// checked the connection alive. Unlike
/// `postgres::a_server_lost_mid_set_aborts_cleanly_and_the_next_create_succeeds`, which
/// kills the session as soon as `pg_backup_start` shows up (so prepare or the freeze's
/// liveness check fails, before anything is committed), here the freeze succeeded and the
/// provider's commit completed: the failure is the backup's stop itself, and a complete
/// copy without its `backup_label` and WAL must still be discarded.
#[test]
fn postgres_backup_stop_failing_at_thaw_discards_the_committed_copy() {
    let Some(s) = Scenario::new("postgres_backup_stop_failing_at_thaw") else {
        return;
    };
    let out = s.create("terminate", &["--freeze-deadline", "60s"]);
    assert_eq!(
        std::fs::read_to_string(s.marker("terminated"))
            .unwrap_or_default()
            .trim(),
        "1",
        "the hook ended the backup's session: {}",
        describe(&out)
    );
    assert_failed_with(&out, "pg_backup_stop failed");
    let id = failed_attempt(&s.cli);
    assert_eq!(s.events(), ["prepare", "freeze", "thaw", "abort"]);
    // The commit ran (the failure came after it) and its copy was discarded.
    let detail = s.cli.json(&["show", &id.to_string(), "--json"]);
    let phases: Vec<&str> = detail["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert!(
        phases.contains(&"commit") && phases.contains(&"abort"),
        "{phases:?}"
    );
    let commit = detail["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "commit")
        .unwrap();
    assert!(
        commit["error"].is_null(),
        "the commit itself succeeded: {commit}"
    );
    s.assert_attempt_failed(id, "pg_backup_stop failed");
    s.assert_no_backup_running();
    s.assert_ledger_commits();
    s.assert_next_create_succeeds();
    s.finish();
}

/// Processes running `sleep 89` (the hanging hook).
fn hung_hooks() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0089\x00"))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The freeze overruns `--freeze-deadline 1s` (the hook hangs): the hook is killed, the
/// backup stopped, the set aborted within seconds; the application kept committing
/// through the stall (backup mode never holds writers).
#[test]
fn postgres_freeze_deadline_exceeded_aborts_without_a_backup_left_running() {
    let Some(s) = Scenario::new("postgres_freeze_deadline_exceeded") else {
        return;
    };
    let before = hung_hooks();
    let started = Instant::now();
    let (out, stall_began) = std::thread::scope(|scope| {
        let create = scope.spawn(|| s.create("hang", &["--freeze-deadline", "1s"]));
        s.wait_for_hook_freeze(Duration::from_secs(60));
        let stall_began = Instant::now();
        (create.join().unwrap(), stall_began)
    });
    let took = started.elapsed();
    let stall_ended = Instant::now();
    assert_failed_with(&out, "did not finish within");
    assert!(
        stderr(&out).contains("freeze"),
        "the error names the freeze: {}",
        describe(&out)
    );
    assert!(
        took < Duration::from_secs(30),
        "gave up after {took:?} (deadline 1 s)"
    );
    let id = failed_attempt(&s.cli);
    assert_eq!(s.events(), ["prepare", "freeze", "thaw", "abort"]);
    let left: Vec<u32> = hung_hooks()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(left.is_empty(), "the hung hook was killed: {left:?} remain");
    let during = s.ledger().acknowledged_before(stall_ended).len()
        - s.ledger().acknowledged_before(stall_began).len();
    assert!(
        during > 0,
        "the ledger committed during the stalled freeze (backup mode holds no writer)"
    );
    s.assert_attempt_failed(id, "did not finish within");
    s.assert_no_backup_running();
    s.assert_ledger_commits();
    s.assert_next_create_succeeds();
    s.finish();
}

/// shadowcopy is killed with SIGKILL while the hook holds the freeze (the backup running,
/// its slot held): the server ends the backup and drops the slot when the connection
/// drops; the hook's watchdog runs its thaw; the catalog never lists the copy usable; the
/// next create recovers the interrupted copy (marked failed, its partial copy discarded)
/// and succeeds.
#[test]
fn postgres_shadowcopy_killed_mid_set_leaves_no_backup_and_the_next_create_recovers() {
    let Some(s) = Scenario::new("postgres_shadowcopy_killed_mid_set") else {
        return;
    };
    let child = s
        .create_cmd("wait", &["--freeze-deadline", "120s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // On every path: no hook left waiting (and `Running` kills a create left running).
    let go = s.marker("go");
    let _go = OnDrop(move || {
        let _ = std::fs::write(&go, b"");
    });
    let mut child = Running(Some(child));
    s.wait_for_hook_freeze(Duration::from_secs(60));
    assert_eq!(
        s.leftovers(),
        ("1".into(), "1".into()),
        "the backup runs on its session with its slot"
    );
    let (id, state, phase) = s.cli.newest_copy().unwrap();
    assert_eq!((state.as_str(), phase.as_str()), ("in-progress", "freeze"));
    kill9(child.0.as_mut().unwrap());
    child.0 = None;

    // The server ends the backup with the connection and drops the temporary slot.
    s.assert_no_backup_running();
    let log = s.cluster.log();
    assert!(
        log.contains("aborting backup due to backend exiting before pg_backup_stop was called"),
        "the server ended the backup itself:\n{log}"
    );
    // The watchdog killed the hook's freeze and ran its thaw.
    let waited = Instant::now();
    while !s.events().contains(&"thaw".to_string()) {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the watchdog did not run `hook thaw`: {:?}",
            s.events()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(s.marker("go"), b"").unwrap();
    // Never usable, until the next run recovers it.
    let listed = s.cli.json(&["list", "--json"]);
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["state"], "in-progress", "{listed}");
    let location = listed[0]["location"]
        .as_str()
        .expect("the location is recorded before the commit")
        .to_string();
    s.assert_ledger_commits();

    let out = s.assert_next_create_succeeds();
    assert!(
        stderr(&out).contains(&format!("recovered copy {id}")),
        "{}",
        describe(&out)
    );
    s.assert_attempt_failed_after_recovery(id);
    assert!(
        !Path::new(&location).exists(),
        "the interrupted copy's files at {location} were discarded"
    );
    s.finish();
}

impl Scenario {
    /// The interrupted copy `id` is `failed` with an error saying so; a later copy is usable.
    fn assert_attempt_failed_after_recovery(&self, id: i64) {
        let listed = self.cli.json(&["list", "--json"]);
        let copies = listed.as_array().unwrap();
        let copy = copies.iter().find(|c| c["id"] == id).unwrap();
        assert_eq!(copy["state"], "failed", "{listed}");
        assert!(
            copy["error"]
                .as_str()
                .unwrap_or_default()
                .contains("interrupted"),
            "{copy}"
        );
        assert!(
            copies
                .iter()
                .any(|c| c["state"] == "usable" && c["id"].as_i64() > Some(id)),
            "{listed}"
        );
    }
}
