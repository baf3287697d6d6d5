//! What can go wrong in the engagement service, mapped once to HTTP (beacon ingest) and gRPC (facts).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use followup_platform::grpc::{internal, invalid_arguments};
use serde_json::json;

use crate::domain::Violation;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names fields that are missing or wrong.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<Violation>),
    #[error("the body is larger than {limit} bytes: send fewer events per request")]
    BodyTooLarge { limit: usize },
    #[error(
        "content type `{0}` is not accepted: send application/json or text/plain (navigator.sendBeacon's default)"
    )]
    UnsupportedMediaType(String),
    /// The portal token is missing its signature, expired, or for another plan.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("too many beacons for this portal link; retry in {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// The beacon could not be made durable (JetStream unreachable or slow): retry.
    #[error("beacons cannot be stored right now; retry shortly")]
    Unavailable(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation {
            field: field.into(),
            description: description.into(),
        }])
    }

    fn status(&self) -> StatusCode {
        match self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid_argument",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::RateLimited(_) => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Db(_) => "internal",
        }
    }
}

/// The JSON error body every 4xx/5xx of the beacon endpoint carries:
/// `{"error": {"code", "message", "violations": [{"field", "description"}]}}`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Error::Db(err) => {
                tracing::error!(error = %err, "beacon request failed");
                "internal error".to_string()
            }
            Error::Unavailable(cause) => {
                tracing::warn!(error = %cause, "beacon not made durable");
                self.to_string()
            }
            other => other.to_string(),
        };
        let violations: Vec<_> = match &self {
            Error::Invalid(violations) => violations
                .iter()
                .map(|v| json!({"field": v.field, "description": v.description}))
                .collect(),
            _ => Vec::new(),
        };
        let body =
            json!({"error": {"code": self.code(), "message": message, "violations": violations}});
        let mut response = (status, Json(body)).into_response();
        let retry_after = match &self {
            Error::RateLimited(wait) => Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            Error::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(violations) => invalid_arguments(
                violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .collect(),
            ),
            Error::Unauthenticated(message) => tonic::Status::unauthenticated(message),
            Error::Unavailable(message) => tonic::Status::unavailable(message),
            other => internal(&other),
        }
    }
}
