//! Cache interface with an in-process and a Redis backend.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::secret::{Secret, redact_url};

/// Errors of the cache (and of the Redis connection shared with the limiter).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Could not connect at start-up.
    #[error("{0}")]
    Connect(String),
}

/// A key-value cache with expiry. Keys are namespaced by the backend's prefix.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The value, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;
    /// Stores a value for `ttl`.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError>;
    /// Removes a value.
    async fn delete(&self, key: &str) -> Result<(), CacheError>;
    /// Answers when the backend is usable (readiness).
    async fn ping(&self) -> Result<(), CacheError>;
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;
}

/// In-process cache, bounded in entries.
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    capacity: usize,
}

impl MemoryCache {
    /// A cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let Ok(mut map) = self.entries.lock() else { return Ok(None) };
        match map.get(key) {
            Some((v, until)) if *until > Instant::now() => Ok(Some(v.clone())),
            Some(_) => {
                map.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let Ok(mut map) = self.entries.lock() else { return Ok(()) };
        if map.len() >= self.capacity && !map.contains_key(key) {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            // Still full: drop an arbitrary tenth rather than grow without bound.
            if map.len() >= self.capacity {
                let victims: Vec<String> = map.keys().take(self.capacity / 10 + 1).cloned().collect();
                for k in victims {
                    map.remove(&k);
                }
            }
        }
        let now = Instant::now();
        let until = now.checked_add(ttl).unwrap_or(now + Duration::from_secs(10 * 365 * 86_400));
        map.insert(key.to_string(), (value.to_vec(), until));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(key);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// A Redis connection with a key prefix, shared by the cache and the limiter.
#[derive(Clone)]
pub struct RedisConn {
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
}

impl RedisConn {
    /// Connects, failing with one line when Redis is unreachable.
    pub async fn connect(url: &Secret<String>, prefix: &str) -> Result<Self, CacheError> {
        let shown = redact_url(url.expose());
        let client = redis::Client::open(url.expose().as_str())
            .map_err(|e| CacheError::Connect(format!("REDIS_URL: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(1);
        let conn =
            tokio::time::timeout(Duration::from_secs(8), ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| CacheError::Connect(format!("cannot reach Redis at {shown}: timed out")))?
                .map_err(|e| CacheError::Connect(format!("cannot connect to Redis at {shown}: {e}")))?;
        Ok(Self { conn, prefix: prefix.to_string() })
    }

    pub(crate) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Answers when Redis does.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Deletes every key under the prefix (test teardown).
    pub async fn delete_prefix(&self) -> Result<u64, CacheError> {
        let mut c = self.conn.clone();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query_async(&mut c).await?;
        if keys.is_empty() {
            return Ok(0);
        }
        let n: u64 = c.del(keys).await?;
        Ok(n)
    }
}

/// Redis cache.
pub struct RedisCache {
    redis: RedisConn,
}

impl RedisCache {
    /// A cache on a connection.
    pub fn new(redis: RedisConn) -> Self {
        Self { redis }
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let mut c = self.redis.conn.clone();
        Ok(c.get(self.redis.key(key)).await?)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let mut c = self.redis.conn.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let () = c.pset_ex(self.redis.key(key), value, ms).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let mut c = self.redis.conn.clone();
        let _: u64 = c.del(self.redis.key(key)).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        self.redis.ping().await
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
