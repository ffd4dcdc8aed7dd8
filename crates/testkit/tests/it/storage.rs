//! Object storage: local directory or S3, with signed URLs that really work
//! (served by us locally, presigned against the S3 server otherwise).

use std::time::Duration;

use bytes::Bytes;
use kernel::TenantId;
use kernel::storage::{ObjectKey, UrlMethod};
use testkit::TestApp;

#[tokio::test]
async fn objects_round_trip_under_a_tenant_prefix() {
    let app = TestApp::spawn().await;
    let s = &app.kernel.storage;
    let key = ObjectKey::for_tenant(TenantId::new(), "qr/logo.png").unwrap_or_else(|e| panic!("{e}"));
    assert!(key.as_str().starts_with("t/"));
    s.put(&key, Bytes::from_static(b"\x89PNG fake")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.get(&key).await.ok().flatten().as_deref(), Some(&b"\x89PNG fake"[..]));
    s.delete(&key).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.get(&key).await.ok().flatten(), None);
    s.delete(&key).await.unwrap_or_else(|e| panic!("deleting twice is fine: {e}"));
    app.stop().await;
}

#[tokio::test]
async fn signed_urls_upload_and_download_without_credentials() {
    let app = TestApp::spawn().await;
    let s = &app.kernel.storage;
    let key = ObjectKey::for_tenant(TenantId::new(), "upload.bin").unwrap_or_else(|e| panic!("{e}"));
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let put =
        s.signed_url(UrlMethod::Put, &key, Duration::from_secs(300)).await.unwrap_or_else(|e| panic!("{e}"));
    let res = app.client.put(&put).body(body.clone()).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(res.status().is_success(), "PUT {}: {}", res.status(), res.text().await.unwrap_or_default());
    let get =
        s.signed_url(UrlMethod::Get, &key, Duration::from_secs(300)).await.unwrap_or_else(|e| panic!("{e}"));
    let res = app.client.get(&get).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 200);
    if s.serves_signed_urls() {
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(res.bytes().await.ok().as_deref(), Some(&body[..]));
    // The GET URL does not grant PUT, and a changed signature grants nothing.
    let res = app.client.put(&get).body("overwrite").send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 403, "a GET URL cannot upload");
    let tampered = tamper(&get);
    let res = app.client.get(&tampered).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 403, "tampered signature");
    assert_eq!(s.get(&key).await.ok().flatten().map(|b| b.len()), Some(body.len()), "object unchanged");
    app.stop().await;
}

#[tokio::test]
async fn an_expired_signed_url_is_refused() {
    let app = TestApp::spawn().await;
    let s = &app.kernel.storage;
    let key = ObjectKey::for_tenant(TenantId::new(), "soon-gone.txt").unwrap_or_else(|e| panic!("{e}"));
    s.put(&key, Bytes::from_static(b"x")).await.unwrap_or_else(|e| panic!("{e}"));
    let get =
        s.signed_url(UrlMethod::Get, &key, Duration::from_secs(1)).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let res = app.client.get(&get).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 403);
    app.stop().await;
}

fn tamper(url: &str) -> String {
    // Flip one character of the signature parameter (ours or S3's).
    for name in ["signature=", "X-Amz-Signature="] {
        if let Some(i) = url.find(name) {
            let at = i + name.len();
            let mut chars: Vec<char> = url.chars().collect();
            chars[at] = if chars[at] == 'a' { 'b' } else { 'a' };
            return chars.into_iter().collect();
        }
    }
    panic!("no signature in {url}");
}
