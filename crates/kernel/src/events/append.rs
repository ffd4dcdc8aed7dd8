//! Group commit for high-rate events (clicks, scans, views): callers await their
//! append, many appends share one transaction, and an append that returned is
//! committed (it survives `kill -9`). The events go to the outbox and the relay.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Envelope;
use crate::db::{Db, DbError};

/// Why an append failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The appender is shut down.
    #[error("the event appender is stopped")]
    Stopped,
    /// The batch's transaction failed; nothing of it was stored.
    #[error("append failed: {0}")]
    Failed(String),
}

struct Job {
    event: Envelope,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// Handle for appending events in batches; cheap to clone.
#[derive(Clone)]
pub struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Starts the writer task of one service schema. It stops after `shutdown`,
    /// once it has committed everything already queued.
    pub fn start(db: Db, max_batch: usize, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(max_batch.max(1) * 8);
        let task = tokio::spawn(writer(db, rx, max_batch.max(1), shutdown));
        (Self { jobs }, task)
    }

    /// Appends one event; returns once it is committed.
    pub async fn append(&self, event: Envelope) -> Result<(), AppendError> {
        let (done, wait) = oneshot::channel();
        self.jobs.send(Job { event, done }).await.map_err(|_| AppendError::Stopped)?;
        wait.await.map_err(|_| AppendError::Stopped)?
    }
}

async fn writer(db: Db, mut rx: mpsc::Receiver<Job>, max_batch: usize, shutdown: CancellationToken) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        let first = tokio::select! {
            biased;
            j = rx.recv() => j,
            _ = shutdown.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = write(&db, &batch).await.map_err(|e| AppendError::Failed(e.to_string()));
        metrics::histogram!("event_append_batch_size", "service" => db.schema()).record(batch.len() as f64);
        metrics::histogram!("event_append_commit_seconds", "service" => db.schema())
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(service = db.schema(), error = %e, "batched append failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for job in batch.drain(..) {
            let _ = job.done.send(result.clone());
        }
    }
}

async fn write(db: &Db, batch: &[Job]) -> Result<(), DbError> {
    db.append_outbox(batch.iter().map(|j| &j.event)).await
}
