//! The coordinator killed with SIGKILL while the database is frozen: the lock dies with
//! it, the copy is never listed as usable, and the next run cleans up and succeeds.

use std::path::Path;
use std::time::Duration;

use crate::support::{assert_writable, kill9, stderr, Cli};

#[test]
fn kill_9_during_the_freeze_leaves_nothing_frozen_or_half_listed() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 256 << 20);
    let mut child = cli.spawn(&[
        "create",
        "--sqlite",
        "bank.db",
        "--provider",
        "copy",
        "--freeze-deadline",
        "120s",
    ]);
    let id = cli.wait_for_phase("freeze", Duration::from_secs(60));
    kill9(&mut child);

    // The write lock died with the process.
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
