//! The HTTP edge: SMS provider callbacks (inbound messages and delivery status, each with its signature
//! checked) and the email one-click unsubscribe (RFC 8058). Errors answer 4xx with a JSON body.
//!
//! A callback is bound to its clinic: Twilio signs the URL, which names the clinic; the generic adapter
//! verifies with the clinic's own secret (`sms.callback_secrets`), or with the shared secret only when
//! the signed body names the clinic (`"tenant"`). Each callback's ids (webhook id, provider message id)
//! are remembered in `sms_callback_ids` in the transaction of its effect, so a replay is answered
//! `{"ok": true, "duplicate": true}` and changes nothing; a callback without them is refused (400).

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use followup_platform::event::is_valid_tenant;
use followup_platform::outbox::enqueue_event;
use followup_proto::followup::common::v1::ConsentSource;

use crate::INFO;
use crate::config::SmsProvider;
use crate::delivery::events;
use crate::domain::Channel;
use crate::domain::signing;
use crate::inbound::{self, InboundMessage};
use crate::state::App;
use crate::storage::messages::{self, status};

pub fn router(app: App) -> Router {
    Router::new()
        .route("/sms/twilio/{tenant}/inbound", post(twilio_inbound))
        .route("/sms/twilio/{tenant}/status", post(twilio_status))
        .route("/sms/generic/{tenant}/inbound", post(generic_inbound))
        .route("/sms/generic/{tenant}/status", post(generic_status))
        .route(
            "/unsubscribe/{token}",
            get(unsubscribe_page).post(unsubscribe),
        )
        .with_state(app)
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

fn internal(err: &dyn std::fmt::Display) -> Response {
    let reference = uuid::Uuid::now_v7().simple().to_string();
    tracing::error!(error = %err, reference = %reference, "internal error on the HTTP edge");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("internal error (reference {reference})"),
    )
}

/// Twilio signs the URL it called plus the sorted form fields with the account's auth token.
fn twilio_verified(
    app: &App,
    headers: &HeaderMap,
    path: &str,
    params: &[(String, String)],
) -> bool {
    if app.settings.sms.provider != SmsProvider::Twilio || app.settings.sms.auth_token.is_empty() {
        return false;
    }
    let Some(given) = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let url = format!(
        "{}{path}",
        app.settings.public_base_url.trim_end_matches('/')
    );
    let expected = signing::twilio_signature(app.settings.sms.auth_token.expose(), &url, params);
    signing::constant_time_eq(given.as_bytes(), expected.as_bytes())
}

/// How long a generic callback's `webhook-timestamp` stays acceptable, either way (Standard Webhooks).
const SIGNATURE_WINDOW_SECS: i64 = 300;

/// Which secret verified a generic callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signed {
    /// The clinic's own `sms.callback_secrets` entry: the signature alone names the clinic.
    ClinicSecret,
    /// The shared `sms.callback_secret`: valid for any clinic, so the body must name the clinic.
    SharedSecret,
}

/// Checks a generic callback before anything is read from it: its clinic, its id and its signature.
#[allow(clippy::result_large_err)] // the error is the handler's answer, returned at once
fn check_generic(
    app: &App,
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Signed, Response> {
    if !is_valid_tenant(tenant) {
        return Err(problem(StatusCode::NOT_FOUND, "unknown clinic"));
    }
    let forbidden = || {
        problem(
            StatusCode::FORBIDDEN,
            "webhook-signature is missing, stale or does not verify with this clinic's callback secret",
        )
    };
    if !headers.contains_key("webhook-signature") {
        return Err(forbidden());
    }
    // Signed but without the id the signature covers: a malformed callback, not a forged one.
    let Some(id) = webhook_id(headers) else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "the callback has no `webhook-id` header: each callback needs a unique id (Standard Webhooks), which is also how a replay is recognised",
        ));
    };
    generic_verified(app, tenant, id, headers, body).ok_or_else(forbidden)
}

fn webhook_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= 256)
}

