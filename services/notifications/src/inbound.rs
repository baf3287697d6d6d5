//! An inbound message, from `clinic.<tenant>.message.received` or a provider's inbound callback: stored
//! in the sender's conversation, then read as a consent keyword, a plain-words revocation, HELP, or a
//! reply (published as patient_replied, which stops sequences and reaches the case).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use followup_platform::event::{new_event_id, timestamp};
use followup_platform::outbox::enqueue_event;
use followup_proto::followup::common::v1::ConsentSource;
use followup_proto::followup::events::v1::{
    ContactOptedIn, ContactOptedOut, PatientReplied, ReplyKind,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::INFO;
use crate::delivery::events::{case_ref, message_ref};
use crate::domain::Channel;
use crate::domain::consent;
use crate::domain::inbound::{self, Inbound};
use crate::error::Result;
use crate::state::App;
use crate::storage::{self, contacts, messages, messages::status, settings};

pub struct InboundMessage {
    pub patient_id: String,
    pub channel: Channel,
    /// The sender's phone (SMS) or email; used when patient_id is empty.
    pub from: String,
    pub text: String,
    /// For dedupe: a provider delivers the same message again after a timeout.
    pub provider_message_id: String,
    pub received_at: DateTime<Utc>,
}

/// Classification numbers of followup.notifications.v1.InboundClassification.
fn classification_number(kind: Inbound) -> i32 {
    match kind {
        Inbound::Reply(_) => 1,
        Inbound::OptOutKeyword => 2,
        Inbound::OptOutClassified => 3,
        Inbound::OptIn => 4,
        Inbound::Help => 5,
    }
}

pub async fn apply(
    app: &App,
    conn: &mut PgConnection,
    tenant: &str,
    m: InboundMessage,
) -> Result<()> {
    // A phone shared by a family reaches every patient with it: STOP from it stops them all.
    let senders: Vec<contacts::ContactRow> = if !m.patient_id.is_empty() {
        contacts::get(conn, tenant, &m.patient_id)
            .await?
            .into_iter()
            .collect()
    } else if m.channel == Channel::Sms && !m.from.is_empty() {
        contacts::find_by_phone(conn, tenant, &m.from).await?
    } else if m.channel == Channel::Email && !m.from.is_empty() {
        contacts::find_by_email(conn, tenant, &m.from).await?
    } else {
        Vec::new()
    };
    let Some(first) = senders.first() else {
        tracing::warn!(tenant, provider_message_id = %m.provider_message_id, "inbound message from an unknown sender; ignored");
        return Ok(());
    };
    let log: Vec<_> = contacts::consent_log(conn, tenant, &first.patient_id)
        .await?
        .iter()
        .map(|r| r.record())
        .collect();
    let opted_out = match m.channel {
        Channel::Sms => consent::sms_opted_out(&log),
        other => !consent::allowed(&log, other, ""),
    };
    let kind = inbound::classify(&m.text, opted_out);
    let inbound_id = Uuid::now_v7();
    let stored = messages::put_conversation(
        conn,
        &messages::ConversationRow {
            tenant_id: tenant.to_string(),
            id: inbound_id,
            patient_id: first.patient_id.clone(),
            direction: 1,
            channel: m.channel.as_i32(),
            text: m.text.clone(),
            created_at: m.received_at,
            author_staff_id: String::new(),
            classification: classification_number(kind),
            read: false,
            message_id: None,
            provider_message_id: m.provider_message_id.clone(),
        },
    )
    .await?;
    if !stored {
        return Ok(());
    }
    for other in senders.iter().skip(1) {
        messages::put_conversation(
            conn,
            &messages::ConversationRow {
                tenant_id: tenant.to_string(),
                id: Uuid::now_v7(),
                patient_id: other.patient_id.clone(),
                direction: 1,
                channel: m.channel.as_i32(),
                text: m.text.clone(),
                created_at: m.received_at,
                author_staff_id: String::new(),
                classification: classification_number(kind),
                read: false,
                message_id: None,
                provider_message_id: String::new(),
            },
        )
        .await?;
    }
    tracing::info!(tenant, patient_id = %first.patient_id, message_id = %inbound_id, ?kind, "inbound message");
    match kind {
        Inbound::OptOutKeyword | Inbound::OptOutClassified | Inbound::OptIn => {
            let granted = kind == Inbound::OptIn;
            let source = match kind {
                Inbound::OptOutClassified => ConsentSource::ClassifiedReply,
                _ => ConsentSource::KeywordReply,
            };
            for contact in &senders {
                record_consent(
                    conn,
                    tenant,
                    &contact.patient_id,
                    Some(m.channel),
                    "",
                    granted,
                    source,
                    "",
                    &inbound_id.to_string(),
                    &m.text,
                    "",
                )
                .await?;
            }
        }
        Inbound::Help => {
            let s = settings::get(conn, tenant, &app.settings.default_time_zone).await?;
            let now = Utc::now();
            let row = messages::MessageRow {
                tenant_id: tenant.to_string(),
                id: Uuid::now_v7(),
                idempotency_key: Some(format!("help:{inbound_id}")),
                channel: m.channel.as_i32(),
                category: crate::delivery::HELP_CATEGORY.into(),
                transactional: true,
                automated: false,
                patient_id: first.patient_id.clone(),
                rendered_body: s.help_text(),
                status: status::QUEUED.into(),
                due_at: Some(now),
                created_at: now,
                requested_by: "notifications".into(),
                ..Default::default()
            };
            messages::insert(conn, &row).await?;
            storage::notify_due(conn).await?;
        }
        Inbound::Reply(reply) => {
            let replied_to =
                messages::latest_sent_to(conn, tenant, &first.patient_id, m.channel.as_i32())
                    .await?;
            let event = PatientReplied {
                event_id: new_event_id().to_string(),
                tenant_id: tenant.to_string(),
                occurred_at: Some(timestamp(m.received_at)),
                patient_id: first.patient_id.clone(),
                channel: m.channel.as_i32(),
                message_id: inbound_id.to_string(),
                text: m.text.clone(),
                kind: match reply {
                    inbound::ReplyKind::Text => ReplyKind::Text,
                    inbound::ReplyKind::Affirmative => ReplyKind::Affirmative,
                    inbound::ReplyKind::Negative => ReplyKind::Negative,
                } as i32,
                in_reply_to: replied_to.as_ref().map(message_ref),
                case_ref: replied_to.as_ref().and_then(case_ref),
            };
            enqueue_event(conn, INFO.name, &event).await?;
            if let Some(owner) = replied_to
                .as_ref()
                .map(|r| r.owner_staff_id.clone())
                .filter(|o| !o.is_empty())
            {
                let mut vars = BTreeMap::new();
                vars.insert(
                    "patient_name".to_string(),
                    serde_json::Value::String(first.full_name()),
                );
                vars.insert(
                    "patient_reply".to_string(),
                    serde_json::Value::String(m.text.clone()),
                );
                let (plan, care) = replied_to
                    .as_ref()
                    .map(|r| (r.case_plan_id.clone(), r.case_care_case_id.clone()))
                    .unwrap_or_default();
                crate::consumers::staff_alert(
                    app,
                    conn,
                    tenant,
                    &format!("reply_alert:{inbound_id}"),
                    &owner,
                    "reply_alert",
                    vars,
                    (&plan, &care),
                    "",
                )
                .await
                .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// Appends a consent change to the log and announces it (contact_opted_out / contact_opted_in).
#[allow(clippy::too_many_arguments)]
pub async fn record_consent(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    channel: Option<Channel>,
    category: &str,
    granted: bool,
    source: ConsentSource,
    staff_id: &str,
    message_id: &str,
    text: &str,
    note: &str,
) -> Result<contacts::ConsentRow> {
    let now = Utc::now();
    let row = contacts::ConsentRow {
        tenant_id: tenant.to_string(),
        id: Uuid::now_v7(),
        patient_id: patient_id.to_string(),
        channel: channel.map_or(0, Channel::as_i32),
        category: category.to_string(),
        granted,
        source: source as i32,
        staff_id: staff_id.to_string(),
        message_id: message_id.to_string(),
        text: text.to_string(),
        note: note.to_string(),
        occurred_at: now,
    };
    contacts::append_consent(conn, &row).await?;
    if granted {
        enqueue_event(
            conn,
            INFO.name,
            &ContactOptedIn {
                event_id: new_event_id().to_string(),
                tenant_id: tenant.to_string(),
                occurred_at: Some(timestamp(now)),
                patient_id: patient_id.to_string(),
                channel: row.channel,
                category: category.to_string(),
                source: source as i32,
                changed_by_staff_id: staff_id.to_string(),
                message_id: message_id.to_string(),
            },
        )
        .await?;
    } else {
        enqueue_event(
            conn,
            INFO.name,
            &ContactOptedOut {
                event_id: new_event_id().to_string(),
                tenant_id: tenant.to_string(),
                occurred_at: Some(timestamp(now)),
                patient_id: patient_id.to_string(),
                channel: row.channel,
                category: category.to_string(),
                source: source as i32,
                changed_by_staff_id: staff_id.to_string(),
                message_id: message_id.to_string(),
            },
        )
        .await?;
    }
    tracing::info!(
        tenant,
        patient_id,
        granted,
        channel = row.channel,
        "consent recorded"
    );
    Ok(row)
}
