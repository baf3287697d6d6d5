//! The notifications service's own configuration keys (`FOLLOWUP_NOTIFICATIONS__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use followup_platform::config::Secret;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// The HTTP edge: SMS provider callbacks (inbound messages, delivery status) and email unsubscribe.
    pub http_addr: SocketAddr,
    /// How the outside world reaches the HTTP edge: unsubscribe links and provider callback URLs
    /// (Twilio signs the URL it called, so this must be exactly what the provider sees).
    pub public_base_url: String,
    /// HMAC key of unsubscribe link tokens (any string, 32+ characters). Empty: a random key per start,
    /// so links sent before a restart stop working (fine for `followup dev`, never for production).
    pub unsubscribe_signing_key: Secret,
    /// How long an email's unsubscribe link works (days; at least 30, as CAN-SPAM asks of an opt-out
    /// mechanism). An expired link's page says how else to unsubscribe.
    pub unsubscribe_link_ttl_days: u32,
    pub sms: SmsSettings,
    pub smtp: SmtpSettings,
    pub webhooks: WebhookSettings,
    pub delivery: DeliveryConfig,
    /// The zone of a clinic that has not set one (delivery settings).
    pub default_time_zone: String,
}

/// Which SMS provider adapter sends texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsProvider {
    /// No provider: SMS messages fail with "no SMS provider configured".
    None,
    /// Twilio's Programmable Messaging REST API (form-encoded, basic auth, X-Twilio-Signature callbacks).
    Twilio,
    /// A generic JSON API: POST {base_url}/messages, Standard Webhooks-signed callbacks.
    GenericJson,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SmsSettings {
    pub provider: SmsProvider,
    /// Twilio: `https://api.twilio.com`; generic: the API's base URL.
    pub base_url: String,
    /// Twilio account SID (the basic-auth user); unused by the generic adapter.
    pub account_sid: String,
    /// Twilio auth token (basic-auth password and callback signing key), or the generic API's bearer key.
    pub auth_token: Secret,
    /// The sending number (E.164) or messaging service / sender id.
    pub from: String,
    /// Generic adapter: the "whsec_…" secret its inbound and status callbacks are signed with, for a
    /// clinic without a secret of its own in `callback_secrets`. Inbound callbacks signed with it must
    /// name their clinic in the signed body (`"tenant"`), so one clinic's callback is no good at another's URL.
    pub callback_secret: Secret,
    /// Generic adapter: a "whsec_…" secret per clinic (tenant id → secret). A listed clinic's callbacks
    /// verify with its own secret only.
    pub callback_secrets: BTreeMap<String, Secret>,
    /// Whether the provider returns the first result for a repeated `Idempotency-Key` (Twilio and most
    /// JSON APIs do). When true an attempt whose outcome is unknown is retried with the same key; when
    /// false the clinic's `sms_unknown_outcome` policy decides (default: not sent again, "possibly sent").
    pub honours_idempotency_key: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SmtpSettings {
    /// e.g. `smtps://user:password@smtp.example.com:465`, `smtp://127.0.0.1:2525` (no TLS, dev), or
    /// `smtp://user:password@host:587?tls=required`. Empty: email fails with "no SMTP server configured".
    pub url: Secret,
    /// From address when the clinic has set none.
    pub from: String,
    pub timeout_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebhookSettings {
    /// Accept http:// endpoint URLs (dev and tests); production endpoints must be https.
    pub allow_http: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliveryConfig {
    /// Delay before each attempt: the first is the first attempt's (0 = immediately), the rest the waits
    /// between retries. Default: 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub retry_schedule_ms: Vec<u64>,
    /// Messages claimed per worker round.
    pub batch_size: i64,
    /// Worker rounds in flight (each claims its own batch with FOR UPDATE SKIP LOCKED).
    pub workers: usize,
    /// Provider requests in flight per round.
    pub send_concurrency: usize,
    /// Fallback polling; new messages wake the workers at once (NOTIFY).
    pub poll_interval_ms: u64,
    /// How long a claimed message may stay in flight before another worker takes it over (a crash).
    pub lease_secs: u64,
    /// Timeout of one provider request.
    pub request_timeout_ms: u64,
    /// How long a request for a patient this service has not heard of yet waits for its
    /// patient.upserted (the two arrive on different streams) before it is suppressed.
    pub unknown_recipient_grace_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8082)),
            public_base_url: "http://localhost:8082".into(),
            unsubscribe_signing_key: Secret::default(),
            unsubscribe_link_ttl_days: 60,
            sms: SmsSettings {
                provider: SmsProvider::None,
                base_url: String::new(),
                account_sid: String::new(),
                auth_token: Secret::default(),
                from: String::new(),
                callback_secret: Secret::default(),
                callback_secrets: BTreeMap::new(),
                honours_idempotency_key: true,
            },
            smtp: SmtpSettings {
                url: Secret::default(),
                from: "Followup <no-reply@followup.invalid>".into(),
                timeout_secs: 15,
            },
            webhooks: WebhookSettings { allow_http: false },
            delivery: DeliveryConfig {
                retry_schedule_ms: crate::domain::retry::default_schedule_secs()
                    .into_iter()
                    .map(|s| s * 1000)
                    .collect(),
                batch_size: 500,
                workers: 2,
                send_concurrency: 256,
                poll_interval_ms: 1000,
                lease_secs: 120,
                request_timeout_ms: 15_000,
                unknown_recipient_grace_secs: 300,
            },
            default_time_zone: "UTC".into(),
        }
    }
}

impl DeliveryConfig {
    pub fn schedule(&self) -> Vec<Duration> {
        self.retry_schedule_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect()
    }
}

pub type Config = followup_platform::service::ServiceConfig<Settings>;
