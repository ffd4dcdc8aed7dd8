//! Tracking pixels: a link with pixels asks for consent first and fires them
//! only after a yes; links without pixels stay plain redirects.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::*;

#[tokio::test]
async fn pixels_fire_only_after_consent_and_every_answer_records_one_click() {
    let (app, sink) = spawn().await;
    let tenant = TenantId::new();
    let t = token(tenant, "member");
    for (kind, bad) in [("meta", "abc"), ("ga4", "UA-1234"), ("google_ads", "12345678"), ("pinterest", "123")]
    {
        let (status, _) =
            call(&app, Method::POST, "/v1/pixels", Some(&t), Some(json!({ "kind": kind, "pixel_id": bad })))
                .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{kind} {bad}");
    }
    let (status, meta) = call(
        &app,
        Method::POST,
        "/v1/pixels",
        Some(&t),
        Some(json!({ "kind": "meta", "pixel_id": "1234567890123", "name": "Shop" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{meta}");
    let (_, li) = call(
        &app,
        Method::POST,
        "/v1/pixels",
        Some(&t),
        Some(json!({ "kind": "linkedin", "pixel_id": "987654" })),
    )
    .await;
    let link = create(&app, &t, json!({ "url": "https://example.com/sale", "slug": "tracked-sale", "pixels": [meta["id"], li["id"]] })).await;
    assert_eq!(link["pixels"], json!([meta["id"], li["id"]]));

    let res = app.client.get(app.url("/tracked-sale")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "a consent page, not a redirect");
    let page = res.text().await.unwrap();
    assert!(page.contains("Meta") && page.contains("LinkedIn"), "{page}");
    assert!(page.contains("/tracked-sale?consent=yes") && page.contains("/tracked-sale?consent=no"));
    assert!(
        !page.contains("facebook.com") && !page.contains("linkedin.com/collect"),
        "nothing fires before consent"
    );

    let (status, loc) = visit(&app, "/tracked-sale?consent=no", &[]).await;
    assert_eq!((status, loc.as_deref()), (StatusCode::FOUND, Some("https://example.com/sale")));
    let res = app.client.get(app.url("/tracked-sale?consent=yes")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("https://www.facebook.com") && csp.contains("https://px.ads.linkedin.com"), "{csp}");
    let page = res.text().await.unwrap();
    assert!(page.contains("https://www.facebook.com/tr?id=1234567890123"), "{page}");
    assert!(page.contains("https://px.ads.linkedin.com/collect/?pid=987654"));
    assert!(page.contains("url=https://example.com/sale"), "then forwards: {page}");

    let clicks = eventually("a click per answered choice", || async {
        let c = sink.0.lock().unwrap().len();
        (c >= 2).then_some(c)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(sink.0.lock().unwrap().len(), clicks);
    assert_eq!(clicks, 2, "the consent page itself is not a click");

    // Another workspace can neither see nor use these pixels.
    let b = token(TenantId::new(), "member");
    let (_, theirs) = call(&app, Method::GET, "/v1/pixels", Some(&b), None).await;
    assert_eq!(theirs["items"].as_array().unwrap().len(), 0);
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/links",
        Some(&b),
        Some(json!({ "url": "https://x.example/", "pixels": [meta["id"]] })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) =
        call(&app, Method::DELETE, &format!("/v1/pixels/{}", meta["id"].as_str().unwrap()), Some(&b), None)
            .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}
