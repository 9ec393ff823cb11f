//! Restoring an archived copy into a directory: each file's blocks grouped by pack,
//! neighbouring blocks merged into ranged GETs (8 at once), blocks opened (decrypted,
//! decompressed, their ids checked) on all cores and written at their offsets into
//! files created exclusively; each file then counts only when its BLAKE3 is the
//! manifest's. The tree below the target is the copy's, as `restore --to` lays it out.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};

use crate::crypto::BlockId;
use crate::error::ArchiveError;
use crate::format::names;
use crate::repo::{Location, Repository, PARALLEL_GETS};

/// What a restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreReport {
    pub manifest: String,
    pub files: usize,
    pub bytes: u64,
    /// Bytes taken from local files that held the same blocks (not downloaded).
    pub bytes_reused: u64,
    /// Bytes fetched from the store.
    pub bytes_downloaded: u64,
    /// Ranged GETs made.
    pub requests: usize,
    #[serde(rename = "took_us", serialize_with = "crate::micros")]
    pub took: Duration,
}

/// Blocks closer than this in a pack are fetched in one request.
const MERGE_GAP: u64 = 1 << 20;
/// A request is at most this long (with 8 at once, what a restore holds in memory).
const MAX_REQUEST: u64 = 16 << 20;

/// Where one block goes.
#[derive(Clone, Debug)]
struct Placement {
    id: BlockId,
    file: usize,
    at: u64,
    location: Location,
}

/// One ranged GET and the blocks it brings.
struct Request {
    pack: Arc<str>,
    start: u64,
    end: u64,
    blocks: Vec<Placement>,
}

