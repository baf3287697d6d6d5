//! The consumer runner: how every service applies the events it consumes.
//!
//! A service gives a [`Handler`] and a [`ConsumerSpec`]; the runner does the rest the same way everywhere:
//! it pulls batches from a durable consumer, reads each event's id, tenant and time ([`Envelope`]),
//! records the id in the `inbox` table in the same transaction as the handler's effect, commits, then
//! acks. A redelivered event finds its id in the inbox and changes nothing. A message that cannot be
//! used goes to `deadletter.<stream>` with the reason in a header and is acked, so it never blocks the
//! stream: that includes an event whose subject's tenant breaks the tenant rules of
//! [`followup_proto::subjects::validate_tenant`] (no API could ever reach what it would create). A
//! transient failure (deadlock, a handler's `Transient`) is nak'ed with a growing delay, up to
//! `consumer.max_deliveries` deliveries; then it too is dead-lettered, with the last reason, so no error
//! is retried without bound. A database that cannot be reached at all (the transaction does not even
//! begin or commit) is not the event's fault: such deliveries are retried with the same backoff for as
//! long as the outage lasts and never dead-letter the event.
//!
//! Batches make one transaction for many events. When a handler fails inside a batch, the batch is
//! rolled back and replayed one savepoint per event, so one bad event costs its neighbours nothing.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::PublishMessage;
use futures::{FutureExt, StreamExt};
use sqlx::{Acquire, PgConnection, PgPool};
use tracing::Instrument;

use crate::config::ConsumerConfig;
use crate::event::{Envelope, Malformed};
use crate::jetstream::{ConsumerSpec, deadletter_subject, ensure_consumer};
use crate::metrics::{ConsumerLabels, Metrics, OutcomeLabels};
use crate::outbox::OutboxError;
use crate::shutdown::Shutdown;
use crate::telemetry::{NatsHeadersRef, add_link_from, set_parent_from};

/// Header of a dead-lettered message: why it was refused.
pub const DEADLETTER_REASON: &str = "Followup-Deadletter-Reason";
pub const DEADLETTER_SUBJECT: &str = "Followup-Original-Subject";
pub const DEADLETTER_CONSUMER: &str = "Followup-Consumer";

/// What a handler may answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never be applied (undecodable, invalid content): dead-letter it with this reason.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// Try again later (database unavailable, deadlock); the event is redelivered after a delay.
    #[error("transient failure: {0}")]
    Transient(String),
}

impl From<Malformed> for HandlerError {
    fn from(value: Malformed) -> Self {
        Self::Invalid(value.0)
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            // Data exceptions and constraint violations come from the event's content: retrying changes
            // nothing. Everything else (connection, deadlock, a bug in our SQL) is retried.
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|code| code.starts_with("22") || code.starts_with("23")) =>
            {
                Self::Invalid(format!("rejected by the database: {}", db.message()))
            }
            _ => Self::Transient(err.to_string()),
        }
    }
}

impl From<OutboxError> for HandlerError {
    fn from(err: OutboxError) -> Self {
        match err {
            OutboxError::Db(db) => db.into(),
            OutboxError::Event(event) => Self::Invalid(event.to_string()),
        }
    }
}

/// A service's reaction to one event, inside the runner's transaction. Use `conn` for every write
/// (including [`crate::outbox::enqueue`]) so the effect, its events and the inbox record commit together.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        conn: &mut PgConnection,
        event: &Envelope,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// A key the event's work must not run concurrently with, such as its patient. Before applying a
    /// batch the runner locks every key of it in one sorted order ([`crate::db::lock_keys`]), so batches
    /// of concurrent workers and consumers that share keys queue instead of deadlocking (a handler that
    /// locks per event, in delivery order, inside a batch transaction deadlocks under load). A handler
    /// taking the same lock again (`pg_advisory_xact_lock(hashtextextended(key, 0))`) holds it already.
    fn lock_key(&self, _event: &Envelope) -> Option<String> {
        None
    }

    /// Whether the runner hands a whole batch to [`Handler::handle_batch`] (true) or each event to
    /// [`Handler::handle`] in its own span (false, the default).
    const BATCHED: bool = false;

    /// The fresh events of one batch (duplicates already dropped), in delivery order, in one transaction;
    /// called only when [`Handler::BATCHED`] is true. A high-rate consumer overrides it to write a whole
    /// batch in a few statements. On any error the runner rolls the batch back and replays it event by
    /// event through [`Handler::handle`], so each event still gets its own outcome.
    fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&Envelope],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for event in events {
                self.handle(conn, event).await?;
            }
            Ok(())
        }
    }
}

