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
        "geo": { "type": ["object", "null"], "additionalProperties": url, "description": "ISO 3166-1 alpha-2 code → URL" },
        "pixels": { "type": "array", "maxItems": 10, "items": { "type": "string", "format": "uuid" },
            "description": "Pixels of the workspace; visitors are asked for consent before they fire" } } })
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
        "/v1/qr": {
            "post": { "summary": "Create a dynamic QR code for a link (scope qr:write); it scans at /q/{code}", "tags": ["qr"],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["link_id"],
                    "additionalProperties": false, "properties": { "link_id": { "type": "string", "format": "uuid" }, "title": { "type": "string" } } } } } },
                "responses": errors("201", "The QR code with its scan_url and image URLs") },
            "get": { "summary": "List QR codes, newest first (scope qr:read)", "tags": ["qr"],
                "parameters": [ { "name": "limit", "in": "query", "schema": { "type": "integer" } }, { "name": "cursor", "in": "query", "schema": { "type": "string" } } ],
                "responses": errors("200", "{items, next_cursor}") }
        },
        "/v1/qr/{id}": {
            "get": { "summary": "A QR code", "tags": ["qr"], "parameters": id, "responses": errors("200", "The QR code") },
            "patch": { "summary": "Point the code at another link, or retitle it (no reprint needed)", "tags": ["qr"], "parameters": id,
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false,
                    "properties": { "link_id": { "type": "string", "format": "uuid" }, "title": { "type": ["string", "null"] } } } } } },
                "responses": errors("200", "The QR code") },
            "delete": { "summary": "Delete a QR code (its scans then find nothing)", "tags": ["qr"], "parameters": id, "responses": errors("204", "Deleted") }
        },
        "/v1/qr/{id}/logo": {
            "put": { "summary": "Set the code's logo (PNG, at most 256 KiB and 1024×1024); images with it use error correction H", "tags": ["qr"],
                "parameters": id, "requestBody": { "required": true, "content": { "image/png": {} } },
                "responses": errors("200", "The QR code") },
            "delete": { "summary": "Remove the logo", "tags": ["qr"], "parameters": id, "responses": errors("204", "Removed") }
        },
        "/v1/qr/{id}/{file}": {
            "get": { "summary": "The code as image.png, image.svg or image.pdf; rendered once per style, cached for a year", "tags": ["qr"],
                "parameters": [
                    { "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } },
                    { "name": "file", "in": "path", "required": true, "schema": { "enum": ["image.png", "image.svg", "image.pdf"] } },
                    { "name": "size", "in": "query", "schema": { "type": "integer", "minimum": 64, "maximum": 4096, "default": 512 } },
                    { "name": "margin", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": 16, "default": 4 } },
                    { "name": "fg", "in": "query", "schema": { "type": "string", "pattern": "^#?[0-9a-fA-F]{6}$", "default": "000000" } },
                    { "name": "bg", "in": "query", "schema": { "type": "string", "pattern": "^#?[0-9a-fA-F]{6}$", "default": "ffffff" } },
                    { "name": "ec", "in": "query", "schema": { "enum": ["L", "M", "Q", "H"], "default": "M" } },
                    { "name": "logo", "in": "query", "schema": { "type": "boolean", "default": true }, "description": "Put the code's logo in (when it has one; forces H)" } ],
                "responses": { "200": { "description": "The image", "content": { "image/png": {}, "image/svg+xml": {}, "application/pdf": {} } },
                               "304": { "description": "Not modified (ETag)" }, "404": problem, "422": problem } }
        },
        "/assets/qr/{code}/{file}": {
            "get": { "summary": "Public, immutable address of a rendering ({hash}.png|svg|pdf, as in a code's public_images or an image's Content-Location); no credentials; cached for a year", "tags": ["qr"],
                "security": [],
                "parameters": [
                    { "name": "code", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9]{1,32}$" } },
                    { "name": "file", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{64}\\.(png|svg|pdf)$" } } ],
                "responses": { "200": { "description": "The image", "content": { "image/png": {}, "image/svg+xml": {}, "application/pdf": {} } },
                               "304": { "description": "Not modified (ETag)" }, "404": problem } }
        },
        "/v1/domains": {
            "post": { "summary": "Add a custom domain (admins); the answer names the TXT record that proves it is yours", "tags": ["domains"],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["hostname"],
                    "additionalProperties": false, "properties": { "hostname": { "type": "string" } } } } } },
                "responses": errors("201", "The domain, unverified, with its verification record") },
            "get": { "summary": "The workspace's domains", "tags": ["domains"], "responses": errors("200", "{items}") }
        },
        "/v1/domains/{id}": {
            "get": { "summary": "A domain", "tags": ["domains"], "parameters": id, "responses": errors("200", "The domain") },
            "delete": { "summary": "Remove a domain: its links stop answering", "tags": ["domains"], "parameters": id, "responses": errors("204", "Removed") }
        },
        "/v1/domains/{id}/verify": {
            "post": { "summary": "Look up the TXT record _signpost-verification.<hostname> and verify the domain", "tags": ["domains"],
                "parameters": id, "responses": errors("200", "The verified domain (422: record not found; 409: verified by another workspace)") }
        },
        "/v1/domains/{id}/default": {
            "post": { "summary": "Make a verified domain the default of new links", "tags": ["domains"], "parameters": id,
                "responses": errors("200", "The domain") }
        },
        "/v1/pixels": {
            "post": { "summary": "Register a tracking pixel (meta, google_ads, ga4, linkedin, tiktok) to attach to links", "tags": ["pixels"],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["kind", "pixel_id"],
                    "additionalProperties": false, "properties": { "kind": { "enum": ["meta", "google_ads", "ga4", "linkedin", "tiktok"] },
                    "pixel_id": { "type": "string" }, "name": { "type": "string" } } } } } },
                "responses": errors("201", "The pixel") },
            "get": { "summary": "The workspace's pixels", "tags": ["pixels"], "responses": errors("200", "{items}") }
        },
        "/v1/pixels/{id}": {
            "delete": { "summary": "Remove a pixel", "tags": ["pixels"], "parameters": id, "responses": errors("204", "Removed") }
        },
        "/v1/links/import": {
            "post": { "summary": "Import links from CSV (header row; url required; slug, title, tags separated by ;, expires_at, expired_url, max_clicks, redirect_type, utm_*, ios_url, android_url); runs in the background", "tags": ["links"],
                "requestBody": { "required": true, "content": { "text/csv": { "schema": { "type": "string" } } } },
                "responses": errors("202", "The import job; Location points at its report") }
        },
        "/v1/links/import/{id}": {
            "get": { "summary": "An import's progress and per-row report ({row, error} for each bad row)", "tags": ["links"], "parameters": id,
                "responses": errors("200", "The job") }
        },
        "/v1/links/export.csv": {
            "get": { "summary": "Every link of the workspace as CSV, streamed", "tags": ["links"],
                "responses": { "200": { "description": "CSV", "content": { "text/csv": {} } }, "401": problem, "403": problem } }
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
