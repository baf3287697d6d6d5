//! What a portal page may post, and the checks that turn a posted body into a batch worth storing.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// A section of the portal page (`data-followup-section` values). Closed set, as in the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Cover,
    TreatmentDetails,
    Images,
    Models3d,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::Cover,
        Section::TreatmentDetails,
        Section::Images,
        Section::Models3d,
    ];

    /// The attribute value a page uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Cover => "cover",
            Section::TreatmentDetails => "treatment_details",
            Section::Images => "images",
            Section::Models3d => "3d_models",
        }
    }

    pub fn parse(value: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Position in per-section arrays.
    pub fn index(self) -> usize {
        match self {
            Section::Cover => 0,
            Section::TreatmentDetails => 1,
            Section::Images => 2,
            Section::Models3d => 3,
        }
    }

    /// The contract's `PortalSection` number (also what the database stores).
    pub fn number(self) -> i32 {
        self.index() as i32 + 1
    }

    pub fn from_number(number: i32) -> Option<Section> {
        usize::try_from(number - 1)
            .ok()
            .and_then(|i| Section::ALL.get(i).copied())
    }
}

/// What a beacon event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Open,
    SectionVisible,
    Heartbeat,
    Close,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Open,
        Kind::SectionVisible,
        Kind::Heartbeat,
        Kind::Close,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::SectionVisible => "section_visible",
            Kind::Heartbeat => "heartbeat",
            Kind::Close => "close",
        }
    }

    pub fn parse(value: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// The contract's `BeaconKind` number.
    pub fn number(self) -> i32 {
        match self {
            Kind::Open => 1,
            Kind::SectionVisible => 2,
            Kind::Heartbeat => 3,
            Kind::Close => 4,
        }
    }

    pub fn from_number(number: i32) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.number() == number)
    }

    /// Whether events of this kind carry visible time.
    pub fn reports_time(self) -> bool {
        matches!(self, Kind::SectionVisible | Kind::Heartbeat)
    }
}

/// The body of `POST /v1/beacons` as posted (JSON, whatever the content type says). Every field is
/// optional here so that validation can name each missing or wrong one.
#[derive(Debug, Default, Deserialize)]
pub struct BeaconRequest {
    /// The portal link token (issued by plans): in the body because `navigator.sendBeacon` cannot set
    /// headers.
    pub token: Option<String>,
    /// The page view id the script generated.
    pub session_id: Option<String>,
    /// Optional: the plan the page shows; when given it must be the token's.
    pub plan_id: Option<String>,
    pub events: Option<Vec<RawEvent>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawEvent {
    /// Unique per page view; a retried event keeps it.
    pub id: Option<String>,
    pub kind: Option<String>,
    pub section: Option<String>,
    pub visible_ms: Option<i64>,
    /// The browser's clock (milliseconds since the epoch, `Date.now()`).
    pub time: Option<i64>,
}

/// Bounds on what one request may say.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_events: usize,
    /// Above this one event's visible time is absurd and the request is refused.
    pub max_reported_visible_ms: i64,
    /// One event counts for at most this much (the gap cap).
    pub max_counted_visible_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_events: 50,
            max_reported_visible_ms: 600_000,
            max_counted_visible_ms: 60_000,
        }
    }
}

/// One checked event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub kind: Kind,
    pub section: Option<Section>,
    pub visible_ms: i64,
    pub client_time: Option<DateTime<Utc>>,
}

/// A checked request, before its token is verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedRequest {
    pub token: String,
    pub session_id: String,
    pub plan_id: Option<String>,
    pub events: Vec<Event>,
}

/// One thing wrong with a request, naming the field as posted (`events[2].section`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

pub const MAX_ID_LEN: usize = 64;
const MAX_TOKEN_LEN: usize = 4096;

/// Ids become part of the stream's dedupe id; keep them to a plain alphabet.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Browsers' clocks before 2020 or after 2100 are broken; refusing them keeps ordering meaningful.
fn client_time(ms: i64) -> Option<DateTime<Utc>> {
    const MIN: i64 = 1_577_836_800_000; // 2020-01-01
    const MAX: i64 = 4_102_444_800_000; // 2100-01-01
    if (MIN..MAX).contains(&ms) {
        DateTime::from_timestamp_millis(ms)
    } else {
        None
    }
}

