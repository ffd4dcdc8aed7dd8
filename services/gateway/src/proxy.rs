//! Proxy mode (`signpost serve gateway` with `SIGNPOST_UPSTREAMS`): the same
//! edge middleware in front of services in other processes. hyper's client,
//! on connections kept per thread (HTTP/1.1, or HTTP/2 prior knowledge for
//! `h2c://` instances), streams
//! bodies both ways; hop-by-hop headers are removed in both directions;
//! `X-Forwarded-*` are set; upgrades (WebSocket) pass through. Instances are
//! picked by power-of-two-choices on in-flight requests among the healthy
//! ones; active checks probe `/healthz`, passive ejection follows consecutive
//! failures with half-open recovery; only idempotent requests without a body
//! are retried, and only when the failed try never reached an instance.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kernel::Problem;
use kernel::http::AccessLogFields;

use crate::settings::{Net, Settings};

/// Consecutive failures that eject an instance.
pub const EJECT_AFTER: u32 = 3;
/// How long an ejected instance rests before one trial request (half-open).
pub const EJECT_FOR: Duration = Duration::from_secs(10);
/// Active health-check period.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// One instance of a service.
pub struct Instance {
    /// Names the instance among the idle connections a thread keeps.
    id: u64,
    /// `http://host:port` (h2c instances are stored with `http://`).
    pub base: Arc<str>,
    /// Its scheme and authority, parsed once.
    scheme: Option<axum::http::uri::Scheme>,
    authority: Option<axum::http::uri::Authority>,
    h2: bool,
    service: String,
    healthy: AtomicBool,
    in_flight: AtomicU64,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Instance {
    fn available(&self) -> bool {
        let ejected = self.ejected_until.lock().ok().and_then(|g| *g).is_some_and(|t| Instant::now() < t);
        !ejected
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= EJECT_AFTER {
            if let Ok(mut until) = self.ejected_until.lock() {
                *until = Some(Instant::now() + EJECT_FOR);
            }
            tracing::warn!(instance = %self.base, failures = n, "upstream instance ejected");
            self.gauge();
        }
    }

    fn set_healthy(&self, ok: bool) {
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            tracing::info!(instance = %self.base, healthy = ok, "upstream health changed");
        }
        self.gauge();
    }

    fn gauge(&self) {
        let up = self.healthy.load(Ordering::Relaxed) && self.available();
        metrics::gauge!("gateway_upstream_healthy", "service" => self.service.clone(), "instance" => self.base.to_string())
            .set(if up { 1.0 } else { 0.0 });
    }
}

/// Counts a request in flight on an instance until dropped (also when the
/// client goes away mid-request and the future is dropped).
struct InFlight<'a>(&'a Instance);

impl<'a> InFlight<'a> {
    fn new(inst: &'a Instance) -> Self {
        inst.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(inst)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Identifies a proxy among the HTTP/2 clients a thread keeps.
static NEXT_PROXY_ID: AtomicU64 = AtomicU64::new(0);
/// Identifies an instance among the idle HTTP/1.1 connections a thread keeps.
static NEXT_INSTANCE_ID: AtomicU64 = AtomicU64::new(0);

/// An HTTP/1.1 connection to an instance.
type H1 = hyper::client::conn::http1::SendRequest<Body>;

/// Most idle HTTP/1.1 connections a thread keeps per instance.
const MAX_IDLE: usize = 256;

thread_local! {
    /// Each thread's upstream connections: a connection's task runs on the
    /// runtime of the thread that opened it, so a connection kept per thread is
    /// only ever used where its task runs, and a proxied request wakes no other
    /// thread (see `kernel::server::ConnThreads`).
    ///
    /// HTTP/1.1 connections by instance, the most recently used last. A plain
    /// list per thread: no lock, no hashing of the authority, no waiters, which
    /// a general pool costs on every request (about a tenth of the gateway's
    /// instructions per request, measured with callgrind).
    static H1_IDLE: std::cell::RefCell<Vec<(u64, Vec<H1>)>> = const { std::cell::RefCell::new(Vec::new()) };
    /// HTTP/2 (h2c) clients by proxy: one multiplexed connection per instance.
    static H2_CLIENTS: std::cell::RefCell<Vec<(u64, Client<HttpConnector, Body>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A connection of this thread to the instance that can take a request now:
/// the most recently used first; closed ones are dropped, and busy ones (a
/// response body still streaming) are left for later.
fn take_idle(instance: u64) -> Option<H1> {
    H1_IDLE.with_borrow_mut(|all| {
        let list = &mut all.iter_mut().find(|(id, _)| *id == instance)?.1;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].is_closed() {
                list.remove(i);
            } else if list[i].is_ready() {
                return Some(list.remove(i));
            }
        }
        None
    })
}

/// Keeps a connection for the next request (it takes one once its response is read).
fn keep_idle(instance: u64, conn: H1) {
    if conn.is_closed() {
        return;
    }
    H1_IDLE.with_borrow_mut(|all| {
        let at = match all.iter().position(|(id, _)| *id == instance) {
            Some(at) => at,
            None => {
                all.push((instance, Vec::new()));
                all.len() - 1
            }
        };
        let list = &mut all[at].1;
        if list.len() >= MAX_IDLE {
            list.remove(0);
        }
        list.push(conn);
    });
}

/// Why an instance gave no answer.
#[derive(Debug)]
enum Failure {
    /// The request never reached the instance (another may take it).
    Connect(String),
    /// It may have.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) | Self::Other(e) => f.write_str(e),
        }
    }
}

