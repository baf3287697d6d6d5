//! The demo's journey, asserted step by step: a plan sent and viewed, the case rising in the queue, the
//! first reminder as the patient receives it, a no-show recovered, a STOP honoured, a booking that stops
//! the sequence, and the leakage report.

use std::time::Duration;

use followup_e2e::scenario::{self, OWNER, PHASE_1, Patient, item, usd};
use followup_e2e::{Stack, daytime_zone, eventually, header, portal_token};
use followup_proto::followup::cases::v1 as cases;
use followup_proto::followup::common::v1::{
    CaseRef, CaseStatus, Channel, Slot, StopReason, case_ref,
};
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::notifications::v1 as notifications;
use followup_proto::followup::scheduler::v1 as scheduler;

const TENANT: &str = "smile-dental";
const WAIT: Duration = Duration::from_secs(30);

fn plan_ref(plan_id: &str) -> Option<CaseRef> {
    Some(CaseRef {
        target: Some(case_ref::Target::PlanId(plan_id.to_string())),
    })
}

async fn case(clinic: &mut followup_e2e::Clinic, plan_id: &str) -> cases::GetCaseResponse {
    clinic
        .cases
        .get_case(cases::GetCaseRequest {
            case_id: plan_id.into(),
            timeline_page_size: 200,
        })
        .await
        .map(|r| r.into_inner())
        .unwrap_or_default()
}

fn status(response: &cases::GetCaseResponse) -> CaseStatus {
    response
        .case
        .as_ref()
        .and_then(|c| CaseStatus::try_from(c.status).ok())
        .unwrap_or(CaseStatus::Unspecified)
}

