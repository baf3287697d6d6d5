//! Between the wire (protobuf) and the domain: a rule as clients write it and as it is stored (the
//! `followup.scheduler.v1.Rule` message, whose compatibility rules keep old versions readable) becomes a
//! [`RuleDef`] the domain validates and runs.

use chrono::{DateTime, Duration, Utc};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::scheduler::v1 as pb;

use crate::domain::FieldError;
use crate::domain::condition::{Comparison, Condition, Value};
use crate::domain::facts::{CaseFacts, Money};
use crate::domain::rule::{Action, DEFAULT_CANCELLATION_GRACE, RuleDef, Step, Trigger};
use crate::domain::schedule::{Wait, WaitUntil, parse_date, parse_local_time};

pub fn duration_from(d: &prost_types::Duration, path: &str) -> Result<Duration, FieldError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(FieldError::new(path, "must not be negative"));
    }
    if d.seconds > 100 * 365 * 86_400 {
        return Err(FieldError::new(path, "is far too long"));
    }
    Ok(Duration::seconds(d.seconds) + Duration::nanoseconds(i64::from(d.nanos)))
}

pub fn duration_to(d: Duration) -> prost_types::Duration {
    let seconds = d.num_seconds();
    let nanos = (d - Duration::seconds(seconds))
        .num_nanoseconds()
        .unwrap_or(0) as i32;
    prost_types::Duration { seconds, nanos }
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    followup_platform::event::timestamp(at)
}

pub fn enum_value<E: TryFrom<i32>>(raw: i32, path: &str) -> Result<E, FieldError> {
    E::try_from(raw).map_err(|_| FieldError::new(path, format!("unknown value {raw}")))
}

