//! Wires services to backends: connects what the configuration names, runs
//! migrations, starts consumers, relays and journals, mounts the routes and
//! shuts everything down in order.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Query as AxumQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;

use crate::background::{Background, Lane};
use crate::cache::{Cache, CacheError, MemoryCache, RedisCache, RedisConn};
use crate::config::{Config, DatabaseConfig};
use crate::db::{Db, DbError, Migrations, PgBackend, SqliteBackend};
use crate::events::{Bus, BusError, Consumer, Journal, JournalError, MemoryBus, NatsBus, run_relay};
use crate::http;
use crate::http::Path;
use crate::problem::Problem;
use crate::ratelimit::{MemoryLimiter, RateLimiter, RedisLimiter};
use crate::server::App;
use crate::storage::{ObjectKey, Storage, StorageError, UrlMethod};

/// Any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest upload through a local signed PUT URL.
pub const STORAGE_UPLOAD_LIMIT: usize = 25 * 1024 * 1024;

/// A service as the platform sees it: a name, its migrations, and how it starts.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Short name, also its schema name when it has one (`links`).
    fn name(&self) -> &'static str;
    /// Its schema's migrations; `None` for a service without tables.
    fn migrations(&self) -> Option<Migrations> {
        None
    }
    /// Builds the router, consumers and OpenAPI paths on the kernel's handles.
    async fn start(&self, ctx: ServiceContext) -> Result<ServiceParts, BoxError>;
}

/// What a service is given to start.
#[derive(Clone)]
pub struct ServiceContext {
    /// Shared handles.
    pub kernel: Kernel,
    /// Its own schema, when it declared migrations.
    pub db: Option<Db>,
}

/// Wraps the whole platform router (the gateway's edge middleware), and may
/// put a front before it (the gateway's proxy).
pub type Edge = Box<dyn FnOnce(App) -> App + Send>;

/// OpenAPI paths known only at run time (the gateway's remote services).
#[async_trait]
pub trait OpenApiSource: Send + Sync + 'static {
    /// The `paths` to merge into `/v1/openapi.json` now.
    async fn paths(&self) -> serde_json::Map<String, Value>;
}

/// What a started service hands back.
pub struct ServiceParts {
    /// Its routes (under its own `/v1/...` prefixes, or public root paths).
    pub router: Router,
    /// Middleware around every route of the process (only the gateway has
    /// one). It observes the requests too, with [`http::Observed`] around
    /// itself as one layer: the kernel adds [`http::Observe`] only when no
    /// service has an edge.
    pub edge: Option<Edge>,
    /// Its event consumers.
    pub consumers: Vec<Consumer>,
    /// Its OpenAPI `paths` object (merged into `/v1/openapi.json`).
    pub openapi_paths: Value,
    /// More paths, fetched when the document is asked for.
    pub openapi_source: Option<Arc<dyn OpenApiSource>>,
}

/// The handles every service shares.
#[derive(Clone)]
pub struct Kernel {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Cache (in-process or Redis).
    pub cache: Arc<dyn Cache>,
    /// Rate limiter (in-process or Redis).
    pub limiter: Arc<dyn RateLimiter>,
    /// Object storage (local or S3).
    pub storage: Storage,
    /// Event bus (in-process or NATS).
    pub bus: Arc<dyn Bus>,
    /// Identity, when it runs in this process: the gateway verifies tokens and
    /// resolves API keys through it without a network hop.
    pub authority: Arc<std::sync::OnceLock<Arc<dyn crate::auth::Authority>>>,
    /// In-process clients that services register for each other.
    pub registry: Arc<crate::registry::Registry>,
    /// The prompt background lane: consumers that keep read models current,
    /// outbox relays, jobs (see [`crate::background`]).
    pub background: Background,
    /// The bulk background lane: journal drainers and high-rate consumers.
    pub bulk: Background,
    redis: Option<RedisConn>,
    journals: Arc<Mutex<Vec<JoinHandle<()>>>>,
    journal_stop: CancellationToken,
    /// Fires once the consumers of this process are subscribed.
    consuming: CancellationToken,
    draining: CancellationToken,
}

