//! Case statuses and the one function that moves them.
//!
//! [`next_status`] decides every status change, automatic or by staff, from the current status, a little
//! context and the [`Trigger`] an event or a timer produced. It is pure, and the tests below walk the whole
//! table of (status, trigger) pairs, so the rules are read in one place:
//!
//! - automatic progress among open statuses only goes forward (a late `plan_viewed` never moves a booked
//!   or waiting case back); a response ends "waiting for response";
//! - a closed status (booked, rejected, completed, superseded) is replaced only by a later fact: a booking
//!   or a completion; a cancellation of the booking appointment reopens a booking;
//! - a staff change wins over anything that happened before it, and a closed status set by staff is
//!   replaced only by a later booking or completion.

use serde::{Deserialize, Serialize};

/// The status of a case presentation (followup.common.v1.CaseStatus numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum CaseStatus {
    DraftNotSent,
    SentNotViewed,
    SentViewed,
    WaitingForResponse,
    PatientBooked,
    PatientRejected,
    TreatmentCompleted,
    Superseded,
}

impl CaseStatus {
    pub const ALL: [CaseStatus; 8] = [
        CaseStatus::DraftNotSent,
        CaseStatus::SentNotViewed,
        CaseStatus::SentViewed,
        CaseStatus::WaitingForResponse,
        CaseStatus::PatientBooked,
        CaseStatus::PatientRejected,
        CaseStatus::TreatmentCompleted,
        CaseStatus::Superseded,
    ];

    pub fn number(self) -> i32 {
        match self {
            CaseStatus::DraftNotSent => 1,
            CaseStatus::SentNotViewed => 2,
            CaseStatus::SentViewed => 3,
            CaseStatus::WaitingForResponse => 4,
            CaseStatus::PatientBooked => 5,
            CaseStatus::PatientRejected => 6,
            CaseStatus::TreatmentCompleted => 7,
            CaseStatus::Superseded => 8,
        }
    }

    pub fn from_number(n: i32) -> Option<Self> {
        CaseStatus::ALL.into_iter().find(|s| s.number() == n)
    }

    /// DRAFT_NOT_SENT, SENT_NOT_VIEWED, SENT_VIEWED and WAITING_FOR_RESPONSE are open.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            CaseStatus::DraftNotSent
                | CaseStatus::SentNotViewed
                | CaseStatus::SentViewed
                | CaseStatus::WaitingForResponse
        )
    }

    pub fn is_closed(self) -> bool {
        !self.is_open()
    }

    /// The proto name without prefix, e.g. "SENT_VIEWED" (CLI arguments, logs).
    pub fn name(self) -> &'static str {
        match self {
            CaseStatus::DraftNotSent => "DRAFT_NOT_SENT",
            CaseStatus::SentNotViewed => "SENT_NOT_VIEWED",
            CaseStatus::SentViewed => "SENT_VIEWED",
            CaseStatus::WaitingForResponse => "WAITING_FOR_RESPONSE",
            CaseStatus::PatientBooked => "PATIENT_BOOKED",
            CaseStatus::PatientRejected => "PATIENT_REJECTED",
            CaseStatus::TreatmentCompleted => "TREATMENT_COMPLETED",
            CaseStatus::Superseded => "SUPERSEDED",
        }
    }

    /// For people: "sent, not viewed".
    pub fn words(self) -> &'static str {
        match self {
            CaseStatus::DraftNotSent => "draft, not sent",
            CaseStatus::SentNotViewed => "sent, not viewed",
            CaseStatus::SentViewed => "sent, viewed",
            CaseStatus::WaitingForResponse => "waiting for response",
            CaseStatus::PatientBooked => "patient booked",
            CaseStatus::PatientRejected => "patient rejected",
            CaseStatus::TreatmentCompleted => "treatment completed",
            CaseStatus::Superseded => "superseded by another option",
        }
    }

    /// Forward order of the open statuses: automatic progress never goes down it.
    fn open_rank(self) -> Option<u8> {
        match self {
            CaseStatus::DraftNotSent => Some(0),
            CaseStatus::SentNotViewed => Some(1),
            CaseStatus::SentViewed => Some(2),
            CaseStatus::WaitingForResponse => Some(3),
            _ => None,
        }
    }
}

