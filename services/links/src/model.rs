//! Parsed, valid link fields: a handler never sees an unchecked URL or slug.

use std::collections::BTreeMap;

use kernel::Problem;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Longest destination, in bytes (after normalization).
pub const MAX_URL_BYTES: usize = 2048;
/// Length of generated slugs.
pub const GENERATED_SLUG_LEN: usize = 7;
/// First path segments that belong to the platform, never to a slug.
pub const RESERVED: &[&str] = &[
    "v1",
    "v2",
    "q",
    "m",
    "healthz",
    "readyz",
    "metrics",
    "assets",
    "app",
    "api",
    "static",
    "admin",
    "login",
    "logout",
    "signup",
    "register",
    "auth",
    "oauth",
    "favicon.ico",
    "robots.txt",
    "well-known",
    ".well-known",
    "reset-password",
    "verify-email",
    "accept-invitation",
    "dashboard",
    "docs",
    "openapi.json",
];
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A destination: http(s) only, no credentials, IDN hosts in punycode, ≤ 2048 bytes.
pub fn destination(field: &str, raw: &str) -> Result<String, Problem> {
    let bad = |m: &str| Problem::validation(field, m.to_string());
    let raw = raw.trim();
    if raw.len() > MAX_URL_BYTES * 2 {
        return Err(bad("is longer than 2048 bytes"));
    }
    let url = reqwest::Url::parse(raw).map_err(|_| bad("is not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("may not carry a user name or password"));
    }
    let normalized = url.to_string();
    if normalized.len() > MAX_URL_BYTES {
        return Err(bad("is longer than 2048 bytes"));
    }
    Ok(normalized)
}

/// A custom slug: 3–64 of `A–Z a–z 0–9 - _`, not a reserved first segment.
pub fn custom_slug(raw: &str) -> Result<String, Problem> {
    let slug = raw.trim();
    let n = slug.len();
    if !(3..=64).contains(&n) || !slug.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(Problem::validation("slug", "is 3 to 64 of the characters A-Z a-z 0-9 - _"));
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(slug)) {
        return Err(Problem::validation("slug", format!("{slug:?} is reserved by the platform")));
    }
    Ok(slug.to_string())
}

