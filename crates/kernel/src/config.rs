//! Configuration: defaults, then an optional `signpost.toml`, then environment
//! variables, then command-line flags; validated once at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// A configuration error: names the key and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The environment variable (or `signpost.toml` key) at fault.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self { key: key.to_string(), message: message.into() }
    }
}

/// Every setting with its environment variable, its `signpost.toml` key and what it does.
/// `--help` prints this table, so it is the one place a setting is documented.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    ("SIGNPOST_LISTEN", "listen", "address to listen on [default: 127.0.0.1:8080]"),
    ("SIGNPOST_DATA_DIR", "data_dir", "directory for SQLite files, local objects and keys [default: ./data]"),
    (
        "SIGNPOST_PUBLIC_URL",
        "public_url",
        "public base URL of short links and signed URLs [default: http://<listen>]",
    ),
    (
        "DATABASE_URL",
        "database_url",
        "sqlite://DIR (one file per service in DIR) or postgres://USER@HOST/DB (the owner connection that runs migrations) [default: sqlite://<data_dir>]",
    ),
    (
        "SIGNPOST_DATABASE_APP_URL",
        "database_app_url",
        "PostgreSQL: connection for the application role; unset = DATABASE_URL with SET ROLE to the app role",
    ),
    (
        "SIGNPOST_DATABASE_APP_ROLE",
        "database_app_role",
        "PostgreSQL: role the application runs as; owns nothing, no BYPASSRLS [default: signpost_app]",
    ),
    (
        "SIGNPOST_DATABASE_OWNER_ROLE",
        "database_owner_role",
        "PostgreSQL: role that owns schemas and tables [default: signpost_owner]",
    ),
    ("SIGNPOST_DATABASE_MAX_CONNECTIONS", "database_max_connections", "pool size per service [default: 8]"),
    (
        "REDIS_URL",
        "redis_url",
        "redis://HOST:PORT/DB for cache, rate limits and sessions; unset = in-process",
    ),
    ("SIGNPOST_REDIS_PREFIX", "redis_prefix", "prefix of every Redis key [default: signpost:]"),
    ("NATS_URL", "nats_url", "nats://HOST:PORT for the event bus (JetStream); unset = in-process"),
    (
        "SIGNPOST_NATS_STREAM",
        "nats_stream",
        "JetStream stream name; also the subject prefix [default: SIGNPOST]",
    ),
    (
        "STORAGE_URL",
        "storage_url",
        "file://DIR or s3://BUCKET?endpoint=URL&region=R [default: file://<data_dir>/objects]",
    ),
    ("AWS_ACCESS_KEY_ID", "s3_access_key_id", "S3 access key (with STORAGE_URL=s3://…)"),
    ("AWS_SECRET_ACCESS_KEY", "s3_secret_access_key", "S3 secret key (with STORAGE_URL=s3://…)"),
    (
        "SIGNPOST_STORAGE_SIGNING_KEY",
        "storage_signing_key",
        "HMAC key of local signed URLs (≥ 32 bytes); unset = generated once into the data dir",
    ),
    ("JWT_SECRET_KEY", "jwt_secret_key", "HS256 key for access tokens (≥ 32 bytes); unset = Ed25519 keys"),
    (
        "SIGNPOST_INTERNAL_TOKEN",
        "internal_token",
        "scale-out: shared secret (≥ 32 bytes) services show each other on /internal routes (routing asks links for a link it has not heard of yet); the gateway never forwards /internal [default: unset, internal routes off]",
    ),
    ("SIGNPOST_LOG", "log", "log filter, e.g. info or signpost=debug [default: info; RUST_LOG also works]"),
    ("SIGNPOST_LOG_FORMAT", "log_format", "json, pretty or auto (pretty on a terminal) [default: auto]"),
    (
        "SIGNPOST_SHUTDOWN_TIMEOUT",
        "shutdown_timeout",
        "seconds to finish in-flight work after SIGTERM [default: 8]",
    ),
    ("SIGNPOST_BODY_LIMIT", "body_limit", "largest request body in bytes [default: 1048576]"),
    (
        "SIGNPOST_BACKGROUND_NICE",
        "background_nice",
        "how far below request handling the prompt background lane runs (consumers that keep read models current, outbox relays, jobs): nice steps 0-19 (0 = same priority) or idle (Linux SCHED_IDLE: only on a core no other thread wants) [default: 10]",
    ),
    (
        "SIGNPOST_BULK_NICE",
        "bulk_nice",
        "how far below request handling the bulk background lane runs (journal drainers, click and scan consumers): idle (Linux SCHED_IDLE) or nice steps 0-19 [default: idle]",
    ),
    (
        "SIGNPOST_HTTP_THREADS",
        "http_threads",
        "threads that serve connections, each keeping its connections from accept to close (1-256) [default: one per core]",
    ),
    (
        "SIGNPOST_TLS_CERT",
        "tls_cert",
        "PEM certificate chain: serve HTTPS (TLS 1.2+) with SIGNPOST_TLS_KEY [default: plain HTTP]",
    ),
    ("SIGNPOST_TLS_KEY", "tls_key", "PEM private key of SIGNPOST_TLS_CERT"),
    (
        "SIGNPOST_HTTP_REDIRECT_LISTEN",
        "http_redirect_listen",
        "with TLS: a plain-HTTP address that redirects to HTTPS, e.g. 0.0.0.0:80 [default: none]",
    ),
    (
        "SIGNPOST_CORS_ORIGINS",
        "cors_origins",
        "gateway: comma-separated origins allowed by CORS, e.g. https://app.example.com [default: none]",
    ),
    (
        "SIGNPOST_TRUSTED_PROXIES",
        "trusted_proxies",
        "gateway: comma-separated IPs or CIDRs whose X-Forwarded-For is believed [default: none]",
    ),
    (
        "SIGNPOST_RATE_LIMIT_TENANT",
        "rate_limit_tenant",
        "gateway: requests per tenant on authenticated routes, N/SECONDSs [default: 100/60s]",
    ),
    (
        "SIGNPOST_RATE_LIMIT_ANONYMOUS",
        "rate_limit_anonymous",
        "gateway: requests per client IP on anonymous API routes [default: 60/60s]",
    ),
    (
        "SIGNPOST_RATE_LIMIT_PUBLIC",
        "rate_limit_public",
        "gateway: requests per client IP on public redirects and pages [default: unlimited]",
    ),
    (
        "SIGNPOST_RATE_LIMIT_ROUTES",
        "rate_limit_routes",
        "gateway: per-route overrides, PREFIX=N/SECONDSs,… [default: /v1/assets=50/60s]",
    ),
    (
        "SIGNPOST_RATE_LIMIT_ON_ERROR",
        "rate_limit_on_error",
        "gateway: when the limiter's store is down, open (allow, warn) or closed (503) [default: open]",
    ),
    (
        "SIGNPOST_BODY_LIMIT_ROUTES",
        "body_limit_routes",
        "gateway: per-route body limits in bytes, PREFIX=BYTES,… [default: /v1/auth=65536]",
    ),
    (
        "SIGNPOST_UPSTREAMS",
        "upstreams",
        "SERVICE=URL|URL;… instances per service, http:// or h2c://: the gateway's upstreams (proxy mode: the gateway runs alone, not under `up`), and where a service finds another (routing → links) [default: none, in-process]",
    ),
    (
        "SIGNPOST_ROUTES",
        "routes",
        "gateway (proxy mode): extra PREFIX=SERVICE,… routes over the built-in table",
    ),
    (
        "SIGNPOST_UPSTREAM_CONNECT_TIMEOUT",
        "upstream_connect_timeout",
        "gateway (proxy mode): milliseconds to connect to an instance [default: 2000]",
    ),
    (
        "SIGNPOST_UPSTREAM_TIMEOUT",
        "upstream_timeout",
        "gateway (proxy mode): milliseconds for an instance to answer [default: 30000]",
    ),
    (
        "SIGNPOST_ADMIN_LISTEN",
        "admin_listen",
        "address serving /readyz and /metrics apart from the public listener, e.g. 127.0.0.1:9090 [default: none]",
    ),
    (
        "GEOIP_DB",
        "geoip_db",
        "routing: a MaxMind-format database (.mmdb, e.g. GeoLite2-Country) for click countries and geo targets; none is bundled [default: none]",
    ),
    (
        "SIGNPOST_ANALYTICS_RETENTION_MONTHS",
        "analytics_retention_months",
        "analytics: months of raw click events kept (whole months are dropped; rollups stay) [default: 13]",
    ),
    (
        "SIGNPOST_ANALYTICS_MAX_RANGE_DAYS",
        "analytics_max_range_days",
        "analytics: the longest [from, to) a query or export may span [default: 400]",
    ),
    (
        "SIGNPOST_DNS_SERVER",
        "dns_server",
        "links: DNS server (IP:PORT) that custom-domain TXT records are looked up on [default: the system's resolvers]",
    ),
    ("SIGNPOST_JWT_ISSUER", "jwt_issuer", "issuer (iss) of access tokens [default: the public URL]"),
    (
        "SIGNPOST_JWKS_URL",
        "jwks_url",
        "gateway: where Ed25519 keys are fetched [default: <public URL>/v1/auth/.well-known/jwks.json]",
    ),
    (
        "SIGNPOST_LOGIN_LIMIT_ACCOUNT",
        "login_limit_account",
        "identity: failed logins per account, N/SECONDSs [default: 5/900s]",
    ),
    ("SIGNPOST_LOGIN_LIMIT_IP", "login_limit_ip", "identity: failed logins per client IP [default: 50/900s]"),
    (
        "SIGNPOST_ACCESS_TOKEN_TTL",
        "access_token_ttl",
        "identity: access-token lifetime in seconds, at most 900 [default: 900]",
    ),
    (
        "SIGNPOST_SESSION_MAX_AGE",
        "session_max_age",
        "identity: seconds a session and its refresh tokens live at most [default: 2592000]",
    ),
    (
        "SIGNPOST_ARGON2_MEMORY_KIB",
        "argon2_memory_kib",
        "identity: Argon2id memory in KiB, at least 19456 [default: 19456]",
    ),
    ("SIGNPOST_ARGON2_ITERATIONS", "argon2_iterations", "identity: Argon2id passes, at least 2 [default: 2]"),
    (
        "SIGNPOST_PASSWORD_HASHERS",
        "password_hashers",
        "identity: password hashes computed at once, on their own threads [default: number of CPUs]",
    ),
    (
        "SIGNPOST_APP_URL",
        "app_url",
        "identity: base URL of links in emails (reset, invitations); never the Host header [default: the public URL]",
    ),
    (
        "SMTP_URL",
        "smtp_url",
        "smtp://[USER:PASS@]HOST:PORT or smtps://…; unset = emails are written to <data_dir>/mail",
    ),
    ("SIGNPOST_MAIL_FROM", "mail_from", "sender of emails [default: Signpost <no-reply@localhost>]"),
    (
        "SIGNPOST_PLATFORM_ADMINS",
        "platform_admins",
        "identity: comma-separated emails of platform admins, who see every workspace [default: none]",
    ),
    (
        "SIGNPOST_GOOGLE_CLIENT_ID",
        "google_client_id",
        "identity: OAuth client id for Sign in with Google (OIDC) [default: none, Google sign-in off]",
    ),
    ("SIGNPOST_GOOGLE_CLIENT_SECRET", "google_client_secret", "identity: OAuth client secret for Google"),
    (
        "SIGNPOST_GOOGLE_ISSUER",
        "google_issuer",
        "identity: OIDC issuer whose discovery document is read [default: https://accounts.google.com]",
    ),
    (
        "SIGNPOST_GITHUB_CLIENT_ID",
        "github_client_id",
        "identity: OAuth client id for Sign in with GitHub [default: none, GitHub sign-in off]",
    ),
    ("SIGNPOST_GITHUB_CLIENT_SECRET", "github_client_secret", "identity: OAuth client secret for GitHub"),
    (
        "SIGNPOST_GITHUB_URL",
        "github_url",
        "identity: GitHub web base URL (authorize, token) [default: https://github.com]",
    ),
    (
        "SIGNPOST_GITHUB_API_URL",
        "github_api_url",
        "identity: GitHub API base URL [default: https://api.github.com]",
    ),
];

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    /// One SQLite file per service schema in `dir`.
    Sqlite {
        /// Directory of the files.
        dir: PathBuf,
    },
    /// PostgreSQL, one schema per service, row-level security.
    Postgres {
        /// Owner connection: runs migrations, creates roles and schemas.
        url: Secret<String>,
        /// Application connection; `None` = `url` with `SET ROLE app_role`.
        app_url: Option<Secret<String>>,
        /// The role queries run as.
        app_role: String,
        /// The role that owns every schema object.
        owner_role: String,
        /// Pool size per service.
        max_connections: u32,
    },
}

