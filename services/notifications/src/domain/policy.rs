//! The check before every attempt, in the order the product promises: consent for the channel and
//! category, quiet hours in the recipient's zone, then the frequency cap. Run again before each retry,
//! so an opt-out that arrives while a message waits or retries wins.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use super::Channel;
use super::consent::{self, ConsentRecord};
use followup_platform::pacing::{CapCheck, QuietHours, cap_check, cap_window};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeferReason {
    QuietHours,
    FrequencyCap,
    NotBefore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuppressReason {
    OptedOut,
    FrequencyCap,
    NoAddress,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Send,
    Defer {
        until: DateTime<Utc>,
        reason: DeferReason,
    },
    Suppress {
        reason: SuppressReason,
        detail: String,
    },
}

/// What the check needs to know about one message to a patient.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub now: DateTime<Utc>,
    pub channel: Channel,
    pub category: &'a str,
    /// Transactional categories skip the cap (never consent or quiet hours).
    pub transactional: bool,
    /// Staff replies are not automated: not capped.
    pub automated: bool,
    pub has_address: bool,
    pub consent: &'a [ConsentRecord],
    pub zone: Tz,
    pub quiet: QuietHours,
    pub weekly_cap: u32,
    /// When the patient's earlier automated messages counted toward the cap.
    pub counted: &'a [DateTime<Utc>],
    pub created_at: DateTime<Utc>,
    pub cap_deferral_limit: StdDuration,
    pub not_before: Option<DateTime<Utc>>,
    pub expire_at: Option<DateTime<Utc>>,
}

pub fn decide(a: &Attempt<'_>) -> Decision {
    if let Some(expire) = a.expire_at
        && a.now >= expire
    {
        return expired(expire);
    }
    if !a.has_address {
        return Decision::Suppress {
            reason: SuppressReason::NoAddress,
            detail: format!("the contact has no address for {}", a.channel.name()),
        };
    }
    if !consent::allowed(a.consent, a.channel, a.category) {
        return Decision::Suppress {
            reason: SuppressReason::OptedOut,
            detail: format!(
                "the patient opted out of {} for category `{}`",
                a.channel.name(),
                a.category
            ),
        };
    }
    let start = a.not_before.map_or(a.now, |nb| nb.max(a.now));
    let allowed = a.quiet.next_allowed(start, a.zone);
    if allowed > a.now {
        let reason = if allowed > start {
            DeferReason::QuietHours
        } else {
            DeferReason::NotBefore
        };
        return defer(a, allowed, reason);
    }
    if a.automated
        && !a.transactional
        && let CapCheck::FullUntil(free) = cap_check(a.counted, a.now, a.weekly_cap)
    {
        let limit =
            a.created_at + Duration::from_std(a.cap_deferral_limit).unwrap_or(Duration::days(7));
        let resume = a.quiet.next_allowed(free, a.zone);
        if resume > limit {
            return Decision::Suppress {
                reason: SuppressReason::FrequencyCap,
                detail: format!(
                    "{} automated messages in the last 7 days (cap {}), and the next free moment is past the deferral limit",
                    a.counted
                        .iter()
                        .filter(|t| **t > a.now - cap_window())
                        .count(),
                    a.weekly_cap
                ),
            };
        }
        return defer(a, resume, DeferReason::FrequencyCap);
    }
    Decision::Send
}

fn expired(expire: DateTime<Utc>) -> Decision {
    Decision::Suppress {
        reason: SuppressReason::Expired,
        detail: format!(
            "could not be sent before it expired at {}",
            expire.to_rfc3339()
        ),
    }
}