/// What an event or timer means for a case's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// plan_created.
    Created,
    /// plan_sent (each send).
    Sent,
    /// plan_viewed, or engagement facts showing a view.
    Viewed,
    /// The response window passed since the first view (timer).
    WindowElapsed,
    /// The patient approved in the portal, replied, or staff recorded an approval: a response.
    Responded,
    /// An appointment was booked (or attended) for the plan, or for the patient of an open case.
    Booked,
    /// The appointment that booked the case was cancelled.
    BookingCancelled,
    /// plan_cancelled: the patient discontinued, or the plan was withdrawn.
    PlanCancelled,
    /// plan_completed: every item is done.
    PlanCompleted,
    /// Another option of the case's alternative group was accepted or booked.
    Superseded,
    /// A staff member set this status (UpdateCaseStatus).
    Staff(CaseStatus),
    /// Anything else (reminders, tasks, notes, engagement without a new view): no status change.
    Activity,
}

impl Trigger {
    /// Every trigger, for tables (staff triggers to each status).
    pub fn all() -> Vec<Trigger> {
        let mut all = vec![
            Trigger::Created,
            Trigger::Sent,
            Trigger::Viewed,
            Trigger::WindowElapsed,
            Trigger::Responded,
            Trigger::Booked,
            Trigger::BookingCancelled,
            Trigger::PlanCancelled,
            Trigger::PlanCompleted,
            Trigger::Superseded,
            Trigger::Activity,
        ];
        all.extend(CaseStatus::ALL.into_iter().map(Trigger::Staff));
        all
    }
}

/// What [`next_status`] needs to know about a case beside its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusContext {
    /// The current status was set by staff.
    pub by_staff: bool,
    /// The patient has viewed the plan.
    pub viewed: bool,
    /// The patient has responded (approval or reply).
    pub responded: bool,
    /// The current status came from plan_cancelled (an automatic rejection).
    pub rejected_by_plan_cancel: bool,
    /// The event happened before the current status was set.
    pub stale: bool,
}

