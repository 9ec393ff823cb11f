//! A file's BLAKE3 built from fixed leaves: the chaining value of every [`LEAF_SIZE`]
//! piece (a complete BLAKE3 subtree, so the leaves merge into exactly the hash that
//! hashing the whole file gives) is kept, and a later hash of a file that shares most
//! of its blocks with this one reads only the leaves that differ and takes the others'
//! values as they were. The manifest's hash stays the plain BLAKE3 of the file.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

/// Bytes per leaf: 16 KiB (sixteen BLAKE3 chunks), so that a database page rewritten
/// here and there costs a few leaves, not a megabyte each; 2 MiB of values per GiB.
pub const LEAF_SIZE: u64 = 16 * 1024;

/// The chaining values of a file's leaves, in order; empty for a file of one leaf or
/// less (hashed whole each time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeafHashes {
    pub leaf_size: u64,
    /// The size of the file they were taken from.
    pub size: u64,
    pub cvs: Vec<ChainingValue>,
}

impl LeafHashes {
    /// The values one after another, as the catalog keeps them.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.cvs.concat()
    }

    /// From [`LeafHashes::to_bytes`]; `None` when `bytes` is not whole values.
    pub fn from_bytes(leaf_size: u64, size: u64, bytes: &[u8]) -> Option<LeafHashes> {
        let chunks = bytes.chunks_exact(32);
        if !chunks.remainder().is_empty() {
            return None;
        }
        let cvs = chunks
            .map(|c| <ChainingValue>::try_from(c).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(LeafHashes {
            leaf_size,
            size,
            cvs,
        })
    }

    /// The value of leaf `i`, when it was a whole leaf of the size used now.
    fn whole_leaf(&self, i: usize) -> Option<&ChainingValue> {
        let whole = (i as u64 + 1) * LEAF_SIZE <= self.size;
        (self.leaf_size == LEAF_SIZE && whole)
            .then(|| self.cvs.get(i))
            .flatten()
    }
}

/// What hashing one file gave.
#[derive(Clone, Debug)]
pub struct FileHash {
    /// The BLAKE3 of the whole file (hex).
    pub blake3: String,
    pub size: u64,
    pub leaves: LeafHashes,
    /// Bytes read from the file (the rest taken from the earlier leaves).
    pub read: u64,
}

/// Leaves an earlier hash of another file gave, and where this file's blocks are that
/// file's blocks (`shared`, ascending): whole leaves inside it are not read again.
pub struct Reuse<'a> {
    pub leaves: &'a LeafHashes,
    pub shared: &'a [Range<u64>],
}

/// Hashes the first `size` bytes of `file` through `buf` (a multiple of
/// [`LEAF_SIZE`]), taking from `reuse` the value of every whole leaf that lies in its
/// shared ranges. A file shorter than `size` is an error.
pub fn hash_file(
    file: &File,
    size: u64,
    reuse: Option<Reuse<'_>>,
    buf: &mut [u8],
) -> io::Result<FileHash> {
    let leaf = LEAF_SIZE as usize;
    assert!(
        buf.len() >= leaf && buf.len().is_multiple_of(leaf),
        "whole leaves"
    );
    if size <= LEAF_SIZE {
        let part = &mut buf[..size as usize];
        file.read_exact_at(part, 0)?;
        return Ok(FileHash {
            blake3: blake3::hash(part).to_hex().to_string(),
            size,
            leaves: LeafHashes {
                leaf_size: LEAF_SIZE,
                size,
                cvs: Vec::new(),
            },
            read: size,
        });
    }
    let count = size.div_ceil(LEAF_SIZE) as usize;
    let whole = (size / LEAF_SIZE) as usize;
    let mut cvs: Vec<Option<ChainingValue>> = vec![None; count];
    let mut shared = reuse
        .as_ref()
        .map_or(&[][..], |r| r.shared)
        .iter()
        .peekable();
    for (i, cv) in cvs.iter_mut().enumerate().take(whole) {
        let start = i as u64 * LEAF_SIZE;
        let end = start + LEAF_SIZE;
        while shared.next_if(|r| r.end <= start).is_some() {}
        let inside = shared
            .peek()
            .is_some_and(|r| r.start <= start && end <= r.end);
        if inside {
            *cv = reuse.as_ref().and_then(|r| r.leaves.whole_leaf(i)).copied();
        }
    }
    // Read the rest in runs of neighbouring leaves, a buffer at a time, the runs ahead
    // announced to the kernel so that scattered reads are in flight together.
    let runs = runs_to_read(&cvs, buf.len() / leaf, size);
    let mut prefetch = Prefetch::new(file, &runs);
    let mut read = 0;
    for (n, run) in runs.iter().enumerate() {
        prefetch.ahead_of(n);
        let len = (run.end - run.start) as usize;
        file.read_exact_at(&mut buf[..len], run.start)?;
        read += len as u64;
        let first = (run.start / LEAF_SIZE) as usize;
        for (k, piece) in buf[..len].chunks(leaf).enumerate() {
            let mut hasher = blake3::Hasher::new();
            hasher.set_input_offset(run.start + (k * leaf) as u64);
            hasher.update(piece);
            cvs[first + k] = Some(hasher.finalize_non_root());
        }
    }
    let cvs: Vec<ChainingValue> = cvs
        .into_iter()
        .map(|cv| cv.expect("every leaf hashed"))
        .collect();
    let left = left_subtree_len(size);
    let root = merge_subtrees_root(
        &subtree(&cvs, 0, left),
        &subtree(&cvs, left, size - left),
        Mode::Hash,
    );
    Ok(FileHash {
        blake3: root.to_hex().to_string(),
        size,
        leaves: LeafHashes {
            leaf_size: LEAF_SIZE,
            size,
            cvs,
        },
        read,
    })
}

