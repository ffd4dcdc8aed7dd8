//! Social login: Google (OpenID Connect) and GitHub (OAuth 2), both with the
//! authorization-code flow, PKCE (S256) and `state`, plus `nonce` for OIDC.
//! Identities are keyed by (provider, subject); an existing account is linked
//! by email only when the provider says the email is verified. The redirect URI
//! is fixed by configuration (`<public URL>/v1/auth/oauth/<provider>/callback`)
//! and sent identically on both legs, so the provider's exact match holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kernel::config::Config;
use kernel::db::Timestamp;
use kernel::http::{ClientIp, Path, Query};
use kernel::{ApiError, ApiResult, BoxError, Problem, Secret};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{Tokens, create_account, landing_workspace, open_session, parse_email};
use crate::store::NewIdentity;
use crate::{AppState, Identity, tokens};

/// How long a sign-in may take between start and callback.
const STATE_TTL: Duration = Duration::from_secs(600);
/// How long a provider's signing keys are reused.
const JWKS_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
enum Kind {
    /// OpenID Connect: endpoints from the issuer's discovery document.
    Oidc { issuer: String },
    /// GitHub: fixed endpoints under its web and API URLs.
    GitHub { web: String, api: String },
}

/// A configured provider.
struct Provider {
    name: &'static str,
    kind: Kind,
    client_id: String,
    client_secret: Secret<String>,
    /// OIDC discovery (authorization, token and JWKS endpoints), read once.
    discovery: tokio::sync::OnceCell<Discovery>,
    jwks: Mutex<Option<(Instant, Value)>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The providers configured in the environment.
pub(crate) struct Providers {
    list: Vec<Arc<Provider>>,
    http: reqwest::Client,
    public_url: String,
}

impl Providers {
    pub(crate) fn from_config(config: &Config) -> Result<Self, BoxError> {
        let i = &config.identity;
        let mut list = Vec::new();
        let pair = |id: &Option<String>,
                    secret: &Option<Secret<String>>,
                    name: &str|
         -> Result<Option<(String, Secret<String>)>, BoxError> {
            match (id, secret) {
                (Some(id), Some(secret)) => Ok(Some((id.clone(), secret.clone()))),
                (None, None) => Ok(None),
                _ => {
                    Err(format!("SIGNPOST_{name}_CLIENT_ID and SIGNPOST_{name}_CLIENT_SECRET go together")
                        .into())
                }
            }
        };
        let url = |key: &str, v: &Option<String>, default: &str| -> Result<String, BoxError> {
            let u = v.clone().unwrap_or_else(|| default.to_string());
            if u.starts_with("https://") || u.starts_with("http://") {
                Ok(u.trim_end_matches('/').to_string())
            } else {
                Err(format!("{key}: {u:?} is not an http(s) URL").into())
            }
        };
        if let Some((client_id, client_secret)) =
            pair(&i.google_client_id, &i.google_client_secret, "GOOGLE")?
        {
            let issuer = url("SIGNPOST_GOOGLE_ISSUER", &i.google_issuer, "https://accounts.google.com")?;
            list.push(Arc::new(Provider {
                name: "google",
                kind: Kind::Oidc { issuer },
                client_id,
                client_secret,
                discovery: tokio::sync::OnceCell::new(),
                jwks: Mutex::new(None),
            }));
        }
        if let Some((client_id, client_secret)) =
            pair(&i.github_client_id, &i.github_client_secret, "GITHUB")?
        {
            let web = url("SIGNPOST_GITHUB_URL", &i.github_url, "https://github.com")?;
            let api = url("SIGNPOST_GITHUB_API_URL", &i.github_api_url, "https://api.github.com")?;
            list.push(Arc::new(Provider {
                name: "github",
                kind: Kind::GitHub { web, api },
                client_id,
                client_secret,
                discovery: tokio::sync::OnceCell::new(),
                jwks: Mutex::new(None),
            }));
        }
        kernel::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("signpost")
            .build()?;
        Ok(Self { list, http, public_url: config.public_url.clone() })
    }

    fn get(&self, name: &str) -> Result<Arc<Provider>, Problem> {
        self.list.iter().find(|p| p.name == name).cloned().ok_or_else(|| {
            Problem::not_found().with_detail(format!("sign-in with {name:?} is not configured"))
        })
    }

    fn redirect_uri(&self, provider: &str) -> String {
        format!("{}/v1/auth/oauth/{provider}/callback", self.public_url)
    }
}

impl Provider {
    async fn discovery(&self, http: &reqwest::Client) -> Result<&Discovery, BoxError> {
        let Kind::Oidc { issuer } = &self.kind else { return Err("not an OIDC provider".into()) };
        self.discovery
            .get_or_try_init(|| async {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let d: Discovery = http.get(&url).send().await?.error_for_status()?.json().await?;
                if d.issuer.trim_end_matches('/') != issuer.as_str() {
                    return Err::<Discovery, BoxError>(
                        format!("discovery names issuer {:?}, expected {issuer:?}", d.issuer).into(),
                    );
                }
                Ok(d)
            })
            .await
    }

