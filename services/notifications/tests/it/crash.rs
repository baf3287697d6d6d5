//! The real binary as a child process: a `kill -9` while the provider holds a request leads to one
//! message (the retry carries the same Idempotency-Key), a `kill -9` while one answer of a round is slow
//! sends none of the others again, and nothing personal reaches the logs.

use std::process::Stdio;
use std::time::Duration;

use followup_platform::event::{new_event_id, now_timestamp};
use followup_platform::testkit::TestEnv;
use followup_proto::followup::common::v1::Channel;
use followup_proto::followup::events::v1::{MessageReceived, PatientUpserted};

use crate::support::*;

const NAME: &str = "Quillonia";
const PHONE: &str = "+447700900987";
const EMAIL: &str = "quillonia.z@example.com";
const REPLY: &str = "Could you move me to Thursday afternoon";

/// The service's config file; `delivery` adds keys to its `[delivery]` section.
fn config_file(
    env: &TestEnv,
    sms: &Sink,
    smtp: &str,
    dir: &std::path::Path,
    delivery: &str,
) -> std::path::PathBuf {
    let key_file = dir.join("staff.pub.pem");
    std::fs::write(&key_file, &env.auth.keys.public_pem).expect("key file");
    let toml = format!(
        r#"
database_url = "{db}"
nats_url = "{nats}"
nats_credentials_dir = "{creds}"
grpc_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
shutdown_grace_secs = 2
public_base_url = "http://127.0.0.1:1"
unsubscribe_signing_key = "crash-test-key-0123456789abcdef0123"

[auth]
jwt_public_key_files = ["{key}"]

[log]
format = "json"
filter = "info,followup_notifications=debug,followup_platform=debug"

[outbox]
poll_interval_ms = 200

[sms]
provider = "generic_json"
base_url = "{sms}"
from = "+15125550100"

[smtp]
url = "smtp://{smtp}"

[delivery]
retry_schedule_ms = [0, 200, 200]
poll_interval_ms = 100
lease_secs = 60
request_timeout_ms = 30000
{delivery}
"#,
        db = env.db.url,
        nats = env.nats.url(),
        creds = env.nats.credentials_dir().display(),
        key = key_file.display(),
        sms = sms.url(),
    );
    let path = dir.join("notifications.toml");
    std::fs::write(&path, toml).expect("config file");
    path
}

/// The child is ready once its durable consumers exist (it declares streams and consumers at start).
async fn wait_ready(env: &TestEnv) {
    let js = env.nats.jetstream().await;
    eventually("the service declared its consumers", || {
        let js = js.clone();
        async move {
            let clinic = js.get_stream("CLINIC").await.ok()?;
            let followup = js.get_stream("FOLLOWUP").await.ok()?;
            clinic.consumer_info("notifications-clinic").await.ok()?;
            followup
                .consumer_info("notifications-requests")
                .await
                .ok()?;
            Some(())
        }
    })
    .await;
}

fn spawn(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    std::process::Command::new(env!("CARGO_BIN_EXE_followup-notifications"))
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("the followup-notifications binary starts")
}

