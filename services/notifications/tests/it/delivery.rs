//! Delivery end to end: a request in, a provider request out, every attempt recorded.

use base64::Engine as _;
use chrono::Timelike;
use followup_platform::event::{new_event_id, now_timestamp};
use followup_proto::followup::common::v1::Channel;
use followup_proto::followup::events::v1::{MessageReceived, Recipient, TaskSpec, recipient};

use crate::support::*;

#[tokio::test]
async fn provider_500_then_200_sends_exactly_one_message() {
    let h = Harness::start().await;
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    h.sms.script(500, r#"{"error":"upstream hiccup"}"#, &[]);
    h.request(sms_request("enr-1:0", "p1")).await;

    let m = h.status_of("enr-1:0", &["sent"]).await;
    assert_eq!(m.attempt_count, 2);
    let received = h.sms.received();
    assert_eq!(received.len(), 2, "one failed and one accepted request");
    let keys: Vec<String> = received
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(keys[0], keys[1], "a retry carries the same Idempotency-Key");
    assert_eq!(keys[0], "clinic-a:enr-1:0");
    let body = received[1].json();
    assert_eq!(body["to"], "+447700900123");
    assert!(
        body["body"]
            .as_str()
            .unwrap_or_default()
            .contains("https://portal.example/p/abc")
    );

    let attempts: Vec<(i32, i32, i32)> = sqlx::query_as(
        "SELECT attempt, outcome, status_code FROM delivery_attempts WHERE tenant_id = $1 AND message_id = $2 ORDER BY attempt",
    )
    .bind(TENANT)
    .bind(m.id)
    .fetch_all(&h.pool)
    .await
    .expect("attempts");
    assert_eq!(attempts, vec![(1, 2, 500), (2, 1, 201)]);
}

#[tokio::test]
async fn a_provider_400_fails_at_once_with_its_reason() {
    let h = Harness::start().await;
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    h.sms.script(
        400,
        r#"{"code":21211,"message":"Invalid 'To' Phone Number"}"#,
        &[],
    );
    h.request(sms_request("enr-2:0", "p1")).await;
    let m = h.status_of("enr-2:0", &["failed"]).await;
    assert_eq!(m.attempt_count, 1);
    assert_eq!(m.failure_reason, "21211 Invalid 'To' Phone Number");
    assert_eq!(h.sms.received().len(), 1);
}

#[tokio::test]
async fn the_same_request_twice_is_one_message() {
    let h = Harness::start().await;
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    h.request(sms_request("enr-3:0", "p1")).await;
    // Another event (another event id) for the same intent.
    h.request(sms_request("enr-3:0", "p1")).await;
    h.status_of("enr-3:0", &["sent"]).await;
    h.request(sms_request("enr-3:1", "p1")).await;
    h.status_of("enr-3:1", &["sent"]).await;
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE tenant_id = $1 AND idempotency_key = 'enr-3:0'",
    )
    .bind(TENANT)
    .fetch_one(&h.pool)
    .await
    .expect("count");
    assert_eq!(count, 1);
    assert_eq!(h.sms.received().len(), 2);
}

#[tokio::test]
async fn stop_then_a_send_is_suppressed_with_its_reason() {
    let h = Harness::start().await;
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    h.env
        .publish(
            &format!("clinic.{TENANT}.message.received"),
            &MessageReceived {
                event_id: new_event_id().to_string(),
                tenant_id: TENANT.into(),
                occurred_at: Some(now_timestamp()),
                channel: Channel::Sms as i32,
                from: "+447700900123".into(),
                to: "+15125550100".into(),
                text: "  Stop ".into(),
                provider_message_id: "in-1".into(),
                ..Default::default()
            },
        )
        .await;
    let pool = h.pool.clone();
    eventually("the opt-out is recorded", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<sqlx::Postgres, i64>(
                "SELECT count(*) FROM consent_events WHERE tenant_id = $1 AND patient_id = 'p1' AND NOT granted AND channel = 1",
            )
            .bind(TENANT)
            .fetch_one(&pool)
            .await
            .ok()
            .filter(|n| *n == 1)
        }
    })
    .await;
    h.request(sms_request("enr-4:0", "p1")).await;
    let m = h.status_of("enr-4:0", &["suppressed"]).await;
    assert_eq!(m.suppression_reason, 1, "OPTED_OUT");
    assert!(h.sms.received().is_empty(), "nothing reached the provider");
}

