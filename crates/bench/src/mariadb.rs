//! `shadowcopy-bench mariadb`: what shadowcopy costs a busy MariaDB server (issue 5): the
//! freeze window as shadowcopy measures it and as the application sees it (the longest
//! commit stall of a ledger load during the create, against a window of the same length
//! without one), the create's phases, and the time of both restores (roll-forward and
//! point-in-time) until the server answers queries again.
//!
//! Per loop file system the chosen providers need (btrfs first, then XFS, so the disk
//! holds one file system full of copies at a time), a throw-away server of the test
//! support crate (`shadowcopy_testing::mariadb`: binary log on, ROW format,
//! `sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`, 64 MB buffer pool) is made with
//! its data directory in `mariadb/data` and its binary logs outside it in
//! `mariadb/binlog`, on the same file system: XFS for `copy` and `reflink` (`copy` keeps
//! its copies in `copies/` on that XFS), btrfs for `btrfs` (`mariadb` is a subvolume
//! holding both, as one snapshot covers one subvolume). The ledger tables are set up, and
//! the data directory is padded to `--size` with an InnoDB table of 1 MiB rows of
//! pseudo-random bytes, written with `sql_log_bin = 0` (so the binary log does not hold
//! them twice).
//!
//! Then, per provider and run (`--runs`):
//!
//! 1. the page cache is dropped and the ledger load starts (`--writers` threads, each
//!    committing money moves as fast as it can); after `--warmup` its longest-stall
//!    counter is reset;
//! 2. `shadowcopy create --mariadb URL --provider P --freeze-deadline 60s --json` runs
//!    (with verify); we record its wall time, the freeze window, the prepare, commit,
//!    post-snapshot and verify phases, and the longest transaction (BEGIN to acknowledged
//!    COMMIT) the load saw while it ran. A create refused by the InnoDB safety check of
//!    file-by-file copies (pages flushed while the checkpoint or the log end moved) is a
//!    legitimate outcome the product asks to retry: it is retried up to twice and
//!    listed under the table; any other failure fails the bench;
//! 3. the load runs on for as long as the create took, with no create: the baseline of
//!    the longest transaction;
//! 4. the load stops and the server stops (clean shutdown); the page cache is dropped,
//!    `shadowcopy restore ID --mode roll-forward --discard-current --json` runs, the
//!    server starts, and we time until a query on the ledger answers; the ledger must be
//!    balanced and hold every commit the load had acknowledged;
//! 5. the server stops and the same copy is restored with `--mode point-in-time`, timed
//!    likewise; the ledger must be balanced and hold every commit acknowledged before
//!    the create began (and no more rows than after the roll-forward). Roll-forward goes
//!    first: a point-in-time restore removes the live binary logs written after the copy,
//!    which a roll-forward of the same copy replays;
//! 6. `shadowcopy delete ID`, and `fstrim` gives the freed blocks back to the host. The
//!    server keeps running (on the point-in-time state) for the next run.
//!
//! This is a measurement, not a test: nothing asserts on time; wrong data after a restore
//! fails the bench.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use mysql::prelude::Queryable;
use mysql::Conn;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use shadowcopy_testing::loopfs::{FsKind, LoopFs};
use shadowcopy_testing::mariadb::{
    mariadb_bin, mariadb_unavailable, Ledger, MariaDbInstance, MariaDbOptions, LEDGER_DATABASE,
};

use crate::common::{self, drop_caches, loadavg, micros, phase, shadowcopy};
use crate::stats::{self, human, human_bytes, number_cell, Spread};

const GIB: u64 = 1 << 30;
/// Disk space left to others when deciding whether the file systems fit.
pub(crate) const RESERVE: u64 = 2 * GIB;
/// The freeze deadline of every create.
const FREEZE_DEADLINE: &str = "60s";
/// Tries of a create the InnoDB safety check refused before the bench gives up.
const CREATE_ATTEMPTS: u32 = 3;
/// What the InnoDB safety check of file-by-file copies says when it discards a copy.
const INNODB_MOVED: &str = "during a file-by-file copy";
/// How long a restored server may take from its start until it answers a query.
const QUERYABLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Size of one filler row (incompressible bytes).
const FILL_ROW: usize = 1 << 20;
/// The padding table.
const FILLER: &str = "filler";

