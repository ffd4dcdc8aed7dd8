//! `/v1/pixels`: tracking pixels a workspace registers and attaches to links.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use kernel::auth::Caller;
use kernel::db::{Id, Timestamp};
use kernel::http::{Json, Path};
use kernel::{ApiError, ApiResult, Problem, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::{self, PixelTag};
use crate::store::Pixel;
use crate::{AppState, Links, title};

pub(crate) fn routes() -> Router<Arc<Links>> {
    Router::new().route("/v1/pixels", post(add).get(list)).route("/v1/pixels/{id}", delete(remove))
}

fn pixel_json(p: &Pixel) -> Value {
    json!({ "id": p.id, "kind": p.kind, "pixel_id": p.pixel_id, "name": p.name, "created_at": p.created_at })
}

/// The pixels to attach to a link, as its JSON column: each must be one of the workspace's.
pub(crate) async fn attach(s: &Links, tenant: TenantId, ids: &[Uuid]) -> ApiResult<String> {
    if ids.len() > 10 {
        return Err(Problem::validation("pixels", "at most 10 pixels per link").into());
    }
    let mine = if ids.is_empty() { Vec::new() } else { s.store.pixels(tenant).await? };
    let mut tags: Vec<PixelTag> = Vec::new();
    for id in ids {
        let p = mine
            .iter()
            .find(|p| p.id.0 == *id)
            .ok_or_else(|| Problem::validation("pixels", format!("{id} is not a pixel of this workspace")))?;
        if !tags.iter().any(|t| t.id == *id) {
            tags.push(PixelTag { id: *id, kind: p.kind.clone(), pixel_id: p.pixel_id.clone() });
        }
    }
    serde_json::to_string(&tags).map_err(ApiError::internal)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    kind: String,
    pixel_id: String,
    name: Option<String>,
}

async fn add(State(s): AppState, caller: Caller, Json(b): Json<AddBody>) -> ApiResult<Response> {
    caller.require("links:write")?;
    let pixel_id = b.pixel_id.trim().to_string();
    model::pixel_id(&b.kind, &pixel_id)?;
    let p = Pixel {
        tenant_id: Id(caller.tenant.as_uuid()),
        id: Id(Uuid::now_v7()),
        kind: b.kind,
        pixel_id,
        name: title(b.name)?,
        created_at: Timestamp::now(),
        deleted_at: None,
    };
    s.store.add_pixel(&p).await?;
    Ok((StatusCode::CREATED, axum::Json(pixel_json(&p))).into_response())
}

async fn list(State(s): AppState, caller: Caller) -> ApiResult<Response> {
    caller.require("links:read")?;
    let items: Vec<Value> = s.store.pixels(caller.tenant).await?.iter().map(pixel_json).collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": null })).into_response())
}

async fn remove(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    caller.require("links:write")?;
    if !s.store.delete_pixel(caller.tenant, id).await? {
        return Err(Problem::not_found().into());
    }
    Ok(StatusCode::NO_CONTENT)
}
