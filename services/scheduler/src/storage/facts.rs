//! Case facts as event-carried state: what the clinic's systems, plans, engagement, cases and
//! notifications told us, kept idempotent (an event applied twice changes nothing) and order-tolerant
//! (each group of facts remembers the time of the event it came from; an older event never overwrites a
//! newer one).

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use followup_proto::followup::common::v1::{CaseKind, CaseStatus};
use followup_proto::followup::events::v1 as ev;
use sqlx::PgConnection;

use crate::convert::money_from;
use crate::domain::facts::{CaseFacts, Money};
use crate::domain::schedule::{local_date, parse_date};
use crate::error::Result;

const PRESENTATION: i16 = CaseKind::CasePresentation as i16;
const CARE_CASE: i16 = CaseKind::CareCase as i16;

/// Statuses after which a presentation is closed.
pub fn is_closed(status: CaseStatus) -> bool {
    matches!(
        status,
        CaseStatus::PatientBooked
            | CaseStatus::PatientRejected
            | CaseStatus::TreatmentCompleted
            | CaseStatus::Superseded
    )
}

fn split(m: Option<&followup_proto::followup::common::v1::Money>) -> (Option<i64>, Option<String>) {
    match money_from(m) {
        Some(m) => (Some(m.amount_minor), Some(m.currency)),
        None => (None, None),
    }
}

// ---- patients ----

/// Serialises the work on one patient across concurrent transactions (two consumer batches, a timer):
/// a booking and a no-show of the same patient, or two sessions of one care case, are then applied one
/// after the other, each seeing the other's effect. Held until the transaction ends.
pub async fn lock_patient(conn: &mut PgConnection, tenant: &str, patient_id: &str) -> Result<()> {
    if patient_id.is_empty() {
        return Ok(());
    }
    followup_platform::db::lock_keys(conn, &[patient_lock_key(tenant, patient_id)]).await?;
    Ok(())
}

/// The advisory lock key of a patient's facts: the consumers' runner takes a batch's keys up front in
/// one order ([`followup_platform::db::lock_keys`]); [`lock_patient`] takes the same key again.
pub fn patient_lock_key(tenant: &str, patient_id: &str) -> String {
    format!("{tenant}/{patient_id}")
}

pub async fn patient_upserted(
    conn: &mut PgConnection,
    e: &ev::PatientUpserted,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO patients (tenant_id, patient_id, time_zone, archived, record_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, patient_id) DO UPDATE SET
             time_zone = EXCLUDED.time_zone, archived = EXCLUDED.archived, record_at = EXCLUDED.record_at
         WHERE patients.record_at IS NULL OR patients.record_at <= EXCLUDED.record_at",
    )
    .bind(&e.tenant_id)
    .bind(&e.patient_id)
    .bind(&e.time_zone)
    .bind(e.archived)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Which per-patient time an event moves forward.
#[derive(Clone, Copy, Debug)]
pub enum PatientTime {
    Attended,
    Booked,
    Replied,
}

