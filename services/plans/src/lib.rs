//! The plans service. Multi-visit treatment plans: catalogue and fees, items and dependencies, DRAFT → APPROVED → COMPLETED / CANCELLED, patient approval through a portal link.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;

use followup_platform::service::{Platform, Running, ServiceInfo, StartError};
use sqlx::migrate::Migrator;

pub use config::{Config, Settings};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "plans",
    grpc_port: 50051,
    admin_port: 9091,
};

pub static MIGRATOR: Migrator = sqlx::migrate!();

pub struct Service;

impl Service {
    /// Connects, migrates, declares streams and consumers, and serves on the configured addresses.
    pub async fn build(config: Config) -> Result<Running, StartError> {
        let platform = Platform::start(INFO, config.common, &MIGRATOR).await?;
        let auth = platform.authenticator();
        platform.serve(grpc::services(auth), vec![]).await
    }
}
