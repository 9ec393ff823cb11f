//! `shadowcopy-bench agent`: what the agent (`shadowcopy agent`) costs while it waits,
//! how fast its API answers over a large catalog, and whether it keeps a schedule of a
//! copy a minute on a busy database. Three parts (`--parts`), each on the real release
//! binary started as a user starts it (`shadowcopy --config F --catalog D agent`):
//!
//! 1. `idle`: an agent with three sets (two scheduled for midnight on 1 January, one
//!    without a schedule, one with a retention policy) and nothing to do. After it
//!    answers, its memory (`VmRSS`, `VmHWM`, `RssAnon` of /proc/PID/status) and, over
//!    `--idle-seconds`, its CPU time (utime + stime of /proc/PID/stat, and the sum of
//!    every thread's /proc/PID/task/TID/schedstat in nanoseconds) and wake-ups (context
//!    switches of all its threads). No job may run.
//! 2. `api`: a catalog of `--copies` copies: three real ones made by `shadowcopy create`
//!    of a small bank, the rest synthetic rows copied from the newest real one (its
//!    `copies` row with a new id, older times and its own location, and its `files`,
//!    `phases`, `components` and `verifications` rows) before the agent starts. Then
//!    `--requests` sequential requests per endpoint through the agent's own client
//!    (`shadowcopy_agent::client::request`: a connection per request, as
//!    `shadowcopy agent status` makes), timed from the call to the whole answer:
//!    `/v1/copies` (every copy), `/v1/sets`, `/metrics` (both read every copy too),
//!    `/v1/status` (no catalog read: the floor of a request) and one `/v1/copies/{id}`.
//! 3. `schedule`: a bank padded to `--size` on an XFS loop file system under transfer
//!    threads (as in the `sqlite` workload), copied by the agent once a minute
//!    (`0 * * * * *`) with `keep_last = --keep-last` for `--minutes` minutes, against the
//!    same load for `--baseline-minutes` without the agent, half before and half after
//!    the run with it. Each run starts from a reflink clone of the same freshly made
//!    bank, with the page cache dropped, and notes the CPU share other processes took
//!    (a shared machine's builds move the throughput more than the agent does). The
//!    agent starts 20 s before a minute (so the window of `--minutes` minutes holds
//!    exactly that many slots and ends 40 s after the last one); then every slot must
//!    have its `create` job done, retention must have left `keep_last` usable copies
//!    (the newest verified) and as many copy directories on disk, and the load's
//!    transfers per second are compared with the baseline's.
//!
//! Each part writes its own table between its own markers (`bench:agent-idle`,
//! `bench:agent-api`, `bench:agent-schedule`), so one part can be measured again alone.
//!
//! This is a measurement, not a test: nothing asserts on time. It fails when the agent
//! does not start or answer, a request fails, or the load's threads fail; missed slots
//! and a retention that does not hold are reported, not errors.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context};
use rusqlite::{params, Connection, OpenFlags};
use shadowcopy_agent::client;
use shadowcopy_testing::loopfs::{FsKind, LoopFs};

use crate::common::{self, drop_caches, loadavg};
use crate::sqlite::{stop_load, ACCOUNTS};
use crate::stats::{self, human, human_bytes};

/// A schedule that does not fall due while the bench runs (unless it runs across
/// midnight on 1 January).
const NEVER: &str = "0 0 0 1 1 *";

/// The parts of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Idle,
    Api,
    Schedule,
}

/// Options of the agent workload.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Which parts to run, in this order
    #[arg(long, value_delimiter = ',', default_value = "idle,api,schedule")]
    parts: Vec<Part>,
    /// Seconds over which the idle agent's CPU time is measured
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_seconds: u64,
    /// Copies in the catalog for the API latency (3 real, the rest synthetic)
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(3..))]
    copies: u64,
    /// Sequential requests per endpoint
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Minutes the agent copies the busy bank once a minute
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    minutes: u64,
    /// Minutes of the same load without the agent [default: --minutes]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    baseline_minutes: Option<u64>,
    /// Size the scheduled bank is padded to
    #[arg(long, default_value = "1GiB", value_parser = stats::parse_size)]
    size: u64,
    /// Provider of the scheduled copies (both on XFS)
    #[arg(long, default_value = "reflink", value_parser = ["reflink", "copy"])]
    provider: String,
    /// Set `verify = false` on the scheduled set (what verifying each copy costs the load)
    #[arg(long)]
    no_verify: bool,
    /// `keep_last` of the scheduled set's retention policy
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    keep_last: u32,
    /// Transfer threads writing to the scheduled bank
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Pause of each transfer thread between transfers
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// Where the loop image, catalogs and banks go [default: $TMPDIR]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:agent markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl AgentArgs {
    /// The tools the chosen parts need.
    pub fn tools(&self) -> Vec<&'static str> {
        if self.parts.contains(&Part::Schedule) {
            vec!["mkfs.xfs", "cp"]
        } else {
            Vec::new()
        }
    }

    fn baseline_minutes(&self) -> u64 {
        self.baseline_minutes.unwrap_or(self.minutes)
    }
}

