//! Identity's OpenAPI paths (merged into `/v1/openapi.json`).

use serde_json::{Map, Value, json};

/// (path, method, summary, request body schema name, success status, anonymous)
type Operation = (&'static str, &'static str, &'static str, Option<&'static str>, u16, bool);

const OPERATIONS: &[Operation] = &[
    ("/v1/auth/register", "post", "Create an account and its first workspace", Some("Register"), 201, true),
    ("/v1/auth/login", "post", "Sign in with email and password", Some("Login"), 200, true),
    (
        "/v1/auth/refresh",
        "post",
        "Trade a refresh token for a new pair (rotation)",
        Some("Refresh"),
        200,
        true,
    ),
    ("/v1/auth/logout", "post", "End the current session", None, 204, false),
    ("/v1/auth/me", "get", "The caller, current workspace and role", None, 200, false),
    ("/v1/auth/.well-known/jwks.json", "get", "Public keys of access tokens (JWKS)", None, 200, true),
    ("/v1/auth/password-reset/request", "post", "Email a reset link (always 202)", Some("Email"), 202, true),
    (
        "/v1/auth/password-reset/confirm",
        "post",
        "Set a new password with a reset token",
        Some("ResetConfirm"),
        204,
        true,
    ),
    (
        "/v1/auth/password",
        "post",
        "Change the password (needs the current one)",
        Some("ChangePassword"),
        204,
        false,
    ),
    (
        "/v1/auth/verify-email",
        "post",
        "Confirm the email address with the emailed token",
        Some("Token"),
        204,
        true,
    ),
    ("/v1/auth/verify-email/resend", "post", "Send the verification email again", None, 202, false),
    ("/v1/auth/sessions", "get", "The caller's live sessions", None, 200, false),
    ("/v1/auth/sessions/{id}", "delete", "Revoke one of the caller's sessions", None, 204, false),
    (
        "/v1/auth/api-keys",
        "post",
        "Create an API key (the key is shown once)",
        Some("CreateApiKey"),
        201,
        false,
    ),
    ("/v1/auth/api-keys", "get", "API keys of the workspace (admins) or the caller's own", None, 200, false),
    ("/v1/auth/api-keys/{id}", "delete", "Revoke an API key", None, 204, false),
    ("/v1/auth/introspect", "get", "The caller behind the presented token or API key", None, 200, false),
    (
        "/v1/auth/invitations/accept",
        "post",
        "Accept an invitation as the invited, signed-in user",
        Some("Token"),
        200,
        false,
    ),
    (
        "/v1/auth/oauth/{provider}/start",
        "get",
        "Start Google or GitHub sign-in (302 to the provider; PKCE, state, nonce)",
        None,
        302,
        true,
    ),
    (
        "/v1/auth/oauth/{provider}/callback",
        "get",
        "Provider callback: tokens as JSON, or a 302 to the app with tokens in the fragment",
        None,
        200,
        true,
    ),
    ("/v1/workspaces", "post", "Create a workspace (the caller owns it)", Some("Name"), 201, false),
    (
        "/v1/workspaces",
        "get",
        "The caller's workspaces (?all=true: every workspace, platform admins)",
        None,
        200,
        false,
    ),
    ("/v1/workspaces/{id}/switch", "post", "Tokens for another workspace of the caller", None, 200, false),
    ("/v1/workspaces/{id}/members", "get", "Members, with search, role and status filters", None, 200, false),
    ("/v1/workspaces/{id}/members/{user_id}", "patch", "Change a member's role", Some("Role"), 204, false),
    ("/v1/workspaces/{id}/members/{user_id}", "delete", "Remove a member (or leave)", None, 204, false),
    ("/v1/workspaces/{id}/invitations", "post", "Invite someone by email", Some("Invite"), 201, false),
    ("/v1/workspaces/{id}/invitations", "get", "Invitations of the workspace", None, 200, false),
    ("/v1/workspaces/{id}/invitations/{invitation_id}", "delete", "Revoke an invitation", None, 204, false),
    (
        "/v1/users",
        "get",
        "Users of the workspace (admins); ?all=true: every user (platform admins)",
        None,
        200,
        false,
    ),
    (
        "/v1/users/{id}",
        "get",
        "A user (self, an admin of a shared workspace, or a platform admin)",
        None,
        200,
        false,
    ),
    ("/v1/users/{id}", "patch", "Update profile and preferences", Some("Profile"), 200, false),
    (
        "/v1/users/{id}",
        "delete",
        "Delete the account (self) or remove from the workspace (admin)",
        None,
        204,
        false,
    ),
];

