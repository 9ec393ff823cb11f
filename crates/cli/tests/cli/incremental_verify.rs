//! Incremental verification: a copy's verification reads only the blocks it does not
//! share with the set's newest verified copy and checks only the SQLite pages that
//! changed, still finding damage in them; `verify --full`, `create --full-verify` and a
//! copy on storage that shares nothing read everything.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::Value;
use shadowcopy_sample as bank;
use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind};

use crate::support::{describe, Cli};

const PAGE: usize = 4096;

/// A bank of 100,000 accounts in WAL mode, padded to 48 MiB, at `dir/bank.db`.
fn bank_in(dir: &Path) -> PathBuf {
    let db = dir.join("bank.db");
    bank::create(&db, 100_000, true).unwrap();
    bank::pad_to(&db, 48 << 20).unwrap();
    db
}

/// About 1 % of the pages changed: 300 transfers between random accounts checkpointed
/// into the database file, 30 more left in its WAL while the connection returned is
/// open (closing it checkpoints them and removes the WAL).
fn change_a_little(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    let transfer = |n: i64| {
        for i in 0..n {
            let (from, to) = ((i * 7919) % 100_000 + 1, (i * 104_729) % 100_000 + 1);
            conn.execute_batch(&format!(
                "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {from};
                 UPDATE accounts SET balance = balance + 1 WHERE id = {to}; COMMIT;"
            ))
            .unwrap();
        }
    };
    transfer(300);
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    transfer(30);
    conn
}

fn create(cli: &Cli, db: &Path, provider: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "create",
        "--sqlite",
        db.to_str().unwrap(),
        "--provider",
        provider,
        "--json",
    ];
    args.extend_from_slice(extra);
    cli.json(&args)
}

/// Where copy `id` keeps its copy of `original` (the `reflink` and `copy` layout).
fn in_copy(cli: &Cli, id: i64, original: &Path) -> PathBuf {
    let show = cli.json(&["show", &id.to_string(), "--json"]);
    Path::new(show["location"].as_str().unwrap())
        .join("files")
        .join(original.strip_prefix("/").unwrap())
}

