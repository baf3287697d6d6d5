//! Graceful shutdown: one token every part of a service watches, and a tracker of the work in flight.
//!
//! On SIGTERM/SIGINT the token is cancelled: servers stop accepting, consumers stop fetching, the outbox
//! relay finishes its round. [`Shutdown::wait_drained`] then waits (bounded) for every tracked task, and
//! only after that is telemetry flushed, so the last spans describe the drain itself.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down (idempotent).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has started.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs a task that shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Waits for every tracked task, at most `grace`. Returns false when some were still running.
    pub async fn wait_drained(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Triggers shutdown on the first SIGTERM or SIGINT.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                signal = wait_for_signal() => {
                    tracing::info!(signal, "shutdown requested");
                    this.trigger();
                }
                () = this.triggered() => {}
            }
        });
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C), with the signal's name.
pub async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        // Without signal handlers (never on Linux) Ctrl-C is still honoured.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drains_tracked_work_after_trigger() {
        let shutdown = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let watcher = shutdown.clone();
        shutdown.spawn(async move {
            watcher.triggered().await;
            // In-flight work finishes after the trigger.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(());
        });
        shutdown.trigger();
        assert!(shutdown.wait_drained(Duration::from_secs(5)).await);
        assert!(rx.await.is_ok());
    }

    #[tokio::test]
    async fn gives_up_after_grace() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        shutdown.trigger();
        assert!(!shutdown.wait_drained(Duration::from_millis(50)).await);
    }
}
