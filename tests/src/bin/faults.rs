//! The fault run: the whole system as real processes (the five service binaries, a private nats-server
//! and PostgreSQL, a local SMS provider), the patient journey for hundreds of patients, and faults
//! thrown at it while it runs. Then it counts, per patient, what reached the provider.
//!
//! ```sh
//! cargo run --release -p followup-e2e --bin faults            # builds the service binaries first
//! cargo run --release -p followup-e2e --bin faults -- --help  # patients, kills, phases, --dir to keep logs
//! ```
//!
//! The journey (one clinic, demo-speed rule: seconds instead of days): the clinic system publishes the
//! patient; staff build and send a plan (gRPC to plans); the patient opens the portal link (beacons to
//! engagement); 3 s after the first view with no response the scheduler's rule enrolls the case and
//! sends an SMS at once, another 8 s later and a third 60 s later. Every fourth patient books (the
//! clinic system publishes `appointment.booked` for the plan) once the second SMS has reached them, so
//! the rule calls for exactly 3 messages for most patients and 2 for those who booked.
//!
//! Phases (each with its own patients, all of one clinic):
//! - `kills`: `--kills` times SIGKILL of a service in turn (plans, cases, engagement, scheduler,
//!   notifications, …) at random moments while `--patients` journeys run; each is started again
//!   after 0-2 s, as an orchestrator would.
//! - `infra`: while `--infra-patients` journeys run: nats-server stopped for 5 s and started again,
//!   PostgreSQL stopped (fast shutdown) for 5 s and started again, then `pg_terminate_backend` of every
//!   service connection every 200 ms for 20 s. `/readyz` of every service is sampled every 100 ms; a hot
//!   enquiry published as each fault ends measures when work flows end to end again.
//! - `poison`: an undecodable event on every subject of the contract; each consumer of each subject
//!   must dead-letter it with its reason while `--poison-patients` journeys published right behind the
//!   poison complete.
//!
//! Then: every patient's messages at the provider (0 lost, 0 duplicated; a repeat of an idempotency key
//! whose first attempt the notifications service recorded as UNKNOWN is the documented
//! accept-then-crash window and is counted apart), every case's status in the cases service, the work
//! left in the notifications queue, and every log of the run searched for the fixture's names, phone
//! numbers, emails, message bodies and portal link tokens. The run stops by itself and exits non-zero
//! when a check fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use followup_e2e::procs::{
    Api, Beacons, Options, Publisher, SinkView, Svc, System, build_binaries, daytime_zone,
    locate_binaries, page_view, retry, subject_matches,
};
use followup_platform::auth::Role;
use followup_platform::event::{new_event_id, now_timestamp, timestamp};
use followup_proto::followup::cases::v1 as cases;
use followup_proto::followup::common::v1::{
    CaseKind, CaseStatus, Channel, PortalSection, Slot, StopReason,
};
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::notifications::v1 as notifications;
use followup_proto::followup::plans::v1 as plans;
use followup_proto::followup::scheduler::v1 as scheduler;
use followup_proto::subjects::{EVENTS, Stream};
use rand::{Rng, SeedableRng};

const TENANT: &str = "faults-clinic";
/// Every call a journey makes may meet a fault; this is how long it keeps trying.
const PATIENCE: Duration = Duration::from_secs(120);
/// The rule: an SMS at enrollment, one 8 s later, one 60 s after that.
const STEP_WAITS: [u64; 2] = [8, 60];
const SEND_STEPS: [i32; 3] = [0, 2, 4];

#[derive(Parser, Clone)]
#[command(
    about = "The fault run: kill -9, NATS and PostgreSQL restarts, poison events, while patient journeys run"
)]
struct Args {
    /// Patients of the kills phase.
    #[arg(long, default_value_t = 200)]
    patients: usize,
    /// SIGKILLs of the kills phase, one service after the other.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Patients of the infra phase.
    #[arg(long, default_value_t = 50)]
    infra_patients: usize,
    /// Patients of the poison phase.
    #[arg(long, default_value_t = 20)]
    poison_patients: usize,
    /// Phases to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "kills,infra,poison")]
    phases: Vec<String>,
    /// The recovery limit checked after each fault, in seconds.
    #[arg(long, default_value_t = 10)]
    recovery_limit_secs: u64,
    /// Seed of the random kill moments (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep data, configuration and logs here (default: a temporary folder, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use the service binaries already built (FOLLOWUP_BIN_DIR or beside this one) instead of building.
    #[arg(long)]
    no_build: bool,
    /// The services' log filter: debug for Followup's own crates, so the personal-data search reads
    /// everything they could write.
    #[arg(
        long,
        default_value = "info,followup_plans=debug,followup_cases=debug,followup_engagement=debug,followup_scheduler=debug,followup_notifications=debug,followup_platform=debug"
    )]
    log_filter: String,
    /// Write the summary (markdown) to this file too.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// Someone of the fixture: a patient with a plan, or an enquirer.
#[derive(Clone, Debug)]
struct Person {
    id: String,
    given: String,
    family: String,
    phone: String,
    email: String,
    phase: &'static str,
    /// Books once the second reminder arrived.
    books: bool,
    /// An enquirer (hot trigger probe) rather than a patient with a plan.
    enquirer: bool,
}

impl Person {
    fn expected_messages(&self) -> usize {
        if self.enquirer {
            1
        } else if self.books {
            2
        } else {
            3
        }
    }
}

