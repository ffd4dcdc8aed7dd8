//! Events: the envelope, the transactional outbox and its relay, the bus
//! (in-process or NATS JetStream), idempotent consumers, and the journal for
//! high-rate events.

mod bus;
mod consumer;
mod journal;
mod memory;
mod nats;
mod relay;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

pub use bus::{Bus, BusError};
pub use consumer::{Consumer, Handler, HandlerError};
pub use journal::{Journal, JournalError};
pub use memory::MemoryBus;
pub use nats::NatsBus;
pub use relay::{relay_once, run_relay};

use crate::tenant::TenantId;

/// The current envelope version.
pub const ENVELOPE_VERSION: u32 = 1;

/// Every event on the bus: `{event_id, event_type, occurred_at, tenant_id, actor, data, version}`.
/// Unknown fields are accepted (and dropped) so that an older reader keeps
/// working while a newer writer adds fields; `version` marks breaking changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7; consumers deduplicate on it and NATS uses it as `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// Dotted name, e.g. `qr.scanned`.
    pub event_type: String,
    /// When the change happened (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The workspace it belongs to.
    pub tenant_id: TenantId,
    /// Who caused it: `user:<id>`, `api_key:<id>`, `system`, `anonymous`.
    pub actor: String,
    /// Event-specific payload.
    pub data: Value,
    /// Envelope version.
    pub version: u32,
}

impl Envelope {
    /// A new event happening now.
    pub fn new(event_type: &str, tenant_id: TenantId, actor: &str, data: Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_string(),
            occurred_at: OffsetDateTime::now_utc(),
            tenant_id,
            actor: actor.to_string(),
            data,
            version: ENVELOPE_VERSION,
        }
    }
}

/// An event whose payload is any serializable value, written as exactly the
/// JSON of an [`Envelope`] but without building a `serde_json::Value` first
/// (the hot path's clicks). It reads back as an [`Envelope`].
#[derive(Debug, Clone, Serialize)]
pub struct EnvelopeOf<'a, T: Serialize> {
    pub event_id: Uuid,
    pub event_type: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub tenant_id: TenantId,
    pub actor: &'a str,
    pub data: T,
    pub version: u32,
}

impl<'a, T: Serialize> EnvelopeOf<'a, T> {
    /// A new event happening now.
    pub fn new(event_type: &'a str, tenant_id: TenantId, actor: &'a str, data: T) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type,
            occurred_at: OffsetDateTime::now_utc(),
            tenant_id,
            actor,
            data,
            version: ENVELOPE_VERSION,
        }
    }
}

/// Whether `event_type` is a well-formed dotted name (`link.clicked`).
pub fn valid_event_type(event_type: &str) -> bool {
    !event_type.is_empty()
        && event_type.len() <= 100
        && event_type.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}
