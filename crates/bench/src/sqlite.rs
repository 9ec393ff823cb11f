//! `shadowcopy-bench sqlite` (the default workload): how long a shadow copy of a busy
//! SQLite database freezes the application, how long it takes, and how long a restore
//! takes.
//!
//! A bank database (see `shadowcopy-sample`) padded to `--size` lives on an XFS loop file
//! system, so both the `copy` and the `reflink` provider can serve it. For each provider
//! and each of `--runs` runs, with transfer threads writing all the time:
//!
//! 1. the page cache is dropped, the load starts and warms up for a second;
//! 2. the real `shadowcopy create --sqlite DB --provider P --json` runs as a child
//!    process; we record its wall time, the freeze window and the commit and verify phase
//!    times it reports, and the longest transfer the application saw while it ran;
//! 3. for the same duration without a copy we record the longest transfer again (the
//!    baseline: SQLite's own lock contention between the transfer threads);
//! 4. the load stops, `shadowcopy restore ID --discard-current` puts the copy back in
//!    place, and the restored bank must pass `quick_check`, be balanced and hold every
//!    transfer acknowledged before the copy started — otherwise the bench fails;
//! 5. `shadowcopy delete ID` removes the copy so disk use stays bounded.
//!
//! This is a measurement, not a test: nothing asserts on time.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use serde_json::Value;
use shadowcopy_testing::loopfs::{FsKind, LoopFs};

use crate::common::{self, drop_caches, loadavg, micros, phase, shadowcopy};
use crate::stats::{self, human, human_bytes, Spread};

pub(crate) const ACCOUNTS: i64 = 1_000;

/// Options of the SQLite workload.
#[derive(clap::Args, Debug)]
pub struct SqliteArgs {
    /// Size the database is padded to
    #[arg(long, default_value = "1GiB", value_parser = stats::parse_size)]
    size: u64,
    /// Runs per provider
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Providers to measure, in order
    #[arg(long, value_delimiter = ',', default_value = "copy,reflink")]
    providers: Vec<String>,
    /// Transfer threads writing during the copy
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Pause of each transfer thread between transfers
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:sqlite markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Pass --no-verify to create (to see what the verify phase costs the application)
    #[arg(long)]
    no_verify: bool,
}

/// What one run measured.
#[derive(Clone, Debug)]
struct Run {
    create_wall: Duration,
    freeze_window: Duration,
    commit: Duration,
    verify: Duration,
    app_stall: Duration,
    baseline_stall: Duration,
    restore_wall: Duration,
    restore_took: Duration,
    post_snapshot: Duration,
    /// When the longest app stall ended and when the freeze began and ended, after the
    /// spawn (phase offsets are sums of phase times, so slightly early).
    stall_ended: Duration,
    frozen_at: Duration,
    thawed_at: Duration,
    /// The restore's own steps with their times, for the log.
    restore_steps: String,
}

