//! The engagement benchmark: a load generator in its own process, against the real service binary, a
//! private nats-server and a fresh database on the local PostgreSQL, all on this machine.
//!
//! ```sh
//! cargo build --release -p followup-engagement
//! target/release/engagement-load            # --help for the knobs
//! ```
//!
//! Phases (each `--duration-secs`): warm-up (every link posts once, so tokens are verified and cached as
//! in a page's first beacon); ingest at max rate, one event per request; ingest at a fixed rate (latency
//! measured from the intended send time, so queueing counts); ingest of 10-event requests; the raw limit
//! (async JetStream publish of the same payloads from this process, to a stream with BEACONS' settings);
//! aggregation lag at a fixed rate (probe beacons for fresh plans, polled over gRPC until viewed).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use clap::Parser;
use followup_platform::auth::{KeyPair, PORTAL_AUDIENCE, PortalClaims, Role, Signer};
use followup_platform::event::now_timestamp;
use followup_proto::followup::engagement::v1::BatchGetPlanEngagementsRequest;
use followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient;
use followup_proto::followup::events::v1::{BeaconBatch, BeaconEvent, BeaconKind};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

#[derive(Parser, Clone)]
#[command(about = "Load generator for the engagement service's beacon ingest and aggregation")]
struct Args {
    /// PostgreSQL admin URL; a fresh database is created on it and dropped at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_database_url: String,
    /// The service binary (default: followup-engagement beside this one).
    #[arg(long)]
    service_bin: Option<PathBuf>,
    /// The nats-server binary.
    #[arg(long, default_value = "nats-server")]
    nats_server: String,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// HTTP/1.1 keep-alive connections of the closed-loop and fixed-rate phases.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Requests per second of the fixed-rate latency phase.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Beacons per second of the aggregation-lag phase.
    #[arg(long, default_value_t = 10_000)]
    lag_rate: u64,
    /// Distinct portal links (one plan and one page view each).
    #[arg(long, default_value_t = 50_000)]
    links: usize,
    /// Publishes in flight in the raw phase.
    #[arg(long, default_value_t = 1000)]
    raw_in_flight: usize,
    /// Only measure the aggregator: publish this many one-event batches straight to BEACONS, then time
    /// how long the aggregator takes to fold them.
    #[arg(long)]
    aggregate_only: Option<u64>,
    /// Run the service, nats-server, this generator and the bench database's PostgreSQL backends at this
    /// nice value (e.g. -10), so that other work on a shared machine disturbs the figures less.
    #[arg(long, allow_hyphen_values = true)]
    renice: Option<i32>,
    /// Extra TOML lines for the service's configuration (e.g. `[consumer]` settings).
    #[arg(long)]
    service_config: Option<String>,
}

/// A link's request prefix: `{"token":"…","session_id":"…","events":[`.
struct Link {
    prefix: String,
    plan_id: uuid::Uuid,
}

struct Generator {
    links: Vec<Link>,
    seq: AtomicU64,
}

impl Generator {
    fn body(&self, events: usize) -> Bytes {
        let k = self.seq.fetch_add(1, Ordering::Relaxed);
        let link = &self.links[(k % self.links.len() as u64) as usize];
        let mut body = String::with_capacity(link.prefix.len() + 80 * events);
        body.push_str(&link.prefix);
        for j in 0..events {
            if j > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                "{{\"id\":\"e{k}-{j}\",\"kind\":\"heartbeat\",\"visible_ms\":1000}}"
            ));
        }
        body.push_str("]}");
        Bytes::from(body)
    }
}

fn sign_link(signer: &Signer, tenant: &str, plan_id: uuid::Uuid) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(signer.sign(&PortalClaims {
        tenant: tenant.into(),
        plan_id: plan_id.to_string(),
        plan_version: 1,
        patient_id: format!("patient-{}", plan_id.simple()),
        jti: uuid::Uuid::now_v7().to_string(),
        aud: PORTAL_AUDIENCE.into(),
        iat: now,
        exp: now + 24 * 3600,
    })?)
}

