//! `shadowcopy-bench peers mariadb`: shadowcopy against `mariabackup` (`--backup`, then
//! `--prepare` and `--copy-back` to restore), on the same data, under the same load, in
//! the same run.
//!
//! Per `--size`, the servers of the MariaDB bench are made once
//! ([`crate::mariadb::make`]: a throw-away server with its data directory and binary logs
//! on a loop file system, the ledger tables, the data directory padded to the size with a
//! seeded filler table): one on XFS for `shadowcopy copy`, `shadowcopy reflink` and
//! `mariabackup`, one on btrfs for `shadowcopy btrfs` (its `mariadb/` is a subvolume).
//! Both hold the same data. Then, for each run and each method in `--methods` order, one
//! sample:
//!
//! 1. the page cache is dropped and the ledger's rows are read (they must survive);
//! 2. the ledger load starts (`--writers` threads, each committing money moves with no
//!    pause) and runs `--warmup`;
//! 3. a window of `--baseline` without a copy: the longest transaction (BEGIN to
//!    acknowledged COMMIT) is the baseline stall, its commits per second the baseline
//!    throughput;
//! 4. the copy, with the file system's used bytes (after `syncfs`) taken before and after:
//!    `shadowcopy create --mariadb URL --provider P --freeze-deadline 60s --json`, with its
//!    verification, as a user runs it (a create refused by the InnoDB safety check is
//!    retried as the MariaDB bench does, the retries counted in the copy time and noted);
//!    or `mariabackup --backup --target-dir=DIR` as root over the socket, DIR on the same
//!    XFS. The longest transaction while it ran is the stall, its commits per second the
//!    throughput during the copy, used bytes after minus before the space it took;
//! 5. the load stops, the server stops (clean shutdown; not timed);
//! 6. the restore, timed from there until the server answers a query on the ledger:
//!    shadowcopy: page cache dropped, `shadowcopy restore ID --mode point-in-time
//!    --discard-current`, server started (as [`crate::mariadb`] does); mariabackup: the
//!    data directory is emptied (the disaster, not timed), page cache dropped, then
//!    `mariabackup --prepare`, `mariabackup --copy-back`, `chown -R` to the server's user,
//!    server started. The steps' times go into the sample's `detail`;
//! 7. the ledger is read: it must be balanced, hold every row present before the sample
//!    and every commit acknowledged before the copy began, and none acknowledged after the
//!    copy returned (no copy can hold those). Wrong data fails the bench;
//! 8. the copy is removed (`shadowcopy delete ID`, or the backup directory) and `fstrim`
//!    gives the blocks back to the host. The server runs on for the next sample, on the
//!    restored state.
//!
//! A method whose copy or restore fails in a run is recorded as failed with the reason
//! (and a note), the server is started again if it is down, and the bench goes on. After
//! each size the group is added to the results file (see [`super::Output::add`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use shadowcopy_testing::loopfs::FsKind;
use shadowcopy_testing::mariadb::{mariadb_bin, Ledger, LedgerState, MariaDbInstance};

use super::record::{Figures, Group, Outcome, Sample};
use super::{timed, used_bytes, Common};
use crate::common::{self, drop_caches, loadavg, shadowcopy};
use crate::mariadb::{self as server, Ctx, Made};
use crate::stats::{self, human, human_bytes, Spread};

/// A method of the comparison: a row of the table.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// `shadowcopy create --provider copy` (server on XFS)
    Copy,
    /// `shadowcopy create --provider reflink` (server on XFS)
    Reflink,
    /// `shadowcopy create --provider btrfs` (a second server, on btrfs)
    Btrfs,
    /// `mariabackup --backup`, restored with `--prepare` and `--copy-back` (server on XFS)
    Mariabackup,
}

