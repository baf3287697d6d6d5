//! One message per intent when answers go missing: a failed write after the provider accepted sends
//! nothing again; an email whose outcome is unknown follows the clinic's policy (at-most-once by
//! default, at-least-once when chosen); what the consumers cannot process reaches the dead-letter subject.

use followup_platform::event::{new_event_id, now_timestamp};
use followup_proto::followup::common::v1::Channel;
use followup_proto::followup::events::v1::MessageReceived;
use followup_proto::followup::notifications::v1 as api;

use crate::support::*;

/// The provider accepts, then PostgreSQL refuses to record it (a trigger fails every write of `sent`
/// while a flag row exists). The answer is kept and written once the database takes it again; the
/// provider is not called a second time. Before the fix the round gave up, the lease ran out and the
/// message went to the provider again.
#[tokio::test]
async fn a_failed_write_after_the_provider_accepted_does_not_send_again() {
    let h = Harness::start_with(|s| {
        // A short lease, so that the old behaviour (retry after the lease) shows within the test.
        s.delivery.lease_secs = 3;
        s.delivery.request_timeout_ms = 2000;
    })
    .await;
    for sql in [
        "CREATE SEQUENCE refused_writes",
        "CREATE TABLE refuse_writes (on_ boolean)",
        "CREATE FUNCTION refuse_sent() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.status = 'sent' AND EXISTS (SELECT 1 FROM refuse_writes) THEN
             PERFORM nextval('refused_writes'); -- sequences survive the rollback: the test sees it
             RAISE EXCEPTION 'injected: the database refuses the write';
           END IF;
           RETURN NEW;
         END $$",
        "CREATE TRIGGER refuse_sent BEFORE UPDATE ON messages FOR EACH ROW EXECUTE FUNCTION refuse_sent()",
        "INSERT INTO refuse_writes VALUES (true)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&h.pool)
            .await
            .expect("fault setup");
    }
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    h.request(sms_request("enr-w:0", "p1")).await;
    eventually("the provider accepted and the write was refused", || {
        let pool = h.pool.clone();
        async move {
            let (_, called): (i64, bool) =
                sqlx::query_as("SELECT last_value, is_called FROM refused_writes")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            called.then_some(())
        }
    })
    .await;
    assert_eq!(h.sms.received().len(), 1);
    sqlx::query("DELETE FROM refuse_writes")
        .execute(&h.pool)
        .await
        .expect("the database takes writes again");

    let m = h.status_of("enr-w:0", &["sent"]).await;
    assert_eq!(
        m.attempt_count, 1,
        "recorded from memory, not attempted again"
    );
    assert_eq!(h.sms.received().len(), 1, "the provider was called once");
    let text = metrics_text(h.running.admin_addr).await;
    assert!(
        text.lines().any(
            |l| l.starts_with("followup_notifications_record_retries_total") && !l.ends_with(" 0")
        ),
        "{text}"
    );
}

/// Settings for an email through the stub that never answers its first DATA.
fn via_stub(stub: &SmtpStub) -> impl FnOnce(&mut followup_notifications::Settings) {
    let url = format!("smtp://{}", stub.addr);
    move |s| {
        s.smtp.url = followup_platform::config::Secret::new(url);
        s.smtp.timeout_secs = 60;
        s.delivery.request_timeout_ms = 1500;
    }
}

fn email_request(
    key: &str,
    patient: &str,
) -> followup_proto::followup::events::v1::NotificationRequested {
    let mut r = sms_request(key, patient);
    r.channel = Channel::Email as i32;
    r
}

