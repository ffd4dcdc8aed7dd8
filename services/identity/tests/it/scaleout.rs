//! Scale-out: identity in its own process behind a gateway in proxy mode. The
//! gateway fetches identity's Ed25519 keys over HTTP, resolves API keys through
//! `/v1/auth/introspect`, and (sharing Redis) refuses revoked sessions at once.

use std::sync::Arc;

use gateway::GatewayService;
use identity::IdentityService;
use reqwest::StatusCode;
use serde_json::json;
use testkit::TestApp;

use crate::*;

const ISSUER: &str = "https://signpost.scaleout.test";

#[tokio::test]
async fn a_proxying_gateway_verifies_identitys_tokens_and_keys_over_the_network() {
    let prefix = format!("signpost-test-{}:", uuid::Uuid::new_v4().simple());
    let shared = [("SIGNPOST_JWT_ISSUER", ISSUER), ("SIGNPOST_REDIS_PREFIX", prefix.as_str())];
    let identity = TestApp::spawn_with(vec![Arc::new(IdentityService)], &shared).await;
    let upstreams = format!("identity={}", identity.address);
    let jwks = identity.url("/v1/auth/.well-known/jwks.json");
    let mut env = shared.to_vec();
    env.extend([("SIGNPOST_UPSTREAMS", upstreams.as_str()), ("SIGNPOST_JWKS_URL", jwks.as_str())]);
    let gw = TestApp::spawn_with(vec![Arc::new(GatewayService)], &env).await;

    let me = register(&gw, "far@example.com").await;
    let token = access(&me);
    let (status, who) = get(&gw, "/v1/auth/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "the gateway fetched the JWKS and verified an EdDSA token: {who}");
    // Identity checks tokens itself when called directly (defense in depth).
    assert_eq!(get(&identity, "/v1/auth/me", Some(&token)).await.0, StatusCode::OK);
    assert_eq!(get(&identity, "/v1/auth/me", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&identity, "/v1/auth/me", Some("not.a.token")).await.0, StatusCode::UNAUTHORIZED);

    let (status, key) =
        post(&gw, "/v1/auth/api-keys", Some(&token), json!({"name": "remote", "scopes": ["links:read"]}))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let secret = key["key"].as_str().unwrap();
    let (status, by_key) = get(&gw, "/v1/auth/me", Some(secret)).await;
    assert_eq!(status, StatusCode::OK, "resolved through /v1/auth/introspect: {by_key}");
    assert_eq!(by_key["api_key"]["scopes"], json!(["links:read"]));
    assert_eq!(
        get(&gw, "/v1/auth/me", Some("sp_unknown_key_0000000000000000000000")).await.0,
        StatusCode::UNAUTHORIZED
    );

    if gw.engines.redis_url.is_some() {
        // Both processes share Redis: a revocation in identity is refused at the gateway at once.
        let id = key["id"].as_str().unwrap();
        assert_eq!(
            delete(&gw, &format!("/v1/auth/api-keys/{id}"), Some(&token)).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(get(&gw, "/v1/auth/me", Some(secret)).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(post(&gw, "/v1/auth/logout", Some(&token), json!({})).await.0, StatusCode::NO_CONTENT);
        assert_eq!(get(&gw, "/v1/auth/me", Some(&token)).await.0, StatusCode::UNAUTHORIZED);
    }
    gw.stop().await;
    identity.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_gateway_identity_counts_failures_per_forwarded_client() {
    let identity = TestApp::spawn_with(
        vec![Arc::new(IdentityService)],
        &[("SIGNPOST_TRUSTED_PROXIES", "127.0.0.1"), ("SIGNPOST_LOGIN_LIMIT_IP", "2/900s")],
    )
    .await;
    let attempt = |client: &'static str, email: &'static str| {
        let identity = &identity;
        async move {
            identity
                .client
                .post(identity.url("/v1/auth/login"))
                .header("x-forwarded-for", client)
                .json(&json!({ "email": email, "password": "not the password" }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(attempt("203.0.113.7", "a@example.com").await, StatusCode::UNAUTHORIZED);
    assert_eq!(attempt("203.0.113.7", "b@example.com").await, StatusCode::UNAUTHORIZED);
    assert_eq!(attempt("203.0.113.7", "c@example.com").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        attempt("203.0.113.8", "d@example.com").await,
        StatusCode::UNAUTHORIZED,
        "another client behind the gateway"
    );
    identity.stop().await;
}