fn defer(a: &Attempt<'_>, until: DateTime<Utc>, reason: DeferReason) -> Decision {
    match a.expire_at {
        Some(expire) if until >= expire => expired(expire),
        _ => Decision::Defer { until, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn base<'a>(
        consent: &'a [ConsentRecord],
        counted: &'a [DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> Attempt<'a> {
        Attempt {
            now,
            channel: Channel::Sms,
            category: "treatment_follow_up",
            transactional: false,
            automated: true,
            has_address: true,
            consent,
            zone: Tz::UTC,
            quiet: QuietHours::default(),
            weekly_cap: 3,
            counted,
            created_at: now,
            cap_deferral_limit: StdDuration::from_secs(7 * 86400),
            not_before: None,
            expire_at: None,
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn consent_then_quiet_hours_then_cap() {
        let noon = utc("2026-11-10T12:00:00Z");
        assert_eq!(decide(&base(&[], &[], noon)), Decision::Send);

        let stop = ConsentRecord {
            id: Uuid::now_v7(),
            at: noon - Duration::hours(1),
            channel: Some(Channel::Sms),
            category: None,
            granted: false,
        };
        // Opted out wins even at night (nothing to wait for).
        let night = utc("2026-11-10T23:00:00Z");
        assert!(matches!(
            decide(&base(std::slice::from_ref(&stop), &[], night)),
            Decision::Suppress {
                reason: SuppressReason::OptedOut,
                ..
            }
        ));
        assert_eq!(
            decide(&base(&[], &[], night)),
            Decision::Defer {
                until: utc("2026-11-11T08:00:00Z"),
                reason: DeferReason::QuietHours
            }
        );

        let counted = [
            noon - Duration::days(1),
            noon - Duration::days(2),
            noon - Duration::days(3),
        ];
        assert_eq!(
            decide(&base(&[], &counted, noon)),
            Decision::Defer {
                until: noon + Duration::days(4),
                reason: DeferReason::FrequencyCap
            }
        );
        let mut transactional = base(&[], &counted, noon);
        transactional.transactional = true;
        assert_eq!(decide(&transactional), Decision::Send);

        let mut short_limit = base(&[], &counted, noon);
        short_limit.cap_deferral_limit = StdDuration::from_secs(86400);
        assert!(matches!(
            decide(&short_limit),
            Decision::Suppress {
                reason: SuppressReason::FrequencyCap,
                ..
            }
        ));

        let mut expiring = base(&[], &[], night);
        expiring.expire_at = Some(night + Duration::hours(2));
        assert!(matches!(
            decide(&expiring),
            Decision::Suppress {
                reason: SuppressReason::Expired,
                ..
            }
        ));

        let mut later = base(&[], &[], noon);
        later.not_before = Some(noon + Duration::hours(2));
        assert_eq!(
            decide(&later),
            Decision::Defer {
                until: noon + Duration::hours(2),
                reason: DeferReason::NotBefore
            }
        );
    }

    fn channel_strategy() -> impl Strategy<Value = Option<Channel>> {
        prop_oneof![
            Just(None),
            Just(Some(Channel::Sms)),
            Just(Some(Channel::Email)),
            Just(Some(Channel::Chat))
        ]
    }

    fn category_strategy() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("recall".to_string())),
            Just(Some("marketing".to_string()))
        ]
    }

    proptest! {
        /// Whatever the consent log, time, zone or cap, a message is never sent to a contact whose
        /// effective consent for the channel and category is withdrawn.
        #[test]
        fn never_to_an_opted_out_contact(
            entries in proptest::collection::vec((0i64..1000, channel_strategy(), category_strategy(), any::<bool>()), 0..8),
            channel in prop_oneof![Just(Channel::Sms), Just(Channel::Email), Just(Channel::Chat)],
            category in prop_oneof![Just("recall"), Just("marketing"), Just("treatment_follow_up")],
            minute in 0i64..(48 * 60),
            zone_index in 0..chrono_tz::TZ_VARIANTS.len(),
            transactional in any::<bool>(),
        ) {
            let origin = utc("2026-03-28T00:00:00Z");
            let log: Vec<ConsentRecord> = entries.into_iter().map(|(m, ch, cat, granted)| ConsentRecord {
                id: Uuid::now_v7(),
                at: origin + Duration::minutes(m),
                channel: ch,
                category: cat,
                granted,
            }).collect();
            let now = origin + Duration::minutes(minute);
            let mut attempt = base(&log, &[], now);
            attempt.channel = channel;
            attempt.category = category;
            attempt.transactional = transactional;
            attempt.zone = chrono_tz::TZ_VARIANTS[zone_index];
            let decision = decide(&attempt);
            if !consent::allowed(&log, channel, category) {
                let suppressed = matches!(decision, Decision::Suppress { reason: SuppressReason::OptedOut, .. });
                prop_assert!(suppressed);
            }
            if decision == Decision::Send {
                prop_assert!(consent::allowed(&log, channel, category));
                prop_assert!(!attempt.quiet.is_quiet(now.with_timezone(&attempt.zone).time()));
            }
        }
    }
}
