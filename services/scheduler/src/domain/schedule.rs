//! When steps fall due: waits in clinic-local (or patient-local) time, DST-correct.
//!
//! The rule for local times that a DST change makes awkward, used everywhere a wall-clock time becomes an
//! instant:
//! - a local time that does not exist (the clocks jump over it, e.g. 02:30 on a spring-forward night) is
//!   moved forward by the length of the gap: 02:30 becomes 03:30 after a one-hour jump, the instant the
//!   wall clock would have shown 02:30 had it not jumped;
//! - a local time that happens twice (the clocks fall back over it) is its first occurrence.
//!
//! A wait is measured from the due time of the step before it (or the enrollment's start), so a sequence
//! "7 days at 10:00, then 7 days at 10:00" lands on days 7 and 14 at 10:00 local, whatever DST did between.

use std::collections::BTreeSet;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// How long a wait lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitUntil {
    /// A fixed length of time.
    For(Duration),
    /// `days` calendar days later (0 = today if `time` is still ahead, else tomorrow), at local `time`.
    DaysAt { days: u32, time: NaiveTime },
}

/// A wait step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    pub until: WaitUntil,
    /// A due time on Saturday or Sunday moves to Monday, same local time.
    pub skip_weekends: bool,
    /// A due time on a closed weekday or closed date of the clinic moves to the next open day.
    pub skip_closed_days: bool,
}

/// The clinic's closed days (its scheduling settings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClinicCalendar {
    pub closed_weekdays: BTreeSet<WeekdayKey>,
    pub closed_dates: BTreeSet<NaiveDate>,
}

/// A weekday that can live in an ordered set (chrono's `Weekday` is not `Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WeekdayKey(pub u8);

impl From<Weekday> for WeekdayKey {
    fn from(day: Weekday) -> Self {
        Self(day.num_days_from_monday() as u8)
    }
}

impl ClinicCalendar {
    pub fn is_closed(&self, date: NaiveDate) -> bool {
        self.closed_weekdays.contains(&date.weekday().into()) || self.closed_dates.contains(&date)
    }
}

/// The most days a skip may move a time: past a year of closed days the calendar is wrong, and the time
/// is kept rather than searched for forever.
const MAX_SKIPPED_DAYS: u32 = 366;

/// The instant a local date and time names in `tz`, by the module's rule for gaps and overlaps.
pub fn resolve_local(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = NaiveDateTime::new(date, time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(at) => at.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // The offset in force before the jump: a day earlier is before it (no zone jumps twice a day).
            let before = tz
                .offset_from_utc_datetime(&(naive - Duration::hours(24)))
                .fix();
            let utc = naive - Duration::seconds(i64::from(before.local_minus_utc()));
            DateTime::from_naive_utc_and_offset(utc, Utc)
        }
    }
}

/// The instant a wait that starts at `from` ends.
pub fn wait_until(
    from: DateTime<Utc>,
    wait: &Wait,
    tz: Tz,
    calendar: &ClinicCalendar,
) -> DateTime<Utc> {
    match &wait.until {
        WaitUntil::For(length) => {
            let raw = from + *length;
            let local = raw.with_timezone(&tz);
            match skip_days(local.date_naive(), wait, calendar) {
                // Not moved: the exact instant (no round trip through a local time that may be ambiguous).
                None => raw,
                Some(date) => resolve_local(tz, date, local.time()),
            }
        }
        WaitUntil::DaysAt { days, time } => {
            let start_date = from.with_timezone(&tz).date_naive();
            let mut date = start_date + Duration::days(i64::from(*days));
            let mut at = resolve_local(tz, date, *time);
            // "0 days at 10:00" after 10:00 means tomorrow; a DST oddity can do the same for 1 day.
            while at <= from {
                date += Duration::days(1);
                at = resolve_local(tz, date, *time);
            }
            // Skipping keeps the asked local time, not the one a DST gap moved it to.
            match skip_days(date, wait, calendar) {
                None => at,
                Some(date) => resolve_local(tz, date, *time),
            }
        }
    }
}

/// The first day from `date` on that is neither a skipped weekend nor a closed day; None when `date`
/// itself is fine (or when no open day comes within a year).
fn skip_days(date: NaiveDate, wait: &Wait, calendar: &ClinicCalendar) -> Option<NaiveDate> {
    if !wait.skip_weekends && !wait.skip_closed_days {
        return None;
    }
    let skip = |date: NaiveDate| {
        (wait.skip_weekends && matches!(date.weekday(), Weekday::Sat | Weekday::Sun))
            || (wait.skip_closed_days && calendar.is_closed(date))
    };
    let mut moved = date;
    for _ in 0..MAX_SKIPPED_DAYS {
        if !skip(moved) {
            return (moved != date).then_some(moved);
        }
        moved += Duration::days(1);
    }
    None
}

