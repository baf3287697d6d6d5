//! Patients' and staff members' names, learnt from the clinic's events.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::text::fold;
use crate::error::Error;

/// Records a patient's name (unless a newer record is held) and puts it on their cases.
pub async fn upsert_patient(
    conn: &mut PgConnection,
    tenant_id: &str,
    patient_id: &str,
    display_name: &str,
    archived: bool,
    at: DateTime<Utc>,
) -> Result<(), Error> {
    let search = fold(display_name);
    super::lock_patients(conn, &[super::patient_lock_key(tenant_id, patient_id)]).await?;
    let applied = sqlx::query(
        "INSERT INTO patients AS p (tenant_id, patient_id, display_name, search, archived, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, patient_id) DO UPDATE SET
             display_name = excluded.display_name, search = excluded.search,
             archived = excluded.archived, updated_at = excluded.updated_at
         WHERE p.updated_at <= excluded.updated_at",
    )
    .bind(tenant_id)
    .bind(patient_id)
    .bind(display_name)
    .bind(&search)
    .bind(archived)
    .bind(at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if applied == 1 {
        sqlx::query(
            "UPDATE cases SET patient_name = $3, patient_search = $4
             WHERE tenant_id = $1 AND patient_id = $2 AND patient_name IS DISTINCT FROM $3",
        )
        .bind(tenant_id)
        .bind(patient_id)
        .bind(display_name)
        .bind(&search)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records a staff member (unless a newer record is held).
pub async fn upsert_staff(
    conn: &mut PgConnection,
    tenant_id: &str,
    staff_id: &str,
    display_name: &str,
    role: i32,
    active: bool,
    at: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO staff AS s (tenant_id, staff_id, display_name, role, active, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, staff_id) DO UPDATE SET
             display_name = excluded.display_name, role = excluded.role,
             active = excluded.active, updated_at = excluded.updated_at
         WHERE s.updated_at <= excluded.updated_at",
    )
    .bind(tenant_id)
    .bind(staff_id)
    .bind(display_name)
    .bind(role)
    .bind(active)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A staff member's name and whether they are still active; None if unknown.
pub async fn staff(
    conn: &mut PgConnection,
    tenant_id: &str,
    staff_id: &str,
) -> Result<Option<(String, bool)>, Error> {
    Ok(sqlx::query_as::<sqlx::Postgres, (String, bool)>(
        "SELECT display_name, active FROM staff WHERE tenant_id = $1 AND staff_id = $2",
    )
    .bind(tenant_id)
    .bind(staff_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Names of several staff members (the report's owners).
pub async fn staff_names(
    conn: &mut PgConnection,
    tenant_id: &str,
    ids: &[String],
) -> Result<std::collections::HashMap<String, String>, Error> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows = sqlx::query_as::<sqlx::Postgres, (String, String)>(
        "SELECT staff_id, display_name FROM staff WHERE tenant_id = $1 AND staff_id = ANY($2)",
    )
    .bind(tenant_id)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}
