//! The clinic's codes, fee schedules and fees. Every query filters by tenant_id.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CodeRow {
    pub code: String,
    pub name: String,
    pub category: i16,
    pub tooth_expected: bool,
    pub active: bool,
    pub source: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

const CODE_COLUMNS: &str =
    "code, name, category, tooth_expected, active, source, create_time, update_time";

pub async fn get_code(
    conn: &mut PgConnection,
    tenant: &str,
    code: &str,
) -> Result<Option<CodeRow>> {
    let sql = format!("SELECT {CODE_COLUMNS} FROM codes WHERE tenant_id = $1 AND code = $2");
    Ok(
        sqlx::query_as::<sqlx::Postgres, CodeRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(code)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Codes ordered by code, after `after`.
pub async fn list_codes(
    conn: &mut PgConnection,
    tenant: &str,
    category: Option<i16>,
    include_inactive: bool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<CodeRow>> {
    let sql = format!(
        "SELECT {CODE_COLUMNS} FROM codes
         WHERE tenant_id = $1 AND ($2::smallint IS NULL OR category = $2) AND ($3 OR active)
           AND ($4::text IS NULL OR code > $4)
         ORDER BY code LIMIT $5"
    );
    Ok(
        sqlx::query_as::<sqlx::Postgres, CodeRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(category)
            .bind(include_inactive)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?,
    )
}

/// Codes that may match a search: the code starts with `prefix`, or the name contains one of `words`.
/// Ranking is the domain's.
pub async fn search_candidates(
    conn: &mut PgConnection,
    tenant: &str,
    prefix: &str,
    words: &[String],
    include_inactive: bool,
) -> Result<Vec<CodeRow>> {
    let like = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    };
    let prefix_pattern = format!("{}%", like(prefix));
    let patterns: Vec<String> = words.iter().map(|w| format!("%{}%", like(w))).collect();
    let sql = format!(
        "SELECT {CODE_COLUMNS} FROM codes
         WHERE tenant_id = $1 AND ($4 OR active)
           AND (code LIKE $2 OR name ILIKE ANY($3))
         ORDER BY code LIMIT 5000"
    );
    Ok(
        sqlx::query_as::<sqlx::Postgres, CodeRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(prefix_pattern)
            .bind(&patterns)
            .bind(include_inactive)
            .fetch_all(&mut *conn)
            .await?,
    )
}

/// A code to write into the clinic's list.
pub struct NewCode<'a> {
    pub code: &'a str,
    pub name: &'a str,
    pub category: i16,
    pub tooth_expected: bool,
    pub source: &'a str,
}

/// Adds codes the clinic does not have; returns the codes added.
pub async fn insert_codes_if_missing(
    conn: &mut PgConnection,
    tenant: &str,
    codes: &[NewCode<'_>],
) -> Result<Vec<String>> {
    let mut added = Vec::new();
    for chunk in codes.chunks(1000) {
        let (c, n, cat, tooth, src) = columns(chunk);
        let rows: Vec<String> = sqlx::query_scalar(
            "INSERT INTO codes (tenant_id, code, name, category, tooth_expected, source)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::smallint[], $5::bool[], $6::text[])
             ON CONFLICT (tenant_id, code) DO NOTHING
             RETURNING code",
        )
        .bind(tenant)
        .bind(c)
        .bind(n)
        .bind(cat)
        .bind(tooth)
        .bind(src)
        .fetch_all(&mut *conn)
        .await?;
        added.extend(rows);
    }
    Ok(added)
}

type Columns = (Vec<String>, Vec<String>, Vec<i16>, Vec<bool>, Vec<String>);

fn columns(codes: &[NewCode<'_>]) -> Columns {
    (
        codes.iter().map(|c| c.code.to_string()).collect(),
        codes.iter().map(|c| c.name.to_string()).collect(),
        codes.iter().map(|c| c.category).collect(),
        codes.iter().map(|c| c.tooth_expected).collect(),
        codes.iter().map(|c| c.source.to_string()).collect(),
    )
}

/// Adds or renames codes (an import): returns (added, updated).
pub async fn upsert_codes(
    conn: &mut PgConnection,
    tenant: &str,
    codes: &[NewCode<'_>],
) -> Result<(usize, usize)> {
    let (mut added, mut updated) = (0, 0);
    for chunk in codes.chunks(1000) {
        let (c, n, cat, tooth, src) = columns(chunk);
        // xmax = 0 only on a freshly inserted row: tells an insert from an update in one statement.
        let inserted: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO codes (tenant_id, code, name, category, tooth_expected, source)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::smallint[], $5::bool[], $6::text[])
             ON CONFLICT (tenant_id, code) DO UPDATE SET name = EXCLUDED.name, update_time = now()
             RETURNING (xmax = 0)",
        )
        .bind(tenant)
        .bind(c)
        .bind(n)
        .bind(cat)
        .bind(tooth)
        .bind(src)
        .fetch_all(&mut *conn)
        .await?;
        added += inserted.iter().filter(|i| **i).count();
        updated += inserted.iter().filter(|i| !**i).count();
    }
    Ok((added, updated))
}

pub async fn update_code(conn: &mut PgConnection, tenant: &str, row: &CodeRow) -> Result<()> {
    sqlx::query(
        "UPDATE codes SET name = $3, category = $4, tooth_expected = $5, active = $6, update_time = now()
         WHERE tenant_id = $1 AND code = $2",
    )
    .bind(tenant)
    .bind(&row.code)
    .bind(&row.name)
    .bind(row.category)
    .bind(row.tooth_expected)
    .bind(row.active)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Which of `codes` the clinic's list has.
pub async fn existing_codes(
    conn: &mut PgConnection,
    tenant: &str,
    codes: &[String],
) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT code FROM codes WHERE tenant_id = $1 AND code = ANY($2)")
            .bind(tenant)
            .bind(codes)
            .fetch_all(&mut *conn)
            .await?,
    )
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ScheduleRow {
    pub fee_schedule_id: Uuid,
    pub name: String,
    pub currency: String,
    pub is_default: bool,
    pub fee_count: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

const SCHEDULE_SELECT: &str = "SELECT s.fee_schedule_id, s.name, s.currency, s.is_default,
        (SELECT count(*) FROM fees f WHERE f.tenant_id = s.tenant_id AND f.fee_schedule_id = s.fee_schedule_id) AS fee_count,
        s.create_time, s.update_time
     FROM fee_schedules s";

pub async fn get_schedule(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<ScheduleRow>> {
    let sql = format!("{SCHEDULE_SELECT} WHERE s.tenant_id = $1 AND s.fee_schedule_id = $2");
    Ok(
        sqlx::query_as::<sqlx::Postgres, ScheduleRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

pub async fn default_schedule(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<Option<ScheduleRow>> {
    let sql = format!("{SCHEDULE_SELECT} WHERE s.tenant_id = $1 AND s.is_default");
    Ok(
        sqlx::query_as::<sqlx::Postgres, ScheduleRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Default first, then by name.
pub async fn list_schedules(
    conn: &mut PgConnection,
    tenant: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<ScheduleRow>> {
    let sql = format!(
        "{SCHEDULE_SELECT} WHERE s.tenant_id = $1 ORDER BY s.is_default DESC, lower(s.name), s.fee_schedule_id OFFSET $2 LIMIT $3"
    );
    Ok(
        sqlx::query_as::<sqlx::Postgres, ScheduleRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(offset)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?,
    )
}

pub async fn schedule_name_taken(
    conn: &mut PgConnection,
    tenant: &str,
    name: &str,
    except: Option<Uuid>,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM fee_schedules WHERE tenant_id = $1 AND lower(name) = lower($2)
                        AND ($3::uuid IS NULL OR fee_schedule_id <> $3))",
    )
    .bind(tenant)
    .bind(name)
    .bind(except)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn insert_schedule(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
    name: &str,
    currency: &str,
    is_default: bool,
) -> Result<()> {
    if is_default {
        clear_default(conn, tenant).await?;
    }
    sqlx::query(
        "INSERT INTO fee_schedules (tenant_id, fee_schedule_id, name, currency, is_default) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(id)
    .bind(name)
    .bind(currency)
    .bind(is_default)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn clear_default(conn: &mut PgConnection, tenant: &str) -> Result<()> {
    sqlx::query("UPDATE fee_schedules SET is_default = false, update_time = now() WHERE tenant_id = $1 AND is_default")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn update_schedule(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
    name: &str,
    is_default: bool,
) -> Result<()> {
    sqlx::query(
        "UPDATE fee_schedules SET name = $3, is_default = $4, update_time = now() WHERE tenant_id = $1 AND fee_schedule_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(name)
    .bind(is_default)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete_schedule(conn: &mut PgConnection, tenant: &str, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM fee_schedules WHERE tenant_id = $1 AND fee_schedule_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn copy_fees(conn: &mut PgConnection, tenant: &str, from: Uuid, to: Uuid) -> Result<()> {
    sqlx::query(
        "INSERT INTO fees (tenant_id, fee_schedule_id, code, amount_minor)
         SELECT tenant_id, $3, code, amount_minor FROM fees WHERE tenant_id = $1 AND fee_schedule_id = $2",
    )
    .bind(tenant)
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Fees ordered by code, after `after`.
pub async fn list_fees(
    conn: &mut PgConnection,
    tenant: &str,
    schedule: Uuid,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as::<sqlx::Postgres, (String, i64)>(
        "SELECT code, amount_minor FROM fees WHERE tenant_id = $1 AND fee_schedule_id = $2
           AND ($3::text IS NULL OR code > $3) ORDER BY code LIMIT $4",
    )
    .bind(tenant)
    .bind(schedule)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Fees of `codes` in a schedule (all its fees when `codes` is None).
pub async fn fees_of(
    conn: &mut PgConnection,
    tenant: &str,
    schedule: Uuid,
    codes: Option<&[String]>,
) -> Result<BTreeMap<String, i64>> {
    let rows = sqlx::query_as::<sqlx::Postgres, (String, i64)>(
        "SELECT code, amount_minor FROM fees WHERE tenant_id = $1 AND fee_schedule_id = $2
           AND ($3::text[] IS NULL OR code = ANY($3))",
    )
    .bind(tenant)
    .bind(schedule)
    .bind(codes)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

pub async fn upsert_fees(
    conn: &mut PgConnection,
    tenant: &str,
    schedule: Uuid,
    fees: &[(String, i64)],
) -> Result<usize> {
    let mut written = 0;
    for chunk in fees.chunks(1000) {
        let codes: Vec<&str> = chunk.iter().map(|(c, _)| c.as_str()).collect();
        let amounts: Vec<i64> = chunk.iter().map(|(_, a)| *a).collect();
        let done = sqlx::query(
            "INSERT INTO fees (tenant_id, fee_schedule_id, code, amount_minor)
             SELECT $1, $2, * FROM UNNEST($3::text[], $4::bigint[])
             ON CONFLICT (tenant_id, fee_schedule_id, code) DO UPDATE SET amount_minor = EXCLUDED.amount_minor",
        )
        .bind(tenant)
        .bind(schedule)
        .bind(&codes)
        .bind(&amounts)
        .execute(&mut *conn)
        .await?;
        written += done.rows_affected() as usize;
    }
    if written > 0 {
        touch_schedule(conn, tenant, schedule).await?;
    }
    Ok(written)
}

pub async fn remove_fees(
    conn: &mut PgConnection,
    tenant: &str,
    schedule: Uuid,
    codes: &[String],
) -> Result<()> {
    sqlx::query(
        "DELETE FROM fees WHERE tenant_id = $1 AND fee_schedule_id = $2 AND code = ANY($3)",
    )
    .bind(tenant)
    .bind(schedule)
    .bind(codes)
    .execute(&mut *conn)
    .await?;
    touch_schedule(conn, tenant, schedule).await
}

async fn touch_schedule(conn: &mut PgConnection, tenant: &str, schedule: Uuid) -> Result<()> {
    sqlx::query("UPDATE fee_schedules SET update_time = now() WHERE tenant_id = $1 AND fee_schedule_id = $2")
        .bind(tenant)
        .bind(schedule)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
