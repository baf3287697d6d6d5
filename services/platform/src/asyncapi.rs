//! The event contract as an AsyncAPI 3.0 document, for integrators' tools: `docs/asyncapi.json`.
//!
//! Generated, never written by hand, from what the code itself uses, so it cannot drift:
//!
//! - the channels from the subject table (`followup_proto::subjects::EVENTS`), each with its `<tenant>`
//!   parameter, and one dead-letter channel per stream ([`Stream::deadletter_subject`]);
//! - the payload schemas from the protobuf descriptors: JSON Schema of the proto3 JSON form (what a
//!   publisher sends with `Content-Type: application/json`; the protobuf form has the same fields), with
//!   the `.proto` comments as descriptions;
//! - the headers from what the outbox actually sets (an [`OutgoingEvent`] is built and its header names
//!   read), the trace context propagator's fields, and the dead-letter headers of [`crate::consumer`].
//!
//! The test below fails when the committed document differs from [`document`]; it says how to regenerate.
//! `scripts/asyncapi-validate.sh` checks the committed document with the AsyncAPI parser.

use std::collections::{BTreeMap, BTreeSet};

use followup_proto::followup::events::v1::EventHeader;
use followup_proto::subjects::{EVENTS, EventKind, MAX_TENANT_LEN, Stream};
use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::consumer::{DEADLETTER_CONSUMER, DEADLETTER_REASON, DEADLETTER_SUBJECT};
use crate::event::{CONTENT_TYPE, JSON, OutgoingEvent, PROTOBUF, new_event_id, now_timestamp};

/// Where the document is committed, from the repository root.
pub const PATH: &str = "docs/asyncapi.json";

/// The header JetStream deduplicates on.
const MSG_ID: &str = "Nats-Msg-Id";

