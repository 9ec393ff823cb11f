//! A backup server for tests: a private PostgreSQL cluster for its central catalog, the
//! real `shadowcopy server` process on a free port (restartable, killable), an admin
//! API token, and agents: real `shadowcopy agent` processes, each with its own catalog,
//! config and SQLite data, optionally inside a network namespace of their own.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use shadowcopy_testing::netns::NetNs;
use shadowcopy_testing::postgres::{PgCluster, PgOptions};
use shadowcopy_testing::wait::until;

use crate::support::{describe, kill9};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Central {
    pub dir: tempfile::TempDir,
    pub pg: PgCluster,
    pub port: u16,
    listen_ip: String,
    names: Vec<String>,
    server: Option<Child>,
    pub admin_token: String,
    starts: usize,
    /// More arguments of `shadowcopy server` at each start.
    extra: Vec<String>,
}

impl Central {
    /// PostgreSQL (None: the test skips) and the server on `listen_ip`, with a
    /// certificate for `names`; an admin token made.
    pub fn start(test: &str, listen_ip: &str, names: &[String]) -> Option<Central> {
        Central::start_with(test, listen_ip, names, &[])
    }

    /// [`Central::start`] with more arguments for the server.
    pub fn start_with(
        test: &str,
        listen_ip: &str,
        names: &[String],
        extra: &[&str],
    ) -> Option<Central> {
        let pg = shadowcopy_testing::postgres::postgres_or_skip(test, PgOptions::new())?;
        let mut central = Central {
            dir: tempfile::tempdir().unwrap(),
            pg,
            port: free_port(),
            listen_ip: listen_ip.to_string(),
            names: names.to_vec(),
            server: None,
            admin_token: String::new(),
            starts: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        central.start_server();
        central.admin_token = central
            .admin(&["token", "create", "admin", "--role", "admin", "-q"])
            .trim()
            .to_string();
        Some(central)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `shadowcopy server …` on this server's database and state directory.
    pub fn server_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_shadowcopy"));
        c.arg("server")
            .args(args)
            .arg("--state")
            .arg(self.state_dir())
            .env("SHADOWCOPY_SERVER_DATABASE", self.pg.url())
            .env_remove("SHADOWCOPY_SERVER")
            .env_remove("SHADOWCOPY_SERVER_TOKEN")
            .stdin(Stdio::null());
        c
    }

    /// An administrator's command on the server's machine; its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = self.server_cmd(args).output().unwrap();
        assert!(out.status.success(), "server {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// A one-time enrolment token for `host`.
    pub fn enroll_token(&self, host: &str) -> String {
        self.admin(&["enroll", host, "-q"]).trim().to_string()
    }

    /// The URL agents in a namespace (`via`: the server's address there) or local
    /// callers reach the server by.
    pub fn url(&self, via: &str) -> String {
        format!("https://{via}:{}", self.port)
    }

    pub fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("server-{n}.log"))
    }

