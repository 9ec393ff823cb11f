//! Bad input gets a clear error naming the problem and the fix, exit code 2, and writes
//! nothing (not even the catalog).

use crate::support::{stderr, Cli};

fn assert_refused(cli: &Cli, args: &[&str], code: i32, needles: &[&str]) {
    let out = cli.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in:\n{err}");
    }
}

#[test]
fn unknown_set_names_the_config_and_writes_nothing() {
    let cli = Cli::new();
    assert_refused(
        &cli,
        &["create", "mail"],
        2,
        &["unknown set `mail`", "--sqlite"],
    );
    assert!(!cli.catalog.exists(), "no catalog was created");
}

#[test]
fn missing_database_file() {
    let cli = Cli::new();
    assert_refused(
        &cli,
        &["create", "--sqlite", "nope.db"],
        2,
        &["nope.db does not exist"],
    );
    assert!(!cli.catalog.exists());
}

#[test]
fn file_that_is_not_a_sqlite_database() {
    let cli = Cli::new();
    std::fs::write(
        cli.path("notes.db"),
        "just some text, not a database\n".repeat(10),
    )
    .unwrap();
    assert_refused(
        &cli,
        &["create", "--sqlite", "notes.db"],
        2,
        &["is not a SQLite database"],
    );
    assert!(!cli.catalog.exists());
}

#[test]
fn config_with_unknown_key_reports_file_line_and_column() {
    let cli = Cli::new();
    let db = cli.bank("mail.db", 0);
    let config = cli.path("c.toml");
    std::fs::write(
        &config,
        format!("[sets.mail]\nprovider = \"copy\"\nfreez_deadline = \"5s\"\n[[sets.mail.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n", db.display()),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    assert_refused(
        &cli,
        &["--config", c, "create", "mail"],
        2,
        &[&format!("{c}:3:1: unknown field `freez_deadline`")],
    );
    assert!(!cli.catalog.exists());
}

#[test]
fn config_set_works_once_fixed() {
    let cli = Cli::new();
    let db = cli.bank("mail.db", 0);
    let config = cli.path("c.toml");
    std::fs::write(
        &config,
        format!("[defaults]\nfreeze_deadline = \"5s\"\n[sets.mail]\nprovider = \"copy\"\n[[sets.mail.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n", db.display()),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let v = cli.json(&["--config", c, "create", "mail", "--json"]);
    assert_eq!(v["set"], "mail");
    assert_eq!(v["freeze_deadline_ms"], 5000);
    assert_eq!(v["verification"]["ok"], true);
    let writers = cli.json(&["--config", c, "writers", "--json"]);
    assert_eq!(writers["configured"][0]["set"], "mail");
    assert_eq!(writers["configured"][0]["state"], "stable");
}

#[test]
fn unknown_provider_and_usage_errors_exit_2() {
    let cli = Cli::new();
    cli.bank("a.db", 0);
    assert_refused(
        &cli,
        &["create", "--sqlite", "a.db", "--provider", "zfs"],
        2,
        &["unknown provider `zfs`", "copy, reflink"],
    );
    assert_refused(&cli, &["create"], 2, &["--sqlite"]);
    assert_refused(
        &cli,
        &["create", "--sqlite", "a.db", "--freeze-deadline", "soon"],
        2,
        &["freeze-deadline"],
    );
    assert!(!cli.catalog.exists());
}

#[test]
fn unknown_copy_id() {
    let cli = Cli::new();
    // In an existing catalog (without one, the error says there is no catalog).
    std::fs::write(cli.path("f"), "x").unwrap();
    cli.ok(&["create", "--path", "f", "--provider", "copy"]);
    assert_refused(
        &cli,
        &["show", "42"],
        2,
        &["copy 42 does not exist", "shadowcopy list"],
    );
    assert_refused(&cli, &["restore", "42"], 2, &["copy 42 does not exist"]);
}

/// With --json a failing command prints one JSON error object on stdout (and the human
/// error on stderr); before, stdout was empty.
fn assert_json_error(cli: &Cli, args: &[&str], code: i64, needle: &str) -> serde_json::Value {
    let out = cli.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code as i32), "{args:?}: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not a JSON document ({e}): {}",
            crate::support::describe(&out)
        )
    });
    assert_eq!(v["error"]["code"], code, "{args:?}: {v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "{args:?}: {needle:?} not in {v}");
    assert!(v["error"]["causes"].is_array(), "{args:?}: {v}");
    assert!(
        err.contains(needle),
        "{args:?}: {needle:?} not on stderr: {err}"
    );
    v
}

