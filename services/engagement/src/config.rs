//! The engagement service's own configuration keys (`FOLLOWUP_ENGAGEMENT__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::Limits;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// PEM public keys that verify portal link tokens (the plans service signs them); several during a
    /// key rotation.
    pub portal_public_keys: Vec<String>,
    /// Files holding such PEM keys, read at start (Kubernetes Secret volumes).
    pub portal_public_key_files: Vec<PathBuf>,
    /// Where the beacon ingest listens (`POST /v1/beacons`, `GET /v1/beacon.js`).
    pub http_addr: SocketAddr,
    /// Origins of the portal pages allowed to post beacons from a browser (CORS), e.g.
    /// `https://portal.example.com`; `*` allows any. Empty: no CORS headers (same-origin pages only).
    pub allowed_origins: Vec<String>,
    /// Requests each portal token may make per minute, and the burst above that rate.
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    /// Events one request may carry.
    pub max_events_per_request: usize,
    /// The most visible time one event may claim before the request is refused as absurd.
    pub max_reported_visible_ms: i64,
    /// The gap cap: one event counts for at most this much visible time. The script reports every 15 s
    /// while visible, so a longer report means the page was suspended or its clock jumped.
    pub max_counted_visible_ms: i64,
    /// A session without beacons for this long has ended (it is then summarised in engagement_updated).
    pub session_idle_secs: u64,
    /// engagement_updated is published at most once per plan per this many seconds.
    pub update_interval_secs: u64,
    /// How often the publisher looks for plans whose facts changed.
    pub update_poll_ms: u64,
    /// How long the ingest waits for JetStream's PubAck before it answers 503.
    pub publish_timeout_ms: u64,
    /// Verified portal tokens kept in memory, so a page's heartbeats skip the signature check.
    pub token_cache_size: usize,
    /// How long a beacon batch the aggregator fetched may stay unacknowledged before JetStream delivers it
    /// again (after a crash, this is how long the batches it held wait).
    pub aggregator_ack_wait_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            portal_public_keys: Vec::new(),
            portal_public_key_files: Vec::new(),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            allowed_origins: Vec::new(),
            rate_limit_per_minute: 120,
            rate_limit_burst: 30,
            max_events_per_request: 50,
            max_reported_visible_ms: 10 * 60 * 1000,
            max_counted_visible_ms: 60 * 1000,
            session_idle_secs: 30 * 60,
            update_interval_secs: 60,
            update_poll_ms: 1000,
            publish_timeout_ms: 5000,
            token_cache_size: 100_000,
            aggregator_ack_wait_secs: 30,
        }
    }
}

impl Settings {
    pub fn limits(&self) -> Limits {
        Limits {
            max_events: self.max_events_per_request,
            max_reported_visible_ms: self.max_reported_visible_ms,
            max_counted_visible_ms: self.max_counted_visible_ms,
        }
    }

    pub fn session_idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_secs)
    }

    /// Every PEM key, from the values and the files.
    pub fn portal_keys(&self) -> Result<Vec<String>, String> {
        let mut keys = self.portal_public_keys.clone();
        for path in &self.portal_public_key_files {
            keys.push(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("portal_public_key_files: {}: {e}", path.display()))?,
            );
        }
        if keys.is_empty() {
            return Err("portal_public_keys: no key to verify portal link tokens with: set \
                 portal_public_keys (PEM, the plans service's public key) or portal_public_key_files"
                .into());
        }
        Ok(keys)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_limit_per_minute == 0 || self.rate_limit_burst == 0 {
            return Err("rate_limit_per_minute and rate_limit_burst must be at least 1".into());
        }
        if self.max_events_per_request == 0 {
            return Err("max_events_per_request must be at least 1".into());
        }
        if self.max_counted_visible_ms <= 0
            || self.max_reported_visible_ms < self.max_counted_visible_ms
        {
            return Err(
                "max_counted_visible_ms must be positive and at most max_reported_visible_ms"
                    .into(),
            );
        }
        if self.update_poll_ms == 0
            || self.publish_timeout_ms == 0
            || self.aggregator_ack_wait_secs == 0
        {
            return Err(
                "update_poll_ms, publish_timeout_ms and aggregator_ack_wait_secs must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}

pub type Config = followup_platform::service::ServiceConfig<Settings>;
