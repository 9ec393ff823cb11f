//! The API on TCP, for operators on other machines: TLS (rustls) with client
//! certificates required. Every caller proves who it is with a certificate the
//! configured client CA signed; a caller without one never reaches the API. Configured
//! in `[agent]`: `listen`, `tls_cert`, `tls_key`, `tls_client_ca` (all four, or none).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use shadowcopy_engine::config::AgentConfig;
use shadowcopy_engine::UsageError;
use tokio_rustls::TlsAcceptor;

/// A TLS listener's settings, read and checked at start (a bad file stops the start).
pub struct TlsListen {
    pub address: SocketAddr,
    config: Arc<ServerConfig>,
}

/// How long a caller has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// rustls on *ring*: it builds in seconds on two cores where aws-lc-rs takes minutes of
/// C. rustls 0.23.48 deprecates it for lacking post-quantum key exchange (X25519MLKEM768);
/// moving to aws-lc-rs is a one-line change here when that matters more than build time.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| UsageError::new(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(UsageError::new(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        ))
        .into());
    }
    Ok(certs)
}

impl TlsListen {
    /// The TCP listener `[agent]` asks for, if any. `listen` needs the other three: a
    /// TCP API without client certificates would let anyone who reaches the port restore
    /// over the host's databases.
    pub fn from_config(agent: &AgentConfig) -> anyhow::Result<Option<TlsListen>> {
        let Some(listen) = &agent.listen else {
            if agent.tls_cert.is_some() || agent.tls_key.is_some() || agent.tls_client_ca.is_some()
            {
                return Err(UsageError::new(
                    "[agent] has TLS files but no `listen` address; add listen = \"ADDRESS:PORT\" or remove them",
                )
                .into());
            }
            return Ok(None);
        };
        let need = |value: &Option<PathBuf>, key: &str| {
            value.clone().ok_or_else(|| {
                UsageError::new(format!(
                    "[agent] listen = \"{listen}\" needs `{key}`: the TCP API takes only TLS callers with a client certificate \
                     (tls_cert and tls_key: the agent's certificate and key; tls_client_ca: the CA that signs operators' certificates)"
                ))
            })
        };
        let cert = need(&agent.tls_cert, "tls_cert")?;
        let key = need(&agent.tls_key, "tls_key")?;
        let client_ca = need(&agent.tls_client_ca, "tls_client_ca")?;
        let address: SocketAddr = listen.parse().map_err(|e| {
            UsageError::new(format!(
                "[agent] listen = \"{listen}\" is not an address and port ({e}); write it as \"0.0.0.0:8443\" or \"[::1]:8443\""
            ))
        })?;
        let chain = certificates(&cert, "tls_cert")?;
        let key = PrivateKeyDer::from_pem_file(&key)
            .map_err(|e| UsageError::new(format!("tls_key {}: {e}", key.display())))?;
        let mut roots = RootCertStore::empty();
        for ca in certificates(&client_ca, "tls_client_ca")? {
            roots.add(ca).map_err(|e| {
                UsageError::new(format!("tls_client_ca {}: {e}", client_ca.display()))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| UsageError::new(format!("tls_client_ca {}: {e}", client_ca.display())))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                UsageError::new(format!("tls_cert and tls_key do not go together: {e}"))
            })?;
        Ok(Some(TlsListen {
            address,
            config: Arc::new(config),
        }))
    }

    /// Binds the address (before the agent says it is ready: a port in use stops the start).
    pub fn bind(&self) -> anyhow::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(self.address)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", self.address))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Serves `app` to callers that complete a TLS handshake with a client certificate.
    pub async fn serve(self, listener: std::net::TcpListener, app: Router) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let acceptor = TlsAcceptor::from(self.config);
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("the TCP API could not accept a caller: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Answers are small and written in pieces: no Nagle delay waiting for an ACK.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, "a TCP API caller was refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "a TCP API caller did not finish the TLS handshake in time");
                        return;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, "a TCP API connection ended: {e}");
                }
            });
        }
    }
}

/// A client's TLS settings: the CA that signed the agent's certificate, and the
/// client's own certificate and key (for `client::request_tls` and tests).
pub fn client_config(
    ca: &Path,
    cert: Option<(&Path, &Path)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca, "CA")? {
        roots.add(c)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match cert {
        Some((cert, key)) => builder.with_client_auth_cert(
            certificates(cert, "certificate")?,
            PrivateKeyDer::from_pem_file(key)?,
        )?,
        None => builder.with_no_client_auth(),
    })
}
