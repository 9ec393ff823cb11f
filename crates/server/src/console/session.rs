//! Who uses the console: local accounts (argon2id hashes; the first admin made on the
//! server's command line, `shadowcopy server user create NAME --role admin`, never a
//! default password), sessions in a `__Host-` cookie (Secure, HttpOnly, SameSite=Strict;
//! only the SHA-256 of its id is kept, for 12 hours), and a CSRF token per session that
//! every form carries. Roles are the API tokens' (viewer, operator, admin).

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use deadpool_postgres::GenericClient;
use shadowcopy_agent::link::identity::{hex, sha256};
use shadowcopy_engine::UsageError;

use crate::auth::Role;
use crate::state::AppState;
use crate::{admin, database};

/// The session cookie; `__Host-`: only over HTTPS, for this host, for every path.
pub const COOKIE: &str = "__Host-shadowcopy";
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A signed-in user, with the session's CSRF token.
#[derive(Clone, Debug)]
pub struct Signed {
    pub user: String,
    pub role: Role,
    pub csrf: String,
}

impl Signed {
    /// How the audit log names this user.
    pub fn actor(&self) -> String {
        format!("console {}", self.user)
    }

    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }
}

/// Not signed in: to the sign-in page.
pub struct SignIn;

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        Redirect::to("/console/signin").into_response()
    }
}

impl FromRequestParts<Arc<AppState>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        // A partial refresh (htmx) of a page whose session has ended: the whole page
        // goes to the sign-in, rather than the sign-in page into a table.
        let refused = || {
            if parts.headers.contains_key("hx-request") {
                (
                    StatusCode::UNAUTHORIZED,
                    [("hx-redirect", "/console/signin")],
                )
                    .into_response()
            } else {
                SignIn.into_response()
            }
        };
        let Some(id) = request_session(&parts.headers) else {
            return Err(refused());
        };
        let db = state
            .db
            .get()
            .await
            .map_err(|e| database(e).into_response())?;
        let row = db
            .query_opt(
                "SELECT s.user_name, u.role, s.csrf FROM console_sessions s
                   JOIN console_users u ON u.name = s.user_name
                  WHERE s.id_hash = $1 AND s.expires_at > now() AND u.disabled_at IS NULL",
                &[&sha256(id.as_bytes()).as_slice()],
            )
            .await
            .map_err(|e| database(e).into_response())?;
        let Some(row) = row else {
            return Err(refused());
        };
        let role: String = row.get(1);
        Ok(Signed {
            user: row.get(0),
            role: Role::parse(&role).unwrap_or(Role::Viewer),
            csrf: row.get(2),
        })
    }
}

/// Whether the form's token is the session's (their SHA-256 compared: how long the
/// comparison takes tells nothing of the token).
pub fn csrf_ok(signed: &Signed, given: &str) -> bool {
    !given.is_empty() && sha256(signed.csrf.as_bytes()) == sha256(given.as_bytes())
}

/// The answer to a form posted without the session's token.
pub fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the form's security token is missing or stale: reload the page and send it again",
    )
        .into_response()
}

/// Checks a name and password; the session's cookie value and the session on success.
pub async fn sign_in(
    db: &impl GenericClient,
    name: &str,
    password: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT password_hash FROM console_users WHERE name = $1 AND disabled_at IS NULL",
            &[&name],
        )
        .await?;
    // A missing user costs the same as a wrong password (no telling which names exist).
    let stored = match row {
        Some(r) => r.get::<_, String>(0),
        None => {
            static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            DUMMY
                .get_or_init(|| {
                    Argon2::default()
                        .hash_password(&rand::random::<[u8; 16]>())
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        }
    };
    let ok = tokio::task::spawn_blocking({
        let password = password.to_string();
        move || {
            PasswordHash::new(&stored).ok().is_some_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        }
    })
    .await
    .unwrap_or(false);
    if !ok {
        return Ok(None);
    }
    let id = hex(&rand::random::<[u8; 32]>());
    let csrf = hex(&rand::random::<[u8; 24]>());
    db.execute("DELETE FROM console_sessions WHERE expires_at < now()", &[])
        .await?;
    db.execute(
        "INSERT INTO console_sessions (id_hash, user_name, csrf, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        &[
            &sha256(id.as_bytes()).as_slice(),
            &name,
            &csrf,
            &SESSION_LIFETIME.as_secs_f64(),
        ],
    )
    .await?;
    Ok(Some(id))
}

/// The cookie that carries a session (`None`: the one that ends it).
pub fn cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            SESSION_LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

/// Ends the session of the request's cookie.
pub async fn sign_out(
    db: &impl GenericClient,
    parts_cookie: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    if let Some(id) = parts_cookie {
        db.execute(
            "DELETE FROM console_sessions WHERE id_hash = $1",
            &[&sha256(id.as_bytes()).as_slice()],
        )
        .await?;
    }
    Ok(())
}

/// The session id a request carries.
pub fn request_session(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

/// Makes a console account (`shadowcopy server user create`).
pub async fn create_user(
    db: &mut deadpool_postgres::Object,
    name: &str,
    password: &str,
    role: Role,
    actor: &str,
) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.@".contains(c))
    {
        return Err(UsageError::new("a user's name is 1 to 64 letters, digits and `-_.@`").into());
    }
    if password.chars().count() < 12 {
        return Err(UsageError::new("the password must have at least 12 characters").into());
    }
    let hash = {
        let password = password.to_string();
        tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("the password could not be hashed: {e}"))?
    };
    let tx = db.transaction().await?;
    let n = tx
        .execute(
            "INSERT INTO console_users (name, password_hash, role, created_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
            &[&name, &hash, &role.as_str(), &actor],
        )
        .await?;
    if n == 0 {
        return Err(UsageError::new(format!("there is a user `{name}` already")).into());
    }
    admin::audit(
        &tx,
        actor,
        "user-create",
        None,
        serde_json::json!({ "name": name, "role": role.as_str() }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Disables a console account and ends its sessions.
pub async fn disable_user(
    db: &mut deadpool_postgres::Object,
    name: &str,
    actor: &str,
) -> anyhow::Result<()> {
    let tx = db.transaction().await?;
    let n = tx
        .execute(
            "UPDATE console_users SET disabled_at = now() WHERE name = $1 AND disabled_at IS NULL",
            &[&name],
        )
        .await?;
    if n == 0 {
        return Err(UsageError::new(format!("there is no active user `{name}`")).into());
    }
    tx.execute(
        "DELETE FROM console_sessions WHERE user_name = $1",
        &[&name],
    )
    .await?;
    admin::audit(
        &tx,
        actor,
        "user-disable",
        None,
        serde_json::json!({ "name": name }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
