//! The links store: tenant transactions on `links.links`, and the global slug
//! directory `links.slugs` (public read, tenant-only writes), one body for both
//! engines.

use async_trait::async_trait;
use kernel::Problem;
use kernel::TenantId;
use kernel::db::{Db, DbError, DbResultExt, Id, PgDb, SqliteDb, Timestamp};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::model::{QrRoute, RouteRecord, Utm};

/// A link as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Link {
    pub tenant_id: Id,
    pub id: Id,
    pub domain: String,
    pub slug: String,
    pub url: String,
    pub title: Option<String>,
    pub tags: String,
    pub expires_at: Option<Timestamp>,
    pub expired_url: Option<String>,
    pub max_clicks: Option<i64>,
    pub password_hash: Option<String>,
    pub redirect_type: i32,
    pub utm: Option<String>,
    pub ios_url: Option<String>,
    pub android_url: Option<String>,
    pub geo: Option<String>,
    /// JSON array of the attached pixels ([`crate::model::PixelTag`]).
    pub pixels: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
}

impl Link {
    /// The attached pixels.
    pub fn pixel_tags(&self) -> Vec<crate::model::PixelTag> {
        serde_json::from_str(&self.pixels).unwrap_or_default()
    }

    /// The tags as a list.
    pub fn tag_list(&self) -> Vec<String> {
        serde_json::from_str(&self.tags).unwrap_or_default()
    }

    /// What routing needs.
    pub fn route(&self) -> RouteRecord {
        RouteRecord {
            tenant_id: TenantId::from_uuid(self.tenant_id.0),
            link_id: self.id.0,
            domain: self.domain.clone(),
            slug: self.slug.clone(),
            url: self.url.clone(),
            redirect_type: u16::try_from(self.redirect_type).unwrap_or(302),
            expires_at: self.expires_at.map(Timestamp::unix),
            expired_url: self.expired_url.clone(),
            max_clicks: self.max_clicks,
            password_hash: self.password_hash.clone(),
            utm: self.utm.as_deref().and_then(|u| serde_json::from_str::<Utm>(u).ok()),
            ios_url: self.ios_url.clone(),
            android_url: self.android_url.clone(),
            geo: self.geo.as_deref().and_then(|g| serde_json::from_str(g).ok()),
            pixels: self.pixel_tags(),
            deleted: self.deleted_at.is_some(),
            version: self.updated_at.unix(),
        }
    }
}

/// The payload of `link.created`, `link.updated` and `link.deleted`: the route,
/// plus the title and tags that analytics groups by.
#[derive(Serialize)]
struct LinkEvent<'a> {
    #[serde(flatten)]
    route: RouteRecord,
    title: &'a Option<String>,
    tags: Value,
}

fn event(link: &Link) -> LinkEvent<'_> {
    LinkEvent {
        route: link.route(),
        title: &link.title,
        tags: serde_json::from_str(&link.tags).unwrap_or(Value::Null),
    }
}

/// A dynamic QR code.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Qr {
    pub tenant_id: Id,
    pub id: Id,
    pub code: String,
    pub link_id: Id,
    pub title: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
    /// SHA-256 (hex) of the logo PNG, when there is one.
    pub logo: Option<String>,
}

impl Qr {
    /// What routing keeps of a QR code.
    pub fn route(&self) -> QrRoute {
        QrRoute {
            tenant_id: TenantId::from_uuid(self.tenant_id.0),
            qr_id: self.id.0,
            code: self.code.clone(),
            link_id: self.link_id.0,
            deleted: self.deleted_at.is_some(),
            version: self.updated_at.unix(),
        }
    }
}

/// A custom domain of a workspace.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Domain {
    pub tenant_id: Id,
    pub id: Id,
    pub hostname: String,
    pub token: String,
    pub verified_at: Option<Timestamp>,
    pub is_default: bool,
    pub created_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
}

/// The payload of `domain.verified` and `domain.deleted`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DomainEvent {
    pub domain_id: Uuid,
    pub hostname: String,
    pub tenant_id: TenantId,
    pub version: i64,
}

/// The directory domain of QR codes.
pub const QR_DOMAIN: &str = "#qr";

/// Filters of the link list.
#[derive(Debug, Clone)]
pub struct LinkFilter {
    /// Lower-cased, escaped `%term%`, or empty.
    pub search: String,
    /// `%"tag"%` (escaped), or empty.
    pub tag: String,
    /// Keyset cursor: links older than this id.
    pub before: Option<Uuid>,
    /// Page size + 1.
    pub limit: i64,
}

