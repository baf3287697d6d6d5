//! One delivery worker: claim, decide, send, record. See the module above for the crash windows.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use followup_platform::outbox::enqueue_event;
use followup_platform::shutdown::Shutdown;
use futures::StreamExt;
use minijinja::Value;
use sqlx::PgConnection;
use tracing::Instrument as _;
use uuid::Uuid;

use super::HELP_CATEGORY;
use super::events;
use super::providers::{self, Job, JobKind, Sent};
use crate::INFO;
use crate::domain::policy::{self, Attempt, Decision, DeferReason, SuppressReason};
use crate::domain::retry::{self, AttemptClass};
use crate::domain::signing::{UnsubscribeClaims, sign_unsubscribe};
use crate::domain::templates::{self, TemplateText};
use crate::domain::{Channel, consent::ConsentRecord};
use crate::state::App;
use crate::storage::contacts::{self, ContactRow, StaffRow};
use crate::storage::messages::{self, AttemptRow, MessageRow, status};
use crate::storage::settings::{self, CategoryRow, SettingsRow};
use crate::storage::{templates as tpl, webhooks};
use followup_platform::pacing::QuietHours;

/// Numbers of followup.common.v1.SuppressionReason, DeferralReason and AttemptOutcome.
mod code {
    pub const OPTED_OUT: i32 = 1;
    pub const FREQUENCY_CAP: i32 = 2;
    pub const NO_ADDRESS: i32 = 3;
    pub const UNKNOWN_RECIPIENT: i32 = 5;
    pub const TEMPLATE_UNAVAILABLE: i32 = 6;
    pub const EXPIRED: i32 = 7;
    pub const CATEGORY_DISABLED: i32 = 8;

    pub const DEFER_QUIET: i32 = 1;
    pub const DEFER_CAP: i32 = 2;
    pub const DEFER_NOT_BEFORE: i32 = 3;

    pub const ATTEMPT_ACCEPTED: i32 = 1;
    pub const ATTEMPT_RETRYABLE: i32 = 2;
    pub const ATTEMPT_PERMANENT: i32 = 3;
    pub const ATTEMPT_UNKNOWN: i32 = 4;
}

pub async fn run(app: App, shutdown: Shutdown, worker: usize) {
    let batch = app.settings.delivery.batch_size;
    let poll = Duration::from_millis(app.settings.delivery.poll_interval_ms);
    let mut failures = 0u32;
    while !shutdown.is_triggered() {
        match round(&app).await {
            Ok(claimed) if claimed as i64 >= batch => {
                failures = 0;
                continue;
            }
            Ok(_) => failures = 0,
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(worker, error = %err, failures, "delivery round failed; retrying");
            }
        }
        let wait = if failures > 0 {
            Duration::from_millis(100 * 2u64.saturating_pow(failures.min(6)))
        } else {
            poll
        };
        tokio::select! {
            () = shutdown.triggered() => break,
            () = tokio::time::sleep(wait) => {}
            () = app.wake.notified(), if failures == 0 => {}
        }
    }
}

/// Writes of a round, made in a few statements rather than several per message.
#[derive(Default)]
struct Writes {
    attempts: Vec<AttemptRow>,
    rows: Vec<MessageRow>,
    conversations: Vec<messages::ConversationRow>,
    events: Vec<followup_platform::event::OutgoingEvent>,
}

impl Writes {
    fn event<E: followup_proto::subjects::Event>(&mut self, event: &E) {
        let built = event
            .subject()
            .map_err(|e| format!("{e:?}"))
            .and_then(|subject| {
                followup_platform::event::OutgoingEvent::new(INFO.name, subject, event)
                    .map_err(|e| e.to_string())
            });
        match built {
            Ok(e) => self.events.push(e),
            // Only a tenant id that is not a subject token gets here; the row's tenant came from a subject.
            Err(e) => tracing::error!(error = %e, "event not publishable"),
        }
    }

    async fn write(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        messages::put_attempts(conn, &self.attempts).await?;
        messages::save_many(conn, &self.rows).await?;
        messages::put_conversations(conn, &self.conversations).await?;
        followup_platform::outbox::enqueue_events(conn, &self.events).await?;
        Ok(())
    }

    /// Writes them in a transaction of their own; on failure they are still here to try again.
    async fn flush(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        self.write(&mut tx).await?;
        tx.commit().await
    }
}

/// The span of one message's delivery (decide, send, record): a child of the trace that created the
/// message, so the provider call belongs to the patient journey that asked for it.
fn delivery_span(row: &MessageRow) -> tracing::Span {
    let span =
        tracing::info_span!("notifications.deliver", tenant = %row.tenant_id, message_id = %row.id);
    if !row.traceparent.is_empty() {
        followup_platform::telemetry::continue_trace(&span, &row.traceparent);
    }
    span
}

/// What the first transaction knows about the batch's recipients.
struct Context {
    contacts: HashMap<(String, String), ContactRow>,
    consent: HashMap<(String, String), Vec<ConsentRecord>>,
    counted: HashMap<(String, String), Vec<DateTime<Utc>>>,
    staff: HashMap<(String, String), StaffRow>,
    settings: HashMap<String, SettingsRow>,
    categories: HashMap<String, Vec<(CategoryRow, bool)>>,
    templates: HashMap<(String, String, i32), Option<tpl::Resolved>>,
}

