//! The routing service: the public redirect hot path. It answers `/{slug}`
//! from its own read model (schema `routing`, fed by link events) behind the
//! cache, asks links directly on a miss when links runs in the same process
//! (read-your-writes), applies the link's rules, and records each click as a
//! `link.clicked` event in the kernel's journal (one file append, published to
//! the bus in batches): no database transaction per request, and nothing
//! answered is lost on a crash.

pub mod agent;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kernel::db::{Db, DbError, Id, Migration, Migrations, Timestamp, Tx};
use kernel::events::{Consumer, Envelope, EnvelopeOf, Handler, HandlerError, Journal};
use kernel::http::ClientIp;
use kernel::password::{Hasher, Verified};
use kernel::{BoxError, Kernel, Problem, Service, ServiceContext, ServiceParts, TenantId};
use links::store::QR_DOMAIN;
use links::{QrRoute, RemoteRouteSource, RouteRecord, SharedRouteSource};
use serde_json::json;

/// Routing's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    schema: "routing",
    steps: &[
        Migration {
            version: "0001_routing",
            postgres: include_str!("../migrations/postgres/0001_routing.sql"),
            sqlite: include_str!("../migrations/sqlite/0001_routing.sql"),
        },
        Migration {
            version: "0002_domains",
            postgres: include_str!("../migrations/postgres/0002_domains.sql"),
            sqlite: include_str!("../migrations/sqlite/0002_domains.sql"),
        },
        Migration {
            version: "0003_route_rank",
            postgres: include_str!("../migrations/postgres/0003_route_rank.sql"),
            sqlite: include_str!("../migrations/sqlite/0003_route_rank.sql"),
        },
        Migration {
            version: "0004_domain_states",
            postgres: include_str!("../migrations/postgres/0004_domain_states.sql"),
            sqlite: include_str!("../migrations/sqlite/0004_domain_states.sql"),
        },
    ],
};

/// How long a route stays in the cache (changes also evict it).
pub const ROUTE_TTL: Duration = Duration::from_secs(60);
/// Wrong passwords allowed per link and client address in 15 minutes.
const PASSWORD_TRIES: u64 = 10;

/// This process's decoded copy of hot routes, in front of the shared cache:
/// a hit costs no decoding. An entry is good while the epoch it was read in is
/// current (every change to routes bumps it) and for at most `ttl`.
struct Local<T> {
    /// The value, the epoch it was read in, and when.
    map: std::sync::RwLock<std::collections::HashMap<String, LocalEntry<T>>>,
    ttl: Duration,
}

type LocalEntry<T> = (Arc<T>, u64, std::time::Instant);

/// Most entries in a [`Local`] cache; a full one starts over.
const LOCAL_ENTRIES: usize = 100_000;

impl<T> Local<T> {
    fn new(ttl: Duration) -> Self {
        Self { map: std::sync::RwLock::default(), ttl }
    }

    fn get(&self, key: &str, epoch: u64) -> Option<Arc<T>> {
        let map = self.map.read().ok()?;
        let (value, seen, at) = map.get(key)?;
        (*seen == epoch && at.elapsed() < self.ttl).then(|| value.clone())
    }

    fn put(&self, key: &str, value: Arc<T>, epoch: u64) {
        if let Ok(mut map) = self.map.write() {
            if map.len() >= LOCAL_ENTRIES {
                map.clear();
            }
            map.insert(key.to_string(), (value, epoch, std::time::Instant::now()));
        }
    }
}

struct Routing {
    kernel: Kernel,
    /// Decoded routes by cache key.
    local: Local<RouteRecord>,
    /// The country database, when `GEOIP_DB` names one.
    geoip: Option<maxminddb::Reader<Vec<u8>>>,
    /// Changes whenever the read model's handler evicts cache entries.
    epoch: Arc<AtomicU64>,
    /// The platform's own host (of the public URL), lower case.
    public_host: String,
    db: Db,
    journal: Journal,
    hasher: Hasher,
    visitor_key: ring::hmac::Key,
    /// Links in other processes (`SIGNPOST_UPSTREAMS` + `SIGNPOST_INTERNAL_TOKEN`).
    remote: Option<SharedRouteSource>,
}

type AppState = State<Arc<Routing>>;

macro_rules! on_tx {
    ($tx:expr, $t:ident => $body:expr) => {
        match $tx {
            Tx::Postgres($t) => $body,
            Tx::Sqlite($t) => $body,
        }
    };
}

