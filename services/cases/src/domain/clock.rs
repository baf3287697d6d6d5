//! Time as the service sees it. Timers (the response window, the owner digest) ask the platform's
//! [`Clock`](followup_platform::clock::Clock), so tests move time forward instead of sleeping; what is the
//! cases service's own is when a digest is due.

use chrono::{DateTime, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// The clinic-local day an owner digest is due for, if one is due now: the local time is at or past the
/// digest hour and no digest was published for that day yet. DST-correct, since the local time comes
/// from the zone's rules at `now`.
pub fn digest_due(
    now: DateTime<Utc>,
    zone: Tz,
    digest_hour: u32,
    last_digest_date: Option<NaiveDate>,
) -> Option<NaiveDate> {
    let local = zone.from_utc_datetime(&now.naive_utc());
    let today = local.date_naive();
    if local.hour() < digest_hour {
        return None;
    }
    match last_digest_date {
        Some(last) if last >= today => None,
        _ => Some(today),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .expect("valid")
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid")
    }

    #[test]
    fn the_digest_is_due_once_a_day_from_the_local_hour() {
        let dublin: Tz = "Europe/Dublin".parse().expect("zone");
        // 06:59 local in winter (UTC+0): not yet.
        assert_eq!(digest_due(utc(2026, 12, 1, 6, 59), dublin, 7, None), None);
        assert_eq!(
            digest_due(utc(2026, 12, 1, 7, 0), dublin, 7, None),
            Some(date(2026, 12, 1))
        );
        assert_eq!(
            digest_due(utc(2026, 12, 1, 15, 0), dublin, 7, Some(date(2026, 12, 1))),
            None
        );
        // Summer (UTC+1): 07:00 local is 06:00 UTC.
        assert_eq!(
            digest_due(utc(2026, 7, 1, 6, 0), dublin, 7, Some(date(2026, 6, 30))),
            Some(date(2026, 7, 1))
        );
        // Across the date line: 07:00 in Auckland is still yesterday in UTC.
        let auckland: Tz = "Pacific/Auckland".parse().expect("zone");
        assert_eq!(
            digest_due(utc(2026, 12, 1, 18, 30), auckland, 7, None),
            Some(date(2026, 12, 2))
        );
    }
}
