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
//! # Expiry and chains
//! [`WalArchive::expire_before`] removes files the way `pg_archivecleanup` does (by the
//! log/seg part of the name, ignoring the timeline; history files are always kept), oldest
//! first, so an interrupted expiry never leaves a hole in the middle of the chain.
//! [`WalArchive::chain_from`] tells which segments a roll-forward from a given segment can
//! replay, following timeline history files the way `recovery_target_timeline = 'latest'`
//! does. Limitations: the timeline followed is the newest one whose history includes the
//! start; sibling timelines are ignored; a `.partial` file is not counted as a segment.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shadowcopy_core::ErrorKind;
use tempfile::NamedTempFile;

use crate::wal::{history_file_name, Lsn, SegmentName, WalFileKind, WalFileName, WalSegSize};

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

/// What [`WalArchive::expire_before`] removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expired {
    /// WAL file names, oldest first.
    pub removed: Vec<String>,
    /// Stored bytes of those files.
    pub bytes: u64,
    pub dry_run: bool,
}

/// A range of missing segments, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub first: SegmentName,
    pub last: SegmentName,
}

/// The WAL a roll-forward from a segment can find in the archive ([`WalArchive::chain_from`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Chain {
    pub start: SegmentName,
    /// The timeline whose history was followed: the newest timeline in the archive whose
    /// history includes the start (as `recovery_target_timeline = 'latest'`), or the start's.
    pub timeline: u32,
    /// Segments present from `start` on without a hole, each on the timeline that owns it.
    pub contiguous: Vec<SegmentName>,
    /// The first segment after the contiguous run that the archive lacks: replay stops here.
    pub first_missing: SegmentName,
    /// Missing ranges followed by segments that are present (holes in the chain), in order.
    /// Empty when the archive simply ends at `first_missing`.
    pub gaps: Vec<Gap>,
    /// The newest segment on the followed timelines that the archive holds, if any.
    pub last_present: Option<SegmentName>,
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

    /// Removes the segments, `.partial` and `.backup` files whose log/seg position is
    /// before `oldest_needed` (compared like `pg_archivecleanup`, ignoring the timeline),
    /// oldest first. Timeline history files are never removed. With `dry_run`, only
    /// reports what it would remove.
    pub fn expire_before(
        &self,
        oldest_needed: &SegmentName,
        seg_size: WalSegSize,
        dry_run: bool,
    ) -> Result<Expired> {
        let boundary = oldest_needed.position(seg_size);
        let mut doomed: Vec<(crate::wal::WalPosition, ArchivedFile)> = self
            .list()?
            .into_iter()
            .filter_map(|f| {
                let parsed = WalFileName::parse(&f.name)?;
                match parsed.kind {
                    WalFileKind::TimelineHistory => None,
                    _ => parsed.position.filter(|p| *p < boundary).map(|p| (p, f)),
                }
            })
            .collect();
        doomed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let mut expired = Expired {
            dry_run,
            ..Expired::default()
        };
        for (_, file) in doomed {
            if !dry_run {
                let path = self.stored_path(&file.name);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        // keep what was removed so far durable before reporting
                        let _ = sync_dir(&self.dir);
                        return Err(ArchiveError::Remove { path, source });
                    }
                }
            }
            expired.bytes += file.stored_bytes;
            expired.removed.push(file.name);
        }
        if !dry_run && !expired.removed.is_empty() {
            sync_dir(&self.dir).map_err(|source| ArchiveError::Remove {
                path: self.dir.clone(),
                source,
            })?;
        }
        Ok(expired)
    }

    /// The segments a roll-forward starting at `start` can replay from the archive, and
    /// where the chain has holes. Follows timeline switches recorded in history files.
    pub fn chain_from(&self, start: &SegmentName, seg_size: WalSegSize) -> Result<Chain> {
        self.chain_from_with(start, seg_size, &[])
    }

    /// [`WalArchive::chain_from`] counting `elsewhere` (segments a restore also finds: in
    /// the copy, in the live WAL directory) as present too.
    pub fn chain_from_with(
        &self,
        start: &SegmentName,
        seg_size: WalSegSize,
        elsewhere: &[SegmentName],
    ) -> Result<Chain> {
        let files = self.list()?;
        let mut present: HashSet<(u32, u64)> =
            elsewhere.iter().map(|s| (s.timeline, s.segno)).collect();
        let mut history_timelines = Vec::new();
        for f in &files {
            match f.kind {
                WalFileKind::Segment => match SegmentName::parse(&f.name, seg_size) {
                    Ok(s) => {
                        present.insert((s.timeline, s.segno));
                    }
                    Err(e) => tracing::debug!(name = %f.name, error = %e, "segment ignored"),
                },
                WalFileKind::TimelineHistory => {
                    if let Some(p) = WalFileName::parse(&f.name) {
                        history_timelines.push(p.timeline);
                    }
                }
                _ => {}
            }
        }
        // The newest timeline whose history includes the start before its switch point.
        history_timelines.sort_unstable_by(|a, b| b.cmp(a));
        let mut target = start.timeline;
        let mut path = vec![TimelineEntry {
            timeline: start.timeline,
            begin_segno: 0,
        }];
        for tli in history_timelines {
            if tli < start.timeline {
                break;
            }
            let history = self.read_history(tli)?;
            if tli == start.timeline {
                path = timeline_path(tli, &history, seg_size);
                break;
            }
            let reaches = history.iter().any(|(parent, end)| {
                *parent == start.timeline && start.segno <= end.0 / seg_size.bytes()
            });
            if reaches {
                target = tli;
                path = timeline_path(tli, &history, seg_size);
                break;
            }
        }
        // Which timeline owns a segment: the newest whose begin is at or before it (what
        // PostgreSQL's XLogFileReadAnyTLI tries first).
        let owner = |segno: u64| -> u32 {
            path.iter()
                .rev()
                .find(|e| e.begin_segno <= segno)
                .map_or(target, |e| e.timeline)
        };
        let on_path: Vec<u64> = present
            .iter()
            .filter(|(tli, segno)| *segno >= start.segno && owner(*segno) == *tli)
            .map(|(_, segno)| *segno)
            .collect();
        Ok(walk_chain(start, target, on_path, owner))
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

    /// Reads timeline `tli`'s history file: (ancestor timeline, LSN where it ended), oldest
    /// first.
    fn read_history(&self, tli: u32) -> Result<Vec<(u32, Lsn)>> {
        let name = history_file_name(tli);
        let path = self.stored_path(&name);
        let Some((reader, record)) = open_stored(&path, &name)? else {
            return Ok(Vec::new());
        };
        let mut text = Vec::new();
        decode_body(reader, &record, &name, &path, |chunk| {
            text.extend_from_slice(chunk);
            Ok(())
        })?;
        let corrupt = |detail: String| ArchiveError::Corrupt {
            name: name.clone(),
            path: path.clone(),
            detail,
        };
        let text = String::from_utf8(text)
            .map_err(|_| corrupt("the timeline history is not text".into()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let parsed = match (fields.next(), fields.next()) {
                (Some(t), Some(l)) => t.parse::<u32>().ok().zip(l.parse::<Lsn>().ok()),
                _ => None,
            };
            let entry = parsed.ok_or_else(|| {
                corrupt(format!(
                    "line {} of the timeline history is not `parentTLI switchpoint reason`",
                    i + 1
                ))
            })?;
            entries.push(entry);
        }
        Ok(entries)
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

/// A timeline on the path to the followed timeline, and the segment where it begins.
/// The chain from `start` over the segment numbers present on the followed path,
/// `owner` naming the timeline of each.
fn walk_chain(
    start: &SegmentName,
    timeline: u32,
    mut on_path: Vec<u64>,
    owner: impl Fn(u64) -> u32,
) -> Chain {
    on_path.sort_unstable();
    on_path.dedup();
    let seg = |segno: u64| SegmentName {
        timeline: owner(segno),
        segno,
    };
    let mut contiguous = Vec::new();
    let mut gaps = Vec::new();
    let mut expected = start.segno;
    for segno in &on_path {
        if *segno > expected {
            gaps.push(Gap {
                first: seg(expected),
                last: seg(segno - 1),
            });
        } else if gaps.is_empty() {
            contiguous.push(seg(*segno));
        }
        expected = segno + 1;
    }
    let first_missing = match gaps.first() {
        Some(g) => g.first,
        None => seg(expected),
    };
    Chain {
        start: *start,
        timeline,
        contiguous,
        first_missing,
        gaps,
        last_present: on_path.last().map(|s| seg(*s)),
    }
}

/// The chain from `start` over `present` alone (no archive): segments of the start's
/// timeline only, since no history file says where another one branched.
pub fn chain_without_archive(start: &SegmentName, present: &[SegmentName]) -> Chain {
    let on_path = present
        .iter()
        .filter(|s| s.timeline == start.timeline && s.segno >= start.segno)
        .map(|s| s.segno)
        .collect();
    walk_chain(start, start.timeline, on_path, |_| start.timeline)
}

struct TimelineEntry {
    timeline: u32,
    begin_segno: u64,
}

/// The timelines leading to `tli` (oldest first) from its history file's entries.
fn timeline_path(tli: u32, history: &[(u32, Lsn)], seg_size: WalSegSize) -> Vec<TimelineEntry> {
    let mut path = Vec::with_capacity(history.len() + 1);
    let mut begin = 0;
    for (parent, end) in history {
        path.push(TimelineEntry {
            timeline: *parent,
            begin_segno: begin,
        });
        begin = end.0 / seg_size.bytes();
    }
    path.push(TimelineEntry {
        timeline: tli,
        begin_segno: begin,
    });
    path
}

/// The integrity record kept in the skippable frame at the start of each stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    len: u64,
    hash: blake3::Hash,
    name: String,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let payload = RECORD_FIXED + name.len();
        let mut out = Vec::with_capacity(8 + payload);
        out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&(payload as u32).to_le_bytes());
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(self.hash.as_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out
    }

    /// Reads the record from the start of `r`. `Err` holds what is wrong with it.
    fn read(r: &mut impl Read) -> io::Result<Result<Record, String>> {
        let mut head = [0u8; 8];
        if let Err(e) = r.read_exact(&mut head) {
            return eof_as_damage(e, "the file is shorter than its integrity record");
        }
        let [m0, m1, m2, m3, s0, s1, s2, s3] = head;
        if u32::from_le_bytes([m0, m1, m2, m3]) != SKIPPABLE_MAGIC {
            return Ok(Err(
                "it does not start with a shadowcopy integrity record".into()
            ));
        }
        let size = u32::from_le_bytes([s0, s1, s2, s3]) as usize;
        if !(RECORD_FIXED..=RECORD_FIXED + MAX_NAME).contains(&size) {
            return Ok(Err(format!(
                "its integrity record has a bad length ({size})"
            )));
        }
        let mut payload = vec![0u8; size];
        if let Err(e) = r.read_exact(&mut payload) {
            return eof_as_damage(e, "the file is shorter than its integrity record");
        }
        if &payload[0..4] != RECORD_MAGIC {
            return Ok(Err("its integrity record has a bad magic".into()));
        }
        let field = |range: std::ops::Range<usize>| &payload[range];
        let version = u32::from_le_bytes(field(4..8).try_into().unwrap_or_default());
        if version != RECORD_VERSION {
            return Ok(Err(format!(
                "its integrity record has version {version}, this shadowcopy knows {RECORD_VERSION}"
            )));
        }
        let len = u64::from_le_bytes(field(8..16).try_into().unwrap_or_default());
        let hash: [u8; 32] = field(16..48).try_into().unwrap_or_default();
        let name_len = u16::from_le_bytes(field(48..50).try_into().unwrap_or_default()) as usize;
        if RECORD_FIXED + name_len != size {
            return Ok(Err("its integrity record has a bad name length".into()));
        }
        let Ok(name) = String::from_utf8(field(50..size).to_vec()) else {
            return Ok(Err("its integrity record has a bad name".into()));
        };
        Ok(Ok(Record {
            len,
            hash: blake3::Hash::from_bytes(hash),
            name,
        }))
    }
}

fn eof_as_damage(e: io::Error, detail: &str) -> io::Result<Result<Record, String>> {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Ok(Err(detail.to_string()))
    } else {
        Err(e)
    }
}

