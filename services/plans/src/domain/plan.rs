//! A treatment plan (one version of it), its items and its lifecycle:
//! DRAFT → SENT → APPROVED → COMPLETED, or CANCELLED from any open state; a SENT or APPROVED plan is
//! revised into a new DRAFT version. Only a DRAFT is edited.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::alternatives::Supersession;
use super::graph;
use super::money::{Currency, Money};
use super::tooth::Tooth;
use crate::error::{PlansError, Result};

pub const MAX_TITLE: usize = 200;
pub const MAX_REASON: usize = 500;
pub const MAX_NOTE: usize = 2000;
pub const MAX_ITEMS: usize = 200;
pub const MAX_ID: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Draft,
    Sent,
    Approved,
    Completed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Draft,
        Status::Sent,
        Status::Approved,
        Status::Completed,
        Status::Cancelled,
    ];

    /// The stored and published name (followup.plans.v1.PlanStatus without its prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "DRAFT",
            Status::Sent => "SENT",
            Status::Approved => "APPROVED",
            Status::Completed => "COMPLETED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        matches!(self, Status::Draft | Status::Sent | Status::Approved)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemStatus {
    Planned,
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalChannel {
    Staff,
    PatientPortal,
}

impl ApprovalChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalChannel::Staff => "staff",
            ApprovalChannel::PatientPortal => "patient_portal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "staff" => Some(ApprovalChannel::Staff),
            "patient_portal" => Some(ApprovalChannel::PatientPortal),
            _ => None,
        }
    }
}

/// What a patient's digital approval leaves on record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentEvidence {
    pub ip: String,
    pub user_agent: String,
    /// The portal link (token id) the patient approved through.
    pub link_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub channel: ApprovalChannel,
    /// The staff id for a staff approval; empty for the patient.
    pub staff_id: String,
    pub at: DateTime<Utc>,
    pub evidence: Option<ConsentEvidence>,
}

/// The kind of an image reference (followup.common.v1.ImageKind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    Unspecified,
    Photo,
    Radiograph,
    #[serde(rename = "3d_model")]
    Model3d,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub image_id: String,
    pub url: String,
    pub kind: ImageKind,
    pub caption: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Stable across versions.
    pub id: Uuid,
    /// Insertion order within the plan; items are shown by (visit, position).
    pub position: i32,
    pub code: String,
    pub code_name: String,
    pub tooth: Option<Tooth>,
    pub practitioner_id: String,
    /// The schedule's fee for the code when the item was priced; None when the schedule has none.
    pub schedule_fee: Option<i64>,
    /// A price set by staff; None means "the schedule fee".
    pub price_override: Option<i64>,
    pub price_override_reason: String,
    pub visit: i32,
    pub depends_on: Vec<Uuid>,
    pub note: String,
    pub status: ItemStatus,
    pub complete_time: Option<DateTime<Utc>>,
    pub completed_by: String,
}

impl Item {
    pub fn new(id: Uuid, code: String, code_name: String) -> Self {
        Self {
            id,
            position: 0,
            code,
            code_name,
            tooth: None,
            practitioner_id: String::new(),
            schedule_fee: None,
            price_override: None,
            price_override_reason: String::new(),
            visit: 0,
            depends_on: Vec::new(),
            note: String::new(),
            status: ItemStatus::Planned,
            complete_time: None,
            completed_by: String::new(),
        }
    }

    /// What the patient pays: the plan's price wins over the single procedure's (schedule) price.
    pub fn price(&self) -> Option<i64> {
        self.price_override.or(self.schedule_fee)
    }

    pub fn is_completed(&self) -> bool {
        self.status == ItemStatus::Completed
    }

