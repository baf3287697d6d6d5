//! The timer: replicas share the work without firing a step twice; a pause holds everything at once.

use std::collections::HashSet;

use chrono::Duration;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::scheduler::v1 as pb;
use followup_scheduler::seed::{Seed, seed};

use crate::support::*;

fn small_batches() -> followup_scheduler::Settings {
    let mut settings = settings();
    // Many small claims make the replicas' rounds interleave.
    settings.timer.batch_size = 20;
    settings
}

async fn distinct_keys(s: &Scheduler) -> (usize, usize) {
    let requested = s.requested().await;
    let keys: HashSet<String> = requested
        .iter()
        .map(|r| r.idempotency_key.clone())
        .collect();
    (requested.len(), keys.len())
}

#[tokio::test]
async fn two_schedulers_on_one_database_fire_each_step_exactly_once() {
    let s = Scheduler::start_with(small_batches()).await;
    let _replica = s.replica(small_batches()).await;
    let wait = |seconds| pb::Step {
        action: Some(pb::step::Action::Wait(pb::WaitAction {
            until: Some(pb::wait_action::Until::Duration(prost_types::Duration {
                seconds,
                nanos: 0,
            })),
            ..Default::default()
        })),
        ..Default::default()
    };
    let send = |key: &str| pb::Step {
        action: Some(pb::step::Action::Send(pb::SendAction {
            channel: common::Channel::Sms as i32,
            template_key: key.into(),
        })),
        ..Default::default()
    };
    let rule = s
        .play(pb::Rule {
            name: "Two reminders".into(),
            category: "treatment_follow_up".into(),
            case_kind: common::CaseKind::CasePresentation as i32,
            trigger: Some(pb::Trigger {
                r#type: pb::TriggerType::PlanSent as i32,
                ..Default::default()
            }),
            steps: vec![wait(86_400), send("first"), wait(3600), send("second")],
            ..Default::default()
        })
        .await;
    const PLANS: usize = 300;
    for n in 0..PLANS {
        s.publish(&s.plan_sent(&format!("plan-{n}"), &format!("patient-{n}")))
            .await;
    }
    eventually(
        "every plan enrolled (by either replica's consumer)",
        || async { s.count("SELECT count(*) FROM enrollments").await == PLANS as i64 },
    )
    .await;
    assert_eq!(s.enrollments_of_rule(&rule.rule_id).await.len(), PLANS);
    s.advance(Duration::days(2));
    eventually("every step fired", || async {
        s.count("SELECT count(*) FROM step_runs WHERE state = 'fired'")
            .await
            == 2 * PLANS as i64
    })
    .await;
    // Both replicas kept looking for due work meanwhile: nothing more may appear.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        distinct_keys(&s).await,
        (2 * PLANS, 2 * PLANS),
        "one request per step, no duplicate"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM enrollments WHERE state = 'finished'")
            .await,
        PLANS as i64
    );
}

fn seeded(prefix: &str, enrollments: i64, due_at: chrono::DateTime<chrono::Utc>) -> Seed {
    Seed {
        tenant: TENANT.into(),
        prefix: prefix.into(),
        enrollments,
        due_enrollments: enrollments,
        due_steps_each: 1,
        due_from: due_at,
        due_to: due_at + Duration::seconds(1),
        future_at: due_at + Duration::days(30),
    }
}

