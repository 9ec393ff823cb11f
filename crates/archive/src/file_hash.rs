//! A restored file's BLAKE3 computed from its blocks as they are written, in any order
//! and on any thread, rather than by reading the whole file back afterwards.
//!
//! BLAKE3 is a tree over 1 KiB chunks whose left subtrees hold a power of two of them.
//! A file cut into fixed blocks of a power-of-two size (1 MiB by default), every block
//! but the last full, has each block as a subtree of that tree: a block's chaining value
//! is computed where it is opened (`set_input_offset` at its place in the file), and the
//! file's hash is the chaining values merged up the tree once all are in. Files cut
//! otherwise (content-defined chunks) or of one block are hashed by reading them.

use std::sync::Mutex;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

/// The chaining values of one file's blocks, filled in as they are written.
pub(crate) struct BlockTreeHash {
    block_size: u64,
    size: u64,
    values: Mutex<Vec<Option<ChainingValue>>>,
}

impl BlockTreeHash {
    /// For a file of `size` bytes made of blocks of `lengths`, when its hash can be made
    /// from its blocks' chaining values: `block_size` a power of two of at least one
    /// chunk, every block but the last that long, more than one block.
    pub(crate) fn for_blocks(block_size: u32, size: u64, lengths: &[u32]) -> Option<BlockTreeHash> {
        let block_size = u64::from(block_size);
        let shaped = block_size.is_power_of_two()
            && block_size >= blake3::CHUNK_LEN as u64
            && lengths.len() > 1
            && lengths[..lengths.len() - 1]
                .iter()
                .all(|&l| u64::from(l) == block_size)
            && lengths
                .last()
                .is_some_and(|&l| l > 0 && u64::from(l) <= block_size)
            && lengths.iter().map(|&l| u64::from(l)).sum::<u64>() == size;
        shaped.then(|| BlockTreeHash {
            block_size,
            size,
            values: Mutex::new(vec![None; lengths.len()]),
        })
    }

    /// Hashes the block written at `at` (a multiple of the block size).
    pub(crate) fn add(&self, at: u64, data: &[u8]) {
        let value = blake3::Hasher::new()
            .set_input_offset(at)
            .update(data)
            .finalize_non_root();
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = values.get_mut((at / self.block_size) as usize) {
            *slot = Some(value);
        }
    }

    /// The file's BLAKE3, or `None` when a block was never added.
    pub(crate) fn finish(&self) -> Option<blake3::Hash> {
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let left = left_subtree_len(self.size);
        let l = self.subtree(&values, 0, left)?;
        let r = self.subtree(&values, left, self.size - left)?;
        Some(merge_subtrees_root(&l, &r, Mode::Hash))
    }

    /// The chaining value of the `len` bytes from `start`: a block's, or its halves'
    /// merged (the tree's splits fall on block boundaries, being powers of two of at
    /// least a block).
    fn subtree(
        &self,
        values: &[Option<ChainingValue>],
        start: u64,
        len: u64,
    ) -> Option<ChainingValue> {
        if len <= self.block_size {
            return *values.get((start / self.block_size) as usize)?;
        }
        let left = left_subtree_len(len);
        let l = self.subtree(values, start, left)?;
        let r = self.subtree(values, start + left, len - left)?;
        Some(merge_subtrees_non_root(&l, &r, Mode::Hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_u32;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// The blocks added in reverse order, as a restore may write them.
    fn by_blocks(bytes: &[u8], block: usize) -> Option<blake3::Hash> {
        let lengths: Vec<u32> = bytes.chunks(block).map(|c| c.len() as u32).collect();
        let tree = BlockTreeHash::for_blocks(block as u32, bytes.len() as u64, &lengths)?;
        for (n, chunk) in bytes.chunks(block).enumerate().rev() {
            tree.add((n * block) as u64, chunk);
        }
        tree.finish()
    }

    #[test]
    fn the_hash_from_blocks_is_the_hash_of_the_file() {
        let bytes = data(9 * 4096 + 1000);
        // Sizes around every shape of the tree: two blocks, a power of two of them, one
        // more, a short last block of one byte or of a few chunks.
        for block in [1024usize, 4096, 8192] {
            for len in [
                block + 1,
                2 * block,
                2 * block + 1,
                3 * block,
                4 * block,
                4 * block + 1,
                5 * block + 777,
                8 * block,
                9 * block - 1,
                bytes.len().min(9 * block + 5),
            ] {
                let len = len.min(bytes.len());
                let input = &bytes[..len];
                assert_eq!(
                    by_blocks(input, block),
                    Some(blake3::hash(input)),
                    "block {block}, {len} bytes"
                );
            }
        }
    }

    #[test]
    fn files_of_another_shape_are_left_to_be_read() {
        // One block, a block size that is no power of two or under a chunk, a short
        // block before the last, lengths that do not add up to the size.
        assert!(BlockTreeHash::for_blocks(4096, 4096, &[4096]).is_none());
        assert!(BlockTreeHash::for_blocks(3000, 6000, &[3000, 3000]).is_none());
        assert!(BlockTreeHash::for_blocks(512, 1024, &[512, 512]).is_none());
        assert!(BlockTreeHash::for_blocks(4096, 8000, &[4000, 4000]).is_none());
        assert!(BlockTreeHash::for_blocks(4096, 9000, &[4096, 4096]).is_none());
        assert!(BlockTreeHash::for_blocks(4096, 8192, &[4096, 4096]).is_some());
    }

    #[test]
    fn a_block_never_added_gives_no_hash() {
        let bytes = data(3 * 4096);
        let tree = BlockTreeHash::for_blocks(4096, bytes.len() as u64, &[4096; 3]).unwrap();
        tree.add(0, &bytes[..4096]);
        tree.add(8192, &bytes[8192..]);
        assert!(tree.finish().is_none());
        tree.add(4096, &bytes[4096..8192]);
        assert_eq!(tree.finish(), Some(blake3::hash(&bytes)));
    }
}
