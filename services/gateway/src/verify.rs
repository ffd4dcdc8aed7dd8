//! Access-token verification at the edge: keys from `JWT_SECRET_KEY` (HS256)
//! or identity's JWKS (Ed25519, cached, refreshed at most once per interval on
//! an unknown `kid`), verified tokens cached until they expire, and revoked
//! sessions refused at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use kernel::auth::{Caller, KeySet, TokenError};
use kernel::cache::Cache;

/// How often an unknown `kid` may trigger a key-set fetch.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// How soon a failed fetch may be retried.
pub const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
const TOKEN_CACHE_ENTRIES: usize = 50_000;
/// How long a resolved API key is trusted without asking identity again
/// (revocation is still checked on every request).
pub const API_KEY_CACHE: Duration = Duration::from_secs(30);

/// A resolved API key: when it was resolved, when it expires, whom it stands for.
type CachedKey = (Instant, Option<i64>, Arc<Identity>);

type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// A verified caller, with what the edge puts into each of its requests,
/// built once per token (or API key) rather than once per request.
#[derive(Debug)]
pub struct Identity {
    /// Who is calling.
    pub caller: Caller,
    /// The tenant as text (access log, rate-limit metric).
    pub tenant: Arc<str>,
    /// `X-Tenant-ID`, `X-User-ID` and `X-User-Role` as forwarded.
    pub(crate) tenant_header: HeaderValue,
    pub(crate) user_header: Option<HeaderValue>,
    pub(crate) role_header: Option<HeaderValue>,
    /// The caller's key in the revocation list.
    pub(crate) revoked_key: String,
    /// The tenant's key in the rate limiter.
    pub(crate) limit_key: String,
}

impl Identity {
    /// Everything derived from a caller.
    pub fn new(caller: Caller) -> Self {
        let tenant = caller.tenant.to_string();
        Self {
            tenant_header: HeaderValue::from_str(&tenant).unwrap_or(HeaderValue::from_static("")),
            user_header: HeaderValue::from_str(&caller.user_id.to_string()).ok(),
            role_header: HeaderValue::from_str(&caller.role).ok(),
            revoked_key: kernel::auth::revoked_session_key(caller.session_id),
            limit_key: format!("tenant:{tenant}"),
            tenant: tenant.into(),
            caller,
        }
    }
}

/// Verifies access tokens.
pub struct Verifier {
    keys: RwLock<KeySet>,
    jwks_url: Option<String>,
    issuer: String,
    /// When the last fetch started, and whether it succeeded.
    last_fetch: Mutex<Option<(Instant, bool)>>,
    /// Requests that meet an unknown key wait for the one fetch in progress.
    fetching: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    /// Verified tokens with their expiry (only valid tokens get in).
    verified: Mutex<Map<(i64, Arc<Identity>)>>,
    /// Identity in this process, when there is one: its keys need no fetching.
    local: Option<Arc<std::sync::OnceLock<Arc<dyn kernel::auth::Authority>>>>,
    /// Resolved API keys, kept briefly (revocation is checked on every request).
    api_keys: Mutex<Map<CachedKey>>,
    /// Key-set fetches made (for tests and metrics).
    pub fetches: std::sync::atomic::AtomicU64,
}

impl Verifier {
    /// HS256 with a shared secret: no fetching.
    pub fn hs256(secret: &[u8], issuer: &str) -> Self {
        Self::new(KeySet::hs256(secret.to_vec()), None, issuer)
    }

    /// Ed25519 keys from a JWKS URL, fetched when first needed.
    pub fn jwks(url: &str, issuer: &str) -> Self {
        Self::new(KeySet::default(), Some(url.to_string()), issuer)
    }

