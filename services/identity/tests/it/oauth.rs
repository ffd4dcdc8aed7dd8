//! Social login against a fake Google (OIDC) and a fake GitHub that the test
//! serves itself over HTTP: PKCE S256, state, nonce, exact redirect URIs,
//! identities by (provider, subject), linking only by a verified email.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::routing::{get as route_get, post as route_post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;
use testkit::TestApp;

use crate::*;

/// A 2048-bit RSA test key (PKCS#8 DER, base64) and its modulus (base64url).
const RSA_PKCS8: &str = "MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQD1qT/U+9EoL2+D76rAVPd0+rHiiGusMs2fTkhMz6wNoGhJfos8RetOwZziN/Q9umkwdmbS5z5VXBNGG++sugvT1uj+5yLupxySW/oHbUDnBwkdqpKT6xHw/hpYbdiUjAmlc4bfqXzbsGZMPDHFFtVyauePmcEEdhtJEJ+vP3FhHotzL/L0St+MFyNJe5W5Ba8TOS4qdfgcjX+WDJldre0CW2yG1IAeBVqajQjDt2GKV3rlaIDUlVCbdk7tK7n5vZJdr9pwqBwMQ3Lr3rK9vrEW9wo5VWkphLRAp+TejYrw+xKvgv326rzwPBN9NA5KqfgUz80olGD0ZIYkWm3ZVa+9AgMBAAECggEAAI0PopeqAXARzPb1qBbIs094pKxvqWQ3x9qyGNICbcllUnzhLRJvE68lffBoMNdBMyWg12pDXoelV2vqnrWQHzqFLUUxc92WF9Hy/p9FHP+MCq/+Qiytzp+TSY19hd/GicN3kvrbV9bOc+9SoUGK2wXYXR8YKr1lFEXgRdFbnL8mqt74HURVn9jLIWvOwLWB4xwG+zI5GsePYy7JTNbUtvLCOMUqanlzL9SZDMRD1vNZWyprdWTYFflhMi/E/vW91shnB9hko9y+PWn3xfhE37jIvCAuLdsqMI445IvmsnUGvopi68vS5wnJZTcbJ3frD9gGujeQUd/Kyg6tdqXK9QKBgQD/hx/ARtKOMH1TwkVDADH07jc+wSd5c7e7C2rmN8lHd0nWP5G8lmb/0sz7cj8v38nIrmqLQiyS34MR+8wB98cXDF3ZEFR1YEc3tHjCxuOiwyicEeYzt5IDXKgB6a80ysAXfJt8QzLGUqyeMqIISwSTC/81ZEcSo64sIQkQDzNtUwKBgQD2HXU6+VBz3zoRVNEDdHSl6fIaj0OFnvhOkUuGhXJ8IcEum+tdaIFWzxdV04iNlxGEChp6QAgfkxXFiPGvxXez37PaocQAyOxhQXxALoKDBgjYitjowXU5Nt/CRVYTWTclv7zoIeCK4gUf9F0imoNh9z8Nw8uADlcnxY1paee8rwKBgAbktk6RmoyLclYYH5Y3IyHga00eGNqF7Kb3H+MmDiAHb85/2Ial6BFutmjyJBI+j0sCqY0oM9uie/64NEC5Vn2gr8dzUVP5TPKLw9Y9V1bEvQu4z+UFRsMgdMfYbgmWjqgTjH5FsdD32gBKjWR74Zu17ySZl/FAySoXmg782f5RAoGAILaDqYYP+obWSg1zBrmI87Cn3H3kZLNfn9nSJxw/vl4iNlbFLxI/9tDp8h9+zAsjaeCJ6mvuaHv9bdcpAMsHgSIf3tSXn98VBExW/pTwBghcTqQN9soYEbXIgiMDMOkv2lWk/1nZZbxrH/c0FfBhvDjH6cV3nBrL3N52UGeiRMMCgYA6GEOWIZEt6fbt4z5U739k9+4R7EHcJL6VjIj8C5qmDcYT8NpTv7goUGWzmFLWh+AohjeQ8E+vNykBXSdCGN/x04HhyXjGcCFm6zV8S6+ep6COY0dmShHfAbfi3qBCFM7AnYrtxObZv+rveorjr3gxW7K9wqav8XZfXlV1cZxYkA==";
const RSA_N: &str = "9ak_1PvRKC9vg--qwFT3dPqx4ohrrDLNn05ITM-sDaBoSX6LPEXrTsGc4jf0PbppMHZm0uc-VVwTRhvvrLoL09bo_uci7qccklv6B21A5wcJHaqSk-sR8P4aWG3YlIwJpXOG36l827BmTDwxxRbVcmrnj5nBBHYbSRCfrz9xYR6Lcy_y9ErfjBcjSXuVuQWvEzkuKnX4HI1_lgyZXa3tAltshtSAHgVamo0Iw7dhild65WiA1JVQm3ZO7Su5-b2SXa_acKgcDENy696yvb6xFvcKOVVpKYS0QKfk3o2K8PsSr4L99uq88DwTfTQOSqn4FM_NKJRg9GSGJFpt2VWvvQ";

