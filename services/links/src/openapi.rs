//! The links service's OpenAPI paths.

use serde_json::{Value, json};

fn link_body() -> Value {
    let url = json!({ "type": "string", "format": "uri", "maxLength": 2048 });
    json!({ "type": "object", "additionalProperties": false, "properties": {
        "url": url, "slug": { "type": "string", "pattern": "^[A-Za-z0-9_-]{3,64}$" },
        "domain": { "type": "string" }, "title": { "type": "string", "maxLength": 300 },
        "tags": { "type": "array", "maxItems": 20, "items": { "type": "string", "maxLength": 50 } },
        "expires_at": { "type": ["string", "null"], "format": "date-time" }, "expired_url": url,
        "max_clicks": { "type": ["integer", "null"], "minimum": 1 }, "password": { "type": ["string", "null"] },
        "redirect_type": { "enum": [301, 302, 307] },
        "utm": { "type": ["object", "null"], "properties": { "source": {"type": "string"}, "medium": {"type": "string"},
            "campaign": {"type": "string"}, "term": {"type": "string"}, "content": {"type": "string"} } },
        "ios_url": url, "android_url": url,
        "geo": { "type": ["object", "null"], "additionalProperties": url, "description": "ISO 3166-1 alpha-2 code → URL" } } })
}

/// The `paths` object.
pub(crate) fn paths() -> Value {
    let problem = json!({ "description": "Problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    let id = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }]);
    let errors = |ok: &str, desc: &str| json!({ ok: { "description": desc }, "400": problem, "401": problem, "403": problem, "404": problem, "409": problem, "422": problem });
    json!({
        "/v1/links": {
            "post": { "summary": "Create a short link (scope links:write)", "tags": ["links"],
                "requestBody": { "required": true, "content": { "application/json": { "schema": link_body() } } },
                "responses": errors("201", "The link, with its short_url") },
            "get": { "summary": "List links, newest first: ?q= searches title, URL and slug; ?tag= filters (scope links:read)", "tags": ["links"],
                "parameters": [
                    { "name": "q", "in": "query", "schema": { "type": "string" } },
                    { "name": "tag", "in": "query", "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 200 } },
                    { "name": "cursor", "in": "query", "schema": { "type": "string" } } ],
                "responses": errors("200", "{items, next_cursor}") }
        },
        "/v1/links/{id}": {
            "get": { "summary": "A link", "tags": ["links"], "parameters": id, "responses": errors("200", "The link") },
            "patch": { "summary": "Change a link (the slug stays); null clears a field", "tags": ["links"], "parameters": id,
                "requestBody": { "required": true, "content": { "application/json": { "schema": link_body() } } },
                "responses": errors("200", "The changed link") },
            "delete": { "summary": "Delete a link (its slug stays reserved)", "tags": ["links"], "parameters": id,
                "responses": errors("204", "Deleted") }
        }
    })
}