/// A newer record wins; of two with the same version (whole seconds), the
/// later kind (see [`rank`]) does, since different kinds can arrive in either order.
const UPSERT_ROUTE: &str = "insert into routing.routes (tenant_id, domain, slug, link_id, record, version, rank) \
     values ($1, $2, $3, $4, $5, $6, $7) on conflict (domain, slug) do update set record = excluded.record, \
     version = excluded.version, link_id = excluded.link_id, rank = excluded.rank \
     where routes.tenant_id = $1 and (routes.version < excluded.version \
     or (routes.version = excluded.version and routes.rank <= excluded.rank))";

/// The order of a link's or QR code's events within one second: created,
/// updated, deleted. Each kind has a consumer of its own on NATS, so an update
/// and a deletion made in the same second can be applied in either order.
fn rank(event_type: &str) -> i16 {
    if event_type.ends_with(".created") {
        0
    } else if event_type.ends_with(".deleted") {
        2
    } else {
        1
    }
}
const ROUTE: &str = "select record from routing.routes where domain = $1 and slug = $2";
const LINK_ROUTE: &str =
    "select record from routing.routes where tenant_id = $1 and link_id = $2 and domain <> '#qr'";
const UPSERT_DOMAIN: &str = "insert into routing.domains (tenant_id, hostname, domain_id, version) \
     values ($1, $2, $3, $4) on conflict (hostname) do update set domain_id = excluded.domain_id, \
     version = excluded.version where domains.tenant_id = $1 and domains.version <= excluded.version";
/// Only the removed domain's own row goes: the hostname may belong to another domain by now.
const DELETE_DOMAIN: &str =
    "delete from routing.domains where tenant_id = $1 and hostname = $2 and domain_id = $3";
/// Records a verification (`$3` false) or a removal (true) of a domain and
/// answers whether it was removed: a removal is final, whichever came first.
const DOMAIN_STATE: &str = "insert into routing.domain_states (tenant_id, domain_id, removed) values ($1, $2, $3) \
     on conflict (domain_id) do update set removed = domain_states.removed or excluded.removed returning removed";
const DOMAIN: &str = "select hostname from routing.domains where hostname = $1";
/// Takes one click of a limited link, exactly: no row changes once the limit is reached.
const TAKE_CLICK: &str = "insert into routing.click_counts (tenant_id, link_id, clicks) values ($1, $2, 1) \
     on conflict (tenant_id, link_id) do update set clicks = click_counts.clicks + 1 \
     where click_counts.clicks < $3";
const CLICKS: &str = "select clicks from routing.click_counts where tenant_id = $1 and link_id = $2";

/// The events the read model follows.
const ROUTE_EVENTS: &[&str] = &[
    "link.created",
    "link.updated",
    "link.deleted",
    "qr.created",
    "qr.updated",
    "domain.verified",
    "domain.deleted",
];

fn cache_key(domain: &str, slug: &str) -> String {
    // Built on every redirect: pieces pushed, not formatted.
    let mut key = String::with_capacity(7 + domain.len() + slug.len());
    for piece in ["route:", domain, ":", slug] {
        key.push_str(piece);
    }
    key
}

/// Keeps the read model in step with link events.
struct RoutesHandler {
    kernel: Kernel,
    /// Bumped before each eviction (see [`Routing::fill`]).
    epoch: Arc<AtomicU64>,
}

#[async_trait]
impl Handler for RoutesHandler {
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> Result<(), HandlerError> {
        if event.event_type.starts_with("domain.") {
            let d: links::store::DomainEvent =
                event.data.parse().map_err(|e| HandlerError::Reject(format!("not a domain event: {e}")))?;
            if d.tenant_id != event.tenant_id {
                return Err(HandlerError::Reject("the domain's tenant is not the event's".into()));
            }
            // Both kinds meet on the domain's state row first: its lock orders
            // a verification and a removal applied at the same moment.
            let removing = event.event_type == "domain.deleted";
            let removed: bool = on_tx!(tx, t => t.scalar(
                t.query_scalar(DOMAIN_STATE).bind(Id(d.domain_id)).bind(removing),
            ).await)?;
            if removed {
                on_tx!(tx, t => t.execute(t.query(DELETE_DOMAIN).bind(d.hostname).bind(Id(d.domain_id))).await)?;
            } else {
                on_tx!(tx, t => t.execute(
                    t.query(UPSERT_DOMAIN).bind(d.hostname).bind(Id(d.domain_id)).bind(Timestamp::from_unix(d.version)),
                ).await)?;
            }
            return Ok(());
        }
        let (domain, slug, link_id, text, version) = if event.event_type.starts_with("qr.") {
            let qr: QrRoute =
                event.data.parse().map_err(|e| HandlerError::Reject(format!("not a QR event: {e}")))?;
            if qr.tenant_id != event.tenant_id {
                return Err(HandlerError::Reject("the QR code's tenant is not the event's".into()));
            }
            let text = serde_json::to_string(&qr).map_err(|e| HandlerError::Reject(e.to_string()))?;
            (QR_DOMAIN.to_string(), qr.code, qr.link_id, text, qr.version)
        } else {
            let mut record: RouteRecord =
                event.data.parse().map_err(|e| HandlerError::Reject(format!("not a link event: {e}")))?;
            if record.tenant_id != event.tenant_id {
                return Err(HandlerError::Reject("the link's tenant is not the event's".into()));
            }
            if event.event_type == "link.deleted" {
                record.deleted = true;
            }
            let text = serde_json::to_string(&record).map_err(|e| HandlerError::Reject(e.to_string()))?;
            (record.domain, record.slug, record.link_id, text, record.version)
        };
        on_tx!(tx, t => t.execute(
            t.query(UPSERT_ROUTE)
                .bind(domain)
                .bind(slug)
                .bind(Id(link_id))
                .bind(text)
                .bind(Timestamp::from_unix(version))
                .bind(rank(&event.event_type)),
        ).await)?;
        Ok(())
    }

