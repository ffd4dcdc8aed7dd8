//! The `signpost` command as a user runs it: flags, configuration errors,
//! start-up failures, serving, restarts and shutdown on SIGTERM.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kernel::TenantId;
use kernel::config::{Config, Overrides, SETTINGS};
use kernel::storage::{ObjectKey, Storage, UrlMethod};
use testkit::{Engines, cleanup, test_env};

const BIN: &str = env!("CARGO_BIN_EXE_signpost");

/// Runs the binary with exactly `env` (plus PATH), waiting at most 30 s.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let started = Instant::now();
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("signpost {args:?} hung for 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn help_documents_every_subcommand_flag_and_setting() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["up", "serve", "migrate", "--config"] {
        assert!(help.contains(word), "--help mentions {word}");
    }
    for (env, key, _) in SETTINGS {
        assert!(help.contains(env) && help.contains(key), "--help documents {env} [{key}]");
    }
    for sub in ["up", "serve", "migrate"] {
        let out = run(&[sub, "--help"], &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--data-dir"), "{sub} --help: {text}");
    }
}

#[test]
fn a_bad_setting_exits_2_with_one_line_naming_it() {
    let out = run(&["up"], &[("DATABASE_URL", "foo://x")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "DATABASE_URL: unsupported scheme \"foo\" (expected sqlite or postgres)\n"
    );
    let out = run(&["up"], &[("SIGNPOST_LISTEN", "not-an-address")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("SIGNPOST_LISTEN: "));
    let out = run(&["serve", "no-such-service"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service \"no-such-service\""));
}

#[test]
fn a_proxying_gateway_beside_the_services_is_refused_at_start() {
    // `up` runs every service here; with upstreams its gateway would proxy
    // every path past them.
    let dir = std::env::temp_dir().join(format!("signpost-cli-{}", uuid::Uuid::now_v7().simple()));
    let out = run(
        &["up", "--listen", "127.0.0.1:0", "--data-dir", &dir.display().to_string()],
        &[("SIGNPOST_UPSTREAMS", "links=http://127.0.0.1:9"), ("SIGNPOST_LOG_FORMAT", "json")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("a proxying gateway runs alone"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_unreachable_backend_is_a_one_line_error_not_a_hang() {
    let dir = std::env::temp_dir().join(format!("signpost-cli-{}", uuid::Uuid::now_v7().simple()));
    let data = dir.display().to_string();
    for (var, url, says) in [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/signpost", "cannot connect to PostgreSQL"),
        ("REDIS_URL", "redis://127.0.0.1:1", "Redis at redis://127.0.0.1:1"),
        ("NATS_URL", "nats://127.0.0.1:1", "cannot connect to NATS"),
    ] {
        let started = Instant::now();
        let out = run(
            &["up", "--listen", "127.0.0.1:0", "--data-dir", &data],
            &[(var, url), ("SIGNPOST_LOG_FORMAT", "json")],
        );
        assert_eq!(out.status.code(), Some(1), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: ") && err.contains(says), "{var}: {err}");
        assert!(!err.contains("panicked"));
        assert!(started.elapsed() < Duration::from_secs(20), "{var} failed fast");
    }
    let _ = std::fs::remove_dir_all(dir);
}

struct Running {
    child: Child,
    address: String,
}

impl Drop for Running {
    /// A test that fails half-way still ends the processes it started: a
    /// leaked `signpost serve` would run on past the test run.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(env: &BTreeMap<String, String>) -> Running {
    start_with(&["up", "--listen", "127.0.0.1:0"], env)
}

fn start_with(args: &[&str], env: &BTreeMap<String, String>) -> Running {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("stdout"));
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("signpost listening on ") {
                    break a.to_string();
                }
            }
            other => panic!("signpost up exited before listening: {other:?}"),
        }
    };
    // Keep draining the JSON logs so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Running { child, address }
}

fn sigterm_and_wait(mut r: Running) -> Duration {
    let started = Instant::now();
    let ok = Command::new("kill").args(["-TERM", &r.child.id().to_string()]).status().map(|s| s.success());
    assert_eq!(ok.ok(), Some(true), "kill -TERM");
    loop {
        if let Some(status) = r.child.try_wait().ok().flatten() {
            assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
            return started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = r.child.kill();
            panic!("still running 15 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn storage_for(env: &BTreeMap<String, String>, address: &str) -> Storage {
    let mut env = env.clone();
    env.insert("SIGNPOST_PUBLIC_URL".into(), address.to_string());
    let (config, _) = Config::load_from(None, &env, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    kernel::install_crypto_provider();
    Storage::open(&config.storage, &config.data_dir, config.storage_signing_key.as_ref(), &config.public_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn up_serves_keeps_data_across_a_restart_and_exits_0_on_sigterm() {
    let engines = Engines::from_env();
    let (mut env, isolation) = test_env(&engines, &[("SIGNPOST_LOG_FORMAT", "json")]).await;
    env.insert("SIGNPOST_STORAGE_SIGNING_KEY".into(), "0123456789abcdef0123456789abcdef-cli-test".into());
    let client = testkit::client();

    let first = start(&env);
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let res =
            client.get(format!("{}{path}", first.address)).send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.status(), 200, "{path}");
    }
    let key = ObjectKey::for_tenant(TenantId::new(), "kept.txt").unwrap_or_else(|e| panic!("{e}"));
    let storage = storage_for(&env, &first.address).await;
    let put = storage
        .signed_url(UrlMethod::Put, &key, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let res =
        client.put(put).body("written before the restart").send().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(res.status().is_success(), "upload: {}", res.status());
    let took = sigterm_and_wait(first);
    assert!(took < Duration::from_secs(10), "SIGTERM exit took {took:?}");

    let second = start(&env);
    let storage = storage_for(&env, &second.address).await;
    let get = storage
        .signed_url(UrlMethod::Get, &key, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let res = client.get(get).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.ok(), Some(Bytes::from_static(b"written before the restart")));
    sigterm_and_wait(second);

    let (config, _) = Config::load_from(None, &env, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    cleanup(&engines, &config, &isolation).await;
}

#[tokio::test]
async fn migrate_reports_and_is_idempotent() {
    let engines = Engines::from_env();
    let (env, isolation) = test_env(&engines, &[]).await;
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for _ in 0..2 {
        let out = run(&["migrate"], &pairs);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("migrate: "));
    }
    let (config, _) = Config::load_from(None, &env, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    cleanup(&engines, &config, &isolation).await;
}

#[tokio::test]
async fn two_gateway_processes_front_a_service_and_share_one_limit() {
    use kernel::auth::{AUDIENCE, Claims, SigningKey};
    let upstream = testkit::TestApp::spawn().await;
    let secret = "cli-gateway-secret-0123456789abcdef";
    let issuer = "https://signpost.test";
    let engines = Engines::from_env();
    let redis_prefix = format!("test:{}:", uuid::Uuid::now_v7().simple());
    let mut gateways = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = std::env::temp_dir().join(format!("signpost-gw-{}", uuid::Uuid::now_v7().simple()));
        let mut env: BTreeMap<String, String> = [
            ("SIGNPOST_DATA_DIR", dir.display().to_string()),
            ("SIGNPOST_LOG_FORMAT", "json".into()),
            ("JWT_SECRET_KEY", secret.into()),
            ("SIGNPOST_JWT_ISSUER", issuer.into()),
            ("SIGNPOST_UPSTREAMS", format!("fixture={}", upstream.address)),
            ("SIGNPOST_ROUTES", "/v1/fixture=fixture".into()),
            ("SIGNPOST_RATE_LIMIT_TENANT", "20/60s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(r) = &engines.redis_url {
            env.insert("REDIS_URL".into(), r.clone());
            env.insert("SIGNPOST_REDIS_PREFIX".into(), redis_prefix.clone());
        }
        gateways.push(start_with(&["serve", "gateway", "--listen", "127.0.0.1:0"], &env));
        dirs.push(dir);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        iss: issuer.into(),
        aud: AUDIENCE.into(),
        sub: uuid::Uuid::now_v7(),
        tid: TenantId::new(),
        role: "member".into(),
        sid: uuid::Uuid::now_v7(),
        scope: String::new(),
        exp: now + 600,
        iat: now,
        nbf: None,
        jti: uuid::Uuid::now_v7(),
    };
    let token = SigningKey::Hs256(kernel::Secret::new(secret.as_bytes().to_vec())).sign(&claims);
    let client = testkit::client();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let req = client.get(format!("{}/v1/fixture/whoami", gateways[i % 2].address)).bearer_auth(&token);
        tasks.push(tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    if engines.redis_url.is_some() {
        assert_eq!(ok, 20, "two processes sharing Redis enforce one limit");
    } else {
        assert_eq!(ok, 40, "without Redis each process limits on its own");
    }
    let other = TenantId::new();
    let fresh = SigningKey::Hs256(kernel::Secret::new(secret.as_bytes().to_vec())).sign(&Claims {
        tid: other,
        jti: uuid::Uuid::now_v7(),
        ..claims
    });
    let url = format!("{}/v1/fixture/whoami", gateways[1].address);
    let who: serde_json::Value =
        client.get(url).bearer_auth(&fresh).send().await.unwrap().json().await.unwrap_or_default();
    assert_eq!(
        who["x_tenant_id"],
        other.to_string(),
        "the service in another process got the verified tenant"
    );
    for g in gateways {
        sigterm_and_wait(g);
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    upstream.stop().await;
}

#[tokio::test]
async fn every_services_tenant_tables_force_row_level_security_on_postgres() {
    let app = testkit::TestApp::spawn_with(signpost::services(), &[]).await;
    let kernel::platform::DbBackend::Postgres(pg) = &app.database else {
        eprintln!("skipped: needs SIGNPOST_TEST_DATABASE_URL (PostgreSQL)");
        return app.stop().await;
    };
    let (tables, problems) = testkit::rls_catalog(pg).await;
    for expected in
        ["links.links", "links.slugs", "routing.routes", "routing.click_counts", "identity.outbox"]
    {
        assert!(tables.iter().any(|t| t == expected), "{expected} is a tenant table: {tables:?}");
    }
    assert_eq!(problems, Vec::<String>::new());
    app.stop().await;
}

/// Records in routing's journal files on disk, read straight from the files:
/// `[u32 length][u32 CRC-32]` then the payload, little-endian.
fn journaled_clicks(config: &Config) -> usize {
    let mut n = 0;
    let root = config.data_dir.join("journal").join("routing");
    for slot in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())).flatten() {
        for f in std::fs::read_dir(slot.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_none_or(|e| e != "journal") {
                continue;
            }
            let bytes = std::fs::read(f.path()).unwrap_or_default();
            let mut at = 0;
            while at + 8 <= bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
                let Some(payload) = bytes.get(at + 8..at + 8 + len) else { break };
                assert_eq!(crc32fast::hash(payload), crc, "record at {at} of {}", f.path().display());
                let event: serde_json::Value = serde_json::from_slice(payload).unwrap();
                assert_eq!(event["event_type"], "link.clicked");
                n += 1;
                at += 8 + len;
            }
        }
    }
    n
}

#[tokio::test]
async fn every_answered_redirect_survives_kill_9_and_is_counted_once() {
    let engines = Engines::from_env();
    let secret = "kill-nine-secret-0123456789abcdef";
    let issuer = "https://signpost.kill9.test";
    let (env, isolation) = test_env(
        &engines,
        &[("SIGNPOST_LOG_FORMAT", "json"), ("JWT_SECRET_KEY", secret), ("SIGNPOST_JWT_ISSUER", issuer)],
    )
    .await;
    let client = testkit::client();
    let token = testkit::hs256_token(secret, issuer, TenantId::new(), "member");

    let first = start(&env);
    let res = client
        .post(format!("{}/v1/links", first.address))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "url": "https://example.com/kill9", "slug": "survivor" }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 201);
    let link: serde_json::Value = res.json().await.unwrap_or_default();
    let link_id = link["id"].as_str().unwrap_or_default().to_string();
    // 300 redirects from 20 clients at once; kill -9 the moment the last is answered.
    let url = format!("{}/survivor", first.address);
    let answered: usize = futures_util::future::join_all((0..20).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut ok = 0;
            for _ in 0..15 {
                let res = client
                    .get(&url)
                    .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0")
                    .send()
                    .await;
                if res.is_ok_and(|r| r.status() == 302) {
                    ok += 1;
                }
            }
            ok
        }
    }))
    .await
    .into_iter()
    .sum();
    let mut first = first;
    first.child.kill().unwrap_or_else(|e| panic!("kill -9: {e}"));
    let _ = first.child.wait();
    assert_eq!(answered, 300, "every redirect was answered before the kill");

    let (config, _) = Config::load_from(None, &env, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(journaled_clicks(&config), 300, "every answered click was on disk before its answer");
    // After the restart the journal is published again from its checkpoint;
    // analytics' inbox drops what it had already counted.
    let second = start(&env);
    let summary = format!("{}/v1/analytics/links/{link_id}/summary", second.address);
    // Analytics hears of the link itself (link.created) through the outbox and
    // the bus: until then the link is unknown to it (404), which counts as not yet.
    let clicks = || async {
        let res = client.get(&summary).bearer_auth(&token).send().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(res.status().as_u16(), 200 | 404), "summary: {}", res.status());
        res.json::<serde_json::Value>().await.unwrap_or_default()["clicks"].as_i64().unwrap_or(-1)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut counted = -1;
    while Instant::now() < deadline {
        counted = clicks().await;
        if counted >= 300 {
            break;
        }
        // Slowly: the workspace's API rate limit is 100 requests a minute.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(counted, 300, "analytics counts every answered click after the restart");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(clicks().await, 300, "and none of them twice");
    sigterm_and_wait(second);
    cleanup(&engines, &config, &isolation).await;
}

/// Clicks analytics has counted for a workspace, and raw events it holds,
/// read straight from PostgreSQL (the test's own superuser connection).
async fn analytics_counts(pool: &sqlx::PgPool, tenant: TenantId) -> (i64, i64, i64) {
    sqlx::query_as(
        "select (select coalesce(sum(clicks), 0)::bigint from analytics.hourly
                  where tenant_id = $1 and subject_id = '00000000-0000-0000-0000-000000000000' and dim = 'total'),
                (select count(*) from analytics.events where tenant_id = $1),
                (select count(distinct event_id) from analytics.events where tenant_id = $1)",
    )
    .bind(tenant.as_uuid())
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0, 0))
}

#[tokio::test]
async fn two_analytics_consumers_share_the_stream_and_survive_a_kill_9_mid_batch() {
    let engines = Engines::from_env();
    let (Some(_), Some(nats_url)) = (&engines.database_url, &engines.nats_url) else {
        eprintln!("skipped: needs SIGNPOST_TEST_DATABASE_URL and SIGNPOST_TEST_NATS_URL");
        return;
    };
    let (env, isolation) = test_env(&engines, &[("SIGNPOST_LOG", "warn")]).await;
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = run(&["migrate"], &pairs);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut first = start_with(&["serve", "analytics", "--listen", "127.0.0.1:0"], &env);
    let second = start_with(&["serve", "analytics", "--listen", "127.0.0.1:0"], &env);

    let stream = env.get("SIGNPOST_NATS_STREAM").cloned().unwrap_or_default();
    let bus = kernel::events::NatsBus::connect(&kernel::Secret::new(nats_url.clone()), &stream)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = sqlx::PgPool::connect(&env["DATABASE_URL"]).await.unwrap_or_else(|e| panic!("{e}"));
    let tenant = TenantId::new();
    let link = uuid::Uuid::now_v7();
    const N: usize = 4000;
    let click = |i: usize| {
        kernel::events::Envelope::new(
            "link.clicked",
            tenant,
            "anonymous",
            serde_json::json!({ "link_id": link, "browser": "firefox", "os": "linux", "device": "desktop",
                                "bot": "human", "visitor": format!("{i:032x}") }),
        )
    };
    let events: Vec<_> = (0..N).map(click).collect();
    for chunk in events.chunks(500) {
        use kernel::events::Bus;
        bus.publish(chunk).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // Kill one instance while it is in the middle of the work.
    let started = Instant::now();
    loop {
        let (counted, _, _) = analytics_counts(&pool, tenant).await;
        if counted >= (N / 10) as i64 {
            assert!(counted < N as i64, "both instances finished before the kill; raise N");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "nothing consumed in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = first.child.wait();
    // The survivor takes over what the dead one held (after the ack wait), and
    // the raw events' key keeps what the dead one had committed from counting twice.
    let deadline = Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let c = analytics_counts(&pool, tenant).await;
        if c.0 >= N as i64 || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = analytics_counts(&pool, tenant).await;
    assert_eq!(counts, (N as i64, N as i64, N as i64), "every click counted once");
    assert_eq!(settled, counts, "and nothing more arrives later");
    // Clicks keep no inbox rows: the consumer deduplicates on its own key.
    let inbox: i64 =
        sqlx::query_scalar("select count(*) from analytics.inbox").fetch_one(&pool).await.unwrap_or(-1);
    assert_eq!(inbox, 0);
    pool.close().await;
    sigterm_and_wait(second);
    let _ = bus.delete_stream().await;
    let (config, _) = Config::load_from(None, &env, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    cleanup(&engines, &config, &isolation).await;
}

#[tokio::test]
async fn gateway_links_routing_and_analytics_in_their_own_processes_redirect_at_once_and_stream_the_click() {
    let engines = Engines::from_env();
    if engines.database_url.is_none() || engines.nats_url.is_none() {
        eprintln!("skipped: needs SIGNPOST_TEST_DATABASE_URL and SIGNPOST_TEST_NATS_URL");
        return;
    }
    const SECRET: &str = "cli-routing-secret-0123456789abcdef";
    const INTERNAL: &str = "cli-internal-token-0123456789abcdef";
    let issuer = "https://signpost.test";
    let (mut env, isolation) = test_env(
        &engines,
        &[
            ("SIGNPOST_LOG", "warn"),
            ("JWT_SECRET_KEY", SECRET),
            ("SIGNPOST_JWT_ISSUER", issuer),
            ("SIGNPOST_INTERNAL_TOKEN", INTERNAL),
        ],
    )
    .await;
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = run(&["migrate"], &pairs);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let links = start_with(&["serve", "links", "--listen", "127.0.0.1:0"], &env);
    // Routing reads a stream links never writes to: it can only learn of a
    // link by asking links over HTTP.
    let mut routing_env = env.clone();
    routing_env.insert("SIGNPOST_NATS_STREAM".into(), format!("R{}", uuid::Uuid::now_v7().simple()));
    routing_env.insert("SIGNPOST_UPSTREAMS".into(), format!("links={}", links.address));
    let routing = start_with(&["serve", "routing", "--listen", "127.0.0.1:0"], &routing_env);
    // Analytics counts and streams the clicks routing publishes.
    let mut analytics_env = env.clone();
    analytics_env.insert("SIGNPOST_NATS_STREAM".into(), routing_env["SIGNPOST_NATS_STREAM"].clone());
    let analytics = start_with(&["serve", "analytics", "--listen", "127.0.0.1:0"], &analytics_env);
    let mut gateway_env = env.clone();
    gateway_env.insert(
        "SIGNPOST_UPSTREAMS".into(),
        format!("links={};routing={};analytics={}", links.address, routing.address, analytics.address),
    );
    let front = start_with(&["serve", "gateway", "--listen", "127.0.0.1:0"], &gateway_env);

    let token = testkit::hs256_token(SECRET, issuer, TenantId::new(), "member");
    let client = testkit::client();
    let post = |path: &str, body: serde_json::Value| {
        let req = client.post(format!("{}{path}", front.address)).bearer_auth(&token).json(&body);
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let visit = |path: String| {
        let req = client.get(format!("{}{path}", front.address)).header("accept", "text/html");
        async move {
            let res = req.send().await.unwrap();
            let location = res.headers().get("location").map(|v| v.to_str().unwrap().to_string());
            (res.status().as_u16(), location)
        }
    };
    // The service checks its callers itself: nothing passes without a token.
    let direct = client.get(format!("{}/v1/links", links.address)).send().await.unwrap();
    assert_eq!(direct.status(), reqwest::StatusCode::UNAUTHORIZED);
    let direct = client.get(format!("{}/v1/links", links.address)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(direct.status(), reqwest::StatusCode::OK, "a valid token is verified by links itself");
    // An API key needs identity, which this links process was not given: it
    // says it cannot check the key rather than calling it invalid.
    let keyed = client
        .get(format!("{}/v1/links", links.address))
        .bearer_auth("sp_not_checkable")
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);

    for i in 0..3 {
        let (status, link) =
            post("/v1/links", serde_json::json!({ "url": format!("https://example.com/far/{i}") })).await;
        assert_eq!(status, 201, "{link}");
        let slug = link["slug"].as_str().unwrap();
        let expected = format!("https://example.com/far/{i}");
        assert_eq!(visit(format!("/{slug}")).await, (302, Some(expected)), "at once");
    }
    let (_, link) = post("/v1/links", serde_json::json!({ "url": "https://example.com/printed" })).await;
    let (status, qr) = post("/v1/qr", serde_json::json!({ "link_id": link["id"] })).await;
    assert_eq!(status, 201, "{qr}");
    let code = qr["code"].as_str().unwrap();
    assert_eq!(visit(format!("/q/{code}")).await, (302, Some("https://example.com/printed".to_string())));
    assert_eq!(visit("/no-such-link".into()).await.0, 404);

    // The live stream passes through the proxy unbuffered: a click made through
    // the front door shows up on it, from another process.
    let res = client
        .get(format!("{}/v1/analytics/stream", front.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: ready") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut body))
            .await
            .unwrap_or_else(|_| panic!("no ready event through the proxy: {seen:?}"))
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let slug = link["slug"].as_str().unwrap();
    assert_eq!(visit(format!("/{slug}")).await.0, 302);
    let clicked = Instant::now();
    seen.clear();
    // Clicks made before the stream opened may still come first (the journal
    // gathers its batches): wait for this one.
    let this_click = format!("\"slug\":\"{slug}\"");
    while !seen.contains(&this_click) {
        let left = Duration::from_secs(2).saturating_sub(clicked.elapsed());
        let chunk = tokio::time::timeout(left, futures_util::StreamExt::next(&mut body))
            .await
            .unwrap_or_else(|_| panic!("no click on the stream within 2 s: {seen:?}"))
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: link.clicked"), "{seen}");
    drop(body);

    // The front door never forwards /internal, token or not.
    let inside = client
        .get(format!("{}/internal/routes/{}", front.address, link["slug"].as_str().unwrap()))
        .header(kernel::auth::INTERNAL_TOKEN_HEADER, INTERNAL)
        .send()
        .await
        .unwrap();
    assert_eq!(inside.status(), reqwest::StatusCode::NOT_FOUND);

    // A routing instance with the wrong token is told nothing.
    let mut wrong = routing_env.clone();
    wrong.insert("SIGNPOST_INTERNAL_TOKEN".into(), format!("{INTERNAL}-not"));
    let stranger = start_with(&["serve", "routing", "--listen", "127.0.0.1:0"], &wrong);
    // A link nobody has visited yet (so no instance has cached its route).
    let (_, unseen) = post("/v1/links", serde_json::json!({ "url": "https://example.com/unseen" })).await;
    let res = client
        .get(format!("{}/{}", stranger.address, unseen["slug"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::NOT_FOUND);

    for p in [stranger, front, analytics, routing, links] {
        sigterm_and_wait(p);
    }
    env.remove("SIGNPOST_UPSTREAMS");
    let (config, _) = Config::load_from(None, &env, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    cleanup(&engines, &config, &isolation).await;
}

#[tokio::test]
async fn up_keeps_serving_when_its_stdout_reader_goes_away() {
    let engines = Engines::from_env();
    let (env, isolation) = test_env(&engines, &[("SIGNPOST_LOG_FORMAT", "json")]).await;
    // A free port, so that the address need not be read from stdout.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(BIN)
        .args(["up", "--listen", &address.to_string()])
        .envs(&env)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    // As `signpost up | head -0` would: the reader is gone before the first line.
    drop(child.stdout.take());
    let client = testkit::client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut healthy = false;
    while Instant::now() < deadline && !healthy {
        assert!(child.try_wait().ok().flatten().is_none(), "signpost up died with its stdout reader");
        healthy =
            client.get(format!("http://{address}/healthz")).send().await.is_ok_and(|r| r.status() == 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "serving with nobody reading its stdout");
    sigterm_and_wait(Running { child, address: address.to_string() });
    let (config, _) = Config::load_from(None, &env, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    cleanup(&engines, &config, &isolation).await;
}