impl Kernel {
    /// This process's journal `name` for high-rate events (clicks, scans,
    /// views), under `<data_dir>/journal/<name>`; its drainers publish to the bus.
    pub fn journal(&self, name: &str) -> Result<Journal, JournalError> {
        let dir = self.config.data_dir.join("journal").join(name);
        // The drainers are high-rate background work: they start on the bulk lane.
        let (journal, drainers) = {
            let _bg = self.bulk.enter();
            Journal::open(&dir, self.bus.clone(), self.consuming.clone(), self.journal_stop.clone())?
        };
        if let Ok(mut tasks) = self.journals.lock() {
            tasks.extend(drainers);
        }
        Ok(journal)
    }

    /// The runtime of `lane`.
    pub fn lane(&self, lane: Lane) -> &Background {
        match lane {
            Lane::Prompt => &self.background,
            Lane::Bulk => &self.bulk,
        }
    }

    /// Fires when the process starts to stop: long-lived responses (event
    /// streams) and background loops end on it, so shutdown does not wait for them.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// The Redis connection, when one is configured.
    pub fn redis(&self) -> Option<&RedisConn> {
        self.redis.as_ref()
    }
}

/// Why the platform could not start; displayed as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Database.
    #[error("{0}")]
    Db(#[from] DbError),
    /// Redis.
    #[error("{0}")]
    Cache(#[from] CacheError),
    /// NATS.
    #[error("{0}")]
    Bus(#[from] BusError),
    /// Object storage.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// A service's own start-up.
    #[error("service {service}: {error}")]
    Service {
        /// Which.
        service: &'static str,
        /// Why.
        error: BoxError,
    },
    /// Listening or serving.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A front (the proxying gateway) would answer for services in its own process.
    #[error(
        "the gateway proxies (SIGNPOST_UPSTREAMS) but this process also runs {0}: \
         a proxying gateway runs alone (`signpost serve gateway`)"
    )]
    FrontBesideServices(String),
}

/// The database deployment.
#[derive(Clone, Debug)]
pub enum DbBackend {
    /// PostgreSQL.
    Postgres(PgBackend),
    /// SQLite.
    Sqlite(SqliteBackend),
}

impl DbBackend {
    /// Connects to what the configuration names.
    pub async fn connect(config: &Config) -> Result<Self, DbError> {
        Ok(match &config.database {
            DatabaseConfig::Sqlite { dir } => Self::Sqlite(SqliteBackend::open(dir).await?),
            DatabaseConfig::Postgres { url, app_url, app_role, owner_role, max_connections } => {
                Self::Postgres(
                    PgBackend::connect(url, app_url.as_ref(), app_role, owner_role, *max_connections).await?,
                )
            }
        })
    }

    /// Applies missing migrations; returns `schema/version` of each applied.
    pub async fn migrate(&self, all: &[Migrations]) -> Result<Vec<String>, DbError> {
        match self {
            Self::Postgres(pg) => pg.migrate(all).await,
            Self::Sqlite(lite) => lite.migrate(all).await,
        }
    }

    /// A service schema's handle.
    pub async fn db(&self, schema: &'static str) -> Result<Db, DbError> {
        Ok(match self {
            Self::Postgres(pg) => Db::Postgres(pg.db(schema)),
            Self::Sqlite(lite) => Db::Sqlite(lite.db(schema).await?),
        })
    }

    /// `postgres` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    async fn close(&self) {
        if let Self::Postgres(pg) = self {
            pg.close().await;
        }
    }
}

/// Applies every service's migrations on the configured database.
pub async fn migrate(config: &Config, services: &[Arc<dyn Service>]) -> Result<Vec<String>, StartError> {
    let db = DbBackend::connect(config).await?;
    let all: Vec<Migrations> = services.iter().filter_map(|s| s.migrations()).collect();
    let applied = db.migrate(&all).await?;
    db.close().await;
    Ok(applied)
}

/// A running platform (every given service in this process).
pub struct Platform {
    kernel: Kernel,
    db: DbBackend,
    dbs: Vec<Db>,
    app: App,
    admin: Router,
    relay_stop: CancellationToken,
    relays: Vec<JoinHandle<()>>,
    consumer_stop: CancellationToken,
    consumers: Vec<JoinHandle<()>>,
}

