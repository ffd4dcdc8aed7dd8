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
        let messages = messages(events)?;
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, m.id.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subject(m.event_type), headers, m.payload.into())
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
            for _ in 0..consumer.handler.concurrency(event_type).max(1) {
                let (pull, consumer, db, shutdown) =
                    (pull.clone(), consumer.clone(), db.clone(), shutdown.clone());
                tasks.push(tokio::spawn(async move {
                    run_pull(pull, consumer, db, shutdown).await;
                }));
            }
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
            .flat_map(|m| futures_util::stream::iter(decode(&m.payload).into_iter().filter_map(Result::ok)))
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

/// Most events in one JetStream message, and most bytes of their JSON (the
/// server's default limit is 1 MiB). A message per event cost the server a
/// store write, a deduplication entry, a delivery and an ack for every click.
const MESSAGE_EVENTS: usize = 512;
const MESSAGE_BYTES: usize = 512 * 1024;
/// Most events applied as one batch (one database transaction per tenant).
const APPLY_BATCH: usize = 512;
/// Most messages asked for per pull: a few runs fill a batch, and 64 full
/// messages are 32 MiB. (No byte limit: JetStream never delivers a message
/// larger than a pull's byte limit, so one large event would stop the durable.)
const PULL_BATCH: usize = 64;
/// Messages a consumer may hold delivered but unacknowledged, over all its
/// instances. With JetStream's default (1000) the click consumer was seen to
/// stall for tens of seconds under load: the server showed 1000
/// unacknowledged and no pull request waiting.
const MAX_ACK_PENDING: i64 = 20_000;
/// A pull request's lifetime, and the heartbeat that shows it is alive: a
/// stream that stops receiving recovers within seconds.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a short batch waits for more events.
const GATHER: Duration = Duration::from_millis(5);

/// One JetStream message: a run of events of one type, in publication order.
struct Message<'a> {
    event_type: &'a str,
    /// `Nats-Msg-Id`: the event id of a single event, `<first id>+<last
    /// id>+<count>` of a run. The same events published again get the same
    /// id; a retry that reads a different set (the outbox relay skips a row
    /// committed late) differs in its last id or its count.
    id: String,
    payload: Vec<u8>,
}

/// Packs events into messages: consecutive events of one type share a
/// message, up to [`MESSAGE_EVENTS`] and [`MESSAGE_BYTES`]. A single event is
/// its envelope, as every build before runs were packed sent it; a run is a
/// JSON array of envelopes.
fn messages(events: &[Envelope]) -> Result<Vec<Message<'_>>, BusError> {
    // The run being packed: its first event, count, and `[` + envelopes so far.
    struct Open<'a> {
        first: &'a Envelope,
        last: &'a Envelope,
        count: usize,
        body: Vec<u8>,
    }
    fn close(open: Open<'_>) -> Message<'_> {
        let Open { first, last, count, mut body } = open;
        if count == 1 {
            body.remove(0);
            return Message { event_type: &first.event_type, id: first.event_id.to_string(), payload: body };
        }
        body.push(b']');
        let id = format!("{}+{}+{count}", first.event_id, last.event_id);
        Message { event_type: &first.event_type, id, payload: body }
    }
    let mut out = Vec::new();
    let mut open: Option<Open<'_>> = None;
    for e in events {
        let json = serde_json::to_vec(e).map_err(|err| BusError::Publish(err.to_string()))?;
        if let Some(o) = open.as_mut()
            && o.first.event_type == e.event_type
            && o.count < MESSAGE_EVENTS
            && o.body.len() + json.len() + 2 <= MESSAGE_BYTES
        {
            o.body.push(b',');
            o.body.extend_from_slice(&json);
            o.count += 1;
            o.last = e;
            continue;
        }
        if let Some(o) = open.take() {
            out.push(close(o));
        }
        let mut body = Vec::with_capacity(((json.len() + 1) * 64).min(MESSAGE_BYTES));
        body.push(b'[');
        body.extend_from_slice(&json);
        open = Some(Open { first: e, last: e, count: 1, body });
    }
    out.extend(open.map(close));
    Ok(out)
}

/// The events of one message, in order; an event that cannot be read is its
/// text and why (for the dead letters). A message is one envelope or an array
/// of them.
fn decode(payload: &[u8]) -> Vec<Result<Envelope, (String, String)>> {
    let bad = |text: &[u8], e: serde_json::Error| {
        Err((String::from_utf8_lossy(text).into_owned(), format!("malformed envelope: {e}")))
    };
    if payload.trim_ascii_start().first() != Some(&b'[') {
        return vec![serde_json::from_slice::<Envelope>(payload).or_else(|e| bad(payload, e))];
    }
    if let Ok(events) = serde_json::from_slice::<Vec<Envelope>>(payload) {
        return events.into_iter().map(Ok).collect();
    }
    // One bad element: keep the others.
    match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(payload) {
        Ok(items) => items
            .into_iter()
            .map(|raw| serde_json::from_str::<Envelope>(raw.get()).or_else(|e| bad(raw.get().as_bytes(), e)))
            .collect(),
        Err(e) => vec![bad(payload, e)],
    }
}

/// A delivered message and the events it carries.
struct Delivered {
    message: jetstream::Message,
    events: Vec<Envelope>,
}