/// The whole document.
pub fn document() -> Value {
    let mut schemas = Schemas::default();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();

    schemas.put("ClinicEventHeaders", clinic_headers());
    let outbox = outbox_headers();
    schemas.put("BeaconBatchHeaders", beacon_headers(&outbox));
    schemas.put("FollowupEventHeaders", outbox);
    schemas.put("DeadLetterHeaders", deadletter_headers());

    for kind in EVENTS {
        let descriptor = match kind.descriptor() {
            Some(descriptor) => descriptor,
            // The proto crate's tests hold every table entry to a descriptor; say so rather than panic.
            None => {
                channels.insert(
                    channel_id(kind),
                    json!({ "description": format!("no descriptor for {}", kind.message) }),
                );
                continue;
            }
        };
        let message_key = descriptor.name().to_string();
        let payload = schemas.message_ref(&descriptor);
        messages.insert(message_key.clone(), message(kind, &descriptor, payload));

        let id = channel_id(kind);
        channels.insert(
            id.clone(),
            json!({
                "address": kind.subject_template(),
                "title": kind.name(),
                "description": channel_description(kind),
                "parameters": { "tenant": { "$ref": "#/components/parameters/tenant" } },
                "messages": { &message_key: { "$ref": format!("#/components/messages/{message_key}") } },
                "x-jetstream-stream": kind.stream.name(),
                "x-filter-subject": kind.filter_subject(),
            }),
        );
        let (action, verb) = match kind.stream {
            Stream::Clinic => ("receive", "receive"),
            _ => ("send", "send"),
        };
        operations.insert(
            format!("{verb}.{id}"),
            json!({
                "action": action,
                "channel": { "$ref": format!("#/channels/{id}") },
                "messages": [ { "$ref": format!("#/channels/{id}/messages/{message_key}") } ],
                "summary": operation_summary(kind),
            }),
        );
    }

    messages.insert(
        "DeadLetter".into(),
        json!({
            "name": "DeadLetter",
            "title": "A message a consumer could not use",
            "summary": "The original message, unchanged, with the reason it was refused in its headers.",
            "description": "Each consuming service dead-letters its own copy (its durable consumer is named in \
                `Followup-Consumer`), so one bad event can appear once per service that consumes its subject. \
                The payload and the original headers are kept as they arrived.",
            "headers": { "$ref": "#/components/schemas/DeadLetterHeaders" },
            "payload": {
                "description": "The refused message's payload, byte for byte (protobuf or JSON, as its \
                    Content-Type header says; possibly neither, when that is why it was refused)."
            },
        }),
    );
    for stream in Stream::ALL {
        if stream == Stream::Deadletter {
            continue;
        }
        let subject = stream.deadletter_subject();
        channels.insert(
            subject.clone(),
            json!({
                "address": subject,
                "title": format!("dead letters of {}", stream.name()),
                "description": format!(
                    "What a consumer of stream `{}` (`{}`) could not decode or apply, acknowledged there so \
                     it never blocks the stream; kept in stream `{}`.",
                    stream.name(),
                    stream.subjects(),
                    Stream::Deadletter.name()
                ),
                "messages": { "DeadLetter": { "$ref": "#/components/messages/DeadLetter" } },
                "x-jetstream-stream": Stream::Deadletter.name(),
            }),
        );
        operations.insert(
            format!("send.{subject}"),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{subject}") },
                "messages": [ { "$ref": format!("#/channels/{subject}/messages/DeadLetter") } ],
                "summary": "Followup's consumers dead-letter what they cannot use, with the reason.",
            }),
        );
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Followup events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every event Followup's services and a clinic's systems exchange over NATS \
                JetStream. Generated from the subject table (`proto/src/subjects.rs`) and the protobuf \
                descriptors (`proto/followup/events/v1`) by `services/platform/src/asyncapi.rs`; do not \
                edit by hand.\n\nPayloads are protobuf (`Content-Type: application/protobuf`, the default) \
                or proto3 JSON (`Content-Type: application/json`); the schemas here describe the proto3 \
                JSON form, whose fields are the protobuf message's. Every event starts with `event_id`, \
                `tenant_id` (the subject's tenant) and `occurred_at`.",
            "license": { "name": "Apache-2.0" },
        },
        "defaultContentType": PROTOBUF,
        "servers": {
            "dev": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The `followup dev` stack's NATS server (with `--ephemeral-ports`, the \
                    address it prints as NATS_URL).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas.done(),
            "parameters": {
                "tenant": {
                    "description": format!(
                        "The clinic's tenant id, one subject token: 1 to {MAX_TENANT_LEN} ASCII letters, \
                         digits, `-` or `_`. It must equal the payload's `tenant_id`."
                    ),
                    "examples": ["acme"],
                }
            },
        },
    })
}

/// The document as committed: pretty JSON and a final newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

trait SubjectTemplate {
    fn subject_template(&self) -> String;
}

impl SubjectTemplate for EventKind {
    /// `clinic.{tenant}.patient.upserted`: the subject with AsyncAPI's parameter syntax.
    fn subject_template(&self) -> String {
        self.filter_subject().replacen('*', "{tenant}", 1)
    }
}

/// `clinic.patient.upserted`, `followup.plans.plan_sent`, `beacons`.
fn channel_id(kind: &EventKind) -> String {
    if kind.tail.is_empty() {
        kind.stream.prefix().to_string()
    } else {
        format!("{}.{}", kind.stream.prefix(), kind.tail)
    }
}

/// Who publishes on a subject, from its stream and its tail's first token (the service's name).
fn producer(kind: &EventKind) -> String {
    match kind.stream {
        Stream::Clinic => "the clinic's systems".into(),
        Stream::Beacons => "engagement's HTTP ingest (portal view beacons)".into(),
        _ => {
            let service = kind.tail.split('.').next().unwrap_or_default();
            format!("the {service} service, through its outbox")
        }
    }
}

