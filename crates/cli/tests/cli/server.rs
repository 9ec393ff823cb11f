//! The backup server with three enrolled agents, each a real process in a network
//! namespace of its own with its SQLite ledger on an XFS loop file system, copying on
//! schedules the server holds: copies queued from the server's CLI on every host, one
//! host's database restored from it, a host cut off in the middle of a job (the server
//! gives the job up as lost; the agent, restarted while cut off, goes on copying by the
//! schedule it was last given; when the link returns the job's end and every copy reach
//! the server, nothing twice), the server killed with SIGKILL in the middle of a job and
//! its PostgreSQL restarted under it. At the end the central catalog lists exactly the
//! copies each agent holds.

use std::time::{Duration, Instant};

use serde_json::Value;
use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind};
use shadowcopy_testing::netns::{require_netns, NetNs};
use shadowcopy_testing::wait::{until, until_some};

use crate::central::{summaries, Central, Host};
use crate::support::describe;

const HOOK: &str = "#!/bin/bash\n\
    # Slow to prepare while {DIR}/slow exists: a job long enough to be caught mid-way.\n\
    if [ \"$1\" = prepare ] && [ -e \"{DIR}/slow\" ]; then sleep 4; fi\n\
    exit 0\n";

/// Every host's config: one set, no schedule of its own (the server holds them).
const CONFIG: &str = "[sets.app]\nprovider = \"reflink\"\n\
     [[sets.app.writers]]\nkind = \"sqlite\"\npath = \"{DB}\"\n\
     [[sets.app.writers]]\nkind = \"exec\"\nscript = \"{DIR}/hook.sh\"\nevents = [\"prepare\"]\n";

/// Queues a job through the server's CLI without waiting; its id.
fn queue(central: &Central, args: &[&str]) -> i64 {
    let mut all = args.to_vec();
    all.extend(["--no-wait", "--json"]);
    let v = central.op_json(&all);
    let job = if v.get("job").is_some() {
        &v["job"]
    } else {
        &v
    };
    job["id"].as_i64().unwrap()
}

/// Whether an agent's job ran the server's job `id` (its trigger is
/// `server:SERVER-TAG:ID`).
fn runs_job(local: &Value, id: i64) -> bool {
    local["trigger"].as_str().is_some_and(|t| {
        t.starts_with("server:") && t.rsplit(':').next() == Some(id.to_string().as_str())
    })
}

/// How many scheduled copies the host's agent made since `since_ms`.
fn scheduled_since(host: &Host, since_ms: i64) -> usize {
    host.local_jobs()
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| {
            j["kind"] == "create"
                && j["trigger"] == "schedule"
                && j["state"] == "done"
                && j["started_ms"].as_i64().unwrap_or(0) > since_ms
        })
        .count()
}

fn wait_job(central: &Central, id: i64, states: &[&str], limit: Duration) -> Value {
    until_some(
        limit,
        || {
            let job = central.job(id);
            states
                .contains(&job["state"].as_str().unwrap())
                .then_some(job)
        },
        || format!("job {id} did not become {states:?}: {:#}", central.job(id)),
    )
}

