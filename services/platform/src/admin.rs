//! The admin HTTP server: what Kubernetes and Prometheus ask.
//!
//! - `/healthz`: the process is alive (liveness): always 200 while it serves;
//! - `/readyz`: it can do its job (readiness): 200 only when the database answers, NATS is connected and
//!   shutdown has not begun; 503 with the failing checks otherwise;
//! - `/metrics`: Prometheus text, with the outbox backlog refreshed at scrape time.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use sqlx::PgPool;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Clone)]
pub struct AdminState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let database = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let accepting = !state.shutdown.is_triggered();
    let ready = database && nats && accepting;
    let body = Json(json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": { "database": database, "nats": nats, "accepting": accepting },
    }));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    if let Ok(Ok(backlog)) =
        tokio::time::timeout(Duration::from_secs(1), crate::outbox::backlog(&state.pool)).await
    {
        state.metrics.outbox_backlog.set(backlog);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
