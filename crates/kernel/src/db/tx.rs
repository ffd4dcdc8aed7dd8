//! Tenant-scoped transactions. The only way a service runs SQL: each statement
//! is built from the transaction, which binds the tenant as `$1`; on PostgreSQL
//! the transaction has also set `app.tenant_id`, so row-level security agrees.

use std::sync::Arc;

use serde::Serialize;
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{AssertSqlSafe, Database, Encode, FromRow, Postgres, Sqlite, Type};

use super::{DbError, SchemaShared};
use crate::events::{Envelope, Payload};
use crate::tenant::TenantId;

/// A statement already bound to a transaction's tenant; bind the rest with `bind`.
#[must_use = "run it with the transaction's execute/fetch methods"]
pub struct Scoped<Q> {
    inner: Result<Q, DbError>,
}

/// A named savepoint inside a transaction (see `savepoint` on the transaction
/// types). The name is an SQL identifier, checked when the value is made.
#[derive(Debug, Clone, Copy)]
pub struct Savepoint(&'static str);

impl Savepoint {
    /// A savepoint called `name`: a lower-case letter, then lower-case letters,
    /// digits or `_`. Anything else is a programming error, caught at compile
    /// time when this is used in a `const`.
    pub const fn new(name: &'static str) -> Self {
        let b = name.as_bytes();
        assert!(
            !b.is_empty() && b.len() <= 63 && b[0].is_ascii_lowercase(),
            "a savepoint name is an identifier"
        );
        let mut i = 1;
        while i < b.len() {
            assert!(
                b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b[i] == b'_',
                "a savepoint name is an identifier"
            );
            i += 1;
        }
        Self(name)
    }
}

/// A statement must compare `tenant_id` with `$1` (not `$10`) and must not touch
/// the session's role or settings, which row-level security relies on.
///
/// A statement that passed once passes again without being read: a `'static`
/// text never changes, so its address and length name it. (Every statement is
/// checked each time it is made, and reading one copies and splits its text.)
pub(crate) fn check(sql: &'static str) -> Result<(), DbError> {
    type Passed = std::collections::HashSet<(usize, usize), foldhash::fast::FixedState>;
    static PASSED: std::sync::LazyLock<std::sync::RwLock<Passed>> =
        std::sync::LazyLock::new(Default::default);
    let key = (sql.as_ptr() as usize, sql.len());
    if PASSED.read().is_ok_and(|p| p.contains(&key)) {
        return Ok(());
    }
    check_text(sql)?;
    if let Ok(mut p) = PASSED.write() {
        p.insert(key);
    }
    Ok(())
}

fn check_text(sql: &'static str) -> Result<(), DbError> {
    check_global(sql)?;
    let lower = sql.to_ascii_lowercase();
    let scoped = lower.match_indices("tenant_id").any(|(i, m)| {
        let rest = lower[i + m.len()..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else { return false };
        let Some(rest) = rest.trim_start().strip_prefix("$1") else { return false };
        !rest.starts_with(|c: char| c.is_ascii_digit())
    });
    // An insert names tenant_id as its first column and `$1` as its first value.
    let compact: String = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    let insert = compact.starts_with("insert into ")
        && compact.split_once('(').is_some_and(|(_, cols)| cols.trim_start().starts_with("tenant_id"))
        && compact.split_once("values").is_some_and(|(_, vals)| {
            vals.trim_start()
                .strip_prefix('(')
                .and_then(|v| v.trim_start().strip_prefix("$1"))
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
    // Or takes its rows from a select whose first value is `$1` (bulk inserts from arrays).
    let insert_select = compact.starts_with("insert into ")
        && compact.split_once('(').is_some_and(|(_, cols)| cols.trim_start().starts_with("tenant_id"))
        && compact.split_once(") select ").is_some_and(|(_, vals)| {
            vals.strip_prefix("$1").is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
    if scoped || insert || insert_select { Ok(()) } else { Err(DbError::Unscoped(sql)) }
}

#[cfg(test)]
mod tests {
    use super::{Savepoint, check};

    #[test]
    #[should_panic(expected = "a savepoint name is an identifier")]
    fn a_savepoint_name_that_is_not_an_identifier_is_refused() {
        let _ = Savepoint::new("raw; drop table x");
    }

    #[test]
    fn a_savepoint_name_may_hold_digits_and_underscores() {
        assert_eq!(Savepoint::new("raw_events2").0, "raw_events2");
    }

    #[test]
    fn only_statements_bound_to_the_tenant_pass() {
        assert!(check("select id from x.t where tenant_id = $1 and id = $2").is_ok());
        assert!(check("select id from x.t where tenant_id=$1").is_ok());
        assert!(check("insert into x.t (tenant_id, id) values ($1, $2)").is_ok());
        assert!(check("insert into x.t (id, tenant_id) values ($1, $2)").is_err());
        assert!(check("insert into x.t (tenant_id, id) values ($2, $1)").is_err());
        assert!(check("insert into x.t (tenant_id, id) select $1, unnest($2::uuid[])").is_ok());
        assert!(check("insert into x.t (tenant_id, id) select $2, unnest($1::uuid[])").is_err());
        assert!(check("insert into x.t (tenant_id, id) select $12, x from y").is_err());
        assert!(check("select id from x.t where id = $1").is_err());
        assert!(check("select id from x.t where tenant_id = $10").is_err());
        assert!(check("select set_config('app.tenant_id', $2, true) where tenant_id = $1").is_err());
        assert!(check("reset role; select 1 where tenant_id = $1").is_err());
        assert!(check("RESET  ALL; select 1 where tenant_id = $1").is_err());
        assert!(check("update x.t set used_at = $2 where tenant_id = $1 and purpose = 'reset'").is_ok());
        assert!(check("update x.t set role = $2 where tenant_id = $1").is_ok());
        assert!(check("select 1 where tenant_id = $1; set role postgres").is_err());
    }
}

/// What every transaction type has: running statements, commit and rollback.
macro_rules! tx_common {
    ($DB:ty) => {
        /// Runs a statement; returns the rows affected.
        pub async fn execute<'q>(
            &mut self,
            q: Scoped<Query<'q, $DB, <$DB as Database>::Arguments>>,
        ) -> Result<u64, DbError> {
            Ok(q.inner?.execute(&mut *self.tx).await?.rows_affected())
        }

        /// All rows.
        pub async fn fetch_all<'q, O>(
            &mut self,
            q: Scoped<QueryAs<'q, $DB, O, <$DB as Database>::Arguments>>,
        ) -> Result<Vec<O>, DbError>
        where
            O: Send + Unpin + for<'r> FromRow<'r, <$DB as Database>::Row>,
        {
            Ok(q.inner?.fetch_all(&mut *self.tx).await?)
        }

        /// At most one row.
        pub async fn fetch_optional<'q, O>(
            &mut self,
            q: Scoped<QueryAs<'q, $DB, O, <$DB as Database>::Arguments>>,
        ) -> Result<Option<O>, DbError>
        where
            O: Send + Unpin + for<'r> FromRow<'r, <$DB as Database>::Row>,
        {
            Ok(q.inner?.fetch_optional(&mut *self.tx).await?)
        }

        /// Exactly one row.
        pub async fn fetch_one<'q, O>(
            &mut self,
            q: Scoped<QueryAs<'q, $DB, O, <$DB as Database>::Arguments>>,
        ) -> Result<O, DbError>
        where
            O: Send + Unpin + for<'r> FromRow<'r, <$DB as Database>::Row>,
        {
            Ok(q.inner?.fetch_one(&mut *self.tx).await?)
        }

        /// One value of one row.
        pub async fn scalar<'q, O>(
            &mut self,
            q: Scoped<QueryScalar<'q, $DB, O, <$DB as Database>::Arguments>>,
        ) -> Result<O, DbError>
        where
            O: Send + Unpin,
            (O,): Send + Unpin + for<'r> FromRow<'r, <$DB as Database>::Row>,
        {
            Ok(q.inner?.fetch_one(&mut *self.tx).await?)
        }

        /// Sets a savepoint: what follows can be undone with
        /// [`rollback_to`](Self::rollback_to) while the transaction goes on.
        /// Pair it with [`release`](Self::release).
        pub async fn savepoint(&mut self, point: Savepoint) -> Result<(), DbError> {
            self.savepoint_statement("savepoint", point).await
        }

        /// Undoes everything since `point` was set; the savepoint stays set.
        pub async fn rollback_to(&mut self, point: Savepoint) -> Result<(), DbError> {
            self.savepoint_statement("rollback to savepoint", point).await
        }

        /// Keeps what was done since `point` and forgets the savepoint.
        pub async fn release(&mut self, point: Savepoint) -> Result<(), DbError> {
            self.savepoint_statement("release savepoint", point).await
        }

        async fn savepoint_statement(&mut self, verb: &str, point: Savepoint) -> Result<(), DbError> {
            sqlx::query(AssertSqlSafe(format!("{verb} {}", point.0))).execute(&mut *self.tx).await?;
            Ok(())
        }

        /// Commits, then wakes the outbox relay if an event was written.
        pub async fn commit(self) -> Result<(), DbError> {
            let (shared, emitted) = (self.shared.clone(), self.emitted);
            self.tx.commit().await?;
            if emitted {
                shared.relay.notify_one();
            }
            Ok(())
        }

        /// Abandons every change (also what dropping the transaction does).
        pub async fn rollback(self) -> Result<(), DbError> {
            Ok(self.tx.rollback().await?)
        }
    };
}

macro_rules! tenant_tx {
    ($(#[$doc:meta])* $Tx:ident, $DB:ty, $tenant:expr, $uuid:expr) => {
        $(#[$doc])*
        pub struct $Tx {
            tx: sqlx::Transaction<'static, $DB>,
            tenant: TenantId,
            shared: Arc<SchemaShared>,
            emitted: bool,
        }

        impl<'q> Scoped<Query<'q, $DB, <$DB as Database>::Arguments>> {
            /// Binds the next parameter (`$2`, `$3`, …).
            pub fn bind<T: 'q + Encode<'q, $DB> + Type<$DB>>(self, value: T) -> Self {
                Self { inner: self.inner.map(|q| q.bind(value)) }
            }
        }

        impl<'q, O> Scoped<QueryAs<'q, $DB, O, <$DB as Database>::Arguments>> {
            /// Binds the next parameter (`$2`, `$3`, …).
            pub fn bind<T: 'q + Encode<'q, $DB> + Type<$DB>>(self, value: T) -> Self {
                Self { inner: self.inner.map(|q| q.bind(value)) }
            }
        }

        impl<'q, O> Scoped<QueryScalar<'q, $DB, O, <$DB as Database>::Arguments>> {
            /// Binds the next parameter (`$2`, `$3`, …).
            pub fn bind<T: 'q + Encode<'q, $DB> + Type<$DB>>(self, value: T) -> Self {
                Self { inner: self.inner.map(|q| q.bind(value)) }
            }
        }

        impl $Tx {
            pub(crate) fn new(tx: sqlx::Transaction<'static, $DB>, tenant: TenantId, shared: Arc<SchemaShared>) -> Self {
                Self { tx, tenant, shared, emitted: false }
            }

            /// The tenant every statement of this transaction is bound to.
            pub fn tenant(&self) -> TenantId {
                self.tenant
            }

            /// A statement whose `$1` is the tenant; it must say `tenant_id`.
            pub fn query<'q>(&self, sql: &'static str) -> Scoped<Query<'q, $DB, <$DB as Database>::Arguments>> {
                let tenant = self.tenant;
                Scoped { inner: check(sql).map(|()| sqlx::query(sql).bind($tenant(tenant))) }
            }

            /// A statement returning rows of `O`, `$1` bound to the tenant.
            pub fn query_as<'q, O>(&self, sql: &'static str) -> Scoped<QueryAs<'q, $DB, O, <$DB as Database>::Arguments>>
            where
                O: for<'r> FromRow<'r, <$DB as Database>::Row>,
            {
                let tenant = self.tenant;
                Scoped { inner: check(sql).map(|()| sqlx::query_as(sql).bind($tenant(tenant))) }
            }

            /// A statement returning one column, `$1` bound to the tenant.
            pub fn query_scalar<'q, O>(&self, sql: &'static str) -> Scoped<QueryScalar<'q, $DB, O, <$DB as Database>::Arguments>>
            where
                (O,): for<'r> FromRow<'r, <$DB as Database>::Row>,
            {
                let tenant = self.tenant;
                Scoped { inner: check(sql).map(|()| sqlx::query_scalar(sql).bind($tenant(tenant))) }
            }

            tx_common!($DB);

            /// Writes an event into this service's outbox in this transaction: it is
            /// published if and only if the transaction commits.
            pub async fn emit<T: Serialize>(&mut self, event_type: &str, actor: &str, data: &T) -> Result<Envelope, DbError> {
                let envelope = Envelope::new(event_type, self.tenant, actor, Payload::of(data)?);
                self.emit_envelope(&envelope).await?;
                Ok(envelope)
            }

            pub(crate) async fn emit_envelope(&mut self, envelope: &Envelope) -> Result<(), DbError> {
                if !crate::events::valid_event_type(&envelope.event_type) {
                    return Err(DbError::InvalidEvent(envelope.event_type.clone()));
                }
                sqlx::query(AssertSqlSafe(self.shared.sql.outbox_insert.clone()))
                    .bind($uuid(envelope.event_id))
                    .bind(envelope.event_type.clone())
                    .bind($tenant(envelope.tenant_id))
                    .bind(sqlx::types::Json(envelope.clone()))
                    .execute(&mut *self.tx)
                    .await?;
                self.emitted = true;
                Ok(())
            }

        }
    };
}

