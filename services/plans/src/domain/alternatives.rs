//! Alternative groups ("good / better / best"): plans with the same `alternative_group_id` are options
//! of one treatment, of which the patient takes one.
//!
//! A group is settled when one option is accepted: approved here (staff or the patient in the portal),
//! or booked, which only the cases service sees (it publishes `case_status_changed` to SUPERSEDED for
//! the other options). Either way the options offered before the choice are *superseded*: they can no
//! longer be approved, and money counts one option per group. Plans offered after the choice are new
//! options, not superseded (as in cases).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::plan::Status;

/// Where a supersession was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// This service: another option was approved.
    Approval,
    /// The cases service's `case_status_changed` (a booking, an approval, a completion it saw).
    Cases,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Approval => "approval",
            Source::Cases => "cases",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approval" => Some(Source::Approval),
            "cases" => Some(Source::Cases),
            _ => None,
        }
    }
}

/// A plan superseded by another option of its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Supersession {
    /// The option chosen instead, when known.
    pub by_plan_id: Option<Uuid>,
    /// Its title (current version), for the messages that name it.
    pub by_title: Option<String>,
    /// When the choice was made (the acceptance's time).
    pub at: DateTime<Utc>,
    pub source: Source,
}

impl Supersession {
    /// `option 0190… ("Implant")`: the chosen option, named for staff.
    pub fn chosen(&self) -> String {
        match (&self.by_plan_id, &self.by_title) {
            (Some(id), Some(title)) => format!("option {id} (\"{title}\")"),
            (Some(id), None) => format!("option {id}"),
            _ => "another option".to_string(),
        }
    }

    /// What the portal tells a patient who tries to approve a superseded option.
    pub fn patient_message(&self) -> String {
        let chosen = match &self.by_title {
            Some(title) => format!("another option of this treatment, \u{201c}{title}\u{201d}"),
            None => "another option of this treatment".to_string(),
        };
        format!(
            "You have already chosen {chosen}, so this option can no longer be approved. If you would like to change your choice, please contact the clinic."
        )
    }
}

/// The cause cases gives a status change made by settling a group, and the prefix of its
/// `cause_event_id`, which names the accepted case (= plan): `group:<plan id>`.
pub const CASES_GROUP_CAUSE: &str = "group.accepted";
const CASES_GROUP_EVENT_PREFIX: &str = "group:";

/// The accepted option named by a cases group settlement's `cause_event_id`, if it names one.
pub fn accepted_by(cause: &str, cause_event_id: &str) -> Option<Uuid> {
    if cause != CASES_GROUP_CAUSE {
        return None;
    }
    cause_event_id
        .strip_prefix(CASES_GROUP_EVENT_PREFIX)
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// A patient's plan (current version) as the billing summary sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingPlan {
    pub plan_id: Uuid,
    pub status: Status,
    pub currency: String,
    pub total: i64,
    pub completed: i64,
    /// Empty when not an alternative.
    pub group: String,
    pub superseded: bool,
}

/// A patient's plan money in one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BillingLine {
    pub currency: String,
    pub planned: i64,
    pub approved: i64,
    pub completed: i64,
    pub remaining: i64,
    pub plan_count: i64,
}

/// The option of a group that counts in money: the chosen one once there is a choice, else (every
/// option still open) the highest — what the patient may still take at most, the same option the
/// cases service counts (`is_representative`).
///
/// Superseded options never count. Among the rest: completed or approved first, then open, then the
/// highest total, then the lowest id (a total order, so the answer does not depend on row order).
pub fn representative(members: &[&BillingPlan]) -> Option<Uuid> {
    let strength = |p: &BillingPlan| match p.status {
        Status::Completed | Status::Approved => 2,
        s if s.is_open() => 1,
        _ => 0,
    };
    members
        .iter()
        .filter(|p| !p.superseded)
        .max_by(|a, b| {
            strength(a)
                .cmp(&strength(b))
                .then(a.total.cmp(&b.total))
                .then(b.plan_id.cmp(&a.plan_id))
        })
        .map(|p| p.plan_id)
}

