//! The whole system in one process, for end-to-end tests (`tests/tests/`).
//!
//! [`Stack::start`] starts a private nats-server, one fresh database per service, and the five services
//! through their own `Service::build` on port 0 — the same code `followup dev` and production run — with
//! the notifications service's local capture standing in for the SMS provider and the SMTP server.
//! [`Stack::clinic`] hands out typed gRPC clients for one clinic and role; [`Stack::publish`] publishes a
//! clinic system's event; [`Stack::post_beacons`] posts what a portal page's `beacon.js` would.
//!
//! Each test starts its own stack: nothing is shared between tests but the PostgreSQL server.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use chrono::Timelike as _;
use followup_notifications::capture::{Capture, Captured};
use followup_platform::auth::{KeyPair, Role};
use followup_platform::config::Sources;
use followup_platform::event::{OutgoingEvent, new_event_id, now_timestamp};
use followup_platform::service::{Running, ServiceConfig, ServiceInfo};
use followup_platform::testkit::{TestAuth, TestDb, TestNats, admin_database_url};
use followup_proto::followup::cases::v1::cases_service_client::CasesServiceClient;
use followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient;
use followup_proto::followup::notifications::v1::notifications_service_client::NotificationsServiceClient;
use followup_proto::followup::plans::v1::catalog_service_client::CatalogServiceClient;
use followup_proto::followup::plans::v1::plans_service_client::PlansServiceClient;
use followup_proto::followup::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use followup_proto::subjects::Event;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A gRPC channel whose calls carry a staff token and the caller's trace context.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` and the current span's `traceparent` to every call.
#[derive(Clone)]
pub struct Bearer {
    value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = followup_platform::telemetry::TracePropagation.call(request)?;
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(request)
    }
}

/// One clinic's view of the system: a client per API, all signed for one staff member and role.
#[derive(Clone)]
pub struct Clinic {
    pub tenant: String,
    pub staff_id: String,
    pub plans: PlansServiceClient<Authed>,
    pub catalog: CatalogServiceClient<Authed>,
    pub cases: CasesServiceClient<Authed>,
    pub engagement: EngagementServiceClient<Authed>,
    pub scheduler: SchedulerServiceClient<Authed>,
    pub notifications: NotificationsServiceClient<Authed>,
}

/// The gRPC address of each service.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub plans: SocketAddr,
    pub cases: SocketAddr,
    pub engagement: SocketAddr,
    pub scheduler: SocketAddr,
    pub notifications: SocketAddr,
}

/// Settings that make a whole-system test quick without changing what the services do: timers and pollers
/// look more often; the cases service re-reads a clinic's settings at once.
fn fast(service: &ServiceInfo, sources: Sources) -> Sources {
    let sources = sources.set("outbox.poll_interval_ms", 200);
    match service.name {
        "cases" => sources
            .set("timer_interval_ms", 100)
            .set("counts_interval_ms", 100)
            .set("settings_cache_secs", 0),
        "engagement" => sources.set("update_poll_ms", 100),
        "scheduler" => sources.set("timer.poll_interval_ms", 200),
        "notifications" => sources.set("delivery.poll_interval_ms", 200),
        _ => sources,
    }
}

/// All five services, their infrastructure and clients.
pub struct Stack {
    pub auth: TestAuth,
    /// Signs portal links (plans) and verifies them (engagement).
    pub portal_keys: KeyPair,
    pub addrs: Addrs,
    /// Engagement's beacon ingest (`POST /v1/beacons`).
    pub beacons: SocketAddr,
    /// Plans' patient portal.
    pub portal: SocketAddr,
    /// What the notifications service "sent": SMS and email as the patient would receive them.
    pub capture: Capture,
    running: Vec<Running>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    // Dropped after the services' handles: the databases go last, with any connection left.
    pub nats: TestNats,
    _dbs: Vec<TestDb>,
}

