//! Which parts of two files are the same blocks on disk: the file system's extent maps
//! (`FIEMAP`) compared. Copies made by cloning (`reflink`, btrfs snapshots) share every
//! block that did not change between them, and a block shared by two files cannot
//! change under one of them (a write to it goes to a new block: copy-on-write), so an
//! incremental verification reads only what is not shared with a copy verified before.
//!
//! Only extents the file system maps plainly count: an extent that is delayed,
//! compressed or encrypted (`ENCODED`), inline, unwritten or not block-aligned is never
//! taken as shared, nor is a hole. Two files compare only on one file system (the same
//! device, or for btrfs, whose subvolumes have devices of their own, the same file
//! system UUID, from `BTRFS_IOC_FS_INFO`); anything else shares nothing.
//!
//! The one module that allows `unsafe`: rustix has no safe wrapper for these two
//! ioctls, so each call lays out the kernel's structure itself (see the SAFETY notes).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use rustix::ioctl::{ioctl, opcode, Getter, Opcode, Updater};

/// One extent as `FIEMAP` maps it: `length` bytes of the file at `logical` are the
/// blocks at `physical` on the file system's device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
}

impl Extent {
    fn end(&self) -> u64 {
        self.logical.saturating_add(self.length)
    }
}

/// `struct fiemap` without its extents (what the ioctl number is computed from).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapHeader {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// Extents asked for per call.
const BATCH: usize = 256;

/// `struct fiemap` with room for [`BATCH`] extents.
#[repr(C)]
struct FiemapRequest {
    header: FiemapHeader,
    extents: [FiemapExtent; BATCH],
}

const FS_IOC_FIEMAP: Opcode = opcode::read_write::<FiemapHeader>(b'f', 11);
/// Write the file's dirty data first, so that no extent is still delayed.
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// The flags an extent may carry and still be compared by address: the last one, and
/// one shared with another file. Every other flag (unknown location, delayed
/// allocation, encoded, encrypted, not aligned, inline, tail-packed, unwritten, merged)
/// makes it incomparable.
const PLAIN_EXTENT_FLAGS: u32 = FIEMAP_EXTENT_LAST | 0x2000;

/// The plainly mapped extents of `file`, in file order (holes and incomparable
/// extents left out).
pub fn extents(file: &File) -> io::Result<Vec<Extent>> {
    let mut found = Vec::new();
    let mut next = 0u64;
    let mut request = Box::new(FiemapRequest {
        header: FiemapHeader::default(),
        extents: [FiemapExtent::default(); BATCH],
    });
    loop {
        request.header = FiemapHeader {
            start: next,
            length: u64::MAX - next,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: BATCH as u32,
            reserved: 0,
        };
        // SAFETY: FS_IOC_FIEMAP takes a `struct fiemap` followed by `extent_count`
        // extents, which is what `FiemapRequest` lays out.
        unsafe {
            ioctl(
                file.as_fd(),
                Updater::<FS_IOC_FIEMAP, _>::new(&mut *request),
            )
        }?;
        let mapped = (request.header.mapped_extents as usize).min(BATCH);
        if mapped == 0 {
            return Ok(found);
        }
        let mut last = false;
        for e in &request.extents[..mapped] {
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
            next = next.max(e.logical.saturating_add(e.length));
            if e.flags & !PLAIN_EXTENT_FLAGS == 0 && e.length > 0 {
                found.push(Extent {
                    logical: e.logical,
                    physical: e.physical,
                    length: e.length,
                });
            }
        }
        if last || next == u64::MAX {
            return Ok(found);
        }
    }
}

/// The byte ranges (ascending, adjacent ones merged) at which `a` and `b` are the same
/// blocks on disk at the same offsets. Empty when they are on different file systems
/// or either cannot be mapped (a file system without `FIEMAP`).
pub fn shared_ranges(a: &File, b: &File) -> Vec<Range<u64>> {
    if !same_block_space(a, b) {
        return Vec::new();
    }
    match (extents(a), extents(b)) {
        (Ok(ea), Ok(eb)) => common_ranges(&ea, &eb),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!("cannot map a file's extents (FIEMAP): {e}");
            Vec::new()
        }
    }
}

