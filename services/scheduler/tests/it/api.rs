//! The gRPC API: validation that names the field, roles, clinics kept apart, versions, play/pause/delete,
//! templates, enrollments, case facts and settings.

use followup_platform::auth::Role;
use followup_platform::testkit::authed;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1 as pb;
use followup_proto::followup::scheduler::v1::waitlist_service_client::WaitlistServiceClient;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

fn rule(name: &str) -> pb::Rule {
    followup_scheduler::templates::find("hot_enquiry")
        .and_then(|t| t.rule)
        .map(|r| pb::Rule {
            name: name.into(),
            ..r
        })
        .expect("template")
}

fn comparison(
    field: pb::CaseField,
    operator: pb::Operator,
    value: pb::value::Kind,
) -> pb::Condition {
    pb::Condition {
        kind: Some(pb::condition::Kind::Comparison(pb::Comparison {
            field: field as i32,
            operator: operator as i32,
            value: Some(pb::Value { kind: Some(value) }),
            upper: None,
        })),
    }
}

#[tokio::test]
async fn rules_are_validated_versioned_and_kept_per_clinic() {
    let s = Scheduler::start().await;
    let mut client = s.client.clone();

    // A bad condition is refused naming the field, with a BadRequest detail.
    let mut bad = rule("Bad");
    bad.condition = Some(pb::Condition {
        kind: Some(pb::condition::Kind::All(pb::ConditionGroup {
            conditions: vec![
                comparison(
                    pb::CaseField::Viewed,
                    pb::Operator::Eq,
                    pb::value::Kind::Flag(true),
                ),
                comparison(
                    pb::CaseField::SessionsDone,
                    pb::Operator::Contains,
                    pb::value::Kind::Number(2.0),
                ),
            ],
        })),
    });
    let err = client
        .create_rule(s.owner(pb::CreateRuleRequest {
            rule: Some(bad),
            validate_only: false,
        }))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "condition.all[1].comparison: CONTAINS does not fit SESSIONS_DONE (use EQ, NE, LT, LE, GT, GE, BETWEEN)"
    );
    let details = err.get_error_details();
    assert_eq!(
        details
            .bad_request()
            .map(|b| b.field_violations[0].field.clone()),
        Some("condition.all[1].comparison".to_string())
    );
    let mut no_window = rule("No window");
    no_window.trigger = Some(pb::Trigger {
        r#type: pb::TriggerType::PlanViewedNoResponse as i32,
        ..Default::default()
    });
    let err = client
        .create_rule(s.owner(pb::CreateRuleRequest {
            rule: Some(no_window),
            validate_only: true,
        }))
        .await
        .expect_err("invalid");
    assert_eq!(
        err.message(),
        "trigger.window: is required for PLAN_VIEWED_NO_RESPONSE"
    );

    // Only owners and admins change rules; every role reads.
    let err = client
        .create_rule(authed(
            pb::CreateRuleRequest {
                rule: Some(rule("Desk")),
                validate_only: false,
            },
            &s.token(Role::FrontDesk),
        ))
        .await
        .expect_err("front desk");
    assert_eq!(err.code(), Code::PermissionDenied);

    let created = client
        .create_rule(s.owner(pb::CreateRuleRequest {
            rule: Some(rule("Enquiries")),
            validate_only: false,
        }))
        .await
        .expect("created")
        .into_inner()
        .rule
        .expect("rule");
    assert_eq!(created.state, pb::RuleState::Draft as i32);
    assert_eq!(created.rule_version, 1);
    let err = client
        .create_rule(s.owner(pb::CreateRuleRequest {
            rule: Some(rule("enquiries")),
            validate_only: false,
        }))
        .await
        .expect_err("same name");
    assert_eq!(err.code(), Code::AlreadyExists);

    // Another clinic sees nothing of it.
    let other = s.env.auth.token("clinic-b", Role::Owner);
    let err = client
        .get_rule(authed(
            pb::GetRuleRequest {
                rule_id: created.rule_id.clone(),
                rule_version: 0,
            },
            &other,
        ))
        .await
        .expect_err("other clinic");
    assert_eq!(err.code(), Code::NotFound);
    let listed = client
        .list_rules(authed(pb::ListRulesRequest::default(), &other))
        .await
        .expect("listed")
        .into_inner();
    assert!(listed.rules.is_empty());

    // A draft changes in place; pausing it is refused.
    let renamed = client
        .update_rule(s.owner(pb::UpdateRuleRequest {
            rule: Some(pb::Rule {
                rule_id: created.rule_id.clone(),
                name: "New enquiries".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
            validate_only: false,
        }))
        .await
        .expect("updated")
        .into_inner()
        .rule
        .expect("rule");
    assert_eq!(
        (renamed.name.as_str(), renamed.rule_version),
        ("New enquiries", 1)
    );
    let err = client
        .pause_rule(s.owner(pb::PauseRuleRequest {
            rule_id: created.rule_id.clone(),
        }))
        .await
        .expect_err("draft");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .update_rule(s.owner(pb::UpdateRuleRequest {
            rule: Some(pb::Rule {
                rule_id: created.rule_id.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["state".into()],
            }),
            validate_only: false,
        }))
        .await
        .expect_err("output only");
    assert_eq!(
        err.message().split(':').next(),
        Some("update_mask.paths[0]")
    );

    // Played, an enquiry enrolls on version 1; an edit makes version 2 for new enrollments only.
    client
        .play_rule(s.owner(pb::PlayRuleRequest {
            rule_id: created.rule_id.clone(),
        }))
        .await
        .expect("played");
    let enquiry = |n: &str| ev::EnquiryCreated {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        enquiry_id: n.into(),
        patient_id: format!("patient-{n}"),
        ..Default::default()
    };
    s.publish(&enquiry("e1")).await;
    eventually("first enrollment", || async {
        s.enrollments_of_rule(&created.rule_id).await.len() == 1
    })
    .await;
    let mut steps = rule("x").steps;
    steps[0] = pb::Step {
        action: Some(pb::step::Action::Send(pb::SendAction {
            channel: common::Channel::Email as i32,
            template_key: "enquiry_reply_email".into(),
        })),
        ..Default::default()
    };
    let v2 = client
        .update_rule(s.owner(pb::UpdateRuleRequest {
            rule: Some(pb::Rule {
                rule_id: created.rule_id.clone(),
                steps,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["steps".into()],
            }),
            validate_only: false,
        }))
        .await
        .expect("updated")
        .into_inner()
        .rule
        .expect("rule");
    assert_eq!(
        (v2.rule_version, v2.state),
        (2, pb::RuleState::Playing as i32)
    );
    s.publish(&enquiry("e2")).await;
    eventually("second enrollment", || async {
        s.enrollments_of_rule(&created.rule_id).await.len() == 2
    })
    .await;
    let enrollments = s.enrollments_of_rule(&created.rule_id).await;
    let versions: Vec<i32> = enrollments.iter().map(|e| e.rule_version).collect();
    assert_eq!(
        versions,
        [2, 1],
        "newest first; the running one kept version 1"
    );
    eventually("both replies", || async { s.requested().await.len() == 2 }).await;
    let templates: Vec<String> = s
        .requested()
        .await
        .into_iter()
        .map(|r| r.template_key)
        .collect();
    assert_eq!(templates, ["new_enquiry", "enquiry_reply_email"]);
    let v1 = client
        .get_rule(s.owner(pb::GetRuleRequest {
            rule_id: created.rule_id.clone(),
            rule_version: 1,
        }))
        .await
        .expect("v1")
        .into_inner()
        .rule
        .expect("rule");
    assert_eq!(v1.steps[0].step_index, 0);
    let listed = client
        .list_rules(authed(
            pb::ListRulesRequest::default(),
            &s.token(Role::FrontDesk),
        ))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.rules[0].active_enrollment_count, 2);

    // Staff cancel an enrollment; a system token may not.
    let first = enrollments[1].enrollment_id.clone();
    let err = client
        .cancel_enrollment(authed(
            pb::CancelEnrollmentRequest {
                enrollment_id: first.clone(),
                reason: String::new(),
            },
            &s.token(Role::System),
        ))
        .await
        .expect_err("system");
    assert_eq!(err.code(), Code::PermissionDenied);
    let cancelled = client
        .cancel_enrollment(authed(
            pb::CancelEnrollmentRequest {
                enrollment_id: first.clone(),
                reason: "spoke on the phone".into(),
            },
            &s.token(Role::FrontDesk),
        ))
        .await
        .expect("cancelled")
        .into_inner()
        .enrollment
        .expect("enrollment");
    assert_eq!(
        cancelled.stop_reason,
        common::StopReason::CancelledByStaff as i32
    );
    let err = client
        .cancel_enrollment(s.owner(pb::CancelEnrollmentRequest {
            enrollment_id: first,
            reason: String::new(),
        }))
        .await
        .expect_err("ended");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A playing rule is not deleted; paused, it is, and its enrollments stop.
    let err = client
        .delete_rule(s.owner(pb::DeleteRuleRequest {
            rule_id: created.rule_id.clone(),
        }))
        .await
        .expect_err("playing");
    assert_eq!(err.code(), Code::FailedPrecondition);
    client
        .pause_rule(s.owner(pb::PauseRuleRequest {
            rule_id: created.rule_id.clone(),
        }))
        .await
        .expect("paused");
    client
        .delete_rule(s.owner(pb::DeleteRuleRequest {
            rule_id: created.rule_id.clone(),
        }))
        .await
        .expect("deleted");
    let reasons: Vec<i32> = s
        .outbox::<ev::EnrollmentStopped>()
        .await
        .iter()
        .map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains(&(common::StopReason::RuleDeleted as i32)),
        "{reasons:?}"
    );
    let err = client
        .get_rule(s.owner(pb::GetRuleRequest {
            rule_id: created.rule_id.clone(),
            rule_version: 0,
        }))
        .await
        .expect_err("deleted");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn templates_settings_case_facts_and_what_comes_later() {
    let s = Scheduler::start().await;
    let mut client = s.client.clone();
    let templates = client
        .list_rule_templates(s.owner(pb::ListRuleTemplatesRequest {}))
        .await
        .expect("templates")
        .into_inner()
        .templates;
    let ids: Vec<&str> = templates.iter().map(|t| t.template_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "treatment_plan_follow_up",
            "viewed_no_reply",
            "hot_enquiry",
            "no_show_recovery",
            "cancellation_rebook",
            "post_consultation",
            "lapsed_recall",
            "referral_expiring"
        ]
    );
    let enabled = s.enable("referral_expiring").await;
    let err = client
        .enable_rule_template(s.owner(pb::EnableRuleTemplateRequest {
            template_id: "referral_expiring".into(),
            play: false,
            owner_staff_id: String::new(),
        }))
        .await
        .expect_err("twice");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&enabled.rule_id));
    let listed = client
        .list_rule_templates(s.owner(pb::ListRuleTemplatesRequest {}))
        .await
        .expect("templates")
        .into_inner()
        .templates;
    assert_eq!(listed[7].enabled_rule_id, enabled.rule_id);

    // Settings: a zone that does not exist is refused, naming the field.
    let err = client
        .update_scheduler_settings(s.owner(pb::UpdateSchedulerSettingsRequest {
            settings: Some(pb::SchedulerSettings {
                time_zone: "Mars/Olympus".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["time_zone".into()],
            }),
        }))
        .await
        .expect_err("zone");
    assert_eq!(err.message().split(':').next(), Some("settings.time_zone"));
    let updated = client
        .update_scheduler_settings(s.owner(pb::UpdateSchedulerSettingsRequest {
            settings: Some(pb::SchedulerSettings {
                time_zone: "Australia/Sydney".into(),
                closed_weekdays: vec![pb::Weekday::Sunday as i32],
                closed_dates: vec!["2026-12-25".into()],
                default_owner_staff_id: "front-1".into(),
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "time_zone".into(),
                    "closed_weekdays".into(),
                    "closed_dates".into(),
                    "default_owner_staff_id".into(),
                ],
            }),
        }))
        .await
        .expect("updated")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(updated.time_zone, "Australia/Sydney");
    assert_eq!(updated.closed_weekdays, [pb::Weekday::Sunday as i32]);

    // A care case's facts from the clinic's events: 2 of 5 sessions booked (one of them done), invoices.
    s.publish(&ev::CareCaseUpserted {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        care_case_id: "cc-7".into(),
        patient_id: "patient-7".into(),
        name: "Shoulder (WorkCover)".into(),
        status: common::CareCaseStatus::Open as i32,
        issue_date: "2026-02-01".into(),
        expiry_date: "2026-05-01".into(),
        max_sessions: 5,
        invoiceable_amount: Some(common::Money {
            amount_minor: 100_000,
            currency: "AUD".into(),
        }),
        ..Default::default()
    })
    .await;
    let session = |n: &str, days: i64| ev::Appointment {
        appointment_id: n.into(),
        patient_id: "patient-7".into(),
        care_case_id: "cc-7".into(),
        slot: Some(common::Slot {
            start_time: ts(s.now() + chrono::Duration::days(days)),
            ..Default::default()
        }),
        ..Default::default()
    };
    s.publish(&s.booked(session("a1", -2))).await;
    s.publish(&s.booked(session("a2", 5))).await;
    s.publish(&ev::InvoiceIssued {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        invoice_id: "inv-1".into(),
        patient_id: "patient-7".into(),
        amount: Some(common::Money {
            amount_minor: 20_000,
            currency: "AUD".into(),
        }),
        care_case_id: "cc-7".into(),
        ..Default::default()
    })
    .await;
    let request = || pb::GetCaseFactsRequest {
        case_ref: Some(common::CaseRef {
            target: Some(common::case_ref::Target::CareCaseId("cc-7".into())),
        }),
    };
    eventually("the facts", || async {
        client
            .clone()
            .get_case_facts(s.owner(request()))
            .await
            .is_ok_and(|r| {
                r.into_inner()
                    .facts
                    .is_some_and(|f| f.total_invoiced.is_some() && f.sessions_booked == 2)
            })
    })
    .await;
    let facts = client
        .get_case_facts(s.owner(request()))
        .await
        .expect("facts")
        .into_inner()
        .facts
        .expect("facts");
    assert_eq!(facts.name, "Shoulder (WorkCover)");
    assert_eq!(
        (
            facts.max_sessions,
            facts.sessions_booked,
            facts.sessions_done,
            facts.sessions_left
        ),
        (5, 2, 1, 4)
    );
    assert_eq!(facts.percent_sessions_booked, 40.0);
    assert_eq!(facts.percent_invoiced, 20.0);
    assert_eq!(
        facts.invoiceable_amount_left.map(|m| m.amount_minor),
        Some(80_000)
    );
    assert_eq!(facts.time_zone, "Australia/Sydney");
    let err = client
        .get_case_facts(s.owner(pb::GetCaseFactsRequest {
            case_ref: plan_ref("nope"),
        }))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    // Preview needs a rule and a case; the waitlist answers (empty).
    let err = client
        .preview_rule(s.owner(pb::PreviewRuleRequest::default()))
        .await
        .expect_err("no rule");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut waitlist = WaitlistServiceClient::connect(format!(
        "http://{}",
        s.running.as_ref().map(|r| r.grpc_addr).expect("running")
    ))
    .await
    .expect("connects");
    let slots = waitlist
        .list_open_slots(s.owner(pb::ListOpenSlotsRequest::default()))
        .await
        .expect("slots")
        .into_inner()
        .slots;
    assert!(slots.is_empty());
}
