//! Custom domains: verified through a DNS TXT record served by the test's own
//! DNS server, then answering `(Host, slug)`; unknown hosts get 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::*;

type Records = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// A DNS server (UDP) answering TXT queries from `records`.
async fn serve_dns(records: Records) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else { return };
            let q = &buf[..n];
            let (mut pos, mut labels) = (12, Vec::new());
            while pos < n && q[pos] != 0 {
                let len = q[pos] as usize;
                labels.push(String::from_utf8_lossy(&q[pos + 1..pos + 1 + len]).to_lowercase());
                pos += 1 + len;
            }
            let end = pos + 5;
            let qtype = u16::from_be_bytes([q[pos + 1], q[pos + 2]]);
            let name = labels.join(".");
            let answers = if qtype == 16 {
                records.lock().unwrap().get(&name).cloned().unwrap_or_default()
            } else {
                vec![]
            };
            let mut r = vec![q[0], q[1], 0x81, 0x80, 0, 1];
            r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
            r.extend_from_slice(&[0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end]);
            for a in answers {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 16, 0, 1, 0, 0, 0, 60]);
                r.extend_from_slice(&((a.len() + 1) as u16).to_be_bytes());
                r.push(a.len() as u8);
                r.extend_from_slice(a.as_bytes());
            }
            let _ = sock.send_to(&r, peer).await;
        }
    });
    addr
}

async fn get_host(app: &TestApp, path: &str, host: &str) -> (StatusCode, Option<String>) {
    let res = app.client.get(app.url(path)).header("host", host).send().await.unwrap();
    (res.status(), res.headers().get("location").map(|v| v.to_str().unwrap().to_string()))
}

