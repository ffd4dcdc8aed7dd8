//! The in-process bus of `signpost up`: the outbox is the durable log, and a
//! publish returns only after every subscribed consumer applied the events, so
//! the relay deletes nothing a consumer has not seen.
//!
//! Each consumer takes deliveries from two queues: what the bulk background
//! lane publishes (journal drainers: clicks), and the rest (outbox relays on
//! the prompt lane, requests). It takes from the second first, so a relay
//! publishing a link update to a consumer that is also behind on clicks waits
//! for the batch being applied, not for every click batch queued before it.
//!
//! A relay publishes to each lane's consumers on its own ([`Bus::audiences`]):
//! a link update reaches routing's read model while analytics is still busy
//! with clicks at the bulk lane's priority, and the outbox keeps the row until
//! analytics has it too.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::consumer::process;
use super::{Audience, Bus, BusError, Consumer, Envelope};
use crate::background::Lane;
use crate::db::Db;

struct Delivery {
    events: Arc<[Envelope]>,
    done: oneshot::Sender<Result<(), BusError>>,
}

#[derive(Clone)]
struct Subscriber {
    event_types: &'static [&'static str],
    /// The lane the consumer runs on.
    lane: Lane,
    /// What the bulk lane publishes.
    bulk: mpsc::Sender<Delivery>,
    /// Everything else, taken first.
    prompt: mpsc::Sender<Delivery>,
}

impl Subscriber {
    /// The queue for what the calling thread publishes.
    fn queue(&self) -> &mpsc::Sender<Delivery> {
        if crate::background::current() == Some(crate::background::Lane::Bulk) {
            &self.bulk
        } else {
            &self.prompt
        }
    }
}