/// Waits until the server lists exactly the copies the host's agent holds.
fn converged(central: &Central, host: &Host) {
    let started = Instant::now();
    loop {
        let local = host.local_copies();
        let remote = summaries(&central.op_json(&["list", "--host", &host.name, "--json"]));
        if local == remote {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            panic!(
                "{}: the server lists {remote:?}, the agent holds {local:?}\nagent log:\n{}",
                host.name,
                host.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_agents_copy_and_restore_through_the_server_across_a_partition_and_a_server_kill() {
    let test = "three_agents_copy_and_restore_through_the_server";
    if !require_netns(test) {
        return;
    }
    let names = ["host-a", "host-b", "host-c"];
    let mut filesystems = Vec::new();
    for _ in names {
        let Some(fs) = loopfs_or_skip(test, FsKind::Xfs, 300 << 20) else {
            return;
        };
        filesystems.push(fs);
    }
    let spaces: Vec<NetNs> = (1..=3).map(|n| NetNs::new(n).unwrap()).collect();
    let mut addresses: Vec<String> = spaces.iter().map(|ns| ns.here.clone()).collect();
    addresses.push("127.0.0.1".into());
    let Some(mut central) = Central::start(test, "0.0.0.0", &addresses) else {
        return;
    };
    let mut hosts = Vec::new();
    for ((name, fs), ns) in names.iter().zip(&filesystems).zip(spaces) {
        let dir = fs.path().join("host");
        let host = Host::new(name, &dir, Some(ns), CONFIG);
        std::fs::write(
            dir.join("hook.sh"),
            HOOK.replace("{DIR}", &dir.display().to_string()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("hook.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        hosts.push(host);
    }

    // Enrolment: each agent with its own one-time token, from inside its namespace; the
    // schedules set on the server before: host-b every 3 s keeping the newest 3, the
    // others every 5 s keeping 50.
    let tokens: Vec<String> = hosts
        .iter()
        .map(|h| central.enroll_token(&h.name))
        .collect();
    for host in &hosts {
        let (every, keep) = if host.name == "host-b" {
            ("*/3", "3")
        } else {
            ("*/5", "50")
        };
        let schedule = format!("{every} * * * * *");
        central.op_json(&[
            "policy",
            "set",
            "--host",
            &host.name,
            "app",
            "--schedule",
            &schedule,
            "--keep-last",
            keep,
            "--json",
        ]);
    }
    for (host, token) in hosts.iter_mut().zip(&tokens) {
        let url = central.url(&host.ns.as_ref().unwrap().here);
        host.start_agent(&url, Some(token));
    }
    until(
        Duration::from_secs(30),
        || {
            let hosts = central.op_json(&["hosts", "--json"]);
            hosts.as_array().unwrap().len() == 3
                && hosts
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|h| h["state"] == "enrolled" && h["last_seen_ms"].is_i64())
        },
        || {
            format!(
                "not every host enrolled: {:#}",
                central.op_json(&["hosts", "--json"])
            )
        },
    );
    // Every host copies by the server's schedule.
    for host in &hosts {
        until(
            Duration::from_secs(60),
            || scheduled_since(host, 0) > 0,
            || format!("{} made no scheduled copy:\n{}", host.name, host.log()),
        );
    }

    // A copy of every host, queued from the server's CLI and followed to its end.
    let mut first_copy = Vec::new();
    for host in &hosts {
        host.write(1, 100);
        let out = central.op(&["create", "--host", &host.name, "app", "--json"]);
        assert!(out.status.success(), "{}\n{}", describe(&out), host.log());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["job"]["state"], "done", "{v:#}");
        assert_eq!(v["copy"]["state"], "usable", "{v:#}");
        assert_eq!(v["copy"]["verify_state"], "passed", "{v:#}");
        first_copy.push(v["copy"]["id"].as_i64().unwrap());
    }

    // host-a's database restored from the server: the ledger is back to the copy's 100 rows.
    let a = &hosts[0];
    a.write(101, 250);
    assert_eq!(a.ledger(), 250);
    let out = central.op(&["restore", "--host", "host-a", &first_copy[0].to_string()]);
    assert!(out.status.success(), "{}\n{}", describe(&out), a.log());
    assert_eq!(
        a.ledger(),
        100,
        "the restore brought back the copy's ledger"
    );
    a.write(101, 120);

    // host-b cut off while its job runs: the server loses the job; the agent finishes it
    // and, restarted while cut off, goes on with the schedule it was given; the link
    // back, both agree.
    let b = &mut hosts[1];
    std::fs::write(b.dir.join("slow"), "").unwrap();
    let job = queue(&central, &["create", "--host", "host-b", "app"]);
    let claimed = wait_job(
        &central,
        job,
        &["claimed", "running"],
        Duration::from_secs(30),
    );
    b.ns.as_ref().unwrap().cut();
    let cut_at = chrono::Utc::now().timestamp_millis();
    let lost = wait_job(&central, job, &["lost"], Duration::from_secs(30));
    assert!(
        lost["result"].as_str().unwrap().contains("lease"),
        "{lost:#}"
    );
    std::fs::remove_file(b.dir.join("slow")).unwrap();
    // Nothing is left frozen or locked: the application writes on.
    b.write(101, 150);
    until(
        Duration::from_secs(30),
        || scheduled_since(b, cut_at) > 0,
        || {
            format!(
                "no scheduled copy ran on host-b while it was cut off:\n{}",
                b.log()
            )
        },
    );
    b.stop_agent();
    let restarted_at = chrono::Utc::now().timestamp_millis();
    let url = central.url(&b.ns.as_ref().unwrap().here);
    b.start_agent(&url, None);
    until(
        Duration::from_secs(30),
        || scheduled_since(b, restarted_at) > 0,
        || {
            format!(
                "host-b, restarted while cut off, made no scheduled copy:\n{}",
                b.log()
            )
        },
    );
    b.ns.as_ref().unwrap().heal();
    let done = wait_job(&central, job, &["done", "failed"], Duration::from_secs(90));
    assert_eq!(done["state"], "done", "{done:#}\n{}", b.log());
    assert!(
        done["result"]
            .as_str()
            .unwrap()
            .contains("after its lease ran out"),
        "{done:#}"
    );
    // The agent ran it once: one job of its own for the server's job.
    let runs: Vec<Value> = b
        .local_jobs()
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| runs_job(j, job))
        .cloned()
        .collect();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["copy_id"], done["copy_id"]);
    assert_eq!(claimed["id"], done["id"]);

    // The server killed with SIGKILL while host-c's job runs, then started again.
    let c = &hosts[2];
    std::fs::write(c.dir.join("slow"), "").unwrap();
    let job = queue(&central, &["create", "--host", "host-c", "app"]);
    wait_job(
        &central,
        job,
        &["claimed", "running"],
        Duration::from_secs(30),
    );
    central.kill9();
    std::thread::sleep(Duration::from_secs(2));
    central.start_server();
    let done = wait_job(&central, job, &["done", "failed"], Duration::from_secs(90));
    assert_eq!(done["state"], "done", "{done:#}\n{}", c.log());
    std::fs::remove_file(c.dir.join("slow")).unwrap();
    let runs = c
        .local_jobs()
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| runs_job(j, job))
        .count();
    assert_eq!(runs, 1, "one run for one job");

    // PostgreSQL restarted under the server: the next calls work again.
    central.pg.stop();
    central.pg.start();
    until(
        Duration::from_secs(30),
        || central.op(&["hosts", "--json"]).status.success(),
        || {
            format!(
                "the server did not recover from PostgreSQL's restart:\n{}",
                central.log()
            )
        },
    );
    let job = queue(&central, &["create", "--host", "host-c", "app"]);
    let done = wait_job(&central, job, &["done", "failed"], Duration::from_secs(60));
    assert_eq!(done["state"], "done", "{done:#}");

    // The central catalog lists exactly what each agent holds.
    for host in &hosts {
        converged(&central, host);
        assert!(host.ledger() >= 100);
    }
    // Every server job ended; none handed out twice.
    let jobs = central.op_json(&["jobs", "--all-hosts", "--json"]);
    for j in jobs.as_array().unwrap() {
        assert_eq!(j["state"], "done", "{j:#}");
    }
    let hosts_view = central.op_json(&["hosts", "--json"]);
    for h in hosts_view.as_array().unwrap() {
        assert_eq!(h["open_jobs"], 0, "{h:#}");
    }
    for host in &mut hosts {
        host.stop_agent();
    }
    let log = central.log();
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
}

#[test]
fn a_restored_catalog_and_a_new_enrolment_leave_the_server_listing_what_the_agent_holds() {
    let test = "a_restored_catalog_and_a_new_enrolment";
    let Some(central) = Central::start(test, "127.0.0.1", &["127.0.0.1".to_string()]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let config = "[sets.app]\nprovider = \"copy\"\n[[sets.app.writers]]\nkind = \"sqlite\"\npath = \"{DB}\"\n";
    let mut host = Host::new("solo", &work.path().join("solo"), None, config);
    host.write(1, 10);
    let url = central.url("127.0.0.1");
    host.start_agent(&url, Some(&central.enroll_token("solo")));
    let create = |central: &Central| {
        let out = central.op(&["create", "--host", "solo", "app"]);
        assert!(out.status.success(), "{}", describe(&out));
    };
    create(&central);
    create(&central);
    converged(&central, &host);
    assert_eq!(host.local_copies().len(), 2);

    // The catalog as a backup would hold it, then two more copies the server learns of.
    host.stop_agent();
    let backup = work.path().join("catalog-backup");
    let copied = std::process::Command::new("cp")
        .args(["-a"])
        .arg(host.catalog())
        .arg(&backup)
        .status()
        .unwrap();
    assert!(copied.success());
    host.start_agent(&url, None);
    create(&central);
    create(&central);
    converged(&central, &host);
    assert_eq!(host.local_copies().len(), 4);

    // The catalog restored from the backup: its numbers are below what the server
    // applied; the agent sends every copy again and the server forgets the two it
    // no longer holds.
    host.stop_agent();
    std::fs::remove_dir_all(host.catalog()).unwrap();
    let restored = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&backup)
        .arg(host.catalog())
        .status()
        .unwrap();
    assert!(restored.success());
    host.start_agent(&url, None);
    converged(&central, &host);
    assert_eq!(host.local_copies().len(), 2);
    assert!(
        host.log().contains("sending every copy again"),
        "{}",
        host.log()
    );

    // Enrolled anew (its identity removed, a new token): the server lists every copy
    // the agent holds, not only those changed since.
    host.stop_agent();
    std::fs::remove_dir_all(host.catalog().join("server")).unwrap();
    host.start_agent(&url, Some(&central.enroll_token("solo")));
    converged(&central, &host);
    assert_eq!(
        summaries(&central.op_json(&["list", "--host", "solo", "--json"])).len(),
        2
    );
    // A start command that keeps its token starts again (the token is not used).
    host.stop_agent();
    host.start_agent(&url, Some("sce1_00000000000000000000000000000000_00"));
    assert!(host.log().contains("enrolled already"), "{}", host.log());
    host.stop_agent();
}

#[test]
fn an_agent_renews_its_certificate_before_it_expires() {
    let test = "an_agent_renews_its_certificate_before_it_expires";
    let Some(central) = Central::start_with(
        test,
        "127.0.0.1",
        &["127.0.0.1".to_string()],
        &["--agent-cert-lifetime", "30s"],
    ) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let config = "[sets.app]\nprovider = \"copy\"\n[[sets.app.writers]]\nkind = \"sqlite\"\npath = \"{DB}\"\n";
    let mut host = Host::new("renewer", &work.path().join("renewer"), None, config);
    host.write(1, 5);
    let enrolled = Instant::now();
    host.start_agent(
        &central.url("127.0.0.1"),
        Some(&central.enroll_token("renewer")),
    );
    until(
        Duration::from_secs(45),
        || host.log().contains("certificate renewed"),
        || format!("the agent did not renew its certificate:\n{}", host.log()),
    );
    // Past the first certificate's 30 s: the agent works on with the renewed one.
    if let Some(left) = Duration::from_secs(32).checked_sub(enrolled.elapsed()) {
        std::thread::sleep(left);
    }
    let out = central.op(&["create", "--host", "renewer", "app"]);
    assert!(out.status.success(), "{}\n{}", describe(&out), host.log());
    let issued: i64 = central
        .pg
        .psql("SELECT COUNT(*) FROM agent_certificates WHERE host = 'renewer'")
        .parse()
        .unwrap();
    assert!(issued >= 2, "{issued} certificates");
    let identity = host.catalog().join("server");
    assert!(
        !identity.join("agent.pem").exists() && !identity.join("agent.key").exists(),
        "the first key and certificate are removed once replaced"
    );
    host.stop_agent();
}
