//! `shadowcopy quickstart`: the whole product on a sample application, in one command.
//! A SQLite bank runs transfers; a shadow copy is taken under that load and verified;
//! the live database is damaged and restored; the output proves that every transfer
//! acknowledged before the copy is back and that the money still adds up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use shadowcopy_core::error::humanize;
use shadowcopy_core::{CopyId, EventSink, Phase};
use shadowcopy_engine::{CreateOptions, HumanDuration, Progress, RestoreOptions, WaitOptions};
use shadowcopy_sample as bank;

use crate::output::{Output, PhasePrinter};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Where the sample application and (unless --catalog is given) its catalog live
    #[arg(long, default_value = "shadowcopy-quickstart", value_name = "DIR")]
    pub dir: PathBuf,
    /// Storage provider for the copy
    #[arg(long, default_value = "auto", value_name = "auto|btrfs|reflink|copy")]
    pub provider: String,
    /// Transfer threads running during the copy
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

const ACCOUNTS: i64 = 100;

/// Remembers when the freeze began, and passes everything on to the printer.
struct FreezeClock {
    inner: PhasePrinter,
    freeze_began: std::sync::Mutex<Option<Instant>>,
}

impl EventSink for FreezeClock {
    fn copy_started(&self, id: CopyId, set: &str) {
        self.inner.copy_started(id, set)
    }
    fn phase_started(&self, phase: Phase) {
        if phase == Phase::Freeze {
            *self.freeze_began.lock().expect("clock lock") = Some(Instant::now());
        }
        self.inner.phase_started(phase)
    }
    fn phase_finished(&self, phase: Phase, took: Duration, ok: bool) {
        self.inner.phase_finished(phase, took, ok)
    }
    fn bytes(&self, done: u64, total: u64) {
        self.inner.bytes(done, total)
    }
    fn warning(&self, message: &str) {
        self.inner.warning(message)
    }
}

impl Progress for FreezeClock {
    fn queued_behind(
        &self,
        holder: Option<&shadowcopy_catalog::QueueHolder>,
        wait: shadowcopy_catalog::Wait,
    ) {
        self.inner.queued_behind(holder, wait)
    }
    fn recovered(&self, line: &str) {
        self.inner.recovered(line)
    }
}

