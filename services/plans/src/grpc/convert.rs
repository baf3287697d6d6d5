//! Domain ↔ protobuf.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::NaiveDate;
use followup_platform::event::{from_timestamp, timestamp};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::plans::v1 as pb;

use crate::domain::graph::{self, TreeNode};
use crate::domain::money::Money;
use crate::domain::plan::{ApprovalChannel, Image, ImageKind, Item, Plan, Status, Totals};
use crate::domain::tooth::{Numbering, Tooth};
use crate::error::{PlansError, Result};

pub fn money(m: Money) -> common::Money {
    common::Money {
        amount_minor: m.minor,
        currency: m.currency.as_str().to_string(),
    }
}

pub fn tooth(t: &Tooth) -> common::Tooth {
    common::Tooth {
        numbering: match t.numbering {
            Numbering::Universal => common::ToothNumbering::Universal as i32,
            Numbering::Fdi => common::ToothNumbering::Fdi as i32,
        },
        number: t.number.clone(),
        surfaces: t.surfaces.clone(),
    }
}

/// A tooth from a request; an empty message means "no tooth".
pub fn tooth_in(t: Option<&common::Tooth>) -> Result<Option<Tooth>> {
    let Some(t) = t else { return Ok(None) };
    if t.numbering == 0 && t.number.trim().is_empty() && t.surfaces.trim().is_empty() {
        return Ok(None);
    }
    let numbering = match common::ToothNumbering::try_from(t.numbering) {
        Ok(common::ToothNumbering::Universal) => Some(Numbering::Universal),
        Ok(common::ToothNumbering::Fdi) => Some(Numbering::Fdi),
        _ => None,
    };
    Tooth::parse(numbering, &t.number, &t.surfaces).map(Some)
}

pub fn image(i: &Image) -> common::ImageRef {
    common::ImageRef {
        image_id: i.image_id.clone(),
        url: i.url.clone(),
        kind: match i.kind {
            ImageKind::Unspecified => common::ImageKind::Unspecified,
            ImageKind::Photo => common::ImageKind::Photo,
            ImageKind::Radiograph => common::ImageKind::Radiograph,
            ImageKind::Model3d => common::ImageKind::ImageKind3dModel,
            ImageKind::Other => common::ImageKind::Other,
        } as i32,
        caption: i.caption.clone(),
    }
}

pub fn image_in(i: &common::ImageRef) -> Image {
    Image {
        image_id: i.image_id.trim().to_string(),
        url: i.url.trim().to_string(),
        kind: match common::ImageKind::try_from(i.kind) {
            Ok(common::ImageKind::Photo) => ImageKind::Photo,
            Ok(common::ImageKind::Radiograph) => ImageKind::Radiograph,
            Ok(common::ImageKind::ImageKind3dModel) => ImageKind::Model3d,
            Ok(common::ImageKind::Other) => ImageKind::Other,
            _ => ImageKind::Unspecified,
        },
        caption: i.caption.trim().to_string(),
    }
}

pub fn date(d: Option<NaiveDate>) -> String {
    d.map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

pub fn date_in(field: &str, s: &str) -> Result<Option<NaiveDate>> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map(Some)
        .map_err(|_| PlansError::invalid(field, format!("`{s}` is not a date YYYY-MM-DD")))
}

pub fn status(s: Status) -> pb::PlanStatus {
    match s {
        Status::Draft => pb::PlanStatus::Draft,
        Status::Sent => pb::PlanStatus::Sent,
        Status::Approved => pb::PlanStatus::Approved,
        Status::Completed => pb::PlanStatus::Completed,
        Status::Cancelled => pb::PlanStatus::Cancelled,
    }
}

pub fn status_in(value: i32) -> Result<Status> {
    match pb::PlanStatus::try_from(value) {
        Ok(pb::PlanStatus::Draft) => Ok(Status::Draft),
        Ok(pb::PlanStatus::Sent) => Ok(Status::Sent),
        Ok(pb::PlanStatus::Approved) => Ok(Status::Approved),
        Ok(pb::PlanStatus::Completed) => Ok(Status::Completed),
        Ok(pb::PlanStatus::Cancelled) => Ok(Status::Cancelled),
        _ => Err(PlansError::invalid(
            "statuses",
            format!("{value} is not a plan status"),
        )),
    }
}

pub fn totals(t: &Totals) -> pb::PlanTotals {
    pb::PlanTotals {
        total: Some(money(t.total)),
        completed: Some(money(t.completed)),
        remaining: Some(money(t.remaining)),
        discount: Some(money(t.discount)),
        visits: t
            .visits
            .iter()
            .map(|v| pb::VisitSubtotal {
                visit: v.visit,
                subtotal: Some(money(v.subtotal)),
                item_count: v.item_count,
                completed_item_count: v.completed_item_count,
            })
            .collect(),
    }
}

