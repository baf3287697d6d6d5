//! The channel adapters: SMS over a provider's HTTP API (Twilio's REST form, or a generic JSON API),
//! email over SMTP (lettre), and signed webhook calls. Each returns how the attempt went; none decides
//! what happens next (the worker does, by the retry schedule).
//!
//! Every HTTP request carries `Idempotency-Key` (Twilio also gets `I-Twilio-Idempotency-Token`): the same
//! value on every attempt of a message, so a provider that honours it turns the retry after a crash
//! between "accepted" and "recorded" into a no-op.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncTransport, Message};

use crate::config::SmsProvider;
use crate::domain::retry::{AttemptClass, classify_http, parse_retry_after};
use crate::domain::signing;
use crate::state::App;

/// One attempt to make.
#[derive(Clone, Debug)]
pub struct Job {
    pub tenant: String,
    pub message_id: uuid::Uuid,
    pub attempt: i32,
    /// Sent as `Idempotency-Key`: the same on every attempt of the message.
    pub idempotency: String,
    pub kind: JobKind,
}

#[derive(Clone, Debug)]
pub enum JobKind {
    Sms {
        to: String,
        body: String,
    },
    Email {
        to: String,
        from: String,
        subject: String,
        body: String,
        html: String,
        unsubscribe_url: Option<String>,
    },
    Webhook {
        url: String,
        secrets: Vec<String>,
        payload: Vec<u8>,
    },
}

/// How an attempt went.
#[derive(Clone, Debug)]
pub struct Sent {
    pub class: AttemptClass,
    pub status_code: i32,
    /// The provider's words (or the transport error). Never the message body.
    pub detail: String,
    pub provider: &'static str,
    pub provider_message_id: String,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
}

impl Sent {
    fn error(
        provider: &'static str,
        class: AttemptClass,
        detail: impl Into<String>,
        started: Instant,
    ) -> Self {
        Self {
            class,
            status_code: 0,
            detail: detail.into(),
            provider,
            provider_message_id: String::new(),
            retry_after: None,
            latency: started.elapsed(),
        }
    }
}

pub fn provider_name(app: &App, kind: &JobKind) -> &'static str {
    match kind {
        JobKind::Sms { .. } => match app.settings.sms.provider {
            SmsProvider::Twilio => "twilio",
            SmsProvider::GenericJson => "generic_json",
            SmsProvider::None => "none",
        },
        JobKind::Email { .. } => "smtp",
        JobKind::Webhook { .. } => "webhook",
    }
}

