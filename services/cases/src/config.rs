//! The cases service's own configuration keys (`FOLLOWUP_CASES__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use serde::{Deserialize, Serialize};

use crate::domain::CaseSettings;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// Response window of clinics that have not set their own (UpdateCaseSettings), in hours.
    pub response_window_hours: u64,
    /// Local hour (0-23) of the owner digest, for clinics that have not set their own.
    pub digest_hour: u32,
    /// IANA time zone of clinics that have not set their own.
    pub time_zone: String,
    /// How often the response-window timer looks for cases whose window has ended.
    pub timer_interval_ms: u64,
    /// Cases the timer moves per transaction.
    pub timer_batch_size: i64,
    /// How often the digest worker checks whether a clinic's digest hour has come.
    pub digest_interval_secs: u64,
    /// How often pending count deltas are folded into the per-status counts.
    pub counts_interval_ms: u64,
    /// How long a clinic's settings are cached (a change on another replica is seen after this).
    pub settings_cache_secs: u64,
    /// Changes a WatchCases stream may fall behind by before it is ended with RESOURCE_EXHAUSTED.
    pub watch_buffer: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            response_window_hours: 48,
            digest_hour: 7,
            time_zone: "UTC".into(),
            timer_interval_ms: 1000,
            timer_batch_size: 500,
            digest_interval_secs: 60,
            counts_interval_ms: 1000,
            settings_cache_secs: 5,
            watch_buffer: 1024,
        }
    }
}

impl Settings {
    /// The case settings a clinic gets until it sets its own.
    pub fn clinic_defaults(&self) -> CaseSettings {
        CaseSettings {
            response_window_secs: i64::try_from(self.response_window_hours.saturating_mul(3600))
                .unwrap_or(i64::MAX),
            digest_hour: self.digest_hour,
            time_zone: self.time_zone.clone(),
        }
    }
}

pub type Config = followup_platform::service::ServiceConfig<Settings>;
