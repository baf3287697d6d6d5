//! The HTTP and gRPC edges as an attacker meets them: SMS callbacks bound to their clinic and applied
//! once, unsubscribe links that expire, and strings no service can store refused at the gRPC edge.

use followup_notifications::domain::signing;
use followup_platform::config::Secret;
use followup_platform::event::{new_event_id, now_timestamp};
use followup_proto::followup::events::v1::PatientUpserted;
use followup_proto::followup::notifications::v1 as api;

use crate::support::*;

const SHARED: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_A: &str = "whsec_YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=";
const SECRET_B: &str = "whsec_YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI=";
const PHONE: &str = "+447700900123";

/// One signed generic callback: (status, JSON answer).
async fn post_signed(
    url: &str,
    secret: &str,
    webhook_id: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let key = signing::secret_key(secret).expect("key");
    let ts = chrono::Utc::now().timestamp();
    let signature =
        signing::standard_signature(&key, webhook_id.unwrap_or(""), ts, body.as_bytes());
    let ts = ts.to_string();
    let mut headers = vec![
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", signature.as_str()),
    ];
    if let Some(id) = webhook_id {
        headers.push(("webhook-id", id));
    }
    post(url, body, &headers).await
}

async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let (status, text) = reqwest_like::request("POST", url, body, headers).await;
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// A minimal HTTP/1.1 client (the service's tests use no client crate of their own).
mod reqwest_like {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub async fn request(
        method: &str,
        url: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').expect("path");
        let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let request = format!(
            "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let text = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, text)
    }
}

/// A patient of `tenant` with the shared phone.
async fn patient_of(h: &Harness, tenant: &str, patient_id: &str) {
    h.env
        .publish(
            &format!("clinic.{tenant}.patient.upserted"),
            &PatientUpserted {
                event_id: new_event_id().to_string(),
                tenant_id: tenant.into(),
                occurred_at: Some(now_timestamp()),
                patient_id: patient_id.into(),
                given_name: "Ana".into(),
                phone_e164: PHONE.into(),
                time_zone: daytime_zone(),
                ..Default::default()
            },
        )
        .await;
    let pool = h.pool.clone();
    let (tenant, id) = (tenant.to_string(), patient_id.to_string());
    eventually("the contact is stored", || {
        let (pool, tenant, id) = (pool.clone(), tenant.clone(), id.clone());
        async move {
            sqlx::query_scalar::<sqlx::Postgres, i64>(
                "SELECT count(*) FROM contacts WHERE tenant_id = $1 AND patient_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_one(&pool)
            .await
            .ok()
            .filter(|n| *n == 1)
        }
    })
    .await;
}

async fn consent_events(h: &Harness, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM consent_events WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&h.pool)
        .await
        .expect("count")
}

async fn outbox(h: &Harness, suffix: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject LIKE $1")
        .bind(format!("%{suffix}"))
        .fetch_one(&h.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn clinic_a_signed_stop_posted_to_clinic_b_is_refused() {
    // Clinic A has its own secret; clinic B is on the shared one.
    let h = Harness::start_with(|s| {
        s.sms
            .callback_secrets
            .insert("clinic-a".into(), Secret::new(SECRET_A));
    })
    .await;
    patient_of(&h, "clinic-a", "pa").await;
    patient_of(&h, "clinic-b", "pb").await;
    let url = |tenant: &str| format!("{}/sms/generic/{tenant}/inbound", h.http_url());
    let stop = |tenant: Option<&str>, id: &str| match tenant {
        Some(t) => format!(r#"{{"from":"{PHONE}","text":"STOP","id":"{id}","tenant":"{t}"}}"#),
        None => format!(r#"{{"from":"{PHONE}","text":"STOP","id":"{id}"}}"#),
    };
    let before_b = consent_events(&h, "clinic-b").await;

    // A's STOP, signed with A's own secret, at B's URL: B verifies with the shared secret, and fails.
    let (status, answer) =
        post_signed(&url("clinic-b"), SECRET_A, Some("wh-1"), &stop(None, "m1")).await;
    assert_eq!(status, 403, "{answer}");
    // A STOP signed with the shared secret naming clinic A, replayed at B's URL.
    let (status, answer) = post_signed(
        &url("clinic-b"),
        SHARED,
        Some("wh-2"),
        &stop(Some("clinic-a"), "m2"),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("another clinic"),
        "{answer}"
    );
    // The shared secret no longer works for a body that names no clinic.
    let (status, answer) =
        post_signed(&url("clinic-b"), SHARED, Some("wh-3"), &stop(None, "m3")).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("\"tenant\""),
        "{answer}"
    );
    // A clinic with its own secret does not accept the shared one.
    let (status, _) = post_signed(
        &url("clinic-a"),
        SHARED,
        Some("wh-4"),
        &stop(Some("clinic-a"), "m4"),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        consent_events(&h, "clinic-b").await,
        before_b,
        "clinic B's patient was not opted out"
    );

    // Each clinic's own callback still works.
    let before_a = consent_events(&h, "clinic-a").await;
    let (status, answer) =
        post_signed(&url("clinic-a"), SECRET_A, Some("wh-5"), &stop(None, "m5")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(consent_events(&h, "clinic-a").await, before_a + 1);
    let (status, answer) = post_signed(
        &url("clinic-b"),
        SHARED,
        Some("wh-6"),
        &stop(Some("clinic-b"), "m6"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(consent_events(&h, "clinic-b").await, before_b + 1);
    // B with a secret of its own now refuses A's.
    drop(h);
    let h = Harness::start_with(|s| {
        s.sms
            .callback_secrets
            .insert("clinic-b".into(), Secret::new(SECRET_B));
    })
    .await;
    let url = format!("{}/sms/generic/clinic-b/inbound", h.http_url());
    let (status, _) = post_signed(&url, SECRET_A, Some("wh-7"), &stop(None, "m7")).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_replayed_callback_is_applied_once_and_one_without_an_id_is_refused() {
    let h = Harness::start().await;
    patient_of(&h, TENANT, "p1").await;
    let url = format!("{}/sms/generic/{TENANT}/inbound", h.http_url());
    let question = |id: &str| {
        format!(
            r#"{{"from":"{PHONE}","text":"Can I come on Friday?","id":"{id}","tenant":"{TENANT}"}}"#
        )
    };

    // No webhook-id: 400 with a JSON body, nothing stored.
    let (status, answer) = post_signed(&url, SHARED, None, &question("in-1")).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("webhook-id"),
        "{answer}"
    );
    // No provider message id: 400 too.
    let no_id = format!(r#"{{"from":"{PHONE}","text":"Hello","tenant":"{TENANT}"}}"#);
    let (status, answer) = post_signed(&url, SHARED, Some("wh-0"), &no_id).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("\"id\""),
        "{answer}"
    );
    assert_eq!(outbox(&h, "patient_replied").await, 0);

    // The same signed callback twice (a replay within the signature window): applied once.
    let body = question("in-2");
    let (status, answer) = post_signed(&url, SHARED, Some("wh-1"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"ok": true}));
    let (status, answer) = post_signed(&url, SHARED, Some("wh-1"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true, "{answer}");
    // The provider retrying the same message under a new webhook id: still once.
    let (status, answer) = post_signed(&url, SHARED, Some("wh-2"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(
        outbox(&h, "patient_replied").await,
        1,
        "one reply, one alert"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sms_callback_ids WHERE tenant_id = $1 AND provider = 'generic_json'",
    )
    .bind(TENANT)
    .fetch_one(&h.pool)
    .await
    .expect("count");
    assert_eq!(
        stored, 2,
        "the webhook id and the message id of the one applied callback"
    );

    // Ids older than the retention are pruned by the next callback.
    sqlx::query("UPDATE sms_callback_ids SET received_at = now() - interval '25 hours'")
        .execute(&h.pool)
        .await
        .expect("age");
    let (status, _) = post_signed(&url, SHARED, Some("wh-3"), &question("in-3")).await;
    assert_eq!(status, 200);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT callback_id FROM sms_callback_ids ORDER BY 1")
            .fetch_all(&h.pool)
            .await
            .expect("ids");
    assert_eq!(
        left,
        vec!["msg:in-3".to_string(), "webhook:wh-3".to_string()]
    );

    // A status report without a webhook id is refused the same way.
    let status_url = format!("{}/sms/generic/{TENANT}/status", h.http_url());
    let (status, answer) = post_signed(
        &status_url,
        SHARED,
        None,
        r#"{"id":"x","status":"delivered"}"#,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test]
async fn an_expired_unsubscribe_link_says_how_else_to_unsubscribe() {
    let h = Harness::start().await;
    let key = b"test-unsubscribe-key-0123456789abcdef";
    let now = chrono::Utc::now().timestamp();
    let link = |expires: Option<i64>| {
        let token = signing::sign_unsubscribe(
            key,
            &signing::UnsubscribeClaims {
                tenant: TENANT.into(),
                patient_id: "p1".into(),
                category: "recall".into(),
                message_id: "m1".into(),
                expires,
            },
        );
        format!("{}/unsubscribe/{token}", h.http_url())
    };
    let expired = link(Some(now - 60));
    for method in ["GET", "POST"] {
        let (status, page) = reqwest_like::request(method, &expired, "", &[]).await;
        assert_eq!(status, 410, "{method}: {page}");
        assert!(page.contains("has expired"), "{page}");
        assert!(page.contains("reply STOP"), "{page}");
    }
    assert_eq!(consent_events(&h, TENANT).await, 0, "nothing was recorded");
    let valid = link(Some(now + 3600));
    let (status, page) = reqwest_like::request("GET", &valid, "", &[]).await;
    assert_eq!(status, 200, "{page}");
    let (status, page) = reqwest_like::request("POST", &valid, "", &[]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(consent_events(&h, TENANT).await, 1);
}

#[tokio::test]
async fn a_sent_unsubscribe_link_carries_the_configured_expiry() {
    use base64::Engine as _;
    let h = Harness::start_with(|s| s.unsubscribe_link_ttl_days = 45).await;
    h.patient("p1", "", "maria@example.com", &daytime_zone())
        .await;
    let mut r = sms_request("enr-x:0", "p1");
    r.channel = followup_proto::followup::common::v1::Channel::Email as i32;
    h.request(r).await;
    h.status_of("enr-x:0", &["sent"]).await;
    let emails = h.capture.captured();
    let line = emails[0]
        .content
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe: <"))
        .expect("List-Unsubscribe header")
        .to_string();
    let token = line
        .trim_end_matches('>')
        .rsplit('/')
        .next()
        .expect("token")
        .to_string();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().expect("payload"))
        .expect("base64url");
    let claims: serde_json::Value = serde_json::from_slice(&payload).expect("json");
    let left = claims["e"].as_i64().expect("an expiry") - chrono::Utc::now().timestamp();
    assert!(
        (44 * 86_400..=45 * 86_400).contains(&left),
        "expires in {left} s, not 45 days"
    );
}

#[tokio::test]
async fn nul_bytes_and_over_long_ids_are_invalid_arguments_not_internal_errors() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let long_id = "p".repeat(200 * 1024);
    let err = client
        .get_contact(h.req(api::GetContactRequest {
            patient_id: long_id.clone(),
        }))
        .await
        .expect_err("refused");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .starts_with("patient_id: is 204800 characters long"),
        "{}",
        err.message()
    );
    let err = client
        .upsert_contact(h.req(api::UpsertContactRequest {
            contact: Some(api::Contact {
                patient_id: "p1".into(),
                given_name: "Zo\u{0}ë".into(),
                phone_e164: PHONE.into(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .expect_err("refused");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .starts_with("contact.given_name: contains a NUL byte"),
        "{}",
        err.message()
    );
    // The service still answers normally.
    let err = client
        .get_contact(h.req(api::GetContactRequest {
            patient_id: "p-unknown".into(),
        }))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
}
