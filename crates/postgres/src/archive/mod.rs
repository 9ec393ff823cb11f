//! The WAL archive: a local directory that PostgreSQL's `archive_command` pushes WAL
//! files into and `restore_command` gets them back from, and that a copy's roll-forward
//! restore replays. It behaves like pgBackRest's or WAL-G's archive for a directory:
//!
//! - **push** is idempotent: PostgreSQL retries a file after a crash, so pushing content
//!   the archive already holds under that name succeeds ([`Pushed::AlreadyArchived`]);
//!   different content under the same name is refused ([`ArchiveError::Conflict`]) and
//!   leaves the archive unchanged.
//! - **a name only ever appears complete**: a push compresses into a temp file in the
//!   archive directory, fsyncs it, renames it to its final name without replacing an
//!   existing one (`renameat2(RENAME_NOREPLACE)`, else `link` + `unlink`) and fsyncs the
//!   directory. A temp file left by a crash is never listed or read, and the next push
//!   removes it (see "Temp files").
//! - **get** tells "not archived" ([`Got::NotFound`], which PostgreSQL asks for routinely,
//!   e.g. the next segment or `00000002.history`) from failure, decompresses beside the
//!   destination, verifies the integrity record, fsyncs and renames onto the destination.
//!
//! # On-disk format
//! ```text
//! DIR/                                 mode 0700 when created here
//!   shadowcopy-wal-archive.json        {"format":1}; marks DIR as an archive (open checks it)
//!   <name>.zst                         one per archived file, mode 0600
//!   .shadowcopy-tmp-XXXXXX             a push in progress (or left by a crash)
//! ```
//! `<name>` is the WAL file name PostgreSQL passes as `%f` (a segment, `.partial`,
//! `.history` or `.backup`, see [`crate::wal`]); other names are refused. Each `<name>.zst`
//! is a valid zstd file: first a zstd *skippable frame* carrying the integrity record,
//! then one zstd frame (level 3 by default, with zstd's own content checksum) holding the
//! file. `zstd -dc NAME.zst > NAME` therefore restores a file by hand. The skippable frame:
//! ```text
//! u32 LE  0x184D2A5C        zstd skippable-frame magic
//! u32 LE  50 + n            payload length
//! [4]     "SCWA"            record magic
//! u32 LE  1                 record version
//! u64 LE  length            uncompressed length in bytes
//! [32]    BLAKE3            of the uncompressed content
//! u16 LE  n                 length of the name
//! [n]     name              the WAL file name the content was pushed as
//! ```
//! `get` checks all of it: the name (a file copied or renamed by hand under another name is
//! caught), the length and the BLAKE3 hash; zstd checks its frame checksum.
//!
//! # Temp files
//! A push holds an exclusive `flock` on its temp file while writing it. The next push
//! removes every temp file older than a minute whose lock it can take, i.e. whose writer is
//! gone; the age test covers the instant between creating a temp file and locking it.
//!
//! # Layout of the code
//! This module is the store (open, push, get, list, temp files); `record` is the
//! integrity record and the stored file's frames; `chain` follows the WAL chain over
//! timelines; `expiry` removes what no copy needs.
//!
//! # Expiry and chains
//! [`WalArchive::expire_before`] removes files the way `pg_archivecleanup` does (by the
//! log/seg part of the name, ignoring the timeline; history files are always kept), oldest
//! first, so an interrupted expiry never leaves a hole in the middle of the chain.
//! [`WalArchive::chain_from`] tells which segments a roll-forward from a given segment can
//! replay, following timeline history files the way `recovery_target_timeline = 'latest'`
//! does. Limitations: the timeline followed is the newest one whose history includes the
//! start; sibling timelines are ignored; a `.partial` file is not counted as a segment.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shadowcopy_core::ErrorKind;
use tempfile::NamedTempFile;

use crate::wal::{WalFileKind, WalFileName};

mod chain;
mod expiry;
mod record;
#[cfg(test)]
mod tests;

