//! Every trigger, end to end: an event published as its producer would, the clock moved, the
//! notification request in the outbox.

use chrono::Duration;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1 as pb;

use crate::support::*;

#[tokio::test]
async fn plan_sent_follow_up_runs_on_days_7_14_28_42_at_ten_london_time_and_stops_when_booked() {
    let s = Scheduler::start().await;
    s.set_zone("Europe/London").await;
    let rule = s.enable("treatment_plan_follow_up").await;
    assert_eq!(rule.state, pb::RuleState::Playing as i32);

    s.publish(&s.plan_sent("plan-1", "patient-1")).await;
    eventually("the plan's enrollment", || async {
        s.enrollments_of_rule(&rule.rule_id).await.len() == 1
    })
    .await;
    let enrollment = s.enrollments_of_rule(&rule.rule_id).await.remove(0);
    assert_eq!(enrollment.case_ref, plan_ref("plan-1"));
    assert_eq!(enrollment.trigger, "plans.plan_sent");
    assert_eq!(enrollment.time_zone, "Europe/London");
    let timeline = s.timeline(&enrollment.enrollment_id).await;
    let local: Vec<&str> = timeline
        .steps
        .iter()
        .filter(|step| !step.local_due_time.is_empty())
        .map(|step| step.local_due_time.as_str())
        .collect();
    // Sent Monday 2 March 09:00 GMT; British Summer Time starts on the 29th.
    assert_eq!(
        local,
        [
            "2026-03-09T10:00 GMT",
            "2026-03-16T10:00 GMT",
            "2026-03-30T10:00 BST",
            "2026-04-13T10:00 BST"
        ]
    );
    let started = s.outbox::<ev::EnrollmentStarted>().await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].planned_steps.len(), 4);

    // Nothing early: a minute before day 7 at 10:00, nothing.
    s.advance(Duration::days(7) + Duration::minutes(59));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(s.requested().await.is_empty(), "nothing fires early");
    s.advance(Duration::minutes(1));
    eventually("the first reminder", || async {
        s.requested().await.len() == 1
    })
    .await;
    let first = s.requested().await.remove(0);
    assert_eq!(
        first.idempotency_key,
        format!("{}:1", enrollment.enrollment_id)
    );
    assert_eq!(first.template_key, "plan_follow_up_1");
    assert_eq!(first.channel, common::Channel::Sms as i32);
    assert_eq!(first.category, "treatment_follow_up");
    assert_eq!(first.owner_staff_id, "dr-ana");
    assert_eq!(first.plan_id, "plan-1");
    assert_eq!(
        first.variables.get("portal_url").map(String::as_str),
        Some("https://portal.example/p/plan-1")
    );
    assert_eq!(
        first.recipient.and_then(|r| r.target),
        Some(ev::recipient::Target::PatientId("patient-1".into()))
    );

    // The patient books: the sequence stops with the reason, its three other steps cancelled.
    let booked = s.booked(s.appointment("appt-1", "patient-1", "plan-1"));
    s.publish(&booked).await;
    eventually("the enrollment stopped", || async {
        !s.outbox::<ev::EnrollmentStopped>().await.is_empty()
    })
    .await;
    let stopped = s.outbox::<ev::EnrollmentStopped>().await.remove(0);
    assert_eq!(stopped.reason, common::StopReason::Booked as i32);
    assert_eq!(stopped.cause_event_id, booked.event_id);
    assert_eq!((stopped.steps_fired, stopped.steps_cancelled), (1, 3));
    let enrollment = s.enrollments_of_rule(&rule.rule_id).await.remove(0);
    assert_eq!(enrollment.state, pb::EnrollmentState::Stopped as i32);
    assert_eq!(enrollment.stop_reason, common::StopReason::Booked as i32);
    s.advance(Duration::days(60));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        s.requested().await.len(),
        1,
        "a stopped sequence sends nothing more"
    );
}