/// A step of a sequence, as far as timing goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timing<'a> {
    Wait(&'a Wait),
    /// Anything that fires (a message, a task, a webhook).
    Action,
}

/// The due time of every firing step of a sequence that starts at `start`: waits are folded into the
/// next step's time. Returns (step index, due time) for the firing steps, in order.
pub fn plan<'a>(
    start: DateTime<Utc>,
    steps: impl IntoIterator<Item = Timing<'a>>,
    tz: Tz,
    calendar: &ClinicCalendar,
) -> Vec<(usize, DateTime<Utc>)> {
    let mut cursor = start;
    let mut planned = Vec::new();
    for (index, step) in steps.into_iter().enumerate() {
        match step {
            Timing::Wait(wait) => cursor = wait_until(cursor, wait, tz, calendar),
            Timing::Action => planned.push((index, cursor)),
        }
    }
    planned
}

/// `at` in `tz` as "YYYY-MM-DDTHH:MM" plus the zone's abbreviation, e.g. "2026-12-03T10:00 GMT".
pub fn local_display(at: DateTime<Utc>, tz: Tz) -> String {
    at.with_timezone(&tz)
        .format("%Y-%m-%dT%H:%M %Z")
        .to_string()
}

/// The clinic-local calendar date of an instant.
pub fn local_date(at: DateTime<Utc>, tz: Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// `date` plus `months` calendar months; a day the month lacks becomes its last day (Jan 31 + 1 month =
/// Feb 28, or 29 in a leap year).
pub fn add_months(date: NaiveDate, months: u32) -> NaiveDate {
    date.checked_add_months(chrono::Months::new(months))
        .unwrap_or(NaiveDate::MAX)
}

/// Parses "HH:MM" (24 h).
pub fn parse_local_time(text: &str) -> Option<NaiveTime> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(hours.parse().ok()?, minutes.parse().ok()?, 0)
}

