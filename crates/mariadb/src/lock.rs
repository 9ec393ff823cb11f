//! The freeze, on one connection held from prepare to thaw: the server drops every lock
//! of a connection when it goes, so a killed shadowcopy never leaves it frozen, and a
//! hung one is cut off by the session's `wait_timeout` (set to the freeze deadline plus
//! a second while frozen).
//!
//! - MariaDB: `BACKUP STAGE START` and `BACKUP STAGE FLUSH` in prepare (outside the
//!   window: the slow flush of non-transactional tables), `BACKUP STAGE BLOCK_DDL` and
//!   `BACKUP STAGE BLOCK_COMMIT` as the freeze, `BACKUP STAGE END` as the thaw.
//! - MySQL: `FLUSH NO_WRITE_TO_BINLOG TABLES` in prepare, `LOCK INSTANCE FOR BACKUP`
//!   and `FLUSH TABLES WITH READ LOCK` as the freeze, `UNLOCK TABLES` and
//!   `UNLOCK INSTANCE` as the thaw.
//!
//! Frozen, the server commits nothing; `FLUSH ENGINE LOGS` makes InnoDB's redo log
//! durable up to the last commit, and the binlog file, position and GTID position are
//! read: they are exactly the copy's.
//!
//! InnoDB keeps writing in the background while commits are blocked (the page cleaner
//! and the LRU flush write pages and move the checkpoint, purge runs). A provider that
//! snapshots all files at one instant does not care; one that copies file by file
//! (reflink, copy) can pair a data file copied before a page write with a redo log
//! copied after the checkpoint that write allowed, and a byte copy can read a page
//! half-written, neither of which recovery can repair. So the InnoDB state is read at
//! the freeze and again at the thaw ([`InnoDbState`]): the copy is kept only when no
//! page was written in between (by either of InnoDB's two counters). An earlier rule
//! also kept copies whose pages moved while the log and checkpoint stood still; it is
//! gone: it let torn pages through a byte copy, and it never saved a copy (in 70
//! creates under a ledger load, every page batch that landed during the copy moved the
//! checkpoint too). What the counters
//! cannot see (a write submitted before the freeze and landing during the copy) the
//! verification that follows every create catches: such a copy fails it and is never
//! listed as usable.

use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::Conn;

use crate::position::BinlogPosition;
use shadowcopy_core::BoxError;

use crate::server::{self, Flavour, MariaDbOptions};

/// How long prepare may wait for the backup lock (running DDL holds it off).
const PREPARE_LOCK_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{what} failed: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: mysql::Error,
    },
    #[error("the freeze deadline ({}) passed while {what}; a long DDL statement or a write to a non-transactional table holds the backup lock off: retry, or raise --freeze-deadline", shadowcopy_core::error::humanize(*.deadline))]
    Deadline {
        what: &'static str,
        deadline: Duration,
    },
    #[error("InnoDB wrote {pages} page(s) during a file-by-file copy (redo log end {lsn0} → {lsn1}, checkpoint {cp0} → {cp1}); the copy might not recover, so it is discarded: retry (a busy server may need a few tries), or use a provider that snapshots at one instant (btrfs) or --fsfreeze with --provider copy")]
    InnoDbMoved {
        pages: u64,
        lsn0: u64,
        lsn1: u64,
        cp0: u64,
        cp1: u64,
    },
    #[error("the server reported no InnoDB {0}; cannot check the copy's consistency")]
    NoInnoDbState(&'static str),
}

fn query(what: &'static str) -> impl Fn(mysql::Error) -> LockError {
    move |source| LockError::Query { what, source }
}

/// InnoDB's progress counters, read at the freeze and at the thaw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InnoDbState {
    /// The end of the redo log (LSN).
    pub lsn: u64,
    /// The last checkpoint (LSN).
    pub checkpoint: u64,
    /// Pages flushed from the buffer pool since the server started
    /// (`Innodb_buffer_pool_pages_flushed`).
    pub pages_flushed: u64,
    /// Pages written since the server started (`Innodb_pages_written`, counted as each
    /// write is issued; 0 where the server does not report it).
    pub pages_written: u64,
}

