//! `/v1/qr`: dynamic QR codes and their images.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kernel::auth::Caller;
use kernel::db::{DbError, Id, Timestamp};
use kernel::http::{Json, Page, PageParams, Path, Query};
use kernel::storage::ObjectKey;
use kernel::{ApiError, ApiResult, Problem};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::render::{self, Format, Style, StyleQuery};
use crate::store::Qr;
use crate::{AppState, Links, model, title};

pub(crate) fn routes() -> Router<Arc<Links>> {
    Router::new()
        .route("/v1/qr", post(create).get(list))
        .route("/v1/qr/{id}", get(read).patch(update).delete(remove))
        .route("/v1/qr/{id}/logo", axum::routing::put(put_logo).delete(delete_logo))
        .route("/v1/qr/{id}/{file}", get(image))
        .route("/assets/qr/{code}/{file}", get(public_image))
}

/// The content address of one rendering: what it encodes, in which style,
/// format and logo. The scan URL carries the code, which is unique, so the
/// address is too.
fn rendering_hash(url: &str, style: &Style, format: Format, logo: Option<&str>) -> String {
    // `v2`: the renderer's version. PDFs made before v2 left the logo out; a
    // changed renderer must not be served from an old address.
    let text = format!("v2|{url}|{}|{}|{}", style.key(), format.ext(), logo.unwrap_or(""));
    kernel::hex(&Sha256::digest(text.as_bytes()))
}

/// The public, immutable URL of a rendering (what a CDN in front caches).
fn public_image_url(s: &Links, code: &str, hash: &str, format: Format) -> String {
    format!("{}/assets/qr/{code}/{hash}.{}", s.kernel.config.public_url, format.ext())
}

fn scan_url(s: &Links, code: &str) -> String {
    format!("{}/q/{code}", s.kernel.config.public_url)
}

fn qr_json(s: &Links, q: &Qr) -> Value {
    let base = format!("/v1/qr/{}", q.id);
    json!({
        "id": q.id,
        "code": q.code,
        "scan_url": scan_url(s, &q.code),
        "link_id": q.link_id,
        "title": q.title,
        "has_logo": q.logo.is_some(),
        "images": { "png": format!("{base}/image.png"), "svg": format!("{base}/image.svg"), "pdf": format!("{base}/image.pdf") },
        "public_images": public_images(s, q),
        "created_at": q.created_at,
        "updated_at": q.updated_at,
    })
}

/// The default style's images at their public addresses.
fn public_images(s: &Links, q: &Qr) -> Value {
    let (url, style) = (scan_url(s, &q.code), Style::default());
    let at = |f: Format| public_image_url(s, &q.code, &rendering_hash(&url, &style, f, q.logo.as_deref()), f);
    json!({ "png": at(Format::Png), "svg": at(Format::Svg), "pdf": at(Format::Pdf) })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    link_id: Uuid,
    title: Option<String>,
}

