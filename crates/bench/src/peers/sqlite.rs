//! `shadowcopy-bench peers sqlite`: shadowcopy against what SQLite users copy a live
//! database with, on the same busy bank, in the same runs.
//!
//! The bank of `shadowcopy-sample` (WAL mode, 1000 accounts) is padded to each `--size`
//! (default 1 GiB and 8 GiB) on an XFS loop file system, and copied once onto a btrfs
//! loop file system (into a subvolume) for the `btrfs` provider. Methods (`--methods`),
//! in this order within every run:
//!
//! - `shadowcopy copy`, `shadowcopy reflink` (XFS), `shadowcopy btrfs` (btrfs): `shadowcopy
//!   create --sqlite DB --provider P --json`, verification included as a user runs it;
//!   restore = `shadowcopy restore ID --discard-current`;
//! - `VACUUM INTO`: `sqlite3 DB "VACUUM INTO 'FILE'"` (one read transaction; rebuilds
//!   the database into a new file);
//! - `backup API, one step`: `sqlite3_backup_step(-1)` from this process (the bundled
//!   SQLite of rusqlite), one read transaction copying every page, as Python's
//!   `Connection.backup()` does by default;
//! - `sqlite3 .backup`: the shell's `.backup FILE`, which steps 100 pages at a time and
//!   restarts whenever another connection writes; killed after three times the slowest
//!   other method of the run (at least 60 s), and when it did not finish in a run it is
//!   not tried again at that size.
//!
//! The three file copies go to the same XFS file system and are restored with `cp`
//! (Debian 12's coreutils clone on XFS: the restore of a file copy is a reflink), after
//! removing the live `-wal` and `-shm` files, and the restored file is put back in WAL
//! mode, as the bank was.
//!
//! Per run and method, with `--threads` transfer threads writing all the time: the page
//! cache is dropped; after a second of warm-up a `--baseline` window without a copy gives
//! the load's longest transfer and transfers per second; then the copy runs and gives the
//! same two figures under copy; the file system's used bytes before and after give the
//! copy's size. The load stops; the restore is timed until the bank answers a query; the
//! restored bank must pass `quick_check`, be balanced and hold every transfer
//! acknowledged before the copy started, else the bench fails. The copy is deleted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;
use shadowcopy_testing::loopfs::{FsKind, LoopFs};

use super::record::{Figures, Group, Outcome, Sample};
use super::{timed, used_bytes, version, Common};
use crate::common::{self, drop_caches, loadavg, shadowcopy};
use crate::sqlite::{check_restored, stop_load, ACCOUNTS};
use crate::stats::{self, human, human_bytes};

/// The methods, as `--methods` names them and as the table shows them.
const METHODS: [(&str, &str); 6] = [
    ("copy", "shadowcopy copy"),
    ("reflink", "shadowcopy reflink"),
    ("btrfs", "shadowcopy btrfs"),
    ("vacuum-into", "VACUUM INTO"),
    ("backup-api", "backup API, one step"),
    ("dot-backup", "sqlite3 .backup"),
];

/// The method every ratio is taken against: shadowcopy on the peers' file system.
const REFERENCE: &str = "shadowcopy reflink";

/// The least time `.backup` gets before it is killed.
const DOT_BACKUP_MIN_LIMIT: Duration = Duration::from_secs(60);
/// How long any other copy command may take.
const COPY_LIMIT: Duration = Duration::from_secs(3600);

/// Options of the SQLite comparison.
#[derive(clap::Args, Debug)]
pub struct SqliteArgs {
    /// Size the bank is padded to (repeat for more)
    #[arg(long = "size", value_name = "SIZE", value_parser = stats::parse_size, default_values_t = [1u64 << 30, 8u64 << 30])]
    sizes: Vec<u64>,
    /// Methods to measure, in order (copy, reflink, btrfs, vacuum-into, backup-api, dot-backup)
    #[arg(long, value_delimiter = ',', default_value = "copy,reflink,btrfs,vacuum-into,backup-api,dot-backup", value_parser = parse_method)]
    methods: Vec<String>,
    /// Transfer threads writing all the time
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Pause of each transfer thread between transfers
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// The window of load without a copy, before each copy
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    #[command(flatten)]
    common: Common,
}

