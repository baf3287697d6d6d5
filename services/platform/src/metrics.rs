//! Prometheus metrics of one service instance.
//!
//! One registry per running service (not a process global), so several services in one process
//! (`followup dev`, the end-to-end tests) keep their figures apart. Services register their own metrics
//! with [`Metrics::register`].

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub consumer: String,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// gRPC requests by method and status code.
    pub rpc_requests: Family<RpcLabels, Counter>,
    /// gRPC handling time by method, seconds.
    pub rpc_duration: Family<MethodLabels, Histogram>,
    /// HTTP requests (beacons, portal) by route and status.
    pub http_requests: Family<RpcLabels, Counter>,
    pub http_duration: Family<MethodLabels, Histogram>,
    /// Messages waiting for each durable consumer (JetStream's num_pending), refreshed at scrape time.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// Consumed events by outcome: processed, duplicate, dead_lettered, retried.
    pub consumer_events: Family<OutcomeLabels, Counter>,
    /// Events written to the outbox and not yet published, refreshed at scrape time.
    pub outbox_backlog: Gauge,
    /// Events published by the outbox relay.
    pub outbox_published: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

impl Metrics {
    pub fn new(service: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "followup",
            [(
                std::borrow::Cow::Borrowed("service"),
                std::borrow::Cow::Owned(service.to_string()),
            )]
            .into_iter(),
        );
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_duration =
            Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let http_requests = Family::<RpcLabels, Counter>::default();
        let http_duration =
            Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let consumer_pending = Family::<ConsumerLabels, Gauge>::default();
        let consumer_events = Family::<OutcomeLabels, Counter>::default();
        let outbox_backlog = Gauge::default();
        let outbox_published = Counter::default();
        registry.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            rpc_requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC handling time",
            rpc_duration.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP handling time",
            http_duration.clone(),
        );
        registry.register(
            "consumer_pending",
            "Messages waiting for a durable consumer",
            consumer_pending.clone(),
        );
        registry.register(
            "consumer_events",
            "Consumed events by outcome",
            consumer_events.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Outbox events not yet published",
            outbox_backlog.clone(),
        );
        registry.register(
            "outbox_published",
            "Events published by the outbox relay",
            outbox_published.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            rpc_requests,
            rpc_duration,
            http_requests,
            http_duration,
            consumer_pending,
            consumer_events,
            outbox_backlog,
            outbox_published,
        }
    }

    /// Adds a service's own metric (keep the clone you pass to update it).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_service_label() {
        let metrics = Metrics::new("plans");
        metrics
            .rpc_requests
            .get_or_create(&RpcLabels {
                method: "/followup.plans.v1.PlansService/GetPlan".into(),
                code: "OK".into(),
            })
            .inc();
        metrics.outbox_backlog.set(3);
        let text = metrics.encode();
        assert!(
            text.contains("followup_grpc_requests_total{service=\"plans\""),
            "{text}"
        );
        assert!(
            text.contains("followup_outbox_backlog{service=\"plans\"} 3"),
            "{text}"
        );
    }
}
