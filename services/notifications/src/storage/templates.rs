//! Clinic templates; the shipped defaults live in code (domain::templates) and apply until replaced.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::Channel;
use crate::domain::templates::{self as t, TemplateText};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TemplateRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub key: String,
    pub channel: i32,
    pub name: String,
    pub subject: String,
    pub body: String,
    pub html_body: String,
    pub category: String,
    pub enabled: bool,
    pub updated_at: DateTime<Utc>,
}

/// A template as the service uses it: the clinic's, or a shipped default.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub row: TemplateRow,
    pub built_in: bool,
}

impl Resolved {
    pub fn text(&self) -> TemplateText {
        TemplateText {
            subject: self.row.subject.clone(),
            body: self.row.body.clone(),
            html_body: self.row.html_body.clone(),
        }
    }
}

/// A built-in's stable id: UUIDv5-like, derived from key and channel, so Get/Update work on it.
pub fn built_in_id(key: &str, channel: Channel) -> Uuid {
    let mut bytes = [0u8; 16];
    let name = format!("{key}/{}", channel.name());
    // FNV-1a over two seeds: stable across releases, never a valid UUIDv7 (version nibble 8).
    for (half, seed) in [(0usize, 0xcbf29ce484222325u64), (8, 0x84222325cbf29ce4)] {
        let mut h = seed;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        bytes[half..half + 8].copy_from_slice(&h.to_be_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

pub fn default_row(tenant: &str, d: &t::DefaultTemplate) -> Resolved {
    Resolved {
        row: TemplateRow {
            tenant_id: tenant.to_string(),
            id: built_in_id(d.key, d.channel),
            key: d.key.to_string(),
            channel: d.channel.as_i32(),
            name: d.name.to_string(),
            subject: d.subject.to_string(),
            body: d.body.to_string(),
            html_body: String::new(),
            category: d.category.to_string(),
            enabled: true,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        },
        built_in: true,
    }
}

const COLUMNS: &str =
    "tenant_id, id, key, channel, name, subject, body, html_body, category, enabled, updated_at";

pub async fn resolve(
    conn: &mut PgConnection,
    tenant: &str,
    key: &str,
    channel: Channel,
) -> Result<Option<Resolved>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM templates WHERE tenant_id = $1 AND key = $2 AND channel = $3"
    );
    let own = sqlx::query_as::<sqlx::Postgres, TemplateRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(key)
        .bind(channel.as_i32())
        .fetch_optional(conn)
        .await?;
    Ok(match own {
        Some(row) => Some(Resolved {
            row,
            built_in: false,
        }),
        None => t::default_for(key, channel).map(|d| default_row(tenant, d)),
    })
}

pub async fn get(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<Resolved>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM templates WHERE tenant_id = $1 AND id = $2");
    let own = sqlx::query_as::<sqlx::Postgres, TemplateRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = own {
        return Ok(Some(Resolved {
            row,
            built_in: false,
        }));
    }
    let Some(d) = t::all_defaults()
        .iter()
        .find(|d| built_in_id(d.key, d.channel) == id)
    else {
        return Ok(None);
    };
    // A default the clinic replaced is reached through its own id.
    match resolve(conn, tenant, d.key, d.channel).await? {
        Some(r) if r.built_in => Ok(Some(r)),
        _ => Ok(None),
    }
}

/// The clinic's templates and the defaults it has not replaced, by key then channel.
pub async fn list(
    conn: &mut PgConnection,
    tenant: &str,
    channel: Option<Channel>,
    key: &str,
) -> Result<Vec<Resolved>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM templates WHERE tenant_id = $1");
    let own = sqlx::query_as::<sqlx::Postgres, TemplateRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .fetch_all(conn)
        .await?;
    let mut out: Vec<Resolved> = own
        .into_iter()
        .map(|row| Resolved {
            row,
            built_in: false,
        })
        .collect();
    for d in t::all_defaults() {
        if !out
            .iter()
            .any(|r| r.row.key == d.key && r.row.channel == d.channel.as_i32())
        {
            out.push(default_row(tenant, d));
        }
    }
    out.retain(|r| {
        channel.is_none_or(|c| r.row.channel == c.as_i32()) && (key.is_empty() || r.row.key == key)
    });
    out.sort_by(|a, b| (&a.row.key, a.row.channel).cmp(&(&b.row.key, b.row.channel)));
    Ok(out)
}

pub async fn insert(conn: &mut PgConnection, row: &TemplateRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO templates (tenant_id, id, key, channel, name, subject, body, html_body, category, enabled)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (tenant_id, key, channel) DO NOTHING",
    )
    .bind(&row.tenant_id)
    .bind(row.id)
    .bind(&row.key)
    .bind(row.channel)
    .bind(&row.name)
    .bind(&row.subject)
    .bind(&row.body)
    .bind(&row.html_body)
    .bind(&row.category)
    .bind(row.enabled)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn update(conn: &mut PgConnection, row: &TemplateRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE templates SET name = $3, subject = $4, body = $5, html_body = $6, category = $7,
           enabled = $8, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(&row.tenant_id)
    .bind(row.id)
    .bind(&row.name)
    .bind(&row.subject)
    .bind(&row.body)
    .bind(&row.html_body)
    .bind(&row.category)
    .bind(row.enabled)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, tenant: &str, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM templates WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