const GIVEN: [&str; 20] = [
    "Ottoline",
    "Peregrine",
    "Isadora",
    "Thaddeus",
    "Marisol",
    "Ignatius",
    "Clementine",
    "Bartholomew",
    "Esmerelda",
    "Leopold",
    "Araminta",
    "Cornelius",
    "Philippa",
    "Evander",
    "Rosalind",
    "Lysander",
    "Henrietta",
    "Ambrose",
    "Seraphina",
    "Fitzwilliam",
];
const FAMILY: [&str; 20] = [
    "Vantongeren",
    "Quarrington",
    "Blakiston",
    "Featherstonehaugh",
    "Ollerenshaw",
    "Wrixon",
    "Tremayne",
    "Pendergast",
    "Kilbride",
    "Marchbanks",
    "Ravenscroft",
    "Stradling",
    "Hollingdrake",
    "Threlfall",
    "Lydgate",
    "Cholmondeley",
    "Vavasour",
    "Winterbottom",
    "Ashburnham",
    "Quennell",
];

/// People numbered from `first`; phones +44 7700 900xxx (Ofcom's drama range: never a real person).
fn people(first: usize, count: usize, phase: &'static str, enquirers: bool) -> Vec<Person> {
    (first..first + count)
        .map(|n| {
            let given = GIVEN[n % 20].to_string();
            let family = FAMILY[(n / 20 + n * 7) % 20].to_string();
            Person {
                id: format!("{}-{n:03}", if enquirers { "enq" } else { "pat" }),
                email: format!(
                    "{}.{}{n}@example.org",
                    given.to_lowercase(),
                    family.to_lowercase()
                ),
                phone: format!("+447700900{n:03}"),
                given,
                family,
                phase,
                books: !enquirers && n % 4 == 3,
                enquirer: enquirers,
            }
        })
        .collect()
}

/// What a journey did.
#[derive(Clone, Debug, Default)]
struct Journey {
    plan_id: String,
    tokens: Vec<String>,
    retries: u32,
    booked: bool,
    error: Option<String>,
}

/// What journeys share.
#[derive(Clone)]
struct Ctx {
    api: Api,
    publisher: Publisher,
    beacons: Beacons,
    sink: SinkView,
    zone: String,
}

fn field_mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn seconds(secs: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs as i64,
        nanos: 0,
    })
}

