//! `shadowcopy-bench peers postgres`: shadowcopy against pgBackRest and pg_basebackup on
//! a pgbench database under pgbench load, every method once per run, in the same run.
//!
//! Per scale (`--scale`, default 100 and 1000) the pgbench database is made once
//! (`pgbench -i -s N -q`, data checksums on) on an XFS loop file system, and, when
//! `btrfs` is chosen, copied with the server stopped into a subvolume of a btrfs loop file
//! system, as `shadowcopy-bench postgres` does (its [`crate::postgres::make_clusters`]).
//! Each cluster gets shadowcopy's WAL archive (`shadowcopy pg setup URL --archive DIR
//! --apply`, on its own file system). On XFS, when a pgBackRest method is chosen, a
//! pgBackRest stanza is made with its own config file (`--config`; lock, log and spool
//! paths in a temp dir; repository on the same XFS; `start-fast=y`; compression at its
//! default), the cluster's `archive_command` becomes `SHADOWCOPY_PUSH %p && pgbackrest
//! --stanza=bench archive-push %p`, and `stanza-create` and `check` run once. pgBackRest
//! and every PostgreSQL program run as the `postgres` user.
//!
//! Then, per run (`--runs`), each method (`--methods`, in order) is measured once:
//!
//! 1. the other cluster is stopped, the page cache dropped and the data directory read
//!    back into it, and `pgbench -c 4 -j 2` starts at full speed (no `-R`) logging every
//!    transaction (`-l`: its end time and latency);
//! 2. after `--warmup`, a window of `--baseline` without a copy; then the rows of
//!    `pgbench_history` are counted (all committed) and the used bytes of the copy's file
//!    system noted (after `syncfs`);
//! 3. the copy, timed from its start until it returned a finished copy:
//!    - `shadowcopy copy|reflink|btrfs`: `shadowcopy create --postgres URL --pg-archive
//!      DIR --provider P --freeze-deadline 3600s --json` (`copy` keeps its copies on the
//!      XFS), verification included, as a user runs it;
//!    - `pgbackrest [process-max=2]`: `pgbackrest --type=full backup [--process-max=2]`;
//!    - `pg_basebackup`: `pg_basebackup -D DIR -X stream -c fast` (plain format) on the XFS;
//! 4. the used bytes again: the copy's space is the difference (the load's writes and the
//!    WAL archived meanwhile included; on XFS both after `xfs_spaceman -c 'prealloc -s'`,
//!    so speculative preallocation freed late does not count); pgbench runs on for two seconds and until each of
//!    its logs has been written to since, then stops. From its log: the longest
//!    transaction that ran during the copy (the application's stall), the transactions per
//!    second completed during it, and the same over the baseline window;
//! 5. pgbench's sessions end, the server stops (fast shutdown); for the peers the data
//!    directory is emptied (the disaster; not timed); the page cache is dropped; then the
//!    restore is timed until the server answers `SELECT pg_is_in_recovery()` with `f`:
//!    - shadowcopy: `shadowcopy restore ID --mode point-in-time --discard-current --json`,
//!      start (recovery to the copy's consistent point, promotion);
//!    - pgBackRest: `pgbackrest restore --type=immediate --target-action=promote
//!      --set=LABEL [--process-max=2]`, start (the same recovery target);
//!    - pg_basebackup: `cp -a` of the backup into the data directory, `recovery.signal` with
//!      `recovery_target = 'immediate'`, `recovery_target_action = 'promote'` and
//!      `restore_command = '/bin/false'` (the backup holds its WAL; promotion gives the
//!      restored server a new timeline, so its WAL never reuses a name the archives
//!      hold), start;
//! 6. `pgbench_accounts` must hold scale × 100000 rows and `pgbench_history` at least the
//!    rows counted before the copy (and at most those of the whole load): wrong data fails
//!    the bench. Then the copy goes: `shadowcopy delete`, the previous pgBackRest backup
//!    expired (pgBackRest keeps at least one full backup), the base backup removed; and
//!    `fstrim` gives the blocks back to the host.
//!
//! A method that fails in a run (an error, `--limit` exceeded) is recorded as failed with
//! its reason and the bench goes on, as long as the server still starts afterwards.
//! After each scale its [`Group`] is added to the results (see [`super::Output::add`]).

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, ensure, Context};
use serde_json::Value;
use shadowcopy_testing::loopfs::FsKind;
use shadowcopy_testing::postgres::{make_postgres_dir, pg_bin, PgCluster, PgUser};

use super::fragment::{self, Fragmentation};
use super::record::{Figures, Group, Outcome, Sample};
use super::{timed, used_bytes, version, Common};
use crate::common::{self, drop_caches, loadavg, micros, phase};
use crate::postgres::{
    data_estimate, make_clusters, prepare, prewarm, run_ok, setup_archive, tail, too_big, Ctx,
    Setup, CLIENTS, GIB, ROWS_PER_SCALE, THREADS,
};
use crate::stats::{human, human_bytes};

/// The pgBackRest stanza of the XFS cluster.
const STANZA: &str = "bench";
/// How long pgbench runs on after a copy before it is stopped: its log is buffered, and a
/// transaction held up by the copy finishes meanwhile.
const LOG_GRACE: Duration = Duration::from_secs(2);

/// Options of the PostgreSQL comparison.
#[derive(clap::Args, Debug)]
pub struct PostgresArgs {
    /// pgbench scale to measure (repeat for more; scale 1 is about 15 MiB)
    #[arg(long = "scale", value_name = "N", default_values_t = [100u32, 1000], value_parser = clap::value_parser!(u32).range(1..))]
    scales: Vec<u32>,
    /// Methods to measure, in this order within each run
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "copy,reflink,btrfs,pgbackrest,pgbackrest-pm2,pg_basebackup"
    )]
    methods: Vec<Method>,
    /// Load before the baseline window of each sample (unmeasured)
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The window of load without a copy, just before the copy
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// Longest a peer's command (backup, restore, cp) may run before it is killed and the
    /// method counted as failed in that run
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    limit: Duration,
    /// Before the runs, fragment the clusters' files as copies kept beside a busy database
    /// do: this many copies (reflink on XFS, snapshots on btrfs, unverified), taken under
    /// full pgbench load `--fragment-every` apart, then deleted. The size is then recorded
    /// as `scale N, fragmented` (0: the files as `pgbench -i` wrote them)
    #[arg(long, default_value_t = 0)]
    fragment_copies: u32,
    /// Time between the fragmenting copies
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    fragment_every: Duration,
    #[command(flatten)]
    common: Common,
}

