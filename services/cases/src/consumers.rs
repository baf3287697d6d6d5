//! The events the cases service consumes, turned into engine commands. One durable consumer per subject
//! filter (NATS 2.9 allows one filter per consumer), all with the same handler.

use chrono::{DateTime, Utc};
use followup_platform::consumer::{Handler, HandlerError};
use followup_platform::event::{Envelope, from_timestamp};
use followup_platform::jetstream::{self, ConsumerSpec};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::case::{
    CaseEvent, EngagementFacts, Image, Input, Presentation, Tooth, Treatment, ViewSession,
};
use crate::domain::text::display_name;
use crate::domain::timeline::{MessageResult, suppression_words};
use crate::domain::vocab::{Channel, Money, Section, SectionTime, is_currency_code};
use crate::engine::{Command, Engine, Outcome, Target};
use crate::error::Error;
use crate::storage::{self, directory};

/// The consumers: (durable name, stream, filter subject).
pub fn specs() -> Vec<ConsumerSpec> {
    [
        ("cases-plans", jetstream::FOLLOWUP, "followup.*.plans.>"),
        (
            "cases-engagement",
            jetstream::FOLLOWUP,
            "followup.*.engagement.>",
        ),
        (
            "cases-scheduler",
            jetstream::FOLLOWUP,
            "followup.*.scheduler.>",
        ),
        (
            "cases-notifications",
            jetstream::FOLLOWUP,
            "followup.*.notifications.>",
        ),
        (
            "cases-appointments",
            jetstream::CLINIC,
            "clinic.*.appointment.>",
        ),
        (
            "cases-patients",
            jetstream::CLINIC,
            "clinic.*.patient.upserted",
        ),
        ("cases-staff", jetstream::CLINIC, "clinic.*.staff.upserted"),
    ]
    .into_iter()
    .map(|(durable, stream, filter)| ConsumerSpec::new(stream, durable, filter))
    .collect()
}

/// Applies consumed events to cases.
#[derive(Clone)]
pub struct CaseEvents {
    pub engine: Engine,
}

impl Handler for CaseEvents {
    async fn handle(&self, conn: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        self.apply(conn, &[event]).await
    }

    // A batch is one engine run: one lock, one write per kind of row, instead of several per event.
    const BATCHED: bool = true;

    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        self.apply(conn, events).await
    }
}

impl CaseEvents {
    /// Applies a batch of events in the caller's transaction: directory updates first, then every case
    /// command in one engine run.
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let mut commands = Vec::new();
        for envelope in events {
            let decoded = decode(envelope)?;
            match decoded {
                Decoded::Commands(mut c) => commands.append(&mut c),
                Decoded::Patient {
                    patient_id,
                    name,
                    archived,
                } => directory::upsert_patient(
                    conn,
                    &envelope.tenant_id,
                    &patient_id,
                    &name,
                    archived,
                    envelope.occurred_at,
                )
                .await
                .map_err(handler_error)?,
                Decoded::Staff {
                    staff_id,
                    name,
                    role,
                    active,
                } => directory::upsert_staff(
                    conn,
                    &envelope.tenant_id,
                    &staff_id,
                    &name,
                    role,
                    active,
                    envelope.occurred_at,
                )
                .await
                .map_err(handler_error)?,
                Decoded::SlotRefill {
                    offer_id,
                    case_id,
                    value,
                } => {
                    storage::record_slot_refill(
                        conn,
                        &envelope.tenant_id,
                        &offer_id,
                        case_id,
                        envelope.occurred_at,
                        value.as_ref().map_or(0, |m| m.amount_minor),
                        value.as_ref().map_or("", |m| m.currency.as_str()),
                    )
                    .await
                    .map_err(handler_error)?;
                }
                Decoded::Ignored => {}
            }
        }
        let outcomes = self
            .engine
            .apply(conn, &commands)
            .await
            .map_err(handler_error)?;
        for (command, outcome) in commands.iter().zip(outcomes) {
            if let Outcome::Rejected(reason) = outcome {
                // Events never carry staff actions; this is a bug worth seeing, not a poison message.
                tracing::warn!(tenant = %command.tenant_id, cause = %command.input.cause, %reason, "event not applied");
            }
        }
        Ok(())
    }
}

fn handler_error(err: Error) -> HandlerError {
    match err {
        Error::Db(db) => db.into(),
        Error::Outbox(outbox) => outbox.into(),
        // A stored case that cannot be read fails the same way every time: dead-letter, so it is seen.
        other => HandlerError::Invalid(other.to_string()),
    }
}

