//! PreviewRule and BacktestRule: what a rule would do, computed without sending or storing anything.

use std::collections::HashMap;
use std::time::Duration as StdDuration;

use chrono::Duration;
use followup_platform::grpc::invalid_argument;
use followup_proto::followup::common::v1::CaseKind;
use followup_proto::followup::scheduler::v1 as pb;
use sqlx::PgConnection;
use tonic::Status;
use uuid::Uuid;

use super::SchedulerServiceApi;
use crate::convert::{self, FactsView, case_from_ref, duration_from, duration_to, timestamp};
use crate::domain::backtest::Simulation;
use crate::domain::pacing::Pacing;
use crate::domain::preview::{self, PreviewInput};
use crate::domain::rule::{Action, RuleDef};
use crate::domain::schedule::{local_date, local_display};
use crate::error::Error;
use crate::replay::{self, Limits, ReplayError};
use crate::storage::{facts, settings};

/// The bearer token of a request, relayed to notifications.
pub fn bearer<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A saved rule (a version of it) or one being written, in its domain form.
#[allow(clippy::result_large_err)]
async fn rule_of(
    conn: &mut PgConnection,
    tenant: &str,
    rule_id: Option<&str>,
    rule: Option<&pb::Rule>,
    version: i32,
) -> Result<(Option<Uuid>, pb::Rule, RuleDef), Status> {
    match (rule_id, rule) {
        (Some(id), _) => {
            let id = Uuid::parse_str(id)
                .map_err(|_| invalid_argument("rule_id", format!("`{id}` is not a rule id")))?;
            if version < 0 {
                return Err(invalid_argument("rule_version", "0 (latest) or a version"));
            }
            let row = crate::storage::rules::row(conn, tenant, id, false).await?;
            let version = if version == 0 {
                row.latest_version
            } else {
                version
            };
            if version > row.latest_version {
                return Err(Error::not_found("rule version", format!("{id}@{version}")).into());
            }
            let (rule, def) = crate::storage::load_version(conn, tenant, id, version).await?;
            Ok((Some(id), rule, def))
        }
        (None, Some(rule)) => {
            let def = convert::valid_rule(rule)
                .map_err(|e| Status::from(Error::Invalid(e.within("rule"))))?;
            Ok((None, rule.clone(), def))
        }
        (None, None) => Err(invalid_argument(
            "rule_source",
            "give rule_id (a saved rule) or rule (one being written)",
        )),
    }
}