/// The generic adapter's callbacks are signed the Standard Webhooks way, with the clinic's own secret
/// when it has one (`sms.callback_secrets`), else with `sms.callback_secret`.
fn generic_verified(
    app: &App,
    tenant: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Signed> {
    if app.settings.sms.provider != SmsProvider::GenericJson {
        return None;
    }
    let (secret, signed) = match app.settings.sms.callback_secrets.get(tenant) {
        Some(own) => (own, Signed::ClinicSecret),
        None => (&app.settings.sms.callback_secret, Signed::SharedSecret),
    };
    let key = signing::secret_key(secret.expose())?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let ts = header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok())?;
    let signature = header("webhook-signature")?;
    signing::verify_standard(
        &key,
        id,
        ts,
        body,
        signature,
        Utc::now().timestamp(),
        SIGNATURE_WINDOW_SECS,
    )
    .then_some(signed)
}

/// Records a callback's ids in the transaction of its effect; false when one of them was seen before
/// (a replay, or the provider retrying), and then nothing else is done. Old ids are pruned here too.
async fn first_time(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    provider: &str,
    ids: &[String],
) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM sms_callback_ids WHERE received_at < now() - interval '24 hours'")
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO sms_callback_ids (tenant_id, provider, callback_id)
         SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(provider)
    .bind(ids)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == ids.len() as u64)
}

fn duplicate() -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"ok": true, "duplicate": true})),
    )
        .into_response()
}

async fn twilio_inbound(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_valid_tenant(&tenant) {
        return problem(StatusCode::NOT_FOUND, "unknown clinic");
    }
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    if !twilio_verified(
        &app,
        &headers,
        &format!("/sms/twilio/{tenant}/inbound"),
        &params,
    ) {
        return problem(
            StatusCode::FORBIDDEN,
            "X-Twilio-Signature is missing or does not verify",
        );
    }
    let fields: HashMap<&str, &str> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sid = fields.get("MessageSid").copied().unwrap_or_default();
    if sid.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "the callback has no MessageSid: an inbound message needs the provider's message id",
        );
    }
    let mut ids = vec![format!("msg:{sid}")];
    if let Some(token) = headers
        .get("i-twilio-idempotency-token")
        .and_then(|v| v.to_str().ok())
    {
        ids.push(format!("token:{token}"));
    }
    let message = InboundMessage {
        patient_id: String::new(),
        channel: Channel::Sms,
        from: fields.get("From").copied().unwrap_or_default().to_string(),
        text: fields.get("Body").copied().unwrap_or_default().to_string(),
        provider_message_id: sid.to_string(),
        received_at: Utc::now(),
    };
    match apply_inbound(&app, &tenant, "twilio", &ids, message).await {
        Ok(false) => duplicate(),
        // An empty TwiML answer: replies go through the normal outbound path.
        Ok(true) => (
            [(axum::http::header::CONTENT_TYPE, "text/xml")],
            "<Response/>",
        )
            .into_response(),
        Err(resp) => resp,
    }
}

async fn generic_inbound(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signed = match check_generic(&app, &tenant, &headers, &body) {
        Ok(signed) => signed,
        Err(resp) => return resp,
    };
    #[derive(serde::Deserialize)]
    struct Inbound {
        from: String,
        #[serde(default)]
        text: String,
        #[serde(default)]
        id: String,
        /// The clinic, inside what is signed; required with the shared secret.
        #[serde(default)]
        tenant: Option<String>,
    }
    let parsed: Inbound = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"from\", \"text\", \"id\", \"tenant\"}}: {e}"),
            );
        }
    };
    match (&parsed.tenant, signed) {
        (Some(named), _) if named != &tenant => {
            return problem(
                StatusCode::FORBIDDEN,
                "the signed body names another clinic than this callback URL",
            );
        }
        (None, Signed::SharedSecret) => {
            return problem(
                StatusCode::FORBIDDEN,
                "a callback signed with the shared sms.callback_secret must name its clinic in the signed body (\"tenant\"), or be signed with the clinic's own secret (sms.callback_secrets)",
            );
        }
        _ => {}
    }
    if parsed.id.trim().is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "the callback has no \"id\": an inbound message needs the provider's message id",
        );
    }
    let ids = [
        format!("webhook:{}", webhook_id(&headers).unwrap_or_default()),
        format!("msg:{}", parsed.id),
    ];
    let message = InboundMessage {
        patient_id: String::new(),
        channel: Channel::Sms,
        from: parsed.from,
        text: parsed.text,
        provider_message_id: parsed.id,
        received_at: Utc::now(),
    };
    match apply_inbound(&app, &tenant, "generic_json", &ids, message).await {
        Ok(true) => (StatusCode::OK, axum::Json(serde_json::json!({"ok": true}))).into_response(),
        Ok(false) => duplicate(),
        Err(resp) => resp,
    }
}

