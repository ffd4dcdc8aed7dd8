//! SQLite: one file per service schema, attached as the schema's name on every
//! pooled connection (so SQL says `links.links` on both engines), WAL, one
//! writer at a time (SQLite's own write lock; `begin immediate` waits for it).
//! Each background lane (consumers, relays, drainers; see
//! [`crate::background`]) has its own writer and reader, opened on first use
//! from that lane's runtime, so their connection threads run at its lower
//! priority, and neither requests nor the prompt lane queue behind a
//! lower-priority thread for a connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Executor as _};
use tokio::sync::Notify;

use super::migrate::Migrations;
use super::tx::{SqliteGlobalTx, SqliteTx};
use super::{DbError, Engine, KernelSql, SchemaShared};
use crate::background::PerThread;
use crate::tenant::TenantId;

/// The SQLite deployment: a directory with one file per service.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    dir: PathBuf,
}

impl SqliteBackend {
    /// Creates the directory when missing.
    pub async fn open(dir: &Path) -> Result<Self, DbError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| DbError::Setup(format!("cannot create data directory {}: {e}", dir.display())))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// Opens the pools of one service schema (one writer, a few readers).
    pub async fn db(&self, schema: &'static str) -> Result<SqliteDb, DbError> {
        let file = self.dir.join(format!("{schema}.db"));
        let lane = || -> Pools {
            Pools { writer: lane_pool(&file, schema, false), reader: lane_pool(&file, schema, true) }
        };
        Ok(SqliteDb {
            pools: PerThread {
                requests: Pools {
                    writer: pool(&file, schema, PoolKind::Writer).await?,
                    reader: pool(&file, schema, PoolKind::Readers).await?,
                },
                prompt: lane(),
                bulk: lane(),
            },
            shared: Arc::new(SchemaShared {
                schema,
                relay: Arc::new(Notify::new()),
                sql: KernelSql::new(schema, Engine::Sqlite),
            }),
        })
    }

    /// Applies what is missing of each service's migrations.
    pub async fn migrate(&self, all: &[Migrations]) -> Result<Vec<String>, DbError> {
        let mut applied = Vec::new();
        for m in all {
            let db = self.db(m.schema).await?;
            applied.extend(db.migrate(m).await?);
            db.close().await;
        }
        Ok(applied)
    }
}

/// The pools of one file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    /// Request handling's writer, connected at start.
    Writer,
    /// Request handling's readers.
    Readers,
    /// A background lane's writer or reader: connected on first use, which
    /// happens on that lane's thread (their SQLite threads inherit its priority).
    Lane { read_only: bool },
}

/// A background lane's pool; it connects lazily, so it never fails here.
fn lane_pool(file: &Path, schema: &'static str, read_only: bool) -> SqlitePool {
    let (options, opts) = pool_options(file, schema, PoolKind::Lane { read_only });
    // Kept for the life of the pool: a replacement would be opened by
    // whichever thread asked, and a lane's connection must stay in its lane.
    options.idle_timeout(None).max_lifetime(None).connect_lazy_with(opts)
}

async fn pool(file: &Path, schema: &'static str, kind: PoolKind) -> Result<SqlitePool, DbError> {
    let (options, opts) = pool_options(file, schema, kind);
    options
        .connect_with(opts)
        .await
        .map_err(|e| DbError::Setup(format!("cannot open {}: {e}", file.display())))
}

fn pool_options(
    file: &Path,
    schema: &'static str,
    kind: PoolKind,
) -> (SqlitePoolOptions, SqliteConnectOptions) {
    let read_only = matches!(kind, PoolKind::Readers | PoolKind::Lane { read_only: true });
    // `main` is a private in-memory database; the service file is attached under
    // the schema's name so that the same `schema.table` text works on both engines.
    let opts = SqliteConnectOptions::new()
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let path = file.to_string_lossy().into_owned();
    let attach = format!("attach database $1 as {schema}");
    // Up to 32 MiB of page cache per connection (the default is 2 MiB, which
    // large tables such as analytics' outgrow) and reads through mmap.
    let pragmas = format!(
        "pragma {schema}.journal_mode = wal; pragma {schema}.synchronous = normal; pragma {schema}.busy_timeout = 10000; \
         pragma {schema}.cache_size = -32768; pragma {schema}.mmap_size = 268435456;"
    );
    let options = SqlitePoolOptions::new()
        .max_connections(if kind == PoolKind::Readers { 4 } else { 1 })
        .min_connections(u32::from(kind == PoolKind::Writer))
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            let (attach, pragmas, path) = (attach.clone(), pragmas.clone(), path.clone());
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(attach)).bind(path).execute(&mut *conn).await?;
                sqlx::raw_sql(AssertSqlSafe(pragmas)).execute(&mut *conn).await?;
                if read_only {
                    conn.execute("pragma query_only = on").await?;
                }
                Ok(())
            })
        });
    (options, opts)
}