/// A service of a proxy: its place in the proxy's list of services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServiceId(usize);

/// A path prefix that a service owns.
struct Route {
    prefix: String,
    service: String,
    /// What its requests are called in the access log and the metrics.
    label: Arc<str>,
}

/// The upstream side of the gateway.
pub struct Proxy {
    routes: Vec<Route>,
    /// The label of the short links and other public paths at the root.
    root_label: Arc<str>,
    services: Vec<(String, Vec<Arc<Instance>>)>,
    id: u64,
    connect_timeout: Duration,
    timeout: Duration,
    trusted: Vec<Net>,
    tls: bool,
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// What a client may say about earlier hops, unless it is a trusted proxy.
const FORWARDING: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
];
/// Headers a client must not remove by naming them in `Connection`.
const PROTECTED: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-tenant-id",
    "x-user-id",
    "x-user-role",
    "x-request-id",
    "authorization",
    "host",
    "content-length",
    "content-type",
];

impl Proxy {
    /// Builds the proxy from the settings and starts the health checks.
    pub fn new(settings: &Settings, tls: bool) -> Arc<Self> {
        let services = settings
            .upstreams
            .iter()
            .map(|(service, urls)| {
                let instances = urls
                    .iter()
                    .map(|u| {
                        let h2 = u.starts_with("h2c://");
                        let base = u.replacen("h2c://", "http://", 1);
                        let parsed = base.parse::<Uri>().ok().map(Uri::into_parts);
                        let (scheme, authority) = parsed.map_or((None, None), |p| (p.scheme, p.authority));
                        Arc::new(Instance {
                            id: NEXT_INSTANCE_ID.fetch_add(1, Ordering::Relaxed),
                            base: base.into(),
                            scheme,
                            authority,
                            h2,
                            service: service.clone(),
                            healthy: AtomicBool::new(true),
                            in_flight: AtomicU64::new(0),
                            failures: AtomicU32::new(0),
                            ejected_until: Mutex::new(None),
                        })
                    })
                    .collect();
                (service.clone(), instances)
            })
            .collect();
        let proxy = Arc::new(Self {
            routes: settings
                .routes_table
                .iter()
                .map(|(prefix, service)| Route {
                    label: format!("{}/{{*path}}", prefix.trim_end_matches('/')).into(),
                    prefix: prefix.clone(),
                    service: service.clone(),
                })
                .collect(),
            root_label: "/{*path}".into(),
            services,
            id: NEXT_PROXY_ID.fetch_add(1, Ordering::Relaxed),
            connect_timeout: settings.connect_timeout,
            timeout: settings.upstream_timeout,
            trusted: settings.trusted_proxies.clone(),
            tls,
        });
        tokio::spawn(health_checks(Arc::downgrade(&proxy)));
        proxy
    }

