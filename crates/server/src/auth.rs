//! Who calls: an agent, known by the certificate its TLS handshake presented (looked up
//! by its SHA-256 among the certificates the CA signed, refused once revoked), or an
//! operator, known by a bearer token (looked up by its secret's SHA-256), with a role:
//! `viewer` reads, `operator` also queues jobs (restores and deletions among them),
//! `admin` also enrols and revokes hosts. Every refusal is logged with the caller's
//! address; nothing is changed by a refused call.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::{Deserialize, Serialize};
use shadowcopy_agent::api::ApiError;
use shadowcopy_agent::link::identity::{sha256, Token, OPERATOR_PREFIX};

use crate::database;
use crate::listen::PeerCertificate;
use crate::state::AppState;

/// An operator's role, each including the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A call from an enrolled agent, for its own host only.
#[derive(Clone, Debug)]
pub struct AgentCaller {
    pub host: String,
    /// The SHA-256 of the certificate it called with.
    pub fingerprint: [u8; 32],
}

/// A call from an operator's token.
#[derive(Clone, Debug)]
pub struct OperatorCaller {
    pub name: String,
    pub role: Role,
}

impl OperatorCaller {
    /// Refuses (403) an operator whose role is below `needed`.
    pub fn require(&self, needed: Role, what: &str) -> Result<(), ApiError> {
        if self.role >= needed {
            return Ok(());
        }
        tracing::warn!(operator = %self.name, role = self.role.as_str(), "refused: {what} needs the {} role", needed.as_str());
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            1,
            format!(
                "{what} needs the {} role; token `{}` is a {}",
                needed.as_str(),
                self.name,
                self.role.as_str()
            ),
        ))
    }

    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("operator {}", self.name)
    }
}

fn peer(parts: &Parts) -> String {
    parts
        .extensions
        .get::<SocketAddr>()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "?".into())
}

impl FromRequestParts<Arc<AppState>> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let refuse = |why: &str| {
            tracing::warn!(peer = %peer(parts), path = %parts.uri.path(), "an agent call was refused: {why}");
            ApiError::new(StatusCode::FORBIDDEN, 1, why.to_string())
        };
        let Some(PeerCertificate(Some(fingerprint))) =
            parts.extensions.get::<PeerCertificate>().copied()
        else {
            tracing::warn!(peer = %peer(parts), path = %parts.uri.path(), "an agent call without a certificate was refused");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                1,
                "this call is for agents: it needs the certificate the server signed at enrolment",
            ));
        };
        let client = state.db.get().await.map_err(database)?;
        let row = client
            .query_opt(
                "SELECT h.name, c.revoked_at IS NOT NULL OR h.revoked_at IS NOT NULL,
                        c.not_after < now()
                   FROM agent_certificates c JOIN hosts h ON c.host = h.name
                  WHERE c.fingerprint = $1",
                &[&fingerprint.as_slice()],
            )
            .await
            .map_err(database)?;
        if let Some(r) = row
            .as_ref()
            .filter(|r| !r.get::<_, bool>(1) && !r.get::<_, bool>(2))
        {
            // Seen: only an agent that is let in.
            client
                .execute(
                    "UPDATE hosts SET last_seen_at = now() WHERE name = $1",
                    &[&r.get::<_, String>(0)],
                )
                .await
                .map_err(database)?;
        }
        match row {
            None => Err(refuse(
                "the certificate is not one this server issued to an agent",
            )),
            Some(r) if r.get::<_, bool>(1) => Err(refuse(&format!(
                "host `{}` is revoked",
                r.get::<_, String>(0)
            ))),
            Some(r) if r.get::<_, bool>(2) => Err(refuse(&format!(
                "the certificate of host `{}` has expired; enrol the agent again",
                r.get::<_, String>(0)
            ))),
            Some(r) => Ok(AgentCaller {
                host: r.get(0),
                fingerprint,
            }),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for OperatorCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let unauthorized = |why: &str| {
            tracing::warn!(peer = %peer(parts), path = %parts.uri.path(), "an operator call was refused: {why}");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                1,
                format!("{why}: give an API token (`shadowcopy server token create NAME`) as SHADOWCOPY_SERVER_TOKEN"),
            )
        };
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized("no API token"));
        };
        let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(unauthorized(
                "the Authorization header is not `Bearer TOKEN`",
            ));
        };
        let Ok(token) = Token::parse(token, OPERATOR_PREFIX, "API token") else {
            return Err(unauthorized("the API token is malformed"));
        };
        let hash = sha256(token.secret.as_bytes());
        let client = state.db.get().await.map_err(database)?;
        let row = client
            .query_opt(
                "SELECT name, role FROM operator_tokens WHERE secret_hash = $1 AND revoked_at IS NULL",
                &[&hash.as_slice()],
            )
            .await
            .map_err(database)?;
        let Some(row) = row else {
            return Err(unauthorized("the API token is unknown or revoked"));
        };
        let role: String = row.get(1);
        Ok(OperatorCaller {
            name: row.get(0),
            role: Role::parse(&role).unwrap_or(Role::Viewer),
        })
    }
}
