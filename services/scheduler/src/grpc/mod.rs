//! The gRPC edge of the scheduler service: `followup.scheduler.v1.SchedulerService` (with preview and
//! backtest in `dryrun`) and `followup.scheduler.v1.WaitlistService`.

mod dryrun;
mod waitlist;

pub use waitlist::WaitlistServiceApi;

use base64::Engine as _;
use followup_platform::auth::{Authenticator, Caller, Role, caller};
use followup_platform::grpc::{GrpcServices, invalid_argument};
use followup_proto::followup::scheduler::v1 as pb;
use followup_proto::followup::scheduler::v1::scheduler_service_server::{
    SchedulerService, SchedulerServiceServer,
};
use followup_proto::followup::scheduler::v1::waitlist_service_server::WaitlistServiceServer;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::convert::{self, FactsView, case_from_ref, enum_value};
use crate::domain::FieldError;
use crate::domain::schedule::{local_date, parse_date, parse_zone};
use crate::error::Error;
use crate::storage::settings::{self, ClinicSettings};
use crate::storage::{Store, enrollments, facts, rules};
use crate::templates;

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator, api: SchedulerServiceApi) -> GrpcServices {
    let waitlist = WaitlistServiceApi {
        pool: api.pool.clone(),
        store: api.store.clone(),
    };
    GrpcServices::new()
        .with(SchedulerServiceServer::with_interceptor(api, auth.clone()))
        .with(WaitlistServiceServer::with_interceptor(
            waitlist,
            auth.clone(),
        ))
}

const EDITORS: &[Role] = &[Role::Owner, Role::Admin];

type Reply<T> = Result<Response<T>, Status>;

type BacktestStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::BacktestRuleResponse, Status>> + Send + 'static>,
>;

/// `followup.scheduler.v1.SchedulerService`.
#[derive(Clone)]
pub struct SchedulerServiceApi {
    pub pool: PgPool,
    pub store: Store,
    /// Backtests read the CLINIC and FOLLOWUP streams through ephemeral ordered consumers.
    pub js: async_nats::jetstream::Context,
    pub notifications: crate::notify::Notifications,
}

#[allow(clippy::result_large_err)]
fn uuid(field: &str, text: &str, what: &str) -> Result<Uuid, Status> {
    if text.is_empty() {
        return Err(invalid_argument(field, "is required"));
    }
    Uuid::parse_str(text)
        .map_err(|_| invalid_argument(field, format!("`{text}` is not a {what} id (a UUID)")))
}

#[allow(clippy::result_large_err)]
fn page_size(requested: i32, default: i64, field: &str) -> Result<i64, Status> {
    match requested {
        0 => Ok(default),
        n if (1..=500).contains(&n) => Ok(i64::from(n)),
        _ => Err(invalid_argument(
            field,
            "between 1 and 500 (0 = the default)",
        )),
    }
}

fn encode_token(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text.as_bytes())
}

fn decode_token(token: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes).ok()
}

#[allow(clippy::result_large_err)]
fn bad_token() -> Status {
    invalid_argument(
        "page_token",
        "not a token this list returned; start again without it",
    )
}

