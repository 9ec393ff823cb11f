//! Schema migrations, applied in order inside one transaction each; `PRAGMA user_version`
//! holds how many have run. A migration is never edited once released: add a new one.

use std::path::Path;

use rusqlite::Connection;

use crate::CatalogError;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE sets (
        name        TEXT PRIMARY KEY,
        spec_json   TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL
    );
    CREATE TABLE copies (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        set_name            TEXT NOT NULL,
        origin              TEXT NOT NULL,
        provider            TEXT NOT NULL,
        location            TEXT,
        state               TEXT NOT NULL,
        phase               TEXT NOT NULL,
        error               TEXT,
        pid                 INTEGER NOT NULL,
        created_ms          INTEGER NOT NULL,
        finished_ms         INTEGER,
        freeze_deadline_ms  INTEGER NOT NULL,
        freeze_window_us    INTEGER,
        spec_json           TEXT NOT NULL,
        verify_state        TEXT NOT NULL DEFAULT 'not-verified'
    );
    CREATE INDEX copies_by_set ON copies(set_name, created_ms);
    CREATE TABLE phases (
        copy_id     INTEGER NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        phase       TEXT NOT NULL,
        started_ms  INTEGER NOT NULL,
        took_us     INTEGER,
        error       TEXT,
        PRIMARY KEY (copy_id, seq)
    );
    CREATE TABLE components (
        copy_id     INTEGER NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
        writer      TEXT NOT NULL,
        name        TEXT NOT NULL,
        role        TEXT NOT NULL,
        path        TEXT NOT NULL,
        required    INTEGER NOT NULL
    );
    CREATE TABLE files (
        copy_id     INTEGER NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
        path        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        mode        INTEGER NOT NULL,
        mtime_ns    INTEGER NOT NULL,
        blake3      TEXT,
        PRIMARY KEY (copy_id, path)
    );
    CREATE TABLE verifications (
        copy_id     INTEGER NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
        at_ms       INTEGER NOT NULL,
        ok          INTEGER NOT NULL,
        took_us     INTEGER NOT NULL,
        detail      TEXT NOT NULL
    );
    ",
    // 2: components a writer pins from prepare to thaw (copied before the freeze).
    "ALTER TABLE components ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;",
    // 3: restores while they run: staging areas and the swap's renames, so that the next
    // command finishes one that was interrupted.
    "
    CREATE TABLE restores (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        copy_id     INTEGER NOT NULL,
        pid         INTEGER NOT NULL,
        started_ms  INTEGER NOT NULL,
        record      TEXT NOT NULL,
        ended_ms    INTEGER
    );
    ",
];

pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<(), CatalogError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(CatalogError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
