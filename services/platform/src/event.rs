//! Events on the wire: building one to publish, reading one that arrived.
//!
//! Every event message starts with `event_id = 1`, `tenant_id = 2`, `occurred_at = 3` (the proto
//! package's `EventHeader`), so these are read before the type is known: the inbox needs the id, the
//! subject's tenant must match the payload's. A publisher may send protobuf (the default) or proto3 JSON
//! with `Content-Type: application/json`.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use followup_proto::followup::events::v1::EventHeader;
use prost::{Message, Name};
use uuid::Uuid;

pub const CONTENT_TYPE: &str = "Content-Type";
pub const PROTOBUF: &str = "application/protobuf";
pub const JSON: &str = "application/json";

/// A new event id: UUIDv7, so ids sort by creation time.
pub fn new_event_id() -> Uuid {
    Uuid::now_v7()
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub fn now_timestamp() -> prost_types::Timestamp {
    timestamp(Utc::now())
}

pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// Subjects are `<area>.<tenant>.<event…>`; a tenant id is one subject token. The rule itself is the
/// subject table's ([`followup_proto::subjects::validate_tenant`]), so tokens, subjects and consumers agree.
pub fn is_valid_tenant(tenant: &str) -> bool {
    followup_proto::subjects::validate_tenant(tenant).is_ok()
}

/// The tenant token of a subject (`clinic.<tenant>.…`).
pub fn subject_tenant(subject: &str) -> Option<&str> {
    subject.split('.').nth(1)
}

/// An event ready for the outbox: payload, subject and the headers it will be published with.
#[derive(Clone, Debug)]
pub struct OutgoingEvent {
    pub event_id: Uuid,
    pub tenant_id: String,
    pub subject: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl OutgoingEvent {
    /// Encodes `message` for `subject`. Its `event_id` must be a UUID and its `tenant_id` the subject's
    /// tenant: what the outbox publishes is what consumers will check.
    pub fn new<M: Message + Name>(
        source: &str,
        subject: impl Into<String>,
        message: &M,
    ) -> Result<Self, EventError> {
        let subject = subject.into();
        let payload = message.encode_to_vec();
        let header = EventHeader::decode(payload.as_slice()).map_err(|e| EventError::Invalid {
            field: "payload",
            reason: e.to_string(),
        })?;
        let event_id = Uuid::parse_str(&header.event_id).map_err(|e| EventError::Invalid {
            field: "event_id",
            reason: format!("{e} (use platform::event::new_event_id)"),
        })?;
        if subject_tenant(&subject) != Some(header.tenant_id.as_str())
            || !is_valid_tenant(&header.tenant_id)
        {
            return Err(EventError::Invalid {
                field: "tenant_id",
                reason: format!(
                    "`{}` is not the tenant of subject {subject}",
                    header.tenant_id
                ),
            });
        }
        let occurred_at =
            header
                .occurred_at
                .as_ref()
                .and_then(from_timestamp)
                .ok_or(EventError::Invalid {
                    field: "occurred_at",
                    reason: "missing".into(),
                })?;
        // CloudEvents attributes let systems that know nothing of protobuf route the event.
        let mut headers = BTreeMap::new();
        headers.insert(CONTENT_TYPE.to_string(), PROTOBUF.to_string());
        headers.insert("ce-specversion".into(), "1.0".into());
        headers.insert("ce-id".into(), event_id.to_string());
        headers.insert("ce-type".into(), M::full_name());
        headers.insert("ce-source".into(), format!("followup/{source}"));
        headers.insert(
            "ce-time".into(),
            occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        let mut trace = std::collections::HashMap::new();
        crate::telemetry::inject_current(&mut trace);
        headers.extend(trace);
        Ok(Self {
            event_id,
            tenant_id: header.tenant_id,
            subject,
            payload,
            headers,
        })
    }
}

/// Why an event cannot be used, in words an operator reading the dead-letter subject can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// An event as it arrived, with its header fields read and checked.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub stream: String,
    pub subject: String,
    pub stream_sequence: u64,
    /// How many times JetStream has delivered it (1 the first time).
    pub delivered: i64,
    pub event_id: String,
    pub tenant_id: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: Bytes,
    pub headers: Option<async_nats::HeaderMap>,
    json: bool,
}

impl Envelope {
    /// Reads the header fields; a message without a usable id, tenant or time is malformed.
    pub fn parse(
        stream: &str,
        subject: &str,
        payload: Bytes,
        headers: Option<async_nats::HeaderMap>,
        stream_sequence: u64,
        delivered: i64,
    ) -> Result<Self, Malformed> {
        let json = headers
            .as_ref()
            .and_then(|h| h.get(CONTENT_TYPE))
            .is_some_and(|v| v.as_str().trim().to_ascii_lowercase().starts_with(JSON));
        let (event_id, tenant_id, occurred_at) = if json {
            peek_json(&payload)?
        } else {
            peek_protobuf(&payload)?
        };
        if event_id.is_empty() || event_id.len() > 200 {
            return Err(Malformed(
                "event_id is missing or longer than 200 characters".into(),
            ));
        }
        let Some(subject_tenant) = subject_tenant(subject) else {
            return Err(Malformed(format!("subject {subject} has no tenant token")));
        };
        if tenant_id != subject_tenant {
            return Err(Malformed(format!(
                "tenant_id `{tenant_id}` does not match the subject's tenant `{subject_tenant}`"
            )));
        }
        let occurred_at = occurred_at.ok_or_else(|| Malformed("occurred_at is missing".into()))?;
        Ok(Self {
            stream: stream.to_string(),
            subject: subject.to_string(),
            stream_sequence,
            delivered,
            event_id,
            tenant_id,
            occurred_at,
            payload,
            headers,
            json,
        })
    }

    /// What follows the tenant in the subject: `patient.upserted`, `plans.plan_sent`, or empty.
    pub fn event_type(&self) -> &str {
        let mut parts = self.subject.splitn(3, '.');
        parts.nth(2).unwrap_or("")
    }

    /// The kind of event the subject carries (None for a subject outside the table).
    pub fn kind(&self) -> Option<&'static followup_proto::subjects::EventKind> {
        followup_proto::subjects::parse(&self.subject)
            .ok()
            .map(|parsed| parsed.kind)
    }

    /// Decodes the whole message as `T`, from protobuf or proto3 JSON.
    pub fn decode<T: Message + Name + Default>(&self) -> Result<T, Malformed> {
        if !self.json {
            return T::decode(self.payload.as_ref())
                .map_err(|e| Malformed(format!("not a valid {} protobuf: {e}", T::full_name())));
        }
        let name = T::full_name();
        let descriptor = followup_proto::descriptor_pool()
            .get_message_by_name(&name)
            .ok_or_else(|| Malformed(format!("no schema for {name}")))?;
        let mut deserializer = serde_json::Deserializer::from_slice(&self.payload);
        let message = prost_reflect::DynamicMessage::deserialize(descriptor, &mut deserializer)
            .and_then(|m| deserializer.end().map(|()| m))
            .map_err(|e| Malformed(format!("not a valid {name} in proto3 JSON: {e}")))?;
        message
            .transcode_to::<T>()
            .map_err(|e| Malformed(format!("{name}: {e}")))
    }
}

fn peek_protobuf(payload: &[u8]) -> Result<(String, String, Option<DateTime<Utc>>), Malformed> {
    let header = EventHeader::decode(payload)
        .map_err(|e| Malformed(format!("not a protobuf event message: {e}")))?;
    let occurred_at = header.occurred_at.as_ref().and_then(from_timestamp);
    Ok((header.event_id, header.tenant_id, occurred_at))
}

fn peek_json(payload: &[u8]) -> Result<(String, String, Option<DateTime<Utc>>), Malformed> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Malformed(format!("not valid JSON: {e}")))?;
    // proto3 JSON accepts both the lowerCamelCase and the original field names.
    let field = |camel: &str, snake: &str| {
        value
            .get(camel)
            .or_else(|| value.get(snake))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let event_id = field("eventId", "event_id").unwrap_or_default();
    let tenant_id = field("tenantId", "tenant_id").unwrap_or_default();
    let occurred_at = match field("occurredAt", "occurred_at") {
        Some(text) => Some(
            DateTime::parse_from_rfc3339(&text)
                .map_err(|e| {
                    Malformed(format!("occurred_at `{text}` is not an RFC 3339 time: {e}"))
                })?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    Ok((event_id, tenant_id, occurred_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(event_id: &str, tenant: &str) -> EventHeader {
        EventHeader {
            event_id: event_id.into(),
            tenant_id: tenant.into(),
            occurred_at: Some(now_timestamp()),
        }
    }

    fn json_headers() -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/json; charset=utf-8");
        h
    }

    #[test]
    fn outgoing_checks_id_tenant_and_time() {
        let id = new_event_id().to_string();
        let ok = OutgoingEvent::new("plans", "followup.c1.plans.plan_sent", &header(&id, "c1"))
            .expect("valid");
        assert_eq!(ok.event_id.to_string(), id);
        assert_eq!(ok.headers.get("ce-id"), Some(&id));
        assert_eq!(
            ok.headers.get("ce-type").map(String::as_str),
            Some("followup.events.v1.EventHeader")
        );

        let wrong_tenant =
            OutgoingEvent::new("plans", "followup.c2.plans.plan_sent", &header(&id, "c1"));
        assert!(matches!(
            wrong_tenant,
            Err(EventError::Invalid {
                field: "tenant_id",
                ..
            })
        ));
        let not_uuid =
            OutgoingEvent::new("plans", "followup.c1.plans.plan_sent", &header("x", "c1"));
        assert!(matches!(
            not_uuid,
            Err(EventError::Invalid {
                field: "event_id",
                ..
            })
        ));
    }

    #[test]
    fn reads_protobuf_and_json_alike() {
        let message = header("e-1", "c1");
        let from_proto = Envelope::parse(
            "CLINIC",
            "clinic.c1.patient.upserted",
            message.encode_to_vec().into(),
            None,
            1,
            1,
        )
        .expect("protobuf");
        assert_eq!(from_proto.event_id, "e-1");
        assert_eq!(from_proto.event_type(), "patient.upserted");
        assert_eq!(
            from_proto.decode::<EventHeader>().expect("decodes"),
            message
        );

        let json = br#"{"eventId":"e-2","tenantId":"c1","occurredAt":"2026-11-22T10:00:00Z"}"#;
        let from_json = Envelope::parse(
            "CLINIC",
            "clinic.c1.patient.upserted",
            Bytes::from_static(json),
            Some(json_headers()),
            1,
            1,
        )
        .expect("json");
        let decoded: EventHeader = from_json.decode().expect("decodes");
        assert_eq!(decoded.event_id, "e-2");
        assert_eq!(decoded.occurred_at.map(|t| t.seconds), Some(1_795_341_600));
    }

    #[test]
    fn malformed_messages_say_why() {
        let garbage = Envelope::parse(
            "CLINIC",
            "clinic.c1.x",
            Bytes::from_static(b"\xff\xff\xff"),
            None,
            1,
            1,
        );
        assert!(garbage.expect_err("garbage").0.contains("not a protobuf"));

        let other_tenant = header("e", "c2").encode_to_vec();
        let err = Envelope::parse("CLINIC", "clinic.c1.x", other_tenant.into(), None, 1, 1)
            .expect_err("tenant");
        assert!(err.0.contains("does not match"), "{err}");

        let no_id = header("", "c1").encode_to_vec();
        assert!(Envelope::parse("CLINIC", "clinic.c1.x", no_id.into(), None, 1, 1).is_err());

        let bad_json = Envelope::parse(
            "CLINIC",
            "clinic.c1.x",
            Bytes::from_static(b"{"),
            Some(json_headers()),
            1,
            1,
        );
        assert!(bad_json.expect_err("json").0.contains("not valid JSON"));

        let wrong_field =
            br#"{"eventId":"e","tenantId":"c1","occurredAt":"2026-11-22T10:00:00Z","nope":1}"#;
        let env = Envelope::parse(
            "CLINIC",
            "clinic.c1.x",
            Bytes::from_static(wrong_field),
            Some(json_headers()),
            1,
            1,
        )
        .expect("header fields are fine");
        assert!(env.decode::<EventHeader>().is_err());
    }

    #[test]
    fn tenant_ids_are_subject_tokens() {
        assert!(is_valid_tenant("clinic-42_a"));
        assert!(!is_valid_tenant("a.b"));
        assert!(!is_valid_tenant("a*"));
        assert!(!is_valid_tenant(""));
    }
}
