//! Exports: raw events as CSV (streamed a page at a time, never held whole),
//! a summary as CSV, and a summary as a one-page PDF report.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kernel::db::{Db, DbError, Id, Timestamp};
use kernel::pdf::{Page, document, text_width};
use uuid::Uuid;

use crate::query::{EXPORT, Query, RawRow, Scope, Summary, run, with_filters};

/// Rows per database read of the streamed export.
const PAGE: i64 = 2000;

/// One CSV cell: quoted when needed; a leading `= + - @` is defused for spreadsheets.
fn cell(out: &mut String, v: &str) {
    let v = if v.starts_with(['=', '+', '-', '@']) { format!("'{v}") } else { v.to_string() };
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&v);
    }
}

fn line(out: &mut String, cells: &[&str]) {
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        cell(out, c);
    }
    out.push_str("\r\n");
}

fn attachment(body: Body, content_type: &'static str, name: &str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

const EVENT_HEADER: [&str; 13] = [
    "occurred_at",
    "event_id",
    "kind",
    "subject_id",
    "link_id",
    "qr_id",
    "country",
    "device",
    "browser",
    "os",
    "referrer",
    "bot",
    "visitor",
];

async fn page(
    db: &Db,
    tenant: kernel::TenantId,
    scope: &Scope,
    q: &Query,
    after: &(Timestamp, Id),
) -> Result<Vec<RawRow>, DbError> {
    let mut tx = db.read(tenant).await?;
    let subjects = &scope.subjects;
    let rows: Vec<RawRow> =
        run!(&mut tx, EXPORT[usize::from(scope.all())], subjects, query_as, fetch_all, |b| with_filters!(
            b, q, scope
        )
        .bind(after.0)
        .bind(after.1)
        .bind(PAGE));
    Ok(rows)
}

/// The raw events of `scope` in the range, oldest first, as a streamed CSV.
pub fn events_csv(db: Db, tenant: kernel::TenantId, scope: Scope, q: Query) -> Response {
    let mut head = String::new();
    line(&mut head, &EVENT_HEADER);
    let start = (Timestamp::from_unix(q.from - 1), Id(Uuid::nil()));
    let state = Arc::new((db, scope, q));
    let pages = futures_util::stream::unfold(Some(start), move |after| {
        let state = state.clone();
        async move {
            let after = after?;
            let (db, scope, q) = &*state;
            match page(db, tenant, scope, q, &after).await {
                Err(e) => {
                    tracing::error!(error = %e, "analytics export failed mid-stream");
                    Some((Err(std::io::Error::other("export failed")), None))
                }
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let more = rows.len() as i64 == PAGE;
                    let mut out = String::with_capacity(rows.len() * 160);
                    let mut last = after;
                    for r in &rows {
                        let qr = r.5.map(|q| q.to_string()).unwrap_or_default();
                        line(
                            &mut out,
                            &[
                                &r.0.rfc3339(),
                                &r.1.to_string(),
                                &r.2,
                                &r.3.to_string(),
                                &r.4.to_string(),
                                &qr,
                                &r.6,
                                &r.7,
                                &r.8,
                                &r.9,
                                &r.10,
                                &r.11,
                                &r.12,
                            ],
                        );
                        last = (r.0, r.1);
                    }
                    Some((Ok(Bytes::from(out)), more.then_some(last)))
                }
            }
        }
    });
    let body = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(head)) }),
        pages,
    );
    attachment(Body::from_stream(body), "text/csv; charset=utf-8", "events.csv")
}

/// A summary as CSV: totals, the series, then each top list.
pub fn summary_csv(scope: &Scope, q: &Query, s: &Summary) -> Response {
    let mut out = String::new();
    line(&mut out, &["section", "key", "clicks", "humans", "unique_visitors"]);
    let (from, to) = (Timestamp::from_unix(q.from).rfc3339(), Timestamp::from_unix(q.to).rfc3339());
    line(&mut out, &["scope", &format!("{} {}", scope.kind, scope.label), "", "", ""]);
    line(&mut out, &["range", &format!("{from}/{to} ({})", q.tz_name), "", "", ""]);
    line(
        &mut out,
        &["total", "", &s.clicks.to_string(), &s.humans.to_string(), &s.unique_visitors.to_string()],
    );
    for p in &s.series {
        line(&mut out, &["series", &p.t, &p.clicks.to_string(), &p.humans.to_string(), ""]);
    }
    for (dim, entries) in &s.top {
        for e in entries {
            let v = e.value.clone().unwrap_or_else(|| "(unknown)".into());
            line(&mut out, &[&format!("top:{dim}"), &v, &e.clicks.to_string(), &e.humans.to_string(), ""]);
        }
    }
    attachment(Body::from(out), "text/csv; charset=utf-8", "summary.csv")
}

