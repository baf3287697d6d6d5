//! `followup cases …`: the follow-up dashboard in a terminal — the list, one case with its timeline, the
//! queue of whom to call next, and the leakage report — plus the staff actions (status, note, owner), a
//! live watch, and `simulate` to publish the events of a plan's journey on the dev stack.
//!
//! Talks gRPC to `--addr` (default the dev stack's cases service) with `--token` (default: an owner token
//! for the dev clinic signed with the dev stack's key, as `followup token` prints). Money is shown with
//! its currency; times in the clinic's time zone (its case settings).

use anyhow::{Context as _, bail};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use clap::{Args, Subcommand, ValueEnum};
use followup_cases::domain::vocab::{Money, currency_exponent};
use followup_platform::event::{from_timestamp, new_event_id, timestamp};
use followup_proto::followup::cases::v1 as pb;
use followup_proto::followup::cases::v1::cases_service_client::CasesServiceClient;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use followup_proto::subjects::Event as _;
use tonic::transport::Channel;

use crate::client::{Access, status_error};

#[derive(Args)]
pub struct CasesArgs {
    /// The cases service's gRPC address.
    #[arg(
        long,
        global = true,
        env = "FOLLOWUP_CASES_ADDR",
        default_value = "http://localhost:50052"
    )]
    addr: String,
    #[command(flatten)]
    access: Access,
    #[command(subcommand)]
    command: CasesCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StatusArg {
    Draft,
    NotViewed,
    Viewed,
    Waiting,
    Booked,
    Rejected,
    Completed,
    Superseded,
}

