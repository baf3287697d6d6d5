//! What the notifications tests share: the service started on port 0 against a private NATS and a fresh
//! database, a scripted SMS provider / webhook receiver (a real local HTTP server), and the capture's
//! SMTP sink.
#![allow(dead_code)] // each test binary module uses a different part of it

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use chrono::{Timelike, Utc};
use followup_notifications::capture::Capture;
use followup_notifications::config::{
    DeliveryConfig, Settings, SmsProvider, SmsSettings, SmtpSettings, WebhookSettings,
};
use followup_notifications::{INFO, Service};
use followup_platform::auth::Role;
use followup_platform::config::Secret;
use followup_platform::event::{new_event_id, now_timestamp};
use followup_platform::service::Running;
use followup_platform::testkit::{TestEnv, authed};
use followup_proto::followup::common::v1::Channel;
use followup_proto::followup::events::v1::{
    NotificationRequested, PatientUpserted, Recipient, recipient,
};
use followup_proto::followup::notifications::v1::notifications_service_client::NotificationsServiceClient;
use tokio::net::TcpListener;
use tonic::transport::Channel as GrpcChannel;

pub const TENANT: &str = "clinic-a";

/// One request a provider received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

/// Status, body and extra headers of one scripted answer.
type Scripted = (u16, String, Vec<(String, String)>);

#[derive(Clone, Default)]
struct SinkState {
    received: Arc<Mutex<Vec<Received>>>,
    /// Answers to give, in order; when empty, 201 {"id": "sm-<n>"}.
    script: Arc<Mutex<VecDeque<Scripted>>>,
    /// Hold every request this long before answering (a slow provider).
    delay: Arc<Mutex<Duration>>,
    /// Hold only requests whose body names this text (a recipient) this long.
    slow: Arc<Mutex<Option<(String, Duration)>>>,
}

/// A real local HTTP server standing in for the SMS provider and webhook receivers.
pub struct Sink {
    pub addr: SocketAddr,
    state: SinkState,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self._task.abort();
    }
}