    /// Every server log so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect()
    }

    /// Starts the server process and waits until it takes connections.
    pub fn start_server(&mut self) {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).unwrap();
        let listen = format!("{}:{}", self.listen_ip, self.port);
        let mut cmd = self.server_cmd(&["--listen", &listen, "--job-lease", "5s"]);
        for n in &self.names {
            cmd.arg("--name").arg(n);
        }
        cmd.args(&self.extra);
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.server = Some(child);
        let this_start = self.log_path(self.starts);
        until(
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(&this_start)
                    .unwrap_or_default()
                    .contains("server started")
            },
            || format!("the server did not start; log:\n{}", self.log()),
        );
    }

    /// kill -9 of the server.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.server.take() {
            kill9(&mut child);
        }
    }

    /// An operator's command through the server (`--server URL`, the admin token).
    pub fn op_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_shadowcopy"));
        c.arg("--server")
            .arg(self.url("127.0.0.1"))
            .args(args)
            .env("SHADOWCOPY_SERVER_TOKEN", &self.admin_token)
            .env_remove("SHADOWCOPY_CATALOG")
            .env_remove("SHADOWCOPY_CONFIG")
            .stdin(Stdio::null());
        c
    }

    pub fn op(&self, args: &[&str]) -> Output {
        self.op_cmd(args).output().unwrap()
    }

    pub fn op_json(&self, args: &[&str]) -> Value {
        let out = self.op(args);
        assert!(
            out.status.success(),
            "{args:?}: {}\nserver log:\n{}",
            describe(&out),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A server job as the server has it.
    pub fn job(&self, id: i64) -> Value {
        let jobs = self.op_json(&["jobs", "--all-hosts", "--limit", "1000", "--json"]);
        jobs.as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no job {id} on the server: {jobs:#}"))
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One simulated host: a catalog, a config, SQLite data, and its agent process.
pub struct Host {
    pub name: String,
    pub dir: PathBuf,
    pub db: PathBuf,
    pub ns: Option<NetNs>,
    agent: Option<Child>,
    starts: usize,
}

impl Host {
    /// A host named `name` keeping its files in `dir` (its data on a file system the
    /// caller made), with `config` as its agent's config (`{DB}` stands for the
    /// database's path, `{DIR}` for `dir`).
    pub fn new(name: &str, dir: &Path, ns: Option<NetNs>, config: &str) -> Host {
        std::fs::create_dir_all(dir).unwrap();
        let db = dir.join("app.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE ledger (seq INTEGER PRIMARY KEY, amount INTEGER NOT NULL, check_sum INTEGER NOT NULL);",
        )
        .unwrap();
        drop(conn);
        let config = config
            .replace("{DB}", &db.display().to_string())
            .replace("{DIR}", &dir.display().to_string());
        std::fs::write(dir.join("config.toml"), config).unwrap();
        Host {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            db,
            ns,
            agent: None,
            starts: 0,
        }
    }

    /// Appends ledger rows `from..=to` (each with its checksum), one transaction each.
    pub fn write(&self, from: i64, to: i64) {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        for seq in from..=to {
            conn.execute(
                "INSERT INTO ledger (seq, amount, check_sum) VALUES (?1, ?2, ?3)",
                [seq, seq * 7, (seq * 7 * 31 + seq) % 1_000_003],
            )
            .unwrap();
        }
    }

    /// The ledger: the rows are 1..=N without a gap, each checksum right; returns N.
    pub fn ledger(&self) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{}: integrity_check", self.name);
        let (n, max, bad): (i64, Option<i64>, i64) = conn
            .query_row(
                "SELECT COUNT(*), MAX(seq), COUNT(*) FILTER (WHERE check_sum != (amount * 31 + seq) % 1000003 OR amount != seq * 7) FROM ledger",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(bad, 0, "{}: rows with a wrong checksum", self.name);
        assert_eq!(max.unwrap_or(0), n, "{}: the ledger has a gap", self.name);
        n
    }

    pub fn catalog(&self) -> PathBuf {
        self.dir.join("catalog")
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.join(format!("agent-{n}.log"))
    }

    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect()
    }

    /// Starts the agent (inside the host's namespace, if it has one), enrolling with
    /// `token` when given.
    pub fn start_agent(&mut self, url: &str, token: Option<&str>) {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).unwrap();
        let bin = env!("CARGO_BIN_EXE_shadowcopy");
        let mut cmd = match &self.ns {
            Some(ns) => ns.command(bin),
            None => Command::new(bin),
        };
        cmd.arg("--catalog")
            .arg(self.catalog())
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .args(["--server", url, "agent", "--socket"])
            .arg(self.dir.join("agent.sock"))
            .args(["--host-name", &self.name])
            .env_remove("SHADOWCOPY_SERVER_TOKEN")
            .env("SHADOWCOPY_LOG", "info,shadowcopy_agent::link=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(token) = token {
            cmd.env("SHADOWCOPY_ENROLL_TOKEN", token);
        }
        self.agent = Some(cmd.spawn().unwrap());
        let this_start = self.log_path(self.starts);
        until(
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(&this_start)
                    .unwrap_or_default()
                    .contains("agent started")
            },
            || {
                format!(
                    "the agent of {} did not start; log:\n{}",
                    self.name,
                    self.log()
                )
            },
        );
    }

    /// SIGTERM to the agent; waits for it.
    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
                rustix::process::Signal::TERM,
            )
            .unwrap();
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "agent of {}: {status:?}\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// The copies the agent's own catalog holds: (id, state, verify state).
    pub fn local_copies(&self) -> Vec<(i64, String, String)> {
        let out = Command::new(env!("CARGO_BIN_EXE_shadowcopy"))
            .arg("--catalog")
            .arg(self.catalog())
            .args(["list", "--json"])
            .env_remove("SHADOWCOPY_SERVER")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        summaries(&serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The agent's own jobs (its `jobs --json`).
    pub fn local_jobs(&self) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_shadowcopy"))
            .arg("--catalog")
            .arg(self.catalog())
            .args(["jobs", "--json", "--limit", "1000"])
            .env_remove("SHADOWCOPY_SERVER")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (id, state, verify state) of each copy in a `list --json`.
pub fn summaries(list: &Value) -> Vec<(i64, String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_i64().unwrap(),
                c["state"].as_str().unwrap().to_string(),
                c["verify_state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
