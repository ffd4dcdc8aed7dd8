//! The links service: tenants' short links. It owns schema `links`; each change
//! is written with its event (`link.created`, `link.updated`, `link.deleted`),
//! which routing's read model follows. Routing in the same process asks it
//! directly on a miss (read-your-writes) through [`RouteSource`].

pub mod domains;
mod internal;
pub mod model;
mod openapi;
mod pixels;
mod qr;
pub mod render;
pub mod store;
mod transfer;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kernel::auth::Caller;
use kernel::db::{DbError, Id, Migration, Migrations, Timestamp};
use kernel::http::{Json, Page, PageParams, Path, Query};
use kernel::password::Hasher;
use kernel::{ApiError, ApiResult, BoxError, Kernel, Problem, Service, ServiceContext, ServiceParts};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

pub use internal::RemoteRouteSource;
use model::Utm;
pub use model::{QrRoute, RouteRecord};
use store::{Link, LinkFilter, Store};

/// The links service's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    schema: "links",
    steps: &[
        Migration {
            version: "0001_links",
            postgres: include_str!("../migrations/postgres/0001_links.sql"),
            sqlite: include_str!("../migrations/sqlite/0001_links.sql"),
        },
        Migration {
            version: "0002_qr_codes",
            postgres: include_str!("../migrations/postgres/0002_qr_codes.sql"),
            sqlite: include_str!("../migrations/sqlite/0002_qr_codes.sql"),
        },
        Migration {
            version: "0003_domains",
            postgres: include_str!("../migrations/postgres/0003_domains.sql"),
            sqlite: include_str!("../migrations/sqlite/0003_domains.sql"),
        },
        Migration {
            version: "0004_pixels",
            postgres: include_str!("../migrations/postgres/0004_pixels.sql"),
            sqlite: include_str!("../migrations/sqlite/0004_pixels.sql"),
        },
        Migration {
            version: "0005_import_jobs",
            postgres: include_str!("../migrations/postgres/0005_import_jobs.sql"),
            sqlite: include_str!("../migrations/sqlite/0005_import_jobs.sql"),
        },
        Migration {
            version: "0006_qr_logos",
            postgres: include_str!("../migrations/postgres/0006_qr_logos.sql"),
            sqlite: include_str!("../migrations/sqlite/0006_qr_logos.sql"),
        },
        Migration {
            version: "0007_import_heartbeat",
            postgres: include_str!("../migrations/postgres/0007_import_heartbeat.sql"),
            sqlite: include_str!("../migrations/sqlite/0007_import_heartbeat.sql"),
        },
    ],
};

/// Looks up the route of a public path at the source (the links service).
#[async_trait]
pub trait RouteSource: Send + Sync + 'static {
    /// The live route of `(domain, slug)`, if a link has it.
    async fn route(&self, domain: &str, slug: &str) -> Result<Option<RouteRecord>, BoxError>;
    /// The live QR code of a scan code, with its link's route.
    async fn qr(&self, code: &str) -> Result<Option<(QrRoute, RouteRecord)>, BoxError>;
}

/// The handle routing finds in the kernel's registry when links runs in-process.
pub type SharedRouteSource = Arc<dyn RouteSource>;

pub(crate) struct Links {
    kernel: Kernel,
    store: Arc<dyn Store>,
    hasher: Hasher,
    resolver: Arc<dyn domains::TxtResolver>,
}

pub(crate) type AppState = State<Arc<Links>>;

struct Source(Arc<dyn Store>);

#[async_trait]
impl RouteSource for Source {
    async fn route(&self, domain: &str, slug: &str) -> Result<Option<RouteRecord>, BoxError> {
        Ok(self.0.by_slug(domain, slug).await?.map(|l| l.route()))
    }

    async fn qr(&self, code: &str) -> Result<Option<(QrRoute, RouteRecord)>, BoxError> {
        Ok(self.0.qr_by_code(code).await?.map(|(q, l)| (q.route(), l.route())))
    }
}

/// The links service.
pub struct LinksService;