    /// The provider's signing keys, fetched again when a `kid` is unknown (at most every JWKS_TTL otherwise).
    async fn jwks(&self, http: &reqwest::Client, uri: &str, kid: &str) -> Result<Value, BoxError> {
        let cached = self.jwks.lock().ok().and_then(|j| j.clone());
        if let Some((at, doc)) = cached {
            let has_kid = doc["keys"].as_array().is_some_and(|ks| ks.iter().any(|k| k["kid"] == kid));
            if at.elapsed() < JWKS_TTL && has_kid {
                return Ok(doc);
            }
        }
        let doc: Value = http.get(uri).send().await?.error_for_status()?.json().await?;
        if let Ok(mut j) = self.jwks.lock() {
            *j = Some((Instant::now(), doc.clone()));
        }
        Ok(doc)
    }
}

pub(crate) fn routes() -> Router<Arc<Identity>> {
    Router::new()
        .route("/v1/auth/oauth/{provider}/start", get(start))
        .route("/v1/auth/oauth/{provider}/callback", get(callback))
}

/// What is remembered between start and callback (in the cache, single use).
#[derive(Serialize, Deserialize)]
struct Pending {
    provider: String,
    verifier: String,
    nonce: String,
    redirect_to: Option<String>,
}

fn state_key(state: &str) -> String {
    format!("oauth:state:{}", tokens::digest(state))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartQuery {
    redirect_to: Option<String>,
}

/// A path of the app to land on afterwards: same origin only.
fn safe_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && !p.contains('\\')
        && p.len() <= 512
        && !p.chars().any(char::is_control)
}

async fn start(
    State(id): AppState,
    Path(name): Path<String>,
    Query(q): Query<StartQuery>,
) -> ApiResult<Response> {
    let p = id.oauth.get(&name)?;
    if let Some(r) = &q.redirect_to
        && !safe_path(r)
    {
        return Err(Problem::validation("redirect_to", "is a path of the app, starting with /").into());
    }
    let state = tokens::generate("");
    let verifier = tokens::generate("");
    let nonce = tokens::generate("");
    let pending = Pending {
        provider: name.clone(),
        verifier: verifier.clone(),
        nonce: nonce.clone(),
        redirect_to: q.redirect_to,
    };
    id.kernel
        .cache
        .set(&state_key(&state), &serde_json::to_vec(&pending).map_err(ApiError::internal)?, STATE_TTL)
        .await
        .map_err(ApiError::internal)?;
    let redirect_uri = id.oauth.redirect_uri(&name);
    let challenge = tokens::pkce_challenge(&verifier);
    let (endpoint, scope) = match &p.kind {
        Kind::Oidc { .. } => {
            let d = p.discovery(&id.oauth.http).await.map_err(|e| upstream(&name, &e))?;
            (d.authorization_endpoint.clone(), "openid email profile")
        }
        Kind::GitHub { web, .. } => (format!("{web}/login/oauth/authorize"), "read:user user:email"),
    };
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", p.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", scope),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if matches!(p.kind, Kind::Oidc { .. }) {
        params.push(("nonce", nonce.as_str()));
    }
    let url = reqwest::Url::parse_with_params(&endpoint, &params).map_err(ApiError::internal)?;
    let mut res = StatusCode::FOUND.into_response();
    res.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(url.as_str()).map_err(ApiError::internal)?);
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

