//! The HTTP server under every process: HTTP/1.1 and HTTP/2 (h2c or ALPN over
//! TLS), rustls with certificates from files, a header-read timeout and header
//! limits against slow or abusive clients, graceful shutdown, and an optional
//! plain listener that redirects to HTTPS.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a client may take to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most headers in one request.
pub const MAX_HEADERS: usize = 100;
/// Largest read buffer for a request head (bounds the total header size).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most connections served at once; beyond it, new ones wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 16_384;

/// Loads a rustls server configuration (TLS 1.2 and 1.3, h2 and http/1.1 by ALPN).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    crate::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("SIGNPOST_TLS_CERT: cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("SIGNPOST_TLS_CERT: {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("SIGNPOST_TLS_CERT: no certificate in {}", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("SIGNPOST_TLS_KEY: {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("SIGNPOST_TLS_KEY: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` until `stop`, then lets open connections finish
/// for up to `deadline`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
    deadline: Duration,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        // Dead or silent HTTP/2 peers are found and dropped.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let builder = Arc::new(builder);
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(Body::new))
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    // The protocol sniffing before HTTP/1's header timer has no timer of
                    // its own: make sure it can decide within the header timeout.
                    if tokio::time::timeout(HEADER_READ_TIMEOUT, sniffable(&stream)).await != Ok(true) {
                        return;
                    }
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    // The handshake gets the same budget as reading headers.
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!(?deadline, "in-flight requests outlived the shutdown deadline");
    }
    Ok(())
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits until the bytes received tell HTTP/1 from HTTP/2: the first byte that
/// leaves the HTTP/2 preface, or the whole preface. False if the peer closed.
async fn sniffable(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 24];
    let mut seen = 0;
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
            return true;
        }
        if n == seen {
            // Nothing new yet: peek returns at once while bytes sit unread.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen = n;
    }
}

/// Answers every plain-HTTP request with a permanent redirect to HTTPS on `https_port`.
pub fn https_redirect(https_port: u16) -> Router {
    Router::new().fallback(move |req: Request<Body>| async move {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_string())
            .filter(|h| {
                !h.is_empty()
                    && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']'))
            });
        let Some(host) = host else {
            return crate::Problem::bad_request("a Host header is required").into_response();
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
        let location = format!("https://{host}{port}{path}");
        let mut res: Response = StatusCode::PERMANENT_REDIRECT.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            res.headers_mut().insert(header::LOCATION, v);
        }
        res
    })
}