impl Stack {
    /// Starts everything. Panics (failing the test) with the reason when something cannot start.
    pub async fn start() -> Self {
        let (nats, dbs) = tokio::join!(TestNats::start(), async {
            let mut dbs = Vec::new();
            for _ in 0..5 {
                dbs.push(TestDb::create().await);
            }
            dbs
        });
        let auth = TestAuth::new();
        let portal_keys = KeyPair::generate().expect("an Ed25519 key pair");
        let base = |info: &ServiceInfo, db: &TestDb| {
            fast(
                info,
                Sources::overrides_only()
                    .set("database_url", &db.url)
                    .set("database_max_connections", 6)
                    .set("nats_url", nats.url())
                    .set("nats_credentials_dir", nats.credentials_dir())
                    .set("grpc_addr", "127.0.0.1:0")
                    .set("admin_addr", "127.0.0.1:0")
                    .set("auth.jwt_public_keys", vec![auth.keys.public_pem.clone()])
                    .set("startup_timeout_secs", 30)
                    .set("shutdown_grace_secs", 5),
            )
        };

        // Engagement first: the portal page plans renders loads engagement's beacon script.
        let engagement = {
            let info = followup_engagement::INFO;
            let sources = base(&info, &dbs[2])
                .set("portal_public_keys", vec![portal_keys.public_pem.clone()])
                .set("http_addr", "127.0.0.1:0")
                .set("allowed_origins", vec!["*"]);
            followup_engagement::Service::build(config(&info, sources))
                .await
                .expect("the engagement service starts")
        };
        let beacons = engagement
            .http_addr("beacons")
            .expect("engagement serves beacons");
        let plans = {
            let info = followup_plans::INFO;
            let sources = base(&info, &dbs[0])
                .set("portal_signing_key", &portal_keys.private_pem)
                .set("portal_addr", "127.0.0.1:0")
                .set(
                    "beacon_script_url",
                    format!("http://{beacons}/v1/beacon.js"),
                );
            followup_plans::Service::build(config(&info, sources))
                .await
                .expect("the plans service starts")
        };
        let portal = plans.http_addr("portal").expect("plans serves the portal");
        let cases = {
            let info = followup_cases::INFO;
            followup_cases::Service::build(config(&info, base(&info, &dbs[1])))
                .await
                .expect("the cases service starts")
        };
        let (notifications, capture) = {
            let info = followup_notifications::INFO;
            let (sources, capture) =
                followup_notifications::capture::for_dev(base(&info, &dbs[4]), true)
                    .await
                    .expect("the local capture starts");
            let running = followup_notifications::Service::build(config(&info, sources))
                .await
                .expect("the notifications service starts");
            (running, capture)
        };
        // After notifications: the scheduler checks a rule's templates there when it is played.
        let scheduler = {
            let info = followup_scheduler::INFO;
            let sources = base(&info, &dbs[3]).set(
                "notifications.addr",
                format!("http://{}", notifications.grpc_addr),
            );
            followup_scheduler::Service::build(config(&info, sources))
                .await
                .expect("the scheduler service starts")
        };
        let addrs = Addrs {
            plans: plans.grpc_addr,
            cases: cases.grpc_addr,
            engagement: engagement.grpc_addr,
            scheduler: scheduler.grpc_addr,
            notifications: notifications.grpc_addr,
        };
        Self {
            auth,
            portal_keys,
            addrs,
            beacons,
            portal,
            capture,
            running: vec![plans, cases, engagement, scheduler, notifications],
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            nats,
            _dbs: dbs,
        }
    }

    /// Clients of every API for one clinic, signed for `staff_id` with `role`.
    pub fn clinic_as(&self, tenant: &str, staff_id: &str, role: Role) -> Clinic {
        let token = self.auth.token_for(tenant, staff_id, role);
        let bearer = Bearer {
            value: format!("Bearer {token}")
                .parse()
                .expect("a JWT is valid metadata"),
        };
        let channel = |addr: SocketAddr| {
            InterceptedService::new(
                Endpoint::from_shared(format!("http://{addr}"))
                    .expect("a socket address is a valid URI")
                    .connect_lazy(),
                bearer.clone(),
            )
        };
        Clinic {
            tenant: tenant.to_string(),
            staff_id: staff_id.to_string(),
            plans: PlansServiceClient::new(channel(self.addrs.plans)),
            catalog: CatalogServiceClient::new(channel(self.addrs.plans)),
            cases: CasesServiceClient::new(channel(self.addrs.cases)),
            engagement: EngagementServiceClient::new(channel(self.addrs.engagement)),
            scheduler: SchedulerServiceClient::new(channel(self.addrs.scheduler)),
            notifications: NotificationsServiceClient::new(channel(self.addrs.notifications)),
        }
    }

