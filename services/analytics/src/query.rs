//! Reading analytics: the query parameters (range, time zone, interval,
//! filters), and the summary built from the rollups — hourly per-dimension
//! rows when nothing is filtered, per pair of dimensions when the workspace is
//! filtered by one, the full cube otherwise.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use kernel::Problem;
use kernel::db::{Db, DbError, Id, Timestamp, Tx};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ingest::DIMENSIONS;
use crate::sketch::Sketch;

/// The query string every analytics read accepts.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Start (RFC 3339, or a date in `tz`); default: 30 days before `to`.
    pub from: Option<String>,
    /// End, exclusive (RFC 3339, or a date in `tz`: the start of that day); default: now.
    pub to: Option<String>,
    /// IANA time zone of dates and day buckets; default UTC.
    pub tz: Option<String>,
    /// `hour` or `day` (default: `hour` up to two days, else `day`).
    pub interval: Option<String>,
    /// Entries per top list (1–100, default 10).
    pub limit: Option<u32>,
    /// Comma-separated dimensions to list tops of (default: all).
    pub top: Option<String>,
    /// Filters.
    pub country: Option<String>,
    pub device: Option<String>,
    pub browser: Option<String>,
    pub os: Option<String>,
    pub referrer: Option<String>,
    pub bot: Option<String>,
}

/// Which clicks a read covers.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `workspace`, `link`, `qr` or `tag`.
    pub kind: &'static str,
    /// The link or QR id, or the tag.
    pub key: Option<String>,
    /// What a person recognises it by (slug, code, tag).
    pub label: String,
    /// Subjects counted (empty for the workspace: all of them).
    pub subjects: Vec<Uuid>,
}

impl Scope {
    pub(crate) fn all(&self) -> bool {
        self.kind == "workspace"
    }

    /// The subjects of the per-subject rollups (the nil id is the workspace's).
    fn rollup_subjects(&self) -> Vec<Uuid> {
        if self.all() { vec![Uuid::nil()] } else { self.subjects.clone() }
    }
}

/// A checked query.
#[derive(Debug, Clone)]
pub struct Query {
    /// Whole hours, unix seconds, `[from, to)`.
    pub from: i64,
    pub to: i64,
    pub tz: TimeZone,
    pub tz_name: String,
    pub daily: bool,
    pub limit: u32,
    pub top: Vec<&'static str>,
    /// country, device, browser, os, referrer, bot ('' = any).
    pub filters: [String; 6],
}

impl Query {
    /// Whether any dimension is filtered.
    pub fn filtered(&self) -> bool {
        self.filters.iter().any(|f| !f.is_empty())
    }

    /// The filtered dimension (its index in [`DIMENSIONS`]) and value, when exactly one is.
    pub fn single_filter(&self) -> Option<(usize, &str)> {
        let mut set = self.filters.iter().enumerate().filter(|(_, f)| !f.is_empty());
        match (set.next(), set.next()) {
            (Some((i, f)), None) => Some((i, f.as_str())),
            _ => None,
        }
    }
}

fn instant(field: &str, raw: &str, tz: &TimeZone) -> Result<i64, Problem> {
    if let Ok(t) = raw.parse::<jiff::Timestamp>() {
        return Ok(t.as_second());
    }
    let date: jiff::civil::Date =
        raw.parse().map_err(|_| Problem::validation(field, "is an RFC 3339 time or a date (YYYY-MM-DD)"))?;
    date.to_zoned(tz.clone())
        .map(|z| z.timestamp().as_second())
        .map_err(|_| Problem::validation(field, "is not a date in this time zone"))
}

