//! The `mariadb` kind (alias `mysql`): a MariaDB or MySQL server, whose writer lives in
//! `shadowcopy-mariadb` (BACKUP STAGE freeze, binlog positions, sandbox verification).
//! Its paths come from the server: discovered once when a set is resolved and recorded
//! with every copy.

use std::path::PathBuf;

use shadowcopy_core::{BoxError, Writer};
use shadowcopy_mariadb::server::discover_server;
use shadowcopy_mariadb::writer::warn_non_transactional;
use shadowcopy_mariadb::{MariaDbOptions, MariaDbWriter};

use crate::kind::{KindInfo, KindRole, Normalize, WriterKind};
use crate::SetContext;

impl WriterKind for MariaDbOptions {
    fn normalize_paths(&mut self, normalize: Normalize<'_>) -> Result<(), String> {
        if let Some(f) = &self.password_file {
            self.password_file = Some(normalize(f, "password file")?);
        }
        Ok(())
    }

    /// The server's data, redo, undo and binlog directories, flavour, version and
    /// engines in use (tables in non-transactional engines are warned of here).
    fn discover(&mut self) -> Result<bool, BoxError> {
        let layout = discover_server(self)?;
        warn_non_transactional(self, &layout);
        self.layout = Some(layout);
        Ok(true)
    }

    fn discovered(&self) -> Option<serde_json::Value> {
        self.layout
            .as_ref()
            .and_then(|l| serde_json::to_value(l).ok())
    }

    fn data_paths(&self) -> Vec<PathBuf> {
        self.layout.iter().flat_map(|l| l.paths()).collect()
    }

    fn forget_credentials(&mut self) {
        self.password_file = None;
    }

    /// One snapshot of every file needs no check of InnoDB's background writes.
    fn set_atomic_snapshot(&mut self, atomic: bool) {
        self.atomic_snapshot = atomic;
    }

    fn build(&self, _context: &SetContext) -> Box<dyn Writer> {
        Box::new(MariaDbWriter::new(self.clone()))
    }
}

impl KindInfo for MariaDbOptions {
    const DESCRIPTION: &'static str = "a MariaDB (or MySQL) server: BACKUP STAGE freeze, binlog position in each copy, verified on a sandbox, binlogs purged, roll-forward";
    const ROLE: KindRole = KindRole::Database;
    const ZERO_CONFIG_FLAG: Option<&'static str> = Some("--mariadb");
}
