//! The analytics service's OpenAPI paths.

use serde_json::{Value, json};

/// The `paths` object.
pub(crate) fn paths() -> Value {
    let problem = json!({ "description": "Problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
    let text = |name: &str, desc: &str| json!({ "name": name, "in": "query", "schema": { "type": "string" }, "description": desc });
    let mut query = vec![
        text("from", "Start: RFC 3339, or a date in tz (default: 30 days before to). Widened to the hour."),
        text("to", "End, exclusive: RFC 3339, or a date in tz (default: now). Widened to the hour."),
        text("tz", "IANA time zone of dates and day buckets (default UTC)"),
        json!({ "name": "interval", "in": "query", "schema": { "enum": ["hour", "day"] }, "description": "Series buckets (default: hour up to 2 days, else day; hour covers at most 31 days)" }),
        json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 100 }, "description": "Entries per top list (default 10)" }),
        text(
            "top",
            "Comma-separated dimensions to list: country, device, browser, os, referrer, bot (default: all)",
        ),
    ];
    for d in ["country", "device", "browser", "os", "referrer", "bot"] {
        query.push(text(d, &format!("Only clicks whose {d} is this")));
    }
    let errors = |desc: &str, content: Value| {
        json!({
        "200": { "description": desc, "content": content },
        "401": problem, "403": problem, "404": problem, "422": problem })
    };
    let summary_schema = json!({ "type": "object", "properties": {
        "clicks": { "type": "integer" }, "humans": { "type": "integer" },
        "unique_visitors": { "type": "integer", "description": "Distinct daily visitor hashes (a visitor on two days counts twice): exact up to 512 per hour and subject, else HyperLogLog (about 1.6 % error); with filters, exact from the raw events" },
        "unique_visitors_method": { "enum": ["exact", "hyperloglog"] },
        "series": { "type": "array", "items": { "type": "object", "properties": { "t": { "type": "string" }, "clicks": { "type": "integer" }, "humans": { "type": "integer" } } } },
        "top": { "type": "object", "additionalProperties": { "type": "array", "items": { "type": "object", "properties": {
            "value": { "type": ["string", "null"] }, "clicks": { "type": "integer" }, "humans": { "type": "integer" } } } } },
        "scope": { "type": "object" }, "from": { "type": "string" }, "to": { "type": "string" }, "tz": { "type": "string" },
        "interval": { "type": "string" }, "filters": { "type": "object" } } });
    let mut paths = serde_json::Map::new();
    for (prefix, what, param) in [
        ("/v1/analytics", "the whole workspace", None),
        ("/v1/analytics/links/{id}", "a link (clicks on its short URL)", Some(("id", "uuid"))),
        ("/v1/analytics/qr/{id}", "a QR code (its scans)", Some(("id", "uuid"))),
        ("/v1/analytics/tags/{tag}", "the links carrying a tag", Some(("tag", "string"))),
    ] {
        let mut params = query.clone();
        if let Some((name, format)) = param {
            let schema = if format == "uuid" {
                json!({ "type": "string", "format": "uuid" })
            } else {
                json!({ "type": "string" })
            };
            params.insert(0, json!({ "name": name, "in": "path", "required": true, "schema": schema }));
        }
        let op = |summary: String, desc: &str, content: Value| {
            json!({ "get": {
            "summary": summary, "tags": ["analytics"], "parameters": params, "responses": errors(desc, content) } })
        };
        paths.insert(
            format!("{prefix}/summary"),
            op(
                format!(
                    "Summary of {what}: totals, unique visitors, series and top lists (scope analytics:read)"
                ),
                "The summary",
                json!({ "application/json": { "schema": summary_schema } }),
            ),
        );
        paths.insert(
            format!("{prefix}/summary.csv"),
            op(format!("The summary of {what} as CSV"), "CSV", json!({ "text/csv": {} })),
        );
        paths.insert(
            format!("{prefix}/summary.pdf"),
            op(
                format!("The summary of {what} as a one-page PDF report"),
                "PDF",
                json!({ "application/pdf": {} }),
            ),
        );
        paths.insert(
            format!("{prefix}/events.csv"),
            op(
                format!(
                    "Raw clicks and scans of {what}, oldest first, streamed as CSV (within the retention)"
                ),
                "CSV",
                json!({ "text/csv": {} }),
            ),
        );
    }
    paths.insert("/v1/analytics/stream".into(), json!({ "get": {
        "summary": "The workspace's clicks and scans as they happen (Server-Sent Events: a `ready` event, then `link.clicked` / `qr.scanned`)",
        "tags": ["analytics"], "responses": { "200": { "description": "An event stream", "content": { "text/event-stream": {} } },
            "401": problem, "403": problem } } }));
    Value::Object(paths)
}
