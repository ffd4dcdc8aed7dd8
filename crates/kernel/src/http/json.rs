//! Our JSON and query extractors: every rejection is problem JSON.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// A JSON body (request) or JSON response. Rejections: 400 malformed, 413 too
/// large, 415 wrong content type, 422 wrong shape (with the field path).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            Problem::unsupported_media_type("expected Content-Type: application/json")
        }
        JsonRejection::JsonSyntaxError(e) => {
            Problem::bad_request(format!("malformed JSON: {}", source_text(e)))
        }
        JsonRejection::JsonDataError(e) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "Validation failed")
                .with_detail(source_text(e))
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
                .with_detail("the body exceeds this route's limit")
        }
        other => Problem::bad_request(other.body_text()),
    }
}

/// The innermost message of an extractor error (serde's, with the field path),
/// without axum's prefix.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    // Keep the path that serde_path_to_error adds on the outer error.
    let outer = e.to_string();
    match outer.split_once(": ") {
        Some((_, rest)) if rest.contains(&text) => rest.to_string(),
        _ => text,
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query-string parameters; a bad one is a 400 problem naming it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(Problem::bad_request(format!("query string: {}", source_text(&e))))
            }
            Err(other) => Err(Problem::bad_request(other.body_text())),
        }
    }
}

/// Path parameters; a malformed one (bad percent-encoding, wrong type) is a
/// 404 problem, since no resource has such a name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(Problem::not_found().with_detail(format!("path: {}", source_text(&e))))
            }
            Err(other) => Err(Problem::not_found().with_detail(other.body_text())),
        }
    }
}
