//! Input a careless or hostile user gives (issue 12): ages and deadlines that overflow,
//! paths spelled with `..` or through a symlink, paths that are not UTF-8, devices,
//! set names with line breaks. Each is refused with exit 2 and nothing written, or
//! resolved to what the user meant before anything is written.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::support::{describe, stderr, Cli};

fn copies(cli: &Cli) -> usize {
    cli.json(&["list", "--json"]).as_array().unwrap().len()
}

#[test]
fn delete_older_than_an_age_that_overflows_deletes_nothing() {
    let cli = Cli::new();
    cli.bank("bank.db", 0);
    for _ in 0..2 {
        cli.ok(&["create", "--sqlite", "bank.db", "--provider", "copy", "-q"]);
    }
    for age in ["300000000y", "18446744073709551615s"] {
        for extra in [&[][..], &["--dry-run"][..], &["--json"][..]] {
            let mut args = vec!["delete", "--older-than", age];
            args.extend_from_slice(extra);
            let out = cli.run(&args);
            assert_eq!(out.status.code(), Some(2), "{age}: {}", describe(&out));
            assert!(
                stderr(&out).contains("out of range") && stderr(&out).contains("1000000y"),
                "{}",
                describe(&out)
            );
            assert_eq!(copies(&cli), 2, "{age} {extra:?} deleted copies");
        }
    }
    // A long age that fits selects nothing; a short one still works.
    cli.ok(&["delete", "--older-than", "100000y"]);
    assert_eq!(copies(&cli), 2);
    std::thread::sleep(std::time::Duration::from_millis(20));
    cli.ok(&["delete", "--older-than", "10ms"]);
    assert_eq!(copies(&cli), 0);
}