impl InnoDbState {
    /// Whether a file-by-file copy made between `self` (freeze) and `later` (thaw) is
    /// crash-consistent; see the module documentation.
    pub fn copy_is_consistent(&self, later: &InnoDbState) -> Result<(), LockError> {
        let flushed = later.pages_flushed.saturating_sub(self.pages_flushed);
        let written = later.pages_written.saturating_sub(self.pages_written);
        if flushed == 0 && written == 0 {
            return Ok(());
        }
        Err(LockError::InnoDbMoved {
            pages: flushed.max(written),
            lsn0: self.lsn,
            lsn1: later.lsn,
            cp0: self.checkpoint,
            cp1: later.checkpoint,
        })
    }

    /// From `SHOW GLOBAL STATUS` rows (MariaDB: `Innodb_lsn_current`,
    /// `Innodb_lsn_last_checkpoint`; MySQL 8.0.30+: `Innodb_redo_log_current_lsn`,
    /// `Innodb_redo_log_checkpoint_lsn`; both: `Innodb_buffer_pool_pages_flushed`), with
    /// `SHOW ENGINE INNODB STATUS`'s LOG section as the fallback for the LSNs.
    pub fn from_status(
        rows: &[(String, String)],
        engine_status: Option<&str>,
    ) -> Result<InnoDbState, LockError> {
        let get = |names: &[&str]| {
            rows.iter()
                .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        };
        let text = engine_status.unwrap_or("");
        let from_text = |label: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        Ok(InnoDbState {
            lsn: get(&["Innodb_lsn_current", "Innodb_redo_log_current_lsn"])
                .or_else(|| from_text("Log sequence number"))
                .ok_or(LockError::NoInnoDbState("log sequence number"))?,
            checkpoint: get(&[
                "Innodb_lsn_last_checkpoint",
                "Innodb_redo_log_checkpoint_lsn",
            ])
            .or_else(|| from_text("Last checkpoint at"))
            .ok_or(LockError::NoInnoDbState("checkpoint"))?,
            pages_flushed: get(&["Innodb_buffer_pool_pages_flushed"])
                .ok_or(LockError::NoInnoDbState("pages flushed"))?,
            pages_written: get(&["Innodb_pages_written"]).unwrap_or(0),
        })
    }
}

/// What the freeze found.
#[derive(Clone, Debug)]
pub struct Frozen {
    pub position: BinlogPosition,
    pub innodb: InnoDbState,
}

/// The connection holding the backup lock, and how far it got.
pub struct BackupLock {
    conn: Conn,
    flavour: Flavour,
    frozen: bool,
}

impl BackupLock {
    /// Connects and takes the first stages (prepare).
    pub fn prepare(options: &MariaDbOptions, flavour: Flavour) -> Result<BackupLock, BoxError> {
        let mut conn = server::connect_with(options)?;
        conn.query_drop(format!(
            "SET SESSION lock_wait_timeout = {}, wait_timeout = {}",
            PREPARE_LOCK_WAIT.as_secs(),
            PREPARE_LOCK_WAIT.as_secs() * 2
        ))
        .map_err(query("setting the backup session's timeouts"))?;
        match flavour {
            Flavour::MariaDb => {
                conn.query_drop("BACKUP STAGE START")
                    .map_err(query("BACKUP STAGE START"))?;
                conn.query_drop("BACKUP STAGE FLUSH")
                    .map_err(query("BACKUP STAGE FLUSH"))?;
            }
            Flavour::MySql => {
                conn.query_drop("FLUSH NO_WRITE_TO_BINLOG TABLES")
                    .map_err(query("FLUSH TABLES"))?;
            }
        }
        Ok(BackupLock {
            conn,
            flavour,
            frozen: false,
        })
    }

