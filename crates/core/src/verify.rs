//! Verification of a copy: the content hashes of its files (recorded the first time,
//! compared on every later check) and each writer's own integrity check of the copy.
//!
//! Files are hashed by a bounded pool (one worker per CPU, at most one per file) that
//! takes them in order: a copy of 40,000 files starts as many threads as one of four.
//! A file of the copy is opened without following a symlink in its last component and
//! must be a regular file: a link or a FIFO put in its place is reported, never read.
//!
//! Incremental: built on a verified copy of the same set (a [`VerifyBase`]), a file's
//! blocks that are that copy's blocks ([`crate::extents`]) are not read again, their
//! leaf hashes taken as recorded ([`crate::leaf_hash`]), and each writer checks only
//! what changed. What sharing promises is trusted: damage under blocks two copies
//! share is found by a full verification (the engine runs one on a schedule).

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustix::fs::{FileType, Mode, OFlags};

use crate::error::error_chain;
use crate::error::Error;
use crate::events::EventSink;
use crate::extents::{complement, shared_ranges};
use crate::leaf_hash::{hash_file, FileHash, LeafHashes, Reuse};
use crate::model::{Changes, CopyId, CopyView, FileEntry, Phase, VerifyReport};
use crate::writer::Writer;

use serde::Serialize;

/// A verified copy of the same set that a verification builds on: where its files are
/// and the leaf hashes recorded when it was verified (by original path).
#[derive(Clone, Debug)]
pub struct VerifyBase {
    pub copy: CopyId,
    pub view: CopyView,
    pub leaves: HashMap<PathBuf, LeafHashes>,
}

/// What a verification found and what to record for the next one.
#[derive(Clone, Debug)]
pub struct Verification {
    pub report: VerifyReport,
    /// The leaf hashes of the copy's files, by original path.
    pub leaves: Vec<(PathBuf, LeafHashes)>,
    /// The copy it built on (`None`: every byte was read).
    pub base: Option<CopyId>,
    /// Bytes read and hashed; the rest of `bytes` was shared with the base.
    pub bytes_read: u64,
    pub bytes: u64,
}

/// A verification as front ends report it: what it found, what it built on and how
/// much it read.
#[derive(Clone, Debug, Serialize)]
pub struct VerifySummary {
    pub ok: bool,
    /// One line per check.
    pub detail: String,
    /// The verified copy whose blocks were not read again (absent: everything was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<CopyId>,
    /// Bytes read and hashed, of `bytes`.
    pub bytes_read: u64,
    pub bytes: u64,
}

impl Verification {
    pub fn summary(&self) -> VerifySummary {
        VerifySummary {
            ok: self.report.ok,
            detail: self.report.detail.clone(),
            base: self.base,
            bytes_read: self.bytes_read,
            bytes: self.bytes,
        }
    }

    /// A verification that found `report` without hashing anything (the copy's files
    /// are gone).
    pub fn without_hashes(report: VerifyReport) -> Verification {
        Verification {
            report,
            leaves: Vec::new(),
            base: None,
            bytes_read: 0,
            bytes: 0,
        }
    }
}

/// One file of the copy, hashed.
struct Hashed {
    hash: FileHash,
    /// The ranges whose blocks are not the base's (`None`: no base for this file).
    changed: Option<Vec<Range<u64>>>,
}

/// Where one file of the copy is, and its base's file with that file's leaves.
struct Job<'a> {
    path: Option<&'a Path>,
    base: Option<(&'a Path, &'a LeafHashes)>,
}

/// Hashes every file of the copy (in parallel), compares with hashes recorded earlier,
/// fills the missing ones, then runs each writer's check, all at background priority
/// ([`crate::priority`]). With a `base`, blocks the copy shares with the base's files
/// are not read again (their leaf hashes are taken from the base) and writers check
/// only what changed ([`Writer::verify_changed`]). A damaged copy is a report with
/// `ok == false`; an `Err` means the check itself could not run.
pub fn verify_copy(
    view: &CopyView,
    files: &mut [FileEntry],
    writers: &[Box<dyn Writer>],
    events: &dyn EventSink,
    base: Option<&VerifyBase>,
) -> Result<Verification, Error> {
    // What the application should not feel: at background priority, with the hashing
    // threads and the writers' check processes it starts.
    let _background = crate::priority::background();
    let mut lines = Vec::new();
    let mut ok = true;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let in_copy = index(view);
    let in_base = base.map(|b| index(&b.view));
    let jobs: Vec<Job<'_>> = files
        .iter()
        .map(|f| Job {
            path: in_copy.get(f.path.as_path()).copied(),
            base: base.zip(in_base.as_ref()).and_then(|(b, in_base)| {
                Some((*in_base.get(f.path.as_path())?, b.leaves.get(&f.path)?))
            }),
        })
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hashed = hash_all(&jobs, workers, total, events);
    let mut done = 0;
    let mut bytes_read = 0;
    let mut leaves = Vec::with_capacity(files.len());
    let mut changes = Changes {
        base: base.map_or(0, |b| b.copy),
        files: HashMap::new(),
    };
    for (file, result) in files.iter_mut().zip(hashed) {
        match result {
            Ok(Hashed { hash, changed }) => {
                done += hash.size;
                bytes_read += hash.read;
                if hash.size != file.size {
                    ok = false;
                    lines.push(format!(
                        "{}: size {} differs from the manifest's {}",
                        file.path.display(),
                        hash.size,
                        file.size
                    ));
                }
                match &file.blake3 {
                    Some(recorded) if *recorded != hash.blake3 => {
                        ok = false;
                        lines.push(format!(
                            "{}: content changed since it was first verified (BLAKE3 {}, recorded {recorded})",
                            file.path.display(),
                            hash.blake3,
                        ));
                    }
                    Some(_) => {}
                    None => file.blake3 = Some(hash.blake3),
                }
                if let Some(changed) = changed {
                    changes.files.insert(file.path.clone(), changed);
                }
                leaves.push((file.path.clone(), hash.leaves));
            }
            Err(e) => {
                ok = false;
                lines.push(format!("{}: {e}", file.path.display()));
            }
        }
    }
    events.bytes(done, total);
    if ok {
        let mut line = format!(
            "{} files hashed (BLAKE3), all match the manifest",
            files.len()
        );
        if let Some(b) = base {
            line.push_str(&format!(
                "; {} of {} bytes read, the rest is copy {}'s verified blocks",
                bytes_read, total, b.copy
            ));
        }
        lines.push(line);
    }
    for w in writers {
        let checked = match base {
            Some(_) => w.verify_changed(view, &changes),
            None => w.verify(view),
        };
        let report = match checked {
            Ok(report) => report,
            // The copy's files are already known to be damaged or missing: a writer's
            // check failing on them is part of that finding, not a check that could not run.
            Err(source) if !ok => {
                let failed = Error::Writer {
                    writer: w.name(),
                    phase: Phase::Verify,
                    source,
                };
                VerifyReport {
                    ok: false,
                    detail: format!("the check could not run: {}", error_chain(&failed)),
                }
            }
            Err(source) => {
                return Err(Error::Writer {
                    writer: w.name(),
                    phase: Phase::Verify,
                    source,
                })
            }
        };
        ok &= report.ok;
        lines.push(format!("{}: {}", w.name(), report.detail));
    }
    Ok(Verification {
        report: VerifyReport {
            ok,
            detail: lines.join("\n"),
        },
        leaves,
        base: base.map(|b| b.copy),
        bytes_read,
        bytes: total,
    })
}

