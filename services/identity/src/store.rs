//! Identity's store: one trait, one implementation per engine generated from
//! the same SQL text (the portable column types make the code identical).
//!
//! Identity's tables are global (see the migration): a query that serves a
//! tenant-facing route takes the caller's workspace as an argument and names it.

use async_trait::async_trait;
use kernel::TenantId;
use kernel::db::{DbError, Id, PgDb, SqliteDb, Timestamp};
use serde::Serialize;
use uuid::Uuid;

use crate::roles::Role;

/// An account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: Id,
    pub email: String,
    pub name: String,
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub status: String,
    pub platform_admin: bool,
    pub avatar_asset_id: Option<Id>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub preferences: String,
    pub last_workspace_id: Option<Id>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A workspace with the caller's role in it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Workspace {
    pub id: Id,
    pub name: String,
    pub role: String,
    pub created_at: Timestamp,
}

/// A member of a workspace.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Member {
    #[sqlx(flatten)]
    pub user: User,
    pub role: String,
    pub joined_at: Timestamp,
}

/// A login session (one refresh-token family).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Session {
    pub id: Id,
    pub user_id: Id,
    pub workspace_id: Id,
    pub kind: String,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub created_at: Timestamp,
    pub last_used_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// An invitation (the token itself is only ever in the email).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Invitation {
    pub id: Id,
    pub workspace_id: Id,
    pub email: String,
    pub role: String,
    pub invited_by: Id,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// An API key (without its secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Id,
    pub workspace_id: Id,
    pub user_id: Id,
    pub name: String,
    pub prefix: String,
    #[serde(skip)]
    pub scopes: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// Everything a registration writes.
#[derive(Debug, Clone)]
pub struct Registration {
    pub user: User,
    pub workspace_id: Uuid,
    pub workspace_name: String,
    pub session: NewSession,
}

/// A session to open, with its first refresh token's digest.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub workspace_id: Uuid,
    pub kind: &'static str,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub now: Timestamp,
    pub expires_at: Timestamp,
    pub refresh_hash: String,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone)]
pub enum Refreshed {
    /// Rotated: the new token is stored, here is the live session.
    Rotated(Session),
    /// The token was already spent: the session is now revoked.
    Reused(Uuid),
    /// Unknown, expired, or of a revoked session.
    Invalid,
}

/// Why a membership change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Done.
    Done,
    /// Not a member.
    NotFound,
    /// It would leave the workspace without an owner.
    LastOwner,
}

/// Filters of the user list.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Lower-cased `%term%` LIKE pattern (escaped), or empty.
    pub search: String,
    /// Role, or empty.
    pub role: String,
    /// Status, or empty.
    pub status: String,
    /// Keyset cursor: users after this id.
    pub after: Option<Uuid>,
    /// Page size + 1.
    pub limit: i64,
}

/// Profile fields a PATCH may change (`None` = unchanged).
#[derive(Debug, Clone, Default)]
pub struct ProfileChange {
    pub name: Option<String>,
    pub locale: Option<Option<String>>,
    pub timezone: Option<Option<String>>,
    pub avatar_asset_id: Option<Option<Uuid>>,
    pub preferences: Option<String>,
    pub status: Option<String>,
}

/// An OAuth identity's link.
#[derive(Debug, Clone)]
pub struct NewIdentity {
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
}

