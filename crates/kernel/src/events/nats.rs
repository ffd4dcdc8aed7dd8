//! NATS JetStream: one file-backed stream, subjects `<stream>.<event_type>`,
//! publish deduplicated by `Nats-Msg-Id` = event id, durable pull consumers with
//! explicit acks (one per consumer and event type: NATS 2.9 filters one subject).

use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::consumer::{dead_letter, process};
use super::{Bus, BusError, Consumer, Envelope};
use crate::db::Db;
use crate::secret::{Secret, redact_url};

/// JetStream-backed bus for scale-out.
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
}

impl NatsBus {
    /// Connects and creates the stream when missing; a down server is a one-line error.
    pub async fn connect(url: &Secret<String>, stream_name: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("signpost")
            .connection_timeout(Duration::from_secs(5))
            .connect(url.expose().as_str())
            .await
            .map_err(|e| {
                BusError::Connect(format!("cannot connect to NATS at {}: {e}", redact_url(url.expose())))
            })?;
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: stream_name.to_string(),
            subjects: vec![format!("{stream_name}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            // Consumers keep their place durably; a week covers any outage worth surviving.
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        };
        // The server can refuse a store transiently (seen as error 10049 under churn): retry briefly.
        let mut attempt = 0u64;
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => break,
                Err(e) if attempt < 4 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "creating the JetStream stream failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    return Err(BusError::Connect(format!(
                        "cannot create JetStream stream {stream_name}: {e}"
                    )));
                }
            }
        }
        Ok(Self { client, js, stream: stream_name.to_string() })
    }

    /// Deletes the stream (test teardown).
    pub async fn delete_stream(&self) -> Result<(), BusError> {
        self.js.delete_stream(&self.stream).await.map_err(|e| BusError::Publish(e.to_string()))?;
        Ok(())
    }

    /// The durable pull consumer of one consumer and event type, created or
    /// updated: a durable made by an older build gets this configuration.
    async fn durable(&self, name: &str, event_type: &str) -> Result<consumer::PullConsumer, String> {
        let stream = self.js.get_stream(&self.stream).await.map_err(|e| e.to_string())?;
        let durable = format!("{name}-{event_type}").replace(['.', ' ', '*', '>'], "_");
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(durable),
                ack_policy: consumer::AckPolicy::Explicit,
                filter_subject: self.subject(event_type),
                // Redelivery after a crash; the inbox makes a duplicate harmless.
                ack_wait: Duration::from_secs(10),
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    }

    fn subject(&self, event_type: &str) -> String {
        format!("{}.{event_type}", self.stream)
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
        // Send all, then wait for the acks: pipelined, but still in order on the stream.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, event.event_id.to_string().as_str());
            let payload = serde_json::to_vec(event).map_err(|e| BusError::Publish(e.to_string()))?;
            let ack = self
                .js
                .publish_with_headers(self.subject(&event.event_type), headers, payload.into())
                .await
                .map_err(|e| BusError::Publish(e.to_string()))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| BusError::Publish(e.to_string()))?;
        }
        Ok(())
    }

    async fn start_consumer(
        &self,
        consumer: Consumer,
        db: Db,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, BusError> {
        let err = |e: String| BusError::Consumer { consumer: consumer.name.to_string(), message: e };
        let mut tasks = Vec::new();
        for event_type in consumer.event_types {
            let pull = self.durable(consumer.name, event_type).await.map_err(err)?;
            let (consumer, db, shutdown) = (consumer.clone(), db.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                run_pull(pull, consumer, db, shutdown).await;
            }));
        }
        Ok(tasks)
    }

    async fn watch(
        &self,
        event_types: &'static [&'static str],
    ) -> Result<BoxStream<'static, Envelope>, BusError> {
        // Core-NATS subscribers see what is published to the stream's subjects
        // too: a tap with no consumer state on the server.
        let mut subs = Vec::with_capacity(event_types.len());
        for t in event_types {
            let sub = self
                .client
                .subscribe(self.subject(t))
                .await
                .map_err(|e| BusError::Connect(format!("cannot subscribe to {t}: {e}")))?;
            subs.push(sub);
        }
        Ok(futures_util::stream::select_all(subs)
            .filter_map(|m| async move { serde_json::from_slice::<Envelope>(&m.payload).ok() })
            .boxed())
    }

    async fn ping(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(BusError::Connect(format!("NATS connection is {other}"))),
        }
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