pub async fn send(app: &App, job: &Job) -> Sent {
    let started = Instant::now();
    let timeout = Duration::from_millis(app.settings.delivery.request_timeout_ms);
    let provider = provider_name(app, &job.kind);
    let attempt = async {
        match &job.kind {
            JobKind::Sms { to, body } => send_sms(app, job, to, body, started).await,
            JobKind::Email { .. } => send_email(app, job, started).await,
            JobKind::Webhook {
                url,
                secrets,
                payload,
            } => send_webhook(app, job, url, secrets, payload, started).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(sent) => sent,
        Err(_) => Sent::error(
            provider,
            AttemptClass::Unknown,
            format!("no answer within {timeout:?}"),
            started,
        ),
    }
}

async fn send_sms(app: &App, job: &Job, to: &str, body: &str, started: Instant) -> Sent {
    let sms = &app.settings.sms;
    let base = sms.base_url.trim_end_matches('/');
    let public = app.settings.public_base_url.trim_end_matches('/');
    let request = match sms.provider {
        SmsProvider::None => {
            return Sent::error(
                "none",
                AttemptClass::Permanent,
                "no SMS provider configured (sms.provider)",
                started,
            );
        }
        SmsProvider::Twilio => {
            let mut form = vec![("To", to.to_string()), ("Body", body.to_string())];
            if sms.from.starts_with("MG") {
                form.push(("MessagingServiceSid", sms.from.clone()));
            } else {
                form.push(("From", sms.from.clone()));
            }
            form.push((
                "StatusCallback",
                format!("{public}/sms/twilio/{}/status", job.tenant),
            ));
            let encoded = serde_urlencoded::to_string(&form).unwrap_or_default();
            let auth = STANDARD.encode(format!("{}:{}", sms.account_sid, sms.auth_token.expose()));
            http::Request::post(format!(
                "{base}/2010-04-01/Accounts/{}/Messages.json",
                sms.account_sid
            ))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::AUTHORIZATION, format!("Basic {auth}"))
            .header("Idempotency-Key", &job.idempotency)
            .header("I-Twilio-Idempotency-Token", &job.idempotency)
            .body(Full::new(Bytes::from(encoded)))
        }
        SmsProvider::GenericJson => {
            let payload = serde_json::json!({
                "to": to,
                "from": sms.from,
                "body": body,
                "reference": job.message_id.to_string(),
                "status_callback_url": format!("{public}/sms/generic/{}/status", job.tenant),
            });
            let mut builder = http::Request::post(format!("{base}/messages"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", &job.idempotency);
            if !sms.auth_token.is_empty() {
                builder = builder.header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", sms.auth_token.expose()),
                );
            }
            builder.body(Full::new(Bytes::from(payload.to_string())))
        }
    };
    let provider = provider_name(app, &job.kind);
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return Sent::error(
                provider,
                AttemptClass::Permanent,
                format!("cannot build the request: {e}"),
                started,
            );
        }
    };
    let (status, headers, body) = match exchange(app, request).await {
        Ok(answer) => answer,
        Err((class, e)) => return Sent::error(provider, class, e, started),
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let class = classify_http(status);
    let provider_message_id = json
        .get("sid")
        .or_else(|| json.get("id"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let detail = if class == AttemptClass::Accepted {
        format!("{status} accepted")
    } else {
        provider_reason(status, &json, &body)
    };
    Sent {
        class,
        status_code: i32::from(status),
        detail,
        provider,
        provider_message_id,
        retry_after: headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now())),
        latency: started.elapsed(),
    }
}

/// The provider's reason in its words: Twilio's "code message", a generic "error"/"message", or the
/// start of the body.
fn provider_reason(status: u16, json: &serde_json::Value, body: &[u8]) -> String {
    let code = json.get("code").map(|c| c.to_string());
    let message = json
        .get("message")
        .or_else(|| json.get("error"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    match (code, message) {
        (Some(code), Some(message)) => format!("{code} {message}"),
        (None, Some(message)) => message,
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            if text.trim().is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {}", text.trim())
            }
        }
    }
}

/// The answer, or why none came: `Retryable` when the connection never opened (nothing left), `Unknown`
/// when the request may have reached the provider.
async fn exchange(
    app: &App,
    request: http::Request<Full<Bytes>>,
) -> Result<(u16, http::HeaderMap, Bytes), (AttemptClass, String)> {
    let response = app.http.request(request).await.map_err(|e| {
        if e.is_connect() {
            (AttemptClass::Retryable, format!("connection failed: {e}"))
        } else {
            (AttemptClass::Unknown, format!("connection lost: {e}"))
        }
    })?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| (AttemptClass::Unknown, format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((status, headers, body))
}

async fn send_webhook(
    app: &App,
    job: &Job,
    url: &str,
    secrets: &[String],
    payload: &[u8],
    started: Instant,
) -> Sent {
    let id = format!("msg_{}", job.message_id.simple());
    let ts = Utc::now().timestamp();
    let keys: Vec<Vec<u8>> = secrets
        .iter()
        .filter_map(|s| signing::secret_key(s))
        .collect();
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            signing::signature_header(&keys, &id, ts, payload),
        )
        .header("Idempotency-Key", &job.idempotency)
        .body(Full::new(Bytes::copy_from_slice(payload)));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return Sent::error(
                "webhook",
                AttemptClass::Permanent,
                format!("cannot build the request: {e}"),
                started,
            );
        }
    };
    match exchange(app, request).await {
        Ok((status, headers, body)) => {
            let class = classify_http(status);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            Sent {
                class,
                status_code: i32::from(status),
                detail: if class == AttemptClass::Accepted {
                    format!("{status} accepted")
                } else {
                    provider_reason(status, &json, &body)
                },
                provider: "webhook",
                provider_message_id: id,
                retry_after: headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, Utc::now())),
                latency: started.elapsed(),
            }
        }
        Err((class, e)) => Sent::error("webhook", class, e, started),
    }
}