/// Object storage backend.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// A local directory; signed URLs are served by Signpost itself.
    Local {
        /// Root directory.
        dir: PathBuf,
    },
    /// An S3-compatible service.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Endpoint URL; `None` = AWS.
        endpoint: Option<String>,
        /// Region [default: us-east-1].
        region: String,
        /// Access key.
        access_key_id: Option<Secret<String>>,
        /// Secret key.
        secret_access_key: Option<Secret<String>>,
    },
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Redis connection.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://…`.
    pub url: Secret<String>,
    /// Prefix of every key.
    pub prefix: String,
}

/// NATS connection.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `nats://…`.
    pub url: Secret<String>,
    /// Stream name and subject prefix.
    pub stream: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Public base URL, without a trailing slash.
    pub public_url: String,
    /// Database.
    pub database: DatabaseConfig,
    /// Redis; `None` = in-process cache and limiter.
    pub redis: Option<RedisConfig>,
    /// NATS; `None` = in-process bus.
    pub nats: Option<NatsConfig>,
    /// Object storage.
    pub storage: StorageConfig,
    /// Key of local signed URLs; `None` = generated into the data dir.
    pub storage_signing_key: Option<Secret<String>>,
    /// HS256 key; `None` = Ed25519.
    pub jwt_secret_key: Option<Secret<String>>,
    /// Shared secret of service-to-service `/internal` routes; `None` = off.
    pub internal_token: Option<Secret<String>>,
    /// `SIGNPOST_UPSTREAMS`, checked: instances (`http://` or `h2c://` base
    /// URLs) per service.
    pub upstreams: Vec<(String, Vec<String>)>,
    /// Log filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Graceful-shutdown deadline.
    pub shutdown_timeout: Duration,
    /// Largest request body.
    pub body_limit: usize,
    /// The prompt background lane's priority below request handling.
    pub background_nice: crate::background::Priority,
    /// The bulk background lane's priority below request handling.
    pub bulk_nice: crate::background::Priority,
    /// Threads that serve connections (see `server::ConnThreads`).
    pub http_threads: usize,
    /// Certificate and key files when serving HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Plain-HTTP listener that redirects to HTTPS.
    pub http_redirect_listen: Option<SocketAddr>,
    /// Listener for the operator endpoints (metrics, readiness).
    pub admin_listen: Option<SocketAddr>,
    /// The gateway's settings, validated by the gateway when it starts.
    pub edge: EdgeSettings,
    /// Identity's and mail's settings, validated by identity when it starts.
    pub identity: IdentitySettings,
    /// The DNS server for custom-domain checks; `None` = the system's.
    pub dns_server: Option<SocketAddr>,
    /// A MaxMind-format country database.
    pub geoip_db: Option<PathBuf>,
    /// Months of raw analytics events kept.
    pub analytics_retention_months: u32,
    /// The longest analytics query range, in days.
    pub analytics_max_range_days: u32,
}

