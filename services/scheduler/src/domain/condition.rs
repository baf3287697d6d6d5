//! Conditions over case facts: comparisons combined with and/or, with the operators that fit each fact's
//! type, validated when a rule is saved (naming the bad field) and evaluated when a case enters a rule or
//! a guarded step fires.
//!
//! A comparison on a fact the case does not have (no expiry date, no maximum of sessions, an amount in
//! another currency, a presentation-only fact on a care case) does not hold, whatever the operator: a
//! rule never acts on a guess.

use chrono::{Duration, NaiveDate};
use chrono_tz::Tz;
use followup_proto::followup::common::v1::{CareCaseStatus, CaseStatus};
use followup_proto::followup::scheduler::v1::{CaseField, Operator};

use super::FieldError;
use super::facts::{CaseFacts, Derived, Money};

/// Nesting deeper than this is refused: no real rule needs it, and evaluation stays cheap.
pub const MAX_DEPTH: usize = 6;
/// Comparisons in one condition, at most.
pub const MAX_COMPARISONS: usize = 50;

#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Compare(Comparison),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub field: CaseField,
    pub operator: Operator,
    pub value: Value,
    /// BETWEEN only.
    pub upper: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
    Flag(bool),
    Date(NaiveDate),
    /// Relative to the day of evaluation, clinic-local.
    DaysFromToday(i32),
    Money(Money),
    CaseStatus(CaseStatus),
    CareCaseStatus(CareCaseStatus),
}

impl Value {
    fn kind_name(&self) -> &'static str {
        match self {
            Value::Number(_) => "number",
            Value::Text(_) => "text",
            Value::Flag(_) => "flag",
            Value::Date(_) => "date",
            Value::DaysFromToday(_) => "days_from_today",
            Value::Money(_) => "money",
            Value::CaseStatus(_) => "case_status",
            Value::CareCaseStatus(_) => "care_case_status",
        }
    }
}

/// The type of a fact, which decides the values and operators that fit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FactType {
    OpenClosed,
    Date,
    Text,
    Number,
    /// A number from 0 to 100.
    Percent,
    Money,
    Status,
    Flag,
}

fn fact_type(field: CaseField) -> Option<FactType> {
    use CaseField as F;
    Some(match field {
        F::Unspecified => return None,
        F::OpenClosed => FactType::OpenClosed,
        F::IssueDate | F::ExpiryDate => FactType::Date,
        F::CaseName => FactType::Text,
        F::SessionsDone | F::SessionsLeft | F::MaxSessions | F::DaysSinceSent => FactType::Number,
        F::PercentSessionsBooked | F::PercentSessionsDone | F::PercentInvoiced => FactType::Percent,
        F::TotalInvoiced | F::InvoiceableAmountLeft | F::Value => FactType::Money,
        F::PresentationStatus => FactType::Status,
        F::Viewed => FactType::Flag,
    })
}

fn operators(fact: FactType) -> &'static [Operator] {
    use Operator as O;
    const ORDERED: &[Operator] = &[O::Eq, O::Ne, O::Lt, O::Le, O::Gt, O::Ge, O::Between];
    match fact {
        FactType::OpenClosed | FactType::Status | FactType::Flag => &[O::Eq, O::Ne],
        FactType::Text => &[O::Eq, O::Ne, O::Contains],
        FactType::Date | FactType::Number | FactType::Percent | FactType::Money => ORDERED,
    }
}

fn fits(fact: FactType, value: &Value) -> bool {
    matches!(
        (fact, value),
        (FactType::OpenClosed, Value::CareCaseStatus(_))
            | (FactType::Date, Value::Date(_) | Value::DaysFromToday(_))
            | (FactType::Text, Value::Text(_))
            | (FactType::Number | FactType::Percent, Value::Number(_))
            | (FactType::Money, Value::Money(_))
            | (FactType::Status, Value::CaseStatus(_))
            | (FactType::Flag, Value::Flag(_))
    )
}

/// The short name of a field as people read it: `SESSIONS_DONE`.
pub fn field_name(field: CaseField) -> &'static str {
    field
        .as_str_name()
        .strip_prefix("CASE_FIELD_")
        .unwrap_or("UNSPECIFIED")
}