    fn new(keys: KeySet, jwks_url: Option<String>, issuer: &str) -> Self {
        kernel::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            keys: RwLock::new(keys),
            jwks_url,
            issuer: issuer.to_string(),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            http,
            verified: Mutex::new(Map::default()),
            local: None,
            api_keys: Mutex::new(Map::default()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Verifies with the keys of an identity service in this process when one
    /// has registered itself (embedded mode), before any fetching.
    pub fn with_local(mut self, local: Arc<std::sync::OnceLock<Arc<dyn kernel::auth::Authority>>>) -> Self {
        self.local = Some(local);
        self
    }

    fn local(&self) -> Option<&Arc<dyn kernel::auth::Authority>> {
        self.local.as_ref().and_then(|l| l.get())
    }

    /// The caller behind an API key: identity in this process, or `remote` (the
    /// proxy's introspection call); cached for [`API_KEY_CACHE`].
    pub async fn api_key<F, Fut>(
        &self,
        key: &str,
        remote: F,
    ) -> Result<Option<Arc<Identity>>, kernel::BoxError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<(Caller, Option<i64>)>, kernel::BoxError>>,
    {
        let now = Self::now();
        let cached = self.api_keys.lock().ok().and_then(|m| m.get(key).cloned());
        if let Some((at, expires, caller)) = cached
            && at.elapsed() < API_KEY_CACHE
            && expires.is_none_or(|e| e > now)
        {
            return Ok(Some(caller));
        }
        let resolved = match self.local() {
            Some(authority) => authority.resolve_api_key(key).await?,
            None => remote().await?,
        };
        let Some((caller, expires)) = resolved else { return Ok(None) };
        let identity = Arc::new(Identity::new(caller));
        if let Ok(mut m) = self.api_keys.lock() {
            if m.len() >= TOKEN_CACHE_ENTRIES {
                m.clear();
            }
            m.insert(key.to_string(), (Instant::now(), expires, identity.clone()));
        }
        Ok(Some(identity))
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    /// The caller of a valid token.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        let now = Self::now();
        let cached = self.verified.lock().ok().and_then(|m| m.get(token).cloned());
        if let Some((_, identity)) = cached.filter(|(exp, _)| exp + kernel::auth::CLOCK_SKEW_SECONDS > now) {
            return Ok(identity);
        }
        // Boxed: a request with a cached token does not carry the key fetch's future.
        Box::pin(self.verify_uncached(token, now)).await
    }

    /// [`Verifier::verify`] of a token not in the cache.
    async fn verify_uncached(&self, token: &str, now: i64) -> Result<Arc<Identity>, TokenError> {
        let mut first = self.check(token, now);
        if let (Err(TokenError::UnknownKey | TokenError::Algorithm), Some(authority)) = (&first, self.local())
        {
            if let Ok(mut keys) = self.keys.write() {
                *keys = authority.key_set();
            }
            first = self.check(token, now);
        }
        let claims = match first {
            Err(TokenError::UnknownKey | TokenError::Algorithm)
                if self.jwks_url.is_some() && self.local().is_none() =>
            {
                let _one_at_a_time = self.fetching.lock().await;
                // Another request may have fetched the keys while this one waited.
                match self.check(token, now) {
                    Err(TokenError::UnknownKey | TokenError::Algorithm) if self.refresh_allowed() => {
                        self.fetch_keys().await;
                        self.check(token, now)?
                    }
                    other => other?,
                }
            }
            other => other?,
        };
        let identity = Arc::new(Identity::new(Caller::from_claims(&claims)));
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= TOKEN_CACHE_ENTRIES {
                m.retain(|_, (exp, _)| *exp + kernel::auth::CLOCK_SKEW_SECONDS > now);
                if m.len() >= TOKEN_CACHE_ENTRIES {
                    m.clear();
                }
            }
            m.insert(token.to_string(), (claims.exp, identity.clone()));
        }
        Ok(identity)
    }

    fn check(&self, token: &str, now: i64) -> Result<kernel::auth::Claims, TokenError> {
        let keys = self.keys.read().map_err(|_| TokenError::UnknownKey)?;
        keys.verify(token, &self.issuer, now)
    }

    /// At most one fetch per interval, whatever the traffic of unknown kids.
    fn refresh_allowed(&self) -> bool {
        if self.jwks_url.is_none() {
            return false;
        }
        let Ok(last) = self.last_fetch.lock() else { return false };
        match *last {
            // After a success, an unknown kid is likely forged: refresh rarely.
            Some((t, true)) => t.elapsed() >= JWKS_REFRESH_INTERVAL,
            // After a failure (identity starting, network blip), try again soon.
            Some((t, false)) => t.elapsed() >= JWKS_RETRY_AFTER_FAILURE,
            None => true,
        }
    }

    async fn fetch_keys(&self) {
        let Some(url) = &self.jwks_url else { return };
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fetched = async {
            let res = self.http.get(url).send().await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("status {}", res.status()));
            }
            res.json::<serde_json::Value>().await.map_err(|e| e.to_string())
        }
        .await;
        if let Ok(mut last) = self.last_fetch.lock() {
            *last = Some((Instant::now(), fetched.is_ok()));
        }
        match fetched {
            Ok(doc) => {
                let set = KeySet::from_jwks(&doc);
                if let Ok(mut keys) = self.keys.write() {
                    *keys = set;
                }
            }
            Err(e) => tracing::warn!(url = %url, error = %e, "cannot fetch the JWKS"),
        }
    }
}

/// Whether a caller's session (or API key) was revoked (logout, password change, removal).
pub async fn revoked(cache: &dyn Cache, identity: &Identity) -> Result<bool, kernel::cache::CacheError> {
    Ok(cache.get(&identity.revoked_key).await?.is_some())
}
