//! One shadow set at a time per catalog: a second create waits (bounded) or refuses, says
//! whom it waits behind, never overlaps, and a crashed holder does not block.

use std::time::Duration;

use crate::support::{kill9, stderr, Cli};

#[test]
fn second_create_is_queued_behind_the_first_and_never_overlaps() {
    let cli = Cli::new();
    cli.bank("bank.db", 256 << 20);
    let first = cli.spawn_copy_of_bank();
    cli.wait_for_phase("precommit", Duration::from_secs(60));

    let out = cli.run(&["create", "--sqlite", "bank.db", "--no-wait"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another shadow set is running: `create` for set `bank.db`"),
        "{}",
        stderr(&out)
    );

    let out = cli.run(&[
        "create",
        "--sqlite",
        "bank.db",
        "--wait",
        "120s",
        "--provider",
        "copy",
        "--freeze-deadline",
        "120s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("queued behind `create` for set `bank.db`"),
        "{}",
        stderr(&out)
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));

    let list = cli.json(&["list", "--json"]);
    let copies = list.as_array().unwrap();
    assert_eq!(copies.len(), 2, "the --no-wait attempt recorded nothing");
    assert!(copies.iter().all(|c| c["state"] == "usable"));
    assert!(
        copies[1]["created_ms"].as_i64() >= copies[0]["finished_ms"].as_i64(),
        "the second ran after the first: {list}"
    );
}

#[test]
fn wait_limit_exceeded_exits_3_and_a_killed_holder_frees_the_queue() {
    let cli = Cli::new();
    cli.bank("bank.db", 256 << 20);
    let mut first = cli.spawn_copy_of_bank();
    cli.wait_for_phase("precommit", Duration::from_secs(60));
    let out = cli.run(&["create", "--sqlite", "bank.db", "--wait", "300ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("for longer than"), "{}", stderr(&out));

    kill9(&mut first);
    let out = cli.run(&[
        "create",
        "--sqlite",
        "bank.db",
        "--wait",
        "5s",
        "--no-verify",
    ]);
    assert!(
        out.status.success(),
        "a crashed holder must not block: {}",
        stderr(&out)
    );
}