/// Reads a rule as written by a client (output-only fields ignored). Structural problems (a missing
/// oneof, a malformed date or time) are reported here; what a valid rule must be is
/// [`RuleDef::validate`]'s.
pub fn rule_from_proto(rule: &pb::Rule) -> Result<RuleDef, FieldError> {
    let trigger = rule.trigger.unwrap_or_default();
    let window = trigger
        .window
        .as_ref()
        .map(|d| duration_from(d, "trigger.window"))
        .transpose()?;
    let cancellation_grace = trigger
        .cancellation_grace
        .as_ref()
        .map(|d| duration_from(d, "trigger.cancellation_grace"))
        .transpose()?
        .unwrap_or(DEFAULT_CANCELLATION_GRACE);
    let non_negative = |n: i32, path: &str| {
        u32::try_from(n).map_err(|_| FieldError::new(path, "must not be negative"))
    };
    let condition = rule
        .condition
        .as_ref()
        .map(|c| condition_from_proto(c, "condition"))
        .transpose()?;
    let steps = rule
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| step_from_proto(s, &format!("steps[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let stop_reasons = rule
        .stop_reasons
        .iter()
        .enumerate()
        .map(|(i, r)| enum_value::<common::StopReason>(*r, &format!("stop_reasons[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mode = match enum_value::<pb::EnrollmentMode>(rule.mode, "mode")? {
        pb::EnrollmentMode::Unspecified => pb::EnrollmentMode::OncePerCase,
        other => other,
    };
    let schedule_zone = match enum_value::<pb::ScheduleZone>(rule.schedule_zone, "schedule_zone")? {
        pb::ScheduleZone::Unspecified => pb::ScheduleZone::Clinic,
        other => other,
    };
    Ok(RuleDef {
        name: rule.name.trim().to_string(),
        category: rule.category.trim().to_string(),
        transactional: rule.transactional,
        mode,
        case_kind: enum_value(rule.case_kind, "case_kind")?,
        trigger: Trigger {
            kind: enum_value(trigger.r#type, "trigger.type")?,
            window,
            lapsed_months: non_negative(trigger.lapsed_months, "trigger.lapsed_months")?,
            session_threshold: non_negative(
                trigger.session_threshold,
                "trigger.session_threshold",
            )?,
            cancellation_grace,
        },
        condition,
        steps,
        stop_reasons,
        owner_staff_id: rule.owner_staff_id.trim().to_string(),
        schedule_zone,
        skip_missed_older_than: rule
            .skip_missed_older_than
            .as_ref()
            .map(|d| duration_from(d, "skip_missed_older_than"))
            .transpose()?,
    })
}

/// Reads and validates: what CreateRule and UpdateRule accept.
pub fn valid_rule(rule: &pb::Rule) -> Result<RuleDef, FieldError> {
    let def = rule_from_proto(rule)?;
    def.validate()?;
    Ok(def)
}

fn step_from_proto(step: &pb::Step, path: &str) -> Result<Step, FieldError> {
    use pb::step::Action as A;
    let action = match &step.action {
        None => {
            return Err(FieldError::new(
                path,
                "needs one action: wait, send, task or webhook",
            ));
        }
        Some(A::Wait(wait)) => {
            let until = match &wait.until {
                None => {
                    return Err(FieldError::new(
                        format!("{path}.wait"),
                        "needs duration or days_at_time",
                    ));
                }
                Some(pb::wait_action::Until::Duration(d)) => {
                    WaitUntil::For(duration_from(d, &format!("{path}.wait.duration"))?)
                }
                Some(pb::wait_action::Until::DaysAtTime(at)) => WaitUntil::DaysAt {
                    days: u32::try_from(at.days).map_err(|_| {
                        FieldError::new(
                            format!("{path}.wait.days_at_time.days"),
                            "must not be negative",
                        )
                    })?,
                    time: parse_local_time(&at.local_time).ok_or_else(|| {
                        FieldError::new(
                            format!("{path}.wait.days_at_time.local_time"),
                            format!("`{}` is not a local time HH:MM (24 h)", at.local_time),
                        )
                    })?,
                },
            };
            Action::Wait(Wait {
                until,
                skip_weekends: wait.skip_weekends,
                skip_closed_days: wait.skip_closed_days,
            })
        }
        Some(A::Send(send)) => Action::Send {
            channel: enum_value(send.channel, &format!("{path}.send.channel"))?,
            template_key: send.template_key.trim().to_string(),
        },
        Some(A::Task(task)) => Action::Task {
            title: task.title.trim().to_string(),
            description: task.description.clone(),
            due_in: task
                .due_in
                .as_ref()
                .map(|d| duration_from(d, &format!("{path}.task.due_in")))
                .transpose()?,
        },
        Some(A::Webhook(hook)) => Action::Webhook {
            endpoint_id: hook.webhook_endpoint_id.trim().to_string(),
        },
    };
    Ok(Step {
        action,
        only_if: step
            .only_if
            .as_ref()
            .map(|c| condition_from_proto(c, &format!("{path}.only_if")))
            .transpose()?,
    })
}

pub fn condition_from_proto(
    condition: &pb::Condition,
    path: &str,
) -> Result<Condition, FieldError> {
    use pb::condition::Kind;
    fn group(g: &pb::ConditionGroup, path: &str, name: &str) -> Result<Vec<Condition>, FieldError> {
        // Deep nesting is refused by validation; parsing stops early too, so a hostile request cannot
        // recurse far.
        if path.matches('[').count() > crate::domain::condition::MAX_DEPTH {
            return Err(FieldError::new(path, "conditions nest too deep"));
        }
        g.conditions
            .iter()
            .enumerate()
            .map(|(i, c)| condition_from_proto(c, &format!("{path}.{name}[{i}]")))
            .collect()
    }
    match &condition.kind {
        None => Err(FieldError::new(path, "needs all, any or comparison")),
        Some(Kind::All(g)) => Ok(Condition::All(group(g, path, "all")?)),
        Some(Kind::Any(g)) => Ok(Condition::Any(group(g, path, "any")?)),
        Some(Kind::Comparison(c)) => {
            let path = format!("{path}.comparison");
            Ok(Condition::Compare(Comparison {
                field: enum_value(c.field, &format!("{path}.field"))?,
                operator: enum_value(c.operator, &format!("{path}.operator"))?,
                value: value_from_proto(c.value.as_ref(), &format!("{path}.value"))?,
                upper: c
                    .upper
                    .as_ref()
                    .map(|u| value_from_proto(Some(u), &format!("{path}.upper")))
                    .transpose()?,
            }))
        }
    }
}

fn value_from_proto(value: Option<&pb::Value>, path: &str) -> Result<Value, FieldError> {
    use pb::value::Kind;
    match value.and_then(|v| v.kind.as_ref()) {
        None => Err(FieldError::new(path, "is required")),
        Some(Kind::Number(n)) => Ok(Value::Number(*n)),
        Some(Kind::Text(t)) => Ok(Value::Text(t.clone())),
        Some(Kind::Flag(b)) => Ok(Value::Flag(*b)),
        Some(Kind::Date(d)) => parse_date(d)
            .map(Value::Date)
            .ok_or_else(|| FieldError::new(path, format!("`{d}` is not a date YYYY-MM-DD"))),
        Some(Kind::DaysFromToday(d)) => Ok(Value::DaysFromToday(*d)),
        Some(Kind::Money(m)) => Ok(Value::Money(Money::new(m.amount_minor, m.currency.clone()))),
        Some(Kind::CaseStatus(s)) => Ok(Value::CaseStatus(enum_value(*s, path)?)),
        Some(Kind::CareCaseStatus(s)) => Ok(Value::CareCaseStatus(enum_value(*s, path)?)),
    }
}

pub fn money_to(m: &Money) -> common::Money {
    common::Money {
        amount_minor: m.amount_minor,
        currency: m.currency.clone(),
    }
}

pub fn money_from(m: Option<&common::Money>) -> Option<Money> {
    m.filter(|m| !m.currency.is_empty())
        .map(|m| Money::new(m.amount_minor, m.currency.clone()))
}

pub fn case_ref(kind: common::CaseKind, id: &str) -> Option<common::CaseRef> {
    use common::case_ref::Target;
    let target = match kind {
        common::CaseKind::CasePresentation => Target::PlanId(id.to_string()),
        common::CaseKind::CareCase => Target::CareCaseId(id.to_string()),
        common::CaseKind::Unspecified => return None,
    };
    Some(common::CaseRef {
        target: Some(target),
    })
}

/// The kind and id a CaseRef names; None when it names nothing.
pub fn case_from_ref(case: Option<&common::CaseRef>) -> Option<(common::CaseKind, String)> {
    use common::case_ref::Target;
    match case.and_then(|c| c.target.as_ref()) {
        Some(Target::PlanId(id)) if !id.is_empty() => {
            Some((common::CaseKind::CasePresentation, id.clone()))
        }
        Some(Target::CareCaseId(id)) if !id.is_empty() => {
            Some((common::CaseKind::CareCase, id.clone()))
        }
        _ => None,
    }
}

/// The facts as the API shows them, with the derived ones.
pub struct FactsView<'a> {
    pub facts: &'a CaseFacts,
    pub case_id: &'a str,
    pub patient_id: &'a str,
    pub tz: chrono_tz::Tz,
    pub today: chrono::NaiveDate,
    pub updated_at: Option<DateTime<Utc>>,
}

pub fn facts_to_proto(view: FactsView<'_>) -> pb::CaseFacts {
    let facts = view.facts;
    let derived = facts.derived(view.today, view.tz);
    pb::CaseFacts {
        case_ref: case_ref(facts.kind, view.case_id),
        case_kind: facts.kind as i32,
        patient_id: view.patient_id.to_string(),
        name: facts.name.clone(),
        open_closed: facts.care_case_status() as i32,
        issue_date: facts.issue_date.map(|d| d.to_string()).unwrap_or_default(),
        expiry_date: facts.expiry_date.map(|d| d.to_string()).unwrap_or_default(),
        max_sessions: facts.max_sessions,
        sessions_booked: facts.sessions_booked,
        sessions_done: facts.sessions_done,
        total_invoiced: facts.total_invoiced.as_ref().map(money_to),
        invoiceable_amount: facts.invoiceable_amount.as_ref().map(money_to),
        presentation_status: facts.presentation_status.map(|s| s as i32).unwrap_or(0),
        viewed: facts.viewed,
        sent_time: facts.sent_at.map(timestamp),
        value: facts.value.as_ref().map(money_to),
        time_zone: view.tz.name().to_string(),
        sessions_left: derived.sessions_left.unwrap_or(0),
        invoiceable_amount_left: derived.invoiceable_amount_left.as_ref().map(money_to),
        percent_sessions_booked: derived.percent_sessions_booked.unwrap_or(0.0),
        percent_sessions_done: derived.percent_sessions_done.unwrap_or(0.0),
        percent_invoiced: derived.percent_invoiced.unwrap_or(0.0),
        days_since_sent: derived
            .days_since_sent
            .and_then(|d| i32::try_from(d).ok())
            .unwrap_or(0),
        update_time: view.updated_at.map(timestamp),
    }
}

/// Made-up facts (a preview): what conditions read, checked like any request. Derived fields are
/// ignored (they are computed).
pub fn facts_from_proto(f: &pb::CaseFacts, path: &str) -> Result<CaseFacts, FieldError> {
    let kind = match enum_value::<common::CaseKind>(f.case_kind, &format!("{path}.case_kind"))? {
        common::CaseKind::Unspecified => {
            return Err(FieldError::new(
                format!("{path}.case_kind"),
                "is required: CASE_PRESENTATION or CARE_CASE",
            ));
        }
        kind => kind,
    };
    let date = |text: &str, field: &str| -> Result<Option<chrono::NaiveDate>, FieldError> {
        if text.is_empty() {
            return Ok(None);
        }
        parse_date(text).map(Some).ok_or_else(|| {
            FieldError::new(
                format!("{path}.{field}"),
                format!("`{text}` is not a date YYYY-MM-DD"),
            )
        })
    };
    let money = |m: Option<&common::Money>, field: &str| -> Result<Option<Money>, FieldError> {
        match money_from(m) {
            Some(m) if !crate::domain::condition::is_currency(&m.currency) => Err(FieldError::new(
                format!("{path}.{field}.currency"),
                "must be an ISO 4217 code such as USD",
            )),
            other => Ok(other),
        }
    };
    let status = match f.presentation_status {
        0 => None,
        s => Some(enum_value::<common::CaseStatus>(
            s,
            &format!("{path}.presentation_status"),
        )?),
    };
    if f.max_sessions < 0 || f.sessions_booked < 0 || f.sessions_done < 0 {
        return Err(FieldError::new(
            format!("{path}.sessions_done"),
            "session counts must not be negative",
        ));
    }
    Ok(CaseFacts {
        kind,
        name: f.name.clone(),
        open: f.open_closed != common::CareCaseStatus::Closed as i32
            && !status.is_some_and(crate::domain::facts::is_closed_status),
        issue_date: date(&f.issue_date, "issue_date")?,
        expiry_date: date(&f.expiry_date, "expiry_date")?,
        max_sessions: f.max_sessions,
        sessions_booked: f.sessions_booked,
        sessions_done: f.sessions_done,
        total_invoiced: money(f.total_invoiced.as_ref(), "total_invoiced")?,
        invoiceable_amount: money(f.invoiceable_amount.as_ref(), "invoiceable_amount")?,
        presentation_status: status,
        viewed: f.viewed,
        sent_at: f
            .sent_time
            .as_ref()
            .and_then(followup_platform::event::from_timestamp),
        value: money(f.value.as_ref(), "value")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates;

    #[test]
    fn every_shipped_template_is_a_valid_rule() {
        for template in templates::all() {
            let rule = template.rule.clone().unwrap_or_default();
            let def = valid_rule(&rule)
                .unwrap_or_else(|e| panic!("template {}: {e}", template.template_id));
            assert!(!def.steps.is_empty());
        }
    }

    #[test]
    fn structural_problems_name_their_field() {
        let mut rule = templates::all()[0].rule.clone().unwrap_or_default();
        rule.steps[0].action = Some(pb::step::Action::Wait(pb::WaitAction {
            until: Some(pb::wait_action::Until::DaysAtTime(pb::DaysAtTime {
                days: 7,
                local_time: "25:00".into(),
            })),
            ..Default::default()
        }));
        let err = valid_rule(&rule).expect_err("bad time");
        assert_eq!(err.path, "steps[0].wait.days_at_time.local_time");

        let mut rule = templates::all()[0].rule.clone().unwrap_or_default();
        rule.condition = Some(pb::Condition {
            kind: Some(pb::condition::Kind::Comparison(pb::Comparison {
                field: pb::CaseField::ExpiryDate as i32,
                operator: pb::Operator::Lt as i32,
                value: Some(pb::Value {
                    kind: Some(pb::value::Kind::Date("2026-02-30".into())),
                }),
                upper: None,
            })),
        });
        let err = valid_rule(&rule).expect_err("bad date");
        assert_eq!(err.path, "condition.comparison.value");

        let mut rule = templates::all()[0].rule.clone().unwrap_or_default();
        rule.trigger = Some(pb::Trigger {
            r#type: 99,
            ..Default::default()
        });
        assert_eq!(valid_rule(&rule).expect_err("enum").path, "trigger.type");
    }

    #[test]
    fn durations_round_trip() {
        for d in [
            Duration::seconds(90),
            Duration::milliseconds(1500),
            Duration::days(7),
        ] {
            assert_eq!(duration_from(&duration_to(d), "x"), Ok(d));
        }
        assert!(
            duration_from(
                &prost_types::Duration {
                    seconds: -1,
                    nanos: 0
                },
                "x"
            )
            .is_err()
        );
    }
}
