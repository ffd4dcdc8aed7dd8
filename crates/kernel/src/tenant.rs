//! Tenant and entity identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A workspace's id: the tenant every tenant-owned row carries.
///
/// Services obtain one only from an authenticated request (or from an event's
/// envelope); every tenant-scoped database call takes it, so a tenant query
/// cannot be written without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Uuid);

impl TenantId {
    /// A new random (time-ordered) tenant id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps a known UUID.
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses the textual form, rejecting anything that is not a UUID.
    pub fn parse(s: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(s).map(Self)
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl FromStr for TenantId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A new UUIDv7: the id type of every entity and event.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}
