//! The scheduler's load generator (BENCHMARKS.md, "Scheduler"). Measures, in one run:
//!
//! 1. steps fired per second with 1,000,000 pending steps of which 200,000 are due (due → notification
//!    request durable in the outbox), through the service's own firing code on one connection, beside
//!    the bare SQL claim-and-insert of the same batches on an identical database;
//! 2. lateness and "nothing early" for steps falling due at a steady rate while the timer runs;
//! 3. the memory (RSS) of the service binary firing with 100,000 and with 1,000,000 pending steps;
//! 4. the hot trigger: enquiry.created published → notification_requested published, at 100 events/s.
//!
//! Needs a PostgreSQL server it may create databases on (`--database-url`, else
//! FOLLOWUP_TEST_DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres) and `nats-server` on
//! PATH. Run: `cargo run --release -p followup-scheduler --features bench --bin scheduler-bench`
//! (build `followup-scheduler` in release first for the RSS phase: it runs the binary beside this one).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use clap::Parser;
use followup_platform::auth::KeyPair;
use followup_platform::clock::SystemClock;
use followup_platform::config::Sources;
use followup_platform::local::LocalNats;
use followup_platform::service::ServiceConfig;
use followup_proto::followup::events::v1 as ev;
use followup_proto::subjects::Event;
use followup_scheduler::seed::{Seed, seed};
use followup_scheduler::storage::{Store, fire};
use futures::StreamExt;
use prost::Message;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Load generator of the scheduler service")]
struct Args {
    /// An admin URL of the PostgreSQL server the benchmark creates its databases on.
    #[arg(
        long,
        env = "FOLLOWUP_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Pending steps (four per enrollment).
    #[arg(long, default_value_t = 1_000_000)]
    pending: i64,
    /// Of which due at the start.
    #[arg(long, default_value_t = 200_000)]
    due: i64,
    /// Steps claimed per transaction.
    #[arg(long, default_value_t = 1000)]
    batch: i64,
    /// Steps falling due during the lateness phase, and over how many seconds.
    #[arg(long, default_value_t = 100_000)]
    lateness_steps: i64,
    #[arg(long, default_value_t = 20)]
    lateness_seconds: i64,
    /// Hot trigger: enquiries per second, and for how long.
    #[arg(long, default_value_t = 100)]
    hot_rate: u64,
    #[arg(long, default_value_t = 30)]
    hot_seconds: u64,
    /// Phases to run (comma-separated): fire, lateness, rss, hot.
    #[arg(long, value_delimiter = ',', default_value = "fire,lateness,rss,hot")]
    phases: Vec<String>,
    /// The service binary for the RSS phase; default: `followup-scheduler` beside this binary.
    #[arg(long)]
    service_binary: Option<PathBuf>,
}

const TENANT: &str = "bench-clinic";

struct Databases {
    admin_url: String,
    created: Vec<String>,
}

impl Databases {
    async fn create(&mut self, label: &str) -> anyhow::Result<(String, PgPool)> {
        let name = format!("scheduler_bench_{label}_{}", Uuid::now_v7().simple());
        followup_platform::db::create_database_if_missing(&self.admin_url, &name).await?;
        self.created.push(name.clone());
        let options: PgConnectOptions = self.admin_url.parse()?;
        let url = options.database(&name).to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await?;
        followup_platform::db::migrate(&pool, &followup_scheduler::MIGRATOR).await?;
        Ok((url, pool))
    }

    async fn drop_all(&self) {
        let Ok(options) = self.admin_url.parse::<PgConnectOptions>() else {
            return;
        };
        let Ok(mut conn) = options.connect().await else {
            return;
        };
        for name in &self.created {
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
        }
    }
}

fn seed_spec(prefix: &str, pending: i64, due: i64) -> Seed {
    let now = Utc::now();
    Seed {
        tenant: TENANT.into(),
        prefix: prefix.into(),
        enrollments: pending / 4,
        due_enrollments: due,
        due_steps_each: 1,
        due_from: now - chrono::Duration::seconds(60),
        due_to: now - chrono::Duration::seconds(1),
        future_at: now + chrono::Duration::days(7),
    }
}

