//! Enrollments as people see them: lists, one enrollment's timeline, a staff cancel.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use followup_proto::followup::common::v1::{CaseKind, StopReason};
use followup_proto::followup::scheduler::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Store;
use super::stop::{End, end};
use crate::convert::{case_ref, timestamp};
use crate::domain::schedule::local_display;
use crate::error::{Error, Result};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EnrollmentRow {
    pub enrollment_id: Uuid,
    pub rule_id: Uuid,
    pub rule_version: i32,
    pub rule_name: String,
    pub rule_state: String,
    pub case_kind: i16,
    pub case_id: String,
    pub patient_id: String,
    pub state: String,
    pub trigger: String,
    pub trigger_event_id: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub stop_reason: Option<i16>,
    pub stop_detail: String,
    pub stopped_by: String,
    pub stop_event_id: String,
    pub time_zone: String,
    pub next_step_at: Option<DateTime<Utc>>,
}

const SELECT: &str = "SELECT e.enrollment_id, e.rule_id, e.rule_version, r.name AS rule_name, r.state AS rule_state,
        e.case_kind, e.case_id, e.patient_id, e.state, e.trigger, e.trigger_event_id, e.started_at, e.ended_at,
        e.stop_reason, e.stop_detail, e.stopped_by, e.stop_event_id, e.time_zone,
        (SELECT min(s.due_at) FROM step_runs s WHERE s.tenant_id = e.tenant_id AND s.enrollment_id = e.enrollment_id
             AND s.state IN ('pending', 'held')) AS next_step_at
    FROM enrollments e JOIN rules r ON r.tenant_id = e.tenant_id AND r.rule_id = e.rule_id";

impl EnrollmentRow {
    pub fn state(&self) -> pb::EnrollmentState {
        match self.state.as_str() {
            "active" if self.rule_state == "paused" => pb::EnrollmentState::Held,
            "active" => pb::EnrollmentState::Active,
            "finished" => pb::EnrollmentState::Finished,
            "stopped" => pb::EnrollmentState::Stopped,
            _ => pb::EnrollmentState::Unspecified,
        }
    }

    pub fn to_proto(&self) -> pb::Enrollment {
        let kind = CaseKind::try_from(i32::from(self.case_kind)).unwrap_or(CaseKind::Unspecified);
        pb::Enrollment {
            enrollment_id: self.enrollment_id.to_string(),
            rule_id: self.rule_id.to_string(),
            rule_version: self.rule_version,
            rule_name: self.rule_name.clone(),
            case_ref: case_ref(kind, &self.case_id),
            patient_id: self.patient_id.clone(),
            state: self.state() as i32,
            trigger: self.trigger.clone(),
            trigger_event_id: self.trigger_event_id.clone(),
            start_time: Some(timestamp(self.started_at)),
            end_time: self.ended_at.map(timestamp),
            stop_reason: self.stop_reason.map(i32::from).unwrap_or(0),
            stop_detail: self.stop_detail.clone(),
            next_step_time: self.next_step_at.map(timestamp),
            time_zone: self.time_zone.clone(),
        }
    }
}

/// Filters of ListEnrollments.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub case: Option<(CaseKind, String)>,
    pub patient_id: String,
    pub rule_id: Option<Uuid>,
    pub states: Vec<pb::EnrollmentState>,
}

