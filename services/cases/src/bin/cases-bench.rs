//! The cases benchmark (not a test): ListCases latency through gRPC beside the bare SQL of the same
//! queries, and how many case events per second the consumers apply.
//!
//! ```sh
//! cargo run --release -p followup-cases --features bench --bin cases-bench -- --help
//! FOLLOWUP_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p followup-cases --features bench --bin cases-bench
//! ```
//!
//! It makes a fresh database and a private nats-server (the platform's test kit), seeds 1,000,000 cases
//! over 100 clinics (one with 200,000) with one `INSERT … SELECT generate_series` per 100k rows, starts
//! the real service, then:
//!
//! 1. lists: for each scenario, `--requests` ListCases calls over gRPC (a page of 50 with the totals of
//!    the whole filtered set), interleaved with the same two statements (page, totals) run bare through
//!    sqlx on the same indexes, raw rows, nothing decoded; p50/p99 of each and their ratio;
//! 2. events: stops the service, publishes `--events` events (plan_sent of new plans, plan_viewed,
//!    engagement_updated, appointment.booked of seeded cases), starts the service again and times until
//!    every consumer has acknowledged everything, with the CPU each part used (from /proc).
//!
//! `CASES_BENCH_EXPLAIN=1` logs the plans of statements over 30 ms to the PostgreSQL server log
//! (auto_explain); `CASES_BENCH_POLL_MS` sets how often the consumers' backlog is polled (default 1000).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use clap::Parser;
use followup_cases::domain::CaseStatus;
use followup_cases::storage::counts::{self, OwnerScope};
use followup_cases::storage::list::{self, Cursor, ListFilter, Order};
use followup_cases::{INFO, MIGRATOR, Service, Settings};
use followup_platform::auth::Role;
use followup_platform::clock::SystemClock;
use followup_platform::event::{new_event_id, timestamp};
use followup_platform::testkit::{TestEnv, authed};
use followup_proto::followup::cases::v1 as pb;
use followup_proto::followup::cases::v1::cases_service_client::CasesServiceClient;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::subjects::Event;
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Parser, Debug, Clone)]
#[command(about = "Seeds cases and measures ListCases latency and the consumers' event rate")]
struct Args {
    /// Cases to seed.
    #[arg(long, default_value_t = 1_000_000)]
    cases: i64,
    /// Clinics they belong to.
    #[arg(long, default_value_t = 100)]
    clinics: i64,
    /// Cases of the largest clinic (clinic-000).
    #[arg(long, default_value_t = 200_000)]
    big: i64,
    /// ListCases calls per scenario (and as many bare SQL runs).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Events to publish for the consumer run.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// consumer.batch_size: events per transaction.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// consumer.concurrency: batches in flight per consumer.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Skip the list benchmark.
    #[arg(long)]
    skip_lists: bool,
    /// Skip the event benchmark.
    #[arg(long)]
    skip_events: bool,
}

const SEED_CHUNK: i64 = 100_000;
const STATUS_NAMES: &str = "ARRAY['DraftNotSent','SentNotViewed','SentViewed','WaitingForResponse',\
                            'PatientBooked','PatientRejected','TreatmentCompleted']";

fn case_id(i: i64) -> Uuid {
    Uuid::from_u128((0x0190_0000_0000_7000_8000u128 << 48) | (i as u128))
}

fn tenant(args: &Args, i: i64) -> String {
    if i <= args.big {
        "clinic-000".into()
    } else {
        format!("clinic-{:03}", 1 + i % (args.clinics - 1))
    }
}

