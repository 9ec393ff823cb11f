//! `shadowcopy-engine`: the use cases every front end runs the same way (the CLI today;
//! the agent, the backup server and the web console next). One module per use case:
//! each takes one options type (clap flags and serde JSON alike, unknown fields refused)
//! and returns a typed, `Serialize` report; progress goes out through [`Progress`].
//! Front ends parse and print; nothing here prints.

pub mod archive;
pub mod archive_logs;
mod bind_mount;
pub mod config;
pub mod copies;
pub mod create;
pub mod delete;
pub mod engine;
pub mod error;
pub mod expose;
pub mod inspect;
pub mod mariadb;
pub mod postgres;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod set;
pub mod status;
pub mod verify;

pub use config::{Config, HumanDuration};
pub use copies::UsableCopy;
pub use create::{CreateReport, PhaseTime, PlannedSet};
pub use delete::{DeleteOptions, DeleteReport, Deleted, PruneOptions, PruneReport};
pub use engine::{default_catalog_dir, Engine, EngineOptions, WaitOptions};
pub use error::UsageError;
pub use expose::{Closed, ExposeRequest};
pub use progress::{Progress, Silent};
pub use restore::{RestoreOptions, RestoreReport};
pub use retention::{Decision, RetentionPolicy};
pub use set::{CreateOptions, SetSpec};
pub use verify::VerifyOutcome;

/// A duration as people write it (`10s`, `500ms`, `2m`), for clap.
pub fn parse_duration(s: &str) -> Result<HumanDuration, String> {
    humantime::parse_duration(s)
        .map(HumanDuration)
        .map_err(|e| e.to_string())
}

/// A duration in whole microseconds, as reports give durations in JSON (`took_us`).
fn micros<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}
