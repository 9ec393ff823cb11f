//! The database-independent half of the ledger load ([`crate::postgres::Ledger`],
//! [`crate::mariadb::Ledger`]): the writer threads' loop (connect, transfer, back off,
//! reconnect), the bookkeeping of what they acknowledged and when, how they are stopped
//! ([`LedgerRun`], [`LedgerStats`]), and the invariants a database's ledger must satisfy
//! ([`LedgerState`]). Each database module adds only its SQL: the tables' setup, one
//! transfer transaction (a `LedgerConn`) and the read of a [`LedgerState`].
//!
//! The load: each writer thread, on its own connection, runs transactions that move money
//! between two of the `accounts`, pay a fee of 1 into the writer's own fee account (id
//! `-writer-1`) and insert one `ledger` row, then records the row's id as acknowledged with
//! the `Instant` its COMMIT returned.
//!
//! Invariants of any consistent state ([`LedgerState::balanced`]): the total balance never
//! changes, and the fee accounts hold exactly one unit per `ledger` row (a cross-table
//! check, and a cross-directory one when `setup_with` puts the `ledger` table elsewhere). A
//! copy taken at instant T also holds every id acknowledged before T
//! ([`LedgerState::verify`]).
//!
//! Writers survive a server that stops, crashes or restarts: they record the error, back
//! off (10 ms doubling to 500 ms), reconnect, and go on until [`LedgerRun::stop`].

use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::RngExt;

pub use crate::bank::Ack;

/// Regular accounts a ledger's `setup` creates.
pub const LEDGER_ACCOUNTS: i64 = 1_000;
/// Each regular account's opening balance.
pub const LEDGER_INITIAL_BALANCE: i64 = 1_000;

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
const MAX_KEPT_ERRORS: usize = 1_000;
const STOP_TIMEOUT_WRITERS: Duration = Duration::from_secs(30);

/// An error with its sources (`postgres::Error`'s Display alone says only "db error").
pub fn error_chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

// ---------------------------------------------------------------------------------------
// What a database's ledger writes

/// One writer transaction: move `amount` between two regular accounts, pay a fee of 1 into
/// the writer's fee account, insert one `ledger` row `(writer, seq, amount)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub writer: i32,
    pub seq: i64,
    pub amount: i64,
    /// The two accounts in id order (update them in this order: no deadlocks between
    /// writers) and what each gains: `-amount` for the payer, `amount - 1` for the payee.
    pub lo: i32,
    pub lo_delta: i64,
    pub hi: i32,
    pub hi_delta: i64,
    /// The writer's fee account, `-writer-1`.
    pub fee_account: i32,
}

impl Transfer {
    /// A random transfer between two distinct accounts of `1..=accounts`.
    fn random(accounts: i32, writer: i32, seq: i64, rng: &mut impl RngExt) -> Transfer {
        let from = rng.random_range(1..=accounts);
        let mut to = rng.random_range(1..accounts.max(2));
        if to >= from {
            to += 1;
        }
        let amount: i64 = rng.random_range(1..=50);
        let (lo, lo_delta, hi, hi_delta) = if from < to {
            (from, -amount, to, amount - 1)
        } else {
            (to, amount - 1, from, -amount)
        };
        Transfer {
            writer,
            seq,
            amount,
            lo,
            lo_delta,
            hi,
            hi_delta,
            fee_account: -writer - 1,
        }
    }
}

/// A writer's connection to a database holding the ledger tables.
pub(crate) trait LedgerConn {
    type Error: Error;
    /// How many regular accounts the ledger has (`ledger_meta`).
    fn accounts(&self) -> i32;
    /// True when the connection is known to be unusable (a new one is made).
    fn is_closed(&self) -> bool {
        false
    }
    /// Runs `t` in one transaction; the id of its `ledger` row once COMMIT returned.
    fn transfer(&mut self, t: &Transfer) -> Result<i64, Self::Error>;
}

// ---------------------------------------------------------------------------------------
// The writers

/// What the writers share with their [`LedgerRun`].
struct Shared {
    stop: AtomicBool,
    acks: Mutex<Vec<Ack>>,
    errors: Mutex<Vec<String>>,
    error_count: AtomicUsize,
    longest_us: AtomicU64,
}

