//! `followup notifications …`: contacts, requests, replies and what a patient would have received.
//!
//! Talks gRPC to `--addr` (default the dev stack's notifications service) with `--token` (default: an
//! owner token for the dev clinic signed with the dev stack's key, as `followup token` prints).
//! `request` and `reply` publish the events a scheduler or a patient's phone would, on the dev stack's
//! NATS (`--nats-url`, else `NATS_URL`, else the port the dev stack's private nats-server wrote under
//! `<dir>/nats/ports/`). `captured` reads the dev stack's local capture (SMS, email and webhook calls as
//! they arrived) and can check a webhook's signature the Standard Webhooks way.

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use followup_platform::event::{new_event_id, now_timestamp, timestamp};
use followup_proto::followup::common::v1::Channel;
use followup_proto::followup::events::v1::{
    MessageReceived, NotificationRequested, Recipient, TaskSpec, recipient,
};
use followup_proto::followup::notifications::v1 as pb;
use followup_proto::followup::notifications::v1::notifications_service_client::NotificationsServiceClient;

use crate::client::{Access, authed, status_error};

#[derive(Args)]
pub struct NotificationsArgs {
    /// The notifications service's gRPC address.
    #[arg(
        long,
        global = true,
        env = "FOLLOWUP_NOTIFICATIONS_ADDR",
        default_value = "http://localhost:50055"
    )]
    addr: String,
    #[command(flatten)]
    access: Access,
    #[command(subcommand)]
    command: NotificationsCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum ChannelArg {
    Sms,
    Email,
    Chat,
    Task,
    Webhook,
}

impl ChannelArg {
    fn proto(self) -> Channel {
        match self {
            ChannelArg::Sms => Channel::Sms,
            ChannelArg::Email => Channel::Email,
            ChannelArg::Chat => Channel::Chat,
            ChannelArg::Task => Channel::Task,
            ChannelArg::Webhook => Channel::Webhook,
        }
    }
}