/// Settings of the security gateway, as given (the gateway parses and validates
/// them at start-up, naming the variable at fault).
#[derive(Debug, Clone, Default)]
pub struct EdgeSettings {
    /// `SIGNPOST_CORS_ORIGINS`.
    pub cors_origins: Option<String>,
    /// `SIGNPOST_TRUSTED_PROXIES`.
    pub trusted_proxies: Option<String>,
    /// `SIGNPOST_RATE_LIMIT_TENANT`.
    pub rate_limit_tenant: Option<String>,
    /// `SIGNPOST_RATE_LIMIT_ANONYMOUS`.
    pub rate_limit_anonymous: Option<String>,
    /// `SIGNPOST_RATE_LIMIT_PUBLIC`.
    pub rate_limit_public: Option<String>,
    /// `SIGNPOST_RATE_LIMIT_ROUTES`.
    pub rate_limit_routes: Option<String>,
    /// `SIGNPOST_RATE_LIMIT_ON_ERROR`.
    pub rate_limit_on_error: Option<String>,
    /// `SIGNPOST_JWT_ISSUER`.
    pub jwt_issuer: Option<String>,
    /// `SIGNPOST_JWKS_URL`.
    pub jwks_url: Option<String>,
    /// `SIGNPOST_BODY_LIMIT_ROUTES`.
    pub body_limit_routes: Option<String>,
    /// `SIGNPOST_UPSTREAMS`.
    pub upstreams: Option<String>,
    /// `SIGNPOST_ROUTES`.
    pub routes: Option<String>,
    /// `SIGNPOST_UPSTREAM_CONNECT_TIMEOUT`.
    pub upstream_connect_timeout: Option<String>,
    /// `SIGNPOST_UPSTREAM_TIMEOUT`.
    pub upstream_timeout: Option<String>,
}

