//! Time-based triggers: a fact arms a timer (a plan viewed, a quote sent, a cancellation, a consultation
//! without a next visit, a last attended visit, a care case's expiry date), and when it falls due the
//! trigger's condition is checked again on the facts of that moment before anything is enrolled. Timers
//! are claimed like steps (`FOR UPDATE SKIP LOCKED`, deleted in the claiming transaction), so a replica
//! crash re-delivers them and two replicas never take the same one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use followup_proto::followup::common::v1::{CaseKind, CaseStatus};
use followup_proto::followup::scheduler::v1::TriggerType;
use sqlx::PgConnection;
use tracing::Instrument as _;
use uuid::Uuid;

use super::enroll::{self, Enrolled, PlayingRule, Triggered};
use super::{Store, facts, settings, wake_timers};
use crate::domain::enrollment::{self, Subject};
use crate::domain::schedule::parse_date;
use crate::error::Result;

/// A timer to arm.
#[derive(Clone, Debug)]
pub struct Timer {
    pub tenant: String,
    pub rule_id: Uuid,
    /// What the timer waits about: `plan:<id>`, `appointment:<id>`, `patient:<id>`, `care_case:<id>`.
    pub timer_key: String,
    pub subject: Subject,
    pub patient_id: String,
    pub anchor_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub trigger: String,
    pub cause_event_id: String,
    pub variables: BTreeMap<String, String>,
}

/// Arms (or re-arms, replacing) a timer.
pub async fn arm(conn: &mut PgConnection, timer: &Timer) -> Result<()> {
    let (case_kind, case_id) = timer
        .subject
        .case()
        .map(|(k, id)| (k as i16, id.to_string()))
        .unwrap_or((0, String::new()));
    sqlx::query(
        "INSERT INTO trigger_timers (tenant_id, rule_id, timer_key, subject_key, case_kind, case_id, patient_id,
                                     anchor_at, due_at, trigger, cause_event_id, variables, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (tenant_id, rule_id, timer_key) DO UPDATE SET
             subject_key = EXCLUDED.subject_key, case_kind = EXCLUDED.case_kind, case_id = EXCLUDED.case_id,
             patient_id = EXCLUDED.patient_id, anchor_at = EXCLUDED.anchor_at, due_at = EXCLUDED.due_at,
             trigger = EXCLUDED.trigger, cause_event_id = EXCLUDED.cause_event_id, variables = EXCLUDED.variables,
             traceparent = EXCLUDED.traceparent
         WHERE trigger_timers.anchor_at <= EXCLUDED.anchor_at",
    )
    .bind(&timer.tenant)
    .bind(timer.rule_id)
    .bind(&timer.timer_key)
    .bind(timer.subject.key())
    .bind(case_kind)
    .bind(case_id)
    .bind(&timer.patient_id)
    .bind(timer.anchor_at)
    .bind(timer.due_at)
    .bind(&timer.trigger)
    .bind(&timer.cause_event_id)
    .bind(serde_json::to_value(&timer.variables).unwrap_or_default())
    // The trace of the event that armed the timer: the enrollment it may start later continues it.
    .bind(followup_platform::telemetry::current_traceparent().unwrap_or_default())
    .execute(&mut *conn)
    .await?;
    wake_timers(conn).await
}

/// Removes a rule's timers (the rule was deleted).
pub async fn disarm_rule(conn: &mut PgConnection, tenant: &str, rule_id: Uuid) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM trigger_timers WHERE tenant_id = $1 AND rule_id = $2")
            .bind(tenant)
            .bind(rule_id)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    )
}

#[derive(sqlx::FromRow)]
struct DueTimer {
    tenant_id: String,
    rule_id: Uuid,
    timer_key: String,
    subject_key: String,
    patient_id: String,
    anchor_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
    trigger: String,
    cause_event_id: String,
    variables: serde_json::Value,
    traceparent: String,
}