pub fn run(g: &GlobalArgs, args: QuickstartArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let mut global = g.clone();
    global.catalog = global.catalog.or_else(|| Some(dir.join("catalog")));
    let engine = global.engine()?;
    let out = global.output(false);
    let say = |s: &str| {
        if out.human() {
            println!("{s}");
        }
    };
    let db = dir.join("bank.db");

    say("shadowcopy quickstart: an application-consistent copy of a live database, verified, then a restore.\n");
    say(&format!(
        "1. The application: {} — a SQLite bank in WAL mode.",
        db.display()
    ));
    prepare_bank(&db, out)?;
    say(&format!(
        "   {ACCOUNTS} accounts start with {} each, so the total must always be {}.",
        bank::INITIAL_BALANCE,
        ACCOUNTS * bank::INITIAL_BALANCE
    ));
    let transfers = bank::start_transfers(&db, args.threads, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(500));
    say(&format!(
        "   {} threads are moving money between accounts, one transaction per transfer ({} so far).\n",
        args.threads,
        transfers.committed()
    ));

    let planned = engine.plan(&CreateOptions {
        sqlite: Some(db.clone()),
        provider: Some(args.provider.clone()),
        ..CreateOptions::default()
    })?;
    say(&format!(
        "2. Shadow copy while the transfers run (provider {}, catalog {}):",
        planned.provider.kind(),
        engine.catalog_dir.display()
    ));
    say("   freeze = SQLite's write lock: readers go on, writers wait until thaw.");
    let wait = WaitOptions {
        wait: HumanDuration(Duration::from_secs(60)),
        no_wait: false,
    };
    let clock = Arc::new(FreezeClock {
        inner: PhasePrinter::new(out, "   "),
        freeze_began: Default::default(),
    });
    let stall_before_copy = transfers.longest_stall();
    transfers.reset_longest_stall();
    let created = engine.create_planned(&planned, &wait, clock.clone());
    let stall_during_copy = transfers.longest_stall();
    let created = match created {
        Ok(c) => c,
        Err(e) => {
            transfers.stop();
            return Err(e);
        }
    };
    let freeze_began = clock
        .freeze_began
        .lock()
        .expect("clock lock")
        .unwrap_or_else(Instant::now);
    let acked_before_copy = transfers.acknowledged_before(freeze_began);
    std::thread::sleep(Duration::from_millis(300));
    let acked_in_run = transfers.acknowledged_before(Instant::now() + Duration::from_secs(3600));
    let stats = transfers.stop();
    if let Some(e) = stats.errors.first() {
        anyhow::bail!("the sample application failed: {e}");
    }
    say(&format!(
        "   copy {} is usable. Freeze window {}; the slowest transfer took {} during the copy, {} before it.",
        created.id,
        humanize(created.freeze_window),
        humanize(stall_during_copy),
        humanize(stall_before_copy)
    ));
    if let Some(v) = &created.verification {
        say("\n3. Verified off the hot path (on the copy, never on the live data):");
        for line in v.detail.lines() {
            say(&format!("   {line}"));
        }
    }
    let view = engine.copy_files(created.id)?;
    let copy_db = view
        .path_of(&db)
        .context("the copy holds no bank.db")?
        .to_path_buf();
    let in_copy = read_copy(&copy_db)?;
    say(&format!(
        "   the copy holds {} transfers; total balance {} {}",
        in_copy.summary.transfers,
        in_copy.summary.total,
        if in_copy.summary.balanced() {
            "(balanced)"
        } else {
            "(NOT BALANCED)"
        }
    ));
    let missing_in_copy = missing(&acked_before_copy, &in_copy.ids);
    let after_copy: Vec<i64> = acked_in_run
        .iter()
        .copied()
        .filter(|id| in_copy.ids.binary_search(id).is_err())
        .collect();
    let in_flight = acked_in_run.len() - acked_before_copy.len() - after_copy.len();
    say(&format!(
        "   {} transfers of this run were acknowledged before the freeze began; missing from the copy: {}",
        acked_before_copy.len(),
        missing_in_copy
    ));
    if in_flight > 0 {
        say(&format!(
            "   ({in_flight} more were committing while the freeze took the write lock: they are in the copy too)"
        ));
    }

    say(&format!(
        "\n4. Disaster: the transfers stopped ({} committed in this run, {} of them after the copy); now bank.db is damaged.",
        stats.committed,
        after_copy.len()
    ));
    damage(&db)?;
    match bank::summarize(&db) {
        Ok(s) => say(&format!(
            "   the damaged database still opens, but its check says: {}",
            s.integrity
        )),
        Err(e) => say(&format!("   opening it now fails: {e}")),
    }

    say(&format!("\n5. Restore copy {} in place:", created.id));
    let outcome = engine.restore(
        &RestoreOptions::new(created.id),
        &wait,
        Arc::new(PhasePrinter::new(out, "   ")),
    )?;
    for step in &outcome.steps {
        say(&format!(
            "   {:<40} {:>10}",
            step.phase,
            humanize(step.took)
        ));
    }
    if let Some(pre) = outcome.pre_restore {
        say(&format!("   the damaged state was kept first as copy {pre} (pre-restore), in case it was needed."));
    }
    say(&format!(
        "   restore took {} in all.",
        humanize(outcome.took)
    ));

    let after = read_copy(&db)?;
    let missing_after = missing(&acked_before_copy, &after.ids);
    let after_copy_back = after_copy
        .iter()
        .filter(|id| after.ids.binary_search(id).is_ok())
        .count();
    say("\n6. Proof:");
    say(&format!(
        "   bank.db opens, quick_check {}, {} accounts, total {} {}",
        after.summary.integrity,
        after.summary.accounts,
        after.summary.total,
        if after.summary.balanced() {
            "= as at the start: no money created or lost"
        } else {
            "NOT BALANCED"
        }
    ));
    say(&format!(
        "   all {} transfers acknowledged before the copy are there (missing: {missing_after}); of the {} made after it, {after_copy_back} are:",
        acked_before_copy.len(),
        after_copy.len()
    ));
    say("   the data is exactly as it was at the copy's instant, as a point-in-time restore promises.");
    let ok = after.summary.balanced()
        && missing_after == 0
        && after_copy_back == 0
        && after.ids == in_copy.ids
        && after.summary.integrity == "ok"
        && in_copy.summary.balanced();
    say(&format!(
        "\nNext: shadowcopy --catalog {} list    (and `show {}` for phases, files and hashes)",
        engine.catalog_dir.display(),
        created.id
    ));
    if !ok {
        anyhow::bail!(
            "quickstart found a problem: the restored bank does not hold what the copy promised"
        );
    }
    Ok(())
}

/// Creates the sample bank, or reuses it when it is a healthy bank from an earlier run.
fn prepare_bank(db: &Path, out: Output) -> anyhow::Result<()> {
    if db.exists() {
        match bank::summarize(db) {
            Ok(s) if s.integrity == "ok" && s.balanced() && s.accounts == ACCOUNTS => {
                if out.human() {
                    println!(
                        "   (reusing it: {} transfers from earlier runs)",
                        s.transfers
                    );
                }
                return Ok(());
            }
            _ => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = db.as_os_str().to_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(p));
                }
            }
        }
    }
    bank::create(db, ACCOUNTS, true).with_context(|| format!("cannot create {}", db.display()))
}

struct BankContent {
    summary: bank::BankSummary,
    ids: Vec<i64>,
}

fn read_copy(db: &Path) -> anyhow::Result<BankContent> {
    // Read from a scratch clone: opening a WAL database creates files beside it.
    let scratch = tempfile::tempdir()?;
    let s = scratch.path().join("bank.db");
    std::fs::copy(db, &s)?;
    let mut wal = db.as_os_str().to_os_string();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        std::fs::copy(&wal, scratch.path().join("bank.db-wal"))?;
    }
    Ok(BankContent {
        summary: bank::summarize(&s).with_context(|| format!("cannot read {}", db.display()))?,
        ids: bank::transfer_ids(&s)?,
    })
}

fn missing(wanted: &[i64], have: &[i64]) -> usize {
    wanted
        .iter()
        .filter(|id| have.binary_search(id).is_err())
        .count()
}

/// Overwrites the header and a page in the middle with garbage, as a bad disk or a
/// stray `dd` would.
fn damage(db: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(db)?;
    let len = f.metadata()?.len();
    f.write_all_at(&[0xAB; 4096], 0)?;
    f.write_all_at(&[0xCD; 4096], len / 2)?;
    f.sync_all()?;
    Ok(())
}
