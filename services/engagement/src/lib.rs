//! The engagement service. Patient-portal view beacons in, per-plan engagement facts out.
//!
//! - `http`: the beacon ingest (`POST /v1/beacons`, `GET /v1/beacon.js`), durable on JetStream's PubAck;
//! - `consumers`: the aggregator folding the BEACONS stream into facts, and the throttled
//!   engagement_updated publisher;
//! - `grpc`: `followup.engagement.v1.EngagementService`.

pub mod config;
pub mod consumers;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use followup_platform::auth::PortalVerifier;
use followup_platform::jetstream::{self, BEACONS, ConsumerSpec};
use followup_platform::service::{HttpServer, Platform, Running, ServiceInfo, StartError};
use followup_proto::followup::events::v1::BeaconBatch;
use followup_proto::subjects::Event as _;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sqlx::migrate::Migrator;

pub use config::{Config, Settings};
pub use error::Error;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "engagement",
    grpc_port: 50053,
    admin_port: 9093,
};

pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Event keys are kept a day longer than the BEACONS stream keeps messages (7 days): no redelivery can
/// bring an older event back.
const EVENT_KEY_RETENTION: Duration = Duration::from_secs(8 * 24 * 3600);

pub struct Service;

impl Service {
    /// Connects, migrates, declares streams and consumers, and serves on the configured addresses.
    pub async fn build(config: Config) -> Result<Running, StartError> {
        let settings = config.own;
        let invalid = |key: &str, reason: String| {
            StartError::Config(followup_platform::config::ConfigError::invalid(
                &INFO, key, reason,
            ))
        };
        settings
            .validate()
            .map_err(|reason| invalid("engagement", reason))?;
        let keys = settings
            .portal_keys()
            .map_err(|reason| invalid("portal_public_keys", reason))?;
        let verifier = PortalVerifier::from_pems(&keys)
            .map_err(|e| invalid("portal_public_keys", e.to_string()))?;
        let cors = http::cors(&settings.allowed_origins)
            .map_err(|reason| invalid("allowed_origins", reason))?;

        let platform = Platform::start(INFO, config.common, &MIGRATOR).await?;

        // The ingest publishes on a connection of its own, so beacon traffic never queues behind the
        // aggregator's fetches and acks (or the other way round).
        let ingest_client =
            jetstream::connect(&platform.config, "followup-engagement-ingest").await?;
        let ingest = Arc::new(http::Ingest::new(
            &settings,
            verifier,
            jetstream::context(ingest_client),
            platform.metrics.clone(),
        ));

        let lag = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        platform.metrics.register(
            "engagement_aggregation_lag_seconds",
            "Beacon accepted by the ingest to folded into the facts",
            lag.clone(),
        );
        let mut spec = ConsumerSpec::new(
            BEACONS,
            consumers::DURABLE,
            BeaconBatch::KIND.filter_subject(),
        );
        spec.ack_wait = Duration::from_secs(settings.aggregator_ack_wait_secs);
        platform
            .consume(
                spec,
                consumers::BeaconFolder {
                    cap_ms: settings.max_counted_visible_ms,
                    lag,
                },
            )
            .await?;

        let publisher = consumers::updates::UpdatePublisher {
            pool: platform.pool.clone(),
            interval: Duration::from_secs(settings.update_interval_secs),
            idle: settings.session_idle(),
            poll: Duration::from_millis(settings.update_poll_ms),
        };
        platform
            .shutdown
            .spawn(publisher.run(platform.shutdown.clone()));
        platform.shutdown.spawn(housekeeping(
            platform.pool.clone(),
            ingest.clone(),
            platform.shutdown.clone(),
        ));

        let auth = platform.authenticator();
        let grpc = grpc::services(auth, platform.pool.clone());
        let beacons = HttpServer {
            name: "beacons",
            addr: settings.http_addr,
            router: http::router(ingest, cors),
        };
        platform.serve(grpc, vec![beacons]).await
    }
}

/// Every minute: forget quiet links' rate-limit state; hourly: prune old event keys.
async fn housekeeping(
    pool: sqlx::PgPool,
    ingest: Arc<http::Ingest>,
    shutdown: followup_platform::shutdown::Shutdown,
) {
    let mut minutes = 0u64;
    loop {
        tokio::select! {
            () = shutdown.triggered() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        ingest.forget_idle();
        minutes += 1;
        if minutes.is_multiple_of(60) {
            match storage::prune_event_keys(&pool, EVENT_KEY_RETENTION).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned beacon event keys"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "pruning beacon event keys failed"),
            }
        }
    }
}
