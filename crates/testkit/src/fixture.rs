//! A small service that exercises every kernel piece the way a real service
//! does (store trait with two engines, tenant transactions, outbox events, an
//! idempotent consumer, batched appends, pagination, problem JSON). Tests only:
//! the `signpost` binary never mounts it.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kernel::db::{Db, DbError, Migration, Migrations, PgDb, SqliteDb, Tx};
use kernel::events::{Consumer, Envelope, Handler, HandlerError, Journal};
use kernel::http::{Json, Page, PageParams, PageRequest, Path, Query};
use kernel::{ApiError, BoxError, Problem, Service, ServiceContext, ServiceParts, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// The fixture's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    schema: "fixture",
    steps: &[
        Migration {
            version: "0001_notes",
            postgres: include_str!("../migrations/postgres/0001_notes.sql"),
            sqlite: include_str!("../migrations/sqlite/0001_notes.sql"),
        },
        Migration {
            version: "0002_mirrored",
            postgres: include_str!("../migrations/postgres/0002_mirrored.sql"),
            sqlite: include_str!("../migrations/sqlite/0002_mirrored.sql"),
        },
    ],
};

/// A note.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Note {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Text.
    pub body: String,
}

/// Counters the consumer maintains.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// `note.created` events applied.
    pub notes: i64,
    /// `note.viewed` events applied.
    pub views: i64,
    /// `note.created` events applied by `fixture.mirror`, the consumer on the
    /// prompt lane (`notes` is `fixture.stats`', on the bulk lane).
    #[serde(default)]
    pub mirrored: i64,
    /// Events this process applied anywhere but on the background lane the
    /// consumer names (always 0: never on a request thread, nor on the other lane).
    #[serde(default)]
    pub off_its_lane: u64,
}

/// See [`Stats::off_its_lane`].
static OFF_ITS_LANE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count_if_off(lane: kernel::background::Lane) {
    if kernel::background::current() != Some(lane) {
        OFF_ITS_LANE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Tenants whose `fixture.stats` deliveries, once committed, do not finish
/// until released ([`hold`]): a bulk-lane consumer that is slow and holds no lock.
static HELD: std::sync::Mutex<Vec<TenantId>> = std::sync::Mutex::new(Vec::new());
static RELEASED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Holds `fixture.stats` deliveries of `tenant` after they commit, until the
/// guard is released or dropped (tests).
pub fn hold(tenant: TenantId) -> Held {
    if let Ok(mut held) = HELD.lock() {
        held.push(tenant);
    }
    Held(tenant)
}

/// See [`hold`].
#[must_use = "dropping it releases the tenant at once"]
pub struct Held(TenantId);

impl Held {
    /// Lets the held deliveries finish.
    pub fn release(self) {}
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut held) = HELD.lock() {
            held.retain(|t| *t != self.0);
        }
        RELEASED.notify_waiters();
    }
}

fn held(tenant: TenantId) -> bool {
    HELD.lock().map(|h| h.contains(&tenant)).unwrap_or(false)
}

/// The fixture's store: one implementation per engine.
#[async_trait]
pub trait NotesStore: Send + Sync + 'static {
    /// Creates a note and its `note.created` event in one transaction.
    async fn create(&self, tenant: TenantId, body: &str) -> Result<Note, DbError>;
    /// One note of the tenant.
    async fn get(&self, tenant: TenantId, id: Uuid) -> Result<Option<Note>, DbError>;
    /// A page of the tenant's notes in id order (overfetches by one).
    async fn list(&self, tenant: TenantId, page: &PageRequest<Uuid>) -> Result<Vec<Note>, DbError>;
    /// The tenant's counters.
    async fn stats(&self, tenant: TenantId) -> Result<Stats, DbError>;
}

const INSERT: &str = "insert into fixture.notes (tenant_id, id, body) values ($1, $2, $3)";
const GET: &str = "select id, body from fixture.notes where tenant_id = $1 and id = $2";
const LIST: &str = "select id, body from fixture.notes where tenant_id = $1 and id > $2 order by id limit $3";
const STATS: &str = "select notes, views, mirrored from fixture.note_stats where tenant_id = $1";
const COUNT_NOTE: &str = "insert into fixture.note_stats (tenant_id, notes, views) values ($1, 1, 0) \
     on conflict (tenant_id) do update set notes = note_stats.notes + 1";
