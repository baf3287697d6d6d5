//! Alternative groups settled in plans: approving one option (here, or a booking cases saw) supersedes
//! the others, a superseded option cannot be approved, and the billing summary counts a group once.

use std::time::Duration;

use chrono::Utc;
use followup_platform::auth::Role;
use followup_platform::event::{new_event_id, timestamp};
use followup_proto::followup::common::v1::CaseStatus;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::plans::v1 as pb;
use tonic_types::StatusExt;

use crate::support::*;

/// A sent option of `group`: D6010 (2,000.00) plus `code` (D7140 200.00 or D6065 1,500.00).
async fn option(
    svc: &Svc,
    patient: &str,
    title: &str,
    group: &str,
    code: &str,
) -> (String, String) {
    let plan = svc
        .plans
        .clone()
        .create_plan(svc.owner(pb::CreatePlanRequest {
            plan: Some(pb::Plan {
                patient_id: patient.into(),
                title: title.into(),
                alternative_group_id: group.into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    for c in ["D6010", code] {
        svc.add_item(CLINIC, &plan.plan_id, item(c, Some(("19", "")), 1, vec![]))
            .await
            .unwrap();
    }
    let sent = svc.send(CLINIC, &plan.plan_id).await;
    (plan.plan_id, token_of(&sent.portal_url))
}

async fn billing(svc: &Svc, patient: &str) -> pb::BillingSummaryLine {
    let summary = svc
        .plans
        .clone()
        .get_patient_billing_summary(svc.req(
            pb::GetPatientBillingSummaryRequest {
                patient_id: patient.into(),
            },
            CLINIC,
            Role::FrontDesk,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.lines.len(), 1, "{summary:?}");
    summary.lines[0].clone()
}

fn amounts(line: &pb::BillingSummaryLine) -> (i64, i64, i64, i32) {
    let m = |m: &Option<followup_proto::followup::common::v1::Money>| {
        m.as_ref().map_or(0, |m| m.amount_minor)
    };
    (
        m(&line.planned),
        m(&line.approved),
        m(&line.remaining),
        line.plan_count,
    )
}

async fn portal_approve(svc: &Svc, plan_id: &str, token: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = http(
        "POST",
        &svc.url(&format!("/v1/portal/plans/{plan_id}/approve")),
        &[("authorization", &format!("Bearer {token}"))],
        // Each option is sent once: its link is for version 1.
        r#"{"consent":true,"plan_version":1}"#,
    )
    .await;
    (status, serde_json::from_str(&body).unwrap())
}

fn precondition_kind(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .precondition_failure()
        .and_then(|p| p.violations.first().map(|v| v.r#type.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn approving_one_option_supersedes_the_others_and_billing_counts_it_once() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let group = uuid::Uuid::now_v7().to_string();
    let (bridge, bridge_token) = option(&svc, "pat-1", "Bridge", &group, "D7140").await;
    let (implant, implant_token) = option(&svc, "pat-1", "Implant", &group, "D6065").await;

    // Before a choice the group counts once, by its highest option (not 2,200 + 3,500).
    assert_eq!(amounts(&billing(&svc, "pat-1").await), (350_000, 0, 0, 1));

    let (status, answer) = portal_approve(&svc, &bridge, &bridge_token).await;
    assert_eq!(status, 200, "{answer}");

    // The other option is superseded, in the portal and for staff, naming the chosen one.
    let (status, answer) = portal_approve(&svc, &implant, &implant_token).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "superseded");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("Bridge"), "{message}");
    let refused = svc.approve(CLINIC, &implant).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(precondition_kind(&refused), "PLAN_SUPERSEDED");
    assert!(
        refused.message().contains(&bridge) && refused.message().contains("Bridge"),
        "{}",
        refused.message()
    );
    let shown = svc.get(CLINIC, &implant).await;
    assert_eq!(shown.status, pb::PlanStatus::Sent as i32);
    assert_eq!(shown.superseded_by_plan_id, bridge);
    assert!(shown.superseded_time.is_some());
    assert!(svc.get(CLINIC, &bridge).await.superseded_time.is_none());

    // The chosen option only: planned 2,200 (not 5,700), approved 2,200 (one option, not two).
    assert_eq!(
        amounts(&billing(&svc, "pat-1").await),
        (220_000, 220_000, 220_000, 1)
    );

    // An option offered after the choice is a new option, not a superseded one.
    let (later, later_token) = option(&svc, "pat-1", "Later", &group, "D7140").await;
    assert!(svc.get(CLINIC, &later).await.superseded_time.is_none());
    let (status, answer) = portal_approve(&svc, &later, &later_token).await;
    assert_eq!(status, 200, "{answer}");
    svc.stop().await;
}

#[tokio::test]
async fn two_options_approved_at_once_leave_one_approved() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let group = uuid::Uuid::now_v7().to_string();
    let (a, _) = option(&svc, "pat-1", "A", &group, "D7140").await;
    let (b, _) = option(&svc, "pat-1", "B", &group, "D6065").await;
    let (ra, rb) = tokio::join!(svc.approve(CLINIC, &a), svc.approve(CLINIC, &b));
    assert_eq!(
        ra.is_ok() as u8 + rb.is_ok() as u8,
        1,
        "exactly one option wins: {ra:?} {rb:?}"
    );
    svc.stop().await;
}

fn status_changed(
    plan: &str,
    from: CaseStatus,
    to: CaseStatus,
    cause: &str,
    cause_event_id: &str,
    at: chrono::DateTime<Utc>,
) -> ev::CaseStatusChanged {
    ev::CaseStatusChanged {
        event_id: new_event_id().to_string(),
        tenant_id: CLINIC.into(),
        occurred_at: Some(timestamp(at)),
        case_id: plan.into(),
        patient_id: "pat-1".into(),
        from_status: from as i32,
        to_status: to as i32,
        cause: cause.into(),
        cause_event_id: cause_event_id.into(),
        ..Default::default()
    }
}

/// Polls GetPlan until `done` holds.
async fn until(svc: &Svc, plan: &str, what: &str, done: impl Fn(&pb::Plan) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if done(&svc.get(CLINIC, plan).await) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_booking_cases_saw_supersedes_the_other_options_here() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let group = uuid::Uuid::now_v7().to_string();
    let (booked, _) = option(&svc, "pat-1", "Bridge", &group, "D7140").await;
    let (other, other_token) = option(&svc, "pat-1", "Implant", &group, "D6065").await;
    let subject = "followup.clinic-a.cases.case_status_changed";
    let booked_at = Utc::now();

    // Cases booked "Bridge" and superseded "Implant" (its event names the accepted case).
    svc.env
        .publish(
            subject,
            &status_changed(
                &other,
                CaseStatus::SentNotViewed,
                CaseStatus::Superseded,
                "group.accepted",
                &format!("group:{booked}"),
                booked_at,
            ),
        )
        .await;
    until(
        &svc,
        &other,
        "the supersession from cases was not recorded",
        |p| p.superseded_by_plan_id == booked,
    )
    .await;
    let (status, answer) = portal_approve(&svc, &other, &other_token).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "superseded");
    // The booked option counts (sent here, booked there), the superseded one does not.
    assert_eq!(amounts(&billing(&svc, "pat-1").await), (220_000, 0, 0, 1));

    // Staff reopen it in cases (later): in play again; an older, redelivered supersession changes
    // nothing after that.
    svc.env
        .publish(
            subject,
            &status_changed(
                &other,
                CaseStatus::Superseded,
                CaseStatus::SentViewed,
                "",
                "",
                booked_at + chrono::Duration::minutes(5),
            ),
        )
        .await;
    until(
        &svc,
        &other,
        "the reopening from cases was not recorded",
        |p| p.superseded_time.is_none(),
    )
    .await;
    let stale = status_changed(
        &other,
        CaseStatus::SentNotViewed,
        CaseStatus::Superseded,
        "group.accepted",
        &format!("group:{booked}"),
        booked_at - chrono::Duration::minutes(1),
    );
    svc.env.publish(subject, &stale).await;
    let pool = svc.env.db.pool().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let consumed: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = $1")
            .bind(&stale.event_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if consumed == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale event was not consumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(svc.get(CLINIC, &other).await.superseded_time.is_none());
    let (status, answer) = portal_approve(&svc, &other, &other_token).await;
    assert_eq!(status, 200, "{answer}");
    svc.stop().await;
}
