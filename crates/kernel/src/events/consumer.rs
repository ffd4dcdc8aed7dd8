//! Idempotent consumers: each event is applied in a tenant transaction that also
//! records its id in the consumer's inbox, so redelivery has no second effect.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::{BusError, Envelope};
use crate::background::Lane;
use crate::db::{Db, DbError, Tx};

/// What a consumer does with one event, inside the transaction that marks it handled.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies `event` in `tx` (already scoped to the event's tenant).
    async fn handle(&self, tx: &mut Tx, event: &Envelope) -> Result<(), HandlerError>;

    /// Applies a run of events of one tenant, none of them seen before, in one
    /// transaction. The default applies them one by one; a handler that
    /// aggregates (analytics' rollups) overrides it to write once per key.
    async fn handle_batch(&self, tx: &mut Tx, events: &[Envelope]) -> Result<(), HandlerError> {
        for event in events {
            self.handle(tx, event).await?;
        }
        Ok(())
    }

    /// Whether [`Handler::handle_batch`] itself applies an event at most once,
    /// however often it is delivered: its writes are keyed on the event id and
    /// skip what is already stored, in the same transaction, and they wait for
    /// (then skip) a concurrent writer of the same event. The kernel then keeps
    /// no inbox rows for this consumer, which saves a write per event on a
    /// high-rate stream (analytics' clicks). Duplicates within one delivered
    /// batch reach the handler too.
    fn deduplicates(&self) -> bool {
        false
    }

    /// How many batches of `event_type` this consumer may apply at once in
    /// one process. On NATS each is its own pull loop on the durable, as a
    /// second instance would be; the in-process bus applies one at a time.
    /// More than one means batches commit in any order: only for events whose
    /// effects commute (counts), and whose concurrent transactions cannot
    /// deadlock. Applying a batch is mostly waiting on the database, so one
    /// loop leaves a core idle.
    fn concurrency(&self, event_type: &str) -> usize {
        let _ = event_type;
        1
    }

    /// Runs once the transaction that applied `events` has committed: the place
    /// to evict caches, so a reader can never re-cache the state from before.
    async fn committed(&self, events: &[Envelope]) {
        let _ = events;
    }
}

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Transient: redeliver later.
    #[error("retry: {0}")]
    Retry(String),
    /// The event itself is bad: move it to the dead letters and go on.
    #[error("rejected: {0}")]
    Reject(String),
}

impl From<DbError> for HandlerError {
    fn from(e: DbError) -> Self {
        Self::Retry(e.to_string())
    }
}

/// A named, durable subscription of one service to some event types.
#[derive(Clone)]
pub struct Consumer {
    /// Durable name, unique across the platform (`analytics.clicks`).
    pub name: &'static str,
    /// Event types it receives.
    pub event_types: &'static [&'static str],
    /// What it does with them.
    pub handler: Arc<dyn Handler>,
    /// The background lane it runs on: [`Lane::Prompt`] when a user waits for
    /// its effect (a read model), [`Lane::Bulk`] for high-rate events that may
    /// lag under load (clicks).
    pub lane: Lane,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("event_types", &self.event_types)
            .field("lane", &self.lane)
            .finish()
    }
}

/// Applies a delivered batch. `Err` means: redeliver the whole batch (what was
/// already applied is skipped through the inbox).
pub(crate) async fn process(db: &Db, consumer: &Consumer, events: &[Envelope]) -> Result<(), BusError> {
    // One transaction per run of same-tenant events keeps batches cheap and in order.
    let mut start = 0;
    while start < events.len() {
        let tenant = events[start].tenant_id;
        let end =
            events[start..].iter().position(|e| e.tenant_id != tenant).map_or(events.len(), |p| start + p);
        let run = &events[start..end];
        match apply(db, consumer, run).await {
            Ok(()) => {}
            Err(HandlerError::Retry(m)) => return Err(BusError::Handler(m)),
            Err(HandlerError::Reject(_)) => {
                for event in run {
                    match apply(db, consumer, std::slice::from_ref(event)).await {
                        Ok(()) => {}
                        Err(HandlerError::Retry(m)) => return Err(BusError::Handler(m)),
                        Err(HandlerError::Reject(m)) => {
                            let payload = serde_json::to_string(event).unwrap_or_default();
                            dead_letter(db, consumer.name, Some(event), &payload, &m).await?;
                        }
                    }
                }
            }
        }
        metrics::counter!("events_consumed_total", "consumer" => consumer.name).increment(run.len() as u64);
        start = end;
    }
    Ok(())
}

