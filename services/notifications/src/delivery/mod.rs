//! Delivery: workers that claim due messages in batches (`FOR UPDATE SKIP LOCKED`, so replicas share
//! the queue), decide each one (consent, quiet hours, cap), render it, hand it to its channel, and
//! record every attempt.
//!
//! # Crash safety
//!
//! A round is two transactions around the provider calls. The first claims the batch, decides, and for
//! each message to send records an attempt with outcome UNKNOWN and moves the message to `sending` with a
//! lease (`due_at` = now + `delivery.lease_secs`); it commits before any request leaves. The second
//! records what the providers answered. A `kill -9`:
//! - before the first commit: nothing happened; the messages are claimed again;
//! - after it, before a request leaves: the lease expires and the message is attempted again (one
//!   request in all);
//! - after the provider accepted, before the second commit (the window): the lease expires and the
//!   message is sent again, with the same `Idempotency-Key`. A provider that honours the key (Twilio's
//!   `I-Twilio-Idempotency-Token`, most JSON APIs, webhook receivers that dedupe on `webhook-id`) returns
//!   the first result, so the patient gets one message; SMTP has no such key, so an email can be
//!   delivered twice in that window (its Message-ID is the same, which some mail systems use to fold
//!   duplicates).

pub mod events;
pub mod providers;
pub mod worker;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use followup_platform::service::Platform;
use sqlx::postgres::PgListener;

use crate::state::App;
use crate::storage::DUE_CHANNEL;

/// The category of HELP replies: carriers require an answer even to a contact who opted out, so it is
/// exempt from consent (and never capped).
pub const HELP_CATEGORY: &str = "help_reply";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnknownOutcomeLabels {
    pub channel: String,
    /// `possibly_sent` (not sent again, at-most-once) or `retried` (same key, or at-least-once).
    pub action: String,
}

/// What the workers count beside the platform's figures. Clones share the counts.
#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    /// Attempts whose outcome is unknown (the worker stopped mid-call, or no answer came), by channel and
    /// what was done about them.
    pub unknown_outcomes: Family<UnknownOutcomeLabels, Counter>,
    /// Writes of provider answers that failed and were retried from memory.
    pub record_retries: Counter,
}

impl DeliveryMetrics {
    pub fn register(&self, metrics: &followup_platform::metrics::Metrics) {
        metrics.register(
            "notifications_unknown_outcomes",
            "Attempts whose outcome is unknown, by channel and action (possibly_sent, retried)",
            self.unknown_outcomes.clone(),
        );
        metrics.register(
            "notifications_record_retries",
            "Failed writes of provider answers, retried without calling the provider again",
            self.record_retries.clone(),
        );
    }

    pub fn unknown_outcome(&self, channel: &str, action: &str) {
        self.unknown_outcomes
            .get_or_create(&UnknownOutcomeLabels {
                channel: channel.to_string(),
                action: action.to_string(),
            })
            .inc();
    }
}

/// Starts the workers and the listener that wakes them when another transaction made a message due.
pub fn start(platform: &Platform, app: App) {
    for worker in 0..app.settings.delivery.workers.max(1) {
        let shutdown = platform.shutdown.clone();
        platform
            .shutdown
            .spawn(worker::run(app.clone(), shutdown, worker));
    }
    let shutdown = platform.shutdown.clone();
    let pool = app.pool.clone();
    platform.shutdown.spawn(async move {
        loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(DUE_CHANNEL).await {
                    Ok(()) => l,
                    Err(err) => {
                        tracing::warn!(error = %err, "LISTEN for due messages failed; polling only");
                        return;
                    }
                },
                Err(err) => {
                    tracing::warn!(error = %err, "listener connection failed; retrying");
                    tokio::select! {
                        () = shutdown.triggered() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                tokio::select! {
                    () = shutdown.triggered() => return,
                    received = listener.recv() => match received {
                        Ok(_) => app.wake.notify_one(),
                        Err(_) => break,
                    }
                }
            }
        }
    });
}