/// The byte ranges to read: runs of neighbouring leaves without a value, at most
/// `max_leaves` each, the last one ending at `size`.
fn runs_to_read(cvs: &[Option<ChainingValue>], max_leaves: usize, size: u64) -> Vec<Range<u64>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < cvs.len() {
        if cvs[i].is_some() {
            i += 1;
            continue;
        }
        let mut run = 1;
        while i + run < cvs.len() && cvs[i + run].is_none() && run < max_leaves {
            run += 1;
        }
        let start = i as u64 * LEAF_SIZE;
        runs.push(start..(start + (run as u64) * LEAF_SIZE).min(size));
        i += run;
    }
    runs
}

/// How far ahead of the reading the kernel is told which ranges come next
/// (`POSIX_FADV_WILLNEED`): enough to keep a disk's queue full of scattered reads,
/// little enough not to push the application's pages out of the cache.
const PREFETCH_BYTES: u64 = 64 << 20;

/// The runs announced so far.
struct Prefetch<'a> {
    file: &'a File,
    runs: &'a [Range<u64>],
    /// Runs up to here are announced.
    announced: usize,
    /// Bytes announced and not yet read.
    ahead: u64,
}

impl<'a> Prefetch<'a> {
    fn new(file: &'a File, runs: &'a [Range<u64>]) -> Prefetch<'a> {
        Prefetch {
            file,
            runs,
            announced: 0,
            ahead: 0,
        }
    }

    /// Before run `n` is read: runs announced up to [`PREFETCH_BYTES`] beyond it.
    fn ahead_of(&mut self, n: usize) {
        if let Some(run) = n.checked_sub(1).and_then(|p| self.runs.get(p)) {
            self.ahead = self.ahead.saturating_sub(run.end - run.start);
        }
        while self.announced < self.runs.len()
            && (self.announced <= n || self.ahead < PREFETCH_BYTES)
        {
            let run = &self.runs[self.announced];
            // Only advice: a file system that ignores it is read as it comes.
            let _ = rustix::fs::fadvise(
                self.file,
                run.start,
                std::num::NonZeroU64::new(run.end - run.start),
                rustix::fs::Advice::WillNeed,
            );
            self.ahead += run.end - run.start;
            self.announced += 1;
        }
    }
}

