//! Keeps the process harness of the fault and load runs honest in CI: the five service binaries as
//! children against a private NATS and PostgreSQL; the scheduler killed with SIGKILL while a hot
//! enquiry waits for it; started again, it answers ready by itself and the enquiry's reply reaches the
//! local SMS provider exactly once.
//!
//! The binaries are those cargo built beside this test (`cargo nextest run --workspace` builds every
//! package's binaries; alone: `cargo build -p followup-plans -p followup-cases -p followup-engagement
//! -p followup-scheduler -p followup-notifications --bins` first), or `FOLLOWUP_BIN_DIR`.

use std::time::{Duration, Instant};

use followup_e2e::procs::{Options, Publisher, Svc, System, daytime_zone, locate_binaries, retry};
use followup_platform::auth::Role;
use followup_platform::event::{new_event_id, now_timestamp};
use followup_proto::followup::events::v1::{DirectContact, EnquiryCreated};
use followup_proto::followup::notifications::v1 as notifications;
use followup_proto::followup::scheduler::v1 as scheduler;

const TENANT: &str = "smoke-clinic";
const GIVEN: &str = "Ottoline";
const FAMILY: &str = "Vantongeren";
const PHONE: &str = "+447700900461";

async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_recovers_and_a_message_goes_once() {
    let bin_dir = locate_binaries().unwrap_or_else(|err| panic!("{err}"));
    let mut system = System::start(Options::new(bin_dir))
        .await
        .unwrap_or_else(|err| panic!("the system starts: {err:#}"));
    let mut api = system.api(TENANT, Role::Owner).expect("clients");
    let within = Duration::from_secs(30);

    retry("delivery settings", within, || {
        let mut client = api.notifications.clone();
        async move {
            client
                .update_delivery_settings(notifications::UpdateDeliverySettingsRequest {
                    settings: Some(notifications::DeliverySettings {
                        clinic_name: "Smoke Dental".into(),
                        clinic_phone: "+15125550100".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["clinic_name".into(), "clinic_phone".into()],
                    }),
                })
                .await
        }
    })
    .await
    .expect("settings");
    api.scheduler
        .enable_rule_template(scheduler::EnableRuleTemplateRequest {
            template_id: "hot_enquiry".into(),
            play: true,
            owner_staff_id: String::new(),
        })
        .await
        .expect("the hot enquiry rule plays");

    // The scheduler dies without a goodbye; the enquiry waits for it in JetStream.
    let scheduler_pid = system.pid(Svc::Scheduler).expect("the scheduler runs");
    system.kill9(Svc::Scheduler).await.expect("kill -9");
    assert!(
        !followup_platform::local::pid_exists(scheduler_pid),
        "the killed scheduler is gone"
    );
    assert_eq!(system.readyz(Svc::Scheduler).await, None);
    let publisher = Publisher::connect(&system.nats_url()).await.expect("NATS");
    publisher
        .publish(
            &EnquiryCreated {
                event_id: new_event_id().to_string(),
                tenant_id: TENANT.into(),
                occurred_at: Some(now_timestamp()),
                enquiry_id: "enq-smoke-1".into(),
                contact: Some(DirectContact {
                    given_name: GIVEN.into(),
                    family_name: FAMILY.into(),
                    phone_e164: PHONE.into(),
                    time_zone: daytime_zone(),
                    ..Default::default()
                }),
                source: "website form".into(),
                interest: "implants".into(),
                ..Default::default()
            },
            within,
        )
        .await
        .expect("the enquiry is published");

    // Started again, it is ready by itself and takes the enquiry up.
    let recovery = system
        .restart(Svc::Scheduler)
        .await
        .expect("the scheduler starts again");
    assert!(
        recovery < Duration::from_secs(30),
        "ready {recovery:?} after the restart"
    );
    assert_eq!(system.starts(Svc::Scheduler), 2);
    let sink = system.sink.view();
    eventually(
        "the reply at the SMS provider",
        Duration::from_secs(30),
        || {
            let sink = sink.clone();
            async move { (!sink.keys_to(PHONE).is_empty()).then_some(()) }
        },
    )
    .await;
    // Give a duplicate the chance to show: the next timer round and relay poll come well within this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|r| r.to == PHONE)
        .collect();
    assert_eq!(received.len(), 1, "one request: {received:?}");
    assert!(received[0].key.starts_with(&format!("{TENANT}:")));
    assert!(
        received[0].body.contains(GIVEN),
        "the reply greets the enquirer"
    );

    // Nothing personal in any log of the run.
    let mut logs = String::new();
    for file in system.log_files() {
        logs.push_str(&std::fs::read_to_string(&file).unwrap_or_default());
    }
    assert!(logs.contains("\"serving\""), "the logs were captured");
    for secret in [GIVEN, FAMILY, PHONE, received[0].body.as_str()] {
        assert!(!logs.contains(secret), "a log holds `{secret}`");
    }
    system
        .shutdown(Duration::from_secs(5))
        .await
        .expect("everything stops");
}