/// The seed, in SQL: each row's state is the domain case serialized as the service writes it, and the
/// list columns are derived from it by the service's own rules (checked after seeding).
fn seed_sql() -> String {
    format!(
        "WITH g AS (
            SELECT i,
                   CASE WHEN i <= $3 THEN 'clinic-000'
                        ELSE 'clinic-' || lpad((1 + i % ($4 - 1))::text, 3, '0') END AS tenant_id,
                   ('01900000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid AS case_id,
                   i % 100 AS r
            FROM generate_series($1::int8, $2::int8) AS i
        ), s AS (
            SELECT g.*,
                   CASE WHEN r < 10 THEN 1 WHEN r < 40 THEN 2 WHEN r < 60 THEN 3 WHEN r < 70 THEN 4
                        WHEN r < 85 THEN 5 WHEN r < 95 THEN 6 ELSE 7 END AS status,
                   CASE WHEN i % 7 = 0 THEN NULL ELSE 'staff-' || (i % 10) END AS owner,
                   5000 + (i * 7919) % 500000 AS value,
                   CASE WHEN i % 50 = 0 THEN 'USD' ELSE 'EUR' END AS currency,
                   CASE WHEN r >= 40 AND r < 60 THEN $5::timestamptz - interval '2 days'
                        ELSE $5::timestamptz - make_interval(days => 3 + (i % 360)::int,
                                                             mins => (i % 1440)::int) END AS created
            FROM g
        ), t AS (
            SELECT s.*,
                   CASE WHEN status = 1 THEN NULL ELSE created + interval '1 hour' END AS first_sent,
                   (status IN (3, 4) OR (status IN (5, 7) AND i % 2 = 0)) AS viewed
            FROM s
        ), u AS (
            SELECT t.*,
                   CASE WHEN i % 5 = 0 AND status NOT IN (1, 3) THEN first_sent + interval '2 days'
                        ELSE first_sent END AS last_sent,
                   CASE WHEN status = 3 THEN $5::timestamptz - make_interval(mins => (i % 2400)::int)
                        WHEN viewed THEN first_sent + interval '3 hours' END AS first_view,
                   CASE WHEN status IN (5, 7) THEN first_sent + interval '5 days' END AS booked
            FROM t
        ), v AS (
            SELECT u.*,
                   CASE status WHEN 1 THEN created WHEN 2 THEN last_sent WHEN 3 THEN first_view
                               WHEN 4 THEN first_view + interval '48 hours' WHEN 5 THEN booked
                               WHEN 6 THEN last_sent + interval '3 days'
                               ELSE booked + interval '30 days' END AS status_at,
                   CASE status WHEN 4 THEN 0 WHEN 3 THEN 1 WHEN 2 THEN 3 WHEN 1 THEN 4 ELSE 5 END AS tier,
                   CASE WHEN status = 3 THEN first_view + interval '48 hours' END AS due
            FROM u
        )
        INSERT INTO cases (tenant_id, case_id, patient_id, patient_name, patient_search, status,
                           is_open, owner_staff_id, value_minor, currency, alternative_group_id,
                           is_representative, viewed, first_sent_at, last_sent_at, sent_sort,
                           priority_tier, contact_sort, last_activity_at, response_due_at,
                           created_at, state)
        SELECT tenant_id, case_id, 'patient-' || i, 'Patient ' || i, 'patient ' || i, status,
               status <= 4, owner, value, currency, NULL, true, viewed, first_sent, last_sent,
               coalesce(last_sent, created), tier, coalesce(last_sent, created), status_at, due,
               created,
               jsonb_build_object(
                 'tenant_id', tenant_id, 'case_id', case_id, 'plan_version', 1,
                 'patient_id', 'patient-' || i, 'title', 'Plan ' || i,
                 'status', ({STATUS_NAMES})[status], 'status_at', status_at,
                 'status_by_staff', false, 'status_cause', '', 'owner_staff_id', owner,
                 'owner_by_staff', false,
                 'value', jsonb_build_object('amount_minor', value, 'currency', currency),
                 'alternative_group_id', NULL, 'first_sent_at', first_sent, 'last_sent_at', last_sent,
                 'send_count', CASE WHEN status = 1 THEN 0 WHEN last_sent > first_sent THEN 2 ELSE 1 END,
                 'viewed', viewed, 'first_view_at', first_view, 'last_view_at', first_view,
                 'view_count', CASE WHEN viewed THEN 1 + i % 4 ELSE 0 END,
                 'total_view_millis', CASE WHEN viewed THEN 60000 * (1 + i % 20) ELSE 0 END,
                 'section_times', '[]'::jsonb, 'engagement_at', NULL, 'approved_at', NULL,
                 'patient_approved_at', NULL, 'last_reply_at', NULL, 'reminders_sent', 0,
                 'first_follow_up_at', NULL, 'last_contact_at', NULL, 'enrollments', '[]'::jsonb,
                 'booked_at', booked,
                 'booked_appointment_id', CASE WHEN booked IS NULL THEN NULL ELSE 'appt-' || i END,
                 'appointment_start', NULL, 'cancelled_appointments', '[]'::jsonb,
                 'completed_at', CASE WHEN status = 7 THEN status_at END, 'quote_expiry_date', NULL,
                 'created_at', created, 'last_activity_at', status_at, 'response_due_at', due)
        FROM v"
    )
}

