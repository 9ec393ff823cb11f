//! `shadowcopy-bench postgres`: what shadowcopy costs a busy PostgreSQL cluster, on a
//! pgbench database (issue 4): create time, freeze window and verify time of a copy taken
//! under load, restore time in both modes (point-in-time and roll-forward), and pgbench's
//! TPS with a copy taken every 10 s against none.
//!
//! For each scale (`--scale`, default 100 and 1000) the pgbench database is made once
//! (`pgbench -i -s N -q`, data checksums on, no unlogged tables) on a loop file system,
//! the server stopped, and its data directory copied (`cp -a`) onto the other kind of
//! file system the chosen providers need: XFS for `copy` and `reflink` (`copy` keeps its
//! copies in `copies/` on that XFS), btrfs for `btrfs` (the data directory is a
//! subvolume, as the provider needs). The btrfs file system is measured first and
//! removed before the XFS runs, so the disk holds at most one file system with copies.
//! On each file system the WAL archive is set up with `shadowcopy pg setup URL --archive
//! DIR --apply` and the server restarted (archive_mode takes effect at a restart).
//!
//! Then, per provider and run (`--runs`):
//!
//! 1. the page cache is dropped and `pgbench -c 4 -j 2` starts at full speed (no `-R`);
//!    after `--warmup` the number of `pgbench_history` rows is noted (all committed);
//! 2. `shadowcopy create --postgres URL --pg-archive DIR --provider P --freeze-deadline
//!    3600s --json` runs; we record its wall time, the freeze window and the prepare,
//!    commit, post-snapshot and verify phases; the copy must pass verification;
//! 3. pgbench stops; we wait for its sessions to end, note the `pgbench_history` rows and
//!    the WAL position, switch to a new WAL segment and wait until it is archived, then
//!    stop the server (fast shutdown);
//! 4. the page cache is dropped, `shadowcopy restore ID --mode roll-forward
//!    --discard-current --json` runs, the server starts, and we wait until it answers
//!    `SELECT pg_is_in_recovery()` with `f` (restore time = restore wall + that); the WAL
//!    written since the copy comes from the archive; `pgbench_accounts` must hold scale ×
//!    100000 rows and `pgbench_history` every row of the load; the server stops;
//! 5. the same for `--mode point-in-time` of the same copy: `pgbench_history` must hold
//!    between the rows noted before the create and after the load (roll-forward goes
//!    first: a point-in-time restore promotes to a new timeline branching at the copy,
//!    which a later roll-forward would follow);
//! 6. `shadowcopy delete ID`, and `fstrim` gives the freed blocks back to the host.
//!
//! Then the TPS comparison per provider: the data directory is read once into the page
//! cache, an unmeasured pgbench runs for `--warmup`, then `pgbench -T --tps-seconds` with
//! no copy, then again while `shadowcopy create` (with verify) starts every
//! `--copy-every`, the first after half of it (sequentially: when a create and its delete
//! take longer, the next starts right after, and that is counted). pgbench logs
//! per-second aggregates (`-l --aggregate-interval 1`), which give the slowest second and
//! the longest transaction.
//!
//! This is a measurement, not a test: nothing asserts on time; wrong data after a restore
//! fails the bench. A create that fails (a product problem) is retried up to twice, its
//! leftover copy deleted, and the failure listed under the tables; a third failure in a
//! row fails the bench.

use std::cell::RefCell;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;
use shadowcopy_testing::loopfs::{FsKind, LoopFs};
use shadowcopy_testing::postgres::{
    pg_bin, postgres_unavailable, AdoptOptions, PgCluster, PgOptions,
};

use crate::common::{self, drop_caches, loadavg, micros, phase, shadowcopy};
use crate::stats::{human, human_bytes, Spread};

/// Rows of `pgbench_accounts` per unit of scale.
pub(crate) const ROWS_PER_SCALE: i64 = 100_000;
pub(crate) const GIB: u64 = 1 << 30;
/// Disk space left to others when deciding whether a scale fits.
const RESERVE: u64 = 2 * GIB;
/// The postgres writer's freeze does not pause the server (backup mode), so a long
/// deadline costs the application nothing; the default 10 s would abort `copy` beyond a
/// few GiB.
const FREEZE_DEADLINE: &str = "3600s";
/// How long a server start (recovery included) or a wait on the server may take.
const SERVER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Tries of a create before the bench gives up.
const CREATE_ATTEMPTS: u32 = 3;
/// pgbench's clients and threads.
pub(crate) const CLIENTS: &str = "4";
pub(crate) const THREADS: &str = "2";

/// Options of the PostgreSQL workload.
#[derive(clap::Args, Debug)]
pub struct PostgresArgs {
    /// pgbench scale to measure (repeat for more; scale 1 is about 15 MiB)
    #[arg(long = "scale", value_name = "N", default_values_t = [100u32, 1000], value_parser = clap::value_parser!(u32).range(1..))]
    scales: Vec<u32>,
    /// Providers to measure, in order (copy, reflink, btrfs)
    #[arg(long, value_delimiter = ',', default_value = "copy,reflink,btrfs")]
    providers: Vec<String>,
    /// Runs (create, both restores) per provider and scale
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Seconds of each pgbench TPS measurement (one without copies, one with)
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    tps_seconds: u64,
    /// Interval between the starts of copies during the TPS measurement
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    copy_every: Duration,
    /// How long pgbench runs before each measured create (and, unmeasured, before the TPS runs)
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Where the loop images, catalogs and server sockets go [default: $TMPDIR]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:postgres markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl PostgresArgs {
    /// The mkfs tools the chosen providers need.
    pub fn tools(&self) -> Vec<&'static str> {
        common::mkfs_tools(&self.providers)
    }

    /// The chosen providers that run on file systems of `kind`.
    fn providers_on(&self, kind: FsKind) -> Vec<&str> {
        common::providers_on(&self.providers, kind)
    }
}

/// What one run (create, point-in-time restore, roll-forward restore) measured.
#[derive(Clone, Debug)]
struct Run {
    create_wall: Duration,
    freeze_window: Duration,
    prepare: Duration,
    commit: Duration,
    post_snapshot: Duration,
    verify: Duration,
    pit_restore: Duration,
    pit_start: Duration,
    rf_restore: Duration,
    rf_start: Duration,
    /// WAL written from just before the create to the end of the load: what roll-forward
    /// replays beyond the copy's own WAL (bytes).
    wal_since: u64,
}

