//! `shadowcopy-bench verify`: what a copy's verification costs when little changed
//! since the set's last verified copy (issue 19, goal 2: cost that grows with what
//! changed, not with the database's size).
//!
//! A SQLite bank padded to `--size` (default 8 GiB) on a loop file system of each
//! provider's kind (`reflink` on XFS, `btrfs` on btrfs, in a subvolume of its own). A first copy is taken and
//! verified in full. Then, for each of `--runs` runs:
//!
//! 1. `--change` of the database's pages (default 1 %) are rewritten where they lie,
//!    each one a few bytes at a random offset of a random filler row (SQLite's
//!    incremental blob I/O writes only that page): the worst case for extent sharing,
//!    one changed page per place, scattered over the whole file; then checkpointed;
//! 2. with the page cache dropped, `shadowcopy create` takes and verifies the next copy,
//!    building on the last verified one: the verify phase's time, what it read (its own
//!    count) and the loop device's sectors read during the create;
//! 3. with the page cache dropped, `shadowcopy verify ID --full` verifies the same copy
//!    reading everything (BLAKE3 of every byte, `PRAGMA integrity_check`): its time and
//!    the device's reads.
//!
//! With `--parts postgres`, the same on a pgbench database of `--scale` (data checksums
//! on), per provider on a loop file system of its kind: `VACUUM FREEZE` and a first copy
//! verified in full, then per run one row updated in every hundredth page of
//! `pgbench_accounts` (about 1 % of the table's pages, plus its index and the pages the
//! new row versions go to) and a `CHECKPOINT`, then `create` building on the last copy
//! and `verify --full` of the same copy (a sandbox with `pg_amcheck` over everything and
//! `pg_checksums`), each with the page cache dropped.
//!
//! The report: per database and provider, both verifications' median (min – max) time
//! and device reads, and their ratios. A verification that fails fails the bench;
//! nothing asserts on time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use rand::RngExt;
use serde_json::Value;
use shadowcopy_testing::loopfs::{FsKind, LoopFs};

use crate::common::{self, drop_caches, loadavg, phase, shadowcopy};
use crate::postgres as pg;
use crate::stats::{self, human, human_bytes, Spread};

/// The databases the workload measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Sqlite,
    Postgres,
}

/// Options of the verify workload.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The databases to measure, in order
    #[arg(long, value_delimiter = ',', default_value = "sqlite")]
    parts: Vec<Part>,
    /// pgbench scale of the PostgreSQL part (scale 1 is about 15 MiB)
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    scale: u32,
    /// Size the SQLite database is padded to
    #[arg(long, default_value = "8GiB", value_parser = stats::parse_size)]
    size: u64,
    /// Share of the database's pages changed before each copy, in percent
    #[arg(long, default_value_t = 1.0)]
    change: f64,
    /// Runs per provider
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Providers to measure, in order (reflink, btrfs)
    #[arg(long, value_delimiter = ',', default_value = "reflink,btrfs")]
    providers: Vec<String>,
    /// Where the loop images and catalogs go [default: $TMPDIR]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The shadowcopy binary [default: `shadowcopy` beside this binary]
    #[arg(long, value_name = "PATH")]
    shadowcopy: Option<PathBuf>,
    /// Also write the results into this Markdown file, between the bench:verify-sqlite and bench:verify-postgres markers
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl VerifyArgs {
    pub fn tools(&self) -> Vec<&'static str> {
        common::mkfs_tools(&self.providers)
    }
}

/// One run's two verifications of the same copy.
struct Run {
    /// The verify phase of `create`, building on the last verified copy.
    incremental: Duration,
    incremental_read: u64,
    incremental_device: u64,
    /// `verify --full` of that copy.
    full: Duration,
    full_read: u64,
    full_device: u64,
    pages_changed: u64,
}

/// Runs the workload (as root).
pub fn bench(args: &VerifyArgs) -> anyhow::Result<()> {
    common::use_dir(args.dir.as_deref())?;
    ensure!(
        args.change > 0.0 && args.change <= 50.0,
        "--change is a percentage of the pages, more than 0 and at most 50"
    );
    let bin = common::shadowcopy_bin(args.shadowcopy.as_deref())?;
    let load_before = loadavg();
    let began = Instant::now();
    for part in &args.parts {
        let mut results = Vec::new();
        for provider in &args.providers {
            let kind = common::fs_for(provider)
                .filter(|_| provider != "copy")
                .with_context(|| {
                    format!("the verify workload measures reflink and btrfs, not `{provider}`")
                })?;
            let runs = match part {
                Part::Sqlite => {
                    // The database, the changed pages of every copy, and room to spare.
                    let image = args.size + args.size / 4 + (1 << 30);
                    let fs = LoopFs::new(kind, image).map_err(anyhow::Error::msg)?;
                    eprintln!(
                        "{provider}: a bank of {} on {} ...",
                        human_bytes(args.size),
                        kind.name()
                    );
                    measure(&bin, &fs, provider, args)?
                }
                Part::Postgres => measure_postgres(&bin, kind, provider, args)?,
            };
            results.push((provider.clone(), runs));
        }
        let load_after = loadavg();
        let section = report(
            *part,
            args,
            &results,
            &load_before,
            &load_after,
            began.elapsed(),
        );
        println!("{section}");
        if let Some(md) = &args.markdown {
            let name = match part {
                Part::Sqlite => "verify-sqlite",
                Part::Postgres => "verify-postgres",
            };
            common::write_section(md, name, &section)?;
        }
    }
    Ok(())
}