impl StatusArg {
    fn proto(self) -> common::CaseStatus {
        use common::CaseStatus as S;
        match self {
            StatusArg::Draft => S::DraftNotSent,
            StatusArg::NotViewed => S::SentNotViewed,
            StatusArg::Viewed => S::SentViewed,
            StatusArg::Waiting => S::WaitingForResponse,
            StatusArg::Booked => S::PatientBooked,
            StatusArg::Rejected => S::PatientRejected,
            StatusArg::Completed => S::TreatmentCompleted,
            StatusArg::Superseded => S::Superseded,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SortArg {
    Sent,
    Value,
    Priority,
    Activity,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Step {
    /// plans plan_sent (creates the case: SENT_NOT_VIEWED).
    Sent,
    /// engagement plan_viewed (SENT_VIEWED).
    Viewed,
    /// A patient's portal approval (plans plan_approved).
    Approved,
    /// A patient's reply (notifications patient_replied).
    Replied,
    /// The clinic system's appointment.booked for the plan (PATIENT_BOOKED).
    Booked,
}

#[derive(Subcommand)]
enum CasesCommand {
    /// The cases of the clinic, filtered and sorted, with the totals of the whole filtered set.
    List {
        /// Only these statuses (repeat the flag for several).
        #[arg(long = "status", value_enum)]
        statuses: Vec<StatusArg>,
        /// Only this owner's cases (staff id).
        #[arg(long)]
        owner: Option<String>,
        /// Only cases without an owner.
        #[arg(long, conflicts_with = "owner")]
        unassigned: bool,
        /// Only viewed cases.
        #[arg(long, conflicts_with = "not_viewed")]
        viewed: bool,
        /// Only cases not viewed yet.
        #[arg(long)]
        not_viewed: bool,
        /// Patient name contains these words (case- and accent-insensitive).
        #[arg(long)]
        search: Option<String>,
        /// Last sent on or after this clinic-local day (YYYY-MM-DD).
        #[arg(long)]
        sent_after: Option<NaiveDate>,
        /// Last sent before this clinic-local day (YYYY-MM-DD).
        #[arg(long)]
        sent_before: Option<NaiveDate>,
        /// Value at least this much, e.g. 1000 or 1250.50 (needs --currency).
        #[arg(long, requires = "currency")]
        min: Option<String>,
        /// Value at most this much (needs --currency).
        #[arg(long, requires = "currency")]
        max: Option<String>,
        /// ISO currency of --min/--max, e.g. EUR.
        #[arg(long)]
        currency: Option<String>,
        /// Only the options of one alternative group.
        #[arg(long)]
        group: Option<String>,
        #[arg(long, value_enum, default_value = "sent")]
        sort: SortArg,
        /// Reverse the sort.
        #[arg(long)]
        reverse: bool,
        /// Cases per page (at most 200).
        #[arg(long, default_value_t = 50)]
        limit: i32,
        /// Continue from a previous page's token.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// One case: its facts, treatments, notes and timeline (newest first).
    Show {
        case_id: String,
        /// Timeline entries to show.
        #[arg(long, default_value_t = 50)]
        timeline: i32,
    },
    /// The follow-up queue: whom to call first, and why.
    Queue {
        /// Only this owner's queue.
        #[arg(long)]
        owner: Option<String>,
        /// With --owner, also the unassigned cases.
        #[arg(long)]
        include_unassigned: bool,
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// The leakage report: presented, accepted, unscheduled, recovered — per currency.
    Report {
        /// First clinic-local day (default: 30 days ago).
        #[arg(long)]
        from: Option<NaiveDate>,
        /// Last clinic-local day, included (default: today).
        #[arg(long)]
        to: Option<NaiveDate>,
        /// Only this owner's cases.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Set a case's status after a call (reopening needs --reason).
    Status {
        case_id: String,
        #[arg(value_enum)]
        status: StatusArg,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Add a note to a case.
    Note { case_id: String, text: String },
    /// Assign the accountable owner (a staff id; "" to unassign).
    Assign { case_id: String, owner: String },
    /// Print case changes as they happen (Ctrl-C to stop).
    Watch,
    /// Publish one step of a plan's journey on the dev stack's NATS, as plans, engagement, notifications
    /// or the clinic system would.
    Simulate {
        #[arg(value_enum)]
        step: Step,
        /// The plan (= case) id; `sent` makes a new one when omitted.
        #[arg(long)]
        plan: Option<String>,
        #[arg(long, default_value = "patient-1")]
        patient: String,
        /// The plan's value for `sent`, e.g. 2500 or 2500.00.
        #[arg(long, default_value = "2500")]
        value: String,
        #[arg(long, default_value = "EUR")]
        currency: String,
        #[arg(long, default_value = "Implant and crown")]
        title: String,
        /// Owner (staff id) for `sent`.
        #[arg(long, default_value = "")]
        owner: String,
    },
}

pub async fn run(args: CasesArgs) -> anyhow::Result<()> {
    if let CasesCommand::Simulate { .. } = &args.command {
        return simulate(&args).await;
    }
    let token = args.access.token()?;
    let client = CasesServiceClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to the cases service at {}", args.addr))?;
    let mut api = Api { client, token };
    let zone = api.zone().await?;
    match &args.command {
        CasesCommand::List {
            statuses,
            owner,
            unassigned,
            viewed,
            not_viewed,
            search,
            sent_after,
            sent_before,
            min,
            max,
            currency,
            group,
            sort,
            reverse,
            limit,
            page_token,
        } => {
            let money = |text: &Option<String>| -> anyhow::Result<Option<common::Money>> {
                match (text, currency) {
                    (Some(text), Some(currency)) => Ok(Some(parse_money(text, currency)?)),
                    _ => Ok(None),
                }
            };
            let request = pb::ListCasesRequest {
                statuses: statuses.iter().map(|s| s.proto() as i32).collect(),
                sent_after: sent_after.map(|d| local_midnight(d, zone)).transpose()?,
                sent_before: sent_before.map(|d| local_midnight(d, zone)).transpose()?,
                owner_staff_id: owner.clone().unwrap_or_default(),
                unassigned: *unassigned,
                min_value: money(min)?,
                max_value: money(max)?,
                viewed: match (viewed, not_viewed) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                patient_query: search.clone().unwrap_or_default(),
                alternative_group_id: group.clone().unwrap_or_default(),
                order_by: match sort {
                    SortArg::Sent => pb::CaseOrder::SentTime,
                    SortArg::Value => pb::CaseOrder::Value,
                    SortArg::Priority => pb::CaseOrder::Priority,
                    SortArg::Activity => pb::CaseOrder::LastActivity,
                } as i32,
                reverse: *reverse,
                page_size: *limit,
                page_token: page_token.clone().unwrap_or_default(),
            };
            let response = api
                .client
                .list_cases(api.authed(request))
                .await
                .map_err(status_error)?
                .into_inner();
            print_list(&response, zone);
        }
        CasesCommand::Show { case_id, timeline } => {
            let response = api
                .client
                .get_case(api.authed(pb::GetCaseRequest {
                    case_id: case_id.clone(),
                    timeline_page_size: *timeline,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            print_case(&response, zone);
        }
        CasesCommand::Queue {
            owner,
            include_unassigned,
            limit,
        } => {
            let response = api
                .client
                .list_follow_up_queue(api.authed(pb::ListFollowUpQueueRequest {
                    owner_staff_id: owner.clone().unwrap_or_default(),
                    include_unassigned: *include_unassigned,
                    page_size: *limit,
                    page_token: String::new(),
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            print_queue(&response);
        }
        CasesCommand::Report { from, to, owner } => {
            let today = Utc::now().with_timezone(&zone).date_naive();
            let to = to.unwrap_or(today);
            let from = from.unwrap_or(to - chrono::Duration::days(29));
            if from > to {
                bail!("--from {from} is after --to {to}");
            }
            let end = to.succ_opt().context("--to is out of range")?;
            let response = api
                .client
                .get_leakage_report(api.authed(pb::GetLeakageReportRequest {
                    start_time: Some(local_midnight(from, zone)?),
                    end_time: Some(local_midnight(end, zone)?),
                    owner_staff_id: owner.clone().unwrap_or_default(),
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            print_report(&response, from, to);
        }
        CasesCommand::Status {
            case_id,
            status,
            reason,
        } => {
            let response = api
                .client
                .update_case_status(api.authed(pb::UpdateCaseStatusRequest {
                    case_id: case_id.clone(),
                    status: status.proto() as i32,
                    reason: reason.clone(),
                    expected_status: 0,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(case) = response.case {
                println!("{} is now {}", case.case_id, status_words(case.status));
            }
        }
        CasesCommand::Note { case_id, text } => {
            let note = api
                .client
                .add_note(api.authed(pb::AddNoteRequest {
                    case_id: case_id.clone(),
                    text: text.clone(),
                }))
                .await
                .map_err(status_error)?
                .into_inner()
                .note;
            if let Some(note) = note {
                println!("note {} added", note.note_id);
            }
        }
        CasesCommand::Assign { case_id, owner } => {
            let case = api
                .client
                .assign_owner(api.authed(pb::AssignOwnerRequest {
                    case_id: case_id.clone(),
                    owner_staff_id: owner.clone(),
                }))
                .await
                .map_err(status_error)?
                .into_inner()
                .case;
            if let Some(case) = case {
                let who = if case.owner_staff_id.is_empty() {
                    "nobody".to_string()
                } else {
                    owner_words(&case)
                };
                println!("{} is now owned by {who}", case.case_id);
            }
        }
        CasesCommand::Watch => {
            let mut stream = api
                .client
                .watch_cases(api.authed(pb::WatchCasesRequest::default()))
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!(
                "watching the cases of {} (Ctrl-C to stop)",
                args.access.tenant
            );
            while let Some(change) = stream.message().await.map_err(status_error)? {
                let Some(case) = change.case else { continue };
                let what = change
                    .entry
                    .map(|e| e.summary)
                    .unwrap_or_else(|| status_words(case.status).to_string());
                println!(
                    "{}  {:<20}  {:<22}  {}  {}",
                    when(Some(timestamp(Utc::now())), zone),
                    truncate(&patient_words(&case), 20),
                    status_words(case.status),
                    case.case_id,
                    what
                );
            }
        }
        CasesCommand::Simulate { .. } => unreachable_simulate()?,
    }
    Ok(())
}

fn unreachable_simulate() -> anyhow::Result<()> {
    bail!("simulate is handled before connecting to the service")
}

struct Api {
    client: CasesServiceClient<Channel>,
    token: String,
}

impl Api {
    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// The clinic's time zone, for dates a person reads.
    async fn zone(&mut self) -> anyhow::Result<chrono_tz::Tz> {
        let settings = self
            .client
            .get_case_settings(self.authed(pb::GetCaseSettingsRequest {}))
            .await
            .map_err(status_error)?
            .into_inner()
            .settings
            .unwrap_or_default();
        Ok(settings.time_zone.parse().unwrap_or(chrono_tz::UTC))
    }
}

fn local_midnight(day: NaiveDate, zone: chrono_tz::Tz) -> anyhow::Result<prost_types::Timestamp> {
    let midnight = day.and_hms_opt(0, 0, 0).context("midnight")?;
    let local = zone
        .from_local_datetime(&midnight)
        .earliest()
        .with_context(|| format!("{day} has no midnight in {zone}"))?;
    Ok(timestamp(local.with_timezone(&Utc)))
}

/// "1250.50" in EUR → 125050 minor units.
fn parse_money(text: &str, currency: &str) -> anyhow::Result<common::Money> {
    let currency = currency.trim().to_uppercase();
    let exponent = currency_exponent(&currency);
    let text = text.trim().replace(',', "");
    let (whole, fraction) = text.split_once('.').unwrap_or((text.as_str(), ""));
    if fraction.len() > exponent as usize {
        bail!("{text} has more decimals than {currency} allows ({exponent})");
    }
    let whole: i64 = whole
        .parse()
        .with_context(|| format!("`{text}` is not an amount"))?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<width$}", width = exponent as usize)
            .parse()
            .with_context(|| format!("`{text}` is not an amount"))?
    };
    let amount_minor = whole
        .checked_mul(10i64.pow(exponent))
        .and_then(|w| w.checked_add(fraction))
        .context("amount too large")?;
    Ok(common::Money {
        amount_minor,
        currency,
    })
}

fn money(m: Option<&common::Money>) -> String {
    match m {
        Some(m) if !m.currency.is_empty() => {
            Money::new(m.amount_minor, m.currency.clone()).display()
        }
        _ => "-".into(),
    }
}

fn monies(list: &[common::Money]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.iter()
            .map(|m| money(Some(m)))
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

fn when(t: Option<prost_types::Timestamp>, zone: chrono_tz::Tz) -> String {
    t.as_ref()
        .and_then(from_timestamp)
        .map(|t: DateTime<Utc>| t.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

fn status_words(n: i32) -> &'static str {
    use common::CaseStatus as S;
    match S::try_from(n).unwrap_or(S::Unspecified) {
        S::DraftNotSent => "draft, not sent",
        S::SentNotViewed => "sent, not viewed",
        S::SentViewed => "sent, viewed",
        S::WaitingForResponse => "waiting for response",
        S::PatientBooked => "booked",
        S::PatientRejected => "rejected",
        S::TreatmentCompleted => "treatment completed",
        S::Superseded => "superseded",
        S::Unspecified => "-",
    }
}

fn patient_words(case: &pb::Case) -> String {
    if case.patient_name.is_empty() {
        case.patient_id.clone()
    } else {
        case.patient_name.clone()
    }
}

fn owner_words(case: &pb::Case) -> String {
    match (case.owner_name.as_str(), case.owner_staff_id.as_str()) {
        (_, "") => "-".into(),
        ("", id) => id.into(),
        (name, _) => name.into(),
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// A table with a header, columns as wide as their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i] - c.chars().count())))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn print_list(response: &pb::ListCasesResponse, zone: chrono_tz::Tz) {
    let rows: Vec<Vec<String>> = response
        .cases
        .iter()
        .map(|c| {
            vec![
                status_words(c.status).to_string(),
                truncate(&patient_words(c), 24),
                truncate(&c.title, 28),
                money(c.value.as_ref()),
                when(c.last_sent_time, zone),
                if c.viewed {
                    format!("{}x", c.view_count)
                } else {
                    "no".into()
                },
                truncate(&owner_words(c), 18),
                c.case_id.clone(),
            ]
        })
        .collect();
    table(
        &[
            "STATUS", "PATIENT", "PLAN", "VALUE", "SENT", "VIEWED", "OWNER", "CASE",
        ],
        &rows,
    );
    println!();
    println!(
        "{} cases, {} in total",
        response.total_count,
        monies(&response.total_value)
    );
    let tabs: Vec<String> = response
        .status_counts
        .iter()
        .map(|s| format!("{} {}", status_words(s.status), s.count))
        .collect();
    if !tabs.is_empty() {
        println!("by status: {}", tabs.join(" · "));
    }
    if !response.next_page_token.is_empty() {
        println!("more: --page-token {}", response.next_page_token);
    }
}

fn print_case(response: &pb::GetCaseResponse, zone: chrono_tz::Tz) {
    let Some(c) = &response.case else { return };
    let view_time = c.total_view_time.as_ref().map_or(0, |d| d.seconds);
    println!("{}  ({})", c.title, c.case_id);
    let facts = [
        (
            "Patient",
            format!("{} ({})", patient_words(c), c.patient_id),
        ),
        ("Status", status_words(c.status).to_string()),
        ("Why", c.reason.clone()),
        ("Value", money(c.value.as_ref())),
        ("Owner", owner_words(c)),
        (
            "Sent",
            format!(
                "{} (first {}, {} sends, version {})",
                when(c.last_sent_time, zone),
                when(c.first_sent_time, zone),
                c.send_count,
                c.plan_version
            ),
        ),
        (
            "Viewed",
            if c.viewed {
                format!(
                    "{}, {} min in all, first {}, last {}",
                    match c.view_count {
                        1 => "once".to_string(),
                        2 => "twice".to_string(),
                        n => format!("{n} times"),
                    },
                    (view_time + 30) / 60,
                    when(c.first_view_time, zone),
                    when(c.last_view_time, zone)
                )
            } else {
                "not yet".into()
            },
        ),
        (
            "Sections",
            if c.section_times.is_empty() {
                "-".to_string()
            } else {
                c.section_times
                    .iter()
                    .map(|s| {
                        let name = followup_cases::domain::vocab::Section::from_number(s.section)
                            .map_or("other", |s| s.words());
                        let secs = s.view_time.as_ref().map_or(0, |d| d.seconds);
                        format!("{name} {}:{:02}", secs / 60, secs % 60)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("Approved", when(c.patient_approve_time, zone)),
        ("Last reply", when(c.last_reply_time, zone)),
        ("Reminders", c.reminders_sent.to_string()),
        ("Next follow-up", when(c.next_follow_up_time, zone)),
        ("Last contact", when(c.last_contact_time, zone)),
        ("Booked", when(c.booked_time, zone)),
        (
            "Quote valid to",
            if c.quote_expiry_date.is_empty() {
                "-".into()
            } else {
                c.quote_expiry_date.clone()
            },
        ),
        (
            "Group",
            if c.alternative_group_id.is_empty() {
                "-".into()
            } else {
                c.alternative_group_id.clone()
            },
        ),
    ];
    for (label, value) in facts {
        println!("  {label:<15} {value}");
    }
    if !c.treatments.is_empty() {
        println!("\nTreatments");
        let rows: Vec<Vec<String>> = c
            .treatments
            .iter()
            .map(|t| {
                vec![
                    t.visit.to_string(),
                    t.code.clone(),
                    t.name.clone(),
                    t.tooth
                        .as_ref()
                        .map(|t| t.number.clone())
                        .unwrap_or_default(),
                    money(t.value.as_ref()),
                ]
            })
            .collect();
        table(&["VISIT", "CODE", "TREATMENT", "TOOTH", "VALUE"], &rows);
    }
    if !c.images.is_empty() {
        println!("\nImages");
        for image in &c.images {
            println!("  {}  {}  {}", image.image_id, image.caption, image.url);
        }
    }
    if !response.notes.is_empty() {
        println!("\nNotes");
        for note in &response.notes {
            println!(
                "  {}  {}: {}",
                when(note.create_time, zone),
                note.author_staff_id,
                note.text
            );
        }
    }
    println!("\nTimeline (newest first)");
    let rows: Vec<Vec<String>> = response
        .timeline
        .iter()
        .map(|e| {
            let who = if e.actor_staff_id.is_empty() {
                e.actor_kind.clone()
            } else {
                e.actor_staff_id.clone()
            };
            vec![when(e.time, zone), who, e.summary.clone()]
        })
        .collect();
    table(&["WHEN", "WHO", "WHAT"], &rows);
}

fn print_queue(response: &pb::ListFollowUpQueueResponse) {
    let rows: Vec<Vec<String>> = response
        .entries
        .iter()
        .filter_map(|e| {
            let c = e.case.as_ref()?;
            Some(vec![
                e.rank.to_string(),
                truncate(&patient_words(c), 24),
                money(c.value.as_ref()),
                status_words(c.status).to_string(),
                e.reason.clone(),
                truncate(&owner_words(c), 18),
                c.case_id.clone(),
            ])
        })
        .collect();
    table(
        &["#", "PATIENT", "VALUE", "STATUS", "WHY", "OWNER", "CASE"],
        &rows,
    );
    println!("\n{} open cases in the queue", response.total_count);
}

fn print_report(response: &pb::GetLeakageReportResponse, from: NaiveDate, to: NaiveDate) {
    println!("Cases first sent {from} to {to} ({})", response.time_zone);
    if response.lines.is_empty() {
        println!("\nnothing presented in this period");
    }
    for line in &response.lines {
        let Some(f) = &line.figures else { continue };
        println!("\n== {}", f.currency);
        let recovery = f
            .median_recovery_time
            .as_ref()
            .map(|d| {
                format!(
                    ", median {:.1} days after the first follow-up",
                    d.seconds as f64 / 86_400.0
                )
            })
            .unwrap_or_default();
        let rows = vec![
            vec![
                "Presented".into(),
                f.presented_count.to_string(),
                money(f.presented_value.as_ref()),
                String::new(),
            ],
            vec![
                "Accepted".into(),
                f.accepted_count.to_string(),
                money(f.accepted_value.as_ref()),
                format!("{:.0}% acceptance", f.acceptance_rate * 100.0),
            ],
            vec![
                "Unscheduled".into(),
                f.unscheduled_count.to_string(),
                money(f.unscheduled_value.as_ref()),
                "presented, open, not booked: the money on the table".into(),
            ],
            vec![
                "Recovered".into(),
                f.recovered_count.to_string(),
                money(f.recovered_value.as_ref()),
                format!("booked after a follow-up{recovery}"),
            ],
            vec![
                "Slots refilled".into(),
                f.slots_refilled_count.to_string(),
                money(f.slots_refilled_value.as_ref()),
                String::new(),
            ],
        ];
        table(&["", "CASES", "VALUE", ""], &rows);
        println!(
            "Median days from sent to booked: {:.1}",
            f.median_days_to_book
        );
        if !line.by_status.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = line
                .by_status
                .iter()
                .map(|s| {
                    vec![
                        status_words(s.status).to_string(),
                        s.count.to_string(),
                        money(s.value.as_ref()),
                    ]
                })
                .collect();
            table(&["STATUS", "CASES", "VALUE"], &rows);
        }
        if !line.by_owner.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = line
                .by_owner
                .iter()
                .filter_map(|o| {
                    let f = o.figures.as_ref()?;
                    let owner = match (o.owner_name.as_str(), o.owner_staff_id.as_str()) {
                        (_, "") => "(unassigned)".to_string(),
                        ("", id) => id.to_string(),
                        (name, _) => name.to_string(),
                    };
                    Some(vec![
                        owner,
                        f.presented_count.to_string(),
                        format!("{:.0}%", f.acceptance_rate * 100.0),
                        money(f.unscheduled_value.as_ref()),
                        money(f.recovered_value.as_ref()),
                    ])
                })
                .collect();
            table(
                &["OWNER", "PRESENTED", "ACCEPTED", "UNSCHEDULED", "RECOVERED"],
                &rows,
            );
        }
    }
    if response.slots_refilled_count > 0 {
        println!(
            "\nSlots refilled from the waitlist: {} ({} without a value: claims for no plan)",
            response.slots_refilled_count, response.slots_refilled_without_value_count
        );
    }
}

async fn simulate(args: &CasesArgs) -> anyhow::Result<()> {
    let CasesCommand::Simulate {
        step,
        plan,
        patient,
        value,
        currency,
        title,
        owner,
    } = &args.command
    else {
        return Ok(());
    };
    let plan = match (plan, step) {
        (Some(plan), _) => plan.clone(),
        (None, Step::Sent) => new_event_id().to_string(),
        (None, _) => bail!("--plan is required for {step:?}"),
    };
    let tenant = args.access.tenant.clone();
    let now = Some(timestamp(Utc::now()));
    let case_ref = Some(common::CaseRef {
        target: Some(common::case_ref::Target::PlanId(plan.clone())),
    });
    let event_id = new_event_id().to_string();
    let subject = match step {
        Step::Sent => {
            let value = parse_money(value, currency)?;
            let e = ev::PlanSent {
                event_id: event_id.clone(),
                tenant_id: tenant.clone(),
                occurred_at: now,
                plan_id: plan.clone(),
                plan_version: 1,
                patient_id: patient.clone(),
                title: title.clone(),
                value: Some(value.clone()),
                sent_time: now,
                send_count: 1,
                sent_by_staff_id: args.access.staff.clone(),
                owner_staff_id: owner.clone(),
                sections: vec![
                    common::PortalSection::Cover as i32,
                    common::PortalSection::TreatmentDetails as i32,
                ],
                items: vec![ev::PlanItemSummary {
                    item_id: new_event_id().to_string(),
                    code: "D6010".into(),
                    name: title.clone(),
                    visit: 1,
                    value: Some(value),
                    ..Default::default()
                }],
                visit_count: 1,
                ..Default::default()
            };
            args.access.publish(&e).await?;
            e.subject()?
        }
        Step::Viewed => {
            let e = ev::PlanViewed {
                event_id: event_id.clone(),
                tenant_id: tenant.clone(),
                occurred_at: now,
                plan_id: plan.clone(),
                plan_version: 1,
                patient_id: patient.clone(),
                session_id: new_event_id().to_string(),
            };
            args.access.publish(&e).await?;
            e.subject()?
        }
        Step::Approved => {
            let e = ev::PlanApproved {
                event_id: event_id.clone(),
                tenant_id: tenant.clone(),
                occurred_at: now,
                plan_id: plan.clone(),
                plan_version: 1,
                patient_id: patient.clone(),
                approved_by: ev::PlanApprover::Patient as i32,
                ..Default::default()
            };
            args.access.publish(&e).await?;
            e.subject()?
        }
        Step::Replied => {
            let e = ev::PatientReplied {
                event_id: event_id.clone(),
                tenant_id: tenant.clone(),
                occurred_at: now,
                patient_id: patient.clone(),
                channel: common::Channel::Sms as i32,
                message_id: new_event_id().to_string(),
                text: "Thanks, I will call to book".into(),
                kind: ev::ReplyKind::Text as i32,
                in_reply_to: None,
                case_ref,
            };
            args.access.publish(&e).await?;
            e.subject()?
        }
        Step::Booked => {
            let e = ev::AppointmentBooked {
                event_id: event_id.clone(),
                tenant_id: tenant.clone(),
                occurred_at: now,
                appointment: Some(ev::Appointment {
                    appointment_id: format!("appt-{}", &event_id[..8]),
                    patient_id: patient.clone(),
                    slot: Some(common::Slot {
                        start_time: Some(timestamp(Utc::now() + chrono::Duration::days(7))),
                        duration: Some(prost_types::Duration {
                            seconds: 3600,
                            nanos: 0,
                        }),
                        practitioner_id: args.access.staff.clone(),
                        location_id: String::new(),
                    }),
                    plan_id: plan.clone(),
                    care_case_id: String::new(),
                    appointment_type: "treatment".into(),
                }),
                ..Default::default()
            };
            args.access.publish(&e).await?;
            e.subject()?
        }
    };
    println!("published {subject} for case {plan}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_become_minor_units_of_their_currency() {
        assert_eq!(
            parse_money("1250.5", "eur").expect("parses").amount_minor,
            125_050
        );
        assert_eq!(
            parse_money("1,000", "EUR").expect("parses").amount_minor,
            100_000
        );
        assert_eq!(
            parse_money("1500", "JPY").expect("parses").amount_minor,
            1500
        );
        assert!(parse_money("1.234", "EUR").is_err());
        assert!(parse_money("lots", "EUR").is_err());
    }
}