    async fn committed(&self, events: &[Envelope]) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for e in events {
            let data = e.data.value();
            let field = |k: &str| data.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            if e.event_type.starts_with("domain.") {
                let _ = self.kernel.cache.delete(&format!("domain:{}", field("hostname"))).await;
            } else if e.event_type.starts_with("qr.") {
                let _ = self.kernel.cache.delete(&cache_key(QR_DOMAIN, &field("code"))).await;
            } else {
                let _ = self.kernel.cache.delete(&cache_key(&field("domain"), &field("slug"))).await;
                let _ = self.kernel.cache.delete(&link_key(&field("link_id"))).await;
            }
        }
    }
}

fn link_key(link_id: &str) -> String {
    format!("route-of-link:{link_id}")
}

impl Routing {
    /// Caches what a lookup read, unless an eviction ran since the lookup began:
    /// a read from before a change must never outlive the change's eviction.
    async fn fill(&self, key: &str, bytes: &[u8], ttl: Duration, seen: u64) {
        if self.epoch.load(Ordering::SeqCst) != seen {
            return;
        }
        let _ = self.kernel.cache.set(key, bytes, ttl).await;
        if self.epoch.load(Ordering::SeqCst) != seen {
            let _ = self.kernel.cache.delete(key).await;
        }
    }

    /// The route of a public path: this process's copy, the cache, then the
    /// read model, then (in-process) links.
    async fn lookup(&self, domain: &str, slug: &str) -> Result<Option<Arc<RouteRecord>>, BoxError> {
        let key = cache_key(domain, slug);
        let seen = self.epoch.load(Ordering::SeqCst);
        if let Some(r) = self.local.get(&key, seen) {
            return Ok(Some(r));
        }
        // Boxed: the redirect's future then does not carry the database and
        // HTTP futures of a miss, which every hit would otherwise move around.
        Box::pin(self.lookup_miss(domain, slug, key, seen)).await
    }

    /// [`Routing::lookup`] past this process's copy.
    async fn lookup_miss(
        &self,
        domain: &str,
        slug: &str,
        key: String,
        seen: u64,
    ) -> Result<Option<Arc<RouteRecord>>, BoxError> {
        if let Ok(Some(bytes)) = self.kernel.cache.get(&key).await
            && let Ok(r) = serde_json::from_slice::<RouteRecord>(&bytes)
        {
            let r = Arc::new(r);
            self.local.put(&key, r.clone(), seen);
            return Ok(Some(r));
        }
        let stored: Option<(String,)> = self.db.global_optional(ROUTE, &[domain, slug]).await?;
        let record = match stored.and_then(|(r,)| serde_json::from_str::<RouteRecord>(&r).ok()) {
            Some(r) => Some(r),
            // Not in the read model yet: a link created a moment ago. Ask links itself.
            None => match self.source() {
                Some(source) => source.route(domain, slug).await?,
                None => None,
            },
        };
        let record = record.map(Arc::new);
        if let Some(r) = &record
            && let Ok(bytes) = serde_json::to_vec(r.as_ref())
        {
            self.fill(&key, &bytes, ROUTE_TTL, seen).await;
            // Decoded already: the next request need not decode the cached bytes.
            self.local.put(&key, r.clone(), seen);
        }
        Ok(record)
    }

    /// Where to ask for a route the read model does not have yet: links in this
    /// process, or else links instances over HTTP when configured.
    fn source(&self) -> Option<SharedRouteSource> {
        self.kernel.registry.get::<SharedRouteSource>().or_else(|| self.remote.clone())
    }

