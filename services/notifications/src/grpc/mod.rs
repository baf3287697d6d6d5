//! The gRPC edge of the notifications service: `followup.notifications.v1.NotificationsService`.
//! Every call is scoped to the caller's clinic; another clinic's resources are NOT_FOUND.

mod convert;

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use followup_platform::auth::{Authenticator, Caller, Role, caller};
use followup_platform::event::{from_timestamp, new_event_id, timestamp};
use followup_platform::grpc::GrpcServices;
use followup_platform::outbox::enqueue_event;
use followup_proto::followup::common::v1::{CaseRef, ConsentSource, case_ref::Target};
use followup_proto::followup::events::v1::TaskCompleted;
use followup_proto::followup::notifications::v1 as api;
use followup_proto::followup::notifications::v1::notifications_service_server::{
    NotificationsService, NotificationsServiceServer,
};
use minijinja::Value;
use prost_types::FieldMask;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::INFO;
use crate::domain::{Channel, address, consent, templates as t};
use crate::error::{Error, Result};
use crate::inbound;
use crate::state::App;
use crate::storage::{self, contacts, messages, settings, templates, webhooks};

pub use convert::status_number;

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator, app: App) -> GrpcServices {
    GrpcServices::new().with(NotificationsServiceServer::with_interceptor(
        NotificationsServiceApi { app },
        auth.clone(),
    ))
}

/// Money for people, without a locale: "1250.00 USD".
pub fn money_text(amount_minor: i64, currency: &str) -> String {
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", abs / 100, abs % 100)
}

/// `followup.notifications.v1.NotificationsService`.
#[derive(Clone)]
pub struct NotificationsServiceApi {
    pub app: App,
}

const MANAGERS: [Role; 2] = [Role::Owner, Role::Admin];

fn who<T>(request: &Request<T>, allowed: &[Role]) -> Result<Caller, Status> {
    let caller = caller(request)?;
    caller.require(allowed)?;
    Ok(caller)
}

fn parse_id(field: &str, id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| Error::invalid(field, format!("`{id}` is not a UUID")))
}

fn required(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(Error::invalid(field, "is required"))
    } else {
        Ok(())
    }
}

fn mask_has(mask: &Option<FieldMask>, path: &str) -> bool {
    mask.as_ref()
        .is_none_or(|m| m.paths.is_empty() || m.paths.iter().any(|p| p == path))
}

