//! Beacons folded into facts, read over gRPC, and announced as events.

use std::time::Duration;

use followup_platform::testkit::authed;
use followup_proto::followup::common::v1::PortalSection;
use followup_proto::followup::engagement::v1::{
    BatchGetPlanEngagementsRequest, GetPlanEngagementRequest, ListViewSessionsRequest,
};
use followup_proto::followup::events::v1::{EngagementUpdated, PlanViewed};
use futures::StreamExt;
use prost::Message;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn beacons_become_facts_sessions_and_events() {
    let h = Harness::start_with(|s| {
        // Long enough that a second engagement_updated cannot be due during the test.
        s.update_interval_secs = 3600;
    })
    .await;
    let nats = h.env.nats.client().await;
    let mut viewed = nats
        .subscribe(format!("followup.{TENANT}.engagement.plan_viewed"))
        .await
        .expect("subscribe");
    let mut updated = nats
        .subscribe(format!("followup.{TENANT}.engagement.engagement_updated"))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");

    let plan = new_plan();
    let token = h.token(TENANT, &plan);
    // Page view 1: cover, then treatment details; a suspended tab reporting 5 minutes at once counts 1.
    let first = vec![
        open("a1"),
        json!({"id": "a2", "kind": "section_visible", "section": "cover", "visible_ms": 2000, "time": 1_795_000_001_000i64}),
        json!({"id": "a3", "kind": "section_visible", "section": "treatment_details", "visible_ms": 3000, "time": 1_795_000_004_000i64}),
        heartbeat("a4", 5000),
        heartbeat("a5", 300_000),
        json!({"id": "a6", "kind": "close"}),
    ];
    assert_eq!(h.post(&batch(&token, "view-1", first)).await.0, 202);
    let facts = h.facts_until(&plan, |f| f.view_count == 1).await;
    assert!(facts.viewed);
    assert_eq!(facts.patient_id, "patient-1");
    assert_eq!(ms(&facts.total_view_time), 65_000);
    assert_eq!(section_ms(&facts.section_times, PortalSection::Cover), 2000);
    assert_eq!(facts.last_section, PortalSection::TreatmentDetails as i32);

    // plan_viewed, once, and the first engagement_updated at once.
    let event = tokio::time::timeout(Duration::from_secs(20), viewed.next())
        .await
        .expect("plan_viewed published")
        .expect("message");
    let event = PlanViewed::decode(event.payload).expect("PlanViewed");
    assert_eq!(
        (event.plan_id.as_str(), event.session_id.as_str()),
        (plan.as_str(), "view-1")
    );
    assert_eq!(event.patient_id, "patient-1");
    let update = tokio::time::timeout(Duration::from_secs(20), updated.next())
        .await
        .expect("engagement_updated published")
        .expect("message");
    let update = EngagementUpdated::decode(update.payload).expect("EngagementUpdated");
    let update_facts = update.facts.expect("facts");
    assert_eq!(update_facts.view_count, 1);
    assert_eq!(ms(&update_facts.total_view_time), 65_000);
    assert_eq!(
        update.ended_sessions.len(),
        1,
        "the closed page view is summarised"
    );

    // Page view 2: images, later by the page's clock.
    let second = vec![
        open("b1"),
        json!({"id": "b2", "kind": "section_visible", "section": "images", "visible_ms": 4000, "time": 1_795_000_100_000i64}),
    ];
    assert_eq!(h.post(&batch(&token, "view-2", second)).await.0, 202);
    let facts = h.facts_until(&plan, |f| f.view_count == 2).await;
    assert_eq!(
        section_ms(&facts.section_times, PortalSection::Images),
        4000
    );
    assert_eq!(facts.last_section, PortalSection::Images as i32);

    // Still one plan_viewed; and no second engagement_updated inside the throttle interval.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), viewed.next())
            .await
            .is_err(),
        "plan_viewed is sent once per plan"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), updated.next())
            .await
            .is_err(),
        "engagement_updated is throttled"
    );

    // Sessions, newest first, a page at a time.
    let mut client = h.grpc().await;
    let staff = h.staff(TENANT);
    let page = client
        .list_view_sessions(authed(
            ListViewSessionsRequest {
                plan_id: plan.clone(),
                page_size: 1,
                page_token: String::new(),
            },
            &staff,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.sessions.len(), 1);
    assert_eq!(page.sessions[0].session_id, "view-2");
    assert!(!page.sessions[0].closed);
    assert!(!page.next_page_token.is_empty());
    let page = client
        .list_view_sessions(authed(
            ListViewSessionsRequest {
                plan_id: plan.clone(),
                page_size: 1,
                page_token: page.next_page_token,
            },
            &staff,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.sessions[0].session_id, "view-1");
    assert_eq!(page.sessions[0].event_count, 6);
    assert!(page.sessions[0].closed);
    assert_eq!(ms(&page.sessions[0].view_time), 65_000);
    assert!(page.next_page_token.is_empty());

    // Several plans at once, in the order asked; a plan never viewed has zero facts, not NOT_FOUND.
    let never = new_plan();
    let batch = client
        .batch_get_plan_engagements(authed(
            BatchGetPlanEngagementsRequest {
                plan_ids: vec![never.clone(), plan.clone(), never.clone()],
            },
            &staff,
        ))
        .await
        .expect("batch")
        .into_inner();
    let counts: Vec<(String, i32)> = batch
        .engagements
        .iter()
        .map(|e| (e.plan_id.clone(), e.view_count))
        .collect();
    assert_eq!(
        counts,
        vec![(never.clone(), 0), (plan.clone(), 2), (never, 0)]
    );
}

#[tokio::test]
async fn another_clinic_sees_nothing_and_bad_requests_say_why() {
    let h = Harness::start().await;
    let plan = new_plan();
    let token = h.token(TENANT, &plan);
    assert_eq!(h.post(&batch(&token, "v1", vec![open("e1")])).await.0, 202);
    h.facts_until(&plan, |f| f.viewed).await;

    let other = h.facts("clinic-b", &plan).await;
    assert!(!other.viewed);
    assert_eq!(other.view_count, 0);

    let mut client = h.grpc().await;
    let staff = h.staff(TENANT);
    let err = client
        .get_plan_engagement(authed(
            GetPlanEngagementRequest {
                plan_id: "plan-42".into(),
            },
            &staff,
        ))
        .await
        .expect_err("not a UUID");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("plan_id"), "{}", err.message());

    let err = client
        .batch_get_plan_engagements(authed(
            BatchGetPlanEngagementsRequest {
                plan_ids: vec![plan.clone(); 501],
            },
            &staff,
        ))
        .await
        .expect_err("too many");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let err = client
        .list_view_sessions(authed(
            ListViewSessionsRequest {
                plan_id: plan.clone(),
                page_size: 10,
                page_token: "garbage!".into(),
            },
            &staff,
        ))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let err = client
        .get_plan_engagement(tonic::Request::new(GetPlanEngagementRequest {
            plan_id: plan.clone(),
        }))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn a_poison_batch_is_dead_lettered_and_its_neighbours_still_count() {
    let h = Harness::start().await;
    let plan = new_plan();
    let js = h.env.nats.jetstream().await;
    let publish = |event_id: &str, plan_id: &str, visible_ms: i64| {
        let batch = followup_proto::followup::events::v1::BeaconBatch {
            event_id: event_id.into(),
            tenant_id: TENANT.into(),
            occurred_at: Some(followup_platform::event::now_timestamp()),
            plan_id: plan_id.into(),
            plan_version: 1,
            patient_id: "patient-1".into(),
            session_id: "s1".into(),
            events: vec![followup_proto::followup::events::v1::BeaconEvent {
                client_event_id: event_id.into(),
                kind: followup_proto::followup::events::v1::BeaconKind::Heartbeat as i32,
                section: 0,
                visible_ms,
                client_time: None,
            }],
        };
        async_nats::jetstream::message::PublishMessage::build()
            .payload(batch.encode_to_vec().into())
            .message_id(event_id)
    };
    // Published back to back, so the aggregator is likely to fetch them in one batch.
    let mut acks = Vec::new();
    for (id, plan_id, ms) in [
        ("good-1", plan.as_str(), 1000),
        ("poison", "not-a-plan", 5000),
        ("good-2", plan.as_str(), 2000),
    ] {
        acks.push(
            js.send_publish(format!("beacons.{TENANT}"), publish(id, plan_id, ms))
                .await
                .expect("sent"),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    let facts = h
        .facts_until(&plan, |f| ms(&f.total_view_time) >= 3000)
        .await;
    assert_eq!(ms(&facts.total_view_time), 3000);
    assert_eq!(facts.view_count, 1);

    let deadletters = js.get_stream("DEADLETTER").await.expect("stream");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(message) = deadletters
            .get_last_raw_message_by_subject("deadletter.beacons")
            .await
        {
            let reason = message
                .headers
                .get(followup_platform::consumer::DEADLETTER_REASON)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            assert!(reason.contains("not-a-plan"), "{reason}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