fn last_verification(cli: &Cli, id: i64) -> Value {
    let show = cli.json(&["show", &id.to_string(), "--json"]);
    show["verifications"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

#[test]
fn a_copys_verification_reads_only_what_changed_since_the_last_verified_copy() {
    let test = "a_copys_verification_reads_only_what_changed_since_the_last_verified_copy";
    let Some(xfs) = loopfs_or_skip(test, FsKind::Xfs, 400 << 20) else {
        return;
    };
    let cli = Cli::new();
    let db = bank_in(xfs.path());
    let first = create(&cli, &db, "reflink", &[]);
    let v = &first["verification"];
    assert_eq!(v["ok"], true, "{first}");
    assert!(
        v.get("base").is_none(),
        "the first copy is verified in full: {first}"
    );
    assert_eq!(v["bytes_read"], v["bytes"], "{first}");
    assert!(
        v["detail"].as_str().unwrap().contains("integrity_check ok"),
        "{first}"
    );
    let first_id = first["id"].as_i64().unwrap();

    // With frames in the copy's WAL: the pages they hold are checked on a scratch clone
    // that takes them in.
    let open = change_a_little(&db);
    let second = create(&cli, &db, "reflink", &[]);
    drop(open);
    let v = &second["verification"];
    assert_eq!(v["ok"], true, "{second}");
    assert_eq!(v["base"], first_id, "{second}");
    let (read, bytes) = (
        v["bytes_read"].as_u64().unwrap(),
        v["bytes"].as_u64().unwrap(),
    );
    assert!(bytes > 48 << 20, "{second}");
    assert!(read < bytes / 10, "read {read} of {bytes} bytes: {second}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("page structure ok"), "{second}");
    assert!(
        detail.contains(&format!("copy {first_id}'s verified blocks")),
        "{second}"
    );
    let second_id = second["id"].as_i64().unwrap();
    assert_eq!(last_verification(&cli, second_id)["base"], first_id);
    // What the incremental hash recorded is the file's BLAKE3: a full verification,
    // which reads everything and runs integrity_check, agrees with it.
    let full = cli.json(&["verify", &second_id.to_string(), "--full", "--json"]);
    assert_eq!(full["ok"], true, "{full}");
    assert!(full["base"].is_null(), "{full}");
    assert_eq!(full["bytes_read"], full["bytes"], "{full}");
    assert!(
        full["detail"]
            .as_str()
            .unwrap()
            .contains("integrity_check ok"),
        "{full}"
    );
    let summary = bank::summarize(&in_copy(&cli, second_id, &db)).unwrap();
    assert!(summary.balanced(), "{summary:?}");

    // Asked for in full: everything read although a base is there.
    let third = create(&cli, &db, "reflink", &["--full-verify"]);
    assert!(third["verification"].get("base").is_none(), "{third}");
    assert_eq!(
        third["verification"]["bytes_read"],
        third["verification"]["bytes"]
    );
}

/// The incremental check must still find damage in what changed: a cell pointer of a
/// changed leaf page of the accounts table, pointed past the page in the copy before
/// its first verification (which the hash cannot know about), is found by the page
/// check, and the copy is recorded as failed.
#[test]
fn a_damaged_page_among_those_that_changed_fails_the_incremental_check() {
    let test = "a_damaged_page_among_those_that_changed_fails_the_incremental_check";
    let Some(xfs) = loopfs_or_skip(test, FsKind::Xfs, 400 << 20) else {
        return;
    };
    let cli = Cli::new();
    let db = bank_in(xfs.path());
    let first = create(&cli, &db, "reflink", &[]);
    let first_id = first["id"].as_i64().unwrap();
    // The WAL checkpointed and removed: the copy itself is read.
    drop(change_a_little(&db));
    let second = create(&cli, &db, "reflink", &["--no-verify"]);
    let second_id = second["id"].as_i64().unwrap();

    // A table-leaf page (type 13) that differs between the two copies.
    let old = std::fs::read(in_copy(&cli, first_id, &db)).unwrap();
    let copied = in_copy(&cli, second_id, &db);
    let new = std::fs::read(&copied).unwrap();
    let page = (1..new.len() / PAGE)
        .find(|&p| {
            let (a, b) = (
                &old[p * PAGE..(p + 1) * PAGE],
                &new[p * PAGE..(p + 1) * PAGE],
            );
            a != b && b[0] == 13 && u16::from_be_bytes([b[3], b[4]]) > 2
        })
        .expect("a changed table-leaf page");
    // Its first cell pointer, past the end of the page.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&copied)
        .unwrap();
    file.write_all_at(&0xfff0u16.to_be_bytes(), (page * PAGE + 8) as u64)
        .unwrap();
    drop(file);

    let out = cli.run(&["verify", &second_id.to_string(), "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let last = last_verification(&cli, second_id);
    assert_eq!(last["ok"], false, "{last}");
    assert_eq!(last["base"], first_id, "{last}");
    let detail = last["detail"].as_str().unwrap();
    assert!(detail.contains("page check found"), "{last}");
    // SQLite numbers pages from 1.
    assert!(detail.contains(&format!("page {}", page + 1)), "{last}");
    // Never a base for the next copy: the next verification builds on the first.
    let third = create(&cli, &db, "reflink", &[]);
    assert_eq!(third["verification"]["base"], first_id, "{third}");
    assert_eq!(third["verification"]["ok"], true, "{third}");
}

/// On storage that shares no blocks between copies (`copy`), the second copy's
/// verification builds on the first in name only: every byte is read, and SQLite's
/// full integrity_check runs, since everything counts as changed.
#[test]
fn copies_that_share_no_blocks_are_verified_in_full() {
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    bank::create(&db, 1000, true).unwrap();
    create(&cli, &db, "copy", &[]);
    change_a_little_small(&db);
    let second = create(&cli, &db, "copy", &[]);
    let v = &second["verification"];
    assert_eq!(v["ok"], true, "{second}");
    assert_eq!(v["bytes_read"], v["bytes"], "{second}");
    assert!(
        v["detail"].as_str().unwrap().contains("integrity_check ok"),
        "{second}"
    );
}

fn change_a_little_small(db: &Path) {
    let conn = Connection::open(db).unwrap();
    conn.execute("UPDATE accounts SET balance = balance WHERE id = 1", [])
        .unwrap();
}

/// The base copy's files are opened as the copy's are, never through a symlink: a link
/// put in place of the base's database, pointing at the live database (whose blocks the
/// new copy shares), is not followed, so nothing is taken as shared and everything is
/// read (following it would have found the blocks shared and read little).
#[test]
fn a_symlink_in_place_of_the_base_copys_file_is_not_followed() {
    let test = "a_symlink_in_place_of_the_base_copys_file_is_not_followed";
    let Some(xfs) = loopfs_or_skip(test, FsKind::Xfs, 400 << 20) else {
        return;
    };
    let cli = Cli::new();
    let db = bank_in(xfs.path());
    let first = create(&cli, &db, "reflink", &[]);
    let first_id = first["id"].as_i64().unwrap();
    let base_file = in_copy(&cli, first_id, &db);
    std::fs::remove_file(&base_file).unwrap();
    std::os::unix::fs::symlink(&db, &base_file).unwrap();

    let second = create(&cli, &db, "reflink", &[]);
    let v = &second["verification"];
    assert_eq!(v["ok"], true, "{second}");
    assert_eq!(v["base"], first_id, "{second}");
    let (read, bytes) = (
        v["bytes_read"].as_u64().unwrap(),
        v["bytes"].as_u64().unwrap(),
    );
    assert!(bytes > 48 << 20, "{second}");
    assert!(
        read >= 48 << 20,
        "the link was followed: read {read} of {bytes}: {second}"
    );
}
