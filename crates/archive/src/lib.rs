//! `shadowcopy-archive`: copies kept off the host, in a repository on S3-compatible
//! object storage or a directory (docs/archive-format.md): incremental (fixed blocks for
//! database files, FastCDC chunks for the rest, each block stored once), compressed
//! (zstd), encrypted and authenticated (XChaCha20-Poly1305 per block; keyed BLAKE3 ids;
//! the master key sealed by passphrases through argon2id), with no lock objects (the
//! manifest that makes a copy archived is written last and only if absent).
//!
//! Modules: [`format`] (the objects), [`crypto`] (keys and sealing), [`store`] (object
//! storage), [`repo`] (init, open, list, keys), [`push`], [`restore`] and [`verify`]
//! (both open blocks through `block`; a restore hashes files through `file_hash` and
//! finishes them through `finishing`),
//! [`prune`] (two phases, a grace period, one pruner at a time), [`logs`] (a log
//! archive's files mirrored).

mod block;
pub mod crypto;
pub mod error;
mod file_hash;
mod finishing;
pub mod format;
pub mod logs;
pub mod prune;
pub mod push;
pub mod repo;
pub mod restore;
pub mod store;
pub mod verify;

pub use error::ArchiveError;
pub use format::Cut;
pub use logs::LogsReport;
pub use prune::PruneReport;
pub use push::{PushReport, PushSource, SourceFile};
pub use repo::{init, ArchivedCopy, Initialized, KeyInfo, Repository};
pub use restore::RestoreReport;
pub use store::Store;
pub use verify::VerifyReport;

/// A duration in whole microseconds, as reports give durations in JSON (`took_us`).
fn micros<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}
