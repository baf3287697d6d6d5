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

// ---- request validation, once for every API ----

/// The longest id a request may carry, in characters: what the services' own rules allow (plans,
/// scheduler) and far more than a UUID or any clinic system's key.
pub const MAX_ID_CHARS: usize = 128;

/// The largest request buffered for validation (tonic's own default limit for a decoded message).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024 + 5;

/// Checks every unary request against what no service can store, before any handler runs: a NUL byte
/// (U+0000) in any string (PostgreSQL text cannot hold one, so it would end as INTERNAL deep in a
/// handler) and an id (`id`, `*_id`, `*_ids`) longer than [`MAX_ID_CHARS`] (a 200 KB id otherwise
/// reaches the database, and comes back in an error message too large for a gRPC header). Both answer
/// INVALID_ARGUMENT naming each field. Requests the descriptor set does not describe (health,
/// reflection) and compressed frames pass untouched.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateLayer;

impl<S> tower::Layer<S> for ValidateLayer {
    type Service = Validate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Validate { inner }
    }
}

#[derive(Clone)]
pub struct Validate<S> {
    inner: S,
}

impl<S, R> tower::Service<http::Request<tonic::body::Body>> for Validate<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(input) = input_of(request.uri().path()) else {
            return Box::pin(inner.call(request));
        };
        Box::pin(async move {
            use http_body_util::BodyExt as _;
            let (parts, body) = request.into_parts();
            let bytes = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return Ok(Status::resource_exhausted(format!(
                        "the request is larger than {} MiB, or was cut off",
                        MAX_REQUEST_BYTES / (1024 * 1024)
                    ))
                    .into_http());
                }
            };
            if let Some(status) = check_frames(&input, &bytes) {
                return Ok(status.into_http());
            }
            let body = tonic::body::Body::new(http_body_util::Full::new(bytes));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

/// The request message of `/package.Service/Method`, when the descriptor set has it.
fn input_of(path: &str) -> Option<prost_reflect::MessageDescriptor> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    followup_proto::descriptor_pool()
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
        .map(|m| m.input())
}

/// INVALID_ARGUMENT for the first frames' bad strings; None when they are fine or cannot be read here
/// (tonic then answers for a malformed body as it always does).
fn check_frames(input: &prost_reflect::MessageDescriptor, mut bytes: &[u8]) -> Option<Status> {
    let mut violations = Vec::new();
    while bytes.len() >= 5 {
        let compressed = bytes[0] != 0;
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let frame = bytes.get(5..5 + len)?;
        bytes = &bytes[5 + len..];
        if compressed {
            return None;
        }
        let message = prost_reflect::DynamicMessage::decode(input.clone(), frame).ok()?;
        check_message(&message, "", &mut violations);
    }
    if violations.is_empty() {
        None
    } else {
        violations.truncate(20);
        Some(invalid_arguments(violations))
    }
}

fn check_message(
    message: &prost_reflect::DynamicMessage,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) {
    for (field, value) in message.fields() {
        let path = if prefix.is_empty() {
            field.name().to_string()
        } else {
            format!("{prefix}.{}", field.name())
        };
        check_value(field.name(), value, &path, out);
    }
}

fn check_value(
    name: &str,
    value: &prost_reflect::Value,
    path: &str,
    out: &mut Vec<(String, String)>,
) {
    use prost_reflect::{MapKey, Value};
    match value {
        Value::String(text) => check_string(name, text, path, out),
        Value::Message(message) => check_message(message, path, out),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                check_value(name, item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Map(entries) => {
            for (key, item) in entries {
                let key = match key {
                    MapKey::String(key) => {
                        if key.contains('\0') {
                            out.push((
                                path.to_string(),
                                "a key contains a NUL byte (U+0000), which cannot be stored".into(),
                            ));
                            continue;
                        }
                        key.clone()
                    }
                    other => format!("{other:?}"),
                };
                // Map values are named by their map, not as ids.
                check_value("", item, &format!("{path}[{key:?}]"), out);
            }
        }
        _ => {}
    }
}

fn check_string(name: &str, text: &str, path: &str, out: &mut Vec<(String, String)>) {
    if text.contains('\0') {
        out.push((
            path.to_string(),
            "contains a NUL byte (U+0000), which cannot be stored; remove it".into(),
        ));
    }
    let is_id = name == "id" || name.ends_with("_id") || name.ends_with("_ids");
    if is_id && text.len() > MAX_ID_CHARS && text.chars().count() > MAX_ID_CHARS {
        out.push((
            path.to_string(),
            format!(
                "is {} characters long; an id has at most {MAX_ID_CHARS}",
                text.chars().count()
            ),
        ));
    }
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
    fn nul_bytes_and_long_ids_are_named_wherever_they_are() {
        use followup_proto::followup::plans::v1 as pb;
        use prost::Message as _;
        let request = pb::CreatePlanRequest {
            plan: Some(pb::Plan {
                patient_id: "p".repeat(200_000),
                title: "Phase\u{0}1".into(),
                items: vec![
                    pb::PlanItem::default(),
                    pb::PlanItem {
                        note: "ok".into(),
                        depends_on_item_ids: vec!["a".into(), "b".repeat(129)],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        };
        let body = request.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        let input = input_of("/followup.plans.v1.PlansService/CreatePlan").expect("described");
        let status = check_frames(&input, &framed).expect("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let message = status.message();
        assert!(
            message.contains("plan.title: contains a NUL byte"),
            "{message}"
        );
        assert!(
            message.contains("plan.patient_id: is 200000 characters long; an id has at most 128"),
            "{message}"
        );
        assert!(
            message.contains("plan.items[1].depends_on_item_ids[1]: is 129 characters long"),
            "{message}"
        );
        assert!(
            !message.contains("ppp"),
            "the value is not echoed: {message}"
        );

        let fine = pb::CreatePlanRequest {
            plan: Some(pb::Plan {
                patient_id: "p".repeat(128),
                title: "Phase 1".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(fine.len() as u32).to_be_bytes());
        framed.extend_from_slice(&fine);
        assert!(check_frames(&input, &framed).is_none());
        assert!(input_of("/grpc.health.v1.Health/Check").is_none());
    }

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
