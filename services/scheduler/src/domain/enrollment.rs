//! A case running through a rule: what it is about, when its steps fall due, when time-based triggers
//! fire, and which stops apply.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use followup_proto::followup::common::v1::{CaseKind, Channel, StopReason};

use super::rule::RuleDef;
use super::schedule::{self, ClinicCalendar};

/// What an enrollment is about: a case, or (for patient-level triggers without a case) the patient, or
/// (for an enquiry from someone who is not yet a patient) the enquiry. A rule enrolls each subject at
/// most once at a time, and once ever when it is once-per-case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Case { kind: CaseKind, id: String },
    Patient(String),
    Enquiry(String),
}

impl Subject {
    /// The key stored with the enrollment: `plan:<id>`, `care_case:<id>`, `patient:<id>`, `enquiry:<id>`.
    pub fn key(&self) -> String {
        match self {
            Subject::Case {
                kind: CaseKind::CareCase,
                id,
            } => format!("care_case:{id}"),
            Subject::Case { id, .. } => format!("plan:{id}"),
            Subject::Patient(id) => format!("patient:{id}"),
            Subject::Enquiry(id) => format!("enquiry:{id}"),
        }
    }

    /// Reads a key written by [`Subject::key`].
    pub fn from_key(key: &str) -> Option<Self> {
        let (kind, id) = key.split_once(':')?;
        let id = id.to_string();
        match kind {
            "plan" => Some(Subject::Case {
                kind: CaseKind::CasePresentation,
                id,
            }),
            "care_case" => Some(Subject::Case {
                kind: CaseKind::CareCase,
                id,
            }),
            "patient" => Some(Subject::Patient(id)),
            "enquiry" => Some(Subject::Enquiry(id)),
            _ => None,
        }
    }

    pub fn case(&self) -> Option<(CaseKind, &str)> {
        match self {
            Subject::Case { kind, id } => Some((*kind, id.as_str())),
            _ => None,
        }
    }
}

/// A firing step of an enrollment with its due time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStep {
    pub step_index: usize,
    pub due: DateTime<Utc>,
    pub channel: Channel,
    /// The last firing step: when it has run, the sequence is finished.
    pub is_last: bool,
}

/// The firing steps of `rule` for an enrollment starting at `start`.
pub fn plan(
    rule: &RuleDef,
    start: DateTime<Utc>,
    tz: Tz,
    calendar: &ClinicCalendar,
) -> Vec<PlannedStep> {
    let planned = schedule::plan(start, rule.timings(), tz, calendar);
    let count = planned.len();
    planned
        .into_iter()
        .enumerate()
        .map(|(n, (step_index, due))| PlannedStep {
            step_index,
            due,
            channel: rule.steps[step_index]
                .action
                .channel()
                .unwrap_or(Channel::Unspecified),
            is_last: n + 1 == count,
        })
        .collect()
}

/// When the schedule of an enrollment starts: when its trigger happened, but never in the future (a
/// clinic system's clock may run ahead of ours) and never before `now - backlog` would make every step
/// fire at once without reason. A trigger processed late keeps its own time, so "7 days after the plan
/// was sent" is 7 days after the sending, not after a consumer caught up.
pub fn start_time(trigger_at: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    trigger_at.min(now)
}

/// A stop that had already happened, after the trigger, when the trigger is processed: an event that
/// came first on the wire but later in event time (a booking delivered before its plan's `plan_sent`,
/// when the plans outbox lags). The sequence is taken to have started at the trigger and stopped at
/// that moment, so the case is enrolled and ended at once: the same enrollment, with the same end,
/// whatever order the events arrived in. Steps that would have fallen due in between are not sent late
/// (the patient has moved on); they are cancelled with the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateStop {
    pub reason: StopReason,
    pub at: DateTime<Utc>,
    pub detail: &'static str,
}

