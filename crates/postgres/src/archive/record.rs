//! The integrity record at the start of each stored file (a zstd skippable frame: magic,
//! version, length, BLAKE3 and name of the content) and reading a stored file back
//! through it. The format is in the module documentation of `archive`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::*;

/// The integrity record kept in the skippable frame at the start of each stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) len: u64,
    pub(super) hash: blake3::Hash,
    pub(super) name: String,
}

impl Record {
    pub(super) fn encode(&self) -> Vec<u8> {
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
    pub(super) fn read(r: &mut impl Read) -> io::Result<Result<Record, String>> {
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
pub(super) fn open_stored(path: &Path, name: &str) -> Result<Option<(BufReader<File>, Record)>> {
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
pub(super) fn decode_body(
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
