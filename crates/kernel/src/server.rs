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
use futures_util::future::BoxFuture;
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

/// Answers some requests before the router sees them.
pub trait Front: Send + Sync + 'static {
    /// Whether this request is the front's to answer (else the router's).
    fn takes(&self, req: &Request<Body>) -> bool;
    /// Answers a request it takes.
    fn answer(&self, req: Request<Body>) -> BoxFuture<'static, Response>;
}

/// What a listener serves: a router, and in front of it, optionally, a
/// [`Front`] that answers some requests without it (the gateway's proxy, which
/// needs no route matching: a request it takes costs no path lookup, no path
/// parameters and no boxed route per layer).
#[derive(Clone)]
pub struct App {
    /// What the front does not take.
    pub router: Router,
    /// Asked first.
    pub front: Option<Arc<dyn Front>>,
}

impl From<Router> for App {
    fn from(router: Router) -> Self {
        Self { router, front: None }
    }
}

/// A [`Front`]'s answer as the service's result.
type FrontAnswer = futures_util::future::Map<
    BoxFuture<'static, Response>,
    fn(Response) -> Result<Response, std::convert::Infallible>,
>;

impl App {
    /// Answers a request: by the front when it takes it, else by the router.
    pub fn call(
        &self,
        req: Request<Body>,
    ) -> futures_util::future::Either<FrontAnswer, tower::util::Oneshot<Router, Request<Body>>> {
        use futures_util::FutureExt;
        use futures_util::future::Either;
        match &self.front {
            Some(front) if front.takes(&req) => {
                let head = req.method() == axum::http::Method::HEAD;
                let answer = front.answer(req);
                // What axum's routes do for HEAD, which hyper's HTTP/2 server does not.
                let answer = if head { Box::pin(answer.map(without_body)) } else { answer };
                Either::Left(answer.map(Ok as fn(Response) -> _))
            }
            _ => Either::Right(self.router.clone().oneshot(req)),
        }
    }
}

/// The answer to a HEAD request: the headers of the GET answer, its length
/// included, and no body.
fn without_body(mut res: Response) -> Response {
    if !res.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(n) = axum::body::HttpBody::size_hint(res.body()).exact()
    {
        res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    res.map(|_| Body::empty())
}

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

/// The threads that serve connections: a single-threaded runtime each, by
/// default one per core (`SIGNPOST_HTTP_THREADS`). An accepted connection is
/// handed to the one serving the fewest connections (in turn among equals) and
/// stays there until it closes, so reading a request, running its handler and
/// writing the answer happen on one thread.
///
/// A work-stealing runtime shares every burst of ready sockets with a second
/// worker, which it must wake first (a futex call, then a steal); on a loaded
/// machine those wake-ups cost more than the sharing gains. nginx's workers
/// and actix-web's are built the same way. The price: a connection cannot move
/// off a thread that is busy, so CPU-heavy work belongs on
/// `spawn_blocking` (password hashing does this).
///
/// The threads stop, dropping what they still run, when this is dropped.
pub struct ConnThreads {
    handles: Vec<tokio::runtime::Handle>,
    /// Connections being served, per thread.
    live: Arc<Vec<std::sync::atomic::AtomicUsize>>,
    next: std::sync::atomic::AtomicUsize,
    /// Dropping a sender ends its thread.
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for ConnThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnThreads").field("threads", &self.handles.len()).finish_non_exhaustive()
    }
}

impl ConnThreads {
    /// Starts `n` threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let (mut handles, mut stops) = (Vec::new(), Vec::new());
        for i in 0..n.max(1) {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (ready, handle) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new().name(format!("signpost-http-{i}")).spawn(move || {
                // Built and dropped on its own thread: a runtime must not be dropped
                // inside another one.
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => {
                        let _ = ready.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })?;
            handles.push(handle.recv().map_err(std::io::Error::other)??);
            stops.push(stop);
        }
        let live = Arc::new(handles.iter().map(|_| std::sync::atomic::AtomicUsize::new(0)).collect());
        Ok(Self { handles, live, next: std::sync::atomic::AtomicUsize::new(0), _stop: stops })
    }

    /// Runs a connection's future on the thread serving the fewest connections.
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, future: F) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.handles.len();
        let start = self.next.fetch_add(1, Relaxed);
        let i = (0..n).map(|k| (start + k) % n).min_by_key(|&i| self.live[i].load(Relaxed)).unwrap_or(0);
        self.live[i].fetch_add(1, Relaxed);
        let serving = Serving(self.live.clone(), i);
        self.handles[i].spawn(async move {
            let _serving = serving;
            future.await;
        });
    }
}