pub async fn touch_patient(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    what: PatientTime,
    at: DateTime<Utc>,
) -> Result<()> {
    if patient_id.is_empty() {
        return Ok(());
    }
    let column = match what {
        PatientTime::Attended => "last_attended_at",
        PatientTime::Booked => "last_booked_at",
        PatientTime::Replied => "last_replied_at",
    };
    let sql = format!(
        "INSERT INTO patients (tenant_id, patient_id, {column}) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, patient_id) DO UPDATE SET
             {column} = GREATEST(patients.{column}, EXCLUDED.{column})"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(patient_id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct PatientRow {
    pub time_zone: String,
    pub archived: bool,
    pub last_attended_at: Option<DateTime<Utc>>,
    pub last_booked_at: Option<DateTime<Utc>>,
    pub last_replied_at: Option<DateTime<Utc>>,
}

pub async fn patient(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
) -> Result<PatientRow> {
    let row = sqlx::query_as::<sqlx::Postgres, PatientRow>(
        "SELECT time_zone, archived, last_attended_at, last_booked_at, last_replied_at
         FROM patients WHERE tenant_id = $1 AND patient_id = $2",
    )
    .bind(tenant)
    .bind(patient_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.unwrap_or_default())
}

/// Records an opt-out or opt-in, newest wins.
pub async fn consent(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    channel: i32,
    category: &str,
    opted_out: bool,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO consents (tenant_id, patient_id, channel, category, opted_out, changed_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, patient_id, channel, category) DO UPDATE SET
             opted_out = EXCLUDED.opted_out, changed_at = EXCLUDED.changed_at
         WHERE consents.changed_at <= EXCLUDED.changed_at",
    )
    .bind(tenant)
    .bind(patient_id)
    .bind(channel as i16)
    .bind(category)
    .bind(opted_out)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether the patient opted out of every channel for this category (or for every category): then a
/// rule of the category does not enroll them at all.
pub async fn opted_out_of(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    category: &str,
) -> Result<bool> {
    let out: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM consents WHERE tenant_id = $1 AND patient_id = $2
             AND channel = 0 AND category IN ('', $3) AND opted_out)",
    )
    .bind(tenant)
    .bind(patient_id)
    .bind(category)
    .fetch_one(&mut *conn)
    .await?;
    Ok(out)
}

// ---- appointments and invoices ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppointmentState {
    Booked,
    Cancelled,
    NoShow,
    Attended,
}

impl AppointmentState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Booked => "booked",
            Self::Cancelled => "cancelled",
            Self::NoShow => "no_show",
            Self::Attended => "attended",
        }
    }
}

/// Records an appointment's latest state (by event time).
pub async fn appointment(
    conn: &mut PgConnection,
    tenant: &str,
    a: &ev::Appointment,
    state: AppointmentState,
    at: DateTime<Utc>,
    replaces: &str,
) -> Result<()> {
    let start = a
        .slot
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .and_then(followup_platform::event::from_timestamp);
    let booked_at = (state == AppointmentState::Booked).then_some(at);
    sqlx::query(
        "INSERT INTO appointments (tenant_id, appointment_id, patient_id, plan_id, care_case_id, start_at,
                                   state, state_at, booked_at, replaces_appointment_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (tenant_id, appointment_id) DO UPDATE SET
             patient_id   = CASE WHEN appointments.state_at <= EXCLUDED.state_at THEN EXCLUDED.patient_id ELSE appointments.patient_id END,
             plan_id      = CASE WHEN appointments.state_at <= EXCLUDED.state_at THEN EXCLUDED.plan_id ELSE appointments.plan_id END,
             care_case_id = CASE WHEN appointments.state_at <= EXCLUDED.state_at THEN EXCLUDED.care_case_id ELSE appointments.care_case_id END,
             start_at     = CASE WHEN appointments.state_at <= EXCLUDED.state_at THEN COALESCE(EXCLUDED.start_at, appointments.start_at) ELSE appointments.start_at END,
             state        = CASE WHEN appointments.state_at <= EXCLUDED.state_at THEN EXCLUDED.state ELSE appointments.state END,
             state_at     = GREATEST(appointments.state_at, EXCLUDED.state_at),
             booked_at    = GREATEST(appointments.booked_at, EXCLUDED.booked_at),
             replaces_appointment_id = CASE WHEN EXCLUDED.replaces_appointment_id <> ''
                 THEN EXCLUDED.replaces_appointment_id ELSE appointments.replaces_appointment_id END",
    )
    .bind(tenant)
    .bind(&a.appointment_id)
    .bind(&a.patient_id)
    .bind(&a.plan_id)
    .bind(&a.care_case_id)
    .bind(start)
    .bind(state.as_str())
    .bind(at)
    .bind(booked_at)
    .bind(replaces)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Times the patient booked in `[from, to]`, or whether a booking names `appointment_id` as the one it
/// replaces (a reschedule): what the cancellation grace and "no next visit" checks read.
pub async fn booked_between(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    replacing: &str,
) -> Result<bool> {
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM appointments WHERE tenant_id = $1 AND patient_id = $2
                            AND booked_at BETWEEN $3 AND $4)
             OR EXISTS (SELECT 1 FROM appointments WHERE tenant_id = $1 AND $5 <> ''
                            AND replaces_appointment_id = $5)",
    )
    .bind(tenant)
    .bind(patient_id)
    .bind(from)
    .bind(to)
    .bind(replacing)
    .fetch_one(&mut *conn)
    .await?;
    Ok(found)
}

