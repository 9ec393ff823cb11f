//! Pushing a copy into the archive: files cut into blocks (fixed for database files,
//! FastCDC for the rest), only blocks the repository lacks sealed into packs and
//! uploaded (two at a time, multipart), then the index of the new packs, then the
//! manifest, written only if absent. A file whose BLAKE3 equals the one the previous
//! archived copy of the set recorded takes that file's blocks without being read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::crypto::{hex, BlockId};
use crate::error::ArchiveError;
use crate::format::{
    names, BlockEntry, Cut, FileRecord, Index, IndexedPack, Manifest, PackHeader, VERSION,
};
use crate::repo::{now_ms, Repository};

/// A copy to push, as the engine reads it from the catalog and the provider.
#[derive(Clone, Debug)]
pub struct PushSource {
    pub host: String,
    pub set: String,
    pub origin: String,
    pub copy_id: i64,
    pub created_ms: i64,
    pub provider: String,
    pub spec: serde_json::Value,
    pub components: serde_json::Value,
    pub files: Vec<SourceFile>,
    /// Its directories and symlinks (with modes and owners).
    pub tree: Vec<crate::format::TreeRecord>,
}

/// One file of the copy.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The original path (what a restore recreates).
    pub path: PathBuf,
    /// Where the copy's bytes are read.
    pub read_from: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    /// The BLAKE3 the catalog recorded, when verification ran: the read bytes must match.
    pub blake3: Option<String>,
    pub cut: Cut,
}

/// What a push did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushReport {
    pub manifest: String,
    pub files: usize,
    /// Files unchanged since the previous archived copy of the set: not read.
    pub files_unchanged: usize,
    pub bytes: u64,
    /// Bytes read from the copy.
    pub bytes_read: u64,
    pub blocks: usize,
    pub blocks_new: usize,
    /// Bytes sent to the store (sealed, compressed).
    pub bytes_uploaded: u64,
    pub packs: usize,
    #[serde(rename = "took_us", serialize_with = "crate::micros")]
    pub took: Duration,
}

/// A pack being filled.
#[derive(Default)]
struct Packer {
    bytes: Vec<u8>,
    header: PackHeader,
}

impl Packer {
    fn add(&mut self, id: BlockId, sealed: &[u8], raw_length: usize) {
        self.header.blocks.push(BlockEntry {
            id,
            offset: self.bytes.len() as u64,
            length: sealed.len() as u32,
            raw_length: raw_length as u32,
        });
        self.bytes.extend_from_slice(sealed);
    }
}

/// A pack's random id (32 hex).
fn pack_id() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    hex(&bytes)
}

/// Packs uploaded at once (bounds memory: each is up to `pack_size` plus a block).
const UPLOADS_IN_FLIGHT: usize = 2;

struct Pusher<'r> {
    repo: &'r Repository,
    known: HashMap<BlockId, std::sync::Arc<str>>,
    added: HashSet<BlockId>,
    packer: Packer,
    packs: Vec<IndexedPack>,
    uploads: VecDeque<tokio::task::JoinHandle<Result<(), ArchiveError>>>,
    uploaded: u64,
}

