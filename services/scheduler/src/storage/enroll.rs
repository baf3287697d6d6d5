//! Starting enrollments: a playing rule, a triggered subject, the checks that keep a rule from acting on
//! a case that already moved on, the planned steps, `enrollment_started`, and the steps already due fired
//! in the same transaction (a hot trigger does not wait for the timer).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use followup_proto::followup::common::v1::{CaseKind, StopReason};
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1::{ScheduleZone, TriggerType};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Store, facts, fire, settings, wake_timers};
use crate::convert::{case_ref, timestamp};
use crate::domain::condition::{self, Today};
use crate::domain::enrollment::{self, Subject};
use crate::domain::rule::RuleDef;
use crate::domain::schedule::local_date;
use crate::error::Result;

/// A rule that is playing, in its latest version, read under a share lock: pausing it waits until the
/// transaction that reads it commits, so no enrollment of a paused rule can start.
#[derive(Clone)]
pub struct PlayingRule {
    pub rule_id: Uuid,
    pub version: i32,
    pub def: Arc<RuleDef>,
}

/// Someone who is not (yet) a known patient, carried with an enquiry. Personal data: never logged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub given_name: String,
    pub family_name: String,
    pub phone_e164: String,
    pub email: String,
    pub time_zone: String,
}

impl From<&ev::DirectContact> for Contact {
    fn from(c: &ev::DirectContact) -> Self {
        Self {
            given_name: c.given_name.clone(),
            family_name: c.family_name.clone(),
            phone_e164: c.phone_e164.clone(),
            email: c.email.clone(),
            time_zone: c.time_zone.clone(),
        }
    }
}

impl From<Contact> for ev::DirectContact {
    fn from(c: Contact) -> Self {
        Self {
            given_name: c.given_name,
            family_name: c.family_name,
            phone_e164: c.phone_e164,
            email: c.email,
            time_zone: c.time_zone,
        }
    }
}

