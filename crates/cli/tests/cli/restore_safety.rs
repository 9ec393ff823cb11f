//! A root-run restore against hostile and unlucky conditions: a user who plants symlinks
//! in their own directory, the restore killed at every rename of its swap, and a copy
//! whose tree (directories, modes, symlinks, empty directories) must come back as it was.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use shadowcopy_testing::bank;
use shadowcopy_testing::loopfs::require_root;

use crate::support::{describe, stderr, Cli};

/// The unprivileged user the attacks run as.
const ATTACKER: &str = "nobody";

fn attacker_ids() -> (u32, u32) {
    let out = Command::new("id").args(["-u", ATTACKER]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id").args(["-g", ATTACKER]).output().unwrap();
    let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

/// Runs a shell command as the attacker.
fn as_attacker(script: &str) {
    let out = Command::new("runuser")
        .args(["-u", ATTACKER, "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "attacker script failed: {}",
        describe(&out)
    );
}

fn chown_tree(path: &Path, (uid, gid): (u32, u32)) {
    for e in walkdir::WalkDir::new(path) {
        let e = e.unwrap();
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid)).unwrap();
    }
}

/// A directory root owns (0755) holding `app/` owned by the attacker with `sub/victim`,
/// and `secret/`, a root-only directory.
struct Stage {
    cli: Cli,
    top: PathBuf,
}

impl Stage {
    fn new() -> Stage {
        let cli = Cli::new();
        std::fs::set_permissions(cli.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let top = cli.dir.path().to_path_buf();
        std::fs::create_dir_all(top.join("app/sub")).unwrap();
        std::fs::write(top.join("app/sub/victim"), "the user's data\n").unwrap();
        chown_tree(&top.join("app"), attacker_ids());
        std::fs::create_dir(top.join("secret")).unwrap();
        std::fs::set_permissions(top.join("secret"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::write(top.join("secret/shadow"), "root's secret\n").unwrap();
        std::fs::set_permissions(
            top.join("secret/shadow"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        Stage { cli, top }
    }

    fn app(&self) -> String {
        self.top.join("app").display().to_string()
    }

    /// A config whose set `app` is `app/sub` with its copies beside it in `app/.copies`,
    /// in the directory the user owns; returns its path.
    fn config_with_copies_beside_the_data(&self) -> String {
        let app = self.app();
        let config = self.top.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[sets.app]\npaths = [\"{app}/sub\"]\nprovider = \"copy\"\ncopies_dir = \"{app}/.copies\"\n"
            ),
        )
        .unwrap();
        config.display().to_string()
    }
}

/// No staging directory of a restore is left anywhere below `dir`.
fn assert_no_staging_left(dir: &Path) {
    for e in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
    {
        let name = e.file_name().to_string_lossy();
        assert!(
            !name.contains(".shadowcopy-restore"),
            "staging left behind: {}",
            e.path().display()
        );
    }
}

#[test]
fn restore_never_writes_through_a_symlink_the_user_planted() {
    if !require_root("restore_never_writes_through_a_symlink_the_user_planted") {
        return;
    }
    let s = Stage::new();
    let app = s.app();
    s.cli
        .ok(&["create", "--path", &app, "--provider", "copy", "-q"]);
    // The user swaps `sub` for a link to the root-only directory.
    let secret = s.top.join("secret");
    as_attacker(&format!(
        "mv {app}/sub {app}/sub.old && ln -s {} {app}/sub",
        secret.display()
    ));
    let out = s.cli.run(&["restore", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("refusing to follow the symlink"),
        "{}",
        describe(&out)
    );
    let names: Vec<_> = std::fs::read_dir(&secret)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("shadow")],
        "root's directory was written"
    );
    assert_no_staging_left(&s.top);
    // With the link gone, the same restore works and gives the user their file back.
    as_attacker(&format!("rm {app}/sub"));
    s.cli.ok(&["restore", "1"]);
    let victim = s.top.join("app/sub/victim");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "the user's data\n"
    );
    assert_eq!(std::fs::metadata(&victim).unwrap().uid(), attacker_ids().0);
    assert_no_staging_left(&s.top);
}

#[test]
fn a_planted_staging_name_is_never_followed() {
    if !require_root("a_planted_staging_name_is_never_followed") {
        return;
    }
    let s = Stage::new();
    let app = s.app();
    s.cli
        .ok(&["create", "--path", &app, "--provider", "copy", "-q"]);
    // The names a restore staged at before: beside the target, predictable.
    let shadow = s.top.join("secret/shadow");
    as_attacker(&format!(
        "echo changed > {app}/sub/victim; ln -s {} {app}/sub/victim.shadowcopy-restore; \
         ln -s {} {app}/sub/.shadowcopy-restore-0000000000000000",
        shadow.display(),
        s.top.join("secret").display()
    ));
    s.cli.ok(&["restore", "1"]);
    assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "root's secret\n");
    let meta = std::fs::metadata(&shadow).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    assert_eq!(
        std::fs::read_to_string(s.top.join("app/sub/victim")).unwrap(),
        "the user's data\n"
    );
}

#[test]
fn restore_brings_back_the_tree_it_copied() {
    let cli = Cli::new();
    let data = cli.path("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::create_dir_all(data.join("emptydir")).unwrap();
    std::fs::write(data.join("sub/file"), "content\n").unwrap();
    std::fs::set_permissions(data.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        data.join("emptydir"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/file", data.join("current")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", data.join("outside")).unwrap();
    cli.ok(&["create", "--path", "data", "--provider", "copy", "-q"]);

    let check = |root: &Path| {
        assert_eq!(
            std::fs::read_to_string(root.join("sub/file")).unwrap(),
            "content\n"
        );
        let mode = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("sub"), 0o700);
        assert_eq!(mode("emptydir"), 0o750);
        assert_eq!(
            std::fs::read_link(root.join("current")).unwrap(),
            Path::new("sub/file")
        );
        // A link to outside the set stays a link: never followed, never copied through.
        assert_eq!(
            std::fs::read_link(root.join("outside")).unwrap(),
            Path::new("/etc/hostname")
        );
    };
    // Inside the live data (directly, or through a link to it): refused, nothing written.
    std::os::unix::fs::symlink("data", cli.path("to-data")).unwrap();
    for inside in ["data/restored", "to-data/restored/deeper"] {
        let out = cli.run(&["restore", "1", "--to", inside]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            stderr(&out).contains("restore --to needs a directory outside the set's data"),
            "{}",
            describe(&out)
        );
        assert!(!data.join("restored").exists());
    }
    // Elsewhere: the same tree under the new directory, not moved up a level.
    cli.ok(&["restore", "1", "--to", "out"]);
    check(&cli.path("out"));
    // In place: a changed symlink, a removed empty directory and a changed mode come back.
    std::fs::remove_file(data.join("current")).unwrap();
    std::os::unix::fs::symlink("emptydir", data.join("current")).unwrap();
    std::fs::remove_dir(data.join("emptydir")).unwrap();
    std::fs::set_permissions(data.join("sub"), std::fs::Permissions::from_mode(0o777)).unwrap();
    cli.ok(&["restore", "1"]);
    check(&data);
    assert_no_staging_left(cli.dir.path());
}

#[test]
fn restore_to_an_existing_file_is_refused_and_creates_nothing() {
    let cli = Cli::new();
    cli.bank("bank.db", 0);
    cli.ok(&["create", "--sqlite", "bank.db", "--provider", "copy", "-q"]);
    std::fs::write(cli.path("taken"), "a file").unwrap();
    let out = cli.run(&["restore", "1", "--to", "taken"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        std::fs::read_to_string(cli.path("taken")).unwrap(),
        "a file"
    );
    // A restore that fails after it made directories for its targets removes them.
    let copies = cli.catalog.join("copies");
    let copy_dir = std::fs::read_dir(&copies)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let in_copy = copy_dir
        .join("files")
        .join(cli.path("bank.db").strip_prefix("/").unwrap());
    std::fs::remove_file(&in_copy).unwrap();
    let out = cli.run(&["restore", "1", "--to", "fresh/deeper"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        !cli.path("fresh").exists(),
        "the failed restore left fresh/ behind"
    );
    assert_no_staging_left(cli.dir.path());
}

/// Commits `n` transfers on the bank and closes without a checkpoint, so the live
/// database has a WAL with frames in it (what a restore must never pair with other data).
fn transfers_left_in_the_wal(db: &Path, n: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    for _ in 0..n {
        conn.execute_batch(
            "BEGIN; UPDATE accounts SET balance = balance - 7 WHERE id = 1;
             UPDATE accounts SET balance = balance + 7 WHERE id = 2;
             INSERT INTO transfers (from_id, to_id, amount, at_ms) VALUES (1, 2, 7, 0); COMMIT;",
        )
        .unwrap();
    }
}

#[test]
fn a_restore_killed_at_every_rename_is_finished_by_the_next_command() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    transfers_left_in_the_wal(&db, 10);
    cli.ok(&["create", "--sqlite", "bank.db", "--provider", "copy", "-q"]);
    let copied = bank::summarize(&db).unwrap();
    assert_eq!(copied.transfers, 10);
    let mut step = 1;
    loop {
        transfers_left_in_the_wal(&db, 5);
        let before = bank::summarize(&db).unwrap();
        assert!(cli.path("bank.db-wal").metadata().unwrap().len() > 0);
        let out = cli
            .cmd(&["restore", "1"])
            .env("SHADOWCOPY_TEST_KILL_AT_SWAP_STEP", step.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            // Past the last rename: the restore ran to its end.
            assert!(
                step > 2,
                "the swap had fewer renames than a database and its WAL"
            );
            let after = bank::summarize(&db).unwrap();
            assert_eq!(after, copied);
            break;
        }
        assert_eq!(
            out.status.signal(),
            Some(9),
            "step {step}: {}",
            describe(&out)
        );
        // Whatever the next command is, it finishes the restore first.
        let next = cli.run(&["verify", "1"]);
        assert!(next.status.success(), "step {step}: {}", describe(&next));
        assert!(
            stderr(&next).contains("killed during a restore"),
            "step {step}: {}",
            describe(&next)
        );
        let after = bank::summarize(&db).unwrap();
        assert!(
            after == copied || after == before,
            "step {step}: the live database is neither the copy ({copied:?}) nor what it was ({before:?}): {after:?}"
        );
        assert!(after.balanced(), "step {step}: {after:?}");
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "step {step}");
        drop(conn);
        assert_no_staging_left(cli.dir.path());
        // A second command has nothing left to finish.
        let again = cli.run(&["verify", "1"]);
        assert!(
            !stderr(&again).contains("killed during a restore"),
            "{}",
            describe(&again)
        );
        step += 1;
        assert!(step < 20, "the swap never ran to its end");
    }
}

#[test]
fn delete_never_follows_a_symlink_planted_in_place_of_the_copies_directory() {
    if !require_root("delete_never_follows_a_symlink_planted_in_place_of_the_copies_directory") {
        return;
    }
    let s = Stage::new();
    let app = s.app();
    let config = s.config_with_copies_beside_the_data();
    s.cli.ok(&["--config", &config, "create", "app", "-q"]);
    let location = std::fs::read_dir(s.top.join("app/.copies"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    // Root keeps something under the same name elsewhere; the user points .copies there.
    let precious = s.top.join("secret").join(&location);
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("important"), "keep me\n").unwrap();
    as_attacker(&format!(
        "mv {app}/.copies {app}/.copies.moved && ln -s {} {app}/.copies",
        s.top.join("secret").display()
    ));
    let out = s.cli.run(&["--config", &config, "delete", "1"]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(precious.join("important")).unwrap(),
        "keep me\n",
        "delete followed the planted symlink: {}",
        describe(&out)
    );
}

#[test]
fn a_postgres_restore_never_writes_through_a_symlink_the_server_user_planted() {
    let cli = Cli::new();
    let Some(cluster) = shadowcopy_testing::postgres::postgres_or_skip(
        "a_postgres_restore_never_writes_through_a_symlink_the_server_user_planted",
        shadowcopy_testing::postgres::PgOptions::new(),
    ) else {
        return;
    };
    let out = cli.run(&[
        "create",
        "--postgres",
        &cluster.url(),
        "--provider",
        "copy",
        "-q",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    cluster.stop();
    // The server's user (who owns the data directory) plants the names a restore writes
    // its recovery files at, pointing to a file only root may change.
    let victim = cli.path("root-only");
    std::fs::write(&victim, "root's\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = cluster.data_dir().to_path_buf();
    for name in ["recovery.signal", "postgresql.auto.conf"] {
        let link = data.join(format!("{name}.shadowcopy-restore"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let owner = std::fs::metadata(&data).unwrap();
        std::os::unix::fs::lchown(&link, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    let out = cli.run(&["restore", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's\n");
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o600),
        "the root-only file was given away"
    );
    cluster.start();
    assert_eq!(cluster.psql("SELECT 1"), "1");
}

#[test]
fn a_restore_that_cannot_be_finished_blocks_new_restores_until_it_is() {
    if !require_root("a_restore_that_cannot_be_finished_blocks_new_restores_until_it_is") {
        return;
    }
    let cli = Cli::new();
    let data = cli.path("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/file"), "copied\n").unwrap();
    cli.ok(&["create", "--path", "data", "--provider", "copy", "-q"]);
    std::fs::write(data.join("sub/file"), "changed\n").unwrap();
    let out = cli
        .cmd(&["restore", "1", "--discard-current"])
        .env("SHADOWCOPY_TEST_KILL_AT_SWAP_STEP", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", describe(&out));
    // The directory the swap renames in cannot change (immutable, even for root): the
    // next command cannot finish the restore.
    let chattr = |flag: &str| {
        let out = Command::new("chattr")
            .arg(flag)
            .arg(data.join("sub"))
            .output()
            .unwrap();
        assert!(out.status.success(), "chattr {flag}: {}", describe(&out));
    };
    chattr("+i");
    let next = cli.run(&["verify", "1"]);
    assert!(
        stderr(&next).contains("finishing it failed"),
        "{}",
        describe(&next)
    );
    // A new restore over the same paths would be undone by the old one's later replay.
    let out = cli.run(&["restore", "1", "--discard-current"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("could not be finished"),
        "{}",
        describe(&out)
    );
    // Once it can change again, the next command finishes it: the live data is the copy.
    chattr("-i");
    let next = cli.run(&["verify", "1"]);
    assert!(
        stderr(&next).contains("killed during a restore"),
        "{}",
        describe(&next)
    );
    assert_eq!(
        std::fs::read_to_string(data.join("sub/file")).unwrap(),
        "copied\n"
    );
    assert_no_staging_left(cli.dir.path());
    cli.ok(&["restore", "1", "--discard-current", "-q"]);
}

#[test]
fn root_keeps_no_catalog_in_a_directory_another_user_owns() {
    if !require_root("root_keeps_no_catalog_in_a_directory_another_user_owns") {
        return;
    }
    let s = Stage::new();
    // The user's own directory, with a link planted where the catalog makes a file.
    let victim = s.top.join("secret/shadow");
    let theirs = s.top.join("app/cat");
    as_attacker(&format!(
        "mkdir {0} && chmod 700 {0} && ln -s {1} {0}/space.reserve.tmp && ln -s {1} {0}/catalog.db",
        theirs.display(),
        victim.display()
    ));
    std::fs::write(s.top.join("db"), "x").unwrap();
    let out = s
        .cli
        .cmd(&["create", "--path", "db", "--provider", "copy"])
        .env("SHADOWCOPY_CATALOG", &theirs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("belongs to user"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's secret\n");
    assert_eq!(std::fs::metadata(&victim).unwrap().uid(), 0);
}

#[test]
fn create_never_writes_a_copy_through_a_symlink_planted_as_the_copies_directory() {
    if !require_root("create_never_writes_a_copy_through_a_symlink_planted_as_the_copies_directory")
    {
        return;
    }
    let s = Stage::new();
    let app = s.app();
    let config = s.config_with_copies_beside_the_data();
    as_attacker(&format!(
        "ln -s {} {app}/.copies",
        s.top.join("secret").display()
    ));
    let out = s.cli.run(&["--config", &config, "create", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("refusing to follow the symlink"),
        "{}",
        describe(&out)
    );
    let names: Vec<_> = std::fs::read_dir(s.top.join("secret"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("shadow")],
        "a copy was written into root's directory"
    );
}
