//! Countries from a MaxMind-format database (built here, byte by byte, to the
//! MaxMind DB spec): click events carry them, and `geo` targets follow them.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::*;

fn text(s: &str) -> Vec<u8> {
    let mut out = vec![0x40 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// `{country: {iso_code: code}}`
fn country(code: &str) -> Vec<u8> {
    let mut out = vec![0xE1];
    out.extend(text("country"));
    out.push(0xE1);
    out.extend(text("iso_code"));
    out.extend(text(code));
    out
}

/// An IPv4 database of one node: 0.0.0.0/1 is DE, 128.0.0.0/1 is FR.
fn mmdb() -> Vec<u8> {
    let (de, fr) = (country("DE"), country("FR"));
    let node_count = 1u32;
    // Records point past the tree and the 16-byte separator into the data section.
    let left = node_count + 16;
    let right = node_count + 16 + de.len() as u32;
    let mut db = Vec::new();
    db.extend_from_slice(&left.to_be_bytes()[1..]);
    db.extend_from_slice(&right.to_be_bytes()[1..]);
    db.extend_from_slice(&[0u8; 16]);
    db.extend(de);
    db.extend(fr);
    db.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    db.push(0xE9);
    db.extend(text("binary_format_major_version"));
    db.extend_from_slice(&[0xA1, 2]);
    db.extend(text("binary_format_minor_version"));
    db.push(0xA0);
    db.extend(text("build_epoch"));
    db.extend_from_slice(&[0x04, 0x02]);
    db.extend_from_slice(&1_800_000_000u32.to_be_bytes());
    db.extend(text("database_type"));
    db.extend(text("Signpost-Test-Country"));
    db.extend(text("description"));
    db.push(0xE0);
    db.extend(text("ip_version"));
    db.extend_from_slice(&[0xA1, 4]);
    db.extend(text("languages"));
    db.extend_from_slice(&[0x00, 0x04]);
    db.extend(text("node_count"));
    db.extend_from_slice(&[0xC1, node_count as u8]);
    db.extend(text("record_size"));
    db.extend_from_slice(&[0xA1, 24]);
    db
}

#[tokio::test]
async fn clicks_carry_the_visitors_country_and_geo_targets_follow_it() {
    let path = std::env::temp_dir().join(format!("signpost-geo-{}.mmdb", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, mmdb()).unwrap();
    let db = path.display().to_string();
    let (app, sink) = spawn_with(&[("GEOIP_DB", &db), ("SIGNPOST_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let t = token(TenantId::new(), "member");
    create(&app, &t, json!({ "url": "https://example.com/", "slug": "by-country", "geo": { "fr": "https://example.fr/" } })).await;
    let (_, loc) = visit(&app, "/by-country", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(loc.as_deref(), Some("https://example.fr/"), "128.0.0.0/1 is France in this database");
    let (_, loc) = visit(&app, "/by-country", &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(loc.as_deref(), Some("https://example.com/"), "Germany has no target: the default");
    let clicks = eventually("two clicks", || async {
        let c = sink.0.lock().unwrap().clone();
        (c.len() >= 2).then_some(c)
    })
    .await;
    assert_eq!(clicks[0].data.value()["country"], "FR");
    assert_eq!(clicks[1].data.value()["country"], "DE");
    let (status, _) = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
    let _ = std::fs::remove_file(path);
}
