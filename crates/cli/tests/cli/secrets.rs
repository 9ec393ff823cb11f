//! Database passwords never reach the catalog, the output or the logs (issue 12, item
//! 4): a role or user that must log in with a password, on a real PostgreSQL cluster and
//! a real MariaDB server, reached with the password in the URL, in a password file, in
//! the environment or in the database's own password file; then every file of the
//! catalog and everything `create`, `list`, `show` and `writers` printed (human and
//! JSON, with debug logging) is searched for the password.

use std::path::Path;
use std::process::{Command, Output};

use shadowcopy_testing::mariadb::{mariadb_bin, mariadb_or_skip, MariaDbOptions};
use shadowcopy_testing::postgres::{postgres_or_skip, PgOptions};

use crate::support::{describe, Cli};

/// Everything the commands printed, kept to be searched.
#[derive(Default)]
struct Seen(Vec<(String, Vec<u8>)>);

impl Seen {
    fn record(&mut self, what: &str, out: &Output) {
        let mut all = out.stdout.clone();
        all.extend_from_slice(&out.stderr);
        self.0.push((what.to_string(), all));
    }

    /// Runs `cmd`, records its output, and expects `ok`.
    fn run(&mut self, what: &str, cmd: &mut Command, ok: bool) -> Output {
        let out = cmd.output().unwrap();
        self.record(what, &out);
        assert_eq!(out.status.success(), ok, "{what}: {}", describe(&out));
        out
    }

    fn assert_never(&self, secret: &str) {
        for (what, bytes) in &self.0 {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{what} printed the password:\n{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// No file of the catalog (the database, its WAL, the queue files) holds `secret`.
fn assert_catalog_never_holds(catalog: &Path, secret: &str) {
    let mut files = 0;
    for entry in std::fs::read_dir(catalog).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{} holds the password",
            path.display()
        );
    }
    assert!(files > 0, "no catalog files in {}", catalog.display());
}

/// `list`, `show` of every copy, `writers` of `config`: human and JSON.
fn read_everything(cli: &Cli, seen: &mut Seen, config: &Path) {
    let listed = cli.json(&["list", "--json"]);
    for args in [vec!["list"], vec!["list", "--json"], vec!["list", "-vv"]] {
        seen.run(&format!("{args:?}"), &mut cli.cmd(&args), true);
    }
    for copy in listed.as_array().unwrap() {
        let id = copy["id"].to_string();
        for args in [vec!["show", &id], vec!["show", &id, "--json"]] {
            seen.run(&format!("{args:?}"), &mut cli.cmd(&args), true);
        }
    }
    let c = config.to_str().unwrap();
    for args in [
        vec!["--config", c, "writers"],
        vec!["--config", c, "writers", "--json"],
        vec!["--config", c, "-vv", "writers"],
    ] {
        seen.run(&format!("{args:?}"), &mut cli.cmd(&args), true);
    }
}

#[test]
fn postgres_passwords_never_reach_the_catalog_or_output() {
    const PW: &str = "S3cretPg";
    let cli = Cli::new();
    let Some(cluster) = postgres_or_skip("postgres_passwords", PgOptions::new()) else {
        return;
    };
    cluster.psql(&format!("CREATE ROLE adv SUPERUSER LOGIN PASSWORD '{PW}'"));
    // `adv` must give its password over the socket (the rest stays trusted).
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all adv scram-sha-256\n{rules}")).unwrap();
    cluster.psql("SELECT pg_reload_conf()");
    let socket = cluster.socket_dir().display().to_string();
    let port = cluster.port();
    let url =
        |userinfo: &str| format!("postgresql://{userinfo}@/postgres?host={socket}&port={port}");
    let mut seen = Seen::default();
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "--provider", "copy", "--no-verify", "--json"];
        args.extend_from_slice(extra);
        cli.cmd(&args)
    };