/// Settings of the identity service and of outgoing mail, as given (identity
/// validates them at start-up, naming the variable at fault).
#[derive(Debug, Clone, Default)]
pub struct IdentitySettings {
    /// `SIGNPOST_LOGIN_LIMIT_ACCOUNT`.
    pub login_limit_account: Option<String>,
    /// `SIGNPOST_LOGIN_LIMIT_IP`.
    pub login_limit_ip: Option<String>,
    /// `SIGNPOST_ACCESS_TOKEN_TTL`.
    pub access_token_ttl: Option<String>,
    /// `SIGNPOST_SESSION_MAX_AGE`.
    pub session_max_age: Option<String>,
    /// `SIGNPOST_ARGON2_MEMORY_KIB`.
    pub argon2_memory_kib: Option<String>,
    /// `SIGNPOST_ARGON2_ITERATIONS`.
    pub argon2_iterations: Option<String>,
    /// `SIGNPOST_PASSWORD_HASHERS`.
    pub password_hashers: Option<String>,
    /// `SIGNPOST_APP_URL`.
    pub app_url: Option<String>,
    /// `SIGNPOST_MAIL_FROM`.
    pub mail_from: Option<String>,
    /// `SIGNPOST_PLATFORM_ADMINS`.
    pub platform_admins: Option<String>,
    /// `SMTP_URL` (may hold a password).
    pub smtp_url: Option<Secret<String>>,
    /// `SIGNPOST_GOOGLE_CLIENT_ID`.
    pub google_client_id: Option<String>,
    /// `SIGNPOST_GOOGLE_CLIENT_SECRET`.
    pub google_client_secret: Option<Secret<String>>,
    /// `SIGNPOST_GOOGLE_ISSUER`.
    pub google_issuer: Option<String>,
    /// `SIGNPOST_GITHUB_CLIENT_ID`.
    pub github_client_id: Option<String>,
    /// `SIGNPOST_GITHUB_CLIENT_SECRET`.
    pub github_client_secret: Option<Secret<String>>,
    /// `SIGNPOST_GITHUB_URL`.
    pub github_url: Option<String>,
    /// `SIGNPOST_GITHUB_API_URL`.
    pub github_api_url: Option<String>,
}

/// The unvalidated layer: every key optional, as read from a file or the environment.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    data_dir: Option<String>,
    public_url: Option<String>,
    database_url: Option<String>,
    database_app_url: Option<String>,
    database_app_role: Option<String>,
    database_owner_role: Option<String>,
    database_max_connections: Option<TomlScalar>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    nats_url: Option<String>,
    nats_stream: Option<String>,
    storage_url: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    storage_signing_key: Option<String>,
    jwt_secret_key: Option<String>,
    internal_token: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    shutdown_timeout: Option<TomlScalar>,
    body_limit: Option<TomlScalar>,
    background_nice: Option<TomlScalar>,
    bulk_nice: Option<TomlScalar>,
    http_threads: Option<TomlScalar>,
    admin_listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    http_redirect_listen: Option<String>,
    cors_origins: Option<String>,
    trusted_proxies: Option<String>,
    rate_limit_tenant: Option<String>,
    rate_limit_anonymous: Option<String>,
    rate_limit_public: Option<String>,
    rate_limit_routes: Option<String>,
    rate_limit_on_error: Option<String>,
    jwt_issuer: Option<String>,
    jwks_url: Option<String>,
    body_limit_routes: Option<String>,
    upstreams: Option<String>,
    routes: Option<String>,
    upstream_connect_timeout: Option<TomlScalar>,
    upstream_timeout: Option<TomlScalar>,
    dns_server: Option<String>,
    geoip_db: Option<String>,
    analytics_retention_months: Option<TomlScalar>,
    analytics_max_range_days: Option<TomlScalar>,
    login_limit_account: Option<String>,
    login_limit_ip: Option<String>,
    access_token_ttl: Option<String>,
    session_max_age: Option<String>,
    argon2_memory_kib: Option<String>,
    argon2_iterations: Option<String>,
    password_hashers: Option<String>,
    app_url: Option<String>,
    smtp_url: Option<String>,
    mail_from: Option<String>,
    platform_admins: Option<String>,
    google_client_id: Option<String>,
    google_client_secret: Option<String>,
    google_issuer: Option<String>,
    github_client_id: Option<String>,
    github_client_secret: Option<String>,
    github_url: Option<String>,
    github_api_url: Option<String>,
}

/// A number written either as a TOML integer or as a string (as environment variables are).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TomlScalar {
    Int(i64),
    Str(String),
}

impl TomlScalar {
    fn text(&self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Str(s) => s.clone(),
        }
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<String>,
}

/// What loading found worth a warning (logged once telemetry is up).
#[derive(Debug, Default, Clone)]
pub struct Warnings(pub Vec<String>);

impl Config {
    /// The configured instances of another service (empty when it runs in-process).
    pub fn peers(&self, service: &str) -> &[String] {
        self.upstreams.iter().find(|(s, _)| s == service).map_or(&[], |(_, urls)| urls.as_slice())
    }

    /// Loads from the process environment and an optional file.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<(Self, Warnings), ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &env, overrides)
    }

    /// Loads from a given environment map (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<(Self, Warnings), ConfigError> {
        let mut raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str::<Raw>(&text)
                    .map_err(|e| ConfigError::new(&path.display().to_string(), e.message().to_string()))?
            }
            None => Raw::default(),
        };
        let mut warnings = Warnings::default();
        raw.overlay_env(env, &mut warnings);
        if let Some(v) = &overrides.listen {
            raw.listen = Some(v.clone());
        }
        if let Some(v) = &overrides.data_dir {
            raw.data_dir = Some(v.clone());
        }
        raw.validate().map(|c| (c, warnings))
    }

    /// Whether every backend is in-process or local (the `signpost up` defaults).
    pub fn is_embedded(&self) -> bool {
        matches!(self.database, DatabaseConfig::Sqlite { .. })
            && self.redis.is_none()
            && self.nats.is_none()
            && matches!(self.storage, StorageConfig::Local { .. })
    }
}

