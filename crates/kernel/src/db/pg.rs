//! PostgreSQL: schema per service, row-level security, an owner role that runs
//! migrations and an application role that owns nothing.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor as _, Row as _};
use tokio::sync::Notify;

use super::migrate::Migrations;
use super::tx::{PgGlobalTx, PgTx};
use super::{DbError, Engine, KernelSql, SchemaShared};
use crate::background::PerThread;
use crate::secret::{Secret, redact_url};
use crate::tenant::TenantId;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connected PostgreSQL deployment: an owner pool for migrations and the
/// application pool every service's [`PgDb`] shares.
#[derive(Clone, Debug)]
pub struct PgBackend {
    owner: PgPool,
    /// Request handling's connections, and each background lane's own (see
    /// [`crate::background`]): never lent to a request or to another lane.
    pools: PerThread<PgPools>,
    app_role: String,
    owner_role: String,
}

impl PgBackend {
    /// Connects both pools; `app_url = None` runs the application as `SET ROLE app_role`
    /// on owner-URL connections. An unreachable server is a one-line error.
    pub async fn connect(
        url: &Secret<String>,
        app_url: Option<&Secret<String>>,
        app_role: &str,
        owner_role: &str,
        max_connections: u32,
    ) -> Result<Self, DbError> {
        let owner_opts = options(url)?;
        let owner = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(owner_opts.clone());
        // Fail fast and clearly: one direct connection now (a pool would keep
        // retrying until its timeout and then report only that it timed out).
        let probe = tokio::time::timeout(
            CONNECT_TIMEOUT,
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&owner_opts),
        )
        .await
        .map_err(|_| {
            DbError::Setup(format!("cannot reach PostgreSQL at {}: timed out", redact_url(url.expose())))
        })?
        .map_err(|e| {
            DbError::Setup(format!("cannot connect to PostgreSQL at {}: {e}", redact_url(url.expose())))
        })?;
        let _ = sqlx::Connection::close(probe).await;
        let app_pool = |max: u32| -> Result<PgPool, DbError> {
            let opts = PgPoolOptions::new().max_connections(max).acquire_timeout(CONNECT_TIMEOUT);
            Ok(match app_url {
                Some(app_url) => opts.connect_lazy_with(options(app_url)?),
                None => {
                    let set_role = format!("set role {app_role}");
                    opts.after_connect(move |conn, _| {
                        let sql = set_role.clone();
                        Box::pin(async move {
                            conn.execute(AssertSqlSafe(sql)).await?;
                            Ok(())
                        })
                    })
                    .connect_lazy_with(owner_opts.clone())
                }
            })
        };
        let pools = PerThread {
            requests: PgPools {
                app: app_pool(max_connections)?,
                system: app_pool(max_connections.clamp(2, 16))?,
            },
            // One thread: a few connections serve its relays and consumers.
            prompt: PgPools {
                app: app_pool((max_connections / 4).max(2))?,
                system: app_pool(max_connections.clamp(2, 4))?,
            },
            bulk: PgPools {
                app: app_pool((max_connections / 2).max(2))?,
                system: app_pool(max_connections.clamp(2, 8))?,
            },
        };
        Ok(Self { owner, pools, app_role: app_role.to_string(), owner_role: owner_role.to_string() })
    }

    /// Creates the owner and application roles when missing and makes sure the
    /// application role can never bypass row-level security.
    pub async fn ensure_roles(&self) -> Result<(), DbError> {
        let (owner, app) = (&self.owner_role, &self.app_role);
        let sql = format!(
            r#"
            do $$ begin
                create role {owner} nologin;
            exception when duplicate_object or unique_violation then null;
            end $$;
            do $$ begin
                create role {app} nologin;
            exception when duplicate_object or unique_violation then null;
            end $$;
            do $$ begin
                if exists (select 1 from pg_roles where rolname = '{app}'
                           and (rolsuper or rolbypassrls or rolcreatedb or rolcreaterole)) then
                    alter role {app} nosuperuser nobypassrls nocreatedb nocreaterole;
                end if;
                if exists (select 1 from pg_roles where rolname = '{owner}' and (rolsuper or rolbypassrls)) then
                    alter role {owner} nosuperuser nobypassrls;
                end if;
            end $$;
            do $$ begin
                execute format('grant create on database %I to {owner}', current_database());
                if not pg_has_role(current_user, '{owner}', 'member') then
                    execute format('grant {owner} to %I', current_user);
                end if;
                if not pg_has_role(current_user, '{app}', 'member') then
                    execute format('grant {app} to %I', current_user);
                end if;
            end $$;
            "#
        );
        // Roles are cluster-wide while advisory locks are per database: starts on
        // several databases of one cluster can still race on the role catalog, so
        // the statements change nothing that is already right, and a lost race retries.
        let mut attempt = 0;
        loop {
            let mut conn = self.owner.acquire().await?;
            conn.execute("select pg_advisory_lock(7261531)").await?;
            let res = sqlx::raw_sql(AssertSqlSafe(sql.clone())).execute(&mut *conn).await;
            conn.execute("select pg_advisory_unlock(7261531)").await?;
            match res {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "role setup raced; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(DbError::Setup(format!("preparing roles {owner} and {app}: {e}"))),
            }
        }
    }

    /// Applies what is missing of each service's migrations as the owner role and
    /// grants the application role what it needs. Returns `schema/version` applied.
    pub async fn migrate(&self, all: &[Migrations]) -> Result<Vec<String>, DbError> {
        self.ensure_roles().await?;
        let mut applied = Vec::new();
        for m in all {
            applied.extend(self.migrate_schema(m).await?);
        }
        self.verify_app_role().await?;
        Ok(applied)
    }

    /// Refuses to run when the application's session could bypass row-level security.
    pub async fn verify_app_role(&self) -> Result<(), DbError> {
        let (user, unsafe_role): (String, bool) = sqlx::query_as(
            "select current_user::text, rolsuper or rolbypassrls from pg_roles where rolname = current_user",
        )
        .fetch_one(&self.pools.requests.app)
        .await
        .map_err(|e| {
            DbError::Setup(format!("cannot connect as the application role {}: {e}", self.app_role))
        })?;
        if unsafe_role {
            return Err(DbError::Setup(format!(
                "the application connects as {user}, which is superuser or BYPASSRLS: row-level security would not apply"
            )));
        }
        Ok(())
    }

    async fn migrate_schema(&self, m: &Migrations) -> Result<Vec<String>, DbError> {
        let schema = m.schema;
        let (owner, app) = (&self.owner_role, &self.app_role);
        let err = |version: &str, e: sqlx::Error| DbError::Migration {
            schema: schema.to_string(),
            version: version.to_string(),
            message: e.to_string(),
        };
        let mut conn = self.owner.acquire().await?;
        let result = async {
            conn.execute(AssertSqlSafe(format!("set role {owner}"))).await?;
            conn.execute(AssertSqlSafe(format!(
                "select pg_advisory_lock(hashtext('signpost.migrate.{schema}'))"
            )))
            .await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "create schema if not exists {schema} authorization {owner};
                 create table if not exists {schema}.schema_migrations (
                     version text primary key, checksum text not null,
                     applied_at timestamptz not null default now());"
            )))
            .execute(&mut *conn)
            .await
            .map_err(|e| err("schema_migrations", e))?;
            let done: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
                "select version, checksum from {schema}.schema_migrations"
            )))
            .fetch_all(&mut *conn)
            .await?;
            let mut applied = Vec::new();
            for step in m.pending(true, &done)? {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                sqlx::raw_sql(AssertSqlSafe(step.sql.clone()))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| err(&step.version, e))?;
                sqlx::query(AssertSqlSafe(format!(
                    "insert into {schema}.schema_migrations (version, checksum) values ($1, $2)"
                )))
                .bind(&step.version)
                .bind(&step.checksum)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                applied.push(format!("{schema}/{}", step.version));
            }
            sqlx::raw_sql(AssertSqlSafe(format!(
                "grant usage on schema {schema} to {app};
                 grant select, insert, update, delete on all tables in schema {schema} to {app};
                 revoke all on {schema}.schema_migrations from {app};
                 grant usage, select on all sequences in schema {schema} to {app};
                 grant execute on all functions in schema {schema} to {app};"
            )))
            .execute(&mut *conn)
            .await
            .map_err(|e| err("grants", e))?;
            Ok(applied)
        }
        .await;
        let _ = conn
            .execute(AssertSqlSafe(format!(
                "select pg_advisory_unlock(hashtext('signpost.migrate.{schema}'))"
            )))
            .await;
        let _ = conn.execute("reset role").await;
        result
    }

    /// The handle of one service schema.
    pub fn db(&self, schema: &'static str) -> PgDb {
        PgDb {
            pools: self.pools.clone(),
            shared: Arc::new(SchemaShared {
                schema,
                relay: Arc::new(Notify::new()),
                sql: KernelSql::new(schema, Engine::Postgres),
            }),
        }
    }

    /// The role the application runs as.
    pub fn app_role(&self) -> &str {
        &self.app_role
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for pools in self.pools.all() {
            pools.app.close().await;
            pools.system.close().await;
        }
        self.owner.close().await;
    }

    /// The owner pool (migrations, catalog checks in tests).
    #[cfg(feature = "testing")]
    pub fn owner_pool(&self) -> &PgPool {
        &self.owner
    }

    /// The raw application pool: tests use it to prove what RLS hides.
    #[cfg(feature = "testing")]
    pub fn app_pool(&self) -> &PgPool {
        &self.pools.requests.app
    }
}

