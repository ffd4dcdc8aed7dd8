//! `/v1/links`: create, validate, list, update, delete; tenancy and roles.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::*;

#[tokio::test]
async fn a_new_link_redirects_the_moment_its_create_call_returns() {
    let (app, _) = spawn().await;
    let t = token(TenantId::new(), "member");
    for i in 0..5 {
        let link = create(&app, &t, json!({ "url": format!("https://example.com/{i}") })).await;
        let slug = link["slug"].as_str().unwrap();
        assert_eq!(slug.len(), 7, "generated slugs have 7 characters");
        assert!(slug.bytes().all(|b| b.is_ascii_alphanumeric()), "base62: {slug}");
        assert_eq!(link["short_url"], app.url(&format!("/{slug}")));
        let (status, loc) = visit(&app, &format!("/{slug}"), &[]).await;
        assert_eq!(status, StatusCode::FOUND, "no wait for the read model");
        assert_eq!(loc.as_deref(), Some(format!("https://example.com/{i}").as_str()));
    }
    app.stop().await;
}

#[tokio::test]
async fn slugs_and_destinations_are_validated() {
    let (app, _) = spawn().await;
    let (a, b) = (token(TenantId::new(), "member"), token(TenantId::new(), "member"));
    create(&app, &a, json!({ "url": "https://example.com", "slug": "taken-slug" })).await;
    let cases = [
        (json!({ "url": "https://example.com", "slug": "v1" }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "url": "https://example.com", "slug": "healthz" }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "url": "https://example.com", "slug": "has space" }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "url": "https://example.com", "slug": "taken-slug" }), StatusCode::CONFLICT),
        (json!({ "url": "javascript:alert(1)" }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "url": "ftp://example.com/file" }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "url": "https://user:pw@example.com/" }), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({ "url": format!("https://example.com/{}", "a".repeat(2100)) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({ "url": "https://example.com", "redirect_type": 303 }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "url": "https://example.com", "max_clicks": 0 }), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({ "url": "https://example.com", "geo": { "Narnia": "https://x.org" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({ "url": "https://example.com", "expires_at": "tomorrow" }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "url": "https://example.com", "colour": "red" }), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (body, want) in cases {
        // Another tenant: slugs are unique across every workspace.
        let (status, problem) = call(&app, Method::POST, "/v1/links", Some(&b), Some(body.clone())).await;
        assert_eq!(status, want, "{body}: {problem}");
        assert!(problem["type"].as_str().is_some(), "problem JSON: {problem}");
    }
    let idn = create(&app, &b, json!({ "url": "https://bücher.example/straße" })).await;
    assert_eq!(idn["url"], "https://xn--bcher-kva.example/stra%C3%9Fe");
    let res = app
        .client
        .post(app.url("/v1/links"))
        .bearer_auth(&b)
        .header("content-type", "application/json")
        .body("{\"url\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn links_are_listed_searched_filtered_and_paged_per_tenant() {
    let (app, _) = spawn().await;
    let a_tenant = TenantId::new();
    let a_writer = token(a_tenant, "admin");
    let b = token(TenantId::new(), "member");
    for i in 0..5 {
        let tags = if i % 2 == 0 { json!(["even", "spring_sale"]) } else { json!(["odd"]) };
        create(
            &app,
            &a_writer,
            json!({ "url": format!("https://shop.example/{i}"), "title": format!("Item {i}"), "tags": tags }),
        )
        .await;
    }
    let viewer = token(a_tenant, "viewer");
    let (status, page) = call(&app, Method::GET, "/v1/links?limit=2", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK, "viewers read");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["title"], "Item 4", "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) =
        call(&app, Method::GET, &format!("/v1/links?limit=10&cursor={cursor}"), Some(&viewer), None).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3);
    assert!(rest["next_cursor"].is_null());
    let (_, even) = call(&app, Method::GET, "/v1/links?tag=even", Some(&viewer), None).await;
    assert_eq!(even["items"].as_array().unwrap().len(), 3);
    let (_, sale) = call(&app, Method::GET, "/v1/links?tag=spring_sale", Some(&viewer), None).await;
    assert_eq!(sale["items"].as_array().unwrap().len(), 3, "_ in a tag is not a wildcard");
    let (_, found) = call(&app, Method::GET, "/v1/links?q=item%203", Some(&viewer), None).await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    let (status, _) =
        call(&app, Method::POST, "/v1/links", Some(&viewer), Some(json!({"url": "https://x.org"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewers do not write");
    // Tenant B sees nothing of A's.
    let (_, theirs) = call(&app, Method::GET, "/v1/links", Some(&b), None).await;
    assert_eq!(theirs["items"].as_array().unwrap().len(), 0);
    let id = page["items"][0]["id"].as_str().unwrap();
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"url": "https://evil.example"}))),
        (Method::DELETE, None),
    ] {
        let (status, _) = call(&app, method.clone(), &format!("/v1/links/{id}"), Some(&b), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} of another tenant's link");
    }
    let (_, mine) = call(&app, Method::GET, &format!("/v1/links/{id}"), Some(&viewer), None).await;
    assert_eq!(mine["url"], "https://shop.example/4", "unchanged");
    app.stop().await;
}

#[tokio::test]
async fn an_update_moves_the_redirect_and_a_delete_ends_it_but_keeps_the_slug() {
    let (app, _) = spawn().await;
    let t = token(TenantId::new(), "member");
    let link = create(&app, &t, json!({ "url": "https://old.example/", "slug": "moving" })).await;
    let id = link["id"].as_str().unwrap();
    assert_eq!(visit(&app, "/moving", &[]).await.1.as_deref(), Some("https://old.example/"));
    let (status, changed) = call(
        &app,
        Method::PATCH,
        &format!("/v1/links/{id}"),
        Some(&t),
        Some(json!({ "url": "https://new.example/", "title": "Moved" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["slug"], "moving");
    eventually("the redirect to follow the update", || async {
        (visit(&app, "/moving", &[]).await.1.as_deref() == Some("https://new.example/")).then_some(())
    })
    .await;
    let (status, _) = call(&app, Method::DELETE, &format!("/v1/links/{id}"), Some(&t), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually("the deleted link to stop redirecting", || async {
        (visit(&app, "/moving", &[]).await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (status, _) = call(&app, Method::GET, &format!("/v1/links/{id}"), Some(&t), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let other = token(TenantId::new(), "member");
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/links",
        Some(&other),
        Some(json!({ "url": "https://x.example/", "slug": "moving" })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "a deleted link's slug stays reserved");
    app.stop().await;
}

#[tokio::test]
async fn a_csv_import_keeps_good_rows_explains_bad_ones_and_the_export_lists_them() {
    let (app, _) = spawn().await;
    let t = token(TenantId::new(), "member");
    let csv = "url,slug,title,tags,utm_source\n\
               https://example.com/a,csv-a,First,spring;sale,news\n\
               javascript:alert(1),csv-bad,Bad,,\n\
               https://example.com/b,,\"Second, with a comma\",spring,\n\
               https://example.com/c,v1,Reserved,,\n\
               ,csv-empty,No URL,,\n";
    let res = app
        .client
        .post(app.url("/v1/links/import"))
        .bearer_auth(&t)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let job = eventually("the import to finish", || async {
        let (_, j) = call(&app, Method::GET, &location, Some(&t), None).await;
        (j["status"] == "done").then_some(j)
    })
    .await;
    assert_eq!(
        (job["total"].as_i64(), job["imported"].as_i64(), job["failed"].as_i64()),
        (Some(5), Some(2), Some(3)),
        "{job}"
    );
    let rows: Vec<i64> =
        job["errors"].as_array().unwrap().iter().map(|e| e["row"].as_i64().unwrap()).collect();
    assert_eq!(rows, vec![3, 5, 6], "bad rows by their line number: {job}");
    assert!(job["errors"][0]["error"].as_str().unwrap().contains("http"), "{job}");
    assert_eq!(visit(&app, "/csv-a", &[]).await.1.as_deref(), Some("https://example.com/a?utm_source=news"));

    let res = app.client.get(app.url("/v1/links/export.csv")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = res.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two links: {text}");
    assert!(lines[0].starts_with("id,short_url,url,slug"));
    assert!(
        text.contains("csv-a") && text.contains("\"Second, with a comma\"") && text.contains("spring;sale")
    );

    let other = token(TenantId::new(), "member");
    assert_eq!(call(&app, Method::GET, &location, Some(&other), None).await.0, StatusCode::NOT_FOUND);
    let theirs = app.client.get(app.url("/v1/links/export.csv")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(theirs.text().await.unwrap().lines().count(), 1, "only the header for another workspace");
    let res = app
        .client
        .post(app.url("/v1/links/import"))
        .bearer_auth(&t)
        .header("content-type", "text/csv")
        .body("slug,title\nx,y\n")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "a url column is required");
    app.stop().await;
}

#[tokio::test]
async fn an_import_whose_process_died_is_reported_interrupted_with_the_rows_it_never_reached() {
    use kernel::db::{Id, Timestamp};
    let (app, _) = spawn().await;
    let tenant = TenantId::new();
    let t = token(tenant, "member");
    // A job of 10 rows whose process died after 4 of them (3 imported, row 4
    // explained) and whose last heartbeat is ten minutes old, and a job whose
    // runner saved a moment ago.
    let live = uuid::Uuid::now_v7();
    let now = Timestamp::now();
    let id = uuid::Uuid::now_v7();
    let then = Timestamp::from_unix(Timestamp::now().unix() - 600);
    let db = app.db("links");
    let mut tx = db.begin(tenant).await.unwrap();
    const SQL: &str = "insert into links.import_jobs \
        (tenant_id, id, status, total, imported, errors, created_at, heartbeat_at) \
        values ($1, $2, 'running', 10, 3, $3, $4, $5)";
    let errors = r#"[{"row":4,"error":"url: is missing"}]"#;
    macro_rules! insert {
        ($t:expr) => {
            $t.execute($t.query(SQL).bind(Id(id)).bind(errors.to_string()).bind(then).bind(then))
                .await
                .unwrap()
        };
    }
    macro_rules! insert_live {
        ($t:expr) => {
            $t.execute($t.query(SQL).bind(Id(live)).bind("[]".to_string()).bind(now).bind(now)).await.unwrap()
        };
    }
    if let Some(pg) = tx.postgres() {
        insert!(pg);
        insert_live!(pg);
    } else if let Some(lite) = tx.sqlite() {
        insert!(lite);
        insert_live!(lite);
    }
    tx.commit().await.unwrap();
    let (_, running) = call(&app, Method::GET, &format!("/v1/links/import/{live}"), Some(&t), None).await;
    assert_eq!(running["status"], "running", "a beating import is left alone: {running}");

    let path = format!("/v1/links/import/{id}");
    let (status, job) = call(&app, Method::GET, &path, Some(&t), None).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "failed", "not running forever: {job}");
    assert_eq!((job["imported"].as_i64(), job["failed"].as_i64()), (Some(3), Some(2)), "{job}");
    assert_eq!(job["errors"][0]["row"], 4, "what was explained stays: {job}");
    assert_eq!(job["errors"][1]["row"], 6, "the first row never reached: {job}");
    let note = job["errors"][1]["error"].as_str().unwrap();
    assert!(note.contains("rows 6 to 11"), "{note}");
    // The verdict is stored: asking again gives the same report.
    let (_, again) = call(&app, Method::GET, &path, Some(&t), None).await;
    assert_eq!(again, job);
    app.stop().await;
}

#[tokio::test]
async fn a_deletion_is_not_undone_by_an_update_of_the_same_second_that_arrives_after_it() {
    const INTERNAL: &str = "internal-token-0123456789abcdef-0123456789";
    let (app, _) = spawn_with(&[("SIGNPOST_INTERNAL_TOKEN", INTERNAL)]).await;
    let tenant = TenantId::new();
    let t = token(tenant, "member");
    let route = |slug: &str| {
        let req = app
            .client
            .get(app.url(&format!("/internal/routes/{slug}")))
            .header(kernel::auth::INTERNAL_TOKEN_HEADER, INTERNAL);
        async move { req.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    create(&app, &t, json!({ "url": "https://old.example/", "slug": "racing" })).await;
    create(&app, &t, json!({ "url": "https://marker.example/", "slug": "marker" })).await;
    let mut record = route("racing").await;
    // Updates and deletions travel on consumers of their own, so the deletion
    // can be applied first; both carry the same second as their version.
    let version = record["version"].as_i64().unwrap() + 1;
    record["version"] = json!(version);
    let deleted = Envelope::new("link.deleted", tenant, "system", record.clone());
    app.kernel.bus.publish(&[deleted]).await.unwrap();
    eventually("the deleted link to stop redirecting", || async {
        (visit(&app, "/racing", &[]).await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    record["url"] = json!("https://new.example/");
    let mut marker = route("marker").await;
    marker["url"] = json!("https://marker.example/moved");
    marker["version"] = json!(version + 1);
    let late_update = Envelope::new("link.updated", tenant, "system", record);
    let after_it = Envelope::new("link.updated", tenant, "system", marker);
    app.kernel.bus.publish(&[late_update, after_it]).await.unwrap();
    // Updates are applied in order: once the marker has moved, the late update was applied too.
    eventually("the marker's update", || async {
        (visit(&app, "/marker", &[]).await.1.as_deref() == Some("https://marker.example/moved")).then_some(())
    })
    .await;
    assert_eq!(visit(&app, "/racing", &[]).await.0, StatusCode::NOT_FOUND, "the deletion stands");
    app.stop().await;
}

#[tokio::test]
async fn internal_routes_answer_only_the_internal_token() {
    const INTERNAL: &str = "internal-token-0123456789abcdef-0123456789";
    let (app, _) = spawn_with(&[("SIGNPOST_INTERNAL_TOKEN", INTERNAL)]).await;
    let t = token(TenantId::new(), "member");
    let link = create(&app, &t, json!({ "url": "https://example.com/inside" })).await;
    let path = app.url(&format!("/internal/routes/{}", link["slug"].as_str().unwrap()));
    let ask = |token: Option<&str>| {
        let mut req = app.client.get(&path);
        if let Some(t) = token {
            req = req.header(kernel::auth::INTERNAL_TOKEN_HEADER, t);
        }
        async move { req.send().await.unwrap() }
    };
    for wrong in [None, Some("guess"), Some(&INTERNAL[1..])] {
        let res = ask(wrong).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{wrong:?}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(!res.headers().contains_key("x-signpost-not-found"), "a refusal is not a missing link");
    }
    // A link that does not exist is told apart from a refused token.
    let absent = app
        .client
        .get(app.url("/internal/routes/no-such-slug"))
        .header(kernel::auth::INTERNAL_TOKEN_HEADER, INTERNAL)
        .send()
        .await
        .unwrap();
    assert_eq!(absent.status(), StatusCode::NOT_FOUND);
    assert_eq!(absent.headers()["x-signpost-not-found"], "1");
    let res = ask(Some(INTERNAL)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let route: Value = res.json().await.unwrap();
    assert_eq!(route["url"], "https://example.com/inside");
    assert_eq!(route["link_id"], link["id"]);
    app.stop().await;
}