/// One row of the table: a label and how to read the figure from a run.
type Figure = (&'static str, fn(&Run) -> Duration);

const FIGURES: [Figure; 9] = [
    ("freeze window (shadowcopy)", |r| r.freeze_window),
    ("commit phase", |r| r.commit),
    ("longest app stall during create", |r| r.app_stall),
    ("longest app stall, no copy (baseline)", |r| {
        r.baseline_stall
    }),
    ("post-snapshot phase (fsyncs the copy)", |r| r.post_snapshot),
    ("verify phase", |r| r.verify),
    ("create, wall time", |r| r.create_wall),
    ("restore, wall time", |r| r.restore_wall),
    ("restore, took_us", |r| r.restore_took),
];

/// Runs the SQLite workload (as root).
pub fn bench(args: &SqliteArgs) -> anyhow::Result<()> {
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    let load_before = loadavg();
    let fs = LoopFs::new(FsKind::Xfs, args.size * 3 + (1 << 30)).map_err(|e| anyhow!(e))?;
    let catalog = tempfile::Builder::new()
        .prefix("shadowcopy-bench-catalog-")
        .tempdir()?;
    let copies = fs.path().join("copies");
    let db = fs.path().join("bank.db");

    eprintln!(
        "creating the bank at {} padded to {} ...",
        db.display(),
        human_bytes(args.size)
    );
    let t = Instant::now();
    shadowcopy_sample::create(&db, ACCOUNTS, true)?;
    shadowcopy_sample::pad_to(&db, args.size)?;
    let db_bytes = std::fs::metadata(&db)?.len();
    eprintln!("  {} in {}", human_bytes(db_bytes), human(t.elapsed()));

    let ctx = Ctx {
        bin: &bin,
        db: &db,
        catalog: catalog.path(),
        copies: &copies,
        args,
    };
    let mut results = Vec::new();
    for provider in &args.providers {
        let mut runs = Vec::new();
        for i in 1..=args.runs {
            eprintln!("{provider}: run {i}/{} ...", args.runs);
            let run = ctx
                .run_once(provider)
                .with_context(|| format!("{provider} run {i}"))?;
            eprintln!(
                "  freeze window {}, commit {}, app stall {} (baseline {}), create {}, restore {}\n  \
                 after spawn: frozen at ≈{}, thawed at ≈{}, longest app stall from {} to {}\n  \
                 restore steps: {}",
                human(run.freeze_window),
                human(run.commit),
                human(run.app_stall),
                human(run.baseline_stall),
                human(run.create_wall),
                human(run.restore_wall),
                human(run.frozen_at),
                human(run.thawed_at),
                human(run.stall_ended.saturating_sub(run.app_stall)),
                human(run.stall_ended),
                run.restore_steps,
            );
            runs.push(run);
        }
        results.push((provider.clone(), runs));
    }

    let table = table(&results);
    println!("{table}");
    if let Some(path) = &args.markdown {
        let section = format!(
            "{}\n{table}\n\n{}",
            environment(args, db_bytes, &load_before, &loadavg()),
            "Cells: median (min – max) over the runs."
        );
        common::write_section(path, "sqlite", &section)?;
        eprintln!("wrote the results into {}", path.display());
    }
    Ok(())
}

/// Everything one run needs.
struct Ctx<'a> {
    bin: &'a Path,
    db: &'a Path,
    catalog: &'a Path,
    copies: &'a Path,
    args: &'a SqliteArgs,
}

impl Ctx<'_> {
    fn shadowcopy(&self, sub: &str, rest: &[String]) -> anyhow::Result<Output> {
        shadowcopy(self.bin, self.catalog, sub, rest)
    }

    fn create_args(&self, provider: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--sqlite".into(),
            self.db.to_string_lossy().into(),
            "--provider".into(),
            provider.into(),
            "--json".into(),
            "--freeze-deadline".into(),
            "120s".into(),
            "--copies-dir".into(),
            self.copies.to_string_lossy().into(),
        ];
        if self.args.no_verify {
            args.push("--no-verify".into());
        }
        args
    }

    fn run_once(&self, provider: &str) -> anyhow::Result<Run> {
        drop_caches()?;
        let load = shadowcopy_sample::start_transfers(self.db, self.args.threads, self.args.pause);
        std::thread::sleep(Duration::from_secs(1));

        // The copy, under load: the stall counter covers exactly the child's lifetime.
        // While it runs we note when the longest stall so far grew, to place it in time.
        load.reset_longest_stall();
        let spawned = Instant::now();
        let child = {
            let ctx = (self.bin.to_path_buf(), self.catalog.to_path_buf());
            let args = self.create_args(provider);
            std::thread::spawn(move || shadowcopy(&ctx.0, &ctx.1, "create", &args))
        };
        let mut stall_end = (Duration::ZERO, Duration::ZERO); // (longest, when it ended)
        while !child.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
            let longest = load.longest_stall();
            if longest > stall_end.0 {
                stall_end = (longest, spawned.elapsed());
            }
        }
        let created = child.join().expect("create thread panicked");
        let create_wall = spawned.elapsed();
        let app_stall = load.longest_stall();
        if app_stall > stall_end.0 {
            stall_end.1 = create_wall;
        }
        let created: Value = match created {
            Ok(out) => serde_json::from_slice(&out.stdout).context("create --json output")?,
            Err(e) => {
                load.stop();
                return Err(e);
            }
        };

        // The same span without a copy: SQLite's own contention between the threads.
        load.reset_longest_stall();
        std::thread::sleep(create_wall);
        let baseline_stall = load.longest_stall();
        let must_hold = load.acknowledged_before(spawned);
        stop_load(load)?;

        let id = created["id"].as_i64().context("create --json has no id")?;
        ensure!(
            self.args.no_verify || created["verification"]["ok"].as_bool() == Some(true),
            "copy {id} did not pass verification: {}",
            created["verification"]
        );
        let restore_start = Instant::now();
        let restored = self.shadowcopy(
            "restore",
            &[id.to_string(), "--json".into(), "--discard-current".into()],
        )?;
        let restore_wall = restore_start.elapsed();
        let restored: Value =
            serde_json::from_slice(&restored.stdout).context("restore --json output")?;
        check_restored(self.db, &must_hold)?;
        self.shadowcopy("delete", &[id.to_string()])?;

        let offset = |upto: &[&str]| -> anyhow::Result<Duration> {
            upto.iter().map(|p| phase(&created, p)).sum()
        };
        let restore_steps = common::restore_steps(&restored);
        Ok(Run {
            post_snapshot: phase(&created, "post-snapshot")?,
            stall_ended: stall_end.1,
            frozen_at: offset(&["identify", "prepare"])?,
            thawed_at: offset(&["identify", "prepare", "freeze", "commit", "thaw"])?,
            restore_steps,
            create_wall,
            freeze_window: micros(&created["freeze_window_us"])?,
            commit: phase(&created, "commit")?,
            verify: match self.args.no_verify {
                true => Duration::ZERO,
                false => phase(&created, "verify")?,
            },
            app_stall,
            baseline_stall,
            restore_wall,
            restore_took: micros(&restored["took_us"])?,
        })
    }
}