    // Refused logins say why, and never echo the password given.
    let wrong = url("adv:Wr0ngPw1");
    let out = seen.run(
        "wrong password",
        &mut create(&["--postgres", &wrong]),
        false,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        describe(&out).contains("password authentication failed"),
        "{}",
        describe(&out)
    );
    seen.assert_never("Wr0ngPw1");
    let out = seen.run(
        "no password",
        &mut create(&["--postgres", &url("adv")]),
        false,
    );
    assert!(describe(&out).contains("password"), "{}", describe(&out));
    assert!(!cli.catalog.exists(), "a refused login wrote the catalog");

    // The password in the URL (with debug logging), in both of libpq's forms.
    let with_pw = url(&format!("adv:{PW}"));
    seen.run(
        "URL password",
        &mut create(&["--postgres", &with_pw, "-vv"]),
        true,
    );
    let key_values = format!("host={socket} port={port} user=adv dbname=postgres password={PW}");
    seen.run(
        "key=value password",
        &mut create(&["--postgres", &key_values, "--name", "kv"]),
        true,
    );
    // A password file, PGPASSWORD, PGPASSFILE: the URL carries no password.
    let pw_file = cli.path("pg-password");
    std::fs::write(&pw_file, format!("{PW}\n")).unwrap();
    seen.run(
        "--pg-password-file",
        &mut create(&[
            "--postgres",
            &url("adv"),
            "--pg-password-file",
            pw_file.to_str().unwrap(),
        ]),
        true,
    );
    seen.run(
        "PGPASSWORD",
        create(&["--postgres", &url("adv")]).env("PGPASSWORD", PW),
        true,
    );
    let pgpass = cli.path("pgpass");
    std::fs::write(&pgpass, format!("{socket}:{port}:*:adv:{PW}\n")).unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    seen.run(
        "PGPASSFILE",
        create(&["--postgres", &url("adv")]).env("PGPASSFILE", &pgpass),
        true,
    );
    // A set of the config file whose URL holds the password.
    let config = cli.path("c.toml");
    std::fs::write(
        &config,
        format!(
            "[sets.pg]\nprovider = \"copy\"\nverify = false\n[[sets.pg.writers]]\nkind = \"postgres\"\nurl = \"{with_pw}\"\n\
             [sets.pgfile]\nprovider = \"copy\"\nverify = false\n[[sets.pgfile.writers]]\nkind = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n",
            url("adv"),
            pw_file.display()
        ),
    )
    .unwrap();
    for set in ["pg", "pgfile"] {
        seen.run(
            &format!("create {set}"),
            &mut cli.cmd(&["--config", config.to_str().unwrap(), "create", set]),
            true,
        );
    }
    let listed = cli.json(&["list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 7, "{listed}");

    read_everything(&cli, &mut seen, &config);
    let writers = cli.json(&["--config", config.to_str().unwrap(), "writers", "--json"]);
    for w in writers["configured"].as_array().unwrap() {
        assert_eq!(w["state"], "stable", "{writers}");
    }
    seen.assert_never(PW);
    assert_catalog_never_holds(&cli.catalog, PW);
}

#[test]
fn mariadb_passwords_never_reach_the_catalog_or_output() {
    const PW: &str = "S3cretPw";
    let cli = Cli::new();
    let Some(db) = mariadb_or_skip("mariadb_passwords", MariaDbOptions::new()) else {
        return;
    };
    db.sql(&format!(
        "CREATE USER adv@localhost IDENTIFIED BY '{PW}'; GRANT ALL PRIVILEGES ON *.* TO adv@localhost"
    ));
    let socket = db.socket().display().to_string();
    let url = |userinfo: &str| format!("mysql://{userinfo}@localhost/?socket={socket}");
    let mut seen = Seen::default();
    let home = tempfile::tempdir().unwrap();
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "--provider", "copy", "--no-verify", "--json"];
        args.extend_from_slice(extra);
        let mut c = cli.cmd(&args);
        c.env("HOME", home.path()).env_remove("MYSQL_PWD");
        c
    };