fn options(url: &Secret<String>) -> Result<PgConnectOptions, DbError> {
    PgConnectOptions::from_str(url.expose())
        .map(|o| o.application_name("signpost"))
        .map_err(|e| DbError::Setup(format!("DATABASE_URL: {e}")))
}

/// An application pool and the kernel's system pool.
#[derive(Clone, Debug)]
struct PgPools {
    app: PgPool,
    /// The kernel's own work (relays, batched appends, dead letters) runs here, so
    /// that a relay waiting on consumers never holds a connection they need.
    system: PgPool,
}

/// A session advisory lock held on a system-pool connection (see
/// [`PgDb::try_lock_system`]). [`SystemLock::release`] unlocks it and returns
/// the connection to the pool; dropped without that (an error or a panic on
/// the way), it closes the connection, which ends the lock with the session.
pub(crate) struct SystemLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: String,
}

impl SystemLock {
    /// The connection the lock is on (or is being asked for on).
    fn conn(&mut self) -> Result<&mut sqlx::PgConnection, DbError> {
        let conn = self.conn.as_mut().ok_or_else(|| DbError::Setup("system lock already released".into()))?;
        Ok(&mut **conn)
    }

    /// A transaction in the system scope on the locked connection.
    pub(crate) async fn begin(&mut self) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, DbError> {
        let mut tx = sqlx::Connection::begin(self.conn()?).await?;
        tx.execute(SYSTEM_SCOPE).await?;
        Ok(tx)
    }