pub use chain::{chain_without_archive, Chain, Gap};
pub use expiry::Expired;
use record::{decode_body, open_stored, Record};

/// The file that marks a directory as a WAL archive.
pub const MARKER_FILE: &str = "shadowcopy-wal-archive.json";
/// zstd level used unless [`WalArchive::with_compression_level`] says otherwise.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

const FORMAT: u32 = 1;
const STORED_SUFFIX: &str = ".zst";
const TMP_PREFIX: &str = ".shadowcopy-tmp-";
const STALE_TMP_AGE: Duration = Duration::from_secs(60);
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5C;
const RECORD_MAGIC: &[u8; 4] = b"SCWA";
const RECORD_VERSION: u32 = 1;
/// Payload bytes before the name: magic, version, length, hash, name length.
const RECORD_FIXED: usize = 4 + 4 + 8 + 32 + 2;
const MAX_NAME: usize = 64;
const BUF: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "{} is not a shadowcopy WAL archive ({reason}); create the archive first, or point \
         --archive at the directory that holds it",
        dir.display()
    )]
    NotAnArchive { dir: PathBuf, reason: String },
    #[error(
        "the WAL archive {} has format {found}, but this shadowcopy knows only format {FORMAT}; \
         use the shadowcopy version that created it",
        dir.display()
    )]
    UnsupportedFormat { dir: PathBuf, found: u32 },
    #[error(
        "{name:?} is not a name PostgreSQL archives (a WAL segment, .partial, .history or \
         .backup file); archive_command and restore_command must pass %f as the name"
    )]
    InvalidName { name: String },
    #[error(
        "cannot create the WAL archive {}; check that its parent directory exists and is \
         writable",
        dir.display()
    )]
    Create {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot read {}, the WAL file to archive; archive_command must pass %p (PostgreSQL \
         resolves it from the data directory). PostgreSQL retries the archive_command",
        path.display()
    )]
    ReadSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot write {} in the WAL archive; check free space and that the archive directory \
         is writable by the user PostgreSQL runs as. PostgreSQL retries the archive_command \
         and keeps the WAL in pg_wal meanwhile",
        path.display()
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot read {} in the WAL archive; check that it is readable by the user running \
         shadowcopy",
        path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot remove {} from the WAL archive; check that the archive directory is writable; \
         running the expiry again resumes where it stopped",
        path.display()
    )]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the WAL archive already holds different content under the name {name} ({}); two \
         clusters may be archiving into the same directory: give each cluster its own \
         --archive directory. The archive was not changed",
        path.display()
    )]
    Conflict { name: String, path: PathBuf },
    #[error(
        "the archived file {} ({name}) is damaged: {detail}. It cannot be used for recovery; \
         move it aside and push {name} again if the cluster still has it in pg_wal, otherwise \
         take a new copy, since WAL after this point cannot be replayed",
        path.display()
    )]
    Corrupt {
        name: String,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "cannot write the restored WAL file {}; check free space where restore_command writes \
         (%p, in pg_wal). PostgreSQL retries the restore_command",
        path.display()
    )]
    Restore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// The class of the error, which decides the CLI's exit code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::NotAnArchive { .. }
            | ArchiveError::UnsupportedFormat { .. }
            | ArchiveError::InvalidName { .. } => ErrorKind::Usage,
            ArchiveError::Corrupt { .. } => ErrorKind::VerifyFailed,
            _ => ErrorKind::Failed,
        }
    }
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// The outcome of [`WalArchive::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The file was stored: `bytes_in` read, `bytes_stored` written (compressed).
    Stored { bytes_in: u64, bytes_stored: u64 },
    /// The archive already held identical content under this name (a retried push).
    AlreadyArchived,
}

/// The outcome of [`WalArchive::get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// The file was verified and written to the destination (`bytes` uncompressed).
    Restored { bytes: u64 },
    /// The archive does not hold this name; restore_command should exit 1 quietly.
    NotFound,
}

