//! Password hashing (accounts, protected links): Argon2id on a bounded pool of
//! blocking threads, never on the async runtime, so a flood of logins queues up
//! instead of stalling every other request. Unknown accounts cost one dummy
//! verification, so they take as long as a wrong password.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use tokio::sync::Semaphore;

/// The weakest parameters accepted (OWASP: m = 19 MiB, t = 2, p = 1).
pub const MIN_MEMORY_KIB: u32 = 19_456;
/// Fewest passes accepted.
pub const MIN_ITERATIONS: u32 = 2;
/// Shortest password, in characters.
pub const MIN_CHARS: usize = 8;
/// Longest password, in characters.
pub const MAX_CHARS: usize = 128;

/// Why a password is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Fewer than 8 characters.
    #[error("the password needs at least 8 characters")]
    TooShort,
    /// More than 128 characters.
    #[error("the password may have at most 128 characters")]
    TooLong,
}

/// Checks length only: any Unicode, no composition rules (NIST 800-63B).
pub fn acceptable(password: &str) -> Result<(), PasswordError> {
    let n = password.chars().count();
    if n < MIN_CHARS {
        Err(PasswordError::TooShort)
    } else if n > MAX_CHARS {
        Err(PasswordError::TooLong)
    } else {
        Ok(())
    }
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password (or no account).
    No,
    /// Right password; the hash is current.
    Yes,
    /// Right password; here is a hash with the current parameters to store.
    YesRehash(String),
}

/// Argon2id with the configured parameters, computed on at most `threads` blocking threads.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    dummy: Arc<String>,
}

impl Hasher {
    /// A hasher; parameters below the minimum are refused.
    pub fn new(memory_kib: u32, iterations: u32, threads: usize) -> Result<Self, String> {
        if memory_kib < MIN_MEMORY_KIB || iterations < MIN_ITERATIONS {
            return Err(format!("Argon2id needs m >= {MIN_MEMORY_KIB} KiB and t >= {MIN_ITERATIONS}"));
        }
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| e.to_string())?;
        let dummy = hash_with(&params, "dummy password for unknown accounts").map_err(|e| e.to_string())?;
        Ok(Self { params, permits: Arc::new(Semaphore::new(threads.max(1))), dummy: Arc::new(dummy) })
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, crate::BoxError> {
        let params = self.params.clone();
        self.run(move || hash_with(&params, &password).map_err(|e| e.to_string().into())).await
    }

    /// Verifies `password` against `stored`, or against a dummy hash when there
    /// is no account (`stored` is `None`), so both take the same time.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<Verified, crate::BoxError> {
        let params = self.params.clone();
        let (stored, real) = match stored {
            Some(s) => (s, true),
            None => (self.dummy.as_ref().clone(), false),
        };
        self.run(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else { return Ok(Verified::No) };
            let ok = argon2(&params).verify_password(password.as_bytes(), &parsed).is_ok();
            if !(ok && real) {
                return Ok(Verified::No);
            }
            let current = parsed.algorithm.as_str() == "argon2id"
                && Params::try_from(&parsed).is_ok_and(|p| {
                    p.m_cost() >= params.m_cost() && p.t_cost() >= params.t_cost() && p.p_cost() == 1
                });
            if current {
                Ok(Verified::Yes)
            } else {
                hash_with(&params, &password).map(Verified::YesRehash).map_err(|e| e.to_string().into())
            }
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, crate::BoxError> + Send + 'static,
    ) -> Result<T, crate::BoxError> {
        let _permit = self.permits.acquire().await?;
        let timer = std::time::Instant::now();
        let out = tokio::task::spawn_blocking(job).await?;
        metrics::histogram!("password_hash_seconds").record(timer.elapsed().as_secs_f64());
        out
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_with(params: &Params, password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(argon2(params).hash_password(password.as_bytes(), &salt)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_the_only_rule_and_counts_characters_not_bytes() {
        assert_eq!(acceptable("short"), Err(PasswordError::TooShort));
        assert_eq!(acceptable("password"), Ok(()));
        assert_eq!(acceptable("ééééééé"), Err(PasswordError::TooShort), "7 characters, 14 bytes");
        assert_eq!(acceptable("密码密码密码密码"), Ok(()));
        assert_eq!(acceptable(&"a".repeat(128)), Ok(()));
        assert_eq!(acceptable(&"a".repeat(129)), Err(PasswordError::TooLong));
        assert_eq!(acceptable("        "), Ok(()), "spaces are characters");
    }

    #[test]
    fn weak_parameters_are_refused() {
        assert!(Hasher::new(4096, 3, 1).is_err());
        assert!(Hasher::new(MIN_MEMORY_KIB, 1, 1).is_err());
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_weaker_ones_are_rehashed() {
        let h = Hasher::new(MIN_MEMORY_KIB, 2, 1).unwrap_or_else(|e| unreachable!("{e}"));
        let stored = h.hash("correct horse".into()).await.unwrap_or_default();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert_eq!(h.verify("correct horse".into(), Some(stored.clone())).await.ok(), Some(Verified::Yes));
        assert_eq!(h.verify("wrong horse".into(), Some(stored.clone())).await.ok(), Some(Verified::No));
        assert_eq!(h.verify("correct horse".into(), None).await.ok(), Some(Verified::No));
        let stronger = Hasher::new(MIN_MEMORY_KIB, 3, 1).unwrap_or_else(|e| unreachable!("{e}"));
        match stronger.verify("correct horse".into(), Some(stored)).await.ok() {
            Some(Verified::YesRehash(new)) => assert!(new.contains("m=19456,t=3,p=1"), "{new}"),
            other => unreachable!("expected a rehash, got {other:?}"),
        }
    }
}
