//! Access tokens on the wire (ARCHITECTURE.md §5): short-lived JWTs signed with
//! Ed25519 (`EdDSA`, keys published as a JWKS) or HS256 from `JWT_SECRET_KEY`,
//! and the verified caller that handlers extract.
//!
//! Verification is strict by construction: the algorithm comes from our key
//! set, never from the token; `alg=none`, unknown algorithms, header-carried
//! keys (`jwk`, `jku`, `x5u`, `x5c`) and unknown `kid`s are refused; `typ`,
//! `iss`, `aud`, `exp` and `nbf` are required to match, with 60 s of skew.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::problem::Problem;
use crate::secret::Secret;
use crate::tenant::TenantId;

/// The `typ` header of an access token (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// The longest an access token may live, in seconds.
pub const MAX_ACCESS_TOKEN_SECONDS: i64 = 15 * 60;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const CLOCK_SKEW_SECONDS: i64 = 60;
/// Longest token accepted, in bytes (a header-size attack is not a parse job).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The audience of Signpost's access tokens.
pub const AUDIENCE: &str = "signpost";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the public URL of the identity service.
    pub iss: String,
    /// Audience: `signpost`.
    pub aud: String,
    /// The user.
    pub sub: Uuid,
    /// The tenant (workspace) the token acts in.
    pub tid: TenantId,
    /// The user's role in that workspace.
    pub role: String,
    /// The session; revoking it ends the token at once.
    pub sid: Uuid,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Token id.
    pub jti: Uuid,
}

/// Why a token was refused. Every variant is a 401 to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token")]
    Malformed,
    /// `alg` is none, unknown, or not one we have keys for.
    #[error("algorithm not allowed")]
    Algorithm,
    /// The header carries key material or a key URL.
    #[error("embedded keys are not accepted")]
    EmbeddedKey,
    /// `kid` is not in our key set (the caller may refresh the set once).
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `typ` is not `at+jwt`.
    #[error("not an access token")]
    TokenType,
    /// `exp` passed, or the token lives longer than allowed.
    #[error("expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// `iss` or `aud` is not ours.
    #[error("wrong issuer or audience")]
    Audience,
}

impl From<TokenError> for Problem {
    fn from(e: TokenError) -> Self {
        Problem::unauthorized(format!("the access token is invalid: {e}")).with_header(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        )
    }
}

/// A key that signs tokens (identity holds one).
pub enum SigningKey {
    /// HS256 with a shared secret.
    Hs256(Secret<Vec<u8>>),
    /// Ed25519 with a key id.
    Ed25519 {
        /// Key id published in the JWKS.
        kid: String,
        /// The key pair.
        pair: Ed25519KeyPair,
    },
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hs256(_) => f.write_str("SigningKey::Hs256([REDACTED])"),
            Self::Ed25519 { kid, .. } => write!(f, "SigningKey::Ed25519({kid})"),
        }
    }
}

impl SigningKey {
    /// An Ed25519 key from a 32-byte seed; the key id is derived from the public key.
    pub fn ed25519_from_seed(seed: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| format!("Ed25519 seed: {e}"))?;
        let kid = URL_SAFE_NO_PAD
            .encode(&ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref()).as_ref()[..12]);
        Ok(Self::Ed25519 { kid, pair })
    }

    /// Signs claims into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = match self {
            Self::Hs256(_) => json!({ "alg": "HS256", "typ": ACCESS_TOKEN_TYPE }),
            Self::Ed25519 { kid, .. } => json!({ "alg": "EdDSA", "typ": ACCESS_TOKEN_TYPE, "kid": kid }),
        };
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default())
        );
        let sig = match self {
            Self::Hs256(secret) => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose());
                ring::hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
            }
            Self::Ed25519 { pair, .. } => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The verifying side of this key.
    pub fn key_set(&self) -> KeySet {
        match self {
            Self::Hs256(secret) => KeySet::hs256(secret.expose().clone()),
            Self::Ed25519 { kid, pair } => {
                let mut set = KeySet::default();
                set.ed25519.insert(kid.clone(), pair.public_key().as_ref().to_vec());
                set
            }
        }
    }
}

