//! A case and how each event changes it: [`apply`], a pure function of the case as it was, the event and
//! the clinic's settings.
//!
//! Events arrive out of order and more than once (the inbox drops exact repeats, but the plans and
//! engagement consumers run side by side). So every fact is merged rather than overwritten: first times take
//! the minimum, last times the maximum, counters the maximum of what each event says, engagement facts
//! only when newer; status changes go through [`next_status`], which never moves a case backwards.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::status::{CaseStatus, StatusContext, Trigger, next_status};
use super::timeline::{Actor, EntryDetail, EntryKind, MessageResult, NewEntry, stop_reason_words};
use super::vocab::{Channel, Money, SectionTime, human_duration};

/// How many cancelled appointment ids a case remembers (to refuse a booking that arrives after its own
/// cancellation).
const REMEMBERED_CANCELLATIONS: usize = 10;
/// How many follow-up enrollments a case remembers for "next scheduled follow-up".
const REMEMBERED_ENROLLMENTS: usize = 20;

/// A clinic's case settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseSettings {
    /// After a view without booking or reply, how long until WAITING_FOR_RESPONSE.
    pub response_window_secs: i64,
    /// Local hour (0-23) of the owner digest.
    pub digest_hour: u32,
    /// IANA time zone.
    pub time_zone: String,
}

impl CaseSettings {
    pub fn response_window(&self) -> Duration {
        Duration::seconds(self.response_window_secs)
    }
}

impl Default for CaseSettings {
    fn default() -> Self {
        Self {
            response_window_secs: 48 * 3600,
            digest_hour: 7,
            time_zone: "UTC".into(),
        }
    }
}

/// A follow-up sequence the scheduler started for the case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub enrollment_id: String,
    pub rule_name: String,
    pub steps: Vec<PlannedStep>,
    pub stopped: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub step_index: i32,
    pub due: DateTime<Utc>,
    pub done: bool,
}

/// A tooth as entered on a plan item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tooth {
    pub numbering: i32,
    pub number: String,
    pub surfaces: String,
}

/// A treatment of the plan, as last sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Treatment {
    pub item_id: String,
    pub code: String,
    pub name: String,
    pub tooth: Option<Tooth>,
    pub visit: i32,
    pub value: Option<Money>,
}

/// An image reference shown with the plan (never the bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub image_id: String,
    pub url: String,
    pub kind: i32,
    pub caption: String,
}

/// What the patient was shown at the last send: kept apart from the case, because it is large and only
/// a send changes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presentation {
    pub treatments: Vec<Treatment>,
    pub images: Vec<Image>,
}

/// Everything the service knows about one case presentation. Stored as JSON without the empty and
/// default fields: the row stays small (below PostgreSQL's compression threshold), and a field added
/// later reads as its default from older rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseState {
    pub tenant_id: String,
    pub case_id: Uuid,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub plan_version: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub patient_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    pub status: CaseStatus,
    /// When the current status was set (the event's time, or the staff change's).
    pub status_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub status_by_staff: bool,
    /// What set it: an event's subject tail, "timer.response_window", "group.accepted" or "staff".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_cause: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_staff_id: Option<String>,
    /// Staff chose the owner: plan events no longer reassign it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub owner_by_staff: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternative_group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sent_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub send_count: i32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub viewed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_view_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_view_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub view_count: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total_view_millis: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub section_times: Vec<SectionTime>,
    /// occurred_at of the engagement facts held, so older facts never replace newer ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engagement_at: Option<DateTime<Utc>>,
    /// Approved by anyone (patient in the portal, or staff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_approved_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reminders_sent: i32,
    /// The first follow-up that reached the patient (a reminder sent or a call task done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_follow_up_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrollments: Vec<Enrollment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booked_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booked_appointment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled_appointments: Vec<(String, DateTime<Utc>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_expiry_date: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    /// When the response window ends, while one runs (SENT_VIEWED without a response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_due_at: Option<DateTime<Utc>>,
}

impl CaseState {
    /// A case first heard of through an event: a draft until events say more.
    pub fn new(tenant_id: &str, case_id: Uuid, at: DateTime<Utc>) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            case_id,
            plan_version: 0,
            patient_id: String::new(),
            title: String::new(),
            status: CaseStatus::DraftNotSent,
            status_at: at,
            status_by_staff: false,
            status_cause: String::new(),
            owner_staff_id: None,
            owner_by_staff: false,
            value: None,
            alternative_group_id: None,
            first_sent_at: None,
            last_sent_at: None,
            send_count: 0,
            viewed: false,
            first_view_at: None,
            last_view_at: None,
            view_count: 0,
            total_view_millis: 0,
            section_times: Vec::new(),
            engagement_at: None,
            approved_at: None,
            patient_approved_at: None,
            last_reply_at: None,
            reminders_sent: 0,
            first_follow_up_at: None,
            last_contact_at: None,
            enrollments: Vec::new(),
            booked_at: None,
            booked_appointment_id: None,
            appointment_start: None,
            cancelled_appointments: Vec::new(),
            completed_at: None,
            quote_expiry_date: None,
            created_at: at,
            last_activity_at: at,
            response_due_at: None,
        }
    }

    /// The patient approved or replied.
    pub fn responded(&self) -> bool {
        self.approved_at.is_some() || self.last_reply_at.is_some()
    }

    /// Accepted, for alternative groups and the report: booked, completed, or approved and still open.
    pub fn accepted(&self) -> bool {
        match self.status {
            CaseStatus::PatientBooked | CaseStatus::TreatmentCompleted => true,
            s if s.is_open() => self.approved_at.is_some(),
            _ => false,
        }
    }

    pub fn open(&self) -> bool {
        self.status.is_open()
    }

    /// The earliest planned follow-up step not yet done, of the sequences still running.
    pub fn next_follow_up_at(&self) -> Option<DateTime<Utc>> {
        if !self.open() {
            return None;
        }
        self.enrollments
            .iter()
            .filter(|e| !e.stopped)
            .flat_map(|e| e.steps.iter())
            .filter(|s| !s.done)
            .map(|s| s.due)
            .min()
    }

    /// The time the queue measures "since the last contact" from: the last reminder, reply or call, else
    /// the last send, else creation.
    pub fn contact_time(&self) -> DateTime<Utc> {
        self.last_contact_at
            .or(self.last_sent_at)
            .unwrap_or(self.created_at)
    }

    fn status_context(&self, at: DateTime<Utc>) -> StatusContext {
        StatusContext {
            by_staff: self.status_by_staff,
            viewed: self.viewed,
            responded: self.responded(),
            rejected_by_plan_cancel: self.status == CaseStatus::PatientRejected
                && !self.status_by_staff
                && self.status_cause == CAUSE_PLAN_CANCELLED,
            stale: at < self.status_at,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

pub const CAUSE_PLAN_CANCELLED: &str = "plans.plan_cancelled";
pub const CAUSE_RESPONSE_WINDOW: &str = "timer.response_window";
pub const CAUSE_GROUP: &str = "group.accepted";

/// One engagement session summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewSession {
    pub session_id: String,
    pub start: DateTime<Utc>,
    pub view_millis: i64,
    pub sections: Vec<SectionTime>,
}

/// Engagement facts as folded by the engagement service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngagementFacts {
    pub first_view_at: Option<DateTime<Utc>>,
    pub last_view_at: Option<DateTime<Utc>>,
    pub view_count: i32,
    pub total_view_millis: i64,
    pub section_times: Vec<SectionTime>,
}

