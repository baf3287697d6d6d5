//! Logs and traces.
//!
//! Logs are `tracing` events, JSON by default. Spans always get OpenTelemetry ids, so a W3C
//! `traceparent` can be carried across every hop (NATS headers, gRPC metadata) whether or not traces are
//! exported; they are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Logs carry ids, never patient data (names, phones, emails, message bodies): that is a rule for every
//! `tracing` call in the code base, checked by the tests that grep the logs.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Flushes exported spans when the service stops.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is buffered. Called last in shutdown.
    pub fn flush(&self) {
        if let Some(Err(err)) = self.provider.as_ref().map(|p| p.force_flush()) {
            eprintln!("telemetry flush failed: {err}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

fn propagator() -> &'static TraceContextPropagator {
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// Installs the process-wide subscriber once. Later calls (several services in one process: `followup dev`,
/// tests) return a guard that flushes nothing, since the first one owns the exporter.
pub fn init(process_name: &str, log: &LogConfig) -> TelemetryGuard {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return TelemetryGuard { provider: None };
    }

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"))
    });
    let fmt_layer = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().boxed(),
    };

    let provider = tracer_provider(process_name);
    let tracer = provider.tracer("followup");
    let otel_layer = tracing_opentelemetry::layer().with_tracer(tracer);

    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    let _ = INSTALLED.set(());
    if installed {
        opentelemetry::global::set_tracer_provider(provider.clone());
        TelemetryGuard {
            provider: Some(provider),
        }
    } else {
        // Someone else (a test harness) installed a subscriber first; leave theirs alone.
        TelemetryGuard { provider: None }
    }
}

fn tracer_provider(process_name: &str) -> SdkTracerProvider {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(process_name.to_string())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty());
    let Some(_endpoint) = endpoint else {
        return builder.build();
    };
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT itself.
    match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(err) => {
            eprintln!("OTLP exporter not started ({err}); traces are not exported");
            builder.build()
        }
    }
}

/// Writes the current span's trace context as `traceparent` (and `tracestate`) into a carrier.
pub fn inject_current(carrier: &mut dyn Injector) {
    let cx = tracing::Span::current().context();
    propagator().inject_context(&cx, carrier);
}

/// The header names the trace context travels in (`traceparent`, `tracestate`), for the event contract.
pub fn propagated_headers() -> Vec<String> {
    propagator().fields().map(str::to_string).collect()
}

/// Makes `span` a child of the trace context found in a carrier, when there is one.
pub fn set_parent_from(span: &tracing::Span, carrier: &dyn Extractor) {
    let cx = propagator().extract(carrier);
    let _ = span.set_parent(cx);
}

/// The current span's W3C `traceparent`, to store beside work a worker picks up later (a timer's pending
/// step, a queued message), so that the worker continues the same trace with [`continue_trace`].
pub fn current_traceparent() -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    inject_current(&mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of a stored `traceparent` (see [`current_traceparent`]).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    set_parent_from(span, &carrier);
}

/// Links `span` to the trace context found in a carrier, when there is one: for work that serves several
/// traces at once (a batch of events), where no single one can be the parent.
pub fn add_link_from(span: &tracing::Span, carrier: &dyn Extractor) {
    use opentelemetry::trace::TraceContextExt;
    let cx = propagator().extract(carrier);
    let linked = cx.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// The current trace id, hex, for log lines and error references; all zeros outside any trace.
pub fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt;
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

/// NATS headers as a propagation carrier.
pub struct NatsHeaders<'a>(pub &'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Read-only NATS headers as a propagation carrier.
pub struct NatsHeadersRef<'a>(pub &'a async_nats::HeaderMap);

impl Extractor for NatsHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// HTTP / gRPC metadata headers as a propagation carrier.
pub struct HttpHeaders<'a>(pub &'a mut http::HeaderMap);

impl Injector for HttpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

pub struct HttpHeadersRef<'a>(pub &'a http::HeaderMap);

impl Extractor for HttpHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A tonic client interceptor that carries the caller's trace to the server.
#[derive(Clone, Copy, Default)]
pub struct TracePropagation;

impl tonic::service::Interceptor for TracePropagation {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let mut headers = std::mem::take(request.metadata_mut()).into_headers();
        inject_current(&mut HttpHeaders(&mut headers));
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    fn with_tracing<T>(f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, f)
    }

    fn trace_id(span: &tracing::Span) -> opentelemetry::trace::TraceId {
        span.context().span().span_context().trace_id()
    }

    #[test]
    fn a_trace_crosses_nats_headers() {
        with_tracing(|| {
            let producer = tracing::info_span!("publish");
            let mut headers = async_nats::HeaderMap::new();
            producer.in_scope(|| inject_current(&mut NatsHeaders(&mut headers)));
            let traceparent = headers
                .get("traceparent")
                .map(|v| v.to_string())
                .unwrap_or_default();
            assert!(traceparent.starts_with("00-"), "traceparent: {traceparent}");

            let consumer = tracing::info_span!("consume");
            set_parent_from(&consumer, &NatsHeadersRef(&headers));
            assert_eq!(trace_id(&producer), trace_id(&consumer));
        });
    }

    #[test]
    fn a_trace_crosses_grpc_metadata() {
        with_tracing(|| {
            let client = tracing::info_span!("call");
            let request = client.in_scope(|| {
                let mut interceptor = TracePropagation;
                tonic::service::Interceptor::call(&mut interceptor, tonic::Request::new(()))
            });
            let request = request.expect("interceptor never refuses");
            let headers = request.metadata().clone().into_headers();
            assert!(headers.contains_key("traceparent"));

            let server = tracing::info_span!("serve");
            set_parent_from(&server, &HttpHeadersRef(&headers));
            assert_eq!(trace_id(&client), trace_id(&server));
        });
    }

    #[test]
    fn a_trace_continues_from_a_stored_traceparent() {
        with_tracing(|| {
            let enrolled = tracing::info_span!("enroll");
            let stored = enrolled
                .in_scope(current_traceparent)
                .expect("a span has a traceparent");
            let fired = tracing::info_span!("fire_step");
            continue_trace(&fired, &stored);
            assert_eq!(trace_id(&enrolled), trace_id(&fired));
        });
    }

    #[test]
    fn no_context_no_parent() {
        with_tracing(|| {
            let headers = async_nats::HeaderMap::new();
            let span = tracing::info_span!("consume");
            set_parent_from(&span, &NatsHeadersRef(&headers));
            let _guard = span.enter();
            assert_ne!(current_trace_id(), "00000000000000000000000000000000");
        });
    }
}