/// Decodes delivered messages onto `ready`. A message's unreadable events go
/// to the dead letters; one that carries nothing else is acknowledged, and
/// one whose dead letters could not be stored is left to be redelivered.
async fn take(
    chunk: Vec<Result<jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>>,
    consumer: &Consumer,
    db: &Db,
    ready: &mut std::collections::VecDeque<Delivered>,
) {
    for item in chunk {
        let message = match item {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = consumer.name, error = %e, "JetStream delivery error");
                continue;
            }
        };
        let mut events = Vec::new();
        let mut kept = true;
        for decoded in decode(&message.payload) {
            match decoded {
                Ok(env) => events.push(env),
                Err((raw, why)) => kept &= dead_letter(db, consumer.name, None, &raw, &why).await.is_ok(),
            }
        }
        if !kept {
            // Back again in a while, when the dead letters may be writable.
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
            continue;
        }
        if events.is_empty() {
            let _ = message.ack().await;
            continue;
        }
        ready.push_back(Delivered { message, events });
    }
}

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
        // Take whatever is ready as one batch: low latency when idle, batches under load.
        let mut chunks = messages.ready_chunks(PULL_BATCH);
        // Decoded messages not yet applied, in delivery order.
        let mut ready = std::collections::VecDeque::new();
        loop {
            if ready.is_empty() {
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
                    c = chunks.next() => match c { Some(c) => take(c, &consumer, &db, &mut ready).await, None => break },
                }
                continue;
            }
            // A short batch waits a moment for more: each batch is a database
            // transaction of a dozen round trips whatever its size, and what
            // arrives while one is applied is too little to keep up under load.
            let gather = tokio::time::Instant::now() + GATHER;
            while ready.iter().map(|d: &Delivered| d.events.len()).sum::<usize>() < APPLY_BATCH {
                match tokio::time::timeout_at(gather, chunks.next()).await {
                    Ok(Some(more)) => take(more, &consumer, &db, &mut ready).await,
                    _ => break,
                }
            }
            // Whole messages, at most APPLY_BATCH events (a message holds no more).
            let mut batch = Vec::new();
            let mut msgs = Vec::new();
            while let Some(next) = ready.front() {
                if !msgs.is_empty() && batch.len() + next.events.len() > APPLY_BATCH {
                    break;
                }
                let Some(Delivered { message, events }) = ready.pop_front() else { break };
                batch.extend(events);
                msgs.push(message);
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

    fn event(event_type: &str, n: u64) -> Envelope {
        Envelope::new(event_type, crate::TenantId::new(), "system", serde_json::json!({ "n": n }))
    }

    #[test]
    fn runs_of_one_type_share_a_message_in_order_and_a_lone_event_is_its_envelope() {
        let mut events: Vec<Envelope> = (0..1100).map(|n| event("link.clicked", n)).collect();
        events.push(event("qr.scanned", 1100));
        events.push(event("link.clicked", 1101));
        let packed = messages(&events).unwrap();
        let sizes: Vec<(&str, usize)> =
            packed.iter().map(|m| (m.event_type, decode(&m.payload).len())).collect();
        assert_eq!(
            sizes,
            [
                ("link.clicked", 512),
                ("link.clicked", 512),
                ("link.clicked", 76),
                ("qr.scanned", 1),
                ("link.clicked", 1)
            ]
        );
        let read: Vec<Envelope> =
            packed.iter().flat_map(|m| decode(&m.payload)).map(|r| r.unwrap()).collect();
        assert_eq!(read, events, "every event once, in publication order");
        // A single event goes as before: its envelope, its id as Nats-Msg-Id.
        let lone = &packed[3];
        assert_eq!(serde_json::from_slice::<Envelope>(&lone.payload).unwrap(), events[1100]);
        assert_eq!(lone.id, events[1100].event_id.to_string());
        assert_eq!(packed[0].id, format!("{}+{}+512", events[0].event_id, events[511].event_id));
        assert_eq!(messages(&events).unwrap()[1].id, packed[1].id, "publishing again gives the same ids");
    }

    #[test]
    fn a_message_stays_under_the_byte_limit() {
        let big = "x".repeat(100_000);
        let events: Vec<Envelope> = (0..12)
            .map(|_| {
                Envelope::new("note.added", crate::TenantId::new(), "system", serde_json::json!({ "t": big }))
            })
            .collect();
        let packed = messages(&events).unwrap();
        assert!(packed.len() >= 3, "{} messages", packed.len());
        assert!(packed.iter().all(|m| m.payload.len() <= MESSAGE_BYTES));
        assert_eq!(packed.iter().map(|m| decode(&m.payload).len()).sum::<usize>(), 12);
    }

    #[test]
    fn an_unreadable_event_in_a_message_is_set_apart_and_the_others_are_kept() {
        let (a, b) = (event("link.clicked", 1), event("link.clicked", 2));
        let payload = format!(
            "[{},{{\"event_id\":\"nope\"}},{}]",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let read = decode(payload.as_bytes());
        assert_eq!(read.len(), 3);
        assert_eq!(read[0].as_ref().unwrap(), &a);
        let (raw, why) = read[1].as_ref().unwrap_err();
        assert_eq!(raw, r#"{"event_id":"nope"}"#);
        assert!(why.starts_with("malformed envelope"), "{why}");
        assert_eq!(read[2].as_ref().unwrap(), &b);
        let garbage = decode(b"[not json");
        assert!(matches!(&garbage[..], [Err((raw, _))] if raw == "[not json"));
        assert!(matches!(&decode(b"{}")[..], [Err(_)]));
    }

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
