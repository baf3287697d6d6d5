//! The case domain, plain Rust: statuses and their transitions, how events change a case, the follow-up
//! queue's order and reasons, the leakage report, timers. No database, no gRPC, no NATS here.

pub mod case;
pub mod clock;
pub mod ranking;
pub mod report;
pub mod status;
pub mod text;
pub mod timeline;
pub mod vocab;

pub use case::{CaseEvent, CaseSettings, CaseState, Input};
pub use status::CaseStatus;

/// Validates clinic settings; the message names what is wrong, in words an admin can act on.
pub fn validate_settings(settings: &CaseSettings) -> Result<(), (&'static str, String)> {
    // Seconds are allowed so that `followup demo` can show a window end within its minute.
    const MIN_WINDOW: i64 = 1;
    const MAX_WINDOW: i64 = 60 * 86_400;
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&settings.response_window_secs) {
        return Err((
            "response_window",
            format!(
                "must be between 1 second and 60 days, got {} s",
                settings.response_window_secs
            ),
        ));
    }
    if settings.digest_hour > 23 {
        return Err((
            "digest_hour",
            format!("must be 0-23, got {}", settings.digest_hour),
        ));
    }
    if settings.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err((
            "time_zone",
            format!(
                "`{}` is not an IANA time zone (e.g. \"Europe/Dublin\")",
                settings.time_zone
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(validate_settings(&CaseSettings::default()).is_ok());
        let bad_zone = CaseSettings {
            time_zone: "Mars/Olympus".into(),
            ..CaseSettings::default()
        };
        assert_eq!(
            validate_settings(&bad_zone).map_err(|e| e.0),
            Err("time_zone")
        );
        let bad_hour = CaseSettings {
            digest_hour: 24,
            ..CaseSettings::default()
        };
        assert_eq!(
            validate_settings(&bad_hour).map_err(|e| e.0),
            Err("digest_hour")
        );
        // A second is the shortest window (followup demo shows one end); none at all is refused.
        let seconds = CaseSettings {
            response_window_secs: 5,
            ..CaseSettings::default()
        };
        assert!(validate_settings(&seconds).is_ok());
        for window in [0, 61 * 86_400] {
            let refused = CaseSettings {
                response_window_secs: window,
                ..CaseSettings::default()
            };
            assert_eq!(
                validate_settings(&refused).map_err(|e| e.0),
                Err("response_window")
            );
        }
    }
}
