//! The agent as a user runs it: the real `shadowcopy agent` process with a config of
//! several sets on a schedule of every two seconds (cron's optional seconds field). It
//! copies, prunes by each set's policy and records its jobs; SIGTERM stops it cleanly;
//! kill -9 in the middle of a copy leaves nothing locked, the job interrupted, and the
//! next agent carries on; a bad schedule refuses to start; SIGHUP with a bad config
//! keeps the old one.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use shadowcopy_testing::wait::until;

use crate::support::{assert_writable, describe, kill9, stderr, Cli};

/// A job as the catalog holds it: (id, kind, set, state, result).
pub type Job = (i64, String, String, String, Option<String>);

pub fn jobs(cli: &Cli) -> Vec<Job> {
    let db = cli.catalog.join("catalog.db");
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(Duration::from_secs(1));
    let Ok(mut stmt) =
        conn.prepare("SELECT id, kind, set_name, state, result FROM jobs ORDER BY id")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .map(|rows| rows.filter_map(Result::ok).collect())
    .unwrap_or_default()
}

pub fn done(jobs: &[Job], kind: &str, set: &str) -> usize {
    jobs.iter()
        .filter(|j| j.1 == kind && j.2 == set && j.3 == "done")
        .count()
}

pub fn write_config(cli: &Cli, text: &str) -> String {
    let path = cli.path("agent.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

pub fn set(name: &str, db: &Path, extra: &str) -> String {
    format!(
        "[sets.{name}]\nprovider = \"copy\"\nschedule = \"*/2 * * * * *\"\n{extra}\n[[sets.{name}.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n",
        db.display()
    )
}

/// Starts the agent with its log in `log` (a file: a pipe nobody reads would fill).
pub fn start(cli: &Cli, config: &str, log: &str) -> Child {
    let log = File::create(cli.path(log)).unwrap();
    cli.cmd(&["--config", config, "agent"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn signal(child: &Child, signal: rustix::process::Signal) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        signal,
    )
    .unwrap();
}

/// SIGTERM, then the exit status within `limit`.
pub fn stop(cli: &Cli, mut child: Child, log: &str) {
    signal(&child, rustix::process::Signal::TERM);
    until(
        Duration::from_secs(60),
        || child.try_wait().unwrap().is_some(),
        || "the agent did not stop within a minute of SIGTERM".into(),
    );
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(cli.path(log)).unwrap();
    assert!(status.success(), "agent exit {status:?}; log:\n{text}");
    assert!(text.contains("agent stopped"), "{text}");
}

#[test]
fn the_agent_copies_prunes_and_records_its_jobs() {
    let cli = Cli::new();
    let a = cli.bank("a.db", 0);
    let b = cli.bank("b.db", 0);
    let config = write_config(
        &cli,
        &(set("a", &a, "[sets.a.retention]\nkeep_last = 2") + &set("b", &b, "")),
    );
    let agent = start(&cli, &config, "agent.log");
    until(
        Duration::from_secs(90),
        || {
            let j = jobs(&cli);
            done(&j, "create", "a") >= 3
                && done(&j, "create", "b") >= 3
                && done(&j, "prune", "a") >= 3
        },
        || {
            format!(
                "three copies of each set and three prunes: {:#?}",
                jobs(&cli)
            )
        },
    );
    stop(&cli, agent, "agent.log");

    let all = jobs(&cli);
    for (id, kind, set, state, result) in &all {
        assert!(
            state == "done"
                || (state == "cancelled"
                    && result.as_deref() == Some("not run: the agent stopped before its turn")),
            "job {id} ({kind} of {set}) ended {state}: {result:?}"
        );
        assert!(
            kind != "prune" || set == "a",
            "set b has no policy: {all:#?}"
        );
    }
    let copies = cli.json(&["--config", &config, "list", "--json"]);
    let count = |set: &str| {
        copies
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["set"] == set && c["state"] == "usable")
            .count()
    };
    assert_eq!(count("a"), 2, "keep_last 2 holds: {copies:#}");
    assert!(count("b") >= 3, "{copies:#}");
    let listed = cli.ok(&["--config", &config, "jobs"]);
    assert!(
        listed.contains("create") && listed.contains("prune"),
        "{listed}"
    );
    assert_writable(&a);
    assert_writable(&b);
}

#[test]
fn kill_9_mid_copy_leaves_nothing_locked_and_the_next_agent_carries_on() {
    let cli = Cli::new();
    let big = cli.bank("big.db", 400 << 20);
    let config = write_config(
        &cli,
        &set("big", &big, "freeze_deadline = \"60s\"").replace("*/2 * * * * *", "* * * * * *"),
    );
    let mut agent = start(&cli, &config, "first.log");
    // Caught while it copies (precommit copies the pinned database before the freeze).
    cli.wait_for_phase("precommit", Duration::from_secs(60));
    kill9(&mut agent);
    assert_writable(&big);

    let agent = start(&cli, &config, "second.log");
    until(
        Duration::from_secs(120),
        || done(&jobs(&cli), "create", "big") >= 1,
        || format!("a copy after the restart: {:#?}", jobs(&cli)),
    );
    stop(&cli, agent, "second.log");
    let all = jobs(&cli);
    let first = &all[0];
    assert_eq!(first.3, "interrupted", "{all:#?}");
    assert!(
        first
            .4
            .as_deref()
            .unwrap_or_default()
            .contains("ended while it was running"),
        "{all:#?}"
    );
    let copies = cli.json(&["--config", &config, "list", "--json"]);
    let first_copy = &copies[0];
    assert_eq!(first_copy["state"], "failed", "{copies:#}");
    assert!(
        copies
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["state"] == "usable"),
        "{copies:#}"
    );
    assert_writable(&big);
}

#[test]
fn a_bad_schedule_is_refused_and_a_bad_reload_keeps_the_old_config() {
    let cli = Cli::new();
    let a = cli.bank("a.db", 0);
    let bad = write_config(
        &cli,
        &set("a", &a, "").replace("*/2 * * * * *", "every day"),
    );
    // Refused at once; an agent that started anyway is stopped, not waited for.
    let mut refused = cli.spawn(&["--config", &bad, "agent"]);
    let exited = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        refused.try_wait().unwrap().is_some()
    });
    if !exited {
        kill9(&mut refused);
        panic!("the agent started with a bad schedule");
    }
    let out = refused.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out)
            .contains("agent.toml:3:12: set `a`: schedule \"every day\" is not a cron expression"),
        "{}",
        describe(&out)
    );
    assert!(
        !cli.catalog.join("catalog.db").exists(),
        "a refused start wrote the catalog"
    );

    let good = write_config(&cli, &set("a", &a, ""));
    let agent = start(&cli, &good, "agent.log");
    until(
        Duration::from_secs(60),
        || done(&jobs(&cli), "create", "a") >= 1,
        || format!("a first copy: {:#?}", jobs(&cli)),
    );
    write_config(&cli, "[sets.a]\nschedule = \"never\"\n");
    signal(&agent, rustix::process::Signal::HUP);
    until(
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(cli.path("agent.log"))
                .unwrap()
                .contains("the config was not reloaded, the old one stays")
        },
        || "the refused reload is logged".into(),
    );
    let before = done(&jobs(&cli), "create", "a");
    until(
        Duration::from_secs(60),
        || done(&jobs(&cli), "create", "a") > before,
        || format!("copies go on with the old config: {:#?}", jobs(&cli)),
    );
    stop(&cli, agent, "agent.log");
}