/// Checks the parameters; `now` and `max_days` come from the clock and configuration.
pub fn parse(p: &Params, now: i64, max_days: u32) -> Result<Query, Problem> {
    let tz_name = p.tz.clone().unwrap_or_else(|| "UTC".into());
    let tz = TimeZone::get(&tz_name)
        .map_err(|_| Problem::validation("tz", "is not an IANA time zone (e.g. Europe/Berlin)"))?;
    let to = match &p.to {
        Some(t) => instant("to", t, &tz)?,
        None => now,
    };
    let from = match &p.from {
        Some(f) => instant("from", f, &tz)?,
        None => to - 30 * 86_400,
    };
    if from >= to {
        return Err(Problem::validation("from", "is before to"));
    }
    // Rollups are hourly: the range widens to whole hours.
    let (from, to) = (from - from.rem_euclid(3600), to + (3600 - to.rem_euclid(3600)) % 3600);
    if to - from > i64::from(max_days) * 86_400 {
        return Err(Problem::validation("to", format!("is at most {max_days} days after from")));
    }
    let daily = match p.interval.as_deref() {
        None => to - from > 2 * 86_400,
        Some("day") => true,
        Some("hour") if to - from <= 31 * 86_400 => false,
        Some("hour") => return Err(Problem::validation("interval", "hour covers at most 31 days; use day")),
        Some(_) => return Err(Problem::validation("interval", "is hour or day")),
    };
    let limit = p.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(Problem::validation("limit", "is 1 to 100"));
    }
    let top = match p.top.as_deref() {
        None => DIMENSIONS.to_vec(),
        Some(list) => {
            let mut v = Vec::new();
            for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                let dim = DIMENSIONS.iter().find(|x| **x == d).ok_or_else(|| {
                    Problem::validation(
                        "top",
                        format!("{d:?} is not a dimension ({})", DIMENSIONS.join(", ")),
                    )
                })?;
                v.push(*dim);
            }
            v
        }
    };
    let filter = |name: &str, v: &Option<String>| -> Result<String, Problem> {
        let v = v.clone().unwrap_or_default();
        if v.len() > 253 || v.chars().any(char::is_control) {
            return Err(Problem::validation(name, "is at most 253 printable characters"));
        }
        Ok(if name == "country" { v.to_ascii_uppercase() } else { v })
    };
    let filters = [
        filter("country", &p.country)?,
        filter("device", &p.device)?,
        filter("browser", &p.browser)?,
        filter("os", &p.os)?,
        filter("referrer", &p.referrer)?,
        filter("bot", &p.bot)?,
    ];
    Ok(Query { from, to, tz, tz_name, daily, limit, top, filters })
}

/// One bucket of the series.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The bucket's start: a date (`day`) or an RFC 3339 time in `tz` (`hour`).
    pub t: String,
    pub clicks: i64,
    pub humans: i64,
}

/// One entry of a top list.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The value; `null` when unknown (no country, no referrer).
    pub value: Option<String>,
    pub clicks: i64,
    pub humans: i64,
}

/// The answer of a summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub clicks: i64,
    pub humans: i64,
    pub unique_visitors: u64,
    /// `exact`, or `hyperloglog` (about 1.6 % standard error).
    pub unique_visitors_method: &'static str,
    pub series: Vec<Point>,
    pub top: BTreeMap<&'static str, Vec<Entry>>,
}

macro_rules! subjects_sql {
    ($before:expr, $after:expr) => {
        (
            concat!($before, "subject_id = any($2)", $after),
            concat!($before, "subject_id in (select value from json_each($2))", $after),
        )
    };
}

const H_SERIES: (&str, &str) = subjects_sql!(
    "select hour, cast(sum(clicks) as bigint), cast(sum(humans) as bigint) from analytics.hourly where tenant_id = $1 and ",
    " and dim = $5 and value = $6 and hour >= $3 and hour < $4 group by hour order by hour"
);
/// The top values of `other` among the workspace's clicks with `dim = value`.
const P_TOP: &str = "select other_value, cast(sum(clicks) as bigint) as c, cast(sum(humans) as bigint) \
     from analytics.pairs where tenant_id = $1 and dim = $2 and value = $3 and other = $4 \
     and hour >= $5 and hour < $6 group by other_value order by c desc, other_value limit $7";
/// The workspace's visitor sketches of `dim = value`.
const V_SKETCHES: &str = "select sketch from analytics.value_sketches where tenant_id = $1 \
     and dim = $2 and value = $3 and hour >= $4 and hour < $5";