fn upstream(provider: &str, e: &BoxError) -> Problem {
    tracing::warn!(provider, error = %e, "OAuth provider call failed");
    Problem::new(StatusCode::BAD_GATEWAY, "oauth-provider", "Sign-in provider failed")
        .with_detail(format!("{provider} did not complete the sign-in"))
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// What a provider says about the person.
struct Profile {
    subject: String,
    email: Option<String>,
    verified: bool,
    name: Option<String>,
}

async fn callback(
    State(id): AppState,
    Path(name): Path<String>,
    headers: HeaderMap,
    ip: Option<axum::Extension<ClientIp>>,
    Query(q): Query<CallbackQuery>,
) -> ApiResult<Response> {
    let p = id.oauth.get(&name)?;
    let bad = |m: &str| Problem::bad_request(m.to_string());
    let state =
        q.state.as_deref().filter(|s| s.len() <= 100).ok_or_else(|| bad("the state parameter is missing"))?;
    // The state is single use, and must belong to this provider.
    let key = state_key(state);
    let pending = id.kernel.cache.get(&key).await.map_err(ApiError::internal)?;
    let _ = id.kernel.cache.delete(&key).await;
    let pending: Pending = pending
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|p: &Pending| p.provider == name)
        .ok_or_else(|| bad("unknown or expired sign-in state; start again"))?;
    if let Some(e) = q.error {
        return Err(bad(&format!("the provider refused: {}", e.chars().take(100).collect::<String>())).into());
    }
    let code = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or_else(|| bad("the code parameter is missing"))?;
    let profile = match &p.kind {
        Kind::Oidc { .. } => oidc_profile(&id, &p, code, &pending).await,
        Kind::GitHub { web, api } => github_profile(&id, &p, web, api, code, &pending).await,
    }
    .map_err(|e| match e.downcast::<ProblemError>() {
        Ok(p) => p.0,
        Err(e) => upstream(&name, &e),
    })?;
    let tokens = sign_in(&id, &p, profile, &headers, ip.as_deref()).await?;
    match pending.redirect_to {
        None => Ok(axum::Json(tokens).into_response()),
        Some(path) => {
            // Tokens travel in the fragment: the browser never sends it to a server.
            let fragment = serde_urlencoded(&tokens);
            let location = format!("{}{path}#{fragment}", id.settings.app_url);
            let mut res = StatusCode::FOUND.into_response();
            res.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_str(&location).map_err(ApiError::internal)?);
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(res)
        }
    }
}

fn serde_urlencoded(t: &Tokens) -> String {
    let v = serde_json::to_value(t).unwrap_or_default();
    let mut url = reqwest::Url::parse("http://x/").unwrap_or_else(|_| unreachable!("a fixed URL parses"));
    {
        let mut pairs = url.query_pairs_mut();
        for k in ["access_token", "refresh_token", "token_type", "expires_in"] {
            let s = match &v[k] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            pairs.append_pair(k, &s);
        }
    }
    url.query().unwrap_or_default().to_string()
}

/// A client-facing refusal carried through a `BoxError`.
#[derive(Debug)]
struct ProblemError(Problem);

impl std::fmt::Display for ProblemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ProblemError {}

fn refuse(m: impl Into<String>) -> BoxError {
    Box::new(ProblemError(Problem::unauthorized(m.into())))
}

async fn exchange(
    id: &Identity,
    p: &Provider,
    url: &str,
    code: &str,
    pending: &Pending,
) -> Result<Value, BoxError> {
    let redirect_uri = id.oauth.redirect_uri(p.name);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", p.client_id.as_str()),
        ("client_secret", p.client_secret.expose().as_str()),
        ("code_verifier", pending.verifier.as_str()),
    ];
    let body = reqwest::Url::parse_with_params("http://x/", &form)?.query().unwrap_or_default().to_string();
    let res = id
        .oauth
        .http
        .post(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await?;
    let status = res.status();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() || v.get("error").is_some() {
        return Err(refuse(format!(
            "the provider did not accept the code ({})",
            v.get("error").and_then(Value::as_str).unwrap_or("error")
        )));
    }
    Ok(v)
}

async fn oidc_profile(
    id: &Identity,
    p: &Provider,
    code: &str,
    pending: &Pending,
) -> Result<Profile, BoxError> {
    let d = p.discovery(&id.oauth.http).await?;
    let tokens = exchange(id, p, &d.token_endpoint, code, pending).await?;
    let id_token =
        tokens.get("id_token").and_then(Value::as_str).ok_or("no id_token in the token response")?;
    let claims = verify_id_token(id, p, d, id_token, &pending.nonce).await?;
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or_else(|| refuse("the ID token has no subject"))?;
    let verified = match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    Ok(Profile {
        subject: subject.to_string(),
        email: claims.get("email").and_then(Value::as_str).map(str::to_string),
        verified,
        name: claims.get("name").and_then(Value::as_str).map(str::to_string),
    })
}

