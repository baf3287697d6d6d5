//! Each transition publishes exactly one event, through the outbox, on its subject.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::plans::v1 as pb;
use futures::StreamExt;
use prost::Message;

use crate::support::*;

/// Every plans event of `tenant` in the FOLLOWUP stream, once the outbox has published `expected`.
async fn published(svc: &Svc, tenant: &str, expected: usize) -> Vec<(String, bytes::Bytes)> {
    let pool = svc.env.db.pool().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let js = svc.env.nats.jetstream().await;
    let stream = js.get_stream("FOLLOWUP").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: format!("followup.{tenant}.plans.>"),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut messages = consumer
        .fetch()
        .max_messages(expected + 10)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        out.push((message.subject.to_string(), message.payload.clone()));
    }
    out
}

#[tokio::test]
async fn each_transition_publishes_exactly_one_event() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, [extraction, implant, crown]) = svc.journey(CLINIC, "pat-1").await; // created (items: none)
    let sent = svc.send(CLINIC, &plan_id).await; // sent
    svc.send(CLINIC, &plan_id).await; // sent again (re-send)
    svc.approve(CLINIC, &plan_id).await.unwrap(); // approved
    svc.complete(CLINIC, &plan_id, &extraction).await.unwrap(); // item_completed
    svc.plans
        .clone()
        .revise_plan(svc.owner(pb::RevisePlanRequest {
            plan_id: plan_id.clone(),
            reason: "x".into(),
        }))
        .await
        .unwrap(); // revised
    svc.send(CLINIC, &plan_id).await; // sent (v2)
    svc.approve(CLINIC, &plan_id).await.unwrap(); // approved (v2)
    svc.complete(CLINIC, &plan_id, &implant).await.unwrap(); // item_completed
    svc.complete(CLINIC, &plan_id, &crown).await.unwrap(); // item_completed + plan_completed
    let refused = svc.complete(CLINIC, &plan_id, &crown).await;
    assert!(refused.is_err(), "a refused call publishes nothing");
    let (cancelled, _) = svc.journey(CLINIC, "pat-2").await; // created
    svc.plans
        .clone()
        .cancel_plan(svc.owner(pb::CancelPlanRequest {
            plan_id: cancelled.clone(),
            reason: "patient moved away".into(),
        }))
        .await
        .unwrap(); // cancelled

    let events = published(&svc, CLINIC, 14).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (subject, _) in &events {
        *counts.entry(subject.clone()).or_default() += 1;
    }
    let subject = |tail: &str| format!("followup.{CLINIC}.plans.{tail}");
    let expected: BTreeMap<String, usize> = [
        (subject("plan_created"), 2),
        (subject("plan_sent"), 3),
        (subject("plan_approved"), 2),
        (subject("item_completed"), 3),
        (subject("plan_revised"), 1),
        (subject("plan_completed"), 1),
        (subject("plan_cancelled"), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected);

    // The payloads carry what consumers need.
    let first_sent = events
        .iter()
        .find(|(s, _)| *s == subject("plan_sent"))
        .unwrap();
    let plan_sent = ev::PlanSent::decode(first_sent.1.clone()).unwrap();
    assert_eq!(plan_sent.plan_id, plan_id);
    assert_eq!(plan_sent.tenant_id, CLINIC);
    assert_eq!(plan_sent.patient_id, "pat-1");
    assert_eq!(plan_sent.value.unwrap().amount_minor, 355_000);
    assert_eq!(plan_sent.send_count, 1);
    assert_eq!(plan_sent.portal_url, sent.portal_url);
    assert_eq!(plan_sent.items.len(), 3);
    assert_eq!(plan_sent.visit_count, 3);
    assert!(plan_sent.portal_link_expire_time.is_some() && plan_sent.sent_time.is_some());
    assert_eq!(plan_sent.sections.len(), 2);
    uuid::Uuid::parse_str(&plan_sent.event_id).unwrap();

    let last_item = events
        .iter()
        .filter(|(s, _)| *s == subject("item_completed"))
        .last()
        .unwrap();
    let item_completed = ev::PlanItemCompleted::decode(last_item.1.clone()).unwrap();
    assert_eq!(item_completed.item_id, crown);
    assert_eq!(item_completed.items_completed, 3);
    assert_eq!(item_completed.remaining_value.unwrap().amount_minor, 0);
    assert_eq!(item_completed.visits_completed, 3);

    let completed = events
        .iter()
        .find(|(s, _)| *s == subject("plan_completed"))
        .unwrap();
    let plan_completed = ev::PlanCompleted::decode(completed.1.clone()).unwrap();
    assert_eq!(plan_completed.plan_version, 2);
    let cancelled_event = events
        .iter()
        .find(|(s, _)| *s == subject("plan_cancelled"))
        .unwrap();
    let plan_cancelled = ev::PlanCancelled::decode(cancelled_event.1.clone()).unwrap();
    assert_eq!(plan_cancelled.plan_id, cancelled);
    assert_eq!(plan_cancelled.previous_status, "DRAFT");
    assert_eq!(plan_cancelled.reason, "patient moved away");
    let revised = events
        .iter()
        .find(|(s, _)| *s == subject("plan_revised"))
        .unwrap();
    assert_eq!(
        ev::PlanRevised::decode(revised.1.clone())
            .unwrap()
            .previous_plan_version,
        1
    );
    svc.stop().await;
}
