//! The data layer: one schema per service on PostgreSQL (row-level security) or
//! one SQLite file per service; tenant-scoped transactions; migrations.
//!
//! A service gets a [`Db`] for its own schema and builds its store from the
//! backend inside (`Db::Postgres` / `Db::Sqlite`). Every query a service runs
//! goes through a [`PgTx`] / [`SqliteTx`], which cannot be opened without a
//! [`TenantId`] and which binds that tenant as `$1` of every statement.

mod migrate;
mod pg;
mod sqlite;
mod tx;
mod types;

use std::sync::Arc;

use tokio::sync::Notify;

pub use migrate::{Migration, Migrations};
pub use pg::{PgBackend, PgDb};
pub use sqlite::{SqliteBackend, SqliteDb};
pub use tx::{PgGlobalTx, PgTx, Savepoint, Scoped, SqliteGlobalTx, SqliteTx};
pub use types::{Id, Timestamp};

use crate::problem::Problem;

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A driver or server error.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A named constraint that maps to a client error (409/422).
    #[error("constraint {constraint} violated")]
    Constraint {
        /// The constraint (or, on SQLite, the column list) that failed.
        constraint: String,
        /// What the client sees.
        problem: Problem,
    },
    /// A statement that does not mention the tenant (a bug, caught before it runs).
    #[error("statement is not scoped to the tenant (needs tenant_id = $1): {0}")]
    Unscoped(&'static str),
    /// Applying migrations failed.
    #[error("migration {schema}/{version}: {message}")]
    Migration {
        /// Service schema.
        schema: String,
        /// Migration version.
        version: String,
        /// What went wrong.
        message: String,
    },
    /// The database could not be reached or prepared.
    #[error("{0}")]
    Setup(String),
    /// An event type that is not a dotted lower-case name (it would break bus subjects).
    #[error("invalid event type {0:?} (expected dotted lower-case words, e.g. link.clicked)")]
    InvalidEvent(String),
    /// An event payload could not be serialized.
    #[error("event payload: {0}")]
    Json(#[from] serde_json::Error),
}

impl DbError {
    /// Whether a unique index refused the statement.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Sqlx(sqlx::Error::Database(db)) if db.is_unique_violation())
    }
}

/// Maps constraint violations to client errors, in one place per call site.
pub trait DbResultExt<T> {
    /// A unique violation becomes `problem` (409, usually).
    fn on_unique(self, problem: impl FnOnce() -> Problem) -> Result<T, DbError>;
    /// A violation of the named constraint becomes `problem`. On SQLite, whose
    /// errors carry no constraint name, `name` is matched against the message
    /// (`UNIQUE constraint failed: links.links.slug`), so pass a name that appears there.
    fn on_constraint(self, name: &str, problem: impl FnOnce() -> Problem) -> Result<T, DbError>;
}

impl<T, E: Into<DbError>> DbResultExt<T> for Result<T, E> {
    fn on_unique(self, problem: impl FnOnce() -> Problem) -> Result<T, DbError> {
        self.map_err(Into::into).map_err(|e| match e {
            DbError::Sqlx(sqlx::Error::Database(db)) if db.is_unique_violation() => DbError::Constraint {
                constraint: db.constraint().unwrap_or_default().to_string(),
                problem: problem(),
            },
            other => other,
        })
    }

    fn on_constraint(self, name: &str, problem: impl FnOnce() -> Problem) -> Result<T, DbError> {
        self.map_err(Into::into).map_err(|e| match e {
            DbError::Sqlx(sqlx::Error::Database(db))
                if db.constraint() == Some(name) || db.message().contains(name) =>
            {
                DbError::Constraint { constraint: name.to_string(), problem: problem() }
            }
            other => other,
        })
    }
}

/// Which engine a deployment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// A service's handle on its own schema.
#[derive(Clone, Debug)]
pub enum Db {
    /// PostgreSQL schema.
    Postgres(PgDb),
    /// SQLite file.
    Sqlite(SqliteDb),
}

impl Db {
    /// One read of the service's global (tenant-less) tables, text parameters
    /// bound in order. On SQLite it is a single statement outside any
    /// transaction (one round trip to the connection's thread); on PostgreSQL,
    /// a global read transaction.
    pub async fn global_optional<O>(&self, sql: &'static str, params: &[&str]) -> Result<Option<O>, DbError>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        match self {
            Self::Sqlite(lite) => lite.global_optional(sql, params).await,
            Self::Postgres(pg) => {
                let mut t = pg.read_global().await?;
                let mut query = t.query_as::<O>(sql);
                for p in params {
                    query = query.bind((*p).to_string());
                }
                t.fetch_optional(query).await
            }
        }
    }

    /// The service schema this handle is bound to.
    pub fn schema(&self) -> &'static str {
        match self {
            Self::Postgres(d) => d.schema(),
            Self::Sqlite(d) => d.schema(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        match self {
            Self::Postgres(_) => Engine::Postgres,
            Self::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// What every handle on this schema shares (kernel SQL, relay signal).
    pub(crate) fn shared(&self) -> &SchemaShared {
        match self {
            Self::Postgres(d) => &d.shared,
            Self::Sqlite(d) => &d.shared,
        }
    }

    /// Answers when the database takes a query.
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            Self::Postgres(d) => d.ping().await,
            Self::Sqlite(d) => d.ping().await,
        }
    }
}