impl PgTx {
    /// Records that `consumer` handled `ids`; returns those it had not handled before.
    pub(crate) async fn mark_handled_many(
        &mut self,
        consumer: &str,
        ids: &[uuid::Uuid],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, DbError> {
        let fresh: Vec<uuid::Uuid> =
            sqlx::query_scalar(AssertSqlSafe(self.shared.sql.inbox_insert_many.clone()))
                .bind(consumer.to_string())
                .bind(ids)
                .fetch_all(&mut *self.tx)
                .await?;
        Ok(fresh.into_iter().collect())
    }
}

impl SqliteTx {
    /// Records that `consumer` handled `ids` in one statement (one round trip to
    /// the connection's thread, not one per event); returns those it had not
    /// handled before.
    pub(crate) async fn mark_handled_many(
        &mut self,
        consumer: &str,
        ids: &[uuid::Uuid],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, DbError> {
        let json = serde_json::to_string(ids)?;
        let fresh: Vec<String> = sqlx::query_scalar(AssertSqlSafe(self.shared.sql.inbox_insert_many.clone()))
            .bind(consumer.to_string())
            .bind(json)
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(fresh.iter().filter_map(|s| uuid::Uuid::parse_str(s).ok()).collect())
    }
}

tenant_tx!(
    /// A PostgreSQL transaction for one tenant (`app.tenant_id` is set in it).
    PgTx, Postgres, |t: TenantId| t.as_uuid(), |u: uuid::Uuid| u
);
tenant_tx!(
    /// A SQLite transaction for one tenant.
    SqliteTx, Sqlite, |t: TenantId| t.to_string(), |u: uuid::Uuid| u.hyphenated().to_string()
);

/// A statement of a global transaction must not touch the session's role or
/// settings; it needs no tenant (the tables it may see have no row-level policy).
pub(crate) fn check_global(sql: &'static str) -> Result<(), DbError> {
    let lower = sql.to_ascii_lowercase();
    let forbidden = ["set_config", "app.scope", "app.tenant_id"];
    // A statement of its own that changes session state: `set role …`, `reset all`, `discard all`.
    let session = lower
        .split(';')
        .map(str::trim_start)
        .any(|stmt| ["set ", "reset ", "discard ", "set\t", "reset\t"].iter().any(|p| stmt.starts_with(p)));
    if session || forbidden.iter().any(|f| lower.contains(f)) { Err(DbError::Unscoped(sql)) } else { Ok(()) }
}

macro_rules! global_tx {
    ($(#[$doc:meta])* $Tx:ident, $DB:ty) => {
        $(#[$doc])*
        pub struct $Tx {
            tx: sqlx::Transaction<'static, $DB>,
            shared: Arc<SchemaShared>,
            emitted: bool,
        }

        impl $Tx {
            pub(crate) fn new(tx: sqlx::Transaction<'static, $DB>, shared: Arc<SchemaShared>) -> Self {
                Self { tx, shared, emitted: false }
            }

            /// A statement on the service's global (tenant-less) tables.
            pub fn query<'q>(&self, sql: &'static str) -> Scoped<Query<'q, $DB, <$DB as Database>::Arguments>> {
                Scoped { inner: check_global(sql).map(|()| sqlx::query(sql)) }
            }

            /// A statement returning rows of `O`.
            pub fn query_as<'q, O>(&self, sql: &'static str) -> Scoped<QueryAs<'q, $DB, O, <$DB as Database>::Arguments>>
            where
                O: for<'r> FromRow<'r, <$DB as Database>::Row>,
            {
                Scoped { inner: check_global(sql).map(|()| sqlx::query_as(sql)) }
            }

            /// A statement returning one column.
            pub fn query_scalar<'q, O>(&self, sql: &'static str) -> Scoped<QueryScalar<'q, $DB, O, <$DB as Database>::Arguments>>
            where
                (O,): for<'r> FromRow<'r, <$DB as Database>::Row>,
            {
                Scoped { inner: check_global(sql).map(|()| sqlx::query_scalar(sql)) }
            }

            tx_common!($DB);
        }
    };
}