impl SchedulerServiceApi {
    /// A rule about to play sends only templates that exist in notifications (else every message of
    /// it would be suppressed as TEMPLATE_UNAVAILABLE): FAILED_PRECONDITION naming the first missing
    /// one and its step. Asked with the caller's token; without a notifications address (a scheduler
    /// run on its own) there is nothing to ask, and the rule plays.
    async fn check_templates(
        &self,
        tenant: &str,
        bearer: &str,
        def: &crate::domain::rule::RuleDef,
    ) -> Result<(), Status> {
        if !self.notifications.configured() {
            tracing::warn!(
                tenant,
                "no notifications address: templates of the rule not checked"
            );
            return Ok(());
        }
        for (index, step) in def.steps.iter().enumerate() {
            let crate::domain::rule::Action::Send {
                channel,
                template_key,
            } = &step.action
            else {
                continue;
            };
            let exists = self
                .notifications
                .template_exists(bearer, template_key, *channel)
                .await
                .map_err(|status| {
                    Status::unavailable(format!(
                        "cannot check the rule's templates in notifications ({}): retry",
                        status.message()
                    ))
                })?;
            if !exists {
                let channel = channel.as_str_name().trim_start_matches("CHANNEL_");
                return Err(Error::precondition(
                    "TEMPLATE_MISSING",
                    format!("steps[{index}].send.template_key"),
                    format!(
                        "steps[{index}].send.template_key: template `{template_key}` for {channel} does not exist in notifications: create it (CreateTemplate) or change the step, then play the rule"
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Status> {
        self.pool.acquire().await.map_err(|e| Error::Db(e).into())
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Status> {
        self.pool.begin().await.map_err(|e| Error::Db(e).into())
    }
}

async fn commit(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Result<(), Status> {
    tx.commit().await.map_err(|e| Error::Db(e).into())
}

/// The fields UpdateRule may change, as listed in scheduler.proto.
const RULE_PATHS: &[&str] = &[
    "name",
    "description",
    "category",
    "transactional",
    "mode",
    "case_kind",
    "trigger",
    "condition",
    "steps",
    "stop_reasons",
    "owner_staff_id",
    "schedule_zone",
    "skip_missed_older_than",
];

#[allow(clippy::result_large_err)]
fn apply_mask(current: &mut pb::Rule, update: &pb::Rule, paths: &[String]) -> Result<(), Status> {
    if paths.is_empty() {
        return Err(invalid_argument(
            "update_mask",
            format!(
                "is required: name the fields to change among {}",
                RULE_PATHS.join(", ")
            ),
        ));
    }
    for (i, path) in paths.iter().enumerate() {
        match path.as_str() {
            "name" => current.name = update.name.clone(),
            "description" => current.description = update.description.clone(),
            "category" => current.category = update.category.clone(),
            "transactional" => current.transactional = update.transactional,
            "mode" => current.mode = update.mode,
            "case_kind" => current.case_kind = update.case_kind,
            "trigger" => current.trigger = update.trigger,
            "condition" => current.condition = update.condition.clone(),
            "steps" => current.steps = update.steps.clone(),
            "stop_reasons" => current.stop_reasons = update.stop_reasons.clone(),
            "owner_staff_id" => current.owner_staff_id = update.owner_staff_id.clone(),
            "schedule_zone" => current.schedule_zone = update.schedule_zone,
            "skip_missed_older_than" => {
                current.skip_missed_older_than = update.skip_missed_older_than
            }
            other => {
                return Err(invalid_argument(
                    &format!("update_mask.paths[{i}]"),
                    format!("`{other}` cannot be updated; use {}", RULE_PATHS.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

#[allow(clippy::result_large_err)]
fn valid(rule: &pb::Rule) -> Result<crate::domain::rule::RuleDef, Status> {
    convert::valid_rule(rule).map_err(|e| Error::Invalid(e).into())
}

fn who(caller: &Caller) -> &str {
    &caller.sub
}

#[tonic::async_trait]
impl SchedulerService for SchedulerServiceApi {
    async fn create_rule(
        &self,
        request: Request<pb::CreateRuleRequest>,
    ) -> Reply<pb::CreateRuleResponse> {
        let caller = caller(&request)?;
        caller.require(EDITORS)?;
        let request = request.into_inner();
        let rule = request
            .rule
            .ok_or_else(|| invalid_argument("rule", "is required"))?;
        let def = valid(&rule)?;
        if request.validate_only {
            return Ok(Response::new(pb::CreateRuleResponse { rule: Some(rule) }));
        }
        let mut tx = self.begin().await?;
        let row = rules::create(
            &mut tx,
            &caller.tenant,
            who(&caller),
            &rule,
            &def,
            "",
            self.store.now(),
        )
        .await?;
        let view = rules::view(&mut tx, &caller.tenant, &row, 0).await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, rule_id = %row.rule_id, "rule created");
        Ok(Response::new(pb::CreateRuleResponse { rule: Some(view) }))
    }

    async fn get_rule(&self, request: Request<pb::GetRuleRequest>) -> Reply<pb::GetRuleResponse> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let rule_id = uuid("rule_id", &request.rule_id, "rule")?;
        if request.rule_version < 0 {
            return Err(invalid_argument(
                "rule_version",
                "0 (latest) or a version number",
            ));
        }
        let mut conn = self.conn().await?;
        let row = rules::row(&mut conn, &caller.tenant, rule_id, false).await?;
        let rule = rules::view(&mut conn, &caller.tenant, &row, request.rule_version).await?;
        Ok(Response::new(pb::GetRuleResponse { rule: Some(rule) }))
    }

    async fn list_rules(
        &self,
        request: Request<pb::ListRulesRequest>,
    ) -> Reply<pb::ListRulesResponse> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let limit = page_size(request.page_size, 100, "page_size")?;
        let states = request
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| enum_value::<pb::RuleState>(*s, &format!("states[{i}]")))
            .collect::<Result<Vec<_>, FieldError>>()
            .map_err(Error::Invalid)?;
        let trigger = enum_value::<pb::TriggerType>(request.trigger_type, "trigger_type")
            .map_err(Error::Invalid)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            let text = decode_token(&request.page_token).ok_or_else(bad_token)?;
            let (name, id) = text.rsplit_once('\n').ok_or_else(bad_token)?;
            Some((
                name.to_string(),
                Uuid::parse_str(id).map_err(|_| bad_token())?,
            ))
        };
        let mut conn = self.conn().await?;
        let rules = rules::list(&mut conn, &caller.tenant, &states, trigger, limit, after).await?;
        let next_page_token = match rules.last() {
            Some(last) if rules.len() as i64 == limit => {
                encode_token(&format!("{}\n{}", last.name.to_lowercase(), last.rule_id))
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListRulesResponse {
            rules,
            next_page_token,
        }))
    }

    async fn update_rule(
        &self,
        request: Request<pb::UpdateRuleRequest>,
    ) -> Reply<pb::UpdateRuleResponse> {
        let caller = caller(&request)?;
        caller.require(EDITORS)?;
        let request = request.into_inner();
        let update = request
            .rule
            .ok_or_else(|| invalid_argument("rule", "is required"))?;
        let rule_id = uuid("rule.rule_id", &update.rule_id, "rule")?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut tx = self.begin().await?;
        let row = rules::row(&mut tx, &caller.tenant, rule_id, true).await?;
        let (mut rule, _) =
            crate::storage::load_version(&mut tx, &caller.tenant, rule_id, row.latest_version)
                .await?;
        apply_mask(&mut rule, &update, &paths)?;
        let def = valid(&rule)?;
        if request.validate_only {
            let view = rules::view(&mut tx, &caller.tenant, &row, 0).await?;
            return Ok(Response::new(pb::UpdateRuleResponse {
                rule: Some(pb::Rule { ..rule.clone() }).map(|mut r| {
                    r.rule_id = view.rule_id;
                    r.state = view.state;
                    r.rule_version = view.rule_version;
                    r
                }),
            }));
        }
        let row = rules::update(
            &self.store,
            &mut tx,
            &caller.tenant,
            who(&caller),
            rule_id,
            &rule,
            &def,
            self.store.now(),
        )
        .await?;
        let view = rules::view(&mut tx, &caller.tenant, &row, 0).await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, rule_id = %rule_id, version = row.latest_version, "rule updated");
        Ok(Response::new(pb::UpdateRuleResponse { rule: Some(view) }))
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Reply<pb::DeleteRuleResponse> {
        let caller = caller(&request)?;
        caller.require(EDITORS)?;
        let rule_id = uuid("rule_id", &request.get_ref().rule_id, "rule")?;
        let mut tx = self.begin().await?;
        rules::delete(&self.store, &mut tx, &caller.tenant, who(&caller), rule_id).await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, rule_id = %rule_id, "rule deleted");
        Ok(Response::new(pb::DeleteRuleResponse {}))
    }

    async fn play_rule(
        &self,
        request: Request<pb::PlayRuleRequest>,
    ) -> Reply<pb::PlayRuleResponse> {
        let caller = caller(&request)?;
        caller.require(EDITORS)?;
        let rule_id = uuid("rule_id", &request.get_ref().rule_id, "rule")?;
        let bearer = dryrun::bearer(&request);
        {
            let mut conn = self.conn().await?;
            let row = rules::row(&mut conn, &caller.tenant, rule_id, false).await?;
            if row.state != "playing" {
                let def = self
                    .store
                    .rules
                    .get(&mut conn, &caller.tenant, rule_id, row.latest_version)
                    .await?;
                drop(conn);
                self.check_templates(&caller.tenant, &bearer, &def).await?;
            }
        }
        let mut tx = self.begin().await?;
        let played =
            rules::play(&self.store, &mut tx, &caller.tenant, who(&caller), rule_id).await?;
        let view = rules::view(&mut tx, &caller.tenant, &played.row, 0).await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, rule_id = %rule_id, released = played.released, skipped = played.skipped, "rule playing");
        Ok(Response::new(pb::PlayRuleResponse {
            rule: Some(view),
            released_step_count: i32::try_from(played.released).unwrap_or(i32::MAX),
            skipped_step_count: i32::try_from(played.skipped).unwrap_or(i32::MAX),
        }))
    }

    async fn pause_rule(
        &self,
        request: Request<pb::PauseRuleRequest>,
    ) -> Reply<pb::PauseRuleResponse> {
        let caller = caller(&request)?;
        caller.require(EDITORS)?;
        let rule_id = uuid("rule_id", &request.get_ref().rule_id, "rule")?;
        let mut tx = self.begin().await?;
        let row = rules::pause(&self.store, &mut tx, &caller.tenant, who(&caller), rule_id).await?;
        let view = rules::view(&mut tx, &caller.tenant, &row, 0).await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, rule_id = %rule_id, "rule paused");
        Ok(Response::new(pb::PauseRuleResponse { rule: Some(view) }))
    }

    async fn list_rule_templates(
        &self,
        request: Request<pb::ListRuleTemplatesRequest>,
    ) -> Reply<pb::ListRuleTemplatesResponse> {
        let caller = caller(&request)?;
        let mut conn = self.conn().await?;
        let enabled = rules::enabled_templates(&mut conn, &caller.tenant).await?;
        let templates = templates::all()
            .into_iter()
            .map(|mut t| {
                if let Some((_, rule_id)) = enabled.iter().find(|(id, _)| *id == t.template_id) {
                    t.enabled_rule_id = rule_id.to_string();
                }
                t
            })
            .collect();
        Ok(Response::new(pb::ListRuleTemplatesResponse { templates }))
    }

    async fn enable_rule_template(
        &self,
        request: Request<pb::EnableRuleTemplateRequest>,
    ) -> Reply<pb::EnableRuleTemplateResponse> {
        let caller = caller(&request)?;
        caller.require(EDITORS)?;
        let bearer = dryrun::bearer(&request);
        let request = request.into_inner();
        let template = templates::find(&request.template_id).ok_or_else(|| {
            Status::from(Error::not_found(
                "rule template",
                request.template_id.clone(),
            ))
        })?;
        let mut rule = template.rule.unwrap_or_default();
        if !request.owner_staff_id.is_empty() {
            rule.owner_staff_id = request.owner_staff_id.clone();
        }
        let def = valid(&rule)?;
        if request.play {
            self.check_templates(&caller.tenant, &bearer, &def).await?;
        }
        let mut tx = self.begin().await?;
        let enabled = rules::enabled_templates(&mut tx, &caller.tenant).await?;
        if let Some((_, rule_id)) = enabled.iter().find(|(id, _)| *id == template.template_id) {
            return Err(Status::already_exists(format!(
                "template `{}` is already enabled as rule {rule_id}",
                template.template_id
            )));
        }
        let row = rules::create(
            &mut tx,
            &caller.tenant,
            who(&caller),
            &rule,
            &def,
            &template.template_id,
            self.store.now(),
        )
        .await?;
        let row = if request.play {
            rules::play(
                &self.store,
                &mut tx,
                &caller.tenant,
                who(&caller),
                row.rule_id,
            )
            .await?
            .row
        } else {
            row
        };
        let view = rules::view(&mut tx, &caller.tenant, &row, 0).await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, rule_id = %row.rule_id, template = %template.template_id, "template enabled");
        Ok(Response::new(pb::EnableRuleTemplateResponse {
            rule: Some(view),
        }))
    }

    async fn list_enrollments(
        &self,
        request: Request<pb::ListEnrollmentsRequest>,
    ) -> Reply<pb::ListEnrollmentsResponse> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let limit = page_size(request.page_size, 50, "page_size")?;
        let rule_id = if request.rule_id.is_empty() {
            None
        } else {
            Some(uuid("rule_id", &request.rule_id, "rule")?)
        };
        let states = request
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| enum_value::<pb::EnrollmentState>(*s, &format!("states[{i}]")))
            .collect::<Result<Vec<_>, FieldError>>()
            .map_err(Error::Invalid)?;
        let before = if request.page_token.is_empty() {
            None
        } else {
            let text = decode_token(&request.page_token).ok_or_else(bad_token)?;
            Some(Uuid::parse_str(&text).map_err(|_| bad_token())?)
        };
        let filter = enrollments::Filter {
            case: case_from_ref(request.case_ref.as_ref()),
            patient_id: request.patient_id,
            rule_id,
            states,
        };
        let mut conn = self.conn().await?;
        let rows = enrollments::list(&mut conn, &caller.tenant, &filter, limit, before).await?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() as i64 == limit => {
                encode_token(&last.enrollment_id.to_string())
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEnrollmentsResponse {
            enrollments: rows.iter().map(|r| r.to_proto()).collect(),
            next_page_token,
        }))
    }

    async fn get_enrollment_timeline(
        &self,
        request: Request<pb::GetEnrollmentTimelineRequest>,
    ) -> Reply<pb::GetEnrollmentTimelineResponse> {
        let caller = caller(&request)?;
        let enrollment_id = uuid(
            "enrollment_id",
            &request.get_ref().enrollment_id,
            "enrollment",
        )?;
        let mut conn = self.conn().await?;
        let row = enrollments::get(&mut conn, &caller.tenant, enrollment_id).await?;
        let (steps, history) = enrollments::timeline(&mut conn, &caller.tenant, &row).await?;
        Ok(Response::new(pb::GetEnrollmentTimelineResponse {
            enrollment: Some(row.to_proto()),
            steps,
            history,
        }))
    }

    async fn cancel_enrollment(
        &self,
        request: Request<pb::CancelEnrollmentRequest>,
    ) -> Reply<pb::CancelEnrollmentResponse> {
        let caller = caller(&request)?;
        caller.require(&Role::STAFF)?;
        let request = request.into_inner();
        let enrollment_id = uuid("enrollment_id", &request.enrollment_id, "enrollment")?;
        if request.reason.chars().count() > 500 {
            return Err(invalid_argument("reason", "at most 500 characters"));
        }
        let mut tx = self.begin().await?;
        let row = enrollments::cancel(
            &self.store,
            &mut tx,
            &caller.tenant,
            enrollment_id,
            who(&caller),
            request.reason.trim(),
        )
        .await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, enrollment_id = %enrollment_id, "enrollment cancelled by staff");
        Ok(Response::new(pb::CancelEnrollmentResponse {
            enrollment: Some(row.to_proto()),
        }))
    }

    async fn get_case_facts(
        &self,
        request: Request<pb::GetCaseFactsRequest>,
    ) -> Reply<pb::GetCaseFactsResponse> {
        let caller = caller(&request)?;
        let (kind, id) = case_from_ref(request.get_ref().case_ref.as_ref()).ok_or_else(|| {
            invalid_argument("case_ref", "is required: a plan_id or a care_case_id")
        })?;
        let now = self.store.now();
        let mut conn = self.conn().await?;
        let clinic = settings::load(&mut conn, &caller.tenant).await?;
        let loaded = facts::load(&mut conn, &caller.tenant, kind, &id, now)
            .await?
            .ok_or_else(|| Status::from(Error::not_found("case", id.clone())))?;
        Ok(Response::new(pb::GetCaseFactsResponse {
            facts: Some(convert::facts_to_proto(FactsView {
                facts: &loaded.facts,
                case_id: &id,
                patient_id: &loaded.patient_id,
                tz: clinic.tz,
                today: local_date(now, clinic.tz),
                updated_at: Some(loaded.updated_at),
            })),
        }))
    }

    async fn preview_rule(
        &self,
        request: Request<pb::PreviewRuleRequest>,
    ) -> Reply<pb::PreviewRuleResponse> {
        let caller = caller(&request)?;
        let bearer = dryrun::bearer(&request);
        let response = self
            .preview(&caller.tenant, &bearer, request.into_inner())
            .await?;
        Ok(Response::new(response))
    }

    async fn backtest_rule(
        &self,
        request: Request<pb::BacktestRuleRequest>,
    ) -> Reply<BacktestStream> {
        let caller = caller(&request)?;
        let bearer = dryrun::bearer(&request);
        let request = request.into_inner();
        let (sim, limits, _) = self
            .backtest_setup(&caller.tenant, &bearer, &request)
            .await?;
        tracing::info!(tenant = %caller.tenant, start = %limits.start, end = %limits.end, "backtest started");
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(dryrun::stream_backtest(
            self.js.clone(),
            caller.tenant.clone(),
            sim,
            limits,
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_scheduler_settings(
        &self,
        request: Request<pb::GetSchedulerSettingsRequest>,
    ) -> Reply<pb::GetSchedulerSettingsResponse> {
        let caller = caller(&request)?;
        let mut conn = self.conn().await?;
        let clinic = settings::load(&mut conn, &caller.tenant).await?;
        Ok(Response::new(pb::GetSchedulerSettingsResponse {
            settings: Some(clinic.to_proto()),
        }))
    }

    async fn update_scheduler_settings(
        &self,
        request: Request<pb::UpdateSchedulerSettingsRequest>,
    ) -> Reply<pb::UpdateSchedulerSettingsResponse> {
        let caller = caller(&request)?;
        caller.require(EDITORS)?;
        let request = request.into_inner();
        let update = request.settings.unwrap_or_default();
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        const PATHS: &str = "time_zone, closed_weekdays, closed_dates, default_owner_staff_id";
        if paths.is_empty() {
            return Err(invalid_argument(
                "update_mask",
                format!("is required: name the fields among {PATHS}"),
            ));
        }
        let mut tx = self.begin().await?;
        let current = settings::load(&mut tx, &caller.tenant).await?;
        let (mut zone, mut weekdays, mut dates, mut owner) = (
            current.tz.name().to_string(),
            current.closed_weekdays.clone(),
            current.closed_dates.clone(),
            current.default_owner_staff_id.clone(),
        );
        for (i, path) in paths.iter().enumerate() {
            match path.as_str() {
                "time_zone" => {
                    if parse_zone(&update.time_zone).is_none() {
                        return Err(invalid_argument(
                            "settings.time_zone",
                            format!(
                                "`{}` is not an IANA time zone such as Europe/London",
                                update.time_zone
                            ),
                        ));
                    }
                    zone = update.time_zone.clone();
                }
                "closed_weekdays" => {
                    let mut days = Vec::new();
                    for (j, day) in update.closed_weekdays.iter().enumerate() {
                        let day = i16::try_from(*day)
                            .ok()
                            .filter(|d| (1..=7).contains(d))
                            .ok_or_else(|| {
                                invalid_argument(
                                    &format!("settings.closed_weekdays[{j}]"),
                                    "a weekday, MONDAY to SUNDAY",
                                )
                            })?;
                        if !days.contains(&day) {
                            days.push(day);
                        }
                    }
                    if days.len() == 7 {
                        return Err(invalid_argument(
                            "settings.closed_weekdays",
                            "the clinic must be open on at least one weekday",
                        ));
                    }
                    days.sort_unstable();
                    weekdays = days;
                }
                "closed_dates" => {
                    let mut parsed = Vec::new();
                    for (j, date) in update.closed_dates.iter().enumerate() {
                        parsed.push(parse_date(date).ok_or_else(|| {
                            invalid_argument(
                                &format!("settings.closed_dates[{j}]"),
                                format!("`{date}` is not a date YYYY-MM-DD"),
                            )
                        })?);
                    }
                    if parsed.len() > 1000 {
                        return Err(invalid_argument(
                            "settings.closed_dates",
                            "at most 1000 dates",
                        ));
                    }
                    parsed.sort_unstable();
                    parsed.dedup();
                    dates = parsed;
                }
                "default_owner_staff_id" => {
                    if update.default_owner_staff_id.chars().count() > 128 {
                        return Err(invalid_argument(
                            "settings.default_owner_staff_id",
                            "at most 128 characters",
                        ));
                    }
                    owner = update.default_owner_staff_id.trim().to_string();
                }
                other => {
                    return Err(invalid_argument(
                        &format!("update_mask.paths[{i}]"),
                        format!("`{other}` is not a setting; use {PATHS}"),
                    ));
                }
            }
        }
        let updated = ClinicSettings::from_row(&zone, weekdays, dates, owner);
        settings::save(&mut tx, &caller.tenant, &updated).await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, "scheduler settings updated");
        Ok(Response::new(pb::UpdateSchedulerSettingsResponse {
            settings: Some(updated.to_proto()),
        }))
    }
}
