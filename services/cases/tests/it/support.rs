//! A real cases service on port 0 against a fresh database and a private NATS server, a clock the test
//! moves, and builders for the events other services and clinic systems publish.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use followup_cases::{INFO, Service, Settings};
use followup_platform::auth::Role;
use followup_platform::clock::ManualClock;
use followup_platform::event::{new_event_id, timestamp};
use followup_platform::service::Running;
use followup_platform::testkit::{TestEnv, authed};
use followup_proto::followup::cases::v1 as pb;
use followup_proto::followup::cases::v1::cases_service_client::CasesServiceClient;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::subjects::Event;
use futures::StreamExt;
use tonic::transport::Channel;

pub const CLINIC: &str = "clinic-a";
pub const OTHER_CLINIC: &str = "clinic-b";

/// 2026-11-02 09:00 UTC, a Monday: where every test's clock starts.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0)
        .single()
        .expect("valid")
}

pub fn at(minutes: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::minutes(minutes)
}

pub fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(timestamp(t))
}

pub fn eur(amount_minor: i64) -> Option<common::Money> {
    money(amount_minor, "EUR")
}

pub fn money(amount_minor: i64, currency: &str) -> Option<common::Money> {
    Some(common::Money {
        amount_minor,
        currency: currency.into(),
    })
}

pub struct Harness {
    pub env: TestEnv,
    /// Kept so the service runs as long as the harness.
    pub _running: Running,
    pub client: CasesServiceClient<Channel>,
    pub clock: ManualClock,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(Settings::default()).await
    }

    pub async fn start_with(settings: Settings) -> Self {
        let env = TestEnv::start().await;
        let settings = Settings {
            timer_interval_ms: 50,
            counts_interval_ms: 50,
            digest_interval_secs: 1,
            settings_cache_secs: 0,
            ..settings
        };
        let mut config = env.config(&INFO, settings);
        // Small batches keep a test's events flowing one after another.
        config.common.consumer.batch_size = 64;
        let clock = ManualClock::new(t0());
        let running = Service::build_with_clock(config, Arc::new(clock.clone()))
            .await
            .expect("the cases service starts");
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
                .expect("endpoint")
                .connect()
                .await
                .expect("connects");
        Self {
            env,
            _running: running,
            client: CasesServiceClient::new(channel),
            clock,
        }
    }

    pub fn token(&self, role: Role) -> String {
        self.env.auth.token(CLINIC, role)
    }

    pub fn token_of(&self, tenant: &str, sub: &str, role: Role) -> String {
        self.env.auth.token_for(tenant, sub, role)
    }

    /// Publishes an event as its producer would.
    pub async fn publish<E: Event>(&self, event: &E) {
        let subject = event.subject().expect("a valid tenant");
        self.env.publish(&subject, event).await;
    }

    pub async fn get(&self, case_id: &str) -> Option<pb::GetCaseResponse> {
        let token = self.token(Role::FrontDesk);
        match self
            .client
            .clone()
            .get_case(authed(
                pb::GetCaseRequest {
                    case_id: case_id.into(),
                    timeline_page_size: 200,
                },
                &token,
            ))
            .await
        {
            Ok(response) => Some(response.into_inner()),
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => panic!("GetCase failed: {status}"),
        }
    }

    /// Waits until the case satisfies `check` (events are applied asynchronously), returning it.
    pub async fn wait_case<F>(&self, case_id: &str, what: &str, check: F) -> pb::GetCaseResponse
    where
        F: Fn(&pb::GetCaseResponse) -> bool,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(found) = self.get(case_id).await
                && check(&found)
            {
                return found;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for case {case_id}: {what}; last: {:?}",
                    self.get(case_id)
                        .await
                        .and_then(|c| c.case)
                        .map(|c| c.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    pub async fn wait_status(
        &self,
        case_id: &str,
        status: common::CaseStatus,
    ) -> pb::GetCaseResponse {
        self.wait_case(case_id, &format!("status {status:?}"), |c| {
            c.case.as_ref().is_some_and(|c| c.status == status as i32)
        })
        .await
    }

    pub async fn list(
        &self,
        request: pb::ListCasesRequest,
    ) -> Result<pb::ListCasesResponse, tonic::Status> {
        let token = self.token(Role::FrontDesk);
        self.client
            .clone()
            .list_cases(authed(request, &token))
            .await
            .map(|r| r.into_inner())
    }

    /// Subscribes (core NATS) to the events the service publishes for a clinic.
    pub async fn subscribe_cases(&self, tenant: &str) -> async_nats::Subscriber {
        let client = self.env.nats.client().await;
        let subscriber = client
            .subscribe(format!("followup.{tenant}.cases.>"))
            .await
            .expect("subscribes");
        client.flush().await.expect("flush");
        subscriber
    }
}

/// The next message on a subscription within ten seconds.
pub async fn next_message(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .expect("a message within ten seconds")
        .expect("subscription open")
}

pub fn plan_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn id() -> String {
    new_event_id().to_string()
}

pub fn plan_created(tenant: &str, plan: &str, patient: &str, minute: i64) -> ev::PlanCreated {
    ev::PlanCreated {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(minute)),
        plan_id: plan.into(),
        plan_version: 1,
        patient_id: patient.into(),
        title: "Implant plan".into(),
        created_by_staff_id: "dr-ana".into(),
        owner_staff_id: String::new(),
        value: eur(0),
        alternative_group_id: String::new(),
    }
}

