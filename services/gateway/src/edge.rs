//! The edge middleware: every request of the process passes here once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kernel::Problem;
use kernel::http::AccessLogFields;
use kernel::ratelimit::Decision;

use tower::Service;

use crate::Gateway;
use crate::settings::{Limit, OnError};
use crate::verify::Identity;

static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
static X_USER_ROLE: HeaderName = HeaderName::from_static("x-user-role");
static CROSS_ORIGIN_OPENER_POLICY: HeaderName = HeaderName::from_static("cross-origin-opener-policy");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// How a path is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Redirects, pages, health: no token needed, per-IP limit only if configured.
    Public,
    /// API routes anyone may call (login, register, signed storage URLs): per-IP limit.
    Anonymous,
    /// Everything else under `/v1/`: a valid token is required.
    Authenticated,
}

const PUBLIC_EXACT: &[&str] = &["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];
/// Anonymous API paths: each matches itself and what lies below it, by whole segments.
const ANONYMOUS_PREFIXES: &[&str] = &[
    "/v1/storage",
    "/v1/auth/register",
    "/v1/auth/login",
    "/v1/auth/refresh",
    "/v1/auth/password-reset",
    "/v1/auth/verify-email",
    "/v1/auth/.well-known",
    "/v1/auth/oauth",
    "/v1/auth/invitations/accept",
];

pub(crate) fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
/// Routes whose bodies are not JSON (uploads, CSV imports).
const NON_JSON_PREFIXES: &[&str] = &["/v1/storage/", "/v1/assets/", "/v1/links/import"];

/// In proxy mode, whether anything but the 404 fallback answers `path`: a
/// service owns it (`owned`), or it is public (short links, the kernel's own).
pub(crate) fn proxied_match(owned: bool, path: &str) -> bool {
    owned || access(path) == Access::Public
}

/// Classifies a path.
pub fn access(path: &str) -> Access {
    if PUBLIC_EXACT.contains(&path) || !path.starts_with("/v1/") {
        Access::Public
    } else if ANONYMOUS_PREFIXES.iter().any(|p| under(path, p)) {
        Access::Anonymous
    } else {
        Access::Authenticated
    }
}

fn bearer(value: Option<&HeaderValue>) -> Result<Option<&str>, Problem> {
    let Some(value) = value else { return Ok(None) };
    let text =
        value.to_str().map_err(|_| Problem::unauthorized("the Authorization header is not readable"))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or_else(|| Problem::unauthorized("expected Authorization: Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Problem::unauthorized("expected Authorization: Bearer <token>"));
    }
    Ok(Some(token.trim()))
}

fn has_body(req: &Request) -> bool {
    !http_body::Body::is_end_stream(req.body())
        && req.headers().get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() != b"0")
}

fn json_body_required(req: &Request) -> bool {
    let has_body = has_body(req);
    matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && has_body
        && req.uri().path().starts_with("/v1/")
        && !NON_JSON_PREFIXES.iter().any(|p| req.uri().path().starts_with(p))
        // A QR code's logo is a PNG upload.
        && !(req.uri().path().starts_with("/v1/qr/") && req.uri().path().ends_with("/logo"))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")))
}

fn rate_headers(h: &mut HeaderMap, d: &Decision) {
    h.insert(RATELIMIT_LIMIT.clone(), number(d.limit));
    h.insert(RATELIMIT_REMAINING.clone(), number(d.remaining));
    h.insert(RATELIMIT_RESET.clone(), number(d.reset_after.as_secs_f64().ceil() as u64));
}

/// Numbers below this are kept as header values, per thread.
const KEPT_NUMBERS: usize = 1024;

thread_local! {
    /// The `RateLimit-*` values seen so far on this thread: a limited request
    /// then copies three shared values instead of formatting and allocating
    /// three new ones.
    static NUMBERS: std::cell::RefCell<Vec<Option<HeaderValue>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A number as a header value.
fn number(n: u64) -> HeaderValue {
    let Some(i) = usize::try_from(n).ok().filter(|i| *i < KEPT_NUMBERS) else { return HeaderValue::from(n) };
    NUMBERS.with_borrow_mut(|kept| {
        if kept.is_empty() {
            kept.resize(KEPT_NUMBERS, None);
        }
        kept[i].get_or_insert_with(|| HeaderValue::from(n)).clone()
    })
}

impl kernel::http::Middleware for Gateway {
    async fn run<S>(self: Arc<Self>, req: Request, inner: S) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        edge(&self, req, inner, None).await
    }
}

/// The gateway's middleware. `matched` says whether anything but the 404
/// fallback will answer, when the caller already knows (the proxy's front).
pub(crate) async fn edge<S>(g: &Gateway, mut req: Request, inner: S, matched: Option<bool>) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Send,
    S::Future: Send,
{
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed_origin = origin.filter(|o| g.settings.cors_origins.contains(o));
    let mut res = if req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        preflight(allowed_origin.is_some())
    } else {
        let mut log = AccessLogFields::default();
        let res = match admit(g, &mut req, &mut log, matched).await {
            Ok(decision) => {
                let mut res = kernel::http::call_inner(inner, req).await;
                if let Some(d) = decision {
                    rate_headers(res.headers_mut(), &d);
                }
                res
            }
            Err(res) => res,
        };
        let mut res = res;
        // The proxy names the upstream in the same fields: fill them in place.
        match res.extensions_mut().get_mut::<AccessLogFields>() {
            Some(fields) => fields.tenant_id = log.tenant_id,
            None if log.tenant_id.is_some() => {
                res.extensions_mut().insert(log);
            }
            None => {}
        }
        res
    };
    let h = res.headers_mut();
    // Room for what the gateway and the request layer add (security, CORS,
    // rate and request-id headers): the map grows at most once, here.
    h.reserve(kernel::http::LAYER_HEADERS);
    if let Some(o) = allowed_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "ratelimit-limit, ratelimit-remaining, ratelimit-reset, retry-after, x-request-id",
            ),
        );
    }
    h.append(header::VARY, HeaderValue::from_static("origin"));
    security_headers(h);
    if g.kernel.config.tls.is_some() {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    res
}

