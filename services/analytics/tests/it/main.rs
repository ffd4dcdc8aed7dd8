//! Analytics as a user sees it: clicks on short links and scans of QR codes
//! show up in summaries, exports and the live stream, through the gateway, on
//! embedded backends or PostgreSQL + Redis + NATS (from the environment).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use analytics::AnalyticsService;
use futures_util::StreamExt;
use gateway::GatewayService;
use kernel::events::Envelope;
use kernel::{Service, TenantId};
use links::LinksService;
use reqwest::{Method, StatusCode};
use routing::RoutingService;
use serde_json::{Value, json};
use testkit::{TestApp, eventually};

const SECRET: &str = "analytics-test-secret-0123456789abcdef";
const ISSUER: &str = "https://signpost.test";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

async fn spawn() -> TestApp {
    let services: Vec<Arc<dyn Service>> = vec![
        Arc::new(LinksService),
        Arc::new(RoutingService),
        Arc::new(AnalyticsService),
        Arc::new(GatewayService),
    ];
    TestApp::spawn_with(services, &[("JWT_SECRET_KEY", SECRET), ("SIGNPOST_JWT_ISSUER", ISSUER)]).await
}

fn token(tenant: TenantId) -> String {
    testkit::hs256_token(SECRET, ISSUER, tenant, "member")
}

async fn get(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    app.call(Method::GET, path, Some(token), None).await
}