impl SchedulerServiceApi {
    pub(super) async fn preview(
        &self,
        tenant: &str,
        bearer: &str,
        request: pb::PreviewRuleRequest,
    ) -> Result<pb::PreviewRuleResponse, Status> {
        use pb::preview_rule_request::{RuleSource, Target};
        let now = self.store.now();
        let trigger_at = match request.trigger_time.as_ref() {
            None => now,
            Some(ts) => followup_platform::event::from_timestamp(ts)
                .filter(|t| (*t - now).abs() <= Duration::days(366))
                .ok_or_else(|| {
                    invalid_argument("trigger_time", "a valid time within a year of now")
                })?,
        };
        let mut conn = self.conn().await?;
        let (rule_id, rule_proto, def) = match &request.rule_source {
            Some(RuleSource::RuleId(id)) => {
                rule_of(&mut conn, tenant, Some(id), None, request.rule_version).await?
            }
            Some(RuleSource::Rule(rule)) => rule_of(&mut conn, tenant, None, Some(rule), 0).await?,
            None => rule_of(&mut conn, tenant, None, None, 0).await?,
        };
        let clinic = settings::load(&mut conn, tenant).await?;
        let mut warnings = Vec::new();
        let delivery = match self.notifications.delivery(bearer).await {
            Ok(d) => Some(d),
            Err(why) => {
                warnings.push(format!(
                    "{why}: quiet hours assumed 21:00-08:00 (the notifications default) and messages not rendered"
                ));
                None
            }
        };
        let pacing = delivery.as_ref().map(|d| d.pacing).unwrap_or_default();
        // Loaded facts, the case's id and patient, its portal link and approval.
        let (facts, case_id, patient_id, portal_url, approved, updated_at) = match &request.target {
            Some(Target::CaseRef(case)) => {
                let (kind, id) = case_from_ref(Some(case)).ok_or_else(|| {
                    invalid_argument("case_ref", "is required: a plan_id or a care_case_id")
                })?;
                let loaded = facts::load(&mut conn, tenant, kind, &id, now)
                    .await?
                    .ok_or_else(|| Status::from(Error::not_found("case", id.clone())))?;
                let contact = facts::contact(&mut conn, tenant, kind, &id)
                    .await?
                    .unwrap_or_default();
                (
                    loaded.facts,
                    id,
                    loaded.patient_id,
                    contact.portal_url,
                    contact.approved,
                    Some(loaded.updated_at),
                )
            }
            Some(Target::Facts(given)) => {
                let facts = convert::facts_from_proto(given, "facts").map_err(Error::Invalid)?;
                let id = case_from_ref(given.case_ref.as_ref())
                    .map(|(_, id)| id)
                    .unwrap_or_default();
                (
                    facts,
                    id,
                    given.patient_id.clone(),
                    String::new(),
                    false,
                    None,
                )
            }
            None => {
                return Err(invalid_argument(
                    "target",
                    "give case_ref (a real case) or facts (made-up facts)",
                ));
            }
        };
        let patient_row = if patient_id.is_empty() {
            facts::PatientRow::default()
        } else {
            facts::patient(&mut conn, tenant, &patient_id).await?
        };
        let blocked = blocked_by(
            &mut conn,
            tenant,
            rule_id,
            &def,
            facts.kind,
            &case_id,
            &patient_id,
            &patient_row,
        )
        .await?;
        let patient_tz = patient_row.time_zone.parse::<chrono_tz::Tz>().ok();
        let schedule_tz = match def.schedule_zone {
            pb::ScheduleZone::Patient => patient_tz.unwrap_or(clinic.tz),
            _ => clinic.tz,
        };
        let recipient_tz = patient_tz
            .or(delivery.as_ref().and_then(|d| d.time_zone))
            .unwrap_or(clinic.tz);
        let input = PreviewInput {
            rule: &def,
            facts: &facts,
            trigger_at,
            clinic_tz: clinic.tz,
            schedule_tz,
            recipient_tz,
            calendar: &clinic.calendar,
            quiet: pacing.quiet,
            blocked,
        };
        let plan = preview::preview(&input, now, approved);
        let mut variables: HashMap<String, String> = HashMap::new();
        if !portal_url.is_empty() {
            variables.insert("portal_url".into(), portal_url);
        }
        let mut steps = Vec::with_capacity(plan.steps.len());
        for p in &plan.steps {
            let step = &def.steps[p.step_index];
            let rendered = match (&step.action, delivery.is_some()) {
                (_, false) => None,
                (
                    Action::Send {
                        channel,
                        template_key,
                    },
                    true,
                ) => Some(
                    self.notifications
                        .render(bearer, template_key, *channel, &patient_id, &variables)
                        .await,
                ),
                (
                    Action::Task {
                        title, description, ..
                    },
                    true,
                ) => Some(
                    self.notifications
                        .render_task(bearer, title, description, &variables)
                        .await,
                ),
                _ => None,
            };
            let message = match rendered {
                Some(Ok((message, mut more))) => {
                    for w in more.drain(..) {
                        let w = format!("steps[{}]: {w}", p.step_index);
                        if !warnings.contains(&w) {
                            warnings.push(w);
                        }
                    }
                    Some(message)
                }
                Some(Err(why)) => {
                    warnings.push(format!("steps[{}]: {why}", p.step_index));
                    None
                }
                None => None,
            };
            let mut step_proto = rule_proto
                .steps
                .get(p.step_index)
                .cloned()
                .unwrap_or_default();
            step_proto.step_index = p.step_index as i32;
            steps.push(pb::PreviewStep {
                step_index: p.step_index as i32,
                step: Some(step_proto),
                due_time: Some(timestamp(p.due)),
                send_time: Some(timestamp(p.send)),
                local_send_time: local_display(p.send, recipient_tz),
                held_by_quiet_hours: p.held_by_quiet_hours,
                guard_holds: p.guard_holds,
                message,
            });
        }
        Ok(pb::PreviewRuleResponse {
            would_enroll: plan.would_enroll,
            reason: plan.reason,
            checks: plan
                .checks
                .into_iter()
                .map(|c| pb::ConditionCheck {
                    path: c.path,
                    description: c.description,
                    holds: c.holds,
                })
                .collect(),
            time_zone: recipient_tz.name().to_string(),
            steps,
            facts: Some(convert::facts_to_proto(FactsView {
                facts: &facts,
                case_id: &case_id,
                patient_id: &patient_id,
                tz: clinic.tz,
                today: local_date(now, clinic.tz),
                updated_at,
            })),
            warnings,
        })
    }