    /// The verified custom domain of a hostname, if any (cached).
    async fn custom_domain(&self, host: &str) -> Result<Option<String>, BoxError> {
        let key = format!("domain:{host}");
        let seen = self.epoch.load(Ordering::SeqCst);
        if let Ok(Some(v)) = self.kernel.cache.get(&key).await {
            return Ok((!v.is_empty()).then(|| host.to_string()));
        }
        let found: Option<(String,)> = self.db.global_optional(DOMAIN, &[host]).await?;
        // Unknown hosts are remembered briefly too: a flood of them costs no queries.
        let (mark, ttl): (&[u8], u64) = if found.is_some() { (b"1", 60) } else { (b"", 5) };
        self.fill(&key, mark, Duration::from_secs(ttl), seen).await;
        Ok(found.map(|(h,)| h))
    }

    /// The QR code of a scan code and its link's route: cache, read model, then links.
    async fn lookup_qr(&self, code: &str) -> Result<Option<(QrRoute, RouteRecord)>, BoxError> {
        let key = cache_key(QR_DOMAIN, code);
        let seen = self.epoch.load(Ordering::SeqCst);
        let mut qr: Option<QrRoute> = match self.kernel.cache.get(&key).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            _ => None,
        };
        if qr.is_none() {
            let stored: Option<(String,)> = self.db.global_optional(ROUTE, &[QR_DOMAIN, code]).await?;
            qr = stored.and_then(|(r,)| serde_json::from_str(&r).ok());
            if let Some(q) = &qr
                && let Ok(bytes) = serde_json::to_vec(q)
            {
                self.fill(&key, &bytes, ROUTE_TTL, seen).await;
            }
        }
        let from_model = match &qr {
            Some(q) if !q.deleted => self.link_route(q.tenant_id, q.link_id).await?.map(|r| (q.clone(), r)),
            Some(_) => return Ok(None),
            None => None,
        };
        match from_model {
            Some(found) => Ok(Some(found)),
            None => match self.source() {
                Some(source) => source.qr(code).await,
                None => Ok(None),
            },
        }
    }

    /// A link's route by id (what a QR code points at).
    async fn link_route(&self, tenant: TenantId, link: uuid::Uuid) -> Result<Option<RouteRecord>, BoxError> {
        let key = link_key(&link.to_string());
        let seen = self.epoch.load(Ordering::SeqCst);
        if let Ok(Some(bytes)) = self.kernel.cache.get(&key).await
            && let Ok(r) = serde_json::from_slice::<RouteRecord>(&bytes)
        {
            return Ok(Some(r));
        }
        let row: Option<(String,)> = match &self.db {
            Db::Postgres(pg) => {
                let mut t = pg.read(tenant).await?;
                t.fetch_optional(t.query_as(LINK_ROUTE).bind(Id(link))).await?
            }
            Db::Sqlite(lite) => {
                let mut t = lite.read(tenant).await?;
                t.fetch_optional(t.query_as(LINK_ROUTE).bind(Id(link))).await?
            }
        };
        let record = row.and_then(|(r,)| serde_json::from_str::<RouteRecord>(&r).ok());
        if let Some(r) = &record
            && let Ok(bytes) = serde_json::to_vec(r)
        {
            self.fill(&key, &bytes, ROUTE_TTL, seen).await;
        }
        Ok(record)
    }

    async fn clicks(&self, tenant: TenantId, link: uuid::Uuid) -> Result<i64, DbError> {
        let row: Option<(i64,)> = match &self.db {
            Db::Postgres(pg) => {
                let mut t = pg.read(tenant).await?;
                t.fetch_optional(t.query_as(CLICKS).bind(Id(link))).await?
            }
            Db::Sqlite(lite) => {
                let mut t = lite.read(tenant).await?;
                t.fetch_optional(t.query_as(CLICKS).bind(Id(link))).await?
            }
        };
        Ok(row.map_or(0, |(n,)| n))
    }

    /// Counts one click of a link limited to `max`; false once the limit is reached.
    async fn take_click(&self, tenant: TenantId, link: uuid::Uuid, max: i64) -> Result<bool, DbError> {
        let taken = match &self.db {
            Db::Postgres(pg) => {
                let mut t = pg.begin(tenant).await?;
                let n = t.execute(t.query(TAKE_CLICK).bind(Id(link)).bind(max)).await?;
                t.commit().await?;
                n
            }
            Db::Sqlite(lite) => {
                let mut t = lite.begin(tenant).await?;
                let n = t.execute(t.query(TAKE_CLICK).bind(Id(link)).bind(max)).await?;
                t.commit().await?;
                n
            }
        };
        Ok(taken == 1)
    }

    /// The ISO country code of a client address (as the gateway keyed it), if known.
    fn country(&self, ip: &str) -> Option<String> {
        let db = self.geoip.as_ref()?;
        let addr: std::net::IpAddr = ip.strip_suffix("/64").unwrap_or(ip).parse().ok()?;
        let found = db.lookup(addr).ok()?;
        found.decode_path::<String>(&maxminddb::path!["country", "iso_code"]).ok().flatten()
    }

    /// A salted, daily-rotated hash of the visitor: never the address itself.
    fn visitor(&self, ip: &str, user_agent: &str) -> String {
        let day = time::OffsetDateTime::now_utc().date();
        // The tag of `{day}|{ip}|{user_agent}`, fed in pieces rather than formatted.
        let mut tag = ring::hmac::Context::with_key(&self.visitor_key);
        match day_text(day) {
            Some(text) => tag.update(&text),
            None => tag.update(day.to_string().as_bytes()),
        }
        for piece in [b"|", ip.as_bytes(), b"|", user_agent.as_bytes()] {
            tag.update(piece);
        }
        kernel::hex(&tag.sign().as_ref()[..16])
    }
}

