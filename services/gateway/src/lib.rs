//! The security gateway: the single front door. Under `signpost up` it wraps
//! every in-process route as middleware (no network hop): it authenticates
//! access tokens, strips client-sent identity headers and forwards verified
//! ones, refuses a mismatched `X-Tenant-ID`, applies rate limits with
//! `RateLimit-*` headers, answers CORS, sets security headers and enforces JSON
//! content types. With `SIGNPOST_UPSTREAMS` set (`signpost serve gateway`) the
//! same middleware fronts services in other processes through the proxy.
//!
//! A service in its own process (`signpost serve links`) runs the same
//! middleware as [`ServiceEdge`]: it verifies the caller itself (defense in
//! depth; API keys through identity's instances in `SIGNPOST_UPSTREAMS`) but
//! neither proxies nor rate-limits, which the front gateway already did.

mod edge;
mod proxy;
mod settings;
mod verify;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use kernel::{BoxError, Kernel, Service, ServiceContext, ServiceParts};

pub use edge::{Access, access};
pub use proxy::{CHECK_EVERY, EJECT_AFTER, EJECT_FOR, Proxy};
pub use settings::{Limit, OnError, Settings};
pub use verify::{Identity, JWKS_REFRESH_INTERVAL, Verifier};

/// The gateway's shared state.
pub struct Gateway {
    kernel: Kernel,
    settings: Settings,
    /// Upstream instances: the proxy of a front gateway; for a service's own
    /// edge, only the way to identity for API keys.
    proxy: Option<Arc<Proxy>>,
    /// The front door (proxies, limits), or one service's own edge.
    front: bool,
    /// Token verification (exposed for tests of key refresh).
    pub verifier: Verifier,
}

impl Gateway {
    /// Builds the front gateway from the platform configuration.
    pub fn new(kernel: Kernel) -> Result<Self, BoxError> {
        Self::build(kernel, true)
    }

    fn build(kernel: Kernel, front: bool) -> Result<Self, BoxError> {
        let settings = Settings::from_config(&kernel.config)?;
        let verifier = match &kernel.config.jwt_secret_key {
            Some(secret) => Verifier::hs256(secret.expose().as_bytes(), &settings.issuer),
            None => Verifier::jwks(&settings.jwks_url, &settings.issuer),
        }
        .with_local(kernel.authority.clone());
        let proxy =
            (!settings.upstreams.is_empty()).then(|| Proxy::new(&settings, kernel.config.tls.is_some()));
        Ok(Self { kernel, settings, proxy, front, verifier })
    }

    /// The proxy this gateway forwards every request through (front gateway in proxy mode).
    fn proxying(&self) -> Option<&Arc<Proxy>> {
        self.proxy.as_ref().filter(|_| self.front)
    }

    /// Wraps a router with the edge middleware, observed (request id, access
    /// log, metrics) in the same layer.
    pub fn wrap(self: Arc<Self>, router: Router) -> Router {
        router.layer(kernel::http::Observed::layer(self))
    }
}

/// The gateway as a platform service.
pub struct GatewayService;

#[async_trait]
impl Service for GatewayService {
    fn name(&self) -> &'static str {
        "gateway"
    }

    async fn start(&self, ctx: ServiceContext) -> Result<ServiceParts, BoxError> {
        Ok(parts(Gateway::new(ctx.kernel)?))
    }
}

/// The middleware, and in proxy mode the catch-all route and the upstreams' API document.
fn parts(gateway: Gateway) -> ServiceParts {
    let gateway = Arc::new(gateway);
    // Proxy mode: every path the kernel does not answer itself goes upstream.
    let router = match gateway.proxying() {
        Some(p) => Router::new()
            .route("/", axum::routing::any(proxy::handle))
            .route("/{*path}", axum::routing::any(proxy::handle))
            .with_state(p.clone()),
        None => Router::new(),
    };
    let openapi_source =
        gateway.proxying().map(|p| proxy::RemoteOpenApi::new(p.clone()) as Arc<dyn kernel::OpenApiSource>);
    ServiceParts {
        router,
        openapi_source,
        edge: Some(Box::new(move |router| gateway.wrap(router))),
        consumers: Vec::new(),
        openapi_paths: serde_json::json!({}),
    }
}

/// The gateway's middleware in front of one service running in its own
/// process: callers are verified there too, but nothing is proxied or limited.
pub struct ServiceEdge;

#[async_trait]
impl Service for ServiceEdge {
    fn name(&self) -> &'static str {
        "edge"
    }

    async fn start(&self, ctx: ServiceContext) -> Result<ServiceParts, BoxError> {
        // Not the front door: no proxy route, no upstream document.
        Ok(parts(Gateway::build(ctx.kernel, false)?))
    }
}