/// What the fake provider knows about one pending authorization.
#[derive(Clone)]
struct Grant {
    challenge: String,
    nonce: String,
    sub: String,
    email: String,
    verified: bool,
    /// Sign the ID token with another nonce (an attack).
    wrong_nonce: bool,
}

#[derive(Clone, Default)]
struct Fake {
    base: Arc<Mutex<String>>,
    grants: Arc<Mutex<HashMap<String, Grant>>>,
    redirect_uris: Arc<Mutex<Vec<String>>>,
    pkce_checked: Arc<Mutex<u32>>,
}

const CLIENT_ID: &str = "signpost-client";
const CLIENT_SECRET: &str = "signpost-client-secret";

fn id_token(fake: &Fake, g: &Grant) -> String {
    let key = ring::signature::RsaKeyPair::from_pkcs8(&STANDARD.decode(RSA_PKCS8).unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header = json!({"alg": "RS256", "kid": "k1", "typ": "JWT"});
    let claims = json!({
        "iss": fake.base.lock().unwrap().clone(), "aud": CLIENT_ID, "sub": g.sub, "email": g.email,
        "email_verified": g.verified, "name": "Grace Hopper", "iat": now, "exp": now + 300,
        "nonce": if g.wrong_nonce { "replayed-nonce".to_string() } else { g.nonce.clone() },
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Checks a token request the way a provider does; returns the grant.
fn redeem(fake: &Fake, form: &HashMap<String, String>) -> Result<Grant, &'static str> {
    let refuse = |e: &'static str| e;
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return Err(refuse("invalid_client"));
    }
    let uri = form.get("redirect_uri").cloned().unwrap_or_default();
    if !fake.redirect_uris.lock().unwrap().contains(&uri) {
        return Err(refuse("redirect_uri_mismatch"));
    }
    // Codes are single use.
    let grant = fake
        .grants
        .lock()
        .unwrap()
        .remove(form.get("code").map_or("", String::as_str))
        .ok_or_else(|| refuse("invalid_grant"))?;
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes())) != grant.challenge {
        return Err(refuse("invalid_grant"));
    }
    *fake.pkce_checked.lock().unwrap() += 1;
    Ok(grant)
}