#[async_trait]
impl Service for LinksService {
    fn name(&self) -> &'static str {
        "links"
    }

    fn migrations(&self) -> Option<Migrations> {
        Some(MIGRATIONS)
    }

    async fn start(&self, ctx: ServiceContext) -> Result<ServiceParts, BoxError> {
        let db = ctx.db.ok_or("links needs its schema")?;
        let store = store::for_db(&db);
        ctx.kernel.registry.put::<SharedRouteSource>(Arc::new(Source(store.clone())));
        // Link passwords: the account minimum, on two threads of their own.
        let hasher = Hasher::new(kernel::password::MIN_MEMORY_KIB, kernel::password::MIN_ITERATIONS, 2)?;
        let resolver = Arc::new(domains::DnsResolver::new(ctx.kernel.config.dns_server)?);
        let state = Arc::new(Links { kernel: ctx.kernel, store, hasher, resolver });
        let router = Router::new()
            .route("/v1/links", post(create).get(list))
            .route("/v1/links/{id}", get(read).patch(update).delete(remove))
            .merge(qr::routes())
            .merge(domains::routes())
            .merge(pixels::routes())
            .merge(transfer::routes())
            .merge(internal::routes())
            .with_state(state);
        Ok(ServiceParts {
            router,
            edge: None,
            consumers: Vec::new(),
            openapi_paths: openapi::paths(),
            openapi_source: None,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    pub(crate) url: String,
    pub(crate) slug: Option<String>,
    pub(crate) domain: Option<String>,
    pub(crate) title: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    pub(crate) expires_at: Option<String>,
    pub(crate) expired_url: Option<String>,
    pub(crate) max_clicks: Option<i64>,
    pub(crate) password: Option<String>,
    pub(crate) redirect_type: Option<u16>,
    pub(crate) utm: Option<Utm>,
    pub(crate) ios_url: Option<String>,
    pub(crate) android_url: Option<String>,
    pub(crate) geo: Option<BTreeMap<String, String>>,
    pub(crate) pixels: Option<Vec<Uuid>>,
}

fn time(field: &str, raw: &str) -> Result<Timestamp, Problem> {
    let t = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| Problem::validation(field, "is not an RFC 3339 time"))?;
    Ok(Timestamp::from_unix(t.unix_timestamp()))
}

fn redirect_type(v: Option<u16>) -> Result<i32, Problem> {
    match v.unwrap_or(302) {
        t @ (301 | 302 | 307) => Ok(i32::from(t)),
        _ => Err(Problem::validation("redirect_type", "is 301, 302 or 307")),
    }
}

fn max_clicks(v: Option<i64>) -> Result<Option<i64>, Problem> {
    match v {
        Some(n) if !(1..=1_000_000_000_000).contains(&n) => {
            Err(Problem::validation("max_clicks", "is 1 to 10^12"))
        }
        other => Ok(other),
    }
}

pub(crate) fn title(v: Option<String>) -> Result<Option<String>, Problem> {
    match v.map(|t| t.trim().to_string()) {
        Some(t) if t.chars().count() > 300 || t.chars().any(char::is_control) => {
            Err(Problem::validation("title", "has at most 300 printable characters"))
        }
        Some(t) if t.is_empty() => Ok(None),
        other => Ok(other),
    }
}

async fn password_hash(s: &Links, password: Option<String>) -> ApiResult<Option<String>> {
    match password {
        None => Ok(None),
        Some(p) if p.is_empty() || p.chars().count() > 128 => {
            Err(Problem::validation("password", "is 1 to 128 characters").into())
        }
        Some(p) => Ok(Some(s.hasher.hash(p).await.map_err(ApiError::internal)?)),
    }
}

fn short_url(s: &Links, link: &Link) -> String {
    if link.domain.is_empty() {
        return format!("{}/{}", s.kernel.config.public_url, link.slug);
    }
    let scheme = if s.kernel.config.public_url.starts_with("http://") { "http" } else { "https" };
    format!("{scheme}://{}/{}", link.domain, link.slug)
}

/// The domain a new link lives on: the one asked for (a verified domain of the
/// workspace), else the workspace's default domain, else the platform's host.
async fn link_domain(s: &Links, caller: &Caller, asked: Option<&str>) -> ApiResult<String> {
    let verified: Vec<store::Domain> =
        s.store.domains(caller.tenant).await?.into_iter().filter(|d| d.verified_at.is_some()).collect();
    match asked.map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase()) {
        Some(d) if d.is_empty() => Ok(String::new()),
        Some(d) => verified.iter().find(|v| v.hostname == d).map(|v| v.hostname.clone()).ok_or_else(|| {
            Problem::validation("domain", "is not a verified domain of this workspace").into()
        }),
        None => Ok(verified.iter().find(|v| v.is_default).map(|v| v.hostname.clone()).unwrap_or_default()),
    }
}