    /// This thread's HTTP/2 client.
    fn h2_client(&self) -> Client<HttpConnector, Body> {
        H2_CLIENTS.with_borrow_mut(|all| {
            if let Some((_, c)) = all.iter().find(|(id, _)| *id == self.id) {
                return c.clone();
            }
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(self.connect_timeout));
            connector.set_nodelay(true);
            let c = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
            all.push((self.id, c.clone()));
            c
        })
    }

    /// Sends a request (its URI absolute) to an instance, on a connection of
    /// this thread: an idle one, or a new one.
    async fn send(
        &self,
        inst: &Instance,
        mut req: Request,
    ) -> Result<Response<hyper::body::Incoming>, Failure> {
        if inst.h2 {
            return self.h2_client().request(req).await.map_err(|e| {
                if e.is_connect() { Failure::Connect(e.to_string()) } else { Failure::Other(e.to_string()) }
            });
        }
        // HTTP/1.1 asks for the origin form, and names the host in `Host`.
        if let (false, Some(a)) = (req.headers().contains_key(header::HOST), &inst.authority)
            && let Ok(host) = HeaderValue::from_str(a.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        let origin = req.uri().path_and_query().cloned();
        *req.uri_mut() = origin.map_or_else(|| Uri::from_static("/"), Uri::from);
        loop {
            let (mut conn, fresh) = match take_idle(inst.id) {
                Some(conn) => (conn, false),
                None => (self.connect(inst).await?, true),
            };
            if conn.ready().await.is_err() {
                if fresh {
                    return Err(Failure::Connect("the instance closed the connection at once".into()));
                }
                continue;
            }
            match conn.try_send_request(req).await {
                Ok(res) => {
                    keep_idle(inst.id, conn);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    // A kept connection the instance closed before the request
                    // went out: nothing was sent, so a new connection takes it.
                    Some(unsent) if !fresh => req = unsent,
                    Some(_) => return Err(Failure::Connect(e.into_error().to_string())),
                    None => return Err(Failure::Other(e.into_error().to_string())),
                },
            }
        }
    }

    /// A new HTTP/1.1 connection to an instance, driven on this thread.
    async fn connect(&self, inst: &Instance) -> Result<H1, Failure> {
        let authority = inst.authority.as_ref().ok_or_else(|| Failure::Connect("no address".into()))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect((host, port)))
            .await
            .map_err(|_| Failure::Connect(format!("connecting to {authority} timed out")))?
            .map_err(|e| Failure::Connect(format!("cannot connect to {authority}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = driver.with_upgrades().await;
        });
        Ok(conn)
    }

    /// The service that owns a path, and what its requests are called; `None`
    /// when no service configured in this gateway owns it.
    pub(crate) fn route(&self, path: &str) -> Option<(ServiceId, &Arc<str>)> {
        let found = self.routes.iter().find(|r| {
            path.starts_with(r.prefix.as_str())
                && (r.prefix.ends_with('/')
                    || path.len() == r.prefix.len()
                    || path.as_bytes()[r.prefix.len()] == b'/')
        });
        // Any other public path at the root is a short link (`/{slug}`): routing's.
        let (service, label) = match found {
            Some(r) => (r.service.as_str(), &r.label),
            None if crate::access(path) == crate::Access::Public && !is_operator(path) => {
                ("routing", &self.root_label)
            }
            None => return None,
        };
        self.services.iter().position(|(s, _)| s == service).map(|i| (ServiceId(i), label))
    }

    /// The service that owns a path, if any service configured in this gateway does.
    pub fn service_for(&self, path: &str) -> Option<&str> {
        self.route(path).map(|(id, _)| self.name(id))
    }

    /// A service's name.
    fn name(&self, id: ServiceId) -> &str {
        self.services.get(id.0).map_or("", |(name, _)| name.as_str())
    }

    /// What a proxied request for `path` is called in the access log and the
    /// metrics: its service's prefix (`/v1/links/{*path}`), a bounded set of
    /// names; `None` for a path no service owns.
    pub fn route_label(&self, path: &str) -> Option<Arc<str>> {
        self.route(path).map(|(_, label)| label.clone())
    }

    fn instances(&self, id: ServiceId) -> &[Arc<Instance>] {
        self.services.get(id.0).map_or(&[], |(_, i)| i.as_slice())
    }

    /// Power of two choices among available instances, preferring healthy ones.
    fn pick(&self, service: ServiceId, exclude: &[Arc<str>]) -> Option<Arc<Instance>> {
        let all = self.instances(service);
        if let [only] = all {
            // With one instance, health only orders the choice: it is taken when available.
            return (only.available() && !exclude.contains(&only.base)).then(|| only.clone());
        }
        let usable = |healthy_only: bool| -> Vec<&Arc<Instance>> {
            all.iter()
                .filter(|i| i.available() && !exclude.contains(&i.base))
                .filter(|i| !healthy_only || i.healthy.load(Ordering::Relaxed))
                .collect()
        };
        let mut candidates = usable(true);
        if candidates.is_empty() {
            candidates = usable(false);
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let a = rand_index(n);
                let b = (a + 1 + rand_index(n - 1)) % n;
                let (x, y) = (candidates[a], candidates[b]);
                Some(
                    if x.in_flight.load(Ordering::Relaxed) <= y.in_flight.load(Ordering::Relaxed) {
                        x
                    } else {
                        y
                    }
                    .clone(),
                )
            }
        }
    }
}

