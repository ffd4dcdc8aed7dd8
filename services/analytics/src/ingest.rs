//! The consumer: click and scan events become raw rows, hourly rollups and
//! visitor sketches; link and QR events keep analytics' list of subjects.
//! A batch of one tenant is aggregated in memory first, so a key touched by a
//! hundred clicks is written once.

use std::collections::HashMap;

use async_trait::async_trait;
use kernel::db::{Id, Savepoint, Tx};
use kernel::events::{Envelope, Handler, HandlerError};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::sketch::{Sketch, visitor_hash};

/// The event types analytics consumes.
pub const EVENT_TYPES: &[&str] = &[
    "link.clicked",
    "qr.scanned",
    "link.created",
    "link.updated",
    "link.deleted",
    "qr.created",
    "qr.updated",
];
/// The clicks and scans (what the live stream pushes).
pub const CLICK_TYPES: &[&str] = &["link.clicked", "qr.scanned"];

/// The dimensions every click is counted by, as stored in `hourly.dim`.
pub const DIMENSIONS: [&str; 6] = ["country", "device", "browser", "os", "referrer", "bot"];

/// One click or scan, as analytics keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Click {
    pub event_id: Uuid,
    pub at: i64,
    pub kind: &'static str,
    pub subject: Uuid,
    pub link_id: Uuid,
    pub qr_id: Option<Uuid>,
    /// country, device, browser, os, referrer, bot (the order of [`DIMENSIONS`]).
    pub dims: [String; 6],
    pub visitor: String,
}

impl Click {
    pub(crate) fn hour(&self) -> i64 {
        self.at - self.at.rem_euclid(3600)
    }

    fn human(&self) -> bool {
        self.dims[5] == "human"
    }
}

#[derive(Deserialize)]
struct ClickData {
    link_id: Uuid,
    #[serde(default)]
    qr_id: Option<Uuid>,
    #[serde(default)]
    referrer_host: Option<String>,
    browser: String,
    os: String,
    device: String,
    bot: String,
    #[serde(default)]
    country: Option<String>,
    visitor: String,
}

fn bounded(field: &str, v: String, max: usize) -> Result<String, HandlerError> {
    if v.len() > max || v.chars().any(char::is_control) {
        return Err(HandlerError::Reject(format!("{field} is not a short printable value")));
    }
    Ok(v)
}

/// Reads a click or scan; a malformed one is rejected (dead-lettered by the kernel).
pub(crate) fn parse_click(e: &Envelope) -> Result<Click, HandlerError> {
    let d = e
        .data
        .parse::<ClickData>()
        .map_err(|err| HandlerError::Reject(format!("not a click event: {err}")))?;
    let kind = if e.event_type == "qr.scanned" { "scan" } else { "click" };
    let subject = match (kind, d.qr_id) {
        ("scan", Some(q)) => q,
        ("scan", None) => return Err(HandlerError::Reject("a scan without qr_id".into())),
        _ => d.link_id,
    };
    let country = d.country.unwrap_or_default().to_ascii_uppercase();
    if !(country.is_empty() || (country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()))) {
        return Err(HandlerError::Reject("country is not an ISO 3166-1 alpha-2 code".into()));
    }
    let referrer = d.referrer_host.unwrap_or_default().to_ascii_lowercase();
    let referrer = referrer.strip_prefix("www.").map(str::to_string).unwrap_or(referrer);
    Ok(Click {
        event_id: e.event_id,
        at: e.occurred_at.unix_timestamp(),
        kind,
        subject,
        link_id: d.link_id,
        qr_id: d.qr_id,
        dims: [
            country,
            bounded("device", d.device, 32)?,
            bounded("browser", d.browser, 64)?,
            bounded("os", d.os, 64)?,
            bounded("referrer_host", referrer, 253)?,
            bounded("bot", d.bot, 32)?,
        ],
        visitor: bounded("visitor", d.visitor, 128)?,
    })
}

#[derive(Deserialize)]
struct SubjectData {
    #[serde(default)]
    tenant_id: Option<kernel::TenantId>,
    link_id: Uuid,
    #[serde(default)]
    qr_id: Option<Uuid>,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    tags: Value,
    #[serde(default)]
    deleted: bool,
    version: i64,
}

/// What analytics knows of a link or QR code.
struct Subject {
    id: Uuid,
    kind: &'static str,
    link_id: Option<Uuid>,
    label: String,
    title: Option<String>,
    tags: Vec<String>,
    deleted: bool,
    version: i64,
}

