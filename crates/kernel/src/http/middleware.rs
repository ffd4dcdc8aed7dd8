//! The middleware every route runs through: request id, access log, metrics,
//! the body-size guard and panic-to-problem.

use std::collections::HashMap;
use std::time::Instant;

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::problem::Problem;

/// The `X-Request-ID` header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Put into a response's extensions, these end up in the access log line.
#[derive(Debug, Clone, Default)]
pub struct AccessLogFields {
    /// The tenant the request acted in.
    pub tenant_id: Option<Arc<str>>,
    /// The upstream instance that answered (proxy mode).
    pub upstream: Option<Arc<str>>,
}

/// The request's id. A client-sent id is kept when it is one, short and
/// plain; otherwise we make one (a UUIDv7, written without `fmt`) and put it
/// into the request in place of what was sent: handlers read it there, and a
/// proxied request carries it to its service, whose log lines then share it.
fn request_id(req: &mut Request) -> HeaderValue {
    let mut sent = req.headers().get_all(&X_REQUEST_ID).iter();
    let kept = match (sent.next(), sent.next()) {
        (Some(v), None) => {
            let b = v.as_bytes();
            (!b.is_empty()
                && b.len() <= 128
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':')))
            .then(|| v.clone())
        }
        _ => None,
    };
    kept.unwrap_or_else(|| {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        let id = HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("unknown"));
        req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
        id
    })
}

type HttpMetrics = (metrics::Counter, metrics::Histogram);
/// Routes (by matched path) of one (method, status).
type ByRoute = HashMap<Box<str>, HttpMetrics, foldhash::fast::RandomState>;

thread_local! {
    /// The HTTP metric handles by (method, status) and route, per thread: a
    /// request looks its pair up without building label strings.
    static HTTP_METRICS: std::cell::RefCell<HashMap<(Method, u16), ByRoute, foldhash::fast::RandomState>> =
        std::cell::RefCell::new(HashMap::default());
}

/// Methods outside the standard set share one label (and one cache entry).
static OTHER_METHOD: std::sync::LazyLock<Method> =
    std::sync::LazyLock::new(|| Method::from_bytes(b"OTHER").unwrap_or_default());

/// The methods with a label of their own.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

fn http_metrics(method: &Method, route: &str, status: u16) -> HttpMetrics {
    let method = if STANDARD_METHODS.contains(method) { method } else { &*OTHER_METHOD };
    HTTP_METRICS.with_borrow_mut(|by| {
        let routes = by.entry((method.clone(), status)).or_default();
        if let Some(m) = routes.get(route) {
            return m.clone();
        }
        let labels = [
            ("method", method.as_str().to_string()),
            ("route", route.to_string()),
            ("status_code", status.to_string()),
        ];
        let m = (
            metrics::counter!("http_requests_total", &labels),
            metrics::histogram!("http_request_duration_seconds", &labels),
        );
        routes.insert(route.into(), m.clone());
        m
    })
}

/// A middleware written as one async function over the request and the rest
/// of the stack, made a tower layer by [`MiddlewareLayer`].
///
/// One hand-written service rather than axum's `from_fn`: a request is boxed
/// once per layer instead of also boxing the rest of the stack as its `Next`.
pub trait Middleware: Send + Sync + 'static {
    /// Answers `req`, running `inner` (see [`call_inner`]) when it passes.
    fn run<S>(self: Arc<Self>, req: Request, inner: S) -> impl Future<Output = Response> + Send + 'static
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static;
}

/// A [`Middleware`] as a layer.
pub struct MiddlewareLayer<M>(pub Arc<M>);

impl<M> Clone for MiddlewareLayer<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M, S> Layer<S> for MiddlewareLayer<M> {
    type Service = MiddlewareService<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        MiddlewareService { middleware: self.0.clone(), inner: Arc::new(inner) }
    }
}

/// The service of a [`MiddlewareLayer`].
///
/// The rest of the stack is shared, not owned: axum clones a route's service
/// for every request, and a clone of an owned stack would copy every layer
/// below it (each boxed route one allocation), once per layer above it.
/// Shared, a request copies each layer once, when that layer calls the next.
pub struct MiddlewareService<M, S> {
    middleware: Arc<M>,
    inner: Arc<S>,
}

impl<M, S: Clone> Clone for MiddlewareService<M, S> {
    fn clone(&self) -> Self {
        Self { middleware: self.middleware.clone(), inner: self.inner.clone() }
    }
}

impl<M, S> Service<Request> for MiddlewareService<M, S>
where
    M: Middleware,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // This request's own copy of the rest of the stack (tower's
        // convention), readied by `call_inner`.
        let inner = S::clone(&self.inner);
        Box::pin(self.middleware.clone().run(req, inner).map(Ok))
    }
}