async fn set_up_clinic(api: &Api, zone: &str) -> anyhow::Result<()> {
    let within = Duration::from_secs(30);
    retry("delivery settings", within, || {
        let mut c = api.notifications.clone();
        async move {
            c.update_delivery_settings(notifications::UpdateDeliverySettingsRequest {
                settings: Some(notifications::DeliverySettings {
                    time_zone: zone.into(),
                    clinic_name: "Faultline Dental".into(),
                    clinic_phone: "+15125550100".into(),
                    ..Default::default()
                }),
                update_mask: field_mask(&["time_zone", "clinic_name", "clinic_phone"]),
            })
            .await
        }
    })
    .await?;
    retry("scheduler settings", within, || {
        let mut c = api.scheduler.clone();
        async move {
            c.update_scheduler_settings(scheduler::UpdateSchedulerSettingsRequest {
                settings: Some(scheduler::SchedulerSettings {
                    time_zone: zone.into(),
                    ..Default::default()
                }),
                update_mask: field_mask(&["time_zone"]),
            })
            .await
        }
    })
    .await?;
    api.set_up_catalogue().await?;

    // The follow-up rule at demo speed.
    let send = |template: &str| scheduler::Step {
        action: Some(scheduler::step::Action::Send(scheduler::SendAction {
            channel: Channel::Sms as i32,
            template_key: template.into(),
        })),
        ..Default::default()
    };
    let wait = |secs: u64| scheduler::Step {
        action: Some(scheduler::step::Action::Wait(scheduler::WaitAction {
            until: Some(scheduler::wait_action::Until::Duration(
                prost_types::Duration {
                    seconds: secs as i64,
                    nanos: 0,
                },
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    let (created, _) = retry("rule", within, || {
        let mut c = api.scheduler.clone();
        let rule = scheduler::Rule {
            name: "Viewed, no reply (fault run speed)".into(),
            description: "3 s after a first view without a response: an SMS, another 8 s later, a \
                          third 60 s later; stops when the patient books"
                .into(),
            category: "treatment_follow_up".into(),
            mode: scheduler::EnrollmentMode::OncePerCase as i32,
            case_kind: CaseKind::CasePresentation as i32,
            trigger: Some(scheduler::Trigger {
                r#type: scheduler::TriggerType::PlanViewedNoResponse as i32,
                window: seconds(3),
                ..Default::default()
            }),
            steps: vec![
                send("plan_viewed_no_response"),
                wait(STEP_WAITS[0]),
                send("plan_follow_up_1"),
                wait(STEP_WAITS[1]),
                send("plan_follow_up_2"),
            ],
            ..Default::default()
        };
        async move {
            c.create_rule(scheduler::CreateRuleRequest {
                rule: Some(rule),
                validate_only: false,
            })
            .await
        }
    })
    .await?;
    let rule_id = created.rule.map(|r| r.rule_id).unwrap_or_default();
    retry("play", within, || {
        let mut c = api.scheduler.clone();
        let rule_id = rule_id.clone();
        async move { c.play_rule(scheduler::PlayRuleRequest { rule_id }).await }
    })
    .await?;
    retry("hot enquiry rule", within, || {
        let mut c = api.scheduler.clone();
        async move {
            c.enable_rule_template(scheduler::EnableRuleTemplateRequest {
                template_id: "hot_enquiry".into(),
                play: true,
                owner_staff_id: String::new(),
            })
            .await
        }
    })
    .await?;
    Ok(())
}

/// One patient's journey: the clinic system publishes them, staff build and send a plan, the patient
/// opens the link; a patient who books does so once the second reminder reached them.
async fn journey(ctx: Ctx, person: Person) -> Journey {
    let mut journey = Journey::default();
    if let Err(err) = run_journey(&ctx, &person, &mut journey).await {
        journey.error = Some(format!("{err:#}"));
    }
    journey
}

async fn run_journey(ctx: &Ctx, person: &Person, journey: &mut Journey) -> anyhow::Result<()> {
    ctx.publisher
        .publish(
            &ev::PatientUpserted {
                event_id: new_event_id().to_string(),
                tenant_id: TENANT.into(),
                occurred_at: Some(now_timestamp()),
                patient_id: person.id.clone(),
                given_name: person.given.clone(),
                family_name: person.family.clone(),
                phone_e164: person.phone.clone(),
                email: person.email.clone(),
                time_zone: ctx.zone.clone(),
                preferred_channel: Channel::Sms as i32,
                ..Default::default()
            },
            PATIENCE,
        )
        .await?;
    let (created, retries) = retry("CreatePlan", PATIENCE, || {
        let mut c = ctx.api.plans.clone();
        let patient_id = person.id.clone();
        async move {
            c.create_plan(plans::CreatePlanRequest {
                plan: Some(plans::Plan {
                    patient_id,
                    title: "Phase 1: restorations".into(),
                    ..Default::default()
                }),
            })
            .await
        }
    })
    .await?;
    journey.retries += retries;
    let plan_id = created.plan.map(|p| p.plan_id).unwrap_or_default();
    journey.plan_id = plan_id.clone();
    let (_, retries) = retry("CreatePlanItem", PATIENCE, || {
        let mut c = ctx.api.plans.clone();
        let plan_id = plan_id.clone();
        async move {
            c.create_plan_item(plans::CreatePlanItemRequest {
                plan_id,
                item: Some(plans::PlanItem {
                    code: "D2740".into(),
                    visit: 1,
                    practitioner_id: "dr-faults".into(),
                    ..Default::default()
                }),
            })
            .await
        }
    })
    .await?;
    journey.retries += retries;
    let (sent, retries) = retry("SendPlan", PATIENCE, || {
        let mut c = ctx.api.plans.clone();
        let plan_id = plan_id.clone();
        async move {
            c.send_plan(plans::SendPlanRequest {
                plan_id,
                sections: vec![
                    PortalSection::Cover as i32,
                    PortalSection::TreatmentDetails as i32,
                ],
                delivery_channel: Channel::Sms as i32,
                ..Default::default()
            })
            .await
        }
    })
    .await?;
    journey.retries += retries;
    let token = sent
        .portal_url
        .rsplit_once("/p/")
        .map(|(_, token)| token.to_string())
        .context("the portal link carries its token after /p/")?;
    journey.tokens.push(token.clone());

    // The patient reads the plan for a few seconds.
    let session = format!("s-{}", person.id);
    let view = page_view(
        &token,
        &plan_id,
        &session,
        &[("cover", 2_000), ("treatment_details", 6_000)],
    );
    journey.retries += ctx.beacons.post_until_accepted(&view, PATIENCE).await?;

    if person.books {
        let deadline = Instant::now() + Duration::from_secs(240);
        while ctx.sink.keys_to(&person.phone).len() < 2 {
            if Instant::now() > deadline {
                bail!("the second reminder did not come within 4 minutes; not booking");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let start = chrono::Utc::now() + chrono::Duration::days(7);
        ctx.publisher
            .publish(
                &ev::AppointmentBooked {
                    event_id: new_event_id().to_string(),
                    tenant_id: TENANT.into(),
                    occurred_at: Some(now_timestamp()),
                    appointment: Some(ev::Appointment {
                        appointment_id: format!("appt-{}", person.id),
                        patient_id: person.id.clone(),
                        slot: Some(Slot {
                            start_time: Some(timestamp(start)),
                            duration: seconds(3600),
                            practitioner_id: "dr-faults".into(),
                            location_id: String::new(),
                        }),
                        plan_id: plan_id.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                PATIENCE,
            )
            .await?;
        journey.booked = true;
    }
    Ok(())
}

/// A hot enquiry from someone not yet a patient; returns when its SMS reached the provider (or `None`
/// after `within`), timed from the publish.
async fn enquiry(ctx: &Ctx, person: &Person, within: Duration) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    ctx.publisher
        .publish(
            &ev::EnquiryCreated {
                event_id: new_event_id().to_string(),
                tenant_id: TENANT.into(),
                occurred_at: Some(now_timestamp()),
                enquiry_id: person.id.clone(),
                contact: Some(ev::DirectContact {
                    given_name: person.given.clone(),
                    family_name: person.family.clone(),
                    phone_e164: person.phone.clone(),
                    email: person.email.clone(),
                    time_zone: ctx.zone.clone(),
                }),
                channel: Channel::Sms as i32,
                source: "website form".into(),
                interest: "implants".into(),
                ..Default::default()
            },
            within,
        )
        .await?;
    while started.elapsed() < within {
        if !ctx.sink.keys_to(&person.phone).is_empty() {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// Starts one journey every `spacing`.
fn start_journeys(
    ctx: &Ctx,
    cohort: &[Person],
    spacing: Duration,
) -> tokio::task::JoinHandle<Vec<(Person, Journey)>> {
    let ctx = ctx.clone();
    let cohort = cohort.to_vec();
    tokio::spawn(async move {
        let mut tasks = Vec::with_capacity(cohort.len());
        for person in cohort {
            let ctx = ctx.clone();
            let p = person.clone();
            tasks.push((person, tokio::spawn(journey(ctx, p))));
            tokio::time::sleep(spacing).await;
        }
        let mut done = Vec::with_capacity(tasks.len());
        for (person, task) in tasks {
            let journey = task.await.unwrap_or_else(|err| Journey {
                error: Some(format!("the journey task failed: {err}")),
                ..Default::default()
            });
            done.push((person, journey));
        }
        done
    })
}

/// `/readyz` of every service every 100 ms, kept with the time of each sample.
#[derive(Clone, Default)]
struct Readiness {
    samples: Arc<Mutex<Vec<ReadySample>>>,
}

/// When, which service, and what its `/readyz` said (`None`: no answer).
type ReadySample = (Instant, Svc, Option<bool>);

impl Readiness {
    fn start(system: &System) -> (Self, tokio::task::JoinHandle<()>) {
        let readiness = Self::default();
        let addrs: Vec<(Svc, std::net::SocketAddr)> = Svc::ALL
            .iter()
            .map(|svc| (*svc, system.admin_addr(*svc)))
            .collect();
        let samples = readiness.samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let polls = addrs.iter().map(|(svc, addr)| async move {
                    let ready = followup_e2e::procs::http_status(
                        *addr,
                        "/readyz",
                        Duration::from_millis(500),
                    )
                    .await
                    .map(|status| status == 200);
                    (Instant::now(), *svc, ready)
                });
                let round = futures::future::join_all(polls).await;
                if let Ok(mut samples) = samples.lock() {
                    samples.extend(round);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (readiness, task)
    }

    fn samples(&self) -> Vec<ReadySample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether `svc` answered not ready (or not at all) between `from` and `to`.
    fn saw_outage(&self, svc: Svc, from: Instant, to: Instant) -> bool {
        self.samples()
            .iter()
            .any(|(at, s, ready)| *s == svc && *at >= from && *at <= to && *ready != Some(true))
    }

    /// The first sample after `from` where `svc` answered ready, from which it stayed ready for the
    /// following second; the time from `from` to it.
    fn recovered_after(&self, svc: Svc, from: Instant) -> Option<Duration> {
        let samples: Vec<(Instant, Option<bool>)> = self
            .samples()
            .into_iter()
            .filter(|(at, s, _)| *s == svc && *at >= from)
            .map(|(at, _, ready)| (at, ready))
            .collect();
        for (i, (at, ready)) in samples.iter().enumerate() {
            if *ready != Some(true) {
                continue;
            }
            let stays = samples[i..]
                .iter()
                .take_while(|(later, _)| *later <= *at + Duration::from_secs(1))
                .all(|(_, r)| *r == Some(true));
            if stays {
                return Some(at.duration_since(from));
            }
        }
        None
    }

    /// Waits until every service answered ready (and stayed so for a second) after `from`.
    async fn wait_all_recovered(
        &self,
        from: Instant,
        within: Duration,
    ) -> BTreeMap<Svc, Option<Duration>> {
        let deadline = Instant::now() + within;
        loop {
            let all: BTreeMap<Svc, Option<Duration>> = Svc::ALL
                .iter()
                .map(|svc| (*svc, self.recovered_after(*svc, from)))
                .collect();
            if all.values().all(Option::is_some) || Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One kill of the kills phase.
struct Kill {
    svc: Svc,
    at: Duration,
    down: Duration,
    ready: Duration,
}

/// One infrastructure fault of the infra phase.
struct InfraFault {
    what: String,
    outage: Duration,
    /// Services whose readiness showed the outage.
    reflected: Vec<Svc>,
    recovery: BTreeMap<Svc, Option<Duration>>,
    /// A hot enquiry published when the fault ended: publish to SMS at the provider.
    end_to_end: Option<Duration>,
    note: String,
}

/// What the poison phase found.
struct PoisonOutcome {
    subjects: usize,
    expected: usize,
    dead_lettered: usize,
    missing: Vec<String>,
    reasons: BTreeSet<String>,
}

#[derive(Default)]
struct Tally {
    people: usize,
    expected: usize,
    delivered: usize,
    lost: Vec<String>,
    extra: Vec<String>,
    repeats_in_window: Vec<String>,
    duplicates: Vec<String>,
    wrong_cases: Vec<String>,
    late_stops: Vec<String>,
    journey_errors: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = runtime.block_on(run(args))?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let bin_dir = if args.no_build {
        locate_binaries()?
    } else {
        build_binaries(!cfg!(debug_assertions))?
    };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let run_started = chrono::Utc::now();
    let load_before = followup_e2e::procs::load_average();

    let mut options = Options::new(bin_dir.clone());
    options.dir = args.dir.clone();
    options.log_filter = args.log_filter.clone();
    let mut system = System::start(options).await?;
    eprintln!(
        "system up: services from {}, data and logs in {}",
        bin_dir.display(),
        system.dir().display()
    );
    let api = system.api(TENANT, Role::Owner)?;
    let zone = daytime_zone();
    set_up_clinic(&api, &zone).await?;
    let ctx = Ctx {
        api: api.clone(),
        publisher: Publisher::connect(&system.nats_url()).await?,
        beacons: Beacons::new(
            system
                .http_addr(Svc::Engagement)
                .context("engagement serves beacons")?,
        ),
        sink: system.sink.view(),
        zone,
    };

    let mut everyone: Vec<(Person, Journey)> = Vec::new();
    let mut kills: Vec<Kill> = Vec::new();
    let mut infra: Vec<InfraFault> = Vec::new();
    let mut poison: Option<PoisonOutcome> = None;
    let limit = Duration::from_secs(args.recovery_limit_secs);
    let mut next_person = 0;
    let mut next_enquirer = 900;

    for phase in &args.phases {
        match phase.as_str() {
            "kills" => {
                let cohort = people(next_person, args.patients, "kills", false);
                next_person += args.patients;
                eprintln!("kills: {} journeys, {} kills", cohort.len(), args.kills);
                let journeys = start_journeys(&ctx, &cohort, Duration::from_millis(500));
                let phase_start = Instant::now();
                // Spread the kills over the journeys' life: the ramp, then the reminders 70 s behind it.
                let span =
                    Duration::from_millis(500) * cohort.len() as u32 + Duration::from_secs(70);
                let gap = span / (args.kills.max(1) as u32 + 1);
                for k in 0..args.kills {
                    let svc = Svc::ALL[k % Svc::ALL.len()];
                    let jitter = rng.gen_range(0.3..1.7);
                    tokio::time::sleep(gap.mul_f64(jitter)).await;
                    let at = phase_start.elapsed();
                    system.kill9(svc).await?;
                    let down = Duration::from_millis(rng.gen_range(0..2000));
                    tokio::time::sleep(down).await;
                    let ready = system.restart(svc).await?;
                    eprintln!(
                        "  kill {:>2}: {svc} at {:.1}s, down {:.1}s, ready {:.2}s after start",
                        k + 1,
                        at.as_secs_f64(),
                        down.as_secs_f64(),
                        ready.as_secs_f64()
                    );
                    kills.push(Kill {
                        svc,
                        at,
                        down,
                        ready,
                    });
                }
                everyone.extend(journeys.await?);
            }
            "infra" => {
                let cohort = people(next_person, args.infra_patients, "infra", false);
                next_person += args.infra_patients;
                eprintln!("infra: {} journeys", cohort.len());
                let (readiness, monitor) = Readiness::start(&system);
                let journeys = start_journeys(&ctx, &cohort, Duration::from_millis(300));
                tokio::time::sleep(Duration::from_secs(8)).await;

                for what in ["nats-server restart", "PostgreSQL restart"] {
                    let down_at = Instant::now();
                    if what.starts_with("nats") {
                        system.stop_nats().await?;
                    } else {
                        system.stop_postgres().await?;
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if what.starts_with("nats") {
                        system.start_nats().await?;
                    } else {
                        system.start_postgres().await?;
                    }
                    let up_at = Instant::now();
                    let probe = people(next_enquirer, 1, "infra", true);
                    next_enquirer += 1;
                    let end_to_end = enquiry(&ctx, &probe[0], Duration::from_secs(60)).await?;
                    everyone.push((probe[0].clone(), Journey::default()));
                    let recovery = readiness
                        .wait_all_recovered(up_at, Duration::from_secs(60))
                        .await;
                    let reflected = Svc::ALL
                        .iter()
                        .copied()
                        .filter(|svc| readiness.saw_outage(*svc, down_at, up_at))
                        .collect();
                    eprintln!(
                        "  {what}: down {:.1}s; ready again after {}; enquiry to SMS {}",
                        up_at.duration_since(down_at).as_secs_f64(),
                        format_recovery(&recovery),
                        format_opt(end_to_end)
                    );
                    infra.push(InfraFault {
                        what: what.to_string(),
                        outage: up_at.duration_since(down_at),
                        reflected,
                        recovery,
                        end_to_end,
                        note: String::new(),
                    });
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }

                let loop_start = Instant::now();
                let mut terminated = 0;
                let mut rounds = 0;
                while loop_start.elapsed() < Duration::from_secs(20) {
                    terminated += system.terminate_backends().await.unwrap_or(0);
                    rounds += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let loop_end = Instant::now();
                let probe = people(next_enquirer, 1, "infra", true);
                next_enquirer += 1;
                let end_to_end = enquiry(&ctx, &probe[0], Duration::from_secs(60)).await?;
                everyone.push((probe[0].clone(), Journey::default()));
                let recovery = readiness
                    .wait_all_recovered(loop_end, Duration::from_secs(60))
                    .await;
                let reflected = Svc::ALL
                    .iter()
                    .copied()
                    .filter(|svc| readiness.saw_outage(*svc, loop_start, loop_end))
                    .collect();
                eprintln!(
                    "  pg_terminate_backend loop: {terminated} connections in {rounds} rounds over 20 s; ready after {}; enquiry to SMS {}",
                    format_recovery(&recovery),
                    format_opt(end_to_end)
                );
                infra.push(InfraFault {
                    what: "pg_terminate_backend every 200 ms for 20 s".into(),
                    outage: loop_end.duration_since(loop_start),
                    reflected,
                    recovery,
                    end_to_end,
                    note: format!("{terminated} connections terminated in {rounds} rounds"),
                });
                everyone.extend(journeys.await?);
                monitor.abort();
            }
            "poison" => {
                let cohort = people(next_person, args.poison_patients, "poison", false);
                next_person += args.poison_patients;
                eprintln!("poison: every subject, then {} journeys", cohort.len());
                let expected = publish_poison(&ctx).await?;
                let journeys = start_journeys(&ctx, &cohort, Duration::from_millis(300));
                let probe = people(next_enquirer, 1, "poison", true);
                next_enquirer += 1;
                let _ = enquiry(&ctx, &probe[0], Duration::from_secs(60)).await?;
                everyone.push((probe[0].clone(), Journey::default()));
                let outcome = await_dead_letters(&ctx, expected, Duration::from_secs(120)).await?;
                eprintln!(
                    "  {} of {} (subject, consumer) pairs dead-lettered with a reason",
                    outcome.dead_lettered, outcome.expected
                );
                poison = Some(outcome);
                everyone.extend(journeys.await?);
            }
            other => bail!("unknown phase `{other}` (kills, infra, poison)"),
        }
    }

    eprintln!("waiting for every sequence to finish");
    let settled = settle(&ctx, &everyone, Duration::from_secs(300)).await;
    let tally = tally(&system, &ctx, &everyone).await?;
    let scan = scan_logs(&system, &everyone);
    let load_after = followup_e2e::procs::load_average();

    let mut ok = tally.lost.is_empty()
        && tally.duplicates.is_empty()
        && tally.extra.is_empty()
        && tally.wrong_cases.is_empty()
        && tally.journey_errors.is_empty()
        && scan.found.is_empty()
        && settled;
    for fault in &infra {
        if fault.recovery.values().any(|r| r.is_none_or(|r| r > limit)) {
            ok = false;
        }
    }
    if kills.iter().any(|k| k.ready > limit) {
        ok = false;
    }
    if let Some(p) = &poison
        && !p.missing.is_empty()
    {
        ok = false;
    }

    let summary = summary(SummaryInput {
        seed,
        started: run_started,
        load: (load_before, load_after),
        kills: &kills,
        infra: &infra,
        poison: poison.as_ref(),
        tally: &tally,
        scan: &scan,
        settled,
        ok,
        system: &system,
    });
    println!("{summary}");
    if let Some(path) = &args.summary {
        std::fs::write(path, &summary)?;
    }
    std::fs::write(system.dir().join("summary.md"), &summary)?;
    system.shutdown(Duration::from_secs(5)).await?;
    Ok(ok)
}

fn format_opt(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.2}s", d.as_secs_f64()))
}

fn format_recovery(recovery: &BTreeMap<Svc, Option<Duration>>) -> String {
    recovery
        .iter()
        .map(|(svc, d)| format!("{svc} {}", format_opt(*d)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Publishes an undecodable event on every subject of the contract; returns the (subject, consumer)
/// pairs that must dead-letter it, from the consumers the services declared.
async fn publish_poison(ctx: &Ctx) -> anyhow::Result<BTreeSet<(String, String)>> {
    let js = ctx.publisher.jetstream();
    let mut filters: Vec<(Stream, String, String)> = Vec::new();
    for stream in [Stream::Clinic, Stream::Followup, Stream::Beacons] {
        let mut consumers = js
            .get_stream(stream.name())
            .await
            .map_err(|e| anyhow::anyhow!("stream {}: {e}", stream.name()))?
            .consumers();
        use futures::StreamExt as _;
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| anyhow::anyhow!("listing consumers: {e}"))?;
            filters.push((
                stream,
                info.name.clone(),
                info.config.filter_subject.clone(),
            ));
        }
    }
    let mut expected = BTreeSet::new();
    for (i, kind) in EVENTS.iter().enumerate() {
        let subject = kind.subject(TENANT)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Followup-Fault-Run", "poison");
        // Half garbage protobuf, half broken proto3 JSON: both ways a publisher can go wrong.
        let payload = if i % 2 == 0 {
            bytes::Bytes::from_static(b"\xff\xff\xff\x07 not an event")
        } else {
            headers.insert("Content-Type", "application/json");
            bytes::Bytes::from_static(b"{\"eventId\": \"poison\", \"tenantId\": ")
        };
        ctx.publisher
            .publish_raw(
                &subject,
                headers,
                payload,
                &format!("poison-{}", new_event_id()),
                PATIENCE,
            )
            .await?;
        for (stream, consumer, filter) in &filters {
            if *stream == kind.stream && subject_matches(filter, &subject) {
                expected.insert((subject.clone(), consumer.clone()));
            }
        }
    }
    Ok(expected)
}

/// Reads DEADLETTER until every expected (subject, consumer) pair is there with a reason.
async fn await_dead_letters(
    ctx: &Ctx,
    expected: BTreeSet<(String, String)>,
    within: Duration,
) -> anyhow::Result<PoisonOutcome> {
    let js = ctx.publisher.jetstream();
    let deadline = Instant::now() + within;
    let mut found: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut next_seq = 1;
    loop {
        let mut stream = js
            .get_stream("DEADLETTER")
            .await
            .map_err(|e| anyhow::anyhow!("DEADLETTER: {e}"))?;
        let last = stream
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("DEADLETTER info: {e}"))?
            .state
            .last_sequence;
        while next_seq <= last {
            if let Ok(message) = stream.get_raw_message(next_seq).await {
                let header = |name: &str| {
                    message
                        .headers
                        .get(name)
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default()
                };
                if header("Followup-Fault-Run") == "poison" {
                    found.insert(
                        (
                            header("Followup-Original-Subject"),
                            header("Followup-Consumer"),
                        ),
                        header("Followup-Deadletter-Reason"),
                    );
                }
            }
            next_seq += 1;
        }
        let complete = expected
            .iter()
            .all(|pair| found.get(pair).is_some_and(|reason| !reason.is_empty()));
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|pair| found.get(*pair).is_none_or(|r| r.is_empty()))
        .map(|(subject, consumer)| format!("{subject} by {consumer}"))
        .collect();
    let subjects: BTreeSet<&String> = expected.iter().map(|(s, _)| s).collect();
    Ok(PoisonOutcome {
        subjects: subjects.len(),
        expected: expected.len(),
        dead_lettered: expected.len() - missing.len(),
        missing,
        reasons: found
            .values()
            .map(|r| r.chars().take(90).collect())
            .collect(),
    })
}

/// Waits until every patient's enrollment ended (finished, or stopped for the booking) and every
/// expected message reached the provider, or `within` passed. Returns whether all settled.
async fn settle(ctx: &Ctx, everyone: &[(Person, Journey)], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let mut pending = 0;
        for (person, journey) in everyone {
            if journey.error.is_some() {
                continue;
            }
            if ctx.sink.keys_to(&person.phone).len() < person.expected_messages() {
                pending += 1;
                continue;
            }
            if person.enquirer {
                continue;
            }
            let ended = enrollments(ctx, &person.id).await.is_some_and(|list| {
                !list.is_empty()
                    && list.iter().all(|e| {
                        e.state == scheduler::EnrollmentState::Finished as i32
                            || e.state == scheduler::EnrollmentState::Stopped as i32
                    })
            });
            if !ended {
                pending += 1;
            }
        }
        if pending == 0 {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("{pending} people still unsettled after {within:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn enrollments(ctx: &Ctx, patient_id: &str) -> Option<Vec<scheduler::Enrollment>> {
    let mut c = ctx.api.scheduler.clone();
    c.list_enrollments(scheduler::ListEnrollmentsRequest {
        patient_id: patient_id.into(),
        page_size: 50,
        ..Default::default()
    })
    .await
    .ok()
    .map(|r| r.into_inner().enrollments)
}

async fn tally(
    system: &System,
    ctx: &Ctx,
    everyone: &[(Person, Journey)],
) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        people: everyone.len(),
        ..Default::default()
    };
    // Notifications' evidence of the accept-then-crash window: an attempt left UNKNOWN (4), written
    // before the request and never replaced because the process died.
    let pool = system.db(Svc::Notifications).await?;
    let unknown: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT m.tenant_id || ':' || m.idempotency_key FROM messages m
         JOIN delivery_attempts a ON a.tenant_id = m.tenant_id AND a.message_id = m.id
         WHERE a.outcome = 4 AND m.tenant_id = $1",
    )
    .bind(TENANT)
    .fetch_all(&pool)
    .await?;
    let unknown: BTreeSet<String> = unknown.into_iter().collect();
    let work_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE tenant_id = $1 AND due_at IS NOT NULL",
    )
    .bind(TENANT)
    .fetch_one(&pool)
    .await?;
    if work_left > 0 {
        tally.journey_errors.push(format!(
            "{work_left} messages still queued in notifications"
        ));
    }

    let received = ctx.sink.received();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for r in &received {
        *by_key.entry(r.key.as_str()).or_default() += 1;
    }
    for (person, journey) in everyone {
        let expected = person.expected_messages();
        tally.expected += expected;
        if let Some(err) = &journey.error {
            tally
                .journey_errors
                .push(format!("{} ({}): {err}", person.id, person.phase));
        }
        let keys = ctx.sink.keys_to(&person.phone);
        tally.delivered += keys.len().min(expected);
        let enrollment_ids: BTreeSet<&str> =
            keys.iter().filter_map(|k| k.split(':').nth(1)).collect();
        if keys.len() < expected {
            tally.lost.push(format!(
                "{} ({}): {} of {expected} messages ({keys:?})",
                person.id,
                person.phase,
                keys.len()
            ));
        } else if keys.len() > expected {
            // A booked patient's third reminder: late stop or a duplicate intent?
            let late = person.books
                && keys.len() == 3
                && enrollment_ids.len() == 1
                && keys
                    .iter()
                    .all(|k| SEND_STEPS.iter().any(|s| k.ends_with(&format!(":{s}"))));
            let line = format!(
                "{} ({}): {} messages for {expected} expected ({keys:?})",
                person.id,
                person.phase,
                keys.len()
            );
            if late {
                tally.late_stops.push(line);
            } else {
                tally.extra.push(line);
            }
        }
        if !person.enquirer && enrollment_ids.len() > 1 {
            tally.extra.push(format!(
                "{}: messages from {} enrollments",
                person.id,
                enrollment_ids.len()
            ));
        }
        for key in &keys {
            let requests = by_key.get(key.as_str()).copied().unwrap_or(0);
            if requests > 1 {
                let line = format!("{key}: {requests} requests");
                if unknown.contains(key) {
                    tally.repeats_in_window.push(line);
                } else {
                    tally.duplicates.push(line);
                }
            }
        }
        if !person.enquirer && !journey.plan_id.is_empty() {
            let case = retry("GetCase", Duration::from_secs(30), || {
                let mut c = ctx.api.cases.clone();
                let case_id = journey.plan_id.clone();
                async move {
                    c.get_case(cases::GetCaseRequest {
                        case_id,
                        timeline_page_size: 1,
                    })
                    .await
                }
            })
            .await;
            let status = case
                .ok()
                .and_then(|(c, _)| c.case)
                .map(|c| c.status)
                .unwrap_or_default();
            let fine = if person.books {
                status == CaseStatus::PatientBooked as i32
            } else {
                status == CaseStatus::SentViewed as i32
                    || status == CaseStatus::WaitingForResponse as i32
            };
            if !fine {
                tally.wrong_cases.push(format!(
                    "{}: case {} is {:?}",
                    person.id,
                    journey.plan_id,
                    CaseStatus::try_from(status).unwrap_or(CaseStatus::Unspecified)
                ));
            }
            if person.books
                && let Some(list) = enrollments(ctx, &person.id).await
                && !list
                    .iter()
                    .any(|e| e.stop_reason == StopReason::Booked as i32)
            {
                tally
                    .wrong_cases
                    .push(format!("{}: no enrollment stopped as BOOKED", person.id));
            }
        }
    }
    Ok(tally)
}

struct Scan {
    files: usize,
    bytes: usize,
    values: usize,
    found: Vec<String>,
}

/// Searches every log of the run for the fixture's personal data and the message bodies sent.
fn scan_logs(system: &System, everyone: &[(Person, Journey)]) -> Scan {
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();
    for (person, journey) in everyone {
        secrets.insert(person.given.clone(), format!("name of {}", person.id));
        secrets.insert(person.family.clone(), format!("name of {}", person.id));
        secrets.insert(person.phone.clone(), format!("phone of {}", person.id));
        secrets.insert(
            person.phone.trim_start_matches("+44").to_string(),
            format!("national phone of {}", person.id),
        );
        secrets.insert(person.email.clone(), format!("email of {}", person.id));
        for token in &journey.tokens {
            secrets.insert(token.clone(), format!("portal link of {}", person.id));
        }
    }
    for received in system.sink.received() {
        secrets.insert(received.body.clone(), format!("body of {}", received.key));
    }
    let mut scan = Scan {
        files: 0,
        bytes: 0,
        values: secrets.len(),
        found: Vec::new(),
    };
    for file in system.log_files() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        scan.files += 1;
        scan.bytes += text.len();
        for (secret, what) in &secrets {
            if !secret.is_empty() && text.contains(secret.as_str()) {
                scan.found.push(format!(
                    "{what} in {}",
                    file.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                ));
            }
        }
    }
    scan
}

struct SummaryInput<'a> {
    seed: u64,
    started: chrono::DateTime<chrono::Utc>,
    load: (Option<LoadAverage>, Option<LoadAverage>),
    kills: &'a [Kill],
    infra: &'a [InfraFault],
    poison: Option<&'a PoisonOutcome>,
    tally: &'a Tally,
    scan: &'a Scan,
    settled: bool,
    ok: bool,
    system: &'a System,
}

fn summary(s: SummaryInput<'_>) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let t = s.tally;
    line(format!(
        "## Fault run {} ({})",
        s.started.format("%Y-%m-%d %H:%M UTC"),
        if s.ok { "PASS" } else { "FAIL" }
    ));
    line(String::new());
    line(format!(
        "Command: `{}` (seed {}; {} binaries); load average before {} and after {} (2 cores).",
        std::env::args().collect::<Vec<_>>().join(" "),
        s.seed,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        fmt_load(s.load.0),
        fmt_load(s.load.1)
    ));
    line(String::new());
    line(format!(
        "- **Messages: {} expected, {} delivered, {} lost, {} duplicated** ({} people: patients with 3 reminders, or 2 when they booked; enquirers 1). Repeats of one key inside the accept-then-crash window: {}. Booked after the third reminder was already due (late stop, not a duplicate): {}.",
        t.expected,
        t.delivered,
        t.lost.len(),
        t.duplicates.len() + t.extra.len(),
        t.people,
        t.repeats_in_window.len(),
        t.late_stops.len()
    ));
    line(format!(
        "- Cases with the wrong status or booking not stopping the sequence: {}; journeys that failed: {}; every sequence ended: {}.",
        t.wrong_cases.len(),
        t.journey_errors.len(),
        if s.settled { "yes" } else { "no" }
    ));
    if !s.kills.is_empty() {
        let mut per: BTreeMap<Svc, Vec<&Kill>> = BTreeMap::new();
        for k in s.kills {
            per.entry(k.svc).or_default().push(k);
        }
        let max = s.kills.iter().map(|k| k.ready).max().unwrap_or_default();
        let mut ready: Vec<f64> = s.kills.iter().map(|k| k.ready.as_secs_f64()).collect();
        ready.sort_by(f64::total_cmp);
        line(format!(
            "- **kill -9: {} kills** ({}), each service started again after 0-2 s; ready (spawn to `/readyz` 200) median {:.2} s, max {:.2} s.",
            s.kills.len(),
            per.iter()
                .map(|(svc, ks)| format!("{svc} {}", ks.len()))
                .collect::<Vec<_>>()
                .join(", "),
            ready.get(ready.len() / 2).copied().unwrap_or_default(),
            max.as_secs_f64()
        ));
        let moments: Vec<String> = s
            .kills
            .iter()
            .map(|k| {
                format!(
                    "{} {:.0}s (down {:.1}s)",
                    k.svc,
                    k.at.as_secs_f64(),
                    k.down.as_secs_f64()
                )
            })
            .collect();
        line(format!("  Kill moments: {}.", moments.join(", ")));
    }
    for f in s.infra {
        line(format!(
            "- **{}**: outage {:.1} s; `/readyz` showed it in {}; every service ready again {} after it ended ({}); a hot enquiry published then reached the provider in {}.{}",
            f.what,
            f.outage.as_secs_f64(),
            if f.reflected.len() == Svc::ALL.len() {
                "all five services".to_string()
            } else {
                format!(
                    "{} of 5 ({})",
                    f.reflected.len(),
                    f.reflected
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            worst_recovery(&f.recovery),
            format_recovery(&f.recovery),
            format_opt(f.end_to_end),
            if f.note.is_empty() {
                String::new()
            } else {
                format!(" {}.", f.note)
            }
        ));
    }
    if let Some(p) = s.poison {
        line(format!(
            "- **Poison**: an undecodable event on each of {} subjects; {} of {} (subject, consumer) pairs dead-lettered with their reason; the journeys published right behind them completed (see messages). Reasons seen: {}.",
            p.subjects,
            p.dead_lettered,
            p.expected,
            p.reasons
                .iter()
                .take(4)
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    line(format!(
        "- **Logs**: {} files, {:.1} MB, searched for {} values (names, phone numbers, emails, message bodies, portal link tokens): {} found.",
        s.scan.files,
        s.scan.bytes as f64 / 1e6,
        s.scan.values,
        s.scan.found.len()
    ));
    line(format!(
        "- Starts per service: {}.",
        Svc::ALL
            .iter()
            .map(|svc| format!("{svc} {}", s.system.starts(*svc)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let lists: [(&str, &Vec<String>); 8] = [
        ("Lost", &t.lost),
        ("Duplicated (same key)", &t.duplicates),
        ("Extra intents", &t.extra),
        ("Accept-then-crash window", &t.repeats_in_window),
        ("Late stops", &t.late_stops),
        ("Wrong cases", &t.wrong_cases),
        ("Journey errors", &t.journey_errors),
        ("Personal data in logs", &s.scan.found),
    ];
    for (title, items) in lists {
        if !items.is_empty() {
            line(format!("\n{title}:"));
            for item in items.iter().take(20) {
                line(format!("- {item}"));
            }
            if items.len() > 20 {
                line(format!("- … and {} more", items.len() - 20));
            }
        }
    }
    if let Some(p) = s.poison
        && !p.missing.is_empty()
    {
        line("\nNot dead-lettered:".into());
        for m in &p.missing {
            line(format!("- {m}"));
        }
    }
    out
}

type LoadAverage = (f64, f64, f64);

fn fmt_load(load: Option<LoadAverage>) -> String {
    load.map_or("?".into(), |(a, b, c)| format!("{a:.2} {b:.2} {c:.2}"))
}

/// "within N s" for the slowest service, or "NOT" when one never recovered.
fn worst_recovery(recovery: &BTreeMap<Svc, Option<Duration>>) -> String {
    let mut worst = Duration::ZERO;
    for d in recovery.values() {
        match d {
            Some(d) => worst = worst.max(*d),
            None => return "NOT".into(),
        }
    }
    format!("within {:.2} s", worst.as_secs_f64())
}
