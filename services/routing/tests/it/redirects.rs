//! The public path: rules, pages, targeting, and the click events it records.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::*;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

#[tokio::test]
async fn devices_get_their_destination_with_utm_parameters_and_the_redirect_type_asked_for() {
    let (app, _) = spawn().await;
    let t = token(TenantId::new(), "member");
    create(&app, &t, json!({
        "url": "https://example.com/p?utm_source=kept", "slug": "app-link", "redirect_type": 307,
        "ios_url": "https://apps.apple.com/app/id1", "android_url": "https://play.google.com/store/apps/details?id=x",
        "utm": { "source": "ignored", "medium": "qr", "campaign": "fall" }
    })).await;
    let (status, loc) = visit(&app, "/app-link", &[("user-agent", IPHONE)]).await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        loc.as_deref(),
        Some("https://apps.apple.com/app/id1?utm_source=ignored&utm_medium=qr&utm_campaign=fall")
    );
    let (_, loc) = visit(&app, "/app-link", &[("user-agent", ANDROID)]).await;
    assert!(loc.unwrap().starts_with("https://play.google.com/store/apps/details?id=x&utm_source=ignored"));
    let (_, loc) = visit(&app, "/app-link", &[("user-agent", DESKTOP)]).await;
    assert_eq!(
        loc.as_deref(),
        Some("https://example.com/p?utm_source=kept&utm_medium=qr&utm_campaign=fall"),
        "a parameter already in the destination is not overwritten"
    );
    let res = app.client.head(app.url("/app-link")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    app.stop().await;
}

#[tokio::test]
async fn unknown_expired_and_exhausted_links_get_pages_for_browsers_and_problems_for_apis() {
    let (app, _) = spawn().await;
    let t = token(TenantId::new(), "member");
    let past = "2001-01-01T00:00:00Z";
    create(&app, &t, json!({ "url": "https://example.com/", "slug": "old-with-fallback", "expires_at": past, "expired_url": "https://example.com/sorry" })).await;
    create(&app, &t, json!({ "url": "https://example.com/", "slug": "old-plain", "expires_at": past })).await;
    create(&app, &t, json!({ "url": "https://example.com/limited", "slug": "twice", "max_clicks": 2 })).await;

    assert_eq!(
        visit(&app, "/old-with-fallback", &[]).await,
        (StatusCode::FOUND, Some("https://example.com/sorry".into()))
    );
    let res = app.client.get(app.url("/old-plain")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::GONE);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(res.headers().get("content-security-policy").is_some(), "HTML pages get a CSP");
    let res = app.client.get(app.url("/old-plain")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    let res =
        app.client.get(app.url("/no-such-link")).header("accept", "text/html,*/*").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.text().await.unwrap().contains("Link not found"));
    let res = app.client.get(app.url("/no-such-link")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    for weird in ["/%00%01", "/a", "/x.y.z", "/../etc/passwd"] {
        let status = app.client.get(app.url(weird)).send().await.unwrap().status();
        assert!(status.is_client_error(), "{weird}: {status}");
    }
    let res = app.client.get(app.url("/twice")).header("host", "h".repeat(300)).send().await.unwrap();
    assert!(res.status().is_client_error(), "a huge Host header is refused: {}", res.status());

    // The click limit is exact, even for clicks in parallel: two redirects, the rest 410.
    let burst =
        futures_util::future::join_all((0..8).map(|_| visit(&app, "/twice", &[("user-agent", DESKTOP)])))
            .await;
    let passed = burst.iter().filter(|(s, _)| *s == StatusCode::FOUND).count();
    let gone = burst.iter().filter(|(s, _)| *s == StatusCode::GONE).count();
    assert_eq!((passed, gone), (2, 6), "{burst:?}");
    // A link preview does not use up the limit (and is not let through either).
    assert_eq!(visit(&app, "/twice", &[("user-agent", DESKTOP)]).await.0, StatusCode::GONE);
    app.stop().await;
}

#[tokio::test]
async fn a_protected_link_asks_for_its_password_and_stores_only_a_hash() {
    let (app, sink) = spawn().await;
    let t = token(TenantId::new(), "member");
    let link = create(
        &app,
        &t,
        json!({ "url": "https://example.com/secret", "slug": "locked", "password": "open sesame" }),
    )
    .await;
    assert_eq!(link["password_protected"], true);
    assert!(!link.to_string().contains("open sesame") && !link.to_string().contains("argon2"));
    let res = app.client.get(app.url("/locked")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("type=\"password\""));
    let post = |pw: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/locked"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("password={}", pw.replace(' ', "+")))
                .send()
                .await
                .unwrap()
        }
    };
    let wrong = post("open barley").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = post("open sesame").await;
    assert_eq!(right.status(), StatusCode::FOUND);
    assert_eq!(right.headers()["location"], "https://example.com/secret");
    eventually("one click, for the unlocked visit only", || async {
        let clicks = sink.0.lock().unwrap().len();
        (clicks == 1).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn each_redirect_records_a_classified_click_without_the_address() {
    let (app, sink) = spawn().await;
    let tenant = TenantId::new();
    let t = token(tenant, "member");
    let link = create(&app, &t, json!({ "url": "https://example.com/", "slug": "tracked" })).await;
    visit(&app, "/tracked", &[("user-agent", IPHONE), ("referer", "https://news.example/story?id=1")]).await;
    visit(&app, "/tracked", &[("user-agent", IPHONE)]).await;
    visit(&app, "/tracked", &[("user-agent", DESKTOP)]).await;
    visit(&app, "/tracked", &[("user-agent", "facebookexternalhit/1.1")]).await;
    app.client.head(app.url("/tracked")).header("user-agent", DESKTOP).send().await.unwrap();
    let clicks = eventually("five click events", || async {
        let c = sink.0.lock().unwrap().clone();
        (c.len() >= 5).then_some(c)
    })
    .await;
    assert_eq!(clicks.len(), 5);
    for c in &clicks {
        assert_eq!(c.event_type, "link.clicked");
        assert_eq!(c.tenant_id, tenant);
        assert_eq!(c.data.value()["link_id"], link["id"]);
        let text = c.data.json().to_string();
        assert!(!text.contains("127.0.0.1"), "no raw address in {text}");
        assert_eq!(c.data.value()["visitor"].as_str().unwrap().len(), 32);
    }
    let first = clicks[0].data.value();
    assert_eq!(
        (first["browser"].as_str(), first["os"].as_str(), first["device"].as_str(), first["bot"].as_str()),
        (Some("safari"), Some("ios"), Some("mobile"), Some("human"))
    );
    assert_eq!(first["referrer_host"], "news.example");
    assert_eq!(
        clicks[0].data.value()["visitor"],
        clicks[1].data.value()["visitor"],
        "the same visitor on the same day"
    );
    assert_ne!(
        clicks[0].data.value()["visitor"],
        clicks[2].data.value()["visitor"],
        "another browser is another visitor"
    );
    assert_eq!(clicks[2].data.value()["device"], "desktop");
    assert_eq!(clicks[3].data.value()["bot"], "link-preview");
    assert_eq!(clicks[4].data.value()["bot"], "head-probe");
    // The API never shows clicks of another tenant's link to this one's caller.
    let (status, _) = call(
        &app,
        Method::GET,
        &format!("/v1/links/{}", link["id"].as_str().unwrap()),
        Some(&token(TenantId::new(), "owner")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}
