//! The agent's API as operators and their tools use it, against the real `shadowcopy
//! agent` process: several sets (one on an XFS loop file system, copied by reflink),
//! status, sets, copies and jobs; jobs submitted and cancelled; events streamed as they
//! happen; Prometheus metrics with the values the catalog holds; bad calls answered
//! with JSON errors and nothing recorded; a caller without permission on the socket
//! turned away; kill -9 in the middle of a verification and of a restore; a catalog on
//! a full file system.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde_json::{json, Value};
use shadowcopy_agent::client;
use shadowcopy_testing::bank;
use shadowcopy_testing::loopfs::{loopfs_or_skip, require_root, FsKind};
use shadowcopy_testing::wait::until;

use crate::agent::{jobs, start, stop, write_config};
use crate::support::{assert_writable, describe, fill, kill9, Cli};

/// The agent's API at its socket.
struct Api {
    socket: PathBuf,
}

impl Api {
    /// The socket of the agent of `cli`'s catalog (the default: in the catalog).
    fn of(cli: &Cli) -> Api {
        Api {
            socket: cli.catalog.join("agent.sock"),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.raw(method, path, body.map(|b| b.to_string().into_bytes()))
    }

    fn raw(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let answer = client::request(&self.socket, method, path, body, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        let value = answer
            .json()
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.body).into_owned()));
        (answer.status, value)
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body:#}");
        body
    }

    fn text(&self, path: &str) -> String {
        let answer =
            client::request(&self.socket, "GET", path, None, Duration::from_secs(30)).unwrap();
        assert_eq!(answer.status, 200);
        String::from_utf8(answer.body).unwrap()
    }

    /// Submits a job; its id.
    fn submit(&self, job: Value) -> i64 {
        let (status, body) = self.call("POST", "/v1/jobs", Some(job.clone()));
        assert_eq!(status, 202, "POST {job}: {body:#}");
        assert_eq!(body["state"], "queued", "{body:#}");
        body["id"].as_i64().unwrap()
    }

    /// Waits until the agent answers.
    fn wait_up(&self, agent: &mut Child) {
        until(
            Duration::from_secs(60),
            || {
                assert!(
                    agent.try_wait().unwrap().is_none(),
                    "the agent exited before it answered"
                );
                client::request(
                    &self.socket,
                    "GET",
                    "/v1/status",
                    None,
                    Duration::from_secs(5),
                )
                .is_ok_and(|a| a.status == 200)
            },
            || format!("the agent answers on {}", self.socket.display()),
        );
    }

    /// Waits for job `id` to end; the job.
    fn wait_job(&self, id: i64, limit: Duration) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        until(
            limit,
            || {
                *last.borrow_mut() = self.get(&format!("/v1/jobs/{id}"));
                !matches!(last.borrow()["state"].as_str(), Some("queued" | "running"))
            },
            || format!("job {id} ends: {:#}", last.borrow()),
        );
        last.into_inner()
    }

    /// The value of one metric line (`name{labels}`).
    fn metric(&self, series: &str) -> Option<f64> {
        self.text("/metrics").lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.strip_prefix(' '))
                .map(|v| v.trim().parse().unwrap())
        })
    }
}

/// A SQLite set (the bank) with `extra` lines.
fn sqlite_set(name: &str, db: &Path, extra: &str) -> String {
    format!(
        "[sets.{name}]\n{extra}\n[[sets.{name}.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n",
        db.display()
    )
}

