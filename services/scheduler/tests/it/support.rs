//! A real scheduler against a private NATS server and a fresh database, with a clock the test moves.

use std::time::Duration;

use chrono::{DateTime, Utc};
use followup_platform::auth::Role;
use followup_platform::clock::ManualClock;
use followup_platform::service::Running;
use followup_platform::testkit::{TestEnv, authed};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1 as pb;
use followup_proto::followup::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use followup_proto::subjects::Event;
use followup_scheduler::{INFO, Service, Settings};
use sqlx::PgPool;
use tonic::transport::Channel;

pub const TENANT: &str = "clinic-a";

/// Monday 2 March 2026, 09:00 in London (GMT): DST starts on the 29th.
pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .expect("a valid time")
}

pub fn settings() -> Settings {
    let mut settings = Settings::default();
    // A moved clock is noticed within a poll interval.
    settings.timer.poll_interval_ms = 25;
    // No notifications service unless a test starts one.
    settings.notifications.addr = String::new();
    settings.claim_links.http_addr = Some("127.0.0.1:0".parse().expect("an address"));
    settings.claim_links.public_base_url = "http://claims.test".into();
    settings.claim_links.signing_key =
        followup_platform::config::Secret::new("test-claim-key-0123456789");
    settings
}

pub struct Scheduler {
    pub env: TestEnv,
    pub running: Option<Running>,
    pub clock: ManualClock,
    pub client: SchedulerServiceClient<Channel>,
    pub pool: PgPool,
}

impl Scheduler {
    pub async fn start() -> Self {
        Self::start_with(settings()).await
    }

    pub async fn start_with(settings: Settings) -> Self {
        Self::start_in(TestEnv::start().await, settings).await
    }

    /// The scheduler in an environment a test prepared (e.g. with the notifications service running).
    pub async fn start_in(env: TestEnv, settings: Settings) -> Self {
        let clock = ManualClock::new(start_time());
        let running = Service::build_with_clock(
            env.config(&INFO, settings),
            std::sync::Arc::new(clock.clone()),
        )
        .await
        .expect("the scheduler starts");
        let client = SchedulerServiceClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .expect("connects");
        let pool = env.db.pool().await;
        Self {
            env,
            running: Some(running),
            clock,
            client,
            pool,
        }
    }

    /// Another replica on the same database, NATS and clock.
    pub async fn replica(&self, settings: Settings) -> Running {
        Service::build_with_clock(
            self.env.config(&INFO, settings),
            std::sync::Arc::new(self.clock.clone()),
        )
        .await
        .expect("a second scheduler starts")
    }

    pub fn now(&self) -> DateTime<Utc> {
        use followup_platform::clock::Clock;
        self.clock.now()
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.clock.advance(by);
    }

    pub fn token(&self, role: Role) -> String {
        self.env.auth.token(TENANT, role)
    }

    pub fn owner<T>(&self, message: T) -> tonic::Request<T> {
        authed(message, &self.token(Role::Owner))
    }

    pub async fn set_zone(&self, zone: &str) {
        self.client
            .clone()
            .update_scheduler_settings(self.owner(pb::UpdateSchedulerSettingsRequest {
                settings: Some(pb::SchedulerSettings {
                    time_zone: zone.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["time_zone".into()],
                }),
            }))
            .await
            .expect("settings updated");
    }

    /// Creates and plays a rule.
    pub async fn play(&self, rule: pb::Rule) -> pb::Rule {
        let mut client = self.client.clone();
        let created = client
            .create_rule(self.owner(pb::CreateRuleRequest {
                rule: Some(rule),
                validate_only: false,
            }))
            .await
            .expect("rule created")
            .into_inner()
            .rule
            .expect("a rule");
        client
            .play_rule(self.owner(pb::PlayRuleRequest {
                rule_id: created.rule_id.clone(),
            }))
            .await
            .expect("rule played")
            .into_inner()
            .rule
            .expect("a rule")
    }

    pub async fn enable(&self, template_id: &str) -> pb::Rule {
        self.client
            .clone()
            .enable_rule_template(self.owner(pb::EnableRuleTemplateRequest {
                template_id: template_id.into(),
                play: true,
                owner_staff_id: String::new(),
            }))
            .await
            .expect("template enabled")
            .into_inner()
            .rule
            .expect("a rule")
    }

