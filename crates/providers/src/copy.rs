//! The `copy` provider: a full, independent copy of the components on any file system.
//!
//! It is the slowest provider (rank 30, time proportional to the data) and the only one
//! that works everywhere, including across file systems. The copy engine:
//! - splits every file into chunks of [`CHUNK`] bytes and copies the chunks of all files
//!   on `parallelism` threads, so that several small files and the parts of a large one
//!   are copied at once;
//! - is sparse-aware: within each chunk it copies only the data extents it finds with
//!   `SEEK_DATA`/`SEEK_HOLE` and leaves holes as holes (the file gets its full size by
//!   `ftruncate` first);
//! - uses `pread`/`pwrite`, never `copy_file_range`, which silently shares blocks on XFS
//!   and btrfs: this copy must not depend on the original's blocks;
//! - keeps mode, access and modification times, and the owner when running as root,
//!   and fsyncs every file and directory it created: a restore at once, a commit in
//!   [`Provider::persist`], after the thaw, so the application does not wait for the disk;
//! - checks for cancellation between pieces of 1 MiB and reports progress per chunk.
//!
//! [`copy_file`] is the same engine for one file; the `reflink` provider falls back to it.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use rustix::fs::SeekFrom;
use shadowcopy_core::error::BoxError;
use shadowcopy_core::error::IoError;
use shadowcopy_core::model::{CopyView, FileEntry, TreeEntry};
use shadowcopy_core::provider::{
    Capabilities, CommitControl, CommitRequest, Provider, Unsupported,
};

use crate::layout::{self, LayoutError};
use crate::pool::{self, Stop};
use crate::ProviderOptions;

/// Bytes per unit of work: one thread copies one chunk of one file at a time.
pub const CHUNK: u64 = 32 << 20;
/// Bytes per `pread`/`pwrite`; cancellation is checked between pieces.
const PIECE: usize = 1 << 20;

