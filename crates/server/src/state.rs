//! What every route shares: the central catalog's pool, the CA, the job lease, and the
//! wake-up for agents waiting on a job poll.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;

use crate::ca::Authority;

pub struct AppState {
    pub db: Pool,
    pub ca: Authority,
    /// How long a claimed job stays an agent's without a heartbeat.
    pub lease: Duration,
    /// Woken when a job is queued (waiting polls look again).
    pub queued: Notify,
}