/// The keys tokens are checked against.
#[derive(Clone, Default)]
pub struct KeySet {
    hs256: Option<Secret<Vec<u8>>>,
    ed25519: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("hs256", &self.hs256.is_some())
            .field("ed25519", &self.ed25519.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// Only HS256 with this secret.
    pub fn hs256(secret: Vec<u8>) -> Self {
        Self { hs256: Some(Secret::new(secret)), ed25519: HashMap::new() }
    }

    /// Ed25519 keys from a JWKS document (`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":…,"x":…}]}`);
    /// other key types are skipped.
    pub fn from_jwks(jwks: &Value) -> Self {
        let mut set = Self::default();
        for k in jwks.get("keys").and_then(Value::as_array).into_iter().flatten() {
            let field = |n: &str| k.get(n).and_then(Value::as_str);
            let x = field("x").and_then(|x| URL_SAFE_NO_PAD.decode(x).ok()).filter(|x| x.len() == 32);
            if field("kty") == Some("OKP")
                && field("crv") == Some("Ed25519")
                && let (Some(kid), Some(x)) = (field("kid"), x)
            {
                set.ed25519.insert(kid.to_string(), x);
            }
        }
        set
    }

    /// The public keys as a JWKS document.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .ed25519
            .iter()
            .map(|(kid, x)| {
                json!({ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": URL_SAFE_NO_PAD.encode(x) })
            })
            .collect();
        json!({ "keys": keys })
    }

    /// Whether there is any key at all.
    pub fn is_empty(&self) -> bool {
        self.hs256.is_none() && self.ed25519.is_empty()
    }

    /// Verifies a compact JWT and returns its claims.
    pub fn verify(&self, token: &str, issuer: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .ok_or(TokenError::Malformed)?;
        if ["jwk", "jku", "x5u", "x5c"].iter().any(|k| header.get(k).is_some()) {
            return Err(TokenError::EmbeddedKey);
        }
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)?;
        let input = &token.as_bytes()[..h.len() + 1 + p.len()];
        match header.get("alg").and_then(Value::as_str) {
            // HS256 only with our shared secret: a public key is never an HMAC secret.
            Some("HS256") => {
                let secret = self.hs256.as_ref().ok_or(TokenError::Algorithm)?;
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose());
                ring::hmac::verify(&key, input, &signature).map_err(|_| TokenError::Signature)?;
            }
            Some("EdDSA") => {
                if self.ed25519.is_empty() {
                    return Err(TokenError::Algorithm);
                }
                let kid = header.get("kid").and_then(Value::as_str).ok_or(TokenError::UnknownKey)?;
                let public = self.ed25519.get(kid).ok_or(TokenError::UnknownKey)?;
                UnparsedPublicKey::new(&ED25519, public)
                    .verify(input, &signature)
                    .map_err(|_| TokenError::Signature)?;
            }
            _ => return Err(TokenError::Algorithm),
        }
        if header.get("typ").and_then(Value::as_str) != Some(ACCESS_TOKEN_TYPE) {
            return Err(TokenError::TokenType);
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != issuer || claims.aud != AUDIENCE {
            return Err(TokenError::Audience);
        }
        if claims.exp + CLOCK_SKEW_SECONDS <= now || claims.exp - claims.iat > MAX_ACCESS_TOKEN_SECONDS {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECONDS)
            || claims.iat > now + CLOCK_SKEW_SECONDS
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    /// An access token of a user session.
    User,
    /// An API key.
    ApiKey,
}

/// The verified caller of a request, put into the request by the gateway (or a
/// service's own authentication layer). The only source of a handler's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user (for an API key: the user who created it).
    pub user_id: Uuid,
    /// The workspace.
    pub tenant: TenantId,
    /// Role in the workspace: owner, admin, member, viewer.
    pub role: String,
    /// The session (users) or key id (API keys).
    pub session_id: Uuid,
    /// Granted scopes; empty means the role's full rights.
    pub scopes: Vec<String>,
    /// Token or key.
    pub kind: CallerKind,
}

impl Caller {
    /// The caller of a verified access token.
    pub fn from_claims(c: &Claims) -> Self {
        Self {
            user_id: c.sub,
            tenant: c.tid,
            role: c.role.clone(),
            session_id: c.sid,
            scopes: c.scope.split_whitespace().map(str::to_string).collect(),
            kind: CallerKind::User,
        }
    }

    /// Whether the caller may act with `scope` (`links:read`, `links:write`,
    /// `workspace:admin`): by role (viewers read, members write, admins
    /// administer), and for an API key also only within its scopes.
    pub fn allows(&self, scope: &str) -> bool {
        let by_role = role_rank(&self.role) >= role_rank(scope_role(scope));
        by_role && (self.kind == CallerKind::User || self.scopes.iter().any(|s| s == scope))
    }