async fn seed(pool: &PgPool, args: &Args) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let now = Utc::now();
    // Counts are rebuilt once at the end instead of a delta per seeded row.
    sqlx::query("ALTER TABLE cases DISABLE TRIGGER USER")
        .execute(pool)
        .await?;
    let sql = seed_sql();
    let mut from = 1;
    while from <= args.cases {
        let to = (from + SEED_CHUNK - 1).min(args.cases);
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(from)
            .bind(to)
            .bind(args.big)
            .bind(args.clinics)
            .bind(now)
            .execute(pool)
            .await
            .with_context(|| format!("seeding cases {from}..{to}"))?;
        eprintln!("  seeded {to} cases ({:.0?})", started.elapsed());
        from = to + 1;
    }
    sqlx::query("ALTER TABLE cases ENABLE TRIGGER USER")
        .execute(pool)
        .await?;
    counts::rebuild(pool).await?;
    sqlx::query(
        "INSERT INTO staff (tenant_id, staff_id, display_name, role, active, updated_at)
         SELECT t.tenant_id, 'staff-' || n, 'Staff member ' || n, 4, true, now()
         FROM (SELECT DISTINCT tenant_id FROM cases) AS t, generate_series(0, 9) AS n",
    )
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO case_settings (tenant_id) SELECT DISTINCT tenant_id FROM cases")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    Ok(started.elapsed())
}

