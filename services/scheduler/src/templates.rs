//! The rule templates a clinic enables with one call. Each is an ordinary rule (the same validation, the
//! same storage); the template keys and unsubscribe categories its messages name are the ones the
//! notifications service ships by default (plan_follow_up_1..4, plan_viewed_no_response, new_enquiry,
//! no_show, cancellation, consultation_no_next_visit, lapsed_patient, care_case_expiring;
//! treatment_follow_up and recall).

use followup_proto::followup::common::v1::{CareCaseStatus, CaseKind, CaseStatus, Channel};
use followup_proto::followup::scheduler::v1 as pb;
use pb::step::Action;

fn duration(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

fn wait_days_at(days: i32, time: &str, skip_weekends: bool) -> pb::Step {
    pb::Step {
        action: Some(Action::Wait(pb::WaitAction {
            until: Some(pb::wait_action::Until::DaysAtTime(pb::DaysAtTime {
                days,
                local_time: time.into(),
            })),
            skip_weekends,
            skip_closed_days: true,
        })),
        ..Default::default()
    }
}

fn wait_for(seconds: i64) -> pb::Step {
    pb::Step {
        action: Some(Action::Wait(pb::WaitAction {
            until: Some(pb::wait_action::Until::Duration(prost_types::Duration {
                seconds,
                nanos: 0,
            })),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn send(channel: Channel, template_key: &str) -> pb::Step {
    pb::Step {
        action: Some(Action::Send(pb::SendAction {
            channel: channel as i32,
            template_key: template_key.into(),
        })),
        ..Default::default()
    }
}

fn task(title: &str, description: &str) -> pb::Step {
    pb::Step {
        action: Some(Action::Task(pb::TaskAction {
            title: title.into(),
            description: description.into(),
            due_in: duration(4 * HOUR),
        })),
        ..Default::default()
    }
}

fn guarded(mut step: pb::Step, only_if: pb::Condition) -> pb::Step {
    step.only_if = Some(only_if);
    step
}

fn status_is(statuses: &[CaseStatus]) -> pb::Condition {
    let comparisons = statuses
        .iter()
        .map(|s| pb::Condition {
            kind: Some(pb::condition::Kind::Comparison(pb::Comparison {
                field: pb::CaseField::PresentationStatus as i32,
                operator: pb::Operator::Eq as i32,
                value: Some(pb::Value {
                    kind: Some(pb::value::Kind::CaseStatus(*s as i32)),
                }),
                upper: None,
            })),
        })
        .collect();
    pb::Condition {
        kind: Some(pb::condition::Kind::Any(pb::ConditionGroup {
            conditions: comparisons,
        })),
    }
}

fn care_case_open() -> pb::Condition {
    pb::Condition {
        kind: Some(pb::condition::Kind::Comparison(pb::Comparison {
            field: pb::CaseField::OpenClosed as i32,
            operator: pb::Operator::Eq as i32,
            value: Some(pb::Value {
                kind: Some(pb::value::Kind::CareCaseStatus(CareCaseStatus::Open as i32)),
            }),
            upper: None,
        })),
    }
}

struct Spec {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    rule: pb::Rule,
}

fn rule(
    name: &str,
    category: &str,
    kind: CaseKind,
    trigger: pb::Trigger,
    mode: pb::EnrollmentMode,
    steps: Vec<pb::Step>,
) -> pb::Rule {
    pb::Rule {
        name: name.into(),
        category: category.into(),
        case_kind: kind as i32,
        trigger: Some(trigger),
        mode: mode as i32,
        steps,
        schedule_zone: pb::ScheduleZone::Clinic as i32,
        ..Default::default()
    }
}

fn trigger(kind: pb::TriggerType) -> pb::Trigger {
    pb::Trigger {
        r#type: kind as i32,
        ..Default::default()
    }
}

fn specs() -> Vec<Spec> {
    use pb::EnrollmentMode::{EveryTrigger, OncePerCase};
    use pb::TriggerType as T;
    let still_waiting = || {
        status_is(&[
            CaseStatus::SentNotViewed,
            CaseStatus::SentViewed,
            CaseStatus::WaitingForResponse,
        ])
    };
    vec![
        Spec {
            id: "treatment_plan_follow_up",
            name: "Treatment plan follow-up",
            description: "SMS on days 7, 14, 28 and 42 after a plan is sent, at 10:00 clinic time \
                          (weekly for two weeks, then fortnightly); stops when the patient books, \
                          rejects, replies or opts out",
            rule: rule(
                "Treatment plan follow-up",
                "treatment_follow_up",
                CaseKind::CasePresentation,
                trigger(T::PlanSent),
                OncePerCase,
                vec![
                    wait_days_at(7, "10:00", false),
                    guarded(send(Channel::Sms, "plan_follow_up_1"), still_waiting()),
                    wait_days_at(7, "10:00", false),
                    guarded(send(Channel::Sms, "plan_follow_up_2"), still_waiting()),
                    wait_days_at(14, "10:00", false),
                    guarded(send(Channel::Sms, "plan_follow_up_3"), still_waiting()),
                    wait_days_at(14, "10:00", false),
                    guarded(send(Channel::Sms, "plan_follow_up_4"), still_waiting()),
                ],
            ),
        },
        Spec {
            id: "viewed_no_reply",
            name: "Viewed but no reply",
            description: "48 hours after the patient first viewed a plan without booking, approving or \
                          replying: an SMS nudge, then a call task for the owner 3 days later",
            rule: rule(
                "Viewed but no reply",
                "treatment_follow_up",
                CaseKind::CasePresentation,
                pb::Trigger {
                    window: duration(48 * HOUR),
                    ..trigger(T::PlanViewedNoResponse)
                },
                OncePerCase,
                vec![
                    guarded(
                        send(Channel::Sms, "plan_viewed_no_response"),
                        status_is(&[CaseStatus::SentViewed, CaseStatus::WaitingForResponse]),
                    ),
                    wait_days_at(3, "10:00", true),
                    guarded(
                        task(
                            "Call the patient about their treatment plan",
                            "They viewed the plan and have not replied.",
                        ),
                        status_is(&[CaseStatus::SentViewed, CaseStatus::WaitingForResponse]),
                    ),
                ],
            ),
        },
        Spec {
            id: "hot_enquiry",
            name: "Hot enquiry",
            description: "A reply to a new enquiry at once (well within 2 minutes), then a call task if \
                          there is no answer within 1 hour",
            rule: pb::Rule {
                transactional: true,
                ..rule(
                    "Hot enquiry",
                    "treatment_follow_up",
                    CaseKind::CasePresentation,
                    trigger(T::NewEnquiry),
                    EveryTrigger,
                    vec![
                        send(Channel::Sms, "new_enquiry"),
                        wait_for(HOUR),
                        task(
                            "Call back a new enquiry",
                            "No answer within an hour of our first reply.",
                        ),
                    ],
                )
            },
        },
        Spec {
            id: "no_show_recovery",
            name: "No-show recovery",
            description: "An SMS within a minute of a no-show inviting the patient to rebook, then a \
                          call task the next morning at 09:00 if they have not booked",
            rule: pb::Rule {
                transactional: true,
                ..rule(
                    "No-show recovery",
                    "treatment_follow_up",
                    CaseKind::CasePresentation,
                    trigger(T::NoShow),
                    EveryTrigger,
                    vec![
                        send(Channel::Sms, "no_show"),
                        wait_days_at(1, "09:00", true),
                        task(
                            "Call to rebook a missed appointment",
                            "The patient did not come and has not rebooked.",
                        ),
                    ],
                )
            },
        },
        Spec {
            id: "cancellation_rebook",
            name: "Cancellation rebook",
            description: "3 minutes after a cancellation that was not rebooked, an SMS inviting the \
                          patient who cancelled to rebook; a call task 2 days later at 10:00",
            rule: pb::Rule {
                transactional: true,
                ..rule(
                    "Cancellation rebook",
                    "treatment_follow_up",
                    CaseKind::CasePresentation,
                    pb::Trigger {
                        cancellation_grace: duration(3 * MINUTE),
                        ..trigger(T::Cancellation)
                    },
                    EveryTrigger,
                    vec![
                        send(Channel::Sms, "cancellation"),
                        wait_days_at(2, "10:00", true),
                        task(
                            "Call to rebook a cancelled appointment",
                            "The patient cancelled and has not rebooked.",
                        ),
                    ],
                )
            },
        },
        Spec {
            id: "post_consultation",
            name: "Post-consultation next step",
            description: "When a consultation ended without a next visit and none was booked within 2 \
                          days: an email with the next step, then a call task 5 days later",
            rule: rule(
                "Post-consultation next step",
                "treatment_follow_up",
                CaseKind::CasePresentation,
                pb::Trigger {
                    window: duration(2 * DAY),
                    ..trigger(T::ConsultationNoNextVisit)
                },
                EveryTrigger,
                vec![
                    send(Channel::Email, "consultation_no_next_visit"),
                    wait_days_at(5, "10:00", true),
                    task(
                        "Call about the next step after a consultation",
                        "No next visit booked since the consultation.",
                    ),
                ],
            ),
        },
        Spec {
            id: "lapsed_recall",
            name: "Lapsed patient recall",
            description: "12 months after the last attended visit with nothing booked: a recall SMS, and \
                          a recall email 14 days later",
            rule: rule(
                "Lapsed patient recall",
                "recall",
                CaseKind::CasePresentation,
                pb::Trigger {
                    lapsed_months: 12,
                    ..trigger(T::LapsedPatient)
                },
                EveryTrigger,
                vec![
                    wait_days_at(0, "10:00", true),
                    send(Channel::Sms, "lapsed_patient"),
                    wait_days_at(14, "10:00", true),
                    send(Channel::Email, "lapsed_patient"),
                ],
            ),
        },
        Spec {
            id: "referral_expiring",
            name: "Referral expiring",
            description: "14 days before an open care case (referral) expires: a task for the owner to \
                          renew it, and an SMS to the patient",
            rule: pb::Rule {
                condition: Some(care_case_open()),
                ..rule(
                    "Referral expiring",
                    "treatment_follow_up",
                    CaseKind::CareCase,
                    pb::Trigger {
                        window: duration(14 * DAY),
                        ..trigger(T::CareCaseExpiring)
                    },
                    OncePerCase,
                    vec![
                        wait_days_at(0, "09:00", true),
                        task(
                            "Renew an expiring referral",
                            "The care case expires in 14 days.",
                        ),
                        send(Channel::Sms, "care_case_expiring"),
                    ],
                )
            },
        },
    ]
}

/// Every shipped template (enabled_rule_id empty).
pub fn all() -> Vec<pb::RuleTemplate> {
    specs()
        .into_iter()
        .map(|spec| pb::RuleTemplate {
            template_id: spec.id.into(),
            name: spec.name.into(),
            description: spec.description.into(),
            rule: Some(spec.rule),
            enabled_rule_id: String::new(),
        })
        .collect()
}

pub fn find(template_id: &str) -> Option<pb::RuleTemplate> {
    all().into_iter().find(|t| t.template_id == template_id)
}