/// Options of the MariaDB workload.
#[derive(clap::Args, Debug)]
pub struct MariadbArgs {
    /// Size the data directory is padded to (InnoDB filler table of incompressible rows)
    #[arg(long, default_value = "1GiB", value_parser = stats::parse_size)]
    size: u64,
    /// Providers to measure (copy, reflink, btrfs); the table keeps this order
    #[arg(long, value_delimiter = ',', default_value = "copy,reflink,btrfs")]
    providers: Vec<String>,
    /// Runs (create, both restores) per provider
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Ledger writer threads committing during the create (no pause between transactions)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    writers: u32,
    /// How long the load runs before each measured create
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Where the loop images, catalogs and server sockets go [default: $TMPDIR]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:mariadb markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl MariadbArgs {
    /// The mkfs tools the chosen providers need.
    pub fn tools(&self) -> Vec<&'static str> {
        common::mkfs_tools(&self.providers)
    }

    /// The chosen providers that run on file systems of `kind`.
    fn providers_on(&self, kind: FsKind) -> Vec<&str> {
        common::providers_on(&self.providers, kind)
    }
}

/// What one run (create, roll-forward restore, point-in-time restore) measured.
#[derive(Clone, Debug)]
struct Run {
    create_wall: Duration,
    freeze_window: Duration,
    prepare: Duration,
    commit: Duration,
    post_snapshot: Duration,
    verify: Duration,
    /// The load's longest transaction while the create ran, and over as long a span
    /// right after it, with no create.
    app_stall: Duration,
    baseline_stall: Duration,
    /// The load's commits per second over the same two spans.
    create_tps: f64,
    baseline_tps: f64,
    rf_restore: Duration,
    rf_start: Duration,
    pit_restore: Duration,
    pit_start: Duration,
    /// Ledger rows after the roll-forward minus after the point-in-time restore: the
    /// transactions roll-forward replayed beyond the copy.
    replayed: usize,
}

/// The providers measured on one file system.
struct FsResult {
    kind: FsKind,
    /// The data directory's bytes after the padding.
    data_bytes: u64,
    init_took: Duration,
    fill_took: Duration,
    providers: Vec<(String, Vec<Run>)>,
}

/// Runs the MariaDB workload (as root).
pub fn bench(args: &MariadbArgs) -> anyhow::Result<()> {
    if let Some(p) = args.providers.iter().find(|p| common::fs_for(p).is_none()) {
        bail!("unknown provider `{p}` for the mariadb workload (copy, reflink, btrfs)");
    }
    work_in(args.dir.as_deref())?;
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    // Run order: btrfs first, so that its file system is gone before the XFS one fills
    // with full copies.
    let kinds: Vec<FsKind> = [FsKind::Btrfs, FsKind::Xfs]
        .into_iter()
        .filter(|k| !args.providers_on(*k).is_empty())
        .collect();
    let peak = kinds
        .iter()
        .map(|k| peak_bytes(*k, args.size))
        .max()
        .unwrap_or(0);
    let free = host_free()?;
    ensure!(
        free >= peak + RESERVE,
        "the file systems may need {} at once and {} is free in {} (keeping {} for others); \
         choose a smaller --size or another --dir",
        human_bytes(peak),
        human_bytes(free),
        std::env::temp_dir().display(),
        human_bytes(RESERVE)
    );

    let load_before = loadavg();
    let began = Instant::now();
    let mut results = Vec::new();
    let mut notes = Vec::new();
    for kind in kinds {
        results
            .push(bench_fs(args, &bin, kind, &mut notes).with_context(|| kind.name().to_string())?);
    }
    let took = began.elapsed();

    let table = table(args, &results);
    println!("{table}");
    for note in &notes {
        println!("\n{note}");
    }
    eprintln!("the whole bench took {}", human(took));
    if let Some(path) = &args.markdown {
        let mut section = format!(
            "{}\n{table}\n\nCells: median (min – max) over the runs. The whole bench took {}.",
            environment(args, &results, &load_before, &loadavg()),
            human(took)
        );
        for note in &notes {
            section += &format!("\n\n{note}");
        }
        common::write_section(path, "mariadb", &section)?;
        eprintln!("wrote the results into {}", path.display());
    }
    Ok(())
}

