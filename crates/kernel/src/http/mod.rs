//! HTTP conventions: problem JSON, extractors, pagination, request ids,
//! health, readiness and metrics.

mod client;
mod json;
mod middleware;
mod pagination;

pub use client::{Net, client_addr, client_key, ipv4_text};
pub use json::{Json, Path, Query};
pub use middleware::{
    AccessLogFields, BodyLimit, BodyLimitLayer, Middleware, MiddlewareLayer, MiddlewareService, Observe,
    Observed, X_REQUEST_ID, call_inner, observe, panic_response, refuse_declared,
};
pub use pagination::{DEFAULT_LIMIT, MAX_LIMIT, Page, PageParams, PageRequest, decode_cursor, encode_cursor};

use axum::response::IntoResponse;

use crate::problem::Problem;

/// The most headers the layers every response passes (the gateway's edge and
/// the request layer: security, CORS, rate and request-id headers) add to it.
/// A handler on the hot path sizes its response's headers for them.
pub const LAYER_HEADERS: usize = 12;

/// The answer for paths no route matches.
pub async fn not_found() -> impl IntoResponse {
    Problem::not_found().with_detail("no route matches this path")
}

/// The answer for a known path with the wrong method.
pub async fn method_not_allowed() -> impl IntoResponse {
    Problem::method_not_allowed()
}

/// The client's address as the gateway determined it (trusted proxies applied,
/// IPv6 reduced to its /64), put into the request for services that count by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIp(pub String);
