//! `followup demo`: the whole job in under a minute, narrated, against a running stack.
//!
//! It makes a fresh clinic (its own tenant, so a demo can run again and again on one `followup dev`), then
//! walks the eight steps of a clinic's follow-up: the clinic and its rules at demo speed, a plan built and
//! sent and read in a real browser (headless Chromium, else the beacons a browser posts), the case
//! climbing the follow-up queue, the first reminder as the patient's phone gets it (the dev stack's
//! capture), a no-show recovered, a STOP honoured, a booking that ends the sequence, and the leakage
//! report. Every step has a time limit; the first one missed ends the demo with an error naming it.
//!
//! Everything goes through the public edges a clinic's own software would use: gRPC with a staff token,
//! clinic events on NATS, the portal page and the beacon endpoint over HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Timelike as _;
use clap::{Args, ValueEnum};
use followup_cases::domain::vocab::Money as ShownMoney;
use followup_notifications::capture::Captured;
use followup_platform::auth::Role;
use followup_platform::event::{new_event_id, now_timestamp, timestamp};
use followup_proto::followup::cases::v1 as cases;
use followup_proto::followup::cases::v1::cases_service_client::CasesServiceClient;
use followup_proto::followup::common::v1::{
    CaseRef, CaseStatus, Channel as MsgChannel, Money, PortalSection, Slot, StaffRole, StopReason,
    Tooth, ToothNumbering, case_ref,
};
use followup_proto::followup::engagement::v1 as engagement;
use followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::notifications::v1 as notifications;
use followup_proto::followup::notifications::v1::notifications_service_client::NotificationsServiceClient;
use followup_proto::followup::plans::v1 as plans;
use followup_proto::followup::plans::v1::catalog_service_client::CatalogServiceClient;
use followup_proto::followup::plans::v1::plans_service_client::PlansServiceClient;
use followup_proto::followup::scheduler::v1 as scheduler;
use followup_proto::followup::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use followup_proto::subjects::Event;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::keys::DevKeys;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrowserChoice {
    /// Headless Chromium when chromium and chromedriver are installed, else the beacons a browser posts.
    Auto,
    /// Headless Chromium (chromium + chromedriver), or fail.
    Chromium,
    /// Post the beacons a browser's beacon.js would, without a browser.
    Beacons,
}

#[derive(Args)]
pub struct DemoArgs {
    /// The clinic (tenant) to create; default: a fresh `demo-<time>` per run.
    #[arg(long)]
    tenant: Option<String>,
    /// A staff token of the clinic (owner or admin); default: signed with the dev stack's key.
    #[arg(long, env = "FOLLOWUP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The dev stack's folder: its keys sign the default token, its NATS port is found there.
    #[arg(long, default_value = ".followup")]
    dir: PathBuf,
    #[arg(
        long,
        env = "FOLLOWUP_PLANS_ADDR",
        default_value = "http://localhost:50051"
    )]
    plans_addr: String,
    #[arg(
        long,
        env = "FOLLOWUP_CASES_ADDR",
        default_value = "http://localhost:50052"
    )]
    cases_addr: String,
    #[arg(
        long,
        env = "FOLLOWUP_ENGAGEMENT_ADDR",
        default_value = "http://localhost:50053"
    )]
    engagement_addr: String,
    #[arg(
        long,
        env = "FOLLOWUP_SCHEDULER_ADDR",
        default_value = "http://localhost:50054"
    )]
    scheduler_addr: String,
    #[arg(
        long,
        env = "FOLLOWUP_NOTIFICATIONS_ADDR",
        default_value = "http://localhost:50055"
    )]
    notifications_addr: String,
    /// Engagement's beacon endpoint (where beacon.js posts).
    #[arg(long, default_value = "http://localhost:8080")]
    beacons_url: String,
    /// The dev stack's capture of SMS and email (`capture … HTTP …` in `followup dev`'s output).
    #[arg(long, default_value = "http://127.0.0.1:8025")]
    capture_url: String,
    /// NATS, for the clinic system's events; default: NATS_URL, else the dev stack's private server.
    #[arg(long)]
    nats_url: Option<String>,
    /// The NATS nkey seed file the clinic system publishes with; default: the dev stack's admin.
    #[arg(long)]
    nats_credentials: Option<std::path::PathBuf>,
    /// How the patient opens the portal link.
    #[arg(long, value_enum, default_value = "auto")]
    browser: BrowserChoice,
}

// ===== demo speed =====

/// After a view with no response, the case waits this long before it is WAITING_FOR_RESPONSE (48 hours
/// in a real clinic).
const RESPONSE_WINDOW: Duration = Duration::from_secs(8);
/// Plan sent → first reminder (7 days at 10:00 in the shipped rule).
const FIRST_REMINDER: Duration = Duration::from_secs(22);
/// Between the next reminders (7 and 14 days in the shipped rule): long enough that the demo's stops
/// (a STOP, a booking) come first.
const LATER_REMINDERS: Duration = Duration::from_secs(40);

const OWNER: &str = "dr-lima";
const OWNER_NAME: &str = "Dr Ana Lima";
const CLINIC_NAME: &str = "Smile Dental";
const CLINIC_PHONE: &str = "+15125550100";
const CURRENCY: &str = "USD";
const FEES: &[(&str, i64)] = &[
    ("D7140", 20_000),
    ("D6010", 200_000),
    ("D6065", 150_000),
    ("D2391", 15_000),
    ("D2392", 19_000),
    ("D8090", 520_000),
];

struct Patient {
    id: &'static str,
    given: &'static str,
    family: &'static str,
    phone: &'static str,
}

const MARIA: Patient = Patient {
    id: "pat-maria",
    given: "Maria",
    family: "Santos",
    phone: "+15125550101",
};
const JOAO: Patient = Patient {
    id: "pat-joao",
    given: "João",
    family: "Pereira",
    phone: "+15125550102",
};
const AISHA: Patient = Patient {
    id: "pat-aisha",
    given: "Aisha",
    family: "Khan",
    phone: "+15125550103",
};

/// Zones around the world, the best known first; together they cover every hour of the day.
const ZONES: &[&str] = &[
    "America/New_York",
    "Europe/London",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Australia/Sydney",
    "Asia/Tokyo",
    "America/Chicago",
    "Asia/Singapore",
    "Asia/Kolkata",
    "Asia/Dubai",
    "America/Sao_Paulo",
    "Pacific/Auckland",
    "America/Denver",
    "Europe/Athens",
    "Europe/Moscow",
    "Asia/Karachi",
    "Asia/Dhaka",
    "Asia/Bangkok",
    "America/Halifax",
    "America/Anchorage",
    "Pacific/Honolulu",
    "Atlantic/Azores",
    "Atlantic/South_Georgia",
    "Pacific/Noumea",
    "Pacific/Tongatapu",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
];

