//! `/v1/users`: profiles and preferences; the workspace's member list for its
//! admins; every account for platform admins (audited).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kernel::auth::Caller;
use kernel::http::{Json, Page, PageParams, Path, Query};
use kernel::{ApiError, ApiResult, Problem};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::api::{parse_name, user_json};
use crate::roles::{self, Role};
use crate::store::{ProfileChange, User, UserFilter};
use crate::workspaces::{MemberQuery, remove_member};
use crate::{AppState, Identity, role_of};

pub(crate) fn routes() -> Router<Arc<Identity>> {
    Router::new()
        .route("/v1/users", get(list))
        .route("/v1/users/{id}", get(get_user).patch(update).delete(remove))
}

fn filter(q: &MemberQuery) -> Result<(UserFilter, u32), Problem> {
    let page = PageParams { limit: q.limit, cursor: q.cursor.clone() }.parse::<Uuid>()?;
    let (limit, after) = (page.limit, page.after);
    let search = match q.q.as_deref().map(str::trim) {
        Some(t) if t.chars().count() > 100 => {
            return Err(Problem::validation("q", "has at most 100 characters"));
        }
        Some(t) if !t.is_empty() => {
            let escaped = t.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{escaped}%")
        }
        _ => String::new(),
    };
    let role = match q.role.as_deref() {
        Some(r) => Role::parse(r)
            .ok_or_else(|| Problem::validation("role", "is one of owner, admin, member, viewer"))?
            .as_str()
            .to_string(),
        None => String::new(),
    };
    let status = match q.status.as_deref() {
        Some(s @ ("active" | "disabled")) => s.to_string(),
        Some(_) => return Err(Problem::validation("status", "is active or disabled")),
        None => String::new(),
    };
    Ok((UserFilter { search, role, status, after, limit: i64::from(limit) + 1 }, limit))
}

/// A JSON page of up to `limit + 1` fetched rows.
fn page<T>(rows: Vec<T>, limit: u32, id: impl Fn(&T) -> Uuid, show: impl Fn(&T) -> Value) -> Value {
    let page = Page::from_overfetch(rows, limit, id);
    json!({ "items": page.items.iter().map(show).collect::<Vec<_>>(), "next_cursor": page.next_cursor })
}

