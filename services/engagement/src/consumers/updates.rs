//! engagement_updated, throttled: at most once per plan per interval, always carrying the latest facts.
//!
//! The aggregator only marks a plan's facts as changed; this worker publishes them (through the outbox) for
//! plans whose last publication is older than the interval. The first change of a plan goes out at the
//! next poll; later ones wait for the interval, so the last change is never lost, only delayed.

use std::collections::HashMap;
use std::time::Duration;

use followup_platform::event::{OutgoingEvent, new_event_id, now_timestamp, timestamp};
use followup_platform::outbox;
use followup_platform::shutdown::Shutdown;
use followup_proto::followup::common::v1::SectionTime;
use followup_proto::followup::events::v1::{
    EngagementFacts, EngagementUpdated, ViewSessionSummary,
};
use followup_proto::subjects::Event as _;
use sqlx::PgPool;

use crate::INFO;
use crate::domain::{Section, SectionMs};
use crate::storage::{self, PlanFacts, SessionRow};

/// Plans published per transaction.
const BATCH: i64 = 200;

pub struct UpdatePublisher {
    pub pool: PgPool,
    pub interval: Duration,
    pub idle: Duration,
    pub poll: Duration,
}

pub fn duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Sections with visible time, in the contract's order.
pub fn section_times(ms: &SectionMs) -> Vec<SectionTime> {
    Section::ALL
        .into_iter()
        .filter(|s| ms[s.index()] > 0)
        .map(|s| SectionTime {
            section: s.number(),
            view_time: Some(duration(ms[s.index()])),
        })
        .collect()
}

pub fn facts_message(facts: &PlanFacts) -> EngagementFacts {
    EngagementFacts {
        first_view_time: Some(timestamp(facts.first_view_at)),
        last_view_time: Some(timestamp(facts.last_view_at)),
        view_count: facts.view_count,
        total_view_time: Some(duration(facts.total_view_ms)),
        section_times: section_times(&facts.section_ms()),
        last_section: facts.last_section().map(Section::number).unwrap_or(0),
    }
}

fn summary(session: &SessionRow) -> ViewSessionSummary {
    ViewSessionSummary {
        session_id: session.session_id.clone(),
        start_time: Some(timestamp(session.start_at)),
        end_time: Some(timestamp(session.end_at)),
        view_time: Some(duration(session.view_ms)),
        section_times: section_times(&session.section_ms()),
    }
}

impl UpdatePublisher {
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            match self.publish_once().await {
                // A full batch: there may be more due right now.
                Ok(n) if n as i64 >= BATCH => continue,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "engagement_updated round failed; retrying")
                }
            }
            tokio::select! {
                () = shutdown.triggered() => return,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// One round: claims due plans, writes their engagement_updated to the outbox, marks them published.
    pub async fn publish_once(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let due = storage::claim_due_plans(&mut tx, self.interval, self.idle, BATCH).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let keys: Vec<(String, uuid::Uuid)> = due
            .iter()
            .map(|(tenant, facts)| (tenant.clone(), facts.plan_id))
            .collect();
        let mut ended: HashMap<(String, uuid::Uuid), Vec<SessionRow>> = HashMap::new();
        for (tenant, session) in storage::take_ended_sessions(&mut tx, &keys, self.idle).await? {
            ended
                .entry((tenant, session.plan_id))
                .or_default()
                .push(session);
        }
        let mut events = Vec::with_capacity(due.len());
        for (tenant_id, facts) in &due {
            let sessions = ended
                .remove(&(tenant_id.clone(), facts.plan_id))
                .unwrap_or_default();
            let event = EngagementUpdated {
                event_id: new_event_id().to_string(),
                tenant_id: tenant_id.clone(),
                occurred_at: Some(now_timestamp()),
                plan_id: facts.plan_id.to_string(),
                plan_version: facts.plan_version,
                patient_id: facts.patient_id.clone(),
                facts: Some(facts_message(facts)),
                ended_sessions: sessions.iter().map(summary).collect(),
            };
            let built = event
                .subject()
                .map_err(|e| e.to_string())
                .and_then(|subject| {
                    OutgoingEvent::new(INFO.name, subject, &event).map_err(|e| e.to_string())
                });
            match built {
                Ok(outgoing) => events.push(outgoing),
                // Tenant ids were checked at ingest; a row that cannot be published is logged, not retried.
                Err(err) => {
                    tracing::error!(plan_id = %facts.plan_id, error = %err, "cannot build engagement_updated")
                }
            }
        }
        storage::mark_published(&mut tx, &keys).await?;
        outbox::enqueue_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(due.len())
    }
}
