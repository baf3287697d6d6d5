//! Clients of a [`System`](super::System) as a clinic and its systems use it: gRPC with a staff token,
//! JetStream publishes as a clinic system makes them, beacons as a portal page posts them. Each call
//! that crosses a fault retries until its deadline, as a real client would: a killed service answers
//! nothing for a second, a stopped NATS refuses publishes for a few.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use followup_platform::auth::Role;
use followup_platform::event::OutgoingEvent;
use followup_proto::followup::cases::v1::cases_service_client::CasesServiceClient;
use followup_proto::followup::common::v1::Money;
use followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient;
use followup_proto::followup::notifications::v1::notifications_service_client::NotificationsServiceClient;
use followup_proto::followup::plans::v1 as plans;
use followup_proto::followup::plans::v1::catalog_service_client::CatalogServiceClient;
use followup_proto::followup::plans::v1::plans_service_client::PlansServiceClient;
use followup_proto::followup::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use followup_proto::subjects::Event;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{Svc, System};

/// A gRPC channel whose calls carry a staff token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer {
    value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(request)
    }
}

/// Every API of the system for one clinic and role.
#[derive(Clone)]
pub struct Api {
    pub tenant: String,
    pub plans: PlansServiceClient<Authed>,
    pub catalog: CatalogServiceClient<Authed>,
    pub cases: CasesServiceClient<Authed>,
    pub engagement: EngagementServiceClient<Authed>,
    pub scheduler: SchedulerServiceClient<Authed>,
    pub notifications: NotificationsServiceClient<Authed>,
}

impl Api {
    /// The clinic's catalogue for the runs' plans: a default USD fee schedule, and code D2740 (a crown)
    /// copied from the master list at 1,200.00.
    pub async fn set_up_catalogue(&self) -> anyhow::Result<()> {
        let within = Duration::from_secs(60);
        let (schedule, _) = retry("fee schedule", within, || {
            let mut c = self.catalog.clone();
            async move {
                c.create_fee_schedule(plans::CreateFeeScheduleRequest {
                    fee_schedule: Some(plans::FeeSchedule {
                        name: "Standard".into(),
                        currency: "USD".into(),
                        is_default: true,
                        ..Default::default()
                    }),
                    copy_fees_from_fee_schedule_id: String::new(),
                })
                .await
            }
        })
        .await?;
        let schedule_id = schedule
            .fee_schedule
            .map(|s| s.fee_schedule_id)
            .unwrap_or_default();
        retry("codes", within, || {
            let mut c = self.catalog.clone();
            async move {
                c.copy_master_codes(plans::CopyMasterCodesRequest {
                    codes: vec!["D2740".into()],
                    ..Default::default()
                })
                .await
            }
        })
        .await?;
        retry("fees", within, || {
            let mut c = self.catalog.clone();
            let schedule_id = schedule_id.clone();
            async move {
                c.set_fees(plans::SetFeesRequest {
                    fee_schedule_id: schedule_id,
                    fees: vec![plans::Fee {
                        code: "D2740".into(),
                        amount: Some(Money {
                            amount_minor: 120_000,
                            currency: "USD".into(),
                        }),
                    }],
                    remove_codes: vec![],
                })
                .await
            }
        })
        .await?;
        Ok(())
    }
}

impl System {
    /// Clients of every service for `tenant`, signed for `staff-<role>`.
    pub fn api(&self, tenant: &str, role: Role) -> anyhow::Result<Api> {
        let bearer = Bearer {
            value: format!("Bearer {}", self.token(tenant, role)?).parse()?,
        };
        let channel = |svc: Svc| -> anyhow::Result<Authed> {
            Ok(InterceptedService::new(self.channel(svc)?, bearer.clone()))
        };
        Ok(Api {
            tenant: tenant.to_string(),
            plans: PlansServiceClient::new(channel(Svc::Plans)?),
            catalog: CatalogServiceClient::new(channel(Svc::Plans)?),
            cases: CasesServiceClient::new(channel(Svc::Cases)?),
            engagement: EngagementServiceClient::new(channel(Svc::Engagement)?),
            scheduler: SchedulerServiceClient::new(channel(Svc::Scheduler)?),
            notifications: NotificationsServiceClient::new(channel(Svc::Notifications)?),
        })
    }
}

/// Whether a gRPC failure may go away by itself (the service restarting, its database or NATS coming
/// back), so a client retries.
pub fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// Calls `call` until it succeeds, fails for good, or `within` has passed; waits grow from 100 ms to
/// 1 s between attempts. Returns the answer and how many attempts failed first.
pub async fn retry<T, F, Fut>(what: &str, within: Duration, mut call: F) -> anyhow::Result<(T, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + within;
    let mut failures = 0;
    let mut wait = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(response) => return Ok((response.into_inner(), failures)),
            Err(status) if retryable(&status) && Instant::now() < deadline => {
                failures += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(status) => bail!(
                "{what}: {:?} {} (after {failures} retries)",
                status.code(),
                status.message()
            ),
        }
    }
}

/// Publishes to JetStream as a clinic system does, retrying while NATS is away.
#[derive(Clone)]
pub struct Publisher {
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
}

