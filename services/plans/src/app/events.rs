//! The events a plan's transitions publish (proto/followup/events/v1/plans.proto).

use chrono::{DateTime, Utc};
use followup_platform::event::{new_event_id, timestamp};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;

use crate::domain::money::Money;
use crate::domain::plan::{ApprovalChannel, Plan, Status};
use crate::grpc::convert;

fn money(m: Money) -> Option<common::Money> {
    Some(convert::money(m))
}

fn header(plan: &Plan, at: DateTime<Utc>) -> (String, String, Option<prost_types::Timestamp>) {
    (
        new_event_id().to_string(),
        plan.tenant_id.clone(),
        Some(timestamp(at)),
    )
}

pub fn created(plan: &Plan) -> ev::PlanCreated {
    let (event_id, tenant_id, occurred_at) = header(plan, plan.create_time);
    ev::PlanCreated {
        event_id,
        tenant_id,
        occurred_at,
        plan_id: plan.id.to_string(),
        plan_version: plan.version,
        patient_id: plan.patient_id.clone(),
        title: plan.title.clone(),
        created_by_staff_id: plan.created_by.clone(),
        owner_staff_id: plan.owner_staff_id.clone(),
        value: money(plan.totals().total),
        alternative_group_id: plan.alternative_group_id.clone(),
    }
}

pub struct SendFacts<'a> {
    pub by: &'a str,
    pub at: DateTime<Utc>,
    pub sections: Vec<common::PortalSection>,
    pub portal_url: String,
    pub expire: DateTime<Utc>,
    pub delivery_channel: i32,
}

pub fn sent(plan: &Plan, facts: SendFacts<'_>) -> ev::PlanSent {
    let (event_id, tenant_id, occurred_at) = header(plan, facts.at);
    ev::PlanSent {
        event_id,
        tenant_id,
        occurred_at,
        plan_id: plan.id.to_string(),
        plan_version: plan.version,
        patient_id: plan.patient_id.clone(),
        title: plan.title.clone(),
        value: money(plan.totals().total),
        sent_time: Some(timestamp(facts.at)),
        send_count: plan.send_count,
        sent_by_staff_id: facts.by.to_string(),
        owner_staff_id: plan.owner_staff_id.clone(),
        sections: facts.sections.into_iter().map(|s| s as i32).collect(),
        portal_url: facts.portal_url,
        portal_link_expire_time: Some(timestamp(facts.expire)),
        items: plan
            .ordered_items()
            .into_iter()
            .map(|item| ev::PlanItemSummary {
                item_id: item.id.to_string(),
                code: item.code.clone(),
                name: item.code_name.clone(),
                tooth: item.tooth.as_ref().map(convert::tooth),
                visit: item.visit,
                value: money(plan.money(item.price().unwrap_or(0))),
                practitioner_id: item.practitioner_id.clone(),
                depends_on_item_ids: item.depends_on.iter().map(|d| d.to_string()).collect(),
            })
            .collect(),
        images: plan.images.iter().map(convert::image).collect(),
        alternative_group_id: plan.alternative_group_id.clone(),
        quote_expiry_date: convert::date(plan.quote_expiry_date),
        visit_count: plan.visit_count(),
        visits_completed: plan.visits_completed(),
        delivery_channel: facts.delivery_channel,
    }
}

pub fn approved(plan: &Plan) -> ev::PlanApproved {
    let approval = plan.approval.as_ref();
    let at = approval.map(|a| a.at).unwrap_or(plan.update_time);
    let (event_id, tenant_id, occurred_at) = header(plan, at);
    let (approved_by, staff) = match approval.map(|a| a.channel) {
        Some(ApprovalChannel::PatientPortal) => (ev::PlanApprover::Patient, String::new()),
        _ => (
            ev::PlanApprover::Staff,
            approval.map(|a| a.staff_id.clone()).unwrap_or_default(),
        ),
    };
    ev::PlanApproved {
        event_id,
        tenant_id,
        occurred_at,
        plan_id: plan.id.to_string(),
        plan_version: plan.version,
        patient_id: plan.patient_id.clone(),
        approved_by: approved_by as i32,
        approved_by_staff_id: staff,
        value: money(plan.totals().total),
        alternative_group_id: plan.alternative_group_id.clone(),
        owner_staff_id: plan.owner_staff_id.clone(),
    }
}

pub fn revised(plan: &Plan, by: &str) -> ev::PlanRevised {
    let (event_id, tenant_id, occurred_at) = header(plan, plan.create_time);
    ev::PlanRevised {
        event_id,
        tenant_id,
        occurred_at,
        plan_id: plan.id.to_string(),
        plan_version: plan.version,
        previous_plan_version: plan.version - 1,
        patient_id: plan.patient_id.clone(),
        revised_by_staff_id: by.to_string(),
        reason: plan.revision_reason.clone(),
        value: money(plan.totals().total),
    }
}

pub fn item_completed(
    plan: &Plan,
    item_id: uuid::Uuid,
    at: DateTime<Utc>,
) -> ev::PlanItemCompleted {
    let (event_id, tenant_id, occurred_at) = header(plan, at);
    let totals = plan.totals();
    let item = plan.item(item_id);
    ev::PlanItemCompleted {
        event_id,
        tenant_id,
        occurred_at,
        plan_id: plan.id.to_string(),
        plan_version: plan.version,
        patient_id: plan.patient_id.clone(),
        item_id: item_id.to_string(),
        code: item.map(|i| i.code.clone()).unwrap_or_default(),
        visit: item.map(|i| i.visit).unwrap_or_default(),
        value: money(plan.money(item.and_then(|i| i.price()).unwrap_or(0))),
        completed_by_staff_id: item.map(|i| i.completed_by.clone()).unwrap_or_default(),
        completed_value: money(totals.completed),
        remaining_value: money(totals.remaining),
        visits_completed: plan.visits_completed(),
        visit_count: plan.visit_count(),
        items_completed: plan.items_completed(),
        item_count: plan.items.len() as i32,
    }
}

pub fn completed(plan: &Plan) -> ev::PlanCompleted {
    let (event_id, tenant_id, occurred_at) =
        header(plan, plan.complete_time.unwrap_or(plan.update_time));
    ev::PlanCompleted {
        event_id,
        tenant_id,
        occurred_at,
        plan_id: plan.id.to_string(),
        plan_version: plan.version,
        patient_id: plan.patient_id.clone(),
        value: money(plan.totals().total),
    }
}

pub fn cancelled(plan: &Plan, previous: Status) -> ev::PlanCancelled {
    let (event_id, tenant_id, occurred_at) =
        header(plan, plan.cancel_time.unwrap_or(plan.update_time));
    ev::PlanCancelled {
        event_id,
        tenant_id,
        occurred_at,
        plan_id: plan.id.to_string(),
        plan_version: plan.version,
        patient_id: plan.patient_id.clone(),
        reason: plan.cancel_reason.clone(),
        cancelled_by_staff_id: plan.cancelled_by.clone(),
        remaining_value: money(plan.totals().remaining),
        previous_status: previous.as_str().to_string(),
    }
}
