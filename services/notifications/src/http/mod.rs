//! The HTTP edge: SMS provider callbacks (inbound messages and delivery status, each with its signature
//! checked) and the email one-click unsubscribe (RFC 8058). Errors answer 4xx with a JSON body.

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

/// The generic adapter's callbacks are signed the Standard Webhooks way with `sms.callback_secret`.
fn generic_verified(app: &App, headers: &HeaderMap, body: &[u8]) -> bool {
    if app.settings.sms.provider != SmsProvider::GenericJson {
        return false;
    }
    let Some(key) = signing::secret_key(app.settings.sms.callback_secret.expose()) else {
        return false;
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(signature)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        header("webhook-signature"),
    ) else {
        return false;
    };
    signing::verify_standard(&key, id, ts, body, signature, Utc::now().timestamp(), 300)
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
    let message = InboundMessage {
        patient_id: String::new(),
        channel: Channel::Sms,
        from: fields.get("From").copied().unwrap_or_default().to_string(),
        text: fields.get("Body").copied().unwrap_or_default().to_string(),
        provider_message_id: fields
            .get("MessageSid")
            .copied()
            .unwrap_or_default()
            .to_string(),
        received_at: Utc::now(),
    };
    match apply_inbound(&app, &tenant, message).await {
        // An empty TwiML answer: replies go through the normal outbound path.
        Ok(()) => (
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
    if !is_valid_tenant(&tenant) {
        return problem(StatusCode::NOT_FOUND, "unknown clinic");
    }
    if !generic_verified(&app, &headers, &body) {
        return problem(
            StatusCode::FORBIDDEN,
            "webhook-signature is missing, stale or does not verify",
        );
    }
    #[derive(serde::Deserialize)]
    struct Inbound {
        from: String,
        #[serde(default)]
        text: String,
        #[serde(default)]
        id: String,
    }
    let parsed: Inbound = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"from\", \"text\", \"id\"}}: {e}"),
            );
        }
    };
    let message = InboundMessage {
        patient_id: String::new(),
        channel: Channel::Sms,
        from: parsed.from,
        text: parsed.text,
        provider_message_id: parsed.id,
        received_at: Utc::now(),
    };
    match apply_inbound(&app, &tenant, message).await {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({"ok": true}))).into_response(),
        Err(resp) => resp,
    }
}

async fn apply_inbound(app: &App, tenant: &str, message: InboundMessage) -> Result<(), Response> {
    let mut tx = app.pool.begin().await.map_err(|e| internal(&e))?;
    inbound::apply(app, &mut tx, tenant, message)
        .await
        .map_err(|e| internal(&e))?;
    tx.commit().await.map_err(|e| internal(&e))?;
    app.wake.notify_one();
    Ok(())
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
    delivery_status(&app, &tenant, "twilio", sid, state, &reason).await
}

async fn generic_status(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_valid_tenant(&tenant) || !generic_verified(&app, &headers, &body) {
        return problem(
            StatusCode::FORBIDDEN,
            "webhook-signature is missing, stale or does not verify",
        );
    }
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
    id: &str,
    state: &str,
    reason: &str,
) -> Response {
    if id.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "the callback names no message id");
    }
    let result: Result<bool, sqlx::Error> = async {
        let mut tx = app.pool.begin().await?;
        let Some(mut row) = messages::get_by_provider_id(&mut tx, tenant, provider, id).await?
        else {
            return Ok(false);
        };
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
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => (StatusCode::OK, axum::Json(serde_json::json!({"ok": true}))).into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, "no message with this provider id"),
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
    if signing::verify_unsubscribe(&app.unsubscribe_key, &token).is_none() {
        return (
            StatusCode::BAD_REQUEST,
            Html("<p>This unsubscribe link is not valid.</p>"),
        )
            .into_response();
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