/// A trigger that fired for a subject.
#[derive(Clone, Debug)]
pub struct Triggered {
    pub tenant: String,
    pub subject: Subject,
    pub patient_id: String,
    pub contact: Option<Contact>,
    /// Template variables known from the trigger (e.g. `appointment_time`, `enquiry_interest`).
    pub variables: BTreeMap<String, String>,
    /// The subject tail of the triggering event ("plans.plan_sent") or "timer.<trigger>".
    pub trigger: String,
    pub trigger_event_id: String,
    /// When the trigger happened: the schedule starts here (never in the future).
    pub trigger_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enrolled {
    Started(Uuid),
    /// Why not, in words (kept for the debug log and tests).
    Skipped(&'static str),
}

/// Playing rules of these trigger types in the clinic, latest versions, share-locked.
pub async fn playing_rules(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    types: &[TriggerType],
) -> Result<Vec<PlayingRule>> {
    let types: Vec<i16> = types.iter().map(|t| *t as i16).collect();
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT rule_id, latest_version FROM rules
         WHERE tenant_id = $1 AND state = 'playing' AND trigger_type = ANY($2)
         ORDER BY rule_id FOR SHARE",
    )
    .bind(tenant)
    .bind(&types)
    .fetch_all(&mut *conn)
    .await?;
    let mut rules = Vec::with_capacity(rows.len());
    for (rule_id, version) in rows {
        let def = store.rules.get(conn, tenant, rule_id, version).await?;
        rules.push(PlayingRule {
            rule_id,
            version,
            def,
        });
    }
    Ok(rules)
}

/// One playing rule by id (a timer firing), share-locked; None when it is not playing any more.
pub async fn playing_rule(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    rule_id: Uuid,
) -> Result<Option<PlayingRule>> {
    let version: Option<i32> = sqlx::query_scalar(
        "SELECT latest_version FROM rules WHERE tenant_id = $1 AND rule_id = $2 AND state = 'playing' FOR SHARE",
    )
    .bind(tenant)
    .bind(rule_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(version) = version else {
        return Ok(None);
    };
    let def = store.rules.get(conn, tenant, rule_id, version).await?;
    Ok(Some(PlayingRule {
        rule_id,
        version,
        def,
    }))
}

/// Enrolls the subject in the rule when nothing forbids it.
pub async fn enroll(
    store: &Store,
    conn: &mut PgConnection,
    rule: &PlayingRule,
    t: &Triggered,
) -> Result<Enrolled> {
    let def = &rule.def;
    let tenant = t.tenant.as_str();
    let subject_key = t.subject.key();
    let now = store.now();
    if def.once_per_case() {
        let before: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM enrollments WHERE tenant_id = $1 AND rule_id = $2 AND subject_key = $3)",
        )
        .bind(tenant)
        .bind(rule.rule_id)
        .bind(&subject_key)
        .fetch_one(&mut *conn)
        .await?;
        if before {
            return Ok(Enrolled::Skipped("once per case: enrolled before"));
        }
    }
    let mut stops = Vec::new();
    if !t.patient_id.is_empty() {
        let patient = facts::patient(conn, tenant, &t.patient_id).await?;
        if patient.archived {
            return Ok(Enrolled::Skipped("patient archived"));
        }
        if facts::opted_out_of(conn, tenant, &t.patient_id, &def.category).await? {
            return Ok(Enrolled::Skipped("patient opted out of the category"));
        }
        // A booking or reply after the trigger (processed first, out of order) ends the sequence as
        // soon as it starts (`enrollment::LateStop`).
        stops.push((
            StopReason::Booked,
            patient.last_booked_at,
            "booked since the trigger",
        ));
        stops.push((
            StopReason::PatientReplied,
            patient.last_replied_at,
            "replied since the trigger",
        ));
    }
    if let Some((kind, id)) = t.subject.case()
        && let Some(case) = facts::contact(conn, tenant, kind, id).await?
        && let Some((reason, why)) = closed_reason(kind, &case, def)
    {
        // Closed after the trigger: enrolled and stopped at once, as if the events came in order.
        // Closed before it (or approved, which keeps no time): nothing to start.
        match case.status_at {
            Some(at) if at > t.trigger_at && reason != StopReason::Approved => {
                stops.push((reason, Some(at), why));
            }
            _ => return Ok(Enrolled::Skipped(why)),
        }
    }
    let late = enrollment::late_stop(def, t.trigger_at, &stops);
    let clinic = settings::load(conn, tenant).await?;
    if let Some(condition) = &def.condition {
        let facts =
            facts::for_condition(conn, tenant, t.subject.case(), def.case_kind, now).await?;
        let today = Today {
            date: local_date(now, clinic.tz),
            tz: clinic.tz,
        };
        if !condition::holds(condition, &facts, today) {
            return Ok(Enrolled::Skipped("conditions do not hold"));
        }
    }
    let tz = settings::zone_for(
        conn,
        tenant,
        clinic.tz,
        def.schedule_zone == ScheduleZone::Patient,
        &t.patient_id,
    )
    .await?;
    let start = enrollment::start_time(t.trigger_at, now);
    let planned = enrollment::plan(def, start, tz, &clinic.calendar);
    let enrollment_id = super::new_id();
    let (case_kind, case_id) = t
        .subject
        .case()
        .map(|(k, id)| (k as i16, id.to_string()))
        .unwrap_or((0, String::new()));
    let recipient = t
        .contact
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| crate::error::Error::Corrupt(e.to_string()))?;
    let variables = serde_json::to_value(&t.variables).unwrap_or_default();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO enrollments (tenant_id, enrollment_id, rule_id, rule_version, subject_key, case_kind,
                                  case_id, patient_id, recipient, variables, state, trigger, trigger_event_id,
                                  trigger_at, time_zone, started_at, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11, $12, $13, $14, $15, $16)
         ON CONFLICT (tenant_id, rule_id, subject_key) WHERE state = 'active' DO NOTHING
         RETURNING enrollment_id",
    )
    .bind(tenant)
    .bind(enrollment_id)
    .bind(rule.rule_id)
    .bind(rule.version)
    .bind(&subject_key)
    .bind(case_kind)
    .bind(&case_id)
    .bind(&t.patient_id)
    .bind(recipient)
    .bind(variables)
    .bind(&t.trigger)
    .bind(&t.trigger_event_id)
    .bind(t.trigger_at)
    .bind(tz.name())
    .bind(now)
    // The trace of what enrolled the case: each step the timer fires later continues it.
    .bind(followup_platform::telemetry::current_traceparent().unwrap_or_default())
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_none() {
        return Ok(Enrolled::Skipped("an enrollment of the subject is running"));
    }
    let indexes: Vec<i32> = planned.iter().map(|p| p.step_index as i32).collect();
    let dues: Vec<DateTime<Utc>> = planned.iter().map(|p| p.due).collect();
    let lasts: Vec<bool> = planned.iter().map(|p| p.is_last).collect();
    sqlx::query(
        "INSERT INTO step_runs (tenant_id, enrollment_id, step_index, rule_id, due_at, state, is_last)
         SELECT $1, $2, i, $3, d, 'pending', l FROM UNNEST($4::int4[], $5::timestamptz[], $6::bool[]) AS t(i, d, l)",
    )
    .bind(tenant)
    .bind(enrollment_id)
    .bind(rule.rule_id)
    .bind(&indexes)
    .bind(&dues)
    .bind(&lasts)
    .execute(&mut *conn)
    .await?;
    let started = ev::EnrollmentStarted {
        event_id: super::new_id().to_string(),
        tenant_id: tenant.to_string(),
        occurred_at: Some(timestamp(now)),
        enrollment_id: enrollment_id.to_string(),
        rule_id: rule.rule_id.to_string(),
        rule_version: rule.version,
        rule_name: def.name.clone(),
        case_ref: t.subject.case().and_then(|(k, id)| case_ref(k, id)),
        patient_id: t.patient_id.clone(),
        trigger: t.trigger.clone(),
        trigger_event_id: t.trigger_event_id.clone(),
        planned_steps: planned
            .iter()
            .map(|p| ev::PlannedStep {
                step_index: p.step_index as i32,
                channel: p.channel as i32,
                template_key: match &def.steps[p.step_index].action {
                    crate::domain::rule::Action::Send { template_key, .. } => template_key.clone(),
                    _ => String::new(),
                },
                due_time: Some(timestamp(p.due)),
            })
            .collect(),
    };
    followup_platform::outbox::enqueue_event(conn, crate::INFO.name, &started).await?;
    tracing::debug!(tenant, enrollment_id = %enrollment_id, rule_id = %rule.rule_id, trigger = %t.trigger, "enrolled");
    if let Some(late) = late {
        super::stop::end(
            conn,
            tenant,
            &[enrollment_id],
            super::stop::End {
                state: "stopped",
                reason: late.reason,
                detail: late.detail,
                cause_event_id: "",
                by_staff: "",
                now,
            },
        )
        .await?;
        return Ok(Enrolled::Started(enrollment_id));
    }
    if planned.first().is_some_and(|p| p.due <= now) {
        fire::fire_enrollment(store, conn, tenant, enrollment_id).await?;
    }
    if planned.iter().any(|p| p.due > now) {
        wake_timers(conn).await?;
    }
    Ok(Enrolled::Started(enrollment_id))
}

