//! `followup rules …`: the scheduler's automation rules, their enrollments and timelines from a terminal.
//!
//! Talks gRPC to `--addr` (default the dev stack's scheduler, `http://localhost:50054`) with `--token`
//! (default: an owner token for the dev clinic signed with the dev stack's key, as `followup token`
//! prints). A rule is named by its id or its exact name. `publish` puts a clinic or service event on
//! NATS (proto3 JSON in, protobuf out, header fields filled) to drive rules by hand.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::scheduler::v1 as pb;
use followup_proto::followup::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use prost::Message as _;
use tonic::transport::Channel;

use crate::client::{Access, authed, status_error};

mod dryrun;

#[derive(Args)]
pub struct RulesArgs {
    /// The scheduler service's gRPC address.
    #[arg(
        long,
        global = true,
        env = "FOLLOWUP_SCHEDULER_ADDR",
        default_value = "http://localhost:50054"
    )]
    addr: String,
    #[command(flatten)]
    access: Access,
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// The clinic's rules with their running enrollments.
    List {
        /// Only rules in this state: draft, playing or paused.
        #[arg(long)]
        state: Option<String>,
    },
    /// One rule: trigger, conditions and steps in words.
    Show {
        rule: String,
        /// A version (default: the latest).
        #[arg(long, default_value_t = 0)]
        version: i32,
    },
    /// Creates a rule from a file of proto3 JSON (a followup.scheduler.v1.Rule), as a draft.
    Create {
        file: PathBuf,
        /// Play it at once.
        #[arg(long)]
        play: bool,
        /// Only check it.
        #[arg(long)]
        validate_only: bool,
    },
    /// Changes the named fields of a rule from a file of proto3 JSON (a draft in place; a playing or
    /// paused rule gets a new version for new enrollments).
    Update {
        rule: String,
        file: PathBuf,
        /// Comma-separated: name, description, category, transactional, mode, case_kind, trigger,
        /// condition, steps, stop_reasons, owner_staff_id, schedule_zone, skip_missed_older_than.
        #[arg(long, value_delimiter = ',', required = true)]
        fields: Vec<String>,
    },
    /// Plays a rule: it enrolls from now on; held steps fire.
    Play { rule: String },
    /// Pauses a rule: it enrolls nobody and holds its steps.
    Pause { rule: String },
    /// Deletes a paused or draft rule; its enrollments stop.
    Delete { rule: String },
    /// The shipped templates, and which are enabled.
    Templates,
    /// Creates the clinic's rule from a template.
    Enable {
        template: String,
        /// Play it at once.
        #[arg(long)]
        play: bool,
        /// The task owner (staff id) when a case has none.
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// Enrollments, newest first.
    Enrollments {
        /// Only this rule's (id or name).
        #[arg(long)]
        rule: Option<String>,
        /// Only this plan's (case presentation).
        #[arg(long)]
        plan: Option<String>,
        /// Only this care case's.
        #[arg(long)]
        care_case: Option<String>,
        #[arg(long)]
        patient: Option<String>,
        /// active, held, finished or stopped.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// One enrollment: every step with its local due time and outcome, and its history.
    Timeline { enrollment: String },
    /// Cancels an enrollment (every pending step).
    Cancel {
        enrollment: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The facts the scheduler holds for a case.
    Facts {
        #[arg(long, conflicts_with = "care_case")]
        plan: Option<String>,
        #[arg(long)]
        care_case: Option<String>,
    },
    /// Shows the clinic's scheduling settings, or changes the ones given.
    Settings {
        /// IANA zone, e.g. Europe/London.
        #[arg(long)]
        zone: Option<String>,
        /// Comma-separated weekdays the clinic is closed, e.g. sat,sun (empty to clear).
        #[arg(long, value_delimiter = ',')]
        closed_weekdays: Option<Vec<String>>,
        /// Comma-separated closed dates YYYY-MM-DD (empty to clear).
        #[arg(long, value_delimiter = ',')]
        closed_dates: Option<Vec<String>>,
        /// Staff id tasks go to when neither the case nor the rule has an owner.
        #[arg(long)]
        default_owner: Option<String>,
    },
    /// What a rule (id, name, or a proto3 JSON file of a draft) would do to a case: whether it enrolls,
    /// each step's local time after quiet hours, and the messages as notifications would render them.
    Preview {
        rule: String,
        /// The case: a plan id (UUID), else a care case id.
        #[arg(long = "case")]
        case_id: String,
        /// When the trigger fires (RFC 3339); default now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Replays past events through a rule (id, name, or a proto3 JSON file of a draft) in a dry run
    /// and reports what it would have done. Ctrl-C cancels.
    Backtest {
        rule: String,
        /// How far back: 30d, 12h, 90m.
        #[arg(long, default_value = "1d")]
        since: String,
        /// Stop after this many events (0 = the service's default, 1,000,000).
        #[arg(long, default_value_t = 0)]
        max_events: i64,
        /// Actions to list at the end.
        #[arg(long, default_value_t = 20)]
        sample: i32,
    },
    /// Puts a patient on the waitlist for an earlier appointment.
    WaitlistAdd {
        patient: String,
        /// Appointment length needed, minutes.
        #[arg(long, default_value_t = 30)]
        minutes: i64,
        /// Comma-separated practitioners accepted (default any).
        #[arg(long, value_delimiter = ',')]
        practitioners: Vec<String>,
        /// The plan the visit belongs to.
        #[arg(long, default_value = "")]
        plan: String,
    },
    /// The waitlist, oldest first.
    Waitlist,
    /// Cancelled slots being offered (or that were), newest first.
    Slots,
    /// One slot with its offers in rank order.
    Slot { slot: String },
    /// Claims an offer for its patient (e.g. on the phone).
    Claim { offer: String },
    /// Shows the clinic's refill settings, or changes the ones given.
    RefillSettings {
        /// Offers sent per batch.
        #[arg(long)]
        batch_size: Option<i32>,
        /// Minutes between batches while the slot is open.
        #[arg(long)]
        interval_minutes: Option<i64>,
        /// Stop offering when the slot starts within this many minutes.
        #[arg(long)]
        cutoff_minutes: Option<i64>,
        /// Whether cancelled slots are offered at all.
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Publishes an event as its producer would: KIND is its subject tail (`plans.plan_sent`,
    /// `appointment.booked`, `enquiry.created`, ...), JSON its fields in proto3 JSON; event_id,
    /// tenant_id and occurred_at are filled in when missing.
    Publish { kind: String, json: String },
}

fn name(text: &str, prefix: &str) -> String {
    text.trim_start_matches(prefix).to_lowercase()
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn duration(d: &Option<prost_types::Duration>) -> String {
    let Some(d) = d else {
        return "-".into();
    };
    let s = d.seconds;
    match s {
        _ if s % 86_400 == 0 && s > 0 => format!("{} days", s / 86_400),
        _ if s % 3600 == 0 && s > 0 => format!("{} h", s / 3600),
        _ if s % 60 == 0 && s > 0 => format!("{} min", s / 60),
        _ => format!("{s} s"),
    }
}

fn case_ref(case: &Option<common::CaseRef>) -> String {
    match case.as_ref().and_then(|c| c.target.as_ref()) {
        Some(common::case_ref::Target::PlanId(id)) => format!("plan {id}"),
        Some(common::case_ref::Target::CareCaseId(id)) => format!("care case {id}"),
        None => "-".into(),
    }
}

fn rule_state(n: i32) -> String {
    pb::RuleState::try_from(n)
        .map(|s| name(s.as_str_name(), "RULE_STATE_"))
        .unwrap_or_default()
}

fn trigger_text(t: &Option<pb::Trigger>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let kind = pb::TriggerType::try_from(t.r#type)
        .map(|k| name(k.as_str_name(), "TRIGGER_TYPE_"))
        .unwrap_or_default();
    match pb::TriggerType::try_from(t.r#type) {
        Ok(pb::TriggerType::LapsedPatient) => format!("{kind} ({} months)", t.lapsed_months),
        Ok(pb::TriggerType::CareCaseSessionsReached) => {
            format!("{kind} ({} sessions)", t.session_threshold)
        }
        Ok(pb::TriggerType::Cancellation) => format!(
            "{kind} (grace {})",
            if t.cancellation_grace.is_some() {
                duration(&t.cancellation_grace)
            } else {
                "3 min".into()
            }
        ),
        _ if t.window.is_some() => format!("{kind} ({})", duration(&t.window)),
        _ => kind,
    }
}

fn condition_text(c: &pb::Condition) -> String {
    match &c.kind {
        Some(pb::condition::Kind::All(g)) => format!(
            "all({})",
            g.conditions
                .iter()
                .map(condition_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(pb::condition::Kind::Any(g)) => format!(
            "any({})",
            g.conditions
                .iter()
                .map(condition_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(pb::condition::Kind::Comparison(c)) => {
            let field = pb::CaseField::try_from(c.field)
                .map(|f| name(f.as_str_name(), "CASE_FIELD_"))
                .unwrap_or_default();
            let op = pb::Operator::try_from(c.operator)
                .map(|o| name(o.as_str_name(), "OPERATOR_"))
                .unwrap_or_default();
            let value = |v: &Option<pb::Value>| match v.as_ref().and_then(|v| v.kind.as_ref()) {
                Some(pb::value::Kind::Number(n)) => n.to_string(),
                Some(pb::value::Kind::Text(t)) => format!("{t:?}"),
                Some(pb::value::Kind::Flag(b)) => b.to_string(),
                Some(pb::value::Kind::Date(d)) => d.clone(),
                Some(pb::value::Kind::DaysFromToday(d)) => format!("today{d:+}d"),
                Some(pb::value::Kind::Money(m)) => format!("{} {}", m.amount_minor, m.currency),
                Some(pb::value::Kind::CaseStatus(s)) => common::CaseStatus::try_from(*s)
                    .map(|s| name(s.as_str_name(), "CASE_STATUS_"))
                    .unwrap_or_default(),
                Some(pb::value::Kind::CareCaseStatus(s)) => common::CareCaseStatus::try_from(*s)
                    .map(|s| name(s.as_str_name(), "CARE_CASE_STATUS_"))
                    .unwrap_or_default(),
                None => "?".into(),
            };
            match &c.upper {
                Some(_) => format!(
                    "{field} between {} and {}",
                    value(&c.value),
                    value(&c.upper)
                ),
                None => format!("{field} {op} {}", value(&c.value)),
            }
        }
        None => "?".into(),
    }
}

fn step_text(step: &pb::Step) -> String {
    let action = match &step.action {
        Some(pb::step::Action::Wait(w)) => {
            let until = match &w.until {
                Some(pb::wait_action::Until::Duration(d)) => duration(&Some(*d)),
                Some(pb::wait_action::Until::DaysAtTime(d)) => {
                    format!("{} days at {}", d.days, d.local_time)
                }
                None => "?".into(),
            };
            let mut skip = Vec::new();
            if w.skip_weekends {
                skip.push("weekends");
            }
            if w.skip_closed_days {
                skip.push("closed days");
            }
            if skip.is_empty() {
                format!("wait {until}")
            } else {
                format!("wait {until}, skipping {}", skip.join(" and "))
            }
        }
        Some(pb::step::Action::Send(s)) => format!(
            "send {} {}",
            common::Channel::try_from(s.channel)
                .map(|c| name(c.as_str_name(), "CHANNEL_"))
                .unwrap_or_default(),
            s.template_key
        ),
        Some(pb::step::Action::Task(t)) => format!("task {:?}", t.title),
        Some(pb::step::Action::Webhook(w)) => {
            if w.webhook_endpoint_id.is_empty() {
                "webhook (every subscribed endpoint)".into()
            } else {
                format!("webhook {}", w.webhook_endpoint_id)
            }
        }
        None => "?".into(),
    };
    match &step.only_if {
        Some(guard) => format!("{action}  only if {}", condition_text(guard)),
        None => action,
    }
}

fn read_rule(file: &Path) -> anyhow::Result<pb::Rule> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    from_json::<pb::Rule>("followup.scheduler.v1.Rule", &text).with_context(|| {
        format!(
            "{} is not a followup.scheduler.v1.Rule in proto3 JSON",
            file.display()
        )
    })
}

fn from_json<T: prost::Message + Default>(message: &str, text: &str) -> anyhow::Result<T> {
    let descriptor = followup_proto::descriptor_pool()
        .get_message_by_name(message)
        .with_context(|| format!("no schema for {message}"))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let dynamic = prost_reflect::DynamicMessage::deserialize(descriptor, &mut deserializer)?;
    deserializer.end()?;
    Ok(dynamic.transcode_to::<T>()?)
}

struct Client {
    inner: SchedulerServiceClient<Channel>,
    token: String,
}

impl Client {
    /// A rule's id from its id or its exact name.
    async fn rule_id(&mut self, rule: &str) -> anyhow::Result<String> {
        if rule.len() == 36 && rule.chars().filter(|c| *c == '-').count() == 4 {
            return Ok(rule.to_string());
        }
        let mut token = String::new();
        loop {
            let page = self
                .inner
                .list_rules(authed(
                    pb::ListRulesRequest {
                        page_size: 500,
                        page_token: token,
                        ..Default::default()
                    },
                    &self.token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(found) = page.rules.iter().find(|r| r.name == rule) {
                return Ok(found.rule_id.clone());
            }
            if page.next_page_token.is_empty() {
                bail!("no rule with id or name `{rule}` (see `followup rules list`)");
            }
            token = page.next_page_token;
        }
    }
}

fn print_rule(rule: &pb::Rule) {
    println!("{}  {}", rule.rule_id, rule.name);
    println!(
        "  state      {} (version {})",
        rule_state(rule.state),
        rule.rule_version
    );
    if !rule.template_id.is_empty() {
        println!("  template   {}", rule.template_id);
    }
    println!(
        "  case kind  {}",
        common::CaseKind::try_from(rule.case_kind)
            .map(|k| name(k.as_str_name(), "CASE_KIND_"))
            .unwrap_or_default()
    );
    println!("  trigger    {}", trigger_text(&rule.trigger));
    println!(
        "  mode       {}",
        pb::EnrollmentMode::try_from(rule.mode)
            .map(|m| name(m.as_str_name(), "ENROLLMENT_MODE_"))
            .unwrap_or_default()
    );
    println!(
        "  category   {}{}",
        rule.category,
        if rule.transactional {
            " (transactional)"
        } else {
            ""
        }
    );
    if let Some(condition) = &rule.condition {
        println!("  condition  {}", condition_text(condition));
    }
    let stops: Vec<String> = rule
        .stop_reasons
        .iter()
        .filter_map(|r| common::StopReason::try_from(*r).ok())
        .map(|r| name(r.as_str_name(), "STOP_REASON_"))
        .collect();
    println!(
        "  stops on   {}",
        if stops.is_empty() {
            "the default set".to_string()
        } else {
            stops.join(", ")
        }
    );
    println!(
        "  enrollments {} running, {} in all",
        rule.active_enrollment_count, rule.total_enrollment_count
    );
    println!("  steps");
    for (i, step) in rule.steps.iter().enumerate() {
        println!("    {i:>2}  {}", step_text(step));
    }
}

fn weekday(text: &str) -> anyhow::Result<i32> {
    let day = match text.trim().to_lowercase().get(..3) {
        Some("mon") => pb::Weekday::Monday,
        Some("tue") => pb::Weekday::Tuesday,
        Some("wed") => pb::Weekday::Wednesday,
        Some("thu") => pb::Weekday::Thursday,
        Some("fri") => pb::Weekday::Friday,
        Some("sat") => pb::Weekday::Saturday,
        Some("sun") => pb::Weekday::Sunday,
        _ => bail!("`{text}` is not a weekday (mon, tue, ... sun)"),
    };
    Ok(day as i32)
}

pub async fn run(args: RulesArgs) -> anyhow::Result<()> {
    if let RulesCommand::Publish { kind, json } = &args.command {
        return publish(&args, kind, json).await;
    }
    let token = args.access.token()?;
    let inner = SchedulerServiceClient::connect(args.addr.clone())
        .await
        .with_context(|| {
            format!(
                "connecting to the scheduler at {} (is `followup dev` running?)",
                args.addr
            )
        })?;
    let mut c = Client { inner, token };
    let t = c.token.clone();
    match args.command {
        RulesCommand::List { state } => {
            let states = match state.as_deref() {
                None => vec![],
                Some("draft") => vec![pb::RuleState::Draft as i32],
                Some("playing") => vec![pb::RuleState::Playing as i32],
                Some("paused") => vec![pb::RuleState::Paused as i32],
                Some(other) => bail!("`{other}` is not a rule state (draft, playing, paused)"),
            };
            let rules = c
                .inner
                .list_rules(authed(
                    pb::ListRulesRequest {
                        states,
                        page_size: 500,
                        ..Default::default()
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .rules;
            if rules.is_empty() {
                println!(
                    "no rules yet: `followup rules templates`, then `followup rules enable <template> --play`"
                );
            }
            println!(
                "{:<36}  {:<8} {:>3} {:>7}  {:<34}  name",
                "id", "state", "v", "running", "trigger"
            );
            for r in rules {
                println!(
                    "{:<36}  {:<8} {:>3} {:>7}  {:<34}  {}",
                    r.rule_id,
                    rule_state(r.state),
                    r.rule_version,
                    r.active_enrollment_count,
                    trigger_text(&r.trigger),
                    r.name
                );
            }
        }
        RulesCommand::Show { rule, version } => {
            let rule_id = c.rule_id(&rule).await?;
            let rule = c
                .inner
                .get_rule(authed(
                    pb::GetRuleRequest {
                        rule_id,
                        rule_version: version,
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .rule
                .unwrap_or_default();
            print_rule(&rule);
        }
        RulesCommand::Create {
            file,
            play,
            validate_only,
        } => {
            let rule = read_rule(&file)?;
            let created = c
                .inner
                .create_rule(authed(
                    pb::CreateRuleRequest {
                        rule: Some(rule),
                        validate_only,
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .rule
                .unwrap_or_default();
            if validate_only {
                println!("valid");
                return Ok(());
            }
            let rule = if play {
                c.inner
                    .play_rule(authed(
                        pb::PlayRuleRequest {
                            rule_id: created.rule_id.clone(),
                        },
                        &t,
                    )?)
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .rule
                    .unwrap_or_default()
            } else {
                created
            };
            print_rule(&rule);
        }
        RulesCommand::Update { rule, file, fields } => {
            let rule_id = c.rule_id(&rule).await?;
            let mut update = read_rule(&file)?;
            update.rule_id = rule_id;
            let updated = c
                .inner
                .update_rule(authed(
                    pb::UpdateRuleRequest {
                        rule: Some(update),
                        update_mask: Some(prost_types::FieldMask { paths: fields }),
                        validate_only: false,
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .rule
                .unwrap_or_default();
            print_rule(&updated);
        }
        RulesCommand::Play { rule } => {
            let rule_id = c.rule_id(&rule).await?;
            let played = c
                .inner
                .play_rule(authed(pb::PlayRuleRequest { rule_id }, &t)?)
                .await
                .map_err(status_error)?
                .into_inner();
            let rule = played.rule.unwrap_or_default();
            println!(
                "{} is playing; {} held steps released, {} skipped as too old",
                rule.name, played.released_step_count, played.skipped_step_count
            );
        }
        RulesCommand::Pause { rule } => {
            let rule_id = c.rule_id(&rule).await?;
            let rule = c
                .inner
                .pause_rule(authed(pb::PauseRuleRequest { rule_id }, &t)?)
                .await
                .map_err(status_error)?
                .into_inner()
                .rule
                .unwrap_or_default();
            println!(
                "{} is paused: it enrolls nobody and holds its {} running enrollments",
                rule.name, rule.active_enrollment_count
            );
        }
        RulesCommand::Delete { rule } => {
            let rule_id = c.rule_id(&rule).await?;
            c.inner
                .delete_rule(authed(
                    pb::DeleteRuleRequest {
                        rule_id: rule_id.clone(),
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?;
            println!("deleted {rule_id}");
        }
        RulesCommand::Templates => {
            let templates = c
                .inner
                .list_rule_templates(authed(pb::ListRuleTemplatesRequest {}, &t)?)
                .await
                .map_err(status_error)?
                .into_inner()
                .templates;
            for template in templates {
                let enabled = if template.enabled_rule_id.is_empty() {
                    String::new()
                } else {
                    format!("  [enabled: {}]", template.enabled_rule_id)
                };
                println!("{:<26} {}{enabled}", template.template_id, template.name);
                println!("{:<26} {}", "", template.description);
            }
        }
        RulesCommand::Enable {
            template,
            play,
            owner,
        } => {
            let rule = c
                .inner
                .enable_rule_template(authed(
                    pb::EnableRuleTemplateRequest {
                        template_id: template,
                        play,
                        owner_staff_id: owner,
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .rule
                .unwrap_or_default();
            print_rule(&rule);
        }
        RulesCommand::Enrollments {
            rule,
            plan,
            care_case,
            patient,
            state,
            limit,
        } => {
            let rule_id = match rule {
                Some(rule) => c.rule_id(&rule).await?,
                None => String::new(),
            };
            let case = match (plan, care_case) {
                (Some(plan), _) => Some(common::CaseRef {
                    target: Some(common::case_ref::Target::PlanId(plan)),
                }),
                (_, Some(care)) => Some(common::CaseRef {
                    target: Some(common::case_ref::Target::CareCaseId(care)),
                }),
                _ => None,
            };
            let states = match state.as_deref() {
                None => vec![],
                Some("active") => vec![pb::EnrollmentState::Active as i32],
                Some("held") => vec![pb::EnrollmentState::Held as i32],
                Some("finished") => vec![pb::EnrollmentState::Finished as i32],
                Some("stopped") => vec![pb::EnrollmentState::Stopped as i32],
                Some(other) => {
                    bail!("`{other}` is not an enrollment state (active, held, finished, stopped)")
                }
            };
            let enrollments = c
                .inner
                .list_enrollments(authed(
                    pb::ListEnrollmentsRequest {
                        case_ref: case,
                        patient_id: patient.unwrap_or_default(),
                        rule_id,
                        states,
                        page_size: limit,
                        page_token: String::new(),
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .enrollments;
            if enrollments.is_empty() {
                println!("no enrollments");
            }
            for e in enrollments {
                let state = pb::EnrollmentState::try_from(e.state)
                    .map(|s| name(s.as_str_name(), "ENROLLMENT_STATE_"))
                    .unwrap_or_default();
                let detail = match common::StopReason::try_from(e.stop_reason) {
                    Ok(common::StopReason::Unspecified) | Err(_) => {
                        format!("next step {}", time(&e.next_step_time))
                    }
                    Ok(reason) => name(reason.as_str_name(), "STOP_REASON_"),
                };
                println!(
                    "{}  {:<8}  {}  {} (v{})  {}  patient {}  started {} by {}",
                    e.enrollment_id,
                    state,
                    detail,
                    e.rule_name,
                    e.rule_version,
                    case_ref(&e.case_ref),
                    if e.patient_id.is_empty() {
                        "-"
                    } else {
                        &e.patient_id
                    },
                    time(&e.start_time),
                    e.trigger
                );
            }
        }
        RulesCommand::Timeline { enrollment } => {
            let timeline = c
                .inner
                .get_enrollment_timeline(authed(
                    pb::GetEnrollmentTimelineRequest {
                        enrollment_id: enrollment,
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            let e = timeline.enrollment.unwrap_or_default();
            println!(
                "{}  {} (v{})  {}  zone {}",
                e.enrollment_id,
                e.rule_name,
                e.rule_version,
                case_ref(&e.case_ref),
                e.time_zone
            );
            println!("steps");
            for step in timeline.steps {
                let state = pb::StepRunState::try_from(step.state)
                    .map(|s| name(s.as_str_name(), "STEP_RUN_STATE_"))
                    .unwrap_or_default();
                let when = if step.local_due_time.is_empty() {
                    String::new()
                } else {
                    format!("  due {}", step.local_due_time)
                };
                let extra = [step.outcome.as_str(), step.reason.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                println!(
                    "  {:>2}  {:<9} {}{when}{}",
                    step.step_index,
                    state,
                    step.step.as_ref().map(step_text).unwrap_or_default(),
                    if extra.is_empty() {
                        String::new()
                    } else {
                        format!("  ({extra})")
                    }
                );
            }
            println!("history");
            for h in timeline.history {
                println!("  {}  {}", time(&h.time), h.summary);
            }
        }
        RulesCommand::Cancel { enrollment, reason } => {
            let e = c
                .inner
                .cancel_enrollment(authed(
                    pb::CancelEnrollmentRequest {
                        enrollment_id: enrollment,
                        reason,
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .enrollment
                .unwrap_or_default();
            println!("cancelled {} ({})", e.enrollment_id, e.rule_name);
        }
        RulesCommand::Facts { plan, care_case } => {
            let target = match (plan, care_case) {
                (Some(plan), _) => common::case_ref::Target::PlanId(plan),
                (_, Some(care)) => common::case_ref::Target::CareCaseId(care),
                _ => bail!("name the case: --plan ID or --care-case ID"),
            };
            let f = c
                .inner
                .get_case_facts(authed(
                    pb::GetCaseFactsRequest {
                        case_ref: Some(common::CaseRef {
                            target: Some(target),
                        }),
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .facts
                .unwrap_or_default();
            let money = |m: &Option<common::Money>| {
                m.as_ref()
                    .map(|m| format!("{} {}", m.amount_minor, m.currency))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{}  patient {}  zone {}",
                case_ref(&f.case_ref),
                f.patient_id,
                f.time_zone
            );
            println!("  name                 {}", f.name);
            println!(
                "  open/closed          {}",
                common::CareCaseStatus::try_from(f.open_closed)
                    .map(|s| name(s.as_str_name(), "CARE_CASE_STATUS_"))
                    .unwrap_or_default()
            );
            if f.case_kind == common::CaseKind::CasePresentation as i32 {
                println!(
                    "  status               {}",
                    common::CaseStatus::try_from(f.presentation_status)
                        .map(|s| name(s.as_str_name(), "CASE_STATUS_"))
                        .unwrap_or_default()
                );
                println!("  viewed               {}", f.viewed);
                println!(
                    "  sent                 {} ({} days ago)",
                    time(&f.sent_time),
                    f.days_since_sent
                );
            }
            println!(
                "  issue / expiry       {} / {}",
                if f.issue_date.is_empty() {
                    "-"
                } else {
                    &f.issue_date
                },
                if f.expiry_date.is_empty() {
                    "-"
                } else {
                    &f.expiry_date
                }
            );
            println!(
                "  sessions             {} done, {} booked of {} (left {}; {:.0}% booked, {:.0}% done)",
                f.sessions_done,
                f.sessions_booked,
                f.max_sessions,
                f.sessions_left,
                f.percent_sessions_booked,
                f.percent_sessions_done
            );
            println!(
                "  invoiced             {} of {} ({:.0}%), left {}",
                money(&f.total_invoiced),
                money(&f.invoiceable_amount),
                f.percent_invoiced,
                money(&f.invoiceable_amount_left)
            );
            println!("  value                {}", money(&f.value));
        }
        RulesCommand::Settings {
            zone,
            closed_weekdays,
            closed_dates,
            default_owner,
        } => {
            let mut settings = pb::SchedulerSettings::default();
            let mut paths = Vec::new();
            if let Some(zone) = zone {
                settings.time_zone = zone;
                paths.push("time_zone".to_string());
            }
            if let Some(days) = closed_weekdays {
                settings.closed_weekdays = days
                    .iter()
                    .filter(|d| !d.is_empty())
                    .map(|d| weekday(d))
                    .collect::<anyhow::Result<_>>()?;
                paths.push("closed_weekdays".to_string());
            }
            if let Some(dates) = closed_dates {
                settings.closed_dates = dates.into_iter().filter(|d| !d.is_empty()).collect();
                paths.push("closed_dates".to_string());
            }
            if let Some(owner) = default_owner {
                settings.default_owner_staff_id = owner;
                paths.push("default_owner_staff_id".to_string());
            }
            let settings = if paths.is_empty() {
                c.inner
                    .get_scheduler_settings(authed(pb::GetSchedulerSettingsRequest {}, &t)?)
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .settings
            } else {
                c.inner
                    .update_scheduler_settings(authed(
                        pb::UpdateSchedulerSettingsRequest {
                            settings: Some(settings),
                            update_mask: Some(prost_types::FieldMask { paths }),
                        },
                        &t,
                    )?)
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .settings
            }
            .unwrap_or_default();
            let days: Vec<String> = settings
                .closed_weekdays
                .iter()
                .filter_map(|d| pb::Weekday::try_from(*d).ok())
                .map(|d| name(d.as_str_name(), "WEEKDAY_"))
                .collect();
            println!("time zone        {}", settings.time_zone);
            println!(
                "closed weekdays  {}",
                if days.is_empty() {
                    "-".into()
                } else {
                    days.join(", ")
                }
            );
            println!(
                "closed dates     {}",
                if settings.closed_dates.is_empty() {
                    "-".into()
                } else {
                    settings.closed_dates.join(", ")
                }
            );
            println!(
                "default owner    {}",
                if settings.default_owner_staff_id.is_empty() {
                    "-"
                } else {
                    &settings.default_owner_staff_id
                }
            );
        }
        RulesCommand::Publish { .. } => {}
        RulesCommand::Preview { rule, case_id, at } => {
            dryrun::preview(&mut c, &rule, &case_id, at.as_deref()).await?;
        }
        RulesCommand::Backtest {
            rule,
            since,
            max_events,
            sample,
        } => {
            dryrun::backtest(&mut c, &rule, &since, max_events, sample).await?;
        }
        RulesCommand::WaitlistAdd {
            patient,
            minutes,
            practitioners,
            plan,
        } => {
            let mut w = dryrun::waitlist(&args.addr).await?;
            let entry = w
                .create_waitlist_entry(authed(
                    pb::CreateWaitlistEntryRequest {
                        entry: Some(pb::WaitlistEntry {
                            patient_id: patient,
                            duration: Some(prost_types::Duration {
                                seconds: minutes * 60,
                                nanos: 0,
                            }),
                            practitioner_ids: practitioners,
                            plan_id: plan,
                            ..Default::default()
                        }),
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .entry
                .unwrap_or_default();
            println!(
                "{}  {} waits for {} ({} min)",
                entry.waitlist_entry_id,
                entry.patient_id,
                if entry.practitioner_ids.is_empty() {
                    "any practitioner".to_string()
                } else {
                    entry.practitioner_ids.join(", ")
                },
                minutes
            );
        }
        RulesCommand::Waitlist => {
            let mut w = dryrun::waitlist(&args.addr).await?;
            let entries = w
                .list_waitlist_entries(authed(
                    pb::ListWaitlistEntriesRequest {
                        page_size: 500,
                        ..Default::default()
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .entries;
            println!(
                "{:<36}  {:<16} {:>5}  {:<12} practitioners",
                "entry", "patient", "min", "source"
            );
            for e in entries {
                println!(
                    "{:<36}  {:<16} {:>5}  {:<12} {}",
                    e.waitlist_entry_id,
                    e.patient_id,
                    e.duration.map(|d| d.seconds / 60).unwrap_or(0),
                    e.source,
                    if e.practitioner_ids.is_empty() {
                        "any".to_string()
                    } else {
                        e.practitioner_ids.join(",")
                    }
                );
            }
        }
        RulesCommand::Slots => {
            let mut w = dryrun::waitlist(&args.addr).await?;
            let slots = w
                .list_open_slots(authed(
                    pb::ListOpenSlotsRequest {
                        page_size: 100,
                        ..Default::default()
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .slots;
            println!(
                "{:<36}  {:<13} {:<18} {:>6} {:>10}  cancelled appointment",
                "slot", "state", "starts", "offers", "candidates"
            );
            for slot in slots {
                println!(
                    "{:<36}  {:<13} {:<18} {:>6} {:>10}  {}",
                    slot.slot_id,
                    dryrun::slot_state(slot.state),
                    time(&slot.slot.as_ref().and_then(|x| x.start_time)),
                    slot.offers_sent,
                    slot.candidate_count,
                    slot.cancelled_appointment_id
                );
            }
        }
        RulesCommand::Slot { slot } => {
            let mut w = dryrun::waitlist(&args.addr).await?;
            let answer = w
                .get_open_slot(authed(pb::GetOpenSlotRequest { slot_id: slot }, &t)?)
                .await
                .map_err(status_error)?
                .into_inner();
            let s = answer.slot.unwrap_or_default();
            let spec = s.slot.clone().unwrap_or_default();
            println!(
                "{}  {}  starts {} ({}) with {}",
                s.slot_id,
                dryrun::slot_state(s.state),
                time(&spec.start_time),
                duration(&spec.duration),
                spec.practitioner_id
            );
            for o in answer.offers {
                println!(
                    "  {:>3}  batch {:<2} {:<36}  {:<16} {:<10} sent {}",
                    o.rank,
                    o.batch,
                    o.slot_offer_id,
                    o.patient_id,
                    dryrun::offer_state(o.state),
                    time(&o.send_time)
                );
            }
        }
        RulesCommand::Claim { offer } => {
            let mut w = dryrun::waitlist(&args.addr).await?;
            let answer = w
                .claim_slot_offer(authed(
                    pb::ClaimSlotOfferRequest {
                        slot_offer_id: offer,
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            let o = answer.offer.unwrap_or_default();
            println!("claimed for {}: slot_claimed published", o.patient_id);
        }
        RulesCommand::RefillSettings {
            batch_size,
            interval_minutes,
            cutoff_minutes,
            enabled,
        } => {
            let mut w = dryrun::waitlist(&args.addr).await?;
            let minutes = |m: i64| prost_types::Duration {
                seconds: m * 60,
                nanos: 0,
            };
            let mut paths = Vec::new();
            let mut settings = pb::WaitlistSettings::default();
            if let Some(n) = batch_size {
                settings.batch_size = n;
                paths.push("batch_size".to_string());
            }
            if let Some(m) = interval_minutes {
                settings.batch_interval = Some(minutes(m));
                paths.push("batch_interval".to_string());
            }
            if let Some(m) = cutoff_minutes {
                settings.cutoff = Some(minutes(m));
                paths.push("cutoff".to_string());
            }
            if let Some(on) = enabled {
                settings.enabled = on;
                paths.push("enabled".to_string());
            }
            let shown = if paths.is_empty() {
                w.get_waitlist_settings(authed(pb::GetWaitlistSettingsRequest {}, &t)?)
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .settings
            } else {
                w.update_waitlist_settings(authed(
                    pb::UpdateWaitlistSettingsRequest {
                        settings: Some(settings),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    },
                    &t,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .settings
            }
            .unwrap_or_default();
            println!(
                "enabled {}  batches of {} every {}  cut-off {} before the start  templates {} / {}",
                shown.enabled,
                shown.batch_size,
                duration(&shown.batch_interval),
                duration(&shown.cutoff),
                shown.offer_template_key,
                shown.taken_template_key
            );
        }
    }
    Ok(())
}

/// Publishes an event of the contract table from proto3 JSON, with its header fields filled in.
async fn publish(args: &RulesArgs, kind: &str, json: &str) -> anyhow::Result<()> {
    use followup_proto::subjects::{EVENTS, Stream};
    let found = EVENTS
        .iter()
        .find(|k| k.tail == kind || format!("{}.{}", k.stream.prefix(), k.tail) == kind)
        .with_context(|| {
            let kinds: Vec<&str> = EVENTS
                .iter()
                .filter(|k| matches!(k.stream, Stream::Clinic | Stream::Followup))
                .map(|k| k.tail)
                .collect();
            format!(
                "`{kind}` is not an event kind; one of: {}",
                kinds.join(", ")
            )
        })?;
    let mut value: serde_json::Value =
        serde_json::from_str(json).context("the event is not JSON")?;
    let object = value
        .as_object_mut()
        .context("the event must be a JSON object")?;
    let event_id = followup_platform::event::new_event_id().to_string();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    object
        .entry("eventId")
        .or_insert_with(|| event_id.clone().into());
    object
        .entry("tenantId")
        .or_insert_with(|| args.access.tenant.clone().into());
    object.entry("occurredAt").or_insert_with(|| now.into());
    let event_id = object
        .get("eventId")
        .and_then(|v| v.as_str())
        .unwrap_or(&event_id)
        .to_string();
    let tenant = object
        .get("tenantId")
        .and_then(|v| v.as_str())
        .unwrap_or(&args.access.tenant)
        .to_string();
    let descriptor = found.descriptor().context("no schema for the event")?;
    let dynamic = prost_reflect::DynamicMessage::deserialize(descriptor, value)
        .with_context(|| format!("not a valid {} in proto3 JSON", found.message))?;
    let subject = found.subject(&tenant).map_err(|e| anyhow::anyhow!("{e}"))?;
    args.access
        .publish_encoded(subject.clone(), &event_id, dynamic.encode_to_vec())
        .await?;
    println!("published {subject} ({event_id})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_from_proto3_json() {
        let rule: pb::Rule = from_json(
            "followup.scheduler.v1.Rule",
            r#"{"name": "Quick", "category": "test", "caseKind": "CASE_KIND_CASE_PRESENTATION",
                "trigger": {"type": "TRIGGER_TYPE_PLAN_SENT"},
                "steps": [{"wait": {"duration": "60s"}}, {"send": {"channel": "CHANNEL_SMS", "templateKey": "plan_follow_up_1"}}]}"#,
        )
        .expect("parses");
        assert_eq!(rule.steps.len(), 2);
        assert_eq!(step_text(&rule.steps[0]), "wait 1 min");
        assert_eq!(step_text(&rule.steps[1]), "send sms plan_follow_up_1");
        assert!(from_json::<pb::Rule>("followup.scheduler.v1.Rule", r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn weekdays_parse() {
        assert_eq!(weekday("Sat").ok(), Some(pb::Weekday::Saturday as i32));
        assert!(weekday("x").is_err());
    }
}