/// Identity's persistence.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user, their workspace (owner) and first session; emits
    /// `user.registered` and `tenant.created`. A taken email is a unique violation.
    async fn register(&self, r: &Registration) -> Result<(), DbError>;
    async fn user(&self, id: Uuid) -> Result<Option<User>, DbError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, DbError>;
    /// Stores a rehashed password (same password, stronger parameters).
    async fn rehash(&self, user: Uuid, hash: &str) -> Result<(), DbError>;
    /// Sets a new password, spends every outstanding reset token and revokes
    /// every session except `keep`; returns the revoked session ids.
    async fn set_password(&self, user: Uuid, hash: &str, keep: Option<Uuid>) -> Result<Vec<Uuid>, DbError>;
    async fn update_profile(&self, user: Uuid, change: &ProfileChange) -> Result<Option<User>, DbError>;
    /// Revokes every session of a user (disabling, deleting); returns their ids.
    async fn revoke_user_sessions(&self, user: Uuid, workspace: Option<Uuid>) -> Result<Vec<Uuid>, DbError>;
    /// Members of a workspace, filtered, in id order.
    async fn members(&self, workspace: Uuid, filter: &UserFilter) -> Result<Vec<Member>, DbError>;
    /// Every user (platform admins), filtered.
    async fn all_users(&self, filter: &UserFilter) -> Result<Vec<User>, DbError>;
    /// Deletes an account: its memberships go; owned workspaces keep their other owners.
    async fn delete_user(&self, user: Uuid) -> Result<Vec<Uuid>, DbError>;

    async fn create_workspace(&self, user: Uuid, id: Uuid, name: &str, now: Timestamp)
    -> Result<(), DbError>;
    async fn workspaces_of(&self, user: Uuid) -> Result<Vec<Workspace>, DbError>;
    async fn all_workspaces(&self, limit: i64) -> Result<Vec<Workspace>, DbError>;
    async fn role_in(&self, workspace: Uuid, user: Uuid) -> Result<Option<Role>, DbError>;
    async fn set_role(&self, workspace: Uuid, user: Uuid, role: Role) -> Result<MembershipChange, DbError>;
    async fn remove_member(&self, workspace: Uuid, user: Uuid) -> Result<MembershipChange, DbError>;

    async fn open_session(&self, s: &NewSession) -> Result<(), DbError>;
    async fn session(&self, id: Uuid) -> Result<Option<Session>, DbError>;
    async fn sessions_of(&self, user: Uuid) -> Result<Vec<Session>, DbError>;
    /// Spends `old` and stores `new` in its family, or revokes the family on reuse.
    async fn refresh(&self, old: &str, new: &str, now: Timestamp) -> Result<Refreshed, DbError>;
    /// Moves a session to another workspace with a new refresh token (old ones are spent).
    async fn switch_session(
        &self,
        session: Uuid,
        workspace: Uuid,
        refresh_hash: &str,
        now: Timestamp,
    ) -> Result<(), DbError>;
    /// Revokes one session of `user`; false if there is no such live session.
    async fn revoke_session(&self, user: Uuid, session: Uuid) -> Result<bool, DbError>;

    /// Stores an emailed token, spending older ones of the same purpose.
    async fn issue_email_token(
        &self,
        purpose: &str,
        user: Uuid,
        email: &str,
        hash: &str,
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<(), DbError>;
    /// Spends a live emailed token; returns its user and email.
    async fn spend_email_token(
        &self,
        purpose: &str,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<(Uuid, String)>, DbError>;
    async fn mark_verified(&self, user: Uuid, email: &str) -> Result<(), DbError>;

    async fn create_invitation(&self, i: &Invitation, token_hash: &str) -> Result<(), DbError>;
    async fn invitations(&self, workspace: Uuid) -> Result<Vec<Invitation>, DbError>;
    async fn revoke_invitation(&self, workspace: Uuid, id: Uuid, now: Timestamp) -> Result<bool, DbError>;
    /// Spends a live invitation for `email` and adds `user` with its role.
    async fn accept_invitation(
        &self,
        hash: &str,
        user: Uuid,
        email: &str,
        now: Timestamp,
    ) -> Result<Option<Invitation>, DbError>;

    async fn create_api_key(&self, k: &ApiKey, key_hash: &str) -> Result<(), DbError>;
    async fn api_keys(&self, workspace: Uuid) -> Result<Vec<ApiKey>, DbError>;
    async fn revoke_api_key(&self, workspace: Uuid, id: Uuid, now: Timestamp) -> Result<bool, DbError>;
    /// A live key by digest, with its owner's current role and status.
    async fn api_key_by_hash(
        &self,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<(ApiKey, String, String)>, DbError>;

    async fn user_by_identity(&self, provider: &str, subject: &str) -> Result<Option<User>, DbError>;
    async fn link_identity(&self, user: Uuid, identity: &NewIdentity, now: Timestamp) -> Result<(), DbError>;
}

/// The store for a service database.
pub fn for_db(db: &kernel::db::Db) -> std::sync::Arc<dyn Store> {
    match db {
        kernel::db::Db::Postgres(pg) => std::sync::Arc::new(PgStore(pg.clone())),
        kernel::db::Db::Sqlite(lite) => std::sync::Arc::new(SqliteStore(lite.clone())),
    }
}

struct PgStore(PgDb);
struct SqliteStore(SqliteDb);

const INSERT_USER: &str = "insert into identity.users (id, email, name, password_hash, email_verified, status, \
     platform_admin, avatar_asset_id, locale, timezone, preferences, last_workspace_id, created_at, updated_at) \
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
const INSERT_WORKSPACE: &str =
    "insert into identity.workspaces (id, name, created_by, created_at) values ($1, $2, $3, $4)";
const INSERT_MEMBERSHIP: &str =
    "insert into identity.memberships (workspace_id, user_id, role, created_at) values ($1, $2, $3, $4)";
const INSERT_SESSION: &str = "insert into identity.sessions (id, user_id, workspace_id, kind, user_agent, ip, \
     created_at, last_used_at, expires_at) values ($1, $2, $3, $4, $5, $6, $7, $7, $8)";
const INSERT_REFRESH: &str =
    "insert into identity.refresh_tokens (token_hash, session_id, created_at) values ($1, $2, $3)";
const SET_LAST_WORKSPACE: &str = "update identity.users set last_workspace_id = $2 where id = $1";

const USER_BY_ID: &str = "select id, email, name, password_hash, email_verified, status, platform_admin, \
     avatar_asset_id, locale, timezone, preferences, last_workspace_id, created_at, updated_at \
     from identity.users where id = $1";
const USER_BY_EMAIL: &str = "select id, email, name, password_hash, email_verified, status, platform_admin, \
     avatar_asset_id, locale, timezone, preferences, last_workspace_id, created_at, updated_at \
     from identity.users where email = $1";
const REHASH: &str = "update identity.users set password_hash = $2 where id = $1";
const SET_PASSWORD: &str = "update identity.users set password_hash = $2, updated_at = $3 where id = $1";
const SPEND_RESETS: &str = "update identity.email_tokens set used_at = $2 \
     where user_id = $1 and purpose = 'reset' and used_at is null";
const LIVE_SESSIONS_OF: &str =
    "select id from identity.sessions where user_id = $1 and revoked_at is null and expires_at > $2";
const LIVE_SESSIONS_IN: &str = "select id from identity.sessions \
     where user_id = $1 and workspace_id = $2 and revoked_at is null and expires_at > $3";
const REVOKE_SESSION: &str =
    "update identity.sessions set revoked_at = $2 where id = $1 and revoked_at is null";
const UPDATE_PROFILE: &str = "update identity.users set name = $2, locale = $3, timezone = $4, \
     avatar_asset_id = $5, preferences = $6, status = $7, updated_at = $8 where id = $1";
const MEMBERS: &str = "select u.id, u.email, u.name, u.password_hash, u.email_verified, u.status, \
     u.platform_admin, u.avatar_asset_id, u.locale, u.timezone, u.preferences, u.last_workspace_id, \
     u.created_at, u.updated_at, m.role, m.created_at as joined_at \
     from identity.memberships m join identity.users u on u.id = m.user_id \
     where m.workspace_id = $1 and u.id > $2 \
     and ($3 = '' or lower(u.name) like $3 escape '\\' or u.email like $3 escape '\\') \
     and ($4 = '' or m.role = $4) and ($5 = '' or u.status = $5) \
     order by u.id limit $6";
const ALL_USERS: &str = "select id, email, name, password_hash, email_verified, status, platform_admin, \
     avatar_asset_id, locale, timezone, preferences, last_workspace_id, created_at, updated_at \
     from identity.users where id > $1 \
     and ($2 = '' or lower(name) like $2 escape '\\' or email like $2 escape '\\') \
     and ($3 = '' or status = $3) order by id limit $4";
const DELETE_USER: &str = "delete from identity.users where id = $1";
const OWNED_SOLO: &str = "select m.workspace_id from identity.memberships m where m.user_id = $1 \
     and m.role = 'owner' and not exists (select 1 from identity.memberships o \
     where o.workspace_id = m.workspace_id and o.role = 'owner' and o.user_id <> $1)";
const OTHER_MEMBERS: &str =
    "select count(*) from identity.memberships where workspace_id = $1 and user_id <> $2";

const WORKSPACES_OF: &str = "select w.id, w.name, m.role, w.created_at from identity.memberships m \
     join identity.workspaces w on w.id = m.workspace_id where m.user_id = $1 order by w.created_at, w.id";
const ALL_WORKSPACES: &str =
    "select id, name, 'admin' as role, created_at from identity.workspaces order by created_at, id limit $1";
const ROLE_IN: &str = "select role from identity.memberships where workspace_id = $1 and user_id = $2";
const OWNERS: &str = "select count(*) from identity.memberships where workspace_id = $1 and role = 'owner'";
const SET_ROLE: &str = "update identity.memberships set role = $3 where workspace_id = $1 and user_id = $2";
const REMOVE_MEMBER: &str = "delete from identity.memberships where workspace_id = $1 and user_id = $2";

const SESSION_COLUMNS_BY_ID: &str = "select id, user_id, workspace_id, kind, user_agent, ip, created_at, \
     last_used_at, expires_at, revoked_at from identity.sessions where id = $1";
const SESSIONS_OF: &str = "select id, user_id, workspace_id, kind, user_agent, ip, created_at, last_used_at, \
     expires_at, revoked_at from identity.sessions where user_id = $1 and revoked_at is null and expires_at > $2 \
     order by created_at desc";
const REFRESH_LOOKUP: &str = "select session_id from identity.refresh_tokens where token_hash = $1";
const SPEND_REFRESH: &str =
    "update identity.refresh_tokens set spent_at = $2 where token_hash = $1 and spent_at is null";
const SPEND_ALL_REFRESH: &str =
    "update identity.refresh_tokens set spent_at = $2 where session_id = $1 and spent_at is null";
const TOUCH_SESSION: &str = "update identity.sessions set last_used_at = $2 where id = $1";
const SWITCH_SESSION: &str =
    "update identity.sessions set workspace_id = $2, last_used_at = $3 where id = $1";
const REVOKE_OWN_SESSION: &str = "update identity.sessions set revoked_at = $3 \
     where id = $1 and user_id = $2 and revoked_at is null";

const SPEND_OLDER_TOKENS: &str = "update identity.email_tokens set used_at = $3 \
     where user_id = $1 and purpose = $2 and used_at is null";
const INSERT_EMAIL_TOKEN: &str = "insert into identity.email_tokens (token_hash, purpose, user_id, email, \
     created_at, expires_at) values ($1, $2, $3, $4, $5, $6)";
const SPEND_EMAIL_TOKEN: &str = "update identity.email_tokens set used_at = $3 \
     where token_hash = $1 and purpose = $2 and used_at is null and expires_at > $3 \
     returning user_id, email";
const MARK_VERIFIED: &str = "update identity.users set email_verified = true where id = $1 and email = $2";

const INVITATION_COLUMNS_BY_WORKSPACE: &str = "select id, workspace_id, email, role, invited_by, created_at, \
     expires_at, accepted_at, revoked_at from identity.invitations where workspace_id = $1 \
     order by created_at desc limit 500";
const INSERT_INVITATION: &str = "insert into identity.invitations (id, workspace_id, email, role, token_hash, \
     invited_by, created_at, expires_at) values ($1, $2, $3, $4, $5, $6, $7, $8)";
const REVOKE_INVITATION: &str = "update identity.invitations set revoked_at = $3 \
     where workspace_id = $1 and id = $2 and revoked_at is null and accepted_at is null";
const SPEND_INVITATION: &str = "update identity.invitations set accepted_at = $3 \
     where token_hash = $1 and email = $2 and accepted_at is null and revoked_at is null and expires_at > $3 \
     returning id, workspace_id, email, role, invited_by, created_at, expires_at, accepted_at, revoked_at";
const UPSERT_MEMBERSHIP: &str = "insert into identity.memberships (workspace_id, user_id, role, created_at) \
     values ($1, $2, $3, $4) on conflict (workspace_id, user_id) do nothing";

const INSERT_API_KEY: &str = "insert into identity.api_keys (id, workspace_id, user_id, name, prefix, key_hash, \
     scopes, created_at, expires_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const API_KEYS: &str = "select id, workspace_id, user_id, name, prefix, scopes, created_at, expires_at, \
     last_used_at, revoked_at from identity.api_keys where workspace_id = $1 order by created_at desc limit 500";
const REVOKE_API_KEY: &str = "update identity.api_keys set revoked_at = $3 \
     where workspace_id = $1 and id = $2 and revoked_at is null";
const API_KEY_BY_HASH: &str = "select k.id, k.workspace_id, k.user_id, k.name, k.prefix, k.scopes, \
     k.created_at, k.expires_at, k.last_used_at, k.revoked_at, m.role, u.status \
     from identity.api_keys k join identity.memberships m on m.workspace_id = k.workspace_id \
     and m.user_id = k.user_id join identity.users u on u.id = k.user_id \
     where k.key_hash = $1 and k.revoked_at is null and (k.expires_at is null or k.expires_at > $2)";
const TOUCH_API_KEY: &str = "update identity.api_keys set last_used_at = $2 where id = $1 \
     and (last_used_at is null or last_used_at < $3)";

const USER_BY_IDENTITY: &str = "select u.id, u.email, u.name, u.password_hash, u.email_verified, u.status, \
     u.platform_admin, u.avatar_asset_id, u.locale, u.timezone, u.preferences, u.last_workspace_id, \
     u.created_at, u.updated_at from identity.oauth_identities i join identity.users u on u.id = i.user_id \
     where i.provider = $1 and i.subject = $2";
const INSERT_IDENTITY: &str = "insert into identity.oauth_identities (provider, subject, user_id, email, \
     created_at) values ($1, $2, $3, $4, $5) on conflict (provider, subject) do nothing";

/// The events a registration emits.
#[derive(Serialize)]
struct Registered<'a> {
    user_id: Id,
    email: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct TenantCreated<'a> {
    tenant_id: Uuid,
    name: &'a str,
    owner_id: Uuid,
}

macro_rules! store_impl {
    ($Store:ident) => {
        #[async_trait]
        impl Store for $Store {
            async fn register(&self, r: &Registration) -> Result<(), DbError> {
                let u = &r.user;
                let mut tx = self.0.begin_global().await?;
                tx.execute(
                    tx.query(INSERT_USER)
                        .bind(u.id)
                        .bind(u.email.clone())
                        .bind(u.name.clone())
                        .bind(u.password_hash.clone())
                        .bind(u.email_verified)
                        .bind(u.status.clone())
                        .bind(u.platform_admin)
                        .bind(u.avatar_asset_id)
                        .bind(u.locale.clone())
                        .bind(u.timezone.clone())
                        .bind(u.preferences.clone())
                        .bind(Some(Id(r.workspace_id)))
                        .bind(u.created_at)
                        .bind(u.updated_at),
                )
                .await?;
                tx.execute(
                    tx.query(INSERT_WORKSPACE)
                        .bind(Id(r.workspace_id))
                        .bind(r.workspace_name.clone())
                        .bind(u.id)
                        .bind(u.created_at),
                )
                .await?;
                tx.execute(
                    tx.query(INSERT_MEMBERSHIP)
                        .bind(Id(r.workspace_id))
                        .bind(u.id)
                        .bind(Role::Owner.as_str())
                        .bind(u.created_at),
                )
                .await?;
                insert_session!(tx, &r.session);
                let tenant = TenantId::from_uuid(r.workspace_id);
                let actor = format!("user:{}", u.id);
                tx.emit(
                    tenant,
                    "user.registered",
                    &actor,
                    &Registered { user_id: u.id, email: &u.email, name: &u.name },
                )
                .await?;
                tx.emit(
                    tenant,
                    "tenant.created",
                    &actor,
                    &TenantCreated { tenant_id: r.workspace_id, name: &r.workspace_name, owner_id: u.id.0 },
                )
                .await?;
                tx.commit().await
            }

            async fn user(&self, id: Uuid) -> Result<Option<User>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_optional(tx.query_as(USER_BY_ID).bind(Id(id))).await
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<User>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_optional(tx.query_as(USER_BY_EMAIL).bind(email.to_string())).await
            }

            async fn rehash(&self, user: Uuid, hash: &str) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                tx.execute(tx.query(REHASH).bind(Id(user)).bind(hash.to_string())).await?;
                tx.commit().await
            }

            async fn set_password(
                &self,
                user: Uuid,
                hash: &str,
                keep: Option<Uuid>,
            ) -> Result<Vec<Uuid>, DbError> {
                let now = Timestamp::now();
                let mut tx = self.0.begin_global().await?;
                tx.execute(tx.query(SET_PASSWORD).bind(Id(user)).bind(hash.to_string()).bind(now)).await?;
                tx.execute(tx.query(SPEND_RESETS).bind(Id(user)).bind(now)).await?;
                let live: Vec<(Id,)> =
                    tx.fetch_all(tx.query_as(LIVE_SESSIONS_OF).bind(Id(user)).bind(now)).await?;
                let mut revoked = Vec::new();
                for (sid,) in live {
                    if Some(sid.0) == keep {
                        continue;
                    }
                    tx.execute(tx.query(REVOKE_SESSION).bind(sid).bind(now)).await?;
                    revoked.push(sid.0);
                }
                tx.commit().await?;
                Ok(revoked)
            }

            async fn update_profile(&self, user: Uuid, c: &ProfileChange) -> Result<Option<User>, DbError> {
                let mut tx = self.0.begin_global().await?;
                let Some(u): Option<User> = tx.fetch_optional(tx.query_as(USER_BY_ID).bind(Id(user))).await?
                else {
                    return Ok(None);
                };
                let name = c.name.clone().unwrap_or(u.name);
                let locale = c.locale.clone().unwrap_or(u.locale);
                let timezone = c.timezone.clone().unwrap_or(u.timezone);
                let avatar = c.avatar_asset_id.map_or(u.avatar_asset_id, |a| a.map(Id));
                let preferences = c.preferences.clone().unwrap_or(u.preferences);
                let status = c.status.clone().unwrap_or(u.status);
                tx.execute(
                    tx.query(UPDATE_PROFILE)
                        .bind(Id(user))
                        .bind(name)
                        .bind(locale)
                        .bind(timezone)
                        .bind(avatar)
                        .bind(preferences)
                        .bind(status)
                        .bind(Timestamp::now()),
                )
                .await?;
                let updated = tx.fetch_optional(tx.query_as(USER_BY_ID).bind(Id(user))).await?;
                tx.commit().await?;
                Ok(updated)
            }

            async fn revoke_user_sessions(
                &self,
                user: Uuid,
                workspace: Option<Uuid>,
            ) -> Result<Vec<Uuid>, DbError> {
                let now = Timestamp::now();
                let mut tx = self.0.begin_global().await?;
                let live: Vec<(Id,)> = match workspace {
                    Some(w) => {
                        tx.fetch_all(tx.query_as(LIVE_SESSIONS_IN).bind(Id(user)).bind(Id(w)).bind(now))
                            .await?
                    }
                    None => tx.fetch_all(tx.query_as(LIVE_SESSIONS_OF).bind(Id(user)).bind(now)).await?,
                };
                for (sid,) in &live {
                    tx.execute(tx.query(REVOKE_SESSION).bind(*sid).bind(now)).await?;
                }
                tx.commit().await?;
                Ok(live.into_iter().map(|(s,)| s.0).collect())
            }

            async fn members(&self, workspace: Uuid, f: &UserFilter) -> Result<Vec<Member>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_all(
                    tx.query_as(MEMBERS)
                        .bind(Id(workspace))
                        .bind(Id(f.after.unwrap_or(Uuid::nil())))
                        .bind(f.search.clone())
                        .bind(f.role.clone())
                        .bind(f.status.clone())
                        .bind(f.limit),
                )
                .await
            }

            async fn all_users(&self, f: &UserFilter) -> Result<Vec<User>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_all(
                    tx.query_as(ALL_USERS)
                        .bind(Id(f.after.unwrap_or(Uuid::nil())))
                        .bind(f.search.clone())
                        .bind(f.status.clone())
                        .bind(f.limit),
                )
                .await
            }

            async fn delete_user(&self, user: Uuid) -> Result<Vec<Uuid>, DbError> {
                let now = Timestamp::now();
                let mut tx = self.0.begin_global().await?;
                // A workspace whose only owner leaves is deleted with its memberships
                // when nobody else is in it; otherwise the deletion is refused by the caller.
                let solo: Vec<(Id,)> = tx.fetch_all(tx.query_as(OWNED_SOLO).bind(Id(user))).await?;
                for (w,) in &solo {
                    let others: i64 =
                        tx.scalar(tx.query_scalar(OTHER_MEMBERS).bind(*w).bind(Id(user))).await?;
                    if others > 0 {
                        return Err(DbError::Constraint {
                            constraint: "last_owner".into(),
                            problem: crate::roles::last_owner(),
                        });
                    }
                }
                let live: Vec<(Id,)> =
                    tx.fetch_all(tx.query_as(LIVE_SESSIONS_OF).bind(Id(user)).bind(now)).await?;
                tx.execute(tx.query(DELETE_USER).bind(Id(user))).await?;
                tx.commit().await?;
                Ok(live.into_iter().map(|(s,)| s.0).collect())
            }

            async fn create_workspace(
                &self,
                user: Uuid,
                id: Uuid,
                name: &str,
                now: Timestamp,
            ) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                tx.execute(
                    tx.query(INSERT_WORKSPACE).bind(Id(id)).bind(name.to_string()).bind(Id(user)).bind(now),
                )
                .await?;
                tx.execute(
                    tx.query(INSERT_MEMBERSHIP)
                        .bind(Id(id))
                        .bind(Id(user))
                        .bind(Role::Owner.as_str())
                        .bind(now),
                )
                .await?;
                tx.emit(
                    TenantId::from_uuid(id),
                    "tenant.created",
                    &format!("user:{user}"),
                    &TenantCreated { tenant_id: id, name, owner_id: user },
                )
                .await?;
                tx.commit().await
            }

            async fn workspaces_of(&self, user: Uuid) -> Result<Vec<Workspace>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_all(tx.query_as(WORKSPACES_OF).bind(Id(user))).await
            }

            async fn all_workspaces(&self, limit: i64) -> Result<Vec<Workspace>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_all(tx.query_as(ALL_WORKSPACES).bind(limit)).await
            }

            async fn role_in(&self, workspace: Uuid, user: Uuid) -> Result<Option<Role>, DbError> {
                let mut tx = self.0.read_global().await?;
                let role: Option<(String,)> =
                    tx.fetch_optional(tx.query_as(ROLE_IN).bind(Id(workspace)).bind(Id(user))).await?;
                Ok(role.and_then(|(r,)| Role::parse(&r)))
            }

            async fn set_role(
                &self,
                workspace: Uuid,
                user: Uuid,
                role: Role,
            ) -> Result<MembershipChange, DbError> {
                let mut tx = self.0.begin_global().await?;
                let current: Option<(String,)> =
                    tx.fetch_optional(tx.query_as(ROLE_IN).bind(Id(workspace)).bind(Id(user))).await?;
                let Some((current,)) = current else { return Ok(MembershipChange::NotFound) };
                if current == Role::Owner.as_str() && role != Role::Owner {
                    let owners: i64 = tx.scalar(tx.query_scalar(OWNERS).bind(Id(workspace))).await?;
                    if owners <= 1 {
                        return Ok(MembershipChange::LastOwner);
                    }
                }
                tx.execute(tx.query(SET_ROLE).bind(Id(workspace)).bind(Id(user)).bind(role.as_str())).await?;
                tx.commit().await?;
                Ok(MembershipChange::Done)
            }

            async fn remove_member(&self, workspace: Uuid, user: Uuid) -> Result<MembershipChange, DbError> {
                let mut tx = self.0.begin_global().await?;
                let current: Option<(String,)> =
                    tx.fetch_optional(tx.query_as(ROLE_IN).bind(Id(workspace)).bind(Id(user))).await?;
                let Some((current,)) = current else { return Ok(MembershipChange::NotFound) };
                if current == Role::Owner.as_str() {
                    let owners: i64 = tx.scalar(tx.query_scalar(OWNERS).bind(Id(workspace))).await?;
                    if owners <= 1 {
                        return Ok(MembershipChange::LastOwner);
                    }
                }
                tx.execute(tx.query(REMOVE_MEMBER).bind(Id(workspace)).bind(Id(user))).await?;
                tx.commit().await?;
                Ok(MembershipChange::Done)
            }

            async fn open_session(&self, s: &NewSession) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                insert_session!(tx, s);
                tx.execute(tx.query(SET_LAST_WORKSPACE).bind(Id(s.user_id)).bind(Some(Id(s.workspace_id))))
                    .await?;
                tx.commit().await
            }

            async fn session(&self, id: Uuid) -> Result<Option<Session>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_optional(tx.query_as(SESSION_COLUMNS_BY_ID).bind(Id(id))).await
            }

            async fn sessions_of(&self, user: Uuid) -> Result<Vec<Session>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_all(tx.query_as(SESSIONS_OF).bind(Id(user)).bind(Timestamp::now())).await
            }

            async fn refresh(&self, old: &str, new: &str, now: Timestamp) -> Result<Refreshed, DbError> {
                let mut tx = self.0.begin_global().await?;
                let sid: Option<(Id,)> =
                    tx.fetch_optional(tx.query_as(REFRESH_LOOKUP).bind(old.to_string())).await?;
                let Some((sid,)) = sid else { return Ok(Refreshed::Invalid) };
                let session: Option<Session> =
                    tx.fetch_optional(tx.query_as(SESSION_COLUMNS_BY_ID).bind(sid)).await?;
                let Some(session) = session.filter(|s| s.revoked_at.is_none() && s.expires_at > now) else {
                    return Ok(Refreshed::Invalid);
                };
                // Spending is conditional, so of two concurrent uses only one wins.
                let spent = tx.execute(tx.query(SPEND_REFRESH).bind(old.to_string()).bind(now)).await?;
                if spent == 0 {
                    tx.execute(tx.query(REVOKE_SESSION).bind(sid).bind(now)).await?;
                    tx.execute(tx.query(SPEND_ALL_REFRESH).bind(sid).bind(now)).await?;
                    tx.commit().await?;
                    return Ok(Refreshed::Reused(sid.0));
                }
                tx.execute(tx.query(INSERT_REFRESH).bind(new.to_string()).bind(sid).bind(now)).await?;
                tx.execute(tx.query(TOUCH_SESSION).bind(sid).bind(now)).await?;
                tx.commit().await?;
                Ok(Refreshed::Rotated(session))
            }

            async fn switch_session(
                &self,
                session: Uuid,
                workspace: Uuid,
                refresh_hash: &str,
                now: Timestamp,
            ) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                tx.execute(tx.query(SWITCH_SESSION).bind(Id(session)).bind(Id(workspace)).bind(now)).await?;
                tx.execute(tx.query(SPEND_ALL_REFRESH).bind(Id(session)).bind(now)).await?;
                tx.execute(
                    tx.query(INSERT_REFRESH).bind(refresh_hash.to_string()).bind(Id(session)).bind(now),
                )
                .await?;
                let user: Option<(Id,)> = tx
                    .fetch_optional(
                        tx.query_as("select user_id from identity.sessions where id = $1").bind(Id(session)),
                    )
                    .await?;
                if let Some((user,)) = user {
                    tx.execute(tx.query(SET_LAST_WORKSPACE).bind(user).bind(Some(Id(workspace)))).await?;
                }
                tx.commit().await
            }

            async fn revoke_session(&self, user: Uuid, session: Uuid) -> Result<bool, DbError> {
                let now = Timestamp::now();
                let mut tx = self.0.begin_global().await?;
                let n = tx
                    .execute(tx.query(REVOKE_OWN_SESSION).bind(Id(session)).bind(Id(user)).bind(now))
                    .await?;
                tx.execute(tx.query(SPEND_ALL_REFRESH).bind(Id(session)).bind(now)).await?;
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn issue_email_token(
                &self,
                purpose: &str,
                user: Uuid,
                email: &str,
                hash: &str,
                now: Timestamp,
                expires: Timestamp,
            ) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                tx.execute(tx.query(SPEND_OLDER_TOKENS).bind(Id(user)).bind(purpose.to_string()).bind(now))
                    .await?;
                tx.execute(
                    tx.query(INSERT_EMAIL_TOKEN)
                        .bind(hash.to_string())
                        .bind(purpose.to_string())
                        .bind(Id(user))
                        .bind(email.to_string())
                        .bind(now)
                        .bind(expires),
                )
                .await?;
                tx.commit().await
            }

            async fn spend_email_token(
                &self,
                purpose: &str,
                hash: &str,
                now: Timestamp,
            ) -> Result<Option<(Uuid, String)>, DbError> {
                let mut tx = self.0.begin_global().await?;
                let row: Option<(Id, String)> = tx
                    .fetch_optional(
                        tx.query_as(SPEND_EMAIL_TOKEN)
                            .bind(hash.to_string())
                            .bind(purpose.to_string())
                            .bind(now),
                    )
                    .await?;
                tx.commit().await?;
                Ok(row.map(|(u, e)| (u.0, e)))
            }

            async fn mark_verified(&self, user: Uuid, email: &str) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                tx.execute(tx.query(MARK_VERIFIED).bind(Id(user)).bind(email.to_string())).await?;
                tx.commit().await
            }

            async fn create_invitation(&self, i: &Invitation, token_hash: &str) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                tx.execute(
                    tx.query(INSERT_INVITATION)
                        .bind(i.id)
                        .bind(i.workspace_id)
                        .bind(i.email.clone())
                        .bind(i.role.clone())
                        .bind(token_hash.to_string())
                        .bind(i.invited_by)
                        .bind(i.created_at)
                        .bind(i.expires_at),
                )
                .await?;
                tx.commit().await
            }

            async fn invitations(&self, workspace: Uuid) -> Result<Vec<Invitation>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_all(tx.query_as(INVITATION_COLUMNS_BY_WORKSPACE).bind(Id(workspace))).await
            }

            async fn revoke_invitation(
                &self,
                workspace: Uuid,
                id: Uuid,
                now: Timestamp,
            ) -> Result<bool, DbError> {
                let mut tx = self.0.begin_global().await?;
                let n = tx
                    .execute(tx.query(REVOKE_INVITATION).bind(Id(workspace)).bind(Id(id)).bind(now))
                    .await?;
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn accept_invitation(
                &self,
                hash: &str,
                user: Uuid,
                email: &str,
                now: Timestamp,
            ) -> Result<Option<Invitation>, DbError> {
                let mut tx = self.0.begin_global().await?;
                let inv: Option<Invitation> = tx
                    .fetch_optional(
                        tx.query_as(SPEND_INVITATION)
                            .bind(hash.to_string())
                            .bind(email.to_string())
                            .bind(now),
                    )
                    .await?;
                if let Some(i) = &inv {
                    tx.execute(
                        tx.query(UPSERT_MEMBERSHIP)
                            .bind(i.workspace_id)
                            .bind(Id(user))
                            .bind(i.role.clone())
                            .bind(now),
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(inv)
            }

            async fn create_api_key(&self, k: &ApiKey, key_hash: &str) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                tx.execute(
                    tx.query(INSERT_API_KEY)
                        .bind(k.id)
                        .bind(k.workspace_id)
                        .bind(k.user_id)
                        .bind(k.name.clone())
                        .bind(k.prefix.clone())
                        .bind(key_hash.to_string())
                        .bind(k.scopes.clone())
                        .bind(k.created_at)
                        .bind(k.expires_at),
                )
                .await?;
                tx.commit().await
            }

            async fn api_keys(&self, workspace: Uuid) -> Result<Vec<ApiKey>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_all(tx.query_as(API_KEYS).bind(Id(workspace))).await
            }

            async fn revoke_api_key(
                &self,
                workspace: Uuid,
                id: Uuid,
                now: Timestamp,
            ) -> Result<bool, DbError> {
                let mut tx = self.0.begin_global().await?;
                let n =
                    tx.execute(tx.query(REVOKE_API_KEY).bind(Id(workspace)).bind(Id(id)).bind(now)).await?;
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn api_key_by_hash(
                &self,
                hash: &str,
                now: Timestamp,
            ) -> Result<Option<(ApiKey, String, String)>, DbError> {
                #[derive(sqlx::FromRow)]
                struct Row {
                    #[sqlx(flatten)]
                    key: ApiKey,
                    role: String,
                    status: String,
                }
                let mut tx = self.0.read_global().await?;
                let row: Option<Row> =
                    tx.fetch_optional(tx.query_as(API_KEY_BY_HASH).bind(hash.to_string()).bind(now)).await?;
                drop(tx);
                if let Some(r) = &row {
                    // Last use is kept to the minute: one write per key per minute at most.
                    let mut w = self.0.begin_global().await?;
                    w.execute(
                        w.query(TOUCH_API_KEY)
                            .bind(r.key.id)
                            .bind(now)
                            .bind(Timestamp::from_unix(now.unix() - 60)),
                    )
                    .await?;
                    w.commit().await?;
                }
                Ok(row.map(|r| (r.key, r.role, r.status)))
            }

            async fn user_by_identity(&self, provider: &str, subject: &str) -> Result<Option<User>, DbError> {
                let mut tx = self.0.read_global().await?;
                tx.fetch_optional(
                    tx.query_as(USER_BY_IDENTITY).bind(provider.to_string()).bind(subject.to_string()),
                )
                .await
            }

            async fn link_identity(
                &self,
                user: Uuid,
                i: &NewIdentity,
                now: Timestamp,
            ) -> Result<(), DbError> {
                let mut tx = self.0.begin_global().await?;
                tx.execute(
                    tx.query(INSERT_IDENTITY)
                        .bind(i.provider.clone())
                        .bind(i.subject.clone())
                        .bind(Id(user))
                        .bind(i.email.clone())
                        .bind(now),
                )
                .await?;
                tx.commit().await
            }
        }
    };
}

macro_rules! insert_session {
    ($tx:ident, $s:expr) => {{
        let s: &NewSession = $s;
        $tx.execute(
            $tx.query(INSERT_SESSION)
                .bind(Id(s.id))
                .bind(Id(s.user_id))
                .bind(Id(s.workspace_id))
                .bind(s.kind)
                .bind(s.user_agent.clone())
                .bind(s.ip.clone())
                .bind(s.now)
                .bind(s.expires_at),
        )
        .await?;
        $tx.execute($tx.query(INSERT_REFRESH).bind(s.refresh_hash.clone()).bind(Id(s.id)).bind(s.now))
            .await?;
    }};
}

store_impl!(PgStore);
store_impl!(SqliteStore);
