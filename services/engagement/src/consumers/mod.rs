//! The aggregator: folds the BEACONS stream into view sessions and plan facts, a batch at a time, and
//! announces each plan's first view (plan_viewed) through the outbox.
//!
//! Idempotent twice over: the platform's inbox drops a redelivered batch, and each event's key
//! (plan, page view, client event id) is recorded, so an event sent again in another request adds
//! nothing either.

use std::collections::{BTreeMap, HashSet};

use followup_platform::consumer::{Handler, HandlerError};
use followup_platform::event::{Envelope, OutgoingEvent, from_timestamp, new_event_id, timestamp};
use followup_platform::outbox;
use followup_proto::followup::events::v1::{BeaconBatch, PlanViewed};
use followup_proto::subjects::Event as _;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::INFO;
use crate::domain::{Event, Kind, Section, SessionDelta};
use crate::storage::{self, EventKey, PlanUpsert, SessionUpsert};

pub mod updates;

/// When and in which page view a plan was first seen in a batch.
type FirstSession = (chrono::DateTime<chrono::Utc>, String);

/// The durable consumer's name.
pub const DURABLE: &str = "engagement-beacons";

pub struct BeaconFolder {
    /// The gap cap: one event counts for at most this many milliseconds.
    pub cap_ms: i64,
    /// Beacon accepted (ingest's occurred_at) → folded, seconds.
    pub lag: Histogram,
}

/// One decoded batch, checked.
struct Decoded {
    tenant_id: String,
    plan_id: Uuid,
    plan_version: i32,
    patient_id: String,
    session_id: String,
    received_at: chrono::DateTime<chrono::Utc>,
    events: Vec<Event>,
}

fn decode(envelope: &Envelope) -> Result<Decoded, HandlerError> {
    let batch: BeaconBatch = envelope.decode()?;
    let plan_id = Uuid::parse_str(&batch.plan_id)
        .map_err(|_| HandlerError::Invalid(format!("plan_id `{}` is not a UUID", batch.plan_id)))?;
    if batch.session_id.is_empty() {
        return Err(HandlerError::Invalid("session_id is empty".into()));
    }
    let events = batch
        .events
        .iter()
        .filter(|e| !e.client_event_id.is_empty())
        .map(|e| {
            let kind = Kind::from_number(e.kind).ok_or_else(|| {
                HandlerError::Invalid(format!(
                    "event {}: unknown kind {}",
                    e.client_event_id, e.kind
                ))
            })?;
            Ok(Event {
                id: e.client_event_id.clone(),
                kind,
                section: Section::from_number(e.section),
                visible_ms: e.visible_ms,
                client_time: e.client_time.as_ref().and_then(from_timestamp),
            })
        })
        .collect::<Result<Vec<_>, HandlerError>>()?;
    Ok(Decoded {
        tenant_id: envelope.tenant_id.clone(),
        plan_id,
        plan_version: batch.plan_version,
        patient_id: batch.patient_id,
        session_id: batch.session_id,
        received_at: envelope.occurred_at,
        events,
    })
}

impl BeaconFolder {
    async fn fold(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let batches = envelopes
            .iter()
            .map(|e| decode(e))
            .collect::<Result<Vec<_>, _>>()?;

        let keys: Vec<EventKey> = batches
            .iter()
            .flat_map(|b| {
                b.events.iter().map(|e| EventKey {
                    tenant_id: b.tenant_id.clone(),
                    plan_id: b.plan_id,
                    session_id: b.session_id.clone(),
                    client_event_id: e.id.clone(),
                })
            })
            .collect();
        let mut fresh = storage::insert_event_keys(conn, &keys).await?;

        let mut sessions: BTreeMap<(String, Uuid, String), SessionUpsert> = BTreeMap::new();
        for batch in &batches {
            for event in &batch.events {
                let key = EventKey {
                    tenant_id: batch.tenant_id.clone(),
                    plan_id: batch.plan_id,
                    session_id: batch.session_id.clone(),
                    client_event_id: event.id.clone(),
                };
                // Removing it counts an id repeated within this very batch once.
                if !fresh.remove(&key) {
                    continue;
                }
                let session = sessions
                    .entry((
                        batch.tenant_id.clone(),
                        batch.plan_id,
                        batch.session_id.clone(),
                    ))
                    .or_insert_with(|| SessionUpsert {
                        tenant_id: batch.tenant_id.clone(),
                        plan_id: batch.plan_id,
                        session_id: batch.session_id.clone(),
                        plan_version: batch.plan_version,
                        patient_id: batch.patient_id.clone(),
                        delta: SessionDelta::new(batch.received_at),
                    });
                session.plan_version = session.plan_version.max(batch.plan_version);
                session.delta.add(event, batch.received_at, self.cap_ms);
            }
        }
        let now = chrono::Utc::now();
        for batch in &batches {
            let lag = now.signed_duration_since(batch.received_at);
            self.lag
                .observe(lag.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
        if sessions.is_empty() {
            return Ok(());
        }
        let session_rows: Vec<SessionUpsert> = sessions.into_values().collect();
        let created: HashSet<(String, Uuid, String)> =
            storage::upsert_sessions(conn, &session_rows).await?;

        let mut plans: BTreeMap<(String, Uuid), (PlanUpsert, FirstSession)> = BTreeMap::new();
        for row in &session_rows {
            let is_new =
                created.contains(&(row.tenant_id.clone(), row.plan_id, row.session_id.clone()));
            let first = (row.delta.first_seen, row.session_id.clone());
            let entry = plans
                .entry((row.tenant_id.clone(), row.plan_id))
                .or_insert_with(|| {
                    (
                        PlanUpsert {
                            tenant_id: row.tenant_id.clone(),
                            plan_id: row.plan_id,
                            plan_version: row.plan_version,
                            patient_id: row.patient_id.clone(),
                            new_sessions: 0,
                            delta: SessionDelta::new(row.delta.first_seen),
                        },
                        first.clone(),
                    )
                });
            entry.0.plan_version = entry.0.plan_version.max(row.plan_version);
            entry.0.new_sessions += i32::from(is_new);
            entry.0.delta.merge(&row.delta);
            entry.1 = entry.1.clone().min(first);
        }
        let plan_rows: Vec<PlanUpsert> = plans.values().map(|(p, _)| p.clone()).collect();
        let first_views = storage::upsert_plans(conn, &plan_rows).await?;

        let mut viewed = Vec::with_capacity(first_views.len());
        for first in first_views {
            let Some((plan, (first_at, session_id))) =
                plans.get(&(first.tenant_id.clone(), first.plan_id))
            else {
                continue;
            };
            let event = PlanViewed {
                event_id: new_event_id().to_string(),
                tenant_id: first.tenant_id.clone(),
                occurred_at: Some(timestamp(*first_at)),
                plan_id: first.plan_id.to_string(),
                plan_version: plan.plan_version,
                patient_id: plan.patient_id.clone(),
                session_id: session_id.clone(),
            };
            let subject = event
                .subject()
                .map_err(|e| HandlerError::Invalid(e.to_string()))?;
            viewed.push(
                OutgoingEvent::new(INFO.name, subject, &event)
                    .map_err(|e| HandlerError::Invalid(e.to_string()))?,
            );
        }
        if !viewed.is_empty() {
            tracing::info!(plans = viewed.len(), "plans viewed for the first time");
            outbox::enqueue_events(conn, &viewed).await?;
        }
        Ok(())
    }
}

impl Handler for BeaconFolder {
    const BATCHED: bool = true;

    async fn handle(&self, conn: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        self.fold(conn, &[event]).await
    }

    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        self.fold(conn, events).await
    }
}
