//! The facts of a case that conditions read, for both kinds of case.
//!
//! A care case's facts come from the clinic's events (the case record, its appointments, its invoices).
//! A case presentation's come from the plan: sessions = plan visits, sessions done = visits completed,
//! total invoiced = completed value, invoiceable amount = the plan's value (so the amount left is the
//! remaining value), issue date = the date it was sent, expiry date = the quote's validity.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use followup_proto::followup::common::v1::{CareCaseStatus, CaseKind, CaseStatus};

/// An amount in minor units of a currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

impl Money {
    pub fn new(amount_minor: i64, currency: impl Into<String>) -> Self {
        Self {
            amount_minor,
            currency: currency.into(),
        }
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} (minor units)", self.amount_minor, self.currency)
    }
}

/// Statuses after which a presentation is closed.
pub fn is_closed_status(status: CaseStatus) -> bool {
    matches!(
        status,
        CaseStatus::PatientBooked
            | CaseStatus::PatientRejected
            | CaseStatus::TreatmentCompleted
            | CaseStatus::Superseded
    )
}

/// What the scheduler holds about one case (stored facts; see [`Derived`] for the computed ones).
#[derive(Clone, Debug, PartialEq)]
pub struct CaseFacts {
    pub kind: CaseKind,
    /// The care case's name, or the plan's title.
    pub name: String,
    /// Open or closed; a presentation is open while its status is not a closed one.
    pub open: bool,
    pub issue_date: Option<NaiveDate>,
    pub expiry_date: Option<NaiveDate>,
    /// 0 = no maximum.
    pub max_sessions: i32,
    /// Bookings that count towards the case (not cancelled), past or future.
    pub sessions_booked: i32,
    /// Sessions in the past, not cancelled and not a no-show.
    pub sessions_done: i32,
    pub total_invoiced: Option<Money>,
    /// The amount that may be invoiced in total; None = unlimited.
    pub invoiceable_amount: Option<Money>,
    /// Presentations only.
    pub presentation_status: Option<CaseStatus>,
    pub viewed: bool,
    pub sent_at: Option<DateTime<Utc>>,
    /// The plan total, or the care case's invoiceable amount.
    pub value: Option<Money>,
}

impl CaseFacts {
    /// Facts of a case nothing is known about yet.
    pub fn empty(kind: CaseKind) -> Self {
        Self {
            kind,
            name: String::new(),
            open: true,
            issue_date: None,
            expiry_date: None,
            max_sessions: 0,
            sessions_booked: 0,
            sessions_done: 0,
            total_invoiced: None,
            invoiceable_amount: None,
            presentation_status: None,
            viewed: false,
            sent_at: None,
            value: None,
        }
    }

    pub fn care_case_status(&self) -> CareCaseStatus {
        if self.open {
            CareCaseStatus::Open
        } else {
            CareCaseStatus::Closed
        }
    }

    /// The facts computed from the stored ones, on the clinic-local day `today`.
    pub fn derived(&self, today: NaiveDate, tz: Tz) -> Derived {
        let max = self.max_sessions;
        let percent = |part: i32| (max > 0).then(|| f64::from(part) * 100.0 / f64::from(max));
        let invoiced_in = |currency: &str| match &self.total_invoiced {
            Some(money) if money.currency == currency => Some(money.amount_minor),
            Some(_) => None,
            // Nothing invoiced yet: zero in the case's currency.
            None => Some(0),
        };
        let invoiceable_amount_left = self.invoiceable_amount.as_ref().and_then(|total| {
            invoiced_in(&total.currency)
                .map(|invoiced| Money::new(total.amount_minor - invoiced, total.currency.clone()))
        });
        let percent_invoiced = self.invoiceable_amount.as_ref().and_then(|total| {
            let invoiced = invoiced_in(&total.currency)?;
            (total.amount_minor > 0).then(|| invoiced as f64 * 100.0 / total.amount_minor as f64)
        });
        Derived {
            sessions_left: (max > 0).then(|| max - self.sessions_done),
            percent_sessions_booked: percent(self.sessions_booked),
            percent_sessions_done: percent(self.sessions_done),
            invoiceable_amount_left,
            percent_invoiced,
            days_since_sent: self
                .sent_at
                .map(|sent| (today - super::schedule::local_date(sent, tz)).num_days()),
        }
    }
}

/// Facts computed from the stored ones; None where they cannot be (no maximum, no amount, never sent).
#[derive(Clone, Debug, PartialEq)]
pub struct Derived {
    pub sessions_left: Option<i32>,
    pub percent_sessions_booked: Option<f64>,
    pub percent_sessions_done: Option<f64>,
    pub invoiceable_amount_left: Option<Money>,
    pub percent_invoiced: Option<f64>,
    pub days_since_sent: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn care_case() -> CaseFacts {
        CaseFacts {
            max_sessions: 5,
            sessions_booked: 2,
            sessions_done: 1,
            invoiceable_amount: Some(Money::new(100_000, "AUD")),
            total_invoiced: Some(Money::new(25_000, "AUD")),
            ..CaseFacts::empty(CaseKind::CareCase)
        }
    }

    fn day(text: &str) -> NaiveDate {
        super::super::schedule::parse_date(text).unwrap_or_default()
    }

    #[test]
    fn percentages_follow_the_product_definitions() {
        let derived = care_case().derived(day("2026-05-01"), chrono_tz::UTC);
        // "2 booked of 5 = 40%".
        assert_eq!(derived.percent_sessions_booked, Some(40.0));
        assert_eq!(derived.percent_sessions_done, Some(20.0));
        assert_eq!(derived.sessions_left, Some(4));
        assert_eq!(
            derived.invoiceable_amount_left,
            Some(Money::new(75_000, "AUD"))
        );
        assert_eq!(derived.percent_invoiced, Some(25.0));
    }

    #[test]
    fn no_maximum_and_no_amount_derive_nothing() {
        let facts = CaseFacts {
            max_sessions: 0,
            invoiceable_amount: None,
            ..care_case()
        };
        let derived = facts.derived(day("2026-05-01"), chrono_tz::UTC);
        assert_eq!(derived.sessions_left, None);
        assert_eq!(derived.percent_sessions_booked, None);
        assert_eq!(derived.percent_invoiced, None);
        assert_eq!(derived.invoiceable_amount_left, None);
    }

    #[test]
    fn amounts_of_other_currencies_are_never_mixed() {
        let facts = CaseFacts {
            total_invoiced: Some(Money::new(10, "USD")),
            ..care_case()
        };
        let derived = facts.derived(day("2026-05-01"), chrono_tz::UTC);
        assert_eq!(derived.invoiceable_amount_left, None);
        assert_eq!(derived.percent_invoiced, None);
    }

    #[test]
    fn days_since_sent_counts_clinic_local_days() {
        let sent = DateTime::parse_from_rfc3339("2026-05-01T23:30:00Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        let facts = CaseFacts {
            sent_at: sent,
            ..CaseFacts::empty(CaseKind::CasePresentation)
        };
        // In Sydney it was sent on the 2nd.
        let sydney = chrono_tz::Australia::Sydney;
        assert_eq!(
            facts.derived(day("2026-05-09"), sydney).days_since_sent,
            Some(7)
        );
        assert_eq!(
            facts
                .derived(day("2026-05-09"), chrono_tz::UTC)
                .days_since_sent,
            Some(8)
        );
    }
}