/// The default (at-most-once): the SMTP server took the message and no answer came, so it may have
/// been delivered; it is not sent again, it shows as POSSIBLY_SENT to staff and in the metrics.
#[tokio::test]
async fn an_email_whose_outcome_is_unknown_is_not_sent_again_by_default() {
    let stub = SmtpStub::start(1).await;
    let h = Harness::start_with(via_stub(&stub)).await;
    h.patient("p1", "", "ana@example.com", &daytime_zone())
        .await;
    h.request(email_request("enr-e:0", "p1")).await;

    let m = h.status_of("enr-e:0", &["possibly_sent"]).await;
    assert_eq!(m.attempt_count, 1);
    assert!(
        m.failure_reason.contains("not sent again"),
        "{}",
        m.failure_reason
    );
    assert!(m.due_at.is_none(), "nothing left to do for the worker");
    assert_eq!(stub.received(), 1);

    // Staff find it by status, and see the attempt as UNKNOWN.
    let mut client = h.client().await;
    let listed = client
        .list_messages(h.req(api::ListMessagesRequest {
            statuses: vec![api::MessageStatus::PossiblySent as i32],
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .messages;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].idempotency_key, "enr-e:0");
    let got = client
        .get_message(h.req(api::GetMessageRequest {
            message_id: m.id.to_string(),
        }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        got.message.map(|m| m.status),
        Some(api::MessageStatus::PossiblySent as i32)
    );
    assert_eq!(got.attempts.len(), 1);
    assert_eq!(got.attempts[0].outcome, 4, "ATTEMPT_OUTCOME_UNKNOWN");
    let text = metrics_text(h.running.admin_addr).await;
    assert!(
        text.lines().any(
            |l| l.starts_with("followup_notifications_unknown_outcomes_total{")
                && l.contains(r#"channel="email""#)
                && l.contains(r#"action="possibly_sent""#)
                && l.ends_with(" 1")
        ),
        "{text}"
    );
    assert_eq!(stub.received(), 1, "still one");
}

/// The clinic chose at-least-once for email: the same email goes again (the patient may get two).
#[tokio::test]
#[ignore = "issue 15, open: the at-least-once retry reaches `sent` but with one attempt recorded, not two; not yet understood (SMTP stub or lettre's pool)"]
async fn an_email_whose_outcome_is_unknown_is_sent_again_when_the_clinic_chose_at_least_once() {
    let stub = SmtpStub::start(1).await;
    let h = Harness::start_with(via_stub(&stub)).await;
    let mut client = h.client().await;
    let updated = client
        .update_delivery_settings(h.req(api::UpdateDeliverySettingsRequest {
            settings: Some(api::DeliverySettings {
                email_unknown_outcome: api::UnknownOutcomePolicy::AtLeastOnce as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["email_unknown_outcome".into()],
            }),
        }))
        .await
        .expect("settings")
        .into_inner();
    assert_eq!(
        updated.settings.map(|s| s.email_unknown_outcome),
        Some(api::UnknownOutcomePolicy::AtLeastOnce as i32)
    );
    h.patient("p1", "", "ana@example.com", &daytime_zone())
        .await;
    h.request(email_request("enr-e:1", "p1")).await;

    let m = h.status_of("enr-e:1", &["sent"]).await;
    assert_eq!(m.attempt_count, 2);
    assert_eq!(stub.received(), 2, "sent again after the unknown outcome");
    let text = metrics_text(h.running.admin_addr).await;
    assert!(
        text.contains(
            r#"notifications_unknown_outcomes_total{channel="email",action="retried"} 1"#
        ),
        "{text}"
    );
}

/// An event whose subject's tenant breaks the tenant rules is dead-lettered by each of the service's
/// consumers, whatever the subject.
#[tokio::test]
async fn bad_tenants_are_dead_lettered_on_every_consumed_subject() {
    let h = Harness::start().await;
    let js = h.env.nats.jetstream().await;
    let subjects = [
        "clinic.{t}.patient.upserted",
        "clinic.{t}.staff.upserted",
        "clinic.{t}.message.received",
        "followup.{t}.scheduler.notification_requested",
        "followup.{t}.plans.plan_approved",
        "followup.{t}.cases.owner_digest",
    ];
    let long = "t".repeat(65);
    let mut published = 0;
    for tenant in ["bad~tenant", long.as_str()] {
        for subject in subjects {
            let header = followup_proto::followup::events::v1::EventHeader {
                event_id: new_event_id().to_string(),
                tenant_id: tenant.into(),
                occurred_at: Some(now_timestamp()),
            };
            js.send_publish(
                subject.replace("{t}", tenant),
                async_nats::jetstream::message::PublishMessage::build()
                    .payload(prost::Message::encode_to_vec(&header).into()),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
            published += 1;
        }
    }
    let letters = eventually("every bad tenant is dead-lettered", || {
        let env = &h.env;
        async move {
            let letters = dead_letters(env).await;
            (letters.len() == published).then_some(letters)
        }
    })
    .await;
    for (subject, reason) in &letters {
        assert!(
            reason.contains("breaks the tenant rules"),
            "{subject}: {reason}"
        );
    }
    for tenant in ["bad~tenant", long.as_str()] {
        for subject in subjects {
            let subject = subject.replace("{t}", tenant);
            assert!(
                letters.iter().any(|(s, _)| *s == subject),
                "{subject} not dead-lettered"
            );
        }
    }
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM contacts) + (SELECT count(*) FROM messages)",
    )
    .fetch_one(&h.pool)
    .await
    .expect("count");
    assert_eq!(rows, 0);
}

/// An inbound message the database can never store (a NUL character) is dead-lettered with the
/// database's reason, instead of being retried forever as if the database were down.
#[tokio::test]
async fn a_poison_inbound_message_is_dead_lettered_not_retried_forever() {
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
                text: "yes\u{0}please".into(),
                provider_message_id: "in-poison".into(),
                ..Default::default()
            },
        )
        .await;
    let letters = eventually("the poison message is dead-lettered", || {
        let env = &h.env;
        async move {
            let letters = dead_letters(env).await;
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, format!("clinic.{TENANT}.message.received"));
    assert!(
        letters[0].1.contains("rejected by the database"),
        "{}",
        letters[0].1
    );
}