fn rand_index(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    (h.finish() % n.max(1) as u64) as usize
}

async fn health_checks(proxy: std::sync::Weak<Proxy>) {
    loop {
        let Some(p) = proxy.upgrade() else { return };
        let all: Vec<Arc<Instance>> = p.services.iter().flat_map(|(_, i)| i.iter().cloned()).collect();
        for inst in all {
            let uri: Option<Uri> = format!("{}/healthz", inst.base).parse().ok();
            let ok = match uri.map(|u| Request::get(u).body(Body::empty())) {
                Some(Ok(req)) => tokio::time::timeout(Duration::from_secs(1), p.send(&inst, req))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_some_and(|r| r.status().is_success()),
                _ => false,
            };
            inst.set_healthy(ok);
        }
        drop(p);
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the (few) headers there are, rather than a lookup per
    // hop-by-hop name: most messages carry none of them, or only `Connection`.
    let mut present: [Option<HeaderName>; 7] = Default::default();
    let mut n = 0;
    for k in h.keys() {
        if n < present.len() && HOP_BY_HOP.contains(k) {
            present[n] = Some(k.clone());
            n += 1;
        }
    }
    if n == 0 {
        // No `Connection` either, so no header named in one.
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|n| !n.trim().eq_ignore_ascii_case("keep-alive") && !n.trim().eq_ignore_ascii_case("close"))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !PROTECTED.contains(&n.as_str()))
        .collect();
    for name in listed {
        h.remove(name);
    }
    for name in present.into_iter().flatten() {
        h.remove(name);
    }
}

/// An address as a header value; IPv4 written without `fmt`.
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else { return HeaderValue::from_str(&ip.to_string()).ok() };
    let (buf, len) = kernel::http::ipv4_text(v4);
    HeaderValue::from_bytes(&buf[..len]).ok()
}

fn is_upgrade(h: &HeaderMap) -> bool {
    // Only WebSocket is tunnelled; other upgrade tokens (h2c, …) are not ours to pass.
    h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

fn forwarded(proxy: &Proxy, req: &mut Request, peer: Option<IpAddr>) {
    let trusted = peer.is_some_and(|p| proxy.trusted.iter().any(|n| n.contains(p)));
    let h = req.headers_mut();
    let host = h.get(header::HOST).cloned();
    if !trusted && h.keys().any(|k| FORWARDING.contains(k)) {
        for name in &FORWARDING {
            h.remove(name);
        }
    }
    if let Some(peer) = peer {
        let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if trusted => HeaderValue::from_str(&format!("{prev}, {peer}")).ok(),
            _ => ip_value(peer),
        };
        if let Some(v) = xff {
            h.insert(X_FORWARDED_FOR, v);
        }
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if proxy.tls { "https" } else { "http" }));
    }
    if let (Some(host), false) = (host, h.contains_key(&X_FORWARDED_HOST)) {
        h.insert(X_FORWARDED_HOST, host);
    }
}

/// Paths the gateway process answers itself.
pub(crate) fn is_operator(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json")
}

/// The request target on an instance: its scheme and authority, the
/// client's path and query (no string is formatted and parsed again).
fn target(inst: &Instance, path_and_query: Option<&axum::http::uri::PathAndQuery>) -> Option<Uri> {
    let mut parts = axum::http::uri::Parts::default();
    parts.scheme = Some(inst.scheme.clone()?);
    parts.authority = Some(inst.authority.clone()?);
    parts.path_and_query =
        Some(path_and_query.cloned().unwrap_or_else(|| axum::http::uri::PathAndQuery::from_static("/")));
    Uri::from_parts(parts).ok()
}