impl Pusher<'_> {
    /// Stores a block unless the repository (or this push) has it.
    async fn block(&mut self, data: &[u8]) -> Result<BlockId, ArchiveError> {
        let id = self.repo.key.block_id(data);
        if self.known.contains_key(&id) || !self.added.insert(id) {
            return Ok(id);
        }
        let packed = zstd::bulk::compress(data, 3)?;
        let sealed = self
            .repo
            .key
            .seal(&packed, format!("block {}", id.hex()).as_bytes());
        self.packer.add(id, &sealed, data.len());
        if self.packer.bytes.len() >= self.repo.config.pack_size as usize {
            self.close_pack().await?;
        }
        Ok(id)
    }

    /// Seals the header onto the pack and uploads it.
    async fn close_pack(&mut self) -> Result<(), ArchiveError> {
        if self.packer.header.blocks.is_empty() {
            return Ok(());
        }
        let Packer { mut bytes, header } = std::mem::take(&mut self.packer);
        let sealed = self.repo.key.seal(
            &serde_json::to_vec(&header).expect("serializes"),
            b"pack-header",
        );
        bytes.extend_from_slice(&sealed);
        bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        let id = pack_id();
        self.packs.push(IndexedPack {
            id: id.clone(),
            size: bytes.len() as u64,
            blocks: header.blocks,
        });
        self.uploaded += bytes.len() as u64;
        while self.uploads.len() >= UPLOADS_IN_FLIGHT {
            self.wait_upload().await?;
        }
        let store = self.repo.store.clone();
        self.uploads.push_back(
            self.repo
                .runtime
                .spawn(async move { store.put_large(&names::pack(&id), bytes).await }),
        );
        Ok(())
    }

    async fn wait_upload(&mut self) -> Result<(), ArchiveError> {
        if let Some(upload) = self.uploads.pop_front() {
            upload
                .await
                .map_err(|e| ArchiveError::Io(std::io::Error::other(e)))??;
        }
        Ok(())
    }
}