enum Decoded {
    Commands(Vec<Command>),
    Patient {
        patient_id: String,
        name: String,
        archived: bool,
    },
    Staff {
        staff_id: String,
        name: String,
        role: i32,
        active: bool,
    },
    SlotRefill {
        offer_id: String,
        case_id: Option<Uuid>,
        value: Option<Money>,
    },
    Ignored,
}

fn invalid(reason: impl Into<String>) -> HandlerError {
    HandlerError::Invalid(reason.into())
}

fn plan_uuid(field: &str, value: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(value).map_err(|_| {
        invalid(format!(
            "{field} `{value}` is not a UUID (a Followup plan id)"
        ))
    })
}

/// A plan id from a clinic system, where a wrong one must not stop the event: None when absent or not
/// a UUID, so the event falls back to the patient.
fn optional_plan(value: &str) -> Option<Uuid> {
    if value.is_empty() {
        None
    } else {
        Uuid::parse_str(value).ok()
    }
}

fn money(field: &str, value: Option<&common::Money>) -> Result<Option<Money>, HandlerError> {
    match value {
        None => Ok(None),
        Some(m) if m.currency.is_empty() && m.amount_minor == 0 => Ok(None),
        Some(m) if !is_currency_code(&m.currency) => Err(invalid(format!(
            "{field}.currency `{}` is not an ISO 4217 code",
            m.currency
        ))),
        Some(m) => Ok(Some(Money::new(m.amount_minor, m.currency.clone()))),
    }
}

fn time(value: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    value.and_then(from_timestamp)
}

fn millis(d: Option<&prost_types::Duration>) -> i64 {
    d.map_or(0, |d| {
        d.seconds.saturating_mul(1000) + i64::from(d.nanos / 1_000_000)
    })
}

fn section_times(times: &[common::SectionTime]) -> Vec<SectionTime> {
    times
        .iter()
        .filter_map(|t| {
            Some(SectionTime {
                section: Section::from_number(t.section)?,
                millis: millis(t.view_time.as_ref()),
            })
        })
        .collect()
}

fn case_of(case_ref: Option<&common::CaseRef>) -> Option<&str> {
    match case_ref?.target.as_ref()? {
        common::case_ref::Target::PlanId(id) => Some(id.as_str()),
        common::case_ref::Target::CareCaseId(_) => None,
    }
}

