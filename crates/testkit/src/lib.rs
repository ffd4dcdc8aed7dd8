//! Starts the Signpost platform in-process for tests: on port 0 with a fresh
//! data directory, and — when `SIGNPOST_TEST_DATABASE_URL`, `SIGNPOST_TEST_REDIS_URL`,
//! `SIGNPOST_TEST_NATS_URL`, `SIGNPOST_TEST_S3_URL` are set — on a fresh
//! PostgreSQL database named by UUID, a unique Redis key prefix, a unique NATS
//! stream, and the S3 bucket given. `TestApp::stop` tears it all down.

// A test kit reports a broken environment by failing the test, loudly.
#![allow(clippy::panic)]

pub mod fixture;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kernel::config::{Config, Overrides};
use kernel::db::Db;
use kernel::platform::{CancellationToken, DbBackend};
use kernel::{Kernel, Platform, Service};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Which engines the tests run on, read from `SIGNPOST_TEST_*`.
#[derive(Debug, Clone, Default)]
pub struct Engines {
    /// Admin PostgreSQL URL (can create databases).
    pub database_url: Option<String>,
    /// Redis URL.
    pub redis_url: Option<String>,
    /// NATS URL.
    pub nats_url: Option<String>,
    /// `s3://bucket?endpoint=…`.
    pub s3_url: Option<String>,
}

impl Engines {
    /// From the environment.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            database_url: get("SIGNPOST_TEST_DATABASE_URL"),
            redis_url: get("SIGNPOST_TEST_REDIS_URL"),
            nats_url: get("SIGNPOST_TEST_NATS_URL"),
            s3_url: get("SIGNPOST_TEST_S3_URL"),
        }
    }

    /// Whether the tests run on PostgreSQL.
    pub fn postgres(&self) -> bool {
        self.database_url.is_some()
    }
}

/// Replaces the database name of a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[after_scheme..].find('/').map(|i| after_scheme + i);
    let root = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// What a test run isolates itself with.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// Unique id of this app.
    pub id: Uuid,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its PostgreSQL database, if any.
    pub database: Option<String>,
}

/// Builds the environment map a test platform is configured from (the real
/// configuration loader reads it), creating the PostgreSQL database if needed.
pub async fn test_env(engines: &Engines, extra: &[(&str, &str)]) -> (BTreeMap<String, String>, Isolation) {
    let id = Uuid::now_v7();
    let data_dir = std::env::temp_dir().join(format!("signpost-test-{}", id.simple()));
    let mut env = BTreeMap::new();
    env.insert("SIGNPOST_DATA_DIR".to_string(), data_dir.display().to_string());
    env.insert("SIGNPOST_LISTEN".to_string(), "127.0.0.1:0".to_string());
    env.insert("SIGNPOST_SHUTDOWN_TIMEOUT".to_string(), "5".to_string());
    let mut database = None;
    if let Some(admin) = &engines.database_url {
        let name = format!("signpost_test_{}", id.simple());
        create_database(admin, &name).await;
        env.insert("DATABASE_URL".to_string(), with_database(admin, &name));
        database = Some(name);
    }
    if let Some(r) = &engines.redis_url {
        env.insert("REDIS_URL".to_string(), r.clone());
        env.insert("SIGNPOST_REDIS_PREFIX".to_string(), format!("test:{}:", id.simple()));
    }
    if let Some(n) = &engines.nats_url {
        env.insert("NATS_URL".to_string(), n.clone());
        env.insert("SIGNPOST_NATS_STREAM".to_string(), format!("T{}", id.simple()));
    }
    if let Some(s) = &engines.s3_url {
        env.insert("STORAGE_URL".to_string(), s.clone());
        for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            if let Ok(v) = std::env::var(k) {
                env.insert(k.to_string(), v);
            }
        }
    }
    for (k, v) in extra {
        env.insert((*k).to_string(), (*v).to_string());
    }
    (env, Isolation { id, data_dir, database })
}

async fn create_database(admin: &str, name: &str) {
    use sqlx::Connection;
    let mut conn = match sqlx::PgConnection::connect(admin).await {
        Ok(c) => c,
        Err(e) => panic!("SIGNPOST_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}"),
    };
    let sql = format!("create database {name}");
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
        panic!("cannot create test database {name}: {e}");
    }
    let _ = conn.close().await;
}

