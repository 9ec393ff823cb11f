//! The repository's objects as types (docs/archive-format.md): `config`, pack headers,
//! indexes and manifests, and where each lives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::crypto::BlockId;

/// The format this version writes and reads.
pub const VERSION: u32 = 1;
pub const FORMAT: &str = "shadowcopy-archive";

/// `config`: what the repository is (plain JSON; nothing secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub format: String,
    pub version: u32,
    /// Random, 32 hex: binds key files to this repository.
    pub id: String,
    pub created_ms: i64,
    /// Fixed block size for database files.
    pub block_size: u32,
    pub chunker: Chunker,
    /// A pack is closed at this size.
    pub pack_size: u32,
    pub compression: String,
}

/// FastCDC sizes for files that are not database files.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Chunker {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl RepoConfig {
    pub fn new(id: String, created_ms: i64) -> RepoConfig {
        RepoConfig {
            format: FORMAT.into(),
            version: VERSION,
            id,
            created_ms,
            block_size: 1 << 20,
            chunker: Chunker {
                min: 256 << 10,
                avg: 1 << 20,
                max: 4 << 20,
            },
            pack_size: 32 << 20,
            compression: "zstd".into(),
        }
    }

    /// Refuses a config this version cannot work with (another format or version,
    /// sizes out of bounds) with what it found.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("its format is {:?}, not {FORMAT:?}", self.format));
        }
        if self.version != VERSION {
            return Err(format!(
                "it is version {}; this shadowcopy reads version {VERSION}",
                self.version
            ));
        }
        let c = self.chunker;
        let sane = |n: u32| (4096..=64 << 20).contains(&n);
        let sizes_ok = sane(self.block_size)
            && sane(c.min)
            && sane(c.avg)
            && sane(c.max)
            && c.min <= c.avg
            && c.avg <= c.max
            && (1 << 20..=256 << 20).contains(&self.pack_size);
        if !sizes_ok || self.compression != "zstd" {
            return Err("its block, chunk or pack sizes are out of bounds".into());
        }
        Ok(())
    }
}

/// How a file is cut into blocks.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Cut {
    /// Fixed, aligned blocks (database files).
    Fixed,
    /// Content-defined chunks (FastCDC).
    Cdc,
}

/// Where a sealed block is in its pack.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlockEntry {
    pub id: BlockId,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
}

/// A pack's header (sealed at its end).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PackHeader {
    pub blocks: Vec<BlockEntry>,
}

/// One pack in an index.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IndexedPack {
    pub id: String,
    /// The pack's size in bytes.
    pub size: u64,
    pub blocks: Vec<BlockEntry>,
}

/// `index/<id>`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub packs: Vec<IndexedPack>,
}

/// One file of an archived copy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    #[serde(with = "shadowcopy_core::pathjson")]
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    /// The file's plain BLAKE3 (hex), as the catalog records it.
    pub blake3: String,
    pub cut: Cut,
    pub blocks: Vec<BlockId>,
}

/// A directory or symlink of an archived copy (at or below its directory components):
/// what a restore recreates besides the files, with its mode and owner.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TreeRecord {
    #[serde(with = "shadowcopy_core::pathjson")]
    pub path: PathBuf,
    /// Where a symlink points; `None` for a directory.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "shadowcopy_core::pathjson::option"
    )]
    pub symlink: Option<PathBuf>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `manifests/<id>`: one archived copy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub archived_ms: i64,
    pub host: String,
    pub set: String,
    pub origin: String,
    /// The copy's id in its host's catalog.
    pub copy_id: i64,
    pub created_ms: i64,
    pub provider: String,
    /// The set spec as the catalog holds it (no secrets).
    pub spec: serde_json::Value,
    /// What the writers reported (as `show --json`).
    pub components: serde_json::Value,
    /// The indexes that list this copy's blocks.
    pub indexes: Vec<String>,
    pub files: Vec<FileRecord>,
    /// Its directories and symlinks.
    #[serde(default)]
    pub tree: Vec<TreeRecord>,
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Object names below the repository's prefix.
pub mod names {
    pub const CONFIG: &str = "config";
    pub const KEYS: &str = "keys";
    pub const PACKS: &str = "packs";
    pub const INDEX: &str = "index";
    pub const MANIFESTS: &str = "manifests";
    pub const CONDEMNED: &str = "condemned";

    pub fn key(id: &str) -> String {
        format!("{KEYS}/{id}")
    }

    pub fn pack(id: &str) -> String {
        format!("{PACKS}/{}/{id}", &id[..2])
    }

    pub fn index(id: &str) -> String {
        format!("{INDEX}/{id}")
    }

    pub fn manifest(id: &str) -> String {
        format!("{MANIFESTS}/{id}")
    }

    pub fn condemned(id: &str) -> String {
        format!("{CONDEMNED}/{id}")
    }
}
