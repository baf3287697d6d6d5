//! The notifications service, asked over gRPC while a person waits (a preview, the start of a
//! backtest): its delivery settings (quiet hours, the weekly cap) and its templates rendered. It owns
//! both, so the scheduler keeps no copy of either — a preview shows the text notifications would send.
//!
//! The call carries the caller's own bearer token (token relay): every service trusts the same staff
//! keys, notifications lets every role read settings and preview templates, and the scheduler holds no
//! credential of its own that could act for any clinic.

use std::collections::HashMap;
use std::time::Duration;

use chrono_tz::Tz;
use followup_proto::followup::common::v1::{Channel, RenderedMessage};
use followup_proto::followup::notifications::v1 as api;
use followup_proto::followup::notifications::v1::notifications_service_client::NotificationsServiceClient;
use tonic::transport::{Channel as Transport, Endpoint};

use crate::convert::duration_from;
use crate::domain::pacing::Pacing;
use followup_platform::pacing::{QuietHours, parse_hhmm};

/// A lazily connected client of the notifications service.
#[derive(Clone)]
pub struct Notifications {
    client: Option<NotificationsServiceClient<Transport>>,
    addr: String,
}

/// The clinic's pacing and zone as notifications holds them.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub pacing: Pacing,
    pub time_zone: Option<Tz>,
}

impl Notifications {
    /// `addr` like `http://127.0.0.1:50055`; empty = none configured (previews then say so).
    pub fn new(addr: &str, timeout: Duration) -> Self {
        let client = (!addr.is_empty())
            .then(|| Endpoint::from_shared(addr.to_string()).ok())
            .flatten()
            .map(|e| {
                NotificationsServiceClient::new(
                    e.timeout(timeout).connect_timeout(timeout).connect_lazy(),
                )
            });
        Self {
            client,
            addr: addr.to_string(),
        }
    }

    fn client(&self) -> Result<NotificationsServiceClient<Transport>, String> {
        self.client
            .clone()
            .ok_or_else(|| format!("no notifications address configured (`{}`)", self.addr))
    }

    fn request<T>(message: T, bearer: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = bearer.parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// The clinic's delivery settings.
    pub async fn delivery(&self, bearer: &str) -> Result<Delivery, String> {
        let settings = self
            .client()?
            .get_delivery_settings(Self::request(api::GetDeliverySettingsRequest {}, bearer))
            .await
            .map_err(|s| format!("notifications: {}", s.message()))?
            .into_inner()
            .settings
            .unwrap_or_default();
        let default = Pacing::default();
        let quiet = match (
            parse_hhmm(&settings.quiet_hours_start),
            parse_hhmm(&settings.quiet_hours_end),
        ) {
            (Some(start), Some(end)) => QuietHours { start, end },
            _ => default.quiet,
        };
        let limit = settings
            .cap_deferral_limit
            .as_ref()
            .and_then(|d| duration_from(d, "cap_deferral_limit").ok())
            .filter(|d| *d > chrono::Duration::zero())
            .unwrap_or(default.cap_deferral_limit);
        Ok(Delivery {
            pacing: Pacing {
                quiet,
                weekly_cap: u32::try_from(settings.weekly_cap).unwrap_or(0),
                cap_deferral_limit: limit,
            },
            time_zone: settings.time_zone.parse().ok(),
        })
    }

    /// Whether an address is configured (tests and single-service runs may have none).
    pub fn configured(&self) -> bool {
        self.client.is_some()
    }

    /// Whether the clinic has template `(key, channel)` in notifications (its own or a built-in; a
    /// disabled one exists: the clinic chose to silence it, and the timeline shows it suppressed).
    pub async fn template_exists(
        &self,
        bearer: &str,
        key: &str,
        channel: Channel,
    ) -> Result<bool, tonic::Status> {
        let mut client = self.client().map_err(tonic::Status::failed_precondition)?;
        let found = client
            .list_templates(Self::request(
                api::ListTemplatesRequest {
                    channel: channel as i32,
                    key: key.to_string(),
                    page_size: 1,
                    page_token: String::new(),
                },
                bearer,
            ))
            .await?
            .into_inner()
            .templates;
        Ok(found.iter().any(|t| t.key == key))
    }

    /// Renders the clinic's template `(key, channel)` for a patient (or with example values when the
    /// patient is not known to notifications), with the variables a live request would carry.
    pub async fn render(
        &self,
        bearer: &str,
        key: &str,
        channel: Channel,
        patient_id: &str,
        variables: &HashMap<String, String>,
    ) -> Result<(RenderedMessage, Vec<String>), String> {
        let mut client = self.client()?;
        let found = client
            .list_templates(Self::request(
                api::ListTemplatesRequest {
                    channel: channel as i32,
                    key: key.to_string(),
                    page_size: 1,
                    page_token: String::new(),
                },
                bearer,
            ))
            .await
            .map_err(|s| format!("notifications: {}", s.message()))?
            .into_inner()
            .templates
            .into_iter()
            .next()
            .ok_or_else(|| {
                format!(
                    "template `{key}` for {} does not exist in notifications: the message would be suppressed (TEMPLATE_UNAVAILABLE)",
                    channel.as_str_name().trim_start_matches("CHANNEL_")
                )
            })?;
        let mut warnings = Vec::new();
        if !found.enabled {
            warnings.push(format!(
                "template `{key}` is disabled: the message would be suppressed (TEMPLATE_UNAVAILABLE)"
            ));
        }
        self.preview(&mut client, bearer, found, patient_id, variables, warnings)
            .await
    }

    /// Renders a task's title and description as notifications renders a TASK template.
    pub async fn render_task(
        &self,
        bearer: &str,
        title: &str,
        description: &str,
        variables: &HashMap<String, String>,
    ) -> Result<(RenderedMessage, Vec<String>), String> {
        let mut client = self.client()?;
        let template = api::Template {
            key: "task_preview".into(),
            channel: Channel::Task as i32,
            subject: title.to_string(),
            body: if description.is_empty() {
                title.to_string()
            } else {
                description.to_string()
            },
            enabled: true,
            ..Default::default()
        };
        self.preview(&mut client, bearer, template, "", variables, Vec::new())
            .await
    }

    async fn preview(
        &self,
        client: &mut NotificationsServiceClient<Transport>,
        bearer: &str,
        template: api::Template,
        patient_id: &str,
        variables: &HashMap<String, String>,
        mut warnings: Vec<String>,
    ) -> Result<(RenderedMessage, Vec<String>), String> {
        use api::preview_template_request::{Recipient, TemplateSource};
        let ask = |recipient: Option<Recipient>| api::PreviewTemplateRequest {
            template_source: Some(TemplateSource::Template(template.clone())),
            recipient,
            variables: variables.clone(),
        };
        let recipient = (!patient_id.is_empty()).then(|| Recipient::PatientId(patient_id.into()));
        let answer = match client
            .preview_template(Self::request(ask(recipient.clone()), bearer))
            .await
        {
            Err(status) if status.code() == tonic::Code::NotFound && recipient.is_some() => {
                warnings.push(format!(
                    "patient `{patient_id}` is not a contact of notifications yet: rendered with example values (the message would wait for the contact, then be suppressed UNKNOWN_RECIPIENT)"
                ));
                client
                    .preview_template(Self::request(ask(None), bearer))
                    .await
            }
            other => other,
        }
        .map_err(|s| format!("notifications: {}", s.message()))?
        .into_inner();
        warnings.extend(answer.warnings);
        Ok((answer.message.unwrap_or_default(), warnings))
    }
}
