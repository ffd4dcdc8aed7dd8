//! The middleware every route runs through: request id, access log, metrics,
//! the body-size guard and panic-to-problem.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::problem::Problem;

/// The `X-Request-ID` header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, in the request extensions for handlers that want it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Put into a response's extensions, these end up in the access log line.
#[derive(Debug, Clone, Default)]
pub struct AccessLogFields {
    /// The tenant the request acted in.
    pub tenant_id: Option<String>,
    /// The upstream instance that answered (proxy mode).
    pub upstream: Option<String>,
}

/// A client-sent id is kept when it is short and plain; otherwise we make one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string)
}

type HttpMetrics = (metrics::Counter, metrics::Histogram);
/// Routes (by matched path) of one (method, status).
type ByRoute = HashMap<Box<str>, HttpMetrics>;

thread_local! {
    /// The HTTP metric handles by (method, status) and route, per thread: a
    /// request looks its pair up without building label strings.
    static HTTP_METRICS: std::cell::RefCell<HashMap<(Method, u16), ByRoute>> =
        std::cell::RefCell::new(HashMap::new());
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

/// Request id, span, access log line and HTTP metrics.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let method = req.method().clone();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    req.extensions_mut().insert(RequestId(id.clone()));
    let quiet = matches!(route, "/healthz" | "/readyz" | "/metrics");
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let fields = res.extensions_mut().remove::<AccessLogFields>().unwrap_or_default();
    let (tenant_id, upstream) = (fields.tenant_id.unwrap_or_default(), fields.upstream.unwrap_or_default());
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

/// Refuses a declared body larger than the limit before reading it (413 problem).
/// Bodies without a length are capped while being read by the extractor limit.
pub async fn body_limit(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()));
    match declared {
        Some(None) => Problem::bad_request("Content-Length is not a number").into_response(),
        Some(Some(n)) if n > limit as u64 => Problem::payload_too_large(limit).into_response(),
        _ => next.run(req).await,
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
