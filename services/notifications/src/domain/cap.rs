//! The frequency cap: at most `cap` automated messages per patient in any rolling 7 days.
//!
//! A message counts from the instant it is first handed to a provider (`counted_at`) for exactly seven
//! days. Transactional categories (appointment reminders, slot offers) are exempt: callers leave them out
//! of `counted` and never ask.

use chrono::{DateTime, Duration, Utc};

pub fn window() -> Duration {
    Duration::days(7)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapCheck {
    Allowed,
    /// Full until this instant, when the oldest message that matters leaves the window.
    FullUntil(DateTime<Utc>),
}

/// Whether one more automated message may go at `now`, given the instants already counted for the
/// patient. `cap == 0` means no cap.
pub fn check(counted: &[DateTime<Utc>], now: DateTime<Utc>, cap: u32) -> CapCheck {
    if cap == 0 {
        return CapCheck::Allowed;
    }
    let from = now - window();
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
    CapCheck::FullUntil(inside[inside.len() - cap] + window())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default()
            + Duration::hours(hours)
    }

    #[test]
    fn three_a_week_then_wait_for_the_oldest_to_leave() {
        let sent = [at(0), at(24), at(48)];
        assert_eq!(check(&sent[..2], at(50), 3), CapCheck::Allowed);
        assert_eq!(
            check(&sent, at(50), 3),
            CapCheck::FullUntil(at(0) + window())
        );
        assert_eq!(check(&sent, at(0) + window(), 3), CapCheck::Allowed);
        assert_eq!(check(&sent, at(50), 0), CapCheck::Allowed);
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
                match check(&sent, now, cap) {
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
                let in_window = sent.iter().filter(|t| **t > *s - window() && **t <= *s).count();
                prop_assert!(in_window <= cap as usize, "{in_window} in the 7 days up to {s} (cap {cap})");
            }
        }
    }
}
