//! The in-process bus of `signpost up`: the outbox is the durable log, and a
//! publish returns only after every subscribed consumer applied the events, so
//! the relay deletes nothing a consumer has not seen.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::consumer::process;
use super::{Bus, BusError, Consumer, Envelope};
use crate::db::Db;

struct Delivery {
    events: Arc<[Envelope]>,
    done: oneshot::Sender<Result<(), BusError>>,
}

#[derive(Clone)]
struct Subscriber {
    event_types: &'static [&'static str],
    inbox: mpsc::Sender<Delivery>,
}

/// How many published events a slow watcher may fall behind before it skips.
const WATCH_BUFFER: usize = 4096;

/// A live tap: its event types and its channel.
struct Watcher {
    event_types: &'static [&'static str],
    live: broadcast::Sender<Arc<Envelope>>,
}

/// In-process bus: consumers are tasks in this process.
#[derive(Default)]
pub struct MemoryBus {
    subscribers: Mutex<Vec<Subscriber>>,
    watchers: Mutex<Vec<Watcher>>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The events from a broadcast receiver; a lagging reader skips ahead.
fn watch_stream(rx: broadcast::Receiver<Arc<Envelope>>) -> BoxStream<'static, Envelope> {
    futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some(((*e).clone(), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("events_watch_skipped_total").increment(n);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

impl MemoryBus {
    /// Delivers `events` to every subscriber; those that take all of them
    /// share `shared` when given, else one copy made here.
    async fn deliver(&self, events: &[Envelope], shared: Option<&Arc<[Envelope]>>) -> Result<(), BusError> {
        // A poisoned lock must not look like "no subscribers": the relay would drop the events.
        let subscribers = self
            .subscribers
            .lock()
            .map(|s| s.clone())
            .map_err(|_| BusError::Publish("subscriber list is poisoned".into()))?;
        let mut pending = Vec::new();
        // Subscribers that take the whole batch share one copy of it.
        let mut whole: Option<Arc<[Envelope]>> = None;
        for sub in subscribers {
            let wanted = |e: &&Envelope| sub.event_types.contains(&e.event_type.as_str());
            let count = events.iter().filter(wanted).count();
            let mine: Arc<[Envelope]> = match count {
                0 => continue,
                n if n == events.len() => match shared {
                    Some(batch) => batch.clone(),
                    None => whole.get_or_insert_with(|| events.into()).clone(),
                },
                _ => events.iter().filter(wanted).cloned().collect(),
            };
            let (done, wait) = oneshot::channel();
            sub.inbox
                .send(Delivery { events: mine, done })
                .await
                .map_err(|_| BusError::Publish("a consumer has stopped".into()))?;
            pending.push(wait);
        }
        for wait in pending {
            wait.await.map_err(|_| BusError::Publish("a consumer stopped mid-delivery".into()))??;
        }
        if let Ok(mut watchers) = self.watchers.lock() {
            // A tap nobody reads any more is dropped; the others get their types only.
            watchers.retain(|w| w.live.receiver_count() > 0);
            for w in watchers.iter() {
                for e in events.iter().filter(|e| w.event_types.contains(&e.event_type.as_str())) {
                    let _ = w.live.send(Arc::new(e.clone()));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
        self.deliver(events, None).await
    }

    async fn publish_shared(&self, events: Arc<[Envelope]>) -> Result<(), BusError> {
        self.deliver(&events, Some(&events)).await
    }

    async fn start_consumer(
        &self,
        consumer: Consumer,
        db: Db,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, BusError> {
        let (tx, mut rx) = mpsc::channel::<Delivery>(16);
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(Subscriber { event_types: consumer.event_types, inbox: tx });
        }
        let task = tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    d = rx.recv() => match d { Some(d) => d, None => break },
                };
                let result = process(&db, &consumer, &delivery.events).await;
                if let Err(e) = &result {
                    tracing::warn!(consumer = consumer.name, error = %e, "consumer will be retried");
                }
                let _ = delivery.done.send(result);
            }
        });
        Ok(vec![task])
    }

    async fn watch(
        &self,
        event_types: &'static [&'static str],
    ) -> Result<BoxStream<'static, Envelope>, BusError> {
        let (live, rx) = broadcast::channel(WATCH_BUFFER);
        self.watchers
            .lock()
            .map_err(|_| BusError::Connect("watcher list is poisoned".into()))?
            .push(Watcher { event_types, live });
        Ok(watch_stream(rx))
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