    /// The server's connection id for this session (tests kill it).
    pub fn connection_id(&self) -> u32 {
        self.conn.connection_id()
    }

    /// Blocks DDL and commits, flushes the redo log and reads the binlog position and
    /// InnoDB state; gives up at `deadline`.
    pub fn freeze(
        &mut self,
        deadline: Instant,
        deadline_len: Duration,
    ) -> Result<Frozen, LockError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // lock_wait_timeout counts whole seconds: the floor, so the wait ends before the
        // deadline (at least 1 s, the smallest it takes).
        let wait = remaining.as_secs().max(1);
        self.conn
            .query_drop(format!(
                "SET SESSION lock_wait_timeout = {wait}, wait_timeout = {}",
                deadline_len.as_secs() + 2
            ))
            .map_err(query("setting the freeze's timeouts"))?;
        self.frozen = true;
        let stages: &[(&str, &'static str)] = match self.flavour {
            Flavour::MariaDb => &[
                (
                    "BACKUP STAGE BLOCK_DDL",
                    "waiting for BACKUP STAGE BLOCK_DDL",
                ),
                (
                    "BACKUP STAGE BLOCK_COMMIT",
                    "waiting for BACKUP STAGE BLOCK_COMMIT",
                ),
            ],
            Flavour::MySql => &[
                (
                    "LOCK INSTANCE FOR BACKUP",
                    "waiting for LOCK INSTANCE FOR BACKUP",
                ),
                (
                    "FLUSH TABLES WITH READ LOCK",
                    "waiting for FLUSH TABLES WITH READ LOCK",
                ),
            ],
        };
        for (sql, what) in stages {
            if let Err(e) = self.conn.query_drop(sql) {
                if Instant::now() >= deadline || is_lock_timeout(&e) {
                    return Err(LockError::Deadline {
                        what,
                        deadline: deadline_len,
                    });
                }
                return Err(LockError::Query {
                    what: sql,
                    source: e,
                });
            }
            if Instant::now() >= deadline {
                return Err(LockError::Deadline {
                    what,
                    deadline: deadline_len,
                });
            }
        }
        self.conn
            .query_drop("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS")
            .map_err(query("FLUSH ENGINE LOGS"))?;
        let position = self.position()?;
        let innodb = self.innodb_state()?;
        if Instant::now() >= deadline {
            return Err(LockError::Deadline {
                what: "reading the binlog position",
                deadline: deadline_len,
            });
        }
        Ok(Frozen { position, innodb })
    }