/// Runs the agent workload (as root).
pub fn bench(args: &AgentArgs) -> anyhow::Result<()> {
    common::use_dir(args.dir.as_deref())?;
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    let mut parts = args.parts.clone();
    parts.dedup();
    for part in parts {
        let load_before = loadavg();
        let table = match part {
            Part::Idle => {
                eprintln!(
                    "idle: an agent with nothing to do, {} s ...",
                    args.idle_seconds
                );
                let idle = idle(args, &bin).context("the idle agent")?;
                idle.table()
            }
            Part::Api => {
                eprintln!(
                    "api: {} copies in the catalog, {} requests per endpoint ...",
                    args.copies, args.requests
                );
                let api = api(args, &bin).context("the API latency")?;
                api.table()
            }
            Part::Schedule => {
                eprintln!(
                    "schedule: a copy a minute of a {} bank under load, {} min (baseline {} min) ...",
                    human_bytes(args.size),
                    args.minutes,
                    args.baseline_minutes()
                );
                let schedule = schedule(args, &bin).context("a copy a minute")?;
                schedule.table(args)
            }
        };
        println!("{table}\n");
        // Each part has its own markers, so that one part can be run again alone.
        if let Some(path) = &args.markdown {
            let section = format!(
                "{}\n{table}",
                environment(part, &bin, &load_before, &loadavg())
            );
            let name = format!("agent-{}", part.name());
            common::write_section(path, &name, &section)?;
            eprintln!("wrote the {name} results into {}", path.display());
        }
    }
    Ok(())
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Idle => "idle",
            Part::Api => "api",
            Part::Schedule => "schedule",
        }
    }
}

// ---------------------------------------------------------------------------------------
// The agent process and what /proc says of it.

/// A running `shadowcopy agent`; killed when dropped without [`Agent::stop`].
pub(crate) struct Agent {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    /// Wall time (Unix ms) just before it was spawned.
    spawned_ms: i64,
}

impl Agent {
    /// Starts the agent on `catalog` with `config` (its log in `log`) and waits until its
    /// API answers.
    fn start(bin: &Path, catalog: &Path, config: &Path, log: &Path) -> anyhow::Result<Agent> {
        Agent::start_with(bin, catalog, config, log, |_| {})
    }