/// Where two extent lists (each in file order, not overlapping) map the same offsets
/// to the same blocks.
pub fn common_ranges(a: &[Extent], b: &[Extent]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        let lo = x.logical.max(y.logical);
        let hi = x.end().min(y.end());
        // The same block for each offset: both extents are displaced alike.
        let same_displacement =
            x.physical.wrapping_sub(x.logical) == y.physical.wrapping_sub(y.logical);
        if lo < hi && same_displacement {
            match out.last_mut() {
                Some(prev) if prev.end == lo => prev.end = hi,
                _ => out.push(lo..hi),
            }
        }
        if x.end() <= y.end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The complement of `ranges` (ascending, not overlapping) within `0..size`.
pub fn complement(ranges: &[Range<u64>], size: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in ranges {
        if r.start >= size {
            break;
        }
        if r.start > at {
            out.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < size {
        out.push(at..size);
    }
    out
}

/// `struct btrfs_ioctl_fs_info_args`, what `BTRFS_IOC_FS_INFO` fills: 1024 bytes,
/// the file system's UUID at bytes 16 to 32.
type BtrfsFsInfo = [u8; 1024];

const BTRFS_IOC_FS_INFO: Opcode = opcode::read::<BtrfsFsInfo>(0x94, 31);
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;

/// Whether block addresses of `a` and `b` are addresses in one space: the same device
/// number, or both on one btrfs file system (whose subvolumes each have a device
/// number of their own; its addresses are the file system's, not a device's).
fn same_block_space(a: &File, b: &File) -> bool {
    match (btrfs_fsid(a), btrfs_fsid(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => {
            matches!((a.metadata(), b.metadata()), (Ok(x), Ok(y)) if x.dev() == y.dev())
        }
        _ => false,
    }
}

/// The UUID of the btrfs file system `file` is on; `None` on any other file system.
fn btrfs_fsid(file: &File) -> Option<[u8; 16]> {
    let on_btrfs = rustix::fs::fstatfs(file).is_ok_and(|s| s.f_type as u64 == BTRFS_SUPER_MAGIC);
    if !on_btrfs {
        return None;
    }
    // SAFETY: BTRFS_IOC_FS_INFO fills a `struct btrfs_ioctl_fs_info_args`, 1024 bytes,
    // which `BtrfsFsInfo` is.
    let info = unsafe {
        ioctl(
            file.as_fd(),
            Getter::<BTRFS_IOC_FS_INFO, BtrfsFsInfo>::new(),
        )
    }
    .map_err(|e| tracing::debug!("BTRFS_IOC_FS_INFO: {e}"))
    .ok()?;
    info[16..32].try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
        }
    }

    #[test]
    fn common_ranges_are_where_both_map_an_offset_to_one_block() {
        // a: one extent; b: the same blocks with its middle rewritten elsewhere.
        let a = [e(0, 1000, 300)];
        let b = [e(0, 1000, 100), e(100, 5000, 50), e(150, 1150, 150)];
        assert_eq!(common_ranges(&a, &b), vec![0..100, 150..300]);
        // Adjacent extents of one file that continue each other merge.
        let c = [e(0, 1000, 100), e(100, 1100, 200)];
        assert_eq!(common_ranges(&a, &c), vec![0..300]);
        // The same blocks at another offset are not the same data at that offset.
        assert!(common_ranges(&a, &[e(10, 1000, 290)]).is_empty());
        assert!(common_ranges(&a, &[]).is_empty());
    }

    #[test]
    fn complement_is_what_the_ranges_leave_out() {
        assert_eq!(
            complement(&[10..20, 30..40], 50),
            vec![0..10, 20..30, 40..50]
        );
        let whole = 0..50;
        assert!(complement(std::slice::from_ref(&whole), 50).is_empty());
        assert_eq!(complement(&[], 7), vec![0..7]);
        assert_eq!(complement(&[0..10, 60..70], 50), vec![10..50]);
    }

    #[test]
    fn a_file_shares_its_blocks_with_itself_and_none_with_a_separate_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 256 * 1024]).unwrap();
        let other = dir.path().join("g");
        std::fs::write(&other, vec![7u8; 256 * 1024]).unwrap();
        let f = File::open(&path).unwrap();
        let Ok(mapped) = extents(&f) else {
            eprintln!("skipped: this file system has no FIEMAP");
            return;
        };
        if mapped.is_empty() {
            eprintln!("skipped: the file system maps this file inline or not at all");
            return;
        }
        let again = File::open(&path).unwrap();
        assert_eq!(shared_ranges(&f, &again), vec![0..256 * 1024]);
        assert!(shared_ranges(&f, &File::open(&other).unwrap()).is_empty());
    }
}