impl Platform {
    /// Connects every backend, migrates, starts the services and their workers.
    pub async fn start(config: Config, services: Vec<Arc<dyn Service>>) -> Result<Self, StartError> {
        // Outbound TLS (S3, webhooks) needs it, whoever embeds the platform.
        crate::install_crypto_provider();
        let config = Arc::new(config);
        let db = DbBackend::connect(&config).await?;
        let all: Vec<Migrations> = services.iter().filter_map(|s| s.migrations()).collect();
        let applied = db.migrate(&all).await?;
        if !applied.is_empty() {
            tracing::info!(applied = ?applied, "migrations applied");
        }
        let redis = match &config.redis {
            Some(r) => Some(RedisConn::connect(&r.url, &r.prefix).await?),
            None => None,
        };
        let (cache, limiter): (Arc<dyn Cache>, Arc<dyn RateLimiter>) = match &redis {
            Some(r) => (Arc::new(RedisCache::new(r.clone())), Arc::new(RedisLimiter::new(r.clone()))),
            None => (Arc::new(MemoryCache::new(100_000)), Arc::new(MemoryLimiter::new())),
        };
        let bus: Arc<dyn Bus> = match &config.nats {
            Some(n) => Arc::new(NatsBus::connect(&n.url, &n.stream).await?),
            None => Arc::new(MemoryBus::new()),
        };
        let storage = Storage::open(
            &config.storage,
            &config.data_dir,
            config.storage_signing_key.as_ref(),
            &config.public_url,
        )
        .await?;
        let kernel = Kernel {
            background: Background::start(Lane::Prompt, config.background_nice)?,
            bulk: Background::start(Lane::Bulk, config.bulk_nice)?,
            config: config.clone(),
            cache,
            limiter,
            storage,
            bus,
            authority: Arc::default(),
            registry: Arc::default(),
            redis,
            journals: Arc::default(),
            journal_stop: CancellationToken::new(),
            consuming: CancellationToken::new(),
            draining: CancellationToken::new(),
        };

        let mut dbs = Vec::new();
        let mut routers = Vec::new();
        let mut consumers = Vec::new();
        let mut paths = serde_json::Map::new();
        let mut edges = Vec::new();
        let mut sources = Vec::new();
        let mut routed = Vec::new();
        for service in &services {
            let service_db = match service.migrations() {
                Some(m) => {
                    let d = db.db(m.schema).await?;
                    dbs.push(d.clone());
                    Some(d)
                }
                None => None,
            };
            let parts = service
                .start(ServiceContext { kernel: kernel.clone(), db: service_db.clone() })
                .await
                .map_err(|error| StartError::Service { service: service.name(), error })?;
            if parts.router.has_routes() {
                routed.push(service.name());
            }
            routers.push(parts.router);
            edges.extend(parts.edge);
            sources.extend(parts.openapi_source);
            if let Value::Object(p) = parts.openapi_paths {
                paths.extend(p);
            }
            for c in parts.consumers {
                let Some(d) = service_db.clone() else {
                    return Err(StartError::Service {
                        service: service.name(),
                        error: "a service with consumers needs a schema (for its inbox)".into(),
                    });
                };
                consumers.push((c, d));
            }
        }

        // Consumers first: on the in-process bus, a relay publishing to nobody would drop events.
        let consumer_stop = CancellationToken::new();
        let mut consumer_tasks = Vec::new();
        // Consumers that deduplicate themselves still get inbox rows for dead letters.
        // Each consumer's inbox is pruned on its own lane, so that pruning never
        // holds a file's write lock from a thread of the other lane.
        let pruned = [Lane::Prompt, Lane::Bulk].map(|lane| {
            let inboxes: Vec<(&'static str, Db)> =
                consumers.iter().filter(|(c, _)| c.lane == lane).map(|(c, d)| (c.name, d.clone())).collect();
            (lane, inboxes)
        });
        for (c, d) in consumers {
            // Started from its lane's runtime, so the tasks it spawns run there.
            let (bus, stop, lane) = (kernel.bus.clone(), consumer_stop.clone(), kernel.lane(c.lane));
            let started = lane.spawn(async move { bus.start_consumer(c, d, stop).await }).await;
            consumer_tasks.extend(started.map_err(std::io::Error::other)??);
        }
        kernel.consuming.cancel();
        let relay_stop = CancellationToken::new();
        let mut relays: Vec<JoinHandle<()>> = dbs
            .iter()
            .map(|d| kernel.background.spawn(run_relay(d.clone(), kernel.bus.clone(), relay_stop.clone())))
            .collect();
        // Inbox pruning stops with the relays, before the consumers.
        for (lane, inboxes) in pruned {
            if !inboxes.is_empty() {
                relays.push(
                    kernel.lane(lane).spawn(crate::events::run_inbox_pruning(inboxes, relay_stop.clone())),
                );
            }
        }

        let (app, admin) = build_router(&kernel, &db, &dbs, routers, edges, paths, sources);
        // The front takes every path but the kernel's: routes of services
        // beside it would never be reached.
        if app.front.is_some() && !routed.is_empty() {
            return Err(StartError::FrontBesideServices(routed.join(", ")));
        }
        Ok(Self { kernel, db, dbs, app, admin, relay_stop, relays, consumer_stop, consumers: consumer_tasks })
    }

    /// What the main listener serves (services + kernel routes + middleware).
    pub fn app(&self) -> App {
        self.app.clone()
    }

    /// The shared handles.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The database deployment.
    pub fn database(&self) -> &DbBackend {
        &self.db
    }

    /// A started service's schema handle.
    pub fn db(&self, schema: &str) -> Option<&Db> {
        self.dbs.iter().find(|d| d.schema() == schema)
    }

    /// Serves until `stop` fires, then stops accepting, gives in-flight
    /// requests the configured deadline, and shuts the workers down in order.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) -> Result<(), StartError> {
        metrics::gauge!("signpost_up").set(1.0);
        let (draining, stopping) = (self.kernel.draining.clone(), stop.clone());
        tokio::spawn(async move {
            stopping.cancelled().await;
            draining.cancel();
        });
        let config = &self.kernel.config;
        let tls = match &config.tls {
            Some((cert, key)) => Some(
                crate::server::tls_config(cert, key).map_err(|e| StartError::Io(std::io::Error::other(e)))?,
            ),
            None => None,
        };
        // Stopped after the shutdown below: until then, connections and the pools
        // they registered sockets with may still need them.
        let threads = Arc::new(crate::server::ConnThreads::start(config.http_threads)?);
        if let (Some(addr), Ok(local)) = (config.http_redirect_listen, listener.local_addr()) {
            let redirect = TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            let router = crate::server::https_redirect(local.port());
            tokio::spawn(crate::server::serve(
                redirect,
                router.into(),
                None,
                threads.clone(),
                stop.clone(),
                config.shutdown_timeout,
            ));
        }
        if let Some(addr) = config.admin_listen {
            let admin = TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            tokio::spawn(crate::server::serve(
                admin,
                self.admin.clone().into(),
                None,
                threads.clone(),
                stop.clone(),
                config.shutdown_timeout,
            ));
        }
        crate::server::serve(listener, self.app.clone(), tls, threads.clone(), stop, config.shutdown_timeout)
            .await?;
        metrics::gauge!("signpost_up").set(0.0);
        self.shutdown().await;
        drop(threads);
        Ok(())
    }

