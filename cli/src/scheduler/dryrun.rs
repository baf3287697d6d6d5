//! `followup rules preview | backtest` and the waitlist commands.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::scheduler::v1 as pb;
use followup_proto::followup::scheduler::v1::waitlist_service_client::WaitlistServiceClient;
use futures::StreamExt as _;
use tonic::transport::Channel;

use super::{Client, case_ref, duration, name, read_rule, time};
use crate::client::{authed, status_error};

pub async fn waitlist(addr: &str) -> anyhow::Result<WaitlistServiceClient<Channel>> {
    WaitlistServiceClient::connect(addr.to_string())
        .await
        .with_context(|| {
            format!("connecting to the scheduler at {addr} (is `followup dev` running?)")
        })
}

pub fn slot_state(n: i32) -> String {
    pb::OpenSlotState::try_from(n)
        .map(|s| name(s.as_str_name(), "OPEN_SLOT_STATE_"))
        .unwrap_or_default()
}

pub fn offer_state(n: i32) -> String {
    pb::SlotOfferState::try_from(n)
        .map(|s| name(s.as_str_name(), "SLOT_OFFER_STATE_"))
        .unwrap_or_default()
}

/// A saved rule (id or name) or a draft in a proto3 JSON file.
enum RuleArg {
    Saved(String),
    Draft(Box<pb::Rule>),
}

async fn rule_arg(c: &mut Client, rule: &str) -> anyhow::Result<RuleArg> {
    if rule.ends_with(".json") && Path::new(rule).exists() {
        return Ok(RuleArg::Draft(Box::new(read_rule(Path::new(rule))?)));
    }
    Ok(RuleArg::Saved(c.rule_id(rule).await?))
}

fn channel(n: i32) -> String {
    common::Channel::try_from(n)
        .map(|c| name(c.as_str_name(), "CHANNEL_"))
        .unwrap_or_default()
}

pub async fn preview(
    c: &mut Client,
    rule: &str,
    case_id: &str,
    at: Option<&str>,
) -> anyhow::Result<()> {
    use pb::preview_rule_request::{RuleSource, Target};
    let source = match rule_arg(c, rule).await? {
        RuleArg::Saved(id) => RuleSource::RuleId(id),
        RuleArg::Draft(rule) => RuleSource::Rule(*rule),
    };
    let looks_like_uuid = case_id.len() == 36 && case_id.chars().filter(|c| *c == '-').count() == 4;
    let target = if looks_like_uuid {
        common::case_ref::Target::PlanId(case_id.to_string())
    } else {
        common::case_ref::Target::CareCaseId(case_id.to_string())
    };
    let trigger_time = match at {
        None => None,
        Some(text) => {
            let t = chrono::DateTime::parse_from_rfc3339(text)
                .with_context(|| format!("--at `{text}` is not an RFC 3339 time"))?;
            Some(prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: 0,
            })
        }
    };
    let p = c
        .inner
        .preview_rule(authed(
            pb::PreviewRuleRequest {
                rule_source: Some(source),
                target: Some(Target::CaseRef(common::CaseRef {
                    target: Some(target),
                })),
                trigger_time,
                ..Default::default()
            },
            &c.token,
        )?)
        .await
        .map_err(status_error)?
        .into_inner();
    if p.would_enroll {
        println!("would enroll; local times in {}", p.time_zone);
    } else {
        println!("would NOT enroll: {}", p.reason);
    }
    for check in &p.checks {
        println!(
            "  {} {:<24} {}",
            if check.holds { "✓" } else { "✗" },
            check.path,
            check.description
        );
    }
    for step in &p.steps {
        let what = step.step.as_ref().map(super::step_text).unwrap_or_default();
        let held = if step.held_by_quiet_hours {
            "  (moved by quiet hours)"
        } else {
            ""
        };
        let guard = if step.guard_holds {
            ""
        } else {
            "  (guard false now: it would be skipped)"
        };
        println!(
            "{:>3}  {}  {what}{held}{guard}",
            step.step_index, step.local_send_time
        );
        if let Some(m) = &step.message {
            if !m.subject.is_empty() {
                println!("       subject: {}", m.subject);
            }
            for line in m.body.lines() {
                println!("       | {line}");
            }
            if m.segment_count > 0 {
                println!(
                    "       ({} SMS segment(s), {} characters)",
                    m.segment_count, m.character_count
                );
            }
        }
    }
    for warning in &p.warnings {
        println!("warning: {warning}");
    }
    Ok(())
}