impl Shared {
    fn record(&self, writer: i32, what: &str, e: &dyn Error) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < MAX_KEPT_ERRORS {
            errors.push(format!("writer {writer}: {what}: {}", error_chain(e)));
        }
    }

    /// Sleeps `d` unless told to stop meanwhile.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(10)));
        }
    }

    fn acks(&self) -> MutexGuard<'_, Vec<Ack>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn writer_loop<C, F>(writer: i32, mut connect: F, shared: Arc<Shared>, pause: Duration)
where
    C: LedgerConn,
    F: FnMut() -> Result<C, C::Error>,
{
    let mut rng = rand::rng();
    let mut conn: Option<C> = None;
    let mut seq: i64 = 0;
    let mut backoff = MIN_BACKOFF;
    while !shared.stop.load(Ordering::Relaxed) {
        if !matches!(&conn, Some(c) if !c.is_closed()) {
            match connect() {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    shared.record(writer, "connect", &e);
                    shared.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        seq += 1;
        let t = Transfer::random(c.accounts(), writer, seq, &mut rng);
        let began = Instant::now();
        match c.transfer(&t) {
            Ok(id) => {
                let at = Instant::now();
                shared
                    .longest_us
                    .fetch_max((at - began).as_micros() as u64, Ordering::Relaxed);
                shared.acks().push(Ack { id, at });
                backoff = MIN_BACKOFF;
                if !pause.is_zero() {
                    shared.sleep(pause);
                }
            }
            Err(e) => {
                // Whatever it was (shutdown, crash, recovery in progress, a deadlock), a new
                // connection is the simplest way on.
                shared.record(writer, "transaction", &e);
                conn = None;
                shared.sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Running ledger writers and what they acknowledged (see the module docs): what a
/// database's `Ledger` derefs to. Dropped without [`LedgerRun::stop`] (a failing test), a
/// run tells its writers to stop and does not wait for them.
pub struct LedgerRun {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl LedgerRun {
    /// Starts `writers` threads named `<name>-<n>`, each connecting with (its clone of)
    /// `connect` and pausing `pause` between transactions (zero: as fast as possible).
    pub(crate) fn start<C, F>(name: &str, writers: usize, pause: Duration, connect: F) -> LedgerRun
    where
        C: LedgerConn + 'static,
        F: FnMut() -> Result<C, C::Error> + Clone + Send + 'static,
    {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            acks: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            error_count: AtomicUsize::new(0),
            longest_us: AtomicU64::new(0),
        });
        let threads = (0..writers)
            .map(|w| {
                let (connect, shared) = (connect.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("{name}-{w}"))
                    .spawn(move || writer_loop(w as i32, connect, shared, pause))
                    .expect("spawn a ledger writer")
            })
            .collect();
        LedgerRun {
            shared,
            threads,
            started: Instant::now(),
        }
    }

    /// Ids acknowledged strictly before `t`, ascending.
    pub fn acknowledged_before(&self, t: Instant) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .shared
            .acks()
            .iter()
            .filter(|a| a.at < t)
            .map(|a| a.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every id acknowledged so far, ascending.
    pub fn acknowledged(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.shared.acks().iter().map(|a| a.id).collect();
        ids.sort_unstable();
        ids
    }

    pub fn committed(&self) -> usize {
        self.shared.acks().len()
    }

    /// How many transactions were acknowledged at or after `from` and before `to`: the
    /// load's throughput over that window is this divided by `to - from`.
    pub fn committed_between(&self, from: Instant, to: Instant) -> usize {
        self.shared
            .acks()
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .count()
    }

    pub fn error_count(&self) -> usize {
        self.shared.error_count.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` transactions are acknowledged in all; false on timeout.
    pub fn wait_for_commits(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.committed() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// The longest time one transaction took from BEGIN to acknowledged COMMIT so far;
    /// [`LedgerRun::reset_longest_stall`] starts a new window.
    pub fn longest_stall(&self) -> Duration {
        Duration::from_micros(self.shared.longest_us.load(Ordering::Relaxed))
    }

    pub fn reset_longest_stall(&self) {
        self.shared.longest_us.store(0, Ordering::Relaxed);
    }

    /// Stops the writers (each finishes or abandons its transaction) and reports. A writer
    /// stuck for 30 s (e.g. in a COMMIT on a server that never comes back) is left behind
    /// and reported in `errors`.
    pub fn stop(mut self) -> LedgerStats {
        self.shared.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + STOP_TIMEOUT_WRITERS;
        let mut stuck = Vec::new();
        for (w, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                if t.join().is_err() {
                    stuck.push(format!("writer {w}: panicked"));
                }
            } else {
                stuck.push(format!(
                    "writer {w}: did not stop within {STOP_TIMEOUT_WRITERS:?}"
                ));
            }
        }
        let acknowledged = self.acknowledged();
        let mut errors = self
            .shared
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let error_count = self.error_count() + stuck.len();
        errors.extend(stuck);
        LedgerStats {
            committed: acknowledged.len(),
            acknowledged,
            longest_stall: self.longest_stall(),
            ran_for: self.started.elapsed(),
            error_count,
            errors,
        }
    }
}

impl Drop for LedgerRun {
    /// A run dropped without [`LedgerRun::stop`] (a failing test) tells its writers to stop
    /// and does not wait for them.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// What a ledger's `stop` reports.
#[derive(Clone, Debug)]
pub struct LedgerStats {
    pub committed: usize,
    /// Every acknowledged ledger id, ascending.
    pub acknowledged: Vec<i64>,
    /// The longest time one transaction took from BEGIN to acknowledged COMMIT.
    pub longest_stall: Duration,
    pub ran_for: Duration,
    /// How many errors the writers met (connects included).
    pub error_count: usize,
    /// The first 1000 of them, as "writer N: what: error".
    pub errors: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// The invariants

/// What a database (live, a copy, a restore) holds, read by a ledger's `check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerState {
    /// The ledger ids, ascending.
    pub ids: Vec<i64>,
    /// Regular accounts present, and how many the ledger's `setup_with` made.
    pub accounts: i64,
    pub expected_accounts: i64,
    /// The sum of all balances (fee accounts included), and what it must be.
    pub total_balance: i64,
    pub expected_total: i64,
    /// The sum of the fee accounts: one per ledger row.
    pub fees: i64,
}

impl LedgerState {
    /// Money neither created nor destroyed, one fee per ledger row, no account lost.
    pub fn balanced(&self) -> bool {
        self.total_balance == self.expected_total
            && self.fees == self.ids.len() as i64
            && self.accounts == self.expected_accounts
    }

    /// The ids of `acknowledged` this state lacks.
    pub fn missing(&self, acknowledged: &[i64]) -> Vec<i64> {
        acknowledged
            .iter()
            .copied()
            .filter(|id| self.ids.binary_search(id).is_err())
            .collect()
    }

    /// Ok when balanced and holding every id of `acknowledged`; else what is wrong.
    pub fn verify(&self, acknowledged: &[i64]) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.total_balance != self.expected_total {
            problems.push(format!(
                "total balance {} instead of {}",
                self.total_balance, self.expected_total
            ));
        }
        if self.fees != self.ids.len() as i64 {
            problems.push(format!(
                "fee accounts hold {} for {} ledger rows",
                self.fees,
                self.ids.len()
            ));
        }
        if self.accounts != self.expected_accounts {
            problems.push(format!(
                "{} accounts instead of {}",
                self.accounts, self.expected_accounts
            ));
        }
        let missing = self.missing(acknowledged);
        if !missing.is_empty() {
            problems.push(format!(
                "{} of {} acknowledged ids missing, e.g. {:?}",
                missing.len(),
                acknowledged.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose transfers all succeed, after 200 µs.
    #[derive(Clone)]
    struct Immediate(i64);

    impl LedgerConn for Immediate {
        type Error = std::io::Error;
        fn accounts(&self) -> i32 {
            10
        }
        fn transfer(&mut self, _: &Transfer) -> Result<i64, std::io::Error> {
            self.0 += 1;
            std::thread::sleep(Duration::from_micros(200));
            Ok(self.0)
        }
    }

    #[test]
    fn commits_are_counted_per_window() {
        let run = LedgerRun::start("fake-ledger", 2, Duration::ZERO, || {
            Ok::<_, std::io::Error>(Immediate(0))
        });
        let began = run.started;
        assert!(run.wait_for_commits(10, Duration::from_secs(10)));
        let mid = Instant::now();
        let at_mid = run.committed();
        assert!(run.wait_for_commits(at_mid + 10, Duration::from_secs(10)));
        let end = Instant::now();
        let (before, after) = (
            run.committed_between(began, mid),
            run.committed_between(mid, end),
        );
        let stats = run.stop();
        assert!(before >= 10 && after >= 10, "{before} {after}");
        assert!(before + after <= stats.committed);
    }
}
