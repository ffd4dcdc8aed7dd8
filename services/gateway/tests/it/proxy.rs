//! Proxy mode: the gateway in front of service instances reached over HTTP.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gateway::GatewayService;
use kernel::TenantId;
use kernel::storage::{ObjectKey, UrlMethod};
use serde_json::{Value, json};
use testkit::TestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ISSUER, SECRET, assert_problem, claims, get, token};

/// A gateway in proxy mode in front of `instances` of the fixture service.
async fn gateway_for(instances: &[&TestApp], extra: &[(&str, &str)]) -> TestApp {
    let urls: Vec<String> = instances.iter().map(|i| i.address.clone()).collect();
    upstream_gateway(&format!("fixture={}", urls.join("|")), extra).await
}

async fn upstream_gateway(upstreams: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("JWT_SECRET_KEY", SECRET),
        ("SIGNPOST_JWT_ISSUER", ISSUER),
        ("SIGNPOST_UPSTREAMS", upstreams),
        ("SIGNPOST_ROUTES", "/v1/fixture=fixture"),
    ];
    env.extend_from_slice(extra);
    TestApp::spawn_with(vec![Arc::new(GatewayService)], &env).await
}

#[tokio::test]
async fn proxied_requests_carry_verified_identity_and_forwarding_headers_only() {
    let upstream = TestApp::spawn().await;
    let gw = gateway_for(&[&upstream], &[]).await;
    let tenant = TenantId::new();
    let c = claims(&gw, tenant);
    let res = gw
        .client
        .get(gw.url("/v1/fixture/whoami?x=1"))
        .bearer_auth(token(&c))
        .header("x-user-role", "owner")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-hop-secret, x-forwarded-for, x-tenant-id, x-user-id")
        .header("x-hop-secret", "must not pass")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-content-type-options").is_some(), "edge headers on proxied responses");
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let who: Value = res.json().await.unwrap();
    assert_eq!(who["x_tenant_id"], tenant.to_string());
    assert_eq!(who["x_user_role"], "admin");
    let h = &who["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "a client's X-Forwarded-For is overwritten: {h}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["x-forwarded-host"].as_str().is_some_and(|v| v.starts_with("127.0.0.1:")));
    assert!(h.get("x-hop-secret").is_none(), "headers named in Connection are hop-by-hop: {h}");
    assert!(h.get("authorization").is_some(), "services can verify the token again");
    assert_eq!(h["x-request-id"], request_id.as_str(), "the service logs the id the client was given");
    // An id the client sent travels through to the service and back.
    let res = gw
        .client
        .get(gw.url("/v1/fixture/whoami"))
        .bearer_auth(token(&c))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-42");
    let who: Value = res.json().await.unwrap();
    assert_eq!(who["headers"]["x-request-id"], "trace-42");
    // Writes go through too.
    let res = gw
        .client
        .post(gw.url("/v1/fixture/notes"))
        .bearer_auth(token(&c))
        .json(&json!({"body": "via proxy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // The gateway's document lists the remote service's routes.
    let doc: Value = get(&gw, "/v1/openapi.json", None, &[]).await.json().await.unwrap();
    assert!(doc["paths"].get("/v1/fixture/notes").is_some(), "{}", doc["paths"]);
    assert!(doc["paths"].get("/healthz").is_some());
    // Unknown prefixes are 404 at the gateway; unauthenticated ones are refused before any hop.
    assert_problem(get(&gw, "/v1/nothing", Some(&token(&c)), &[]).await, 404).await;
    assert_problem(get(&gw, "/v1/fixture/whoami", None, &[]).await, 401).await;
    gw.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn proxied_requests_are_named_by_their_service_prefix_in_metrics_and_limits() {
    let upstream = TestApp::spawn().await;
    let gw = gateway_for(&[&upstream], &[("SIGNPOST_RATE_LIMIT_TENANT", "2/60s")]).await;
    let t = token(&claims(&gw, TenantId::new()));
    assert_eq!(get(&gw, "/v1/fixture/whoami", Some(&t), &[]).await.status(), 200);
    assert_eq!(get(&gw, "/v1/fixture/whoami?n=2", Some(&t), &[]).await.status(), 200);
    assert_problem(get(&gw, "/v1/fixture/notes/3", Some(&t), &[]).await, 429).await;
    let res = gw.client.delete(gw.url("/v1/nothing/here")).bearer_auth(&t).send().await.unwrap();
    assert_problem(res, 404).await;
    let metrics = get(&gw, "/metrics", None, &[]).await.text().await.unwrap();
    let series = |name: &str| -> Vec<String> {
        metrics.lines().filter(|l| l.starts_with(name)).map(str::to_string).collect()
    };
    let durations = series("http_request_duration_seconds_count");
    for status in ["200", "429"] {
        assert!(
            durations.iter().any(|l| l.contains("route=\"/v1/fixture/{*path}\"")
                && l.contains(&format!("status_code=\"{status}\""))),
            "a proxied request is named by its service's prefix: {durations:?}"
        );
    }
    assert!(
        durations.iter().any(|l| l.contains("method=\"DELETE\"")
            && l.contains("route=\"unmatched\"")
            && l.contains("status_code=\"404\"")),
        "a path no service owns is unmatched: {durations:?}"
    );
    let hits = series("rate_limit_hits_total");
    assert!(hits.iter().any(|l| l.contains("endpoint=\"/v1/fixture/{*path}\"")), "{hits:?}");
    // (The upstream shares this process's metrics: its own series name its routes.)
    for line in durations.iter().chain(&hits) {
        assert!(!line.contains("notes/3") && !line.contains("nothing/here"), "no series per URL: {line}");
    }
    gw.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn the_proxy_front_keeps_the_routers_rules_for_head_bodies_preflights_and_odd_targets() {
    let upstream = TestApp::spawn().await;
    let gw = gateway_for(
        &[&upstream],
        &[("SIGNPOST_BODY_LIMIT", "1024"), ("SIGNPOST_CORS_ORIGINS", "https://app.example")],
    )
    .await;
    let t = token(&claims(&gw, TenantId::new()));
    let authority = gw.address.trim_start_matches("http://").to_string();

    // HEAD over HTTP/2 (prior knowledge): the GET answer's headers, no body.
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let head = axum::http::Request::head(gw.url("/v1/fixture/whoami"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = h2.send_request(head).await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("content-length").is_some_and(|v| v != "0"), "the GET answer's length");
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    assert!(body.is_empty(), "no body to a HEAD: {body:?}");

    // The body guard: a declared body over SIGNPOST_BODY_LIMIT is 413, after authentication.
    let big = gw
        .client
        .post(gw.url("/v1/fixture/notes"))
        .header("content-type", "application/json")
        .body(vec![b' '; 2048]);
    let anonymous = big.try_clone().unwrap().send().await.unwrap();
    assert_problem(anonymous, 401).await;
    assert_problem(big.bearer_auth(&t).send().await.unwrap(), 413).await;

    // Preflights are the edge's, allowed origin or not.
    let preflight = |origin: &'static str| {
        gw.client
            .request(reqwest::Method::OPTIONS, gw.url("/v1/fixture/notes"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let res = preflight("https://app.example").await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(res.headers()["access-control-allow-origin"], "https://app.example");
    assert_problem(preflight("https://evil.example").await.unwrap(), 403).await;

    // `OPTIONS *` names no path: nothing is proxied.
    let mut s = tokio::net::TcpStream::connect(&authority).await.unwrap();
    s.write_all(b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    gw.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_proxying_gateway_answers_its_own_signed_storage_urls() {
    let upstream = TestApp::spawn().await;
    let gw = gateway_for(&[&upstream], &[]).await;
    let s = &gw.kernel.storage;
    let key = ObjectKey::for_tenant(TenantId::new(), "via-gateway.bin").unwrap();
    // With local storage the URLs are the gateway's own `/v1/storage/…`, which
    // no service behind it owns; with S3 they are presigned against S3.
    let put = s.signed_url(UrlMethod::Put, &key, Duration::from_secs(300)).await.unwrap();
    assert_eq!(put.starts_with(&gw.address), s.serves_signed_urls(), "{put}");
    let res = gw.client.put(&put).body("kept by the gateway").send().await.unwrap();
    assert!(res.status().is_success(), "PUT {}: {}", res.status(), res.text().await.unwrap_or_default());
    let get = s.signed_url(UrlMethod::Get, &key, Duration::from_secs(300)).await.unwrap();
    let res = gw.client.get(&get).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "kept by the gateway");
    gw.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn load_is_spread_and_a_dead_instance_is_routed_around() {
    let (a, b) = (TestApp::spawn().await, TestApp::spawn().await);
    let gw = gateway_for(&[&a, &b], &[]).await;
    let t = token(&claims(&gw, TenantId::new()));
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let who: Value = get(&gw, "/v1/fixture/whoami", Some(&t), &[]).await.json().await.unwrap();
        seen.insert(who["instance"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(seen.len(), 2, "both instances served: {seen:?}");
    let dead = b.address.clone();
    b.stop().await;
    // GETs that hit the dead instance are retried on the live one: no client sees the failure.
    for _ in 0..30 {
        let res = get(&gw, "/v1/fixture/whoami", Some(&t), &[]).await;
        assert_eq!(res.status(), 200);
        let who: Value = res.json().await.unwrap();
        assert_ne!(who["instance"], dead.as_str());
    }
    // A POST is never retried; once the instance is ejected it is not tried at all.
    let mut failed = 0;
    for _ in 0..20 {
        let res = gw
            .client
            .post(gw.url("/v1/fixture/notes"))
            .bearer_auth(&t)
            .json(&json!({"body": "x"}))
            .send()
            .await
            .unwrap();
        if res.status() != 201 {
            assert_eq!(res.status(), 503);
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "the dead instance was already ejected by the failed GET tries");
    let metrics = get(&gw, "/metrics", None, &[]).await.text().await.unwrap();
    assert!(metrics.contains("gateway_upstream_healthy{"), "instance health is a gauge");
    gw.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_slow_instance_is_a_504_problem() {
    let upstream = TestApp::spawn().await;
    let gw = gateway_for(&[&upstream], &[("SIGNPOST_UPSTREAM_TIMEOUT", "300")]).await;
    let t = token(&claims(&gw, TenantId::new()));
    let res = get(&gw, "/v1/fixture/slow?ms=2000", Some(&t), &[]).await;
    assert_problem(res, 504).await;
    assert_eq!(get(&gw, "/v1/fixture/slow?ms=10", Some(&t), &[]).await.status(), 204);
    gw.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn no_instance_at_all_is_a_503_problem() {
    let gw =
        upstream_gateway("fixture=http://127.0.0.1:9", &[("SIGNPOST_UPSTREAM_CONNECT_TIMEOUT", "200")]).await;
    let t = token(&claims(&gw, TenantId::new()));
    assert_problem(get(&gw, "/v1/fixture/whoami", Some(&t), &[]).await, 503).await;
    gw.stop().await;
}

#[tokio::test]
async fn http2_upstreams_work_over_h2c() {
    let upstream = TestApp::spawn().await;
    let h2c = upstream.address.replace("http://", "h2c://");
    let gw = upstream_gateway(&format!("fixture={h2c}"), &[]).await;
    let tenant = TenantId::new();
    let who: Value =
        get(&gw, "/v1/fixture/whoami", Some(&token(&claims(&gw, tenant))), &[]).await.json().await.unwrap();
    assert_eq!(who["x_tenant_id"], tenant.to_string());
    gw.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn upgrades_pass_through_both_ways() {
    let upstream = TestApp::spawn().await;
    let gw = gateway_for(&[&upstream], &[]).await;
    let t = token(&claims(&gw, TenantId::new()));
    let mut s = tokio::net::TcpStream::connect(gw.address.trim_start_matches("http://")).await.unwrap();
    let req = format!(
        "GET /v1/fixture/echo HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut head = String::new();
    while !head.contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed: {head}");
        head.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping through the gateway").await.unwrap();
    let mut echoed = vec![0u8; 24];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping through the gateway");
    gw.stop().await;
    upstream.stop().await;
}

/// A bare HTTP/1.1 upstream answering `200 ok` to every request, counting the
/// connections it accepts; with `one_each`, it closes each connection after its
/// first answer without saying so (as an instance's idle timeout does).
async fn bare_upstream(one_each: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    while buf.len() < end + 4 + length {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err()
                        || one_each
                    {
                        return;
                    }
                }
            });
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_and_one_the_instance_closed_is_not_reused() {
    use std::sync::atomic::Ordering;
    let (kept, kept_accepted) = bare_upstream(false).await;
    let (closing, closing_accepted) = bare_upstream(true).await;
    for (address, accepted, one_each) in [(kept, kept_accepted, false), (closing, closing_accepted, true)] {
        let gw = upstream_gateway(&format!("fixture={address}"), &[]).await;
        let t = token(&claims(&gw, TenantId::new()));
        let before = accepted.load(Ordering::SeqCst);
        for i in 0..10 {
            // A POST is never retried: it must not be sent on a connection the instance closed.
            let res = gw
                .client
                .post(gw.url("/v1/fixture/anything"))
                .bearer_auth(&t)
                .json(&json!({ "n": i }))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "request {i} through {address}");
            assert_eq!(res.text().await.unwrap(), "ok");
            if one_each {
                // Long enough for the gateway to see the connection close.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let opened = accepted.load(Ordering::SeqCst) - before;
        if one_each {
            assert!(opened >= 10, "each request needed a new connection: {opened}");
        } else {
            // Health checks may open their own; requests reuse what is open.
            assert!(opened <= 3, "connections are kept between requests: {opened} opened");
        }
        gw.stop().await;
    }
}