/// RFC 2369 `List-Unsubscribe`.
#[derive(Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_string()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// RFC 8058 `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
#[derive(Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".into())
    }
}

async fn send_email(app: &App, job: &Job, started: Instant) -> Sent {
    let JobKind::Email {
        to,
        from,
        subject,
        body,
        html,
        unsubscribe_url,
    } = &job.kind
    else {
        return Sent::error("smtp", AttemptClass::Permanent, "not an email", started);
    };
    let Some(transport) = &app.smtp else {
        return Sent::error(
            "smtp",
            AttemptClass::Permanent,
            "no SMTP server configured (smtp.url)",
            started,
        );
    };
    let from: Mailbox = match from.parse() {
        Ok(m) => m,
        Err(e) => {
            return Sent::error(
                "smtp",
                AttemptClass::Permanent,
                format!("the From address is invalid: {e}"),
                started,
            );
        }
    };
    let to: Mailbox = match to.parse() {
        Ok(m) => m,
        Err(_) => {
            return Sent::error(
                "smtp",
                AttemptClass::Permanent,
                "the recipient address is invalid",
                started,
            );
        }
    };
    // The same Message-ID on every attempt: receivers that see a retry after a lost reply can tell.
    let message_id = format!("<{}@followup>", job.message_id);
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(subject.clone())
        .message_id(Some(message_id.clone()));
    if let Some(url) = unsubscribe_url {
        builder = builder
            .header(ListUnsubscribe(format!("<{url}>")))
            .header(ListUnsubscribePost);
    }
    let email = if html.is_empty() {
        builder.body(body.clone())
    } else {
        builder.multipart(MultiPart::alternative_plain_html(
            body.clone(),
            html.clone(),
        ))
    };
    let email = match email {
        Ok(e) => e,
        Err(e) => {
            return Sent::error(
                "smtp",
                AttemptClass::Permanent,
                format!("cannot build the email: {e}"),
                started,
            );
        }
    };
    match transport.send(email).await {
        Ok(response) => Sent {
            class: AttemptClass::Accepted,
            status_code: i32::from(u16::from(response.code())),
            detail: response.message().collect::<Vec<_>>().join(" "),
            provider: "smtp",
            provider_message_id: message_id,
            retry_after: None,
            latency: started.elapsed(),
        },
        Err(e) => {
            let class = if e.is_permanent() {
                AttemptClass::Permanent
            } else if smtp_outcome_unknown(&e) {
                AttemptClass::Unknown
            } else {
                AttemptClass::Retryable
            };
            Sent {
                class,
                status_code: e.status().map_or(0, |c| i32::from(u16::from(c))),
                detail: e.to_string(),
                provider: "smtp",
                provider_message_id: String::new(),
                retry_after: None,
                latency: started.elapsed(),
            }
        }
    }
}

/// An SMTP error after which the email may have been accepted: no reply came (a timeout, or the
/// connection broke mid-dialogue). A 4xx reply, a connection refused, or a TLS or client error means it
/// was not.
fn smtp_outcome_unknown(e: &lettre::transport::smtp::Error) -> bool {
    if e.status().is_some() || e.is_client() || e.is_tls() {
        return false;
    }
    if e.is_timeout() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return !matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::NotFound
            );
        }
        source = err.source();
    }
    false
}