    /// Validates a backtest request and prepares its simulation.
    pub(super) async fn backtest_setup(
        &self,
        tenant: &str,
        bearer: &str,
        request: &pb::BacktestRuleRequest,
    ) -> Result<(Simulation, Limits, usize), Status> {
        use pb::backtest_rule_request::RuleSource;
        let now = self.store.now();
        let start = request
            .start_time
            .as_ref()
            .and_then(followup_platform::event::from_timestamp)
            .ok_or_else(|| invalid_argument("start_time", "is required"))?;
        let end = match request.end_time.as_ref() {
            None => now,
            Some(ts) => followup_platform::event::from_timestamp(ts)
                .ok_or_else(|| invalid_argument("end_time", "is not a valid time"))?,
        };
        if start > now {
            return Err(invalid_argument(
                "start_time",
                "is in the future: a backtest replays past events",
            ));
        }
        if end <= start {
            return Err(invalid_argument("end_time", "must be after start_time"));
        }
        let end = end.min(now);
        let max_events = match request.max_events {
            0 => 1_000_000,
            n if (1..=10_000_000).contains(&n) => n as u64,
            _ => {
                return Err(invalid_argument(
                    "max_events",
                    "1 to 10,000,000 (0 = 1,000,000)",
                ));
            }
        };
        let max_duration = match request.max_duration.as_ref() {
            None => StdDuration::from_secs(300),
            Some(d) => {
                let d = duration_from(d, "max_duration").map_err(Error::Invalid)?;
                if d <= Duration::zero() || d > Duration::minutes(30) {
                    return Err(invalid_argument("max_duration", "up to 30 minutes"));
                }
                d.to_std().unwrap_or(StdDuration::from_secs(300))
            }
        };
        let sample_size = match request.sample_size {
            0 => 100,
            n if (1..=1000).contains(&n) => n as usize,
            _ => return Err(invalid_argument("sample_size", "1 to 1000 (0 = 100)")),
        };
        let mut conn = self.conn().await?;
        let (_, _, def) = match &request.rule_source {
            Some(RuleSource::RuleId(id)) => {
                rule_of(&mut conn, tenant, Some(id), None, request.rule_version).await?
            }
            Some(RuleSource::Rule(rule)) => rule_of(&mut conn, tenant, None, Some(rule), 0).await?,
            None => rule_of(&mut conn, tenant, None, None, 0).await?,
        };
        let clinic = settings::load(&mut conn, tenant).await?;
        drop(conn);
        let pacing = match self.notifications.delivery(bearer).await {
            Ok(d) => d.pacing,
            Err(why) => {
                tracing::warn!(tenant, error = %why, "backtest: notifications unreachable; default pacing");
                Pacing::default()
            }
        };
        let sim = Simulation::new(def, clinic.tz, clinic.calendar, pacing, sample_size);
        Ok((
            sim,
            Limits {
                start,
                end,
                max_events,
                max_duration,
            },
            sample_size,
        ))
    }
}

/// Why the rule would not enroll this case for reasons outside its facts.
#[allow(clippy::too_many_arguments)]
async fn blocked_by(
    conn: &mut PgConnection,
    tenant: &str,
    rule_id: Option<Uuid>,
    def: &RuleDef,
    kind: CaseKind,
    case_id: &str,
    patient_id: &str,
    patient: &facts::PatientRow,
) -> Result<Option<String>, Status> {
    if patient.archived {
        return Ok(Some("the patient is archived".into()));
    }
    if !patient_id.is_empty()
        && facts::opted_out_of(conn, tenant, patient_id, &def.category).await?
    {
        return Ok(Some(format!(
            "the patient opted out of `{}` (or of every category)",
            def.category
        )));
    }
    if let Some(rule_id) = rule_id
        && !case_id.is_empty()
    {
        let subject = crate::domain::enrollment::Subject::Case {
            kind,
            id: case_id.to_string(),
        }
        .key();
        let states: Vec<String> = sqlx::query_scalar(
            "SELECT state FROM enrollments WHERE tenant_id = $1 AND rule_id = $2 AND subject_key = $3",
        )
        .bind(tenant)
        .bind(rule_id)
        .bind(&subject)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::Db)?;
        if states.iter().any(|s| s == "active") {
            return Ok(Some(
                "an enrollment of this case in the rule is running".into(),
            ));
        }
        if !states.is_empty() && def.once_per_case() {
            return Ok(Some(
                "the case was enrolled in this rule before (once per case)".into(),
            ));
        }
    }
    Ok(None)
}

