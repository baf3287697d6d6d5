//! The notifications load generator: `notification_requested` → provider request accepted by a local
//! HTTP sink, through dedupe, consent, the cap, rendering and the outbox, with NATS and PostgreSQL on
//! this machine.
//!
//! ```sh
//! cargo run --release -p followup-notifications --features bench --bin notifications-bench -- \
//!     [--messages 60000] [--rate 1000] [--seconds 20]
//! ```
//!
//! Phase 1 publishes `--messages` requests as fast as NATS takes them and reports messages per second
//! from the first publish to the last provider request. Phase 2 publishes at `--rate` per second for
//! `--seconds` and reports latency percentiles from publish to provider request. It starts its own
//! nats-server and a fresh database on `FOLLOWUP_TEST_DATABASE_URL` (like the tests) and removes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use followup_notifications::config::{Settings, SmsProvider};
use followup_notifications::{INFO, Service};
use followup_platform::config::Secret;
use followup_platform::event::{new_event_id, now_timestamp};
use followup_platform::testkit::TestEnv;
use followup_proto::followup::common::v1::Channel;
use followup_proto::followup::events::v1::{NotificationRequested, Recipient, recipient};
use prost::Message as _;

const TENANT: &str = "bench-clinic";

#[derive(Clone, Default)]
struct Sink {
    /// Request number → when the provider got it.
    arrived: Arc<Mutex<HashMap<u64, Instant>>>,
}