/// Most messages asked for per pull, and most applied as one batch.
const PULL_BATCH: usize = 512;
/// Messages a consumer may hold delivered but unacknowledged, over all its
/// instances. With JetStream's default (1000) the click consumer was seen to
/// stall for tens of seconds under load: the server showed 1000
/// unacknowledged and no pull request waiting.
const MAX_ACK_PENDING: i64 = 20_000;
/// A pull request's lifetime, and the heartbeat that shows it is alive: a
/// stream that stops receiving recovers within seconds.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a short batch waits for more messages.
const GATHER: Duration = Duration::from_millis(5);

async fn run_pull(pull: consumer::PullConsumer, consumer: Consumer, db: Db, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        // What is in flight at a stop is given back (see the drain below); what
        // arrives after it, or was in flight at a crash, waits for ack_wait.
        let messages = match pull
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = consumer.name, error = %e, "cannot pull from JetStream; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => continue }
            }
        };
        // Take whatever is ready (up to a pull) as one batch: low latency when idle, batches under load.
        let mut chunks = messages.ready_chunks(PULL_BATCH);
        // What a gathered batch took beyond PULL_BATCH: the next batch.
        let mut carry = Vec::new();
        loop {
            let mut chunk = if !carry.is_empty() {
                std::mem::take(&mut carry)
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Give back what was delivered to us but not handled, so the next
                        // consumer (a restart, another instance) gets it in a second, not
                        // after ack_wait. The delay keeps it from coming straight back here.
                        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
                        while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, chunks.next()).await {
                            for m in chunk.into_iter().flatten() {
                                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                            }
                        }
                        return;
                    }
                    c = chunks.next() => match c { Some(c) => c, None => break },
                }
            };
            // A short batch waits a moment for more: each batch is a database
            // transaction of a dozen round trips whatever its size, and what
            // arrives while one is applied is too little to keep up under load.
            let gather = tokio::time::Instant::now() + GATHER;
            while chunk.len() < PULL_BATCH {
                match tokio::time::timeout_at(gather, chunks.next()).await {
                    Ok(Some(more)) => chunk.extend(more),
                    _ => break,
                }
            }
            if chunk.len() > PULL_BATCH {
                carry = chunk.split_off(PULL_BATCH);
            }
            let mut batch = Vec::with_capacity(chunk.len());
            let mut msgs = Vec::with_capacity(chunk.len());
            for item in chunk {
                let msg = match item {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(consumer = consumer.name, error = %e, "JetStream delivery error");
                        continue;
                    }
                };
                match serde_json::from_slice::<Envelope>(&msg.payload) {
                    Ok(env) => {
                        batch.push(env);
                        msgs.push(msg);
                    }
                    Err(e) => {
                        let raw = String::from_utf8_lossy(&msg.payload).into_owned();
                        if dead_letter(&db, consumer.name, None, &raw, &format!("malformed envelope: {e}"))
                            .await
                            .is_ok()
                        {
                            let _ = msg.ack().await;
                        }
                    }
                }
            }
            match process(&db, &consumer, &batch).await {
                Ok(()) => {
                    for m in msgs {
                        if let Err(e) = m.ack().await {
                            tracing::warn!(consumer = consumer.name, error = %e, "ack failed; the event will be redelivered and skipped");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(consumer = consumer.name, error = %e, "batch failed; redelivering");
                    for m in msgs {
                        // Back off as a message keeps failing: 1 s, 2 s, … up to a minute.
                        let tries = m.info().map(|i| i.delivered).unwrap_or(1).clamp(1, 60);
                        let delay = Duration::from_secs(u64::try_from(tries).unwrap_or(60));
                        let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_durable_an_older_build_made_gets_the_kernels_ack_limit() {
        let Ok(url) = std::env::var("SIGNPOST_TEST_NATS_URL") else {
            eprintln!("skipped: needs SIGNPOST_TEST_NATS_URL");
            return;
        };
        let name = format!("kernel_test_{}", uuid::Uuid::now_v7().simple());
        let bus = NatsBus::connect(&Secret::new(url), &name).await.unwrap();
        // As older builds made it: JetStream's default limit of 1000 unacknowledged.
        let stream = bus.js.get_stream(&name).await.unwrap();
        let mut old = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("t-note_viewed".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                filter_subject: bus.subject("note.viewed"),
                ack_wait: Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(old.info().await.unwrap().config.max_ack_pending, 1000);
        let mut now = bus.durable("t", "note.viewed").await.unwrap();
        let config = &now.info().await.unwrap().config;
        assert_eq!(config.max_ack_pending, MAX_ACK_PENDING);
        assert_eq!(
            config.durable_name.as_deref(),
            Some("t-note_viewed"),
            "the same durable, not a second one"
        );
        bus.delete_stream().await.unwrap();
    }
}