fn links(signer: &Signer, n: usize) -> anyhow::Result<Vec<Link>> {
    (0..n)
        .map(|i| {
            let plan_id = uuid::Uuid::now_v7();
            let token = sign_link(signer, "bench", plan_id)?;
            Ok(Link {
                prefix: format!("{{\"token\":\"{token}\",\"session_id\":\"s{i}\",\"events\":["),
                plan_id,
            })
        })
        .collect()
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn post(sender: &mut Sender, host: &str, body: Bytes) -> anyhow::Result<u16> {
    sender.ready().await?;
    let request = hyper::Request::post("/v1/beacons")
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "text/plain;charset=UTF-8")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// What one phase measured.
struct Outcome {
    accepted: u64,
    refused: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Outcome {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs .. 60 s, 3 significant figures.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// `connections` loops, each posting as soon as its previous answer came (closed loop); or, with `rate`,
/// requests at fixed intended times shared among the connections (open loop, latency from the intended time).
async fn run(
    addr: SocketAddr,
    generator: Arc<Generator>,
    connections: usize,
    duration: Duration,
    events: usize,
    rate: Option<u64>,
) -> anyhow::Result<Outcome> {
    let host = addr.to_string();
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + duration;
    let ticket = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut sender = connect(addr).await?;
        let (generator, ticket, host) = (generator.clone(), ticket.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut accepted, mut refused) = (0u64, 0u64);
            tokio::time::sleep_until(start.into()).await;
            loop {
                let intended = match rate {
                    Some(rate) => {
                        let k = ticket.fetch_add(1, Ordering::Relaxed);
                        let at = start + Duration::from_secs_f64(k as f64 / rate as f64);
                        if at >= end {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    }
                };
                match post(&mut sender, &host, generator.body(events)).await {
                    Ok(202) => accepted += 1,
                    Ok(_) => refused += 1,
                    Err(_) => {
                        refused += 1;
                        match connect(addr).await {
                            Ok(fresh) => sender = fresh,
                            Err(_) => break,
                        }
                    }
                }
                let _ = latency.record(intended.elapsed().as_micros().max(1) as u64);
            }
            (accepted, refused, latency)
        }));
    }
    let mut outcome = Outcome {
        accepted: 0,
        refused: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for task in tasks {
        let (accepted, refused, latency) = task.await?;
        outcome.accepted += accepted;
        outcome.refused += refused;
        outcome.latency.add(latency)?;
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

/// The raw limit: the same payloads published straight to JetStream (stream with BEACONS' settings),
/// `in_flight` acks outstanding.
async fn raw_publish(
    js: &async_nats::jetstream::Context,
    duration: Duration,
    in_flight: usize,
) -> anyhow::Result<Outcome> {
    let stream = async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["benchraw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(30),
        max_age: Duration::from_secs(3600),
        ..Default::default()
    };
    js.create_or_update_stream(stream).await?;
    let plan_id = uuid::Uuid::now_v7().to_string();
    let start = Instant::now();
    let end = start + duration;
    let mut pending = FuturesUnordered::new();
    let mut latency = histogram();
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let mut k = 0u64;
    loop {
        while pending.len() < in_flight && Instant::now() < end {
            k += 1;
            let id = format!("{plan_id}:s{}:e{k}-0", k % 50_000);
            let batch = BeaconBatch {
                event_id: id.clone(),
                tenant_id: "bench".into(),
                occurred_at: Some(now_timestamp()),
                plan_id: plan_id.clone(),
                plan_version: 0,
                patient_id: format!("patient-{k}"),
                session_id: format!("s{}", k % 50_000),
                events: vec![BeaconEvent {
                    client_event_id: format!("e{k}-0"),
                    kind: BeaconKind::Heartbeat as i32,
                    section: 0,
                    visible_ms: 1000,
                    client_time: None,
                }],
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", "application/protobuf");
            headers.insert("ce-specversion", "1.0");
            headers.insert("ce-type", "followup.events.v1.BeaconBatch");
            headers.insert("ce-source", "followup/engagement");
            headers.insert("ce-id", id.as_str());
            let publish = PublishMessage::build()
                .payload(batch.encode_to_vec().into())
                .headers(headers)
                .message_id(id);
            let sent_at = Instant::now();
            let ack = js.send_publish("benchraw.bench", publish).await?;
            pending.push(async move { (ack.await, sent_at) });
        }
        match pending.next().await {
            Some((Ok(_), sent_at)) => {
                accepted += 1;
                let _ = latency.record(sent_at.elapsed().as_micros().max(1) as u64);
            }
            Some((Err(_), _)) => refused += 1,
            None => break,
        }
    }
    Ok(Outcome {
        accepted,
        refused,
        elapsed: start.elapsed(),
        latency,
    })
}

/// Aggregation lag: while `rate` beacons/s flow, a probe every 50 ms posts the first beacon of a fresh
/// plan; from its 202 to the moment GetPlanEngagements shows the plan viewed is one lag sample.
async fn lag_probes(
    addr: SocketAddr,
    grpc: SocketAddr,
    staff_token: String,
    probes: Vec<Link>,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let outstanding: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let host = addr.to_string();
    let poster = {
        let outstanding = outstanding.clone();
        tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            let end = Instant::now() + duration;
            for (i, link) in probes.iter().enumerate() {
                if Instant::now() >= end {
                    break;
                }
                let body = format!("{}{{\"id\":\"p{i}\",\"kind\":\"open\"}}]}}", link.prefix);
                if post(&mut sender, &host, Bytes::from(body)).await? == 202 {
                    outstanding
                        .lock()
                        .await
                        .push((link.plan_id.to_string(), Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        })
    };
    let mut client = EngagementServiceClient::connect(format!("http://{grpc}")).await?;
    let mut latency = histogram();
    let deadline = Instant::now() + duration + Duration::from_secs(30);
    loop {
        let ids: Vec<(String, Instant)> = outstanding.lock().await.clone();
        if ids.is_empty() {
            if poster.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if Instant::now() > deadline {
            bail!("{} probes never became visible in the facts", ids.len());
        }
        let mut request = tonic::Request::new(BatchGetPlanEngagementsRequest {
            plan_ids: ids.iter().take(500).map(|(id, _)| id.clone()).collect(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {staff_token}").parse()?);
        let engagements = client
            .batch_get_plan_engagements(request)
            .await?
            .into_inner()
            .engagements;
        let now = Instant::now();
        let seen: std::collections::HashSet<String> = engagements
            .into_iter()
            .filter(|e| e.viewed)
            .map(|e| e.plan_id)
            .collect();
        let mut guard = outstanding.lock().await;
        guard.retain(|(id, accepted_at)| {
            if seen.contains(id) {
                let _ = latency.record(now.duration_since(*accepted_at).as_micros().max(1) as u64);
                false
            } else {
                true
            }
        });
        drop(guard);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    poster.await??;
    Ok(latency)
}

/// CPU seconds a process has used (user + system), from /proc.
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

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
fn machine_busy_secs() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().next()?.to_string();
            let values: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let idle = values.get(3)? + values.get(4)?;
            Some((values.iter().sum::<f64>() - idle) / 100.0)
        })
        .unwrap_or(0.0)
}

struct Cpu {
    service: f64,
    nats: f64,
    me: f64,
    machine: f64,
}

fn cpu_now(service: u32, nats: u32) -> Cpu {
    Cpu {
        service: cpu_secs(service),
        nats: cpu_secs(nats),
        me: cpu_secs(std::process::id()),
        machine: machine_busy_secs(),
    }
}

fn cpu_report(before: &Cpu, after: &Cpu, elapsed: Duration) -> String {
    let per = |a: f64, b: f64| (b - a) / elapsed.as_secs_f64();
    let service = per(before.service, after.service);
    let nats = per(before.nats, after.nats);
    let me = per(before.me, after.me);
    let machine = per(before.machine, after.machine);
    format!(
        "CPU cores busy: service {service:.2}, nats-server {nats:.2}, load generator {me:.2}, rest (PostgreSQL, other) {:.2}; machine {machine:.2} of 2",
        (machine - service - nats - me).max(0.0)
    )
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_ready(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut sender) = connect(addr).await {
            sender.ready().await?;
            let request = hyper::Request::get("/v1/beacon.js")
                .header(hyper::header::HOST, addr.to_string())
                .body(Full::new(Bytes::new()))?;
            if let Ok(response) = sender.send_request(request).await
                && response.status() == 200
            {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the service exited at start: {status}");
        }
        if Instant::now() > deadline {
            bail!("the service did not start within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("engagement-bench-")
        .tempdir()?;
    let duration = Duration::from_secs(args.duration_secs);

    // NATS: a private JetStream server.
    let nats_addr = free_addr()?;
    let mut nats = Command::new(&args.nats_server)
        .args(["-js", "-a", "127.0.0.1", "-p"])
        .arg(nats_addr.port().to_string())
        .arg("-sd")
        .arg(dir.path().join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server")?;
    let nats_url = format!("nats://{nats_addr}");
    let nats_client = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match async_nats::connect(&nats_url).await {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(err) => bail!("nats-server did not start: {err}"),
            }
        }
    };

    // A fresh database.
    let db_name = format!(
        "followup_engagement_bench_{}",
        uuid::Uuid::now_v7().simple()
    );
    followup_platform::db::create_database_if_missing(&args.admin_database_url, &db_name)
        .await
        .context("creating the bench database")?;
    let options: sqlx::postgres::PgConnectOptions = args.admin_database_url.parse()?;
    let database_url = sqlx::ConnectOptions::to_url_lossy(&options.database(&db_name)).to_string();

    let portal = KeyPair::generate()?;
    let staff = KeyPair::generate()?;
    let (grpc, admin, http) = (free_addr()?, free_addr()?, free_addr()?);
    let config = dir.path().join("engagement.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{database_url}\"\nnats_url = \"{nats_url}\"\ngrpc_addr = \"{grpc}\"\n\
             admin_addr = \"{admin}\"\nhttp_addr = \"{http}\"\n\
             portal_public_keys = ['''{}''']\n\n[auth]\njwt_public_keys = ['''{}''']\n\n\
             [log]\nformat = \"json\"\nfilter = \"warn\"\n\n{}\n",
            portal.public_pem.trim(),
            staff.public_pem.trim(),
            args.service_config.as_deref().unwrap_or("")
        ),
    )?;
    let service_bin = match &args.service_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of this binary")?
            .join("followup-engagement"),
    };
    let log = std::fs::File::create(dir.path().join("service.log"))?;
    let mut service = Command::new(&service_bin)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", service_bin.display()))?;
    wait_ready(http, &mut service).await?;
    let service_pid = service.id().unwrap_or(0);
    let nats_pid = nats.id().unwrap_or(0);

    let portal_signer = Signer::from_pem(&portal.private_pem)?;
    let staff_token = Signer::from_pem(&staff.private_pem)?.staff_token(
        "bench",
        "bench",
        Role::System,
        "followup",
        Duration::from_secs(3600),
    )?;
    println!(
        "engagement-load: {} links, {} connections, {} s per phase, machine: {} cores",
        args.links,
        args.connections,
        args.duration_secs,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let generator = Arc::new(Generator {
        links: links(&portal_signer, args.links)?,
        seq: AtomicU64::new(0),
    });
    let renice = |stage: &str| {
        if let Some(nice) = args.renice {
            let n = renice_all(
                nice,
                &[service_pid, nats_pid, std::process::id()],
                &args.admin_database_url,
                &db_name,
            );
            println!("reniced {n} threads and backends to {nice} ({stage})");
        }
    };
    renice("start");

    if let Some(count) = args.aggregate_only {
        let js = followup_platform::jetstream::context(nats_client.clone());
        aggregate_only(&js, &generator, count, service_pid, nats_pid).await?;
        let _ = service.start_kill();
        let _ = nats.start_kill();
        drop_database(&args.admin_database_url, &db_name).await;
        return Ok(());
    }

    // Warm-up: each link's first beacon (signature verified, then cached, as for a real page).
    let warm = generator.links.len() as u64;
    let started = Instant::now();
    {
        let mut tasks = Vec::new();
        let per = warm.div_ceil(args.connections as u64);
        for _ in 0..args.connections {
            let generator = generator.clone();
            let mut sender = connect(http).await?;
            let host = http.to_string();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    let _ = post(&mut sender, &host, generator.body(1)).await;
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
    }
    println!(
        "warm-up: {warm} first beacons in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The service's pool has grown by now: its new backends too.
    renice("after warm-up");

    let mut report = Vec::new();
    let phase = |name: &str| println!("\n== {name}");

    phase("ingest, 1 event per request, closed loop");
    let before = cpu_now(service_pid, nats_pid);
    let max = run(http, generator.clone(), args.connections, duration, 1, None).await?;
    let cpu = cpu_report(&before, &cpu_now(service_pid, nats_pid), max.elapsed);
    let line = format!(
        "ingest (1 event/request, {} connections): {:.0} beacons/s, p50 {:.1} ms, p99 {:.1} ms ({} refused)",
        args.connections,
        max.per_sec(max.accepted),
        max.ms(0.5),
        max.ms(0.99),
        max.refused
    );
    println!("{line}\n{cpu}");
    report.push(line);
    report.push(format!("  {cpu}"));

    phase("ingest at a fixed rate");
    let before = cpu_now(service_pid, nats_pid);
    let fixed = run(
        http,
        generator.clone(),
        args.connections,
        duration,
        1,
        Some(args.rate),
    )
    .await?;
    let cpu = cpu_report(&before, &cpu_now(service_pid, nats_pid), fixed.elapsed);
    let line = format!(
        "ingest at a fixed {} requests/s (1 event each): {:.0} beacons/s, p50 {:.1} ms, p99 {:.1} ms ({} refused)",
        args.rate,
        fixed.per_sec(fixed.accepted),
        fixed.ms(0.5),
        fixed.ms(0.99),
        fixed.refused
    );
    println!("{line}\n{cpu}");
    report.push(line);
    report.push(format!("  {cpu}"));

    phase("ingest, 10 events per request, closed loop");
    let before = cpu_now(service_pid, nats_pid);
    let batched = run(
        http,
        generator.clone(),
        args.connections,
        duration,
        10,
        None,
    )
    .await?;
    let cpu = cpu_report(&before, &cpu_now(service_pid, nats_pid), batched.elapsed);
    let line = format!(
        "ingest batched (10 events/request): {:.0} requests/s = {:.0} beacon events/s, p50 {:.1} ms, p99 {:.1} ms",
        batched.per_sec(batched.accepted),
        batched.per_sec(batched.accepted * 10),
        batched.ms(0.5),
        batched.ms(0.99)
    );
    println!("{line}\n{cpu}");
    report.push(line);
    report.push(format!("  {cpu}"));

    // Let the aggregator catch up before the raw phase, so the two do not share the CPU.
    let js = followup_platform::jetstream::context(nats_client.clone());
    wait_aggregated(&js, Duration::from_secs(300)).await?;

    phase("raw JetStream publish, same payloads");
    let before = cpu_now(service_pid, nats_pid);
    let raw = raw_publish(&js, duration, args.raw_in_flight).await?;
    let cpu = cpu_report(&before, &cpu_now(service_pid, nats_pid), raw.elapsed);
    let line = format!(
        "raw async JetStream publish ({} in flight): {:.0} msgs/s, p50 {:.1} ms, p99 {:.1} ms",
        args.raw_in_flight,
        raw.per_sec(raw.accepted),
        raw.ms(0.5),
        raw.ms(0.99)
    );
    println!("{line}\n{cpu}");
    report.push(line);
    report.push(format!("  {cpu}"));
    let ratio = max.per_sec(max.accepted) / raw.per_sec(raw.accepted).max(1.0);
    let line = format!("ratio ingest / raw: {ratio:.2}");
    println!("{line}");
    report.push(line);

    phase("aggregation lag at a fixed rate");
    let probes = links(&portal_signer, (args.duration_secs as usize) * 20 + 100)?;
    let before = cpu_now(service_pid, nats_pid);
    let lag_started = Instant::now();
    let load = tokio::spawn(run(
        http,
        generator.clone(),
        args.connections.min(128),
        duration,
        1,
        Some(args.lag_rate),
    ));
    let lag = lag_probes(http, grpc, staff_token, probes, duration).await?;
    let load = load.await??;
    let cpu = cpu_report(
        &before,
        &cpu_now(service_pid, nats_pid),
        lag_started.elapsed(),
    );
    let line = format!(
        "aggregation lag at {:.0} beacons/s: p50 {:.0} ms, p99 {:.0} ms ({} probes; ingest p99 {:.1} ms)",
        load.per_sec(load.accepted),
        lag.value_at_quantile(0.5) as f64 / 1000.0,
        lag.value_at_quantile(0.99) as f64 / 1000.0,
        lag.len(),
        load.ms(0.99)
    );
    println!("{line}\n{cpu}");
    report.push(line);
    report.push(format!("  {cpu}"));

    println!("\n== summary\n{}", report.join("\n"));

    let _ = service.start_kill();
    let _ = service.wait().await;
    let _ = nats.start_kill();
    let _ = nats.wait().await;
    drop_database(&args.admin_database_url, &db_name).await;
    Ok(())
}

/// The aggregator alone: `count` one-event batches of the links' plans published straight to BEACONS,
/// then the time the aggregator takes to fold them all.
async fn aggregate_only(
    js: &async_nats::jetstream::Context,
    generator: &Generator,
    count: u64,
    service_pid: u32,
    nats_pid: u32,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let before = cpu_now(service_pid, nats_pid);
    let mut pending = FuturesUnordered::new();
    for k in 0..count {
        let link = &generator.links[(k % generator.links.len() as u64) as usize];
        let session = format!("s{}", k % generator.links.len() as u64);
        let id = format!("{}:{session}:a{k}", link.plan_id);
        let batch = BeaconBatch {
            event_id: id.clone(),
            tenant_id: "bench".into(),
            occurred_at: Some(now_timestamp()),
            plan_id: link.plan_id.to_string(),
            plan_version: 0,
            patient_id: "patient".into(),
            session_id: session,
            events: vec![BeaconEvent {
                client_event_id: format!("a{k}"),
                kind: BeaconKind::Heartbeat as i32,
                section: 0,
                visible_ms: 1000,
                client_time: None,
            }],
        };
        let publish = PublishMessage::build()
            .payload(batch.encode_to_vec().into())
            .message_id(id);
        pending.push(
            js.send_publish("beacons.bench", publish)
                .await?
                .into_future(),
        );
        if pending.len() >= 1000 {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
    println!(
        "published {count} batches in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    wait_aggregated(js, Duration::from_secs(600)).await?;
    // From the first publish: the aggregator folds while the batches are still being published.
    let elapsed = started.elapsed();
    println!(
        "aggregator: {:.0} beacons/s folded ({count} one-event batches, {:.1} s from the first publish)\n{}",
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        cpu_report(&before, &cpu_now(service_pid, nats_pid), elapsed)
    );
    Ok(())
}

/// Sets the nice value of every thread of `pids` and of the PostgreSQL backends serving `db_name`.
fn renice_all(nice: i32, pids: &[u32], admin_url: &str, db_name: &str) -> usize {
    let mut ids: Vec<String> = Vec::new();
    for pid in pids {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            ids.extend(
                tasks
                    .flatten()
                    .map(|t| t.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    // psql is on every machine that runs PostgreSQL; the backends belong to the postgres user.
    if let Ok(out) = std::process::Command::new("psql")
        .args([admin_url, "-qtAc"])
        .arg(format!(
            "SELECT pid FROM pg_stat_activity WHERE datname = '{db_name}'"
        ))
        .output()
    {
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string()),
        );
    }
    let ok = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok { ids.len() } else { 0 }
}

/// Waits until the aggregator's consumer has nothing pending.
async fn wait_aggregated(
    js: &async_nats::jetstream::Context,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let started = Instant::now();
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream(followup_engagement::consumers::DURABLE, "BEACONS")
            .await?;
        let info = consumer.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            println!(
                "aggregator caught up {:.1} s after the ingest phases",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("aggregator still {} behind", info.num_pending);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut conn) = sqlx::ConnectOptions::connect(
        &admin_url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap_or_default(),
    )
    .await
    {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await;
    }
}
