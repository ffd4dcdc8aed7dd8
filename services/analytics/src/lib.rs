//! The analytics service: consumes `link.clicked` and `qr.scanned` (and the
//! link and QR events that say what those are), keeps raw events (monthly
//! partitions on PostgreSQL, dropped whole past the retention), hourly rollups
//! by every dimension and visitor sketches, and answers summaries, exports
//! and a live stream. It owns schema `analytics` and reads no other service's
//! tables.

pub mod export;
pub mod ingest;
mod openapi;
pub mod query;
pub mod sketch;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{RawPathParams, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use kernel::auth::Caller;
use kernel::db::{Db, DbError, Migration, Migrations};
use kernel::events::{Consumer, Envelope};
use kernel::http::Query;
use kernel::{ApiResult, BoxError, Kernel, Problem, Service, ServiceContext, ServiceParts, TenantId};
use serde_json::json;

use ingest::{CLICK_TYPES, EVENT_TYPES, Ingest};
use query::{Params, Scope};

/// Analytics' migrations.
pub const MIGRATIONS: Migrations = Migrations {
    schema: "analytics",
    steps: &[
        Migration {
            version: "0001_analytics",
            postgres: include_str!("../migrations/postgres/0001_analytics.sql"),
            sqlite: include_str!("../migrations/sqlite/0001_analytics.sql"),
        },
        Migration {
            version: "0002_filtered_rollups",
            postgres: include_str!("../migrations/postgres/0002_filtered_rollups.sql"),
            sqlite: include_str!("../migrations/sqlite/0002_filtered_rollups.sql"),
        },
        Migration {
            version: "0003_events_keyed_by_event",
            postgres: include_str!("../migrations/postgres/0003_events_keyed_by_event.sql"),
            sqlite: include_str!("../migrations/sqlite/0003_events_keyed_by_event.sql"),
        },
    ],
};

/// How often retention runs (and at start).
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

struct Analytics {
    kernel: Kernel,
    db: Db,
}

type AppState = State<Arc<Analytics>>;

/// What an analytics route is about.
#[derive(Clone, Copy)]
enum Kind {
    Workspace,
    Link,
    Qr,
    Tag,
}

/// The analytics service.
pub struct AnalyticsService;

#[async_trait]
impl Service for AnalyticsService {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn migrations(&self) -> Option<Migrations> {
        Some(MIGRATIONS)
    }

    async fn start(&self, ctx: ServiceContext) -> Result<ServiceParts, BoxError> {
        let db = ctx.db.ok_or("analytics needs its schema")?;
        let kernel = ctx.kernel;
        // Partitions for this month exist before the first event arrives.
        maintain(&db, kernel.config.analytics_retention_months).await?;
        tokio::spawn(maintenance_loop(
            db.clone(),
            kernel.config.analytics_retention_months,
            kernel.draining(),
        ));
        let state = Arc::new(Analytics { kernel, db });
        let mut router = Router::new().route("/v1/analytics/stream", get(stream));
        for (prefix, kind) in [
            ("/v1/analytics", Kind::Workspace),
            ("/v1/analytics/links/{id}", Kind::Link),
            ("/v1/analytics/qr/{id}", Kind::Qr),
            ("/v1/analytics/tags/{tag}", Kind::Tag),
        ] {
            router = router
                .route(
                    &format!("{prefix}/summary"),
                    get(move |s: AppState, c: Caller, p: RawPathParams, q: Query<Params>| {
                        read(s, c, p, q, kind, Output::Json)
                    }),
                )
                .route(
                    &format!("{prefix}/summary.csv"),
                    get(move |s: AppState, c: Caller, p: RawPathParams, q: Query<Params>| {
                        read(s, c, p, q, kind, Output::Csv)
                    }),
                )
                .route(
                    &format!("{prefix}/summary.pdf"),
                    get(move |s: AppState, c: Caller, p: RawPathParams, q: Query<Params>| {
                        read(s, c, p, q, kind, Output::Pdf)
                    }),
                )
                .route(
                    &format!("{prefix}/events.csv"),
                    get(move |s: AppState, c: Caller, p: RawPathParams, q: Query<Params>| {
                        read(s, c, p, q, kind, Output::Events)
                    }),
                );
        }
        let consumer = Consumer {
            name: "analytics.events",
            event_types: EVENT_TYPES,
            handler: Arc::new(Ingest { service: "analytics" }),
            lane: kernel::background::Lane::Bulk,
        };
        Ok(ServiceParts {
            router: router.with_state(state),
            edge: None,
            consumers: vec![consumer],
            openapi_paths: openapi::paths(),
            openapi_source: None,
        })
    }
}

/// Creates the coming months' partitions and drops the expired ones (PostgreSQL),
/// or deletes the expired rows (SQLite). Rollups are kept.
pub async fn maintain(db: &Db, keep_months: u32) -> Result<u64, DbError> {
    const PG: &str = "select analytics.maintain_partitions($1)";
    const LITE: &str = "delete from analytics.events where occurred_at < $1";
    let keep = i32::try_from(keep_months).unwrap_or(i32::MAX);
    match db {
        Db::Postgres(pg) => {
            let mut tx = pg.begin_global().await?;
            let dropped: i32 = tx.scalar(tx.query_scalar(PG).bind(keep)).await?;
            tx.commit().await?;
            Ok(u64::try_from(dropped).unwrap_or(0))
        }
        Db::Sqlite(lite) => {
            let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date();
            let cutoff = today
                .first_of_month()
                .checked_sub(jiff::Span::new().months(i64::from(keep_months)))
                .ok()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map_or(0, |z| z.timestamp().as_second());
            let mut tx = lite.begin_global().await?;
            let n = tx.execute(tx.query(LITE).bind(kernel::db::Timestamp::from_unix(cutoff))).await?;
            tx.commit().await?;
            Ok(n)
        }
    }
}

async fn maintenance_loop(db: Db, keep_months: u32, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(MAINTENANCE_EVERY) => {}
        }
        match maintain(&db, keep_months).await {
            Ok(n) if n > 0 => tracing::info!(removed = n, "analytics retention applied"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "analytics maintenance failed; retried in an hour"),
        }
    }
}