/// The links store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reserves the slug and stores the link with its `link.created` event.
    /// A taken slug is `DbError::Constraint` with a 409.
    async fn create(&self, link: &Link, actor: &str) -> Result<(), DbError>;
    async fn get(&self, tenant: TenantId, id: Uuid) -> Result<Option<Link>, DbError>;
    async fn list(&self, tenant: TenantId, filter: &LinkFilter) -> Result<Vec<Link>, DbError>;
    /// Stores a changed link with its `link.updated` event.
    async fn update(&self, link: &Link, actor: &str) -> Result<(), DbError>;
    /// Soft-deletes (the slug stays reserved) with a `link.deleted` event.
    async fn delete(&self, tenant: TenantId, id: Uuid, actor: &str) -> Result<bool, DbError>;
    /// The live link a public path names, whichever tenant owns it.
    async fn by_slug(&self, domain: &str, slug: &str) -> Result<Option<Link>, DbError>;

    /// Reserves the code and stores the QR code with its `qr.created` event.
    async fn create_qr(&self, qr: &Qr, actor: &str) -> Result<(), DbError>;
    async fn get_qr(&self, tenant: TenantId, id: Uuid) -> Result<Option<Qr>, DbError>;
    /// A page of QR codes, newest first (ids before `before`).
    async fn list_qr(&self, tenant: TenantId, before: Option<Uuid>, limit: i64) -> Result<Vec<Qr>, DbError>;
    /// Stores a change (or, with `deleted_at` set, a deletion) with its `qr.updated` event.
    async fn update_qr(&self, qr: &Qr, actor: &str) -> Result<(), DbError>;
    /// The live QR code of a scan code, and its link.
    async fn qr_by_code(&self, code: &str) -> Result<Option<(Qr, Link)>, DbError>;

    async fn add_domain(&self, d: &Domain) -> Result<(), DbError>;
    async fn domains(&self, tenant: TenantId) -> Result<Vec<Domain>, DbError>;
    /// Marks a domain verified with its `domain.verified` event; a hostname another
    /// workspace verified first is a 409.
    async fn verify_domain(
        &self,
        tenant: TenantId,
        id: Uuid,
        now: Timestamp,
        actor: &str,
    ) -> Result<(), DbError>;
    /// Makes one verified domain the default for new links.
    async fn default_domain(&self, tenant: TenantId, id: Uuid) -> Result<bool, DbError>;
    /// Removes a domain (with `domain.deleted` when it was verified).
    async fn delete_domain(&self, tenant: TenantId, id: Uuid, actor: &str) -> Result<bool, DbError>;

    async fn start_import(&self, job: &ImportJob) -> Result<(), DbError>;
    async fn save_import(&self, job: &ImportJob) -> Result<(), DbError>;
    /// Saves `job` as interrupted only if it is still running with the
    /// heartbeat `beat` (its runner did not save meanwhile); false otherwise.
    async fn interrupt_import(&self, job: &ImportJob, beat: Timestamp) -> Result<bool, DbError>;
    async fn import(&self, tenant: TenantId, id: Uuid) -> Result<Option<ImportJob>, DbError>;

    async fn add_pixel(&self, p: &Pixel) -> Result<(), DbError>;
    async fn pixels(&self, tenant: TenantId) -> Result<Vec<Pixel>, DbError>;
    async fn delete_pixel(&self, tenant: TenantId, id: Uuid) -> Result<bool, DbError>;
}

/// A CSV import and its per-row report.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImportJob {
    pub tenant_id: Id,
    pub id: Id,
    pub status: String,
    pub total: i64,
    pub imported: i64,
    /// JSON array of `{row, error}`.
    pub errors: String,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// When the process running it last saved its progress.
    pub heartbeat_at: Option<Timestamp>,
}

/// A tracking pixel of a workspace.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pixel {
    pub tenant_id: Id,
    pub id: Id,
    pub kind: String,
    pub pixel_id: String,
    pub name: Option<String>,
    pub created_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
}

/// The store for a database.
pub fn for_db(db: &Db) -> std::sync::Arc<dyn Store> {
    match db {
        Db::Postgres(pg) => std::sync::Arc::new(PgStore(pg.clone())),
        Db::Sqlite(lite) => std::sync::Arc::new(SqliteStore(lite.clone())),
    }
}

struct PgStore(PgDb);
struct SqliteStore(SqliteDb);