fn parse_method(s: &str) -> Result<String, String> {
    METHODS
        .iter()
        .find(|(key, _)| *key == s)
        .map(|(key, _)| key.to_string())
        .ok_or_else(|| {
            let keys: Vec<&str> = METHODS.iter().map(|(k, _)| *k).collect();
            format!("unknown method `{s}` (choose from {})", keys.join(", "))
        })
}

/// The table name of a method key.
fn display(key: &str) -> &'static str {
    METHODS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, name)| *name)
        .expect("methods are checked when parsed")
}

impl SqliteArgs {
    pub fn tools(&self) -> Vec<&'static str> {
        let mut tools = vec!["mkfs.xfs", "sqlite3"];
        if self.methods.iter().any(|m| m == "btrfs") {
            tools.push("mkfs.btrfs");
        }
        tools
    }

    fn wants_btrfs(&self) -> bool {
        self.methods.iter().any(|m| m == "btrfs")
    }
}

/// Runs the comparison at every size (as root).
pub fn bench(args: &SqliteArgs) -> anyhow::Result<()> {
    common::use_dir(args.common.dir.as_deref())?;
    let bin = common::shadowcopy_bin(args.common.shadowcopy.as_deref())?;
    for &size in &args.sizes {
        let group = bench_size(args, &bin, size)
            .with_context(|| format!("SQLite at {}", human_bytes(size)))?;
        args.common.output.add(group)?;
    }
    Ok(())
}

/// One file system with a bank on it.
struct Place {
    fs: LoopFs,
    db: PathBuf,
    /// Where shadowcopy keeps `copy` and `reflink` copies and the peers write theirs.
    copies: PathBuf,
}

