//! The gateway in front of in-process services, on embedded backends or Redis.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gateway::GatewayService;
use kernel::TenantId;
use kernel::auth::{Claims, SigningKey};
use kernel::secret::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::TestApp;
use testkit::fixture::Fixture;
use uuid::Uuid;

mod proxy;

pub(crate) const SECRET: &str = "gateway-test-secret-0123456789abcdef";
pub(crate) const ISSUER: &str = "https://signpost.test";

async fn spawn(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("JWT_SECRET_KEY", SECRET), ("SIGNPOST_JWT_ISSUER", ISSUER)];
    env.extend_from_slice(extra);
    TestApp::spawn_with(vec![Arc::new(GatewayService), Arc::new(Fixture)], &env).await
}

pub(crate) fn claims(_app: &TestApp, tenant: TenantId) -> Claims {
    testkit::claims(ISSUER, tenant, "admin")
}

pub(crate) fn token(c: &Claims) -> String {
    SigningKey::Hs256(Secret::new(SECRET.as_bytes().to_vec())).sign(c)
}

pub(crate) async fn get(
    app: &TestApp,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

pub(crate) async fn assert_problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    res.json().await.unwrap()
}

#[tokio::test]
async fn authenticated_routes_need_a_token_and_public_ones_do_not() {
    let app = spawn(&[]).await;
    let res = get(&app, "/v1/fixture/notes", None, &[]).await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_problem(res, 401).await;
    assert_eq!(get(&app, "/healthz", None, &[]).await.status(), 200);
    assert_problem(get(&app, "/v1/no-such-service", None, &[]).await, 404).await;
    app.stop().await;
}

