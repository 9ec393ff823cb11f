//! Shared set-up: a bank database in a temp dir, a catalog, providers, and a run of the
//! coordinator that remembers when the freeze began.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shadowcopy_catalog::{Catalog, QueueHolder, Wait};
use shadowcopy_core::{
    Coordinator, CreatedCopy, EventSink, Origin, Phase, Provider, ShadowSetRequest, Writer,
};
use shadowcopy_providers::ProviderOptions;
use shadowcopy_testing::bank;
use shadowcopy_writers::sqlite::{SqliteOptions, SqliteWriter};

pub const ACCOUNTS: i64 = 40;

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub db: PathBuf,
    pub catalog: Catalog,
}

impl Env {
    /// A bank in `parent` (a temp dir when `None`) and a catalog beside it.
    pub fn new(wal: bool, parent: Option<&Path>) -> Env {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let root = dir.path().to_path_buf();
        let db = root.join("bank.db");
        bank::create(&db, ACCOUNTS, wal).unwrap();
        let catalog = Catalog::open(&root.join("catalog")).unwrap();
        Env {
            _dir: dir,
            root,
            db,
            catalog,
        }
    }

    pub fn provider(&self, kind: &str) -> Arc<dyn Provider> {
        let opts = ProviderOptions {
            copies_dir: None,
            default_copies_dir: self.root.join("copies"),
            parallelism: 2,
            exec: Vec::new(),
        };
        shadowcopy_providers::build(kind, &opts).unwrap()
    }

    pub fn writer(&self) -> Box<dyn Writer> {
        Box::new(SqliteWriter::new(SqliteOptions {
            path: self.db.clone(),
        }))
    }

    pub fn request(
        &self,
        writers: Vec<Box<dyn Writer>>,
        provider: Arc<dyn Provider>,
        deadline: Duration,
    ) -> ShadowSetRequest {
        ShadowSetRequest {
            set_name: "bank".into(),
            spec_json: "{}".into(),
            origin: Origin::Create,
            writers,
            unmanaged_components: Vec::new(),
            provider,
            freeze_deadline: deadline,
            verify: true,
            verify_base: None,
            kept_copies: Box::new(Vec::<shadowcopy_core::KeptCopy>::new()),
        }
    }

    /// Runs one shadow set; returns the result and when the freeze began.
    pub fn create(
        &self,
        request: ShadowSetRequest,
    ) -> (Result<CreatedCopy, shadowcopy_core::Error>, Option<Instant>) {
        let clock = Arc::new(FreezeClock::default());
        let result = Coordinator::new(&self.catalog, clock.clone()).create(request);
        let began = *clock.0.lock().unwrap();
        (result, began)
    }

    pub fn queue(&self) -> shadowcopy_catalog::QueueGuard {
        let me = QueueHolder {
            pid: std::process::id(),
            set: "bank".into(),
            command: "test".into(),
            since_ms: 0,
        };
        self.catalog.acquire_queue(&me, Wait::No, |_| {}).unwrap()
    }
}

#[derive(Default)]
pub struct FreezeClock(pub Mutex<Option<Instant>>);

impl EventSink for FreezeClock {
    fn phase_started(&self, phase: Phase) {
        if phase == Phase::Freeze {
            *self.0.lock().unwrap() = Some(Instant::now());
        }
    }
}

/// What a bank file (live or in a copy) holds, read from a scratch clone so the file
/// itself is not touched.
pub struct BankContent {
    pub summary: bank::BankSummary,
    pub ids: Vec<i64>,
}

pub fn read_bank(db: &Path) -> BankContent {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path().join("b.db");
    std::fs::copy(db, &s).unwrap();
    let wal = with_suffix(db, "-wal");
    if wal.exists() {
        std::fs::copy(&wal, with_suffix(&s, "-wal")).unwrap();
    }
    BankContent {
        summary: bank::summarize(&s).unwrap(),
        ids: bank::transfer_ids(&s).unwrap(),
    }
}

pub fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The database takes a write at once: nothing holds its write lock.
pub fn assert_writable(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::ZERO).unwrap();
    conn.execute_batch(
        "BEGIN IMMEDIATE; UPDATE accounts SET balance = balance WHERE id = 1; COMMIT;",
    )
    .expect("the database must be writable right after the shadow set ended");
}

pub fn file_hash(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}
