//! The waitlist and the refilling of cancelled slots, in PostgreSQL: entries, open slots with their
//! ranked offers, paced batches claimed by the timer like steps (`FOR UPDATE SKIP LOCKED`), and claims
//! that serialise on the slot's row lock — so of two claims at the same instant exactly one wins.
//! Offers and "already taken" replies are notification requests through the outbox, so consent, quiet
//! hours and the cap apply to them as to every message.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use followup_proto::followup::common::v1::{self as common, CaseKind, CaseStatus, Channel};
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Store, new_id, wake_timers};
use crate::convert::{case_ref, duration_to, timestamp};
use crate::domain::waitlist::{
    self, Candidate, ClaimRefused, EntryWants, RefillSettings, SlotSpec, Source,
};
use crate::error::{Error, Result};

/// The unsubscribe category of offers (transactional in the notifications service's shipped set).
pub const CATEGORY: &str = "slot_offers";

// ---- settings ----

pub async fn settings(conn: &mut PgConnection, tenant: &str) -> Result<RefillSettings> {
    let row: Option<(bool, i32, i64, i64, String, String)> = sqlx::query_as(
        "SELECT enabled, batch_size, batch_interval_secs, cutoff_secs, offer_template_key, taken_template_key
         FROM waitlist_settings WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some((enabled, batch_size, interval, cutoff, offer, taken)) => RefillSettings {
            enabled,
            batch_size,
            batch_interval: Duration::seconds(interval),
            cutoff: Duration::seconds(cutoff),
            offer_template_key: offer,
            taken_template_key: taken,
        },
        None => RefillSettings::default(),
    })
}

pub async fn save_settings(
    conn: &mut PgConnection,
    tenant: &str,
    s: &RefillSettings,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO waitlist_settings (tenant_id, enabled, batch_size, batch_interval_secs, cutoff_secs,
                                        offer_template_key, taken_template_key, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())
         ON CONFLICT (tenant_id) DO UPDATE SET enabled = EXCLUDED.enabled, batch_size = EXCLUDED.batch_size,
             batch_interval_secs = EXCLUDED.batch_interval_secs, cutoff_secs = EXCLUDED.cutoff_secs,
             offer_template_key = EXCLUDED.offer_template_key, taken_template_key = EXCLUDED.taken_template_key,
             updated_at = now()",
    )
    .bind(tenant)
    .bind(s.enabled)
    .bind(s.batch_size)
    .bind(s.batch_interval.num_seconds())
    .bind(s.cutoff.num_seconds())
    .bind(&s.offer_template_key)
    .bind(&s.taken_template_key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub fn settings_to_proto(s: &RefillSettings) -> pb::WaitlistSettings {
    pb::WaitlistSettings {
        enabled: s.enabled,
        batch_size: s.batch_size,
        batch_interval: Some(duration_to(s.batch_interval)),
        cutoff: Some(duration_to(s.cutoff)),
        offer_template_key: s.offer_template_key.clone(),
        taken_template_key: s.taken_template_key.clone(),
    }
}

// ---- entries ----

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EntryRow {
    pub entry_id: String,
    pub patient_id: String,
    pub practitioner_ids: Vec<String>,
    pub location_ids: Vec<String>,
    pub duration_secs: i64,
    pub earliest_at: Option<DateTime<Utc>>,
    pub latest_at: Option<DateTime<Utc>>,
    pub current_appointment_id: String,
    pub plan_id: String,
    pub note: String,
    pub source: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

const ENTRY: &str =
    "entry_id, patient_id, practitioner_ids, location_ids, duration_secs, earliest_at, latest_at,
    current_appointment_id, plan_id, note, source, active, created_at";

impl EntryRow {
    pub fn to_proto(&self) -> pb::WaitlistEntry {
        pb::WaitlistEntry {
            waitlist_entry_id: self.entry_id.clone(),
            patient_id: self.patient_id.clone(),
            practitioner_ids: self.practitioner_ids.clone(),
            location_ids: self.location_ids.clone(),
            duration: Some(duration_to(Duration::seconds(self.duration_secs))),
            earliest_time: self.earliest_at.map(timestamp),
            latest_time: self.latest_at.map(timestamp),
            current_appointment_id: self.current_appointment_id.clone(),
            plan_id: self.plan_id.clone(),
            note: self.note.clone(),
            source: self.source.clone(),
            create_time: Some(timestamp(self.created_at)),
            active: self.active,
        }
    }

    fn wants(&self) -> EntryWants {
        EntryWants {
            practitioner_ids: self.practitioner_ids.clone(),
            location_ids: self.location_ids.clone(),
            length: Duration::seconds(self.duration_secs),
            earliest: self.earliest_at,
            latest: self.latest_at,
        }
    }
}

/// An entry to write (from gRPC or the clinic's event).
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub entry_id: String,
    pub patient_id: String,
    pub practitioner_ids: Vec<String>,
    pub location_ids: Vec<String>,
    pub duration: Duration,
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
    pub current_appointment_id: String,
    pub plan_id: String,
    pub note: String,
    pub source: &'static str,
    pub active: bool,
    /// Orders upserts of the same entry (the event's occurred_at).
    pub record_at: DateTime<Utc>,
}

/// Writes an entry unless a newer version of it is known; an inactive one withdraws its queued offers.
pub async fn upsert_entry(
    conn: &mut PgConnection,
    tenant: &str,
    e: &NewEntry,
    now: DateTime<Utc>,
) -> Result<Option<EntryRow>> {
    let sql = format!(
        "INSERT INTO waitlist_entries (tenant_id, entry_id, patient_id, practitioner_ids, location_ids,
             duration_secs, earliest_at, latest_at, current_appointment_id, plan_id, note, source, active,
             record_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (tenant_id, entry_id) DO UPDATE SET patient_id = EXCLUDED.patient_id,
             practitioner_ids = EXCLUDED.practitioner_ids, location_ids = EXCLUDED.location_ids,
             duration_secs = EXCLUDED.duration_secs, earliest_at = EXCLUDED.earliest_at,
             latest_at = EXCLUDED.latest_at, current_appointment_id = EXCLUDED.current_appointment_id,
             plan_id = EXCLUDED.plan_id, note = EXCLUDED.note, active = EXCLUDED.active,
             record_at = EXCLUDED.record_at
         WHERE waitlist_entries.record_at <= EXCLUDED.record_at
         RETURNING {ENTRY}"
    );
    let row = sqlx::query_as::<sqlx::Postgres, EntryRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&e.entry_id)
        .bind(&e.patient_id)
        .bind(&e.practitioner_ids)
        .bind(&e.location_ids)
        .bind(e.duration.num_seconds())
        .bind(e.earliest)
        .bind(e.latest)
        .bind(&e.current_appointment_id)
        .bind(&e.plan_id)
        .bind(&e.note)
        .bind(e.source)
        .bind(e.active)
        .bind(e.record_at)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
    if !e.active {
        withdraw_queued(conn, tenant, "entry_id = $2", &e.entry_id).await?;
    }
    Ok(row)
}

