//! Background work that time drives: the response-window timer, the owner digest, and the folding of
//! count deltas. Each is safe with several replicas: the timer claims rows with `FOR UPDATE SKIP LOCKED`,
//! the digest claims a clinic's day with a conditional update, the compactor holds an advisory lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use followup_platform::event::{OutgoingEvent, new_event_id, timestamp};
use followup_platform::shutdown::Shutdown;
use followup_proto::followup::events::v1 as ev;
use followup_proto::subjects::Event as _;
use sqlx::PgPool;

use crate::domain::CaseStatus;
use crate::domain::case::{CAUSE_RESPONSE_WINDOW, CaseEvent, Input};
use crate::domain::clock::digest_due;
use crate::domain::ranking;
use crate::engine::{Command, Engine, Target, money};
use crate::error::Error;
use crate::storage::counts::OwnerScope;
use crate::storage::list::{ListFilter, Order};
use crate::storage::{self, settings};
use followup_platform::clock::Clock;

/// Runs `round` every `interval` until shutdown; a round that reports a full batch runs again at once.
async fn every<F, Fut>(name: &'static str, interval: Duration, shutdown: Shutdown, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let mut failures = 0u32;
    loop {
        let again = match round().await {
            Ok(more) => {
                failures = 0;
                more
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(worker = name, error = %err, failures, "round failed; retrying");
                false
            }
        };
        if shutdown.is_triggered() {
            return;
        }
        if again {
            continue;
        }
        let wait = interval * 2u32.saturating_pow(failures.min(5));
        tokio::select! {
            () = shutdown.triggered() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Moves SENT_VIEWED cases whose response window has ended to WAITING_FOR_RESPONSE.
pub async fn response_timer(
    pool: PgPool,
    engine: Engine,
    clock: Arc<dyn Clock>,
    interval: Duration,
    batch: i64,
    shutdown: Shutdown,
) {
    every("response_timer", interval, shutdown, || {
        let (pool, engine, clock) = (pool.clone(), engine.clone(), clock.clone());
        async move { Ok(fire_due_windows(&pool, &engine, clock.now(), batch).await? >= batch as usize) }
    })
    .await;
}

/// One timer round: returns how many cases it moved.
pub async fn fire_due_windows(
    pool: &PgPool,
    engine: &Engine,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<usize, Error> {
    let mut tx = pool.begin().await?;
    let due = storage::claim_due_responses(&mut tx, now, batch).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let commands: Vec<Command> = due
        .iter()
        .map(|case| {
            let at = case.response_due_at.unwrap_or(now);
            Command {
                tenant_id: case.tenant_id.clone(),
                target: Target::Case(case.case_id),
                input: Input {
                    event: CaseEvent::ResponseWindowElapsed,
                    at,
                    event_id: format!("timer:{}:{}", case.case_id, at.timestamp_millis()),
                    cause: CAUSE_RESPONSE_WINDOW.into(),
                },
                create: false,
            }
        })
        .collect();
    engine.apply(&mut tx, &commands).await?;
    tx.commit().await?;
    tracing::debug!(cases = due.len(), "response windows ended");
    Ok(due.len())
}

/// Folds count deltas into the per-status counts.
pub async fn count_compactor(pool: PgPool, interval: Duration, shutdown: Shutdown) {
    const ROWS: i64 = 50_000;
    every("count_compactor", interval, shutdown, || {
        let pool = pool.clone();
        async move { Ok(storage::counts::compact(&pool, ROWS).await? >= ROWS as u64) }
    })
    .await;
}

/// Publishes each owner's digest once a day at the clinic's digest hour.
pub async fn owner_digests(
    pool: PgPool,
    engine: Engine,
    clock: Arc<dyn Clock>,
    interval: Duration,
    shutdown: Shutdown,
) {
    every("owner_digest", interval, shutdown, || {
        let (pool, engine, clock) = (pool.clone(), engine.clone(), clock.clone());
        async move {
            publish_due_digests(&pool, &engine, clock.now()).await?;
            Ok(false)
        }
    })
    .await;
}

/// One digest round: for every clinic whose digest hour has come today, claims the day and writes one
/// owner_digest per owner with open cases. Returns how many digests were written.
pub async fn publish_due_digests(
    pool: &PgPool,
    engine: &Engine,
    now: DateTime<Utc>,
) -> Result<usize, Error> {
    let mut written = 0;
    for tenant in settings::digest_tenants(pool, engine.settings.defaults()).await? {
        let zone: chrono_tz::Tz = tenant.settings.time_zone.parse().unwrap_or(chrono_tz::UTC);
        let Some(day) = digest_due(
            now,
            zone,
            tenant.settings.digest_hour,
            tenant.last_digest_date,
        ) else {
            continue;
        };
        let mut tx = pool.begin().await?;
        if !settings::claim_digest(&mut tx, &tenant.tenant_id, day).await? {
            continue;
        }
        let events = digests(
            &mut tx,
            &tenant.tenant_id,
            &tenant.settings.time_zone,
            day,
            now,
        )
        .await?;
        written += events.len();
        followup_platform::outbox::enqueue_events(&mut tx, &events).await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant.tenant_id, digests = events.len(), %day, "owner digests written");
    }
    Ok(written)
}

const DIGEST_ENTRIES: i64 = 10;

async fn digests(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    time_zone: &str,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Vec<OutgoingEvent>, Error> {
    #[derive(Default)]
    struct OwnerQueue {
        open: i64,
        waiting: i64,
        values: Vec<(String, i64)>,
    }
    let mut owners: BTreeMap<String, OwnerQueue> = BTreeMap::new();
    for row in storage::owner_queues(conn, tenant).await? {
        let entry = owners.entry(row.owner_staff_id).or_default();
        entry.open += row.open_count;
        entry.waiting += row.waiting_count;
        if !row.currency.is_empty() && row.value != 0 {
            entry.values.push((row.currency, row.value));
        }
    }
    let mut events = Vec::with_capacity(owners.len());
    for (
        owner,
        OwnerQueue {
            open,
            waiting,
            values,
        },
    ) in owners
    {
        let filter = ListFilter {
            statuses: vec![
                CaseStatus::SentNotViewed,
                CaseStatus::SentViewed,
                CaseStatus::WaitingForResponse,
            ],
            owners: OwnerScope::Owner(owner.clone()),
            ..ListFilter::everything()
        };
        let (top, _) = storage::list::page(
            conn,
            tenant,
            &filter,
            Order::Priority,
            false,
            None,
            DIGEST_ENTRIES,
        )
        .await?;
        let entries = top
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let case = &record.state;
                ev::DigestEntry {
                    rank: i as i32 + 1,
                    case_id: case.case_id.to_string(),
                    patient_id: case.patient_id.clone(),
                    patient_name: record.patient_name.clone(),
                    title: case.title.clone(),
                    status: case.status.number(),
                    value: case.value.as_ref().map(money),
                    reason: ranking::reason(case, now),
                    last_contact_time: case.last_contact_at.map(timestamp),
                }
            })
            .collect();
        let event = ev::OwnerDigest {
            event_id: new_event_id().to_string(),
            tenant_id: tenant.to_string(),
            occurred_at: Some(timestamp(now)),
            owner_staff_id: owner,
            digest_date: day.format("%Y-%m-%d").to_string(),
            time_zone: time_zone.to_string(),
            entries,
            open_case_count: i32::try_from(open).unwrap_or(i32::MAX),
            open_value: values
                .into_iter()
                .map(
                    |(currency, amount_minor)| followup_proto::followup::common::v1::Money {
                        amount_minor,
                        currency,
                    },
                )
                .collect(),
            waiting_for_response_count: i32::try_from(waiting).unwrap_or(i32::MAX),
        };
        let subject = event
            .subject()
            .map_err(|e| Error::invalid("tenant", format!("{e:?}")))?;
        events.push(OutgoingEvent::new(crate::INFO.name, subject, &event)?);
    }
    Ok(events)
}