fn channel_description(kind: &EventKind) -> String {
    format!(
        "Published by {} on stream `{}`; carries `{}`. Consumers subscribe to all clinics with `{}`.",
        producer(kind),
        kind.stream.name(),
        kind.message,
        kind.filter_subject()
    )
}

fn operation_summary(kind: &EventKind) -> String {
    match kind.stream {
        Stream::Clinic => format!(
            "Followup consumes `{}` from the clinic's systems.",
            kind.name()
        ),
        _ => format!("Published by {}.", producer(kind)),
    }
}

fn message(kind: &EventKind, descriptor: &MessageDescriptor, payload: Value) -> Value {
    let name = descriptor.name();
    let mut message = json!({
        "name": name,
        "title": name,
        "contentType": if kind.stream == Stream::Clinic { JSON } else { PROTOBUF },
        "payload": payload,
        "x-protobuf-message": kind.message,
    });
    if let Some(text) = comment(descriptor.parent_file_descriptor_proto(), descriptor.path()) {
        message["summary"] = Value::String(first_sentence(&text));
        message["description"] = Value::String(text);
    }
    // ce-type names the message exactly; the rest of the headers are the stream's.
    let base = match kind.stream {
        Stream::Clinic => "ClinicEventHeaders",
        Stream::Beacons => "BeaconBatchHeaders",
        _ => "FollowupEventHeaders",
    };
    message["headers"] = json!({
        "allOf": [ { "$ref": format!("#/components/schemas/{base}") } ],
        "type": "object",
        "properties": { "ce-type": { "type": "string", "const": kind.message } },
    });
    message
}

// ---- headers ----

