//! Firing due steps: claimed in batches with `FOR UPDATE SKIP LOCKED` (so replicas share the work and
//! never take the same row), marked fired, and their notification requests written to the outbox in the
//! same transaction. A step is fired exactly once whatever crashes: the state change and the request
//! commit together or not at all, and a committed step is no longer pending. Nothing fires early: a step
//! is claimed only when its due time is at or before the clock's now.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use followup_platform::event::OutgoingEvent;
use followup_proto::followup::common::v1::{CaseKind, Channel, StopReason};
use followup_proto::followup::events::v1 as ev;
use sqlx::PgConnection;
use uuid::Uuid;

use super::enroll::Contact;
use super::stop::{End, end};
use super::{Store, facts, settings};
use crate::convert::{case_ref, timestamp};
use crate::domain::condition::{self, Today};
use crate::domain::rule::{Action, RuleDef};
use crate::domain::schedule::local_date;
use crate::error::{Error, Result};

/// A claimed step with what its message needs.
#[derive(sqlx::FromRow)]
struct Claimed {
    tenant_id: String,
    due_at: DateTime<Utc>,
    enrollment_id: Uuid,
    step_index: i32,
    is_last: bool,
    rule_id: Uuid,
    rule_version: i32,
    case_kind: i16,
    case_id: String,
    patient_id: String,
    recipient: Option<serde_json::Value>,
    variables: serde_json::Value,
    owner_staff_id: Option<String>,
    portal_url: Option<String>,
    default_owner_staff_id: Option<String>,
    traceparent: String,
}

const CLAIM_RETURNING: &str = "RETURNING s.tenant_id, s.due_at, s.enrollment_id, s.step_index, s.is_last, e.rule_id,
    e.rule_version, e.case_kind, e.case_id, e.patient_id, e.recipient, e.variables, c.owner_staff_id,
    c.portal_url, st.default_owner_staff_id, e.traceparent";

/// The due steps of every clinic, earliest first: the timer's claim.
fn claim_due_sql() -> String {
    format!(
        "WITH due AS (
             SELECT tenant_id, enrollment_id, step_index FROM step_runs
             WHERE state = 'pending' AND due_at <= $1
             ORDER BY due_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE step_runs s SET state = 'fired', fired_at = $1
         FROM due
         JOIN enrollments e ON e.tenant_id = due.tenant_id AND e.enrollment_id = due.enrollment_id
         LEFT JOIN cases c ON c.tenant_id = e.tenant_id AND c.case_kind = e.case_kind AND c.case_id = e.case_id
         LEFT JOIN settings st ON st.tenant_id = e.tenant_id
         WHERE s.tenant_id = due.tenant_id AND s.enrollment_id = due.enrollment_id
           AND s.step_index = due.step_index
         {CLAIM_RETURNING}"
    )
}

/// The due steps of one enrollment (just enrolled, in the enrolling transaction).
fn claim_enrollment_sql() -> String {
    format!(
        "WITH due AS (
             SELECT tenant_id, enrollment_id, step_index FROM step_runs
             WHERE tenant_id = $2 AND enrollment_id = $3 AND state = 'pending' AND due_at <= $1
             FOR UPDATE)
         UPDATE step_runs s SET state = 'fired', fired_at = $1
         FROM due
         JOIN enrollments e ON e.tenant_id = due.tenant_id AND e.enrollment_id = due.enrollment_id
         LEFT JOIN cases c ON c.tenant_id = e.tenant_id AND c.case_kind = e.case_kind AND c.case_id = e.case_id
         LEFT JOIN settings st ON st.tenant_id = e.tenant_id
         WHERE s.tenant_id = due.tenant_id AND s.enrollment_id = due.enrollment_id
           AND s.step_index = due.step_index
         {CLAIM_RETURNING}"
    )
}

/// What one claim did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fired {
    /// Steps claimed (fired + skipped).
    pub claimed: usize,
    pub fired: usize,
    pub skipped: usize,
    pub finished: usize,
    /// How late the latest-fired step of the batch was (fire time minus due time).
    pub max_lateness: chrono::Duration,
}

/// The span of one fired step: a child of the trace that started its enrollment.
fn step_span(step: &Claimed) -> tracing::Span {
    let span = tracing::info_span!(
        "scheduler.fire_step",
        tenant = %step.tenant_id,
        enrollment_id = %step.enrollment_id,
        step = step.step_index,
    );
    if !step.traceparent.is_empty() {
        followup_platform::telemetry::continue_trace(&span, &step.traceparent);
    }
    span
}