async fn fired_of(s: &Scheduler, rule_id: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM step_runs WHERE rule_id = $1 AND state = 'fired'")
        .bind(rule_id)
        .fetch_one(&s.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_pause_during_a_burst_holds_everything_and_play_fires_the_rest_once() {
    let s = Scheduler::start_with(small_batches()).await;
    const STEPS: i64 = 2000;
    let burst = seed(
        &s.pool,
        &seeded("burst-", STEPS, s.now() + Duration::hours(1)),
    )
    .await
    .expect("seeded");
    s.advance(Duration::hours(2));
    eventually("the burst under way", || async {
        fired_of(&s, burst).await > 0
    })
    .await;
    let paused = s
        .client
        .clone()
        .pause_rule(s.owner(pb::PauseRuleRequest {
            rule_id: burst.to_string(),
        }))
        .await
        .expect("paused")
        .into_inner();
    assert_eq!(
        paused.rule.map(|r| r.state),
        Some(pb::RuleState::Paused as i32)
    );
    let fired_at_pause = fired_of(&s, burst).await;
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM step_runs WHERE rule_id = $1 AND state = 'pending'",
    )
    .bind(burst)
    .fetch_one(&s.pool)
    .await
    .expect("count");
    assert_eq!(pending, 0, "nothing of a paused rule is left to claim");
    eprintln!("paused after {fired_at_pause} of {STEPS} steps");

    // Another rule's due step fires: the timer ran rounds after the pause, and held the burst.
    let sentinel = seed(
        &s.pool,
        &seeded("sentinel-", 1, s.now() - Duration::seconds(1)),
    )
    .await
    .expect("seeded");
    eventually("the sentinel fired", || async {
        fired_of(&s, sentinel).await == 1
    })
    .await;
    s.advance(Duration::hours(1));
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(
        fired_of(&s, burst).await,
        fired_at_pause,
        "a paused rule fires nothing"
    );
    let enrollments = s
        .enrollments(pb::ListEnrollmentsRequest {
            rule_id: burst.to_string(),
            states: vec![pb::EnrollmentState::Held as i32],
            page_size: 5,
            ..Default::default()
        })
        .await;
    assert!(!enrollments.is_empty(), "running enrollments show as held");

    let played = s
        .client
        .clone()
        .play_rule(s.owner(pb::PlayRuleRequest {
            rule_id: burst.to_string(),
        }))
        .await
        .expect("played")
        .into_inner();
    assert_eq!(
        i64::from(played.released_step_count),
        STEPS - fired_at_pause
    );
    assert_eq!(played.skipped_step_count, 0);
    eventually("the held steps fired once", || async {
        fired_of(&s, burst).await == STEPS
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(
        distinct_keys(&s).await,
        (STEPS as usize + 1, STEPS as usize + 1)
    );
}

#[tokio::test]
async fn play_skips_held_steps_older_than_the_rules_limit() {
    let s = Scheduler::start().await;
    let mut rule = followup_scheduler::templates::find("hot_enquiry")
        .and_then(|t| t.rule)
        .expect("template");
    rule.skip_missed_older_than = Some(prost_types::Duration {
        seconds: 1800,
        nanos: 0,
    });
    let rule = s.play(rule).await;
    s.publish(&followup_proto::followup::events::v1::EnquiryCreated {
        event_id: id(),
        tenant_id: TENANT.into(),
        occurred_at: ts(s.now()),
        enquiry_id: "enq-1".into(),
        patient_id: "patient-1".into(),
        ..Default::default()
    })
    .await;
    eventually("the first reply", || async {
        s.requested().await.len() == 1
    })
    .await;
    s.client
        .clone()
        .pause_rule(s.owner(pb::PauseRuleRequest {
            rule_id: rule.rule_id.clone(),
        }))
        .await
        .expect("paused");
    // The call-back task fell due an hour in, while paused; two hours in it is older than 30 minutes.
    s.advance(Duration::hours(2));
    let played = s
        .client
        .clone()
        .play_rule(s.owner(pb::PlayRuleRequest {
            rule_id: rule.rule_id.clone(),
        }))
        .await
        .expect("played")
        .into_inner();
    assert_eq!(
        (played.released_step_count, played.skipped_step_count),
        (0, 1)
    );
    let enrollment = s.enrollments_of_rule(&rule.rule_id).await.remove(0);
    assert_eq!(enrollment.state, pb::EnrollmentState::Finished as i32);
    let timeline = s.timeline(&enrollment.enrollment_id).await;
    assert_eq!(timeline.steps[2].state, pb::StepRunState::Skipped as i32);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(s.requested().await.len(), 1);
}
