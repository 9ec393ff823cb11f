//! `shadowcopy-writers`: the built-in writers and their registry. A writer kind is one
//! module, one variant of [`WriterSpec`] (its options, as the config file spells them)
//! and one arm in [`build`].

pub mod fsfreeze;
pub mod proc_scan;
pub mod sqlite;

use serde::{Deserialize, Serialize};
use shadowcopy_core::Writer;

/// A writer as configured: `{ kind = "sqlite", path = "/srv/app.db" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WriterSpec {
    Sqlite(sqlite::SqliteOptions),
    Fsfreeze(fsfreeze::FsfreezeOptions),
}

/// The writer kinds this build knows, with one line on what each is for.
pub const KINDS: &[(&str, &str)] = &[
    (
        "sqlite",
        "a SQLite database (WAL or rollback journal): holds the write lock while frozen, readers keep running",
    ),
    (
        "fsfreeze",
        "the file systems of a set (FIFREEZE): crash-consistent copies for applications without a writer",
    ),
];

pub fn build(spec: &WriterSpec) -> Box<dyn Writer> {
    match spec {
        WriterSpec::Sqlite(o) => Box::new(sqlite::SqliteWriter::new(o.clone())),
        WriterSpec::Fsfreeze(o) => Box::new(fsfreeze::FsfreezeWriter::new(o.clone())),
    }
}

impl WriterSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            WriterSpec::Sqlite(_) => "sqlite",
            WriterSpec::Fsfreeze(_) => "fsfreeze",
        }
    }
}