/// Sends a request to the service that owns its path and returns its answer.
pub async fn forward(proxy: Arc<Proxy>, req: Request) -> Response {
    let service = proxy.route(req.uri().path()).map(|(id, _)| id);
    forward_to(proxy, service, req).await
}

/// Sends a request to `service`, found for its path by [`Proxy::route`]
/// (`None`: no service owns the path, a 404).
pub(crate) async fn forward_to(proxy: Arc<Proxy>, service: Option<ServiceId>, mut req: Request) -> Response {
    let Some(service) = service else {
        return Problem::not_found().with_detail("no route matches this path").into_response();
    };
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    forwarded(&proxy, &mut req, peer);
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let upgrade_headers = upgrade.then(|| {
        (parts.headers.get(header::UPGRADE).cloned(), parts.headers.get(header::CONNECTION).cloned())
    });
    strip_hop_by_hop(&mut parts.headers);
    if let Some((Some(up), conn)) = upgrade_headers {
        parts.headers.insert(header::UPGRADE, up);
        parts.headers.insert(header::CONNECTION, conn.unwrap_or(HeaderValue::from_static("upgrade")));
    }
    let no_body = http_body::Body::is_end_stream(&body)
        || parts.headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0");
    let idempotent =
        matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
    let retryable = idempotent && no_body && !upgrade;
    let max_tries = if retryable { proxy.instances(service).len().clamp(1, 3) } else { 1 };
    let mut body = Some(body);
    let mut headers = Some(parts.headers);
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = String::from("no instance available");
    for attempt in 1..=max_tries {
        let Some(inst) = proxy.pick(service, &tried) else { break };
        if attempt < max_tries {
            tried.push(inst.base.clone());
        }
        let Some(uri) = target(&inst, parts.uri.path_and_query()) else {
            return Problem::bad_request("unusable request target").into_response();
        };
        let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
        if let Some(h) = builder.headers_mut() {
            // The last try takes the headers; earlier ones copy them.
            *h = if attempt < max_tries {
                headers.clone().unwrap_or_default()
            } else {
                headers.take().unwrap_or_default()
            };
            if inst.h2 {
                h.remove(header::HOST);
            }
        }
        let out = match builder.body(body.take().unwrap_or_else(Body::empty)) {
            Ok(r) => r,
            Err(_) => return Problem::bad_request("unusable request").into_response(),
        };
        let guard = InFlight::new(&inst);
        let result = tokio::time::timeout(proxy.timeout, proxy.send(&inst, out)).await;
        drop(guard);
        match result {
            Ok(Ok(mut res)) => {
                if res.status().is_server_error()
                    && res.status() != axum::http::StatusCode::INTERNAL_SERVER_ERROR
                {
                    inst.failed();
                } else {
                    inst.succeeded();
                }
                let upstream_upgrade = (res.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| hyper::upgrade::on(&mut res));
                let (mut rparts, rbody) = res.into_parts();
                if upstream_upgrade.is_none() {
                    strip_hop_by_hop(&mut rparts.headers);
                }
                if let (Some(client_side), Some(upstream_side)) = (client_upgrade, upstream_upgrade) {
                    tokio::spawn(async move {
                        if let (Ok(c), Ok(u)) = (client_side.await, upstream_side.await) {
                            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                        }
                    });
                }
                let mut response = Response::from_parts(rparts, Body::new(rbody));
                response
                    .extensions_mut()
                    .insert(AccessLogFields { tenant_id: None, upstream: Some(inst.base.clone()) });
                return response;
            }
            Ok(Err(e)) => {
                let connect = matches!(e, Failure::Connect(_));
                // With a body, the failure may be the client's (aborted or oversized
                // upload): only failures without one count against the instance.
                if connect || no_body {
                    inst.failed();
                }
                last_error = e.to_string();
                // A connect error never reached the instance: another may take it.
                if !connect {
                    return Problem::new(axum::http::StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway")
                        .with_detail(format!("{} failed to answer", proxy.name(service)))
                        .into_response();
                }
            }
            Err(_) => {
                inst.failed();
                return Problem::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    "gateway-timeout",
                    "Gateway timeout",
                )
                .with_detail(format!("{} did not answer in time", proxy.name(service)))
                .into_response();
            }
        }
        if body.is_none() && !retryable {
            break;
        }
        body = Some(Body::empty());
    }
    let service = proxy.name(service);
    tracing::warn!(service = %service, error = %last_error, "no upstream instance answered");
    Problem::unavailable(format!("{service} is unavailable")).into_response()
}