    let out = seen.run(
        "wrong password",
        &mut create(&["--mariadb", &url("adv:Wr0ngPw1")]),
        false,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        describe(&out).contains("Access denied"),
        "{}",
        describe(&out)
    );
    seen.assert_never("Wr0ngPw1");
    let out = seen.run(
        "no password",
        &mut create(&["--mariadb", &url("adv")]),
        false,
    );
    assert!(
        describe(&out).contains("Access denied"),
        "{}",
        describe(&out)
    );
    assert!(!cli.catalog.exists(), "a refused login wrote the catalog");

    // The password in the URL, with a verified copy (the binlog purge after it logs in
    // again) and debug logging.
    let with_pw = url(&format!("adv:{PW}"));
    let mut args = vec!["create", "--provider", "copy", "--json", "-vv", "--mariadb"];
    args.push(&with_pw);
    let mut verified = cli.cmd(&args);
    verified.env("HOME", home.path()).env_remove("MYSQL_PWD");
    let out = seen.run("URL password", &mut verified, true);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["verification"]["ok"], true, "{created}");
    seen.run(
        "query password",
        &mut create(&["--mariadb", &format!("{}&password={PW}", url("adv"))]),
        true,
    );
    // A password file, MYSQL_PWD, ~/.my.cnf: the URL carries no password.
    let pw_file = cli.path("mariadb-password");
    std::fs::write(&pw_file, format!("{PW}\n")).unwrap();
    seen.run(
        "--mariadb-password-file",
        &mut create(&[
            "--mariadb",
            &url("adv"),
            "--mariadb-password-file",
            pw_file.to_str().unwrap(),
        ]),
        true,
    );
    seen.run(
        "MYSQL_PWD",
        create(&["--mariadb", &url("adv")]).env("MYSQL_PWD", PW),
        true,
    );
    std::fs::write(
        home.path().join(".my.cnf"),
        format!("[client]\npassword = \"{PW}\"\n"),
    )
    .unwrap();
    seen.run("~/.my.cnf", &mut create(&["--mariadb", &url("adv")]), true);
    std::fs::remove_file(home.path().join(".my.cnf")).unwrap();
    let config = cli.path("c.toml");
    std::fs::write(
        &config,
        format!("[sets.db]\nprovider = \"copy\"\nverify = false\n[[sets.db.writers]]\nkind = \"mariadb\"\nurl = \"{with_pw}\"\n"),
    )
    .unwrap();
    seen.run(
        "create SET",
        cli.cmd(&["--config", config.to_str().unwrap(), "create", "db"])
            .env("HOME", home.path()),
        true,
    );
    // A login that fails mid-set, after the copy is recorded: a hook run before the
    // server's writer prepares changes the password, so the backup connection is
    // refused. The failure is recorded (and printed) without the password.
    let hook = cli.path("change-password.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n[ \"$1\" = prepare ] || exit 0\nexec {} --no-defaults -S {socket} -u root -e \"ALTER USER adv@localhost IDENTIFIED BY 'Chang3dPw'\"\n",
            mariadb_bin("mariadb").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let failing = cli.path("failing.toml");
    std::fs::write(
        &failing,
        format!("[sets.db]\nprovider = \"copy\"\nverify = false\n[[sets.db.writers]]\nkind = \"exec\"\nscript = \"{}\"\n[[sets.db.writers]]\nkind = \"mariadb\"\nurl = \"{with_pw}\"\n", hook.display()),
    )
    .unwrap();
    let out = seen.run(
        "create SET whose login fails mid-set",
        cli.cmd(&["--config", failing.to_str().unwrap(), "create", "db"])
            .env("HOME", home.path()),
        false,
    );
    assert!(
        describe(&out).contains("Access denied"),
        "{}",
        describe(&out)
    );
    let listed = cli.json(&["list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 7, "{listed}");
    let failed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["state"] == "failed")
        .unwrap_or_else(|| panic!("no failed copy: {listed}"));
    let shown = cli.ok(&["show", &failed["id"].to_string()]);
    assert!(shown.contains("Access denied"), "{shown}");
    db.sql(&format!("ALTER USER adv@localhost IDENTIFIED BY '{PW}'"));

    read_everything(&cli, &mut seen, &config);
    seen.assert_never(PW);
    assert_catalog_never_holds(&cli.catalog, PW);
}