/// Whether the patient has a booked appointment starting after `now`.
pub async fn has_future_booking(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM appointments WHERE tenant_id = $1 AND patient_id = $2
                            AND state = 'booked' AND start_at > $3)",
    )
    .bind(tenant)
    .bind(patient_id)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(found)
}

pub async fn invoice(
    conn: &mut PgConnection,
    e: &ev::InvoiceIssued,
    at: DateTime<Utc>,
) -> Result<()> {
    let Some(amount) = money_from(e.amount.as_ref()) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO invoices (tenant_id, invoice_id, patient_id, plan_id, care_case_id, amount_minor, currency, issued_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&e.tenant_id)
    .bind(&e.invoice_id)
    .bind(&e.patient_id)
    .bind(&e.plan_id)
    .bind(&e.care_case_id)
    .bind(amount.amount_minor)
    .bind(&amount.currency)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---- care cases ----

pub async fn care_case_upserted(
    conn: &mut PgConnection,
    e: &ev::CareCaseUpserted,
    at: DateTime<Utc>,
) -> Result<()> {
    let (invoiceable_minor, invoiceable_currency) = split(e.invoiceable_amount.as_ref());
    let open = e.status != followup_proto::followup::common::v1::CareCaseStatus::Closed as i32;
    sqlx::query(
        "INSERT INTO cases (tenant_id, case_kind, case_id, patient_id, name, open, issue_date, expiry_date,
                            max_sessions, invoiceable_minor, invoiceable_currency, value_minor, value_currency,
                            owner_staff_id, record_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $11, $12, $13, now())
         ON CONFLICT (tenant_id, case_kind, case_id) DO UPDATE SET
             patient_id = EXCLUDED.patient_id, name = EXCLUDED.name, open = EXCLUDED.open,
             issue_date = EXCLUDED.issue_date, expiry_date = EXCLUDED.expiry_date,
             max_sessions = EXCLUDED.max_sessions, invoiceable_minor = EXCLUDED.invoiceable_minor,
             invoiceable_currency = EXCLUDED.invoiceable_currency, value_minor = EXCLUDED.value_minor,
             value_currency = EXCLUDED.value_currency, owner_staff_id = EXCLUDED.owner_staff_id,
             record_at = EXCLUDED.record_at, updated_at = now()
         WHERE cases.record_at IS NULL OR cases.record_at <= EXCLUDED.record_at",
    )
    .bind(&e.tenant_id)
    .bind(CARE_CASE)
    .bind(&e.care_case_id)
    .bind(&e.patient_id)
    .bind(&e.name)
    .bind(open)
    .bind(parse_date(&e.issue_date))
    .bind(parse_date(&e.expiry_date))
    .bind(e.max_sessions.max(0))
    .bind(invoiceable_minor)
    .bind(invoiceable_currency)
    .bind(&e.practitioner_id)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---- case presentations ----

/// Makes sure a presentation row exists (events may arrive before plan_created or plan_sent).
async fn ensure_presentation(
    conn: &mut PgConnection,
    tenant: &str,
    plan_id: &str,
    patient_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cases (tenant_id, case_kind, case_id, patient_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, case_kind, case_id) DO UPDATE SET
             patient_id = CASE WHEN cases.patient_id = '' THEN EXCLUDED.patient_id ELSE cases.patient_id END",
    )
    .bind(tenant)
    .bind(PRESENTATION)
    .bind(plan_id)
    .bind(patient_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves a presentation's status, unless a newer status is already known.
pub async fn presentation_status(
    conn: &mut PgConnection,
    tenant: &str,
    plan_id: &str,
    patient_id: &str,
    status: CaseStatus,
    at: DateTime<Utc>,
) -> Result<()> {
    ensure_presentation(conn, tenant, plan_id, patient_id).await?;
    sqlx::query(
        "UPDATE cases SET status = $4, open = $5, status_at = $6, updated_at = now()
         WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3
           AND (status_at IS NULL OR status_at <= $6)",
    )
    .bind(tenant)
    .bind(PRESENTATION)
    .bind(plan_id)
    .bind(status as i16)
    .bind(!is_closed(status))
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn plan_created(
    conn: &mut PgConnection,
    e: &ev::PlanCreated,
    at: DateTime<Utc>,
) -> Result<()> {
    ensure_presentation(conn, &e.tenant_id, &e.plan_id, &e.patient_id).await?;
    let (value_minor, value_currency) = split(e.value.as_ref());
    sqlx::query(
        "UPDATE cases SET name = CASE WHEN record_at IS NULL THEN $4 ELSE name END,
             value_minor = CASE WHEN record_at IS NULL THEN $5 ELSE value_minor END,
             value_currency = CASE WHEN record_at IS NULL THEN $6 ELSE value_currency END,
             owner_staff_id = CASE WHEN owner_at IS NULL OR owner_at <= $7 THEN $8 ELSE owner_staff_id END,
             owner_at = GREATEST(owner_at, $7), updated_at = now()
         WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3",
    )
    .bind(&e.tenant_id)
    .bind(PRESENTATION)
    .bind(&e.plan_id)
    .bind(&e.title)
    .bind(value_minor)
    .bind(value_currency)
    .bind(at)
    .bind(&e.owner_staff_id)
    .execute(&mut *conn)
    .await?;
    presentation_status(
        conn,
        &e.tenant_id,
        &e.plan_id,
        &e.patient_id,
        CaseStatus::DraftNotSent,
        at,
    )
    .await
}

pub async fn plan_sent(
    conn: &mut PgConnection,
    e: &ev::PlanSent,
    at: DateTime<Utc>,
    clinic: Tz,
) -> Result<()> {
    ensure_presentation(conn, &e.tenant_id, &e.plan_id, &e.patient_id).await?;
    let sent_at = e
        .sent_time
        .as_ref()
        .and_then(followup_platform::event::from_timestamp)
        .unwrap_or(at);
    let (value_minor, value_currency) = split(e.value.as_ref());
    let applied = sqlx::query(
        "UPDATE cases SET name = $4, sent_at = $5, issue_date = $6, expiry_date = $7,
             max_sessions = $8, sessions_done = GREATEST(sessions_done, $9),
             value_minor = $10, value_currency = $11, invoiceable_minor = $10, invoiceable_currency = $11,
             portal_url = $12, record_at = $13, visit_practitioners = $14, updated_at = now()
         WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3
           AND (record_at IS NULL OR record_at <= $13)",
    )
    .bind(&e.tenant_id)
    .bind(PRESENTATION)
    .bind(&e.plan_id)
    .bind(&e.title)
    .bind(sent_at)
    .bind(local_date(sent_at, clinic))
    .bind(parse_date(&e.quote_expiry_date))
    .bind(e.visit_count.max(0))
    .bind(e.visits_completed.max(0))
    .bind(value_minor)
    .bind(value_currency)
    .bind(&e.portal_url)
    .bind(at)
    .bind(visit_practitioners(&e.items))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if applied > 0 && !e.owner_staff_id.is_empty() {
        owner(conn, &e.tenant_id, &e.plan_id, &e.owner_staff_id, at).await?;
    }
    let viewed: bool = sqlx::query_scalar(
        "SELECT viewed FROM cases WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3",
    )
    .bind(&e.tenant_id)
    .bind(PRESENTATION)
    .bind(&e.plan_id)
    .fetch_one(&mut *conn)
    .await?;
    let status = if viewed {
        CaseStatus::SentViewed
    } else {
        CaseStatus::SentNotViewed
    };
    presentation_status(conn, &e.tenant_id, &e.plan_id, &e.patient_id, status, at).await
}

/// The practitioners of each visit of a plan, `{"1": ["dr-ana"]}` (items with no visit are left out).
fn visit_practitioners(items: &[ev::PlanItemSummary]) -> serde_json::Value {
    let mut visits: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for item in items
        .iter()
        .filter(|i| i.visit > 0 && !i.practitioner_id.is_empty())
    {
        let list = visits.entry(item.visit.to_string()).or_default();
        if !list.contains(&item.practitioner_id) {
            list.push(item.practitioner_id.clone());
        }
    }
    serde_json::to_value(visits).unwrap_or_default()
}

pub async fn owner(
    conn: &mut PgConnection,
    tenant: &str,
    plan_id: &str,
    owner: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE cases SET owner_staff_id = $4, owner_at = $5, updated_at = now()
         WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3 AND (owner_at IS NULL OR owner_at <= $5)",
    )
    .bind(tenant)
    .bind(PRESENTATION)
    .bind(plan_id)
    .bind(owner)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn plan_approved(conn: &mut PgConnection, e: &ev::PlanApproved) -> Result<()> {
    ensure_presentation(conn, &e.tenant_id, &e.plan_id, &e.patient_id).await?;
    sqlx::query("UPDATE cases SET approved = true, updated_at = now() WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3")
        .bind(&e.tenant_id)
        .bind(PRESENTATION)
        .bind(&e.plan_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn plan_revised(
    conn: &mut PgConnection,
    e: &ev::PlanRevised,
    at: DateTime<Utc>,
) -> Result<()> {
    ensure_presentation(conn, &e.tenant_id, &e.plan_id, &e.patient_id).await?;
    let (value_minor, value_currency) = split(e.value.as_ref());
    sqlx::query(
        "UPDATE cases SET value_minor = $4, value_currency = $5, invoiceable_minor = $4,
             invoiceable_currency = $5, approved = false, record_at = $6, updated_at = now()
         WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3 AND (record_at IS NULL OR record_at <= $6)",
    )
    .bind(&e.tenant_id)
    .bind(PRESENTATION)
    .bind(&e.plan_id)
    .bind(value_minor)
    .bind(value_currency)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn item_completed(
    conn: &mut PgConnection,
    e: &ev::PlanItemCompleted,
    at: DateTime<Utc>,
) -> Result<()> {
    ensure_presentation(conn, &e.tenant_id, &e.plan_id, &e.patient_id).await?;
    let (invoiced_minor, invoiced_currency) = split(e.completed_value.as_ref());
    sqlx::query(
        "UPDATE cases SET sessions_done = GREATEST(sessions_done, $4), max_sessions = GREATEST(max_sessions, $5),
             invoiced_minor = CASE WHEN progress_at IS NULL OR progress_at <= $8 THEN $6 ELSE invoiced_minor END,
             invoiced_currency = CASE WHEN progress_at IS NULL OR progress_at <= $8 THEN $7 ELSE invoiced_currency END,
             progress_at = GREATEST(progress_at, $8), updated_at = now()
         WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3",
    )
    .bind(&e.tenant_id)
    .bind(PRESENTATION)
    .bind(&e.plan_id)
    .bind(e.visits_completed.max(0))
    .bind(e.visit_count.max(0))
    .bind(invoiced_minor)
    .bind(invoiced_currency)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The first view: viewed, and SENT_VIEWED unless the case already moved on.
pub async fn viewed(
    conn: &mut PgConnection,
    tenant: &str,
    plan_id: &str,
    patient_id: &str,
    first_view: DateTime<Utc>,
) -> Result<()> {
    ensure_presentation(conn, tenant, plan_id, patient_id).await?;
    sqlx::query(
        "UPDATE cases SET viewed = true, first_viewed_at = LEAST(first_viewed_at, $4),
             status = CASE WHEN status IS NULL OR status = $5 THEN $6 ELSE status END,
             updated_at = now()
         WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3",
    )
    .bind(tenant)
    .bind(PRESENTATION)
    .bind(plan_id)
    .bind(first_view)
    .bind(CaseStatus::SentNotViewed as i16)
    .bind(CaseStatus::SentViewed as i16)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn case_status_changed(
    conn: &mut PgConnection,
    e: &ev::CaseStatusChanged,
    at: DateTime<Utc>,
) -> Result<()> {
    let status = CaseStatus::try_from(e.to_status).unwrap_or(CaseStatus::Unspecified);
    if status == CaseStatus::Unspecified {
        return Ok(());
    }
    presentation_status(conn, &e.tenant_id, &e.case_id, &e.patient_id, status, at).await?;
    let (value_minor, value_currency) = split(e.value.as_ref());
    if value_minor.is_some() {
        sqlx::query(
            "UPDATE cases SET value_minor = $4, value_currency = $5,
                 invoiceable_minor = COALESCE(invoiceable_minor, $4), invoiceable_currency = COALESCE(invoiceable_currency, $5)
             WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3 AND status_at = $6",
        )
        .bind(&e.tenant_id)
        .bind(PRESENTATION)
        .bind(&e.case_id)
        .bind(value_minor)
        .bind(value_currency)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    if !e.owner_staff_id.is_empty() {
        owner(conn, &e.tenant_id, &e.case_id, &e.owner_staff_id, at).await?;
    }
    Ok(())
}

// ---- reading ----

#[derive(sqlx::FromRow)]
struct CaseRow {
    patient_id: String,
    name: String,
    open: bool,
    issue_date: Option<NaiveDate>,
    expiry_date: Option<NaiveDate>,
    max_sessions: i32,
    sessions_done: i32,
    invoiced_minor: Option<i64>,
    invoiced_currency: Option<String>,
    invoiceable_minor: Option<i64>,
    invoiceable_currency: Option<String>,
    status: Option<i16>,
    viewed: bool,
    sent_at: Option<DateTime<Utc>>,
    value_minor: Option<i64>,
    value_currency: Option<String>,
    updated_at: DateTime<Utc>,
}

/// A case's facts as conditions read them at `now`, its patient and when its facts last changed; None
/// when nothing is known about the case.
pub struct LoadedFacts {
    pub facts: CaseFacts,
    pub patient_id: String,
    pub updated_at: DateTime<Utc>,
}

fn money(minor: Option<i64>, currency: Option<String>) -> Option<Money> {
    match (minor, currency) {
        (Some(minor), Some(currency)) if !currency.is_empty() => Some(Money::new(minor, currency)),
        _ => None,
    }
}

pub async fn load(
    conn: &mut PgConnection,
    tenant: &str,
    kind: CaseKind,
    case_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<LoadedFacts>> {
    let row = sqlx::query_as::<sqlx::Postgres, CaseRow>(
        "SELECT patient_id, name, open, issue_date, expiry_date, max_sessions, sessions_done,
                invoiced_minor, invoiced_currency, invoiceable_minor, invoiceable_currency, status, viewed,
                sent_at, value_minor, value_currency, updated_at
         FROM cases WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3",
    )
    .bind(tenant)
    .bind(kind as i16)
    .bind(case_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let link = if kind == CaseKind::CareCase {
        "care_case_id"
    } else {
        "plan_id"
    };
    // Bookings count towards a case (past or future, not cancelled, not missed); a session is done once
    // it is in the past and was neither cancelled nor a no-show.
    let sql = format!(
        "SELECT count(*) FILTER (WHERE state IN ('booked', 'attended'))::int4,
                count(*) FILTER (WHERE state = 'attended' OR (state = 'booked' AND start_at <= $3))::int4
         FROM appointments WHERE tenant_id = $1 AND {link} = $2"
    );
    let (booked, done): (i32, i32) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(case_id)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    let invoiceable = money(row.invoiceable_minor, row.invoiceable_currency.clone());
    let (sessions_done, total_invoiced) = if kind == CaseKind::CareCase {
        let totals: Vec<(String, i64)> = sqlx::query_as(
            "SELECT currency, sum(amount_minor)::int8 FROM invoices
             WHERE tenant_id = $1 AND care_case_id = $2 GROUP BY currency ORDER BY currency",
        )
        .bind(tenant)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await?;
        // The invoiced total in the case's currency; with no amount set, the one currency invoiced.
        let total = match &invoiceable {
            Some(limit) => totals
                .iter()
                .find(|(c, _)| *c == limit.currency)
                .map(|(c, n)| Money::new(*n, c.clone())),
            None if totals.len() == 1 => totals.first().map(|(c, n)| Money::new(*n, c.clone())),
            None => None,
        };
        (done, total)
    } else {
        (
            row.sessions_done,
            money(row.invoiced_minor, row.invoiced_currency),
        )
    };
    let facts = CaseFacts {
        kind,
        name: row.name,
        open: row.open,
        issue_date: row.issue_date,
        expiry_date: row.expiry_date,
        max_sessions: row.max_sessions,
        sessions_booked: booked,
        sessions_done,
        total_invoiced,
        invoiceable_amount: invoiceable,
        presentation_status: row
            .status
            .and_then(|s| CaseStatus::try_from(i32::from(s)).ok()),
        viewed: row.viewed,
        sent_at: row.sent_at,
        value: money(row.value_minor, row.value_currency),
    };
    Ok(Some(LoadedFacts {
        facts,
        patient_id: row.patient_id,
        updated_at: row.updated_at,
    }))
}

/// The facts a condition reads for an enrollment: the case's, or empty facts of the rule's kind when the
/// enrollment has no case (a patient-level trigger).
pub async fn for_condition(
    conn: &mut PgConnection,
    tenant: &str,
    case: Option<(CaseKind, &str)>,
    fallback_kind: CaseKind,
    now: DateTime<Utc>,
) -> Result<CaseFacts> {
    Ok(match case {
        Some((kind, id)) => load(conn, tenant, kind, id, now)
            .await?
            .map(|l| l.facts)
            .unwrap_or_else(|| CaseFacts::empty(kind)),
        None => CaseFacts::empty(fallback_kind),
    })
}

/// A case's patient, owner and portal link (for messages).
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct CaseContact {
    pub patient_id: String,
    pub owner_staff_id: String,
    pub portal_url: String,
    pub open: bool,
    pub status: Option<i16>,
    pub approved: bool,
    pub viewed: bool,
    pub first_viewed_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub expiry_date: Option<NaiveDate>,
    /// When the presentation status was last set (the event's time).
    pub status_at: Option<DateTime<Utc>>,
}

pub async fn contact(
    conn: &mut PgConnection,
    tenant: &str,
    kind: CaseKind,
    case_id: &str,
) -> Result<Option<CaseContact>> {
    Ok(sqlx::query_as::<sqlx::Postgres, CaseContact>(
        "SELECT patient_id, owner_staff_id, portal_url, open, status, approved, viewed, first_viewed_at,
                sent_at, expiry_date, status_at
         FROM cases WHERE tenant_id = $1 AND case_kind = $2 AND case_id = $3",
    )
    .bind(tenant)
    .bind(kind as i16)
    .bind(case_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Sessions done of a care case at `now` (the sessions-threshold trigger).
pub async fn care_case_sessions_done(
    conn: &mut PgConnection,
    tenant: &str,
    care_case_id: &str,
    now: DateTime<Utc>,
) -> Result<i32> {
    Ok(sqlx::query_scalar(
        "SELECT count(*)::int4 FROM appointments WHERE tenant_id = $1 AND care_case_id = $2
             AND (state = 'attended' OR (state = 'booked' AND start_at <= $3))",
    )
    .bind(tenant)
    .bind(care_case_id)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?)
}

/// Records what notifications reported for a step's message ("sent", "delivered", "failed",
/// "suppressed: opted_out", "task created"), newest report wins.
pub async fn step_outcome(
    conn: &mut PgConnection,
    tenant: &str,
    idempotency_key: &str,
    outcome: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    let Some((enrollment, step)) = idempotency_key.split_once(':') else {
        return Ok(());
    };
    let (Ok(enrollment), Ok(step)) = (enrollment.parse::<uuid::Uuid>(), step.parse::<i32>()) else {
        // Not a rule step's key (a slot offer, another purpose): nothing of ours to update.
        return Ok(());
    };
    sqlx::query(
        "UPDATE step_runs SET outcome = $4, outcome_at = $5
         WHERE tenant_id = $1 AND enrollment_id = $2 AND step_index = $3
           AND (outcome_at IS NULL OR outcome_at <= $5)",
    )
    .bind(tenant)
    .bind(enrollment)
    .bind(step)
    .bind(outcome)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