fn measure(bin: &Path, fs: &LoopFs, provider: &str, args: &VerifyArgs) -> anyhow::Result<Vec<Run>> {
    // On btrfs in a subvolume of its own (a snapshot covers one subvolume).
    let home = fs.path().join("bank");
    if fs.kind == FsKind::Btrfs {
        let made = std::process::Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&home)
            .output()?;
        ensure!(
            made.status.success(),
            "btrfs subvolume create failed: {made:?}"
        );
    } else {
        std::fs::create_dir(&home)?;
    }
    let db = home.join("bank.db");
    shadowcopy_sample::create(&db, crate::sqlite::ACCOUNTS, true)?;
    shadowcopy_sample::pad_to(&db, args.size)?;
    let catalog = tempfile::Builder::new()
        .prefix("shadowcopy-bench-verify-")
        .tempdir_in(fs.path())?;
    let device = loop_device(fs.path())?;
    let create = |extra: &[&str]| -> anyhow::Result<Value> {
        let mut rest: Vec<String> = [
            "--sqlite",
            db.to_str().unwrap_or_default(),
            "--provider",
            provider,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        rest.extend(
            ["--freeze-deadline", "60s", "--json"]
                .iter()
                .map(|s| s.to_string()),
        );
        rest.extend(extra.iter().map(|s| s.to_string()));
        let out = shadowcopy(bin, catalog.path(), "create", &rest)?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    eprintln!("  the first copy, verified in full ...");
    let first = create(&[])?;
    ensure!(
        first["verification"]["ok"] == true,
        "the first copy failed verification: {first}"
    );
    let pages = std::fs::metadata(&db)?.len() / 4096;
    let to_change = ((pages as f64) * args.change / 100.0).ceil() as u64;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        eprintln!("  run {run}: changing {to_change} of {pages} pages ...");
        change_pages(&db, to_change)?;
        let created = || create(&[]);
        runs.push(verify_both_ways(
            bin,
            catalog.path(),
            &device,
            run,
            to_change,
            created,
        )?);
    }
    Ok(runs)
}

/// The PostgreSQL part for one provider (see the module documentation).
fn measure_postgres(
    bin: &Path,
    kind: FsKind,
    provider: &str,
    args: &VerifyArgs,
) -> anyhow::Result<Vec<Run>> {
    pg::prepare(args.dir.as_deref())?;
    let mut cluster = pg::archived_cluster(bin, args.scale, kind, "verify")?;
    let ctx = cluster.ctx(bin, args.scale)?;
    let device = loop_device(ctx.setup.fs.path())?;
    // Hint bits set before the first copy, not by the first reader after it (which
    // would write every page of the table again).
    ctx.psql("VACUUM FREEZE")?;
    ctx.psql("CHECKPOINT")?;
    eprintln!("  the first copy, verified in full ...");
    let first = ctx.create(provider)?;
    ensure!(
        first["verification"].get("base").is_none(),
        "the first copy built on another: {first}"
    );
    let pages: u64 = ctx
        .psql("SELECT relpages FROM pg_class WHERE relname = 'pgbench_accounts'")?
        .parse()
        .context("relpages of pgbench_accounts")?;
    let rows = u64::from(args.scale) * pg::ROWS_PER_SCALE as u64;
    // One row in every hundredth page (rows are spread evenly over the pages).
    let step = (rows / pages.max(1) * 100).max(1);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        eprintln!("  run {run}: one row in every {step} updated ...");
        ctx.psql(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % {step} = {run}"
        ))?;
        ctx.psql("CHECKPOINT")?;
        let created = || ctx.create(provider);
        runs.push(verify_both_ways(
            bin,
            ctx.catalog,
            &device,
            run,
            pages / 100,
            created,
        )?);
    }
    ctx.setup.server.stop();
    Ok(runs)
}