    /// Stops the workers in dependency order: journals publish what they hold,
    /// relays flush the outboxes, consumers finish, pools close.
    pub async fn shutdown(self) {
        self.kernel.draining.cancel();
        self.kernel.journal_stop.cancel();
        let journals = self.kernel.journals.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        for t in journals {
            let _ = t.await;
        }
        self.relay_stop.cancel();
        for t in self.relays {
            let _ = t.await;
        }
        self.consumer_stop.cancel();
        for t in self.consumers {
            let _ = t.await;
        }
        // Closing waits for connections still checked out; do not wait forever.
        let close = async {
            for d in &self.dbs {
                if let Db::Sqlite(lite) = d {
                    lite.close().await;
                }
            }
            self.db.close().await;
        };
        if tokio::time::timeout(std::time::Duration::from_secs(3), close).await.is_err() {
            tracing::warn!("database connections still busy at exit");
        }
        tracing::info!("shut down cleanly");
    }
}

struct KernelState {
    kernel: Kernel,
    database: &'static str,
    probe: Option<Db>,
    openapi: Arc<Value>,
    openapi_sources: Arc<Vec<Arc<dyn OpenApiSource>>>,
}

fn build_router(
    kernel: &Kernel,
    db: &DbBackend,
    dbs: &[Db],
    services: Vec<Router>,
    edges: Vec<Edge>,
    paths: serde_json::Map<String, Value>,
    sources: Vec<Arc<dyn OpenApiSource>>,
) -> (App, Router) {
    // Shared, not copied: axum clones a route's state for every request, and a
    // `Kernel` clone is a dozen reference counts and three cancellation-token locks.
    let state = Arc::new(KernelState {
        kernel: kernel.clone(),
        database: db.kind(),
        probe: dbs.first().cloned(),
        openapi: Arc::new(openapi(paths, kernel.storage.serves_signed_urls())),
        openapi_sources: Arc::new(sources),
    });
    let limit = kernel.config.body_limit;
    // Operator endpoints: on their own listener when one is configured.
    let operator = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state.clone());
    let admin = operator.clone().fallback(http::not_found).layer(http::Observe::layer());
    let mut app = if kernel.config.admin_listen.is_some() {
        Router::new().route("/healthz", get(healthz)).with_state(state.clone())
    } else {
        operator
    };
    app = app.route("/v1/openapi.json", get(openapi_json).with_state(state.clone()));
    for r in services {
        app = app.merge(r);
    }
    // The body guard covers every JSON route; uploads get their own, larger limit below.
    app = app.layer(http::BodyLimitLayer(limit));
    if kernel.storage.serves_signed_urls() {
        app = app.merge(
            Router::new()
                .route("/v1/storage/{*key}", get(storage_get).put(storage_put))
                .layer(http::BodyLimitLayer(STORAGE_UPLOAD_LIMIT))
                .with_state(state),
        );
    }
    app = app.fallback(http::not_found).method_not_allowed_fallback(http::method_not_allowed);
    if edges.is_empty() {
        app = app.layer(http::Observe::layer());
    }
    let app = edges.into_iter().fold(App::from(app), |app, edge| edge(app));
    (app, admin)
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(s): State<Arc<KernelState>>) -> Response {
    let k = &s.kernel;
    let db = match &s.probe {
        Some(d) => d.ping().await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let checks = [
        ("database", s.database, db),
        ("cache", k.cache.kind(), k.cache.ping().await.map_err(|e| e.to_string())),
        ("bus", k.bus.kind(), k.bus.ping().await.map_err(|e| e.to_string())),
        ("storage", k.storage.kind(), k.storage.ping().await.map_err(|e| e.to_string())),
    ];
    let ready = checks.iter().all(|(_, _, r)| r.is_ok());
    let report: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, kind, r)| {
            let v = match r {
                Ok(()) => json!({ "status": "up", "backend": kind }),
                Err(e) => {
                    tracing::warn!(check = name, error = %e, "readiness check failed");
                    json!({ "status": "down", "backend": kind, "error": e.chars().take(200).collect::<String>() })
                }
            };
            (name.to_string(), v)
        })
        .collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "status": if ready { "ready" } else { "unready" }, "checks": report })))
        .into_response()
}

