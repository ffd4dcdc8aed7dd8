//! The identity service: accounts, sessions, workspaces (tenants) and roles,
//! invitations, API keys and social login. It issues the access tokens that
//! the gateway verifies, publishes their keys as a JWKS, and marks revoked
//! sessions in the cache so that the gateway refuses them at once.

mod api;
mod oauth;
mod openapi;
pub mod roles;
mod settings;
pub mod store;
pub mod tokens;
mod users;
mod workspaces;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kernel::auth::{Authority, Caller, CallerKind, Claims, KeySet, SigningKey};
use kernel::db::{Migration, Migrations, Timestamp};
use kernel::mail::Mailer;
use kernel::{BoxError, Kernel, Problem, Service, ServiceContext, ServiceParts, TenantId};
use uuid::Uuid;

pub use settings::Settings;

use crate::roles::Role;
use crate::store::Store;
use kernel::password::Hasher;

/// Identity's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    schema: "identity",
    steps: &[Migration {
        version: "0001_identity",
        postgres: include_str!("../migrations/postgres/0001_identity.sql"),
        sqlite: include_str!("../migrations/sqlite/0001_identity.sql"),
    }],
};

/// The name of the Ed25519 key file in the data directory.
pub const SIGNING_KEY_FILE: &str = "jwt-ed25519";

/// Identity's shared state.
pub struct Identity {
    pub(crate) kernel: Kernel,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) settings: Settings,
    pub(crate) hasher: Hasher,
    pub(crate) signing: SigningKey,
    pub(crate) keys: KeySet,
    pub(crate) mailer: Arc<dyn Mailer>,
    pub(crate) oauth: oauth::Providers,
}

type AppState = State<Arc<Identity>>;

impl Identity {
    /// Signs an access token for `user` acting in `tenant`.
    pub(crate) fn access_token(&self, user: Uuid, tenant: Uuid, role: Role, sid: Uuid) -> String {
        let now = Timestamp::now().unix();
        let ttl = i64::try_from(self.settings.access_ttl.as_secs()).unwrap_or(900);
        self.signing.sign(&Claims {
            iss: self.settings.issuer.clone(),
            aud: kernel::auth::AUDIENCE.to_string(),
            sub: user,
            tid: TenantId::from_uuid(tenant),
            role: role.as_str().to_string(),
            sid,
            scope: String::new(),
            exp: now + ttl,
            iat: now,
            nbf: None,
            jti: Uuid::now_v7(),
        })
    }

    /// Marks sessions (or API keys) revoked for the gateway, at once.
    pub(crate) async fn mark_revoked(&self, ids: &[Uuid]) -> Result<(), kernel::cache::CacheError> {
        let ttl = std::time::Duration::from_secs(kernel::auth::REVOCATION_TTL_SECONDS);
        for id in ids {
            self.kernel.cache.set(&kernel::auth::revoked_session_key(*id), b"1", ttl).await?;
        }
        Ok(())
    }

    /// The caller of a bearer credential identity can check itself (used when
    /// no gateway runs in front, and by the gateway's API-key introspection).
    async fn authenticate(&self, token: &str) -> Result<Caller, Problem> {
        let caller = if token.starts_with(kernel::auth::API_KEY_PREFIX) {
            api::resolve_key(self, token)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "API key lookup failed");
                    Problem::unavailable("cannot check the API key")
                })?
                .ok_or_else(|| Problem::unauthorized("the API key is invalid, expired or revoked"))?
                .0
        } else {
            let now = Timestamp::now().unix();
            Caller::from_claims(&self.keys.verify(token, &self.settings.issuer, now).map_err(Problem::from)?)
        };
        let key = kernel::auth::revoked_session_key(caller.session_id);
        match self.kernel.cache.get(&key).await {
            Ok(None) => Ok(caller),
            Ok(Some(_)) => Err(Problem::unauthorized("the session was revoked")),
            Err(_) => Err(Problem::unavailable("cannot check the session")),
        }
    }
}

#[async_trait]
impl Authority for Identity {
    fn key_set(&self) -> KeySet {
        self.keys.clone()
    }

    async fn resolve_api_key(&self, key: &str) -> Result<Option<(Caller, Option<i64>)>, BoxError> {
        api::resolve_key(self, key).await
    }
}

/// Authenticates requests that arrive without a gateway-verified caller (when
/// identity runs on its own): identity checks its own tokens and keys.
async fn authenticate(State(id): AppState, mut req: Request, next: Next) -> Response {
    if req.extensions().get::<kernel::http::ClientIp>().is_none() {
        // No gateway in this process: work the address out as the gateway does.
        let peer =
            req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        let addr = kernel::http::client_addr(&id.settings.trusted_proxies, peer, req.headers());
        req.extensions_mut().insert(kernel::http::ClientIp(kernel::http::client_key(addr)));
    }
    if req.extensions().get::<Caller>().is_none()
        && let Some(token) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_string())
    {
        match id.authenticate(&token).await {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
            }
            Err(p) => return p.into_response(),
        }
    }
    next.run(req).await
}

/// The caller must be a user session (not an API key) for account routes.
pub(crate) fn user_session(caller: &Caller) -> Result<(), Problem> {
    if caller.kind == CallerKind::User {
        Ok(())
    } else {
        Err(Problem::forbidden("this route needs a user session, not an API key"))
    }
}

/// The caller's role, as a type.
pub(crate) fn role_of(caller: &Caller) -> Role {
    Role::parse(&caller.role).unwrap_or(Role::Viewer)
}

/// The identity service.
pub struct IdentityService;

#[async_trait]
impl Service for IdentityService {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn migrations(&self) -> Option<Migrations> {
        Some(MIGRATIONS)
    }

    async fn start(&self, ctx: ServiceContext) -> Result<ServiceParts, BoxError> {
        let db = ctx.db.ok_or("identity needs its schema")?;
        let kernel = ctx.kernel;
        let settings = Settings::from_config(&kernel.config)?;
        let signing = match &kernel.config.jwt_secret_key {
            Some(secret) => SigningKey::Hs256(kernel::Secret::new(secret.expose().as_bytes().to_vec())),
            None => {
                let seed = kernel::keys::load_or_create(&kernel.config.data_dir, SIGNING_KEY_FILE)?;
                SigningKey::ed25519_from_seed(&seed[..32])?
            }
        };
        let keys = signing.key_set();
        let hasher = Hasher::new(settings.argon2_memory_kib, settings.argon2_iterations, settings.hashers)?;
        let mailer = kernel::mail::open(
            kernel.config.identity.smtp_url.as_ref().map(|s| s.expose().as_str()),
            &settings.mail_from,
            &kernel.config.data_dir,
        )
        .map_err(|e| format!("SMTP_URL: {e}"))?;
        let oauth = oauth::Providers::from_config(&kernel.config)?;
        let identity = Arc::new(Identity {
            store: store::for_db(&db),
            kernel: kernel.clone(),
            settings,
            hasher,
            signing,
            keys,
            mailer,
            oauth,
        });
        let _ = kernel.authority.set(identity.clone() as Arc<dyn Authority>);
        let router = api::routes()
            .merge(workspaces::routes())
            .merge(users::routes())
            .merge(oauth::routes())
            .layer(axum::middleware::from_fn_with_state(identity.clone(), authenticate))
            .with_state(identity);
        Ok(ServiceParts {
            router,
            edge: None,
            consumers: Vec::new(),
            openapi_paths: openapi::paths(),
            openapi_source: None,
        })
    }
}