#[test]
fn json_errors_for_unknown_copies_and_usage_errors() {
    let cli = Cli::new();
    cli.bank("a.db", 0);
    // A catalog must exist for a copy id to be looked up in it.
    cli.ok(&["create", "--sqlite", "a.db", "--provider", "copy", "-q"]);
    for cmd in ["show", "verify", "restore"] {
        let v = assert_json_error(&cli, &[cmd, "42", "--json"], 2, "copy 42 does not exist");
        assert!(v["error"].get("copy_id").is_none(), "{v}");
    }
    assert_json_error(
        &cli,
        &[
            "create",
            "--sqlite",
            "a.db",
            "--freeze-deadline",
            "soon",
            "--json",
        ],
        2,
        "freeze-deadline",
    );
    assert_json_error(
        &cli,
        &["delete", "--older-than", "whenever", "--json"],
        2,
        "older-than",
    );
    assert_json_error(
        &cli,
        &["create", "--sqlite", "nope.db", "--json"],
        2,
        "nope.db does not exist",
    );
    // Without --json, stdout stays empty; --help is not an error.
    let out = cli.run(&["show", "42"]);
    assert!(out.stdout.is_empty());
    let out = cli.run(&["verify", "--help", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
}

/// A read-only place for the catalog: a read-only tmpfs as root (permissions do not stop
/// root), a mode-555 directory otherwise.
struct ReadOnlyDir {
    path: std::path::PathBuf,
    mounted: bool,
}

impl ReadOnlyDir {
    fn new(path: std::path::PathBuf) -> ReadOnlyDir {
        std::fs::create_dir_all(&path).unwrap();
        if rustix::process::geteuid().is_root() {
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
                .arg(&path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount a read-only tmpfs");
            ReadOnlyDir {
                path,
                mounted: true,
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).unwrap();
            ReadOnlyDir {
                path,
                mounted: false,
            }
        }
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(&self.path)
                .status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn catalog_on_a_read_only_directory() {
    let cli = Cli::new();
    let db = cli.bank("a.db", 0);
    let before = std::fs::read(&db).unwrap();
    let ro = ReadOnlyDir::new(cli.path("ro"));
    let cat = ro.path.join("catalog");
    let out = cli.run(&[
        "create",
        "--sqlite",
        "a.db",
        "--catalog",
        cat.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot create the catalog directory"), "{err}");
    assert!(err.contains("--catalog DIR or SHADOWCOPY_CATALOG"), "{err}");
    assert!(
        err.contains("Read-only file system") || err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
    crate::support::assert_writable(&db);
}

#[test]
fn catalog_location_precedence_flag_then_env_then_config() {
    let cli = Cli::new();
    cli.bank("a.db", 0);
    let from_config = cli.path("cat-config");
    let from_env = cli.path("cat-env");
    let from_flag = cli.path("cat-flag");
    let config = cli.path("c.toml");
    std::fs::write(
        &config,
        format!("catalog = \"{}\"\n", from_config.display()),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let run = |env: Option<&std::path::Path>, flag: Option<&std::path::Path>| {
        let mut cmd = cli.cmd(&[
            "--config",
            c,
            "create",
            "--sqlite",
            "a.db",
            "-q",
            "--no-verify",
        ]);
        cmd.env_remove("SHADOWCOPY_CATALOG");
        if let Some(e) = env {
            cmd.env("SHADOWCOPY_CATALOG", e);
        }
        if let Some(f) = flag {
            cmd.arg("--catalog").arg(f);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    run(None, None);
    assert!(from_config.join("catalog.db").exists());
    run(Some(&from_env), None);
    assert!(from_env.join("catalog.db").exists());
    run(Some(&from_env), Some(&from_flag));
    assert!(from_flag.join("catalog.db").exists());
}
