//! The events a message produces, built from its row.

use chrono::Utc;
use followup_platform::event::{new_event_id, timestamp};
use followup_proto::followup::common::v1::{CaseRef, case_ref::Target};
use followup_proto::followup::events::v1::{
    MessageDelivered, MessageFailed, MessageRef, MessageSent, MessageSuppressed, TaskCreated,
};

use crate::storage::messages::{MessageRow, TaskRow};

pub fn case_ref(m: &MessageRow) -> Option<CaseRef> {
    case_ref_of(&m.case_plan_id, &m.case_care_case_id)
}

pub fn case_ref_of(plan_id: &str, care_case_id: &str) -> Option<CaseRef> {
    if !plan_id.is_empty() {
        Some(CaseRef {
            target: Some(Target::PlanId(plan_id.to_string())),
        })
    } else if !care_case_id.is_empty() {
        Some(CaseRef {
            target: Some(Target::CareCaseId(care_case_id.to_string())),
        })
    } else {
        None
    }
}

pub fn message_ref(m: &MessageRow) -> MessageRef {
    MessageRef {
        message_id: m.id.to_string(),
        idempotency_key: m.idempotency_key.clone().unwrap_or_default(),
        channel: m.channel,
        category: m.category.clone(),
        patient_id: m.patient_id.clone(),
        staff_id: m.staff_id.clone(),
        case_ref: case_ref(m),
        enrollment_id: m.enrollment_id.clone(),
        template_key: m.template_key.clone(),
    }
}

pub fn sent(m: &MessageRow) -> MessageSent {
    MessageSent {
        event_id: new_event_id().to_string(),
        tenant_id: m.tenant_id.clone(),
        occurred_at: Some(timestamp(m.sent_at.unwrap_or_else(Utc::now))),
        message: Some(message_ref(m)),
        attempt: m.attempt_count.max(1),
        provider: m.provider.clone(),
        provider_message_id: m.provider_message_id.clone(),
        segment_count: m.segment_count,
    }
}

pub fn delivered(m: &MessageRow) -> MessageDelivered {
    MessageDelivered {
        event_id: new_event_id().to_string(),
        tenant_id: m.tenant_id.clone(),
        occurred_at: Some(timestamp(m.delivered_at.unwrap_or_else(Utc::now))),
        message: Some(message_ref(m)),
        provider_message_id: m.provider_message_id.clone(),
    }
}

pub fn failed(m: &MessageRow, http_status: i32, permanent: bool) -> MessageFailed {
    MessageFailed {
        event_id: new_event_id().to_string(),
        tenant_id: m.tenant_id.clone(),
        occurred_at: Some(timestamp(Utc::now())),
        message: Some(message_ref(m)),
        attempts: m.attempt_count,
        reason: m.failure_reason.clone(),
        http_status,
        permanent,
    }
}

pub fn suppressed(m: &MessageRow) -> MessageSuppressed {
    MessageSuppressed {
        event_id: new_event_id().to_string(),
        tenant_id: m.tenant_id.clone(),
        occurred_at: Some(timestamp(Utc::now())),
        message: Some(message_ref(m)),
        reason: m.suppression_reason,
        detail: m.suppression_detail.clone(),
    }
}

pub fn task_created(t: &TaskRow) -> TaskCreated {
    TaskCreated {
        event_id: new_event_id().to_string(),
        tenant_id: t.tenant_id.clone(),
        occurred_at: Some(timestamp(t.created_at)),
        task_id: t.id.to_string(),
        owner_staff_id: t.owner_staff_id.clone(),
        title: t.title.clone(),
        due_time: t.due_at.map(timestamp),
        patient_id: t.patient_id.clone(),
        case_ref: case_ref_of(&t.case_plan_id, &t.case_care_case_id),
        idempotency_key: t.idempotency_key.clone(),
        enrollment_id: t.enrollment_id.clone(),
    }
}
