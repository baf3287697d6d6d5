//! The scheduler service's own configuration keys (`FOLLOWUP_SCHEDULER__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub timer: TimerSettings,
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