    /// [`Agent::start`] with more arguments (after `agent --socket S`) or environment.
    pub(crate) fn start_with(
        bin: &Path,
        catalog: &Path,
        config: &Path,
        log: &Path,
        more: impl FnOnce(&mut Command),
    ) -> anyhow::Result<Agent> {
        let socket = catalog.join("agent.sock");
        let spawned_ms = now_ms();
        let mut command = Command::new(bin);
        command
            .arg("--config")
            .arg(config)
            .arg("--catalog")
            .arg(catalog)
            .arg("agent")
            .arg("--socket")
            .arg(&socket);
        more(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).with_context(|| format!("creating {}", log.display()))?)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let mut agent = Agent {
            child: Some(child),
            socket,
            log: log.to_path_buf(),
            spawned_ms,
        };
        agent.wait_up()?;
        Ok(agent)
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the agent runs until stopped")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent runs").id()
    }

    fn wait_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child().try_wait()? {
                bail!(
                    "the agent exited ({status}) before its API answered; its log ends:\n{}",
                    self.log_tail()
                );
            }
            if client::request(
                &self.socket,
                "GET",
                "/v1/status",
                None,
                Duration::from_secs(5),
            )
            .is_ok_and(|a| a.status == 200)
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the agent did not answer on {} within a minute; its log ends:\n{}",
                self.socket.display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path`, which must answer 200.
    fn get(&self, path: &str) -> anyhow::Result<client::Answer> {
        let answer = client::request(&self.socket, "GET", path, None, Duration::from_secs(60))
            .with_context(|| format!("GET {path}"))?;
        ensure!(
            answer.status == 200,
            "GET {path} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        Ok(answer)
    }

    /// SIGTERM, then its exit (it finishes a running job first), which must be clean.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).context("no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            if let Some(status) = self.child().try_wait()? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "the agent did not stop within 10 minutes of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.child = None;
        ensure!(
            status.success(),
            "the agent exited {status}; its log ends:\n{}",
            self.log_tail()
        );
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Memory of a process, from /proc/PID/status (KiB).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mem {
    pub(crate) rss: u64,
    pub(crate) hwm: u64,
    pub(crate) anon: u64,
    pub(crate) threads: u64,
}

pub(crate) fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub(crate) fn mem(pid: u32) -> anyhow::Result<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |key| status_field(&s, key).with_context(|| format!("no {key} for {pid}"));
    Ok(Mem {
        rss: get("VmRSS")?,
        hwm: get("VmHWM")?,
        anon: get("RssAnon")?,
        threads: get("Threads")?,
    })
}

/// CPU time of a process: clock ticks of /proc/PID/stat (utime + stime, plus its
/// waited-for children's), the nanoseconds its live threads ran (schedstat) and their
/// context switches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cpu {
    pub(crate) at: Instant,
    pub(crate) ticks: u64,
    pub(crate) sched_ns: u64,
    pub(crate) switches: u64,
}

pub(crate) fn cpu(pid: u32) -> anyhow::Result<Cpu> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("/proc/PID/stat without a name")? + 1..];
    // After the name come fields 3 (state) onwards: utime 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.iter().sum();
    let (mut sched_ns, mut switches) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
            sched_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(dir.join("status")) {
            switches += status_field(&s, "voluntary_ctxt_switches").unwrap_or(0)
                + status_field(&s, "nonvoluntary_ctxt_switches").unwrap_or(0);
        }
    }
    Ok(Cpu {
        at,
        ticks,
        sched_ns,
        switches,
    })
}

pub(crate) fn clock_ticks() -> u64 {
    common::sh("getconf", &["CLK_TCK"]).parse().unwrap_or(100)
}

/// The CPU time of the whole machine (ticks of /proc/stat, all CPUs) and of this
/// process (with its load threads) plus `pids` (the agent), to tell what other processes
/// (another developer's build, say) took while a figure was measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Busy {
    at: Instant,
    machine: u64,
    ours: u64,
}

impl Busy {
    pub(crate) fn now(pids: &[u32]) -> Busy {
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("cpu "))?.to_string();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .map(|f| f.parse().unwrap_or(0))
                    .collect();
                // user nice system idle iowait irq softirq steal: all but idle and iowait.
                Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
            })
            .unwrap_or(0);
        let ours = std::iter::once(std::process::id())
            .chain(pids.iter().copied())
            .filter_map(|pid| cpu(pid).ok())
            .map(|c| c.ticks)
            .sum();
        Busy {
            at: Instant::now(),
            machine,
            ours,
        }
    }

    /// The share of all CPUs that other processes (and the kernel's threads) used since
    /// `self`, in per cent.
    pub(crate) fn others_since(&self, later: &Busy) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ticks = (later.machine - self.machine).saturating_sub(later.ours - self.ours);
        100.0 * ticks as f64 / clock_ticks() as f64 / (later.at - self.at).as_secs_f64() / cpus
    }
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A SQLite set of the config (`extra`: lines of the set's table).
pub(crate) fn sqlite_set(name: &str, db: &Path, extra: &str) -> String {
    format!(
        "[sets.{name}]\n{extra}\n[[sets.{name}.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n\n",
        db.display()
    )
}

/// A directory for one part: its catalog, config, banks and the agent's log.
fn workdir(part: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("shadowcopy-bench-agent-{part}-"))
        .tempdir()?)
}

/// The jobs the catalog holds: (kind, set, trigger, state, created, started, finished,
/// result).
type JobRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn jobs(catalog: &Path) -> anyhow::Result<Vec<JobRow>> {
    let conn =
        Connection::open_with_flags(catalog.join("catalog.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mut stmt = conn.prepare(
        "SELECT kind, set_name, trigger, state, created_ms, started_ms, finished_ms, result \
         FROM jobs ORDER BY id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .collect::<Result<Vec<JobRow>, _>>()?;
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// 1. Idle.

struct Idle {
    sets: usize,
    schedules: usize,
    after_start: Mem,
    after_idle: Mem,
    seconds: f64,
    ticks: u64,
    clk_tck: u64,
    sched_ns: u64,
    switches: u64,
    others: f64,
}

fn idle(args: &AgentArgs, bin: &Path) -> anyhow::Result<Idle> {
    let work = workdir("idle")?;
    let catalog = work.path().join("catalog");
    let mut config = String::new();
    for (name, extra) in [
        (
            "a",
            format!(
                "provider = \"copy\"\nschedule = \"{NEVER}\"\n[sets.a.retention]\nkeep_last = 5"
            ),
        ),
        (
            "b",
            format!("provider = \"copy\"\nschedule = \"{NEVER}\"\nverify_schedule = \"{NEVER}\""),
        ),
        ("c", "provider = \"copy\"".to_string()),
    ] {
        let db = work.path().join(format!("{name}.db"));
        shadowcopy_sample::create(&db, ACCOUNTS, true)?;
        config += &sqlite_set(name, &db, &extra);
    }
    let config_path = work.path().join("agent.toml");
    std::fs::write(&config_path, config)?;

    let agent = Agent::start(bin, &catalog, &config_path, &work.path().join("agent.log"))?;
    let status = agent.get("/v1/status")?.json()?;
    let schedules = status["schedules"].as_array().map_or(0, Vec::len);
    ensure!(
        status["running"].is_null() && status["queued"].as_array().is_some_and(Vec::is_empty),
        "the idle agent has work: {status}"
    );
    // Let it settle (its runtime's threads, the first catalog reads) before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.pid();
    let after_start = mem(pid)?;
    let (c0, busy) = (cpu(pid)?, Busy::now(&[pid]));
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let (c1, others) = (cpu(pid)?, busy.others_since(&Busy::now(&[pid])));
    let after_idle = mem(pid)?;
    agent.stop()?;
    let ran = jobs(&catalog)?;
    ensure!(ran.is_empty(), "the idle agent ran jobs: {ran:?}");
    let idle = Idle {
        sets: 3,
        schedules,
        after_start,
        after_idle,
        seconds: (c1.at - c0.at).as_secs_f64(),
        ticks: c1.ticks - c0.ticks,
        clk_tck: clock_ticks(),
        sched_ns: c1.sched_ns.saturating_sub(c0.sched_ns),
        switches: c1.switches.saturating_sub(c0.switches),
        others,
    };
    eprintln!(
        "  RSS {} (peak {}), CPU {:.4} % of a core (ticks), {:.4} % (schedstat), {:.1} wake-ups/s",
        mib(idle.after_idle.rss),
        mib(idle.after_idle.hwm),
        idle.cpu_ticks_percent(),
        idle.cpu_sched_percent(),
        idle.switches as f64 / idle.seconds
    );
    Ok(idle)
}

impl Idle {
    fn cpu_ticks_percent(&self) -> f64 {
        100.0 * self.ticks as f64 / self.clk_tck as f64 / self.seconds
    }

    fn cpu_sched_percent(&self) -> f64 {
        100.0 * self.sched_ns as f64 / 1e9 / self.seconds
    }

    fn table(&self) -> String {
        format!(
            "**Idle** ({sets} sets, {schedules} schedules none of which falls due, an empty catalog; \
             measured over {secs:.0} s after it answered and settled for 2 s)\n\n\
             | figure | value | goal |\n|---|---|---|\n\
             | RSS (VmRSS) after start | {rss0} | |\n\
             | RSS (VmRSS) after {secs:.0} s idle | {rss1} (of it anonymous: {anon}) | < 30 MB |\n\
             | peak RSS (VmHWM) | {hwm} | |\n\
             | threads | {threads} | |\n\
             | CPU, utime+stime of /proc/PID/stat | {ticks} ticks of 1/{clk} s = {pt:.3} % of a core | < 0.1 % |\n\
             | CPU, all threads' schedstat | {ns:.1} ms = {ps:.4} % of a core | < 0.1 % |\n\
             | context switches (all threads) | {sw} = {swps:.1}/s | |\n\
             | meanwhile, CPU of other processes (of both cores) | {others:.1} % | |",
            sets = self.sets,
            schedules = self.schedules,
            secs = self.seconds,
            rss0 = mib(self.after_start.rss),
            rss1 = mib(self.after_idle.rss),
            anon = mib(self.after_idle.anon),
            hwm = mib(self.after_idle.hwm),
            threads = self.after_idle.threads,
            ticks = self.ticks,
            clk = self.clk_tck,
            pt = self.cpu_ticks_percent(),
            ns = self.sched_ns as f64 / 1e6,
            ps = self.cpu_sched_percent(),
            sw = self.switches,
            swps = self.switches as f64 / self.seconds,
            others = self.others,
        )
    }
}

// ---------------------------------------------------------------------------------------
// 2. API latency.

struct Endpoint {
    path: String,
    /// Bytes of the answer's body.
    bytes: usize,
    /// Request times, sorted.
    times: Vec<Duration>,
    /// The agent's CPU time per request (ticks of /proc/PID/stat).
    cpu_per_request: Duration,
}

struct Api {
    copies: u64,
    real: u64,
    catalog_bytes: u64,
    synthesis: Duration,
    requests: u32,
    endpoints: Vec<Endpoint>,
    before: Mem,
    after: Mem,
    /// Per cent of all CPUs other processes used while the requests ran.
    others: f64,
}

/// The real copies made before the synthetic ones.
const REAL_COPIES: u64 = 3;

fn api(args: &AgentArgs, bin: &Path) -> anyhow::Result<Api> {
    let work = workdir("api")?;
    let catalog = work.path().join("catalog");
    let db = work.path().join("bank.db");
    shadowcopy_sample::create(&db, ACCOUNTS, true)?;
    let config_path = work.path().join("agent.toml");
    std::fs::write(
        &config_path,
        sqlite_set(
            "bank",
            &db,
            &format!("provider = \"copy\"\nschedule = \"{NEVER}\""),
        ),
    )?;
    create_copies(bin, &config_path, &catalog, REAL_COPIES)?;
    let t = Instant::now();
    let last_id = synthesize(&catalog, args.copies)?;
    let synthesis = t.elapsed();
    let catalog_bytes = ["catalog.db", "catalog.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(catalog.join(f)).ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "  {} copies ({} synthetic, added in {}), catalog {}",
        args.copies,
        args.copies - REAL_COPIES,
        human(synthesis),
        human_bytes(catalog_bytes)
    );

    let agent = Agent::start(bin, &catalog, &config_path, &work.path().join("agent.log"))?;
    let pid = agent.pid();
    let before = mem(pid)?;
    let clk = clock_ticks();
    let busy = Busy::now(&[pid]);
    let mut endpoints = Vec::new();
    for path in [
        "/v1/copies".to_string(),
        // A page of the newest 100, as a console shows them.
        format!("/v1/copies?after={}&limit=100", last_id - 100),
        "/v1/sets".into(),
        "/metrics".into(),
        "/v1/status".into(),
        format!("/v1/copies/{last_id}"),
    ] {
        let c0 = cpu(pid)?;
        let mut times = Vec::new();
        let mut bytes = 0;
        for i in 0..args.requests {
            let t = Instant::now();
            let answer = agent.get(&path)?;
            times.push(t.elapsed());
            bytes = answer.body.len();
            let listing = path.starts_with("/v1/copies?") || path == "/v1/copies";
            if listing && (i == 0 || i + 1 == args.requests) {
                let n = answer.json()?.as_array().map_or(0, Vec::len) as u64;
                let want = if path == "/v1/copies" {
                    args.copies
                } else {
                    100
                };
                ensure!(n == want, "{path} lists {n} copies, not {want}");
            }
        }
        let c1 = cpu(pid)?;
        times.sort_unstable();
        let endpoint = Endpoint {
            path,
            bytes,
            cpu_per_request: Duration::from_secs_f64(
                (c1.ticks - c0.ticks) as f64 / clk as f64 / f64::from(args.requests),
            ),
            times,
        };
        eprintln!(
            "  {}: p50 {}, p99 {}, max {}",
            endpoint.path,
            human(percentile(&endpoint.times, 50.0)),
            human(percentile(&endpoint.times, 99.0)),
            human(*endpoint.times.last().expect("at least one request")),
        );
        endpoints.push(endpoint);
    }
    let after = mem(pid)?;
    let others = busy.others_since(&Busy::now(&[pid]));
    agent.stop()?;
    Ok(Api {
        others,
        copies: args.copies,
        real: REAL_COPIES,
        catalog_bytes,
        synthesis,
        requests: args.requests,
        endpoints,
        before,
        after,
    })
}

/// The columns of `table` but `skip`.
fn columns(conn: &Connection, table: &str, skip: &str) -> anyhow::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names.into_iter().filter(|c| c != skip).collect())
}

/// `count` real copies of the set `bank` of `config` (`shadowcopy create bank`).
pub(crate) fn create_copies(
    bin: &Path,
    config: &Path,
    catalog: &Path,
    count: u64,
) -> anyhow::Result<()> {
    for _ in 0..count {
        let out = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("--catalog")
            .arg(catalog)
            .args(["create", "bank", "--json"])
            .output()?;
        ensure!(
            out.status.success(),
            "`shadowcopy create bank` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fills the catalog up to `total` copies with copies of its newest usable copy (new ids,
/// one minute apart going back in time, each its own location, and the same files,
/// phases, components and verifications); the id of the newest copy.
pub(crate) fn synthesize(catalog: &Path, total: u64) -> anyhow::Result<i64> {
    let mut conn = Connection::open(catalog.join("catalog.db"))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let (template, have): (i64, i64) = conn.query_row(
        "SELECT (SELECT MAX(id) FROM copies WHERE state = 'usable'), (SELECT COUNT(*) FROM copies)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let copy_columns = columns(&conn, "copies", "id")?;
    let select: Vec<String> = copy_columns
        .iter()
        .map(|c| match c.as_str() {
            "location" => "location || '.synthetic-' || ?2".to_string(),
            "created_ms" | "finished_ms" => format!("{c} - ?3"),
            _ => c.clone(),
        })
        .collect();
    let insert_copy = format!(
        "INSERT INTO copies ({}) SELECT {} FROM copies WHERE id = ?1",
        copy_columns.join(", "),
        select.join(", ")
    );
    let mut children = Vec::new();
    for table in ["files", "phases", "components", "verifications"] {
        let cols = columns(&conn, table, "copy_id")?.join(", ");
        children.push(format!(
            "INSERT INTO {table} (copy_id, {cols}) SELECT ?2, {cols} FROM {table} WHERE copy_id = ?1"
        ));
    }
    let tx = conn.transaction()?;
    let missing = total.saturating_sub(have as u64) as i64;
    let mut last = template;
    for i in 0..missing {
        let back_ms = (missing - i) * 60_000;
        tx.execute(&insert_copy, params![template, i, back_ms])?;
        last = tx.last_insert_rowid();
        for sql in &children {
            tx.execute(sql, params![template, last])?;
        }
    }
    tx.commit()?;
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM copies", [], |r| r.get(0))?;
    ensure!(
        count as u64 == total,
        "the catalog holds {count} copies, not {total}"
    );
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    Ok(last)
}

/// The nearest-rank percentile `p` of sorted durations.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

impl Api {
    fn table(&self) -> String {
        let mut t = format!(
            "**API latency** ({copies} copies in the catalog: {real} real, {synthetic} synthetic \
             rows added in {synthesis}; catalog.db {size}; {requests} sequential requests per \
             endpoint, each a new connection through `shadowcopy_agent::client::request`)\n\n\
             | request | answer | p50 | p95 | p99 | max | agent CPU per request |\n\
             |---|---|---|---|---|---|---|",
            copies = self.copies,
            real = self.real,
            synthetic = self.copies - self.real,
            synthesis = human(self.synthesis),
            size = human_bytes(self.catalog_bytes),
            requests = self.requests,
        );
        for e in &self.endpoints {
            let path = match e.path.strip_prefix("/v1/copies/") {
                Some(_) => "/v1/copies/{id}".to_string(),
                None => e.path.clone(),
            };
            t += &format!(
                "\n| GET {path} | {} | {} | {} | {} | {} | {} |",
                answer_size(e.bytes),
                human(percentile(&e.times, 50.0)),
                human(percentile(&e.times, 95.0)),
                human(percentile(&e.times, 99.0)),
                human(*e.times.last().expect("at least one request")),
                human(e.cpu_per_request),
            );
        }
        t += &format!(
            "\n\nThe agent's memory with this catalog: VmRSS {} after start, {} after the requests \
             (peak VmHWM {}). Other processes used {:.1} % of both cores while the requests ran. \
             Goal for `GET /v1/copies`: p99 < 50 ms.",
            mib(self.before.rss),
            mib(self.after.rss),
            mib(self.after.hwm),
            self.others,
        );
        t
    }
}

fn answer_size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

// ---------------------------------------------------------------------------------------
// 3. A copy a minute under load.

/// What the load did over one measured window.
struct LoadRun {
    seconds: f64,
    committed: usize,
    /// Transfers per second of each whole minute.
    per_minute: Vec<f64>,
    /// The longest transfer of each whole minute.
    stalls: Vec<Duration>,
    load_at_start: String,
    load_at_end: String,
    /// Per cent of all CPUs used by other processes.
    others: f64,
}

impl LoadRun {
    fn rate(&self) -> f64 {
        self.committed as f64 / self.seconds
    }

    fn longest(&self) -> Duration {
        self.stalls.iter().copied().max().unwrap_or_default()
    }
}

/// Measures the running load for `minutes` whole minutes.
fn measure(load: &shadowcopy_sample::Transfers, minutes: u64, agent: &[u32]) -> LoadRun {
    let load_at_start = loadavg();
    let busy = Busy::now(agent);
    let start = Instant::now();
    let first = load.committed();
    load.reset_longest_stall();
    let (mut per_minute, mut stalls) = (Vec::new(), Vec::new());
    let mut previous = (start, first);
    for m in 1..=minutes {
        let mark = start + Duration::from_secs(60 * m);
        std::thread::sleep(mark.saturating_duration_since(Instant::now()));
        let (now, committed) = (Instant::now(), load.committed());
        stalls.push(load.longest_stall());
        load.reset_longest_stall();
        per_minute.push((committed - previous.1) as f64 / (now - previous.0).as_secs_f64());
        previous = (now, committed);
    }
    eprintln!(
        "  transfers/s per minute: {}",
        per_minute
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    LoadRun {
        seconds: (previous.0 - start).as_secs_f64(),
        committed: previous.1 - first,
        per_minute,
        stalls,
        load_at_start,
        load_at_end: loadavg(),
        others: busy.others_since(&Busy::now(agent)),
    }
}

struct Schedule {
    /// The load without the agent, before and (with `--baseline-minutes` of 2 or more)
    /// after the run with it.
    before: LoadRun,
    with_agent: LoadRun,
    after: Option<LoadRun>,
    slots: usize,
    /// Slots with a `create` job done.
    taken: usize,
    /// Create jobs by state (other than done) and extra ones outside a slot, as text.
    other_jobs: Vec<String>,
    /// Per done create job: queued and started after its slot, and its duration.
    queue_delays: Vec<Duration>,
    start_delays: Vec<Duration>,
    durations: Vec<Duration>,
    freeze_windows: Vec<Duration>,
    prunes_done: usize,
    usable: usize,
    newest_verified: bool,
    failed_copies: usize,
    dirs_on_disk: usize,
    agent_cpu: Duration,
    agent_mem: Mem,
    bank_bytes: u64,
    used_before: u64,
    used_after: u64,
}

fn used_bytes(path: &Path) -> u64 {
    rustix::fs::statvfs(path)
        .map(|s| (s.f_blocks - s.f_bfree) * s.f_frsize)
        .unwrap_or(0)
}

/// A bank at `bank` from a reflink clone of `pristine` (and its WAL, if any).
fn fresh_bank(pristine: &Path, bank: &Path) -> anyhow::Result<()> {
    let dir = bank.parent().context("the bank has a directory")?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", pristine.display()));
        if from.exists() {
            let to = format!("{}{suffix}", bank.display());
            let ok = Command::new("cp")
                .arg("--reflink=always")
                .arg(&from)
                .arg(&to)
                .status()?
                .success();
            ensure!(ok, "cp --reflink=always {} {to} failed", from.display());
        }
    }
    Ok(())
}

/// Sleeps until the wall clock is `second` seconds past a minute.
fn sleep_until_second(second: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let into = Duration::from_millis((now.as_millis() % 60_000) as u64);
    let target = Duration::from_secs(second);
    let wait = if into <= target {
        target - into
    } else {
        target + Duration::from_secs(60) - into
    };
    std::thread::sleep(wait);
}

/// The load for `minutes` on a fresh bank, without the agent.
fn without_agent(
    args: &AgentArgs,
    pristine: &Path,
    bank: &Path,
    minutes: u64,
) -> anyhow::Result<LoadRun> {
    fresh_bank(pristine, bank)?;
    drop_caches()?;
    let load = shadowcopy_sample::start_transfers(bank, args.threads, args.pause);
    std::thread::sleep(Duration::from_secs(5));
    eprintln!("  the load without the agent, {minutes} min ...");
    let run = measure(&load, minutes, &[]);
    stop_load(load)?;
    eprintln!(
        "  {:.0} transfers/s, longest stall {}",
        run.rate(),
        human(run.longest())
    );
    Ok(run)
}

fn schedule(args: &AgentArgs, bin: &Path) -> anyhow::Result<Schedule> {
    let fs = LoopFs::new(FsKind::Xfs, args.size * 12 + (2 << 30)).map_err(|e| anyhow!(e))?;
    let pristine = fs.path().join("pristine.db");
    let bank = fs.path().join("bank").join("bank.db");
    let copies_dir = fs.path().join("copies");
    eprintln!(
        "  creating the bank, padded to {} ...",
        human_bytes(args.size)
    );
    let t = Instant::now();
    shadowcopy_sample::create(&pristine, ACCOUNTS, true)?;
    shadowcopy_sample::pad_to(&pristine, args.size)?;
    let bank_bytes = std::fs::metadata(&pristine)?.len();
    eprintln!("  {} in {}", human_bytes(bank_bytes), human(t.elapsed()));

    // Without the agent, half before the run with it and half after, so that a machine
    // that gets busier or quieter over the hour shows.
    let baseline = args.baseline_minutes();
    let before = without_agent(args, &pristine, &bank, baseline.div_ceil(2))?;

    // With the agent: a copy a minute.
    fresh_bank(&pristine, &bank)?;
    let work = workdir("schedule")?;
    let catalog = work.path().join("catalog");
    let config_path = work.path().join("agent.toml");
    std::fs::write(
        &config_path,
        sqlite_set(
            "bank",
            &bank,
            &format!(
                "provider = \"{}\"\ncopies_dir = \"{}\"\nschedule = \"0 * * * * *\"\nverify = {}\n\
                 [sets.bank.retention]\nkeep_last = {}",
                args.provider,
                copies_dir.display(),
                !args.no_verify,
                args.keep_last
            ),
        ),
    )?;
    drop_caches()?;
    let used_before = used_bytes(fs.path());
    // The load warms up for 5 s, the agent starts 20 s before a minute: the window of
    // N minutes then holds N slots and ends 40 s after the last one.
    sleep_until_second(35);
    let load = shadowcopy_sample::start_transfers(&bank, args.threads, args.pause);
    std::thread::sleep(Duration::from_secs(5));
    let agent = match Agent::start(bin, &catalog, &config_path, &work.path().join("agent.log")) {
        Ok(agent) => agent,
        Err(e) => {
            load.stop();
            return Err(e);
        }
    };
    eprintln!("  the load with the agent, {} min ...", args.minutes);
    let (pid, spawned) = (agent.pid(), agent.spawned_ms);
    let c0 = cpu(pid)?;
    let with_agent = measure(&load, args.minutes, &[pid]);
    let window_end_ms = now_ms();
    let c1 = cpu(pid)?;
    let agent_mem = mem(pid)?;
    // The last slot's create and prune are normally done by now; wait for them, but
    // stop before the next slot.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && jobs(&catalog)?
            .iter()
            .any(|j| j.3 == "queued" || j.3 == "running")
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = agent.stop();
    let loaded = stop_load(load);
    stopped?;
    loaded?;
    let used_after = used_bytes(fs.path());
    let after = match baseline / 2 {
        0 => None,
        minutes => Some(without_agent(args, &pristine, &bank, minutes)?),
    };
    let agent_cpu = Duration::from_secs_f64((c1.ticks - c0.ticks) as f64 / clock_ticks() as f64);

    // Every slot in the window must have its copy.
    let all = jobs(&catalog)?;
    let first_slot = (spawned / 60_000 + 1) * 60_000;
    let slots: Vec<i64> = (first_slot..=window_end_ms).step_by(60_000).collect();
    let mut taken = 0;
    let mut other_jobs = Vec::new();
    let mut queue_delays = Vec::new();
    let (mut start_delays, mut durations, mut freeze_windows) =
        (Vec::new(), Vec::new(), Vec::new());
    for slot in &slots {
        let mine: Vec<&JobRow> = all
            .iter()
            .filter(|j| j.0 == "create" && j.4 >= *slot && j.4 < slot + 60_000)
            .collect();
        if mine.iter().any(|j| j.3 == "done") {
            taken += 1;
        }
        for j in mine {
            if j.3 != "done" {
                other_jobs.push(format!("create {} ({}): {:?}", j.3, j.2, j.7));
                continue;
            }
            queue_delays.push(Duration::from_millis((j.4 - slot).max(0) as u64));
            if let (Some(started), Some(finished)) = (j.5, j.6) {
                start_delays.push(Duration::from_millis((started - slot).max(0) as u64));
                durations.push(Duration::from_millis((finished - started).max(0) as u64));
            }
            if let Some(fw) =
                j.7.as_deref()
                    .and_then(|r| r.split("freeze window ").nth(1))
                    .and_then(|d| humantime::parse_duration(d.trim()).ok())
            {
                freeze_windows.push(fw);
            }
        }
    }
    let in_slots =
        |j: &&JobRow| j.4 >= first_slot && j.4 < first_slot + 60_000 * slots.len() as i64;
    for j in all.iter().filter(|j| j.0 == "create" && !in_slots(j)) {
        other_jobs.push(format!(
            "create outside a slot, {} ({}): {:?}",
            j.3, j.2, j.7
        ));
    }
    for j in all.iter().filter(|j| j.0 != "create" && j.0 != "prune") {
        other_jobs.push(format!("{} {} ({}): {:?}", j.0, j.3, j.2, j.7));
    }
    for j in all.iter().filter(|j| j.0 == "prune" && j.3 != "done") {
        other_jobs.push(format!("prune {} ({}): {:?}", j.3, j.2, j.7));
    }
    let prunes_done = all
        .iter()
        .filter(|j| j.0 == "prune" && j.3 == "done")
        .count();

    // Retention: keep_last usable copies, the newest verified, as many directories.
    let conn =
        Connection::open_with_flags(catalog.join("catalog.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let copies: Vec<(String, String)> = conn
        .prepare("SELECT state, verify_state FROM copies WHERE set_name = 'bank' ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let usable: Vec<&(String, String)> = copies.iter().filter(|c| c.0 == "usable").collect();
    let dirs_on_disk = std::fs::read_dir(&copies_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("copy-"))
                .count()
        })
        .unwrap_or(0);
    let schedule = Schedule {
        slots: slots.len(),
        taken,
        other_jobs,
        queue_delays,
        start_delays,
        durations,
        freeze_windows,
        prunes_done,
        usable: usable.len(),
        newest_verified: usable.last().is_some_and(|c| c.1 == "passed"),
        failed_copies: copies.iter().filter(|c| c.0 == "failed").count(),
        dirs_on_disk,
        agent_cpu,
        agent_mem,
        bank_bytes,
        used_before,
        used_after,
        before,
        with_agent,
        after,
    };
    eprintln!(
        "  {} of {} slots copied, {} usable copies ({} directories), {:.0} transfers/s \
         (without the agent {:.0}), longest stall {}",
        schedule.taken,
        schedule.slots,
        schedule.usable,
        schedule.dirs_on_disk,
        schedule.with_agent.rate(),
        schedule.without_rate(),
        human(schedule.with_agent.longest()),
    );
    for other in &schedule.other_jobs {
        eprintln!("  job: {other}");
    }
    Ok(schedule)
}

impl Schedule {
    /// The runs without the agent.
    fn without(&self) -> Vec<&LoadRun> {
        std::iter::once(&self.before).chain(&self.after).collect()
    }

    /// Transfers per second of the runs without the agent together.
    fn without_rate(&self) -> f64 {
        let runs = self.without();
        let committed: usize = runs.iter().map(|r| r.committed).sum();
        committed as f64 / runs.iter().map(|r| r.seconds).sum::<f64>()
    }

    fn table(&self, args: &AgentArgs) -> String {
        let spread = |v: &[f64]| stats::number_cell(v, |x| format!("{x:.0}"));
        let dur = |v: &[Duration]| stats::Spread::of(v).map_or("–".into(), |s| s.cell());
        let runs = [
            Some(&self.before),
            Some(&self.with_agent),
            self.after.as_ref(),
        ];
        let row = |label: &str, cell: &dyn Fn(&LoadRun) -> String| {
            let cells: Vec<String> = runs
                .iter()
                .map(|r| r.map_or("–".to_string(), cell))
                .collect();
            format!("| {label} | {} |\n", cells.join(" | "))
        };
        let mut t = format!(
            "**A copy a minute under load** (bank {bank} on XFS, {threads} transfer threads with a \
             {pause} pause; `schedule = \"0 * * * * *\"`, provider `{provider}`, `keep_last = {keep}`{verify}; \
             the runs one after the other, each from a reflink clone of the same fresh bank)\n\n\
             | figure | without the agent, before | with the agent | without the agent, after |\n\
             |---|---|---|---|\n",
            bank = human_bytes(self.bank_bytes),
            threads = args.threads,
            pause = humantime::format_duration(args.pause),
            provider = args.provider,
            keep = args.keep_last,
            verify = if args.no_verify { ", `verify = false`" } else { "" },
        );
        t += &row("minutes measured", &|r| r.per_minute.len().to_string());
        t += &row("transfers/s over the run", &|r| format!("{:.0}", r.rate()));
        t += &format!(
            "| transfers/s, with the agent against without (both runs) | | {:.0} against {:.0}: {:+.1} % | |\n",
            self.with_agent.rate(),
            self.without_rate(),
            100.0 * (self.with_agent.rate() / self.without_rate() - 1.0)
        );
        t += &row("transfers/s per minute, median (min – max)", &|r| {
            spread(&r.per_minute)
        });
        t += &row("longest transfer (stall) in the run", &|r| {
            human(r.longest())
        });
        t += &row("longest transfer per minute, median (min – max)", &|r| {
            dur(&r.stalls)
        });
        t += &row("CPU of other processes (of both cores)", &|r| {
            format!("{:.1} %", r.others)
        });
        t += &row("load average (1/5/15 min) at start / end", &|r| {
            format!("{} / {}", r.load_at_start, r.load_at_end)
        });
        t += "\n";
        let per_copy = if self.taken > 0 {
            format!(
                " ({:.2} s per copy)",
                self.agent_cpu.as_secs_f64() / self.taken as f64
            )
        } else {
            String::new()
        };
        t += &format!(
            "| the agent's schedule | value |\n|---|---|\n\
             | minute slots in the window | {slots} |\n\
             | slots with their create job done | {taken} (missed: {missed}) |\n\
             | other jobs (not done, or outside a slot) | {other} |\n\
             | create job queued after its slot, median (min – max) | {queued} |\n\
             | create job started after its slot, median (min – max) | {delay} |\n\
             | create job duration (copy{plus_verify}), median (min – max) | {durations} |\n\
             | freeze window, median (min – max) | {freeze} |\n\
             | prune jobs done | {prunes} |\n\
             | usable copies at the end (goal: {keep}, newest verified) | {usable}, newest verified: {verified} |\n\
             | failed copies | {failed} |\n\
             | copy directories on disk at the end | {dirs} |\n\
             | XFS space used before / after the run | {ub} / {ua} |\n\
             | agent CPU time over the window | {cpu:.1} s{per_copy} |\n\
             | agent memory at the end of the window | VmRSS {rss}, peak VmHWM {hwm} |",
            slots = self.slots,
            taken = self.taken,
            missed = self.slots - self.taken,
            other = if self.other_jobs.is_empty() {
                "none".to_string()
            } else {
                self.other_jobs.join("; ").replace('|', "\\|")
            },
            queued = dur(&self.queue_delays),
            delay = dur(&self.start_delays),
            durations = dur(&self.durations),
            plus_verify = if args.no_verify { "" } else { " + verify" },
            freeze = dur(&self.freeze_windows),
            prunes = self.prunes_done,
            keep = args.keep_last.min(self.slots as u32),
            usable = self.usable,
            verified = if self.newest_verified { "yes" } else { "NO" },
            failed = self.failed_copies,
            dirs = self.dirs_on_disk,
            ub = human_bytes(self.used_before),
            ua = human_bytes(self.used_after),
            cpu = self.agent_cpu.as_secs_f64(),
            rss = mib(self.agent_mem.rss),
            hwm = mib(self.agent_mem.hwm),
        );
        t
    }
}

/// Date, machine, version and the bench's priority, as a Markdown list.
fn environment(part: Part, bin: &Path, load_before: &str, load_after: &str) -> String {
    let common = common::environment(
        "an XFS file system (the bank and its copies; the catalog on the host's disk)",
        load_before,
        load_after,
    );
    let common: String = match part {
        Part::Schedule => common,
        _ => common
            .lines()
            .filter(|l| !l.starts_with("- disk:"))
            .map(|l| format!("{l}\n"))
            .collect(),
    };
    // Field 19 of /proc/self/stat, counted after the name: the nice value.
    let nice = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s[s.rfind(')')? + 1..]
                .split_whitespace()
                .nth(16)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "{common}\
         - binary: {bin} (`{version}`); the bench, its load threads and the agent at nice {nice}\n",
        bin = bin.display(),
        version = common::sh(&bin.to_string_lossy(), &["--version"]),
    )
}