/// The (from, to) status changes of a case's timeline, oldest first.
fn status_changes(response: &cases::GetCaseResponse) -> Vec<(CaseStatus, CaseStatus)> {
    let mut changes: Vec<_> = response
        .timeline
        .iter()
        .filter_map(|e| match &e.detail {
            Some(cases::timeline_entry::Detail::StatusChange(c)) => Some((
                e.time.as_ref().map(|t| (t.seconds, t.nanos)),
                CaseStatus::try_from(c.from_status).unwrap_or_default(),
                CaseStatus::try_from(c.to_status).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    changes.sort_by_key(|(time, _, _)| *time);
    changes
        .into_iter()
        .map(|(_, from, to)| (from, to))
        .collect()
}

async fn enrollment(
    clinic: &mut followup_e2e::Clinic,
    plan_id: &str,
    rule_id: &str,
) -> Option<scheduler::GetEnrollmentTimelineResponse> {
    let enrollment = clinic
        .scheduler
        .list_enrollments(scheduler::ListEnrollmentsRequest {
            case_ref: plan_ref(plan_id),
            rule_id: rule_id.into(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner()
        .enrollments
        .into_iter()
        .next()?;
    clinic
        .scheduler
        .get_enrollment_timeline(scheduler::GetEnrollmentTimelineRequest {
            enrollment_id: enrollment.enrollment_id,
        })
        .await
        .ok()
        .map(|r| r.into_inner())
}

fn step(timeline: &scheduler::GetEnrollmentTimelineResponse, index: i32) -> scheduler::StepRun {
    timeline
        .steps
        .iter()
        .find(|s| s.step_index == index)
        .cloned()
        .unwrap_or_default()
}

fn enrollment_state(timeline: &scheduler::GetEnrollmentTimelineResponse) -> (i32, i32) {
    timeline
        .enrollment
        .as_ref()
        .map(|e| (e.state, e.stop_reason))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_journey_step_by_step() {
    let stack = Stack::start().await;
    let mut clinic = stack.clinic(TENANT);

    // 1. A clinic with a fee schedule, the follow-up rule at demo speed, patients where it is daytime.
    let (zone, _) = daytime_zone();
    scenario::set_up_clinic(&clinic, zone, Duration::from_secs(2)).await;
    // The first reminder 3 s after the send; the next ones far enough away that only a stop ends them.
    let follow_up = scenario::play_demo_speed_follow_up(
        &clinic,
        Duration::from_secs(3),
        Duration::from_secs(600),
    )
    .await;
    let no_show_rule = scenario::play_no_show_recovery(&clinic).await;
    scenario::publish_staff(&stack, TENANT, OWNER, "Dr Ana Lima").await;
    let maria = Patient::new("pat-maria", "Maria", "Santos", "+15125550101", zone);
    let joao = Patient::new("pat-joao", "João", "Pereira", "+15125550102", zone);
    let aisha = Patient::new("pat-aisha", "Aisha", "Khan", "+15125550103", zone);
    for patient in [&maria, &joao, &aisha] {
        scenario::publish_patient(&stack, TENANT, patient).await;
    }

    // 2. "Phase 1: restorations" built and sent; two more plans sent to other patients.
    let phase1 =
        scenario::build_and_send(&clinic, &maria.id, "Phase 1: restorations", &PHASE_1).await;
    assert_eq!(
        phase1.total(),
        355_000,
        "200 + 2,000 + 1,350 (discounted) USD"
    );
    let fillings = scenario::build_and_send(
        &clinic,
        &joao.id,
        "Two fillings",
        &[item("D2391", "30", 1), item("D2392", "31", 1)],
    )
    .await;
    let braces =
        scenario::build_and_send(&clinic, &aisha.id, "Adult braces", &[item("D8090", "", 1)]).await;
    for plan in [&phase1, &fillings, &braces] {
        let plan_id = plan.id().to_string();
        eventually("each sent plan is a case SENT_NOT_VIEWED", WAIT, || {
            let mut c = clinic.clone();
            let plan_id = plan_id.clone();
            async move {
                (status(&case(&mut c, &plan_id).await) == CaseStatus::SentNotViewed).then_some(())
            }
        })
        .await;
    }
    // Before any view the biggest plan leads the queue.
    let queue = clinic
        .cases
        .list_follow_up_queue(cases::ListFollowUpQueueRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        queue
            .entries
            .first()
            .and_then(|e| e.case.as_ref())
            .map(|c| c.case_id.as_str()),
        Some(braces.id())
    );

    // Maria opens her link and reads two sections (what beacon.js posts).
    let (code, answer) = stack
        .post_beacons(
            &scenario::page_view(
                &portal_token(&phase1.portal_url),
                phase1.id(),
                "maria-view-1",
                &[("cover", 3_000), ("treatment_details", 8_000)],
            ),
            None,
        )
        .await;
    assert_eq!(code, 202, "{answer}");

    // 3. SENT_NOT_VIEWED → SENT_VIEWED → WAITING_FOR_RESPONSE (the 2 s response window), top of the queue.
    let viewed = eventually("Maria's case waits for her response", WAIT, || {
        let mut c = clinic.clone();
        let plan_id = phase1.id().to_string();
        async move {
            let got = case(&mut c, &plan_id).await;
            (status(&got) == CaseStatus::WaitingForResponse).then_some(got)
        }
    })
    .await;
    let changes = status_changes(&viewed);
    let expected = [
        (CaseStatus::SentNotViewed, CaseStatus::SentViewed),
        (CaseStatus::SentViewed, CaseStatus::WaitingForResponse),
    ];
    assert!(
        changes.windows(2).any(|w| w == expected),
        "the timeline shows viewed, then waiting: {changes:?}"
    );
    let facts = viewed.case.clone().unwrap_or_default();
    assert!(facts.viewed && facts.view_count == 1, "{facts:?}");
    assert!(
        facts
            .total_view_time
            .as_ref()
            .is_some_and(|d| d.seconds >= 11),
        "11 s of reading counted: {:?}",
        facts.total_view_time
    );
    let queue = clinic
        .cases
        .list_follow_up_queue(cases::ListFollowUpQueueRequest::default())
        .await
        .unwrap()
        .into_inner();
    let top = queue.entries.first().cloned().unwrap_or_default();
    assert_eq!(
        top.case.as_ref().map(|c| c.case_id.as_str()),
        Some(phase1.id())
    );
    assert_eq!(top.rank, 1);
    assert!(!top.reason.is_empty(), "the queue says why");

    // 4. The first reminder, as Maria's phone receives it: her name, the clinic, her link.
    let reminder = eventually(
        "Maria's first reminder reaches the SMS provider",
        WAIT,
        || {
            let sms = stack.sms_to(&maria.phone);
            async move { sms.into_iter().next() }
        },
    )
    .await;
    assert!(
        reminder.content.contains("Hi Maria"),
        "{}",
        reminder.content
    );
    assert!(
        reminder.content.contains("Smile Dental"),
        "{}",
        reminder.content
    );
    assert!(
        reminder.content.contains(&phase1.portal_url),
        "the reminder carries the portal link: {}",
        reminder.content
    );
    let timeline = eventually("the scheduler shows the step's outcome", WAIT, || {
        let mut c = clinic.clone();
        let (plan_id, rule_id) = (phase1.id().to_string(), follow_up.rule_id.clone());
        async move {
            let t = enrollment(&mut c, &plan_id, &rule_id).await?;
            (step(&t, 1).outcome == "sent" || step(&t, 1).outcome == "delivered").then_some(t)
        }
    })
    .await;
    assert_eq!(
        step(&timeline, 1).state,
        scheduler::StepRunState::Fired as i32
    );
    assert_eq!(
        step(&timeline, 1).idempotency_key,
        format!(
            "{}:1",
            timeline
                .enrollment
                .as_ref()
                .map(|e| e.enrollment_id.as_str())
                .unwrap_or("")
        )
    );
    eventually("the case counts the reminder", WAIT, || {
        let mut c = clinic.clone();
        let plan_id = phase1.id().to_string();
        async move { (case(&mut c, &plan_id).await.case?.reminders_sent >= 1).then_some(()) }
    })
    .await;

    // 5. The clinic system publishes a no-show of Maria's first visit: an SMS and a task for the owner.
    let (event_id, tenant_id, occurred_at) = header(TENANT);
    stack
        .publish(&ev::AppointmentNoShow {
            event_id,
            tenant_id,
            occurred_at,
            appointment: Some(ev::Appointment {
                appointment_id: "appt-maria-1".into(),
                patient_id: maria.id.clone(),
                slot: Some(Slot {
                    start_time: Some(followup_platform::event::now_timestamp()),
                    duration: scenario::seconds(3600),
                    practitioner_id: OWNER.into(),
                    location_id: String::new(),
                }),
                plan_id: phase1.id().into(),
                ..Default::default()
            }),
        })
        .await;
    let missed = eventually("the no-show SMS reaches Maria", WAIT, || {
        let sms = stack.sms_to(&maria.phone);
        async move {
            sms.into_iter()
                .find(|s| s.content.contains("we missed you"))
        }
    })
    .await;
    assert!(missed.content.contains("Hi Maria"), "{}", missed.content);
    let task = eventually("a call task for the owner", WAIT, || {
        let mut c = clinic.clone();
        async move {
            c.notifications
                .list_tasks(notifications::ListTasksRequest {
                    owner_staff_id: OWNER.into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .tasks
                .into_iter()
                .next()
        }
    })
    .await;
    assert_eq!(task.owner_staff_id, OWNER);
    let no_show = enrollment(&mut clinic, phase1.id(), &no_show_rule.rule_id)
        .await
        .expect("the no-show enrolled Maria's case");
    assert_eq!(
        no_show.enrollment.as_ref().map(|e| e.trigger.as_str()),
        Some("appointment.no_show")
    );

    // 6. João got his first reminder, replies STOP; his next reminder is not sent, and says why.
    eventually("João's first reminder", WAIT, || {
        let sms = stack.sms_to(&joao.phone);
        async move { (!sms.is_empty()).then_some(()) }
    })
    .await;
    let (event_id, tenant_id, occurred_at) = header(TENANT);
    stack
        .publish(&ev::MessageReceived {
            event_id: event_id.clone(),
            tenant_id,
            occurred_at,
            patient_id: joao.id.clone(),
            channel: Channel::Sms as i32,
            from: joao.phone.clone(),
            text: "STOP".into(),
            provider_message_id: format!("in-{event_id}"),
            ..Default::default()
        })
        .await;
    let stopped = eventually("João's sequence stops: opted out", WAIT, || {
        let mut c = clinic.clone();
        let (plan_id, rule_id) = (fillings.id().to_string(), follow_up.rule_id.clone());
        async move {
            let t = enrollment(&mut c, &plan_id, &rule_id).await?;
            (enrollment_state(&t)
                == (
                    scheduler::EnrollmentState::Stopped as i32,
                    StopReason::OptedOut as i32,
                ))
                .then_some(t)
        }
    })
    .await;
    let next = step(&stopped, 3);
    assert_eq!(
        next.state,
        scheduler::StepRunState::Cancelled as i32,
        "the next reminder is cancelled: {next:?}"
    );
    assert!(!next.reason.is_empty(), "with its reason: {next:?}");
    let consent = clinic
        .notifications
        .get_consent(notifications::GetConsentRequest {
            patient_id: joao.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        consent
            .states
            .iter()
            .filter(|s| s.channel == Channel::Sms as i32)
            .all(|s| !s.allowed),
        "SMS withdrawn for every category: {consent:?}"
    );
    // Even a request that arrived now would be suppressed, not sent: notifications has the last word.
    let (event_id, tenant_id, occurred_at) = header(TENANT);
    stack
        .publish(&ev::NotificationRequested {
            event_id,
            tenant_id,
            occurred_at,
            idempotency_key: "e2e:late-reminder".into(),
            channel: Channel::Sms as i32,
            template_key: "plan_follow_up_2".into(),
            category: "treatment_follow_up".into(),
            recipient: Some(ev::Recipient {
                target: Some(ev::recipient::Target::PatientId(joao.id.clone())),
            }),
            variables: [("portal_url".to_string(), fillings.portal_url.clone())].into(),
            ..Default::default()
        })
        .await;
    let suppressed = eventually("a late reminder to João is suppressed", WAIT, || {
        let mut c = clinic.clone();
        async move {
            c.notifications
                .list_messages(notifications::ListMessagesRequest {
                    idempotency_key: "e2e:late-reminder".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .messages
                .into_iter()
                .find(|m| m.status == notifications::MessageStatus::Suppressed as i32)
        }
    })
    .await;
    assert_eq!(
        suppressed.suppression_reason,
        followup_proto::followup::common::v1::SuppressionReason::OptedOut as i32
    );
    assert_eq!(
        stack.sms_to(&joao.phone).len(),
        1,
        "João got exactly one text"
    );

    // 7. Maria books her first visit: PATIENT_BOOKED, and her sequence stops as "booked".
    let (event_id, tenant_id, occurred_at) = header(TENANT);
    stack
        .publish(&ev::AppointmentBooked {
            event_id,
            tenant_id,
            occurred_at,
            appointment: Some(ev::Appointment {
                appointment_id: "appt-maria-2".into(),
                patient_id: maria.id.clone(),
                slot: Some(Slot {
                    start_time: Some(followup_platform::event::timestamp(
                        chrono::Utc::now() + chrono::Duration::days(3),
                    )),
                    duration: scenario::seconds(3600),
                    practitioner_id: OWNER.into(),
                    location_id: String::new(),
                }),
                plan_id: phase1.id().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    eventually("Maria's case is PATIENT_BOOKED", WAIT, || {
        let mut c = clinic.clone();
        let plan_id = phase1.id().to_string();
        async move {
            (status(&case(&mut c, &plan_id).await) == CaseStatus::PatientBooked).then_some(())
        }
    })
    .await;
    let booked = eventually("Maria's sequence stops: booked", WAIT, || {
        let mut c = clinic.clone();
        let (plan_id, rule_id) = (phase1.id().to_string(), follow_up.rule_id.clone());
        async move {
            let t = enrollment(&mut c, &plan_id, &rule_id).await?;
            (enrollment_state(&t)
                == (
                    scheduler::EnrollmentState::Stopped as i32,
                    StopReason::Booked as i32,
                ))
                .then_some(t)
        }
    })
    .await;
    assert_eq!(
        step(&booked, 3).state,
        scheduler::StepRunState::Cancelled as i32
    );

    // 8. The leakage report: 3 presented, 1 accepted and recovered by follow-up, 2 unscheduled.
    let now = chrono::Utc::now();
    let report = eventually("the leakage report counts the booking", WAIT, || {
        let mut c = clinic.clone();
        async move {
            let report = c
                .cases
                .get_leakage_report(cases::GetLeakageReportRequest {
                    start_time: Some(followup_platform::event::timestamp(
                        now - chrono::Duration::hours(1),
                    )),
                    end_time: Some(followup_platform::event::timestamp(
                        now + chrono::Duration::hours(1),
                    )),
                    owner_staff_id: String::new(),
                })
                .await
                .ok()?
                .into_inner();
            let figures = report.lines.first()?.figures.clone()?;
            (figures.recovered_count == 1).then_some(figures)
        }
    })
    .await;
    assert_eq!(report.currency, "USD");
    assert_eq!(report.presented_count, 3);
    assert_eq!(
        report.presented_value,
        usd(phase1.total() + fillings.total() + braces.total())
    );
    assert_eq!(report.accepted_count, 1);
    assert_eq!(report.accepted_value, usd(phase1.total()));
    assert_eq!(report.unscheduled_count, 2);
    assert_eq!(
        report.unscheduled_value,
        usd(fillings.total() + braces.total())
    );
    assert_eq!(report.recovered_value, usd(phase1.total()));

    stack.stop().await;
}
