use async_nats::jetstream::message::PublishMessage;
use followup_platform::consumer::DEADLETTER_REASON;
use followup_platform::jetstream::{CLINIC, ConsumerSpec};
use followup_platform::testkit::TestEnv;

use crate::support::{Recorder, count, event, eventually, platform};

async fn applied(pool: &sqlx::PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM applied").await
}

#[tokio::test]
async fn a_redelivered_event_changes_nothing() {
    let env = TestEnv::start().await;
    let platform = platform(&env).await;
    platform
        .consume(
            ConsumerSpec::new(CLINIC, "itest-clinic", "clinic.>"),
            Recorder,
        )
        .await
        .unwrap();

    let once = event("c1");
    env.publish("clinic.c1.patient.upserted", &once).await;
    // The same event again under another Nats-Msg-Id: what a clinic system retrying after JetStream's
    // duplicate window, or a redelivery after a lost ack, looks like to the consumer.
    let js = env.nats.jetstream().await;
    js.send_publish(
        "clinic.c1.patient.upserted",
        PublishMessage::build()
            .payload(prost::Message::encode_to_vec(&once).into())
            .message_id("retry-1"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let other = event("c1");
    env.publish("clinic.c1.patient.upserted", &other).await;

    let pool = platform.pool.clone();
    eventually("both distinct events applied", || {
        let pool = pool.clone();
        async move { applied(&pool).await == 2 }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        applied(&pool).await,
        2,
        "the second copy was dropped by the inbox"
    );
    let copies = count(
        &pool,
        &format!(
            "SELECT count(*) FROM applied WHERE event_id = '{}'",
            once.event_id
        ),
    )
    .await;
    assert_eq!(copies, 1);
}

#[tokio::test]
async fn an_undecodable_message_is_dead_lettered_and_the_next_is_processed() {
    let env = TestEnv::start().await;
    let platform = platform(&env).await;
    platform
        .consume(
            ConsumerSpec::new(CLINIC, "itest-clinic", "clinic.>"),
            Recorder,
        )
        .await
        .unwrap();
    let js = env.nats.jetstream().await;

    js.send_publish(
        "clinic.c1.patient.upserted",
        PublishMessage::build().payload(b"\xff\x00garbage".as_ref().into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut json_headers = async_nats::HeaderMap::new();
    json_headers.insert("Content-Type", "application/json");
    js.send_publish(
        "clinic.c1.patient.upserted",
        PublishMessage::build()
            .payload(b"{\"eventId\": 12".as_ref().into())
            .headers(json_headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let good = event("c1");
    env.publish("clinic.c1.patient.upserted", &good).await;

    let pool = platform.pool.clone();
    eventually("the good event behind the poison is applied", || {
        let pool = pool.clone();
        async move { applied(&pool).await == 1 }
    })
    .await;

    let deadletters = js.get_stream("DEADLETTER").await.unwrap();
    eventually("both bad messages are in the dead-letter stream", || {
        let mut deadletters = deadletters.clone();
        async move { deadletters.info().await.unwrap().state.messages == 2 }
    })
    .await;
    // Two workers consume, so the two dead letters may land in either order.
    let mut reasons = Vec::new();
    for sequence in [1, 2] {
        let letter = deadletters.get_raw_message(sequence).await.unwrap();
        assert_eq!(
            letter.subject.as_str(),
            followup_platform::jetstream::deadletter_subject("CLINIC")
        );
        reasons.push(
            letter
                .headers
                .get(DEADLETTER_REASON)
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not a protobuf event message")),
        "reasons: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not valid JSON")),
        "reasons: {reasons:?}"
    );
}

#[tokio::test]
async fn one_bad_event_in_a_batch_costs_its_neighbours_nothing() {
    let env = TestEnv::start().await;
    let platform = platform(&env).await;
    // Publish first, consume after: the whole lot arrives as one batch.
    let mut expected = Vec::new();
    for i in 0..20 {
        let e = event("c1");
        let subject = if i == 7 {
            "clinic.c1.poison.x"
        } else {
            "clinic.c1.patient.upserted"
        };
        env.publish(subject, &e).await;
        if i != 7 {
            expected.push(e.event_id);
        }
    }
    // A JSON event between them: proto3 JSON is decoded as well as protobuf.
    let mut json_headers = async_nats::HeaderMap::new();
    json_headers.insert("Content-Type", "application/json");
    let json = format!(
        r#"{{"eventId":"{}","tenantId":"c1","occurredAt":"2026-11-22T10:00:00Z"}}"#,
        followup_platform::event::new_event_id()
    );
    env.nats
        .jetstream()
        .await
        .send_publish(
            "clinic.c1.patient.upserted",
            PublishMessage::build()
                .payload(json.into())
                .headers(json_headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    env.publish("clinic.c1.flaky.x", &event("c1")).await;
    platform
        .consume(
            ConsumerSpec::new(CLINIC, "itest-clinic", "clinic.>"),
            Recorder,
        )
        .await
        .unwrap();

    let pool = platform.pool.clone();
    eventually(
        "19 good, 1 JSON and the flaky one (on its retry) applied",
        || {
            let pool = pool.clone();
            async move { applied(&pool).await == 21 }
        },
    )
    .await;
    let poisoned = count(
        &pool,
        "SELECT count(*) FROM applied WHERE subject LIKE '%poison%'",
    )
    .await;
    assert_eq!(poisoned, 0);
    let text = platform.metrics.encode();
    assert!(text.contains("outcome=\"dead_lettered\"} 1"), "{text}");
    assert!(text.contains("outcome=\"retried\"} 1"), "{text}");
}

#[tokio::test]
async fn an_event_whose_tenant_is_not_the_subjects_is_refused() {
    let env = TestEnv::start().await;
    let platform = platform(&env).await;
    platform
        .consume(
            ConsumerSpec::new(CLINIC, "itest-clinic", "clinic.>"),
            Recorder,
        )
        .await
        .unwrap();
    let js = env.nats.jetstream().await;
    let foreign = event("c2");
    js.send_publish(
        "clinic.c1.patient.upserted",
        PublishMessage::build().payload(prost::Message::encode_to_vec(&foreign).into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadletters = js.get_stream("DEADLETTER").await.unwrap();
    eventually("the cross-tenant event is dead-lettered", || {
        let mut deadletters = deadletters.clone();
        async move { deadletters.info().await.unwrap().state.messages == 1 }
    })
    .await;
    assert_eq!(applied(&platform.pool).await, 0);
}

/// What a subject can carry that the tenant rules refuse: a character outside the token alphabet, and
/// one character too many. Each is dead-lettered with the reason, and nothing is applied.
#[tokio::test]
async fn an_event_whose_tenant_breaks_the_tenant_rules_is_dead_lettered() {
    let env = TestEnv::start().await;
    let platform = platform(&env).await;
    platform
        .consume(
            ConsumerSpec::new(CLINIC, "itest-clinic", "clinic.>"),
            Recorder,
        )
        .await
        .unwrap();
    let long = "t".repeat(followup_proto::subjects::MAX_TENANT_LEN + 1);
    let js = env.nats.jetstream().await;
    // Published raw: the platform's own publisher refuses such tenants, a clinic's system may not.
    for tenant in ["bad~tenant", long.as_str()] {
        js.send_publish(
            format!("clinic.{tenant}.patient.upserted"),
            PublishMessage::build().payload(prost::Message::encode_to_vec(&event(tenant)).into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // A good event behind them is applied: the refusals block nothing.
    env.publish("clinic.c1.patient.upserted", &event("c1"))
        .await;
    let deadletters = js.get_stream("DEADLETTER").await.unwrap();
    eventually("both bad tenants are dead-lettered", || {
        let mut deadletters = deadletters.clone();
        async move { deadletters.info().await.unwrap().state.messages == 2 }
    })
    .await;
    let pool = platform.pool.clone();
    eventually("the good event is applied", || {
        let pool = pool.clone();
        async move { applied(&pool).await == 1 }
    })
    .await;
    for sequence in [1, 2] {
        let letter = deadletters.get_raw_message(sequence).await.unwrap();
        let reason = letter
            .headers
            .get(DEADLETTER_REASON)
            .map(|v| v.to_string())
            .unwrap_or_default();
        assert!(reason.contains("breaks the tenant rules"), "{reason}");
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM applied WHERE tenant_id <> 'c1'"
        )
        .await,
        0
    );
}

/// A handler that fails transiently every time: the event is redelivered with backoff up to
/// `consumer.max_deliveries`, then dead-lettered with the last reason, instead of forever.
#[tokio::test]
async fn a_transient_failure_that_never_ends_is_dead_lettered_after_the_limit() {
    let env = TestEnv::start().await;
    let mut config = crate::support::config(&env);
    config.consumer.max_deliveries = 3;
    let platform =
        followup_platform::Platform::start(crate::support::INFO, config, &crate::support::MIGRATOR)
            .await
            .unwrap();
    platform
        .consume(
            ConsumerSpec::new(CLINIC, "itest-clinic", "clinic.>"),
            Recorder,
        )
        .await
        .unwrap();
    env.publish("clinic.c1.stuck.x", &event("c1")).await;
    let js = env.nats.jetstream().await;
    let deadletters = js.get_stream("DEADLETTER").await.unwrap();
    eventually("the stuck event is dead-lettered", || {
        let mut deadletters = deadletters.clone();
        async move { deadletters.info().await.unwrap().state.messages == 1 }
    })
    .await;
    let letter = deadletters.get_raw_message(1).await.unwrap();
    let reason = letter
        .headers
        .get(DEADLETTER_REASON)
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(
        reason.contains("gave up after 3 deliveries") && reason.contains("still not"),
        "{reason}"
    );
    let text = platform.metrics.encode();
    assert!(text.contains("outcome=\"retried\"} 2"), "{text}");
    assert!(text.contains("outcome=\"dead_lettered\"} 1"), "{text}");
}