/// What every handle on one service schema shares: the schema name, the SQL of
/// the kernel's own tables in it, and the relay's wake-up signal.
#[derive(Debug)]
pub(crate) struct SchemaShared {
    pub(crate) schema: &'static str,
    pub(crate) relay: Arc<Notify>,
    pub(crate) sql: KernelSql,
}

/// Statements on the kernel's tables (outbox, inbox, dead letters), with the
/// schema name filled in once.
#[derive(Debug)]
pub(crate) struct KernelSql {
    pub(crate) outbox_insert: String,
    pub(crate) outbox_pending: String,
    pub(crate) outbox_delete: String,
    pub(crate) inbox_insert: String,
    /// Many ids at once (an array on PostgreSQL, a JSON array on SQLite),
    /// returning those that were new.
    pub(crate) inbox_insert_many: String,
    /// A consumer's entries for events made before an id (UUIDv7 ids sort by
    /// time), at most `$3` of them: a bounded step of the inbox's retention.
    pub(crate) inbox_prune: String,
    pub(crate) dead_letter_insert: String,
}

impl KernelSql {
    fn new(schema: &str, engine: Engine) -> Self {
        // The relay deletes exactly what every audience has (concurrent writers
        // on PostgreSQL can also commit out of seq order), and reads past the
        // rows the audience it reads for has: `$2` (an array on PostgreSQL, a
        // JSON array on SQLite).
        let (outbox_pending, outbox_delete) = match engine {
            Engine::Postgres => (
                format!(
                    // One hashed lookup per row (`<> all` would compare each row
                    // with every element).
                    "select seq, payload from {schema}.outbox \
                     where seq not in (select unnest($2::bigint[])) order by seq limit $1"
                ),
                format!("delete from {schema}.outbox where seq = any($1)"),
            ),
            Engine::Sqlite => (
                format!(
                    "select seq, payload from {schema}.outbox \
                     where seq not in (select value from json_each($2)) order by seq limit $1"
                ),
                format!("delete from {schema}.outbox where seq in (select value from json_each($1))"),
            ),
        };
        Self {
            outbox_insert: format!(
                "insert into {schema}.outbox (event_id, event_type, tenant_id, payload) values ($1, $2, $3, $4)"
            ),
            outbox_pending,
            outbox_delete,
            inbox_insert_many: match engine {
                Engine::Postgres => format!(
                    "insert into {schema}.inbox (consumer, event_id) select $1, unnest($2::uuid[]) \
                     on conflict do nothing returning event_id"
                ),
                // `where true` lets SQLite parse the upsert clause after a select.
                Engine::Sqlite => format!(
                    "insert into {schema}.inbox (consumer, event_id) select $1, value from json_each($2) \
                     where true on conflict do nothing returning event_id"
                ),
            },
            inbox_insert: format!(
                "insert into {schema}.inbox (consumer, event_id) values ($1, $2) on conflict do nothing"
            ),
            inbox_prune: format!(
                "delete from {schema}.inbox where consumer = $1 and event_id in \
                 (select event_id from {schema}.inbox where consumer = $1 and event_id < $2 \
                 order by event_id limit $3)"
            ),
            dead_letter_insert: format!(
                "insert into {schema}.dead_letters (consumer, event_id, tenant_id, event_type, payload, error) values ($1, $2, $3, $4, $5, $6)"
            ),
        }
    }
}

/// A tenant transaction on either engine, for code that is the same on both
/// (event consumers, emitting events). Store implementations take the variant
/// of their engine with [`Tx::postgres`] / [`Tx::sqlite`].
pub enum Tx {
    /// PostgreSQL.
    Postgres(PgTx),
    /// SQLite.
    Sqlite(SqliteTx),
}

impl Tx {
    /// The tenant.
    pub fn tenant(&self) -> crate::tenant::TenantId {
        match self {
            Self::Postgres(t) => t.tenant(),
            Self::Sqlite(t) => t.tenant(),
        }
    }

    /// The PostgreSQL transaction, if that is the engine.
    pub fn postgres(&mut self) -> Option<&mut PgTx> {
        match self {
            Self::Postgres(t) => Some(t),
            Self::Sqlite(_) => None,
        }
    }

