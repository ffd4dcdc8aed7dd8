//! CSV in and out: `POST /v1/links/import` creates links from a CSV file in the
//! background with a per-row report; `GET /v1/links/export.csv` streams every
//! link of the workspace.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kernel::auth::Caller;
use kernel::db::{Id, Timestamp};
use kernel::http::Path;
use kernel::{ApiError, ApiResult, Problem};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::Utm;
use crate::store::{ImportJob, LinkFilter};
use crate::{AppState, CreateBody, Links, new_link};

/// Most rows one import takes.
pub const MAX_ROWS: usize = 10_000;
/// How often a running import saves its progress (its heartbeat).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// A running import silent for this long has lost its process: readers report
/// it interrupted, with the rows it did not reach. Far above the time one row
/// can take (a database busy wait is 30 s at most).
const STALE_SECS: i64 = 120;
/// The columns an import understands (`url` is required).
pub const COLUMNS: &[&str] = &[
    "url",
    "slug",
    "title",
    "tags",
    "expires_at",
    "expired_url",
    "max_clicks",
    "redirect_type",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "ios_url",
    "android_url",
];

pub(crate) fn routes() -> Router<Arc<Links>> {
    Router::new()
        .route("/v1/links/import", post(import))
        .route("/v1/links/import/{id}", get(job))
        .route("/v1/links/export.csv", get(export))
}

fn job_json(j: &ImportJob) -> Value {
    json!({
        "id": j.id,
        "status": j.status,
        "total": j.total,
        "imported": j.imported,
        "failed": serde_json::from_str::<Vec<Value>>(&j.errors).map(|e| e.len()).unwrap_or(0),
        "errors": serde_json::from_str::<Value>(&j.errors).unwrap_or(json!([])),
        "created_at": j.created_at,
        "finished_at": j.finished_at,
    })
}

/// One CSV row as a create request; an error names what is wrong.
fn row_body(headers: &[String], record: &csv::StringRecord) -> Result<CreateBody, String> {
    let mut b = CreateBody::default();
    let mut utm = Utm::default();
    for (name, value) in headers.iter().zip(record.iter()) {
        let v = value.trim();
        if v.is_empty() {
            continue;
        }
        let some = || Some(v.to_string());
        match name.as_str() {
            "url" => b.url = v.to_string(),
            "slug" => b.slug = some(),
            "title" => b.title = some(),
            "tags" => b.tags = v.split(';').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
            "expires_at" => b.expires_at = some(),
            "expired_url" => b.expired_url = some(),
            "max_clicks" => {
                b.max_clicks = Some(v.parse().map_err(|_| "max_clicks: is not a number".to_string())?)
            }
            "redirect_type" => {
                b.redirect_type = Some(v.parse().map_err(|_| "redirect_type: is not a number".to_string())?)
            }
            "utm_source" => utm.source = some(),
            "utm_medium" => utm.medium = some(),
            "utm_campaign" => utm.campaign = some(),
            "utm_term" => utm.term = some(),
            "utm_content" => utm.content = some(),
            "ios_url" => b.ios_url = some(),
            "android_url" => b.android_url = some(),
            _ => {}
        }
    }
    if b.url.is_empty() {
        return Err("url: is missing".into());
    }
    b.utm = Some(utm);
    Ok(b)
}