#[derive(Clone, Copy)]
enum Output {
    Json,
    Csv,
    Pdf,
    Events,
}

async fn scope(s: &Analytics, tenant: TenantId, kind: Kind, params: &RawPathParams) -> ApiResult<Scope> {
    let param = params.iter().next().map(|(_, v)| v.to_string()).unwrap_or_default();
    Ok(match kind {
        Kind::Workspace => {
            Scope { kind: "workspace", key: None, label: "workspace".into(), subjects: Vec::new() }
        }
        Kind::Link | Kind::Qr => {
            let want = if matches!(kind, Kind::Link) { "link" } else { "qr" };
            let id: uuid::Uuid = param.parse().map_err(|_| Problem::not_found())?;
            let (found, label) = query::subject(&s.db, tenant, id).await?.ok_or_else(Problem::not_found)?;
            if found != want {
                return Err(Problem::not_found().into());
            }
            Scope {
                kind: if want == "link" { "link" } else { "qr" },
                key: Some(param),
                label,
                subjects: vec![id],
            }
        }
        Kind::Tag => {
            if param.is_empty() || param.chars().count() > 50 {
                return Err(Problem::not_found().into());
            }
            let subjects = query::tagged(&s.db, tenant, &param).await?;
            if subjects.is_empty() {
                return Err(Problem::not_found().into());
            }
            Scope { kind: "tag", key: Some(param.clone()), label: param, subjects }
        }
    })
}

async fn read(
    State(s): AppState,
    caller: Caller,
    params: RawPathParams,
    Query(p): Query<Params>,
    kind: Kind,
    output: Output,
) -> ApiResult<Response> {
    caller.require("analytics:read")?;
    let q = query::parse(
        &p,
        time::OffsetDateTime::now_utc().unix_timestamp(),
        s.kernel.config.analytics_max_range_days,
    )?;
    let scope = scope(&s, caller.tenant, kind, &params).await?;
    if let Output::Events = output {
        return Ok(export::events_csv(s.db.clone(), caller.tenant, scope, q));
    }
    let summary = query::summary(&s.db, caller.tenant, &scope, &q).await?;
    Ok(match output {
        Output::Csv => export::summary_csv(&scope, &q, &summary),
        Output::Pdf => export::summary_pdf(&scope, &q, &summary),
        _ => {
            let filters: serde_json::Map<String, serde_json::Value> = ingest::DIMENSIONS
                .iter()
                .zip(&q.filters)
                .filter(|(_, v)| !v.is_empty())
                .map(|(d, v)| (d.to_string(), json!(v)))
                .collect();
            let mut body = serde_json::to_value(&summary).unwrap_or_default();
            if let Some(o) = body.as_object_mut() {
                o.insert(
                    "scope".into(),
                    json!({ "kind": scope.kind, "id": scope.key, "label": scope.label }),
                );
                o.insert("from".into(), json!(kernel::db::Timestamp::from_unix(q.from).rfc3339()));
                o.insert("to".into(), json!(kernel::db::Timestamp::from_unix(q.to).rfc3339()));
                o.insert("tz".into(), json!(q.tz_name));
                o.insert("interval".into(), json!(if q.daily { "day" } else { "hour" }));
                o.insert("filters".into(), json!(filters));
            }
            axum::Json(body).into_response()
        }
    })
}

/// What the live stream shows of a click: no visitor id, nothing beyond the summary's dimensions.
fn live(e: &Envelope) -> serde_json::Value {
    let d = e.data.value();
    json!({
        "event_id": e.event_id,
        "type": e.event_type,
        "occurred_at": kernel::db::Timestamp(e.occurred_at).rfc3339(),
        "link_id": d.get("link_id"),
        "qr_id": d.get("qr_id"),
        "slug": d.get("slug"),
        "country": d.get("country"),
        "device": d.get("device"),
        "browser": d.get("browser"),
        "os": d.get("os"),
        "referrer": d.get("referrer_host"),
        "bot": d.get("bot"),
    })
}

/// `GET /v1/analytics/stream`: the workspace's clicks and scans as Server-Sent Events.
async fn stream(State(s): AppState, caller: Caller) -> ApiResult<Response> {
    caller.require("analytics:read")?;
    let tenant = caller.tenant;
    let events = s
        .kernel
        .bus
        .watch(CLICK_TYPES)
        .await
        .map_err(|e| Problem::unavailable(format!("the live stream is unavailable: {e}")))?;
    let clicks = events.filter(move |e| std::future::ready(e.tenant_id == tenant)).map(|e| {
        let event = Event::default().event(e.event_type.clone()).id(e.event_id.to_string());
        Ok::<Event, Infallible>(
            event.json_data(live(&e)).unwrap_or_else(|_| Event::default().comment("skipped")),
        )
    });
    // The first message says the subscription is live: clicks from now on arrive.
    let ready = futures_util::stream::once(async {
        Ok::<Event, Infallible>(Event::default().event("ready").data("{}"))
    });
    let stop = s.kernel.draining();
    let body = ready.chain(clicks).take_until(async move { stop.cancelled().await });
    let mut res =
        Sse::new(body).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    res.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    Ok(res)
}
