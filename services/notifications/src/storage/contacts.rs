//! Patient and staff contacts, and the consent evidence log.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::Channel;
use crate::domain::consent::ConsentRecord;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ContactRow {
    pub tenant_id: String,
    pub patient_id: String,
    pub given_name: String,
    pub family_name: String,
    pub preferred_name: String,
    pub phone_e164: String,
    pub email: String,
    pub time_zone: String,
    pub preferred_channel: i32,
    pub language: String,
    pub archived: bool,
    pub source: String,
    pub source_time: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ContactRow {
    pub fn first_name(&self) -> &str {
        if self.preferred_name.is_empty() {
            &self.given_name
        } else {
            &self.preferred_name
        }
    }

    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name(), self.family_name)
            .trim()
            .to_string()
    }
}

const CONTACT_COLUMNS: &str = "tenant_id, patient_id, given_name, family_name, preferred_name, phone_e164, email, \
     time_zone, preferred_channel, language, archived, source, source_time, updated_at";

/// Writes a contact. `only_if_newer`: an event older than what was applied last changes nothing.
pub async fn upsert(
    conn: &mut PgConnection,
    c: &ContactRow,
    only_if_newer: bool,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO contacts ({CONTACT_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now())
         ON CONFLICT (tenant_id, patient_id) DO UPDATE SET
           given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
           preferred_name = EXCLUDED.preferred_name, phone_e164 = EXCLUDED.phone_e164,
           email = EXCLUDED.email, time_zone = EXCLUDED.time_zone,
           preferred_channel = EXCLUDED.preferred_channel, language = EXCLUDED.language,
           archived = EXCLUDED.archived, source = EXCLUDED.source,
           source_time = GREATEST(contacts.source_time, EXCLUDED.source_time), updated_at = now()
         {}",
        if only_if_newer {
            "WHERE contacts.source_time <= EXCLUDED.source_time"
        } else {
            ""
        }
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&c.tenant_id)
        .bind(&c.patient_id)
        .bind(&c.given_name)
        .bind(&c.family_name)
        .bind(&c.preferred_name)
        .bind(&c.phone_e164)
        .bind(&c.email)
        .bind(&c.time_zone)
        .bind(c.preferred_channel)
        .bind(&c.language)
        .bind(c.archived)
        .bind(&c.source)
        .bind(c.source_time)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn get(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
) -> Result<Option<ContactRow>, sqlx::Error> {
    let sql =
        format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = $1 AND patient_id = $2");
    sqlx::query_as::<sqlx::Postgres, ContactRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(patient_id)
        .fetch_optional(conn)
        .await
}

/// Contacts of several (tenant, patient) pairs, locked for the rest of the transaction so that two
/// workers never decide the same patient's frequency cap at once. Locked in key order: no deadlock.
pub async fn lock_many(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<Vec<ContactRow>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let patients: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let sql = format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts
         WHERE (tenant_id, patient_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))
         ORDER BY tenant_id, patient_id
         FOR UPDATE"
    );
    sqlx::query_as::<sqlx::Postgres, ContactRow>(sqlx::AssertSqlSafe(sql))
        .bind(&tenants)
        .bind(&patients)
        .fetch_all(conn)
        .await
}

pub async fn find_by_phone(
    conn: &mut PgConnection,
    tenant: &str,
    phone: &str,
) -> Result<Vec<ContactRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = $1 AND phone_e164 = $2 AND phone_e164 <> '' ORDER BY patient_id"
    );
    sqlx::query_as::<sqlx::Postgres, ContactRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(phone)
        .fetch_all(conn)
        .await
}

pub async fn find_by_email(
    conn: &mut PgConnection,
    tenant: &str,
    email: &str,
) -> Result<Vec<ContactRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = $1 AND lower(email) = lower($2) AND email <> '' ORDER BY patient_id"
    );
    sqlx::query_as::<sqlx::Postgres, ContactRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(email)
        .fetch_all(conn)
        .await
}