/// A row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Method {
    /// shadowcopy create --provider copy (XFS)
    #[value(name = "copy")]
    Copy,
    /// shadowcopy create --provider reflink (XFS)
    #[value(name = "reflink")]
    Reflink,
    /// shadowcopy create --provider btrfs (a second cluster on btrfs)
    #[value(name = "btrfs")]
    Btrfs,
    /// pgbackrest --type=full backup, restore --type=immediate
    #[value(name = "pgbackrest")]
    Pgbackrest,
    /// the same with --process-max=2
    #[value(name = "pgbackrest-pm2")]
    PgbackrestPm2,
    /// pg_basebackup -X stream -c fast, restored with cp -a
    #[value(name = "pg_basebackup")]
    PgBasebackup,
}

impl Method {
    /// The name of its row in the table.
    fn row(self) -> &'static str {
        match self {
            Method::Copy => "shadowcopy copy",
            Method::Reflink => "shadowcopy reflink",
            Method::Btrfs => "shadowcopy btrfs",
            Method::Pgbackrest => "pgbackrest",
            Method::PgbackrestPm2 => "pgbackrest process-max=2",
            Method::PgBasebackup => "pg_basebackup",
        }
    }

    /// The file system its cluster (and copy) is on.
    fn fs(self) -> FsKind {
        match self {
            Method::Btrfs => FsKind::Btrfs,
            _ => FsKind::Xfs,
        }
    }

    /// shadowcopy's provider, for shadowcopy's rows.
    fn provider(self) -> Option<&'static str> {
        match self {
            Method::Copy => Some("copy"),
            Method::Reflink => Some("reflink"),
            Method::Btrfs => Some("btrfs"),
            _ => None,
        }
    }

    /// `--process-max=2` for the second pgBackRest row.
    fn pgbackrest_args(self) -> &'static [&'static str] {
        match self {
            Method::PgbackrestPm2 => &["--process-max=2"],
            _ => &[],
        }
    }

    fn is_pgbackrest(self) -> bool {
        matches!(self, Method::Pgbackrest | Method::PgbackrestPm2)
    }
}

impl PostgresArgs {
    /// mkfs tools for the file systems of the chosen methods, and pgbackrest when chosen.
    pub fn tools(&self) -> Vec<&'static str> {
        let mut tools = Vec::new();
        if self.kinds().contains(&FsKind::Xfs) {
            tools.extend(["mkfs.xfs", "xfs_spaceman"]);
        }
        if self.kinds().contains(&FsKind::Btrfs) {
            tools.push("mkfs.btrfs");
        }
        if self.methods.iter().any(|m| m.is_pgbackrest()) {
            tools.push("pgbackrest");
        }
        tools
    }

    /// The kinds of file system the chosen methods need (XFS first: it gets the data).
    fn kinds(&self) -> Vec<FsKind> {
        super::file_systems(&self.methods, |m| m.fs())
    }

    /// The method the ratios are taken against: `shadowcopy reflink`, else the first
    /// shadowcopy method, else the first one.
    fn reference(&self) -> Method {
        let ours = || self.methods.iter().find(|m| m.provider().is_some());
        [Method::Reflink]
            .into_iter()
            .find(|m| self.methods.contains(m))
            .or_else(|| ours().copied())
            .unwrap_or(self.methods[0])
    }
}

/// Runs the comparison (as root).
pub fn bench(args: &PostgresArgs) -> anyhow::Result<()> {
    ensure!(!args.methods.is_empty(), "--methods is empty");
    prepare(args.common.dir.as_deref())?;
    if args.methods.contains(&Method::PgBasebackup) {
        ensure!(
            pg_bin("pg_basebackup").is_file(),
            "pg_basebackup not found beside postgres ({})",
            pg_bin("pg_basebackup").display()
        );
    }
    let bin = common::shadowcopy_bin(args.common.shadowcopy.as_deref())?;
    for &scale in &args.scales {
        let load_before = loadavg();
        let began = Instant::now();
        let Some(group) = bench_scale(args, &bin, scale, &load_before)
            .with_context(|| format!("scale {scale}"))?
        else {
            continue;
        };
        eprintln!("scale {scale} took {}", human(began.elapsed()));
        args.common.output.add(group)?;
    }
    Ok(())
}

/// One cluster on its loop file system, with what its methods need.
struct Site {
    kind: FsKind,
    /// Server first: it stops before the file system is unmounted.
    setup: Setup,
    catalog: tempfile::TempDir,
    /// shadowcopy's WAL archive.
    archive: PathBuf,
    url: String,
    /// The XFS cluster's, when a pgBackRest method is chosen.
    pgbackrest: Option<Pgbackrest>,
}

/// Everything one scale's samples share.
struct Scale<'a> {
    args: &'a PostgresArgs,
    bin: &'a Path,
    scale: u32,
    /// pgbench's logs.
    work: tempfile::TempDir,
}

/// What a method's copy left to restore from and to remove.
enum Made {
    Shadowcopy { id: i64, created: Value },
    Pgbackrest { label: String },
    Basebackup { dir: PathBuf },
}

/// The wrong data after a restore: fails the bench instead of the sample.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WrongData(String);