/// pgbench's figures over one measurement.
#[derive(Clone, Debug)]
pub(crate) struct Bench {
    pub(crate) tps: f64,
    /// Fewest transactions completed in one whole second (first and last second left out).
    pub(crate) slowest_second: Option<u64>,
    /// The longest transaction.
    pub(crate) longest: Option<Duration>,
}

/// The TPS comparison of one provider.
#[derive(Clone, Debug)]
struct Tps {
    none: Bench,
    copies: Bench,
    /// Wall time of each create during the measurement.
    creates: Vec<Duration>,
    /// Creates that started late because the one before (with its delete) took longer
    /// than `--copy-every`.
    late: usize,
}

struct ProviderResult {
    provider: String,
    runs: Vec<Run>,
    tps: Tps,
}

struct ScaleResult {
    scale: u32,
    db_bytes: u64,
    init_took: Duration,
    /// `cp -a` of the stopped data directory to the other file system.
    copy_over: Option<Duration>,
    providers: Vec<ProviderResult>,
}

/// Runs the PostgreSQL workload (as root).
pub fn bench(args: &PostgresArgs) -> anyhow::Result<()> {
    if let Some(p) = args.providers.iter().find(|p| common::fs_for(p).is_none()) {
        bail!("unknown provider `{p}` for the postgres workload (copy, reflink, btrfs)");
    }
    prepare(args.dir.as_deref())?;
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    let load_before = loadavg();
    let began = Instant::now();
    let mut results = Vec::new();
    let mut notes = Vec::new();
    for &scale in &args.scales {
        if let Some(r) =
            bench_scale(args, &bin, scale, &mut notes).with_context(|| format!("scale {scale}"))?
        {
            results.push(r);
        }
    }
    let took = began.elapsed();

    let tables = tables(args, &results);
    println!("{tables}");
    for note in &notes {
        println!("\n{note}");
    }
    eprintln!("the whole bench took {}", human(took));
    if let Some(path) = &args.markdown {
        let mut section = format!(
            "{}\n{tables}\n\nCells: median (min – max) over the runs. The whole bench took {}.",
            environment(args, &results, &load_before, &loadavg()),
            human(took)
        );
        for note in &notes {
            section += &format!("\n\n{note}");
        }
        common::write_section(path, "postgres", &section)?;
        eprintln!("wrote the results into {}", path.display());
    }
    Ok(())
}

/// Points the temp dir at `dir` (when given) and checks that PostgreSQL and pgbench are
/// installed.
pub(crate) fn prepare(dir: Option<&Path>) -> anyhow::Result<()> {
    common::use_dir(dir)?;
    if let Some(why) = postgres_unavailable() {
        bail!("{why}");
    }
    ensure!(
        pg_bin("pgbench").is_file(),
        "pgbench not found beside postgres ({}); apt-get install postgresql-contrib",
        pg_bin("pgbench").display()
    );
    Ok(())
}

/// Rough size of a pgbench database of `scale` with its WAL (pgbench -i makes about
/// 15 MiB per unit; max_wal_size is 1 GB).
pub(crate) fn data_estimate(scale: u32) -> u64 {
    u64::from(scale) * (16 << 20) + 1536 * (1 << 20)
}

/// The (sparse) image size of a file system of `kind` for `data` bytes: XFS holds the
/// live data, a full copy and a full restore staged beside the live files; btrfs the data
/// and its changes since the snapshot. Both hold the WAL archive.
fn image_size(kind: FsKind, data: u64) -> u64 {
    match kind {
        FsKind::Btrfs => 2 * data + 8 * GIB,
        _ => 3 * data + 8 * GIB,
    }
}

/// Bytes free for others in the directory the loop images go to.
fn host_free() -> anyhow::Result<u64> {
    let s = rustix::fs::statvfs(std::env::temp_dir()).context("statvfs of the temp dir")?;
    Ok(s.f_bavail * s.f_frsize)
}

/// A loop file system with its PostgreSQL server. Fields drop in order: the server stops
/// before the file system is unmounted.
pub(crate) struct Setup {
    pub(crate) server: Server,
    pub(crate) fs: LoopFs,
}