    /// [`Caller::allows`] as a 403 problem.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.allows(scope) {
            Ok(())
        } else if self.kind == CallerKind::ApiKey && role_rank(&self.role) >= role_rank(scope_role(scope)) {
            Err(Problem::forbidden(format!("this API key lacks the {scope} scope")))
        } else {
            Err(Problem::forbidden(format!("the {} role may not do this ({scope})", self.role)))
        }
    }

    /// The actor string of events this caller causes.
    pub fn actor(&self) -> String {
        match self.kind {
            CallerKind::User => format!("user:{}", self.user_id),
            CallerKind::ApiKey => format!("api_key:{}", self.session_id),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            Problem::unauthorized("authentication required").with_header(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            )
        })
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned())
    }
}

/// The least role a scope needs: `…:write` a member, `workspace:admin` an
/// admin, anything else a viewer.
pub fn scope_role(scope: &str) -> &'static str {
    if scope == "workspace:admin" {
        "admin"
    } else if scope.ends_with(":write") {
        "member"
    } else {
        "viewer"
    }
}

/// Orders roles: viewer < member < admin < owner (unknown roles rank lowest).
pub fn role_rank(role: &str) -> u8 {
    match role {
        "owner" => 4,
        "admin" => 3,
        "member" => 2,
        "viewer" => 1,
        _ => 0,
    }
}

/// What identity offers other services of the same process (the gateway).
#[async_trait::async_trait]
pub trait Authority: Send + Sync + 'static {
    /// The keys that verify access tokens now.
    fn key_set(&self) -> KeySet;
    /// The caller an API key stands for and when the key expires (Unix
    /// seconds); `None` when it is unknown, revoked or expired.
    async fn resolve_api_key(&self, key: &str) -> Result<Option<(Caller, Option<i64>)>, crate::BoxError>;
}

/// The prefix of every API key.
pub const API_KEY_PREFIX: &str = "sp_";

/// The header a service shows on another service's `/internal` routes.
pub const INTERNAL_TOKEN_HEADER: &str = "x-signpost-internal-token";

/// Whether `headers` carry the configured internal token (`SIGNPOST_INTERNAL_TOKEN`);
/// never, when none is configured. Digests are compared, so the time taken says
/// nothing about the token.
pub fn internal_caller(configured: Option<&Secret<String>>, headers: &axum::http::HeaderMap) -> bool {
    use sha2::{Digest, Sha256};
    let Some(token) = configured else { return false };
    let Some(given) = headers.get(INTERNAL_TOKEN_HEADER) else { return false };
    Sha256::digest(given.as_bytes()) == Sha256::digest(token.expose().as_bytes())
}

/// The cache key that marks a session revoked; identity sets it, the gateway reads it.
pub fn revoked_session_key(session: Uuid) -> String {
    format!("auth:revoked:{session}")
}