/// Applies an inbound message once: false when its ids were seen before (nothing done).
async fn apply_inbound(
    app: &App,
    tenant: &str,
    provider: &str,
    ids: &[String],
    message: InboundMessage,
) -> Result<bool, Response> {
    let mut tx = app.pool.begin().await.map_err(|e| internal(&e))?;
    if !first_time(&mut tx, tenant, provider, ids)
        .await
        .map_err(|e| internal(&e))?
    {
        tracing::info!(tenant, provider_message_id = %message.provider_message_id, "inbound callback seen before; ignored");
        return Ok(false);
    }
    inbound::apply(app, &mut tx, tenant, message)
        .await
        .map_err(|e| internal(&e))?;
    tx.commit().await.map_err(|e| internal(&e))?;
    app.wake.notify_one();
    Ok(true)
}

async fn twilio_status(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    if !is_valid_tenant(&tenant)
        || !twilio_verified(
            &app,
            &headers,
            &format!("/sms/twilio/{tenant}/status"),
            &params,
        )
    {
        return problem(
            StatusCode::FORBIDDEN,
            "X-Twilio-Signature is missing or does not verify",
        );
    }
    let fields: HashMap<&str, &str> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sid = fields.get("MessageSid").copied().unwrap_or_default();
    let state = fields.get("MessageStatus").copied().unwrap_or_default();
    let reason = fields
        .get("ErrorCode")
        .map(|c| format!("error {c}"))
        .unwrap_or_else(|| state.to_string());
    // One message has several reports (sent, delivered): each is one callback.
    let mut ids = vec![format!("status:{sid}:{state}")];
    if let Some(token) = headers
        .get("i-twilio-idempotency-token")
        .and_then(|v| v.to_str().ok())
    {
        ids.push(format!("token:{token}"));
    }
    delivery_status(&app, &tenant, "twilio", &ids, sid, state, &reason).await
}

async fn generic_status(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A report changes only the message with that provider id in this clinic, so it needs no clinic
    // in its body: another clinic's report finds nothing here.
    if let Err(resp) = check_generic(&app, &tenant, &headers, &body) {
        return resp;
    }
    let ids = [format!(
        "webhook:{}",
        webhook_id(&headers).unwrap_or_default()
    )];
    #[derive(serde::Deserialize)]
    struct Status {
        id: String,
        status: String,
        #[serde(default)]
        reason: String,
    }
    let parsed: Status = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"id\", \"status\", \"reason\"}}: {e}"),
            );
        }
    };
    let reason = if parsed.reason.is_empty() {
        parsed.status.clone()
    } else {
        parsed.reason
    };
    delivery_status(
        &app,
        &tenant,
        "generic_json",
        &ids,
        &parsed.id,
        &parsed.status,
        &reason,
    )
    .await
}