fn parse_subject(e: &Envelope) -> Result<Subject, HandlerError> {
    let d = e
        .data
        .parse::<SubjectData>()
        .map_err(|err| HandlerError::Reject(format!("not a link or QR event: {err}")))?;
    if d.tenant_id.is_some_and(|t| t != e.tenant_id) {
        return Err(HandlerError::Reject("the subject's tenant is not the event's".into()));
    }
    let deleted = d.deleted || e.event_type.ends_with(".deleted");
    if e.event_type.starts_with("qr.") {
        let id = d.qr_id.ok_or_else(|| HandlerError::Reject("a QR event without qr_id".into()))?;
        return Ok(Subject {
            id,
            kind: "qr",
            link_id: Some(d.link_id),
            label: d.code.unwrap_or_default(),
            title: d.title,
            tags: Vec::new(),
            deleted,
            version: d.version,
        });
    }
    let tags = match d.tags {
        Value::Array(a) => a.into_iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    Ok(Subject {
        id: d.link_id,
        kind: "link",
        link_id: None,
        label: d.slug.unwrap_or_default(),
        title: d.title,
        tags,
        deleted,
        version: d.version,
    })
}

const UPSERT_SUBJECT: &str = "insert into analytics.subjects (tenant_id, id, kind, link_id, label, title, tags, deleted, version) \
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (tenant_id, id) do update set kind = excluded.kind, \
     link_id = excluded.link_id, label = excluded.label, title = excluded.title, tags = excluded.tags, \
     deleted = excluded.deleted, version = excluded.version where subjects.tenant_id = $1 and subjects.version <= excluded.version";
const CLEAR_TAGS: &str = "delete from analytics.subject_tags where tenant_id = $1 and subject_id = $2";
const ADD_TAG: &str = "insert into analytics.subject_tags (tenant_id, tag, subject_id) values ($1, $2, $3) on conflict do nothing";

const LOCK_PG: &str = "insert into analytics.ingest_locks (tenant_id, at) values ($1, now()) \
     on conflict (tenant_id) do update set at = excluded.at";
macro_rules! raw_pg {
    () => {
        "insert into analytics.events (tenant_id, occurred_at, event_id, kind, subject_id, link_id, qr_id, \
         country, device, browser, os, referrer, bot, visitor) select $1, * from unnest($2::timestamptz[], $3::uuid[], \
         $4::text[], $5::uuid[], $6::uuid[], $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
         $13::text[], $14::text[])"
    };
}
/// The raw insert when every event is new, as nearly always: a third cheaper
/// for PostgreSQL than the insert that checks each row for a conflict first.
const RAW_PG: &str = raw_pg!();
const RAW_PG_SKIPPING: &str =
    concat!(raw_pg!(), " on conflict (tenant_id, occurred_at, event_id) do nothing returning event_id");
const CUBE_PG: &str = "insert into analytics.cube (tenant_id, subject_id, hour, country, device, browser, os, referrer, bot, clicks) \
     select $1, * from unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
     $9::text[], $10::bigint[]) on conflict (tenant_id, subject_id, hour, country, device, browser, os, referrer, bot) \
     do update set clicks = cube.clicks + excluded.clicks";
const HOURLY_PG: &str = "insert into analytics.hourly (tenant_id, subject_id, dim, hour, value, clicks, humans) \
     select $1, * from unnest($2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::bigint[], $7::bigint[]) \
     on conflict (tenant_id, subject_id, dim, hour, value) \
     do update set clicks = hourly.clicks + excluded.clicks, humans = hourly.humans + excluded.humans";
const SKETCHES_GET_PG: &str = "select subject_id, hour, sketch from analytics.sketches where tenant_id = $1 \
     and (subject_id, hour) in (select * from unnest($2::uuid[], $3::timestamptz[]))";
const PAIRS_PG: &str = "insert into analytics.pairs (tenant_id, dim, value, other, hour, other_value, clicks, humans) \
     select $1, * from unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bigint[], $8::bigint[]) \
     on conflict (tenant_id, dim, value, other, hour, other_value) \
     do update set clicks = pairs.clicks + excluded.clicks, humans = pairs.humans + excluded.humans";
const VALUE_SKETCHES_GET_PG: &str = "select dim, value, hour, sketch from analytics.value_sketches where tenant_id = $1 \
     and (dim, value, hour) in (select * from unnest($2::text[], $3::text[], $4::timestamptz[]))";
const VALUE_SKETCHES_PUT_PG: &str = "insert into analytics.value_sketches (tenant_id, dim, value, hour, sketch) \
     select $1, * from unnest($2::text[], $3::text[], $4::timestamptz[], $5::bytea[]) \
     on conflict (tenant_id, dim, value, hour) do update set sketch = excluded.sketch";