pub struct Sent<'a> {
    pub tenant: &'a str,
    pub plan: &'a str,
    pub patient: &'a str,
    pub value: Option<common::Money>,
    pub minute: i64,
    pub owner: &'a str,
    pub group: &'a str,
    pub send_count: i32,
}

impl Default for Sent<'_> {
    fn default() -> Self {
        Self {
            tenant: CLINIC,
            plan: "",
            patient: "p-1",
            value: eur(250_000),
            minute: 0,
            owner: "",
            group: "",
            send_count: 1,
        }
    }
}

pub fn plan_sent(s: Sent<'_>) -> ev::PlanSent {
    ev::PlanSent {
        event_id: id(),
        tenant_id: s.tenant.into(),
        occurred_at: ts(at(s.minute)),
        plan_id: s.plan.into(),
        plan_version: 1,
        patient_id: s.patient.into(),
        title: "Implant plan".into(),
        value: s.value,
        sent_time: ts(at(s.minute)),
        send_count: s.send_count,
        sent_by_staff_id: "dr-ana".into(),
        owner_staff_id: s.owner.into(),
        sections: vec![
            common::PortalSection::Cover as i32,
            common::PortalSection::TreatmentDetails as i32,
        ],
        portal_url: "https://portal.example/p/secret".into(),
        portal_link_expire_time: ts(at(s.minute + 60 * 24 * 30)),
        items: vec![ev::PlanItemSummary {
            item_id: id(),
            code: "D6010".into(),
            name: "Implant placement".into(),
            tooth: Some(common::Tooth {
                numbering: common::ToothNumbering::Universal as i32,
                number: "19".into(),
                surfaces: String::new(),
            }),
            visit: 1,
            value: eur(250_000),
            practitioner_id: "dr-ana".into(),
            depends_on_item_ids: vec![],
        }],
        images: vec![common::ImageRef {
            image_id: "img-1".into(),
            url: "https://images.example/1.jpg".into(),
            kind: common::ImageKind::Radiograph as i32,
            caption: "Lower left".into(),
        }],
        alternative_group_id: s.group.into(),
        quote_expiry_date: "2026-12-31".into(),
        visit_count: 1,
        visits_completed: 0,
        delivery_channel: common::Channel::Sms as i32,
    }
}

pub fn plan_viewed(tenant: &str, plan: &str, patient: &str, minute: i64) -> ev::PlanViewed {
    ev::PlanViewed {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(minute)),
        plan_id: plan.into(),
        plan_version: 1,
        patient_id: patient.into(),
        session_id: format!("session-{minute}"),
    }
}