fn header(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn content_type(default_note: &str) -> Value {
    json!({
        "type": "string",
        "description": format!(
            "`{PROTOBUF}` or `{JSON}` (parameters such as `; charset=utf-8` are allowed). {default_note}"
        ),
        "pattern": "^application/(protobuf|json)\\b",
        "examples": [PROTOBUF, JSON],
    })
}

fn trace_headers(properties: &mut Map<String, Value>) {
    for name in crate::telemetry::propagated_headers() {
        let description = match name.as_str() {
            "traceparent" => {
                "W3C trace context of the work that caused the event; consumers continue its trace."
            }
            "tracestate" => "W3C trace state, beside `traceparent`.",
            _ => "Trace context.",
        };
        properties.insert(name, header(description));
    }
}

/// What a clinic's system may send: nothing is required beyond the payload; the deduplication id is
/// strongly advised.
fn clinic_headers() -> Value {
    let mut properties = Map::new();
    properties.insert(
        MSG_ID.into(),
        header(
            "Advised: the event's own id (`event_id`), so JetStream stores a retried publish once within the \
             stream's duplicate window; consumers deduplicate on `event_id` either way.",
        ),
    );
    properties.insert(
        CONTENT_TYPE.into(),
        content_type("Without it the payload is read as protobuf."),
    );
    for (name, description) in cloud_events() {
        properties.insert(name.into(), header(&format!("Optional. {description}")));
    }
    trace_headers(&mut properties);
    json!({
        "type": "object",
        "description": "Headers a clinic's system may set on `clinic.<tenant>.*` events.",
        "properties": properties,
    })
}

/// The CloudEvents attributes Followup's publishers set, with what they hold.
fn cloud_events() -> [(&'static str, &'static str); 5] {
    [
        ("ce-specversion", "CloudEvents spec version, `1.0`."),
        ("ce-id", "The event's id (`event_id`)."),
        ("ce-type", "The protobuf full name of the payload message."),
        (
            "ce-source",
            "`followup/<service>`: the service that published it.",
        ),
        (
            "ce-time",
            "When the fact happened (`occurred_at`), RFC 3339 in UTC with milliseconds.",
        ),
    ]
}

/// The headers the outbox publishes with: read from an event built the way every service builds one.
fn outbox_headers() -> Value {
    let sample = EventHeader {
        event_id: new_event_id().to_string(),
        tenant_id: "acme".into(),
        occurred_at: Some(now_timestamp()),
    };
    let names: BTreeSet<String> =
        match OutgoingEvent::new("plans", "followup.acme.plans.plan_sent", &sample) {
            Ok(event) => event.headers.into_keys().collect(),
            Err(_) => BTreeSet::new(),
        };
    let described: BTreeMap<&str, &str> = cloud_events().into_iter().collect();
    let mut properties = Map::new();
    let mut required = vec![Value::String(MSG_ID.into())];
    properties.insert(
        MSG_ID.into(),
        header("The event's id (`event_id`, a UUIDv7): a republished event is stored once."),
    );
    for name in &names {
        let schema = if name == CONTENT_TYPE {
            content_type("Followup's services publish protobuf.")
        } else {
            header(
                described
                    .get(name.as_str())
                    .copied()
                    .unwrap_or("Set on every event by the outbox."),
            )
        };
        properties.insert(name.clone(), schema);
        required.push(Value::String(name.clone()));
    }
    // Present when the publishing work was traced (always, in practice), hence not required.
    trace_headers(&mut properties);
    json!({
        "type": "object",
        "description": "Headers of every event a Followup service publishes.",
        "properties": properties,
        "required": required,
    })
}

/// Beacon batches are published by engagement's ingest directly (no outbox, in the request), with the
/// outbox's headers but without `ce-time`: a batch holds views from several moments.
fn beacon_headers(outbox: &Value) -> Value {
    let mut headers = outbox.clone();
    if let Some(required) = headers["required"].as_array_mut() {
        required.retain(|name| name != "ce-time");
    }
    if let Some(properties) = headers["properties"].as_object_mut() {
        properties.remove("ce-time");
    }
    headers["description"] = Value::String(
        "Headers of a beacon batch (engagement's ingest): those of FollowupEventHeaders but `ce-time`.".into(),
    );
    headers
}

fn deadletter_headers() -> Value {
    json!({
        "type": "object",
        "description": "The refused message's own headers, kept, plus why and where it was refused.",
        "properties": {
            DEADLETTER_REASON: header(
                "Why the message was refused, in words an operator can act on (one line, at most 1,000 \
                 characters)."
            ),
            DEADLETTER_SUBJECT: header("The subject the message was published on."),
            DEADLETTER_CONSUMER: header("The durable consumer (so the service) that refused it."),
            MSG_ID: header("`<STREAM>-<stream sequence>-<consumer>`: one dead letter per refusal."),
        },
        "required": [DEADLETTER_REASON, DEADLETTER_SUBJECT, DEADLETTER_CONSUMER, MSG_ID],
        "additionalProperties": true,
    })
}

// ---- payload schemas: JSON Schema of the proto3 JSON form ----

#[derive(Default)]
struct Schemas {
    done: BTreeMap<String, Value>,
}

impl Schemas {
    fn put(&mut self, name: &str, schema: Value) {
        self.done.insert(name.to_string(), schema);
    }

    fn done(self) -> Map<String, Value> {
        self.done.into_iter().collect()
    }

    fn reference(name: &str) -> Value {
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// A `$ref` to the schema of `message`, generated (with everything it uses) the first time.
    fn message_ref(&mut self, message: &MessageDescriptor) -> Value {
        let name = message.full_name().to_string();
        if !self.done.contains_key(&name) {
            // Placeholder first: a message may contain itself.
            self.done.insert(name.clone(), Value::Null);
            let schema = self.message_schema(message);
            self.done.insert(name.clone(), schema);
        }
        Self::reference(&name)
    }

    fn enum_ref(&mut self, enumeration: &EnumDescriptor) -> Value {
        let name = enumeration.full_name().to_string();
        if !self.done.contains_key(&name) {
            let values: Vec<String> = enumeration.values().map(|v| v.name().to_string()).collect();
            let mut schema = json!({
                "type": "string",
                "enum": values,
                "x-protobuf-enum": name,
            });
            let file = enumeration.parent_file_descriptor_proto();
            let mut description = comment(file, enumeration.path()).unwrap_or_default();
            let documented: Vec<String> = enumeration
                .values()
                .filter_map(|v| {
                    comment(file, v.path()).map(|c| format!("- `{}`: {}", v.name(), one_line(&c)))
                })
                .collect();
            if !documented.is_empty() {
                if !description.is_empty() {
                    description.push_str("\n\n");
                }
                description.push_str(&documented.join("\n"));
            }
            if !description.is_empty() {
                schema["description"] = Value::String(description);
            }
            self.done.insert(name.clone(), schema);
        }
        Self::reference(&name)
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        let file = message.parent_file_descriptor_proto();
        let mut properties = Map::new();
        for field in message.fields() {
            let mut schema = self.field_schema(&field);
            let mut description = comment(file, field.path()).unwrap_or_default();
            if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
                let members: Vec<String> = oneof
                    .fields()
                    .map(|f| format!("`{}`", f.json_name()))
                    .collect();
                if !description.is_empty() {
                    description.push(' ');
                }
                description.push_str(&format!(
                    "(One of `{}`: set at most one of {}.)",
                    oneof.name(),
                    members.join(", ")
                ));
            }
            if !description.is_empty() {
                schema["description"] = Value::String(description);
            }
            properties.insert(field.json_name().to_string(), schema);
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            // Followup's decoder refuses unknown fields: a misspelt field is an error, not a default.
            "additionalProperties": false,
            "x-protobuf-message": message.full_name(),
        });
        if followup_proto::subjects::by_message_name(message.full_name()).is_some() {
            // The event header: what a consumer needs before it knows the type (event::Envelope).
            let header: Vec<String> = event_header_fields();
            schema["required"] = json!(header);
        }
        if let Some(text) = comment(file, message.path()) {
            schema["description"] = Value::String(text);
        }
        schema
    }

    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => self.kind_schema(&entry.map_entry_value_field().kind()),
                _ => json!({}),
            };
            return json!({ "type": "object", "additionalProperties": value });
        }
        let single = self.kind_schema(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": single })
        } else {
            single
        }
    }

    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double | Kind::Float => json!({
                "oneOf": [
                    { "type": "number" },
                    { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] }
                ]
            }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "minimum": i32::MIN, "maximum": i32::MAX })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
            }
            // proto3 JSON writes 64-bit integers as strings (JavaScript numbers lose precision) and
            // reads either.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": ["string", "integer"], "pattern": "^-?[0-9]+$", "format": "int64" })
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": ["string", "integer"], "pattern": "^[0-9]+$", "minimum": 0, "format": "uint64" })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Enum(enumeration) => self.enum_ref(enumeration),
            Kind::Message(message) => match well_known(message.full_name()) {
                Some(schema) => schema,
                None => self.message_ref(message),
            },
        }
    }
}

