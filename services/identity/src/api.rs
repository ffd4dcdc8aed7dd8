//! `/v1/auth`: register, login, refresh, logout, me, password reset and change,
//! email verification, sessions, API keys, and the JWKS.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use kernel::auth::{Caller, CallerKind};
use kernel::db::{DbResultExt, Id, Timestamp};
use kernel::http::{ClientIp, Json, Path};
use kernel::mail::Email;
use kernel::{ApiError, ApiResult, BoxError, Problem, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::roles::{self, Role};
use crate::store::{ApiKey, NewSession, Refreshed, Registration, User, Workspace};
use crate::{AppState, Identity, role_of, tokens, user_session};
use kernel::password::{self, Verified};

/// Reset links live this long.
pub const RESET_TTL: Duration = Duration::from_secs(3600);
/// Verification links live this long.
pub const VERIFY_TTL: Duration = Duration::from_secs(7 * 86_400);

pub(crate) fn routes() -> Router<Arc<Identity>> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/me", get(me))
        .route("/v1/auth/.well-known/jwks.json", get(jwks))
        .route("/v1/auth/password-reset/request", post(reset_request))
        .route("/v1/auth/password-reset/confirm", post(reset_confirm))
        .route("/v1/auth/password", post(change_password))
        .route("/v1/auth/verify-email", post(verify_email))
        .route("/v1/auth/verify-email/resend", post(resend_verification))
        .route("/v1/auth/sessions", get(list_sessions))
        .route("/v1/auth/sessions/{id}", delete(revoke_session))
        .route("/v1/auth/api-keys", post(create_key).get(list_keys))
        .route("/v1/auth/api-keys/{id}", delete(revoke_key))
        .route("/v1/auth/introspect", get(introspect))
}

/// An email as typed, normalized: trimmed and lower-cased, and roughly checked.
pub(crate) fn parse_email(field: &str, raw: &str) -> Result<String, Problem> {
    let email = raw.trim().to_lowercase();
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if ok { Ok(email) } else { Err(Problem::validation(field, "is not an email address")) }
}

pub(crate) fn parse_name(field: &str, raw: &str) -> Result<String, Problem> {
    let name = raw.trim();
    let n = name.chars().count();
    if n == 0 || n > 200 || name.chars().any(char::is_control) {
        return Err(Problem::validation(field, "needs 1 to 200 printable characters"));
    }
    Ok(name.to_string())
}

pub(crate) fn check_password(field: &str, pw: &str) -> Result<(), Problem> {
    password::acceptable(pw).map_err(|e| Problem::validation(field, e.to_string()))
}

/// The user as the API shows it.
pub(crate) fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "email_verified": u.email_verified,
        "status": u.status,
        "platform_admin": u.platform_admin,
        "avatar_asset_id": u.avatar_asset_id,
        "locale": u.locale,
        "timezone": u.timezone,
        "preferences": serde_json::from_str::<Value>(&u.preferences).unwrap_or_else(|_| json!({})),
        "has_password": u.password_hash.is_some(),
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    })
}

fn client_ip(ip: Option<&ClientIp>) -> String {
    ip.map_or_else(|| "unknown".to_string(), |c| c.0.clone())
}

/// A new session of `user` in `workspace` and its first refresh token.
fn new_session(
    id: &Identity,
    user: Uuid,
    workspace: Uuid,
    kind: &'static str,
    headers: &HeaderMap,
    ip: Option<&ClientIp>,
) -> (NewSession, String) {
    let refresh = tokens::generate("spr_");
    let now = Timestamp::now();
    let session = NewSession {
        id: Uuid::now_v7(),
        user_id: user,
        workspace_id: workspace,
        kind,
        user_agent: user_agent(headers),
        ip: Some(client_ip(ip)),
        now,
        expires_at: now.plus(id.settings.session_max_age),
        refresh_hash: tokens::digest(&refresh),
    };
    (session, refresh)
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(300).collect())
}

/// A token pair with who it is for.
#[derive(Serialize)]
pub(crate) struct Tokens {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
    user: Value,
    workspace: Value,
}

/// Opens a session for `user` in `workspace` and returns its tokens.
pub(crate) async fn open_session(
    id: &Identity,
    user: &User,
    workspace: &Workspace,
    kind: &'static str,
    headers: &HeaderMap,
    ip: Option<&ClientIp>,
) -> ApiResult<Tokens> {
    let (session, refresh) = new_session(id, user.id.0, workspace.id.0, kind, headers, ip);
    id.store.open_session(&session).await?;
    Ok(pair(id, user, workspace, session.id, refresh))
}

