//! `followup.scheduler.v1.WaitlistService`: the waitlist, the slots on offer and their offers.

use chrono::{DateTime, Duration, Utc};
use followup_platform::auth::{Role, caller};
use followup_platform::grpc::invalid_argument;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1 as pb;
use followup_proto::followup::scheduler::v1::waitlist_service_server::WaitlistService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{Reply, bad_token, decode_token, encode_token, page_size, uuid};
use crate::convert::{duration_from, enum_value};
use crate::domain::FieldError;
use crate::domain::waitlist::{MIN_ENTRY_DURATION, RefillSettings};
use crate::error::Error;
use crate::storage::Store;
use crate::storage::waitlist::{self as store, Claimed, NewEntry};

const EDITORS: &[Role] = &[Role::Owner, Role::Admin];

#[derive(Clone)]
pub struct WaitlistServiceApi {
    pub pool: PgPool,
    pub store: Store,
}

impl WaitlistServiceApi {
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Status> {
        self.pool.begin().await.map_err(|e| Error::Db(e).into())
    }
}

async fn commit(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Result<(), Status> {
    tx.commit().await.map_err(|e| Error::Db(e).into())
}

fn time(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(followup_platform::event::from_timestamp)
}

#[allow(clippy::result_large_err)]
fn ids(list: &[String], path: &str) -> Result<Vec<String>, Status> {
    if list.len() > 50 {
        return Err(invalid_argument(path, "at most 50"));
    }
    for (i, id) in list.iter().enumerate() {
        if id.trim().is_empty() || id.chars().count() > 128 {
            return Err(invalid_argument(
                &format!("{path}[{i}]"),
                "1-128 characters",
            ));
        }
    }
    Ok(list.to_vec())
}

#[tonic::async_trait]
impl WaitlistService for WaitlistServiceApi {
    async fn create_waitlist_entry(
        &self,
        request: Request<pb::CreateWaitlistEntryRequest>,
    ) -> Reply<pb::CreateWaitlistEntryResponse> {
        let caller = caller(&request)?;
        caller.require(&Role::STAFF)?;
        let e = request
            .into_inner()
            .entry
            .ok_or_else(|| invalid_argument("entry", "is required"))?;
        if e.patient_id.trim().is_empty() || e.patient_id.chars().count() > 128 {
            return Err(invalid_argument(
                "entry.patient_id",
                "is required (the clinic's patient id)",
            ));
        }
        let duration = e
            .duration
            .as_ref()
            .map(|d| duration_from(d, "entry.duration"))
            .transpose()
            .map_err(Error::Invalid)?
            .ok_or_else(|| {
                invalid_argument(
                    "entry.duration",
                    "is required: the appointment length needed",
                )
            })?;
        if duration < MIN_ENTRY_DURATION || duration > Duration::hours(12) {
            return Err(invalid_argument("entry.duration", "5 minutes to 12 hours"));
        }
        let earliest = time(e.earliest_time.as_ref());
        let latest = time(e.latest_time.as_ref());
        if let (Some(a), Some(b)) = (earliest, latest)
            && a >= b
        {
            return Err(invalid_argument(
                "entry.latest_time",
                "must be after earliest_time",
            ));
        }
        if e.note.chars().count() > 1000 {
            return Err(invalid_argument("entry.note", "at most 1000 characters"));
        }
        let now = self.store.now();
        let entry = NewEntry {
            entry_id: crate::storage::new_id().to_string(),
            patient_id: e.patient_id.trim().to_string(),
            practitioner_ids: ids(&e.practitioner_ids, "entry.practitioner_ids")?,
            location_ids: ids(&e.location_ids, "entry.location_ids")?,
            duration,
            earliest,
            latest,
            current_appointment_id: e.current_appointment_id.trim().to_string(),
            plan_id: e.plan_id.trim().to_string(),
            note: e.note,
            source: "grpc",
            active: true,
            record_at: now,
        };
        let mut tx = self.begin().await?;
        let row = store::upsert_entry(&mut tx, &caller.tenant, &entry, now)
            .await?
            .ok_or_else(|| Status::internal("the entry was not written"))?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, entry_id = %row.entry_id, "waitlist entry created");
        Ok(Response::new(pb::CreateWaitlistEntryResponse {
            entry: Some(row.to_proto()),
        }))
    }

    async fn list_waitlist_entries(
        &self,
        request: Request<pb::ListWaitlistEntriesRequest>,
    ) -> Reply<pb::ListWaitlistEntriesResponse> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let limit = page_size(r.page_size, 100, "page_size")?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            let text = decode_token(&r.page_token).ok_or_else(bad_token)?;
            let (at, id) = text.split_once('\n').ok_or_else(bad_token)?;
            let at = DateTime::parse_from_rfc3339(at)
                .map_err(|_| bad_token())?
                .with_timezone(&Utc);
            Some((at, id.to_string()))
        };
        let mut conn = self.pool.acquire().await.map_err(Error::Db)?;
        let rows = store::list_entries(
            &mut conn,
            &caller.tenant,
            &r.patient_id,
            &r.practitioner_id,
            r.include_inactive,
            limit,
            after,
        )
        .await?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() as i64 == limit => encode_token(&format!(
                "{}\n{}",
                last.created_at.to_rfc3339(),
                last.entry_id
            )),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListWaitlistEntriesResponse {
            entries: rows.iter().map(|r| r.to_proto()).collect(),
            next_page_token,
        }))
    }

    async fn delete_waitlist_entry(
        &self,
        request: Request<pb::DeleteWaitlistEntryRequest>,
    ) -> Reply<pb::DeleteWaitlistEntryResponse> {
        let caller = caller(&request)?;
        caller.require(&Role::STAFF)?;
        let id = request.into_inner().waitlist_entry_id;
        if id.is_empty() {
            return Err(invalid_argument("waitlist_entry_id", "is required"));
        }
        let mut tx = self.begin().await?;
        store::deactivate_entry(&mut tx, &caller.tenant, &id).await?;
        commit(tx).await?;
        Ok(Response::new(pb::DeleteWaitlistEntryResponse {}))
    }

    async fn list_open_slots(
        &self,
        request: Request<pb::ListOpenSlotsRequest>,
    ) -> Reply<pb::ListOpenSlotsResponse> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let limit = page_size(r.page_size, 50, "page_size")?;
        let states = r
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                enum_value::<pb::OpenSlotState>(*s, &format!("states[{i}]"))
                    .map(store::slot_state_text)
            })
            .collect::<Result<Vec<_>, FieldError>>()
            .map_err(Error::Invalid)?;
        let before = if r.page_token.is_empty() {
            None
        } else {
            let text = decode_token(&r.page_token).ok_or_else(bad_token)?;
            Some(Uuid::parse_str(&text).map_err(|_| bad_token())?)
        };
        let mut conn = self.pool.acquire().await.map_err(Error::Db)?;
        let rows = store::list_slots(&mut conn, &caller.tenant, &states, limit, before).await?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() as i64 == limit => encode_token(&last.slot_id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListOpenSlotsResponse {
            slots: rows.iter().map(|r| r.to_proto()).collect(),
            next_page_token,
        }))
    }

    async fn get_open_slot(
        &self,
        request: Request<pb::GetOpenSlotRequest>,
    ) -> Reply<pb::GetOpenSlotResponse> {
        let caller = caller(&request)?;
        let slot_id = uuid("slot_id", &request.get_ref().slot_id, "slot")?;
        let mut conn = self.pool.acquire().await.map_err(Error::Db)?;
        let slot = store::slot(&mut conn, &caller.tenant, slot_id, false).await?;
        let offers = store::offers(&mut conn, &caller.tenant, slot_id).await?;
        Ok(Response::new(pb::GetOpenSlotResponse {
            slot: Some(slot.to_proto()),
            offers: offers.iter().map(|o| o.to_proto()).collect(),
        }))
    }

    async fn claim_slot_offer(
        &self,
        request: Request<pb::ClaimSlotOfferRequest>,
    ) -> Reply<pb::ClaimSlotOfferResponse> {
        let caller = caller(&request)?;
        caller.require(&Role::STAFF)?;
        let offer_id = uuid(
            "slot_offer_id",
            &request.get_ref().slot_offer_id,
            "slot offer",
        )?;
        let mut tx = self.begin().await?;
        let outcome = store::claim(
            &self.store,
            &mut tx,
            &caller.tenant,
            offer_id,
            ev::ClaimMethod::Staff,
            &caller.sub,
        )
        .await?;
        // A refused claim still commits: the offer is marked taken and the patient told.
        commit(tx).await?;
        match outcome {
            Claimed::Won { offer, slot } => Ok(Response::new(pb::ClaimSlotOfferResponse {
                offer: Some(offer.to_proto()),
                slot: Some(slot.to_proto()),
            })),
            Claimed::Refused(why) => {
                Err(
                    Error::precondition("SLOT_NOT_CLAIMABLE", offer_id.to_string(), why.message())
                        .into(),
                )
            }
        }
    }

    async fn decline_slot_offer(
        &self,
        request: Request<pb::DeclineSlotOfferRequest>,
    ) -> Reply<pb::DeclineSlotOfferResponse> {
        let caller = caller(&request)?;
        caller.require(&Role::STAFF)?;
        let r = request.into_inner();
        let offer_id = uuid("slot_offer_id", &r.slot_offer_id, "slot offer")?;
        let mut tx = self.begin().await?;
        let offer = store::decline(
            &self.store,
            &mut tx,
            &caller.tenant,
            offer_id,
            r.no_more_offers,
        )
        .await?;
        commit(tx).await?;
        Ok(Response::new(pb::DeclineSlotOfferResponse {
            offer: Some(offer.to_proto()),
        }))
    }

    async fn get_waitlist_settings(
        &self,
        request: Request<pb::GetWaitlistSettingsRequest>,
    ) -> Reply<pb::GetWaitlistSettingsResponse> {
        let caller = caller(&request)?;
        let mut conn = self.pool.acquire().await.map_err(Error::Db)?;
        let s = store::settings(&mut conn, &caller.tenant).await?;
        Ok(Response::new(pb::GetWaitlistSettingsResponse {
            settings: Some(store::settings_to_proto(&s)),
        }))
    }

    async fn update_waitlist_settings(
        &self,
        request: Request<pb::UpdateWaitlistSettingsRequest>,
    ) -> Reply<pb::UpdateWaitlistSettingsResponse> {
        let caller = caller(&request)?;
        caller.require(EDITORS)?;
        let r = request.into_inner();
        let update = r.settings.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        const PATHS: &str =
            "enabled, batch_size, batch_interval, cutoff, offer_template_key, taken_template_key";
        if paths.is_empty() {
            return Err(invalid_argument(
                "update_mask",
                format!("is required: name the fields among {PATHS}"),
            ));
        }
        let mut tx = self.begin().await?;
        let mut s: RefillSettings = store::settings(&mut tx, &caller.tenant).await?;
        let length = |d: Option<&prost_types::Duration>, path: &str| {
            d.map(|d| duration_from(d, path))
                .transpose()
                .map_err(Error::Invalid)?
                .ok_or_else(|| Status::from(Error::Invalid(FieldError::new(path, "is required"))))
        };
        for (i, path) in paths.iter().enumerate() {
            match path.as_str() {
                "enabled" => s.enabled = update.enabled,
                "batch_size" => s.batch_size = update.batch_size,
                "batch_interval" => {
                    s.batch_interval =
                        length(update.batch_interval.as_ref(), "settings.batch_interval")?
                }
                "cutoff" => s.cutoff = length(update.cutoff.as_ref(), "settings.cutoff")?,
                "offer_template_key" => {
                    s.offer_template_key = update.offer_template_key.trim().into()
                }
                "taken_template_key" => {
                    s.taken_template_key = update.taken_template_key.trim().into()
                }
                other => {
                    return Err(invalid_argument(
                        &format!("update_mask.paths[{i}]"),
                        format!("`{other}` is not a setting; use {PATHS}"),
                    ));
                }
            }
        }
        s.validate().map_err(Error::Invalid)?;
        store::save_settings(&mut tx, &caller.tenant, &s).await?;
        commit(tx).await?;
        tracing::info!(tenant = %caller.tenant, "waitlist settings updated");
        Ok(Response::new(pb::UpdateWaitlistSettingsResponse {
            settings: Some(store::settings_to_proto(&s)),
        }))
    }
}