/// The earliest of `candidates` (a stop reason, when it happened, in words) that the rule stops on and
/// that happened after the trigger; None when none did.
pub fn late_stop(
    def: &RuleDef,
    trigger_at: DateTime<Utc>,
    candidates: &[(StopReason, Option<DateTime<Utc>>, &'static str)],
) -> Option<LateStop> {
    candidates
        .iter()
        .filter_map(|(reason, at, detail)| match at {
            Some(at) if *at > trigger_at && def.stops_on(*reason) => Some(LateStop {
                reason: *reason,
                at: *at,
                detail,
            }),
            _ => None,
        })
        .min_by_key(|s| s.at)
}

/// What happens to a step held while its rule was paused, when the rule is played again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Pending again: it fires (once) when due, at once if it fell due while paused.
    Fire,
    /// Older than the rule's limit: skipped.
    Skip,
}

pub fn release(due: DateTime<Utc>, now: DateTime<Utc>, limit: Option<Duration>) -> Release {
    match limit {
        Some(limit) if due < now - limit => Release::Skip,
        _ => Release::Fire,
    }
}

/// Whether an opt-out stops an enrollment of `rule`: the category is the rule's (or every category) and
/// the channel is one the rule sends on (or every channel).
pub fn opt_out_stops(rule: &RuleDef, category: &str, channel: Channel) -> bool {
    let category_matches = category.is_empty() || category == rule.category;
    let channel_matches = channel == Channel::Unspecified || rule.channels().any(|c| c == channel);
    category_matches && channel_matches
}

/// Whether a cancellation was rebooked within its grace period: a booking of the same patient made at
/// or after the cancellation and no later than the grace allows (or any booking that names the cancelled
/// appointment as the one it replaces).
pub fn rebooked_within_grace(
    cancelled_at: DateTime<Utc>,
    grace: Duration,
    booking_times: &[DateTime<Utc>],
) -> bool {
    booking_times
        .iter()
        .any(|at| *at >= cancelled_at && *at <= cancelled_at + grace)
}

/// When a "lapsed patient" trigger fires: `months` calendar months after the last attended visit, at
/// the same local time of day.
pub fn lapsed_at(last_attended: DateTime<Utc>, months: u32, tz: Tz) -> DateTime<Utc> {
    let local = last_attended.with_timezone(&tz);
    let date = schedule::add_months(local.date_naive(), months);
    schedule::resolve_local(tz, date, local.time())
}

/// When a "care case expiring" trigger fires: `window` before the start of the expiry date, clinic-local
/// (the expiry date is the last valid day, so "expiring in 14 days" is 14 days before that day begins).
pub fn expiring_at(expiry_date: NaiveDate, window: Duration, tz: Tz) -> DateTime<Utc> {
    schedule::resolve_local(tz, expiry_date, NaiveTime::MIN) - window
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rule::tests::plan_follow_up;
    use crate::domain::schedule::{local_display, parse_date};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn a_plan_marks_its_last_firing_step() {
        let planned = plan(
            &plan_follow_up(),
            utc("2026-01-05T12:00:00Z"),
            chrono_tz::Europe::London,
            &ClinicCalendar::default(),
        );
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].step_index, 1);
        assert!(!planned[0].is_last);
        assert!(planned[1].is_last);
        assert_eq!(planned[1].channel, Channel::Sms);
        assert_eq!(
            local_display(planned[1].due, chrono_tz::Europe::London),
            "2026-01-19T10:00 GMT"
        );
    }

    #[test]
    fn subjects_have_stable_keys() {
        let plan = Subject::Case {
            kind: CaseKind::CasePresentation,
            id: "0190".into(),
        };
        assert_eq!(plan.key(), "plan:0190");
        let care = Subject::Case {
            kind: CaseKind::CareCase,
            id: "cc-1".into(),
        };
        assert_eq!(care.key(), "care_case:cc-1");
        assert_eq!(Subject::Patient("p".into()).key(), "patient:p");
        assert_eq!(Subject::Enquiry("e".into()).key(), "enquiry:e");
        for subject in [plan, care, Subject::Patient("p:1".into())] {
            assert_eq!(Subject::from_key(&subject.key()), Some(subject));
        }
        assert_eq!(Subject::from_key("nothing"), None);
    }

    #[test]
    fn released_steps_fire_unless_older_than_the_limit() {
        let now = utc("2026-01-10T12:00:00Z");
        let day_old = now - Duration::days(1);
        assert_eq!(release(day_old, now, None), Release::Fire);
        assert_eq!(
            release(day_old, now, Some(Duration::hours(2))),
            Release::Skip
        );
        assert_eq!(
            release(day_old, now, Some(Duration::days(2))),
            Release::Fire
        );
        assert_eq!(
            release(now + Duration::days(1), now, Some(Duration::zero())),
            Release::Fire
        );
    }

    #[test]
    fn opt_outs_stop_what_they_name() {
        let rule = plan_follow_up();
        let cases = [
            ("", Channel::Unspecified, true, "everything"),
            (
                "treatment_follow_up",
                Channel::Unspecified,
                true,
                "the category",
            ),
            ("recall", Channel::Unspecified, false, "another category"),
            ("", Channel::Sms, true, "STOP: SMS for every category"),
            ("", Channel::Email, false, "email only: the rule sends SMS"),
        ];
        for (category, channel, stops, why) in cases {
            assert_eq!(opt_out_stops(&rule, category, channel), stops, "{why}");
        }
    }

    #[test]
    fn a_rebooking_within_grace_counts_and_one_after_does_not() {
        let cancelled = utc("2026-01-10T12:00:00Z");
        let grace = Duration::minutes(3);
        let cases = [
            (vec![cancelled + Duration::minutes(2)], true),
            (vec![cancelled + Duration::minutes(3)], true),
            (vec![cancelled + Duration::minutes(4)], false),
            (vec![cancelled - Duration::minutes(1)], false),
            (vec![], false),
        ];
        for (bookings, expected) in cases {
            assert_eq!(
                rebooked_within_grace(cancelled, grace, &bookings),
                expected,
                "{bookings:?}"
            );
        }
    }

    #[test]
    fn time_based_triggers_fall_on_calendar_times() {
        let london = chrono_tz::Europe::London;
        // Last visit 31 August 10:00 BST; 6 months later is 28 February 10:00 GMT.
        let at = lapsed_at(utc("2026-08-31T09:00:00Z"), 6, london);
        assert_eq!(local_display(at, london), "2027-02-28T10:00 GMT");
        let expiry = parse_date("2026-04-15").unwrap_or_default();
        let at = expiring_at(expiry, Duration::days(14), london);
        assert_eq!(local_display(at, london), "2026-04-01T00:00 BST");
    }

    #[test]
    fn a_schedule_starts_at_the_trigger_but_never_in_the_future() {
        let now = utc("2026-01-10T12:00:00Z");
        assert_eq!(
            start_time(now - Duration::hours(1), now),
            now - Duration::hours(1)
        );
        assert_eq!(start_time(now + Duration::hours(1), now), now);
    }
}