fn operator_name(operator: Operator) -> &'static str {
    operator
        .as_str_name()
        .strip_prefix("OPERATOR_")
        .unwrap_or("UNSPECIFIED")
}

/// Checks a condition tree; `path` is where it sits in the rule, e.g. `condition` or `steps[2].only_if`.
pub fn validate(condition: &Condition, path: &str) -> Result<(), FieldError> {
    let mut comparisons = 0;
    validate_at(condition, path, 1, &mut comparisons)
}

fn validate_at(
    condition: &Condition,
    path: &str,
    depth: usize,
    comparisons: &mut usize,
) -> Result<(), FieldError> {
    if depth > MAX_DEPTH {
        return Err(FieldError::new(
            path,
            format!("conditions nest at most {MAX_DEPTH} deep"),
        ));
    }
    match condition {
        Condition::All(children) | Condition::Any(children) => {
            let group = if matches!(condition, Condition::All(_)) {
                "all"
            } else {
                "any"
            };
            if children.is_empty() {
                return Err(FieldError::new(
                    format!("{path}.{group}"),
                    "a group needs at least one condition",
                ));
            }
            for (i, child) in children.iter().enumerate() {
                validate_at(
                    child,
                    &format!("{path}.{group}[{i}]"),
                    depth + 1,
                    comparisons,
                )?;
            }
            Ok(())
        }
        Condition::Compare(comparison) => {
            *comparisons += 1;
            if *comparisons > MAX_COMPARISONS {
                return Err(FieldError::new(
                    path,
                    format!("a condition has at most {MAX_COMPARISONS} comparisons"),
                ));
            }
            validate_comparison(comparison, &format!("{path}.comparison"))
        }
    }
}

fn validate_comparison(c: &Comparison, path: &str) -> Result<(), FieldError> {
    let Some(fact) = fact_type(c.field) else {
        return Err(FieldError::new(format!("{path}.field"), "is required"));
    };
    let field = field_name(c.field);
    if c.operator == Operator::Unspecified {
        return Err(FieldError::new(format!("{path}.operator"), "is required"));
    }
    if !operators(fact).contains(&c.operator) {
        let allowed: Vec<&str> = operators(fact).iter().map(|o| operator_name(*o)).collect();
        return Err(FieldError::new(
            path,
            format!(
                "{} does not fit {field} (use {})",
                operator_name(c.operator),
                allowed.join(", ")
            ),
        ));
    }
    check_value(fact, field, &c.value, &format!("{path}.value"))?;
    match (&c.upper, c.operator == Operator::Between) {
        (None, true) => Err(FieldError::new(
            format!("{path}.upper"),
            "BETWEEN needs an upper bound",
        )),
        (Some(_), false) => Err(FieldError::new(
            format!("{path}.upper"),
            "only BETWEEN takes an upper bound",
        )),
        (None, false) => Ok(()),
        (Some(upper), true) => {
            check_value(fact, field, upper, &format!("{path}.upper"))?;
            let ordered = match (&c.value, upper) {
                (Value::Number(a), Value::Number(b)) => a <= b,
                (Value::Date(a), Value::Date(b)) => a <= b,
                (Value::DaysFromToday(a), Value::DaysFromToday(b)) => a <= b,
                (Value::Money(a), Value::Money(b)) => {
                    if a.currency != b.currency {
                        return Err(FieldError::new(
                            format!("{path}.upper"),
                            "the bounds must be in the same currency",
                        ));
                    }
                    a.amount_minor <= b.amount_minor
                }
                _ => {
                    return Err(FieldError::new(
                        format!("{path}.upper"),
                        "the bounds must be of the same kind (two dates, or two days_from_today)",
                    ));
                }
            };
            if ordered {
                Ok(())
            } else {
                Err(FieldError::new(
                    format!("{path}.upper"),
                    "the upper bound is below the lower one",
                ))
            }
        }
    }
}