/// Claims up to `limit` due steps of any clinic and fires them, in the caller's transaction.
pub async fn fire_due(store: &Store, conn: &mut PgConnection, limit: i64) -> Result<Fired> {
    let now = store.now();
    let sql = claim_due_sql();
    let claimed = sqlx::query_as::<sqlx::Postgres, Claimed>(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    fire_claimed(store, conn, claimed, now).await
}

/// Fires the due steps of one enrollment (a hot trigger's first step, in the enrolling transaction).
pub async fn fire_enrollment(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    enrollment_id: Uuid,
) -> Result<Fired> {
    let now = store.now();
    let sql = claim_enrollment_sql();
    let claimed = sqlx::query_as::<sqlx::Postgres, Claimed>(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(tenant)
        .bind(enrollment_id)
        .fetch_all(&mut *conn)
        .await?;
    fire_claimed(store, conn, claimed, now).await
}

async fn fire_claimed(
    store: &Store,
    conn: &mut PgConnection,
    claimed: Vec<Claimed>,
    now: DateTime<Utc>,
) -> Result<Fired> {
    if claimed.is_empty() {
        return Ok(Fired::default());
    }
    let mut defs: HashMap<(String, Uuid, i32), Arc<RuleDef>> = HashMap::new();
    for step in &claimed {
        let key = (step.tenant_id.clone(), step.rule_id, step.rule_version);
        if let std::collections::hash_map::Entry::Vacant(slot) = defs.entry(key) {
            let def = store
                .rules
                .get(conn, &step.tenant_id, step.rule_id, step.rule_version)
                .await?;
            slot.insert(def);
        }
    }
    let mut events = Vec::with_capacity(claimed.len());
    let mut skipped: Vec<(String, Uuid, i32, &'static str)> = Vec::new();
    let mut finishing: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut guard_facts: HashMap<(String, i16, String), crate::domain::facts::CaseFacts> =
        HashMap::new();
    let mut zones: HashMap<String, chrono_tz::Tz> = HashMap::new();
    for step in &claimed {
        let def = &defs[&(step.tenant_id.clone(), step.rule_id, step.rule_version)];
        let Some(rule_step) = usize::try_from(step.step_index)
            .ok()
            .and_then(|i| def.steps.get(i))
        else {
            return Err(Error::Corrupt(format!(
                "enrollment {} has step {} its rule version lacks",
                step.enrollment_id, step.step_index
            )));
        };
        if step.is_last {
            finishing
                .entry(step.tenant_id.clone())
                .or_default()
                .push(step.enrollment_id);
        }
        if let Some(guard) = &rule_step.only_if {
            let kind =
                CaseKind::try_from(i32::from(step.case_kind)).unwrap_or(CaseKind::Unspecified);
            let case_key = (step.tenant_id.clone(), step.case_kind, step.case_id.clone());
            if !guard_facts.contains_key(&case_key) {
                let case = (kind != CaseKind::Unspecified).then_some((kind, step.case_id.as_str()));
                let facts =
                    facts::for_condition(conn, &step.tenant_id, case, def.case_kind, now).await?;
                guard_facts.insert(case_key.clone(), facts);
            }
            if !zones.contains_key(&step.tenant_id) {
                let tz = settings::load(conn, &step.tenant_id).await?.tz;
                zones.insert(step.tenant_id.clone(), tz);
            }
            let tz = zones[&step.tenant_id];
            let today = Today {
                date: local_date(now, tz),
                tz,
            };
            if !condition::holds(guard, &guard_facts[&case_key], today) {
                skipped.push((
                    step.tenant_id.clone(),
                    step.enrollment_id,
                    step.step_index,
                    "guard did not hold when due",
                ));
                continue;
            }
        }
        match request(step, def, &rule_step.action, now) {
            Some(request) => {
                let subject = followup_proto::subjects::Event::subject(&request)
                    .map_err(|e| Error::Corrupt(format!("tenant id: {e}")))?;
                // The request carries the enrollment's trace, so the message it causes joins the journey.
                let span = step_span(step);
                let event = span
                    .in_scope(|| OutgoingEvent::new(crate::INFO.name, subject, &request))
                    .map_err(followup_platform::outbox::OutboxError::from)?;
                events.push(event);
            }
            None => skipped.push((
                step.tenant_id.clone(),
                step.enrollment_id,
                step.step_index,
                "no one to send it to (no patient or contact)",
            )),
        }
    }
    followup_platform::outbox::enqueue_events(conn, &events).await?;
    if !skipped.is_empty() {
        let tenants: Vec<&str> = skipped.iter().map(|s| s.0.as_str()).collect();
        let ids: Vec<Uuid> = skipped.iter().map(|s| s.1).collect();
        let indexes: Vec<i32> = skipped.iter().map(|s| s.2).collect();
        let reasons: Vec<&str> = skipped.iter().map(|s| s.3).collect();
        sqlx::query(
            "UPDATE step_runs s SET state = 'skipped', reason = t.reason, fired_at = NULL
             FROM UNNEST($1::text[], $2::uuid[], $3::int4[], $4::text[]) AS t(tenant_id, enrollment_id, step_index, reason)
             WHERE s.tenant_id = t.tenant_id AND s.enrollment_id = t.enrollment_id AND s.step_index = t.step_index",
        )
        .bind(&tenants)
        .bind(&ids)
        .bind(&indexes)
        .bind(&reasons)
        .execute(&mut *conn)
        .await?;
    }
    let mut finished = 0;
    for (tenant, ids) in &finishing {
        finished += end(
            conn,
            tenant,
            ids,
            End {
                state: "finished",
                reason: StopReason::SequenceFinished,
                detail: "every step ran",
                cause_event_id: "",
                by_staff: "",
                now,
            },
        )
        .await?;
    }
    let max_lateness = claimed
        .iter()
        .map(|s| now - s.due_at)
        .max()
        .unwrap_or_else(chrono::Duration::zero);
    Ok(Fired {
        max_lateness,
        claimed: claimed.len(),
        fired: events.len(),
        skipped: skipped.len(),
        finished,
    })
}

/// The notification request of a firing step; None when there is no one to send it to.
fn request(
    step: &Claimed,
    def: &RuleDef,
    action: &Action,
    now: DateTime<Utc>,
) -> Option<ev::NotificationRequested> {
    use ev::recipient::Target;
    let kind = CaseKind::try_from(i32::from(step.case_kind)).unwrap_or(CaseKind::Unspecified);
    let owner = [
        step.owner_staff_id.as_deref().unwrap_or(""),
        def.owner_staff_id.as_str(),
        step.default_owner_staff_id.as_deref().unwrap_or(""),
    ]
    .into_iter()
    .find(|o| !o.is_empty())
    .unwrap_or("")
    .to_string();
    let patient_target = || {
        if !step.patient_id.is_empty() {
            return Some(Target::PatientId(step.patient_id.clone()));
        }
        let contact: Contact = serde_json::from_value(step.recipient.clone()?).ok()?;
        Some(Target::Contact(contact.into()))
    };
    let mut variables: HashMap<String, String> =
        serde_json::from_value(step.variables.clone()).unwrap_or_default();
    if let Some(url) = step.portal_url.as_deref().filter(|u| !u.is_empty()) {
        variables.insert("portal_url".into(), url.to_string());
    }
    let (channel, template_key, target, task, webhook) = match action {
        Action::Wait(_) => return None,
        Action::Send {
            channel,
            template_key,
        } => (
            *channel,
            template_key.clone(),
            patient_target()?,
            None,
            String::new(),
        ),
        Action::Task {
            title,
            description,
            due_in,
        } => {
            let target = if owner.is_empty() {
                patient_target()?
            } else {
                Target::StaffId(owner.clone())
            };
            let task = ev::TaskSpec {
                title: title.clone(),
                description: description.clone(),
                due_time: due_in.map(|d| timestamp(now + d)),
            };
            (
                Channel::Task,
                String::new(),
                target,
                Some(task),
                String::new(),
            )
        }
        Action::Webhook { endpoint_id } => (
            Channel::Webhook,
            String::new(),
            patient_target()?,
            None,
            endpoint_id.clone(),
        ),
    };
    Some(ev::NotificationRequested {
        event_id: super::new_id().to_string(),
        tenant_id: step.tenant_id.clone(),
        occurred_at: Some(timestamp(now)),
        idempotency_key: format!("{}:{}", step.enrollment_id, step.step_index),
        channel: channel as i32,
        template_key,
        variables,
        category: def.category.clone(),
        transactional: def.transactional,
        recipient: Some(ev::Recipient {
            target: Some(target),
        }),
        case_ref: case_ref(kind, &step.case_id),
        enrollment_id: step.enrollment_id.to_string(),
        rule_id: step.rule_id.to_string(),
        rule_version: step.rule_version,
        step_index: step.step_index,
        owner_staff_id: owner,
        task,
        webhook_endpoint_id: webhook,
        not_before_time: None,
        expire_time: None,
        plan_id: if kind == CaseKind::CasePresentation {
            step.case_id.clone()
        } else {
            String::new()
        },
    })
}

/// The earliest due time of any pending step (the timer sleeps until then).
pub async fn next_due(conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>> {
    Ok(
        sqlx::query_scalar("SELECT min(due_at) FROM step_runs WHERE state = 'pending'")
            .fetch_one(&mut *conn)
            .await?,
    )
}
