//! Runs the real binary against a catalog in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shadowcopy_testing::bank;

pub struct Cli {
    pub dir: tempfile::TempDir,
    pub catalog: PathBuf,
}

impl Cli {
    pub fn new() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog");
        Cli { dir, catalog }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A bank database (WAL mode) in the temp dir, optionally padded to `pad` bytes.
    pub fn bank(&self, name: &str, pad: u64) -> PathBuf {
        self.bank_in_mode(name, pad, true)
    }

    /// A bank database in WAL mode or with a rollback journal.
    pub fn bank_in_mode(&self, name: &str, pad: u64, wal: bool) -> PathBuf {
        let db = self.path(name);
        bank::create(&db, 20, wal).unwrap();
        if pad > 0 {
            bank::pad_to(&db, pad).unwrap();
        }
        db
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_shadowcopy"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("SHADOWCOPY_CATALOG", &self.catalog)
            .env_remove("SHADOWCOPY_CONFIG")
            .env_remove("SHADOWCOPY_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and expects exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// `create` of `bank.db` with the full-copy provider and a deadline long enough for
    /// a large database: a shadow set that runs long enough to be caught mid-way.
    pub fn spawn_copy_of_bank(&self) -> Child {
        self.spawn(&[
            "create",
            "--sqlite",
            "bank.db",
            "--provider",
            "copy",
            "--freeze-deadline",
            "120s",
        ])
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The newest copy's row as the catalog holds it, read directly (no recovery runs).
    pub fn newest_copy(&self) -> Option<(i64, String, String)> {
        let db = self.catalog.join("catalog.db");
        if !db.exists() {
            return None;
        }
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        conn.busy_timeout(Duration::from_secs(1)).ok()?;
        conn.query_row(
            "SELECT id, state, phase FROM copies ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
    }

    /// Waits until the newest copy is in `phase` (and still in progress): `freeze` covers
    /// the whole freeze window, `precommit` the copy of pinned files before it.
    pub fn wait_for_phase(&self, phase: &str, limit: Duration) -> i64 {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some((id, state, p)) = self.newest_copy() {
                if state == "in-progress" && p == phase {
                    return id;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!(
            "no copy reached phase {phase} within {limit:?}; newest: {:?}",
            self.newest_copy()
        );
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The database takes a write at once: nothing holds its write lock.
pub fn assert_writable(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::ZERO).unwrap();
    conn.execute_batch(
        "BEGIN IMMEDIATE; UPDATE accounts SET balance = balance WHERE id = 1; COMMIT;",
    )
    .expect("the database must be writable");
}

pub fn kill9(child: &mut Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    child.wait().unwrap();
}

/// Fills the file system at `root`: a big file `name`, then small ones `name-N` for the
/// last blocks and inodes.
pub fn fill(root: &Path, name: &str) {
    use std::io::Write;
    let mut filler = std::fs::File::create(root.join(name)).unwrap();
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.sync_all();
    let mut small = 0;
    while small < 10_000 && std::fs::write(root.join(format!("{name}-{small}")), b"x").is_ok() {
        small += 1;
    }
}