pub fn engagement(
    tenant: &str,
    plan: &str,
    patient: &str,
    minute: i64,
    views: i32,
    details_secs: i64,
) -> ev::EngagementUpdated {
    let section = |s: common::PortalSection, secs: i64| common::SectionTime {
        section: s as i32,
        view_time: Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
    };
    ev::EngagementUpdated {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(minute)),
        plan_id: plan.into(),
        plan_version: 1,
        patient_id: patient.into(),
        facts: Some(ev::EngagementFacts {
            first_view_time: ts(at(minute - 10)),
            last_view_time: ts(at(minute)),
            view_count: views,
            total_view_time: Some(prost_types::Duration {
                seconds: details_secs + 30,
                nanos: 0,
            }),
            section_times: vec![
                section(common::PortalSection::Cover, 30),
                section(common::PortalSection::TreatmentDetails, details_secs),
            ],
            last_section: common::PortalSection::TreatmentDetails as i32,
        }),
        ended_sessions: vec![ev::ViewSessionSummary {
            session_id: format!("session-{minute}"),
            start_time: ts(at(minute - 10)),
            end_time: ts(at(minute)),
            view_time: Some(prost_types::Duration {
                seconds: details_secs + 30,
                nanos: 0,
            }),
            section_times: vec![section(
                common::PortalSection::TreatmentDetails,
                details_secs,
            )],
        }],
    }
}

pub fn booked(
    tenant: &str,
    plan: &str,
    patient: &str,
    appointment: &str,
    minute: i64,
) -> ev::AppointmentBooked {
    ev::AppointmentBooked {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(minute)),
        appointment: Some(ev::Appointment {
            appointment_id: appointment.into(),
            patient_id: patient.into(),
            slot: Some(common::Slot {
                start_time: ts(at(minute + 60 * 24 * 7)),
                duration: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                practitioner_id: "dr-ana".into(),
                location_id: String::new(),
            }),
            plan_id: plan.into(),
            care_case_id: String::new(),
            appointment_type: "implant".into(),
        }),
        rescheduled_from_appointment_id: String::new(),
        slot_offer_id: String::new(),
    }
}

pub fn approved(
    tenant: &str,
    plan: &str,
    patient: &str,
    minute: i64,
    group: &str,
) -> ev::PlanApproved {
    ev::PlanApproved {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(minute)),
        plan_id: plan.into(),
        plan_version: 1,
        patient_id: patient.into(),
        approved_by: ev::PlanApprover::Patient as i32,
        approved_by_staff_id: String::new(),
        value: None,
        alternative_group_id: group.into(),
        owner_staff_id: String::new(),
    }
}

pub fn replied(tenant: &str, plan: &str, patient: &str, minute: i64) -> ev::PatientReplied {
    ev::PatientReplied {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(minute)),
        patient_id: patient.into(),
        channel: common::Channel::Sms as i32,
        message_id: id(),
        text: "Can I call you tomorrow?".into(),
        kind: ev::ReplyKind::Text as i32,
        in_reply_to: None,
        case_ref: if plan.is_empty() {
            None
        } else {
            Some(common::CaseRef {
                target: Some(common::case_ref::Target::PlanId(plan.into())),
            })
        },
    }
}

pub fn reminder_sent(tenant: &str, plan: &str, patient: &str, minute: i64) -> ev::MessageSent {
    ev::MessageSent {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(minute)),
        message: Some(ev::MessageRef {
            message_id: id(),
            idempotency_key: format!("{}:1", id()),
            channel: common::Channel::Sms as i32,
            category: "treatment_follow_up".into(),
            patient_id: patient.into(),
            staff_id: String::new(),
            case_ref: Some(common::CaseRef {
                target: Some(common::case_ref::Target::PlanId(plan.into())),
            }),
            enrollment_id: id(),
            template_key: "plan_follow_up_1".into(),
        }),
        attempt: 1,
        provider: "twilio".into(),
        provider_message_id: "SM1".into(),
        segment_count: 1,
    }
}

pub fn patient(tenant: &str, patient: &str, given: &str, family: &str) -> ev::PatientUpserted {
    ev::PatientUpserted {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(0)),
        patient_id: patient.into(),
        given_name: given.into(),
        family_name: family.into(),
        preferred_name: String::new(),
        phone_e164: "+447700900123".into(),
        email: String::new(),
        time_zone: String::new(),
        preferred_channel: 0,
        language: String::new(),
        archived: false,
    }
}

pub fn staff(tenant: &str, staff_id: &str, name: &str) -> ev::StaffUpserted {
    ev::StaffUpserted {
        event_id: id(),
        tenant_id: tenant.into(),
        occurred_at: ts(at(0)),
        staff_id: staff_id.into(),
        display_name: name.into(),
        email: format!("{staff_id}@clinic.example"),
        role: common::StaffRole::FrontDesk as i32,
        active: true,
    }
}
