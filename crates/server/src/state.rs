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
    /// Refused enrolments per caller address, in the current window.
    pub enrol_refusals: Mutex<HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
}

/// Refused enrolments one address may make in [`ENROL_WINDOW`] before it is turned away
/// until the window ends (a token is 192 bits: this stops floods, not guessing).
pub const ENROL_REFUSALS: u32 = 10;
pub const ENROL_WINDOW: Duration = Duration::from_secs(60);

impl AppState {
    /// Whether `ip` has used up its refused enrolments for now.
    pub fn enrol_blocked(&self, ip: std::net::IpAddr) -> bool {
        let mut map = self
            .enrol_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        map.retain(|_, (since, _)| now.duration_since(*since) < ENROL_WINDOW);
        map.get(&ip).is_some_and(|(_, n)| *n >= ENROL_REFUSALS)
    }

    /// Counts a refused enrolment from `ip`.
    pub fn enrol_refused(&self, ip: std::net::IpAddr) {
        let mut map = self
            .enrol_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(ip).or_insert((std::time::Instant::now(), 0));
        entry.1 += 1;
    }

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
