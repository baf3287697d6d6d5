//! Where every event travels: its JetStream stream, its NATS subject, its protobuf message (docs/ARCHITECTURE.md#events).
//!
//! One table, [`EVENTS`], written once in the `events!` invocation below, is the source of truth. From it:
//!
//! - [`EventKind::subject`] builds a concrete subject for a tenant (`clinic.<tenant>.patient.upserted`,
//!   `followup.<tenant>.plans.plan_sent`, `beacons.<tenant>`), and [`EventKind::filter_subject`] the
//!   all-tenants filter a durable consumer uses (`followup.*.plans.plan_sent`);
//! - [`parse`] turns a received subject back into the tenant and the [`EventKind`];
//! - [`Event`], implemented by every event message, gives its kind and header fields from the Rust type:
//!   `PlanSent::KIND.subject("acme")`, or `event.subject()` from the event's own `tenant_id`;
//! - [`by_message_name`] finds the kind of a protobuf full name (for proto3 JSON and dead letters).
//!
//! A tenant id becomes one subject token, so it must be 1 to 64 ASCII letters, digits, `-` or `_`
//! ([`validate_tenant`]); anything else (a `.`, `*`, `>`, a space) would change the subject's meaning.

use std::fmt;

use crate::followup::events::v1 as ev;

/// A JetStream stream of Followup, with the subjects it captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// `CLINIC`, subjects `clinic.>`: inbound events from the clinic's own systems.
    Clinic,
    /// `FOLLOWUP`, subjects `followup.>`: events between Followup's services.
    Followup,
    /// `BEACONS`, subjects `beacons.>`: portal view beacons, from engagement's ingest to its aggregator.
    Beacons,
    /// `DEADLETTER`, subjects `deadletter.>`: messages a consumer could not decode, with the reason in a
    /// header. Carries no event kind of its own.
    Deadletter,
}

impl Stream {
    /// Every stream, in declaration order.
    pub const ALL: [Stream; 4] = [
        Stream::Clinic,
        Stream::Followup,
        Stream::Beacons,
        Stream::Deadletter,
    ];

