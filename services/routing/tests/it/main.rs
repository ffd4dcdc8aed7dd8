//! Links management and the public redirect, through the gateway, on embedded
//! backends or PostgreSQL + Redis + NATS (the engines come from the environment).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gateway::GatewayService;
use kernel::db::{Migrations, Tx};
use kernel::events::{Consumer, Envelope, Handler, HandlerError};
use kernel::{BoxError, Service, ServiceContext, ServiceParts, TenantId};
use links::LinksService;
use reqwest::StatusCode;
use routing::RoutingService;
use serde_json::{Value, json};
use testkit::TestApp;

mod domains;
mod geo;
mod links_api;
mod pixels;
mod qr;
mod redirects;

pub(crate) const SECRET: &str = "routing-test-secret-0123456789abcdef";
pub(crate) const ISSUER: &str = "https://signpost.test";

/// Records every click event it receives (a stand-in for analytics).
#[derive(Clone, Default)]
pub(crate) struct ClickSink(pub Arc<Mutex<Vec<Envelope>>>);

struct SinkHandler(Arc<Mutex<Vec<Envelope>>>);

#[async_trait]
impl Handler for SinkHandler {
    async fn handle(&self, _tx: &mut Tx, event: &Envelope) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

#[async_trait]
impl Service for ClickSink {
    fn name(&self) -> &'static str {
        "clicksink"
    }

    fn migrations(&self) -> Option<Migrations> {
        Some(Migrations { schema: "clicksink", steps: &[] })
    }

    async fn start(&self, _ctx: ServiceContext) -> Result<ServiceParts, BoxError> {
        Ok(ServiceParts {
            router: axum::Router::new(),
            edge: None,
            consumers: vec![Consumer {
                name: "clicksink.clicks",
                event_types: &["link.clicked", "qr.scanned"],
                handler: Arc::new(SinkHandler(self.0.clone())),
                lane: kernel::background::Lane::Bulk,
            }],
            openapi_paths: json!({}),
            openapi_source: None,
        })
    }
}

pub(crate) async fn spawn() -> (TestApp, ClickSink) {
    spawn_with(&[]).await
}

pub(crate) async fn spawn_with(extra: &[(&str, &str)]) -> (TestApp, ClickSink) {
    let sink = ClickSink::default();
    let services: Vec<Arc<dyn Service>> = vec![
        Arc::new(LinksService),
        Arc::new(RoutingService),
        Arc::new(sink.clone()),
        Arc::new(GatewayService),
    ];
    let mut env = vec![("JWT_SECRET_KEY", SECRET), ("SIGNPOST_JWT_ISSUER", ISSUER)];
    env.extend_from_slice(extra);
    let app = TestApp::spawn_with(services, &env).await;
    (app, sink)
}

/// An access token for `role` in `tenant`.
pub(crate) fn token(tenant: TenantId, role: &str) -> String {
    testkit::hs256_token(SECRET, ISSUER, tenant, role)
}

pub(crate) async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.call(method, path, bearer, body).await
}

/// Creates a link; returns the 201 body.
pub(crate) async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    let (status, link) = call(app, reqwest::Method::POST, "/v1/links", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    link
}

/// GET a public path as a client with `headers`; returns status and Location.
pub(crate) async fn visit(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<String>) {
    let mut req = app.client.get(app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let loc = res.headers().get("location").map(|v| v.to_str().unwrap().to_string());
    (res.status(), loc)
}

pub(crate) use testkit::eventually;
