//! What administrators do, from the server's command line (`shadowcopy server enroll`,
//! `revoke`, `token`) or from the API with an admin token: make a host's one-time
//! enrolment token, cut a host off, make or revoke operators' API tokens. Also the
//! enrolment itself (the token spent, the CSR signed) and the audit log every
//! destructive or privileged action goes to.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use shadowcopy_agent::link::identity::{
    check_host_name, hex, sha256, Token, ENROLL_PREFIX, OPERATOR_PREFIX,
};
use shadowcopy_agent::link::protocol::{EnrollRequest, EnrollResponse, HostInfo};
use shadowcopy_engine::UsageError;

use crate::auth::Role;
use crate::ca::{Authority, Signed};

/// Writes one line of the audit log.
pub async fn audit(
    db: &impl GenericClient,
    actor: &str,
    action: &str,
    host: Option<&str>,
    detail: serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO audit (actor, action, host, detail) VALUES ($1, $2, $3, $4)",
        &[&actor, &action, &host, &detail],
    )
    .await?;
    Ok(())
}

fn secret() -> String {
    hex(&rand::random::<[u8; 24]>())
}

/// Makes a one-time token for `host` to enrol with, valid for `ttl`; the host is
/// recorded (waiting) if it is new.
pub async fn enroll_token(
    db: &mut deadpool_postgres::Object,
    ca: &Authority,
    host: &str,
    ttl: Duration,
    actor: &str,
) -> anyhow::Result<String> {
    check_host_name(host)?;
    if ttl.is_zero() || ttl > Duration::from_secs(7 * 24 * 3600) {
        return Err(UsageError::new("a token's lifetime must be between 1 s and 7 days").into());
    }
    let secret = secret();
    let tx = db.transaction().await?;
    tx.execute(
        "INSERT INTO hosts (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        &[&host],
    )
    .await?;
    tx.execute(
        "INSERT INTO enroll_tokens (secret_hash, host, created_by, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        &[
            &sha256(secret.as_bytes()).as_slice(),
            &host,
            &actor,
            &ttl.as_secs_f64(),
        ],
    )
    .await?;
    audit(
        &tx,
        actor,
        "enroll-token",
        Some(host),
        serde_json::json!({ "ttl_secs": ttl.as_secs() }),
    )
    .await?;
    tx.commit().await?;
    Ok(Token::format(ENROLL_PREFIX, &secret, &ca.pin()))
}

/// Why an enrolment was refused: logged in full, answered as one message.
#[derive(Debug, thiserror::Error)]
#[error("the enrolment token is not valid for this host (unknown, used, expired, or made for another host name); ask for a new one: shadowcopy server enroll HOST")]
pub struct EnrollRefused {
    pub why: String,
}

