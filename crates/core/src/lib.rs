//! `shadowcopy-core`: the model of shadow sets, the `Writer` and `Provider` contracts, and
//! the coordinator that drives one shadow set through the VSS-style sequence
//! (identify → prepare → freeze → commit → thaw → post-snapshot → verify →
//! backup-complete → done) and restores copies safely.
//!
//! The core knows no concrete writer, provider or catalog: writers and providers come in
//! as trait objects, and every state transition goes to a [`Journal`] (the catalog crate
//! implements it) *before* it happens, so an interrupted run can be cleaned up later.

pub mod coordinator;
pub mod dbfiles;
pub mod error;
pub mod events;
pub mod extents;
pub mod extract;
#[cfg(test)]
mod fakes;
pub mod journal;
pub mod leaf_hash;
pub mod model;
pub mod pathjson;
pub mod priority;
pub mod process;
pub mod provider;
pub mod restore;
pub mod safe_fs;
pub mod secret;
pub mod swap;
pub mod verify;
pub mod writer;

pub use coordinator::{Coordinator, CreatedCopy, ShadowSetRequest};
pub use error::{BoxError, Error, ErrorKind};
pub use events::{EventSink, NoEvents};
pub use journal::{Journal, JournalError, NewCopy};
pub use model::*;
pub use provider::{Capabilities, CommitControl, CommitRequest, Provider, Unsupported};
pub use restore::{RestoreOutcome, RestoreRequest, Restorer};
pub use writer::{
    ExposeOptions, KeptCopies, KeptCopiesUnknown, KeptCopy, LogsOffHost, RestoreMode, RestorePlan,
    Writer,
};