async fn metrics_text() -> Response {
    let body = crate::telemetry::metrics_handle().map(|h| h.render()).unwrap_or_default();
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res
}

async fn openapi_json(State(s): State<Arc<KernelState>>) -> Response {
    let mut doc = s.openapi.as_ref().clone();
    for source in s.openapi_sources.iter() {
        let extra = source.paths().await;
        if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
            for (path, item) in extra {
                // The process's own routes win over what another process reports.
                paths.entry(path).or_insert(item);
            }
        }
    }
    axum::Json(doc).into_response()
}

#[derive(serde::Deserialize)]
struct SignedParams {
    expires: i64,
    signature: String,
}

fn signed_key(s: &KernelState, method: UrlMethod, key: &str, q: &SignedParams) -> Result<ObjectKey, Problem> {
    let key = ObjectKey::parse(key).map_err(|_| Problem::not_found())?;
    if s.kernel.storage.verify_local(method, key.as_str(), q.expires, &q.signature) {
        Ok(key)
    } else {
        Err(Problem::forbidden("the signed URL is invalid or expired"))
    }
}

async fn storage_get(
    State(s): State<Arc<KernelState>>,
    Path(key): Path<String>,
    q: Result<AxumQuery<SignedParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, crate::problem::ApiError> {
    let AxumQuery(q) = q.map_err(|_| Problem::forbidden("a signed URL needs expires and signature"))?;
    let key = signed_key(&s, UrlMethod::Get, &key, &q)?;
    let Some(bytes) = s.kernel.storage.get(&key).await.map_err(crate::problem::ApiError::internal)? else {
        return Err(Problem::not_found().into());
    };
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=60"));
    Ok(res)
}

async fn storage_put(
    State(s): State<Arc<KernelState>>,
    Path(key): Path<String>,
    q: Result<AxumQuery<SignedParams>, axum::extract::rejection::QueryRejection>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, crate::problem::ApiError> {
    let AxumQuery(q) = q.map_err(|_| Problem::forbidden("a signed URL needs expires and signature"))?;
    let key = signed_key(&s, UrlMethod::Put, &key, &q)?;
    let body = body.map_err(|_| Problem::payload_too_large(STORAGE_UPLOAD_LIMIT))?;
    s.kernel.storage.put(&key, body).await.map_err(crate::problem::ApiError::internal)?;
    Ok(StatusCode::CREATED.into_response())
}

fn openapi(mut paths: serde_json::Map<String, Value>, local_storage: bool) -> Value {
    let problem = json!({ "description": "Problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    paths.insert("/healthz".into(), json!({ "get": { "summary": "Liveness: 200 while the process runs", "tags": ["platform"],
        "responses": { "200": { "description": "Alive", "content": { "application/json": { "schema": { "type": "object", "properties": { "status": { "type": "string", "const": "ok" } } } } } } } } }));
    paths.insert("/readyz".into(), json!({ "get": { "summary": "Readiness: every configured backend answers", "tags": ["platform"],
        "responses": { "200": { "description": "Ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Readiness" } } } },
                       "503": { "description": "A backend is down", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Readiness" } } } } } } }));
    paths.insert("/metrics".into(), json!({ "get": { "summary": "Prometheus metrics", "tags": ["platform"],
        "responses": { "200": { "description": "Prometheus text format", "content": { "text/plain": { "schema": { "type": "string" } } } } } } }));
    paths.insert("/v1/openapi.json".into(), json!({ "get": { "summary": "This document", "tags": ["platform"],
        "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": { "schema": { "type": "object" } } } } } } }));
    if local_storage {
        let params = json!([
            { "name": "key", "in": "path", "required": true, "schema": { "type": "string" } },
            { "name": "expires", "in": "query", "required": true, "schema": { "type": "integer" } },
            { "name": "signature", "in": "query", "required": true, "schema": { "type": "string" } }
        ]);
        paths.insert("/v1/storage/{key}".into(), json!({
            "get": { "summary": "Download through a signed URL (local storage)", "tags": ["platform"], "parameters": params,
                "responses": { "200": { "description": "The object", "content": { "application/octet-stream": {} } }, "403": problem, "404": problem } },
            "put": { "summary": "Upload through a signed URL (local storage)", "tags": ["platform"], "parameters": params,
                "requestBody": { "content": { "application/octet-stream": {} } },
                "responses": { "201": { "description": "Stored" }, "403": problem, "413": problem } }
        }));
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Signpost", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Short links, dynamic QR codes, microsites and analytics." },
        "paths": paths,
        "components": { "schemas": {
            "Problem": { "type": "object", "required": ["type", "title", "status"], "properties": {
                "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                "detail": { "type": "string" }, "errors": { "type": "array", "items": { "type": "object" } } } },
            "Readiness": { "type": "object", "properties": {
                "status": { "type": "string", "enum": ["ready", "unready"] },
                "checks": { "type": "object", "additionalProperties": { "type": "object", "properties": {
                    "status": { "type": "string", "enum": ["up", "down"] }, "backend": { "type": "string" }, "error": { "type": "string" } } } } } }
        } }
    })
}