/// The seeded rows decode as the service's cases, and their list columns follow its rules.
async fn check_seed(pool: &PgPool, args: &Args) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    for i in [1, 15, 45, 65, 75, 90, 99, args.big + 1, args.cases] {
        let record = followup_cases::storage::get_case(&mut conn, &tenant(args, i), case_id(i))
            .await?
            .with_context(|| format!("seeded case {i} is missing"))?;
        let state = record.state;
        let (tier, contact): (i16, chrono::DateTime<Utc>) = sqlx::query_as(
            "SELECT priority_tier, contact_sort FROM cases WHERE tenant_id = $1 AND case_id = $2",
        )
        .bind(&state.tenant_id)
        .bind(state.case_id)
        .fetch_one(&mut *conn)
        .await?;
        anyhow::ensure!(
            tier == followup_cases::domain::ranking::tier(&state)
                && (contact - state.contact_time()).num_milliseconds().abs() < 1,
            "seeded case {i} disagrees with the service's rules"
        );
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Scenario {
    name: &'static str,
    tenant: String,
    request: pb::ListCasesRequest,
    /// Walk this many pages with the page token, then start over.
    pages: usize,
}

fn filter_of(request: &pb::ListCasesRequest) -> (ListFilter, Order) {
    let statuses = request
        .statuses
        .iter()
        .filter_map(|s| CaseStatus::from_number(*s))
        .collect();
    let owners = if request.owner_staff_id.is_empty() {
        OwnerScope::Any
    } else {
        OwnerScope::Owner(request.owner_staff_id.clone())
    };
    let filter = ListFilter {
        statuses,
        owners,
        min_value: request.min_value.as_ref().map(|m| m.amount_minor),
        max_value: request.max_value.as_ref().map(|m| m.amount_minor),
        currency: request.min_value.as_ref().map(|m| m.currency.clone()),
        ..ListFilter::everything()
    };
    let order = match request.order_by {
        2 => Order::Value,
        3 => Order::Priority,
        4 => Order::Activity,
        _ => Order::Sent,
    };
    (filter, order)
}

/// The bare SQL of one ListCases call: the page and the totals, at once on two connections, as the
/// service runs them; rows fetched raw, nothing decoded.
async fn bare(
    pool: &PgPool,
    tenant: &str,
    filter: &ListFilter,
    order: Order,
    after: Option<&Cursor>,
) -> anyhow::Result<Vec<sqlx::postgres::PgRow>> {
    let page = async {
        let mut conn = pool.acquire().await?;
        let mut q = list::page_query(tenant, filter, order, false, after, 50)?;
        let rows = q.build().fetch_all(&mut *conn).await?;
        anyhow::Ok(rows)
    };
    let totals = async {
        let mut conn = pool.acquire().await?;
        if list::counted(filter) {
            sqlx::query(counts::CELLS_SQL)
                .bind(tenant)
                .bind(filter.owners.bound_keys())
                .fetch_all(&mut *conn)
                .await?;
        } else {
            list::cells_query(tenant, filter)
                .build()
                .fetch_all(&mut *conn)
                .await?;
        }
        anyhow::Ok(())
    };
    let (rows, ()) = tokio::try_join!(page, totals)?;
    Ok(rows)
}

/// Where the next bare page starts: after the page's 50th row.
fn cursor_after(rows: &[sqlx::postgres::PgRow], order: Order) -> Option<Cursor> {
    use sqlx::Row;
    let row = rows.get(49)?;
    let state: sqlx::types::Json<followup_cases::domain::CaseState> = row.try_get("state").ok()?;
    Some(Cursor::after(order, &state.0))
}

async fn lists(
    env: &TestEnv,
    pool: &PgPool,
    client: &mut CasesServiceClient<tonic::transport::Channel>,
    args: &Args,
) -> anyhow::Result<Vec<(String, [f64; 4])>> {
    let open = vec![
        CaseStatus::SentNotViewed.number(),
        CaseStatus::SentViewed.number(),
        CaseStatus::WaitingForResponse.number(),
    ];
    let scenarios = vec![
        Scenario {
            name: "200k clinic: open cases, newest sent first, page 1",
            tenant: "clinic-000".into(),
            request: pb::ListCasesRequest {
                statuses: open.clone(),
                page_size: 50,
                ..Default::default()
            },
            pages: 1,
        },
        Scenario {
            name: "200k clinic: one owner's open cases in queue order, pages 1-20",
            tenant: "clinic-000".into(),
            request: pb::ListCasesRequest {
                statuses: open.clone(),
                owner_staff_id: "staff-3".into(),
                order_by: pb::CaseOrder::Priority as i32,
                page_size: 50,
                ..Default::default()
            },
            pages: 20,
        },
        Scenario {
            name: "a smaller clinic: open cases, newest sent first, page 1",
            tenant: tenant(args, args.big + 42),
            request: pb::ListCasesRequest {
                statuses: open.clone(),
                page_size: 50,
                ..Default::default()
            },
            pages: 1,
        },
        Scenario {
            name: "200k clinic: value 1,000-1,500 EUR by value (totals aggregated, no counters)",
            tenant: "clinic-000".into(),
            request: pb::ListCasesRequest {
                min_value: Some(common::Money {
                    amount_minor: 100_000,
                    currency: "EUR".into(),
                }),
                max_value: Some(common::Money {
                    amount_minor: 150_000,
                    currency: "EUR".into(),
                }),
                order_by: pb::CaseOrder::Value as i32,
                page_size: 50,
                ..Default::default()
            },
            pages: 1,
        },
    ];
    let mut results = Vec::new();
    for scenario in scenarios {
        let token = env.auth.token(&scenario.tenant, Role::FrontDesk);
        let (filter, order) = filter_of(&scenario.request);
        let mut grpc = Vec::with_capacity(args.requests);
        let mut sql = Vec::with_capacity(args.requests);
        let mut page_token = String::new();
        let mut cursor: Option<Cursor> = None;
        let mut page = 0;
        // Warm caches and connections first; then time gRPC and bare SQL alternately.
        for round in 0..(args.requests + 50) {
            let timed = round >= 50;
            let request = pb::ListCasesRequest {
                page_token: page_token.clone(),
                ..scenario.request.clone()
            };
            let started = Instant::now();
            let response = client
                .list_cases(authed(request, &token))
                .await
                .context("ListCases")?
                .into_inner();
            let elapsed = started.elapsed();
            anyhow::ensure!(
                !response.cases.is_empty(),
                "{}: cases on the page",
                scenario.name
            );
            let started = Instant::now();
            let rows = bare(pool, &scenario.tenant, &filter, order, cursor.as_ref()).await?;
            let bare_elapsed = started.elapsed();
            let next_cursor = cursor_after(&rows, order);
            if timed {
                grpc.push(elapsed);
                sql.push(bare_elapsed);
            }
            page += 1;
            if page >= scenario.pages || response.next_page_token.is_empty() {
                page = 0;
                page_token.clear();
                cursor = None;
            } else {
                page_token = response.next_page_token;
                cursor = next_cursor;
            }
        }
        grpc.sort();
        sql.sort();
        let figures = [
            ms(percentile(&grpc, 50.0)),
            ms(percentile(&grpc, 99.0)),
            ms(percentile(&sql, 50.0)),
            ms(percentile(&sql, 99.0)),
        ];
        println!(
            "  {:<75} gRPC p50 {:>6.2} ms p99 {:>6.2} ms | bare SQL p50 {:>6.2} ms p99 {:>6.2} ms | ratio p50 {:.2} p99 {:.2}",
            scenario.name,
            figures[0],
            figures[1],
            figures[2],
            figures[3],
            figures[0] / figures[2],
            figures[1] / figures[3]
        );
        results.push((scenario.name.to_string(), figures));
    }
    Ok(results)
}

/// A deterministic spread of numbers (no extra crate for a benchmark's choices).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: i64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % below as u64) as i64
    }

    /// A seeded case whose `i % 100` is in `[lo, hi)`.
    fn case_in(&mut self, args: &Args, lo: i64, hi: i64) -> i64 {
        loop {
            let i = 1 + self.next(args.cases);
            let candidate = i - i % 100 + lo + self.next(hi - lo);
            if (1..=args.cases).contains(&candidate) {
                return candidate;
            }
        }
    }
}

