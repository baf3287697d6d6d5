//! Per-status counts and values, kept current by the `cases` triggers (deltas) and a compactor.

use sqlx::{PgConnection, PgPool};

use crate::error::Error;

/// One (status, currency) cell: how many cases, and the value of those that count in totals.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Cell {
    pub status: i16,
    pub currency: String,
    pub count: i64,
    pub value: i64,
}

/// Which owners' cases to count.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum OwnerScope {
    Any,
    Owner(String),
    Unassigned,
    OwnerOrUnassigned(String),
}

impl OwnerScope {
    fn keys(&self) -> Option<Vec<String>> {
        match self {
            OwnerScope::Any => None,
            OwnerScope::Owner(o) => Some(vec![o.clone()]),
            OwnerScope::Unassigned => Some(vec![String::new()]),
            OwnerScope::OwnerOrUnassigned(o) => Some(vec![o.clone(), String::new()]),
        }
    }
}

/// The statement behind [`cells`] (the benchmark times it bare).
pub const CELLS_SQL: &str =
    "SELECT status, currency, sum(n)::int8 AS count, sum(v)::int8 AS value FROM (
         SELECT status, currency, case_count AS n, rep_value AS v FROM case_counts
         WHERE tenant_id = $1 AND ($2::text[] IS NULL OR owner_key = ANY($2))
         UNION ALL
         SELECT status, currency, case_delta AS n, value_delta AS v FROM case_count_deltas
         WHERE tenant_id = $1 AND ($2::text[] IS NULL OR owner_key = ANY($2))
     ) AS x
     GROUP BY status, currency
     HAVING sum(n) <> 0";

impl OwnerScope {
    /// The owner keys bound as `$2` of [`CELLS_SQL`] (None: every owner).
    pub fn bound_keys(&self) -> Option<Vec<String>> {
        self.keys()
    }
}

/// The cells of a clinic from the counters: the compacted counts plus the deltas not folded in yet.
pub async fn cells(
    conn: &mut PgConnection,
    tenant_id: &str,
    owners: &OwnerScope,
) -> Result<Vec<Cell>, Error> {
    let cells = sqlx::query_as::<sqlx::Postgres, Cell>(CELLS_SQL)
        .bind(tenant_id)
        .bind(owners.keys())
        .fetch_all(&mut *conn)
        .await?;
    Ok(cells)
}

/// A change to one (clinic, owner, status, currency) cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub tenant_id: String,
    pub owner_key: String,
    pub status: i16,
    pub currency: String,
    pub count: i64,
    pub value: i64,
}

/// Appends the deltas of a transaction (one row per cell, however many cases moved).
pub async fn add_deltas(conn: &mut PgConnection, deltas: &[Delta]) -> Result<(), Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = deltas.iter().map(|d| d.tenant_id.as_str()).collect();
    let owners: Vec<&str> = deltas.iter().map(|d| d.owner_key.as_str()).collect();
    let statuses: Vec<i16> = deltas.iter().map(|d| d.status).collect();
    let currencies: Vec<&str> = deltas.iter().map(|d| d.currency.as_str()).collect();
    let counts: Vec<i32> = deltas
        .iter()
        .map(|d| i32::try_from(d.count).unwrap_or(i32::MAX))
        .collect();
    let values: Vec<i64> = deltas.iter().map(|d| d.value).collect();
    sqlx::query(
        "INSERT INTO case_count_deltas (tenant_id, owner_key, status, currency, case_delta, value_delta)
         SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::text[], $5::int4[], $6::int8[])",
    )
    .bind(&tenants)
    .bind(&owners)
    .bind(&statuses)
    .bind(&currencies)
    .bind(&counts)
    .bind(&values)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Folds pending deltas into the counts. One compactor at a time (an advisory lock), so replicas never
/// fold the same deltas twice or wait on each other; returns how many deltas were folded.
pub async fn compact(pool: &PgPool, max_rows: i64) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(62026001)")
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let folded: i64 = sqlx::query_scalar(
        "WITH moved AS (
             DELETE FROM case_count_deltas
             WHERE id IN (SELECT id FROM case_count_deltas ORDER BY id LIMIT $1)
             RETURNING tenant_id, owner_key, status, currency, case_delta, value_delta
         ), summed AS (
             SELECT tenant_id, owner_key, status, currency,
                    sum(case_delta)::int8 AS n, sum(value_delta)::int8 AS v, count(*) AS rows
             FROM moved GROUP BY tenant_id, owner_key, status, currency
         ), upserted AS (
             INSERT INTO case_counts (tenant_id, owner_key, status, currency, case_count, rep_value)
             SELECT tenant_id, owner_key, status, currency, n, v FROM summed
             ORDER BY tenant_id, owner_key, status, currency
             ON CONFLICT (tenant_id, owner_key, status, currency) DO UPDATE
                 SET case_count = case_counts.case_count + excluded.case_count,
                     rep_value = case_counts.rep_value + excluded.rep_value
             RETURNING 1
         )
         SELECT coalesce(sum(rows), 0)::int8 FROM summed",
    )
    .bind(max_rows)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM case_counts WHERE case_count = 0 AND rep_value = 0")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(folded as u64)
}

/// Recomputes every clinic's counts from the cases themselves (after a bulk load, or to repair), in one
/// transaction that holds writers' deltas off meanwhile.
pub async fn rebuild(pool: &PgPool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let conn: &mut PgConnection = &mut tx;
    sqlx::query("LOCK TABLE cases, case_count_deltas IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM case_count_deltas")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM case_counts")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO case_counts (tenant_id, owner_key, status, currency, case_count, rep_value)
         SELECT tenant_id, owner_key, status, currency, count(*),
                coalesce(sum(value_minor) FILTER (WHERE is_representative), 0)
         FROM cases GROUP BY tenant_id, owner_key, status, currency",
    )
    .execute(&mut *conn)
    .await?;
    tx.commit().await?;
    Ok(())
}
