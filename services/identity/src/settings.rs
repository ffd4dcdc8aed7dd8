//! Identity's settings, parsed from the platform configuration at start-up; an
//! error names the variable at fault.

use std::time::Duration;

use kernel::config::{Config, ConfigError};
use kernel::ratelimit::Limit;

use kernel::password::{MIN_ITERATIONS, MIN_MEMORY_KIB};

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Failed logins per account.
    pub login_account: Limit,
    /// Failed logins per client IP.
    pub login_ip: Limit,
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// Session (refresh-token family) lifetime.
    pub session_max_age: Duration,
    /// Argon2id memory, KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id passes.
    pub argon2_iterations: u32,
    /// Password hashes at once.
    pub hashers: usize,
    /// Base URL of links in emails.
    pub app_url: String,
    /// Issuer of access tokens.
    pub issuer: String,
    /// Emails of platform admins.
    pub platform_admins: Vec<String>,
    /// Sender of emails.
    pub mail_from: String,
    /// Peers whose `X-Forwarded-For` is believed (a gateway in front).
    pub trusted_proxies: Vec<kernel::http::Net>,
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), message: message.into() }
}

fn number(key: &str, value: Option<&String>, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let n: u64 = v.trim().parse().map_err(|_| err(key, format!("{v:?} is not a number")))?;
    if n < min || n > max {
        return Err(err(key, format!("{n} is outside {min}..={max}")));
    }
    Ok(n)
}

impl Settings {
    /// Reads and checks the settings.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let i = &config.identity;
        let login_account = match &i.login_limit_account {
            Some(t) => Limit::parse("SIGNPOST_LOGIN_LIMIT_ACCOUNT", t)?,
            None => Limit { count: 5, window: Duration::from_secs(900) },
        };
        let login_ip = match &i.login_limit_ip {
            Some(t) => Limit::parse("SIGNPOST_LOGIN_LIMIT_IP", t)?,
            None => Limit { count: 50, window: Duration::from_secs(900) },
        };
        let max_access = u64::try_from(kernel::auth::MAX_ACCESS_TOKEN_SECONDS).unwrap_or(900);
        let access =
            number("SIGNPOST_ACCESS_TOKEN_TTL", i.access_token_ttl.as_ref(), max_access, 30, max_access)?;
        let session =
            number("SIGNPOST_SESSION_MAX_AGE", i.session_max_age.as_ref(), 30 * 86_400, 300, 400 * 86_400)?;
        let memory = number(
            "SIGNPOST_ARGON2_MEMORY_KIB",
            i.argon2_memory_kib.as_ref(),
            u64::from(MIN_MEMORY_KIB),
            u64::from(MIN_MEMORY_KIB),
            4 * 1024 * 1024,
        )?;
        let iterations = number(
            "SIGNPOST_ARGON2_ITERATIONS",
            i.argon2_iterations.as_ref(),
            u64::from(MIN_ITERATIONS),
            u64::from(MIN_ITERATIONS),
            64,
        )?;
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get) as u64;
        let hashers = number("SIGNPOST_PASSWORD_HASHERS", i.password_hashers.as_ref(), cpus, 1, 256)?;
        let app_url = i.app_url.clone().unwrap_or_else(|| config.public_url.clone());
        if !(app_url.starts_with("http://") || app_url.starts_with("https://")) {
            return Err(err("SIGNPOST_APP_URL", format!("{app_url:?} is not an http(s) URL")));
        }
        let platform_admins = i
            .platform_admins
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        Ok(Self {
            login_account,
            login_ip,
            access_ttl: Duration::from_secs(access),
            session_max_age: Duration::from_secs(session),
            argon2_memory_kib: u32::try_from(memory).unwrap_or(MIN_MEMORY_KIB),
            argon2_iterations: u32::try_from(iterations).unwrap_or(MIN_ITERATIONS),
            hashers: usize::try_from(hashers).unwrap_or(2),
            app_url: app_url.trim_end_matches('/').to_string(),
            issuer: config.edge.jwt_issuer.clone().unwrap_or_else(|| config.public_url.clone()),
            platform_admins,
            mail_from: i.mail_from.clone().unwrap_or_else(|| "Signpost <no-reply@localhost>".to_string()),
            trusted_proxies: kernel::http::Net::parse_list(
                "SIGNPOST_TRUSTED_PROXIES",
                config.edge.trusted_proxies.as_deref(),
            )?,
        })
    }
}