/// Errors of the `copy` provider.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(
        "the file system holding {} is full; the partial copy is discarded. Free space there or \
         choose a copies directory with room for the whole data (copies_dir / --copies-dir)",
        path.display()
    )]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the copy was cancelled after {done} of {total} bytes (the freeze deadline passed); the partial \
         copy is discarded. Raise the freeze deadline or use a faster provider such as reflink"
    )]
    Cancelled { done: u64, total: u64 },
    #[error(
        "a copy thread panicked; this is a bug in shadowcopy, please report it (a retry may work)"
    )]
    Panicked,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| {
        if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            CopyError::NoSpace {
                path: path.to_path_buf(),
                source,
            }
        } else {
            CopyError::Io(IoError {
                action,
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

/// A full copy on any file system; see the module documentation.
#[derive(Debug)]
pub struct CopyProvider {
    base: PathBuf,
    parallelism: usize,
}

impl CopyProvider {
    pub fn new(opts: &ProviderOptions) -> Self {
        CopyProvider {
            base: opts
                .copies_dir
                .clone()
                .unwrap_or_else(|| opts.default_copies_dir.clone()),
            parallelism: opts.threads(),
        }
    }

    /// Where the copies go.
    pub fn base(&self) -> &Path {
        &self.base
    }
}

impl Provider for CopyProvider {
    fn kind(&self) -> &'static str {
        "copy"
    }

    fn rank(&self) -> u32 {
        30
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_snapshot: false,
            writes_to_the_data_file_system: false,
            location_is_a_local_directory: true,
        }
    }

    /// A full copy takes time in proportion to the data: pinned components (a SQLite
    /// database in WAL mode) are copied before the freeze, the rest inside it.
    fn copies_pinned_early(&self) -> bool {
        true
    }

    /// Passes for any file system; fails when the copies directory lies inside one of
    /// the paths (each copy would contain the earlier ones). Missing paths are ignored
    /// here: whether a component may be missing is decided at commit.
    fn check(&self, paths: &[PathBuf]) -> Result<(), Unsupported> {
        let base = layout::resolve(&self.base);
        if let Some(existing) = layout::nearest_existing(&self.base) {
            if !existing.is_dir() {
                return Err(Unsupported {
                    reason: format!(
                        "the copies directory {} cannot be created because {} is not a directory; \
                         choose another copies_dir (--copies-dir)",
                        self.base.display(),
                        existing.display()
                    ),
                });
            }
        }
        for p in paths {
            let Ok(canon) = std::fs::canonicalize(p) else {
                continue;
            };
            if base.starts_with(&canon) {
                return Err(Unsupported {
                    reason: format!(
                        "the copies directory {} is inside {}, so every copy would copy itself; \
                         set copies_dir (--copies-dir) to a directory outside the data",
                        self.base.display(),
                        p.display()
                    ),
                });
            }
        }
        Ok(())
    }

    fn location(&self, request: &CommitRequest) -> Result<String, BoxError> {
        Ok(layout::location_string(&self.base, request.copy_id)?)
    }

    fn commit(
        &self,
        request: &CommitRequest,
        location: &str,
        control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError> {
        Ok(commit(
            request,
            Path::new(location),
            &self.base,
            control,
            self.parallelism,
        )?)
    }

    fn persist(&self, location: &str) -> Result<(), BoxError> {
        Ok(layout::persist(Path::new(location))?)
    }

    fn delete(&self, location: &str) -> Result<(), BoxError> {
        Ok(layout::delete(location)?)
    }

    fn add_files(
        &self,
        location: &str,
        files: &[(PathBuf, PathBuf)],
    ) -> Result<Vec<FileEntry>, BoxError> {
        Ok(layout::add_files_in_copy(location, files)?)
    }

    fn expose(&self, location: &str, files: &[FileEntry]) -> Result<CopyView, BoxError> {
        Ok(CopyView {
            files: layout::expose(location, files)?,
        })
    }

    fn restore_file(&self, location: &str, original: &Path, dest: &Path) -> Result<(), BoxError> {
        let src = layout::existing_in_copy(location, original)?;
        Ok(copy_file(&src, dest, self.parallelism)?)
    }

    fn tree(&self, location: &str, roots: &[PathBuf]) -> Result<Vec<TreeEntry>, BoxError> {
        let loc = Path::new(location);
        Ok(layout::tree(roots, |original| {
            layout::in_copy(loc, original)
        })?)
    }

    fn bytes_used(&self, location: &str) -> Option<u64> {
        if !Path::new(location).is_dir() {
            return None;
        }
        Some(
            walkdir::WalkDir::new(location)
                .into_iter()
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum(),
        )
    }
}

fn commit(
    request: &CommitRequest,
    location: &Path,
    base: &Path,
    control: &CommitControl,
    parallelism: usize,
) -> Result<Vec<FileEntry>, CopyError> {
    let entries = layout::plan(&request.components, Some(base))?;
    let total: u64 = entries
        .iter()
        .filter(|e| e.kind == layout::Kind::File)
        .map(|e| e.meta.len())
        .sum();
    if control.cancelled() {
        return Err(CopyError::Cancelled { done: 0, total });
    }
    // Below the location's pinned path: nothing on the way to it can redirect the commit.
    let pinned = layout::open_location(location, request.continues)?;
    let here = pinned.pinned_path();
    let files = layout::build_tree(&here, &entries)?;
    let jobs: Vec<FileJob> = files
        .iter()
        .map(|(i, dest)| FileJob {
            src: &entries[*i].original,
            dest,
            meta: &entries[*i].meta,
            entry: Some(&entries[*i]),
        })
        .collect();
    let gone = copy_many(&jobs, parallelism, Some(control), Destination::NewInCopy)?;
    layout::finish_tree(&here, &entries)?;
    if control.cancelled() {
        return Err(CopyError::Cancelled { done: total, total });
    }
    Ok(files
        .iter()
        .zip(gone)
        .filter(|(_, gone)| !gone)
        .map(|((i, _), _)| layout::file_entry(&entries[*i].original, &entries[*i].meta))
        .collect())
}

/// A full, independent copy of one regular file to `dest` (replaced if it exists),
/// with the same engine, metadata and fsync as a commit.
pub(crate) fn copy_file(src: &Path, dest: &Path, parallelism: usize) -> Result<(), CopyError> {
    let meta = std::fs::symlink_metadata(src).map_err(io_err("inspect", src))?;
    copy_many(
        &[FileJob {
            src,
            dest,
            meta: &meta,
            entry: None,
        }],
        parallelism,
        None,
        Destination::Restore,
    )
    .map(|_| ())
}

/// Where [`copy_many`] writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Destination {
    /// New files in a copy being committed: created exclusively, made durable later by
    /// `persist`.
    NewInCopy,
    /// A restore's staged file (a new name in the restore's private staging directory):
    /// fsynced at once.
    Restore,
}

/// One file to copy.
struct FileJob<'a> {
    src: &'a Path,
    dest: &'a Path,
    meta: &'a Metadata,
    /// The plan's entry, in a commit: a file the application removes meanwhile may be
    /// left out (see [`layout::Entry::may_vanish`]).
    entry: Option<&'a layout::Entry>,
}

/// One unit of work: a range of one file.
struct Chunk {
    file: usize,
    offset: u64,
    len: u64,
}

