//! `shadowcopy-writers`: the built-in writers and their registry. A writer kind is one
//! module, one variant of [`WriterSpec`] (its options, as the config file spells them)
//! and one arm in [`build`].

pub mod exec;
pub mod fsfreeze;
pub mod proc_scan;
pub mod sqlite;
pub mod watchdog;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shadowcopy_core::Writer;

/// What a writer may know of the set it serves (hooks pass it to their scripts).
#[derive(Clone, Debug, Default)]
pub struct SetContext {
    pub set_name: String,
    pub data_paths: Vec<PathBuf>,
}

/// A duration written the way people write them: `10s`, `500ms`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write it like \"10s\" or \"500ms\""
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A writer as configured: `{ kind = "sqlite", path = "/srv/app.db" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WriterSpec {
    Sqlite(sqlite::SqliteOptions),
    Fsfreeze(fsfreeze::FsfreezeOptions),
    Exec(exec::ExecOptions),
    Postgres(shadowcopy_postgres::PostgresOptions),
    #[serde(alias = "mysql")]
    Mariadb(shadowcopy_mariadb::MariaDbOptions),
}

/// The writer kinds this build knows, with one line on what each is for.
pub const KINDS: &[(&str, &str)] = &[
    (
        "sqlite",
        "a SQLite database (WAL or rollback journal): holds the write lock while frozen, readers keep running",
    ),
    (
        "postgres",
        "a PostgreSQL cluster: backup mode (pg_backup_start/stop), copies carry their own WAL, verified on a sandbox",
    ),
    (
        "mariadb",
        "a MariaDB (or MySQL) server: BACKUP STAGE freeze, binlog position in each copy, verified on a sandbox, binlogs purged, roll-forward",
    ),
    (
        "exec",
        "a hook script called with each event (qemu fsfreeze-hook convention: freeze/thaw as $1, exit 0 = ok)",
    ),
    (
        "fsfreeze",
        "the file systems of a set (FIFREEZE): crash-consistent copies for applications without a writer",
    ),
];

pub fn build(spec: &WriterSpec, context: &SetContext) -> Box<dyn Writer> {
    match spec {
        WriterSpec::Sqlite(o) => Box::new(sqlite::SqliteWriter::new(o.clone())),
        WriterSpec::Fsfreeze(o) => Box::new(fsfreeze::FsfreezeWriter::new(o.clone())),
        WriterSpec::Exec(o) => Box::new(exec::ExecWriter::new(o.clone(), context.clone())),
        WriterSpec::Postgres(o) => Box::new(shadowcopy_postgres::PostgresWriter::new(o.clone())),
        WriterSpec::Mariadb(o) => Box::new(shadowcopy_mariadb::MariaDbWriter::new(o.clone())),
    }
}

impl WriterSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            WriterSpec::Sqlite(_) => "sqlite",
            WriterSpec::Fsfreeze(_) => "fsfreeze",
            WriterSpec::Exec(_) => "exec",
            WriterSpec::Postgres(_) => "postgres",
            WriterSpec::Mariadb(_) => "mariadb",
        }
    }
}