fn event_mix(args: &Args) -> Vec<(String, String, Vec<u8>)> {
    let mut rng = Lcg(42);
    let now = Utc::now();
    let at = Some(timestamp(now));
    let mut events = Vec::with_capacity(args.events);
    for n in 0..args.events {
        let event_id = new_event_id().to_string();
        let kind = n % 20;
        let (subject, payload) = if kind < 4 {
            // A new plan sent to a patient of any clinic.
            let i = 1 + rng.next(args.cases);
            let e = ev::PlanSent {
                event_id: event_id.clone(),
                tenant_id: tenant(args, i),
                occurred_at: at,
                plan_id: Uuid::now_v7().to_string(),
                plan_version: 1,
                patient_id: format!("patient-new-{n}"),
                title: "Implant and crown".into(),
                value: Some(common::Money {
                    amount_minor: 250_000,
                    currency: "EUR".into(),
                }),
                sent_time: at,
                send_count: 1,
                sent_by_staff_id: "staff-1".into(),
                owner_staff_id: format!("staff-{}", n % 10),
                items: vec![ev::PlanItemSummary {
                    item_id: Uuid::now_v7().to_string(),
                    code: "D6010".into(),
                    name: "Implant placement".into(),
                    visit: 1,
                    value: Some(common::Money {
                        amount_minor: 250_000,
                        currency: "EUR".into(),
                    }),
                    ..Default::default()
                }],
                visit_count: 1,
                ..Default::default()
            };
            (e.subject(), e.encode_to_vec())
        } else if kind < 10 {
            // A sent case viewed for the first time.
            let i = rng.case_in(args, 10, 40);
            let e = ev::PlanViewed {
                event_id: event_id.clone(),
                tenant_id: tenant(args, i),
                occurred_at: at,
                plan_id: case_id(i).to_string(),
                plan_version: 1,
                patient_id: format!("patient-{i}"),
                session_id: format!("s-{n}"),
            };
            (e.subject(), e.encode_to_vec())
        } else if kind < 17 {
            // Engagement facts of a viewed case, with the session that ended.
            let i = rng.case_in(args, 40, 60);
            let section = |s: common::PortalSection, secs| common::SectionTime {
                section: s as i32,
                view_time: Some(prost_types::Duration {
                    seconds: secs,
                    nanos: 0,
                }),
            };
            let e = ev::EngagementUpdated {
                event_id: event_id.clone(),
                tenant_id: tenant(args, i),
                occurred_at: at,
                plan_id: case_id(i).to_string(),
                plan_version: 1,
                patient_id: format!("patient-{i}"),
                facts: Some(ev::EngagementFacts {
                    first_view_time: Some(timestamp(now - chrono::Duration::hours(1))),
                    last_view_time: at,
                    view_count: 2,
                    total_view_time: Some(prost_types::Duration {
                        seconds: 400,
                        nanos: 0,
                    }),
                    section_times: vec![
                        section(common::PortalSection::Cover, 40),
                        section(common::PortalSection::TreatmentDetails, 360),
                    ],
                    last_section: common::PortalSection::TreatmentDetails as i32,
                }),
                ended_sessions: vec![ev::ViewSessionSummary {
                    session_id: format!("s-{n}"),
                    start_time: Some(timestamp(now - chrono::Duration::minutes(7))),
                    end_time: at,
                    view_time: Some(prost_types::Duration {
                        seconds: 400,
                        nanos: 0,
                    }),
                    section_times: vec![section(common::PortalSection::TreatmentDetails, 360)],
                }],
            };
            (e.subject(), e.encode_to_vec())
        } else {
            // The clinic system books an appointment for a viewed or waiting case.
            let i = rng.case_in(args, 40, 70);
            let e = ev::AppointmentBooked {
                event_id: event_id.clone(),
                tenant_id: tenant(args, i),
                occurred_at: at,
                appointment: Some(ev::Appointment {
                    appointment_id: format!("appt-new-{n}"),
                    patient_id: format!("patient-{i}"),
                    slot: Some(common::Slot {
                        start_time: Some(timestamp(now + chrono::Duration::days(7))),
                        duration: Some(prost_types::Duration {
                            seconds: 3600,
                            nanos: 0,
                        }),
                        practitioner_id: "staff-1".into(),
                        location_id: String::new(),
                    }),
                    plan_id: case_id(i).to_string(),
                    care_case_id: String::new(),
                    appointment_type: "treatment".into(),
                }),
                ..Default::default()
            };
            (e.subject(), e.encode_to_vec())
        };
        if let Ok(subject) = subject {
            events.push((subject, event_id, payload));
        }
    }
    events
}

