//! Rows to API messages.

use followup_platform::event::timestamp;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::notifications::v1 as api;

use crate::delivery::events::case_ref_of;
use crate::domain::templates as t;
use crate::storage::contacts::{ConsentRow, ContactRow, StaffRow};
use crate::storage::messages::{AttemptRow, ConversationView, MessageRow, TaskRow, status};
use crate::storage::settings::{CategoryRow, SettingsRow};
use crate::storage::templates::Resolved;
use crate::storage::webhooks::EndpointRow;

pub fn contact(c: &ContactRow) -> api::Contact {
    api::Contact {
        patient_id: c.patient_id.clone(),
        given_name: c.given_name.clone(),
        family_name: c.family_name.clone(),
        preferred_name: c.preferred_name.clone(),
        phone_e164: c.phone_e164.clone(),
        email: c.email.clone(),
        time_zone: c.time_zone.clone(),
        preferred_channel: c.preferred_channel,
        language: c.language.clone(),
        archived: c.archived,
        source: c.source.clone(),
        update_time: Some(timestamp(c.updated_at)),
    }
}

pub fn staff(s: &StaffRow) -> api::StaffContact {
    api::StaffContact {
        staff_id: s.staff_id.clone(),
        display_name: s.display_name.clone(),
        email: s.email.clone(),
        role: s.role,
        active: s.active,
        disabled_categories: s.disabled_categories.clone(),
        update_time: Some(timestamp(s.updated_at)),
    }
}

pub fn consent_event(c: &ConsentRow) -> api::ConsentEvent {
    api::ConsentEvent {
        consent_event_id: c.id.to_string(),
        time: Some(timestamp(c.occurred_at)),
        channel: c.channel,
        category: c.category.clone(),
        granted: c.granted,
        source: c.source,
        staff_id: c.staff_id.clone(),
        message_id: c.message_id.clone(),
        text: c.text.clone(),
        note: c.note.clone(),
    }
}

pub fn category(c: &CategoryRow, built_in: bool) -> api::Category {
    api::Category {
        key: c.key.clone(),
        display_name: c.display_name.clone(),
        description: c.description.clone(),
        audience: c.audience,
        transactional: c.transactional,
        built_in,
    }
}

pub fn settings(s: &SettingsRow) -> api::DeliverySettings {
    api::DeliverySettings {
        time_zone: s.time_zone.clone(),
        quiet_hours_start: s.quiet_hours_start.clone(),
        quiet_hours_end: s.quiet_hours_end.clone(),
        weekly_cap: s.weekly_cap,
        cap_deferral_limit: Some(prost_types::Duration {
            seconds: s.cap_deferral_limit_secs,
            nanos: 0,
        }),
        clinic_name: s.clinic_name.clone(),
        clinic_phone: s.clinic_phone.clone(),
        help_reply: s.help_reply.clone(),
        default_task_owner_staff_id: s.default_task_owner_staff_id.clone(),
        email_from: s.email_from.clone(),
        sms_unknown_outcome: s.sms_unknown_outcome,
        email_unknown_outcome: s.email_unknown_outcome,
        webhook_unknown_outcome: s.webhook_unknown_outcome,
    }
}

pub fn template(r: &Resolved) -> api::Template {
    let variables = t::validate(&r.text()).unwrap_or_default();
    api::Template {
        template_id: r.row.id.to_string(),
        key: r.row.key.clone(),
        channel: r.row.channel,
        name: r.row.name.clone(),
        subject: r.row.subject.clone(),
        body: r.row.body.clone(),
        html_body: r.row.html_body.clone(),
        category: r.row.category.clone(),
        enabled: r.row.enabled,
        built_in: r.built_in,
        variables,
        update_time: (!r.built_in).then(|| timestamp(r.row.updated_at)),
    }
}

pub fn status_number(s: &str) -> i32 {
    use api::MessageStatus as S;
    (match s {
        status::QUEUED | status::SENDING => S::Queued,
        status::DEFERRED => S::Deferred,
        status::RETRYING => S::Retrying,
        status::SENT => S::Sent,
        status::DELIVERED => S::Delivered,
        status::FAILED => S::Failed,
        status::SUPPRESSED => S::Suppressed,
        status::POSSIBLY_SENT => S::PossiblySent,
        _ => S::Unspecified,
    }) as i32
}

/// The stored statuses a MessageStatus filter means.
pub fn status_names(n: i32) -> Vec<&'static str> {
    use api::MessageStatus as S;
    match S::try_from(n) {
        Ok(S::Queued) => vec![status::QUEUED, status::SENDING],
        Ok(S::Deferred) => vec![status::DEFERRED],
        Ok(S::Retrying) => vec![status::RETRYING],
        Ok(S::Sent) => vec![status::SENT],
        Ok(S::Delivered) => vec![status::DELIVERED],
        Ok(S::Failed) => vec![status::FAILED],
        Ok(S::Suppressed) => vec![status::SUPPRESSED],
        Ok(S::PossiblySent) => vec![status::POSSIBLY_SENT],
        _ => vec![],
    }
}