/// Opens a stored file and reads its record; `None` if it does not exist. A record that
/// is damaged or belongs to another name is [`ArchiveError::Corrupt`].
fn open_stored(path: &Path, name: &str) -> Result<Option<(BufReader<File>, Record)>> {
    let read_err = |source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut reader = BufReader::with_capacity(BUF, file);
    let corrupt = |detail: String| ArchiveError::Corrupt {
        name: name.to_string(),
        path: path.to_path_buf(),
        detail,
    };
    let record = Record::read(&mut reader)
        .map_err(read_err)?
        .map_err(corrupt)?;
    if record.name != name {
        return Err(corrupt(format!(
            "it holds {}, not {name} (was it copied or renamed by hand?)",
            record.name
        )));
    }
    Ok(Some((reader, record)))
}

/// Decompresses the body of a stored file into `sink`, then checks length and BLAKE3
/// against `record`. Errors of `sink` pass through unchanged; anything wrong with the
/// stored data is [`ArchiveError::Corrupt`].
fn decode_body(
    reader: BufReader<File>,
    record: &Record,
    name: &str,
    path: &Path,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let corrupt = |detail: String| ArchiveError::Corrupt {
        name: name.to_string(),
        path: path.to_path_buf(),
        detail,
    };
    let mut decoder = zstd::stream::read::Decoder::with_buffer(reader)
        .map_err(|e| corrupt(format!("cannot start decompressing: {e}")))?;
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // zstd reports a damaged frame (and a failing disk) as an I/O error here
            Err(e) => return Err(corrupt(format!("decompression failed: {e}"))),
        };
        len += n as u64;
        if len > record.len {
            return Err(corrupt(format!(
                "it decompresses to more than the {} bytes its record says",
                record.len
            )));
        }
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
    }
    if len != record.len {
        return Err(corrupt(format!(
            "it decompresses to {len} bytes, its record says {}",
            record.len
        )));
    }
    let hash = hasher.finalize();
    if hash != record.hash {
        return Err(corrupt(format!(
            "its content has BLAKE3 {hash}, its record says {}",
            record.hash
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const MIB: usize = 1024 * 1024;
    const S16: WalSegSize = WalSegSize::DEFAULT;

    /// Deterministic content: runs of random bytes and of text-like repetition, like WAL.
    fn content(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                out.extend_from_slice(b"INSERT INTO t VALUES (42, 'shadowcopy'); ");
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    fn setup() -> (tempfile::TempDir, WalArchive) {
        let tmp = tempfile::tempdir().unwrap();
        let archive = WalArchive::create(tmp.path().join("archive")).unwrap();
        (tmp, archive)
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, data).unwrap();
        p
    }

    /// Every file in the archive directory with its content.
    fn snapshot(archive: &WalArchive) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(archive.dir())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn seg(tli: u32, segno: u64) -> SegmentName {
        SegmentName {
            timeline: tli,
            segno,
        }
    }

    fn push_seg(tmp: &Path, archive: &WalArchive, tli: u32, segno: u64) {
        let name = seg(tli, segno).file_name(S16);
        let src = write(tmp, &name, &content(4096, segno * 31 + u64::from(tli)));
        assert!(matches!(
            archive.push(&src, &name).unwrap(),
            Pushed::Stored { .. }
        ));
    }

    fn push_text(tmp: &Path, archive: &WalArchive, name: &str, text: &str) {
        let src = write(tmp, name, text.as_bytes());
        archive.push(&src, name).unwrap();
    }

    #[test]
    fn create_is_idempotent_and_open_checks_the_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        WalArchive::create(&dir).unwrap();
        WalArchive::create(&dir).unwrap();
        WalArchive::open(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );

        let err = WalArchive::open(tmp.path()).unwrap_err();
        assert!(matches!(err, ArchiveError::NotAnArchive { .. }), "{err}");
        assert!(err.to_string().contains(MARKER_FILE), "{err}");
        let err = WalArchive::open(tmp.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        fs::write(dir.join(MARKER_FILE), r#"{"format":7}"#).unwrap();
        assert!(matches!(
            WalArchive::open(&dir),
            Err(ArchiveError::UnsupportedFormat { found: 7, .. })
        ));
    }

    #[test]
    fn push_then_get_roundtrip_16mib() {
        let (tmp, archive) = setup();
        let data = content(16 * MIB, 7);
        let name = "000000010000000000000003";
        let src = write(tmp.path(), "src", &data);
        let pushed = archive.push(&src, name).unwrap();
        let Pushed::Stored {
            bytes_in,
            bytes_stored,
        } = pushed
        else {
            panic!("{pushed:?}")
        };
        assert_eq!(bytes_in, data.len() as u64);
        assert!(bytes_stored < bytes_in, "{bytes_stored} not compressed");
        assert_eq!(
            fs::metadata(archive.stored_path(name)).unwrap().len(),
            bytes_stored
        );

        let pg_wal = tmp.path().join("pg_wal");
        fs::create_dir(&pg_wal).unwrap();
        let dest = pg_wal.join("RECOVERYXLOG");
        fs::write(&dest, b"stale").unwrap();
        assert_eq!(
            archive.get(name, &dest).unwrap(),
            Got::Restored {
                bytes: data.len() as u64
            }
        );
        assert!(fs::read(&dest).unwrap() == data, "restored content differs");
        // nothing but the destination is left in pg_wal
        assert_eq!(fs::read_dir(&pg_wal).unwrap().count(), 1);
        assert!(archive.verify(name).unwrap());

        let listed = archive.list().unwrap();
        assert_eq!(
            listed,
            vec![ArchivedFile {
                name: name.into(),
                kind: WalFileKind::Segment,
                stored_bytes: bytes_stored
            }]
        );
    }

    #[test]
    fn stored_file_is_plain_zstd() {
        let (tmp, archive) = setup();
        let data = content(100_000, 3);
        let src = write(tmp.path(), "src", &data);
        archive.push(&src, "00000001.history").unwrap();
        let stored = fs::read(archive.stored_path("00000001.history")).unwrap();
        // the standard decoder skips the skippable frame holding the record
        assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), data);
    }

    #[test]
    fn repush_identical_is_idempotent() {
        let (tmp, archive) = setup();
        let name = "000000010000000000000004";
        let src = write(tmp.path(), "src", &content(MIB, 1));
        archive.push(&src, name).unwrap();
        let before = snapshot(&archive);
        assert_eq!(archive.push(&src, name).unwrap(), Pushed::AlreadyArchived);
        assert_eq!(snapshot(&archive), before);
    }

    #[test]
    fn conflicting_content_is_refused_and_changes_nothing() {
        let (tmp, archive) = setup();
        let name = "000000010000000000000004";
        let a = write(tmp.path(), "a", &content(MIB, 1));
        let b = write(tmp.path(), "b", &content(MIB, 2));
        archive.push(&a, name).unwrap();
        let before = snapshot(&archive);
        let err = archive.push(&b, name).unwrap_err();
        assert!(matches!(err, ArchiveError::Conflict { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains("different content"), "{msg}");
        assert!(msg.contains("own --archive directory"), "{msg}");
        assert_eq!(snapshot(&archive), before, "the archive changed");
        let dest = tmp.path().join("out");
        archive.get(name, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), content(MIB, 1));
    }

    #[test]
    fn get_missing_is_not_found_and_leaves_dest_alone() {
        let (tmp, archive) = setup();
        let dest = tmp.path().join("RECOVERYHISTORY");
        assert_eq!(
            archive.get("00000002.history", &dest).unwrap(),
            Got::NotFound
        );
        assert!(!dest.exists());
        assert!(!archive.verify("000000010000000000000009").unwrap());
    }

    #[test]
    fn invalid_names_are_refused() {
        let (tmp, archive) = setup();
        let src = write(tmp.path(), "src", b"x");
        for bad in ["../000000010000000000000003", "RECOVERYXLOG", "", "a.zst"] {
            assert!(matches!(
                archive.push(&src, bad),
                Err(ArchiveError::InvalidName { .. })
            ));
            assert!(matches!(
                archive.get(bad, &tmp.path().join("d")),
                Err(ArchiveError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn missing_source_names_it() {
        let (tmp, archive) = setup();
        let err = archive
            .push(&tmp.path().join("pg_wal/nope"), "000000010000000000000003")
            .unwrap_err();
        assert!(matches!(err, ArchiveError::ReadSource { .. }));
        assert!(err.to_string().contains("pg_wal/nope"), "{err}");
        assert!(archive.list().unwrap().is_empty());
    }

    #[test]
    fn corrupt_stored_file_is_detected_on_get() {
        let (tmp, archive) = setup();
        let name = "000000010000000000000005";
        let src = write(tmp.path(), "src", &content(2 * MIB, 5));
        archive.push(&src, name).unwrap();
        let stored = archive.stored_path(name);
        let good = fs::read(&stored).unwrap();
        let dest = tmp.path().join("dest");

        // a flipped byte in the compressed body
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        fs::write(&stored, &bad).unwrap();
        let err = archive.get(name, &dest).unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&stored.display().to_string()),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::VerifyFailed);
        assert!(!dest.exists(), "a damaged file reached the destination");
        assert!(fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("shadowcopy-")));

        // a truncated file
        fs::write(&stored, &good[..good.len() - 100]).unwrap();
        assert!(matches!(
            archive.get(name, &dest),
            Err(ArchiveError::Corrupt { .. })
        ));
        // a damaged record (the stored length)
        let mut bad = good.clone();
        bad[8 + 8] ^= 1;
        fs::write(&stored, &bad).unwrap();
        assert!(matches!(
            archive.get(name, &dest),
            Err(ArchiveError::Corrupt { .. })
        ));
        // an intact file under another name
        fs::write(&stored, &good).unwrap();
        fs::copy(&stored, archive.stored_path("000000010000000000000006")).unwrap();
        let err = archive.get("000000010000000000000006", &dest).unwrap_err();
        assert!(
            err.to_string().contains("not 000000010000000000000006"),
            "{err}"
        );
        assert!(!dest.exists());
        assert!(archive.verify(name).unwrap());
    }

    #[test]
    fn content_not_matching_its_record_is_detected() {
        // intact zstd (its own checksum passes) but not what the record describes
        let (tmp, archive) = setup();
        let (x, y) = ("000000010000000000000007", "000000010000000000000008");
        archive
            .push(&write(tmp.path(), "x", &content(MIB, 7)), x)
            .unwrap();
        archive
            .push(&write(tmp.path(), "y", &content(MIB, 8)), y)
            .unwrap();
        let stored_x = fs::read(archive.stored_path(x)).unwrap();
        let stored_y = fs::read(archive.stored_path(y)).unwrap();
        let header = 8 + RECORD_FIXED + x.len();
        let mut forged = stored_x[..header].to_vec();
        forged.extend_from_slice(&stored_y[header..]);
        fs::write(archive.stored_path(x), forged).unwrap();
        let dest = tmp.path().join("dest");
        let err = archive.get(x, &dest).unwrap_err();
        assert!(err.to_string().contains("BLAKE3"), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn repush_repairs_a_damaged_copy_of_the_same_content() {
        let (tmp, archive) = setup();
        let name = "000000010000000000000005";
        let data = content(MIB, 5);
        let src = write(tmp.path(), "src", &data);
        archive.push(&src, name).unwrap();
        let stored = archive.stored_path(name);
        let mut bad = fs::read(&stored).unwrap();
        let last = bad.len() - 10;
        bad[last] ^= 0xFF;
        fs::write(&stored, &bad).unwrap();
        assert!(archive.verify(name).is_err());
        // different content against a damaged file: refused, file untouched
        let other = write(tmp.path(), "other", &content(MIB, 6));
        assert!(matches!(
            archive.push(&other, name),
            Err(ArchiveError::Corrupt { .. })
        ));
        assert_eq!(fs::read(&stored).unwrap(), bad);
        // the same content: replaced
        assert!(matches!(
            archive.push(&src, name).unwrap(),
            Pushed::Stored { .. }
        ));
        assert!(archive.verify(name).unwrap());
    }

    #[test]
    fn temp_leftovers_are_ignored_and_cleaned() {
        let (tmp, archive) = setup();
        let stale = archive.dir().join(format!("{TMP_PREFIX}crashed"));
        let fresh = archive.dir().join(format!("{TMP_PREFIX}running"));
        let locked = archive.dir().join(format!("{TMP_PREFIX}locked"));
        let old = SystemTime::now() - Duration::from_secs(3600);
        for p in [&stale, &fresh, &locked] {
            fs::write(p, b"half a segment").unwrap();
        }
        for p in [&stale, &locked] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        // a live push holds the lock on its temp file
        let holder = File::open(&locked).unwrap();
        rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
        // a foreign file that merely looks like a segment without .zst
        fs::write(archive.dir().join("000000010000000000000001"), b"x").unwrap();

        assert!(archive.list().unwrap().is_empty(), "a leftover was listed");
        assert_eq!(
            archive
                .get("000000010000000000000001", &tmp.path().join("d"))
                .unwrap(),
            Got::NotFound
        );
        push_seg(tmp.path(), &archive, 1, 1);
        assert!(
            !stale.exists(),
            "the crashed push's temp file is still there"
        );
        assert!(fresh.exists(), "a recent temp file was removed");
        assert!(locked.exists(), "a locked temp file was removed");
        drop(holder);
        assert_eq!(archive.clean_leftovers().unwrap(), 1);
        assert!(!locked.exists());
        assert_eq!(archive.list().unwrap().len(), 1);
    }

    #[test]
    fn expire_keeps_history_and_everything_from_the_boundary() {
        let (tmp, archive) = setup();
        for segno in 1..=6 {
            push_seg(tmp.path(), &archive, 1, segno);
        }
        // timeline 2 branched in segment 4; old timeline's segment 4 became .partial
        for segno in 4..=7 {
            push_seg(tmp.path(), &archive, 2, segno);
        }
        let p = tmp.path();
        push_text(p, &archive, "000000010000000000000004.partial", "partial");
        push_text(
            p,
            &archive,
            "00000002.history",
            "1\t0/4000100\tno recovery target specified\n",
        );
        push_text(
            p,
            &archive,
            "000000010000000000000002.00000028.backup",
            "START WAL LOCATION",
        );
        push_text(
            p,
            &archive,
            "000000020000000000000005.00000060.backup",
            "START WAL LOCATION",
        );
        let all = archive.list().unwrap();

        let boundary = seg(2, 5);
        let dry = archive.expire_before(&boundary, S16, true).unwrap();
        assert!(dry.dry_run);
        assert_eq!(archive.list().unwrap(), all, "dry run removed something");

        let expired = archive.expire_before(&boundary, S16, false).unwrap();
        assert_eq!(expired.removed, dry.removed);
        assert_eq!(expired.bytes, dry.bytes);
        assert_eq!(
            expired.removed,
            vec![
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000004.partial",
                "000000020000000000000004",
            ]
        );
        let removed_bytes: u64 = all
            .iter()
            .filter(|f| expired.removed.contains(&f.name))
            .map(|f| f.stored_bytes)
            .sum();
        assert_eq!(expired.bytes, removed_bytes);
        let left: Vec<String> = archive
            .list()
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(
            left,
            vec![
                "000000010000000000000005",
                "000000010000000000000006",
                "00000002.history",
                "000000020000000000000005",
                "000000020000000000000005.00000060.backup",
                "000000020000000000000006",
                "000000020000000000000007",
            ]
        );
        // nothing more to do at the same boundary
        assert!(archive
            .expire_before(&boundary, S16, false)
            .unwrap()
            .removed
            .is_empty());
    }

    #[test]
    fn chain_on_one_timeline_finds_run_and_gaps() {
        let (tmp, archive) = setup();
        for segno in [3, 4, 5, 8, 9, 12] {
            push_seg(tmp.path(), &archive, 1, segno);
        }
        push_seg(tmp.path(), &archive, 3, 6); // an unrelated timeline
        let chain = archive.chain_from(&seg(1, 3), S16).unwrap();
        assert_eq!(chain.timeline, 1);
        assert_eq!(chain.contiguous, vec![seg(1, 3), seg(1, 4), seg(1, 5)]);
        assert_eq!(chain.first_missing, seg(1, 6));
        assert_eq!(
            chain.gaps,
            vec![
                Gap {
                    first: seg(1, 6),
                    last: seg(1, 7)
                },
                Gap {
                    first: seg(1, 10),
                    last: seg(1, 11)
                }
            ]
        );
        assert_eq!(chain.last_present, Some(seg(1, 12)));

        // starting on a missing segment: nothing replayable
        let chain = archive.chain_from(&seg(1, 2), S16).unwrap();
        assert!(chain.contiguous.is_empty());
        assert_eq!(chain.first_missing, seg(1, 2));
        assert_eq!(
            chain.gaps[0],
            Gap {
                first: seg(1, 2),
                last: seg(1, 2)
            }
        );

        // a complete run ends without gaps
        let chain = archive.chain_from(&seg(1, 12), S16).unwrap();
        assert_eq!(chain.contiguous, vec![seg(1, 12)]);
        assert_eq!(chain.first_missing, seg(1, 13));
        assert!(chain.gaps.is_empty());
    }

    #[test]
    fn chain_follows_timeline_switches() {
        let (tmp, archive) = setup();
        for segno in 1..=5 {
            push_seg(tmp.path(), &archive, 1, segno); // 4 and 5: old primary kept going
        }
        for segno in 4..=6 {
            push_seg(tmp.path(), &archive, 2, segno);
        }
        for segno in [6, 7, 9] {
            push_seg(tmp.path(), &archive, 3, segno);
        }
        let p = tmp.path();
        push_text(
            p,
            &archive,
            "00000002.history",
            "1\t0/4000100\tno recovery target specified\n",
        );
        push_text(
            p,
            &archive,
            "00000003.history",
            "1\t0/4000100\tno recovery target specified\n\n2\t0/6000000\tat restore point\n",
        );
        // a sibling of timeline 2 that branched from timeline 1 before our start
        push_text(
            p,
            &archive,
            "00000004.history",
            "1\t0/1000000\tno recovery target specified\n",
        );
        push_seg(tmp.path(), &archive, 4, 2);

        let chain = archive.chain_from(&seg(1, 2), S16).unwrap();
        assert_eq!(chain.timeline, 3);
        assert_eq!(
            chain.contiguous,
            vec![
                seg(1, 2),
                seg(1, 3),
                seg(2, 4),
                seg(2, 5),
                seg(3, 6),
                seg(3, 7)
            ]
        );
        assert_eq!(chain.first_missing, seg(3, 8));
        assert_eq!(
            chain.gaps,
            vec![Gap {
                first: seg(3, 8),
                last: seg(3, 8)
            }]
        );
        assert_eq!(chain.last_present, Some(seg(3, 9)));

        // after the switch point of timeline 1 the chain cannot follow timeline 2
        let chain = archive.chain_from(&seg(1, 5), S16).unwrap();
        assert_eq!(chain.timeline, 1);
        assert_eq!(chain.contiguous, vec![seg(1, 5)]);

        // a damaged history file is reported, not silently ignored
        let h = archive.stored_path("00000003.history");
        let mut bytes = fs::read(&h).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0xFF;
        fs::write(&h, bytes).unwrap();
        assert!(matches!(
            archive.chain_from(&seg(1, 2), S16),
            Err(ArchiveError::Corrupt { .. })
        ));
    }

    #[test]
    fn chain_uses_the_start_timelines_own_history() {
        let (tmp, archive) = setup();
        push_seg(tmp.path(), &archive, 1, 3);
        push_seg(tmp.path(), &archive, 2, 4);
        push_seg(tmp.path(), &archive, 2, 5);
        push_text(
            tmp.path(),
            &archive,
            "00000002.history",
            "1\t0/4000000\tpromoted\n",
        );
        // starting on timeline 2 before it began: its history says timeline 1 owns segment 3
        let chain = archive.chain_from(&seg(2, 3), S16).unwrap();
        assert_eq!(chain.timeline, 2);
        assert_eq!(chain.contiguous, vec![seg(1, 3), seg(2, 4), seg(2, 5)]);
        assert_eq!(chain.first_missing, seg(2, 6));
    }
}
