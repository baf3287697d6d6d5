//! The timer: workers that fire due steps and due trigger timers. Each round claims a batch of each in
//! its own transaction; a full batch means more is due, so the next round starts at once; otherwise the
//! worker sleeps until the earliest due time (at most the poll interval), or until a commit that added
//! work wakes it (PostgreSQL NOTIFY), or shutdown.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::error::Result;
use crate::storage::{Store, WAKE_CHANNEL, fire, timers, waitlist};
use followup_platform::metrics::Metrics;
use followup_platform::shutdown::Shutdown;

/// The timer's figures on `/metrics`.
#[derive(Clone)]
pub struct TimerMetrics {
    pub steps_fired: Counter,
    pub steps_skipped: Counter,
    pub enrollments_finished: Counter,
    pub timers_fired: Counter,
    /// Fire time minus due time of the latest step of each batch, seconds.
    pub lateness: Histogram,
}

impl TimerMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            steps_fired: Counter::default(),
            steps_skipped: Counter::default(),
            enrollments_finished: Counter::default(),
            timers_fired: Counter::default(),
            lateness: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        metrics.register(
            "scheduler_steps_fired",
            "Rule steps fired (notification requested)",
            this.steps_fired.clone(),
        );
        metrics.register(
            "scheduler_steps_skipped",
            "Rule steps skipped (guard false, no recipient)",
            this.steps_skipped.clone(),
        );
        metrics.register(
            "scheduler_enrollments_finished",
            "Enrollments whose every step ran",
            this.enrollments_finished.clone(),
        );
        metrics.register(
            "scheduler_trigger_timers_fired",
            "Time-based trigger timers that fell due",
            this.timers_fired.clone(),
        );
        metrics.register(
            "scheduler_step_lateness_seconds",
            "How late the last step of each fired batch was",
            this.lateness.clone(),
        );
        this
    }
}

#[derive(Clone)]
pub struct TimerWorker {
    pub pool: PgPool,
    pub store: Store,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub metrics: TimerMetrics,
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    pub steps: fire::Fired,
    /// Trigger timers and waitlist slots (batches, cut-offs) claimed.
    pub timers: usize,
}

impl TimerWorker {
    /// Runs until shutdown; the round in progress finishes first.
    pub async fn run(self, shutdown: Shutdown) {
        let mut listener = self.listen().await;
        let mut failures = 0u32;
        while !shutdown.is_triggered() {
            let busy = match self.round().await {
                Ok(round) => {
                    failures = 0;
                    round.steps.claimed as i64 >= self.batch_size
                        || round.timers as i64 >= self.batch_size
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %err, failures, "timer round failed; retrying");
                    false
                }
            };
            if busy {
                continue;
            }
            let wait = if failures > 0 {
                Duration::from_millis(100 * 2u64.saturating_pow(failures.min(6)))
            } else {
                self.sleep_for().await
            };
            tokio::select! {
                () = shutdown.triggered() => {}
                () = tokio::time::sleep(wait) => {}
                woke = wait_notification(&mut listener) => {
                    if !woke {
                        listener = self.listen().await;
                    }
                }
            }
        }
    }

    /// One round: a batch of due steps, then a batch of due trigger timers, each in its transaction.
    pub async fn round(&self) -> Result<Round> {
        let mut tx = self.pool.begin().await?;
        let steps = fire::fire_due(&self.store, &mut tx, self.batch_size).await?;
        tx.commit().await?;
        if steps.claimed > 0 {
            self.metrics.steps_fired.inc_by(steps.fired as u64);
            self.metrics.steps_skipped.inc_by(steps.skipped as u64);
            self.metrics
                .enrollments_finished
                .inc_by(steps.finished as u64);
            self.metrics
                .lateness
                .observe(steps.max_lateness.num_milliseconds().max(0) as f64 / 1000.0);
        }
        let mut tx = self.pool.begin().await?;
        let timers = timers::fire_due(&self.store, &mut tx, self.batch_size).await?;
        tx.commit().await?;
        self.metrics.timers_fired.inc_by(timers as u64);
        let mut tx = self.pool.begin().await?;
        let slots = waitlist::fire_due(&self.store, &mut tx, self.batch_size).await?;
        tx.commit().await?;
        Ok(Round {
            steps,
            timers: timers + slots,
        })
    }

    /// Until the earliest due step or timer, at most the poll interval.
    async fn sleep_for(&self) -> Duration {
        let next = async {
            let mut conn = self.pool.acquire().await?;
            let steps = fire::next_due(&mut conn).await?;
            let timers = timers::next_due(&mut conn).await?;
            let slots = waitlist::next_due(&mut conn).await?;
            Ok::<_, crate::error::Error>(steps.into_iter().chain(timers).chain(slots).min())
        };
        match next.await {
            Ok(Some(next)) => {
                let until = (next - self.store.now()).to_std().unwrap_or(Duration::ZERO);
                until.min(self.poll_interval)
            }
            _ => self.poll_interval,
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(WAKE_CHANNEL).await {
                Ok(()) => Some(listener),
                Err(err) => {
                    tracing::warn!(error = %err, "timer LISTEN failed; polling only");
                    None
                }
            },
            Err(err) => {
                tracing::warn!(error = %err, "timer listener connection failed; polling only");
                None
            }
        }
    }
}

async fn wait_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => l.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}
