//! The engagement database: beacon event keys, view sessions, plan facts. Every query filters by tenant.
//!
//! Writes are batched: one statement per table per consumer batch (UNNEST of arrays), rows sorted by key
//! so that two batches touching the same plans lock them in the same order.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Section, SectionMs, SessionDelta};

/// A beacon event's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    pub tenant_id: String,
    pub plan_id: Uuid,
    pub session_id: String,
    pub client_event_id: String,
}

/// Records event keys; returns those not seen before.
pub async fn insert_event_keys(
    conn: &mut PgConnection,
    keys: &[EventKey],
) -> Result<HashSet<EventKey>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sorted: Vec<&EventKey> = keys.iter().collect();
    sorted.sort();
    let tenants: Vec<&str> = sorted.iter().map(|k| k.tenant_id.as_str()).collect();
    let plans: Vec<Uuid> = sorted.iter().map(|k| k.plan_id).collect();
    let sessions: Vec<&str> = sorted.iter().map(|k| k.session_id.as_str()).collect();
    let ids: Vec<&str> = sorted.iter().map(|k| k.client_event_id.as_str()).collect();
    let rows = sqlx::query_as::<sqlx::Postgres, (String, Uuid, String, String)>(
        "INSERT INTO beacon_events (tenant_id, plan_id, session_id, client_event_id)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[])
         ON CONFLICT DO NOTHING
         RETURNING tenant_id, plan_id, session_id, client_event_id",
    )
    .bind(&tenants)
    .bind(&plans)
    .bind(&sessions)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(tenant_id, plan_id, session_id, client_event_id)| EventKey {
                tenant_id,
                plan_id,
                session_id,
                client_event_id,
            },
        )
        .collect())
}

/// A session's key and what a batch adds to it.
#[derive(Clone, Debug)]
pub struct SessionUpsert {
    pub tenant_id: String,
    pub plan_id: Uuid,
    pub session_id: String,
    pub plan_version: i32,
    pub patient_id: String,
    pub delta: SessionDelta,
}

fn section_columns<'a>(deltas: impl Iterator<Item = &'a SectionMs> + Clone) -> [Vec<i64>; 4] {
    [0, 1, 2, 3].map(|i| deltas.clone().map(|ms| ms[i]).collect())
}

/// Adds the deltas to their sessions, creating new ones. Returns the (tenant, plan, session) keys of the
/// sessions this call created.
pub async fn upsert_sessions(
    conn: &mut PgConnection,
    rows: &[SessionUpsert],
) -> Result<HashSet<(String, Uuid, String)>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let sections = section_columns(rows.iter().map(|r| &r.delta.section_ms));
    let created = sqlx::query_as::<sqlx::Postgres, (String, Uuid, String, bool)>(
        "INSERT INTO view_sessions AS s (tenant_id, plan_id, session_id, plan_version, patient_id,
             start_at, end_at, view_ms, cover_ms, treatment_details_ms, images_ms, models_3d_ms,
             event_count, closed)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::int[], $5::text[],
             $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::int8[], $10::int8[], $11::int8[],
             $12::int8[], $13::int[], $14::bool[])
         ON CONFLICT (tenant_id, plan_id, session_id) DO UPDATE SET
             start_at = LEAST(s.start_at, EXCLUDED.start_at),
             end_at = GREATEST(s.end_at, EXCLUDED.end_at),
             view_ms = s.view_ms + EXCLUDED.view_ms,
             cover_ms = s.cover_ms + EXCLUDED.cover_ms,
             treatment_details_ms = s.treatment_details_ms + EXCLUDED.treatment_details_ms,
             images_ms = s.images_ms + EXCLUDED.images_ms,
             models_3d_ms = s.models_3d_ms + EXCLUDED.models_3d_ms,
             event_count = s.event_count + EXCLUDED.event_count,
             closed = s.closed OR EXCLUDED.closed,
             summarized = false
         RETURNING tenant_id, plan_id, session_id, (xmax = 0) AS created",
    )
    .bind(
        rows.iter()
            .map(|r| r.tenant_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.plan_id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.session_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.plan_version).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.patient_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.delta.first_seen).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delta.last_seen).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delta.view_ms).collect::<Vec<_>>())
    .bind(&sections[0])
    .bind(&sections[1])
    .bind(&sections[2])
    .bind(&sections[3])
    .bind(rows.iter().map(|r| r.delta.events).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delta.closed).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    Ok(created
        .into_iter()
        .filter(|(_, _, _, created)| *created)
        .map(|(t, p, s, _)| (t, p, s))
        .collect())
}

/// What a batch adds to a plan's facts.
#[derive(Clone, Debug)]
pub struct PlanUpsert {
    pub tenant_id: String,
    pub plan_id: Uuid,
    pub plan_version: i32,
    pub patient_id: String,
    pub new_sessions: i32,
    pub delta: SessionDelta,
}

