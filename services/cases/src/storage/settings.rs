//! Clinic case settings: stored values over the service's defaults.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use sqlx::{PgConnection, PgPool};

use crate::domain::CaseSettings;
use crate::error::Error;

#[derive(sqlx::FromRow)]
struct SettingsRow {
    tenant_id: String,
    response_window_secs: Option<i64>,
    digest_hour: Option<i32>,
    time_zone: Option<String>,
}

fn merge(defaults: &CaseSettings, row: &SettingsRow) -> CaseSettings {
    CaseSettings {
        response_window_secs: row
            .response_window_secs
            .unwrap_or(defaults.response_window_secs),
        digest_hour: row
            .digest_hour
            .and_then(|h| u32::try_from(h).ok())
            .unwrap_or(defaults.digest_hour),
        time_zone: row
            .time_zone
            .clone()
            .unwrap_or_else(|| defaults.time_zone.clone()),
    }
}

/// Settings per clinic, read through a short-lived cache: events of a busy clinic must not read the
/// settings row each time, and a change made on another replica is seen within the TTL.
#[derive(Clone)]
pub struct SettingsStore {
    defaults: CaseSettings,
    ttl: Duration,
    cache: Arc<RwLock<HashMap<String, (CaseSettings, Instant)>>>,
}

impl SettingsStore {
    pub fn new(defaults: CaseSettings, ttl: Duration) -> Self {
        Self {
            defaults,
            ttl,
            cache: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    pub fn defaults(&self) -> &CaseSettings {
        &self.defaults
    }

    /// The settings of several clinics.
    pub async fn get_many(
        &self,
        conn: &mut PgConnection,
        tenants: &[&str],
    ) -> Result<HashMap<String, CaseSettings>, Error> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            for tenant in tenants {
                match cache.get(*tenant) {
                    Some((settings, at)) if at.elapsed() < self.ttl => {
                        found.insert(tenant.to_string(), settings.clone());
                    }
                    _ => missing.push(*tenant),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let rows = sqlx::query_as::<sqlx::Postgres, SettingsRow>(
            "SELECT tenant_id, response_window_secs, digest_hour, time_zone
             FROM case_settings WHERE tenant_id = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(&mut *conn)
        .await?;
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for tenant in missing {
            let settings = rows
                .iter()
                .find(|r| r.tenant_id == tenant)
                .map(|r| merge(&self.defaults, r))
                .unwrap_or_else(|| self.defaults.clone());
            cache.insert(tenant.to_string(), (settings.clone(), now));
            found.insert(tenant.to_string(), settings);
        }
        Ok(found)
    }

    pub async fn get(&self, conn: &mut PgConnection, tenant: &str) -> Result<CaseSettings, Error> {
        Ok(self
            .get_many(conn, &[tenant])
            .await?
            .remove(tenant)
            .unwrap_or_else(|| self.defaults.clone()))
    }

    /// Stores a clinic's settings and moves the end of every running response window to the new length.
    pub async fn update(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        settings: &CaseSettings,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO case_settings (tenant_id, response_window_secs, digest_hour, time_zone, updated_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (tenant_id) DO UPDATE SET
                 response_window_secs = excluded.response_window_secs,
                 digest_hour = excluded.digest_hour,
                 time_zone = excluded.time_zone,
                 updated_at = now()",
        )
        .bind(tenant)
        .bind(settings.response_window_secs)
        .bind(settings.digest_hour as i32)
        .bind(&settings.time_zone)
        .execute(&mut *conn)
        .await?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_string(), (settings.clone(), Instant::now()));
        Ok(())
    }

    /// Forgets cached settings (tests, and after an update elsewhere when waiting is not an option).
    pub fn invalidate(&self, tenant: &str) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }
}

/// Makes sure a clinic has a settings row (the digest worker visits the clinics that have one).
pub async fn register_tenants(conn: &mut PgConnection, tenants: &[&str]) -> Result<(), Error> {
    if tenants.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO case_settings (tenant_id) SELECT DISTINCT unnest($1::text[])
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(tenants)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A clinic the digest worker may visit.
#[derive(Clone, Debug)]
pub struct DigestTenant {
    pub tenant_id: String,
    pub settings: CaseSettings,
    pub last_digest_date: Option<NaiveDate>,
}

#[derive(sqlx::FromRow)]
struct DigestRow {
    tenant_id: String,
    response_window_secs: Option<i64>,
    digest_hour: Option<i32>,
    time_zone: Option<String>,
    last_digest_date: Option<NaiveDate>,
}

/// Every clinic with its digest state.
pub async fn digest_tenants(
    pool: &PgPool,
    defaults: &CaseSettings,
) -> Result<Vec<DigestTenant>, Error> {
    let rows = sqlx::query_as::<sqlx::Postgres, DigestRow>(
        "SELECT tenant_id, response_window_secs, digest_hour, time_zone, last_digest_date
         FROM case_settings ORDER BY tenant_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let settings = merge(
                defaults,
                &SettingsRow {
                    tenant_id: r.tenant_id.clone(),
                    response_window_secs: r.response_window_secs,
                    digest_hour: r.digest_hour,
                    time_zone: r.time_zone,
                },
            );
            DigestTenant {
                tenant_id: r.tenant_id,
                settings,
                last_digest_date: r.last_digest_date,
            }
        })
        .collect())
}

/// Claims a clinic's digest for a day: true for exactly one caller across replicas.
pub async fn claim_digest(
    conn: &mut PgConnection,
    tenant: &str,
    day: NaiveDate,
) -> Result<bool, Error> {
    let claimed = sqlx::query(
        "UPDATE case_settings SET last_digest_date = $2
         WHERE tenant_id = $1 AND (last_digest_date IS NULL OR last_digest_date < $2)",
    )
    .bind(tenant)
    .bind(day)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}
