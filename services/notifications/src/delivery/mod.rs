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

use followup_platform::service::Platform;
use sqlx::postgres::PgListener;

use crate::state::App;
use crate::storage::DUE_CHANNEL;

/// The category of HELP replies: carriers require an answer even to a contact who opted out, so it is
/// exempt from consent (and never capped).
pub const HELP_CATEGORY: &str = "help_reply";

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