const INK: [u8; 3] = [20, 24, 32];
const MUTED: [u8; 3] = [110, 118, 130];
const BAR: [u8; 3] = [37, 99, 235];
const HUMAN_BAR: [u8; 3] = [147, 180, 250];

/// A summary as a one-page A4 PDF: totals, a bar chart of the series, and the top lists.
pub fn summary_pdf(scope: &Scope, q: &Query, s: &Summary) -> Response {
    let mut p = Page::new(595.0, 842.0);
    let top = p.height() - 60.0;
    p.text(50.0, top, 20.0, true, INK, "Signpost analytics");
    let what = match scope.kind {
        "workspace" => "Whole workspace".to_string(),
        "link" => format!("Link /{}", scope.label),
        "qr" => format!("QR code {}", scope.label),
        _ => format!("Tag {}", scope.label),
    };
    p.text(50.0, top - 24.0, 12.0, false, INK, &what);
    let (from, to) = (Timestamp::from_unix(q.from).rfc3339(), Timestamp::from_unix(q.to).rfc3339());
    p.text(50.0, top - 40.0, 9.0, false, MUTED, &format!("{from} to {to}, buckets in {}", q.tz_name));
    let filters: Vec<String> = crate::ingest::DIMENSIONS
        .iter()
        .zip(&q.filters)
        .filter(|(_, v)| !v.is_empty())
        .map(|(d, v)| format!("{d} = {v}"))
        .collect();
    if !filters.is_empty() {
        p.text(50.0, top - 52.0, 9.0, false, MUTED, &format!("Filtered: {}", filters.join(", ")));
    }
    let totals = [
        ("Clicks and scans", s.clicks.to_string()),
        ("Humans", s.humans.to_string()),
        ("Unique visitors", s.unique_visitors.to_string()),
    ];
    for (i, (label, value)) in totals.iter().enumerate() {
        let x = 50.0 + 170.0 * i as f64;
        p.text(x, top - 90.0, 22.0, true, INK, value);
        p.text(x, top - 106.0, 9.0, false, MUTED, label);
    }
    // The series as bars, humans drawn over the total.
    let (cx, cy, cw, ch) = (50.0, top - 300.0, 495.0, 160.0);
    p.rect(cx, cy - 0.5, cw, 0.5, MUTED);
    let max = s.series.iter().map(|b| b.clicks).max().unwrap_or(0).max(1) as f64;
    let n = s.series.len().max(1) as f64;
    let slot = cw / n;
    for (i, b) in s.series.iter().enumerate() {
        let x = cx + slot * i as f64 + slot * 0.15;
        let w = (slot * 0.7).max(0.3);
        p.rect(x, cy, w, ch * b.clicks as f64 / max, BAR);
        p.rect(x, cy, w, ch * b.humans as f64 / max, HUMAN_BAR);
    }
    p.text(cx, cy + ch + 8.0, 9.0, false, MUTED, &format!("peak {}", max as i64));
    if let (Some(first), Some(last)) = (s.series.first(), s.series.last()) {
        p.text(cx, cy - 14.0, 8.0, false, MUTED, &first.t);
        p.text(cx + cw - text_width(&last.t, 8.0), cy - 14.0, 8.0, false, MUTED, &last.t);
    }
    // Top lists, two columns.
    let mut y0 = cy - 50.0;
    for (i, (dim, entries)) in s.top.iter().enumerate() {
        let x = if i % 2 == 0 { 50.0 } else { 310.0 };
        if i > 0 && i % 2 == 0 {
            y0 -= 110.0;
        }
        p.text(x, y0, 11.0, true, INK, &format!("Top {dim}"));
        for (j, e) in entries.iter().take(6).enumerate() {
            let y = y0 - 15.0 - 13.0 * j as f64;
            let v = e.value.clone().unwrap_or_else(|| "(unknown)".into());
            let v: String = v.chars().take(34).collect();
            p.text(x, y, 9.0, false, INK, &v);
            let n = e.clicks.to_string();
            p.text(x + 230.0 - text_width(&n, 9.0), y, 9.0, false, INK, &n);
        }
    }
    attachment(Body::from(document(&[p])), "application/pdf", "summary.pdf")
}
