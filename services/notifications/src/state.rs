//! What every adapter of the service shares: the pool, the settings, the outbound HTTP client and SMTP
//! transport, and the signal that wakes the delivery workers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::{Settings, SmsProvider};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
pub struct App {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub unsubscribe_key: Arc<Vec<u8>>,
    pub http: HttpClient,
    pub smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    /// Wakes the delivery workers in this process (a message became due).
    pub wake: Arc<Notify>,
    /// The delivery workers' figures (registered with the platform's registry at start).
    pub metrics: crate::delivery::DeliveryMetrics,
}

/// Settings that parse but cannot work, refused at start with the key's name.
pub fn validate(settings: &Settings) -> Result<(), String> {
    if crate::domain::address::parse_zone(&settings.default_time_zone).is_err() {
        return Err(format!(
            "default_time_zone `{}` is not an IANA zone",
            settings.default_time_zone
        ));
    }
    if settings.delivery.retry_schedule_ms.is_empty() {
        return Err(
            "delivery.retry_schedule_ms needs at least one entry (the first attempt)".into(),
        );
    }
    if settings.delivery.batch_size < 1 || settings.delivery.workers == 0 {
        return Err("delivery.batch_size and delivery.workers must be at least 1".into());
    }
    if settings.delivery.lease_secs * 1000 <= settings.delivery.request_timeout_ms {
        // Otherwise a worker would take over a message whose request is still in flight.
        return Err("delivery.lease_secs must be longer than delivery.request_timeout_ms".into());
    }
    match settings.sms.provider {
        SmsProvider::None => {}
        SmsProvider::Twilio | SmsProvider::GenericJson => {
            if !(settings.sms.base_url.starts_with("http://")
                || settings.sms.base_url.starts_with("https://"))
            {
                return Err("sms.base_url must be an http(s) URL".into());
            }
        }
    }
    if settings.sms.provider == SmsProvider::Twilio && settings.sms.account_sid.is_empty() {
        return Err("sms.account_sid is required for the twilio provider".into());
    }
    for (tenant, secret) in &settings.sms.callback_secrets {
        if !followup_platform::event::is_valid_tenant(tenant) {
            return Err(format!(
                "sms.callback_secrets: `{tenant}` is not a clinic id"
            ));
        }
        if crate::domain::signing::secret_key(secret.expose()).is_none() {
            return Err(format!(
                "sms.callback_secrets.{tenant} is not a whsec_… (base64) secret"
            ));
        }
    }
    if !(30..=3650).contains(&settings.unsubscribe_link_ttl_days) {
        return Err(format!(
            "unsubscribe_link_ttl_days must be between 30 and 3650, got {}",
            settings.unsubscribe_link_ttl_days
        ));
    }
    Ok(())
}

impl App {
    /// When an unsubscribe link signed now stops working (Unix seconds).
    pub fn unsubscribe_link_expiry(&self) -> i64 {
        chrono::Utc::now().timestamp()
            + i64::from(self.settings.unsubscribe_link_ttl_days) * 24 * 3600
    }

    pub fn new(pool: PgPool, settings: Settings) -> Result<Self, String> {
        let unsubscribe_key = if settings.unsubscribe_signing_key.is_empty() {
            let mut key = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            tracing::warn!(
                "unsubscribe_signing_key is not set: unsubscribe links stop working at the next restart"
            );
            key
        } else {
            settings
                .unsubscribe_signing_key
                .expose()
                .as_bytes()
                .to_vec()
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(512)
            .build(connector);
        let smtp = if settings.smtp.url.is_empty() {
            None
        } else {
            let transport =
                AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.smtp.url.expose())
                    .map_err(|e| format!("smtp.url: {e}"))?
                    .timeout(Some(Duration::from_secs(settings.smtp.timeout_secs)))
                    .build();
            Some(transport)
        };
        Ok(Self {
            pool,
            settings: Arc::new(settings),
            unsubscribe_key: Arc::new(unsubscribe_key),
            http,
            smtp,
            wake: Arc::new(Notify::new()),
            metrics: crate::delivery::DeliveryMetrics::default(),
        })
    }
}