const RESERVE_SLUG: &str =
    "insert into links.slugs (tenant_id, domain, slug, link_id) values ($1, $2, $3, $4)";
const INSERT: &str = "insert into links.links (tenant_id, id, domain, slug, url, title, tags, expires_at, \
     expired_url, max_clicks, password_hash, redirect_type, utm, ios_url, android_url, geo, created_at, updated_at, \
     pixels) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)";
const COLUMNS_BY_ID: &str = "select tenant_id, id, domain, slug, url, title, tags, expires_at, expired_url, \
     max_clicks, password_hash, redirect_type, utm, ios_url, android_url, geo, pixels, created_at, updated_at, deleted_at \
     from links.links where tenant_id = $1 and id = $2 and deleted_at is null";
const LIST: &str = "select tenant_id, id, domain, slug, url, title, tags, expires_at, expired_url, \
     max_clicks, password_hash, redirect_type, utm, ios_url, android_url, geo, pixels, created_at, updated_at, deleted_at \
     from links.links where tenant_id = $1 and deleted_at is null and id < $2 \
     and ($3 = '' or lower(coalesce(title, '')) like $3 escape '\\' or lower(url) like $3 escape '\\' \
          or lower(slug) like $3 escape '\\') \
     and ($4 = '' or tags like $4 escape '\\') \
     order by id desc limit $5";
const UPDATE: &str = "update links.links set url = $3, title = $4, tags = $5, expires_at = $6, expired_url = $7, \
     max_clicks = $8, password_hash = $9, redirect_type = $10, utm = $11, ios_url = $12, android_url = $13, \
     geo = $14, updated_at = $15, pixels = $16 where tenant_id = $1 and id = $2 and deleted_at is null";
const DELETE: &str = "update links.links set deleted_at = $3, updated_at = $3 where tenant_id = $1 and id = $2 and deleted_at is null";
const DELETED_BY_ID: &str = "select tenant_id, id, domain, slug, url, title, tags, expires_at, expired_url, \
     max_clicks, password_hash, redirect_type, utm, ios_url, android_url, geo, pixels, created_at, updated_at, deleted_at \
     from links.links where tenant_id = $1 and id = $2";
const INSERT_QR: &str = "insert into links.qr_codes (tenant_id, id, code, link_id, title, created_at, updated_at) \
     values ($1, $2, $3, $4, $5, $6, $7)";
const QR_BY_ID: &str = "select tenant_id, id, code, link_id, title, created_at, updated_at, deleted_at, logo \
     from links.qr_codes where tenant_id = $1 and id = $2 and deleted_at is null";
const LIST_QR: &str = "select tenant_id, id, code, link_id, title, created_at, updated_at, deleted_at, logo \
     from links.qr_codes where tenant_id = $1 and deleted_at is null and id < $2 order by id desc limit $3";
const UPDATE_QR: &str = "update links.qr_codes set link_id = $3, title = $4, updated_at = $5, deleted_at = $6, logo = $7 \
     where tenant_id = $1 and id = $2 and deleted_at is null";
const INSERT_DOMAIN: &str = "insert into links.domains (tenant_id, id, hostname, token, created_at) \
     values ($1, $2, $3, $4, $5)";
const DOMAINS: &str = "select tenant_id, id, hostname, token, verified_at, is_default, created_at, deleted_at \
     from links.domains where tenant_id = $1 and deleted_at is null order by created_at, id";
const VERIFY_DOMAIN: &str = "update links.domains set verified_at = $3 \
     where tenant_id = $1 and id = $2 and deleted_at is null and verified_at is null";
const CLEAR_DEFAULT: &str = "update links.domains set is_default = false where tenant_id = $1";
const SET_DEFAULT: &str = "update links.domains set is_default = true \
     where tenant_id = $1 and id = $2 and deleted_at is null and verified_at is not null";
const DELETE_DOMAIN: &str = "update links.domains set deleted_at = $3, is_default = false \
     where tenant_id = $1 and id = $2 and deleted_at is null";
const INSERT_JOB: &str = "insert into links.import_jobs \
     (tenant_id, id, status, total, imported, errors, created_at, heartbeat_at) values ($1, $2, $3, $4, $5, $6, $7, $8)";
const SAVE_JOB: &str = "update links.import_jobs set status = $3, imported = $4, errors = $5, finished_at = $6, \
     heartbeat_at = $7 where tenant_id = $1 and id = $2";
