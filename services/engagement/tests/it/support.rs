//! What the engagement tests share: a started service, portal tokens, an HTTP client, polling.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use followup_engagement::{INFO, Service, Settings};
use followup_platform::Running;
use followup_platform::auth::{KeyPair, PORTAL_AUDIENCE, PortalClaims, Role, Signer};
use followup_platform::testkit::{TestEnv, authed};
use followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient;
use followup_proto::followup::engagement::v1::{GetPlanEngagementRequest, PlanEngagement};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tonic::transport::Channel;

pub const TENANT: &str = "clinic-a";

/// A running engagement service on free ports, its environment and the portal signing key.
pub struct Harness {
    pub env: TestEnv,
    pub running: Running,
    pub portal: Signer,
    #[allow(dead_code)]
    pub portal_keys: KeyPair,
    pub http: Client<HttpConnector, Full<Bytes>>,
}

pub fn settings(portal_keys: &KeyPair) -> Settings {
    Settings {
        portal_public_keys: vec![portal_keys.public_pem.clone()],
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        update_poll_ms: 50,
        ..Settings::default()
    }
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Settings)) -> Self {
        let env = TestEnv::start().await;
        let portal_keys = KeyPair::generate().expect("portal keys");
        let portal = Signer::from_pem(&portal_keys.private_pem).expect("signer");
        let mut own = settings(&portal_keys);
        tune(&mut own);
        let config = env.config(&INFO, own);
        let running = Service::build(config).await.expect("engagement starts");
        Self {
            env,
            running,
            portal,
            portal_keys,
            http: http_client(),
        }
    }

    pub fn beacons_addr(&self) -> SocketAddr {
        self.running.http_addr("beacons").expect("beacons server")
    }

    pub fn token(&self, tenant: &str, plan_id: &str) -> String {
        portal_token(&self.portal, tenant, plan_id, 3600)
    }

    pub async fn post(&self, body: &Value) -> (u16, Value) {
        let (status, _, body) = post_raw(
            &self.http,
            self.beacons_addr(),
            "text/plain;charset=UTF-8",
            body.to_string().into(),
        )
        .await;
        (status, body)
    }

    pub async fn grpc(&self) -> EngagementServiceClient<Channel> {
        EngagementServiceClient::connect(format!("http://{}", self.running.grpc_addr))
            .await
            .expect("gRPC connects")
    }

    pub fn staff(&self, tenant: &str) -> String {
        self.env.auth.token(tenant, Role::FrontDesk)
    }

    pub async fn facts(&self, tenant: &str, plan_id: &str) -> PlanEngagement {
        facts(&mut self.grpc().await, &self.staff(tenant), plan_id).await
    }

    /// Polls the facts until `done` holds, for at most 20 s.
    pub async fn facts_until(
        &self,
        plan_id: &str,
        done: impl Fn(&PlanEngagement) -> bool,
    ) -> PlanEngagement {
        let mut client = self.grpc().await;
        let token = self.staff(TENANT);
        poll_facts(&mut client, &token, plan_id, Duration::from_secs(20), done).await
    }
}

pub async fn facts(
    client: &mut EngagementServiceClient<Channel>,
    staff_token: &str,
    plan_id: &str,
) -> PlanEngagement {
    client
        .get_plan_engagement(authed(
            GetPlanEngagementRequest {
                plan_id: plan_id.into(),
            },
            staff_token,
        ))
        .await
        .expect("GetPlanEngagement")
        .into_inner()
        .engagement
        .expect("engagement")
}

pub async fn poll_facts(
    client: &mut EngagementServiceClient<Channel>,
    staff_token: &str,
    plan_id: &str,
    within: Duration,
    done: impl Fn(&PlanEngagement) -> bool,
) -> PlanEngagement {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = facts(client, staff_token, plan_id).await;
        if done(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "facts of {plan_id} never reached the expected state; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn portal_token(signer: &Signer, tenant: &str, plan_id: &str, ttl_secs: i64) -> String {
    let now = jsonwebtoken_now();
    signer
        .sign(&PortalClaims {
            tenant: tenant.into(),
            plan_id: plan_id.into(),
            plan_version: 1,
            patient_id: "patient-1".into(),
            jti: uuid::Uuid::now_v7().to_string(),
            aud: PORTAL_AUDIENCE.into(),
            iat: now.saturating_sub(60),
            exp: (now as i64 + ttl_secs).max(1) as u64,
        })
        .expect("portal token")
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn new_plan() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A request body in the script's shape.
pub fn batch(token: &str, session: &str, events: Vec<Value>) -> Value {
    json!({"token": token, "session_id": session, "events": events})
}

pub fn heartbeat(id: &str, ms: i64) -> Value {
    json!({"id": id, "kind": "heartbeat", "visible_ms": ms})
}

pub fn section(id: &str, section: &str, ms: i64) -> Value {
    json!({"id": id, "kind": "section_visible", "section": section, "visible_ms": ms})
}

pub fn open(id: &str) -> Value {
    json!({"id": id, "kind": "open"})
}

pub async fn post_raw(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    content_type: &str,
    body: Bytes,
) -> (u16, http::HeaderMap, Value) {
    try_post_raw(client, addr, content_type, body)
        .await
        .expect("HTTP round trip")
}

/// The same, with a broken connection as an error (the crash test cuts them).
pub async fn try_post_raw(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    content_type: &str,
    body: Bytes,
) -> Result<(u16, http::HeaderMap, Value), String> {
    let request = http::Request::post(format!("http://{addr}/v1/beacons"))
        .header("content-type", content_type)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, headers, value))
}

/// The millisecond count of a Duration message.
pub fn ms(duration: &Option<prost_types::Duration>) -> i64 {
    duration
        .as_ref()
        .map(|d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
        .unwrap_or(0)
}

/// Section number → visible ms, from a facts message.
pub fn section_ms(
    times: &[followup_proto::followup::common::v1::SectionTime],
    section: followup_proto::followup::common::v1::PortalSection,
) -> i64 {
    times
        .iter()
        .find(|t| t.section == section as i32)
        .map(|t| ms(&t.view_time))
        .unwrap_or(0)
}

/// Waits until the aggregator has nothing pending or unacknowledged.
pub async fn drained(env: &TestEnv) {
    let js = env.nats.jetstream().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream(followup_engagement::consumers::DURABLE, "BEACONS")
            .await
            .expect("aggregator consumer");
        let info = consumer.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregator still busy: {} pending, {} unacknowledged",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