/// What happened, in the case's words.
#[derive(Clone, Debug, PartialEq)]
pub enum CaseEvent {
    PlanCreated {
        plan_version: i32,
        patient_id: String,
        title: String,
        owner_staff_id: String,
        created_by_staff_id: String,
        value: Option<Money>,
        alternative_group_id: String,
    },
    PlanSent {
        plan_version: i32,
        patient_id: String,
        title: String,
        value: Option<Money>,
        send_count: i32,
        sent_by_staff_id: String,
        owner_staff_id: String,
        alternative_group_id: String,
        quote_expiry_date: String,
        presentation: Presentation,
    },
    PlanApproved {
        plan_version: i32,
        patient_id: String,
        by_patient: bool,
        staff_id: String,
        value: Option<Money>,
        alternative_group_id: String,
        owner_staff_id: String,
    },
    PlanRevised {
        plan_version: i32,
        patient_id: String,
        staff_id: String,
        reason: String,
    },
    ItemCompleted {
        patient_id: String,
        code: String,
        visit: i32,
        staff_id: String,
        items_completed: i32,
        item_count: i32,
    },
    PlanCompleted {
        patient_id: String,
        value: Option<Money>,
    },
    PlanCancelled {
        patient_id: String,
        staff_id: String,
        reason: String,
    },
    PlanViewed {
        patient_id: String,
        session_id: String,
    },
    EngagementUpdated {
        patient_id: String,
        facts: EngagementFacts,
        ended_sessions: Vec<ViewSession>,
    },
    AppointmentBooked {
        appointment_id: String,
        start: Option<DateTime<Utc>>,
        patient_id: String,
    },
    AppointmentCancelled {
        appointment_id: String,
        by_patient: bool,
    },
    AppointmentNoShow {
        appointment_id: String,
    },
    AppointmentAttended {
        appointment_id: String,
        patient_id: String,
    },
    FollowUpStarted {
        enrollment_id: String,
        rule_name: String,
        steps: Vec<(i32, DateTime<Utc>)>,
    },
    FollowUpStopped {
        enrollment_id: String,
        reason: i32,
        detail: String,
    },
    /// A message for the patient: requested by the scheduler, then sent, delivered, failed or suppressed.
    Message {
        message_id: String,
        idempotency_key: String,
        channel: Channel,
        enrollment_id: String,
        result: MessageResult,
        /// Failure or suppression reason, in words.
        reason: String,
    },
    PatientReplied {
        message_id: String,
        channel: Channel,
        text: String,
    },
    OptedOut {
        channel: Channel,
        category: String,
    },
    TaskCreated {
        task_id: String,
        idempotency_key: String,
        title: String,
        owner_staff_id: String,
    },
    TaskCompleted {
        task_id: String,
        staff_id: String,
        outcome: String,
    },
    /// The response window ended (timer).
    ResponseWindowElapsed,
    /// Another option of the alternative group was accepted.
    Superseded {
        by_case_id: Uuid,
    },
    StaffStatus {
        staff_id: String,
        status: CaseStatus,
        reason: String,
        expected: Option<CaseStatus>,
    },
    StaffNote {
        staff_id: String,
        note_id: Uuid,
        text: String,
    },
    StaffOwner {
        staff_id: String,
        owner_staff_id: Option<String>,
    },
}

/// An event for one case.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub event: CaseEvent,
    /// When it happened (the event's occurred_at; now for staff actions and timers' due time).
    pub at: DateTime<Utc>,
    /// The event's id, or a fresh id for staff actions and timers: makes timeline entries idempotent.
    pub event_id: String,
    /// The event's subject tail ("plans.plan_sent"), "timer.response_window", "group.accepted" or "staff".
    pub cause: String,
}

/// A status change to announce (case_status_changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub from: Option<CaseStatus>,
    pub to: CaseStatus,
    pub by_staff: Option<String>,
    pub reason: String,
    pub cause: String,
    pub cause_event_id: String,
}

/// An owner change to announce (case_owner_assigned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerChange {
    pub previous: Option<String>,
    pub owner: Option<String>,
    pub by_staff: Option<String>,
}

/// The outcome of [`apply`].
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub state: CaseState,
    pub created: bool,
    /// The case changed in any way (state, or a timeline entry).
    pub changed: bool,
    pub status_change: Option<StatusChange>,
    pub owner_change: Option<OwnerChange>,
    pub entries: Vec<NewEntry>,
    /// A new presentation (treatments, images) from the latest send.
    pub presentation: Option<Presentation>,
}

/// Why a staff action cannot be done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("status {0} cannot be set by staff: it follows from events")]
    StatusNotSettable(&'static str),
    #[error("reopening a case needs a reason")]
    ReopenWithoutReason,
    #[error("the case is {current}, not {expected}: someone changed it; reload and try again")]
    StatusChanged {
        current: &'static str,
        expected: &'static str,
    },
}

/// Checks a staff status change before it is applied.
pub fn validate_staff_status(
    current: CaseStatus,
    target: CaseStatus,
    reason: &str,
    expected: Option<CaseStatus>,
) -> Result<(), DomainError> {
    if matches!(target, CaseStatus::DraftNotSent | CaseStatus::Superseded) {
        return Err(DomainError::StatusNotSettable(target.name()));
    }
    if target.is_open() && reason.trim().is_empty() {
        return Err(DomainError::ReopenWithoutReason);
    }
    if let Some(expected) = expected
        && expected != current
    {
        return Err(DomainError::StatusChanged {
            current: current.name(),
            expected: expected.name(),
        });
    }
    Ok(())
}