/// Whether a path segment could be a slug at all (the redirect's first check).
pub fn could_be_slug(s: &str) -> bool {
    (3..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A random 7-character base62 slug (62^7 ≈ 3.5 × 10^12).
pub fn generated_slug() -> String {
    let mut rng = rand::rng();
    (0..GENERATED_SLUG_LEN).map(|_| BASE62[rng.random_range(0..BASE62.len())] as char).collect()
}

/// Tags: at most 20, each 1–50 printable characters, duplicates dropped.
pub fn tags(raw: &[String]) -> Result<Vec<String>, Problem> {
    if raw.len() > 20 {
        return Err(Problem::validation("tags", "at most 20 tags"));
    }
    let mut out: Vec<String> = Vec::new();
    for t in raw {
        let t = t.trim();
        if t.is_empty() || t.chars().count() > 50 || t.chars().any(char::is_control) {
            return Err(Problem::validation("tags", "each tag is 1 to 50 printable characters"));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// UTM parameters appended to the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Utm {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl Utm {
    /// Checks lengths; `None` when every field is empty.
    pub fn checked(self) -> Result<Option<Self>, Problem> {
        let fields = [&self.source, &self.medium, &self.campaign, &self.term, &self.content];
        if fields.iter().any(|f| {
            f.as_ref().is_some_and(|v| v.is_empty() || v.len() > 200 || v.chars().any(char::is_control))
        }) {
            return Err(Problem::validation("utm", "each value is 1 to 200 printable characters"));
        }
        Ok(fields.iter().any(|f| f.is_some()).then_some(self))
    }

    /// `(utm_source, value)`, … in a fixed order.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("utm_source", &self.source),
            ("utm_medium", &self.medium),
            ("utm_campaign", &self.campaign),
            ("utm_term", &self.term),
            ("utm_content", &self.content),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

/// Country-targeted destinations: ISO 3166-1 alpha-2 code → URL.
pub fn geo(raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Problem> {
    if raw.len() > 250 {
        return Err(Problem::validation("geo", "at most 250 countries"));
    }
    let mut out = BTreeMap::new();
    for (code, url) in raw {
        let code = code.trim().to_ascii_uppercase();
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Problem::validation("geo", format!("{code:?} is not a two-letter country code")));
        }
        out.insert(code, destination("geo", url)?);
    }
    Ok(out)
}

/// What routing needs to answer a public path: everything about the redirect,
/// nothing about the link's management (title, tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub tenant_id: kernel::TenantId,
    pub link_id: uuid::Uuid,
    pub domain: String,
    pub slug: String,
    pub url: String,
    pub redirect_type: u16,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub expired_url: Option<String>,
    #[serde(default)]
    pub max_clicks: Option<i64>,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub utm: Option<Utm>,
    #[serde(default)]
    pub ios_url: Option<String>,
    #[serde(default)]
    pub android_url: Option<String>,
    #[serde(default)]
    pub geo: Option<BTreeMap<String, String>>,
    /// Pixels to fire (after consent) before forwarding.
    #[serde(default)]
    pub pixels: Vec<PixelTag>,
    #[serde(default)]
    pub deleted: bool,
    /// When the link last changed (Unix seconds); a newer record wins.
    pub version: i64,
}

/// A pixel as a link carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelTag {
    pub id: uuid::Uuid,
    /// meta, google_ads, ga4, linkedin, tiktok
    pub kind: String,
    pub pixel_id: String,
}

/// Checks a pixel id for its kind.
pub fn pixel_id(kind: &str, id: &str) -> Result<(), Problem> {
    let digits = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    let alnum = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    let ok = match kind {
        "meta" => digits(id, 10, 20),
        "google_ads" => id.strip_prefix("AW-").is_some_and(|d| digits(d, 6, 15)),
        "ga4" => id.strip_prefix("G-").is_some_and(|d| alnum(d, 4, 20)),
        "linkedin" => digits(id, 4, 12),
        "tiktok" => alnum(id, 10, 30),
        _ => return Err(Problem::validation("kind", "is meta, google_ads, ga4, linkedin or tiktok")),
    };
    if ok { Ok(()) } else { Err(Problem::validation("pixel_id", format!("is not a {kind} pixel id"))) }
}

/// What routing keeps of a QR code: where its scans go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QrRoute {
    pub tenant_id: kernel::TenantId,
    pub qr_id: uuid::Uuid,
    pub code: String,
    pub link_id: uuid::Uuid,
    #[serde(default)]
    pub deleted: bool,
    pub version: i64,
}

/// Whether `text` can be a scan code (base62, as generated); cheap to ask
/// before a lookup.
pub fn is_code(text: &str) -> bool {
    (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A random 8-character base62 scan code.
pub fn generated_code() -> String {
    let mut rng = rand::rng();
    (0..8).map(|_| BASE62[rng.random_range(0..BASE62.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_http_only_normalized_and_bounded() {
        assert_eq!(
            destination("url", " https://Example.com/a b").ok().as_deref(),
            Some("https://example.com/a%20b")
        );
        assert_eq!(
            destination("url", "https://bücher.de/").ok().as_deref(),
            Some("https://xn--bcher-kva.de/")
        );
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "ftp://x.org/",
            "/relative",
            "https://u:p@x.org/",
            "http://",
        ] {
            assert!(destination("url", bad).is_err(), "{bad}");
        }
        let long = format!("https://x.org/{}", "a".repeat(2040));
        assert!(destination("url", &long).is_err());
    }

    #[test]
    fn slugs_are_checked_and_generated_in_base62() {
        assert!(custom_slug("summer-sale_2026").is_ok());
        for bad in ["ab", "has space", "ünï", "v1", "Healthz", "q", &"a".repeat(65)] {
            assert!(custom_slug(bad).is_err(), "{bad}");
        }
        let s = generated_slug();
        assert_eq!(s.len(), 7);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(generated_slug(), generated_slug());
    }

    #[test]
    fn tags_utm_and_geo_are_checked() {
        assert_eq!(
            tags(&["a".into(), "a".into(), "b".into()]).ok(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(tags(&[String::new()]).is_err());
        assert!(Utm { source: Some(String::new()), ..Utm::default() }.checked().is_err());
        assert_eq!(Utm::default().checked().ok(), Some(None));
        let mut g = BTreeMap::new();
        g.insert("de".to_string(), "https://example.de".to_string());
        assert_eq!(geo(&g).ok().and_then(|g| g.get("DE").cloned()).as_deref(), Some("https://example.de/"));
        g.insert("Germany".to_string(), "https://example.de".to_string());
        assert!(geo(&g).is_err());
    }
}
