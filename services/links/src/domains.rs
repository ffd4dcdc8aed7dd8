//! `/v1/domains`: custom domains, verified through a DNS TXT record.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kernel::auth::Caller;
use kernel::db::{Id, Timestamp};
use kernel::http::{Json, Path};
use kernel::{ApiError, ApiResult, BoxError, Problem};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::store::Domain;
use crate::{AppState, Links};

/// The TXT record's name is this label in front of the hostname.
pub const TXT_LABEL: &str = "_signpost-verification";

/// Looks up TXT records (injectable: tests serve their own DNS).
#[async_trait]
pub trait TxtResolver: Send + Sync + 'static {
    /// The TXT strings at `name` (empty when there are none).
    async fn txt(&self, name: &str) -> Result<Vec<String>, BoxError>;
}

/// The real resolver: the system's name servers, or `SIGNPOST_DNS_SERVER`.
pub struct DnsResolver(hickory_resolver::TokioResolver);

impl DnsResolver {
    pub fn new(server: Option<std::net::SocketAddr>) -> Result<Self, BoxError> {
        use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;
        let mut builder = match server {
            Some(addr) => {
                let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                hickory_resolver::TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
            }
            None => hickory_resolver::TokioResolver::builder_tokio()?,
        };
        // A verification asks again each time: no cached (negative) answers.
        builder.options_mut().cache_size = 0;
        Ok(Self(builder.build()))
    }
}

#[async_trait]
impl TxtResolver for DnsResolver {
    async fn txt(&self, name: &str) -> Result<Vec<String>, BoxError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.0.txt_lookup(fqdn).await {
            Ok(found) => Ok(found
                .iter()
                .map(|txt| {
                    txt.txt_data().iter().map(|part| String::from_utf8_lossy(part).into_owned()).collect()
                })
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(Box::new(e)),
        }
    }
}

pub(crate) fn routes() -> Router<Arc<Links>> {
    Router::new()
        .route("/v1/domains", post(add).get(list))
        .route("/v1/domains/{id}", get(read).delete(remove))
        .route("/v1/domains/{id}/verify", post(verify))
        .route("/v1/domains/{id}/default", post(make_default))
}

/// A hostname as given: lower case, IDN in punycode, at least two labels, not
/// an address, not the platform's own host.
fn hostname(s: &Links, raw: &str) -> Result<String, Problem> {
    let bad = |m: &str| Problem::validation("hostname", m.to_string());
    let raw = raw.trim().trim_end_matches('.');
    if raw.is_empty() || raw.len() > 253 || raw.contains(['/', ':', '@', '?', '#', ' ']) {
        return Err(bad("is a hostname like go.example.com"));
    }
    let url = reqwest::Url::parse(&format!("http://{raw}/"))
        .map_err(|_| bad("is a hostname like go.example.com"))?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        _ => return Err(bad("is a hostname, not an address")),
    };
    if !host.contains('.') || host.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(bad("needs at least two labels of 1 to 63 characters"));
    }
    let own =
        reqwest::Url::parse(&s.kernel.config.public_url).ok().and_then(|u| u.host_str().map(str::to_string));
    if own.as_deref() == Some(host.as_str()) {
        return Err(bad("is the platform's own host"));
    }
    Ok(host)
}

fn domain_json(d: &Domain) -> Value {
    json!({
        "id": d.id,
        "hostname": d.hostname,
        "verified": d.verified_at.is_some(),
        "verified_at": d.verified_at,
        "default": d.is_default,
        "verification": {
            "type": "TXT",
            "name": format!("{TXT_LABEL}.{}", d.hostname),
            "value": format!("signpost-verification={}", d.token),
        },
        "created_at": d.created_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    hostname: String,
}

async fn add(State(s): AppState, caller: Caller, Json(b): Json<AddBody>) -> ApiResult<Response> {
    caller.require("workspace:admin")?;
    let hostname = hostname(&s, &b.hostname)?;
    let d = Domain {
        tenant_id: Id(caller.tenant.as_uuid()),
        id: Id(Uuid::now_v7()),
        hostname,
        token: crate::model::generated_code()
            + &crate::model::generated_code()
            + &crate::model::generated_code(),
        verified_at: None,
        is_default: false,
        created_at: Timestamp::now(),
        deleted_at: None,
    };
    s.store.add_domain(&d).await?;
    Ok((StatusCode::CREATED, axum::Json(domain_json(&d))).into_response())
}

async fn list(State(s): AppState, caller: Caller) -> ApiResult<Response> {
    caller.require("links:read")?;
    let items: Vec<Value> = s.store.domains(caller.tenant).await?.iter().map(domain_json).collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": null })).into_response())
}

async fn find(s: &Links, caller: &Caller, id: Uuid) -> Result<Domain, ApiError> {
    let all = s.store.domains(caller.tenant).await?;
    all.into_iter().find(|d| d.id.0 == id).ok_or_else(|| Problem::not_found().into())
}

async fn read(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<Response> {
    caller.require("links:read")?;
    Ok(axum::Json(domain_json(&find(&s, &caller, id).await?)).into_response())
}

/// Looks for `signpost-verification=<token>` at `_signpost-verification.<hostname>`.
async fn verify(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<Response> {
    caller.require("workspace:admin")?;
    let d = find(&s, &caller, id).await?;
    if d.verified_at.is_none() {
        let name = format!("{TXT_LABEL}.{}", d.hostname);
        let expected = format!("signpost-verification={}", d.token);
        let records = s.resolver.txt(&name).await.map_err(|e| {
            tracing::warn!(hostname = %d.hostname, error = %e, "TXT lookup failed");
            Problem::new(StatusCode::BAD_GATEWAY, "dns", "DNS lookup failed")
                .with_detail(format!("could not look up {name}; try again shortly"))
        })?;
        if !records.iter().any(|r| r.trim() == expected) {
            return Err(Problem::validation(
                "hostname",
                format!("no TXT record {name} = {expected:?} was found yet"),
            )
            .into());
        }
        s.store.verify_domain(caller.tenant, id, Timestamp::now(), &caller.actor()).await?;
        tracing::info!(tenant_id = %caller.tenant, hostname = %d.hostname, "domain verified");
    }
    Ok(axum::Json(domain_json(&find(&s, &caller, id).await?)).into_response())
}

async fn make_default(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<Response> {
    caller.require("workspace:admin")?;
    let d = find(&s, &caller, id).await?;
    if d.verified_at.is_none() {
        return Err(Problem::validation("id", "verify the domain first").into());
    }
    s.store.default_domain(caller.tenant, id).await?;
    Ok(axum::Json(domain_json(&find(&s, &caller, id).await?)).into_response())
}

async fn remove(State(s): AppState, caller: Caller, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    caller.require("workspace:admin")?;
    if !s.store.delete_domain(caller.tenant, id, &caller.actor()).await? {
        return Err(Problem::not_found().into());
    }
    Ok(StatusCode::NO_CONTENT)
}
