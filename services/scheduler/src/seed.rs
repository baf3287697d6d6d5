//! Bulk test data: a playing rule with many enrollments and pending steps, written straight into the
//! database in a few statements per chunk. The load generator and the crash test use it; the service
//! never does.

use chrono::{DateTime, Utc};
use followup_proto::followup::common::v1::CaseKind;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;
use crate::storage::rules;

/// What to seed.
#[derive(Clone, Debug)]
pub struct Seed {
    pub tenant: String,
    /// Case and patient ids are `<prefix>plan-<n>` and `<prefix>patient-<n>` (several seeds, one clinic).
    pub prefix: String,
    /// Enrollments of the treatment-plan follow-up template, four SMS steps each (indexes 1, 3, 5, 7).
    pub enrollments: i64,
    /// How many of them have due steps...
    pub due_enrollments: i64,
    /// ...and how many of their four steps are due (1 to 4); the rest are in the future.
    pub due_steps_each: i32,
    /// Due steps fall due in `[due_from, due_to)`, spread evenly by enrollment.
    pub due_from: DateTime<Utc>,
    pub due_to: DateTime<Utc>,
    /// Steps not due are due after this (a day apart).
    pub future_at: DateTime<Utc>,
}

const CHUNK: i64 = 25_000;

/// Seeds the data and returns the rule's id. The rule plays (so nothing holds the steps).
pub async fn seed(pool: &PgPool, seed: &Seed) -> Result<Uuid> {
    let template = crate::templates::find("treatment_plan_follow_up").unwrap_or_default();
    let mut rule = template.rule.unwrap_or_default();
    rule.name = format!("Seeded follow-up {}", Uuid::now_v7().simple());
    // Unguarded steps: the figures measure firing, not fact lookups.
    for step in &mut rule.steps {
        step.only_if = None;
    }
    let def = crate::convert::valid_rule(&rule)?;
    let mut tx = pool.begin().await?;
    let row = rules::create(&mut tx, &seed.tenant, "seed", &rule, &def, "", Utc::now()).await?;
    sqlx::query("UPDATE rules SET state = 'playing' WHERE tenant_id = $1 AND rule_id = $2")
        .bind(&seed.tenant)
        .bind(row.rule_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let span = (seed.due_to - seed.due_from)
        .num_microseconds()
        .unwrap_or(0) as f64;
    let mut start = 1;
    while start <= seed.enrollments {
        let end = (start + CHUNK - 1).min(seed.enrollments);
        let ns: Vec<i64> = (start..=end).collect();
        let ids: Vec<Uuid> = ns.iter().map(|_| Uuid::now_v7()).collect();
        let mut tx = pool.begin().await?;
        // Case presentations with a portal link, so messages carry what real ones do.
        sqlx::query(
            "INSERT INTO cases (tenant_id, case_kind, case_id, patient_id, name, status, sent_at, portal_url,
                                owner_staff_id, value_minor, value_currency, max_sessions)
             SELECT $1, $2, $5 || 'plan-' || n, $5 || 'patient-' || n, 'Implant plan', 2, $3,
                    'https://portal.example/p/' || md5(n::text), 'staff-1', 450000, 'USD', 3
             FROM UNNEST($4::int8[]) AS n",
        )
        .bind(&seed.tenant)
        .bind(CaseKind::CasePresentation as i16)
        .bind(seed.due_from)
        .bind(&ns)
        .bind(&seed.prefix)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO enrollments (tenant_id, enrollment_id, rule_id, rule_version, subject_key, case_kind,
                                      case_id, patient_id, state, trigger, trigger_at, time_zone, started_at)
             SELECT $1, id, $2, 1, 'plan:' || $7 || 'plan-' || n, $3, $7 || 'plan-' || n, $7 || 'patient-' || n,
                    'active', 'plans.plan_sent', $4, 'UTC', $4
             FROM UNNEST($5::uuid[], $6::int8[]) AS t(id, n)",
        )
        .bind(&seed.tenant)
        .bind(row.rule_id)
        .bind(CaseKind::CasePresentation as i16)
        .bind(seed.due_from)
        .bind(&ids)
        .bind(&ns)
        .bind(&seed.prefix)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO step_runs (tenant_id, enrollment_id, step_index, rule_id, due_at, state, is_last)
             SELECT $1, t.id, 2 * k + 1, $2,
                    CASE WHEN t.n <= $3 AND k < $4
                         THEN $5 + make_interval(secs => ($6 * (t.n - 1) / GREATEST($3, 1)) / 1e6) + make_interval(secs => k * 1e-3)
                         ELSE $7 + make_interval(days => k::int) END,
                    'pending', k = 3
             FROM UNNEST($8::uuid[], $9::int8[]) AS t(id, n), generate_series(0, 3) AS k",
        )
        .bind(&seed.tenant)
        .bind(row.rule_id)
        .bind(seed.due_enrollments)
        .bind(seed.due_steps_each)
        .bind(seed.due_from)
        .bind(span)
        .bind(seed.future_at)
        .bind(&ids)
        .bind(&ns)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        start = end + 1;
    }
    Ok(row.rule_id)
}