/// Measures one scale: makes the database once, copies it to the other file system, then
/// measures the providers of each file system (btrfs first).
fn bench_scale(
    args: &PostgresArgs,
    bin: &Path,
    scale: u32,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<ScaleResult>> {
    // Run order: btrfs first, so that its file system is gone before the XFS one fills
    // with full copies.
    let kinds: Vec<FsKind> = [FsKind::Btrfs, FsKind::Xfs]
        .into_iter()
        .filter(|k| !args.providers_on(*k).is_empty())
        .collect();
    let data = data_estimate(scale);
    // What the images may hold at once: on XFS data, copy, staged restore and WAL; while
    // btrfs is measured the XFS image already holds the data.
    let xfs_peak = 3 * data + 4 * GIB;
    let btrfs_peak = data + 4 * GIB;
    let peak = match (kinds.contains(&FsKind::Btrfs), kinds.contains(&FsKind::Xfs)) {
        (true, true) => xfs_peak.max(btrfs_peak + data),
        (true, false) => btrfs_peak,
        _ => xfs_peak,
    };
    if let Some(note) = too_big(scale, peak)? {
        notes.push(note);
        return Ok(None);
    }

    let made = make_clusters(scale, &kinds)?;
    let mut providers = Vec::new();
    for (kind, mut setup) in made.setups {
        providers.extend(bench_fs(args, bin, scale, kind, &mut setup, notes)?);
        // The server stops and the file system goes before the next one is measured.
        drop(setup);
    }
    Ok(Some(ScaleResult {
        scale,
        db_bytes: made.db_bytes,
        init_took: made.init_took,
        copy_over: made.copy_over,
        providers,
    }))
}

/// Whether file systems that may hold `peak` bytes leave [`RESERVE`] free on the host:
/// `Some(why scale is skipped)` (also printed) when they do not.
pub(crate) fn too_big(scale: u32, peak: u64) -> anyhow::Result<Option<String>> {
    let free = host_free()?;
    if free >= peak + RESERVE {
        return Ok(None);
    }
    let note = format!(
        "scale {scale} skipped: its file systems may need {} and {} is free in {} \
         (keeping {} for others)",
        human_bytes(peak),
        human_bytes(free),
        std::env::temp_dir().display(),
        human_bytes(RESERVE)
    );
    eprintln!("{note}");
    Ok(Some(note))
}

/// The pgbench database of one scale on each kind of file system asked for.
pub(crate) struct Clusters {
    /// One stopped cluster per kind, in the order of the kinds asked for.
    pub(crate) setups: Vec<(FsKind, Setup)>,
    /// `pg_database_size` of the pgbench database when made.
    pub(crate) db_bytes: u64,
    /// `pgbench -i`.
    pub(crate) init_took: Duration,
    /// `cp -a` of the stopped data directory to the other file system.
    pub(crate) copy_over: Option<Duration>,
}

/// Makes the pgbench database of `scale` once (`pgbench -i -s N -q`, data checksums on)
/// on a loop file system (XFS when `kinds` has it), stops the server, and copies the data
/// directory (`cp -a`) onto a file system of each other kind (btrfs: into a subvolume).
pub(crate) fn make_clusters(scale: u32, kinds: &[FsKind]) -> anyhow::Result<Clusters> {
    let init_kind = if kinds.contains(&FsKind::Xfs) {
        FsKind::Xfs
    } else {
        FsKind::Btrfs
    };
    let data = data_estimate(scale);
    let init_fs = make_fs(init_kind, data)?;
    let init_data = init_fs.path().join("data");
    // Timestamps in the server's log, to tell where a restored server's start goes
    // (redo, the end-of-recovery checkpoint, promotion).
    let cluster = PgCluster::try_init(
        PgOptions::new()
            .data_dir(&init_data)
            .data_checksums(true)
            .setting("log_line_prefix", "%m [%p] ")
            .setting("log_startup_progress_interval", "1s"),
    )
    .map_err(|e| anyhow!(e))?;
    eprintln!(
        "scale {scale}: pgbench -i -s {scale} into {} ({}) ...",
        init_data.display(),
        init_kind.name()
    );
    let t = Instant::now();
    let out = pgbench_cmd(&cluster, &["-i", "-s", &scale.to_string(), "-q"])
        .output()
        .context("cannot run pgbench -i")?;
    ensure!(
        out.status.success(),
        "pgbench -i failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let init_took = t.elapsed();
    let db_bytes: u64 = psql(&cluster, "SELECT pg_database_size(current_database())")?
        .parse()
        .context("pg_database_size")?;
    eprintln!(
        "  {} in {} (pg_database_size)",
        human_bytes(db_bytes),
        human(init_took)
    );
    let mut init = Setup {
        server: Server::new(cluster),
        fs: init_fs,
    };
    init.server.stop();

    let mut setups = Vec::new();
    let mut copy_over = None;
    for &kind in kinds {
        if kind == init_kind {
            continue;
        }
        let fs = make_fs(kind, data)?;
        let dest = fs.path().join("data");
        eprintln!(
            "  copying the stopped data directory to {} ({}) ...",
            dest.display(),
            kind.name()
        );
        let t = Instant::now();
        let mut src = init_data.clone().into_os_string();
        src.push("/.");
        run_ok(Command::new("cp").arg("-a").arg(&src).arg(&dest))?;
        copy_over = Some(t.elapsed());
        eprintln!("  done in {}", human(t.elapsed()));
        let cluster = PgCluster::try_adopt(&dest, AdoptOptions::new().fix_ownership())
            .map_err(|e| anyhow!(e))?;
        setups.push((
            kind,
            Setup {
                server: Server::new(cluster),
                fs,
            },
        ));
    }
    setups.push((init_kind, init));
    setups.sort_by_key(|(k, _)| kinds.iter().position(|x| x == k));
    Ok(Clusters {
        setups,
        db_bytes,
        init_took,
        copy_over,
    })
}

/// A loop file system of `kind` for `data` bytes with an empty `data` directory (a
/// subvolume on btrfs: the `btrfs` provider snapshots the subvolume holding the data).
pub(crate) fn make_fs(kind: FsKind, data: u64) -> anyhow::Result<LoopFs> {
    let fs = LoopFs::new(kind, image_size(kind, data)).map_err(|e| anyhow!(e))?;
    let dir = fs.path().join("data");
    if kind == FsKind::Btrfs {
        run_ok(
            Command::new("btrfs")
                .args(["subvolume", "create"])
                .arg(&dir),
        )?;
    } else {
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(fs)
}

/// Sets up the archive on one file system and measures its providers.
fn bench_fs(
    args: &PostgresArgs,
    bin: &Path,
    scale: u32,
    kind: FsKind,
    setup: &mut Setup,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<ProviderResult>> {
    let catalog = tempfile::Builder::new()
        .prefix("shadowcopy-bench-catalog-")
        .tempdir()?;
    let archive = setup.fs.path().join("wal-archive");
    let work = tempfile::Builder::new()
        .prefix("shadowcopy-bench-pg-")
        .tempdir()?;
    let url = setup_archive(bin, catalog.path(), setup, &archive)?;

    let mut ctx = Ctx {
        bin,
        catalog: catalog.path(),
        archive: &archive,
        work: work.path(),
        scale,
        url,
        setup,
        failures: RefCell::new(Vec::new()),
    };
    let mut results = Vec::new();
    for provider in args.providers_on(kind) {
        let mut runs = Vec::new();
        for i in 1..=args.runs {
            eprintln!(
                "scale {scale}, {provider}: run {i}/{} ({}) ...",
                args.runs,
                kind.name()
            );
            let run = ctx
                .run_once(args, provider)
                .with_context(|| format!("{provider} run {i}"))?;
            runs.push(run);
        }
        eprintln!(
            "scale {scale}, {provider}: TPS for {} s without copies, then with a copy every {} ...",
            args.tps_seconds,
            humantime::format_duration(args.copy_every)
        );
        let tps = ctx
            .tps(args, provider)
            .with_context(|| format!("{provider} TPS"))?;
        results.push(ProviderResult {
            provider: provider.to_string(),
            runs,
            tps,
        });
    }
    ctx.setup.server.stop();
    for f in ctx.failures.take() {
        notes.push(format!("scale {scale}: {f}"));
    }
    Ok(results)
}

/// Starts the server of `setup` if needed, sets up the WAL archive `archive` with
/// `shadowcopy pg setup URL --archive DIR --apply` and restarts the server (archive_mode
/// takes effect at a restart). Returns the server's URL.
pub(crate) fn setup_archive(
    bin: &Path,
    catalog: &Path,
    setup: &mut Setup,
    archive: &Path,
) -> anyhow::Result<String> {
    if !setup.server.cluster.is_running() {
        setup.server.start()?;
    }
    let url = setup.server.cluster.url();
    shadowcopy(
        bin,
        catalog,
        "pg",
        &[
            "setup".into(),
            url.clone(),
            "--archive".into(),
            archive.to_string_lossy().into(),
            "--apply".into(),
        ],
    )?;
    setup.server.stop();
    setup.server.start()?;
    ensure!(
        psql(&setup.server.cluster, "SHOW archive_mode")? == "on",
        "archive_mode is not on after `pg setup --apply` and a restart"
    );
    Ok(url)
}

/// A pgbench cluster of one scale on a file system of one kind, archiving its WAL
/// (`wal-archive` on that file system), with a fresh catalog and work directory for
/// the runs against it: what the expose and verify workloads start from.
pub(crate) struct ArchivedCluster {
    catalog: tempfile::TempDir,
    work: tempfile::TempDir,
    archive: PathBuf,
    url: String,
    kind: FsKind,
    /// Last, so it goes last: its server stops and its file system is unmounted after
    /// the directories above are removed.
    pub(crate) clusters: Clusters,
}

/// Makes the pgbench database of `scale` on a file system of `kind` and sets up its WAL
/// archive; `workload` names the work directory.
pub(crate) fn archived_cluster(
    bin: &Path,
    scale: u32,
    kind: FsKind,
    workload: &str,
) -> anyhow::Result<ArchivedCluster> {
    let mut clusters = make_clusters(scale, &[kind])?;
    let catalog = tempfile::Builder::new()
        .prefix("shadowcopy-bench-catalog-")
        .tempdir()?;
    let work = tempfile::Builder::new()
        .prefix(&format!("shadowcopy-bench-{workload}-"))
        .tempdir()?;
    let setup = setup_of(&mut clusters, kind)?;
    let archive = setup.fs.path().join("wal-archive");
    let url = setup_archive(bin, catalog.path(), setup, &archive)?;
    Ok(ArchivedCluster {
        catalog,
        work,
        archive,
        url,
        kind,
        clusters,
    })
}

impl ArchivedCluster {
    /// What the runs against it need.
    pub(crate) fn ctx<'a>(&'a mut self, bin: &'a Path, scale: u32) -> anyhow::Result<Ctx<'a>> {
        Ok(Ctx {
            bin,
            catalog: self.catalog.path(),
            archive: &self.archive,
            work: self.work.path(),
            scale,
            url: self.url.clone(),
            setup: setup_of(&mut self.clusters, self.kind)?,
            failures: Default::default(),
        })
    }
}

/// The cluster of `clusters` on the file system of `kind`.
fn setup_of(clusters: &mut Clusters, kind: FsKind) -> anyhow::Result<&mut Setup> {
    clusters
        .setups
        .iter_mut()
        .find(|(k, _)| *k == kind)
        .map(|(_, setup)| setup)
        .context("no cluster on the provider's file system")
}

/// Everything the runs on one file system need.
pub(crate) struct Ctx<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) catalog: &'a Path,
    pub(crate) archive: &'a Path,
    /// pgbench's output and logs.
    pub(crate) work: &'a Path,
    pub(crate) scale: u32,
    pub(crate) url: String,
    pub(crate) setup: &'a mut Setup,
    /// Creates that failed (product problems), reported under the tables.
    pub(crate) failures: RefCell<Vec<String>>,
}

impl Ctx<'_> {
    pub(crate) fn cluster(&self) -> &PgCluster {
        &self.setup.server.cluster
    }

    pub(crate) fn psql(&self, sql: &str) -> anyhow::Result<String> {
        psql(self.cluster(), sql)
    }

    pub(crate) fn count(&self, table: &str) -> anyhow::Result<i64> {
        self.psql(&format!("SELECT count(*) FROM {table}"))?
            .parse()
            .with_context(|| format!("count of {table}"))
    }

    /// The current WAL insert position in bytes.
    fn wal_lsn(&self) -> anyhow::Result<u64> {
        self.psql("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")?
            .parse()
            .context("pg_current_wal_lsn")
    }

    fn create_args(&self, provider: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--postgres".into(),
            self.url.clone(),
            "--pg-archive".into(),
            self.archive.to_string_lossy().into(),
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

    /// `shadowcopy create --no-verify` of the cluster: the copy's id.
    pub(crate) fn create_unverified(&self, provider: &str) -> anyhow::Result<i64> {
        let mut args = self.create_args(provider);
        args.push("--no-verify".into());
        let out = shadowcopy(self.bin, self.catalog, "create", &args)?;
        let created: Value = serde_json::from_slice(&out.stdout).context("create --json output")?;
        created["id"].as_i64().context("create --json has no id")
    }

    /// `shadowcopy create` of the cluster: the parsed `--json` output, which must say the
    /// copy passed verification.
    pub(crate) fn create(&self, provider: &str) -> anyhow::Result<Value> {
        let out = shadowcopy(
            self.bin,
            self.catalog,
            "create",
            &self.create_args(provider),
        )
        .map_err(|e| {
            anyhow!(
                "{e:#}\nserver log (end):\n{}",
                tail(&self.cluster().log(), 30)
            )
        })?;
        let created: Value = serde_json::from_slice(&out.stdout).context("create --json output")?;
        ensure!(
            created["verification"]["ok"].as_bool() == Some(true),
            "copy {} did not pass verification: {}",
            created["id"],
            created["verification"]
        );
        for w in created["warnings"].as_array().into_iter().flatten() {
            eprintln!("  create warning: {w}");
        }
        Ok(created)
    }

    /// [`Ctx::create`], tried up to [`CREATE_ATTEMPTS`] times: a failed create is a product
    /// problem, recorded for the notes under the tables, and its leftover copy deleted.
    /// Returns the output and the wall time of the create that succeeded.
    fn create_retrying(&self, provider: &str) -> anyhow::Result<(Value, Duration)> {
        for attempt in 1.. {
            let t = Instant::now();
            match self.create(provider) {
                Ok(created) => return Ok((created, t.elapsed())),
                Err(e) if attempt < CREATE_ATTEMPTS => {
                    let msg = format!(
                        "`shadowcopy create --provider {provider}` failed after {} \
                         (attempt {attempt} of {CREATE_ATTEMPTS}, retried): {}",
                        human(t.elapsed()),
                        first_lines(&format!("{e:#}"), 4)
                    );
                    eprintln!("  {msg}");
                    self.failures.borrow_mut().push(msg);
                    self.delete_all();
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    /// Deletes every copy in the catalog (best effort): what a failed create kept.
    pub(crate) fn delete_all(&self) {
        let Ok(out) = shadowcopy(self.bin, self.catalog, "list", &["--json".into()]) else {
            return;
        };
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for c in listed.as_array().into_iter().flatten() {
            if let Some(id) = c["id"].as_i64() {
                if let Err(e) = self.delete(id) {
                    eprintln!("  cannot delete copy {id}: {e:#}");
                }
            }
        }
        self.trim();
    }

    pub(crate) fn delete(&self, id: i64) -> anyhow::Result<()> {
        shadowcopy(self.bin, self.catalog, "delete", &[id.to_string()])?;
        Ok(())
    }

    /// Gives the blocks freed by a deleted copy back to the host (the loop device punches
    /// holes in its image); best effort.
    pub(crate) fn trim(&self) {
        let _ = Command::new("fstrim").arg(self.setup.fs.path()).output();
    }

    /// Starts pgbench (`-c 4 -j 2 EXTRA`, output in `dir`) and waits until it commits.
    pub(crate) fn start_load(&self, extra: &[&str], dir: &Path) -> anyhow::Result<Pgbench> {
        let load = Pgbench::spawn(self.cluster(), extra, dir)?;
        // pgbench truncates pgbench_history before its clients start: rows mean the load runs.
        self.wait_for(Duration::from_secs(300), "pgbench to commit", |c| {
            Ok(c.count("pgbench_history")? > 0)
        })?;
        Ok(load)
    }

    /// Waits until every pgbench session is gone, so no commit is still on its way.
    pub(crate) fn wait_sessions_ended(&self) -> anyhow::Result<()> {
        self.wait_for(Duration::from_secs(60), "pgbench's sessions to end", |c| {
            Ok(c.psql(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )? == "0")
        })
    }

    fn run_once(&mut self, args: &PostgresArgs, provider: &str) -> anyhow::Result<Run> {
        drop_caches()?;
        let load = self.start_load(&["-T", "86400"], &self.work.join("load"))?;
        std::thread::sleep(args.warmup);
        let rows_before = self.count("pgbench_history")?;
        let lsn_before = self.wal_lsn()?;

        let created = self.create_retrying(provider);
        let stopped = load.interrupt();
        let (created, create_wall) = created?;
        stopped?;
        let id = created["id"].as_i64().context("create --json has no id")?;

        self.wait_sessions_ended()?;
        let rows_after = self.count("pgbench_history")?;
        let wal_since = self.wal_lsn()?.saturating_sub(lsn_before);
        self.archive_all()?;
        self.setup.server.stop();

        // Roll-forward first: it follows the newest timeline, and the point-in-time
        // restore promotes the copy to a new one that branches off at the copy, so a
        // roll-forward after it would (rightly) replay that branch, not the load.
        let (rf_restore, rf_start) = self.restore(id, "roll-forward")?;
        self.check_accounts()?;
        let rows = self.count("pgbench_history")?;
        ensure!(
            rows == rows_after,
            "ROLL-FORWARD RESTORE IS WRONG: pgbench_history holds {rows} rows, the load \
             committed {rows_after} (the copy was made when it held {rows_before})\n\
             server log (end):\n{}",
            tail(&self.cluster().log(), 30)
        );
        self.archiver_report("after the roll-forward restore");
        self.setup.server.stop();

        let (pit_restore, pit_start) = self.restore(id, "point-in-time")?;
        self.check_accounts()?;
        let rows = self.count("pgbench_history")?;
        ensure!(
            (rows_before..=rows_after).contains(&rows),
            "POINT-IN-TIME RESTORE IS WRONG: pgbench_history holds {rows} rows; the copy \
             must hold the {rows_before} committed before the create and at most the \
             {rows_after} of the whole load"
        );
        self.archiver_report("after the point-in-time restore");

        self.delete(id)?;
        self.trim();

        let run = Run {
            create_wall,
            freeze_window: micros(&created["freeze_window_us"])?,
            prepare: phase(&created, "prepare")?,
            commit: phase(&created, "commit")?,
            post_snapshot: phase(&created, "post-snapshot")?,
            verify: phase(&created, "verify")?,
            pit_restore,
            pit_start,
            rf_restore,
            rf_start,
            wal_since,
        };
        eprintln!(
            "  create {} (freeze window {}, prepare {}, commit {}, post-snapshot {}, verify {}); \
             point-in-time {} + start {}; roll-forward {} + start {} ({} of WAL since the create began); \
             history rows {rows_before} before the create, {rows_after} after the load",
            human(run.create_wall),
            human(run.freeze_window),
            human(run.prepare),
            human(run.commit),
            human(run.post_snapshot),
            human(run.verify),
            human(run.pit_restore),
            human(run.pit_start),
            human(run.rf_restore),
            human(run.rf_start),
            human_bytes(run.wal_since),
        );
        Ok(run)
    }

    /// Makes the WAL written so far archived: switches to a new segment and waits until
    /// the archiver reports the finished one stored.
    fn archive_all(&self) -> anyhow::Result<()> {
        let done = self.psql("SELECT pg_walfile_name(pg_switch_wal())")?;
        self.wait_for(Duration::from_secs(600), "the WAL to be archived", |c| {
            let last = c.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")?;
            Ok(last.len() >= 24 && &last[..24] >= done.as_str())
        })
        .map_err(|e| {
            anyhow!(
                "{e:#} (waiting for {done}; pg_stat_archiver: {})",
                self.psql(
                    "SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver"
                )
                .unwrap_or_default()
            )
        })
    }

    /// Logs archiver failures (a restored server pushing WAL the archive already holds
    /// with other content is refused).
    fn archiver_report(&self, when: &str) {
        if let Ok(s) =
            self.psql("SELECT failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver")
        {
            if !s.starts_with("0|") {
                let log = self.cluster().log();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains("archiv")).collect();
                eprintln!(
                    "  archiver failures {when} (failed_count|last_failed_wal): {s}; server log:\n    {}",
                    lines[lines.len().saturating_sub(4)..].join("\n    ")
                );
            }
        }
    }

    /// `pgbench_accounts` must hold scale × 100000 rows.
    pub(crate) fn check_accounts(&self) -> anyhow::Result<()> {
        let rows = self.count("pgbench_accounts")?;
        let want = i64::from(self.scale) * ROWS_PER_SCALE;
        ensure!(
            rows == want,
            "RESTORE IS WRONG: pgbench_accounts holds {rows} rows instead of {want}"
        );
        Ok(())
    }

    /// With the server stopped: drops the page cache, restores copy `id` in `mode`, starts
    /// the server and waits until it is out of recovery. Returns the restore's wall time
    /// and the time from the server's start until it answered `pg_is_in_recovery() = f`.
    pub(crate) fn restore(&mut self, id: i64, mode: &str) -> anyhow::Result<(Duration, Duration)> {
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
        let logged = self.cluster().log().len();
        let start = self.start_until_writable()?;
        eprintln!(
            "  {mode}: restore {} ({}), then the server took {} to leave recovery:\n{}",
            human(wall),
            common::restore_steps(&restored),
            human(start),
            start_log(self.cluster().log().get(logged..).unwrap_or_default())
        );
        Ok((wall, start))
    }

    /// Starts the server and waits until it answers `SELECT pg_is_in_recovery()` with `f`;
    /// returns how long that took.
    pub(crate) fn start_until_writable(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.setup.server.start()?;
        self.wait_for(SERVER_TIMEOUT, "the end of recovery", |c| {
            Ok(c.psql("SELECT pg_is_in_recovery()")? == "f")
        })?;
        Ok(t.elapsed())
    }

    /// Polls `ready` every 20 ms until it is true; an error after `limit`.
    pub(crate) fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        ready: impl Fn(&Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let last = ready(self);
            if matches!(last, Ok(true)) {
                return Ok(());
            }
            if t.elapsed() > limit {
                let why = last.err().map(|e| format!(": {e:#}")).unwrap_or_default();
                bail!(
                    "waited {} for {what}{why}\nserver log (end):\n{}",
                    human(limit),
                    tail(&self.cluster().log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// pgbench for `--tps-seconds` without copies, then with a copy started every
    /// `--copy-every` (the first after half of it, once pgbench runs), after the data is
    /// read into the page cache and an unmeasured pgbench of `--warmup`.
    fn tps(&self, args: &PostgresArgs, provider: &str) -> anyhow::Result<Tps> {
        prewarm(self.cluster().data_dir())?;
        let warmup = args.warmup.as_secs().max(1).to_string();
        Pgbench::spawn(
            self.cluster(),
            &["-T", &warmup],
            &self.work.join("tps-warmup"),
        )?
        .finish_unlogged()?;
        let seconds = args.tps_seconds.to_string();
        let logged = ["-T", seconds.as_str(), "-l", "--aggregate-interval", "1"];

        let none =
            Pgbench::spawn(self.cluster(), &logged, &self.work.join("tps-none"))?.finish()?;

        let pgbench = Pgbench::spawn(self.cluster(), &logged, &self.work.join("tps-copies"))?;
        let start = Instant::now();
        let end = start + Duration::from_secs(args.tps_seconds);
        let mut next = start + args.copy_every / 2;
        let mut creates = Vec::new();
        let mut late = 0;
        let result = (|| -> anyhow::Result<()> {
            loop {
                let now = Instant::now();
                if now >= end || pgbench.exited() {
                    return Ok(());
                }
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
                    continue;
                }
                let began = Instant::now();
                let (created, took) = self.create_retrying(provider)?;
                creates.push(took);
                self.delete(created["id"].as_i64().context("create --json has no id")?)?;
                let done = Instant::now();
                let slot = began + args.copy_every;
                if done > slot {
                    // The next create starts right away, late (if pgbench still runs).
                    if done < end {
                        late += 1;
                    }
                    next = done;
                } else {
                    next = slot;
                }
            }
        })();
        if let Err(e) = result {
            let _ = pgbench.interrupt();
            return Err(e);
        }
        let copies = pgbench.finish()?;
        self.trim();
        let tps = Tps {
            none,
            copies,
            creates,
            late,
        };
        eprintln!(
            "  TPS {:.0} without copies, {:.0} with {} copies ({} started late); \
             longest transaction {} / {}",
            tps.none.tps,
            tps.copies.tps,
            tps.creates.len(),
            tps.late,
            opt_human(tps.none.longest),
            opt_human(tps.copies.longest),
        );
        Ok(tps)
    }
}

/// A PostgreSQL cluster of the test support crate, started by us (so the start may take
/// as long as recovery needs) and stopped by its `stop` (fast shutdown).
pub(crate) struct Server {
    pub(crate) cluster: PgCluster,
    /// Postmasters we started, reaped after each stop.
    children: Vec<Child>,
}

impl Server {
    pub(crate) fn new(cluster: PgCluster) -> Server {
        Server {
            cluster,
            children: Vec::new(),
        }
    }

    /// Starts the postmaster like `PgCluster::try_start` (same socket, port and log) and
    /// waits until `postmaster.pid` says ready (or standby: consistent in archive
    /// recovery), for up to [`SERVER_TIMEOUT`].
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let c = &self.cluster;
        let log_path = c.run_dir().join("server.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = c.command("postgres");
        cmd.arg("-D")
            .arg(c.data_dir())
            .arg("-p")
            .arg(c.port().to_string())
            .arg("-k")
            .arg(c.socket_dir())
            .args(["-c", "listen_addresses="])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = cmd.spawn().context("cannot start postgres")?;
        let pid = child.id().to_string();
        let t = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "postgres exited while starting ({status}); server log (end):\n{}",
                    tail(&c.log(), 30)
                );
            }
            if let Ok(text) = fs::read_to_string(c.data_dir().join("postmaster.pid")) {
                let lines: Vec<&str> = text.lines().collect();
                if lines.len() >= 8
                    && lines[0].trim() == pid
                    && matches!(lines[7].trim(), "ready" | "standby")
                {
                    self.children.push(child);
                    return Ok(());
                }
            }
            if t.elapsed() > SERVER_TIMEOUT {
                self.children.push(child);
                self.cluster.kill9();
                bail!(
                    "postgres did not become ready within {}; server log (end):\n{}",
                    human(SERVER_TIMEOUT),
                    tail(&self.cluster.log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fast shutdown; waits for it (panics with the server log if it does not stop).
    pub(crate) fn stop(&mut self) {
        self.cluster.stop();
        for mut c in self.children.drain(..) {
            let _ = c.wait();
        }
    }
}

/// A pgbench client run: `pgbench -c 4 -j 2 EXTRA postgres` with its output in `dir`.
pub(crate) struct Pgbench {
    child: Child,
    dir: PathBuf,
}

impl Pgbench {
    pub(crate) fn spawn(
        cluster: &PgCluster,
        extra: &[&str],
        dir: &Path,
    ) -> anyhow::Result<Pgbench> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
        let mut args = vec!["-c", CLIENTS, "-j", THREADS];
        args.extend_from_slice(extra);
        let prefix = dir.join("agg");
        let prefix = prefix.to_string_lossy();
        if extra.contains(&"-l") {
            args.extend(["--log-prefix", &prefix]);
        }
        let child = pgbench_cmd(cluster, &args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout"))?)
            .stderr(fs::File::create(dir.join("stderr"))?)
            .spawn()
            .context("cannot start pgbench")?;
        Ok(Pgbench {
            child,
            dir: dir.to_path_buf(),
        })
    }

    pub(crate) fn exited(&self) -> bool {
        // `try_wait` needs `&mut`; /proc tells whether the process still runs.
        fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .is_some_and(|state| state == "Z" || state == "X")
            })
            .unwrap_or(true)
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Stops a load meant to run until told (SIGTERM) and reaps it; an error when it had
    /// already ended on its own.
    pub(crate) fn interrupt(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "pgbench ended on its own ({status}): {}",
                tail(&self.stderr(), 10)
            );
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            // SIGTERM, not SIGINT: a shell starting the bench in the background makes its
            // children ignore SIGINT.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        self.child.wait()?;
        Ok(())
    }

    /// Waits for a timed run; an error when it failed.
    pub(crate) fn finish_unlogged(&mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        ensure!(
            status.success(),
            "pgbench failed ({status}): {}",
            tail(&self.stderr(), 10)
        );
        Ok(())
    }

    /// Waits for a timed run and reads its TPS and per-second log.
    pub(crate) fn finish(mut self) -> anyhow::Result<Bench> {
        self.finish_unlogged()?;
        let stdout = fs::read_to_string(self.dir.join("stdout"))?;
        let tps = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("tps = "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no `tps = ` in pgbench's output:\n{stdout}"))?;
        let (slowest_second, longest) = aggregates(&self.dir)?;
        Ok(Bench {
            tps,
            slowest_second,
            longest,
        })
    }
}

/// Reads pgbench's aggregate logs (`agg.PID`, `agg.PID.THREAD`; one line per second:
/// `interval_start num_transactions sum_latency sum_latency_2 min_latency max_latency …`,
/// latencies in µs): the fewest transactions in a whole second (the first and the last
/// second, usually partial, left out when there are more than two) and the longest
/// transaction.
fn aggregates(dir: &Path) -> anyhow::Result<(Option<u64>, Option<Duration>)> {
    let mut per_second = std::collections::BTreeMap::<u64, u64>::new();
    let mut longest: Option<u64> = None;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if !e.file_name().to_string_lossy().starts_with("agg.") {
            continue;
        }
        for line in fs::read_to_string(e.path())?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let (Ok(at), Ok(n), Ok(max)) = (f[0].parse(), f[1].parse::<u64>(), f[5].parse()) else {
                continue;
            };
            *per_second.entry(at).or_default() += n;
            if n > 0 {
                longest = Some(longest.map_or(max, |l: u64| l.max(max)));
            }
        }
    }
    let counts: Vec<u64> = per_second.values().copied().collect();
    let inner = if counts.len() > 2 {
        &counts[1..counts.len() - 1]
    } else {
        &counts[..]
    };
    Ok((
        inner.iter().copied().min(),
        longest.map(Duration::from_micros),
    ))
}

/// `pgbench ARGS postgres` against `cluster` as its `postgres` user, without `PG*`
/// variables that could redirect it.
pub(crate) fn pgbench_cmd(cluster: &PgCluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(pg_bin("pgbench"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("-h")
        .arg(cluster.socket_dir())
        .arg("-p")
        .arg(cluster.port().to_string())
        .args(["-U", "postgres"])
        .args(args)
        .arg("postgres");
    cmd
}

pub(crate) fn psql(cluster: &PgCluster, sql: &str) -> anyhow::Result<String> {
    cluster.try_psql(sql).map_err(|e| anyhow!(e))
}

/// Runs `cmd`; an error with its output when it fails, else its output.
pub(crate) fn run_ok(cmd: &mut Command) -> anyhow::Result<std::process::Output> {
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
    Ok(out)
}

/// Reads every file under `dir` once, so the measurement starts with the data in the
/// page cache (as a server that has been running a while would have it).
pub(crate) fn prewarm(dir: &Path) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file() {
                // A file may vanish meanwhile (temp files of the server).
                if let Ok(mut f) = fs::File::open(e.path()) {
                    while f.read(&mut buf).unwrap_or(0) > 0 {}
                }
            }
        }
    }
    Ok(())
}

/// The first `n` lines of `s`, joined by ` | `.
pub(crate) fn first_lines(s: &str, n: usize) -> String {
    s.lines().take(n).collect::<Vec<_>>().join(" | ")
}

/// The last `n` lines of `s`.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn opt_human(d: Option<Duration>) -> String {
    d.map_or("–".into(), human)
}

/// Median, min and max of a byte count, like [`Spread::cell`].
fn bytes_cell(values: &[u64]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    match (v.first(), v.last()) {
        (Some(min), Some(max)) if min != max => format!(
            "{} ({} – {})",
            human_bytes(v[v.len() / 2]),
            human_bytes(*min),
            human_bytes(*max)
        ),
        (Some(min), _) => human_bytes(*min),
        _ => "–".into(),
    }
}

/// One row of the runs table: a label and how to read the figure from a run.
type Figure = (&'static str, fn(&Run) -> Duration);

const FIGURES: [Figure; 12] = [
    ("create, wall time", |r| r.create_wall),
    ("freeze window (shadowcopy)", |r| r.freeze_window),
    ("prepare phase (pg_backup_start, checkpoint)", |r| r.prepare),
    ("commit phase (provider copy)", |r| r.commit),
    ("post-snapshot phase (backup_label, WAL, persist)", |r| {
        r.post_snapshot
    }),
    ("verify phase (sandbox, pg_amcheck, pg_checksums)", |r| {
        r.verify
    }),
    ("point-in-time: restore, wall time", |r| r.pit_restore),
    ("point-in-time: start until writable", |r| r.pit_start),
    ("**point-in-time: restore time**", |r| {
        r.pit_restore + r.pit_start
    }),
    ("roll-forward: restore, wall time", |r| r.rf_restore),
    ("roll-forward: start until promoted", |r| r.rf_start),
    ("**roll-forward: restore time**", |r| {
        r.rf_restore + r.rf_start
    }),
];

/// Per scale: the runs table (one column per provider) and the TPS table.
fn tables(args: &PostgresArgs, results: &[ScaleResult]) -> String {
    let mut t = String::new();
    for s in results {
        t += &format!(
            "\n#### Scale {} ({} database)\n\n| figure |",
            s.scale,
            human_bytes(s.db_bytes)
        );
        for p in &s.providers {
            t += &format!(" {} |", p.provider);
        }
        t += "\n|---|";
        t += &"---|".repeat(s.providers.len());
        for (label, get) in FIGURES {
            t += &format!("\n| {label} |");
            for p in &s.providers {
                let values: Vec<Duration> = p.runs.iter().map(get).collect();
                let cell = Spread::of(&values).map_or("–".into(), |s| s.cell());
                t += &format!(" {cell} |");
            }
        }
        t += "\n| WAL written from the create's start to the end of the load |";
        for p in &s.providers {
            let v: Vec<u64> = p.runs.iter().map(|r| r.wal_since).collect();
            t += &format!(" {} |", bytes_cell(&v));
        }

        t += &format!(
            "\n\npgbench TPS over {} s, without copies and with `shadowcopy create` started every {}:\n\n\
             | provider | TPS, no copies | TPS, copies | ratio | slowest second, no copies / copies (transactions) \
             | longest transaction, no copies | longest transaction, copies | copies taken (started late) | create wall time during the TPS run |\n\
             |---|---|---|---|---|---|---|---|---|",
            args.tps_seconds,
            humantime::format_duration(args.copy_every)
        );
        for p in &s.providers {
            let tps = &p.tps;
            let slow = |b: &Bench| b.slowest_second.map_or("–".into(), |n| n.to_string());
            t += &format!(
                "\n| {} | {:.0} | {:.0} | {:.2} | {} / {} | {} | {} | {} ({}) | {} |",
                p.provider,
                tps.none.tps,
                tps.copies.tps,
                if tps.none.tps > 0.0 {
                    tps.copies.tps / tps.none.tps
                } else {
                    0.0
                },
                slow(&tps.none),
                slow(&tps.copies),
                opt_human(tps.none.longest),
                opt_human(tps.copies.longest),
                tps.creates.len(),
                tps.late,
                Spread::of(&tps.creates).map_or("–".into(), |s| s.cell()),
            );
        }
        t += "\n";
    }
    t
}

/// Date, machine, version and workload, as a Markdown list.
fn environment(
    args: &PostgresArgs,
    results: &[ScaleResult],
    load_before: &str,
    load_after: &str,
) -> String {
    let version = Command::new(pg_bin("postgres"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let mut setup = String::new();
    for s in results {
        setup += &format!(
            "- scale {}: `pgbench -i -s {} -q` took {}, database {}{}\n",
            s.scale,
            s.scale,
            human(s.init_took),
            human_bytes(s.db_bytes),
            s.copy_over
                .map(|d| format!(
                    ", `cp -a` of the stopped data directory to the other file system {}",
                    human(d)
                ))
                .unwrap_or_default()
        );
    }
    format!(
        "{common}\
         - PostgreSQL: {version}, a throw-away cluster (initdb --data-checksums, default settings: \
           shared_buffers 128 MB, max_wal_size 1 GB, fsync on), WAL archive by `shadowcopy pg setup --apply` \
           on the same file system; `copy` and `reflink` on one XFS (`copy` keeps its copies in `copies/` on it), \
           `btrfs` on a btrfs whose data directory is a subvolume\n\
         {setup}\
         - load: `pgbench -c {CLIENTS} -j {THREADS}` (TPC-B-like, full speed, no `-R`) from {warmup} before each create \
           until it returns; create: `shadowcopy create --postgres URL --pg-archive DIR --provider P \
           --freeze-deadline {FREEZE_DEADLINE} --json` (with verify); restores: `restore ID --mode point-in-time|roll-forward \
           --discard-current --json` with the server stopped, then the server started\n\
         - runs: {runs} per provider and scale; page cache dropped before each run and each restore \
           (`sync; echo 3 > /proc/sys/vm/drop_caches`); TPS runs start with the data directory read into the page cache and an unmeasured pgbench of {warmup}\n",
        common = common::environment("XFS and btrfs file systems, each", load_before, load_after),
        warmup = humantime::format_duration(args.warmup),
        runs = args.runs,
    )
}

/// The server's own account of a start (its log's `LOG:` lines, timestamped), indented.
fn start_log(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains("LOG:"))
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_logs_give_the_slowest_whole_second_and_the_longest_transaction() {
        let dir = tempfile::tempdir().unwrap();
        // Two threads; the first and last seconds are partial.
        fs::write(
            dir.path().join("agg.123"),
            "100 5 10 10 1 7 0\n101 50 10 10 1 900 0\n102 40 10 10 1 20 0\n103 2 1 1 1 3 0\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("agg.123.1"),
            "100 5 10 10 1 8 0\n101 50 10 10 1 30 0\n102 30 10 10 1 25000 0\n",
        )
        .unwrap();
        fs::write(dir.path().join("stdout"), "tps = 1\n").unwrap();
        let (slowest, longest) = aggregates(dir.path()).unwrap();
        assert_eq!(slowest, Some(70));
        assert_eq!(longest, Some(Duration::from_micros(25000)));
    }
}
