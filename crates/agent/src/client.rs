//! Calling the agent's API over its unix socket, or over TCP with TLS and a client
//! certificate (HTTP/1.1 through hyper): what `shadowcopy agent status` uses, and the
//! tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// An answer: the HTTP status and the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            anyhow::anyhow!(
                "the agent's answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Where the agent's API is.
#[derive(Clone)]
pub enum Endpoint {
    /// Its unix socket.
    Unix(PathBuf),
    /// Its TCP listener (`host:port`), TLS with this client's settings; `server_name` is
    /// the name the agent's certificate must carry.
    Tls {
        address: String,
        server_name: String,
        config: Arc<rustls::ClientConfig>,
    },
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn handshake<S>(stream: S) -> anyhow::Result<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn connect(endpoint: &Endpoint) -> anyhow::Result<Sender> {
    match endpoint {
        Endpoint::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the agent at {} ({e}); is `shadowcopy agent` running, and may you use its socket?",
                    socket.display()
                )
            })?;
            handshake(stream).await
        }
        Endpoint::Tls {
            address,
            server_name,
            config,
        } => {
            let tcp = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach the agent at {address}: {e}"))?;
            let name = rustls::pki_types::ServerName::try_from(server_name.clone())?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| anyhow::anyhow!("TLS with the agent at {address} failed: {e}"))?;
            handshake(tls).await
        }
    }
}

fn build(
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "agent");
    if body.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    Ok(request.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
}

/// One request (`body` as JSON) on the unix socket, its whole answer, within `timeout`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    request_to(
        &Endpoint::Unix(socket.to_path_buf()),
        method,
        path,
        body,
        timeout,
    )
}

/// One request (`body` as JSON) to `endpoint`, its whole answer, within `timeout`.
pub fn request_to(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    runtime()?.block_on(async {
        tokio::time::timeout(timeout, async {
            let mut sender = connect(endpoint).await?;
            let response = sender.send_request(build(method, path, body)?).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes().to_vec();
            Ok(Answer { status, body })
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!("the agent did not answer {method} {path} within {timeout:?}")
        })?
    })
}

/// Reads the Server-Sent Events of `path` as (event name, data) until `done` says so or
/// `timeout` passes; returns what it read, and whether `done` said so.
pub fn read_events(
    socket: &Path,
    path: &str,
    timeout: Duration,
    mut done: impl FnMut(&str, &str) -> bool,
) -> anyhow::Result<(Vec<(String, String)>, bool)> {
    runtime()?.block_on(async {
        let mut sender = connect(&Endpoint::Unix(socket.to_path_buf())).await?;
        let response = sender.send_request(build("GET", path, None)?).await?;
        let mut body = response.into_body();
        let mut seen = Vec::new();
        let mut pending = String::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Ok((seen, false)),
                Ok(None) => return Ok((seen, false)),
                Ok(Some(frame)) => frame?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && name == "message" {
                    continue; // a keep-alive comment
                }
                let stop = done(&name, &data);
                seen.push((name, data));
                if stop {
                    return Ok((seen, true));
                }
            }
        }
    })
}
