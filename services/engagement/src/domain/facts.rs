//! How beacon events become engagement facts: visible time with gaps capped, sessions, the throttle.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::beacon::{Event, Kind, Section};

/// Per-section visible milliseconds, indexed by [`Section::index`].
pub type SectionMs = [i64; 4];

/// What the new events of one page view add to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDelta {
    /// Server time of the first and last batch that brought events.
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Page visible time (heartbeats), capped per event.
    pub view_ms: i64,
    pub section_ms: SectionMs,
    pub events: i32,
    pub closed: bool,
    /// The section seen last, with the time used to order it against other batches.
    pub last_section: Option<(Section, DateTime<Utc>)>,
}

impl SessionDelta {
    pub fn new(received_at: DateTime<Utc>) -> Self {
        Self {
            first_seen: received_at,
            last_seen: received_at,
            view_ms: 0,
            section_ms: [0; 4],
            events: 0,
            closed: false,
            last_section: None,
        }
    }

    /// Adds one event that was not seen before. Only what the page reported as visible counts, and at most
    /// `cap_ms` of it: a tab left open overnight reports no more than one gap's worth per event.
    pub fn add(&mut self, event: &Event, received_at: DateTime<Utc>, cap_ms: i64) {
        self.first_seen = self.first_seen.min(received_at);
        self.last_seen = self.last_seen.max(received_at);
        self.events += 1;
        let counted = event.visible_ms.clamp(0, cap_ms.max(0));
        match event.kind {
            Kind::Heartbeat => self.view_ms += counted,
            Kind::SectionVisible => {
                if let Some(section) = event.section {
                    self.section_ms[section.index()] += counted;
                    // Browser clocks order events within a page view; the server clock is the fallback.
                    let at = event.client_time.unwrap_or(received_at);
                    if self.last_section.is_none_or(|(_, seen)| at >= seen) {
                        self.last_section = Some((section, at));
                    }
                }
            }
            Kind::Close => self.closed = true,
            Kind::Open => {}
        }
    }

    /// Folds another delta of the same session (or, for plan totals, of another session) into this one.
    pub fn merge(&mut self, other: &SessionDelta) {
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        self.view_ms += other.view_ms;
        for (mine, theirs) in self.section_ms.iter_mut().zip(other.section_ms) {
            *mine += theirs;
        }
        self.events += other.events;
        self.closed |= other.closed;
        if let Some((section, at)) = other.last_section
            && self.last_section.is_none_or(|(_, seen)| at >= seen)
        {
            self.last_section = Some((section, at));
        }
    }
}

/// Whether a plan whose facts changed may have engagement_updated published now: at most once per
/// `interval` per plan, and at once the first time.
pub fn update_due(
    last_published: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    interval: Duration,
) -> bool {
    match last_published {
        None => true,
        Some(at) => {
            let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
            now.signed_duration_since(at) >= interval
        }
    }
}

/// Whether a page view is over: closed by the page, or silent for longer than `idle`.
pub fn session_ended(
    closed: bool,
    last_seen: DateTime<Utc>,
    now: DateTime<Utc>,
    idle: Duration,
) -> bool {
    closed
        || chrono::Duration::from_std(idle)
            .is_ok_and(|idle| now.signed_duration_since(last_seen) > idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("valid")
    }

    fn ev(kind: Kind, section: Option<Section>, visible_ms: i64, client: Option<i64>) -> Event {
        Event {
            id: "e".into(),
            kind,
            section,
            visible_ms,
            client_time: client.map(at),
        }
    }

    #[test]
    fn only_reported_visible_time_counts_and_each_event_is_capped() {
        let mut delta = SessionDelta::new(at(0));
        delta.add(&ev(Kind::Open, None, 0, None), at(0), 60_000);
        delta.add(&ev(Kind::Heartbeat, None, 15_000, None), at(15), 60_000);
        // The tab was suspended overnight and reported it all at once: one gap's worth counts.
        delta.add(
            &ev(Kind::Heartbeat, None, 500_000, None),
            at(40_000),
            60_000,
        );
        delta.add(
            &ev(Kind::SectionVisible, Some(Section::Images), 4_000, None),
            at(40_001),
            60_000,
        );
        delta.add(&ev(Kind::Close, None, 0, None), at(40_002), 60_000);
        assert_eq!(delta.view_ms, 75_000);
        assert_eq!(delta.section_ms, [0, 0, 4_000, 0]);
        assert_eq!(delta.events, 5);
        assert!(delta.closed);
        assert_eq!(delta.first_seen, at(0));
        assert_eq!(delta.last_seen, at(40_002));
    }

    #[test]
    fn the_last_section_follows_the_page_clock_whatever_the_arrival_order() {
        let mut late_batch = SessionDelta::new(at(100));
        late_batch.add(
            &ev(Kind::SectionVisible, Some(Section::Cover), 1000, Some(10)),
            at(100),
            60_000,
        );
        let mut early_batch = SessionDelta::new(at(50));
        early_batch.add(
            &ev(Kind::SectionVisible, Some(Section::Images), 1000, Some(20)),
            at(50),
            60_000,
        );
        let mut a = late_batch.clone();
        a.merge(&early_batch);
        let mut b = early_batch.clone();
        b.merge(&late_batch);
        assert_eq!(a, b);
        assert_eq!(a.last_section.map(|(s, _)| s), Some(Section::Images));
        assert_eq!(a.section_ms, [1000, 0, 1000, 0]);
    }

    #[test]
    fn updates_are_throttled_per_interval() {
        let minute = Duration::from_secs(60);
        assert!(update_due(None, at(0), minute));
        assert!(!update_due(Some(at(0)), at(59), minute));
        assert!(update_due(Some(at(0)), at(60), minute));
    }

    #[test]
    fn sessions_end_when_closed_or_idle() {
        let idle = Duration::from_secs(1800);
        assert!(session_ended(true, at(0), at(1), idle));
        assert!(!session_ended(false, at(0), at(1800), idle));
        assert!(session_ended(false, at(0), at(1801), idle));
    }
}
