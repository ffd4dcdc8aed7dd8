//! The gateway's settings, parsed from the platform configuration at start-up;
//! an error names the variable at fault.

use std::time::Duration;

use axum::http::HeaderValue;
use kernel::config::{Config, ConfigError};
pub use kernel::http::Net;
pub use kernel::ratelimit::Limit;

/// What the gateway does when the limiter's store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Let the request through, warn and count it.
    Open,
    /// Refuse with 503.
    Closed,
}

/// The parsed settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Origins allowed by CORS.
    pub cors_origins: Vec<HeaderValue>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Net>,
    /// Per tenant, authenticated routes.
    pub tenant: Limit,
    /// Per client IP, anonymous API routes.
    pub anonymous: Limit,
    /// Per client IP, public redirects and pages; `None` = unlimited.
    pub public: Option<Limit>,
    /// Per-route overrides, longest prefix first.
    pub routes: Vec<(String, Limit)>,
    /// Behaviour when the limiter fails.
    pub on_error: OnError,
    /// Expected `iss` of access tokens.
    pub issuer: String,
    /// Where Ed25519 keys come from.
    pub jwks_url: String,
    /// Body limits per path prefix (tighter than the global one), longest first.
    pub body_limits: Vec<(String, u64)>,
    /// Proxy mode: instances per service; empty = in-process mode.
    pub upstreams: Vec<(String, Vec<String>)>,
    /// Proxy mode: prefix → service, longest prefix first.
    pub routes_table: Vec<(String, String)>,
    /// Proxy mode: connect timeout.
    pub connect_timeout: Duration,
    /// Proxy mode: time for one try to get response headers.
    pub upstream_timeout: Duration,
}

/// Where each service's paths start (proxy mode); `SIGNPOST_ROUTES` adds to it.
pub const DEFAULT_ROUTES: &[(&str, &str)] = &[
    ("/v1/auth", "identity"),
    ("/v1/users", "identity"),
    ("/v1/workspaces", "identity"),
    ("/v1/links", "links"),
    ("/v1/qr", "links"),
    ("/v1/domains", "links"),
    ("/v1/pixels", "links"),
    ("/v1/analytics", "analytics"),
    ("/v1/microsites", "microsites"),
    ("/m/", "microsites"),
    ("/v1/inventory", "inventory"),
    ("/v1/orders", "orders"),
    ("/v1/payments", "payments"),
    ("/v1/assets", "assets"),
    ("/v1/webhooks", "integrations"),
    ("/v1/notifications", "notifications"),
    ("/v1/audit", "audit"),
    ("/v1/billing", "billing"),
    ("/q/", "routing"),
    ("/assets/qr/", "links"),
];

fn limit(key: &str, text: &str) -> Result<Limit, ConfigError> {
    Limit::parse(key, text)
}