/// The next delivery for a consumer, prompt ones first; `None` once it stops.
async fn next_delivery(
    prompt: &mut mpsc::Receiver<Delivery>,
    bulk: &mut mpsc::Receiver<Delivery>,
    shutdown: &CancellationToken,
) -> Option<Delivery> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        d = prompt.recv() => d,
        d = bulk.recv() => d,
    }
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
    /// Delivers `events` to the audience's subscribers; those that take all
    /// of them share `shared` when given, else one copy made here. Watchers see
    /// the events once: with the prompt lane's audience, or with everyone's.
    async fn deliver(
        &self,
        audience: Audience,
        events: &[Envelope],
        shared: Option<&Arc<[Envelope]>>,
    ) -> Result<(), BusError> {
        // A poisoned lock must not look like "no subscribers": the relay would drop the events.
        let subscribers: Vec<Subscriber> = self
            .subscribers
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|s| audience == Audience::All || audience == Audience::Lane(s.lane))
                    .cloned()
                    .collect()
            })
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
            sub.queue()
                .send(Delivery { events: mine, done })
                .await
                .map_err(|_| BusError::Publish("a consumer has stopped".into()))?;
            pending.push(wait);
        }
        for wait in pending {
            wait.await.map_err(|_| BusError::Publish("a consumer stopped mid-delivery".into()))??;
        }
        if audience == Audience::Lane(Lane::Bulk) {
            return Ok(());
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
        self.deliver(Audience::All, events, None).await
    }

    async fn publish_shared(&self, events: Arc<[Envelope]>) -> Result<(), BusError> {
        self.deliver(Audience::All, &events, Some(&events)).await
    }

    fn audiences(&self) -> &'static [Audience] {
        // Every lane: a new one fails to compile here until it is listed.
        const _: fn(Lane) = |lane| match lane {
            Lane::Prompt | Lane::Bulk => {}
        };
        &[Audience::Lane(Lane::Prompt), Audience::Lane(Lane::Bulk)]
    }

    async fn publish_to(&self, audience: Audience, events: &[Envelope]) -> Result<(), BusError> {
        self.deliver(audience, events, None).await
    }

    async fn start_consumer(
        &self,
        consumer: Consumer,
        db: Db,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, BusError> {
        let (bulk, mut bulk_rx) = mpsc::channel::<Delivery>(16);
        let (prompt, mut prompt_rx) = mpsc::channel::<Delivery>(16);
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(Subscriber { event_types: consumer.event_types, lane: consumer.lane, bulk, prompt });
        }
        let task = tokio::spawn(async move {
            loop {
                let Some(delivery) = next_delivery(&mut prompt_rx, &mut bulk_rx, &shutdown).await else {
                    break;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::background::{Background, Priority};
    use crate::tenant::TenantId;

    fn delivery(n: u64) -> Delivery {
        let e = Envelope::new("test.happened", TenantId::new(), "system", serde_json::json!({ "n": n }));
        Delivery { events: vec![e].into(), done: oneshot::channel().0 }
    }

    fn n(d: &Delivery) -> u64 {
        d.events[0].data.value()["n"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn a_consumer_behind_on_clicks_takes_a_relayed_update_before_them() {
        let (bulk, mut bulk_rx) = mpsc::channel(16);
        let (prompt, mut prompt_rx) = mpsc::channel(16);
        for i in 0..3 {
            bulk.send(delivery(i)).await.unwrap();
        }
        prompt.send(delivery(100)).await.unwrap();
        let stop = CancellationToken::new();
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(n(&next_delivery(&mut prompt_rx, &mut bulk_rx, &stop).await.unwrap()));
        }
        assert_eq!(order, [100, 0, 1, 2], "the update first, then the clicks in their order");
        stop.cancel();
        assert!(next_delivery(&mut prompt_rx, &mut bulk_rx, &stop).await.is_none());
    }

    #[tokio::test]
    async fn what_the_bulk_lane_publishes_queues_apart_from_the_rest() {
        let bus = Arc::new(MemoryBus::new());
        let (bulk, mut bulk_rx) = mpsc::channel(16);
        let (prompt, mut prompt_rx) = mpsc::channel(16);
        let sub = Subscriber { event_types: &["test.happened"], lane: Lane::Bulk, bulk, prompt };
        bus.subscribers.lock().unwrap().push(sub);
        // Publishes from a thread of `lane`; the runtime is kept until the publish ends.
        let publish = |lane| {
            let (bus, bg) = (bus.clone(), Background::start(lane, Priority::Nice(0)).unwrap());
            let e = Envelope::new("test.happened", TenantId::new(), "system", serde_json::json!({ "n": 1 }));
            (bg.spawn(async move { bus.publish(&[e]).await }), bg)
        };
        let (from_bulk, _bulk_lane) = publish(Lane::Bulk);
        let got = bulk_rx.recv().await.unwrap();
        assert!(prompt_rx.try_recv().is_err());
        got.done.send(Ok(())).unwrap();
        from_bulk.await.unwrap().unwrap();
        let (from_prompt, _prompt_lane) = publish(Lane::Prompt);
        let got = prompt_rx.recv().await.unwrap();
        assert!(bulk_rx.try_recv().is_err());
        got.done.send(Ok(())).unwrap();
        from_prompt.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_publish_to_one_lane_reaches_only_that_lanes_consumers() {
        let bus = MemoryBus::new();
        let mut queues = Vec::new();
        for lane in [Lane::Prompt, Lane::Bulk] {
            let (bulk, bulk_rx) = mpsc::channel(16);
            let (prompt, prompt_rx) = mpsc::channel(16);
            bus.subscribers.lock().unwrap().push(Subscriber {
                event_types: &["test.happened"],
                lane,
                bulk,
                prompt,
            });
            queues.push((lane, prompt_rx, bulk_rx));
        }
        let e = Envelope::new("test.happened", TenantId::new(), "system", serde_json::json!({ "n": 1 }));
        let publish = tokio::spawn({
            let bus = Arc::new(bus);
            async move { bus.publish_to(Audience::Lane(Lane::Prompt), &[e]).await }
        });
        let (lane, prompt_rx, bulk_rx) = &mut queues[0];
        assert_eq!(*lane, Lane::Prompt);
        prompt_rx.recv().await.unwrap().done.send(Ok(())).unwrap();
        publish.await.unwrap().unwrap();
        assert!(bulk_rx.try_recv().is_err());
        let (_, prompt_rx, bulk_rx) = &mut queues[1];
        assert!(
            prompt_rx.try_recv().is_err() && bulk_rx.try_recv().is_err(),
            "the bulk consumer got nothing"
        );
    }
}