/// Accepts a CSV file (header row first), answers 202 with the job, and
/// imports the rows in the background: good rows become links, bad rows are
/// explained in the job's report.
async fn import(State(s): AppState, caller: Caller, body: axum::body::Bytes) -> ApiResult<Response> {
    caller.require("links:write")?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(body.as_ref());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|_| {
            Problem::bad_request("the first line must name the columns (url, slug, title, tags, …)")
        })?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if !headers.iter().any(|h| h == "url") {
        return Err(Problem::validation(
            "csv",
            format!("needs a url column; known columns: {}", COLUMNS.join(", ")),
        )
        .into());
    }
    let mut rows: Vec<Result<csv::StringRecord, String>> = Vec::new();
    for r in reader.records() {
        rows.push(r.map_err(|e| format!("unreadable CSV: {e}")));
        if rows.len() > MAX_ROWS {
            return Err(Problem::validation("csv", format!("at most {MAX_ROWS} rows per import")).into());
        }
    }
    let job = ImportJob {
        tenant_id: Id(caller.tenant.as_uuid()),
        id: Id(Uuid::now_v7()),
        status: "running".into(),
        total: i64::try_from(rows.len()).unwrap_or(i64::MAX),
        imported: 0,
        errors: "[]".into(),
        created_at: Timestamp::now(),
        finished_at: None,
        heartbeat_at: Some(Timestamp::now()),
    };
    s.store.start_import(&job).await?;
    let answer = job_json(&job);
    let (state, who) = (s.clone(), caller.clone());
    // Work nobody waits on: off the connection's thread (see kernel::background).
    s.kernel.background.spawn(async move {
        let mut job = job;
        let mut errors: Vec<Value> = Vec::new();
        let mut saved = std::time::Instant::now();
        for (i, row) in rows.into_iter().enumerate() {
            // Row 1 is the header: data rows are numbered from 2, as a spreadsheet shows them.
            let line = i + 2;
            let created = match row.and_then(|r| row_body(&headers, &r)) {
                Ok(b) => new_link(&state, &who, b).await.map_err(|e| match e {
                    ApiError::Problem(p) => p.body().detail.clone().unwrap_or_else(|| p.body().title.clone()),
                    ApiError::Internal(e) => {
                        tracing::error!(error = %e, "import row failed");
                        "internal error".to_string()
                    }
                }),
                Err(e) => Err(e),
            };
            match created {
                Ok(_) => job.imported += 1,
                Err(error) => errors.push(json!({ "row": line, "error": error })),
            }
            if saved.elapsed() >= HEARTBEAT {
                job.errors = serde_json::to_string(&errors).unwrap_or_else(|_| "[]".into());
                job.heartbeat_at = Some(Timestamp::now());
                if let Err(e) = state.store.save_import(&job).await {
                    tracing::warn!(error = %e, "cannot save the import's progress");
                }
                saved = std::time::Instant::now();
            }
        }
        job.errors = serde_json::to_string(&errors).unwrap_or_else(|_| "[]".into());
        job.status = "done".into();
        job.finished_at = Some(Timestamp::now());
        job.heartbeat_at = job.finished_at;
        if let Err(e) = state.store.save_import(&job).await {
            tracing::error!(error = %e, "cannot save the import report");
        }
        tracing::info!(tenant_id = %who.tenant, imported = job.imported, failed = errors.len(), "link import finished");
    });
    let mut res = (StatusCode::ACCEPTED, axum::Json(answer.clone())).into_response();
    if let Ok(v) =
        HeaderValue::from_str(&format!("/v1/links/import/{}", answer["id"].as_str().unwrap_or_default()))
    {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

async fn job(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<Response> {
    caller.require("links:read")?;
    let mut job = s.store.import(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    let beat = job.heartbeat_at.unwrap_or(job.created_at);
    if interrupted(&mut job, Timestamp::now()) {
        // Only if the runner did not save meanwhile: a live import is never
        // overwritten, and the answer is then what it saved.
        if s.store.interrupt_import(&job, beat).await? {
            tracing::warn!(tenant_id = %caller.tenant, job_id = %id, imported = job.imported, "link import was interrupted");
        } else {
            job = s.store.import(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
        }
    }
    Ok(axum::Json(job_json(&job)).into_response())
}

/// A running job whose heartbeat stopped (its process died) becomes `failed`,
/// its report saying from which row on rows may be missing. Rows before it
/// are as the report says: imported, or explained. Rows after it were saved
/// in progress at most a second before the stop, so a few of them may have
/// been imported: the report says to check.
fn interrupted(job: &mut ImportJob, now: Timestamp) -> bool {
    let beat = job.heartbeat_at.unwrap_or(job.created_at);
    if job.status != "running" || now.unix() - beat.unix() < STALE_SECS {
        return false;
    }
    let mut errors = serde_json::from_str::<Vec<Value>>(&job.errors).unwrap_or_default();
    let done = job.imported + i64::try_from(errors.len()).unwrap_or(0);
    if done < job.total {
        // Data rows are numbered from 2 (row 1 is the header).
        let (first, last) = (done + 2, job.total + 1);
        errors.push(json!({
            "row": first,
            "error": format!(
                "the import stopped here (its process ended): rows {first} to {last} may be missing; \
                 the first few may have been imported in its last second, so check before importing them again"
            ),
        }));
    }
    job.errors = serde_json::to_string(&errors).unwrap_or_else(|_| "[]".into());
    job.status = "failed".into();
    job.finished_at = Some(beat);
    true
}

fn csv_line(fields: &[String]) -> String {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    let _ = w.write_record(fields);
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Every link of the workspace as CSV, streamed page by page (never built in memory).
async fn export(State(s): AppState, caller: Caller) -> ApiResult<Response> {
    caller.require("links:read")?;
    let header: Vec<String> = [
        "id",
        "short_url",
        "url",
        "slug",
        "title",
        "tags",
        "expires_at",
        "max_clicks",
        "redirect_type",
        "created_at",
    ]
    .iter()
    .map(|c| (*c).to_string())
    .collect();
    let first = csv_line(&header);
    let stream =
        futures_util::stream::unfold((Some(first), None::<Uuid>, false), move |(head, before, done)| {
            let (s, tenant) = (s.clone(), caller.tenant);
            async move {
                if let Some(h) = head {
                    return Some((Ok::<_, std::io::Error>(h), (None, before, done)));
                }
                if done {
                    return None;
                }
                let filter = LinkFilter { search: String::new(), tag: String::new(), before, limit: 500 };
                let rows = match s.store.list(tenant, &filter).await {
                    Ok(r) => r,
                    Err(e) => return Some((Err(std::io::Error::other(e.to_string())), (None, before, true))),
                };
                if rows.is_empty() {
                    return None;
                }
                let last = rows.last().map(|l| l.id.0);
                let chunk: String = rows
                    .iter()
                    .map(|l| {
                        let j = crate::link_json(&s, l);
                        let text = |k: &str| match &j[k] {
                            Value::Null => String::new(),
                            Value::String(v) => v.clone(),
                            other => other.to_string(),
                        };
                        csv_line(&[
                            text("id"),
                            text("short_url"),
                            text("url"),
                            text("slug"),
                            text("title"),
                            l.tag_list().join(";"),
                            text("expires_at"),
                            text("max_clicks"),
                            text("redirect_type"),
                            text("created_at"),
                        ])
                    })
                    .collect();
                Some((Ok(chunk), (None, last, rows.len() < 500)))
            }
        });
    let mut res = Body::from_stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"links.csv\""));
    Ok(res)
}
