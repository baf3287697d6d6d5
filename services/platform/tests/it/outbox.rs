use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use followup_platform::metrics::Metrics;
use followup_platform::outbox::{self, Relay};
use followup_platform::testkit::TestEnv;

use crate::support::{INFO, MIGRATOR, config, event};

async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test]
async fn the_outbox_survives_a_crash_between_commit_and_publish() {
    let env = TestEnv::start().await;
    let config = config(&env);
    let pool = followup_platform::db::connect(&config).await.unwrap();
    followup_platform::db::migrate(&pool, &MIGRATOR)
        .await
        .unwrap();
    let js = env.nats.jetstream().await;
    followup_platform::jetstream::ensure_streams(&js, 1)
        .await
        .unwrap();

    // Crash 1: committed, never published (the relay died before its round).
    let committed = event("c1");
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, INFO.name, "followup.c1.test.committed", &committed)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Crash 2: committed and published, but the relay died before it marked the row published.
    let published = event("c1");
    let mut tx = pool.begin().await.unwrap();
    let id = outbox::enqueue(&mut tx, INFO.name, "followup.c1.test.published", &published)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let payload = prost::Message::encode_to_vec(&published);
    js.send_publish(
        "followup.c1.test.published",
        PublishMessage::build()
            .payload(payload.into())
            .message_id(id.to_string()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(stream_messages(&js, "FOLLOWUP").await, 1);

    // The restarted relay publishes both; JetStream drops the second copy of the one already out.
    let relay = Relay {
        pool: pool.clone(),
        js: js.clone(),
        batch_size: 100,
        poll_interval: Duration::from_millis(50),
        metrics: Arc::new(Metrics::new("itest")),
    };
    assert_eq!(relay.publish_once().await.unwrap(), 2);
    assert_eq!(
        relay.publish_once().await.unwrap(),
        0,
        "nothing left pending"
    );
    assert_eq!(
        stream_messages(&js, "FOLLOWUP").await,
        2,
        "each event exactly once in the stream"
    );
    assert_eq!(outbox::backlog(&pool).await.unwrap(), 0);

    // And the message carries what consumers rely on.
    let stream = js.get_stream("FOLLOWUP").await.unwrap();
    let message = stream
        .get_last_raw_message_by_subject("followup.c1.test.committed")
        .await
        .unwrap();
    let headers = message.headers;
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.to_string()),
        Some(committed.event_id.clone())
    );
    assert_eq!(
        headers.get("ce-type").map(|v| v.to_string()).as_deref(),
        Some("followup.events.v1.EventHeader")
    );
    assert_eq!(
        headers.get("ce-source").map(|v| v.to_string()).as_deref(),
        Some("followup/itest")
    );
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing() {
    let env = TestEnv::start().await;
    let platform = crate::support::platform(&env).await;
    let mut tx = platform.pool.begin().await.unwrap();
    outbox::enqueue(
        &mut tx,
        INFO.name,
        "followup.c1.test.rolled_back",
        &event("c1"),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = platform.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, INFO.name, "followup.c1.test.kept", &event("c1"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The running relay is woken by the commit's NOTIFY.
    let js = platform.js.clone();
    crate::support::eventually("the committed event is published", || {
        let js = js.clone();
        async move { stream_messages(&js, "FOLLOWUP").await == 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stream_messages(&js, "FOLLOWUP").await, 1);
}