    /// Clients for the clinic's owner (staff id `owner`).
    pub fn clinic(&self, tenant: &str) -> Clinic {
        self.clinic_as(tenant, "owner", Role::Owner)
    }

    /// Publishes an event as a clinic system (or another service) would: protobuf, `Nats-Msg-Id` = its
    /// event id, the current span's `traceparent`, awaiting the PubAck.
    pub async fn publish<E: Event>(&self, event: &E) {
        let subject = event.subject().expect("the event's tenant makes a subject");
        let outgoing = OutgoingEvent::new("e2e", subject.clone(), event).expect("a valid event");
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &outgoing.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let js = self.nats.jetstream_for(&subject).await;
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(outgoing.payload.into())
            .headers(headers)
            .message_id(outgoing.event_id.to_string());
        js.send_publish(subject, publish)
            .await
            .expect("publish sent")
            .await
            .expect("publish acknowledged");
    }

    /// Posts a beacon batch to engagement's ingest, as `beacon.js` does; returns the status and the JSON
    /// answer. `traceparent`, when given, is sent as the W3C header.
    pub async fn post_beacons(
        &self,
        body: &serde_json::Value,
        traceparent: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = http::Request::post(format!("http://{}/v1/beacons", self.beacons))
            .header(http::header::CONTENT_TYPE, "text/plain;charset=UTF-8");
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request");
        let response = self
            .http
            .request(request)
            .await
            .expect("the beacon ingest answers");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// What the local SMS provider received for a phone number, oldest first.
    pub fn sms_to(&self, phone: &str) -> Vec<Captured> {
        self.capture
            .captured()
            .into_iter()
            .filter(|c| c.kind == "sms" && c.to == phone)
            .collect()
    }

    /// The services' handles, in start order (engagement, plans, cases, notifications, scheduler).
    pub fn running(&self) -> &[Running] {
        &self.running
    }

    /// Stops every service cleanly (draining consumers, publishing the last outbox rows).
    pub async fn stop(self) {
        let Stack { running, .. } = self;
        // Concurrently: each drains on its own.
        futures::future::join_all(running.into_iter().map(|r| r.stop())).await;
    }
}

fn config<S>(info: &ServiceInfo, sources: Sources) -> ServiceConfig<S>
where
    S: serde::Serialize + serde::de::DeserializeOwned + Default,
{
    ServiceConfig::load(info, S::default(), sources).unwrap_or_else(|err| {
        panic!(
            "{} configuration (database server {}): {err}",
            info.name,
            admin_database_url()
        )
    })
}

/// Polls `probe` until it returns `Some`, or fails the test naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Zones around the world, the well-known first; together they cover every hour of the day.
pub const ZONES: &[&str] = &[
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

/// A zone where it is now between 10:00 and 18:00, so that quiet hours (default 21:00-08:00, local to
/// the patient) hold nothing back while a test or the demo runs.
pub fn daytime_zone() -> (&'static str, chrono::DateTime<chrono_tz::Tz>) {
    let now = chrono::Utc::now();
    ZONES
        .iter()
        .filter_map(|name| {
            let tz: chrono_tz::Tz = name.parse().ok()?;
            let local = now.with_timezone(&tz);
            (10..18).contains(&local.hour()).then_some((*name, local))
        })
        .next()
        .expect("some zone of the list is in its daytime")
}

/// A clinic event's header fields: a fresh event id, the tenant, now.
pub fn header(tenant: &str) -> (String, String, Option<prost_types::Timestamp>) {
    (
        new_event_id().to_string(),
        tenant.to_string(),
        Some(now_timestamp()),
    )
}

/// The portal link token of a `SendPlan` answer's URL (`…/p/<token>`).
pub fn portal_token(portal_url: &str) -> String {
    portal_url
        .rsplit_once("/p/")
        .map(|(_, token)| token.trim_end_matches('/').to_string())
        .unwrap_or_default()
}

// ===== The clinic of the demo's journey, shared by the end-to-end and trace tests =====

pub mod scenario {
    //! Building blocks of the demo's journey, through the public APIs only: a clinic with a fee schedule,
    //! the shipped rules made demo-fast, patients and staff as the clinic system publishes them, plans
    //! built and sent.

    use std::time::Duration;

    use followup_proto::followup::cases::v1 as cases;
    use followup_proto::followup::common::v1::{Channel, Money, Tooth, ToothNumbering};
    use followup_proto::followup::events::v1 as ev;
    use followup_proto::followup::notifications::v1 as notifications;
    use followup_proto::followup::plans::v1 as plans;
    use followup_proto::followup::scheduler::v1 as scheduler;

    use super::{Clinic, Stack, header};

    pub const CURRENCY: &str = "USD";
    /// The codes the demo's plans use, and the clinic's fee for each (cents).
    pub const FEES: &[(&str, i64)] = &[
        ("D7140", 20_000),
        ("D6010", 200_000),
        ("D6065", 150_000),
        ("D2391", 15_000),
        ("D2392", 19_000),
        ("D8090", 520_000),
    ];
    /// The owner every case and task goes to.
    pub const OWNER: &str = "dr-lima";

    pub fn usd(amount_minor: i64) -> Option<Money> {
        Some(Money {
            amount_minor,
            currency: CURRENCY.into(),
        })
    }

    pub fn seconds(seconds: u64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: seconds as i64,
            nanos: 0,
        })
    }

    fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
        Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        })
    }

    /// A patient as the clinic system knows them.
    #[derive(Clone, Debug)]
    pub struct Patient {
        pub id: String,
        pub given_name: String,
        pub family_name: String,
        pub phone: String,
        pub zone: String,
    }

    impl Patient {
        pub fn new(id: &str, given: &str, family: &str, phone: &str, zone: &str) -> Self {
            Self {
                id: id.into(),
                given_name: given.into(),
                family_name: family.into(),
                phone: phone.into(),
                zone: zone.into(),
            }
        }
    }

    /// The clinic system publishes a patient record.
    pub async fn publish_patient(stack: &Stack, tenant: &str, patient: &Patient) {
        let (event_id, tenant_id, occurred_at) = header(tenant);
        stack
            .publish(&ev::PatientUpserted {
                event_id,
                tenant_id,
                occurred_at,
                patient_id: patient.id.clone(),
                given_name: patient.given_name.clone(),
                family_name: patient.family_name.clone(),
                phone_e164: patient.phone.clone(),
                time_zone: patient.zone.clone(),
                preferred_channel: Channel::Sms as i32,
                ..Default::default()
            })
            .await;
    }

    /// The clinic system publishes a staff member (owners of cases and tasks must be known).
    pub async fn publish_staff(stack: &Stack, tenant: &str, staff_id: &str, name: &str) {
        let (event_id, tenant_id, occurred_at) = header(tenant);
        stack
            .publish(&ev::StaffUpserted {
                event_id,
                tenant_id,
                occurred_at,
                staff_id: staff_id.into(),
                display_name: name.into(),
                email: format!("{staff_id}@clinic.invalid"),
                role: followup_proto::followup::common::v1::StaffRole::Dentist as i32,
                active: true,
            })
            .await;
    }

    /// The clinic's settings in every service: one zone, a short response window, the owner, the name
    /// templates sign with; then a default USD fee schedule with the demo's codes and fees.
    pub async fn set_up_clinic(clinic: &Clinic, zone: &str, response_window: Duration) {
        let mut c = clinic.clone();
        c.cases
            .update_case_settings(cases::UpdateCaseSettingsRequest {
                settings: Some(cases::CaseSettings {
                    response_window: seconds(response_window.as_secs()),
                    digest_hour: 7,
                    time_zone: zone.into(),
                }),
                update_mask: mask(&["response_window", "time_zone"]),
            })
            .await
            .expect("cases settings");
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
            .expect("scheduler settings");
        c.notifications
            .update_delivery_settings(notifications::UpdateDeliverySettingsRequest {
                settings: Some(notifications::DeliverySettings {
                    time_zone: zone.into(),
                    clinic_name: "Smile Dental".into(),
                    clinic_phone: "+15125550100".into(),
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
            .expect("delivery settings");
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
            .expect("fee schedule")
            .into_inner()
            .fee_schedule
            .unwrap_or_default();
        c.catalog
            .copy_master_codes(plans::CopyMasterCodesRequest {
                codes: FEES.iter().map(|(code, _)| code.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("codes copied");
        c.catalog
            .set_fees(plans::SetFeesRequest {
                fee_schedule_id: schedule.fee_schedule_id,
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
            .expect("fees set");
    }

    /// The shipped "Treatment plan follow-up" rule with its waits (days 7, 14, 28, 42 at 10:00) replaced
    /// by `first` before the first reminder and `later` between the next ones: the same sends, guards
    /// and stops at demo speed. Created and played.
    pub async fn play_demo_speed_follow_up(
        clinic: &Clinic,
        first: Duration,
        later: Duration,
    ) -> scheduler::Rule {
        let mut c = clinic.clone();
        let template = c
            .scheduler
            .list_rule_templates(scheduler::ListRuleTemplatesRequest {})
            .await
            .expect("rule templates")
            .into_inner()
            .templates
            .into_iter()
            .find(|t| t.template_id == "treatment_plan_follow_up")
            .and_then(|t| t.rule)
            .expect("the treatment plan follow-up template ships");
        let mut waits = 0;
        let steps = template
            .steps
            .into_iter()
            .map(|mut step| {
                if let Some(scheduler::step::Action::Wait(wait)) = &mut step.action {
                    let length = if waits == 0 { first } else { later };
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
                step
            })
            .collect();
        let rule = c
            .scheduler
            .create_rule(scheduler::CreateRuleRequest {
                rule: Some(scheduler::Rule {
                    name: format!("{} (demo speed)", template.name),
                    description: "The shipped plan follow-up with waits of seconds instead of days"
                        .into(),
                    steps,
                    owner_staff_id: OWNER.into(),
                    ..template
                }),
                validate_only: false,
            })
            .await
            .expect("the demo-speed rule is valid")
            .into_inner()
            .rule
            .unwrap_or_default();
        c.scheduler
            .play_rule(scheduler::PlayRuleRequest {
                rule_id: rule.rule_id.clone(),
            })
            .await
            .expect("the demo-speed rule plays")
            .into_inner()
            .rule
            .unwrap_or_default()
    }

    /// The shipped "No-show recovery" rule, enabled from its template, with its call task due at once
    /// instead of the next morning; played.
    pub async fn play_no_show_recovery(clinic: &Clinic) -> scheduler::Rule {
        let mut c = clinic.clone();
        let rule = c
            .scheduler
            .enable_rule_template(scheduler::EnableRuleTemplateRequest {
                template_id: "no_show_recovery".into(),
                play: false,
                owner_staff_id: OWNER.into(),
            })
            .await
            .expect("the no-show template enables")
            .into_inner()
            .rule
            .unwrap_or_default();
        let steps: Vec<scheduler::Step> = rule
            .steps
            .iter()
            .filter(|s| !matches!(s.action, Some(scheduler::step::Action::Wait(_))))
            .cloned()
            .collect();
        c.scheduler
            .update_rule(scheduler::UpdateRuleRequest {
                rule: Some(scheduler::Rule {
                    steps,
                    ..rule.clone()
                }),
                update_mask: mask(&["steps"]),
                validate_only: false,
            })
            .await
            .expect("the no-show rule takes demo steps");
        c.scheduler
            .play_rule(scheduler::PlayRuleRequest {
                rule_id: rule.rule_id.clone(),
            })
            .await
            .expect("the no-show rule plays")
            .into_inner()
            .rule
            .unwrap_or_default()
    }

    /// A plan item to add: its code, tooth (Universal), visit, the index of the item it depends on, and
    /// a price override with its reason.
    #[derive(Clone, Copy)]
    pub struct Item {
        pub code: &'static str,
        pub tooth: &'static str,
        pub visit: i32,
        pub after: Option<usize>,
        pub price: Option<(i64, &'static str)>,
    }

    pub const fn item(code: &'static str, tooth: &'static str, visit: i32) -> Item {
        Item {
            code,
            tooth,
            visit,
            after: None,
            price: None,
        }
    }

    /// "Phase 1: restorations": extraction → implant → crown, with a family discount on the crown.
    pub const PHASE_1: [Item; 3] = [
        item("D7140", "19", 1),
        Item {
            after: Some(0),
            ..item("D6010", "19", 2)
        },
        Item {
            after: Some(1),
            price: Some((135_000, "10% family discount")),
            ..item("D6065", "19", 3)
        },
    ];

    /// A created plan and what sending it gave.
    #[derive(Clone, Debug)]
    pub struct SentPlan {
        pub plan: plans::Plan,
        pub portal_url: String,
    }

    impl SentPlan {
        pub fn id(&self) -> &str {
            &self.plan.plan_id
        }
        pub fn total(&self) -> i64 {
            self.plan
                .totals
                .as_ref()
                .and_then(|t| t.total.as_ref())
                .map(|m| m.amount_minor)
                .unwrap_or_default()
        }
    }

    /// Builds a plan for a patient and sends it (sections: cover, treatment details).
    pub async fn build_and_send(
        clinic: &Clinic,
        patient_id: &str,
        title: &str,
        items: &[Item],
    ) -> SentPlan {
        let mut c = clinic.clone();
        let plan = c
            .plans
            .create_plan(plans::CreatePlanRequest {
                plan: Some(plans::Plan {
                    patient_id: patient_id.into(),
                    title: title.into(),
                    owner_staff_id: OWNER.into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("plan created")
            .into_inner()
            .plan
            .unwrap_or_default();
        let mut ids: Vec<String> = Vec::new();
        for item in items {
            let added = c
                .plans
                .create_plan_item(plans::CreatePlanItemRequest {
                    plan_id: plan.plan_id.clone(),
                    item: Some(plans::PlanItem {
                        code: item.code.into(),
                        tooth: (!item.tooth.is_empty()).then(|| Tooth {
                            numbering: ToothNumbering::Universal as i32,
                            number: item.tooth.into(),
                            ..Default::default()
                        }),
                        practitioner_id: OWNER.into(),
                        visit: item.visit,
                        depends_on_item_ids: item
                            .after
                            .and_then(|i| ids.get(i).cloned())
                            .into_iter()
                            .collect(),
                        price: item.price.and_then(|(amount, _)| usd(amount)),
                        price_override_reason: item
                            .price
                            .map(|(_, reason)| reason.to_string())
                            .unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await
                .expect("plan item added")
                .into_inner()
                .item
                .unwrap_or_default();
            ids.push(added.item_id);
        }
        let sent = c
            .plans
            .send_plan(plans::SendPlanRequest {
                plan_id: plan.plan_id.clone(),
                sections: vec![
                    followup_proto::followup::common::v1::PortalSection::Cover as i32,
                    followup_proto::followup::common::v1::PortalSection::TreatmentDetails as i32,
                ],
                delivery_channel: Channel::Sms as i32,
                ..Default::default()
            })
            .await
            .expect("plan sent")
            .into_inner();
        SentPlan {
            plan: sent.plan.unwrap_or_default(),
            portal_url: sent.portal_url,
        }
    }

    /// The beacons a browser's `beacon.js` posts for a page view (shared with the process harness).
    pub use crate::procs::page_view;
}

/// The five service binaries as child processes, with kill -9 and restart (fault and load runs).
pub mod procs;
