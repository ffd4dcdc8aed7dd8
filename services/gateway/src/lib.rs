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

use std::convert::Infallible;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use futures_util::future::BoxFuture;
use kernel::server::App;
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

/// The middleware, and in proxy mode the front that proxies and the upstreams' API document.
fn parts(gateway: Gateway) -> ServiceParts {
    let gateway = Arc::new(gateway);
    let openapi_source =
        gateway.proxying().map(|p| proxy::RemoteOpenApi::new(p.clone()) as Arc<dyn kernel::OpenApiSource>);
    ServiceParts {
        router: Router::new(),
        openapi_source,
        edge: Some(Box::new(move |app: App| {
            let front = gateway.proxying().map(|p| ProxyFront::shared(gateway.clone(), p.clone()));
            App { router: gateway.clone().wrap(app.router), front: front.or(app.front) }
        })),
        consumers: Vec::new(),
        openapi_paths: serde_json::json!({}),
    }
}

/// The front door in proxy mode: a request for any path this process does not
/// answer itself goes to the proxy under the edge, observed, without passing
/// the router (one route match, path parameters and three boxed route layers
/// less per request). The router keeps the operator endpoints, the merged API
/// document and signed storage URLs when this process's storage serves them.
struct ProxyFront {
    gateway: Arc<Gateway>,
    proxy: Arc<Proxy>,
    /// Signed storage URLs are answered here (by the router).
    local_storage: bool,
    /// What the router's body guard refused before the front took these requests.
    body_limit: usize,
}

impl ProxyFront {
    fn shared(gateway: Arc<Gateway>, proxy: Arc<Proxy>) -> Arc<dyn kernel::server::Front> {
        let local_storage = gateway.kernel.storage.serves_signed_urls();
        let body_limit = gateway.kernel.config.body_limit;
        Arc::new(Self { gateway, proxy, local_storage, body_limit })
    }
}

impl kernel::server::Front for ProxyFront {
    fn takes(&self, req: &Request) -> bool {
        let path = req.uri().path();
        // `CONNECT host:port` and `OPTIONS *` name no path: the router's 404.
        path.starts_with('/')
            && !(proxy::is_operator(path) || (self.local_storage && edge::under(path, "/v1/storage")))
    }

    fn answer(&self, req: Request) -> BoxFuture<'static, Response> {
        // The path is looked up once, for the name, the edge and the proxy.
        let path = req.uri().path();
        let found = self.proxy.route(path);
        let matched = edge::proxied_match(found.is_some(), path);
        let (service, route) = (found.map(|(id, _)| id), found.map(|(_, label)| label.clone()));
        let (proxy, limit) = (self.proxy.clone(), self.body_limit);
        let inner = tower::service_fn(move |req: Request| {
            let proxy = proxy.clone();
            async move {
                Ok::<_, Infallible>(match kernel::http::refuse_declared(&req, limit) {
                    Some(refused) => refused,
                    None => proxy::forward_to(proxy, service, req).await,
                })
            }
        });
        let gateway = self.gateway.clone();
        Box::pin(kernel::http::observe(req, route, move |req| async move {
            edge::edge(&gateway, req, inner, Some(matched)).await
        }))
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
