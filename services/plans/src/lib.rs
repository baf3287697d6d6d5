//! The plans service. Multi-visit treatment plans: catalogue and fees, items and dependencies,
//! DRAFT → SENT → APPROVED → COMPLETED / CANCELLED, patient approval through a portal link.

pub mod app;
pub mod config;
pub mod consumers;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod storage;

use followup_platform::auth::Signer;
use followup_platform::config::ConfigError;
use followup_platform::service::{HttpServer, Platform, Running, ServiceInfo, StartError};
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
    /// Connects, migrates, declares streams, and serves gRPC and the patient portal on the configured
    /// addresses.
    pub async fn build(config: Config) -> Result<Running, StartError> {
        let settings = config.own;
        if settings.portal_signing_key.is_empty() {
            return Err(ConfigError::invalid(
                &INFO,
                "portal_signing_key",
                "required: the Ed25519 private key (PKCS#8 PEM) that signs patients' portal links"
                    .into(),
            )
            .into());
        }
        let signer = Signer::from_pem(settings.portal_signing_key.expose())?;
        let platform = Platform::start(INFO, config.common, &MIGRATOR).await?;
        platform
            .consume(consumers::spec(), consumers::CaseOutcomes)
            .await?;
        let auth = platform.authenticator();
        let portal_addr = settings.portal_addr;
        let app = app::App::new(platform.pool.clone(), signer, settings)
            .map_err(|e| ConfigError::invalid(&INFO, "default_currency", e.to_string()))?;
        let router =
            http::router(app.clone()).map_err(|e| StartError::Other(format!("portal: {e}")))?;
        let running = platform
            .serve(
                grpc::services(app.clone(), auth),
                vec![HttpServer {
                    name: "portal",
                    addr: portal_addr,
                    router,
                }],
            )
            .await?;
        if let Some(addr) = running.http_addr("portal") {
            app.portal_bound(addr);
        }
        Ok(running)
    }
}