fn preflight(allowed: bool) -> Response {
    if !allowed {
        return Problem::forbidden("this origin is not allowed").into_response();
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, idempotency-key, x-request-id"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    res
}

fn security_headers(h: &mut HeaderMap) {
    h.remove(header::SERVER);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.entry(header::X_FRAME_OPTIONS).or_insert(HeaderValue::from_static("DENY"));
    h.entry(header::REFERRER_POLICY).or_insert(HeaderValue::from_static("strict-origin-when-cross-origin"));
    h.entry(&CROSS_ORIGIN_OPENER_POLICY).or_insert(HeaderValue::from_static("same-origin"));
    let html =
        h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html"));
    if html {
        h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
        ));
    }
}

/// Authenticates and rate-limits; `Err` is the response to send instead.
async fn admit(
    g: &Gateway,
    req: &mut Request,
    log: &mut AccessLogFields,
    known_matched: Option<bool>,
) -> Result<Option<Decision>, Response> {
    // A cheap copy (shared bytes), so that the request can change below.
    let uri = req.uri().clone();
    let path = uri.path();
    // Service-to-service routes (`/internal`) are for services calling each
    // other with the internal token, never for anyone else at the front door
    // (and the proxy owns no such prefix).
    if under(path, "/internal")
        && (g.proxying().is_some()
            || !kernel::auth::internal_caller(g.kernel.config.internal_token.as_ref(), req.headers()))
    {
        return Err(Problem::not_found().into_response());
    }
    // In proxy mode every path reaches the proxy handler: "matched" means a service owns it.
    let matched = match (known_matched, g.proxying()) {
        (Some(known), _) => known,
        (None, Some(p)) => proxied_match(p.service_for(path).is_some(), path),
        (None, None) => req.extensions().get::<MatchedPath>().is_some(),
    };
    let access = access(path);
    // Identity headers are ours to set; whatever the client sent is removed.
    let claimed_tenant = req.headers_mut().remove(&X_TENANT_ID);
    req.headers_mut().remove(&X_USER_ID);
    req.headers_mut().remove(&X_USER_ROLE);
    if let (true, Some(q)) = (path.starts_with("/v1/"), uri.query()) {
        let decoded = |k: &str| k.replace("%5F", "_").replace("%5f", "_").to_ascii_lowercase();
        let mut keys = q.split('&').filter_map(|kv| kv.split('=').next()).map(decoded);
        if keys.any(|k| matches!(k.as_str(), "api_key" | "apikey" | "access_token" | "token")) {
            return Err(
                Problem::unauthorized("credentials are not accepted in the query string").into_response()
            );
        }
    }
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let token = bearer(authorization.as_ref()).map_err(IntoResponse::into_response)?;
    let identity: Option<Arc<Identity>> = match token {
        // Boxed: the key's lookup (through the proxy in scale-out) is a large
        // future that a token's request would otherwise carry and move.
        Some(t) if t.starts_with(kernel::auth::API_KEY_PREFIX) => {
            Some(Box::pin(api_key_identity(g, t)).await?)
        }
        Some(t) => {
            let identity = g.verifier.verify(t).await.map_err(|e| Problem::from(e).into_response())?;
            refuse_revoked(g, &identity, "session").await?;
            Some(identity)
        }
        None if access == Access::Authenticated && matched => {
            return Err(Problem::unauthorized("authentication required")
                .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
                .into_response());
        }
        None => None,
    };
    if let Some(id) = &identity {
        if let Some(claimed) = &claimed_tenant
            && claimed.as_bytes() != id.tenant.as_bytes()
        {
            return Err(Problem::forbidden("X-Tenant-ID does not match the token").into_response());
        }
        let h = req.headers_mut();
        h.insert(X_TENANT_ID.clone(), id.tenant_header.clone());
        for (name, value) in [(&X_USER_ID, &id.user_header), (&X_USER_ROLE, &id.role_header)] {
            if let Some(v) = value {
                h.insert(name.clone(), v.clone());
            }
        }
        log.tenant_id = Some(id.tenant.clone());
        // A proxied request leaves the process: its service learns the caller
        // from the token and the identity headers, not from these extensions.
        if g.proxying().is_none() {
            req.extensions_mut().insert(id.caller.clone());
        }
    }
    if let Some(limit) = g.settings.body_limit(path) {
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(
                Problem::payload_too_large(usize::try_from(limit).unwrap_or(usize::MAX)).into_response()
            );
        }
        if declared.is_none() && has_body(req) {
            // A body without a length (chunked, HTTP/2) is capped while it is read.
            let limited = std::mem::take(req.body_mut());
            let capped = http_body_util::Limited::new(limited, usize::try_from(limit).unwrap_or(usize::MAX));
            *req.body_mut() = axum::body::Body::new(capped);
        }
    }
    if json_body_required(req) && !is_json(req.headers()) {
        return Err(
            Problem::unsupported_media_type("expected Content-Type: application/json").into_response()
        );
    }
    if !matched && access != Access::Public {
        // Nothing will answer but the 404 fallback; do not spend the limiter on it.
        return Ok(None);
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let proxied = g.proxying().is_some();
    // The client's address is worked out when something counts by it: a
    // per-address limit (no caller), or a service in this process
    // (`ClientIp`). One IPv6 host usually owns a whole /64: it counts as one.
    let ip = if identity.is_none() || !proxied {
        kernel::http::client_key(kernel::http::client_addr(&g.settings.trusted_proxies, peer, req.headers()))
    } else {
        String::new()
    };
    if !g.front {
        // Behind the front gateway, which limited already: a service's own edge does not count again.
        req.extensions_mut().insert(kernel::http::ClientIp(ip));
        return Ok(None);
    }
    let who = identity.as_ref().map(|c| &*c.tenant);
    let route_key;
    let policy: Option<(&str, Limit)> = match g.settings.route_limit(path) {
        Some((prefix, l)) => {
            route_key = format!("route:{prefix}:{}", who.unwrap_or(&ip));
            Some((route_key.as_str(), l))
        }
        None => match (&identity, access) {
            (Some(id), _) => Some((id.limit_key.as_str(), g.settings.tenant)),
            (None, Access::Anonymous | Access::Authenticated) => {
                route_key = format!("ip:{ip}");
                Some((route_key.as_str(), g.settings.anonymous))
            }
            (None, Access::Public) => match g.settings.public {
                Some(l) => {
                    route_key = format!("public:{ip}");
                    Some((route_key.as_str(), l))
                }
                None => None,
            },
        },
    };
    let decision = match policy {
        None => Ok(None),
        Some((key, limit)) => match g.kernel.limiter.hit(key, limit.count, limit.window).await {
            Ok(d) if d.allowed => Ok(Some(d)),
            Ok(d) => {
                let tenant = who.unwrap_or("anonymous").to_string();
                // A route's name, never the path itself: one series per route, not per URL.
                let endpoint = match (req.extensions().get::<MatchedPath>(), g.proxying()) {
                    (Some(m), _) => m.as_str().to_string(),
                    (None, Some(p)) => {
                        p.route_label(path).map_or_else(|| "unmatched".into(), |l| l.to_string())
                    }
                    (None, None) => "unmatched".to_string(),
                };
                metrics::counter!("rate_limit_hits_total", "tenant_id" => tenant, "endpoint" => endpoint)
                    .increment(1);
                let mut res =
                    Problem::too_many_requests(d.reset_after.as_secs_f64().ceil() as u64).into_response();
                rate_headers(res.headers_mut(), &d);
                Err(res)
            }
            Err(e) => {
                metrics::counter!("rate_limit_errors_total").increment(1);
                tracing::warn!(error = %e, "rate limiter unavailable");
                match g.settings.on_error {
                    OnError::Open => Ok(None),
                    OnError::Closed => {
                        Err(Problem::unavailable("rate limiting is unavailable").into_response())
                    }
                }
            }
        },
    };
    if !proxied {
        req.extensions_mut().insert(kernel::http::ClientIp(ip));
    }
    decision
}

