//! The whole system under a clinic network's load: the five release service binaries as processes, a
//! private nats-server and PostgreSQL and a local SMS provider, all on this machine, driven for a fixed
//! time by open-loop generators (requests leave at their intended times whatever the answers do, and
//! latency counts from the intended time, so queueing shows).
//!
//! ```sh
//! cargo run --release -p followup-e2e --bin load                  # builds the service binaries first
//! cargo run --release -p followup-e2e --bin load -- --help        # rates, sizes, duration
//! ```
//!
//! Set-up (timed, not measured as load): `--clinics` clinics, each with the shipped treatment-plan
//! follow-up and hot-enquiry rules playing and its delivery settings; a fee schedule and a few real
//! plans in the first 100 clinics; then `--enrollments` `plan_sent` events published as the plans
//! service would (spread over the clinics), and the run waits until the scheduler holds an enrollment
//! for each and the cases service a case, and then until every outbox and every durable consumer has
//! drained what the seed set off.
//!
//! Load (`--duration-secs`): beacons to engagement's HTTP ingest at `--beacon-rate` (one event each,
//! portal tokens of the seeded plans, so first views become `plan_viewed` and the facts
//! `engagement_updated`); clinic events at `--event-rate` (a mix of enquiries, patients, bookings,
//! cancellations, no-shows, attendances, invoices, consultations, care cases and replies); and each
//! service's main read RPC at `--rpc-rate` (plans GetPlan, cases ListFollowUpQueue, engagement
//! GetPlanEngagement, scheduler ListEnrollments, notifications ListMessages) plus plan journeys
//! (CreatePlan, CreatePlanItem, SendPlan) at `--journey-rate`.
//!
//! Measured: p50/p99 of each RPC and of the beacon POST, the hot trigger end to end
//! (`enquiry.created` published → the SMS at the provider), the backlog of every durable consumer at the
//! end and how long it took to drain, the memory (RSS) of each service at the end, the CPU each process
//! used, and the machine's load average. Everything stops by itself.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use followup_e2e::procs::{
    Api, Beacons, Options, Publisher, Svc, System, build_binaries, daytime_zone, load_average,
    locate_binaries, retry, rss_kib,
};
use followup_platform::auth::Role;
use followup_platform::event::{new_event_id, now_timestamp, timestamp};
use followup_proto::followup::cases::v1 as cases;
use followup_proto::followup::common::v1::{CareCaseStatus, Channel, Money, PortalSection, Slot};
use followup_proto::followup::engagement::v1 as engagement;
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::notifications::v1 as notifications;
use followup_proto::followup::plans::v1 as plans;
use followup_proto::followup::scheduler::v1 as scheduler;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use rand::Rng as _;
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser, Clone)]
#[command(about = "The whole system under a clinic network's load for a fixed time")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    clinics: usize,
    /// Enrollments (plan_sent events) seeded before the load.
    #[arg(long, default_value_t = 100_000)]
    enrollments: usize,
    /// Beacon requests per second (one event each).
    #[arg(long, default_value_t = 2000.0)]
    beacon_rate: f64,
    /// Clinic events per second.
    #[arg(long, default_value_t = 200.0)]
    event_rate: f64,
    /// Calls per second of each service's main read RPC.
    #[arg(long, default_value_t = 10.0)]
    rpc_rate: f64,
    /// Plan journeys (CreatePlan, CreatePlanItem, SendPlan) per second.
    #[arg(long, default_value_t = 2.0)]
    journey_rate: f64,
    /// Length of the load.
    #[arg(long, default_value_t = 300)]
    duration_secs: u64,
    /// Keep data, configuration and logs here (default: a temporary folder, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use the service binaries already built (FOLLOWUP_BIN_DIR or beside this one).
    #[arg(long)]
    no_build: bool,
    /// Write the summary (markdown) to this file too.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// Latencies of one kind of call, in microseconds from the intended start.