#[tokio::test]
async fn a_domain_verified_by_dns_serves_its_links_and_unknown_hosts_get_404() {
    let records: Records = Arc::default();
    let dns = serve_dns(records.clone()).await;
    let (app, _) = spawn_with(&[("SIGNPOST_DNS_SERVER", &dns.to_string())]).await;
    let a_tenant = TenantId::new();
    let (admin, member) = (token(a_tenant, "admin"), token(a_tenant, "member"));
    let (status, _) =
        call(&app, Method::POST, "/v1/domains", Some(&member), Some(json!({ "hostname": "go.example.com" })))
            .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "domains are an admin's business");
    for bad in ["localhost", "127.0.0.1", "http://x.example/", "no_dots", "a..b.example"] {
        let (status, _) =
            call(&app, Method::POST, "/v1/domains", Some(&admin), Some(json!({ "hostname": bad }))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let (status, d) =
        call(&app, Method::POST, "/v1/domains", Some(&admin), Some(json!({ "hostname": "Go.Example.com." })))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    assert_eq!(d["hostname"], "go.example.com");
    assert_eq!(d["verification"]["name"], "_signpost-verification.go.example.com");
    let id = d["id"].as_str().unwrap().to_string();
    let (status, body) =
        call(&app, Method::POST, &format!("/v1/domains/{id}/verify"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "no TXT record yet: {body}");
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/links",
        Some(&admin),
        Some(json!({ "url": "https://x.example/", "domain": "go.example.com" })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "not verified yet");

    records.lock().unwrap().insert(
        "_signpost-verification.go.example.com".into(),
        vec!["unrelated".into(), d["verification"]["value"].as_str().unwrap().into()],
    );
    let (status, verified) =
        call(&app, Method::POST, &format!("/v1/domains/{id}/verify"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["verified"], true);

    let link = create(
        &app,
        &admin,
        json!({ "url": "https://example.com/promo", "slug": "promo", "domain": "go.example.com" }),
    )
    .await;
    assert_eq!(link["short_url"], "http://go.example.com/promo");
    // Routing learns of the domain from its domain.verified event.
    let answer = eventually("the verified domain to answer", || async {
        let r = get_host(&app, "/promo", "go.example.com").await;
        (r.0 != StatusCode::NOT_FOUND).then_some(r)
    })
    .await;
    assert_eq!(answer, (StatusCode::FOUND, Some("https://example.com/promo".into())));
    assert_eq!(get_host(&app, "/promo", "GO.EXAMPLE.COM:443").await.0, StatusCode::FOUND);
    assert_eq!(
        visit(&app, "/promo", &[]).await.0,
        StatusCode::NOT_FOUND,
        "the slug lives on its domain only"
    );
    assert_eq!(get_host(&app, "/promo", "evil.example").await.0, StatusCode::NOT_FOUND, "an unknown host");
    // The same slug is free on another domain.
    create(&app, &admin, json!({ "url": "https://example.com/other", "slug": "promo" })).await;
    assert_eq!(visit(&app, "/promo", &[]).await.1.as_deref(), Some("https://example.com/other"));

    // Another workspace may claim the hostname but never verify it.
    let b = token(TenantId::new(), "admin");
    let (status, theirs) =
        call(&app, Method::POST, "/v1/domains", Some(&b), Some(json!({ "hostname": "go.example.com" })))
            .await;
    assert_eq!(status, StatusCode::CREATED);
    records
        .lock()
        .unwrap()
        .get_mut("_signpost-verification.go.example.com")
        .unwrap()
        .push(theirs["verification"]["value"].as_str().unwrap().into());
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/domains/{}/verify", theirs["id"].as_str().unwrap()),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (method, path) in
        [(Method::GET, format!("/v1/domains/{id}")), (Method::DELETE, format!("/v1/domains/{id}"))]
    {
        assert_eq!(
            call(&app, method.clone(), &path, Some(&b), None).await.0,
            StatusCode::NOT_FOUND,
            "{method} {path}"
        );
    }

    // The default domain carries new links.
    let (status, def) =
        call(&app, Method::POST, &format!("/v1/domains/{id}/default"), Some(&admin), None).await;
    assert_eq!((status, &def["default"]), (StatusCode::OK, &json!(true)));
    let plain = create(&app, &admin, json!({ "url": "https://example.com/d" })).await;
    assert!(plain["short_url"].as_str().unwrap().starts_with("http://go.example.com/"));

    // Removing the domain ends its links' redirects.
    assert_eq!(
        call(&app, Method::DELETE, &format!("/v1/domains/{id}"), Some(&admin), None).await.0,
        StatusCode::NO_CONTENT
    );
    eventually("the removed domain to stop answering", || async {
        (get_host(&app, "/promo", "go.example.com").await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_removed_domain_is_not_brought_back_by_a_verification_applied_after_the_removal() {
    let (app, _) = spawn().await;
    let db = app.db("routing");
    let known = |host: &'static str| {
        let db = db.clone();
        async move {
            const KNOWN: &str = "select hostname from routing.domains where hostname = $1";
            db.global_optional::<(String,)>(KNOWN, &[host]).await.unwrap().is_some()
        }
    };
    let event = |kind: &str, tenant: TenantId, id: uuid::Uuid, hostname: &str, version: i64| {
        let data = json!({ "domain_id": id, "hostname": hostname, "tenant_id": tenant, "version": version });
        Envelope::new(kind, tenant, "system", data)
    };
    let bus = &app.kernel.bus;
    let publish = |events: Vec<Envelope>| async move { bus.publish(&events).await.unwrap() };
    let (a, b) = (TenantId::new(), TenantId::new());
    let (mine, marker, theirs) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;

    publish(vec![event("domain.verified", a, mine, "go.example.com", second)]).await;
    eventually("the domain to be known", || async { known("go.example.com").await.then_some(()) }).await;
    publish(vec![event("domain.deleted", a, mine, "go.example.com", second)]).await;
    eventually("the domain to be removed", || async { (!known("go.example.com").await).then_some(()) }).await;
    // Verifications and removals travel on consumers of their own: the same
    // second's verification can be applied after the removal.
    publish(vec![
        event("domain.verified", a, mine, "go.example.com", second),
        event("domain.verified", a, marker, "marker.example.com", second),
    ])
    .await;
    // Verifications are applied in order: once the marker is known, the late one was applied too.
    eventually("the marker", || async { known("marker.example.com").await.then_some(()) }).await;
    assert!(!known("go.example.com").await, "the removal stands");

    // Another workspace verifies the freed hostname; the first one's late removal leaves it.
    publish(vec![event("domain.verified", b, theirs, "go.example.com", second + 1)]).await;
    eventually("the hostname to move on", || async { known("go.example.com").await.then_some(()) }).await;
    publish(vec![
        event("domain.deleted", a, mine, "go.example.com", second),
        event("domain.deleted", a, marker, "marker.example.com", second),
    ])
    .await;
    eventually("the marker's removal", || async { (!known("marker.example.com").await).then_some(()) }).await;
    assert!(known("go.example.com").await, "another domain's removal does not remove this one");
    app.stop().await;
}
