//! Verification of a copy: the content hashes of its files (recorded the first time,
//! compared on every later check) and each writer's own integrity check of the copy.
//!
//! Files are hashed by a bounded pool (one worker per CPU, at most one per file) that
//! takes them in order: a copy of 40,000 files starts as many threads as one of four.
//! A file of the copy is opened without following a symlink in its last component and
//! must be a regular file: a link or a FIFO put in its place is reported, never read.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustix::fs::{FileType, Mode, OFlags};

use crate::error::error_chain;
use crate::error::Error;
use crate::events::EventSink;
use crate::model::{CopyView, FileEntry, Phase, VerifyReport};
use crate::writer::Writer;

/// What hashing one file of the copy gave: its BLAKE3 (hex) and size, or why it could
/// not be read.
type Hashed = Result<(String, u64), String>;

/// Hashes every file of the copy (in parallel), compares with hashes recorded earlier,
/// fills the missing ones, then runs each writer's check, all at background priority
/// ([`crate::priority`]). A damaged copy is a report
/// with `ok == false`; an `Err` means the check itself could not run.
pub fn verify_copy(
    view: &CopyView,
    files: &mut [FileEntry],
    writers: &[Box<dyn Writer>],
    events: &dyn EventSink,
) -> Result<VerifyReport, Error> {
    // What the application should not feel: at background priority, with the hashing
    // threads and the writers' check processes it starts.
    let _background = crate::priority::background();
    let mut lines = Vec::new();
    let mut ok = true;
    let total: u64 = files.iter().map(|f| f.size).sum();
    // The first mapping of an original wins, as with `CopyView::path_of`.
    let mut in_copy: HashMap<&Path, &Path> = HashMap::with_capacity(view.files.len());
    for (original, copied) in &view.files {
        in_copy
            .entry(original.as_path())
            .or_insert(copied.as_path());
    }
    let jobs: Vec<Option<&Path>> = files
        .iter()
        .map(|f| in_copy.get(f.path.as_path()).copied())
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hashed = hash_all(&jobs, workers, total, events);
    let mut done = 0;
    for (file, result) in files.iter_mut().zip(hashed) {
        match result {
            Ok((hash, size)) => {
                done += size;
                if size != file.size {
                    ok = false;
                    lines.push(format!(
                        "{}: size {} differs from the manifest's {}",
                        file.path.display(),
                        size,
                        file.size
                    ));
                }
                match &file.blake3 {
                    Some(recorded) if *recorded != hash => {
                        ok = false;
                        lines.push(format!(
                            "{}: content changed since it was first verified (BLAKE3 {hash}, recorded {recorded})",
                            file.path.display()
                        ));
                    }
                    Some(_) => {}
                    None => file.blake3 = Some(hash),
                }
            }
            Err(e) => {
                ok = false;
                lines.push(format!("{}: {e}", file.path.display()));
            }
        }
    }
    events.bytes(done, total);
    if ok {
        lines.push(format!(
            "{} files hashed (BLAKE3), all match the manifest",
            files.len()
        ));
    }
    for w in writers {
        let report = match w.verify(view) {
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
    Ok(VerifyReport {
        ok,
        detail: lines.join("\n"),
    })
}

/// Hashes the files at `paths` (`None`: not in the copy) on up to `workers` threads,
/// each taking the next index until none is left; the results are in `paths`' order.
/// Progress goes to `events` as files finish.
fn hash_all(
    paths: &[Option<&Path>],
    workers: usize,
    total: u64,
    events: &dyn EventSink,
) -> Vec<Hashed> {
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let worker = || {
        let mut buf = vec![0u8; 1 << 20];
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(path) = paths.get(i) else {
                return mine;
            };
            let result = match path {
                Some(p) => {
                    hash_file(p, &mut buf).map_err(|e| format!("cannot read {}: {e}", p.display()))
                }
                None => Err("missing from the copy".to_string()),
            };
            if let Ok((_, size)) = &result {
                let so_far = done.fetch_add(*size, Ordering::Relaxed) + size;
                events.bytes(so_far, total);
            }
            mine.push((i, result));
        }
    };
    let workers = workers.clamp(1, paths.len().max(1));
    let mut results: Vec<Option<Hashed>> = (0..paths.len()).map(|_| None).collect();
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
        let mut parts: Vec<Vec<(usize, Hashed)>> = Vec::new();
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

/// The BLAKE3 (hex) and length of the regular file at `path`, read through `buf`. The
/// last component is not followed if it is a symlink, and anything but a regular file
/// (a FIFO would block, a device never end) is refused before it is read.
fn hash_file(path: &Path, buf: &mut [u8]) -> std::io::Result<(String, u64)> {
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
    let mut f = File::from(fd);
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    loop {
        let read = match f.read(buf) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if read == 0 {
            break;
        }
        n += read as u64;
        hasher.update(&buf[..read]);
    }
    Ok((hasher.finalize().to_hex().to_string(), n))
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
