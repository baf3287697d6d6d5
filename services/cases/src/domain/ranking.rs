//! The follow-up queue: which open case to call first, and why, in words.
//!
//! The order is lexicographic and independent of the clock, so it can be stored as sort keys and paged
//! with a keyset: the tier (viewed without a response first), then value (highest first), then the time
//! of the last contact (longest ago first), then the case id. The reason line is computed when shown,
//! since it speaks of ages ("no reply for 6 days").

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::case::CaseState;
use super::status::CaseStatus;
use super::vocab::{human_age, human_duration, times};

/// Tiers of the queue, most urgent first.
pub const TIER_WAITING: i16 = 0;
pub const TIER_VIEWED: i16 = 1;
pub const TIER_RESPONDED: i16 = 2;
pub const TIER_NOT_VIEWED: i16 = 3;
/// Not in the queue: drafts (the patient never saw them) and closed cases.
pub const TIER_DRAFT: i16 = 4;
pub const TIER_CLOSED: i16 = 5;
/// The last tier that is in the queue.
pub const LAST_QUEUE_TIER: i16 = TIER_NOT_VIEWED;

/// The queue tier of a case.
pub fn tier(case: &CaseState) -> i16 {
    match case.status {
        CaseStatus::WaitingForResponse => TIER_WAITING,
        CaseStatus::SentViewed if !case.responded() => TIER_VIEWED,
        CaseStatus::SentViewed => TIER_RESPONDED,
        CaseStatus::SentNotViewed if case.responded() => TIER_RESPONDED,
        CaseStatus::SentNotViewed => TIER_NOT_VIEWED,
        CaseStatus::DraftNotSent => TIER_DRAFT,
        _ => TIER_CLOSED,
    }
}

pub fn in_queue(case: &CaseState) -> bool {
    tier(case) <= LAST_QUEUE_TIER
}

/// The sort key of a case in the queue; smaller comes first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    pub tier: i16,
    /// Negated value in minor units (across currencies, by minor units, as ListCases' value sort).
    pub neg_value: i64,
    pub contact_time: DateTime<Utc>,
    pub case_id: Uuid,
}

pub fn queue_key(case: &CaseState) -> QueueKey {
    QueueKey {
        tier: tier(case),
        neg_value: -case.value.as_ref().map_or(0, |m| m.amount_minor),
        contact_time: case.contact_time(),
        case_id: case.case_id,
    }
}

/// The queue's order: deterministic, total.
pub fn queue_order(a: &CaseState, b: &CaseState) -> Ordering {
    queue_key(a).cmp(&queue_key(b))
}

