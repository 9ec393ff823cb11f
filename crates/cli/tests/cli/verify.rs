//! `verify` of copies that are large in file count, removed by hand or tampered with:
//! exit 4 and a recorded failure for a damaged copy, a JSON error object with `--json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::support::{describe, stderr, Cli};

/// Where copy `id` keeps the copy of `original` (the `copy` provider's layout).
fn in_copy(cli: &Cli, id: i64, original: &Path) -> PathBuf {
    let show = cli.json(&["show", &id.to_string(), "--json"]);
    Path::new(show["location"].as_str().unwrap())
        .join("files")
        .join(original.strip_prefix("/").unwrap())
}

fn copy_of_bank(cli: &Cli) -> (PathBuf, i64) {
    let db = cli.bank("bank.db", 0);
    let created = cli.json(&[
        "create",
        "--sqlite",
        "bank.db",
        "--provider",
        "copy",
        "--json",
    ]);
    (db, created["id"].as_i64().unwrap())
}

fn verify_state(cli: &Cli, id: i64) -> Value {
    let list = cli.json(&["list", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap()["verify_state"]
        .clone()
}

/// One hashing thread per file used to abort the process (exit 134, "failed to set up
/// alternative stack guard page") at about 40,000 files, in `create` and in `verify`.
#[test]
fn forty_thousand_files_verify_with_a_bounded_pool() {
    let cli = Cli::new();
    // On tmpfs where there is one: the copy's 40,000 fsyncs on a busy disk take minutes.
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let catalog = scratch.path().join("catalog");
    let catalog = catalog.to_str().unwrap();
    let data = scratch.path().join("many");
    for d in 0..200 {
        let dir = data.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            std::fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let started = Instant::now();
    let created = cli.json(&[
        "--catalog",
        catalog,
        "create",
        "--path",
        data.to_str().unwrap(),
        "--provider",
        "copy",
        "--json",
    ]);
    assert_eq!(created["verification"]["ok"], true, "{created}");
    let id = created["id"].as_i64().unwrap();
    let out = cli.run(&["--catalog", catalog, "verify", &id.to_string(), "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("40000 files hashed (BLAKE3), all match"),
        "{v}"
    );
    eprintln!("create and verify of 40,000 files: {:?}", started.elapsed());
}

/// A copy whose directory was removed by hand failed with exit 1 and stayed "passed".
#[test]
fn copy_removed_by_hand_fails_verification_and_is_recorded() {
    let cli = Cli::new();
    let (_db, id) = copy_of_bank(&cli);
    let show = cli.json(&["show", &id.to_string(), "--json"]);
    let location = show["location"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(&location).unwrap();

    let out = cli.run(&["verify", &id.to_string()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(err.contains("copy's files are missing"), "{err}");
    assert!(err.contains(&location), "{err}");

    assert_eq!(verify_state(&cli, id), "failed");
    let show = cli.json(&["show", &id.to_string(), "--json"]);
    let last = show["verifications"].as_array().unwrap().last().unwrap();
    assert_eq!(last["ok"], false, "{show}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("copy's files are missing"),
        "{show}"
    );
    let human = cli.ok(&["list"]);
    assert!(human.contains("failed"), "{human}");
    // Not restored without --force.
    let out = cli.run(&["restore", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// The files removed from a copy whose directory is left: a writer's check that cannot
/// run on them (SQLite's scratch clone) made verify exit 1 with nothing recorded.
#[test]
fn copy_with_its_files_removed_fails_verification() {
    let cli = Cli::new();
    let (db, id) = copy_of_bank(&cli);
    let copied = in_copy(&cli, id, &db);
    std::fs::remove_dir_all(copied.parent().unwrap()).unwrap();

    let out = cli.run(&["verify", &id.to_string()]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No such file or directory"), "{text}");
    assert!(text.contains("the check could not run"), "{text}");
    assert_eq!(verify_state(&cli, id), "failed");
}

/// A symlink put in place of a copied file is reported, not followed: before, a link to
/// a file elsewhere with the same content verified as "passed".
#[test]
fn symlink_in_place_of_a_copied_file_is_not_followed() {
    let cli = Cli::new();
    let (db, id) = copy_of_bank(&cli);
    let copied = in_copy(&cli, id, &db);
    std::fs::copy(&copied, cli.path("same-content")).unwrap();
    std::fs::remove_file(&copied).unwrap();
    std::os::unix::fs::symlink(cli.path("same-content"), &copied).unwrap();

    let out = cli.run(&["verify", &id.to_string()]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("symbolic link"), "{}", describe(&out));
    assert_eq!(verify_state(&cli, id), "failed");
}

/// With --json a failed verification is one JSON document on stdout: the error object
/// with code 4 and the copy's id; the human error still goes to stderr.
#[test]
fn failed_verification_with_json_prints_the_error_object() {
    let cli = Cli::new();
    let (db, id) = copy_of_bank(&cli);
    let copied = in_copy(&cli, id, &db);
    let mut bytes = std::fs::read(&copied).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&copied, bytes).unwrap();

    let out = cli.run(&["verify", &id.to_string(), "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", describe(&out)));
    assert_eq!(v["error"]["code"], 4, "{v}");
    assert_eq!(v["error"]["copy_id"], id, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("failed verification"), "{v}");
    assert!(message.contains("content changed"), "{v}");
    assert!(v["error"]["causes"].is_array(), "{v}");
    assert!(
        stderr(&out).contains("failed verification"),
        "{}",
        describe(&out)
    );
}

/// A copy nobody verified is restored, with a warning that says so (on stderr and in
/// the report's `warnings`); a verified copy's restore has none.
#[test]
fn a_copy_never_verified_is_restored_with_a_warning() {
    let cli = Cli::new();
    let _db = cli.bank("bank.db", 0);
    let create = |extra: &[&str]| {
        let mut args = vec![
            "create",
            "--sqlite",
            "bank.db",
            "--provider",
            "copy",
            "--json",
        ];
        args.extend_from_slice(extra);
        cli.json(&args)["id"].as_i64().unwrap()
    };
    let unverified = create(&["--no-verify"]);
    let out = cli.run(&[
        "restore",
        &unverified.to_string(),
        "--discard-current",
        "--json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report}");
    let warning = warnings[0].as_str().unwrap();
    assert!(warning.contains("never verified"), "{report}");
    assert!(
        warning.contains(&format!("shadowcopy verify {unverified}")),
        "{report}"
    );
    assert!(stderr(&out).contains("warning: copy"), "{}", describe(&out));

    let verified = create(&[]);
    let report = cli.json(&[
        "restore",
        &verified.to_string(),
        "--discard-current",
        "--json",
    ]);
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
}