/// One file in the archive, as [`WalArchive::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArchivedFile {
    /// The WAL file name (without `.zst`).
    pub name: String,
    pub kind: WalFileKind,
    /// Bytes on disk (compressed, with the integrity record).
    pub stored_bytes: u64,
}

/// A WAL archive in a local directory. See the module documentation for the format.
#[derive(Debug, Clone)]
pub struct WalArchive {
    dir: PathBuf,
    level: i32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    format: u32,
}

impl WalArchive {
    /// Opens an existing archive; fails if `dir` is not one.
    pub fn open(dir: impl AsRef<Path>) -> Result<WalArchive> {
        let dir = dir.as_ref().to_path_buf();
        let not_archive = |reason: String| ArchiveError::NotAnArchive {
            dir: dir.clone(),
            reason,
        };
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_archive("it is not a directory".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_archive("it does not exist".into()))
            }
            Err(source) => {
                return Err(ArchiveError::Read {
                    path: dir.clone(),
                    source,
                })
            }
        }
        let marker_path = dir.join(MARKER_FILE);
        let text = match fs::read_to_string(&marker_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_archive(format!("it has no {MARKER_FILE}")))
            }
            Err(source) => {
                return Err(ArchiveError::Read {
                    path: marker_path,
                    source,
                })
            }
        };
        let marker: Marker = serde_json::from_str(&text)
            .map_err(|e| not_archive(format!("{MARKER_FILE} is not readable: {e}")))?;
        if marker.format != FORMAT {
            return Err(ArchiveError::UnsupportedFormat {
                dir,
                found: marker.format,
            });
        }
        Ok(WalArchive {
            dir,
            level: DEFAULT_COMPRESSION_LEVEL,
        })
    }

    /// Creates an archive in `dir` (created with mode 0700 if missing, parents too) and
    /// opens it. Creating an archive that already exists just opens it.
    pub fn create(dir: impl AsRef<Path>) -> Result<WalArchive> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.as_ref();
        let create_err = |source| ArchiveError::Create {
            dir: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(create_err)?;
        let marker_path = dir.join(MARKER_FILE);
        if !marker_path.exists() {
            let mut tmp = tempfile::Builder::new()
                .prefix(TMP_PREFIX)
                .tempfile_in(dir)
                .map_err(create_err)?;
            let json = serde_json::to_vec(&Marker { format: FORMAT })
                .map_err(|e| create_err(io::Error::other(e)))?;
            tmp.write_all(&json)
                .and_then(|()| tmp.as_file().sync_all())
                .map_err(create_err)?;
            match tmp.persist_noclobber(&marker_path) {
                Ok(_) => {}
                // another create won the race: its marker is as good as ours
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(create_err(e.error)),
            }
            sync_dir(dir).map_err(create_err)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                if let Err(e) = sync_dir(parent) {
                    tracing::warn!(dir = %parent.display(), error = %e, "cannot fsync the archive's parent directory");
                }
            }
        }
        WalArchive::open(dir)
    }

    /// Uses zstd level `level` for later pushes (1..=22; default 3).
    pub fn with_compression_level(mut self, level: i32) -> WalArchive {
        self.level = level;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the archive stores `name` (which need not exist).
    pub fn stored_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{STORED_SUFFIX}"))
    }

    /// Archives the file at `source` under the WAL file name `name` (archive_command's
    /// `%p` and `%f`). Idempotent for identical content; refuses different content.
    pub fn push(&self, source: &Path, name: &str) -> Result<Pushed> {
        validate_name(name)?;
        if let Err(e) = self.clean_leftovers() {
            tracing::warn!(error = %e, "cannot clean leftover temp files in the WAL archive");
        }
        let (mut tmp, record, bytes_stored) = self.compress(source, name)?;
        let final_path = self.stored_path(name);
        // Twice at most: a push racing ours may create the name between our check and rename.
        for _ in 0..2 {
            match self.inspect_existing(name, &final_path, &record)? {
                Existing::Absent => match tmp.persist_noclobber(&final_path) {
                    Ok(_) => {
                        self.sync_archive_dir()?;
                        return Ok(Pushed::Stored {
                            bytes_in: record.len,
                            bytes_stored,
                        });
                    }
                    Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => tmp = e.file,
                    Err(e) => {
                        return Err(ArchiveError::Write {
                            path: final_path,
                            source: e.error,
                        })
                    }
                },
                Existing::Same => {
                    tracing::info!(name, "WAL file already archived with identical content");
                    return Ok(Pushed::AlreadyArchived);
                }
                Existing::Different => {
                    return Err(ArchiveError::Conflict {
                        name: name.to_string(),
                        path: final_path,
                    })
                }
                Existing::DamagedSame { detail } => {
                    // The damaged file's record says it held exactly what we push: replace it.
                    tracing::warn!(name, %detail, "replacing a damaged archived file with the same content");
                    tmp.persist(&final_path).map_err(|e| ArchiveError::Write {
                        path: final_path.clone(),
                        source: e.error,
                    })?;
                    self.sync_archive_dir()?;
                    return Ok(Pushed::Stored {
                        bytes_in: record.len,
                        bytes_stored,
                    });
                }
                Existing::Damaged { detail } => {
                    return Err(ArchiveError::Corrupt {
                        name: name.to_string(),
                        path: final_path,
                        detail,
                    })
                }
            }
        }
        Err(ArchiveError::Write {
            path: final_path,
            source: io::Error::other("the name kept appearing and disappearing during the push"),
        })
    }

    /// Restores `name` to `dest` (restore_command's `%f` and `%p`), verified.
    /// [`Got::NotFound`] if the archive does not hold `name`; `dest` is then untouched.
    pub fn get(&self, name: &str, dest: &Path) -> Result<Got> {
        validate_name(name)?;
        let path = self.stored_path(name);
        let (reader, record) = match open_stored(&path, name)? {
            Some(opened) => opened,
            None => return Ok(Got::NotFound),
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let restore_err = |source| ArchiveError::Restore {
            path: dest.to_path_buf(),
            source,
        };
        let prefix = format!(
            ".{}.shadowcopy-",
            dest.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(parent)
            .map_err(restore_err)?;
        {
            let mut out = BufWriter::with_capacity(BUF, tmp.as_file());
            decode_body(reader, &record, name, &path, |chunk| {
                out.write_all(chunk).map_err(restore_err)
            })?;
            out.flush().map_err(restore_err)?;
        }
        tmp.as_file().sync_all().map_err(restore_err)?;
        tmp.persist(dest).map_err(|e| restore_err(e.error))?;
        sync_dir(parent).map_err(restore_err)?;
        Ok(Got::Restored { bytes: record.len })
    }

    /// Checks that `name` is archived intact (the same checks as [`WalArchive::get`]).
    /// `Ok(false)` if it is not archived.
    pub fn verify(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        let path = self.stored_path(name);
        match open_stored(&path, name)? {
            None => Ok(false),
            Some((reader, record)) => {
                decode_body(reader, &record, name, &path, |_| Ok(()))?;
                Ok(true)
            }
        }
    }

    /// The archived files, sorted by name. Temp files and foreign files are not listed.
    pub fn list(&self) -> Result<Vec<ArchivedFile>> {
        let read_err = |source| ArchiveError::Read {
            path: self.dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(STORED_SUFFIX))
            else {
                continue;
            };
            let Some(parsed) = WalFileName::parse(name) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                // expired by someone else since read_dir saw it
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ArchiveError::Read {
                        path: entry.path(),
                        source,
                    })
                }
            };
            if !meta.is_file() {
                continue;
            }
            files.push(ArchivedFile {
                name: name.to_string(),
                kind: parsed.kind,
                stored_bytes: meta.len(),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Removes temp files left by crashed pushes (older than a minute and not locked by a
    /// running push). Returns how many were removed. [`WalArchive::push`] calls it.
    pub fn clean_leftovers(&self) -> Result<usize> {
        let read_err = |source| ArchiveError::Read {
            path: self.dir.clone(),
            source,
        };
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .unwrap_or_default();
            if !meta.is_file() || age < STALE_TMP_AGE {
                continue;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            // a push still writing its temp file holds the lock
            let lock = rustix::fs::FlockOperation::NonBlockingLockExclusive;
            if rustix::fs::flock(&file, lock).is_err() {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a temp file left by an interrupted push");
                    removed += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(ArchiveError::Remove { path, source }),
            }
        }
        Ok(removed)
    }

    /// Compresses `source` into a locked temp file in the archive, fsynced, with its record.
    fn compress(&self, source: &Path, name: &str) -> Result<(NamedTempFile, Record, u64)> {
        let read_err = |e| ArchiveError::ReadSource {
            path: source.to_path_buf(),
            source: e,
        };
        let mut input = File::open(source).map_err(read_err)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|source| ArchiveError::Write {
                path: self.dir.clone(),
                source,
            })?;
        let tmp_path = tmp.path().to_path_buf();
        let write_err = |source| ArchiveError::Write {
            path: tmp_path.clone(),
            source,
        };
        rustix::fs::flock(
            tmp.as_file(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(|e| write_err(e.into()))?;

        let mut record = Record {
            len: 0,
            hash: blake3::Hash::from_bytes([0; 32]),
            name: name.to_string(),
        };
        let placeholder = record.encode();
        let file = tmp.as_file_mut();
        file.write_all(&placeholder).map_err(write_err)?;
        let mut encoder =
            zstd::stream::write::Encoder::new(BufWriter::with_capacity(BUF, &*file), self.level)
                .map_err(write_err)?;
        encoder.include_checksum(true).map_err(write_err)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            hasher.update(&buf[..n]);
            record.len += n as u64;
            encoder.write_all(&buf[..n]).map_err(write_err)?;
        }
        let mut out = encoder.finish().map_err(write_err)?;
        out.flush().map_err(write_err)?;
        drop(out);
        record.hash = hasher.finalize();
        let file = tmp.as_file_mut();
        file.seek(SeekFrom::Start(0)).map_err(write_err)?;
        file.write_all(&record.encode()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        let stored = file.metadata().map_err(write_err)?.len();
        Ok((tmp, record, stored))
    }

    /// What the archive holds under `name` compared with `ours`.
    fn inspect_existing(&self, name: &str, path: &Path, ours: &Record) -> Result<Existing> {
        let (reader, theirs) = match open_stored(path, name) {
            Ok(Some(opened)) => opened,
            Ok(None) => return Ok(Existing::Absent),
            Err(ArchiveError::Corrupt { detail, .. }) => return Ok(Existing::Damaged { detail }),
            Err(e) => return Err(e),
        };
        let same = theirs.len == ours.len && theirs.hash == ours.hash;
        match decode_body(reader, &theirs, name, path, |_| Ok(())) {
            Ok(()) if same => Ok(Existing::Same),
            Ok(()) => Ok(Existing::Different),
            Err(ArchiveError::Corrupt { detail, .. }) if same => {
                Ok(Existing::DamagedSame { detail })
            }
            Err(ArchiveError::Corrupt { detail, .. }) => Ok(Existing::Damaged { detail }),
            Err(e) => Err(e),
        }
    }

    fn sync_archive_dir(&self) -> Result<()> {
        sync_dir(&self.dir).map_err(|source| ArchiveError::Write {
            path: self.dir.clone(),
            source,
        })
    }
}

enum Existing {
    Absent,
    Same,
    Different,
    /// Damaged, but its record says it held the content being pushed.
    DamagedSame {
        detail: String,
    },
    Damaged {
        detail: String,
    },
}

fn validate_name(name: &str) -> Result<WalFileKind> {
    WalFileName::parse(name)
        .map(|f| f.kind)
        .ok_or_else(|| ArchiveError::InvalidName {
            name: name.to_string(),
        })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