/// A plan seen for the first time by this call.
#[derive(Clone, Debug)]
pub struct FirstView {
    pub tenant_id: String,
    pub plan_id: Uuid,
}

/// Adds the deltas to the plans' facts; returns the plans this call saw first.
pub async fn upsert_plans(
    conn: &mut PgConnection,
    rows: &[PlanUpsert],
) -> Result<Vec<FirstView>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let sections = section_columns(rows.iter().map(|r| &r.delta.section_ms));
    let created = sqlx::query_as::<sqlx::Postgres, (String, Uuid, bool)>(
        "INSERT INTO plan_engagement AS p (tenant_id, plan_id, plan_version, patient_id,
             first_view_at, last_view_at, view_count, total_view_ms, cover_ms, treatment_details_ms,
             images_ms, models_3d_ms, last_section, last_section_at)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::int[], $4::text[], $5::timestamptz[],
             $6::timestamptz[], $7::int[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[],
             $13::int2[], $14::timestamptz[])
         ON CONFLICT (tenant_id, plan_id) DO UPDATE SET
             plan_version = GREATEST(p.plan_version, EXCLUDED.plan_version),
             patient_id = CASE WHEN EXCLUDED.patient_id <> '' THEN EXCLUDED.patient_id ELSE p.patient_id END,
             first_view_at = LEAST(p.first_view_at, EXCLUDED.first_view_at),
             last_view_at = GREATEST(p.last_view_at, EXCLUDED.last_view_at),
             view_count = p.view_count + EXCLUDED.view_count,
             total_view_ms = p.total_view_ms + EXCLUDED.total_view_ms,
             cover_ms = p.cover_ms + EXCLUDED.cover_ms,
             treatment_details_ms = p.treatment_details_ms + EXCLUDED.treatment_details_ms,
             images_ms = p.images_ms + EXCLUDED.images_ms,
             models_3d_ms = p.models_3d_ms + EXCLUDED.models_3d_ms,
             last_section = CASE
                 WHEN EXCLUDED.last_section_at IS NOT NULL
                      AND (p.last_section_at IS NULL OR EXCLUDED.last_section_at >= p.last_section_at)
                 THEN EXCLUDED.last_section ELSE p.last_section END,
             last_section_at = GREATEST(p.last_section_at, EXCLUDED.last_section_at),
             updated_at = now(),
             dirty = true,
             live_sessions = true
         RETURNING tenant_id, plan_id, (xmax = 0) AS created",
    )
    .bind(rows.iter().map(|r| r.tenant_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.plan_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.plan_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.patient_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delta.first_seen).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delta.last_seen).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.new_sessions).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delta.view_ms).collect::<Vec<_>>())
    .bind(&sections[0])
    .bind(&sections[1])
    .bind(&sections[2])
    .bind(&sections[3])
    .bind(
        rows.iter()
            .map(|r| r.delta.last_section.map(|(s, _)| s.number() as i16))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.delta.last_section.map(|(_, at)| at))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(created
        .into_iter()
        .filter(|(_, _, created)| *created)
        .map(|(tenant_id, plan_id, _)| FirstView { tenant_id, plan_id })
        .collect())
}

/// A plan's facts as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PlanFacts {
    pub plan_id: Uuid,
    pub plan_version: i32,
    pub patient_id: String,
    pub first_view_at: DateTime<Utc>,
    pub last_view_at: DateTime<Utc>,
    pub view_count: i32,
    pub total_view_ms: i64,
    pub cover_ms: i64,
    pub treatment_details_ms: i64,
    pub images_ms: i64,
    pub models_3d_ms: i64,
    pub last_section: Option<i16>,
    pub updated_at: DateTime<Utc>,
}

impl PlanFacts {
    pub fn section_ms(&self) -> SectionMs {
        [
            self.cover_ms,
            self.treatment_details_ms,
            self.images_ms,
            self.models_3d_ms,
        ]
    }

    pub fn last_section(&self) -> Option<Section> {
        self.last_section
            .and_then(|n| Section::from_number(i32::from(n)))
    }
}

const PLAN_COLUMNS: &str = "plan_id, plan_version, patient_id, first_view_at, last_view_at, view_count,
    total_view_ms, cover_ms, treatment_details_ms, images_ms, models_3d_ms, last_section, updated_at";

/// The facts of these plans of one clinic (those never viewed are absent).
pub async fn plan_facts(
    pool: &PgPool,
    tenant_id: &str,
    plan_ids: &[Uuid],
) -> Result<Vec<PlanFacts>, sqlx::Error> {
    sqlx::query_as::<sqlx::Postgres, PlanFacts>(sqlx::AssertSqlSafe(format!(
        "SELECT {PLAN_COLUMNS} FROM plan_engagement WHERE tenant_id = $1 AND plan_id = ANY($2)"
    )))
    .bind(tenant_id)
    .bind(plan_ids)
    .fetch_all(pool)
    .await
}