#[derive(Subcommand)]
enum NotificationsCommand {
    /// Create or update a patient's contact.
    Contact {
        patient_id: String,
        #[arg(long, default_value = "")]
        given_name: String,
        #[arg(long, default_value = "")]
        family_name: String,
        /// E.164, e.g. +447700900123.
        #[arg(long, default_value = "")]
        phone: String,
        #[arg(long, default_value = "")]
        email: String,
        /// IANA zone, e.g. America/Chicago; empty = the clinic's.
        #[arg(long, default_value = "")]
        zone: String,
    },
    /// Publish a notification request, as the scheduler would.
    Request {
        /// The patient it is for.
        patient_id: String,
        /// The idempotency key (one message per key); default: a fresh one.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, value_enum, default_value = "sms")]
        channel: ChannelArg,
        #[arg(long, default_value = "plan_follow_up_1")]
        template: String,
        #[arg(long, default_value = "treatment_follow_up")]
        category: String,
        /// Template variables, `name=value` (e.g. portal_url=https://…).
        #[arg(long = "var")]
        vars: Vec<String>,
        /// The accountable owner (staff id): a task's assignee.
        #[arg(long, default_value = "dev-owner")]
        owner: String,
        /// For --channel task: the task's title.
        #[arg(long)]
        title: Option<String>,
        /// Ask for the next "HH:MM" in the patient's zone (e.g. 23:00) instead of now.
        #[arg(long)]
        at_local: Option<String>,
    },
    /// Publish an inbound message from the patient (e.g. STOP, or a question), as the SMS bridge would.
    Reply {
        patient_id: String,
        text: String,
        #[arg(long, value_enum, default_value = "sms")]
        channel: ChannelArg,
    },
    /// What patients received (sent and delivered messages), newest first.
    Sent {
        #[arg(long)]
        patient: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Every message with its status: deferred until when and why, suppressed and why, failed and why.
    Messages {
        #[arg(long)]
        patient: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// One message with every delivery attempt.
    Message { message_id: String },
    /// Open tasks (all owners, or one).
    Tasks {
        #[arg(long)]
        owner: Option<String>,
    },
    /// A patient's consent per channel and category, and its evidence log.
    Consent { patient_id: String },
    /// Register a webhook endpoint; prints its signing secret (shown once).
    WebhookCreate {
        url: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// What the dev stack's local capture received (SMS, email, webhook calls); with --secret, checks
    /// each webhook call's signature.
    Captured {
        /// The capture's HTTP address, as `followup dev` printed it.
        #[arg(long, default_value = "http://127.0.0.1:8025")]
        capture_url: String,
        /// A webhook endpoint's "whsec_…" secret to verify the captured calls with.
        #[arg(long)]
        secret: Option<String>,
    },
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn channel_name(n: i32) -> &'static str {
    match Channel::try_from(n) {
        Ok(Channel::Sms) => "sms",
        Ok(Channel::Email) => "email",
        Ok(Channel::Chat) => "chat",
        Ok(Channel::Task) => "task",
        Ok(Channel::Webhook) => "webhook",
        _ => "-",
    }
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase()
}

/// The next local `hh:mm` in `zone` from now, as an instant.
fn next_local(hhmm: &str, zone: &str) -> anyhow::Result<prost_types::Timestamp> {
    use chrono::TimeZone as _;
    let tz: chrono_tz::Tz = if zone.is_empty() {
        chrono_tz::UTC
    } else {
        zone.parse()
            .map_err(|_| anyhow::anyhow!("unknown zone {zone}"))?
    };
    let time = chrono::NaiveTime::parse_from_str(hhmm, "%H:%M")
        .with_context(|| format!("--at-local {hhmm}: expected HH:MM"))?;
    let now = chrono::Utc::now().with_timezone(&tz);
    let mut date = now.date_naive();
    loop {
        if let Some(at) = tz.from_local_datetime(&date.and_time(time)).earliest()
            && at > now
        {
            return Ok(timestamp(at.with_timezone(&chrono::Utc)));
        }
        date = date.succ_opt().context("date overflow")?;
    }
}

pub async fn run(args: NotificationsArgs) -> anyhow::Result<()> {
    if let NotificationsCommand::Captured {
        capture_url,
        secret,
    } = &args.command
    {
        return captured(capture_url, secret.as_deref()).await;
    }
    let token = args.access.token()?;
    let mut client = NotificationsServiceClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to the notifications service at {}", args.addr))?;
    match &args.command {
        NotificationsCommand::Contact {
            patient_id,
            given_name,
            family_name,
            phone,
            email,
            zone,
        } => {
            let saved = client
                .upsert_contact(authed(
                    pb::UpsertContactRequest {
                        contact: Some(pb::Contact {
                            patient_id: patient_id.clone(),
                            given_name: given_name.clone(),
                            family_name: family_name.clone(),
                            phone_e164: phone.clone(),
                            email: email.clone(),
                            time_zone: zone.clone(),
                            ..Default::default()
                        }),
                        update_mask: None,
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            let c = saved.contact.unwrap_or_default();
            println!(
                "contact {} phone {} email {} zone {}",
                c.patient_id,
                or_dash(&c.phone_e164),
                or_dash(&c.email),
                or_dash(&c.time_zone)
            );
        }
        NotificationsCommand::Request {
            patient_id,
            key,
            channel,
            template,
            category,
            vars,
            owner,
            title,
            at_local,
        } => {
            let mut variables = HashMap::new();
            for v in vars {
                let (k, val) = v
                    .split_once('=')
                    .with_context(|| format!("--var {v}: expected name=value"))?;
                variables.insert(k.to_string(), val.to_string());
            }
            let not_before_time = match at_local {
                Some(hhmm) => {
                    let contact = client
                        .get_contact(authed(
                            pb::GetContactRequest {
                                patient_id: patient_id.clone(),
                            },
                            &token,
                        )?)
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .contact
                        .unwrap_or_default();
                    Some(next_local(hhmm, &contact.time_zone)?)
                }
                None => None,
            };
            let key = key
                .clone()
                .unwrap_or_else(|| format!("cli:{}", new_event_id()));
            let event = NotificationRequested {
                event_id: new_event_id().to_string(),
                tenant_id: args.access.tenant.clone(),
                occurred_at: Some(now_timestamp()),
                idempotency_key: key.clone(),
                channel: channel.proto() as i32,
                template_key: if matches!(channel, ChannelArg::Task | ChannelArg::Webhook) {
                    String::new()
                } else {
                    template.clone()
                },
                variables,
                category: category.clone(),
                recipient: Some(Recipient {
                    target: Some(recipient::Target::PatientId(patient_id.clone())),
                }),
                owner_staff_id: owner.clone(),
                task: title.as_ref().map(|t| TaskSpec {
                    title: t.clone(),
                    ..Default::default()
                }),
                not_before_time,
                ..Default::default()
            };
            args.access.publish(&event).await?;
            println!(
                "requested {key} ({} to {patient_id})",
                channel_name(event.channel)
            );
        }
        NotificationsCommand::Reply {
            patient_id,
            text,
            channel,
        } => {
            let event_id = new_event_id().to_string();
            let event = MessageReceived {
                event_id: event_id.clone(),
                tenant_id: args.access.tenant.clone(),
                occurred_at: Some(now_timestamp()),
                patient_id: patient_id.clone(),
                channel: channel.proto() as i32,
                text: text.clone(),
                provider_message_id: format!("cli-{event_id}"),
                ..Default::default()
            };
            args.access.publish(&event).await?;
            println!("{patient_id} wrote on {}", channel_name(event.channel));
        }
        NotificationsCommand::Sent { patient, limit }
        | NotificationsCommand::Messages { patient, limit } => {
            let only_sent = matches!(args.command, NotificationsCommand::Sent { .. });
            let statuses = if only_sent {
                vec![
                    pb::MessageStatus::Sent as i32,
                    pb::MessageStatus::Delivered as i32,
                ]
            } else {
                vec![]
            };
            let messages = client
                .list_messages(authed(
                    pb::ListMessagesRequest {
                        patient_id: patient.clone().unwrap_or_default(),
                        statuses,
                        page_size: *limit,
                        ..Default::default()
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .messages;
            if messages.is_empty() {
                println!("(none)");
            }
            for m in messages {
                let status = pb::MessageStatus::try_from(m.status)
                    .map(|s| enum_name(s.as_str_name(), "MESSAGE_STATUS_"))
                    .unwrap_or_default();
                let why = match pb::MessageStatus::try_from(m.status) {
                    Ok(pb::MessageStatus::Deferred) => format!(
                        " until {} ({})",
                        time(&m.deferred_until),
                        pb::DeferralReason::try_from(m.deferral_reason)
                            .map(|r| enum_name(r.as_str_name(), "DEFERRAL_REASON_"))
                            .unwrap_or_default()
                    ),
                    Ok(pb::MessageStatus::Suppressed) => format!(
                        " ({})",
                        followup_proto::followup::common::v1::SuppressionReason::try_from(
                            m.suppression_reason
                        )
                        .map(|r| enum_name(r.as_str_name(), "SUPPRESSION_REASON_"))
                        .unwrap_or_default()
                    ),
                    Ok(pb::MessageStatus::Failed | pb::MessageStatus::PossiblySent) => {
                        format!(" ({})", m.failure_reason)
                    }
                    Ok(pb::MessageStatus::Retrying) => {
                        format!(" next {}", time(&m.next_attempt_time))
                    }
                    _ => String::new(),
                };
                println!(
                    "{}  {:<7} {:<10}{}  key {}  to {}  [{}]",
                    time(&m.create_time),
                    channel_name(m.channel),
                    status,
                    why,
                    or_dash(&m.idempotency_key),
                    or_dash(if m.patient_id.is_empty() {
                        &m.staff_id
                    } else {
                        &m.patient_id
                    }),
                    m.message_id
                );
                if let Some(r) = m.rendered.filter(|r| !r.body.is_empty()) {
                    if !r.subject.is_empty() {
                        println!("    subject: {}", r.subject);
                    }
                    for line in r.body.lines().take(if only_sent { 20 } else { 2 }) {
                        println!("    {line}");
                    }
                }
            }
        }
        NotificationsCommand::Message { message_id } => {
            let got = client
                .get_message(authed(
                    pb::GetMessageRequest {
                        message_id: message_id.clone(),
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            let m = got.message.unwrap_or_default();
            println!(
                "{} {} status {} attempts {}",
                m.message_id,
                channel_name(m.channel),
                m.status,
                m.attempt_count
            );
            for a in got.attempts {
                let outcome = pb::AttemptOutcome::try_from(a.outcome)
                    .map(|o| enum_name(o.as_str_name(), "ATTEMPT_OUTCOME_"))
                    .unwrap_or_default();
                println!(
                    "  attempt {} at {}: {} {} {}",
                    a.attempt,
                    time(&a.start_time),
                    outcome,
                    a.status_code,
                    a.detail
                );
            }
        }
        NotificationsCommand::Tasks { owner } => {
            let tasks = client
                .list_tasks(authed(
                    pb::ListTasksRequest {
                        owner_staff_id: owner.clone().unwrap_or_default(),
                        ..Default::default()
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .tasks;
            if tasks.is_empty() {
                println!("(no open tasks)");
            }
            for t in tasks {
                println!(
                    "{}  owner {}  patient {}  {}  [{}]",
                    time(&t.create_time),
                    or_dash(&t.owner_staff_id),
                    or_dash(&t.patient_id),
                    t.title,
                    t.task_id
                );
            }
        }
        NotificationsCommand::Consent { patient_id } => {
            let states = client
                .get_consent(authed(
                    pb::GetConsentRequest {
                        patient_id: patient_id.clone(),
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .states;
            for s in states.iter().filter(|s| !s.allowed) {
                println!("opted out: {} / {}", channel_name(s.channel), s.category);
            }
            if states.iter().all(|s| s.allowed) {
                println!("allowed on every channel and category");
            }
            let history = client
                .list_consent_history(authed(
                    pb::ListConsentHistoryRequest {
                        patient_id: patient_id.clone(),
                        ..Default::default()
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .events;
            for e in history {
                println!(
                    "  {} {} {} / {} ({}) {}",
                    time(&e.time),
                    if e.granted { "granted" } else { "withdrawn" },
                    if e.channel == 0 {
                        "all channels"
                    } else {
                        channel_name(e.channel)
                    },
                    if e.category.is_empty() {
                        "all categories"
                    } else {
                        &e.category
                    },
                    followup_proto::followup::common::v1::ConsentSource::try_from(e.source)
                        .map(|s| enum_name(s.as_str_name(), "CONSENT_SOURCE_"))
                        .unwrap_or_default(),
                    e.text
                );
            }
        }
        NotificationsCommand::WebhookCreate { url, description } => {
            let created = client
                .create_webhook_endpoint(authed(
                    pb::CreateWebhookEndpointRequest {
                        endpoint: Some(pb::WebhookEndpoint {
                            url: url.clone(),
                            description: description.clone(),
                            ..Default::default()
                        }),
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "endpoint {}",
                created.endpoint.unwrap_or_default().webhook_endpoint_id
            );
            println!(
                "secret   {}   (shown once: verify calls with it)",
                created.secret
            );
        }
        NotificationsCommand::Captured { .. } => {}
    }
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Lists the capture; with a secret, checks each webhook call by the Standard Webhooks algorithm.
async fn captured(capture_url: &str, secret: Option<&str>) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let uri: http::Uri = format!("{}/captured", capture_url.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("--capture-url {capture_url}: expected http://host:port"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(uri).await.with_context(|| {
        format!("reaching the capture at {capture_url} (is `followup dev` running?)")
    })?;
    if !response.status().is_success() {
        bail!("the capture answered {}", response.status());
    }
    let body = response.into_body().collect().await?.to_bytes();
    let items: Vec<followup_notifications::capture::Captured> = serde_json::from_slice(&body)
        .with_context(|| format!("{capture_url}/captured did not answer a capture list"))?;
    if items.is_empty() {
        println!("(nothing captured yet)");
    }
    let key = match secret {
        Some(s) => Some(
            followup_notifications::domain::signing::secret_key(s)
                .context("--secret is not a whsec_… secret")?,
        ),
        None => None,
    };
    for item in items {
        let summary = match item.kind.as_str() {
            "email" => item
                .content
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_string(),
            _ => item.content.chars().take(160).collect(),
        };
        println!(
            "{}  {:<7} to {}  {}",
            item.at.format("%Y-%m-%d %H:%M:%SZ"),
            item.kind,
            item.to,
            summary
        );
        if let (Some(key), "webhook") = (&key, item.kind.as_str()) {
            let h = |n: &str| item.headers.get(n).cloned().unwrap_or_default();
            let ts: i64 = h("webhook-timestamp").parse().unwrap_or(0);
            let expected = followup_notifications::domain::signing::standard_signature(
                key,
                &h("webhook-id"),
                ts,
                item.content.as_bytes(),
            );
            let ok = h("webhook-signature").split(' ').any(|s| s == expected);
            println!(
                "    webhook-id {}  signature {}",
                h("webhook-id"),
                if ok {
                    "verified (HMAC-SHA256 of id.timestamp.body)"
                } else {
                    "DOES NOT VERIFY"
                }
            );
        }
    }
    Ok(())
}