const SKETCHES_PUT_PG: &str = "insert into analytics.sketches (tenant_id, subject_id, hour, sketch) \
     select $1, * from unnest($2::uuid[], $3::timestamptz[], $4::bytea[]) \
     on conflict (tenant_id, subject_id, hour) do update set sketch = excluded.sketch";

// SQLite takes a whole batch per statement as one JSON array of rows (each row
// an array, read with `->>` by position): a statement per row costs a round
// trip to the connection's thread each. `jsonb_each` hands each row over in
// SQLite's binary JSON, so the `->>` reads index it instead of parsing the
// row's text again (`json_each` turned every row back into text, and every
// `->>` parsed it). `where true` lets an upsert follow a select.
macro_rules! raw_lite {
    () => {
        "insert into analytics.events (tenant_id, occurred_at, event_id, kind, subject_id, link_id, qr_id, \
         country, device, browser, os, referrer, bot, visitor) select $1, value->>0, value->>1, value->>2, value->>3, \
         value->>4, value->>5, value->>6, value->>7, value->>8, value->>9, value->>10, value->>11, value->>12 \
         from jsonb_each($2) where true on conflict do nothing"
    };
}
const RAW_LITE: &str = raw_lite!();
const RAW_LITE_LISTED: &str = concat!(raw_lite!(), " returning event_id");
/// Around the raw insert, so that a redelivered batch can be undone and inserted again.
const RAW_SAVEPOINT: Savepoint = Savepoint::new("raw_events");
const CUBE_LITE: &str = "insert into analytics.cube (tenant_id, subject_id, hour, country, device, browser, os, referrer, bot, clicks) \
     select $1, value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7, value->>8 \
     from jsonb_each($2) where true on conflict (tenant_id, subject_id, hour, country, device, browser, os, referrer, bot) \
     do update set clicks = clicks + excluded.clicks";
const HOURLY_LITE: &str = "insert into analytics.hourly (tenant_id, subject_id, dim, hour, value, clicks, humans) \
     select $1, value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 from jsonb_each($2) where true \
     on conflict (tenant_id, subject_id, dim, hour, value) \
     do update set clicks = clicks + excluded.clicks, humans = humans + excluded.humans";
const SKETCHES_GET_LITE: &str = "select subject_id, hour, sketch from analytics.sketches where tenant_id = $1 \
     and (subject_id, hour) in (select value->>0, value->>1 from jsonb_each($2))";
const SKETCHES_PUT_LITE: &str = "insert into analytics.sketches (tenant_id, subject_id, hour, sketch) \
     select $1, value->>0, value->>1, unhex(value->>2) from jsonb_each($2) where true \
     on conflict (tenant_id, subject_id, hour) do update set sketch = excluded.sketch";
const PAIRS_LITE: &str = "insert into analytics.pairs (tenant_id, dim, value, other, hour, other_value, clicks, humans) \
     select $1, value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6 from jsonb_each($2) where true \
     on conflict (tenant_id, dim, value, other, hour, other_value) \
     do update set clicks = clicks + excluded.clicks, humans = humans + excluded.humans";
const VALUE_SKETCHES_GET_LITE: &str = "select dim, value, hour, sketch from analytics.value_sketches where tenant_id = $1 \
     and (dim, value, hour) in (select value->>0, value->>1, value->>2 from jsonb_each($2))";
const VALUE_SKETCHES_PUT_LITE: &str = "insert into analytics.value_sketches (tenant_id, dim, value, hour, sketch) \
     select $1, value->>0, value->>1, value->>2, unhex(value->>3) from jsonb_each($2) where true \
     on conflict (tenant_id, dim, value, hour) do update set sketch = excluded.sketch";

