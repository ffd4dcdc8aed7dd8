//! `/v1/workspaces`: create, list, switch; members; invitations.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use kernel::auth::Caller;
use kernel::db::{Id, Timestamp};
use kernel::http::{Json, Path};
use kernel::mail::Email;
use kernel::{ApiError, ApiResult, Problem};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::api::{pair, parse_email, parse_name};
use crate::roles::{self, Role};
use crate::store::{Invitation, MembershipChange, Workspace};
use crate::{AppState, Identity, role_of, tokens, user_session};

/// Invitations are valid this long.
pub const INVITATION_TTL: Duration = Duration::from_secs(7 * 86_400);

pub(crate) fn routes() -> Router<Arc<Identity>> {
    Router::new()
        .route("/v1/workspaces", post(create).get(list))
        .route("/v1/workspaces/{id}/switch", post(switch))
        .route("/v1/workspaces/{id}/members", get(members))
        .route("/v1/workspaces/{id}/members/{user_id}", patch(set_role).delete(remove))
        .route("/v1/workspaces/{id}/invitations", post(invite).get(invitations))
        .route("/v1/workspaces/{id}/invitations/{invitation_id}", delete(revoke_invitation))
        .route("/v1/auth/invitations/accept", post(accept))
}

/// Workspace routes act on the caller's current workspace only: any other id is 404.
fn current(caller: &Caller, id: Uuid) -> Result<(), Problem> {
    if caller.tenant.as_uuid() == id { Ok(()) } else { Err(Problem::not_found()) }
}

fn require(caller: &Caller, least: Role) -> Result<Role, Problem> {
    let role = role_of(caller);
    if role >= least { Ok(role) } else { Err(roles::forbidden_for(role)) }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
}