/// Measures every run of every method at one scale; `None` when it does not fit on disk.
fn bench_scale(
    args: &PostgresArgs,
    bin: &Path,
    scale: u32,
    load_before: &str,
) -> anyhow::Result<Option<Group>> {
    let kinds = args.kinds();
    let data = data_estimate(scale);
    // XFS: the data, a full copy (shadowcopy copy, or the base backup) and, for `copy`, its
    // restore staged beside the live files (the peers restore into an emptied directory;
    // `cp -a` and reflink clone), the repository (compressed) and WAL; btrfs: the data and
    // what changes under the load.
    let full_copies = 1
        + u64::from(args.methods.contains(&Method::PgBasebackup))
        + 2 * u64::from(args.methods.contains(&Method::Copy));
    let mut peak = full_copies * data + 4 * GIB;
    if kinds.contains(&FsKind::Btrfs) {
        peak += data + 4 * GIB;
    }
    if let Some(note) = too_big(scale, peak)? {
        eprintln!("{note}");
        return Ok(None);
    }
    let made = make_clusters(scale, &kinds)?;
    let mut sites = Vec::new();
    for (kind, mut setup) in made.setups {
        let catalog = tempfile::Builder::new()
            .prefix("shadowcopy-bench-catalog-")
            .tempdir()?;
        let archive = setup.fs.path().join("wal-archive");
        let url = setup_archive(bin, catalog.path(), &mut setup, &archive)?;
        let pgbackrest = if kind == FsKind::Xfs && args.methods.iter().any(|m| m.is_pgbackrest()) {
            let repo = Repository::Dir(setup.fs.path().join("pgbackrest"));
            Some(Pgbackrest::set_up(&setup, &repo, args.limit)?)
        } else {
            None
        };
        setup.server.stop();
        sites.push(Site {
            kind,
            setup,
            catalog,
            archive,
            url,
            pgbackrest,
        });
    }
    let ctx = Scale {
        args,
        bin,
        scale,
        work: tempfile::Builder::new()
            .prefix("shadowcopy-bench-peers-pg-")
            .tempdir()?,
    };
    let mut fragmented = String::new();
    if args.fragment_copies > 0 {
        for site in &mut sites {
            let f = ctx.fragment(site)?;
            eprintln!("  {}: {}", site.kind.name(), f.describe());
            fragmented += &format!("{}: {}; ", site.kind.name(), f.describe());
        }
    }
    let first = &mut sites[0].setup.server;
    first.start()?;
    let data_bytes: u64 = first
        .cluster
        .try_psql("SELECT sum(pg_database_size(oid)) FROM pg_database")
        .map_err(|e| anyhow!(e))?
        .parse()
        .context("pg_database_size")?;

    // Every finished run is saved at once: a scale 1000 measurement takes hours, and a
    // later failure or a stopped bench keeps the runs that finished.
    let group_so_far = |samples: Vec<Sample>, mut notes: Vec<String>, runs_done: u32| {
        if runs_done < args.common.runs {
            notes.push(format!(
                "Only {runs_done} of the {} runs asked for finished: the bench stopped after run \
                 {runs_done}.",
                args.common.runs
            ));
        }
        notes.extend(group_notes(args));
        let size = if args.fragment_copies > 0 {
            format!("scale {scale}, fragmented")
        } else {
            format!("scale {scale}")
        };
        let fragmentation = if args.fragment_copies > 0 {
            format!(
                "- fragmented first: {} copies under full pgbench load, {} apart, then deleted \
                 (extents as `filefrag` counts them, files of `base/`): {}\n",
                args.fragment_copies,
                humantime::format_duration(args.fragment_every),
                fragmented.trim_end_matches("; ")
            )
        } else {
            String::new()
        };
        Group {
            workload: "postgres".into(),
            size,
            data_bytes,
            reference: args.reference().row().into(),
            environment: environment(
                &format!(
                    "- data: `pgbench -i -s {scale} -q` took {}, database {} (all databases: {})\n\
                     {fragmentation}",
                    human(made.init_took),
                    human_bytes(made.db_bytes),
                    human_bytes(data_bytes)
                ),
                load_before,
            ),
            load: format!(
                "`pgbench -c {CLIENTS} -j {THREADS}` (TPC-B-like, full speed, no `-R`), every \
                 transaction logged; per sample the page cache is dropped and the data directory \
                 read back, {} of load unmeasured, then {} of baseline, then the copy; figures \
                 from the transactions within each window",
                humantime::format_duration(args.warmup),
                humantime::format_duration(args.baseline)
            ),
            notes,
            samples,
        }
    };
    let mut samples = Vec::new();
    let mut notes = Vec::new();
    for run in 1..=args.common.runs {
        for &method in &args.methods {
            eprintln!(
                "scale {scale}, run {run}/{}: {} ...",
                args.common.runs,
                method.row()
            );
            let site = sites
                .iter_mut()
                .position(|s| s.kind == method.fs())
                .context("no cluster for the method")?;
            for (i, other) in sites.iter_mut().enumerate() {
                if i != site {
                    other.setup.server.stop();
                }
            }
            let outcome = match ctx.sample(&mut sites[site], method, run) {
                Ok(f) => {
                    eprintln!(
                        "  copy {}, longest transaction {} (baseline {}), {:.0} TPS (baseline {:.0}), \
                         restore {}, space {}\n  {}",
                        human(Duration::from_secs_f64(f.copy_s)),
                        human(Duration::from_secs_f64(f.stall_s)),
                        human(Duration::from_secs_f64(f.baseline_stall_s)),
                        f.ops_during,
                        f.ops_baseline,
                        human(Duration::from_secs_f64(f.restore_s)),
                        human_bytes(f.copy_bytes),
                        f.detail
                    );
                    Outcome::Done(f)
                }
                Err(e) if e.downcast_ref::<WrongData>().is_some() => {
                    return Err(e.context(format!("{} run {run}", method.row())))
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    eprintln!("  FAILED: {reason}");
                    notes.push(format!(
                        "run {run}: {} failed: {}",
                        method.row(),
                        crate::postgres::first_lines(&reason, 3)
                    ));
                    sites[site].recover().with_context(|| {
                        format!("after {} failed in run {run}: {reason}", method.row())
                    })?;
                    Outcome::Failed { reason }
                }
            };
            samples.push(Sample {
                method: method.row().into(),
                run,
                outcome,
            });
        }
        if run < args.common.runs {
            let so_far = group_so_far(samples.clone(), notes.clone(), run);
            if let Err(e) = args.common.output.add_unfinished(so_far) {
                eprintln!("could not save run {run}'s results (the bench goes on): {e:#}");
            }
        }
    }
    for s in &mut sites {
        s.setup.server.stop();
    }
    Ok(Some(group_so_far(samples, notes, args.common.runs)))
}