// The keys borrow the batch's clicks: aggregating allocates nothing per click.
type CubeKey<'a> = (Uuid, i64, &'a [String; 6]);
type HourlyKey<'a> = (Uuid, &'static str, i64, &'a str);
/// The batch's maps hash with foldhash (seeded per map): SipHash was a fifth of
/// the consumer's time, on 40 keys per click.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// (dimension, value, other dimension, hour, other value); dimensions by their index in [`DIMENSIONS`].
type PairKey<'a> = (usize, &'a str, usize, i64, &'a str);
/// (dimension, value, hour) of a workspace's visitor sketch per value.
type ValueKey = (&'static str, String, i64);

/// A batch of clicks, aggregated per key.
///
/// Clicks are grouped by their cube key first (subject, hour and every
/// dimension), and the other rollups are derived once per group. A batch of
/// redirects is mostly a few links seen by similar clients: deriving per
/// click cost 44 map updates each (30 of them pairs), a fifth of the click
/// pipeline's time under redirect load.
#[derive(Default)]
pub(crate) struct Rollup<'a> {
    /// Cube key → its group in `groups`.
    index: Map<CubeKey<'a>, usize>,
    /// (key, clicks, humans) per cube key.
    groups: Vec<(CubeKey<'a>, i64, i64)>,
    /// (group, visitor hash) of every click.
    visitors: Vec<(usize, u64)>,
}

/// A batch's rollups, keyed as they are written.
#[derive(Default)]
pub(crate) struct Rolled<'a> {
    cube: Vec<(CubeKey<'a>, i64)>,
    hourly: Map<HourlyKey<'a>, (i64, i64)>,
    sketches: HashMap<(Uuid, i64), Vec<u64>>,
    pairs: Map<PairKey<'a>, (i64, i64)>,
    value_sketches: HashMap<ValueKey, Vec<u64>>,
}

impl<'a> Rollup<'a> {
    pub(crate) fn add(&mut self, c: &'a Click) {
        let key = (c.subject, c.hour(), &c.dims);
        let groups = &mut self.groups;
        let g = *self.index.entry(key).or_insert_with(|| {
            groups.push((key, 0, 0));
            groups.len() - 1
        });
        self.groups[g].1 += 1;
        self.groups[g].2 += i64::from(c.human());
        self.visitors.push((g, visitor_hash(&c.visitor)));
    }

    /// Derives every rollup from the groups.
    pub(crate) fn finish(mut self) -> Rolled<'a> {
        let mut out = Rolled::default();
        let workspace = Uuid::nil();
        for &((_, hour, dims), clicks, humans) in &self.groups {
            // Per-dimension rows only for the workspace: a subject's own cube rows are few.
            let mut bump = |dim: &'static str, value: &'a str| {
                let e = out.hourly.entry((workspace, dim, hour, value)).or_default();
                e.0 += clicks;
                e.1 += humans;
            };
            bump("total", "");
            for (dim, value) in DIMENSIONS.iter().zip(dims) {
                bump(dim, value);
            }
            // The workspace's filtered reads: every ordered pair of dimensions.
            for (i, value) in dims.iter().enumerate() {
                for (j, other) in dims.iter().enumerate().filter(|(j, _)| *j != i) {
                    let e = out.pairs.entry((i, value, j, hour, other)).or_default();
                    e.0 += clicks;
                    e.1 += humans;
                }
            }
        }
        // Each group's distinct visitors go once into the sketches of its
        // subject, of the workspace and of each of its values.
        self.visitors.sort_unstable();
        self.visitors.dedup();
        let mut values: Map<(usize, &'a str, i64), Vec<u64>> = Map::default();
        for run in self.visitors.chunk_by(|a, b| a.0 == b.0) {
            let ((subject, hour, dims), ..) = self.groups[run[0].0];
            let hashes = run.iter().map(|(_, h)| *h);
            for s in [subject, workspace] {
                out.sketches.entry((s, hour)).or_default().extend(hashes.clone());
            }
            for (i, value) in dims.iter().enumerate() {
                values.entry((i, value, hour)).or_default().extend(hashes.clone());
            }
        }
        out.value_sketches = values
            .into_iter()
            .map(|((i, value, hour), v)| ((DIMENSIONS[i], value.to_string(), hour), v))
            .collect();
        out.cube = self.groups.into_iter().map(|(key, clicks, _)| (key, clicks)).collect();
        out
    }
}

/// A batch's rows as one JSON array of arrays, read by SQLite's `jsonb_each`.
fn json_rows<T: serde::Serialize>(rows: impl Iterator<Item = T>) -> Result<String, HandlerError> {
    serde_json::to_string(&rows.collect::<Vec<T>>())
        .map_err(|e| HandlerError::Retry(format!("cannot encode a batch: {e}")))
}

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The stored sketches with the batch's visitors added.
fn merge<K: std::hash::Hash + Eq>(
    stored: impl Iterator<Item = (K, Vec<u8>)>,
    added: HashMap<K, Vec<u64>>,
) -> Vec<(K, Sketch)> {
    let mut merged: HashMap<K, Sketch> = stored.map(|(k, b)| (k, Sketch::decode(&b))).collect();
    for (key, hashes) in added {
        merged.entry(key).or_default().extend(hashes);
    }
    merged.into_iter().collect()
}

/// A stored dimension name as the `'static` one it stands for.
fn dimension(name: &str) -> &'static str {
    DIMENSIONS.iter().find(|d| **d == name).copied().unwrap_or("")
}