/// One claimed round. Returns how many messages it claimed.
pub async fn round(app: &App) -> Result<usize, sqlx::Error> {
    let mut tx = app.pool.begin().await?;
    let rows = messages::claim_due(&mut tx, app.settings.delivery.batch_size).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let claimed = rows.len();
    let started = std::time::Instant::now();
    let now = Utc::now();
    let mut ctx = load_context(&mut tx, app, &rows, now).await?;
    let mut jobs: Vec<(MessageRow, Job, tracing::Span, bool)> = Vec::new();
    let mut writes = Writes::default();
    for row in rows {
        let span = delivery_span(&row);
        if let Some((row, job, resend)) = prepare(app, &mut tx, &mut ctx, &mut writes, row, now)
            .instrument(span.clone())
            .await?
        {
            jobs.push((row, job, span, resend));
        }
    }
    writes.write(&mut tx).await?;
    tx.commit().await?;
    let decided = started.elapsed();
    if jobs.is_empty() {
        return Ok(claimed);
    }

    let concurrency = app.settings.delivery.send_concurrency.max(1);
    // The sends and their recording run side by side: each answer is written as soon as it arrives (with
    // whatever other answers arrived meanwhile, in one transaction), so a slow answer keeps only its own
    // message inside the accept-then-crash window, never its neighbours.
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let sending = async move {
        futures::stream::iter(jobs)
            .map(|(row, job, span, resend)| async move {
                let sent = providers::send(app, &job).instrument(span.clone()).await;
                Answer {
                    row,
                    job,
                    sent,
                    span,
                    resend,
                }
            })
            .buffer_unordered(concurrency)
            .for_each(|answer| {
                // The receiver lives until every answer is in; a send error cannot happen.
                let _ = answered.send(answer);
                futures::future::ready(())
            })
            .await;
    };
    let ((), written) = tokio::join!(sending, record_answers(app, &mut answers));
    tracing::debug!(
        claimed,
        answers = written,
        decide_ms = decided.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "delivery round"
    );
    Ok(claimed)
}

/// One provider answer, with what recording it needs.
struct Answer {
    row: MessageRow,
    job: Job,
    sent: Sent,
    span: tracing::Span,
    /// Whether an attempt whose outcome is unknown may be made again ([`resend_when_unknown`]).
    resend: bool,
}