/// A zone where it is between 10:00 and 18:00 now: well inside the hours messages may go out
/// (quiet hours are 21:00-08:00 in the patient's zone), for the whole minute of the demo.
fn daytime_zone() -> anyhow::Result<(&'static str, chrono::DateTime<chrono_tz::Tz>)> {
    let now = chrono::Utc::now();
    ZONES
        .iter()
        .filter_map(|name| {
            let tz: chrono_tz::Tz = name.parse().ok()?;
            let local = now.with_timezone(&tz);
            (10..18).contains(&local.hour()).then_some((*name, local))
        })
        .next()
        .context("no zone of the list is in its daytime (cannot happen: they cover 24 hours)")
}

// ===== clients =====

/// Adds the staff token to every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

struct Clients {
    plans: PlansServiceClient<Authed>,
    catalog: CatalogServiceClient<Authed>,
    cases: CasesServiceClient<Authed>,
    engagement: EngagementServiceClient<Authed>,
    scheduler: SchedulerServiceClient<Authed>,
    notifications: NotificationsServiceClient<Authed>,
}

async fn connect(name: &str, addr: &str, bearer: &Bearer) -> anyhow::Result<Authed> {
    let channel = Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("--{name}-addr {addr}: expected http://host:port"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the {name} service at {addr} (is `followup dev` running?)")
        })?;
    Ok(InterceptedService::new(channel, bearer.clone()))
}

// ===== narration and limits =====

struct Narrator {
    start: Instant,
}

impl Narrator {
    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn step(&self, n: usize, title: &str) {
        println!();
        println!("Step {n}/8 · {title}");
    }

    fn say(&self, line: impl AsRef<str>) {
        println!("  [{:>5.1}s] {}", self.elapsed(), line.as_ref());
    }

    fn more(&self, line: impl AsRef<str>) {
        println!("           {}", line.as_ref());
    }
}

/// Which step is running, for the error when its time runs out.
#[derive(Clone, Copy)]
struct Step {
    n: usize,
    title: &'static str,
}

/// Polls `probe` until it gives a value, or fails naming the step and what did not happen.
async fn within<T, F, Fut>(
    step: Step,
    limit: Duration,
    what: &str,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            let cause = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!(
                "step {}/8 ({}) did not happen: {what} within {} s{cause}",
                step.n,
                step.title,
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn shown(amount_minor: i64) -> String {
    ShownMoney::new(amount_minor, CURRENCY).display()
}

fn money_shown(m: Option<&Money>) -> String {
    m.map(|m| ShownMoney::new(m.amount_minor, m.currency.clone()).display())
        .unwrap_or_else(|| "-".into())
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: CURRENCY.into(),
    })
}

fn seconds(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: 0,
    })
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn plan_ref(plan_id: &str) -> Option<CaseRef> {
    Some(CaseRef {
        target: Some(case_ref::Target::PlanId(plan_id.to_string())),
    })
}

fn status_words(status: i32) -> &'static str {
    match CaseStatus::try_from(status) {
        Ok(CaseStatus::DraftNotSent) => "draft, not sent",
        Ok(CaseStatus::SentNotViewed) => "sent, not viewed",
        Ok(CaseStatus::SentViewed) => "viewed",
        Ok(CaseStatus::WaitingForResponse) => "waiting for the patient's response",
        Ok(CaseStatus::PatientBooked) => "patient booked",
        Ok(CaseStatus::PatientRejected) => "patient rejected",
        Ok(CaseStatus::TreatmentCompleted) => "treatment completed",
        Ok(CaseStatus::Superseded) => "superseded",
        _ => "unknown",
    }
}

fn section_words(section: i32) -> &'static str {
    match PortalSection::try_from(section) {
        Ok(PortalSection::Cover) => "cover page",
        Ok(PortalSection::TreatmentDetails) => "treatment details",
        Ok(PortalSection::Images) => "images",
        Ok(PortalSection::PortalSection3dModels) => "3D models",
        _ => "other",
    }
}

fn secs(d: Option<&prost_types::Duration>) -> f64 {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        .unwrap_or_default()
}

// ===== NATS: the clinic system =====

/// Publishes clinic events as a practice-management system would: protobuf, `Nats-Msg-Id` = event id,
/// waiting for JetStream's acknowledgement.
struct ClinicSystem {
    js: async_nats::jetstream::Context,
    tenant: String,
}

impl ClinicSystem {
    fn header(&self) -> (String, String, Option<prost_types::Timestamp>) {
        (
            new_event_id().to_string(),
            self.tenant.clone(),
            Some(now_timestamp()),
        )
    }

    async fn publish<E: Event>(&self, event: &E) -> anyhow::Result<()> {
        let subject = event
            .subject()
            .map_err(|e| anyhow::anyhow!("subject of {}: {e:?}", E::full_name()))?;
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(prost::Message::encode_to_vec(event).into())
            .message_id(event.event_id());
        self.js
            .send_publish(subject.clone(), publish)
            .await
            .with_context(|| format!("publishing on {subject}"))?
            .await
            .with_context(|| format!("no acknowledgement for {subject} (is the stack running?)"))?;
        Ok(())
    }

    async fn patient(&self, p: &Patient, zone: &str) -> anyhow::Result<()> {
        let (event_id, tenant_id, occurred_at) = self.header();
        self.publish(&ev::PatientUpserted {
            event_id,
            tenant_id,
            occurred_at,
            patient_id: p.id.into(),
            given_name: p.given.into(),
            family_name: p.family.into(),
            phone_e164: p.phone.into(),
            time_zone: zone.into(),
            preferred_channel: MsgChannel::Sms as i32,
            ..Default::default()
        })
        .await
    }

    fn appointment(
        &self,
        id: &str,
        patient: &Patient,
        plan_id: &str,
        start: chrono::DateTime<chrono::Utc>,
    ) -> ev::Appointment {
        ev::Appointment {
            appointment_id: id.into(),
            patient_id: patient.id.into(),
            slot: Some(Slot {
                start_time: Some(timestamp(start)),
                duration: seconds(Duration::from_secs(3600)),
                practitioner_id: OWNER.into(),
                location_id: String::new(),
            }),
            plan_id: plan_id.into(),
            ..Default::default()
        }
    }
}

// ===== the capture: what the patient's phone received =====

struct Capture {
    url: String,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    tenant: String,
}

impl Capture {
    /// The SMS this clinic sent to a phone, oldest first. The capture is shared by every clinic of the
    /// dev stack; the provider's `Idempotency-Key` (`<tenant>:<key>`) says which clinic sent each.
    async fn sms_to(&self, phone: &str) -> anyhow::Result<Vec<Captured>> {
        use http_body_util::BodyExt as _;
        let uri: http::Uri = format!("{}/captured", self.url.trim_end_matches('/'))
            .parse()
            .with_context(|| format!("--capture-url {}: expected http://host:port", self.url))?;
        let response = self.http.get(uri).await.with_context(|| {
            format!(
                "reaching the dev stack's capture at {} (--capture-url)",
                self.url
            )
        })?;
        let body = response.into_body().collect().await?.to_bytes();
        let items: Vec<Captured> = serde_json::from_slice(&body)
            .with_context(|| format!("{}/captured did not answer a capture list", self.url))?;
        let prefix = format!("{}:", self.tenant);
        Ok(items
            .into_iter()
            .filter(|c| {
                c.kind == "sms"
                    && c.to == phone
                    && c.headers
                        .get("idempotency-key")
                        .is_some_and(|k| k.starts_with(&prefix))
            })
            .collect())
    }
}