/// Copies every file: creates each destination at full size, then copies the chunks of
/// all files in parallel; the thread that finishes a file's last chunk sets its
/// metadata (and, for a restore, fsyncs it). Returns, per file, whether it was left out
/// because the application removed it meanwhile (its destination is removed too).
fn copy_many(
    files: &[FileJob],
    parallelism: usize,
    control: Option<&CommitControl>,
    destination: Destination,
) -> Result<Vec<bool>, CopyError> {
    let mut chunks = Vec::new();
    let mut remaining = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let size = f.meta.len();
        let mut opts = OpenOptions::new();
        opts.write(true).mode(0o600);
        opts.create_new(true);
        let dest = opts.open(f.dest).map_err(io_err("create", f.dest))?;
        dest.set_len(size)
            .map_err(io_err("set the size of", f.dest))?;
        let n = size.div_ceil(CHUNK).max(1);
        remaining.push(AtomicUsize::new(n as usize));
        for k in 0..n {
            let offset = k * CHUNK;
            chunks.push(Chunk {
                file: i,
                offset,
                len: CHUNK.min(size - offset),
            });
        }
    }
    let total: u64 = files.iter().map(|f| f.meta.len()).sum();
    let done = AtomicU64::new(0);
    let gone: Vec<AtomicBool> = files.iter().map(|_| AtomicBool::new(false)).collect();
    let cancelled = || control.is_some_and(CommitControl::cancelled);
    let work = |j: usize| -> Result<(), CopyError> {
        let c = &chunks[j];
        let f = &files[c.file];
        if c.len > 0 && !gone[c.file].load(Ordering::SeqCst) {
            match layout::open_source(f.src, f.meta) {
                Ok(src) => {
                    let dest = OpenOptions::new()
                        .write(true)
                        .open(f.dest)
                        .map_err(io_err("open", f.dest))?;
                    copy_range(&src, &dest, f, c.offset, c.offset + c.len, &cancelled)?;
                }
                Err(e) if f.entry.is_some_and(|entry| layout::vanished(entry, &e)) => {
                    gone[c.file].store(true, Ordering::SeqCst);
                }
                Err(e) => return Err(io_err("open", f.src)(e)),
            }
        }
        let now = done.fetch_add(c.len, Ordering::SeqCst) + c.len;
        if let Some(control) = control {
            control.bytes(now, total);
        }
        if remaining[c.file].fetch_sub(1, Ordering::SeqCst) == 1 {
            if gone[c.file].load(Ordering::SeqCst) {
                return std::fs::remove_file(f.dest).map_err(io_err("remove", f.dest));
            }
            let dest = OpenOptions::new()
                .write(true)
                .open(f.dest)
                .map_err(io_err("open", f.dest))?;
            layout::set_metadata(&dest, f.dest, f.meta)?;
            if destination == Destination::Restore {
                dest.sync_all().map_err(io_err("fsync", f.dest))?;
            }
        }
        Ok(())
    };
    match pool::run(chunks.len(), parallelism, &cancelled, &work) {
        Ok(()) => Ok(gone.into_iter().map(AtomicBool::into_inner).collect()),
        Err(Stop::Failed(CopyError::Cancelled { .. }) | Stop::Cancelled) => {
            Err(CopyError::Cancelled {
                done: done.load(Ordering::SeqCst),
                total,
            })
        }
        Err(Stop::Failed(e)) => Err(e),
        Err(Stop::Panicked) => Err(CopyError::Panicked),
    }
}

/// Copies the data extents of `[start, end)` of `src` to the same offsets of `dest`.
fn copy_range(
    src: &File,
    dest: &File,
    f: &FileJob,
    start: u64,
    end: u64,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; PIECE.min((end - start) as usize)];
    let mut pos = start;
    while pos < end {
        let Some((data, hole)) =
            next_extent(src, pos, end).map_err(io_err("find the data of", f.src))?
        else {
            return Ok(());
        };
        let mut at = data;
        while at < hole {
            if cancelled() {
                return Err(CopyError::Cancelled { done: 0, total: 0 });
            }
            let want = buf.len().min((hole - at) as usize);
            let n = read_at(src, &mut buf[..want], at).map_err(io_err("read", f.src))?;
            if n == 0 {
                // The file shrank while being copied; the rest reads as zeros.
                tracing::warn!(path = %f.src.display(), "file shrank during the copy");
                return Ok(());
            }
            dest.write_all_at(&buf[..n], at)
                .map_err(io_err("write", f.dest))?;
            at += n as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// The next data extent at or after `pos`, clipped to `end`; `None` when only holes
/// remain. File systems without `SEEK_DATA` report everything as data.
fn next_extent(src: &File, pos: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
    let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
        Ok(d) => d,
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
            return Ok(Some((pos, end)))
        }
        Err(e) => return Err(e.into()),
    };
    if data >= end {
        return Ok(None);
    }
    let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
        Ok(h) if h > data => h.min(end),
        Ok(_) | Err(_) => end,
    };
    Ok(Some((data, hole)))
}

fn read_at(src: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    loop {
        match src.read_at(buf, at) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
