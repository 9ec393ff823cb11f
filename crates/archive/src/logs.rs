//! Logs off the host: the files of a database's log archive (PostgreSQL's WAL archive
//! directory) mirrored into the repository, each one object `logs/<stream>/<name>`,
//! sealed as it is (the WAL archive already compresses and checksums each segment), and
//! brought back into a fresh directory after the host is lost, for a roll-forward
//! restore to replay. The stream's name (a set's) is a keyed hash in the object names.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use futures_util::{stream, StreamExt, TryStreamExt};

use crate::error::ArchiveError;
use crate::repo::{Repository, PARALLEL_GETS};

/// What a push or get of logs did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LogsReport {
    pub stream: String,
    /// Files sent (or written back).
    pub copied: usize,
    /// Files the other side already held.
    pub present: usize,
    pub bytes: u64,
}

const LOGS: &str = "logs";

/// A log file's name must be a plain file name.
fn check_name(name: &str) -> Result<(), ArchiveError> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255
    {
        return Err(ArchiveError::Damaged {
            what: "the archive's logs".into(),
            why: format!("{name:?} is not a plain file name"),
        });
    }
    Ok(())
}

impl Repository {
    fn logs_dir(&self, stream: &str) -> String {
        format!("{LOGS}/{}", self.key.name(&["logs", stream]))
    }

    /// Sends the files of `files` (name, path) that `stream` does not hold yet.
    pub fn push_logs(
        &self,
        stream: &str,
        files: &[(String, PathBuf)],
    ) -> Result<LogsReport, ArchiveError> {
        let dir = self.logs_dir(stream);
        self.runtime.block_on(async {
            let held: HashSet<String> = self.store.names(&dir).await?.into_iter().collect();
            let mut report = LogsReport {
                stream: stream.to_string(),
                ..LogsReport::default()
            };
            let todo: Vec<&(String, PathBuf)> = files
                .iter()
                .filter(|(name, _)| {
                    let there = held.contains(name);
                    if there {
                        report.present += 1;
                    }
                    !there
                })
                .collect();
            for (name, _) in &todo {
                check_name(name)?;
            }
            let sent: Vec<u64> = stream::iter(todo)
                .map(|(name, path)| {
                    let dir = dir.clone();
                    async move {
                        let bytes = std::fs::OpenOptions::new()
                            .read(true)
                            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                            .open(path)
                            .and_then(|mut f| {
                                let mut v = Vec::new();
                                std::io::Read::read_to_end(&mut f, &mut v).map(|_| v)
                            })?;
                        let n = bytes.len() as u64;
                        let object = format!("{dir}/{name}");
                        let sealed = self.key.seal(&bytes, format!("log {object}").as_bytes());
                        // Written once: a log file never changes under its name.
                        self.store.put_new(&object, sealed).await?;
                        Ok::<u64, ArchiveError>(n)
                    }
                })
                .buffer_unordered(PARALLEL_GETS)
                .try_collect()
                .await?;
            report.copied = sent.len();
            report.bytes = sent.iter().sum();
            Ok(report)
        })
    }

    /// Writes every log of `stream` that `dir` lacks into it, each created exclusively
    /// (mode 0600, owned as `dir` is, so the database's own user can read it back).
    pub fn get_logs(&self, stream: &str, dir: &Path) -> Result<LogsReport, ArchiveError> {
        let from = self.logs_dir(stream);
        let owner = std::fs::metadata(dir)?;
        self.runtime.block_on(async {
            let names = self.store.names(&from).await?;
            let mut report = LogsReport {
                stream: stream.to_string(),
                ..LogsReport::default()
            };
            let mut todo = Vec::new();
            for name in names {
                check_name(&name)?;
                if dir.join(&name).exists() {
                    report.present += 1;
                } else {
                    todo.push(name);
                }
            }
            let written: Vec<u64> = stream::iter(todo)
                .map(|name| {
                    let from = from.clone();
                    let owner = &owner;
                    async move {
                        let object = format!("{from}/{name}");
                        let Some(sealed) = self.store.get(&object).await? else {
                            return Ok(0);
                        };
                        let bytes =
                            self.key
                                .open(&sealed, format!("log {object}").as_bytes(), &object)?;
                        let target = dir.join(&name);
                        let mut file = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                            .open(&target)?;
                        std::io::Write::write_all(&mut file, &bytes)?;
                        file.sync_all()?;
                        if rustix::process::geteuid().is_root() {
                            rustix::fs::fchown(
                                &file,
                                Some(rustix::fs::Uid::from_raw(owner.uid())),
                                Some(rustix::fs::Gid::from_raw(owner.gid())),
                            )
                            .map_err(std::io::Error::from)?;
                        }
                        Ok::<u64, ArchiveError>(bytes.len() as u64)
                    }
                })
                .buffer_unordered(PARALLEL_GETS)
                .try_collect()
                .await?;
            report.copied = written.len();
            report.bytes = written.iter().sum();
            Ok(report)
        })
    }
}