const COUNT_VIEW: &str = "insert into fixture.note_stats (tenant_id, notes, views) values ($1, 0, 1) \
     on conflict (tenant_id) do update set views = note_stats.views + 1";
const COUNT_MIRROR: &str = "insert into fixture.note_stats (tenant_id, notes, views, mirrored) values ($1, 0, 0, 1) \
     on conflict (tenant_id) do update set mirrored = note_stats.mirrored + 1";

struct PgNotes(PgDb);
struct SqliteNotes(SqliteDb);

#[async_trait]
impl NotesStore for PgNotes {
    async fn create(&self, tenant: TenantId, body: &str) -> Result<Note, DbError> {
        let mut tx = self.0.begin(tenant).await?;
        let note = Note { id: Uuid::now_v7(), body: body.to_string() };
        tx.execute(tx.query(INSERT).bind(note.id).bind(note.body.clone())).await?;
        tx.emit("note.created", "anonymous", &note).await?;
        tx.commit().await?;
        Ok(note)
    }

    async fn get(&self, tenant: TenantId, id: Uuid) -> Result<Option<Note>, DbError> {
        let mut tx = self.0.read(tenant).await?;
        let row: Option<(Uuid, String)> = tx.fetch_optional(tx.query_as(GET).bind(id)).await?;
        Ok(row.map(|(id, body)| Note { id, body }))
    }

    async fn list(&self, tenant: TenantId, page: &PageRequest<Uuid>) -> Result<Vec<Note>, DbError> {
        let mut tx = self.0.read(tenant).await?;
        let after = page.after.unwrap_or(Uuid::nil());
        let rows: Vec<(Uuid, String)> =
            tx.fetch_all(tx.query_as(LIST).bind(after).bind(i64::from(page.limit) + 1)).await?;
        Ok(rows.into_iter().map(|(id, body)| Note { id, body }).collect())
    }

    async fn stats(&self, tenant: TenantId) -> Result<Stats, DbError> {
        let mut tx = self.0.read(tenant).await?;
        let row: Option<(i64, i64, i64)> = tx.fetch_optional(tx.query_as(STATS)).await?;
        Ok(row
            .map(|(notes, views, mirrored)| Stats { notes, views, mirrored, off_its_lane: 0 })
            .unwrap_or_default())
    }
}

#[async_trait]
impl NotesStore for SqliteNotes {
    async fn create(&self, tenant: TenantId, body: &str) -> Result<Note, DbError> {
        let mut tx = self.0.begin(tenant).await?;
        let note = Note { id: Uuid::now_v7(), body: body.to_string() };
        tx.execute(tx.query(INSERT).bind(note.id.hyphenated().to_string()).bind(note.body.clone())).await?;
        tx.emit("note.created", "anonymous", &note).await?;
        tx.commit().await?;
        Ok(note)
    }

    async fn get(&self, tenant: TenantId, id: Uuid) -> Result<Option<Note>, DbError> {
        let mut tx = self.0.read(tenant).await?;
        let row: Option<(String, String)> =
            tx.fetch_optional(tx.query_as(GET).bind(id.hyphenated().to_string())).await?;
        Ok(row.and_then(|(id, body)| Some(Note { id: id.parse().ok()?, body })))
    }

    async fn list(&self, tenant: TenantId, page: &PageRequest<Uuid>) -> Result<Vec<Note>, DbError> {
        let mut tx = self.0.read(tenant).await?;
        let after = page.after.unwrap_or(Uuid::nil()).hyphenated().to_string();
        let rows: Vec<(String, String)> =
            tx.fetch_all(tx.query_as(LIST).bind(after).bind(i64::from(page.limit) + 1)).await?;
        Ok(rows.into_iter().filter_map(|(id, body)| Some(Note { id: id.parse().ok()?, body })).collect())
    }

