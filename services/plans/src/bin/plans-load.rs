//! Load generator for the plans service: the whole plan journey as clinics drive it, and the reads
//! staff screens make, against a running service (e.g. `followup dev`, or the release binary).
//!
//! ```sh
//! target/release/plans-load --addr http://127.0.0.1:50051 --staff-key .followup/keys/staff.pem
//! ```
//!
//! Phase 1 (write): `--concurrency` workers each loop over the journey: CreatePlan, three CreatePlanItem
//! (extraction → implant → crown with an override), SendPlan, ApprovePlan, three CompletePlanItem (the
//! last auto-completes the plan); 9 RPCs and 7 outbox events per journey.
//! Phase 2 (read): the same workers loop over GetPlan (a 3-item plan with its tree and totals) and
//! ListPlans (a page of 50). Each phase runs `--duration-secs`; latencies are per RPC, closed loop.
//! Data goes to a fresh clinic (`bench-<time>`), so runs never mix.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use followup_platform::auth::{Role, Signer};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::plans::v1 as pb;
use followup_proto::followup::plans::v1::catalog_service_client::CatalogServiceClient;
use followup_proto::followup::plans::v1::plans_service_client::PlansServiceClient;
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Load generator for the plans service (plan journeys, then reads)")]
struct Args {
    /// The plans service's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The Ed25519 private key (PEM) that signs staff tokens the service trusts.
    #[arg(long, default_value = ".followup/keys/staff.pem")]
    staff_key: PathBuf,
    /// Concurrent workers (each one request in flight).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// gRPC connections shared by the workers (HTTP/2 multiplexes requests on each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

type Latencies = BTreeMap<&'static str, Vec<u32>>;

struct Client {
    plans: PlansServiceClient<Channel>,
    token: String,
}

impl Client {
    fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// Times one call into `out`.
async fn timed<T, F>(out: &mut Latencies, name: &'static str, call: F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    let answer = call.await;
    let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
    out.entry(name).or_default().push(micros);
    Ok(answer
        .map_err(|s| anyhow::anyhow!("{name}: {:?} {}", s.code(), s.message()))?
        .into_inner())
}

fn usd(amount_minor: i64) -> common::Money {
    common::Money {
        amount_minor,
        currency: "USD".into(),
    }
}

fn item(code: &str, visit: i32, after: Option<String>) -> pb::PlanItem {
    pb::PlanItem {
        code: code.into(),
        tooth: Some(common::Tooth {
            numbering: common::ToothNumbering::Universal as i32,
            number: "19".into(),
            surfaces: String::new(),
        }),
        practitioner_id: "dr-bench".into(),
        visit,
        depends_on_item_ids: after.into_iter().collect(),
        ..Default::default()
    }
}

/// One plan journey; returns the plan id.
async fn journey(client: &Client, n: u64, out: &mut Latencies) -> anyhow::Result<String> {
    let mut plans = client.plans.clone();
    let plan = timed(
        out,
        "CreatePlan",
        plans.create_plan(client.req(pb::CreatePlanRequest {
            plan: Some(pb::Plan {
                patient_id: format!("pat-{n}"),
                title: "Phase 1: restorations".into(),
                ..Default::default()
            }),
        })),
    )
    .await?
    .plan
    .context("no plan")?;
    let mut previous: Option<String> = None;
    let mut ids = Vec::new();
    for (code, visit) in [("D7140", 1), ("D6010", 2), ("D6065", 3)] {
        let mut new_item = item(code, visit, previous.clone());
        if code == "D6065" {
            new_item.price = Some(usd(135_000));
            new_item.price_override_reason = "10% family discount".into();
        }
        let created = timed(
            out,
            "CreatePlanItem",
            plans.create_plan_item(client.req(pb::CreatePlanItemRequest {
                plan_id: plan.plan_id.clone(),
                item: Some(new_item),
            })),
        )
        .await?
        .item
        .context("no item")?;
        previous = Some(created.item_id.clone());
        ids.push(created.item_id);
    }
    timed(
        out,
        "SendPlan",
        plans.send_plan(client.req(pb::SendPlanRequest {
            plan_id: plan.plan_id.clone(),
            ..Default::default()
        })),
    )
    .await?;
    timed(
        out,
        "ApprovePlan",
        plans.approve_plan(client.req(pb::ApprovePlanRequest {
            plan_id: plan.plan_id.clone(),
            plan_version: 0,
        })),
    )
    .await?;
    for id in ids {
        timed(
            out,
            "CompletePlanItem",
            plans.complete_plan_item(client.req(pb::CompletePlanItemRequest {
                plan_id: plan.plan_id.clone(),
                item_id: id,
                complete_time: None,
            })),
        )
        .await?;
    }
    Ok(plan.plan_id)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

fn report(phase: &str, elapsed: Duration, units: (&str, u64), latencies: &mut Latencies) {
    let calls: usize = latencies.values().map(Vec::len).sum();
    let secs = elapsed.as_secs_f64();
    println!(
        "{phase}: {:.0} {}/s, {:.0} RPC/s over {:.1} s",
        units.1 as f64 / secs,
        units.0,
        calls as f64 / secs,
        secs
    );
    for (name, values) in latencies.iter_mut() {
        values.sort_unstable();
        println!(
            "  {name:<18} {:>7} calls  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            values.len(),
            percentile(values, 50.0),
            percentile(values, 99.0),
            percentile(values, 100.0)
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pem = std::fs::read_to_string(&args.staff_key)
        .with_context(|| format!("reading {}", args.staff_key.display()))?;
    let tenant = format!("bench-{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let token = Signer::from_pem(&pem)?.staff_token(
        &tenant,
        "bench",
        Role::Owner,
        "followup",
        Duration::from_secs(4 * 3600),
    )?;
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(args.addr.clone())?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", args.addr))?,
        );
    }
    let client_for = |i: usize| Client {
        plans: PlansServiceClient::new(channels[i % channels.len()].clone()),
        token: token.clone(),
    };

    // The clinic's catalogue: three codes from the master list, a schedule with their fees.
    let admin = client_for(0);
    let mut catalog = CatalogServiceClient::new(channels[0].clone());
    catalog
        .copy_master_codes(admin.req(pb::CopyMasterCodesRequest {
            codes: vec!["D7140".into(), "D6010".into(), "D6065".into()],
            ..Default::default()
        }))
        .await?;
    let schedule = catalog
        .create_fee_schedule(admin.req(pb::CreateFeeScheduleRequest {
            fee_schedule: Some(pb::FeeSchedule {
                name: "Standard".into(),
                currency: "USD".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .fee_schedule
        .context("no schedule")?;
    catalog
        .set_fees(
            admin.req(pb::SetFeesRequest {
                fee_schedule_id: schedule.fee_schedule_id,
                fees: [("D7140", 20_000), ("D6010", 200_000), ("D6065", 150_000)]
                    .iter()
                    .map(|(code, amount)| pb::Fee {
                        code: (*code).into(),
                        amount: Some(usd(*amount)),
                    })
                    .collect(),
                remove_codes: vec![],
            }),
        )
        .await?;
    println!(
        "plans-load: {} workers, {} connections, {} s per phase, clinic {tenant}, {}",
        args.concurrency, args.connections, args.duration_secs, args.addr
    );

    // Phase 1: journeys.
    let duration = Duration::from_secs(args.duration_secs);
    let plan_ids = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = client_for(w);
        let plan_ids = plan_ids.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Latencies::new();
            let mut done = 0u64;
            let mut n = (w as u64) << 32;
            while started.elapsed() < duration {
                n += 1;
                let id = journey(&client, n, &mut out).await?;
                plan_ids.lock().await.push(id);
                done += 1;
            }
            anyhow::Ok((out, done))
        }));
    }
    let mut latencies = Latencies::new();
    let mut journeys = 0;
    for worker in workers {
        let (out, done) = worker.await??;
        journeys += done;
        for (name, values) in out {
            latencies.entry(name).or_default().extend(values);
        }
    }
    report(
        "write",
        started.elapsed(),
        ("journeys", journeys),
        &mut latencies,
    );

    // Phase 2: reads.
    let ids = Arc::new(plan_ids.lock().await.clone());
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = client_for(w);
        let ids = ids.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Latencies::new();
            let mut reads = 0u64;
            let mut plans = client.plans.clone();
            let mut i = w;
            while started.elapsed() < duration {
                i = i.wrapping_mul(31).wrapping_add(7);
                let id = ids.get(i % ids.len().max(1)).cloned().unwrap_or_default();
                timed(
                    &mut out,
                    "GetPlan",
                    plans.get_plan(client.req(pb::GetPlanRequest {
                        plan_id: id,
                        plan_version: 0,
                    })),
                )
                .await?;
                timed(
                    &mut out,
                    "ListPlans(50)",
                    plans.list_plans(client.req(pb::ListPlansRequest {
                        page_size: 50,
                        ..Default::default()
                    })),
                )
                .await?;
                reads += 2;
            }
            anyhow::Ok((out, reads))
        }));
    }
    let mut latencies = Latencies::new();
    let mut reads = 0;
    for worker in workers {
        let (out, done) = worker.await??;
        reads += done;
        for (name, values) in out {
            latencies.entry(name).or_default().extend(values);
        }
    }
    report("read", started.elapsed(), ("reads", reads), &mut latencies);
    Ok(())
}