pub fn item(plan: &Plan, i: &Item) -> pb::PlanItem {
    pb::PlanItem {
        item_id: i.id.to_string(),
        code: i.code.clone(),
        code_name: i.code_name.clone(),
        tooth: i.tooth.as_ref().map(tooth),
        practitioner_id: i.practitioner_id.clone(),
        schedule_fee: i.schedule_fee.map(|f| money(plan.money(f))),
        price: i.price().map(|p| money(plan.money(p))),
        price_override_reason: i.price_override_reason.clone(),
        visit: i.visit,
        depends_on_item_ids: i.depends_on.iter().map(|d| d.to_string()).collect(),
        note: i.note.clone(),
        status: if i.is_completed() {
            pb::PlanItemStatus::Completed
        } else {
            pb::PlanItemStatus::Planned
        } as i32,
        complete_time: i.complete_time.map(timestamp),
        completed_by_staff_id: i.completed_by.clone(),
    }
}

fn node(n: TreeNode<uuid::Uuid>) -> pb::PlanItemNode {
    pb::PlanItemNode {
        item_id: n.id.to_string(),
        dependents: n.dependents.into_iter().map(node).collect(),
    }
}

/// The plan as the API shows it; `full` adds items and the tree.
pub fn plan(p: &Plan, full: bool) -> pb::Plan {
    let ordered = p.ordered_items();
    let (items, tree) = if full {
        let nodes: Vec<(uuid::Uuid, Vec<uuid::Uuid>)> = ordered
            .iter()
            .map(|i| (i.id, i.depends_on.clone()))
            .collect();
        (
            ordered.iter().map(|i| item(p, i)).collect(),
            graph::tree(&nodes).into_iter().map(node).collect(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    pb::Plan {
        plan_id: p.id.to_string(),
        plan_version: p.version,
        patient_id: p.patient_id.clone(),
        title: p.title.clone(),
        status: status(p.status) as i32,
        fee_schedule_id: p.fee_schedule_id.map(|s| s.to_string()).unwrap_or_default(),
        currency: p.currency.as_str().to_string(),
        owner_staff_id: p.owner_staff_id.clone(),
        alternative_group_id: p.alternative_group_id.clone(),
        quote_expiry_date: date(p.quote_expiry_date),
        internal_note: p.internal_note.clone(),
        patient_note: p.patient_note.clone(),
        images: p.images.iter().map(image).collect(),
        items,
        item_tree: tree,
        totals: Some(totals(&p.totals())),
        created_by_staff_id: p.created_by.clone(),
        create_time: Some(timestamp(p.create_time)),
        update_time: Some(timestamp(p.update_time)),
        last_send_time: p.last_send_time.map(timestamp),
        send_count: p.send_count,
        approval: p.approval.as_ref().map(|a| pb::Approval {
            channel: match a.channel {
                ApprovalChannel::Staff => pb::ApprovalChannel::Staff,
                ApprovalChannel::PatientPortal => pb::ApprovalChannel::PatientPortal,
            } as i32,
            approved_by_staff_id: a.staff_id.clone(),
            approve_time: Some(timestamp(a.at)),
        }),
        complete_time: p.complete_time.map(timestamp),
        cancel_time: p.cancel_time.map(timestamp),
        cancel_reason: p.cancel_reason.clone(),
        revision_reason: p.revision_reason.clone(),
        superseded_time: p.superseded.as_ref().map(|s| timestamp(s.at)),
        superseded_by_plan_id: p
            .superseded
            .as_ref()
            .and_then(|s| s.by_plan_id)
            .map(|id| id.to_string())
            .unwrap_or_default(),
    }
}

pub fn time_in(
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    match t {
        None => Ok(None),
        Some(t) => from_timestamp(t)
            .map(Some)
            .ok_or_else(|| PlansError::invalid(field, "not a valid timestamp")),
    }
}

/// An opaque page token for a position (a code, an id, an offset).
pub fn page_token(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position.as_bytes())
}

pub fn page_position(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| {
            PlansError::invalid(
                "page_token",
                "not a token this API returned; start again with an empty page_token",
            )
        })
}

/// page_size: 0 = `default`, at most `max`, never negative.
pub fn page_size(value: i32, default: usize, max: usize) -> Result<usize> {
    match value {
        0 => Ok(default),
        v if v < 0 => Err(PlansError::invalid("page_size", "must not be negative")),
        v => Ok((v as usize).min(max)),
    }
}

/// The paths of an update mask, each among `allowed`; the mask is required.
pub fn mask_paths(mask: Option<&prost_types::FieldMask>, allowed: &[&str]) -> Result<Vec<String>> {
    let paths = mask.map(|m| m.paths.clone()).unwrap_or_default();
    if paths.is_empty() {
        return Err(PlansError::invalid(
            "update_mask",
            format!(
                "required: name the fields to change among {}",
                allowed.join(", ")
            ),
        ));
    }
    for path in &paths {
        if !allowed.contains(&path.as_str()) {
            return Err(PlansError::invalid(
                "update_mask",
                format!(
                    "`{path}` cannot be updated; use paths among {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(paths)
}