/// delivered → DELIVERED (message_delivered); failed/undelivered → FAILED (message_failed, permanent);
/// anything else (queued, sent) changes nothing.
async fn delivery_status(
    app: &App,
    tenant: &str,
    provider: &str,
    callback_ids: &[String],
    id: &str,
    state: &str,
    reason: &str,
) -> Response {
    if id.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "the callback names no message id");
    }
    let result: Result<Option<bool>, sqlx::Error> = async {
        let mut tx = app.pool.begin().await?;
        let Some(mut row) = messages::get_by_provider_id(&mut tx, tenant, provider, id).await?
        else {
            // Not remembered: the provider retries a report that came before the message's id.
            return Ok(Some(false));
        };
        if !first_time(&mut tx, tenant, provider, callback_ids).await? {
            return Ok(None);
        }
        let now = Utc::now();
        match state {
            "delivered" | "read" if row.status == status::SENT => {
                row.status = status::DELIVERED.into();
                row.delivered_at = Some(now);
                messages::save(&mut tx, &row).await?;
                enqueue_event(&mut tx, INFO.name, &events::delivered(&row))
                    .await
                    .map_err(outbox_err)?;
            }
            "failed" | "undelivered"
                if row.status == status::SENT || row.status == status::DELIVERED =>
            {
                row.status = status::FAILED.into();
                row.failure_reason = format!("delivery report: {reason}");
                messages::save(&mut tx, &row).await?;
                enqueue_event(&mut tx, INFO.name, &events::failed(&row, 0, true))
                    .await
                    .map_err(outbox_err)?;
            }
            _ => {}
        }
        tx.commit().await?;
        Ok(Some(true))
    }
    .await;
    match result {
        Ok(Some(true)) => {
            (StatusCode::OK, axum::Json(serde_json::json!({"ok": true}))).into_response()
        }
        Ok(None) => duplicate(),
        Ok(Some(false)) => problem(StatusCode::NOT_FOUND, "no message with this provider id"),
        Err(e) => internal(&e),
    }
}

fn outbox_err(e: followup_platform::outbox::OutboxError) -> sqlx::Error {
    match e {
        followup_platform::outbox::OutboxError::Db(db) => db,
        followup_platform::outbox::OutboxError::Event(ev) => sqlx::Error::Protocol(ev.to_string()),
    }
}

/// A link scanner may GET the link: only a POST unsubscribes (the page's button, or the mail client's
/// one-click POST per RFC 8058).
async fn unsubscribe_page(State(app): State<App>, Path(token): Path<String>) -> Response {
    let Some(claims) = signing::verify_unsubscribe(&app.unsubscribe_key, &token) else {
        return (
            StatusCode::BAD_REQUEST,
            Html("<p>This unsubscribe link is not valid.</p>"),
        )
            .into_response();
    };
    if claims.expired(Utc::now().timestamp()) {
        return expired_page();
    }
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>\
         <form method=post action=\"/unsubscribe/{token}\"><p>Stop these emails?</p>\
         <button type=submit>Unsubscribe</button></form>"
    ))
    .into_response()
}

async fn unsubscribe(State(app): State<App>, Path(token): Path<String>) -> Response {
    let Some(claims) = signing::verify_unsubscribe(&app.unsubscribe_key, &token) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "this unsubscribe link is not valid",
        );
    };
    if claims.expired(Utc::now().timestamp()) {
        return expired_page();
    }
    let result: crate::error::Result<()> = async {
        let mut tx = app.pool.begin().await?;
        inbound::record_consent(
            &mut tx,
            &claims.tenant,
            &claims.patient_id,
            Some(Channel::Email),
            &claims.category,
            false,
            ConsentSource::PatientLink,
            "",
            &claims.message_id,
            "",
            "email one-click unsubscribe",
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            Html("<!doctype html><meta charset=utf-8><p>You are unsubscribed.</p>").into_response()
        }
        Err(e) => internal(&e),
    }
}

/// 410 for an unsubscribe link past its expiry, saying how else to stop the messages: a mail client's
/// one-click POST shows the same page.
fn expired_page() -> Response {
    (
        StatusCode::GONE,
        Html(
            "<!doctype html><meta charset=utf-8><title>Unsubscribe link expired</title>\
             <h1>This unsubscribe link has expired</h1>\
             <p>Unsubscribe links work for a limited time. To stop these emails, use the unsubscribe \
             link in a more recent email from the clinic, reply STOP to one of its text messages, or \
             contact the clinic and ask them to stop.</p>",
        ),
    )
        .into_response()
}