async fn apply(db: &Db, consumer: &Consumer, run: &[Envelope]) -> Result<(), HandlerError> {
    let Some(first) = run.first() else { return Ok(()) };
    let mut tx = db.begin(first.tenant_id).await?;
    let applied: std::borrow::Cow<'_, [Envelope]> = if consumer.handler.deduplicates() {
        std::borrow::Cow::Borrowed(run)
    } else {
        inbox_filter(&mut tx, consumer.name, run).await?
    };
    if !applied.is_empty() {
        consumer.handler.handle_batch(&mut tx, &applied).await?;
    }
    tx.commit().await?;
    if !applied.is_empty() {
        consumer.handler.committed(&applied).await;
    }
    Ok(())
}

/// Records `run` in the consumer's inbox and keeps the events not seen before.
async fn inbox_filter<'r>(
    tx: &mut Tx,
    consumer: &str,
    run: &'r [Envelope],
) -> Result<std::borrow::Cow<'r, [Envelope]>, HandlerError> {
    let ids: Vec<uuid::Uuid> = run.iter().map(|e| e.event_id).collect();
    let fresh = tx.mark_handled_many(consumer, &ids).await?;
    // Usually every event is new and the batch is applied as it came. Otherwise
    // only the new ones, each once (a redelivery may race the original).
    Ok(if fresh.len() == run.len() {
        std::borrow::Cow::Borrowed(run)
    } else {
        let mut seen = std::collections::HashSet::with_capacity(fresh.len());
        run.iter().filter(|e| fresh.contains(&e.event_id) && seen.insert(e.event_id)).cloned().collect()
    })
}

