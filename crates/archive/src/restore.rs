//! Restoring an archived copy into a directory: each file's blocks grouped by pack,
//! neighbouring blocks merged into ranged GETs (8 at once), blocks opened (decrypted,
//! decompressed, their ids checked) on all cores and written at their offsets into
//! files created exclusively; each file then counts only when its BLAKE3 (made from its
//! blocks' as they are written, `file_hash`) is the manifest's. The tree below the target is the copy's, as `restore --to` lays it out.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};

use crate::block::BlockOpener;
use crate::crypto::BlockId;
use crate::error::ArchiveError;
use crate::file_hash::BlockTreeHash;
use crate::finishing::{write_and_finish, FileEnds};
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

thread_local! {
    /// Each blocking thread's opener, made at its first block and kept for the next.
    static OPENER: std::cell::RefCell<Option<BlockOpener>> = const { std::cell::RefCell::new(None) };
}

/// Blocks closer than this in a pack are fetched in one request.
const MERGE_GAP: u64 = 1 << 20;
/// A request is at most this long (with 8 at once, what a restore holds in memory).
/// Fewer, larger requests: moto restored a scale-100 cluster in 1.25 s from 7 requests
/// against 1.5–1.8 s from 26 (each capped at 64 MiB opened).
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

/// `to` must not be inside a directory of the copy that exists here (its live data, on
/// the host it came from): the restore would write among files an application owns.
fn check_outside_live_data(
    to: &Path,
    tree: &[crate::format::TreeRecord],
) -> Result<(), ArchiveError> {
    let absolute = if to.is_absolute() {
        to.to_path_buf()
    } else {
        std::env::current_dir()?.join(to)
    };
    let resolved = shadowcopy_core::safe_fs::resolve_existing_prefix(&absolute);
    let inside = tree
        .iter()
        .filter(|e| e.symlink.is_none())
        .map(|e| e.path.as_path())
        .filter(|d| resolved.starts_with(d))
        .find(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()));
    match inside {
        Some(dir) => Err(ArchiveError::Usage(format!(
            "{} is inside {}, a directory of the archived copy's data that exists here; \
             restore into a directory outside it",
            to.display(),
            dir.display()
        ))),
        None => Ok(()),
    }
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
        check_outside_live_data(to, &manifest.tree)?;
        let blocks = self.runtime.block_on(self.blocks(true))?;
        // Files created exclusively (never through a planted link), at full size.
        let mut files = Vec::with_capacity(manifest.files.len());
        let mut trees = Vec::with_capacity(manifest.files.len());
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
            let mut lengths = Vec::with_capacity(record.blocks.len());
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
                lengths.push(location.raw_length);
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
            trees.push(match record.cut {
                crate::format::Cut::Fixed => {
                    BlockTreeHash::for_blocks(self.config.block_size, record.size, &lengths)
                }
                crate::format::Cut::Cdc => None,
            });
        }
        let trees = Arc::new(trees);
        tracing::debug!(
            "restore of {manifest_id}: {} files created at {:?}",
            files.len(),
            started.elapsed()
        );
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
                let same = self.key.block_id(data) == p.id;
                if let (true, Some(tree)) = (same, &trees[p.file]) {
                    tree.add(p.at, data);
                }
                same
            })
            .is_ok_and(|same| same)
            {
                reused += u64::from(*length);
            } else {
                placements.push(p);
            }
        }
        let mut blocks_left = vec![0usize; files.len()];
        for p in &placements {
            blocks_left[p.file] += 1;
        }
        let requests = plan(placements);
        let total = manifest.bytes();
        let written = std::sync::atomic::AtomicU64::new(reused);
        let downloaded = std::sync::atomic::AtomicU64::new(0);
        let count = requests.len();
        write_and_finish(
            files,
            blocks_left,
            &manifest.files,
            &trees,
            &manifest_id,
            |ends| {
                self.runtime.block_on(async {
                    stream::iter(requests)
                        .map(|request| {
                            let ends = ends.clone();
                            let trees = trees.clone();
                            let store = self.store.clone();
                            let key = self.key.clone();
                            let downloaded = &downloaded;
                            async move {
                                let bytes = store
                                    .get_range(
                                        &names::pack(&request.pack),
                                        request.start..request.end,
                                    )
                                    .await?;
                                downloaded.fetch_add(
                                    bytes.len() as u64,
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                                // Opening and writing is CPU and disk work: off the async
                                // threads.
                                tokio::task::spawn_blocking(move || {
                                    write_blocks(&request, bytes, &key, &trees, &ends)
                                })
                                .await
                                .map_err(|e| ArchiveError::Io(std::io::Error::other(e)))?
                            }
                        })
                        .buffer_unordered(PARALLEL_GETS)
                        .try_for_each(|n| {
                            let done =
                                written.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                            progress(done, total);
                            async { Ok(()) }
                        })
                        .await
                })
            },
        )?;
        tracing::debug!(
            "restore of {manifest_id}: {count} requests, files written, synced and checked in {:?}",
            started.elapsed()
        );
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

/// Opens the blocks `request` brought (`bytes`, decrypted in place) and writes each at
/// its place; returns the bytes written. A request that opens into more than
/// [`PART_RAW`] is cut into parts (at block boundaries, a block placed twice kept in
/// one part), opened on as many threads as there are cores: large requests keep the
/// number of GETs down, and their opening still uses every core.
fn write_blocks(
    request: &Request,
    mut bytes: Vec<u8>,
    key: &crate::crypto::MasterKey,
    trees: &[Option<BlockTreeHash>],
    ends: &FileEnds,
) -> Result<u64, ArchiveError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts = parts_of(&request.blocks, cores);
    if parts.len() == 1 {
        return write_part(
            request,
            &request.blocks,
            request.start,
            &mut bytes,
            key,
            trees,
            ends,
        );
    }
    // Each part's bytes: from its first block's offset to the next part's.
    let mut slices = Vec::with_capacity(parts.len());
    let mut rest: &mut [u8] = &mut bytes;
    let mut base = request.start;
    for (k, part) in parts.iter().enumerate() {
        let end = match parts.get(k + 1) {
            Some(next) => request.blocks[next.start].location.offset,
            None => base + rest.len() as u64,
        };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut((end - base) as usize);
        slices.push((&request.blocks[part.clone()], base, head));
        rest = tail;
        base = end;
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = slices
            .into_iter()
            .map(|(blocks, base, slice)| {
                scope.spawn(move || write_part(request, blocks, base, slice, key, trees, ends))
            })
            .collect();
        let mut n = 0;
        for h in handles {
            n += h.join().map_err(|_| {
                ArchiveError::Io(std::io::Error::other("a restore thread panicked"))
            })??;
        }
        Ok(n)
    })
}

