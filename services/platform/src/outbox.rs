//! The transactional outbox: the only way a service publishes an event.
//!
//! [`enqueue`] writes the event in the caller's transaction, so the event exists if and only if the state
//! change it announces was committed. The [`Relay`] publishes pending events in order with
//! `Nats-Msg-Id` = event id, waits for every PubAck, then marks them published. It claims rows with
//! `FOR UPDATE SKIP LOCKED`, so several replicas share the work without publishing a row twice at once;
//! a relay that dies after publishing and before marking republishes on restart, and JetStream's duplicate
//! window (then the consumers' inboxes) drop the copy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use futures::future::join_all;
use prost::{Message, Name};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::event::{EventError, OutgoingEvent};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The NOTIFY channel a commit that wrote the outbox signals, so the relay publishes without waiting
/// for its next poll.
pub const CHANNEL: &str = "followup_outbox";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("outbox: {0}")]
    Db(#[from] sqlx::Error),
}

/// Encodes `message` for `subject` and writes it to the outbox in the caller's transaction.
/// `source` is the publishing service (CloudEvents `ce-source`).
pub async fn enqueue<M: Message + Name>(
    conn: &mut PgConnection,
    source: &str,
    subject: impl Into<String>,
    message: &M,
) -> Result<Uuid, OutboxError> {
    let event = OutgoingEvent::new(source, subject, message)?;
    enqueue_events(conn, std::slice::from_ref(&event)).await?;
    Ok(event.event_id)
}

/// Writes an event of the contract table to the outbox, on the subject its kind and tenant give.
pub async fn enqueue_event<E: followup_proto::subjects::Event>(
    conn: &mut PgConnection,
    source: &str,
    event: &E,
) -> Result<Uuid, OutboxError> {
    let subject = event.subject().map_err(|e| EventError::Invalid {
        field: "tenant_id",
        reason: format!("{e:?}"),
    })?;
    enqueue(conn, source, subject, event).await
}

/// Writes already-built events in one statement (hot paths that emit many at once).
pub async fn enqueue_events(
    conn: &mut PgConnection,
    events: &[OutgoingEvent],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut tenants = Vec::with_capacity(events.len());
    let mut subjects = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut headers = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.event_id);
        tenants.push(event.tenant_id.clone());
        subjects.push(event.subject.clone());
        payloads.push(event.payload.clone());
        headers.push(serde_json::to_value(&event.headers).unwrap_or_default());
    }
    sqlx::query(
        "INSERT INTO outbox (id, tenant_id, subject, payload, headers)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[])",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&subjects)
    .bind(&payloads)
    .bind(&headers)
    .execute(&mut *conn)
    .await?;
    // Delivered at commit, coalesced per transaction: one wake-up however many events.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Events written and not yet published (the `/metrics` backlog).
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Deletes published events older than the retention.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)")
            .bind(retention.as_secs_f64())
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// Publishes what the outbox holds.
#[derive(Clone)]
pub struct Relay {
    pub pool: PgPool,
    pub js: async_nats::jetstream::Context,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub metrics: Arc<Metrics>,
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: Uuid,
    subject: String,
    payload: Vec<u8>,
    headers: serde_json::Value,
}

impl Relay {
    /// Runs until shutdown, then publishes one last round so that committed work leaves with us.
    pub async fn run(self, shutdown: Shutdown) {
        let mut listener = self.listen().await;
        let mut failures = 0u32;
        loop {
            match self.publish_once().await {
                Ok(published) if published as i64 >= self.batch_size => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %err, failures, "outbox relay round failed; retrying");
                }
            }
            if shutdown.is_triggered() {
                break;
            }
            let wait = if failures > 0 {
                Duration::from_millis(100 * 2u64.saturating_pow(failures.min(6)))
            } else {
                self.poll_interval
            };
            tokio::select! {
                () = shutdown.triggered() => {}
                () = tokio::time::sleep(wait) => {}
                woke = wait_notification(&mut listener), if failures == 0 => {
                    if !woke {
                        // The listener's connection broke; it reconnects on the next recv, poll meanwhile.
                        listener = self.listen().await;
                    }
                }
            }
        }
        if let Err(err) = self.publish_once().await {
            tracing::warn!(error = %err, "final outbox round failed; events stay pending for the next start");
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => Some(listener),
                Err(err) => {
                    tracing::warn!(error = %err, "outbox LISTEN failed; polling only");
                    None
                }
            },
            Err(err) => {
                tracing::warn!(error = %err, "outbox listener connection failed; polling only");
                None
            }
        }
    }

    /// One round: claim up to a batch, publish in order, await the acks, mark what was acknowledged.
    /// Returns how many events were published.
    pub async fn publish_once(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<PendingRow> = sqlx::query_as::<sqlx::Postgres, PendingRow>(
            "SELECT id, subject, payload, headers FROM outbox
             WHERE published_at IS NULL
             ORDER BY created_at, id
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        // Sent one after another on one connection, so the stream keeps the outbox order; the acks are
        // awaited together.
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut headers = async_nats::HeaderMap::new();
            if let Ok(map) = serde_json::from_value::<BTreeMap<String, String>>(row.headers.clone())
            {
                for (name, value) in map {
                    headers.insert(name.as_str(), value.as_str());
                }
            }
            let publish = PublishMessage::build()
                .payload(row.payload.clone().into())
                .headers(headers)
                .message_id(row.id.to_string());
            acks.push(self.js.send_publish(row.subject.clone(), publish).await);
        }
        let mut published = Vec::with_capacity(rows.len());
        let mut first_error = None;
        let results = join_all(acks.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }))
        .await;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => published.push(row.id),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(&published)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.metrics.outbox_published.inc_by(published.len() as u64);
        match first_error {
            Some(err) => Err(RelayError::Publish(err)),
            None => Ok(published.len()),
        }
    }
}

/// Waits for one notification; false when the listener is gone.
async fn wait_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => l.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox: {0}")]
    Db(#[from] sqlx::Error),
    #[error("publish: {0}")]
    Publish(String),
}