/// One service's file on SQLite.
#[derive(Clone, Debug)]
pub struct SqliteDb {
    /// Request handling's connections and each background lane's own.
    pools: PerThread<Pools>,
    pub(crate) shared: Arc<SchemaShared>,
}

/// A writer and a reader pool.
#[derive(Clone, Debug)]
struct Pools {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteDb {
    /// The pools of the calling thread's kind (request or a background lane).
    fn pools(&self) -> &Pools {
        self.pools.current()
    }

    /// The schema (attachment) name.
    pub fn schema(&self) -> &'static str {
        self.shared.schema
    }

    /// A write transaction for `tenant` on the single writer (`BEGIN IMMEDIATE`,
    /// so it never fails halfway on a lock upgrade).
    pub async fn begin(&self, tenant: TenantId) -> Result<SqliteTx, DbError> {
        let tx = self.pools().writer.begin_with("begin immediate").await?;
        Ok(SqliteTx::new(tx, tenant, self.shared.clone()))
    }

    /// A read transaction for `tenant` on a reader connection (a consistent snapshot).
    pub async fn read(&self, tenant: TenantId) -> Result<SqliteTx, DbError> {
        let tx = self.pools().reader.begin().await?;
        Ok(SqliteTx::new(tx, tenant, self.shared.clone()))
    }

    /// A write transaction with no tenant, for a service's global tables.
    pub async fn begin_global(&self) -> Result<SqliteGlobalTx, DbError> {
        Ok(SqliteGlobalTx::new(self.pools().writer.begin_with("begin immediate").await?, self.shared.clone()))
    }

    /// A read transaction of the global tables on a reader connection.
    pub async fn read_global(&self) -> Result<SqliteGlobalTx, DbError> {
        Ok(SqliteGlobalTx::new(self.pools().reader.begin().await?, self.shared.clone()))
    }

    /// One read of the global tables, text parameters bound in order, as a
    /// single statement on a reader connection with no transaction around it
    /// (one statement reads one snapshot). One round trip to the connection's
    /// thread instead of three (begin, select, rollback): for hot-path misses.
    pub(crate) async fn global_optional<O>(
        &self,
        sql: &'static str,
        params: &[&str],
    ) -> Result<Option<O>, DbError>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        super::tx::check_global(sql)?;
        let mut query = sqlx::query_as::<_, O>(AssertSqlSafe(sql));
        for p in params {
            query = query.bind((*p).to_string());
        }
        Ok(query.fetch_optional(self.reader()).await?)
    }

    /// A write transaction in the kernel's system scope.
    pub(crate) async fn begin_system(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, DbError> {
        Ok(self.pools().writer.begin_with("begin immediate").await?)
    }

    /// A reader connection pool, for the kernel's own reads outside a tenant.
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.pools().reader
    }

    pub(crate) async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("select 1").execute(self.reader()).await?;
        Ok(())
    }

    async fn migrate(&self, m: &Migrations) -> Result<Vec<String>, DbError> {
        let schema = m.schema;
        let err = |version: &str, e: sqlx::Error| DbError::Migration {
            schema: schema.to_string(),
            version: version.to_string(),
            message: e.to_string(),
        };
        let mut conn = self.pools.requests.writer.acquire().await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "create table if not exists {schema}.schema_migrations (
                 version text primary key, checksum text not null,
                 applied_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
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
        for step in m.pending(false, &done)? {
            let mut tx = sqlx::Connection::begin_with(&mut *conn, "begin immediate").await?;
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
        Ok(applied)
    }

    /// Closes every pool (checkpointing the WAL).
    pub async fn close(&self) {
        for pools in self.pools.all() {
            pools.writer.close().await;
            pools.reader.close().await;
        }
    }
}
