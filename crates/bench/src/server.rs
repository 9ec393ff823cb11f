//! `shadowcopy-bench server`: what the backup server costs and how fast it hands out
//! jobs, on the real release binary with its central catalog in a private PostgreSQL
//! cluster (as the tests start one), all on loopback. Two parts (`--parts`):
//!
//! 1. `dispatch`: `--agents` simulated agents (async clients in this process, each
//!    enrolled with its own token and certificate, each long-polling
//!    `/v1/agent/jobs/next` on its own connection, as the agent does, and telling the
//!    server every 10 s that it is alive). First `--idle-seconds` with nothing queued:
//!    the server's and PostgreSQL's CPU while every agent waits. Then `--jobs` jobs
//!    queued through the operators' API at `--rate` per second, spread over the hosts;
//!    each agent reports its job done as soon as it claims it. The dispatch latency is
//!    the server's own record, queued → claimed (`claimed_ms - created_ms`), per job;
//!    the server's CPU and memory (`VmHWM`) over the run.
//! 2. `sync`: a real agent (`shadowcopy agent --server URL --enroll-token T`) whose
//!    catalog holds `--copies` copies (3 real, the rest synthetic as in the agent
//!    workload), enrolled fresh: the time until the server lists every copy, the agent's
//!    and the server's CPU meanwhile; then the linked agent's CPU and memory over
//!    `--idle-seconds` with nothing to do (the cost of being managed, against the
//!    standalone agent's in the agent workload). Then the web console's pages over that
//!    host (its set of `--copies` copies), each fetched `--page-runs` times by curl with a
//!    signed-in session: the time to the last byte (median, p95) and the page's size.
//!
//! This is a measurement, not a test: nothing asserts on time. It fails when the server
//! or an agent does not start, a call fails, or a job is not claimed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use shadowcopy_agent::link::https::ServerClient;
use shadowcopy_agent::link::identity::{enroll, operator_client, Identity};
use shadowcopy_testing::postgres::{PgCluster, PgOptions};

use crate::agent::{
    clock_ticks, cpu, create_copies, mem, mib, percentile, sqlite_set, synthesize, Agent,
};
use crate::common::{self, loadavg};
use crate::stats::human;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Dispatch,
    Sync,
}

