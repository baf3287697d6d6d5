//! How alternative groups were settled (`plan_supersessions`). Every query filters by tenant_id.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::alternatives::{BillingPlan, Source, Supersession};
use crate::domain::plan::Status;
use crate::error::{PlansError, Result};

#[derive(sqlx::FromRow)]
struct Row {
    plan_id: Uuid,
    by_plan_id: Option<Uuid>,
    by_title: Option<String>,
    source: String,
    changed_at: DateTime<Utc>,
}

/// The supersessions in force of these plans, with the chosen option's title.
pub async fn of_plans(
    conn: &mut PgConnection,
    tenant: &str,
    plan_ids: &[Uuid],
) -> Result<HashMap<Uuid, Supersession>> {
    let rows = sqlx::query_as::<sqlx::Postgres, Row>(
        "SELECT s.plan_id, s.by_plan_id, v.title AS by_title, s.source, s.changed_at
         FROM plan_supersessions s
         LEFT JOIN plan_versions v
           ON v.tenant_id = s.tenant_id AND v.plan_id = s.by_plan_id AND v.is_current
         WHERE s.tenant_id = $1 AND s.plan_id = ANY($2) AND s.superseded",
    )
    .bind(tenant)
    .bind(plan_ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let source = Source::parse(&r.source).ok_or_else(|| {
                PlansError::Internal(format!("stored supersession source {}", r.source))
            })?;
            Ok((
                r.plan_id,
                Supersession {
                    by_plan_id: r.by_plan_id,
                    by_title: r.by_title,
                    at: r.changed_at,
                    source,
                },
            ))
        })
        .collect()
}

/// Serialises the settling of one alternative group (two options approved at once: one wins). Taken
/// after the plan's row lock; nothing takes a plan's row lock while holding it.
pub async fn lock_group(conn: &mut PgConnection, tenant: &str, group: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("plans-group:{tenant}:{group}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `chosen` was approved at `at`: the other options of its group offered before (created no later)
/// and not yet approved are superseded by it. A later fact already recorded for a plan wins.
pub async fn supersede_siblings(
    conn: &mut PgConnection,
    tenant: &str,
    group: &str,
    chosen: Uuid,
    at: DateTime<Utc>,
) -> Result<u64> {
    let done = sqlx::query(
        "INSERT INTO plan_supersessions (tenant_id, plan_id, superseded, by_plan_id, source, changed_at)
         SELECT v.tenant_id, v.plan_id, true, $3, 'approval', $4
         FROM plan_versions v JOIN plans p ON p.tenant_id = v.tenant_id AND p.plan_id = v.plan_id
         WHERE v.tenant_id = $1 AND v.is_current AND v.alternative_group_id = $2 AND v.plan_id <> $3
           AND v.status IN ('DRAFT', 'SENT') AND p.create_time <= $4
         ON CONFLICT (tenant_id, plan_id) DO UPDATE
           SET superseded = true, by_plan_id = excluded.by_plan_id, source = excluded.source,
               changed_at = excluded.changed_at
           WHERE plan_supersessions.changed_at <= excluded.changed_at AND NOT plan_supersessions.superseded",
    )
    .bind(tenant)
    .bind(group)
    .bind(chosen)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// What the cases service decided for one plan (its case), at `at`: superseded (by `by`, when named) or
/// back in play (staff reopened it). Only a later fact than the one recorded replaces it; a plan this
/// service does not have is ignored. When cases says `plan` was superseded by `by`, a supersession of
/// `by` by `plan` inferred here from an approval is withdrawn: cases sees bookings, which outrank an
/// approval (a patient who approved one option and booked another took the booked one).
pub async fn record_from_cases(
    conn: &mut PgConnection,
    tenant: &str,
    plan: Uuid,
    superseded: bool,
    by: Option<Uuid>,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO plan_supersessions (tenant_id, plan_id, superseded, by_plan_id, source, changed_at)
         SELECT tenant_id, plan_id, $3, $4, 'cases', $5 FROM plans WHERE tenant_id = $1 AND plan_id = $2
         ON CONFLICT (tenant_id, plan_id) DO UPDATE
           SET superseded = excluded.superseded,
               by_plan_id = COALESCE(excluded.by_plan_id, plan_supersessions.by_plan_id),
               source = excluded.source, changed_at = excluded.changed_at
           WHERE plan_supersessions.changed_at < excluded.changed_at
              OR (plan_supersessions.changed_at = excluded.changed_at
                  AND plan_supersessions.superseded = excluded.superseded)",
    )
    .bind(tenant)
    .bind(plan)
    .bind(superseded)
    .bind(by)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    if superseded && let Some(by) = by {
        sqlx::query(
            "UPDATE plan_supersessions SET superseded = false, source = 'cases'
             WHERE tenant_id = $1 AND plan_id = $2 AND superseded AND by_plan_id = $3 AND source = 'approval'",
        )
        .bind(tenant)
        .bind(by)
        .bind(plan)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct BillingRow {
    plan_id: Uuid,
    status: String,
    currency: String,
    total_minor: i64,
    completed_minor: i64,
    alternative_group_id: String,
    superseded: bool,
}

/// A patient's plans (current versions) for the billing summary.
pub async fn billing_plans(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
) -> Result<Vec<BillingPlan>> {
    let rows = sqlx::query_as::<sqlx::Postgres, BillingRow>(
        "SELECT v.plan_id, v.status, v.currency, v.total_minor, v.completed_minor, v.alternative_group_id,
                COALESCE(s.superseded, false) AS superseded
         FROM plan_versions v
         LEFT JOIN plan_supersessions s ON s.tenant_id = v.tenant_id AND s.plan_id = v.plan_id
         WHERE v.tenant_id = $1 AND v.patient_id = $2 AND v.is_current",
    )
    .bind(tenant)
    .bind(patient_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(BillingPlan {
                plan_id: r.plan_id,
                status: Status::parse(&r.status).ok_or_else(|| {
                    PlansError::Internal(format!("stored plan status {}", r.status))
                })?,
                currency: r.currency,
                total: r.total_minor,
                completed: r.completed_minor,
                group: r.alternative_group_id,
                superseded: r.superseded,
            })
        })
        .collect()
}