/// Checks an ID token: RS256 by a key of the provider's JWKS, issuer, audience,
/// expiry (60 s of skew) and the nonce of this sign-in.
async fn verify_id_token(
    id: &Identity,
    p: &Provider,
    d: &Discovery,
    token: &str,
    nonce: &str,
) -> Result<Value, BoxError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(refuse("the ID token is malformed"));
    };
    let decode = |x: &str| -> Result<Value, BoxError> {
        let bytes = URL_SAFE_NO_PAD.decode(x).map_err(|_| refuse("the ID token is malformed"))?;
        serde_json::from_slice(&bytes).map_err(|_| refuse("the ID token is malformed"))
    };
    let header = decode(h)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(refuse("the ID token's algorithm is not allowed"));
    }
    let kid = header.get("kid").and_then(Value::as_str).unwrap_or_default();
    let jwks = p.jwks(&id.oauth.http, &d.jwks_uri, kid).await?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kid"] == kid && k["kty"] == "RSA"))
        .ok_or_else(|| refuse("the ID token's key is unknown"))?;
    let field = |n: &str| key.get(n).and_then(Value::as_str).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
    let (Some(n), Some(e)) = (field("n"), field("e")) else {
        return Err(refuse("the provider's key is malformed"));
    };
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| refuse("the ID token is malformed"))?;
    ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &token.as_bytes()[..h.len() + 1 + c.len()],
            &signature,
        )
        .map_err(|_| refuse("the ID token's signature does not verify"))?;
    let claims = decode(c)?;
    let now = Timestamp::now().unix();
    let iss_ok = claims.get("iss").and_then(Value::as_str) == Some(d.issuer.as_str());
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == p.client_id,
        Some(Value::Array(a)) => a.iter().any(|x| x == p.client_id.as_str()),
        _ => false,
    };
    let exp_ok = claims.get("exp").and_then(Value::as_i64).is_some_and(|exp| exp + 60 > now);
    let nonce_ok = claims.get("nonce").and_then(Value::as_str) == Some(nonce);
    if !(iss_ok && aud_ok && exp_ok && nonce_ok) {
        return Err(refuse("the ID token is not for this sign-in (issuer, audience, expiry or nonce)"));
    }
    Ok(claims)
}

async fn github_profile(
    id: &Identity,
    p: &Provider,
    web: &str,
    api: &str,
    code: &str,
    pending: &Pending,
) -> Result<Profile, BoxError> {
    let tokens = exchange(id, p, &format!("{web}/login/oauth/access_token"), code, pending).await?;
    let access =
        tokens.get("access_token").and_then(Value::as_str).ok_or("no access_token in the token response")?;
    let get = |path: &str| {
        id.oauth
            .http
            .get(format!("{api}{path}"))
            .bearer_auth(access)
            .header(header::ACCEPT, "application/vnd.github+json")
            .send()
    };
    let user: Value = get("/user").await?.error_for_status()?.json().await?;
    let subject = match user.get("id") {
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("GitHub's user has no id".into()),
    };
    let emails: Value = get("/user/emails").await?.error_for_status()?.json().await?;
    let primary = emails.as_array().and_then(|list| {
        list.iter()
            .find(|e| e["primary"] == true && e["verified"] == true)
            .or_else(|| list.iter().find(|e| e["primary"] == true))
    });
    Ok(Profile {
        subject,
        email: primary.and_then(|e| e["email"].as_str()).map(str::to_string),
        verified: primary.is_some_and(|e| e["verified"] == true),
        name: user
            .get("name")
            .and_then(Value::as_str)
            .or_else(|| user.get("login").and_then(Value::as_str))
            .map(str::to_string),
    })
}

/// Finds, links or creates the account of a provider identity and opens a session.
async fn sign_in(
    id: &Identity,
    p: &Provider,
    profile: Profile,
    headers: &HeaderMap,
    ip: Option<&ClientIp>,
) -> ApiResult<Tokens> {
    let identity = NewIdentity {
        provider: p.name.to_string(),
        subject: profile.subject.clone(),
        email: profile.email.clone(),
    };
    if let Some(user) = id.store.user_by_identity(p.name, &profile.subject).await? {
        if user.status != "active" {
            return Err(Problem::unauthorized("this account is disabled").into());
        }
        let workspace = landing_workspace(id, &user).await?;
        tracing::info!(user_id = %user.id, provider = p.name, "social login succeeded");
        return open_session(id, &user, &workspace, "oauth", headers, ip).await;
    }
    let email = profile
        .email
        .as_deref()
        .map(|e| parse_email("email", e))
        .transpose()?
        .ok_or_else(|| Problem::validation("email", "the provider shared no email address"))?;
    match id.store.user_by_email(&email).await? {
        Some(user) if profile.verified => {
            if user.status != "active" {
                return Err(Problem::unauthorized("this account is disabled").into());
            }
            id.store.link_identity(user.id.0, &identity, Timestamp::now()).await?;
            tracing::info!(user_id = %user.id, provider = p.name, "provider identity linked by verified email");
            let workspace = landing_workspace(id, &user).await?;
            open_session(id, &user, &workspace, "oauth", headers, ip).await
        }
        Some(_) => Err(Problem::conflict(
            "an account with this email exists and the provider has not verified the address: sign in with your password first",
        )
        .into()),
        None => {
            let name = profile.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| email.split('@').next().unwrap_or("user").to_string());
            let name: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
            let (user, tokens) = create_account(id, email, name, None, profile.verified, None, "oauth", headers, ip).await?;
            id.store.link_identity(user.id.0, &identity, Timestamp::now()).await?;
            tracing::info!(user_id = %user.id, provider = p.name, "account created by social login");
            Ok(tokens)
        }
    }
}