/// A page view as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SessionRow {
    pub plan_id: Uuid,
    pub session_id: String,
    pub plan_version: i32,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub view_ms: i64,
    pub cover_ms: i64,
    pub treatment_details_ms: i64,
    pub images_ms: i64,
    pub models_3d_ms: i64,
    pub event_count: i32,
    pub closed: bool,
}

impl SessionRow {
    pub fn section_ms(&self) -> SectionMs {
        [
            self.cover_ms,
            self.treatment_details_ms,
            self.images_ms,
            self.models_3d_ms,
        ]
    }
}

const SESSION_COLUMNS: &str =
    "plan_id, session_id, plan_version, start_at, end_at, view_ms, cover_ms,
    treatment_details_ms, images_ms, models_3d_ms, event_count, closed";

/// A plan's page views, newest first, after the keyset position `after` (start, session id).
pub async fn list_sessions(
    pool: &PgPool,
    tenant_id: &str,
    plan_id: Uuid,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    let (after_at, after_id) = match after {
        Some((at, id)) => (Some(at), Some(id)),
        None => (None, None),
    };
    sqlx::query_as::<sqlx::Postgres, SessionRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS} FROM view_sessions
         WHERE tenant_id = $1 AND plan_id = $2
           AND ($3::timestamptz IS NULL OR (start_at, session_id) < ($3, $4))
         ORDER BY start_at DESC, session_id DESC
         LIMIT $5"
    )))
    .bind(tenant_id)
    .bind(plan_id)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Claims plans whose engagement_updated is due: facts changed (or a page view ended by inactivity)
/// and the last publication is older than `interval`. Locks them (skipping locked ones) in `conn`'s
/// transaction.
pub async fn claim_due_plans(
    conn: &mut PgConnection,
    interval: Duration,
    idle: Duration,
    limit: i64,
) -> Result<Vec<(String, PlanFacts)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        tenant_id: String,
        #[sqlx(flatten)]
        facts: PlanFacts,
    }
    let rows = sqlx::query_as::<sqlx::Postgres, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT tenant_id, {PLAN_COLUMNS} FROM plan_engagement p
         WHERE (p.dirty OR p.live_sessions)
           AND (p.published_at IS NULL OR p.published_at <= now() - make_interval(secs => $1))
           AND (p.dirty OR p.last_view_at < now() - make_interval(secs => $2))
         ORDER BY p.published_at NULLS FIRST
         LIMIT $3
         FOR UPDATE SKIP LOCKED"
    )))
    .bind(interval.as_secs_f64())
    .bind(idle.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.tenant_id, r.facts)).collect())
}

/// Marks the page views of these plans that ended (closed, or idle past `idle`) and were not yet
/// reported, and returns them. Rows another transaction holds are skipped; they are reported next time.
pub async fn take_ended_sessions(
    conn: &mut PgConnection,
    plans: &[(String, Uuid)],
    idle: Duration,
) -> Result<Vec<(String, SessionRow)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        tenant_id: String,
        #[sqlx(flatten)]
        session: SessionRow,
    }
    let tenants: Vec<&str> = plans.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<Uuid> = plans.iter().map(|(_, p)| *p).collect();
    let rows = sqlx::query_as::<sqlx::Postgres, Row>(sqlx::AssertSqlSafe(format!(
        "UPDATE view_sessions SET summarized = true
         WHERE (tenant_id, plan_id, session_id) IN (
             SELECT s.tenant_id, s.plan_id, s.session_id
             FROM UNNEST($1::text[], $2::uuid[]) AS p(tenant_id, plan_id)
             JOIN view_sessions s ON s.tenant_id = p.tenant_id AND s.plan_id = p.plan_id
             WHERE NOT s.summarized AND (s.closed OR s.end_at < now() - make_interval(secs => $3))
             FOR UPDATE OF s SKIP LOCKED)
         RETURNING tenant_id, {SESSION_COLUMNS}"
    )))
    .bind(&tenants)
    .bind(&ids)
    .bind(idle.as_secs_f64())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.tenant_id, r.session)).collect())
}

/// Records a publication of these plans; each keeps `live_sessions` while some page view is still
/// unreported.
pub async fn mark_published(
    conn: &mut PgConnection,
    plans: &[(String, Uuid)],
) -> Result<(), sqlx::Error> {
    let tenants: Vec<&str> = plans.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<Uuid> = plans.iter().map(|(_, p)| *p).collect();
    sqlx::query(
        "UPDATE plan_engagement p SET dirty = false, published_at = now(),
             live_sessions = EXISTS (SELECT 1 FROM view_sessions s
                 WHERE s.tenant_id = p.tenant_id AND s.plan_id = p.plan_id AND NOT s.summarized)
         FROM UNNEST($1::text[], $2::uuid[]) AS d(tenant_id, plan_id)
         WHERE p.tenant_id = d.tenant_id AND p.plan_id = d.plan_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Forgets event keys older than `retention` (past the stream's, so no redelivery can bring them back).
pub async fn prune_event_keys(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM beacon_events WHERE received_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