async fn create(State(id): AppState, caller: Caller, Json(b): Json<CreateBody>) -> ApiResult<Response> {
    user_session(&caller)?;
    let name = parse_name("name", &b.name)?;
    let ws = Workspace {
        id: Id(Uuid::now_v7()),
        name,
        role: Role::Owner.as_str().into(),
        created_at: Timestamp::now(),
    };
    id.store.create_workspace(caller.user_id, ws.id.0, &ws.name, ws.created_at).await?;
    tracing::info!(user_id = %caller.user_id, tenant_id = %ws.id, "workspace created");
    Ok((StatusCode::CREATED, axum::Json(ws)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(
    State(id): AppState,
    caller: Caller,
    kernel::http::Query(q): kernel::http::Query<ListQuery>,
) -> ApiResult<Response> {
    let items = if q.all {
        let user = id.store.user(caller.user_id).await?.ok_or_else(Problem::not_found)?;
        if !user.platform_admin {
            return Err(Problem::forbidden("only platform admins list every workspace").into());
        }
        tracing::info!(target: "audit", user_id = %caller.user_id, tenant_id = %caller.tenant, "platform admin listed every workspace");
        id.store.all_workspaces(1000).await?
    } else {
        id.store.workspaces_of(caller.user_id).await?
    };
    Ok(axum::Json(json!({ "items": items, "next_cursor": null })).into_response())
}

async fn switch(State(id): AppState, caller: Caller, Path(ws): Path<Uuid>) -> ApiResult<Response> {
    user_session(&caller)?;
    let user = id.store.user(caller.user_id).await?.ok_or_else(Problem::not_found)?;
    let mut target = id.store.workspaces_of(caller.user_id).await?.into_iter().find(|w| w.id.0 == ws);
    if target.is_none() && user.platform_admin {
        // A platform admin may enter any workspace, as its admin; it is audited.
        target = id.store.all_workspaces(100_000).await?.into_iter().find(|w| w.id.0 == ws);
        if target.is_some() {
            tracing::info!(target: "audit", user_id = %caller.user_id, tenant_id = %ws, "platform admin entered a workspace");
        }
    }
    let target = target.ok_or_else(Problem::not_found)?;
    let refresh = tokens::generate("spr_");
    id.store.switch_session(caller.session_id, ws, &tokens::digest(&refresh), Timestamp::now()).await?;
    Ok(axum::Json(pair(&id, &user, &target, caller.session_id, refresh)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberQuery {
    pub(crate) q: Option<String>,
    pub(crate) role: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) limit: Option<u32>,
    pub(crate) cursor: Option<String>,
}

async fn members(
    State(id): AppState,
    caller: Caller,
    Path(ws): Path<Uuid>,
    kernel::http::Query(q): kernel::http::Query<MemberQuery>,
) -> ApiResult<Response> {
    current(&caller, ws)?;
    crate::users::member_page(&id, ws, &q).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: String,
}

async fn set_role(
    State(id): AppState,
    caller: Caller,
    Path((ws, user)): Path<(Uuid, Uuid)>,
    Json(b): Json<RoleBody>,
) -> ApiResult<StatusCode> {
    current(&caller, ws)?;
    let mine = require(&caller, Role::Admin)?;
    let new = Role::parse(&b.role)
        .ok_or_else(|| Problem::validation("role", "is one of owner, admin, member, viewer"))?;
    let theirs = id.store.role_in(ws, user).await?.ok_or_else(Problem::not_found)?;
    // Nobody grants more than they hold; only owners touch owners.
    if new > mine || (theirs == Role::Owner && mine != Role::Owner) {
        return Err(roles::forbidden_for(mine).into());
    }
    if theirs == new {
        return Ok(StatusCode::NO_CONTENT);
    }
    match id.store.set_role(ws, user, new).await? {
        MembershipChange::Done => {}
        MembershipChange::NotFound => return Err(Problem::not_found().into()),
        MembershipChange::LastOwner => return Err(roles::last_owner().into()),
    }
    // Their tokens carry the old role: end those sessions so a refresh picks up the new one.
    let revoked = id.store.revoke_user_sessions(user, Some(ws)).await?;
    id.mark_revoked(&revoked).await.map_err(ApiError::internal)?;
    tracing::info!(user_id = %caller.user_id, tenant_id = %ws, member = %user, role = new.as_str(), "role changed");
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(id): AppState,
    caller: Caller,
    Path((ws, user)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    current(&caller, ws)?;
    remove_member(&id, &caller, ws, user).await
}

/// Removes `user` from `ws` (an admin removing someone, or anyone leaving).
pub(crate) async fn remove_member(
    id: &Identity,
    caller: &Caller,
    ws: Uuid,
    user: Uuid,
) -> ApiResult<StatusCode> {
    let leaving = user == caller.user_id;
    let mine = role_of(caller);
    let theirs = id.store.role_in(ws, user).await?.ok_or_else(Problem::not_found)?;
    if !leaving && (!mine.is_admin() || (theirs == Role::Owner && mine != Role::Owner)) {
        return Err(roles::forbidden_for(mine).into());
    }
    match id.store.remove_member(ws, user).await? {
        MembershipChange::Done => {}
        MembershipChange::NotFound => return Err(Problem::not_found().into()),
        MembershipChange::LastOwner => return Err(roles::last_owner().into()),
    }
    let revoked = id.store.revoke_user_sessions(user, Some(ws)).await?;
    id.mark_revoked(&revoked).await.map_err(ApiError::internal)?;
    tracing::info!(user_id = %caller.user_id, tenant_id = %ws, member = %user, "member removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    email: String,
    role: String,
}

async fn invite(
    State(id): AppState,
    caller: Caller,
    Path(ws): Path<Uuid>,
    Json(b): Json<InviteBody>,
) -> ApiResult<Response> {
    current(&caller, ws)?;
    let mine = require(&caller, Role::Admin)?;
    let email = parse_email("email", &b.email)?;
    let role = Role::parse(&b.role)
        .ok_or_else(|| Problem::validation("role", "is one of owner, admin, member, viewer"))?;
    if role > mine {
        return Err(
            Problem::forbidden(format!("an {} cannot invite an {}", mine.as_str(), role.as_str())).into()
        );
    }
    let token = tokens::generate("");
    let now = Timestamp::now();
    let inv = Invitation {
        id: Id(Uuid::now_v7()),
        workspace_id: Id(ws),
        email: email.clone(),
        role: role.as_str().into(),
        invited_by: Id(caller.user_id),
        created_at: now,
        expires_at: now.plus(INVITATION_TTL),
        accepted_at: None,
        revoked_at: None,
    };
    id.store.create_invitation(&inv, &tokens::digest(&token)).await?;
    let workspace = id.store.workspaces_of(caller.user_id).await?.into_iter().find(|w| w.id.0 == ws);
    let name = workspace.map_or_else(|| "a workspace".to_string(), |w| format!("the workspace {:?}", w.name));
    let link = format!("{}/accept-invitation?token={token}", id.settings.app_url);
    let mail = Email {
        to: email,
        subject: "You are invited to Signpost".into(),
        text: format!(
            "You are invited to join {name} on Signpost as {}.\n\nSign in (or create an account) with this address, then accept within 7 days:\n\n{link}\n\nInvitation token: {token}\n",
            role.as_str()
        ),
    };
    if let Err(e) = id.mailer.send(&mail).await {
        tracing::error!(error = %e, "cannot send the invitation email");
    }
    tracing::info!(user_id = %caller.user_id, tenant_id = %ws, invitation_id = %inv.id, "invitation sent");
    Ok((StatusCode::CREATED, axum::Json(inv)).into_response())
}

async fn invitations(State(id): AppState, caller: Caller, Path(ws): Path<Uuid>) -> ApiResult<Response> {
    current(&caller, ws)?;
    require(&caller, Role::Admin)?;
    let items = id.store.invitations(ws).await?;
    Ok(axum::Json(json!({ "items": items, "next_cursor": null })).into_response())
}

async fn revoke_invitation(
    State(id): AppState,
    caller: Caller,
    Path((ws, inv)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    current(&caller, ws)?;
    require(&caller, Role::Admin)?;
    if !id.store.revoke_invitation(ws, inv, Timestamp::now()).await? {
        return Err(Problem::not_found().into());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    token: String,
}

/// Accepts an invitation as the signed-in user whose email it was sent to, and
/// answers with tokens for the workspace joined.
async fn accept(
    State(id): AppState,
    caller: Option<Caller>,
    Json(b): Json<AcceptBody>,
) -> ApiResult<Response> {
    let caller = caller.ok_or_else(|| {
        Problem::unauthorized("sign in (or register) with the invited email address, then accept")
    })?;
    user_session(&caller)?;
    let user = id.store.user(caller.user_id).await?.ok_or_else(Problem::not_found)?;
    let invalid = || {
        Problem::bad_request("the invitation is invalid, used, revoked, expired or for another email address")
    };
    if b.token.len() > 200 {
        return Err(invalid().into());
    }
    let inv = id
        .store
        .accept_invitation(&tokens::digest(&b.token), user.id.0, &user.email, Timestamp::now())
        .await?
        .ok_or_else(invalid)?;
    let workspace = id
        .store
        .workspaces_of(user.id.0)
        .await?
        .into_iter()
        .find(|w| w.id == inv.workspace_id)
        .ok_or_else(Problem::not_found)?;
    let refresh = tokens::generate("spr_");
    id.store
        .switch_session(caller.session_id, workspace.id.0, &tokens::digest(&refresh), Timestamp::now())
        .await?;
    tracing::info!(user_id = %user.id, tenant_id = %workspace.id, role = %workspace.role, "invitation accepted");
    Ok(axum::Json(pair(&id, &user, &workspace, caller.session_id, refresh)).into_response())
}