fn phone_box(narrator: &Narrator, phone: &str, text: &str) {
    narrator.more(format!("┌─ SMS to {phone}"));
    let mut line = String::new();
    for word in text.split_whitespace() {
        // A portal link is a long signed token; its start is enough to recognise it.
        let short;
        let word = if word.chars().count() > 60 {
            short = format!("{}…", word.chars().take(44).collect::<String>());
            short.as_str()
        } else {
            word
        };
        if !line.is_empty() && line.chars().count() + word.chars().count() + 1 > 64 {
            narrator.more(format!("│ {line}"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        narrator.more(format!("│ {line}"));
    }
    narrator.more("└─");
}

// ===== the demo =====

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let narrator = Narrator {
        start: Instant::now(),
    };
    let started_at = chrono::Utc::now();
    let tenant = args
        .tenant
        .clone()
        .unwrap_or_else(|| format!("demo-{}", started_at.format("%Y%m%d-%H%M%S")));
    followup_proto::subjects::validate_tenant(&tenant)
        .map_err(|e| anyhow::anyhow!("--tenant {tenant}: {e:?}"))?;
    let token = match &args.token {
        Some(token) => token.clone(),
        None => DevKeys::load_or_create(&args.dir)?.token(
            &tenant,
            OWNER,
            Role::Owner,
            Duration::from_secs(3600),
        )?,
    };
    let bearer = Bearer(
        format!("Bearer {token}")
            .parse()
            .context("the token is not valid header text")?,
    );
    let mut c = Clients {
        plans: PlansServiceClient::new(connect("plans", &args.plans_addr, &bearer).await?),
        catalog: CatalogServiceClient::new(connect("plans", &args.plans_addr, &bearer).await?),
        cases: CasesServiceClient::new(connect("cases", &args.cases_addr, &bearer).await?),
        engagement: EngagementServiceClient::new(
            connect("engagement", &args.engagement_addr, &bearer).await?,
        ),
        scheduler: SchedulerServiceClient::new(
            connect("scheduler", &args.scheduler_addr, &bearer).await?,
        ),
        notifications: NotificationsServiceClient::new(
            connect("notifications", &args.notifications_addr, &bearer).await?,
        ),
    };
    let url = crate::client::dev_nats_url(args.nats_url.as_deref(), &args.dir)?;
    let nats =
        crate::client::connect_nats(&url, args.nats_credentials.as_deref(), &args.dir).await?;
    let clinic_system = ClinicSystem {
        js: async_nats::jetstream::new(nats),
        tenant: tenant.clone(),
    };
    let capture = Capture {
        url: args.capture_url.clone(),
        http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
        tenant: tenant.clone(),
    };
    // Fail now, not at step 4, when the capture is elsewhere.
    capture.sms_to("+0").await?;

    println!("Followup demo: a clinic's follow-up, start to finish, in under a minute.");
    println!(
        "Clinic \"{CLINIC_NAME}\" (tenant {tenant}); timers run at demo speed: seconds where a clinic has days."
    );

    // ---- 1 ----
    let step = Step {
        n: 1,
        title: "the clinic",
    };
    narrator.step(step.n, "The clinic, its fees and its follow-up rules");
    let (zone, local) = daytime_zone()?;
    c.cases
        .update_case_settings(cases::UpdateCaseSettingsRequest {
            settings: Some(cases::CaseSettings {
                response_window: seconds(RESPONSE_WINDOW),
                digest_hour: 7,
                time_zone: zone.into(),
            }),
            update_mask: mask(&["response_window", "time_zone"]),
        })
        .await
        .context("cases: UpdateCaseSettings")?;
    c.scheduler
        .update_scheduler_settings(scheduler::UpdateSchedulerSettingsRequest {
            settings: Some(scheduler::SchedulerSettings {
                time_zone: zone.into(),
                default_owner_staff_id: OWNER.into(),
                ..Default::default()
            }),
            update_mask: mask(&["time_zone", "default_owner_staff_id"]),
        })
        .await
        .context("scheduler: UpdateSchedulerSettings")?;
    c.notifications
        .update_delivery_settings(notifications::UpdateDeliverySettingsRequest {
            settings: Some(notifications::DeliverySettings {
                time_zone: zone.into(),
                clinic_name: CLINIC_NAME.into(),
                clinic_phone: CLINIC_PHONE.into(),
                default_task_owner_staff_id: OWNER.into(),
                ..Default::default()
            }),
            update_mask: mask(&[
                "time_zone",
                "clinic_name",
                "clinic_phone",
                "default_task_owner_staff_id",
            ]),
        })
        .await
        .context("notifications: UpdateDeliverySettings")?;
    narrator.say(format!(
        "The clinic and its patients are in {zone}, where it is {} now: inside the hours messages may go \
         out (quiet hours are 21:00-08:00 there), so nothing is held back.",
        local.format("%H:%M")
    ));
    let schedule = c
        .catalog
        .create_fee_schedule(plans::CreateFeeScheduleRequest {
            fee_schedule: Some(plans::FeeSchedule {
                name: "Standard".into(),
                currency: CURRENCY.into(),
                is_default: true,
                ..Default::default()
            }),
            copy_fees_from_fee_schedule_id: String::new(),
        })
        .await
        .context("plans: CreateFeeSchedule")?
        .into_inner()
        .fee_schedule
        .unwrap_or_default();
    c.catalog
        .copy_master_codes(plans::CopyMasterCodesRequest {
            codes: FEES.iter().map(|(code, _)| code.to_string()).collect(),
            ..Default::default()
        })
        .await
        .context("plans: CopyMasterCodes")?;
    c.catalog
        .set_fees(plans::SetFeesRequest {
            fee_schedule_id: schedule.fee_schedule_id.clone(),
            fees: FEES
                .iter()
                .map(|(code, amount)| plans::Fee {
                    code: code.to_string(),
                    amount: usd(*amount),
                })
                .collect(),
            remove_codes: vec![],
        })
        .await
        .context("plans: SetFees")?;
    narrator.say(format!(
        "Fee schedule \"Standard\" ({CURRENCY}) with {} procedures, e.g. implant placement (D6010) {}.",
        FEES.len(),
        shown(200_000)
    ));

    let template = c
        .scheduler
        .list_rule_templates(scheduler::ListRuleTemplatesRequest {})
        .await
        .context("scheduler: ListRuleTemplates")?
        .into_inner()
        .templates
        .into_iter()
        .find(|t| t.template_id == "treatment_plan_follow_up")
        .and_then(|t| t.rule)
        .context("the scheduler ships no treatment_plan_follow_up template")?;
    let mut waits = 0;
    let steps: Vec<scheduler::Step> = template
        .steps
        .iter()
        .cloned()
        .map(|mut s| {
            if let Some(scheduler::step::Action::Wait(wait)) = &mut s.action {
                let length = if waits == 0 {
                    FIRST_REMINDER
                } else {
                    LATER_REMINDERS
                };
                waits += 1;
                wait.until = Some(scheduler::wait_action::Until::Duration(
                    prost_types::Duration {
                        seconds: length.as_secs() as i64,
                        nanos: 0,
                    },
                ));
                wait.skip_weekends = false;
                wait.skip_closed_days = false;
            }
            s
        })
        .collect();
    let follow_up = c
        .scheduler
        .create_rule(scheduler::CreateRuleRequest {
            rule: Some(scheduler::Rule {
                name: format!("{} (demo speed)", template.name),
                description: "The shipped plan follow-up, with waits of seconds instead of days"
                    .into(),
                steps,
                owner_staff_id: OWNER.into(),
                ..template.clone()
            }),
            validate_only: false,
        })
        .await
        .context("scheduler: CreateRule (the demo-speed plan follow-up)")?
        .into_inner()
        .rule
        .unwrap_or_default();
    c.scheduler
        .play_rule(scheduler::PlayRuleRequest {
            rule_id: follow_up.rule_id.clone(),
        })
        .await
        .context("scheduler: PlayRule")?;
    narrator.say(format!(
        "Rule \"{}\" playing: the shipped treatment-plan follow-up (SMS on days 7, 14, 28 and 42, \
         stopping when the patient books, rejects, replies or opts out), at demo speed: the first \
         reminder {} s after sending, then every {} s.",
        follow_up.name,
        FIRST_REMINDER.as_secs(),
        LATER_REMINDERS.as_secs()
    ));
    narrator.say(format!(
        "Response window: {} seconds (48 hours in a real clinic): a viewed plan with no response by then \
         goes to \"waiting for response\".",
        RESPONSE_WINDOW.as_secs()
    ));
    let no_show = c
        .scheduler
        .enable_rule_template(scheduler::EnableRuleTemplateRequest {
            template_id: "no_show_recovery".into(),
            play: false,
            owner_staff_id: OWNER.into(),
        })
        .await
        .context("scheduler: EnableRuleTemplate no_show_recovery")?
        .into_inner()
        .rule
        .unwrap_or_default();
    let immediate: Vec<scheduler::Step> = no_show
        .steps
        .iter()
        .filter(|s| !matches!(s.action, Some(scheduler::step::Action::Wait(_))))
        .cloned()
        .collect();
    c.scheduler
        .update_rule(scheduler::UpdateRuleRequest {
            rule: Some(scheduler::Rule {
                steps: immediate,
                ..no_show.clone()
            }),
            update_mask: mask(&["steps"]),
            validate_only: false,
        })
        .await
        .context("scheduler: UpdateRule (no-show at demo speed)")?;
    c.scheduler
        .play_rule(scheduler::PlayRuleRequest {
            rule_id: no_show.rule_id.clone(),
        })
        .await
        .context("scheduler: PlayRule (no-show)")?;
    narrator.say(format!(
        "Rule \"{}\" enabled from its template: an SMS as soon as a patient misses an appointment, and \
         a call task for the owner (at once for the demo, not the next morning).",
        no_show.name
    ));
    let (event_id, tenant_id, occurred_at) = clinic_system.header();
    clinic_system
        .publish(&ev::StaffUpserted {
            event_id,
            tenant_id,
            occurred_at,
            staff_id: OWNER.into(),
            display_name: OWNER_NAME.into(),
            email: "ana.lima@smile-dental.invalid".into(),
            role: StaffRole::Dentist as i32,
            active: true,
        })
        .await?;
    for patient in [&MARIA, &JOAO, &AISHA] {
        clinic_system.patient(patient, zone).await?;
    }
    narrator.say(format!(
        "The clinic's own system sent its records: {OWNER_NAME} (dentist, owner of the cases) and three \
         patients, {} {}, {} {} and {} {}.",
        MARIA.given, MARIA.family, JOAO.given, JOAO.family, AISHA.given, AISHA.family
    ));
    // The contacts must be known before the first reminder is due; they are, within a moment.
    within(
        step,
        Duration::from_secs(20),
        "the notifications service knowing the patients",
        || {
            let mut n = c.notifications.clone();
            async move {
                Ok(n.get_contact(notifications::GetContactRequest {
                    patient_id: AISHA.id.into(),
                })
                .await
                .ok()
                .map(|_| ()))
            }
        },
    )
    .await?;

    // ---- 2 ----
    let step = Step {
        n: 2,
        title: "the plan, sent and read",
    };
    narrator.step(
        step.n,
        "\"Phase 1: restorations\": built, sent, opened and read",
    );
    let phase1 = create_plan(
        &mut c,
        &MARIA,
        "Phase 1: restorations",
        &[
            ("D7140", "19", 1, None, None),
            ("D6010", "19", 2, Some(0), None),
            (
                "D6065",
                "19",
                3,
                Some(1),
                Some((135_000, "10% family discount")),
            ),
        ],
    )
    .await?;
    let totals = phase1.totals.clone().unwrap_or_default();
    narrator.say(format!(
        "{OWNER_NAME} builds \"{}\" for {} {}:",
        phase1.title, MARIA.given, MARIA.family
    ));
    for (i, item) in phase1.items.iter().enumerate() {
        let indent = "   ".repeat(i);
        let branch = if i == 0 { "" } else { "└ " };
        let discount = if item.price != item.schedule_fee {
            format!(
                " (fee {}: {})",
                money_shown(item.schedule_fee.as_ref()),
                item.price_override_reason
            )
        } else {
            String::new()
        };
        narrator.more(format!(
            "  {indent}{branch}{}. {} {} #{}  {}{discount}  visit {}",
            i + 1,
            item.code,
            item.code_name,
            item.tooth
                .as_ref()
                .map(|t| t.number.as_str())
                .unwrap_or("-"),
            money_shown(item.price.as_ref()),
            item.visit
        ));
    }
    narrator.more(format!(
        "  Total {} (discount {}); each visit waits for the one before.",
        money_shown(totals.total.as_ref()),
        money_shown(totals.discount.as_ref())
    ));
    let sent = send_plan(&mut c, &phase1.plan_id).await?;
    let sent_at = Instant::now();
    narrator.say(
        "Sent to Maria: she gets a private portal link (valid 30 days) with the cover page and the \
         treatment details.",
    );
    let fillings = create_plan(
        &mut c,
        &JOAO,
        "Two fillings",
        &[
            ("D2391", "30", 1, None, None),
            ("D2392", "31", 1, None, None),
        ],
    )
    .await?;
    send_plan(&mut c, &fillings.plan_id).await?;
    let braces = create_plan(
        &mut c,
        &AISHA,
        "Adult braces",
        &[("D8090", "", 1, None, None)],
    )
    .await?;
    send_plan(&mut c, &braces.plan_id).await?;
    let value = |p: &plans::Plan| {
        p.totals
            .as_ref()
            .and_then(|t| t.total.as_ref())
            .map(|m| m.amount_minor)
            .unwrap_or_default()
    };
    narrator.say(format!(
        "Also sent today: \"Two fillings\" to {} ({}) and \"Adult braces\" to {} ({}).",
        JOAO.given,
        shown(value(&fillings)),
        AISHA.given,
        shown(value(&braces))
    ));
    within(
        step,
        Duration::from_secs(20),
        "the three cases appearing on the follow-up list",
        || {
            let mut cs = c.cases.clone();
            async move {
                let listed = cs
                    .list_cases(cases::ListCasesRequest::default())
                    .await?
                    .into_inner();
                Ok((listed
                    .cases
                    .iter()
                    .filter(|c| c.status == CaseStatus::SentNotViewed as i32)
                    .count()
                    >= 3)
                    .then_some(()))
            }
        },
    )
    .await?;
    show_queue(
        &narrator,
        &mut c,
        "The follow-up queue now (nobody has looked yet; the biggest plan first):",
    )
    .await?;

    let opened = open_portal(&narrator, &args, &sent.portal_url, &phase1.plan_id).await?;
    let facts = within(
        step,
        Duration::from_secs(30),
        "engagement counting Maria's reading",
        || {
            let mut e = c.engagement.clone();
            let plan_id = phase1.plan_id.clone();
            async move {
                let facts = e
                    .get_plan_engagement(engagement::GetPlanEngagementRequest { plan_id })
                    .await?
                    .into_inner()
                    .engagement
                    .unwrap_or_default();
                Ok((facts.viewed && facts.section_times.len() >= 2).then_some(facts))
            }
        },
    )
    .await?;
    let sections: Vec<String> = facts
        .section_times
        .iter()
        .map(|s| {
            format!(
                "{} {:.1} s",
                section_words(s.section),
                secs(s.view_time.as_ref())
            )
        })
        .collect();
    narrator.say(format!(
        "Engagement saw it ({opened}): {} view, {:.1} s on screen: {}.",
        facts.view_count,
        secs(facts.total_view_time.as_ref()),
        sections.join(", ")
    ));

    // ---- 3 ----
    let step = Step {
        n: 3,
        title: "the case moves up the queue",
    };
    narrator.step(
        step.n,
        "The case follows what Maria did, and climbs the follow-up queue",
    );
    let deadline = Instant::now() + RESPONSE_WINDOW + Duration::from_secs(30);
    let timeline = loop {
        let got = c
            .cases
            .get_case(cases::GetCaseRequest {
                case_id: phase1.plan_id.clone(),
                timeline_page_size: 50,
            })
            .await
            .context("cases: GetCase")?
            .into_inner();
        let status = got.case.as_ref().map(|c| c.status).unwrap_or_default();
        if status == CaseStatus::WaitingForResponse as i32 {
            break got.timeline;
        }
        if Instant::now() > deadline {
            bail!(
                "step 3/8 (the case moves up the queue) did not happen: Maria's case is \"{}\", not \
                 waiting for her response, 30 s after the response window",
                status_words(status)
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    // The path, as the case's timeline recorded it (each change at the moment it happened).
    let mut changes: Vec<(chrono::DateTime<chrono::Utc>, i32, i32)> = timeline
        .iter()
        .filter_map(|e| match &e.detail {
            Some(cases::timeline_entry::Detail::StatusChange(change)) => Some((
                e.time
                    .as_ref()
                    .and_then(followup_platform::event::from_timestamp)
                    .unwrap_or(started_at),
                change.from_status,
                change.to_status,
            )),
            _ => None,
        })
        .collect();
    changes.sort_by_key(|(time, _, _)| *time);
    for (time, from, to) in changes {
        let why = match CaseStatus::try_from(to) {
            Ok(CaseStatus::SentNotViewed) => " — the plan was sent".to_string(),
            Ok(CaseStatus::SentViewed) => " — her browser's first beacon".to_string(),
            Ok(CaseStatus::WaitingForResponse) => format!(
                " — no reply within the {} s response window",
                RESPONSE_WINDOW.as_secs()
            ),
            _ => String::new(),
        };
        println!(
            "  [{:>5.1}s] Maria's case: {} → {}{why}",
            (time - started_at).num_milliseconds() as f64 / 1000.0,
            status_words(from),
            status_words(to)
        );
    }
    let queue = show_queue(&narrator, &mut c, "The follow-up queue now:").await?;
    if queue
        .first()
        .and_then(|e| e.case.as_ref())
        .map(|c| c.case_id.as_str())
        != Some(phase1.plan_id.as_str())
    {
        bail!(
            "step 3/8 (the case moves up the queue) did not happen: Maria's case is not at the top of the queue"
        );
    }

    // ---- 4 ----
    let step = Step {
        n: 4,
        title: "the first reminder",
    };
    narrator.step(step.n, "The first reminder, as Maria's phone receives it");
    let wait_left = FIRST_REMINDER.saturating_sub(sent_at.elapsed());
    if !wait_left.is_zero() {
        narrator.say(format!(
            "The rule sends the first reminder {} s after the plan (day 7 at 10:00 in a real clinic): {} s to go.",
            FIRST_REMINDER.as_secs(),
            wait_left.as_secs()
        ));
    }
    let reminder = within(
        step,
        wait_left + Duration::from_secs(30),
        "Maria's first reminder reaching her phone",
        || {
            let capture = &capture;
            async move { Ok(capture.sms_to(MARIA.phone).await?.into_iter().next()) }
        },
    )
    .await?;
    narrator.say(format!(
        "Sent {:.1} s after the plan, through the SMS provider (the dev stack's local capture):",
        sent_at.elapsed().as_secs_f64()
    ));
    phone_box(&narrator, MARIA.phone, &reminder.content);
    let reminders = within(
        step,
        Duration::from_secs(20),
        "the case counting the reminder",
        || {
            let mut cs = c.cases.clone();
            let plan_id = phase1.plan_id.clone();
            async move {
                let got = cs
                    .get_case(cases::GetCaseRequest {
                        case_id: plan_id,
                        timeline_page_size: 1,
                    })
                    .await?
                    .into_inner()
                    .case
                    .unwrap_or_default();
                Ok((got.reminders_sent >= 1).then_some(got.reminders_sent))
            }
        },
    )
    .await?;
    narrator.say(format!(
        "Maria's case shows {reminders} reminder sent; the next is due in {} s unless she responds.",
        LATER_REMINDERS.as_secs()
    ));

    // ---- 5 ----
    let step = Step {
        n: 5,
        title: "a no-show recovered",
    };
    narrator.step(step.n, "A missed appointment, recovered at once");
    let before = capture.sms_to(MARIA.phone).await?.len();
    let (event_id, tenant_id, occurred_at) = clinic_system.header();
    let published = Instant::now();
    clinic_system
        .publish(&ev::AppointmentNoShow {
            event_id,
            tenant_id,
            occurred_at,
            appointment: Some(clinic_system.appointment(
                "appt-maria-consult",
                &MARIA,
                &phase1.plan_id,
                chrono::Utc::now() - chrono::Duration::minutes(15),
            )),
        })
        .await?;
    narrator
        .say("The clinic system reports: Maria did not come to her appointment 15 minutes ago.");
    let missed = within(
        step,
        Duration::from_secs(15),
        "the no-show SMS reaching Maria",
        || {
            let capture = &capture;
            async move {
                let all = capture.sms_to(MARIA.phone).await?;
                Ok((all.len() > before).then(|| all[before].clone()))
            }
        },
    )
    .await?;
    let sms_latency = published.elapsed();
    let task = within(
        step,
        Duration::from_secs(15),
        "a call task for the owner",
        || {
            let mut n = c.notifications.clone();
            async move {
                Ok(n.list_tasks(notifications::ListTasksRequest {
                    owner_staff_id: OWNER.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .tasks
                .into_iter()
                .next())
            }
        },
    )
    .await?;
    let task_latency = published.elapsed();
    narrator.say(format!(
        "Recovered in {:.2} s: an SMS to Maria{}",
        sms_latency.as_secs_f64(),
        if sms_latency > Duration::from_secs(1) {
            " (slower than the one second aimed for: a busy machine)"
        } else {
            ""
        }
    ));
    phone_box(&narrator, MARIA.phone, &missed.content);
    narrator.say(format!(
        "…and after {:.2} s a task for {OWNER_NAME}: \"{}\".",
        task_latency.as_secs_f64(),
        task.title
    ));

    // ---- 6 ----
    let step = Step {
        n: 6,
        title: "a STOP honoured",
    };
    narrator.step(step.n, "João replies STOP");
    let joao_first = within(
        step,
        Duration::from_secs(30),
        "João's first reminder",
        || {
            let capture = &capture;
            async move { Ok(capture.sms_to(JOAO.phone).await?.into_iter().next()) }
        },
    )
    .await?;
    narrator.say(format!(
        "João got his first reminder too (\"{}…\"), and answers it:",
        joao_first.content.chars().take(30).collect::<String>()
    ));
    let (event_id, tenant_id, occurred_at) = clinic_system.header();
    clinic_system
        .publish(&ev::MessageReceived {
            event_id: event_id.clone(),
            tenant_id,
            occurred_at,
            patient_id: JOAO.id.into(),
            channel: MsgChannel::Sms as i32,
            from: JOAO.phone.into(),
            to: "+15005550006".into(),
            text: "STOP".into(),
            provider_message_id: format!("demo-{event_id}"),
            ..Default::default()
        })
        .await?;
    narrator.more(format!("┌─ SMS from {}", JOAO.phone));
    narrator.more("│ STOP");
    narrator.more("└─");
    within(
        step,
        Duration::from_secs(15),
        "João's opt-out recorded",
        || {
            let mut n = c.notifications.clone();
            async move {
                let consent = n
                    .get_consent(notifications::GetConsentRequest {
                        patient_id: JOAO.id.into(),
                    })
                    .await?
                    .into_inner();
                Ok(consent
                    .states
                    .iter()
                    .any(|s| s.channel == MsgChannel::Sms as i32 && !s.allowed)
                    .then_some(()))
            }
        },
    )
    .await?;
    narrator.say(
        "Opted out of text messages for every category (the keyword STOP is the evidence kept).",
    );
    let (next, how) = within(
        step,
        Duration::from_secs(20),
        "João's next reminder being suppressed",
        || {
            let mut s = c.scheduler.clone();
            let mut n = c.notifications.clone();
            let plan_id = fillings.plan_id.clone();
            let rule_id = follow_up.rule_id.clone();
            async move {
                let Some(timeline) = timeline_of(&mut s, &plan_id, &rule_id).await? else {
                    return Ok(None);
                };
                let next = timeline
                    .steps
                    .iter()
                    .filter(|st| {
                        matches!(
                            st.step.as_ref().and_then(|x| x.action.as_ref()),
                            Some(scheduler::step::Action::Send(_))
                        )
                    })
                    .nth(1)
                    .cloned()
                    .unwrap_or_default();
                if next.state == scheduler::StepRunState::Cancelled as i32 {
                    let stop = timeline
                        .enrollment
                        .as_ref()
                        .map(|e| stop_words(e.stop_reason))
                        .unwrap_or_default();
                    return Ok(Some((
                        next,
                        format!("cancelled before it was due — the sequence stopped: {stop}"),
                    )));
                }
                if next.state == scheduler::StepRunState::Fired as i32
                    && !next.idempotency_key.is_empty()
                {
                    let message = n
                        .list_messages(notifications::ListMessagesRequest {
                            idempotency_key: next.idempotency_key.clone(),
                            ..Default::default()
                        })
                        .await?
                        .into_inner()
                        .messages
                        .into_iter()
                        .next();
                    if let Some(m) = message
                        .filter(|m| m.status == notifications::MessageStatus::Suppressed as i32)
                    {
                        return Ok(Some((
                            next,
                            format!(
                                "suppressed by notifications: {}",
                                suppression_words(m.suppression_reason)
                            ),
                        )));
                    }
                }
                Ok(None)
            }
        },
    )
    .await?;
    let template = match next.step.as_ref().and_then(|s| s.action.as_ref()) {
        Some(scheduler::step::Action::Send(send)) => send.template_key.clone(),
        _ => String::new(),
    };
    narrator.say(format!(
        "His next reminder ({template}, due {}) will never reach him: {how}.",
        next.local_due_time
    ));
    if capture.sms_to(JOAO.phone).await?.len() != 1 {
        bail!("step 6/8 (a STOP honoured) did not happen: João received another text after STOP");
    }

    // ---- 7 ----
    let step = Step {
        n: 7,
        title: "a booking stops the sequence",
    };
    narrator.step(step.n, "Maria books");
    let visit = chrono::Utc::now() + chrono::Duration::days(3);
    let (event_id, tenant_id, occurred_at) = clinic_system.header();
    clinic_system
        .publish(&ev::AppointmentBooked {
            event_id,
            tenant_id,
            occurred_at,
            appointment: Some(clinic_system.appointment(
                "appt-maria-visit-1",
                &MARIA,
                &phase1.plan_id,
                visit,
            )),
            ..Default::default()
        })
        .await?;
    narrator.say(format!(
        "The clinic system books her first visit of \"Phase 1: restorations\" for {}.",
        visit
            .with_timezone(&zone.parse::<chrono_tz::Tz>().unwrap_or(chrono_tz::UTC))
            .format("%a %-d %b, %H:%M")
    ));
    within(
        step,
        Duration::from_secs(15),
        "Maria's case becoming \"patient booked\"",
        || {
            let mut cs = c.cases.clone();
            let plan_id = phase1.plan_id.clone();
            async move {
                let got = cs
                    .get_case(cases::GetCaseRequest {
                        case_id: plan_id,
                        timeline_page_size: 1,
                    })
                    .await?
                    .into_inner()
                    .case
                    .unwrap_or_default();
                Ok((got.status == CaseStatus::PatientBooked as i32).then_some(()))
            }
        },
    )
    .await?;
    narrator.say("Maria's case: patient booked.");
    let stopped = within(
        step,
        Duration::from_secs(15),
        "Maria's follow-up sequence stopping as \"booked\"",
        || {
            let mut s = c.scheduler.clone();
            let plan_id = phase1.plan_id.clone();
            let rule_id = follow_up.rule_id.clone();
            async move {
                let Some(timeline) = timeline_of(&mut s, &plan_id, &rule_id).await? else {
                    return Ok(None);
                };
                let e = timeline.enrollment.clone().unwrap_or_default();
                Ok((e.state == scheduler::EnrollmentState::Stopped as i32
                    && e.stop_reason == StopReason::Booked as i32)
                    .then_some(timeline))
            }
        },
    )
    .await?;
    let cancelled = stopped
        .steps
        .iter()
        .filter(|s| s.state == scheduler::StepRunState::Cancelled as i32)
        .filter(|s| {
            matches!(
                s.step.as_ref().and_then(|x| x.action.as_ref()),
                Some(scheduler::step::Action::Send(_))
            )
        })
        .count();
    narrator.say(format!(
        "Her follow-up sequence stopped: booked. {cancelled} reminders she no longer needs will not be sent."
    ));

    // ---- 8 ----
    let step = Step {
        n: 8,
        title: "the leakage report",
    };
    narrator.step(step.n, "The leakage report");
    let figures = within(
        step,
        Duration::from_secs(15),
        "the report counting the booking",
        || {
            let mut cs = c.cases.clone();
            async move {
                let report = cs
                    .get_leakage_report(cases::GetLeakageReportRequest {
                        start_time: Some(timestamp(started_at - chrono::Duration::minutes(5))),
                        end_time: Some(timestamp(
                            chrono::Utc::now() + chrono::Duration::minutes(5),
                        )),
                        owner_staff_id: String::new(),
                    })
                    .await?
                    .into_inner();
                Ok(report
                    .lines
                    .into_iter()
                    .filter_map(|l| l.figures)
                    .find(|f| f.currency == CURRENCY && f.recovered_count >= 1))
            }
        },
    )
    .await?;
    narrator.say(format!(
        "Presented:              {} plans   {}",
        figures.presented_count,
        money_shown(figures.presented_value.as_ref())
    ));
    narrator.say(format!(
        "Accepted:               {} ({:.0}%)    {}",
        figures.accepted_count,
        figures.acceptance_rate * 100.0,
        money_shown(figures.accepted_value.as_ref())
    ));
    narrator.say(format!(
        "Unscheduled (leakage):  {} plans   {}   ← the money still on the table",
        figures.unscheduled_count,
        money_shown(figures.unscheduled_value.as_ref())
    ));
    narrator.say(format!(
        "Recovered by follow-up: {} plan    {}{}",
        figures.recovered_count,
        money_shown(figures.recovered_value.as_ref()),
        figures
            .median_recovery_time
            .as_ref()
            .map(|d| format!(" (booked {:.1} s after the first follow-up)", secs(Some(d))))
            .unwrap_or_default()
    ));

    println!();
    println!(
        "Done: eight steps in {:.0} s. Look around: `followup cases list --tenant {tenant}`, \
         `followup rules enrollments --tenant {tenant}`, `followup notifications sent --tenant {tenant}`.",
        narrator.elapsed()
    );
    Ok(())
}

type ItemSpec<'a> = (&'a str, &'a str, i32, Option<usize>, Option<(i64, &'a str)>);

async fn create_plan(
    c: &mut Clients,
    patient: &Patient,
    title: &str,
    items: &[ItemSpec<'_>],
) -> anyhow::Result<plans::Plan> {
    let plan = c
        .plans
        .create_plan(plans::CreatePlanRequest {
            plan: Some(plans::Plan {
                patient_id: patient.id.into(),
                title: title.into(),
                owner_staff_id: OWNER.into(),
                ..Default::default()
            }),
        })
        .await
        .context("plans: CreatePlan")?
        .into_inner()
        .plan
        .unwrap_or_default();
    let mut ids: Vec<String> = Vec::new();
    for (code, tooth, visit, after, price) in items {
        let item = c
            .plans
            .create_plan_item(plans::CreatePlanItemRequest {
                plan_id: plan.plan_id.clone(),
                item: Some(plans::PlanItem {
                    code: code.to_string(),
                    tooth: (!tooth.is_empty()).then(|| Tooth {
                        numbering: ToothNumbering::Universal as i32,
                        number: tooth.to_string(),
                        ..Default::default()
                    }),
                    practitioner_id: OWNER.into(),
                    visit: *visit,
                    depends_on_item_ids: after
                        .and_then(|i| ids.get(i).cloned())
                        .into_iter()
                        .collect(),
                    price: price.and_then(|(amount, _)| usd(amount)),
                    price_override_reason: price.map(|(_, r)| r.to_string()).unwrap_or_default(),
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("plans: CreatePlanItem {code}"))?
            .into_inner()
            .item
            .unwrap_or_default();
        ids.push(item.item_id);
    }
    Ok(c.plans
        .get_plan(plans::GetPlanRequest {
            plan_id: plan.plan_id,
            plan_version: 0,
        })
        .await
        .context("plans: GetPlan")?
        .into_inner()
        .plan
        .unwrap_or_default())
}

async fn send_plan(c: &mut Clients, plan_id: &str) -> anyhow::Result<plans::SendPlanResponse> {
    Ok(c.plans
        .send_plan(plans::SendPlanRequest {
            plan_id: plan_id.into(),
            sections: vec![
                PortalSection::Cover as i32,
                PortalSection::TreatmentDetails as i32,
            ],
            delivery_channel: MsgChannel::Sms as i32,
            ..Default::default()
        })
        .await
        .context("plans: SendPlan")?
        .into_inner())
}

async fn show_queue(
    narrator: &Narrator,
    c: &mut Clients,
    title: &str,
) -> anyhow::Result<Vec<cases::QueueEntry>> {
    let entries = c
        .cases
        .list_follow_up_queue(cases::ListFollowUpQueueRequest {
            page_size: 5,
            ..Default::default()
        })
        .await
        .context("cases: ListFollowUpQueue")?
        .into_inner()
        .entries;
    narrator.say(title);
    for e in &entries {
        let case = e.case.clone().unwrap_or_default();
        narrator.more(format!(
            "  {}. {:<14} {:<22} {:>13}   {}",
            e.rank,
            case.patient_name,
            format!("\"{}\"", case.title),
            money_shown(case.value.as_ref()),
            e.reason
        ));
    }
    Ok(entries)
}

async fn timeline_of(
    s: &mut SchedulerServiceClient<Authed>,
    plan_id: &str,
    rule_id: &str,
) -> anyhow::Result<Option<scheduler::GetEnrollmentTimelineResponse>> {
    let Some(enrollment) = s
        .list_enrollments(scheduler::ListEnrollmentsRequest {
            case_ref: plan_ref(plan_id),
            rule_id: rule_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .enrollments
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    Ok(Some(
        s.get_enrollment_timeline(scheduler::GetEnrollmentTimelineRequest {
            enrollment_id: enrollment.enrollment_id,
        })
        .await?
        .into_inner(),
    ))
}

fn stop_words(reason: i32) -> String {
    StopReason::try_from(reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("STOP_REASON_")
                .replace('_', " ")
                .to_lowercase()
        })
        .unwrap_or_default()
}

fn suppression_words(reason: i32) -> String {
    followup_proto::followup::common::v1::SuppressionReason::try_from(reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("SUPPRESSION_REASON_")
                .replace('_', " ")
                .to_lowercase()
        })
        .unwrap_or_default()
}

// ===== the patient opens the link =====

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    names.iter().find_map(|name| {
        dirs.iter()
            .chain([PathBuf::from("/usr/lib/chromium")].iter())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Opens the portal link like Maria's phone would, and reads the cover page and the treatment details
/// for a few seconds each; returns how it was opened.
async fn open_portal(
    narrator: &Narrator,
    args: &DemoArgs,
    portal_url: &str,
    plan_id: &str,
) -> anyhow::Result<&'static str> {
    let chromium = find_binary(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_binary(&["chromedriver"]);
    match (args.browser, chromium, driver) {
        (BrowserChoice::Beacons, _, _) => {}
        (_, Some(chromium), Some(driver)) => {
            narrator.say("Maria opens the link: headless Chromium loads the portal page…");
            match browse(narrator, args, &chromium, &driver, portal_url).await {
                Ok(()) => return Ok("from the browser's beacons"),
                Err(err) if args.browser == BrowserChoice::Auto => {
                    narrator.say(format!(
                        "(Chromium could not be driven: {err:#}; posting the beacons a browser would instead)"
                    ));
                }
                Err(err) => {
                    return Err(
                        err.context("step 2/8 (the plan, sent and read): --browser chromium")
                    );
                }
            }
        }
        (BrowserChoice::Chromium, _, _) => {
            bail!(
                "--browser chromium: chromium and chromedriver must be on PATH (Debian: chromium, chromium-driver)"
            )
        }
        (BrowserChoice::Auto, _, _) => {
            narrator.say("(No chromium + chromedriver here: posting the beacons the portal page's beacon.js would.)");
        }
    }
    post_beacons(narrator, args, portal_url, plan_id).await?;
    Ok("from the beacons a browser posts")
}

async fn browse(
    narrator: &Narrator,
    args: &DemoArgs,
    chromium: &Path,
    driver: &Path,
    portal_url: &str,
) -> anyhow::Result<()> {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let profile =
        std::env::temp_dir().join(format!("followup-demo-chromium-{}", std::process::id()));
    let mut chromedriver = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", driver.display()))?;
    let outcome = async {
        let mut options = serde_json::Map::new();
        options.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1000,700",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let browser = loop {
            match fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(options.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            {
                Ok(client) => break client,
                Err(err) if Instant::now() > deadline => {
                    return Err(anyhow::anyhow!("no WebDriver session: {err}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let result = async {
            browser.goto(portal_url).await.context("opening the portal link")?;
            // The page loads engagement's beacon.js from the address the plans service was configured
            // with; a stack on other ports (`followup dev --ephemeral-ports`) is pointed at its own.
            let beacons = args.beacons_url.trim_end_matches('/').to_string();
            let redirected = browser
                .execute(
                    "const s = document.querySelector('script[data-token]');\
                     if (!s) return 'none';\
                     if (s.src.startsWith(arguments[0] + '/')) return 'ok';\
                     const n = document.createElement('script');\
                     n.src = arguments[0] + '/v1/beacon.js';\
                     n.setAttribute('data-token', s.getAttribute('data-token'));\
                     document.body.appendChild(n);\
                     return 'redirected';",
                    vec![serde_json::Value::String(beacons)],
                )
                .await
                .context("reading the page")?;
            if redirected == serde_json::Value::String("none".into()) {
                bail!("the portal page has no beacon script");
            }
            let title = browser.title().await.unwrap_or_default();
            narrator.say(format!("Page \"{title}\" open; Maria reads the cover page…"));
            tokio::time::sleep(Duration::from_secs(3)).await;
            browser
                .execute(
                    "const el = document.querySelector('[data-followup-section=\"treatment_details\"]');\
                     if (el) el.scrollIntoView();",
                    vec![],
                )
                .await
                .context("scrolling")?;
            narrator.say("…scrolls to the treatment details and reads them…");
            tokio::time::sleep(Duration::from_secs(4)).await;
            // Leaving fires pagehide: beacon.js flushes the visible times with navigator.sendBeacon.
            browser.goto("about:blank").await.context("leaving the page")?;
            narrator.say("…and closes the page.");
            Ok(())
        }
        .await;
        let _ = browser.close().await;
        result
    }
    .await;
    let _ = chromedriver.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    outcome
}

/// What beacon.js posts for the same reading: `open` when the page shows, the visible time of each
/// section and of the page, and `close` on leaving.
async fn post_beacons(
    narrator: &Narrator,
    args: &DemoArgs,
    portal_url: &str,
    plan_id: &str,
) -> anyhow::Result<()> {
    let token = portal_url
        .rsplit_once("/p/")
        .map(|(_, t)| t.to_string())
        .context("the portal link has no token")?;
    let session = format!("demo{}", new_event_id().simple());
    let post = |events: serde_json::Value| {
        let body = serde_json::json!({"token": token, "session_id": session, "plan_id": plan_id, "events": events});
        let url = format!("{}/v1/beacons", args.beacons_url.trim_end_matches('/'));
        async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let request = http::Request::post(&url)
                .header(http::header::CONTENT_TYPE, "text/plain;charset=UTF-8")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))?;
            let response = client
                .request(request)
                .await
                .with_context(|| format!("posting beacons to {url} (--beacons-url)"))?;
            if response.status() != http::StatusCode::ACCEPTED {
                bail!("the beacon endpoint answered {}", response.status());
            }
            anyhow::Ok(())
        }
    };
    let mut ids = HashMap::new();
    let mut id = |kind: &str| {
        let n = ids.len() + 1;
        ids.insert(n, kind.to_string());
        format!("{session}.{n}")
    };
    post(serde_json::json!([{"id": id("open"), "kind": "open"}])).await?;
    narrator.say("Maria opens the link and reads the cover page…");
    tokio::time::sleep(Duration::from_secs(3)).await;
    post(serde_json::json!([{"id": id("s"), "kind": "section_visible", "section": "cover", "visible_ms": 3000}]))
        .await?;
    narrator.say("…then the treatment details…");
    tokio::time::sleep(Duration::from_secs(4)).await;
    post(serde_json::json!([
        {"id": id("s"), "kind": "section_visible", "section": "treatment_details", "visible_ms": 4000},
        {"id": id("h"), "kind": "heartbeat", "visible_ms": 7000},
        {"id": id("c"), "kind": "close"},
    ]))
    .await?;
    narrator.say("…and closes the page.");
    Ok(())
}
