//! MariaDB's own use case: `mariadb_log_analysis`, the binary log chain after a copy
//! (in the copy, in the live binlog directory and index, and how far the set's archive
//! off the host holds it by the catalog's record), its holes and purged files, and what
//! point-in-time and roll-forward restores would reach.

use shadowcopy_mariadb::log_analysis::{self, AnalysisError, ArchiveRecord, LogAnalysis};
use shadowcopy_writers::WriterSpec;

use crate::copies::UsableCopy;
use crate::engine::Engine;
use crate::error::UsageError;

impl Engine {
    /// The binlog analysis of copy `id`, which must hold a MariaDB (or MySQL) server.
    /// Reads only: the catalog is opened read-only and no file is written.
    pub fn mariadb_log_analysis(&self, id: i64) -> anyhow::Result<LogAnalysis> {
        let catalog = self.open_catalog_read_only()?;
        let copy = UsableCopy::load(&catalog, id, "analysed")?;
        let set = &copy.summary.set;
        let Some(options) = copy.spec.writers.iter().find_map(|w| match w {
            WriterSpec::Mariadb(o) => Some(o),
            _ => None,
        }) else {
            return Err(UsageError::new(format!(
                "copy {id} (set `{set}`) holds no MariaDB server; mariadb log-analysis is for copies made with --mariadb or a set with a mariadb writer"
            ))
            .into());
        };
        let layout = options.layout.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "copy {id} was recorded without its server layout; it cannot be analysed"
            )
        })?;
        if layout.binlog.is_none() {
            return Err(UsageError::new(format!(
                "copy {id} (set `{set}`): {}",
                AnalysisError::NoBinlog
            ))
            .into());
        }
        // The set's archive off the host (config), and how far its last push-logs got.
        let archive = self.archive_url(None, Some(set)).ok().map(|url| {
            let through = catalog.logs_archived_through(set, &url);
            let (through, error) = match through {
                Ok(t) => (t, None),
                Err(e) => (None, Some(e.to_string())),
            };
            ArchiveRecord {
                // Shown, so never with a password in it.
                url: shadowcopy_core::secret::split_url(&url, false).0,
                through,
                error,
            }
        });
        let files = catalog.manifest(id)?;
        let view = copy
            .provider
            .expose(&copy.location, &files)
            .map_err(|e| anyhow::anyhow!(e).context(format!("cannot read copy {id}")))?;
        log_analysis::analyze(layout, &view, archive).map_err(|e| match e {
            // The copy cannot have a chain: bad input, as a copy of another kind is.
            AnalysisError::NoBinlog
            | AnalysisError::NoPosition
            | AnalysisError::BinlogOffAtCopy => {
                UsageError::new(format!("copy {id} (set `{set}`): {e}")).into()
            }
            e => anyhow::Error::new(e).context(format!("analysing copy {id}")),
        })
    }
}