/// Parses "YYYY-MM-DD".
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    if text.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// Parses an IANA zone name.
pub fn parse_zone(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn date(text: &str) -> NaiveDate {
        parse_date(text).unwrap_or_else(|| panic!("{text}"))
    }

    fn hm(text: &str) -> NaiveTime {
        parse_local_time(text).unwrap_or_else(|| panic!("{text}"))
    }

    fn days_at(days: u32, time: &str) -> Wait {
        Wait {
            until: WaitUntil::DaysAt {
                days,
                time: hm(time),
            },
            skip_weekends: false,
            skip_closed_days: false,
        }
    }

    const LONDON: Tz = chrono_tz::Europe::London;
    const NEW_YORK: Tz = chrono_tz::America::New_York;
    const SYDNEY: Tz = chrono_tz::Australia::Sydney;
    const LORD_HOWE: Tz = chrono_tz::Australia::Lord_Howe;

    #[test]
    fn local_times_resolve_by_the_documented_rule() {
        let cases = [
            // (zone, date, time, expected UTC, why)
            (
                LONDON,
                "2026-01-15",
                "10:00",
                "2026-01-15T10:00:00Z",
                "winter: GMT",
            ),
            (
                LONDON,
                "2026-07-15",
                "10:00",
                "2026-07-15T09:00:00Z",
                "summer: BST",
            ),
            // 2026-03-29 01:00 GMT → 02:00 BST: 01:30 does not exist, moves forward an hour to 02:30 BST.
            (
                LONDON,
                "2026-03-29",
                "01:30",
                "2026-03-29T01:30:00Z",
                "gap: forward by the gap",
            ),
            // 2026-10-25 02:00 BST → 01:00 GMT: 01:30 happens twice; the first is 00:30Z.
            (
                LONDON,
                "2026-10-25",
                "01:30",
                "2026-10-25T00:30:00Z",
                "overlap: first occurrence",
            ),
            (
                NEW_YORK,
                "2026-03-08",
                "02:15",
                "2026-03-08T07:15:00Z",
                "gap in New York",
            ),
            (
                NEW_YORK,
                "2026-11-01",
                "01:15",
                "2026-11-01T05:15:00Z",
                "overlap in New York: EDT",
            ),
            // Lord Howe moves by 30 minutes: 02:00 → 02:30 on 2026-10-04.
            (
                LORD_HOWE,
                "2026-10-04",
                "02:10",
                "2026-10-03T15:40:00Z",
                "half-hour gap",
            ),
        ];
        for (tz, day, time, expected, why) in cases {
            assert_eq!(
                resolve_local(tz, date(day), hm(time)),
                utc(expected),
                "{why}: {day} {time} {tz}"
            );
        }
        // The gap rule, read on the wall clock: 01:30 became 02:30.
        let at = resolve_local(LONDON, date("2026-03-29"), hm("01:30"));
        assert_eq!(local_display(at, LONDON), "2026-03-29T02:30 BST");
    }

    #[test]
    fn seven_days_at_ten_stays_at_ten_across_dst() {
        let cases = [
            // (zone, start, wait, expected local display)
            (
                LONDON,
                "2026-03-25T15:00:00Z",
                days_at(7, "10:00"),
                "2026-04-01T10:00 BST",
            ),
            (
                LONDON,
                "2026-10-20T15:00:00Z",
                days_at(7, "10:00"),
                "2026-10-27T10:00 GMT",
            ),
            (
                NEW_YORK,
                "2026-03-03T20:00:00Z",
                days_at(7, "10:00"),
                "2026-03-10T10:00 EDT",
            ),
            (
                SYDNEY,
                "2026-03-31T01:00:00Z",
                days_at(7, "10:00"),
                "2026-04-07T10:00 AEST",
            ),
            // Month and year ends.
            (
                LONDON,
                "2026-01-28T12:00:00Z",
                days_at(7, "09:30"),
                "2026-02-04T09:30 GMT",
            ),
            (
                LONDON,
                "2026-12-28T12:00:00Z",
                days_at(7, "09:30"),
                "2027-01-04T09:30 GMT",
            ),
            (
                LONDON,
                "2028-02-25T12:00:00Z",
                days_at(4, "09:30"),
                "2028-02-29T09:30 GMT",
            ),
            // 0 days: today while the time is ahead, else tomorrow.
            (
                LONDON,
                "2026-01-15T08:00:00Z",
                days_at(0, "10:00"),
                "2026-01-15T10:00 GMT",
            ),
            (
                LONDON,
                "2026-01-15T11:00:00Z",
                days_at(0, "10:00"),
                "2026-01-16T10:00 GMT",
            ),
            (
                LONDON,
                "2026-01-15T10:00:00Z",
                days_at(0, "10:00"),
                "2026-01-16T10:00 GMT",
            ),
        ];
        let calendar = ClinicCalendar::default();
        for (tz, start, wait, expected) in cases {
            let due = wait_until(utc(start), &wait, tz, &calendar);
            assert_eq!(
                local_display(due, tz),
                expected,
                "{start} + {wait:?} in {tz}"
            );
        }
    }

    #[test]
    fn the_day_a_local_time_is_computed_in_is_the_zones_day() {
        // 23:30 UTC on the 14th is already the 15th in Sydney: 1 day at 10:00 is the 16th there.
        let due = wait_until(
            utc("2026-06-14T23:30:00Z"),
            &days_at(1, "10:00"),
            SYDNEY,
            &ClinicCalendar::default(),
        );
        assert_eq!(local_display(due, SYDNEY), "2026-06-16T10:00 AEST");
    }

    #[test]
    fn weekends_and_closed_days_are_skipped() {
        let mut calendar = ClinicCalendar::default();
        calendar.closed_weekdays.insert(Weekday::Wed.into());
        calendar.closed_dates.insert(date("2026-12-25"));
        calendar.closed_dates.insert(date("2026-12-28"));
        let wait = |days, weekends, closed| Wait {
            until: WaitUntil::DaysAt {
                days,
                time: hm("10:00"),
            },
            skip_weekends: weekends,
            skip_closed_days: closed,
        };
        let cases = [
            // 2026-12-17 is a Thursday.
            (
                "2026-12-17T12:00:00Z",
                wait(2, true, false),
                "2026-12-21T10:00 GMT",
                "Saturday → Monday",
            ),
            (
                "2026-12-17T12:00:00Z",
                wait(2, false, false),
                "2026-12-19T10:00 GMT",
                "no skipping",
            ),
            (
                "2026-12-17T12:00:00Z",
                wait(6, false, true),
                "2026-12-24T10:00 GMT",
                "Wednesday closed",
            ),
            // Friday 25th closed, Sat/Sun weekend, Monday 28th closed → Tuesday 29th.
            (
                "2026-12-17T12:00:00Z",
                wait(8, true, true),
                "2026-12-29T10:00 GMT",
                "holiday, weekend, holiday",
            ),
            (
                "2026-12-17T12:00:00Z",
                wait(8, true, false),
                "2026-12-25T10:00 GMT",
                "a Friday holiday is not a weekend",
            ),
        ];
        for (start, wait, expected, why) in cases {
            let due = wait_until(utc(start), &wait, LONDON, &calendar);
            assert_eq!(local_display(due, LONDON), expected, "{why}");
        }
        // A duration landing on a Sunday keeps its local time on Monday.
        let sunday = Wait {
            until: WaitUntil::For(Duration::hours(2)),
            skip_weekends: true,
            skip_closed_days: false,
        };
        let due = wait_until(utc("2026-12-20T13:15:00Z"), &sunday, LONDON, &calendar);
        assert_eq!(local_display(due, LONDON), "2026-12-21T15:15 GMT");
        // A skipped Sunday in a DST gap keeps the asked time on Monday (found by the property test).
        let gap_sunday = Wait {
            until: WaitUntil::DaysAt {
                days: 27,
                time: hm("02:00"),
            },
            skip_weekends: true,
            skip_closed_days: false,
        };
        let berlin = chrono_tz::Europe::Berlin;
        let due = wait_until(utc("2029-02-25T23:00:00Z"), &gap_sunday, berlin, &calendar);
        assert_eq!(local_display(due, berlin), "2029-03-26T02:00 CEST");
    }

    #[test]
    fn a_calendar_closed_every_day_keeps_the_time() {
        let mut calendar = ClinicCalendar::default();
        for day in [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ] {
            calendar.closed_weekdays.insert(day.into());
        }
        let wait = Wait {
            until: WaitUntil::For(Duration::hours(1)),
            skip_weekends: false,
            skip_closed_days: true,
        };
        let from = utc("2026-05-05T10:00:00Z");
        assert_eq!(
            wait_until(from, &wait, LONDON, &calendar),
            from + Duration::hours(1)
        );
    }

    #[test]
    fn the_plan_treatment_cadence_lands_on_days_7_14_28_42() {
        let steps = [
            days_at(7, "10:00"),
            days_at(7, "10:00"),
            days_at(14, "10:00"),
            days_at(14, "10:00"),
        ];
        let timings = steps.iter().flat_map(|w| [Timing::Wait(w), Timing::Action]);
        // Sent on 2026-03-10 (GMT); day 28 and 42 are in BST.
        let planned = plan(
            utc("2026-03-10T16:20:00Z"),
            timings,
            LONDON,
            &ClinicCalendar::default(),
        );
        let shown: Vec<(usize, String)> = planned
            .iter()
            .map(|(i, at)| (*i, local_display(*at, LONDON)))
            .collect();
        assert_eq!(
            shown,
            vec![
                (1, "2026-03-17T10:00 GMT".to_string()),
                (3, "2026-03-24T10:00 GMT".to_string()),
                (5, "2026-04-07T10:00 BST".to_string()),
                (7, "2026-04-21T10:00 BST".to_string()),
            ]
        );
    }

    #[test]
    fn months_are_calendar_months_clamped_at_month_end() {
        let cases = [
            ("2026-01-31", 1, "2026-02-28"),
            ("2028-01-31", 1, "2028-02-29"),
            ("2026-03-31", 1, "2026-04-30"),
            ("2026-08-31", 6, "2027-02-28"),
            ("2026-05-15", 12, "2027-05-15"),
        ];
        for (from, months, expected) in cases {
            assert_eq!(
                add_months(date(from), months),
                date(expected),
                "{from} + {months}"
            );
        }
    }

    #[test]
    fn parsers_refuse_what_is_not_the_format() {
        assert_eq!(parse_local_time("09:05"), NaiveTime::from_hms_opt(9, 5, 0));
        for bad in ["9:05", "24:00", "10:60", "1000", "10:00:00", "ab:cd", ""] {
            assert!(parse_local_time(bad).is_none(), "{bad}");
        }
        assert!(parse_date("2026-02-29").is_none());
        assert!(parse_date("2026-2-1").is_none());
        assert!(parse_date("2028-02-29").is_some());
        assert!(parse_zone("Europe/London").is_some());
        assert!(parse_zone("Mars/Olympus").is_none());
    }

    fn zones() -> impl Strategy<Value = Tz> {
        prop::sample::select(vec![
            LONDON,
            NEW_YORK,
            SYDNEY,
            LORD_HOWE,
            chrono_tz::UTC,
            chrono_tz::America::Santiago,
            chrono_tz::Asia::Kolkata,
            chrono_tz::Europe::Berlin,
        ])
    }

    /// Instants from 2025 to 2030, so every DST change of those years is crossed.
    fn instants() -> impl Strategy<Value = DateTime<Utc>> {
        (1_735_689_600i64..1_893_456_000i64)
            .prop_map(|s| DateTime::from_timestamp(s, 0).unwrap_or_default())
    }

    fn local_times() -> impl Strategy<Value = NaiveTime> {
        (0u32..24, 0u32..60).prop_map(|(h, m)| NaiveTime::from_hms_opt(h, m, 0).unwrap_or_default())
    }

    proptest! {
        #[test]
        fn a_days_at_wait_is_never_early_and_lands_on_the_local_time(
            tz in zones(), from in instants(), days in 0u32..60, time in local_times(),
            weekends in any::<bool>(), closed_wednesdays in any::<bool>(),
        ) {
            let mut calendar = ClinicCalendar::default();
            if closed_wednesdays {
                calendar.closed_weekdays.insert(Weekday::Wed.into());
            }
            let wait = Wait { until: WaitUntil::DaysAt { days, time }, skip_weekends: weekends, skip_closed_days: true };
            let due = wait_until(from, &wait, tz, &calendar);
            prop_assert!(due > from, "never at or before the start");
            let local = due.with_timezone(&tz);
            let expected_date = local_date(from, tz) + Duration::days(i64::from(days));
            prop_assert!(local.date_naive() >= expected_date);
            // At most: one day for "0 days" after the time, a weekend, a closed Wednesday.
            prop_assert!(local.date_naive() <= expected_date + Duration::days(4));
            if weekends {
                prop_assert!(!matches!(local.weekday(), Weekday::Sat | Weekday::Sun));
            }
            if closed_wednesdays {
                prop_assert!(local.weekday() != Weekday::Wed);
            }
            // The local time is the asked one, unless it fell in a DST gap: then later by at most the gap.
            if tz.from_local_datetime(&local.date_naive().and_time(time)).single().is_some()
                || tz.from_local_datetime(&local.date_naive().and_time(time)).earliest().is_some() {
                prop_assert_eq!(local.time(), time);
            } else {
                prop_assert!(local.time() > time);
                prop_assert!(local.time() - time <= Duration::hours(1));
            }
        }

        #[test]
        fn a_duration_wait_is_exact_unless_skipped(
            tz in zones(), from in instants(), seconds in 1i64..(90 * 86_400), weekends in any::<bool>(),
        ) {
            let wait = Wait { until: WaitUntil::For(Duration::seconds(seconds)), skip_weekends: weekends, skip_closed_days: false };
            let due = wait_until(from, &wait, tz, &ClinicCalendar::default());
            let raw = from + Duration::seconds(seconds);
            let raw_day = raw.with_timezone(&tz).weekday();
            if weekends && matches!(raw_day, Weekday::Sat | Weekday::Sun) {
                prop_assert!(due > raw);
                prop_assert_eq!(due.with_timezone(&tz).weekday(), Weekday::Mon);
            } else {
                prop_assert_eq!(due, raw);
            }
        }

        #[test]
        fn resolving_then_reading_back_gives_the_local_time_when_it_exists(
            tz in zones(), day in 0i64..(6 * 366), time in local_times(),
        ) {
            let date = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default() + Duration::days(day);
            let at = resolve_local(tz, date, time);
            let back = at.with_timezone(&tz);
            match tz.from_local_datetime(&date.and_time(time)) {
                LocalResult::Single(_) => prop_assert_eq!(back.naive_local(), date.and_time(time)),
                LocalResult::Ambiguous(first, second) => {
                    prop_assert_eq!(at, first.with_timezone(&Utc));
                    prop_assert!(at < second.with_timezone(&Utc));
                }
                LocalResult::None => {
                    let shifted = back.naive_local() - date.and_time(time);
                    prop_assert!(shifted > Duration::zero() && shifted <= Duration::hours(1));
                }
            }
        }

        #[test]
        fn planned_steps_never_go_backwards(
            tz in zones(), from in instants(), waits in prop::collection::vec((0u32..30, local_times(), any::<bool>()), 1..8),
        ) {
            let waits: Vec<Wait> = waits.into_iter().map(|(days, time, weekends)| Wait {
                until: WaitUntil::DaysAt { days, time }, skip_weekends: weekends, skip_closed_days: false,
            }).collect();
            let planned = plan(from, waits.iter().flat_map(|w| [Timing::Wait(w), Timing::Action]), tz, &ClinicCalendar::default());
            prop_assert_eq!(planned.len(), waits.len());
            let mut previous = from;
            for (_, at) in planned {
                prop_assert!(at > previous);
                previous = at;
            }
        }
    }
}
