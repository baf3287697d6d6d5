//! The cases service. Case presentations: the follow-up dashboard of every plan sent, its queue and the
//! clinic's leakage figure.
//!
//! Case state is built only from events (plans, engagement, scheduler, notifications, the clinic's
//! appointments, patients and staff), applied by [`engine::Engine`] through the pure functions of
//! [`domain`]; staff change cases through gRPC ([`grpc`]); timers ([`workers`]) move cases whose response
//! window ended and publish owner digests; [`watch`] pushes changes to dashboards.

pub mod config;
pub mod consumers;
pub mod domain;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod storage;
pub mod watch;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use followup_platform::service::{Platform, Running, ServiceInfo, StartError};
use sqlx::migrate::Migrator;

pub use config::{Config, Settings};

use followup_platform::clock::{Clock, SystemClock};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "cases",
    grpc_port: 50052,
    admin_port: 9092,
};

pub static MIGRATOR: Migrator = sqlx::migrate!();

pub struct Service;

impl Service {
    /// Connects, migrates, declares streams and consumers, and serves on the configured addresses.
    pub async fn build(config: Config) -> Result<Running, StartError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// The same, with the clock the timers and reasons read (tests move it instead of sleeping).
    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Running, StartError> {
        let own = config.own;
        let defaults = own.clinic_defaults();
        domain::validate_settings(&defaults).map_err(|(field, reason)| {
            StartError::Other(format!(
                "cases setting {}: {reason}",
                match field {
                    "response_window" => "response_window_hours",
                    other => other,
                }
            ))
        })?;
        let platform = Platform::start(INFO, config.common, &MIGRATOR).await?;
        let settings = storage::settings::SettingsStore::new(
            defaults,
            Duration::from_secs(own.settings_cache_secs),
        );
        let engine = engine::Engine::new(settings, INFO.name);
        let handler = consumers::CaseEvents {
            engine: engine.clone(),
        };
        for spec in consumers::specs() {
            platform.consume(spec, handler.clone()).await?;
        }

        let hub = watch::WatchHub::new(own.watch_buffer);
        let shutdown = platform.shutdown.clone();
        shutdown.spawn(hub.clone().listen(platform.pool.clone(), shutdown.clone()));
        shutdown.spawn(workers::response_timer(
            platform.pool.clone(),
            engine.clone(),
            clock.clone(),
            Duration::from_millis(own.timer_interval_ms.max(10)),
            own.timer_batch_size.max(1),
            shutdown.clone(),
        ));
        shutdown.spawn(workers::owner_digests(
            platform.pool.clone(),
            engine.clone(),
            clock.clone(),
            Duration::from_secs(own.digest_interval_secs.max(1)),
            shutdown.clone(),
        ));
        shutdown.spawn(workers::count_compactor(
            platform.pool.clone(),
            Duration::from_millis(own.counts_interval_ms.max(10)),
            shutdown.clone(),
        ));

        let auth = platform.authenticator();
        let api = grpc::CasesServiceApi {
            pool: platform.pool.clone(),
            engine,
            hub,
            clock,
            shutdown,
        };
        platform.serve(grpc::services(api, auth), vec![]).await
    }
}