async fn publish_all(
    js: &async_nats::jetstream::Context,
    events: &[(String, String, Vec<u8>)],
) -> anyhow::Result<()> {
    // async-nats holds at most 5,000 unacknowledged publishes; await the acks in chunks below that.
    for chunk in events.chunks(4000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (subject, id, payload) in chunk {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.clone().into())
                .message_id(id.as_str());
            acks.push(js.send_publish(subject.clone(), publish).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

async fn drained(js: &async_nats::jetstream::Context) -> anyhow::Result<bool> {
    for (stream, consumer) in [
        ("FOLLOWUP", "cases-plans"),
        ("FOLLOWUP", "cases-engagement"),
        ("CLINIC", "cases-appointments"),
    ] {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(stream)
            .await?
            .get_consumer(consumer)
            .await
            .map_err(|e| anyhow::anyhow!("consumer {consumer}: {e}"))?;
        let info = consumer.info().await?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn start_service(
    env: &TestEnv,
    args: &Args,
) -> anyhow::Result<followup_platform::service::Running> {
    let mut config = env.config(
        &INFO,
        Settings {
            // The seeded windows end after the run; nothing else should compete with what is measured.
            timer_interval_ms: 60_000,
            digest_interval_secs: 3600,
            ..Settings::default()
        },
    );
    config.common.database_max_connections = 24;
    config.common.consumer.batch_size = args.batch_size;
    config.common.consumer.concurrency = args.concurrency;
    config.common.log.filter = "warn".into();
    Ok(Service::build_with_clock(config, Arc::new(SystemClock)).await?)
}

/// CPU time (user + system) a process has used, from /proc (Linux; clock ticks of 1/100 s).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields we want follow its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU used so far by this process, the private nats-server, and the PostgreSQL backends serving the
/// benchmark's database (those alive now).
async fn cpu_snapshot(
    pool: &PgPool,
    db: &str,
    nats_pid: u32,
) -> anyhow::Result<BTreeMap<String, Duration>> {
    let mut snapshot = BTreeMap::new();
    if let Some(cpu) = process_cpu(std::process::id()) {
        snapshot.insert("service (in-process)".to_string(), cpu);
    }
    if let Some(cpu) = process_cpu(nats_pid) {
        snapshot.insert("nats-server".to_string(), cpu);
    }
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .fetch_all(pool)
        .await?;
    for pid in pids {
        if let Some(cpu) = process_cpu(pid as u32) {
            snapshot.insert(format!("postgres {pid}"), cpu);
        }
    }
    Ok(snapshot)
}

/// CPU used between two snapshots, per part (service, nats, postgres backends summed).
fn cpu_used(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
) -> BTreeMap<&'static str, Duration> {
    let mut used = BTreeMap::new();
    for (name, end) in after {
        let start = before.get(name).copied().unwrap_or_default();
        let part = if name.starts_with("postgres") {
            "postgres backends"
        } else if name.starts_with("nats") {
            "nats-server"
        } else {
            "service"
        };
        *used.entry(part).or_insert(Duration::ZERO) += end.saturating_sub(start);
    }
    used
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|o| {
            o.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| {
                l.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_string()
            })
        })
        .unwrap_or_default();
    format!("{cores} cores, {memory} GiB, {os}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.clinics >= 2 && args.big < args.cases,
        "need a big clinic and others"
    );
    let env = TestEnv::start().await;
    let pool = PgPool::connect(&env.db.url).await?;
    followup_platform::db::migrate(&pool, &MIGRATOR).await?;
    if std::env::var("CASES_BENCH_EXPLAIN").is_ok() {
        for sql in [
            format!(
                "ALTER DATABASE \"{}\" SET session_preload_libraries = 'auto_explain'",
                env.db.name
            ),
            format!(
                "ALTER DATABASE \"{}\" SET auto_explain.log_min_duration = 30",
                env.db.name
            ),
            format!(
                "ALTER DATABASE \"{}\" SET auto_explain.log_analyze = on",
                env.db.name
            ),
            format!(
                "ALTER DATABASE \"{}\" SET auto_explain.log_buffers = on",
                env.db.name
            ),
            format!(
                "ALTER DATABASE \"{}\" SET auto_explain.log_nested_statements = on",
                env.db.name
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
        }
    }
    let pg: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    println!("cases-bench {}", Utc::now().format("%Y-%m-%d %H:%M UTC"));
    println!("machine: {}; PostgreSQL {pg}", machine());
    println!(
        "seeding {} cases over {} clinics (clinic-000: {}) ...",
        args.cases, args.clinics, args.big
    );
    let took = seed(&pool, &args).await?;
    check_seed(&pool, &args).await?;
    println!("seeded in {:.1} s", took.as_secs_f64());

    let running = start_service(&env, &args).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))?
        .connect()
        .await?;
    let mut client = CasesServiceClient::new(channel);
    let mut headline_list = None;
    if !args.skip_lists {
        println!(
            "ListCases, a page of 50 with totals, {} calls per scenario:",
            args.requests
        );
        let results = lists(&env, &pool, &mut client, &args).await?;
        // The headline is the first scenario: the dashboard's list of a 200k-case clinic.
        headline_list = results.first().map(|(_, f)| (f[1], f[1] / f[3]));
    }
    let _ = running.stop().await;

    let mut headline_events = None;
    if !args.skip_events {
        let js = env.nats.jetstream().await;
        let events = event_mix(&args);
        let started = Instant::now();
        publish_all(&js, &events).await?;
        println!(
            "published {} events (20% plan_sent, 30% plan_viewed, 35% engagement_updated, 15% appointment.booked) in {:.1} s",
            events.len(),
            started.elapsed().as_secs_f64()
        );
        let cases_before: i64 = sqlx::query_scalar("SELECT count(*) FROM cases")
            .fetch_one(&pool)
            .await?;
        let load_before = load_average();
        let started = Instant::now();
        let running = start_service(&env, &args).await?;
        let cpu_before = cpu_snapshot(&pool, &env.db.name, env.nats.pid()).await?;
        let mut cpu_after = cpu_before.clone();
        loop {
            // Sampled while the backends are alive: a backend's CPU is gone with it.
            cpu_after = cpu_snapshot(&pool, &env.db.name, env.nats.pid())
                .await
                .unwrap_or(cpu_after);
            if drained(&js).await? {
                break;
            }
            // Asking NATS 2.9 for a filtered consumer's pending count walks the stream: ask rarely.
            tokio::time::sleep(Duration::from_millis(
                std::env::var("CASES_BENCH_POLL_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000),
            ))
            .await;
        }
        let elapsed = started.elapsed();
        let load_after = load_average();
        let _ = running.stop().await;
        let used = cpu_used(&cpu_before, &cpu_after);
        let total: Duration = used.values().sum();
        println!(
            "CPU used: {} — {:.0} µs per event; {:.0} events per CPU-second (load average before {load_before}, after {load_after})",
            used.iter()
                .map(|(part, d)| format!("{part} {:.1} s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
            total.as_secs_f64() * 1e6 / events.len() as f64,
            events.len() as f64 / total.as_secs_f64().max(1e-9),
        );
        let cases_after: i64 = sqlx::query_scalar("SELECT count(*) FROM cases")
            .fetch_one(&pool)
            .await?;
        let dead = js
            .get_stream("DEADLETTER")
            .await?
            .info()
            .await?
            .state
            .messages;
        let rate = events.len() as f64 / elapsed.as_secs_f64();
        println!(
            "applied {} events in {:.2} s (batch {} x {} in flight per consumer): {:.0} events/s; {} new cases; {} dead letters",
            events.len(),
            elapsed.as_secs_f64(),
            args.batch_size,
            args.concurrency,
            rate,
            cases_after - cases_before,
            dead
        );
        headline_events = Some(rate);
    }
    println!();
    if let Some(rate) = headline_events {
        println!("{rate:.0} case events/s");
    }
    if let Some((p99, ratio)) = headline_list {
        println!("ListCases p99 {p99:.1} ms (bare SQL ratio {ratio:.2})");
    }
    Ok(())
}
