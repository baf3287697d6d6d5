//! How the notifications service paces what a rule asks it to send — quiet hours in the recipient's zone
//! and the weekly frequency cap — reproduced here so a preview and a backtest can say when a message would
//! actually have gone out. The clinic's values (quiet window, cap, deferral limit) are the notifications
//! service's own settings, read from it over gRPC (`GetDeliverySettings`); the rule is the one in its
//! `domain/quiet.rs` and `domain/cap.rs` (README "Before every attempt"), kept identical by the tests
//! below, which use the same cases.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The quiet window `[start, end)` in local wall time; `start > end` wraps midnight; equal = none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Default for QuietHours {
    /// The notifications service's default, 21:00–08:00.
    fn default() -> Self {
        Self {
            start: NaiveTime::from_hms_opt(21, 0, 0).unwrap_or_default(),
            end: NaiveTime::from_hms_opt(8, 0, 0).unwrap_or_default(),
        }
    }
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

    /// The first instant at or after `at` outside quiet hours in `zone`.
    pub fn next_allowed(&self, at: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        let local = at.with_timezone(&zone);
        if !self.is_quiet(local.time()) {
            return at;
        }
        let date = local.date_naive();
        let end_date = if local.time() < self.end {
            date
        } else {
            date.succ_opt().unwrap_or(date)
        };
        let mut candidate = first_instant_at_or_after(zone, end_date, self.end, at);
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

fn first_instant_at_or_after(
    zone: Tz,
    date: NaiveDate,
    time: NaiveTime,
    not_before: DateTime<Utc>,
) -> DateTime<Utc> {
    let mut naive = date.and_time(time);
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

/// The clinic's pacing as the notifications service applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    pub quiet: QuietHours,
    /// Automated messages per patient per rolling 7 days; 0 = no cap.
    pub weekly_cap: u32,
    /// Over the cap, deferred at most this long after the request, then suppressed.
    pub cap_deferral_limit: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            quiet: QuietHours::default(),
            weekly_cap: 3,
            cap_deferral_limit: Duration::days(7),
        }
    }
}

pub fn cap_window() -> Duration {
    Duration::days(7)
}

/// When one more capped message could go at `now`, given the instants already counted; None = now.
pub fn cap_free_at(
    counted: &[DateTime<Utc>],
    now: DateTime<Utc>,
    cap: u32,
) -> Option<DateTime<Utc>> {
    if cap == 0 {
        return None;
    }
    let from = now - cap_window();
    let mut inside: Vec<DateTime<Utc>> = counted
        .iter()
        .copied()
        .filter(|t| *t > from && *t <= now)
        .collect();
    let cap = cap as usize;
    if inside.len() < cap {
        return None;
    }
    inside.sort_unstable();
    Some(inside[inside.len() - cap] + cap_window())
}

/// What pacing does to one patient message requested at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paced {
    /// When it would go out (None: suppressed by the cap past its deferral limit).
    pub send: Option<DateTime<Utc>>,
    pub held_by_quiet_hours: bool,
    pub held_by_frequency_cap: bool,
}

impl Pacing {
    /// Quiet hours first, then the cap (for automated, non-transactional messages), then quiet hours
    /// again for the moment the cap frees: the order of the notifications service's check.
    pub fn pace(
        &self,
        at: DateTime<Utc>,
        zone: Tz,
        capped: bool,
        counted: &[DateTime<Utc>],
    ) -> Paced {
        let allowed = self.quiet.next_allowed(at, zone);
        let quiet = allowed > at;
        if !capped {
            return Paced {
                send: Some(allowed),
                held_by_quiet_hours: quiet,
                held_by_frequency_cap: false,
            };
        }
        match cap_free_at(counted, allowed, self.weekly_cap) {
            None => Paced {
                send: Some(allowed),
                held_by_quiet_hours: quiet,
                held_by_frequency_cap: false,
            },
            Some(free) => {
                let resume = self.quiet.next_allowed(free, zone);
                Paced {
                    send: (resume <= at + self.cap_deferral_limit).then_some(resume),
                    held_by_quiet_hours: quiet,
                    held_by_frequency_cap: true,
                }
            }
        }
    }
}