fn check_value(fact: FactType, field: &str, value: &Value, path: &str) -> Result<(), FieldError> {
    if !fits(fact, value) {
        return Err(FieldError::new(
            path,
            format!(
                "a {} value does not fit {field} (expected {})",
                value.kind_name(),
                expected(fact)
            ),
        ));
    }
    match value {
        Value::Number(n) if !n.is_finite() => Err(FieldError::new(path, "must be a finite number")),
        Value::Number(n) if fact == FactType::Percent && !(0.0..=100.0).contains(n) => Err(
            FieldError::new(path, format!("{field} is a percentage: 0 to 100")),
        ),
        Value::Text(t) if t.trim().is_empty() => Err(FieldError::new(path, "must not be empty")),
        Value::Text(t) if t.chars().count() > 200 => {
            Err(FieldError::new(path, "at most 200 characters"))
        }
        Value::DaysFromToday(d) if d.abs() > 3660 => {
            Err(FieldError::new(path, "at most 3660 days either way"))
        }
        Value::Money(m) if !is_currency(&m.currency) => Err(FieldError::new(
            format!("{path}.currency"),
            "must be an ISO 4217 code such as USD",
        )),
        Value::CaseStatus(CaseStatus::Unspecified)
        | Value::CareCaseStatus(CareCaseStatus::Unspecified) => {
            Err(FieldError::new(path, "the status must be specified"))
        }
        _ => Ok(()),
    }
}

fn expected(fact: FactType) -> &'static str {
    match fact {
        FactType::OpenClosed => "care_case_status",
        FactType::Date => "date or days_from_today",
        FactType::Text => "text",
        FactType::Number | FactType::Percent => "number",
        FactType::Money => "money",
        FactType::Status => "case_status",
        FactType::Flag => "flag",
    }
}

pub fn is_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// What an evaluation needs besides the facts: the clinic-local day and zone.
#[derive(Clone, Copy, Debug)]
pub struct Today {
    pub date: NaiveDate,
    pub tz: Tz,
}

/// One comparison, evaluated, for people ("sessions done (3) >= 4").
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub path: String,
    pub description: String,
    pub holds: bool,
}

/// Does the condition hold for these facts?
pub fn holds(condition: &Condition, facts: &CaseFacts, today: Today) -> bool {
    let derived = facts.derived(today.date, today.tz);
    eval(condition, facts, &derived, today, "", &mut None)
}

/// Evaluates every comparison (no short-circuit) and says why each holds or not; the result is the same
/// as [`holds`].
pub fn explain(
    condition: &Condition,
    facts: &CaseFacts,
    today: Today,
    path: &str,
) -> (bool, Vec<Check>) {
    let derived = facts.derived(today.date, today.tz);
    let mut checks = Some(Vec::new());
    let result = eval(condition, facts, &derived, today, path, &mut checks);
    (result, checks.unwrap_or_default())
}

fn eval(
    condition: &Condition,
    facts: &CaseFacts,
    derived: &Derived,
    today: Today,
    path: &str,
    checks: &mut Option<Vec<Check>>,
) -> bool {
    match condition {
        Condition::All(children) | Condition::Any(children) => {
            let all = matches!(condition, Condition::All(_));
            let group = if all { "all" } else { "any" };
            let mut result = all;
            for (i, child) in children.iter().enumerate() {
                let child_path = format!("{path}.{group}[{i}]");
                let r = eval(child, facts, derived, today, &child_path, checks);
                result = if all { result && r } else { result || r };
                // Without a report to fill, the answer is known at the first deciding child.
                if checks.is_none() && result != all {
                    return result;
                }
            }
            result
        }
        Condition::Compare(c) => {
            let (result, fact) = compare(c, facts, derived, today);
            if let Some(checks) = checks {
                checks.push(Check {
                    path: path.to_string(),
                    description: describe(c, &fact),
                    holds: result,
                });
            }
            result
        }
    }
}

/// A fact's value, for comparing and for describing.
#[derive(Clone, Debug, PartialEq)]
enum Fact {
    Missing,
    Number(f64),
    Text(String),
    Flag(bool),
    Date(NaiveDate),
    Money(Money),
    Status(CaseStatus),
    OpenClosed(CareCaseStatus),
}

