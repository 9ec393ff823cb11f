//! PostgreSQL's own use case: `log_analysis`, what WAL a copy's restores would find (in
//! the copy, the archive, the live `pg_wal`) and where the chain has holes.

use shadowcopy_postgres::log_analysis::{self, LogAnalysis};
use shadowcopy_writers::WriterSpec;

use crate::copies::UsableCopy;
use crate::engine::Engine;
use crate::error::UsageError;

impl Engine {
    /// The WAL analysis of copy `id`, which must hold a PostgreSQL cluster. Reads only.
    pub fn pg_log_analysis(&self, id: i64) -> anyhow::Result<LogAnalysis> {
        let catalog = self.open_catalog_read_only()?;
        let copy = UsableCopy::load(&catalog, id, "analysed")?;
        let Some(options) = copy.spec.writers.iter().find_map(|w| match w {
            WriterSpec::Postgres(o) => Some(o),
            _ => None,
        }) else {
            return Err(UsageError::new(format!(
                "copy {id} (set `{}`) holds no PostgreSQL cluster; log-analysis is for copies made with --postgres or a set of kind postgres",
                copy.summary.set
            ))
            .into());
        };
        let layout = options.layout.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "copy {id} was recorded without its cluster layout; it cannot be analysed"
            )
        })?;
        let files = catalog.manifest(id)?;
        let view = copy
            .provider
            .expose(&copy.location, &files)
            .map_err(|e| anyhow::anyhow!(e).context(format!("cannot read copy {id}")))?;
        Ok(log_analysis::analyze(
            layout,
            options.archive.as_deref(),
            &view,
        )?)
    }
}
