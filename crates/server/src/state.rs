//! What every route shares: the central catalog's pool, the CA, the job lease, and the
//! wake-ups of agents waiting on a job poll, one per host (a job queued for one host
//! wakes only that host's poll).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;

use crate::ca::Authority;

pub struct AppState {
    pub db: Pool,
    pub ca: Authority,
    /// How long a claimed job stays an agent's without a heartbeat.
    pub lease: Duration,
    /// How long the agents' certificates are valid.
    pub agent_cert_lifetime: Duration,
    /// The URL agents and operators reach this server by (its first `--name` and port),
    /// shown in the commands the console prints.
    pub url: String,
    /// Per host: woken when a job is queued for it (its waiting poll looks again).
    pub queued: Mutex<HashMap<String, Arc<Notify>>>,
}

impl AppState {
    /// The wake-up of `host`'s polls.
    pub fn queued_for(&self, host: &str) -> Arc<Notify> {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .clone()
    }
}
