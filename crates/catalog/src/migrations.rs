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
    // 3: paths are the bytes the kernel uses (a Linux file name need not be UTF-8):
    // `path` columns hold BLOBs. Rows written as TEXT are converted to the same bytes.
    "
    CREATE TABLE components_new (
        copy_id     INTEGER NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
        writer      TEXT NOT NULL,
        name        TEXT NOT NULL,
        role        TEXT NOT NULL,
        path        BLOB NOT NULL,
        required    INTEGER NOT NULL,
        pinned      INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO components_new (rowid, copy_id, writer, name, role, path, required, pinned)
        SELECT rowid, copy_id, writer, name, role, CAST(path AS BLOB), required, pinned
        FROM components;
    DROP TABLE components;
    ALTER TABLE components_new RENAME TO components;
    CREATE TABLE files_new (
        copy_id     INTEGER NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
        path        BLOB NOT NULL,
        size        INTEGER NOT NULL,
        mode        INTEGER NOT NULL,
        mtime_ns    INTEGER NOT NULL,
        blake3      TEXT,
        PRIMARY KEY (copy_id, path)
    );
    INSERT INTO files_new (copy_id, path, size, mode, mtime_ns, blake3)
        SELECT copy_id, CAST(path AS BLOB), size, mode, mtime_ns, blake3 FROM files;
    DROP TABLE files;
    ALTER TABLE files_new RENAME TO files;
    CREATE INDEX components_by_copy ON components(copy_id);
    ",
    // 4: restores while they run: staging areas and the swap's renames, so that the next
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
    // 5: the agent's jobs (create, verify, prune): queued, running, and how each ended.
    "
    CREATE TABLE jobs (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        kind         TEXT NOT NULL,
        set_name     TEXT NOT NULL,
        trigger      TEXT NOT NULL,
        state        TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        created_ms   INTEGER NOT NULL,
        started_ms   INTEGER,
        finished_ms  INTEGER,
        copy_id      INTEGER,
        result       TEXT
    );
    CREATE INDEX jobs_by_set ON jobs(set_name, kind, created_ms);
    ",
    // 6: a running job's heartbeat (the agent's lease on it), renewed while it runs.
    "
    ALTER TABLE jobs ADD COLUMN heartbeat_ms INTEGER;
    ",
    // 7: each copy's file count and bytes, kept with its manifest, so that listing many
    // copies reads one row per copy instead of counting its files; copies by state, so
    // that counting a set's copies and finding its newest usable one reads the index;
    // how far each set's logs are in each archive, which log truncation respects.
    "
    CREATE INDEX copies_by_state ON copies(set_name, state, id);
    CREATE TABLE archived_logs (
        set_name    TEXT NOT NULL,
        archive     TEXT NOT NULL,
        through     TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (set_name, archive)
    );
    ALTER TABLE copies ADD COLUMN file_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE copies ADD COLUMN file_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE copies SET
        file_count = (SELECT COUNT(*) FROM files f WHERE f.copy_id = copies.id),
        file_bytes = (SELECT COALESCE(SUM(size), 0) FROM files f WHERE f.copy_id = copies.id);
    ",
    // 8: copies opened read-only beside production (`expose`): where their scratch
    // clone is and which process serves it, so that closing one (or cleaning up after a
    // crash) finds both.
    "
    CREATE TABLE exposures (
        id          INTEGER PRIMARY KEY,
        copy_id     INTEGER NOT NULL,
        set_name    TEXT NOT NULL,
        scratch     BLOB NOT NULL,
        state       TEXT NOT NULL,
        builder_pid INTEGER NOT NULL,
        exposed     TEXT NOT NULL DEFAULT '[]',
        created_ms  INTEGER NOT NULL,
        expires_ms  INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX exposures_one_per_copy ON exposures(copy_id);
    ",
    // 9: incremental verification. Each verification names the copy it built on
    // (`base_copy_id`, NULL: every byte read) and when the full verification its chain
    // goes back to ran (`full_at_ms`; those before were all full). `leaf_hashes` keeps,
    // for the newest verified copy of each set, its files' BLAKE3 leaf values: what the
    // next copy's verification builds on.
    "
    ALTER TABLE verifications ADD COLUMN base_copy_id INTEGER;
    ALTER TABLE verifications ADD COLUMN full_at_ms INTEGER;
    UPDATE verifications SET full_at_ms = at_ms;
    CREATE TABLE leaf_hashes (
        copy_id     INTEGER NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
        path        BLOB NOT NULL,
        size        INTEGER NOT NULL,
        leaf_size   INTEGER NOT NULL,
        cvs         BLOB NOT NULL,
        PRIMARY KEY (copy_id, path)
    );
    ",
    // 10: the outbox an agent sends its copies to its backup server from. Once the
    // agent is linked to a server (a row in `outbox_link`), every change to a copy (made,
    // a phase, verified, deleted) gives the copy the next sequence number; one row per
    // copy, only its newest change. A catalog no server reads records nothing.
    "
    CREATE TABLE outbox_link (id INTEGER PRIMARY KEY CHECK (id = 1));
    CREATE TABLE outbox (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        copy_id INTEGER NOT NULL UNIQUE
    );
    CREATE TRIGGER outbox_copy_made AFTER INSERT ON copies
        WHEN EXISTS (SELECT 1 FROM outbox_link)
        BEGIN INSERT OR REPLACE INTO outbox (copy_id) VALUES (NEW.id); END;
    CREATE TRIGGER outbox_copy_changed AFTER UPDATE ON copies
        WHEN EXISTS (SELECT 1 FROM outbox_link)
        BEGIN INSERT OR REPLACE INTO outbox (copy_id) VALUES (NEW.id); END;
    CREATE TRIGGER outbox_copy_deleted AFTER DELETE ON copies
        WHEN EXISTS (SELECT 1 FROM outbox_link)
        BEGIN INSERT OR REPLACE INTO outbox (copy_id) VALUES (OLD.id); END;
    ",
    // 11: a copy's verifications found by its id (`show`, what the outbox sends, and the
    // cascade when a copy is deleted read them per copy).
    "CREATE INDEX verifications_by_copy ON verifications(copy_id, at_ms);",
];

/// How many migrations a catalog at schema version `found` lacks, or `Err(known)` when
/// it is newer than this shadowcopy.
pub(crate) fn pending(found: i64) -> Result<usize, i64> {
    let known = MIGRATIONS.len() as i64;
    if found > known {
        return Err(known);
    }
    Ok((known - found.max(0)) as usize)
}

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Catalog;

    /// A catalog as schema version 2 left it, with one copy and TEXT paths.
    fn version_2_catalog(dir: &Path) {
        let conn = Connection::open(dir.join(crate::CATALOG_FILE)).unwrap();
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            "INSERT INTO copies (id, set_name, origin, provider, location, state, phase, pid,
                                 created_ms, freeze_deadline_ms, spec_json)
             VALUES (1, 's', 'create', 'copy', '/c/copy-1', 'usable', 'done', 1, 0, 0, '{}');
             INSERT INTO files (copy_id, path, size, mode, mtime_ns) VALUES (1, '/d/b', 1, 420, 0);
             INSERT INTO files (copy_id, path, size, mode, mtime_ns) VALUES (1, '/d/a', 2, 420, 0);
             INSERT INTO components (copy_id, writer, name, role, path, required, pinned)
             VALUES (1, 'paths', 'd', 'data', '/d', 1, 0);",
        )
        .unwrap();
    }

    #[test]
    fn text_paths_become_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        version_2_catalog(dir.path());
        let catalog = Catalog::open_existing(dir.path()).unwrap();
        let paths: Vec<_> = catalog
            .manifest(1)
            .unwrap()
            .into_iter()
            .map(|f| (f.path, f.size))
            .collect();
        assert_eq!(
            paths,
            vec![(Path::new("/d/a").into(), 2), (Path::new("/d/b").into(), 1)]
        );
        assert_eq!(catalog.components(1).unwrap()[0].path, Path::new("/d"));
        let kinds: Vec<String> = catalog
            .conn
            .prepare(
                "SELECT DISTINCT typeof(path) FROM files UNION SELECT typeof(path) FROM components",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kinds, vec!["blob".to_string()]);
        // Deleting the copy still cascades to its rows.
        catalog.remove(1).unwrap();
        let left: i64 = catalog
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM files) + (SELECT COUNT(*) FROM components)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn a_read_only_open_of_an_older_catalog_brings_it_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        version_2_catalog(dir.path());
        let catalog = Catalog::open_read_only(dir.path()).unwrap();
        assert_eq!(catalog.manifest(1).unwrap().len(), 2);
        assert_eq!(catalog.list(None).unwrap().len(), 1);
    }

    #[test]
    fn an_older_catalogs_copies_get_their_file_count_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        version_2_catalog(dir.path());
        let catalog = Catalog::open_existing(dir.path()).unwrap();
        let copy = catalog.summary(1).unwrap();
        assert_eq!((copy.files, copy.bytes), (2, 3));
    }
}
