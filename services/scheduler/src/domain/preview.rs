//! What a rule would do to a case: whether it enrolls (and why not), every comparison of its condition
//! and guards explained, and each firing step with the time it falls due — computed exactly as a live
//! enrollment computes it ([`enrollment::plan`]) — and the time it would go out once the notifications
//! service's quiet hours apply. Nothing is stored or sent; the caller renders the messages.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use followup_proto::followup::common::v1::{CaseKind, CaseStatus, StopReason};

use super::condition::{self, Check, Today};
use super::enrollment;
use super::facts::CaseFacts;
use super::rule::{Action, RuleDef};
use super::schedule::{ClinicCalendar, local_date};
use followup_platform::pacing::QuietHours;

/// What a preview needs.
#[derive(Clone, Debug)]
pub struct PreviewInput<'a> {
    pub rule: &'a RuleDef,
    pub facts: &'a CaseFacts,
    /// When the trigger fires; the schedule starts here (never later than `now`, as live).
    pub trigger_at: DateTime<Utc>,
    /// The clinic's zone (conditions' "today") and the zone of the schedule (the clinic's, or the
    /// patient's when the rule asks and it is known).
    pub clinic_tz: Tz,
    pub schedule_tz: Tz,
    /// The zone quiet hours are read in: the recipient's, else the clinic's (the notifications rule).
    pub recipient_tz: Tz,
    pub calendar: &'a ClinicCalendar,
    pub quiet: QuietHours,
    /// Something outside the facts that keeps the case out (a running enrollment, an opt-out), in words.
    pub blocked: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PreviewedStep {
    pub step_index: usize,
    pub due: DateTime<Utc>,
    /// When it would go out: after quiet hours for patient messages; the due time for tasks and webhooks.
    pub send: DateTime<Utc>,
    pub held_by_quiet_hours: bool,
    /// Whether its guard holds on the facts given (it is checked again when it fires).
    pub guard_holds: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    pub would_enroll: bool,
    pub reason: String,
    pub checks: Vec<Check>,
    pub steps: Vec<PreviewedStep>,
}

/// Why a case's state would stop the sequence at once (the same rule a live enrollment applies).
pub fn closed_reason(facts: &CaseFacts, approved: bool, rule: &RuleDef) -> Option<&'static str> {
    let stops = |reason| rule.stops_on(reason);
    match facts.kind {
        CaseKind::CareCase if !facts.open && stops(StopReason::CaseClosed) => {
            Some("care case closed")
        }
        CaseKind::CasePresentation => match facts.presentation_status {
            Some(CaseStatus::PatientBooked) if stops(StopReason::Booked) => Some("case booked"),
            Some(CaseStatus::PatientRejected)
                if stops(StopReason::Rejected) || stops(StopReason::PlanCancelled) =>
            {
                Some("case rejected")
            }
            Some(CaseStatus::TreatmentCompleted) if stops(StopReason::PlanCompleted) => {
                Some("plan completed")
            }
            Some(CaseStatus::Superseded) if stops(StopReason::CaseClosed) => {
                Some("case superseded")
            }
            _ if approved && stops(StopReason::Approved) => Some("plan approved"),
            _ => None,
        },
        _ => None,
    }
}

pub fn preview(input: &PreviewInput<'_>, now: DateTime<Utc>, approved: bool) -> Preview {
    let rule = input.rule;
    let today = Today {
        date: local_date(now, input.clinic_tz),
        tz: input.clinic_tz,
    };
    let mut checks = Vec::new();
    let condition_holds = match &rule.condition {
        Some(c) => {
            let (holds, mut explained) = condition::explain(c, input.facts, today, "condition");
            checks.append(&mut explained);
            holds
        }
        None => true,
    };
    let start = enrollment::start_time(input.trigger_at, now.max(input.trigger_at));
    let planned = enrollment::plan(rule, start, input.schedule_tz, input.calendar);
    let mut steps = Vec::with_capacity(planned.len());
    for p in planned {
        let step = &rule.steps[p.step_index];
        let guard_holds = match &step.only_if {
            Some(guard) => {
                let path = format!("steps[{}].only_if", p.step_index);
                let (holds, mut explained) = condition::explain(guard, input.facts, today, &path);
                checks.append(&mut explained);
                holds
            }
            None => true,
        };
        let send = match step.action {
            Action::Send { .. } => input.quiet.next_allowed(p.due, input.recipient_tz),
            _ => p.due,
        };
        steps.push(PreviewedStep {
            step_index: p.step_index,
            due: p.due,
            send,
            held_by_quiet_hours: send > p.due,
            guard_holds,
        });
    }
    let reason = if input.facts.kind != rule.case_kind {
        Some(format!(
            "the rule targets {} cases, not {}",
            kind_name(rule.case_kind),
            kind_name(input.facts.kind)
        ))
    } else if let Some(blocked) = &input.blocked {
        Some(blocked.clone())
    } else if let Some(closed) = closed_reason(input.facts, approved, rule) {
        Some(format!("{closed}: the sequence would stop at once"))
    } else if !condition_holds {
        let failing: Vec<&str> = checks
            .iter()
            .filter(|c| !c.holds && c.path.starts_with("condition"))
            .map(|c| c.description.as_str())
            .collect();
        Some(format!("conditions do not hold: {}", failing.join("; ")))
    } else {
        None
    };
    Preview {
        would_enroll: reason.is_none(),
        reason: reason.unwrap_or_default(),
        checks,
        steps,
    }
}