#[tokio::test]
async fn kill_9_mid_send_gives_one_message_and_logs_hold_no_personal_data() {
    let env = TestEnv::start().await;
    let sms = Sink::start().await;
    let capture = followup_notifications::capture::Capture::start(
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("capture");
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(&env, &sms, &capture.smtp_addr.to_string(), dir.path(), "");
    let pool = env.db.pool().await;

    // The provider holds the first request long enough to kill the service mid-send.
    sms.set_delay(Duration::from_secs(30));
    let mut first = spawn(&config, &dir.path().join("first.log"));
    wait_ready(&env).await;
    env.publish(
        &format!("clinic.{TENANT}.patient.upserted"),
        &PatientUpserted {
            event_id: new_event_id().to_string(),
            tenant_id: TENANT.into(),
            occurred_at: Some(now_timestamp()),
            patient_id: "p-crash".into(),
            given_name: NAME.into(),
            family_name: "Zabrowski".into(),
            phone_e164: PHONE.into(),
            email: EMAIL.into(),
            time_zone: daytime_zone(),
            ..Default::default()
        },
    )
    .await;
    let mut request = sms_request("enr-crash:0", "p-crash");
    request.variables.insert(
        "portal_url".into(),
        "https://portal.example/p/secret-link".into(),
    );
    env.publish(
        &format!("followup.{TENANT}.scheduler.notification_requested"),
        &request,
    )
    .await;

    eventually("the provider holds the first request", || async {
        (!sms.received().is_empty()).then_some(())
    })
    .await;
    first.kill().expect("kill -9");
    let _ = first.wait();

    // The attempt was recorded as started with an unknown outcome before the request left.
    let (status, outcome): (String, i32) = sqlx::query_as(
        "SELECT m.status, a.outcome FROM messages m JOIN delivery_attempts a ON a.tenant_id = m.tenant_id AND a.message_id = m.id
         WHERE m.idempotency_key = 'enr-crash:0'",
    )
    .fetch_one(&pool)
    .await
    .expect("message and attempt");
    assert_eq!((status.as_str(), outcome), ("sending", 4));

    // Restart; fast-forward the lease instead of waiting a minute for it.
    sms.set_delay(Duration::ZERO);
    sqlx::query("UPDATE messages SET due_at = now() WHERE idempotency_key = 'enr-crash:0'")
        .execute(&pool)
        .await
        .expect("lease expired");
    let mut second = spawn(&config, &dir.path().join("second.log"));
    let sent: (String, i32) = eventually("the message is sent after the restart", || {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<sqlx::Postgres, (String, i32)>(
                "SELECT status, attempt_count FROM messages WHERE idempotency_key = 'enr-crash:0'",
            )
            .fetch_one(&pool)
            .await
            .ok()
            .filter(|(s, _)| s == "sent")
        }
    })
    .await;
    assert_eq!(sent.1, 2);
    let requests = sms.received();
    let keys: std::collections::BTreeSet<String> = requests
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "every provider request of the intent carries one Idempotency-Key: {keys:?}"
    );
    let messages: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE idempotency_key LIKE 'enr-crash%'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(messages, 1);

    // More personal data through the service: an email, a reply, a STOP.
    let mut email = sms_request("enr-crash:1", "p-crash");
    email.channel = Channel::Email as i32;
    env.publish(
        &format!("followup.{TENANT}.scheduler.notification_requested"),
        &email,
    )
    .await;
    for (n, text) in [(1, REPLY), (2, "STOP")] {
        env.publish(
            &format!("clinic.{TENANT}.message.received"),
            &MessageReceived {
                event_id: new_event_id().to_string(),
                tenant_id: TENANT.into(),
                occurred_at: Some(now_timestamp()),
                channel: Channel::Sms as i32,
                from: PHONE.into(),
                text: text.into(),
                provider_message_id: format!("in-crash-{n}"),
                ..Default::default()
            },
        )
        .await;
    }
    eventually("the email went and the STOP is recorded", || {
        let pool = pool.clone();
        async move {
            let stops: i64 =
                sqlx::query_scalar("SELECT count(*) FROM consent_events WHERE NOT granted")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            let email: String = sqlx::query_scalar(
                "SELECT status FROM messages WHERE idempotency_key = 'enr-crash:1'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (stops == 1 && email == "sent").then_some(())
        }
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();

    let mut logs = String::new();
    for name in ["first.log", "second.log"] {
        logs.push_str(&std::fs::read_to_string(dir.path().join(name)).expect("log"));
    }
    assert!(
        logs.contains("message sent"),
        "the logs are there: {}",
        &logs[..logs.len().min(2000)]
    );
    for secret in [
        NAME,
        "Zabrowski",
        PHONE,
        "7700900987",
        EMAIL,
        REPLY,
        "secret-link",
        "Your treatment plan",
    ] {
        assert!(
            !logs.contains(secret),
            "the logs contain personal data `{secret}`"
        );
    }
}

const SLOW_PHONE: &str = "+447700900111";
const FAST_PHONE: &str = "+447700900222";

/// One round holds a slow answer and twenty fast ones; the service is killed while the slow one is still
/// at the provider. The fast answers were recorded as they came, so after the restart only the slow
/// message is attempted again (with its key): every fast one reached the provider exactly once.
#[tokio::test]
async fn kill_9_while_one_answer_is_slow_sends_none_of_the_fast_ones_again() {
    let env = TestEnv::start().await;
    let sms = Sink::start().await;
    let capture = followup_notifications::capture::Capture::start(
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("capture");
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(
        &env,
        &sms,
        &capture.smtp_addr.to_string(),
        dir.path(),
        "workers = 1",
    );
    let pool = env.db.pool().await;
    sms.set_slow(SLOW_PHONE, Duration::from_secs(60));

    let mut first = spawn(&config, &dir.path().join("first.log"));
    wait_ready(&env).await;
    for (patient, phone) in [("p-slow", SLOW_PHONE), ("p-fast", FAST_PHONE)] {
        env.publish(
            &format!("clinic.{TENANT}.patient.upserted"),
            &PatientUpserted {
                event_id: new_event_id().to_string(),
                tenant_id: TENANT.into(),
                occurred_at: Some(now_timestamp()),
                patient_id: patient.into(),
                given_name: "Ana".into(),
                phone_e164: phone.into(),
                time_zone: daytime_zone(),
                ..Default::default()
            },
        )
        .await;
    }
    // All due at the same instant, so one round claims them together.
    let at = chrono::Utc::now() + chrono::Duration::seconds(4);
    let not_before = followup_platform::event::timestamp(at);
    let mut keys = vec!["slow:0".to_string()];
    keys.extend((0..20).map(|i| format!("fast:{i}")));
    for key in &keys {
        let patient = if key.starts_with("slow") {
            "p-slow"
        } else {
            "p-fast"
        };
        let mut request = sms_request(key, patient);
        // Transactional: twenty to one patient are not held by the weekly cap.
        request.transactional = true;
        request.not_before_time = Some(not_before);
        env.publish(
            &format!("followup.{TENANT}.scheduler.notification_requested"),
            &request,
        )
        .await;
    }
    eventually("all 21 requests reached the provider", || async {
        (sms.received().len() == 21).then_some(())
    })
    .await;
    eventually(
        "the 20 fast answers are recorded while the slow one is still out",
        || {
            let pool = pool.clone();
            async move {
                let sent: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM messages WHERE status = 'sent' AND idempotency_key LIKE 'fast:%'",
                )
                .fetch_one(&pool)
                .await
                .ok()?;
                (sent == 20).then_some(())
            }
        },
    )
    .await;
    first.kill().expect("kill -9");
    let _ = first.wait();

    // Restart; fast-forward the slow message's lease instead of waiting for it.
    sms.clear_slow();
    sqlx::query("UPDATE messages SET due_at = now() WHERE status = 'sending'")
        .execute(&pool)
        .await
        .expect("lease expired");
    let mut second = spawn(&config, &dir.path().join("second.log"));
    eventually("the slow message is sent after the restart", || {
        let pool = pool.clone();
        async move {
            let status: String =
                sqlx::query_scalar("SELECT status FROM messages WHERE idempotency_key = 'slow:0'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (status == "sent").then_some(())
        }
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();

    let mut per_key = std::collections::BTreeMap::<String, usize>::new();
    for r in sms.received() {
        *per_key.entry(r.header("idempotency-key")).or_default() += 1;
    }
    for key in &keys {
        let expected = if key.starts_with("slow") { 2 } else { 1 };
        assert_eq!(
            per_key
                .get(&format!("{TENANT}:{key}"))
                .copied()
                .unwrap_or(0),
            expected,
            "requests for {key}: {per_key:?}"
        );
    }
}
