//! Cursor pagination over a list.

use std::collections::HashSet;

use kernel::TenantId;
use testkit::TestApp;

use crate::create_note;

#[tokio::test]
async fn cursor_pages_walk_every_item_once_in_order() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            create_note(&app, tenant, &format!("note {i}")).await["id"].as_str().unwrap_or("").to_string(),
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = app.url("/v1/fixture/notes?limit=3");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = crate::get_json(&app, &url, tenant).await;
        pages += 1;
        for item in page["items"].as_array().cloned().unwrap_or_default() {
            seen.push(item["id"].as_str().unwrap_or("").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "pagination terminates");
    }
    assert_eq!(pages, 3, "7 items at 3 per page");
    assert_eq!(seen, created, "every item once, in creation order");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
    app.stop().await;
}

#[tokio::test]
async fn bad_page_parameters_are_client_errors() {
    let app = TestApp::spawn().await;
    let tenant = TenantId::new();
    for (query, status) in [
        ("limit=0", 422),
        ("limit=100000", 422),
        ("limit=abc", 400),
        ("cursor=%%%", 400),
        ("cursor=bm90LWEtdXVpZA", 400),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/v1/fixture/notes?{query}")))
            .header("x-tenant-id", tenant.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.status().as_u16(), status, "{query}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    app.stop().await;
}
