//! Calling the backup server: HTTPS (rustls) on one connection per call, as an agent
//! with its certificate or as an operator with a bearer token. The server's answer
//! comes back as the value asked for, or as an error that carries the server's message
//! and the CLI's exit code for it.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shadowcopy_engine::UsageError;

use crate::api::ErrorBody;
use crate::client::Answer;

/// The server refused a call, with its reason.
#[derive(Debug, thiserror::Error)]
#[error("the server refused {what}: {message} (HTTP {status})")]
pub struct Refused {
    pub what: String,
    pub status: u16,
    pub message: String,
}

/// The server could not be reached, or did not answer in time (the call may be retried).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the server at {url}: {why}")]
pub struct Unreachable {
    pub url: String,
    pub why: String,
}

/// A backup server at one URL, called with one identity.
#[derive(Clone)]
pub struct ServerClient {
    url: String,
    address: String,
    name: rustls::pki_types::ServerName<'static>,
    host_header: String,
    config: Arc<rustls::ClientConfig>,
    bearer: Option<String>,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bearer token.
        f.debug_struct("ServerClient")
            .field("url", &self.url)
            .finish()
    }
}

/// Checks a server URL: `https://HOST[:PORT]`, nothing after it.
pub fn parse_url(url: &str) -> anyhow::Result<(String, String, u16)> {
    let bad = |why: &str| {
        UsageError::new(format!(
            "`{url}` is not a server URL ({why}); write it as https://HOST:PORT, e.g. https://backup.example.com:8443"
        ))
    };
    let uri: hyper::Uri = url.parse().map_err(|_| bad("it does not parse"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the scheme must be https: the server speaks only TLS").into());
    }
    let host = uri.host().ok_or_else(|| bad("it names no host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("it has a path").into());
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let url = format!(
        "https://{}",
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    );
    Ok((url, host, port))
}

impl ServerClient {
    pub fn new(
        url: &str,
        config: Arc<rustls::ClientConfig>,
        bearer: Option<String>,
    ) -> anyhow::Result<ServerClient> {
        let (url, host, port) = parse_url(url)?;
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| UsageError::new(format!("`{host}` is not a server name: {e}")))?;
        Ok(ServerClient {
            url,
            host_header: address.clone(),
            address,
            name,
            config,
            bearer,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One call, its whole answer within `timeout`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<Answer> {
        let unreachable = |why: String| Unreachable {
            url: self.url.clone(),
            why,
        };
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(&self.address)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(self.name.clone(), tcp)
                .await
                .map_err(|e| unreachable(format!("TLS failed: {e}")))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, &self.host_header);
            if body.is_some() {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            if let Some(token) = &self.bearer {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes()
                .to_vec();
            anyhow::Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| unreachable(format!("no answer to {method} {path} within {timeout:?}")))?
    }

    /// A call whose answer is JSON of type `T`; a refusal as [`Refused`], or as a
    /// [`UsageError`] when the server says the input was bad (the CLI exits 2).
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let answer = self.call(method, path, body, timeout).await?;
        if !(200..300).contains(&answer.status) {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&answer.body) {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => (1, String::from_utf8_lossy(&answer.body).into_owned()),
            };
            if code == 2 {
                return Err(UsageError::new(format!("the server refused it: {message}")).into());
            }
            let refused = Refused {
                what: format!("{method} {path}"),
                status: answer.status,
                message,
            };
            return Err(refused.into());
        }
        let body = if answer.body.is_empty() {
            b"null".to_vec()
        } else {
            answer.body
        };
        serde_json::from_slice(&body).map_err(|e| {
            anyhow::anyhow!(
                "the server's answer to {method} {path} is not what this shadowcopy expects ({e})"
            )
        })
    }

    /// [`ServerClient::json`] from a thread without a runtime.
    pub fn json_blocking<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.json(method, path, body, timeout))
    }
}
