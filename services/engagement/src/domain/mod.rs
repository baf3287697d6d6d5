//! The engagement domain, plain Rust: what a beacon may say, and how beacons fold into facts.

pub mod beacon;
pub mod facts;

pub use beacon::{
    BeaconRequest, CheckedRequest, Event, Kind, Limits, RawEvent, Section, Violation, batch_id,
    check,
};
pub use facts::{SectionMs, SessionDelta, session_ended, update_due};
