//! API keys: shown once, hashed, scoped, expiring, revocable, accepted by the gateway.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::*;

#[tokio::test]
async fn an_api_key_is_shown_once_and_acts_for_its_workspace_with_its_scopes() {
    let app = spawn(&[]).await;
    let me = register(&app, "keys@example.com").await;
    let token = access(&me);
    let (status, created) = post(
        &app,
        "/v1/auth/api-keys",
        Some(&token),
        json!({"name": "CI", "scopes": ["links:read", "analytics:read"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sp_") && key.len() >= 3 + 22, "prefixed, at least 128 bits: {key}");
    let (_, list) = get(&app, "/v1/auth/api-keys", Some(&token)).await;
    let listed = &list["items"][0];
    assert!(listed.get("key").is_none(), "shown once");
    assert_eq!(listed["scopes"], json!(["links:read", "analytics:read"]));
    assert!(!list.to_string().contains(&key[3..]), "the secret is nowhere in the list");

    let (status, who) = get(&app, "/v1/auth/me", Some(&key)).await;
    assert_eq!(status, StatusCode::OK, "{who}");
    assert_eq!(who["workspace"]["id"], me["workspace"]["id"]);
    assert_eq!(who["api_key"]["scopes"], json!(["links:read", "analytics:read"]));
    let (status, intro) = get(&app, "/v1/auth/introspect", Some(&key)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(intro["kind"], "api_key");
    assert_eq!(intro["tenant_id"], me["workspace"]["id"]);

    // Keys do not manage accounts.
    let (status, _) =
        post(&app, "/v1/auth/api-keys", Some(&key), json!({"name": "x", "scopes": ["links:read"]})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // In the query string, a key is refused outright.
    let res = app.client.get(app.url(&format!("/v1/auth/me?api_key={key}"))).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Revoked: refused at once.
    let id = created["id"].as_str().unwrap();
    let (status, _) = delete(&app, &format!("/v1/auth/api-keys/{id}"), Some(&token)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = get(&app, "/v1/auth/me", Some(&key)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = get(&app, "/v1/auth/me", Some("sp_not_a_real_key_at_all_00000000000")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn api_keys_expire_and_cannot_exceed_their_creators_role() {
    let app = spawn(&[]).await;
    let me = register(&app, "exp@example.com").await;
    let token = access(&me);
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, created) = post(
        &app,
        "/v1/auth/api-keys",
        Some(&token),
        json!({"name": "short", "scopes": ["links:write"], "expires_at": soon}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap();
    assert_eq!(get(&app, "/v1/auth/me", Some(key)).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(get(&app, "/v1/auth/me", Some(key)).await.0, StatusCode::UNAUTHORIZED, "expired");

    for bad in [
        json!({"name": "x", "scopes": ["root"]}),
        json!({"name": "x", "scopes": []}),
        json!({"name": "x", "scopes": ["links:read"], "expires_at": "yesterday"}),
        json!({"name": "x", "scopes": ["links:read"], "expires_at": "2001-01-01T00:00:00Z"}),
    ] {
        let (status, body) = post(&app, "/v1/auth/api-keys", Some(&token), bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    app.stop().await;
}
