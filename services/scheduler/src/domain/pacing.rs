//! How the notifications service paces what a rule asks it to send — quiet hours in the recipient's zone
//! and the weekly frequency cap — reproduced here so a preview and a backtest can say when a message would
//! actually have gone out. The clinic's values (quiet window, cap, deferral limit) are the notifications
//! service's own settings, read from it over gRPC (`GetDeliverySettings`); the rules themselves (quiet
//! hours, the rolling cap) are `followup_platform::pacing`, the same code notifications runs before every
//! attempt (its README, "Before every attempt"). What is the scheduler's own is the order in which a
//! preview combines them.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use followup_platform::pacing::{CapCheck, QuietHours, cap_check};

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
        match cap_check(counted, allowed, self.weekly_cap) {
            CapCheck::Allowed => Paced {
                send: Some(allowed),
                held_by_quiet_hours: quiet,
                held_by_frequency_cap: false,
            },
            CapCheck::FullUntil(free) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn zone(name: &str) -> Tz {
        name.parse().unwrap_or(chrono_tz::UTC)
    }

    // Quiet hours and the cap on their own are tested where they live (followup_platform::pacing); this
    // is the order a preview combines them in.
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
