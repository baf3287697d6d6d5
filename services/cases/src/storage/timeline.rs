//! Timeline entries: written idempotently per case, read newest first.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::timeline::{Entry, EntryKind, NewEntry};
use crate::error::Error;

/// Writes entries in one statement. An entry whose key exists replaces it only with a higher rank (a
/// message's later result); otherwise the first one stays, so replays add nothing.
pub async fn write_entries(
    conn: &mut PgConnection,
    entries: &[(String, Uuid, NewEntry)],
) -> Result<(), Error> {
    if entries.is_empty() {
        return Ok(());
    }
    // One statement may not touch a row twice: keep the highest rank per key (the later on a tie).
    let mut by_key: HashMap<(&str, Uuid, &str), usize> = HashMap::new();
    for (i, (tenant, case_id, entry)) in entries.iter().enumerate() {
        let key = (tenant.as_str(), *case_id, entry.dedupe_key.as_str());
        match by_key.get(&key) {
            Some(&j) if entries[j].2.rank > entry.rank => {}
            _ => {
                by_key.insert(key, i);
            }
        }
    }
    let mut chosen: Vec<usize> = by_key.into_values().collect();
    chosen.sort_unstable();
    let n = chosen.len();
    let mut tenant = Vec::with_capacity(n);
    let mut case_id = Vec::with_capacity(n);
    let mut key = Vec::with_capacity(n);
    let mut entry_id = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut rank = Vec::with_capacity(n);
    let mut body = Vec::with_capacity(n);
    for i in chosen {
        let (t, c, e) = &entries[i];
        tenant.push(t.as_str());
        case_id.push(*c);
        key.push(e.dedupe_key.as_str());
        entry_id.push(e.entry.entry_id);
        kind.push(e.entry.kind.number() as i16);
        at.push(e.entry.at);
        rank.push(e.rank);
        body.push(
            serde_json::to_string(&e.entry).map_err(|err| Error::Corrupt {
                case_id: c.to_string(),
                reason: err.to_string(),
            })?,
        );
    }
    sqlx::query(
        "INSERT INTO timeline AS t (tenant_id, case_id, dedupe_key, entry_id, kind, at, rank, entry)
         SELECT u.tenant_id, u.case_id, u.dedupe_key, u.entry_id, u.kind, u.at, u.rank, u.entry::jsonb
         FROM unnest($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::int2[], $6::timestamptz[],
                     $7::int2[], $8::text[])
              AS u(tenant_id, case_id, dedupe_key, entry_id, kind, at, rank, entry)
         ON CONFLICT (tenant_id, case_id, dedupe_key) DO UPDATE
             SET kind = excluded.kind, at = excluded.at, rank = excluded.rank, entry = excluded.entry
             WHERE t.rank < excluded.rank",
    )
    .bind(&tenant)
    .bind(&case_id)
    .bind(&key)
    .bind(&entry_id)
    .bind(&kind)
    .bind(&at)
    .bind(&rank)
    .bind(&body)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    entry_id: Uuid,
    entry: Json<Entry>,
}

/// A page of a case's timeline, newest first, after the (time, id) of the previous page's last entry.
/// Returns one more entry than asked when there is a next page.
pub async fn page(
    conn: &mut PgConnection,
    tenant_id: &str,
    case_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
    only: Option<EntryKind>,
) -> Result<Vec<Entry>, Error> {
    let (after_at, after_id) = after.unzip();
    let rows = sqlx::query_as::<sqlx::Postgres, EntryRow>(
        "SELECT entry_id, entry FROM timeline
         WHERE tenant_id = $1 AND case_id = $2
           AND ($3::timestamptz IS NULL OR (at, entry_id) < ($3, $4))
           AND ($5::int2 IS NULL OR kind = $5)
         ORDER BY at DESC, entry_id DESC
         LIMIT $6",
    )
    .bind(tenant_id)
    .bind(case_id)
    .bind(after_at)
    .bind(after_id)
    .bind(only.map(|k| k.number() as i16))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            // The first id stays the entry's id when a later result replaced its body.
            let mut entry = row.entry.0;
            entry.entry_id = row.entry_id;
            entry
        })
        .collect())
}

/// Entries by id (WatchCases sends the entry a change added).
pub async fn entries_by_id(
    conn: &mut PgConnection,
    tenant_id: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Entry>, Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query_as::<sqlx::Postgres, EntryRow>(
        "SELECT entry_id, entry FROM timeline WHERE tenant_id = $1 AND entry_id = ANY($2)",
    )
    .bind(tenant_id)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut entry = row.entry.0;
            entry.entry_id = row.entry_id;
            (row.entry_id, entry)
        })
        .collect())
}
