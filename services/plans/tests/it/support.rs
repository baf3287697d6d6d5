use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use followup_plans::{INFO, Service, Settings};
use followup_platform::Running;
use followup_platform::auth::{KeyPair, Role};
use followup_platform::config::Secret;
use followup_platform::testkit::{TestEnv, authed};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::plans::v1 as pb;
use followup_proto::followup::plans::v1::catalog_service_client::CatalogServiceClient;
use followup_proto::followup::plans::v1::plans_service_client::PlansServiceClient;
use http_body_util::{BodyExt, Full};
use tonic::transport::Channel;

pub const CLINIC: &str = "clinic-a";
pub const OTHER: &str = "clinic-b";

pub struct Svc {
    pub env: TestEnv,
    pub running: Option<Running>,
    pub portal_keys: KeyPair,
    pub plans: PlansServiceClient<Channel>,
    pub catalog: CatalogServiceClient<Channel>,
    pub portal: SocketAddr,
}

impl Svc {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Settings)) -> Self {
        let env = TestEnv::start().await;
        let portal_keys = KeyPair::generate().unwrap();
        let mut settings = Settings {
            portal_signing_key: Secret::new(portal_keys.private_pem.clone()),
            portal_addr: "127.0.0.1:0".parse().unwrap(),
            beacon_script_url: "http://beacons.test/v1/beacon.js".into(),
            ..Settings::default()
        };
        tune(&mut settings);
        let running = Service::build(env.config(&INFO, settings)).await.unwrap();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let portal = running.http_addr("portal").unwrap();
        Self {
            env,
            running: Some(running),
            portal_keys,
            plans: PlansServiceClient::new(channel.clone()),
            catalog: CatalogServiceClient::new(channel),
            portal,
        }
    }

    pub fn req<T>(&self, message: T, tenant: &str, role: Role) -> tonic::Request<T> {
        authed(message, &self.env.auth.token(tenant, role))
    }

    pub fn owner<T>(&self, message: T) -> tonic::Request<T> {
        self.req(message, CLINIC, Role::Owner)
    }

    /// The clinic's list and a USD "Standard" schedule with fees for the journey's codes.
    pub async fn setup_catalog(&self, tenant: &str) -> String {
        let mut catalog = self.catalog.clone();
        catalog
            .copy_master_codes(self.req(
                pb::CopyMasterCodesRequest {
                    all: true,
                    ..Default::default()
                },
                tenant,
                Role::Owner,
            ))
            .await
            .unwrap();
        let schedule = catalog
            .create_fee_schedule(self.req(
                pb::CreateFeeScheduleRequest {
                    fee_schedule: Some(pb::FeeSchedule {
                        name: "Standard".into(),
                        currency: "USD".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                tenant,
                Role::Owner,
            ))
            .await
            .unwrap()
            .into_inner()
            .fee_schedule
            .unwrap();
        let fees = [
            ("D7140", 20_000),
            ("D6010", 200_000),
            ("D6065", 150_000),
            ("D0120", 6_000),
        ];
        catalog
            .set_fees(
                self.req(
                    pb::SetFeesRequest {
                        fee_schedule_id: schedule.fee_schedule_id.clone(),
                        fees: fees
                            .iter()
                            .map(|(code, amount)| pb::Fee {
                                code: code.to_string(),
                                amount: Some(usd(*amount)),
                            })
                            .collect(),
                        remove_codes: vec![],
                    },
                    tenant,
                    Role::Owner,
                ),
            )
            .await
            .unwrap();
        schedule.fee_schedule_id
    }

    pub async fn create_plan(&self, tenant: &str, patient: &str, title: &str) -> pb::Plan {
        self.plans
            .clone()
            .create_plan(self.req(
                pb::CreatePlanRequest {
                    plan: Some(pb::Plan {
                        patient_id: patient.into(),
                        title: title.into(),
                        owner_staff_id: "dr-jones".into(),
                        ..Default::default()
                    }),
                },
                tenant,
                Role::Dentist,
            ))
            .await
            .unwrap()
            .into_inner()
            .plan
            .unwrap()
    }

    pub async fn add_item(
        &self,
        tenant: &str,
        plan_id: &str,
        item: pb::PlanItem,
    ) -> Result<pb::CreatePlanItemResponse, tonic::Status> {
        self.plans
            .clone()
            .create_plan_item(self.req(
                pb::CreatePlanItemRequest {
                    plan_id: plan_id.into(),
                    item: Some(item),
                },
                tenant,
                Role::Dentist,
            ))
            .await
            .map(|r| r.into_inner())
    }

    /// "Phase 1: restorations": extraction → implant → crown (with a fee override). Returns the plan
    /// id and the three item ids.
    pub async fn journey(&self, tenant: &str, patient: &str) -> (String, [String; 3]) {
        let plan = self
            .create_plan(tenant, patient, "Phase 1: restorations")
            .await;
        let extraction = self
            .add_item(
                tenant,
                &plan.plan_id,
                item("D7140", Some(("19", "")), 1, vec![]),
            )
            .await
            .unwrap()
            .item
            .unwrap();
        let implant = self
            .add_item(
                tenant,
                &plan.plan_id,
                item(
                    "D6010",
                    Some(("19", "")),
                    2,
                    vec![extraction.item_id.clone()],
                ),
            )
            .await
            .unwrap()
            .item
            .unwrap();
        let mut crown = item(
            "D6065",
            Some(("19", "MOD")),
            3,
            vec![implant.item_id.clone()],
        );
        crown.price = Some(usd(135_000));
        crown.price_override_reason = "10% family discount".into();
        let crown = self
            .add_item(tenant, &plan.plan_id, crown)
            .await
            .unwrap()
            .item
            .unwrap();
        (
            plan.plan_id,
            [extraction.item_id, implant.item_id, crown.item_id],
        )
    }

    pub async fn get(&self, tenant: &str, plan_id: &str) -> pb::Plan {
        self.plans
            .clone()
            .get_plan(self.req(
                pb::GetPlanRequest {
                    plan_id: plan_id.into(),
                    plan_version: 0,
                },
                tenant,
                Role::FrontDesk,
            ))
            .await
            .unwrap()
            .into_inner()
            .plan
            .unwrap()
    }

    pub async fn send(&self, tenant: &str, plan_id: &str) -> pb::SendPlanResponse {
        self.plans
            .clone()
            .send_plan(self.req(
                pb::SendPlanRequest {
                    plan_id: plan_id.into(),
                    ..Default::default()
                },
                tenant,
                Role::FrontDesk,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn approve(&self, tenant: &str, plan_id: &str) -> Result<pb::Plan, tonic::Status> {
        self.plans
            .clone()
            .approve_plan(self.req(
                pb::ApprovePlanRequest {
                    plan_id: plan_id.into(),
                    plan_version: 0,
                },
                tenant,
                Role::Dentist,
            ))
            .await
            .map(|r| r.into_inner().plan.unwrap())
    }

    pub async fn complete(
        &self,
        tenant: &str,
        plan_id: &str,
        item_id: &str,
    ) -> Result<pb::CompletePlanItemResponse, tonic::Status> {
        self.plans
            .clone()
            .complete_plan_item(self.req(
                pb::CompletePlanItemRequest {
                    plan_id: plan_id.into(),
                    item_id: item_id.into(),
                    complete_time: None,
                },
                tenant,
                Role::Dentist,
            ))
            .await
            .map(|r| r.into_inner())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.portal)
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

pub fn usd(amount_minor: i64) -> common::Money {
    common::Money {
        amount_minor,
        currency: "USD".into(),
    }
}

pub fn item(
    code: &str,
    tooth: Option<(&str, &str)>,
    visit: i32,
    depends_on: Vec<String>,
) -> pb::PlanItem {
    pb::PlanItem {
        code: code.into(),
        tooth: tooth.map(|(number, surfaces)| common::Tooth {
            numbering: common::ToothNumbering::Universal as i32,
            number: number.into(),
            surfaces: surfaces.into(),
        }),
        practitioner_id: "dr-jones".into(),
        visit,
        depends_on_item_ids: depends_on,
        ..Default::default()
    }
}

pub fn field_violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// One HTTP/1.1 request to the portal: (status, headers, body).
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).to_string())
}

/// The token of a portal URL (`…/p/<token>`).
pub fn token_of(portal_url: &str) -> String {
    portal_url.rsplit("/p/").next().unwrap().to_string()
}