/// Why a case is where it is, e.g. "viewed twice, 14 min on treatment details, no reply for 6 days".
pub fn reason(case: &CaseState, now: DateTime<Utc>) -> String {
    let age = |t: DateTime<Utc>| human_age((now - t).num_seconds());
    let mut parts: Vec<String> = Vec::new();
    let reminders = match case.reminders_sent {
        0 => None,
        1 => Some("1 reminder sent".to_string()),
        n => Some(format!("{n} reminders sent")),
    };
    match tier(case) {
        TIER_WAITING | TIER_VIEWED => {
            parts.push(format!("viewed {}", times(case.view_count.max(1))));
            if let Some(top) = case
                .section_times
                .iter()
                .filter(|s| s.millis >= 1000)
                .max_by_key(|s| (s.millis, std::cmp::Reverse(s.section)))
            {
                parts.push(format!(
                    "{} on {}",
                    human_duration(top.millis),
                    top.section.words()
                ));
            }
            let since = case
                .contact_time()
                .max(case.first_view_at.unwrap_or(case.created_at));
            parts.push(format!("no reply for {}", age(since)));
            parts.extend(reminders);
        }
        TIER_RESPONDED => {
            if let Some(approved) = case.patient_approved_at {
                parts.push(format!("approved in the portal {} ago", age(approved)));
            } else if let Some(approved) = case.approved_at {
                parts.push(format!("approved {} ago", age(approved)));
            }
            if let Some(reply) = case.last_reply_at {
                parts.push(format!("replied {} ago", age(reply)));
            }
            parts.push("not booked yet".into());
        }
        TIER_NOT_VIEWED => {
            let sent = case.last_sent_at.unwrap_or(case.created_at);
            parts.push(format!("sent {} ago, not viewed yet", age(sent)));
            parts.extend(reminders);
        }
        TIER_DRAFT => parts.push("draft, not sent yet".into()),
        _ => match case.status {
            CaseStatus::PatientBooked => {
                let at = case.booked_at.unwrap_or(case.status_at);
                parts.push(format!("booked {} ago", age(at)));
            }
            CaseStatus::TreatmentCompleted => parts.push("treatment completed".into()),
            CaseStatus::Superseded => parts.push("another option was accepted".into()),
            _ => parts.push(format!("rejected {} ago", age(case.status_at))),
        },
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::vocab::{Money, Section, SectionTime};
    use chrono::{Duration, TimeZone};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0)
            .single()
            .expect("valid")
    }

    fn case(n: u128, status: CaseStatus, value: i64, contact_days_ago: i64) -> CaseState {
        let mut case = CaseState::new("c1", Uuid::from_u128(n), now() - Duration::days(30));
        case.status = status;
        case.value = Some(Money::new(value, "EUR"));
        case.last_sent_at = Some(now() - Duration::days(contact_days_ago));
        if matches!(
            status,
            CaseStatus::SentViewed | CaseStatus::WaitingForResponse
        ) {
            case.viewed = true;
            case.view_count = 1;
            case.first_view_at = case.last_sent_at;
        }
        case
    }

    #[test]
    fn viewed_without_response_comes_first_then_value_then_age() {
        let waiting_small = case(1, CaseStatus::WaitingForResponse, 100, 2);
        let viewed_big = case(2, CaseStatus::SentViewed, 900_000, 2);
        let not_viewed_huge = case(3, CaseStatus::SentNotViewed, 5_000_000, 10);
        let waiting_big_recent = case(4, CaseStatus::WaitingForResponse, 50_000, 1);
        let waiting_big_old = case(5, CaseStatus::WaitingForResponse, 50_000, 9);
        let mut responded = case(6, CaseStatus::SentViewed, 1_000_000, 3);
        responded.last_reply_at = Some(now() - Duration::days(1));

        let mut queue = [
            not_viewed_huge.clone(),
            responded.clone(),
            waiting_small.clone(),
            viewed_big.clone(),
            waiting_big_recent.clone(),
            waiting_big_old.clone(),
        ];
        queue.sort_by(queue_order);
        let order: Vec<u128> = queue.iter().map(|c| c.case_id.as_u128()).collect();
        assert_eq!(order, vec![5, 4, 1, 2, 6, 3]);
    }

    #[test]
    fn ties_break_on_the_case_id_so_the_order_is_total() {
        let a = case(7, CaseStatus::SentNotViewed, 100, 3);
        let mut b = a.clone();
        b.case_id = Uuid::from_u128(8);
        assert_eq!(queue_order(&a, &b), Ordering::Less);
        assert_eq!(queue_order(&b, &a), Ordering::Greater);
    }

    #[test]
    fn drafts_and_closed_cases_are_not_in_the_queue() {
        assert!(!in_queue(&case(1, CaseStatus::DraftNotSent, 1, 1)));
        for closed in [
            CaseStatus::PatientBooked,
            CaseStatus::PatientRejected,
            CaseStatus::TreatmentCompleted,
            CaseStatus::Superseded,
        ] {
            assert!(!in_queue(&case(1, closed, 1, 1)));
        }
        assert!(in_queue(&case(1, CaseStatus::SentNotViewed, 1, 1)));
    }

    #[test]
    fn reasons_say_what_the_patient_did_and_for_how_long_nothing() {
        let mut waiting = case(1, CaseStatus::WaitingForResponse, 100, 6);
        waiting.view_count = 2;
        waiting.section_times = vec![
            SectionTime {
                section: Section::Cover,
                millis: 30_000,
            },
            SectionTime {
                section: Section::TreatmentDetails,
                millis: 14 * 60_000,
            },
        ];
        assert_eq!(
            reason(&waiting, now()),
            "viewed twice, 14 min on treatment details, no reply for 6 days"
        );
        waiting.reminders_sent = 2;
        waiting.last_contact_at = Some(now() - Duration::days(3));
        assert_eq!(
            reason(&waiting, now()),
            "viewed twice, 14 min on treatment details, no reply for 3 days, 2 reminders sent"
        );

        let not_viewed = case(2, CaseStatus::SentNotViewed, 100, 4);
        assert_eq!(
            reason(&not_viewed, now()),
            "sent 4 days ago, not viewed yet"
        );

        let mut approved = case(3, CaseStatus::SentViewed, 100, 4);
        approved.approved_at = Some(now() - Duration::days(2));
        approved.patient_approved_at = approved.approved_at;
        assert_eq!(
            reason(&approved, now()),
            "approved in the portal 2 days ago, not booked yet"
        );
    }
}
