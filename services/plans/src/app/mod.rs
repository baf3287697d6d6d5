//! The plans service's use cases, shared by the gRPC API and the patient portal: each loads what it
//! needs, applies the domain's rules, writes the change and its one event in one transaction.

pub mod catalog;
mod events;
pub mod plans;

use std::sync::{Arc, OnceLock};

use followup_platform::auth::Signer;
use sqlx::PgPool;

use crate::config::Settings;
use crate::domain::money::Currency;
use crate::error::{PlansError, Result};

/// What the use cases share.
#[derive(Clone)]
pub struct App {
    pub pool: PgPool,
    pub signer: Signer,
    pub settings: Arc<Settings>,
    pub default_currency: Currency,
    /// The portal's public base URL, known once its listener is bound when not configured.
    portal_base: Arc<OnceLock<String>>,
}

impl App {
    pub fn new(pool: PgPool, signer: Signer, settings: Settings) -> Result<Self> {
        let default_currency = Currency::parse(&settings.default_currency)
            .map_err(|_| PlansError::Internal("default_currency is not an ISO 4217 code".into()))?;
        let portal_base = Arc::new(OnceLock::new());
        if !settings.portal_base_url.trim().is_empty() {
            let _ = portal_base.set(
                settings
                    .portal_base_url
                    .trim()
                    .trim_end_matches('/')
                    .to_string(),
            );
        }
        Ok(Self {
            pool,
            signer,
            settings: Arc::new(settings),
            default_currency,
            portal_base,
        })
    }

    /// Sets the base URL from the bound portal address when none was configured.
    pub fn portal_bound(&self, addr: std::net::SocketAddr) {
        let _ = self
            .portal_base
            .set(format!("http://localhost:{}", addr.port()));
    }

    pub fn portal_base(&self) -> String {
        self.portal_base
            .get()
            .cloned()
            .unwrap_or_else(|| format!("http://localhost:{}", self.settings.portal_addr.port()))
    }

    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        Ok(self.pool.acquire().await?)
    }
}

/// A UUID from a request field, or INVALID_ARGUMENT naming the field.
pub fn parse_id(field: &str, value: &str) -> Result<uuid::Uuid> {
    if value.trim().is_empty() {
        return Err(PlansError::invalid(field, "required"));
    }
    uuid::Uuid::parse_str(value.trim())
        .map_err(|_| PlansError::invalid(field, format!("`{value}` is not a UUID")))
}
