//! Backtests: past events of one clinic read back from the CLINIC and FOLLOWUP streams through two
//! ephemeral ordered consumers (by start time; nothing durable is created, nothing is acknowledged),
//! merged in stream-time order and fed to a [`Simulation`]. The replay writes nothing: no database row,
//! no event, no consumer state that outlives it.

use std::time::{Duration as StdDuration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::{self, Context};
use chrono::{DateTime, Utc};
use followup_platform::event::{Envelope, from_timestamp};
use followup_proto::followup::common::v1::{CareCaseStatus, CaseStatus, Channel};
use followup_proto::followup::events::v1 as ev;
use followup_proto::subjects::Stream;
use futures::StreamExt;

use crate::convert::money_from;
use crate::domain::backtest::{Appointment, Report, SimEvent, Simulation};
use crate::domain::schedule::parse_date;

/// Bounds of a replay.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub max_events: u64,
    pub max_duration: StdDuration,
}

/// Where a running replay is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub events: u64,
    pub estimated: u64,
    pub replay_time: Option<DateTime<Utc>>,
    pub fraction: f64,
    pub cases_enrolled: u32,
}

/// How a replay ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub report: Report,
    pub truncated: bool,
    pub elapsed: StdDuration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("stream {0}: {1}")]
    Stream(&'static str, String),
    /// The receiver of progress went away: the caller cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Message counts of the two streams for a tenant's range, as JetStream estimates them.
struct Source {
    name: &'static str,
    messages: Ordered,
    pending: u64,
    done: bool,
    head: Option<(DateTime<Utc>, jetstream::Message)>,
}

fn to_offset(at: DateTime<Utc>) -> time::OffsetDateTime {
    let nanos = at.timestamp_nanos_opt().unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn from_offset(at: time::OffsetDateTime) -> DateTime<Utc> {
    let nanos = at.unix_timestamp_nanos();
    let seconds = i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0);
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0);
    DateTime::from_timestamp(seconds, sub).unwrap_or_default()
}