impl Site {
    /// After a failed sample: the server must start again for the bench to go on.
    fn recover(&mut self) -> anyhow::Result<()> {
        if !self.setup.server.cluster.is_running() {
            self.setup.server.start()?;
        }
        self.setup
            .server
            .cluster
            .try_psql("SELECT 1")
            .map_err(|e| anyhow!(e))?;
        Ok(())
    }
}

impl Scale<'_> {
    /// The bench context of `site`'s cluster, and its pgBackRest when it has one.
    fn ctx<'s>(&'s self, site: &'s mut Site) -> (Ctx<'s>, Option<&'s mut Pgbackrest>) {
        let Site {
            setup,
            catalog,
            archive,
            url,
            pgbackrest,
            ..
        } = site;
        let ctx = Ctx {
            bin: self.bin,
            catalog: catalog.path(),
            archive,
            work: self.work.path(),
            scale: self.scale,
            url: url.clone(),
            setup,
            failures: RefCell::new(Vec::new()),
        };
        (ctx, pgbackrest.as_mut())
    }

    /// `--fragment-copies`: copies under full load, `--fragment-every` apart, then
    /// deleted; returns the cluster's fragmentation afterwards (server stopped).
    fn fragment(&self, site: &mut Site) -> anyhow::Result<Fragmentation> {
        let provider = match site.kind {
            FsKind::Btrfs => "btrfs",
            _ => "reflink",
        };
        let kind = site.kind.name();
        let (ctx, _) = self.ctx(site);
        if !ctx.cluster().is_running() {
            ctx.setup.server.start()?;
        }
        let before = fragment::measure(&ctx.cluster().data_dir().join("base"))?;
        eprintln!(
            "scale {}, {kind}: fragmenting ({} copies under load, {} apart); before: {}",
            self.scale,
            self.args.fragment_copies,
            humantime::format_duration(self.args.fragment_every),
            before.describe()
        );
        let load = ctx.start_load(&["-T", "86400"], &self.work.path().join("fragment"))?;
        let mut ids = Vec::new();
        let copied = (|| {
            for _ in 0..self.args.fragment_copies {
                std::thread::sleep(self.args.fragment_every);
                ids.push(ctx.create_unverified(provider)?);
            }
            anyhow::Ok(())
        })();
        let stopped = load.interrupt();
        copied?;
        stopped?;
        ctx.wait_sessions_ended()?;
        for id in ids {
            ctx.delete(id)?;
        }
        ctx.trim();
        ctx.setup.server.stop();
        fragment::measure(&ctx.cluster().data_dir().join("base"))
    }

    /// One method's sample: load, baseline window, copy, restore, check.
    fn sample(&self, site: &mut Site, method: Method, run: u32) -> anyhow::Result<Figures> {
        let (mut ctx, pgbackrest) = self.ctx(site);
        if !ctx.cluster().is_running() {
            ctx.setup.server.start()?;
        }
        drop_caches()?;
        prewarm(ctx.cluster().data_dir())?;
        let logs = self.work.path().join(format!(
            "run{run}-{}",
            method.row().replace([' ', '='], "-")
        ));
        let load = ctx.start_load(&["-T", "86400", "-l"], &logs)?;
        let loaded = (|| {
            std::thread::sleep(self.args.warmup);
            let baseline_from = now_us();
            std::thread::sleep(self.args.baseline);
            let baseline_to = now_us();
            let rows_before = ctx.count("pgbench_history")?;
            let fs_path = ctx.setup.fs.path().to_path_buf();
            let used_before = settled_used_bytes(&fs_path)?;
            let copy_from = now_us();
            let t = Instant::now();
            let made = self.copy(&ctx, pgbackrest.as_deref(), method);
            let copy_took = t.elapsed();
            let copy_to = now_us();
            let used_after = settled_used_bytes(&fs_path);
            wait_logs_written(&logs);
            anyhow::Ok((
                made,
                copy_took,
                (baseline_from, baseline_to),
                (copy_from, copy_to),
                rows_before,
                used_after.map(|a| a.saturating_sub(used_before)),
            ))
        })();
        let stopped = load.interrupt();
        let (made, copy_took, baseline, during, rows_before, copy_bytes) = loaded?;
        let made = match (made, stopped) {
            (Ok(made), Ok(())) => made,
            (made, stopped) => {
                self.discard(&ctx, made.as_ref().ok());
                made?;
                stopped?;
                unreachable!("one of them failed");
            }
        };
        let copy_bytes = copy_bytes?;
        let txns = read_transactions(&logs)?;
        let baseline = Window::of(&txns, baseline.0, baseline.1);
        let during = Window::of(&txns, during.0, during.1);

        ctx.wait_sessions_ended()?;
        let rows_after = ctx.count("pgbench_history")?;
        ctx.setup.server.stop();
        let restored = self.restore(&mut ctx, pgbackrest.as_deref(), method, &made);
        let (restore_took, restore_detail) = match restored {
            Ok(r) => r,
            Err(e) => {
                self.discard(&ctx, Some(&made));
                return Err(e);
            }
        };
        check(&ctx, rows_before, rows_after)?;
        let copy_detail = match &made {
            Made::Shadowcopy { created, .. } => format!(
                "create {} (freeze window {}, commit {}, verify {})",
                human(copy_took),
                human(micros(&created["freeze_window_us"])?),
                human(phase(created, "commit")?),
                human(phase(created, "verify")?)
            ),
            Made::Pgbackrest { label } => format!("backup {label} {}", human(copy_took)),
            Made::Basebackup { .. } => format!("pg_basebackup {}", human(copy_took)),
        };
        // The copy goes; for pgBackRest the one before it (one full backup must stay).
        match &made {
            Made::Pgbackrest { label } => {
                if let Some(pgbackrest) = pgbackrest {
                    pgbackrest.keep_only(label, self.args.limit)?;
                }
            }
            other => self.discard(&ctx, Some(other)),
        }
        ctx.trim();
        Ok(Figures {
            copy_s: copy_took.as_secs_f64(),
            stall_s: during.longest.as_secs_f64(),
            baseline_stall_s: baseline.longest.as_secs_f64(),
            ops_during: during.per_second(),
            ops_baseline: baseline.per_second(),
            restore_s: restore_took.as_secs_f64(),
            copy_bytes,
            detail: format!(
                "{copy_detail}; {restore_detail}; transactions during the copy {} (baseline {} in {}); \
                 pgbench_history {rows_before} rows before the copy, {rows_after} after the load",
                during.transactions,
                baseline.transactions,
                humantime::format_duration(self.args.baseline)
            ),
        })
    }

    /// Makes the copy of `method` under the load.
    fn copy(
        &self,
        ctx: &Ctx,
        pgbackrest: Option<&Pgbackrest>,
        method: Method,
    ) -> anyhow::Result<Made> {
        if let Some(provider) = method.provider() {
            let created = ctx.create(provider)?;
            let id = created["id"].as_i64().context("create --json has no id")?;
            return Ok(Made::Shadowcopy { id, created });
        }
        if method.is_pgbackrest() {
            let p = pgbackrest.context("pgBackRest is not set up")?;
            let mut cmd = p.command(&["--type=full", "backup"]);
            cmd.args(method.pgbackrest_args());
            timed(&mut cmd, self.args.limit)?;
            return Ok(Made::Pgbackrest {
                label: p.newest_label()?,
            });
        }
        let dir = basebackup_dir(ctx);
        make_postgres_dir(&dir).map_err(|e| anyhow!(e))?;
        let c = ctx.cluster();
        let mut cmd = c.command("pg_basebackup");
        cmd.arg("-h")
            .arg(c.socket_dir())
            .arg("-p")
            .arg(c.port().to_string())
            .args(["-U", "postgres", "-X", "stream", "-c", "fast", "-D"])
            .arg(&dir);
        timed(&mut cmd, self.args.limit)?;
        Ok(Made::Basebackup { dir })
    }

    /// With the server stopped: restores `made` and starts the server until it answers
    /// queries out of recovery. Returns the restore time and its steps.
    fn restore(
        &self,
        ctx: &mut Ctx,
        pgbackrest: Option<&Pgbackrest>,
        method: Method,
        made: &Made,
    ) -> anyhow::Result<(Duration, String)> {
        if let Made::Shadowcopy { id, .. } = made {
            let (wall, start) = ctx.restore(*id, "point-in-time")?;
            return Ok((
                wall + start,
                format!("restore {} + start {}", human(wall), human(start)),
            ));
        }
        let data = ctx.cluster().data_dir().to_path_buf();
        empty_dir(&data)?;
        drop_caches()?;
        let t = Instant::now();
        match made {
            Made::Pgbackrest { label } => {
                let p = pgbackrest.context("pgBackRest is not set up")?;
                let set = format!("--set={label}");
                let mut cmd = p.command(&[
                    "restore",
                    "--type=immediate",
                    "--target-action=promote",
                    &set,
                ]);
                cmd.args(method.pgbackrest_args());
                timed(&mut cmd, self.args.limit)?;
            }
            Made::Basebackup { dir } => {
                let mut src = dir.clone().into_os_string();
                src.push("/.");
                timed(
                    Command::new("cp").arg("-a").arg(&src).arg(&data),
                    self.args.limit,
                )?;
                recover_immediately(&data, ctx.cluster().user())?;
            }
            Made::Shadowcopy { .. } => unreachable!("restored above"),
        }
        let files = t.elapsed();
        let start = ctx.start_until_writable()?;
        Ok((
            t.elapsed(),
            format!("restore {} + start {}", human(files), human(start)),
        ))
    }

    /// Removes a copy that is no longer wanted (best effort; a failed copy's leftovers).
    fn discard(&self, ctx: &Ctx, made: Option<&Made>) {
        match made {
            Some(Made::Shadowcopy { id, .. }) => {
                if let Err(e) = ctx.delete(*id) {
                    eprintln!("  cannot delete copy {id}: {e:#}");
                }
            }
            Some(Made::Basebackup { dir }) => {
                let _ = fs::remove_dir_all(dir);
            }
            // pgBackRest cleans up a failed backup at the next one; a finished one is
            // expired once the next one is restored.
            Some(Made::Pgbackrest { .. }) => {}
            None => {
                ctx.delete_all();
                let _ = fs::remove_dir_all(basebackup_dir(ctx));
            }
        }
    }
}