fn bench_size(args: &SqliteArgs, bin: &Path, size: u64) -> anyhow::Result<Group> {
    let load_before = loadavg();
    // Live bank, one copy, the restore staged beside the live file, and room to spare.
    let image = size * 4 + (2 << 30);
    let xfs = LoopFs::new(FsKind::Xfs, image).map_err(|e| anyhow!(e))?;
    let xfs = Place {
        db: xfs.path().join("bank.db"),
        copies: xfs.path().join("copies"),
        fs: xfs,
    };
    std::fs::create_dir(&xfs.copies)?;
    eprintln!(
        "SQLite {}: creating the bank at {} ...",
        human_bytes(size),
        xfs.db.display()
    );
    let t = Instant::now();
    shadowcopy_sample::create(&xfs.db, ACCOUNTS, true)?;
    shadowcopy_sample::pad_to(&xfs.db, size)?;
    let data_bytes = std::fs::metadata(&xfs.db)?.len();
    eprintln!("  {} in {}", human_bytes(data_bytes), human(t.elapsed()));

    let btrfs = if args.wants_btrfs() {
        let fs = LoopFs::new(FsKind::Btrfs, image).map_err(|e| anyhow!(e))?;
        let subvolume = fs.path().join("data");
        run_ok(
            Command::new("btrfs")
                .args(["subvolume", "create"])
                .arg(&subvolume),
        )?;
        let db = subvolume.join("bank.db");
        run_ok(
            Command::new("cp")
                .arg("--reflink=never")
                .arg(&xfs.db)
                .arg(&db),
        )?;
        Some(Place {
            copies: fs.path().join("copies"),
            fs,
            db,
        })
    } else {
        None
    };

    let catalog = tempfile::Builder::new()
        .prefix("shadowcopy-bench-peers-catalog-")
        .tempdir()?;
    let ctx = Ctx {
        args,
        bin,
        catalog: catalog.path(),
    };
    let mut samples = Vec::new();
    let mut notes = Vec::new();
    let mut gave_up: Vec<String> = Vec::new();
    for run in 1..=args.common.runs {
        let mut slowest_other = Duration::ZERO;
        for key in &args.methods {
            let method = display(key);
            if gave_up.contains(key) {
                continue;
            }
            let place = match key.as_str() {
                "btrfs" => btrfs.as_ref().expect("btrfs is set up when chosen"),
                _ => &xfs,
            };
            // Whole seconds, so the note reads well.
            let dot_backup_limit =
                Duration::from_secs((slowest_other * 3).as_secs()).max(DOT_BACKUP_MIN_LIMIT);
            eprintln!("SQLite {}, run {run}: {method} ...", human_bytes(size));
            let outcome = match ctx.measure(key, place, dot_backup_limit) {
                Ok(f) => {
                    eprintln!(
                        "  copy {}, stall {} (baseline {}), load {:.0} % of {:.0}/s, restore {}, {} used; {}",
                        human(secs(f.copy_s)),
                        human(secs(f.stall_s)),
                        human(secs(f.baseline_stall_s)),
                        100.0 * f.ops_during / f.ops_baseline.max(f64::MIN_POSITIVE),
                        f.ops_baseline,
                        human(secs(f.restore_s)),
                        human_bytes(f.copy_bytes),
                        f.detail
                    );
                    if key != "dot-backup" {
                        slowest_other = slowest_other.max(secs(f.copy_s));
                    }
                    Outcome::Done(f)
                }
                Err(e) if e.is::<WrongRestore>() => return Err(e),
                Err(e) => {
                    let reason = format!("{e:#}");
                    eprintln!("  {method} failed: {reason}");
                    notes.push(format!("{method}, run {run}: {reason}"));
                    if key == "dot-backup" {
                        gave_up.push(key.clone());
                        notes.push(format!(
                            "{method} was not tried again at this size: under a steady write load \
                             it restarts after every write by another connection, so it does not finish."
                        ));
                    }
                    Outcome::Failed { reason }
                }
            };
            samples.push(Sample {
                method: method.to_string(),
                run,
                outcome,
            });
        }
    }
    if args
        .methods
        .iter()
        .any(|m| m == "vacuum-into" || m == "dot-backup" || m == "backup-api")
    {
        notes.push(
            "The file copies (VACUUM INTO, backup API, .backup) are restored with Debian 12's `cp`, \
             which clones the file on XFS (a reflink), so their restore costs what a reflink costs; \
             from another disk it would be a full copy."
                .into(),
        );
    }
    notes.push(
        "Space used: the file system's used bytes after the copy minus before, so what the load \
         wrote meanwhile (WAL, new transfers) counts too; for reflink and btrfs that is most of it."
            .into(),
    );
    let fs_kinds = if btrfs.is_some() {
        "an XFS file system (and a btrfs one for `shadowcopy btrfs`)"
    } else {
        "an XFS file system"
    };
    let environment = format!(
        "{}- versions: sqlite3 shell {}, SQLite {} (bundled, for the backup API and the load)\n\
         - runs: {}; page cache dropped before each method\n",
        common::environment(fs_kinds, &load_before, &loadavg()),
        version("sqlite3", &["--version"])
            .split_whitespace()
            .next()
            .unwrap_or("?"),
        rusqlite::version(),
        args.common.runs,
    );
    Ok(Group {
        workload: "sqlite".into(),
        size: human_bytes(data_bytes),
        data_bytes,
        reference: REFERENCE.into(),
        environment,
        load: format!(
            "{} transfer threads (BEGIN IMMEDIATE, two updates and an insert, COMMIT), {} pause \
             between transfers; an operation is one transfer; baseline window {}",
            args.threads,
            humantime::format_duration(args.pause),
            humantime::format_duration(args.baseline),
        ),
        notes,
        samples,
    })
}

/// A restored bank that is wrong: the bench stops, this is not a method's failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WrongRestore(String);

