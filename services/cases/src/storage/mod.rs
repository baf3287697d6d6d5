//! The cases database: every query the service runs. Every statement filters by tenant.

pub mod counts;
pub mod directory;
pub mod list;
pub mod settings;
pub mod timeline;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::case::{CaseState, Presentation};
use crate::domain::ranking;
use crate::error::Error;

/// The NOTIFY channel a commit that changed cases signals, so every replica can push WatchCases updates.
pub const WATCH_CHANNEL: &str = "followup_cases";

/// A case as stored, with what is kept beside its state.
#[derive(Clone, Debug)]
pub struct CaseRecord {
    pub state: CaseState,
    pub patient_name: String,
    pub owner_name: String,
    pub representative: bool,
    pub presentation: Option<Presentation>,
}

pub type CaseKey = (String, Uuid);

#[derive(sqlx::FromRow)]
struct StateRow {
    case_id: Uuid,
    state: Json<CaseState>,
    is_representative: bool,
}

/// Loads cases and locks them for this transaction, in key order (so two writers never wait on each
/// other in a cycle).
pub async fn lock_cases(
    conn: &mut PgConnection,
    keys: &[CaseKey],
) -> Result<HashMap<CaseKey, (CaseState, bool)>, Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<Uuid> = keys.iter().map(|(_, id)| *id).collect();
    let rows = sqlx::query_as::<sqlx::Postgres, StateRow>(
        "SELECT c.case_id, c.state, c.is_representative
         FROM cases c
         JOIN unnest($1::text[], $2::uuid[]) AS k(tenant_id, case_id)
           ON c.tenant_id = k.tenant_id AND c.case_id = k.case_id
         WHERE c.state <> 'null'::jsonb
         ORDER BY c.tenant_id, c.case_id
         FOR UPDATE OF c",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let state = row.state.0;
            debug_assert_eq!(state.case_id, row.case_id);
            (
                (state.tenant_id.clone(), state.case_id),
                (state, row.is_representative),
            )
        })
        .collect())
}

/// Claims the keys of cases about to be created, so two transactions never both create the same case
/// (the second would overwrite the first: a row that does not exist yet cannot be locked). Inserts a
/// placeholder row for each key; returns the keys whose placeholder is ours. A key another transaction
/// created meanwhile is not returned: the caller locks and reads that case instead.
pub async fn claim_new_cases(
    conn: &mut PgConnection,
    keys: &[CaseKey],
) -> Result<Vec<CaseKey>, Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<Uuid> = keys.iter().map(|(_, id)| *id).collect();
    Ok(sqlx::query_as::<sqlx::Postgres, (String, Uuid)>(
        "INSERT INTO cases (tenant_id, case_id, patient_id, status, is_open, sent_sort, priority_tier,
                            contact_sort, last_activity_at, created_at, state)
         SELECT k.tenant_id, k.case_id, '', 1, true, now(), 4, now(), now(), now(), 'null'::jsonb
         FROM unnest($1::text[], $2::uuid[]) AS k(tenant_id, case_id)
         ORDER BY k.tenant_id, k.case_id
         ON CONFLICT (tenant_id, case_id) DO NOTHING
         RETURNING tenant_id, case_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// Removes placeholders [`claim_new_cases`] made for cases that were not created after all.
pub async fn delete_placeholders(conn: &mut PgConnection, keys: &[CaseKey]) -> Result<(), Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<Uuid> = keys.iter().map(|(_, id)| *id).collect();
    sqlx::query(
        "DELETE FROM cases c USING unnest($1::text[], $2::uuid[]) AS k(tenant_id, case_id)
         WHERE c.tenant_id = k.tenant_id AND c.case_id = k.case_id AND c.state = 'null'::jsonb",
    )
    .bind(&tenants)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The members of an alternative group, locked. Settling a group is serialised per group (an advisory
/// lock), so two transactions creating options of one group at once cannot both think theirs is alone.
pub async fn lock_group(
    conn: &mut PgConnection,
    tenant_id: &str,
    group_id: &str,
) -> Result<Vec<(CaseState, bool)>, Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 6))")
        .bind(format!("{tenant_id}/{group_id}"))
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query_as::<sqlx::Postgres, StateRow>(
        "SELECT case_id, state, is_representative FROM cases
         WHERE tenant_id = $1 AND alternative_group_id = $2
         ORDER BY case_id
         FOR UPDATE",
    )
    .bind(tenant_id)
    .bind(group_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.state.0, r.is_representative))
        .collect())
}