/// The status after `trigger`, or None when the status does not change.
pub fn next_status(status: CaseStatus, ctx: StatusContext, trigger: Trigger) -> Option<CaseStatus> {
    use CaseStatus as S;
    use Trigger as T;

    if let T::Staff(target) = trigger {
        return (target != status).then_some(target);
    }
    // Whatever happened before a staff change, the staff member knew better.
    if ctx.by_staff && ctx.stale {
        return None;
    }
    // A closed status is a fact; only a later fact replaces it.
    if status.is_closed() && ctx.stale {
        return None;
    }
    // Staff closed it: only a later booking or completion overrides them.
    if ctx.by_staff && status.is_closed() && !matches!(trigger, T::Booked | T::PlanCompleted) {
        return None;
    }

    let reopened = if ctx.viewed {
        S::SentViewed
    } else {
        S::SentNotViewed
    };
    let forward = |to: CaseStatus| -> Option<CaseStatus> {
        match (status.open_rank(), to.open_rank()) {
            (Some(from), Some(target)) if target > from => Some(to),
            _ => None,
        }
    };
    let next = match (status, trigger) {
        (_, T::Created | T::Activity) => None,
        (_, T::Sent) => forward(S::SentNotViewed),
        (_, T::Viewed) => forward(S::SentViewed),
        (S::SentViewed, T::WindowElapsed) if !ctx.responded => Some(S::WaitingForResponse),
        (_, T::WindowElapsed) => None,
        (S::WaitingForResponse, T::Responded) => Some(S::SentViewed),
        (_, T::Responded) => None,
        (S::TreatmentCompleted | S::PatientBooked, T::Booked) => None,
        (_, T::Booked) => Some(S::PatientBooked),
        (S::PatientBooked, T::BookingCancelled) => Some(reopened),
        (_, T::BookingCancelled) => None,
        (S::TreatmentCompleted | S::Superseded | S::PatientRejected, T::PlanCancelled) => None,
        (_, T::PlanCancelled) => Some(S::PatientRejected),
        (S::TreatmentCompleted, T::PlanCompleted) => None,
        (_, T::PlanCompleted) => Some(S::TreatmentCompleted),
        (s, T::Superseded) if s.is_open() => Some(S::Superseded),
        (S::PatientRejected, T::Superseded) if ctx.rejected_by_plan_cancel => Some(S::Superseded),
        (_, T::Superseded) => None,
        (_, T::Staff(_)) => None,
    };
    next.filter(|to| *to != status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaseStatus as S;
    use Trigger as T;

    const DRAFT: S = S::DraftNotSent;
    const SNV: S = S::SentNotViewed;
    const SV: S = S::SentViewed;
    const WAIT: S = S::WaitingForResponse;
    const BOOKED: S = S::PatientBooked;
    const REJ: S = S::PatientRejected;
    const DONE: S = S::TreatmentCompleted;
    const SUP: S = S::Superseded;

    /// The table for an automatic status, a fresh event, a viewed case without a response. `None`: the
    /// status stays.
    fn automatic_table() -> Vec<(CaseStatus, Trigger, Option<CaseStatus>)> {
        let mut rows = Vec::new();
        let mut row = |s, t, to| rows.push((s, t, to));
        // DRAFT_NOT_SENT
        row(DRAFT, T::Created, None);
        row(DRAFT, T::Sent, Some(SNV));
        row(DRAFT, T::Viewed, Some(SV));
        row(DRAFT, T::WindowElapsed, None);
        row(DRAFT, T::Responded, None);
        row(DRAFT, T::Booked, Some(BOOKED));
        row(DRAFT, T::BookingCancelled, None);
        row(DRAFT, T::PlanCancelled, Some(REJ));
        row(DRAFT, T::PlanCompleted, Some(DONE));
        row(DRAFT, T::Superseded, Some(SUP));
        row(DRAFT, T::Activity, None);
        // SENT_NOT_VIEWED
        row(SNV, T::Created, None);
        row(SNV, T::Sent, None);
        row(SNV, T::Viewed, Some(SV));
        row(SNV, T::WindowElapsed, None);
        row(SNV, T::Responded, None);
        row(SNV, T::Booked, Some(BOOKED));
        row(SNV, T::BookingCancelled, None);
        row(SNV, T::PlanCancelled, Some(REJ));
        row(SNV, T::PlanCompleted, Some(DONE));
        row(SNV, T::Superseded, Some(SUP));
        row(SNV, T::Activity, None);
        // SENT_VIEWED
        row(SV, T::Created, None);
        row(SV, T::Sent, None);
        row(SV, T::Viewed, None);
        row(SV, T::WindowElapsed, Some(WAIT));
        row(SV, T::Responded, None);
        row(SV, T::Booked, Some(BOOKED));
        row(SV, T::BookingCancelled, None);
        row(SV, T::PlanCancelled, Some(REJ));
        row(SV, T::PlanCompleted, Some(DONE));
        row(SV, T::Superseded, Some(SUP));
        row(SV, T::Activity, None);
        // WAITING_FOR_RESPONSE
        row(WAIT, T::Created, None);
        row(WAIT, T::Sent, None);
        row(WAIT, T::Viewed, None);
        row(WAIT, T::WindowElapsed, None);
        row(WAIT, T::Responded, Some(SV));
        row(WAIT, T::Booked, Some(BOOKED));
        row(WAIT, T::BookingCancelled, None);
        row(WAIT, T::PlanCancelled, Some(REJ));
        row(WAIT, T::PlanCompleted, Some(DONE));
        row(WAIT, T::Superseded, Some(SUP));
        row(WAIT, T::Activity, None);
        // PATIENT_BOOKED
        row(BOOKED, T::Created, None);
        row(BOOKED, T::Sent, None);
        row(BOOKED, T::Viewed, None);
        row(BOOKED, T::WindowElapsed, None);
        row(BOOKED, T::Responded, None);
        row(BOOKED, T::Booked, None);
        row(BOOKED, T::BookingCancelled, Some(SV));
        row(BOOKED, T::PlanCancelled, Some(REJ));
        row(BOOKED, T::PlanCompleted, Some(DONE));
        row(BOOKED, T::Superseded, None);
        row(BOOKED, T::Activity, None);
        // PATIENT_REJECTED (by staff-less automation: plan_cancelled)
        row(REJ, T::Created, None);
        row(REJ, T::Sent, None);
        row(REJ, T::Viewed, None);
        row(REJ, T::WindowElapsed, None);
        row(REJ, T::Responded, None);
        row(REJ, T::Booked, Some(BOOKED));
        row(REJ, T::BookingCancelled, None);
        row(REJ, T::PlanCancelled, None);
        row(REJ, T::PlanCompleted, Some(DONE));
        row(REJ, T::Superseded, None);
        row(REJ, T::Activity, None);
        // TREATMENT_COMPLETED: final for automation
        row(DONE, T::Created, None);
        row(DONE, T::Sent, None);
        row(DONE, T::Viewed, None);
        row(DONE, T::WindowElapsed, None);
        row(DONE, T::Responded, None);
        row(DONE, T::Booked, None);
        row(DONE, T::BookingCancelled, None);
        row(DONE, T::PlanCancelled, None);
        row(DONE, T::PlanCompleted, None);
        row(DONE, T::Superseded, None);
        row(DONE, T::Activity, None);
        // SUPERSEDED
        row(SUP, T::Created, None);
        row(SUP, T::Sent, None);
        row(SUP, T::Viewed, None);
        row(SUP, T::WindowElapsed, None);
        row(SUP, T::Responded, None);
        row(SUP, T::Booked, Some(BOOKED));
        row(SUP, T::BookingCancelled, None);
        row(SUP, T::PlanCancelled, None);
        row(SUP, T::PlanCompleted, Some(DONE));
        row(SUP, T::Superseded, None);
        row(SUP, T::Activity, None);
        // Staff may set any status from any status; the same status is no change.
        for from in CaseStatus::ALL {
            for to in CaseStatus::ALL {
                rows.push((from, T::Staff(to), (from != to).then_some(to)));
            }
        }
        rows
    }

    fn viewed() -> StatusContext {
        StatusContext {
            viewed: true,
            ..StatusContext::default()
        }
    }

    #[test]
    fn every_status_and_trigger_pair_is_in_the_table() {
        let table = automatic_table();
        for status in CaseStatus::ALL {
            for trigger in Trigger::all() {
                let rows: Vec<_> = table
                    .iter()
                    .filter(|(s, t, _)| *s == status && *t == trigger)
                    .collect();
                assert_eq!(
                    rows.len(),
                    1,
                    "({status:?}, {trigger:?}) must be in the table once"
                );
            }
        }
    }

    #[test]
    fn automatic_transitions_follow_the_table() {
        for (status, trigger, expected) in automatic_table() {
            assert_eq!(
                next_status(status, viewed(), trigger),
                expected,
                "({status:?}, {trigger:?})"
            );
        }
    }

    #[test]
    fn a_response_stops_the_window_and_a_cancelled_booking_reopens_by_what_was_seen() {
        let responded = StatusContext {
            responded: true,
            ..viewed()
        };
        assert_eq!(next_status(SV, responded, T::WindowElapsed), None);
        assert_eq!(
            next_status(BOOKED, StatusContext::default(), T::BookingCancelled),
            Some(SNV)
        );
    }

    #[test]
    fn only_automatic_rejections_turn_into_superseded() {
        let by_cancel = StatusContext {
            rejected_by_plan_cancel: true,
            ..viewed()
        };
        assert_eq!(next_status(REJ, by_cancel, T::Superseded), Some(SUP));
        assert_eq!(next_status(REJ, viewed(), T::Superseded), None);
    }

    #[test]
    fn a_stale_event_never_replaces_a_closed_status() {
        let stale = StatusContext {
            stale: true,
            ..viewed()
        };
        for status in CaseStatus::ALL.into_iter().filter(|s| s.is_closed()) {
            for trigger in Trigger::all() {
                if matches!(trigger, T::Staff(_)) {
                    continue;
                }
                assert_eq!(
                    next_status(status, stale, trigger),
                    None,
                    "({status:?}, {trigger:?})"
                );
            }
        }
        // Open statuses still move forward on late events: a booking that happened before a view that
        // was applied first still books.
        assert_eq!(next_status(SV, stale, T::Booked), Some(BOOKED));
        assert_eq!(next_status(BOOKED, stale, T::Viewed), None);
    }

    #[test]
    fn staff_changes_win_except_over_later_bookings_and_completions() {
        let staff = StatusContext {
            by_staff: true,
            ..viewed()
        };
        for closed in [BOOKED, REJ, DONE, SUP] {
            for trigger in Trigger::all() {
                let expected = match trigger {
                    T::Staff(to) => (to != closed).then_some(to),
                    T::Booked if closed != BOOKED && closed != DONE => Some(BOOKED),
                    T::PlanCompleted if closed != DONE => Some(DONE),
                    _ => None,
                };
                assert_eq!(
                    next_status(closed, staff, trigger),
                    expected,
                    "({closed:?}, {trigger:?})"
                );
            }
        }
        // Anything that happened before the staff change loses, even a booking.
        let staff_stale = StatusContext {
            stale: true,
            ..staff
        };
        for status in CaseStatus::ALL {
            for trigger in Trigger::all() {
                let expected = match trigger {
                    T::Staff(to) => (to != status).then_some(to),
                    _ => None,
                };
                assert_eq!(next_status(status, staff_stale, trigger), expected);
            }
        }
        // A case staff reopened keeps moving with later events.
        assert_eq!(next_status(SV, staff, T::WindowElapsed), Some(WAIT));
    }

    #[test]
    fn numbers_round_trip() {
        for status in CaseStatus::ALL {
            assert_eq!(CaseStatus::from_number(status.number()), Some(status));
        }
        assert_eq!(CaseStatus::from_number(0), None);
        assert_eq!(CaseStatus::from_number(9), None);
    }
}