/// What a copy left behind for its restore.
enum Copy {
    /// A shadowcopy copy, by id.
    Shadow(i64),
    /// A database file written by a peer.
    File(PathBuf),
}

struct Ctx<'a> {
    args: &'a SqliteArgs,
    bin: &'a Path,
    catalog: &'a Path,
}

impl Ctx<'_> {
    /// One method, one run: the copy under load, then the restore, checked. `.backup` is
    /// killed after `dot_backup_limit`.
    fn measure(
        &self,
        key: &str,
        place: &Place,
        dot_backup_limit: Duration,
    ) -> anyhow::Result<Figures> {
        drop_caches()?;
        let load =
            shadowcopy_sample::start_transfers(&place.db, self.args.threads, self.args.pause);
        std::thread::sleep(Duration::from_secs(1));

        load.reset_longest_stall();
        let (before, window) = (load.committed(), Instant::now());
        std::thread::sleep(self.args.baseline);
        let ops_baseline = (load.committed() - before) as f64 / window.elapsed().as_secs_f64();
        let baseline_stall = load.longest_stall();

        let used_before = used_bytes(place.fs.path())?;
        load.reset_longest_stall();
        let (before, started) = (load.committed(), Instant::now());
        let copied = self.copy(key, place, dot_backup_limit);
        let copy_took = started.elapsed();
        let ops_during = (load.committed() - before) as f64 / copy_took.as_secs_f64();
        let stall = load.longest_stall();
        let must_hold = load.acknowledged_before(started);
        stop_load(load)?;
        let (copy, copy_detail) = copied?;
        let copy_bytes = used_bytes(place.fs.path())?.saturating_sub(used_before);

        let restore_started = Instant::now();
        let restore_detail = self.restore(&copy, &place.db)?;
        let restore_took = restore_started.elapsed();
        check_restored(&place.db, &must_hold).map_err(|e| WrongRestore(format!("{key}: {e:#}")))?;
        self.discard(copy)?;
        Ok(Figures {
            copy_s: copy_took.as_secs_f64(),
            stall_s: stall.as_secs_f64(),
            baseline_stall_s: baseline_stall.as_secs_f64(),
            ops_during,
            ops_baseline,
            restore_s: restore_took.as_secs_f64(),
            copy_bytes,
            detail: format!("{copy_detail}; restore: {restore_detail}"),
        })
    }

    /// Makes the copy; returns it and how its time was spent.
    fn copy(
        &self,
        key: &str,
        place: &Place,
        dot_backup_limit: Duration,
    ) -> anyhow::Result<(Copy, String)> {
        let file = place.copies.join(format!("{key}.db"));
        match key {
            "copy" | "reflink" | "btrfs" => {
                let mut args = vec![
                    "--sqlite".to_string(),
                    place.db.to_string_lossy().into(),
                    "--provider".into(),
                    key.into(),
                    "--json".into(),
                    "--freeze-deadline".into(),
                    "120s".into(),
                ];
                if key == "btrfs" {
                    // Its own set: the XFS bank's set has the same file name.
                    args.extend(["--name".into(), "bank-on-btrfs".into()]);
                } else {
                    args.push("--copies-dir".into());
                    args.push(place.copies.to_string_lossy().into());
                }
                let out = shadowcopy(self.bin, self.catalog, "create", &args)?;
                let created: Value =
                    serde_json::from_slice(&out.stdout).context("create --json output")?;
                let id = created["id"].as_i64().context("create --json has no id")?;
                ensure!(
                    created["verification"]["ok"].as_bool() == Some(true),
                    "copy {id} did not pass verification: {}",
                    created["verification"]
                );
                let phase = |name: &str| common::phase(&created, name).map_or("?".into(), human);
                let freeze = common::micros(&created["freeze_window_us"]).map_or("?".into(), human);
                Ok((
                    Copy::Shadow(id),
                    format!(
                        "freeze window {freeze}, commit {}, verify {}",
                        phase("commit"),
                        phase("verify")
                    ),
                ))
            }
            "vacuum-into" => {
                let sql = format!("VACUUM INTO '{}'", file.display());
                let took = timed(Command::new("sqlite3").arg(&place.db).arg(sql), COPY_LIMIT)?;
                Ok((Copy::File(file), format!("VACUUM INTO {}", human(took))))
            }
            "dot-backup" => {
                let dot = format!(".backup '{}'", file.display());
                let took = timed(
                    Command::new("sqlite3").arg(&place.db).arg(dot),
                    dot_backup_limit,
                )
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&file);
                })?;
                Ok((Copy::File(file), format!(".backup {}", human(took))))
            }
            "backup-api" => {
                let started = Instant::now();
                backup_one_step(&place.db, &file)?;
                Ok((
                    Copy::File(file),
                    format!("backup step(-1) {}", human(started.elapsed())),
                ))
            }
            other => bail!("unknown method {other}"),
        }
    }

    /// Puts the copy back over `db` and waits until the bank answers a query.
    fn restore(&self, copy: &Copy, db: &Path) -> anyhow::Result<String> {
        let started = Instant::now();
        match copy {
            Copy::Shadow(id) => {
                shadowcopy(
                    self.bin,
                    self.catalog,
                    "restore",
                    &[id.to_string(), "--discard-current".into()],
                )?;
            }
            Copy::File(file) => {
                for suffix in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{suffix}", db.display()));
                    match std::fs::remove_file(&side) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(e).with_context(|| format!("removing {}", side.display()))
                        }
                    }
                }
                run_ok(Command::new("cp").arg(file).arg(db))?;
                let conn = rusqlite::Connection::open(db)?;
                conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
            }
        }
        let put_back = started.elapsed();
        let conn = rusqlite::Connection::open(db)?;
        let accounts: i64 = conn.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))?;
        ensure!(
            accounts == ACCOUNTS,
            "the restored bank has {accounts} accounts"
        );
        Ok(format!(
            "put back {}, first query after {}",
            human(put_back),
            human(started.elapsed())
        ))
    }

    /// Deletes the copy so disk use stays bounded.
    fn discard(&self, copy: Copy) -> anyhow::Result<()> {
        match copy {
            Copy::Shadow(id) => {
                shadowcopy(self.bin, self.catalog, "delete", &[id.to_string()]).map(|_| ())
            }
            Copy::File(file) => {
                std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))
            }
        }
    }
}

