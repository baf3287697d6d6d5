//! Refilling cancelled slots end to end: offers in paced batches to the ranked waitlist, a claim by YES,
//! two claims at the same instant (exactly one wins), a claim after the slot started (refused, by
//! link), and a rebooking by the clinic (offers withdrawn).

use chrono::Duration;
use followup_platform::auth::Role;
use followup_platform::testkit::authed;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1 as pb;
use followup_proto::followup::scheduler::v1::waitlist_service_client::WaitlistServiceClient;
use tonic::transport::Channel;

use crate::support::*;

fn client(s: &Scheduler) -> WaitlistServiceClient<Channel> {
    let addr = s.running.as_ref().expect("running").grpc_addr;
    WaitlistServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy(),
    )
}

async fn configure(s: &Scheduler, batch_size: i32, cutoff_minutes: i64) {
    client(s)
        .update_waitlist_settings(s.owner(pb::UpdateWaitlistSettingsRequest {
            settings: Some(pb::WaitlistSettings {
                batch_size,
                batch_interval: Some(prost_types::Duration {
                    seconds: 15 * 60,
                    nanos: 0,
                }),
                cutoff: Some(prost_types::Duration {
                    seconds: cutoff_minutes * 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "batch_size".into(),
                    "batch_interval".into(),
                    "cutoff".into(),
                ],
            }),
        }))
        .await
        .expect("settings");
}

async fn wait_for(s: &Scheduler, patient: &str) {
    client(s)
        .create_waitlist_entry(s.owner(pb::CreateWaitlistEntryRequest {
            entry: Some(pb::WaitlistEntry {
                patient_id: patient.into(),
                duration: Some(prost_types::Duration {
                    seconds: 30 * 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        }))
        .await
        .expect("entry");
}

fn slot(s: &Scheduler, hours_ahead: i64) -> common::Slot {
    common::Slot {
        start_time: ts(s.now() + Duration::hours(hours_ahead)),
        duration: Some(prost_types::Duration {
            seconds: 45 * 60,
            nanos: 0,
        }),
        practitioner_id: "dr-ana".into(),
        location_id: "chair-1".into(),
    }
}

async fn cancel(s: &Scheduler, appointment_id: &str, slot: common::Slot) {
    s.publish(&ev::AppointmentCancelled {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        appointment: Some(ev::Appointment {
            appointment_id: appointment_id.into(),
            patient_id: "who-cancelled".into(),
            slot: Some(slot),
            ..Default::default()
        }),
        cancelled_by: ev::CancelledBy::Patient as i32,
        slot_refillable: true,
        ..Default::default()
    })
    .await;
}

async fn open_slot(s: &Scheduler, appointment_id: &str) -> pb::GetOpenSlotResponse {
    let mut found = None;
    for _ in 0..1000 {
        let slots = client(s)
            .list_open_slots(s.owner(pb::ListOpenSlotsRequest::default()))
            .await
            .expect("slots")
            .into_inner()
            .slots;
        if let Some(slot) = slots
            .into_iter()
            .find(|x| x.cancelled_appointment_id == appointment_id)
        {
            found = Some(slot);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let slot = found.expect("the slot opens");
    get_slot(s, &slot.slot_id).await
}

async fn get_slot(s: &Scheduler, slot_id: &str) -> pb::GetOpenSlotResponse {
    client(s)
        .get_open_slot(s.owner(pb::GetOpenSlotRequest {
            slot_id: slot_id.into(),
        }))
        .await
        .expect("slot")
        .into_inner()
}

fn state(offer: &pb::SlotOffer) -> pb::SlotOfferState {
    pb::SlotOfferState::try_from(offer.state).unwrap_or(pb::SlotOfferState::Unspecified)
}

async fn offer_requests(s: &Scheduler, prefix: &str) -> Vec<ev::NotificationRequested> {
    s.requested()
        .await
        .into_iter()
        .filter(|r| r.idempotency_key.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn offers_go_out_in_paced_batches_and_replying_yes_claims_the_slot() {
    let s = Scheduler::start().await;
    configure(&s, 2, 60).await;
    for p in ["w1", "w2", "w3"] {
        wait_for(&s, p).await;
        s.advance(Duration::seconds(1));
    }
    cancel(&s, "appt-1", slot(&s, 24)).await;
    let opened = open_slot(&s, "appt-1").await;
    let offers = &opened.offers;
    let order: Vec<&str> = offers.iter().map(|o| o.patient_id.as_str()).collect();
    assert_eq!(order, vec!["w1", "w2", "w3"], "oldest entry first");
    let states: Vec<_> = offers.iter().map(state).collect();
    use pb::SlotOfferState as S;
    assert_eq!(states, vec![S::Sent, S::Sent, S::Queued]);
    let sent = offer_requests(&s, "offer:").await;
    assert_eq!(sent.len(), 2);
    let first = &sent[0];
    assert_eq!(first.template_key, "slot_offer");
    assert_eq!(first.category, "slot_offers");
    assert!(first.variables["slot_claim_url"].starts_with("http://claims.test/slots/clinic-a/"));
    assert!(first.variables.contains_key("appointment_time"));
    assert_eq!(s.outbox::<ev::SlotOpened>().await.len(), 1);

    // The next batch after the interval.
    s.advance(Duration::minutes(15));
    eventually("the second batch", || async {
        offer_requests(&s, "offer:").await.len() == 3
    })
    .await;
    let w3 = get_slot(&s, &opened.slot.as_ref().expect("slot").slot_id)
        .await
        .offers
        .into_iter()
        .find(|o| o.patient_id == "w3")
        .expect("w3's offer");
    assert_eq!(state(&w3), S::Sent);
    assert_eq!(w3.batch, 2);

    // w3 replies YES to the offer SMS.
    s.publish(&ev::PatientReplied {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        patient_id: "w3".into(),
        channel: common::Channel::Sms as i32,
        text: "YES".into(),
        kind: ev::ReplyKind::Affirmative as i32,
        in_reply_to: Some(ev::MessageRef {
            idempotency_key: format!("offer:{}", w3.slot_offer_id),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    eventually("slot_claimed", || async {
        !s.outbox::<ev::SlotClaimed>().await.is_empty()
    })
    .await;
    let claimed = &s.outbox::<ev::SlotClaimed>().await[0];
    assert_eq!(claimed.patient_id, "w3");
    assert_eq!(claimed.slot_offer_id, w3.slot_offer_id);
    assert_eq!(claimed.method, ev::ClaimMethod::SmsReply as i32);
    assert!(!claimed.waitlist_entry_id.is_empty());
    assert_eq!(claimed.cancelled_appointment_id, "appt-1");
    // The two others hear nothing yet (nobody asked); the slot closed as claimed.
    assert!(offer_requests(&s, "taken:").await.is_empty());
    let closed = s.outbox::<ev::SlotClosed>().await;
    assert_eq!(closed[0].reason, ev::SlotCloseReason::Claimed as i32);
    let slot_id = opened.slot.as_ref().expect("slot").slot_id.clone();
    let slot_now = get_slot(&s, &slot_id).await;
    assert_eq!(
        slot_now.slot.as_ref().map(|x| x.state),
        Some(pb::OpenSlotState::Claimed as i32)
    );
    let w1 = slot_now
        .offers
        .iter()
        .find(|o| o.patient_id == "w1")
        .expect("w1's offer")
        .clone();
    assert_eq!(state(&w1), S::Sent);
    assert!(w1.respond_time.is_none());

    // w1 replies YES later: told it is taken, in answer; the offer records when.
    s.advance(Duration::minutes(3));
    let yes = |offer: &str| ev::PatientReplied {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        patient_id: "w1".into(),
        channel: common::Channel::Sms as i32,
        text: "YES".into(),
        kind: ev::ReplyKind::Affirmative as i32,
        in_reply_to: Some(ev::MessageRef {
            idempotency_key: format!("offer:{offer}"),
            ..Default::default()
        }),
        ..Default::default()
    };
    s.publish(&yes(&w1.slot_offer_id)).await;
    eventually("w1 is told it is taken", || async {
        offer_requests(&s, "taken:").await.len() == 1
    })
    .await;
    let taken = offer_requests(&s, "taken:").await;
    assert_eq!(taken[0].template_key, "slot_taken");
    assert_eq!(
        taken[0].idempotency_key,
        format!("taken:{}", w1.slot_offer_id)
    );
    let w1_now = get_slot(&s, &slot_id)
        .await
        .offers
        .into_iter()
        .find(|o| o.patient_id == "w1")
        .expect("w1's offer");
    assert_eq!(state(&w1_now), S::Taken);
    assert_eq!(w1_now.respond_time, ts(s.now()));
    // A second YES gets no second "taken" message (one per offer); w2, who never replied, none.
    s.publish(&yes(&w1.slot_offer_id)).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(offer_requests(&s, "taken:").await.len(), 1);
    let w2 = get_slot(&s, &slot_id)
        .await
        .offers
        .into_iter()
        .find(|o| o.patient_id == "w2")
        .expect("w2's offer");
    assert_eq!(state(&w2), S::Sent);
}

#[tokio::test]
async fn two_claims_at_the_same_instant_exactly_one_wins() {
    let s = Scheduler::start().await;
    configure(&s, 5, 60).await;
    for p in ["a", "b", "c"] {
        wait_for(&s, p).await;
    }
    cancel(&s, "appt-2", slot(&s, 24)).await;
    let opened = open_slot(&s, "appt-2").await;
    assert_eq!(opened.offers.len(), 3);
    let claim = |offer: String| {
        let mut c = client(&s);
        let request = authed(
            pb::ClaimSlotOfferRequest {
                slot_offer_id: offer,
            },
            &s.token(Role::FrontDesk),
        );
        async move { c.claim_slot_offer(request).await }
    };
    let (one, two, three) = tokio::join!(
        claim(opened.offers[0].slot_offer_id.clone()),
        claim(opened.offers[1].slot_offer_id.clone()),
        claim(opened.offers[2].slot_offer_id.clone()),
    );
    let results = [one, two, three];
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "exactly one claim wins");
    for lost in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(lost.code(), tonic::Code::FailedPrecondition);
        assert!(
            lost.message().contains("already taken"),
            "{}",
            lost.message()
        );
    }
    assert_eq!(s.outbox::<ev::SlotClaimed>().await.len(), 1);
    let after = get_slot(&s, &opened.slot.as_ref().expect("slot").slot_id).await;
    let claimed = after
        .offers
        .iter()
        .filter(|o| state(o) == pb::SlotOfferState::Claimed)
        .count();
    let taken = after
        .offers
        .iter()
        .filter(|o| state(o) == pb::SlotOfferState::Taken)
        .count();
    // The two who lost tried (through staff): their offers are taken, with the time they tried; staff
    // on the phone tell them, so no "taken" message goes out.
    assert_eq!((claimed, taken), (1, 2));
    assert!(
        after
            .offers
            .iter()
            .filter(|o| state(o) == pb::SlotOfferState::Taken)
            .all(|o| o.respond_time.is_some())
    );
    assert!(offer_requests(&s, "taken:").await.is_empty());
}

#[tokio::test]
async fn a_claim_after_the_slot_started_is_refused() {
    let s = Scheduler::start().await;
    // No cut-off: offers run until the start.
    configure(&s, 5, 0).await;
    wait_for(&s, "late").await;
    cancel(&s, "appt-3", slot(&s, 2)).await;
    let opened = open_slot(&s, "appt-3").await;
    let link = offer_requests(&s, "offer:").await[0].variables["slot_claim_url"].clone();
    let claims = s
        .running
        .as_ref()
        .and_then(|r| r.http_addr("claims"))
        .expect("the claim page");
    let url = link.replace("http://claims.test", &format!("http://{claims}"));
    s.advance(Duration::hours(2) + Duration::minutes(1));
    let answer = http_post(&url).await;
    assert!(
        answer.starts_with("HTTP/1.1 409") || answer.starts_with("HTTP/1.1 410"),
        "{answer}"
    );
    let err = client(&s)
        .claim_slot_offer(s.owner(pb::ClaimSlotOfferRequest {
            slot_offer_id: opened.offers[0].slot_offer_id.clone(),
        }))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(s.outbox::<ev::SlotClaimed>().await.is_empty());
    // A forged link is not found.
    let forged = format!("{}x", &url[..url.len() - 1]);
    assert!(http_post(&forged).await.starts_with("HTTP/1.1 404"));
}

#[tokio::test]
async fn a_rebooking_of_the_slot_by_the_clinic_withdraws_the_open_offers() {
    let s = Scheduler::start().await;
    configure(&s, 1, 60).await;
    for p in ["r1", "r2"] {
        wait_for(&s, p).await;
    }
    let freed = slot(&s, 24);
    cancel(&s, "appt-4", freed.clone()).await;
    let opened = open_slot(&s, "appt-4").await;
    let slot_id = opened.slot.as_ref().expect("slot").slot_id.clone();
    // The front desk books someone into the same time directly.
    s.publish(&ev::AppointmentBooked {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        appointment: Some(ev::Appointment {
            appointment_id: "appt-walk-in".into(),
            patient_id: "walk-in".into(),
            slot: Some(freed),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    eventually("the slot closes as rebooked", || async {
        get_slot(&s, &slot_id).await.slot.map(|x| x.state)
            == Some(pb::OpenSlotState::Rebooked as i32)
    })
    .await;
    let after = get_slot(&s, &slot_id).await;
    assert!(
        after
            .offers
            .iter()
            .all(|o| state(o) == pb::SlotOfferState::Withdrawn)
    );
    // r1 had the offer and is told; r2 was still queued and hears nothing.
    let taken = offer_requests(&s, "taken:").await;
    assert_eq!(taken.len(), 1);
    let closed = s.outbox::<ev::SlotClosed>().await;
    assert_eq!(closed[0].reason, ev::SlotCloseReason::Rebooked as i32);
    // No more batches go out.
    s.advance(Duration::minutes(30));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(offer_requests(&s, "offer:").await.len(), 1);
    let err = client(&s)
        .claim_slot_offer(s.owner(pb::ClaimSlotOfferRequest {
            slot_offer_id: after.offers[0].slot_offer_id.clone(),
        }))
        .await
        .expect_err("withdrawn");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

/// A bare HTTP/1.1 POST (the claim page's form), returning the raw answer.
async fn http_post(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("connects");
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}
