//! The server's HTTPS listener: TLS (rustls) on TCP, each connection's client
//! certificate (if any) handed to the routes as a [`PeerCertificate`], so that an agent
//! is known by the certificate the handshake verified and by nothing it says.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use shadowcopy_agent::link::identity::sha256;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The SHA-256 of the certificate the caller presented (verified against the CA by the
/// handshake), or `None` without one.
#[derive(Clone, Copy, Debug)]
pub struct PeerCertificate(pub Option<[u8; 32]>);

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller has to send a request's headers once connected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 4096;

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) {
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("could not accept a caller: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Answers are small and written in pieces: no Nagle delay waiting for an ACK.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, "a caller was refused at the TLS handshake: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "a caller did not finish the TLS handshake in time");
                    return;
                }
            };
            let certificate = PeerCertificate(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| sha256(c.as_ref())),
            );
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(certificate);
                    request.extensions_mut().insert(peer);
                    app.clone().oneshot(request)
                },
            );
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "a connection ended: {e}");
            }
        });
    }
}
