//! Events: the envelope, the transactional outbox and its relay, the bus
//! (in-process or NATS JetStream), idempotent consumers, and the journal for
//! high-rate events.

mod bus;
mod consumer;
mod journal;
mod json;
mod memory;
mod nats;
mod relay;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

pub use bus::{Audience, Bus, BusError};
pub use consumer::{
    Consumer, Handler, HandlerError, INBOX_PRUNE_EVERY, INBOX_PRUNE_FIRST, INBOX_RETENTION, prune_inbox,
    run_inbox_pruning,
};
pub use journal::{Journal, JournalError};
pub use memory::MemoryBus;
pub use nats::NatsBus;
pub use relay::run_relay;

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
    pub data: Payload,
    /// Envelope version.
    pub version: u32,
}

impl Envelope {
    /// A new event happening now.
    pub fn new(event_type: &str, tenant_id: TenantId, actor: &str, data: impl Into<Payload>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_string(),
            occurred_at: OffsetDateTime::now_utc(),
            tenant_id,
            actor: actor.to_string(),
            data: data.into(),
            version: ENVELOPE_VERSION,
        }
    }
}

/// An event's payload, kept as the JSON text it came as. Reading an envelope
/// only checks the payload's syntax (no tree of values is built: the click
/// pipeline decodes tens of thousands a second), and a consumer parses the
/// fields it reads straight from the text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The payload of any serializable value.
    pub fn of<T: Serialize + ?Sized>(data: &T) -> Result<Self, serde_json::Error> {
        Ok(Self(serde_json::value::to_raw_value(data)?))
    }

    /// Its JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Parses it as `T`. `T` may borrow from the text: `Cow<'a, str>` with
    /// `#[serde(borrow)]`, not `&'a str`, which fails on an escaped string.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// As a tree of values, for reading a field or two of an untyped payload.
    pub fn value(&self) -> Value {
        self.parse().unwrap_or(Value::Null)
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        // Writing a `Value` cannot fail: its keys are strings and its numbers finite.
        Self::of(&value).unwrap_or_else(|_| Self(RawValue::NULL.to_owned()))
    }
}

/// Equal when they hold the same JSON value, however it is spaced or ordered.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
            || matches!((self.parse::<Value>(), other.parse::<Value>()), (Ok(a), Ok(b)) if a == b)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_payload_keeps_the_text_it_came_as_and_parses_from_it() {
        let text = r#"{"event_id":"0192c5a0-0000-7000-8000-000000000001","event_type":"link.clicked","occurred_at":"2026-11-22T10:00:00Z","tenant_id":"0192c5a0-0000-7000-8000-000000000002","actor":"anonymous","data":{"link_id": "x",  "n":[1, 2]},"version":1}"#;
        let e: Envelope = serde_json::from_str(text).unwrap();
        assert_eq!(e.data.json(), r#"{"link_id": "x",  "n":[1, 2]}"#);
        #[derive(Deserialize)]
        struct Link<'a> {
            #[serde(borrow)]
            link_id: std::borrow::Cow<'a, str>,
        }
        assert_eq!(e.data.parse::<Link<'_>>().unwrap().link_id, "x");
        assert_eq!(e.data.value()["n"], json!([1, 2]));
        // Written back as it came, so the journal and NATS pass it through unchanged.
        assert!(serde_json::to_string(&e).unwrap().contains(r#""data":{"link_id": "x",  "n":[1, 2]}"#));
    }

    #[test]
    fn payloads_are_equal_when_their_values_are() {
        let spaced: Payload = serde_json::from_str(r#"{ "b": 2, "a": 1 }"#).unwrap();
        assert_eq!(spaced, Payload::from(json!({ "a": 1, "b": 2 })));
        assert_ne!(spaced, Payload::from(json!({ "a": 1, "b": 3 })));
    }
}
