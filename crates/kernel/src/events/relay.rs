//! The outbox relay: publishes a service's committed events in order and then
//! removes them. A crash between the two publishes them again (at least once);
//! consumers' inboxes make the effect happen once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::AssertSqlSafe;
use sqlx::types::Json;
use tokio_util::sync::CancellationToken;

use super::consumer::dead_letter;
use super::{Bus, BusError, Envelope};
use crate::db::Db;

const BATCH: i64 = 256;

struct Decoded {
    seqs: Vec<i64>,
    events: Vec<Envelope>,
    /// Rows that are not envelopes: kept as dead letters rather than blocking the queue.
    unreadable: Vec<(String, String)>,
}

fn decode(rows: Vec<(i64, Json<Box<RawValue>>)>) -> Decoded {
    let mut d = Decoded {
        seqs: Vec::with_capacity(rows.len()),
        events: Vec::with_capacity(rows.len()),
        unreadable: Vec::new(),
    };
    for (seq, Json(payload)) in rows {
        d.seqs.push(seq);
        match serde_json::from_str::<Envelope>(payload.get()) {
            Ok(e) => d.events.push(e),
            Err(e) => d
                .unreadable
                .push((payload.get().to_string(), format!("outbox row {seq} is not an envelope: {e}"))),
        }
    }
    d
}

async fn publish(db: &Db, bus: &dyn Bus, d: &Decoded) -> Result<(), BusError> {
    bus.publish(&d.events).await?;
    for (payload, error) in &d.unreadable {
        dead_letter(db, "outbox-relay", None, payload, error).await?;
    }
    Ok(())
}

/// Publishes up to one batch of pending events; returns how many rows it cleared.
pub async fn relay_once(db: &Db, bus: &dyn Bus) -> Result<usize, BusError> {
    let schema = db.schema();
    let sql = &db.shared().sql;
    let n = match db {
        Db::Postgres(pg) => {
            let mut tx = pg.begin_system().await?;
            // One relay per schema at a time across instances keeps the order.
            let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock(hashtext($1))")
                .bind(format!("signpost.relay.{schema}"))
                .fetch_one(&mut *tx)
                .await
                .map_err(crate::db::DbError::from)?;
            if !locked {
                return Ok(0);
            }
            let rows: Vec<(i64, Json<Box<RawValue>>)> =
                sqlx::query_as(AssertSqlSafe(sql.outbox_pending.clone()))
                    .bind(BATCH)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(crate::db::DbError::from)?;
            if rows.is_empty() {
                return Ok(0);
            }
            let d = decode(rows);
            publish(db, bus, &d).await?;
            sqlx::query(AssertSqlSafe(sql.outbox_delete.clone()))
                .bind(&d.seqs)
                .execute(&mut *tx)
                .await
                .map_err(crate::db::DbError::from)?;
            tx.commit().await.map_err(crate::db::DbError::from)?;
            d.seqs.len()
        }
        Db::Sqlite(lite) => {
            // Read and publish without holding the single writer: in-process
            // consumers of this very service need it to apply the events.
            let rows: Vec<(i64, Json<Box<RawValue>>)> =
                sqlx::query_as(AssertSqlSafe(sql.outbox_pending.clone()))
                    .bind(BATCH)
                    .fetch_all(lite.reader())
                    .await
                    .map_err(crate::db::DbError::from)?;
            let Some(last) = rows.last().map(|(seq, _)| *seq) else { return Ok(0) };
            let d = decode(rows);
            publish(db, bus, &d).await?;
            let mut tx = lite.begin_system().await?;
            sqlx::query(AssertSqlSafe(sql.outbox_delete.clone()))
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(crate::db::DbError::from)?;
            tx.commit().await.map_err(crate::db::DbError::from)?;
            d.seqs.len()
        }
    };
    metrics::counter!("events_published_total", "service" => schema).increment(n as u64);
    Ok(n)
}

/// Runs the relay of one service until `shutdown`, then flushes what is left.
pub async fn run_relay(db: Db, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
    let signal = db.shared().relay.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        match relay_once(&db, bus.as_ref()).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(service = db.schema(), error = %e, "outbox relay failed; will retry");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = signal.notified() => {}
            // Another instance (or a crash before this start) may have left rows.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // Final flush: deliver what was committed before shutdown, within reason.
    for _ in 0..64 {
        match relay_once(&db, bus.as_ref()).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(service = db.schema(), error = %e, "outbox not fully flushed at shutdown; it is delivered at the next start");
                break;
            }
        }
    }
}