/// Claims up to `limit` due timers of any clinic and enrolls what still applies. Returns how many
/// timers were claimed.
pub async fn fire_due(store: &Store, conn: &mut PgConnection, limit: i64) -> Result<usize> {
    let now = store.now();
    let due = sqlx::query_as::<sqlx::Postgres, DueTimer>(
        "DELETE FROM trigger_timers t USING (
             SELECT tenant_id, rule_id, timer_key FROM trigger_timers
             WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED) d
         WHERE t.tenant_id = d.tenant_id AND t.rule_id = d.rule_id AND t.timer_key = d.timer_key
         RETURNING t.tenant_id, t.rule_id, t.timer_key, t.subject_key, t.patient_id, t.anchor_at, t.due_at,
                   t.trigger, t.cause_event_id, t.variables, t.traceparent",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    // The patients of the whole claim, in the consumers' lock order, so this round and their batches
    // queue on each other instead of deadlocking.
    let keys: Vec<String> = due
        .iter()
        .filter(|t| !t.patient_id.is_empty())
        .map(|t| facts::patient_lock_key(&t.tenant_id, &t.patient_id))
        .collect();
    followup_platform::db::lock_keys(conn, &keys).await?;
    for timer in &due {
        let Some(rule) = enroll::playing_rule(store, conn, &timer.tenant_id, timer.rule_id).await?
        else {
            // A paused, drafted or deleted rule enrolls nobody; its timers lapse.
            continue;
        };
        let Some(subject) = Subject::from_key(&timer.subject_key) else {
            continue;
        };
        facts::lock_patient(conn, &timer.tenant_id, &timer.patient_id).await?;
        if !still_applies(store, conn, &rule, timer, &subject, now).await? {
            continue;
        }
        let triggered = Triggered {
            tenant: timer.tenant_id.clone(),
            subject,
            patient_id: timer.patient_id.clone(),
            contact: None,
            variables: serde_json::from_value(timer.variables.clone()).unwrap_or_default(),
            trigger: timer.trigger.clone(),
            trigger_event_id: timer.cause_event_id.clone(),
            trigger_at: timer.due_at,
        };
        let span = tracing::info_span!("scheduler.trigger_timer", tenant = %timer.tenant_id, rule_id = %timer.rule_id);
        if !timer.traceparent.is_empty() {
            followup_platform::telemetry::continue_trace(&span, &timer.traceparent);
        }
        let outcome = enroll::enroll(store, conn, &rule, &triggered)
            .instrument(span)
            .await?;
        if let Enrolled::Skipped(why) = outcome {
            tracing::debug!(tenant = %timer.tenant_id, rule_id = %timer.rule_id, why, "timer enrolled nothing");
        }
    }
    Ok(due.len())
}

/// The earliest due time of any timer.
pub async fn next_due(conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT min(due_at) FROM trigger_timers")
        .fetch_one(&mut *conn)
        .await?)
}

/// Whether the trigger's condition still holds now that its time came.
async fn still_applies(
    _store: &Store,
    conn: &mut PgConnection,
    rule: &PlayingRule,
    timer: &DueTimer,
    subject: &Subject,
    now: DateTime<Utc>,
) -> Result<bool> {
    let tenant = timer.tenant_id.as_str();
    let patient = facts::patient(conn, tenant, &timer.patient_id).await?;
    let since = |at: Option<DateTime<Utc>>| at.is_some_and(|at| at > timer.anchor_at);
    let case = match subject.case() {
        Some((kind, id)) => facts::contact(conn, tenant, kind, id).await?,
        None => None,
    };
    Ok(match rule.def.trigger.kind {
        TriggerType::PlanViewedNoResponse => {
            case.is_some_and(|c| {
                let status = c
                    .status
                    .and_then(|s| CaseStatus::try_from(i32::from(s)).ok());
                c.open
                    && c.viewed
                    && !c.approved
                    && !matches!(status, Some(s) if facts::is_closed(s))
            }) && !since(patient.last_replied_at)
                && !since(patient.last_booked_at)
        }
        TriggerType::QuoteUnanswered => {
            case.is_some_and(|c| c.open && !c.approved) && !since(patient.last_booked_at)
        }
        TriggerType::Cancellation => {
            let cancelled = timer.timer_key.strip_prefix("appointment:").unwrap_or("");
            !facts::booked_between(
                conn,
                tenant,
                &timer.patient_id,
                timer.anchor_at,
                timer.due_at,
                cancelled,
            )
            .await?
        }
        TriggerType::ConsultationNoNextVisit => {
            !facts::booked_between(
                conn,
                tenant,
                &timer.patient_id,
                timer.anchor_at,
                timer.due_at,
                "",
            )
            .await?
        }
        TriggerType::LapsedPatient => {
            !patient.archived
                && patient
                    .last_attended_at
                    .is_some_and(|at| at <= timer.anchor_at)
                && !facts::has_future_booking(conn, tenant, &timer.patient_id, now).await?
        }
        TriggerType::CareCaseExpiring => {
            let armed_for = timer
                .variables
                .get("expiry_date")
                .and_then(|v| v.as_str())
                .and_then(parse_date);
            case.is_some_and(|c| c.open && c.expiry_date.is_some() && c.expiry_date == armed_for)
        }
        _ => false,
    })
}