/// The caller behind an API key, unless the key is unknown or revoked (the
/// response to send instead).
async fn api_key_identity(g: &Gateway, t: &str) -> Result<Arc<Identity>, Response> {
    let (proxy, front) = (g.proxy.clone(), g.front);
    let key = t.to_string();
    let resolved = g
        .verifier
        .api_key(t, || async move {
            match proxy {
                Some(p) => p.introspect(&key).await,
                // The front door with no identity anywhere knows no keys.
                None if front => Ok(None),
                // A service alone cannot tell a bad key from one it cannot check.
                None => {
                    Err("identity is not reachable from this process (list it in SIGNPOST_UPSTREAMS)".into())
                }
            }
        })
        .await;
    let identity = match resolved {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(Problem::unauthorized("the API key is invalid, expired or revoked")
                .with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                )
                .into_response());
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot resolve an API key");
            return Err(Problem::unavailable("cannot check the API key").into_response());
        }
    };
    refuse_revoked(g, &identity, "API key").await?;
    Ok(identity)
}

/// Refuses a caller whose session or API key (`what`) was revoked. A revoked
/// caller must never pass, so an unreadable revocation list fails closed,
/// whatever the rate limiter's policy.
async fn refuse_revoked(g: &Gateway, identity: &Identity, what: &str) -> Result<(), Response> {
    match crate::verify::revoked(g.kernel.cache.as_ref(), identity).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(Problem::unauthorized(format!("the {what} was revoked")).into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "revocation list unreachable");
            Err(Problem::unavailable(format!("cannot check the {what}")).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_numbers_are_the_same_header_values_as_fresh_ones() {
        for n in [0, 1, 59, 100, 1023, 1024, 86_400, u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n));
            // The second time comes from the thread's list.
            assert_eq!(number(n), HeaderValue::from(n));
        }
    }
}