#[tokio::test]
async fn a_request_at_night_waits_for_the_morning_in_the_patients_zone() {
    let h = Harness::start().await;
    let zone = night_zone();
    h.patient("p1", "+447700900123", "", &zone).await;
    h.request(sms_request("enr-5:0", "p1")).await;
    let m = h.status_of("enr-5:0", &["deferred"]).await;
    assert_eq!(m.deferral_reason, 1, "QUIET_HOURS");
    let tz: chrono_tz::Tz = zone.parse().expect("zone");
    let local = m.due_at.expect("deferred until").with_timezone(&tz);
    assert_eq!((local.hour(), local.minute()), (8, 0));
    assert!(h.sms.received().is_empty());
}

#[tokio::test]
async fn an_email_carries_a_one_click_unsubscribe_that_works() {
    let h = Harness::start().await;
    h.patient("p1", "", "maria@example.com", &daytime_zone())
        .await;
    let mut r = sms_request("enr-6:0", "p1");
    r.channel = Channel::Email as i32;
    h.request(r).await;
    h.status_of("enr-6:0", &["sent"]).await;
    let emails = h.capture.captured();
    assert_eq!(emails.len(), 1);
    let raw = &emails[0].content;
    assert_eq!(emails[0].to, "maria@example.com");
    assert!(
        raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{raw}"
    );
    let line = raw
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe: <"))
        .expect("List-Unsubscribe header");
    let url = line
        .trim_start_matches("List-Unsubscribe: <")
        .trim_end_matches('>');
    let token = url.rsplit('/').next().expect("token");

    // The one-click POST a mail client makes (RFC 8058).
    let client = reqwest_like_post(
        &format!("{}/unsubscribe/{token}", h.http_url()),
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(client, 200);
    let mut again = sms_request("enr-6:1", "p1");
    again.channel = Channel::Email as i32;
    h.request(again).await;
    let m = h.status_of("enr-6:1", &["suppressed"]).await;
    assert_eq!(m.suppression_reason, 1);
    // Another category still goes.
    let mut recall = sms_request("enr-6:2", "p1");
    recall.channel = Channel::Email as i32;
    recall.category = "recall".into();
    h.request(recall).await;
    h.status_of("enr-6:2", &["sent"]).await;
}

/// A plain HTTP/1.1 POST over a TCP stream (the tests need no HTTP client crate for one call).
pub async fn reqwest_like_post(url: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_task_request_creates_a_task_for_the_owner() {
    let h = Harness::start().await;
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    let mut r = sms_request("enr-7:2", "p1");
    r.channel = Channel::Task as i32;
    r.template_key = String::new();
    r.task = Some(TaskSpec {
        title: "Call Maria about her plan".into(),
        description: "Viewed twice, no reply".into(),
        due_time: None,
    });
    h.request(r).await;
    h.status_of("enr-7:2", &["sent"]).await;
    let (owner, title): (String, String) =
        sqlx::query_as("SELECT owner_staff_id, title FROM tasks WHERE tenant_id = $1 AND idempotency_key = 'enr-7:2'")
            .bind(TENANT)
            .fetch_one(&h.pool)
            .await
            .expect("task");
    assert_eq!(owner, "staff-owner");
    assert_eq!(title, "Call Maria about her plan");
}

#[tokio::test]
async fn webhook_calls_are_signed_per_standard_webhooks() {
    let h = Harness::start().await;
    let hook = Sink::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let endpoint = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_endpoints (tenant_id, id, url, secret) VALUES ($1, $2, $3, $4)",
    )
    .bind(TENANT)
    .bind(endpoint)
    .bind(format!("{}/hooks/tasks", hook.url()))
    .bind(secret)
    .execute(&h.pool)
    .await
    .expect("endpoint");
    let mut r = sms_request("enr-8:1", "p1");
    r.channel = Channel::Webhook as i32;
    r.template_key = String::new();
    r.recipient = Some(Recipient {
        target: Some(recipient::Target::PatientId("p1".into())),
    });
    r.webhook_endpoint_id = endpoint.to_string();
    h.request(r).await;
    h.status_of("enr-8:1", &["sent", "suppressed", "failed"])
        .await;
    let calls = hook.received();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    // The spec's algorithm, written out here independently of the service's code.
    let id = call.header("webhook-id");
    let ts = call.header("webhook-timestamp");
    let signed = format!("{id}.{ts}.{}", String::from_utf8_lossy(&call.body));
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("key");
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).expect("hmac");
    mac.update(signed.as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert!(
        call.header("webhook-signature")
            .split(' ')
            .any(|s| s == expected),
        "signature {} does not match {expected}",
        call.header("webhook-signature")
    );
    assert_eq!(call.json()["data"]["idempotency_key"], "enr-8:1");
}

#[tokio::test]
async fn the_weekly_cap_defers_the_fourth_automated_message_but_not_a_transactional_one() {
    let h = Harness::start().await;
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    for step in 0..3 {
        let key = format!("enr-12:{step}");
        h.request(sms_request(&key, "p1")).await;
        h.status_of(&key, &["sent"]).await;
    }
    h.request(sms_request("enr-12:3", "p1")).await;
    let m = h.status_of("enr-12:3", &["deferred"]).await;
    assert_eq!(m.deferral_reason, 2, "FREQUENCY_CAP");
    let mut reminder = sms_request("appt-1", "p1");
    reminder.template_key = "appointment_reminder".into();
    reminder.category = "appointment_reminders".into();
    reminder
        .variables
        .insert("appointment_time".into(), "2026-12-03T14:30:00Z".into());
    h.request(reminder).await;
    let sent = h.status_of("appt-1", &["sent"]).await;
    assert!(
        sent.rendered_body.contains(" Dec, "),
        "formatted in the patient zone: {}",
        sent.rendered_body
    );
    assert_eq!(h.sms.received().len(), 4);
}

#[tokio::test]
async fn inbound_sms_callbacks_need_a_valid_signature_and_replies_are_published() {
    let h = Harness::start().await;
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    h.request(sms_request("enr-13:0", "p1")).await;
    h.status_of("enr-13:0", &["sent"]).await;
    let url = format!("{}/sms/generic/{TENANT}/inbound", h.http_url());
    let body = r#"{"from":"+447700900123","text":"Can I come on Friday?","id":"in-77","tenant":"clinic-a"}"#;

    let unsigned = post_json(&url, body, &[]).await;
    assert_eq!(unsigned, 403);

    let key = followup_notifications::domain::signing::secret_key(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .expect("key");
    let ts = chrono::Utc::now().timestamp();
    let signature = followup_notifications::domain::signing::standard_signature(
        &key,
        "evt-1",
        ts,
        body.as_bytes(),
    );
    let signed = post_json(
        &url,
        body,
        &[
            ("webhook-id", "evt-1"),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", &signature),
        ],
    )
    .await;
    assert_eq!(signed, 200);

    let pool = h.pool.clone();
    let subject: String = eventually("patient_replied is in the outbox", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<sqlx::Postgres, String>(
                "SELECT subject FROM outbox WHERE subject LIKE '%patient_replied'",
            )
            .fetch_optional(&pool)
            .await
            .ok()?
        }
    })
    .await;
    assert_eq!(
        subject,
        format!("followup.{TENANT}.notifications.patient_replied")
    );
    // The reply alert goes to the case owner (unknown here, so it is suppressed with that reason).
    let pool = h.pool.clone();
    let reason: i32 = eventually("the reply alert is decided", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<sqlx::Postgres, i32>(
                "SELECT suppression_reason FROM messages WHERE idempotency_key LIKE 'reply_alert:%' AND status = 'suppressed'",
            )
            .fetch_optional(&pool)
            .await
            .ok()?
        }
    })
    .await;
    assert_eq!(
        reason, 5,
        "UNKNOWN_RECIPIENT: no staff.upserted for the owner"
    );
}

async fn post_json(url: &str, body: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