/// A request opens into more than this: its blocks are opened on several threads.
const PART_RAW: u64 = 32 << 20;

/// `blocks` (in offset order) cut into at most `cores` runs of about equal raw size,
/// none under [`PART_RAW`] but the last; a cut never falls between two placements of
/// the same block.
fn parts_of(blocks: &[Placement], cores: usize) -> Vec<std::ops::Range<usize>> {
    let raw: u64 = blocks
        .iter()
        .map(|b| u64::from(b.location.raw_length))
        .sum();
    let count = (raw / PART_RAW).clamp(1, cores.max(1) as u64);
    let target = raw.div_ceil(count);
    let mut parts = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, b) in blocks.iter().enumerate() {
        let cut = size >= target
            && parts.len() + 1 < count as usize
            && blocks[i - 1].location.offset != b.location.offset;
        if cut {
            parts.push(start..i);
            (start, size) = (i, 0);
        }
        size += u64::from(b.location.raw_length);
    }
    parts.push(start..blocks.len());
    parts
}

/// Opens and writes `blocks`, whose sealed bytes are in `bytes` from pack offset `base`.
fn write_part(
    request: &Request,
    blocks: &[Placement],
    base: u64,
    bytes: &mut [u8],
    key: &crate::crypto::MasterKey,
    trees: &[Option<BlockTreeHash>],
    ends: &FileEnds,
) -> Result<u64, ArchiveError> {
    OPENER.with_borrow_mut(|opener| {
        if opener.is_none() {
            *opener = Some(BlockOpener::new()?);
        }
        let opener = opener.as_mut().expect("made above");
        let mut n = 0u64;
        // A block placed more than once (the same bytes at several places) comes once,
        // its placements one after the other; it is opened (decrypted in place) once.
        let mut opened = None;
        for b in blocks {
            if opened != Some(b.location.offset) {
                let from = (b.location.offset - base) as usize;
                let sealed = bytes
                    .get_mut(from..from + b.location.length as usize)
                    .ok_or_else(|| ArchiveError::Damaged {
                        what: format!("pack {}", request.pack),
                        why: "it is shorter than its index says".into(),
                    })?;
                // Each file is checked whole against the manifest (`finishing`).
                opener.open_for_checked_file(
                    key,
                    &b.id,
                    b.location.raw_length,
                    sealed,
                    &request.pack,
                )?;
                opened = Some(b.location.offset);
            }
            let data = opener.opened();
            ends.file(b.file).write_all_at(data, b.at)?;
            if let Some(tree) = &trees[b.file] {
                tree.add(b.at, data);
            }
            ends.written(b.file, data.len() as u64);
            n += data.len() as u64;
        }
        Ok(n)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(pack: &str, offset: u64, length: u32, raw_length: u32) -> Placement {
        Placement {
            id: BlockId([offset as u8; 32]),
            file: 0,
            at: 0,
            location: Location {
                pack: pack.into(),
                index: "i".into(),
                offset,
                length,
                raw_length,
            },
        }
    }

    fn shape(requests: &[Request]) -> Vec<(String, u64, u64, usize)> {
        let mut v: Vec<_> = requests
            .iter()
            .map(|r| (r.pack.to_string(), r.start, r.end, r.blocks.len()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn neighbours_in_a_pack_are_one_request_within_its_limits() {
        const M: u64 = 1 << 20;
        // Neighbours (and a gap under 1 MiB) merge; another pack, a gap over 1 MiB, more
        // than 16 MiB on the wire or 64 MiB opened start a new request.
        let requests = plan(vec![
            placement("a", 0, M as u32, M as u32),
            placement("a", M, M as u32, M as u32),
            placement("a", 2 * M + 1000, M as u32, M as u32),
            placement("b", 0, M as u32, M as u32),
            placement("a", 10 * M, M as u32, M as u32),
        ]);
        assert_eq!(
            shape(&requests),
            vec![
                ("a".into(), 0, 3 * M + 1000, 3),
                ("a".into(), 10 * M, 11 * M, 1),
                ("b".into(), 0, M, 1),
            ]
        );
        let wire: Vec<Placement> = (0..20)
            .map(|n| placement("a", n * M, M as u32, M as u32))
            .collect();
        assert_eq!(
            shape(&plan(wire)),
            vec![("a".into(), 0, 16 * M, 16), ("a".into(), 16 * M, 20 * M, 4)]
        );
    }

    #[test]
    fn a_request_that_opens_large_is_cut_into_parts_for_the_cores() {
        const M: u64 = 1 << 20;
        // 100 blocks of 1 MiB that compress 20×: one request, cut in two parts for two
        // cores, three (none under 32 MiB) for four; a small request stays whole.
        let small = M / 20;
        let blocks: Vec<Placement> = (0..100)
            .map(|n| placement("a", n * small, small as u32, M as u32))
            .collect();
        let requests = plan(blocks.clone());
        assert_eq!(requests.len(), 1);
        assert_eq!(parts_of(&blocks, 2), vec![0..50, 50..100]);
        assert_eq!(parts_of(&blocks, 4), vec![0..34, 34..68, 68..100]);
        assert_eq!(parts_of(&blocks[..20], 4), vec![0..20]);
        assert_eq!(parts_of(&blocks, 1), vec![0..100]);
        // A block placed twice is never split from its twin.
        let mut twins = blocks.clone();
        twins.insert(50, twins[49].clone());
        let parts = parts_of(&twins, 2);
        assert_eq!(parts.len(), 2);
        let cut = parts[1].start;
        assert_ne!(twins[cut - 1].location.offset, twins[cut].location.offset);
    }
}