struct Measure {
    name: String,
    histogram: std::sync::Mutex<Histogram<u64>>,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Why calls failed: a status code or error kind, and how often.
    failures: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Measure {
    fn new(name: &str) -> Arc<Self> {
        // 1 µs .. 10 min, 3 significant figures.
        #[allow(clippy::expect_used)]
        let histogram =
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid");
        Arc::new(Self {
            name: name.to_string(),
            histogram: std::sync::Mutex::new(histogram),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failures: std::sync::Mutex::default(),
        })
    }

    fn record(&self, outcome: Result<(), String>, elapsed: Duration) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut h) = self.histogram.lock() {
                    let _ = h.record((elapsed.as_micros() as u64).max(1));
                }
            }
            Err(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.failures.lock() {
                    *f.entry(why).or_default() += 1;
                }
            }
        }
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.histogram
            .lock()
            .map(|h| h.value_at_quantile(quantile) as f64 / 1000.0)
            .unwrap_or_default()
    }

    fn max_ms(&self) -> f64 {
        self.histogram
            .lock()
            .map(|h| h.max() as f64 / 1000.0)
            .unwrap_or_default()
    }

    fn line(&self, elapsed: Duration) -> String {
        let ok = self.ok.load(Ordering::Relaxed);
        let failures = self
            .failures
            .lock()
            .map(|f| {
                f.iter()
                    .map(|(why, n)| format!("{n} {why}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        format!(
            "{}: {ok} ok ({:.0}/s), {} failed{}; p50 {:.1} ms, **p99 {:.1} ms**, max {:.0} ms",
            self.name,
            ok as f64 / elapsed.as_secs_f64(),
            self.failed.load(Ordering::Relaxed),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({failures})")
            },
            self.ms(0.5),
            self.ms(0.99),
            self.max_ms()
        )
    }
}

/// Calls `call(i)` at `rate` per second for `duration` (open loop), at most `in_flight` at once;
/// `call` answers whether it succeeded (else why not); latency counts from the intended start.
fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    in_flight: usize,
    measure: Arc<Measure>,
    call: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let call = Arc::new(call);
    tokio::spawn(async move {
        if rate <= 0.0 {
            return;
        }
        let limit = Arc::new(Semaphore::new(in_flight));
        let start = tokio::time::Instant::now();
        let total = (rate * duration.as_secs_f64()) as u64;
        let mut tasks = futures::stream::FuturesUnordered::new();
        for i in 0..total {
            let intended = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(intended).await;
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let call = call.clone();
            let measure = measure.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = call(i).await;
                measure.record(outcome, intended.elapsed());
                drop(permit);
            }));
            // Reap finished tasks as we go so the set stays small.
            while let Some(Some(_)) = futures::FutureExt::now_or_never(tasks.next()) {}
        }
        while tasks.next().await.is_some() {}
    })
}

fn tenant(clinic: usize) -> String {
    format!("clinic-{clinic:04}")
}