async fn serve_fake() -> Fake {
    let fake = Fake::default();
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", route_get(|State(f): State<Fake>| async move {
            let b = f.base.lock().unwrap().clone();
            axum::Json(json!({"issuer": b, "authorization_endpoint": format!("{b}/authorize"),
                "token_endpoint": format!("{b}/token"), "jwks_uri": format!("{b}/jwks")}))
        }))
        .route("/jwks", route_get(|| async {
            axum::Json(json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"}]}))
        }))
        .route("/token", route_post(|State(f): State<Fake>, Form(form): Form<HashMap<String, String>>| async move {
            use axum::response::IntoResponse;
            match redeem(&f, &form) {
                Ok(g) => axum::Json(json!({"access_token": "at", "token_type": "Bearer", "id_token": id_token(&f, &g)})).into_response(),
                Err(e) => (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": e}))).into_response(),
            }
        }))
        .route("/login/oauth/access_token", route_post(|State(f): State<Fake>, Form(form): Form<HashMap<String, String>>| async move {
            use axum::response::IntoResponse;
            match redeem(&f, &form) {
                Ok(g) => axum::Json(json!({"access_token": format!("gh:{}:{}:{}", g.sub, g.email, g.verified), "token_type": "bearer"})).into_response(),
                Err(e) => (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": e}))).into_response(),
            }
        }))
        .route("/user", route_get(|headers: axum::http::HeaderMap| async move {
            let t = headers["authorization"].to_str().unwrap().trim_start_matches("Bearer ").to_string();
            let id: u64 = t.split(':').nth(1).unwrap().parse().unwrap();
            axum::Json(json!({"id": id, "login": "octocat", "name": null}))
        }))
        .route("/user/emails", route_get(|headers: axum::http::HeaderMap| async move {
            let t = headers["authorization"].to_str().unwrap().trim_start_matches("Bearer ").to_string();
            let parts: Vec<&str> = t.split(':').collect();
            axum::Json(json!([{"email": "noise@example.com", "primary": false, "verified": true},
                              {"email": parts[2], "primary": true, "verified": parts[3] == "true"}]))
        }))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    *fake.base.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    fake
}

async fn spawn_with_fake() -> (TestApp, Fake) {
    let fake = serve_fake().await;
    let base = fake.base.lock().unwrap().clone();
    let app = spawn(&[
        ("SIGNPOST_GOOGLE_CLIENT_ID", CLIENT_ID),
        ("SIGNPOST_GOOGLE_CLIENT_SECRET", CLIENT_SECRET),
        ("SIGNPOST_GOOGLE_ISSUER", &base),
        ("SIGNPOST_GITHUB_CLIENT_ID", CLIENT_ID),
        ("SIGNPOST_GITHUB_CLIENT_SECRET", CLIENT_SECRET),
        ("SIGNPOST_GITHUB_URL", &base),
        ("SIGNPOST_GITHUB_API_URL", &base),
        ("SIGNPOST_APP_URL", "https://app.signpost.test"),
    ])
    .await;
    for p in ["google", "github"] {
        fake.redirect_uris.lock().unwrap().push(app.url(&format!("/v1/auth/oauth/{p}/callback")));
    }
    (app, fake)
}

/// Plays the browser: starts the flow, "approves" at the provider (which
/// records a code for this challenge), and returns the callback's query.
#[allow(clippy::too_many_arguments)]
async fn authorize(
    app: &TestApp,
    fake: &Fake,
    provider: &str,
    sub: &str,
    email: &str,
    verified: bool,
    wrong_nonce: bool,
    start_query: &str,
) -> (String, String) {
    let res = app
        .client
        .get(app.url(&format!("/v1/auth/oauth/{provider}/start{start_query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = reqwest::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["redirect_uri"],
        app.url(&format!("/v1/auth/oauth/{provider}/callback")),
        "the exact registered URI"
    );
    assert!(q["state"].len() >= 43 && q["code_challenge"].len() == 43);
    if provider == "google" {
        assert!(q["nonce"].len() >= 43, "OIDC carries a nonce");
        assert!(q["scope"].contains("openid"));
    }
    let code = format!("code-{}", uuid::Uuid::new_v4());
    fake.grants.lock().unwrap().insert(
        code.clone(),
        Grant {
            challenge: q["code_challenge"].clone(),
            nonce: q.get("nonce").cloned().unwrap_or_default(),
            sub: sub.into(),
            email: email.into(),
            verified,
            wrong_nonce,
        },
    );
    (code, q["state"].clone())
}

async fn finish(app: &TestApp, provider: &str, code: &str, state: &str) -> (StatusCode, Value) {
    get(app, &format!("/v1/auth/oauth/{provider}/callback?code={code}&state={state}"), None).await
}

#[tokio::test]
async fn google_sign_in_creates_an_account_and_finds_it_again_by_subject() {
    let (app, fake) = spawn_with_fake().await;
    let (code, state) =
        authorize(&app, &fake, "google", "g-1001", "grace@example.com", true, false, "").await;
    let (status, first) = finish(&app, "google", &code, &state).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["user"]["email"], "grace@example.com");
    assert_eq!(first["user"]["email_verified"], true);
    assert_eq!(first["user"]["has_password"], false);
    assert_eq!(*fake.pkce_checked.lock().unwrap(), 1, "the provider checked the PKCE verifier");
    let (status, me) = get(&app, "/v1/auth/me", Some(&access(&first))).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    // The same subject later, even with another email: the same account.
    let (code, state) =
        authorize(&app, &fake, "google", "g-1001", "grace.h@example.com", true, false, "").await;
    let (status, again) = finish(&app, "google", &code, &state).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["user"]["id"], first["user"]["id"]);
    // The state was single use.
    let (status, _) = finish(&app, "google", &code, &state).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn accounts_link_by_email_only_when_the_provider_verified_it() {
    let (app, fake) = spawn_with_fake().await;
    let mine = register(&app, "octo@example.com").await;
    let (code, state) = authorize(&app, &fake, "github", "4242", "octo@example.com", false, false, "").await;
    let (status, body) = finish(&app, "github", &code, &state).await;
    assert_eq!(status, StatusCode::CONFLICT, "an unverified email never takes over an account: {body}");
    let (code, state) = authorize(&app, &fake, "github", "4242", "octo@example.com", true, false, "").await;
    let (status, linked) = finish(&app, "github", &code, &state).await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    assert_eq!(linked["user"]["id"], mine["user"]["id"], "linked to the existing account");
    // From now on the GitHub identity alone signs in, whatever email it shows.
    let (code, state) = authorize(&app, &fake, "github", "4242", "other@example.com", false, false, "").await;
    let (status, again) = finish(&app, "github", &code, &state).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["user"]["id"], mine["user"]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_nonce_a_foreign_state_or_a_refused_code_ends_the_sign_in() {
    let (app, fake) = spawn_with_fake().await;
    let (code, state) = authorize(&app, &fake, "google", "g-2", "n@example.com", true, true, "").await;
    let (status, body) = finish(&app, "google", &code, &state).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "nonce mismatch: {body}");
    // A state started for Google does not complete a GitHub sign-in.
    let (code, state) = authorize(&app, &fake, "google", "g-3", "s@example.com", true, false, "").await;
    let (status, _) = finish(&app, "github", &code, &state).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A code the provider does not know.
    let (_, state) = authorize(&app, &fake, "google", "g-4", "c@example.com", true, false, "").await;
    let (status, body) = finish(&app, "google", "made-up-code", &state).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = finish(&app, "google", "x", "no-such-state").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&app, "/v1/auth/oauth/facebook/start", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unconfigured providers do not exist");
    app.stop().await;
}

#[tokio::test]
async fn a_browser_sign_in_lands_on_the_app_with_tokens_in_the_fragment() {
    let (app, fake) = spawn_with_fake().await;
    let res = app
        .client
        .get(app.url("/v1/auth/oauth/google/start?redirect_to=//evil.example/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "only paths of the app");
    let (code, state) =
        authorize(&app, &fake, "google", "g-9", "web@example.com", true, false, "?redirect_to=/dashboard")
            .await;
    let res = app
        .client
        .get(app.url(&format!("/v1/auth/oauth/google/callback?code={code}&state={state}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("https://app.signpost.test/dashboard#access_token="), "{location}");
    let fragment: HashMap<String, String> =
        reqwest::Url::parse(&location.replacen('#', "?", 1)).unwrap().query_pairs().into_owned().collect();
    let (status, _) = get(&app, "/v1/auth/me", Some(&fragment["access_token"])).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
