//! Opening sealed blocks as a restore and `verify --read-data` read them: decrypted in
//! place in the downloaded bytes, decompressed into one buffer reused for every block a
//! thread opens (sized by the index's raw length: no growing, no new pages per block),
//! and kept only if the bytes hash to the block's id (or, for a restore, if the file
//! they go into hashes to the manifest's BLAKE3).

use crate::crypto::{BlockId, MasterKey};
use crate::error::ArchiveError;

/// One thread's means to open blocks (a zstd context and an output buffer).
pub(crate) struct BlockOpener {
    decompressor: zstd::bulk::Decompressor<'static>,
    out: Vec<u8>,
}

impl BlockOpener {
    pub(crate) fn new() -> Result<BlockOpener, ArchiveError> {
        Ok(BlockOpener {
            decompressor: zstd::bulk::Decompressor::new()?,
            out: Vec::new(),
        })
    }

    /// The bytes of block `id` (`raw_length` of them, as the index says) from `sealed`,
    /// its `nonce || ciphertext || tag` in `pack`, which is decrypted in place: `sealed`
    /// holds no ciphertext afterwards.
    pub(crate) fn open(
        &mut self,
        key: &MasterKey,
        id: &BlockId,
        raw_length: u32,
        sealed: &mut [u8],
        pack: &str,
    ) -> Result<&[u8], ArchiveError> {
        self.open_for_checked_file(key, id, raw_length, sealed, pack)?;
        if key.block_id(&self.out) != *id {
            return Err(ArchiveError::Damaged {
                what: format!("block {} in pack {pack}", id.hex()),
                why: "its bytes do not hash to its id".into(),
            });
        }
        Ok(&self.out)
    }

    /// As [`BlockOpener::open`] without hashing the bytes against the id, for a restore,
    /// which checks every file it writes against the BLAKE3 the manifest gives: the
    /// sealing already proves the bytes are what a holder of the key sealed as this
    /// block (the associated data names the id), and a wrong block fails its file's
    /// check. Hashing every block twice was a third of a restore's CPU.
    pub(crate) fn open_for_checked_file(
        &mut self,
        key: &MasterKey,
        id: &BlockId,
        raw_length: u32,
        sealed: &mut [u8],
        pack: &str,
    ) -> Result<&[u8], ArchiveError> {
        let what = || format!("block {} in pack {pack}", id.hex());
        let packed =
            key.open_in_place(sealed, format!("block {}", id.hex()).as_bytes(), &what())?;
        self.out.clear();
        self.out.reserve(raw_length as usize);
        let n = self
            .decompressor
            .decompress_to_buffer(packed, &mut self.out)
            .map_err(|e| ArchiveError::Damaged {
                what: what(),
                why: format!("it does not decompress into its {raw_length} bytes: {e}"),
            })?;
        if n != raw_length as usize {
            return Err(ArchiveError::Damaged {
                what: what(),
                why: format!("it decompresses into {n} bytes, not its {raw_length}"),
            });
        }
        Ok(&self.out)
    }

    /// The bytes of the block opened last.
    pub(crate) fn opened(&self) -> &[u8] {
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_block(key: &MasterKey, data: &[u8]) -> (BlockId, Vec<u8>) {
        let id = key.block_id(data);
        let packed = zstd::bulk::compress(data, 3).unwrap();
        (
            id,
            key.seal(&packed, format!("block {}", id.hex()).as_bytes()),
        )
    }

    #[test]
    fn a_block_opens_into_its_bytes_and_the_buffer_is_reused() {
        let key = MasterKey::generate();
        let mut opener = BlockOpener::new().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let small = b"a small block".to_vec();
        for data in [&big, &small, &big] {
            let (id, mut sealed) = sealed_block(&key, data);
            let got = opener
                .open(&key, &id, data.len() as u32, &mut sealed, "p")
                .unwrap();
            assert_eq!(got, &data[..]);
        }
    }

    #[test]
    fn a_wrong_block_is_refused_with_what_is_wrong() {
        let key = MasterKey::generate();
        let mut opener = BlockOpener::new().unwrap();
        let data = vec![7u8; 4096];
        let (id, sealed) = sealed_block(&key, &data);
        // Another block's id: the sealing is bound to the id.
        let other = key.block_id(b"other");
        let err = opener
            .open(&key, &other, 4096, &mut sealed.clone(), "p")
            .unwrap_err();
        assert!(err.to_string().contains("does not authenticate"), "{err}");
        // A flipped bit.
        let mut flipped = sealed.clone();
        flipped[40] ^= 1;
        let err = opener.open(&key, &id, 4096, &mut flipped, "p").unwrap_err();
        assert!(err.to_string().contains("does not authenticate"), "{err}");
        // An index that gives the wrong raw length.
        let err = opener
            .open(&key, &id, 4000, &mut sealed.clone(), "p")
            .unwrap_err();
        assert!(err.to_string().contains("4000"), "{err}");
        let err = opener
            .open(&key, &id, 5000, &mut sealed.clone(), "p")
            .unwrap_err();
        assert!(err.to_string().contains("not its 5000"), "{err}");
        // Sealed with another key.
        let err = opener
            .open(&MasterKey::generate(), &id, 4096, &mut sealed.clone(), "p")
            .unwrap_err();
        assert!(err.to_string().contains("does not authenticate"), "{err}");
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_id_are_refused() {
        // Sealed under the right id, but the bytes are another block's: only a key
        // holder could make this; the opener still refuses it.
        let key = MasterKey::generate();
        let id = key.block_id(b"what the id names");
        let packed = zstd::bulk::compress(b"something else", 3).unwrap();
        let mut sealed = key.seal(&packed, format!("block {}", id.hex()).as_bytes());
        let err = BlockOpener::new()
            .unwrap()
            .open(&key, &id, 14, &mut sealed, "p")
            .unwrap_err();
        assert!(err.to_string().contains("do not hash to its id"), "{err}");
    }
}