/// Where a view holds each original, looked up by hash (a copy can hold 40,000 files).
/// The first mapping of an original wins, as with `CopyView::path_of`.
fn index(view: &CopyView) -> HashMap<&Path, &Path> {
    let mut in_copy: HashMap<&Path, &Path> = HashMap::with_capacity(view.files.len());
    for (original, copied) in &view.files {
        in_copy
            .entry(original.as_path())
            .or_insert(copied.as_path());
    }
    in_copy
}

/// Hashes the files of `jobs` on up to `workers` threads, each taking the next index
/// until none is left; the results are in `jobs`' order. Progress goes to `events` as
/// files finish.
fn hash_all(
    jobs: &[Job<'_>],
    workers: usize,
    total: u64,
    events: &dyn EventSink,
) -> Vec<Result<Hashed, String>> {
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let worker = || {
        let mut buf = vec![0u8; 1 << 20];
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else {
                return mine;
            };
            let result = match job.path {
                Some(p) => hash_one(p, job.base, &mut buf)
                    .map_err(|e| format!("cannot read {}: {e}", p.display())),
                None => Err("missing from the copy".to_string()),
            };
            if let Ok(h) = &result {
                let so_far = done.fetch_add(h.hash.size, Ordering::Relaxed) + h.hash.size;
                events.bytes(so_far, total);
            }
            mine.push((i, result));
        }
    };
    let workers = workers.clamp(1, jobs.len().max(1));
    let mut results: Vec<Option<Result<Hashed, String>>> = (0..jobs.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("shadowcopy-verify".into())
                    .spawn_scoped(scope, worker)
                    // Could not start a thread: the others (or this one) take every file.
                    .map_err(|e| tracing::warn!("cannot start a verification thread: {e}"))
                    .ok()
            })
            .collect();
        let mut parts: Vec<Vec<(usize, Result<Hashed, String>)>> = Vec::new();
        if handles.is_empty() {
            parts.push(worker());
        }
        for h in handles {
            // A worker that panicked loses the files it had hashed; they are reported below.
            if let Ok(part) = h.join() {
                parts.push(part);
            }
        }
        for (i, result) in parts.into_iter().flatten() {
            results[i] = Some(result);
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("hashing thread panicked".into())))
        .collect()
}

/// Hashes the copied file at `path` through `buf`, taking the leaves it shares with
/// `base` (the base copy's file and its leaves) from there. The base's file is
/// opened like the copy's; one that cannot be opened or mapped only means everything
/// is read.
fn hash_one(
    path: &Path,
    base: Option<(&Path, &LeafHashes)>,
    buf: &mut [u8],
) -> std::io::Result<Hashed> {
    let file = open_copied_file(path)?;
    let size = file.metadata()?.len();
    let Some((base_path, leaves)) = base else {
        return Ok(Hashed {
            hash: hash_file(&file, size, None, buf)?,
            changed: None,
        });
    };
    let shared = match open_copied_file(base_path) {
        Ok(base_file) => shared_ranges(&file, &base_file),
        Err(e) => {
            tracing::debug!("cannot open {} to compare: {e}", base_path.display());
            Vec::new()
        }
    };
    let reuse = Reuse {
        leaves,
        shared: &shared,
    };
    Ok(Hashed {
        hash: hash_file(&file, size, Some(reuse), buf)?,
        changed: Some(complement(&shared, size)),
    })
}

/// Opens the regular file at `path` for reading. The last component is not followed
/// if it is a symlink, and anything but a regular file (a FIFO would block, a device
/// never end) is refused before it is read.
fn open_copied_file(path: &Path) -> std::io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            std::io::Error::other("it is a symbolic link, not the copied file")
        } else {
            std::io::Error::from(e)
        }
    })?;
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if kind != FileType::RegularFile {
        return Err(std::io::Error::other(format!(
            "it is a {}, not the copied regular file",
            describe(kind)
        )));
    }
    Ok(File::from(fd))
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "special file",
    }
}