/// Counts a connection on its thread until it ends (or its runtime drops it).
struct Serving(Arc<Vec<std::sync::atomic::AtomicUsize>>, usize);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves `app` on `listener` until `stop`, then lets open connections finish
/// for up to `deadline`. Connections are accepted here and served on `threads`.
pub async fn serve(
    listener: TcpListener,
    app: App,
    tls: Option<Arc<rustls::ServerConfig>>,
    threads: Arc<ConnThreads>,
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
        // Leaves this runtime's reactor; the serving thread registers it with its own.
        let Ok(stream) = stream.into_std() else { continue };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.call(req.map(Body::new))
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        threads.spawn(async move {
            let _permit = permit;
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { return };
            match acceptor {
                None => {
                    // The protocol sniffing before HTTP/1's header timer has no timer of
                    // its own: make sure it can decide within the header timeout.
                    if tokio::time::timeout(HEADER_READ_TIMEOUT, sniffable(&stream)).await != Ok(true) {
                        return;
                    }
                    let stream = Lingering::new(stream);
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    // The handshake gets the same budget as reading headers.
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(Lingering::new(stream)))
                            .await
                    else {
                        return;
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned();
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!(?deadline, "in-flight requests outlived the shutdown deadline");
    }
    Ok(())
}

/// How long a closing connection keeps reading what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// The most a closing connection reads and discards.
const LINGER_BYTES: usize = 64 << 20;

/// A connection's socket that lingers when the server closes it. Shutting it
/// down sends the FIN, as a plain socket does. When it is then dropped before
/// the client closed its side, a task reads and discards what the client
/// still sends, until the client closes too, for at most [`LINGER_TIME`].
/// Closing a socket with unread bytes in it makes the kernel send a reset,
/// which can destroy the response on its way (a 413 to a body too large,
/// answered before the body was read) before the client has read it. nginx's
/// `lingering_close` does the same. The drain runs after the connection has
/// ended: it holds up neither a graceful shutdown nor an upgraded tunnel
/// (whose half-close must pass the client's bytes on, not drop them).
struct Lingering {
    /// `None` once handed to the draining task.
    stream: Option<tokio::net::TcpStream>,
    /// The write side was shut: the server closed.
    shut: bool,
    /// A read saw the client's end of stream (or an error): nothing to drain.
    done: bool,
}

impl Lingering {
    fn new(stream: tokio::net::TcpStream) -> Self {
        Self { stream: Some(stream), shut: false, done: false }
    }

    fn pinned(&mut self) -> std::io::Result<std::pin::Pin<&mut tokio::net::TcpStream>> {
        self.stream
            .as_mut()
            .map(std::pin::Pin::new)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if !self.shut || self.done {
            return;
        }
        let (Some(stream), Ok(runtime)) = (self.stream.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stream = stream;
            let mut scratch = [0u8; 8192];
            let mut discarded = 0usize;
            let drain = async {
                while discarded < LINGER_BYTES {
                    match stream.read(&mut scratch).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => discarded += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        });
    }
}

use tokio::io::{AsyncRead, AsyncWrite};

impl AsyncRead for Lingering {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = this.pinned()?.poll_read(cx, buf);
        if let std::task::Poll::Ready(r) = &polled
            && (r.is_err() || buf.filled().len() == before)
        {
            this.done = true;
        }
        polled
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_mut().pinned()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_mut().pinned()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(tokio::net::TcpStream::is_write_vectored)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.get_mut().pinned()?.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let shut = std::task::ready!(this.pinned()?.poll_shutdown(cx));
        this.shut = shut.is_ok();
        std::task::Poll::Ready(shut)
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The name of the thread that answered.
    async fn which_thread() -> String {
        std::thread::current().name().unwrap_or("unnamed").to_string()
    }

    /// Serves `app` without TLS until `stop`.
    fn spawn_serve(
        listener: TcpListener,
        app: Router,
        threads: &Arc<ConnThreads>,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        tokio::spawn(serve(listener, app.into(), None, threads.clone(), stop.clone(), Duration::from_secs(1)))
    }

    #[tokio::test]
    async fn connections_are_served_on_the_connection_threads_and_spread_over_them() {
        crate::install_crypto_provider();
        let threads = Arc::new(ConnThreads::start(2).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let app = Router::new().route("/", axum::routing::get(which_thread));
        let stop = CancellationToken::new();
        let server = spawn_serve(listener, app, &threads, &stop);
        // Each client keeps one connection open for all its requests.
        let one_connection = || reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
        let (mut seen, mut clients) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let client = one_connection();
            let mut names = Vec::new();
            for _ in 0..5 {
                names.push(client.get(&url).send().await.unwrap().text().await.unwrap());
            }
            assert!(names.iter().all(|n| n == &names[0]), "one connection, one thread: {names:?}");
            assert!(names[0].starts_with("signpost-http-"), "served off the acceptor's runtime: {names:?}");
            seen.push(names[0].clone());
            clients.push(client);
        }
        assert_ne!(seen[0], seen[1], "the second open connection goes to the less busy thread");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_body_was_read_reaches_the_client() {
        crate::install_crypto_provider();
        let threads = Arc::new(ConnThreads::start(1).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Refuses every upload without reading it, as a body limit does.
        let app = Router::new()
            .route("/upload", axum::routing::post(|| async { crate::Problem::payload_too_large(1) }));
        let stop = CancellationToken::new();
        let server = spawn_serve(listener, app, &threads, &stop);
        let client = reqwest::Client::new();
        for i in 0..20 {
            let res = client.post(format!("http://{address}/upload")).body(vec![b'a'; 2 << 20]).send().await;
            let status = res.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"));
            assert_eq!(status, Ok(413), "the 413 arrives, not a reset (request {i})");
        }
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
