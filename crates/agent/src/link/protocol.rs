//! What an agent and its backup server say to each other, as JSON over HTTPS (the
//! server's routes under `/v1/agent/`, `/v1/enroll`), and what operators read from the
//! server (`/v1/hosts`, `/v1/jobs`). One definition for both ends.

use serde::{Deserialize, Serialize};
use shadowcopy_catalog::CopyChange;
use shadowcopy_engine::RetentionPolicy;

use crate::job::JobRequest;

/// How long the server may hold a job poll open before it answers "nothing".
pub const LONG_POLL_MAX_SECS: u64 = 30;

/// `POST /v1/enroll`: a host's first call, with the one-time token an administrator
/// made for it and a certificate signing request for the key the agent just made.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub host: String,
    /// The token's secret part (the part before the CA fingerprint).
    pub token: String,
    pub csr_pem: String,
}

/// The agent's certificate, bound to its host name, and the server's CA.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub certificate_pem: String,
    pub ca_pem: String,
    /// When the certificate was issued and when it expires (Unix ms): the agent renews
    /// it two thirds of the way through.
    #[serde(default)]
    pub issued_ms: i64,
    #[serde(default)]
    pub not_after_ms: i64,
}

/// `POST /v1/agent/renew`: a new key's CSR, signed with the caller's current certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// `POST /v1/agent/sync`: the outbox's next changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// The agent's version, shown by `hosts`.
    pub version: String,
    /// The sets of the agent's config.
    #[serde(default)]
    pub sets: Vec<String>,
    /// Forget every copy recorded for this host first: the agent sends all of them again
    /// (its catalog was restored or made anew, and its numbers start below the server's).
    #[serde(default)]
    pub reset: bool,
    pub changes: Vec<CopyChange>,
}

/// The highest change the server has applied for this host (the agent forgets those),
/// and the version of the host's policies (the agent fetches them when it changed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncResponse {
    pub applied_seq: i64,
    #[serde(default)]
    pub policy_version: i64,
}

/// `POST /v1/agent/report`: the agent's sets now (sent every few minutes and soon after
/// its copies change), for the console.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    /// When the agent built it.
    pub built_ms: i64,
    /// Where a restore into a directory may go on this host (`restore --to`).
    pub restore_area: String,
    pub sets: Vec<shadowcopy_engine::status::SetStatus>,
}

/// What the server decides for one set of a host's agent: when it is copied and
/// verified, and which copies stay. It replaces the set's `schedule`,
/// `verify_schedule` and `retention` in the agent's config (a field left out: none).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    pub set: String,
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub verify_schedule: Option<String>,
    #[serde(default)]
    pub retention: Option<RetentionPolicy>,
}

/// `GET /v1/agent/policies`: every policy of the caller's host, with their version.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Policies {
    pub version: i64,
    pub sets: Vec<SetPolicy>,
}

/// A policy as operators list it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostPolicy {
    pub host: String,
    pub policy: SetPolicy,
    pub updated_by: String,
    pub updated_ms: i64,
}

/// A job the server queued for a host, as the agent claims it and operators see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerJob {
    pub id: i64,
    pub host: String,
    pub kind: String,
    /// The set, or `*` when the job names copies rather than a set.
    pub set: String,
    pub request: serde_json::Value,
    /// `queued`, `claimed` (an agent has it), `running`, `done`, `failed`, `lost` (its
    /// agent stopped renewing its lease; an agent that returns still reports how it
    /// ended) or `cancelled`.
    pub state: String,
    /// Who asked: `operator NAME` or `local USER` (the server's command line).
    pub created_by: String,
    pub created_ms: i64,
    pub claimed_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub lease_until_ms: Option<i64>,
    /// The agent's own job that ran it (its `shadowcopy jobs`).
    pub agent_job: Option<i64>,
    pub copy_id: Option<i64>,
    pub result: Option<String>,
    /// How far the agent has got: the phases done, the bytes (while it runs, and at the
    /// end).
    #[serde(default)]
    pub progress: Option<JobProgress>,
}

/// A running job's progress as its agent reports it with each heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct JobProgress {
    /// The copy the job made, once it has an id.
    #[serde(default)]
    pub copy: Option<i64>,
    pub phases: Vec<PhaseDone>,
    /// Bytes copied, hashed or restored so far, of the total.
    #[serde(default)]
    pub bytes: Option<(u64, u64)>,
}

/// A phase that ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PhaseDone {
    pub phase: String,
    pub took_us: u64,
    pub ok: bool,
}

impl ServerJob {
    /// The request as the agent runs it.
    pub fn job_request(&self) -> anyhow::Result<JobRequest> {
        serde_json::from_value(self.request.clone())
            .map_err(|e| anyhow::anyhow!("job {} is not a request this agent knows: {e}", self.id))
    }
}

/// `POST /v1/agent/jobs/{id}/heartbeat`: still at it (the lease is renewed).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobHeartbeat {
    /// The agent's own job running it, once queued there.
    pub agent_job: Option<i64>,
    #[serde(default)]
    pub progress: Option<JobProgress>,
}

/// `POST /v1/agent/jobs/{id}/finish`: how it ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFinish {
    pub ok: bool,
    pub result: String,
    pub copy_id: Option<i64>,
    pub agent_job: Option<i64>,
    #[serde(default)]
    pub progress: Option<JobProgress>,
}

/// `POST /v1/hosts/{host}/jobs`: an operator's job for a host.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    pub request: JobRequest,
}

/// One host as `shadowcopy --server URL hosts` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostInfo {
    pub name: String,
    /// `enrolled`, `revoked`, or `waiting` (a token made, not used yet).
    pub state: String,
    pub enrolled_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub agent_version: Option<String>,
    /// The sets of its agent's config, as last reported.
    #[serde(default)]
    pub sets: Vec<String>,
    pub copies: i64,
    pub usable_copies: i64,
    pub newest_copy_ms: Option<i64>,
    /// Jobs waiting for the host (queued, claimed or running).
    pub open_jobs: i64,
}

/// One path segment of a server URL, percent-encoded: everything but letters, digits and
/// `-_~` (so a name with `/`, `?`, `#` or `..` stays one segment, in the CLI's calls and in
/// the console's links alike).
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