fn decode(envelope: &Envelope) -> Result<Decoded, HandlerError> {
    let tenant = envelope.tenant_id.clone();
    let cause = envelope.event_type().to_string();
    let at = envelope.occurred_at;
    let input = |event: CaseEvent| Input {
        event,
        at,
        event_id: envelope.event_id.clone(),
        cause: cause.clone(),
    };
    let on_plan = |plan: Uuid, event: CaseEvent| {
        Decoded::Commands(vec![Command {
            tenant_id: tenant.clone(),
            target: Target::Case(plan),
            input: input(event),
            create: true,
        }])
    };
    let on = |target: Target, event: CaseEvent| {
        Decoded::Commands(vec![Command {
            tenant_id: tenant.clone(),
            target,
            input: input(event),
            create: true,
        }])
    };
    Ok(match cause.as_str() {
        "plans.plan_created" => {
            let e: ev::PlanCreated = envelope.decode()?;
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::PlanCreated {
                    plan_version: e.plan_version,
                    patient_id: e.patient_id,
                    title: e.title,
                    owner_staff_id: e.owner_staff_id,
                    created_by_staff_id: e.created_by_staff_id,
                    value: money("value", e.value.as_ref())?,
                    alternative_group_id: e.alternative_group_id,
                },
            )
        }
        "plans.plan_sent" => {
            let e: ev::PlanSent = envelope.decode()?;
            let treatments = e
                .items
                .iter()
                .map(|item| {
                    Ok(Treatment {
                        item_id: item.item_id.clone(),
                        code: item.code.clone(),
                        name: item.name.clone(),
                        tooth: item.tooth.as_ref().map(|t| Tooth {
                            numbering: t.numbering,
                            number: t.number.clone(),
                            surfaces: t.surfaces.clone(),
                        }),
                        visit: item.visit,
                        value: money("items.value", item.value.as_ref())?,
                    })
                })
                .collect::<Result<Vec<_>, HandlerError>>()?;
            let images = e
                .images
                .iter()
                .map(|i| Image {
                    image_id: i.image_id.clone(),
                    url: i.url.clone(),
                    kind: i.kind,
                    caption: i.caption.clone(),
                })
                .collect();
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::PlanSent {
                    plan_version: e.plan_version,
                    patient_id: e.patient_id,
                    title: e.title,
                    value: money("value", e.value.as_ref())?,
                    send_count: e.send_count,
                    sent_by_staff_id: e.sent_by_staff_id,
                    owner_staff_id: e.owner_staff_id,
                    alternative_group_id: e.alternative_group_id,
                    quote_expiry_date: e.quote_expiry_date,
                    presentation: Presentation { treatments, images },
                },
            )
        }
        "plans.plan_approved" => {
            let e: ev::PlanApproved = envelope.decode()?;
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::PlanApproved {
                    plan_version: e.plan_version,
                    patient_id: e.patient_id,
                    by_patient: e.approved_by == ev::PlanApprover::Patient as i32,
                    staff_id: e.approved_by_staff_id,
                    value: money("value", e.value.as_ref())?,
                    alternative_group_id: e.alternative_group_id,
                    owner_staff_id: e.owner_staff_id,
                },
            )
        }
        "plans.plan_revised" => {
            let e: ev::PlanRevised = envelope.decode()?;
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::PlanRevised {
                    plan_version: e.plan_version,
                    patient_id: e.patient_id,
                    staff_id: e.revised_by_staff_id,
                    reason: e.reason,
                },
            )
        }
        "plans.item_completed" => {
            let e: ev::PlanItemCompleted = envelope.decode()?;
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::ItemCompleted {
                    patient_id: e.patient_id,
                    code: e.code,
                    visit: e.visit,
                    staff_id: e.completed_by_staff_id,
                    items_completed: e.items_completed,
                    item_count: e.item_count,
                },
            )
        }
        "plans.plan_completed" => {
            let e: ev::PlanCompleted = envelope.decode()?;
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::PlanCompleted {
                    patient_id: e.patient_id,
                    value: money("value", e.value.as_ref())?,
                },
            )
        }
        "plans.plan_cancelled" => {
            let e: ev::PlanCancelled = envelope.decode()?;
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::PlanCancelled {
                    patient_id: e.patient_id,
                    staff_id: e.cancelled_by_staff_id,
                    reason: e.reason,
                },
            )
        }
        "engagement.plan_viewed" => {
            let e: ev::PlanViewed = envelope.decode()?;
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::PlanViewed {
                    patient_id: e.patient_id,
                    session_id: e.session_id,
                },
            )
        }
        "engagement.engagement_updated" => {
            let e: ev::EngagementUpdated = envelope.decode()?;
            let facts = e.facts.unwrap_or_default();
            on_plan(
                plan_uuid("plan_id", &e.plan_id)?,
                CaseEvent::EngagementUpdated {
                    patient_id: e.patient_id,
                    facts: EngagementFacts {
                        first_view_at: time(facts.first_view_time.as_ref()),
                        last_view_at: time(facts.last_view_time.as_ref()),
                        view_count: facts.view_count,
                        total_view_millis: millis(facts.total_view_time.as_ref()),
                        section_times: section_times(&facts.section_times),
                    },
                    ended_sessions: e
                        .ended_sessions
                        .iter()
                        .map(|s| ViewSession {
                            session_id: s.session_id.clone(),
                            start: time(s.start_time.as_ref()).unwrap_or(at),
                            view_millis: millis(s.view_time.as_ref()),
                            sections: section_times(&s.section_times),
                        })
                        .collect(),
                },
            )
        }
        "appointment.booked"
        | "appointment.cancelled"
        | "appointment.no_show"
        | "appointment.attended" => decode_appointment(envelope, &cause, on, on_plan)?,
        "scheduler.enrollment_started" => {
            let e: ev::EnrollmentStarted = envelope.decode()?;
            let Some(plan) = case_of(e.case_ref.as_ref()) else {
                return Ok(Decoded::Ignored);
            };
            on_plan(
                plan_uuid("case_ref.plan_id", plan)?,
                CaseEvent::FollowUpStarted {
                    enrollment_id: e.enrollment_id,
                    rule_name: e.rule_name,
                    steps: e
                        .planned_steps
                        .iter()
                        .filter_map(|s| Some((s.step_index, time(s.due_time.as_ref())?)))
                        .collect(),
                },
            )
        }
        "scheduler.enrollment_stopped" => {
            let e: ev::EnrollmentStopped = envelope.decode()?;
            let Some(plan) = case_of(e.case_ref.as_ref()) else {
                return Ok(Decoded::Ignored);
            };
            on_plan(
                plan_uuid("case_ref.plan_id", plan)?,
                CaseEvent::FollowUpStopped {
                    enrollment_id: e.enrollment_id,
                    reason: e.reason,
                    detail: e.detail,
                },
            )
        }
        "scheduler.notification_requested" => {
            let e: ev::NotificationRequested = envelope.decode()?;
            let Some(plan) = case_of(e.case_ref.as_ref()) else {
                return Ok(Decoded::Ignored);
            };
            // Staff alerts about a case are not reminders to the patient.
            let to_patient = matches!(
                e.recipient.as_ref().and_then(|r| r.target.as_ref()),
                Some(ev::recipient::Target::PatientId(_))
            );
            let channel = Channel::from_number(e.channel);
            if !to_patient && channel != Channel::Task {
                return Ok(Decoded::Ignored);
            }
            on_plan(
                plan_uuid("case_ref.plan_id", plan)?,
                CaseEvent::Message {
                    message_id: String::new(),
                    idempotency_key: e.idempotency_key,
                    channel,
                    enrollment_id: e.enrollment_id,
                    result: MessageResult::Requested,
                    reason: String::new(),
                },
            )
        }
        "scheduler.slot_claimed" => {
            let e: ev::SlotClaimed = envelope.decode()?;
            let case_id = case_of(e.case_ref.as_ref()).and_then(optional_plan);
            Decoded::SlotRefill {
                offer_id: e.slot_offer_id,
                case_id,
                value: money("value", e.value.as_ref())?,
            }
        }
        "notifications.message_sent"
        | "notifications.message_delivered"
        | "notifications.message_failed"
        | "notifications.message_suppressed" => decode_message(envelope, &cause, on_plan)?,
        "notifications.patient_replied" => {
            let e: ev::PatientReplied = envelope.decode()?;
            let event = CaseEvent::PatientReplied {
                message_id: e.message_id,
                channel: Channel::from_number(e.channel),
                text: e.text,
            };
            match case_of(e.case_ref.as_ref()).and_then(optional_plan) {
                Some(plan) => on_plan(plan, event),
                None if !e.patient_id.is_empty() => {
                    on(Target::PatientLatestOpen(e.patient_id), event)
                }
                None => Decoded::Ignored,
            }
        }
        "notifications.contact_opted_out" => {
            let e: ev::ContactOptedOut = envelope.decode()?;
            if e.patient_id.is_empty() {
                return Ok(Decoded::Ignored);
            }
            on(
                Target::PatientOpen(e.patient_id),
                CaseEvent::OptedOut {
                    channel: Channel::from_number(e.channel),
                    category: e.category,
                },
            )
        }
        "notifications.task_created" => {
            let e: ev::TaskCreated = envelope.decode()?;
            let Some(plan) = case_of(e.case_ref.as_ref()) else {
                return Ok(Decoded::Ignored);
            };
            on_plan(
                plan_uuid("case_ref.plan_id", plan)?,
                CaseEvent::TaskCreated {
                    task_id: e.task_id,
                    idempotency_key: e.idempotency_key,
                    title: e.title,
                    owner_staff_id: e.owner_staff_id,
                },
            )
        }
        "notifications.task_completed" => {
            let e: ev::TaskCompleted = envelope.decode()?;
            let Some(plan) = case_of(e.case_ref.as_ref()) else {
                return Ok(Decoded::Ignored);
            };
            on_plan(
                plan_uuid("case_ref.plan_id", plan)?,
                CaseEvent::TaskCompleted {
                    task_id: e.task_id,
                    staff_id: e.completed_by_staff_id,
                    outcome: e.outcome,
                },
            )
        }
        "patient.upserted" => {
            let e: ev::PatientUpserted = envelope.decode()?;
            if e.patient_id.is_empty() {
                return Err(invalid("patient_id is empty"));
            }
            Decoded::Patient {
                name: display_name(&e.given_name, &e.family_name, &e.preferred_name),
                patient_id: e.patient_id,
                archived: e.archived,
            }
        }
        "staff.upserted" => {
            let e: ev::StaffUpserted = envelope.decode()?;
            if e.staff_id.is_empty() {
                return Err(invalid("staff_id is empty"));
            }
            Decoded::Staff {
                staff_id: e.staff_id,
                name: e.display_name,
                role: e.role,
                active: e.active,
            }
        }
        // Everything else under the filters (new event kinds, the scheduler's slot offers, opt-ins) is not
        // the cases service's business; acknowledging it keeps the consumer moving.
        _ => Decoded::Ignored,
    })
}

