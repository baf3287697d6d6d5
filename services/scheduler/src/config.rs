//! The scheduler service's own configuration keys (`FOLLOWUP_SCHEDULER__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub timer: TimerSettings,
    pub notifications: NotificationsSettings,
    pub claim_links: ClaimLinkSettings,
}

/// The signed links in slot offers, and the HTTP edge that answers them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimLinkSettings {
    /// Where the claim page listens (e.g. `0.0.0.0:8083`; port 0 picks a free one). Unset = no claim
    /// page and no links in offers: patients claim by replying YES (the dev stack sets it).
    pub http_addr: Option<std::net::SocketAddr>,
    /// How patients reach `http_addr` (the links start with it), e.g. `https://book.clinic.example`.
    pub public_base_url: String,
    /// The HMAC key of the links (secret). Empty = a random key per start: links then die with the
    /// process and differ between replicas — set it in production.
    pub signing_key: followup_platform::config::Secret,
}

impl Default for ClaimLinkSettings {
    fn default() -> Self {
        Self {
            http_addr: None,
            public_base_url: "http://localhost:8083".into(),
            signing_key: Default::default(),
        }
    }
}

/// Where the notifications service answers (previews read its quiet hours and cap and render its
/// templates; backtests read its pacing once at start).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsSettings {
    /// gRPC address, e.g. `http://notifications:50055`; empty = none (previews then assume the default
    /// quiet hours and cap and render nothing, and say so).
    pub addr: String,
    /// Per call.
    pub timeout_ms: u64,
}

impl Default for NotificationsSettings {
    fn default() -> Self {
        Self {
            addr: "http://127.0.0.1:50055".into(),
            timeout_ms: 3000,
        }
    }
}

/// The timer that fires due steps and trigger timers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimerSettings {
    /// Timer workers in this replica, each with its own transaction per round (0 = none: the replica
    /// only serves the API and consumes events).
    pub workers: usize,
    /// Due steps (and timers) claimed per transaction.
    pub batch_size: i64,
    /// Longest sleep between rounds when nothing is due sooner; commits that add work wake the workers
    /// at once.
    pub poll_interval_ms: u64,
}

impl Default for TimerSettings {
    fn default() -> Self {
        Self {
            workers: 1,
            batch_size: 1000,
            poll_interval_ms: 1000,
        }
    }
}

pub type Config = followup_platform::service::ServiceConfig<Settings>;