    async fn stats(&self, tenant: TenantId) -> Result<Stats, DbError> {
        let mut tx = self.0.read(tenant).await?;
        let row: Option<(i64, i64, i64)> = tx.fetch_optional(tx.query_as(STATS)).await?;
        Ok(row
            .map(|(notes, views, mirrored)| Stats { notes, views, mirrored, off_its_lane: 0 })
            .unwrap_or_default())
    }
}

/// The store for a schema handle.
pub fn store(db: &Db) -> Arc<dyn NotesStore> {
    match db {
        Db::Postgres(pg) => Arc::new(PgNotes(pg.clone())),
        Db::Sqlite(lite) => Arc::new(SqliteNotes(lite.clone())),
    }
}

/// Counts notes and views; rejects events whose note body is `poison`.
struct StatsHandler;

#[async_trait]
impl Handler for StatsHandler {
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> Result<(), HandlerError> {
        count_if_off(kernel::background::Lane::Bulk);
        if event.data.value().get("body").and_then(|b| b.as_str()) == Some("poison") {
            return Err(HandlerError::Reject("poison note".into()));
        }
        let sql = match event.event_type.as_str() {
            "note.created" => COUNT_NOTE,
            "note.viewed" => COUNT_VIEW,
            other => return Err(HandlerError::Reject(format!("unexpected event type {other}"))),
        };
        execute(tx, sql).await
    }

    async fn committed(&self, events: &[Envelope]) {
        for event in events {
            loop {
                let mut released = std::pin::pin!(RELEASED.notified());
                released.as_mut().enable();
                if !held(event.tenant_id) {
                    break;
                }
                released.await;
            }
        }
    }
}

async fn execute(tx: &mut Tx, sql: &'static str) -> Result<(), HandlerError> {
    if let Some(pg) = tx.postgres() {
        pg.execute(pg.query(sql)).await?;
    } else if let Some(lite) = tx.sqlite() {
        lite.execute(lite.query(sql)).await?;
    }
    Ok(())
}

/// Counts created notes again, on the prompt lane: a read model's consumer
/// beside `fixture.stats`.
struct MirrorHandler;

#[async_trait]
impl Handler for MirrorHandler {
    async fn handle(&self, tx: &mut Tx, _event: &Envelope) -> Result<(), HandlerError> {
        count_if_off(kernel::background::Lane::Prompt);
        execute(tx, COUNT_MIRROR).await
    }
}

/// The tenant of a fixture request, from `X-Tenant-ID` (the fixture has no auth).
pub struct FixtureTenant(pub TenantId);

impl<S: Send + Sync> FromRequestParts<S> for FixtureTenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .headers
            .get("x-tenant-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| TenantId::parse(v).ok())
            .map(Self)
            .ok_or_else(|| Problem::unauthorized("X-Tenant-ID is missing"))
    }
}

#[derive(Clone)]
struct AppState {
    store: Arc<dyn NotesStore>,
    views: Journal,
    instance: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    body: String,
}

async fn create(
    State(s): State<AppState>,
    FixtureTenant(tenant): FixtureTenant,
    Json(new): Json<NewNote>,
) -> Result<Response, ApiError> {
    let len = new.body.chars().count();
    if len == 0 || len > 1000 {
        return Err(Problem::validation("body", "must be 1 to 1000 characters").into());
    }
    let note = s.store.create(tenant, &new.body).await?;
    Ok((StatusCode::CREATED, Json(note)).into_response())
}

async fn get_note(
    State(s): State<AppState>,
    FixtureTenant(tenant): FixtureTenant,
    Path(id): Path<String>,
) -> Result<Json<Note>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| Problem::not_found())?;
    s.store.get(tenant, id).await?.map(Json).ok_or_else(|| Problem::not_found().into())
}

async fn list(
    State(s): State<AppState>,
    FixtureTenant(tenant): FixtureTenant,
    Query(params): Query<PageParams>,
) -> Result<Json<Page<Note>>, ApiError> {
    let page = params.parse::<Uuid>()?;
    let rows = s.store.list(tenant, &page).await?;
    Ok(Json(Page::from_overfetch(rows, page.limit, |n| n.id)))
}

