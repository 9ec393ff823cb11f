//! The SQLite writer passes the writer conformance suite, in both journal modes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shadowcopy_core::Writer;
use shadowcopy_testing::writer_suite::{self, Application};
use shadowcopy_writers::sqlite::{SqliteOptions, SqliteWriter};

use crate::support::Env;

struct SqliteApp {
    db: PathBuf,
}

impl Application for SqliteApp {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(SqliteWriter::new(SqliteOptions {
            path: self.db.clone(),
        }))
    }

    fn write(&self) -> Result<(), String> {
        let conn = rusqlite::Connection::open(&self.db).map_err(|e| e.to_string())?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        conn.execute_batch(
            "BEGIN IMMEDIATE; UPDATE accounts SET balance = balance + 0 WHERE id = 1; COMMIT;",
        )
        .map_err(|e| e.to_string())
    }

    fn damage(&self, copied: &Path) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(copied)
            .unwrap();
        f.write_all_at(&[0xEE; 64], 0).unwrap();
    }
}

#[test]
fn sqlite_wal_passes_the_writer_suite() {
    let env = Env::new(true, None);
    writer_suite::run_all(&SqliteApp { db: env.db.clone() });
}

#[test]
fn sqlite_rollback_journal_passes_the_writer_suite() {
    let env = Env::new(false, None);
    writer_suite::run_all(&SqliteApp { db: env.db.clone() });
}
