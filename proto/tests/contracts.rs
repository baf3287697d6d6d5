//! Contract checks that hold for every Followup API and event, beyond what `buf lint` checks.

use std::collections::HashSet;

use followup_proto::descriptor_pool;
use followup_proto::followup::common::v1::{CaseStatus, Money, PortalSection};
use followup_proto::followup::events::v1::{EventHeader, PlanItemSummary, PlanSent};
use followup_proto::subjects::{self, Event};
use prost::Message;
use prost_reflect::DynamicMessage;

/// Every service the services must serve, as gRPC reflection will list them.
const SERVICES: &[&str] = &[
    "followup.plans.v1.PlansService",
    "followup.plans.v1.CatalogService",
    "followup.cases.v1.CasesService",
    "followup.engagement.v1.EngagementService",
    "followup.scheduler.v1.SchedulerService",
    "followup.scheduler.v1.WaitlistService",
    "followup.notifications.v1.NotificationsService",
];

#[test]
fn every_service_is_in_the_descriptor_set() {
    let pool = descriptor_pool();
    let found: HashSet<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
    let expected: HashSet<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(found, expected);
}

#[test]
fn every_rpc_has_its_own_request_and_response() {
    let mut seen = HashSet::new();
    for service in descriptor_pool().services() {
        for method in service.methods() {
            let input = method.input();
            let output = method.output();
            assert_eq!(
                input.name(),
                format!("{}Request", method.name()),
                "{}",
                method.full_name()
            );
            assert_eq!(
                output.name(),
                format!("{}Response", method.name()),
                "{}",
                method.full_name()
            );
            assert_eq!(input.package_name(), service.package_name());
            assert!(
                seen.insert(input.full_name().to_owned()),
                "{} used twice",
                input.full_name()
            );
            assert!(
                seen.insert(output.full_name().to_owned()),
                "{} used twice",
                output.full_name()
            );
        }
    }
    assert!(
        seen.len() > 100,
        "expected the full APIs, found {} messages",
        seen.len() / 2
    );
}

#[test]
fn every_list_rpc_pages_the_same_way() {
    // AIP-158: page_size (int32) and page_token (string) in, next_page_token (string) out.
    for service in descriptor_pool().services() {
        for method in service.methods() {
            let input = method.input();
            let Some(size) = input.get_field_by_name("page_size") else {
                continue;
            };
            assert_eq!(
                size.kind(),
                prost_reflect::Kind::Int32,
                "{}",
                method.full_name()
            );
            // A ranked search returns one page: it has a size but no token.
            if method.name() == "SearchCodes" {
                continue;
            }
            let token = input.get_field_by_name("page_token");
            assert!(
                token.is_some(),
                "{} has page_size without page_token",
                method.full_name()
            );
            let next = method.output().get_field_by_name("next_page_token");
            assert!(
                next.is_some(),
                "{} pages without next_page_token",
                method.full_name()
            );
        }
    }
}

fn plan_sent() -> PlanSent {
    PlanSent {
        event_id: "0193c5e0-0000-7000-8000-000000000001".into(),
        tenant_id: "acme".into(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_764_000_000,
            nanos: 0,
        }),
        plan_id: "0193c5e0-0000-7000-8000-0000000000aa".into(),
        plan_version: 1,
        patient_id: "P-1001".into(),
        title: "Phase 1: restorations".into(),
        value: Some(Money {
            amount_minor: 450_000,
            currency: "USD".into(),
        }),
        sections: vec![
            PortalSection::Cover.into(),
            PortalSection::TreatmentDetails.into(),
        ],
        items: vec![PlanItemSummary {
            item_id: "0193c5e0-0000-7000-8000-0000000000b1".into(),
            code: "D7140".into(),
            name: "Extraction".into(),
            visit: 1,
            value: Some(Money {
                amount_minor: 25_000,
                currency: "USD".into(),
            }),
            ..Default::default()
        }],
        quote_expiry_date: "2026-12-31".into(),
        visit_count: 3,
        ..Default::default()
    }
}

#[test]
fn a_consumer_reads_the_header_of_any_event_without_knowing_its_type() {
    let event = plan_sent();
    let header = EventHeader::decode(event.encode_to_vec().as_slice())
        .expect("any event decodes as its header");
    assert_eq!(header.event_id, event.event_id());
    assert_eq!(header.tenant_id, event.tenant_id());
    assert_eq!(header.occurred_at.as_ref(), event.occurred_at());
}

#[test]
fn events_round_trip_through_proto3_json() {
    let event = plan_sent();
    let descriptor = PlanSent::KIND
        .descriptor()
        .expect("PlanSent is in the pool");

    // Protobuf -> dynamic message -> proto3 JSON, as a JSON publisher would write it.
    let dynamic = DynamicMessage::decode(descriptor.clone(), event.encode_to_vec().as_slice())
        .expect("decodes");
    let json = serde_json::to_value(&dynamic).expect("serialises");
    assert_eq!(json["tenantId"], "acme");
    assert_eq!(json["occurredAt"], "2025-11-24T16:00:00Z");
    assert_eq!(
        json["value"]["amountMinor"], "450000",
        "int64 is a JSON string in proto3 JSON"
    );
    assert_eq!(json["sections"][1], "PORTAL_SECTION_TREATMENT_DETAILS");

    // Proto3 JSON (with the names a person writes by hand) -> the Rust type, as the consumer runner does.
    let text = json.to_string();
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    let back =
        DynamicMessage::deserialize(descriptor, &mut deserializer).expect("proto3 JSON decodes");
    let back: PlanSent = back
        .transcode_to()
        .expect("transcodes to the generated type");
    assert_eq!(back, event);

    // The subject a consumer would have received it on, read back.
    let subject = event.subject().expect("valid tenant");
    let parsed = subjects::parse(&subject).expect("parses");
    assert_eq!(
        (parsed.tenant, parsed.kind.message),
        ("acme", "followup.events.v1.PlanSent")
    );
}

#[test]
fn every_closed_enum_starts_with_unspecified() {
    for e in descriptor_pool().all_enums() {
        let zero = e
            .get_value(0)
            .unwrap_or_else(|| panic!("{} has no zero value", e.full_name()));
        assert!(
            zero.name().ends_with("_UNSPECIFIED"),
            "{}: zero value {}",
            e.full_name(),
            zero.name()
        );
    }
    assert_eq!(CaseStatus::default(), CaseStatus::Unspecified);
}
