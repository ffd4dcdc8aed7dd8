//! Rate limiting, decided atomically — one `EVALSHA` on Redis using the
//! server's clock, a mutex-guarded state in-process. Limits up to
//! [`EXACT_LIMIT`] use an exact sliding log (login failures, 100/min per
//! tenant); larger ones use a sliding-window counter (the previous window
//! weighted by its overlap), which keeps two integers instead of one entry per
//! request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::cache::{CacheError, RedisConn};

/// The outcome of one check, with what the `RateLimit-*` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The limit of the window.
    pub limit: u64,
    /// Hits left in the window after this one.
    pub remaining: u64,
    /// Until the oldest counted hit leaves the window (`RateLimit-Reset`, `Retry-After`).
    pub reset_after: Duration,
}

/// A sliding-log limiter over string keys.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// If fewer than `limit` hits fell in the last `window`, records one and allows.
    async fn hit(&self, key: &str, limit: u64, window: Duration) -> Result<Decision, CacheError>;
    /// Counts without recording: would a hit be allowed now?
    async fn peek(&self, key: &str, limit: u64, window: Duration) -> Result<Decision, CacheError>;
    /// Forgets a key (e.g. failures after a successful login).
    async fn reset(&self, key: &str) -> Result<(), CacheError>;
    /// `memory` or `redis`.
    /// Takes back the most recent hit on `key` (a login that succeeded after
    /// its attempt was counted). Exact for limits up to [`EXACT_LIMIT`].
    async fn undo(&self, key: &str) -> Result<(), CacheError>;
    fn kind(&self) -> &'static str;
}

/// The largest limit decided by an exact sliding log.
pub const EXACT_LIMIT: u64 = 1000;

