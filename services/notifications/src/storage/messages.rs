//! Messages (one per intent), their delivery attempts, conversations and staff tasks.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Message statuses as stored; the proto's MessageStatus names them for callers.
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const DEFERRED: &str = "deferred";
    pub const RETRYING: &str = "retrying";
    pub const SENDING: &str = "sending";
    pub const SENT: &str = "sent";
    pub const DELIVERED: &str = "delivered";
    pub const FAILED: &str = "failed";
    pub const SUPPRESSED: &str = "suppressed";
    /// An attempt's outcome is unknown and the channel's policy is at-most-once: not sent again.
    pub const POSSIBLY_SENT: &str = "possibly_sent";
}

#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct MessageRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub idempotency_key: Option<String>,
    pub channel: i32,
    pub category: String,
    pub transactional: bool,
    pub automated: bool,
    pub patient_id: String,
    pub staff_id: String,
    pub direct_contact: Option<serde_json::Value>,
    pub to_address: String,
    pub case_plan_id: String,
    pub case_care_case_id: String,
    pub enrollment_id: String,
    pub template_key: String,
    pub variables: serde_json::Value,
    pub task: Option<serde_json::Value>,
    pub owner_staff_id: String,
    pub webhook_endpoint_id: String,
    pub plan_id: String,
    pub rendered_subject: String,
    pub rendered_body: String,
    pub rendered_html: String,
    pub sms_encoding: i32,
    pub segment_count: i32,
    pub character_count: i32,
    pub status: String,
    pub due_at: Option<DateTime<Utc>>,
    pub deferral_reason: i32,
    pub suppression_reason: i32,
    pub suppression_detail: String,
    pub failure_reason: String,
    pub provider: String,
    pub provider_message_id: String,
    pub attempt_count: i32,
    pub not_before: Option<DateTime<Utc>>,
    pub expire_at: Option<DateTime<Utc>>,
    pub counted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub requested_by: String,
    pub request_event_id: String,
    /// The W3C traceparent of the request or event that created the message, so that its send, which a
    /// worker does later, continues that trace.
    pub traceparent: String,
}

pub const COLUMNS: &str = "tenant_id, id, idempotency_key, channel, category, transactional, automated, patient_id, \
    staff_id, direct_contact, to_address, case_plan_id, case_care_case_id, enrollment_id, template_key, variables, \
    task, owner_staff_id, webhook_endpoint_id, plan_id, rendered_subject, rendered_body, rendered_html, sms_encoding, \
    segment_count, character_count, status, due_at, deferral_reason, suppression_reason, suppression_detail, \
    failure_reason, provider, provider_message_id, attempt_count, not_before, expire_at, counted_at, created_at, \
    sent_at, delivered_at, requested_by, request_event_id, traceparent";

