//! Outbound webhook endpoints and their signing secrets.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EndpointRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub secret_rotated_at: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EndpointRow {
    /// The secrets that sign a call now: the current one, and the previous one during its overlap.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) =
            (&self.previous_secret, self.previous_secret_expires_at)
            && until > now
        {
            secrets.push(previous.as_str());
        }
        secrets
    }

    pub fn subscribed(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

const COLUMNS: &str = "tenant_id, id, url, description, event_types, enabled, secret, previous_secret, \
    previous_secret_expires_at, secret_rotated_at, deleted, created_at, updated_at";

pub async fn insert(conn: &mut PgConnection, e: &EndpointRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_endpoints (tenant_id, id, url, description, event_types, enabled, secret)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&e.tenant_id)
    .bind(e.id)
    .bind(&e.url)
    .bind(&e.description)
    .bind(&e.event_types)
    .bind(e.enabled)
    .bind(&e.secret)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2 AND NOT deleted"
    );
    sqlx::query_as::<sqlx::Postgres, EndpointRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Includes deleted endpoints: a queued call for one must fail rather than vanish.
pub async fn get_any(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2");
    sqlx::query_as::<sqlx::Postgres, EndpointRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn list(
    conn: &mut PgConnection,
    tenant: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<EndpointRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND NOT deleted ORDER BY created_at, id LIMIT $2 OFFSET $3"
    );
    sqlx::query_as::<sqlx::Postgres, EndpointRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(limit)
        .bind(offset)
        .fetch_all(conn)
        .await
}

pub async fn update(conn: &mut PgConnection, e: &EndpointRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_endpoints SET url = $3, description = $4, event_types = $5, enabled = $6, secret = $7,
           previous_secret = $8, previous_secret_expires_at = $9, secret_rotated_at = $10, deleted = $11,
           updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(&e.tenant_id)
    .bind(e.id)
    .bind(&e.url)
    .bind(&e.description)
    .bind(&e.event_types)
    .bind(e.enabled)
    .bind(&e.secret)
    .bind(&e.previous_secret)
    .bind(e.previous_secret_expires_at)
    .bind(e.secret_rotated_at)
    .bind(e.deleted)
    .execute(conn)
    .await?;
    Ok(())
}
