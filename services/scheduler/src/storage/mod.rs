//! Everything the scheduler keeps in PostgreSQL, and the transactional work on it: case facts from
//! events, rules, enrollments, the due steps and the trigger timers. Every query filters by tenant_id,
//! except the two claims of due work (steps, timers), which serve every clinic by design and then carry
//! each row's tenant into everything they write.

pub mod enroll;
pub mod enrollments;
pub mod facts;
pub mod fire;
pub mod rules;
pub mod settings;
pub mod stop;
pub mod timers;
pub mod waitlist;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use followup_proto::followup::scheduler::v1 as pb;
use prost::Message;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::convert;
use crate::domain::rule::RuleDef;
use crate::error::{Error, Result};
use followup_platform::clock::Clock;

/// NOTIFY channel: a commit that added steps or timers wakes the timer workers, so a step due within
/// their sleep is not late.
pub const WAKE_CHANNEL: &str = "followup_scheduler_wake";

/// Rule versions by (tenant, rule, version). A version that has run never changes (editing a playing
/// rule makes a new one), so cached definitions never go stale; drafts are never cached.
#[derive(Clone, Default)]
pub struct RuleCache {
    inner: Arc<Mutex<Versions>>,
}

type Versions = HashMap<(String, Uuid, i32), Arc<RuleDef>>;

/// Past this many versions the cache starts again: a bound on memory, not a working-set policy.
const RULE_CACHE_LIMIT: usize = 10_000;

impl RuleCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Versions> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A version of a rule that runs (playing or paused, or that has enrollments).
    pub async fn get(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        rule_id: Uuid,
        version: i32,
    ) -> Result<Arc<RuleDef>> {
        let key = (tenant.to_string(), rule_id, version);
        if let Some(def) = self.lock().get(&key) {
            return Ok(def.clone());
        }
        let def = Arc::new(load_version(conn, tenant, rule_id, version).await?.1);
        let mut cache = self.lock();
        if cache.len() >= RULE_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, def.clone());
        Ok(def)
    }

    /// Forgets a version (a draft changed in place).
    pub fn forget(&self, tenant: &str, rule_id: Uuid, version: i32) {
        self.lock().remove(&(tenant.to_string(), rule_id, version));
    }
}

/// The stored protobuf of a rule version and its domain form.
pub async fn load_version(
    conn: &mut PgConnection,
    tenant: &str,
    rule_id: Uuid,
    version: i32,
) -> Result<(pb::Rule, RuleDef)> {
    let bytes: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT definition FROM rule_versions WHERE tenant_id = $1 AND rule_id = $2 AND version = $3",
    )
    .bind(tenant)
    .bind(rule_id)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    let bytes =
        bytes.ok_or_else(|| Error::not_found("rule version", format!("{rule_id}@{version}")))?;
    let rule = pb::Rule::decode(bytes.as_slice())
        .map_err(|e| Error::Corrupt(format!("rule {rule_id} version {version}: {e}")))?;
    let def = convert::rule_from_proto(&rule)
        .map_err(|e| Error::Corrupt(format!("rule {rule_id} version {version}: {e}")))?;
    Ok((rule, def))
}

/// What the transactional work needs besides a connection: the time, and the rule versions.
#[derive(Clone)]
pub struct Store {
    pub clock: Arc<dyn Clock>,
    pub rules: RuleCache,
    /// Signs the claim links of slot offers; None = offers carry no link (claims by reply or staff).
    pub links: Option<Arc<crate::links::ClaimLinks>>,
}

impl Store {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            rules: RuleCache::default(),
            links: None,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// Wakes the timer workers when the transaction commits.
pub async fn wake_timers(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The subject of an event the scheduler publishes, e.g. for tests reading its outbox.
pub fn new_id() -> Uuid {
    followup_platform::event::new_event_id()
}