impl Method {
    /// The row's name in the table.
    fn row(self) -> &'static str {
        match self {
            Method::Copy => "shadowcopy copy",
            Method::Reflink => "shadowcopy reflink",
            Method::Btrfs => "shadowcopy btrfs",
            Method::Mariabackup => "mariabackup",
        }
    }

    /// shadowcopy's provider, `None` for the peer.
    fn provider(self) -> Option<&'static str> {
        match self {
            Method::Copy => Some("copy"),
            Method::Reflink => Some("reflink"),
            Method::Btrfs => Some("btrfs"),
            Method::Mariabackup => None,
        }
    }

    /// The file system of the server the method copies.
    fn fs(self) -> FsKind {
        match self {
            Method::Btrfs => FsKind::Btrfs,
            _ => FsKind::Xfs,
        }
    }
}

/// Options of the mariadb comparison.
#[derive(clap::Args, Debug)]
pub struct MariadbArgs {
    /// Size the data directory is padded to; repeat for more sizes (each one a group of the
    /// table)
    #[arg(long = "size", value_name = "SIZE", default_value = "4GiB", value_parser = stats::parse_size)]
    sizes: Vec<u64>,
    /// Methods measured in each run, in this order (the table's rows)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "copy,reflink,btrfs,mariabackup"
    )]
    methods: Vec<Method>,
    /// Ledger writer threads (each commits with no pause between transactions)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    writers: u32,
    /// How long the load runs before the baseline window
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The window of load without a copy just before each copy (baseline stall and throughput)
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// Time limit of each mariabackup command (--backup, --prepare, --copy-back) and of the chown
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    common: Common,
}

impl MariadbArgs {
    /// The mkfs tools of the chosen methods' file systems, and mariabackup when chosen.
    pub fn tools(&self) -> Vec<&'static str> {
        let mut tools: Vec<&'static str> = self
            .kinds()
            .into_iter()
            .map(|k| match k {
                FsKind::Btrfs => "mkfs.btrfs",
                _ => "mkfs.xfs",
            })
            .collect();
        if self.methods.contains(&Method::Mariabackup) {
            tools.push("mariabackup");
        }
        tools
    }

    /// The file systems the chosen methods need a server on.
    fn kinds(&self) -> Vec<FsKind> {
        super::file_systems(&self.methods, |m| m.fs())
    }
}

/// Runs the comparison (as root): every size, then its group into the results.
pub fn bench(args: &MariadbArgs) -> anyhow::Result<()> {
    for (i, m) in args.methods.iter().enumerate() {
        ensure!(
            !args.methods[..i].contains(m),
            "--methods names {} twice",
            m.row()
        );
    }
    server::work_in(args.common.dir.as_deref())?;
    let bin = common::shadowcopy_bin(args.common.shadowcopy.as_deref())?;
    for &size in &args.sizes {
        let began = Instant::now();
        let group = bench_size(args, &bin, size)
            .with_context(|| format!("MariaDB at {}", human_bytes(size)))?;
        eprintln!("{} took {}", human_bytes(size), human(began.elapsed()));
        args.common.output.add(group)?;
    }
    Ok(())
}