impl Repository {
    /// Pushes `source`; `progress(done, total)` in bytes.
    pub fn push(
        &self,
        source: &PushSource,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<PushReport, ArchiveError> {
        let started = Instant::now();
        let manifest_id = self.key.name(&[
            "manifest",
            &source.host,
            &source.copy_id.to_string(),
            &source.created_ms.to_string(),
        ]);
        let manifest_name = names::manifest(&manifest_id);
        self.runtime.block_on(async {
            if self.store.get(&manifest_name).await?.is_some() {
                return Err(ArchiveError::AlreadyArchived {
                    copy: source.copy_id,
                    manifest: manifest_id.clone(),
                });
            }
            let blocks = self.blocks(false).await?;
            let previous = self
                .manifests_checked()
                .await?
                .0
                .into_iter()
                .rfind(|(_, m)| {
                    m.host == source.host && m.set == source.set && m.created_ms < source.created_ms
                })
                .map(|(_, m)| m);
            let before: HashMap<&PathBuf, &FileRecord> = previous
                .as_ref()
                .map(|m| m.files.iter().map(|f| (&f.path, f)).collect())
                .unwrap_or_default();
            let mut pusher = Pusher {
                repo: self,
                known: blocks
                    .iter()
                    .map(|(id, l)| (*id, l.index.clone()))
                    .collect(),
                added: HashSet::new(),
                packer: Packer::default(),
                packs: Vec::new(),
                uploads: VecDeque::new(),
                uploaded: 0,
            };
            let total: u64 = source.files.iter().map(|f| f.size).sum();
            let mut done = 0u64;
            let mut report = PushReport {
                manifest: manifest_id.clone(),
                files: source.files.len(),
                files_unchanged: 0,
                bytes: total,
                bytes_read: 0,
                blocks: 0,
                blocks_new: 0,
                bytes_uploaded: 0,
                packs: 0,
                took: Duration::ZERO,
            };
            let mut files = Vec::with_capacity(source.files.len());
            for file in &source.files {
                let unchanged = before.get(&file.path).filter(|prev| {
                    file.blake3.as_deref() == Some(prev.blake3.as_str())
                        && prev.size == file.size
                        && prev.cut == file.cut
                        && prev.blocks.iter().all(|b| pusher.known.contains_key(b))
                });
                let (block_ids, blake3) = match unchanged {
                    Some(prev) => {
                        report.files_unchanged += 1;
                        (prev.blocks.clone(), prev.blake3.clone())
                    }
                    None => {
                        let read = read_file(
                            &mut pusher,
                            file,
                            self.config.block_size,
                            self.config.chunker,
                            &mut |n| {
                                done += n;
                                progress(done, total);
                            },
                        )
                        .await?;
                        report.bytes_read += file.size;
                        read
                    }
                };
                if unchanged.is_some() {
                    done += file.size;
                    progress(done, total);
                }
                report.blocks += block_ids.len();
                files.push(FileRecord {
                    path: file.path.clone(),
                    mode: file.mode,
                    uid: file.uid,
                    gid: file.gid,
                    size: file.size,
                    mtime_ns: file.mtime_ns,
                    blake3,
                    cut: file.cut,
                    blocks: block_ids,
                });
            }
            pusher.close_pack().await?;
            while !pusher.uploads.is_empty() {
                pusher.wait_upload().await?;
            }
            report.blocks_new = pusher.added.len();
            report.packs = pusher.packs.len();
            report.bytes_uploaded = pusher.uploaded;
            // The index of the new packs, once they are all stored.
            let mut indexes: Vec<String> = files
                .iter()
                .flat_map(|f| f.blocks.iter())
                .filter_map(|b| pusher.known.get(b).map(|i| i.to_string()))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if !pusher.packs.is_empty() {
                let index_id = pack_id();
                let index = Index {
                    packs: std::mem::take(&mut pusher.packs),
                };
                let sealed = self.seal_json(&index, &format!("index {index_id}"));
                self.store.put(&names::index(&index_id), sealed).await?;
                indexes.push(index_id);
            }
            indexes.sort();
            let manifest = Manifest {
                version: VERSION,
                archived_ms: now_ms(),
                host: source.host.clone(),
                set: source.set.clone(),
                origin: source.origin.clone(),
                copy_id: source.copy_id,
                created_ms: source.created_ms,
                provider: source.provider.clone(),
                spec: source.spec.clone(),
                components: source.components.clone(),
                indexes,
                files,
                tree: source.tree.clone(),
            };
            let sealed = self.seal_json(&manifest, &format!("manifest {manifest_id}"));
            if !self.store.put_new(&manifest_name, sealed).await? {
                return Err(ArchiveError::AlreadyArchived {
                    copy: source.copy_id,
                    manifest: manifest_id.clone(),
                });
            }
            report.took = started.elapsed();
            Ok(report)
        })
    }
}

/// Reads one file of the copy (never through a symlink), cuts it, stores its blocks;
/// its block ids and BLAKE3, which must match the catalog's when it has one.
async fn read_file(
    pusher: &mut Pusher<'_>,
    file: &SourceFile,
    block_size: u32,
    chunker: crate::format::Chunker,
    progress: &mut dyn FnMut(u64),
) -> Result<(Vec<BlockId>, String), ArchiveError> {
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&file.read_from)
        .map_err(|e| {
            ArchiveError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read {} of the copy: {e}", file.read_from.display()),
            ))
        })?;
    let mut hasher = blake3::Hasher::new();
    let mut ids = Vec::new();
    match file.cut {
        Cut::Fixed => {
            let mut reader = std::io::BufReader::with_capacity(block_size as usize, handle);
            let mut block = vec![0u8; block_size as usize];
            loop {
                let n = read_full(&mut reader, &mut block)?;
                if n == 0 {
                    break;
                }
                hasher.update(&block[..n]);
                ids.push(pusher.block(&block[..n]).await?);
                progress(n as u64);
                if n < block.len() {
                    break;
                }
            }
        }
        Cut::Cdc => {
            let chunks = fastcdc::v2020::StreamCDC::new(
                handle,
                chunker.min as usize,
                chunker.avg as usize,
                chunker.max as usize,
            );
            for chunk in chunks {
                let chunk =
                    chunk.map_err(|e| ArchiveError::Io(std::io::Error::other(e.to_string())))?;
                hasher.update(&chunk.data);
                ids.push(pusher.block(&chunk.data).await?);
                progress(chunk.length as u64);
            }
        }
    }
    let blake3 = hasher.finalize().to_hex().to_string();
    if let Some(recorded) = &file.blake3 {
        if *recorded != blake3 {
            return Err(ArchiveError::Damaged {
                what: format!("{} in the copy", file.path.display()),
                why: format!(
                    "its BLAKE3 is {blake3}, not the {recorded} its verification recorded; verify the copy (`shadowcopy verify`)"
                ),
            });
        }
    }
    Ok((ids, blake3))
}

/// Fills `buf` unless the file ends first; the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