impl Settings {
    /// Parses the gateway part of the configuration.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let e = &config.edge;
        let err = |key: &str, message: String| ConfigError { key: key.to_string(), message };
        let mut cors_origins = Vec::new();
        for o in e.cors_origins.as_deref().unwrap_or("").split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let ok = (o.starts_with("https://") || o.starts_with("http://")) && !o.ends_with('/');
            let value = HeaderValue::from_str(o).ok().filter(|_| ok);
            cors_origins.push(value.ok_or_else(|| {
                err("SIGNPOST_CORS_ORIGINS", format!("{o:?} is not an origin like https://app.example.com"))
            })?);
        }
        let trusted_proxies = Net::parse_list("SIGNPOST_TRUSTED_PROXIES", e.trusted_proxies.as_deref())?;
        let tenant =
            limit("SIGNPOST_RATE_LIMIT_TENANT", e.rate_limit_tenant.as_deref().unwrap_or("100/60s"))?;
        let anonymous =
            limit("SIGNPOST_RATE_LIMIT_ANONYMOUS", e.rate_limit_anonymous.as_deref().unwrap_or("60/60s"))?;
        let public = match e.rate_limit_public.as_deref() {
            None | Some("") | Some("off") => None,
            Some(t) => Some(limit("SIGNPOST_RATE_LIMIT_PUBLIC", t)?),
        };
        let mut routes = Vec::new();
        for pair in e
            .rate_limit_routes
            .as_deref()
            .unwrap_or("/v1/assets=50/60s")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (prefix, l) = pair.split_once('=').ok_or_else(|| {
                err("SIGNPOST_RATE_LIMIT_ROUTES", format!("{pair:?} is not PREFIX=N/SECONDSs"))
            })?;
            if !prefix.starts_with('/') {
                return Err(err("SIGNPOST_RATE_LIMIT_ROUTES", format!("{prefix:?} must start with /")));
            }
            routes.push((prefix.to_string(), limit("SIGNPOST_RATE_LIMIT_ROUTES", l)?));
        }
        routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let on_error = match e.rate_limit_on_error.as_deref().unwrap_or("open") {
            "open" => OnError::Open,
            "closed" => OnError::Closed,
            other => {
                return Err(err("SIGNPOST_RATE_LIMIT_ON_ERROR", format!("{other:?} is not open or closed")));
            }
        };
        let issuer = e.jwt_issuer.clone().unwrap_or_else(|| config.public_url.clone());
        let jwks_url = e
            .jwks_url
            .clone()
            .unwrap_or_else(|| format!("{}/v1/auth/.well-known/jwks.json", config.public_url));
        if !(jwks_url.starts_with("http://") || jwks_url.starts_with("https://")) {
            return Err(err("SIGNPOST_JWKS_URL", format!("{jwks_url:?} is not an http(s) URL")));
        }
        let mut body_limits = Vec::new();
        let spec = e.body_limit_routes.as_deref().unwrap_or("/v1/auth=65536");
        for pair in spec.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let parsed = pair
                .split_once('=')
                .filter(|(p, _)| p.starts_with('/'))
                .and_then(|(p, n)| Some((p.to_string(), n.trim().parse::<u64>().ok().filter(|n| *n > 0)?)));
            body_limits.push(
                parsed.ok_or_else(|| {
                    err("SIGNPOST_BODY_LIMIT_ROUTES", format!("{pair:?} is not PREFIX=BYTES"))
                })?,
            );
        }
        body_limits.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let upstreams = config.upstreams.clone();
        let mut routes_table: Vec<(String, String)> =
            DEFAULT_ROUTES.iter().map(|(p, s)| ((*p).to_string(), (*s).to_string())).collect();
        for pair in e.routes.as_deref().unwrap_or("").split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (prefix, service) = pair
                .split_once('=')
                .filter(|(p, s)| p.starts_with('/') && !s.is_empty())
                .ok_or_else(|| err("SIGNPOST_ROUTES", format!("{pair:?} is not PREFIX=SERVICE")))?;
            routes_table.retain(|(p, _)| p != prefix);
            routes_table.push((prefix.to_string(), service.to_string()));
        }
        routes_table.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let millis = |key: &str, v: Option<&str>, default: u64| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(Duration::from_millis(default)),
                Some(t) => t
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=600_000).contains(n))
                    .map(Duration::from_millis)
                    .ok_or_else(|| err(key, format!("{t:?} is not a number of milliseconds (1..=600000)"))),
            }
        };
        let connect_timeout =
            millis("SIGNPOST_UPSTREAM_CONNECT_TIMEOUT", e.upstream_connect_timeout.as_deref(), 2_000)?;
        let upstream_timeout = millis("SIGNPOST_UPSTREAM_TIMEOUT", e.upstream_timeout.as_deref(), 30_000)?;
        Ok(Self {
            cors_origins,
            trusted_proxies,
            tenant,
            anonymous,
            public,
            routes,
            on_error,
            issuer,
            jwks_url,
            body_limits,
            upstreams,
            routes_table,
            connect_timeout,
            upstream_timeout,
        })
    }

    /// The body limit of a path when it is tighter than the global one.
    pub fn body_limit(&self, path: &str) -> Option<u64> {
        self.body_limits.iter().find(|(p, _)| path.starts_with(p.as_str())).map(|(_, n)| *n)
    }

    /// The override for a path, if any.
    pub fn route_limit(&self, path: &str) -> Option<(&str, Limit)> {
        self.routes.iter().find(|(p, _)| path.starts_with(p.as_str())).map(|(p, l)| (p.as_str(), *l))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn cidrs_match_their_members_only() {
        let n = Net::parse("10.1.0.0/16").unwrap_or_else(|| unreachable!());
        assert!(n.contains("10.1.200.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!n.contains("10.2.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(Net::parse("1.2.3.4/33").is_none());
        assert!(
            Net::parse("::1")
                .is_some_and(|n| n.contains("::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))))
        );
    }

    #[test]
    fn limits_parse_and_bad_ones_name_the_key() {
        assert_eq!(limit("K", "100/60s").ok(), Some(Limit { count: 100, window: Duration::from_secs(60) }));
        assert_eq!(limit("K", "5/900").ok(), Some(Limit { count: 5, window: Duration::from_secs(900) }));
        assert_eq!(limit("K", "lots").err().map(|e| e.key), Some("K".to_string()));
        assert!(limit("K", "0/60s").is_err());
    }
}
