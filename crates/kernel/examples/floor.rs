//! The floor under a Signpost redirect: what the HTTP stack alone costs, with
//! no middleware, no lookup, no click capture. `bench/redirect/floor.sh` runs
//! it beside nginx and `signpost up` to show how much of the gap to nginx is
//! the stack itself. Each mode adds one layer of what every Signpost process
//! runs; all answer `GET /bench` with a 302 on Signpost's connection threads.
//!
//! `floor MODE ADDR`, MODE one of:
//! - `hyper`: hyper's HTTP/1 connection and a `service_fn`, nothing else;
//! - `hyper-timer`: plus the header-read timeout (hyper's timer);
//! - `auto`: hyper-util's HTTP/1 + HTTP/2 builder instead;
//! - `axum`: hyper's HTTP/1 with an axum `Router` as the service;
//! - `server`: `kernel::server::serve` itself (all of the above, lingering
//!   close, graceful shutdown, the peer address on each request);
//! - `proxy UPSTREAM`: not a redirect but the floor under the gateway's proxy
//!   (`bench/gateway/run.sh`): hyper's HTTP/1 server forwarding every request
//!   to `UPSTREAM` (host:port) through hyper-util's pooled client, one pool
//!   per thread as the gateway keeps them, nothing else;
//! - `proxy-affine UPSTREAM`: the same, but each client connection has its
//!   own upstream connection, opened on first use and driven on the same
//!   thread (as linkerd2-proxy and Pingora keep them), with no shared pool.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderValue, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kernel::server::{ConnThreads, serve};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const TARGET: &str = "https://example.com/landing";

fn redirect<B: Default>() -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::FOUND;
    res.headers_mut().insert(header::LOCATION, HeaderValue::from_static(TARGET));
    res
}

/// Accepts connections and serves each with `conn` on the connection
/// threads, as `kernel::server::serve` hands them over.
async fn each_connection<F, Fut>(
    listener: TcpListener,
    threads: Arc<ConnThreads>,
    conn: F,
) -> std::io::Result<()>
where
    F: Fn(TokioIo<TcpStream>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let stream = stream.into_std()?;
        let conn = conn.clone();
        threads.spawn(async move {
            if let Ok(stream) = TcpStream::from_std(stream) {
                conn(TokioIo::new(stream)).await;
            }
        });
    }
}

/// Points a request at the upstream.
fn to_upstream(req: &mut hyper::Request<Incoming>, upstream: &Authority) {
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream.clone());
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

type Pooled =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>;

thread_local! {
    // One pool per thread, as the gateway keeps them: an upstream connection
    // is used on the thread that drives it.
    static CLIENT: Pooled = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
}

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

/// Sends a request on a client connection's own upstream connection, opening
/// it first if there is none (or it closed).
async fn send_affine(
    slot: &tokio::sync::Mutex<Option<Sender>>,
    upstream: &Authority,
    req: hyper::Request<Incoming>,
) -> std::io::Result<Response<Incoming>> {
    let mut slot = slot.lock().await;
    let send = match slot.take() {
        Some(send) if !send.is_closed() => slot.insert(send),
        _ => {
            let io = TcpStream::connect(upstream.as_str()).await?;
            let _ = io.set_nodelay(true);
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(std::io::Error::other)?;
            // Driven on this thread, beside the client connection.
            tokio::spawn(conn);
            slot.insert(send)
        }
    };
    send.ready().await.map_err(std::io::Error::other)?;
    send.send_request(req).await.map_err(std::io::Error::other)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(addr)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: floor hyper|hyper-timer|auto|axum|server ADDR | floor proxy|proxy-affine ADDR UPSTREAM"
        );
        std::process::exit(2);
    };
    let upstream = args.next().map(|u| u.parse::<Authority>()).transpose().map_err(std::io::Error::other)?;
    let threads = Arc::new(ConnThreads::start(
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    )?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        let app = axum::Router::new()
            .route("/bench", axum::routing::get(|| async { redirect::<axum::body::Body>() }));
        let redirects =
            || hyper::service::service_fn(|_req| async { Ok::<_, Infallible>(redirect::<String>()) });
        let http1 = hyper::server::conn::http1::Builder::new;
        match (mode.as_str(), upstream) {
            ("server", _) => {
                serve(listener, app.into(), None, threads, CancellationToken::new(), Duration::from_secs(1))
                    .await
            }
            ("hyper", _) => {
                each_connection(listener, threads, move |io| async move {
                    let _ = http1().serve_connection(io, redirects()).await;
                })
                .await
            }
            ("hyper-timer", _) => {
                each_connection(listener, threads, move |io| async move {
                    let _ = http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(io, redirects())
                        .await;
                })
                .await
            }
            ("auto", _) => {
                each_connection(listener, threads, move |io| async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(io, redirects())
                        .await;
                })
                .await
            }
            ("axum", _) => {
                each_connection(listener, threads, move |io| {
                    let app = app.clone();
                    async move {
                        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            use tower::ServiceExt;
                            app.clone().oneshot(req.map(axum::body::Body::new))
                        });
                        let _ = http1().serve_connection(io, service).await;
                    }
                })
                .await
            }
            ("proxy", Some(upstream)) => {
                each_connection(listener, threads, move |io| {
                    let upstream = upstream.clone();
                    async move {
                        let client = CLIENT.with(Clone::clone);
                        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                            to_upstream(&mut req, &upstream);
                            client.request(req)
                        });
                        let _ = http1().serve_connection(io, service).await;
                    }
                })
                .await
            }
            ("proxy-affine", Some(upstream)) => {
                each_connection(listener, threads, move |io| {
                    let upstream = upstream.clone();
                    async move {
                        let slot = Arc::new(tokio::sync::Mutex::new(None));
                        // The request keeps its origin-form target: the connection
                        // already goes to the upstream.
                        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let (slot, upstream) = (slot.clone(), upstream.clone());
                            async move { send_affine(&slot, &upstream, req).await }
                        });
                        let _ = http1().serve_connection(io, service).await;
                    }
                })
                .await
            }
            _ => Err(std::io::Error::other(format!("unknown mode {mode}, or a proxy without an upstream"))),
        }
    })
}
