//! Ending enrollments: a stop condition, a staff cancel, a deleted rule or the last step run. Every
//! pending or held step of the enrollment is cancelled and the enrollment ends in the same transaction,
//! with `enrollment_stopped` through the outbox.
//!
//! Lock order, here and in the timer: step rows first, then the enrollment row. A step the timer has
//! claimed (locked) is waited for and then seen as fired: it fired before the stop.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use followup_proto::followup::common::v1::{CaseKind, StopReason};
use followup_proto::followup::events::v1 as ev;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Store;
use crate::convert::{case_ref, timestamp};
use crate::domain::rule::RuleDef;
use crate::error::Result;

/// Whose enrollments a stop event concerns.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Every active enrollment of the patient (a booking, a reply, an opt-out).
    Patient(&'a str),
    /// Every active enrollment of a case.
    Case(CaseKind, &'a str),
}

/// A stop condition that happened.
pub struct Cause<'a> {
    pub reason: StopReason,
    pub detail: String,
    pub event_id: &'a str,
    pub occurred_at: DateTime<Utc>,
    /// True for facts that happen at a moment (a booking, a reply): they stop only enrollments triggered
    /// before them. False for states (an opt-out, a closed case), which stop whatever is running.
    pub momentary: bool,
}

#[derive(sqlx::FromRow)]
struct Active {
    enrollment_id: Uuid,
    rule_id: Uuid,
    rule_version: i32,
    trigger_at: DateTime<Utc>,
}

/// Stops the active enrollments in `scope` whose rule stops on the cause and passes `also`.
pub async fn stop(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    scope: Scope<'_>,
    cause: &Cause<'_>,
    also: impl Fn(&RuleDef) -> bool,
) -> Result<usize> {
    let rows = match scope {
        Scope::Patient(patient) if !patient.is_empty() => {
            sqlx::query_as::<sqlx::Postgres, Active>(
                "SELECT enrollment_id, rule_id, rule_version, trigger_at FROM enrollments
                 WHERE tenant_id = $1 AND patient_id = $2 AND state = 'active'",
            )
            .bind(tenant)
            .bind(patient)
            .fetch_all(&mut *conn)
            .await?
        }
        Scope::Case(kind, id) if !id.is_empty() => {
            sqlx::query_as::<sqlx::Postgres, Active>(
                "SELECT enrollment_id, rule_id, rule_version, trigger_at FROM enrollments
                 WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3 AND state = 'active'",
            )
            .bind(tenant)
            .bind(kind as i16)
            .bind(id)
            .fetch_all(&mut *conn)
            .await?
        }
        _ => return Ok(0),
    };
    let mut chosen = Vec::new();
    for row in rows {
        if cause.momentary && cause.occurred_at < row.trigger_at {
            continue;
        }
        let def = store
            .rules
            .get(conn, tenant, row.rule_id, row.rule_version)
            .await?;
        if def.stops_on(cause.reason) && also(&def) {
            chosen.push(row.enrollment_id);
        }
    }
    let ended = end(
        conn,
        tenant,
        &chosen,
        End {
            state: "stopped",
            reason: cause.reason,
            detail: &cause.detail,
            cause_event_id: cause.event_id,
            by_staff: "",
            now: store.now(),
        },
    )
    .await?;
    if ended > 0 {
        tracing::debug!(
            tenant,
            ended,
            reason = cause.reason.as_str_name(),
            "enrollments stopped"
        );
    }
    Ok(ended)
}

/// How enrollments end.
pub struct End<'a> {
    /// `stopped` or `finished`.
    pub state: &'static str,
    pub reason: StopReason,
    pub detail: &'a str,
    pub cause_event_id: &'a str,
    pub by_staff: &'a str,
    pub now: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Ended {
    enrollment_id: Uuid,
    rule_id: Uuid,
    rule_version: i32,
    case_kind: i16,
    case_id: String,
    patient_id: String,
    fired: i64,
}

/// Ends the given enrollments that are still active: cancels their waiting steps, marks them, and writes
/// `enrollment_stopped` for each. Returns how many ended.
pub async fn end(
    conn: &mut PgConnection,
    tenant: &str,
    enrollment_ids: &[Uuid],
    how: End<'_>,
) -> Result<usize> {
    if enrollment_ids.is_empty() {
        return Ok(0);
    }
    let reason_text = format!(
        "cancelled: {}",
        how.reason
            .as_str_name()
            .trim_start_matches("STOP_REASON_")
            .to_lowercase()
    );
    let cancelled: Vec<(Uuid, i64)> = sqlx::query_as(
        "WITH cancelled AS (
             UPDATE step_runs SET state = 'cancelled', reason = $3
             WHERE tenant_id = $1 AND enrollment_id = ANY($2) AND state IN ('pending', 'held')
             RETURNING enrollment_id)
         SELECT enrollment_id, count(*) FROM cancelled GROUP BY enrollment_id",
    )
    .bind(tenant)
    .bind(enrollment_ids)
    .bind(&reason_text)
    .fetch_all(&mut *conn)
    .await?;
    let cancelled: HashMap<Uuid, i64> = cancelled.into_iter().collect();
    let ended = sqlx::query_as::<sqlx::Postgres, Ended>(
        "UPDATE enrollments e SET state = $3, ended_at = $4, stop_reason = $5, stop_detail = $6,
             stopped_by = $7, stop_event_id = $8
         WHERE tenant_id = $1 AND enrollment_id = ANY($2) AND state = 'active'
         RETURNING enrollment_id, rule_id, rule_version, case_kind, case_id, patient_id,
             (SELECT count(*) FROM step_runs s WHERE s.tenant_id = e.tenant_id
                  AND s.enrollment_id = e.enrollment_id AND s.state = 'fired') AS fired",
    )
    .bind(tenant)
    .bind(enrollment_ids)
    .bind(how.state)
    .bind(how.now)
    .bind(how.reason as i16)
    .bind(how.detail)
    .bind(how.by_staff)
    .bind(how.cause_event_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut events = Vec::with_capacity(ended.len());
    for row in &ended {
        let kind = CaseKind::try_from(i32::from(row.case_kind)).unwrap_or(CaseKind::Unspecified);
        let event = ev::EnrollmentStopped {
            event_id: super::new_id().to_string(),
            tenant_id: tenant.to_string(),
            occurred_at: Some(timestamp(how.now)),
            enrollment_id: row.enrollment_id.to_string(),
            rule_id: row.rule_id.to_string(),
            rule_version: row.rule_version,
            case_ref: case_ref(kind, &row.case_id),
            patient_id: row.patient_id.clone(),
            reason: how.reason as i32,
            detail: how.detail.to_string(),
            cause_event_id: how.cause_event_id.to_string(),
            stopped_by_staff_id: how.by_staff.to_string(),
            steps_fired: i32::try_from(row.fired).unwrap_or(i32::MAX),
            steps_cancelled: cancelled
                .get(&row.enrollment_id)
                .map(|n| i32::try_from(*n).unwrap_or(i32::MAX))
                .unwrap_or(0),
        };
        events.push(
            followup_platform::event::OutgoingEvent::new(
                crate::INFO.name,
                followup_proto::subjects::Event::subject(&event)
                    .map_err(|e| crate::error::Error::Corrupt(format!("tenant id: {e}")))?,
                &event,
            )
            .map_err(followup_platform::outbox::OutboxError::from)?,
        );
    }
    followup_platform::outbox::enqueue_events(conn, &events).await?;
    Ok(ended.len())
}