/// Parses "HH:MM" as the notifications settings write it.
pub fn parse_hhmm(text: &str) -> Option<NaiveTime> {
    super::schedule::parse_local_time(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap_or_default()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn zone(name: &str) -> Tz {
        name.parse().unwrap_or(chrono_tz::UTC)
    }

    // The notifications service's own cases (its domain/quiet.rs and cap.rs).
    #[test]
    fn a_request_at_23_00_waits_for_08_00_local() {
        let quiet = QuietHours::default();
        let chicago = zone("America/Chicago");
        let at = utc("2026-11-11T05:00:00Z");
        assert_eq!(quiet.next_allowed(at, chicago), utc("2026-11-11T14:00:00Z"));
        let noon = utc("2026-11-11T18:00:00Z");
        assert_eq!(quiet.next_allowed(noon, chicago), noon);
    }

    #[test]
    fn the_morning_after_a_spring_forward_night_is_in_new_time() {
        let quiet = QuietHours::default();
        let at = utc("2026-03-28T22:00:00Z");
        assert_eq!(
            quiet.next_allowed(at, zone("Europe/London")),
            utc("2026-03-29T07:00:00Z")
        );
    }

    #[test]
    fn a_window_end_in_the_gap_moves_past_the_gap() {
        let quiet = QuietHours {
            start: t(0, 30),
            end: t(2, 30),
        };
        // 2026-03-08 02:30 does not exist in New York: the first minute that does is 03:00 EDT.
        let at = utc("2026-03-08T06:00:00Z");
        assert_eq!(
            quiet.next_allowed(at, zone("America/New_York")),
            utc("2026-03-08T07:00:00Z")
        );
    }

    #[test]
    fn equal_bounds_mean_no_quiet_hours() {
        let quiet = QuietHours {
            start: t(9, 0),
            end: t(9, 0),
        };
        let at = utc("2026-11-11T03:00:00Z");
        assert_eq!(quiet.next_allowed(at, chrono_tz::UTC), at);
    }

    #[test]
    fn three_a_week_then_wait_for_the_oldest_to_leave() {
        let base = utc("2026-05-01T12:00:00Z");
        let sent = [base, base + Duration::hours(24), base + Duration::hours(48)];
        let at = base + Duration::hours(50);
        assert_eq!(cap_free_at(&sent[..2], at, 3), None);
        assert_eq!(cap_free_at(&sent, at, 3), Some(base + cap_window()));
        assert_eq!(cap_free_at(&sent, base + cap_window(), 3), None);
        assert_eq!(cap_free_at(&sent, at, 0), None);
    }

    #[test]
    fn pacing_reports_quiet_hours_and_the_cap() {
        let pacing = Pacing::default();
        let london = zone("Europe/London");
        let night = utc("2026-05-04T22:30:00Z"); // 23:30 BST
        let paced = pacing.pace(night, london, true, &[]);
        assert_eq!(paced.send, Some(utc("2026-05-05T07:00:00Z")));
        assert!(paced.held_by_quiet_hours && !paced.held_by_frequency_cap);
        let noon = utc("2026-05-05T11:00:00Z");
        let counted = [
            noon - Duration::days(1),
            noon - Duration::days(2),
            noon - Duration::days(3),
        ];
        let capped = pacing.pace(noon, london, true, &counted);
        assert!(capped.held_by_frequency_cap && !capped.held_by_quiet_hours);
        // The oldest leaves the window 4 days later at 11:00 UTC (12:00 BST: not quiet).
        assert_eq!(capped.send, Some(noon + Duration::days(4)));
        // Transactional messages are not capped.
        assert_eq!(pacing.pace(noon, london, false, &counted).send, Some(noon));
        let strict = Pacing {
            cap_deferral_limit: Duration::days(1),
            ..pacing
        };
        assert_eq!(strict.pace(noon, london, true, &counted).send, None);
    }
}