/// Creates the message unless one with the same (tenant, idempotency key) exists. True when created.
pub async fn insert(conn: &mut PgConnection, m: &MessageRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO messages (tenant_id, id, idempotency_key, channel, category, transactional, automated,
            patient_id, staff_id, direct_contact, to_address, case_plan_id, case_care_case_id, enrollment_id,
            template_key, variables, task, owner_staff_id, webhook_endpoint_id, plan_id, rendered_subject,
            rendered_body, status, due_at, not_before, expire_at, requested_by, request_event_id, created_at,
            traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
            $22, $23, $24, $25, $26, $27, $28, $29, $30)
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING",
    )
    .bind(&m.tenant_id)
    .bind(m.id)
    .bind(&m.idempotency_key)
    .bind(m.channel)
    .bind(&m.category)
    .bind(m.transactional)
    .bind(m.automated)
    .bind(&m.patient_id)
    .bind(&m.staff_id)
    .bind(&m.direct_contact)
    .bind(&m.to_address)
    .bind(&m.case_plan_id)
    .bind(&m.case_care_case_id)
    .bind(&m.enrollment_id)
    .bind(&m.template_key)
    .bind(&m.variables)
    .bind(&m.task)
    .bind(&m.owner_staff_id)
    .bind(&m.webhook_endpoint_id)
    .bind(&m.plan_id)
    .bind(&m.rendered_subject)
    .bind(&m.rendered_body)
    .bind(&m.status)
    .bind(m.due_at)
    .bind(m.not_before)
    .bind(m.expire_at)
    .bind(&m.requested_by)
    .bind(&m.request_event_id)
    .bind(m.created_at)
    .bind(if m.traceparent.is_empty() {
        followup_platform::telemetry::current_traceparent().unwrap_or_default()
    } else {
        m.traceparent.clone()
    })
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims up to `limit` due messages of every clinic, skipping rows another worker holds.
pub async fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE due_at <= now() ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    );
    sqlx::query_as::<sqlx::Postgres, MessageRow>(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// Writes back what a worker decided about a message (status, times, rendering, reasons).
pub async fn save(conn: &mut PgConnection, m: &MessageRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE messages SET to_address = $3, rendered_subject = $4, rendered_body = $5, rendered_html = $6,
            sms_encoding = $7, segment_count = $8, character_count = $9, status = $10, due_at = $11,
            deferral_reason = $12, suppression_reason = $13, suppression_detail = $14, failure_reason = $15,
            provider = $16, provider_message_id = $17, attempt_count = $18, counted_at = $19, sent_at = $20,
            delivered_at = $21, category = $22
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(&m.tenant_id)
    .bind(m.id)
    .bind(&m.to_address)
    .bind(&m.rendered_subject)
    .bind(&m.rendered_body)
    .bind(&m.rendered_html)
    .bind(m.sms_encoding)
    .bind(m.segment_count)
    .bind(m.character_count)
    .bind(&m.status)
    .bind(m.due_at)
    .bind(m.deferral_reason)
    .bind(m.suppression_reason)
    .bind(&m.suppression_detail)
    .bind(&m.failure_reason)
    .bind(&m.provider)
    .bind(&m.provider_message_id)
    .bind(m.attempt_count)
    .bind(m.counted_at)
    .bind(m.sent_at)
    .bind(m.delivered_at)
    .bind(&m.category)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<MessageRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND id = $2");
    sqlx::query_as::<sqlx::Postgres, MessageRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn get_by_provider_id(
    conn: &mut PgConnection,
    tenant: &str,
    provider: &str,
    provider_message_id: &str,
) -> Result<Option<MessageRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND provider = $2 AND provider_message_id = $3 FOR UPDATE"
    );
    sqlx::query_as::<sqlx::Postgres, MessageRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(provider)
        .bind(provider_message_id)
        .fetch_optional(conn)
        .await
}

/// The latest message sent to a patient on a channel (what an inbound reply answers).
pub async fn latest_sent_to(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    channel: i32,
) -> Result<Option<MessageRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND patient_id = $2 AND channel = $3
           AND status IN ('sent', 'delivered') ORDER BY sent_at DESC NULLS LAST LIMIT 1"
    );
    sqlx::query_as::<sqlx::Postgres, MessageRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(patient_id)
        .bind(channel)
        .fetch_optional(conn)
        .await
}

/// When each of these patients' automated messages counted toward the cap, over the last 7 days.
pub async fn counted_since(
    conn: &mut PgConnection,
    keys: &[(String, String)],
    since: DateTime<Utc>,
) -> Result<Vec<(String, String, DateTime<Utc>)>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    sqlx::query_as::<sqlx::Postgres, (String, String, DateTime<Utc>)>(
        "SELECT tenant_id, patient_id, counted_at FROM messages
         WHERE (tenant_id, patient_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))
           AND counted_at > $3 AND automated AND NOT transactional",
    )
    .bind(&tenants)
    .bind(&ids)
    .bind(since)
    .fetch_all(conn)
    .await
}

#[derive(Clone, Debug, Default)]
pub struct MessageFilter {
    pub patient_id: String,
    pub plan_id: String,
    pub care_case_id: String,
    pub enrollment_id: String,
    pub staff_id: String,
    pub channel: i32,
    pub statuses: Vec<String>,
    pub idempotency_key: String,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

pub async fn list(
    conn: &mut PgConnection,
    tenant: &str,
    f: &MessageFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE tenant_id = $1
           AND ($2 = '' OR patient_id = $2) AND ($3 = '' OR case_plan_id = $3)
           AND ($4 = '' OR case_care_case_id = $4) AND ($5 = '' OR enrollment_id = $5)
           AND ($6 = '' OR staff_id = $6) AND ($7 = 0 OR channel = $7)
           AND (cardinality($8::text[]) = 0 OR status = ANY($8)) AND ($9 = '' OR idempotency_key = $9)
           AND ($10::timestamptz IS NULL OR created_at >= $10) AND ($11::timestamptz IS NULL OR created_at < $11)
         ORDER BY created_at DESC, id DESC LIMIT $12 OFFSET $13"
    );
    sqlx::query_as::<sqlx::Postgres, MessageRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&f.patient_id)
        .bind(&f.plan_id)
        .bind(&f.care_case_id)
        .bind(&f.enrollment_id)
        .bind(&f.staff_id)
        .bind(f.channel)
        .bind(&f.statuses)
        .bind(&f.idempotency_key)
        .bind(f.created_after)
        .bind(f.created_before)
        .bind(limit)
        .bind(offset)
        .fetch_all(conn)
        .await
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptRow {
    pub tenant_id: String,
    pub message_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i64,
    pub outcome: i32,
    pub status_code: i32,
    pub detail: String,
    pub retry_after_ms: Option<i64>,
}