fn decode_appointment(
    envelope: &Envelope,
    cause: &str,
    on: impl Fn(Target, CaseEvent) -> Decoded,
    on_plan: impl Fn(Uuid, CaseEvent) -> Decoded,
) -> Result<Decoded, HandlerError> {
    let (appointment, event) = match cause {
        "appointment.booked" => {
            let e: ev::AppointmentBooked = envelope.decode()?;
            let a = e.appointment.unwrap_or_default();
            let start = a.slot.as_ref().and_then(|s| time(s.start_time.as_ref()));
            let event = CaseEvent::AppointmentBooked {
                appointment_id: a.appointment_id.clone(),
                start,
                patient_id: a.patient_id.clone(),
            };
            (a, event)
        }
        "appointment.cancelled" => {
            let e: ev::AppointmentCancelled = envelope.decode()?;
            let a = e.appointment.unwrap_or_default();
            let event = CaseEvent::AppointmentCancelled {
                appointment_id: a.appointment_id.clone(),
                by_patient: e.cancelled_by == ev::CancelledBy::Patient as i32,
            };
            (a, event)
        }
        "appointment.no_show" => {
            let e: ev::AppointmentNoShow = envelope.decode()?;
            let a = e.appointment.unwrap_or_default();
            let event = CaseEvent::AppointmentNoShow {
                appointment_id: a.appointment_id.clone(),
            };
            (a, event)
        }
        _ => {
            let e: ev::AppointmentAttended = envelope.decode()?;
            let a = e.appointment.unwrap_or_default();
            let event = CaseEvent::AppointmentAttended {
                appointment_id: a.appointment_id.clone(),
                patient_id: a.patient_id.clone(),
            };
            (a, event)
        }
    };
    if appointment.appointment_id.is_empty() {
        return Err(invalid("appointment.appointment_id is empty"));
    }
    if let Some(plan) = optional_plan(&appointment.plan_id) {
        return Ok(on_plan(plan, event));
    }
    if appointment.patient_id.is_empty() {
        return Ok(Decoded::Ignored);
    }
    // No plan named: a booking counts for the patient's open case; the rest for the case it booked.
    Ok(match event {
        CaseEvent::AppointmentBooked { .. } => {
            on(Target::PatientLatestOpen(appointment.patient_id), event)
        }
        _ => on(
            Target::PatientBooking {
                patient_id: appointment.patient_id,
                appointment_id: appointment.appointment_id,
            },
            event,
        ),
    })
}