const H_TOP: (&str, &str) = subjects_sql!(
    "select value, cast(sum(clicks) as bigint) as c, cast(sum(humans) as bigint) from analytics.hourly where tenant_id = $1 and ",
    " and dim = $5 and hour >= $3 and hour < $4 group by value order by c desc, value limit $6"
);
const SKETCHES: (&str, &str) = subjects_sql!(
    "select sketch from analytics.sketches where tenant_id = $1 and ",
    " and hour >= $3 and hour < $4"
);

/// A filtered read in two shapes, indexed by [`Scope::all`]: for a list of
/// subjects and for the whole workspace. Both bind the same parameters. On
/// SQLite the list shape walks the list first (`cross join` fixes the order):
/// the planner cannot tell how short a list from `json_each` is, and would
/// otherwise scan the tenant's whole time range (100 ms and more instead of
/// well under 1 ms for one link). For the same reason the list shape names the
/// index it reads raw events by (`$lite_index`): the raw table's key is
/// (tenant, time, event id), and without statistics the planner takes that
/// key's range over the subject index, which reads every link's events.
macro_rules! filtered {
    ($select:expr, $table:literal, $time:literal, $tail:expr) => {
        filtered!($select, $table, "", $time, $tail)
    };
    ($select:expr, $table:literal, $lite_index:literal, $time:literal, $tail:expr) => {
        [
            (
                concat!(
                    $select, " from analytics.", $table, " where tenant_id = $1 and not $5 and subject_id = any($2)",
                    filtered!(@rest " and ", $time, $tail)
                ),
                concat!(
                    $select, " from json_each($2) as subject cross join analytics.", $table, $lite_index,
                    " where tenant_id = $1 and not $5 and subject_id = subject.value",
                    filtered!(@rest " and ", $time, $tail)
                ),
            ),
            subjects_sql!(
                concat!($select, " from analytics.", $table, " where tenant_id = $1 and ($5 or "),
                filtered!(@rest ") and ", $time, $tail)
            ),
        ]
    };
    (@rest $join:literal, $time:literal, $tail:expr) => {
        concat!(
            $join,
            $time,
            " >= $3 and ",
            $time,
            " < $4 and ($6 = '' or country = $6) \
             and ($7 = '' or device = $7) and ($8 = '' or browser = $8) and ($9 = '' or os = $9) \
             and ($10 = '' or referrer = $10) and ($11 = '' or bot = $11) ",
            $tail
        )
    };
}

type Filtered = [(&'static str, &'static str); 2];

/// The filtered cube rows of the range, summed over the subjects: the series
/// and every top list come from this one scan (one scan per list cost seven
/// passes over the same rows).
const C_ROWS: Filtered = filtered!(
    "select hour, country, device, browser, os, referrer, bot, cast(sum(clicks) as bigint)",
    "cube",
    "hour",
    "group by hour, country, device, browser, os, referrer, bot"
);
const C_UNIQUE: Filtered = filtered!(
    "select count(distinct visitor)",
    "events",
    " indexed by events_subject_time",
    "occurred_at",
    ""
);

/// One row of [`C_ROWS`]: the hour, the six dimensions and the clicks.
type CubeRow = (Timestamp, String, String, String, String, String, String, i64);
/// An hour of the series: its start, clicks and humans.
type Hour = (Timestamp, i64, i64);
/// The top lists by dimension.
type Tops = BTreeMap<&'static str, Vec<Entry>>;

/// Raw events for the CSV export, a page at a time after a (time, id) position.
pub(crate) const EXPORT: Filtered = filtered!(
    "select occurred_at, event_id, kind, subject_id, link_id, qr_id, country, device, browser, os, referrer, bot, visitor",
    "events",
    " indexed by events_subject_time",
    "occurred_at",
    "and (occurred_at > $12 or (occurred_at = $12 and event_id > $13)) order by occurred_at, event_id limit $14"
);

/// One raw event as exported.
pub(crate) type RawRow =
    (Timestamp, Id, String, Id, Id, Option<Id>, String, String, String, String, String, String, String);