/// Keeps an event a consumer cannot handle (or cannot even parse), marks it
/// handled so it is not retried forever, and counts it.
pub(crate) async fn dead_letter(
    db: &Db,
    consumer: &str,
    event: Option<&Envelope>,
    payload: &str,
    error: &str,
) -> Result<(), DbError> {
    tracing::warn!(consumer, event_id = ?event.map(|e| e.event_id), error, "event moved to dead letters");
    metrics::counter!("events_dead_lettered_total", "consumer" => consumer.to_string()).increment(1);
    let (event_id, tenant, kind) =
        (event.map(|e| e.event_id), event.map(|e| e.tenant_id), event.map(|e| e.event_type.clone()));
    let sql = &db.shared().sql;
    let (insert, inbox) = (sql.dead_letter_insert.clone(), sql.inbox_insert.clone());
    match db {
        Db::Postgres(pg) => {
            let mut tx = pg.begin_system().await?;
            sqlx::query(AssertSqlSafe(insert))
                .bind(consumer.to_string())
                .bind(event_id)
                .bind(tenant.map(|t| t.as_uuid()))
                .bind(kind)
                .bind(payload.to_string())
                .bind(error.to_string())
                .execute(&mut *tx)
                .await?;
            if let Some(id) = event_id {
                sqlx::query(AssertSqlSafe(inbox))
                    .bind(consumer.to_string())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Db::Sqlite(lite) => {
            let mut tx = lite.begin_system().await?;
            sqlx::query(AssertSqlSafe(insert))
                .bind(consumer.to_string())
                .bind(event_id.map(|u| u.hyphenated().to_string()))
                .bind(tenant.map(|t| t.to_string()))
                .bind(kind)
                .bind(payload.to_string())
                .bind(error.to_string())
                .execute(&mut *tx)
                .await?;
            if let Some(id) = event_id {
                sqlx::query(AssertSqlSafe(inbox))
                    .bind(consumer.to_string())
                    .bind(id.hyphenated().to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// How long a consumer's inbox remembers an event, counted from when the event
/// was made: longer than any bus keeps one it could deliver again (JetStream's
/// stream keeps events 7 days from publication; the outbox and the journal
/// publish within seconds, or at the next start), with a week to spare for an
/// event that waited to be published. Without a bound the inbox would grow by
/// a row per handled event forever.
pub const INBOX_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often each inbox is pruned.
pub const INBOX_PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long after start the first pruning waits: startup (migrations, the
/// relays' first rounds over what a crash left) goes first, and the outcome
/// of events handled in the first minute does not depend on whether the
/// pruner's task happened to be scheduled before or after them.
pub const INBOX_PRUNE_FIRST: Duration = Duration::from_secs(60);
/// Rows deleted per transaction while pruning (short transactions).
const PRUNE_STEP: i64 = 10_000;

/// The smallest UUIDv7 of a moment: every event made before it has a smaller id.
fn first_id_at(at: SystemTime) -> uuid::Uuid {
    let ms = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    uuid::Uuid::from_bytes(bytes)
}

/// Forgets `consumer`'s inbox entries for events made more than `retention`
/// ago (by the time in their UUIDv7 ids, along the primary key), in short
/// transactions; returns how many it removed. An event older than that is
/// no longer recognised if it is delivered again.
pub async fn prune_inbox(db: &Db, consumer: &str, retention: Duration) -> Result<u64, DbError> {
    prune_until(db, consumer, retention, &tokio_util::sync::CancellationToken::new()).await
}

/// [`prune_inbox`], stopping between steps once `stop` is cancelled.
async fn prune_until(
    db: &Db,
    consumer: &str,
    retention: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<u64, DbError> {
    let before = first_id_at(SystemTime::now().checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH));
    let mut removed = 0;
    while !stop.is_cancelled() {
        let n = prune_step(db, consumer, before).await?;
        removed += n;
        if n < PRUNE_STEP as u64 {
            break;
        }
    }
    Ok(removed)
}

/// Deletes at most [`PRUNE_STEP`] of `consumer`'s entries for events made before `before`.
async fn prune_step(db: &Db, consumer: &str, before: uuid::Uuid) -> Result<u64, DbError> {
    let sql = AssertSqlSafe(db.shared().sql.inbox_prune.clone());
    Ok(match db {
        Db::Postgres(pg) => {
            let mut tx = pg.begin_system().await?;
            let q = sqlx::query(sql).bind(consumer).bind(before).bind(PRUNE_STEP);
            let n = q.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        }
        Db::Sqlite(lite) => {
            let mut tx = lite.begin_system().await?;
            let q = sqlx::query(sql).bind(consumer).bind(before.hyphenated().to_string()).bind(PRUNE_STEP);
            let n = q.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        }
    })
}

/// Prunes the inboxes of `consumers` [`INBOX_PRUNE_FIRST`] after start and
/// every [`INBOX_PRUNE_EVERY`] after that until `stop` (which also ends a run
/// between two steps, so shutdown does not wait for a large backlog).
pub async fn run_inbox_pruning(
    consumers: Vec<(&'static str, Db)>,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(INBOX_PRUNE_FIRST) => {}
    }
    loop {
        for (name, db) in &consumers {
            let run = tokio::select! {
                _ = stop.cancelled() => return,
                run = prune_until(db, name, INBOX_RETENTION, &stop) => run,
            };
            match run {
                Ok(0) => {}
                Ok(n) => tracing::info!(consumer = name, removed = n, "inbox pruned"),
                Err(e) => tracing::warn!(consumer = name, error = %e, "inbox pruning failed; will retry"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(INBOX_PRUNE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_moment_sorts_after_earlier_events_and_before_later_ones() {
        let at = SystemTime::now();
        let cut = first_id_at(at);
        let earlier = uuid::Uuid::now_v7();
        std::thread::sleep(Duration::from_millis(2));
        let cut_later = first_id_at(SystemTime::now());
        assert!(earlier < cut_later, "an event made before the moment sorts below it");
        assert!(
            earlier.hyphenated().to_string() < cut_later.hyphenated().to_string(),
            "as text too (SQLite)"
        );
        let later = uuid::Uuid::now_v7();
        assert!(later > cut, "an event made after the moment sorts above it");
        assert_eq!(cut.get_version_num(), 7);
    }
}
