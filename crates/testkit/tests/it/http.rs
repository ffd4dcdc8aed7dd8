//! HTTP conventions: health, readiness, metrics, request ids, problem JSON for
//! every kind of bad input.

use reqwest::StatusCode;
use serde_json::Value;
use testkit::TestApp;

use kernel::TenantId;

fn is_problem(res: &reqwest::Response) -> bool {
    res.headers().get("content-type").and_then(|v| v.to_str().ok()) == Some("application/problem+json")
}

async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert!(is_problem(&res), "content type is problem+json");
    let body: Value = res.json().await.unwrap_or_default();
    assert_eq!(body["status"], status, "status repeated in the body");
    assert!(body["type"].as_str().is_some_and(|t| t.starts_with("/problems/")), "stable type: {body}");
    body
}

#[tokio::test]
async fn healthz_answers_ok_while_the_process_runs() {
    let app = TestApp::spawn().await;
    let res = app.client.get(app.url("/healthz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap_or_default();
    assert_eq!(body, serde_json::json!({ "status": "ok" }));
    app.stop().await;
}

#[tokio::test]
async fn readyz_reports_each_configured_backend_as_up() {
    let app = TestApp::spawn().await;
    let res = app.client.get(app.url("/readyz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap_or_default();
    assert_eq!(body["status"], "ready");
    let e = &app.engines;
    let expect = [
        ("database", if e.database_url.is_some() { "postgres" } else { "sqlite" }),
        ("cache", if e.redis_url.is_some() { "redis" } else { "memory" }),
        ("bus", if e.nats_url.is_some() { "nats" } else { "memory" }),
        ("storage", if e.s3_url.is_some() { "s3" } else { "local" }),
    ];
    for (check, backend) in expect {
        assert_eq!(body["checks"][check]["status"], "up", "{check}: {body}");
        assert_eq!(body["checks"][check]["backend"], backend, "{check}");
    }
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_503_naming_the_backend_that_is_down() {
    let mut app = TestApp::spawn().await;
    // Closing the pools makes the database check fail while the server still answers.
    let db = app.db("fixture");
    match &db {
        kernel::db::Db::Sqlite(lite) => lite.close().await,
        kernel::db::Db::Postgres(_) => {
            if let kernel::platform::DbBackend::Postgres(pg) = &app.database {
                pg.app_pool().close().await;
            }
        }
    }
    let res = app.client.get(app.url("/readyz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap_or_default();
    assert_eq!(body["status"], "unready");
    assert_eq!(body["checks"]["database"]["status"], "down");
    assert_eq!(body["checks"]["cache"]["status"], "up");
    app.shutdown().await;
    testkit::cleanup(&app.engines, &app.config, &app.isolation).await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_that_promtool_accepts() {
    let app = TestApp::spawn().await;
    let _ = app.client.get(app.url("/healthz")).send().await;
    let _ = app.client.get(app.url("/no/such/path")).send().await;
    let res = app.client.get(app.url("/metrics")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap_or("").starts_with("text/plain"));
    let text = res.text().await.unwrap_or_default();
    assert!(text.contains("http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/healthz\""), "routes are labelled by their template");
    assert!(text.contains("http_request_duration_seconds_bucket"), "latency is a histogram");
    assert!(!text.contains("/no/such/path"), "unmatched paths do not become labels");
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(text.as_bytes());
            }
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("promtool: {e}"));
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("promtool is required in CI: {e}"),
        Err(_) => eprintln!("promtool not installed: format checked by assertions only"),
    }
    app.stop().await;
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    let app = TestApp::spawn().await;
    let res = crate::get_with(&app, "/healthz", &[("x-request-id", "abc-123")]).await;
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = crate::get_with(&app, "/healthz", &[]).await;
    let generated = res.headers()["x-request-id"].to_str().unwrap_or("").to_string();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "generated id is a UUID: {generated}");
    let res = crate::get_with(&app, "/healthz", &[("x-request-id", "bad id with spaces")]).await;
    assert_ne!(res.headers()["x-request-id"], "bad id with spaces", "unsafe ids are replaced");
    // The handler sees the id the client gets back, whether kept, made or
    // replaced; two ids sent are one too many, and both are replaced.
    let cases: [&[&str]; 4] = [&[], &["abc-123"], &["bad id with spaces"], &["one", "two"]];
    for sent in cases {
        let headers: Vec<(&str, &str)> = sent.iter().map(|v| ("x-request-id", *v)).collect();
        let res = crate::get_with(&app, "/v1/fixture/whoami", &headers).await;
        let given = res.headers()["x-request-id"].to_str().unwrap_or("").to_string();
        if sent == ["abc-123"] {
            assert_eq!(given, "abc-123", "a single plain id is kept");
        } else {
            assert!(uuid::Uuid::parse_str(&given).is_ok(), "a new id replaces {sent:?}: {given}");
        }
        let seen: serde_json::Value = res.json().await.unwrap_or_default();
        assert_eq!(seen["headers"]["x-request-id"], given.as_str(), "sent {sent:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    let res = app.client.get(app.url("/v1/nothing-here")).send().await.unwrap_or_else(|e| panic!("{e}"));
    problem(res, 404).await;
    let res = app.client.delete(app.url("/healthz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    problem(res, 405).await;
    // A path parameter that is not valid percent-encoded UTF-8 names nothing.
    let res = app
        .client
        .get(app.url("/v1/fixture/notes/%FF%FE"))
        .header("x-tenant-id", TenantId::new().to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    problem(res, 404).await;
    let res = app
        .client
        .get(app.url("/v1/storage/%FF?expires=1&signature=x"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    problem(res, 404).await;
    app.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_4xx_problems_and_store_nothing() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    let post = |body: Vec<u8>, ctype: &'static str| {
        app.client
            .post(app.url("/v1/fixture/notes"))
            .header("x-tenant-id", tenant.to_string())
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let json = "application/json";
    problem(post(b"{\"body\": ".to_vec(), json).await.unwrap_or_else(|e| panic!("{e}")), 400).await;
    problem(post(vec![b'{', 0xff, 0xfe, b'}'], json).await.unwrap_or_else(|e| panic!("{e}")), 400).await;
    problem(post(b"{\"body\":\"x\"}".to_vec(), "text/plain").await.unwrap_or_else(|e| panic!("{e}")), 415)
        .await;
    let p = problem(
        post(b"{\"body\":\"x\",\"extra\":1}".to_vec(), json).await.unwrap_or_else(|e| panic!("{e}")),
        422,
    )
    .await;
    assert!(p["detail"].as_str().unwrap_or("").contains("extra"), "names the unknown field: {p}");
    let res = post(b"{\"body\": 1e999999}".to_vec(), json).await.unwrap_or_else(|e| panic!("{e}"));
    let status = res.status().as_u16();
    assert!(status == 400 || status == 422, "huge number: {status}");
    problem(res, status).await;
    problem(
        post(b"{\"body\": 12345678901234567890123}".to_vec(), json).await.unwrap_or_else(|e| panic!("{e}")),
        422,
    )
    .await;
    problem(post(b"{\"body\": \"\"}".to_vec(), json).await.unwrap_or_else(|e| panic!("{e}")), 422).await;
    let big = format!("{{\"body\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    problem(post(big.into_bytes(), json).await.unwrap_or_else(|e| panic!("{e}")), 413).await;
    // An absurd Content-Length is refused before any body is read.
    let mut stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "POST /v1/fixture/notes HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: {tenant}\r\nContent-Type: application/json\r\nContent-Length: 99999999999999\r\nConnection: close\r\n\r\n{{}}"
    );
    let _ = stream.write_all(req.as_bytes()).await;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await.unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 413") || head.starts_with("HTTP/1.1 400"), "{head}");
    // Nothing was stored by any of the above.
    let list = crate::get_json(&app, "/v1/fixture/notes", tenant).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));
    app.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_is_an_opaque_500_problem_and_the_server_lives_on() {
    let app = TestApp::spawn().await;
    let res = app.client.get(app.url("/v1/fixture/panic")).send().await.unwrap_or_else(|e| panic!("{e}"));
    let body = problem(res, 500).await;
    assert!(body.get("detail").is_none(), "no internals leak: {body}");
    let res = app.client.get(app.url("/healthz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_lists_the_platform_and_service_routes() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/v1/fixture/notes"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    app.stop().await;
}

#[tokio::test]
async fn operator_endpoints_move_to_the_admin_listener_when_configured() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    let admin = format!("127.0.0.1:{port}");
    let app = TestApp::spawn_with(
        vec![std::sync::Arc::new(testkit::fixture::Fixture)],
        &[("SIGNPOST_ADMIN_LISTEN", &admin)],
    )
    .await;
    let metrics = crate::eventually("the admin listener", || async {
        let res = app.client.get(format!("http://{admin}/metrics")).send().await.ok()?;
        (res.status() == 200).then_some(())?;
        res.text().await.ok()
    })
    .await;
    assert!(metrics.contains("# TYPE"), "Prometheus text on the admin listener");
    let res = app.client.get(format!("http://{admin}/readyz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), StatusCode::OK);
    for path in ["/metrics", "/readyz"] {
        let res = app.client.get(app.url(path)).send().await.unwrap_or_else(|e| panic!("{e}"));
        problem(res, 404).await;
    }
    let res = app.client.get(app.url("/healthz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), StatusCode::OK, "liveness stays on the public listener");
    app.stop().await;
}
