//! The few HTML pages of the public path: not found, gone, and the password form.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Whether the client is a browser (it asks for HTML).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#222}}input,button{{font-size:1rem;padding:.5rem}}</style></head><body><h1>{}</h1>{body}</body></html>",
        escape(title),
        escape(title)
    );
    let mut res = (status, doc).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A page with a title and one paragraph.
pub fn page(status: StatusCode, title: &str, message: &str) -> Response {
    html(status, title, &format!("<p>{}</p>", escape(message)))
}

/// The form that unlocks a password-protected link.
pub fn password_form(action: &str, wrong: bool) -> Response {
    let status = if wrong { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    let error = if wrong { "<p role=\"alert\">That password is not right.</p>" } else { "" };
    html(
        status,
        "This link is protected",
        &format!(
            "{error}<form method=\"post\" action=\"{}\"><label>Password <input type=\"password\" name=\"password\" required autofocus></label> <button type=\"submit\">Continue</button></form>",
            escape(action)
        ),
    )
}

fn provider(kind: &str) -> &'static str {
    match kind {
        "meta" => "Meta",
        "google_ads" => "Google Ads",
        "ga4" => "Google Analytics",
        "linkedin" => "LinkedIn",
        "tiktok" => "TikTok",
        _ => "an advertiser",
    }
}

/// Asks before any pixel fires: nothing of the advertisers loads on this page.
pub fn consent(action: &str, pixels: &[links::model::PixelTag]) -> Response {
    let mut names: Vec<&str> = pixels.iter().map(|p| provider(&p.kind)).collect();
    names.dedup();
    let action = escape(action);
    html(
        StatusCode::OK,
        "Before you continue",
        &format!(
            "<p>This link measures visits with tracking by {}. Do you allow it?</p><p><a href=\"{action}?consent=yes\">Allow and continue</a> &nbsp; <a href=\"{action}?consent=no\">Continue without tracking</a></p>",
            escape(&names.join(", "))
        ),
    )
}

/// After a yes: the pixels load, then the browser moves on to `target`.
pub fn fire_pixels(pixels: &[links::model::PixelTag], target: &str) -> Response {
    let nonce: String = uuid::Uuid::new_v4().simple().to_string();
    let mut tags = String::new();
    for p in pixels {
        let id = escape(&p.pixel_id);
        tags.push_str(&match p.kind.as_str() {
            "meta" => format!("<img alt=\"\" width=\"1\" height=\"1\" src=\"https://www.facebook.com/tr?id={id}&amp;ev=PageView&amp;noscript=1\">"),
            "linkedin" => format!("<img alt=\"\" width=\"1\" height=\"1\" src=\"https://px.ads.linkedin.com/collect/?pid={id}&amp;fmt=gif\">"),
            "google_ads" => format!(
                "<img alt=\"\" width=\"1\" height=\"1\" src=\"https://www.googleadservices.com/pagead/conversion/{}/?guid=ON&amp;script=0\">",
                escape(p.pixel_id.trim_start_matches("AW-"))
            ),
            "ga4" => format!(
                "<script async nonce=\"{nonce}\" src=\"https://www.googletagmanager.com/gtag/js?id={id}\"></script><script nonce=\"{nonce}\">window.dataLayer=window.dataLayer||[];function gtag(){{dataLayer.push(arguments);}}gtag('js',new Date());gtag('config','{id}');</script>"
            ),
            "tiktok" => format!("<script async nonce=\"{nonce}\" src=\"https://analytics.tiktok.com/i18n/pixel/events.js?sdkid={id}&amp;lib=ttq\"></script>"),
            _ => String::new(),
        });
    }
    let to = escape(target);
    let mut res = html(
        StatusCode::OK,
        "Continuing…",
        &format!(
            "{tags}<meta http-equiv=\"refresh\" content=\"1;url={to}\"><p><a href=\"{to}\">Continue</a></p>"
        ),
    );
    let csp = format!(
        "default-src 'none'; img-src https://www.facebook.com https://px.ads.linkedin.com https://www.googleadservices.com https://www.google-analytics.com https://*.google-analytics.com; script-src 'nonce-{nonce}' https://www.googletagmanager.com https://analytics.tiktok.com; connect-src https://*.google-analytics.com https://*.analytics.google.com https://analytics.tiktok.com; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
    }
}