/// A hook that takes `seconds` in prepare: a create that runs long enough to queue
/// behind.
fn slow_hook(cli: &Cli, seconds: u32) -> PathBuf {
    let script = cli.path("slow.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n[ \"$1\" = prepare ] && sleep {seconds}\nexit 0\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn balanced(db: &Path) {
    let summary = bank::summarize(db).unwrap();
    assert!(summary.balanced(), "the bank's balances hold: {summary:?}");
}

#[test]
fn the_api_shows_state_takes_jobs_streams_events_and_serves_metrics() {
    let test = "the_api_shows_state_takes_jobs_streams_events_and_serves_metrics";
    let Some(xfs) = loopfs_or_skip(test, FsKind::Xfs, 300 << 20) else {
        return;
    };
    let cli = Cli::new();
    let a = cli.bank("a.db", 0);
    let b = xfs.path().join("b.db");
    bank::create(&b, 20, true).unwrap();
    let c = cli.bank("c.db", 0);
    let hook = slow_hook(&cli, 3);
    let config = write_config(
        &cli,
        &(sqlite_set(
            "a",
            &a,
            "provider = \"copy\"\nschedule = \"*/2 * * * * *\"\n[sets.a.retention]\nkeep_last = 2",
        ) + &sqlite_set("b", &b, "provider = \"reflink\"")
            + &sqlite_set("c", &c, "provider = \"copy\"")
            + &format!(
                "[[sets.c.writers]]\nkind = \"exec\"\nscript = \"{}\"\n",
                hook.display()
            )),
    );
    let api = Api::of(&cli);
    let mut agent = start(&cli, &config, "agent.log");
    api.wait_up(&mut agent);

    // Events, until a create job queued after the stream began has finished (one may
    // have been queued before it).
    let events = {
        let socket = api.socket.clone();
        std::thread::spawn(move || {
            let mut queued = Vec::new();
            client::read_events(
                &socket,
                "/v1/events",
                Duration::from_secs(60),
                |name, data| {
                    let job: Value = serde_json::from_str(data).unwrap_or_default();
                    let (id, kind) = (&job["job"]["id"], &job["job"]["kind"]);
                    match name {
                        "job-queued" => queued.push(id.clone()),
                        "job-finished" => return kind == "create" && queued.contains(id),
                        _ => {}
                    }
                    false
                },
            )
            .unwrap()
        })
    };

    let status = api.get("/v1/status");
    assert_eq!(status["pid"], agent.id(), "{status:#}");
    assert_eq!(status["stopping"], false);
    let schedules = status["schedules"].as_array().unwrap();
    assert_eq!(schedules.len(), 1, "{status:#}");
    assert_eq!(schedules[0]["set"], "a");
    assert!(schedules[0]["next_ms"].as_i64().unwrap() > 0);

    let sets = api.get("/v1/sets");
    let names: Vec<&str> = sets
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{sets:#}");
    assert_eq!(sets[0]["retention"], true);
    assert_eq!(sets[1]["schedule"], Value::Null);

    // A copy of b on request, by reflink on its XFS.
    let job = api.submit(json!({"kind": "create", "set": "b"}));
    let done = api.wait_job(job, Duration::from_secs(120));
    assert_eq!(done["state"], "done", "{done:#}");
    assert_eq!(done["trigger"], "api");
    let copy = done["copy_id"].as_i64().unwrap();
    let listed = api.get("/v1/copies?set=b");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    assert_eq!(listed[0]["id"], copy);
    let detail = api.get(&format!("/v1/copies/{copy}"));
    assert_eq!(detail["provider"], "reflink", "{detail:#}");
    assert_eq!(detail["state"], "usable");
    assert!(!detail["manifest"].as_array().unwrap().is_empty());

    // A job queued behind a slow one can be cancelled; a running or ended one cannot.
    let slow = api.submit(json!({"kind": "create", "set": "c"}));
    let behind = api.submit(json!({"kind": "verify", "copy": copy}));
    let (status, cancelled) = api.call("DELETE", &format!("/v1/jobs/{behind}"), None);
    assert_eq!(status, 200, "{cancelled:#}");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled:#}");
    let (status, again) = api.call("DELETE", &format!("/v1/jobs/{behind}"), None);
    assert_eq!(status, 400, "{again:#}");
    assert_eq!(again["error"]["code"], 2);
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is cancelled; only a queued job can be cancelled"),
        "{again:#}"
    );
    assert_eq!(api.wait_job(slow, Duration::from_secs(60))["state"], "done");
    assert_eq!(api.get(&format!("/v1/jobs/{behind}"))["state"], "cancelled");

    // The scheduled copies of a, pruned to its policy.
    until(
        Duration::from_secs(90),
        || {
            let j = jobs(&cli);
            crate::agent::done(&j, "create", "a") >= 3 && crate::agent::done(&j, "prune", "a") >= 3
        },
        || format!("three copies of a, each pruned: {:#?}", jobs(&cli)),
    );

    let (seen, finished) = events.join().unwrap();
    assert!(
        finished,
        "a create finished within the stream's minute: {seen:#?}"
    );
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "job-queued",
        "job-started",
        "copy-started",
        "phase",
        "job-finished",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let freeze = seen
        .iter()
        .find(|(n, d)| n == "phase" && d.contains("\"phase\":\"freeze\""))
        .expect("the freeze phase is streamed");
    let freeze: Value = serde_json::from_str(&freeze.1).unwrap();
    assert_eq!(freeze["ok"], true, "{freeze:#}");

    // Metrics: what the catalog holds, and what the agent ran.
    assert_eq!(
        api.metric("shadowcopy_copies{set=\"a\",state=\"usable\"}"),
        Some(2.0),
        "{}",
        api.text("/metrics")
    );
    assert_eq!(
        api.metric("shadowcopy_copies{set=\"b\",state=\"usable\"}"),
        Some(1.0)
    );
    assert_eq!(
        api.metric("shadowcopy_last_job_success{set=\"a\",kind=\"create\"}"),
        Some(1.0)
    );
    assert_eq!(
        api.metric("shadowcopy_last_job_success{set=\"b\",kind=\"create\"}"),
        Some(1.0)
    );
    assert_eq!(
        api.metric("shadowcopy_last_job_success{set=\"b\",kind=\"verify\"}"),
        None,
        "a cancelled job is no result"
    );
    assert!(
        api.metric("shadowcopy_freeze_window_seconds_count{set=\"a\"}")
            .unwrap()
            >= 3.0
    );
    let age = api
        .metric("shadowcopy_newest_usable_copy_age_seconds{set=\"b\"}")
        .unwrap();
    assert!((0.0..600.0).contains(&age), "{age}");
    let bytes = api
        .metric("shadowcopy_newest_copy_bytes{set=\"b\"}")
        .unwrap();
    assert!(bytes >= 4096.0, "{bytes}");
    assert!(api.metric("shadowcopy_queue_depth").is_some());

    // Sets count their copies; the listing comes in pages, oldest first.
    let sets = api.get("/v1/sets");
    assert_eq!(sets[1]["name"], "b");
    assert_eq!(sets[1]["copies"], 1, "{sets:#}");
    assert_eq!(sets[1]["newest_usable"], copy, "{sets:#}");
    let (mut paged, mut after) = (Vec::new(), 0);
    loop {
        let page = api.get(&format!("/v1/copies?after={after}&limit=1"));
        let ids: Vec<i64> = page
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_i64().unwrap())
            .collect();
        let Some(&last) = ids.last() else { break };
        assert_eq!(ids.len(), 1, "{page:#}");
        assert!(last > after, "{page:#}");
        after = last;
        paged.extend(ids);
    }
    assert!(paged.contains(&copy), "{paged:?}");
    assert!(paged.len() >= 4, "a's copies, b's and c's: {paged:?}");

    // The CLI asks the same agent.
    let out = cli.json(&["--config", &config, "agent", "status", "--json"]);
    assert_eq!(out["pid"], agent.id(), "{out:#}");
    let text = cli.ok(&["--config", &config, "agent", "status"]);
    assert!(
        text.contains(&format!("agent pid {}", agent.id())),
        "{text}"
    );
    assert!(text.contains("*/2 * * * * *"), "{text}");

    stop(&cli, agent, "agent.log");
    assert!(!api.socket.exists(), "the socket is removed at stop");
    let out = cli.run(&["--config", &config, "agent", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent at"),
        "{}",
        describe(&out)
    );
    for db in [&a, &b, &c] {
        balanced(db);
        assert_writable(db);
    }
}

#[test]
fn bad_api_calls_get_json_errors_and_record_nothing() {
    if !require_root("bad_api_calls_get_json_errors_and_record_nothing") {
        return;
    }
    let cli = Cli::new();
    let a = cli.bank("a.db", 0);
    let config = write_config(&cli, &sqlite_set("a", &a, "provider = \"copy\""));
    // A socket outside the private catalog, in a directory others may enter: only the
    // socket's own mode and group decide who gets in.
    let open = cli.path("run");
    std::fs::create_dir(&open).unwrap();
    for dir in [cli.dir.path(), open.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let socket = open.join("agent.sock");
    let api = Api {
        socket: socket.clone(),
    };
    let log = std::fs::File::create(cli.path("agent.log")).unwrap();
    let mut agent = cli
        .cmd(&[
            "--config",
            &config,
            "agent",
            "--socket",
            socket.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    api.wait_up(&mut agent);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket is mode 0660");

    let id = api.submit(json!({"kind": "create", "set": "a"}));
    let copy = api.wait_job(id, Duration::from_secs(60))["copy_id"]
        .as_i64()
        .unwrap();
    let recorded = jobs(&cli).len();

    let refuse = |method: &str, path: &str, body: Option<Vec<u8>>, status: u16, says: &str| {
        let (got, answer) = api.raw(method, path, body);
        assert_eq!(got, status, "{method} {path}: {answer:#}");
        assert_eq!(answer["error"]["code"], 2, "{answer:#}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{method} {path}: {message}");
    };
    let post = |body: &str| Some(body.as_bytes().to_vec());
    refuse(
        "POST",
        "/v1/jobs",
        post("{\"kind\": \"create\", \"set\""),
        400,
        "the request body is not a valid request: EOF",
    );
    refuse(
        "POST",
        "/v1/jobs",
        post("{\"kind\": \"create\", \"set\": \"a\", \"paths\": [\"/etc\"]}"),
        400,
        "unknown field `paths`",
    );
    refuse(
        "POST",
        "/v1/jobs",
        post("{\"kind\": \"restore\", \"copy\": 1, \"to\": \"/etc\"}"),
        400,
        "restore area",
    );
    refuse(
        "POST",
        "/v1/jobs",
        post("{\"kind\": \"format\"}"),
        400,
        "unknown variant `format`",
    );
    refuse(
        "POST",
        "/v1/jobs",
        post("{\"kind\": \"create\", \"set\": \"nope\"}"),
        400,
        "no set `nope` in the agent's config (it has: a)",
    );
    refuse(
        "POST",
        "/v1/jobs",
        post("{\"kind\": \"verify\", \"copy\": 999}"),
        404,
        "copy 999 does not exist",
    );
    refuse(
        "POST",
        "/v1/jobs",
        post("{\"kind\": \"delete\", \"copies\": []}"),
        400,
        "`copies` is empty",
    );
    refuse(
        "POST",
        "/v1/jobs",
        Some(vec![b' '; 100 << 10]),
        413,
        "over the 64 KiB limit",
    );
    refuse("GET", "/v1/copies/abc", None, 400, "bad id in the path");
    refuse("GET", "/v1/copies?sett=a", None, 400, "bad query");
    refuse(
        "GET",
        "/v1/jobs/123456",
        None,
        404,
        "there is no job 123456",
    );
    refuse(
        "GET",
        "/v2/jobs",
        None,
        404,
        "no such endpoint: GET /v2/jobs",
    );

    // A copy that failed verification is restored only with `force`.
    let detail = api.get(&format!("/v1/copies/{copy}"));
    let location = PathBuf::from(detail["location"].as_str().unwrap());
    let damaged = walkdir::WalkDir::new(&location)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "db"))
        .expect("the copy holds the database")
        .into_path();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let verify = api.submit(json!({"kind": "verify", "copy": copy}));
    let verified = api.wait_job(verify, Duration::from_secs(60));
    assert_eq!(verified["state"], "failed", "{verified:#}");
    assert_eq!(
        api.metric("shadowcopy_verification_failures_total{set=\"a\"}"),
        Some(1.0)
    );
    let recorded_after_verify = jobs(&cli).len();
    assert_eq!(recorded_after_verify, recorded + 1);
    let before = bank::summarize(&a).unwrap();
    refuse(
        "POST",
        "/v1/jobs",
        post(&format!("{{\"kind\": \"restore\", \"copy\": {copy}}}")),
        400,
        &format!("copy {copy} failed verification"),
    );
    assert_eq!(
        jobs(&cli).len(),
        recorded_after_verify,
        "refused calls record no job"
    );
    assert_eq!(
        format!("{:?}", bank::summarize(&a).unwrap()),
        format!("{before:?}"),
        "nothing was restored"
    );

    // Without the socket's group, a caller is turned away by the socket's mode.
    let status = |user: &str| {
        std::process::Command::new("runuser")
            .args(["-u", user, "--", env!("CARGO_BIN_EXE_shadowcopy")])
            .args(["agent", "status", "--json", "--socket"])
            .arg(&socket)
            .output()
            .unwrap()
    };
    let out = status("nobody");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        describe(&out)
    );
    stop_agent(&cli, agent);

    // Started with the operators' group, its members get in.
    let log = std::fs::File::create(cli.path("agent2.log")).unwrap();
    let mut agent = cli
        .cmd(&[
            "--config",
            &config,
            "agent",
            "--socket",
            socket.to_str().unwrap(),
            "--socket-group",
            "nogroup",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    api.wait_up(&mut agent);
    let out = status("nobody");
    assert!(out.status.success(), "{}", describe(&out));
    stop_agent(&cli, agent);
    assert_writable(&a);
}

fn stop_agent(cli: &Cli, agent: Child) {
    crate::agent::signal(&agent, rustix::process::Signal::TERM);
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let _ = cli;
}

/// Starts the agent on `config`, and its API.
fn started(cli: &Cli, config: &str, log: &str) -> (Child, Api) {
    let api = Api::of(cli);
    let mut agent = start(cli, config, log);
    api.wait_up(&mut agent);
    (agent, api)
}

/// Submits `job` and kills the agent -9 as soon as it starts.
fn kill_when_started(api: &Api, agent: &mut Child, job: Value) -> i64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = api.socket.clone();
    let watcher = std::thread::spawn(move || {
        client::read_events(
            &socket,
            "/v1/events",
            Duration::from_secs(120),
            |name, _| {
                if name == "job-started" {
                    let _ = tx.send(());
                    true
                } else {
                    false
                }
            },
        )
    });
    // The stream is open before the job is submitted.
    std::thread::sleep(Duration::from_millis(300));
    let id = api.submit(job);
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the job starts");
    kill9(agent);
    let _ = watcher.join();
    id
}

#[test]
fn kill_9_during_verify_and_restore_leaves_nothing_locked_and_the_job_interrupted() {
    let cli = Cli::new();
    let big = cli.bank("big.db", 300 << 20);
    let config = write_config(
        &cli,
        &sqlite_set(
            "big",
            &big,
            "provider = \"copy\"\nfreeze_deadline = \"60s\"",
        ),
    );
    let (agent, api) = started(&cli, &config, "first.log");
    let id = api.submit(json!({"kind": "create", "set": "big"}));
    let copy = api.wait_job(id, Duration::from_secs(180))["copy_id"]
        .as_i64()
        .unwrap();
    let mut agent = agent;

    for (n, job) in [
        json!({"kind": "verify", "copy": copy}),
        json!({"kind": "restore", "copy": copy}),
    ]
    .into_iter()
    .enumerate()
    {
        let killed = kill_when_started(&api, &mut agent, job.clone());
        assert_writable(&big);
        balanced(&big);
        let (next, _) = started(&cli, &config, &format!("after-{n}.log"));
        agent = next;
        let record = api.get(&format!("/v1/jobs/{killed}"));
        assert_eq!(record["state"], "interrupted", "{job}: {record:#}");
        assert!(
            record["result"]
                .as_str()
                .unwrap()
                .contains("ended while it was running"),
            "{record:#}"
        );
        balanced(&big);
        assert_writable(&big);
        // Nothing in progress, nothing half-listed as usable: every usable copy verifies.
        for c in api.get("/v1/copies").as_array().unwrap() {
            assert_ne!(c["state"], "in-progress", "{c:#}");
        }
    }
    // The next runs succeed: a restore, and a new copy.
    let restore = api.submit(json!({"kind": "restore", "copy": copy}));
    let restored = api.wait_job(restore, Duration::from_secs(180));
    assert_eq!(restored["state"], "done", "{restored:#}");
    let create = api.submit(json!({"kind": "create", "set": "big"}));
    let created = api.wait_job(create, Duration::from_secs(180));
    assert_eq!(created["state"], "done", "{created:#}");
    let verify = api.submit(json!({"kind": "verify", "copy": created["copy_id"]}));
    assert_eq!(
        api.wait_job(verify, Duration::from_secs(180))["state"],
        "done"
    );
    stop(&cli, agent, &format!("after-{}.log", 1));
    balanced(&big);
    assert_writable(&big);
}

#[test]
fn a_full_catalog_file_system_fails_jobs_and_the_agent_keeps_running() {
    let test = "a_full_catalog_file_system_fails_jobs_and_the_agent_keeps_running";
    let Some(fs) = loopfs_or_skip(test, FsKind::Ext4, 16 << 20) else {
        return;
    };
    let cli = Cli::new();
    let a = cli.bank("a.db", 0);
    let catalog = fs.path().join("catalog");
    let copies = cli.path("copies");
    let config = write_config(
        &cli,
        &format!(
            "catalog = \"{}\"\n[defaults]\ncopies_dir = \"{}\"\n{}",
            catalog.display(),
            copies.display(),
            sqlite_set("a", &a, "provider = \"copy\"\nschedule = \"* * * * * *\"")
        ),
    );
    let api = Api {
        socket: catalog.join("agent.sock"),
    };
    let mut agent = cli
        .cmd(&["--config", &config, "agent"])
        .env_remove("SHADOWCOPY_CATALOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(cli.path("agent.log")).unwrap())
        .spawn()
        .unwrap();
    api.wait_up(&mut agent);
    let done_creates = |api: &Api| {
        api.get("/v1/jobs?limit=10000")
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "create" && j["state"] == "done")
            .count()
    };
    until(
        Duration::from_secs(60),
        || done_creates(&api) >= 1,
        || "a first copy".into(),
    );

    fill(fs.path(), "filler");
    // Several slots pass on a full file system: the agent keeps running and answering.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent keeps running"
    );
    let log = std::fs::read_to_string(cli.path("agent.log")).unwrap();
    assert!(
        log.contains("the job could not be queued: the file system holding the catalog")
            && log.contains("is full; free space there"),
        "the log says the catalog's file system is full:\n{log}"
    );
    let listed = api.get("/v1/copies");
    for c in listed.as_array().unwrap() {
        if c["state"] == "usable" {
            let location = PathBuf::from(c["location"].as_str().unwrap());
            assert!(location.exists(), "a usable copy has its data: {c:#}");
        }
    }

    // Room again: the next scheduled copy succeeds.
    for entry in std::fs::read_dir(fs.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("filler")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let before = done_creates(&api);
    until(
        Duration::from_secs(60),
        || done_creates(&api) > before,
        || format!("a copy once there is room: {:#}", api.get("/v1/jobs")),
    );
    crate::agent::signal(&agent, rustix::process::Signal::TERM);
    let status = agent.wait().unwrap();
    assert!(status.success());
    balanced(&a);
    assert_writable(&a);
}

/// A CA, and certificates it signs (PEM files in `dir`).
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = dir.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names`: (cert, key).
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

#[test]
fn the_tcp_api_takes_only_tls_callers_with_a_client_certificate_of_its_ca() {
    let cli = Cli::new();
    let a = cli.bank("a.db", 0);
    let operators = Pki::new(cli.dir.path(), "operators");
    let strangers = Pki::new(cli.dir.path(), "strangers");
    let (server_cert, server_key) = operators.issue("agent", &["localhost"]);
    let (client_cert, client_key) = operators.issue("alice", &["alice"]);
    let (stranger_cert, stranger_key) = strangers.issue("mallory", &["mallory"]);
    let agent_table = |extra: &str| {
        format!(
            "[agent]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}",
            server_cert.display(),
            server_key.display()
        )
    };
    let set = sqlite_set("a", &a, "provider = \"copy\"");

    // Without a client CA the agent refuses to start: a TCP API open to anyone who
    // reaches the port would let them restore over the host's databases.
    let config = write_config(&cli, &(agent_table("") + &set));
    let out = cli.run(&["--config", &config, "agent"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs `tls_client_ca`"),
        "{}",
        describe(&out)
    );
    assert!(!cli.catalog.join("agent.sock").exists());

    let config = write_config(
        &cli,
        &(agent_table(&format!(
            "tls_client_ca = \"{}\"\n",
            operators.ca().display()
        )) + &set),
    );
    let (agent, api) = started(&cli, &config, "agent.log");
    let address = api.get("/v1/status")["listen"]
        .as_str()
        .expect("the status says where TCP listens")
        .to_string();
    let endpoint = |client: Option<(&Path, &Path)>| client::Endpoint::Tls {
        address: address.clone(),
        server_name: "localhost".into(),
        config: std::sync::Arc::new(
            shadowcopy_agent::tls::client_config(&operators.ca(), client).unwrap(),
        ),
    };
    let call = |client: Option<(&Path, &Path)>| {
        client::request_to(
            &endpoint(client),
            "GET",
            "/v1/status",
            None,
            Duration::from_secs(10),
        )
    };

    let answer = call(Some((&client_cert, &client_key))).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json().unwrap()["pid"], agent.id());
    // Jobs too, over TCP.
    let job = client::request_to(
        &endpoint(Some((&client_cert, &client_key))),
        "POST",
        "/v1/jobs",
        Some(br#"{"kind":"create","set":"a"}"#.to_vec()),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(job.status, 202, "{}", String::from_utf8_lossy(&job.body));
    let id = job.json().unwrap()["id"].as_i64().unwrap();
    assert_eq!(api.wait_job(id, Duration::from_secs(60))["state"], "done");

    let refused = call(None).expect_err("a caller without a certificate is refused");
    let stranger = call(Some((&stranger_cert, &stranger_key)))
        .expect_err("a certificate of another CA is refused");
    for e in [&refused, &stranger] {
        let e = format!("{e:#}");
        assert!(!e.contains("200"), "refused before any HTTP answer: {e}");
    }
    // Plain HTTP on the TLS port gets no API either.
    let mut plain = std::net::TcpStream::connect(&address).unwrap();
    use std::io::{Read, Write};
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("\"pid\""),
        "plain HTTP answered: {}",
        String::from_utf8_lossy(&got)
    );
    stop(&cli, agent, "agent.log");
    let log = std::fs::read_to_string(cli.path("agent.log")).unwrap();
    assert!(log.contains("a TCP API caller was refused"), "{log}");
}

#[test]
fn a_socket_path_others_could_tamper_with_is_refused() {
    let cli = Cli::new();
    let a = cli.bank("a.db", 0);
    let config = write_config(&cli, &sqlite_set("a", &a, "provider = \"copy\""));
    // A directory anyone may write: someone could swap the socket for theirs.
    let shared = cli.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = shared.join("agent.sock");
    let out = cli.run(&[
        "--config",
        &config,
        "agent",
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be a directory of ours")
            && String::from_utf8_lossy(&out.stderr).contains("that no one else can write"),
        "{}",
        describe(&out)
    );
    assert!(!socket.exists());
    assert!(
        !cli.catalog.exists(),
        "a refused start writes nothing, not even the catalog"
    );

    // A link planted where the socket goes is neither followed nor removed.
    let mine = cli.path("mine");
    std::fs::create_dir(&mine).unwrap();
    let target = cli.path("precious");
    std::fs::write(&target, "keep me").unwrap();
    let planted = mine.join("agent.sock");
    std::os::unix::fs::symlink(&target, &planted).unwrap();
    let out = cli.run(&[
        "--config",
        &config,
        "agent",
        "--socket",
        planted.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists and is not a socket"),
        "{}",
        describe(&out)
    );
    assert!(std::fs::symlink_metadata(&planted)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
}