#[test]
fn freeze_deadline_outside_1ms_to_1h_is_refused() {
    let cli = Cli::new();
    cli.bank("bank.db", 0);
    for d in ["150000000y", "1ns", "999us", "61m", "0s"] {
        let out = cli.run(&["create", "--sqlite", "bank.db", "--freeze-deadline", d]);
        assert_eq!(out.status.code(), Some(2), "{d}: {}", describe(&out));
        assert!(
            stderr(&out).contains("give between 1ms and 1h"),
            "{d}: {}",
            describe(&out)
        );
        assert!(!cli.catalog.exists(), "{d}: the catalog was created");
    }
    // The same bounds for the config file.
    let config = cli.path("c.toml");
    let db = cli.path("bank.db");
    std::fs::write(
        &config,
        format!(
            "[defaults]\nfreeze_deadline = \"2h\"\n[sets.bank]\n[[sets.bank.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let out = cli.run(&["--config", config.to_str().unwrap(), "create", "bank"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("2h is out of range"),
        "{}",
        describe(&out)
    );
    assert!(!cli.catalog.exists());
    // A hook's timeout is bounded too (1ms to 24h).
    let hook = cli.path("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        &config,
        format!(
            "[sets.bank]\n[[sets.bank.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n[[sets.bank.writers]]\nkind = \"exec\"\nscript = \"{}\"\ntimeout = \"18446744073709551615s\"\n",
            db.display(),
            hook.display()
        ),
    )
    .unwrap();
    let out = cli.run(&["--config", config.to_str().unwrap(), "create", "bank"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("give between 1ms and 24h"),
        "{}",
        describe(&out)
    );
    assert!(!cli.catalog.exists());
    // In range, a deadline is recorded as given (rounded up to whole milliseconds).
    let created = cli.json(&[
        "create",
        "--sqlite",
        "bank.db",
        "--freeze-deadline",
        "2500500us",
        "--json",
    ]);
    assert_eq!(created["freeze_deadline_ms"], 2501, "{created}");
}

#[test]
fn paths_that_are_devices_fifos_or_sockets_are_refused() {
    let cli = Cli::new();
    let fifo = cli.path("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let socket = cli.path("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for (args, kind) in [
        (vec!["create", "--path", "/dev/null"], "a character device"),
        (vec!["create", "--path", "fifo"], "a FIFO"),
        (vec!["create", "--path", "sock"], "a socket"),
        (
            vec!["create", "--sqlite", "/dev/null"],
            "a character device",
        ),
        (vec!["create", "--sqlite", "fifo"], "a FIFO"),
    ] {
        let out = cli.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(stderr(&out).contains(kind), "{args:?}: {}", describe(&out));
        assert!(!cli.catalog.exists(), "{args:?}: the catalog was created");
    }
}

#[test]
fn set_names_with_line_breaks_or_control_characters_are_refused() {
    let cli = Cli::new();
    cli.bank("bank.db", 0);
    for name in ["two\nlines", "tab\there", "bell\u{7}", "esc\u{1b}[31m", ""] {
        let out = cli.run(&["create", "--sqlite", "bank.db", "--name", name]);
        assert_eq!(out.status.code(), Some(2), "{name:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains("set name"),
            "{name:?}: {}",
            describe(&out)
        );
    }
    // A zero-config set is named after its file: a file name with a line break too.
    let odd = cli.path("odd\nname.db");
    std::fs::copy(cli.path("bank.db"), &odd).unwrap();
    let out = cli.cmd(&["create", "--sqlite"]).arg(&odd).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // And a set of the config file.
    let config = cli.path("c.toml");
    std::fs::write(
        &config,
        "[sets.\"a\\nb\"]\npaths = [\"/tmp\"]\n[sets.ok]\npaths = [\"/tmp\"]\n",
    )
    .unwrap();
    let out = cli.run(&["--config", config.to_str().unwrap(), "create", "ok"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("line break") && stderr(&out).contains("c.toml"),
        "{}",
        describe(&out)
    );
    assert!(!cli.catalog.exists());
}

#[test]
fn relative_paths_with_dot_dot_are_normalised_before_anything_is_written() {
    let cli = Cli::new();
    let data = cli.path("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("a.txt"), "a").unwrap();
    std::fs::create_dir(cli.path("work")).unwrap();
    let run_in = |dir: &Path, args: &[&str]| cli.cmd(args).current_dir(dir).output().unwrap();

    let out = run_in(
        &cli.path("work"),
        &[
            "create",
            "--path",
            "../data/sub/..",
            "--provider",
            "copy",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["set"], "data");
    let show = cli.json(&["show", &created["id"].to_string(), "--json"]);
    let real = std::fs::canonicalize(&data).unwrap();
    assert_eq!(
        show["components"][0]["path"],
        real.to_str().unwrap(),
        "{show}"
    );

    // The same directory as `.`: the same set, no "already holds copies of" refusal.
    let out = run_in(
        &data,
        &["create", "--path", ".", "--provider", "copy", "--json"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["set"], "data");
    let out = run_in(
        &data.join("sub"),
        &["create", "--path", "./../", "--provider", "copy", "-q"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(copies(&cli), 3);

    // `link/..` is the parent of the link's target, as the kernel resolves it.
    let elsewhere = cli.path("elsewhere/deep");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(cli.path("elsewhere/b.txt"), "b").unwrap();
    std::os::unix::fs::symlink(&elsewhere, data.join("link")).unwrap();
    let out = run_in(
        &data,
        &[
            "create",
            "--path",
            "link/..",
            "--name",
            "via-link",
            "--provider",
            "copy",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let show = cli.json(&["show", &created["id"].to_string(), "--json"]);
    let parent = std::fs::canonicalize(cli.path("elsewhere")).unwrap();
    assert_eq!(show["components"][0]["path"], parent.to_str().unwrap());
}

#[test]
fn a_failed_attempt_does_not_block_the_next_create_of_the_same_name() {
    let cli = Cli::new();
    let other = cli.path("other/data");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("big"), vec![7u8; 64 << 20]).unwrap();
    std::fs::create_dir(cli.path("data")).unwrap();
    std::fs::write(cli.path("data/a.txt"), "a").unwrap();
    // 64 MB cannot be copied within 1 ms: the attempt fails and leaves a failed row.
    let out = cli.run(&[
        "create",
        "--path",
        "other/data",
        "--provider",
        "copy",
        "--freeze-deadline",
        "1ms",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let created = cli.json(&["create", "--path", "data", "--provider", "copy", "--json"]);
    assert_eq!(created["set"], "data");
    // Once the set holds a copy, a different directory of the same name is refused.
    let out = cli.run(&["create", "--path", "other/data", "--provider", "copy"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("--name"), "{}", describe(&out));
}

#[test]
fn a_sqlite_path_through_a_symlink_copies_every_commit_and_restore_keeps_the_symlink() {
    let cli = Cli::new();
    let real = cli.bank("real.db", 0);
    let link = cli.path("link.db");
    std::os::unix::fs::symlink("real.db", &link).unwrap();
    // Committed rows that are only in the WAL (SQLite names it after the real file).
    let conn = rusqlite::Connection::open(&link).unwrap();
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint = 0; CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);",
    )
    .unwrap();
    for i in 0..500 {
        conn.execute(
            "INSERT INTO notes (body) VALUES (?1)",
            [format!("note {i}")],
        )
        .unwrap();
    }
    assert!(cli.path("real.db-wal").exists());
    assert!(!cli.path("link.db-wal").exists());

    let created = cli.json(&[
        "create",
        "--sqlite",
        "link.db",
        "--provider",
        "copy",
        "--json",
    ]);
    assert_eq!(created["set"], "link.db", "named after what the user gave");
    assert_eq!(created["verification"]["ok"], true, "{created}");
    let id = created["id"].to_string();
    let show = cli.json(&["show", &id, "--json"]);
    let real_path = std::fs::canonicalize(&real).unwrap();
    assert_eq!(show["components"][0]["path"], real_path.to_str().unwrap());

    conn.execute("DELETE FROM notes", []).unwrap();
    drop(conn);
    let out = cli.run(&["restore", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "restore replaced the symlink by a regular file"
    );
    assert!(std::fs::symlink_metadata(&real).unwrap().is_file());
    let conn = rusqlite::Connection::open(&link).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 500, "the copy lost committed rows");
}

#[test]
fn non_utf8_sqlite_and_path_arguments_do_not_panic() {
    let cli = Cli::new();
    let dir = cli.dir.path().join(OsStr::from_bytes(b"bad\xffdir"));
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join(OsStr::from_bytes(b"x\xfe.db"));
    shadowcopy_testing::bank::create(&db, 5, true).unwrap();
    for flag in ["--sqlite", "--path"] {
        let target = if flag == "--sqlite" { &db } else { &dir };
        let out = cli
            .cmd(&["create", "--provider", "copy", flag])
            .arg(target)
            .output()
            .unwrap();
        // Made (once the catalog stores such names), or refused with an error: never a
        // panic (exit 101).
        assert_ne!(out.status.code(), Some(101), "{flag}: {}", describe(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{flag}: {}",
            describe(&out)
        );
        if !out.status.success() {
            assert!(
                matches!(out.status.code(), Some(1 | 2)),
                "{flag}: {}",
                describe(&out)
            );
        }
    }
    // The set specs recorded hold the paths' bytes exactly.
    let catalog = rusqlite::Connection::open(cli.catalog.join("catalog.db")).unwrap();
    let specs: Vec<String> = catalog
        .prepare("SELECT spec_json FROM copies ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(specs.len(), 2);
    let bytes_of = |p: &Path| {
        let hex: String = p
            .as_os_str()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        serde_json::json!({ "path": p.to_string_lossy(), "path_hex": hex })
    };
    let sqlite: serde_json::Value = serde_json::from_str(&specs[0]).unwrap();
    assert_eq!(sqlite["writers"][0]["path"], bytes_of(&db), "{sqlite}");
    let path: serde_json::Value = serde_json::from_str(&specs[1]).unwrap();
    assert_eq!(path["paths"][0], bytes_of(&dir), "{path}");
}
