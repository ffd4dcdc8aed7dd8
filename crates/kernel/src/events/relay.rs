//! The outbox relay: publishes a service's committed events in order and then
//! removes them. A crash between the two publishes them again (at least once);
//! consumers' inboxes make the effect happen once.
//!
//! A relay publishes to each of the bus's audiences ([`Bus::audiences`]) at
//! that audience's pace: on the in-process bus, whose publish waits for the
//! consumers to apply the events, the prompt lane's consumers (read models)
//! get a link update while the bulk lane's (clicks) are still busy. A row
//! leaves the outbox once every audience has it; until then this process
//! remembers which audiences do, and after a crash every audience gets it again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::value::RawValue;
use sqlx::AssertSqlSafe;
use sqlx::types::Json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::consumer::dead_letter;
use super::{Audience, Bus, BusError, Envelope};
use crate::db::{Db, DbError};

const BATCH: usize = 256;
/// How many rows one audience may be ahead of another: the outbox keeps them
/// and this process remembers them until the slowest has them too. An audience
/// that far ahead waits.
const LEAD: usize = 4096;

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

/// Which outbox rows each audience has, among those still in the outbox.
#[derive(Debug)]
struct Progress {
    has: Vec<HashSet<i64>>,
}

impl Progress {
    fn new(audiences: usize) -> Self {
        Self { has: vec![HashSet::new(); audiences] }
    }

    /// Records that `audience` has `seqs`; returns those every audience now
    /// has, which the outbox may delete. They stay recorded (and unread) until
    /// [`Progress::forget`], after the delete: read again before it commits,
    /// they would be published again and recorded for good.
    fn record(&mut self, audience: usize, seqs: &[i64]) -> Vec<i64> {
        if let Some(has) = self.has.get_mut(audience) {
            has.extend(seqs);
        }
        seqs.iter().copied().filter(|s| self.has.iter().all(|h| h.contains(s))).collect()
    }

    /// Drops rows the outbox no longer holds, or (the delete failed) that
    /// every audience is to read again.
    fn forget(&mut self, seqs: &[i64]) {
        for has in &mut self.has {
            for s in seqs {
                has.remove(s);
            }
        }
    }

    /// The rows `audience` has (to skip when reading), and how many more it may take.
    fn ahead(&self, audience: usize) -> (Vec<i64>, usize) {
        let has: Vec<i64> = self.has.get(audience).map(|h| h.iter().copied().collect()).unwrap_or_default();
        let room = LEAD.saturating_sub(has.len()).min(BATCH);
        (has, room)
    }
}

/// One service's relay: its schema, the bus, and what each audience has.
struct Relay {
    db: Db,
    bus: Arc<dyn Bus>,
    /// The bus's audiences, indexed like `wake` and the progress.
    audiences: &'static [Audience],
    progress: Mutex<Progress>,
    /// One per audience: more rows may be there for it.
    wake: Vec<Notify>,
}

impl Relay {
    /// The progress; a panic elsewhere leaves nothing in it half-changed.
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes the rows read for `audience`; returns how many there were
    /// and the seqs every audience now has (for [`Relay::delete`]), or `None`
    /// when nothing was read.
    async fn publish(
        &self,
        audience: usize,
        rows: Vec<(i64, Json<Box<RawValue>>)>,
    ) -> Result<Option<(usize, Vec<i64>)>, BusError> {
        if rows.is_empty() {
            return Ok(None);
        }
        let d = decode(rows);
        self.bus.publish_to(self.audiences[audience], &d.events).await?;
        // One audience writes the dead letters; for the others such a row is done.
        if audience == 0 {
            for (payload, error) in &d.unreadable {
                dead_letter(&self.db, "outbox-relay", None, payload, error).await?;
            }
        }
        Ok(Some((d.seqs.len(), self.progress().record(audience, &d.seqs))))
    }

    /// Deletes the rows every audience has (`done`) with `delete`, this
    /// engine's statement, then forgets them: committed, they are gone; failed,
    /// every audience reads them again, and the delete is tried again after that.
    async fn delete(
        &self,
        done: &[i64],
        delete: impl std::future::Future<Output = Result<(), DbError>>,
    ) -> Result<(), DbError> {
        if done.is_empty() {
            return Ok(());
        }
        let deleted = delete.await;
        self.progress().forget(done);
        if deleted.is_ok() {
            metrics::counter!("events_published_total", "service" => self.db.schema())
                .increment(done.len() as u64);
        }
        // An audience that was a full lead ahead may go on.
        self.wake.iter().for_each(Notify::notify_one);
        deleted
    }

