//! A set's logs to and from its archive off the host: PostgreSQL's WAL archive directory,
//! or MariaDB's closed binary logs. After a push, how far the archive holds them is
//! recorded in the catalog (log truncation never goes past it); after the host was lost,
//! they are written back where a roll-forward reads them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use shadowcopy_archive::{LogsReport, Repository};
use shadowcopy_core::secret::Secret;
use shadowcopy_mariadb::binlog_files;
use shadowcopy_mariadb::server::BinlogLayout;
use shadowcopy_mariadb::MariaDbOptions;
use shadowcopy_writers::WriterSpec;

use crate::engine::Engine;
use crate::error::UsageError;
use crate::set::SetSpec;

/// Where a set's logs are on this host.
pub enum SetLogs {
    /// PostgreSQL: its WAL archive directory.
    Wal(PathBuf),
    /// MariaDB: the server's binary logs (its writer, as the config or the newest copy
    /// has it).
    Binlogs(Box<MariaDbOptions>),
}

impl Engine {
    /// The writers of set `set`: the config's, else those its newest copy recorded.
    fn writers_of(&self, set: &str) -> Vec<WriterSpec> {
        if let Some(s) = self.config.sets.get(set) {
            return s.writers.clone();
        }
        self.newest_specs(set)
            .next()
            .map(|s| s.writers)
            .unwrap_or_default()
    }

    /// The specs set `set`'s local copies recorded, newest first.
    fn newest_specs(&self, set: &str) -> impl Iterator<Item = SetSpec> {
        self.list(Some(set))
            .unwrap_or_default()
            .into_iter()
            .rev()
            .filter_map(|c| SetSpec::from_json(&c.spec_json).ok())
    }

    /// Where set `set`'s logs are: the WAL archive `dir` when given, else its PostgreSQL
    /// writer's `archive` (in the config, else as its newest copy recorded it), else its
    /// MariaDB writer's binary logs.
    pub fn logs_of(&self, set: &str, dir: Option<&Path>) -> anyhow::Result<SetLogs> {
        if let Some(dir) = dir {
            return Ok(SetLogs::Wal(dir.to_path_buf()));
        }
        let wal = |writers: &[WriterSpec]| {
            writers.iter().find_map(|w| match w {
                WriterSpec::Postgres(o) => o.archive.clone(),
                _ => None,
            })
        };
        let configured = self.config.sets.get(set).map(|s| s.writers.clone());
        if let Some(found) = configured.as_deref().and_then(wal) {
            return Ok(SetLogs::Wal(found));
        }
        if let Some(found) = self.newest_specs(set).find_map(|s| wal(&s.writers)) {
            return Ok(SetLogs::Wal(found));
        }
        let mariadb = self.writers_of(set).into_iter().find_map(|w| match w {
            WriterSpec::Mariadb(o) => Some(o),
            _ => None,
        });
        if let Some(o) = mariadb {
            return Ok(SetLogs::Binlogs(Box::new(o)));
        }
        Err(UsageError::new(format!(
            "set `{set}` has no logs to archive: neither a WAL archive (a postgres writer's \
             `archive`, or create --pg-archive; or give --dir DIR) nor a mariadb writer"
        ))
        .into())
    }

    /// Sends what the repository lacks of set `set`'s logs: the files of its WAL
    /// archive, or the binary logs its server has closed. Then records in the catalog
    /// how far the archive holds them.
    pub fn archive_push_logs(
        &self,
        url: &str,
        passphrase: &Secret,
        set: &str,
        dir: Option<&Path>,
    ) -> anyhow::Result<LogsReport> {
        let repo = Repository::open(url, passphrase.expose().as_bytes())?;
        self.push_logs_to(&repo, set, dir)
    }