/// `to` must be new, or an empty directory of ours that no one else can write: files
/// are created below it by path, and a directory someone else could write into could
/// have a link planted in it between this check and those creations.
fn check_target(to: &Path) -> Result<(), ArchiveError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
        Ok(m) => m,
    };
    let empty = meta.is_dir()
        && std::fs::read_dir(to)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if !empty {
        return Err(ArchiveError::Usage(format!(
            "{} exists and is not an empty directory; restore into a new or empty one",
            to.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(ArchiveError::Usage(format!(
            "{} is a directory others can write into (owner uid {}, mode {:o}); restore into a new directory \
             (it is made private) or an empty one of ours",
            to.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The target of a file below `to`: the original path's place in the tree.
pub fn target_of(to: &Path, original: &Path) -> Result<PathBuf, ArchiveError> {
    let relative = original.strip_prefix("/").unwrap_or(original);
    if relative
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ArchiveError::Damaged {
            what: "the manifest".into(),
            why: format!("it names a file {:?} outside any tree", original),
        });
    }
    Ok(to.join(relative))
}

impl Repository {
    /// Restores archived copy `id` (or a unique prefix) below `to`, which must not exist
    /// or be empty; `progress(done, total)` in bytes.
    pub fn restore_to(
        &self,
        id: &str,
        to: &Path,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<RestoreReport, ArchiveError> {
        self.restore_seeded(id, to, &|_| Vec::new(), progress)
    }

    /// As [`Repository::restore_to`], taking blocks from local files where they hold
    /// them: `seeds(original path)` names files that may (the live file, a local copy
    /// of it). Each is cut as the archived file was and its blocks' ids computed; a block
    /// found there is read locally instead of downloaded (its id proves it is the same).
    pub fn restore_seeded(
        &self,
        id: &str,
        to: &Path,
        seeds: &dyn Fn(&Path) -> Vec<PathBuf>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<RestoreReport, ArchiveError> {
        let started = Instant::now();
        let (manifest_id, manifest) = self.manifest(id)?;
        check_target(to)?;
        let blocks = self.runtime.block_on(self.blocks(true))?;
        // Files created exclusively (never through a planted link), at full size.
        let mut files = Vec::with_capacity(manifest.files.len());
        let mut placements = Vec::new();
        for (n, record) in manifest.files.iter().enumerate() {
            let target = target_of(to, &record.path)?;
            if let Some(parent) = target.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&target)?;
            file.set_len(record.size)?;
            files.push((Arc::new(file), target));
            let mut at = 0u64;
            for id in &record.blocks {
                let location = blocks.get(id).ok_or_else(|| ArchiveError::Damaged {
                    what: format!("archived copy {manifest_id}"),
                    why: format!(
                        "block {} of {} is in no index (removed by a prune, or its push never finished)",
                        id.hex(),
                        record.path.display()
                    ),
                })?;
                placements.push(Placement {
                    id: *id,
                    file: n,
                    at,
                    location: location.clone(),
                });
                at += location.raw_length as u64;
            }
            if at != record.size {
                return Err(ArchiveError::Damaged {
                    what: format!("archived copy {manifest_id}"),
                    why: format!(
                        "the blocks of {} add up to {at} bytes, not its {}",
                        record.path.display(),
                        record.size
                    ),
                });
            }
        }
        // Blocks local files already hold.
        let mut local: HashMap<BlockId, (PathBuf, u64, u32)> = HashMap::new();
        for record in &manifest.files {
            for seed in seeds(&record.path) {
                if let Err(e) = self.index_seed(&seed, record.cut, &mut local) {
                    tracing::debug!("{} is no seed: {e}", seed.display());
                }
            }
        }
        let (from_local, mut placements): (Vec<Placement>, Vec<Placement>) = placements
            .into_iter()
            .partition(|p| local.contains_key(&p.id));
        let mut reused = 0u64;
        for p in from_local {
            let (seed, offset, length) = &local[&p.id];
            // A seed that changed since it was read: that block is downloaded after all.
            if clone_block(seed, *offset, *length, &files[p.file].0, p.at, |data| {
                self.key.block_id(data) == p.id
            })
            .is_ok_and(|same| same)
            {
                reused += u64::from(*length);
            } else {
                placements.push(p);
            }
        }
        let requests = plan(placements);
        let total = manifest.bytes();
        let written = std::sync::atomic::AtomicU64::new(reused);
        let downloaded = std::sync::atomic::AtomicU64::new(0);
        let count = requests.len();
        let files_for_writes: Vec<Arc<File>> = files.iter().map(|(f, _)| f.clone()).collect();
        self.runtime.block_on(async {
            stream::iter(requests)
                .map(|request| {
                    let files = files_for_writes.clone();
                    let store = self.store.clone();
                    let key = self.key.clone();
                    let downloaded = &downloaded;
                    async move {
                        let bytes = store
                            .get_range(&names::pack(&request.pack), request.start..request.end)
                            .await?;
                        downloaded
                            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        // Opening and writing is CPU and disk work: off the async threads.
                        tokio::task::spawn_blocking(move || {
                            let mut n = 0u64;
                            for b in &request.blocks {
                                let from = (b.location.offset - request.start) as usize;
                                let sealed = bytes
                                    .get(from..from + b.location.length as usize)
                                    .ok_or_else(|| ArchiveError::Damaged {
                                        what: format!("pack {}", request.pack),
                                        why: "it is shorter than its index says".into(),
                                    })?;
                                let data = open_block(&key, &b.id, sealed, &request.pack)?;
                                files[b.file].write_all_at(&data, b.at)?;
                                n += data.len() as u64;
                            }
                            Ok::<u64, ArchiveError>(n)
                        })
                        .await
                        .map_err(|e| ArchiveError::Io(std::io::Error::other(e)))?
                    }
                })
                .buffer_unordered(PARALLEL_GETS)
                .try_for_each(|n| {
                    let done = written.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                    progress(done, total);
                    async { Ok(()) }
                })
                .await
        })?;
        // Each file counts once its bytes are the manifest's: synced, hashed and given
        // its mode, owner and time, several files at once (hashing is CPU, syncing is
        // the disk's).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_error: std::sync::Mutex<Option<ArchiveError>> = std::sync::Mutex::new(None);
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(2, 8)
            .min(files.len().max(1));
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(((file, target), record)) = files.get(n).zip(manifest.files.get(n))
                    else {
                        break;
                    };
                    if let Err(e) = finish_file(file, target, record, &manifest_id) {
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert(e);
                        // The others stop at their next file.
                        next.store(files.len(), std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        recreate_tree(to, &manifest.tree)?;
        Ok(RestoreReport {
            manifest: manifest_id,
            files: manifest.files.len(),
            bytes: total,
            bytes_reused: reused,
            bytes_downloaded: downloaded.into_inner(),
            requests: count,
            took: started.elapsed(),
        })
    }
}

impl Repository {
    /// Records where `seed`, cut as `cut`, holds each of its blocks.
    fn index_seed(
        &self,
        seed: &Path,
        cut: crate::format::Cut,
        into: &mut HashMap<BlockId, (PathBuf, u64, u32)>,
    ) -> Result<(), ArchiveError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(seed)?;
        if !file.metadata()?.is_file() {
            return Ok(());
        }
        let mut offset = 0u64;
        match cut {
            crate::format::Cut::Fixed => {
                let size = self.config.block_size as usize;
                let mut block = vec![0u8; size];
                loop {
                    let mut filled = 0;
                    while filled < size {
                        match file.read_at(&mut block[filled..], offset + filled as u64)? {
                            0 => break,
                            n => filled += n,
                        }
                    }
                    if filled == 0 {
                        break;
                    }
                    let id = self.key.block_id(&block[..filled]);
                    into.entry(id)
                        .or_insert_with(|| (seed.to_path_buf(), offset, filled as u32));
                    offset += filled as u64;
                    if filled < size {
                        break;
                    }
                }
            }
            crate::format::Cut::Cdc => {
                let c = self.config.chunker;
                let chunks = fastcdc::v2020::StreamCDC::new(
                    file,
                    c.min as usize,
                    c.avg as usize,
                    c.max as usize,
                );
                for chunk in chunks {
                    let chunk = chunk
                        .map_err(|e| ArchiveError::Io(std::io::Error::other(e.to_string())))?;
                    let id = self.key.block_id(&chunk.data);
                    into.entry(id)
                        .or_insert_with(|| (seed.to_path_buf(), chunk.offset, chunk.length as u32));
                }
            }
        }
        Ok(())
    }
}

/// A restored file's end: synced, its BLAKE3 checked against the manifest's, its mode,
/// owner (as root) and modification time set.
fn finish_file(
    file: &File,
    target: &Path,
    record: &crate::format::FileRecord,
    manifest_id: &str,
) -> Result<(), ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    file.sync_all()?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file)?;
    let got = hasher.finalize().to_hex().to_string();
    if got != record.blake3 {
        return Err(ArchiveError::Damaged {
            what: format!(
                "{} restored from archived copy {manifest_id}",
                target.display()
            ),
            why: format!("its BLAKE3 is {got}, not the manifest's {}", record.blake3),
        });
    }
    file.set_permissions(std::fs::Permissions::from_mode(record.mode & 0o7777))?;
    rustix::fs::fchown(
        file,
        Some(rustix::fs::Uid::from_raw(record.uid)),
        Some(rustix::fs::Gid::from_raw(record.gid)),
    )
    .or_else(|e| {
        // Owners are set as root; a user restoring for themselves keeps theirs.
        if rustix::process::geteuid().is_root() {
            Err(std::io::Error::from(e))
        } else {
            Ok(())
        }
    })?;
    let mtime = std::time::UNIX_EPOCH + Duration::from_nanos(record.mtime_ns.max(0) as u64);
    file.set_modified(mtime)?;
    Ok(())
}

/// Puts `length` bytes of `seed` at `offset` into `to` at `at` by `copy_file_range`,
/// which clones them on a file system that shares extents (XFS with reflink, btrfs: no
/// data is written, and the restored file shares the space) and copies them in the
/// kernel elsewhere (by reading and writing them where the kernel cannot: another file
/// system); then reads them back and asks `same` whether they are the block expected
/// (the seed may have changed since it was cut).
fn clone_block(
    seed: &Path,
    offset: u64,
    length: u32,
    to: &File,
    at: u64,
    same: impl Fn(&[u8]) -> bool,
) -> std::io::Result<bool> {
    use rustix::io::Errno;
    let from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(seed)?;
    let mut data = vec![0u8; length as usize];
    let (mut off_in, mut off_out, end) = (offset, at, offset + u64::from(length));
    while off_in < end {
        let want = (end - off_in) as usize;
        match rustix::fs::copy_file_range(&from, Some(&mut off_in), to, Some(&mut off_out), want) {
            // The seed is shorter than it was.
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => {
                from.read_exact_at(&mut data, offset)?;
                if !same(&data) {
                    return Ok(false);
                }
                to.write_all_at(&data, at)?;
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        }
    }
    to.read_exact_at(&mut data, at)?;
    Ok(same(&data))
}

/// The copy's directories and symlinks below `to`, with their modes and owners (owners
/// only as root). Directories are given their modes last, deepest first, so that a
/// read-only one does not stop what goes below it.
fn recreate_tree(to: &Path, tree: &[crate::format::TreeRecord]) -> Result<(), ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    let root = rustix::process::geteuid().is_root();
    let owner = |path: &Path, uid: u32, gid: u32| -> Result<(), ArchiveError> {
        if root {
            rustix::fs::chownat(
                rustix::fs::CWD,
                path,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)?;
        }
        Ok(())
    };
    for e in tree {
        let target = target_of(to, &e.path)?;
        match &e.symlink {
            None => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&target)?,
            Some(link) => {
                if let Some(parent) = target.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)?;
                }
                std::os::unix::fs::symlink(link, &target)?;
                owner(&target, e.uid, e.gid)?;
            }
        }
    }
    let mut dirs: Vec<&crate::format::TreeRecord> =
        tree.iter().filter(|e| e.symlink.is_none()).collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.components().count()));
    for e in dirs {
        let target = target_of(to, &e.path)?;
        let meta = std::fs::symlink_metadata(&target)?;
        if !meta.is_dir() {
            return Err(ArchiveError::Damaged {
                what: "the manifest".into(),
                why: format!("{} is both a directory and a file", e.path.display()),
            });
        }
        owner(&target, e.uid, e.gid)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(e.mode & 0o7777))?;
    }
    Ok(())
}