    /// Field rules that hold for any item, whatever the plan's state.
    pub fn validate(&self) -> Result<()> {
        let mut violations = Vec::new();
        if let Some(price) = self.price_override {
            if price < 0 {
                violations.push(("price".into(), "must be 0 or more".into()));
            }
            let differs = self.schedule_fee.is_some_and(|fee| fee != price);
            if differs && self.price_override_reason.trim().is_empty() {
                violations.push((
                    "price_override_reason".into(),
                    "say why the price differs from the fee schedule (e.g. \"10% family discount\")"
                        .into(),
                ));
            }
        }
        if self.price_override_reason.chars().count() > MAX_REASON {
            violations.push((
                "price_override_reason".into(),
                format!("at most {MAX_REASON} characters"),
            ));
        }
        if !(0..=99).contains(&self.visit) {
            violations.push((
                "visit".into(),
                "must be between 0 (unassigned) and 99".into(),
            ));
        }
        if self.practitioner_id.chars().count() > MAX_ID {
            violations.push((
                "practitioner_id".into(),
                format!("at most {MAX_ID} characters"),
            ));
        }
        if self.note.chars().count() > MAX_NOTE {
            violations.push(("note".into(), format!("at most {MAX_NOTE} characters")));
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(PlansError::Invalid(violations))
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub tenant_id: String,
    pub id: Uuid,
    pub version: i32,
    pub patient_id: String,
    pub title: String,
    pub status: Status,
    pub fee_schedule_id: Option<Uuid>,
    pub currency: Currency,
    pub owner_staff_id: String,
    pub alternative_group_id: String,
    pub quote_expiry_date: Option<NaiveDate>,
    pub internal_note: String,
    pub patient_note: String,
    pub images: Vec<Image>,
    pub items: Vec<Item>,
    pub created_by: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub last_send_time: Option<DateTime<Utc>>,
    pub send_count: i32,
    pub approval: Option<Approval>,
    pub complete_time: Option<DateTime<Utc>>,
    pub cancel_time: Option<DateTime<Utc>>,
    pub cancel_reason: String,
    pub cancelled_by: String,
    pub revision_reason: String,
    /// Set when another option of the plan's alternative group was chosen (see `alternatives`); kept
    /// beside the versions, not in them: it is about the plan, whatever its version.
    pub superseded: Option<Supersession>,
}

/// A plan's money, in its currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub total: Money,
    pub completed: Money,
    pub remaining: Money,
    pub discount: Money,
    pub visits: Vec<VisitSubtotal>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisitSubtotal {
    pub visit: i32,
    pub subtotal: Money,
    pub item_count: i32,
    pub completed_item_count: i32,
}

/// What approving, completing or cancelling changed, for the event to publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub plan_completed: bool,
}

impl Plan {
    /// A new DRAFT, version 1, with no items.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant_id: String,
        id: Uuid,
        patient_id: String,
        title: String,
        currency: Currency,
        fee_schedule_id: Option<Uuid>,
        created_by: String,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            tenant_id,
            id,
            version: 1,
            patient_id,
            title,
            status: Status::Draft,
            fee_schedule_id,
            currency,
            owner_staff_id: String::new(),
            alternative_group_id: String::new(),
            quote_expiry_date: None,
            internal_note: String::new(),
            patient_note: String::new(),
            images: Vec::new(),
            items: Vec::new(),
            created_by,
            create_time: now,
            update_time: now,
            last_send_time: None,
            send_count: 0,
            approval: None,
            complete_time: None,
            cancel_time: None,
            cancel_reason: String::new(),
            cancelled_by: String::new(),
            revision_reason: String::new(),
            superseded: None,
        }
    }

    /// The plan's own fields that a client sets.
    pub fn validate_fields(&self) -> Result<()> {
        let mut violations: Vec<(String, String)> = Vec::new();
        if self.patient_id.trim().is_empty() {
            violations.push((
                "patient_id".into(),
                "required: the clinic's patient id".into(),
            ));
        } else if self.patient_id.chars().count() > MAX_ID {
            violations.push(("patient_id".into(), format!("at most {MAX_ID} characters")));
        }
        if self.title.trim().is_empty() {
            violations.push((
                "title".into(),
                "required, e.g. \"Phase 1: restorations\"".into(),
            ));
        } else if self.title.chars().count() > MAX_TITLE {
            violations.push(("title".into(), format!("at most {MAX_TITLE} characters")));
        }
        for (field, value) in [
            ("owner_staff_id", &self.owner_staff_id),
            ("alternative_group_id", &self.alternative_group_id),
        ] {
            if value.chars().count() > MAX_ID {
                violations.push((field.into(), format!("at most {MAX_ID} characters")));
            }
        }
        for (field, value) in [
            ("internal_note", &self.internal_note),
            ("patient_note", &self.patient_note),
        ] {
            if value.chars().count() > MAX_NOTE {
                violations.push((field.into(), format!("at most {MAX_NOTE} characters")));
            }
        }
        if self.images.len() > 50 {
            violations.push(("images".into(), "at most 50 images".into()));
        }
        for (i, image) in self.images.iter().enumerate() {
            if image.url.trim().is_empty() {
                violations.push((format!("images[{i}].url"), "required".into()));
            } else if !(image.url.starts_with("https://") || image.url.starts_with("http://")) {
                violations.push((format!("images[{i}].url"), "must be an http(s) URL".into()));
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(PlansError::Invalid(violations))
        }
    }

    /// Refuses any edit of a plan that is not a DRAFT.
    pub fn ensure_draft(&self) -> Result<()> {
        if self.status == Status::Draft {
            Ok(())
        } else {
            let hint = match self.status {
                Status::Sent | Status::Approved => {
                    "revise it first (RevisePlan) to edit a new version"
                }
                _ => "it is closed",
            };
            Err(PlansError::precondition(
                "PLAN_NOT_DRAFT",
                self.id.to_string(),
                format!(
                    "plan {} is {}: only a DRAFT is edited; {hint}",
                    self.id,
                    self.status.as_str()
                ),
            ))
        }
    }

    /// Items in plan order: by visit (0 = unassigned, first), then as added.
    pub fn ordered_items(&self) -> Vec<&Item> {
        let mut items: Vec<&Item> = self.items.iter().collect();
        items.sort_by_key(|item| (item.visit, item.position));
        items
    }

    pub fn item(&self, id: Uuid) -> Option<&Item> {
        self.items.iter().find(|item| item.id == id)
    }

    fn item_index(&self, id: Uuid) -> Result<usize> {
        self.items
            .iter()
            .position(|item| item.id == id)
            .ok_or_else(|| PlansError::not_found("plan item", id.to_string()))
    }

    /// "item 3 (D6010)": the item's 1-based number in plan order, and its code.
    pub fn label(&self, id: Uuid) -> String {
        let ordered = self.ordered_items();
        match ordered.iter().position(|item| item.id == id) {
            Some(index) => format!("item {} ({})", index + 1, ordered[index].code),
            None => format!("item {id}"),
        }
    }

    /// Dependencies must name other items of this plan and never close a cycle.
    fn check_dependencies(&self) -> Result<()> {
        let ids: HashSet<Uuid> = self.items.iter().map(|item| item.id).collect();
        for item in &self.items {
            let mut seen = HashSet::new();
            for dep in &item.depends_on {
                if !ids.contains(dep) {
                    return Err(PlansError::invalid(
                        "depends_on_item_ids",
                        format!("`{dep}` is not an item of plan {}", self.id),
                    ));
                }
                if !seen.insert(dep) {
                    return Err(PlansError::invalid(
                        "depends_on_item_ids",
                        format!("`{dep}` is listed twice"),
                    ));
                }
            }
        }
        let nodes: Vec<(Uuid, Vec<Uuid>)> = self
            .ordered_items()
            .iter()
            .map(|item| (item.id, item.depends_on.clone()))
            .collect();
        match graph::find_cycle(&nodes) {
            Some(cycle) => Err(PlansError::Cycle {
                path: cycle.into_iter().map(|id| self.label(id)).collect(),
            }),
            None => Ok(()),
        }
    }

    fn check_item_count(&self) -> Result<()> {
        if self.items.len() > MAX_ITEMS {
            return Err(PlansError::precondition(
                "TOO_MANY_ITEMS",
                self.id.to_string(),
                format!("a plan holds at most {MAX_ITEMS} items"),
            ));
        }
        Ok(())
    }

    /// Adds an item to a DRAFT (at the end of its visit).
    pub fn add_item(&mut self, mut item: Item, now: DateTime<Utc>) -> Result<()> {
        self.ensure_draft()?;
        item.validate()?;
        item.position = self.items.iter().map(|i| i.position).max().unwrap_or(0) + 1;
        item.status = ItemStatus::Planned;
        self.items.push(item);
        if let Err(err) = self
            .check_item_count()
            .and_then(|()| self.check_dependencies())
        {
            self.items.pop();
            return Err(err);
        }
        self.update_time = now;
        Ok(())
    }

    /// Replaces an item of a DRAFT with its edited form (same id). A completed item stays as it is.
    pub fn replace_item(&mut self, item: Item, now: DateTime<Utc>) -> Result<()> {
        self.ensure_draft()?;
        let index = self.item_index(item.id)?;
        if self.items[index].is_completed() {
            return Err(PlansError::precondition(
                "ITEM_COMPLETED",
                item.id.to_string(),
                format!(
                    "{} is already completed and cannot change",
                    self.label(item.id)
                ),
            ));
        }
        item.validate()?;
        let previous = std::mem::replace(&mut self.items[index], item);
        self.items[index].status = previous.status;
        self.items[index].position = previous.position;
        if let Err(err) = self.check_dependencies() {
            self.items[index] = previous;
            return Err(err);
        }
        self.update_time = now;
        Ok(())
    }

    /// Removes an item of a DRAFT. Items depending on it are named unless `remove_dependencies`.
    pub fn remove_item(
        &mut self,
        id: Uuid,
        remove_dependencies: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.ensure_draft()?;
        let index = self.item_index(id)?;
        if self.items[index].is_completed() {
            return Err(PlansError::precondition(
                "ITEM_COMPLETED",
                id.to_string(),
                format!(
                    "{} is already completed and cannot be removed",
                    self.label(id)
                ),
            ));
        }
        let dependents: Vec<String> = self
            .ordered_items()
            .iter()
            .filter(|item| item.depends_on.contains(&id))
            .map(|item| self.label(item.id))
            .collect();
        if !dependents.is_empty() && !remove_dependencies {
            return Err(PlansError::precondition(
                "ITEM_HAS_DEPENDENTS",
                id.to_string(),
                format!(
                    "{} is a prerequisite of {}; set remove_dependencies to remove it anyway",
                    self.label(id),
                    dependents.join(", ")
                ),
            ));
        }
        self.items.remove(index);
        for item in &mut self.items {
            item.depends_on.retain(|dep| *dep != id);
        }
        self.update_time = now;
        Ok(())
    }

    /// Applies a new fee schedule's fees: items keep their override; the rest take the new fee.
    pub fn reprice(
        &mut self,
        fee_schedule_id: Option<Uuid>,
        currency: Currency,
        fees: &BTreeMap<String, i64>,
    ) -> Result<()> {
        self.ensure_draft()?;
        if currency != self.currency {
            let overridden: Vec<String> = self
                .ordered_items()
                .iter()
                .filter(|item| item.price_override.is_some())
                .map(|item| self.label(item.id))
                .collect();
            if !overridden.is_empty() {
                return Err(PlansError::precondition(
                    "CURRENCY_CHANGE",
                    self.id.to_string(),
                    format!(
                        "the new fee schedule is in {currency}, the plan in {}; clear the price of {} first",
                        self.currency,
                        overridden.join(", ")
                    ),
                ));
            }
        }
        self.fee_schedule_id = fee_schedule_id;
        self.currency = currency;
        for item in &mut self.items {
            if !item.is_completed() {
                item.schedule_fee = fees.get(&item.code).copied();
            }
        }
        Ok(())
    }

    pub fn money(&self, minor: i64) -> Money {
        Money::new(minor, self.currency)
    }

    pub fn totals(&self) -> Totals {
        let mut total = 0i64;
        let mut completed = 0i64;
        let mut schedule = 0i64;
        let mut visits: BTreeMap<i32, VisitSubtotal> = BTreeMap::new();
        for item in &self.items {
            let price = item.price().unwrap_or(0);
            total = total.saturating_add(price);
            schedule = schedule.saturating_add(item.schedule_fee.unwrap_or(price));
            let visit = visits.entry(item.visit).or_insert(VisitSubtotal {
                visit: item.visit,
                subtotal: self.money(0),
                item_count: 0,
                completed_item_count: 0,
            });
            visit.subtotal.minor = visit.subtotal.minor.saturating_add(price);
            visit.item_count += 1;
            if item.is_completed() {
                completed = completed.saturating_add(price);
                visit.completed_item_count += 1;
            }
        }
        Totals {
            total: self.money(total),
            completed: self.money(completed),
            remaining: self.money(total.saturating_sub(completed)),
            discount: self.money(schedule.saturating_sub(total)),
            visits: visits.into_values().collect(),
        }
    }

    /// Visits the plan needs: the highest visit number, at least 1 when there are items.
    pub fn visit_count(&self) -> i32 {
        if self.items.is_empty() {
            return 0;
        }
        self.items
            .iter()
            .map(|item| item.visit)
            .max()
            .unwrap_or(0)
            .max(1)
    }

    /// Visits whose items are all completed (every visit once every item is).
    pub fn visits_completed(&self) -> i32 {
        if !self.items.is_empty() && self.items.iter().all(Item::is_completed) {
            return self.visit_count();
        }
        let mut visits: BTreeMap<i32, bool> = BTreeMap::new();
        for item in self.items.iter().filter(|item| item.visit > 0) {
            let done = visits.entry(item.visit).or_insert(true);
            *done &= item.is_completed();
        }
        visits.values().filter(|done| **done).count() as i32
    }

    pub fn items_completed(&self) -> i32 {
        self.items.iter().filter(|item| item.is_completed()).count() as i32
    }

    /// Every required field still empty, one line per field, in plan order.
    pub fn missing_fields(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.items.is_empty() {
            missing.push("the plan has no items".to_string());
        }
        for item in self.ordered_items() {
            let label = self.label(item.id);
            if item.practitioner_id.trim().is_empty() {
                missing.push(format!("{label}: practitioner_id is empty"));
            }
            if item.price().is_none() {
                missing.push(format!(
                    "{label}: price is empty (the fee schedule has no fee for {})",
                    item.code
                ));
            }
            let differs =
                matches!((item.price_override, item.schedule_fee), (Some(p), Some(f)) if p != f);
            if differs && item.price_override_reason.trim().is_empty() {
                missing.push(format!("{label}: price_override_reason is empty"));
            }
        }
        missing
    }

    /// Sends (or re-sends) the plan. Returns whether it was a DRAFT that became SENT.
    pub fn send(&mut self, now: DateTime<Utc>) -> Result<bool> {
        match self.status {
            Status::Draft | Status::Sent | Status::Approved => {}
            Status::Completed | Status::Cancelled => {
                return Err(PlansError::precondition(
                    "PLAN_CLOSED",
                    self.id.to_string(),
                    format!(
                        "plan {} is {}: it cannot be sent",
                        self.id,
                        self.status.as_str()
                    ),
                ));
            }
        }
        if self.items.is_empty() {
            return Err(PlansError::precondition(
                "PLAN_EMPTY",
                self.id.to_string(),
                format!(
                    "plan {} has no items: add its treatments before sending it",
                    self.id
                ),
            ));
        }
        let was_draft = self.status == Status::Draft;
        if was_draft {
            self.status = Status::Sent;
        }
        self.send_count += 1;
        self.last_send_time = Some(now);
        self.update_time = now;
        Ok(was_draft)
    }

    /// Approves the plan (staff, or the patient through the portal).
    pub fn approve(&mut self, approval: Approval) -> Result<()> {
        match self.status {
            Status::Draft | Status::Sent => {}
            other => {
                return Err(PlansError::precondition(
                    "PLAN_NOT_APPROVABLE",
                    self.id.to_string(),
                    format!(
                        "plan {} is {}: only a DRAFT or SENT plan is approved",
                        self.id,
                        other.as_str()
                    ),
                ));
            }
        }
        if let Some(superseded) = &self.superseded {
            return Err(PlansError::Superseded {
                plan_id: self.id,
                by: superseded.clone(),
            });
        }
        if approval.channel == ApprovalChannel::PatientPortal && self.status != Status::Sent {
            return Err(PlansError::precondition(
                "PLAN_NOT_SENT",
                self.id.to_string(),
                "the patient can only approve a plan that was sent to them",
            ));
        }
        let missing = self.missing_fields();
        if !missing.is_empty() {
            return Err(PlansError::MissingFields(missing));
        }
        self.update_time = approval.at;
        self.status = Status::Approved;
        self.approval = Some(approval);
        // A revision of a plan already under way: if every item was done before, it is done now.
        if self.items.iter().all(Item::is_completed) {
            self.status = Status::Completed;
            self.complete_time = Some(self.update_time);
        }
        Ok(())
    }

    /// Marks an item of an APPROVED plan done; the plan completes with its last item.
    pub fn complete_item(
        &mut self,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Completion> {
        let index = self.item_index(id)?;
        if self.status != Status::Approved {
            return Err(PlansError::precondition(
                "PLAN_NOT_APPROVED",
                self.id.to_string(),
                format!(
                    "plan {} is {}: items are completed once the plan is APPROVED",
                    self.id,
                    self.status.as_str()
                ),
            ));
        }
        if self.items[index].is_completed() {
            return Err(PlansError::precondition(
                "ITEM_COMPLETED",
                id.to_string(),
                format!("{} is already completed", self.label(id)),
            ));
        }
        let pending: Vec<String> = self.items[index]
            .depends_on
            .iter()
            .filter(|dep| self.item(**dep).is_some_and(|item| !item.is_completed()))
            .map(|dep| self.label(*dep))
            .collect();
        if !pending.is_empty() {
            return Err(PlansError::precondition(
                "PREREQUISITES_NOT_COMPLETE",
                id.to_string(),
                format!(
                    "{} cannot be completed before its prerequisites: {} not yet complete",
                    self.label(id),
                    pending.join(", ")
                ),
            ));
        }
        let item = &mut self.items[index];
        item.status = ItemStatus::Completed;
        item.complete_time = Some(at);
        item.completed_by = by.to_string();
        self.update_time = now;
        let plan_completed = self.items.iter().all(Item::is_completed);
        if plan_completed {
            self.status = Status::Completed;
            self.complete_time = Some(now);
        }
        Ok(Completion { plan_completed })
    }

    /// Cancels an open plan. Returns the status it had.
    pub fn cancel(&mut self, reason: &str, by: &str, now: DateTime<Utc>) -> Result<Status> {
        validate_reason(reason)?;
        if !self.status.is_open() {
            return Err(PlansError::precondition(
                "PLAN_CLOSED",
                self.id.to_string(),
                format!("plan {} is already {}", self.id, self.status.as_str()),
            ));
        }
        let previous = self.status;
        self.status = Status::Cancelled;
        self.cancel_time = Some(now);
        self.cancel_reason = reason.trim().to_string();
        self.cancelled_by = by.to_string();
        self.update_time = now;
        Ok(previous)
    }

    /// A new DRAFT version of a SENT or APPROVED plan, with the same items (completed ones stay so).
    pub fn revise(&self, reason: &str, by: &str, now: DateTime<Utc>) -> Result<Plan> {
        validate_reason(reason)?;
        if !matches!(self.status, Status::Sent | Status::Approved) {
            return Err(PlansError::precondition(
                "PLAN_NOT_REVISABLE",
                self.id.to_string(),
                format!(
                    "plan {} is {}: only a SENT or APPROVED plan is revised{}",
                    self.id,
                    self.status.as_str(),
                    if self.status == Status::Draft {
                        " (a DRAFT is edited directly)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let mut next = self.clone();
        next.version = self.version + 1;
        next.status = Status::Draft;
        next.created_by = by.to_string();
        next.create_time = now;
        next.update_time = now;
        next.approval = None;
        next.complete_time = None;
        next.revision_reason = reason.trim().to_string();
        // The send history belongs to the plan, not to a version: keep counting.
        Ok(next)
    }
}

fn validate_reason(reason: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(PlansError::invalid("reason", "required: say why"));
    }
    if reason.chars().count() > MAX_REASON {
        return Err(PlansError::invalid(
            "reason",
            format!("at most {MAX_REASON} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    fn plan() -> Plan {
        Plan::new(
            "c1".into(),
            Uuid::now_v7(),
            "pat-1".into(),
            "Phase 1: restorations".into(),
            Currency::parse("USD").expect("USD"),
            None,
            "staff-1".into(),
            now(),
        )
    }

    fn item(code: &str, fee: i64) -> Item {
        let mut item = Item::new(Uuid::now_v7(), code.into(), format!("{code} name"));
        item.schedule_fee = Some(fee);
        item.practitioner_id = "dr-1".into();
        item
    }

    fn staff() -> Approval {
        Approval {
            channel: ApprovalChannel::Staff,
            staff_id: "staff-1".into(),
            at: now(),
            evidence: None,
        }
    }

    /// extraction → implant → crown, with an override on the crown.
    fn journey() -> (Plan, [Uuid; 3]) {
        let mut p = plan();
        let extraction = item("D7140", 20000);
        let mut implant = item("D6010", 200000);
        implant.depends_on = vec![extraction.id];
        implant.visit = 2;
        let mut crown = item("D6065", 150000);
        crown.depends_on = vec![implant.id];
        crown.price_override = Some(135000);
        crown.price_override_reason = "10% family discount".into();
        crown.visit = 3;
        let ids = [extraction.id, implant.id, crown.id];
        extraction_first(&mut p, extraction);
        p.add_item(implant, now()).expect("implant");
        p.add_item(crown, now()).expect("crown");
        (p, ids)
    }

    fn extraction_first(p: &mut Plan, mut extraction: Item) {
        extraction.visit = 1;
        p.add_item(extraction, now()).expect("extraction");
    }

    #[test]
    fn totals_follow_prices_and_overrides() {
        let (p, _) = journey();
        let totals = p.totals();
        assert_eq!(totals.total.minor, 20000 + 200000 + 135000);
        assert_eq!(totals.discount.minor, 15000);
        assert_eq!(totals.remaining, totals.total);
        assert_eq!(totals.visits.len(), 3);
        assert_eq!(totals.visits[2].subtotal.minor, 135000);
        assert_eq!(p.visit_count(), 3);
    }

    #[test]
    fn an_override_needs_a_reason() {
        let mut p = plan();
        let mut i = item("D2740", 100000);
        i.price_override = Some(90000);
        let err = p.add_item(i.clone(), now()).expect_err("needs a reason");
        assert!(err.to_string().contains("price_override_reason"), "{err}");
        i.price_override = Some(100000);
        assert!(
            p.add_item(i, now()).is_ok(),
            "same as the schedule: no reason needed"
        );
    }

    #[test]
    fn a_cycle_is_refused_naming_it() {
        let (mut p, [extraction, _, crown]) = journey();
        let mut edited = p.item(extraction).cloned().expect("item");
        edited.depends_on = vec![crown];
        let err = p.replace_item(edited, now()).expect_err("cycle");
        assert_eq!(
            err.to_string(),
            "depends_on_item_ids: dependency cycle item 1 (D7140) -> item 3 (D6065) -> item 2 (D6010) -> item 1 (D7140)"
        );
        // Nothing changed.
        assert!(p.item(extraction).expect("item").depends_on.is_empty());
    }

    #[test]
    fn dependencies_must_be_items_of_the_plan() {
        let mut p = plan();
        let mut i = item("D2740", 1);
        i.depends_on = vec![Uuid::now_v7()];
        assert!(matches!(p.add_item(i, now()), Err(PlansError::Invalid(_))));
        assert!(p.items.is_empty());
    }

    #[test]
    fn approve_names_every_missing_field() {
        let (mut p, [_, implant, _]) = journey();
        let mut edited = p.item(implant).cloned().expect("item");
        edited.practitioner_id.clear();
        edited.schedule_fee = None;
        p.replace_item(edited, now()).expect("edit");
        let err = p.approve(staff()).expect_err("missing");
        let PlansError::MissingFields(missing) = err else {
            panic!("not MissingFields")
        };
        assert_eq!(
            missing,
            vec![
                "item 2 (D6010): practitioner_id is empty".to_string(),
                "item 2 (D6010): price is empty (the fee schedule has no fee for D6010)"
                    .to_string()
            ]
        );
        assert_eq!(p.status, Status::Draft);
    }

    #[test]
    fn the_lifecycle_from_draft_to_completed() {
        let (mut p, [extraction, implant, crown]) = journey();
        assert!(p.send(now()).expect("send"));
        assert_eq!(p.status, Status::Sent);
        assert!(
            !p.send(now()).expect("re-send"),
            "a re-send is not a transition"
        );
        assert_eq!(p.send_count, 2);
        assert!(
            p.add_item(item("D0120", 5000), now()).is_err(),
            "a SENT plan is not edited"
        );
        p.approve(staff()).expect("approve");
        assert_eq!(p.status, Status::Approved);

        let err = p
            .complete_item(crown, "dr-1", now(), now())
            .expect_err("out of order");
        assert_eq!(
            err.to_string(),
            "item 3 (D6065) cannot be completed before its prerequisites: item 2 (D6010) not yet complete"
        );
        assert!(
            !p.complete_item(extraction, "dr-1", now(), now())
                .expect("1")
                .plan_completed
        );
        assert_eq!(p.visits_completed(), 1);
        assert!(
            !p.complete_item(implant, "dr-1", now(), now())
                .expect("2")
                .plan_completed
        );
        assert!(
            p.complete_item(crown, "dr-1", now(), now())
                .expect("3")
                .plan_completed
        );
        assert_eq!(p.status, Status::Completed);
        assert_eq!(p.visits_completed(), 3);
        assert_eq!(p.totals().remaining.minor, 0);
        assert!(p.cancel("too late", "s", now()).is_err());
        assert!(p.revise("x", "s", now()).is_err());
    }

    #[test]
    fn cancel_from_any_open_state_and_never_twice() {
        for steps in 0..3 {
            let (mut p, _) = journey();
            if steps >= 1 {
                p.send(now()).expect("send");
            }
            if steps >= 2 {
                p.approve(staff()).expect("approve");
            }
            let before = p.status;
            assert_eq!(
                p.cancel("patient chose another clinic", "s", now())
                    .expect("cancel"),
                before
            );
            assert!(p.cancel("again", "s", now()).is_err());
            assert!(p.send(now()).is_err());
        }
        let (mut p, _) = journey();
        assert!(p.cancel("  ", "s", now()).is_err(), "a reason is required");
    }

    #[test]
    fn revising_keeps_completed_items_and_starts_a_draft() {
        let (mut p, [extraction, implant, _]) = journey();
        p.send(now()).expect("send");
        p.approve(staff()).expect("approve");
        p.complete_item(extraction, "dr", now(), now())
            .expect("done");
        let mut next = p
            .revise("patient asked for a bridge instead", "dr", now())
            .expect("revise");
        assert_eq!(next.version, 2);
        assert_eq!(next.status, Status::Draft);
        assert!(next.approval.is_none());
        assert!(next.item(extraction).expect("kept").is_completed());
        assert!(
            next.remove_item(extraction, true, now()).is_err(),
            "done stays done"
        );
        next.remove_item(implant, true, now())
            .expect("remove with dependents");
        assert!(next.items.iter().all(|i| !i.depends_on.contains(&implant)));
        assert!(
            plan().revise("r", "s", now()).is_err(),
            "a draft is edited, not revised"
        );
    }

    #[test]
    fn removing_a_prerequisite_names_its_dependents() {
        let (mut p, [extraction, _, _]) = journey();
        let err = p
            .remove_item(extraction, false, now())
            .expect_err("has dependents");
        assert!(err.to_string().contains("item 2 (D6010)"), "{err}");
    }

    #[test]
    fn the_patient_approves_only_a_sent_plan() {
        let (mut p, _) = journey();
        let patient = Approval {
            channel: ApprovalChannel::PatientPortal,
            staff_id: String::new(),
            at: now(),
            evidence: None,
        };
        assert!(p.approve(patient.clone()).is_err());
        p.send(now()).expect("send");
        p.approve(patient).expect("approve");
        assert_eq!(p.status, Status::Approved);
    }

    proptest! {
        /// Whatever order completion is attempted in, an item is only ever completed after all its
        /// prerequisites, and the plan completes exactly when the last item does.
        #[test]
        fn completion_order_respects_prerequisites(
            deps in proptest::collection::vec(proptest::collection::vec(any::<proptest::sample::Index>(), 0..3), 1..10),
            attempts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..60),
        ) {
            let mut p = plan();
            let mut ids = Vec::new();
            for (n, wanted) in deps.iter().enumerate() {
                let mut i = item("D0120", 100);
                // Only earlier items, so the graph is acyclic by construction.
                if n > 0 {
                    let mut d: Vec<Uuid> = wanted.iter().map(|w| ids[w.index(n)]).collect();
                    d.sort();
                    d.dedup();
                    i.depends_on = d;
                }
                ids.push(i.id);
                p.add_item(i, now()).expect("acyclic by construction");
            }
            p.send(now()).expect("send");
            p.approve(staff()).expect("approve");
            let mut completed_order: Vec<Uuid> = Vec::new();
            let mut tries: Vec<Uuid> = attempts.iter().map(|a| ids[a.index(ids.len())]).collect();
            tries.extend(ids.iter().copied()); // then enough rounds in plan order to finish
            tries.extend(ids.iter().copied());
            for _ in 0..ids.len() { tries.extend(ids.iter().copied()); }
            for id in tries {
                if p.status == Status::Completed { break; }
                let ready = p.item(id).expect("item").depends_on.iter().all(|d| completed_order.contains(d));
                let already = completed_order.contains(&id);
                match p.complete_item(id, "dr", now(), now()) {
                    Ok(outcome) => {
                        prop_assert!(ready && !already);
                        completed_order.push(id);
                        prop_assert_eq!(outcome.plan_completed, completed_order.len() == ids.len());
                    }
                    Err(_) => prop_assert!(!ready || already),
                }
            }
            prop_assert_eq!(p.status, Status::Completed);
            for (n, id) in completed_order.iter().enumerate() {
                for dep in &p.item(*id).expect("item").depends_on {
                    let at = completed_order.iter().position(|x| x == dep).expect("dep completed");
                    prop_assert!(at < n);
                }
            }
        }
    }
}