/// In-process limiter.
#[derive(Default)]
pub struct MemoryLimiter {
    // Seeded per map (keys are client addresses and tenants), and cheaper than SipHash.
    logs: Mutex<HashMap<String, VecDeque<Instant>, foldhash::fast::RandomState>>,
    windows: Mutex<HashMap<String, (u64, u64, u64), foldhash::fast::RandomState>>,
    calls: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl MemoryLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sliding-window counter: `(window index, count in it, count in the one before)`.
    fn decide_counter(&self, key: &str, limit: u64, window: Duration, record: bool) -> Decision {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let w = u64::try_from(window.as_micros()).unwrap_or(u64::MAX).max(1);
        let (idx, into) = (now / w, now % w);
        let Ok(mut windows) = self.windows.lock() else {
            return Decision { allowed: true, limit, remaining: limit, reset_after: Duration::ZERO };
        };
        let calls = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if calls.is_multiple_of(4096) && windows.len() > 10_000 {
            windows.retain(|_, (i, _, _)| *i + 1 >= idx);
        }
        if !windows.contains_key(key) {
            windows.insert(key.to_string(), (idx, 0, 0));
        }
        let Some(entry) = windows.get_mut(key) else {
            return Decision { allowed: true, limit, remaining: limit, reset_after: Duration::ZERO };
        };
        if entry.0 != idx {
            let previous = if entry.0 + 1 == idx { entry.1 } else { 0 };
            *entry = (idx, 0, previous);
        }
        let weight = (w - into) as f64 / w as f64;
        let estimate = (entry.2 as f64 * weight).floor() as u64 + entry.1;
        let allowed = estimate < limit;
        if allowed && record {
            entry.1 += 1;
        }
        let used = estimate + u64::from(allowed && record);
        Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(used),
            reset_after: Duration::from_micros(w - into),
        }
    }

    fn decide(&self, key: &str, limit: u64, window: Duration, record: bool) -> Decision {
        if limit > EXACT_LIMIT {
            return self.decide_counter(key, limit, window, record);
        }
        let now = Instant::now();
        let Ok(mut logs) = self.logs.lock() else {
            return Decision { allowed: true, limit, remaining: limit, reset_after: Duration::ZERO };
        };
        // Sweep idle keys now and then, not on every call.
        let calls = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if calls.is_multiple_of(4096) && logs.len() > 10_000 {
            logs.retain(|_, log| log.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        // Look up before inserting: the key is only copied the first time it is seen.
        if !logs.contains_key(key) {
            logs.insert(key.to_string(), VecDeque::new());
        }
        let Some(log) = logs.get_mut(key) else {
            return Decision { allowed: true, limit, remaining: limit, reset_after: Duration::ZERO };
        };
        while log.front().is_some_and(|t| now.duration_since(*t) >= window) {
            log.pop_front();
        }
        let count = log.len() as u64;
        let allowed = count < limit;
        if allowed && record {
            log.push_back(now);
        }
        let count = log.len() as u64;
        let reset_after =
            log.front().map_or(Duration::ZERO, |t| window.saturating_sub(now.duration_since(*t)));
        Decision { allowed, limit, remaining: limit.saturating_sub(count), reset_after }
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn hit(&self, key: &str, limit: u64, window: Duration) -> Result<Decision, CacheError> {
        Ok(self.decide(key, limit, window, true))
    }

    async fn peek(&self, key: &str, limit: u64, window: Duration) -> Result<Decision, CacheError> {
        Ok(self.decide(key, limit, window, false))
    }

    async fn reset(&self, key: &str) -> Result<(), CacheError> {
        if let Ok(mut logs) = self.logs.lock() {
            logs.remove(key);
        }
        if let Ok(mut windows) = self.windows.lock() {
            windows.remove(key);
        }
        Ok(())
    }

    async fn undo(&self, key: &str) -> Result<(), CacheError> {
        if let Ok(mut logs) = self.logs.lock()
            && let Some(log) = logs.get_mut(key)
        {
            log.pop_back();
        }
        if let Ok(mut windows) = self.windows.lock()
            && let Some(entry) = windows.get_mut(key)
        {
            entry.1 = entry.1.saturating_sub(1);
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// The whole decision in one script, on Redis's clock, so that any number of
/// gateway processes sharing the Redis enforce one exact limit.
const SLIDING_LOG: &str = r"
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local record = ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if limit > tonumber(ARGV[5]) then
  local idx = math.floor(now / window)
  local into = now % window
  local cur_key = key .. ':' .. idx
  local current = tonumber(redis.call('GET', cur_key) or '0')
  local previous = tonumber(redis.call('GET', key .. ':' .. (idx - 1)) or '0')
  local estimate = math.floor(previous * (window - into) / window) + current
  local allowed = 0
  if estimate < limit then
    allowed = 1
    if record then
      redis.call('INCR', cur_key)
      redis.call('PEXPIRE', cur_key, math.ceil(2 * window / 1000))
      estimate = estimate + 1
    end
  end
  return {allowed, estimate, window - into}
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  allowed = 1
  if record then
    redis.call('ZADD', key, now, ARGV[4])
    count = count + 1
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
  end
end
local reset = 0
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {allowed, count, reset}
";

/// A limit: `count` hits per sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Hits allowed in the window.
    pub count: u64,
    /// The sliding window.
    pub window: Duration,
}

impl Limit {
    /// Parses `N/SECONDS` (`100/60s`, `5/900`); the error names `key`.
    pub fn parse(key: &str, text: &str) -> Result<Self, crate::config::ConfigError> {
        let bad = || crate::config::ConfigError {
            key: key.to_string(),
            message: format!("{text:?} is not a limit like 100/60s"),
        };
        let (count, window) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let secs: u64 = window.trim().trim_end_matches('s').parse().map_err(|_| bad())?;
        if count == 0 || secs == 0 || secs > 86_400 {
            return Err(bad());
        }
        Ok(Self { count, window: Duration::from_secs(secs) })
    }
}

/// Redis sliding log.
pub struct RedisLimiter {
    redis: RedisConn,
    script: redis::Script,
}

impl RedisLimiter {
    /// A limiter on a connection.
    pub fn new(redis: RedisConn) -> Self {
        Self { redis, script: redis::Script::new(SLIDING_LOG) }
    }

    async fn decide(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        record: bool,
    ) -> Result<Decision, CacheError> {
        let mut c = self.redis.conn.clone();
        let window_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
        let (allowed, count, reset_us): (i64, u64, i64) = self
            .script
            .key(self.redis.key(&format!("rl:{key}")))
            .arg(limit)
            .arg(window_us)
            .arg(if record { "1" } else { "0" })
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(EXACT_LIMIT)
            .invoke_async(&mut c)
            .await?;
        Ok(Decision {
            allowed: allowed == 1,
            limit,
            remaining: limit.saturating_sub(count),
            reset_after: Duration::from_micros(u64::try_from(reset_us).unwrap_or(0)),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn hit(&self, key: &str, limit: u64, window: Duration) -> Result<Decision, CacheError> {
        self.decide(key, limit, window, true).await
    }

    async fn peek(&self, key: &str, limit: u64, window: Duration) -> Result<Decision, CacheError> {
        self.decide(key, limit, window, false).await
    }

    async fn reset(&self, key: &str) -> Result<(), CacheError> {
        // The log, and the counter windows of large limits (current and previous).
        let mut c = self.redis.conn.clone();
        let base = self.redis.key(&format!("rl:{key}"));
        let pattern = format!("{base}:*");
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await?;
        keys.push(base);
        let _: u64 = redis::AsyncCommands::del(&mut c, keys).await?;
        Ok(())
    }

    async fn undo(&self, key: &str) -> Result<(), CacheError> {
        let mut c = self.redis.conn.clone();
        let _: Vec<String> =
            redis::cmd("ZPOPMAX").arg(self.redis.key(&format!("rl:{key}"))).query_async(&mut c).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