fn check_mask(mask: &Option<FieldMask>, allowed: &[&str]) -> Result<()> {
    if let Some(m) = mask {
        for p in &m.paths {
            if !allowed.contains(&p.as_str()) {
                return Err(Error::invalid(
                    "update_mask",
                    format!("unknown path `{p}`; one of: {}", allowed.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

fn channel_of(field: &str, value: i32, allowed: &[Channel]) -> Result<Channel> {
    Channel::from_i32(value)
        .filter(|c| allowed.contains(c))
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "must be one of {}",
                    allowed
                        .iter()
                        .map(|c| c.name().to_uppercase())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

fn is_key(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn case_filter(c: &Option<CaseRef>) -> (String, String) {
    match c.as_ref().and_then(|c| c.target.as_ref()) {
        Some(Target::PlanId(p)) => (p.clone(), String::new()),
        Some(Target::CareCaseId(c)) => (String::new(), c.clone()),
        None => (String::new(), String::new()),
    }
}

impl NotificationsServiceApi {
    async fn known_category(&self, tenant: &str, key: &str) -> Result<()> {
        let mut conn = self.app.pool.acquire().await?;
        let categories = settings::list_categories(&mut conn, tenant).await?;
        if categories.iter().any(|(c, _)| c.key == key) {
            Ok(())
        } else {
            Err(Error::invalid(
                "category",
                format!(
                    "`{key}` is not a category of the clinic; one of: {}",
                    categories
                        .iter()
                        .map(|(c, _)| c.key.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }

    async fn consent_states(
        &self,
        tenant: &str,
        patient_id: &str,
    ) -> Result<Vec<api::ConsentState>> {
        let mut conn = self.app.pool.acquire().await?;
        let log = contacts::consent_log(&mut conn, tenant, patient_id).await?;
        let records: Vec<_> = log.iter().map(|r| r.record()).collect();
        let categories = settings::list_categories(&mut conn, tenant).await?;
        let mut states = Vec::new();
        for channel in Channel::PATIENT {
            for (c, _) in categories.iter().filter(|(c, _)| c.audience == 1) {
                let decided = consent::deciding(&records, channel, &c.key);
                states.push(api::ConsentState {
                    channel: channel.as_i32(),
                    category: c.key.clone(),
                    allowed: decided.is_none_or(|r| r.granted),
                    decided_by: decided
                        .and_then(|d| log.iter().find(|r| r.id == d.id))
                        .map(convert::consent_event),
                });
            }
        }
        Ok(states)
    }

    fn validate_template(&self, tpl: &api::Template) -> Result<Channel> {
        let channel = channel_of(
            "template.channel",
            tpl.channel,
            &[Channel::Sms, Channel::Email, Channel::Chat, Channel::Task],
        )?;
        if !is_key(&tpl.key, 100) {
            return Err(Error::invalid(
                "template.key",
                "lower snake case, 1 to 100 characters",
            ));
        }
        required("template.body", &tpl.body)?;
        if channel == Channel::Email && tpl.subject.trim().is_empty() {
            return Err(Error::invalid(
                "template.subject",
                "an email template needs a subject",
            ));
        }
        t::validate(&t::TemplateText {
            subject: tpl.subject.clone(),
            body: tpl.body.clone(),
            html_body: tpl.html_body.clone(),
        })?;
        Ok(channel)
    }
}

#[tonic::async_trait]
impl NotificationsService for NotificationsServiceApi {
    async fn get_contact(
        &self,
        request: Request<api::GetContactRequest>,
    ) -> Result<Response<api::GetContactResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let contact = contacts::get(&mut conn, &caller.tenant, &r.patient_id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("contact", &r.patient_id))?;
        Ok(Response::new(api::GetContactResponse {
            contact: Some(convert::contact(&contact)),
        }))
    }

    async fn upsert_contact(
        &self,
        request: Request<api::UpsertContactRequest>,
    ) -> Result<Response<api::UpsertContactResponse>, Status> {
        let caller = who(&request, &Role::STAFF)?;
        let r = request.into_inner();
        let c = r
            .contact
            .ok_or_else(|| Error::invalid("contact", "is required"))?;
        required("contact.patient_id", &c.patient_id)?;
        check_mask(
            &r.update_mask,
            &[
                "given_name",
                "family_name",
                "preferred_name",
                "phone_e164",
                "email",
                "time_zone",
                "preferred_channel",
                "language",
                "archived",
            ],
        )?;
        if mask_has(&r.update_mask, "phone_e164") && !c.phone_e164.is_empty() {
            address::check_e164(&c.phone_e164)
                .map_err(|e| Error::invalid("contact.phone_e164", e))?;
        }
        if mask_has(&r.update_mask, "email") && !c.email.is_empty() {
            address::check_email(&c.email).map_err(|e| Error::invalid("contact.email", e))?;
        }
        if mask_has(&r.update_mask, "time_zone") && !c.time_zone.is_empty() {
            address::parse_zone(&c.time_zone)
                .map_err(|e| Error::invalid("contact.time_zone", e))?;
        }
        if mask_has(&r.update_mask, "preferred_channel") && c.preferred_channel != 0 {
            channel_of(
                "contact.preferred_channel",
                c.preferred_channel,
                &Channel::PATIENT,
            )?;
        }
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let existing = contacts::get(&mut tx, &caller.tenant, &c.patient_id)
            .await
            .map_err(Error::from)?;
        let now = Utc::now();
        let mut row = existing.clone().unwrap_or(contacts::ContactRow {
            tenant_id: caller.tenant.clone(),
            patient_id: c.patient_id.clone(),
            given_name: String::new(),
            family_name: String::new(),
            preferred_name: String::new(),
            phone_e164: String::new(),
            email: String::new(),
            time_zone: String::new(),
            preferred_channel: 0,
            language: String::new(),
            archived: false,
            source: "grpc".into(),
            source_time: now,
            updated_at: now,
        });
        let mask = if existing.is_none() {
            None
        } else {
            r.update_mask.clone()
        };
        if mask_has(&mask, "given_name") {
            row.given_name = c.given_name;
        }
        if mask_has(&mask, "family_name") {
            row.family_name = c.family_name;
        }
        if mask_has(&mask, "preferred_name") {
            row.preferred_name = c.preferred_name;
        }
        if mask_has(&mask, "phone_e164") {
            row.phone_e164 = c.phone_e164;
        }
        if mask_has(&mask, "email") {
            row.email = c.email;
        }
        if mask_has(&mask, "time_zone") {
            row.time_zone = c.time_zone;
        }
        if mask_has(&mask, "preferred_channel") {
            row.preferred_channel = c.preferred_channel;
        }
        if mask_has(&mask, "language") {
            row.language = c.language;
        }
        if mask_has(&mask, "archived") {
            row.archived = c.archived;
        }
        row.source = "grpc".into();
        contacts::upsert(&mut tx, &row, false)
            .await
            .map_err(Error::from)?;
        let saved = contacts::get(&mut tx, &caller.tenant, &row.patient_id)
            .await
            .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        tracing::info!(tenant = %caller.tenant, patient_id = %row.patient_id, by = %caller.sub, "contact upserted");
        Ok(Response::new(api::UpsertContactResponse {
            contact: saved.as_ref().map(convert::contact),
        }))
    }

    async fn list_contacts(
        &self,
        request: Request<api::ListContactsRequest>,
    ) -> Result<Response<api::ListContactsResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let (size, offset) = storage::page(r.page_size, &r.page_token, 50)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let rows = contacts::list(&mut conn, &caller.tenant, &r.query, size, offset)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(api::ListContactsResponse {
            next_page_token: storage::next_token(rows.len(), size, offset),
            contacts: rows.iter().map(convert::contact).collect(),
        }))
    }

    async fn upsert_staff_contact(
        &self,
        request: Request<api::UpsertStaffContactRequest>,
    ) -> Result<Response<api::UpsertStaffContactResponse>, Status> {
        let caller = who(&request, &Role::STAFF)?;
        let r = request.into_inner();
        let c = r
            .contact
            .ok_or_else(|| Error::invalid("contact", "is required"))?;
        required("contact.staff_id", &c.staff_id)?;
        check_mask(
            &r.update_mask,
            &[
                "display_name",
                "email",
                "role",
                "active",
                "disabled_categories",
            ],
        )?;
        if mask_has(&r.update_mask, "email") && !c.email.is_empty() {
            address::check_email(&c.email).map_err(|e| Error::invalid("contact.email", e))?;
        }
        // Staff may change their own alert preferences; someone else's contact needs a manager.
        if c.staff_id != caller.sub {
            caller.require(&MANAGERS)?;
        }
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let existing = contacts::get_staff(&mut tx, &caller.tenant, &c.staff_id)
            .await
            .map_err(Error::from)?;
        let now = Utc::now();
        let mut row = existing.clone().unwrap_or(contacts::StaffRow {
            tenant_id: caller.tenant.clone(),
            staff_id: c.staff_id.clone(),
            display_name: String::new(),
            email: String::new(),
            role: 0,
            active: true,
            disabled_categories: Vec::new(),
            source_time: now,
            updated_at: now,
        });
        let mask = if existing.is_none() {
            None
        } else {
            r.update_mask.clone()
        };
        if mask_has(&mask, "display_name") {
            row.display_name = c.display_name;
        }
        if mask_has(&mask, "email") {
            row.email = c.email;
        }
        if mask_has(&mask, "role") {
            row.role = c.role;
        }
        if mask_has(&mask, "active") {
            row.active = c.active;
        }
        if mask_has(&mask, "disabled_categories") {
            row.disabled_categories = c.disabled_categories;
        }
        contacts::upsert_staff(&mut tx, &row, false, false)
            .await
            .map_err(Error::from)?;
        let saved = contacts::get_staff(&mut tx, &caller.tenant, &row.staff_id)
            .await
            .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(api::UpsertStaffContactResponse {
            contact: saved.as_ref().map(convert::staff),
        }))
    }

    async fn list_staff_contacts(
        &self,
        request: Request<api::ListStaffContactsRequest>,
    ) -> Result<Response<api::ListStaffContactsResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let (size, offset) = storage::page(r.page_size, &r.page_token, 100)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let rows =
            contacts::list_staff(&mut conn, &caller.tenant, r.include_inactive, size, offset)
                .await
                .map_err(Error::from)?;
        Ok(Response::new(api::ListStaffContactsResponse {
            next_page_token: storage::next_token(rows.len(), size, offset),
            contacts: rows.iter().map(convert::staff).collect(),
        }))
    }

    async fn get_consent(
        &self,
        request: Request<api::GetConsentRequest>,
    ) -> Result<Response<api::GetConsentResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        required("patient_id", &r.patient_id)?;
        // Another clinic's patient (or no patient at all) is not found, as in GetContact: answering
        // "every channel allowed" would both mislead and confirm nothing exists here.
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        if contacts::get(&mut conn, &caller.tenant, &r.patient_id)
            .await
            .map_err(Error::from)?
            .is_none()
        {
            return Err(Error::not_found("contact", &r.patient_id).into());
        }
        drop(conn);
        let states = self.consent_states(&caller.tenant, &r.patient_id).await?;
        Ok(Response::new(api::GetConsentResponse {
            patient_id: r.patient_id,
            states,
        }))
    }

    async fn set_consent(
        &self,
        request: Request<api::SetConsentRequest>,
    ) -> Result<Response<api::SetConsentResponse>, Status> {
        let caller = who(&request, &Role::STAFF)?;
        let r = request.into_inner();
        required("patient_id", &r.patient_id)?;
        let channel = if r.channel == 0 {
            None
        } else {
            Some(channel_of("channel", r.channel, &Channel::PATIENT)?)
        };
        if !r.category.is_empty() {
            self.known_category(&caller.tenant, &r.category).await?;
        }
        if r.note.chars().count() > 500 {
            return Err(Error::invalid("note", "at most 500 characters").into());
        }
        let source = match ConsentSource::try_from(r.source) {
            Ok(ConsentSource::Unspecified) | Ok(ConsentSource::Staff) => ConsentSource::Staff,
            Ok(ConsentSource::Import) => ConsentSource::Import,
            _ => return Err(Error::invalid("source", "STAFF (default) or IMPORT").into()),
        };
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        if contacts::get(&mut tx, &caller.tenant, &r.patient_id)
            .await
            .map_err(Error::from)?
            .is_none()
        {
            return Err(Error::not_found("contact", &r.patient_id).into());
        }
        let row = inbound::record_consent(
            &mut tx,
            &caller.tenant,
            &r.patient_id,
            channel,
            &r.category,
            r.granted,
            source,
            &caller.sub,
            "",
            "",
            &r.note,
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        let states = self.consent_states(&caller.tenant, &r.patient_id).await?;
        Ok(Response::new(api::SetConsentResponse {
            states,
            event: Some(convert::consent_event(&row)),
        }))
    }

    async fn list_consent_history(
        &self,
        request: Request<api::ListConsentHistoryRequest>,
    ) -> Result<Response<api::ListConsentHistoryResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let (size, offset) = storage::page(r.page_size, &r.page_token, 50)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let rows = contacts::consent_page(&mut conn, &caller.tenant, &r.patient_id, size, offset)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(api::ListConsentHistoryResponse {
            next_page_token: storage::next_token(rows.len(), size, offset),
            events: rows.iter().map(convert::consent_event).collect(),
        }))
    }

    async fn list_categories(
        &self,
        request: Request<api::ListCategoriesRequest>,
    ) -> Result<Response<api::ListCategoriesResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let rows = settings::list_categories(&mut conn, &caller.tenant)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(api::ListCategoriesResponse {
            categories: rows.iter().map(|(c, b)| convert::category(c, *b)).collect(),
        }))
    }

    async fn upsert_category(
        &self,
        request: Request<api::UpsertCategoryRequest>,
    ) -> Result<Response<api::UpsertCategoryResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let c = request
            .into_inner()
            .category
            .ok_or_else(|| Error::invalid("category", "is required"))?;
        if !is_key(&c.key, 50) {
            return Err(
                Error::invalid("category.key", "lower snake case, 1 to 50 characters").into(),
            );
        }
        let audience = match c.audience {
            0 | 1 => 1,
            2 => 2,
            _ => return Err(Error::invalid("category.audience", "PATIENT or STAFF").into()),
        };
        let row = settings::CategoryRow {
            key: c.key.clone(),
            display_name: c.display_name.clone(),
            description: c.description.clone(),
            audience,
            transactional: c.transactional,
        };
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        settings::upsert_category(&mut conn, &caller.tenant, &row)
            .await
            .map_err(Error::from)?;
        let built_in = settings::built_in().iter().any(|b| b.key == row.key);
        Ok(Response::new(api::UpsertCategoryResponse {
            category: Some(convert::category(&row, built_in)),
        }))
    }

    async fn get_delivery_settings(
        &self,
        request: Request<api::GetDeliverySettingsRequest>,
    ) -> Result<Response<api::GetDeliverySettingsResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let s = settings::get(
            &mut conn,
            &caller.tenant,
            &self.app.settings.default_time_zone,
        )
        .await
        .map_err(Error::from)?;
        Ok(Response::new(api::GetDeliverySettingsResponse {
            settings: Some(convert::settings(&s)),
        }))
    }

    async fn update_delivery_settings(
        &self,
        request: Request<api::UpdateDeliverySettingsRequest>,
    ) -> Result<Response<api::UpdateDeliverySettingsResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let r = request.into_inner();
        let given = r
            .settings
            .ok_or_else(|| Error::invalid("settings", "is required"))?;
        let mask = r
            .update_mask
            .filter(|m| !m.paths.is_empty())
            .ok_or_else(|| Error::invalid("update_mask", "name the settings to change"))?;
        let mask = Some(mask);
        check_mask(
            &mask,
            &[
                "time_zone",
                "quiet_hours_start",
                "quiet_hours_end",
                "weekly_cap",
                "cap_deferral_limit",
                "clinic_name",
                "clinic_phone",
                "help_reply",
                "default_task_owner_staff_id",
                "email_from",
                "sms_unknown_outcome",
                "email_unknown_outcome",
                "webhook_unknown_outcome",
            ],
        )?;
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let mut s = settings::get(
            &mut tx,
            &caller.tenant,
            &self.app.settings.default_time_zone,
        )
        .await
        .map_err(Error::from)?;
        if mask_has(&mask, "time_zone") {
            address::parse_zone(&given.time_zone)
                .map_err(|e| Error::invalid("settings.time_zone", e))?;
            s.time_zone = given.time_zone;
        }
        for (path, value, target) in [
            (
                "quiet_hours_start",
                given.quiet_hours_start,
                &mut s.quiet_hours_start,
            ),
            (
                "quiet_hours_end",
                given.quiet_hours_end,
                &mut s.quiet_hours_end,
            ),
        ] {
            if mask_has(&mask, path) {
                followup_platform::pacing::parse_hhmm(&value).ok_or_else(|| {
                    Error::invalid(format!("settings.{path}"), "a 24-hour time \"HH:MM\"")
                })?;
                *target = value;
            }
        }
        if mask_has(&mask, "weekly_cap") {
            if !(0..=100).contains(&given.weekly_cap) {
                return Err(Error::invalid("settings.weekly_cap", "0 (no cap) to 100").into());
            }
            s.weekly_cap = given.weekly_cap;
        }
        if mask_has(&mask, "cap_deferral_limit") {
            let secs = given
                .cap_deferral_limit
                .map(|d| d.seconds)
                .unwrap_or(7 * 86400);
            if !(0..=30 * 86400).contains(&secs) {
                return Err(Error::invalid("settings.cap_deferral_limit", "0 to 30 days").into());
            }
            s.cap_deferral_limit_secs = secs;
        }
        if mask_has(&mask, "clinic_name") {
            s.clinic_name = given.clinic_name;
        }
        if mask_has(&mask, "clinic_phone") {
            if !given.clinic_phone.is_empty() {
                address::check_e164(&given.clinic_phone)
                    .map_err(|e| Error::invalid("settings.clinic_phone", e))?;
            }
            s.clinic_phone = given.clinic_phone;
        }
        if mask_has(&mask, "help_reply") {
            s.help_reply = given.help_reply;
        }
        if mask_has(&mask, "default_task_owner_staff_id") {
            s.default_task_owner_staff_id = given.default_task_owner_staff_id;
        }
        if mask_has(&mask, "email_from") {
            if !given.email_from.is_empty()
                && given
                    .email_from
                    .parse::<lettre::message::Mailbox>()
                    .is_err()
            {
                return Err(Error::invalid(
                    "settings.email_from",
                    "an address like \"Smile Clinic <care@smile.example>\"",
                )
                .into());
            }
            s.email_from = given.email_from;
        }
        for (path, value, target) in [
            (
                "sms_unknown_outcome",
                given.sms_unknown_outcome,
                &mut s.sms_unknown_outcome,
            ),
            (
                "email_unknown_outcome",
                given.email_unknown_outcome,
                &mut s.email_unknown_outcome,
            ),
            (
                "webhook_unknown_outcome",
                given.webhook_unknown_outcome,
                &mut s.webhook_unknown_outcome,
            ),
        ] {
            if mask_has(&mask, path) {
                *target = match api::UnknownOutcomePolicy::try_from(value) {
                    // Unset is the default, at-most-once.
                    Ok(api::UnknownOutcomePolicy::Unspecified) => settings::AT_MOST_ONCE,
                    Ok(p) => p as i32,
                    Err(_) => {
                        return Err(Error::invalid(
                            format!("settings.{path}"),
                            "UNKNOWN_OUTCOME_POLICY_AT_MOST_ONCE or UNKNOWN_OUTCOME_POLICY_AT_LEAST_ONCE",
                        )
                        .into());
                    }
                };
            }
        }
        settings::put(&mut tx, &s).await.map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(api::UpdateDeliverySettingsResponse {
            settings: Some(convert::settings(&s)),
        }))
    }

    async fn create_template(
        &self,
        request: Request<api::CreateTemplateRequest>,
    ) -> Result<Response<api::CreateTemplateResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let tpl = request
            .into_inner()
            .template
            .ok_or_else(|| Error::invalid("template", "is required"))?;
        let channel = self.validate_template(&tpl)?;
        if !tpl.category.is_empty() {
            self.known_category(&caller.tenant, &tpl.category).await?;
        }
        let row = templates::TemplateRow {
            tenant_id: caller.tenant.clone(),
            id: Uuid::now_v7(),
            key: tpl.key.clone(),
            channel: channel.as_i32(),
            name: tpl.name.clone(),
            subject: tpl.subject.clone(),
            body: tpl.body.clone(),
            html_body: tpl.html_body.clone(),
            category: tpl.category.clone(),
            enabled: tpl.enabled,
            updated_at: Utc::now(),
        };
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        if !templates::insert(&mut conn, &row)
            .await
            .map_err(Error::from)?
        {
            return Err(Error::AlreadyExists(format!(
                "the clinic already has a template `{}` for {}; update it instead",
                tpl.key,
                channel.name()
            ))
            .into());
        }
        let saved = templates::get(&mut conn, &caller.tenant, row.id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::Internal("template vanished".into()))?;
        Ok(Response::new(api::CreateTemplateResponse {
            template: Some(convert::template(&saved)),
        }))
    }

    async fn get_template(
        &self,
        request: Request<api::GetTemplateRequest>,
    ) -> Result<Response<api::GetTemplateResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let id = parse_id("template_id", &r.template_id)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let found = templates::get(&mut conn, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("template", &r.template_id))?;
        Ok(Response::new(api::GetTemplateResponse {
            template: Some(convert::template(&found)),
        }))
    }

    async fn list_templates(
        &self,
        request: Request<api::ListTemplatesRequest>,
    ) -> Result<Response<api::ListTemplatesResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let channel = if r.channel == 0 {
            None
        } else {
            Some(channel_of(
                "channel",
                r.channel,
                &[Channel::Sms, Channel::Email, Channel::Chat, Channel::Task],
            )?)
        };
        let (size, offset) = storage::page(r.page_size, &r.page_token, 100)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let all = templates::list(&mut conn, &caller.tenant, channel, &r.key)
            .await
            .map_err(Error::from)?;
        let page: Vec<_> = all
            .iter()
            .skip(offset as usize)
            .take(size as usize)
            .collect();
        Ok(Response::new(api::ListTemplatesResponse {
            next_page_token: if (offset + size) < all.len() as i64 {
                format!("o{}", offset + size)
            } else {
                String::new()
            },
            templates: page.into_iter().map(convert::template).collect(),
        }))
    }

    async fn update_template(
        &self,
        request: Request<api::UpdateTemplateRequest>,
    ) -> Result<Response<api::UpdateTemplateResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let r = request.into_inner();
        let given = r
            .template
            .ok_or_else(|| Error::invalid("template", "is required"))?;
        let mask = r
            .update_mask
            .filter(|m| !m.paths.is_empty())
            .ok_or_else(|| Error::invalid("update_mask", "name the fields to change"))?;
        let mask = Some(mask);
        check_mask(
            &mask,
            &[
                "name",
                "subject",
                "body",
                "html_body",
                "category",
                "enabled",
            ],
        )?;
        let id = parse_id("template.template_id", &given.template_id)?;
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let current = templates::get(&mut tx, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("template", &given.template_id))?;
        let mut row = current.row.clone();
        if mask_has(&mask, "name") {
            row.name = given.name;
        }
        if mask_has(&mask, "subject") {
            row.subject = given.subject;
        }
        if mask_has(&mask, "body") {
            row.body = given.body;
        }
        if mask_has(&mask, "html_body") {
            row.html_body = given.html_body;
        }
        if mask_has(&mask, "category") {
            row.category = given.category;
        }
        if mask_has(&mask, "enabled") {
            row.enabled = given.enabled;
        }
        let as_api = api::Template {
            key: row.key.clone(),
            channel: row.channel,
            subject: row.subject.clone(),
            body: row.body.clone(),
            html_body: row.html_body.clone(),
            ..Default::default()
        };
        self.validate_template(&as_api)?;
        if !row.category.is_empty() {
            self.known_category(&caller.tenant, &row.category).await?;
        }
        let id = if current.built_in {
            // The first edit of a shipped default copies it into the clinic's templates.
            row.id = Uuid::now_v7();
            templates::insert(&mut tx, &row)
                .await
                .map_err(Error::from)?;
            row.id
        } else {
            templates::update(&mut tx, &row)
                .await
                .map_err(Error::from)?;
            row.id
        };
        let saved = templates::get(&mut tx, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::Internal("template vanished".into()))?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(api::UpdateTemplateResponse {
            template: Some(convert::template(&saved)),
        }))
    }

    async fn delete_template(
        &self,
        request: Request<api::DeleteTemplateRequest>,
    ) -> Result<Response<api::DeleteTemplateResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let r = request.into_inner();
        let id = parse_id("template_id", &r.template_id)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        if !templates::delete(&mut conn, &caller.tenant, id)
            .await
            .map_err(Error::from)?
        {
            let built_in = templates::get(&mut conn, &caller.tenant, id)
                .await
                .map_err(Error::from)?
                .is_some();
            if built_in {
                return Err(Error::FailedPrecondition { violation: "BUILT_IN", subject: r.template_id, reason: "a shipped default cannot be deleted; disable it with UpdateTemplate (enabled=false)".into() }.into());
            }
            return Err(Error::not_found("template", &r.template_id).into());
        }
        Ok(Response::new(api::DeleteTemplateResponse {}))
    }

    async fn preview_template(
        &self,
        request: Request<api::PreviewTemplateRequest>,
    ) -> Result<Response<api::PreviewTemplateResponse>, Status> {
        use api::preview_template_request::{Recipient, TemplateSource};
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let (channel, text) = match r.template_source {
            Some(TemplateSource::TemplateId(id)) => {
                let uuid = parse_id("template_id", &id)?;
                let found = templates::get(&mut conn, &caller.tenant, uuid)
                    .await
                    .map_err(Error::from)?
                    .ok_or_else(|| Error::not_found("template", &id))?;
                (
                    Channel::from_i32(found.row.channel).unwrap_or(Channel::Sms),
                    found.text(),
                )
            }
            Some(TemplateSource::Template(tpl)) => {
                let channel = self.validate_template(&tpl)?;
                (
                    channel,
                    t::TemplateText {
                        subject: tpl.subject,
                        body: tpl.body,
                        html_body: tpl.html_body,
                    },
                )
            }
            None => {
                return Err(
                    Error::invalid("template_source", "give template_id or template").into(),
                );
            }
        };
        let clinic = settings::get(
            &mut conn,
            &caller.tenant,
            &self.app.settings.default_time_zone,
        )
        .await
        .map_err(Error::from)?;
        let mut vars: BTreeMap<String, Value> = BTreeMap::new();
        vars.insert("clinic_name".into(), Value::from(clinic.display_name()));
        vars.insert("clinic_phone".into(), Value::from(clinic.display_phone()));
        vars.insert("owner_name".into(), Value::from(""));
        vars.insert(
            "unsubscribe_url".into(),
            Value::from(format!(
                "{}/unsubscribe/preview",
                self.app.settings.public_base_url.trim_end_matches('/')
            )),
        );
        match r.recipient {
            Some(Recipient::PatientId(p)) => {
                let c = contacts::get(&mut conn, &caller.tenant, &p)
                    .await
                    .map_err(Error::from)?
                    .ok_or_else(|| Error::not_found("contact", &p))?;
                vars.insert(
                    "patient_first_name".into(),
                    Value::from(c.first_name().to_string()),
                );
                vars.insert("patient_name".into(), Value::from(c.full_name()));
                vars.insert("staff_name".into(), Value::from(""));
            }
            Some(Recipient::StaffId(s)) => {
                let c = contacts::get_staff(&mut conn, &caller.tenant, &s)
                    .await
                    .map_err(Error::from)?
                    .ok_or_else(|| Error::not_found("staff contact", &s))?;
                vars.insert("staff_name".into(), Value::from(c.display_name));
                vars.insert("patient_first_name".into(), Value::from(""));
                vars.insert("patient_name".into(), Value::from(""));
            }
            None => {
                for v in t::VARIABLES.iter().filter(|v| !v.request_supplied) {
                    vars.entry(v.name.to_string())
                        .or_insert_with(|| Value::from(v.example));
                }
            }
        }
        for (k, v) in r.variables {
            vars.insert(k, Value::from(v));
        }
        let mut warnings = Vec::new();
        for name in t::validate(&text).map_err(Error::from)? {
            if let std::collections::btree_map::Entry::Vacant(slot) = vars.entry(name) {
                warnings.push(format!(
                    "{} was not supplied; rendered as an empty string",
                    slot.key()
                ));
                slot.insert(Value::from(""));
            }
        }
        let rendered = t::render(channel, &text, &vars).map_err(Error::from)?;
        let (encoding, segments, characters) = match rendered.sms {
            Some(cost) => (
                if cost.encoding == crate::domain::gsm::Encoding::Gsm7 {
                    1
                } else {
                    2
                },
                cost.segments as i32,
                cost.characters as i32,
            ),
            None => (0, 0, 0),
        };
        Ok(Response::new(api::PreviewTemplateResponse {
            message: Some(followup_proto::followup::common::v1::RenderedMessage {
                channel: channel.as_i32(),
                subject: rendered.subject,
                body: rendered.body,
                html_body: rendered.html_body,
                encoding,
                segment_count: segments,
                character_count: characters,
            }),
            warnings,
        }))
    }

    async fn list_template_variables(
        &self,
        request: Request<api::ListTemplateVariablesRequest>,
    ) -> Result<Response<api::ListTemplateVariablesResponse>, Status> {
        who(&request, &Role::ALL)?;
        Ok(Response::new(api::ListTemplateVariablesResponse {
            variables: t::VARIABLES
                .iter()
                .map(|v| api::TemplateVariable {
                    name: v.name.into(),
                    description: v.description.into(),
                    example: v.example.into(),
                    request_supplied: v.request_supplied,
                })
                .collect(),
        }))
    }

    async fn list_messages(
        &self,
        request: Request<api::ListMessagesRequest>,
    ) -> Result<Response<api::ListMessagesResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let (size, offset) = storage::page(r.page_size, &r.page_token, 50)?;
        let (plan_id, care_case_id) = case_filter(&r.case_ref);
        let filter = messages::MessageFilter {
            patient_id: r.patient_id,
            plan_id,
            care_case_id,
            enrollment_id: r.enrollment_id,
            staff_id: r.staff_id,
            channel: r.channel,
            statuses: r
                .statuses
                .iter()
                .flat_map(|s| convert::status_names(*s))
                .map(str::to_string)
                .collect(),
            idempotency_key: r.idempotency_key,
            created_after: r.created_after.as_ref().and_then(from_timestamp),
            created_before: r.created_before.as_ref().and_then(from_timestamp),
        };
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let rows = messages::list(&mut conn, &caller.tenant, &filter, size, offset)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(api::ListMessagesResponse {
            next_page_token: storage::next_token(rows.len(), size, offset),
            messages: rows.iter().map(convert::message).collect(),
        }))
    }

    async fn get_message(
        &self,
        request: Request<api::GetMessageRequest>,
    ) -> Result<Response<api::GetMessageResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let id = parse_id("message_id", &r.message_id)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let m = messages::get(&mut conn, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("message", &r.message_id))?;
        let attempts = messages::attempts(&mut conn, &caller.tenant, id)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(api::GetMessageResponse {
            message: Some(convert::message(&m)),
            attempts: attempts.iter().map(convert::attempt).collect(),
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<api::ListConversationsRequest>,
    ) -> Result<Response<api::ListConversationsResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let (size, offset) = storage::page(r.page_size, &r.page_token, 50)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let rows = messages::conversations(&mut conn, &caller.tenant, r.unread_only, size, offset)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(api::ListConversationsResponse {
            next_page_token: storage::next_token(rows.len(), size, offset),
            conversations: rows
                .iter()
                .map(|c| {
                    let first = c
                        .preferred_name
                        .clone()
                        .filter(|p| !p.is_empty())
                        .or_else(|| c.given_name.clone())
                        .unwrap_or_default();
                    api::Conversation {
                        patient_id: c.patient_id.clone(),
                        patient_name: format!(
                            "{first} {}",
                            c.family_name.clone().unwrap_or_default()
                        )
                        .trim()
                        .to_string(),
                        last_message_time: Some(timestamp(c.last_time)),
                        last_message_preview: c.last_text.chars().take(100).collect(),
                        last_direction: c.last_direction,
                        unread_count: c.unread as i32,
                        needs_attention: c.needs_attention,
                    }
                })
                .collect(),
        }))
    }

    async fn list_conversation_messages(
        &self,
        request: Request<api::ListConversationMessagesRequest>,
    ) -> Result<Response<api::ListConversationMessagesResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        required("patient_id", &r.patient_id)?;
        let (size, offset) = storage::page(r.page_size, &r.page_token, 50)?;
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let rows = messages::conversation(&mut tx, &caller.tenant, &r.patient_id, size, offset)
            .await
            .map_err(Error::from)?;
        if r.mark_read {
            let ids: Vec<Uuid> = rows
                .iter()
                .filter(|m| m.row.direction == 1 && !m.row.read)
                .map(|m| m.row.id)
                .collect();
            messages::mark_read(&mut tx, &caller.tenant, &ids)
                .await
                .map_err(Error::from)?;
        }
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(api::ListConversationMessagesResponse {
            next_page_token: storage::next_token(rows.len(), size, offset),
            messages: rows.iter().map(convert::conversation_message).collect(),
        }))
    }

    async fn send_conversation_reply(
        &self,
        request: Request<api::SendConversationReplyRequest>,
    ) -> Result<Response<api::SendConversationReplyResponse>, Status> {
        let caller = who(&request, &Role::STAFF)?;
        let r = request.into_inner();
        required("patient_id", &r.patient_id)?;
        let len = r.text.chars().count();
        if !(1..=1600).contains(&len) || r.text.trim().is_empty() {
            return Err(Error::invalid("text", "1 to 1600 characters").into());
        }
        if r.idempotency_key.len() > 200 {
            return Err(Error::invalid("idempotency_key", "at most 200 characters").into());
        }
        let channel = if r.channel == 0 {
            Channel::Chat
        } else {
            channel_of("channel", r.channel, &Channel::PATIENT)?
        };
        let key = (!r.idempotency_key.is_empty()).then(|| format!("reply:{}", r.idempotency_key));
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let contact = contacts::get(&mut tx, &caller.tenant, &r.patient_id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("contact", &r.patient_id))?;
        if let Some(k) = &key {
            let existing = messages::list(
                &mut tx,
                &caller.tenant,
                &messages::MessageFilter {
                    idempotency_key: k.clone(),
                    ..Default::default()
                },
                1,
                0,
            )
            .await
            .map_err(Error::from)?;
            if let Some(m) = existing.first() {
                return Ok(Response::new(api::SendConversationReplyResponse {
                    message: Some(reply_view(m)),
                }));
            }
        }
        if channel != Channel::Chat {
            let log: Vec<_> = contacts::consent_log(&mut tx, &caller.tenant, &r.patient_id)
                .await
                .map_err(Error::from)?
                .iter()
                .map(|c| c.record())
                .collect();
            if !consent::allowed(&log, channel, "") {
                return Err(Error::FailedPrecondition {
                    violation: "OPTED_OUT",
                    subject: r.patient_id.clone(),
                    reason: format!(
                        "the patient opted out of {}; reply on the chat instead",
                        channel.name()
                    ),
                }
                .into());
            }
            let address = if channel == Channel::Sms {
                &contact.phone_e164
            } else {
                &contact.email
            };
            if address.is_empty() {
                return Err(Error::FailedPrecondition {
                    violation: "NO_ADDRESS",
                    subject: r.patient_id.clone(),
                    reason: format!("the patient has no address for {}", channel.name()),
                }
                .into());
            }
        }
        let now = Utc::now();
        let row = messages::MessageRow {
            tenant_id: caller.tenant.clone(),
            id: Uuid::now_v7(),
            idempotency_key: key,
            channel: channel.as_i32(),
            automated: false,
            patient_id: r.patient_id.clone(),
            rendered_subject: if channel == Channel::Email {
                "A message from your clinic".into()
            } else {
                String::new()
            },
            rendered_body: r.text.clone(),
            status: messages::status::QUEUED.into(),
            due_at: Some(now),
            created_at: now,
            requested_by: caller.sub.clone(),
            ..Default::default()
        };
        messages::insert(&mut tx, &row).await.map_err(Error::from)?;
        storage::notify_due(&mut tx).await.map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        self.app.wake.notify_one();
        tracing::info!(tenant = %caller.tenant, patient_id = %r.patient_id, message_id = %row.id, by = %caller.sub, "staff reply queued");
        Ok(Response::new(api::SendConversationReplyResponse {
            message: Some(reply_view(&row)),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<api::ListTasksRequest>,
    ) -> Result<Response<api::ListTasksResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let (size, offset) = storage::page(r.page_size, &r.page_token, 50)?;
        let states: Vec<i32> = if r.states.is_empty() {
            vec![1]
        } else {
            r.states.clone()
        };
        let (plan, care) = case_filter(&r.case_ref);
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let rows = messages::list_tasks(
            &mut conn,
            &caller.tenant,
            &r.owner_staff_id,
            &states,
            &r.patient_id,
            &plan,
            &care,
            size,
            offset,
        )
        .await
        .map_err(Error::from)?;
        Ok(Response::new(api::ListTasksResponse {
            next_page_token: storage::next_token(rows.len(), size, offset),
            tasks: rows.iter().map(convert::task).collect(),
        }))
    }

    async fn get_task(
        &self,
        request: Request<api::GetTaskRequest>,
    ) -> Result<Response<api::GetTaskResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let id = parse_id("task_id", &r.task_id)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let task = messages::get_task(&mut conn, &caller.tenant, id, false)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("task", &r.task_id))?;
        Ok(Response::new(api::GetTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn complete_task(
        &self,
        request: Request<api::CompleteTaskRequest>,
    ) -> Result<Response<api::CompleteTaskResponse>, Status> {
        let caller = who(&request, &Role::STAFF)?;
        let r = request.into_inner();
        let id = parse_id("task_id", &r.task_id)?;
        if !is_key(&r.outcome, 50) {
            return Err(Error::invalid("outcome", "required, lower snake case, at most 50 characters (e.g. reached, left_voicemail, no_answer, booked, declined)").into());
        }
        if r.note.chars().count() > 2000 {
            return Err(Error::invalid("note", "at most 2000 characters").into());
        }
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let mut task = messages::get_task(&mut tx, &caller.tenant, id, true)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("task", &r.task_id))?;
        if task.state == 2 {
            return Err(Error::FailedPrecondition {
                violation: "COMPLETED",
                subject: r.task_id,
                reason: "the task is already completed".into(),
            }
            .into());
        }
        let now = Utc::now();
        task.state = 2;
        task.outcome = r.outcome;
        task.note = r.note;
        task.completed_by_staff_id = caller.sub.clone();
        task.completed_at = Some(now);
        messages::complete_task(&mut tx, &task)
            .await
            .map_err(Error::from)?;
        enqueue_event(
            &mut tx,
            INFO.name,
            &TaskCompleted {
                event_id: new_event_id().to_string(),
                tenant_id: caller.tenant.clone(),
                occurred_at: Some(timestamp(now)),
                task_id: task.id.to_string(),
                completed_by_staff_id: caller.sub.clone(),
                outcome: task.outcome.clone(),
                note: task.note.clone(),
                patient_id: task.patient_id.clone(),
                case_ref: crate::delivery::events::case_ref_of(
                    &task.case_plan_id,
                    &task.case_care_case_id,
                ),
            },
        )
        .await
        .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(api::CompleteTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<api::CreateWebhookEndpointRequest>,
    ) -> Result<Response<api::CreateWebhookEndpointResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let e = request
            .into_inner()
            .endpoint
            .ok_or_else(|| Error::invalid("endpoint", "is required"))?;
        self.check_url(&e.url)?;
        let secret = crate::domain::signing::new_webhook_secret();
        let now = Utc::now();
        let row = webhooks::EndpointRow {
            tenant_id: caller.tenant.clone(),
            id: Uuid::now_v7(),
            url: e.url,
            description: e.description,
            event_types: e.event_types,
            enabled: true,
            secret: secret.clone(),
            previous_secret: None,
            previous_secret_expires_at: None,
            secret_rotated_at: None,
            deleted: false,
            created_at: now,
            updated_at: now,
        };
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        webhooks::insert(&mut conn, &row)
            .await
            .map_err(Error::from)?;
        let saved = webhooks::get(&mut conn, &caller.tenant, row.id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::Internal("endpoint vanished".into()))?;
        Ok(Response::new(api::CreateWebhookEndpointResponse {
            endpoint: Some(convert::endpoint(&saved)),
            secret,
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<api::GetWebhookEndpointRequest>,
    ) -> Result<Response<api::GetWebhookEndpointResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let id = parse_id("webhook_endpoint_id", &r.webhook_endpoint_id)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let e = webhooks::get(&mut conn, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("webhook endpoint", &r.webhook_endpoint_id))?;
        Ok(Response::new(api::GetWebhookEndpointResponse {
            endpoint: Some(convert::endpoint(&e)),
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<api::ListWebhookEndpointsRequest>,
    ) -> Result<Response<api::ListWebhookEndpointsResponse>, Status> {
        let caller = who(&request, &Role::ALL)?;
        let r = request.into_inner();
        let (size, offset) = storage::page(r.page_size, &r.page_token, 50)?;
        let mut conn = self.app.pool.acquire().await.map_err(Error::from)?;
        let rows = webhooks::list(&mut conn, &caller.tenant, size, offset)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(api::ListWebhookEndpointsResponse {
            next_page_token: storage::next_token(rows.len(), size, offset),
            endpoints: rows.iter().map(convert::endpoint).collect(),
        }))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<api::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<api::UpdateWebhookEndpointResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let r = request.into_inner();
        let given = r
            .endpoint
            .ok_or_else(|| Error::invalid("endpoint", "is required"))?;
        let mask = Some(
            r.update_mask
                .filter(|m| !m.paths.is_empty())
                .ok_or_else(|| Error::invalid("update_mask", "name the fields to change"))?,
        );
        check_mask(&mask, &["url", "description", "event_types", "enabled"])?;
        let id = parse_id("endpoint.webhook_endpoint_id", &given.webhook_endpoint_id)?;
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let mut e = webhooks::get(&mut tx, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("webhook endpoint", &given.webhook_endpoint_id))?;
        if mask_has(&mask, "url") {
            self.check_url(&given.url)?;
            e.url = given.url;
        }
        if mask_has(&mask, "description") {
            e.description = given.description;
        }
        if mask_has(&mask, "event_types") {
            e.event_types = given.event_types;
        }
        if mask_has(&mask, "enabled") {
            e.enabled = given.enabled;
        }
        webhooks::update(&mut tx, &e).await.map_err(Error::from)?;
        let saved = webhooks::get(&mut tx, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::Internal("endpoint vanished".into()))?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(api::UpdateWebhookEndpointResponse {
            endpoint: Some(convert::endpoint(&saved)),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<api::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<api::DeleteWebhookEndpointResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let r = request.into_inner();
        let id = parse_id("webhook_endpoint_id", &r.webhook_endpoint_id)?;
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let mut e = webhooks::get(&mut tx, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("webhook endpoint", &r.webhook_endpoint_id))?;
        e.deleted = true;
        e.enabled = false;
        webhooks::update(&mut tx, &e).await.map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(api::DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<api::RotateWebhookSecretRequest>,
    ) -> Result<Response<api::RotateWebhookSecretResponse>, Status> {
        let caller = who(&request, &MANAGERS)?;
        let r = request.into_inner();
        let id = parse_id("webhook_endpoint_id", &r.webhook_endpoint_id)?;
        let ttl = match r.previous_secret_ttl {
            None => Duration::hours(24),
            Some(d) if d.seconds < 0 || d.seconds > 7 * 86400 => {
                return Err(Error::invalid("previous_secret_ttl", "0 to 7 days").into());
            }
            Some(d) => Duration::seconds(d.seconds),
        };
        let mut tx = self.app.pool.begin().await.map_err(Error::from)?;
        let mut e = webhooks::get(&mut tx, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("webhook endpoint", &r.webhook_endpoint_id))?;
        let secret = crate::domain::signing::new_webhook_secret();
        let now = Utc::now();
        e.previous_secret = Some(std::mem::replace(&mut e.secret, secret.clone()));
        e.previous_secret_expires_at = Some(now + ttl);
        e.secret_rotated_at = Some(now);
        webhooks::update(&mut tx, &e).await.map_err(Error::from)?;
        let saved = webhooks::get(&mut tx, &caller.tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::Internal("endpoint vanished".into()))?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(api::RotateWebhookSecretResponse {
            endpoint: Some(convert::endpoint(&saved)),
            secret,
        }))
    }
}

impl NotificationsServiceApi {
    fn check_url(&self, url: &str) -> Result<()> {
        let ok = url.starts_with("https://")
            || (self.app.settings.webhooks.allow_http && url.starts_with("http://"));
        if !ok
            || url
                .parse::<http::Uri>()
                .map(|u| u.host().is_none())
                .unwrap_or(true)
        {
            return Err(Error::invalid(
                "endpoint.url",
                if self.app.settings.webhooks.allow_http {
                    "an http(s) URL"
                } else {
                    "an https URL"
                },
            ));
        }
        Ok(())
    }
}

fn reply_view(m: &messages::MessageRow) -> api::ConversationMessage {
    api::ConversationMessage {
        message_id: m.id.to_string(),
        patient_id: m.patient_id.clone(),
        direction: 2,
        channel: m.channel,
        text: m.rendered_body.clone(),
        time: Some(timestamp(m.created_at)),
        author_staff_id: m.requested_by.clone(),
        classification: 0,
        read: true,
        status: convert::status_number(&m.status),
    }
}