/// [`used_bytes`] after XFS has let go of its speculative preallocation past the end of
/// files (which it otherwise frees minutes later, possibly during another copy); a no-op
/// elsewhere.
fn settled_used_bytes(fs: &Path) -> anyhow::Result<u64> {
    let xfs = common::sh("findmnt", &["-no", "FSTYPE", "-T", &fs.to_string_lossy()]) == "xfs";
    if xfs {
        run_ok(
            Command::new("xfs_spaceman")
                .args(["-c", "prealloc -s -m 0"])
                .arg(fs),
        )?;
    }
    used_bytes(fs)
}

/// Where pg_basebackup writes: beside the data directory, on the same XFS.
fn basebackup_dir(ctx: &Ctx) -> PathBuf {
    ctx.setup.fs.path().join("basebackup")
}

/// `pgbench_accounts` holds scale × 100000 rows and `pgbench_history` every row committed
/// before the copy and no more than the load committed.
fn check(ctx: &Ctx, rows_before: i64, rows_after: i64) -> anyhow::Result<()> {
    let accounts = ctx.count("pgbench_accounts")?;
    let want = i64::from(ctx.scale) * ROWS_PER_SCALE;
    if accounts != want {
        return Err(WrongData(format!(
            "RESTORE IS WRONG: pgbench_accounts holds {accounts} rows instead of {want}"
        ))
        .into());
    }
    let rows = ctx.count("pgbench_history")?;
    if !(rows_before..=rows_after).contains(&rows) {
        return Err(WrongData(format!(
            "RESTORE IS WRONG: pgbench_history holds {rows} rows; the copy must hold the \
             {rows_before} committed before it started and at most the {rows_after} of the \
             whole load\nserver log (end):\n{}",
            tail(&ctx.cluster().log(), 20)
        ))
        .into());
    }
    Ok(())
}

