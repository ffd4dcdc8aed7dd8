//! Service-to-service routes under `/internal`, and their client.
//!
//! When routing runs in another process, a link created a moment ago may not
//! have reached routing's read model yet. Routing then asks links here, so a
//! link redirects the moment its create call has returned, as it does in one
//! process. The routes answer only a caller that shows `SIGNPOST_INTERNAL_TOKEN`;
//! without that setting they do not exist (404). The gateway turns away any
//! other request for `/internal`, and never proxies it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kernel::auth::{INTERNAL_TOKEN_HEADER, internal_caller};
use kernel::http::{Path, Query};
use kernel::{ApiResult, BoxError, Problem, Secret};

use crate::model::{QrRoute, RouteRecord};
use crate::{AppState, Links, RouteSource};

pub(crate) fn routes() -> Router<Arc<Links>> {
    Router::new().route("/internal/routes/{slug}", get(route)).route("/internal/qr/{code}", get(qr))
}

/// Marks links' own "no such link" answers, which a refused token's 404 lacks.
const NOT_FOUND_HEADER: &str = "x-signpost-not-found";

fn missing() -> Problem {
    Problem::not_found().with_header(
        axum::http::HeaderName::from_static(NOT_FOUND_HEADER),
        axum::http::HeaderValue::from_static("1"),
    )
}

fn allowed(s: &Links, headers: &HeaderMap) -> Result<(), Problem> {
    let ok = internal_caller(s.kernel.config.internal_token.as_ref(), headers);
    if ok { Ok(()) } else { Err(Problem::not_found()) }
}

#[derive(serde::Deserialize)]
struct OnDomain {
    /// A custom domain; absent for the platform's own host.
    #[serde(default)]
    domain: String,
}

async fn route(
    State(s): AppState,
    Path(slug): Path<String>,
    Query(q): Query<OnDomain>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    allowed(&s, &headers)?;
    let link = s.store.by_slug(&q.domain, &slug).await?.ok_or_else(missing)?;
    Ok(axum::Json(link.route()).into_response())
}

async fn qr(State(s): AppState, Path(code): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    allowed(&s, &headers)?;
    let (q, l) = s.store.qr_by_code(&code).await?.ok_or_else(missing)?;
    Ok(axum::Json((q.route(), l.route())).into_response())
}

/// Asks links instances in another process over HTTP, in turn; an instance
/// that cannot be reached hands the question to the next.
pub struct RemoteRouteSource {
    http: reqwest::Client,
    instances: Vec<reqwest::Url>,
    token: Secret<String>,
    next: AtomicUsize,
    /// Whether a refused token was logged already (once is enough).
    warned: std::sync::atomic::AtomicBool,
}

impl RemoteRouteSource {
    /// `instances` are base URLs (`http://host:port`; `h2c://` is spoken as HTTP/1.1 here).
    pub fn new(instances: &[String], token: Secret<String>) -> Result<Self, BoxError> {
        let instances = instances
            .iter()
            .map(|u| reqwest::Url::parse(&u.replacen("h2c://", "http://", 1)))
            .collect::<Result<Vec<_>, _>>()?;
        if instances.is_empty() {
            return Err("no links instance to ask".into());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, instances, token, next: AtomicUsize::new(0), warned: Default::default() })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        domain: &str,
    ) -> Result<Option<T>, BoxError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last: Option<BoxError> = None;
        for i in 0..self.instances.len() {
            let mut url = self.instances[(start + i) % self.instances.len()].clone();
            url.path_segments_mut().map_err(|()| "an instance URL cannot have a path")?.extend(segments);
            if !domain.is_empty() {
                url.query_pairs_mut().append_pair("domain", domain);
            }
            let sent =
                self.http.get(url).header(INTERNAL_TOKEN_HEADER, self.token.expose().as_str()).send().await;
            match sent {
                Ok(res) if res.status() == reqwest::StatusCode::NOT_FOUND => {
                    if !res.headers().contains_key(NOT_FOUND_HEADER)
                        && !self.warned.swap(true, Ordering::Relaxed)
                    {
                        tracing::warn!(
                            instance = %res.url(),
                            "links refused this process's internal token: new links will not redirect until their \
                             events arrive (set the same SIGNPOST_INTERNAL_TOKEN on both)"
                        );
                    }
                    return Ok(None);
                }
                Ok(res) if res.status().is_success() => return Ok(Some(res.json::<T>().await?)),
                Ok(res) => return Err(format!("links answered {}", res.status()).into()),
                Err(e) if e.is_connect() => last = Some(e.into()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| "no links instance answered".into()))
    }
}

#[async_trait]
impl RouteSource for RemoteRouteSource {
    async fn route(&self, domain: &str, slug: &str) -> Result<Option<RouteRecord>, BoxError> {
        self.get(&["internal", "routes", slug], domain).await
    }

    async fn qr(&self, code: &str) -> Result<Option<(QrRoute, RouteRecord)>, BoxError> {
        self.get(&["internal", "qr", code], "").await
    }
}