async fn withdraw_queued(
    conn: &mut PgConnection,
    tenant: &str,
    filter: &str,
    value: &str,
) -> Result<u64> {
    let sql = format!(
        "UPDATE slot_offers SET state = 'withdrawn' WHERE tenant_id = $1 AND state = 'queued' AND {filter}"
    );
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(value)
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

pub async fn deactivate_entry(conn: &mut PgConnection, tenant: &str, entry_id: &str) -> Result<()> {
    let found = sqlx::query(
        "UPDATE waitlist_entries SET active = false WHERE tenant_id = $1 AND entry_id = $2",
    )
    .bind(tenant)
    .bind(entry_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if found == 0 {
        return Err(Error::not_found("waitlist entry", entry_id));
    }
    withdraw_queued(conn, tenant, "entry_id = $2", entry_id).await?;
    Ok(())
}

pub async fn list_entries(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    practitioner_id: &str,
    include_inactive: bool,
    limit: i64,
    after: Option<(DateTime<Utc>, String)>,
) -> Result<Vec<EntryRow>> {
    let (after_at, after_id) = after.unzip();
    let sql = format!(
        "SELECT {ENTRY} FROM waitlist_entries
         WHERE tenant_id = $1 AND ($2 = '' OR patient_id = $2)
           AND ($3 = '' OR practitioner_ids = '{{}}' OR $3 = ANY(practitioner_ids))
           AND ($4 OR active)
           AND ($5::timestamptz IS NULL OR (created_at, entry_id) > ($5, $6))
         ORDER BY created_at, entry_id LIMIT $7"
    );
    Ok(
        sqlx::query_as::<sqlx::Postgres, EntryRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(patient_id)
            .bind(practitioner_id)
            .bind(include_inactive)
            .bind(after_at)
            .bind(after_id.unwrap_or_default())
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?,
    )
}

// ---- slots and offers ----

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SlotRow {
    pub slot_id: Uuid,
    pub cancelled_appointment_id: String,
    pub start_at: DateTime<Utc>,
    pub duration_secs: i64,
    pub practitioner_id: String,
    pub location_id: String,
    pub state: String,
    pub batch_size: i32,
    pub batch_interval_secs: i64,
    pub cutoff_at: DateTime<Utc>,
    pub offer_template_key: String,
    pub taken_template_key: String,
    pub offers_sent: i32,
    pub candidate_count: i32,
    pub next_batch_at: Option<DateTime<Utc>>,
    pub claimed_offer_id: Option<Uuid>,
    pub claimed_patient_id: String,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

const SLOT: &str = "slot_id, cancelled_appointment_id, start_at, duration_secs, practitioner_id, location_id, state,
    batch_size, batch_interval_secs, cutoff_at, offer_template_key, taken_template_key, offers_sent,
    candidate_count, next_batch_at, claimed_offer_id, claimed_patient_id, opened_at, closed_at";

impl SlotRow {
    fn slot(&self) -> common::Slot {
        common::Slot {
            start_time: Some(timestamp(self.start_at)),
            duration: Some(duration_to(Duration::seconds(self.duration_secs))),
            practitioner_id: self.practitioner_id.clone(),
            location_id: self.location_id.clone(),
        }
    }

    pub fn state(&self) -> pb::OpenSlotState {
        match self.state.as_str() {
            "offering" => pb::OpenSlotState::Offering,
            "claimed" => pb::OpenSlotState::Claimed,
            "rebooked" => pb::OpenSlotState::Rebooked,
            "cutoff" => pb::OpenSlotState::Cutoff,
            "exhausted" => pb::OpenSlotState::Exhausted,
            "no_candidates" => pb::OpenSlotState::NoCandidates,
            _ => pb::OpenSlotState::Unspecified,
        }
    }

    pub fn to_proto(&self) -> pb::OpenSlot {
        pb::OpenSlot {
            slot_id: self.slot_id.to_string(),
            cancelled_appointment_id: self.cancelled_appointment_id.clone(),
            slot: Some(self.slot()),
            state: self.state() as i32,
            offers_sent: self.offers_sent,
            candidate_count: self.candidate_count,
            claimed_by_patient_id: self.claimed_patient_id.clone(),
            claimed_slot_offer_id: self
                .claimed_offer_id
                .map(|u| u.to_string())
                .unwrap_or_default(),
            open_time: Some(timestamp(self.opened_at)),
            close_time: self.closed_at.map(timestamp),
            next_batch_time: self
                .next_batch_at
                .filter(|_| self.state == "offering")
                .map(timestamp),
        }
    }
}

pub fn slot_state_text(state: pb::OpenSlotState) -> &'static str {
    match state {
        pb::OpenSlotState::Offering => "offering",
        pb::OpenSlotState::Claimed => "claimed",
        pb::OpenSlotState::Rebooked => "rebooked",
        pb::OpenSlotState::Cutoff => "cutoff",
        pb::OpenSlotState::Exhausted => "exhausted",
        pb::OpenSlotState::NoCandidates => "no_candidates",
        pb::OpenSlotState::Unspecified => "",
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OfferRow {
    pub offer_id: Uuid,
    pub slot_id: Uuid,
    pub patient_id: String,
    pub rank: i32,
    pub batch: i32,
    pub state: String,
    pub entry_id: String,
    pub case_kind: i16,
    pub case_id: String,
    pub current_appointment_id: String,
    pub value_minor: Option<i64>,
    pub value_currency: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub responded_at: Option<DateTime<Utc>>,
}

const OFFER: &str =
    "offer_id, slot_id, patient_id, rank, batch, state, entry_id, case_kind, case_id,
    current_appointment_id, value_minor, value_currency, sent_at, responded_at";

impl OfferRow {
    fn kind(&self) -> CaseKind {
        CaseKind::try_from(i32::from(self.case_kind)).unwrap_or(CaseKind::Unspecified)
    }

    pub fn to_proto(&self) -> pb::SlotOffer {
        let state = match self.state.as_str() {
            "queued" => pb::SlotOfferState::Queued,
            "sent" => pb::SlotOfferState::Sent,
            "claimed" => pb::SlotOfferState::Claimed,
            "declined" => pb::SlotOfferState::Declined,
            "taken" => pb::SlotOfferState::Taken,
            "withdrawn" => pb::SlotOfferState::Withdrawn,
            _ => pb::SlotOfferState::Unspecified,
        };
        pb::SlotOffer {
            slot_offer_id: self.offer_id.to_string(),
            slot_id: self.slot_id.to_string(),
            patient_id: self.patient_id.clone(),
            rank: self.rank,
            batch: self.batch,
            state: state as i32,
            waitlist_entry_id: self.entry_id.clone(),
            case_ref: case_ref(self.kind(), &self.case_id),
            send_time: self.sent_at.map(timestamp),
            respond_time: self.responded_at.map(timestamp),
        }
    }
}

pub async fn slot(
    conn: &mut PgConnection,
    tenant: &str,
    slot_id: Uuid,
    lock: bool,
) -> Result<SlotRow> {
    let sql = format!(
        "SELECT {SLOT} FROM open_slots WHERE tenant_id = $1 AND slot_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as::<sqlx::Postgres, SlotRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(slot_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::not_found("open slot", slot_id.to_string()))
}

pub async fn offers(conn: &mut PgConnection, tenant: &str, slot_id: Uuid) -> Result<Vec<OfferRow>> {
    let sql = format!(
        "SELECT {OFFER} FROM slot_offers WHERE tenant_id = $1 AND slot_id = $2 ORDER BY rank"
    );
    Ok(
        sqlx::query_as::<sqlx::Postgres, OfferRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(slot_id)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn offer(conn: &mut PgConnection, tenant: &str, offer_id: Uuid) -> Result<OfferRow> {
    let sql = format!("SELECT {OFFER} FROM slot_offers WHERE tenant_id = $1 AND offer_id = $2");
    sqlx::query_as::<sqlx::Postgres, OfferRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(offer_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::not_found("slot offer", offer_id.to_string()))
}

pub async fn list_slots(
    conn: &mut PgConnection,
    tenant: &str,
    states: &[&str],
    limit: i64,
    before: Option<Uuid>,
) -> Result<Vec<SlotRow>> {
    let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    let sql = format!(
        "SELECT {SLOT} FROM open_slots WHERE tenant_id = $1
           AND (cardinality($2::text[]) = 0 OR state = ANY($2))
           AND ($3::uuid IS NULL OR slot_id < $3)
         ORDER BY slot_id DESC LIMIT $4"
    );
    Ok(
        sqlx::query_as::<sqlx::Postgres, SlotRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(&states)
            .bind(before)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?,
    )
}

// ---- messages and events ----

fn recipient(patient_id: &str) -> Option<ev::Recipient> {
    Some(ev::Recipient {
        target: Some(ev::recipient::Target::PatientId(patient_id.to_string())),
    })
}

fn request(
    tenant: &str,
    slot: &SlotRow,
    offer: &OfferRow,
    key: String,
    template_key: &str,
    variables: HashMap<String, String>,
    now: DateTime<Utc>,
) -> ev::NotificationRequested {
    let kind = offer.kind();
    ev::NotificationRequested {
        event_id: new_id().to_string(),
        tenant_id: tenant.to_string(),
        occurred_at: Some(timestamp(now)),
        idempotency_key: key,
        channel: Channel::Sms as i32,
        template_key: template_key.to_string(),
        variables,
        category: CATEGORY.into(),
        // The category's own setting in notifications decides (slot_offers ships transactional).
        transactional: false,
        recipient: recipient(&offer.patient_id),
        case_ref: case_ref(kind, &offer.case_id),
        // Past the cut-off the offer is worthless: notifications suppresses it (EXPIRED) rather than
        // sending it after quiet hours end.
        expire_time: (slot.cutoff_at > now).then(|| timestamp(slot.cutoff_at)),
        plan_id: if kind == CaseKind::CasePresentation {
            offer.case_id.clone()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

fn slot_variables(slot: &SlotRow) -> HashMap<String, String> {
    let mut vars = HashMap::from([
        (
            "appointment_time".to_string(),
            slot.start_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        (
            "appointment_minutes".to_string(),
            (slot.duration_secs / 60).to_string(),
        ),
    ]);
    if !slot.practitioner_id.is_empty() {
        vars.insert("practitioner_id".into(), slot.practitioner_id.clone());
    }
    if !slot.location_id.is_empty() {
        vars.insert("location_id".into(), slot.location_id.clone());
    }
    vars
}

async fn send_offer(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    slot: &SlotRow,
    offer: &OfferRow,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut variables = slot_variables(slot);
    if let Some(links) = &store.links {
        variables.insert("slot_claim_url".into(), links.url(tenant, offer.offer_id));
    }
    let event = request(
        tenant,
        slot,
        offer,
        format!("offer:{}", offer.offer_id),
        &slot.offer_template_key,
        variables,
        now,
    );
    followup_platform::outbox::enqueue_event(conn, crate::INFO.name, &event).await?;
    Ok(())
}

async fn send_taken(
    conn: &mut PgConnection,
    tenant: &str,
    slot: &SlotRow,
    offer: &OfferRow,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut event = request(
        tenant,
        slot,
        offer,
        format!("taken:{}", offer.offer_id),
        &slot.taken_template_key,
        slot_variables(slot),
        now,
    );
    // "Already taken" is worth sending until the slot starts.
    event.expire_time = (slot.start_at > now).then(|| timestamp(slot.start_at));
    followup_platform::outbox::enqueue_event(conn, crate::INFO.name, &event).await?;
    Ok(())
}

async fn closed_event(
    conn: &mut PgConnection,
    tenant: &str,
    slot: &SlotRow,
    reason: ev::SlotCloseReason,
    offers_sent: i32,
    now: DateTime<Utc>,
) -> Result<()> {
    let event = ev::SlotClosed {
        event_id: new_id().to_string(),
        tenant_id: tenant.to_string(),
        occurred_at: Some(timestamp(now)),
        slot_id: slot.slot_id.to_string(),
        cancelled_appointment_id: slot.cancelled_appointment_id.clone(),
        reason: reason as i32,
        offers_sent,
        open_duration: Some(duration_to(now - slot.opened_at)),
    };
    followup_platform::outbox::enqueue_event(conn, crate::INFO.name, &event).await?;
    Ok(())
}

// ---- opening a slot ----

/// An open case whose next visit is with the slot's practitioner: kind, id, patient, status, value
/// (minor, currency), since.
type CaseCandidateRow = (
    i16,
    String,
    String,
    Option<i16>,
    Option<i64>,
    Option<String>,
    DateTime<Utc>,
);

/// The candidates for a slot, ranked.
async fn candidates(
    conn: &mut PgConnection,
    tenant: &str,
    spec: &SlotSpec,
    cancelling_patient: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Candidate>> {
    #[derive(sqlx::FromRow)]
    struct EntryCandidate {
        #[sqlx(flatten)]
        entry: EntryRow,
        status: Option<i16>,
        value_minor: Option<i64>,
        value_currency: Option<String>,
    }
    let sql = format!(
        "SELECT {}, c.status, c.value_minor, c.value_currency
         FROM waitlist_entries w
         LEFT JOIN cases c ON c.tenant_id = w.tenant_id AND c.case_kind = 1 AND c.case_id = w.plan_id
                          AND w.plan_id <> ''
         WHERE w.tenant_id = $1 AND w.active
         ORDER BY w.created_at LIMIT 5000",
        ENTRY
            .split(',')
            .map(|c| format!("w.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let entries = sqlx::query_as::<sqlx::Postgres, EntryCandidate>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
    let status = |s: Option<i16>| s.and_then(|s| CaseStatus::try_from(i32::from(s)).ok());
    let money = |m: Option<i64>, c: Option<String>| m.zip(c);
    let mut found: Vec<Candidate> = entries
        .into_iter()
        .filter(|e| e.entry.wants().fits(spec, now))
        .map(|e| Candidate {
            patient_id: e.entry.patient_id.clone(),
            source: Source::Entry(e.entry.entry_id.clone()),
            case: (!e.entry.plan_id.is_empty())
                .then(|| (CaseKind::CasePresentation as i16, e.entry.plan_id.clone())),
            status: status(e.status),
            value: money(e.value_minor, e.value_currency),
            since: e.entry.created_at,
            current_appointment_id: e.entry.current_appointment_id.clone(),
        })
        .collect();
    if !spec.practitioner_id.is_empty() {
        let rows: Vec<CaseCandidateRow> =
            sqlx::query_as(
                "SELECT c.case_kind, c.case_id, c.patient_id, c.status, c.value_minor, c.value_currency,
                        COALESCE(c.sent_at, c.updated_at)
                 FROM cases c
                 WHERE c.tenant_id = $1 AND c.open AND c.patient_id <> ''
                   AND ((c.case_kind = 1 AND c.status IN (2, 3, 4)
                         AND c.visit_practitioners -> ((c.sessions_done + 1)::text) ? $2)
                     OR (c.case_kind = 2 AND c.owner_staff_id = $2))
                   AND NOT EXISTS (SELECT 1 FROM appointments a
                        WHERE a.tenant_id = c.tenant_id AND a.state = 'booked' AND a.start_at > $3
                          AND ((c.case_kind = 1 AND a.plan_id = c.case_id)
                            OR (c.case_kind = 2 AND a.care_case_id = c.case_id)))
                 ORDER BY c.updated_at DESC LIMIT 2000",
            )
            .bind(tenant)
            .bind(&spec.practitioner_id)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        found.extend(
            rows.into_iter()
                .map(|(kind, id, patient, s, minor, currency, since)| Candidate {
                    patient_id: patient,
                    source: Source::Case,
                    case: Some((kind, id)),
                    status: status(s),
                    value: money(minor, currency),
                    since,
                    current_appointment_id: String::new(),
                }),
        );
    }
    let ids: Vec<String> = found.iter().map(|c| c.patient_id.clone()).collect();
    let excluded: Vec<String> = sqlx::query_scalar(
        "SELECT patient_id FROM consents WHERE tenant_id = $1 AND patient_id = ANY($2) AND opted_out
             AND channel IN (0, 1) AND category IN ('', $3)
         UNION SELECT patient_id FROM patients WHERE tenant_id = $1 AND patient_id = ANY($2) AND archived",
    )
    .bind(tenant)
    .bind(&ids)
    .bind(CATEGORY)
    .fetch_all(&mut *conn)
    .await?;
    let mut exclude: HashSet<String> = excluded.into_iter().collect();
    exclude.insert(cancelling_patient.to_string());
    Ok(waitlist::rank(found, &exclude))
}

/// A cancelled appointment's slot: ranks the candidates, publishes slot_opened and sends the first
/// batch in the consumer's transaction. Idempotent per cancelled appointment.
pub async fn on_cancelled(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    c: &ev::AppointmentCancelled,
) -> Result<()> {
    let Some(a) = c.appointment.as_ref() else {
        return Ok(());
    };
    let Some(slot) = a.slot.as_ref() else {
        return Ok(());
    };
    let start = slot
        .start_time
        .as_ref()
        .and_then(followup_platform::event::from_timestamp);
    let length = slot
        .duration
        .as_ref()
        .and_then(|d| crate::convert::duration_from(d, "duration").ok());
    let (Some(start), Some(length)) = (start, length) else {
        return Ok(());
    };
    if !c.slot_refillable || a.appointment_id.is_empty() || length <= Duration::zero() {
        return Ok(());
    }
    let settings = settings(conn, tenant).await?;
    let now = store.now();
    let cutoff_at = start - settings.cutoff;
    if !settings.enabled || now >= cutoff_at {
        return Ok(());
    }
    let spec = SlotSpec {
        start,
        length,
        practitioner_id: slot.practitioner_id.clone(),
        location_id: slot.location_id.clone(),
    };
    let slot_id = new_id();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO open_slots (tenant_id, slot_id, cancelled_appointment_id, start_at, duration_secs,
             practitioner_id, location_id, state, batch_size, batch_interval_secs, cutoff_at,
             offer_template_key, taken_template_key, opened_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'offering', $8, $9, $10, $11, $12, $13)
         ON CONFLICT (tenant_id, cancelled_appointment_id) DO NOTHING RETURNING slot_id",
    )
    .bind(tenant)
    .bind(slot_id)
    .bind(&a.appointment_id)
    .bind(start)
    .bind(length.num_seconds())
    .bind(&spec.practitioner_id)
    .bind(&spec.location_id)
    .bind(settings.batch_size)
    .bind(settings.batch_interval.num_seconds())
    .bind(cutoff_at)
    .bind(&settings.offer_template_key)
    .bind(&settings.taken_template_key)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_none() {
        return Ok(());
    }
    let ranked = candidates(conn, tenant, &spec, &a.patient_id, now).await?;
    let count = i32::try_from(ranked.len()).unwrap_or(i32::MAX);
    if !ranked.is_empty() {
        let mut ids = Vec::with_capacity(ranked.len());
        let (mut patients, mut ranks, mut batches, mut entries) = (vec![], vec![], vec![], vec![]);
        let (mut kinds, mut cases, mut currents, mut minors, mut currencies) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (i, c) in ranked.iter().enumerate() {
            let rank = i32::try_from(i + 1).unwrap_or(i32::MAX);
            ids.push(new_id());
            patients.push(c.patient_id.clone());
            ranks.push(rank);
            batches.push(waitlist::batch_of(rank, settings.batch_size));
            entries.push(match &c.source {
                Source::Entry(id) => id.clone(),
                Source::Case => String::new(),
            });
            let (kind, case) = c.case.clone().unwrap_or((0, String::new()));
            kinds.push(kind);
            cases.push(case);
            currents.push(c.current_appointment_id.clone());
            minors.push(c.value.as_ref().map(|v| v.0));
            currencies.push(c.value.as_ref().map(|v| v.1.clone()));
        }
        sqlx::query(
            "INSERT INTO slot_offers (tenant_id, offer_id, slot_id, patient_id, rank, batch, state, entry_id,
                 case_kind, case_id, current_appointment_id, value_minor, value_currency)
             SELECT $1, o, $2, p, r, b, 'queued', e, k, c, a, m, cur
             FROM UNNEST($3::uuid[], $4::text[], $5::int4[], $6::int4[], $7::text[], $8::int2[], $9::text[],
                         $10::text[], $11::int8[], $12::text[]) AS t(o, p, r, b, e, k, c, a, m, cur)",
        )
        .bind(tenant)
        .bind(slot_id)
        .bind(&ids)
        .bind(&patients)
        .bind(&ranks)
        .bind(&batches)
        .bind(&entries)
        .bind(&kinds)
        .bind(&cases)
        .bind(&currents)
        .bind(&minors)
        .bind(&currencies)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE open_slots SET candidate_count = $3 WHERE tenant_id = $1 AND slot_id = $2")
        .bind(tenant)
        .bind(slot_id)
        .bind(count)
        .execute(&mut *conn)
        .await?;
    let row = self::slot(conn, tenant, slot_id, true).await?;
    let opened = ev::SlotOpened {
        event_id: new_id().to_string(),
        tenant_id: tenant.to_string(),
        occurred_at: Some(timestamp(now)),
        slot_id: slot_id.to_string(),
        cancelled_appointment_id: a.appointment_id.clone(),
        slot: Some(row.slot()),
        candidate_count: count,
        offer_cutoff_time: Some(timestamp(cutoff_at)),
    };
    followup_platform::outbox::enqueue_event(conn, crate::INFO.name, &opened).await?;
    tracing::info!(tenant, slot_id = %slot_id, appointment_id = %a.appointment_id, candidates = count, "slot opened");
    if ranked.is_empty() {
        close(
            conn,
            tenant,
            &row,
            "no_candidates",
            ev::SlotCloseReason::NoCandidates,
            now,
        )
        .await?;
        return Ok(());
    }
    next_batch(store, conn, tenant, &row, now).await
}

/// Sends the slot's next queued batch (or closes it at its cut-off), and sets when to look again.
async fn next_batch(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    slot: &SlotRow,
    now: DateTime<Utc>,
) -> Result<()> {
    if now >= slot.cutoff_at {
        close(
            conn,
            tenant,
            slot,
            "cutoff",
            ev::SlotCloseReason::Cutoff,
            now,
        )
        .await?;
        return Ok(());
    }
    let sql = format!(
        "UPDATE slot_offers SET state = 'sent', sent_at = $3
         WHERE tenant_id = $1 AND slot_id = $2 AND state = 'queued'
           AND batch = (SELECT min(batch) FROM slot_offers WHERE tenant_id = $1 AND slot_id = $2 AND state = 'queued')
         RETURNING {OFFER}"
    );
    let sent = sqlx::query_as::<sqlx::Postgres, OfferRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(slot.slot_id)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    for offer in &sent {
        send_offer(store, conn, tenant, slot, offer, now).await?;
    }
    let queued: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM slot_offers WHERE tenant_id = $1 AND slot_id = $2 AND state = 'queued')",
    )
    .bind(tenant)
    .bind(slot.slot_id)
    .fetch_one(&mut *conn)
    .await?;
    // With more to send, the next batch after the interval; with none, the timer's next look is the
    // cut-off, when offering stops.
    let next = if queued {
        (now + Duration::seconds(slot.batch_interval_secs)).min(slot.cutoff_at)
    } else {
        slot.cutoff_at
    };
    sqlx::query(
        "UPDATE open_slots SET offers_sent = offers_sent + $3, next_batch_at = $4
         WHERE tenant_id = $1 AND slot_id = $2",
    )
    .bind(tenant)
    .bind(slot.slot_id)
    .bind(i32::try_from(sent.len()).unwrap_or(i32::MAX))
    .bind(next)
    .execute(&mut *conn)
    .await?;
    wake_timers(conn).await
}

/// Ends offering: open offers are withdrawn (those already sent are told the slot is gone) and
/// slot_closed is published.
async fn close(
    conn: &mut PgConnection,
    tenant: &str,
    slot: &SlotRow,
    state: &str,
    reason: ev::SlotCloseReason,
    now: DateTime<Utc>,
) -> Result<()> {
    let sql = format!(
        "UPDATE slot_offers SET state = 'withdrawn'
         WHERE tenant_id = $1 AND slot_id = $2 AND state IN ('queued', 'sent')
         RETURNING {OFFER}"
    );
    let withdrawn = sqlx::query_as::<sqlx::Postgres, OfferRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(slot.slot_id)
        .fetch_all(&mut *conn)
        .await?;
    if state == "rebooked" {
        for offer in withdrawn.iter().filter(|o| o.sent_at.is_some()) {
            send_taken(conn, tenant, slot, offer, now).await?;
        }
    }
    let offers_sent: i32 = sqlx::query_scalar(
        "UPDATE open_slots SET state = $3, closed_at = $4, next_batch_at = NULL
         WHERE tenant_id = $1 AND slot_id = $2 RETURNING offers_sent",
    )
    .bind(tenant)
    .bind(slot.slot_id)
    .bind(state)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    closed_event(conn, tenant, slot, reason, offers_sent, now).await?;
    tracing::info!(tenant, slot_id = %slot.slot_id, state, "slot closed");
    Ok(())
}

/// The timer's share: slots whose next batch (or cut-off) is due, claimed across clinics.
pub async fn fire_due(store: &Store, conn: &mut PgConnection, limit: i64) -> Result<usize> {
    let now = store.now();
    let due: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT tenant_id, slot_id FROM open_slots WHERE state = 'offering' AND next_batch_at <= $1
         ORDER BY next_batch_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    for (tenant, slot_id) in &due {
        let row = slot(conn, tenant, *slot_id, false).await?;
        next_batch(store, conn, tenant, &row, now).await?;
    }
    Ok(due.len())
}

pub async fn next_due(conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>> {
    Ok(
        sqlx::query_scalar("SELECT min(next_batch_at) FROM open_slots WHERE state = 'offering'")
            .fetch_one(&mut *conn)
            .await?,
    )
}

// ---- claims, declines, replies, rebookings ----

/// How a claim ended: won (slot_claimed published) or refused (the state change committed all the same:
/// the offer is marked taken and the patient told).
#[derive(Clone, Debug)]
pub enum Claimed {
    Won {
        offer: Box<OfferRow>,
        slot: Box<SlotRow>,
    },
    Refused(ClaimRefused),
}

pub async fn claim(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    offer_id: Uuid,
    method: ev::ClaimMethod,
    staff_id: &str,
) -> Result<Claimed> {
    let now = store.now();
    let offer = offer(conn, tenant, offer_id).await?;
    // Every claim on the slot takes its row lock: the first to commit wins, the others see its state.
    let slot = slot(conn, tenant, offer.slot_id, true).await?;
    let offer = self::offer(conn, tenant, offer_id).await?;
    if let Err(refused) = waitlist::claim(
        &slot.state,
        &offer.state,
        slot.start_at,
        now,
        method == ev::ClaimMethod::Staff,
    ) {
        // Someone else claimed first: this patient tried now. The offer records when, and a patient
        // who replied YES by SMS hears "already taken" in answer (the link's page and staff on the
        // phone answer for themselves). Patients who never try hear nothing.
        if refused == ClaimRefused::AlreadyTaken && offer.state == "sent" {
            sqlx::query(
                "UPDATE slot_offers SET state = 'taken', responded_at = $3 WHERE tenant_id = $1 AND offer_id = $2",
            )
            .bind(tenant)
            .bind(offer_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if method == ev::ClaimMethod::SmsReply {
                send_taken(conn, tenant, &slot, &offer, now).await?;
            }
        }
        tracing::info!(tenant, slot_id = %slot.slot_id, offer_id = %offer_id, why = refused.message(), "claim refused");
        return Ok(Claimed::Refused(refused));
    }
    sqlx::query(
        "UPDATE slot_offers SET state = 'claimed', responded_at = $3 WHERE tenant_id = $1 AND offer_id = $2",
    )
    .bind(tenant)
    .bind(offer_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    // Offers still queued are withdrawn (never sent, never heard of). Those sent stay SENT: the
    // patients are told it is taken only if and when they reply YES (see the refusal above), not
    // with a message nobody asked for.
    sqlx::query(
        "UPDATE slot_offers SET state = 'withdrawn'
         WHERE tenant_id = $1 AND slot_id = $2 AND offer_id <> $3 AND state = 'queued'",
    )
    .bind(tenant)
    .bind(slot.slot_id)
    .bind(offer_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE open_slots SET state = 'claimed', claimed_offer_id = $3, claimed_patient_id = $4,
             closed_at = $5, next_batch_at = NULL
         WHERE tenant_id = $1 AND slot_id = $2",
    )
    .bind(tenant)
    .bind(slot.slot_id)
    .bind(offer_id)
    .bind(&offer.patient_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let value = match (&offer.value_minor, &offer.value_currency) {
        (Some(minor), Some(currency)) if !currency.is_empty() => Some(common::Money {
            amount_minor: *minor,
            currency: currency.clone(),
        }),
        _ => None,
    };
    let claimed = ev::SlotClaimed {
        event_id: new_id().to_string(),
        tenant_id: tenant.to_string(),
        occurred_at: Some(timestamp(now)),
        slot_id: slot.slot_id.to_string(),
        slot_offer_id: offer_id.to_string(),
        cancelled_appointment_id: slot.cancelled_appointment_id.clone(),
        slot: Some(slot.slot()),
        patient_id: offer.patient_id.clone(),
        method: method as i32,
        waitlist_entry_id: offer.entry_id.clone(),
        current_appointment_id: offer.current_appointment_id.clone(),
        case_ref: case_ref(offer.kind(), &offer.case_id),
        value,
        claimed_by_staff_id: staff_id.to_string(),
    };
    followup_platform::outbox::enqueue_event(conn, crate::INFO.name, &claimed).await?;
    closed_event(
        conn,
        tenant,
        &slot,
        ev::SlotCloseReason::Claimed,
        slot.offers_sent,
        now,
    )
    .await?;
    tracing::info!(tenant, slot_id = %slot.slot_id, offer_id = %offer_id, "slot claimed");
    let slot = self::slot(conn, tenant, slot.slot_id, false).await?;
    let offer = self::offer(conn, tenant, offer_id).await?;
    Ok(Claimed::Won {
        offer: Box::new(offer),
        slot: Box::new(slot),
    })
}

/// The patient declines; when every offer of the slot is answered, the slot is exhausted.
pub async fn decline(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    offer_id: Uuid,
    no_more_offers: bool,
) -> Result<OfferRow> {
    let now = store.now();
    let current = offer(conn, tenant, offer_id).await?;
    let slot = slot(conn, tenant, current.slot_id, true).await?;
    let updated = sqlx::query(
        "UPDATE slot_offers SET state = 'declined', responded_at = $3, no_more_offers = $4
         WHERE tenant_id = $1 AND offer_id = $2 AND state IN ('queued', 'sent')",
    )
    .bind(tenant)
    .bind(offer_id)
    .bind(now)
    .bind(no_more_offers)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(Error::precondition(
            "OFFER_ANSWERED",
            offer_id.to_string(),
            format!("the offer is {} and cannot be declined", current.state),
        ));
    }
    let open: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM slot_offers WHERE tenant_id = $1 AND slot_id = $2
             AND state IN ('queued', 'sent'))",
    )
    .bind(tenant)
    .bind(slot.slot_id)
    .fetch_one(&mut *conn)
    .await?;
    if !open && slot.state == "offering" {
        close(
            conn,
            tenant,
            &slot,
            "exhausted",
            ev::SlotCloseReason::Exhausted,
            now,
        )
        .await?;
    }
    offer(conn, tenant, offer_id).await
}

/// A patient's reply: YES claims, NO declines the open offer it answers (the offer it replies to, else
/// the patient's latest offer still sent).
pub async fn on_reply(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    r: &ev::PatientReplied,
) -> Result<()> {
    let kind = ev::ReplyKind::try_from(r.kind).unwrap_or(ev::ReplyKind::Unspecified);
    if !matches!(kind, ev::ReplyKind::Affirmative | ev::ReplyKind::Negative)
        || r.patient_id.is_empty()
    {
        return Ok(());
    }
    let named = r
        .in_reply_to
        .as_ref()
        .and_then(|m| m.idempotency_key.strip_prefix("offer:"))
        .and_then(|id| Uuid::parse_str(id).ok());
    let offer_id = match named {
        Some(id) => Some(id),
        None => {
            sqlx::query_scalar(
                "SELECT o.offer_id FROM slot_offers o
             JOIN open_slots s ON s.tenant_id = o.tenant_id AND s.slot_id = o.slot_id
             WHERE o.tenant_id = $1 AND o.patient_id = $2 AND o.state = 'sent'
             ORDER BY (s.state = 'offering') DESC, o.sent_at DESC LIMIT 1",
            )
            .bind(tenant)
            .bind(&r.patient_id)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    let Some(offer_id) = offer_id else {
        return Ok(());
    };
    // The reply must come from the offer's patient.
    let Ok(found) = offer(conn, tenant, offer_id).await else {
        return Ok(());
    };
    if found.patient_id != r.patient_id {
        return Ok(());
    }
    if kind == ev::ReplyKind::Affirmative {
        claim(store, conn, tenant, offer_id, ev::ClaimMethod::SmsReply, "").await?;
    } else if matches!(found.state.as_str(), "queued" | "sent") {
        decline(store, conn, tenant, offer_id, false).await?;
    }
    Ok(())
}

/// A booking: the fill of a claimed slot (it names our offer) changes nothing; a booking of an offering
/// slot's time by the clinic (same practitioner, location and start, or the cancelled appointment
/// itself) withdraws the open offers.
pub async fn on_booked(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    b: &ev::AppointmentBooked,
) -> Result<()> {
    if !b.slot_offer_id.is_empty() {
        return Ok(());
    }
    let Some(a) = b.appointment.as_ref() else {
        return Ok(());
    };
    let start = a
        .slot
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .and_then(followup_platform::event::from_timestamp);
    let (practitioner, location) = a
        .slot
        .as_ref()
        .map(|s| (s.practitioner_id.as_str(), s.location_id.as_str()))
        .unwrap_or(("", ""));
    let sql = format!(
        "SELECT {SLOT} FROM open_slots WHERE tenant_id = $1 AND state = 'offering'
           AND (cancelled_appointment_id = $2
             OR (start_at = $3 AND practitioner_id = $4 AND location_id = $5))
         FOR UPDATE"
    );
    let slots = sqlx::query_as::<sqlx::Postgres, SlotRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&a.appointment_id)
        .bind(start)
        .bind(practitioner)
        .bind(location)
        .fetch_all(&mut *conn)
        .await?;
    let now = store.now();
    for slot in &slots {
        close(
            conn,
            tenant,
            slot,
            "rebooked",
            ev::SlotCloseReason::Rebooked,
            now,
        )
        .await?;
    }
    Ok(())
}

/// An opt-out of SMS or of offers withdraws the patient's queued offers.
pub async fn on_opted_out(
    conn: &mut PgConnection,
    tenant: &str,
    o: &ev::ContactOptedOut,
) -> Result<()> {
    let channel_hits = o.channel == 0 || o.channel == Channel::Sms as i32;
    let category_hits = o.category.is_empty() || o.category == CATEGORY;
    if channel_hits && category_hits && !o.patient_id.is_empty() {
        withdraw_queued(conn, tenant, "patient_id = $2", &o.patient_id).await?;
    }
    Ok(())
}

/// A clinic event's entry.
pub fn entry_from_event(e: &ev::WaitlistEntryUpserted, at: DateTime<Utc>) -> Option<NewEntry> {
    if e.waitlist_entry_id.is_empty() || e.patient_id.is_empty() {
        return None;
    }
    let time =
        |ts: Option<&prost_types::Timestamp>| ts.and_then(followup_platform::event::from_timestamp);
    Some(NewEntry {
        entry_id: e.waitlist_entry_id.clone(),
        patient_id: e.patient_id.clone(),
        practitioner_ids: e.practitioner_ids.clone(),
        location_ids: e.location_ids.clone(),
        duration: e
            .duration
            .as_ref()
            .and_then(|d| crate::convert::duration_from(d, "duration").ok())
            .unwrap_or(waitlist::MIN_ENTRY_DURATION),
        earliest: time(e.earliest_time.as_ref()),
        latest: time(e.latest_time.as_ref()),
        current_appointment_id: e.current_appointment_id.clone(),
        plan_id: e.plan_id.clone(),
        note: e.note.clone(),
        source: "clinic_event",
        active: e.active,
        record_at: at,
    })
}