    /// Publishes an event as its producer would.
    pub async fn publish<E: Event>(&self, event: &E) {
        let subject = event.subject().expect("a valid tenant");
        self.env.publish(&subject, event).await;
    }

    /// Every event of type `E` the scheduler wrote to its outbox, oldest first.
    pub async fn outbox<E: Event>(&self) -> Vec<E> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT payload FROM outbox WHERE subject LIKE $1 ORDER BY created_at, id",
        )
        .bind(format!("%.{}", E::KIND.tail))
        .fetch_all(&self.pool)
        .await
        .expect("outbox readable");
        rows.iter()
            .map(|p| E::decode(p.as_slice()).expect("an event"))
            .collect()
    }

    pub async fn requested(&self) -> Vec<ev::NotificationRequested> {
        self.outbox::<ev::NotificationRequested>().await
    }

    pub async fn enrollments(&self, filter: pb::ListEnrollmentsRequest) -> Vec<pb::Enrollment> {
        self.client
            .clone()
            .list_enrollments(self.owner(filter))
            .await
            .expect("enrollments listed")
            .into_inner()
            .enrollments
    }

    pub async fn enrollments_of_rule(&self, rule_id: &str) -> Vec<pb::Enrollment> {
        self.enrollments(pb::ListEnrollmentsRequest {
            rule_id: rule_id.into(),
            page_size: 500,
            ..Default::default()
        })
        .await
    }

    pub async fn timeline(&self, enrollment_id: &str) -> pb::GetEnrollmentTimelineResponse {
        self.client
            .clone()
            .get_enrollment_timeline(self.owner(pb::GetEnrollmentTimelineRequest {
                enrollment_id: enrollment_id.into(),
            }))
            .await
            .expect("timeline")
            .into_inner()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .expect("a count")
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Stopping needs the runtime; the test's runtime ends with the test, taking the tasks with it.
        self.running.take();
    }
}

/// Polls `check` until it holds, at most 20 seconds (the suite runs on 2 shared cores).
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(20, what, check).await
}

/// Polls `check` until it holds, at most `seconds`.
pub async fn eventually_within<F, Fut>(seconds: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(followup_platform::event::timestamp(at))
}

pub fn id() -> String {
    followup_platform::event::new_event_id().to_string()
}

pub fn money(minor: i64) -> Option<common::Money> {
    Some(common::Money {
        amount_minor: minor,
        currency: "USD".into(),
    })
}

pub fn plan_ref(plan_id: &str) -> Option<common::CaseRef> {
    Some(common::CaseRef {
        target: Some(common::case_ref::Target::PlanId(plan_id.into())),
    })
}

// ---- events, at the clock's time ----

impl Scheduler {
    pub fn plan_sent(&self, plan_id: &str, patient: &str) -> ev::PlanSent {
        ev::PlanSent {
            event_id: id(),
            tenant_id: TENANT.into(),
            occurred_at: ts(self.now()),
            plan_id: plan_id.into(),
            plan_version: 1,
            patient_id: patient.into(),
            title: "Implant UL6".into(),
            value: money(450_000),
            sent_time: ts(self.now()),
            send_count: 1,
            owner_staff_id: "dr-ana".into(),
            portal_url: format!("https://portal.example/p/{plan_id}"),
            visit_count: 3,
            ..Default::default()
        }
    }

    pub fn appointment(
        &self,
        appointment_id: &str,
        patient: &str,
        plan_id: &str,
    ) -> ev::Appointment {
        ev::Appointment {
            appointment_id: appointment_id.into(),
            patient_id: patient.into(),
            slot: Some(common::Slot {
                start_time: ts(self.now() + chrono::Duration::days(3)),
                duration: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                practitioner_id: "dr-ana".into(),
                location_id: String::new(),
            }),
            plan_id: plan_id.into(),
            ..Default::default()
        }
    }

    pub fn booked(&self, appointment: ev::Appointment) -> ev::AppointmentBooked {
        ev::AppointmentBooked {
            event_id: id(),
            tenant_id: TENANT.into(),
            occurred_at: ts(self.now()),
            appointment: Some(appointment),
            ..Default::default()
        }
    }
}