/// Drops a test database (and whatever still connects to it).
pub async fn drop_database(admin: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let sql = format!("drop database if exists {name} with (force)");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
        let _ = conn.close().await;
    }
}

/// A platform running in this process for one test.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// A client without redirects or proxies.
    pub client: reqwest::Client,
    /// The kernel handles (cache, limiter, storage, bus).
    pub kernel: Kernel,
    /// The database deployment.
    pub database: DbBackend,
    /// The configuration it was started with.
    pub config: Config,
    /// Engines and isolation.
    pub engines: Engines,
    /// The environment the configuration was loaded from (for child processes).
    pub env: BTreeMap<String, String>,
    /// Names of what to clean up.
    pub isolation: Isolation,
    dbs: Vec<Db>,
    stop: CancellationToken,
    server: Option<JoinHandle<Result<(), kernel::StartError>>>,
}

/// A client for tests: no redirects, no proxy from the environment.
pub fn client() -> reqwest::Client {
    kernel::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("reqwest client: {e}"))
}

impl TestApp {
    /// The platform with the test fixture service, on the engines from the environment.
    pub async fn spawn() -> Self {
        Self::spawn_with(vec![Arc::new(fixture::Fixture)], &[]).await
    }

    /// The platform with the given services and extra environment.
    pub async fn spawn_with(services: Vec<Arc<dyn Service>>, extra: &[(&str, &str)]) -> Self {
        let engines = Engines::from_env();
        let (env, isolation) = test_env(&engines, extra).await;
        Self::spawn_env(services, engines, env, isolation).await
    }

    /// The platform on a prepared environment (a restart reuses it).
    pub async fn spawn_env(
        services: Vec<Arc<dyn Service>>,
        engines: Engines,
        env: BTreeMap<String, String>,
        isolation: Isolation,
    ) -> Self {
        kernel::install_crypto_provider();
        let _ = kernel::telemetry::metrics_handle();
        if std::env::var("SIGNPOST_TEST_LOG").is_ok() {
            kernel::telemetry::init_logging("info,sqlx=warn", kernel::config::LogFormat::Pretty);
        }
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let address = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")));
        // Signed URLs and short links are built on the public URL: the real port, not 0.
        let mut with_url = env.clone();
        with_url.entry("SIGNPOST_PUBLIC_URL".to_string()).or_insert_with(|| address.clone());
        let (config, _) = Config::load_from(None, &with_url, &Overrides::default())
            .unwrap_or_else(|e| panic!("test configuration: {e}"));
        let schemas: Vec<&'static str> =
            services.iter().filter_map(|s| s.migrations()).map(|m| m.schema).collect();
        let platform =
            Platform::start(config.clone(), services).await.unwrap_or_else(|e| panic!("platform start: {e}"));
        let kernel = platform.kernel().clone();
        let database = platform.database().clone();
        let dbs = schemas.iter().filter_map(|s| platform.db(s).cloned()).collect();
        let stop = CancellationToken::new();
        let server = tokio::spawn(platform.serve(listener, stop.clone()));
        Self {
            address,
            client: client(),
            kernel,
            database,
            config,
            engines,
            env,
            isolation,
            dbs,
            stop,
            server: Some(server),
        }
    }

    /// Stops gracefully and starts the fixture platform again on the same data.
    pub async fn restart(mut self) -> Self {
        self.shutdown().await;
        let (engines, env, isolation) = (self.engines.clone(), self.env.clone(), self.isolation.clone());
        drop(self);
        Self::spawn_env(vec![Arc::new(fixture::Fixture)], engines, env, isolation).await
    }

    /// Stops gracefully and starts `services` again on the same data, with `extra`
    /// added to (or replacing in) the environment.
    pub async fn restart_with(mut self, services: Vec<Arc<dyn Service>>, extra: &[(&str, &str)]) -> Self {
        self.shutdown().await;
        let (engines, mut env, isolation) = (self.engines.clone(), self.env.clone(), self.isolation.clone());
        for (k, v) in extra {
            env.insert((*k).to_string(), (*v).to_string());
        }
        drop(self);
        Self::spawn_env(services, engines, env, isolation).await
    }

    /// `address` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A service schema handle (`fixture`).
    pub fn db(&self, schema: &str) -> Db {
        self.dbs
            .iter()
            .find(|d| d.schema() == schema)
            .cloned()
            .unwrap_or_else(|| panic!("no schema {schema}"))
    }

