//! Domain values as `followup.cases.v1` messages.

use chrono::{DateTime, Utc};
use followup_platform::event::timestamp;
use followup_proto::followup::cases::v1 as pb;
use followup_proto::followup::common::v1 as common;

use crate::domain::case::CaseSettings;
use crate::domain::ranking;
use crate::domain::report::{Figures, ReportLine};
use crate::domain::timeline::{Entry, EntryDetail};
use crate::domain::vocab::{Money, SectionTime};
use crate::engine::money;
use crate::storage::CaseRecord;

pub fn duration(millis: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn ts(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

fn sections(times: &[SectionTime]) -> Vec<common::SectionTime> {
    times
        .iter()
        .map(|s| common::SectionTime {
            section: s.section.number(),
            view_time: Some(duration(s.millis)),
        })
        .collect()
}

/// A case as the API shows it; `now` dates the reason line.
pub fn case(record: &CaseRecord, now: DateTime<Utc>) -> pb::Case {
    let s = &record.state;
    let presentation = record.presentation.clone().unwrap_or_default();
    pb::Case {
        case_id: s.case_id.to_string(),
        plan_id: s.case_id.to_string(),
        plan_version: s.plan_version,
        patient_id: s.patient_id.clone(),
        patient_name: record.patient_name.clone(),
        title: s.title.clone(),
        status: s.status.number(),
        open: s.open(),
        owner_staff_id: s.owner_staff_id.clone().unwrap_or_default(),
        owner_name: record.owner_name.clone(),
        value: s.value.as_ref().map(money),
        alternative_group_id: s.alternative_group_id.clone().unwrap_or_default(),
        first_sent_time: ts(s.first_sent_at),
        last_sent_time: ts(s.last_sent_at),
        send_count: s.send_count,
        viewed: s.viewed,
        first_view_time: ts(s.first_view_at),
        last_view_time: ts(s.last_view_at),
        view_count: s.view_count,
        total_view_time: Some(duration(s.total_view_millis)),
        section_times: sections(&s.section_times),
        patient_approve_time: ts(s.patient_approved_at),
        last_reply_time: ts(s.last_reply_at),
        reminders_sent: s.reminders_sent,
        next_follow_up_time: ts(s.next_follow_up_at()),
        last_contact_time: ts(s.last_contact_at),
        booked_time: ts(s.booked_at),
        treatments: presentation
            .treatments
            .iter()
            .map(|t| pb::Treatment {
                item_id: t.item_id.clone(),
                code: t.code.clone(),
                name: t.name.clone(),
                tooth: t.tooth.as_ref().map(|tooth| common::Tooth {
                    numbering: tooth.numbering,
                    number: tooth.number.clone(),
                    surfaces: tooth.surfaces.clone(),
                }),
                visit: t.visit,
                value: t.value.as_ref().map(money),
            })
            .collect(),
        images: presentation
            .images
            .iter()
            .map(|i| common::ImageRef {
                image_id: i.image_id.clone(),
                url: i.url.clone(),
                kind: i.kind,
                caption: i.caption.clone(),
            })
            .collect(),
        quote_expiry_date: s.quote_expiry_date.clone().unwrap_or_default(),
        create_time: ts(Some(s.created_at)),
        last_activity_time: ts(Some(s.last_activity_at)),
        reason: ranking::reason(s, now),
    }
}

pub fn entry(e: &Entry) -> pb::TimelineEntry {
    use pb::timeline_entry::Detail;
    let detail = match &e.detail {
        EntryDetail::None => None,
        EntryDetail::StatusChange {
            from,
            to,
            by_staff,
            reason,
        } => Some(Detail::StatusChange(pb::StatusChangeDetail {
            from_status: from.map_or(0, |s| s.number()),
            to_status: to.number(),
            by_staff: *by_staff,
            reason: reason.clone(),
        })),
        EntryDetail::View {
            session_id,
            view_millis,
            sections: times,
        } => Some(Detail::View(pb::ViewDetail {
            session_id: session_id.clone(),
            view_time: Some(duration(*view_millis)),
            section_times: sections(times),
        })),
        EntryDetail::Message {
            message_id,
            channel,
            result,
            reason,
            text,
        } => Some(Detail::Message(pb::MessageDetail {
            message_id: message_id.clone(),
            channel: channel.number(),
            result: result.words().to_string(),
            reason: reason.clone(),
            text: text.clone(),
        })),
        EntryDetail::FollowUp {
            enrollment_id,
            rule_name,
            planned,
            stop_reason,
        } => Some(Detail::FollowUp(pb::FollowUpDetail {
            enrollment_id: enrollment_id.clone(),
            rule_name: rule_name.clone(),
            planned_times: planned.iter().map(|t| timestamp(*t)).collect(),
            stop_reason: *stop_reason,
        })),
        EntryDetail::Task {
            task_id,
            title,
            owner_staff_id,
            outcome,
        } => Some(Detail::Task(pb::TaskDetail {
            task_id: task_id.clone(),
            title: title.clone(),
            owner_staff_id: owner_staff_id.clone(),
            outcome: outcome.clone(),
        })),
        EntryDetail::OwnerChange { previous, owner } => {
            Some(Detail::OwnerChange(pb::OwnerChangeDetail {
                previous_owner_staff_id: previous.clone().unwrap_or_default(),
                owner_staff_id: owner.clone().unwrap_or_default(),
            }))
        }
        EntryDetail::Note {
            note_id,
            text,
            author_staff_id,
        } => Some(Detail::Note(pb::Note {
            note_id: note_id.to_string(),
            text: text.clone(),
            author_staff_id: author_staff_id.clone(),
            create_time: Some(timestamp(e.at)),
        })),
    };
    pb::TimelineEntry {
        entry_id: e.entry_id.to_string(),
        kind: e.kind.number(),
        time: Some(timestamp(e.at)),
        actor_staff_id: e.actor.staff_id().to_string(),
        actor_kind: e.actor.kind().to_string(),
        summary: e.summary.clone(),
        detail,
    }
}

/// The note of a NOTE entry.
pub fn note(e: &Entry) -> Option<pb::Note> {
    match &e.detail {
        EntryDetail::Note {
            note_id,
            text,
            author_staff_id,
        } => Some(pb::Note {
            note_id: note_id.to_string(),
            text: text.clone(),
            author_staff_id: author_staff_id.clone(),
            create_time: Some(timestamp(e.at)),
        }),
        _ => None,
    }
}

pub fn settings(s: &CaseSettings) -> pb::CaseSettings {
    pb::CaseSettings {
        response_window: Some(duration(s.response_window_secs.saturating_mul(1000))),
        digest_hour: s.digest_hour as i32,
        time_zone: s.time_zone.clone(),
    }
}

fn amount(currency: &str, amount_minor: i64) -> Option<common::Money> {
    Some(money(&Money::new(amount_minor, currency)))
}

pub fn figures(f: &Figures) -> pb::LeakageFigures {
    let c = f.currency.as_str();
    pb::LeakageFigures {
        currency: f.currency.clone(),
        presented_count: f.presented_count,
        presented_value: amount(c, f.presented_value),
        accepted_count: f.accepted_count,
        accepted_value: amount(c, f.accepted_value),
        acceptance_rate: f.acceptance_rate,
        unscheduled_count: f.unscheduled_count,
        unscheduled_value: amount(c, f.unscheduled_value),
        recovered_count: f.recovered_count,
        recovered_value: amount(c, f.recovered_value),
        median_recovery_time: f
            .median_recovery_time
            .map(|d| duration(d.num_milliseconds())),
        median_days_to_book: f.median_days_to_book,
        slots_refilled_count: f.slots_refilled_count,
        slots_refilled_value: amount(c, f.slots_refilled_value),
    }
}

pub fn report_line(
    line: &ReportLine,
    names: &std::collections::HashMap<String, String>,
) -> pb::LeakageReportLine {
    let c = line.figures.currency.as_str();
    pb::LeakageReportLine {
        figures: Some(figures(&line.figures)),
        by_status: line
            .by_status
            .iter()
            .map(|s| pb::StatusBreakdown {
                status: s.status.number(),
                count: s.count,
                value: amount(c, s.value),
            })
            .collect(),
        by_owner: line
            .by_owner
            .iter()
            .map(|o| {
                let id = o.owner_staff_id.clone().unwrap_or_default();
                pb::OwnerBreakdown {
                    owner_name: names.get(&id).cloned().unwrap_or_default(),
                    owner_staff_id: id,
                    figures: Some(figures(&o.figures)),
                }
            })
            .collect(),
    }
}