pub(crate) fn link_json(s: &Links, l: &Link) -> Value {
    json!({
        "id": l.id,
        "slug": l.slug,
        "domain": if l.domain.is_empty() { Value::Null } else { json!(l.domain) },
        "short_url": short_url(s, l),
        "url": l.url,
        "title": l.title,
        "tags": l.tag_list(),
        "expires_at": l.expires_at,
        "expired_url": l.expired_url,
        "max_clicks": l.max_clicks,
        "password_protected": l.password_hash.is_some(),
        "redirect_type": l.redirect_type,
        "utm": l.utm.as_deref().and_then(|u| serde_json::from_str::<Value>(u).ok()),
        "ios_url": l.ios_url,
        "android_url": l.android_url,
        "geo": l.geo.as_deref().and_then(|g| serde_json::from_str::<Value>(g).ok()),
        "pixels": l.pixel_tags().iter().map(|p| p.id).collect::<Vec<_>>(),
        "created_at": l.created_at,
        "updated_at": l.updated_at,
    })
}

fn optional_url(field: &str, v: Option<String>) -> Result<Option<String>, Problem> {
    v.map(|u| model::destination(field, &u)).transpose()
}

async fn create(State(s): AppState, caller: Caller, Json(b): Json<CreateBody>) -> ApiResult<Response> {
    caller.require("links:write")?;
    let link = new_link(&s, &caller, b).await?;
    Ok((StatusCode::CREATED, axum::Json(link_json(&s, &link))).into_response())
}