/// Options of the server workload.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Which parts to run, in this order
    #[arg(long, value_delimiter = ',', default_value = "dispatch,sync")]
    parts: Vec<Part>,
    /// Simulated agents polling the server
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    agents: u32,
    /// Jobs queued in the dispatch part
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
    /// Jobs queued per second
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Copies in the real agent's catalog for the sync part
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(3..))]
    copies: u64,
    /// Seconds of waiting measured (server with idle agents; the linked agent)
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_seconds: u64,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// How many times each console page is fetched in the sync part
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    page_runs: u32,
    /// Where the catalogs go [default: $TMPDIR]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:server markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl ServerArgs {
    pub fn tools(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The server process and its PostgreSQL.
struct Central {
    /// The state directory and the log; removed with the server.
    _work: tempfile::TempDir,
    pg: PgCluster,
    child: Option<Child>,
    url: String,
    admin: ServerClient,
}

impl Central {
    fn start(bin: &Path) -> anyhow::Result<Central> {
        let pg = PgCluster::try_init(PgOptions::new().setting("max_connections", "200"))
            .map_err(|e| anyhow::anyhow!("cannot start PostgreSQL: {e}"))?;
        let work = tempfile::Builder::new()
            .prefix("shadowcopy-bench-server-")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let state = work.path().join("state");
        let log = std::fs::File::create(work.path().join("server.log"))?;
        let child = Command::new(bin)
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                "127.0.0.1",
            ])
            .arg("--state")
            .arg(&state)
            .env("SHADOWCOPY_SERVER_DATABASE", pg.url())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let url = format!("https://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(work.path().join("server.log"))?.contains("server started") {
            ensure!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new(bin)
            .args([
                "server", "token", "create", "bench", "--role", "admin", "-q", "--state",
            ])
            .arg(&state)
            .env("SHADOWCOPY_SERVER_DATABASE", pg.url())
            .output()?;
        ensure!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = operator_client(&url, String::from_utf8(out.stdout)?.trim())?;
        Ok(Central {
            _work: work,
            pg,
            child: Some(child),
            url,
            admin,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The postmaster and its children.
    fn pg_pids(&self) -> Vec<u32> {
        let Some(master) = self.pg.postmaster_pid() else {
            return Vec::new();
        };
        let mut pids = vec![master];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let ppid = stat[stat.rfind(')').unwrap_or(0) + 1..]
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// CPU ticks of the server and of PostgreSQL.
    fn ticks(&self) -> (u64, u64) {
        let server = cpu(self.pid()).map(|c| c.ticks).unwrap_or(0);
        let pg = self
            .pg_pids()
            .iter()
            .filter_map(|p| cpu(*p).ok())
            .map(|c| c.ticks)
            .sum();
        (server, pg)
    }

    async fn token(&self, host: &str) -> anyhow::Result<String> {
        let v: Value = self
            .admin
            .json(
                "POST",
                &format!("/v1/hosts/{host}/enroll-token"),
                Some(&serde_json::json!({})),
                Duration::from_secs(30),
            )
            .await?;
        Ok(v["token"].as_str().context("no token")?.to_string())
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Share of one CPU, in per cent, of `ticks` over `seconds`.
fn percent(ticks: u64, seconds: f64) -> f64 {
    100.0 * ticks as f64 / clock_ticks() as f64 / seconds
}

pub fn bench(args: &ServerArgs) -> anyhow::Result<()> {
    common::use_dir(args.dir.as_deref())?;
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    let mut parts = args.parts.clone();
    parts.dedup();
    for part in parts {
        let load_before = loadavg();
        let (name, table) = match part {
            Part::Dispatch => ("server-dispatch", dispatch(args, &bin)?),
            Part::Sync => ("server-sync", sync(args, &bin)?),
        };
        println!("{table}\n");
        if let Some(path) = &args.markdown {
            let env = common::environment(
                "the catalogs on the host's disk; PostgreSQL 15 in a temp dir; everything on loopback",
                &load_before,
                &loadavg(),
            );
            let env: String = env
                .lines()
                .filter(|l| !l.starts_with("- disk:"))
                .map(|l| format!("{l}\n"))
                .collect();
            common::write_section(path, name, &format!("{env}\n{table}"))?;
            eprintln!("wrote the {name} results into {}", path.display());
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// One simulated agent: long-polls, reports each job done at once, says it is alive.
async fn simulated_agent(
    client: ServerClient,
    stop: Arc<tokio::sync::Notify>,
) -> anyhow::Result<u64> {
    let mut done = 0;
    let mut alive = Instant::now() - Duration::from_secs(10);
    loop {
        if alive.elapsed() >= Duration::from_secs(10) {
            let _: Value = client
                .json(
                    "POST",
                    "/v1/agent/sync",
                    Some(&serde_json::json!({"version": "bench", "changes": []})),
                    Duration::from_secs(30),
                )
                .await?;
            alive = Instant::now();
        }
        let poll = client.json::<Option<Value>>(
            "POST",
            "/v1/agent/jobs/next?wait=10",
            None::<&()>,
            Duration::from_secs(40),
        );
        let job = tokio::select! {
            job = poll => job?,
            _ = stop.notified() => return Ok(done),
        };
        if let Some(job) = job {
            let id = job["id"].as_i64().context("a job without an id")?;
            let _: Value = client
                .json(
                    "POST",
                    &format!("/v1/agent/jobs/{id}/finish"),
                    Some(&serde_json::json!({"ok": true, "result": "bench", "copy_id": null, "agent_job": null})),
                    Duration::from_secs(30),
                )
                .await?;
            done += 1;
        }
    }
}

fn dispatch(args: &ServerArgs, bin: &Path) -> anyhow::Result<String> {
    let central = Central::start(bin)?;
    let rt = runtime()?;
    eprintln!("dispatch: enrolling {} simulated agents ...", args.agents);
    let ids = tempfile::tempdir()?;
    let mut clients = Vec::new();
    for n in 0..args.agents {
        let host = format!("sim-{n:03}");
        let token = rt.block_on(central.token(&host))?;
        let dir = ids.path().join(&host);
        std::fs::create_dir_all(&dir)?;
        let url = central.url.clone();
        let identity: Identity = std::thread::spawn(move || enroll(&dir, &url, &token, &host))
            .join()
            .map_err(|_| anyhow::anyhow!("enrolment panicked"))??;
        clients.push((identity.host.clone(), identity.client()?));
    }
    let stop = Arc::new(tokio::sync::Notify::new());
    let tasks: Vec<_> = clients
        .iter()
        .map(|(_, c)| rt.spawn(simulated_agent(c.clone(), stop.clone())))
        .collect();
    // Idle: every agent waiting on its poll.
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("  idle, {} s ...", args.idle_seconds);
    let (s0, p0) = central.ticks();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let idle_s = t0.elapsed().as_secs_f64();
    let (s1, p1) = central.ticks();
    let idle_mem = mem(central.pid())?;
    // Jobs at the rate asked for.
    eprintln!("  {} jobs at {}/s ...", args.jobs, args.rate);
    let gap = Duration::from_secs_f64(1.0 / args.rate);
    let t1 = Instant::now();
    let mut first_id = None;
    for n in 0..args.jobs {
        let host = &clients[n as usize % clients.len()].0;
        let job: Value = rt.block_on(central.admin.json(
            "POST",
            &format!("/v1/hosts/{host}/jobs"),
            Some(&serde_json::json!({"request": {"kind": "create", "set": "app"}})),
            Duration::from_secs(30),
        ))?;
        first_id.get_or_insert(job["id"].as_i64().unwrap_or(0));
        let next = t1 + gap * (n + 1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // Every job done.
    let deadline = Instant::now() + Duration::from_secs(120);
    let jobs = loop {
        let jobs: Vec<Value> = rt.block_on(central.admin.json(
            "GET",
            &format!("/v1/jobs?limit={}", args.jobs + 10),
            None::<&()>,
            Duration::from_secs(60),
        ))?;
        if jobs.iter().all(|j| j["state"] == "done") {
            break jobs;
        }
        if Instant::now() > deadline {
            bail!("not every job was done within 2 minutes of the last being queued");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let busy_s = t1.elapsed().as_secs_f64();
    let (s2, p2) = central.ticks();
    let busy_mem = mem(central.pid())?;
    stop.notify_waiters();
    for t in tasks {
        t.abort();
    }
    let mut latency: Vec<Duration> = jobs
        .iter()
        .filter_map(|j| {
            Some(Duration::from_millis(
                (j["claimed_ms"].as_i64()? - j["created_ms"].as_i64()?).max(0) as u64,
            ))
        })
        .collect();
    ensure!(
        latency.len() == args.jobs as usize,
        "{} of {} jobs have a claim time",
        latency.len(),
        args.jobs
    );
    latency.sort();
    Ok(format!(
        "**Dispatch** ({agents} simulated agents long-polling over mutual TLS; {jobs} jobs queued at {rate}/s, \
         each reported done at once)\n\n\
         | | server | PostgreSQL |\n|---|---:|---:|\n\
         | CPU, agents waiting ({idle_s:.0} s) | {si:.2} % | {pi:.2} % |\n\
         | CPU, jobs flowing ({busy_s:.0} s) | {sb:.1} % | {pb:.1} % |\n\
         | memory (VmRSS / VmHWM) after waiting | {rss0} / {hwm0} | |\n\
         | memory (VmRSS / VmHWM) after the jobs | {rss1} / {hwm1} | |\n\n\
         | queued → claimed | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|\n\
         | {n} jobs | {p50} | {p90} | {p99} | {max} |\n",
        agents = args.agents,
        jobs = args.jobs,
        rate = args.rate,
        si = percent(s1 - s0, idle_s),
        pi = percent(p1.saturating_sub(p0), idle_s),
        sb = percent(s2 - s1, busy_s),
        pb = percent(p2.saturating_sub(p1), busy_s),
        rss0 = mib(idle_mem.rss),
        hwm0 = mib(idle_mem.hwm),
        rss1 = mib(busy_mem.rss),
        hwm1 = mib(busy_mem.hwm),
        n = latency.len(),
        p50 = human(percentile(&latency, 50.0)),
        p90 = human(percentile(&latency, 90.0)),
        p99 = human(percentile(&latency, 99.0)),
        max = human(*latency.last().unwrap()),
    ))
}

fn sync(args: &ServerArgs, bin: &Path) -> anyhow::Result<String> {
    let central = Central::start(bin)?;
    let rt = runtime()?;
    let work = tempfile::Builder::new()
        .prefix("shadowcopy-bench-sync-")
        .tempdir()?;
    let catalog = work.path().join("catalog");
    let db = work.path().join("bank.db");
    shadowcopy_sample::create(&db, crate::sqlite::ACCOUNTS, true)?;
    let config = work.path().join("agent.toml");
    std::fs::write(&config, sqlite_set("bank", &db, "provider = \"copy\""))?;
    create_copies(bin, &config, &catalog, 3)?;
    synthesize(&catalog, args.copies)?;
    let token = rt.block_on(central.token("real-agent"))?;
    eprintln!("sync: an agent with {} copies enrolls ...", args.copies);
    let log = work.path().join("agent.log");
    let (s0, p0) = central.ticks();
    let started = Instant::now();
    let url = central.url.clone();
    let agent = Agent::start_with(bin, &catalog, &config, &log, |c| {
        c.args(["--server", &url, "--host-name", "real-agent"])
            .env("SHADOWCOPY_ENROLL_TOKEN", &token);
    })
    .context("the linked agent")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let hosts: Vec<Value> = rt.block_on(central.admin.json(
            "GET",
            "/v1/hosts",
            None::<&()>,
            Duration::from_secs(30),
        ))?;
        let n = hosts
            .iter()
            .find(|h| h["name"] == "real-agent")
            .and_then(|h| h["copies"].as_u64())
            .unwrap_or(0);
        if n == args.copies {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the server lists {n} of {} copies after 10 minutes",
            args.copies
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let synced = started.elapsed();
    let (s1, p1) = central.ticks();
    let a1 = cpu(agent.pid())?.ticks;
    let pages = console_pages(&central, bin, args.page_runs)?;
    let after_sync = mem(agent.pid())?;
    eprintln!(
        "  synced in {}; the linked agent idle {} s ...",
        human(synced),
        args.idle_seconds
    );
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let idle_s = t.elapsed().as_secs_f64();
    let a2 = cpu(agent.pid())?;
    let after_idle = mem(agent.pid())?;
    agent.stop()?;
    let tck = clock_ticks() as f64;
    Ok(format!(
        "**Catalog sync and the cost of being managed** (a real agent whose catalog holds {copies} copies enrolls; \
         its outbox goes in batches of 200, each copy with its phases, verifications, components and largest files)\n\n\
         | | |\n|---|---:|\n\
         | start to every copy listed by the server | {synced} |\n\
         | agent CPU from its start (enrolment included) | {ac:.2} s |\n\
         | server CPU from the agent's start | {sc:.2} s |\n\
         | PostgreSQL CPU from the agent's start | {pc:.2} s |\n\
         | linked agent idle CPU ({idle_s:.0} s) | {ai:.3} % |\n\
         | linked agent memory after the sync / after idling (VmRSS) | {m0} / {m1} |\n",
        copies = args.copies,
        synced = human(synced),
        ac = a1 as f64 / tck,
        sc = (s1 - s0) as f64 / tck,
        pc = p1.saturating_sub(p0) as f64 / tck,
        ai = percent(a2.ticks - a1, idle_s),
        m0 = mib(after_sync.rss),
        m1 = mib(after_idle.rss),
    ) + &pages)
}

/// Each console page over the synced host, fetched `runs` times by curl with a signed-in
/// session (a fresh TLS connection each time, as a browser's first visit): a table of
/// the median and p95 time to the last byte, and the size.
fn console_pages(central: &Central, bin: &Path, runs: u32) -> anyhow::Result<String> {
    use std::io::Write;
    let state = central._work.path().join("state");
    let password = "a bench passphrase, long enough";
    let mut child = Command::new(bin)
        .args([
            "server", "user", "create", "bench-ui", "--role", "admin", "--state",
        ])
        .arg(&state)
        .env("SHADOWCOPY_SERVER_DATABASE", central.pg.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    writeln!(child.stdin.take().context("stdin")?, "{password}")?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "user create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jar = central._work.path().join("cookies");
    let signed_in = Command::new("curl")
        .args(["-k", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-c"])
        .arg(&jar)
        .args([
            "--data-urlencode",
            "name=bench-ui",
            "--data-urlencode",
            &format!("password={password}"),
            &format!("{}/console/signin", central.url),
        ])
        .output()
        .context("curl (apt-get install curl)")?;
    ensure!(
        String::from_utf8_lossy(&signed_in.stdout) == "303",
        "the console sign-in answered {}",
        String::from_utf8_lossy(&signed_in.stdout)
    );
    // The newest copy, and one in the middle of the set.
    let newest: i64 = central
        .pg
        .psql("SELECT max(copy_id) FROM copies WHERE host = 'real-agent'")
        .trim()
        .parse()?;
    let pages = [
        ("hosts", "/console/hosts".to_string()),
        ("a host", "/console/hosts/real-agent".to_string()),
        (
            "a set (newest 100 copies)",
            "/console/hosts/real-agent/sets/bank".to_string(),
        ),
        (
            "a set, a page of older copies",
            format!("/console/hosts/real-agent/sets/bank?before={}", newest / 2),
        ),
        (
            "a copy",
            format!("/console/hosts/real-agent/copies/{newest}"),
        ),
        (
            "the restore form",
            format!("/console/hosts/real-agent/copies/{newest}/restore"),
        ),
        (
            "delete old copies: keep the newest 10 (decides over every copy)",
            "/console/hosts/real-agent/sets/bank/prune?keep_last=10".to_string(),
        ),
        ("jobs", "/console/jobs".to_string()),
    ];
    eprintln!("  the console's pages, {runs} times each ...");
    let mut table = String::from(
        "\n**The web console over that host** (curl, signed in, a new TLS connection per request)\n\n\
         | page | median | p95 | size |\n|---|---:|---:|---:|\n",
    );
    for (name, path) in pages {
        let mut times = Vec::new();
        let mut size: u64 = 0;
        for _ in 0..runs {
            let out = Command::new("curl")
                .args([
                    "-k",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{time_total} %{size_download}",
                    "-b",
                ])
                .arg(&jar)
                .arg(format!("{}{path}", central.url))
                .output()?;
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let fields: Vec<&str> = line.split_whitespace().collect();
            ensure!(fields.first() == Some(&"200"), "{path} answered {line}");
            times.push(Duration::from_secs_f64(fields[1].parse()?));
            size = fields[2].parse()?;
        }
        times.sort();
        table.push_str(&format!(
            "| {name} | {} | {} | {:.0} KiB |\n",
            human(percentile(&times, 50.0)),
            human(percentile(&times, 95.0)),
            size as f64 / 1024.0
        ));
    }
    Ok(table)
}
