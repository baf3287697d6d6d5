//! The NATS server refuses what a user may not do (issue 24): a clinic integration touches only its own
//! clinic subjects, a service publishes only its own events and reads only its own consumers. Every forged
//! publish below was accepted before the test kit's server ran with users and permissions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use followup_platform::nats_auth::{self, Identity};
use followup_platform::testkit::TestNats;

/// A connection as one user that remembers what the server refused.
struct Probe {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    async fn connect(nats: &TestNats, seed_file: &std::path::Path) -> Self {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let recorder = errors.clone();
        let client = nats_auth::connect_options(seed_file)
            .unwrap()
            .event_callback(move |event| {
                let recorder = recorder.clone();
                async move {
                    if let async_nats::Event::ServerError(err) = event {
                        recorder.lock().unwrap().push(err.to_string());
                    }
                }
            })
            .connect(nats.url())
            .await
            .unwrap();
        Self { client, errors }
    }

    /// Waits (bounded) for the server's permission violation naming `subject`.
    async fn refused(&self, what: &str, subject: &str) -> bool {
        let expected = format!("Permissions Violation for {what} to \"{subject}\"");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if self
                .errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains(&expected))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Publishes on `subject` and asserts the server refused it and nothing reached a stream.
    async fn assert_publish_refused(&self, nats: &TestNats, who: &str, subject: &str) {
        self.client
            .publish(subject.to_string(), "forged".into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        assert!(
            self.refused("Publish", subject).await,
            "{who} may not publish {subject}; server errors: {:?}",
            self.errors.lock().unwrap()
        );
        assert!(
            !stored(nats, subject).await,
            "{who}'s publish on {subject} reached a stream"
        );
    }

    async fn assert_subscribe_refused(&self, who: &str, subject: &str) {
        let _subscription = self.client.subscribe(subject.to_string()).await.unwrap();
        self.client.flush().await.unwrap();
        assert!(
            self.refused("Subscription", subject).await,
            "{who} may not subscribe to {subject}; server errors: {:?}",
            self.errors.lock().unwrap()
        );
    }
}

/// Whether any stream holds a message on `subject` (asked as the admin).
async fn stored(nats: &TestNats, subject: &str) -> bool {
    let js = nats.jetstream().await;
    for stream in ["CLINIC", "FOLLOWUP", "BEACONS", "DEADLETTER"] {
        let stream = js.get_stream(stream).await.unwrap();
        if stream
            .get_last_raw_message_by_subject(subject)
            .await
            .is_ok()
        {
            return true;
        }
    }
    false
}

async fn started() -> TestNats {
    let nats = TestNats::start().await;
    followup_platform::jetstream::ensure_streams(&nats.jetstream().await, 1)
        .await
        .unwrap();
    nats
}

#[tokio::test]
async fn a_clinic_publishes_its_own_events_and_nothing_else() {
    let nats = started().await;
    let clinic_a = nats.clinic_credentials("clinic-a").await;
    nats.clinic_credentials("clinic-b").await;
    let probe = Probe::connect(&nats, &clinic_a).await;

    // Its own event, as a clinic system sends it: a JetStream publish awaiting the PubAck.
    let js = followup_platform::jetstream::context(probe.client.clone());
    js.send_publish(
        "clinic.clinic-a.patient.upserted",
        PublishMessage::build()
            .payload("ok".into())
            .message_id("own-1"),
    )
    .await
    .unwrap()
    .await
    .expect("the clinic's own publish is acknowledged");
    assert!(stored(&nats, "clinic.clinic-a.patient.upserted").await);

    for subject in [
        "clinic.clinic-b.patient.upserted",
        "clinic.clinic-b.appointment.booked",
        "followup.clinic-a.scheduler.notification_requested",
        "followup.clinic-a.plans.plan_sent",
        "beacons.clinic-a",
        "deadletter.clinic",
        "$JS.API.STREAM.DELETE.CLINIC",
        "$JS.API.STREAM.PURGE.CLINIC",
        "$JS.API.CONSUMER.CREATE.CLINIC",
        "$JS.API.CONSUMER.MSG.NEXT.CLINIC.notifications-clinic",
    ] {
        probe
            .assert_publish_refused(&nats, "clinic A", subject)
            .await;
    }
    // Nor read anyone's traffic or replies.
    for subject in ["clinic.>", "followup.>", "_INBOX.>", "$JS.ACK.>"] {
        probe.assert_subscribe_refused("clinic A", subject).await;
    }
}

#[tokio::test]
async fn a_service_publishes_only_its_own_events_and_reads_only_its_consumers() {
    let nats = started().await;
    let as_service = |name: &str| nats.credentials(&Identity::Service(name.to_string()));

    let scheduler = Probe::connect(&nats, &as_service("scheduler")).await;
    for subject in [
        "followup.clinic-a.plans.plan_sent",
        "followup.clinic-a.notifications.message_sent",
        "clinic.clinic-a.patient.upserted",
        "beacons.clinic-a",
        "deadletter.beacons",
        "$JS.API.STREAM.DELETE.FOLLOWUP",
        // Another service's consumer, or its own durable pointed at other subjects.
        "$JS.API.CONSUMER.MSG.NEXT.FOLLOWUP.cases-plans",
        "$JS.API.CONSUMER.CREATE.FOLLOWUP.cases-plans.followup.*.plans.>",
        "$JS.API.CONSUMER.CREATE.BEACONS.scheduler-plans.beacons.*",
    ] {
        scheduler
            .assert_publish_refused(&nats, "the scheduler", subject)
            .await;
    }
    for subject in ["followup.>", "clinic.>", "_INBOX.>"] {
        scheduler
            .assert_subscribe_refused("the scheduler", subject)
            .await;
    }

    let plans = Probe::connect(&nats, &as_service("plans")).await;
    for subject in [
        "followup.clinic-a.cases.case_opened",
        "followup.clinic-a.scheduler.notification_requested",
        "clinic.clinic-a.patient.upserted",
        "beacons.clinic-a",
    ] {
        plans.assert_publish_refused(&nats, "plans", subject).await;
    }

    let cases = Probe::connect(&nats, &as_service("cases")).await;
    cases
        .assert_publish_refused(&nats, "cases", "beacons.clinic-a")
        .await;

    // What each may do: its own events (acknowledged by the stream).
    for (service, subject) in [
        ("plans", "followup.clinic-a.plans.plan_sent"),
        (
            "scheduler",
            "followup.clinic-a.scheduler.notification_requested",
        ),
        ("engagement", "beacons.clinic-a"),
    ] {
        let client = nats.connect_as(&as_service(service)).await;
        followup_platform::jetstream::context(client)
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload("ok".into())
                    .message_id(format!("{service}-own")),
            )
            .await
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("{service} publishes {subject}: {e}"));
    }
}

#[tokio::test]
async fn the_testkit_publishes_as_the_subjects_producer() {
    use followup_platform::testkit::producer;
    assert_eq!(
        producer("clinic.acme.patient.upserted"),
        Identity::Clinic("acme".into())
    );
    assert_eq!(
        producer("followup.acme.plans.plan_sent"),
        Identity::Service("plans".into())
    );
    assert_eq!(
        producer("beacons.acme"),
        Identity::Service("engagement".into())
    );
    assert_eq!(producer("followup.acme.test.thing"), Identity::Admin);
}
