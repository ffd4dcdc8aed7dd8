//! Identity behind the gateway, on embedded backends or PostgreSQL + Redis +
//! NATS (the same tests; the engines come from the environment). Every line of
//! SECURITY.md's "Passwords and login", "Reset, invitations, sessions",
//! "Authorization and tenancy" and "Social login" has a test here.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::GatewayService;
use identity::IdentityService;
use kernel::Service;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::TestApp;

mod accounts;
mod keys;
mod oauth;
mod scaleout;
mod workspaces;

pub(crate) fn services() -> Vec<Arc<dyn Service>> {
    vec![Arc::new(IdentityService), Arc::new(GatewayService)]
}

pub(crate) async fn spawn(extra: &[(&str, &str)]) -> TestApp {
    TestApp::spawn_with(services(), extra).await
}

/// Sends a JSON request; returns the status and the JSON body (Null when empty).
pub(crate) async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.call(method, path, bearer, body).await
}

pub(crate) async fn post(
    app: &TestApp,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    call(app, reqwest::Method::POST, path, bearer, Some(body)).await
}

pub(crate) async fn get(app: &TestApp, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    call(app, reqwest::Method::GET, path, bearer, None).await
}

pub(crate) async fn delete(app: &TestApp, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    call(app, reqwest::Method::DELETE, path, bearer, None).await
}

pub(crate) async fn patch(
    app: &TestApp,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    call(app, reqwest::Method::PATCH, path, bearer, Some(body)).await
}

pub(crate) const PASSWORD: &str = "correct horse battery";

/// Registers `email`; returns the 201 body.
pub(crate) async fn register(app: &TestApp, email: &str) -> Value {
    let (status, body) = post(
        app,
        "/v1/auth/register",
        None,
        json!({ "email": email, "password": PASSWORD, "name": email.split('@').next().unwrap() }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

pub(crate) async fn login(app: &TestApp, email: &str, password: &str) -> (StatusCode, Value) {
    post(app, "/v1/auth/login", None, json!({ "email": email, "password": password })).await
}

pub(crate) fn access(body: &Value) -> String {
    body["access_token"].as_str().unwrap_or_else(|| panic!("no access token in {body}")).to_string()
}

/// The newest email to `to` that carries a `<label> token:` (the embedded
/// mailer writes .eml files; some emails are sent after the answer).
pub(crate) async fn last_mail(app: &TestApp, to: &str, label: &str) -> String {
    let dir = app.isolation.data_dir.join("mail");
    let marker = format!("{label} token: ");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut found: Vec<(String, String)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    continue;
                }
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                if text.contains(&format!("To: {to}\r\n")) && text.contains(&marker) {
                    found.push((name, text));
                }
            }
        }
        found.sort();
        if let Some((_, text)) = found.pop() {
            return text;
        }
        assert!(Instant::now() < deadline, "no email to {to} with a {label} token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value after `<label> token: ` in an email.
pub(crate) fn token_in(mail: &str, label: &str) -> String {
    let marker = format!("{label} token: ");
    let start = mail.find(&marker).unwrap_or_else(|| panic!("no {label} token in {mail}")) + marker.len();
    mail[start..].split_whitespace().next().unwrap().to_string()
}

pub(crate) use testkit::eventually;

/// The stored password hash of an account (read through identity's own schema).
pub(crate) async fn stored_hash(app: &TestApp, email: &str) -> String {
    const SQL: &str = "select password_hash from identity.users where email = $1";
    match app.db("identity") {
        kernel::db::Db::Postgres(pg) => {
            let mut tx = pg.read_global().await.unwrap();
            let (h,): (Option<String>,) =
                tx.fetch_one(tx.query_as(SQL).bind(email.to_string())).await.unwrap();
            h.unwrap()
        }
        kernel::db::Db::Sqlite(lite) => {
            let mut tx = lite.read_global().await.unwrap();
            let (h,): (Option<String>,) =
                tx.fetch_one(tx.query_as(SQL).bind(email.to_string())).await.unwrap();
            h.unwrap()
        }
    }
}