/// Checks a new link and stores it (the API's create, and each row of an import).
pub(crate) async fn new_link(s: &Links, caller: &Caller, b: CreateBody) -> ApiResult<Link> {
    let url = model::destination("url", &b.url)?;
    let domain = link_domain(s, caller, b.domain.as_deref()).await?;
    let custom = b.slug.as_deref().map(model::custom_slug).transpose()?;
    let tags = model::tags(&b.tags)?;
    let now = Timestamp::now();
    let expires_at = b.expires_at.as_deref().map(|t| time("expires_at", t)).transpose()?;
    let utm = b.utm.map(Utm::checked).transpose()?.flatten();
    let geo = b.geo.as_ref().map(model::geo).transpose()?.filter(|g| !g.is_empty());
    let mut link = Link {
        tenant_id: Id(caller.tenant.as_uuid()),
        id: Id(Uuid::now_v7()),
        domain,
        slug: custom.clone().unwrap_or_else(model::generated_slug),
        url,
        title: title(b.title)?,
        tags: serde_json::to_string(&tags).map_err(ApiError::internal)?,
        expires_at,
        expired_url: optional_url("expired_url", b.expired_url)?,
        max_clicks: max_clicks(b.max_clicks)?,
        password_hash: password_hash(s, b.password).await?,
        redirect_type: redirect_type(b.redirect_type)?,
        utm: utm.map(|u| serde_json::to_string(&u)).transpose().map_err(ApiError::internal)?,
        ios_url: optional_url("ios_url", b.ios_url)?,
        android_url: optional_url("android_url", b.android_url)?,
        geo: geo.map(|g| serde_json::to_string(&g)).transpose().map_err(ApiError::internal)?,
        pixels: pixels::attach(s, caller.tenant, b.pixels.as_deref().unwrap_or_default()).await?,
        created_at: now,
        updated_at: now,
        deleted_at: None,
    };
    let actor = caller.actor();
    // A generated slug that collides is drawn again; a custom one is the caller's to change.
    let mut attempts = 0;
    loop {
        match s.store.create(&link, &actor).await {
            Ok(()) => break,
            Err(DbError::Constraint { .. }) if custom.is_none() && attempts < 5 => {
                attempts += 1;
                link.slug = model::generated_slug();
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(tenant_id = %caller.tenant, link_id = %link.id, slug = %link.slug, "link created");
    Ok(link)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    q: Option<String>,
    tag: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

async fn list(State(s): AppState, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    caller.require("links:read")?;
    let page = PageParams { limit: q.limit, cursor: q.cursor.clone() }.parse::<Uuid>()?;
    let search = match q.q.as_deref().map(str::trim) {
        Some(t) if t.chars().count() > 200 => {
            return Err(Problem::validation("q", "has at most 200 characters").into());
        }
        Some(t) if !t.is_empty() => format!("%{}%", like_escape(&t.to_lowercase())),
        _ => String::new(),
    };
    let tag = match q.tag.as_deref() {
        Some(t) if !t.trim().is_empty() => {
            let json = serde_json::to_string(t.trim()).map_err(ApiError::internal)?;
            format!("%{}%", like_escape(&json))
        }
        _ => String::new(),
    };
    let filter = LinkFilter { search, tag, before: page.after, limit: i64::from(page.limit) + 1 };
    let rows = s.store.list(caller.tenant, &filter).await?;
    let page = Page::from_overfetch(rows, page.limit, |l| l.id.0);
    let items: Vec<Value> = page.items.iter().map(|l| link_json(&s, l)).collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": page.next_cursor })).into_response())
}

async fn read(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<Response> {
    caller.require("links:read")?;
    let link = s.store.get(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    Ok(axum::Json(link_json(&s, &link)).into_response())
}

/// `null` clears, absent keeps.
pub(crate) mod nullable {
    use serde::{Deserialize, Deserializer};

    pub fn de<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    url: Option<String>,
    #[serde(default, deserialize_with = "nullable::de")]
    title: Option<Option<String>>,
    tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable::de")]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable::de")]
    expired_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable::de")]
    max_clicks: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable::de")]
    password: Option<Option<String>>,
    redirect_type: Option<u16>,
    #[serde(default, deserialize_with = "nullable::de")]
    utm: Option<Option<Utm>>,
    #[serde(default, deserialize_with = "nullable::de")]
    ios_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable::de")]
    android_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable::de")]
    geo: Option<Option<BTreeMap<String, String>>>,
    pixels: Option<Vec<Uuid>>,
}

async fn update(
    State(s): AppState,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(b): Json<UpdateBody>,
) -> ApiResult<Response> {
    caller.require("links:write")?;
    let mut l = s.store.get(caller.tenant, id).await?.ok_or_else(Problem::not_found)?;
    if let Some(u) = b.url {
        l.url = model::destination("url", &u)?;
    }
    if let Some(t) = b.title {
        l.title = title(t)?;
    }
    if let Some(t) = b.tags {
        l.tags = serde_json::to_string(&model::tags(&t)?).map_err(ApiError::internal)?;
    }
    if let Some(e) = b.expires_at {
        l.expires_at = e.as_deref().map(|t| time("expires_at", t)).transpose()?;
    }
    if let Some(u) = b.expired_url {
        l.expired_url = optional_url("expired_url", u)?;
    }
    if let Some(m) = b.max_clicks {
        l.max_clicks = max_clicks(m)?;
    }
    if let Some(p) = b.password {
        l.password_hash = password_hash(&s, p).await?;
    }
    if let Some(r) = b.redirect_type {
        l.redirect_type = redirect_type(Some(r))?;
    }
    if let Some(u) = b.utm {
        let utm = u.map(Utm::checked).transpose()?.flatten();
        l.utm = utm.map(|u| serde_json::to_string(&u)).transpose().map_err(ApiError::internal)?;
    }
    if let Some(u) = b.ios_url {
        l.ios_url = optional_url("ios_url", u)?;
    }
    if let Some(u) = b.android_url {
        l.android_url = optional_url("android_url", u)?;
    }
    if let Some(g) = b.geo {
        let geo = g.as_ref().map(model::geo).transpose()?.filter(|g| !g.is_empty());
        l.geo = geo.map(|g| serde_json::to_string(&g)).transpose().map_err(ApiError::internal)?;
    }
    if let Some(p) = b.pixels {
        l.pixels = pixels::attach(&s, caller.tenant, &p).await?;
    }
    l.updated_at = Timestamp::now();
    s.store.update(&l, &caller.actor()).await?;
    Ok(axum::Json(link_json(&s, &l)).into_response())
}

async fn remove(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    caller.require("links:write")?;
    if !s.store.delete(caller.tenant, id, &caller.actor()).await? {
        return Err(Problem::not_found().into());
    }
    tracing::info!(tenant_id = %caller.tenant, link_id = %id, "link deleted");
    Ok(StatusCode::NO_CONTENT)
}