/// Makes the servers for `size`, measures every run of every method, and returns the
/// group.
fn bench_size(args: &MariadbArgs, bin: &Path, size: u64) -> anyhow::Result<Group> {
    let kinds = args.kinds();
    // Both file systems exist at once.
    let peak: u64 = kinds.iter().map(|k| server::peak_bytes(*k, size)).sum();
    let free = server::host_free()?;
    ensure!(
        free >= peak + server::RESERVE,
        "the file systems may need {} at once and {} is free in {} (keeping {} for others); \
         choose a smaller --size or another --dir",
        human_bytes(peak),
        human_bytes(free),
        std::env::temp_dir().display(),
        human_bytes(server::RESERVE)
    );
    let load_before = loadavg();
    let mut made: Vec<(FsKind, Made)> = Vec::new();
    for kind in kinds {
        made.push((kind, server::make(kind, size)?));
    }
    // A catalog per server: shadowcopy names a set after the database kind and keeps one
    // server's files in it.
    let catalogs = made
        .iter()
        .map(|_| {
            tempfile::Builder::new()
                .prefix("shadowcopy-bench-catalog-")
                .tempdir()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ctxs: Vec<(FsKind, Ctx)> = made
        .iter()
        .zip(&catalogs)
        .map(|((kind, m), catalog)| {
            let ctx = Ctx {
                writers: args.writers,
                warmup: args.warmup,
                bin,
                catalog: catalog.path(),
                setup: &m.setup,
            };
            (*kind, ctx)
        })
        .collect();

    let mut notes = Vec::new();
    let mut samples = Vec::new();
    // mariabackup's (prepare, rest of the restore) per successful run, for a note.
    let mut backup_restores = Vec::new();
    for run in 1..=args.common.runs {
        for &method in &args.methods {
            let Some((_, ctx)) = ctxs.iter().find(|(k, _)| *k == method.fs()) else {
                unreachable!("a server is made for every chosen method's file system")
            };
            eprintln!("{}: run {run}/{} ...", method.row(), args.common.runs);
            let outcome = match measure(args, method, ctx, &mut notes) {
                Ok((figures, prepare)) => {
                    eprintln!("  {}", summary(&figures));
                    if let Some(p) = prepare {
                        backup_restores.push((p, secs(figures.restore_s).saturating_sub(p)));
                    }
                    Outcome::Done(figures)
                }
                Err(e) if e.is::<WrongData>() => return Err(e),
                Err(e) => {
                    eprintln!("  FAILED: {e:#}");
                    let reason = reason(&format!("{e:#}"));
                    notes.push(format!("{} failed in run {run}: {reason}", method.row()));
                    if let Err(e) = recover(ctx.setup) {
                        notes.push(format!("after that failure: {e:#}"));
                    }
                    Outcome::Failed { reason }
                }
            };
            samples.push(Sample {
                method: method.row().into(),
                run,
                outcome,
            });
        }
    }

    notes.splice(0..0, standing_notes(args, &backup_restores));
    let data_bytes = made
        .iter()
        .find(|(k, _)| *k == FsKind::Xfs)
        .or(made.first())
        .map_or(0, |(_, m)| m.data_bytes);
    let environment = environment(args, size, &made, &load_before);
    drop(ctxs);
    drop(made);
    Ok(Group {
        workload: "mariadb".into(),
        size: human_bytes(size),
        data_bytes,
        reference: Method::Reflink.row().into(),
        environment,
        load: format!(
            "the ledger: {} writer threads on their own connections, each committing money moves \
             (two account updates, a fee, one ledger row per transaction) with no pause; per \
             sample, {} of warm-up, {} without a copy (the baseline), then the copy; one \
             operation is one transaction from BEGIN to its acknowledged COMMIT",
            args.writers,
            humantime::format_duration(args.warmup),
            humantime::format_duration(args.baseline)
        ),
        notes,
        samples,
    })
}

/// A restored database whose data is wrong: fails the bench, where any other error of a
/// sample only fails that sample.
#[derive(Debug)]
struct WrongData(String);

impl std::fmt::Display for WrongData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrongData {}

/// A finished copy.
enum Copy {
    /// A shadow copy in the catalog.
    Shadow(i64),
    /// mariabackup's target directory.
    Backup(PathBuf),
}

/// What the load saw of one copy, and the copy.
struct Copied {
    copy: Copy,
    /// When the command that made the copy started (the last attempt's, for a retried
    /// create) and when the copy was finished.
    started: Instant,
    returned: Instant,
    figures: Figures,
}

/// One sample of `method` (see the module docs): its figures, and for mariabackup the
/// time of `--prepare`. An error is a failed sample, except [`WrongData`].
fn measure(
    args: &MariadbArgs,
    method: Method,
    ctx: &Ctx,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Figures, Option<Duration>)> {
    let db = &ctx.setup.db;
    drop_caches()?;
    let present = ledger(db)?.ids;
    let load = ctx.start_load()?;
    let copied = copy_under_load(args, method, ctx, &load, notes);
    let acked = copied.as_ref().ok().map(|c| {
        (
            load.acknowledged_before(c.started),
            load.acknowledged_before(c.returned),
        )
    });
    let stats = load.stop();
    if stats.error_count > 0 {
        notes.push(format!(
            "{}: the ledger load met {} error(s) in a sample, e.g. {}",
            method.row(),
            stats.error_count,
            stats.errors.first().map(String::as_str).unwrap_or("?")
        ));
    }
    let (mut copied, (before_copy, until_returned)) = (copied?, acked.unwrap_or_default());

    let restored = restore(args, ctx, &copied.copy);
    let state = restored.as_ref().ok().map(|_| ledger(db));
    if let Err(e) = remove(ctx, &copied.copy) {
        notes.push(format!("{}: {e:#}", method.row()));
    }
    let (restore_s, prepare, detail) = restored?;
    let state = state.unwrap_or_else(|| unreachable!("read after a restore"))?;

    let mut must_hold = present;
    must_hold.extend(before_copy);
    must_hold.sort_unstable();
    must_hold.dedup();
    let after_copy: Vec<i64> = stats
        .acknowledged
        .into_iter()
        .filter(|id| until_returned.binary_search(id).is_err())
        .collect();
    check_restored(&state, &must_hold, &after_copy).map_err(|e| {
        anyhow!(WrongData(format!(
            "{} RESTORED WRONG DATA: {e} ({} rows before the copy, {} commits acknowledged \
             after it)",
            method.row(),
            must_hold.len(),
            after_copy.len()
        )))
    })?;
    copied.figures.restore_s = restore_s.as_secs_f64();
    copied.figures.detail += &format!("; restore: {detail}");
    Ok((copied.figures, prepare))
}

/// The baseline window and the copy, under `load` (see the module docs); the figures
/// but the restore's.
fn copy_under_load(
    args: &MariadbArgs,
    method: Method,
    ctx: &Ctx,
    load: &Ledger,
    notes: &mut Vec<String>,
) -> anyhow::Result<Copied> {
    let per_second = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-3);
    load.reset_longest_stall();
    let b0 = Instant::now();
    std::thread::sleep(args.baseline);
    let b1 = Instant::now();
    let baseline_stall = load.longest_stall();
    let ops_baseline = per_second(load.committed_between(b0, b1), b1 - b0);

    let fs = ctx.setup.fs.path();
    let used_before = used_bytes(fs)?;
    load.reset_longest_stall();
    let c0 = Instant::now();
    let (copy, started, stall, detail) = match method.provider() {
        Some(provider) => {
            let created = ctx.create(provider, load, notes)?;
            let c = &created.out;
            let id = c["id"].as_i64().context("create --json has no id")?;
            let detail = format!(
                "create: freeze window {}, commit {}, verify {}",
                human(common::micros(&c["freeze_window_us"])?),
                human(common::phase(c, "commit")?),
                human(common::phase(c, "verify")?)
            );
            (
                Copy::Shadow(id),
                created.spawned,
                created.app_stall_all_attempts,
                detail,
            )
        }
        None => {
            let dir = fs.join("mariabackup");
            let db = &ctx.setup.db;
            let mut cmd = mariabackup("--backup", &dir);
            cmd.arg(format!("--datadir={}", db.data_dir().display()))
                .arg(format!("--socket={}", db.socket().display()))
                .arg("--user=root");
            if let Err(e) = timed(&mut cmd, args.timeout) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            (Copy::Backup(dir), c0, load.longest_stall(), String::new())
        }
    };
    let returned = Instant::now();
    let commits = load.committed_between(c0, returned);
    let copy_bytes = used_bytes(fs)?.saturating_sub(used_before);
    let copy_s = returned - c0;
    Ok(Copied {
        copy,
        started,
        returned,
        figures: Figures {
            copy_s: copy_s.as_secs_f64(),
            stall_s: stall.as_secs_f64(),
            baseline_stall_s: baseline_stall.as_secs_f64(),
            ops_during: per_second(commits, copy_s),
            ops_baseline,
            restore_s: 0.0,
            copy_bytes,
            detail: format!("copy {}{}", human(copy_s), prefixed(", ", &detail)),
        },
    })
}

/// `s` after `prefix`, or nothing when `s` is empty.
fn prefixed(prefix: &str, s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("{prefix}{s}")
    }
}

