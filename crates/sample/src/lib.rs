//! `shadowcopy-sample`: a small SQLite bank used to show and prove what a shadow copy
//! keeps. Accounts hold balances; transfer threads move money between them in
//! transactions and keep a ledger of every transfer whose COMMIT returned (acknowledged).
//!
//! A consistent copy taken at instant T holds: the same total balance as at creation,
//! one `transfers` row per balance change, and every transfer acknowledged before T.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::RngExt;
use rusqlite::{params, Connection, OpenFlags};

pub const INITIAL_BALANCE: i64 = 1_000;

/// What a bank database holds, read from any copy of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankSummary {
    pub accounts: i64,
    pub total: i64,
    pub transfers: i64,
    /// The sum of all transfer amounts, which must match the balances' drift.
    pub integrity: String,
}

impl BankSummary {
    /// The invariant: money is neither created nor destroyed.
    pub fn balanced(&self) -> bool {
        self.total == self.accounts * INITIAL_BALANCE
    }
}

/// Creates a bank with `accounts` accounts at [`INITIAL_BALANCE`]; `wal` selects
/// `journal_mode=WAL` (else the rollback journal, `DELETE`).
pub fn create(path: &Path, accounts: i64, wal: bool) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.execute_batch(if wal {
        "PRAGMA journal_mode=WAL;"
    } else {
        "PRAGMA journal_mode=DELETE;"
    })?;
    conn.execute_batch(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE transfers (id INTEGER PRIMARY KEY, from_id INTEGER NOT NULL,
                                 to_id INTEGER NOT NULL, amount INTEGER NOT NULL, at_ms INTEGER NOT NULL);
         CREATE TABLE filler (id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )?;
    let tx = conn.unchecked_transaction()?;
    for id in 1..=accounts {
        tx.execute(
            "INSERT INTO accounts (id, balance) VALUES (?1, ?2)",
            params![id, INITIAL_BALANCE],
        )?;
    }
    tx.commit()
}

/// Grows the database to about `bytes` with incompressible filler rows (for benchmarks).
pub fn pad_to(path: &Path, bytes: u64) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    let mut rng = rand::rng();
    let row = 256 * 1024;
    let have: i64 = conn.query_row(
        "SELECT COALESCE(SUM(length(data)), 0) FROM filler",
        [],
        |r| r.get(0),
    )?;
    let mut need = bytes.saturating_sub(have as u64);
    while need > 0 {
        let tx = conn.unchecked_transaction()?;
        for _ in 0..64 {
            if need == 0 {
                break;
            }
            let mut blob = vec![0u8; row];
            rng.fill(&mut blob[..]);
            tx.execute("INSERT INTO filler (data) VALUES (?1)", [blob])?;
            need = need.saturating_sub(row as u64);
        }
        tx.commit()?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .or_else(|_| Ok(()))
}

/// Reads a bank (live or a copy) read-only.
pub fn summarize(path: &Path) -> rusqlite::Result<BankSummary> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (accounts, total): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(balance), 0) FROM accounts",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let transfers: i64 = conn.query_row("SELECT COUNT(*) FROM transfers", [], |r| r.get(0))?;
    let integrity: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    Ok(BankSummary {
        accounts,
        total,
        transfers,
        integrity,
    })
}

/// The ids of all transfers a bank (live or a copy) holds, ascending.
pub fn transfer_ids(path: &Path) -> rusqlite::Result<Vec<i64>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT id FROM transfers ORDER BY id")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect();
    ids
}

/// One acknowledged transfer: its id and when its COMMIT returned.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub id: i64,
    pub at: Instant,
}

/// Running transfer threads.
pub struct Transfers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<rusqlite::Result<()>>>,
    ledger: Arc<Mutex<Vec<Ack>>>,
    longest_us: Arc<AtomicU64>,
    started: Instant,
}

/// What the transfer threads saw.
#[derive(Clone, Debug)]
pub struct TransferStats {
    pub committed: usize,
    /// The longest time one transfer took from BEGIN to acknowledged COMMIT: the longest
    /// stall the application saw.
    pub longest_stall: Duration,
    pub ran_for: Duration,
    pub errors: Vec<String>,
}

/// Starts `threads` transfer threads on the bank at `path`, each pausing `pause` between
/// transfers (zero = as fast as possible).
pub fn start_transfers(path: &Path, threads: usize, pause: Duration) -> Transfers {
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let longest_us = Arc::new(AtomicU64::new(0));
    let threads = (0..threads)
        .map(|_| {
            let (path, stop, ledger, longest_us) = (
                path.to_path_buf(),
                stop.clone(),
                ledger.clone(),
                longest_us.clone(),
            );
            std::thread::spawn(move || transfer_loop(&path, &stop, &ledger, &longest_us, pause))
        })
        .collect();
    Transfers {
        stop,
        threads,
        ledger,
        longest_us,
        started: Instant::now(),
    }
}

fn transfer_loop(
    path: &PathBuf,
    stop: &AtomicBool,
    ledger: &Mutex<Vec<Ack>>,
    longest_us: &AtomicU64,
    pause: Duration,
) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    let accounts: i64 = conn.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))?;
    let mut rng = rand::rng();
    while !stop.load(Ordering::Relaxed) {
        let from = rng.random_range(1..=accounts);
        let to = rng.random_range(1..=accounts);
        let amount = rng.random_range(1..=50);
        let began = Instant::now();
        let tx =
            rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE accounts SET balance = balance - ?2 WHERE id = ?1",
            params![from, amount],
        )?;
        tx.execute(
            "UPDATE accounts SET balance = balance + ?2 WHERE id = ?1",
            params![to, amount],
        )?;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        tx.execute(
            "INSERT INTO transfers (from_id, to_id, amount, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![from, to, amount, at_ms],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        let at = Instant::now();
        longest_us.fetch_max((at - began).as_micros() as u64, Ordering::Relaxed);
        ledger.lock().expect("ledger lock").push(Ack { id, at });
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}

impl Transfers {
    /// Ids of the transfers acknowledged strictly before `t`.
    pub fn acknowledged_before(&self, t: Instant) -> Vec<i64> {
        let ledger = self.ledger.lock().expect("ledger lock");
        let mut ids: Vec<i64> = ledger.iter().filter(|a| a.at < t).map(|a| a.id).collect();
        ids.sort_unstable();
        ids
    }

    pub fn committed(&self) -> usize {
        self.ledger.lock().expect("ledger lock").len()
    }

    /// The longest stall so far; [`Transfers::reset_longest_stall`] starts a new window.
    pub fn longest_stall(&self) -> Duration {
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed))
    }

    pub fn reset_longest_stall(&self) {
        self.longest_us.store(0, Ordering::Relaxed);
    }

    pub fn stop(self) -> TransferStats {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .threads
            .into_iter()
            .filter_map(|t| match t.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("transfer thread panicked".into()),
            })
            .collect();
        let committed = self.ledger.lock().expect("ledger lock").len();
        TransferStats {
            committed,
            longest_stall: Duration::from_micros(self.longest_us.load(Ordering::Relaxed)),
            ran_for: self.started.elapsed(),
            errors,
        }
    }
}
