//! The cases service. Case presentations: the follow-up dashboard of every plan sent, its queue and the clinic's leakage figure.

pub mod config;
pub mod domain;
pub mod grpc;

use followup_platform::service::{Platform, Running, ServiceInfo, StartError};
use sqlx::migrate::Migrator;

pub use config::{Config, Settings};

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
        let platform = Platform::start(INFO, config.common, &MIGRATOR).await?;
        let auth = platform.authenticator();
        platform.serve(grpc::services(auth), vec![]).await
    }
}