/// Binds `$3`–`$11` of a filtered statement: the range, "every subject", and the six filters.
macro_rules! with_filters {
    ($b:expr, $q:expr, $scope:expr) => {
        $b.bind(kernel::db::Timestamp::from_unix($q.from))
            .bind(kernel::db::Timestamp::from_unix($q.to))
            .bind($scope.all())
            .bind($q.filters[0].clone())
            .bind($q.filters[1].clone())
            .bind($q.filters[2].clone())
            .bind($q.filters[3].clone())
            .bind($q.filters[4].clone())
            .bind($q.filters[5].clone())
    };
}
pub(crate) use with_filters;

/// Binds a subject-list statement for either engine and runs `$method` on it.
macro_rules! run {
    ($tx:expr, $sql:expr, $subjects:expr, $kind:ident, $fetch:ident, |$q:ident| $binds:expr) => {
        match $tx {
            kernel::db::Tx::Postgres(t) => {
                let $q = t.$kind($sql.0).bind($subjects.to_vec());
                t.$fetch($binds).await?
            }
            kernel::db::Tx::Sqlite(t) => {
                let ids: Vec<String> = $subjects.iter().map(|u| u.hyphenated().to_string()).collect();
                let json = serde_json::to_string(&ids).unwrap_or_default();
                let $q = t.$kind($sql.1).bind(json);
                t.$fetch($binds).await?
            }
        }
    };
}
pub(crate) use run;

/// Reads the summary of `scope` for `q`.
pub async fn summary(
    db: &Db,
    tenant: kernel::TenantId,
    scope: &Scope,
    q: &Query,
) -> Result<Summary, DbError> {
    let mut tx = db.read(tenant).await?;
    let (from, to) = (Timestamp::from_unix(q.from), Timestamp::from_unix(q.to));
    let hours: Vec<(Timestamp, i64, i64)>;
    let mut top = BTreeMap::new();
    let (unique, method);
    // The workspace reads its own rollups: per dimension when nothing is filtered,
    // per pair of dimensions when one is. Anything narrower reads the cube.
    let single = if scope.all() { q.single_filter() } else { None };
    if let Some((f, value)) = single {
        let dim = DIMENSIONS[f];
        let workspace = [Uuid::nil()];
        hours = run!(&mut tx, H_SERIES, workspace, query_as, fetch_all, |b| b
            .bind(from)
            .bind(to)
            .bind(dim)
            .bind(value.to_string()));
        for other in &q.top {
            let rows: Vec<(String, i64, i64)> = if *other == dim {
                // Every click counted has the filtered value.
                let (c, h) = hours.iter().fold((0, 0), |(c, h), (_, hc, hh)| (c + hc, h + hh));
                if c > 0 { vec![(value.to_string(), c, h)] } else { Vec::new() }
            } else {
                macro_rules! top {
                    ($t:expr) => {{
                        let t = $t;
                        t.fetch_all(
                            t.query_as(P_TOP)
                                .bind(dim)
                                .bind(value.to_string())
                                .bind(*other)
                                .bind(from)
                                .bind(to)
                                .bind(i64::from(q.limit)),
                        )
                        .await?
                    }};
                }
                match &mut tx {
                    Tx::Postgres(t) => top!(t),
                    Tx::Sqlite(t) => top!(t),
                }
            };
            top.insert(*other, entries(rows));
        }
        macro_rules! sketches {
            ($t:expr) => {{
                let t = $t;
                t.fetch_all(t.query_as(V_SKETCHES).bind(dim).bind(value.to_string()).bind(from).bind(to))
                    .await?
            }};
        }
        let blobs: Vec<(Vec<u8>,)> = match &mut tx {
            Tx::Postgres(t) => sketches!(t),
            Tx::Sqlite(t) => sketches!(t),
        };
        (unique, method) = union_count(blobs);
    } else if q.filtered() || !scope.all() {
        let subjects = &scope.subjects;
        let all = usize::from(scope.all());
        let rows: Vec<CubeRow> =
            run!(&mut tx, C_ROWS[all], subjects, query_as, fetch_all, |b| with_filters!(b, q, scope));
        (hours, top) = from_cube(rows, &q.top, q.limit);
        (unique, method) = if q.filtered() {
            let (n,): (i64,) =
                run!(&mut tx, C_UNIQUE[all], subjects, query_as, fetch_one, |b| with_filters!(b, q, scope));
            (u64::try_from(n).unwrap_or(0), "exact")
        } else {
            sketch_count(&mut tx, &scope.rollup_subjects(), from, to).await?
        };
    } else {
        let subjects = scope.rollup_subjects();
        hours = run!(&mut tx, H_SERIES, subjects, query_as, fetch_all, |b| b
            .bind(from)
            .bind(to)
            .bind("total")
            .bind(""));
        for dim in &q.top {
            let rows: Vec<(String, i64, i64)> = run!(&mut tx, H_TOP, subjects, query_as, fetch_all, |b| b
                .bind(from)
                .bind(to)
                .bind(*dim)
                .bind(i64::from(q.limit)));
            top.insert(*dim, entries(rows));
        }
        (unique, method) = sketch_count(&mut tx, &subjects, from, to).await?;
    }
    let (clicks, humans) = hours.iter().fold((0, 0), |(c, h), (_, hc, hh)| (c + hc, h + hh));
    let series = series(q, hours.into_iter().map(|(t, c, h)| (t.unix(), c, h)));
    Ok(Summary { clicks, humans, unique_visitors: unique, unique_visitors_method: method, series, top })
}

