//! Dynamic QR codes: their images decode to their scan URL, scans follow the
//! link they point at now, and another tenant finds none of them.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::*;

/// Reads a PNG with an independent decoder (png + rqrr): the text it encodes.
fn decode(png_bytes: &[u8]) -> String {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = buf.len() / (w * h);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[(y * w + x) * channels]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    grids[0].decode().unwrap().1
}

async fn image(app: &TestApp, token: &str, path: &str, etag: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url(path)).bearer_auth(token);
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_qr_code_image_decodes_to_its_scan_url_and_a_scan_is_attributed_to_it() {
    let (app, sink) = spawn().await;
    let tenant = TenantId::new();
    let t = token(tenant, "member");
    let link = create(&app, &t, json!({ "url": "https://example.com/menu" })).await;
    let (status, qr) = call(
        &app,
        Method::POST,
        "/v1/qr",
        Some(&t),
        Some(json!({ "link_id": link["id"], "title": "Table 4" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{qr}");
    let scan_url = qr["scan_url"].as_str().unwrap().to_string();
    assert_eq!(scan_url, app.url(&format!("/q/{}", qr["code"].as_str().unwrap())));

    let png_path = qr["images"]["png"].as_str().unwrap().to_string();
    let res = image(&app, &t, &format!("{png_path}?size=300&fg=0b3d91&bg=fafafa&ec=Q"), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.headers()["cache-control"], "public, max-age=31536000, immutable");
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    let bytes = res.bytes().await.unwrap();
    assert_eq!(decode(&bytes), scan_url, "an independent decoder reads exactly the scan URL");
    let again = image(&app, &t, &format!("{png_path}?size=300&fg=0b3d91&bg=fafafa&ec=Q"), None).await;
    assert_eq!(again.bytes().await.unwrap(), bytes, "the stored rendering is served again");
    let cached = image(&app, &t, &format!("{png_path}?size=300&fg=0b3d91&bg=fafafa&ec=Q"), Some(&etag)).await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    let default = image(&app, &t, &png_path, None).await;
    assert_eq!(decode(&default.bytes().await.unwrap()), scan_url);
    for (file, kind) in [("image.svg", "image/svg+xml"), ("image.pdf", "application/pdf")] {
        let res = image(&app, &t, &format!("/v1/qr/{}/{file}", qr["id"].as_str().unwrap()), None).await;
        assert_eq!(res.status(), StatusCode::OK, "{file}");
        assert_eq!(res.headers()["content-type"], kind);
        // Read to the end: an unread body holds its connection open at shutdown.
        assert!(!res.bytes().await.unwrap().is_empty());
    }
    for bad in ["?size=5", "?fg=purple", "?ec=Z", "?margin=99", "?colour=red"] {
        let res = image(&app, &t, &format!("{png_path}{bad}"), None).await;
        assert!(res.status().is_client_error(), "{bad}: {}", res.status());
    }
    assert_eq!(
        image(&app, &t, &format!("/v1/qr/{}/image.gif", qr["id"].as_str().unwrap()), None).await.status(),
        StatusCode::NOT_FOUND
    );

    let (status, loc) = visit(&app, &format!("/q/{}", qr["code"].as_str().unwrap()), &[]).await;
    assert_eq!(
        (status, loc.as_deref()),
        (StatusCode::FOUND, Some("https://example.com/menu")),
        "scans at once"
    );
    let scan = eventually("the scan event", || async {
        sink.0.lock().unwrap().iter().find(|e| e.event_type == "qr.scanned").cloned()
    })
    .await;
    assert_eq!(scan.tenant_id, tenant);
    assert_eq!(scan.data.value()["qr_id"], qr["id"]);
    assert_eq!(scan.data.value()["link_id"], link["id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_printed_code_follows_its_new_destination_and_stops_when_deleted() {
    let (app, _) = spawn().await;
    let t = token(TenantId::new(), "member");
    let first = create(&app, &t, json!({ "url": "https://example.com/spring" })).await;
    let second = create(&app, &t, json!({ "url": "https://example.com/summer" })).await;
    let (_, qr) = call(&app, Method::POST, "/v1/qr", Some(&t), Some(json!({ "link_id": first["id"] }))).await;
    let (id, path) = (qr["id"].as_str().unwrap().to_string(), format!("/q/{}", qr["code"].as_str().unwrap()));
    let png = image(&app, &t, &format!("/v1/qr/{id}/image.png"), None).await.bytes().await.unwrap();
    assert_eq!(visit(&app, &path, &[]).await.1.as_deref(), Some("https://example.com/spring"));
    let (status, moved) = call(
        &app,
        Method::PATCH,
        &format!("/v1/qr/{id}"),
        Some(&t),
        Some(json!({ "link_id": second["id"] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    eventually("scans to follow the new link", || async {
        (visit(&app, &path, &[]).await.1.as_deref() == Some("https://example.com/summer")).then_some(())
    })
    .await;
    let same = image(&app, &t, &format!("/v1/qr/{id}/image.png"), None).await.bytes().await.unwrap();
    assert_eq!(same, png, "no reprint: the image is the same");
    let (status, _) = call(&app, Method::DELETE, &format!("/v1/qr/{id}"), Some(&t), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually("a deleted code to find nothing", || async {
        (visit(&app, &path, &[]).await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn another_tenants_qr_codes_are_not_found() {
    let (app, _) = spawn().await;
    let (a, b) = (token(TenantId::new(), "member"), token(TenantId::new(), "member"));
    let link = create(&app, &a, json!({ "url": "https://example.com/a" })).await;
    let (_, qr) = call(&app, Method::POST, "/v1/qr", Some(&a), Some(json!({ "link_id": link["id"] }))).await;
    let id = qr["id"].as_str().unwrap();
    for (method, path, body) in [
        (Method::GET, format!("/v1/qr/{id}"), None),
        (Method::PATCH, format!("/v1/qr/{id}"), Some(json!({ "title": "mine now" }))),
        (Method::DELETE, format!("/v1/qr/{id}"), None),
        (Method::GET, format!("/v1/qr/{id}/image.png"), None),
    ] {
        let (status, _) = call(&app, method.clone(), &path, Some(&b), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    let (status, _) =
        call(&app, Method::POST, "/v1/qr", Some(&b), Some(json!({ "link_id": link["id"] }))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a QR code cannot point at another tenant's link");
    let (_, list) = call(&app, Method::GET, "/v1/qr", Some(&b), None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let (_, mine) = call(&app, Method::GET, &format!("/v1/qr/{id}"), Some(&a), None).await;
    assert!(mine["title"].is_null(), "unchanged");
    app.stop().await;
}

/// A PNG: `w`×`h` pixels of one RGBA colour.
fn png_square(w: u32, h: u32, rgba: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = (0..w * h).flat_map(|_| rgba).collect();
    enc.write_header().unwrap().write_image_data(&data).unwrap();
    out
}

/// The error-correction level field of the code in a PNG (L=1, M=0, Q=3, H=2).
fn ecc_level(png_bytes: &[u8]) -> u16 {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = buf.len() / (w * h);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[(y * w + x) * channels]);
    img.detect_grids()[0].decode().unwrap().0.ecc_level
}

#[tokio::test]
async fn a_logo_sits_in_the_middle_with_error_correction_h_and_the_code_still_scans() {
    let (app, _) = spawn().await;
    let t = token(TenantId::new(), "member");
    let link = create(&app, &t, json!({ "url": "https://example.com/brand" })).await;
    let (_, qr) = call(&app, Method::POST, "/v1/qr", Some(&t), Some(json!({ "link_id": link["id"] }))).await;
    let id = qr["id"].as_str().unwrap().to_string();
    let put = |body: Vec<u8>, bearer: String| {
        let app = &app;
        let id = id.clone();
        async move {
            app.client
                .put(app.url(&format!("/v1/qr/{id}/logo")))
                .bearer_auth(bearer)
                .header("content-type", "image/png")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(put(b"GIF89a not a png".to_vec(), t.clone()).await, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        put(png_square(40, 40, [220, 20, 60, 255]), token(TenantId::new(), "member")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(put(png_square(40, 40, [220, 20, 60, 255]), t.clone()).await, StatusCode::OK);

    let plain =
        image(&app, &t, &format!("/v1/qr/{id}/image.png?logo=false&ec=L"), None).await.bytes().await.unwrap();
    let branded = image(&app, &t, &format!("/v1/qr/{id}/image.png?ec=L"), None).await.bytes().await.unwrap();
    assert_ne!(plain, branded);
    let scan_url = qr["scan_url"].as_str().unwrap();
    assert_eq!(decode(&branded), scan_url, "the code still reads through the logo");
    assert_eq!(ecc_level(&branded), 2, "error correction H with a logo, whatever was asked");
    assert_eq!(ecc_level(&plain), 1, "L as asked without one");
    let svg = image(&app, &t, &format!("/v1/qr/{id}/image.svg"), None).await.text().await.unwrap();
    assert!(svg.contains("data:image/png;base64,"));
    let pdf = image(&app, &t, &format!("/v1/qr/{id}/image.pdf"), None).await.bytes().await.unwrap();
    let pdf = String::from_utf8_lossy(&pdf);
    assert!(
        pdf.contains("/Subtype /Image /ColorSpace /DeviceRGB /Width 40 /Height 40"),
        "the PDF has the logo"
    );
    assert_eq!(
        call(&app, Method::DELETE, &format!("/v1/qr/{id}/logo"), Some(&t), None).await.0,
        StatusCode::NO_CONTENT
    );
    let after = image(&app, &t, &format!("/v1/qr/{id}/image.png?ec=L"), None).await.bytes().await.unwrap();
    assert_eq!(after, plain, "without the logo, the plain rendering again");
    app.stop().await;
}

#[tokio::test]
async fn every_rendering_has_a_public_immutable_address_that_needs_no_credentials() {
    let (app, _) = spawn().await;
    let t = token(TenantId::new(), "member");
    let link = create(&app, &t, json!({ "url": "https://example.com/poster" })).await;
    let (_, qr) = call(&app, Method::POST, "/v1/qr", Some(&t), Some(json!({ "link_id": link["id"] }))).await;
    let (id, code) = (qr["id"].as_str().unwrap().to_string(), qr["code"].as_str().unwrap().to_string());
    let scan_url = qr["scan_url"].as_str().unwrap().to_string();
    let anonymous = |url: String| {
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };

    // The default style is there before anyone asked for it through the API.
    let public_png = qr["public_images"]["png"].as_str().unwrap().to_string();
    assert!(public_png.starts_with(&app.url(&format!("/assets/qr/{code}/"))), "{public_png}");
    let res = anonymous(public_png.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.headers()["cache-control"], "public, max-age=31536000, immutable");
    let first = res.bytes().await.unwrap();
    assert_eq!(decode(&first), scan_url);
    for format in ["svg", "pdf"] {
        let res = anonymous(qr["public_images"][format].as_str().unwrap().to_string()).await;
        assert_eq!(res.status(), StatusCode::OK, "{format}");
        // Read to the end: an unread body holds its connection open at shutdown.
        assert!(!res.bytes().await.unwrap().is_empty());
    }

    // Any style made through the API names its public address.
    let styled = image(&app, &t, &format!("/v1/qr/{id}/image.png?size=256&fg=8b0000"), None).await;
    let location = styled.headers()["content-location"].to_str().unwrap().to_string();
    let styled = styled.bytes().await.unwrap();
    assert_ne!(location, public_png);
    assert_eq!(anonymous(location.clone()).await.bytes().await.unwrap(), styled);

    // Nothing else is served: a guessed hash, a style never made, a bad name.
    let base = app.url(&format!("/assets/qr/{code}"));
    for bad in [
        format!("{base}/{}.png", "0".repeat(64)),
        format!("{base}/{}.gif", "a".repeat(64)),
        format!("{base}/not-a-hash.png"),
        app.url(&format!("/assets/qr/no%20such/{}.png", "0".repeat(64))),
        app.url(&format!("/assets/qr/ZZZZZZZZ/{}", public_png.rsplit('/').next().unwrap())),
    ] {
        assert_eq!(anonymous(bad.clone()).await.status(), StatusCode::NOT_FOUND, "{bad}");
    }

    // Another code of the same workspace serves none of this code's renderings.
    let (_, other) =
        call(&app, Method::POST, "/v1/qr", Some(&t), Some(json!({ "link_id": link["id"] }))).await;
    let other_code = other["code"].as_str().unwrap();
    for file in [public_png.rsplit('/').next().unwrap(), location.rsplit('/').next().unwrap()] {
        let borrowed = app.url(&format!("/assets/qr/{other_code}/{file}"));
        assert_eq!(anonymous(borrowed.clone()).await.status(), StatusCode::NOT_FOUND, "{borrowed}");
    }

    // A new logo is a new address; the old one keeps its bytes (immutable).
    let logo = png_square(32, 32, [0, 90, 200, 255]);
    let put = app.client.put(app.url(&format!("/v1/qr/{id}/logo"))).bearer_auth(&t);
    let (_, branded) = call(&app, Method::GET, &format!("/v1/qr/{id}"), Some(&t), None).await;
    assert_eq!(branded["public_images"]["png"], qr["public_images"]["png"], "unchanged before the upload");
    let res = put.header("content-type", "image/png").body(logo).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let branded: serde_json::Value = res.json().await.unwrap();
    let branded_png = branded["public_images"]["png"].as_str().unwrap().to_string();
    assert_ne!(branded_png, public_png);
    let with_logo = anonymous(branded_png).await.bytes().await.unwrap();
    assert_ne!(with_logo, first);
    assert_eq!(decode(&with_logo), scan_url);
    assert_eq!(anonymous(public_png.clone()).await.bytes().await.unwrap(), first);

    // A deleted code's images are gone.
    assert_eq!(
        call(&app, Method::DELETE, &format!("/v1/qr/{id}"), Some(&t), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(anonymous(public_png).await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}
