//! `provider = "exec:NAME"`: the worked example in `examples/exec-provider.py` serves a
//! whole life cycle, and its failures are contained.

use std::path::PathBuf;

use crate::support::{assert_writable, stderr, Cli};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/exec-provider.py")
}

/// A config with the example provider and a SQLite set that uses it.
fn configured(cli: &Cli) -> (String, PathBuf, PathBuf) {
    let db = cli.bank("mail.db", 0);
    let store = cli.path("store");
    let config = cli.path("c.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.dirstore]\ncommand = \"{}\"\n[sets.mail]\nprovider = \"exec:dirstore\"\n[[sets.mail.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n",
            example().display(),
            db.display()
        ),
    )
    .unwrap();
    (config.to_str().unwrap().to_string(), db, store)
}

#[test]
fn the_example_exec_provider_creates_verifies_restores_and_deletes() {
    let cli = Cli::new();
    let (config, db, store) = configured(&cli);
    let run = |args: &[&str]| {
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        let out = cli
            .cmd(&full)
            .env("SHADOWCOPY_EXAMPLE_STORE", &store)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let created: serde_json::Value =
        serde_json::from_str(&run(&["create", "mail", "--json"])).unwrap();
    assert_eq!(created["provider"], "exec:dirstore");
    assert_eq!(created["verification"]["ok"], true, "{created}");
    assert!(created["location"]
        .as_str()
        .unwrap()
        .starts_with(store.to_str().unwrap()));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO transfers (from_id, to_id, amount, at_ms) VALUES (1, 2, 0, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    run(&["restore", "1", "--discard-current"]);
    assert_eq!(
        shadowcopy_testing::bank::transfer_ids(&db).unwrap().len(),
        0
    );
    // Without the config file: the copy records its provider.
    let out = cli
        .cmd(&["delete", "1"])
        .env("SHADOWCOPY_EXAMPLE_STORE", &store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        0,
        "the store is empty again"
    );
}

#[test]
fn a_failing_exec_provider_commit_aborts_and_its_copy_is_deleted() {
    let cli = Cli::new();
    let (config, db, store) = configured(&cli);
    let out = cli
        .cmd(&["--config", &config, "create", "mail"])
        .env("SHADOWCOPY_EXAMPLE_STORE", &store)
        .env("SHADOWCOPY_EXAMPLE_FAIL", "commit")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("commit failed on purpose"),
        "{}",
        stderr(&out)
    );
    assert_writable(&db);
    assert!(std::fs::read_dir(&store).map_or(true, |mut d| d.next().is_none()));
    let out = cli.run(&[
        "--config",
        &config,
        "create",
        "mail",
        "--provider",
        "exec:nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("[providers.nope]"),
        "{}",
        stderr(&out)
    );
}