fn kind_name(kind: CaseKind) -> &'static str {
    match kind {
        CaseKind::CasePresentation => "case presentation",
        CaseKind::CareCase => "care case",
        CaseKind::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::condition::{Comparison, Condition, Value};
    use crate::domain::rule::tests::plan_follow_up;
    use followup_proto::followup::scheduler::v1::{CaseField, Operator};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn steps_fall_at_local_ten_across_the_dst_change_and_conditions_are_explained() {
        let mut rule = plan_follow_up();
        rule.condition = Some(Condition::Compare(Comparison {
            field: CaseField::Viewed,
            operator: Operator::Eq,
            value: Value::Flag(true),
            upper: None,
        }));
        let facts = CaseFacts {
            viewed: true,
            ..CaseFacts::empty(CaseKind::CasePresentation)
        };
        let london: Tz = "Europe/London".parse().unwrap_or(chrono_tz::UTC);
        let sent = utc("2026-03-23T09:00:00Z");
        let calendar = ClinicCalendar::default();
        let input = PreviewInput {
            rule: &rule,
            facts: &facts,
            trigger_at: sent,
            clinic_tz: london,
            schedule_tz: london,
            recipient_tz: london,
            calendar: &calendar,
            quiet: QuietHours::default(),
            blocked: None,
        };
        let p = preview(&input, sent, false);
        assert!(p.would_enroll, "{}", p.reason);
        assert_eq!(p.checks.len(), 1);
        assert!(p.checks[0].holds);
        // Day 7 is 10:00 BST (09:00 UTC) after the clocks went forward on the 29th.
        assert_eq!(p.steps[0].due, utc("2026-03-30T09:00:00Z"));
        assert_eq!(p.steps[1].due, utc("2026-04-06T09:00:00Z"));
        assert!(
            p.steps
                .iter()
                .all(|s| !s.held_by_quiet_hours && s.guard_holds)
        );
    }

    #[test]
    fn quiet_hours_move_a_night_message_and_failing_conditions_say_why() {
        let mut rule = plan_follow_up();
        rule.steps = vec![rule.steps[1].clone()];
        rule.condition = Some(Condition::Compare(Comparison {
            field: CaseField::SessionsDone,
            operator: Operator::Ge,
            value: Value::Number(4.0),
            upper: None,
        }));
        let facts = CaseFacts::empty(CaseKind::CasePresentation);
        let calendar = ClinicCalendar::default();
        let night = utc("2026-05-04T23:30:00Z");
        let input = PreviewInput {
            rule: &rule,
            facts: &facts,
            trigger_at: night,
            clinic_tz: chrono_tz::UTC,
            schedule_tz: chrono_tz::UTC,
            recipient_tz: chrono_tz::UTC,
            calendar: &calendar,
            quiet: QuietHours::default(),
            blocked: None,
        };
        let p = preview(&input, night, false);
        assert!(!p.would_enroll);
        assert!(p.reason.contains("sessions done (0) >= 4"), "{}", p.reason);
        assert_eq!(p.steps[0].send, utc("2026-05-05T08:00:00Z"));
        assert!(p.steps[0].held_by_quiet_hours);
        let closed = CaseFacts {
            presentation_status: Some(CaseStatus::PatientBooked),
            ..facts.clone()
        };
        let p = preview(
            &PreviewInput {
                facts: &closed,
                ..input
            },
            night,
            false,
        );
        assert!(p.reason.starts_with("case booked"), "{}", p.reason);
    }
}