/// A date as `Date`'s `Display` writes it (`2026-12-03`), for years 0 to 9999.
fn day_text(day: time::Date) -> Option<[u8; 10]> {
    let year = u16::try_from(day.year()).ok().filter(|y| *y <= 9999)?;
    let (month, date) = (u8::from(day.month()), day.day());
    let digit = |n: u16| b'0' + (n % 10) as u8;
    Some([
        digit(year / 1000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        b'-',
        digit(u16::from(month) / 10),
        digit(u16::from(month)),
        b'-',
        digit(u16::from(date) / 10),
        digit(u16::from(date)),
    ])
}

/// The routing service.
pub struct RoutingService;

#[async_trait]
impl Service for RoutingService {
    fn name(&self) -> &'static str {
        "routing"
    }

    fn migrations(&self) -> Option<Migrations> {
        Some(MIGRATIONS)
    }

    async fn start(&self, ctx: ServiceContext) -> Result<ServiceParts, BoxError> {
        let db = ctx.db.ok_or("routing needs its schema")?;
        let kernel = ctx.kernel;
        let key = kernel::keys::load_or_create(&kernel.config.data_dir, "visitor-salt")?;
        let public_host = reqwest::Url::parse(&kernel.config.public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        let geoip = match &kernel.config.geoip_db {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("GEOIP_DB: cannot read {}: {e}", path.display()))?;
                Some(
                    maxminddb::Reader::from_source(bytes)
                        .map_err(|e| format!("GEOIP_DB: {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let epoch = Arc::new(AtomicU64::new(0));
        // Another instance may apply a change (its consumer got the event): every
        // instance hears of it on the live tap and drops its decoded copies.
        let mut changes = kernel.bus.watch(ROUTE_EVENTS).await?;
        let (bump, draining) = (epoch.clone(), kernel.draining());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = draining.cancelled() => break,
                    e = futures_util::StreamExt::next(&mut changes) => match e {
                        Some(_) => { bump.fetch_add(1, Ordering::SeqCst); }
                        None => break,
                    },
                }
            }
        });
        // The tap is lossy: with a shared cache (several instances), a decoded copy
        // lives briefly; alone, every change reaches this process's own handler.
        let local_ttl = if kernel.cache.kind() == "memory" { ROUTE_TTL } else { Duration::from_secs(1) };
        let remote: Option<SharedRouteSource> =
            match (kernel.config.peers("links"), &kernel.config.internal_token) {
                ([], _) | (_, None) => None,
                (instances, Some(token)) => Some(Arc::new(RemoteRouteSource::new(instances, token.clone())?)),
            };
        let state = Arc::new(Routing {
            remote,
            local: Local::new(local_ttl),
            geoip,
            epoch: epoch.clone(),
            public_host,
            journal: kernel.journal("routing")?,
            hasher: Hasher::new(kernel::password::MIN_MEMORY_KIB, kernel::password::MIN_ITERATIONS, 2)?,
            visitor_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            kernel: kernel.clone(),
            db,
        });
        let router = Router::new()
            .route("/{slug}", get(redirect).head(redirect).post(unlock_link))
            .route("/q/{code}", get(scan).head(scan).post(unlock_qr))
            .with_state(state);
        Ok(ServiceParts {
            router,
            edge: None,
            consumers: vec![Consumer {
                name: "routing.links",
                event_types: ROUTE_EVENTS,
                handler: Arc::new(RoutesHandler { kernel, epoch }),
                lane: kernel::background::Lane::Prompt,
            }],
            openapi_paths: openapi(),
            openapi_source: None,
        })
    }
}

