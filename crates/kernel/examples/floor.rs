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
//!   close, graceful shutdown, the peer address on each request).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Response, StatusCode, header};
use kernel::server::{ConnThreads, serve};
use tokio_util::sync::CancellationToken;

const TARGET: &str = "https://example.com/landing";

fn redirect<B: Default>() -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::FOUND;
    res.headers_mut().insert(header::LOCATION, HeaderValue::from_static(TARGET));
    res
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: floor hyper|hyper-timer|auto|axum|server ADDR");
        std::process::exit(2);
    };
    let threads = Arc::new(ConnThreads::start(
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    )?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        match mode.as_str() {
            "server" => {
                let app = axum::Router::new()
                    .route("/bench", axum::routing::get(|| async { redirect::<axum::body::Body>() }));
                serve(listener, app, None, threads, CancellationToken::new(), Duration::from_secs(1)).await
            }
            "hyper" | "hyper-timer" | "auto" | "axum" => {
                let app = axum::Router::new()
                    .route("/bench", axum::routing::get(|| async { redirect::<axum::body::Body>() }));
                loop {
                    let (stream, _) = listener.accept().await?;
                    let _ = stream.set_nodelay(true);
                    let stream = stream.into_std()?;
                    let mode = mode.clone();
                    let app = app.clone();
                    threads.spawn(async move {
                        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { return };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let service = hyper::service::service_fn(|_req| async {
                            Ok::<_, Infallible>(redirect::<String>())
                        });
                        match mode.as_str() {
                            "hyper" => {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, service)
                                    .await;
                            }
                            "hyper-timer" => {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .timer(hyper_util::rt::TokioTimer::new())
                                    .header_read_timeout(Duration::from_secs(10))
                                    .serve_connection(io, service)
                                    .await;
                            }
                            "auto" => {
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection_with_upgrades(io, service)
                                .await;
                            }
                            _ => {
                                let service = hyper::service::service_fn(
                                    move |req: hyper::Request<hyper::body::Incoming>| {
                                        use tower::ServiceExt;
                                        app.clone().oneshot(req.map(axum::body::Body::new))
                                    },
                                );
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, service)
                                    .await;
                            }
                        }
                    });
                }
            }
            _ => Err(std::io::Error::other(format!("unknown mode {mode}"))),
        }
    })
}
