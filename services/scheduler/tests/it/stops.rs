//! Every stop condition, end to end: each cancels every pending step of the enrollment and publishes
//! enrollment_stopped with its reason; a stop a rule did not choose changes nothing.

use std::collections::BTreeMap;

use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1 as pb;

use crate::support::*;

fn header() -> (String, String) {
    (id(), TENANT.to_string())
}

#[tokio::test]
async fn every_stop_condition_stops_its_enrollments_atomically() {
    let s = Scheduler::start().await;
    let follow_up = s.enable("treatment_plan_follow_up").await;
    // A second plan rule that stops only when the plan is approved (not in the default set).
    let mut approval = s
        .client
        .clone()
        .list_rule_templates(s.owner(pb::ListRuleTemplatesRequest {}))
        .await
        .expect("templates")
        .into_inner()
        .templates
        .into_iter()
        .find(|t| t.template_id == "treatment_plan_follow_up")
        .and_then(|t| t.rule)
        .expect("template rule");
    approval.name = "Until approved".into();
    approval.stop_reasons = vec![common::StopReason::Approved as i32];
    let approval = s.play(approval).await;
    // Care cases: a no-show on a course of care enrolls the care case.
    let care = s
        .play(pb::Rule {
            name: "Care case no-show".into(),
            category: "care".into(),
            case_kind: common::CaseKind::CareCase as i32,
            mode: pb::EnrollmentMode::EveryTrigger as i32,
            trigger: Some(pb::Trigger {
                r#type: pb::TriggerType::NoShow as i32,
                ..Default::default()
            }),
            steps: vec![
                pb::Step {
                    action: Some(pb::step::Action::Wait(pb::WaitAction {
                        until: Some(pb::wait_action::Until::Duration(prost_types::Duration {
                            seconds: 86_400,
                            nanos: 0,
                        })),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                pb::Step {
                    action: Some(pb::step::Action::Send(pb::SendAction {
                        channel: common::Channel::Sms as i32,
                        template_key: "care_no_show".into(),
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await;

    let cases = [
        "booked",
        "rejected",
        "replied",
        "opted_out",
        "other_category",
        "completed",
        "cancelled",
        "approved",
    ];
    for case in cases {
        s.publish(&s.plan_sent(&format!("plan-{case}"), &format!("patient-{case}")))
            .await;
    }
    s.publish(&ev::AppointmentNoShow {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        appointment: Some(ev::Appointment {
            care_case_id: "cc-1".into(),
            ..s.appointment("appt-cc", "patient-cc", "")
        }),
    })
    .await;
    eventually("every enrollment", || async {
        s.enrollments_of_rule(&follow_up.rule_id).await.len() == cases.len()
            && s.enrollments_of_rule(&approval.rule_id).await.len() == cases.len()
            && s.enrollments_of_rule(&care.rule_id).await.len() == 1
    })
    .await;
    s.advance(chrono::Duration::hours(1));

    let (event_id, tenant_id) = header();
    s.publish(&s.booked(s.appointment("appt-1", "patient-booked", "")))
        .await;
    s.publish(&ev::CaseStatusChanged {
        event_id,
        tenant_id,
        occurred_at: ts(s.now()),
        case_id: "plan-rejected".into(),
        patient_id: "patient-rejected".into(),
        from_status: common::CaseStatus::SentViewed as i32,
        to_status: common::CaseStatus::PatientRejected as i32,
        source: ev::ChangeSource::Staff as i32,
        ..Default::default()
    })
    .await;
    s.publish(&ev::PatientReplied {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        patient_id: "patient-replied".into(),
        channel: common::Channel::Sms as i32,
        text: "Can I call you?".into(),
        kind: ev::ReplyKind::Text as i32,
        ..Default::default()
    })
    .await;
    for (patient, category) in [
        ("patient-opted_out", "treatment_follow_up"),
        ("patient-other_category", "recall"),
    ] {
        s.publish(&ev::ContactOptedOut {
            event_id: id(),
            tenant_id: TENANT.into(),
            occurred_at: ts(s.now()),
            patient_id: patient.into(),
            channel: common::Channel::Unspecified as i32,
            category: category.into(),
            source: common::ConsentSource::PatientLink as i32,
            ..Default::default()
        })
        .await;
    }
    s.publish(&ev::PlanCompleted {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        plan_id: "plan-completed".into(),
        plan_version: 1,
        patient_id: "patient-completed".into(),
        value: money(450_000),
    })
    .await;
    s.publish(&ev::PlanCancelled {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        plan_id: "plan-cancelled".into(),
        plan_version: 1,
        patient_id: "patient-cancelled".into(),
        reason: "changed mind".into(),
        ..Default::default()
    })
    .await;
    s.publish(&ev::PlanApproved {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        plan_id: "plan-approved".into(),
        plan_version: 1,
        patient_id: "patient-approved".into(),
        approved_by: ev::PlanApprover::Patient as i32,
        ..Default::default()
    })
    .await;
    s.publish(&ev::CareCaseUpserted {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        care_case_id: "cc-1".into(),
        patient_id: "patient-cc".into(),
        name: "Knee rehab".into(),
        status: common::CareCaseStatus::Closed as i32,
        ..Default::default()
    })
    .await;

    // The default set stops the template's enrollments; the approval rule stops on approval only.
    let expected: BTreeMap<(&str, &str), common::StopReason> = BTreeMap::from([
        (("follow_up", "booked"), common::StopReason::Booked),
        (("follow_up", "rejected"), common::StopReason::Rejected),
        (("follow_up", "replied"), common::StopReason::PatientReplied),
        (("follow_up", "opted_out"), common::StopReason::OptedOut),
        (
            ("follow_up", "completed"),
            common::StopReason::PlanCompleted,
        ),
        (
            ("follow_up", "cancelled"),
            common::StopReason::PlanCancelled,
        ),
        (("approval", "approved"), common::StopReason::Approved),
        (("care", "cc"), common::StopReason::CaseClosed),
    ]);
    eventually("every stop applied", || async {
        s.outbox::<ev::EnrollmentStopped>().await.len() == expected.len()
    })
    .await;
    // Nothing more stops afterwards (other category, approval on the default rule, ...).
    s.advance(chrono::Duration::minutes(1));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopped = s.outbox::<ev::EnrollmentStopped>().await;
    assert_eq!(stopped.len(), expected.len());

    for ((rule, case), reason) in &expected {
        let rule_id = match *rule {
            "follow_up" => &follow_up.rule_id,
            "approval" => &approval.rule_id,
            _ => &care.rule_id,
        };
        let patient = format!("patient-{case}");
        let event = stopped
            .iter()
            .find(|e| &e.rule_id == rule_id && e.patient_id == patient)
            .unwrap_or_else(|| panic!("{rule}/{case} stopped"));
        assert_eq!(event.reason, *reason as i32, "{rule}/{case}");
        assert_eq!(event.steps_fired, 0);
        assert!(
            event.steps_cancelled >= 1,
            "{rule}/{case}: its pending steps were cancelled"
        );
        let enrollment = s.timeline(&event.enrollment_id).await;
        assert_eq!(
            enrollment.enrollment.map(|e| e.state),
            Some(pb::EnrollmentState::Stopped as i32)
        );
        assert!(
            enrollment
                .steps
                .iter()
                .all(|step| step.state == pb::StepRunState::Cancelled as i32),
            "{rule}/{case}: every step cancelled"
        );
        assert!(
            enrollment
                .history
                .last()
                .is_some_and(|h| h.summary.starts_with("stopped:"))
        );
    }
    // Stopped enrollments hold no waiting step.
    assert_eq!(
        s.count(
            "SELECT count(*) FROM step_runs s JOIN enrollments e USING (tenant_id, enrollment_id)
             WHERE e.state = 'stopped' AND s.state IN ('pending', 'held')"
        )
        .await,
        0
    );
    // The other category's opt-out and the approval left the default rule's enrollments running.
    for case in ["other_category", "approved"] {
        let running = s
            .enrollments(pb::ListEnrollmentsRequest {
                patient_id: format!("patient-{case}"),
                rule_id: follow_up.rule_id.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            running[0].state,
            pb::EnrollmentState::Active as i32,
            "{case}"
        );
    }
}

/// The plans outbox lagged: a booking 3 s after the send (in event time) reached the scheduler before the
/// plan's `plan_sent`. The case is enrolled and stopped as booked, as when the events come in order, so
/// the enrollment outcome does not depend on delivery order.
#[tokio::test]
async fn a_booking_delivered_before_its_plan_sent_enrolls_and_stops_as_booked() {
    let s = Scheduler::start().await;
    let rule = s.enable("treatment_plan_follow_up").await;
    for (plan, patient, booking_first) in [
        (
            "0193a0c0-0000-7000-8000-0000000000a1",
            "patient-early",
            true,
        ),
        (
            "0193a0c0-0000-7000-8000-0000000000a2",
            "patient-in-order",
            false,
        ),
    ] {
        let sent = s.plan_sent(plan, patient);
        let mut booked = s.booked(s.appointment(&format!("appt-{patient}"), patient, plan));
        booked.occurred_at = ts(s.now() + chrono::Duration::seconds(3));
        if booking_first {
            s.publish(&booked).await;
            eventually("the early booking is a fact", || async {
                s.count(&format!(
                    "SELECT count(*) FROM appointments WHERE patient_id = '{patient}'"
                ))
                .await
                    == 1
            })
            .await;
            s.publish(&sent).await;
        } else {
            s.publish(&sent).await;
            eventually("the plan is enrolled", || async {
                s.count(&format!(
                    "SELECT count(*) FROM enrollments WHERE case_id = '{plan}'"
                ))
                .await
                    == 1
            })
            .await;
            s.publish(&booked).await;
        }
    }
    eventually("both enrollments stopped as booked", || async {
        let enrollments = s.enrollments_of_rule(&rule.rule_id).await;
        enrollments.len() == 2
            && enrollments.iter().all(|e| {
                e.state == pb::EnrollmentState::Stopped as i32
                    && e.stop_reason == common::StopReason::Booked as i32
            })
    })
    .await;
    // Nothing was requested for either, and no step is left waiting.
    assert!(s.requested().await.is_empty());
    assert_eq!(
        s.count("SELECT count(*) FROM step_runs WHERE state IN ('pending', 'held')")
            .await,
        0
    );
}