fn openapi() -> serde_json::Value {
    let slug = json!([{ "name": "slug", "in": "path", "required": true, "schema": { "type": "string" } }]);
    let page = json!({ "description": "An HTML page (browsers) or problem JSON", "content": { "text/html": {}, "application/problem+json": {} } });
    let code = json!([{ "name": "code", "in": "path", "required": true, "schema": { "type": "string" } }]);
    json!({ "/q/{code}": {
        "get": { "summary": "Scan a dynamic QR code: redirect to its link's destination; recorded as qr.scanned", "tags": ["redirect"],
            "security": [], "parameters": code,
            "responses": { "302": { "description": "Redirect (or 301/307, as the link says)" }, "200": { "description": "Password form" },
                           "404": page, "410": page } },
        "head": { "summary": "The same answer without a body", "tags": ["redirect"], "security": [], "parameters": code,
            "responses": { "302": { "description": "Redirect" }, "404": { "description": "Unknown" } } },
        "post": { "summary": "Unlock the password-protected link of a QR code", "tags": ["redirect"], "security": [], "parameters": code,
            "responses": { "302": { "description": "Redirect" }, "401": { "description": "Wrong password" } } }
    }, "/{slug}": {
        "get": { "summary": "Follow a short link: 301/302/307 to its destination, by its rules; the click is recorded", "tags": ["redirect"],
            "security": [], "parameters": slug,
            "responses": { "302": { "description": "Redirect (or 301/307, as the link says)" }, "200": { "description": "Password form" },
                           "404": page, "410": page } },
        "head": { "summary": "The same answer without a body (recorded as a probe)", "tags": ["redirect"], "security": [], "parameters": slug,
            "responses": { "302": { "description": "Redirect" }, "404": { "description": "Unknown" } } },
        "post": { "summary": "Unlock a password-protected link (form field `password`)", "tags": ["redirect"], "security": [], "parameters": slug,
            "requestBody": { "content": { "application/x-www-form-urlencoded": { "schema": { "type": "object", "properties": { "password": { "type": "string" } } } } } },
            "responses": { "302": { "description": "Redirect" }, "401": { "description": "Wrong password: the form again" }, "429": page } }
    } })
}

/// The request facts a redirect needs.
struct Visit {
    head: bool,
    /// The answer to a pixel link's consent page (`?consent=yes|no`).
    consent: Option<bool>,
    user_agent: String,
    referrer: Option<String>,
    ip: String,
    html: bool,
}

fn visit(req: &mut Request) -> Visit {
    // Taken, not copied: nothing after the handler reads it.
    let ip = req.extensions_mut().remove::<ClientIp>().map(|c| c.0).unwrap_or_else(|| {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        kernel::http::client_key(peer)
    });
    let h = req.headers();
    let text = |name: header::HeaderName, max: usize| {
        h.get(name).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(max).collect::<String>())
    };
    let consent = req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| match kv {
            "consent=yes" => Some(true),
            "consent=no" => Some(false),
            _ => None,
        })
    });
    Visit {
        head: req.method() == Method::HEAD,
        consent,
        user_agent: text(header::USER_AGENT, 512).unwrap_or_default(),
        referrer: text(header::REFERER, 1024),
        ip,
        html: pages::wants_html(h),
    }
}

/// The domain a request's host names; `None` for an unusable Host header.
/// What a Host header names: `Ok(Some(""))` for the platform's own host (or an
/// address, or localhost), `Ok(Some(hostname))` for a verified custom domain,
/// `Ok(None)` for a host nobody verified; `Err` for an unusable header.
async fn host_domain(r: &Routing, headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(h) = headers.get(header::HOST) else { return Ok(Some(String::new())) };
    let bad = || Problem::bad_request("unusable Host header").into_response();
    let host = h.to_str().map_err(|_| bad())?;
    if host.is_empty() || host.len() > 255 {
        return Err(bad());
    }
    let name = if host.starts_with('[') {
        return Ok(Some(String::new()));
    } else {
        host.rsplit_once(':')
            .map_or(host, |(n, port)| if port.bytes().all(|b| b.is_ascii_digit()) { n } else { host })
    }
    .trim_end_matches('.');
    // Copied only when it has capitals (a copy per redirect otherwise).
    let name: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    };
    if name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name == r.public_host {
        return Ok(Some(String::new()));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(bad());
    }
    Box::pin(r.custom_domain(&name)).await.map_err(|e| internal(&e))
}

fn not_found(html: bool) -> Response {
    if html {
        pages::page(StatusCode::NOT_FOUND, "Link not found", "There is no link at this address.")
    } else {
        Problem::not_found().with_detail("no link has this address").into_response()
    }
}

fn gone(html: bool, why: &str) -> Response {
    if html {
        pages::page(StatusCode::GONE, "Link no longer available", why)
    } else {
        Problem::new(StatusCode::GONE, "gone", "Link no longer available")
            .with_detail(why.to_string())
            .into_response()
    }
}

/// A public path: a link's slug or a QR code's scan code.
enum Public {
    Link(String),
    Qr(String),
}

