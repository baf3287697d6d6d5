//! Automation rules: a trigger, conditions over case facts, a sequence of steps, and what stops it.

use chrono::Duration;
use followup_proto::followup::common::v1::{CaseKind, Channel, StopReason};
use followup_proto::followup::scheduler::v1::{EnrollmentMode, ScheduleZone, TriggerType};

use super::FieldError;
use super::condition::{self, Condition};
use super::schedule::{Timing, Wait, WaitUntil};

pub const MAX_STEPS: usize = 50;
pub const MAX_NAME: usize = 100;
/// Waits, windows and delays longer than this are surely a mistake (and would outlive the case).
pub const MAX_WAIT_DAYS: i64 = 730;
pub const DEFAULT_CANCELLATION_GRACE: Duration = Duration::minutes(3);
pub const MAX_CANCELLATION_GRACE: Duration = Duration::hours(24);

/// Stop conditions a rule uses when it names none.
pub const DEFAULT_STOP_REASONS: [StopReason; 7] = [
    StopReason::Booked,
    StopReason::Rejected,
    StopReason::PatientReplied,
    StopReason::OptedOut,
    StopReason::PlanCompleted,
    StopReason::PlanCancelled,
    StopReason::CaseClosed,
];

/// The reasons a rule may choose to stop on (the others are outcomes, not conditions).
pub const CHOOSABLE_STOP_REASONS: [StopReason; 8] = [
    StopReason::Booked,
    StopReason::Rejected,
    StopReason::PatientReplied,
    StopReason::OptedOut,
    StopReason::PlanCompleted,
    StopReason::PlanCancelled,
    StopReason::CaseClosed,
    StopReason::Approved,
];

#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub kind: TriggerType,
    pub window: Option<Duration>,
    pub lapsed_months: u32,
    pub session_threshold: u32,
    pub cancellation_grace: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Wait(Wait),
    Send {
        channel: Channel,
        template_key: String,
    },
    Task {
        title: String,
        description: String,
        due_in: Option<Duration>,
    },
    Webhook {
        endpoint_id: String,
    },
}

impl Action {
    /// The channel a firing step uses; None for waits.
    pub fn channel(&self) -> Option<Channel> {
        match self {
            Action::Wait(_) => None,
            Action::Send { channel, .. } => Some(*channel),
            Action::Task { .. } => Some(Channel::Task),
            Action::Webhook { .. } => Some(Channel::Webhook),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub action: Action,
    pub only_if: Option<Condition>,
}

/// One version of a rule, as it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleDef {
    pub name: String,
    pub category: String,
    pub transactional: bool,
    pub mode: EnrollmentMode,
    pub case_kind: CaseKind,
    pub trigger: Trigger,
    pub condition: Option<Condition>,
    pub steps: Vec<Step>,
    /// As configured; empty = [`DEFAULT_STOP_REASONS`].
    pub stop_reasons: Vec<StopReason>,
    pub owner_staff_id: String,
    pub schedule_zone: ScheduleZone,
    pub skip_missed_older_than: Option<Duration>,
}

impl RuleDef {
    /// Whether `reason` stops this rule's enrollments.
    pub fn stops_on(&self, reason: StopReason) -> bool {
        if self.stop_reasons.is_empty() {
            DEFAULT_STOP_REASONS.contains(&reason)
        } else {
            self.stop_reasons.contains(&reason)
        }
    }

    /// The channels its steps send on.
    pub fn channels(&self) -> impl Iterator<Item = Channel> + '_ {
        self.steps.iter().filter_map(|s| s.action.channel())
    }