    /// As [`Engine::archive_push_logs`], to a repository already open (the agent keeps
    /// it open between pushes: opening it derives the key, a quarter second of CPU and
    /// 64 MiB).
    pub fn push_logs_to(
        &self,
        repo: &Repository,
        set: &str,
        dir: Option<&Path>,
    ) -> anyhow::Result<LogsReport> {
        let url = repo.url();
        let LogFiles { files, newest } = match self.logs_of(set, dir)? {
            SetLogs::Wal(dir) => wal_files(&dir)?,
            SetLogs::Binlogs(o) => {
                let closed = match binlog_files::closed_binlogs(&o) {
                    Err(binlog_files::BinlogFilesError::NoBinlog(url)) => {
                        return Err(UsageError::new(format!(
                            "set `{set}` has no logs to archive: the server at {url} writes no \
                             binary log (log_bin is off)"
                        ))
                        .into())
                    }
                    closed => closed?,
                };
                let files: Vec<(String, PathBuf)> = closed
                    .files
                    .iter()
                    .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p.clone())))
                    .collect();
                let newest = files.last().map(|(name, _)| name.clone());
                LogFiles { files, newest }
            }
        };
        let report = repo.push_logs(set, &files)?;
        // Every file listed is in the archive now: log truncation may go up to the
        // newest among them.
        if let Some(newest) = newest {
            let recorded = self
                .open_existing_catalog()
                .and_then(|c| Ok(c.record_logs_archived(set, url, &newest)?));
            if let Err(e) = recorded {
                tracing::warn!(
                    "the catalog does not know that the archive holds set `{set}`'s logs \
                     through {newest}, so log truncation keeps them on this host: {e:#}"
                );
            }
        }
        Ok(report)
    }

    /// Writes set `set`'s archived logs back, for a roll-forward restore after the host
    /// was lost: WAL into its WAL archive directory (made if missing), binary logs into
    /// the directory the set's copies recorded, with the server's index written again.
    pub fn archive_get_logs(
        &self,
        url: &str,
        passphrase: &Secret,
        set: &str,
        dir: Option<&Path>,
    ) -> anyhow::Result<LogsReport> {
        let repo = Repository::open(url, passphrase.expose().as_bytes())?;
        match self.logs_of(set, dir) {
            Ok(SetLogs::Wal(dir)) => get_wal(&repo, set, &dir),
            Ok(SetLogs::Binlogs(_)) | Err(_) => {
                let binlog = self.recorded_binlog_layout(set, &repo)?;
                let exists = std::fs::metadata(&binlog.dir).map(|m| m.is_dir());
                if !matches!(exists, Ok(true)) {
                    return Err(UsageError::new(format!(
                        "the binary log directory {} is missing; make it, owned by the server's \
                         user (as it was), then get the logs again",
                        binlog.dir.display()
                    ))
                    .into());
                }
                let report = repo.get_logs(set, &binlog.dir)?;
                binlog_files::write_index(&binlog)?;
                Ok(report)
            }
        }
    }

    /// Where set `set`'s binary logs were, as its newest local copy recorded it, else its
    /// newest archived copy (a new host has no catalog).
    fn recorded_binlog_layout(&self, set: &str, repo: &Repository) -> anyhow::Result<BinlogLayout> {
        let binlog = |spec: &SetSpec| {
            spec.writers.iter().find_map(|w| match w {
                WriterSpec::Mariadb(o) => o.layout.as_ref()?.binlog.clone(),
                _ => None,
            })
        };
        if let Some(found) = self.newest_specs(set).find_map(|s| binlog(&s)) {
            return Ok(found);
        }
        let mut archived: Vec<_> = repo.list()?.into_iter().filter(|c| c.set == set).collect();
        archived.sort_by_key(|c| std::cmp::Reverse(c.created_ms));
        for copy in archived {
            let (_, manifest) = repo.manifest(&copy.id)?;
            let spec: Option<SetSpec> = serde_json::from_value(manifest.spec).ok();
            if let Some(found) = spec.as_ref().and_then(binlog) {
                return Ok(found);
            }
        }
        Err(UsageError::new(format!(
            "set `{set}` has no logs to get: no copy of it, here or in the archive, records a \
             WAL archive (give --dir DIR) or a MariaDB server's binary logs"
        ))
        .into())
    }
}

/// A set's log files to send: (object name, path), and the newest of them (what the
/// catalog records as held by the archive once they are sent).
struct LogFiles {
    files: Vec<(String, PathBuf)>,
    newest: Option<String>,
}

/// The files of the WAL archive in `dir`, and its newest segment.
fn wal_files(dir: &Path) -> anyhow::Result<LogFiles> {
    let wal = shadowcopy_postgres::archive::WalArchive::open(dir)?;
    let listed = wal.list()?;
    let files = listed
        .iter()
        .filter_map(|f| {
            let path = wal.stored_path(&f.name);
            let name = path.file_name()?.to_str()?.to_string();
            Some((name, path))
        })
        .collect();
    // By position, whatever the timeline: what truncation compares.
    let newest = listed
        .iter()
        .filter(|f| f.kind == shadowcopy_postgres::wal::WalFileKind::Segment)
        .map(|f| f.name.as_str())
        .max_by_key(|name| (&name[8..], &name[..8]))
        .map(str::to_string);
    Ok(LogFiles { files, newest })
}

/// Writes the archived WAL of `set` into the WAL archive `dir`.
fn get_wal(repo: &Repository, set: &str, dir: &Path) -> anyhow::Result<LogsReport> {
    let owner = std::fs::metadata(dir).map_err(|e| {
        UsageError::new(format!(
            "the WAL archive directory {} cannot be used ({e}); make it, owned by the database's user \
             (as `shadowcopy pg setup URL --archive DIR --apply` does), then get the logs again",
            dir.display()
        ))
    })?;
    shadowcopy_postgres::archive::WalArchive::create(dir)?;
    // The marker as the directory's owner has it: the server's user reads it back.
    let marker = dir.join(shadowcopy_postgres::archive::MARKER_FILE);
    if rustix::process::geteuid().is_root() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            &marker,
            Some(rustix::fs::Uid::from_raw(owner.uid())),
            Some(rustix::fs::Gid::from_raw(owner.gid())),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(repo.get_logs(set, dir)?)
}