#[tokio::test]
async fn a_new_enquiry_is_answered_at_once_and_published() {
    let s = Scheduler::start().await;
    s.enable("hot_enquiry").await;
    let js = s.env.nats.jetstream().await;
    let enquiry = ev::EnquiryCreated {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        enquiry_id: "enq-1".into(),
        contact: Some(ev::DirectContact {
            given_name: "Maria".into(),
            phone_e164: "+447700900123".into(),
            ..Default::default()
        }),
        channel: common::Channel::Sms as i32,
        source: "website form".into(),
        interest: "implants".into(),
        ..Default::default()
    };
    s.publish(&enquiry).await;
    // No clock move: the first step is due at once and fires in the enrolling transaction.
    eventually("the reply requested", || async {
        s.requested().await.len() == 1
    })
    .await;
    let reply = s.requested().await.remove(0);
    assert_eq!(reply.template_key, "new_enquiry");
    assert!(reply.transactional);
    match reply.recipient.and_then(|r| r.target) {
        Some(ev::recipient::Target::Contact(contact)) => {
            assert_eq!(contact.phone_e164, "+447700900123")
        }
        other => panic!("expected the enquirer's contact, got {other:?}"),
    }
    assert_eq!(
        reply.variables.get("enquiry_interest").map(String::as_str),
        Some("implants")
    );

    // And it leaves through the outbox to NATS.
    let stream = js.get_stream("FOLLOWUP").await.expect("stream");
    eventually("notification_requested on NATS", || async {
        stream
            .get_last_raw_message_by_subject(&format!(
                "followup.{TENANT}.scheduler.notification_requested"
            ))
            .await
            .is_ok()
    })
    .await;

    // An hour later, with no answer, a task for the owner.
    s.advance(Duration::hours(1));
    eventually("the call-back task", || async {
        s.requested().await.len() == 2
    })
    .await;
    let task = s.requested().await.remove(1);
    assert_eq!(task.channel, common::Channel::Task as i32);
    assert_eq!(
        task.task.map(|t| t.title),
        Some("Call back a new enquiry".into())
    );
}

#[tokio::test]
async fn a_no_show_gets_an_sms_at_once_and_a_task_next_morning() {
    let s = Scheduler::start().await;
    s.set_zone("Europe/London").await;
    let rule = s.enable("no_show_recovery").await;
    let no_show = ev::AppointmentNoShow {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        appointment: Some(s.appointment("appt-9", "patient-9", "")),
    };
    s.publish(&no_show).await;
    eventually("the rebook SMS", || async {
        s.requested().await.len() == 1
    })
    .await;
    let sms = s.requested().await.remove(0);
    assert_eq!(sms.template_key, "no_show");
    assert!(sms.variables.contains_key("appointment_time"));
    let enrollment = s.enrollments_of_rule(&rule.rule_id).await.remove(0);
    let timeline = s.timeline(&enrollment.enrollment_id).await;
    assert_eq!(timeline.steps[2].local_due_time, "2026-03-03T09:00 GMT");
    s.advance(Duration::days(1));
    eventually("the task", || async { s.requested().await.len() == 2 }).await;
    assert_eq!(s.requested().await[1].channel, common::Channel::Task as i32);
}