fn min_time(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn max_time(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.max(b)))
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Applies one event to a case (None: the case is new). Pure: the same inputs give the same case,
/// changes and entries (entry ids aside).
pub fn apply(
    current: Option<&CaseState>,
    tenant_id: &str,
    case_id: Uuid,
    input: &Input,
    settings: &CaseSettings,
) -> Result<Applied, DomainError> {
    let created = current.is_none();
    let before = current.cloned();
    let mut case = current
        .cloned()
        .unwrap_or_else(|| CaseState::new(tenant_id, case_id, input.at));
    if created {
        case.created_at = input.at;
    } else if input.at < case.created_at && !matches!(input.event, CaseEvent::StaffNote { .. }) {
        // The case was first heard of through a later event; its creation is the earliest we know.
        case.created_at = input.at;
    }
    let mut entries: Vec<NewEntry> = Vec::new();
    let mut presentation = None;
    let mut owner_change = None;
    let mut trigger = Trigger::Activity;
    let mut status_reason = String::new();
    let mut staff_actor: Option<String> = None;
    let at = input.at;
    let key = |suffix: &str| format!("{}:{suffix}", input.event_id);

    let set_patient = |case: &mut CaseState, patient_id: &str| {
        if case.patient_id.is_empty() && !patient_id.is_empty() {
            case.patient_id = patient_id.to_string();
        }
    };
    let set_group = |case: &mut CaseState, group: &str| {
        if let Some(group) = non_empty(group) {
            case.alternative_group_id = Some(group);
        }
    };
    // An owner from a plan event fills an empty owner, or follows the plan while staff have not chosen.
    let auto_owner = |case: &mut CaseState, owner: &str| -> Option<OwnerChange> {
        let owner = non_empty(owner)?;
        if case.owner_by_staff || case.owner_staff_id.as_deref() == Some(owner.as_str()) {
            return None;
        }
        let previous = case.owner_staff_id.replace(owner.clone());
        Some(OwnerChange {
            previous,
            owner: Some(owner),
            by_staff: None,
        })
    };

    match &input.event {
        CaseEvent::PlanCreated {
            plan_version,
            patient_id,
            title,
            owner_staff_id,
            created_by_staff_id,
            value,
            alternative_group_id,
        } => {
            set_patient(&mut case, patient_id);
            if case.first_sent_at.is_none() {
                // Until a send says otherwise, the draft's own title and value.
                case.title = title.clone();
                case.plan_version = case.plan_version.max(*plan_version);
                if value.is_some() {
                    case.value = value.clone();
                }
            } else if case.title.is_empty() {
                case.title = title.clone();
            }
            set_group(&mut case, alternative_group_id);
            owner_change = auto_owner(&mut case, owner_staff_id);
            let actor = non_empty(created_by_staff_id).map_or(Actor::System, Actor::Staff);
            entries.push(NewEntry::new(
                EntryKind::Created,
                at,
                actor,
                "Plan created",
                EntryDetail::None,
                "created",
            ));
            trigger = Trigger::Created;
        }
        CaseEvent::PlanSent {
            plan_version,
            patient_id,
            title,
            value,
            send_count,
            sent_by_staff_id,
            owner_staff_id,
            alternative_group_id,
            quote_expiry_date,
            presentation: shown,
        } => {
            set_patient(&mut case, patient_id);
            let latest = case.last_sent_at.is_none_or(|last| at >= last);
            if latest {
                case.title = title.clone();
                case.plan_version = *plan_version;
                if value.is_some() {
                    case.value = value.clone();
                }
                case.quote_expiry_date = non_empty(quote_expiry_date);
                presentation = Some(shown.clone());
            }
            case.first_sent_at = min_time(case.first_sent_at, at);
            case.last_sent_at = max_time(case.last_sent_at, at);
            let sends = (*send_count).max(1);
            case.send_count = case.send_count.max(sends);
            set_group(&mut case, alternative_group_id);
            owner_change = auto_owner(&mut case, owner_staff_id);
            let summary = if sends <= 1 {
                format!("Sent to the patient (version {plan_version})")
            } else {
                format!("Re-sent to the patient (send {sends}, version {plan_version})")
            };
            let actor = non_empty(sent_by_staff_id).map_or(Actor::System, Actor::Staff);
            entries.push(NewEntry::new(
                EntryKind::Sent,
                at,
                actor,
                summary,
                EntryDetail::None,
                key("sent"),
            ));
            trigger = Trigger::Sent;
        }
        CaseEvent::PlanApproved {
            plan_version,
            patient_id,
            by_patient,
            staff_id,
            value,
            alternative_group_id,
            owner_staff_id,
        } => {
            set_patient(&mut case, patient_id);
            case.approved_at = min_time(case.approved_at, at);
            if *by_patient {
                case.patient_approved_at = min_time(case.patient_approved_at, at);
            }
            if *plan_version >= case.plan_version && value.is_some() {
                case.value = value.clone();
            }
            set_group(&mut case, alternative_group_id);
            owner_change = auto_owner(&mut case, owner_staff_id);
            let (kind, actor, summary) = if *by_patient {
                (
                    EntryKind::ApprovedByPatient,
                    Actor::Patient,
                    format!("Approved by the patient in the portal (version {plan_version})"),
                )
            } else {
                (
                    EntryKind::ApprovedByStaff,
                    non_empty(staff_id).map_or(Actor::System, Actor::Staff),
                    format!("Approval recorded by staff (version {plan_version})"),
                )
            };
            entries.push(NewEntry::new(
                kind,
                at,
                actor,
                summary,
                EntryDetail::None,
                key("approved"),
            ));
            trigger = Trigger::Responded;
        }
        CaseEvent::PlanRevised {
            plan_version,
            patient_id,
            staff_id,
            reason,
        } => {
            set_patient(&mut case, patient_id);
            let summary = if reason.trim().is_empty() {
                format!("Plan revised: version {plan_version} in draft")
            } else {
                format!(
                    "Plan revised: version {plan_version} in draft ({})",
                    reason.trim()
                )
            };
            entries.push(NewEntry::new(
                EntryKind::PlanRevised,
                at,
                non_empty(staff_id).map_or(Actor::System, Actor::Staff),
                summary,
                EntryDetail::None,
                key("revised"),
            ));
        }
        CaseEvent::ItemCompleted {
            patient_id,
            code,
            visit,
            staff_id,
            items_completed,
            item_count,
        } => {
            set_patient(&mut case, patient_id);
            let visit = if *visit > 0 {
                format!(" (visit {visit})")
            } else {
                String::new()
            };
            entries.push(NewEntry::new(
                EntryKind::ItemCompleted,
                at,
                non_empty(staff_id).map_or(Actor::System, Actor::Staff),
                format!("Treatment {code} done{visit}: {items_completed} of {item_count} items"),
                EntryDetail::None,
                key("item"),
            ));
        }
        CaseEvent::PlanCompleted { patient_id, value } => {
            set_patient(&mut case, patient_id);
            if case.value.is_none() {
                case.value = value.clone();
            }
            case.completed_at = min_time(case.completed_at, at);
            trigger = Trigger::PlanCompleted;
        }
        CaseEvent::PlanCancelled {
            patient_id,
            staff_id,
            reason,
        } => {
            set_patient(&mut case, patient_id);
            status_reason = reason.trim().to_string();
            staff_actor = non_empty(staff_id);
            trigger = Trigger::PlanCancelled;
        }
        CaseEvent::PlanViewed {
            patient_id,
            session_id,
        } => {
            set_patient(&mut case, patient_id);
            case.viewed = true;
            case.first_view_at = min_time(case.first_view_at, at);
            case.last_view_at = max_time(case.last_view_at, at);
            case.view_count = case.view_count.max(1);
            entries.push(NewEntry::new(
                EntryKind::Viewed,
                at,
                Actor::Patient,
                "Viewed for the first time",
                EntryDetail::View {
                    session_id: session_id.clone(),
                    view_millis: 0,
                    sections: Vec::new(),
                },
                format!("view:{session_id}"),
            ));
            trigger = Trigger::Viewed;
        }
        CaseEvent::EngagementUpdated {
            patient_id,
            facts,
            ended_sessions,
        } => {
            set_patient(&mut case, patient_id);
            if case.engagement_at.is_none_or(|held| at > held) {
                case.engagement_at = Some(at);
                case.view_count = case.view_count.max(facts.view_count);
                case.total_view_millis = facts.total_view_millis;
                case.section_times = facts.section_times.clone();
            }
            if let Some(first) = facts.first_view_at {
                case.first_view_at = min_time(case.first_view_at, first);
            }
            if let Some(last) = facts.last_view_at {
                case.last_view_at = max_time(case.last_view_at, last);
            }
            if facts.view_count > 0 || facts.first_view_at.is_some() {
                case.viewed = true;
                trigger = Trigger::Viewed;
            }
            for session in ended_sessions {
                let mut sections: Vec<SectionTime> = session
                    .sections
                    .iter()
                    .copied()
                    .filter(|s| s.millis > 0)
                    .collect();
                sections.sort_by_key(|s| std::cmp::Reverse(s.millis));
                let names: Vec<&str> = sections.iter().map(|s| s.section.words()).collect();
                let summary = if names.is_empty() {
                    format!("Viewed for {}", human_duration(session.view_millis))
                } else {
                    format!(
                        "Viewed for {}: {}",
                        human_duration(session.view_millis),
                        names.join(", ")
                    )
                };
                entries.push(
                    NewEntry::new(
                        EntryKind::Viewed,
                        session.start,
                        Actor::Patient,
                        summary,
                        EntryDetail::View {
                            session_id: session.session_id.clone(),
                            view_millis: session.view_millis,
                            sections,
                        },
                        format!("view:{}", session.session_id),
                    )
                    .ranked(2),
                );
            }
        }
        CaseEvent::AppointmentBooked {
            appointment_id,
            start,
            patient_id,
        } => {
            set_patient(&mut case, patient_id);
            let cancelled_after = case
                .cancelled_appointments
                .iter()
                .any(|(id, cancelled)| id == appointment_id && *cancelled >= at);
            let when = start.map_or_else(String::new, |s| {
                format!(" for {}", s.format("%Y-%m-%d %H:%M UTC"))
            });
            entries.push(NewEntry::new(
                EntryKind::Booked,
                at,
                Actor::Patient,
                format!("Appointment {appointment_id} booked{when}"),
                EntryDetail::None,
                key("booked"),
            ));
            if !cancelled_after {
                if case.booked_appointment_id.is_none()
                    || case.status != CaseStatus::PatientBooked
                    || case.booked_at.is_none_or(|b| at >= b)
                {
                    case.booked_appointment_id = Some(appointment_id.clone());
                    case.appointment_start = *start;
                }
                trigger = Trigger::Booked;
            }
        }
        CaseEvent::AppointmentAttended {
            appointment_id,
            patient_id,
        } => {
            set_patient(&mut case, patient_id);
            entries.push(NewEntry::new(
                EntryKind::Appointment,
                at,
                Actor::Patient,
                format!("Attended appointment {appointment_id}"),
                EntryDetail::None,
                key("attended"),
            ));
            if case.booked_appointment_id.is_none() {
                case.booked_appointment_id = Some(appointment_id.clone());
            }
            // Attending implies a booking, should the booking itself never have reached us.
            if case.open() {
                trigger = Trigger::Booked;
            }
        }
        CaseEvent::AppointmentCancelled {
            appointment_id,
            by_patient,
        } => {
            case.cancelled_appointments
                .push((appointment_id.clone(), at));
            if case.cancelled_appointments.len() > REMEMBERED_CANCELLATIONS {
                case.cancelled_appointments.remove(0);
            }
            let by = if *by_patient { " by the patient" } else { "" };
            entries.push(NewEntry::new(
                EntryKind::Appointment,
                at,
                if *by_patient {
                    Actor::Patient
                } else {
                    Actor::System
                },
                format!("Appointment {appointment_id} cancelled{by}"),
                EntryDetail::None,
                key("cancelled"),
            ));
            let booking_cancelled = case.status == CaseStatus::PatientBooked
                && case.booked_appointment_id.as_deref() == Some(appointment_id.as_str());
            if booking_cancelled {
                status_reason = format!("appointment {appointment_id} cancelled");
                trigger = Trigger::BookingCancelled;
            }
        }
        CaseEvent::AppointmentNoShow { appointment_id } => {
            entries.push(NewEntry::new(
                EntryKind::Appointment,
                at,
                Actor::Patient,
                format!("Did not attend appointment {appointment_id}"),
                EntryDetail::None,
                key("no_show"),
            ));
        }
        CaseEvent::FollowUpStarted {
            enrollment_id,
            rule_name,
            steps,
        } => {
            if !case
                .enrollments
                .iter()
                .any(|e| &e.enrollment_id == enrollment_id)
            {
                case.enrollments.push(Enrollment {
                    enrollment_id: enrollment_id.clone(),
                    rule_name: rule_name.clone(),
                    steps: steps
                        .iter()
                        .map(|(index, due)| PlannedStep {
                            step_index: *index,
                            due: *due,
                            done: false,
                        })
                        .collect(),
                    stopped: false,
                });
                if case.enrollments.len() > REMEMBERED_ENROLLMENTS {
                    case.enrollments.remove(0);
                }
            }
            let mut planned: Vec<DateTime<Utc>> = steps.iter().map(|(_, due)| *due).collect();
            planned.sort();
            let first = planned
                .first()
                .map(|t| format!(", first {}", t.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_default();
            entries.push(NewEntry::new(
                EntryKind::FollowUpScheduled,
                at,
                Actor::System,
                format!(
                    "Follow-up \u{201c}{rule_name}\u{201d} scheduled: {} steps{first}",
                    steps.len()
                ),
                EntryDetail::FollowUp {
                    enrollment_id: enrollment_id.clone(),
                    rule_name: rule_name.clone(),
                    planned,
                    stop_reason: 0,
                },
                format!("enrollment:{enrollment_id}:started"),
            ));
        }
        CaseEvent::FollowUpStopped {
            enrollment_id,
            reason,
            detail,
        } => {
            let mut rule_name = String::new();
            if let Some(enrollment) = case
                .enrollments
                .iter_mut()
                .find(|e| &e.enrollment_id == enrollment_id)
            {
                enrollment.stopped = true;
                rule_name = enrollment.rule_name.clone();
            }
            let detail = if detail.trim().is_empty() {
                String::new()
            } else {
                format!(" ({})", detail.trim())
            };
            entries.push(NewEntry::new(
                EntryKind::FollowUpStopped,
                at,
                Actor::System,
                format!("Follow-up stopped: {}{detail}", stop_reason_words(*reason)),
                EntryDetail::FollowUp {
                    enrollment_id: enrollment_id.clone(),
                    rule_name,
                    planned: Vec::new(),
                    stop_reason: *reason,
                },
                format!("enrollment:{enrollment_id}:stopped"),
            ));
        }
        CaseEvent::Message {
            message_id,
            idempotency_key,
            channel,
            enrollment_id,
            result,
            reason,
        } => {
            if *result == MessageResult::Sent && channel.reaches_patient() {
                case.reminders_sent += 1;
                case.last_contact_at = max_time(case.last_contact_at, at);
                case.first_follow_up_at = min_time(case.first_follow_up_at, at);
            }
            if matches!(
                result,
                MessageResult::Sent | MessageResult::Failed | MessageResult::Suppressed
            ) {
                mark_step_done(&mut case, enrollment_id, idempotency_key);
            }
            let subject = match channel {
                Channel::Task => "Staff task".to_string(),
                Channel::Webhook => "Webhook".to_string(),
                c => format!("{} reminder", capitalise(c.words())),
            };
            let summary = match result {
                MessageResult::Failed | MessageResult::Suppressed if !reason.is_empty() => {
                    format!("{subject} {}: {reason}", result.words())
                }
                MessageResult::Requested => format!("{subject} scheduled"),
                r => format!("{subject} {}", r.words()),
            };
            let entry_key = non_empty(idempotency_key)
                .map(|k| format!("msg:{k}"))
                .unwrap_or_else(|| format!("msg:{message_id}"));
            entries.push(
                NewEntry::new(
                    EntryKind::Reminder,
                    at,
                    Actor::System,
                    summary,
                    EntryDetail::Message {
                        message_id: message_id.clone(),
                        channel: *channel,
                        result: *result,
                        reason: reason.clone(),
                        text: String::new(),
                    },
                    entry_key,
                )
                .ranked(result.rank()),
            );
        }
        CaseEvent::PatientReplied {
            message_id,
            channel,
            text,
        } => {
            case.last_reply_at = max_time(case.last_reply_at, at);
            case.last_contact_at = max_time(case.last_contact_at, at);
            entries.push(NewEntry::new(
                EntryKind::PatientReplied,
                at,
                Actor::Patient,
                format!("Patient replied by {}", channel.words()),
                EntryDetail::Message {
                    message_id: message_id.clone(),
                    channel: *channel,
                    result: MessageResult::Received,
                    reason: String::new(),
                    text: text.clone(),
                },
                key("replied"),
            ));
            trigger = Trigger::Responded;
        }
        CaseEvent::OptedOut { channel, category } => {
            let what = match channel {
                Channel::Unspecified => "every channel".to_string(),
                c => c.words().to_string(),
            };
            let category = if category.is_empty() {
                "every category".to_string()
            } else {
                category.clone()
            };
            entries.push(NewEntry::new(
                EntryKind::OptedOut,
                at,
                Actor::Patient,
                format!("Patient opted out of {what} ({category})"),
                EntryDetail::None,
                key("opted_out"),
            ));
        }
        CaseEvent::TaskCreated {
            task_id,
            idempotency_key,
            title,
            owner_staff_id,
        } => {
            let entry_key = non_empty(idempotency_key)
                .map(|k| format!("msg:{k}"))
                .unwrap_or_else(|| format!("task:{task_id}"));
            entries.push(
                NewEntry::new(
                    EntryKind::Task,
                    at,
                    Actor::System,
                    format!("Task for {owner_staff_id}: {title}"),
                    EntryDetail::Task {
                        task_id: task_id.clone(),
                        title: title.clone(),
                        owner_staff_id: owner_staff_id.clone(),
                        outcome: String::new(),
                    },
                    entry_key,
                )
                .ranked(2),
            );
        }
        CaseEvent::TaskCompleted {
            task_id,
            staff_id,
            outcome,
        } => {
            case.last_contact_at = max_time(case.last_contact_at, at);
            case.first_follow_up_at = min_time(case.first_follow_up_at, at);
            let outcome_words = if outcome.is_empty() {
                String::new()
            } else {
                format!(": {}", outcome.replace('_', " "))
            };
            entries.push(NewEntry::new(
                EntryKind::Task,
                at,
                non_empty(staff_id).map_or(Actor::System, Actor::Staff),
                format!("Task done{outcome_words}"),
                EntryDetail::Task {
                    task_id: task_id.clone(),
                    title: String::new(),
                    owner_staff_id: staff_id.clone(),
                    outcome: outcome.clone(),
                },
                format!("task:{task_id}:done"),
            ));
        }
        CaseEvent::ResponseWindowElapsed => {
            trigger = Trigger::WindowElapsed;
        }
        CaseEvent::Superseded { .. } => {
            trigger = Trigger::Superseded;
            status_reason = "another option of the group was accepted".into();
        }
        CaseEvent::StaffStatus {
            staff_id,
            status,
            reason,
            expected,
        } => {
            validate_staff_status(case.status, *status, reason, *expected)?;
            status_reason = reason.trim().to_string();
            staff_actor = Some(staff_id.clone());
            trigger = Trigger::Staff(*status);
        }
        CaseEvent::StaffNote {
            staff_id,
            note_id,
            text,
        } => {
            entries.push(NewEntry::new(
                EntryKind::Note,
                at,
                Actor::Staff(staff_id.clone()),
                format!("Note by {staff_id}"),
                EntryDetail::Note {
                    note_id: *note_id,
                    text: text.clone(),
                    author_staff_id: staff_id.clone(),
                },
                format!("note:{note_id}"),
            ));
        }
        CaseEvent::StaffOwner {
            staff_id,
            owner_staff_id,
        } => {
            case.owner_by_staff = true;
            if case.owner_staff_id != *owner_staff_id {
                let previous = std::mem::replace(&mut case.owner_staff_id, owner_staff_id.clone());
                owner_change = Some(OwnerChange {
                    previous,
                    owner: owner_staff_id.clone(),
                    by_staff: Some(staff_id.clone()),
                });
            }
        }
    }

    if let Some(change) = &owner_change {
        let words = |o: &Option<String>| o.clone().unwrap_or_else(|| "nobody".into());
        let actor = change.by_staff.clone().map_or(Actor::System, Actor::Staff);
        entries.push(NewEntry::new(
            EntryKind::OwnerChanged,
            at,
            actor,
            format!(
                "Owner: {} \u{2192} {}",
                words(&change.previous),
                words(&change.owner)
            ),
            EntryDetail::OwnerChange {
                previous: change.previous.clone(),
                owner: change.owner.clone(),
            },
            key("owner"),
        ));
    }

    let from = case.status;
    let by_staff = matches!(trigger, Trigger::Staff(_));
    let mut status_change = None;
    if let Some(to) = next_status(from, case.status_context(at), trigger) {
        case.status = to;
        case.status_at = at;
        case.status_by_staff = by_staff;
        case.status_cause = if by_staff {
            "staff".into()
        } else {
            input.cause.clone()
        };
        match to {
            CaseStatus::PatientBooked => case.booked_at = Some(at),
            CaseStatus::TreatmentCompleted => {
                case.completed_at = min_time(case.completed_at, at);
            }
            _ => {}
        }
        if from == CaseStatus::PatientBooked && to.is_open() {
            case.booked_at = None;
            case.booked_appointment_id = None;
        }
        let staff = if by_staff { staff_actor.clone() } else { None };
        if !created {
            let actor = match (&staff, trigger) {
                (Some(id), _) => Actor::Staff(id.clone()),
                (None, Trigger::Booked | Trigger::Responded) => Actor::Patient,
                _ => Actor::System,
            };
            let why = if status_reason.is_empty() {
                String::new()
            } else {
                format!(" ({status_reason})")
            };
            entries.push(NewEntry::new(
                EntryKind::StatusChanged,
                at,
                actor,
                format!("Status: {} \u{2192} {}{why}", from.words(), to.words()),
                EntryDetail::StatusChange {
                    from: Some(from),
                    to,
                    by_staff,
                    reason: status_reason.clone(),
                },
                key("status"),
            ));
        }
        status_change = Some(StatusChange {
            from: (!created).then_some(from),
            to,
            by_staff: staff,
            reason: status_reason.clone(),
            cause: if by_staff {
                String::new()
            } else {
                input.cause.clone()
            },
            cause_event_id: if by_staff {
                String::new()
            } else {
                input.event_id.clone()
            },
        });
    } else if created {
        status_change = Some(StatusChange {
            from: None,
            to: case.status,
            by_staff: None,
            reason: String::new(),
            cause: input.cause.clone(),
            cause_event_id: input.event_id.clone(),
        });
    }

    case.response_due_at = response_due(&case, settings);
    if !matches!(input.event, CaseEvent::ResponseWindowElapsed) || status_change.is_some() {
        case.last_activity_at = case.last_activity_at.max(at);
    }
    let changed = created || !entries.is_empty() || before.as_ref() != Some(&case);
    Ok(Applied {
        state: case,
        created,
        changed,
        status_change,
        owner_change,
        entries,
        presentation,
    })
}

/// When the case's response window ends, if one runs: viewed, still SENT_VIEWED, no response. It starts at
/// the first view, or at a staff reopen to SENT_VIEWED.
pub fn response_due(case: &CaseState, settings: &CaseSettings) -> Option<DateTime<Utc>> {
    if case.status != CaseStatus::SentViewed || case.responded() {
        return None;
    }
    let first_view = case.first_view_at?;
    let start = if case.status_by_staff {
        first_view.max(case.status_at)
    } else {
        first_view
    };
    Some(start + settings.response_window())
}

fn mark_step_done(case: &mut CaseState, enrollment_id: &str, idempotency_key: &str) {
    // Rule steps are keyed "<enrollment_id>:<step_index>".
    let (enrollment, step) = match idempotency_key.rsplit_once(':') {
        Some((enrollment, step)) => (enrollment, step.parse::<i32>().ok()),
        None => (enrollment_id, None),
    };
    let enrollment = if enrollment.is_empty() {
        enrollment_id
    } else {
        enrollment
    };
    if let Some(e) = case
        .enrollments
        .iter_mut()
        .find(|e| e.enrollment_id == enrollment)
    {
        match step {
            Some(index) => e
                .steps
                .iter_mut()
                .filter(|s| s.step_index == index)
                .for_each(|s| s.done = true),
            // Without a step index, the earliest pending step is the one that fired.
            None => {
                if let Some(s) = e.steps.iter_mut().filter(|s| !s.done).min_by_key(|s| s.due) {
                    s.done = true;
                }
            }
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

/// The option of an alternative group whose value the totals count: the accepted one (booked or
/// completed before approved, then the latest), else the open option of highest value, else the option
/// of highest value. Ties go to the smallest case id, so the choice is deterministic.
pub fn group_representative(members: &[CaseState]) -> Option<Uuid> {
    let value = |c: &CaseState| c.value.as_ref().map_or(0, |m| m.amount_minor);
    let accepted_strength = |c: &CaseState| match c.status {
        CaseStatus::PatientBooked | CaseStatus::TreatmentCompleted => 2,
        _ if c.accepted() => 1,
        _ => 0,
    };
    let best = members.iter().max_by(|a, b| {
        accepted_strength(a)
            .cmp(&accepted_strength(b))
            .then_with(|| {
                if accepted_strength(a) > 0 {
                    a.status_at.cmp(&b.status_at)
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .then_with(|| a.open().cmp(&b.open()))
            .then_with(|| value(a).cmp(&value(b)))
            .then_with(|| b.case_id.cmp(&a.case_id))
    })?;
    Some(best.case_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(hour: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0)
            .single()
            .expect("valid time")
            + Duration::hours(hour)
    }

    fn id() -> Uuid {
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
    }

    fn input(event: CaseEvent, hour: i64, cause: &str) -> Input {
        Input {
            event,
            at: t(hour),
            event_id: format!("e-{cause}-{hour}"),
            cause: cause.into(),
        }
    }

    fn sent(hour: i64, send_count: i32, value: i64) -> Input {
        input(
            CaseEvent::PlanSent {
                plan_version: 1,
                patient_id: "p-1".into(),
                title: "Implant".into(),
                value: Some(Money::new(value, "EUR")),
                send_count,
                sent_by_staff_id: "dr-a".into(),
                owner_staff_id: "fd-1".into(),
                alternative_group_id: String::new(),
                quote_expiry_date: "2026-12-31".into(),
                presentation: Presentation::default(),
            },
            hour,
            "plans.plan_sent",
        )
    }

    fn viewed(hour: i64) -> Input {
        input(
            CaseEvent::PlanViewed {
                patient_id: "p-1".into(),
                session_id: "s-1".into(),
            },
            hour,
            "engagement.plan_viewed",
        )
    }

    fn booked(hour: i64, appointment: &str) -> Input {
        input(
            CaseEvent::AppointmentBooked {
                appointment_id: appointment.into(),
                start: Some(t(hour + 100)),
                patient_id: "p-1".into(),
            },
            hour,
            "appointment.booked",
        )
    }

    fn run(inputs: &[Input]) -> (CaseState, Vec<Applied>) {
        let settings = CaseSettings::default();
        let mut state: Option<CaseState> = None;
        let mut all = Vec::new();
        for i in inputs {
            let applied = apply(state.as_ref(), "c1", id(), i, &settings).expect("applies");
            state = Some(applied.state.clone());
            all.push(applied);
        }
        (state.expect("a case"), all)
    }

    #[test]
    fn a_case_moves_through_sent_viewed_waiting_and_booked() {
        let (case, applied) = run(&[sent(0, 1, 250_000), viewed(2)]);
        assert_eq!(case.status, CaseStatus::SentViewed);
        assert_eq!(case.response_due_at, Some(t(2 + 48)));
        assert_eq!(
            applied[0].status_change.as_ref().map(|c| (c.from, c.to)),
            Some((None, CaseStatus::SentNotViewed))
        );
        assert_eq!(case.owner_staff_id.as_deref(), Some("fd-1"));

        let window = Input {
            event: CaseEvent::ResponseWindowElapsed,
            at: t(50),
            event_id: "timer-1".into(),
            cause: CAUSE_RESPONSE_WINDOW.into(),
        };
        let after =
            apply(Some(&case), "c1", id(), &window, &CaseSettings::default()).expect("applies");
        assert_eq!(after.state.status, CaseStatus::WaitingForResponse);
        assert_eq!(after.state.response_due_at, None);
        let change = after.status_change.expect("changed");
        assert_eq!(change.cause, CAUSE_RESPONSE_WINDOW);

        let booked = apply(
            Some(&after.state),
            "c1",
            id(),
            &booked(60, "a-1"),
            &CaseSettings::default(),
        )
        .expect("applies");
        assert_eq!(booked.state.status, CaseStatus::PatientBooked);
        assert_eq!(booked.state.booked_at, Some(t(60)));
        assert!(
            booked
                .entries
                .iter()
                .any(|e| e.entry.kind == EntryKind::StatusChanged)
        );
    }

    #[test]
    fn out_of_order_events_end_in_the_same_case() {
        let events = [sent(0, 1, 100), viewed(2), booked(5, "a-1")];
        let (in_order, _) = run(&events);
        let (reversed, _) = run(&[events[2].clone(), events[1].clone(), events[0].clone()]);
        let (middle_first, _) = run(&[events[1].clone(), events[0].clone(), events[2].clone()]);
        for case in [&reversed, &middle_first] {
            assert_eq!(case.status, CaseStatus::PatientBooked);
            assert_eq!(case.first_sent_at, in_order.first_sent_at);
            assert_eq!(case.first_view_at, in_order.first_view_at);
            assert_eq!(case.value, in_order.value);
            assert!(case.viewed);
        }
    }

    #[test]
    fn a_case_survives_its_stored_form_and_leaves_defaults_out() {
        let (case, _) = run(&[sent(0, 1, 100), viewed(2), booked(5, "a-1")]);
        let json = serde_json::to_string(&case).expect("serializes");
        assert!(!json.contains("null"), "{json}");
        assert!(
            !json.contains("reminders_sent"),
            "zero counters are left out: {json}"
        );
        let back: CaseState = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, case);
        // A row written before a field existed reads that field as its default.
        let sparse = format!(
            r#"{{"tenant_id":"c1","case_id":"{}","status":"SentViewed","status_at":"2026-11-02T08:00:00Z","created_at":"2026-11-02T08:00:00Z","last_activity_at":"2026-11-02T08:00:00+00:00"}}"#,
            id()
        );
        let old: CaseState = serde_json::from_str(&sparse).expect("sparse row reads");
        assert_eq!(old.view_count, 0);
        assert!(old.enrollments.is_empty());
    }

    #[test]
    fn a_late_view_never_moves_a_booked_case_back() {
        let (case, applied) = run(&[sent(0, 1, 100), booked(3, "a-1"), viewed(1)]);
        assert_eq!(case.status, CaseStatus::PatientBooked);
        assert!(applied[2].status_change.is_none());
        assert!(case.viewed, "the view is still recorded");
    }

    #[test]
    fn a_cancellation_before_a_booking_does_not_reject_it() {
        let cancel = input(
            CaseEvent::PlanCancelled {
                patient_id: "p-1".into(),
                staff_id: "dr-a".into(),
                reason: "changed mind".into(),
            },
            2,
            CAUSE_PLAN_CANCELLED,
        );
        let (case, _) = run(&[sent(0, 1, 100), booked(4, "a-1"), cancel]);
        assert_eq!(case.status, CaseStatus::PatientBooked);
    }

    #[test]
    fn a_resend_keeps_the_case_and_records_the_send() {
        let (case, applied) = run(&[sent(0, 1, 100), viewed(1), sent(30, 2, 120)]);
        assert_eq!(case.status, CaseStatus::SentViewed);
        assert_eq!(case.send_count, 2);
        assert_eq!(case.first_sent_at, Some(t(0)));
        assert_eq!(case.last_sent_at, Some(t(30)));
        assert_eq!(case.value, Some(Money::new(120, "EUR")));
        assert!(applied[2].status_change.is_none());
        assert_eq!(applied[2].entries[0].entry.kind, EntryKind::Sent);
        // An older send arriving late does not replace the latest version's facts.
        let late = apply(
            Some(&case),
            "c1",
            id(),
            &sent(10, 1, 90),
            &CaseSettings::default(),
        )
        .expect("applies");
        assert_eq!(late.state.value, Some(Money::new(120, "EUR")));
        assert!(late.presentation.is_none());
    }

    #[test]
    fn a_reply_ends_waiting_and_stops_the_window() {
        let window = Input {
            event: CaseEvent::ResponseWindowElapsed,
            at: t(50),
            event_id: "timer".into(),
            cause: CAUSE_RESPONSE_WINDOW.into(),
        };
        let reply = input(
            CaseEvent::PatientReplied {
                message_id: "m-1".into(),
                channel: Channel::Sms,
                text: "Can I call you?".into(),
            },
            60,
            "notifications.patient_replied",
        );
        let (case, applied) = run(&[sent(0, 1, 100), viewed(1), window, reply]);
        assert_eq!(case.status, CaseStatus::SentViewed);
        assert_eq!(case.response_due_at, None);
        assert_eq!(case.last_reply_at, Some(t(60)));
        assert_eq!(
            applied[3].status_change.as_ref().map(|c| c.to),
            Some(CaseStatus::SentViewed)
        );
    }

    #[test]
    fn staff_changes_win_over_later_automatic_events_but_not_bookings() {
        let (case, _) = run(&[sent(0, 1, 100)]);
        let reject = Input {
            event: CaseEvent::StaffStatus {
                staff_id: "fd-1".into(),
                status: CaseStatus::PatientRejected,
                reason: "not interested".into(),
                expected: None,
            },
            at: t(5),
            event_id: "staff-1".into(),
            cause: "staff".into(),
        };
        let settings = CaseSettings::default();
        let rejected = apply(Some(&case), "c1", id(), &reject, &settings).expect("applies");
        assert_eq!(rejected.state.status, CaseStatus::PatientRejected);
        let change = rejected.status_change.clone().expect("changed");
        assert_eq!(change.by_staff.as_deref(), Some("fd-1"));
        assert_eq!(change.reason, "not interested");

        let view = apply(Some(&rejected.state), "c1", id(), &viewed(6), &settings).expect("ok");
        assert_eq!(view.state.status, CaseStatus::PatientRejected);
        let early_booking = apply(
            Some(&rejected.state),
            "c1",
            id(),
            &booked(4, "a-1"),
            &settings,
        )
        .expect("ok");
        assert_eq!(early_booking.state.status, CaseStatus::PatientRejected);
        let later_booking = apply(
            Some(&rejected.state),
            "c1",
            id(),
            &booked(7, "a-1"),
            &settings,
        )
        .expect("ok");
        assert_eq!(later_booking.state.status, CaseStatus::PatientBooked);
    }

    #[test]
    fn staff_status_changes_are_validated() {
        assert_eq!(
            validate_staff_status(CaseStatus::SentViewed, CaseStatus::Superseded, "", None),
            Err(DomainError::StatusNotSettable("SUPERSEDED"))
        );
        assert_eq!(
            validate_staff_status(CaseStatus::PatientBooked, CaseStatus::SentViewed, " ", None),
            Err(DomainError::ReopenWithoutReason)
        );
        assert!(matches!(
            validate_staff_status(
                CaseStatus::PatientBooked,
                CaseStatus::PatientRejected,
                "",
                Some(CaseStatus::SentViewed)
            ),
            Err(DomainError::StatusChanged { .. })
        ));
        assert_eq!(
            validate_staff_status(
                CaseStatus::PatientBooked,
                CaseStatus::SentViewed,
                "appointment was a hygiene visit",
                Some(CaseStatus::PatientBooked)
            ),
            Ok(())
        );
    }

    #[test]
    fn a_cancelled_booking_appointment_reopens_the_case() {
        let cancel = input(
            CaseEvent::AppointmentCancelled {
                appointment_id: "a-1".into(),
                by_patient: true,
            },
            8,
            "appointment.cancelled",
        );
        let (case, _) = run(&[sent(0, 1, 100), viewed(1), booked(5, "a-1"), cancel.clone()]);
        assert_eq!(case.status, CaseStatus::SentViewed);
        assert_eq!(case.booked_at, None);
        // The same cancellation arriving before its booking keeps the booking from closing the case.
        let (case, _) = run(&[sent(0, 1, 100), viewed(1), cancel, booked(5, "a-1")]);
        assert_eq!(case.status, CaseStatus::SentViewed);
        // Another appointment's cancellation changes nothing.
        let other = input(
            CaseEvent::AppointmentCancelled {
                appointment_id: "a-9".into(),
                by_patient: true,
            },
            9,
            "appointment.cancelled",
        );
        let (case, _) = run(&[sent(0, 1, 100), booked(5, "a-1"), other]);
        assert_eq!(case.status, CaseStatus::PatientBooked);
    }

    #[test]
    fn engagement_facts_are_replaced_only_by_newer_facts() {
        let facts = |count: i32, total: i64| EngagementFacts {
            first_view_at: Some(t(1)),
            last_view_at: Some(t(count as i64)),
            view_count: count,
            total_view_millis: total,
            section_times: vec![SectionTime {
                section: super::super::vocab::Section::TreatmentDetails,
                millis: total,
            }],
        };
        let update = |hour: i64, count: i32, total: i64| {
            input(
                CaseEvent::EngagementUpdated {
                    patient_id: "p-1".into(),
                    facts: facts(count, total),
                    ended_sessions: vec![ViewSession {
                        session_id: format!("s-{hour}"),
                        start: t(hour - 1),
                        view_millis: total,
                        sections: facts(count, total).section_times,
                    }],
                },
                hour,
                "engagement.engagement_updated",
            )
        };
        let (case, applied) = run(&[sent(0, 1, 100), update(5, 3, 900_000), update(3, 2, 60_000)]);
        assert_eq!(case.view_count, 3);
        assert_eq!(case.total_view_millis, 900_000);
        assert_eq!(case.status, CaseStatus::SentViewed);
        assert_eq!(
            applied[1].entries[0].entry.summary,
            "Viewed for 15 min: treatment details"
        );
        // The late update's session is still on the timeline.
        assert_eq!(applied[2].entries.len(), 1);
    }

    #[test]
    fn reminders_count_and_mark_the_next_follow_up() {
        let started = input(
            CaseEvent::FollowUpStarted {
                enrollment_id: "enr-1".into(),
                rule_name: "Plan follow-up".into(),
                steps: vec![(0, t(24 * 7)), (1, t(24 * 14))],
            },
            1,
            "scheduler.enrollment_started",
        );
        let message = |hour: i64, result: MessageResult| {
            input(
                CaseEvent::Message {
                    message_id: "m-1".into(),
                    idempotency_key: "enr-1:0".into(),
                    channel: Channel::Sms,
                    enrollment_id: "enr-1".into(),
                    result,
                    reason: String::new(),
                },
                hour,
                "notifications.message_sent",
            )
        };
        let (case, applied) = run(&[
            sent(0, 1, 100),
            started,
            message(24 * 7, MessageResult::Sent),
            message(24 * 7 + 1, MessageResult::Delivered),
        ]);
        assert_eq!(case.reminders_sent, 1);
        assert_eq!(case.first_follow_up_at, Some(t(24 * 7)));
        assert_eq!(case.next_follow_up_at(), Some(t(24 * 14)));
        assert_eq!(applied[3].entries[0].dedupe_key, "msg:enr-1:0");
        assert_eq!(applied[3].entries[0].rank, 3);
        assert_eq!(
            applied[3].entries[0].entry.summary,
            "SMS reminder delivered"
        );
    }

    #[test]
    fn owners_follow_the_plan_until_staff_choose() {
        let assign = Input {
            event: CaseEvent::StaffOwner {
                staff_id: "admin".into(),
                owner_staff_id: Some("fd-2".into()),
            },
            at: t(2),
            event_id: "staff-2".into(),
            cause: "staff".into(),
        };
        let (case, applied) = run(&[sent(0, 1, 100), assign, sent(3, 2, 100)]);
        assert_eq!(case.owner_staff_id.as_deref(), Some("fd-2"));
        assert_eq!(
            applied[1].owner_change,
            Some(OwnerChange {
                previous: Some("fd-1".into()),
                owner: Some("fd-2".into()),
                by_staff: Some("admin".into()),
            })
        );
        assert!(applied[2].owner_change.is_none());
    }

    #[test]
    fn the_group_counts_the_accepted_option_else_the_highest_open_one() {
        let settings = CaseSettings::default();
        let option = |n: u128, value: i64| {
            let mut case = CaseState::new("c1", Uuid::from_u128(n), t(0));
            case.status = CaseStatus::SentViewed;
            case.value = Some(Money::new(value, "EUR"));
            case
        };
        let (good, better, best) = (option(1, 100), option(2, 200), option(3, 300));
        assert_eq!(
            group_representative(&[good.clone(), better.clone(), best.clone()]),
            Some(best.case_id)
        );
        let approve = Input {
            event: CaseEvent::PlanApproved {
                plan_version: 1,
                patient_id: "p".into(),
                by_patient: true,
                staff_id: String::new(),
                value: None,
                alternative_group_id: "g".into(),
                owner_staff_id: String::new(),
            },
            at: t(4),
            event_id: "e".into(),
            cause: "plans.plan_approved".into(),
        };
        let approved = apply(Some(&good), "c1", good.case_id, &approve, &settings)
            .expect("applies")
            .state;
        assert!(approved.accepted());
        assert_eq!(
            group_representative(&[approved.clone(), better.clone(), best.clone()]),
            Some(good.case_id)
        );
        let superseded = apply(
            Some(&best),
            "c1",
            best.case_id,
            &Input {
                event: CaseEvent::Superseded {
                    by_case_id: good.case_id,
                },
                at: t(4),
                event_id: "e".into(),
                cause: CAUSE_GROUP.into(),
            },
            &settings,
        )
        .expect("applies");
        assert_eq!(superseded.state.status, CaseStatus::Superseded);
    }
}
