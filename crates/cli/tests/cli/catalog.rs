//! Where the catalog lives and what it keeps: private modes, absolute locations, no
//! catalog made by a command that only reads, a full file system, a lost `catalog.db`,
//! rows this version cannot read, and file names that are not UTF-8.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shadowcopy_testing::loopfs::{loopfs_or_skip, require_root, FsKind};

use crate::support::{describe, fill, stderr, Cli};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs the binary in `cwd` with `--catalog catalog` (given as typed).
fn run_in(cli: &Cli, cwd: &Path, catalog: &str, args: &[&str]) -> Output {
    let mut full = vec!["--catalog", catalog];
    full.extend_from_slice(args);
    cli.cmd(&full)
        .current_dir(cwd)
        .env_remove("SHADOWCOPY_CATALOG")
        .output()
        .unwrap()
}

fn ok_in(cli: &Cli, cwd: &Path, catalog: &str, args: &[&str]) -> String {
    let out = run_in(cli, cwd, catalog, args);
    assert!(out.status.success(), "{args:?}: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn json_in(cli: &Cli, cwd: &Path, catalog: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok_in(cli, cwd, catalog, args)).unwrap()
}

/// Whether user `nobody` can read `path` (a file with `cat`, a directory with `ls`).
fn nobody_reads(path: &Path) -> bool {
    let tool = if path.is_dir() { "ls" } else { "cat" };
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", tool])
        .arg(path)
        .output()
        .expect("runuser");
    out.status.success()
}

#[test]
fn copies_and_catalog_are_private_to_their_owner() {
    if !require_root("copies_and_catalog_are_private_to_their_owner") {
        return;
    }
    let cli = Cli::new();
    // Only shadowcopy's own modes may keep `nobody` out: the temp dir is open.
    chmod(cli.dir.path(), 0o755);
    let home = cli.path("home");
    std::fs::create_dir(&home).unwrap();
    let secret = home.join("secret.db");
    std::fs::write(&secret, "the secret\n").unwrap();
    chmod(&secret, 0o644);
    chmod(&home, 0o700);
    assert!(
        !nobody_reads(&secret),
        "the original is protected by its directory"
    );
    std::fs::write(cli.path("public"), "open\n").unwrap();
    assert!(
        nobody_reads(&cli.path("public")),
        "the check can see a readable file"
    );

    let created = cli.json(&[
        "create",
        "--path",
        secret.to_str().unwrap(),
        "--provider",
        "copy",
        "--json",
    ]);
    let location = PathBuf::from(created["location"].as_str().unwrap());
    let in_copy = location
        .join("files")
        .join(secret.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read_to_string(&in_copy).unwrap(), "the secret\n");

    assert_eq!(mode(&cli.catalog), 0o700, "catalog directory");
    let db = cli.catalog.join("catalog.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    assert_eq!(mode(&cli.catalog.join("copies")), 0o700, "copies directory");
    assert_eq!(mode(&location), 0o700, "copy location");
    for p in [&in_copy, &db, &cli.catalog, &location] {
        assert!(!nobody_reads(p), "nobody can read {}", p.display());
    }
}

#[test]
fn a_catalog_directory_open_to_others_is_made_private() {
    if !require_root("a_catalog_directory_open_to_others_is_made_private") {
        return;
    }
    let cli = Cli::new();
    chmod(cli.dir.path(), 0o755);
    std::fs::create_dir(&cli.catalog).unwrap();
    chmod(&cli.catalog, 0o755);
    std::fs::write(cli.path("f"), "x").unwrap();
    let out = cli.run(&["create", "--path", "f", "--provider", "copy"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(mode(&cli.catalog), 0o700);
    assert!(
        stderr(&out).contains("was open to other users (mode 755); made it private"),
        "{}",
        stderr(&out)
    );
    assert!(!nobody_reads(&cli.catalog));
}

#[test]
fn a_relative_catalog_records_absolute_locations() {
    let cli = Cli::new();
    let here = cli.path("here");
    let elsewhere = cli.path("elsewhere");
    std::fs::create_dir_all(here.join("data")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(here.join("data/f"), "data").unwrap();
    let created = json_in(
        &cli,
        &here,
        "cat",
        &["create", "--path", "data", "--provider", "copy", "--json"],
    );
    let id = created["id"].as_i64().unwrap().to_string();
    let location = PathBuf::from(created["location"].as_str().unwrap());
    assert!(location.is_absolute(), "{}", location.display());
    assert!(location.starts_with(here.join("cat/copies")));
    let show = json_in(&cli, &here, "cat", &["show", &id, "--json"]);
    assert_eq!(show["location"].as_str(), location.to_str());

    // Someone else's files where the location would point, read as relative from there.
    let name = location.file_name().unwrap();
    let decoy = elsewhere.join("cat/copies").join(name);
    std::fs::create_dir_all(&decoy).unwrap();
    std::fs::write(decoy.join("theirs"), "not a copy").unwrap();

    let other = "../here/cat";
    assert!(ok_in(&cli, &elsewhere, other, &["verify", &id]).contains("passed"));
    ok_in(&cli, &elsewhere, other, &["delete", &id]);
    assert!(!location.exists(), "the copy's data is gone");
    assert!(decoy.join("theirs").exists(), "the decoy is untouched");
}

#[test]
fn a_relative_location_left_by_an_older_version_is_read_in_the_catalog() {
    let cli = Cli::new();
    let here = cli.path("here");
    let elsewhere = cli.path("elsewhere");
    std::fs::create_dir_all(here.join("data")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(here.join("data/f"), "data").unwrap();
    let created = json_in(
        &cli,
        &here,
        "cat",
        &["create", "--path", "data", "--provider", "copy", "--json"],
    );
    let id = created["id"].as_i64().unwrap();
    let location = PathBuf::from(created["location"].as_str().unwrap());
    let name = location.file_name().unwrap().to_str().unwrap().to_string();
    // What a version that did not make the catalog absolute recorded.
    let conn = rusqlite::Connection::open(here.join("cat/catalog.db")).unwrap();
    conn.execute(
        "UPDATE copies SET location = ?2 WHERE id = ?1",
        rusqlite::params![id, format!("cat/copies/{name}")],
    )
    .unwrap();
    drop(conn);
    let decoy = elsewhere.join("cat/copies").join(&name);
    std::fs::create_dir_all(&decoy).unwrap();
    std::fs::write(decoy.join("theirs"), "not a copy").unwrap();

    let abs = here.join("cat");
    let abs = abs.to_str().unwrap();
    let show = json_in(&cli, &elsewhere, abs, &["show", &id.to_string(), "--json"]);
    assert_eq!(show["location"].as_str(), location.to_str());
    ok_in(&cli, &elsewhere, abs, &["delete", &id.to_string()]);
    assert!(!location.exists(), "the copy's data is gone");
    assert!(decoy.join("theirs").exists(), "the decoy is untouched");

    // A relative location of another shape cannot be placed: it is never deleted.
    let created = json_in(
        &cli,
        &here,
        "cat",
        &["create", "--path", "data", "--provider", "copy", "--json"],
    );
    let id = created["id"].as_i64().unwrap();
    let conn = rusqlite::Connection::open(here.join("cat/catalog.db")).unwrap();
    conn.execute(
        "UPDATE copies SET location = 'mine/copy-x' WHERE id = ?1",
        [id],
    )
    .unwrap();
    drop(conn);
    std::fs::create_dir_all(elsewhere.join("mine/copy-x")).unwrap();
    std::fs::write(elsewhere.join("mine/copy-x/theirs"), "not a copy").unwrap();
    let out = run_in(&cli, &elsewhere, abs, &["delete", "--older-than", "0s"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains(
            "recorded relative to the directory an older shadowcopy ran in; nothing was deleted"
        ),
        "{}",
        stderr(&out)
    );
    assert!(elsewhere.join("mine/copy-x/theirs").exists());
    assert_eq!(
        json_in(&cli, &elsewhere, abs, &["list", "--json"])[0]["id"],
        id
    );
}

#[test]
fn an_empty_catalog_in_the_config_is_an_error() {
    let cli = Cli::new();
    std::fs::write(cli.path("c.toml"), "catalog = \"\"\n").unwrap();
    std::fs::write(cli.path("f"), "x").unwrap();
    for args in [
        &["--config", "c.toml", "list"][..],
        &["--config", "c.toml", "create", "--path", "f"][..],
    ] {
        let out = cli
            .cmd(args)
            .env_remove("SHADOWCOPY_CATALOG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            stderr(&out).contains("the catalog directory given by `catalog` in c.toml is empty"),
            "{}",
            stderr(&out)
        );
    }
    let entries: Vec<_> = std::fs::read_dir(cli.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 2, "nothing written: {entries:?}");
}

#[test]
fn commands_other_than_create_need_an_existing_catalog_and_make_none() {
    let cli = Cli::new();
    for args in [
        &["list"][..],
        &["list", "--json"][..],
        &["show", "1"][..],
        &["verify", "1"][..],
        &["restore", "1", "--to", "out"][..],
        &["delete", "1"][..],
        &["delete", "--older-than", "1d", "--dry-run"][..],
        &["pg", "log-analysis", "1"][..],
        &["mariadb", "log-analysis", "1"][..],
    ] {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains(&format!(
                "there is no catalog at {} (no catalog.db there)",
                cli.catalog.display()
            )),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!cli.catalog.exists(), "{args:?} created the catalog");
    }
}

#[test]
fn a_full_file_system_leaves_reading_and_deleting_working() {
    let test = "a_full_file_system_leaves_reading_and_deleting_working";
    let Some(fs) = loopfs_or_skip(test, FsKind::Ext4, 16 << 20) else {
        return;
    };
    let cli = Cli::new();
    let root = fs.path();
    let catalog = root.join("cat");
    let cat = catalog.to_str().unwrap();
    std::fs::create_dir(root.join("data")).unwrap();
    std::fs::write(root.join("data/f"), vec![7u8; 1 << 20]).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let c = json_in(
            &cli,
            root,
            cat,
            &["create", "--path", "data", "--provider", "copy", "--json"],
        );
        ids.push(c["id"].as_i64().unwrap().to_string());
    }
    fill(root, "filler-1");

    let list = json_in(&cli, root, cat, &["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(ok_in(&cli, root, cat, &["show", &ids[0]]).contains("usable"));

    let out = run_in(
        &cli,
        root,
        cat,
        &["create", "--path", "data", "--provider", "copy"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the file system holding the catalog {cat} is full; free space there, or delete copies"
        )),
        "{}",
        stderr(&out)
    );

    let location = PathBuf::from(list[0]["location"].as_str().unwrap());
    assert!(location.exists());
    ok_in(&cli, root, cat, &["delete", &ids[0]]);
    assert!(!location.exists(), "the copy's data is gone");
    let list = json_in(&cli, root, cat, &["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"].to_string(), ids[1]);
    assert!(
        catalog.join("space.reserve").exists(),
        "the reserve is back"
    );

    // Without the reserve (a catalog of an older version), the message says what helps.
    std::fs::remove_file(catalog.join("space.reserve")).unwrap();
    fill(root, "filler-2");
    let out = run_in(&cli, root, cat, &["delete", &ids[1]]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("is full, and the room the catalog keeps for deleting is used up")
            && stderr(&out).contains("free a few MiB there by hand"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        json_in(&cli, root, cat, &["list", "--json"])[0]["state"],
        "usable"
    );
    std::fs::remove_file(root.join("filler-2")).unwrap();
    ok_in(&cli, root, cat, &["delete", &ids[1]]);
    assert_eq!(
        json_in(&cli, root, cat, &["list", "--json"]),
        serde_json::json!([])
    );
}

/// Fills the file system at `root` to the last block and inode it gives root.
#[test]
fn an_emptied_catalog_is_not_started_over_where_copies_exist() {
    let cli = Cli::new();
    std::fs::write(cli.path("f"), "x").unwrap();
    cli.ok(&["create", "--path", "f", "--provider", "copy"]);
    let db = cli.catalog.join("catalog.db");
    std::fs::write(&db, "").unwrap();
    for args in [
        &["create", "--path", "f", "--provider", "copy"][..],
        &["list"][..],
    ] {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains("is empty, but")
                && stderr(&out).contains("copies holds 1 copy")
                && stderr(&out).contains("Put back catalog.db from a backup"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "nothing written");

    // Without its catalog.db at all, the same.
    std::fs::remove_file(&db).unwrap();
    for args in [
        &["create", "--path", "f", "--provider", "copy"][..],
        &["list"][..],
        &["delete", "1"][..],
    ] {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains("is missing, but"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(!db.exists());
}

#[test]
fn a_row_with_an_unknown_state_is_skipped_not_fatal() {
    let cli = Cli::new();
    std::fs::write(cli.path("f"), "x").unwrap();
    for _ in 0..2 {
        cli.ok(&["create", "--path", "f", "--provider", "copy"]);
    }
    let conn = rusqlite::Connection::open(cli.catalog.join("catalog.db")).unwrap();
    conn.execute("UPDATE copies SET state = 'archived' WHERE id = 1", [])
        .unwrap();
    drop(conn);

    let out = cli.run(&["list", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], 2);
    assert!(
        stderr(&out).contains("copy 1 has state `archived` in the catalog"),
        "{}",
        stderr(&out)
    );

    cli.ok(&["create", "--path", "f", "--provider", "copy"]);
    let out = cli.run(&["delete", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("copy 1 has state `archived`"),
        "{}",
        stderr(&out)
    );
    cli.ok(&["delete", "--older-than", "0s"]);
    let conn = rusqlite::Connection::open(cli.catalog.join("catalog.db")).unwrap();
    let left: Vec<(i64, String)> = conn
        .prepare("SELECT id, state FROM copies ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left, vec![(1, "archived".to_string())], "only it is left");
}

#[test]
fn a_file_name_that_is_not_utf8_is_copied_shown_and_restored() {
    let cli = Cli::new();
    let data = cli.path("data");
    std::fs::create_dir(&data).unwrap();
    let name = OsStr::from_bytes(b"bad\xffname");
    std::fs::write(data.join(name), "odd").unwrap();
    std::fs::write(data.join("plain"), "plain").unwrap();

    let created = cli.json(&["create", "--path", "data", "--provider", "copy", "--json"]);
    assert_eq!(created["files"], 2, "{created}");
    let id = created["id"].as_i64().unwrap().to_string();

    let show = cli.json(&["show", &id, "--json"]);
    let odd = show["manifest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f.get("path_hex").is_some())
        .unwrap_or_else(|| panic!("no entry with path_hex: {show}"));
    let hex: String = data
        .join(name)
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(odd["path_hex"], hex);
    assert!(odd["path"].as_str().unwrap().ends_with("bad\u{fffd}name"));

    let restored = cli.json(&["restore", &id, "--to", "out", "--json"]);
    let targets = restored["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{restored}");
    assert!(
        targets.iter().any(|t| t.is_string())
            && targets.iter().any(|t| t["path_hex"]
                .as_str()
                .is_some_and(|h| h.ends_with("626164ff6e616d65"))),
        "{restored}"
    );
    let restored: Vec<PathBuf> = walkdir::WalkDir::new(cli.path("out"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.file_name() == Some(name))
        .collect();
    assert_eq!(restored.len(), 1, "exactly one file named bad\\xffname");
    assert_eq!(std::fs::read_to_string(&restored[0]).unwrap(), "odd");
}
