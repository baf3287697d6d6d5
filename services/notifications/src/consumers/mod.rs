//! What the service consumes, each a handler given to the platform's runner: every effect (and every
//! event it publishes, through the outbox) is written in the runner's transaction, beside the inbox
//! record, so a redelivered event changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use followup_platform::consumer::{Handler, HandlerError};
use followup_platform::event::{Envelope, from_timestamp};
use followup_proto::followup::common::v1::case_ref::Target;
use followup_proto::followup::events::v1::recipient::Target as RecipientTarget;
use followup_proto::followup::events::v1::{
    MessageReceived, NotificationRequested, OwnerDigest, PatientUpserted, PlanApproved,
    StaffUpserted,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::Channel;
use crate::domain::address;
use crate::inbound::{self, InboundMessage};
use crate::state::App;
use crate::storage::{self, contacts, messages, messages::status, webhooks};

/// `clinic.*.>`: patients, staff and inbound messages; other clinic events are not ours.
pub struct Clinic {
    pub app: App,
}

impl Handler for Clinic {
    async fn handle(&self, conn: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        match event.event_type() {
            "patient.upserted" => patient_upserted(conn, event.decode()?, event.occurred_at).await,
            "staff.upserted" => staff_upserted(conn, event.decode()?, event.occurred_at).await,
            "message.received" => {
                let m: MessageReceived = event.decode()?;
                let channel = Channel::from_i32(m.channel).unwrap_or(Channel::Sms);
                inbound::apply(
                    &self.app,
                    conn,
                    &event.tenant_id,
                    InboundMessage {
                        patient_id: m.patient_id,
                        channel,
                        from: m.from,
                        text: m.text,
                        provider_message_id: if m.provider_message_id.is_empty() {
                            format!("event:{}", event.event_id)
                        } else {
                            m.provider_message_id
                        },
                        received_at: event.occurred_at,
                    },
                )
                .await
                .map_err(handler_error)
            }
            _ => Ok(()),
        }
    }
}

/// What the runner does with an error of the inbound path: retry what may pass later (the database
/// unreachable, a deadlock), dead-letter what never will (bad input, a constraint or data violation,
/// an event that cannot be published), instead of retrying everything.
fn handler_error(err: crate::error::Error) -> HandlerError {
    use crate::error::Error;
    match err {
        Error::Db(db) => db.into(),
        Error::Outbox(outbox) => outbox.into(),
        Error::Internal(reason) => HandlerError::Transient(reason),
        invalid @ (Error::InvalidArgument { .. }
        | Error::NotFound { .. }
        | Error::AlreadyExists(_)
        | Error::FailedPrecondition { .. }
        | Error::Template(_)) => HandlerError::Invalid(invalid.to_string()),
    }
}

async fn patient_upserted(
    conn: &mut PgConnection,
    p: PatientUpserted,
    occurred_at: DateTime<Utc>,
) -> Result<(), HandlerError> {
    if p.patient_id.is_empty() {
        return Err(HandlerError::Invalid("patient_id is empty".into()));
    }
    // A bad field is dropped (with the patient's id in the log, never the value) rather than refusing the
    // whole record: the name and the other address are still worth having.
    let phone = if p.phone_e164.is_empty() || address::check_e164(&p.phone_e164).is_ok() {
        p.phone_e164
    } else {
        tracing::warn!(patient_id = %p.patient_id, "patient.upserted phone is not E.164; stored without it");
        String::new()
    };
    let email = if p.email.is_empty() || address::check_email(&p.email).is_ok() {
        p.email
    } else {
        tracing::warn!(patient_id = %p.patient_id, "patient.upserted email is malformed; stored without it");
        String::new()
    };
    let zone = if p.time_zone.is_empty() || address::parse_zone(&p.time_zone).is_ok() {
        p.time_zone
    } else {
        tracing::warn!(patient_id = %p.patient_id, "patient.upserted time zone is unknown; the clinic's applies");
        String::new()
    };
    let row = contacts::ContactRow {
        tenant_id: p.tenant_id,
        patient_id: p.patient_id,
        given_name: p.given_name,
        family_name: p.family_name,
        preferred_name: p.preferred_name,
        phone_e164: phone,
        email,
        time_zone: zone,
        preferred_channel: p.preferred_channel,
        language: p.language,
        archived: p.archived,
        source: "clinic_event".into(),
        source_time: occurred_at,
        updated_at: Utc::now(),
    };
    contacts::upsert(conn, &row, true).await?;
    Ok(())
}

async fn staff_upserted(
    conn: &mut PgConnection,
    s: StaffUpserted,
    occurred_at: DateTime<Utc>,
) -> Result<(), HandlerError> {
    if s.staff_id.is_empty() {
        return Err(HandlerError::Invalid("staff_id is empty".into()));
    }
    let email = if s.email.is_empty() || address::check_email(&s.email).is_ok() {
        s.email
    } else {
        tracing::warn!(staff_id = %s.staff_id, "staff.upserted email is malformed; stored without it");
        String::new()
    };
    let row = contacts::StaffRow {
        tenant_id: s.tenant_id,
        staff_id: s.staff_id,
        display_name: s.display_name,
        email,
        role: s.role,
        active: s.active,
        disabled_categories: Vec::new(),
        source_time: occurred_at,
        updated_at: Utc::now(),
    };
    contacts::upsert_staff(conn, &row, true, true).await?;
    Ok(())
}

/// `followup.*.scheduler.notification_requested`.
pub struct Requests {
    pub app: App,
}

impl Handler for Requests {
    async fn handle(&self, conn: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        let request: NotificationRequested = event.decode()?;
        accept_request(&self.app, conn, &event.tenant_id, &event.event_id, request).await
    }
}

/// Turns a request into its message row (or rows, for a webhook to every subscribed endpoint).
pub async fn accept_request(
    _app: &App,
    conn: &mut PgConnection,
    tenant: &str,
    event_id: &str,
    r: NotificationRequested,
) -> Result<(), HandlerError> {
    if r.idempotency_key.is_empty() || r.idempotency_key.len() > 200 {
        return Err(HandlerError::Invalid(
            "idempotency_key must be 1 to 200 characters".into(),
        ));
    }
    let Some(channel) = Channel::from_i32(r.channel) else {
        return Err(HandlerError::Invalid(format!(
            "channel {} is not one of SMS, EMAIL, CHAT, TASK, WEBHOOK",
            r.channel
        )));
    };
    let (patient_id, staff_id, direct) = match r.recipient.as_ref().and_then(|x| x.target.as_ref())
    {
        Some(RecipientTarget::PatientId(p)) => (p.clone(), String::new(), None),
        Some(RecipientTarget::StaffId(s)) => (String::new(), s.clone(), None),
        Some(RecipientTarget::Contact(c)) => (
            String::new(),
            String::new(),
            Some(serde_json::json!({
                "given_name": c.given_name, "family_name": c.family_name,
                "phone_e164": c.phone_e164, "email": c.email, "time_zone": c.time_zone,
            })),
        ),
        None if matches!(channel, Channel::Task | Channel::Webhook) => {
            (String::new(), String::new(), None)
        }
        None => return Err(HandlerError::Invalid("recipient is missing".into())),
    };
    let (plan_id, care_case_id) = case_ids(r.case_ref.as_ref());
    let variables: BTreeMap<String, serde_json::Value> = r
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let task = r.task.as_ref().map(|t| {
        serde_json::json!({
            "title": t.title, "description": t.description,
            "due_time": t.due_time.as_ref().and_then(from_timestamp),
        })
    });
    let now = Utc::now();
    let base = messages::MessageRow {
        tenant_id: tenant.to_string(),
        id: Uuid::now_v7(),
        idempotency_key: Some(r.idempotency_key.clone()),
        channel: channel.as_i32(),
        category: r.category.clone(),
        transactional: r.transactional,
        automated: true,
        patient_id,
        staff_id,
        direct_contact: direct,
        case_plan_id: plan_id,
        case_care_case_id: care_case_id,
        enrollment_id: r.enrollment_id.clone(),
        template_key: r.template_key.clone(),
        variables: serde_json::to_value(&variables).unwrap_or_default(),
        task,
        owner_staff_id: r.owner_staff_id.clone(),
        webhook_endpoint_id: r.webhook_endpoint_id.clone(),
        plan_id: r.plan_id.clone(),
        status: status::QUEUED.into(),
        due_at: Some(now),
        not_before: r.not_before_time.as_ref().and_then(from_timestamp),
        expire_at: r.expire_time.as_ref().and_then(from_timestamp),
        created_at: now,
        requested_by: "scheduler".into(),
        request_event_id: event_id.to_string(),
        ..Default::default()
    };
    let mut rows = vec![base];
    if channel == Channel::Webhook && r.webhook_endpoint_id.is_empty() {
        // One call per subscribed endpoint, each its own intent (and its own retries).
        let endpoints = webhooks::list(conn, tenant, 500, 0).await?;
        let subscribed: Vec<_> = endpoints
            .into_iter()
            .filter(|e| e.enabled && e.subscribed("scheduler.step"))
            .collect();
        if !subscribed.is_empty() {
            let template = rows.remove(0);
            for endpoint in subscribed {
                let mut row = template.clone();
                row.id = Uuid::now_v7();
                row.idempotency_key = Some(format!("{}@{}", r.idempotency_key, endpoint.id));
                row.webhook_endpoint_id = endpoint.id.to_string();
                rows.push(row);
            }
        }
    }
    let mut created = false;
    for row in &rows {
        created |= messages::insert(conn, row).await?;
    }
    if created {
        storage::notify_due(conn).await?;
    }
    Ok(())
}

pub fn case_ids(
    case_ref: Option<&followup_proto::followup::common::v1::CaseRef>,
) -> (String, String) {
    match case_ref.and_then(|c| c.target.as_ref()) {
        Some(Target::PlanId(p)) => (p.clone(), String::new()),
        Some(Target::CareCaseId(c)) => (String::new(), c.clone()),
        None => (String::new(), String::new()),
    }
}

/// Staff alerts: a plan approved (to its owner), and the daily digest (cases' owner_digest).
pub struct Alerts {
    pub app: App,
}

impl Handler for Alerts {
    async fn handle(&self, conn: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        let tenant = event.tenant_id.as_str();
        match event.event_type() {
            "plans.plan_approved" => {
                let p: PlanApproved = event.decode()?;
                if p.owner_staff_id.is_empty() {
                    return Ok(());
                }
                let patient = contacts::get(conn, tenant, &p.patient_id).await?;
                let mut vars = BTreeMap::new();
                vars.insert(
                    "patient_name".to_string(),
                    serde_json::Value::String(
                        patient
                            .map(|c| c.full_name())
                            .unwrap_or_else(|| "A patient".into()),
                    ),
                );
                vars.insert("case_title".into(), "their treatment plan".into());
                staff_alert(
                    &self.app,
                    conn,
                    tenant,
                    &format!(
                        "approval_alert:{}",
                        p.plan_id.clone() + ":" + &p.plan_version.to_string()
                    ),
                    &p.owner_staff_id,
                    "approval_alert",
                    vars,
                    (&p.plan_id, ""),
                    &event.event_id,
                )
                .await
            }
            "cases.owner_digest" => {
                let d: OwnerDigest = event.decode()?;
                let entries: Vec<serde_json::Value> = d
                    .entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "rank": e.rank, "patient_name": e.patient_name, "title": e.title,
                            "status": followup_proto::followup::common::v1::CaseStatus::try_from(e.status)
                                .map(|s| s.as_str_name().trim_start_matches("CASE_STATUS_").to_lowercase().replace('_', " "))
                                .unwrap_or_default(),
                            "value": e.value.as_ref().map(|m| crate::grpc::money_text(m.amount_minor, &m.currency)).unwrap_or_default(),
                            "reason": e.reason,
                        })
                    })
                    .collect();
                let mut vars = BTreeMap::new();
                vars.insert(
                    "digest_date".into(),
                    serde_json::Value::String(d.digest_date.clone()),
                );
                vars.insert("digest_entries".into(), serde_json::Value::Array(entries));
                vars.insert("open_case_count".into(), d.open_case_count.into());
                vars.insert(
                    "waiting_for_response_count".into(),
                    d.waiting_for_response_count.into(),
                );
                staff_alert(
                    &self.app,
                    conn,
                    tenant,
                    &format!("digest:{}:{}", d.owner_staff_id, d.digest_date),
                    &d.owner_staff_id,
                    "daily_digest",
                    vars,
                    ("", ""),
                    &event.event_id,
                )
                .await
            }
            _ => Ok(()),
        }
    }
}