#[tokio::test]
async fn a_cancellation_starts_after_its_grace_unless_rebooked_within_it() {
    let s = Scheduler::start().await;
    let rule = s.enable("cancellation_rebook").await;
    let cancel = |appointment: &str, patient: &str| ev::AppointmentCancelled {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        appointment: Some(s.appointment(appointment, patient, "")),
        cancelled_by: ev::CancelledBy::Patient as i32,
        slot_refillable: true,
        ..Default::default()
    };
    // One patient cancels and does not rebook; another reschedules within two minutes.
    s.publish(&cancel("appt-a", "patient-a")).await;
    s.publish(&cancel("appt-b", "patient-b")).await;
    s.advance(Duration::minutes(2));
    let mut rebooked = s.booked(s.appointment("appt-b2", "patient-b", ""));
    rebooked.rescheduled_from_appointment_id = "appt-b".into();
    s.publish(&rebooked).await;
    eventually("both recorded", || async {
        s.count("SELECT count(*) FROM appointments").await == 3
    })
    .await;
    // Within the grace nothing starts.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(s.requested().await.is_empty());
    s.advance(Duration::minutes(2));
    eventually("the rebook SMS to patient a", || async {
        s.requested().await.len() == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let requested = s.requested().await;
    assert_eq!(requested.len(), 1, "the reschedule started nothing");
    assert_eq!(
        requested[0].recipient.clone().and_then(|r| r.target),
        Some(ev::recipient::Target::PatientId("patient-a".into()))
    );
    let enrollments = s.enrollments_of_rule(&rule.rule_id).await;
    assert_eq!(enrollments.len(), 1);
    assert_eq!(enrollments[0].trigger, "appointment.cancelled");
}

fn rule(name: &str, kind: common::CaseKind, trigger: pb::Trigger) -> pb::Rule {
    pb::Rule {
        name: name.into(),
        category: "test".into(),
        case_kind: kind as i32,
        trigger: Some(trigger),
        steps: vec![pb::Step {
            action: Some(pb::step::Action::Send(pb::SendAction {
                channel: common::Channel::Sms as i32,
                template_key: format!("{name}_sms"),
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn window(trigger: pb::TriggerType, hours: i64) -> pb::Trigger {
    pb::Trigger {
        r#type: trigger as i32,
        window: Some(prost_types::Duration {
            seconds: hours * 3600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

async fn keys(s: &Scheduler) -> Vec<String> {
    let mut keys: Vec<String> = s
        .requested()
        .await
        .into_iter()
        .map(|r| r.template_key)
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn time_based_triggers_fire_when_their_time_comes_and_only_if_still_true() {
    let s = Scheduler::start().await;
    s.set_zone("Europe/London").await;
    use common::CaseKind::{CareCase, CasePresentation};
    use pb::TriggerType as T;
    s.play(rule(
        "viewed",
        CasePresentation,
        window(T::PlanViewedNoResponse, 48),
    ))
    .await;
    s.play(rule(
        "quote",
        CasePresentation,
        window(T::QuoteUnanswered, 24 * 7),
    ))
    .await;
    s.play(rule(
        "consult",
        CasePresentation,
        window(T::ConsultationNoNextVisit, 48),
    ))
    .await;
    s.play(rule(
        "expiring",
        CareCase,
        window(T::CareCaseExpiring, 24 * 14),
    ))
    .await;
    s.play(rule(
        "lapsed",
        CasePresentation,
        pb::Trigger {
            r#type: T::LapsedPatient as i32,
            lapsed_months: 6,
            ..Default::default()
        },
    ))
    .await;
    s.play(pb::Rule {
        mode: pb::EnrollmentMode::OncePerCase as i32,
        ..rule(
            "sessions",
            CareCase,
            pb::Trigger {
                r#type: T::CareCaseSessionsReached as i32,
                session_threshold: 2,
                ..Default::default()
            },
        )
    })
    .await;

    // Plan 1 is viewed and left; plan 2 is viewed and the patient replies; plan 3 is approved.
    for (plan, patient) in [("plan-1", "p1"), ("plan-2", "p2"), ("plan-3", "p3")] {
        s.publish(&s.plan_sent(plan, patient)).await;
        s.publish(&ev::PlanViewed {
            event_id: id(),
            tenant_id: TENANT.into(),
            occurred_at: ts(s.now()),
            plan_id: plan.into(),
            plan_version: 1,
            patient_id: patient.into(),
            session_id: "s".into(),
        })
        .await;
    }
    s.publish(&ev::PlanApproved {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        plan_id: "plan-3".into(),
        plan_version: 1,
        patient_id: "p3".into(),
        ..Default::default()
    })
    .await;
    // A consultation with no next visit (patient c1), one followed by a booking (c2).
    for patient in ["c1", "c2"] {
        s.publish(&ev::ConsultationCompleted {
            event_id: id(),
            tenant_id: TENANT.into(),
            occurred_at: ts(s.now()),
            appointment_id: format!("consult-{patient}"),
            patient_id: patient.into(),
            next_visit_booked: false,
            ..Default::default()
        })
        .await;
    }
    // A referral expiring on 30 March; a course of care with two attended sessions.
    let care_case = |id: &str, expiry: &str| ev::CareCaseUpserted {
        event_id: followup_platform::event::new_event_id().to_string(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        care_case_id: id.into(),
        patient_id: format!("patient-{id}"),
        name: "Knee rehab".into(),
        status: common::CareCaseStatus::Open as i32,
        issue_date: "2026-02-01".into(),
        expiry_date: expiry.into(),
        max_sessions: 5,
        ..Default::default()
    };
    s.publish(&care_case("cc-1", "2026-03-30")).await;
    s.publish(&care_case("cc-2", "")).await;
    for n in 0..2 {
        s.publish(&ev::AppointmentAttended {
            event_id: id(),
            tenant_id: TENANT.into(),
            occurred_at: ts(s.now()),
            appointment: Some(ev::Appointment {
                care_case_id: "cc-2".into(),
                ..s.appointment(&format!("session-{n}"), "patient-cc-2", "")
            }),
        })
        .await;
    }
    // Patient l1 attended today (lapses in 6 months, like patient-cc-2 who attended the sessions).
    s.publish(&ev::AppointmentAttended {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        appointment: Some(s.appointment("visit-l1", "l1", "")),
    })
    .await;
    eventually("the sessions threshold", || async {
        keys(&s).await == ["sessions_sms"]
    })
    .await;
    eventually("every timer armed", || async {
        s.count("SELECT count(*) FROM trigger_timers").await == 11
    })
    .await;

    s.advance(Duration::hours(1));
    s.publish(&ev::PatientReplied {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        patient_id: "p2".into(),
        channel: common::Channel::Sms as i32,
        text: "Thinking about it".into(),
        ..Default::default()
    })
    .await;
    s.publish(&s.booked(s.appointment("next-c2", "c2", "")))
        .await;
    eventually("reply and booking applied", || async {
        s.count("SELECT count(*) FROM patients WHERE last_replied_at IS NOT NULL OR last_booked_at IS NOT NULL").await == 2
    })
    .await;

    // 48 hours after the views: only plan 1 (not replied, not approved) is nudged; c1, not c2.
    s.advance(Duration::hours(47));
    eventually("viewed and consultation", || async {
        keys(&s).await == ["consult_sms", "sessions_sms", "viewed_sms"]
    })
    .await;
    let viewed = s
        .requested()
        .await
        .into_iter()
        .find(|r| r.template_key == "viewed_sms")
        .expect("viewed");
    assert_eq!(viewed.plan_id, "plan-1");
    // Expiring: 14 days before 30 March = 16 March 00:00 GMT.
    s.advance(Duration::days(12));
    eventually("expiring", || async {
        keys(&s).await.contains(&"expiring_sms".to_string())
    })
    .await;
    // The quote of plans 1 and 2 went unanswered for 7 days (plan 3 was approved).
    let quotes = s
        .requested()
        .await
        .into_iter()
        .filter(|r| r.template_key == "quote_sms")
        .map(|r| r.plan_id)
        .collect::<Vec<_>>();
    assert_eq!(quotes.len(), 2, "{quotes:?}");
    assert!(!quotes.contains(&"plan-3".to_string()));
    // Six months after the last visit.
    s.advance(Duration::days(190));
    eventually("lapsed", || async {
        keys(&s).await.contains(&"lapsed_sms".to_string())
    })
    .await;
    let lapsed = s
        .requested()
        .await
        .into_iter()
        .filter(|r| r.template_key == "lapsed_sms")
        .count();
    assert_eq!(lapsed, 2);
}

#[tokio::test]
async fn a_guard_is_checked_when_its_step_falls_due_and_a_false_one_skips_only_that_step() {
    let s = Scheduler::start().await;
    let wait_day = || pb::Step {
        action: Some(pb::step::Action::Wait(pb::WaitAction {
            until: Some(pb::wait_action::Until::Duration(prost_types::Duration {
                seconds: 86_400,
                nanos: 0,
            })),
            ..Default::default()
        })),
        ..Default::default()
    };
    let not_viewed = pb::Condition {
        kind: Some(pb::condition::Kind::Comparison(pb::Comparison {
            field: pb::CaseField::Viewed as i32,
            operator: pb::Operator::Eq as i32,
            value: Some(pb::Value {
                kind: Some(pb::value::Kind::Flag(false)),
            }),
            upper: None,
        })),
    };
    let rule = s
        .play(pb::Rule {
            name: "Guarded".into(),
            category: "treatment_follow_up".into(),
            case_kind: common::CaseKind::CasePresentation as i32,
            trigger: Some(pb::Trigger {
                r#type: pb::TriggerType::PlanSent as i32,
                ..Default::default()
            }),
            owner_staff_id: "rule-owner".into(),
            steps: vec![
                wait_day(),
                pb::Step {
                    action: Some(pb::step::Action::Send(pb::SendAction {
                        channel: common::Channel::Sms as i32,
                        template_key: "plan_follow_up_1".into(),
                    })),
                    only_if: Some(not_viewed),
                    ..Default::default()
                },
                pb::Step {
                    action: Some(pb::step::Action::Task(pb::TaskAction {
                        title: "Call about the plan".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                wait_day(),
                pb::Step {
                    action: Some(pb::step::Action::Webhook(pb::WebhookAction {
                        webhook_endpoint_id: "crm".into(),
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await;
    let mut sent = s.plan_sent("plan-g", "patient-g");
    sent.owner_staff_id = String::new();
    s.publish(&sent).await;
    eventually("enrolled", || async {
        s.enrollments_of_rule(&rule.rule_id).await.len() == 1
    })
    .await;
    // The patient views the plan before the first step is due: its guard no longer holds.
    s.publish(&ev::PlanViewed {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        plan_id: "plan-g".into(),
        plan_version: 1,
        patient_id: "patient-g".into(),
        session_id: "s".into(),
    })
    .await;
    eventually("viewed", || async {
        s.count("SELECT count(*) FROM cases WHERE viewed").await == 1
    })
    .await;
    s.advance(Duration::days(2));
    eventually("the task and the webhook", || async {
        s.requested().await.len() == 2
    })
    .await;
    let requested = s.requested().await;
    assert_eq!(requested[0].channel, common::Channel::Task as i32);
    // No case owner: the task goes to the rule's owner.
    assert_eq!(requested[0].owner_staff_id, "rule-owner");
    assert_eq!(
        requested[0].recipient.clone().and_then(|r| r.target),
        Some(ev::recipient::Target::StaffId("rule-owner".into()))
    );
    assert_eq!(requested[1].channel, common::Channel::Webhook as i32);
    assert_eq!(requested[1].webhook_endpoint_id, "crm");
    let enrollment = s.enrollments_of_rule(&rule.rule_id).await.remove(0);
    assert_eq!(enrollment.state, pb::EnrollmentState::Finished as i32);
    let timeline = s.timeline(&enrollment.enrollment_id).await;
    assert_eq!(timeline.steps[1].state, pb::StepRunState::Skipped as i32);
    assert_eq!(timeline.steps[1].reason, "guard did not hold when due");
    assert_eq!(timeline.steps[2].state, pb::StepRunState::Fired as i32);
    assert!(
        timeline
            .history
            .iter()
            .any(|h| h.summary == "finished: every step ran")
    );
}

#[tokio::test]
async fn facts_are_idempotent_and_events_out_of_order_change_nothing_backwards() {
    let s = Scheduler::start().await;
    let no_show = s.enable("no_show_recovery").await;
    let t0 = s.now();
    let care_case = |at: chrono::DateTime<chrono::Utc>, max: i32| ev::CareCaseUpserted {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(at),
        care_case_id: "cc-9".into(),
        patient_id: "patient-9".into(),
        name: format!("Course of {max}"),
        status: common::CareCaseStatus::Open as i32,
        max_sessions: max,
        invoiceable_amount: Some(common::Money {
            amount_minor: 50_000,
            currency: "AUD".into(),
        }),
        ..Default::default()
    };
    // The newer record arrives first; the older one after it changes nothing.
    s.publish(&care_case(t0 + Duration::seconds(10), 8)).await;
    s.publish(&care_case(t0, 5)).await;
    // The same invoice twice (a clinic system retrying with a new event id).
    for _ in 0..2 {
        s.publish(&ev::InvoiceIssued {
            event_id: id(),
            tenant_id: TENANT.into(),
            occurred_at: ts(t0),
            invoice_id: "inv-9".into(),
            patient_id: "patient-9".into(),
            amount: Some(common::Money {
                amount_minor: 10_000,
                currency: "AUD".into(),
            }),
            care_case_id: "cc-9".into(),
            ..Default::default()
        })
        .await;
    }
    // A booking made after a no-show reaches us before the no-show: the no-show is enrolled and
    // stopped as booked at once, as when they come in order; nothing is sent.
    let mut booked = s.booked(s.appointment("appt-new", "patient-8", ""));
    booked.occurred_at = ts(t0 + Duration::minutes(5));
    s.publish(&booked).await;
    // "Reaches us before": applied before the no-show is published, since the consumer's workers may
    // otherwise take the two in either order (and a no-show seen first rightly starts its recovery).
    eventually("the booking is applied", || async {
        s.count("SELECT count(*) FROM appointments WHERE appointment_id = 'appt-new'")
            .await
            == 1
    })
    .await;
    let no_show_event = ev::AppointmentNoShow {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(t0),
        appointment: Some(s.appointment("appt-missed", "patient-8", "")),
    };
    s.publish(&no_show_event).await;
    // And the same no-show delivered twice is applied once.
    s.publish(&no_show_event).await;

    let request = || pb::GetCaseFactsRequest {
        case_ref: Some(common::CaseRef {
            target: Some(common::case_ref::Target::CareCaseId("cc-9".into())),
        }),
    };
    eventually("the facts settle", || async {
        s.count("SELECT count(*) FROM appointments").await == 2
            && s.count("SELECT count(*) FROM invoices").await == 1
    })
    .await;
    let facts = s
        .client
        .clone()
        .get_case_facts(s.owner(request()))
        .await
        .expect("facts")
        .into_inner()
        .facts
        .expect("facts");
    assert_eq!(
        (facts.name.as_str(), facts.max_sessions),
        ("Course of 8", 8)
    );
    assert_eq!(facts.total_invoiced.map(|m| m.amount_minor), Some(10_000));
    // The no-show happened before the booking that arrived first: enrolled and stopped as booked at
    // once (as in order), never messaged, and once for the duplicate.
    eventually("the late no-show is enrolled and stopped", || async {
        let enrollments = s.enrollments_of_rule(&no_show.rule_id).await;
        enrollments.len() == 1
            && enrollments[0].state == pb::EnrollmentState::Stopped as i32
            && enrollments[0].stop_reason == common::StopReason::Booked as i32
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(s.enrollments_of_rule(&no_show.rule_id).await.len(), 1);
    assert!(s.requested().await.is_empty());
}
