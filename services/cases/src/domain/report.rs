//! The leakage report: what was presented, what was accepted, what is still on the table, and what
//! follow-up recovered, per currency (never summed across currencies).
//!
//! An alternative group counts once: only its representative option (the accepted one, or while open the
//! highest) enters the figures; the split by status shows every case.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use super::status::CaseStatus;
use super::vocab::Money;

/// What the report needs of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportCase {
    pub status: CaseStatus,
    pub value: Money,
    pub owner_staff_id: Option<String>,
    /// Counts in the figures (false for the other options of an alternative group).
    pub representative: bool,
    pub first_sent_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
    pub booked_at: Option<DateTime<Utc>>,
    pub first_follow_up_at: Option<DateTime<Utc>>,
}

impl ReportCase {
    fn accepted(&self) -> bool {
        match self.status {
            CaseStatus::PatientBooked | CaseStatus::TreatmentCompleted => true,
            s if s.is_open() => self.approved_at.is_some(),
            _ => false,
        }
    }

    fn booked(&self) -> Option<DateTime<Utc>> {
        match self.status {
            CaseStatus::PatientBooked | CaseStatus::TreatmentCompleted => self.booked_at,
            _ => None,
        }
    }

    /// Booked after at least one follow-up reached the patient: the time from that follow-up to booking.
    fn recovered_after(&self) -> Option<Duration> {
        let booked = self.booked()?;
        let follow_up = self.first_follow_up_at?;
        (follow_up < booked).then(|| booked - follow_up)
    }
}

/// A waitlist slot refilled (slot_claimed), for the report's "slots refilled". A claim from a waitlist
/// entry with no plan has no value: it counts, in no currency's line.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotRefill {
    pub value: Option<Money>,
    pub owner_staff_id: Option<String>,
}

/// Every slot refilled in the period, with a value or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefillCounts {
    pub count: i32,
    pub without_value: i32,
}

pub fn refill_counts(slots: &[SlotRefill]) -> RefillCounts {
    RefillCounts {
        count: slots.len() as i32,
        without_value: slots.iter().filter(|s| s.value.is_none()).count() as i32,
    }
}

/// The figures of one set of cases in one currency.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub currency: String,
    pub presented_count: i32,
    pub presented_value: i64,
    pub accepted_count: i32,
    pub accepted_value: i64,
    pub acceptance_rate: f64,
    pub unscheduled_count: i32,
    pub unscheduled_value: i64,
    pub recovered_count: i32,
    pub recovered_value: i64,
    pub median_recovery_time: Option<Duration>,
    pub median_days_to_book: f64,
    pub slots_refilled_count: i32,
    pub slots_refilled_value: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StatusFigures {
    pub status: CaseStatus,
    pub count: i32,
    pub value: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OwnerFigures {
    pub owner_staff_id: Option<String>,
    pub figures: Figures,
}

/// The report of one currency.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportLine {
    pub figures: Figures,
    pub by_status: Vec<StatusFigures>,
    pub by_owner: Vec<OwnerFigures>,
}

fn median_secs(mut values: Vec<i64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2] as f64
    } else {
        (values[n / 2 - 1] as f64 + values[n / 2] as f64) / 2.0
    })
}

fn figures(currency: &str, cases: &[&ReportCase], slots: &[&SlotRefill]) -> Figures {
    let mut f = Figures {
        currency: currency.to_string(),
        ..Figures::default()
    };
    let mut recovery = Vec::new();
    let mut to_book = Vec::new();
    for case in cases.iter().filter(|c| c.representative) {
        let value = case.value.amount_minor;
        f.presented_count += 1;
        f.presented_value += value;
        if case.accepted() {
            f.accepted_count += 1;
            f.accepted_value += value;
        }
        if case.status.is_open() && case.status != CaseStatus::DraftNotSent {
            f.unscheduled_count += 1;
            f.unscheduled_value += value;
        }
        if let Some(after) = case.recovered_after() {
            f.recovered_count += 1;
            f.recovered_value += value;
            recovery.push(after.num_seconds());
        }
        if let Some(booked) = case.booked() {
            to_book.push((booked - case.first_sent_at).num_seconds());
        }
    }
    f.acceptance_rate = if f.presented_count == 0 {
        0.0
    } else {
        f64::from(f.accepted_count) / f64::from(f.presented_count)
    };
    f.median_recovery_time = median_secs(recovery).map(|s| Duration::seconds(s.round() as i64));
    f.median_days_to_book = median_secs(to_book).map_or(0.0, |s| s / 86_400.0);
    for slot in slots {
        f.slots_refilled_count += 1;
        f.slots_refilled_value += slot.value.as_ref().map_or(0, |v| v.amount_minor);
    }
    f
}