/// An email to a staff member from one of the staff templates (whose key is also its category).
#[allow(clippy::too_many_arguments)]
pub async fn staff_alert(
    _app: &App,
    conn: &mut PgConnection,
    tenant: &str,
    key: &str,
    staff_id: &str,
    template_key: &str,
    vars: BTreeMap<String, serde_json::Value>,
    case: (&str, &str),
    event_id: &str,
) -> Result<(), HandlerError> {
    let now = Utc::now();
    let row = messages::MessageRow {
        tenant_id: tenant.to_string(),
        id: Uuid::now_v7(),
        idempotency_key: Some(key.to_string()),
        channel: Channel::Email.as_i32(),
        category: template_key.to_string(),
        transactional: true,
        automated: true,
        staff_id: staff_id.to_string(),
        case_plan_id: case.0.to_string(),
        case_care_case_id: case.1.to_string(),
        template_key: template_key.to_string(),
        variables: serde_json::to_value(&vars).unwrap_or_default(),
        owner_staff_id: staff_id.to_string(),
        status: status::QUEUED.into(),
        due_at: Some(now),
        created_at: now,
        requested_by: "notifications".into(),
        request_event_id: event_id.to_string(),
        ..Default::default()
    };
    if messages::insert(conn, &row).await? {
        storage::notify_due(conn).await?;
    }
    Ok(())
}