impl Publisher {
    /// Connects (reconnecting forever, as the services do).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("followup-e2e")
            .max_reconnects(None)
            .retry_on_initial_connect()
            .connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        Ok(Self { js, client })
    }

    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Publishes an event (protobuf, `Nats-Msg-Id` = its event id, so a retry is dropped as a duplicate)
    /// and waits for the PubAck, retrying until `within` has passed.
    pub async fn publish<E: Event>(&self, event: &E, within: Duration) -> anyhow::Result<()> {
        let subject = event.subject()?;
        let outgoing = OutgoingEvent::new("e2e", subject.clone(), event)?;
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &outgoing.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        self.publish_raw(
            &subject,
            headers,
            Bytes::from(outgoing.payload),
            &outgoing.event_id.to_string(),
            within,
        )
        .await
    }

    /// Publishes any payload with the given headers and message id, retrying until acknowledged.
    pub async fn publish_raw(
        &self,
        subject: &str,
        headers: async_nats::HeaderMap,
        payload: Bytes,
        message_id: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .headers(headers.clone())
                .message_id(message_id);
            let outcome = match self.js.send_publish(subject.to_string(), publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(err) => Err(err.to_string()),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    bail!("publishing on {subject}: {err} (gave up after {within:?})")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Posts beacons to engagement's ingest as a portal page's `beacon.js` does.
#[derive(Clone)]
pub struct Beacons {
    addr: SocketAddr,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Beacons {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            http: HttpClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
        }
    }

    /// One POST; the status, or an error when nothing answered.
    pub async fn post(&self, body: &serde_json::Value) -> anyhow::Result<u16> {
        self.post_raw(Bytes::from(body.to_string())).await
    }

    /// One POST of a body already in JSON.
    pub async fn post_raw(&self, body: Bytes) -> anyhow::Result<u16> {
        let request = http::Request::post(format!("http://{}/v1/beacons", self.addr))
            .header(http::header::CONTENT_TYPE, "text/plain;charset=UTF-8")
            .body(Full::new(body))?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.http.request(request))
            .await
            .context("the beacon ingest did not answer within 10 s")??;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        Ok(status)
    }

    /// Posts until the ingest answers 202 (a 5xx, a 429 or no answer is retried, as the browser's next
    /// beacon would carry the same events again); a 4xx other than 429 is an error.
    pub async fn post_until_accepted(
        &self,
        body: &serde_json::Value,
        within: Duration,
    ) -> anyhow::Result<u32> {
        let deadline = Instant::now() + within;
        let mut failures = 0;
        loop {
            match self.post(body).await {
                Ok(202) => return Ok(failures),
                Ok(status) if (400..500).contains(&status) && status != 429 => {
                    bail!("the beacon ingest refused the page's beacons: {status}")
                }
                outcome => {
                    failures += 1;
                    if Instant::now() >= deadline {
                        bail!("beacons not accepted within {within:?}: last {outcome:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// The beacons a browser's `beacon.js` posts for one page view: open, time on each section, a heartbeat
/// and the close of `pagehide`.
pub fn page_view(
    token: &str,
    plan_id: &str,
    session_id: &str,
    sections: &[(&str, i64)],
) -> serde_json::Value {
    let mut events = vec![serde_json::json!({"id": format!("{session_id}.1"), "kind": "open"})];
    let mut total = 0;
    for (i, (section, ms)) in sections.iter().enumerate() {
        total += ms;
        events.push(serde_json::json!({
            "id": format!("{session_id}.{}", i + 2),
            "kind": "section_visible",
            "section": section,
            "visible_ms": ms,
        }));
    }
    let n = events.len();
    events.push(serde_json::json!({"id": format!("{session_id}.{}", n + 1), "kind": "heartbeat", "visible_ms": total}));
    events.push(serde_json::json!({"id": format!("{session_id}.{}", n + 2), "kind": "close"}));
    serde_json::json!({
        "token": token,
        "session_id": session_id,
        "plan_id": plan_id,
        "events": events,
    })
}

/// Whether a NATS subject matches a filter (`*` one token, `>` one or more trailing tokens).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut filter = filter.split('.');
    let mut subject = subject.split('.');
    loop {
        match (filter.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(f), Some(s)) if f == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A zone where it is daytime now, by name, so that no message of a run waits for the end of quiet
/// hours (the in-process harness's choice, [`crate::daytime_zone`]).
pub fn daytime_zone() -> String {
    crate::daytime_zone().0.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_nats_wildcards() {
        assert!(subject_matches("clinic.>", "clinic.a.patient.upserted"));
        assert!(subject_matches("clinic.*.>", "clinic.a.patient.upserted"));
        assert!(subject_matches(
            "followup.*.plans.>",
            "followup.a.plans.plan_sent"
        ));
        assert!(!subject_matches("followup.*.plans.>", "followup.a.cases.x"));
        assert!(subject_matches("beacons.*", "beacons.a"));
        assert!(!subject_matches("beacons.*", "beacons.a.b"));
        assert!(!subject_matches("clinic.>", "clinic"));
        assert!(subject_matches(
            "clinic.*.patient.upserted",
            "clinic.a.patient.upserted"
        ));
    }
}