/// Runs the rest of the stack under a [`Middleware`].
pub async fn call_inner<S>(mut inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    if let Err(never) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
        match never {}
    }
    match inner.call(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// Request id, span, access log line, HTTP metrics, and a panic in a handler
/// turned into an opaque 500 problem: the layer every route runs under.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observe;

impl Observe {
    /// The layer.
    pub fn layer() -> MiddlewareLayer<Self> {
        MiddlewareLayer(Arc::new(Self))
    }
}

impl Middleware for Observe {
    fn run<S>(self: Arc<Self>, req: Request, inner: S) -> impl Future<Output = Response> + Send + 'static
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        let route = matched(&req);
        observe(req, route, move |req| call_inner(inner, req))
    }
}

/// [`Observe`] around another middleware (the edge), as one layer.
///
/// axum runs each layer of a route as a boxed route of its own: a clone of a
/// boxed service and a boxed future per layer per request. One layer instead
/// of two saves one of each, on every request of the process.
pub struct Observed<M>(pub Arc<M>);

impl<M> Observed<M> {
    /// The layer.
    pub fn layer(middleware: Arc<M>) -> MiddlewareLayer<Self> {
        MiddlewareLayer(Arc::new(Self(middleware)))
    }
}

impl<M: Middleware> Middleware for Observed<M> {
    fn run<S>(self: Arc<Self>, req: Request, inner: S) -> impl Future<Output = Response> + Send + 'static
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        let route = matched(&req);
        let middleware = self.0.clone();
        observe(req, route, move |req| middleware.run(req, inner))
    }
}

/// The route the router matched, as the name of a request.
struct Matched(MatchedPath);

impl AsRef<str> for Matched {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

fn matched(req: &Request) -> Option<Matched> {
    req.extensions().get::<MatchedPath>().cloned().map(Matched)
}

/// Observes `next` answering `req`, under the name `route` in the access log
/// and the metrics (`None`: "unmatched"): what [`Observe`] and [`Observed`]
/// do, for a request that reached no router.
pub async fn observe<R, F, Fut>(mut req: Request, route: Option<R>, next: F) -> Response
where
    R: AsRef<str>,
    F: FnOnce(Request) -> Fut + Send,
    Fut: Future<Output = Response> + Send,
{
    let id = request_id(&mut req);
    let method = req.method().clone();
    let route = route.as_ref().map_or("unmatched", AsRef::as_ref);
    let id_text = id.to_str().unwrap_or_default();
    let quiet = matches!(route, "/healthz" | "/readyz" | "/metrics");
    let span = tracing::info_span!("request", request_id = %id_text, method = %method, route = %route);
    let started = Instant::now();
    // A panic while the handler's future is made or polled is caught here.
    // Boxed once, so that the wrappers around it move a pointer rather than
    // the future of the whole rest of the stack, each time one wraps another.
    let run = AssertUnwindSafe(Box::pin(async { next(req).await })).catch_unwind();
    let mut res = run.instrument(span.clone()).await.unwrap_or_else(panic_response);
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    res.headers_mut().insert(X_REQUEST_ID.clone(), id);
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let fields = res.extensions_mut().remove::<AccessLogFields>().unwrap_or_default();
    let (tenant_id, upstream) =
        (fields.tenant_id.as_deref().unwrap_or_default(), fields.upstream.as_deref().unwrap_or_default());
    span.in_scope(|| {
        if quiet {
            tracing::debug!(status, duration_ms, "request");
        } else {
            tracing::info!(status, duration_ms, tenant_id, upstream, "request");
        }
    });
    let (requests, duration) = http_metrics(&method, route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    res
}

/// Refuses a declared body larger than the limit before reading it (413
/// problem), and an unreadable `Content-Length` (400). Bodies without a
/// length are capped while being read by the extractors' limit, which this
/// layer also sets (axum's `DefaultBodyLimit`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer(pub usize);

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<<DefaultBodyLimit as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit { limit: self.0, inner: DefaultBodyLimit::max(self.0).layer(inner) }
    }
}

/// The service of [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    limit: usize,
    inner: S,
}

impl<S> Service<Request> for BodyLimit<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures_util::future::Either<std::future::Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures_util::future::Either;
        match refuse_declared(&req, self.limit) {
            Some(refused) => Either::Left(std::future::ready(Ok(refused))),
            None => Either::Right(self.inner.call(req)),
        }
    }
}

/// What [`BodyLimit`] answers before reading a body: 413 to a declared length
/// over `limit`, 400 to an unreadable one; `None` lets the request pass.
pub fn refuse_declared(req: &Request, limit: usize) -> Option<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()));
    match declared {
        Some(None) => Some(Problem::bad_request("Content-Length is not a number").into_response()),
        Some(Some(n)) if n > limit as u64 => Some(Problem::payload_too_large(limit).into_response()),
        _ => None,
    }
}

/// Turns a panic in a handler into an opaque 500 problem (the panic is logged).
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    tracing::error!(panic = msg, "handler panicked");
    Problem::internal().into_response()
}