impl Public {
    /// Where the password form posts back to.
    fn action(&self) -> String {
        match self {
            Self::Link(s) => format!("/{s}"),
            Self::Qr(c) => format!("/q/{c}"),
        }
    }
}

/// The live route a public path leads to, with the QR code it came through.
async fn resolve(
    r: &Routing,
    p: &Public,
    headers: &HeaderMap,
) -> Result<Option<(Arc<RouteRecord>, Option<uuid::Uuid>)>, Response> {
    match p {
        Public::Link(slug) => {
            if !links::model::could_be_slug(slug) {
                return Ok(None);
            }
            let Some(domain) = host_domain(r, headers).await? else { return Ok(None) };
            match r.lookup(&domain, slug).await {
                Ok(Some(route)) if !route.deleted => Ok(Some((route, None))),
                Ok(_) => Ok(None),
                Err(e) => Err(internal(&e)),
            }
        }
        Public::Qr(code) => {
            if !links::model::could_be_slug(code) {
                return Ok(None);
            }
            match Box::pin(r.lookup_qr(code)).await {
                Ok(Some((qr, route))) if !route.deleted && !qr.deleted => {
                    Ok(Some((Arc::new(route), Some(qr.qr_id))))
                }
                Ok(_) => Ok(None),
                Err(e) => Err(internal(&e)),
            }
        }
    }
}

async fn redirect(
    State(r): AppState,
    kernel::http::Path(slug): kernel::http::Path<String>,
    mut req: Request,
) -> Response {
    let v = visit(&mut req);
    answer(&r, &Public::Link(slug), req.headers(), v, false).await
}

async fn scan(
    State(r): AppState,
    kernel::http::Path(code): kernel::http::Path<String>,
    mut req: Request,
) -> Response {
    let v = visit(&mut req);
    answer(&r, &Public::Qr(code), req.headers(), v, false).await
}

async fn unlock_link(
    State(r): AppState,
    kernel::http::Path(slug): kernel::http::Path<String>,
    req: Request,
) -> Response {
    unlock(&r, Public::Link(slug), req).await
}

async fn unlock_qr(
    State(r): AppState,
    kernel::http::Path(code): kernel::http::Path<String>,
    req: Request,
) -> Response {
    unlock(&r, Public::Qr(code), req).await
}

#[derive(serde::Deserialize)]
struct UnlockForm {
    password: String,
}

async fn unlock(r: &Routing, p: Public, mut req: Request) -> Response {
    let v = visit(&mut req);
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 16 * 1024).await {
        Ok(b) => b,
        Err(_) => return Problem::payload_too_large(16 * 1024).into_response(),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<UnlockForm>(&body) else {
        return Problem::bad_request("expected a form with a password field").into_response();
    };
    let route = match resolve(r, &p, &headers).await {
        Ok(Some((route, _))) => route,
        Ok(None) => return not_found(v.html),
        Err(res) => return res,
    };
    let Some(hash) = route.password_hash.clone() else { return answer(r, &p, &headers, v, true).await };
    let key = format!("link-password:{}:{}", route.link_id, v.ip);
    match r.kernel.limiter.peek(&key, PASSWORD_TRIES, Duration::from_secs(900)).await {
        Ok(d) if !d.allowed => {
            return Problem::too_many_requests(d.reset_after.as_secs_f64().ceil() as u64).into_response();
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "rate limiter unavailable for a link password"),
    }
    match r.hasher.verify(form.password, Some(hash)).await {
        Ok(Verified::Yes | Verified::YesRehash(_)) => answer(r, &p, &headers, v, true).await,
        Ok(Verified::No) => {
            let _ = r.kernel.limiter.hit(&key, PASSWORD_TRIES, Duration::from_secs(900)).await;
            pages::password_form(&p.action(), true)
        }
        Err(e) => internal(&e),
    }
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "redirect failed");
    Problem::internal().into_response()
}

