//! Case state built from events: the statuses, the timeline, out-of-order and repeated events, groups.

use followup_proto::followup::cases::v1 as pb;
use followup_proto::followup::common::v1::CaseStatus;
use followup_proto::followup::events::v1 as ev;
use prost::Message;

use crate::support::*;

#[tokio::test]
async fn a_case_moves_through_the_statuses_and_keeps_its_timeline() {
    let h = Harness::start().await;
    let mut published = h.subscribe_cases(CLINIC).await;
    let plan = plan_id();

    h.publish(&plan_created(CLINIC, &plan, "p-1", 0)).await;
    h.wait_status(&plan, CaseStatus::DraftNotSent).await;
    h.publish(&plan_sent(Sent {
        plan: &plan,
        minute: 5,
        ..Sent::default()
    }))
    .await;
    let sent = h.wait_status(&plan, CaseStatus::SentNotViewed).await;
    let case = sent.case.unwrap();
    assert_eq!(case.value, eur(250_000));
    assert_eq!(case.treatments.len(), 1);
    assert_eq!(case.treatments[0].code, "D6010");
    assert_eq!(case.images[0].image_id, "img-1");
    assert_eq!(case.quote_expiry_date, "2026-12-31");
    assert_eq!(case.send_count, 1);

    h.publish(&plan_viewed(CLINIC, &plan, "p-1", 60)).await;
    let viewed = h.wait_status(&plan, CaseStatus::SentViewed).await;
    assert!(viewed.case.unwrap().viewed);

    h.publish(&booked(CLINIC, &plan, "p-1", "appt-1", 120))
        .await;
    let done = h.wait_status(&plan, CaseStatus::PatientBooked).await;
    let case = done.case.unwrap();
    assert!(!case.open);
    assert_eq!(case.booked_time, ts(at(120)));

    // Timeline, newest first: booked, status change, viewed, status change, sent, created.
    let kinds: Vec<i32> = done.timeline.iter().map(|e| e.kind).collect();
    use pb::TimelineKind as K;
    assert_eq!(
        kinds,
        vec![
            K::StatusChanged as i32,
            K::Booked as i32,
            K::StatusChanged as i32,
            K::Viewed as i32,
            K::StatusChanged as i32,
            K::Sent as i32,
            K::Created as i32,
        ],
        "{:#?}",
        done.timeline.iter().map(|e| &e.summary).collect::<Vec<_>>()
    );
    assert_eq!(done.timeline[5].actor_staff_id, "dr-ana");

    // Every change went out as case_status_changed, in order.
    let mut transitions = Vec::new();
    while transitions.len() < 4 {
        let message = next_message(&mut published).await;
        if message.subject.as_str().ends_with("case_status_changed") {
            let event = ev::CaseStatusChanged::decode(message.payload.as_ref()).unwrap();
            assert_eq!(event.case_id, plan);
            assert_eq!(event.source, ev::ChangeSource::Automatic as i32);
            transitions.push((event.from_status, event.to_status, event.cause));
        }
    }
    assert_eq!(
        transitions,
        vec![
            (
                0,
                CaseStatus::DraftNotSent as i32,
                "plans.plan_created".to_string()
            ),
            (
                CaseStatus::DraftNotSent as i32,
                CaseStatus::SentNotViewed as i32,
                "plans.plan_sent".to_string()
            ),
            (
                CaseStatus::SentNotViewed as i32,
                CaseStatus::SentViewed as i32,
                "engagement.plan_viewed".to_string()
            ),
            (
                CaseStatus::SentViewed as i32,
                CaseStatus::PatientBooked as i32,
                "appointment.booked".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn events_out_of_order_and_repeated_end_in_the_same_case() {
    let h = Harness::start().await;
    let plan = plan_id();
    // The booking reaches cases first, then the view, then the send, then the creation; the send and the
    // view arrive twice (a producer's retry with fresh ids).
    let send = plan_sent(Sent {
        plan: &plan,
        minute: 5,
        ..Sent::default()
    });
    h.publish(&booked(CLINIC, &plan, "p-1", "appt-1", 120))
        .await;
    h.wait_status(&plan, CaseStatus::PatientBooked).await;
    h.publish(&plan_viewed(CLINIC, &plan, "p-1", 60)).await;
    h.publish(&send).await;
    h.publish(&ev::PlanSent {
        event_id: plan_id(),
        ..send.clone()
    })
    .await;
    h.publish(&plan_viewed(CLINIC, &plan, "p-1", 60)).await;
    h.publish(&plan_created(CLINIC, &plan, "p-1", 0)).await;
    let case = h
        .wait_case(&plan, "all events applied", |c| {
            c.timeline
                .iter()
                .any(|e| e.kind == pb::TimelineKind::Created as i32)
        })
        .await;
    let c = case.case.unwrap();
    assert_eq!(
        c.status,
        CaseStatus::PatientBooked as i32,
        "a late view never moves a booking back"
    );
    assert_eq!(c.send_count, 1, "a repeated send is the same send");
    assert_eq!(c.first_sent_time, ts(at(5)));
    assert_eq!(c.first_view_time, ts(at(60)));
    assert_eq!(c.title, "Implant plan");
    assert_eq!(c.value, eur(250_000));
    assert_eq!(c.create_time, ts(at(0)));
    // The same view session is one timeline entry however often it arrives.
    let views = case
        .timeline
        .iter()
        .filter(|e| e.kind == pb::TimelineKind::Viewed as i32)
        .count();
    assert_eq!(views, 1);
}

#[tokio::test]
async fn alternatives_close_as_superseded_and_count_once() {
    let h = Harness::start().await;
    let (good, better, best) = (plan_id(), plan_id(), plan_id());
    for (plan, value) in [(&good, 100_000), (&better, 200_000), (&best, 300_000)] {
        h.publish(&plan_sent(Sent {
            plan,
            value: eur(value),
            group: "g-1",
            patient: "p-7",
            ..Sent::default()
        }))
        .await;
    }
    for plan in [&good, &better, &best] {
        h.wait_status(plan, CaseStatus::SentNotViewed).await;
    }
    let group = |statuses: Vec<i32>| pb::ListCasesRequest {
        alternative_group_id: "g-1".into(),
        statuses,
        ..Default::default()
    };
    // While open, the group counts once, at its highest option.
    let open = h.list(group(vec![])).await.unwrap();
    assert_eq!(open.total_count, 3);
    assert_eq!(open.total_value, vec![eur(300_000).unwrap()]);

    h.publish(&booked(CLINIC, &better, "p-7", "appt-9", 30))
        .await;
    h.wait_status(&better, CaseStatus::PatientBooked).await;
    h.wait_status(&good, CaseStatus::Superseded).await;
    h.wait_status(&best, CaseStatus::Superseded).await;
    let after = h.list(group(vec![])).await.unwrap();
    assert_eq!(
        after.total_value,
        vec![eur(200_000).unwrap()],
        "the booked option's value"
    );
    let superseded = h
        .list(group(vec![CaseStatus::Superseded as i32]))
        .await
        .unwrap();
    assert_eq!(superseded.total_count, 2);
    // A later cancellation of a superseded option (plans withdraws it) keeps it superseded.
    h.publish(&ev::PlanCancelled {
        event_id: plan_id(),
        tenant_id: CLINIC.into(),
        occurred_at: ts(at(40)),
        plan_id: good.clone(),
        plan_version: 1,
        patient_id: "p-7".into(),
        reason: "another option chosen".into(),
        cancelled_by_staff_id: "dr-ana".into(),
        remaining_value: eur(100_000),
        previous_status: "SENT".into(),
    })
    .await;
    h.publish(&plan_viewed(CLINIC, &best, "p-7", 50)).await;
    h.wait_case(&best, "view recorded", |c| {
        c.case.as_ref().is_some_and(|c| c.viewed)
    })
    .await;
    let good_case = h.get(&good).await.unwrap().case.unwrap();
    assert_eq!(good_case.status, CaseStatus::Superseded as i32);
}

#[tokio::test]
async fn patient_events_without_a_plan_reach_the_patients_open_case() {
    let h = Harness::start().await;
    let plan = plan_id();
    h.publish(&plan_sent(Sent {
        plan: &plan,
        patient: "p-2",
        ..Sent::default()
    }))
    .await;
    h.publish(&plan_viewed(CLINIC, &plan, "p-2", 10)).await;
    h.wait_status(&plan, CaseStatus::SentViewed).await;
    // A reply with no case named lands on the patient's open case.
    h.publish(&replied(CLINIC, "", "p-2", 20)).await;
    let case = h
        .wait_case(&plan, "reply recorded", |c| {
            c.case.as_ref().is_some_and(|c| c.last_reply_time.is_some())
        })
        .await;
    let reply = case
        .timeline
        .iter()
        .find(|e| e.kind == pb::TimelineKind::PatientReplied as i32)
        .unwrap();
    match reply.detail.as_ref().unwrap() {
        pb::timeline_entry::Detail::Message(m) => {
            assert_eq!(m.text, "Can I call you tomorrow?");
            assert_eq!(m.result, "received");
        }
        other => panic!("unexpected detail {other:?}"),
    }
    // A booking with no plan id books the patient's open case.
    h.publish(&booked(CLINIC, "", "p-2", "appt-5", 30)).await;
    h.wait_status(&plan, CaseStatus::PatientBooked).await;
    // Its cancellation reopens the case, by what the patient had seen.
    h.publish(&ev::AppointmentCancelled {
        event_id: plan_id(),
        tenant_id: CLINIC.into(),
        occurred_at: ts(at(40)),
        appointment: booked(CLINIC, "", "p-2", "appt-5", 30).appointment,
        cancelled_by: ev::CancelledBy::Patient as i32,
        reason: String::new(),
        slot_refillable: true,
    })
    .await;
    h.wait_status(&plan, CaseStatus::SentViewed).await;
}

#[tokio::test]
async fn engagement_reminders_and_names_fill_the_case() {
    let h = Harness::start().await;
    let plan = plan_id();
    h.publish(&patient(CLINIC, "p-3", "José", "Ñúñez")).await;
    h.publish(&staff(CLINIC, "fd-1", "Fiona Desk")).await;
    h.publish(&plan_sent(Sent {
        plan: &plan,
        patient: "p-3",
        owner: "fd-1",
        ..Sent::default()
    }))
    .await;
    h.publish(&engagement(CLINIC, &plan, "p-3", 30, 2, 14 * 60))
        .await;
    h.publish(&reminder_sent(CLINIC, &plan, "p-3", 60 * 24))
        .await;
    let case = h
        .wait_case(&plan, "engagement, reminder and name", |c| {
            c.case.as_ref().is_some_and(|c| {
                c.view_count == 2
                    && c.reminders_sent == 1
                    && !c.patient_name.is_empty()
                    && c.send_count == 1
                    && !c.owner_name.is_empty()
            })
        })
        .await;
    let c = case.case.unwrap();
    assert_eq!(c.status, CaseStatus::SentViewed as i32);
    assert_eq!(c.patient_name, "José Ñúñez");
    assert_eq!(c.owner_staff_id, "fd-1");
    assert_eq!(c.owner_name, "Fiona Desk");
    assert_eq!(c.total_view_time.unwrap().seconds, 14 * 60 + 30);
    assert_eq!(c.last_contact_time, ts(at(60 * 24)));
    assert!(
        case.timeline
            .iter()
            .any(|e| e.summary == "Viewed for 15 min: treatment details"),
        "{:?}",
        case.timeline.iter().map(|e| &e.summary).collect::<Vec<_>>()
    );
    assert!(
        case.timeline
            .iter()
            .any(|e| e.summary == "SMS reminder sent")
    );

    // The name filter folds case and accents.
    let found = h
        .list(pb::ListCasesRequest {
            patient_query: "jose nunez".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.cases.len(), 1);
    let none = h
        .list(pb::ListCasesRequest {
            patient_query: "maria".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.cases.is_empty());
}

#[tokio::test]
async fn an_event_that_can_never_apply_is_dead_lettered() {
    let h = Harness::start().await;
    let client = h.env.nats.client().await;
    let mut dead = client.subscribe("deadletter.followup").await.unwrap();
    client.flush().await.unwrap();
    let mut bad = plan_sent(Sent {
        plan: "not-a-plan-id",
        ..Sent::default()
    });
    bad.value = money(100, "euro");
    h.publish(&bad).await;
    let message = next_message(&mut dead).await;
    let reason = message
        .headers
        .as_ref()
        .and_then(|h| h.get(followup_platform::consumer::DEADLETTER_REASON))
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(reason.contains("not a UUID"), "{reason}");
    // The consumer keeps going.
    let plan = plan_id();
    h.publish(&plan_sent(Sent {
        plan: &plan,
        ..Sent::default()
    }))
    .await;
    h.wait_status(&plan, CaseStatus::SentNotViewed).await;
}
