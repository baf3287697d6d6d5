//! The engagement service. Patient-portal view beacons in, per-plan engagement facts out.

pub mod config;
pub mod grpc;

use followup_platform::service::{Platform, Running, ServiceInfo, StartError};
use sqlx::migrate::Migrator;

pub use config::{Config, Settings};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "engagement",
    grpc_port: 50053,
    admin_port: 9093,
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