#[tokio::test]
async fn a_valid_token_reaches_the_service_with_verified_identity_only() {
    let app = spawn(&[]).await;
    let tenant = TenantId::new();
    let c = claims(&app, tenant);
    let forged = [("x-user-id", "00000000-0000-0000-0000-000000000000"), ("x-user-role", "owner")];
    let res = get(&app, "/v1/fixture/whoami", Some(&token(&c)), &forged).await;
    assert_eq!(res.status(), 200);
    let who: Value = res.json().await.unwrap();
    assert_eq!(who["x_tenant_id"], tenant.to_string());
    assert_eq!(who["x_user_id"], c.sub.to_string(), "client-sent X-User-ID was replaced");
    assert_eq!(who["x_user_role"], "admin", "client-sent X-User-Role was replaced");
    assert_eq!(who["caller_tenant"], tenant.to_string(), "the service sees the verified caller");
    // The service stores under the token's tenant.
    let res = app
        .client
        .post(app.url("/v1/fixture/notes"))
        .bearer_auth(token(&c))
        .json(&json!({"body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let list: Value = get(&app, "/v1/fixture/notes", Some(&token(&c)), &[]).await.json().await.unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

#[tokio::test]
async fn a_client_tenant_header_that_disagrees_with_the_token_is_403() {
    let app = spawn(&[]).await;
    let tenant = TenantId::new();
    let t = token(&claims(&app, tenant));
    let other = TenantId::new().to_string();
    assert_problem(get(&app, "/v1/fixture/whoami", Some(&t), &[("x-tenant-id", &other)]).await, 403).await;
    let same = tenant.to_string();
    assert_eq!(get(&app, "/v1/fixture/whoami", Some(&t), &[("x-tenant-id", &same)]).await.status(), 200);
    // Without a token, a client-sent tenant never reaches the service.
    let who: Value =
        get(&app, "/v1/fixture/notes", None, &[("x-tenant-id", &same)]).await.json().await.unwrap();
    assert_eq!(who["status"], 401);
    app.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_401_problems_never_5xx() {
    let app = spawn(&[]).await;
    let tenant = TenantId::new();
    let mut expired = claims(&app, tenant);
    expired.iat -= 3600;
    expired.exp -= 3600;
    let mut wrong_iss = claims(&app, tenant);
    wrong_iss.iss = "https://evil.example".into();
    let none = {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(r#"{"alg":"none","typ":"at+jwt"}"#),
            e.encode(serde_json::to_vec(&claims(&app, tenant)).unwrap())
        )
    };
    let huge = "a".repeat(10_000);
    for bad in [token(&expired), token(&wrong_iss), none, "not.a.token".into(), "garbage".into(), huge] {
        let res = get(&app, "/v1/fixture/whoami", Some(&bad), &[]).await;
        assert_problem(res, 401).await;
    }
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "token abc"] {
        let res = app
            .client
            .get(app.url("/v1/fixture/whoami"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_problem(res, 401).await;
    }
    let good = token(&claims(&app, tenant));
    let res = get(&app, &format!("/v1/fixture/whoami?access_token={good}"), None, &[]).await;
    assert_problem(res, 401).await;
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_session_is_refused_at_once() {
    let app = spawn(&[]).await;
    let c = claims(&app, TenantId::new());
    let t = token(&c);
    assert_eq!(get(&app, "/v1/fixture/whoami", Some(&t), &[]).await.status(), 200);
    let ttl = std::time::Duration::from_secs(kernel::auth::REVOCATION_TTL_SECONDS);
    app.kernel.cache.set(&kernel::auth::revoked_session_key(c.sid), b"1", ttl).await.unwrap();
    let body = assert_problem(get(&app, "/v1/fixture/whoami", Some(&t), &[]).await, 401).await;
    assert!(body["detail"].as_str().unwrap_or("").contains("revoked"));
    app.stop().await;
}

#[tokio::test]
async fn ed25519_keys_come_from_the_jwks_and_unknown_kids_refresh_at_most_once() {
    // A stand-in for identity's JWKS endpoint, counting how often it is asked.
    let published = SigningKey::ed25519_from_seed(&[1u8; 32]).unwrap();
    let jwks = published.key_set().jwks();
    let hits = Arc::new(AtomicU64::new(0));
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get({
            let hits = hits.clone();
            move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let doc = jwks.clone();
                async move { axum::Json(doc) }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let app = TestApp::spawn_with(
        vec![Arc::new(GatewayService), Arc::new(Fixture)],
        &[("SIGNPOST_JWKS_URL", &url), ("SIGNPOST_JWT_ISSUER", ISSUER)],
    )
    .await;
    let c = claims(&app, TenantId::new());
    assert_eq!(get(&app, "/v1/fixture/whoami", Some(&published.sign(&c)), &[]).await.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the key set was fetched for the first token");
    let stranger = SigningKey::ed25519_from_seed(&[2u8; 32]).unwrap();
    for _ in 0..20 {
        assert_problem(get(&app, "/v1/fixture/whoami", Some(&stranger.sign(&c)), &[]).await, 401).await;
    }
    assert!(
        hits.load(Ordering::SeqCst) <= 2,
        "unknown kids refresh at most once per interval: {}",
        hits.load(Ordering::SeqCst)
    );
    // HS256 signed with the published public key (algorithm confusion) is refused.
    let public = published.key_set().jwks()["keys"][0]["x"].as_str().unwrap().to_string();
    let confused = SigningKey::Hs256(Secret::new(public.into_bytes())).sign(&c);
    assert_problem(get(&app, "/v1/fixture/whoami", Some(&confused), &[]).await, 401).await;
    app.stop().await;
}

#[tokio::test]
async fn tenants_are_limited_separately_with_ratelimit_headers_and_a_429_problem() {
    let app = spawn(&[("SIGNPOST_RATE_LIMIT_TENANT", "5/60s")]).await;
    let (a, b) = (token(&claims(&app, TenantId::new())), token(&claims(&app, TenantId::new())));
    for i in 0..5u64 {
        let res = get(&app, "/v1/fixture/whoami", Some(&a), &[]).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["ratelimit-limit"], "5");
        assert_eq!(res.headers()["ratelimit-remaining"], (4 - i).to_string().as_str());
    }
    let res = get(&app, "/v1/fixture/whoami", Some(&a), &[]).await;
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    assert_problem(res, 429).await;
    assert_eq!(
        get(&app, "/v1/fixture/whoami", Some(&b), &[]).await.status(),
        200,
        "another tenant is unaffected"
    );
    let metrics = get(&app, "/metrics", None, &[]).await.text().await.unwrap();
    assert!(metrics.contains("rate_limit_hits_total{"), "refusals are counted");
    app.stop().await;
}

#[tokio::test]
async fn public_routes_are_unlimited_unless_configured() {
    let app = spawn(&[]).await;
    for _ in 0..80 {
        assert_eq!(get(&app, "/healthz", None, &[]).await.status(), 200);
    }
    app.stop().await;
    let app = spawn(&[("SIGNPOST_RATE_LIMIT_PUBLIC", "3/60s")]).await;
    for _ in 0..3 {
        assert_eq!(get(&app, "/healthz", None, &[]).await.status(), 200);
    }
    assert_problem(get(&app, "/healthz", None, &[]).await, 429).await;
    app.stop().await;
}

#[tokio::test]
async fn two_gateways_sharing_redis_enforce_one_combined_limit() {
    if std::env::var("SIGNPOST_TEST_REDIS_URL").is_err() {
        eprintln!("skipped: needs SIGNPOST_TEST_REDIS_URL");
        return;
    }
    let prefix = format!("test:{}:", Uuid::now_v7().simple());
    let env = [("SIGNPOST_REDIS_PREFIX", prefix.as_str()), ("SIGNPOST_RATE_LIMIT_TENANT", "30/60s")];
    let (one, two) = (spawn(&env).await, spawn(&env).await);
    let t = token(&claims(&one, TenantId::new()));
    let mut tasks = Vec::new();
    for i in 0..90 {
        let app = if i % 2 == 0 { &one } else { &two };
        let req = app.client.get(app.url("/v1/fixture/whoami")).bearer_auth(&t);
        tasks.push(tokio::spawn(async move { req.send().await.map(|r| r.status()) }));
    }
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 30, "one limit across both gateways");
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let app = spawn(&[("SIGNPOST_CORS_ORIGINS", "https://app.example.com")]).await;
    let pre = |origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/fixture/notes"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let res = pre("https://app.example.com").await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(res.headers()["access-control-allow-origin"], "https://app.example.com");
    assert!(res.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    let res = pre("https://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(res.status(), 403);
    let res = get(&app, "/healthz", None, &[("origin", "https://app.example.com")]).await;
    assert_eq!(res.headers()["access-control-allow-origin"], "https://app.example.com");
    let res = get(&app, "/healthz", None, &[("origin", "https://evil.example")]).await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_security_headers() {
    let app = spawn(&[]).await;
    for (path, status) in [("/healthz", 200), ("/v1/fixture/notes", 401), ("/nowhere/at/all", 404)] {
        let res = get(&app, path, None, &[]).await;
        assert_eq!(res.status().as_u16(), status, "{path}");
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert!(h.contains_key("referrer-policy") && h.contains_key("cross-origin-opener-policy"), "{path}");
        assert!(h.get("server").is_none(), "{path}: no Server header");
    }
    app.stop().await;
}

#[tokio::test]
async fn json_routes_refuse_other_content_types() {
    let app = spawn(&[]).await;
    let t = token(&claims(&app, TenantId::new()));
    let res = app
        .client
        .post(app.url("/v1/fixture/notes"))
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body("{\"body\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_problem(res, 415).await;
    let res = app
        .client
        .post(app.url("/v1/fixture/notes"))
        .bearer_auth(&t)
        .header("content-type", "application/json; charset=utf-8")
        .body("{\"body\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn tls_serves_https_with_hsts_and_the_plain_listener_redirects() {
    let dir = std::env::temp_dir().join(format!("signpost-tls-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map(|o| o.status.success());
    assert_eq!(ok.ok(), Some(true), "openssl makes a test certificate");
    let redirect = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (c, k, r) = (cert.display().to_string(), key.display().to_string(), redirect.to_string());
    let app =
        spawn(&[("SIGNPOST_TLS_CERT", &c), ("SIGNPOST_TLS_KEY", &k), ("SIGNPOST_HTTP_REDIRECT_LISTEN", &r)])
            .await;
    let port = app.address.rsplit(':').next().unwrap().to_string();
    let pem = std::fs::read(&cert).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let res = client.get(format!("https://localhost:{port}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["strict-transport-security"].to_str().unwrap().starts_with("max-age="));
    // Plain HTTP on the TLS port is not served.
    let plain = app.client.get(app.url("/healthz")).send().await;
    assert!(!plain.map(|r| r.status().is_success()).unwrap_or(false));
    let res =
        app.client.get(format!("http://{r}/v1/x?y=1")).header("host", "localhost:80").send().await.unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(res.headers()["location"], format!("https://localhost:{port}/v1/x?y=1").as_str());
    app.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn oversized_headers_are_431_and_a_slow_client_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn(&[]).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let read_head = |mut s: tokio::net::TcpStream| async move {
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(std::time::Duration::from_secs(15), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let big = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
    let _ = s.write_all(big.as_bytes()).await;
    let head = read_head(s).await;
    assert!(head.starts_with("HTTP/1.1 431"), "a 100 kB header: {head:?}");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let _ = s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
    let head = read_head(s).await;
    assert!(head.starts_with("HTTP/1.1 431"), "150 headers: {head:?}");
    // A client that never finishes its headers, and one that never says anything,
    // are both disconnected after the header timeout.
    let started = std::time::Instant::now();
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut preface = tokio::net::TcpStream::connect(&addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2").await.unwrap();
    let (a, b, c) = tokio::join!(read_head(partial), read_head(silent), read_head(preface));
    assert!(!a.starts_with("HTTP/1.1 200") && !b.starts_with("HTTP/1.1 200"), "{a:?} {b:?}");
    assert!(c.is_empty(), "a stalled HTTP/2 preface is closed too: {c:?}");
    let waited = started.elapsed();
    assert!(waited <= std::time::Duration::from_secs(13), "cut off after the header timeout: {waited:?}");
    app.stop().await;
}

#[tokio::test]
async fn routes_can_have_tighter_body_limits() {
    let app = spawn(&[("SIGNPOST_BODY_LIMIT_ROUTES", "/v1/fixture/notes=64")]).await;
    let t = token(&claims(&app, TenantId::new()));
    let long = json!({ "body": "x".repeat(200) });
    let res = app.client.post(app.url("/v1/fixture/notes")).bearer_auth(&t).json(&long).send().await.unwrap();
    assert_problem(res, 413).await;
    let res = app
        .client
        .post(app.url("/v1/fixture/notes"))
        .bearer_auth(&t)
        .json(&json!({"body": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    app.stop().await;
}

/// A Redis of the test's own, so that the test can take it away.
fn private_redis() -> Option<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("redis-server is required in CI: {e}")
        }
        Err(_) => return None,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, format!("redis://127.0.0.1:{port}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

#[tokio::test]
async fn a_down_limiter_fails_open_by_default_and_closed_when_configured() {
    for (mode, expect) in [("open", 200u16), ("closed", 503)] {
        let Some((mut redis, url)) = private_redis() else {
            eprintln!("skipped: redis-server is not installed");
            return;
        };
        let env = [
            ("REDIS_URL", url.as_str()),
            ("SIGNPOST_RATE_LIMIT_ON_ERROR", mode),
            ("SIGNPOST_RATE_LIMIT_PUBLIC", "1000/60s"),
        ];
        let app = spawn(&env).await;
        let t = token(&claims(&app, TenantId::new()));
        assert_eq!(get(&app, "/v1/fixture/whoami", Some(&t), &[]).await.status(), 200);
        assert_eq!(get(&app, "/healthz", None, &[]).await.status(), 200);
        redis.kill().unwrap();
        let _ = redis.wait();
        let res = get(&app, "/healthz", None, &[]).await;
        assert_eq!(res.status().as_u16(), expect, "a limited public route, {mode}");
        // Revocation cannot be checked: a token is refused whatever the limiter's policy.
        assert_problem(get(&app, "/v1/fixture/whoami", Some(&t), &[]).await, 503).await;
        if mode == "open" {
            let metrics = get(&app, "/metrics", None, &[]).await.text().await.unwrap();
            assert!(metrics.contains("rate_limit_errors_total"), "the failure is counted");
        }
        app.stop().await;
    }
}