/// The proto3 JSON forms of the well-known types (they are not objects of their fields).
fn well_known(full_name: &str) -> Option<Value> {
    let scalar = |kind: &str| json!({ "type": [kind, "null"] });
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339, e.g. `2026-11-22T10:00:00Z`.",
        }),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "Seconds with an `s` suffix, e.g. `90s` or `1.5s`.",
        }),
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => scalar("string"),
        "google.protobuf.BoolValue" => scalar("boolean"),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => scalar("integer"),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => scalar("number"),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": ["string", "integer", "null"], "pattern": "^-?[0-9]+$" })
        }
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.Empty" => json!({ "type": "object", "maxProperties": 0 }),
        "google.protobuf.FieldMask" => json!({ "type": "string" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "required": ["@type"],
        }),
        _ => return None,
    })
}

/// The JSON names of the header fields every event starts with (fields 1-3 of `EventHeader`).
fn event_header_fields() -> Vec<String> {
    use prost::Name;
    let Some(header) =
        followup_proto::descriptor_pool().get_message_by_name(&EventHeader::full_name())
    else {
        return Vec::new();
    };
    let mut fields: Vec<FieldDescriptor> = header.fields().collect();
    fields.sort_by_key(|f| f.number());
    fields.iter().map(|f| f.json_name().to_string()).collect()
}