pub async fn list(
    conn: &mut PgConnection,
    tenant: &str,
    query: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<ContactRow>, sqlx::Error> {
    let pattern = format!("%{}%", query.trim().to_lowercase());
    let sql = format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = $1
           AND ($2 = '%%' OR lower(given_name || ' ' || family_name || ' ' || preferred_name) LIKE $2
                OR phone_e164 LIKE $3 OR lower(email) LIKE $2)
         ORDER BY family_name, given_name, patient_id LIMIT $4 OFFSET $5"
    );
    sqlx::query_as::<sqlx::Postgres, ContactRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&pattern)
        .bind(format!("{}%", query.trim()))
        .bind(limit)
        .bind(offset)
        .fetch_all(conn)
        .await
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StaffRow {
    pub tenant_id: String,
    pub staff_id: String,
    pub display_name: String,
    pub email: String,
    pub role: i32,
    pub active: bool,
    pub disabled_categories: Vec<String>,
    pub source_time: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const STAFF_COLUMNS: &str = "tenant_id, staff_id, display_name, email, role, active, disabled_categories, source_time, updated_at";

pub async fn upsert_staff(
    conn: &mut PgConnection,
    s: &StaffRow,
    only_if_newer: bool,
    keep_disabled_categories: bool,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO staff_contacts (tenant_id, staff_id, display_name, email, role, active, disabled_categories, source_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant_id, staff_id) DO UPDATE SET
           display_name = EXCLUDED.display_name, email = EXCLUDED.email, role = EXCLUDED.role,
           active = EXCLUDED.active,
           disabled_categories = {},
           source_time = GREATEST(staff_contacts.source_time, EXCLUDED.source_time), updated_at = now()
         {}",
        if keep_disabled_categories {
            "staff_contacts.disabled_categories"
        } else {
            "EXCLUDED.disabled_categories"
        },
        if only_if_newer {
            "WHERE staff_contacts.source_time <= EXCLUDED.source_time"
        } else {
            ""
        }
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&s.tenant_id)
        .bind(&s.staff_id)
        .bind(&s.display_name)
        .bind(&s.email)
        .bind(s.role)
        .bind(s.active)
        .bind(&s.disabled_categories)
        .bind(s.source_time)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn get_staff(
    conn: &mut PgConnection,
    tenant: &str,
    staff_id: &str,
) -> Result<Option<StaffRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {STAFF_COLUMNS} FROM staff_contacts WHERE tenant_id = $1 AND staff_id = $2"
    );
    sqlx::query_as::<sqlx::Postgres, StaffRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(staff_id)
        .fetch_optional(conn)
        .await
}

pub async fn staff_many(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<Vec<StaffRow>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let sql = format!(
        "SELECT {STAFF_COLUMNS} FROM staff_contacts
         WHERE (tenant_id, staff_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
    );
    sqlx::query_as::<sqlx::Postgres, StaffRow>(sqlx::AssertSqlSafe(sql))
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(conn)
        .await
}

pub async fn list_staff(
    conn: &mut PgConnection,
    tenant: &str,
    include_inactive: bool,
    limit: i64,
    offset: i64,
) -> Result<Vec<StaffRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {STAFF_COLUMNS} FROM staff_contacts WHERE tenant_id = $1 AND ($2 OR active)
         ORDER BY display_name, staff_id LIMIT $3 OFFSET $4"
    );
    sqlx::query_as::<sqlx::Postgres, StaffRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(include_inactive)
        .bind(limit)
        .bind(offset)
        .fetch_all(conn)
        .await
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConsentRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub patient_id: String,
    pub channel: i32,
    pub category: String,
    pub granted: bool,
    pub source: i32,
    pub staff_id: String,
    pub message_id: String,
    pub text: String,
    pub note: String,
    pub occurred_at: DateTime<Utc>,
}

impl ConsentRow {
    pub fn record(&self) -> ConsentRecord {
        ConsentRecord {
            id: self.id,
            at: self.occurred_at,
            channel: Channel::from_i32(self.channel),
            category: (!self.category.is_empty()).then(|| self.category.clone()),
            granted: self.granted,
        }
    }
}

const CONSENT_COLUMNS: &str = "tenant_id, id, patient_id, channel, category, granted, source, staff_id, message_id, text, note, occurred_at";

/// Appends to the evidence log (never updated, never deleted).
pub async fn append_consent(conn: &mut PgConnection, c: &ConsentRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consent_events (tenant_id, id, patient_id, channel, category, granted, source, staff_id, message_id, text, note, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&c.tenant_id)
    .bind(c.id)
    .bind(&c.patient_id)
    .bind(c.channel)
    .bind(&c.category)
    .bind(c.granted)
    .bind(c.source)
    .bind(&c.staff_id)
    .bind(&c.message_id)
    .bind(&c.text)
    .bind(&c.note)
    .bind(c.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn consent_log(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
) -> Result<Vec<ConsentRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {CONSENT_COLUMNS} FROM consent_events WHERE tenant_id = $1 AND patient_id = $2
         ORDER BY occurred_at DESC, id DESC"
    );
    sqlx::query_as::<sqlx::Postgres, ConsentRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(patient_id)
        .fetch_all(conn)
        .await
}

pub async fn consent_page(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<ConsentRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {CONSENT_COLUMNS} FROM consent_events WHERE tenant_id = $1 AND patient_id = $2
         ORDER BY occurred_at DESC, id DESC LIMIT $3 OFFSET $4"
    );
    sqlx::query_as::<sqlx::Postgres, ConsentRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(patient_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(conn)
        .await
}

pub async fn consent_many(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<Vec<ConsentRow>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let sql = format!(
        "SELECT {CONSENT_COLUMNS} FROM consent_events
         WHERE (tenant_id, patient_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
    );
    sqlx::query_as::<sqlx::Postgres, ConsentRow>(sqlx::AssertSqlSafe(sql))
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(conn)
        .await
}
