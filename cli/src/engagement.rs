//! `followup engagement …`: who viewed a plan, when, for how long and what, from a terminal.
//!
//! Talks gRPC to `--addr` (default the dev stack's engagement service) with `--token` (default: a token
//! for the dev clinic signed with the dev stack's key, as `followup token` prints). `portal-token` prints
//! a patient's portal link token signed with the dev stack's portal key, to post beacons by hand.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use followup_platform::auth::{PORTAL_AUDIENCE, PortalClaims, Signer};
use followup_proto::followup::common::v1::PortalSection;
use followup_proto::followup::engagement::v1 as pb;
use followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient;

use crate::client::{Access, authed, status_error};
use crate::keys::DevKeys;

#[derive(Args)]
pub struct EngagementArgs {
    /// The engagement service's gRPC address.
    #[arg(
        long,
        global = true,
        env = "FOLLOWUP_ENGAGEMENT_ADDR",
        default_value = "http://localhost:50053"
    )]
    addr: String,
    #[command(flatten)]
    access: Access,
    #[command(subcommand)]
    command: EngagementCommand,
}

#[derive(Subcommand)]
enum EngagementCommand {
    /// The engagement facts of one or more plans.
    Facts {
        /// Plan ids (UUIDs), at most 500.
        #[arg(required = true)]
        plan_ids: Vec<String>,
    },
    /// The page views of a plan, newest first.
    Sessions {
        plan_id: String,
        /// How many sessions to show.
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Print a portal link token for a plan, signed with the dev stack's portal key (what the plans
    /// service puts in a patient's link), to post beacons by hand.
    PortalToken {
        plan_id: String,
        #[arg(long, default_value = "dev-patient")]
        patient: String,
        /// Hours the token is valid.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
}

/// Seconds of a Duration message (its seconds and nanos).
macro_rules! seconds {
    ($d:expr) => {
        $d.as_ref()
            .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
            .unwrap_or(0.0)
    };
}

/// A Timestamp message in RFC 3339, or `-`.
macro_rules! time {
    ($t:expr) => {
        $t.as_ref()
            .and_then(|t| chrono_like(t.seconds))
            .unwrap_or_else(|| "-".to_string())
    };
}

/// RFC 3339 in UTC without pulling a date crate into the CLI.
fn chrono_like(secs: i64) -> Option<String> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

fn section_name(number: i32) -> &'static str {
    match PortalSection::try_from(number) {
        Ok(PortalSection::Cover) => "cover",
        Ok(PortalSection::TreatmentDetails) => "treatment_details",
        Ok(PortalSection::Images) => "images",
        Ok(PortalSection::PortalSection3dModels) => "3d_models",
        _ => "-",
    }
}

fn sections(times: &[followup_proto::followup::common::v1::SectionTime]) -> String {
    if times.is_empty() {
        return "-".into();
    }
    times
        .iter()
        .map(|t| format!("{} {:.1}s", section_name(t.section), seconds!(t.view_time)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(args: EngagementArgs) -> anyhow::Result<()> {
    if let EngagementCommand::PortalToken {
        plan_id,
        patient,
        hours,
    } = &args.command
    {
        let keys = DevKeys::load_or_create(&args.access.dir)?;
        let signer = Signer::from_pem(&keys.portal.private_pem)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let token = signer.sign(&PortalClaims {
            tenant: args.access.tenant.clone(),
            plan_id: plan_id.clone(),
            plan_version: 1,
            patient_id: patient.clone(),
            jti: format!("dev-{now}"),
            aud: PORTAL_AUDIENCE.into(),
            iat: now,
            exp: now + hours * 3600,
        })?;
        println!("{token}");
        return Ok(());
    }
    let token = args.access.token()?;
    let mut client = EngagementServiceClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to the engagement service at {}", args.addr))?;
    match args.command {
        EngagementCommand::Facts { plan_ids } => {
            let engagements = client
                .batch_get_plan_engagements(authed(
                    pb::BatchGetPlanEngagementsRequest { plan_ids },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .engagements;
            for e in engagements {
                println!("plan {}", e.plan_id);
                if !e.viewed {
                    println!("  not viewed");
                    continue;
                }
                println!("  patient       {}", e.patient_id);
                println!("  views         {}", e.view_count);
                println!("  first view    {}", time!(e.first_view_time));
                println!("  last view     {}", time!(e.last_view_time));
                println!("  visible time  {:.1}s", seconds!(e.total_view_time));
                println!("  sections      {}", sections(&e.section_times));
                println!("  last section  {}", section_name(e.last_section));
            }
        }
        EngagementCommand::Sessions { plan_id, limit } => {
            let sessions = client
                .list_view_sessions(authed(
                    pb::ListViewSessionsRequest {
                        plan_id,
                        page_size: limit,
                        page_token: String::new(),
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner()
                .sessions;
            if sessions.is_empty() {
                println!("no page views");
            }
            for s in sessions {
                println!(
                    "{}  {} → {}  {:.1}s visible  {} events  {}  [{}]",
                    s.session_id,
                    time!(s.start_time),
                    time!(s.end_time),
                    seconds!(s.view_time),
                    s.event_count,
                    if s.closed { "closed" } else { "open/idle" },
                    sections(&s.section_times)
                );
            }
        }
        EngagementCommand::PortalToken { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(chrono_like(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            chrono_like(1_795_341_600).as_deref(),
            Some("2026-11-22T10:00:00Z")
        );
    }
}
