//! The bus interface both backends implement.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Consumer, Envelope};
use crate::background::Lane;
use crate::db::{Db, DbError};

/// The consumers one publish reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every consumer of the event types.
    All,
    /// The consumers that run on this background lane.
    Lane(Lane),
}

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker could not be reached.
    #[error("{0}")]
    Connect(String),
    /// Publishing failed; the outbox keeps the events and the relay retries.
    #[error("publish failed: {0}")]
    Publish(String),
    /// A consumer could not be set up.
    #[error("consumer {consumer}: {message}")]
    Consumer {
        /// The consumer.
        consumer: String,
        /// What failed.
        message: String,
    },
    /// A handler asked for redelivery.
    #[error("handler failed: {0}")]
    Handler(String),
    /// The database under the outbox or inbox.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Carries events from the outboxes to the consumers, at least once.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes events in the given order; returns once the bus is responsible
    /// for them (JetStream acknowledged them; in-process consumers applied them).
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError>;

    /// [`Bus::publish`] of a batch the caller shares instead of lending: the
    /// in-process bus hands it to its consumers as it is, without a copy.
    async fn publish_shared(&self, events: Arc<[Envelope]>) -> Result<(), BusError> {
        self.publish(&events).await
    }

    /// How an outbox relay splits its work: one stream of publishes per
    /// audience, each at its own pace, and a row leaves the outbox once every
    /// audience has it. A broker that takes responsibility for events at once
    /// (JetStream) is one audience; the in-process bus, whose publish returns
    /// only once its consumers applied the events, is one per lane, so that a
    /// read model's consumer never waits on a click consumer's batch.
    fn audiences(&self) -> &'static [Audience] {
        &[Audience::All]
    }

    /// [`Bus::publish`] to one of [`Bus::audiences`].
    async fn publish_to(&self, audience: Audience, events: &[Envelope]) -> Result<(), BusError> {
        let _ = audience;
        self.publish(events).await
    }

    /// Starts delivering the consumer's event types to it until `shutdown`.
    async fn start_consumer(
        &self,
        consumer: Consumer,
        db: Db,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, BusError>;

    /// A live tap on the events of these types published from now on, for
    /// pushing them to browsers (SSE). Not durable and not acknowledged: a
    /// reader that falls behind skips events instead of slowing the bus.
    async fn watch(
        &self,
        event_types: &'static [&'static str],
    ) -> Result<BoxStream<'static, Envelope>, BusError>;

    /// Answers when the bus is usable (readiness).
    async fn ping(&self) -> Result<(), BusError>;

    /// `memory` or `nats`, for logs and readiness reports.
    fn kind(&self) -> &'static str;
}
