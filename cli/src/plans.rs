//! `followup plans …`: the plans service from a terminal (catalogue, plans, the whole plan journey).
//!
//! Talks gRPC to `--addr` (default the dev stack's plans service) with `--token` (default: a token for
//! the dev clinic signed with the dev stack's key, as `followup token` prints). Items are named by their
//! number in the plan (`1`, `2`, … as `followup plans show` prints them) or by their id.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use followup_plans::domain::money::{Currency, Money};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::plans::v1 as pb;
use followup_proto::followup::plans::v1::catalog_service_client::CatalogServiceClient;
use followup_proto::followup::plans::v1::plans_service_client::PlansServiceClient;
use tonic::transport::Channel;

use crate::client::{Access, authed, status_error};

/// `println!` that stops quietly when the reader went away (`followup plans show … | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Args)]
pub struct PlansArgs {
    /// The plans service's gRPC address.
    #[arg(
        long,
        global = true,
        env = "FOLLOWUP_PLANS_ADDR",
        default_value = "http://localhost:50051"
    )]
    addr: String,
    #[command(flatten)]
    access: Access,
    #[command(subcommand)]
    command: PlansCommand,
}

#[derive(Subcommand)]
enum PlansCommand {
    /// Copy codes from the platform master list into the clinic's list (all of them by default).
    CopyCodes {
        /// Codes to copy, e.g. D7140 D6010; none = the whole master list.
        codes: Vec<String>,
    },
    /// Import the clinic's licensed code list: a CSV file with the header `code,name,default_fee`.
    ImportCodes {
        file: PathBuf,
        /// Write the default fees into this fee schedule (default: the clinic's default schedule).
        #[arg(long)]
        fee_schedule: Option<String>,
        /// Only check the file and report its errors.
        #[arg(long)]
        validate_only: bool,
        /// Import nothing if any row is invalid.
        #[arg(long)]
        all_or_nothing: bool,
    },
    /// Search the clinic's codes by code prefix or words of the name.
    Search { query: Vec<String> },
    /// Create a fee schedule (the first one becomes the clinic's default).
    CreateSchedule {
        name: String,
        #[arg(long, default_value = "USD")]
        currency: String,
        #[arg(long)]
        default: bool,
    },
    /// List the clinic's fee schedules.
    Schedules,
    /// Set fees in a schedule: CODE=AMOUNT pairs in major units, e.g. D6010=2000 D6065=1500.00.
    SetFees {
        /// The schedule (default: the clinic's default).
        #[arg(long)]
        fee_schedule: Option<String>,
        fees: Vec<String>,
    },
    /// Create a DRAFT plan; prints its id.
    Create {
        #[arg(long)]
        patient: String,
        #[arg(long)]
        title: String,
        #[arg(long)]
        fee_schedule: Option<String>,
        /// Accountable staff id for the follow-up.
        #[arg(long)]
        owner: Option<String>,
        /// Last day the quote is valid, YYYY-MM-DD.
        #[arg(long)]
        expires: Option<String>,
        /// A note shown to the patient on the cover page.
        #[arg(long)]
        note: Option<String>,
    },
    /// Add an item to a DRAFT plan; prints its number and the new totals.
    AddItem {
        plan: String,
        code: String,
        /// Universal 1-32 / A-T (or FDI with --fdi).
        #[arg(long)]
        tooth: Option<String>,
        #[arg(long)]
        fdi: bool,
        /// Surfaces among M O D B L I F, e.g. MOD.
        #[arg(long)]
        surfaces: Option<String>,
        /// The performing dentist's staff id.
        #[arg(long)]
        dentist: Option<String>,
        /// A price in major units overriding the fee schedule, e.g. 1350.00 (needs --reason).
        #[arg(long)]
        price: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Visit (phase) number.
        #[arg(long, default_value_t = 0)]
        visit: i32,
        /// Items that must be done first (numbers or ids).
        #[arg(long = "after")]
        after: Vec<String>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Remove an item of a DRAFT plan.
    RemoveItem {
        plan: String,
        item: String,
        /// Also drop it from other items' prerequisites.
        #[arg(long)]
        force: bool,
    },
    /// Show a plan: its items as a tree with prices, and its totals.
    Show {
        plan: String,
        /// A past version (default: the current one).
        #[arg(long, default_value_t = 0)]
        version: i32,
    },
    /// List plans, newest first.
    List {
        #[arg(long)]
        patient: Option<String>,
    },
    /// Send the plan to the patient: prints the portal link.
    Send {
        plan: String,
        /// Days the link is valid (default: the service's, 30).
        #[arg(long)]
        ttl_days: Option<u64>,
    },
    /// Approve the plan on the patient's behalf.
    Approve { plan: String },
    /// Mark an item done (by number or id).
    Complete { plan: String, item: String },
    /// Cancel an open plan.
    Cancel {
        plan: String,
        #[arg(long)]
        reason: String,
    },
    /// Revise a sent or approved plan: a new DRAFT version.
    Revise {
        plan: String,
        #[arg(long)]
        reason: String,
    },
    /// A patient's billing summary across their plans.
    Billing { patient: String },
}

struct Client {
    plans: PlansServiceClient<Channel>,
    catalog: CatalogServiceClient<Channel>,
    token: String,
}

impl Client {
    fn req<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        authed(message, &self.token)
    }

