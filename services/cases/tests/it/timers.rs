//! Time-driven behaviour, with a clock the test moves: the response window, the owner digest, and the
//! leakage report over a fixture computed by hand.

use chrono::{Duration, TimeZone, Utc};
use followup_platform::auth::Role;
use followup_platform::testkit::authed;
use followup_proto::followup::cases::v1 as pb;
use followup_proto::followup::common::v1::CaseStatus;
use followup_proto::followup::events::v1 as ev;
use prost::Message;

use crate::support::*;

async fn set_settings(h: &Harness, settings: pb::CaseSettings, paths: &[&str]) {
    h.client
        .clone()
        .update_case_settings(authed(
            pb::UpdateCaseSettingsRequest {
                settings: Some(settings),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
            &h.token(Role::Owner),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_viewed_case_waits_for_a_response_after_the_clinics_window() {
    let h = Harness::start().await;
    let mut published = h.subscribe_cases(CLINIC).await;
    set_settings(
        &h,
        pb::CaseSettings {
            response_window: Some(prost_types::Duration {
                seconds: 2 * 3600,
                nanos: 0,
            }),
            ..Default::default()
        },
        &["response_window"],
    )
    .await;
    let plan = plan_id();
    h.publish(&plan_sent(Sent {
        plan: &plan,
        ..Sent::default()
    }))
    .await;
    h.publish(&plan_viewed(CLINIC, &plan, "p-1", 10)).await;
    h.wait_status(&plan, CaseStatus::SentViewed).await;

    // When the window has ended, the timer moves the case.
    h.clock.set(at(10 + 121));
    let waiting = h.wait_status(&plan, CaseStatus::WaitingForResponse).await;
    let change = waiting
        .timeline
        .iter()
        .find_map(|e| match &e.detail {
            Some(pb::timeline_entry::Detail::StatusChange(c))
                if c.to_status == CaseStatus::WaitingForResponse as i32 =>
            {
                Some((e.time, c.by_staff))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(
        change,
        (ts(at(130)), false),
        "changed when the window ended, automatically"
    );

    let mut cause = None;
    while cause.is_none() {
        let message = next_message(&mut published).await;
        if message.subject.as_str().ends_with("case_status_changed") {
            let e = ev::CaseStatusChanged::decode(message.payload.as_ref()).unwrap();
            if e.to_status == CaseStatus::WaitingForResponse as i32 {
                cause = Some(e.cause);
            }
        }
    }
    assert_eq!(cause.as_deref(), Some("timer.response_window"));

    // A reply ends the wait, and no window runs again.
    h.publish(&replied(CLINIC, &plan, "p-1", 200)).await;
    h.wait_status(&plan, CaseStatus::SentViewed).await;
    h.clock.set(at(60 * 24 * 10));
    h.publish(&plan_viewed(CLINIC, &plan, "p-1", 300)).await;
    h.wait_case(&plan, "second view applied", |c| {
        c.case
            .as_ref()
            .is_some_and(|c| c.last_view_time == ts(at(300)))
    })
    .await;
    assert_eq!(
        h.get(&plan).await.unwrap().case.unwrap().status,
        CaseStatus::SentViewed as i32
    );
}

#[tokio::test]
async fn owners_get_their_digest_once_a_day_at_the_clinics_hour() {
    let h = Harness::start().await;
    // 05:00 in Dublin (UTC+0 in November) the next day: before the digest hour.
    let morning = Utc.with_ymd_and_hms(2026, 11, 3, 5, 0, 0).single().unwrap();
    h.clock.set(morning);
    set_settings(
        &h,
        pb::CaseSettings {
            digest_hour: 7,
            time_zone: "Europe/Dublin".into(),
            ..Default::default()
        },
        &["digest_hour", "time_zone"],
    )
    .await;
    let client = h.env.nats.client().await;
    let mut digests = client
        .subscribe(format!("followup.{CLINIC}.cases.owner_digest"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    h.publish(&patient(CLINIC, "p-1", "Maria", "Lima")).await;
    let (viewed, unviewed, booked_case) = (plan_id(), plan_id(), plan_id());
    for (plan, value, patient, owner) in [
        (&viewed, 100_000, "p-1", "fd-1"),
        (&unviewed, 300_000, "p-2", "fd-1"),
        (&booked_case, 900_000, "p-3", "fd-2"),
    ] {
        h.publish(&plan_sent(Sent {
            plan,
            patient,
            owner,
            value: eur(value),
            ..Sent::default()
        }))
        .await;
    }
    h.publish(&plan_viewed(CLINIC, &viewed, "p-1", 10)).await;
    h.publish(&booked(CLINIC, &booked_case, "p-3", "a", 20))
        .await;
    h.wait_status(&viewed, CaseStatus::SentViewed).await;
    h.wait_status(&booked_case, CaseStatus::PatientBooked).await;
    h.wait_case(&viewed, "name", |c| {
        c.case.as_ref().is_some_and(|c| !c.patient_name.is_empty())
    })
    .await;

    h.clock.set(morning + Duration::hours(2));
    let message = next_message(&mut digests).await;
    let digest = ev::OwnerDigest::decode(message.payload.as_ref()).unwrap();
    assert_eq!(digest.owner_staff_id, "fd-1", "fd-2 has no open case");
    assert_eq!(digest.digest_date, "2026-11-03");
    assert_eq!(digest.time_zone, "Europe/Dublin");
    assert_eq!(digest.open_case_count, 2);
    assert_eq!(digest.open_value, vec![eur(400_000).unwrap()]);
    assert_eq!(digest.waiting_for_response_count, 0);
    let entries: Vec<(i32, &str, &str)> = digest
        .entries
        .iter()
        .map(|e| (e.rank, e.case_id.as_str(), e.patient_name.as_str()))
        .collect();
    assert_eq!(
        entries,
        vec![
            (1, viewed.as_str(), "Maria Lima"),
            (2, unviewed.as_str(), "")
        ]
    );
    assert_eq!(digest.entries[0].reason, "viewed once, no reply for 21 h");

    // Not twice the same day; again the next morning.
    h.clock.set(morning + Duration::hours(10));
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(1500),
            digests.next_message()
        )
        .await
        .is_err(),
        "one digest a day"
    );
    h.clock.set(morning + Duration::hours(26));
    let next = ev::OwnerDigest::decode(next_message(&mut digests).await.payload.as_ref()).unwrap();
    assert_eq!(next.digest_date, "2026-11-04");
}

trait NextMessage {
    async fn next_message(&mut self) -> Option<async_nats::Message>;
}

impl NextMessage for async_nats::Subscriber {
    async fn next_message(&mut self) -> Option<async_nats::Message> {
        futures::StreamExt::next(self).await
    }
}

#[tokio::test]
async fn the_leakage_report_matches_a_fixture_computed_by_hand() {
    let h = Harness::start().await;
    h.publish(&staff(CLINIC, "fd-1", "Fiona Desk")).await;
    let day = 60 * 24;
    let (a, b, c, d, e, f, g1, g2) = (
        plan_id(),
        plan_id(),
        plan_id(),
        plan_id(),
        plan_id(),
        plan_id(),
        plan_id(),
        plan_id(),
    );
    let send = |plan: &str, patient: &str, value, minute, owner, group| {
        plan_sent(Sent {
            plan,
            patient,
            value,
            minute,
            owner,
            group,
            send_count: 1,
            tenant: CLINIC,
        })
    };
    // A: EUR 1000.00, viewed, open.
    h.publish(&send(&a, "p-a", eur(100_000), 0, "", "")).await;
    h.publish(&plan_viewed(CLINIC, &a, "p-a", 5)).await;
    // B (owner fd-1): EUR 2000.00; a reminder on day 2, booked on day 3 → recovered after 1 day.
    h.publish(&send(&b, "p-b", eur(200_000), 10, "fd-1", ""))
        .await;
    h.publish(&reminder_sent(CLINIC, &b, "p-b", 2 * day)).await;
    h.publish(&booked(CLINIC, &b, "p-b", "appt-b", 3 * day))
        .await;
    // C: EUR 3000.00 booked on day 1 without a follow-up.
    h.publish(&send(&c, "p-c", eur(300_000), 20, "", "")).await;
    h.publish(&booked(CLINIC, &c, "p-c", "appt-c", day)).await;
    // D: EUR 500.00, cancelled (rejected).
    h.publish(&send(&d, "p-d", eur(50_000), 30, "", "")).await;
    h.publish(&ev::PlanCancelled {
        event_id: plan_id(),
        tenant_id: CLINIC.into(),
        occurred_at: ts(at(35)),
        plan_id: d.clone(),
        plan_version: 1,
        patient_id: "p-d".into(),
        reason: "too expensive".into(),
        cancelled_by_staff_id: "dr-ana".into(),
        remaining_value: eur(50_000),
        previous_status: "SENT".into(),
    })
    .await;
    // E: USD 700.00, approved by the patient, not booked.
    h.publish(&send(&e, "p-e", money(70_000, "USD"), 40, "", ""))
        .await;
    h.publish(&approved(CLINIC, &e, "p-e", 100, "")).await;
    // F: sent before the period.
    h.publish(&send(&f, "p-f", eur(99_900), -2 * day, "", ""))
        .await;
    // G: two options; G2 booked on day 4 supersedes G1 (which is worth more).
    h.publish(&send(&g1, "p-g", eur(400_000), 50, "", "g"))
        .await;
    h.publish(&send(&g2, "p-g", eur(150_000), 50, "", "g"))
        .await;
    h.publish(&booked(CLINIC, &g2, "p-g", "appt-g", 4 * day))
        .await;
    for (plan, status) in [
        (&a, CaseStatus::SentViewed),
        (&b, CaseStatus::PatientBooked),
        (&c, CaseStatus::PatientBooked),
        (&d, CaseStatus::PatientRejected),
        (&f, CaseStatus::SentNotViewed),
        (&g1, CaseStatus::Superseded),
        (&g2, CaseStatus::PatientBooked),
    ] {
        h.wait_status(plan, status).await;
    }
    h.wait_case(&e, "approval", |c| {
        c.case
            .as_ref()
            .is_some_and(|c| c.patient_approve_time.is_some())
    })
    .await;

    let token = h.token(Role::Owner);
    let report = |owner: &str| {
        let mut client = h.client.clone();
        let request = pb::GetLeakageReportRequest {
            start_time: ts(at(-60)),
            end_time: ts(at(day)),
            owner_staff_id: owner.into(),
        };
        let token = token.clone();
        async move {
            client
                .get_leakage_report(authed(request, &token))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let all = report("").await;
    assert_eq!(all.time_zone, "UTC");
    assert_eq!(all.lines.len(), 2, "EUR and USD, never summed");
    let eur_line = &all.lines[0];
    let figures = eur_line.figures.as_ref().unwrap();
    assert_eq!(figures.currency, "EUR");
    // Presented: A B C D G2 (G counts once, as its booked option) = 5, 1000+2000+3000+500+1500.
    assert_eq!(figures.presented_count, 5);
    assert_eq!(figures.presented_value, eur(800_000));
    // Accepted: B C G2 = 3, 2000+3000+1500; rate 3/5.
    assert_eq!(figures.accepted_count, 3);
    assert_eq!(figures.accepted_value, eur(650_000));
    assert!((figures.acceptance_rate - 0.6).abs() < 1e-12);
    // Unscheduled: A.
    assert_eq!(figures.unscheduled_count, 1);
    assert_eq!(figures.unscheduled_value, eur(100_000));
    // Recovered: B, one day after its reminder.
    assert_eq!(figures.recovered_count, 1);
    assert_eq!(figures.recovered_value, eur(200_000));
    assert_eq!(figures.median_recovery_time.unwrap().seconds, 86_400);
    // Days to book: B 3d-10min, C 1d-20min, G2 4d-50min → median B's.
    let expected_days = f64::from(3 * 1440 - 10) / 1440.0;
    assert!((figures.median_days_to_book - expected_days).abs() < 1e-9);
    // By status: every case, the superseded option too.
    let by_status: Vec<(i32, i32, i64)> = eur_line
        .by_status
        .iter()
        .map(|s| (s.status, s.count, s.value.as_ref().unwrap().amount_minor))
        .collect();
    assert_eq!(
        by_status,
        vec![
            (CaseStatus::SentViewed as i32, 1, 100_000),
            (CaseStatus::PatientBooked as i32, 3, 650_000),
            (CaseStatus::PatientRejected as i32, 1, 50_000),
            (CaseStatus::Superseded as i32, 1, 400_000),
        ]
    );
    let owners: Vec<(&str, &str, i32)> = eur_line
        .by_owner
        .iter()
        .map(|o| {
            (
                o.owner_staff_id.as_str(),
                o.owner_name.as_str(),
                o.figures.as_ref().unwrap().presented_count,
            )
        })
        .collect();
    assert_eq!(owners, vec![("fd-1", "Fiona Desk", 1), ("", "", 4)]);

    let usd = all.lines[1].figures.as_ref().unwrap();
    assert_eq!(usd.currency, "USD");
    assert_eq!((usd.presented_count, usd.accepted_count), (1, 1));
    assert_eq!(usd.acceptance_rate, 1.0);
    assert_eq!(usd.unscheduled_value, money(70_000, "USD"));

    // One owner's report.
    let fiona = report("fd-1").await;
    assert_eq!(fiona.lines.len(), 1);
    let figures = fiona.lines[0].figures.as_ref().unwrap();
    assert_eq!(figures.presented_value, eur(200_000));
    assert_eq!(figures.recovered_count, 1);

    // Booking A takes its value off the table.
    h.publish(&booked(CLINIC, &a, "p-a", "appt-a", 2 * day))
        .await;
    h.wait_status(&a, CaseStatus::PatientBooked).await;
    let after = report("").await;
    let figures = after.lines[0].figures.as_ref().unwrap();
    assert_eq!(figures.unscheduled_value, eur(0));
    assert_eq!(figures.accepted_count, 4);
}