/// A block's bytes, if its sealing and its id are right.
pub(crate) fn open_block(
    key: &crate::crypto::MasterKey,
    id: &BlockId,
    sealed: &[u8],
    pack: &str,
) -> Result<Vec<u8>, ArchiveError> {
    let what = format!("block {} in pack {pack}", id.hex());
    let packed = key.open(sealed, format!("block {}", id.hex()).as_bytes(), &what)?;
    let data = zstd::decode_all(&packed[..]).map_err(|e| ArchiveError::Damaged {
        what: what.clone(),
        why: format!("it does not decompress: {e}"),
    })?;
    if key.block_id(&data) != *id {
        return Err(ArchiveError::Damaged {
            what,
            why: "its bytes do not hash to its id".into(),
        });
    }
    Ok(data)
}

/// Groups the blocks by pack and merges neighbours into requests.
fn plan(mut placements: Vec<Placement>) -> Vec<Request> {
    placements.sort_by(|a, b| {
        (a.location.pack.as_ref(), a.location.offset)
            .cmp(&(b.location.pack.as_ref(), b.location.offset))
    });
    let mut requests: Vec<Request> = Vec::new();
    let mut by_pack: HashMap<Arc<str>, usize> = HashMap::new();
    for p in placements {
        let start = p.location.offset;
        let end = start + p.location.length as u64;
        if let Some(&last) = by_pack.get(&p.location.pack) {
            let r = &mut requests[last];
            if start <= r.end + MERGE_GAP && end - r.start <= MAX_REQUEST {
                r.end = r.end.max(end);
                r.blocks.push(p);
                continue;
            }
        }
        by_pack.insert(p.location.pack.clone(), requests.len());
        requests.push(Request {
            pack: p.location.pack.clone(),
            start,
            end,
            blocks: vec![p],
        });
    }
    requests
}