/// A page of a workspace's members.
pub(crate) async fn member_page(id: &Identity, ws: Uuid, q: &MemberQuery) -> ApiResult<Response> {
    let (f, limit) = filter(q)?;
    let members = id.store.members(ws, &f).await?;
    let body = page(
        members,
        limit,
        |m| m.user.id.0,
        |m| {
            let mut v = user_json(&m.user);
            v["role"] = json!(m.role);
            v["joined_at"] = json!(m.joined_at);
            v
        },
    );
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    q: Option<String>,
    role: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn list(State(id): AppState, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let mq = MemberQuery { q: q.q, role: q.role, status: q.status, limit: q.limit, cursor: q.cursor };
    if q.all {
        platform_admin(&id, &caller).await?;
        tracing::info!(target: "audit", user_id = %caller.user_id, tenant_id = %caller.tenant, "platform admin listed every user");
        let (f, limit) = filter(&mq)?;
        let users = id.store.all_users(&f).await?;
        return Ok(axum::Json(page(users, limit, |u| u.id.0, user_json)).into_response());
    }
    let role = role_of(&caller);
    if !role.is_admin() {
        return Err(roles::forbidden_for(role).into());
    }
    member_page(&id, caller.tenant.as_uuid(), &mq).await
}

async fn platform_admin(id: &Identity, caller: &Caller) -> Result<User, ApiError> {
    let me = id.store.user(caller.user_id).await?.ok_or_else(Problem::not_found)?;
    if me.platform_admin {
        Ok(me)
    } else {
        Err(Problem::forbidden("only platform admins may do this").into())
    }
}

/// How the caller stands to the user `target`.
enum Standing {
    /// It is the caller.
    Myself,
    /// The caller administers the current workspace, where the target has this role.
    Admin(Role),
    /// A platform admin.
    Platform,
}

async fn standing(id: &Identity, caller: &Caller, target: Uuid) -> Result<Standing, ApiError> {
    if target == caller.user_id {
        return Ok(Standing::Myself);
    }
    let mine = role_of(caller);
    if mine.is_admin()
        && let Some(theirs) = id.store.role_in(caller.tenant.as_uuid(), target).await?
    {
        return Ok(Standing::Admin(theirs));
    }
    if id.store.user(caller.user_id).await?.is_some_and(|u| u.platform_admin) {
        tracing::info!(target: "audit", user_id = %caller.user_id, subject = %target, "platform admin accessed a user");
        return Ok(Standing::Platform);
    }
    // Someone the caller may not see does not exist for them.
    Err(Problem::not_found().into())
}

async fn get_user(State(id): AppState, caller: Caller, Path(target): Path<Uuid>) -> ApiResult<Response> {
    standing(&id, &caller, target).await?;
    let user = id.store.user(target).await?.ok_or_else(Problem::not_found)?;
    let mut v = user_json(&user);
    if let Some(role) = id.store.role_in(caller.tenant.as_uuid(), target).await? {
        v["role"] = json!(role.as_str());
    }
    Ok(axum::Json(v).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    name: Option<String>,
    #[serde(default, with = "double_option")]
    locale: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    timezone: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    avatar_asset_id: Option<Option<Uuid>>,
    preferences: Option<Value>,
    status: Option<String>,
}

/// `null` → `Some(None)` (clear), absent → `None` (keep).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

fn locale(s: &str) -> bool {
    let mut parts = s.split('-');
    parts.next().is_some_and(|l| (2..=3).contains(&l.len()) && l.chars().all(|c| c.is_ascii_alphabetic()))
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
        && s.len() <= 35
}

fn timezone(s: &str) -> bool {
    s.len() <= 64
        && (s == "UTC"
            || (s.contains('/')
                && s.split('/').all(|p| {
                    !p.is_empty()
                        && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
                })))
}

/// The preferences document's schema: known keys with their types; nothing else.
fn preferences(v: &Value) -> Result<String, Problem> {
    let bad = |m: String| Problem::validation("preferences", m);
    let obj: &Map<String, Value> = v.as_object().ok_or_else(|| bad("is an object".into()))?;
    for (k, val) in obj {
        let ok = match k.as_str() {
            "theme" => matches!(val.as_str(), Some("light" | "dark" | "system")),
            "email_notifications" | "weekly_digest" => val.is_boolean(),
            "default_redirect_type" => matches!(val.as_u64(), Some(301 | 302 | 307)),
            "dashboard_range_days" => val.as_u64().is_some_and(|d| (1..=365).contains(&d)),
            "default_domain" => val.as_str().is_some_and(|d| d.len() <= 253) || val.is_null(),
            other => {
                return Err(bad(format!(
                    "unknown key {other:?} (known: theme, email_notifications, weekly_digest, default_redirect_type, dashboard_range_days, default_domain)"
                )));
            }
        };
        if !ok {
            return Err(bad(format!("{k} has the wrong type or value")));
        }
    }
    Ok(v.to_string())
}

async fn update(
    State(id): AppState,
    caller: Caller,
    Path(target): Path<Uuid>,
    Json(p): Json<Patch>,
) -> ApiResult<Response> {
    let standing = standing(&id, &caller, target).await?;
    let mine = role_of(&caller);
    match (&standing, &p.status) {
        (Standing::Platform, _) | (_, None) => {}
        (Standing::Myself | Standing::Admin(_), Some(_)) => {
            return Err(Problem::forbidden("only platform admins enable or disable accounts").into());
        }
    }
    if let Standing::Admin(theirs) = standing
        && theirs >= mine
    {
        return Err(roles::forbidden_for(mine).into());
    }
    let mut change = ProfileChange::default();
    if let Some(n) = &p.name {
        change.name = Some(parse_name("name", n)?);
    }
    if let Some(l) = &p.locale {
        if l.as_deref().is_some_and(|l| !locale(l)) {
            return Err(Problem::validation("locale", "is a language tag like en or pt-BR").into());
        }
        change.locale = Some(l.clone());
    }
    if let Some(t) = &p.timezone {
        if t.as_deref().is_some_and(|t| !timezone(t)) {
            return Err(
                Problem::validation("timezone", "is an IANA time zone like Europe/Paris, or UTC").into()
            );
        }
        change.timezone = Some(t.clone());
    }
    change.avatar_asset_id = p.avatar_asset_id;
    if let Some(v) = &p.preferences {
        change.preferences = Some(preferences(v)?);
    }
    if let Some(s) = &p.status {
        if !matches!(s.as_str(), "active" | "disabled") {
            return Err(Problem::validation("status", "is active or disabled").into());
        }
        change.status = Some(s.clone());
    }
    let user = id.store.update_profile(target, &change).await?.ok_or_else(Problem::not_found)?;
    if user.status == "disabled" {
        let revoked = id.store.revoke_user_sessions(target, None).await?;
        id.mark_revoked(&revoked).await.map_err(ApiError::internal)?;
        tracing::info!(target: "audit", user_id = %caller.user_id, subject = %target, sessions_revoked = revoked.len(), "user disabled");
    }
    Ok(axum::Json(user_json(&user)).into_response())
}

async fn remove(State(id): AppState, caller: Caller, Path(target): Path<Uuid>) -> ApiResult<StatusCode> {
    match standing(&id, &caller, target).await? {
        // An admin removes the user from this workspace; the account stays theirs.
        Standing::Admin(_) => remove_member(&id, &caller, caller.tenant.as_uuid(), target).await,
        Standing::Myself | Standing::Platform => {
            let revoked = id.store.delete_user(target).await?;
            id.mark_revoked(&revoked).await.map_err(ApiError::internal)?;
            tracing::info!(target: "audit", user_id = %caller.user_id, subject = %target, "account deleted");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_timezones_and_preferences_are_checked() {
        assert!(locale("en") && locale("pt-BR") && locale("zh-Hant-TW"));
        assert!(!locale("english") && !locale("e") && !locale("en_US"));
        assert!(timezone("Europe/Paris") && timezone("America/Argentina/Buenos_Aires") && timezone("UTC"));
        assert!(!timezone("Paris") && !timezone("../etc/passwd") && !timezone("Europe//Paris"));
        assert!(preferences(&json!({"theme": "dark", "weekly_digest": true})).is_ok());
        assert!(preferences(&json!({"theme": "neon"})).is_err());
        assert!(preferences(&json!({"colour": "red"})).is_err());
        assert!(preferences(&json!([1, 2])).is_err());
    }
}