    async fn plan(&self, id: &str, version: i32) -> anyhow::Result<pb::Plan> {
        self.plans
            .clone()
            .get_plan(self.req(pb::GetPlanRequest {
                plan_id: id.to_string(),
                plan_version: version,
            })?)
            .await
            .map_err(status_error)?
            .into_inner()
            .plan
            .context("no plan in the answer")
    }

    /// An item by its number in plan order or its id.
    async fn item_id(&self, plan: &str, item: &str) -> anyhow::Result<String> {
        match item.parse::<usize>() {
            Ok(n) => {
                let plan = self.plan(plan, 0).await?;
                plan.items
                    .get(n.wrapping_sub(1))
                    .map(|i| i.item_id.clone())
                    .with_context(|| {
                        format!("the plan has no item {n} (it has {})", plan.items.len())
                    })
            }
            Err(_) => Ok(item.to_string()),
        }
    }

    async fn default_schedule(&self) -> anyhow::Result<pb::FeeSchedule> {
        let list = self
            .catalog
            .clone()
            .list_fee_schedules(self.req(pb::ListFeeSchedulesRequest::default())?)
            .await
            .map_err(status_error)?
            .into_inner();
        list.fee_schedules
            .into_iter()
            .find(|s| s.is_default)
            .context(
                "the clinic has no fee schedule yet: `followup plans create-schedule Standard`",
            )
    }
}

fn show_money(m: Option<&common::Money>) -> String {
    match m.and_then(|m| {
        Currency::parse(&m.currency)
            .ok()
            .map(|c| Money::new(m.amount_minor, c))
    }) {
        Some(m) => m.display(),
        None => "-".into(),
    }
}

fn parse_amount(currency: &str, text: &str) -> anyhow::Result<i64> {
    let currency = Currency::parse(currency).map_err(|e| anyhow::anyhow!("{e}"))?;
    currency.parse_amount(text).map_err(|e| anyhow::anyhow!(e))
}

fn status_name(value: i32) -> String {
    pb::PlanStatus::try_from(value)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("PLAN_STATUS_")
                .to_string()
        })
        .unwrap_or_else(|_| value.to_string())
}

fn tooth_label(tooth: Option<&common::Tooth>) -> String {
    match tooth {
        Some(t) if !t.number.is_empty() => {
            let number = if t.numbering == common::ToothNumbering::Fdi as i32 {
                format!("FDI {}", t.number)
            } else {
                format!("#{}", t.number)
            };
            if t.surfaces.is_empty() {
                number
            } else {
                format!("{number} {}", t.surfaces)
            }
        }
        _ => String::new(),
    }
}