/// Stops the transfer threads; an error when any of them failed.
pub(crate) fn stop_load(load: shadowcopy_sample::Transfers) -> anyhow::Result<()> {
    let errors = load.stop().errors;
    ensure!(
        errors.is_empty(),
        "transfer threads failed: {}",
        errors.join("; ")
    );
    Ok(())
}

/// The restored bank must be intact, balanced, and hold every transfer that was
/// acknowledged before the copy started.
pub(crate) fn check_restored(db: &Path, must_hold: &[i64]) -> anyhow::Result<()> {
    let s = shadowcopy_sample::summarize(db).context("reading the restored bank")?;
    ensure!(
        s.integrity == "ok",
        "RESTORE IS WRONG: quick_check says {}",
        s.integrity
    );
    ensure!(
        s.balanced(),
        "RESTORE IS WRONG: total balance {} for {} accounts",
        s.total,
        s.accounts
    );
    let held: HashSet<i64> = shadowcopy_sample::transfer_ids(db)?.into_iter().collect();
    let missing = must_hold.iter().filter(|id| !held.contains(id)).count();
    ensure!(
        missing == 0,
        "RESTORE IS WRONG: {missing} of {} transfers acknowledged before the copy are missing",
        must_hold.len()
    );
    Ok(())
}

/// The results as a Markdown table, one column per provider.
fn table(results: &[(String, Vec<Run>)]) -> String {
    let mut t = String::from("| figure |");
    for (p, _) in results {
        t += &format!(" {p} |");
    }
    t += "\n|---|";
    t += &"---|".repeat(results.len());
    for (label, get) in FIGURES {
        t += &format!("\n| {label} |");
        for (_, runs) in results {
            let values: Vec<Duration> = runs.iter().map(get).collect();
            let cell = Spread::of(&values).map_or("–".into(), |s| s.cell());
            t += &format!(" {cell} |");
        }
    }
    t
}

/// Date, machine, version and workload, as a Markdown list.
fn environment(args: &SqliteArgs, db_bytes: u64, load_before: &str, load_after: &str) -> String {
    format!(
        "{common}\
         - SQLite: bank in WAL mode, {ACCOUNTS} accounts, padded to {size} (file {db_bytes} bytes); \
           load: {threads} transfer threads, {pause} pause between transfers\n\
         - runs: {runs} per provider; page cache dropped before each run (`sync; echo 3 > /proc/sys/vm/drop_caches`)\n",
        common = common::environment("an XFS file system", load_before, load_after),
        size = human_bytes(args.size),
        pause = humantime::format_duration(args.pause),
        threads = args.threads,
        runs = args.runs,
    )
}