fn decode_message(
    envelope: &Envelope,
    cause: &str,
    on_plan: impl Fn(Uuid, CaseEvent) -> Decoded,
) -> Result<Decoded, HandlerError> {
    let (message, result, reason) = match cause {
        "notifications.message_sent" => {
            let e: ev::MessageSent = envelope.decode()?;
            (e.message, MessageResult::Sent, String::new())
        }
        "notifications.message_delivered" => {
            let e: ev::MessageDelivered = envelope.decode()?;
            (e.message, MessageResult::Delivered, String::new())
        }
        "notifications.message_failed" => {
            let e: ev::MessageFailed = envelope.decode()?;
            // The provider's words are shown to staff on the timeline; never logged.
            let reason = match (e.permanent, e.reason.trim()) {
                (_, r) if !r.is_empty() => r.to_string(),
                (true, _) => "the provider refused it".to_string(),
                (false, _) => format!("gave up after {} attempts", e.attempts),
            };
            (e.message, MessageResult::Failed, reason)
        }
        _ => {
            let e: ev::MessageSuppressed = envelope.decode()?;
            (
                e.message,
                MessageResult::Suppressed,
                suppression_words(e.reason).to_string(),
            )
        }
    };
    let Some(message) = message else {
        return Err(invalid("message is missing"));
    };
    // Messages to staff (alerts, digests) are not the patient's reminders.
    if message.patient_id.is_empty() {
        return Ok(Decoded::Ignored);
    }
    let Some(plan) = case_of(message.case_ref.as_ref()) else {
        return Ok(Decoded::Ignored);
    };
    Ok(on_plan(
        plan_uuid("message.case_ref.plan_id", plan)?,
        CaseEvent::Message {
            message_id: message.message_id,
            idempotency_key: message.idempotency_key,
            channel: Channel::from_number(message.channel),
            enrollment_id: message.enrollment_id,
            result,
            reason,
        },
    ))
}
