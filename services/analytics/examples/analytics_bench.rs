//! Loads synthetic clicks into analytics through its real consumer code and
//! times summaries (see bench/analytics/run.sh). Configuration comes from the
//! environment like `signpost up`: SIGNPOST_DATA_DIR for SQLite, DATABASE_URL
//! for PostgreSQL.
//!
//! Arguments: CLICKS BATCH [LINKS] [DAYS]. `BENCH_TENANT=<id>` (printed by
//! every run) with CLICKS 0 times the workspace reads of an earlier load again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use analytics::ingest::Ingest;
use analytics::query::{Params, Scope, parse, summary};
use kernel::TenantId;
use kernel::config::{Config, Overrides};
use kernel::events::{Envelope, Handler};
use kernel::platform::DbBackend;
use serde_json::json;

const COUNTRIES: [&str; 12] = ["US", "DE", "GB", "FR", "IN", "BR", "JP", "CA", "NL", "ES", "IT", "PL"];
const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];
const BROWSERS: [&str; 6] = ["chrome", "safari", "firefox", "edge", "samsung", "other"];
const OSES: [&str; 6] = ["windows", "ios", "android", "macos", "linux", "other"];
const REFERRERS: [&str; 8] = [
    "",
    "google.com",
    "t.co",
    "facebook.com",
    "linkedin.com",
    "instagram.com",
    "bing.com",
    "news.ycombinator.com",
];
const BOTS: [&str; 4] = ["human", "human", "bot", "link-preview"];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Skewed pick: low indexes are more likely (roughly Zipf-like).
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        let a = (self.next() % from.len() as u64) as usize;
        let b = (self.next() % from.len() as u64) as usize;
        from[a.min(b)]
    }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms ({} runs)",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 95 / 100]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (clicks, batch, links, days) =
        (arg(1, 10_000_000), arg(2, 2000) as usize, arg(3, 1000), arg(4, 30) as i64);
    let env: BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("SIGNPOST_") || k == "DATABASE_URL").collect();
    let (config, _) = Config::load_from(None, &env, &Overrides::default()).unwrap();
    let backend = DbBackend::connect(&config).await.unwrap();
    backend.migrate(&[analytics::MIGRATIONS]).await.unwrap();
    let db = backend.db("analytics").await.unwrap();
    analytics::maintain(&db, 13).await.unwrap();
    let tenant = match std::env::var("BENCH_TENANT") {
        Ok(t) => TenantId::from_uuid(t.parse().unwrap()),
        Err(_) => TenantId::new(),
    };
    println!("tenant: {}", tenant.as_uuid());
    let link_ids: Vec<uuid::Uuid> = (0..links).map(|_| uuid::Uuid::now_v7()).collect();
    let now = time::OffsetDateTime::now_utc();
    let start = now - time::Duration::days(days);
    let span = (days * 86_400) as f64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let ingest = Ingest { service: "bench" };
    let began = Instant::now();
    let mut done = 0u64;
    while done < clicks {
        let n = batch.min((clicks - done) as usize);
        let events: Vec<Envelope> = (0..n)
            .map(|i| {
                let k = done + i as u64;
                let mut e = Envelope::new("link.clicked", tenant, "anonymous", json!({
                    "link_id": link_ids[(rng.next() % links) as usize],
                    "browser": rng.pick(&BROWSERS), "os": rng.pick(&OSES), "device": rng.pick(&DEVICES),
                    "bot": rng.pick(&BOTS), "country": rng.pick(&COUNTRIES), "referrer_host": rng.pick(&REFERRERS),
                    // A third of clicks come back from a small pool of returning visitors.
                    "visitor": if rng.next().is_multiple_of(3) { format!("{:032x}", rng.next() % 5000) } else { format!("{:016x}{:016x}", rng.next(), rng.next()) },
                }));
                e.occurred_at = start + time::Duration::seconds_f64(span * k as f64 / clicks as f64);
                e
            })
            .collect();
        let mut tx = db.begin(tenant).await.unwrap();
        ingest.handle_batch(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
        done += n as u64;
        if done % 1_000_000 < batch as u64 {
            eprintln!("{done} clicks, {:.0}/s", done as f64 / began.elapsed().as_secs_f64());
        }
    }
    let took = began.elapsed();
    println!("backend: {}", backend.kind());
    println!(
        "ingest: {clicks} clicks in batches of {batch}: {:.1} s, {:.0} clicks/s",
        took.as_secs_f64(),
        clicks as f64 / took.as_secs_f64()
    );

    let q = parse(&Params::default(), now.unix_timestamp(), 400).unwrap();
    let workspace = Scope { kind: "workspace", key: None, label: "workspace".into(), subjects: Vec::new() };
    let one = Scope { kind: "link", key: None, label: "bench".into(), subjects: vec![link_ids[0]] };
    let filtered =
        parse(&Params { country: Some("US".into()), ..Default::default() }, now.unix_timestamp(), 400)
            .unwrap();
    for (name, scope, q) in [
        ("workspace, 30 days", &workspace, &q),
        ("one link, 30 days", &one, &q),
        ("one link, 30 days, country=US", &one, &filtered),
        ("workspace, 30 days, country=US (pair rollups)", &workspace, &filtered),
    ] {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..21 {
            let t = Instant::now();
            last = Some(summary(&db, tenant, scope, q).await.unwrap());
            times.push(t.elapsed());
        }
        let s = last.unwrap();
        println!(
            "summary {name}: {} — clicks {}, humans {}, unique {} ({})",
            stats(times),
            s.clicks,
            s.humans,
            s.unique_visitors,
            s.unique_visitors_method
        );
    }
    // Two filters: the workspace's cube, which grows with clicks (a few runs only).
    let two = parse(
        &Params { country: Some("US".into()), device: Some("mobile".into()), ..Default::default() },
        now.unix_timestamp(),
        400,
    )
    .unwrap();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        summary(&db, tenant, &workspace, &two).await.unwrap();
        times.push(t.elapsed());
    }
    println!("summary workspace, 30 days, country=US&device=mobile (the cube): {}", stats(times));
}