fn schemas() -> Value {
    let s = |v: Value| v;
    json!({
        "Register": s(json!({"type": "object", "required": ["email", "password", "name"], "additionalProperties": false,
            "properties": {"email": {"type": "string", "format": "email"}, "password": {"type": "string", "minLength": 8, "maxLength": 128},
                           "name": {"type": "string"}, "workspace_name": {"type": "string"}}})),
        "Login": {"type": "object", "required": ["email", "password"], "additionalProperties": false,
            "properties": {"email": {"type": "string"}, "password": {"type": "string"}}},
        "Refresh": {"type": "object", "required": ["refresh_token"], "properties": {"refresh_token": {"type": "string"}}},
        "Email": {"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}},
        "Token": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
        "ResetConfirm": {"type": "object", "required": ["token", "password"], "properties": {"token": {"type": "string"}, "password": {"type": "string"}}},
        "ChangePassword": {"type": "object", "required": ["current_password", "new_password"],
            "properties": {"current_password": {"type": "string"}, "new_password": {"type": "string"}}},
        "CreateApiKey": {"type": "object", "required": ["name", "scopes"], "properties": {"name": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string", "enum": crate::roles::SCOPES}},
            "expires_at": {"type": "string", "format": "date-time"}}},
        "Name": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "Role": {"type": "object", "required": ["role"], "properties": {"role": {"type": "string", "enum": ["owner", "admin", "member", "viewer"]}}},
        "Invite": {"type": "object", "required": ["email", "role"], "properties": {"email": {"type": "string"},
            "role": {"type": "string", "enum": ["owner", "admin", "member", "viewer"]}}},
        "Profile": {"type": "object", "additionalProperties": false, "properties": {"name": {"type": "string"},
            "locale": {"type": ["string", "null"]}, "timezone": {"type": ["string", "null"]},
            "avatar_asset_id": {"type": ["string", "null"], "format": "uuid"},
            "preferences": {"type": "object", "additionalProperties": false, "properties": {
                "theme": {"enum": ["light", "dark", "system"]}, "email_notifications": {"type": "boolean"},
                "weekly_digest": {"type": "boolean"}, "default_redirect_type": {"enum": [301, 302, 307]},
                "dashboard_range_days": {"type": "integer", "minimum": 1, "maximum": 365},
                "default_domain": {"type": ["string", "null"]}}},
            "status": {"enum": ["active", "disabled"]}}}
    })
}

/// The `paths` object.
pub(crate) fn paths() -> Value {
    let problem = json!({ "description": "Problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    let schemas = schemas();
    let mut paths = Map::new();
    for (path, method, summary, body, status, anonymous) in OPERATIONS {
        let tag = if path.starts_with("/v1/auth") {
            "auth"
        } else if path.starts_with("/v1/users") {
            "users"
        } else {
            "workspaces"
        };
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let schema = if name == "provider" {
                    json!({ "type": "string", "enum": ["google", "github"] })
                } else {
                    json!({ "type": "string", "format": "uuid" })
                };
                json!({ "name": name, "in": "path", "required": true, "schema": schema })
            })
            .collect();
        let mut op = json!({
            "summary": summary,
            "tags": [tag],
            "parameters": params,
            "responses": { status.to_string(): { "description": "Success" }, "400": problem, "401": problem, "403": problem,
                           "404": problem, "409": problem, "422": problem, "429": problem },
        });
        if let Some(name) = body {
            op["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": schemas[name] } } });
        }
        if *anonymous {
            op["security"] = json!([]);
        }
        let item = paths.entry((*path).to_string()).or_insert_with(|| json!({}));
        item[*method] = op;
    }
    Value::Object(paths)
}
