//! The coordinator killed with SIGKILL mid-set: every lock dies with it, the copy is
//! never listed as usable, and the next run cleans up and succeeds.

use std::path::Path;
use std::time::Duration;

use crate::support::{assert_writable, kill9, stderr, Cli};

/// Kills `create` once the newest copy reaches `phase`, then checks the aftermath.
fn kill_9_in(phase: &str, wal: bool) {
    let cli = Cli::new();
    let db = cli.bank_in_mode("bank.db", 256 << 20, wal);
    let mut child = cli.spawn_copy_of_bank();
    let id = cli.wait_for_phase(phase, Duration::from_secs(60));
    kill9(&mut child);

    // The write lock (or the pin) died with the process.
    assert_writable(&db);
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["state"], "in-progress", "never usable");
    let location = list[0]["location"]
        .as_str()
        .expect("location recorded before the commit")
        .to_string();

    let out = cli.run(&[
        "create",
        "--sqlite",
        "bank.db",
        "--provider",
        "copy",
        "--freeze-deadline",
        "120s",
        "--no-verify",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("recovered copy {id}")),
        "{}",
        stderr(&out)
    );
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list[0]["state"], "failed");
    assert!(
        list[0]["error"].as_str().unwrap().contains("interrupted"),
        "{}",
        list[0]
    );
    assert_eq!(list[1]["state"], "usable");
    assert!(
        !Path::new(&location).exists(),
        "the partial copy was discarded"
    );
}

#[test]
fn kill_9_during_the_freeze_leaves_nothing_frozen_or_half_listed() {
    // Rollback journal: the whole database is copied inside the freeze window.
    kill_9_in("freeze", false);
}

#[test]
fn kill_9_while_the_database_is_pinned_before_the_freeze() {
    // WAL mode: the database file is copied before the freeze, under the writer's pin.
    kill_9_in("precommit", true);
}