    /// Publishes to `audience` up to one batch of rows it does not have yet;
    /// returns how many it published.
    async fn once(&self, audience: usize) -> Result<usize, BusError> {
        let (has, room) = self.progress().ahead(audience);
        if room == 0 {
            return Ok(0);
        }
        let db = &self.db;
        let schema = db.schema();
        let sql = &db.shared().sql;
        let limit = i64::try_from(room).unwrap_or(i64::MAX);
        let n = match db {
            Db::Postgres(pg) => {
                // One relay per schema and audience at a time across instances
                // keeps the order (the first audience keeps the key a relay had
                // before there were several). The lock is the session's, not a
                // transaction's: the publish may wait on in-process consumers,
                // and no transaction stays open meanwhile.
                let key = match audience {
                    0 => format!("signpost.relay.{schema}"),
                    n => format!("signpost.relay.{schema}.{n}"),
                };
                let Some(mut lock) = pg.try_lock_system(&key).await? else { return Ok(0) };
                let relayed = async {
                    let mut tx = lock.begin().await?;
                    let rows: Vec<(i64, Json<Box<RawValue>>)> =
                        sqlx::query_as(AssertSqlSafe(sql.outbox_pending.clone()))
                            .bind(limit)
                            .bind(&has)
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(DbError::from)?;
                    tx.commit().await.map_err(DbError::from)?;
                    let Some((n, done)) = self.publish(audience, rows).await? else { return Ok(0) };
                    self.delete(&done, async {
                        let mut tx = lock.begin().await?;
                        sqlx::query(AssertSqlSafe(sql.outbox_delete.clone()))
                            .bind(&done)
                            .execute(&mut *tx)
                            .await?;
                        Ok(tx.commit().await?)
                    })
                    .await?;
                    Ok::<_, BusError>(n)
                }
                .await;
                let released = lock.release().await;
                let n = relayed?;
                released?;
                n
            }
            Db::Sqlite(lite) => {
                // Read and publish without holding the single writer: in-process
                // consumers of this very service need it to apply the events.
                let has = serde_json::to_string(&has).map_err(|e| BusError::Publish(e.to_string()))?;
                let rows: Vec<(i64, Json<Box<RawValue>>)> =
                    sqlx::query_as(AssertSqlSafe(sql.outbox_pending.clone()))
                        .bind(limit)
                        .bind(has)
                        .fetch_all(lite.reader())
                        .await
                        .map_err(DbError::from)?;
                let Some((n, done)) = self.publish(audience, rows).await? else { return Ok(0) };
                self.delete(&done, async {
                    let seqs = serde_json::to_string(&done).map_err(|e| DbError::Setup(e.to_string()))?;
                    let mut tx = lite.begin_system().await?;
                    sqlx::query(AssertSqlSafe(sql.outbox_delete.clone()))
                        .bind(seqs)
                        .execute(&mut *tx)
                        .await?;
                    Ok(tx.commit().await?)
                })
                .await?;
                n
            }
        };
        Ok(n)
    }

    /// Relays to one audience until `shutdown`, then flushes what is left.
    async fn run(&self, audience: usize, shutdown: &CancellationToken) {
        let schema = self.db.schema();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.once(audience).await {
                Ok(BATCH) => continue,
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(service = schema, error = %e, "outbox relay failed; will retry");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => continue,
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake[audience].notified() => {}
                // Another instance (or a crash before this start) may have left rows.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        // Final flush: deliver what was committed before shutdown, within reason.
        for _ in 0..64 {
            match self.once(audience).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(service = schema, error = %e, "outbox not fully flushed at shutdown; it is delivered at the next start");
                    break;
                }
            }
        }
    }
}

/// Runs the relay of one service until `shutdown`, then flushes what is left.
pub async fn run_relay(db: Db, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
    let audiences = match bus.audiences() {
        [] => &[Audience::All],
        listed => listed,
    };
    let signal = db.shared().relay.clone();
    let relay = Relay {
        db,
        bus,
        audiences,
        progress: Mutex::new(Progress::new(audiences.len())),
        wake: audiences.iter().map(|_| Notify::new()).collect(),
    };
    // The service's commits wake every audience.
    let fan_out = async {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = signal.notified() => relay.wake.iter().for_each(Notify::notify_one),
            }
        }
    };
    let runs = join_all((0..audiences.len()).map(|a| relay.run(a, &shutdown)));
    tokio::join!(fan_out, runs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_deleted_once_every_audience_has_it_and_unread_until_then() {
        let mut p = Progress::new(2);
        assert!(p.record(0, &[1, 2, 3]).is_empty(), "the bulk audience has none of them yet");
        assert_eq!(p.ahead(0).0.len(), 3, "the prompt audience skips what it has");
        assert_eq!(p.record(1, &[1, 2]), [1, 2]);
        let mut skipped = p.ahead(0).0;
        skipped.sort_unstable();
        assert_eq!(skipped, [1, 2, 3], "rows being deleted are read by nobody");
        assert_eq!(p.ahead(1).0.len(), 2);
        p.forget(&[1, 2]);
        assert_eq!(p.ahead(0).0, [3], "rows 1 and 2 left the outbox");
        assert!(p.ahead(1).0.is_empty());
        assert_eq!(p.record(1, &[3]), [3]);
        p.forget(&[3]);
        assert!(p.has.iter().all(HashSet::is_empty), "nothing is remembered once the outbox is empty");
    }

    #[test]
    fn one_audience_deletes_what_it_published() {
        let mut p = Progress::new(1);
        assert_eq!(p.record(0, &[7, 8]), [7, 8]);
        p.forget(&[7, 8]);
        assert_eq!(p.ahead(0), (vec![], BATCH));
    }

    #[test]
    fn an_audience_a_full_lead_ahead_waits() {
        let mut p = Progress::new(2);
        let seqs: Vec<i64> = (0..i64::try_from(LEAD).unwrap_or(0)).collect();
        p.record(0, &seqs);
        assert_eq!(p.ahead(0).1, 0, "no room: the outbox keeps what the slow audience lacks");
        let done = p.record(1, &seqs[..10]);
        p.forget(&done);
        assert_eq!(p.ahead(0).1, 10);
    }
}