/// The chaining value of the subtree of `len` bytes at `offset`, from the leaves'.
fn subtree(cvs: &[ChainingValue], offset: u64, len: u64) -> ChainingValue {
    if len <= LEAF_SIZE {
        return cvs[(offset / LEAF_SIZE) as usize];
    }
    let left = left_subtree_len(len);
    merge_subtrees_non_root(
        &subtree(cvs, offset, left),
        &subtree(cvs, offset + left, len - left),
        Mode::Hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> File {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        File::open(path).unwrap()
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn the_hash_from_leaves_is_the_files_blake3_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = vec![0u8; 4 * LEAF_SIZE as usize];
        let l = LEAF_SIZE as usize;
        for len in [
            0,
            1,
            l - 1,
            l,
            l + 1,
            2 * l,
            3 * l + 5,
            4 * l,
            5 * l,
            9 * l - 1,
            17 * l + 1,
        ] {
            let bytes = data(len, 3);
            let f = file_of(&dir, "f", &bytes);
            let got = hash_file(&f, len as u64, None, &mut buf).unwrap();
            assert_eq!(
                got.blake3,
                blake3::hash(&bytes).to_hex().to_string(),
                "length {len}"
            );
            assert_eq!(got.read, len as u64);
            let expected_leaves = if len as u64 <= LEAF_SIZE {
                0
            } else {
                len.div_ceil(l)
            };
            assert_eq!(got.leaves.cvs.len(), expected_leaves);
        }
    }

    #[test]
    fn shared_leaves_are_taken_and_the_rest_read() {
        let dir = tempfile::tempdir().unwrap();
        let l = LEAF_SIZE as usize;
        let mut buf = vec![0u8; 2 * l];
        let old = data(10 * l + 100, 1);
        let first = hash_file(
            &file_of(&dir, "old", &old),
            old.len() as u64,
            None,
            &mut buf,
        )
        .unwrap();
        // Leaves 3 and 7 changed; the file also grew.
        let mut new = old.clone();
        new[3 * l + 9] ^= 0xff;
        new[7 * l] ^= 0x01;
        new.extend_from_slice(&data(l, 9));
        let shared = [
            0..3 * l as u64,
            4 * l as u64..7 * l as u64,
            8 * l as u64..10 * l as u64,
        ];
        let reuse = Reuse {
            leaves: &first.leaves,
            shared: &shared,
        };
        let f = file_of(&dir, "new", &new);
        let got = hash_file(&f, new.len() as u64, Some(reuse), &mut buf).unwrap();
        assert_eq!(got.blake3, blake3::hash(&new).to_hex().to_string());
        // Two changed leaves, the old partial leaf and the new one.
        assert_eq!(got.read, (2 * l + l + 100) as u64);
        // The old file's last leaf was partial: never taken, even inside a shared range.
        let past_the_end = [
            0..3 * l as u64,
            4 * l as u64..7 * l as u64,
            8 * l as u64..12 * l as u64,
        ];
        let reuse = Reuse {
            leaves: &first.leaves,
            shared: &past_the_end,
        };
        let again = hash_file(&f, new.len() as u64, Some(reuse), &mut buf).unwrap();
        assert_eq!(again.blake3, got.blake3);
        // A leaf claimed shared but not the same is taken as it was: what sharing
        // promises is trusted, so a wrong promise gives a wrong hash (the full
        // verification catches it).
        let lie = 0..10 * l as u64;
        let reuse = Reuse {
            leaves: &first.leaves,
            shared: std::slice::from_ref(&lie),
        };
        let wrong = hash_file(&f, new.len() as u64, Some(reuse), &mut buf).unwrap();
        assert_ne!(wrong.blake3, got.blake3);
    }

    #[test]
    fn leaf_values_round_trip_through_bytes() {
        let leaves = LeafHashes {
            leaf_size: LEAF_SIZE,
            size: 2 * LEAF_SIZE,
            cvs: vec![[1; 32], [2; 32]],
        };
        let bytes = leaves.to_bytes();
        assert_eq!(
            LeafHashes::from_bytes(LEAF_SIZE, 2 * LEAF_SIZE, &bytes),
            Some(leaves)
        );
        assert_eq!(LeafHashes::from_bytes(LEAF_SIZE, 1, &[0; 33]), None);
    }

    #[test]
    fn a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = file_of(&dir, "f", &data(100, 0));
        let mut buf = vec![0u8; LEAF_SIZE as usize];
        assert!(hash_file(&f, 200, None, &mut buf).is_err());
        assert!(hash_file(&f, 3 * LEAF_SIZE, None, &mut buf).is_err());
    }
}