/// Spends the token and signs the agent's certificate, in one transaction: a refused
/// enrolment (bad token, bad request) changes nothing. The host's earlier certificates
/// are revoked, and the copies recorded for it forgotten (the new agent's outbox sends
/// every copy it holds).
pub async fn enroll(
    db: &mut deadpool_postgres::Object,
    ca: &Authority,
    lifetime: std::time::Duration,
    request: &EnrollRequest,
    peer: &str,
) -> anyhow::Result<EnrollResponse> {
    check_host_name(&request.host)?;
    let hash = sha256(request.token.as_bytes());
    let tx = db.transaction().await?;
    let spent = tx
        .query_opt(
            "UPDATE enroll_tokens SET used_at = now()
              WHERE secret_hash = $1 AND host = $2 AND used_at IS NULL AND expires_at > now()
          RETURNING host",
            &[&hash.as_slice(), &request.host],
        )
        .await?;
    if spent.is_none() {
        let why = match tx
            .query_opt(
                "SELECT host, used_at IS NOT NULL, expires_at <= now() FROM enroll_tokens WHERE secret_hash = $1",
                &[&hash.as_slice()],
            )
            .await?
        {
            None => "no such token".to_string(),
            Some(r) if r.get::<_, String>(0) != request.host => format!(
                "the token was made for `{}`, not `{}`",
                r.get::<_, String>(0),
                request.host
            ),
            Some(r) if r.get::<_, bool>(1) => "the token was used already".to_string(),
            Some(_) => "the token has expired".to_string(),
        };
        tracing::warn!(host = %request.host, %peer, "an enrolment was refused: {why}");
        return Err(EnrollRefused { why }.into());
    }
    let signed = ca.sign_agent(&request.csr_pem, &request.host, lifetime)?;
    tx.execute(
        "UPDATE agent_certificates SET revoked_at = now() WHERE host = $1 AND revoked_at IS NULL",
        &[&request.host],
    )
    .await?;
    let not_after = std::time::SystemTime::from(signed.not_after);
    tx.execute(
        "INSERT INTO agent_certificates (fingerprint, host, serial, not_after) VALUES ($1, $2, $3, $4)",
        &[&signed.fingerprint.as_slice(), &request.host, &signed.serial, &not_after],
    )
    .await?;
    tx.execute("DELETE FROM copies WHERE host = $1", &[&request.host])
        .await?;
    tx.execute(
        "UPDATE hosts SET enrolled_at = now(), revoked_at = NULL, applied_seq = 0 WHERE name = $1",
        &[&request.host],
    )
    .await?;
    audit(
        &tx,
        &format!("agent at {peer}"),
        "enroll",
        Some(&request.host),
        serde_json::json!({ "serial": signed.serial }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(host = %request.host, %peer, serial = %signed.serial, "a host enrolled");
    Ok(response(ca, signed))
}

fn response(ca: &Authority, signed: Signed) -> EnrollResponse {
    EnrollResponse {
        issued_ms: (signed.issued.unix_timestamp_nanos() / 1_000_000) as i64,
        not_after_ms: (signed.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        certificate_pem: signed.pem,
        ca_pem: ca.ca_pem().to_string(),
    }
}

/// A new certificate for `host`, whose agent called with the certificate `fingerprint`
/// names: not before that one is halfway through its life, never for a revoked one (both
/// checked under a lock, so a revocation or enrolment meanwhile wins). The caller's
/// certificate stays valid until it expires (an answer lost on the way does not lock
/// the agent out); replacements issued to it before, which it evidently never got, are
/// revoked.
pub async fn renew(
    db: &mut deadpool_postgres::Object,
    ca: &Authority,
    lifetime: std::time::Duration,
    host: &str,
    fingerprint: &[u8; 32],
    csr_pem: &str,
) -> anyhow::Result<EnrollResponse> {
    let tx = db.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT c.revoked_at IS NOT NULL OR h.revoked_at IS NOT NULL,
                    now() < c.issued_at + (c.not_after - c.issued_at) / 2,
                    c.issued_at
               FROM agent_certificates c JOIN hosts h ON h.name = c.host
              WHERE c.fingerprint = $1 AND c.host = $2
                FOR UPDATE OF c, h",
            &[&fingerprint.as_slice(), &host],
        )
        .await?;
    let Some(row) = row else {
        return Err(UsageError::new("this certificate is not one of this host's").into());
    };
    if row.get::<_, bool>(0) {
        return Err(UsageError::new("this host or certificate is revoked").into());
    }
    if row.get::<_, bool>(1) {
        return Err(UsageError::new(
            "this certificate is not halfway through its life yet; renew later",
        )
        .into());
    }
    let issued: std::time::SystemTime = row.get(2);
    tx.execute(
        "UPDATE agent_certificates SET revoked_at = now()
          WHERE host = $1 AND issued_at > $2 AND revoked_at IS NULL",
        &[&host, &issued],
    )
    .await?;
    let signed = ca.sign_agent(csr_pem, host, lifetime)?;
    let not_after = std::time::SystemTime::from(signed.not_after);
    tx.execute(
        "INSERT INTO agent_certificates (fingerprint, host, serial, not_after) VALUES ($1, $2, $3, $4)",
        &[&signed.fingerprint.as_slice(), &host, &signed.serial, &not_after],
    )
    .await?;
    audit(
        &tx,
        &format!("agent {host}"),
        "renew",
        Some(host),
        serde_json::json!({ "serial": signed.serial }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(host, serial = %signed.serial, "an agent's certificate renewed");
    Ok(response(ca, signed))
}

/// Cuts `host` off: its certificates and unused tokens stop working at once, its queued
/// jobs are cancelled. Its copies stay listed.
pub async fn revoke(
    db: &mut deadpool_postgres::Object,
    host: &str,
    actor: &str,
) -> anyhow::Result<()> {
    let tx = db.transaction().await?;
    let found = tx
        .execute(
            "UPDATE hosts SET revoked_at = now() WHERE name = $1",
            &[&host],
        )
        .await?;
    if found == 0 {
        return Err(
            UsageError::new(format!("there is no host `{host}`; `hosts` lists them")).into(),
        );
    }
    tx.execute(
        "UPDATE agent_certificates SET revoked_at = now() WHERE host = $1 AND revoked_at IS NULL",
        &[&host],
    )
    .await?;
    tx.execute(
        "UPDATE enroll_tokens SET expires_at = now() WHERE host = $1 AND used_at IS NULL",
        &[&host],
    )
    .await?;
    let cancelled = tx
        .execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = now(), result = 'cancelled: the host was revoked'
              WHERE host = $1 AND state = 'queued'",
            &[&host],
        )
        .await?;
    audit(
        &tx,
        actor,
        "revoke",
        Some(host),
        serde_json::json!({ "cancelled_jobs": cancelled }),
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(host, actor, "host revoked");
    Ok(())
}

/// Makes an operator's API token named `name` with `role`.
pub async fn create_token(
    db: &mut deadpool_postgres::Object,
    ca: &Authority,
    name: &str,
    role: Role,
    actor: &str,
) -> anyhow::Result<String> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(UsageError::new("a token's name is 1 to 64 printable characters").into());
    }
    let secret = secret();
    let tx = db.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO operator_tokens (secret_hash, name, role, created_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
            &[&sha256(secret.as_bytes()).as_slice(), &name, &role.as_str(), &actor],
        )
        .await?;
    if inserted == 0 {
        return Err(UsageError::new(format!(
            "there is a token named `{name}` already; revoke it first or choose another name"
        ))
        .into());
    }
    audit(
        &tx,
        actor,
        "token-create",
        None,
        serde_json::json!({ "name": name, "role": role.as_str() }),
    )
    .await?;
    tx.commit().await?;
    Ok(Token::format(OPERATOR_PREFIX, &secret, &ca.pin()))
}

/// Revokes the operator token `name`.
pub async fn revoke_token(
    db: &mut deadpool_postgres::Object,
    name: &str,
    actor: &str,
) -> anyhow::Result<()> {
    let tx = db.transaction().await?;
    let n = tx
        .execute(
            "UPDATE operator_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
            &[&name],
        )
        .await?;
    if n == 0 {
        return Err(UsageError::new(format!("there is no valid token named `{name}`")).into());
    }
    audit(
        &tx,
        actor,
        "token-revoke",
        None,
        serde_json::json!({ "name": name }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Every host (or `only` the one named), with its copies and open jobs.
pub async fn hosts(
    db: &impl GenericClient,
    only: Option<&str>,
) -> Result<Vec<HostInfo>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT h.name,
                    CASE WHEN h.revoked_at IS NOT NULL THEN 'revoked'
                         WHEN h.enrolled_at IS NOT NULL THEN 'enrolled' ELSE 'waiting' END,
                    ms(h.enrolled_at), ms(h.last_seen_at), h.agent_version, h.sets,
                    c.copies, c.usable, c.newest,
                    (SELECT COUNT(*) FROM jobs j WHERE j.host = h.name
                        AND j.state IN ('queued', 'claimed', 'running'))
               FROM hosts h,
                    LATERAL (SELECT COUNT(*) AS copies,
                                    COUNT(*) FILTER (WHERE state = 'usable') AS usable,
                                    MAX(created_ms) FILTER (WHERE state = 'usable') AS newest
                               FROM copies WHERE host = h.name) c
              WHERE ($1::text IS NULL OR h.name = $1) ORDER BY h.name",
            &[&only],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| HostInfo {
            name: r.get(0),
            state: r.get(1),
            enrolled_ms: r.get(2),
            last_seen_ms: r.get(3),
            agent_version: r.get(4),
            sets: r.get(5),
            copies: r.get(6),
            usable_copies: r.get(7),
            newest_copy_ms: r.get(8),
            open_jobs: r.get(9),
        })
        .collect())
}