/// Stores a batch's raw events and returns the clicks not stored before, each
/// once: the raw events' key (tenant, time, event id) is what makes the
/// consumer idempotent (see [`Handler::deduplicates`]).
async fn store_raw<'c>(tx: &mut Tx, clicks: &'c [Click]) -> Result<Vec<&'c Click>, HandlerError> {
    let stored: Vec<(Id,)> = match tx {
        Tx::Postgres(t) => {
            // In key order: two batches inserting the same events (a
            // redelivery racing the original) wait on each other's rows in
            // one order, so they cannot deadlock.
            let mut sorted: Vec<&Click> = clicks.iter().collect();
            sorted.sort_unstable_by_key(|c| (c.at, c.event_id));
            macro_rules! bind_raw {
                ($q:expr) => {{
                    let col =
                        |f: &dyn Fn(&Click) -> String| sorted.iter().map(|c| f(c)).collect::<Vec<String>>();
                    $q.bind(sorted.iter().map(|c| at(c.at)).collect::<Vec<_>>())
                        .bind(sorted.iter().map(|c| c.event_id).collect::<Vec<_>>())
                        .bind(col(&|c| c.kind.to_string()))
                        .bind(sorted.iter().map(|c| c.subject).collect::<Vec<_>>())
                        .bind(sorted.iter().map(|c| c.link_id).collect::<Vec<_>>())
                        .bind(sorted.iter().map(|c| c.qr_id).collect::<Vec<_>>())
                        .bind(col(&|c| c.dims[0].clone()))
                        .bind(col(&|c| c.dims[1].clone()))
                        .bind(col(&|c| c.dims[2].clone()))
                        .bind(col(&|c| c.dims[3].clone()))
                        .bind(col(&|c| c.dims[4].clone()))
                        .bind(col(&|c| c.dims[5].clone()))
                        .bind(col(&|c| c.visitor.clone()))
                }};
            }
            // As on SQLite: a short-cut for the usual case, undone when a
            // stored event refuses it (a redelivery), then the insert that
            // skips stored events and lists the new ones.
            t.savepoint(RAW_SAVEPOINT).await?;
            match t.execute(bind_raw!(t.query(RAW_PG))).await {
                Ok(_) => {
                    t.release(RAW_SAVEPOINT).await?;
                    return Ok(clicks.iter().collect());
                }
                Err(e) if e.is_unique_violation() => t.rollback_to(RAW_SAVEPOINT).await?,
                Err(e) => return Err(e.into()),
            }
            let stored = t.fetch_all(bind_raw!(t.query_as(RAW_PG_SKIPPING))).await?;
            t.release(RAW_SAVEPOINT).await?;
            stored
        }
        Tx::Sqlite(t) => {
            let raw = json_rows(clicks.iter().map(|c| {
                let [country, device, browser, os, referrer, bot] = &c.dims;
                (
                    c.at, c.event_id, c.kind, c.subject, c.link_id, c.qr_id, country, device, browser, os,
                    referrer, bot, &c.visitor,
                )
            }))?;
            // Nearly always every click is new, and a count says so: rows
            // returned by SQLite cross from its thread one at a time (a wake-up
            // each). A short count means a redelivery: undo, and insert again
            // listing what was new.
            t.savepoint(RAW_SAVEPOINT).await?;
            let inserted = t.execute(t.query(RAW_LITE).bind(raw.as_str())).await?;
            if usize::try_from(inserted).is_ok_and(|n| n == clicks.len()) {
                t.release(RAW_SAVEPOINT).await?;
                return Ok(clicks.iter().collect());
            }
            t.rollback_to(RAW_SAVEPOINT).await?;
            let stored = t.fetch_all(t.query_as(RAW_LITE_LISTED).bind(raw)).await?;
            t.release(RAW_SAVEPOINT).await?;
            stored
        }
    };
    if stored.len() == clicks.len() {
        return Ok(clicks.iter().collect());
    }
    // A redelivery: only what was stored just now counts, and a click that
    // came twice in this batch counts once.
    let mut fresh: std::collections::HashSet<Uuid> = stored.into_iter().map(|(Id(u),)| u).collect();
    Ok(clicks.iter().filter(|c| fresh.remove(&c.event_id)).collect())
}