/// Checks a posted body, collecting every violation so the page's author fixes them in one go.
pub fn check(request: BeaconRequest, limits: &Limits) -> Result<CheckedRequest, Vec<Violation>> {
    let mut violations = Vec::new();
    let token = match request.token {
        Some(t) if !t.trim().is_empty() && t.len() <= MAX_TOKEN_LEN => t.trim().to_string(),
        Some(t) if t.len() > MAX_TOKEN_LEN => {
            violations.push(Violation::new(
                "token",
                format!("longer than {MAX_TOKEN_LEN} characters: not a portal link token"),
            ));
            String::new()
        }
        _ => {
            violations.push(Violation::new(
                "token",
                "missing: send the portal link token the page was opened with",
            ));
            String::new()
        }
    };
    let session_id = match request.session_id {
        Some(s) if valid_id(&s) => s,
        Some(_) => {
            violations.push(Violation::new(
                "session_id",
                format!("must be 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.'"),
            ));
            String::new()
        }
        None => {
            violations.push(Violation::new(
                "session_id",
                "missing: the page view id the script generated",
            ));
            String::new()
        }
    };
    let raw_events = request.events.unwrap_or_default();
    if raw_events.is_empty() {
        violations.push(Violation::new("events", "must hold at least one event"));
    } else if raw_events.len() > limits.max_events {
        violations.push(Violation::new(
            "events",
            format!(
                "{} events in one request; send at most {}",
                raw_events.len(),
                limits.max_events
            ),
        ));
        return Err(violations);
    }
    let mut events = Vec::with_capacity(raw_events.len());
    for (i, raw) in raw_events.into_iter().enumerate() {
        let field = |name: &str| format!("events[{i}].{name}");
        let before = violations.len();
        let id = raw.id.unwrap_or_default();
        if !valid_id(&id) {
            violations.push(Violation::new(
                field("id"),
                format!("must be 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.', unique in the page view"),
            ));
        }
        let kind = match raw.kind.as_deref() {
            Some(k) => Kind::parse(k).or_else(|| {
                violations.push(Violation::new(
                    field("kind"),
                    format!(
                        "unknown kind `{}`: one of open, section_visible, heartbeat, close",
                        truncate(k)
                    ),
                ));
                None
            }),
            None => {
                violations.push(Violation::new(
                    field("kind"),
                    "missing: one of open, section_visible, heartbeat, close",
                ));
                None
            }
        };
        let section = match raw.section.as_deref() {
            None | Some("") => None,
            Some(s) => Section::parse(s).or_else(|| {
                violations.push(Violation::new(
                    field("section"),
                    format!(
                        "unknown section `{}`: one of cover, treatment_details, images, 3d_models",
                        truncate(s)
                    ),
                ));
                None
            }),
        };
        if kind == Some(Kind::SectionVisible) && section.is_none() && raw.section.is_none() {
            violations.push(Violation::new(
                field("section"),
                "missing: a section_visible event names its section",
            ));
        }
        let visible_ms = raw.visible_ms.unwrap_or(0);
        if visible_ms < 0 {
            violations.push(Violation::new(
                field("visible_ms"),
                format!("{visible_ms} is negative"),
            ));
        } else if visible_ms > limits.max_reported_visible_ms {
            violations.push(Violation::new(
                field("visible_ms"),
                format!(
                    "{visible_ms} ms in one event is more than the {} ms allowed: report visible time at least every few seconds",
                    limits.max_reported_visible_ms
                ),
            ));
        } else if visible_ms > 0 && kind.is_some_and(|k| !k.reports_time()) {
            violations.push(Violation::new(
                field("visible_ms"),
                "only section_visible and heartbeat events carry visible time",
            ));
        }
        let time = match raw.time {
            None => None,
            Some(ms) => client_time(ms).or_else(|| {
                violations.push(Violation::new(
                    field("time"),
                    format!("{ms} is not a plausible Date.now() (milliseconds since 1970)"),
                ));
                None
            }),
        };
        if violations.len() == before
            && let Some(kind) = kind
        {
            events.push(Event {
                id,
                kind,
                section: if kind == Kind::SectionVisible {
                    section
                } else {
                    None
                },
                visible_ms,
                client_time: time,
            });
        }
    }
    let plan_id = request.plan_id.filter(|p| !p.is_empty());
    if violations.is_empty() {
        Ok(CheckedRequest {
            token,
            session_id,
            plan_id,
            events,
        })
    } else {
        Err(violations)
    }
}