/// The keys of some patients' cases (for events that name a patient, not a plan). Not locked here: the
/// caller locks them with the rest, in key order.
pub async fn patient_case_keys(
    conn: &mut PgConnection,
    patients: &[(String, String)],
) -> Result<Vec<CaseKey>, Error> {
    if patients.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = patients.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<&str> = patients.iter().map(|(_, p)| p.as_str()).collect();
    Ok(sqlx::query_as::<sqlx::Postgres, (String, Uuid)>(
        "SELECT c.tenant_id, c.case_id
         FROM cases c
         JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS k(tenant_id, patient_id)
           ON c.tenant_id = k.tenant_id AND c.patient_id = k.patient_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// Serialises writers that join a case to its patient's name: a case created while the patient's record
/// arrives in another transaction would otherwise miss the name (neither sees the other's uncommitted
/// row). Locks are taken in hash order, so two writers never wait on each other in a cycle.
pub async fn lock_patients(conn: &mut PgConnection, keys: &[String]) -> Result<(), Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(h)) FROM (
             SELECT DISTINCT hashtextextended(k, 7) AS h FROM unnest($1::text[]) AS k
             ORDER BY 1 OFFSET 0
         ) AS sorted",
    )
    .bind(keys)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub fn patient_lock_key(tenant_id: &str, patient_id: &str) -> String {
    format!("{tenant_id}/{patient_id}")
}

/// A case to write: its state, a new presentation when a send brought one, and whether it counts in
/// totals (always true outside alternative groups).
pub struct CaseWrite<'a> {
    pub state: &'a CaseState,
    pub presentation: Option<&'a Presentation>,
    pub representative: bool,
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt {
        case_id: String::new(),
        reason: e.to_string(),
    })
}

/// Inserts or updates cases in one statement. The sort and filter columns are derived from the state
/// here, so they never disagree with it.
pub async fn write_cases(conn: &mut PgConnection, writes: &[CaseWrite<'_>]) -> Result<(), Error> {
    if writes.is_empty() {
        return Ok(());
    }
    let n = writes.len();
    let mut tenant = Vec::with_capacity(n);
    let mut case_id = Vec::with_capacity(n);
    let mut patient = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut open = Vec::with_capacity(n);
    let mut owner: Vec<Option<String>> = Vec::with_capacity(n);
    let mut value = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut group: Vec<Option<String>> = Vec::with_capacity(n);
    let mut representative = Vec::with_capacity(n);
    let mut viewed = Vec::with_capacity(n);
    let mut first_sent: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut last_sent: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut sent_sort = Vec::with_capacity(n);
    let mut tier = Vec::with_capacity(n);
    let mut contact = Vec::with_capacity(n);
    let mut activity = Vec::with_capacity(n);
    let mut due: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut state = Vec::with_capacity(n);
    let mut presentation: Vec<Option<String>> = Vec::with_capacity(n);
    for write in writes {
        let s = write.state;
        tenant.push(s.tenant_id.as_str());
        case_id.push(s.case_id);
        patient.push(s.patient_id.as_str());
        status.push(s.status.number() as i16);
        open.push(s.open());
        owner.push(s.owner_staff_id.clone());
        value.push(s.value.as_ref().map_or(0, |m| m.amount_minor));
        currency.push(s.value.as_ref().map_or("", |m| m.currency.as_str()));
        group.push(s.alternative_group_id.clone());
        representative.push(write.representative);
        viewed.push(s.viewed);
        first_sent.push(s.first_sent_at);
        last_sent.push(s.last_sent_at);
        sent_sort.push(s.last_sent_at.unwrap_or(s.created_at));
        tier.push(ranking::tier(s));
        contact.push(s.contact_time());
        activity.push(s.last_activity_at);
        due.push(s.response_due_at);
        created.push(s.created_at);
        state.push(json(s)?);
        presentation.push(write.presentation.map(json).transpose()?);
    }
    sqlx::query(
        "INSERT INTO cases AS c (tenant_id, case_id, patient_id, patient_name, patient_search, status,
             is_open, owner_staff_id, value_minor, currency, alternative_group_id, is_representative,
             viewed, first_sent_at, last_sent_at, sent_sort, priority_tier, contact_sort,
             last_activity_at, response_due_at, created_at, state, presentation)
         SELECT u.tenant_id, u.case_id, u.patient_id, coalesce(p.display_name, ''),
                coalesce(p.search, ''), u.status, u.is_open, u.owner, u.value_minor, u.currency,
                u.grp, u.rep, u.viewed, u.first_sent, u.last_sent, u.sent_sort,
                u.tier, u.contact, u.activity, u.due, u.created, u.state::jsonb,
                u.presentation::jsonb
         FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int2[], $5::bool[], $6::text[],
                     $7::int8[], $8::text[], $9::text[], $10::bool[], $11::bool[],
                     $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::int2[],
                     $16::timestamptz[], $17::timestamptz[], $18::timestamptz[], $19::timestamptz[],
                     $20::text[], $21::text[])
              AS u(tenant_id, case_id, patient_id, status, is_open, owner, value_minor, currency,
                   grp, rep, viewed, first_sent, last_sent, sent_sort, tier, contact, activity, due,
                   created, state, presentation)
         LEFT JOIN patients p ON p.tenant_id = u.tenant_id AND p.patient_id = u.patient_id
         ON CONFLICT (tenant_id, case_id) DO UPDATE SET
             patient_id = excluded.patient_id,
             patient_name = CASE WHEN excluded.patient_name <> '' THEN excluded.patient_name
                                 ELSE c.patient_name END,
             patient_search = CASE WHEN excluded.patient_name <> '' THEN excluded.patient_search
                                   ELSE c.patient_search END,
             status = excluded.status,
             is_open = excluded.is_open,
             owner_staff_id = excluded.owner_staff_id,
             value_minor = excluded.value_minor,
             currency = excluded.currency,
             alternative_group_id = excluded.alternative_group_id,
             is_representative = excluded.is_representative,
             viewed = excluded.viewed,
             first_sent_at = excluded.first_sent_at,
             last_sent_at = excluded.last_sent_at,
             sent_sort = excluded.sent_sort,
             priority_tier = excluded.priority_tier,
             contact_sort = excluded.contact_sort,
             last_activity_at = excluded.last_activity_at,
             response_due_at = excluded.response_due_at,
             created_at = excluded.created_at,
             updated_at = now(),
             state = excluded.state,
             presentation = coalesce(excluded.presentation, c.presentation)",
    )
    .bind(&tenant)
    .bind(&case_id)
    .bind(&patient)
    .bind(&status)
    .bind(&open)
    .bind(&owner)
    .bind(&value)
    .bind(&currency)
    .bind(&group)
    .bind(&representative)
    .bind(&viewed)
    .bind(&first_sent)
    .bind(&last_sent)
    .bind(&sent_sort)
    .bind(&tier)
    .bind(&contact)
    .bind(&activity)
    .bind(&due)
    .bind(&created)
    .bind(&state)
    .bind(&presentation)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RecordRow {
    state: Json<CaseState>,
    patient_name: String,
    owner_name: Option<String>,
    is_representative: bool,
    presentation: Option<Json<Presentation>>,
}