const INTERRUPT_JOB: &str = "update links.import_jobs set status = $3, errors = $4, finished_at = $5 \
     where tenant_id = $1 and id = $2 and status = 'running' and coalesce(heartbeat_at, created_at) = $6";
const JOB: &str = "select tenant_id, id, status, total, imported, errors, created_at, finished_at, heartbeat_at \
     from links.import_jobs where tenant_id = $1 and id = $2";
const INSERT_PIXEL: &str = "insert into links.pixels (tenant_id, id, kind, pixel_id, name, created_at) \
     values ($1, $2, $3, $4, $5, $6)";
const PIXELS: &str = "select tenant_id, id, kind, pixel_id, name, created_at, deleted_at from links.pixels \
     where tenant_id = $1 and deleted_at is null order by created_at, id";
const DELETE_PIXEL: &str =
    "update links.pixels set deleted_at = $3 where tenant_id = $1 and id = $2 and deleted_at is null";
const SLUG_OWNER: &str = "select tenant_id, link_id from links.slugs where domain = $1 and slug = $2";

macro_rules! store_impl {
    ($Store:ident) => {
        #[async_trait]
        impl Store for $Store {
            async fn create(&self, l: &Link, actor: &str) -> Result<(), DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(l.tenant_id.0)).await?;
                tx.execute(tx.query(RESERVE_SLUG).bind(l.domain.clone()).bind(l.slug.clone()).bind(l.id))
                    .await
                    .on_unique(|| Problem::conflict(format!("the slug {:?} is taken", l.slug)))?;
                tx.execute(
                    tx.query(INSERT)
                        .bind(l.id)
                        .bind(l.domain.clone())
                        .bind(l.slug.clone())
                        .bind(l.url.clone())
                        .bind(l.title.clone())
                        .bind(l.tags.clone())
                        .bind(l.expires_at)
                        .bind(l.expired_url.clone())
                        .bind(l.max_clicks)
                        .bind(l.password_hash.clone())
                        .bind(l.redirect_type)
                        .bind(l.utm.clone())
                        .bind(l.ios_url.clone())
                        .bind(l.android_url.clone())
                        .bind(l.geo.clone())
                        .bind(l.created_at)
                        .bind(l.updated_at)
                        .bind(l.pixels.clone()),
                )
                .await
                .on_unique(|| Problem::conflict(format!("the slug {:?} is taken", l.slug)))?;
                tx.emit("link.created", actor, &event(l)).await?;
                tx.commit().await
            }

            async fn get(&self, tenant: TenantId, id: Uuid) -> Result<Option<Link>, DbError> {
                let mut tx = self.0.read(tenant).await?;
                tx.fetch_optional(tx.query_as(COLUMNS_BY_ID).bind(Id(id))).await
            }

            async fn list(&self, tenant: TenantId, f: &LinkFilter) -> Result<Vec<Link>, DbError> {
                let mut tx = self.0.read(tenant).await?;
                let before = Id(f.before.unwrap_or(Uuid::max()));
                tx.fetch_all(
                    tx.query_as(LIST).bind(before).bind(f.search.clone()).bind(f.tag.clone()).bind(f.limit),
                )
                .await
            }

            async fn update(&self, l: &Link, actor: &str) -> Result<(), DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(l.tenant_id.0)).await?;
                tx.execute(
                    tx.query(UPDATE)
                        .bind(l.id)
                        .bind(l.url.clone())
                        .bind(l.title.clone())
                        .bind(l.tags.clone())
                        .bind(l.expires_at)
                        .bind(l.expired_url.clone())
                        .bind(l.max_clicks)
                        .bind(l.password_hash.clone())
                        .bind(l.redirect_type)
                        .bind(l.utm.clone())
                        .bind(l.ios_url.clone())
                        .bind(l.android_url.clone())
                        .bind(l.geo.clone())
                        .bind(l.updated_at)
                        .bind(l.pixels.clone()),
                )
                .await?;
                tx.emit("link.updated", actor, &event(l)).await?;
                tx.commit().await
            }

            async fn delete(&self, tenant: TenantId, id: Uuid, actor: &str) -> Result<bool, DbError> {
                let mut tx = self.0.begin(tenant).await?;
                let n = tx.execute(tx.query(DELETE).bind(Id(id)).bind(Timestamp::now())).await?;
                if n == 0 {
                    return Ok(false);
                }
                let link: Option<Link> = tx.fetch_optional(tx.query_as(DELETED_BY_ID).bind(Id(id))).await?;
                if let Some(l) = &link {
                    tx.emit("link.deleted", actor, &event(l)).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn by_slug(&self, domain: &str, slug: &str) -> Result<Option<Link>, DbError> {
                let owner: Option<(Id, Id)> = {
                    let mut tx = self.0.read_global().await?;
                    tx.fetch_optional(tx.query_as(SLUG_OWNER).bind(domain.to_string()).bind(slug.to_string()))
                        .await?
                };
                let Some((tenant, id)) = owner else { return Ok(None) };
                self.get(TenantId::from_uuid(tenant.0), id.0).await
            }

            async fn create_qr(&self, q: &Qr, actor: &str) -> Result<(), DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(q.tenant_id.0)).await?;
                tx.execute(
                    tx.query(RESERVE_SLUG).bind(QR_DOMAIN.to_string()).bind(q.code.clone()).bind(q.id),
                )
                .await
                .on_unique(|| Problem::conflict("the QR code is taken"))?;
                tx.execute(
                    tx.query(INSERT_QR)
                        .bind(q.id)
                        .bind(q.code.clone())
                        .bind(q.link_id)
                        .bind(q.title.clone())
                        .bind(q.created_at)
                        .bind(q.updated_at),
                )
                .await
                .on_unique(|| Problem::conflict("the QR code is taken"))?;
                tx.emit("qr.created", actor, &QrEvent { route: q.route(), title: q.title.clone() }).await?;
                tx.commit().await
            }

            async fn get_qr(&self, tenant: TenantId, id: Uuid) -> Result<Option<Qr>, DbError> {
                let mut tx = self.0.read(tenant).await?;
                tx.fetch_optional(tx.query_as(QR_BY_ID).bind(Id(id))).await
            }

            async fn list_qr(
                &self,
                tenant: TenantId,
                before: Option<Uuid>,
                limit: i64,
            ) -> Result<Vec<Qr>, DbError> {
                let mut tx = self.0.read(tenant).await?;
                tx.fetch_all(tx.query_as(LIST_QR).bind(Id(before.unwrap_or(Uuid::max()))).bind(limit)).await
            }

            async fn update_qr(&self, q: &Qr, actor: &str) -> Result<(), DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(q.tenant_id.0)).await?;
                tx.execute(
                    tx.query(UPDATE_QR)
                        .bind(q.id)
                        .bind(q.link_id)
                        .bind(q.title.clone())
                        .bind(q.updated_at)
                        .bind(q.deleted_at)
                        .bind(q.logo.clone()),
                )
                .await?;
                tx.emit("qr.updated", actor, &QrEvent { route: q.route(), title: q.title.clone() }).await?;
                tx.commit().await
            }

            async fn qr_by_code(&self, code: &str) -> Result<Option<(Qr, Link)>, DbError> {
                let owner: Option<(Id, Id)> = {
                    let mut tx = self.0.read_global().await?;
                    tx.fetch_optional(
                        tx.query_as(SLUG_OWNER).bind(QR_DOMAIN.to_string()).bind(code.to_string()),
                    )
                    .await?
                };
                let Some((tenant, id)) = owner else { return Ok(None) };
                let tenant = TenantId::from_uuid(tenant.0);
                let Some(qr) = self.get_qr(tenant, id.0).await? else { return Ok(None) };
                Ok(self.get(tenant, qr.link_id.0).await?.map(|link| (qr, link)))
            }

            async fn add_domain(&self, d: &Domain) -> Result<(), DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(d.tenant_id.0)).await?;
                tx.execute(
                    tx.query(INSERT_DOMAIN)
                        .bind(d.id)
                        .bind(d.hostname.clone())
                        .bind(d.token.clone())
                        .bind(d.created_at),
                )
                .await
                .on_unique(|| Problem::conflict("this workspace already has that domain"))?;
                tx.commit().await
            }

            async fn domains(&self, tenant: TenantId) -> Result<Vec<Domain>, DbError> {
                let mut tx = self.0.read(tenant).await?;
                tx.fetch_all(tx.query_as(DOMAINS)).await
            }

            async fn verify_domain(
                &self,
                tenant: TenantId,
                id: Uuid,
                now: Timestamp,
                actor: &str,
            ) -> Result<(), DbError> {
                let mut tx = self.0.begin(tenant).await?;
                tx.execute(tx.query(VERIFY_DOMAIN).bind(Id(id)).bind(now))
                    .await
                    .on_unique(|| Problem::conflict("another workspace has verified this hostname"))?;
                let all: Vec<Domain> = tx.fetch_all(tx.query_as(DOMAINS)).await?;
                if let Some(d) = all.iter().find(|d| d.id.0 == id) {
                    let e = DomainEvent {
                        domain_id: id,
                        hostname: d.hostname.clone(),
                        tenant_id: tenant,
                        version: now.unix(),
                    };
                    tx.emit("domain.verified", actor, &e).await?;
                }
                tx.commit().await
            }

            async fn default_domain(&self, tenant: TenantId, id: Uuid) -> Result<bool, DbError> {
                let mut tx = self.0.begin(tenant).await?;
                tx.execute(tx.query(CLEAR_DEFAULT)).await?;
                let n = tx.execute(tx.query(SET_DEFAULT).bind(Id(id))).await?;
                if n == 0 {
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn delete_domain(&self, tenant: TenantId, id: Uuid, actor: &str) -> Result<bool, DbError> {
                let mut tx = self.0.begin(tenant).await?;
                let all: Vec<Domain> = tx.fetch_all(tx.query_as(DOMAINS)).await?;
                let Some(d) = all.into_iter().find(|d| d.id.0 == id) else { return Ok(false) };
                let now = Timestamp::now();
                tx.execute(tx.query(DELETE_DOMAIN).bind(Id(id)).bind(now)).await?;
                if d.verified_at.is_some() {
                    let e = DomainEvent {
                        domain_id: id,
                        hostname: d.hostname,
                        tenant_id: tenant,
                        version: now.unix(),
                    };
                    tx.emit("domain.deleted", actor, &e).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn start_import(&self, j: &ImportJob) -> Result<(), DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(j.tenant_id.0)).await?;
                tx.execute(
                    tx.query(INSERT_JOB)
                        .bind(j.id)
                        .bind(j.status.clone())
                        .bind(j.total)
                        .bind(j.imported)
                        .bind(j.errors.clone())
                        .bind(j.created_at)
                        .bind(j.heartbeat_at),
                )
                .await?;
                tx.commit().await
            }

            async fn save_import(&self, j: &ImportJob) -> Result<(), DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(j.tenant_id.0)).await?;
                tx.execute(
                    tx.query(SAVE_JOB)
                        .bind(j.id)
                        .bind(j.status.clone())
                        .bind(j.imported)
                        .bind(j.errors.clone())
                        .bind(j.finished_at)
                        .bind(j.heartbeat_at),
                )
                .await?;
                tx.commit().await
            }

            async fn interrupt_import(&self, j: &ImportJob, beat: Timestamp) -> Result<bool, DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(j.tenant_id.0)).await?;
                let changed = tx
                    .execute(
                        tx.query(INTERRUPT_JOB)
                            .bind(j.id)
                            .bind(j.status.clone())
                            .bind(j.errors.clone())
                            .bind(j.finished_at)
                            .bind(beat),
                    )
                    .await?;
                tx.commit().await?;
                Ok(changed == 1)
            }

            async fn import(&self, tenant: TenantId, id: Uuid) -> Result<Option<ImportJob>, DbError> {
                let mut tx = self.0.read(tenant).await?;
                tx.fetch_optional(tx.query_as(JOB).bind(Id(id))).await
            }

            async fn add_pixel(&self, p: &Pixel) -> Result<(), DbError> {
                let mut tx = self.0.begin(TenantId::from_uuid(p.tenant_id.0)).await?;
                tx.execute(
                    tx.query(INSERT_PIXEL)
                        .bind(p.id)
                        .bind(p.kind.clone())
                        .bind(p.pixel_id.clone())
                        .bind(p.name.clone())
                        .bind(p.created_at),
                )
                .await?;
                tx.commit().await
            }

            async fn pixels(&self, tenant: TenantId) -> Result<Vec<Pixel>, DbError> {
                let mut tx = self.0.read(tenant).await?;
                tx.fetch_all(tx.query_as(PIXELS)).await
            }

            async fn delete_pixel(&self, tenant: TenantId, id: Uuid) -> Result<bool, DbError> {
                let mut tx = self.0.begin(tenant).await?;
                let n = tx.execute(tx.query(DELETE_PIXEL).bind(Id(id)).bind(Timestamp::now())).await?;
                tx.commit().await?;
                Ok(n == 1)
            }
        }
    };
}

#[derive(Serialize)]
struct QrEvent {
    #[serde(flatten)]
    route: QrRoute,
    title: Option<String>,
}

store_impl!(PgStore);
store_impl!(SqliteStore);