/// Removes everything inside `dir`, keeping `dir` itself (its owner and mode).
pub(crate) fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Recovery settings for a restored base backup: recover to its consistent point and
/// promote, as the other methods' restores do; the backup holds the WAL it needs.
fn recover_immediately(data: &Path, user: Option<PgUser>) -> anyhow::Result<()> {
    let conf = data.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&conf)
        .with_context(|| format!("opening {}", conf.display()))?;
    f.write_all(
        b"\n# restore of a pg_basebackup (shadowcopy-bench peers)\n\
          restore_command = '/bin/false'\n\
          recovery_target = 'immediate'\n\
          recovery_target_timeline = 'current'\n\
          recovery_target_action = 'promote'\n",
    )?;
    let signal = data.join("recovery.signal");
    fs::write(&signal, "")?;
    if let Some(u) = user {
        for p in [&conf, &signal] {
            std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid))
                .with_context(|| format!("chown {}", p.display()))?;
        }
    }
    Ok(())
}

/// Where a pgBackRest stanza keeps its backups and WAL.
pub(crate) enum Repository {
    /// A directory (made, owned by the server user).
    Dir(PathBuf),
    /// `repo1-type=s3`: a bucket on an S3-compatible server, under `path`.
    S3(S3Repository),
}

/// An S3 repository: pgBackRest speaks HTTPS only and checks the server's certificate
/// against `ca_file`, for the name `host`.
pub(crate) struct S3Repository {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) bucket: String,
    pub(crate) path: String,
    pub(crate) ca_file: PathBuf,
    pub(crate) key: String,
    pub(crate) secret: String,
}

impl Repository {
    /// The `repo1-*` lines of the config.
    fn config_lines(&self) -> String {
        match self {
            Repository::Dir(dir) => format!("repo1-path={}\n", dir.display()),
            Repository::S3(s3) => format!(
                "repo1-type=s3\n\
                 repo1-path={path}\n\
                 repo1-s3-bucket={bucket}\n\
                 repo1-s3-endpoint={host}\n\
                 repo1-storage-port={port}\n\
                 repo1-s3-region=us-east-1\n\
                 repo1-s3-uri-style=path\n\
                 repo1-s3-key={key}\n\
                 repo1-s3-key-secret={secret}\n\
                 repo1-storage-ca-file={ca}\n",
                path = s3.path,
                bucket = s3.bucket,
                host = s3.host,
                port = s3.port,
                key = s3.key,
                secret = s3.secret,
                ca = s3.ca_file.display(),
            ),
        }
    }
}

/// A cluster's pgBackRest: its config file and the newest backup kept.
pub(crate) struct Pgbackrest {
    /// Config, lock, log and spool paths (owned by the server user).
    dir: tempfile::TempDir,
    config: PathBuf,
    user: Option<PgUser>,
    /// The backup restored last; expired once a newer one is restored.
    kept: Option<String>,
}

impl Pgbackrest {
    /// Writes the config (repository `repo`), adds pgBackRest's archive-push to
    /// `archive_command` and makes the stanza. The server runs.
    pub(crate) fn set_up(
        setup: &Setup,
        repo: &Repository,
        limit: Duration,
    ) -> anyhow::Result<Pgbackrest> {
        let cluster = &setup.server.cluster;
        let dir = tempfile::Builder::new()
            .prefix("shadowcopy-bench-pgbackrest-")
            .tempdir()?;
        let mut dirs = vec![
            dir.path().to_path_buf(),
            dir.path().join("lock"),
            dir.path().join("log"),
            dir.path().join("spool"),
        ];
        if let Repository::Dir(d) = repo {
            dirs.push(d.clone());
        }
        for d in dirs {
            make_postgres_dir(&d).map_err(|e| anyhow!(e))?;
        }
        let config = dir.path().join("pgbackrest.conf");
        fs::write(&config, config_text(dir.path(), repo, cluster))
            .with_context(|| format!("writing {}", config.display()))?;
        let p = Pgbackrest {
            dir,
            config,
            user: cluster.user(),
            kept: None,
        };
        let ours = cluster
            .try_psql("SHOW archive_command")
            .map_err(|e| anyhow!(e))?;
        let both = format!("{ours} && {}", p.archive_push());
        cluster
            .try_psql(&format!(
                "ALTER SYSTEM SET archive_command = '{}'",
                both.replace('\'', "''")
            ))
            .and_then(|_| cluster.try_psql("SELECT pg_reload_conf()"))
            .map_err(|e| anyhow!(e))?;
        timed(&mut p.command(&["stanza-create"]), limit).context("pgbackrest stanza-create")?;
        timed(&mut p.command(&["check"]), limit).context("pgbackrest check")?;
        Ok(p)
    }

