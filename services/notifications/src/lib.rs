//! The notifications service. Contacts, consent, templates and channels: exactly one message per intent,
//! never to someone who said stop.
//!
//! - `consumers/`: patient and staff contacts and inbound messages (CLINIC), notification requests
//!   (scheduler), plan approvals and owner digests (plans, cases) become rows in the caller's transaction;
//! - `delivery/`: workers claim due messages with `FOR UPDATE SKIP LOCKED`, check consent, quiet hours and
//!   the cap, render, hand them to the SMS/email/webhook adapters, and record every attempt;
//! - `http/`: provider callbacks (inbound SMS, delivery status) and the email one-click unsubscribe;
//! - `grpc/`: `followup.notifications.v1.NotificationsService`;
//! - `capture`: the dev stack's and the tests' local SMS/webhook HTTP sink and SMTP sink.

pub mod capture;
pub mod config;
pub mod consumers;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod inbound;
pub mod state;
pub mod storage;

use followup_platform::jetstream::{self, ConsumerSpec};
use followup_platform::service::{HttpServer, Platform, Running, ServiceInfo, StartError};
use followup_proto::followup::events::v1::{NotificationRequested, OwnerDigest, PlanApproved};
use followup_proto::subjects::Event as _;
use sqlx::migrate::Migrator;

pub use config::{Config, Settings};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "notifications",
    grpc_port: 50055,
    admin_port: 9095,
};

pub static MIGRATOR: Migrator = sqlx::migrate!();

pub struct Service;

impl Service {
    /// Connects, migrates, declares streams and consumers, starts the delivery workers, and serves on the
    /// configured addresses.
    pub async fn build(config: Config) -> Result<Running, StartError> {
        let settings = config.own.clone();
        state::validate(&settings).map_err(StartError::Other)?;
        let platform = Platform::start(INFO, config.common, &MIGRATOR).await?;
        let app =
            state::App::new(platform.pool.clone(), settings.clone()).map_err(StartError::Other)?;
        app.metrics.register(&platform.metrics);

        platform
            .consume(
                ConsumerSpec::new(jetstream::CLINIC, "notifications-clinic", "clinic.*.>"),
                consumers::Clinic { app: app.clone() },
            )
            .await?;
        platform
            .consume(
                ConsumerSpec::new(
                    jetstream::FOLLOWUP,
                    "notifications-requests",
                    NotificationRequested::KIND.filter_subject(),
                ),
                consumers::Requests { app: app.clone() },
            )
            .await?;
        platform
            .consume(
                ConsumerSpec::new(
                    jetstream::FOLLOWUP,
                    "notifications-approvals",
                    PlanApproved::KIND.filter_subject(),
                ),
                consumers::Alerts { app: app.clone() },
            )
            .await?;
        platform
            .consume(
                ConsumerSpec::new(
                    jetstream::FOLLOWUP,
                    "notifications-digests",
                    OwnerDigest::KIND.filter_subject(),
                ),
                consumers::Alerts { app: app.clone() },
            )
            .await?;

        delivery::start(&platform, app.clone());

        let auth = platform.authenticator();
        platform
            .serve(
                grpc::services(auth, app.clone()),
                vec![HttpServer {
                    name: "http",
                    addr: settings.http_addr,
                    router: http::router(app),
                }],
            )
            .await
    }
}