fn fact_of(field: CaseField, facts: &CaseFacts, derived: &Derived) -> Fact {
    use CaseField as F;
    use followup_proto::followup::common::v1::CaseKind;
    let presentation = facts.kind == CaseKind::CasePresentation;
    let number = |n: Option<f64>| n.map(Fact::Number).unwrap_or(Fact::Missing);
    match field {
        F::Unspecified => Fact::Missing,
        F::OpenClosed => Fact::OpenClosed(facts.care_case_status()),
        F::IssueDate => facts.issue_date.map(Fact::Date).unwrap_or(Fact::Missing),
        F::ExpiryDate => facts.expiry_date.map(Fact::Date).unwrap_or(Fact::Missing),
        F::CaseName => Fact::Text(facts.name.clone()),
        F::SessionsDone => Fact::Number(f64::from(facts.sessions_done)),
        F::SessionsLeft => number(derived.sessions_left.map(f64::from)),
        F::MaxSessions => Fact::Number(f64::from(facts.max_sessions)),
        F::PercentSessionsBooked => number(derived.percent_sessions_booked),
        F::PercentSessionsDone => number(derived.percent_sessions_done),
        F::PercentInvoiced => number(derived.percent_invoiced),
        F::TotalInvoiced => match (&facts.total_invoiced, &facts.invoiceable_amount) {
            (Some(m), _) => Fact::Money(m.clone()),
            // Nothing invoiced yet is zero in the case's currency.
            (None, Some(total)) => Fact::Money(Money::new(0, total.currency.clone())),
            (None, None) => Fact::Missing,
        },
        F::InvoiceableAmountLeft => derived
            .invoiceable_amount_left
            .clone()
            .map(Fact::Money)
            .unwrap_or(Fact::Missing),
        F::Value => facts
            .value
            .clone()
            .map(Fact::Money)
            .unwrap_or(Fact::Missing),
        F::PresentationStatus if presentation => facts
            .presentation_status
            .map(Fact::Status)
            .unwrap_or(Fact::Missing),
        F::Viewed if presentation => Fact::Flag(facts.viewed),
        F::DaysSinceSent if presentation => number(derived.days_since_sent.map(|d| d as f64)),
        F::PresentationStatus | F::Viewed | F::DaysSinceSent => Fact::Missing,
    }
}

fn compare(c: &Comparison, facts: &CaseFacts, derived: &Derived, today: Today) -> (bool, Fact) {
    let fact = fact_of(c.field, facts, derived);
    let result = compare_fact(&fact, c, today);
    (result, fact)
}

fn compare_fact(fact: &Fact, c: &Comparison, today: Today) -> bool {
    use std::cmp::Ordering;
    let ordering = |value: &Value| -> Option<Ordering> {
        match (fact, value) {
            (Fact::Number(a), Value::Number(b)) => a.partial_cmp(b),
            (Fact::Date(a), Value::Date(b)) => Some(a.cmp(b)),
            (Fact::Date(a), Value::DaysFromToday(d)) => {
                Some(a.cmp(&(today.date + Duration::days(i64::from(*d)))))
            }
            (Fact::Money(a), Value::Money(b)) if a.currency == b.currency => {
                Some(a.amount_minor.cmp(&b.amount_minor))
            }
            (Fact::Text(a), Value::Text(b)) => Some(a.to_lowercase().cmp(&b.to_lowercase())),
            (Fact::Flag(a), Value::Flag(b)) => Some(a.cmp(b)),
            (Fact::Status(a), Value::CaseStatus(b)) => Some((*a as i32).cmp(&(*b as i32))),
            (Fact::OpenClosed(a), Value::CareCaseStatus(b)) => Some((*a as i32).cmp(&(*b as i32))),
            _ => None,
        }
    };
    let Some(against_value) = ordering(&c.value) else {
        return false;
    };
    match c.operator {
        Operator::Eq => against_value == Ordering::Equal,
        Operator::Ne => against_value != Ordering::Equal,
        Operator::Lt => against_value == Ordering::Less,
        Operator::Le => against_value != Ordering::Greater,
        Operator::Gt => against_value == Ordering::Greater,
        Operator::Ge => against_value != Ordering::Less,
        Operator::Between => {
            against_value != Ordering::Less
                && c.upper
                    .as_ref()
                    .and_then(ordering)
                    .is_some_and(|o| o != Ordering::Greater)
        }
        Operator::Contains => match (fact, &c.value) {
            (Fact::Text(a), Value::Text(b)) => a.to_lowercase().contains(&b.to_lowercase()),
            _ => false,
        },
        Operator::Unspecified => false,
    }
}