async fn seeded(
    dbs: &mut Databases,
    label: &str,
    pending: i64,
    due: i64,
) -> anyhow::Result<(String, PgPool)> {
    let (url, pool) = dbs.create(label).await?;
    let started = Instant::now();
    seed(&pool, &seed_spec("", pending, due)).await?;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    eprintln!(
        "  seeded {label}: {pending} pending, {due} due, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((url, pool))
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await?)
}

/// The bare SQL of a claim and its outbox rows: the same claim statement shape, the same number of
/// outbox rows of the same size, nothing else.
async fn bare(pool: &PgPool, batch: i64) -> anyhow::Result<(i64, Duration)> {
    let payload = vec![7u8; 420];
    let headers = serde_json::json!({"Content-Type": "application/protobuf", "ce-type": "followup.events.v1.NotificationRequested"});
    let subject = format!("followup.{TENANT}.scheduler.notification_requested");
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut total = 0i64;
    loop {
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let claimed: Vec<(String, Uuid, i32)> = sqlx::query_as(
            "WITH due AS (
                 SELECT tenant_id, enrollment_id, step_index FROM step_runs
                 WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE step_runs s SET state = 'fired', fired_at = $1 FROM due
             WHERE s.tenant_id = due.tenant_id AND s.enrollment_id = due.enrollment_id AND s.step_index = due.step_index
             RETURNING s.tenant_id, s.enrollment_id, s.step_index",
        )
        .bind(Utc::now())
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            break;
        }
        let n = claimed.len();
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let tenants: Vec<&str> = claimed.iter().map(|c| c.0.as_str()).collect();
        let subjects = vec![subject.as_str(); n];
        let payloads = vec![payload.clone(); n];
        let header_values = vec![headers.clone(); n];
        sqlx::query(
            "INSERT INTO outbox (id, tenant_id, subject, payload, headers)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[])",
        )
        .bind(&ids)
        .bind(&tenants)
        .bind(&subjects)
        .bind(&payloads)
        .bind(&header_values)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        total += n as i64;
    }
    Ok((total, started.elapsed()))
}