pub fn rendered(m: &MessageRow) -> common::RenderedMessage {
    common::RenderedMessage {
        channel: m.channel,
        subject: m.rendered_subject.clone(),
        body: m.rendered_body.clone(),
        html_body: m.rendered_html.clone(),
        encoding: m.sms_encoding,
        segment_count: m.segment_count,
        character_count: m.character_count,
    }
}

pub fn message(m: &MessageRow) -> api::Message {
    let st = status_number(&m.status);
    api::Message {
        message_id: m.id.to_string(),
        idempotency_key: m.idempotency_key.clone().unwrap_or_default(),
        channel: m.channel,
        category: m.category.clone(),
        transactional: m.transactional,
        patient_id: m.patient_id.clone(),
        staff_id: m.staff_id.clone(),
        to_address: m.to_address.clone(),
        case_ref: case_ref_of(&m.case_plan_id, &m.case_care_case_id),
        enrollment_id: m.enrollment_id.clone(),
        template_key: m.template_key.clone(),
        rendered: Some(rendered(m)),
        status: st,
        deferral_reason: if m.status == status::DEFERRED {
            m.deferral_reason
        } else {
            0
        },
        deferred_until: (m.status == status::DEFERRED)
            .then(|| m.due_at.map(timestamp))
            .flatten(),
        next_attempt_time: (m.status == status::RETRYING)
            .then(|| m.due_at.map(timestamp))
            .flatten(),
        suppression_reason: m.suppression_reason,
        failure_reason: m.failure_reason.clone(),
        provider: m.provider.clone(),
        provider_message_id: m.provider_message_id.clone(),
        attempt_count: m.attempt_count,
        create_time: Some(timestamp(m.created_at)),
        sent_time: m.sent_at.map(timestamp),
        delivered_time: m.delivered_at.map(timestamp),
        requested_by: m.requested_by.clone(),
    }
}

pub fn attempt(a: &AttemptRow) -> api::DeliveryAttempt {
    let ms = |v: i64| prost_types::Duration {
        seconds: v / 1000,
        nanos: ((v % 1000) * 1_000_000) as i32,
    };
    api::DeliveryAttempt {
        attempt: a.attempt,
        start_time: Some(timestamp(a.started_at)),
        latency: Some(ms(a.latency_ms)),
        outcome: a.outcome,
        status_code: a.status_code,
        detail: a.detail.clone(),
        retry_after: a.retry_after_ms.map(ms),
    }
}

pub fn conversation_message(c: &ConversationView) -> api::ConversationMessage {
    let r = &c.row;
    api::ConversationMessage {
        message_id: r.message_id.unwrap_or(r.id).to_string(),
        patient_id: r.patient_id.clone(),
        direction: r.direction,
        channel: r.channel,
        text: r.text.clone(),
        time: Some(timestamp(r.created_at)),
        author_staff_id: r.author_staff_id.clone(),
        classification: r.classification,
        read: r.read,
        status: c.status.as_deref().map(status_number).unwrap_or(0),
    }
}

pub fn task(t: &TaskRow) -> api::Task {
    api::Task {
        task_id: t.id.to_string(),
        owner_staff_id: t.owner_staff_id.clone(),
        title: t.title.clone(),
        description: t.description.clone(),
        patient_id: t.patient_id.clone(),
        case_ref: case_ref_of(&t.case_plan_id, &t.case_care_case_id),
        due_time: t.due_at.map(timestamp),
        state: t.state,
        outcome: t.outcome.clone(),
        note: t.note.clone(),
        completed_by_staff_id: t.completed_by_staff_id.clone(),
        complete_time: t.completed_at.map(timestamp),
        create_time: Some(timestamp(t.created_at)),
        idempotency_key: t.idempotency_key.clone(),
        enrollment_id: t.enrollment_id.clone(),
    }
}

pub fn endpoint(e: &EndpointRow) -> api::WebhookEndpoint {
    api::WebhookEndpoint {
        webhook_endpoint_id: e.id.to_string(),
        url: e.url.clone(),
        description: e.description.clone(),
        event_types: e.event_types.clone(),
        enabled: e.enabled,
        create_time: Some(timestamp(e.created_at)),
        update_time: Some(timestamp(e.updated_at)),
        secret_rotate_time: e.secret_rotated_at.map(timestamp),
        previous_secret_expire_time: e.previous_secret_expires_at.map(timestamp),
    }
}
