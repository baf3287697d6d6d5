//! Backtest replay throughput (BENCHMARKS.md, "Scheduler: backtest replay"): records 1,000,000 events of
//! one clinic in a private JetStream (a realistic mix over 90 days: patients, plans sent and viewed,
//! bookings, cancellations, attendances, enquiries, replies, messages sent), then replays them through
//! the service's own backtest (`replay::run`: two ephemeral ordered consumers, decode, the in-memory dry
//! run of the shipped treatment-plan follow-up rule) and reports `N events/s replayed`, beside the bare
//! read of the same messages through the same consumers (no decode, no simulation).
//!
//! Needs `nats-server` on PATH. Run:
//! `cargo run --release -p followup-scheduler --features bench --bin backtest-bench`

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use chrono::{DateTime, Utc};
use clap::Parser;
use followup_platform::local::LocalNats;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::subjects::{Event, Stream};
use followup_scheduler::domain::backtest::Simulation;
use followup_scheduler::domain::pacing::Pacing;
use followup_scheduler::domain::schedule::ClinicCalendar;
use followup_scheduler::replay::{self, Limits};
use futures::StreamExt;

const TENANT: &str = "bench-clinic";
/// Plans in the recording.
const PLANS: u64 = 40_000;

#[derive(Parser)]
#[command(about = "Backtest replay throughput of the scheduler")]
struct Args {
    /// Events to record.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Replays to run (the median is the headline).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Publishes in flight while recording.
    #[arg(long, default_value_t = 4000)]
    in_flight: usize,
}

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(followup_platform::event::timestamp(at))
}

/// The n-th event of the recording: its subject and protobuf payload.
fn event(n: u64, total: u64, start: DateTime<Utc>) -> (String, Vec<u8>) {
    // 90 days of history, evenly spread.
    let span_ms: i64 = 90 * 86_400_000;
    let at = start + chrono::Duration::milliseconds(span_ms / total.max(1) as i64 * n as i64);
    let occurred = ts(at);
    // Each plan has an event every PLANS events (about 3.6 days of the 90), and goes through the kinds
    // in order from where its number puts it, so a plan is sent, viewed, booked, cancelled, attended and
    // replied to over weeks: enrollments run, steps fall due (some at night), some cases book anyway.
    let p = n % PLANS;
    let stage = n / PLANS;
    let patient = format!("p{}", p % 20_000);
    let plan = format!("0193a0c0-0000-7000-8000-{p:012}");
    let event_id = format!("bench-{n}");
    let tenant = TENANT.to_string();
    let appointment = |id: u64| ev::Appointment {
        appointment_id: format!("a{id}"),
        patient_id: patient.clone(),
        slot: Some(common::Slot {
            start_time: ts(at + chrono::Duration::days(3)),
            duration: Some(prost_types::Duration {
                seconds: 2700,
                nanos: 0,
            }),
            practitioner_id: "dr-ana".into(),
            location_id: String::new(),
        }),
        plan_id: plan.clone(),
        ..Default::default()
    };
    fn encode<E: Event>(e: E) -> (String, Vec<u8>) {
        (e.subject().unwrap_or_default(), e.encode_to_vec())
    }
    match (stage + p) % 20 {
        0 => encode(ev::PatientUpserted {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            patient_id: patient,
            given_name: "Pat".into(),
            phone_e164: "+447700900123".into(),
            ..Default::default()
        }),
        1..=3 => encode(ev::PlanSent {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            plan_id: plan,
            plan_version: 1,
            patient_id: patient,
            title: "Crown".into(),
            value: Some(common::Money {
                amount_minor: 120_000,
                currency: "USD".into(),
            }),
            sent_time: occurred,
            visit_count: 2,
            ..Default::default()
        }),
        4..=6 => encode(ev::PlanViewed {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            plan_id: plan,
            patient_id: patient,
            ..Default::default()
        }),
        7 | 8 => encode(ev::AppointmentBooked {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            appointment: Some(appointment(n)),
            ..Default::default()
        }),
        9 => encode(ev::AppointmentCancelled {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            // The appointment booked one stage earlier.
            appointment: Some(appointment(n.saturating_sub(PLANS))),
            slot_refillable: true,
            ..Default::default()
        }),
        10 | 11 => encode(ev::AppointmentAttended {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            // An appointment booked three stages earlier.
            appointment: Some(appointment(n.saturating_sub(3 * PLANS))),
        }),
        12 => encode(ev::EnquiryCreated {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            enquiry_id: format!("q{n}"),
            patient_id: patient,
            interest: "implants".into(),
            ..Default::default()
        }),
        13 => encode(ev::PatientReplied {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            patient_id: patient,
            text: "thanks".into(),
            kind: ev::ReplyKind::Text as i32,
            ..Default::default()
        }),
        _ => encode(ev::MessageSent {
            event_id,
            tenant_id: tenant,
            occurred_at: occurred,
            message: Some(ev::MessageRef {
                message_id: format!("m{n}"),
                channel: common::Channel::Sms as i32,
                category: "treatment_follow_up".into(),
                patient_id: patient,
                ..Default::default()
            }),
            attempt: 1,
            ..Default::default()
        }),
    }
}