/// Makes `dir` (when given) the directory the loop images, catalogs and the servers'
/// sockets go to, and checks that MariaDB can run. Call before anything else runs:
/// they all go through tempfile, which follows TMPDIR.
pub(crate) fn work_in(dir: Option<&Path>) -> anyhow::Result<()> {
    common::use_dir(dir)?;
    if let Some(why) = mariadb_unavailable() {
        bail!("{why}");
    }
    Ok(())
}

/// What the image of a file system of `kind` may hold at once for `size` bytes of data:
/// on XFS the live data, a full `copy`, and the files a restore stages beside the live
/// ones (roll-forward's temporary server works on them); on btrfs the data and what
/// changes after the snapshot. Binary logs and the sandboxes' clones are small beside it.
pub(crate) fn peak_bytes(kind: FsKind, size: u64) -> u64 {
    match kind {
        FsKind::Btrfs => 2 * size + GIB,
        _ => 3 * size + GIB,
    }
}

/// Bytes free for others in the directory the loop images go to.
pub(crate) fn host_free() -> anyhow::Result<u64> {
    let s = rustix::fs::statvfs(std::env::temp_dir()).context("statvfs of the temp dir")?;
    Ok(s.f_bavail * s.f_frsize)
}

/// A loop file system with its MariaDB server. Fields drop in order: the server stops
/// before the file system is unmounted.
pub(crate) struct Setup {
    pub(crate) db: MariaDbInstance,
    pub(crate) fs: LoopFs,
}

/// A [`Setup`] with its data in place, and what making it took.
pub(crate) struct Made {
    pub(crate) setup: Setup,
    /// The data directory's bytes after the padding.
    pub(crate) data_bytes: u64,
    pub(crate) init_took: Duration,
    pub(crate) fill_took: Duration,
}

/// Makes the file system and the server, pads the database, and measures the providers
/// of `kind`.
fn bench_fs(
    args: &MariadbArgs,
    bin: &Path,
    kind: FsKind,
    notes: &mut Vec<String>,
) -> anyhow::Result<FsResult> {
    let Made {
        setup,
        data_bytes,
        init_took,
        fill_took,
    } = make(kind, args.size)?;
    let catalog = tempfile::Builder::new()
        .prefix("shadowcopy-bench-catalog-")
        .tempdir()?;
    let ctx = Ctx {
        writers: args.writers,
        warmup: args.warmup,
        bin,
        catalog: catalog.path(),
        setup: &setup,
    };
    let mut providers = Vec::new();
    for provider in args.providers_on(kind) {
        let mut runs = Vec::new();
        for i in 1..=args.runs {
            eprintln!("{provider}: run {i}/{} ({}) ...", args.runs, kind.name());
            let run = ctx
                .run_once(provider, notes)
                .with_context(|| format!("{provider} run {i}"))?;
            runs.push(run);
        }
        providers.push((provider.to_string(), runs));
    }
    drop(setup);
    Ok(FsResult {
        kind,
        data_bytes,
        init_took,
        fill_took,
        providers,
    })
}

/// Makes a loop file system of `kind` (room for [`peak_bytes`] and 4 GiB more), a server
/// in `mariadb/` on it (a subvolume on btrfs) with its data directory in `mariadb/data`
/// and its binary logs in `mariadb/binlog`, the ledger tables, and pads the data
/// directory to `size` (see [`fill`]).
pub(crate) fn make(kind: FsKind, size: u64) -> anyhow::Result<Made> {
    let fs = LoopFs::new(kind, peak_bytes(kind, size) + 4 * GIB).map_err(|e| anyhow!(e))?;
    let root = fs.path().join("mariadb");
    if kind == FsKind::Btrfs {
        run_ok(
            Command::new("btrfs")
                .args(["subvolume", "create"])
                .arg(&root),
        )?;
    } else {
        fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    }
    eprintln!(
        "{}: making a MariaDB server in {} ...",
        kind.name(),
        root.display()
    );
    let t = Instant::now();
    let db = MariaDbInstance::try_init(
        MariaDbOptions::new()
            .data_dir(root.join("data"))
            .binlog_dir(root.join("binlog")),
    )
    .map_err(|e| anyhow!(e))?;
    Ledger::setup(&mut connect(&db)?).map_err(|e| anyhow!("setting up the ledger: {e}"))?;
    let init_took = t.elapsed();
    let setup = Setup { db, fs };

    let t = Instant::now();
    let data_bytes = fill(&setup.db, size)?;
    let fill_took = t.elapsed();
    eprintln!(
        "  padded the data directory to {} in {} (server made in {})",
        human_bytes(data_bytes),
        human(fill_took),
        human(init_took)
    );
    Ok(Made {
        setup,
        data_bytes,
        init_took,
        fill_took,
    })
}