/// A backtest's report as the API shows it.
pub fn report_to_proto(outcome: &replay::Outcome) -> pb::BacktestReport {
    let r = &outcome.report;
    let seconds = outcome.elapsed.as_secs_f64();
    pb::BacktestReport {
        events_replayed: i64::try_from(r.events).unwrap_or(i64::MAX),
        first_event_time: r.first_event.map(timestamp),
        last_event_time: r.last_event.map(timestamp),
        truncated: outcome.truncated,
        cases_enrolled: i32::try_from(r.cases_enrolled).unwrap_or(i32::MAX),
        messages_by_channel: r
            .by_channel
            .iter()
            .map(|(c, n)| pb::ChannelCount {
                channel: *c as i32,
                count: i32::try_from(*n).unwrap_or(i32::MAX),
            })
            .collect(),
        message_count: i32::try_from(r.messages).unwrap_or(i32::MAX),
        task_count: i32::try_from(r.tasks).unwrap_or(i32::MAX),
        held_by_quiet_hours: i32::try_from(r.held_by_quiet_hours).unwrap_or(i32::MAX),
        held_by_frequency_cap: i32::try_from(r.held_by_frequency_cap).unwrap_or(i32::MAX),
        booked_count: i32::try_from(r.booked).unwrap_or(i32::MAX),
        median_time_to_book: r.median_time_to_book().map(duration_to),
        sample_actions: r
            .sample
            .iter()
            .map(|a| pb::BacktestAction {
                fire_time: Some(timestamp(a.fire)),
                send_time: a.send.map(timestamp),
                case_ref: a
                    .subject
                    .case()
                    .and_then(|(k, id)| convert::case_ref(k, id)),
                patient_id: a.patient_id.clone(),
                step_index: a.step_index as i32,
                channel: a.channel as i32,
                template_key: a.template_key.clone(),
                held_by_quiet_hours: a.held_by_quiet_hours,
                held_by_frequency_cap: a.held_by_frequency_cap,
            })
            .collect(),
        elapsed: Some(prost_types::Duration {
            seconds: outcome.elapsed.as_secs() as i64,
            nanos: outcome.elapsed.subsec_nanos() as i32,
        }),
        events_per_second: if seconds > 0.0 {
            r.events as f64 / seconds
        } else {
            0.0
        },
    }
}

pub fn progress_to_proto(p: &replay::Progress) -> pb::BacktestProgress {
    pb::BacktestProgress {
        events_replayed: i64::try_from(p.events).unwrap_or(i64::MAX),
        events_estimated: i64::try_from(p.estimated).unwrap_or(i64::MAX),
        replay_time: p.replay_time.map(timestamp),
        fraction: p.fraction,
        cases_enrolled: i32::try_from(p.cases_enrolled).unwrap_or(i32::MAX),
    }
}

/// Runs a prepared backtest, streaming progress then the report into `tx`; stops when the receiver
/// is dropped (the caller cancelled).
pub async fn stream_backtest(
    js: async_nats::jetstream::Context,
    tenant: String,
    sim: Simulation,
    limits: Limits,
    tx: tokio::sync::mpsc::Sender<Result<pb::BacktestRuleResponse, Status>>,
) {
    use pb::backtest_rule_response::Update;
    let progress_tx = tx.clone();
    let outcome = replay::run(&js, &tenant, sim, limits, |p| {
        match progress_tx.try_send(Ok(pb::BacktestRuleResponse {
            update: Some(Update::Progress(progress_to_proto(&p))),
        })) {
            Ok(()) => Ok(()),
            // A slow reader misses a progress message, nothing more.
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(ReplayError::Cancelled),
        }
    })
    .await;
    match outcome {
        Ok(outcome) => {
            tracing::info!(
                tenant,
                events = outcome.report.events,
                truncated = outcome.truncated,
                elapsed_ms = outcome.elapsed.as_millis() as u64,
                "backtest finished"
            );
            let _ = tx
                .send(Ok(pb::BacktestRuleResponse {
                    update: Some(Update::Report(report_to_proto(&outcome))),
                }))
                .await;
        }
        Err(ReplayError::Cancelled) => {
            tracing::info!(tenant, "backtest cancelled by the caller");
        }
        Err(err) => {
            tracing::warn!(tenant, error = %err, "backtest failed");
            let _ = tx
                .send(Err(Status::unavailable(format!(
                    "the event streams could not be read: {err}"
                ))))
                .await;
        }
    }
}