/// The series (per hour) and the top lists of `dims` from cube rows, ordered
/// as the rollup reads order them: most clicks first, then by value.
fn from_cube(rows: Vec<CubeRow>, dims: &[&'static str], limit: u32) -> (Vec<Hour>, Tops) {
    let mut hours: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut values: [BTreeMap<String, (i64, i64)>; 6] = Default::default();
    for (hour, country, device, browser, os, referrer, bot, clicks) in rows {
        let humans = if bot == "human" { clicks } else { 0 };
        let e = hours.entry(hour.unix()).or_default();
        e.0 += clicks;
        e.1 += humans;
        for (i, value) in [country, device, browser, os, referrer, bot].into_iter().enumerate() {
            let e = values[i].entry(value).or_default();
            e.0 += clicks;
            e.1 += humans;
        }
    }
    let mut top = BTreeMap::new();
    for dim in dims {
        let i = DIMENSIONS.iter().position(|d| d == dim).unwrap_or(0);
        // Copied, not taken: `top=country,country` lists the same values twice.
        let mut list: Vec<(String, i64, i64)> =
            values[i].iter().map(|(v, (c, h))| (v.clone(), *c, *h)).collect();
        // Stable: equal counts keep the values' order.
        list.sort_by_key(|e| std::cmp::Reverse(e.1));
        list.truncate(limit as usize);
        top.insert(*dim, entries(list));
    }
    let hours = hours.into_iter().map(|(t, (c, h))| (Timestamp::from_unix(t), c, h)).collect();
    (hours, top)
}

/// Distinct visitors of `subjects` in the range, from the hourly sketches.
async fn sketch_count(
    tx: &mut Tx,
    subjects: &[Uuid],
    from: Timestamp,
    to: Timestamp,
) -> Result<(u64, &'static str), DbError> {
    let blobs: Vec<(Vec<u8>,)> = run!(tx, SKETCHES, subjects, query_as, fetch_all, |b| b.bind(from).bind(to));
    Ok(union_count(blobs))
}

/// The distinct visitors of stored sketches together.
fn union_count(blobs: Vec<(Vec<u8>,)>) -> (u64, &'static str) {
    let mut all = Sketch::default();
    for (b,) in blobs {
        all.merge(&Sketch::decode(&b));
    }
    (all.count(), if all.is_exact() { "exact" } else { "hyperloglog" })
}

fn entries(rows: Vec<(String, i64, i64)>) -> Vec<Entry> {
    rows.into_iter()
        .map(|(v, clicks, humans)| Entry { value: (!v.is_empty()).then_some(v), clicks, humans })
        .collect()
}

/// Buckets hourly counts by hour or by local day in `tz`, every bucket of the range present.
fn series(q: &Query, hours: impl Iterator<Item = (i64, i64, i64)>) -> Vec<Point> {
    let label = |secs: i64| -> String {
        let Ok(ts) = jiff::Timestamp::from_second(secs) else { return String::new() };
        let z = ts.to_zoned(q.tz.clone());
        if q.daily { z.date().to_string() } else { z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string() }
    };
    let mut buckets: Vec<Point> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut hour = q.from;
    while hour < q.to {
        let t = label(hour);
        if !index.contains_key(&t) {
            index.insert(t.clone(), buckets.len());
            buckets.push(Point { t, clicks: 0, humans: 0 });
        }
        hour += 3600;
    }
    for (h, c, hu) in hours {
        if let Some(&i) = index.get(&label(h)) {
            buckets[i].clicks += c;
            buckets[i].humans += hu;
        }
    }
    buckets
}

/// A link's or QR code's kind and label.
pub(crate) const SUBJECT: &str =
    "select kind, label from analytics.subjects where tenant_id = $1 and id = $2";
/// The subjects carrying a tag.
pub(crate) const TAGGED: &str =
    "select subject_id from analytics.subject_tags where tenant_id = $1 and tag = $2";

/// The subject `id` of `kind` in the tenant, as (kind, label).
pub(crate) async fn subject(
    db: &Db,
    tenant: kernel::TenantId,
    id: Uuid,
) -> Result<Option<(String, String)>, DbError> {
    let mut tx = db.read(tenant).await?;
    Ok(match &mut tx {
        Tx::Postgres(t) => t.fetch_optional(t.query_as(SUBJECT).bind(Id(id))).await?,
        Tx::Sqlite(t) => t.fetch_optional(t.query_as(SUBJECT).bind(Id(id))).await?,
    })
}

/// The subjects carrying `tag`.
pub(crate) async fn tagged(db: &Db, tenant: kernel::TenantId, tag: &str) -> Result<Vec<Uuid>, DbError> {
    let mut tx = db.read(tenant).await?;
    let ids: Vec<(Id,)> = match &mut tx {
        Tx::Postgres(t) => t.fetch_all(t.query_as(TAGGED).bind(tag.to_string())).await?,
        Tx::Sqlite(t) => t.fetch_all(t.query_as(TAGGED).bind(tag.to_string())).await?,
    };
    Ok(ids.into_iter().map(|(i,)| i.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_726_400; // 2025-11-21T12:00:00Z

    #[test]
    fn ranges_widen_to_whole_hours_and_bad_input_names_the_parameter() {
        let q = parse(
            &Params {
                from: Some("2025-11-20T10:30:00Z".into()),
                to: Some("2025-11-20T12:10:00Z".into()),
                ..Default::default()
            },
            NOW,
            400,
        )
        .unwrap_or_else(|p| unreachable!("{p:?}"));
        assert_eq!((q.to - q.from) / 3600, 3);
        assert!(!q.daily);
        let bad = |p: Params| parse(&p, NOW, 400).err().map(|e| e.status().as_u16());
        assert!(bad(Params { tz: Some("Mars/Olympus".into()), ..Default::default() }).is_some());
        assert!(
            bad(Params {
                from: Some("2025-11-22".into()),
                to: Some("2025-11-21".into()),
                ..Default::default()
            })
            .is_some()
        );
        assert!(bad(Params { from: Some("2020-01-01".into()), ..Default::default() }).is_some());
        assert!(bad(Params { top: Some("country,shoe".into()), ..Default::default() }).is_some());
        assert!(bad(Params { interval: Some("week".into()), ..Default::default() }).is_some());
    }

    /// The plans SQLite picks for one link's filtered reads, on an empty copy
    /// of the schema (every migration): they must seek to the link's rows, not
    /// scan the tenant.
    #[tokio::test]
    async fn sqlite_reads_of_one_link_seek_its_rows() {
        use sqlx::{Connection, Executor};
        let Ok(mut conn) = sqlx::SqliteConnection::connect("sqlite::memory:").await else {
            unreachable!("in-memory SQLite")
        };
        let migrations: Vec<&str> = crate::MIGRATIONS.steps.iter().map(|m| m.sqlite).collect();
        let setup = format!("attach database ':memory:' as analytics; {}", migrations.join("\n"));
        conn.execute(sqlx::AssertSqlSafe(setup)).await.unwrap_or_else(|e| unreachable!("{e}"));
        for (sql, expected) in [
            (
                C_ROWS[0].1,
                "SEARCH analytics.cube USING PRIMARY KEY (tenant_id=? AND subject_id=? AND hour>? AND hour<?)",
            ),
            (
                C_UNIQUE[0].1,
                "SEARCH analytics.events USING INDEX events_subject_time (tenant_id=? AND subject_id=? AND occurred_at>? AND occurred_at<?)",
            ),
            (
                EXPORT[0].1,
                "SEARCH analytics.events USING INDEX events_subject_time (tenant_id=? AND subject_id=? AND occurred_at>? AND occurred_at<?)",
            ),
        ] {
            let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!(
                "explain query plan {sql}"
            )))
            .bind("t")
            .bind(r#"["s"]"#)
            .bind(0)
            .bind(1)
            .bind(false);
            for _ in 0..6 {
                q = q.bind("");
            }
            if sql.contains("$12") {
                q = q.bind(0).bind("").bind(100);
            }
            let plan = q.fetch_all(&mut conn).await.unwrap_or_else(|e| unreachable!("{e}"));
            let steps: Vec<&str> = plan.iter().map(|r| r.3.as_str()).collect();
            assert!(steps.contains(&expected), "{sql}\n{steps:?}");
        }
    }

    /// One pass over the cube rows gives what one query per list gave: humans
    /// are the clicks of `bot = human`, lists run from most clicks down, ties
    /// by value, cut at the limit, and the unknown value is `null`.
    #[test]
    fn cube_rows_make_the_series_and_every_top_list() {
        let row = |h: i64, country: &str, referrer: &str, bot: &str, n: i64| -> CubeRow {
            let t = Timestamp::from_unix(NOW + h * 3600);
            let s = |v: &str| v.to_string();
            (t, s(country), s("mobile"), s("safari"), s("ios"), s(referrer), s(bot), n)
        };
        let rows = vec![
            row(0, "US", "t.co", "human", 5),
            row(0, "DE", "", "bot", 2),
            row(1, "FR", "t.co", "human", 2),
            row(1, "US", "", "human", 1),
        ];
        let (hours, top) = from_cube(rows, &["country", "referrer", "bot"], 2);
        let hours: Vec<(i64, i64, i64)> = hours.into_iter().map(|(t, c, h)| (t.unix() - NOW, c, h)).collect();
        assert_eq!(hours, vec![(0, 7, 5), (3600, 3, 3)]);
        let list = |d: &str| -> Vec<(Option<String>, i64, i64)> {
            top[d].iter().map(|e| (e.value.clone(), e.clicks, e.humans)).collect()
        };
        assert_eq!(list("country"), vec![(Some("US".into()), 6, 6), (Some("DE".into()), 2, 0)]);
        assert_eq!(list("referrer"), vec![(Some("t.co".into()), 7, 7), (None, 3, 1)]);
        assert_eq!(list("bot"), vec![(Some("human".into()), 8, 8), (Some("bot".into()), 2, 0)]);
        assert!(!top.contains_key("device"));
    }

    #[test]
    fn a_dimension_asked_for_twice_is_listed_in_full() {
        let rows = vec![(
            Timestamp::from_unix(NOW),
            "US".into(),
            "mobile".into(),
            "safari".into(),
            "ios".into(),
            String::new(),
            "human".into(),
            3,
        )];
        let (_, top) = from_cube(rows, &["country", "country"], 10);
        assert_eq!(top["country"].len(), 1);
        assert_eq!(top["country"][0].clicks, 3);
    }

    #[test]
    fn days_follow_the_time_zone() {
        let q = parse(
            &Params {
                from: Some("2025-11-20".into()),
                to: Some("2025-11-22".into()),
                tz: Some("America/New_York".into()),
                interval: Some("day".into()),
                ..Default::default()
            },
            NOW,
            400,
        )
        .unwrap_or_else(|p| unreachable!("{p:?}"));
        // 2025-11-21T03:00Z is still the 20th in New York.
        let s = series(&q, [(1_763_694_000, 2, 1)].into_iter());
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].t.as_str(), s[0].clicks), ("2025-11-20", 2));
    }
}