/// Stops the server and restores `copy` (see the module docs); returns the time until
/// the server answered, `--prepare`'s share of it (mariabackup), and the steps.
fn restore(
    args: &MariadbArgs,
    ctx: &Ctx,
    copy: &Copy,
) -> anyhow::Result<(Duration, Option<Duration>, String)> {
    let db = &ctx.setup.db;
    db.stop();
    match copy {
        Copy::Shadow(id) => {
            let (wall, start) = ctx.restore(*id, "point-in-time")?;
            Ok((
                wall + start,
                None,
                format!(
                    "shadowcopy restore {}, start until queryable {}",
                    human(wall),
                    human(start)
                ),
            ))
        }
        Copy::Backup(dir) => {
            let data = db.data_dir();
            empty(data)?;
            drop_caches()?;
            let t = Instant::now();
            let prepare = timed(&mut mariabackup("--prepare", dir), args.timeout)?;
            let copy_back = timed(
                mariabackup("--copy-back", dir).arg(format!("--datadir={}", data.display())),
                args.timeout,
            )?;
            let chown = match db.user() {
                Some(u) => timed(
                    Command::new("chown")
                        .arg("-R")
                        .arg(format!("{}:{}", u.uid, u.gid))
                        .arg(data),
                    args.timeout,
                )?,
                None => Duration::ZERO,
            };
            let start = server::start_until_queryable(db, "after mariabackup --copy-back")?;
            let took = t.elapsed();
            Ok((
                took,
                Some(prepare),
                format!(
                    "prepare {}, copy-back {}, chown {}, start until queryable {}",
                    human(prepare),
                    human(copy_back),
                    human(chown),
                    human(start)
                ),
            ))
        }
    }
}