/// Applies the link's rules and records the click (or the scan).
async fn answer(r: &Routing, p: &Public, headers: &HeaderMap, v: Visit, unlocked: bool) -> Response {
    let (route, qr) = match resolve(r, p, headers).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(v.html),
        Err(res) => return res,
    };
    let now = Timestamp::now().unix();
    if route.expires_at.is_some_and(|e| e <= now) {
        return match &route.expired_url {
            Some(u) => location(StatusCode::FOUND, u),
            None => gone(v.html, "This link has expired."),
        };
    }
    // A spent link says so before asking for a password or consent; otherwise
    // the click itself (take_click below) is the check, with no read before it.
    let page_first =
        (route.password_hash.is_some() && !unlocked) || (!route.pixels.is_empty() && v.consent.is_none());
    if let (Some(max), true) = (route.max_clicks, page_first) {
        match Box::pin(r.clicks(route.tenant_id, route.link_id)).await {
            Ok(n) if n >= max => return gone(v.html, "This link has reached its click limit."),
            Ok(_) => {}
            Err(e) => return internal(&e),
        }
    }
    if route.password_hash.is_some() && !unlocked {
        return pages::password_form(&p.action(), false);
    }
    let agent = agent::classify(&v.user_agent, v.head);
    let country = r.country(&v.ip);
    // An app-store link for the device first, then the visitor's country, then the default.
    let target = match agent.os {
        "ios" => route.ios_url.as_deref(),
        "android" => route.android_url.as_deref(),
        _ => None,
    }
    .or_else(|| route.geo.as_ref().zip(country.as_deref()).and_then(|(g, c)| g.get(c)).map(String::as_str))
    .unwrap_or(&route.url);
    let target = with_utm(target, &route);
    // A link with pixels asks first; the pixels fire only after a yes.
    let fire = if route.pixels.is_empty() || unlocked || v.head {
        false
    } else {
        match v.consent {
            None => return pages::consent(&p.action(), &route.pixels),
            Some(yes) => yes,
        }
    };
    let counted = matches!(agent.bot, "human" | "bot");
    // Only limited links pay for counting, and the count is exact: the click that
    // would pass the limit is refused.
    if let (Some(max), true) = (route.max_clicks, counted) {
        match Box::pin(r.take_click(route.tenant_id, route.link_id, max)).await {
            Ok(true) => {}
            Ok(false) => return gone(v.html, "This link has reached its click limit."),
            Err(e) => return internal(&e),
        }
    }
    let event_type = if qr.is_some() { "qr.scanned" } else { "link.clicked" };
    let referrer_host = v
        .referrer
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_string));
    let click = EnvelopeOf::new(
        event_type,
        route.tenant_id,
        "anonymous",
        Click {
            link_id: route.link_id,
            qr_id: qr,
            slug: &route.slug,
            domain: &route.domain,
            at: Timestamp::now().rfc3339(),
            referrer: v.referrer.as_deref(),
            referrer_host,
            browser: agent.browser,
            os: agent.os,
            device: agent.device,
            bot: agent.bot,
            country,
            visitor: r.visitor(&v.ip, &v.user_agent),
            counted,
        },
    );
    // The click is in the journal before the answer leaves: a redirect that was
    // answered is never lost, even to kill -9.
    if let Err(e) = r.journal.append_of(&click).await {
        return internal(&e);
    }
    if fire {
        return pages::fire_pixels(&route.pixels, &target);
    }
    let status = StatusCode::from_u16(route.redirect_type).unwrap_or(StatusCode::FOUND);
    location(status, &target)
}

/// The payload of `link.clicked` and `qr.scanned`.
#[derive(serde::Serialize)]
struct Click<'a> {
    link_id: uuid::Uuid,
    qr_id: Option<uuid::Uuid>,
    slug: &'a str,
    domain: &'a str,
    at: String,
    referrer: Option<&'a str>,
    referrer_host: Option<String>,
    browser: &'a str,
    os: &'a str,
    device: &'a str,
    /// human, bot, link-preview, head-probe
    bot: &'a str,
    country: Option<String>,
    /// A salted, daily-rotated hash of address and user agent: never the address.
    visitor: String,
    /// Whether the click counts towards the link's click limit.
    counted: bool,
}

fn with_utm(target: &str, route: &RouteRecord) -> String {
    let Some(utm) = &route.utm else { return target.to_string() };
    let Ok(mut url) = reqwest::Url::parse(target) else { return target.to_string() };
    let present: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    {
        let mut q = url.query_pairs_mut();
        for (k, val) in utm.pairs() {
            if !present.iter().any(|p| p == k) {
                q.append_pair(k, val);
            }
        }
    }
    url.to_string()
}

fn location(status: StatusCode, target: &str) -> Response {
    let Ok(value) = HeaderValue::from_str(target) else { return Problem::internal().into_response() };
    let mut res = status.into_response();
    // Sized for these and what the edge adds, so that the map never grows.
    *res.headers_mut() = axum::http::HeaderMap::with_capacity(3 + kernel::http::LAYER_HEADERS);
    res.headers_mut().insert(header::LOCATION, value);
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer-when-downgrade"));
    res
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn days_are_written_as_date_display_writes_them() {
        for (y, m, d) in [(2026, 12, 3), (1999, 1, 31), (5, 2, 9), (9999, 12, 31), (2024, 2, 29)] {
            let day = time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap();
            assert_eq!(day_text(day).map(|t| String::from_utf8(t.to_vec()).unwrap()), Some(day.to_string()));
        }
    }
}
