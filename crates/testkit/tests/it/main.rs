//! The kernel's integration suite: runs on embedded backends, or on the
//! engines named by `SIGNPOST_TEST_*` (see the README).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod cache_and_limits;
mod crash;
mod events;
mod http;
mod pagination;
mod postgres;
mod storage;
mod tenancy;

use std::time::Duration;

use kernel::TenantId;
use serde_json::Value;
use testkit::TestApp;

pub use testkit::eventually;

/// Creates a note for `tenant`; returns its JSON.
pub async fn create_note(app: &TestApp, tenant: TenantId, body: &str) -> Value {
    let res = app
        .client
        .post(app.url("/v1/fixture/notes"))
        .header("x-tenant-id", tenant.to_string())
        .json(&serde_json::json!({ "body": body }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(res.status(), 201, "creating a note");
    res.json().await.unwrap_or_else(|e| panic!("json: {e}"))
}

/// GET `path` (a path, or a full URL) with extra headers.
pub async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let url = if path.starts_with("http") { path.to_string() } else { app.url(path) };
    let mut req = app.client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap_or_else(|e| panic!("request: {e}"))
}

/// GET `path` as `tenant` and read the JSON body.
pub async fn get_json(app: &TestApp, path: &str, tenant: TenantId) -> Value {
    let res = get_with(app, path, &[("x-tenant-id", &tenant.to_string())]).await;
    res.json().await.unwrap_or_else(|e| panic!("json: {e}"))
}

/// The fixture's counters for `tenant`.
pub async fn stats(app: &TestApp, tenant: TenantId) -> (i64, i64) {
    let v = get_json(app, "/v1/fixture/stats", tenant).await;
    assert_eq!(
        v["off_its_lane"], 0,
        "a consumer runs on the background lane it names, never on request threads"
    );
    (v["notes"].as_i64().unwrap_or(-1), v["views"].as_i64().unwrap_or(-1))
}

/// Waits until the counters equal `want`, then checks they stay there a moment
/// (a late duplicate delivery would show up as more).
pub async fn settles_at(app: &TestApp, tenant: TenantId, want: (i64, i64)) {
    eventually(&format!("stats {want:?}"), || async {
        let now = stats(app, tenant).await;
        assert!(now.0 <= want.0 && now.1 <= want.1, "counted too much: {now:?} > {want:?}");
        (now == want).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stats(app, tenant).await, want, "counters moved after settling");
}