/// A seeded plan: its clinic, id and patient.
#[derive(Clone)]
struct Seeded {
    clinic: usize,
    plan_id: String,
    patient_id: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn for_each_concurrently<T, F, Fut>(
    items: Vec<T>,
    concurrency: usize,
    f: F,
) -> anyhow::Result<()>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut stream = futures::stream::iter(items.into_iter().map(f)).buffer_unordered(concurrency);
    while let Some(result) = stream.next().await {
        result?;
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin_dir = if args.no_build {
        locate_binaries()?
    } else {
        build_binaries(!cfg!(debug_assertions))?
    };
    let started_at = chrono::Utc::now();
    let mut options = Options::new(bin_dir.clone());
    options.dir = args.dir.clone();
    options.log_filter = "warn".into();
    // Batches for the load: each consumer and the outbox relays move more per transaction.
    for svc in Svc::ALL {
        options
            .config
            .insert(svc, serde_json::json!({"database_max_connections": 16}));
    }
    let system = System::start(options).await?;
    eprintln!(
        "system up ({} binaries in {}); data in {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        bin_dir.display(),
        system.dir().display()
    );
    let zone = daytime_zone();
    let publisher = Publisher::connect(&system.nats_url()).await?;
    let within = Duration::from_secs(60);

    // Clinics: rules and delivery settings.
    let t = Instant::now();
    let apis: Arc<Vec<Api>> = Arc::new(
        (0..args.clinics)
            .map(|c| system.api(&tenant(c), Role::Owner))
            .collect::<anyhow::Result<_>>()?,
    );
    for_each_concurrently((0..args.clinics).collect(), 16, |c| {
        let api = apis[c].clone();
        let zone = zone.clone();
        async move {
            for template in ["treatment_plan_follow_up", "hot_enquiry"] {
                retry("EnableRuleTemplate", within, || {
                    let mut s = api.scheduler.clone();
                    async move {
                        s.enable_rule_template(scheduler::EnableRuleTemplateRequest {
                            template_id: template.into(),
                            play: true,
                            owner_staff_id: String::new(),
                        })
                        .await
                    }
                })
                .await?;
            }
            retry("UpdateDeliverySettings", within, || {
                let mut n = api.notifications.clone();
                let zone = zone.clone();
                async move {
                    n.update_delivery_settings(notifications::UpdateDeliverySettingsRequest {
                        settings: Some(notifications::DeliverySettings {
                            time_zone: zone,
                            clinic_name: format!("Clinic {c}"),
                            clinic_phone: "+15125550100".into(),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec![
                                "time_zone".into(),
                                "clinic_name".into(),
                                "clinic_phone".into(),
                            ],
                        }),
                    })
                    .await
                }
            })
            .await?;
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "{} clinics set up in {:.0} s",
        args.clinics,
        t.elapsed().as_secs_f64()
    );

    // Real plans in the first clinics, for GetPlan and the plan journeys.
    let plan_clinics = args.clinics.min(100);
    let real_plans: Arc<Mutex<Vec<(usize, String)>>> = Arc::new(Mutex::new(Vec::new()));
    for_each_concurrently((0..plan_clinics).collect(), 8, |c| {
        let api = apis[c].clone();
        let real_plans = real_plans.clone();
        async move {
            api.set_up_catalogue().await?;
            for k in 0..5 {
                let plan_id = plan_journey(&api, &format!("rp-{c}-{k}")).await?;
                real_plans.lock().await.push((c, plan_id));
            }
            Ok(())
        }
    })
    .await?;

    // Seeded enrollments: plan_sent as the plans service publishes it.
    let t = Instant::now();
    let seeded: Arc<Vec<Seeded>> = Arc::new(
        (0..args.enrollments)
            .map(|i| Seeded {
                clinic: i % args.clinics,
                plan_id: uuid::Uuid::now_v7().to_string(),
                patient_id: format!("sp-{i}"),
            })
            .collect(),
    );
    seed_plans(&publisher, &seeded).await?;
    let scheduler_db = system.db(Svc::Scheduler).await?;
    let cases_db = system.db(Svc::Cases).await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let (mut enrolled, mut cased) = (0_i64, 0_i64);
    while Instant::now() < deadline {
        enrolled = sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE state = 'active'")
            .fetch_one(&scheduler_db)
            .await
            .unwrap_or(0);
        cased = sqlx::query_scalar("SELECT count(*) FROM cases")
            .fetch_one(&cases_db)
            .await
            .unwrap_or(0);
        if enrolled >= args.enrollments as i64 && cased >= args.enrollments as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "seeded {} plan_sent in {:.0} s: {enrolled} active enrollments, {cased} cases",
        args.enrollments,
        t.elapsed().as_secs_f64()
    );
    if enrolled < args.enrollments as i64 {
        bail!(
            "the scheduler enrolled {enrolled} of {} seeded plans within 30 minutes",
            args.enrollments
        );
    }
    // The seed's own cascade (cases' status events to the scheduler, enrollment_started to cases, ...)
    // settles before the load starts, so the load's figures are the load's: no event waiting in any
    // service's outbox and none in any durable consumer.
    let mut outboxes = Vec::new();
    for svc in Svc::ALL {
        outboxes.push(system.db(svc).await?);
    }
    let settling = Instant::now();
    let mut left = u64::MAX;
    while settling.elapsed() < Duration::from_secs(900) {
        let mut unpublished = 0_i64;
        for db in &outboxes {
            unpublished += sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            )
            .fetch_one(db)
            .await
            .unwrap_or(1);
        }
        left = consumer_backlog(&publisher).await.values().sum::<u64>()
            + u64::try_from(unpublished).unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "the seed's events settled in {:.0} s (backlog {left})",
        settling.elapsed().as_secs_f64()
    );
    if left > 0 {
        bail!("{left} events of the seed were still queued after 15 minutes");
    }

    // Portal links of the seeded plans, as plans would have signed them.
    let beacon_bodies: Arc<Vec<String>> = Arc::new(
        seeded
            .iter()
            .map(|s| {
                let token = system.portal_token(&tenant(s.clinic), &s.plan_id, &s.patient_id)?;
                Ok(format!(
                    "{{\"token\":\"{token}\",\"session_id\":\"load-{}\",\"plan_id\":\"{}\",\"events\":[",
                    s.patient_id, s.plan_id
                ))
            })
            .collect::<anyhow::Result<_>>()?,
    );

    // The load.
    let duration = Duration::from_secs(args.duration_secs);
    let pids: BTreeMap<Svc, u32> = Svc::ALL
        .iter()
        .filter_map(|svc| system.pid(*svc).map(|pid| (*svc, pid)))
        .collect();
    let nats_pid = system.nats_pid();
    let postgres_pid = system.postgres_pid();
    let cpu_before = cpu_snapshot(&pids, nats_pid, postgres_pid);
    let load_start = load_average();
    eprintln!(
        "load: {} beacons/s, {} clinic events/s, {} calls/s per main RPC, {} plan journeys/s for {} s",
        args.beacon_rate, args.event_rate, args.rpc_rate, args.journey_rate, args.duration_secs
    );
    let load_started = Instant::now();

    let beacons = Beacons::new(system.http_addr(Svc::Engagement).context("beacons")?);
    let beacon_measure = Measure::new("engagement POST /v1/beacons (HTTP)");
    let seq = Arc::new(AtomicU64::new(0));
    let beacon_task = {
        let beacons = beacons.clone();
        let bodies = beacon_bodies.clone();
        let seq = seq.clone();
        open_loop(
            args.beacon_rate,
            duration,
            2048,
            beacon_measure.clone(),
            move |i| {
                let beacons = beacons.clone();
                let n = bodies.len().max(1);
                let prefix = bodies[(i as usize * 7919) % n].clone();
                let k = seq.fetch_add(1, Ordering::Relaxed);
                async move {
                    let kind = if i < n as u64 { "open" } else { "heartbeat" };
                    let body = if kind == "open" {
                        format!("{prefix}{{\"id\":\"e{k}\",\"kind\":\"open\"}}]}}")
                    } else {
                        format!(
                            "{prefix}{{\"id\":\"e{k}\",\"kind\":\"heartbeat\",\"visible_ms\":5000}}]}}"
                        )
                    };
                    match beacons.post_raw(body.into()).await {
                        Ok(202) => Ok(()),
                        Ok(status) => Err(format!("HTTP {status}")),
                        Err(err) => Err(err.root_cause().to_string().chars().take(60).collect()),
                    }
                }
            },
        )
    };

    // Clinic events, with the hot enquiries' publish times kept for the end-to-end latency.
    let enquiries: Arc<std::sync::Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let event_measure = Measure::new("clinic events published (PubAck)");
    let event_task = {
        let publisher = publisher.clone();
        let seeded = seeded.clone();
        let enquiries = enquiries.clone();
        let zone = zone.clone();
        open_loop(
            args.event_rate,
            duration,
            512,
            event_measure.clone(),
            move |i| {
                let publisher = publisher.clone();
                let seeded = seeded.clone();
                let enquiries = enquiries.clone();
                let zone = zone.clone();
                async move {
                    publish_clinic_event(&publisher, &seeded, &enquiries, &zone, i)
                        .await
                        .map_err(|e| e.to_string().chars().take(60).collect())
                }
            },
        )
    };

    // Each service's main read, and plan journeys.
    let real: Arc<Vec<(usize, String)>> = Arc::new(real_plans.lock().await.clone());
    let rpc = |name: &str| Measure::new(name);
    let measures = [
        rpc("plans GetPlan"),
        rpc("cases ListFollowUpQueue"),
        rpc("engagement GetPlanEngagement"),
        rpc("scheduler ListEnrollments"),
        rpc("notifications ListMessages"),
        rpc("plans journey (CreatePlan + CreatePlanItem + SendPlan)"),
    ];
    let mut rpc_tasks = Vec::new();
    for (k, measure) in measures.iter().enumerate() {
        let apis = apis.clone();
        let real = real.clone();
        let seeded = seeded.clone();
        let rate = if k == 5 {
            args.journey_rate
        } else {
            args.rpc_rate
        };
        rpc_tasks.push(open_loop(rate, duration, 256, measure.clone(), move |i| {
            let apis = apis.clone();
            let real = real.clone();
            let seeded = seeded.clone();
            async move {
                let mut rng = rand::rngs::OsRng;
                match k {
                    0 => {
                        let Some((c, plan_id)) =
                            real.get(rng.gen_range(0..real.len().max(1))).cloned()
                        else {
                            return Err("no plan".into());
                        };
                        let mut p = apis[c].plans.clone();
                        p.get_plan(plans::GetPlanRequest {
                            plan_id,
                            plan_version: 0,
                        })
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?}", s.code()))
                    }
                    1 => {
                        let mut c = apis[rng.gen_range(0..apis.len())].cases.clone();
                        c.list_follow_up_queue(cases::ListFollowUpQueueRequest {
                            page_size: 20,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?}", s.code()))
                    }
                    2 => {
                        let s = &seeded[rng.gen_range(0..seeded.len())];
                        let mut e = apis[s.clinic].engagement.clone();
                        e.get_plan_engagement(engagement::GetPlanEngagementRequest {
                            plan_id: s.plan_id.clone(),
                        })
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?}", s.code()))
                    }
                    3 => {
                        let mut s = apis[rng.gen_range(0..apis.len())].scheduler.clone();
                        s.list_enrollments(scheduler::ListEnrollmentsRequest {
                            page_size: 20,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?}", s.code()))
                    }
                    4 => {
                        let mut n = apis[rng.gen_range(0..apis.len())].notifications.clone();
                        n.list_messages(notifications::ListMessagesRequest {
                            page_size: 20,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?}", s.code()))
                    }
                    _ => {
                        let Some((c, _)) = real.get(rng.gen_range(0..real.len().max(1))).cloned()
                        else {
                            return Err("no plan".into());
                        };
                        plan_journey(&apis[c], &format!("lj-{i}"))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string().chars().take(60).collect())
                    }
                }
            }
        }));
    }

    // Memory and load average every 5 s.
    let samples: Arc<std::sync::Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let samples = samples.clone();
        let pids = pids.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                let rss: BTreeMap<Svc, u64> = pids
                    .iter()
                    .filter_map(|(svc, pid)| rss_kib(*pid).map(|k| (*svc, k)))
                    .collect();
                if let Ok(mut s) = samples.lock() {
                    s.push((start.elapsed().as_secs_f64(), rss, load_average()));
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };

    beacon_task.await?;
    event_task.await?;
    for task in rpc_tasks {
        task.await?;
    }
    let load_elapsed = load_started.elapsed();
    let cpu_after = cpu_snapshot(&pids, nats_pid, postgres_pid);
    let load_end = load_average();
    sampler.abort();
    let rss_end: BTreeMap<Svc, u64> = pids
        .iter()
        .filter_map(|(svc, pid)| rss_kib(*pid).map(|k| (*svc, k)))
        .collect();
    let nats_rss = nats_pid.and_then(rss_kib);
    let backlog_end = consumer_backlog(&publisher).await;
    eprintln!(
        "load done in {:.0} s; consumer backlog {}",
        load_elapsed.as_secs_f64(),
        backlog_end.values().sum::<u64>()
    );

    // Drain: the backlog to zero, and the hot enquiries' replies, for at most 10 minutes.
    let drain_started = Instant::now();
    let mut drained = None;
    while drain_started.elapsed() < Duration::from_secs(600) {
        if consumer_backlog(&publisher).await.values().sum::<u64>() == 0 {
            drained = Some(drain_started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hot = hot_latency(&system, &enquiries);
    let enrolled_end: i64 = sqlx::query_scalar("SELECT count(*) FROM enrollments")
        .fetch_one(&scheduler_db)
        .await
        .unwrap_or(0);

    // The summary.
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "## Load run {} ({} s)",
        started_at.format("%Y-%m-%d %H:%M UTC"),
        args.duration_secs
    ));
    line(String::new());
    line(format!(
        "Command: `{}`; {} binaries; machine {}; load average (1/5/15 min) at the start {}, at the end {}, highest 1-min sample during the run {:.1}.",
        std::env::args().collect::<Vec<_>>().join(" "),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        machine(),
        fmt_load(load_start),
        fmt_load(load_end),
        samples
            .lock()
            .map(|s| s
                .iter()
                .filter_map(|x| x.2.map(|l| l.0))
                .fold(0.0, f64::max))
            .unwrap_or_default()
    ));
    line(String::new());
    line(format!(
        "- Before the load: {} clinics (rules and settings), {} `plan_sent` seeded → {} enrollments ({} at the end, with the plans the journeys sent and the enquiries).",
        args.clinics, args.enrollments, enrolled, enrolled_end
    ));
    line(format!("- {}", beacon_measure.line(load_elapsed)));
    line(format!("- {}", event_measure.line(load_elapsed)));
    for measure in &measures {
        line(format!("- {}", measure.line(load_elapsed)));
    }
    line(format!(
        "- **Hot trigger** (`enquiry.created` published → SMS at the provider): {hot}"
    ));
    line(format!(
        "- Consumer backlog when the load stopped: {} events ({}); drained {}.",
        backlog_end.values().sum::<u64>(),
        backlog_end
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        drained.map_or("not within 10 minutes".into(), |d| format!(
            "{:.0} s later",
            d.as_secs_f64()
        ))
    ));
    line(format!(
        "- **RSS at the end**: {}; nats-server {}.",
        Svc::ALL
            .iter()
            .map(|svc| format!(
                "{svc} {}",
                rss_end
                    .get(svc)
                    .map_or("?".into(), |k| format!("{:.0} MB", *k as f64 / 1024.0))
            ))
            .collect::<Vec<_>>()
            .join(", "),
        nats_rss.map_or("?".into(), |k| format!("{:.0} MB", k as f64 / 1024.0))
    ));
    line(format!(
        "- CPU cores busy during the load (of 2): {}.",
        cpu_report(&cpu_before, &cpu_after, load_elapsed)
    ));
    println!("{out}");
    if let Some(path) = &args.summary {
        std::fs::write(path, &out)?;
    }
    std::fs::write(system.dir().join("summary.md"), &out)?;
    system.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}

/// Seconds into the load, RSS per service (KiB), load averages.
type Sample = (f64, BTreeMap<Svc, u64>, Option<LoadAverage>);
type LoadAverage = (f64, f64, f64);

fn fmt_load(load: Option<(f64, f64, f64)>) -> String {
    load.map_or("?".into(), |(a, b, c)| format!("{a:.1}/{b:.1}/{c:.1}"))
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib / 1024.0 / 1024.0)
        });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem}")
}