fn print_plan(plan: &pb::Plan) {
    out!(
        "{}  v{}  {}  \"{}\"  patient {}  {}",
        plan.plan_id,
        plan.plan_version,
        status_name(plan.status),
        plan.title,
        plan.patient_id,
        plan.currency
    );
    let number = |id: &str| {
        plan.items
            .iter()
            .position(|i| i.item_id == id)
            .map(|n| n + 1)
            .unwrap_or(0)
    };
    fn walk(
        plan: &pb::Plan,
        node: &pb::PlanItemNode,
        prefix: &str,
        last: bool,
        root: bool,
        number: &dyn Fn(&str) -> usize,
    ) {
        let Some(item) = plan.items.iter().find(|i| i.item_id == node.item_id) else {
            return;
        };
        let branch = if root {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let price = show_money(item.price.as_ref());
        let override_note = match (&item.price, &item.schedule_fee) {
            (Some(p), Some(f)) if p.amount_minor != f.amount_minor => format!(
                "  (schedule {}: {})",
                show_money(Some(f)),
                item.price_override_reason
            ),
            _ => String::new(),
        };
        let done = if item.status == pb::PlanItemStatus::Completed as i32 {
            "  ✓ done"
        } else {
            ""
        };
        let visit = if item.visit > 0 {
            format!("  visit {}", item.visit)
        } else {
            String::new()
        };
        out!(
            "  {prefix}{branch}{}. {} {} {}  {price}{override_note}{visit}{done}",
            number(&item.item_id),
            item.code,
            item.code_name,
            tooth_label(item.tooth.as_ref()),
        );
        let child_prefix = if root {
            prefix.to_string()
        } else if last {
            format!("{prefix}   ")
        } else {
            format!("{prefix}│  ")
        };
        for (i, child) in node.dependents.iter().enumerate() {
            walk(
                plan,
                child,
                &child_prefix,
                i + 1 == node.dependents.len(),
                false,
                number,
            );
        }
    }
    for root in &plan.item_tree {
        walk(plan, root, "", true, true, &number);
    }
    if let Some(t) = &plan.totals {
        out!(
            "Total {}  (discount {}, completed {}, remaining {})",
            show_money(t.total.as_ref()),
            show_money(t.discount.as_ref()),
            show_money(t.completed.as_ref()),
            show_money(t.remaining.as_ref())
        );
        for v in &t.visits {
            let name = if v.visit == 0 {
                "unassigned".to_string()
            } else {
                format!("visit {}", v.visit)
            };
            out!(
                "  {name}: {} ({}/{} done)",
                show_money(v.subtotal.as_ref()),
                v.completed_item_count,
                v.item_count
            );
        }
    }
}

pub async fn run(args: PlansArgs) -> anyhow::Result<()> {
    let token = args.access.token()?;
    let channel = tonic::transport::Endpoint::from_shared(args.addr.clone())
        .with_context(|| format!("`{}` is not a URL", args.addr))?
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the plans service at {} (is `followup dev` running?)",
                args.addr
            )
        })?;
    let client = Client {
        plans: PlansServiceClient::new(channel.clone()),
        catalog: CatalogServiceClient::new(channel),
        token,
    };
    let mut plans = client.plans.clone();
    let mut catalog = client.catalog.clone();
    match args.command {
        PlansCommand::CopyCodes { codes } => {
            let all = codes.is_empty();
            let out = catalog
                .copy_master_codes(client.req(pb::CopyMasterCodesRequest {
                    codes,
                    categories: vec![],
                    all,
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            out!(
                "copied {} codes ({} already in the list)",
                out.copied_count,
                out.skipped_codes.len()
            );
        }
        PlansCommand::ImportCodes {
            file,
            fee_schedule,
            validate_only,
            all_or_nothing,
        } => {
            let csv = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let out = catalog
                .import_codes(client.req(pb::ImportCodesRequest {
                    csv,
                    fee_schedule_id: fee_schedule.unwrap_or_default(),
                    validate_only,
                    all_or_nothing,
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            for e in &out.errors {
                eprintln!("{}:{}: {}", file.display(), e.line, e.message);
            }
            out!(
                "added {}, updated {}, fees written {}, rows refused {}{}",
                out.added_count,
                out.updated_count,
                out.fee_count,
                out.errors.len(),
                if validate_only {
                    " (validate only: nothing changed)"
                } else {
                    ""
                }
            );
        }
        PlansCommand::Search { query } => {
            let out = catalog
                .search_codes(client.req(pb::SearchCodesRequest {
                    query: query.join(" "),
                    ..Default::default()
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            for m in out.matches {
                let code = m.code.unwrap_or_default();
                out!(
                    "{:<8} {:<50} {}",
                    code.code,
                    code.name,
                    show_money(m.fee.as_ref())
                );
            }
        }
        PlansCommand::CreateSchedule {
            name,
            currency,
            default,
        } => {
            let s = catalog
                .create_fee_schedule(client.req(pb::CreateFeeScheduleRequest {
                    fee_schedule: Some(pb::FeeSchedule {
                        name,
                        currency,
                        is_default: default,
                        ..Default::default()
                    }),
                    copy_fees_from_fee_schedule_id: String::new(),
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .fee_schedule
                .unwrap_or_default();
            out!(
                "{}  {}  {}{}",
                s.fee_schedule_id,
                s.name,
                s.currency,
                if s.is_default { "  (default)" } else { "" }
            );
        }
        PlansCommand::Schedules => {
            let out = catalog
                .list_fee_schedules(client.req(pb::ListFeeSchedulesRequest::default())?)
                .await
                .map_err(status_error)?
                .into_inner();
            for s in out.fee_schedules {
                out!(
                    "{}  {:<24} {}  {} fees{}",
                    s.fee_schedule_id,
                    s.name,
                    s.currency,
                    s.fee_count,
                    if s.is_default { "  (default)" } else { "" }
                );
            }
        }
        PlansCommand::SetFees { fee_schedule, fees } => {
            let schedule = match fee_schedule {
                Some(id) => catalog
                    .get_fee_schedule(client.req(pb::GetFeeScheduleRequest {
                        fee_schedule_id: id,
                    })?)
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .fee_schedule
                    .unwrap_or_default(),
                None => client.default_schedule().await?,
            };
            let mut parsed = Vec::new();
            for pair in &fees {
                let Some((code, amount)) = pair.split_once('=') else {
                    bail!("`{pair}`: write CODE=AMOUNT, e.g. D6010=2000.00");
                };
                parsed.push(pb::Fee {
                    code: code.to_string(),
                    amount: Some(common::Money {
                        amount_minor: parse_amount(&schedule.currency, amount)
                            .with_context(|| format!("`{pair}`"))?,
                        currency: schedule.currency.clone(),
                    }),
                });
            }
            let s = catalog
                .set_fees(client.req(pb::SetFeesRequest {
                    fee_schedule_id: schedule.fee_schedule_id.clone(),
                    fees: parsed,
                    remove_codes: vec![],
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .fee_schedule
                .unwrap_or_default();
            out!("{}: {} fees", s.name, s.fee_count);
        }
        PlansCommand::Create {
            patient,
            title,
            fee_schedule,
            owner,
            expires,
            note,
        } => {
            let plan = plans
                .create_plan(client.req(pb::CreatePlanRequest {
                    plan: Some(pb::Plan {
                        patient_id: patient,
                        title,
                        fee_schedule_id: fee_schedule.unwrap_or_default(),
                        owner_staff_id: owner.unwrap_or_default(),
                        quote_expiry_date: expires.unwrap_or_default(),
                        patient_note: note.unwrap_or_default(),
                        ..Default::default()
                    }),
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .plan
                .unwrap_or_default();
            out!("{}", plan.plan_id);
        }
        PlansCommand::AddItem {
            plan,
            code,
            tooth,
            fdi,
            surfaces,
            dentist,
            price,
            reason,
            visit,
            after,
            note,
        } => {
            let current = client.plan(&plan, 0).await?;
            let mut depends = Vec::new();
            for a in &after {
                depends.push(client.item_id(&plan, a).await?);
            }
            let price = match price {
                Some(p) => Some(common::Money {
                    amount_minor: parse_amount(&current.currency, &p)?,
                    currency: current.currency.clone(),
                }),
                None => None,
            };
            let out = plans
                .create_plan_item(client.req(pb::CreatePlanItemRequest {
                    plan_id: plan.clone(),
                    item: Some(pb::PlanItem {
                        code,
                        tooth: tooth.map(|number| common::Tooth {
                            numbering: if fdi {
                                common::ToothNumbering::Fdi
                            } else {
                                common::ToothNumbering::Universal
                            } as i32,
                            number,
                            surfaces: surfaces.unwrap_or_default(),
                        }),
                        practitioner_id: dentist.unwrap_or_default(),
                        price,
                        price_override_reason: reason.unwrap_or_default(),
                        visit,
                        depends_on_item_ids: depends,
                        note: note.unwrap_or_default(),
                        ..Default::default()
                    }),
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            let item = out.item.unwrap_or_default();
            let updated = client.plan(&plan, 0).await?;
            let n = updated
                .items
                .iter()
                .position(|i| i.item_id == item.item_id)
                .map(|n| n + 1)
                .unwrap_or(0);
            out!(
                "item {n}: {} {} {}  ({})  plan total {}",
                item.code,
                item.code_name,
                show_money(item.price.as_ref()),
                item.item_id,
                show_money(out.totals.and_then(|t| t.total).as_ref())
            );
        }
        PlansCommand::RemoveItem { plan, item, force } => {
            let item_id = client.item_id(&plan, &item).await?;
            let out = plans
                .delete_plan_item(client.req(pb::DeletePlanItemRequest {
                    plan_id: plan,
                    item_id,
                    remove_dependencies: force,
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            out!(
                "removed; plan total {}",
                show_money(out.totals.and_then(|t| t.total).as_ref())
            );
        }
        PlansCommand::Show { plan, version } => print_plan(&client.plan(&plan, version).await?),
        PlansCommand::List { patient } => {
            let out = plans
                .list_plans(client.req(pb::ListPlansRequest {
                    patient_id: patient.unwrap_or_default(),
                    ..Default::default()
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            for p in out.plans {
                out!(
                    "{}  v{}  {:<10} {:<12} {:<32} {}",
                    p.plan_id,
                    p.plan_version,
                    status_name(p.status),
                    p.patient_id,
                    p.title,
                    show_money(p.totals.and_then(|t| t.total).as_ref())
                );
            }
        }
        PlansCommand::Send { plan, ttl_days } => {
            let out = plans
                .send_plan(client.req(pb::SendPlanRequest {
                    plan_id: plan,
                    link_ttl: ttl_days.map(|d| prost_types::Duration {
                        seconds: (d * 86_400) as i64,
                        nanos: 0,
                    }),
                    ..Default::default()
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            out!("sent; the patient's link (a secret: share it only with the patient):");
            out!("{}", out.portal_url);
        }
        PlansCommand::Approve { plan } => {
            let p = plans
                .approve_plan(client.req(pb::ApprovePlanRequest {
                    plan_id: plan,
                    plan_version: 0,
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .plan
                .unwrap_or_default();
            out!("{}", status_name(p.status));
        }
        PlansCommand::Complete { plan, item } => {
            let item_id = client.item_id(&plan, &item).await?;
            let out = plans
                .complete_plan_item(client.req(pb::CompletePlanItemRequest {
                    plan_id: plan,
                    item_id,
                    complete_time: None,
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            let p = out.plan.unwrap_or_default();
            out!(
                "done; plan {}  remaining {}",
                status_name(p.status),
                show_money(p.totals.and_then(|t| t.remaining).as_ref())
            );
        }
        PlansCommand::Cancel { plan, reason } => {
            let p = plans
                .cancel_plan(client.req(pb::CancelPlanRequest {
                    plan_id: plan,
                    reason,
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .plan
                .unwrap_or_default();
            out!("{}", status_name(p.status));
        }
        PlansCommand::Revise { plan, reason } => {
            let p = plans
                .revise_plan(client.req(pb::RevisePlanRequest {
                    plan_id: plan,
                    reason,
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .plan
                .unwrap_or_default();
            out!("version {} is a DRAFT", p.plan_version);
        }
        PlansCommand::Billing { patient } => {
            let out = plans
                .get_patient_billing_summary(client.req(pb::GetPatientBillingSummaryRequest {
                    patient_id: patient,
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            if out.lines.is_empty() {
                out!("no plans for patient {}", out.patient_id);
            }
            for l in out.lines {
                out!(
                    "{}: planned {}, approved {}, completed {}, remaining {} ({} plans)",
                    l.currency,
                    show_money(l.planned.as_ref()),
                    show_money(l.approved.as_ref()),
                    show_money(l.completed.as_ref()),
                    show_money(l.remaining.as_ref()),
                    l.plan_count
                );
            }
        }
    }
    Ok(())
}