    /// The JetStream stream name, e.g. `"CLINIC"`.
    pub const fn name(self) -> &'static str {
        match self {
            Stream::Clinic => "CLINIC",
            Stream::Followup => "FOLLOWUP",
            Stream::Beacons => "BEACONS",
            Stream::Deadletter => "DEADLETTER",
        }
    }

    /// The first subject token of everything in the stream, e.g. `"clinic"`.
    pub const fn prefix(self) -> &'static str {
        match self {
            Stream::Clinic => "clinic",
            Stream::Followup => "followup",
            Stream::Beacons => "beacons",
            Stream::Deadletter => "deadletter",
        }
    }

    /// The subject pattern the stream captures, e.g. `"clinic.>"`.
    pub const fn subjects(self) -> &'static str {
        match self {
            Stream::Clinic => "clinic.>",
            Stream::Followup => "followup.>",
            Stream::Beacons => "beacons.>",
            Stream::Deadletter => "deadletter.>",
        }
    }

    /// The stream whose prefix is `prefix` (the first token of a subject).
    pub fn from_prefix(prefix: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.prefix() == prefix)
    }

    /// Where a consumer of this stream sends what it cannot decode: `deadletter.<prefix>`, e.g.
    /// `deadletter.clinic` (the same form as `followup_platform::jetstream::deadletter_subject`).
    pub fn deadletter_subject(self) -> String {
        format!("{}.{}", Stream::Deadletter.prefix(), self.prefix())
    }

    /// Every subject of one tenant in this stream: `clinic.<tenant>.>`, `followup.<tenant>.>`,
    /// `beacons.<tenant>`. Refused for [`Stream::Deadletter`], whose subjects carry no tenant.
    pub fn tenant_filter(self, tenant: &str) -> Result<String, SubjectError> {
        validate_tenant(tenant)?;
        match self {
            Stream::Beacons => Ok(format!("{}.{tenant}", self.prefix())),
            Stream::Deadletter => Err(SubjectError::NoTenantInStream(self)),
            Stream::Clinic | Stream::Followup => Ok(format!("{}.{tenant}.>", self.prefix())),
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One kind of event: where it is published and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventKind {
    /// The stream that stores it.
    pub stream: Stream,
    /// The subject after `<prefix>.<tenant>.`, e.g. `"patient.upserted"`, `"plans.plan_sent"`; empty for
    /// the beacon batch, whose subject is just `beacons.<tenant>`.
    pub tail: &'static str,
    /// The protobuf full name of its payload, e.g. `"followup.events.v1.PlanSent"`.
    pub message: &'static str,
}

impl EventKind {
    /// The subject this event is published on for `tenant`.
    pub fn subject(&self, tenant: &str) -> Result<String, SubjectError> {
        validate_tenant(tenant)?;
        Ok(self.join(tenant))
    }

    /// The subject for any tenant, for a consumer's filter: `clinic.*.patient.upserted`, `beacons.*`.
    pub fn filter_subject(&self) -> String {
        self.join("*")
    }

    /// A readable name of the kind, unique in [`EVENTS`]: the tail (`"plans.plan_sent"`,
    /// `"patient.upserted"`), or the prefix for the beacon batch (`"beacons"`).
    pub fn name(&self) -> &'static str {
        if self.tail.is_empty() {
            self.stream.prefix()
        } else {
            self.tail
        }
    }

    /// The descriptor of the payload message (for proto3 JSON and reflection).
    pub fn descriptor(&self) -> Option<prost_reflect::MessageDescriptor> {
        crate::descriptor_pool().get_message_by_name(self.message)
    }

    fn join(&self, tenant: &str) -> String {
        let prefix = self.stream.prefix();
        if self.tail.is_empty() {
            format!("{prefix}.{tenant}")
        } else {
            format!("{prefix}.{tenant}.{}", self.tail)
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event message of `followup.events.v1`: its kind and its three header fields (fields 1-3 of every
/// event, the same as `EventHeader`).
pub trait Event: prost::Name + prost::Message + Default {
    /// Where this event is published.
    const KIND: EventKind;

    /// The event's UUIDv7 (or the clinic system's id for clinic events); also its `Nats-Msg-Id`.
    fn event_id(&self) -> &str;

    /// The clinic the event belongs to.
    fn tenant_id(&self) -> &str;

    /// When the fact happened at its source.
    fn occurred_at(&self) -> Option<&prost_types::Timestamp>;

    /// The subject to publish this event on, from its own `tenant_id`.
    fn subject(&self) -> Result<String, SubjectError> {
        Self::KIND.subject(self.tenant_id())
    }
}

/// Declares the table and implements [`Event`] for each message in it: one line per event.
macro_rules! events {
    ($($stream:ident $tail:literal => $message:ident,)*) => {
        /// Every event kind of Followup, grouped by stream (docs/ARCHITECTURE.md#events).
        pub static EVENTS: &[EventKind] = &[
            $(<ev::$message as Event>::KIND,)*
        ];

        $(
            impl Event for ev::$message {
                const KIND: EventKind = EventKind {
                    stream: Stream::$stream,
                    tail: $tail,
                    message: concat!("followup.events.v1.", stringify!($message)),
                };

                fn event_id(&self) -> &str {
                    &self.event_id
                }

                fn tenant_id(&self) -> &str {
                    &self.tenant_id
                }

                fn occurred_at(&self) -> Option<&prost_types::Timestamp> {
                    self.occurred_at.as_ref()
                }
            }
        )*
    };
}

events! {
    // Inbound from the clinic's systems: `clinic.<tenant>.<tail>`.
    Clinic "patient.upserted" => PatientUpserted,
    Clinic "staff.upserted" => StaffUpserted,
    Clinic "appointment.booked" => AppointmentBooked,
    Clinic "appointment.cancelled" => AppointmentCancelled,
    Clinic "appointment.no_show" => AppointmentNoShow,
    Clinic "appointment.attended" => AppointmentAttended,
    Clinic "enquiry.created" => EnquiryCreated,
    Clinic "consultation.completed" => ConsultationCompleted,
    Clinic "care_case.upserted" => CareCaseUpserted,
    Clinic "invoice.issued" => InvoiceIssued,
    Clinic "message.received" => MessageReceived,
    Clinic "waitlist_entry.upserted" => WaitlistEntryUpserted,
    // Plans: `followup.<tenant>.plans.<event>`.
    Followup "plans.plan_created" => PlanCreated,
    Followup "plans.plan_sent" => PlanSent,
    Followup "plans.plan_approved" => PlanApproved,
    Followup "plans.plan_revised" => PlanRevised,
    Followup "plans.item_completed" => PlanItemCompleted,
    Followup "plans.plan_completed" => PlanCompleted,
    Followup "plans.plan_cancelled" => PlanCancelled,
    // Engagement.
    Followup "engagement.plan_viewed" => PlanViewed,
    Followup "engagement.engagement_updated" => EngagementUpdated,
    // Cases.
    Followup "cases.case_status_changed" => CaseStatusChanged,
    Followup "cases.case_owner_assigned" => CaseOwnerAssigned,
    Followup "cases.owner_digest" => OwnerDigest,
    // Scheduler.
    Followup "scheduler.notification_requested" => NotificationRequested,
    Followup "scheduler.enrollment_started" => EnrollmentStarted,
    Followup "scheduler.enrollment_stopped" => EnrollmentStopped,
    Followup "scheduler.slot_opened" => SlotOpened,
    Followup "scheduler.slot_claimed" => SlotClaimed,
    Followup "scheduler.slot_closed" => SlotClosed,
    // Notifications.
    Followup "notifications.message_sent" => MessageSent,
    Followup "notifications.message_delivered" => MessageDelivered,
    Followup "notifications.message_failed" => MessageFailed,
    Followup "notifications.message_suppressed" => MessageSuppressed,
    Followup "notifications.patient_replied" => PatientReplied,
    Followup "notifications.contact_opted_out" => ContactOptedOut,
    Followup "notifications.contact_opted_in" => ContactOptedIn,
    Followup "notifications.task_created" => TaskCreated,
    Followup "notifications.task_completed" => TaskCompleted,
    // Beacons: `beacons.<tenant>`.
    Beacons "" => BeaconBatch,
}

/// The kinds of one stream, in table order.
pub fn in_stream(stream: Stream) -> impl Iterator<Item = &'static EventKind> {
    EVENTS.iter().filter(move |k| k.stream == stream)
}

/// The kind whose payload has this protobuf full name, e.g. `"followup.events.v1.PlanSent"`.
pub fn by_message_name(message: &str) -> Option<&'static EventKind> {
    EVENTS.iter().find(|k| k.message == message)
}

/// The kind published on `tail` in `stream` (see [`EventKind::tail`]).
pub fn by_tail(stream: Stream, tail: &str) -> Option<&'static EventKind> {
    EVENTS.iter().find(|k| k.stream == stream && k.tail == tail)
}

/// A received subject, understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedSubject<'a> {
    /// The tenant token of the subject.
    pub tenant: &'a str,
    /// The event kind the subject carries.
    pub kind: &'static EventKind,
}

/// Reads a concrete event subject back into its tenant and kind:
/// `followup.acme.plans.plan_sent` → (`acme`, plans.plan_sent). Dead-letter subjects, wildcards and
/// unknown tails are refused.
pub fn parse(subject: &str) -> Result<ParsedSubject<'_>, SubjectError> {
    let unknown = || SubjectError::UnknownSubject(subject.to_owned());
    let (prefix, rest) = subject.split_once('.').ok_or_else(unknown)?;
    let stream = Stream::from_prefix(prefix).ok_or_else(unknown)?;
    let (tenant, tail) = rest.split_once('.').unwrap_or((rest, ""));
    validate_tenant(tenant)?;
    let kind = by_tail(stream, tail).ok_or_else(unknown)?;
    Ok(ParsedSubject { tenant, kind })
}