/// CreatePlan, CreatePlanItem, SendPlan (no retries: a failure counts).
async fn plan_journey(api: &Api, patient_id: &str) -> anyhow::Result<String> {
    let mut p = api.plans.clone();
    let plan = p
        .create_plan(plans::CreatePlanRequest {
            plan: Some(plans::Plan {
                patient_id: patient_id.into(),
                title: "Crown".into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .plan
        .context("no plan")?;
    p.create_plan_item(plans::CreatePlanItemRequest {
        plan_id: plan.plan_id.clone(),
        item: Some(plans::PlanItem {
            code: "D2740".into(),
            visit: 1,
            practitioner_id: "dr-load".into(),
            ..Default::default()
        }),
    })
    .await?;
    p.send_plan(plans::SendPlanRequest {
        plan_id: plan.plan_id.clone(),
        sections: vec![
            PortalSection::Cover as i32,
            PortalSection::TreatmentDetails as i32,
        ],
        delivery_channel: Channel::Sms as i32,
        ..Default::default()
    })
    .await?;
    Ok(plan.plan_id)
}

/// Publishes a `plan_sent` for each seeded plan, 1,000 acknowledgements in flight.
async fn seed_plans(publisher: &Publisher, seeded: &[Seeded]) -> anyhow::Result<()> {
    let js = publisher.jetstream().clone();
    let mut acks = futures::stream::FuturesUnordered::new();
    for s in seeded {
        let t = tenant(s.clinic);
        let event = ev::PlanSent {
            event_id: new_event_id().to_string(),
            tenant_id: t.clone(),
            occurred_at: Some(now_timestamp()),
            plan_id: s.plan_id.clone(),
            plan_version: 1,
            patient_id: s.patient_id.clone(),
            title: "Implant and crown".into(),
            value: Some(Money {
                amount_minor: 350_000,
                currency: "USD".into(),
            }),
            sent_time: Some(now_timestamp()),
            send_count: 1,
            sent_by_staff_id: "staff-owner".into(),
            sections: vec![
                PortalSection::Cover as i32,
                PortalSection::TreatmentDetails as i32,
            ],
            portal_url: format!("https://portal.invalid/p/{}", s.plan_id),
            visit_count: 3,
            delivery_channel: Channel::Sms as i32,
            ..Default::default()
        };
        let subject = <ev::PlanSent as followup_proto::subjects::Event>::KIND.subject(&t)?;
        let outgoing =
            followup_platform::event::OutgoingEvent::new("plans", subject.clone(), &event)?;
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &outgoing.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(outgoing.payload.into())
            .headers(headers)
            .message_id(outgoing.event_id.to_string());
        let ack = js
            .send_publish(subject, publish)
            .await
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        acks.push(std::future::IntoFuture::into_future(ack));
        while acks.len() >= 1000 {
            if let Some(ack) = acks.next().await {
                ack.map_err(|e| anyhow::anyhow!("PubAck: {e}"))?;
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack.map_err(|e| anyhow::anyhow!("PubAck: {e}"))?;
    }
    Ok(())
}

/// One clinic event of the mix; enquiries keep their publish time under the enquirer's phone.
async fn publish_clinic_event(
    publisher: &Publisher,
    seeded: &[Seeded],
    enquiries: &std::sync::Mutex<HashMap<String, SystemTime>>,
    zone: &str,
    i: u64,
) -> anyhow::Result<()> {
    let mut rng = rand::rngs::OsRng;
    let s = &seeded[rng.gen_range(0..seeded.len())];
    let t = tenant(s.clinic);
    let header = || (new_event_id().to_string(), t.clone(), Some(now_timestamp()));
    let appointment = || {
        Some(ev::Appointment {
            appointment_id: format!("a-{}", s.patient_id),
            patient_id: s.patient_id.clone(),
            slot: Some(Slot {
                start_time: Some(timestamp(chrono::Utc::now() + chrono::Duration::days(3))),
                duration: Some(prost_types::Duration {
                    seconds: 1800,
                    nanos: 0,
                }),
                practitioner_id: "dr-load".into(),
                location_id: String::new(),
            }),
            plan_id: s.plan_id.clone(),
            ..Default::default()
        })
    };
    let within = Duration::from_secs(30);
    let phone = format!("+1555{:07}", i % 10_000_000);
    match i % 20 {
        // 10%: hot enquiries from people who are not patients yet.
        0 | 10 => {
            let (event_id, tenant_id, occurred_at) = header();
            if let Ok(mut e) = enquiries.lock() {
                e.insert(phone.clone(), SystemTime::now());
            }
            publisher
                .publish(
                    &ev::EnquiryCreated {
                        event_id,
                        tenant_id,
                        occurred_at,
                        enquiry_id: format!("enq-{i}"),
                        contact: Some(ev::DirectContact {
                            given_name: "Enquirer".into(),
                            family_name: format!("E{i}"),
                            phone_e164: phone,
                            email: String::new(),
                            time_zone: zone.into(),
                        }),
                        channel: Channel::Sms as i32,
                        source: "website form".into(),
                        interest: "implants".into(),
                        ..Default::default()
                    },
                    within,
                )
                .await
        }
        // 25%: patient records.
        1 | 2 | 3 | 11 | 12 => {
            let (event_id, tenant_id, occurred_at) = header();
            publisher
                .publish(
                    &ev::PatientUpserted {
                        event_id,
                        tenant_id,
                        occurred_at,
                        patient_id: s.patient_id.clone(),
                        given_name: "Pat".into(),
                        family_name: format!("P{}", s.patient_id),
                        phone_e164: format!("+1556{:07}", i % 10_000_000),
                        time_zone: zone.into(),
                        preferred_channel: Channel::Sms as i32,
                        ..Default::default()
                    },
                    within,
                )
                .await
        }
        // 15%: bookings of seeded plans (the case is booked, its follow-up stops).
        4 | 13 | 14 => {
            let (event_id, tenant_id, occurred_at) = header();
            publisher
                .publish(
                    &ev::AppointmentBooked {
                        event_id,
                        tenant_id,
                        occurred_at,
                        appointment: appointment(),
                        ..Default::default()
                    },
                    within,
                )
                .await
        }
        5 => {
            let (event_id, tenant_id, occurred_at) = header();
            publisher
                .publish(
                    &ev::AppointmentCancelled {
                        event_id,
                        tenant_id,
                        occurred_at,
                        appointment: appointment(),
                        ..Default::default()
                    },
                    within,
                )
                .await
        }
        6 => {
            let (event_id, tenant_id, occurred_at) = header();
            publisher
                .publish(
                    &ev::AppointmentNoShow {
                        event_id,
                        tenant_id,
                        occurred_at,
                        appointment: appointment(),
                    },
                    within,
                )
                .await
        }
        7 => {
            let (event_id, tenant_id, occurred_at) = header();
            publisher
                .publish(
                    &ev::AppointmentAttended {
                        event_id,
                        tenant_id,
                        occurred_at,
                        appointment: appointment(),
                    },
                    within,
                )
                .await
        }
        8 | 15 => {
            let (event_id, tenant_id, occurred_at) = header();
            publisher
                .publish(
                    &ev::InvoiceIssued {
                        event_id,
                        tenant_id,
                        occurred_at,
                        invoice_id: format!("inv-{i}"),
                        patient_id: s.patient_id.clone(),
                        amount: Some(Money {
                            amount_minor: 12_000,
                            currency: "USD".into(),
                        }),
                        issue_date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
                        plan_id: s.plan_id.clone(),
                        ..Default::default()
                    },
                    within,
                )
                .await
        }
        9 | 16 => {
            let (event_id, tenant_id, occurred_at) = header();
            publisher
                .publish(
                    &ev::ConsultationCompleted {
                        event_id,
                        tenant_id,
                        occurred_at,
                        appointment_id: format!("c-{i}"),
                        patient_id: s.patient_id.clone(),
                        practitioner_id: "dr-load".into(),
                        next_visit_booked: true,
                        plan_id: s.plan_id.clone(),
                        ..Default::default()
                    },
                    within,
                )
                .await
        }
        17 | 18 => {
            let (event_id, tenant_id, occurred_at) = header();
            let today = chrono::Utc::now();
            publisher
                .publish(
                    &ev::CareCaseUpserted {
                        event_id,
                        tenant_id,
                        occurred_at,
                        care_case_id: format!("cc-{}", s.patient_id),
                        patient_id: s.patient_id.clone(),
                        name: "Physiotherapy".into(),
                        status: CareCaseStatus::Open as i32,
                        issue_date: today.format("%Y-%m-%d").to_string(),
                        expiry_date: (today + chrono::Duration::days(90))
                            .format("%Y-%m-%d")
                            .to_string(),
                        max_sessions: 6,
                        invoiceable_amount: Some(Money {
                            amount_minor: 60_000,
                            currency: "USD".into(),
                        }),
                        ..Default::default()
                    },
                    within,
                )
                .await
        }
        // 5%: a patient's reply (stops their follow-up).
        _ => {
            let (event_id, tenant_id, occurred_at) = header();
            publisher
                .publish(
                    &ev::MessageReceived {
                        event_id,
                        tenant_id,
                        occurred_at,
                        patient_id: s.patient_id.clone(),
                        channel: Channel::Sms as i32,
                        from: format!("+1556{:07}", i % 10_000_000),
                        to: "+15005550006".into(),
                        text: "Thanks, I will call you tomorrow".into(),
                        provider_message_id: format!("in-{i}"),
                        ..Default::default()
                    },
                    within,
                )
                .await
        }
    }
}

/// Publish → provider latency of the hot enquiries: "N enquiries, M answered, p50, p99, max".
fn hot_latency(
    system: &System,
    enquiries: &std::sync::Mutex<HashMap<String, SystemTime>>,
) -> String {
    let published = enquiries.lock().map(|e| e.clone()).unwrap_or_default();
    let mut first: HashMap<String, SystemTime> = HashMap::new();
    for r in system.sink.received() {
        first.entry(r.to.clone()).or_insert(r.at);
    }
    let mut histogram = match Histogram::<u64>::new_with_bounds(1, 600_000_000, 3) {
        Ok(h) => h,
        Err(_) => return "no histogram".into(),
    };
    let mut answered = 0;
    for (phone, at) in &published {
        if let Some(received) = first.get(phone)
            && let Ok(latency) = received.duration_since(*at)
        {
            answered += 1;
            let _ = histogram.record((latency.as_micros() as u64).max(1));
        }
    }
    format!(
        "{} enquiries, {answered} answered; p50 {:.0} ms, **p99 {:.0} ms**, max {:.0} ms",
        published.len(),
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0
    )
}

/// Pending messages of every durable consumer (not yet delivered to it).
async fn consumer_backlog(publisher: &Publisher) -> BTreeMap<String, u64> {
    let mut backlog = BTreeMap::new();
    for stream in ["CLINIC", "FOLLOWUP", "BEACONS"] {
        let Ok(stream) = publisher.jetstream().get_stream(stream).await else {
            continue;
        };
        let mut consumers = stream.consumers();
        while let Some(Ok(info)) = consumers.next().await {
            backlog.insert(
                info.name.clone(),
                info.num_pending + info.num_ack_pending as u64,
            );
        }
    }
    backlog
}

/// CPU seconds (user + system) per process, and of PostgreSQL with all its backends, and the machine.
struct Cpu {
    services: BTreeMap<Svc, f64>,
    nats: f64,
    postgres: f64,
    me: f64,
    machine: f64,
}

fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The postmaster and every process whose parent it is (backends, background workers).
fn postgres_cpu(postmaster: u32) -> f64 {
    let mut total = cpu_secs(postmaster);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                });
            if parent == Some(postmaster) {
                total += cpu_secs(pid);
            }
        }
    }
    total
}

fn machine_busy_secs() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let values: Vec<f64> = stat
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let idle = values.get(3)? + values.get(4)?;
            Some((values.iter().sum::<f64>() - idle) / 100.0)
        })
        .unwrap_or(0.0)
}