/// One run, after the change: with the page cache dropped, `create` (its verification
/// building on the last copy), then `verify ID --full` of the same copy, the loop
/// `device`'s reads counted during each.
fn verify_both_ways(
    bin: &Path,
    catalog: &Path,
    device: &Path,
    run: u32,
    pages_changed: u64,
    create: impl FnOnce() -> anyhow::Result<Value>,
) -> anyhow::Result<Run> {
    drop_caches()?;
    let before = sectors_read(device)?;
    let created = create()?;
    let incremental_device = (sectors_read(device)? - before) * 512;
    let v = &created["verification"];
    ensure!(
        v["ok"] == true,
        "run {run}: the copy failed verification: {created}"
    );
    ensure!(
        v["base"].is_i64(),
        "run {run}: the verification built on no copy: {created}"
    );
    let id = created["id"].as_i64().context("create --json has no id")?;
    drop_caches()?;
    let before = sectors_read(device)?;
    let out = shadowcopy(
        bin,
        catalog,
        "verify",
        &[id.to_string(), "--full".into(), "--json".into()],
    )?;
    let full_device = (sectors_read(device)? - before) * 512;
    let full: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        full["ok"] == true,
        "run {run}: verify --full failed: {full}"
    );
    let r = Run {
        incremental: phase(&created, "verify")?,
        incremental_read: v["bytes_read"].as_u64().unwrap_or(0),
        incremental_device,
        full: common::micros(&full["took_us"])?,
        full_read: full["bytes_read"].as_u64().unwrap_or(0),
        full_device,
        pages_changed,
    };
    eprintln!(
        "    incremental {} (read {}, device {}), full {} (read {}, device {})",
        human(r.incremental),
        human_bytes(r.incremental_read),
        human_bytes(r.incremental_device),
        human(r.full),
        human_bytes(r.full_read),
        human_bytes(r.full_device)
    );
    eprintln!("    {}", v["detail"].as_str().unwrap_or_default());
    Ok(r)
}

/// Rewrites `count` pages of the bank's filler rows in place: a few bytes at a random
/// offset of a random row each (SQLite's blob I/O writes only the page they are on),
/// then checkpoints into the database file.
fn change_pages(db: &Path, count: u64) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    let rows: i64 = conn.query_row("SELECT MAX(id) FROM filler", [], |r| r.get(0))?;
    let mut rng = rand::rng();
    let tx = conn.unchecked_transaction()?;
    for _ in 0..count {
        let row = rng.random_range(1..=rows);
        let mut blob = tx.blob_open(rusqlite::MAIN_DB, "filler", "data", row, false)?;
        let len = blob.len();
        let at = rng.random_range(0..len.saturating_sub(16).max(1));
        let bytes: [u8; 16] = rng.random();
        blob.write_at(&bytes, at)?;
    }
    tx.commit()?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// The block device mounted at `mount` (`/sys/block/NAME`).
fn loop_device(mount: &Path) -> anyhow::Result<PathBuf> {
    let source = common::sh("findmnt", &["-no", "SOURCE", &mount.to_string_lossy()]);
    let name = Path::new(&source)
        .file_name()
        .with_context(|| format!("no device mounted at {}", mount.display()))?;
    Ok(Path::new("/sys/block").join(name))
}

/// Sectors (512 bytes) the device has read since it appeared.
fn sectors_read(device: &Path) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(device.join("stat"))
        .with_context(|| format!("reading {}/stat", device.display()))?;
    stat.split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .context("no sectors-read field in the device's stat")
}

fn report(
    part: Part,
    args: &VerifyArgs,
    results: &[(String, Vec<Run>)],
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Measured with `shadowcopy-bench verify --parts {} {} --runs {}` ({} since the bench began).\n\n",
        match part {
            Part::Sqlite => "sqlite",
            Part::Postgres => "postgres",
        },
        match part {
            Part::Sqlite => format!("--size {} --change {}", human_bytes(args.size), args.change),
            Part::Postgres => format!("--scale {}", args.scale),
        },
        args.runs,
        human(took)
    ));
    s.push_str(&common::environment(
        "an XFS (reflink) and a btrfs file system, one at a time,",
        load_before,
        load_after,
    ));
    s.push_str(
        "\n| provider | pages changed | verify, building on the last copy | read (its count / device) | `verify --full` | read (its count / device) | time ratio | device ratio |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (provider, runs) in results {
        let time = |f: fn(&Run) -> Duration| {
            let v: Vec<Duration> = runs.iter().map(f).collect();
            Spread::of(&v).map_or_else(|| "?".into(), |s| s.cell())
        };
        let bytes = |f: fn(&Run) -> u64| {
            let mut v: Vec<u64> = runs.iter().map(f).collect();
            v.sort_unstable();
            human_bytes(v[v.len() / 2])
        };
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.1} %", 100.0 * a / b)
            } else {
                "?".into()
            }
        };
        let median = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        s.push_str(&format!(
            "| {provider} | {} | {} | {} / {} | {} | {} / {} | {} | {} |\n",
            runs.first().map_or(0, |r| r.pages_changed),
            time(|r| r.incremental),
            bytes(|r| r.incremental_read),
            bytes(|r| r.incremental_device),
            time(|r| r.full),
            bytes(|r| r.full_read),
            bytes(|r| r.full_device),
            ratio(
                median(|r| r.incremental.as_secs_f64()),
                median(|r| r.full.as_secs_f64())
            ),
            ratio(
                median(|r| r.incremental_device as f64),
                median(|r| r.full_device as f64)
            ),
        ));
    }
    s
}