/// The longest tenant id accepted in a subject.
pub const MAX_TENANT_LEN: usize = 64;

/// Checks that `tenant` can be one subject token: 1 to [`MAX_TENANT_LEN`] ASCII letters, digits, `-`, `_`.
pub fn validate_tenant(tenant: &str) -> Result<(), SubjectError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= MAX_TENANT_LEN
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SubjectError::InvalidTenant(tenant.to_owned()))
    }
}

/// Why a subject could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectError {
    /// The tenant id cannot be a subject token.
    InvalidTenant(String),
    /// The subject is not one of [`EVENTS`].
    UnknownSubject(String),
    /// The stream's subjects carry no tenant.
    NoTenantInStream(Stream),
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectError::InvalidTenant(t) => write!(
                f,
                "tenant id {t:?} cannot be used in a subject: use 1 to {MAX_TENANT_LEN} ASCII letters, digits, '-' or '_'"
            ),
            SubjectError::UnknownSubject(s) => {
                write!(f, "subject {s:?} is not a Followup event subject")
            }
            SubjectError::NoTenantInStream(s) => write!(f, "stream {s} has no per-tenant subjects"),
        }
    }
}

impl std::error::Error for SubjectError {}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use prost_reflect::{Kind, MessageDescriptor};

    use super::*;
    use crate::descriptor_pool;

    const EVENTS_PACKAGE: &str = "followup.events.v1";

    /// The header every event starts with, read from EventHeader itself so the test follows the contract.
    fn header_fields() -> Vec<(u32, String, String)> {
        let header = descriptor_pool()
            .get_message_by_name("followup.events.v1.EventHeader")
            .expect("EventHeader is in the pool");
        describe(&header, 3)
    }

    fn describe(message: &MessageDescriptor, n: usize) -> Vec<(u32, String, String)> {
        let mut fields: Vec<_> = message.fields().collect();
        fields.sort_by_key(|f| f.number());
        fields
            .into_iter()
            .take(n)
            .map(|f| {
                let kind = match f.kind() {
                    Kind::Message(m) => m.full_name().to_owned(),
                    other => format!("{other:?}"),
                };
                (f.number(), f.name().to_owned(), kind)
            })
            .collect()
    }

    #[test]
    fn every_message_in_the_table_exists_and_starts_with_the_header() {
        let header = header_fields();
        assert_eq!(header.len(), 3);
        for kind in EVENTS {
            let descriptor = kind
                .descriptor()
                .unwrap_or_else(|| panic!("{} is not in the descriptor pool", kind.message));
            assert_eq!(
                describe(&descriptor, 3),
                header,
                "{} must start with event_id, tenant_id, occurred_at",
                kind.message
            );
            assert!(
                descriptor.fields().all(|f| !f.is_list() || f.number() > 3),
                "{}: header fields are singular",
                kind.message
            );
        }
    }

    #[test]
    fn every_event_shaped_message_of_the_package_is_in_the_table() {
        let header = header_fields();
        let in_table: HashSet<&str> = EVENTS.iter().map(|k| k.message).collect();
        for message in descriptor_pool().all_messages() {
            if message.package_name() != EVENTS_PACKAGE || message.name() == "EventHeader" {
                continue;
            }
            let looks_like_event = describe(&message, 3) == header;
            assert_eq!(
                looks_like_event,
                in_table.contains(message.full_name()),
                "{}: a message starting with the event header must be in subjects::EVENTS, and only those",
                message.full_name()
            );
        }
    }

    #[test]
    fn the_rust_types_agree_with_the_table() {
        use prost::Name;
        assert_eq!(ev::PlanSent::full_name(), ev::PlanSent::KIND.message);
        assert_eq!(ev::BeaconBatch::full_name(), ev::BeaconBatch::KIND.message);
        assert_eq!(
            ev::PatientUpserted::full_name(),
            ev::PatientUpserted::KIND.message
        );
        assert_eq!(
            by_message_name(&ev::TaskCompleted::full_name()),
            Some(&ev::TaskCompleted::KIND)
        );
    }

    #[test]
    fn names_tails_and_messages_are_unique() {
        let names: HashSet<_> = EVENTS.iter().map(|k| k.name()).collect();
        let messages: HashSet<_> = EVENTS.iter().map(|k| k.message).collect();
        let subjects: HashSet<_> = EVENTS.iter().map(|k| k.filter_subject()).collect();
        assert_eq!(names.len(), EVENTS.len());
        assert_eq!(messages.len(), EVENTS.len());
        assert_eq!(subjects.len(), EVENTS.len());
        assert!(EVENTS.iter().all(|k| k.stream != Stream::Deadletter));
    }

    #[test]
    fn every_subject_is_in_its_stream_and_round_trips() {
        for kind in EVENTS {
            let subject = kind.subject("clinic-42_a").expect("valid tenant");
            let stream_prefix = kind.stream.subjects().trim_end_matches('>');
            assert!(
                subject.starts_with(stream_prefix),
                "{subject} is not under {}",
                kind.stream.subjects()
            );
            let parsed = parse(&subject).expect("a built subject parses");
            assert_eq!(parsed.tenant, "clinic-42_a");
            assert_eq!(parsed.kind, kind);
        }
    }

    #[test]
    fn concrete_subjects_match_the_design() {
        assert_eq!(
            ev::PatientUpserted::KIND.subject("acme").as_deref(),
            Ok("clinic.acme.patient.upserted")
        );
        assert_eq!(
            ev::PlanSent::KIND.subject("acme").as_deref(),
            Ok("followup.acme.plans.plan_sent")
        );
        assert_eq!(
            ev::BeaconBatch::KIND.subject("acme").as_deref(),
            Ok("beacons.acme")
        );
        assert_eq!(
            ev::AppointmentNoShow::KIND.filter_subject(),
            "clinic.*.appointment.no_show"
        );
        assert_eq!(ev::BeaconBatch::KIND.filter_subject(), "beacons.*");
        assert_eq!(Stream::Clinic.deadletter_subject(), "deadletter.clinic");
        assert_eq!(
            Stream::Followup.tenant_filter("acme").as_deref(),
            Ok("followup.acme.>")
        );
        assert_eq!(
            Stream::Beacons.tenant_filter("acme").as_deref(),
            Ok("beacons.acme")
        );
        assert!(Stream::Deadletter.tenant_filter("acme").is_err());
        let event = ev::PlanCancelled {
            tenant_id: "acme".into(),
            ..Default::default()
        };
        assert_eq!(
            event.subject().as_deref(),
            Ok("followup.acme.plans.plan_cancelled")
        );
    }

    #[test]
    fn bad_tenants_and_unknown_subjects_are_refused() {
        for tenant in [
            "",
            "a.b",
            "*",
            ">",
            "a b",
            "é",
            &"x".repeat(MAX_TENANT_LEN + 1),
        ] {
            assert_eq!(
                ev::PlanSent::KIND.subject(tenant),
                Err(SubjectError::InvalidTenant(tenant.to_owned())),
                "{tenant:?}"
            );
        }
        for subject in [
            "",
            "clinic",
            "clinic.acme",
            "clinic.acme.patient",
            "clinic.acme.patient.deleted",
            "followup.acme.plan_sent",
            "followup.*.plans.plan_sent",
            "beacons.acme.extra",
            "deadletter.clinic",
            "other.acme.patient.upserted",
        ] {
            assert!(parse(subject).is_err(), "{subject:?} parsed");
        }
    }

    #[test]
    fn streams_by_prefix() {
        for stream in Stream::ALL {
            assert_eq!(Stream::from_prefix(stream.prefix()), Some(stream));
            assert_eq!(stream.subjects(), format!("{}.>", stream.prefix()));
        }
        assert_eq!(in_stream(Stream::Beacons).count(), 1);
        assert_eq!(in_stream(Stream::Clinic).count(), 12);
    }
}
