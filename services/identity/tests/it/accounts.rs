//! Accounts, passwords, login throttling, tokens and sessions.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::*;

#[tokio::test]
async fn register_returns_a_workspace_and_tokens_that_the_gateway_accepts() {
    let app = spawn(&[]).await;
    let body = register(&app, "Ann@Example.COM").await;
    assert_eq!(body["user"]["email"], "ann@example.com", "emails are stored normalized");
    assert_eq!(body["workspace"]["role"], "owner");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900, "access tokens live 15 minutes");
    assert!(body["refresh_token"].as_str().unwrap().len() >= 43);
    let token = access(&body);
    // An Ed25519 token whose kid is published in the JWKS.
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let (status, jwks) = get(&app, "/v1/auth/.well-known/jwks.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert!(jwks["keys"][0].get("d").is_none(), "no private part is published");

    let (status, me) = get(&app, "/v1/auth/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["id"], body["user"]["id"]);
    assert_eq!(me["workspace"]["id"], body["workspace"]["id"]);
    assert_eq!(me["role"], "owner");

    let (status, again) = login(&app, "ANN@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["workspace"]["id"], body["workspace"]["id"], "login lands in the last workspace");
    let (status, _) = get(&app, "/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn the_signing_key_survives_a_restart() {
    // The issuer is the public URL, which a test restart would change with the port.
    let app = spawn(&[("SIGNPOST_JWT_ISSUER", "https://signpost.test")]).await;
    let token = access(&register(&app, "keep@example.com").await);
    let app = app.restart_with(services(), &[]).await;
    let (status, _) = get(&app, "/v1/auth/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "a token from before the restart still verifies");
    app.stop().await;
}

#[tokio::test]
async fn passwords_of_8_to_128_characters_of_any_kind_are_accepted_as_typed() {
    let app = spawn(&[]).await;
    for (i, (pw, ok)) in [
        ("1234567", false),
        ("12345678", true),
        ("ñandú ñandú", true),
        ("密码密码密码密码", true),
        ("🔑🔑🔑🔑🔑🔑🔑🔑", true),
        ("        ", true),
        (&"a".repeat(128)[..], true),
        (&"a".repeat(129)[..], false),
    ]
    .into_iter()
    .enumerate()
    {
        let email = format!("pw{i}@example.com");
        let (status, body) =
            post(&app, "/v1/auth/register", None, json!({ "email": email, "password": pw, "name": "P" }))
                .await;
        if ok {
            assert_eq!(status, StatusCode::CREATED, "{pw:?}: {body}");
            let (status, _) = login(&app, &email, pw).await;
            assert_eq!(status, StatusCode::OK, "{pw:?} logs in exactly as typed");
        } else {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{pw:?}: {body}");
            assert_eq!(body["errors"][0]["field"], "password");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn stored_hashes_are_argon2id_and_are_upgraded_at_the_next_login() {
    let app = spawn(&[]).await;
    register(&app, "hash@example.com").await;
    let before = stored_hash(&app, "hash@example.com").await;
    assert!(before.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{before}");
    let app = app.restart_with(services(), &[("SIGNPOST_ARGON2_ITERATIONS", "3")]).await;
    let (status, _) = login(&app, "hash@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let after = stored_hash(&app, "hash@example.com").await;
    assert!(after.starts_with("$argon2id$v=19$m=19456,t=3,p=1$"), "rehashed: {after}");
    let (status, _) = login(&app, "hash@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "the new hash verifies");
    app.stop().await;
}

#[tokio::test]
async fn unknown_account_and_wrong_password_are_indistinguishable() {
    let app =
        spawn(&[("SIGNPOST_LOGIN_LIMIT_ACCOUNT", "100/900s"), ("SIGNPOST_LOGIN_LIMIT_IP", "100/900s")]).await;
    register(&app, "real@example.com").await;
    let (s1, b1) = login(&app, "real@example.com", "wrong password").await;
    let (s2, b2) = login(&app, "nobody@example.com", "wrong password").await;
    assert_eq!(s1, StatusCode::UNAUTHORIZED);
    assert_eq!((s1, &b1), (s2, &b2), "same status and body");
    // Timing: the unknown account pays a dummy hash, so it is not the fast one.
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        login(&app, "real@example.com", "wrong password").await;
        wrong.push(t.elapsed());
        let t = Instant::now();
        login(&app, "ghost@example.com", "wrong password").await;
        unknown.push(t.elapsed());
    }
    wrong.sort();
    unknown.sort();
    let (w, u) = (wrong[2].as_secs_f64(), unknown[2].as_secs_f64());
    assert!(u > w * 0.5 && u < w * 2.0, "median wrong password {w:.4}s vs unknown account {u:.4}s");
    app.stop().await;
}

#[tokio::test]
async fn five_failures_lock_an_account_exactly_even_in_parallel_and_reset_still_works() {
    let app = spawn(&[]).await;
    register(&app, "target@example.com").await;
    let attempts = (0..12).map(|i| {
        let app = &app;
        async move { login(app, "target@example.com", &format!("guess number {i}")).await.0 }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let unauthorized = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((unauthorized, limited), (5, 7), "exactly 5 passwords were checked: {statuses:?}");
    // Locked for the rest of the window, even with the right password.
    let res = app
        .client
        .post(app.url("/v1/auth/login"))
        .json(&json!({ "email": "target@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 800 && retry <= 900, "locked for the rest of 15 minutes: {retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], "/problems/rate-limited");

    // Unknown accounts lock the same way.
    let mut ghost = Vec::new();
    for _ in 0..6 {
        ghost.push(login(&app, "ghost@example.com", "whatever it is").await.0);
    }
    assert_eq!(&ghost[..5], &[StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(ghost[5], StatusCode::TOO_MANY_REQUESTS);

    // Password reset still works, and lifts the lock.
    let (status, _) =
        post(&app, "/v1/auth/password-reset/request", None, json!({ "email": "target@example.com" })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = token_in(&last_mail(&app, "target@example.com", "Reset").await, "Reset");
    let (status, body) = post(
        &app,
        "/v1/auth/password-reset/confirm",
        None,
        json!({ "token": token, "password": "a brand new password" }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = login(&app, "target@example.com", "a brand new password").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn failures_from_one_address_are_limited_across_accounts() {
    let app = spawn(&[("SIGNPOST_LOGIN_LIMIT_IP", "4/900s")]).await;
    register(&app, "office@example.com").await;
    for i in 0..4 {
        let (status, _) = login(&app, &format!("user{i}@example.com"), "not the password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = login(&app, "someone-else@example.com", "not the password").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the fifth failure from this address");
    let (status, _) = login(&app, "office@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the address is limited for everyone");
    app.stop().await;
}

#[tokio::test]
async fn successful_logins_do_not_count_against_the_limits() {
    let app =
        spawn(&[("SIGNPOST_LOGIN_LIMIT_IP", "3/900s"), ("SIGNPOST_LOGIN_LIMIT_ACCOUNT", "3/900s")]).await;
    register(&app, "busy@example.com").await;
    for _ in 0..8 {
        let (status, _) = login(&app, "busy@example.com", PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "an office full of people signing in is not an attack");
    }
    app.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_of_a_spent_token_revokes_the_whole_family() {
    let app = spawn(&[]).await;
    let first = register(&app, "rot@example.com").await;
    let r1 = first["refresh_token"].as_str().unwrap().to_string();
    let (status, second) = post(&app, "/v1/auth/refresh", None, json!({ "refresh_token": r1 })).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2, "rotated");
    let a2 = access(&second);
    assert_eq!(get(&app, "/v1/auth/me", Some(&a2)).await.0, StatusCode::OK);

    // r1 again: reuse. The session ends: r2 and every access token of it die.
    let (status, _) = post(&app, "/v1/auth/refresh", None, json!({ "refresh_token": r1 })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&app, "/v1/auth/refresh", None, json!({ "refresh_token": r2 })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the family is revoked");
    assert_eq!(get(&app, "/v1/auth/me", Some(&a2)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&app, "/v1/auth/me", Some(&access(&first))).await.0, StatusCode::UNAUTHORIZED);

    let (status, body) =
        post(&app, "/v1/auth/refresh", None, json!({ "refresh_token": "spr_made_up" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn refresh_tokens_die_with_the_session_at_its_maximum_age() {
    let app = spawn(&[("SIGNPOST_SESSION_MAX_AGE", "300")]).await;
    let body = register(&app, "old@example.com").await;
    let (status, sessions) = get(&app, "/v1/auth/sessions", Some(&access(&body))).await;
    assert_eq!(status, StatusCode::OK);
    let s = &sessions["items"][0];
    let created = time::OffsetDateTime::parse(
        s["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expires = time::OffsetDateTime::parse(
        s["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((expires - created).whole_seconds(), 300, "a refresh family has a maximum age");
    app.stop().await;
}

#[tokio::test]
async fn logout_ends_the_session_at_the_gateway_at_once() {
    let app = spawn(&[]).await;
    let body = register(&app, "bye@example.com").await;
    let token = access(&body);
    let (status, _) = post(&app, "/v1/auth/logout", Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem) = get(&app, "/v1/auth/me", Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    let (status, _) =
        post(&app, "/v1/auth/refresh", None, json!({ "refresh_token": body["refresh_token"] })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn users_list_and_revoke_their_own_sessions() {
    let app = spawn(&[]).await;
    let first = register(&app, "many@example.com").await;
    let (_, second) = login(&app, "many@example.com", PASSWORD).await;
    let (a1, a2) = (access(&first), access(&second));
    let (status, list) = get(&app, "/v1/auth/sessions", Some(&a1)).await;
    assert_eq!(status, StatusCode::OK);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    let other = items.iter().find(|s| s["current"] == false).unwrap()["id"].as_str().unwrap().to_string();
    let (status, _) = delete(&app, &format!("/v1/auth/sessions/{other}"), Some(&a1)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(get(&app, "/v1/auth/me", Some(&a2)).await.0, StatusCode::UNAUTHORIZED, "revoked at once");
    assert_eq!(get(&app, "/v1/auth/me", Some(&a1)).await.0, StatusCode::OK);
    // Someone else's session is not found.
    let stranger = register(&app, "stranger@example.com").await;
    let (_, theirs) = get(&app, "/v1/auth/sessions", Some(&access(&stranger))).await;
    let theirs = theirs["items"][0]["id"].as_str().unwrap();
    assert_eq!(
        delete(&app, &format!("/v1/auth/sessions/{theirs}"), Some(&a1)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&app, "/v1/auth/me", Some(&access(&stranger))).await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn password_reset_is_single_use_ends_every_session_and_does_not_log_in() {
    let app = spawn(&[("SIGNPOST_APP_URL", "https://app.signpost.test")]).await;
    let body = register(&app, "forgot@example.com").await;
    let token = access(&body);
    // Unknown and known emails get the same answer; the Host header never makes the link.
    let res = app
        .client
        .post(app.url("/v1/auth/password-reset/request"))
        .header("host", "evil.example")
        .json(&json!({ "email": "forgot@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let (status, _) =
        post(&app, "/v1/auth/password-reset/request", None, json!({ "email": "nobody@example.com" })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mail = last_mail(&app, "forgot@example.com", "Reset").await;
    assert!(mail.contains("https://app.signpost.test/reset-password?token="), "{mail}");
    assert!(!mail.contains("evil.example"));
    let first = token_in(&mail, "Reset");
    assert!(first.len() >= 22, "at least 128 bits");

    // A newer token invalidates the older one.
    post(&app, "/v1/auth/password-reset/request", None, json!({ "email": "forgot@example.com" })).await;
    let second = eventually("a second reset email", || async {
        let t = token_in(&last_mail(&app, "forgot@example.com", "Reset").await, "Reset");
        (t != first).then_some(t)
    })
    .await;
    let confirm = |t: String| {
        post(
            &app,
            "/v1/auth/password-reset/confirm",
            None,
            json!({ "token": t, "password": "new secret words" }),
        )
    };
    let (status, _) = confirm(first.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "superseded");
    let (status, body) = confirm(second.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null, "no tokens: the user signs in anew");
    let (status, _) = confirm(second).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "single use");

    assert_eq!(get(&app, "/v1/auth/me", Some(&token)).await.0, StatusCode::UNAUTHORIZED, "sessions revoked");
    assert_eq!(login(&app, "forgot@example.com", PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&app, "forgot@example.com", "new secret words").await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_password_change_needs_the_current_one_keeps_this_session_and_ends_the_others() {
    let app = spawn(&[]).await;
    let mine = register(&app, "change@example.com").await;
    let (_, other) = login(&app, "change@example.com", PASSWORD).await;
    let token = access(&mine);
    let (status, body) = post(
        &app,
        "/v1/auth/password",
        Some(&token),
        json!({ "current_password": "not it at all", "new_password": "fresh password" }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = post(
        &app,
        "/v1/auth/password",
        Some(&token),
        json!({ "current_password": PASSWORD, "new_password": "fresh password" }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(get(&app, "/v1/auth/me", Some(&token)).await.0, StatusCode::OK);
    assert_eq!(get(&app, "/v1/auth/me", Some(&access(&other))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&app, "change@example.com", "fresh password").await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn an_emailed_link_verifies_the_address_once() {
    let app = spawn(&[]).await;
    let body = register(&app, "verify@example.com").await;
    assert_eq!(body["user"]["email_verified"], false);
    let token = token_in(&last_mail(&app, "verify@example.com", "Verification").await, "Verification");
    let (status, _) = post(&app, "/v1/auth/verify-email", None, json!({ "token": token })).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = post(&app, "/v1/auth/verify-email", None, json!({ "token": token })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "single use");
    let (_, me) = get(&app, "/v1/auth/me", Some(&access(&body))).await;
    assert_eq!(me["user"]["email_verified"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_logins_does_not_stall_other_requests() {
    let app =
        spawn(&[("SIGNPOST_LOGIN_LIMIT_ACCOUNT", "1000/900s"), ("SIGNPOST_LOGIN_LIMIT_IP", "1000/900s")])
            .await;
    register(&app, "flood@example.com").await;
    let started = Instant::now();
    let flood =
        futures_util::future::join_all((0..40).map(|_| login(&app, "flood@example.com", "wrong password")));
    let probe = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut worst = Duration::ZERO;
        for _ in 0..10 {
            let t = Instant::now();
            let res = app.client.get(app.url("/healthz")).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worst
    };
    let (results, worst) = tokio::join!(flood, probe);
    let flood_time = started.elapsed();
    assert!(results.iter().all(|(s, _)| *s == StatusCode::UNAUTHORIZED));
    // The hashes queue on their own threads; the runtime keeps answering.
    assert!(worst < flood_time / 3, "slowest health check {worst:?} while 40 logins took {flood_time:?}");
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_problem_json_and_changes_nothing() {
    let app = spawn(&[]).await;
    register(&app, "solid@example.com").await;
    for (path, body) in [
        ("/v1/auth/register", "{not json"),
        (
            "/v1/auth/register",
            r#"{"email":"x@example.com","password":"long enough","name":"X","role":"admin"}"#,
        ),
        ("/v1/auth/register", r#"{"email":"not-an-email","password":"long enough","name":"X"}"#),
        ("/v1/auth/register", r#"{"email":"solid@example.com","password":"long enough","name":""}"#),
        ("/v1/auth/register", r#"{"email":"y@example.com","password":12345678,"name":"Y"}"#),
        ("/v1/auth/login", r#"{"email":"solid@example.com"}"#),
        ("/v1/auth/refresh", r#"{"refresh_token":null}"#),
        ("/v1/auth/password-reset/confirm", r#"{"token":"x","password":"short"}"#),
    ] {
        let res = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert!(status.is_client_error(), "{path} {body}: {status}");
        assert_eq!(res.headers()["content-type"], "application/problem+json", "{path} {body}");
    }
    let (status, body) = post(
        &app,
        "/v1/auth/register",
        None,
        json!({ "email": "solid@example.com", "password": PASSWORD, "name": "Again" }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(login(&app, "solid@example.com", PASSWORD).await.0, StatusCode::OK, "the account is intact");
    app.stop().await;
}