async fn open(
    js: &Context,
    stream: Stream,
    tenant: &str,
    start: DateTime<Utc>,
) -> Result<Source, ReplayError> {
    let name = stream.name();
    let err = |e: &dyn std::fmt::Display| ReplayError::Stream(name, e.to_string());
    let filter = stream.tenant_filter(tenant).map_err(|e| err(&e))?;
    let handle = js.get_stream(name).await.map_err(|e| err(&e))?;
    let mut consumer = handle
        .create_consumer(OrderedConfig {
            deliver_subject: js_inbox(js),
            filter_subject: filter,
            deliver_policy: DeliverPolicy::ByStartTime {
                start_time: to_offset(start),
            },
            description: Some("followup-scheduler backtest (ephemeral)".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
    let pending = consumer.info().await.map(|i| i.num_pending).unwrap_or(0);
    let messages = consumer.messages().await.map_err(|e| err(&e))?;
    Ok(Source {
        name,
        messages,
        pending,
        done: pending == 0,
        head: None,
    })
}

fn message_time(message: &jetstream::Message) -> DateTime<Utc> {
    message
        .info()
        .map(|i| from_offset(i.published))
        .unwrap_or_default()
}

fn js_inbox(js: &Context) -> String {
    js.client().new_inbox()
}

impl Source {
    /// Makes sure `head` holds the next message of the range, unless the stream is done.
    async fn fill(&mut self, end: DateTime<Utc>) -> Result<(), ReplayError> {
        if self.head.is_some() || self.done {
            return Ok(());
        }
        let Some(next) = self.messages.next().await else {
            self.done = true;
            return Ok(());
        };
        let message = next.map_err(|e| ReplayError::Stream(self.name, e.to_string()))?;
        let info = message
            .info()
            .map_err(|e| ReplayError::Stream(self.name, e.to_string()))?;
        let at = from_offset(info.published);
        // Caught up with the stream as it was when this message was read: nothing older is left.
        if info.pending == 0 {
            self.done = true;
        }
        if at > end {
            self.done = true;
            return Ok(());
        }
        self.head = Some((at, message));
        Ok(())
    }
}

/// Reads a decoded event into what the simulation needs; None for events rules ignore.
pub fn sim_event(e: &Envelope) -> Option<SimEvent> {
    let time = |ts: Option<&prost_types::Timestamp>| ts.and_then(from_timestamp);
    let appointment = |a: Option<ev::Appointment>| {
        let a = a.unwrap_or_default();
        Appointment {
            start: time(a.slot.as_ref().and_then(|s| s.start_time.as_ref())),
            id: a.appointment_id,
            patient_id: a.patient_id,
            plan_id: a.plan_id,
            care_case_id: a.care_case_id,
        }
    };
    Some(match e.event_type() {
        "patient.upserted" => {
            let p: ev::PatientUpserted = e.decode().ok()?;
            SimEvent::Patient {
                time_zone: p.time_zone.parse().ok(),
                patient_id: p.patient_id,
                archived: p.archived,
            }
        }
        "appointment.booked" => {
            let b: ev::AppointmentBooked = e.decode().ok()?;
            SimEvent::Booked {
                appointment: appointment(b.appointment),
                replaces: b.rescheduled_from_appointment_id,
            }
        }
        "appointment.cancelled" => {
            let c: ev::AppointmentCancelled = e.decode().ok()?;
            SimEvent::Cancelled(appointment(c.appointment))
        }
        "appointment.no_show" => {
            let n: ev::AppointmentNoShow = e.decode().ok()?;
            SimEvent::NoShow(appointment(n.appointment))
        }
        "appointment.attended" => {
            let a: ev::AppointmentAttended = e.decode().ok()?;
            SimEvent::Attended(appointment(a.appointment))
        }
        "enquiry.created" => {
            let q: ev::EnquiryCreated = e.decode().ok()?;
            SimEvent::Enquiry {
                enquiry_id: q.enquiry_id,
                patient_id: q.patient_id,
            }
        }
        "consultation.completed" => {
            let c: ev::ConsultationCompleted = e.decode().ok()?;
            SimEvent::Consultation {
                appointment_id: c.appointment_id,
                patient_id: c.patient_id,
                plan_id: c.plan_id,
                next_visit_booked: c.next_visit_booked,
            }
        }
        "care_case.upserted" => {
            let c: ev::CareCaseUpserted = e.decode().ok()?;
            SimEvent::CareCase {
                open: c.status != CareCaseStatus::Closed as i32,
                issue_date: parse_date(&c.issue_date),
                expiry_date: parse_date(&c.expiry_date),
                max_sessions: c.max_sessions,
                invoiceable: money_from(c.invoiceable_amount.as_ref()),
                care_case_id: c.care_case_id,
                patient_id: c.patient_id,
                name: c.name,
            }
        }
        "invoice.issued" => {
            let i: ev::InvoiceIssued = e.decode().ok()?;
            SimEvent::Invoice {
                care_case_id: i.care_case_id,
                amount: money_from(i.amount.as_ref())?,
            }
        }
        "plans.plan_created" => {
            let p: ev::PlanCreated = e.decode().ok()?;
            SimEvent::PlanCreated {
                value: money_from(p.value.as_ref()),
                plan_id: p.plan_id,
                patient_id: p.patient_id,
                title: p.title,
            }
        }
        "plans.plan_sent" => {
            let p: ev::PlanSent = e.decode().ok()?;
            SimEvent::PlanSent {
                sent_at: time(p.sent_time.as_ref()).unwrap_or(e.occurred_at),
                value: money_from(p.value.as_ref()),
                expiry_date: parse_date(&p.quote_expiry_date),
                visit_count: p.visit_count,
                visits_completed: p.visits_completed,
                plan_id: p.plan_id,
                patient_id: p.patient_id,
                title: p.title,
            }
        }
        "plans.plan_approved" => {
            let p: ev::PlanApproved = e.decode().ok()?;
            SimEvent::PlanApproved {
                plan_id: p.plan_id,
                patient_id: p.patient_id,
            }
        }
        "plans.plan_revised" => {
            let p: ev::PlanRevised = e.decode().ok()?;
            SimEvent::PlanRevised {
                value: money_from(p.value.as_ref()),
                plan_id: p.plan_id,
            }
        }
        "plans.item_completed" => {
            let p: ev::PlanItemCompleted = e.decode().ok()?;
            SimEvent::ItemCompleted {
                completed_value: money_from(p.completed_value.as_ref()),
                visits_completed: p.visits_completed,
                visit_count: p.visit_count,
                plan_id: p.plan_id,
                patient_id: p.patient_id,
            }
        }
        "plans.plan_completed" => {
            let p: ev::PlanCompleted = e.decode().ok()?;
            SimEvent::PlanClosed {
                plan_id: p.plan_id,
                patient_id: p.patient_id,
                status: CaseStatus::TreatmentCompleted,
            }
        }
        "plans.plan_cancelled" => {
            let p: ev::PlanCancelled = e.decode().ok()?;
            SimEvent::PlanClosed {
                plan_id: p.plan_id,
                patient_id: p.patient_id,
                status: CaseStatus::PatientRejected,
            }
        }
        "engagement.plan_viewed" => {
            let v: ev::PlanViewed = e.decode().ok()?;
            SimEvent::Viewed {
                plan_id: v.plan_id,
                patient_id: v.patient_id,
            }
        }
        "cases.case_status_changed" => {
            let c: ev::CaseStatusChanged = e.decode().ok()?;
            SimEvent::CaseStatus {
                status: CaseStatus::try_from(c.to_status).ok()?,
                case_id: c.case_id,
                patient_id: c.patient_id,
            }
        }
        "notifications.patient_replied" => {
            let r: ev::PatientReplied = e.decode().ok()?;
            SimEvent::Replied {
                patient_id: r.patient_id,
            }
        }
        "notifications.contact_opted_out" | "notifications.contact_opted_in" => {
            let opted_out = e.event_type().ends_with("opted_out");
            let (patient_id, channel, category) = if opted_out {
                let o: ev::ContactOptedOut = e.decode().ok()?;
                (o.patient_id, o.channel, o.category)
            } else {
                let o: ev::ContactOptedIn = e.decode().ok()?;
                (o.patient_id, o.channel, o.category)
            };
            SimEvent::Consent {
                patient_id,
                channel: Channel::try_from(channel).unwrap_or(Channel::Unspecified),
                category,
                opted_out,
            }
        }
        "notifications.message_sent" => {
            let m: ev::MessageSent = e.decode().ok()?;
            let m = m.message?;
            let channel = Channel::try_from(m.channel).unwrap_or(Channel::Unspecified);
            // What the notifications service counts toward the cap: automated patient messages outside
            // the transactional categories it ships (a clinic may mark more; those are over-counted).
            let capped = matches!(channel, Channel::Sms | Channel::Email | Channel::Chat)
                && !matches!(m.category.as_str(), "appointment_reminders" | "slot_offers");
            SimEvent::MessageSent {
                patient_id: m.patient_id,
                capped,
            }
        }
        _ => return None,
    })
}

/// Replays the clinic's events of the range through `sim`, calling `progress` about every 500 ms (an
/// error from it — the caller went away — stops the replay).
pub async fn run(
    js: &Context,
    tenant: &str,
    mut sim: Simulation,
    limits: Limits,
    mut progress: impl FnMut(Progress) -> Result<(), ReplayError>,
) -> Result<Outcome, ReplayError> {
    let began = Instant::now();
    let mut sources = [
        open(js, Stream::Clinic, tenant, limits.start).await?,
        open(js, Stream::Followup, tenant, limits.start).await?,
    ];
    let estimated: u64 = sources.iter().map(|s| s.pending).sum();
    let span = (limits.end - limits.start).num_milliseconds().max(1) as f64;
    let mut last_report = Instant::now();
    let mut truncated = false;
    let report_progress = |sim: &Simulation| {
        let replay_time = sim.now();
        Progress {
            events: sim.events(),
            estimated,
            replay_time,
            fraction: replay_time
                .map(|t| ((t - limits.start).num_milliseconds() as f64 / span).clamp(0.0, 1.0))
                .unwrap_or(0.0),
            cases_enrolled: sim.cases_enrolled(),
        }
    };
    progress(report_progress(&sim))?;
    loop {
        for source in sources.iter_mut() {
            source.fill(limits.end).await?;
        }
        let pick = match (&sources[0].head, &sources[1].head) {
            (None, None) => break,
            (Some(_), None) => 0,
            (None, Some(_)) => 1,
            (Some((a, _)), Some((b, _))) => usize::from(b < a),
        };
        let Some((_, message)) = sources[pick].head.take() else {
            break;
        };
        let stream = sources[pick].name;
        let (at, _) = (message_time(&message), ());
        match Envelope::parse(
            stream,
            message.subject.as_str(),
            message.payload.clone(),
            message.headers.clone(),
            0,
            1,
        ) {
            Ok(envelope) => match sim_event(&envelope) {
                Some(event) => sim.apply(envelope.occurred_at, &event),
                None => sim.tick(envelope.occurred_at),
            },
            // Undecodable: the live consumers dead-letter it; here it only moves the clock.
            Err(_) => sim.tick(at),
        }
        if sim.events() >= limits.max_events || began.elapsed() >= limits.max_duration {
            truncated = sources.iter().any(|s| s.head.is_some() || !s.done);
            break;
        }
        if last_report.elapsed() >= StdDuration::from_millis(500) {
            last_report = Instant::now();
            progress(report_progress(&sim))?;
        }
    }
    progress(report_progress(&sim))?;
    // The ordered consumers are in-memory and ephemeral: the server drops them 30 s after their last use.
    drop(sources);
    let until = if truncated {
        sim.now().unwrap_or(limits.start)
    } else {
        limits.end
    };
    Ok(Outcome {
        report: sim.finish(until),
        truncated,
        elapsed: began.elapsed(),
    })
}
