//! PostgreSQL support for shadowcopy: the `postgres` writer (backup mode, copies that
//! carry their own WAL), verification on a sandbox, copies exposed as paused hot
//! standbys and rows extracted from them, restore plans for point-in-time and
//! roll-forward, the WAL archive `archive_command` and `restore_command` call into, and
//! WAL segment arithmetic.

pub mod archive;
pub mod bin;
mod changed_blocks;
pub mod cluster;
mod expose;
pub mod extract;
mod files;
pub mod label;
pub mod log_analysis;
pub mod recovery;
pub mod retention;
mod sandbox;
pub mod wal;
pub mod writer;

pub use cluster::{ClusterLayout, PostgresOptions};
pub use writer::PostgresWriter;
