//! The scheduler service. Automation rules and timed follow-up sequences that stop when the patient
//! books, rejects, replies or opts out.
//!
//! - `domain/`: rules, conditions, facts, DST-correct schedules, the clock (plain Rust);
//! - `storage/`: case facts from events, rules, enrollments, due steps and trigger timers (PostgreSQL);
//! - `consumers/`: the events it consumes; `timer/`: the workers that fire what falls due;
//! - `grpc/`: `followup.scheduler.v1.SchedulerService` (WaitlistService answers UNIMPLEMENTED for now).

pub mod config;
pub mod consumers;
pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod links;
pub mod notify;
pub mod replay;
pub mod seed;
pub mod storage;
pub mod templates;
pub mod timer;

use std::sync::Arc;
use std::time::Duration;

use followup_platform::service::{HttpServer, Platform, Running, ServiceInfo, StartError};
use sqlx::migrate::Migrator;

pub use config::{Config, Settings};
use followup_platform::clock::{Clock, SystemClock};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "scheduler",
    grpc_port: 50054,
    admin_port: 9094,
};

pub static MIGRATOR: Migrator = sqlx::migrate!();

pub struct Service;

impl Service {
    /// Connects, migrates, declares streams and consumers, starts the timer and serves on the configured
    /// addresses.
    pub async fn build(config: Config) -> Result<Running, StartError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// The same with a given clock: tests move a [`followup_platform::clock::ManualClock`] instead of sleeping.
    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Running, StartError> {
        let own = config.own;
        if own.timer.batch_size < 1 {
            return Err(StartError::Other(
                "timer.batch_size (FOLLOWUP_SCHEDULER__TIMER__BATCH_SIZE) must be at least 1"
                    .into(),
            ));
        }
        let platform = Platform::start(INFO, config.common, &MIGRATOR).await?;
        let mut store = storage::Store::new(clock);
        if own.claim_links.http_addr.is_some() {
            let key = if own.claim_links.signing_key.is_empty() {
                tracing::warn!(
                    "claim_links.signing_key is not set: offer links use a random key and stop working on restart"
                );
                followup_platform::auth::KeyPair::generate()
                    .map_err(|e| StartError::Other(format!("claim link key: {e}")))?
                    .private_pem
                    .into_bytes()
            } else {
                own.claim_links.signing_key.expose().as_bytes().to_vec()
            };
            store.links = Some(Arc::new(links::ClaimLinks::new(
                &own.claim_links.public_base_url,
                &key,
            )));
        }
        for spec in consumers::specs() {
            platform
                .consume(
                    spec,
                    consumers::Events {
                        store: store.clone(),
                    },
                )
                .await?;
        }
        let metrics = timer::TimerMetrics::register(&platform.metrics);
        for _ in 0..own.timer.workers {
            let worker = timer::TimerWorker {
                pool: platform.pool.clone(),
                store: store.clone(),
                batch_size: own.timer.batch_size,
                poll_interval: Duration::from_millis(own.timer.poll_interval_ms.max(1)),
                metrics: metrics.clone(),
            };
            platform
                .shutdown
                .spawn(worker.run(platform.shutdown.clone()));
        }
        let auth = platform.authenticator();
        let api = grpc::SchedulerServiceApi {
            pool: platform.pool.clone(),
            store,
            js: platform.js.clone(),
            notifications: notify::Notifications::new(
                &own.notifications.addr,
                Duration::from_millis(own.notifications.timeout_ms.max(1)),
            ),
        };
        let pages = http::ClaimPages {
            pool: platform.pool.clone(),
            store: api.store.clone(),
        };
        let http = own
            .claim_links
            .http_addr
            .map(|addr| HttpServer {
                name: "claims",
                addr,
                router: http::router(pages),
            })
            .into_iter()
            .collect();
        platform.serve(grpc::services(auth, api), http).await
    }
}