/// "30d", "12h", "90m" as seconds.
fn span(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number
        .parse()
        .with_context(|| format!("--since `{text}`: a number and d, h or m, e.g. 30d"))?;
    Ok(match unit {
        "d" => n * 86_400,
        "h" => n * 3600,
        "m" => n * 60,
        _ => bail!("--since `{text}`: a number and d, h or m, e.g. 30d"),
    })
}

fn bar(p: &pb::BacktestProgress) -> String {
    let width = 30;
    let filled = ((p.fraction.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!(
        "\r[{}{}] {:>3.0}%  {} / ~{} events  replay {}  enrolled {}   ",
        "#".repeat(filled),
        ".".repeat(width - filled),
        p.fraction * 100.0,
        p.events_replayed,
        p.events_estimated,
        time(&p.replay_time),
        p.cases_enrolled
    )
}

pub async fn backtest(
    c: &mut Client,
    rule: &str,
    since: &str,
    max_events: i64,
    sample: i32,
) -> anyhow::Result<()> {
    use pb::backtest_rule_request::RuleSource;
    let source = match rule_arg(c, rule).await? {
        RuleArg::Saved(id) => RuleSource::RuleId(id),
        RuleArg::Draft(rule) => RuleSource::Rule(*rule),
    };
    let start = chrono::Utc::now() - chrono::Duration::seconds(span(since)?);
    let mut stream = c
        .inner
        .backtest_rule(authed(
            pb::BacktestRuleRequest {
                rule_source: Some(source),
                start_time: Some(prost_types::Timestamp {
                    seconds: start.timestamp(),
                    nanos: 0,
                }),
                max_events,
                sample_size: sample,
                ..Default::default()
            },
            &c.token,
        )?)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut report = None;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ncancelled");
                return Ok(());
            }
        };
        let Some(update) = next else { break };
        match update.map_err(status_error)?.update {
            Some(pb::backtest_rule_response::Update::Progress(p)) => {
                eprint!("{}", bar(&p));
                let _ = std::io::stderr().flush();
            }
            Some(pb::backtest_rule_response::Update::Report(r)) => report = Some(r),
            None => {}
        }
    }
    eprintln!();
    let r = report.context("the backtest ended without a report")?;
    println!(
        "{} events replayed ({} to {}){} in {} ({:.0} events/s)",
        r.events_replayed,
        time(&r.first_event_time),
        time(&r.last_event_time),
        if r.truncated {
            ", stopped early by the limits"
        } else {
            ""
        },
        duration(&r.elapsed),
        r.events_per_second
    );
    let by_channel: Vec<String> = r
        .messages_by_channel
        .iter()
        .map(|c| format!("{} {}", c.count, channel(c.channel)))
        .collect();
    let rows = [
        ("cases enrolled", r.cases_enrolled.to_string()),
        (
            "messages",
            format!("{} ({})", r.message_count, by_channel.join(", ")),
        ),
        ("tasks", r.task_count.to_string()),
        ("held by quiet hours", r.held_by_quiet_hours.to_string()),
        (
            "held by the frequency cap",
            r.held_by_frequency_cap.to_string(),
        ),
        ("booked anyway", r.booked_count.to_string()),
        (
            "median time to book",
            if r.median_time_to_book.is_some() {
                duration(&r.median_time_to_book)
            } else {
                "-".into()
            },
        ),
    ];
    for (label, value) in rows {
        println!("  {label:<26} {value}");
    }
    if !r.sample_actions.is_empty() {
        println!(
            "\n  {:<18} {:<18} {:<6} {:<22} {:<24} patient  case",
            "fires", "goes out", "step", "action", "held by"
        );
        for a in &r.sample_actions {
            let mut held = Vec::new();
            if a.held_by_quiet_hours {
                held.push("quiet hours");
            }
            if a.held_by_frequency_cap {
                held.push("cap");
            }
            println!(
                "  {:<18} {:<18} {:<6} {:<22} {:<24} {}  {}",
                time(&a.fire_time),
                if a.send_time.is_some() {
                    time(&a.send_time)
                } else {
                    "suppressed".into()
                },
                a.step_index,
                format!("{} {}", channel(a.channel), a.template_key),
                held.join(", "),
                a.patient_id,
                case_ref(&a.case_ref)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_days_hours_minutes() {
        assert_eq!(span("30d").ok(), Some(30 * 86_400));
        assert_eq!(span("12h").ok(), Some(12 * 3600));
        assert_eq!(span("90m").ok(), Some(90 * 60));
        assert!(span("3w").is_err());
        assert!(span("").is_err());
    }
}