fn cpu_snapshot(pids: &BTreeMap<Svc, u32>, nats: Option<u32>, postgres: Option<u32>) -> Cpu {
    Cpu {
        services: pids.iter().map(|(s, p)| (*s, cpu_secs(*p))).collect(),
        nats: nats.map(cpu_secs).unwrap_or_default(),
        postgres: postgres.map(postgres_cpu).unwrap_or_default(),
        me: cpu_secs(std::process::id()),
        machine: machine_busy_secs(),
    }
}

fn cpu_report(before: &Cpu, after: &Cpu, elapsed: Duration) -> String {
    let per = |a: f64, b: f64| (b - a) / elapsed.as_secs_f64();
    let mut parts: Vec<String> = Svc::ALL
        .iter()
        .map(|svc| {
            format!(
                "{svc} {:.2}",
                per(
                    before.services.get(svc).copied().unwrap_or_default(),
                    after.services.get(svc).copied().unwrap_or_default()
                )
            )
        })
        .collect();
    parts.push(format!("nats-server {:.2}", per(before.nats, after.nats)));
    parts.push(format!(
        "PostgreSQL {:.2}",
        per(before.postgres, after.postgres)
    ));
    parts.push(format!("load generator {:.2}", per(before.me, after.me)));
    parts.push(format!(
        "whole machine {:.2} (other work on it included)",
        per(before.machine, after.machine)
    ));
    parts.join(", ")
}
