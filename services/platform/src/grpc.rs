//! The gRPC server every service runs, and how errors become statuses.
//!
//! [`GrpcServices`] collects a service's APIs (each wrapped in the [`crate::auth::Authenticator`]); the
//! platform adds tonic-health (a status per API, SERVING once started, NOT_SERVING during shutdown) and
//! reflection (so `grpcurl` works without proto files), and wraps everything in [`ObserveLayer`]: a span
//! per call, child of the caller's `traceparent`, plus request counts and latencies. The same port
//! answers gRPC-Web over HTTP/1.1 (tonic-web) for browsers, with the CORS answer of [`cors`].
//!
//! Errors follow AIP-193: a code a client can branch on, a message a person can act on, and details
//! (`BadRequest` field violations, `PreconditionFailure`, `ResourceInfo`) a program can read.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tonic::Status;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use tracing::Instrument;

use crate::metrics::{MethodLabels, Metrics, RpcLabels};
use crate::telemetry::{HttpHeadersRef, set_parent_from};

/// The APIs of one service, before the platform adds health and reflection.
#[derive(Default)]
pub struct GrpcServices {
    pub(crate) routes: RoutesBuilder,
    pub(crate) names: Vec<&'static str>,
}

impl GrpcServices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one API; its name gets a health status of its own.
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }
}

/// Tracing and metrics around every gRPC call.
#[derive(Clone)]
pub struct ObserveLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let span = tracing::info_span!(
            "grpc",
            otel.kind = "server",
            rpc.method = %method,
            tenant = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        set_parent_from(&span, &HttpHeadersRef(request.headers()));
        // The ready service was this one; keep a fresh clone for the next call (tower's clone dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = inner.call(request);
        Box::pin(
            async move {
                let response = future.await;
                let code = match &response {
                    // Errors answer "trailers only", so the status is in the headers; a success carries it
                    // in the trailers, which we do not wait for.
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map(|code| format!("{:?}", tonic::Code::from_i32(code)))
                        .unwrap_or_else(|| "Ok".into()),
                    Err(_) => "Transport".into(),
                };
                tracing::Span::current().record("code", code.as_str());
                metrics
                    .rpc_requests
                    .get_or_create(&RpcLabels {
                        method: method.clone(),
                        code,
                    })
                    .inc();
                metrics
                    .rpc_duration
                    .get_or_create(&MethodLabels { method })
                    .observe(started.elapsed().as_secs_f64());
                response
            }
            .instrument(span),
        )
    }
}

// ---- browsers (gRPC-Web) ----

/// The CORS answer for gRPC-Web calls from pages of other origins: only the configured origins get an
/// `Access-Control-Allow-Origin` (none configured: same origin only, the browser refuses the rest). The
/// request headers a gRPC-Web client sends are allowed and the status headers exposed, so a page can read
/// an error's code, message and AIP-193 details.
pub fn cors(config: &crate::config::GrpcWebConfig) -> tower_http::cors::CorsLayer {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
    use tower_http::cors::{AllowOrigin, CorsLayer};

    let origins = &config.allowed_origins;
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Checked when the configuration was loaded (config::check_origin).
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([http::Method::POST])
        .allow_headers([
            AUTHORIZATION,
            CONTENT_TYPE,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        // Chromium caps a cached preflight at two hours.
        .max_age(std::time::Duration::from_secs(2 * 3600))
}

// ---- errors (AIP-193) ----

/// INVALID_ARGUMENT naming one field.
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// INVALID_ARGUMENT naming several fields at once, so a client fixes them all in one go.
pub fn invalid_arguments(violations: Vec<(String, String)>) -> Status {
    let message = violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>();
    let violations: Vec<FieldViolation> = violations
        .into_iter()
        .map(|(field, description)| FieldViolation::new(field, description))
        .collect();
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        message.join("; "),
        ErrorDetails::with_bad_request(violations),
    )
}

/// NOT_FOUND for a resource of the caller's clinic. A resource of another clinic is "not found" too:
/// saying it exists elsewhere would leak it.
pub fn not_found(resource_type: &str, name: &str) -> Status {
    Status::with_error_details(
        tonic::Code::NotFound,
        format!("{resource_type} `{name}` not found"),
        ErrorDetails::with_resource_info(
            resource_type,
            name,
            "",
            "not found in the caller's clinic",
        ),
    )
}

/// ALREADY_EXISTS: what the request would create (or rename something to) exists in the caller's clinic.
/// The resource is named in a `ResourceInfo`, so a client can fetch or reuse it.
pub fn already_exists(resource_type: &str, name: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        tonic::Code::AlreadyExists,
        description.clone(),
        ErrorDetails::with_resource_info(resource_type, name, "", description),
    )
}

/// FAILED_PRECONDITION: the request is valid but the resource's state forbids it.
pub fn failed_precondition(
    violation_type: &str,
    subject: &str,
    description: impl Into<String>,
) -> Status {
    let description = description.into();
    Status::with_error_details(
        tonic::Code::FailedPrecondition,
        description.clone(),
        ErrorDetails::with_precondition_failure_violation(violation_type, subject, description),
    )
}

/// INTERNAL without anything private: the cause is logged with a reference the caller can quote.
pub fn internal(cause: &dyn Display) -> Status {
    let reference = uuid::Uuid::now_v7().simple().to_string();
    tracing::error!(error = %cause, reference = %reference, "internal error");
    Status::with_error_details(
        tonic::Code::Internal,
        format!("internal error (reference {reference})"),
        ErrorDetails::with_error_info(
            "INTERNAL",
            "followup",
            HashMap::from([("reference".to_string(), reference)]),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_details() {
        let status = invalid_argument("items[0].tooth", "`99` is not a Universal or FDI tooth");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = details
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(violations[0].field, "items[0].tooth");

        let status = internal(&"connection refused to 10.0.0.3");
        assert!(!status.message().contains("10.0.0.3"));
        assert!(status.message().contains("reference"));
    }
}