/// One case with its presentation and names, for GetCase.
pub async fn get_case(
    conn: &mut PgConnection,
    tenant_id: &str,
    case_id: Uuid,
) -> Result<Option<CaseRecord>, Error> {
    let row = sqlx::query_as::<sqlx::Postgres, RecordRow>(
        "SELECT c.state, c.patient_name, s.display_name AS owner_name, c.is_representative,
                c.presentation
         FROM cases c
         LEFT JOIN staff s ON s.tenant_id = c.tenant_id AND s.staff_id = c.owner_staff_id
         WHERE c.tenant_id = $1 AND c.case_id = $2",
    )
    .bind(tenant_id)
    .bind(case_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| CaseRecord {
        state: r.state.0,
        patient_name: r.patient_name,
        owner_name: r.owner_name.unwrap_or_default(),
        representative: r.is_representative,
        presentation: r.presentation.map(|p| p.0),
    }))
}

/// Several cases by key, with names (no presentation), for WatchCases and the engine's answers.
pub async fn get_cases(
    conn: &mut PgConnection,
    keys: &[CaseKey],
) -> Result<HashMap<CaseKey, CaseRecord>, Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<Uuid> = keys.iter().map(|(_, id)| *id).collect();
    let rows = sqlx::query_as::<sqlx::Postgres, RecordRow>(
        "SELECT c.state, c.patient_name, s.display_name AS owner_name, c.is_representative,
                NULL::jsonb AS presentation
         FROM cases c
         JOIN unnest($1::text[], $2::uuid[]) AS k(tenant_id, case_id)
           ON c.tenant_id = k.tenant_id AND c.case_id = k.case_id
         LEFT JOIN staff s ON s.tenant_id = c.tenant_id AND s.staff_id = c.owner_staff_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let state = r.state.0;
            (
                (state.tenant_id.clone(), state.case_id),
                CaseRecord {
                    state,
                    patient_name: r.patient_name,
                    owner_name: r.owner_name.unwrap_or_default(),
                    representative: r.is_representative,
                    presentation: None,
                },
            )
        })
        .collect())
}

/// Cases whose response window has ended, claimed for this transaction. Rows another replica holds are
/// skipped, so replicas share the work without doing any case twice.
pub async fn claim_due_responses(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<CaseState>, Error> {
    let rows = sqlx::query_as::<sqlx::Postgres, StateRow>(
        "SELECT case_id, state, is_representative FROM cases
         WHERE response_due_at <= $1
         ORDER BY response_due_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.state.0).collect())
}

