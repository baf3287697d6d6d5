//! Refilling a cancelled slot: who fits it, in what order they are offered it, in which batch, and what
//! the clinic's refill settings allow.
//!
//! Candidates are the clinic's waitlist (patients who asked for an earlier appointment) and patients with
//! an open case whose next visit is with the slot's practitioner. They are ranked waitlist first (they
//! asked), then by the case queue's priority — a viewed case still waiting for a response first, then
//! by value (higher first), then by age (older first) — and offered in batches of the clinic's size.

use std::cmp::Ordering;
use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use followup_proto::followup::common::v1::CaseStatus;

use super::FieldError;

pub const DEFAULT_BATCH_SIZE: i32 = 3;
pub const MAX_BATCH_SIZE: i32 = 50;
pub const MIN_ENTRY_DURATION: Duration = Duration::minutes(5);

/// The clinic's refill settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefillSettings {
    pub enabled: bool,
    pub batch_size: i32,
    pub batch_interval: Duration,
    pub cutoff: Duration,
    pub offer_template_key: String,
    pub taken_template_key: String,
}

impl Default for RefillSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_interval: Duration::minutes(15),
            cutoff: Duration::hours(2),
            offer_template_key: "slot_offer".into(),
            taken_template_key: "slot_taken".into(),
        }
    }
}

impl RefillSettings {
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(FieldError::new(
                "settings.batch_size",
                format!("1 to {MAX_BATCH_SIZE} offers per batch"),
            ));
        }
        if self.batch_interval < Duration::minutes(1) || self.batch_interval > Duration::days(7) {
            return Err(FieldError::new(
                "settings.batch_interval",
                "at least 1 minute, at most 7 days",
            ));
        }
        if self.cutoff < Duration::zero() || self.cutoff > Duration::days(30) {
            return Err(FieldError::new("settings.cutoff", "0 to 30 days"));
        }
        for (path, key) in [
            ("settings.offer_template_key", &self.offer_template_key),
            ("settings.taken_template_key", &self.taken_template_key),
        ] {
            let ok = !key.is_empty()
                && key.len() <= 100
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(FieldError::new(
                    path,
                    "a notifications template key: 1-100 letters, digits, _ . or -",
                ));
            }
        }
        Ok(())
    }
}

/// The slot of a cancelled appointment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    pub start: DateTime<Utc>,
    pub length: Duration,
    pub practitioner_id: String,
    pub location_id: String,
}

/// What a waitlist entry accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryWants {
    pub practitioner_ids: Vec<String>,
    pub location_ids: Vec<String>,
    pub length: Duration,
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
}

impl EntryWants {
    /// Whether the slot suits the entry (an empty list accepts any practitioner or location).
    pub fn fits(&self, slot: &SlotSpec, now: DateTime<Utc>) -> bool {
        let accepts = |list: &[String], id: &str| list.is_empty() || list.iter().any(|x| x == id);
        accepts(&self.practitioner_ids, &slot.practitioner_id)
            && accepts(&self.location_ids, &slot.location_id)
            && self.length <= slot.length
            && slot.start >= self.earliest.unwrap_or(now).max(now)
            && self.latest.is_none_or(|latest| slot.start < latest)
    }
}

/// Where a candidate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Entry(String),
    Case,
}

/// Someone who may be offered the slot.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub patient_id: String,
    pub source: Source,
    /// The case it concerns (an entry's plan, or the open case), if any: (kind, id).
    pub case: Option<(i16, String)>,
    pub status: Option<CaseStatus>,
    /// The case's value in minor units (compared within one currency only; see `rank`).
    pub value: Option<(i64, String)>,
    /// When the entry was made, or the case sent: older first.
    pub since: DateTime<Utc>,
    pub current_appointment_id: String,
}

fn waiting(status: Option<CaseStatus>) -> bool {
    matches!(
        status,
        Some(CaseStatus::WaitingForResponse | CaseStatus::SentViewed)
    )
}

fn queue_order(a: &Candidate, b: &Candidate) -> Ordering {
    let tier = |c: &Candidate| u8::from(matches!(c.source, Source::Case));
    let value = |c: &Candidate| c.value.as_ref().map(|(n, _)| *n).unwrap_or(0);
    tier(a)
        .cmp(&tier(b))
        .then(waiting(b.status).cmp(&waiting(a.status)))
        // Values of different currencies are not comparable; within a clinic they share one.
        .then(value(b).cmp(&value(a)))
        .then(a.since.cmp(&b.since))
        .then(a.patient_id.cmp(&b.patient_id))
}

/// The candidates in offer order, one per patient (their best place), without `exclude`d patients.
pub fn rank(mut candidates: Vec<Candidate>, exclude: &HashSet<String>) -> Vec<Candidate> {
    candidates.sort_by(queue_order);
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter(|c| !exclude.contains(&c.patient_id) && seen.insert(c.patient_id.clone()))
        .collect()
}

/// The batch (from 1) of the candidate at 1-based `rank`.
pub fn batch_of(rank: i32, batch_size: i32) -> i32 {
    (rank - 1) / batch_size.max(1) + 1
}

/// Why a claim cannot win, in the words the caller (and the patient) get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimRefused {
    AlreadyTaken,
    Started,
    NotOffered,
    Closed,
}