async fn provider(
    State(sink): State<Sink>,
    headers: HeaderMap,
    _body: Bytes,
) -> (StatusCode, &'static str) {
    let n = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|k| k.rsplit(':').next())
        .and_then(|n| n.parse::<u64>().ok());
    if let (Some(n), Ok(mut arrived)) = (n, sink.arrived.lock()) {
        arrived.entry(n).or_insert_with(Instant::now);
    }
    (StatusCode::CREATED, r#"{"id":"bench"}"#)
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(n: u64, patients: u64) -> NotificationRequested {
    NotificationRequested {
        event_id: new_event_id().to_string(),
        tenant_id: TENANT.into(),
        occurred_at: Some(now_timestamp()),
        idempotency_key: format!("bench:{n}"),
        channel: Channel::Sms as i32,
        template_key: "plan_follow_up_1".into(),
        variables: [(
            "portal_url".to_string(),
            format!("https://portal.example/p/{n}"),
        )]
        .into(),
        category: "treatment_follow_up".into(),
        recipient: Some(Recipient {
            target: Some(recipient::Target::PatientId(format!("p{}", n % patients))),
        }),
        ..Default::default()
    }
}

async fn wait_for(sink: &Sink, from: u64, to: u64, deadline: Duration) -> Option<Instant> {
    let started = Instant::now();
    loop {
        {
            let arrived = sink.arrived.lock().ok()?;
            if (from..to).all(|n| arrived.contains_key(&n)) {
                return (from..to).filter_map(|n| arrived.get(&n).copied()).max();
            }
        }
        if started.elapsed() > deadline {
            let got = sink
                .arrived
                .lock()
                .map(|a| (from..to).filter(|n| a.contains_key(n)).count())
                .unwrap_or(0);
            eprintln!("timed out: {got} of {} arrived", to - from);
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages = arg("--messages", 60_000);
    let rate = arg("--rate", 1000);
    let seconds = arg("--seconds", 20);
    // Three messages per patient per week at most: enough patients that the cap never defers.
    let patients = (messages + rate * seconds).div_ceil(3) + 1;

    let _telemetry = followup_platform::telemetry::init(
        "notifications-bench",
        &followup_platform::config::LogConfig {
            format: followup_platform::config::LogFormat::Pretty,
            filter: std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        },
    );
    let env = TestEnv::start().await;
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = listener.local_addr()?;
    let router = Router::new().fallback(provider).with_state(sink.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let defaults = Settings::default();
    let own = Settings {
        http_addr: "127.0.0.1:0".parse()?,
        unsubscribe_signing_key: Secret::new("bench-key-0123456789abcdef0123456789"),
        sms: followup_notifications::config::SmsSettings {
            provider: SmsProvider::GenericJson,
            base_url: format!("http://{sink_addr}"),
            from: "+15125550100".into(),
            ..defaults.sms.clone()
        },
        delivery: followup_notifications::config::DeliveryConfig {
            poll_interval_ms: 200,
            ..defaults.delivery.clone()
        },
        ..defaults
    };
    let sources = env.sources().set("database_max_connections", 24).set(
        "log.filter",
        std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    );
    let config = followup_platform::service::ServiceConfig::load(&INFO, own, sources)?;
    let running = Service::build(config).await?;

    // Contacts, and quiet hours off so the time of day does not matter (they are still evaluated).
    let pool = env.db.pool().await;
    sqlx::query(
        "INSERT INTO contacts (tenant_id, patient_id, given_name, family_name, phone_e164, source, source_time)
         SELECT $1, 'p' || n, 'Pat', 'Bench', '+1512555' || lpad(n::text, 4, '0'), 'bench', now()
         FROM generate_series(0, $2 - 1) AS n",
    )
    .bind(TENANT)
    .bind(patients as i64)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO delivery_settings (tenant_id, time_zone, quiet_hours_start, quiet_hours_end, weekly_cap, cap_deferral_limit_secs, clinic_name)
         VALUES ($1, 'UTC', '00:00', '00:00', 3, 604800, 'Bench Dental')",
    )
    .bind(TENANT)
    .execute(&pool)
    .await?;

    let js = env.nats.jetstream().await;
    let subject = format!("followup.{TENANT}.scheduler.notification_requested");
    let publish = |n: u64| {
        let js = js.clone();
        let subject = subject.clone();
        let event = request(n, patients);
        async move {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(event.encode_to_vec().into())
                .message_id(event.event_id.clone());
            js.send_publish(subject, message).await?.await?;
            anyhow::Ok(())
        }
    };

    // Phase 1: throughput.
    println!("phase 1: {messages} requests as fast as they go");
    let started = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for n in 0..messages {
        in_flight.push(publish(n));
        if in_flight.len() >= 1000 {
            use futures::StreamExt as _;
            if let Some(result) = in_flight.next().await {
                result?;
            }
        }
    }
    use futures::StreamExt as _;
    while let Some(result) = in_flight.next().await {
        result?;
    }
    let published = started.elapsed();
    let last = wait_for(&sink, 0, messages, Duration::from_secs(600)).await;
    let throughput = last.map(|last| messages as f64 / (last - started).as_secs_f64());
    println!(
        "  published in {:.1} s; {}",
        published.as_secs_f64(),
        match throughput {
            Some(t) => format!(
                "{} messages/s (publish to last provider request)",
                t.round()
            ),
            None => "did not finish".into(),
        }
    );

    // Phase 2: latency at a steady rate.
    println!("phase 2: {rate} requests/s for {seconds} s");
    let total = rate * seconds;
    let first = messages;
    let mut sent_at: HashMap<u64, Instant> = HashMap::with_capacity(total as usize);
    let tick = Duration::from_secs_f64(1.0 / rate as f64);
    let phase_start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..total {
        let due = phase_start + tick * (i as u32);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let n = first + i;
        sent_at.insert(n, Instant::now());
        pending.push(tokio::spawn(publish(n)));
    }
    for p in pending {
        p.await??;
    }
    wait_for(&sink, first, first + total, Duration::from_secs(120)).await;
    let arrived = sink.arrived.lock().map(|a| a.clone()).unwrap_or_default();
    let mut latencies: Vec<f64> = (first..first + total)
        .filter_map(|n| Some((*arrived.get(&n)? - *sent_at.get(&n)?).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "  {} delivered; latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    let dupes: i64 =
        sqlx::query_scalar("SELECT count(*) - count(DISTINCT idempotency_key) FROM messages")
            .fetch_one(&pool)
            .await?;
    println!("  duplicate messages: {dupes}");
    if let Some(t) = throughput {
        println!(
            "\nheadline: {} messages/s; p99 {:.0} ms at {rate} messages/s",
            t.round(),
            pct(0.99)
        );
    }
    running.stop().await;
    Ok(())
}