async fn sink_handler(
    State(state): State<SinkState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let n = {
        let mut received = state.received.lock().expect("sink lock");
        received.push(Received {
            path: uri.path().to_string(),
            headers,
            body: body.to_vec(),
        });
        received.len()
    };
    let mut delay = *state.delay.lock().expect("sink lock");
    if let Some((needle, slow)) = state.slow.lock().expect("sink lock").clone()
        && String::from_utf8_lossy(&body).contains(&needle)
    {
        delay = slow;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let next = state.script.lock().expect("sink lock").pop_front();
    let (status, body, extra) = next.unwrap_or((201, format!("{{\"id\":\"sm-{n}\"}}"), vec![]));
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
    for (k, v) in extra {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_str(&v),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

impl Sink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().expect("sink addr");
        let state = SinkState::default();
        let router = Router::new()
            .fallback(sink_handler)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            state,
            _task: task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn script(&self, status: u16, body: &str, headers: &[(&str, &str)]) {
        self.state.script.lock().expect("sink lock").push_back((
            status,
            body.to_string(),
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("sink lock") = delay;
    }

    /// Holds the requests whose body contains `needle` for `delay`, answering the others at once.
    pub fn set_slow(&self, needle: &str, delay: Duration) {
        *self.state.slow.lock().expect("sink lock") = Some((needle.to_string(), delay));
    }

    pub fn clear_slow(&self) {
        *self.state.slow.lock().expect("sink lock") = None;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("sink lock").clone()
    }
}

pub fn settings(sms: &Sink, capture: &Capture) -> Settings {
    let defaults = Settings::default();
    Settings {
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        public_base_url: "http://127.0.0.1:1".into(),
        unsubscribe_signing_key: Secret::new("test-unsubscribe-key-0123456789abcdef"),
        sms: SmsSettings {
            provider: SmsProvider::GenericJson,
            base_url: sms.url(),
            from: "+15125550100".into(),
            callback_secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ..defaults.sms.clone()
        },
        smtp: SmtpSettings {
            url: Secret::new(format!("smtp://{}", capture.smtp_addr)),
            from: "Clinic <care@clinic.example>".into(),
            ..defaults.smtp.clone()
        },
        webhooks: WebhookSettings { allow_http: true },
        delivery: DeliveryConfig {
            retry_schedule_ms: vec![0, 100, 100, 100],
            poll_interval_ms: 100,
            request_timeout_ms: 5000,
            unknown_recipient_grace_secs: 10,
            ..defaults.delivery.clone()
        },
        ..defaults
    }
}

pub struct Harness {
    pub env: TestEnv,
    pub sms: Sink,
    pub capture: Capture,
    pub running: Running,
    pub pool: sqlx::PgPool,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Settings)) -> Self {
        let env = TestEnv::start().await;
        let sms = Sink::start().await;
        let capture = Capture::start(
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
        .expect("capture starts");
        let mut own = settings(&sms, &capture);
        tune(&mut own);
        let config = env.config(&INFO, own);
        let running = Service::build(config).await.expect("service starts");
        let pool = env.db.pool().await;
        Self {
            env,
            sms,
            capture,
            running,
            pool,
        }
    }

    pub async fn client(&self) -> NotificationsServiceClient<GrpcChannel> {
        let channel = GrpcChannel::from_shared(format!("http://{}", self.running.grpc_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connects");
        NotificationsServiceClient::new(channel)
    }

    pub fn token(&self, role: Role) -> String {
        self.env.auth.token(TENANT, role)
    }

    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        authed(message, &self.token(Role::Owner))
    }

    pub fn http_url(&self) -> String {
        format!(
            "http://{}",
            self.running.http_addr("http").expect("http server")
        )
    }

    pub async fn patient(&self, patient_id: &str, phone: &str, email: &str, zone: &str) {
        self.env
            .publish(
                &format!("clinic.{TENANT}.patient.upserted"),
                &PatientUpserted {
                    event_id: new_event_id().to_string(),
                    tenant_id: TENANT.into(),
                    occurred_at: Some(now_timestamp()),
                    patient_id: patient_id.into(),
                    given_name: "Maria".into(),
                    family_name: "Quintanilla".into(),
                    phone_e164: phone.into(),
                    email: email.into(),
                    time_zone: zone.into(),
                    ..Default::default()
                },
            )
            .await;
        let pool = self.pool.clone();
        let id = patient_id.to_string();
        eventually("the contact is stored", || {
            let pool = pool.clone();
            let id = id.clone();
            async move {
                sqlx::query_scalar::<sqlx::Postgres, i64>(
                    "SELECT count(*) FROM contacts WHERE tenant_id = $1 AND patient_id = $2",
                )
                .bind(TENANT)
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()
                .filter(|n| *n == 1)
            }
        })
        .await;
    }

    pub async fn request(&self, r: NotificationRequested) {
        self.env
            .publish(
                &format!("followup.{TENANT}.scheduler.notification_requested"),
                &r,
            )
            .await;
    }

    /// Waits until the message of `key` reaches one of `statuses`; returns the row's status.
    pub async fn status_of(&self, key: &str, statuses: &[&str]) -> MessageState {
        let pool = self.pool.clone();
        let wanted: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
        let key = key.to_string();
        eventually(&format!("message {key} reaches {wanted:?}"), || {
            let pool = pool.clone();
            let key = key.clone();
            let wanted = wanted.clone();
            async move {
                let row = sqlx::query_as::<sqlx::Postgres, MessageState>(
                    "SELECT id, status, suppression_reason, deferral_reason, due_at, failure_reason, attempt_count, rendered_body
                     FROM messages WHERE tenant_id = $1 AND idempotency_key = $2",
                )
                .bind(TENANT)
                .bind(key)
                .fetch_optional(&pool)
                .await
                .ok()??;
                wanted.contains(&row.status).then_some(row)
            }
        })
        .await
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageState {
    pub id: uuid::Uuid,
    pub status: String,
    pub suppression_reason: i32,
    pub deferral_reason: i32,
    pub due_at: Option<chrono::DateTime<Utc>>,
    pub failure_reason: String,
    pub attempt_count: i32,
    pub rendered_body: String,
}

/// Polls `check` until it yields, or fails after 20 s (never a fixed sleep).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fixed-offset zone where it is now about noon (so quiet hours never get in a test's way).
pub fn daytime_zone() -> String {
    offset_zone(12)
}

/// A fixed-offset zone where it is now night (23:00 or 02:00 local).
pub fn night_zone() -> String {
    let h = Utc::now().hour() as i32;
    if h >= 9 {
        offset_zone(23)
    } else {
        offset_zone(2)
    }
}

fn offset_zone(local_hour: i32) -> String {
    let h = Utc::now().hour() as i32;
    let x = local_hour - h;
    // Etc/GMT-X is UTC+X (POSIX sign).
    if x >= 0 {
        format!("Etc/GMT-{x}")
    } else {
        format!("Etc/GMT+{}", -x)
    }
}

pub fn sms_request(key: &str, patient_id: &str) -> NotificationRequested {
    NotificationRequested {
        event_id: new_event_id().to_string(),
        tenant_id: TENANT.into(),
        occurred_at: Some(now_timestamp()),
        idempotency_key: key.into(),
        channel: Channel::Sms as i32,
        template_key: "plan_follow_up_1".into(),
        variables: [(
            "portal_url".to_string(),
            "https://portal.example/p/abc".to_string(),
        )]
        .into(),
        category: "treatment_follow_up".into(),
        recipient: Some(Recipient {
            target: Some(recipient::Target::PatientId(patient_id.into())),
        }),
        owner_staff_id: "staff-owner".into(),
        ..Default::default()
    }
}

/// A minimal SMTP server (a real TCP listener speaking enough SMTP for lettre) that takes the first
/// `hang` messages' DATA and then never answers, as a server or network that lost the reply would; later
/// messages get `250`. Counts every message whose DATA it received.
pub struct SmtpStub {
    pub addr: SocketAddr,
    pub data: Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpStub {
    fn drop(&mut self) {
        self._task.abort();
    }
}

impl SmtpStub {
    pub async fn start(hang: usize) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let addr = listener.local_addr().expect("smtp addr");
        let data = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = data.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 stub ESMTP\r\n").await;
                    let mut in_data = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if in_data {
                            if line == "." {
                                in_data = false;
                                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                                if n <= hang {
                                    // Took the message, never says so.
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    return;
                                }
                                let _ = write.write_all(b"250 2.0.0 queued\r\n").await;
                            }
                            continue;
                        }
                        let verb = line
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250 stub\r\n",
                            "DATA" => {
                                in_data = true;
                                b"354 go ahead\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        };
                        let _ = write.write_all(reply).await;
                    }
                });
            }
        });
        Self {
            addr,
            data,
            _task: task,
        }
    }

    pub fn received(&self) -> usize {
        self.data.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The service's Prometheus text, from its admin server.
pub async fn metrics_text(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin connects");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

/// The dead-lettered messages so far: (original subject, reason).
pub async fn dead_letters(env: &TestEnv) -> Vec<(String, String)> {
    let js = env.nats.jetstream().await;
    let Ok(mut stream) = js.get_stream("DEADLETTER").await else {
        return Vec::new();
    };
    let count = stream
        .info()
        .await
        .map(|i| i.state.last_sequence)
        .unwrap_or(0);
    let mut out = Vec::new();
    for sequence in 1..=count {
        if let Ok(m) = stream.get_raw_message(sequence).await {
            let header = |name: &str| {
                m.headers
                    .get(name)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            out.push((
                header(followup_platform::consumer::DEADLETTER_SUBJECT),
                header(followup_platform::consumer::DEADLETTER_REASON),
            ));
        }
    }
    out
}