impl Raw {
    fn overlay_env(&mut self, env: &BTreeMap<String, String>, warnings: &mut Warnings) {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        macro_rules! take {
            ($field:ident, $key:literal) => {
                if let Some(v) = get($key) {
                    self.$field = Some(v);
                }
            };
            ($field:ident, $key:literal, scalar) => {
                if let Some(v) = get($key) {
                    self.$field = Some(TomlScalar::Str(v));
                }
            };
        }
        take!(listen, "SIGNPOST_LISTEN");
        take!(data_dir, "SIGNPOST_DATA_DIR");
        take!(public_url, "SIGNPOST_PUBLIC_URL");
        take!(database_url, "DATABASE_URL");
        take!(database_app_url, "SIGNPOST_DATABASE_APP_URL");
        take!(database_app_role, "SIGNPOST_DATABASE_APP_ROLE");
        take!(database_owner_role, "SIGNPOST_DATABASE_OWNER_ROLE");
        take!(database_max_connections, "SIGNPOST_DATABASE_MAX_CONNECTIONS", scalar);
        take!(redis_url, "REDIS_URL");
        take!(redis_prefix, "SIGNPOST_REDIS_PREFIX");
        take!(nats_url, "NATS_URL");
        take!(nats_stream, "SIGNPOST_NATS_STREAM");
        take!(storage_url, "STORAGE_URL");
        take!(s3_access_key_id, "AWS_ACCESS_KEY_ID");
        take!(s3_secret_access_key, "AWS_SECRET_ACCESS_KEY");
        take!(storage_signing_key, "SIGNPOST_STORAGE_SIGNING_KEY");
        take!(jwt_secret_key, "JWT_SECRET_KEY");
        take!(internal_token, "SIGNPOST_INTERNAL_TOKEN");
        if let Some(v) = get("RUST_LOG") {
            self.log = Some(v);
        }
        take!(log, "SIGNPOST_LOG");
        take!(log_format, "SIGNPOST_LOG_FORMAT");
        take!(shutdown_timeout, "SIGNPOST_SHUTDOWN_TIMEOUT", scalar);
        take!(body_limit, "SIGNPOST_BODY_LIMIT", scalar);
        take!(background_nice, "SIGNPOST_BACKGROUND_NICE", scalar);
        take!(bulk_nice, "SIGNPOST_BULK_NICE", scalar);
        take!(http_threads, "SIGNPOST_HTTP_THREADS", scalar);
        take!(admin_listen, "SIGNPOST_ADMIN_LISTEN");
        take!(tls_cert, "SIGNPOST_TLS_CERT");
        take!(tls_key, "SIGNPOST_TLS_KEY");
        take!(http_redirect_listen, "SIGNPOST_HTTP_REDIRECT_LISTEN");
        take!(cors_origins, "SIGNPOST_CORS_ORIGINS");
        take!(trusted_proxies, "SIGNPOST_TRUSTED_PROXIES");
        take!(rate_limit_tenant, "SIGNPOST_RATE_LIMIT_TENANT");
        take!(rate_limit_anonymous, "SIGNPOST_RATE_LIMIT_ANONYMOUS");
        take!(rate_limit_public, "SIGNPOST_RATE_LIMIT_PUBLIC");
        take!(rate_limit_routes, "SIGNPOST_RATE_LIMIT_ROUTES");
        take!(rate_limit_on_error, "SIGNPOST_RATE_LIMIT_ON_ERROR");
        take!(jwt_issuer, "SIGNPOST_JWT_ISSUER");
        take!(jwks_url, "SIGNPOST_JWKS_URL");
        take!(body_limit_routes, "SIGNPOST_BODY_LIMIT_ROUTES");
        take!(upstreams, "SIGNPOST_UPSTREAMS");
        take!(routes, "SIGNPOST_ROUTES");
        take!(upstream_connect_timeout, "SIGNPOST_UPSTREAM_CONNECT_TIMEOUT", scalar);
        take!(upstream_timeout, "SIGNPOST_UPSTREAM_TIMEOUT", scalar);
        take!(dns_server, "SIGNPOST_DNS_SERVER");
        take!(geoip_db, "GEOIP_DB");
        take!(analytics_retention_months, "SIGNPOST_ANALYTICS_RETENTION_MONTHS", scalar);
        take!(analytics_max_range_days, "SIGNPOST_ANALYTICS_MAX_RANGE_DAYS", scalar);
        take!(login_limit_account, "SIGNPOST_LOGIN_LIMIT_ACCOUNT");
        take!(login_limit_ip, "SIGNPOST_LOGIN_LIMIT_IP");
        take!(access_token_ttl, "SIGNPOST_ACCESS_TOKEN_TTL");
        take!(session_max_age, "SIGNPOST_SESSION_MAX_AGE");
        take!(argon2_memory_kib, "SIGNPOST_ARGON2_MEMORY_KIB");
        take!(argon2_iterations, "SIGNPOST_ARGON2_ITERATIONS");
        take!(password_hashers, "SIGNPOST_PASSWORD_HASHERS");
        take!(app_url, "SIGNPOST_APP_URL");
        take!(smtp_url, "SMTP_URL");
        take!(mail_from, "SIGNPOST_MAIL_FROM");
        take!(platform_admins, "SIGNPOST_PLATFORM_ADMINS");
        take!(google_client_id, "SIGNPOST_GOOGLE_CLIENT_ID");
        take!(google_client_secret, "SIGNPOST_GOOGLE_CLIENT_SECRET");
        take!(google_issuer, "SIGNPOST_GOOGLE_ISSUER");
        take!(github_client_id, "SIGNPOST_GITHUB_CLIENT_ID");
        take!(github_client_secret, "SIGNPOST_GITHUB_CLIENT_SECRET");
        take!(github_url, "SIGNPOST_GITHUB_URL");
        take!(github_api_url, "SIGNPOST_GITHUB_API_URL");
        for key in env.keys().filter(|k| k.starts_with("SIGNPOST_")) {
            // SIGNPOST_TEST_* belong to the test kit, not to the server.
            if !key.starts_with("SIGNPOST_TEST_") && !SETTINGS.iter().any(|(k, _, _)| k == key) {
                warnings.0.push(format!("unknown environment variable {key} is ignored"));
            }
        }
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let listen_text = self.listen.unwrap_or_else(|| "127.0.0.1:8080".to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::new(
                "SIGNPOST_LISTEN",
                format!("{listen_text:?} is not an address like 127.0.0.1:8080"),
            )
        })?;
        let data_dir = PathBuf::from(self.data_dir.unwrap_or_else(|| "./data".to_string()));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("SIGNPOST_DATA_DIR", "must not be empty"));
        }
        let public_url = match self.public_url {
            Some(u) => {
                let u = u.trim_end_matches('/').to_string();
                if !(u.starts_with("http://") || u.starts_with("https://"))
                    || u.len() < 10
                    || u.contains(['?', '#', ' '])
                {
                    return Err(ConfigError::new(
                        "SIGNPOST_PUBLIC_URL",
                        format!("{u:?} is not an http(s) base URL (no query or fragment)"),
                    ));
                }
                u
            }
            None => format!("http://{listen}"),
        };
        let max_connections = parse_num(
            "SIGNPOST_DATABASE_MAX_CONNECTIONS",
            self.database_max_connections.as_ref(),
            8u32,
            1..=1000,
        )?;
        let database = match self.database_url {
            None => DatabaseConfig::Sqlite { dir: data_dir.clone() },
            Some(url) => match scheme(&url) {
                Some("sqlite") => {
                    let path = url.strip_prefix("sqlite:").unwrap_or(&url);
                    let path = path.strip_prefix("//").unwrap_or(path);
                    let path = path.split('?').next().unwrap_or_default();
                    if path.is_empty() {
                        return Err(ConfigError::new(
                            "DATABASE_URL",
                            "sqlite:// needs a directory, e.g. sqlite://./data",
                        ));
                    }
                    DatabaseConfig::Sqlite { dir: PathBuf::from(path) }
                }
                Some("postgres" | "postgresql") => DatabaseConfig::Postgres {
                    url: Secret::new(url),
                    app_url: self.database_app_url.map(Secret::new),
                    app_role: ident("SIGNPOST_DATABASE_APP_ROLE", self.database_app_role, "signpost_app")?,
                    owner_role: ident(
                        "SIGNPOST_DATABASE_OWNER_ROLE",
                        self.database_owner_role,
                        "signpost_owner",
                    )?,
                    max_connections,
                },
                Some(other) => {
                    return Err(ConfigError::new(
                        "DATABASE_URL",
                        format!("unsupported scheme {other:?} (expected sqlite or postgres)"),
                    ));
                }
                None => {
                    return Err(ConfigError::new(
                        "DATABASE_URL",
                        "not a URL (expected sqlite://DIR or postgres://USER@HOST/DB)",
                    ));
                }
            },
        };
        let redis = match self.redis_url {
            None => None,
            Some(url) => match scheme(&url) {
                Some("redis" | "rediss") => Some(RedisConfig {
                    url: Secret::new(url),
                    prefix: self.redis_prefix.unwrap_or_else(|| "signpost:".to_string()),
                }),
                other => {
                    return Err(ConfigError::new(
                        "REDIS_URL",
                        format!("unsupported scheme {:?} (expected redis)", other.unwrap_or(&url)),
                    ));
                }
            },
        };
        let nats = match self.nats_url {
            None => None,
            Some(url) => match scheme(&url) {
                Some("nats") => {
                    let stream = self.nats_stream.unwrap_or_else(|| "SIGNPOST".to_string());
                    if stream.is_empty()
                        || !stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(ConfigError::new(
                            "SIGNPOST_NATS_STREAM",
                            "use letters, digits, '_' and '-' only",
                        ));
                    }
                    Some(NatsConfig { url: Secret::new(url), stream })
                }
                other => {
                    return Err(ConfigError::new(
                        "NATS_URL",
                        format!("unsupported scheme {:?} (expected nats)", other.unwrap_or(&url)),
                    ));
                }
            },
        };
        let storage = match self.storage_url {
            None => StorageConfig::Local { dir: data_dir.join("objects") },
            Some(url) => parse_storage(&url, self.s3_access_key_id, self.s3_secret_access_key)?,
        };
        let storage_signing_key = secret_key("SIGNPOST_STORAGE_SIGNING_KEY", self.storage_signing_key)?;
        let jwt_secret_key = secret_key("JWT_SECRET_KEY", self.jwt_secret_key)?;
        let internal_token = secret_key("SIGNPOST_INTERNAL_TOKEN", self.internal_token)?;
        let upstreams = parse_upstreams(self.upstreams.as_deref())?;
        let dns_server = match &self.dns_server {
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new("SIGNPOST_DNS_SERVER", format!("{v:?} is not an address like 127.0.0.1:53"))
            })?),
            None => None,
        };
        let log_format = match self.log_format.as_deref().unwrap_or("auto") {
            "auto" => LogFormat::Auto,
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::new(
                    "SIGNPOST_LOG_FORMAT",
                    format!("{other:?} is not one of json, pretty, auto"),
                ));
            }
        };
        let log = self.log.unwrap_or_else(|| "info".to_string());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(ConfigError::new("SIGNPOST_LOG", format!("{log:?} is not a log filter")));
        }
        let shutdown_timeout = Duration::from_secs(parse_num(
            "SIGNPOST_SHUTDOWN_TIMEOUT",
            self.shutdown_timeout.as_ref(),
            8u64,
            0..=3600,
        )?);
        let analytics_retention_months = parse_num(
            "SIGNPOST_ANALYTICS_RETENTION_MONTHS",
            self.analytics_retention_months.as_ref(),
            13,
            1..=1200,
        )?;
        let analytics_max_range_days = parse_num(
            "SIGNPOST_ANALYTICS_MAX_RANGE_DAYS",
            self.analytics_max_range_days.as_ref(),
            400,
            1..=36600,
        )?;
        let body_limit = parse_num(
            "SIGNPOST_BODY_LIMIT",
            self.body_limit.as_ref(),
            1024 * 1024usize,
            1..=1024 * 1024 * 1024,
        )?;
        use crate::background::Priority;
        let background_nice =
            priority("SIGNPOST_BACKGROUND_NICE", self.background_nice.as_ref(), Priority::Nice(10))?;
        let bulk_nice = priority("SIGNPOST_BULK_NICE", self.bulk_nice.as_ref(), Priority::Idle)?;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let http_threads = parse_num("SIGNPOST_HTTP_THREADS", self.http_threads.as_ref(), cores, 1..=256)?;
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                for (key, path) in [("SIGNPOST_TLS_CERT", &c), ("SIGNPOST_TLS_KEY", &k)] {
                    if std::fs::metadata(path).map(|m| !m.is_file()).unwrap_or(true) {
                        return Err(ConfigError::new(key, format!("{path:?} is not a readable file")));
                    }
                }
                Some((PathBuf::from(c), PathBuf::from(k)))
            }
            (Some(_), None) => {
                return Err(ConfigError::new("SIGNPOST_TLS_KEY", "is required with SIGNPOST_TLS_CERT"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("SIGNPOST_TLS_CERT", "is required with SIGNPOST_TLS_KEY"));
            }
        };
        let http_redirect_listen = match self.http_redirect_listen {
            None => None,
            Some(_) if tls.is_none() => {
                return Err(ConfigError::new(
                    "SIGNPOST_HTTP_REDIRECT_LISTEN",
                    "needs SIGNPOST_TLS_CERT and SIGNPOST_TLS_KEY",
                ));
            }
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "SIGNPOST_HTTP_REDIRECT_LISTEN",
                    format!("{a:?} is not an address like 0.0.0.0:80"),
                )
            })?),
        };
        let admin_listen = match self.admin_listen {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "SIGNPOST_ADMIN_LISTEN",
                    format!("{a:?} is not an address like 127.0.0.1:9090"),
                )
            })?),
        };
        Ok(Config {
            tls,
            http_redirect_listen,
            admin_listen,
            listen,
            data_dir,
            public_url,
            database,
            redis,
            nats,
            storage,
            storage_signing_key,
            jwt_secret_key,
            internal_token,
            upstreams,
            log,
            log_format,
            shutdown_timeout,
            body_limit,
            background_nice,
            bulk_nice,
            http_threads,
            edge: EdgeSettings {
                cors_origins: self.cors_origins,
                trusted_proxies: self.trusted_proxies,
                rate_limit_tenant: self.rate_limit_tenant,
                rate_limit_anonymous: self.rate_limit_anonymous,
                rate_limit_public: self.rate_limit_public,
                rate_limit_routes: self.rate_limit_routes,
                rate_limit_on_error: self.rate_limit_on_error,
                jwt_issuer: self.jwt_issuer,
                jwks_url: self.jwks_url,
                body_limit_routes: self.body_limit_routes,
                upstreams: self.upstreams,
                routes: self.routes,
                upstream_connect_timeout: self.upstream_connect_timeout.map(|s| s.text()),
                upstream_timeout: self.upstream_timeout.map(|s| s.text()),
            },
            dns_server,
            geoip_db: self.geoip_db.map(PathBuf::from),
            analytics_retention_months,
            analytics_max_range_days,
            identity: IdentitySettings {
                login_limit_account: self.login_limit_account,
                login_limit_ip: self.login_limit_ip,
                access_token_ttl: self.access_token_ttl,
                session_max_age: self.session_max_age,
                argon2_memory_kib: self.argon2_memory_kib,
                argon2_iterations: self.argon2_iterations,
                password_hashers: self.password_hashers,
                app_url: self.app_url,
                mail_from: self.mail_from,
                platform_admins: self.platform_admins,
                smtp_url: self.smtp_url.map(Secret::new),
                google_client_id: self.google_client_id,
                google_client_secret: self.google_client_secret.map(Secret::new),
                google_issuer: self.google_issuer,
                github_client_id: self.github_client_id,
                github_client_secret: self.github_client_secret.map(Secret::new),
                github_url: self.github_url,
                github_api_url: self.github_api_url,
            },
        })
    }
}

fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let ok = !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.');
    ok.then_some(scheme)
}

fn parse_num<T>(
    key: &str,
    value: Option<&TomlScalar>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(value) = value else { return Ok(default) };
    let text = value.text();
    let n: T = text.trim().parse().map_err(|_| ConfigError::new(key, format!("{text:?} is not a number")))?;
    if !range.contains(&n) {
        return Err(ConfigError::new(
            key,
            format!("{n} is out of range ({}..={})", range.start(), range.end()),
        ));
    }
    Ok(n)
}

/// `idle` or nice steps 0-19.
fn priority(
    key: &str,
    value: Option<&TomlScalar>,
    default: crate::background::Priority,
) -> Result<crate::background::Priority, ConfigError> {
    use crate::background::Priority;
    match value {
        None => Ok(default),
        Some(v) if v.text().trim().eq_ignore_ascii_case("idle") => Ok(Priority::Idle),
        v => parse_num(key, v, 0i32, 0..=19).map(Priority::Nice),
    }
}

fn ident(key: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let v = value.unwrap_or_else(|| default.to_string());
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(v) } else { Err(ConfigError::new(key, format!("{v:?} is not a lower-case SQL identifier"))) }
}

/// `SIGNPOST_UPSTREAMS`: `SERVICE=URL|URL;…`, each URL `http://HOST:PORT` or
/// `h2c://HOST:PORT` (no path, no trailing slash).
fn parse_upstreams(text: Option<&str>) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut upstreams = Vec::new();
    for entry in text.unwrap_or("").split(';').map(str::trim).filter(|x| !x.is_empty()) {
        let bad = |m: &str| ConfigError::new("SIGNPOST_UPSTREAMS", format!("{entry:?}: {m}"));
        let (service, urls) = entry.split_once('=').ok_or_else(|| bad("expected SERVICE=URL|URL"))?;
        let urls: Vec<String> = urls
            .split('|')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(bad("no instance URL"));
        }
        for u in &urls {
            let ok = ["http://", "h2c://"].iter().any(|p| u.starts_with(p))
                && u.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
            if !ok {
                return Err(bad(&format!("{u:?} is not http://HOST:PORT or h2c://HOST:PORT")));
            }
        }
        upstreams.push((service.trim().to_string(), urls));
    }
    Ok(upstreams)
}