/// `mariabackup --no-defaults STEP --target-dir=DIR` (as root: it reads the data
/// directory, and `--copy-back` writes files the server's user gets by `chown`).
fn mariabackup(step: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(mariadb_bin("mariabackup"));
    cmd.arg("--no-defaults")
        .arg(step)
        .arg(format!("--target-dir={}", dir.display()));
    cmd
}

/// Removes everything in `dir`, keeping `dir` (its owner and mode stay the server's).
fn empty(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Deletes the copy and gives the freed blocks back to the host.
fn remove(ctx: &Ctx, copy: &Copy) -> anyhow::Result<()> {
    match copy {
        Copy::Shadow(id) => {
            shadowcopy(ctx.bin, ctx.catalog, "delete", &[id.to_string()])?;
        }
        Copy::Backup(dir) => std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the backup {}", dir.display()))?,
    }
    let _ = Command::new("fstrim").arg(ctx.setup.fs.path()).output();
    Ok(())
}

/// After a failed sample: the server runs again (on whatever its data directory holds).
fn recover(setup: &server::Setup) -> anyhow::Result<()> {
    if !setup.db.is_running() {
        server::start_until_queryable(&setup.db, "after a failed sample")?;
    }
    Ok(())
}

/// The ledger as `db` holds it.
fn ledger(db: &MariaDbInstance) -> anyhow::Result<LedgerState> {
    let mut conn = server::connect(db)?;
    Ledger::check(&mut conn).map_err(|e| anyhow!("reading the ledger: {e}"))
}

/// Why a restored ledger `state` is wrong, if it is: unbalanced, lacking a row of
/// `must_hold` (present before the copy began), or holding one of `after_copy`
/// (acknowledged only after the copy returned, which no copy can hold).
fn check_restored(
    state: &LedgerState,
    must_hold: &[i64],
    after_copy: &[i64],
) -> Result<(), String> {
    state.verify(must_hold)?;
    let claimed: Vec<i64> = after_copy
        .iter()
        .copied()
        .filter(|id| state.ids.binary_search(id).is_ok())
        .collect();
    if claimed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "it holds {} rows acknowledged only after the copy returned, e.g. {:?}",
            claimed.len(),
            &claimed[..claimed.len().min(10)]
        ))
    }
}