pub(crate) fn pair(id: &Identity, user: &User, workspace: &Workspace, sid: Uuid, refresh: String) -> Tokens {
    let role = Role::parse(&workspace.role).unwrap_or(Role::Viewer);
    Tokens {
        access_token: id.access_token(user.id.0, workspace.id.0, role, sid),
        refresh_token: refresh,
        token_type: "Bearer",
        expires_in: id.settings.access_ttl.as_secs(),
        user: user_json(user),
        workspace: json!(workspace),
    }
}

/// The workspace a login lands in: the last one used, else the oldest.
pub(crate) async fn landing_workspace(id: &Identity, user: &User) -> ApiResult<Workspace> {
    let all = id.store.workspaces_of(user.id.0).await?;
    let last = user.last_workspace_id.and_then(|l| all.iter().find(|w| w.id == l).cloned());
    match last.or_else(|| all.into_iter().next()) {
        Some(w) => Ok(w),
        None => Err(Problem::forbidden("this account belongs to no workspace; ask for an invitation").into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    email: String,
    password: String,
    name: String,
    workspace_name: Option<String>,
}

async fn register(
    State(id): AppState,
    headers: HeaderMap,
    ip: Option<axum::Extension<ClientIp>>,
    Json(b): Json<RegisterBody>,
) -> ApiResult<Response> {
    let email = parse_email("email", &b.email)?;
    check_password("password", &b.password)?;
    let name = parse_name("name", &b.name)?;
    let workspace_name = match &b.workspace_name {
        Some(w) => parse_name("workspace_name", w)?,
        None => format!("{name}'s workspace"),
    };
    let hash = id.hasher.hash(b.password).await.map_err(ApiError::internal)?;
    let (user, tokens) = create_account(
        &id,
        email,
        name,
        Some(hash),
        false,
        Some(workspace_name),
        "password",
        &headers,
        ip.as_deref(),
    )
    .await?;
    send_verification(&id, &user).await;
    Ok((StatusCode::CREATED, axum::Json(tokens)).into_response())
}

/// Creates an account with its own workspace and first session.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_account(
    id: &Identity,
    email: String,
    name: String,
    password_hash: Option<String>,
    email_verified: bool,
    workspace_name: Option<String>,
    kind: &'static str,
    headers: &HeaderMap,
    ip: Option<&ClientIp>,
) -> ApiResult<(User, Tokens)> {
    let now = Timestamp::now();
    let workspace_name = workspace_name.unwrap_or_else(|| format!("{name}'s workspace"));
    let user = User {
        id: Id(Uuid::now_v7()),
        platform_admin: id.settings.platform_admins.contains(&email),
        email,
        name,
        password_hash,
        email_verified,
        status: "active".into(),
        avatar_asset_id: None,
        locale: None,
        timezone: None,
        preferences: "{}".into(),
        last_workspace_id: None,
        created_at: now,
        updated_at: now,
    };
    let workspace = Workspace {
        id: Id(Uuid::now_v7()),
        name: workspace_name,
        role: Role::Owner.as_str().into(),
        created_at: now,
    };
    let (session, refresh) = new_session(id, user.id.0, workspace.id.0, kind, headers, ip);
    let reg = Registration {
        user: user.clone(),
        workspace_id: workspace.id.0,
        workspace_name: workspace.name.clone(),
        session: session.clone(),
    };
    id.store.register(&reg).await.on_unique(|| {
        Problem::conflict("an account with this email already exists; sign in or reset the password")
    })?;
    tracing::info!(user_id = %user.id, tenant_id = %workspace.id, "account registered");
    let tokens = pair(id, &user, &workspace, session.id, refresh);
    Ok((user, tokens))
}

async fn send_verification(id: &Identity, user: &User) {
    let token = tokens::generate("");
    let now = Timestamp::now();
    let stored = id
        .store
        .issue_email_token(
            "verify",
            user.id.0,
            &user.email,
            &tokens::digest(&token),
            now,
            now.plus(VERIFY_TTL),
        )
        .await;
    if let Err(e) = stored {
        tracing::error!(error = %e, "cannot store the verification token");
        return;
    }
    let link = format!("{}/verify-email?token={token}", id.settings.app_url);
    let email = Email {
        to: user.email.clone(),
        subject: "Confirm your email address".into(),
        text: format!(
            "Hello {},\n\nconfirm your email address for Signpost with this link (valid for 7 days):\n\n{link}\n\nVerification token: {token}\n",
            user.name
        ),
    };
    if let Err(e) = id.mailer.send(&email).await {
        tracing::error!(error = %e, "cannot send the verification email");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

fn too_many(d: &kernel::ratelimit::Decision) -> ApiError {
    Problem::too_many_requests(d.reset_after.as_secs_f64().ceil() as u64).into()
}

pub(crate) fn account_key(email: &str) -> String {
    format!("login:account:{email}")
}

async fn login(
    State(id): AppState,
    headers: HeaderMap,
    ip: Option<axum::Extension<ClientIp>>,
    Json(b): Json<LoginBody>,
) -> ApiResult<Response> {
    // A malformed email is just an account that does not exist: same answer.
    let email = b.email.trim().to_lowercase();
    let ip = client_ip(ip.as_deref());
    let (acct, by_ip) = (account_key(&email), format!("login:ip:{ip}"));
    let (la, li) = (id.settings.login_account, id.settings.login_ip);
    let limiter = &id.kernel.limiter;
    // Each attempt takes a slot before the password is checked, so parallel
    // requests can never check more passwords than the limits allow; a
    // successful login gives its slots back.
    let a = limiter.hit(&acct, la.count, la.window).await.map_err(ApiError::internal)?;
    if !a.allowed {
        tracing::warn!(ip = %ip, "login refused: account locked");
        metrics::counter!("login_throttled_total", "by" => "account").increment(1);
        return Err(too_many(&a));
    }
    let i = limiter.hit(&by_ip, li.count, li.window).await.map_err(ApiError::internal)?;
    if !i.allowed {
        let _ = limiter.undo(&acct).await;
        tracing::warn!(ip = %ip, "login refused: too many failures from this address");
        metrics::counter!("login_throttled_total", "by" => "ip").increment(1);
        return Err(too_many(&i));
    }
    let user = if email.len() <= 254 { id.store.user_by_email(&email).await? } else { None };
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let verdict = id.hasher.verify(b.password.clone(), stored).await.map_err(ApiError::internal)?;
    let user = match (verdict, user) {
        (Verified::Yes, Some(u)) if u.status == "active" => u,
        (Verified::YesRehash(new), Some(u)) if u.status == "active" => {
            id.store.rehash(u.id.0, &new).await?;
            tracing::info!(user_id = %u.id, "password rehashed with current parameters");
            u
        }
        (_, u) => {
            tracing::info!(user_id = ?u.map(|u| u.id.0), ip = %ip, "login failed");
            metrics::counter!("logins_total", "result" => "failure").increment(1);
            return Err(Problem::unauthorized("invalid email or password").into());
        }
    };
    let _ = limiter.undo(&acct).await;
    let _ = limiter.undo(&by_ip).await;
    let workspace = landing_workspace(&id, &user).await?;
    let tokens = open_session(&id, &user, &workspace, "password", &headers, Some(&ClientIp(ip))).await?;
    tracing::info!(user_id = %user.id, tenant_id = %workspace.id, "login succeeded");
    metrics::counter!("logins_total", "result" => "success").increment(1);
    Ok(axum::Json(tokens).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(State(id): AppState, Json(b): Json<RefreshBody>) -> ApiResult<Response> {
    let invalid = || Problem::unauthorized("the refresh token is invalid, expired or revoked");
    if b.refresh_token.len() > 200 {
        return Err(invalid().into());
    }
    let next = tokens::generate("spr_");
    let now = Timestamp::now();
    match id.store.refresh(&tokens::digest(&b.refresh_token), &tokens::digest(&next), now).await? {
        Refreshed::Invalid => Err(invalid().into()),
        Refreshed::Reused(sid) => {
            id.mark_revoked(&[sid]).await.map_err(ApiError::internal)?;
            tracing::warn!(session_id = %sid, "refresh token reused: session revoked");
            metrics::counter!("refresh_token_reuse_total").increment(1);
            Err(invalid().into())
        }
        Refreshed::Rotated(session) => {
            let user = id.store.user(session.user_id.0).await?.filter(|u| u.status == "active");
            let role = match &user {
                Some(_) => id.store.role_in(session.workspace_id.0, session.user_id.0).await?,
                None => None,
            };
            let (Some(user), Some(role)) = (user, role) else {
                // The user left the workspace or was disabled: the session ends here.
                id.store.revoke_session(session.user_id.0, session.id.0).await?;
                id.mark_revoked(&[session.id.0]).await.map_err(ApiError::internal)?;
                return Err(invalid().into());
            };
            let workspace = id
                .store
                .workspaces_of(user.id.0)
                .await?
                .into_iter()
                .find(|w| w.id == session.workspace_id)
                .unwrap_or(Workspace {
                    id: session.workspace_id,
                    name: String::new(),
                    role: role.as_str().into(),
                    created_at: session.created_at,
                });
            Ok(axum::Json(pair(&id, &user, &workspace, session.id.0, next)).into_response())
        }
    }
}

async fn logout(State(id): AppState, caller: Caller) -> ApiResult<StatusCode> {
    user_session(&caller)?;
    id.store.revoke_session(caller.user_id, caller.session_id).await?;
    id.mark_revoked(&[caller.session_id]).await.map_err(ApiError::internal)?;
    tracing::info!(user_id = %caller.user_id, tenant_id = %caller.tenant, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(id): AppState, caller: Caller) -> ApiResult<Response> {
    let user = id.store.user(caller.user_id).await?.ok_or_else(Problem::not_found)?;
    let workspace =
        id.store.workspaces_of(caller.user_id).await?.into_iter().find(|w| w.id.0 == caller.tenant.as_uuid());
    let mut body = json!({
        "user": user_json(&user),
        "workspace": workspace,
        "role": caller.role,
        "session_id": caller.session_id,
    });
    if caller.kind == CallerKind::ApiKey {
        body["api_key"] = json!({ "id": caller.session_id, "scopes": caller.scopes });
    }
    Ok(axum::Json(body).into_response())
}

async fn jwks(State(id): AppState) -> Response {
    let mut res = axum::Json(id.keys.jwks()).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public, max-age=300"));
    res
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    email: String,
}

async fn reset_request(State(id): AppState, Json(b): Json<ResetRequest>) -> ApiResult<StatusCode> {
    // Always 202, whether or not the account exists; the work happens after the answer.
    let Ok(email) = parse_email("email", &b.email) else { return Ok(StatusCode::ACCEPTED) };
    let id = id.clone();
    tokio::spawn(async move {
        let user = match id.store.user_by_email(&email).await {
            Ok(Some(u)) if u.status == "active" => u,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "password reset lookup failed");
                return;
            }
        };
        let token = tokens::generate("");
        let now = Timestamp::now();
        if let Err(e) = id
            .store
            .issue_email_token(
                "reset",
                user.id.0,
                &user.email,
                &tokens::digest(&token),
                now,
                now.plus(RESET_TTL),
            )
            .await
        {
            tracing::error!(error = %e, "cannot store the reset token");
            return;
        }
        // The link's host comes from configuration, never from the request.
        let link = format!("{}/reset-password?token={token}", id.settings.app_url);
        let mail = Email {
            to: user.email.clone(),
            subject: "Reset your Signpost password".into(),
            text: format!(
                "Hello {},\n\nsomeone asked to reset your Signpost password. If it was you, use this link within an hour:\n\n{link}\n\nReset token: {token}\n\nIf it was not you, ignore this message; your password stays as it is.\n",
                user.name
            ),
        };
        match id.mailer.send(&mail).await {
            Ok(()) => tracing::info!(user_id = %user.id, "password reset requested"),
            Err(e) => tracing::error!(error = %e, "cannot send the reset email"),
        }
    });
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetConfirm {
    token: String,
    password: String,
}

async fn reset_confirm(State(id): AppState, Json(b): Json<ResetConfirm>) -> ApiResult<StatusCode> {
    check_password("password", &b.password)?;
    let invalid = || Problem::bad_request("the reset token is invalid, used or expired");
    if b.token.len() > 200 {
        return Err(invalid().into());
    }
    let hash = id.hasher.hash(b.password).await.map_err(ApiError::internal)?;
    let (user, email) = id
        .store
        .spend_email_token("reset", &tokens::digest(&b.token), Timestamp::now())
        .await?
        .ok_or_else(invalid)?;
    // Every session ends, and the user is not logged in: they sign in anew.
    let revoked = id.store.set_password(user, &hash, None).await?;
    id.mark_revoked(&revoked).await.map_err(ApiError::internal)?;
    // Proving control of the mailbox also lifts a login lock on the account.
    let _ = id.kernel.limiter.reset(&account_key(&email)).await;
    tracing::info!(user_id = %user, sessions_revoked = revoked.len(), "password reset completed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    current_password: String,
    new_password: String,
}

async fn change_password(
    State(id): AppState,
    caller: Caller,
    Json(b): Json<ChangePassword>,
) -> ApiResult<StatusCode> {
    user_session(&caller)?;
    check_password("new_password", &b.new_password)?;
    let user = id.store.user(caller.user_id).await?.ok_or_else(Problem::not_found)?;
    let stored = user.password_hash.clone();
    let had = stored.is_some();
    match id.hasher.verify(b.current_password, stored).await.map_err(ApiError::internal)? {
        Verified::Yes | Verified::YesRehash(_) => {}
        Verified::No if !had => {
            return Err(Problem::bad_request(
                "this account has no password yet; use a password reset to set one",
            )
            .into());
        }
        Verified::No => {
            return Err(Problem::validation("current_password", "is not the current password").into());
        }
    }
    let hash = id.hasher.hash(b.new_password).await.map_err(ApiError::internal)?;
    // Other sessions end; the one that changed the password stays.
    let revoked = id.store.set_password(caller.user_id, &hash, Some(caller.session_id)).await?;
    id.mark_revoked(&revoked).await.map_err(ApiError::internal)?;
    tracing::info!(user_id = %caller.user_id, sessions_revoked = revoked.len(), "password changed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    token: String,
}

async fn verify_email(State(id): AppState, Json(b): Json<VerifyBody>) -> ApiResult<StatusCode> {
    let invalid = || Problem::bad_request("the verification token is invalid, used or expired");
    if b.token.len() > 200 {
        return Err(invalid().into());
    }
    let (user, email) = id
        .store
        .spend_email_token("verify", &tokens::digest(&b.token), Timestamp::now())
        .await?
        .ok_or_else(invalid)?;
    id.store.mark_verified(user, &email).await?;
    tracing::info!(user_id = %user, "email verified");
    Ok(StatusCode::NO_CONTENT)
}

async fn resend_verification(State(id): AppState, caller: Caller) -> ApiResult<StatusCode> {
    user_session(&caller)?;
    let user = id.store.user(caller.user_id).await?.ok_or_else(Problem::not_found)?;
    if !user.email_verified {
        send_verification(&id, &user).await;
    }
    Ok(StatusCode::ACCEPTED)
}

async fn list_sessions(State(id): AppState, caller: Caller) -> ApiResult<Response> {
    user_session(&caller)?;
    let sessions = id.store.sessions_of(caller.user_id).await?;
    let items: Vec<Value> = sessions
        .into_iter()
        .map(|s| {
            let current = s.id.0 == caller.session_id;
            let mut v = json!(s);
            v["current"] = json!(current);
            v
        })
        .collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": null })).into_response())
}

async fn revoke_session(State(id): AppState, caller: Caller, Path(sid): Path<Uuid>) -> ApiResult<StatusCode> {
    user_session(&caller)?;
    if !id.store.revoke_session(caller.user_id, sid).await? {
        return Err(Problem::not_found().into());
    }
    id.mark_revoked(&[sid]).await.map_err(ApiError::internal)?;
    tracing::info!(user_id = %caller.user_id, session_id = %sid, "session revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    scopes: Vec<String>,
    expires_at: Option<String>,
}

async fn create_key(State(id): AppState, caller: Caller, Json(b): Json<CreateKey>) -> ApiResult<Response> {
    user_session(&caller)?;
    let role = role_of(&caller);
    if role < Role::Member {
        return Err(roles::forbidden_for(role).into());
    }
    let name = parse_name("name", &b.name)?;
    if b.scopes.is_empty() {
        return Err(Problem::validation("scopes", "name at least one scope").into());
    }
    let mut scopes: Vec<String> = Vec::new();
    for s in &b.scopes {
        if !roles::SCOPES.contains(&s.as_str()) {
            return Err(Problem::validation(
                "scopes",
                format!("unknown scope {s:?}; known: {}", roles::SCOPES.join(", ")),
            )
            .into());
        }
        if roles::scope_needs(s) > role {
            return Err(Problem::forbidden(format!("the {} role cannot grant {s}", role.as_str())).into());
        }
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    let now = Timestamp::now();
    let expires_at = match &b.expires_at {
        None => None,
        Some(t) => {
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| Problem::validation("expires_at", "is not an RFC 3339 time"))?;
            let at = Timestamp::from_unix(at.unix_timestamp());
            if at <= now {
                return Err(Problem::validation("expires_at", "is in the past").into());
            }
            Some(at)
        }
    };
    let secret = tokens::generate(kernel::auth::API_KEY_PREFIX);
    let key = ApiKey {
        id: Id(Uuid::now_v7()),
        workspace_id: Id(caller.tenant.as_uuid()),
        user_id: Id(caller.user_id),
        name,
        prefix: secret.chars().take(10).collect(),
        scopes: scopes.join(" "),
        created_at: now,
        expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    id.store.create_api_key(&key, &tokens::digest(&secret)).await?;
    tracing::info!(user_id = %caller.user_id, tenant_id = %caller.tenant, key_id = %key.id, "API key created");
    let mut body = key_json(&key);
    body["key"] = json!(secret);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

fn key_json(k: &ApiKey) -> Value {
    let mut v = json!(k);
    v["scopes"] = json!(k.scopes.split_whitespace().collect::<Vec<_>>());
    v
}

async fn list_keys(State(id): AppState, caller: Caller) -> ApiResult<Response> {
    let role = role_of(&caller);
    let keys = id.store.api_keys(caller.tenant.as_uuid()).await?;
    // Admins see every key of the workspace; others their own.
    let items: Vec<Value> =
        keys.iter().filter(|k| role.is_admin() || k.user_id.0 == caller.user_id).map(key_json).collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": null })).into_response())
}

async fn revoke_key(State(id): AppState, caller: Caller, Path(key): Path<Uuid>) -> ApiResult<StatusCode> {
    let keys = id.store.api_keys(caller.tenant.as_uuid()).await?;
    let Some(k) = keys.iter().find(|k| k.id.0 == key && k.revoked_at.is_none()) else {
        return Err(Problem::not_found().into());
    };
    if k.user_id.0 != caller.user_id && !role_of(&caller).is_admin() {
        return Err(Problem::not_found().into());
    }
    if !id.store.revoke_api_key(caller.tenant.as_uuid(), key, Timestamp::now()).await? {
        return Err(Problem::not_found().into());
    }
    id.mark_revoked(&[key]).await.map_err(ApiError::internal)?;
    tracing::info!(user_id = %caller.user_id, tenant_id = %caller.tenant, key_id = %key, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The caller of the presented credential: how a gateway in another process
/// resolves an API key (the key authenticates its own lookup).
async fn introspect(State(id): AppState, caller: Caller, headers: HeaderMap) -> Response {
    let mut expires_at = None;
    if caller.kind == CallerKind::ApiKey
        && let Some(key) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' ').map(|(_, k)| k.trim()))
        && let Ok(Some((_, exp))) = resolve_key(&id, key).await
    {
        expires_at = exp;
    }
    axum::Json(json!({
        "expires_at": expires_at,
        "user_id": caller.user_id,
        "tenant_id": caller.tenant,
        "role": caller.role,
        "session_id": caller.session_id,
        "scopes": caller.scopes,
        "kind": caller.kind,
    }))
    .into_response()
}

/// The caller an API key stands for: its creator, with the lesser of the
/// creator's current role and the key's scopes.
pub(crate) async fn resolve_key(id: &Identity, key: &str) -> Result<Option<(Caller, Option<i64>)>, BoxError> {
    if key.len() > 100 || !key.starts_with(kernel::auth::API_KEY_PREFIX) {
        return Ok(None);
    }
    let found = id.store.api_key_by_hash(&tokens::digest(key), Timestamp::now()).await?;
    Ok(found.filter(|(_, _, status)| status == "active").map(|(k, role, _)| {
        let caller = Caller {
            user_id: k.user_id.0,
            tenant: TenantId::from_uuid(k.workspace_id.0),
            role,
            session_id: k.id.0,
            scopes: k.scopes.split_whitespace().map(str::to_string).collect(),
            kind: CallerKind::ApiKey,
        };
        (caller, k.expires_at.map(Timestamp::unix))
    }))
}
