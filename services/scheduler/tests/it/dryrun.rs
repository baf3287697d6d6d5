//! PreviewRule and BacktestRule against real services: what a preview says equals what fires when the
//! clock moves (times and the text notifications sends), a backtest over a recorded fixture gives the
//! hand-computed counts, and a backtest running beside live traffic changes nothing live.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use followup_platform::auth::Role;
use followup_platform::config::Secret;
use followup_platform::service::Running;
use followup_platform::testkit::{TestDb, TestEnv, authed};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::notifications::v1 as napi;
use followup_proto::followup::notifications::v1::notifications_service_client::NotificationsServiceClient;
use followup_proto::followup::scheduler::v1 as pb;
use futures::StreamExt;

use crate::support::*;

struct WithNotifications {
    s: Scheduler,
    notifications: NotificationsServiceClient<tonic::transport::Channel>,
    _running: Running,
    _db: TestDb,
}

async fn with_notifications() -> WithNotifications {
    let env = TestEnv::start().await;
    let db = TestDb::create().await;
    let own = followup_notifications::Settings {
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        unsubscribe_signing_key: Secret::new("test-unsubscribe-key-0123456789abcdef"),
        ..Default::default()
    };
    let config = followup_platform::service::ServiceConfig::load(
        &followup_notifications::INFO,
        own,
        env.sources().set("database_url", &db.url),
    )
    .expect("notifications configuration");
    let running = followup_notifications::Service::build(config)
        .await
        .expect("notifications starts");
    let mut settings = settings();
    settings.notifications.addr = format!("http://{}", running.grpc_addr);
    let notifications =
        NotificationsServiceClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .expect("connects");
    let s = Scheduler::start_in(env, settings).await;
    WithNotifications {
        s,
        notifications,
        _running: running,
        _db: db,
    }
}