/// Why a case that already ended would only be stopped at once: the stop reason and in words.
fn closed_reason(
    kind: CaseKind,
    case: &facts::CaseContact,
    def: &RuleDef,
) -> Option<(StopReason, &'static str)> {
    use followup_proto::followup::common::v1::CaseStatus;
    let status = case
        .status
        .and_then(|s| CaseStatus::try_from(i32::from(s)).ok());
    let stops = |reason| def.stops_on(reason);
    match kind {
        CaseKind::CareCase if !case.open && stops(StopReason::CaseClosed) => {
            Some((StopReason::CaseClosed, "care case closed"))
        }
        CaseKind::CasePresentation => match status {
            Some(CaseStatus::PatientBooked) if stops(StopReason::Booked) => {
                Some((StopReason::Booked, "case booked"))
            }
            Some(CaseStatus::PatientRejected) if stops(StopReason::Rejected) => {
                Some((StopReason::Rejected, "case rejected"))
            }
            Some(CaseStatus::PatientRejected) if stops(StopReason::PlanCancelled) => {
                Some((StopReason::PlanCancelled, "case rejected"))
            }
            Some(CaseStatus::TreatmentCompleted) if stops(StopReason::PlanCompleted) => {
                Some((StopReason::PlanCompleted, "plan completed"))
            }
            Some(CaseStatus::Superseded) if stops(StopReason::CaseClosed) => {
                Some((StopReason::CaseClosed, "case superseded"))
            }
            _ if case.approved && stops(StopReason::Approved) => {
                Some((StopReason::Approved, "plan approved"))
            }
            _ => None,
        },
        _ => None,
    }
}