enum Outcome {
    Applied,
    Duplicate,
    Invalid(String),
    Transient(String),
    /// The database could not be reached (no transaction): retried, never counted against the event.
    Unavailable(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "processed",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid(_) => "dead_lettered",
            Outcome::Transient(_) | Outcome::Unavailable(_) => "retried",
        }
    }
}

/// One durable consumer and the handler it feeds.
pub struct Consumer<H: Handler> {
    pub spec: ConsumerSpec,
    pub handler: Arc<H>,
    pub pool: PgPool,
    pub js: async_nats::jetstream::Context,
    pub metrics: Arc<Metrics>,
    pub config: ConsumerConfig,
}

impl<H: Handler> Clone for Consumer<H> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            handler: self.handler.clone(),
            pool: self.pool.clone(),
            js: self.js.clone(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
        }
    }
}

impl<H: Handler> Consumer<H> {
    /// Declares the durable consumer, then runs `concurrency` workers until shutdown. Each worker finishes
    /// the batch it holds before it stops.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), crate::jetstream::JetStreamError> {
        let consumer = ensure_consumer(&self.js, &self.spec).await?;
        let workers = self.config.concurrency.max(1);
        let mut tasks = Vec::with_capacity(workers);
        for worker in 0..workers {
            let this = self.clone();
            let consumer = consumer.clone();
            let shutdown = shutdown.clone();
            tasks.push(
                shutdown
                    .clone()
                    .spawn(async move { this.work(worker, consumer, shutdown).await }),
            );
        }
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    }

    async fn work(
        &self,
        worker: usize,
        consumer: async_nats::jetstream::consumer::PullConsumer,
        shutdown: Shutdown,
    ) {
        let batch_size = self.config.batch_size.max(1);
        'subscribe: while !shutdown.is_triggered() {
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(batch_size)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(consumer = %self.spec.durable, worker, error = %err, "pull failed; retrying");
                    tokio::select! {
                        () = shutdown.triggered() => break 'subscribe,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue 'subscribe,
                    }
                }
            };
            loop {
                let first = tokio::select! {
                    () = shutdown.triggered() => break 'subscribe,
                    next = messages.next() => next,
                };
                let first = match first {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        // Missed heartbeats and reconnects surface here; the pull stream recovers by itself.
                        tracing::debug!(consumer = %self.spec.durable, error = %err, "pull stream error");
                        continue;
                    }
                    None => continue 'subscribe,
                };
                let mut batch = vec![first];
                while batch.len() < batch_size {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(message))) => batch.push(message),
                        _ => break,
                    }
                }
                self.process(batch).await;
            }
        }
    }

    async fn process(&self, batch: Vec<async_nats::jetstream::Message>) {
        let mut envelopes = Vec::with_capacity(batch.len());
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
        let mut pending = 0;
        for message in &batch {
            let (sequence, delivered, remaining) = message
                .info()
                .map(|info| (info.stream_sequence, info.delivered, info.pending))
                .unwrap_or((0, 1, 0));
            pending = remaining;
            match Envelope::parse(
                self.spec.stream,
                message.subject.as_str(),
                message.payload.clone(),
                message.headers.clone(),
                sequence,
                delivered,
            ) {
                Ok(envelope) => {
                    match followup_proto::subjects::validate_tenant(&envelope.tenant_id) {
                        Ok(()) => {
                            envelopes.push(Some(envelope));
                            outcomes.push(None);
                        }
                        // Whatever it would create would live under a tenant no API can name.
                        Err(_) => {
                            outcomes.push(Some(Outcome::Invalid(format!(
                            "tenant `{}` breaks the tenant rules (1 to {} ASCII letters, digits, `-` or `_`)",
                            envelope.tenant_id.chars().take(80).collect::<String>(),
                            followup_proto::subjects::MAX_TENANT_LEN
                        ))));
                            envelopes.push(None);
                        }
                    }
                }
                Err(Malformed(reason)) => {
                    envelopes.push(None);
                    outcomes.push(Some(Outcome::Invalid(reason)));
                }
            }
        }
        self.metrics
            .consumer_pending
            .get_or_create(&ConsumerLabels {
                consumer: self.spec.durable.clone(),
            })
            .set(pending as i64);

        let applied = match self.apply_batch(&envelopes).await {
            Ok(applied) => applied,
            Err(_) => self.apply_one_by_one(&envelopes).await,
        };
        for (slot, outcome) in outcomes.iter_mut().zip(applied) {
            if slot.is_none() {
                *slot = outcome;
            }
        }

        for ((message, envelope), outcome) in batch.iter().zip(&envelopes).zip(outcomes) {
            let outcome = match outcome.unwrap_or(Outcome::Transient("not processed".into())) {
                // The last delivery allowed: what keeps failing goes where a person can see why.
                Outcome::Transient(reason)
                    if envelope.as_ref().map_or(1, |e| e.delivered)
                        >= self.config.max_deliveries =>
                {
                    Outcome::Invalid(format!(
                        "gave up after {} deliveries: {reason}",
                        self.config.max_deliveries
                    ))
                }
                other => other,
            };
            self.metrics
                .consumer_events
                .get_or_create(&OutcomeLabels {
                    consumer: self.spec.durable.clone(),
                    outcome: outcome.label(),
                })
                .inc();
            let acked = match &outcome {
                Outcome::Applied | Outcome::Duplicate => message.ack().await,
                Outcome::Invalid(reason) => match self.dead_letter(message, reason).await {
                    Ok(()) => {
                        tracing::warn!(
                            consumer = %self.spec.durable,
                            subject = %message.subject,
                            event_id = envelope.as_ref().map(|e| e.event_id.as_str()).unwrap_or(""),
                            "event dead-lettered"
                        );
                        message.ack().await
                    }
                    Err(err) => {
                        tracing::warn!(consumer = %self.spec.durable, error = %err, "dead-letter publish failed");
                        message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await
                    }
                },
                Outcome::Transient(reason) | Outcome::Unavailable(reason) => {
                    let delivered = envelope.as_ref().map(|e| e.delivered).unwrap_or(1);
                    let delay = retry_delay(delivered);
                    tracing::warn!(
                        consumer = %self.spec.durable,
                        subject = %message.subject,
                        delivered,
                        error = %reason,
                        "event will be retried"
                    );
                    message.ack_with(AckKind::Nak(Some(delay))).await
                }
            };
            if let Err(err) = acked {
                // Unacknowledged, it comes back after ack_wait and the inbox drops it.
                tracing::debug!(consumer = %self.spec.durable, error = %err, "ack failed");
            }
        }
    }

    /// The fast path: one transaction, one inbox insert for the batch. Any handler failure → Err, and the
    /// caller replays the batch one event at a time.
    async fn apply_batch(
        &self,
        envelopes: &[Option<Envelope>],
    ) -> Result<Vec<Option<Outcome>>, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let usable: Vec<&Envelope> = envelopes.iter().flatten().collect();
        let fresh: HashSet<(String, String)> = if usable.is_empty() {
            HashSet::new()
        } else {
            let tenants: Vec<&str> = usable.iter().map(|e| e.tenant_id.as_str()).collect();
            let ids: Vec<&str> = usable.iter().map(|e| e.event_id.as_str()).collect();
            let subjects: Vec<&str> = usable.iter().map(|e| e.subject.as_str()).collect();
            sqlx::query_as::<sqlx::Postgres, (String, String)>(
                "INSERT INTO inbox (consumer, tenant_id, event_id, subject)
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[])
                 ON CONFLICT DO NOTHING
                 RETURNING tenant_id, event_id",
            )
            .bind(&self.spec.durable)
            .bind(&tenants)
            .bind(&ids)
            .bind(&subjects)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };
        let keys = self.lock_keys(
            usable
                .iter()
                .copied()
                .filter(|e| fresh.contains(&(e.tenant_id.clone(), e.event_id.clone()))),
        );
        crate::db::lock_keys(&mut tx, &keys).await?;
        let mut seen = HashSet::new();
        let mut outcomes = Vec::with_capacity(envelopes.len());
        let mut apply = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let Some(envelope) = envelope else {
                outcomes.push(None);
                continue;
            };
            let key = (envelope.tenant_id.clone(), envelope.event_id.clone());
            // Only the first copy of a fresh id in this batch is applied.
            if !fresh.contains(&key) || !seen.insert(key) {
                outcomes.push(Some(Outcome::Duplicate));
                continue;
            }
            if H::BATCHED {
                apply.push(envelope);
            } else {
                self.handle(&mut tx, envelope).await?;
            }
            outcomes.push(Some(Outcome::Applied));
        }
        if !apply.is_empty() {
            let span = tracing::info_span!(
                "consume_batch",
                consumer = %self.spec.durable,
                events = apply.len(),
            );
            // A batch of one continues its event's trace, as the unbatched path does; a larger batch
            // serves several traces, so it links to each instead of picking a parent.
            if let [only] = apply.as_slice() {
                if let Some(headers) = &only.headers {
                    set_parent_from(&span, &NatsHeadersRef(headers));
                }
            } else {
                for envelope in &apply {
                    if let Some(headers) = &envelope.headers {
                        add_link_from(&span, &NatsHeadersRef(headers));
                    }
                }
            }
            self.handler
                .handle_batch(&mut tx, &apply)
                .instrument(span)
                .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The careful path: a savepoint per event, so each event's outcome is its own.
    async fn apply_one_by_one(&self, envelopes: &[Option<Envelope>]) -> Vec<Option<Outcome>> {
        // No transaction at all: the database is unreachable, which is no event's fault.
        let transient = |reason: String| {
            envelopes
                .iter()
                .map(|_| Some(Outcome::Unavailable(reason.clone())))
                .collect()
        };
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(err) => return transient(err.to_string()),
        };
        let keys = self.lock_keys(envelopes.iter().flatten());
        if let Err(err) = crate::db::lock_keys(&mut tx, &keys).await {
            return transient(err.to_string());
        }
        let mut outcomes = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let Some(envelope) = envelope else {
                outcomes.push(None);
                continue;
            };
            outcomes.push(Some(
                match self.apply_in_savepoint(&mut tx, envelope).await {
                    Ok(outcome) => outcome,
                    Err(HandlerError::Invalid(reason)) => Outcome::Invalid(reason),
                    Err(HandlerError::Transient(reason)) => Outcome::Transient(reason),
                },
            ));
        }
        match tx.commit().await {
            Ok(()) => outcomes,
            Err(err) => transient(err.to_string()),
        }
    }

    /// The handler's lock keys of these events.
    fn lock_keys<'a>(&self, envelopes: impl Iterator<Item = &'a Envelope>) -> Vec<String> {
        envelopes.filter_map(|e| self.handler.lock_key(e)).collect()
    }

    async fn apply_in_savepoint(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<Outcome, HandlerError> {
        let mut savepoint = conn.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO inbox (consumer, tenant_id, event_id, subject) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.spec.durable)
        .bind(&envelope.tenant_id)
        .bind(&envelope.event_id)
        .bind(&envelope.subject)
        .execute(&mut *savepoint)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(Outcome::Duplicate);
        }
        // Dropping the savepoint on error rolls back this event's effect only.
        self.handle(&mut savepoint, envelope).await?;
        savepoint.commit().await?;
        Ok(Outcome::Applied)
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let span = tracing::info_span!(
            "consume",
            consumer = %self.spec.durable,
            subject = %envelope.subject,
            event_id = %envelope.event_id,
            tenant = %envelope.tenant_id,
        );
        if let Some(headers) = &envelope.headers {
            set_parent_from(&span, &NatsHeadersRef(headers));
        }
        self.handler.handle(conn, envelope).instrument(span).await
    }

    async fn dead_letter(
        &self,
        message: &async_nats::jetstream::Message,
        reason: &str,
    ) -> Result<(), String> {
        let (stream, sequence) = message
            .info()
            .map(|info| (info.stream.to_string(), info.stream_sequence))
            .unwrap_or_else(|_| (self.spec.stream.to_string(), 0));
        let mut headers = message.headers.clone().unwrap_or_default();
        // Header values are one line; reasons from decoders may hold newlines.
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1000)
            .collect();
        headers.insert(DEADLETTER_REASON, reason.as_str());
        headers.insert(DEADLETTER_SUBJECT, message.subject.as_str());
        headers.insert(DEADLETTER_CONSUMER, self.spec.durable.as_str());
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers)
            .message_id(format!("{stream}-{sequence}-{}", self.spec.durable));
        let ack = self
            .js
            .send_publish(deadletter_subject(&stream), publish)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// 1 s, 2 s, 4 s … capped at a minute: a database outage is retried steadily without a storm.
fn retry_delay(delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.clamp(1, 7) - 1).unwrap_or(0);
    Duration::from_secs(2u64.pow(exponent)).min(Duration::from_secs(60))
}

/// Deletes inbox records older than the retention.
pub async fn prune_inbox(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM inbox WHERE processed_at < now() - make_interval(secs => $1)")
            .bind(retention.as_secs_f64())
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_cap() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(
            retry_delay(7),
            Duration::from_secs(60).min(Duration::from_secs(64))
        );
        assert_eq!(retry_delay(100), Duration::from_secs(60));
    }
}