    /// The SQLite transaction, if that is the engine.
    pub fn sqlite(&mut self) -> Option<&mut SqliteTx> {
        match self {
            Self::Sqlite(t) => Some(t),
            Self::Postgres(_) => None,
        }
    }

    /// Writes an event to the outbox in this transaction.
    pub async fn emit<T: serde::Serialize>(
        &mut self,
        event_type: &str,
        actor: &str,
        data: &T,
    ) -> Result<crate::events::Envelope, DbError> {
        match self {
            Self::Postgres(t) => t.emit(event_type, actor, data).await,
            Self::Sqlite(t) => t.emit(event_type, actor, data).await,
        }
    }

    /// Records that `consumer` handled these events; returns the ids it had not
    /// handled before (one statement on PostgreSQL, however many ids).
    pub(crate) async fn mark_handled_many(
        &mut self,
        consumer: &str,
        ids: &[uuid::Uuid],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, DbError> {
        match self {
            Self::Postgres(t) => t.mark_handled_many(consumer, ids).await,
            Self::Sqlite(t) => t.mark_handled_many(consumer, ids).await,
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Self::Postgres(t) => t.commit().await,
            Self::Sqlite(t) => t.commit().await,
        }
    }
}

impl Db {
    /// Inserts events of any tenants into the outbox in one system transaction.
    #[cfg(feature = "testing")]
    async fn append_outbox<'e>(
        &self,
        events: impl Iterator<Item = &'e crate::events::Envelope>,
    ) -> Result<(), DbError> {
        let insert = &self.shared().sql.outbox_insert;
        let events: Vec<&crate::events::Envelope> = events.collect();
        if let Some(bad) = events.iter().find(|e| !crate::events::valid_event_type(&e.event_type)) {
            return Err(DbError::InvalidEvent(bad.event_type.clone()));
        }
        match self {
            Self::Postgres(pg) => {
                let mut tx = pg.begin_system().await?;
                for e in events {
                    sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                        .bind(e.event_id)
                        .bind(e.event_type.clone())
                        .bind(e.tenant_id.as_uuid())
                        .bind(sqlx::types::Json(e.clone()))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Self::Sqlite(lite) => {
                let mut tx = lite.begin_system().await?;
                for e in events {
                    sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                        .bind(e.event_id.hyphenated().to_string())
                        .bind(e.event_type.clone())
                        .bind(e.tenant_id.to_string())
                        .bind(sqlx::types::Json(e.clone()))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        self.shared().relay.notify_one();
        Ok(())
    }

    /// Writes an event into the outbox again: what a crash between publishing
    /// and clearing the outbox leaves behind. Tests only.
    #[cfg(feature = "testing")]
    pub async fn outbox_reinsert(&self, envelope: &crate::events::Envelope) -> Result<(), DbError> {
        self.append_outbox(std::iter::once(envelope)).await
    }

    /// Rows in this schema's outbox and dead letters (all tenants). Tests only.
    #[cfg(feature = "testing")]
    pub async fn kernel_counts(&self) -> Result<(i64, i64), DbError> {
        let s = self.schema();
        let sql =
            format!("select (select count(*) from {s}.outbox), (select count(*) from {s}.dead_letters)");
        Ok(match self {
            Self::Postgres(pg) => {
                let mut tx = pg.begin_system().await?;
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *tx).await?
            }
            Self::Sqlite(lite) => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(lite.reader()).await?,
        })
    }

    /// Rows in a consumer's inbox. Tests only.
    #[cfg(feature = "testing")]
    pub async fn inbox_count(&self, consumer: &str) -> Result<i64, DbError> {
        let sql = format!("select count(*) from {}.inbox where consumer = $1", self.schema());
        Ok(match self {
            Self::Postgres(pg) => {
                let mut tx = pg.begin_system().await?;
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(consumer).fetch_one(&mut *tx).await?
            }
            Self::Sqlite(lite) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(consumer).fetch_one(lite.reader()).await?
            }
        })
    }

    /// A read-only transaction for `tenant` (SQLite's reader pool: it never waits for the writer).
    pub async fn read(&self, tenant: crate::tenant::TenantId) -> Result<Tx, DbError> {
        Ok(match self {
            Self::Postgres(d) => Tx::Postgres(d.read(tenant).await?),
            Self::Sqlite(d) => Tx::Sqlite(d.read(tenant).await?),
        })
    }

    /// A write transaction for `tenant`.
    pub async fn begin(&self, tenant: crate::tenant::TenantId) -> Result<Tx, DbError> {
        Ok(match self {
            Self::Postgres(d) => Tx::Postgres(d.begin(tenant).await?),
            Self::Sqlite(d) => Tx::Sqlite(d.begin(tenant).await?),
        })
    }
}