fn secret_key(key: &str, value: Option<String>) -> Result<Option<Secret<String>>, ConfigError> {
    match value {
        Some(v) if v.len() < 32 => Err(ConfigError::new(key, "must be at least 32 bytes")),
        other => Ok(other.map(Secret::new)),
    }
}

fn parse_storage(
    url: &str,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
) -> Result<StorageConfig, ConfigError> {
    const KEY: &str = "STORAGE_URL";
    match scheme(url) {
        Some("file") => {
            let path = url.strip_prefix("file:").unwrap_or(url);
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(ConfigError::new(
                    KEY,
                    "file:// needs a directory, e.g. file:///var/lib/signpost/objects",
                ));
            }
            Ok(StorageConfig::Local { dir: PathBuf::from(path) })
        }
        Some("s3") => {
            let Some(rest) = url.strip_prefix("s3://") else {
                return Err(ConfigError::new(KEY, "expected s3://BUCKET?endpoint=URL&region=REGION"));
            };
            let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
            let bucket = bucket.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(ConfigError::new(KEY, "expected s3://BUCKET?endpoint=URL&region=REGION"));
            }
            let mut endpoint = None;
            let mut region = "us-east-1".to_string();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                match k {
                    "endpoint" => endpoint = Some(percent_decode(v)),
                    "region" => region = percent_decode(v),
                    other => {
                        return Err(ConfigError::new(
                            KEY,
                            format!("unknown parameter {other:?} (expected endpoint or region)"),
                        ));
                    }
                }
            }
            if let Some(e) =
                endpoint.as_ref().filter(|e| !(e.starts_with("http://") || e.starts_with("https://")))
            {
                return Err(ConfigError::new(KEY, format!("endpoint {e:?} is not an http(s) URL")));
            }
            Ok(StorageConfig::S3 {
                bucket: bucket.to_string(),
                endpoint,
                region,
                access_key_id: access_key_id.map(Secret::new),
                secret_access_key: secret_access_key.map(Secret::new),
            })
        }
        Some(other) => {
            Err(ConfigError::new(KEY, format!("unsupported scheme {other:?} (expected file or s3)")))
        }
        None => Err(ConfigError::new(KEY, "not a URL (expected file://DIR or s3://BUCKET)")),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load_from(None, &env, &Overrides::default()).map(|(c, _)| c)
    }

    #[test]
    fn defaults_are_embedded() {
        let c = load(&[]).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        assert!(c.is_embedded());
    }

    #[test]
    fn unsupported_database_scheme_names_key_and_expectation() {
        let e = load(&[("DATABASE_URL", "foo://x")]).err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some(r#"DATABASE_URL: unsupported scheme "foo" (expected sqlite or postgres)"#)
        );
    }

    #[test]
    fn the_prompt_lane_runs_at_nice_10_and_the_bulk_lane_idle_unless_configured() {
        use crate::background::Priority;
        let defaults = load(&[]).map(|c| (c.background_nice, c.bulk_nice)).ok();
        assert_eq!(defaults, Some((Priority::Nice(10), Priority::Idle)));
        for key in ["SIGNPOST_BACKGROUND_NICE", "SIGNPOST_BULK_NICE"] {
            let at = |v: &str| {
                load(&[(key, v)]).map(|c| if key.contains("BULK") { c.bulk_nice } else { c.background_nice })
            };
            assert_eq!(at("IDLE").ok(), Some(Priority::Idle));
            assert_eq!(at("10").ok(), Some(Priority::Nice(10)));
            assert_eq!(at("0").ok(), Some(Priority::Nice(0)));
            assert_eq!(at("20").err().map(|e| e.key).as_deref(), Some(key));
            assert_eq!(at("low").err().map(|e| e.key).as_deref(), Some(key));
        }
    }

    #[test]
    fn short_jwt_secret_is_refused() {
        let e = load(&[("JWT_SECRET_KEY", "short")]).err();
        assert_eq!(e.map(|e| e.key).as_deref(), Some("JWT_SECRET_KEY"));
    }

    #[test]
    fn absolute_paths_stay_absolute_and_odd_urls_are_errors() {
        let c =
            load(&[("DATABASE_URL", "sqlite:///var/lib/signpost")]).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(
            matches!(c.database, DatabaseConfig::Sqlite { ref dir } if dir == Path::new("/var/lib/signpost"))
        );
        assert_eq!(load(&[("STORAGE_URL", "s3:/é")]).err().map(|e| e.key).as_deref(), Some("STORAGE_URL"));
        assert_eq!(
            load(&[("STORAGE_URL", "s3:bucket")]).err().map(|e| e.key).as_deref(),
            Some("STORAGE_URL")
        );
        let e = load(&[("SIGNPOST_PUBLIC_URL", "https://sp.example/?x=1")]).err();
        assert_eq!(e.map(|e| e.key).as_deref(), Some("SIGNPOST_PUBLIC_URL"));
    }

    #[test]
    fn s3_url_is_parsed() {
        let c =
            load(&[("STORAGE_URL", "s3://media?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1")])
                .unwrap_or_else(|e| unreachable!("{e}"));
        match c.storage {
            StorageConfig::S3 { bucket, endpoint, region, .. } => {
                assert_eq!(bucket, "media");
                assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:9000"));
                assert_eq!(region, "eu-west-1");
            }
            StorageConfig::Local { .. } => unreachable!("expected s3"),
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = load(&[
            ("DATABASE_URL", "postgres://owner:topsecretpw@db/x"),
            ("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef-secret"),
        ])
        .unwrap_or_else(|e| unreachable!("{e}"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("topsecretpw"));
        assert!(!dbg.contains("0123456789abcdef"));
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("sp-cfg-{}", uuid::Uuid::new_v4()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("signpost.toml");
        let _ = std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nbody_limit = 2048\nredis_url = \"redis://a\"\n",
        );
        let env = [("REDIS_URL".to_string(), "redis://b".to_string())].into_iter().collect();
        let flags = Overrides { listen: Some("127.0.0.1:9001".into()), data_dir: None };
        let (c, _) = Config::load_from(Some(&file), &env, &flags).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.body_limit, 2048);
        assert_eq!(c.redis.map(|r| r.url.expose().clone()).as_deref(), Some("redis://b"));
        let _ = std::fs::write(&file, "lisen = \"x\"\n");
        let e = Config::load_from(Some(&file), &BTreeMap::new(), &Overrides::default()).err();
        assert!(e.is_some_and(|e| e.message.contains("lisen")));
    }

    #[test]
    fn every_variable_read_is_documented_in_the_settings_table() {
        let source = include_str!("config.rs");
        for line in source.lines().map(str::trim).filter(|l| l.starts_with("take!(")) {
            let key = line.split('"').nth(1).unwrap_or_default();
            assert!(
                SETTINGS.iter().any(|(k, _, _)| *k == key),
                "{key} is read but missing from SETTINGS (--help)"
            );
        }
    }

    #[test]
    fn unknown_signpost_variables_are_warned_about() {
        let env = [("SIGNPOST_LISTN".to_string(), "x".to_string())].into_iter().collect();
        let (_, w) =
            Config::load_from(None, &env, &Overrides::default()).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(w.0.iter().any(|m| m.contains("SIGNPOST_LISTN")));
    }
}
