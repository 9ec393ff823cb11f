//! The `postgres` kind: a PostgreSQL cluster, whose writer lives in `shadowcopy-postgres`
//! (backup mode, sandbox verification, the WAL archive). Its paths come from the server:
//! discovered once when a set is resolved and recorded with every copy.

use std::path::PathBuf;

use shadowcopy_core::{BoxError, Writer};
use shadowcopy_postgres::cluster::discover_cluster;
use shadowcopy_postgres::{PostgresOptions, PostgresWriter};

use crate::kind::{KindInfo, KindRole, Normalize, WriterKind};
use crate::SetContext;

impl WriterKind for PostgresOptions {
    fn normalize_paths(&mut self, normalize: Normalize<'_>) -> Result<(), String> {
        if let Some(a) = &self.archive {
            self.archive = Some(normalize(a, "WAL archive")?);
        }
        if let Some(f) = &self.password_file {
            self.password_file = Some(normalize(f, "password file")?);
        }
        Ok(())
    }

    /// The cluster's data directory, WAL directory and tablespaces.
    fn discover(&mut self) -> Result<bool, BoxError> {
        self.layout = Some(discover_cluster(self)?);
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

    fn build(&self, _context: &SetContext) -> Box<dyn Writer> {
        Box::new(PostgresWriter::new(self.clone()))
    }
}

impl KindInfo for PostgresOptions {
    const DESCRIPTION: &'static str = "a PostgreSQL cluster: backup mode (pg_backup_start/stop), copies carry their own WAL, verified on a sandbox";
    const ROLE: KindRole = KindRole::Database;
    const ZERO_CONFIG_FLAG: Option<&'static str> = Some("--postgres");
}