/// A connection to `db` as root over its socket.
pub(crate) fn connect(db: &MariaDbInstance) -> anyhow::Result<Conn> {
    Conn::new(db.opts()).map_err(|e| anyhow!("cannot connect to {}: {e}", db.url()))
}

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            total += dir_bytes(&e.path())?;
        } else if ty.is_file() {
            // A temp file of the server may vanish meanwhile.
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Pads the server's data directory to `size` bytes with rows of pseudo-random bytes in
/// an InnoDB table, not written to the binary log; returns the data directory's bytes.
fn fill(db: &MariaDbInstance, size: u64) -> anyhow::Result<u64> {
    let mut conn = connect(db)?;
    let sql =
        |conn: &mut Conn, q: &str| conn.query_drop(q).map_err(|e| anyhow!("`{q}` failed: {e}"));
    sql(&mut conn, "SET SESSION sql_log_bin = 0")?;
    sql(
        &mut conn,
        &format!(
            "CREATE TABLE {LEDGER_DATABASE}.{FILLER} (id INT AUTO_INCREMENT PRIMARY KEY, \
             pad MEDIUMBLOB NOT NULL) ENGINE=InnoDB"
        ),
    )?;
    let insert = format!("INSERT INTO {LEDGER_DATABASE}.{FILLER} (pad) VALUES (?)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut row = vec![0u8; FILL_ROW];
    loop {
        let now = dir_bytes(db.data_dir())?;
        if now >= size {
            return Ok(now);
        }
        // Rows for what is missing, at most 64 MiB between measurements (the tablespace
        // grows in steps).
        let rows = (size - now).div_ceil(FILL_ROW as u64).min(64);
        for _ in 0..rows {
            rng.fill_bytes(&mut row);
            conn.exec_drop(&insert, (row.clone(),))
                .map_err(|e| anyhow!("filling the database: {e}"))?;
        }
    }
}

/// Everything the runs on one file system need.
pub(crate) struct Ctx<'a> {
    /// Ledger writer threads, and how long the load runs before a measured create.
    pub(crate) writers: u32,
    pub(crate) warmup: Duration,
    pub(crate) bin: &'a Path,
    pub(crate) catalog: &'a Path,
    pub(crate) setup: &'a Setup,
}

/// A create that succeeded, with what the load saw meanwhile.
pub(crate) struct Created {
    pub(crate) out: Value,
    /// When the create process (the last attempt's) was spawned.
    pub(crate) spawned: Instant,
    wall: Duration,
    app_stall: Duration,
    /// The longest transaction over all attempts (a retried create's earlier ones too).
    pub(crate) app_stall_all_attempts: Duration,
    commits: usize,
    /// When (after the spawn) the longest stall ended, as far as polling every 5 ms tells.
    stall_ended: Duration,
}

impl Ctx<'_> {
    fn db(&self) -> &MariaDbInstance {
        &self.setup.db
    }

    fn create_args(&self, provider: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--mariadb".into(),
            self.db().url(),
            "--provider".into(),
            provider.into(),
            "--freeze-deadline".into(),
            FREEZE_DEADLINE.into(),
            "--json".into(),
        ];
        if provider == "copy" {
            args.push("--copies-dir".into());
            args.push(self.setup.fs.path().join("copies").to_string_lossy().into());
        }
        args
    }

    /// One `shadowcopy create` under the load, with the load's longest transaction and
    /// commit count over the create's lifetime.
    fn create_once(&self, provider: &str, load: &Ledger) -> (anyhow::Result<Value>, Created) {
        load.reset_longest_stall();
        let committed = load.committed();
        let spawned = Instant::now();
        let child = {
            let (bin, catalog) = (self.bin.to_path_buf(), self.catalog.to_path_buf());
            let args = self.create_args(provider);
            std::thread::spawn(move || shadowcopy(&bin, &catalog, "create", &args))
        };
        let mut stall_end = (Duration::ZERO, Duration::ZERO); // (longest, when it ended)
        while !child.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
            let longest = load.longest_stall();
            if longest > stall_end.0 {
                stall_end = (longest, spawned.elapsed());
            }
        }
        let out = child
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the create thread panicked")));
        let wall = spawned.elapsed();
        let app_stall = load.longest_stall();
        if app_stall > stall_end.0 {
            stall_end.1 = wall;
        }
        let commits = load.committed() - committed;
        let out = out.and_then(|o| {
            let created: Value =
                serde_json::from_slice(&o.stdout).context("create --json output")?;
            ensure!(
                created["verification"]["ok"].as_bool() == Some(true),
                "copy {} did not pass verification: {}",
                created["id"],
                created["verification"]
            );
            Ok(created)
        });
        (
            out,
            Created {
                out: Value::Null,
                spawned,
                wall,
                app_stall,
                app_stall_all_attempts: app_stall,
                commits,
                stall_ended: stall_end.1,
            },
        )
    }

    /// [`Ctx::create_once`], retried (up to [`CREATE_ATTEMPTS`] in all) when the InnoDB
    /// safety check discarded the copy; each retry goes into `notes`. Any other failure
    /// is an error.
    pub(crate) fn create(
        &self,
        provider: &str,
        load: &Ledger,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Created> {
        let mut longest = Duration::ZERO;
        for attempt in 1.. {
            let (out, mut created) = self.create_once(provider, load);
            longest = longest.max(created.app_stall);
            match out {
                Ok(out) => {
                    created.out = out;
                    created.app_stall_all_attempts = longest;
                    return Ok(created);
                }
                Err(e) if attempt < CREATE_ATTEMPTS && format!("{e:#}").contains(INNODB_MOVED) => {
                    let msg = format!(
                        "`shadowcopy create --provider {provider}` was refused by the InnoDB \
                         safety check after {} (attempt {attempt} of {CREATE_ATTEMPTS}, retried): {}",
                        human(created.wall),
                        first_line_with(&format!("{e:#}"), INNODB_MOVED)
                    );
                    eprintln!("  {msg}");
                    notes.push(msg);
                }
                Err(e) => {
                    return Err(anyhow!(
                        "{e:#}\nserver log (end):\n{}",
                        tail(&self.db().log(), 20)
                    ))
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Starts the ledger load (`writers` threads, no pause) and returns once it has
    /// committed and run for `warmup`.
    pub(crate) fn start_load(&self) -> anyhow::Result<Ledger> {
        let load = Ledger::start(&self.db().opts(), self.writers as usize, Duration::ZERO);
        let warm = Instant::now();
        while load.committed() == 0 {
            ensure!(
                warm.elapsed() < Duration::from_secs(60),
                "the ledger load committed nothing in 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(self.warmup);
        Ok(load)
    }

    fn run_once(&self, provider: &str, notes: &mut Vec<String>) -> anyhow::Result<Run> {
        drop_caches()?;
        let load = self.start_load()?;

        let created = match self.create(provider, &load, notes) {
            Ok(c) => c,
            Err(e) => {
                load.stop();
                return Err(e);
            }
        };
        // The same span without a create: the load's own longest transaction.
        load.reset_longest_stall();
        let committed = load.committed();
        let t = Instant::now();
        std::thread::sleep(created.wall);
        let baseline_stall = load.longest_stall();
        let baseline_commits = load.committed() - committed;
        let baseline_span = t.elapsed();
        let must_hold = load.acknowledged_before(created.spawned);
        let stats = load.stop();
        if stats.error_count > 0 {
            let msg = format!(
                "{provider}: the ledger load met {} error(s) during a run, e.g. {}",
                stats.error_count,
                stats.errors.first().map(String::as_str).unwrap_or("?")
            );
            eprintln!("  {msg}");
            notes.push(msg);
        }
        let acknowledged = stats.acknowledged;

        let c = &created.out;
        let id = c["id"].as_i64().context("create --json has no id")?;
        for w in c["warnings"].as_array().into_iter().flatten() {
            eprintln!("  create warning: {w}");
        }
        let offset = |upto: &str, inclusive: bool| -> Duration {
            let mut sum = Duration::ZERO;
            for p in c["phases"].as_array().into_iter().flatten() {
                let took = Duration::from_micros(p["took_us"].as_u64().unwrap_or(0));
                if p["phase"] == upto {
                    return if inclusive { sum + took } else { sum };
                }
                sum += took;
            }
            sum
        };
        let freeze_window = micros(&c["freeze_window_us"])?;
        eprintln!(
            "  create {} ({} files, {}): freeze window {}, commit {}, verify {} ({}); \
             longest transaction {} during the create (baseline {}); after the spawn: frozen at ≈{}, \
             thawed at ≈{}, longest transaction from ≈{} to ≈{}",
            human(created.wall),
            c["files"],
            human_bytes(c["bytes"].as_u64().unwrap_or(0)),
            human(freeze_window),
            human(phase(c, "commit")?),
            human(phase(c, "verify")?),
            c["verification"]["detail"]
                .as_str()
                .unwrap_or("")
                .replace('\n', "; "),
            human(created.app_stall),
            human(baseline_stall),
            human(offset("freeze", false)),
            human(offset("thaw", true)),
            human(created.stall_ended.saturating_sub(created.app_stall)),
            human(created.stall_ended),
        );

        self.db().stop();
        // Roll-forward first: the point-in-time restore removes the live binary logs
        // written after the copy, which this replays.
        let (rf_restore, rf_start) = self.restore(id, "roll-forward")?;
        // Ledger::check on a new connection to the (running) server.
        let ledger_state = || {
            connect(self.db()).and_then(|mut c| {
                Ledger::check(&mut c).map_err(|e| anyhow!("reading the ledger: {e}"))
            })
        };
        let rf = ledger_state()?;
        rf.verify(&acknowledged).map_err(|e| {
            anyhow!(
                "ROLL-FORWARD RESTORE IS WRONG: {e} ({} commits acknowledged in all, {} \
                 before the create)",
                acknowledged.len(),
                must_hold.len()
            )
        })?;
        let rf_rows = rf.ids.len();
        self.db().stop();

        let (pit_restore, pit_start) = self.restore(id, "point-in-time")?;
        let pit = ledger_state()?;
        pit.verify(&must_hold).map_err(|e| {
            anyhow!(
                "POINT-IN-TIME RESTORE IS WRONG: {e} ({} commits acknowledged before the create)",
                must_hold.len()
            )
        })?;
        let pit_rows = pit.ids.len();
        ensure!(
            pit_rows <= rf_rows,
            "POINT-IN-TIME RESTORE IS WRONG: it holds {pit_rows} ledger rows, more than the \
             {rf_rows} of the whole load (after the roll-forward)"
        );
        eprintln!(
            "  this run's load: {} commits acknowledged before the create, {} in all; the ledger \
             table (earlier runs' rows included) holds {pit_rows} rows after the point-in-time \
             restore, {rf_rows} after the roll-forward",
            must_hold.len(),
            acknowledged.len()
        );

        shadowcopy(self.bin, self.catalog, "delete", &[id.to_string()])?;
        let _ = Command::new("fstrim").arg(self.setup.fs.path()).output();

        let per_second = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-3);
        Ok(Run {
            create_wall: created.wall,
            freeze_window,
            prepare: phase(c, "prepare")?,
            commit: phase(c, "commit")?,
            post_snapshot: phase(c, "post-snapshot")?,
            verify: phase(c, "verify")?,
            app_stall: created.app_stall,
            baseline_stall,
            create_tps: per_second(created.commits, created.wall),
            baseline_tps: per_second(baseline_commits, baseline_span),
            rf_restore,
            rf_start,
            pit_restore,
            pit_start,
            replayed: rf_rows - pit_rows,
        })
    }

    /// With the server stopped: drops the page cache, restores copy `id` in `mode`,
    /// starts the server and waits until it answers a query on the ledger. Returns the
    /// restore's wall time and the time from the server's start until that answer.
    pub(crate) fn restore(&self, id: i64, mode: &str) -> anyhow::Result<(Duration, Duration)> {
        drop_caches()?;
        let t = Instant::now();
        let out = shadowcopy(
            self.bin,
            self.catalog,
            "restore",
            &[
                id.to_string(),
                "--mode".into(),
                mode.into(),
                "--discard-current".into(),
                "--json".into(),
            ],
        )?;
        let wall = t.elapsed();
        let restored: Value =
            serde_json::from_slice(&out.stdout).context("restore --json output")?;
        let start = start_until_queryable(self.db(), &format!("after the {mode} restore"))?;
        eprintln!(
            "  {mode}: restore {} ({}), then the server answered {} after its start",
            human(wall),
            common::restore_steps(&restored),
            human(start)
        );
        Ok((wall, start))
    }
}

/// Starts the (stopped) server and waits until a query on the ledger answers; returns
/// the time from the start until that answer. `after` says what came before, for errors
/// ("after the point-in-time restore").
pub(crate) fn start_until_queryable(db: &MariaDbInstance, after: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    db.try_start()
        .map_err(|e| anyhow!("the server does not start {after}: {e}"))?;
    let query = format!("SELECT accounts FROM {LEDGER_DATABASE}.ledger_meta");
    loop {
        let answered = connect(db).and_then(|mut c| {
            c.query_drop(&query)
                .map_err(|e| anyhow!("`{query}` failed: {e}"))
        });
        match answered {
            Ok(()) => return Ok(t.elapsed()),
            Err(e) if t.elapsed() > QUERYABLE_TIMEOUT => {
                bail!(
                    "the server started {after} does not answer within {}: \
                     {e:#}\nserver log (end):\n{}",
                    human(QUERYABLE_TIMEOUT),
                    tail(&db.log(), 20)
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Runs `cmd`; an error with its output when it fails.
fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The first line of `s` that contains `needle` (else its first line).
fn first_line_with(s: &str, needle: &str) -> String {
    s.lines()
        .find(|l| l.contains(needle))
        .or_else(|| s.lines().next())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The last `n` lines of `s`.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One row of the table: a label and how to read the figure from a run.
type Figure = (&'static str, fn(&Run) -> Duration);

const FIGURES: [Figure; 14] = [
    ("create, wall time", |r| r.create_wall),
    ("**freeze window (shadowcopy)**", |r| r.freeze_window),
    ("**longest commit stall during create (ledger)**", |r| {
        r.app_stall
    }),
    ("longest commit stall, no create (baseline)", |r| {
        r.baseline_stall
    }),
    ("prepare phase (BACKUP STAGE START, FLUSH)", |r| r.prepare),
    ("commit phase (provider copy, inside the freeze)", |r| {
        r.commit
    }),
    ("post-snapshot phase (position file, persist)", |r| {
        r.post_snapshot
    }),
    ("verify phase (sandbox, mariadb-check)", |r| r.verify),
    ("roll-forward: restore, wall time", |r| r.rf_restore),
    ("roll-forward: start until queryable", |r| r.rf_start),
    ("**roll-forward: restore time**", |r| {
        r.rf_restore + r.rf_start
    }),
    ("point-in-time: restore, wall time", |r| r.pit_restore),
    ("point-in-time: start until queryable", |r| r.pit_start),
    ("**point-in-time: restore time**", |r| {
        r.pit_restore + r.pit_start
    }),
];

/// The runs table, one column per provider in the order of `--providers`.
fn table(args: &MariadbArgs, results: &[FsResult]) -> String {
    let columns: Vec<&(String, Vec<Run>)> = args
        .providers
        .iter()
        .filter_map(|p| {
            results
                .iter()
                .flat_map(|r| &r.providers)
                .find(|(name, _)| name == p)
        })
        .collect();
    let mut t = String::from("| figure |");
    for (p, _) in &columns {
        t += &format!(" {p} |");
    }
    t += "\n|---|";
    t += &"---|".repeat(columns.len());
    for (label, get) in FIGURES {
        t += &format!("\n| {label} |");
        for (_, runs) in &columns {
            let values: Vec<Duration> = runs.iter().map(get).collect();
            let cell = Spread::of(&values).map_or("–".into(), |s| s.cell());
            t += &format!(" {cell} |");
        }
    }
    // Counts, not times: median (min – max) of whole numbers.
    let counts = |runs: &[Run], get: fn(&Run) -> f64| {
        let values: Vec<f64> = runs.iter().map(get).collect();
        number_cell(&values, |v| format!("{v:.0}"))
    };
    t += "\n| ledger commits/s, during create / no create |";
    for (_, runs) in &columns {
        t += &format!(
            " {} / {} |",
            counts(runs, |r| r.create_tps),
            counts(runs, |r| r.baseline_tps)
        );
    }
    t += "\n| transactions replayed by roll-forward |";
    for (_, runs) in &columns {
        t += &format!(" {} |", counts(runs, |r| r.replayed as f64));
    }
    t
}

/// The server [`make`] makes, for the environment lists.
pub(crate) const SERVER: &str = "a throw-away server (test support crate: buffer pool 64 MB, \
    redo log 32 MB, binary log ROW with sync_binlog=1, innodb_flush_log_at_trx_commit=1, unix socket \
    only), data directory and binary logs in two directories of one file system";

/// What `mariadbd --version` prints (`?` when it cannot run).
pub(crate) fn server_version() -> String {
    Command::new(mariadb_bin("mariadbd"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The environment list's item on the data [`make`] puts in a server of `size`.
pub(crate) fn data_item(size: u64) -> String {
    format!(
        "- data: the ledger tables plus an InnoDB table of {} rows of pseudo-random bytes (not \
         in the binary log) padding the data directory to {}\n",
        human_bytes(FILL_ROW as u64),
        human_bytes(size)
    )
}

/// The environment list's item on how long [`make`] took on a file system of `kind`.
pub(crate) fn setup_item(
    kind: FsKind,
    init_took: Duration,
    data_bytes: u64,
    fill_took: Duration,
) -> String {
    format!(
        "- {}: server made in {}, data directory padded to {} in {}\n",
        kind.name(),
        human(init_took),
        human_bytes(data_bytes),
        human(fill_took),
    )
}

/// Date, machine, version and workload, as a Markdown list.
fn environment(
    args: &MariadbArgs,
    results: &[FsResult],
    load_before: &str,
    load_after: &str,
) -> String {
    let mut setup = String::new();
    for r in results {
        setup += &setup_item(r.kind, r.init_took, r.data_bytes, r.fill_took);
    }
    format!(
        "{common}\
         - MariaDB: {version}, {SERVER}; `copy` and `reflink` on one XFS (`copy` keeps \
           its copies in `copies/` on it), `btrfs` on a btrfs where both are in one subvolume\n\
         {data}\
         {setup}\
         - load: the ledger, {writers} writer threads committing money moves with no pause, from {warmup} before \
           each create until the server is stopped for the restores; create: `shadowcopy create --mariadb URL \
           --provider P --freeze-deadline {FREEZE_DEADLINE} --json` (with verify); restores: `restore ID --mode \
           roll-forward|point-in-time --discard-current --json` with the server stopped, then the server started\n\
         - runs: {runs} per provider; page cache dropped before each run and each restore \
           (`sync; echo 3 > /proc/sys/vm/drop_caches`)\n",
        common = common::environment("XFS and btrfs file systems, each", load_before, load_after),
        version = server_version(),
        data = data_item(args.size),
        writers = args.writers,
        warmup = humantime::format_duration(args.warmup),
        runs = args.runs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safety_check_line_is_found() {
        let e =
            "`shadowcopy create` failed: error: set failed\n  because: InnoDB wrote 3 page(s) during a file-by-file copy";
        assert_eq!(
            first_line_with(e, INNODB_MOVED),
            "because: InnoDB wrote 3 page(s) during a file-by-file copy"
        );
    }
}
