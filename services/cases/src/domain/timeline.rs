//! Timeline entries: what happened to a case, newest first, as people read it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::status::CaseStatus;
use super::vocab::{Channel, SectionTime};

/// What an entry records (followup.cases.v1.TimelineKind numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    Created,
    Sent,
    Viewed,
    ApprovedByPatient,
    FollowUpScheduled,
    FollowUpStopped,
    Reminder,
    PatientReplied,
    StatusChanged,
    Note,
    OwnerChanged,
    Task,
    Booked,
    PlanRevised,
    OptedOut,
    ApprovedByStaff,
    ItemCompleted,
    Appointment,
}

impl EntryKind {
    pub fn number(self) -> i32 {
        match self {
            EntryKind::Created => 1,
            EntryKind::Sent => 2,
            EntryKind::Viewed => 3,
            EntryKind::ApprovedByPatient => 4,
            EntryKind::FollowUpScheduled => 5,
            EntryKind::FollowUpStopped => 6,
            EntryKind::Reminder => 7,
            EntryKind::PatientReplied => 8,
            EntryKind::StatusChanged => 9,
            EntryKind::Note => 10,
            EntryKind::OwnerChanged => 11,
            EntryKind::Task => 12,
            EntryKind::Booked => 13,
            EntryKind::PlanRevised => 14,
            EntryKind::OptedOut => 15,
            EntryKind::ApprovedByStaff => 16,
            EntryKind::ItemCompleted => 17,
            EntryKind::Appointment => 18,
        }
    }

    pub fn from_number(n: i32) -> Option<Self> {
        use EntryKind::*;
        [
            Created,
            Sent,
            Viewed,
            ApprovedByPatient,
            FollowUpScheduled,
            FollowUpStopped,
            Reminder,
            PatientReplied,
            StatusChanged,
            Note,
            OwnerChanged,
            Task,
            Booked,
            PlanRevised,
            OptedOut,
            ApprovedByStaff,
            ItemCompleted,
            Appointment,
        ]
        .into_iter()
        .find(|k| k.number() == n)
    }
}

/// Who did it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    Staff(String),
    Patient,
    System,
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::Staff(_) => "staff",
            Actor::Patient => "patient",
            Actor::System => "system",
        }
    }

    pub fn staff_id(&self) -> &str {
        match self {
            Actor::Staff(id) => id,
            _ => "",
        }
    }
}

/// How far a message got; a later, further result replaces an earlier one on the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageResult {
    Requested,
    Sent,
    Delivered,
    Failed,
    Suppressed,
    Received,
}

impl MessageResult {
    pub fn words(self) -> &'static str {
        match self {
            MessageResult::Requested => "requested",
            MessageResult::Sent => "sent",
            MessageResult::Delivered => "delivered",
            MessageResult::Failed => "failed",
            MessageResult::Suppressed => "suppressed",
            MessageResult::Received => "received",
        }
    }

    /// An entry's rank: an update with a higher rank replaces the entry (sent < delivered/failed).
    pub fn rank(self) -> i16 {
        match self {
            MessageResult::Requested => 1,
            MessageResult::Sent => 2,
            MessageResult::Delivered | MessageResult::Failed | MessageResult::Suppressed => 3,
            MessageResult::Received => 3,
        }
    }
}

/// The detail of the kinds that have one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EntryDetail {
    None,
    StatusChange {
        from: Option<CaseStatus>,
        to: CaseStatus,
        by_staff: bool,
        reason: String,
    },
    View {
        session_id: String,
        view_millis: i64,
        sections: Vec<SectionTime>,
    },
    Message {
        message_id: String,
        channel: Channel,
        result: MessageResult,
        reason: String,
        text: String,
    },
    FollowUp {
        enrollment_id: String,
        rule_name: String,
        planned: Vec<DateTime<Utc>>,
        stop_reason: i32,
    },
    Task {
        task_id: String,
        title: String,
        owner_staff_id: String,
        outcome: String,
    },
    OwnerChange {
        previous: Option<String>,
        owner: Option<String>,
    },
    Note {
        note_id: Uuid,
        text: String,
        author_staff_id: String,
    },
}

/// One entry of a case's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub entry_id: Uuid,
    pub kind: EntryKind,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub summary: String,
    pub detail: EntryDetail,
}

/// An entry to record, with the key that makes it idempotent per case and the rank that decides whether
/// it replaces an entry with the same key (a message's later result).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    pub entry: Entry,
    pub dedupe_key: String,
    pub rank: i16,
}

impl NewEntry {
    pub fn new(
        kind: EntryKind,
        at: DateTime<Utc>,
        actor: Actor,
        summary: impl Into<String>,
        detail: EntryDetail,
        dedupe_key: impl Into<String>,
    ) -> Self {
        Self {
            entry: Entry {
                entry_id: Uuid::now_v7(),
                kind,
                at,
                actor,
                summary: summary.into(),
                detail,
            },
            dedupe_key: dedupe_key.into(),
            rank: 1,
        }
    }

    pub fn ranked(mut self, rank: i16) -> Self {
        self.rank = rank;
        self
    }
}

/// Why a follow-up stopped (followup.common.v1.StopReason numbers), in words.
pub fn stop_reason_words(reason: i32) -> &'static str {
    match reason {
        1 => "the patient booked",
        2 => "the plan was rejected",
        3 => "the patient replied",
        4 => "the patient opted out",
        5 => "the plan was completed",
        6 => "the plan was cancelled",
        7 => "the case was closed",
        8 => "every step ran",
        9 => "cancelled by staff",
        10 => "the rule was deleted",
        11 => "the plan was approved",
        _ => "stopped",
    }
}

/// Why notifications did not send a message (followup.common.v1.SuppressionReason numbers), in words.
pub fn suppression_words(reason: i32) -> &'static str {
    match reason {
        1 => "the patient opted out",
        2 => "over the frequency cap",
        3 => "no address for the channel",
        4 => "invalid address",
        5 => "unknown recipient",
        6 => "template unavailable",
        7 => "expired before it could be sent",
        8 => "category disabled",
        _ => "not sent",
    }
}