fn quick_rule() -> pb::Rule {
    let wait = |days: i32| pb::Step {
        action: Some(pb::step::Action::Wait(pb::WaitAction {
            until: Some(pb::wait_action::Until::DaysAtTime(pb::DaysAtTime {
                days,
                local_time: "10:00".into(),
            })),
            ..Default::default()
        })),
        ..Default::default()
    };
    let chat = |key: &str| pb::Step {
        action: Some(pb::step::Action::Send(pb::SendAction {
            channel: common::Channel::Chat as i32,
            template_key: key.into(),
        })),
        ..Default::default()
    };
    pb::Rule {
        name: "Chat follow-up".into(),
        category: "treatment_follow_up".into(),
        case_kind: common::CaseKind::CasePresentation as i32,
        trigger: Some(pb::Trigger {
            r#type: pb::TriggerType::PlanSent as i32,
            ..Default::default()
        }),
        // Across the DST change of 29 March (the clock starts on 2 March): 28 days at 10:00 is BST.
        steps: vec![
            wait(1),
            chat("plan_follow_up_1"),
            wait(27),
            chat("plan_follow_up_2"),
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_preview_equals_what_fires_when_the_clock_moves() {
    let h = with_notifications().await;
    let s = &h.s;
    s.set_zone("Europe/London").await;
    let owner = s.token(Role::Owner);
    // Quiet hours and the cap are the real clock's business in notifications: off here, so what the
    // preview says (no hold) is what happens whatever the time of the test run.
    h.notifications
        .clone()
        .update_delivery_settings(authed(
            napi::UpdateDeliverySettingsRequest {
                settings: Some(napi::DeliverySettings {
                    quiet_hours_start: "00:00".into(),
                    quiet_hours_end: "00:00".into(),
                    weekly_cap: 0,
                    clinic_name: "Smile Dental".into(),
                    time_zone: "Europe/London".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![
                        "quiet_hours_start".into(),
                        "quiet_hours_end".into(),
                        "weekly_cap".into(),
                        "clinic_name".into(),
                        "time_zone".into(),
                    ],
                }),
            },
            &owner,
        ))
        .await
        .expect("delivery settings");
    s.publish(&ev::PatientUpserted {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        patient_id: "maria".into(),
        given_name: "Maria".into(),
        family_name: "Lopez".into(),
        phone_e164: "+447700900123".into(),
        ..Default::default()
    })
    .await;
    let notifications = h.notifications.clone();
    eventually("notifications knows Maria", || {
        let mut n = notifications.clone();
        let owner = owner.clone();
        async move {
            n.get_contact(authed(
                napi::GetContactRequest {
                    patient_id: "maria".into(),
                },
                &owner,
            ))
            .await
            .is_ok()
        }
    })
    .await;
    // The case exists (first send) while the rule is still a draft: nothing enrolls.
    let plan_id = id();
    s.publish(&s.plan_sent(&plan_id, "maria")).await;
    let mut client = s.client.clone();
    let created = client
        .create_rule(s.owner(pb::CreateRuleRequest {
            rule: Some(quick_rule()),
            validate_only: false,
        }))
        .await
        .expect("rule created")
        .into_inner()
        .rule
        .expect("rule");
    eventually("the case's facts", || {
        let mut c = s.client.clone();
        let request = s.owner(pb::GetCaseFactsRequest {
            case_ref: plan_ref(&plan_id),
        });
        async move { c.get_case_facts(request).await.is_ok() }
    })
    .await;
    let preview = client
        .preview_rule(s.owner(pb::PreviewRuleRequest {
            rule_source: Some(pb::preview_rule_request::RuleSource::RuleId(
                created.rule_id.clone(),
            )),
            target: Some(pb::preview_rule_request::Target::CaseRef(
                plan_ref(&plan_id).expect("ref"),
            )),
            trigger_time: ts(s.now()),
            ..Default::default()
        }))
        .await
        .expect("preview")
        .into_inner();
    assert!(preview.would_enroll, "{}", preview.reason);
    assert_eq!(preview.steps.len(), 2);
    assert!(preview.warnings.is_empty(), "{:?}", preview.warnings);
    let first = &preview.steps[0];
    assert_eq!(first.local_send_time, "2026-03-03T10:00 GMT");
    assert_eq!(preview.steps[1].local_send_time, "2026-03-30T10:00 BST");
    let texts: Vec<String> = preview
        .steps
        .iter()
        .map(|p| {
            p.message
                .as_ref()
                .map(|m| m.body.clone())
                .unwrap_or_default()
        })
        .collect();
    assert!(texts[0].contains("Maria"), "{}", texts[0]);
    assert!(texts[0].contains(&plan_id), "portal link in {}", texts[0]);

    // Now the same rule plays and the plan is sent again at the same instant.
    client
        .play_rule(s.owner(pb::PlayRuleRequest {
            rule_id: created.rule_id.clone(),
        }))
        .await
        .expect("played");
    let mut again = s.plan_sent(&plan_id, "maria");
    again.send_count = 2;
    s.publish(&again).await;
    let enrollment = poll("the enrollment", || async {
        s.enrollments_of_rule(&created.rule_id)
            .await
            .into_iter()
            .next()
    })
    .await;
    let timeline = s.timeline(&enrollment.enrollment_id).await;
    let due: Vec<_> = timeline
        .steps
        .iter()
        .filter(|st| st.due_time.is_some())
        .map(|st| (st.step_index, st.due_time))
        .collect();
    let previewed: Vec<_> = preview
        .steps
        .iter()
        .map(|p| (p.step_index, p.due_time))
        .collect();
    assert_eq!(due, previewed, "preview times are the enrollment's");
    // Move the clock to each due time: notifications sends what the preview showed.
    for (i, step) in preview.steps.iter().enumerate() {
        let at = step
            .due_time
            .as_ref()
            .and_then(followup_platform::event::from_timestamp)
            .expect("due");
        s.clock.set(at);
        let key = format!("{}:{}", enrollment.enrollment_id, step.step_index);
        let body = poll(&format!("message {key} sent"), || {
            let mut n = notifications.clone();
            let owner = owner.clone();
            let key = key.clone();
            async move {
                let found = n
                    .list_messages(authed(
                        napi::ListMessagesRequest {
                            idempotency_key: key,
                            ..Default::default()
                        },
                        &owner,
                    ))
                    .await
                    .map(|r| r.into_inner().messages)
                    .unwrap_or_default();
                found
                    .first()
                    .and_then(|m| m.rendered.as_ref())
                    .filter(|r| !r.body.is_empty())
                    .map(|r| r.body.clone())
            }
        })
        .await;
        assert_eq!(body, texts[i], "step {} text", step.step_index);
    }
}

/// Polls until `check` gives a value, at most 40 seconds.
async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(40);
    while tokio::time::Instant::now() < deadline {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn a_preview_of_made_up_facts_explains_its_conditions_and_says_what_it_could_not_do() {
    let s = Scheduler::start().await;
    let mut rule = quick_rule();
    rule.case_kind = common::CaseKind::CareCase as i32;
    rule.trigger = Some(pb::Trigger {
        r#type: pb::TriggerType::NoShow as i32,
        ..Default::default()
    });
    rule.condition = Some(pb::Condition {
        kind: Some(pb::condition::Kind::Comparison(pb::Comparison {
            field: pb::CaseField::PercentSessionsBooked as i32,
            operator: pb::Operator::Lt as i32,
            value: Some(pb::Value {
                kind: Some(pb::value::Kind::Number(50.0)),
            }),
            upper: None,
        })),
    });
    let answer = s
        .client
        .clone()
        .preview_rule(s.owner(pb::PreviewRuleRequest {
            rule_source: Some(pb::preview_rule_request::RuleSource::Rule(rule)),
            target: Some(pb::preview_rule_request::Target::Facts(pb::CaseFacts {
                case_kind: common::CaseKind::CareCase as i32,
                max_sessions: 5,
                sessions_booked: 3,
                ..Default::default()
            })),
            ..Default::default()
        }))
        .await
        .expect("preview")
        .into_inner();
    assert!(!answer.would_enroll);
    assert!(
        answer.reason.contains("percent sessions booked (60) < 50"),
        "{}",
        answer.reason
    );
    assert_eq!(answer.checks.len(), 1);
    assert!(
        answer.warnings[0].contains("no notifications address"),
        "{:?}",
        answer.warnings
    );
    assert!(answer.steps.iter().all(|st| st.message.is_none()));
    let err = s
        .client
        .clone()
        .preview_rule(s.owner(pb::PreviewRuleRequest {
            rule_source: Some(pb::preview_rule_request::RuleSource::RuleId(id())),
            target: Some(pb::preview_rule_request::Target::CaseRef(
                plan_ref(&id()).expect("ref"),
            )),
            ..Default::default()
        }))
        .await
        .expect_err("unknown rule");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

// ---- backtests ----

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .expect("time")
}

fn patient(id_: &str, zone: &str, when: DateTime<Utc>) -> ev::PatientUpserted {
    ev::PatientUpserted {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(when),
        patient_id: id_.into(),
        given_name: "P".into(),
        time_zone: zone.into(),
        ..Default::default()
    }
}

fn sent(plan: &str, patient: &str, when: DateTime<Utc>) -> ev::PlanSent {
    ev::PlanSent {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(when),
        plan_id: plan.into(),
        plan_version: 1,
        patient_id: patient.into(),
        title: "Crown".into(),
        value: money(120_000),
        sent_time: ts(when),
        visit_count: 2,
        ..Default::default()
    }
}

fn message_sent(patient: &str, when: DateTime<Utc>) -> ev::MessageSent {
    ev::MessageSent {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(when),
        message: Some(ev::MessageRef {
            message_id: id(),
            channel: common::Channel::Sms as i32,
            category: "recall".into(),
            patient_id: patient.into(),
            ..Default::default()
        }),
        attempt: 1,
        ..Default::default()
    }
}

/// The recorded fixture: 12 events over 50 days of March and April 2026.
async fn publish_fixture(s: &Scheduler) -> usize {
    let t0 = at("2026-03-02T09:00:00Z");
    s.publish(&patient("a", "", t0)).await;
    s.publish(&patient("b", "", t0)).await;
    // c lives in Sydney: 10:00 in London is 21:00 there, inside quiet hours.
    s.publish(&patient("c", "Australia/Sydney", t0)).await;
    s.publish(&sent("p-a", "a", t0)).await;
    s.publish(&sent("p-b", "b", t0 + Duration::hours(1))).await;
    s.publish(&sent("p-c", "c", t0 + Duration::hours(2))).await;
    // b books on day 3: stopped before any message, and booked 71 hours after enrolling.
    let mut booking = s.appointment("appt-b", "b", "p-b");
    booking.slot = None;
    s.publish(&ev::AppointmentBooked {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(t0 + Duration::days(3)),
        appointment: Some(booking),
        ..Default::default()
    })
    .await;
    // a had three capped messages from other rules on day 6 at 12:00: the day-7 message waits for the
    // cap until day 13 at 12:00.
    for _ in 0..3 {
        s.publish(&message_sent(
            "a",
            t0 + Duration::days(6) + Duration::hours(3),
        ))
        .await;
    }
    // c replies on day 8, after the day-7 message: stopped.
    s.publish(&ev::PatientReplied {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(t0 + Duration::days(8)),
        patient_id: "c".into(),
        text: "thanks".into(),
        ..Default::default()
    })
    .await;
    // Something no rule reads, on day 50: the clock reaches the end of a's sequence.
    s.publish(&ev::StaffUpserted {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(t0 + Duration::days(50)),
        staff_id: "dr-ana".into(),
        active: true,
        ..Default::default()
    })
    .await;
    12
}

async fn backtest(
    s: &Scheduler,
    request: pb::BacktestRuleRequest,
) -> (Vec<pb::BacktestProgress>, pb::BacktestReport) {
    let mut stream = s
        .client
        .clone()
        .backtest_rule(s.owner(request))
        .await
        .expect("backtest starts")
        .into_inner();
    let mut progress = Vec::new();
    let mut report = None;
    while let Some(update) = stream.next().await {
        match update.expect("an update").update {
            Some(pb::backtest_rule_response::Update::Progress(p)) => progress.push(p),
            Some(pb::backtest_rule_response::Update::Report(r)) => report = Some(r),
            None => {}
        }
    }
    (progress, report.expect("a report"))
}

fn plan_follow_up() -> pb::Rule {
    followup_scheduler::templates::find("treatment_plan_follow_up")
        .and_then(|t| t.rule)
        .expect("the shipped template")
}

#[tokio::test]
async fn a_backtest_over_a_recorded_fixture_gives_the_hand_computed_counts() {
    let s = Scheduler::start().await;
    s.set_zone("Europe/London").await;
    let began = Utc::now() - Duration::seconds(1);
    let published = publish_fixture(&s).await;
    // The service's clock is the replay range's "now": the stream times are the machine's.
    s.clock.set(Utc::now() + Duration::seconds(1));
    let (progress, report) = backtest(
        &s,
        pb::BacktestRuleRequest {
            rule_source: Some(pb::backtest_rule_request::RuleSource::Rule(plan_follow_up())),
            start_time: ts(began),
            ..Default::default()
        },
    )
    .await;
    assert!(!progress.is_empty());
    assert_eq!(progress[0].events_estimated, published as i64);
    assert_eq!(report.events_replayed, published as i64);
    assert!(!report.truncated);
    assert_eq!(report.cases_enrolled, 3);
    // a: days 7 (held by the cap to day 13), 14, 28, 42; c: day 7 (held by quiet hours in Sydney).
    assert_eq!(report.message_count, 5);
    assert_eq!(report.task_count, 0);
    assert_eq!(
        report.messages_by_channel,
        vec![pb::ChannelCount {
            channel: common::Channel::Sms as i32,
            count: 5
        }]
    );
    assert_eq!(report.held_by_quiet_hours, 1);
    assert_eq!(report.held_by_frequency_cap, 1);
    assert_eq!(report.booked_count, 1);
    assert_eq!(
        report.median_time_to_book,
        Some(prost_types::Duration {
            seconds: 71 * 3600,
            nanos: 0
        })
    );
    let t0 = at("2026-03-02T09:00:00Z");
    let sends: HashMap<String, Vec<DateTime<Utc>>> =
        report
            .sample_actions
            .iter()
            .fold(HashMap::new(), |mut m, a| {
                m.entry(a.patient_id.clone()).or_default().push(
                    a.send_time
                        .as_ref()
                        .and_then(followup_platform::event::from_timestamp)
                        .expect("sent"),
                );
                m
            });
    assert_eq!(
        sends["a"],
        vec![
            t0 + Duration::days(13) + Duration::hours(3),
            at("2026-03-16T10:00:00Z"),
            at("2026-03-30T09:00:00Z"),
            at("2026-04-13T09:00:00Z"),
        ]
    );
    // 08:00 in Sydney (AEDT, UTC+11) the next morning.
    assert_eq!(sends["c"], vec![at("2026-03-09T21:00:00Z")]);

    // A tighter bound stops early and says so.
    let (_, cut) = backtest(
        &s,
        pb::BacktestRuleRequest {
            rule_source: Some(pb::backtest_rule_request::RuleSource::Rule(plan_follow_up())),
            start_time: ts(began),
            max_events: 5,
            ..Default::default()
        },
    )
    .await;
    assert!(cut.truncated);
    assert_eq!(cut.events_replayed, 5);

    let Err(err) = s
        .client
        .clone()
        .backtest_rule(s.owner(pb::BacktestRuleRequest {
            rule_source: Some(pb::backtest_rule_request::RuleSource::Rule(plan_follow_up())),
            start_time: ts(s.now() + Duration::days(1)),
            ..Default::default()
        }))
        .await
    else {
        panic!("a range in the future is refused");
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_backtest_during_live_traffic_changes_nothing_live() {
    let s = Scheduler::start().await;
    s.clock.set(Utc::now());
    let began = Utc::now() - Duration::seconds(1);
    let fixture = publish_fixture(&s).await as i64;
    // The history is consumed before the live rule plays: only the live traffic below enrolls in it.
    eventually("the history is consumed", || async {
        s.count("SELECT count(*) FROM inbox").await == fixture
    })
    .await;
    // A live rule that sends at once on plan_sent; the draft backtested is another.
    let mut live = quick_rule();
    live.name = "Live".into();
    live.steps = vec![live.steps[1].clone()];
    let live = s.play(live).await;
    let draft = s
        .client
        .clone()
        .create_rule(s.owner(pb::CreateRuleRequest {
            rule: Some(plan_follow_up()),
            validate_only: false,
        }))
        .await
        .expect("draft")
        .into_inner()
        .rule
        .expect("rule");
    let consumers_before = durable_consumers(&s).await;
    let traffic = async {
        for n in 0..20 {
            let mut e = s.plan_sent(&id(), &format!("live-{n}"));
            e.occurred_at = ts(s.now());
            e.sent_time = ts(s.now());
            s.publish(&e).await;
        }
    };
    let replay = async {
        s.clock.set(Utc::now());
        backtest(
            &s,
            pb::BacktestRuleRequest {
                rule_source: Some(pb::backtest_rule_request::RuleSource::RuleId(
                    draft.rule_id.clone(),
                )),
                start_time: ts(began),
                ..Default::default()
            },
        )
        .await
    };
    let ((_, report), ()) = tokio::join!(replay, traffic);
    assert!(report.cases_enrolled >= 3, "{report:?}");
    // Live: exactly the live rule's 20 enrollments and 20 requests; nothing of the draft.
    eventually("the live rule enrolls the live traffic", || async {
        s.enrollments_of_rule(&live.rule_id).await.len() == 20
    })
    .await;
    assert!(s.enrollments_of_rule(&draft.rule_id).await.is_empty());
    let requested = s.requested().await;
    eventually("every live request", || async {
        s.requested().await.len() == 20
    })
    .await;
    assert!(requested.iter().all(|r| r.rule_id == live.rule_id));
    let draft_now = s
        .client
        .clone()
        .get_rule(s.owner(pb::GetRuleRequest {
            rule_id: draft.rule_id.clone(),
            rule_version: 0,
        }))
        .await
        .expect("draft")
        .into_inner()
        .rule
        .expect("rule");
    assert_eq!(draft_now.state, pb::RuleState::Draft as i32);
    assert_eq!(draft_now.rule_version, 1);
    assert_eq!(
        s.count("SELECT count(*) FROM trigger_timers").await,
        0,
        "no timers armed"
    );
    // No durable consumer was created: the replay's ordered consumers are ephemeral.
    assert_eq!(durable_consumers(&s).await, consumers_before);
}

async fn durable_consumers(s: &Scheduler) -> Vec<String> {
    let js = s.env.nats.jetstream().await;
    let mut names = Vec::new();
    for stream in ["CLINIC", "FOLLOWUP"] {
        let stream = js.get_stream(stream).await.expect("stream");
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.expect("consumer info");
            if info.config.durable_name.is_some() {
                names.push(info.name);
            }
        }
    }
    names.sort();
    names
}

/// PlayRule checks every template a rule sends against notifications: a missing one is
/// FAILED_PRECONDITION naming the template and its step, and the rule stays a draft.
#[tokio::test]
async fn play_refuses_a_rule_whose_template_does_not_exist() {
    use tonic_types::StatusExt;
    let h = with_notifications().await;
    let mut rule = quick_rule();
    rule.name = "Missing template".into();
    if let Some(pb::step::Action::Send(send)) = &mut rule.steps[3].action {
        send.template_key = "no_such_template".into();
    }
    let mut client = h.s.client.clone();
    let created = client
        .create_rule(h.s.owner(pb::CreateRuleRequest {
            rule: Some(rule),
            validate_only: false,
        }))
        .await
        .expect("a draft may name any template")
        .into_inner()
        .rule
        .expect("a rule");
    let refused = client
        .play_rule(h.s.owner(pb::PlayRuleRequest {
            rule_id: created.rule_id.clone(),
        }))
        .await
        .expect_err("a missing template is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("no_such_template")
            && refused.message().contains("steps[3].send.template_key"),
        "{}",
        refused.message()
    );
    let violation = refused
        .get_error_details()
        .precondition_failure()
        .and_then(|p| p.violations.first().cloned())
        .expect("a PreconditionFailure");
    assert_eq!(violation.r#type, "TEMPLATE_MISSING");
    let shown = client
        .get_rule(h.s.owner(pb::GetRuleRequest {
            rule_id: created.rule_id.clone(),
            ..Default::default()
        }))
        .await
        .expect("the rule")
        .into_inner()
        .rule
        .expect("a rule");
    assert_eq!(shown.state, pb::RuleState::Draft as i32);

    // With the template created, it plays.
    h.notifications
        .clone()
        .create_template(authed(
            napi::CreateTemplateRequest {
                template: Some(napi::Template {
                    key: "no_such_template".into(),
                    channel: common::Channel::Chat as i32,
                    name: "Now it exists".into(),
                    body: "A reminder from the clinic.".into(),
                    enabled: true,
                    ..Default::default()
                }),
            },
            &h.s.token(Role::Owner),
        ))
        .await
        .expect("template created");
    client
        .play_rule(h.s.owner(pb::PlayRuleRequest {
            rule_id: created.rule_id,
        }))
        .await
        .expect("plays once its templates exist");
}