    /// Shuts the platform down gracefully (as on SIGTERM) without cleaning up.
    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("platform stopped with an error: {e}"),
                Err(e) => panic!("platform task failed: {e}"),
            }
        }
    }

    /// Shuts down and removes the database, keys, stream and data directory.
    pub async fn stop(mut self) {
        self.shutdown().await;
        cleanup(&self.engines, &self.config, &self.isolation).await;
    }
}

/// Removes what a test platform created.
pub async fn cleanup(engines: &Engines, config: &Config, isolation: &Isolation) {
    if let (Some(admin), Some(db)) = (&engines.database_url, &isolation.database) {
        drop_database(admin, db).await;
    }
    if let Some(r) = &config.redis
        && let Ok(conn) = kernel::cache::RedisConn::connect(&r.url, &r.prefix).await
    {
        let _ = conn.delete_prefix().await;
    }
    if let Some(n) = &config.nats
        && let Ok(bus) = kernel::events::NatsBus::connect(&n.url, &n.stream).await
    {
        let _ = bus.delete_stream().await;
    }
    let _ = std::fs::remove_dir_all(&isolation.data_dir);
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the PostgreSQL catalog says is wrong with tenant isolation (SECURITY.md
/// line 17): tenant tables (those with a `tenant_id` column) without ENABLE and
/// FORCE row-level security, an app role that is superuser or BYPASSRLS, and
/// objects the app role owns. Empty when all is well. Also returns the tenant
/// tables it found, so a caller can check the query saw what it expected.
pub async fn rls_catalog(pg: &kernel::db::PgBackend) -> (Vec<String>, Vec<String>) {
    let owner = pg.owner_pool();
    let tenant_tables = "select n.nspname::text || '.' || c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where c.relkind in ('r', 'p')
           and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)
           and n.nspname not in ('pg_catalog', 'information_schema')";
    let tables: Vec<String> =
        sqlx::query_scalar(tenant_tables).fetch_all(owner).await.unwrap_or_else(|e| panic!("{e}"));
    let mut problems: Vec<String> = sqlx::query_scalar(
        "select n.nspname::text || '.' || c.relname::text || ' lacks ENABLE + FORCE ROW LEVEL SECURITY'
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where c.relkind in ('r', 'p')
           and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)
           and n.nspname not in ('pg_catalog', 'information_schema')
           and not (c.relrowsecurity and c.relforcerowsecurity)",
    )
    .fetch_all(owner)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let role = pg.app_role().to_string();
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("select rolsuper, rolbypassrls from pg_roles where rolname = $1")
            .bind(&role)
            .fetch_one(owner)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    if superuser || bypass {
        problems.push(format!("{role} is superuser or BYPASSRLS"));
    }
    let owned: i64 = sqlx::query_scalar(
        "select (select count(*) from pg_class where relowner = r.oid)
              + (select count(*) from pg_namespace where nspowner = r.oid)
              + (select count(*) from pg_proc where proowner = r.oid)
         from pg_roles r where r.rolname = $1",
    )
    .bind(&role)
    .fetch_one(owner)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    if owned > 0 {
        problems.push(format!("{role} owns {owned} objects"));
    }
    (tables, problems)
}

impl TestApp {
    /// Sends a request with an optional bearer token and JSON body; returns the
    /// status and the JSON body (`Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for up to 15 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The claims of a fresh access token: a new user with `role` in `tenant`, valid 10 minutes.
pub fn claims(issuer: &str, tenant: kernel::TenantId, role: &str) -> kernel::auth::Claims {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    kernel::auth::Claims {
        iss: issuer.into(),
        aud: kernel::auth::AUDIENCE.into(),
        sub: Uuid::now_v7(),
        tid: tenant,
        role: role.into(),
        sid: Uuid::now_v7(),
        scope: String::new(),
        exp: now + 600,
        iat: now,
        nbf: None,
        jti: Uuid::now_v7(),
    }
}

/// An HS256 access token (the platform started with `JWT_SECRET_KEY = secret`)
/// for a new user with `role` in `tenant`.
pub fn hs256_token(secret: &str, issuer: &str, tenant: kernel::TenantId, role: &str) -> String {
    kernel::auth::SigningKey::Hs256(kernel::Secret::new(secret.as_bytes().to_vec()))
        .sign(&claims(issuer, tenant, role))
}