    /// Reads the InnoDB state (while still frozen, before [`BackupLock::release`]).
    pub fn innodb_state(&mut self) -> Result<InnoDbState, LockError> {
        let rows: Vec<(String, String)> = self
            .conn
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_lsn_current', \
                 'Innodb_lsn_last_checkpoint', 'Innodb_redo_log_current_lsn', \
                 'Innodb_redo_log_checkpoint_lsn', 'Innodb_buffer_pool_pages_flushed', \
                 'Innodb_pages_written')",
            )
            .map_err(query("reading InnoDB's status"))?;
        match InnoDbState::from_status(&rows, None) {
            Ok(s) => Ok(s),
            Err(_) => {
                let text: Option<(String, String, String)> = self
                    .conn
                    .query_first("SHOW ENGINE INNODB STATUS")
                    .map_err(query("SHOW ENGINE INNODB STATUS"))?;
                InnoDbState::from_status(&rows, text.as_ref().map(|t| t.2.as_str()))
            }
        }
    }

    fn position(&mut self) -> Result<BinlogPosition, LockError> {
        let version: Option<String> = self
            .conn
            .query_first("SELECT VERSION()")
            .map_err(query("SELECT VERSION()"))?;
        let server_id: Option<u32> = self
            .conn
            .query_first("SELECT @@server_id")
            .map_err(query("SELECT @@server_id"))?;
        let status: Option<mysql::Row> = match self.conn.query_first("SHOW MASTER STATUS") {
            Ok(r) => r,
            // MySQL 8.4 renamed it.
            Err(_) => self
                .conn
                .query_first("SHOW BINARY LOG STATUS")
                .map_err(query("SHOW BINARY LOG STATUS"))?,
        };
        let (file, pos, executed) = match status {
            Some(row) => (
                row.get_opt::<String, _>("File").and_then(Result::ok),
                row.get_opt::<u64, _>("Position").and_then(Result::ok),
                row.get_opt::<String, _>("Executed_Gtid_Set")
                    .and_then(Result::ok),
            ),
            None => (None, None, None),
        };
        let gtid = match self.flavour {
            Flavour::MariaDb => self
                .conn
                .query_first::<Option<String>, _>("SELECT @@gtid_binlog_pos")
                .map_err(query("SELECT @@gtid_binlog_pos"))?
                .flatten(),
            Flavour::MySql => executed,
        }
        .filter(|g| !g.trim().is_empty());
        Ok(BinlogPosition {
            flavour: self.flavour.as_str().to_string(),
            version: version.unwrap_or_default(),
            server_id: server_id.unwrap_or(0),
            binlog_file: file,
            binlog_position: pos,
            gtid,
            captured_at: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        })
    }

    /// Releases every stage (the thaw). Consumes the lock: the connection closes too.
    pub fn release(mut self) -> Result<(), LockError> {
        let statements: &[&str] = match self.flavour {
            Flavour::MariaDb => &["BACKUP STAGE END"],
            Flavour::MySql if self.frozen => &["UNLOCK TABLES", "UNLOCK INSTANCE"],
            Flavour::MySql => &[],
        };
        for s in statements {
            self.conn.query_drop(s).map_err(query(s))?;
        }
        Ok(())
    }
}

/// ER_LOCK_WAIT_TIMEOUT (1205).
fn is_lock_timeout(e: &mysql::Error) -> bool {
    matches!(e, mysql::Error::MySqlError(m) if m.code == 1205)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn innodb_state_from_status_variables_or_the_engine_status() {
        let s = InnoDbState::from_status(
            &rows(&[
                ("Innodb_lsn_current", "47851"),
                ("Innodb_lsn_last_checkpoint", "44420"),
                ("Innodb_buffer_pool_pages_flushed", "12"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!((s.lsn, s.checkpoint, s.pages_flushed), (47851, 44420, 12));
        let text = "---\nLOG\n---\nLog sequence number          900\nLog flushed up to   900\nLast checkpoint at  800\n";
        let s = InnoDbState::from_status(
            &rows(&[("Innodb_buffer_pool_pages_flushed", "3")]),
            Some(text),
        )
        .unwrap();
        assert_eq!((s.lsn, s.checkpoint, s.pages_flushed), (900, 800, 3));
        assert!(InnoDbState::from_status(&rows(&[]), None).is_err());
    }

    #[test]
    fn a_copy_is_consistent_only_if_no_page_was_written() {
        let at = InnoDbState {
            lsn: 100,
            checkpoint: 50,
            pages_flushed: 10,
            pages_written: 12,
        };
        // Nothing written: the data files did not change during the copy, whatever the
        // log did.
        let later = InnoDbState {
            lsn: 200,
            checkpoint: 60,
            ..at
        };
        assert!(at.copy_is_consistent(&later).is_ok());
        // Any page written, by either counter, even with the log and checkpoint still:
        // a byte copy may have read it half-written.
        for later in [
            InnoDbState {
                pages_flushed: 20,
                ..at
            },
            InnoDbState {
                pages_written: 13,
                ..at
            },
            InnoDbState {
                pages_flushed: 20,
                pages_written: 22,
                checkpoint: 60,
                ..at
            },
        ] {
            let e = at.copy_is_consistent(&later).unwrap_err().to_string();
            assert!(e.contains("retry") && e.contains("wrote"), "{e}");
        }
    }
}