/// The cases and refilled slots of one currency or owner.
type Members<'a> = (Vec<&'a ReportCase>, Vec<&'a SlotRefill>);

/// The report over cases first sent in the period (already filtered, with the owner filter applied),
/// one line per currency, currencies in alphabetical order; owners in id order, unassigned last.
pub fn leakage_report(cases: &[ReportCase], slots: &[SlotRefill]) -> Vec<ReportLine> {
    let mut currencies: BTreeMap<&str, Members<'_>> = BTreeMap::new();
    for case in cases {
        currencies
            .entry(case.value.currency.as_str())
            .or_default()
            .0
            .push(case);
    }
    for slot in slots {
        let Some(value) = &slot.value else {
            continue;
        };
        currencies
            .entry(value.currency.as_str())
            .or_default()
            .1
            .push(slot);
    }
    currencies
        .into_iter()
        .map(|(currency, (cases, slots))| {
            let mut by_status: BTreeMap<i32, StatusFigures> = BTreeMap::new();
            for case in &cases {
                let entry = by_status
                    .entry(case.status.number())
                    .or_insert(StatusFigures {
                        status: case.status,
                        count: 0,
                        value: 0,
                    });
                entry.count += 1;
                entry.value += case.value.amount_minor;
            }
            // `None` sorts first in a BTreeMap; unassigned goes last for people, so key it apart.
            let mut owners: BTreeMap<(bool, String), Members<'_>> = BTreeMap::new();
            let owner_key = |o: &Option<String>| (o.is_none(), o.clone().unwrap_or_default());
            for case in &cases {
                owners
                    .entry(owner_key(&case.owner_staff_id))
                    .or_default()
                    .0
                    .push(case);
            }
            for slot in &slots {
                owners
                    .entry(owner_key(&slot.owner_staff_id))
                    .or_default()
                    .1
                    .push(slot);
            }
            ReportLine {
                figures: figures(currency, &cases, &slots),
                by_status: by_status.into_values().collect(),
                by_owner: owners
                    .into_iter()
                    .map(|((unassigned, id), (cases, slots))| OwnerFigures {
                        owner_staff_id: (!unassigned).then_some(id),
                        figures: figures(currency, &cases, &slots),
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 1, 12, 0, 0)
            .single()
            .expect("valid")
            + Duration::days(d)
    }

    fn case(status: CaseStatus, value: i64, currency: &str, owner: Option<&str>) -> ReportCase {
        ReportCase {
            status,
            value: Money::new(value, currency),
            owner_staff_id: owner.map(str::to_string),
            representative: true,
            first_sent_at: day(0),
            approved_at: None,
            booked_at: None,
            first_follow_up_at: None,
        }
    }

    /// A fixture whose figures are worked out by hand below.
    #[test]
    fn figures_of_a_hand_computed_fixture() {
        use CaseStatus::*;
        // EUR, owner ana:
        //  A waiting 1000, B booked 2000 on day 4 after a reminder on day 2 (recovered, 2 days),
        //  C completed 3000 booked day 10 without follow-up, D rejected 500.
        // EUR, unassigned: E approved-but-open 1500 (accepted, still unscheduled), F not viewed 700,
        //  group G: G1 superseded 9000 (not representative), G2 booked 4000 on day 6 after a reminder on
        //  day 1 (recovered, 5 days).
        // USD, owner ana: H booked 10000 on day 3, reminder day 1 (recovered, 2 days).
        let a = case(WaitingForResponse, 1000, "EUR", Some("ana"));
        let mut b = case(PatientBooked, 2000, "EUR", Some("ana"));
        b.booked_at = Some(day(4));
        b.first_follow_up_at = Some(day(2));
        let mut c = case(TreatmentCompleted, 3000, "EUR", Some("ana"));
        c.booked_at = Some(day(10));
        let d = case(PatientRejected, 500, "EUR", Some("ana"));
        let mut e = case(SentViewed, 1500, "EUR", None);
        e.approved_at = Some(day(1));
        let f = case(SentNotViewed, 700, "EUR", None);
        let mut g1 = case(Superseded, 9000, "EUR", None);
        g1.representative = false;
        let mut g2 = case(PatientBooked, 4000, "EUR", None);
        g2.booked_at = Some(day(6));
        g2.first_follow_up_at = Some(day(1));
        let mut h = case(PatientBooked, 10000, "USD", Some("ana"));
        h.booked_at = Some(day(3));
        h.first_follow_up_at = Some(day(1));
        let slots = vec![
            SlotRefill {
                value: Some(Money::new(2500, "EUR")),
                owner_staff_id: Some("ana".into()),
            },
            // A claim from a waitlist entry with no plan: counted, in no currency's line.
            SlotRefill {
                value: None,
                owner_staff_id: None,
            },
        ];
        assert_eq!(
            refill_counts(&slots),
            RefillCounts {
                count: 2,
                without_value: 1
            }
        );

        let lines = leakage_report(&[a, b, c, d, e, f, g1, g2, h], &slots);
        assert_eq!(lines.len(), 2, "one line per currency");
        let eur = &lines[0].figures;
        assert_eq!(eur.currency, "EUR");
        // Presented: A B C D E F G2 = 7 cases, 1000+2000+3000+500+1500+700+4000 = 12700.
        assert_eq!((eur.presented_count, eur.presented_value), (7, 12_700));
        // Accepted: B C E G2 = 4, 2000+3000+1500+4000 = 10500; rate 4/7.
        assert_eq!((eur.accepted_count, eur.accepted_value), (4, 10_500));
        assert!((eur.acceptance_rate - 4.0 / 7.0).abs() < 1e-12);
        // Unscheduled: A E F = 3, 1000+1500+700 = 3200.
        assert_eq!((eur.unscheduled_count, eur.unscheduled_value), (3, 3200));
        // Recovered: B (2 days) and G2 (5 days) = 2, 6000; median 3.5 days.
        assert_eq!((eur.recovered_count, eur.recovered_value), (2, 6000));
        assert_eq!(
            eur.median_recovery_time,
            Some(Duration::hours(84)),
            "median of 2 and 5 days"
        );
        // Days to book: B 4, C 10, G2 6 → median 6.
        assert!((eur.median_days_to_book - 6.0).abs() < 1e-9);
        assert_eq!(
            (eur.slots_refilled_count, eur.slots_refilled_value),
            (1, 2500)
        );

        let usd = &lines[1].figures;
        assert_eq!(
            (usd.currency.as_str(), usd.presented_value),
            ("USD", 10_000)
        );
        assert_eq!(usd.acceptance_rate, 1.0);
        assert_eq!(usd.median_recovery_time, Some(Duration::days(2)));

        // By status shows every case, the superseded option too.
        let superseded = lines[0]
            .by_status
            .iter()
            .find(|s| s.status == Superseded)
            .expect("superseded row");
        assert_eq!((superseded.count, superseded.value), (1, 9000));
        let booked = lines[0]
            .by_status
            .iter()
            .find(|s| s.status == PatientBooked)
            .expect("booked row");
        assert_eq!((booked.count, booked.value), (2, 6000));

        // By owner: ana first, unassigned last.
        let owners: Vec<Option<&str>> = lines[0]
            .by_owner
            .iter()
            .map(|o| o.owner_staff_id.as_deref())
            .collect();
        assert_eq!(owners, vec![Some("ana"), None]);
        let ana = &lines[0].by_owner[0].figures;
        // ana EUR: A B C D presented 6500; accepted B C 5000; unscheduled A 1000; recovered B 2000.
        assert_eq!((ana.presented_count, ana.presented_value), (4, 6500));
        assert_eq!((ana.accepted_count, ana.accepted_value), (2, 5000));
        assert_eq!(ana.unscheduled_value, 1000);
        assert_eq!(ana.recovered_value, 2000);
        assert_eq!(ana.slots_refilled_count, 1);
        let unassigned = &lines[0].by_owner[1].figures;
        // Unassigned EUR: E F G2 presented 6200; accepted E G2 5500.
        assert_eq!(
            (unassigned.presented_count, unassigned.presented_value),
            (3, 6200)
        );
        assert_eq!(unassigned.accepted_value, 5500);
    }

    #[test]
    fn nothing_presented_is_a_zero_rate_and_no_medians() {
        let lines = leakage_report(&[], &[]);
        assert!(lines.is_empty());
        let mut lone = case(CaseStatus::Superseded, 10, "EUR", None);
        lone.representative = false;
        let lines = leakage_report(&[lone], &[]);
        assert_eq!(lines[0].figures.presented_count, 0);
        assert_eq!(lines[0].figures.acceptance_rate, 0.0);
        assert_eq!(lines[0].figures.median_recovery_time, None);
        assert_eq!(lines[0].figures.median_days_to_book, 0.0);
    }
}