async fn view(
    State(s): State<AppState>,
    FixtureTenant(tenant): FixtureTenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| Problem::not_found())?;
    let event = Envelope::new("note.viewed", tenant, "anonymous", json!({ "note_id": id }));
    s.views.append(&event).map_err(ApiError::internal)?;
    Ok(StatusCode::ACCEPTED)
}

async fn stats(
    State(s): State<AppState>,
    FixtureTenant(tenant): FixtureTenant,
) -> Result<Json<Stats>, ApiError> {
    let mut stats = s.store.stats(tenant).await?;
    stats.off_its_lane = OFF_ITS_LANE.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Json(stats))
}

/// What reached the service: the identity headers the gateway forwards, every
/// header, whether a verified caller is attached, and which instance answered.
async fn whoami(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    caller: Option<kernel::auth::Caller>,
) -> Json<serde_json::Value> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let all: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or_default())))
        .collect();
    Json(json!({
        "x_tenant_id": h("x-tenant-id"),
        "x_user_id": h("x-user-id"),
        "x_user_role": h("x-user-role"),
        "caller_tenant": caller.map(|c| c.tenant.to_string()),
        "headers": all,
        "instance": s.instance,
    }))
}

#[derive(Deserialize)]
struct SlowParams {
    ms: u64,
}

/// Answers after a delay (timeouts through the gateway).
async fn slow(Query(p): Query<SlowParams>) -> StatusCode {
    tokio::time::sleep(std::time::Duration::from_millis(p.ms.min(30_000))).await;
    StatusCode::NO_CONTENT
}

/// Switches protocols to a byte echo (upgrade pass-through through the gateway).
async fn echo_upgrade(mut req: axum::extract::Request) -> Response {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(axum::body::Body::empty())
        .unwrap_or_default()
}

async fn panic_route() -> StatusCode {
    let items: Vec<u8> = Vec::new();
    // Deliberately out of bounds: proves a panicking handler becomes a 500 problem.
    #[allow(clippy::indexing_slicing)]
    let _ = items[usize::from(items.is_empty())];
    StatusCode::OK
}

/// The fixture service.
pub struct Fixture;

#[async_trait]
impl Service for Fixture {
    fn name(&self) -> &'static str {
        "fixture"
    }

    fn migrations(&self) -> Option<Migrations> {
        Some(MIGRATIONS)
    }

    async fn start(&self, ctx: ServiceContext) -> Result<ServiceParts, BoxError> {
        let db = ctx.db.ok_or("fixture needs its schema")?;
        let state = AppState {
            store: store(&db),
            views: ctx.kernel.journal("fixture")?,
            instance: ctx.kernel.config.public_url.clone(),
        };
        let router = Router::new()
            .route("/v1/fixture/notes", post(create).get(list))
            .route("/v1/fixture/notes/{id}", get(get_note))
            .route("/v1/fixture/notes/{id}/views", post(view))
            .route("/v1/fixture/stats", get(stats))
            .route("/v1/fixture/panic", get(panic_route))
            .route("/v1/fixture/whoami", get(whoami))
            .route("/v1/fixture/slow", get(slow))
            .route("/v1/fixture/echo", get(echo_upgrade))
            .with_state(state);
        Ok(ServiceParts {
            router,
            edge: None,
            openapi_source: None,
            consumers: vec![
                Consumer {
                    name: "fixture.stats",
                    event_types: &["note.created", "note.viewed"],
                    handler: Arc::new(StatsHandler),
                    lane: kernel::background::Lane::Bulk,
                },
                Consumer {
                    name: "fixture.mirror",
                    event_types: &["note.created"],
                    handler: Arc::new(MirrorHandler),
                    lane: kernel::background::Lane::Prompt,
                },
            ],
            openapi_paths: json!({
                "/v1/fixture/notes": { "get": { "responses": { "200": { "description": "notes" } } },
                                        "post": { "responses": { "201": { "description": "created" } } } }
            }),
        })
    }
}