/// The service's firing code (what each timer round runs), one connection, until nothing is due.
async fn service_firing(pool: &PgPool, batch: i64) -> anyhow::Result<(i64, Duration)> {
    let store = Store::new(Arc::new(SystemClock));
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut total = 0i64;
    loop {
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        let fired = fire::fire_due(&store, &mut tx, batch).await?;
        tx.commit().await?;
        if fired.claimed == 0 {
            break;
        }
        total += fired.claimed as i64;
    }
    Ok((total, started.elapsed()))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn phase_fire(args: &Args, dbs: &mut Databases) -> anyhow::Result<()> {
    println!(
        "== steps fired: {} pending, {} due, batches of {}",
        args.pending, args.due, args.batch
    );
    let (_, bare_pool) = seeded(dbs, "bare", args.pending, args.due).await?;
    let (_, ours_pool) = seeded(dbs, "fire", args.pending, args.due).await?;
    let (bare_n, bare_t) = bare(&bare_pool, args.batch).await?;
    let bare_rate = bare_n as f64 / bare_t.as_secs_f64();
    println!(
        "bare SQL claim + outbox insert: {bare_n} rows in {:.2} s = {bare_rate:.0} rows/s",
        bare_t.as_secs_f64()
    );
    let (ours_n, ours_t) = service_firing(&ours_pool, args.batch).await?;
    let ours_rate = ours_n as f64 / ours_t.as_secs_f64();
    println!(
        "scheduler firing code: {ours_n} steps in {:.2} s = {ours_rate:.0} steps/s",
        ours_t.as_secs_f64()
    );
    let requests = count(
        &ours_pool,
        "SELECT count(*) FROM outbox WHERE subject LIKE '%.notification_requested'",
    )
    .await?;
    let early = count(
        &ours_pool,
        "SELECT count(*) FROM step_runs WHERE fired_at < due_at",
    )
    .await?;
    let pending = count(
        &ours_pool,
        "SELECT count(*) FROM step_runs WHERE state = 'pending'",
    )
    .await?;
    println!(
        "requests in the outbox {requests}; fired early {early}; still pending (future) {pending}"
    );
    println!("ratio to bare: {:.2}", ours_rate / bare_rate);
    println!(
        "HEADLINE {ours_rate:.0} steps/s (bare SQL {bare_rate:.0} rows/s, ratio {:.2})",
        ours_rate / bare_rate
    );
    bare_pool.close().await;
    ours_pool.close().await;
    Ok(())
}

async fn phase_lateness(args: &Args, dbs: &mut Databases) -> anyhow::Result<()> {
    let per_second = args.lateness_steps / args.lateness_seconds.max(1);
    println!(
        "== lateness: {} steps falling due over {} s ({per_second}/s) beside {} future ones, timer worker with batches of {}",
        args.lateness_steps, args.lateness_seconds, args.pending, args.batch
    );
    let (_, pool) = seeded(dbs, "late", args.pending, 0).await?;
    let now = Utc::now();
    // Far enough ahead that seeding these steps ends before the first falls due: the timer then starts
    // idle, and every step is measured from its due time.
    let start = now + chrono::Duration::seconds(60);
    seed(
        &pool,
        &Seed {
            tenant: TENANT.into(),
            prefix: "late-".into(),
            enrollments: args.lateness_steps,
            due_enrollments: args.lateness_steps,
            due_steps_each: 1,
            due_from: start,
            due_to: start + chrono::Duration::seconds(args.lateness_seconds),
            future_at: now + chrono::Duration::days(7),
        },
    )
    .await?;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    if Utc::now() >= start {
        eprintln!("  warning: seeding outlasted the lead time; the first steps start late");
    }
    let store = Store::new(Arc::new(SystemClock));
    let worker = followup_scheduler::timer::TimerWorker {
        pool: pool.clone(),
        store,
        batch_size: args.batch,
        poll_interval: Duration::from_millis(1000),
        metrics: followup_scheduler::timer::TimerMetrics::register(
            &followup_platform::metrics::Metrics::new("bench"),
        ),
    };
    let shutdown = followup_platform::shutdown::Shutdown::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(args.lateness_seconds as u64 + 180);
    loop {
        let fired = count(
            &pool,
            "SELECT count(*) FROM step_runs WHERE state = 'fired'",
        )
        .await?;
        if fired >= args.lateness_steps || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shutdown.trigger();
    let _ = running.await;
    let mut late: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM fired_at - due_at)::float8 FROM step_runs WHERE state = 'fired'",
    )
    .fetch_all(&pool)
    .await?;
    late.sort_by(|a, b| a.total_cmp(b));
    let early = late.iter().filter(|l| **l < 0.0).count();
    println!(
        "fired {} steps; early {early}; lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (fire time is the claim's clock reading, in its transaction)",
        late.len(),
        percentile(&late, 50.0) * 1000.0,
        percentile(&late, 99.0) * 1000.0,
        late.last().copied().unwrap_or(f64::NAN) * 1000.0
    );
    pool.close().await;
    Ok(())
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn phase_rss(args: &Args, dbs: &mut Databases, nats: &LocalNats) -> anyhow::Result<()> {
    println!("== RSS of the service binary while it fires");
    let binary = match &args.service_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("followup-scheduler"),
    };
    anyhow::ensure!(
        binary.is_file(),
        "no service binary at {} (build followup-scheduler --release first)",
        binary.display()
    );
    let keys = KeyPair::generate()?;
    let key_file =
        std::env::temp_dir().join(format!("scheduler-bench-{}.pem", Uuid::now_v7().simple()));
    std::fs::write(&key_file, &keys.public_pem)?;
    for (pending, due) in [(args.pending / 10, args.due / 10), (args.pending, args.due)] {
        let (url, pool) = seeded(dbs, "rss", pending, due).await?;
        let mut child = tokio::process::Command::new(&binary)
            .env("FOLLOWUP_SCHEDULER__DATABASE_URL", &url)
            .env("FOLLOWUP_SCHEDULER__NATS_URL", nats.url())
            .env("FOLLOWUP_SCHEDULER__GRPC_ADDR", "127.0.0.1:0")
            .env("FOLLOWUP_SCHEDULER__ADMIN_ADDR", "127.0.0.1:0")
            .env(
                "FOLLOWUP_SCHEDULER__AUTH__JWT_PUBLIC_KEY_FILES",
                format!("[\"{}\"]", key_file.display()),
            )
            .env("FOLLOWUP_SCHEDULER__LOG__FILTER", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the service binary")?;
        let pid = child.id().context("child pid")?;
        let started = Instant::now();
        let mut peak = 0;
        let deadline = started + Duration::from_secs(600);
        loop {
            peak = peak.max(rss_kb(pid).unwrap_or(0));
            let fired = count(
                &pool,
                "SELECT count(*) FROM step_runs WHERE state = 'fired'",
            )
            .await?;
            if fired >= due || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (first, last): (Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT min(fired_at), max(fired_at) FROM step_runs WHERE state = 'fired'",
            )
            .fetch_one(&pool)
            .await?;
        // Claim times: from the first claim to the last (one batch alone shows as a millisecond).
        let span = match (first, last) {
            (Some(a), Some(b)) => ((b - a).num_milliseconds().max(1)) as f64 / 1000.0,
            _ => f64::NAN,
        };
        // Let the relay drain and the service settle, still sampling.
        for _ in 0..30 {
            peak = peak.max(rss_kb(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let settled = rss_kb(pid).unwrap_or(0);
        println!(
            "{pending} pending ({due} due): peak RSS {:.1} MB, after {:.1} MB; the binary fired {due} steps in {span:.2} s = {:.0} steps/s (its outbox relay publishing meanwhile)",
            peak as f64 / 1024.0,
            settled as f64 / 1024.0,
            due as f64 / span
        );
        child.start_kill()?;
        let _ = child.wait().await;
        pool.close().await;
    }
    let _ = std::fs::remove_file(&key_file);
    Ok(())
}

async fn phase_hot(args: &Args, dbs: &mut Databases, nats: &LocalNats) -> anyhow::Result<()> {
    println!(
        "== hot trigger: enquiry.created → notification_requested, {} events/s for {} s",
        args.hot_rate, args.hot_seconds
    );
    let (url, pool) = dbs.create("hot").await?;
    let keys = KeyPair::generate()?;
    let sources = Sources::overrides_only()
        .set("database_url", &url)
        .set("nats_url", nats.url())
        .set("grpc_addr", "127.0.0.1:0")
        .set("admin_addr", "127.0.0.1:0")
        .set("claim_links.http_addr", "127.0.0.1:0")
        .set("auth.jwt_public_keys", vec![keys.public_pem.clone()])
        .set("log.filter", "warn");
    let config = ServiceConfig::load(
        &followup_scheduler::INFO,
        followup_scheduler::Settings::default(),
        sources,
    )?;
    let running = followup_scheduler::Service::build(config).await?;
    // Enable the shipped hot-enquiry template, as EnableRuleTemplate would.
    {
        let store = Store::new(Arc::new(SystemClock));
        let rule = followup_scheduler::templates::find("hot_enquiry")
            .and_then(|t| t.rule)
            .context("template")?;
        let def = followup_scheduler::convert::valid_rule(&rule)?;
        let mut tx = pool.begin().await?;
        let row = followup_scheduler::storage::rules::create(
            &mut tx,
            TENANT,
            "bench",
            &rule,
            &def,
            "hot_enquiry",
            Utc::now(),
        )
        .await?;
        followup_scheduler::storage::rules::play(&store, &mut tx, TENANT, "bench", row.rule_id)
            .await?;
        tx.commit().await?;
    }
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut requests = client
        .subscribe(format!(
            "followup.{TENANT}.scheduler.notification_requested"
        ))
        .await?;
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let received = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let message = tokio::select! {
                    _ = &mut stopped => break,
                    message = requests.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                };
                let now = Instant::now();
                let Ok(request) = ev::NotificationRequested::decode(message.payload.as_ref())
                else {
                    continue;
                };
                let Some(enquiry) = request.variables.get("enquiry_id") else {
                    continue;
                };
                let started = sent.lock().ok().and_then(|mut s| s.remove(enquiry));
                if let Some(started) = started {
                    latencies.push((enquiry.clone(), now - started));
                }
            }
            latencies
        })
    };
    let total = args.hot_rate * args.hot_seconds;
    let warmup = args.hot_rate * 2;
    let interval = Duration::from_secs_f64(1.0 / args.hot_rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..(total + warmup) {
        ticker.tick().await;
        let enquiry_id = format!("enq-{n}");
        let event = ev::EnquiryCreated {
            event_id: Uuid::now_v7().to_string(),
            tenant_id: TENANT.into(),
            occurred_at: Some(followup_platform::event::now_timestamp()),
            enquiry_id: enquiry_id.clone(),
            patient_id: format!("patient-{n}"),
            interest: "implants".into(),
            ..Default::default()
        };
        let subject = event.subject().map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Ok(mut s) = sent.lock() {
            s.insert(enquiry_id, Instant::now());
        }
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(event.encode_to_vec().into())
            .message_id(event.event_id.as_str());
        // Acks are awaited in the background so the pace holds.
        let ack = js.send_publish(subject, publish).await?;
        tokio::spawn(async move {
            let _ = ack.await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && sent.lock().map(|s| !s.is_empty()).unwrap_or(false) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = sent.lock().map(|s| s.len()).unwrap_or(0);
    let _ = stop.send(());
    let latencies = received.await.unwrap_or_default();
    drop(client);
    // The first two seconds warm connections and caches; they are left out.
    let mut ms: Vec<f64> = latencies
        .iter()
        .filter(|(id, _)| {
            id.trim_start_matches("enq-")
                .parse::<u64>()
                .is_ok_and(|n| n >= warmup)
        })
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{} events measured (after {warmup} warm-up), {missing} without a request; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    );
    println!("HEADLINE hot trigger p99 {:.0} ms", percentile(&ms, 99.0));
    running.stop().await;
    pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "scheduler-bench on {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let mut dbs = Databases {
        admin_url: args.database_url.clone(),
        created: Vec::new(),
    };
    let store =
        std::env::temp_dir().join(format!("scheduler-bench-nats-{}", Uuid::now_v7().simple()));
    let needs_nats = args.phases.iter().any(|p| p == "rss" || p == "hot");
    let nats = if needs_nats {
        Some(LocalNats::start(&store, None).await?)
    } else {
        None
    };
    let mut outcome = Ok(());
    for phase in &args.phases {
        let result = match (phase.as_str(), &nats) {
            ("fire", _) => phase_fire(&args, &mut dbs).await,
            ("lateness", _) => phase_lateness(&args, &mut dbs).await,
            ("rss", Some(nats)) => phase_rss(&args, &mut dbs, nats).await,
            ("hot", Some(nats)) => phase_hot(&args, &mut dbs, nats).await,
            (other, _) => Err(anyhow::anyhow!(
                "unknown phase {other} (fire, lateness, rss, hot)"
            )),
        };
        if let Err(err) = result {
            eprintln!("phase {phase} failed: {err:#}");
            outcome = Err(err);
            break;
        }
    }
    dbs.drop_all().await;
    if let Some(nats) = nats {
        let _ = nats.stop().await;
    }
    let _ = std::fs::remove_dir_all(&store);
    outcome
}
