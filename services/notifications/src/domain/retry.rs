//! Retries: which provider answers are worth another try, and when.
//!
//! Timeouts, connection errors, 5xx and 429 are retried on the configured schedule (a 429's or 503's
//! `Retry-After` is honoured when it asks for longer); any other 4xx is the provider telling us the
//! message can never go (a bad number, a blocked recipient), so it fails at once with its reason.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How one attempt went, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptClass {
    Accepted,
    /// Certainly not accepted (a refusal worth another try, or a connection that never opened).
    Retryable,
    Permanent,
    /// The request may have reached the provider and no answer came (timeout, connection lost after it
    /// left): it may have been accepted. Retried only when a second try is harmless or the clinic says so.
    Unknown,
}

pub fn classify_http(status: u16) -> AttemptClass {
    match status {
        200..=299 => AttemptClass::Accepted,
        408 | 425 | 429 | 500..=599 => AttemptClass::Retryable,
        _ => AttemptClass::Permanent,
    }
}

/// The default schedule: the first attempt immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub fn default_schedule_secs() -> Vec<u64> {
    vec![0, 5, 300, 1800, 7200, 18000, 36000, 36000]
}

/// The delay before the next attempt after `attempts_made` attempts (from 1), or None when the schedule
/// is exhausted. `schedule[0]` is the first attempt's delay; `schedule[n]` precedes attempt n + 1.
pub fn next_delay(
    schedule: &[Duration],
    attempts_made: u32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let delay = *schedule.get(attempts_made as usize)?;
    Some(match retry_after {
        Some(asked) if asked > delay => asked.min(Duration::from_secs(24 * 3600)),
        _ => delay,
    })
}

/// Reads `Retry-After`: delta seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_provider_answers() {
        assert_eq!(classify_http(201), AttemptClass::Accepted);
        assert_eq!(classify_http(429), AttemptClass::Retryable);
        assert_eq!(classify_http(503), AttemptClass::Retryable);
        assert_eq!(classify_http(400), AttemptClass::Permanent);
        assert_eq!(classify_http(404), AttemptClass::Permanent);
    }

    #[test]
    fn follows_the_schedule_and_honours_retry_after() {
        let schedule: Vec<Duration> = default_schedule_secs()
            .into_iter()
            .map(Duration::from_secs)
            .collect();
        assert_eq!(next_delay(&schedule, 1, None), Some(Duration::from_secs(5)));
        assert_eq!(
            next_delay(&schedule, 1, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            next_delay(&schedule, 2, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(300))
        );
        assert_eq!(next_delay(&schedule, 8, None), None);
    }

    #[test]
    fn reads_retry_after_in_both_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