/// Arms the timers of a rule that just started playing, for what is already known: every patient's
/// lapse, every open care case's expiry. Returns how many were armed.
pub async fn arm_existing(
    conn: &mut PgConnection,
    tenant: &str,
    rule: &PlayingRule,
    now: DateTime<Utc>,
) -> Result<usize> {
    let trigger = &rule.def.trigger;
    let clinic = settings::load(conn, tenant).await?;
    let mut armed = 0;
    match trigger.kind {
        TriggerType::LapsedPatient => {
            let patients: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
                "SELECT patient_id, last_attended_at FROM patients
                 WHERE tenant_id = $1 AND last_attended_at IS NOT NULL AND NOT archived",
            )
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
            for (patient_id, last) in patients {
                arm(
                    conn,
                    &lapsed_timer(tenant, rule, &patient_id, last, "", clinic.tz),
                )
                .await?;
                armed += 1;
            }
        }
        TriggerType::CareCaseExpiring => {
            let cases: Vec<(String, String, chrono::NaiveDate)> = sqlx::query_as(
                "SELECT case_id, patient_id, expiry_date FROM cases
                 WHERE tenant_id = $1 AND case_kind = $2 AND open AND expiry_date IS NOT NULL",
            )
            .bind(tenant)
            .bind(CaseKind::CareCase as i16)
            .fetch_all(&mut *conn)
            .await?;
            for (case_id, patient_id, expiry) in cases {
                if let Some(timer) = expiring_timer(
                    tenant,
                    rule,
                    &case_id,
                    &patient_id,
                    expiry,
                    now,
                    "",
                    clinic.tz,
                ) {
                    arm(conn, &timer).await?;
                    armed += 1;
                }
            }
        }
        _ => {}
    }
    Ok(armed)
}

pub fn lapsed_timer(
    tenant: &str,
    rule: &PlayingRule,
    patient_id: &str,
    last_attended: DateTime<Utc>,
    cause_event_id: &str,
    tz: chrono_tz::Tz,
) -> Timer {
    Timer {
        tenant: tenant.to_string(),
        rule_id: rule.rule_id,
        timer_key: format!("patient:{patient_id}"),
        subject: Subject::Patient(patient_id.to_string()),
        patient_id: patient_id.to_string(),
        anchor_at: last_attended,
        due_at: enrollment::lapsed_at(last_attended, rule.def.trigger.lapsed_months, tz),
        trigger: "timer.lapsed_patient".into(),
        cause_event_id: cause_event_id.to_string(),
        variables: BTreeMap::new(),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn expiring_timer(
    tenant: &str,
    rule: &PlayingRule,
    care_case_id: &str,
    patient_id: &str,
    expiry: chrono::NaiveDate,
    anchor_at: DateTime<Utc>,
    cause_event_id: &str,
    tz: chrono_tz::Tz,
) -> Option<Timer> {
    let window = rule.def.trigger.window?;
    let due_at = enrollment::expiring_at(expiry, window, tz);
    Some(Timer {
        tenant: tenant.to_string(),
        rule_id: rule.rule_id,
        timer_key: format!("care_case:{care_case_id}"),
        subject: Subject::Case {
            kind: CaseKind::CareCase,
            id: care_case_id.to_string(),
        },
        patient_id: patient_id.to_string(),
        // The anchor orders re-arms: a later upsert's expiry replaces an earlier one's.
        anchor_at,
        due_at,
        trigger: "timer.care_case_expiring".into(),
        cause_event_id: cause_event_id.to_string(),
        variables: BTreeMap::from([("expiry_date".to_string(), expiry.to_string())]),
    })
}