impl ClaimRefused {
    pub fn message(self) -> &'static str {
        match self {
            ClaimRefused::AlreadyTaken => "already taken: another patient claimed the slot first",
            ClaimRefused::Started => "the slot has already started",
            ClaimRefused::NotOffered => {
                "the offer was not sent (or was withdrawn, declined or already answered)"
            }
            ClaimRefused::Closed => "the slot is no longer offered (rebooked or past its cut-off)",
        }
    }
}

/// Whether a claim of an offer in `offer_state` on a slot in `slot_state` starting at `start` wins at
/// `now`; staff may claim an offer still queued.
pub fn claim(
    slot_state: &str,
    offer_state: &str,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    by_staff: bool,
) -> Result<(), ClaimRefused> {
    if now >= start {
        return Err(ClaimRefused::Started);
    }
    match slot_state {
        "offering" => {}
        "claimed" => return Err(ClaimRefused::AlreadyTaken),
        _ => return Err(ClaimRefused::Closed),
    }
    match offer_state {
        "sent" => Ok(()),
        "queued" if by_staff => Ok(()),
        _ => Err(ClaimRefused::NotOffered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn slot() -> SlotSpec {
        SlotSpec {
            start: utc("2026-05-04T14:00:00Z"),
            length: Duration::minutes(45),
            practitioner_id: "dr-ana".into(),
            location_id: "chair-2".into(),
        }
    }

    #[test]
    fn an_entry_fits_by_practitioner_location_length_and_window() {
        let now = utc("2026-05-04T09:00:00Z");
        let wants = EntryWants {
            length: Duration::minutes(30),
            ..Default::default()
        };
        assert!(wants.fits(&slot(), now));
        let cases: Vec<(EntryWants, bool)> = vec![
            (
                EntryWants {
                    practitioner_ids: vec!["dr-bo".into()],
                    ..wants.clone()
                },
                false,
            ),
            (
                EntryWants {
                    practitioner_ids: vec!["dr-bo".into(), "dr-ana".into()],
                    location_ids: vec!["chair-2".into()],
                    ..wants.clone()
                },
                true,
            ),
            (
                EntryWants {
                    length: Duration::minutes(60),
                    ..wants.clone()
                },
                false,
            ),
            (
                EntryWants {
                    latest: Some(utc("2026-05-04T14:00:00Z")),
                    ..wants.clone()
                },
                false,
            ),
            (
                EntryWants {
                    earliest: Some(utc("2026-05-05T00:00:00Z")),
                    ..wants.clone()
                },
                false,
            ),
        ];
        for (i, (wants, fits)) in cases.into_iter().enumerate() {
            assert_eq!(wants.fits(&slot(), now), fits, "case {i}");
        }
        // A slot in the past fits nobody.
        assert!(!wants.fits(&slot(), utc("2026-05-04T15:00:00Z")));
    }

    fn candidate(
        patient: &str,
        source: Source,
        status: Option<CaseStatus>,
        value: i64,
        days: i64,
    ) -> Candidate {
        Candidate {
            patient_id: patient.into(),
            source,
            case: None,
            status,
            value: Some((value, "USD".into())),
            since: utc("2026-05-01T00:00:00Z") + Duration::days(days),
            current_appointment_id: String::new(),
        }
    }

    #[test]
    fn waitlist_first_then_the_case_queue_order_one_place_per_patient() {
        let entry = |p: &str, v, d| candidate(p, Source::Entry(format!("e-{p}")), None, v, d);
        let case = |p: &str, s, v, d| candidate(p, Source::Case, Some(s), v, d);
        let ranked = rank(
            vec![
                case("low", CaseStatus::SentNotViewed, 90_000, 0),
                case("waiting", CaseStatus::WaitingForResponse, 10_000, 3),
                entry("late", 0, 2),
                entry("early", 0, 1),
                case("early", CaseStatus::SentViewed, 500_000, 0),
                case("high", CaseStatus::SentNotViewed, 200_000, 5),
                case("cancelled-it", CaseStatus::SentViewed, 900_000, 0),
            ],
            &HashSet::from(["cancelled-it".to_string()]),
        );
        let order: Vec<&str> = ranked.iter().map(|c| c.patient_id.as_str()).collect();
        assert_eq!(order, vec!["early", "late", "waiting", "high", "low"]);
        assert_eq!(batch_of(1, 3), 1);
        assert_eq!(batch_of(3, 3), 1);
        assert_eq!(batch_of(4, 3), 2);
    }

    #[test]
    fn the_first_claim_wins_and_every_later_one_is_told_why_not() {
        let start = utc("2026-05-04T14:00:00Z");
        let now = start - Duration::hours(3);
        assert_eq!(claim("offering", "sent", start, now, false), Ok(()));
        assert_eq!(
            claim("claimed", "sent", start, now, false),
            Err(ClaimRefused::AlreadyTaken)
        );
        assert_eq!(
            claim("offering", "sent", start, start, false),
            Err(ClaimRefused::Started)
        );
        assert_eq!(
            claim("offering", "queued", start, now, false),
            Err(ClaimRefused::NotOffered)
        );
        assert_eq!(claim("offering", "queued", start, now, true), Ok(()));
        assert_eq!(
            claim("rebooked", "sent", start, now, false),
            Err(ClaimRefused::Closed)
        );
        let defaults = RefillSettings::default();
        assert_eq!(defaults.validate(), Ok(()));
        let bad = RefillSettings {
            batch_size: 0,
            ..defaults
        };
        assert_eq!(
            bad.validate().map_err(|e| e.path),
            Err("settings.batch_size".into())
        );
    }
}