/// The online backup API in one step: one read transaction copies every page.
fn backup_one_step(db: &Path, file: &Path) -> anyhow::Result<()> {
    let src = rusqlite::Connection::open(db)?;
    let mut dst = rusqlite::Connection::open(file)?;
    let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
    match backup.step(-1)? {
        rusqlite::backup::StepResult::Done => Ok(()),
        other => bail!("backup step(-1) returned {other:?} instead of finishing"),
    }
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    timed(cmd, COPY_LIMIT).map(|_| ())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_have_table_names() {
        assert_eq!(parse_method("vacuum-into").unwrap(), "vacuum-into");
        let err = parse_method("dump").unwrap_err();
        assert!(err.contains("copy, reflink, btrfs, vacuum-into"), "{err}");
        assert_eq!(display("dot-backup"), "sqlite3 .backup");
        assert!(METHODS.iter().any(|(_, name)| *name == REFERENCE));
    }

    #[test]
    fn the_one_step_backup_copies_a_consistent_database() {
        let dir = tempfile::tempdir().unwrap();
        let (db, file) = (dir.path().join("bank.db"), dir.path().join("copy.db"));
        shadowcopy_sample::create(&db, 50, true).unwrap();
        backup_one_step(&db, &file).unwrap();
        let s = shadowcopy_sample::summarize(&file).unwrap();
        assert_eq!((s.integrity.as_str(), s.accounts), ("ok", 50));
        assert!(s.balanced());
    }
}
