//! Signpost's kernel: the chassis every service stands on. Configuration,
//! database and tenancy, events, cache, rate limiting, object storage, HTTP
//! conventions, telemetry, and the platform that wires them together.
//! No business rules live here.

pub mod auth;
pub mod background;
pub mod cache;
pub mod config;
pub mod db;
pub mod events;
pub mod http;
pub mod keys;
pub mod mail;
pub mod password;
pub mod pdf;
pub mod platform;
pub mod problem;
pub mod ratelimit;
pub mod registry;
pub mod secret;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod tenant;

pub use platform::{
    BoxError, Edge, Kernel, OpenApiSource, Platform, Service, ServiceContext, ServiceParts, StartError,
};
pub use problem::{ApiError, ApiResult, Problem};
pub use secret::Secret;
pub use tenant::TenantId;

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Installs the TLS crypto provider that outbound HTTPS (S3) uses; idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