    /// `pgbackrest --config=FILE --stanza=bench ARGS` as the server user.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("pgbackrest");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("PG") {
                cmd.env_remove(&*k);
            }
        }
        cmd.arg(format!("--config={}", self.config.display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args)
            .current_dir(self.dir.path());
        if let Some(u) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    /// What `archive_command` runs to push a WAL file into the repository.
    fn archive_push(&self) -> String {
        format!(
            "pgbackrest --config={} --stanza={STANZA} archive-push %p",
            self.config.display()
        )
    }

    /// The label of the newest backup, from `pgbackrest info --output=json`.
    pub(crate) fn newest_label(&self) -> anyhow::Result<String> {
        let out = run_ok(&mut self.command(&["info", "--output=json"]))?;
        newest_label(&String::from_utf8_lossy(&out.stdout))
    }

    /// Keeps `label` (restored last) and expires the backup kept before it.
    fn keep_only(&mut self, label: &str, limit: Duration) -> anyhow::Result<()> {
        if let Some(old) = self.kept.replace(label.to_string()) {
            if old != label {
                let set = format!("--set={old}");
                timed(&mut self.command(&["expire", &set]), limit)
                    .with_context(|| format!("pgbackrest expire {set}"))?;
            }
        }
        Ok(())
    }
}

/// pgBackRest's config for the cluster: repository `repo`, lock, log and spool under
/// `dir`, a fast checkpoint at the backup's start, everything else at its default.
fn config_text(dir: &Path, repo: &Repository, cluster: &PgCluster) -> String {
    format!(
        "[global]\n\
         {repo}\
         lock-path={dir}/lock\n\
         log-path={dir}/log\n\
         spool-path={dir}/spool\n\
         log-level-console=warn\n\
         log-level-file=info\n\
         start-fast=y\n\
         \n\
         [{STANZA}]\n\
         pg1-path={data}\n\
         pg1-socket-path={socket}\n\
         pg1-port={port}\n\
         pg1-user=postgres\n",
        repo = repo.config_lines(),
        dir = dir.display(),
        data = cluster.data_dir().display(),
        socket = cluster.socket_dir().display(),
        port = cluster.port(),
    )
}

/// The newest backup's label in `pgbackrest info --output=json` (stanzas, each with its
/// backups oldest first).
fn newest_label(info: &str) -> anyhow::Result<String> {
    let v: Value = serde_json::from_str(info).context("pgbackrest info is not JSON")?;
    let stanza = v
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == STANZA))
        .with_context(|| format!("no stanza {STANZA} in pgbackrest info: {info}"))?;
    stanza["backup"]
        .as_array()
        .and_then(|b| {
            b.iter()
                .max_by_key(|b| b["timestamp"]["stop"].as_u64().unwrap_or(0))
        })
        .and_then(|b| b["label"].as_str())
        .map(str::to_string)
        .with_context(|| format!("no backup in pgbackrest info: {info}"))
}

/// Lets pgbench run for [`LOG_GRACE`], then until each of its logs has been written to
/// since (its writes are buffered: a write after the grace holds every line before it),
/// for at most a minute.
fn wait_logs_written(dir: &Path) {
    std::thread::sleep(LOG_GRACE);
    let sizes = log_sizes(dir);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let now = log_sizes(dir);
        if sizes
            .iter()
            .all(|(p, s)| now.iter().any(|(q, n)| q == p && n > s))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("  pgbench's log did not grow for a minute; its last lines may be missing");
}

fn log_sizes(dir: &Path) -> Vec<(PathBuf, u64)> {
    log_files(dir)
        .into_iter()
        .map(|p| {
            let n = fs::metadata(&p).map_or(0, |m| m.len());
            (p, n)
        })
        .collect()
}

/// pgbench's per-transaction logs in `dir` (one per thread).
fn log_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("agg."))
        .map(|e| e.path())
        .collect()
}

/// Microseconds since the epoch (pgbench's log clock).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One transaction of pgbench's log.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Txn {
    /// When it finished, µs since the epoch.
    end_us: u64,
    latency_us: u64,
}

/// A line of pgbench's per-transaction log: `client_id transaction_no time script_no
/// time_epoch time_us [schedule_lag] [retries]`, `time` the latency in µs (or `failed`,
/// `skipped`: not a finished transaction).
fn parse_transaction(line: &str) -> Option<Txn> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 {
        return None;
    }
    let latency_us = f[2].parse().ok()?;
    let secs: u64 = f[4].parse().ok()?;
    let us: u64 = f[5].parse().ok()?;
    Some(Txn {
        end_us: secs * 1_000_000 + us,
        latency_us,
    })
}

fn read_transactions(dir: &Path) -> anyhow::Result<Vec<Txn>> {
    let files = log_files(dir);
    ensure!(
        !files.is_empty(),
        "pgbench wrote no log in {}",
        dir.display()
    );
    let mut all = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        all.extend(text.lines().filter_map(parse_transaction));
    }
    Ok(all)
}

/// The load over a time window.
#[derive(Debug, PartialEq)]
struct Window {
    /// Transactions that finished within it.
    transactions: u64,
    /// The longest transaction that ran during any part of it.
    longest: Duration,
    length: Duration,
}

impl Window {
    fn of(txns: &[Txn], from_us: u64, to_us: u64) -> Window {
        let mut w = Window {
            transactions: 0,
            longest: Duration::ZERO,
            length: Duration::from_micros(to_us.saturating_sub(from_us)),
        };
        for t in txns {
            if (from_us..=to_us).contains(&t.end_us) {
                w.transactions += 1;
            }
            let began = t.end_us.saturating_sub(t.latency_us);
            if t.end_us >= from_us && began <= to_us {
                w.longest = w.longest.max(Duration::from_micros(t.latency_us));
            }
        }
        w
    }

    fn per_second(&self) -> f64 {
        let s = self.length.as_secs_f64();
        if s > 0.0 {
            self.transactions as f64 / s
        } else {
            0.0
        }
    }
}