/// Writes a batch of one tenant's clicks: the raw events, then the rollups of
/// those not stored before.
pub(crate) async fn store_clicks(tx: &mut Tx, clicks: &[Click]) -> Result<usize, HandlerError> {
    let fresh = store_raw(tx, clicks).await?;
    if fresh.is_empty() {
        return Ok(0);
    }
    if let Tx::Postgres(t) = tx {
        // Serialises this tenant's rollups across transactions (sketch merges
        // are read-modify-write, and upserts in one order cannot deadlock).
        // Taken after the raw insert, the bulk of a batch's work, so that
        // concurrent batches (`concurrency`, other instances) overlap there.
        t.execute(t.query(LOCK_PG)).await?;
    }
    let mut roll = Rollup::default();
    for c in &fresh {
        roll.add(c);
    }
    let Rolled { cube, hourly, sketches, pairs, value_sketches } = roll.finish();
    match tx {
        Tx::Postgres(t) => {
            let dim = |i: usize| cube.iter().map(|(k, _)| k.2[i].clone()).collect::<Vec<_>>();
            t.execute(
                t.query(CUBE_PG)
                    .bind(cube.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
                    .bind(cube.iter().map(|(k, _)| at(k.1)).collect::<Vec<_>>())
                    .bind(dim(0))
                    .bind(dim(1))
                    .bind(dim(2))
                    .bind(dim(3))
                    .bind(dim(4))
                    .bind(dim(5))
                    .bind(cube.iter().map(|(_, n)| *n).collect::<Vec<_>>()),
            )
            .await?;
            let hourly: Vec<(&HourlyKey, &(i64, i64))> = hourly.iter().collect();
            t.execute(
                t.query(HOURLY_PG)
                    .bind(hourly.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
                    .bind(hourly.iter().map(|(k, _)| k.1.to_string()).collect::<Vec<_>>())
                    .bind(hourly.iter().map(|(k, _)| at(k.2)).collect::<Vec<_>>())
                    .bind(hourly.iter().map(|(k, _)| k.3.to_string()).collect::<Vec<_>>())
                    .bind(hourly.iter().map(|(_, v)| v.0).collect::<Vec<_>>())
                    .bind(hourly.iter().map(|(_, v)| v.1).collect::<Vec<_>>()),
            )
            .await?;
            let keys: Vec<(Uuid, i64)> = sketches.keys().copied().collect();
            let stored: Vec<(Uuid, OffsetDateTime, Vec<u8>)> = t
                .fetch_all(
                    t.query_as(SKETCHES_GET_PG)
                        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
                        .bind(keys.iter().map(|k| at(k.1)).collect::<Vec<_>>()),
                )
                .await?;
            let merged = merge(stored.into_iter().map(|(s, h, b)| ((s, h.unix_timestamp()), b)), sketches);
            t.execute(
                t.query(SKETCHES_PUT_PG)
                    .bind(merged.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
                    .bind(merged.iter().map(|(k, _)| at(k.1)).collect::<Vec<_>>())
                    .bind(merged.iter().map(|(_, s)| s.encode()).collect::<Vec<_>>()),
            )
            .await?;
            let pairs: Vec<(&PairKey, &(i64, i64))> = pairs.iter().collect();
            let text = |f: &dyn for<'k> Fn(&'k PairKey<'k>) -> &'k str| {
                pairs.iter().map(|(k, _)| f(k).to_string()).collect::<Vec<_>>()
            };
            t.execute(
                t.query(PAIRS_PG)
                    .bind(text(&|k| DIMENSIONS[k.0]))
                    .bind(text(&|k| k.1))
                    .bind(text(&|k| DIMENSIONS[k.2]))
                    .bind(pairs.iter().map(|(k, _)| at(k.3)).collect::<Vec<_>>())
                    .bind(text(&|k| k.4))
                    .bind(pairs.iter().map(|(_, v)| v.0).collect::<Vec<_>>())
                    .bind(pairs.iter().map(|(_, v)| v.1).collect::<Vec<_>>()),
            )
            .await?;
            let keys: Vec<&ValueKey> = value_sketches.keys().collect();
            let stored: Vec<(String, String, OffsetDateTime, Vec<u8>)> = t
                .fetch_all(
                    t.query_as(VALUE_SKETCHES_GET_PG)
                        .bind(keys.iter().map(|k| k.0.to_string()).collect::<Vec<_>>())
                        .bind(keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>())
                        .bind(keys.iter().map(|k| at(k.2)).collect::<Vec<_>>()),
                )
                .await?;
            let stored = stored.into_iter().map(|(d, v, h, b)| ((dimension(&d), v, h.unix_timestamp()), b));
            let merged = merge(stored, value_sketches);
            t.execute(
                t.query(VALUE_SKETCHES_PUT_PG)
                    .bind(merged.iter().map(|(k, _)| k.0.to_string()).collect::<Vec<_>>())
                    .bind(merged.iter().map(|(k, _)| k.1.clone()).collect::<Vec<_>>())
                    .bind(merged.iter().map(|(k, _)| at(k.2)).collect::<Vec<_>>())
                    .bind(merged.iter().map(|(_, s)| s.encode()).collect::<Vec<_>>()),
            )
            .await?;
        }
        Tx::Sqlite(t) => {
            let cube = json_rows(cube.iter().map(|((subject, hour, d), n)| {
                (subject, hour, &d[0], &d[1], &d[2], &d[3], &d[4], &d[5], n)
            }))?;
            t.execute(t.query(CUBE_LITE).bind(cube)).await?;
            let hourly = json_rows(
                hourly.iter().map(|((subject, dim, hour, value), (n, h))| (subject, dim, hour, value, n, h)),
            )?;
            t.execute(t.query(HOURLY_LITE).bind(hourly)).await?;
            let keys = json_rows(sketches.keys())?;
            let stored: Vec<(Id, i64, Vec<u8>)> =
                t.fetch_all(t.query_as(SKETCHES_GET_LITE).bind(keys)).await?;
            let merged = merge(stored.into_iter().map(|(Id(s), h, b)| ((s, h), b)), sketches);
            let put = json_rows(
                merged.iter().map(|((subject, hour), sketch)| (subject, hour, kernel::hex(&sketch.encode()))),
            )?;
            t.execute(t.query(SKETCHES_PUT_LITE).bind(put)).await?;
            let pairs = json_rows(pairs.iter().map(|((i, value, j, hour, other), (n, h))| {
                (DIMENSIONS[*i], value, DIMENSIONS[*j], hour, other, n, h)
            }))?;
            t.execute(t.query(PAIRS_LITE).bind(pairs)).await?;
            let keys = json_rows(value_sketches.keys())?;
            let stored: Vec<(String, String, i64, Vec<u8>)> =
                t.fetch_all(t.query_as(VALUE_SKETCHES_GET_LITE).bind(keys)).await?;
            let stored = stored.into_iter().map(|(d, v, h, b)| ((dimension(&d), v, h), b));
            let merged = merge(stored, value_sketches);
            let put = json_rows(
                merged
                    .iter()
                    .map(|((dim, value, hour), sketch)| (dim, value, hour, kernel::hex(&sketch.encode()))),
            )?;
            t.execute(t.query(VALUE_SKETCHES_PUT_LITE).bind(put)).await?;
        }
    }
    Ok(fresh.len())
}

async fn store_subject(tx: &mut Tx, s: &Subject) -> Result<(), HandlerError> {
    let tags = serde_json::to_string(&s.tags).map_err(|e| HandlerError::Reject(e.to_string()))?;
    macro_rules! write {
        ($t:expr) => {{
            let t = $t;
            let changed = t
                .execute(
                    t.query(UPSERT_SUBJECT)
                        .bind(Id(s.id))
                        .bind(s.kind)
                        .bind(s.link_id.map(Id))
                        .bind(s.label.clone())
                        .bind(s.title.clone())
                        .bind(tags.clone())
                        .bind(s.deleted)
                        .bind(s.version),
                )
                .await?;
            if changed > 0 {
                t.execute(t.query(CLEAR_TAGS).bind(Id(s.id))).await?;
                for tag in &s.tags {
                    t.execute(t.query(ADD_TAG).bind(tag.clone()).bind(Id(s.id))).await?;
                }
            }
        }};
    }
    match tx {
        Tx::Postgres(t) => write!(t),
        Tx::Sqlite(t) => write!(t),
    }
    Ok(())
}

/// Analytics' consumer.
pub struct Ingest {
    /// The service name its metrics carry.
    pub service: &'static str,
}

#[async_trait]
impl Handler for Ingest {
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(tx, std::slice::from_ref(event)).await
    }

    /// Clicks are stored keyed by their event id and skipped when stored
    /// before; a subject event is an upsert guarded by its version.
    fn deduplicates(&self) -> bool {
        true
    }

    /// Clicks are counts (they commute): two batches at once, which meet at
    /// the tenant's ingest lock, taken after the raw insert (see
    /// [`store_clicks`]). Link and QR events, few and each an upsert of
    /// several rows, go one batch at a time.
    fn concurrency(&self, event_type: &str) -> usize {
        if CLICK_TYPES.contains(&event_type) { 2 } else { 1 }
    }

    async fn handle_batch(&self, tx: &mut Tx, events: &[Envelope]) -> Result<(), HandlerError> {
        let mut clicks = Vec::with_capacity(events.len());
        for e in events {
            if CLICK_TYPES.contains(&e.event_type.as_str()) {
                clicks.push(parse_click(e)?);
            } else {
                store_subject(tx, &parse_subject(e)?).await?;
            }
        }
        if !clicks.is_empty() {
            let stored = store_clicks(tx, &clicks).await?;
            metrics::counter!("analytics_clicks_ingested_total", "service" => self.service)
                .increment(stored as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn click(subject: Uuid, at: i64, dims: [&str; 6], visitor: &str) -> Click {
        Click {
            event_id: Uuid::now_v7(),
            at,
            kind: "click",
            subject,
            link_id: subject,
            qr_id: None,
            dims: dims.map(str::to_string),
            visitor: visitor.to_string(),
        }
    }

    /// The rollups grouped per cube key hold exactly what counting click by
    /// click gives: the same clicks and humans under every key, and the same
    /// visitors in every sketch.
    #[test]
    fn grouped_rollups_count_what_each_click_would() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let us = ["US", "mobile", "safari", "ios", "t.co", "human"];
        let de = ["DE", "desktop", "firefox", "linux", "", "bot"];
        let mut clicks = Vec::new();
        for i in 0..300 {
            // Mostly one group, as redirect traffic is; a second link, a second
            // hour, other dimensions and returning visitors mixed in.
            let (subject, dims) = if i % 7 == 0 { (b, de) } else { (a, us) };
            let at = if i % 11 == 0 { 7_200 + 5 } else { 3_600 + i };
            clicks.push(click(subject, at, dims, &format!("{:032x}", i % 40)));
        }
        let mut roll = Rollup::default();
        for c in &clicks {
            roll.add(c);
        }
        let rolled = roll.finish();

        let mut cube: BTreeMap<(Uuid, i64, [String; 6]), i64> = BTreeMap::new();
        let mut hourly: BTreeMap<(&str, i64, String), (i64, i64)> = BTreeMap::new();
        type Pair = (usize, String, usize, i64, String);
        let mut pairs: BTreeMap<Pair, (i64, i64)> = BTreeMap::new();
        let mut sketches: BTreeMap<(Uuid, i64), BTreeSet<u64>> = BTreeMap::new();
        let mut values: BTreeMap<(&str, String, i64), BTreeSet<u64>> = BTreeMap::new();
        for c in &clicks {
            let (hour, human, v) = (c.hour(), i64::from(c.human()), visitor_hash(&c.visitor));
            *cube.entry((c.subject, hour, c.dims.clone())).or_default() += 1;
            for (dim, value) in std::iter::once(("total", ""))
                .chain(DIMENSIONS.iter().copied().zip(c.dims.iter().map(String::as_str)))
            {
                let e = hourly.entry((dim, hour, value.to_string())).or_default();
                e.0 += 1;
                e.1 += human;
            }
            for (i, dim) in DIMENSIONS.iter().enumerate() {
                for j in (0..6).filter(|j| *j != i) {
                    let e = pairs.entry((i, c.dims[i].clone(), j, hour, c.dims[j].clone())).or_default();
                    e.0 += 1;
                    e.1 += human;
                }
                values.entry((*dim, c.dims[i].clone(), hour)).or_default().insert(v);
            }
            for s in [c.subject, Uuid::nil()] {
                sketches.entry((s, hour)).or_default().insert(v);
            }
        }

        let got_cube: BTreeMap<_, _> =
            rolled.cube.iter().map(|((s, h, d), n)| ((*s, *h, (*d).clone()), *n)).collect();
        assert_eq!(got_cube, cube);
        let got_hourly: BTreeMap<_, _> =
            rolled.hourly.iter().map(|((_, dim, h, v), n)| ((*dim, *h, v.to_string()), *n)).collect();
        assert_eq!(got_hourly, hourly);
        let got_pairs: BTreeMap<_, _> = rolled
            .pairs
            .iter()
            .map(|((i, v, j, h, o), n)| ((*i, v.to_string(), *j, *h, o.to_string()), *n))
            .collect();
        assert_eq!(got_pairs, pairs);
        let got_sketches: BTreeMap<_, BTreeSet<u64>> =
            rolled.sketches.iter().map(|(k, v)| (*k, v.iter().copied().collect())).collect();
        assert_eq!(got_sketches, sketches);
        let got_values: BTreeMap<_, BTreeSet<u64>> = rolled
            .value_sketches
            .iter()
            .map(|((d, v, h), s)| ((*d, v.clone(), *h), s.iter().copied().collect()))
            .collect();
        assert_eq!(got_values, values);
        // Two links, two hours, two dimension sets: a handful of groups, not 300.
        assert!(rolled.cube.len() <= 4, "{} groups", rolled.cube.len());
    }
}