/// How long a revocation mark must outlive the session's last access token.
pub const REVOCATION_TTL_SECONDS: u64 = (MAX_ACCESS_TOKEN_SECONDS + CLOCK_SKEW_SECONDS) as u64;

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "http://signpost.test";

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISS.into(),
            aud: AUDIENCE.into(),
            sub: Uuid::now_v7(),
            tid: TenantId::new(),
            role: "owner".into(),
            sid: Uuid::now_v7(),
            scope: String::new(),
            exp: now + 900,
            iat: now,
            nbf: None,
            jti: Uuid::now_v7(),
        }
    }

    fn forge(header: Value, claims: &Claims, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    fn ed() -> SigningKey {
        SigningKey::ed25519_from_seed(&[7u8; 32]).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn ed25519_and_hs256_tokens_round_trip() {
        let now = 1_800_000_000;
        let c = claims(now);
        let k = ed();
        assert_eq!(k.key_set().verify(&k.sign(&c), ISS, now), Ok(c.clone()));
        let h = SigningKey::Hs256(Secret::new(vec![9u8; 32]));
        assert_eq!(h.key_set().verify(&h.sign(&c), ISS, now), Ok(c));
    }

    #[test]
    fn alg_none_unknown_alg_and_embedded_keys_are_refused() {
        let now = 1_800_000_000;
        let c = claims(now);
        let set = ed().key_set();
        let none = forge(json!({"alg": "none", "typ": ACCESS_TOKEN_TYPE}), &c, b"");
        assert_eq!(set.verify(&none, ISS, now), Err(TokenError::Algorithm));
        let rs = forge(json!({"alg": "RS256", "typ": ACCESS_TOKEN_TYPE}), &c, b"x");
        assert_eq!(set.verify(&rs, ISS, now), Err(TokenError::Algorithm));
        let jwk = forge(json!({"alg": "EdDSA", "typ": ACCESS_TOKEN_TYPE, "jwk": {"kty": "OKP"}}), &c, b"x");
        assert_eq!(set.verify(&jwk, ISS, now), Err(TokenError::EmbeddedKey));
        let jku = forge(json!({"alg": "EdDSA", "typ": ACCESS_TOKEN_TYPE, "jku": "https://evil"}), &c, b"x");
        assert_eq!(set.verify(&jku, ISS, now), Err(TokenError::EmbeddedKey));
    }

    #[test]
    fn hs256_signed_with_our_public_key_is_refused() {
        let now = 1_800_000_000;
        let c = claims(now);
        let k = ed();
        let set = k.key_set();
        let public = match &k {
            SigningKey::Ed25519 { pair, .. } => pair.public_key().as_ref().to_vec(),
            SigningKey::Hs256(_) => unreachable!(),
        };
        let confused = SigningKey::Hs256(Secret::new(public)).sign(&c);
        assert_eq!(set.verify(&confused, ISS, now), Err(TokenError::Algorithm));
    }

    #[test]
    fn unknown_kid_wrong_typ_iss_aud_and_times_are_refused() {
        let now = 1_800_000_000;
        let k = ed();
        let set = k.key_set();
        let other = SigningKey::ed25519_from_seed(&[8u8; 32]).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(set.verify(&other.sign(&claims(now)), ISS, now), Err(TokenError::UnknownKey));
        let mut c = claims(now);
        c.aud = "other".into();
        assert_eq!(set.verify(&k.sign(&c), ISS, now), Err(TokenError::Audience));
        assert_eq!(set.verify(&k.sign(&claims(now)), "http://elsewhere", now), Err(TokenError::Audience));
        let mut c = claims(now - 2000);
        c.exp = now - 61;
        assert_eq!(set.verify(&k.sign(&c), ISS, now), Err(TokenError::Expired));
        let mut c = claims(now);
        c.exp = now + 3600;
        assert_eq!(set.verify(&k.sign(&c), ISS, now), Err(TokenError::Expired), "lives too long");
        let mut c = claims(now + 120);
        c.nbf = Some(now + 120);
        assert_eq!(set.verify(&k.sign(&c), ISS, now), Err(TokenError::NotYetValid));
        let mut c = claims(now);
        c.nbf = Some(now + 120);
        assert_eq!(set.verify(&k.sign(&c), ISS, now), Err(TokenError::NotYetValid), "nbf alone");
        let c = claims(now + 30);
        assert!(set.verify(&k.sign(&c), ISS, now).is_ok(), "30 s of skew is fine");
        let tampered = {
            let t = k.sign(&claims(now));
            let mut b = t.into_bytes();
            let i = b.len() - 5;
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap_or_default()
        };
        assert_eq!(set.verify(&tampered, ISS, now), Err(TokenError::Signature));
        assert_eq!(set.verify("a.b", ISS, now), Err(TokenError::Malformed));
        assert_eq!(set.verify(&"x".repeat(9000), ISS, now), Err(TokenError::Malformed));
        let id_token = forge(json!({"alg": "EdDSA", "typ": "JWT", "kid": "k"}), &claims(now), b"x");
        assert!(set.verify(&id_token, ISS, now).is_err());
    }

    #[test]
    fn scopes_follow_roles_and_api_keys_are_held_to_their_scopes() {
        let mut c = Caller {
            user_id: Uuid::now_v7(),
            tenant: TenantId::new(),
            role: "viewer".into(),
            session_id: Uuid::now_v7(),
            scopes: Vec::new(),
            kind: CallerKind::User,
        };
        assert!(c.allows("links:read") && !c.allows("links:write"));
        c.role = "member".into();
        assert!(c.allows("links:write") && !c.allows("workspace:admin"));
        c.kind = CallerKind::ApiKey;
        c.scopes = vec!["links:read".into()];
        assert!(c.allows("links:read") && !c.allows("links:write") && !c.allows("analytics:read"));
        assert!(c.require("links:write").is_err());
        c.role = "viewer".into();
        c.scopes = vec!["links:write".into()];
        assert!(!c.allows("links:write"), "a key never exceeds its creator's role");
    }

    #[test]
    fn jwks_round_trip_keeps_only_ed25519() {
        let set = ed().key_set();
        let doc = set.jwks();
        let back = KeySet::from_jwks(&doc);
        assert_eq!(back.ed25519, set.ed25519);
        let junk = json!({"keys": [{"kty": "RSA", "n": "x"}, {"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "short"}]});
        assert!(KeySet::from_jwks(&junk).is_empty());
    }
}
