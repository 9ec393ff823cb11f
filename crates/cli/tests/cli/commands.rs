//! create / list / show / verify / restore / delete / writers / providers as a user runs
//! them, with `--json` where scripts read the output.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shadowcopy_testing::wait;

use crate::support::{stderr, Cli};

fn copy_file_of(cli: &Cli, id: i64, original: &Path) -> std::path::PathBuf {
    let show = cli.json(&["show", &id.to_string(), "--json"]);
    let location = show["location"].as_str().unwrap();
    Path::new(location)
        .join("files")
        .join(original.strip_prefix("/").unwrap())
}

#[test]
fn create_list_show_verify_delete() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    let created = cli.json(&[
        "create",
        "--sqlite",
        "bank.db",
        "--provider",
        "copy",
        "--json",
    ]);
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["set"], "bank.db");
    assert_eq!(created["verification"]["ok"], true);
    assert!(created["freeze_window_us"].as_u64().unwrap() > 0);

    let list = cli.json(&["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["state"], "usable");
    assert_eq!(list[0]["verify_state"], "passed");
    let human = cli.ok(&["list"]);
    assert!(
        human.contains("bank.db") && human.contains("usable"),
        "{human}"
    );

    let show = cli.json(&["show", &id.to_string(), "--json"]);
    let phases: Vec<&str> = show["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"identify"));
    assert_eq!(phases.last(), Some(&"done"));
    assert_eq!(show["components"][0]["name"], "db");
    assert!(show["manifest"][0]["blake3"].as_str().unwrap().len() == 64);
    assert!(cli.ok(&["show", &id.to_string()]).contains("phases:"));

    assert!(cli.ok(&["verify", &id.to_string()]).contains("passed"));

    // A copy damaged at rest is caught by verify (exit 4) and not restored without --force.
    let in_copy = copy_file_of(&cli, id, &db);
    let mut bytes = std::fs::read(&in_copy).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&in_copy, bytes).unwrap();
    let out = cli.run(&["verify", &id.to_string()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("content changed since it was first verified"));
    let out = cli.run(&["restore", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("failed verification"),
        "{}",
        stderr(&out)
    );

    let deleted = cli.json(&["delete", &id.to_string(), "--json"]);
    assert_eq!(deleted[0]["id"], id);
    assert!(!in_copy.exists());
    assert_eq!(cli.json(&["list", "--json"]).as_array().unwrap().len(), 0);
}

#[test]
fn delete_by_count_and_age() {
    let cli = Cli::new();
    cli.bank("bank.db", 0);
    for _ in 0..3 {
        cli.ok(&["create", "--sqlite", "bank.db", "--provider", "copy", "-q"]);
    }
    let dry = cli.json(&["delete", "--keep-last", "1", "--dry-run", "--json"]);
    assert_eq!(dry.as_array().unwrap().len(), 2);
    assert_eq!(
        cli.json(&["list", "--json"]).as_array().unwrap().len(),
        3,
        "dry run deletes nothing"
    );
    cli.ok(&["delete", "--keep-last", "1"]);
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], 3, "the newest is kept");
    assert!(cli
        .ok(&["delete", "--older-than", "1h"])
        .contains("nothing to delete"));
    std::thread::sleep(Duration::from_millis(1100));
    cli.ok(&["delete", "--older-than", "1s"]);
    assert_eq!(cli.json(&["list", "--json"]).as_array().unwrap().len(), 0);
    let out = cli.run(&["delete"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn restore_in_place_to_a_directory_and_refused_while_open() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    let id = cli.json(&["create", "--sqlite", "bank.db", "--json"])["id"]
        .as_i64()
        .unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO transfers (from_id, to_id, amount, at_ms) VALUES (1, 2, 0, 0)",
        [],
    )
    .unwrap();
    drop(conn);

    // Held open by another process: refused with its pid, exit 5.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$0\"; exec sleep 60")
        .arg(&db)
        .spawn()
        .unwrap();
    let fd3 = format!("/proc/{}/fd/3", holder.id());
    let target = db.canonicalize().unwrap();
    wait::until(
        Duration::from_secs(10),
        || std::fs::read_link(&fd3).is_ok_and(|t| t == target),
        || {
            format!(
                "{fd3} is not {}: the holder did not open it",
                target.display()
            )
        },
    );
    let out = cli.run(&["restore", &id.to_string()]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pid {}", holder.id())),
        "{}",
        stderr(&out)
    );

    let to = cli.path("restored");
    let v = cli.json(&[
        "restore",
        &id.to_string(),
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["pre_restore"], serde_json::Value::Null);
    assert_eq!(
        shadowcopy_testing::bank::transfer_ids(&to.join("bank.db"))
            .unwrap()
            .len(),
        0
    );

    let v = cli.json(&["restore", &id.to_string(), "--json"]);
    let pre = v["pre_restore"].as_i64().expect("pre-restore copy");
    assert_eq!(
        shadowcopy_testing::bank::transfer_ids(&db).unwrap().len(),
        0
    );
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list[1]["origin"], "pre-restore");
    cli.ok(&["restore", &pre.to_string(), "--discard-current"]);
    assert_eq!(
        shadowcopy_testing::bank::transfer_ids(&db).unwrap().len(),
        1,
        "undo brings the later row back"
    );
}

#[test]
fn zero_config_names_do_not_collide() {
    let cli = Cli::new();
    cli.bank("bank.db", 0);
    std::fs::create_dir(cli.path("other")).unwrap();
    cli.bank("other/bank.db", 0);
    cli.ok(&["create", "--sqlite", "bank.db", "-q"]);
    let out = cli.run(&["create", "--sqlite", "other/bank.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("pass --name"), "{}", stderr(&out));
    cli.ok(&[
        "create",
        "--sqlite",
        "other/bank.db",
        "--name",
        "other-bank",
        "-q",
    ]);
}

#[test]
fn providers_explain_what_they_can_serve() {
    let cli = Cli::new();
    cli.bank("bank.db", 0);
    let v = cli.json(&["providers", "bank.db", "--json"]);
    let rows = v["providers"].as_array().unwrap();
    let copy = rows.iter().find(|r| r["provider"] == "copy").unwrap();
    assert_eq!(copy["can_serve"], true);
    let reflink = rows.iter().find(|r| r["provider"] == "reflink").unwrap();
    if reflink["can_serve"] == false {
        assert!(
            reflink["reason"]
                .as_str()
                .unwrap()
                .contains("--provider copy"),
            "{reflink}"
        );
    }
    assert!(v["auto"].is_string());
    let w = cli.json(&["writers", "--json"]);
    assert_eq!(w["kinds"][0]["kind"], "sqlite");
}

#[test]
fn keep_last_never_trades_a_verified_copy_for_a_damaged_one() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    for _ in 0..2 {
        cli.ok(&["create", "--sqlite", "bank.db", "--provider", "copy", "-q"]);
    }
    // The newest copy is damaged at rest and fails its next verification.
    let in_copy = copy_file_of(&cli, 2, &db);
    let mut bytes = std::fs::read(&in_copy).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&in_copy, bytes).unwrap();
    assert_eq!(cli.run(&["verify", "2"]).status.code(), Some(4));
    cli.ok(&[
        "create",
        "--sqlite",
        "bank.db",
        "--provider",
        "copy",
        "--no-verify",
        "-q",
    ]);

    let dry = cli.json(&["delete", "--keep-last", "1", "--dry-run", "--json"]);
    assert_eq!(
        dry.as_array().unwrap().len(),
        0,
        "copy 1 is the newest verified one: nothing older to delete"
    );
    let out = cli.run(&["delete", "--keep-last", "0"]);
    assert_eq!(out.status.code(), Some(2), "keeping none is refused");
    cli.ok(&["create", "--sqlite", "bank.db", "--provider", "copy", "-q"]);
    let gone = cli.json(&["delete", "--keep-last", "1", "--json"]);
    let ids: Vec<i64> = gone
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [1, 2, 3],
        "everything older than the newest verified copy (4) goes"
    );
}