/// Writes answers as they arrive until the round's last one is written. A write that fails (the
/// database is down, a statement failed) is kept in memory and retried with backoff, never by calling
/// the provider again: the answers are what the providers said, and only the database is missing them.
/// Returns how many answers were written.
async fn record_answers(
    app: &App,
    answers: &mut tokio::sync::mpsc::UnboundedReceiver<Answer>,
) -> usize {
    let mut pending = Writes::default();
    let mut held = 0usize;
    let mut written = 0usize;
    let mut failures = 0u32;
    let mut open = true;
    loop {
        if held == 0 {
            // Nothing to write: wait for the next answer (or the end of the round).
            match answers.recv().await {
                Some(a) => {
                    a.span
                        .clone()
                        .in_scope(|| record(app, &mut pending, a.row, &a.job, a.sent, a.resend));
                    held += 1;
                }
                None => return written,
            }
        }
        // Everything else that has arrived goes in the same transaction.
        while open {
            match answers.try_recv() {
                Ok(a) => {
                    a.span
                        .clone()
                        .in_scope(|| record(app, &mut pending, a.row, &a.job, a.sent, a.resend));
                    held += 1;
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        match pending.flush(&app.pool).await {
            Ok(()) => {
                written += held;
                held = 0;
                failures = 0;
                pending = Writes::default();
                if !open && answers.is_empty() {
                    return written;
                }
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                app.metrics.record_retries.inc();
                let wait = Duration::from_millis(100 * 2u64.saturating_pow(failures.min(5)));
                tracing::warn!(error = %err, answers = held, failures, retry_in_ms = wait.as_millis() as u64, "recording provider answers failed; keeping them and retrying (the providers are not called again)");
                // Answers that arrive meanwhile join the next try.
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Whether a second attempt after one whose outcome is unknown is harmless or allowed: the provider
/// dedupes on the idempotency key (an SMS provider configured so), or the clinic chose at-least-once
/// for the channel.
fn resend_when_unknown(app: &App, clinic: &SettingsRow, channel: Channel) -> bool {
    (channel == Channel::Sms && app.settings.sms.honours_idempotency_key)
        || clinic.resend_when_unknown(channel)
}

/// An attempt's outcome is unknown and it must not be made again: staff decide (the message may or may
/// not have reached the recipient).
fn possibly_sent(app: &App, row: &mut MessageRow, why: &str) {
    row.status = status::POSSIBLY_SENT.into();
    row.due_at = None;
    row.failure_reason = format!(
        "{why}; the message may have been delivered, so it is not sent again (at-most-once for this channel)"
    )
    .chars()
    .take(1000)
    .collect();
    let channel = Channel::from_i32(row.channel).map_or("unknown", Channel::name);
    app.metrics.unknown_outcome(channel, "possibly_sent");
    tracing::warn!(tenant = %row.tenant_id, message_id = %row.id, attempt = row.attempt_count, channel, "attempt outcome unknown; marked possibly sent, not sent again");
}

async fn load_context(
    conn: &mut PgConnection,
    app: &App,
    rows: &[MessageRow],
    now: DateTime<Utc>,
) -> Result<Context, sqlx::Error> {
    let mut patients: Vec<(String, String)> = rows
        .iter()
        .filter(|r| !r.patient_id.is_empty())
        .map(|r| (r.tenant_id.clone(), r.patient_id.clone()))
        .collect();
    patients.sort();
    patients.dedup();
    let mut staff_keys: Vec<(String, String)> = rows
        .iter()
        .flat_map(|r| [&r.staff_id, &r.owner_staff_id].map(|s| (r.tenant_id.clone(), s.clone())))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    staff_keys.sort();
    staff_keys.dedup();

    let contacts: HashMap<_, _> = contacts::lock_many(conn, &patients)
        .await?
        .into_iter()
        .map(|c| ((c.tenant_id.clone(), c.patient_id.clone()), c))
        .collect();
    let mut consent: HashMap<(String, String), Vec<ConsentRecord>> = HashMap::new();
    for row in contacts::consent_many(conn, &patients).await? {
        consent
            .entry((row.tenant_id.clone(), row.patient_id.clone()))
            .or_default()
            .push(row.record());
    }
    let mut counted: HashMap<(String, String), Vec<DateTime<Utc>>> = HashMap::new();
    for (tenant, patient, at) in messages::counted_since(
        conn,
        &patients,
        now - followup_platform::pacing::cap_window(),
    )
    .await?
    {
        counted.entry((tenant, patient)).or_default().push(at);
    }
    let staff: HashMap<_, _> = contacts::staff_many(conn, &staff_keys)
        .await?
        .into_iter()
        .map(|s| ((s.tenant_id.clone(), s.staff_id.clone()), s))
        .collect();
    let mut settings_map = HashMap::new();
    let mut categories = HashMap::new();
    for tenant in rows.iter().map(|r| r.tenant_id.clone()) {
        if settings_map.contains_key(&tenant) {
            continue;
        }
        let s = settings::get(conn, &tenant, &app.settings.default_time_zone).await?;
        settings_map.insert(tenant.clone(), s);
        categories.insert(
            tenant.clone(),
            settings::list_categories(conn, &tenant).await?,
        );
    }
    let mut templates = HashMap::new();
    for r in rows.iter().filter(|r| !r.template_key.is_empty()) {
        let key = (r.tenant_id.clone(), r.template_key.clone(), r.channel);
        if templates.contains_key(&key) {
            continue;
        }
        let resolved = match Channel::from_i32(r.channel) {
            Some(ch) => tpl::resolve(conn, &r.tenant_id, &r.template_key, ch).await?,
            None => None,
        };
        templates.insert(key, resolved);
    }
    Ok(Context {
        contacts,
        consent,
        counted,
        staff,
        settings: settings_map,
        categories,
        templates,
    })
}

/// Who a message goes to, as the worker sees it.
struct Recipient {
    address: String,
    zone: Tz,
    quiet: QuietHours,
    /// Patients and enquirers: consent and the cap apply.
    patient: bool,
    first_name: String,
    full_name: String,
    staff_name: String,
}

fn suppress(row: &mut MessageRow, reason: i32, detail: impl Into<String>) {
    row.status = status::SUPPRESSED.into();
    row.due_at = None;
    row.suppression_reason = reason;
    row.suppression_detail = detail.into();
    row.deferral_reason = 0;
}

async fn finish_suppressed(conn: &mut PgConnection, row: &MessageRow) -> Result<(), sqlx::Error> {
    messages::save(conn, row).await?;
    enqueue(conn, &events::suppressed(row)).await?;
    tracing::info!(tenant = %row.tenant_id, message_id = %row.id, reason = row.suppression_reason, "message suppressed");
    Ok(())
}

async fn enqueue<E: followup_proto::subjects::Event>(
    conn: &mut PgConnection,
    event: &E,
) -> Result<(), sqlx::Error> {
    match enqueue_event(conn, INFO.name, event).await {
        Ok(_) => Ok(()),
        Err(followup_platform::outbox::OutboxError::Db(e)) => Err(e),
        Err(followup_platform::outbox::OutboxError::Event(e)) => {
            // Only a tenant id that is not a subject token gets here; the row's tenant came from a subject.
            tracing::error!(error = %e, "event not publishable");
            Ok(())
        }
    }
}

/// Decides one message inside the claim transaction. Returns a job when it must go to a provider.
async fn prepare(
    app: &App,
    conn: &mut PgConnection,
    ctx: &mut Context,
    writes: &mut Writes,
    mut row: MessageRow,
    now: DateTime<Utc>,
) -> Result<Option<(MessageRow, Job, bool)>, sqlx::Error> {
    let tenant = row.tenant_id.clone();
    let Some(clinic) = ctx.settings.get(&tenant).cloned() else {
        return Ok(None);
    };
    let Some(channel) = Channel::from_i32(row.channel) else {
        suppress(&mut row, code::NO_ADDRESS, "unknown channel");
        finish_suppressed(conn, &row).await?;
        return Ok(None);
    };
    let resend = resend_when_unknown(app, &clinic, channel);
    if row.status == status::SENDING {
        // The lease of an attempt marked in flight ran out: the worker stopped mid-call, so that attempt's
        // outcome is unknown (a message never attempted is never `sending`).
        if !resend {
            let why = format!(
                "attempt {} was in flight when its worker stopped",
                row.attempt_count
            );
            possibly_sent(app, &mut row, &why);
            messages::save(conn, &row).await?;
            return Ok(None);
        }
        app.metrics.unknown_outcome(channel.name(), "retried");
        tracing::warn!(tenant = %tenant, message_id = %row.id, attempt = row.attempt_count, "taking over a message whose attempt outcome is unknown (a worker stopped mid-send); retrying with the same idempotency key");
    }

    if channel == Channel::Task {
        create_task(conn, ctx, &clinic, &mut row, now).await?;
        return Ok(None);
    }

    // The template, with its default category.
    let template = if row.template_key.is_empty() {
        None
    } else {
        match ctx
            .templates
            .get(&(tenant.clone(), row.template_key.clone(), row.channel))
            .cloned()
            .flatten()
        {
            Some(t) if t.row.enabled => Some(t),
            Some(_) => {
                let detail = format!(
                    "template `{}` is disabled for {}",
                    row.template_key,
                    channel.name()
                );
                suppress(&mut row, code::TEMPLATE_UNAVAILABLE, detail);
                finish_suppressed(conn, &row).await?;
                return Ok(None);
            }
            None => {
                let detail = format!("no template `{}` for {}", row.template_key, channel.name());
                suppress(&mut row, code::TEMPLATE_UNAVAILABLE, detail);
                finish_suppressed(conn, &row).await?;
                return Ok(None);
            }
        }
    };
    if row.category.is_empty()
        && let Some(t) = &template
    {
        row.category = t.row.category.clone();
    }
    let category_transactional = ctx
        .categories
        .get(&tenant)
        .and_then(|cats| cats.iter().find(|(c, _)| c.key == row.category))
        .is_some_and(|(c, _)| c.transactional);

    // The recipient and the address for the channel.
    let recipient = match resolve_recipient(app, ctx, &clinic, &mut row, channel, now).await? {
        Ok(r) => r,
        Err(Some((reason, detail))) => {
            suppress(&mut row, reason, detail);
            finish_suppressed(conn, &row).await?;
            return Ok(None);
        }
        Err(None) => {
            // Waiting for the recipient to be known; already rescheduled.
            messages::save(conn, &row).await?;
            return Ok(None);
        }
    };

    let key = (tenant.clone(), row.patient_id.clone());
    let empty_consent = Vec::new();
    let consent_log = if row.category == HELP_CATEGORY || !recipient.patient {
        &empty_consent
    } else {
        ctx.consent.get(&key).unwrap_or(&empty_consent)
    };
    let transactional =
        row.transactional || category_transactional || row.category == HELP_CATEGORY;
    // A message counts toward the cap once; retries of a counted message hold their slot.
    let capped = recipient.patient
        && !row.patient_id.is_empty()
        && row.automated
        && !transactional
        && row.counted_at.is_none();
    let counted = ctx.counted.get(&key).cloned().unwrap_or_default();
    let decision = policy::decide(&Attempt {
        now,
        channel,
        category: &row.category,
        transactional: !capped,
        automated: row.automated,
        has_address: !recipient.address.is_empty(),
        consent: consent_log,
        zone: recipient.zone,
        quiet: recipient.quiet,
        weekly_cap: u32::try_from(clinic.weekly_cap).unwrap_or(0),
        counted: &counted,
        created_at: row.created_at,
        cap_deferral_limit: clinic.cap_deferral_limit(),
        not_before: row.not_before,
        expire_at: row.expire_at,
    });
    match decision {
        Decision::Suppress { reason, detail } => {
            let reason = match reason {
                SuppressReason::OptedOut => code::OPTED_OUT,
                SuppressReason::FrequencyCap => code::FREQUENCY_CAP,
                SuppressReason::NoAddress => code::NO_ADDRESS,
                SuppressReason::Expired => code::EXPIRED,
            };
            suppress(&mut row, reason, detail);
            finish_suppressed(conn, &row).await?;
            return Ok(None);
        }
        Decision::Defer { until, reason } => {
            row.status = if row.attempt_count > 0 {
                status::RETRYING
            } else {
                status::DEFERRED
            }
            .into();
            row.due_at = Some(until);
            row.deferral_reason = match reason {
                DeferReason::QuietHours => code::DEFER_QUIET,
                DeferReason::FrequencyCap => code::DEFER_CAP,
                DeferReason::NotBefore => code::DEFER_NOT_BEFORE,
            };
            messages::save(conn, &row).await?;
            return Ok(None);
        }
        Decision::Send => {}
    }

    // Render (a HELP reply or a staff reply comes rendered).
    if let Some(t) = &template {
        let vars = variables(app, &row, &recipient, &clinic, ctx, channel);
        match templates::render(channel, &t.text(), &vars) {
            Ok(rendered) => {
                row.rendered_subject = rendered.subject;
                row.rendered_body = rendered.body;
                row.rendered_html = rendered.html_body;
                if let Some(cost) = rendered.sms {
                    row.sms_encoding = match cost.encoding {
                        crate::domain::gsm::Encoding::Gsm7 => 1,
                        crate::domain::gsm::Encoding::Ucs2 => 2,
                    };
                    row.segment_count = cost.segments as i32;
                    row.character_count = cost.characters as i32;
                }
            }
            Err(err) => {
                suppress(&mut row, code::TEMPLATE_UNAVAILABLE, err.to_string());
                finish_suppressed(conn, &row).await?;
                return Ok(None);
            }
        }
    } else if channel == Channel::Sms {
        let cost = crate::domain::gsm::cost(&row.rendered_body);
        row.sms_encoding = if cost.encoding == crate::domain::gsm::Encoding::Gsm7 {
            1
        } else {
            2
        };
        row.segment_count = cost.segments as i32;
        row.character_count = cost.characters as i32;
    }
    row.to_address = recipient.address.clone();
    row.deferral_reason = 0;
    if capped {
        row.counted_at = Some(now);
        ctx.counted.entry(key).or_default().push(now);
    }

    if channel == Channel::Chat {
        // Stored in the patient's conversation: that is the delivery.
        row.attempt_count += 1;
        row.status = status::SENT.into();
        row.provider = "chat".into();
        row.sent_at = Some(now);
        row.due_at = None;
        messages::put_attempt(
            conn,
            &attempt_row(
                &row,
                now,
                code::ATTEMPT_ACCEPTED,
                0,
                "stored in the conversation",
                None,
                Duration::ZERO,
            ),
        )
        .await?;
        messages::save(conn, &row).await?;
        if let Some(c) = outbound_conversation(&row, now) {
            messages::put_conversation(conn, &c).await?;
        }
        enqueue(conn, &events::sent(&row)).await?;
        return Ok(None);
    }

    let kind = match channel {
        Channel::Sms => JobKind::Sms {
            to: recipient.address.clone(),
            body: row.rendered_body.clone(),
        },
        Channel::Email => JobKind::Email {
            to: recipient.address.clone(),
            from: if clinic.email_from.is_empty() {
                app.settings.smtp.from.clone()
            } else {
                clinic.email_from.clone()
            },
            subject: row.rendered_subject.clone(),
            body: row.rendered_body.clone(),
            html: row.rendered_html.clone(),
            unsubscribe_url: (recipient.patient && !row.patient_id.is_empty())
                .then(|| unsubscribe_url(app, &row)),
        },
        Channel::Webhook => {
            let Some(endpoint) = webhook_endpoint(conn, &row).await? else {
                row.status = status::FAILED.into();
                row.due_at = None;
                row.failure_reason = "the webhook endpoint was deleted or disabled".into();
                messages::save(conn, &row).await?;
                enqueue(conn, &events::failed(&row, 0, true)).await?;
                return Ok(None);
            };
            let payload = webhook_payload(&row, &clinic, now);
            JobKind::Webhook {
                url: endpoint.url.clone(),
                secrets: endpoint
                    .signing_secrets(now)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                payload,
            }
        }
        Channel::Chat | Channel::Task => return Ok(None),
    };
    row.attempt_count += 1;
    row.status = status::SENDING.into();
    row.due_at = Some(now + chrono::Duration::seconds(app.settings.delivery.lease_secs as i64));
    row.provider = providers::provider_name(app, &kind).to_string();
    // Written (in the round's batch) and committed before any request leaves.
    writes.attempts.push(attempt_row(
        &row,
        now,
        code::ATTEMPT_UNKNOWN,
        0,
        "",
        None,
        Duration::ZERO,
    ));
    writes.rows.push(row.clone());
    let idempotency = match &row.idempotency_key {
        Some(k) if k.bytes().all(|b| b.is_ascii_graphic()) => format!("{}:{k}", row.tenant_id),
        _ => row.id.to_string(),
    };
    let job = Job {
        tenant: row.tenant_id.clone(),
        message_id: row.id,
        attempt: row.attempt_count,
        idempotency,
        kind,
    };
    Ok(Some((row, job, resend)))
}

fn attempt_row(
    row: &MessageRow,
    started: DateTime<Utc>,
    outcome: i32,
    status_code: i32,
    detail: &str,
    retry_after: Option<Duration>,
    latency: Duration,
) -> AttemptRow {
    AttemptRow {
        tenant_id: row.tenant_id.clone(),
        message_id: row.id,
        attempt: row.attempt_count,
        started_at: started,
        latency_ms: latency.as_millis() as i64,
        outcome,
        status_code,
        detail: detail.chars().take(1000).collect(),
        retry_after_ms: retry_after.map(|d| d.as_millis() as i64),
    }
}

/// Ok(recipient), or Err(Some(suppression)), or Err(None) when it must wait (rescheduled on `row`).
async fn resolve_recipient(
    app: &App,
    ctx: &Context,
    clinic: &SettingsRow,
    row: &mut MessageRow,
    channel: Channel,
    now: DateTime<Utc>,
) -> Result<Result<Recipient, Option<(i32, String)>>, sqlx::Error> {
    let clinic_zone = clinic.zone();
    // A webhook goes to a third-party system; the patient is what it is about, not who receives it.
    if channel == Channel::Webhook {
        return Ok(Ok(Recipient {
            address: row.webhook_endpoint_id.clone(),
            zone: clinic_zone,
            quiet: QuietHours {
                start: clinic.quiet().start,
                end: clinic.quiet().start,
            },
            patient: false,
            first_name: String::new(),
            full_name: String::new(),
            staff_name: String::new(),
        }));
    }
    if !row.patient_id.is_empty() {
        let Some(c) = ctx
            .contacts
            .get(&(row.tenant_id.clone(), row.patient_id.clone()))
        else {
            let grace = chrono::Duration::seconds(
                app.settings.delivery.unknown_recipient_grace_secs as i64,
            );
            if now < row.created_at + grace {
                // patient.upserted travels on another stream and may still be on its way.
                row.due_at = Some((now + chrono::Duration::seconds(5)).min(row.created_at + grace));
                return Ok(Err(None));
            }
            return Ok(Err(Some((
                code::UNKNOWN_RECIPIENT,
                "the patient is unknown to notifications (no patient.upserted)".into(),
            ))));
        };
        if c.archived {
            return Ok(Err(Some((
                code::UNKNOWN_RECIPIENT,
                "the patient record is archived".into(),
            ))));
        }
        let address = match channel {
            Channel::Sms => c.phone_e164.clone(),
            Channel::Email => c.email.clone(),
            _ => c.patient_id.clone(),
        };
        let zone = c.time_zone.parse::<Tz>().unwrap_or(clinic_zone);
        return Ok(Ok(Recipient {
            address,
            zone,
            quiet: clinic.quiet(),
            patient: true,
            first_name: c.first_name().to_string(),
            full_name: c.full_name(),
            staff_name: String::new(),
        }));
    }
    if !row.staff_id.is_empty() {
        let Some(s) = ctx
            .staff
            .get(&(row.tenant_id.clone(), row.staff_id.clone()))
        else {
            return Ok(Err(Some((
                code::UNKNOWN_RECIPIENT,
                "the staff member is unknown to notifications".into(),
            ))));
        };
        if !s.active {
            return Ok(Err(Some((
                code::UNKNOWN_RECIPIENT,
                "the staff member is inactive".into(),
            ))));
        }
        if s.disabled_categories.contains(&row.category) {
            return Ok(Err(Some((
                code::CATEGORY_DISABLED,
                format!("the staff member turned `{}` off", row.category),
            ))));
        }
        let address = if channel == Channel::Email {
            s.email.clone()
        } else {
            String::new()
        };
        return Ok(Ok(Recipient {
            address,
            zone: clinic_zone,
            // Staff alerts go when they happen; staff choose their own quiet on their devices.
            quiet: QuietHours {
                start: clinic.quiet().start,
                end: clinic.quiet().start,
            },
            patient: false,
            first_name: String::new(),
            full_name: String::new(),
            staff_name: s.display_name.clone(),
        }));
    }
    if let Some(direct) = &row.direct_contact {
        let field = |name: &str| {
            direct
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let address = match channel {
            Channel::Sms => field("phone_e164"),
            Channel::Email => field("email"),
            _ => String::new(),
        };
        let zone = field("time_zone").parse::<Tz>().unwrap_or(clinic_zone);
        let first = field("given_name");
        return Ok(Ok(Recipient {
            address,
            zone,
            quiet: clinic.quiet(),
            patient: true,
            full_name: format!("{first} {}", field("family_name"))
                .trim()
                .to_string(),
            first_name: first,
            staff_name: String::new(),
        }));
    }
    Ok(Err(Some((
        code::UNKNOWN_RECIPIENT,
        "the request names no recipient".into(),
    ))))
}

fn variables(
    app: &App,
    row: &MessageRow,
    recipient: &Recipient,
    clinic: &SettingsRow,
    ctx: &Context,
    channel: Channel,
) -> BTreeMap<String, Value> {
    let mut vars = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        vars.insert(k.to_string(), v);
    };
    put(
        "patient_first_name",
        Value::from(recipient.first_name.clone()),
    );
    put("patient_name", Value::from(recipient.full_name.clone()));
    put("staff_name", Value::from(recipient.staff_name.clone()));
    put("clinic_name", Value::from(clinic.display_name()));
    put("clinic_phone", Value::from(clinic.display_phone()));
    let owner = ctx
        .staff
        .get(&(row.tenant_id.clone(), row.owner_staff_id.clone()))
        .map(|s| s.display_name.clone())
        .unwrap_or_default();
    put("owner_name", Value::from(owner));
    if channel == Channel::Email && recipient.patient && !row.patient_id.is_empty() {
        put("unsubscribe_url", Value::from(unsubscribe_url(app, row)));
    } else {
        put("unsubscribe_url", Value::from(""));
    }
    if let Some(map) = row.variables.as_object() {
        for (k, v) in map {
            let value = match (k.as_str(), v.as_str()) {
                ("appointment_time", Some(text)) => Value::from(local_time(text, recipient.zone)),
                _ => templates::json_value(v),
            };
            vars.insert(k.clone(), value);
        }
    }
    vars
}

/// An RFC 3339 instant as the recipient reads it: "Tue 3 Dec, 14:30" in their zone.
fn local_time(text: &str, zone: Tz) -> String {
    match DateTime::parse_from_rfc3339(text) {
        Ok(t) => t
            .with_timezone(&zone)
            .format("%a %-d %b, %H:%M")
            .to_string(),
        Err(_) => text.to_string(),
    }
}

fn unsubscribe_url(app: &App, row: &MessageRow) -> String {
    let token = sign_unsubscribe(
        &app.unsubscribe_key,
        &UnsubscribeClaims {
            tenant: row.tenant_id.clone(),
            patient_id: row.patient_id.clone(),
            category: row.category.clone(),
            message_id: row.id.to_string(),
            expires: Some(app.unsubscribe_link_expiry()),
        },
    );
    format!(
        "{}/unsubscribe/{token}",
        app.settings.public_base_url.trim_end_matches('/')
    )
}

async fn webhook_endpoint(
    conn: &mut PgConnection,
    row: &MessageRow,
) -> Result<Option<webhooks::EndpointRow>, sqlx::Error> {
    let Ok(id) = Uuid::parse_str(&row.webhook_endpoint_id) else {
        return Ok(None);
    };
    Ok(webhooks::get_any(conn, &row.tenant_id, id)
        .await?
        .filter(|e| e.enabled && !e.deleted))
}

/// The JSON a webhook receives: the request as a third-party task system needs it.
fn webhook_payload(row: &MessageRow, clinic: &SettingsRow, now: DateTime<Utc>) -> Vec<u8> {
    serde_json::json!({
        "type": "scheduler.step",
        "timestamp": now.to_rfc3339(),
        "data": {
            "message_id": row.id.to_string(),
            "tenant_id": row.tenant_id,
            "clinic_name": clinic.clinic_name,
            "idempotency_key": row.idempotency_key,
            "template_key": row.template_key,
            "category": row.category,
            "patient_id": row.patient_id,
            "case": { "plan_id": row.case_plan_id, "care_case_id": row.case_care_case_id },
            "enrollment_id": row.enrollment_id,
            "owner_staff_id": row.owner_staff_id,
            "task": row.task,
            "variables": row.variables,
        }
    })
    .to_string()
    .into_bytes()
}

fn outbound_conversation(
    row: &MessageRow,
    now: DateTime<Utc>,
) -> Option<messages::ConversationRow> {
    if row.patient_id.is_empty()
        || !Channel::from_i32(row.channel).is_some_and(Channel::reaches_patient)
    {
        return None;
    }
    Some(messages::ConversationRow {
        tenant_id: row.tenant_id.clone(),
        id: Uuid::now_v7(),
        patient_id: row.patient_id.clone(),
        direction: 2,
        channel: row.channel,
        text: if row.rendered_subject.is_empty() {
            row.rendered_body.clone()
        } else {
            format!("{}\n\n{}", row.rendered_subject, row.rendered_body)
        },
        created_at: now,
        author_staff_id: if row.automated {
            String::new()
        } else {
            row.requested_by.clone()
        },
        classification: 0,
        read: true,
        message_id: Some(row.id),
        provider_message_id: String::new(),
    })
}

async fn create_task(
    conn: &mut PgConnection,
    ctx: &Context,
    clinic: &SettingsRow,
    row: &mut MessageRow,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let spec = row.task.clone().unwrap_or_default();
    let text = |name: &str| {
        spec.get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (mut title, mut description) = (text("title"), text("description"));
    if title.is_empty() {
        // No task text given: render the TASK template (the request's key, else the generic one).
        let key = if row.template_key.is_empty() {
            "task".to_string()
        } else {
            row.template_key.clone()
        };
        let template = ctx
            .templates
            .get(&(row.tenant_id.clone(), key.clone(), row.channel))
            .cloned()
            .flatten()
            .or_else(|| {
                templates::default_for("task", Channel::Task)
                    .map(|d| tpl::default_row(&row.tenant_id, d))
            });
        let patient = ctx
            .contacts
            .get(&(row.tenant_id.clone(), row.patient_id.clone()));
        let mut vars: BTreeMap<String, Value> = BTreeMap::new();
        vars.insert(
            "patient_first_name".into(),
            Value::from(
                patient
                    .map(|c| c.first_name().to_string())
                    .unwrap_or_default(),
            ),
        );
        vars.insert(
            "patient_name".into(),
            Value::from(patient.map(|c| c.full_name()).unwrap_or_default()),
        );
        vars.insert("clinic_name".into(), Value::from(clinic.display_name()));
        vars.insert("task_title".into(), Value::from("Follow up"));
        vars.insert("task_description".into(), Value::from(""));
        if let Some(map) = row.variables.as_object() {
            for (k, v) in map {
                vars.insert(k.clone(), templates::json_value(v));
            }
        }
        let rendered = template.and_then(|t| {
            templates::render(
                Channel::Task,
                &TemplateText {
                    subject: t.row.subject.clone(),
                    body: t.row.body.clone(),
                    html_body: String::new(),
                },
                &vars,
            )
            .ok()
        });
        match rendered {
            Some(r) => {
                title = r.subject;
                description = r.body;
            }
            None => title = "Follow up with the patient".into(),
        }
    }
    let owner = if !row.owner_staff_id.is_empty() {
        row.owner_staff_id.clone()
    } else if !row.staff_id.is_empty() {
        row.staff_id.clone()
    } else {
        clinic.default_task_owner_staff_id.clone()
    };
    let due_at = spec
        .get("due_time")
        .and_then(|v| v.as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let task = messages::TaskRow {
        tenant_id: row.tenant_id.clone(),
        id: Uuid::now_v7(),
        owner_staff_id: owner,
        title: title.chars().take(500).collect(),
        description,
        patient_id: row.patient_id.clone(),
        case_plan_id: row.case_plan_id.clone(),
        case_care_case_id: row.case_care_case_id.clone(),
        due_at,
        state: 1,
        outcome: String::new(),
        note: String::new(),
        completed_by_staff_id: String::new(),
        completed_at: None,
        created_at: now,
        idempotency_key: row.idempotency_key.clone().unwrap_or_default(),
        enrollment_id: row.enrollment_id.clone(),
        message_id: Some(row.id),
    };
    messages::insert_task(conn, &task).await?;
    row.status = status::SENT.into();
    row.due_at = None;
    row.attempt_count = 1;
    row.provider = "task".into();
    row.provider_message_id = task.id.to_string();
    row.to_address = task.owner_staff_id.clone();
    row.rendered_subject = task.title.clone();
    row.rendered_body = task.description.clone();
    row.sent_at = Some(now);
    messages::save(conn, row).await?;
    enqueue(conn, &events::task_created(&task)).await?;
    enqueue(conn, &events::sent(row)).await?;
    tracing::info!(tenant = %row.tenant_id, task_id = %task.id, owner = %task.owner_staff_id, "task created");
    Ok(())
}

/// Records one provider answer (written as soon as it arrives, see [`record_answers`]).
fn record(
    app: &App,
    writes: &mut Writes,
    mut row: MessageRow,
    job: &Job,
    sent: Sent,
    resend: bool,
) {
    let started = Utc::now() - chrono::Duration::from_std(sent.latency).unwrap_or_default();
    let outcome = match sent.class {
        AttemptClass::Accepted => code::ATTEMPT_ACCEPTED,
        AttemptClass::Retryable => code::ATTEMPT_RETRYABLE,
        AttemptClass::Permanent => code::ATTEMPT_PERMANENT,
        AttemptClass::Unknown => code::ATTEMPT_UNKNOWN,
    };
    writes.attempts.push(attempt_row(
        &row,
        started,
        outcome,
        sent.status_code,
        &sent.detail,
        sent.retry_after,
        sent.latency,
    ));
    let now = Utc::now();
    let channel = Channel::from_i32(row.channel).map_or("unknown", Channel::name);
    let class = match sent.class {
        AttemptClass::Unknown if !resend => {
            let why = format!("attempt {}: {}", row.attempt_count, sent.detail);
            possibly_sent(app, &mut row, &why);
            writes.rows.push(row);
            return;
        }
        AttemptClass::Unknown => {
            app.metrics.unknown_outcome(channel, "retried");
            AttemptClass::Retryable
        }
        other => other,
    };
    match class {
        AttemptClass::Accepted => {
            row.status = status::SENT.into();
            row.due_at = None;
            row.sent_at = Some(now);
            row.provider_message_id = sent.provider_message_id.clone();
            row.failure_reason.clear();
            writes
                .conversations
                .extend(outbound_conversation(&row, now));
            writes.event(&events::sent(&row));
            writes.rows.push(row.clone());
            tracing::debug!(tenant = %row.tenant_id, message_id = %row.id, attempt = job.attempt, provider = sent.provider, "message sent");
        }
        AttemptClass::Retryable => {
            let schedule = app.settings.delivery.schedule();
            match retry::next_delay(&schedule, row.attempt_count as u32, sent.retry_after) {
                Some(delay) => {
                    row.status = status::RETRYING.into();
                    row.due_at = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
                    row.failure_reason = sent.detail.clone();
                    writes.rows.push(row.clone());
                    tracing::info!(tenant = %row.tenant_id, message_id = %row.id, attempt = job.attempt, status = sent.status_code, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                }
                None => {
                    row.status = status::FAILED.into();
                    row.due_at = None;
                    row.failure_reason = sent.detail.clone();
                    writes.event(&events::failed(&row, sent.status_code, false));
                    writes.rows.push(row.clone());
                    tracing::info!(tenant = %row.tenant_id, message_id = %row.id, attempts = row.attempt_count, "retries exhausted; message failed");
                }
            }
        }
        AttemptClass::Permanent => {
            row.status = status::FAILED.into();
            row.due_at = None;
            row.failure_reason = sent.detail.clone();
            writes.event(&events::failed(&row, sent.status_code, true));
            writes.rows.push(row.clone());
            tracing::info!(tenant = %row.tenant_id, message_id = %row.id, status = sent.status_code, "provider refused the message; failed");
        }
        AttemptClass::Unknown => {}
    }
}