    /// Unlocks and returns the connection to the pool. That is the only way
    /// it goes back there: an error, or this future dropped before the
    /// answer, closes it (see `Drop`).
    pub(crate) async fn release(mut self) -> Result<(), DbError> {
        let unlocked = sqlx::query_scalar::<_, bool>("select pg_advisory_unlock(hashtext($1))")
            .bind(self.key.clone())
            .fetch_one(self.conn()?)
            .await?;
        if !unlocked {
            return Err(DbError::Setup(format!("advisory lock {} was not held", self.key)));
        }
        self.conn.take();
        Ok(())
    }
}

/// Puts a transaction in the kernel's system scope (outbox, inbox, dead letters).
const SYSTEM_SCOPE: &str = "select set_config('app.scope', 'system', true)";

impl Drop for SystemLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// One service's schema on PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgDb {
    pools: PerThread<PgPools>,
    pub(crate) shared: Arc<SchemaShared>,
}

impl PgDb {
    /// The pools of the calling thread's kind (request or a background lane).
    fn pools(&self) -> &PgPools {
        self.pools.current()
    }

    /// The schema name.
    pub fn schema(&self) -> &'static str {
        self.shared.schema
    }

    /// A transaction for `tenant`: row-level security sees only that tenant's rows.
    pub async fn begin(&self, tenant: TenantId) -> Result<PgTx, DbError> {
        let mut tx = self.pools().app.begin().await?;
        sqlx::query("select set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(PgTx::new(tx, tenant, self.shared.clone()))
    }

    /// A read-only view for `tenant` (same pool on PostgreSQL).
    pub async fn read(&self, tenant: TenantId) -> Result<PgTx, DbError> {
        self.begin(tenant).await
    }

    /// A transaction with no tenant, for a service's global tables (identity's
    /// accounts): row-level security hides every tenant table's rows from it.
    pub async fn begin_global(&self) -> Result<PgGlobalTx, DbError> {
        Ok(PgGlobalTx::new(self.pools().app.begin().await?, self.shared.clone()))
    }

    /// A read of the global tables (same pool on PostgreSQL).
    pub async fn read_global(&self) -> Result<PgGlobalTx, DbError> {
        self.begin_global().await
    }

    /// Takes the session advisory lock `key` on a system-pool connection, or
    /// `None` if another connection (of any instance) holds it. Unlike a
    /// transaction's lock it is held with no transaction open, so work done
    /// under it that waits on something else (a relay waiting on in-process
    /// consumers) does not hold back vacuum.
    pub(crate) async fn try_lock_system(&self, key: &str) -> Result<Option<SystemLock>, DbError> {
        // In the guard before the lock is asked for: dropped on the way (the
        // future cancelled), the connection closes rather than going back to
        // the pool with a lock the server may have granted.
        let mut lock = SystemLock { conn: Some(self.pools().system.acquire().await?), key: key.to_string() };
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1))")
            .bind(key)
            .fetch_one(lock.conn()?)
            .await?;
        if !locked {
            // Nothing held: the connection goes back to the pool.
            lock.conn.take();
            return Ok(None);
        }
        Ok(Some(lock))
    }

    /// A transaction in the kernel's system scope (outbox, inbox, dead letters).
    pub(crate) async fn begin_system(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, DbError> {
        let mut tx = self.pools().system.begin().await?;
        tx.execute(SYSTEM_SCOPE).await?;
        Ok(tx)
    }

    pub(crate) async fn ping(&self) -> Result<(), DbError> {
        let row = sqlx::query("select 1::int4 as one").fetch_one(&self.pools().app).await?;
        let _: i32 = row.try_get("one")?;
        Ok(())
    }
}