/// The leading comment of the element at `path` in its file, without the comment markers.
fn comment(file: &prost_types::FileDescriptorProto, path: &[i32]) -> Option<String> {
    let location = file
        .source_code_info
        .as_ref()?
        .location
        .iter()
        .find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?;
    let lines: Vec<&str> = text
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect();
    let text = lines.join("\n").trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn first_sentence(text: &str) -> String {
    let flat = one_line(text);
    match flat.find(". ") {
        Some(end) => flat[..=end].to_string(),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository_root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// Set to write the document instead of comparing it.
    const REGENERATE: &str = "FOLLOWUP_WRITE_ASYNCAPI";

    #[test]
    fn the_committed_asyncapi_document_is_the_generated_one() {
        let path = repository_root().join(PATH);
        let generated = render();
        if std::env::var_os(REGENERATE).is_some() {
            std::fs::write(&path, &generated).expect("write the document");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{PATH} is not what the subject table, the protos and the platform's headers produce now. \
             Regenerate it with\n\n    {REGENERATE}=1 cargo test -p followup-platform --lib asyncapi\n\n\
             and commit it (scripts/asyncapi-validate.sh checks it)."
        );
    }

    #[test]
    fn every_event_has_a_channel_with_a_tenant_and_its_schema() {
        let doc = document();
        for kind in EVENTS {
            let channel = &doc["channels"][channel_id(kind)];
            let address = channel["address"].as_str().unwrap_or_default();
            assert_eq!(
                address.replace("{tenant}", "acme"),
                kind.subject("acme").unwrap_or_default()
            );
            assert!(channel["parameters"]["tenant"].is_object(), "{address}");
            let schema = &doc["components"]["schemas"][kind.message];
            assert_eq!(schema["type"], "object", "{}", kind.message);
            assert_eq!(
                schema["required"],
                json!(["eventId", "tenantId", "occurredAt"])
            );
        }
        for stream in [Stream::Clinic, Stream::Followup, Stream::Beacons] {
            let subject = stream.deadletter_subject();
            assert_eq!(doc["channels"][&subject]["address"], subject.as_str());
        }
        let reason =
            &doc["components"]["schemas"]["DeadLetterHeaders"]["properties"][DEADLETTER_REASON];
        assert!(reason.is_object());
    }

    #[test]
    fn outbox_headers_are_the_ones_the_outbox_sets() {
        let doc = document();
        let headers = &doc["components"]["schemas"]["FollowupEventHeaders"];
        let required: Vec<&str> = headers["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for name in [
            MSG_ID,
            CONTENT_TYPE,
            "ce-specversion",
            "ce-id",
            "ce-type",
            "ce-source",
            "ce-time",
        ] {
            assert!(required.contains(&name), "{name} not in {required:?}");
        }
        assert!(headers["properties"]["traceparent"].is_object());
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(value: &Value, doc: &Value, seen: &mut usize) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.trim_start_matches('#');
                        let target = pointer
                            .split('/')
                            .map(|t| t.replace("~1", "/").replace("~0", "~"))
                            .collect::<Vec<_>>()
                            .join("/");
                        assert!(
                            doc.pointer(&target).is_some_and(|t| !t.is_null()),
                            "dangling $ref {target}"
                        );
                        *seen += 1;
                    }
                    map.values().for_each(|v| walk(v, doc, seen));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc, seen)),
                _ => {}
            }
        }
        let doc = document();
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > EVENTS.len() * 3, "{seen} references");
    }
}
