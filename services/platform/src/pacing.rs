//! Pacing of automated patient messages: quiet hours in the recipient's own zone and the weekly cap.
//!
//! Notifications applies these rules before every attempt; the scheduler applies the same rules to say
//! when a previewed or backtested message would have gone out. Both use this module, so the two can
//! never disagree.
//!
//! Wall-clock times are what people live by, so the quiet window is read in local time, and the next
//! allowed instant is found on the local calendar and converted back, DST-correct: a window end that
//! falls in a spring-forward gap moves to the first local time that exists, and on a fall-back night the
//! earliest instance that is not in the past is used.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The quiet window `[start, end)` in local wall time. `start > end` wraps midnight (21:00–08:00);
/// `start == end` means no quiet hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Default for QuietHours {
    /// 21:00–08:00, the notifications service's default for a clinic that set none.
    fn default() -> Self {
        Self {
            start: NaiveTime::from_hms_opt(21, 0, 0).unwrap_or_default(),
            end: NaiveTime::from_hms_opt(8, 0, 0).unwrap_or_default(),
        }
    }
}

/// Parses "HH:MM" (24 h), as clinic settings write a time of day.
pub fn parse_hhmm(text: &str) -> Option<NaiveTime> {
    let (h, m) = text.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// Formats a time of day as "HH:MM".
pub fn format_hhmm(time: NaiveTime) -> String {
    time.format("%H:%M").to_string()
}

impl QuietHours {
    pub fn is_quiet(&self, local: NaiveTime) -> bool {
        if self.start == self.end {
            false
        } else if self.start > self.end {
            local >= self.start || local < self.end
        } else {
            local >= self.start && local < self.end
        }
    }

    /// The first instant at or after `at` that is outside quiet hours in `zone`.
    pub fn next_allowed(&self, at: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        let local = at.with_timezone(&zone);
        if !self.is_quiet(local.time()) {
            return at;
        }
        // The window ends today (local) if we are before its end, else tomorrow.
        let date = local.date_naive();
        let end_date = if local.time() < self.end {
            date
        } else {
            date.succ_opt().unwrap_or(date)
        };
        let mut candidate = first_instant_at_or_after(zone, end_date, self.end, at);
        // On a fall-back night a local time can repeat and land back inside the window; walk on.
        let mut guard = 0;
        while self.is_quiet(candidate.with_timezone(&zone).time()) && guard < 3 {
            let next_date = candidate
                .with_timezone(&zone)
                .date_naive()
                .succ_opt()
                .unwrap_or(end_date);
            candidate = first_instant_at_or_after(zone, next_date, self.end, candidate);
            guard += 1;
        }
        candidate
    }
}

/// The instant of local `date time` in `zone`, never before `not_before`: the earliest of the two
/// instants of an ambiguous time that qualifies, or the first existing minute after a DST gap.
fn first_instant_at_or_after(
    zone: Tz,
    date: NaiveDate,
    time: NaiveTime,
    not_before: DateTime<Utc>,
) -> DateTime<Utc> {
    let mut naive = date.and_time(time);
    // A gap is at most a few hours (usually one); step forward by minutes until the time exists.
    for _ in 0..(24 * 60) {
        match zone.from_local_datetime(&naive) {
            chrono::LocalResult::Single(t) => {
                let t = t.with_timezone(&Utc);
                if t >= not_before {
                    return t;
                }
                naive += Duration::days(1);
            }
            chrono::LocalResult::Ambiguous(a, b) => {
                let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
                let (early, late) = if a <= b { (a, b) } else { (b, a) };
                if early >= not_before {
                    return early;
                }
                if late >= not_before {
                    return late;
                }
                naive += Duration::days(1);
            }
            chrono::LocalResult::None => naive += Duration::minutes(1),
        }
    }
    not_before
}

/// The frequency cap's rolling window: a message counts from the instant it is first handed to a
/// provider for exactly seven days. Transactional categories (appointment reminders, slot offers) are
/// exempt: callers leave them out of what they count.
pub fn cap_window() -> Duration {
    Duration::days(7)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapCheck {
    Allowed,
    /// Full until this instant, when the oldest message that matters leaves the window.
    FullUntil(DateTime<Utc>),
}

/// Whether one more automated message may go at `now`, given the instants already counted for the
/// recipient. `cap == 0` means no cap.
pub fn cap_check(counted: &[DateTime<Utc>], now: DateTime<Utc>, cap: u32) -> CapCheck {
    if cap == 0 {
        return CapCheck::Allowed;
    }
    let from = now - cap_window();
    let mut inside: Vec<DateTime<Utc>> = counted
        .iter()
        .copied()
        .filter(|t| *t > from && *t <= now)
        .collect();
    let cap = cap as usize;
    if inside.len() < cap {
        return CapCheck::Allowed;
    }
    inside.sort_unstable();
    // Once the (n - cap + 1) oldest have left the window, cap - 1 remain and one more fits.
    CapCheck::FullUntil(inside[inside.len() - cap] + cap_window())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("valid time")
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default()
            + Duration::hours(hours)
    }

    #[test]
    fn parses_and_formats_hhmm() {
        assert_eq!(parse_hhmm("08:00"), Some(t(8, 0)));
        assert_eq!(parse_hhmm("21:30"), Some(t(21, 30)));
        assert_eq!(parse_hhmm(" 21:30 "), Some(t(21, 30)));
        assert_eq!(parse_hhmm("8:00"), None);
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(format_hhmm(t(7, 5)), "07:05");
    }

    #[test]
    fn a_request_at_23_00_waits_for_08_00_local() {
        let quiet = QuietHours::default();
        let zone: Tz = "America/Chicago".parse().expect("zone");
        // 23:00 in Chicago on 2026-11-10 (CST, UTC-6) is 05:00 UTC the next day.
        let at = utc("2026-11-11T05:00:00Z");
        assert_eq!(quiet.next_allowed(at, zone), utc("2026-11-11T14:00:00Z"));
        // Inside the allowed window nothing changes.
        let noon = utc("2026-11-11T18:00:00Z");
        assert_eq!(quiet.next_allowed(noon, zone), noon);
    }

    #[test]
    fn the_morning_after_a_spring_forward_night_is_in_new_time() {
        let quiet = QuietHours::default();
        let zone: Tz = "Europe/London".parse().expect("zone");
        // 22:00 GMT on Saturday 2026-03-28; clocks go forward at 01:00 on the 29th; 08:00 BST = 07:00 UTC.
        let at = utc("2026-03-28T22:00:00Z");
        assert_eq!(quiet.next_allowed(at, zone), utc("2026-03-29T07:00:00Z"));
    }

    #[test]
    fn a_window_end_in_the_gap_moves_past_the_gap() {
        let quiet = QuietHours {
            start: t(0, 30),
            end: t(2, 30),
        };
        let zone: Tz = "America/New_York".parse().expect("zone");
        // 2026-03-08 02:30 does not exist in New York (02:00 -> 03:00 EDT).
        let at = utc("2026-03-08T06:00:00Z"); // 01:00 EST
        let allowed = quiet.next_allowed(at, zone);
        assert_eq!(allowed, utc("2026-03-08T07:00:00Z")); // 03:00 EDT
    }

    #[test]
    fn no_quiet_hours_when_start_equals_end() {
        let quiet = QuietHours {
            start: t(9, 0),
            end: t(9, 0),
        };
        let at = utc("2026-03-08T06:00:00Z");
        assert_eq!(quiet.next_allowed(at, Tz::UTC), at);
    }

    #[test]
    fn three_a_week_then_wait_for_the_oldest_to_leave() {
        let sent = [at(0), at(24), at(48)];
        assert_eq!(cap_check(&sent[..2], at(50), 3), CapCheck::Allowed);
        assert_eq!(
            cap_check(&sent, at(50), 3),
            CapCheck::FullUntil(at(0) + cap_window())
        );
        assert_eq!(cap_check(&sent, at(0) + cap_window(), 3), CapCheck::Allowed);
        assert_eq!(cap_check(&sent, at(50), 0), CapCheck::Allowed);
    }

    /// Days around the DST changes of both hemispheres, where mistakes happen.
    const TRANSITION_DAYS: [(i32, u32, u32); 10] = [
        (2026, 3, 8),
        (2026, 3, 29),
        (2026, 10, 25),
        (2026, 11, 1),
        (2026, 4, 5),
        (2026, 10, 4),
        (2026, 9, 27),
        (2027, 3, 14),
        (2027, 3, 28),
        (2026, 6, 15),
    ];

    fn zone_strategy() -> impl Strategy<Value = Tz> {
        (0..chrono_tz::TZ_VARIANTS.len()).prop_map(|i| chrono_tz::TZ_VARIANTS[i])
    }

    fn instant_strategy() -> impl Strategy<Value = DateTime<Utc>> {
        (0..TRANSITION_DAYS.len(), -1i64..=1, 0i64..(24 * 60)).prop_map(|(day, shift, minute)| {
            let (y, m, d) = TRANSITION_DAYS[day];
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
            date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
                + Duration::days(shift)
                + Duration::minutes(minute)
        })
    }

    fn quiet_strategy() -> impl Strategy<Value = QuietHours> {
        (0u32..24, 0u32..4, 0u32..24, 0u32..4).prop_map(|(sh, sq, eh, eq)| QuietHours {
            start: t(sh, sq * 15),
            end: t(eh, eq * 15),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never in quiet hours in the recipient's local time; never earlier than asked; and no allowed
        /// minute is skipped on the way (deferred, never dropped, never longer than needed).
        #[test]
        fn never_attempted_in_quiet_hours(zone in zone_strategy(), at in instant_strategy(), quiet in quiet_strategy()) {
            let allowed = quiet.next_allowed(at, zone);
            prop_assert!(allowed >= at);
            prop_assert!(!quiet.is_quiet(allowed.with_timezone(&zone).time()),
                "{allowed} is {} in {zone}, inside {quiet:?}", allowed.with_timezone(&zone));
            // A day and the DST shift, except where the only allowed hour of a day falls in that day's
            // DST gap (allowed 02:00-03:00 on a spring-forward night): then it is the next day's.
            prop_assert!(allowed - at <= Duration::hours(49));
            // Every whole minute before it (from `at`) was quiet.
            let mut probe = at;
            while probe + Duration::minutes(1) <= allowed {
                prop_assert!(quiet.is_quiet(probe.with_timezone(&zone).time()),
                    "{probe} was allowed but the message waited until {allowed}");
                probe += Duration::minutes(1);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Requests arrive at random; each is sent when the cap allows and otherwise deferred to the
        /// instant the check names. No rolling 7-day window ever holds more than the cap.
        #[test]
        fn no_rolling_window_exceeds_the_cap(
            cap in 1u32..6,
            mut arrivals in proptest::collection::vec(0i64..(24 * 60), 1..40),
        ) {
            arrivals.sort_unstable();
            // Minutes over about 24 days.
            let mut queue: Vec<DateTime<Utc>> = arrivals.iter().map(|m| at(0) + Duration::minutes(*m * 24)).collect();
            let mut sent: Vec<DateTime<Utc>> = Vec::new();
            let mut steps = 0;
            while let Some(index) = (0..queue.len()).min_by_key(|i| queue[*i]) {
                steps += 1;
                prop_assert!(steps < 10_000);
                let now = queue[index];
                match cap_check(&sent, now, cap) {
                    CapCheck::Allowed => {
                        sent.push(now);
                        queue.swap_remove(index);
                    }
                    CapCheck::FullUntil(later) => {
                        prop_assert!(later > now);
                        queue[index] = later;
                    }
                }
            }
            prop_assert_eq!(sent.len(), arrivals.len(), "deferred, never dropped");
            for s in &sent {
                let in_window = sent.iter().filter(|t| **t > *s - cap_window() && **t <= *s).count();
                prop_assert!(in_window <= cap as usize, "{in_window} in the 7 days up to {s} (cap {cap})");
            }
        }
    }
}