fn describe(c: &Comparison, fact: &Fact) -> String {
    let name = field_name(c.field).to_lowercase().replace('_', " ");
    let fact = match fact {
        Fact::Missing => "none".to_string(),
        Fact::Number(n) => format_number(*n),
        Fact::Text(t) => format!("{t:?}"),
        Fact::Flag(b) => b.to_string(),
        Fact::Date(d) => d.to_string(),
        Fact::Money(m) => format!("{} {}", m.amount_minor, m.currency),
        Fact::Status(s) => s.as_str_name().to_string(),
        Fact::OpenClosed(s) => s.as_str_name().to_string(),
    };
    let value = |v: &Value| match v {
        Value::Number(n) => format_number(*n),
        Value::Text(t) => format!("{t:?}"),
        Value::Flag(b) => b.to_string(),
        Value::Date(d) => d.to_string(),
        Value::DaysFromToday(d) => format!("today{d:+} days"),
        Value::Money(m) => format!("{} {}", m.amount_minor, m.currency),
        Value::CaseStatus(s) => s.as_str_name().to_string(),
        Value::CareCaseStatus(s) => s.as_str_name().to_string(),
    };
    let op = match c.operator {
        Operator::Eq => "=",
        Operator::Ne => "!=",
        Operator::Lt => "<",
        Operator::Le => "<=",
        Operator::Gt => ">",
        Operator::Ge => ">=",
        Operator::Between => "between",
        Operator::Contains => "contains",
        Operator::Unspecified => "?",
    };
    match (&c.upper, c.operator) {
        (Some(upper), Operator::Between) => format!(
            "{name} ({fact}) between {} and {}",
            value(&c.value),
            value(upper)
        ),
        _ => format!("{name} ({fact}) {op} {}", value(&c.value)),
    }
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use followup_proto::followup::common::v1::CaseKind;
    use proptest::prelude::*;

    fn cmp(field: CaseField, operator: Operator, value: Value) -> Condition {
        Condition::Compare(Comparison {
            field,
            operator,
            value,
            upper: None,
        })
    }

    fn between(field: CaseField, low: Value, high: Value) -> Condition {
        Condition::Compare(Comparison {
            field,
            operator: Operator::Between,
            value: low,
            upper: Some(high),
        })
    }

    fn day(text: &str) -> NaiveDate {
        super::super::schedule::parse_date(text).unwrap_or_default()
    }

    fn today() -> Today {
        Today {
            date: day("2026-06-10"),
            tz: chrono_tz::UTC,
        }
    }

    fn knee_rehab() -> CaseFacts {
        CaseFacts {
            name: "Knee Rehab (WorkCover)".into(),
            issue_date: Some(day("2026-05-01")),
            expiry_date: Some(day("2026-06-20")),
            max_sessions: 5,
            sessions_booked: 2,
            sessions_done: 1,
            invoiceable_amount: Some(Money::new(100_000, "AUD")),
            total_invoiced: Some(Money::new(20_000, "AUD")),
            value: Some(Money::new(100_000, "AUD")),
            ..CaseFacts::empty(CaseKind::CareCase)
        }
    }

    fn implant_plan() -> CaseFacts {
        CaseFacts {
            name: "Implant UL6".into(),
            presentation_status: Some(CaseStatus::SentViewed),
            viewed: true,
            sent_at: chrono::DateTime::parse_from_rfc3339("2026-06-01T09:00:00Z")
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok(),
            value: Some(Money::new(450_000, "USD")),
            max_sessions: 3,
            sessions_done: 1,
            issue_date: Some(day("2026-06-01")),
            ..CaseFacts::empty(CaseKind::CasePresentation)
        }
    }

    #[test]
    fn every_condition_of_the_product_on_a_care_case() {
        use CaseField as F;
        use Operator as O;
        let money = |n| Value::Money(Money::new(n, "AUD"));
        let table: Vec<(Condition, bool, &str)> = vec![
            (
                cmp(
                    F::OpenClosed,
                    O::Eq,
                    Value::CareCaseStatus(CareCaseStatus::Open),
                ),
                true,
                "open",
            ),
            (
                cmp(
                    F::OpenClosed,
                    O::Eq,
                    Value::CareCaseStatus(CareCaseStatus::Closed),
                ),
                false,
                "not closed",
            ),
            (
                cmp(F::IssueDate, O::Lt, Value::Date(day("2026-05-02"))),
                true,
                "issued before",
            ),
            (
                cmp(F::IssueDate, O::Ge, Value::DaysFromToday(-60)),
                true,
                "issued in the last 60 days",
            ),
            (
                cmp(F::ExpiryDate, O::Le, Value::DaysFromToday(14)),
                true,
                "expires within 14 days",
            ),
            (
                between(
                    F::ExpiryDate,
                    Value::DaysFromToday(0),
                    Value::DaysFromToday(7),
                ),
                false,
                "not within 7",
            ),
            (
                between(
                    F::ExpiryDate,
                    Value::Date(day("2026-06-01")),
                    Value::Date(day("2026-06-30")),
                ),
                true,
                "in June",
            ),
            (
                cmp(F::CaseName, O::Contains, Value::Text("workcover".into())),
                true,
                "name, any case",
            ),
            (
                cmp(
                    F::CaseName,
                    O::Eq,
                    Value::Text("knee rehab (workcover)".into()),
                ),
                true,
                "equal, any case",
            ),
            (
                cmp(F::CaseName, O::Ne, Value::Text("knee".into())),
                true,
                "not equal",
            ),
            (
                cmp(F::SessionsDone, O::Ge, Value::Number(1.0)),
                true,
                "sessions done",
            ),
            (
                cmp(F::SessionsLeft, O::Eq, Value::Number(4.0)),
                true,
                "sessions left",
            ),
            (
                cmp(F::PercentSessionsBooked, O::Eq, Value::Number(40.0)),
                true,
                "2 of 5 booked = 40%",
            ),
            (
                cmp(F::MaxSessions, O::Gt, Value::Number(5.0)),
                false,
                "max sessions",
            ),
            (
                cmp(F::PercentSessionsDone, O::Lt, Value::Number(50.0)),
                true,
                "% done",
            ),
            (
                cmp(F::TotalInvoiced, O::Ge, money(20_000)),
                true,
                "invoiced",
            ),
            (
                cmp(F::InvoiceableAmountLeft, O::Gt, money(50_000)),
                true,
                "left to invoice",
            ),
            (
                cmp(F::PercentInvoiced, O::Between, Value::Number(10.0)),
                false,
                "between without upper never holds",
            ),
            (
                between(F::PercentInvoiced, Value::Number(10.0), Value::Number(20.0)),
                true,
                "% invoiced",
            ),
            (
                cmp(F::Value, O::Eq, Value::Money(Money::new(100_000, "USD"))),
                false,
                "other currency never matches",
            ),
            (
                cmp(F::Value, O::Ne, Value::Money(Money::new(1, "USD"))),
                false,
                "not even NE",
            ),
            // Presentation-only facts do not exist on a care case.
            (cmp(F::Viewed, O::Eq, Value::Flag(false)), false, "viewed"),
            (
                cmp(F::DaysSinceSent, O::Ge, Value::Number(0.0)),
                false,
                "days since sent",
            ),
        ];
        for (condition, expected, why) in table {
            assert_eq!(
                holds(&condition, &knee_rehab(), today()),
                expected,
                "{why}: {condition:?}"
            );
        }
    }

    #[test]
    fn every_condition_on_a_case_presentation() {
        use CaseField as F;
        use Operator as O;
        let table: Vec<(Condition, bool, &str)> = vec![
            (
                cmp(
                    F::PresentationStatus,
                    O::Eq,
                    Value::CaseStatus(CaseStatus::SentViewed),
                ),
                true,
                "status",
            ),
            (
                cmp(
                    F::PresentationStatus,
                    O::Ne,
                    Value::CaseStatus(CaseStatus::PatientBooked),
                ),
                true,
                "not booked",
            ),
            (cmp(F::Viewed, O::Eq, Value::Flag(true)), true, "viewed"),
            (
                cmp(F::DaysSinceSent, O::Eq, Value::Number(9.0)),
                true,
                "sent 9 days ago",
            ),
            (
                cmp(F::Value, O::Ge, Value::Money(Money::new(100_000, "USD"))),
                true,
                "value",
            ),
            // Care case facts read the plan's.
            (
                cmp(F::SessionsLeft, O::Eq, Value::Number(2.0)),
                true,
                "visits left",
            ),
            (
                cmp(F::IssueDate, O::Eq, Value::Date(day("2026-06-01"))),
                true,
                "issue date = sent date",
            ),
            (
                cmp(F::ExpiryDate, O::Lt, Value::DaysFromToday(0)),
                false,
                "no quote expiry: never",
            ),
            (
                cmp(F::ExpiryDate, O::Ne, Value::DaysFromToday(0)),
                false,
                "missing never matches, even NE",
            ),
            (
                cmp(
                    F::OpenClosed,
                    O::Eq,
                    Value::CareCaseStatus(CareCaseStatus::Open),
                ),
                true,
                "open",
            ),
        ];
        for (condition, expected, why) in table {
            assert_eq!(
                holds(&condition, &implant_plan(), today()),
                expected,
                "{why}"
            );
        }
    }

    #[test]
    fn and_or_combine() {
        use CaseField as F;
        use Operator as O;
        let viewed = cmp(F::Viewed, O::Eq, Value::Flag(true));
        let expensive = cmp(F::Value, O::Gt, Value::Money(Money::new(1_000_000, "USD")));
        let facts = implant_plan();
        assert!(!holds(
            &Condition::All(vec![viewed.clone(), expensive.clone()]),
            &facts,
            today()
        ));
        assert!(holds(
            &Condition::Any(vec![viewed.clone(), expensive.clone()]),
            &facts,
            today()
        ));
        let nested = Condition::All(vec![viewed, Condition::Any(vec![expensive.clone()])]);
        assert!(!holds(&nested, &facts, today()));
        let (result, checks) = explain(&nested, &facts, today(), "condition");
        assert!(!result);
        assert_eq!(checks.len(), 2, "explain evaluates every comparison");
        assert_eq!(checks[0].path, "condition.all[0]");
        assert_eq!(checks[0].description, "viewed (true) = true");
        assert_eq!(checks[1].path, "condition.all[1].any[0]");
        assert!(!checks[1].holds);
    }

    #[test]
    fn validation_names_the_bad_field() {
        use CaseField as F;
        use Operator as O;
        let bad = Condition::All(vec![
            cmp(F::Viewed, O::Eq, Value::Flag(true)),
            cmp(F::SessionsDone, O::Contains, Value::Number(1.0)),
        ]);
        let err = validate(&bad, "condition").expect_err("CONTAINS on a number");
        assert_eq!(err.path, "condition.all[1].comparison");
        assert!(
            err.message.contains("CONTAINS does not fit SESSIONS_DONE"),
            "{err}"
        );

        let cases: Vec<(Condition, &str, &str)> = vec![
            (
                cmp(F::CaseName, O::Eq, Value::Number(1.0)),
                "condition.comparison.value",
                "does not fit CASE_NAME",
            ),
            (
                cmp(F::Unspecified, O::Eq, Value::Number(1.0)),
                "condition.comparison.field",
                "required",
            ),
            (
                cmp(F::SessionsDone, O::Unspecified, Value::Number(1.0)),
                "condition.comparison.operator",
                "required",
            ),
            (
                cmp(F::PercentInvoiced, O::Gt, Value::Number(120.0)),
                "condition.comparison.value",
                "0 to 100",
            ),
            (
                cmp(F::SessionsDone, O::Between, Value::Number(1.0)),
                "condition.comparison.upper",
                "upper bound",
            ),
            (
                between(F::SessionsDone, Value::Number(5.0), Value::Number(1.0)),
                "condition.comparison.upper",
                "below",
            ),
            (
                between(
                    F::ExpiryDate,
                    Value::Date(day("2026-01-01")),
                    Value::DaysFromToday(3),
                ),
                "condition.comparison.upper",
                "same kind",
            ),
            (
                cmp(F::Value, O::Gt, Value::Money(Money::new(1, "usd"))),
                "condition.comparison.value.currency",
                "ISO 4217",
            ),
            (
                cmp(F::CaseName, O::Contains, Value::Text(" ".into())),
                "condition.comparison.value",
                "empty",
            ),
            (
                cmp(F::Viewed, O::Lt, Value::Flag(true)),
                "condition.comparison",
                "LT does not fit VIEWED",
            ),
            (
                cmp(
                    F::PresentationStatus,
                    O::Eq,
                    Value::CaseStatus(CaseStatus::Unspecified),
                ),
                "condition.comparison.value",
                "specified",
            ),
            (Condition::Any(vec![]), "condition.any", "at least one"),
        ];
        for (condition, path, message) in cases {
            let err = validate(&condition, "condition").expect_err(path);
            assert_eq!(err.path, path, "{err}");
            assert!(err.message.contains(message), "{err}");
        }

        let mut deep = cmp(F::Viewed, O::Eq, Value::Flag(true));
        for _ in 0..MAX_DEPTH {
            deep = Condition::All(vec![deep]);
        }
        assert!(validate(&deep, "condition").is_err());
    }

    fn numeric_ops() -> impl Strategy<Value = Operator> {
        prop::sample::select(vec![
            Operator::Eq,
            Operator::Ne,
            Operator::Lt,
            Operator::Le,
            Operator::Gt,
            Operator::Ge,
        ])
    }

    proptest! {
        #[test]
        fn numeric_operators_agree_with_plain_arithmetic(done in 0i32..50, value in 0i32..50, op in numeric_ops()) {
            let facts = CaseFacts { sessions_done: done, ..knee_rehab() };
            let condition = cmp(CaseField::SessionsDone, op, Value::Number(f64::from(value)));
            let expected = match op {
                Operator::Eq => done == value,
                Operator::Ne => done != value,
                Operator::Lt => done < value,
                Operator::Le => done <= value,
                Operator::Gt => done > value,
                _ => done >= value,
            };
            prop_assert_eq!(holds(&condition, &facts, today()), expected);
        }

        #[test]
        fn all_is_and_any_is_or(flags in prop::collection::vec(any::<bool>(), 1..8)) {
            // Each child is "viewed = <flag>" on a viewed plan, so it holds exactly when flag is true.
            let children: Vec<Condition> = flags.iter().map(|f| cmp(CaseField::Viewed, Operator::Eq, Value::Flag(*f))).collect();
            let facts = implant_plan();
            prop_assert_eq!(holds(&Condition::All(children.clone()), &facts, today()), flags.iter().all(|f| *f));
            prop_assert_eq!(holds(&Condition::Any(children.clone()), &facts, today()), flags.iter().any(|f| *f));
            let (explained, _) = explain(&Condition::Any(children), &facts, today(), "c");
            prop_assert_eq!(explained, flags.iter().any(|f| *f));
        }

        #[test]
        fn a_relative_date_window_moves_with_today(offset in -400i64..400, window in 0i32..60) {
            // "expires within `window` days from today".
            let today = today();
            let expiry = today.date + Duration::days(offset);
            let facts = CaseFacts { expiry_date: Some(expiry), ..knee_rehab() };
            let condition = between(CaseField::ExpiryDate, Value::DaysFromToday(0), Value::DaysFromToday(window));
            prop_assert_eq!(holds(&condition, &facts, today), (0..=i64::from(window)).contains(&offset));
        }
    }
}