pub async fn put_attempt(conn: &mut PgConnection, a: &AttemptRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO delivery_attempts (tenant_id, message_id, attempt, started_at, latency_ms, outcome, status_code, detail, retry_after_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (tenant_id, message_id, attempt) DO UPDATE SET latency_ms = EXCLUDED.latency_ms,
           outcome = EXCLUDED.outcome, status_code = EXCLUDED.status_code, detail = EXCLUDED.detail,
           retry_after_ms = EXCLUDED.retry_after_ms",
    )
    .bind(&a.tenant_id)
    .bind(a.message_id)
    .bind(a.attempt)
    .bind(a.started_at)
    .bind(a.latency_ms)
    .bind(a.outcome)
    .bind(a.status_code)
    .bind(&a.detail)
    .bind(a.retry_after_ms)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn attempts(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as::<sqlx::Postgres, AttemptRow>(
        "SELECT tenant_id, message_id, attempt, started_at, latency_ms, outcome, status_code, detail, retry_after_ms
         FROM delivery_attempts WHERE tenant_id = $1 AND message_id = $2 ORDER BY attempt",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(conn)
    .await
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConversationRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub patient_id: String,
    pub direction: i32,
    pub channel: i32,
    pub text: String,
    pub created_at: DateTime<Utc>,
    pub author_staff_id: String,
    pub classification: i32,
    pub read: bool,
    pub message_id: Option<Uuid>,
    pub provider_message_id: String,
}

/// Stores a conversation message; an inbound one the provider delivered twice is stored once (false).
pub async fn put_conversation(
    conn: &mut PgConnection,
    c: &ConversationRow,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO conversation_messages (tenant_id, id, patient_id, direction, channel, text, created_at,
            author_staff_id, classification, read, message_id, provider_message_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT DO NOTHING",
    )
    .bind(&c.tenant_id)
    .bind(c.id)
    .bind(&c.patient_id)
    .bind(c.direction)
    .bind(c.channel)
    .bind(&c.text)
    .bind(c.created_at)
    .bind(&c.author_staff_id)
    .bind(c.classification)
    .bind(c.read)
    .bind(c.message_id)
    .bind(&c.provider_message_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A conversation message with its outbound message's status.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConversationView {
    #[sqlx(flatten)]
    pub row: ConversationRow,
    pub status: Option<String>,
}

pub async fn conversation(
    conn: &mut PgConnection,
    tenant: &str,
    patient_id: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<ConversationView>, sqlx::Error> {
    sqlx::query_as::<sqlx::Postgres, ConversationView>(
        "SELECT c.tenant_id, c.id, c.patient_id, c.direction, c.channel, c.text, c.created_at, c.author_staff_id,
                c.classification, c.read, c.message_id, c.provider_message_id, m.status
         FROM conversation_messages c
         LEFT JOIN messages m ON m.tenant_id = c.tenant_id AND m.id = c.message_id
         WHERE c.tenant_id = $1 AND c.patient_id = $2
         ORDER BY c.created_at DESC, c.id DESC LIMIT $3 OFFSET $4",
    )
    .bind(tenant)
    .bind(patient_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

pub async fn mark_read(
    conn: &mut PgConnection,
    tenant: &str,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE conversation_messages SET read = true WHERE tenant_id = $1 AND id = ANY($2) AND direction = 1")
        .bind(tenant)
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConversationSummary {
    pub patient_id: String,
    pub last_time: DateTime<Utc>,
    pub last_text: String,
    pub last_direction: i32,
    pub unread: i64,
    pub needs_attention: bool,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub preferred_name: Option<String>,
}

pub async fn conversations(
    conn: &mut PgConnection,
    tenant: &str,
    unread_only: bool,
    limit: i64,
    offset: i64,
) -> Result<Vec<ConversationSummary>, sqlx::Error> {
    sqlx::query_as::<sqlx::Postgres, ConversationSummary>(
        "WITH per AS (
           SELECT patient_id,
                  max(created_at) AS last_time,
                  count(*) FILTER (WHERE direction = 1 AND NOT read) AS unread,
                  bool_or(direction = 1 AND NOT read AND classification = 3) AS needs_attention
           FROM conversation_messages WHERE tenant_id = $1 GROUP BY patient_id)
         SELECT per.patient_id, per.last_time, last.text AS last_text, last.direction AS last_direction,
                per.unread, per.needs_attention, c.given_name, c.family_name, c.preferred_name
         FROM per
         JOIN LATERAL (SELECT text, direction FROM conversation_messages
                       WHERE tenant_id = $1 AND patient_id = per.patient_id
                       ORDER BY created_at DESC, id DESC LIMIT 1) last ON true
         LEFT JOIN contacts c ON c.tenant_id = $1 AND c.patient_id = per.patient_id
         WHERE NOT $2 OR per.unread > 0
         ORDER BY per.last_time DESC, per.patient_id LIMIT $3 OFFSET $4",
    )
    .bind(tenant)
    .bind(unread_only)
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaskRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub owner_staff_id: String,
    pub title: String,
    pub description: String,
    pub patient_id: String,
    pub case_plan_id: String,
    pub case_care_case_id: String,
    pub due_at: Option<DateTime<Utc>>,
    pub state: i32,
    pub outcome: String,
    pub note: String,
    pub completed_by_staff_id: String,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub idempotency_key: String,
    pub enrollment_id: String,
    pub message_id: Option<Uuid>,
}

const TASK_COLUMNS: &str = "tenant_id, id, owner_staff_id, title, description, patient_id, case_plan_id, \
    case_care_case_id, due_at, state, outcome, note, completed_by_staff_id, completed_at, created_at, \
    idempotency_key, enrollment_id, message_id";

pub async fn insert_task(conn: &mut PgConnection, t: &TaskRow) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&t.tenant_id)
        .bind(t.id)
        .bind(&t.owner_staff_id)
        .bind(&t.title)
        .bind(&t.description)
        .bind(&t.patient_id)
        .bind(&t.case_plan_id)
        .bind(&t.case_care_case_id)
        .bind(t.due_at)
        .bind(t.state)
        .bind(&t.outcome)
        .bind(&t.note)
        .bind(&t.completed_by_staff_id)
        .bind(t.completed_at)
        .bind(t.created_at)
        .bind(&t.idempotency_key)
        .bind(&t.enrollment_id)
        .bind(t.message_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get_task(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
    lock: bool,
) -> Result<Option<TaskRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND id = $2 {}",
        if lock { "FOR UPDATE" } else { "" }
    );
    sqlx::query_as::<sqlx::Postgres, TaskRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn complete_task(conn: &mut PgConnection, t: &TaskRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tasks SET state = $3, outcome = $4, note = $5, completed_by_staff_id = $6, completed_at = $7
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(&t.tenant_id)
    .bind(t.id)
    .bind(t.state)
    .bind(&t.outcome)
    .bind(&t.note)
    .bind(&t.completed_by_staff_id)
    .bind(t.completed_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn list_tasks(
    conn: &mut PgConnection,
    tenant: &str,
    owner: &str,
    states: &[i32],
    patient_id: &str,
    plan_id: &str,
    care_case_id: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<TaskRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND ($2 = '' OR owner_staff_id = $2)
           AND state = ANY($3) AND ($4 = '' OR patient_id = $4) AND ($5 = '' OR case_plan_id = $5)
           AND ($6 = '' OR case_care_case_id = $6)
         ORDER BY state, CASE WHEN state = 1 THEN due_at END ASC NULLS FIRST,
                  CASE WHEN state = 2 THEN completed_at END DESC, id
         LIMIT $7 OFFSET $8"
    );
    sqlx::query_as::<sqlx::Postgres, TaskRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(owner)
        .bind(states)
        .bind(patient_id)
        .bind(plan_id)
        .bind(care_case_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(conn)
        .await
}

/// [`save`] for many messages in one statement (the delivery workers' hot path).
pub async fn save_many(conn: &mut PgConnection, rows: &[MessageRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|m| m.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "UPDATE messages m SET to_address = u.to_address, rendered_subject = u.rendered_subject,
            rendered_body = u.rendered_body, rendered_html = u.rendered_html, sms_encoding = u.sms_encoding,
            segment_count = u.segment_count, character_count = u.character_count, status = u.status,
            due_at = u.due_at, deferral_reason = u.deferral_reason, suppression_reason = u.suppression_reason,
            suppression_detail = u.suppression_detail, failure_reason = u.failure_reason, provider = u.provider,
            provider_message_id = u.provider_message_id, attempt_count = u.attempt_count,
            counted_at = u.counted_at, sent_at = u.sent_at, delivered_at = u.delivered_at, category = u.category
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::int[],
                     $9::int[], $10::text[], $11::timestamptz[], $12::int[], $13::int[], $14::text[], $15::text[],
                     $16::text[], $17::text[], $18::int[], $19::timestamptz[], $20::timestamptz[],
                     $21::timestamptz[], $22::text[])
           AS u(tenant_id, id, to_address, rendered_subject, rendered_body, rendered_html, sms_encoding,
                segment_count, character_count, status, due_at, deferral_reason, suppression_reason,
                suppression_detail, failure_reason, provider, provider_message_id, attempt_count, counted_at,
                sent_at, delivered_at, category)
         WHERE m.tenant_id = u.tenant_id AND m.id = u.id",
    )
    .bind(col!(tenant_id))
    .bind(col!(id))
    .bind(col!(to_address))
    .bind(col!(rendered_subject))
    .bind(col!(rendered_body))
    .bind(col!(rendered_html))
    .bind(col!(sms_encoding))
    .bind(col!(segment_count))
    .bind(col!(character_count))
    .bind(col!(status))
    .bind(col!(due_at))
    .bind(col!(deferral_reason))
    .bind(col!(suppression_reason))
    .bind(col!(suppression_detail))
    .bind(col!(failure_reason))
    .bind(col!(provider))
    .bind(col!(provider_message_id))
    .bind(col!(attempt_count))
    .bind(col!(counted_at))
    .bind(col!(sent_at))
    .bind(col!(delivered_at))
    .bind(col!(category))
    .execute(conn)
    .await?;
    Ok(())
}

/// [`put_attempt`] for many attempts in one statement.
pub async fn put_attempts(conn: &mut PgConnection, rows: &[AttemptRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|a| a.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO delivery_attempts (tenant_id, message_id, attempt, started_at, latency_ms, outcome, status_code, detail, retry_after_ms)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::int[], $4::timestamptz[], $5::bigint[], $6::int[], $7::int[], $8::text[], $9::bigint[])
         ON CONFLICT (tenant_id, message_id, attempt) DO UPDATE SET latency_ms = EXCLUDED.latency_ms,
           outcome = EXCLUDED.outcome, status_code = EXCLUDED.status_code, detail = EXCLUDED.detail,
           retry_after_ms = EXCLUDED.retry_after_ms",
    )
    .bind(col!(tenant_id))
    .bind(col!(message_id))
    .bind(col!(attempt))
    .bind(col!(started_at))
    .bind(col!(latency_ms))
    .bind(col!(outcome))
    .bind(col!(status_code))
    .bind(col!(detail))
    .bind(col!(retry_after_ms))
    .execute(conn)
    .await?;
    Ok(())
}

/// Outbound conversation rows, many at once.
pub async fn put_conversations(
    conn: &mut PgConnection,
    rows: &[ConversationRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|c| c.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO conversation_messages (tenant_id, id, patient_id, direction, channel, text, created_at,
            author_staff_id, classification, read, message_id, provider_message_id)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::int[], $5::int[], $6::text[], $7::timestamptz[],
            $8::text[], $9::int[], $10::bool[], $11::uuid[], $12::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(col!(tenant_id))
    .bind(col!(id))
    .bind(col!(patient_id))
    .bind(col!(direction))
    .bind(col!(channel))
    .bind(col!(text))
    .bind(col!(created_at))
    .bind(col!(author_staff_id))
    .bind(col!(classification))
    .bind(col!(read))
    .bind(col!(message_id))
    .bind(col!(provider_message_id))
    .execute(conn)
    .await?;
    Ok(())
}