async fn record(
    js: &async_nats::jetstream::Context,
    args: &Args,
    start: DateTime<Utc>,
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for n in 0..args.events {
        let (subject, payload) = event(n, args.events, start);
        let ack = js
            .publish(subject, payload.into())
            .await
            .context("publish")?;
        acks.push(ack.into_future());
        while acks.len() >= args.in_flight {
            if let Some(done) = acks.next().await {
                done.context("puback")?;
            }
        }
    }
    while let Some(done) = acks.next().await {
        done.context("puback")?;
    }
    Ok(began.elapsed())
}

/// The same messages through the same kind of consumers, only counted.
async fn bare_read(
    js: &async_nats::jetstream::Context,
    from: DateTime<Utc>,
) -> anyhow::Result<(u64, Duration)> {
    let began = Instant::now();
    let mut total = 0;
    for stream in [Stream::Clinic, Stream::Followup] {
        let handle = js.get_stream(stream.name()).await?;
        let nanos = from.timestamp_nanos_opt().unwrap_or(0);
        let mut consumer = handle
            .create_consumer(OrderedConfig {
                deliver_subject: js.client().new_inbox(),
                filter_subject: stream.tenant_filter(TENANT)?,
                deliver_policy: DeliverPolicy::ByStartTime {
                    start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))?,
                },
                ..Default::default()
            })
            .await?;
        let pending = consumer.info().await?.num_pending;
        let mut messages = consumer.messages().await?;
        let mut read = 0;
        while read < pending {
            match messages.next().await {
                Some(m) => {
                    m?;
                    read += 1;
                }
                None => break,
            }
        }
        total += read;
    }
    Ok((total, began.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "backtest-bench on {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let dir = std::env::temp_dir().join(format!(
        "backtest-bench-nats-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let nats = LocalNats::start(&dir, None).await?;
    let outcome = async {
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        followup_platform::jetstream::ensure_streams(&js, 1).await?;
        let history_start = DateTime::parse_from_rfc3339("2026-06-01T08:00:00Z")?.with_timezone(&Utc);
        let wall_start = Utc::now() - chrono::Duration::seconds(1);
        let took = record(&js, &args, history_start).await?;
        println!(
            "recorded {} events in {:.1} s ({:.0} events/s published)",
            args.events,
            took.as_secs_f64(),
            args.events as f64 / took.as_secs_f64()
        );
        let (read, bare) = bare_read(&js, wall_start).await?;
        println!(
            "bare ordered-consumer read: {read} messages in {:.2} s ({:.0} messages/s)",
            bare.as_secs_f64(),
            read as f64 / bare.as_secs_f64()
        );
        let rule = followup_scheduler::templates::find("treatment_plan_follow_up")
            .and_then(|t| t.rule)
            .context("the shipped template")?;
        let def = followup_scheduler::convert::valid_rule(&rule)?;
        let mut rates = Vec::new();
        for run in 1..=args.runs {
            let sim = Simulation::new(
                def.clone(),
                chrono_tz::Europe::London,
                ClinicCalendar::default(),
                Pacing::default(),
                100,
            );
            let limits = Limits {
                start: wall_start,
                end: Utc::now(),
                max_events: 10_000_000,
                max_duration: Duration::from_secs(1800),
            };
            let outcome = replay::run(&js, TENANT, sim, limits, |_| Ok(())).await?;
            let r = &outcome.report;
            let rate = r.events as f64 / outcome.elapsed.as_secs_f64();
            println!(
                "replay {run}: {} events in {:.2} s = {:.0} events/s; {} cases enrolled, {} messages ({} held by quiet hours, {} by the cap), {} booked anyway",
                r.events,
                outcome.elapsed.as_secs_f64(),
                rate,
                r.cases_enrolled,
                r.messages,
                r.held_by_quiet_hours,
                r.held_by_frequency_cap,
                r.booked
            );
            rates.push(rate);
        }
        rates.sort_by(|a, b| a.total_cmp(b));
        let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
        println!("headline: {median:.0} events/s replayed (median of {})", rates.len());
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = nats.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}
