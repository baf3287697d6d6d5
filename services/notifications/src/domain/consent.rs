//! Consent as an append-only evidence log: the latest entry that applies to a (channel, category)
//! decides; with none, messages are allowed.
//!
//! An entry names a channel or every channel, and a category or every category, so STOP (SMS, every
//! category) and a later "yes to recall reminders by SMS" from staff compose by time, like the evidence
//! they are.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Channel;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRecord {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// None = every channel.
    pub channel: Option<Channel>,
    /// None = every category.
    pub category: Option<String>,
    pub granted: bool,
}

impl ConsentRecord {
    pub fn applies_to(&self, channel: Channel, category: &str) -> bool {
        self.channel.is_none_or(|c| c == channel)
            && self.category.as_deref().is_none_or(|c| c == category)
    }
}

/// The entry that decides consent for `channel` and `category`: the latest that applies (ties by id,
/// which is time-ordered). None = never decided: allowed.
pub fn deciding<'a>(
    log: &'a [ConsentRecord],
    channel: Channel,
    category: &str,
) -> Option<&'a ConsentRecord> {
    log.iter()
        .filter(|r| r.applies_to(channel, category))
        .max_by_key(|r| (r.at, r.id))
}

pub fn allowed(log: &[ConsentRecord], channel: Channel, category: &str) -> bool {
    deciding(log, channel, category).is_none_or(|r| r.granted)
}

/// Whether the contact has withdrawn SMS for every category (a STOP that was not undone): YES from such a
/// contact re-subscribes rather than answering an offer.
pub fn sms_opted_out(log: &[ConsentRecord]) -> bool {
    log.iter()
        .filter(|r| r.channel.is_none_or(|c| c == Channel::Sms) && r.category.is_none())
        .max_by_key(|r| (r.at, r.id))
        .is_some_and(|r| !r.granted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn record(
        minute: i64,
        channel: Option<Channel>,
        category: Option<&str>,
        granted: bool,
    ) -> ConsentRecord {
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default()
            + Duration::minutes(minute);
        ConsentRecord {
            id: Uuid::now_v7(),
            at,
            channel,
            category: category.map(str::to_string),
            granted,
        }
    }

    #[test]
    fn latest_applicable_entry_wins() {
        let stop = record(1, Some(Channel::Sms), None, false);
        assert!(allowed(&[], Channel::Sms, "recall"));
        assert!(!allowed(
            std::slice::from_ref(&stop),
            Channel::Sms,
            "recall"
        ));
        assert!(allowed(
            std::slice::from_ref(&stop),
            Channel::Email,
            "recall"
        ));
        assert!(sms_opted_out(std::slice::from_ref(&stop)));

        let recall_again = record(2, Some(Channel::Sms), Some("recall"), true);
        let log = vec![stop.clone(), recall_again];
        assert!(allowed(&log, Channel::Sms, "recall"));
        assert!(!allowed(&log, Channel::Sms, "marketing"));
        assert!(sms_opted_out(&log));

        let start = record(3, Some(Channel::Sms), None, true);
        let log = vec![stop, start];
        assert!(allowed(&log, Channel::Sms, "marketing"));
        assert!(!sms_opted_out(&log));
    }
}