global_tx!(
    /// A PostgreSQL transaction with no tenant: it sees the service's global
    /// tables (identity's accounts and sessions), and no row of a tenant table.
    PgGlobalTx, Postgres
);
global_tx!(
    /// A SQLite transaction with no tenant (see [`PgGlobalTx`]).
    SqliteGlobalTx, Sqlite
);

impl PgGlobalTx {
    /// Writes an event of `tenant` into the outbox in this transaction.
    pub async fn emit<T: Serialize>(
        &mut self,
        tenant: TenantId,
        event_type: &str,
        actor: &str,
        data: &T,
    ) -> Result<Envelope, DbError> {
        let envelope = Envelope::new(event_type, tenant, actor, Payload::of(data)?);
        if !crate::events::valid_event_type(&envelope.event_type) {
            return Err(DbError::InvalidEvent(envelope.event_type.clone()));
        }
        // The outbox is a tenant table: its policy admits the row for its own tenant only.
        sqlx::query("select set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(AssertSqlSafe(self.shared.sql.outbox_insert.clone()))
            .bind(envelope.event_id)
            .bind(envelope.event_type.clone())
            .bind(tenant.as_uuid())
            .bind(sqlx::types::Json(envelope.clone()))
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("select set_config('app.tenant_id', '', true)").execute(&mut *self.tx).await?;
        self.emitted = true;
        Ok(envelope)
    }
}

impl SqliteGlobalTx {
    /// Writes an event of `tenant` into the outbox in this transaction.
    pub async fn emit<T: Serialize>(
        &mut self,
        tenant: TenantId,
        event_type: &str,
        actor: &str,
        data: &T,
    ) -> Result<Envelope, DbError> {
        let envelope = Envelope::new(event_type, tenant, actor, Payload::of(data)?);
        if !crate::events::valid_event_type(&envelope.event_type) {
            return Err(DbError::InvalidEvent(envelope.event_type.clone()));
        }
        sqlx::query(AssertSqlSafe(self.shared.sql.outbox_insert.clone()))
            .bind(envelope.event_id.hyphenated().to_string())
            .bind(envelope.event_type.clone())
            .bind(tenant.to_string())
            .bind(sqlx::types::Json(envelope.clone()))
            .execute(&mut *self.tx)
            .await?;
        self.emitted = true;
        Ok(envelope)
    }
}