/// The billing summary, per currency: planned = open plans' totals; approved = approved and completed
/// plans' totals; remaining = what is left of those; plan_count = plans counted. An alternative group
/// counts once, by its [`representative`]. Completed = completed items of every plan (work done is
/// done, whichever option it belonged to).
pub fn billing(plans: &[BillingPlan]) -> Vec<BillingLine> {
    let mut groups: BTreeMap<&str, Vec<&BillingPlan>> = BTreeMap::new();
    for plan in plans.iter().filter(|p| !p.group.is_empty()) {
        groups.entry(plan.group.as_str()).or_default().push(plan);
    }
    let counted: std::collections::HashSet<Uuid> = groups
        .values()
        .filter_map(|members| representative(members))
        .chain(
            plans
                .iter()
                .filter(|p| p.group.is_empty())
                .map(|p| p.plan_id),
        )
        .collect();
    let mut lines: BTreeMap<&str, BillingLine> = BTreeMap::new();
    for plan in plans {
        let line = lines
            .entry(plan.currency.as_str())
            .or_insert_with(|| BillingLine {
                currency: plan.currency.clone(),
                ..Default::default()
            });
        line.completed += plan.completed;
        if !counted.contains(&plan.plan_id) {
            continue;
        }
        line.plan_count += 1;
        if plan.status.is_open() {
            line.planned += plan.total;
        }
        if matches!(plan.status, Status::Approved | Status::Completed) {
            line.approved += plan.total;
            line.remaining += plan.total - plan.completed;
        }
    }
    lines.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: u128, status: Status, total: i64, group: &str, superseded: bool) -> BillingPlan {
        BillingPlan {
            plan_id: Uuid::from_u128(n),
            status,
            currency: "USD".into(),
            total,
            completed: 0,
            group: group.into(),
            superseded,
        }
    }

    #[test]
    fn a_settled_group_counts_its_chosen_option_only() {
        // The figures: good 1,000 / better 2,200 / best 2,500; "better" approved.
        let plans = [
            plan(1, Status::Sent, 100_000, "g", true),
            plan(2, Status::Approved, 220_000, "g", false),
            plan(3, Status::Sent, 250_000, "g", true),
        ];
        assert_eq!(
            billing(&plans),
            vec![BillingLine {
                currency: "USD".into(),
                planned: 220_000,
                approved: 220_000,
                completed: 0,
                remaining: 220_000,
                plan_count: 1,
            }]
        );
    }

    #[test]
    fn an_open_group_counts_its_highest_option_once() {
        let plans = [
            plan(1, Status::Sent, 100_000, "g", false),
            plan(2, Status::Sent, 220_000, "g", false),
            plan(3, Status::Sent, 250_000, "g", false),
            plan(4, Status::Approved, 6_000, "", false),
        ];
        let line = &billing(&plans)[0];
        assert_eq!(line.planned, 250_000 + 6_000);
        assert_eq!(line.approved, 6_000);
        assert_eq!(line.plan_count, 2);
    }

    #[test]
    fn a_booked_option_counts_though_it_is_not_approved_here() {
        // Booked (cases superseded the approved one): the booked, sent option is the one that counts.
        let plans = [
            plan(1, Status::Approved, 100_000, "g", true),
            plan(2, Status::Sent, 220_000, "g", false),
        ];
        let line = &billing(&plans)[0];
        assert_eq!(
            (line.planned, line.approved, line.plan_count),
            (220_000, 0, 1)
        );
    }

    #[test]
    fn a_rejected_option_gives_way_to_an_open_one() {
        let plans = [
            plan(1, Status::Cancelled, 900_000, "g", false),
            plan(2, Status::Sent, 220_000, "g", false),
        ];
        assert_eq!(
            representative(&plans.iter().collect::<Vec<_>>()),
            Some(Uuid::from_u128(2))
        );
    }

    #[test]
    fn the_cases_group_cause_names_the_accepted_option() {
        let id = Uuid::from_u128(7);
        assert_eq!(
            accepted_by("group.accepted", &format!("group:{id}")),
            Some(id)
        );
        assert_eq!(
            accepted_by("appointment.booked", &format!("group:{id}")),
            None
        );
        assert_eq!(accepted_by("group.accepted", "group:nope"), None);
    }
}