/// Values echoed in messages are the caller's own, but keep them short.
fn truncate(value: &str) -> String {
    value.chars().take(40).collect()
}

/// The id a batch is stored under (`Nats-Msg-Id`, the inbox): its first event's id, scoped to the plan
/// and page view so that ids chosen by different pages never collide. A retried request keeps it.
pub fn batch_id(plan_id: &str, session_id: &str, first_event_id: &str) -> String {
    format!("{plan_id}:{session_id}:{first_event_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, kind: &str) -> RawEvent {
        RawEvent {
            id: Some(id.into()),
            kind: Some(kind.into()),
            ..Default::default()
        }
    }

    fn request(events: Vec<RawEvent>) -> BeaconRequest {
        BeaconRequest {
            token: Some("t".into()),
            session_id: Some("s-1".into()),
            plan_id: None,
            events: Some(events),
        }
    }

    fn fields(result: Result<CheckedRequest, Vec<Violation>>) -> Vec<String> {
        result
            .expect_err("invalid")
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_good_request_passes() {
        let mut section = event("e2", "section_visible");
        section.section = Some("3d_models".into());
        section.visible_ms = Some(1500);
        section.time = Some(1_795_000_000_000);
        let checked = check(
            request(vec![event("e1", "open"), section]),
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!(checked.events.len(), 2);
        assert_eq!(checked.events[1].section, Some(Section::Models3d));
        assert_eq!(checked.events[1].visible_ms, 1500);
        assert!(checked.events[1].client_time.is_some());
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad_section = event("e1", "section_visible");
        bad_section.section = Some("pricing".into());
        let mut negative = event("e2", "heartbeat");
        negative.visible_ms = Some(-1);
        let mut absurd = event("e3", "heartbeat");
        absurd.visible_ms = Some(8 * 3600 * 1000);
        let mut bad_time = event("e4", "heartbeat");
        bad_time.time = Some(42);
        let no_section = event("e5", "section_visible");
        let bad_kind = event("e6", "scroll");
        let bad_id = event("has space", "open");
        let mut time_on_open = event("e8", "open");
        time_on_open.visible_ms = Some(5);
        let got = fields(check(
            request(vec![
                bad_section,
                negative,
                absurd,
                bad_time,
                no_section,
                bad_kind,
                bad_id,
                time_on_open,
            ]),
            &Limits::default(),
        ));
        assert_eq!(
            got,
            vec![
                "events[0].section",
                "events[1].visible_ms",
                "events[2].visible_ms",
                "events[3].time",
                "events[4].section",
                "events[5].kind",
                "events[6].id",
                "events[7].visible_ms",
            ]
        );
    }

    #[test]
    fn missing_token_session_and_events_are_named() {
        let got = fields(check(BeaconRequest::default(), &Limits::default()));
        assert_eq!(got, vec!["token", "session_id", "events"]);
    }

    #[test]
    fn too_many_events_are_refused() {
        let limits = Limits {
            max_events: 3,
            ..Limits::default()
        };
        let events = (0..4)
            .map(|i| event(&format!("e{i}"), "heartbeat"))
            .collect();
        let violations = check(request(events), &limits).expect_err("too many");
        assert_eq!(violations[0].field, "events");
        assert!(violations[0].description.contains("at most 3"));
    }

    #[test]
    fn sections_and_kinds_round_trip_their_numbers() {
        for section in Section::ALL {
            assert_eq!(Section::from_number(section.number()), Some(section));
            assert_eq!(Section::parse(section.as_str()), Some(section));
        }
        for kind in Kind::ALL {
            assert_eq!(Kind::from_number(kind.number()), Some(kind));
        }
        assert_eq!(Section::from_number(0), None);
        assert_eq!(Section::from_number(5), None);
    }
}