/// Tells every replica's WatchCases hub which cases changed (delivered at commit).
pub async fn notify_watchers(conn: &mut PgConnection, payloads: &[String]) -> Result<(), Error> {
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(WATCH_CHANNEL)
        .bind(payloads)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records a refilled slot (idempotent per offer).
pub async fn record_slot_refill(
    conn: &mut PgConnection,
    tenant_id: &str,
    slot_offer_id: &str,
    case_id: Option<Uuid>,
    claimed_at: DateTime<Utc>,
    value_minor: i64,
    currency: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO slot_refills (tenant_id, slot_offer_id, case_id, claimed_at, value_minor, currency)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, slot_offer_id) DO NOTHING",
    )
    .bind(tenant_id)
    .bind(slot_offer_id)
    .bind(case_id)
    .bind(claimed_at)
    .bind(value_minor)
    .bind(currency)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One owner's open queue: (currency, case count, waiting count, representative value) rows.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OwnerQueueRow {
    pub owner_staff_id: String,
    pub currency: String,
    pub open_count: i64,
    pub waiting_count: i64,
    pub value: i64,
}

/// Per owner and currency: the open cases in the queue, those waiting for a response, their value.
pub async fn owner_queues(
    conn: &mut PgConnection,
    tenant_id: &str,
) -> Result<Vec<OwnerQueueRow>, Error> {
    Ok(sqlx::query_as::<sqlx::Postgres, OwnerQueueRow>(
        "SELECT owner_staff_id, currency, count(*)::int8 AS open_count,
                (count(*) FILTER (WHERE status = 4))::int8 AS waiting_count,
                coalesce(sum(value_minor) FILTER (WHERE is_representative), 0)::int8 AS value
         FROM cases
         WHERE tenant_id = $1 AND owner_staff_id IS NOT NULL
           AND priority_tier <= $2
         GROUP BY owner_staff_id, currency
         ORDER BY owner_staff_id, currency",
    )
    .bind(tenant_id)
    .bind(crate::domain::ranking::LAST_QUEUE_TIER)
    .fetch_all(&mut *conn)
    .await?)
}

#[derive(sqlx::FromRow)]
struct ReportRow {
    state: Json<CaseState>,
    is_representative: bool,
}

/// Cases first sent in [start, end), optionally of one owner, for the leakage report.
pub async fn report_cases(
    conn: &mut PgConnection,
    tenant_id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    owner: Option<&str>,
) -> Result<Vec<(CaseState, bool)>, Error> {
    let rows = sqlx::query_as::<sqlx::Postgres, ReportRow>(
        "SELECT state, is_representative FROM cases
         WHERE tenant_id = $1 AND first_sent_at >= $2 AND first_sent_at < $3
           AND ($4::text IS NULL OR owner_key = $4)",
    )
    .bind(tenant_id)
    .bind(start)
    .bind(end)
    .bind(owner)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.state.0, r.is_representative))
        .collect())
}

/// Slots refilled in [start, end), with or without a value (currency '' = none), with the owner of the
/// case they served (if known).
pub async fn report_slots(
    conn: &mut PgConnection,
    tenant_id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    owner: Option<&str>,
) -> Result<Vec<(i64, String, Option<String>)>, Error> {
    Ok(
        sqlx::query_as::<sqlx::Postgres, (i64, String, Option<String>)>(
            "SELECT s.value_minor, s.currency, c.owner_staff_id
         FROM slot_refills s
         LEFT JOIN cases c ON c.tenant_id = s.tenant_id AND c.case_id = s.case_id
         WHERE s.tenant_id = $1 AND s.claimed_at >= $2 AND s.claimed_at < $3
           AND ($4::text IS NULL OR c.owner_key = $4)",
        )
        .bind(tenant_id)
        .bind(start)
        .bind(end)
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?,
    )
}

/// Moves the end of every running response window of a clinic to the new window length (the rule of
/// `domain::case::response_due`: from the first view, or from a staff reopen).
pub async fn reschedule_windows(
    conn: &mut PgConnection,
    tenant_id: &str,
    settings: &crate::domain::CaseSettings,
) -> Result<u64, Error> {
    let done = sqlx::query(
        "WITH due AS (
             SELECT case_id,
                    GREATEST((state->>'first_view_at')::timestamptz,
                             CASE WHEN (state->>'status_by_staff')::bool
                                  THEN (state->>'status_at')::timestamptz END)
                    + make_interval(secs => $2) AS at
             FROM cases
             WHERE tenant_id = $1 AND response_due_at IS NOT NULL
             FOR UPDATE
         )
         UPDATE cases c
         SET response_due_at = due.at,
             state = jsonb_set(c.state, '{response_due_at}', to_jsonb(due.at)),
             updated_at = now()
         FROM due
         WHERE c.tenant_id = $1 AND c.case_id = due.case_id",
    )
    .bind(tenant_id)
    .bind(settings.response_window_secs as f64)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