/// Newest first, before `before` (the last id of the previous page).
pub async fn list(
    conn: &mut PgConnection,
    tenant: &str,
    filter: &Filter,
    limit: i64,
    before: Option<Uuid>,
) -> Result<Vec<EnrollmentRow>> {
    let (case_kind, case_id) = filter
        .case
        .as_ref()
        .map(|(k, id)| (*k as i16, id.clone()))
        .unwrap_or((0, String::new()));
    let states: Vec<String> = filter
        .states
        .iter()
        .map(|s| {
            match s {
                pb::EnrollmentState::Active => "active",
                pb::EnrollmentState::Held => "held",
                pb::EnrollmentState::Finished => "finished",
                pb::EnrollmentState::Stopped => "stopped",
                pb::EnrollmentState::Unspecified => "",
            }
            .to_string()
        })
        .collect();
    let sql = format!(
        "{SELECT}
         WHERE e.tenant_id = $1
           AND ($2 = 0 OR (e.case_kind = $2 AND e.case_id = $3))
           AND ($4 = '' OR e.patient_id = $4)
           AND ($5::uuid IS NULL OR e.rule_id = $5)
           AND (cardinality($6::text[]) = 0
                OR (CASE WHEN e.state = 'active' AND r.state = 'paused' THEN 'held' ELSE e.state END) = ANY($6))
           AND ($7::uuid IS NULL OR e.enrollment_id < $7)
         ORDER BY e.enrollment_id DESC
         LIMIT $8"
    );
    Ok(
        sqlx::query_as::<sqlx::Postgres, EnrollmentRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(case_kind)
            .bind(case_id)
            .bind(&filter.patient_id)
            .bind(filter.rule_id)
            .bind(&states)
            .bind(before)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn get(
    conn: &mut PgConnection,
    tenant: &str,
    enrollment_id: Uuid,
) -> Result<EnrollmentRow> {
    let sql = format!("{SELECT} WHERE e.tenant_id = $1 AND e.enrollment_id = $2");
    sqlx::query_as::<sqlx::Postgres, EnrollmentRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(enrollment_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::not_found("enrollment", enrollment_id.to_string()))
}

#[derive(sqlx::FromRow)]
struct StepRow {
    step_index: i32,
    due_at: DateTime<Utc>,
    state: String,
    fired_at: Option<DateTime<Utc>>,
    reason: String,
    outcome: String,
    outcome_at: Option<DateTime<Utc>>,
}

/// Every step of the rule version with what happened to it, and the history, oldest first.
pub async fn timeline(
    conn: &mut PgConnection,
    tenant: &str,
    enrollment: &EnrollmentRow,
) -> Result<(Vec<pb::StepRun>, Vec<pb::EnrollmentHistoryEntry>)> {
    let (rule, _) =
        super::load_version(conn, tenant, enrollment.rule_id, enrollment.rule_version).await?;
    let runs = sqlx::query_as::<sqlx::Postgres, StepRow>(
        "SELECT step_index, due_at, state, fired_at, reason, outcome, outcome_at FROM step_runs
         WHERE tenant_id = $1 AND enrollment_id = $2 ORDER BY step_index",
    )
    .bind(tenant)
    .bind(enrollment.enrollment_id)
    .fetch_all(&mut *conn)
    .await?;
    let tz: Tz = enrollment.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let now_paused = enrollment.rule_state == "paused";
    let mut steps = Vec::with_capacity(rule.steps.len());
    let mut history = vec![pb::EnrollmentHistoryEntry {
        time: Some(timestamp(enrollment.started_at)),
        summary: format!("started by {}", enrollment.trigger),
        event_id: enrollment.trigger_event_id.clone(),
    }];
    for (index, step) in rule.steps.iter().enumerate() {
        let run = runs.iter().find(|r| r.step_index as usize == index);
        let Some(run) = run else {
            // A wait: done once the step after it has left pending.
            let next = runs.iter().find(|r| r.step_index as usize > index);
            let state = match next.map(|r| r.state.as_str()) {
                Some("pending") | Some("held") | None => pb::StepRunState::Pending,
                Some("cancelled") => pb::StepRunState::Cancelled,
                Some(_) => pb::StepRunState::Fired,
            };
            steps.push(pb::StepRun {
                step_index: index as i32,
                step: Some(step.clone()),
                state: state as i32,
                ..Default::default()
            });
            continue;
        };
        let state = match run.state.as_str() {
            "pending" if now_paused => pb::StepRunState::Held,
            "pending" => pb::StepRunState::Pending,
            "held" => pb::StepRunState::Held,
            "fired" => pb::StepRunState::Fired,
            "skipped" => pb::StepRunState::Skipped,
            "cancelled" => pb::StepRunState::Cancelled,
            _ => pb::StepRunState::Unspecified,
        };
        let key = format!("{}:{index}", enrollment.enrollment_id);
        match (run.state.as_str(), run.fired_at) {
            ("fired", Some(at)) => history.push(pb::EnrollmentHistoryEntry {
                time: Some(timestamp(at)),
                summary: format!("step {index} fired"),
                event_id: String::new(),
            }),
            ("skipped", _) => history.push(pb::EnrollmentHistoryEntry {
                time: Some(timestamp(run.fired_at.unwrap_or(run.due_at))),
                summary: format!("step {index} skipped: {}", run.reason),
                event_id: String::new(),
            }),
            _ => {}
        }
        if let Some(at) = run.outcome_at {
            history.push(pb::EnrollmentHistoryEntry {
                time: Some(timestamp(at)),
                summary: format!("step {index}: {}", run.outcome),
                event_id: String::new(),
            });
        }
        steps.push(pb::StepRun {
            step_index: index as i32,
            step: Some(step.clone()),
            state: state as i32,
            due_time: Some(timestamp(run.due_at)),
            local_due_time: local_display(run.due_at, tz),
            fire_time: run.fired_at.filter(|_| run.state == "fired").map(timestamp),
            idempotency_key: if run.state == "fired" {
                key
            } else {
                String::new()
            },
            reason: run.reason.clone(),
            outcome: if run.state == "fired" && run.outcome.is_empty() {
                "requested".into()
            } else {
                run.outcome.clone()
            },
        });
    }
    if let Some(ended) = enrollment.ended_at {
        let reason = enrollment
            .stop_reason
            .and_then(|r| StopReason::try_from(i32::from(r)).ok())
            .unwrap_or(StopReason::Unspecified);
        let name = reason
            .as_str_name()
            .trim_start_matches("STOP_REASON_")
            .to_lowercase();
        let summary = if reason == StopReason::SequenceFinished {
            "finished: every step ran".to_string()
        } else if enrollment.stop_detail.is_empty() {
            format!("stopped: {name}")
        } else {
            format!("stopped: {name} ({})", enrollment.stop_detail)
        };
        history.push(pb::EnrollmentHistoryEntry {
            time: Some(timestamp(ended)),
            summary,
            event_id: enrollment.stop_event_id.clone(),
        });
    }
    history.sort_by_key(|h| h.time.map(|t| (t.seconds, t.nanos)));
    Ok((steps, history))
}

/// A staff member cancels an active enrollment.
pub async fn cancel(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    enrollment_id: Uuid,
    by: &str,
    reason: &str,
) -> Result<EnrollmentRow> {
    let current = get(conn, tenant, enrollment_id).await?;
    if current.state != "active" {
        return Err(Error::precondition(
            "ENROLLMENT_ENDED",
            format!("enrollments/{enrollment_id}"),
            format!("the enrollment already ended ({})", current.state),
        ));
    }
    let detail = if reason.is_empty() {
        "cancelled by staff"
    } else {
        reason
    };
    let ended = end(
        conn,
        tenant,
        &[enrollment_id],
        End {
            state: "stopped",
            reason: StopReason::CancelledByStaff,
            detail,
            cause_event_id: "",
            by_staff: by,
            now: store.now(),
        },
    )
    .await?;
    if ended == 0 {
        return Err(Error::precondition(
            "ENROLLMENT_ENDED",
            format!("enrollments/{enrollment_id}"),
            "the enrollment ended meanwhile",
        ));
    }
    get(conn, tenant, enrollment_id).await
}