/// The OpenAPI paths of the services this gateway fronts, fetched from one
/// available instance of each and kept for a minute.
pub struct RemoteOpenApi {
    proxy: Arc<Proxy>,
    cached: tokio::sync::Mutex<Option<(Instant, serde_json::Map<String, serde_json::Value>)>>,
}

impl RemoteOpenApi {
    /// A source over the proxy's services.
    pub fn new(proxy: Arc<Proxy>) -> Arc<Self> {
        Arc::new(Self { proxy, cached: tokio::sync::Mutex::new(None) })
    }

    async fn fetch(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut merged = serde_json::Map::new();
        for (i, (service, _)) in self.proxy.services.iter().enumerate() {
            let Some(inst) = self.proxy.pick(ServiceId(i), &[]) else { continue };
            let Ok(uri) = format!("{}/v1/openapi.json", inst.base).parse::<Uri>() else { continue };
            let Ok(req) = Request::get(uri).body(Body::empty()) else { continue };
            let Ok(Ok(res)) = tokio::time::timeout(Duration::from_secs(2), self.proxy.send(&inst, req)).await
            else {
                tracing::warn!(service = %service, "cannot fetch the OpenAPI document");
                continue;
            };
            let Ok(body) =
                http_body_util::BodyExt::collect(http_body_util::Limited::new(res.into_body(), 8 << 20))
                    .await
            else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else { continue };
            // Only the paths this gateway actually routes to that service.
            for (path, item) in doc.get("paths").and_then(|p| p.as_object()).into_iter().flatten() {
                if self.proxy.service_for(path) == Some(service.as_str()) {
                    merged.insert(path.clone(), item.clone());
                }
            }
        }
        merged
    }
}

#[async_trait::async_trait]
impl kernel::OpenApiSource for RemoteOpenApi {
    async fn paths(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut cached = self.cached.lock().await;
        // An empty answer (instances not up yet) is asked again next time.
        if let Some((_, paths)) =
            cached.as_ref().filter(|(at, p)| at.elapsed() < Duration::from_secs(60) && !p.is_empty())
        {
            return paths.clone();
        }
        let fresh = self.fetch().await;
        *cached = Some((Instant::now(), fresh.clone()));
        fresh
    }
}

impl Proxy {
    /// Asks identity (through this proxy) who an API key stands for: the key
    /// authenticates its own lookup at `/v1/auth/introspect`.
    pub async fn introspect(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<Option<(kernel::auth::Caller, Option<i64>)>, kernel::BoxError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri("/v1/auth/introspect")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())?;
        let res = forward(self.clone(), req).await;
        match res.status() {
            axum::http::StatusCode::OK => {}
            axum::http::StatusCode::UNAUTHORIZED | axum::http::StatusCode::FORBIDDEN => return Ok(None),
            other => return Err(format!("identity answered {other} to an API-key lookup").into()),
        }
        let body = http_body_util::BodyExt::collect(res.into_body()).await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let uuid = |k: &str| v.get(k).and_then(|x| x.as_str()).and_then(|s| uuid::Uuid::parse_str(s).ok());
        let (Some(user_id), Some(tenant), Some(session_id)) =
            (uuid("user_id"), uuid("tenant_id"), uuid("session_id"))
        else {
            return Err("identity's API-key lookup answered an unexpected document".into());
        };
        let expires_at = v.get("expires_at").and_then(serde_json::Value::as_i64);
        let caller = kernel::auth::Caller {
            user_id,
            tenant: kernel::TenantId::from_uuid(tenant),
            role: v.get("role").and_then(|r| r.as_str()).unwrap_or("viewer").to_string(),
            session_id,
            scopes: v
                .get("scopes")
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            kind: kernel::auth::CallerKind::ApiKey,
        };
        Ok(Some((caller, expires_at)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in
            ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255", "1.100.9.199", "::1", "2001:db8::7"]
        {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed_and_others_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret, close, x-tenant-id"));
        h.insert(HeaderName::from_static("keep-alive"), HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(HeaderName::from_static("x-secret"), HeaderValue::from_static("1"));
        h.insert(HeaderName::from_static("x-tenant-id"), HeaderValue::from_static("t"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-tenant-id"], "a protected header stays even when named");
    }
}