async fn create(State(s): AppState, caller: Caller, Json(b): Json<CreateBody>) -> ApiResult<Response> {
    caller.require("qr:write")?;
    // The link must be the caller's own: another tenant's id is simply unknown.
    if s.store.get(caller.tenant, b.link_id).await?.is_none() {
        return Err(Problem::validation("link_id", "is not a link of this workspace").into());
    }
    let now = Timestamp::now();
    let mut qr = Qr {
        tenant_id: Id(caller.tenant.as_uuid()),
        id: Id(Uuid::now_v7()),
        code: model::generated_code(),
        link_id: Id(b.link_id),
        title: title(b.title)?,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        logo: None,
    };
    let mut attempts = 0;
    loop {
        match s.store.create_qr(&qr, &caller.actor()).await {
            Ok(()) => break,
            Err(DbError::Constraint { .. }) if attempts < 5 => {
                attempts += 1;
                qr.code = model::generated_code();
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(tenant_id = %caller.tenant, qr_id = %qr.id, "QR code created");
    Ok((StatusCode::CREATED, axum::Json(qr_json(&s, &qr))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list(State(s): AppState, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    caller.require("qr:read")?;
    let page = PageParams { limit: q.limit, cursor: q.cursor.clone() }.parse::<Uuid>()?;
    let rows = s.store.list_qr(caller.tenant, page.after, i64::from(page.limit) + 1).await?;
    let page = Page::from_overfetch(rows, page.limit, |q| q.id.0);
    let items: Vec<Value> = page.items.iter().map(|q| qr_json(&s, q)).collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": page.next_cursor })).into_response())
}

async fn read(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<Response> {
    caller.require("qr:read")?;
    let qr = s.store.get_qr(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    Ok(axum::Json(qr_json(&s, &qr)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    link_id: Option<Uuid>,
    #[serde(default, deserialize_with = "crate::nullable::de")]
    title: Option<Option<String>>,
}

/// Points the code at another link (the printed code keeps working) or retitles it.
async fn update(
    State(s): AppState,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(b): Json<UpdateBody>,
) -> ApiResult<Response> {
    caller.require("qr:write")?;
    let mut qr = s.store.get_qr(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    if let Some(link) = b.link_id {
        if s.store.get(caller.tenant, link).await?.is_none() {
            return Err(Problem::validation("link_id", "is not a link of this workspace").into());
        }
        qr.link_id = Id(link);
    }
    if let Some(t) = b.title {
        qr.title = title(t)?;
    }
    qr.updated_at = Timestamp::now();
    s.store.update_qr(&qr, &caller.actor()).await?;
    Ok(axum::Json(qr_json(&s, &qr)).into_response())
}

async fn remove(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    caller.require("qr:write")?;
    let mut qr = s.store.get_qr(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    let now = Timestamp::now();
    qr.updated_at = now;
    qr.deleted_at = Some(now);
    s.store.update_qr(&qr, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `image.png`, `image.svg` or `image.pdf` in a style. Each rendering is made
/// once and kept in object storage under the hash of what it shows; the image
/// of a code never changes (its destination does, not its scan URL), so it is
/// cached for a year. `Content-Location` gives its public, immutable address.
async fn image(
    State(s): AppState,
    caller: Caller,
    Path((id, file)): Path<(Uuid, String)>,
    Query(q): Query<StyleQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require("qr:read")?;
    let format = file.strip_prefix("image.").and_then(Format::parse).ok_or_else(Problem::not_found)?;
    let style = Style::parse(&q)?;
    let qr = s.store.get_qr(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    let logo = qr.logo.as_deref().filter(|_| q.logo.unwrap_or(true));
    let hash = rendering_hash(&scan_url(&s, &qr.code), &style, format, logo);
    let wanted = Wanted { hash: &hash, format, style: &style, logo, may_render: true };
    let mut res = rendering(&s, &qr, wanted, &headers).await?;
    if let Ok(v) = HeaderValue::from_str(&public_image_url(&s, &qr.code, &hash, format)) {
        res.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(res)
}

/// `/assets/qr/{code}/{hash}.{ext}`, public: a rendering by its content address.
/// Any rendering made through the API is there; the default style is made on
/// first request. Anything else (a guessed hash, a deleted code) is a 404.
async fn public_image(
    State(s): AppState,
    Path((code, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (hash, ext) = file.split_once('.').ok_or_else(Problem::not_found)?;
    let format = Format::parse(ext).ok_or_else(Problem::not_found)?;
    let is_hash = hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_hash || !model::is_code(&code) {
        return Err(Problem::not_found().into());
    }
    let (qr, _) = s.store.qr_by_code(&code).await?.ok_or_else(Problem::not_found)?;
    let style = Style::default();
    let logo = qr.logo.as_deref();
    let may_render = rendering_hash(&scan_url(&s, &qr.code), &style, format, logo) == hash;
    rendering(&s, &qr, Wanted { hash, format, style: &style, logo, may_render }, &headers).await
}

fn image_key(qr: &Qr, hash: &str, format: Format) -> Result<ObjectKey, ApiError> {
    let tenant = kernel::TenantId::from_uuid(qr.tenant_id.0);
    ObjectKey::for_tenant(tenant, &format!("qr/images/{}/{hash}.{}", qr.code, format.ext()))
        .map_err(ApiError::internal)
}

/// One rendering of a code, by its content address.
struct Wanted<'a> {
    hash: &'a str,
    format: Format,
    style: &'a Style,
    /// The logo's hash, when it is in the image.
    logo: Option<&'a str>,
    /// Whether a rendering not yet stored may be made now.
    may_render: bool,
}

/// The rendering wanted: from object storage, or (when it may be) made now and stored.
async fn rendering(s: &Links, qr: &Qr, w: Wanted<'_>, headers: &HeaderMap) -> ApiResult<Response> {
    let Wanted { hash, format, style, logo: logo_hash, may_render } = w;
    let etag = format!("\"{hash}\"");
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok(cached(StatusCode::NOT_MODIFIED.into_response(), &etag, format));
    }
    let key = image_key(qr, hash, format)?;
    let bytes = match s.kernel.storage.get(&key).await.map_err(ApiError::internal)? {
        Some(b) => b,
        None if !may_render => return Err(Problem::not_found().into()),
        None => {
            let logo_png = match logo_hash {
                Some(h) => {
                    let key = logo_key(kernel::TenantId::from_uuid(qr.tenant_id.0), h)?;
                    Some(
                        s.kernel
                            .storage
                            .get(&key)
                            .await
                            .map_err(ApiError::internal)?
                            .ok_or_else(Problem::not_found)?,
                    )
                }
                None => None,
            };
            let (url, style) = (scan_url(s, &qr.code), style.clone());
            // Decoding the logo and drawing the code are CPU work: not on the
            // connection's thread, whose other connections would wait.
            let rendered = tokio::task::spawn_blocking(move || {
                let logo = logo_png.map(|png| render::Logo::decode(&png)).transpose()?;
                render::render(&url, format, &style, logo.as_ref())
            })
            .await
            .map_err(ApiError::internal)??;
            let rendered = bytes::Bytes::from(rendered);
            s.kernel.storage.put(&key, rendered.clone()).await.map_err(ApiError::internal)?;
            metrics::counter!("qr_renderings_total", "format" => format.ext()).increment(1);
            rendered
        }
    };
    Ok(cached(bytes.into_response(), &etag, format))
}

fn cached(mut res: Response, etag: &str, format: Format) -> Response {
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if format == Format::Svg {
        // An SVG is active content: never render it inline from our origin.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
    }
    res
}

fn logo_key(tenant: kernel::TenantId, hash: &str) -> Result<ObjectKey, ApiError> {
    ObjectKey::for_tenant(tenant, &format!("qr/logos/{hash}.png")).map_err(ApiError::internal)
}

/// Sets the code's logo: a PNG of at most 256 KiB and 1024×1024 pixels. Images
/// with the logo use error correction H.
async fn put_logo(
    State(s): AppState,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    caller.require("qr:write")?;
    if body.len() > render::MAX_LOGO_BYTES {
        return Err(Problem::payload_too_large(render::MAX_LOGO_BYTES).into());
    }
    render::Logo::decode(&body)?;
    let mut qr = s.store.get_qr(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    let hash = kernel::hex(&Sha256::digest(&body));
    s.kernel.storage.put(&logo_key(caller.tenant, &hash)?, body).await.map_err(ApiError::internal)?;
    qr.logo = Some(hash);
    qr.updated_at = Timestamp::now();
    s.store.update_qr(&qr, &caller.actor()).await?;
    Ok(axum::Json(qr_json(&s, &qr)).into_response())
}

async fn delete_logo(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    caller.require("qr:write")?;
    let mut qr = s.store.get_qr(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    qr.logo = None;
    qr.updated_at = Timestamp::now();
    s.store.update_qr(&qr, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}