    /// Timing of every step, for [`super::schedule::plan`].
    pub fn timings(&self) -> impl Iterator<Item = Timing<'_>> {
        self.steps.iter().map(|s| match &s.action {
            Action::Wait(wait) => Timing::Wait(wait),
            _ => Timing::Action,
        })
    }

    pub fn once_per_case(&self) -> bool {
        self.mode != EnrollmentMode::EveryTrigger
    }

    /// Checks what a rule must be to run. The first problem is returned, naming its field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(FieldError::new("name", "is required"));
        }
        if name.chars().count() > MAX_NAME {
            return Err(FieldError::new(
                "name",
                format!("at most {MAX_NAME} characters"),
            ));
        }
        if self.category.is_empty() {
            return Err(FieldError::new(
                "category",
                "is required: the unsubscribe category of its messages, e.g. treatment_follow_up",
            ));
        }
        if !is_key(&self.category, 64) {
            return Err(FieldError::new(
                "category",
                "use 1-64 lower-case letters, digits or _ (e.g. treatment_follow_up)",
            ));
        }
        self.validate_trigger()?;
        if let Some(condition) = &self.condition {
            condition::validate(condition, "condition")?;
        }
        self.validate_steps()?;
        for (i, reason) in self.stop_reasons.iter().enumerate() {
            if !CHOOSABLE_STOP_REASONS.contains(reason) {
                return Err(FieldError::new(
                    format!("stop_reasons[{i}]"),
                    format!(
                        "{} is not a stop condition (choose among BOOKED, REJECTED, PATIENT_REPLIED, \
                         OPTED_OUT, PLAN_COMPLETED, PLAN_CANCELLED, CASE_CLOSED, APPROVED)",
                        reason.as_str_name()
                    ),
                ));
            }
        }
        if self.owner_staff_id.chars().count() > 128 {
            return Err(FieldError::new("owner_staff_id", "at most 128 characters"));
        }
        if let Some(limit) = self.skip_missed_older_than
            && limit < Duration::zero()
        {
            return Err(FieldError::new(
                "skip_missed_older_than",
                "must not be negative",
            ));
        }
        Ok(())
    }

    fn validate_trigger(&self) -> Result<(), FieldError> {
        use TriggerType as T;
        let trigger = &self.trigger;
        let kind_name = trigger
            .kind
            .as_str_name()
            .strip_prefix("TRIGGER_TYPE_")
            .unwrap_or("UNSPECIFIED");
        if trigger.kind == T::Unspecified {
            return Err(FieldError::new("trigger.type", "is required"));
        }
        if self.case_kind == CaseKind::Unspecified {
            return Err(FieldError::new(
                "case_kind",
                "is required: CASE_PRESENTATION or CARE_CASE",
            ));
        }
        let needs = match trigger.kind {
            T::PlanSent | T::PlanViewedNoResponse | T::QuoteUnanswered => {
                Some(CaseKind::CasePresentation)
            }
            T::CareCaseExpiring | T::CareCaseSessionsReached => Some(CaseKind::CareCase),
            _ => None,
        };
        if let Some(needed) = needs
            && needed != self.case_kind
        {
            return Err(FieldError::new(
                "case_kind",
                format!(
                    "{kind_name} starts {} rules, not {}",
                    needed.as_str_name().trim_start_matches("CASE_KIND_"),
                    self.case_kind
                        .as_str_name()
                        .trim_start_matches("CASE_KIND_")
                ),
            ));
        }
        let window_needed = matches!(
            trigger.kind,
            T::PlanViewedNoResponse
                | T::QuoteUnanswered
                | T::ConsultationNoNextVisit
                | T::CareCaseExpiring
        );
        match (trigger.window, window_needed) {
            (None, true) => {
                return Err(FieldError::new(
                    "trigger.window",
                    format!("is required for {kind_name}"),
                ));
            }
            (Some(window), true) if window <= Duration::zero() => {
                return Err(FieldError::new("trigger.window", "must be positive"));
            }
            (Some(window), true) if window > Duration::days(MAX_WAIT_DAYS) => {
                return Err(FieldError::new(
                    "trigger.window",
                    format!("at most {MAX_WAIT_DAYS} days"),
                ));
            }
            _ => {}
        }
        if trigger.kind == T::LapsedPatient && !(1..=60).contains(&trigger.lapsed_months) {
            return Err(FieldError::new(
                "trigger.lapsed_months",
                "is required for LAPSED_PATIENT: 1 to 60 months",
            ));
        }
        if trigger.kind == T::CareCaseSessionsReached && self.mode == EnrollmentMode::EveryTrigger {
            return Err(FieldError::new(
                "mode",
                "CARE_CASE_SESSIONS_REACHED fires once per case: use ONCE_PER_CASE",
            ));
        }
        if trigger.kind == T::CareCaseSessionsReached && trigger.session_threshold < 1 {
            return Err(FieldError::new(
                "trigger.session_threshold",
                "is required for CARE_CASE_SESSIONS_REACHED: at least 1",
            ));
        }
        if trigger.cancellation_grace < Duration::zero()
            || trigger.cancellation_grace > MAX_CANCELLATION_GRACE
        {
            return Err(FieldError::new(
                "trigger.cancellation_grace",
                "between 0 and 24 hours",
            ));
        }
        Ok(())
    }

    fn validate_steps(&self) -> Result<(), FieldError> {
        if self.steps.is_empty() {
            return Err(FieldError::new(
                "steps",
                "at least one step that sends, creates a task or calls a webhook",
            ));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(FieldError::new(
                "steps",
                format!("at most {MAX_STEPS} steps"),
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            let path = format!("steps[{i}]");
            match &step.action {
                Action::Wait(wait) => {
                    match wait.until {
                        WaitUntil::For(length) if length < Duration::seconds(1) => {
                            return Err(FieldError::new(
                                format!("{path}.wait.duration"),
                                "at least 1 second",
                            ));
                        }
                        WaitUntil::For(length) if length > Duration::days(MAX_WAIT_DAYS) => {
                            return Err(FieldError::new(
                                format!("{path}.wait.duration"),
                                format!("at most {MAX_WAIT_DAYS} days"),
                            ));
                        }
                        WaitUntil::DaysAt { days, .. } if i64::from(days) > MAX_WAIT_DAYS => {
                            return Err(FieldError::new(
                                format!("{path}.wait.days_at_time.days"),
                                format!("0 to {MAX_WAIT_DAYS}"),
                            ));
                        }
                        _ => {}
                    }
                    if step.only_if.is_some() {
                        return Err(FieldError::new(
                            format!("{path}.only_if"),
                            "a wait has no guard; put it on the step that fires",
                        ));
                    }
                }
                Action::Send {
                    channel,
                    template_key,
                } => {
                    if !matches!(channel, Channel::Sms | Channel::Email | Channel::Chat) {
                        return Err(FieldError::new(
                            format!("{path}.send.channel"),
                            "SMS, EMAIL or CHAT (tasks and webhooks are their own steps)",
                        ));
                    }
                    if !is_template_key(template_key) {
                        return Err(FieldError::new(
                            format!("{path}.send.template_key"),
                            "is required: 1-100 letters, digits, _ . or -",
                        ));
                    }
                }
                Action::Task {
                    title,
                    description,
                    due_in,
                } => {
                    if title.trim().is_empty() || title.chars().count() > 200 {
                        return Err(FieldError::new(
                            format!("{path}.task.title"),
                            "is required, at most 200 characters",
                        ));
                    }
                    if description.chars().count() > 2000 {
                        return Err(FieldError::new(
                            format!("{path}.task.description"),
                            "at most 2000 characters",
                        ));
                    }
                    if let Some(due_in) = due_in
                        && (*due_in < Duration::zero() || *due_in > Duration::days(MAX_WAIT_DAYS))
                    {
                        return Err(FieldError::new(
                            format!("{path}.task.due_in"),
                            format!("0 to {MAX_WAIT_DAYS} days"),
                        ));
                    }
                }
                Action::Webhook { endpoint_id } => {
                    if endpoint_id.chars().count() > 128 {
                        return Err(FieldError::new(
                            format!("{path}.webhook.webhook_endpoint_id"),
                            "at most 128 characters",
                        ));
                    }
                }
            }
            if let Some(guard) = &step.only_if {
                condition::validate(guard, &format!("{path}.only_if"))?;
            }
        }
        if let Some(last) = self.steps.last()
            && matches!(last.action, Action::Wait(_))
        {
            return Err(FieldError::new(
                format!("steps[{}]", self.steps.len() - 1),
                "a sequence cannot end with a wait: nothing would follow it",
            ));
        }
        Ok(())
    }
}

fn is_key(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_template_key(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 100
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::condition::{Comparison, Value};
    use crate::domain::schedule::parse_local_time;
    use followup_proto::followup::scheduler::v1::{CaseField, Operator};

    pub fn plan_follow_up() -> RuleDef {
        let wait = |days| Step {
            action: Action::Wait(Wait {
                until: WaitUntil::DaysAt {
                    days,
                    time: parse_local_time("10:00").unwrap_or_default(),
                },
                skip_weekends: false,
                skip_closed_days: false,
            }),
            only_if: None,
        };
        let send = |key: &str| Step {
            action: Action::Send {
                channel: Channel::Sms,
                template_key: key.into(),
            },
            only_if: None,
        };
        RuleDef {
            name: "Plan follow-up".into(),
            category: "treatment_follow_up".into(),
            transactional: false,
            mode: EnrollmentMode::OncePerCase,
            case_kind: CaseKind::CasePresentation,
            trigger: Trigger {
                kind: TriggerType::PlanSent,
                window: None,
                lapsed_months: 0,
                session_threshold: 0,
                cancellation_grace: DEFAULT_CANCELLATION_GRACE,
            },
            condition: None,
            steps: vec![
                wait(7),
                send("plan_follow_up_1"),
                wait(7),
                send("plan_follow_up_2"),
            ],
            stop_reasons: vec![],
            owner_staff_id: String::new(),
            schedule_zone: ScheduleZone::Clinic,
            skip_missed_older_than: None,
        }
    }

    #[test]
    fn a_good_rule_passes() {
        assert_eq!(plan_follow_up().validate(), Ok(()));
        assert!(plan_follow_up().stops_on(StopReason::Booked));
        assert!(!plan_follow_up().stops_on(StopReason::Approved));
    }

    #[test]
    fn each_problem_names_its_field() {
        type Breaker = fn(&mut RuleDef);
        let cases: Vec<(Breaker, &str, &str)> = vec![
            (|r| r.name = " ".into(), "name", "required"),
            (|r| r.name = "x".repeat(101), "name", "100"),
            (|r| r.category = String::new(), "category", "required"),
            (
                |r| r.category = "Treatment Follow-up".into(),
                "category",
                "lower-case",
            ),
            (
                |r| r.trigger.kind = TriggerType::Unspecified,
                "trigger.type",
                "required",
            ),
            (
                |r| r.case_kind = CaseKind::CareCase,
                "case_kind",
                "PLAN_SENT starts CASE_PRESENTATION",
            ),
            (
                |r| r.trigger.kind = TriggerType::PlanViewedNoResponse,
                "trigger.window",
                "required for PLAN_VIEWED_NO_RESPONSE",
            ),
            (
                |r| {
                    r.trigger.kind = TriggerType::QuoteUnanswered;
                    r.trigger.window = Some(Duration::zero());
                },
                "trigger.window",
                "positive",
            ),
            (
                |r| {
                    r.trigger.kind = TriggerType::LapsedPatient;
                },
                "trigger.lapsed_months",
                "1 to 60",
            ),
            (
                |r| {
                    r.case_kind = CaseKind::CareCase;
                    r.trigger.kind = TriggerType::CareCaseSessionsReached;
                },
                "trigger.session_threshold",
                "at least 1",
            ),
            (
                |r| r.trigger.cancellation_grace = Duration::hours(25),
                "trigger.cancellation_grace",
                "24 hours",
            ),
            (|r| r.steps.clear(), "steps", "at least one"),
            (
                |r| {
                    r.steps.pop();
                },
                "steps[2]",
                "cannot end with a wait",
            ),
            (
                |r| {
                    r.steps[1].action = Action::Send {
                        channel: Channel::Task,
                        template_key: "x".into(),
                    }
                },
                "steps[1].send.channel",
                "SMS, EMAIL or CHAT",
            ),
            (
                |r| {
                    r.steps[1].action = Action::Send {
                        channel: Channel::Sms,
                        template_key: String::new(),
                    }
                },
                "steps[1].send.template_key",
                "required",
            ),
            (
                |r| {
                    r.steps[0].action = Action::Wait(Wait {
                        until: WaitUntil::For(Duration::zero()),
                        skip_weekends: false,
                        skip_closed_days: false,
                    })
                },
                "steps[0].wait.duration",
                "1 second",
            ),
            (
                |r| {
                    r.steps[1].action = Action::Task {
                        title: String::new(),
                        description: String::new(),
                        due_in: None,
                    }
                },
                "steps[1].task.title",
                "required",
            ),
            (
                |r| {
                    r.steps[3].only_if = Some(Condition::Compare(Comparison {
                        field: CaseField::SessionsDone,
                        operator: Operator::Contains,
                        value: Value::Number(1.0),
                        upper: None,
                    }))
                },
                "steps[3].only_if.comparison",
                "CONTAINS does not fit SESSIONS_DONE",
            ),
            (
                |r| r.steps[0].only_if = Some(Condition::All(vec![])),
                "steps[0].only_if",
                "no guard",
            ),
            (
                |r| r.stop_reasons = vec![StopReason::Booked, StopReason::SequenceFinished],
                "stop_reasons[1]",
                "not a stop condition",
            ),
            (
                |r| {
                    r.condition = Some(Condition::Compare(Comparison {
                        field: CaseField::CaseName,
                        operator: Operator::Gt,
                        value: Value::Text("a".into()),
                        upper: None,
                    }))
                },
                "condition.comparison",
                "GT does not fit CASE_NAME",
            ),
        ];
        for (breaker, path, message) in cases {
            let mut rule = plan_follow_up();
            breaker(&mut rule);
            let err = rule.validate().expect_err(path);
            assert_eq!(err.path, path, "{err}");
            assert!(err.message.contains(message), "{err}");
        }
    }
}