/// Most this many characters of an error go into the results (the log has all of it).
const REASON_CHARS: usize = 600;

/// An error as the results keep it: without the server log an error may carry, and at
/// most [`REASON_CHARS`] characters.
fn reason(error: &str) -> String {
    let head = error.split("\nserver log").next().unwrap_or("").trim();
    match head.char_indices().nth(REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &head[..cut]),
        None => head.to_string(),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// One sample's figures on one line, for the progress log.
fn summary(f: &Figures) -> String {
    format!(
        "copy {} (longest commit {}, baseline {}; {:.0} commits/s, baseline {:.0}), restore {}, \
         space {} — {}",
        human(secs(f.copy_s)),
        human(secs(f.stall_s)),
        human(secs(f.baseline_stall_s)),
        f.ops_during,
        f.ops_baseline,
        human(secs(f.restore_s)),
        human_bytes(f.copy_bytes),
        f.detail
    )
}

/// What the reader of every group should know; `backup_restores` are mariabackup's
/// (prepare, rest of the restore) per run.
fn standing_notes(args: &MariadbArgs, backup_restores: &[(Duration, Duration)]) -> Vec<String> {
    let mut notes = vec![
        "Space used: the file system's used bytes after the copy minus before, so it includes \
         what the load wrote meanwhile (InnoDB pages, redo and binary logs)."
            .to_string(),
        "shadowcopy's copy time is `create` with its verification (a sandbox server opens the \
         copy, `mariadb-check`), as a user runs it; its restore is `restore --mode point-in-time \
         --discard-current` with the server stopped, then the server's start until a query on \
         the copy's data answers."
            .to_string(),
    ];
    if args.methods.contains(&Method::Btrfs) {
        notes.push(
            "shadowcopy btrfs copies a second server with the same settings and data on btrfs \
             (its directory a subvolume, as one snapshot covers one subvolume); the other \
             methods share one server on XFS. Each restored state stays in place for the \
             next method."
                .into(),
        );
    }
    if args.methods.contains(&Method::Mariabackup) {
        let (prepare, rest): (Vec<Duration>, Vec<Duration>) =
            backup_restores.iter().copied().unzip();
        let cell = |v: &[Duration]| Spread::of(v).map_or("–".into(), |s| s.cell());
        notes.push(format!(
            "mariabackup: copy is `--backup` alone (nothing checks the backup before \
             `--prepare`); restore is `--prepare` + `--copy-back` + `chown -R` to the server's \
             user + the server's start until a query answers, the data directory emptied \
             before (not timed). `--prepare` could run ahead of the disaster, right after the \
             backup; the restore is then the rest. Here `--prepare` took {} and the rest {}.",
            cell(&prepare),
            cell(&rest)
        ));
        notes.push(
            "mariabackup copies no binary logs: they live outside the data directory here and \
             were left in place (the disaster takes the data directory only); shadowcopy's \
             point-in-time restore puts back the binary logs of the copy."
                .into(),
        );
    }
    notes
}

/// Date, machine, versions, servers and commands, as Markdown list items.
fn environment(
    args: &MariadbArgs,
    size: u64,
    made: &[(FsKind, Made)],
    load_before: &str,
) -> String {
    let file_systems = made
        .iter()
        .map(|(k, _)| match k {
            FsKind::Xfs => "an XFS file system",
            _ => "a btrfs file system",
        })
        .collect::<Vec<_>>()
        .join(" and ");
    let mut env = common::environment(&format!("{file_systems}, each"), load_before, &loadavg());
    env += &format!(
        "- MariaDB: {}; on XFS for shadowcopy copy and reflink and mariabackup (its backups in a \
         directory of that XFS), on btrfs for shadowcopy btrfs (data and binary logs in one \
         subvolume)\n",
        server::SERVER
    );
    env += &server::data_item(size);
    for (kind, m) in made {
        env += &server::setup_item(*kind, m.init_took, m.data_bytes, m.fill_took);
    }
    let mariabackup = Command::new(mariadb_bin("mariabackup"))
        .arg("--version")
        .output()
        .map(|o| {
            // It prints its version on stderr.
            let text = String::from_utf8_lossy(&o.stderr).to_string()
                + &String::from_utf8_lossy(&o.stdout);
            word_after(&text, "server ")
        })
        .unwrap_or_else(|_| "?".into());
    env += &format!(
        "- versions: MariaDB {}, mariabackup {mariabackup}\n",
        word_after(&server::server_version(), "Ver ")
    );
    env += &format!(
        "- runs: {}, each method once per run in the order {}; page cache dropped before each \
         sample and each restore; mariabackup commands limited to {}\n",
        args.common.runs,
        args.methods
            .iter()
            .map(|m| m.row())
            .collect::<Vec<_>>()
            .join(", "),
        humantime::format_duration(args.timeout)
    );
    env
}

/// The word after `marker` on the first line holding it (`Ver 10.11.6-MariaDB …` →
/// `10.11.6-MariaDB`), else the first line.
fn word_after(text: &str, marker: &str) -> String {
    text.lines()
        .find_map(|l| l.split_once(marker))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .or_else(|| text.lines().next())
        .unwrap_or("?")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MariadbArgs,
    }

    #[test]
    fn defaults_measure_every_method_at_4_gib() {
        let a = Cli::parse_from(["x"]).args;
        assert_eq!(a.sizes, [4 << 30]);
        let rows: Vec<&str> = a.methods.iter().map(|m| m.row()).collect();
        assert_eq!(
            rows,
            [
                "shadowcopy copy",
                "shadowcopy reflink",
                "shadowcopy btrfs",
                "mariabackup"
            ]
        );
        assert_eq!(a.tools(), ["mkfs.xfs", "mkfs.btrfs", "mariabackup"]);

        let a = Cli::parse_from([
            "x",
            "--size",
            "64MiB",
            "--size",
            "1GiB",
            "--methods",
            "mariabackup,reflink",
        ])
        .args;
        assert_eq!(a.sizes, [64 << 20, 1 << 30]);
        assert_eq!(a.kinds(), [FsKind::Xfs]);
        assert_eq!(a.tools(), ["mkfs.xfs", "mariabackup"]);
    }

    fn state(ids: Vec<i64>) -> LedgerState {
        LedgerState {
            fees: ids.len() as i64,
            ids,
            accounts: 10,
            expected_accounts: 10,
            total_balance: 100,
            expected_total: 100,
        }
    }

    #[test]
    fn a_restore_must_hold_the_past_and_not_the_future() {
        assert!(check_restored(&state(vec![1, 2, 3, 4]), &[1, 2], &[5, 6]).is_ok());
        let missing = check_restored(&state(vec![1, 3]), &[1, 2], &[]).unwrap_err();
        assert!(missing.contains("missing"), "{missing}");
        let future = check_restored(&state(vec![1, 2, 5]), &[1, 2], &[5, 6]).unwrap_err();
        assert!(
            future.contains("1 rows acknowledged only after"),
            "{future}"
        );
        let mut unbalanced = state(vec![1, 2]);
        unbalanced.total_balance = 99;
        assert!(check_restored(&unbalanced, &[1], &[]).is_err());
    }

    #[test]
    fn reasons_leave_the_server_log_out_and_are_short() {
        assert_eq!(
            reason("create failed: set refused\nserver log (end):\n2026 [Note] ..."),
            "create failed: set refused"
        );
        let long = reason(&"é".repeat(REASON_CHARS + 5));
        assert_eq!(long.chars().count(), REASON_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn versions_are_read_from_the_banners() {
        assert_eq!(
            word_after(
                "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64",
                "Ver "
            ),
            "10.11.19-MariaDB-0+deb12u1"
        );
        assert_eq!(
            word_after(
                "mariabackup based on MariaDB server 10.11.19-MariaDB debian-linux-gnu (x86_64)",
                "server "
            ),
            "10.11.19-MariaDB"
        );
        assert_eq!(word_after("something else\nmore", "Ver "), "something else");
        assert_eq!(word_after("", "Ver "), "?");
    }
}