async fn create_link(app: &TestApp, token: &str, body: Value) -> Value {
    let (status, link) = app.call(Method::POST, "/v1/links", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    link
}

async fn visit(app: &TestApp, path: &str, agent: &str, referrer: Option<&str>) {
    let mut req = app.client.get(app.url(path)).header("user-agent", agent);
    if let Some(r) = referrer {
        req = req.header("referer", r);
    }
    let status = req.send().await.unwrap().status();
    assert!(status.is_redirection(), "{path}: {status}");
}

/// Waits until analytics knows the link (its link.created was consumed).
async fn known(app: &TestApp, token: &str, path: &str) {
    eventually(&format!("{path} is known"), || async {
        (get(app, path, token).await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

/// Waits until the summary at `path` counts `clicks`, and returns it.
async fn summary_with(app: &TestApp, token: &str, path: &str, clicks: i64) -> Value {
    eventually(&format!("{path} counts {clicks}"), || async {
        let (status, s) = get(app, path, token).await;
        (status == StatusCode::OK && s["clicks"] == clicks).then_some(s)
    })
    .await
}

async fn text(app: &TestApp, path: &str, token: &str) -> (StatusCode, String, String) {
    let res = app.client.get(app.url(path)).bearer_auth(token).send().await.unwrap();
    let status = res.status();
    let kind = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, kind, res.text().await.unwrap())
}

#[tokio::test]
async fn a_click_shows_up_in_the_live_stream_the_summary_and_every_export() {
    let app = spawn().await;
    let t = token(TenantId::new());
    let link =
        create_link(&app, &t, json!({ "url": "https://example.com/spring", "tags": ["spring"] })).await;
    let (id, slug) = (link["id"].as_str().unwrap(), link["slug"].as_str().unwrap());
    let base = format!("/v1/analytics/links/{id}");
    known(&app, &t, &format!("{base}/summary")).await;

    // The live stream: a `ready` event, then the click within a second of the redirect.
    let res = app.client.get(app.url("/v1/analytics/stream")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: ready") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    visit(&app, &format!("/{slug}"), FIREFOX, Some("https://www.google.com/search?q=spring")).await;
    let redirected = Instant::now();
    seen.clear();
    while !seen.contains("event: link.clicked") {
        let left = Duration::from_secs(1).saturating_sub(redirected.elapsed());
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .unwrap_or_else(|_| panic!("no click on the stream within 1 s: {seen:?}"))
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = seen.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let live: Value = serde_json::from_str(data).unwrap();
    assert_eq!((live["link_id"].as_str(), live["slug"].as_str()), (Some(id), Some(slug)));
    assert_eq!(live["referrer"], "www.google.com");
    assert!(live.get("visitor").is_none(), "the stream carries no visitor id");
    drop(body);

    let s = summary_with(&app, &t, &format!("{base}/summary"), 1).await;
    assert_eq!((s["humans"].as_i64(), s["unique_visitors"].as_u64()), (Some(1), Some(1)));
    assert_eq!(s["scope"]["label"], slug);
    assert_eq!(s["top"]["browser"][0], json!({ "value": "firefox", "clicks": 1, "humans": 1 }));
    assert_eq!(s["top"]["referrer"][0]["value"], "google.com");
    assert_eq!(s["top"]["country"][0]["value"], Value::Null, "no GeoIP database: country unknown");
    assert_eq!(s["series"].as_array().unwrap().iter().map(|p| p["clicks"].as_i64().unwrap()).sum::<i64>(), 1);
    // The workspace and the link's tag count it too.
    summary_with(&app, &t, "/v1/analytics/summary", 1).await;
    summary_with(&app, &t, "/v1/analytics/tags/spring/summary", 1).await;

    let (status, kind, csv) = text(&app, &format!("{base}/events.csv"), &t).await;
    assert_eq!((status, kind.as_str()), (StatusCode::OK, "text/csv; charset=utf-8"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("occurred_at,event_id,kind,subject_id,link_id"));
    assert!(
        lines[1].contains(&format!(",click,{id},{id},,,desktop,firefox,linux,google.com,human,")),
        "{csv}"
    );
    let (_, _, csv) = text(&app, &format!("{base}/summary.csv"), &t).await;
    assert!(csv.contains("total,,1,1,1\r\n"), "{csv}");
    assert!(csv.contains("top:browser,firefox,1,1,"), "{csv}");
    let res = app.client.get(app.url(&format!("{base}/summary.pdf"))).bearer_auth(&t).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/pdf");
    let pdf = res.bytes().await.unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4") && pdf.ends_with(b"%%EOF\n"));
    assert!(String::from_utf8_lossy(&pdf).contains(&format!("(Link /{slug})")));
    app.stop().await;
}

#[tokio::test]
async fn filters_devices_bots_unique_visitors_and_time_zones() {
    let app = spawn().await;
    let t = token(TenantId::new());
    let link = create_link(&app, &t, json!({ "url": "https://example.com/" })).await;
    let (id, slug) = (link["id"].as_str().unwrap().to_string(), link["slug"].as_str().unwrap().to_string());
    let path = format!("/{slug}");
    for _ in 0..3 {
        visit(&app, &path, FIREFOX, None).await;
    }
    visit(&app, &path, IPHONE, Some("https://t.co/x")).await;
    visit(&app, &path, IPHONE, Some("https://t.co/x")).await;
    visit(&app, &path, "curl/8.5.0", None).await;
    let head = app.client.head(app.url(&path)).header("user-agent", IPHONE).send().await.unwrap();
    assert!(head.status().is_redirection());

    let base = format!("/v1/analytics/links/{id}/summary");
    let s = summary_with(&app, &t, &base, 7).await;
    // One visitor per (address, user agent) and day: Firefox, iPhone, curl.
    assert_eq!((s["humans"].as_i64(), s["unique_visitors"].as_u64()), (Some(5), Some(3)));
    let bots: Vec<(String, i64)> = s["top"]["bot"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["value"].as_str().unwrap().to_string(), e["clicks"].as_i64().unwrap()))
        .collect();
    assert_eq!(bots, vec![("human".into(), 5), ("bot".into(), 1), ("head-probe".into(), 1)]);

    let (_, m) = get(&app, &format!("{base}?device=mobile&top=device,referrer"), &t).await;
    assert_eq!(
        (m["clicks"].as_i64(), m["humans"].as_i64(), m["unique_visitors"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(m["top"]["referrer"][0], json!({ "value": "t.co", "clicks": 2, "humans": 2 }));
    assert!(m["top"].get("country").is_none(), "only the tops asked for");
    assert_eq!(m["filters"], json!({ "device": "mobile" }));
    let (_, h) = get(&app, &format!("{base}?bot=human&browser=firefox"), &t).await;
    assert_eq!((h["clicks"].as_i64(), h["unique_visitors"].as_u64()), (Some(3), Some(1)));
    // The workspace (this one link) gives the same answers from its pair rollups (one filter)
    // and from its cube (two filters).
    let (_, w) = get(&app, "/v1/analytics/summary?device=mobile&top=device,referrer,browser", &t).await;
    assert_eq!(
        (w["clicks"].as_i64(), w["humans"].as_i64(), w["unique_visitors"].as_u64()),
        (Some(3), Some(2), Some(1)),
        "{w}"
    );
    assert_eq!(w["top"]["device"], json!([{ "value": "mobile", "clicks": 3, "humans": 2 }]));
    assert_eq!(w["top"]["referrer"][0], json!({ "value": "t.co", "clicks": 2, "humans": 2 }));
    assert_eq!(w["top"]["browser"][0], json!({ "value": "safari", "clicks": 3, "humans": 2 }));
    assert_eq!(w["series"], m["series"]);
    let (_, w) = get(&app, "/v1/analytics/summary?bot=human&browser=firefox", &t).await;
    assert_eq!((w["clicks"].as_i64(), w["unique_visitors"].as_u64()), (Some(3), Some(1)));
    let (_, none) = get(&app, "/v1/analytics/summary?country=ZZ", &t).await;
    assert_eq!((none["clicks"].as_i64(), none["unique_visitors"].as_u64()), (Some(0), Some(0)));
    assert_eq!(none["top"]["country"], json!([]));

    // Day buckets follow the time zone: UTC+14 is already tomorrow for much of the UTC day.
    let (_, z) = get(&app, &format!("{base}?tz=Pacific/Kiritimati&interval=day"), &t).await;
    let local_today = (time::OffsetDateTime::now_utc() + time::Duration::hours(14)).date().to_string();
    let days = z["series"].as_array().unwrap();
    let busy: Vec<&str> =
        days.iter().filter(|d| d["clicks"] != 0).map(|d| d["t"].as_str().unwrap()).collect();
    assert_eq!(busy, vec![local_today.as_str()], "{z}");
    assert_eq!(z["tz"], "Pacific/Kiritimati");
    let (_, hourly) =
        get(&app, &format!("{base}?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&interval=hour"), &t)
            .await;
    assert_eq!(hourly["series"].as_array().unwrap().len(), 24);
    assert_eq!(hourly["clicks"], 0);
    app.stop().await;
}

#[tokio::test]
async fn a_qr_code_counts_its_scans_apart_from_its_links_clicks() {
    let app = spawn().await;
    let t = token(TenantId::new());
    let link = create_link(&app, &t, json!({ "url": "https://example.com/menu" })).await;
    let (status, qr) =
        app.call(Method::POST, "/v1/qr", Some(&t), Some(json!({ "link_id": link["id"] }))).await;
    assert_eq!(status, StatusCode::CREATED, "{qr}");
    let code = qr["code"].as_str().unwrap();
    visit(&app, &format!("/q/{code}"), IPHONE, None).await;
    visit(&app, &format!("/q/{code}"), IPHONE, None).await;
    visit(&app, &format!("/{}", link["slug"].as_str().unwrap()), FIREFOX, None).await;
    let q =
        summary_with(&app, &t, &format!("/v1/analytics/qr/{}/summary", qr["id"].as_str().unwrap()), 2).await;
    assert_eq!(q["scope"]["kind"], "qr");
    assert_eq!(q["top"]["device"][0]["value"], "mobile");
    summary_with(&app, &t, &format!("/v1/analytics/links/{}/summary", link["id"].as_str().unwrap()), 1).await;
    summary_with(&app, &t, "/v1/analytics/summary", 3).await;
    let (_, _, csv) = text(&app, "/v1/analytics/events.csv", &t).await;
    assert_eq!(csv.matches(",scan,").count(), 2, "{csv}");
    app.stop().await;
}

#[tokio::test]
async fn bad_queries_get_problems_and_other_workspaces_see_nothing() {
    let app = spawn().await;
    let (a, b) = (token(TenantId::new()), token(TenantId::new()));
    let link = create_link(&app, &a, json!({ "url": "https://example.com/", "tags": ["mine"] })).await;
    let (status, qr) =
        app.call(Method::POST, "/v1/qr", Some(&a), Some(json!({ "link_id": link["id"] }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = link["id"].as_str().unwrap();
    let base = format!("/v1/analytics/links/{id}/summary");
    known(&app, &a, &base).await;
    known(&app, &a, &format!("/v1/analytics/qr/{}/summary", qr["id"].as_str().unwrap())).await;
    for path in [
        base.clone(),
        format!("/v1/analytics/links/{id}/events.csv"),
        format!("/v1/analytics/qr/{}/summary", qr["id"].as_str().unwrap()),
        "/v1/analytics/tags/mine/summary".to_string(),
    ] {
        let (status, body) = get(&app, &path, &b).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "tenant B reads {path}: {body}");
        assert_eq!(body["status"], 404);
    }
    let (_, theirs) = get(&app, "/v1/analytics/summary", &b).await;
    assert_eq!(theirs["clicks"], 0);
    let cases = [
        (format!("/v1/analytics/links/{}/summary", uuid::Uuid::now_v7()), 404),
        ("/v1/analytics/links/not-a-uuid/summary".to_string(), 404),
        (format!("/v1/analytics/qr/{id}/summary"), 404),
        ("/v1/analytics/tags/nothing/summary".to_string(), 404),
        (format!("{base}?from=2026-02-01&to=2026-01-01"), 422),
        (format!("{base}?from=2020-01-01&to=2026-01-01"), 422),
        (format!("{base}?top=country,shoe"), 422),
        (format!("{base}?tz=Mars/Olympus"), 422),
        (format!("{base}?from=yesterday"), 422),
        (format!("{base}?interval=hour&from=2026-01-01&to=2026-03-01"), 422),
        (format!("{base}?limit=0"), 422),
        (format!("{base}?colour=red"), 400),
    ];
    for (path, want) in cases {
        let (status, body) = get(&app, &path, &a).await;
        assert_eq!(status.as_u16(), want, "{path}: {body}");
        assert_eq!(body["status"], want, "{path}: problem JSON");
    }
    let (status, _) = app.call(Method::GET, &base, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let res = app.client.get(app.url("/v1/analytics/stream")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_click_is_dead_lettered_and_the_pipeline_goes_on() {
    let app = spawn().await;
    let tenant = TenantId::new();
    let t = token(tenant);
    let link = create_link(&app, &t, json!({ "url": "https://example.com/" })).await;
    let summary = format!("/v1/analytics/links/{}/summary", link["id"].as_str().unwrap());
    known(&app, &t, &summary).await;
    // A click event without the fields analytics needs, as a buggy producer would send it.
    let bad = Envelope::new("link.clicked", tenant, "anonymous", json!({ "link_id": "not-a-uuid" }));
    app.db("routing").outbox_reinsert(&bad).await.unwrap();
    visit(&app, &format!("/{}", link["slug"].as_str().unwrap()), FIREFOX, None).await;
    summary_with(&app, &t, &summary, 1).await;
    let analytics = app.db("analytics");
    eventually("the bad event is a dead letter", || async {
        (analytics.kernel_counts().await.unwrap().1 == 1).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn retention_removes_old_raw_events_and_the_rollups_keep_them() {
    let app = spawn().await;
    let tenant = TenantId::new();
    let t = token(tenant);
    let link = create_link(&app, &t, json!({ "url": "https://example.com/" })).await;
    let id = link["id"].as_str().unwrap();
    // A click from 20 months ago (a replayed backlog) and one from now.
    let mut old = Envelope::new(
        "link.clicked",
        tenant,
        "anonymous",
        json!({ "link_id": id, "browser": "firefox", "os": "linux", "device": "desktop", "bot": "human",
                "visitor": "0123456789abcdef0123456789abcdef" }),
    );
    old.occurred_at -= time::Duration::days(610);
    let from = (old.occurred_at - time::Duration::days(1)).date();
    app.db("routing").outbox_reinsert(&old).await.unwrap();
    visit(&app, &format!("/{}", link["slug"].as_str().unwrap()), FIREFOX, None).await;
    let (status, body) = get(&app, &format!("/v1/analytics/links/{id}/summary?from={from}"), &t).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the range is over 400 days: {body}");
    let old_range =
        format!("/v1/analytics/links/{id}/summary?from={from}&to={}", from + time::Duration::days(3));
    summary_with(&app, &t, &old_range, 1).await;
    let csv_path =
        format!("/v1/analytics/links/{id}/events.csv?from={from}&to={}", from + time::Duration::days(3));
    let (_, _, csv) = text(&app, &csv_path, &t).await;
    assert_eq!(csv.lines().count(), 2, "the old raw event is there before retention runs");

    let db = app.db("analytics");
    analytics::maintain(&db, 13).await.unwrap();
    let (_, _, csv) = text(&app, &csv_path, &t).await;
    assert_eq!(csv.lines().count(), 1, "raw events past 13 months are gone: {csv}");
    summary_with(&app, &t, &old_range, 1).await;
    let (_, _, recent) = text(&app, &format!("/v1/analytics/links/{id}/events.csv"), &t).await;
    assert_eq!(recent.lines().count(), 2, "this month's click is kept");

    if let kernel::platform::DbBackend::Postgres(pg) = &app.database {
        let parts = || async {
            let names: Vec<String> = sqlx::query_scalar(
                "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid
                 where i.inhparent = 'analytics.events'::regclass order by 1",
            )
            .fetch_all(pg.owner_pool())
            .await
            .unwrap();
            names
        };
        let now = time::OffsetDateTime::now_utc().date();
        let this_month = format!("events_{:04}_{:02}", now.year(), u8::from(now.month()));
        let before = parts().await;
        assert!(before.contains(&this_month), "{before:?}");
        assert_eq!(before.len(), 5, "default + last month .. two months ahead: {before:?}");
        // Keeping no full month drops last month's partition whole; this month's stays.
        let dropped = analytics::maintain(&db, 0).await.unwrap();
        assert_eq!(dropped, 1);
        let after = parts().await;
        assert!(after.contains(&this_month) && after.len() == 4, "{after:?}");
        let (_, _, recent) = text(&app, &format!("/v1/analytics/links/{id}/events.csv"), &t).await;
        assert_eq!(recent.lines().count(), 2);
    }
    app.stop().await;
}

#[tokio::test]
async fn every_analytics_route_is_in_the_openapi_document() {
    let app = spawn().await;
    let (status, doc) = app.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for scope in
        ["/v1/analytics", "/v1/analytics/links/{id}", "/v1/analytics/qr/{id}", "/v1/analytics/tags/{tag}"]
    {
        for leaf in ["summary", "summary.csv", "summary.pdf", "events.csv"] {
            let path = format!("{scope}/{leaf}");
            assert!(doc["paths"][&path]["get"].is_object(), "{path} is documented");
        }
    }
    assert!(doc["paths"]["/v1/analytics/stream"]["get"].is_object());
    app.stop().await;
}

/// Analytics' database alone, on the engines from the environment, with `migrations` applied.
struct Store {
    engines: testkit::Engines,
    config: kernel::config::Config,
    isolation: testkit::Isolation,
    backend: kernel::platform::DbBackend,
    db: kernel::db::Db,
}

async fn store(migrations: kernel::db::Migrations) -> Store {
    let engines = testkit::Engines::from_env();
    let (env, isolation) = testkit::test_env(&engines, &[]).await;
    let (config, _) =
        kernel::config::Config::load_from(None, &env, &kernel::config::Overrides::default()).unwrap();
    let backend = kernel::platform::DbBackend::connect(&config).await.unwrap();
    backend.migrate(&[migrations]).await.unwrap();
    let db = backend.db("analytics").await.unwrap();
    Store { engines, config, isolation, backend, db }
}

/// Clicks stored before the pair rollups existed are in them after the
/// migration: a workspace filtered by one dimension answers the same from
/// backfilled rows as from rows the consumer wrote, and the same as the cube.
#[tokio::test]
async fn the_filtered_rollups_migration_backfills_clicks_stored_before_it() {
    use analytics::query::{Params, Scope, parse, summary};
    use kernel::db::{Id, Migrations, Timestamp, Tx};
    use kernel::events::Handler;

    let before = Migrations { schema: "analytics", steps: &analytics::MIGRATIONS.steps[..1] };
    let Store { engines, config, isolation, backend, db } = store(before).await;

    let now = time::OffsetDateTime::now_utc();
    let link = uuid::Uuid::now_v7();
    let pick = |list: &[&'static str], i: usize| list[i % list.len()];
    let clicks: Vec<[&str; 7]> = (0..48)
        .map(|i| {
            [
                pick(&["US", "DE", ""], i),
                pick(&["mobile", "desktop"], i),
                pick(&["safari", "firefox", "chrome", "edge"], i),
                pick(&["ios", "linux", "windows"], i / 2),
                pick(&["t.co", "", "google.com"], i / 3),
                pick(&["human", "human", "bot"], i / 4),
                pick(&["1", "2", "3", "4", "5", "6", "7"], i),
            ]
        })
        .collect();
    let when = |i: usize| now - time::Duration::minutes(i as i64 * 25);
    // A visitor id's first 16 hex digits are its hash.
    let visitor = |v: &str| format!("{v:0<32}");

    // Tenant A's clicks, as the consumer wrote them before: raw events, cube and hourly rows.
    let a = TenantId::new();
    let mut tx = db.begin(a).await.unwrap();
    for (i, c) in clicks.iter().enumerate() {
        let at = Timestamp(when(i));
        let hour = Timestamp::from_unix(at.unix() - at.unix().rem_euclid(3600));
        macro_rules! store {
            ($t:expr, $upsert:literal, $hourly:literal) => {{
                let t = $t;
                t.execute(
                    t.query(
                        "insert into analytics.events (tenant_id, occurred_at, event_id, kind, subject_id, \
                         link_id, qr_id, country, device, browser, os, referrer, bot, visitor) \
                         values ($1, $2, $3, 'click', $4, $4, null, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(at)
                    .bind(Id(uuid::Uuid::now_v7()))
                    .bind(Id(link))
                    .bind(c[0])
                    .bind(c[1])
                    .bind(c[2])
                    .bind(c[3])
                    .bind(c[4])
                    .bind(c[5])
                    .bind(visitor(c[6])),
                )
                .await
                .unwrap();
                t.execute(
                    t.query($upsert)
                        .bind(Id(link))
                        .bind(hour)
                        .bind(c[0])
                        .bind(c[1])
                        .bind(c[2])
                        .bind(c[3])
                        .bind(c[4])
                        .bind(c[5]),
                )
                .await
                .unwrap();
                let human = i64::from(c[5] == "human");
                for (dim, value) in std::iter::once(("total", ""))
                    .chain(analytics::ingest::DIMENSIONS.into_iter().zip(&c[..6]).map(|(d, v)| (d, *v)))
                {
                    t.execute(
                        t.query($hourly)
                            .bind(Id(uuid::Uuid::nil()))
                            .bind(dim)
                            .bind(hour)
                            .bind(value)
                            .bind(human),
                    )
                    .await
                    .unwrap();
                }
            }};
        }
        match &mut tx {
            Tx::Postgres(t) => store!(
                t,
                "insert into analytics.cube (tenant_id, subject_id, hour, country, device, browser, os, \
                 referrer, bot, clicks) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1) on conflict \
                 (tenant_id, subject_id, hour, country, device, browser, os, referrer, bot) \
                 do update set clicks = cube.clicks + 1",
                "insert into analytics.hourly (tenant_id, subject_id, dim, hour, value, clicks, humans) \
                 values ($1, $2, $3, $4, $5, 1, $6) on conflict (tenant_id, subject_id, dim, hour, value) \
                 do update set clicks = hourly.clicks + 1, humans = hourly.humans + excluded.humans"
            ),
            Tx::Sqlite(t) => store!(
                t,
                "insert into analytics.cube (tenant_id, subject_id, hour, country, device, browser, os, \
                 referrer, bot, clicks) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1) on conflict \
                 (tenant_id, subject_id, hour, country, device, browser, os, referrer, bot) \
                 do update set clicks = clicks + 1",
                "insert into analytics.hourly (tenant_id, subject_id, dim, hour, value, clicks, humans) \
                 values ($1, $2, $3, $4, $5, 1, $6) on conflict (tenant_id, subject_id, dim, hour, value) \
                 do update set clicks = clicks + 1, humans = humans + excluded.humans"
            ),
        }
    }
    tx.commit().await.unwrap();

    let applied = backend.migrate(&[analytics::MIGRATIONS]).await.unwrap();
    assert_eq!(applied, ["analytics/0002_filtered_rollups", "analytics/0003_events_keyed_by_event"]);
    // Without tenant A's cube rows, only the new rollups can answer its filtered
    // workspace reads.
    let mut tx = db.begin(a).await.unwrap();
    match &mut tx {
        Tx::Postgres(t) => {
            t.execute(t.query("delete from analytics.cube where tenant_id = $1")).await.unwrap()
        }
        Tx::Sqlite(t) => t.execute(t.query("delete from analytics.cube where tenant_id = $1")).await.unwrap(),
    };
    tx.commit().await.unwrap();

    // Tenant B's same clicks, through the consumer after the migration.
    let b = TenantId::new();
    let events: Vec<Envelope> = clicks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut e = Envelope::new(
                "link.clicked",
                b,
                "anonymous",
                json!({
                    "link_id": link, "country": c[0], "device": c[1], "browser": c[2], "os": c[3],
                    "referrer_host": c[4], "bot": c[5], "visitor": visitor(c[6]),
                }),
            );
            e.occurred_at = when(i);
            e
        })
        .collect();
    let mut tx = db.begin(b).await.unwrap();
    analytics::ingest::Ingest { service: "test" }.handle_batch(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();

    let workspace = Scope { kind: "workspace", key: None, label: "workspace".into(), subjects: Vec::new() };
    let one = Scope { kind: "link", key: None, label: "link".into(), subjects: vec![link] };
    let filters: [(&str, usize, &str); 5] = [
        ("country", 0, "US"),
        ("device", 1, "mobile"),
        ("browser", 2, "firefox"),
        ("referrer", 4, "t.co"),
        ("bot", 5, "human"),
    ];
    // The query filtered by `name = value`, and the clicks and distinct visitors it should find.
    let filtered = |name: &str, value: &str| {
        let params = serde_json::from_value::<Params>(json!({ name: value })).unwrap();
        parse(&params, now.unix_timestamp() + 3600, 400).unwrap()
    };
    let expected = |dim: usize, value: &str| {
        let mut visitors: Vec<&str> = clicks.iter().filter(|c| c[dim] == value).map(|c| c[6]).collect();
        let matching = visitors.len();
        visitors.sort_unstable();
        visitors.dedup();
        (matching, visitors.len())
    };
    for (name, dim, value) in filters {
        let q = filtered(name, value);
        let backfilled = summary(&db, a, &workspace, &q).await.unwrap();
        assert_eq!(
            (backfilled.clicks as usize, backfilled.unique_visitors as usize),
            expected(dim, value),
            "{name}={value}"
        );
        let answers = [
            serde_json::to_value(&backfilled).unwrap(),
            serde_json::to_value(summary(&db, b, &workspace, &q).await.unwrap()).unwrap(),
            serde_json::to_value(summary(&db, b, &one, &q).await.unwrap()).unwrap(),
        ];
        for other in &answers[1..] {
            assert_eq!(&answers[0], other, "{name}={value}");
        }
    }

    // The consumer adds the same visitors to tenant A's backfilled hours: they
    // are the same hashes, so nobody counts twice.
    let again: Vec<Envelope> = events
        .iter()
        .take(14)
        .map(|e| {
            let mut copy = Envelope::new("link.clicked", a, "anonymous", e.data.clone());
            copy.occurred_at = e.occurred_at;
            copy
        })
        .collect();
    let mut tx = db.begin(a).await.unwrap();
    analytics::ingest::Ingest { service: "test" }.handle_batch(&mut tx, &again).await.unwrap();
    tx.commit().await.unwrap();
    for (name, dim, value) in [("device", 1, "mobile"), ("os", 3, "linux")] {
        let repeated = clicks.iter().take(14).filter(|c| c[dim] == value).count();
        let (matching, visitors) = expected(dim, value);
        let s = summary(&db, a, &workspace, &filtered(name, value)).await.unwrap();
        assert_eq!(
            (s.clicks as usize, s.unique_visitors as usize),
            (matching + repeated, visitors),
            "{name}={value}"
        );
    }
    testkit::cleanup(&engines, &config, &isolation).await;
}

/// A click event delivered again (a relay that crashed after publishing and
/// before clearing its outbox) is counted once.
#[tokio::test]
async fn a_click_delivered_twice_is_counted_once() {
    let app = spawn().await;
    let tenant = TenantId::new();
    let t = token(tenant);
    let (a, b) = (
        create_link(&app, &t, json!({ "url": "https://example.com/a" })).await,
        create_link(&app, &t, json!({ "url": "https://example.com/b" })).await,
    );
    let path = |link: &Value| format!("/v1/analytics/links/{}/summary", link["id"].as_str().unwrap());
    known(&app, &t, &path(&a)).await;
    known(&app, &t, &path(&b)).await;
    let click = |link: &Value| {
        Envelope::new(
            "link.clicked",
            tenant,
            "anonymous",
            json!({
                "link_id": link["id"], "country": "US", "device": "desktop", "browser": "firefox",
                "os": "linux", "referrer_host": null, "bot": "human", "visitor": "0123456789abcdef0123",
            }),
        )
    };
    let routing = app.db("routing");
    let once = click(&a);
    routing.outbox_reinsert(&once).await.unwrap();
    summary_with(&app, &t, &path(&a), 1).await;
    // The same event again, then a click on the other link behind it: once
    // that one is counted, the repeat has been through the consumer too.
    routing.outbox_reinsert(&once).await.unwrap();
    routing.outbox_reinsert(&click(&b)).await.unwrap();
    summary_with(&app, &t, &path(&b), 1).await;
    let (_, s) = get(&app, &path(&a), &t).await;
    assert_eq!((s["clicks"].as_i64(), s["unique_visitors"].as_i64()), (Some(1), Some(1)), "{s}");
    app.stop().await;
}

/// The consumer itself skips clicks it has stored (it keeps no inbox rows
/// for them): a batch applied twice, with one click twice in it, counts each
/// click once, on either engine.
#[tokio::test]
async fn a_batch_applied_twice_counts_each_click_once() {
    use analytics::query::{Params, Scope, parse, summary};
    use kernel::events::Handler;

    let Store { engines, config, isolation, db, .. } = store(analytics::MIGRATIONS).await;
    let ingest = analytics::ingest::Ingest { service: "test" };
    assert!(ingest.deduplicates());

    let tenant = TenantId::new();
    let link = uuid::Uuid::now_v7();
    let events: Vec<Envelope> = ["US", "DE", "US", "FR"]
        .iter()
        .enumerate()
        .map(|(i, country)| {
            Envelope::new(
                "link.clicked",
                tenant,
                "anonymous",
                json!({
                    "link_id": link, "country": country, "device": "mobile", "browser": "safari",
                    "os": "ios", "referrer_host": null, "bot": "human", "visitor": format!("{i:0<32}"),
                }),
            )
        })
        .collect();
    let mut first = events.clone();
    first.push(events[0].clone());
    for batch in [&first[..], &events[1..3], &events[..]] {
        let mut tx = db.begin(tenant).await.unwrap();
        ingest.handle_batch(&mut tx, batch).await.unwrap();
        tx.commit().await.unwrap();
    }

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let q =
        |filter: Value| parse(&serde_json::from_value::<Params>(filter).unwrap(), now + 3600, 400).unwrap();
    let workspace = Scope { kind: "workspace", key: None, label: "workspace".into(), subjects: Vec::new() };
    let one = Scope { kind: "link", key: None, label: "link".into(), subjects: vec![link] };
    for scope in [&workspace, &one] {
        let s = summary(&db, tenant, scope, &q(json!({}))).await.unwrap();
        assert_eq!((s.clicks, s.unique_visitors), (4, 4), "{}", scope.kind);
        let us = summary(&db, tenant, scope, &q(json!({ "country": "US" }))).await.unwrap();
        assert_eq!((us.clicks, us.unique_visitors), (2, 2), "{}", scope.kind);
    }
    testkit::cleanup(&engines, &config, &isolation).await;
}

/// A batch larger than any one statement's share on either backend, and a
/// redelivery of part of it mixed with new clicks (the path that lists what
/// was new), store each click once and each value where it was sent, and
/// count it once in every rollup.
#[tokio::test]
async fn a_large_batch_and_a_partial_redelivery_store_every_click_once_as_sent() {
    use analytics::query::{Params, Scope, parse, summary};
    use kernel::events::Handler;

    let Store { engines, config, isolation, db, .. } = store(analytics::MIGRATIONS).await;
    let ingest = analytics::ingest::Ingest { service: "test" };
    let tenant = TenantId::new();
    let (link, qr) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let countries = ["US", "DE", "FR", "JP", "BR"];
    // A visitor id's first 16 hex digits are its hash: spread as a hash's are (and the same every run).
    let visitors: Vec<String> = (0..1181u32)
        .map(|i| {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&i, &mut h);
            format!("{:016x}{:016x}", std::hash::Hasher::finish(&h), 0)
        })
        .collect();
    let visitor = |i: usize| visitors[i].clone();
    // 1,174 clicks, then 74 of them again with 7 new.
    let events: Vec<Envelope> = (0..1181)
        .map(|i| {
            let scan = i % 10 == 3;
            Envelope::new(
                if scan { "qr.scanned" } else { "link.clicked" },
                tenant,
                "anonymous",
                json!({
                    "link_id": link, "qr_id": if scan { Some(qr) } else { None },
                    "country": countries[i / 7 % countries.len()], "device": "mobile",
                    "browser": if i % 2 == 0 { "safari" } else { "firefox" }, "os": "ios",
                    "referrer_host": if i % 3 == 0 { Some("t.co") } else { None }, "bot": "human",
                    "visitor": visitor(i),
                }),
            )
        })
        .collect();
    let redelivered: Vec<Envelope> = events[1100..].to_vec();
    for batch in [&events[..1174], &redelivered[..]] {
        let mut tx = db.begin(tenant).await.unwrap();
        ingest.handle_batch(&mut tx, batch).await.unwrap();
        tx.commit().await.unwrap();
    }

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let q = parse(&serde_json::from_value::<Params>(json!({})).unwrap(), now + 3600, 400).unwrap();
    let workspace = Scope { kind: "workspace", key: None, label: "workspace".into(), subjects: Vec::new() };
    let s = summary(&db, tenant, &workspace, &q).await.unwrap();
    // Visitors are counted exactly up to a point, then estimated (about 1.6 % standard error).
    let about = |n: u64, expected: usize| n.abs_diff(expected as u64) * 20 <= expected as u64;
    assert!(s.clicks == 1181 && about(s.unique_visitors, 1181), "{s:?}");
    // The rollups of more rows than one statement takes: per value (pairs) and per combination (cube).
    for (filter, expected) in [
        (json!({ "country": "US" }), (0..1181).filter(|i| i / 7 % 5 == 0).count()),
        (
            json!({ "country": "JP", "browser": "firefox" }),
            (0..1181).filter(|i| i / 7 % 5 == 3 && i % 2 == 1).count(),
        ),
    ] {
        let q = parse(&serde_json::from_value::<Params>(filter.clone()).unwrap(), now + 3600, 400).unwrap();
        let s = summary(&db, tenant, &workspace, &q).await.unwrap();
        assert!(s.clicks == expected as i64 && about(s.unique_visitors, expected), "{filter}: {s:?}");
    }
    // A workspace's top list under one filter comes from the pair rollups.
    let us_only =
        parse(&serde_json::from_value::<Params>(json!({ "country": "US" })).unwrap(), now + 3600, 400)
            .unwrap();
    let s = summary(&db, tenant, &workspace, &us_only).await.unwrap();
    let mut browsers: Vec<(Option<String>, i64)> =
        s.top["browser"].iter().map(|e| (e.value.clone(), e.clicks)).collect();
    browsers.sort();
    let us = |odd: usize| (0..1181).filter(|i| i / 7 % 5 == 0 && i % 2 == odd).count() as i64;
    assert_eq!(browsers, [(Some("firefox".to_string()), us(1)), (Some("safari".to_string()), us(0))]);

    let res = analytics::export::events_csv(db.clone(), tenant, workspace, q);
    let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    let csv = String::from_utf8(body.to_vec()).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 1181, "one raw row per click");
    let mut ids: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1181, "no click stored twice");
    for (i, e) in events.iter().enumerate() {
        let id = e.event_id.to_string();
        let row = rows.iter().find(|r| r[1] == id).unwrap_or_else(|| panic!("click {i} is missing"));
        let scan = i % 10 == 3;
        let expected = [
            if scan { "scan" } else { "click" },
            &(if scan { qr } else { link }).to_string(),
            &link.to_string(),
            &(if scan { qr.to_string() } else { String::new() }),
            countries[i / 7 % countries.len()],
            "mobile",
            if i % 2 == 0 { "safari" } else { "firefox" },
            "ios",
            if i % 3 == 0 { "t.co" } else { "" },
            "human",
            &visitor(i),
        ];
        assert_eq!(row[2..], expected[..], "click {i}");
    }
    testkit::cleanup(&engines, &config, &isolation).await;
}