/// The environment of the group: the machine and versions, then `data` (the setup line).
fn environment(data: &str, load_before: &str) -> String {
    let program = |name: &str| pg_bin(name).to_string_lossy().into_owned();
    format!(
        "{}- versions: {}, {}, {}, {}\n{data}",
        common::environment(
            "an XFS file system (the cluster, shadowcopy's copies and WAL archive, the pgBackRest \
             repository, the base backups) and a btrfs one (a second cluster from the same data, \
             for `shadowcopy btrfs`),",
            load_before,
            &loadavg()
        ),
        version(&program("postgres"), &["--version"]),
        version("pgbackrest", &["version"]),
        version(&program("pg_basebackup"), &["--version"]),
        version("cp", &["--version"]),
    )
}

/// What the reader should know about every group.
fn group_notes(args: &PostgresArgs) -> Vec<String> {
    let mut notes: Vec<String> = left_out(&args.methods).into_iter().collect();
    notes.extend([
        "Space used: the copy's file system's used bytes after the copy minus before; it also \
         counts what the load wrote meanwhile (tables, WAL, and the WAL archived into \
         shadowcopy's archive and, on XFS, pgBackRest's repository)."
            .to_string(),
        "Restore: from the stopped server (for pgBackRest and pg_basebackup also an emptied \
         data directory, not timed) until the server answers queries out of recovery, with \
         the page cache dropped first; every restore recovers to the copy's consistent point \
         and promotes to a new timeline."
            .to_string(),
    ]);
    if args.methods.iter().any(|m| m.is_pgbackrest()) {
        notes.push(
            "pgBackRest: repository on the cluster's XFS, compression at its default (gz), \
             `start-fast=y`; `archive_command` pushes every WAL file to shadowcopy's archive \
             and then to pgBackRest's, for every method. After each restore the previous \
             backup is expired (pgBackRest keeps at least one full backup)."
                .into(),
        );
    }
    if args.methods.contains(&Method::PgBasebackup) {
        notes.push(
            "pg_basebackup: plain format with streamed WAL on the same XFS; its restore is \
             `cp -a`, which in Debian 12's coreutils (9.1) clones files on XFS (reflink) by \
             default, so it writes almost nothing; `recovery.signal` with \
             `recovery_target = 'immediate'` and promotion make it recover like the others."
                .into(),
        );
    }
    if args.methods.contains(&Method::Btrfs) {
        notes.push(
            "`shadowcopy btrfs` runs on a second cluster on btrfs, copied from the same data \
             before the runs and loaded the same way; the other rows share the XFS cluster."
                .into(),
        );
    }
    notes
}

/// The note naming the methods a measurement left out, so its table is not read as
/// complete: `None` when every method was measured.
fn left_out(methods: &[Method]) -> Option<String> {
    use clap::ValueEnum;
    let missing: Vec<&str> = Method::value_variants()
        .iter()
        .filter(|m| !methods.contains(m))
        .map(|m| m.row())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "Not measured at this size (left out of `--methods`): {}.",
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_backup_label_comes_from_pgbackrest_info() {
        let info = r#"[{"archive":[],"backup":[
            {"label":"20250101-100000F","timestamp":{"start":100,"stop":110},"type":"full"},
            {"label":"20250101-120000F","timestamp":{"start":200,"stop":230},"type":"full"}
          ],"name":"bench","status":{"code":0,"message":"ok"}}]"#;
        assert_eq!(newest_label(info).unwrap(), "20250101-120000F");
        let empty = r#"[{"archive":[],"backup":[],"name":"bench"}]"#;
        assert!(newest_label(empty).is_err());
        assert!(newest_label(r#"[{"backup":[],"name":"other"}]"#).is_err());
    }

    #[test]
    fn transactions_are_read_from_pgbench_log_lines() {
        assert_eq!(
            parse_transaction("0 199 2241 0 1175850568 995598"),
            Some(Txn {
                end_us: 1_175_850_568_995_598,
                latency_us: 2241
            })
        );
        assert_eq!(parse_transaction("3 12 failed 0 1175850569 1"), None);
        assert_eq!(parse_transaction("garbage"), None);
    }

    #[test]
    fn a_window_counts_finished_transactions_and_the_longest_overlapping_one() {
        let t = |end_us, latency_us| Txn { end_us, latency_us };
        let txns = [
            t(900, 100),     // before
            t(1_100, 300),   // started before, ended inside: counted, overlaps
            t(1_500, 50),    // inside
            t(2_600, 1_000), // started inside, ended after: overlaps only
            t(5_000, 100),   // after
        ];
        let w = Window::of(&txns, 1_000, 2_000);
        assert_eq!(w.transactions, 2);
        assert_eq!(w.longest, Duration::from_micros(1_000));
        assert_eq!(w.length, Duration::from_micros(1_000));
        assert!((w.per_second() - 2_000.0).abs() < 1e-9);
    }

    #[test]
    fn methods_name_their_rows_and_file_systems() {
        use clap::ValueEnum;
        let names: Vec<String> = Method::value_variants()
            .iter()
            .map(|m| m.to_possible_value().unwrap().get_name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "copy",
                "reflink",
                "btrfs",
                "pgbackrest",
                "pgbackrest-pm2",
                "pg_basebackup"
            ]
        );
        assert_eq!(Method::PgbackrestPm2.row(), "pgbackrest process-max=2");
        assert_eq!(Method::Btrfs.fs(), FsKind::Btrfs);
        assert_eq!(Method::PgBasebackup.fs(), FsKind::Xfs);
    }

    #[test]
    fn a_measurement_without_every_method_says_which_it_left_out() {
        use clap::ValueEnum;
        assert_eq!(left_out(Method::value_variants()), None);
        assert_eq!(
            left_out(&[Method::Reflink, Method::Btrfs, Method::PgBasebackup]).as_deref(),
            Some(
                "Not measured at this size (left out of `--methods`): shadowcopy copy, \
                 pgbackrest, pgbackrest process-max=2."
            )
        );
    }
}
