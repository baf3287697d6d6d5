//! What the scheduler does with the events it consumes, in the runner's transaction: keep the case facts,
//! stop the enrollments a stop condition ends, then start (or arm the timers of) the rules a trigger
//! fires — in that order, so a trigger sees the facts its own event brought.
//!
//! One durable consumer per producer (NATS 2.9 allows one filter subject per consumer):
//! `scheduler-clinic` (`clinic.>`), `scheduler-plans`, `scheduler-engagement`, `scheduler-cases` and
//! `scheduler-notifications` (`followup.*.<producer>.>`). The scheduler's own events are not consumed.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use followup_platform::consumer::{Handler, HandlerError};
use followup_platform::event::Envelope;
use followup_platform::jetstream::{CLINIC, ConsumerSpec, FOLLOWUP};
use followup_proto::followup::common::v1::{CaseKind, CaseStatus, Channel, StopReason};
use followup_proto::followup::events::v1 as ev;
use followup_proto::followup::scheduler::v1::TriggerType;
use sqlx::PgConnection;

use crate::domain::enrollment::{self, Subject};
use crate::domain::rule::RuleDef;
use crate::error::Result;
use crate::storage::enroll::{self, Contact, Enrolled, PlayingRule, Triggered};
use crate::storage::facts::{self, AppointmentState, PatientTime};
use crate::storage::stop::{self, Cause, Scope};
use crate::storage::timers::{self, Timer};
use crate::storage::{Store, settings, waitlist};

/// The durable consumers of the service.
pub fn specs() -> Vec<ConsumerSpec> {
    vec![
        ConsumerSpec::new(CLINIC, "scheduler-clinic", "clinic.>"),
        ConsumerSpec::new(FOLLOWUP, "scheduler-plans", "followup.*.plans.>"),
        ConsumerSpec::new(FOLLOWUP, "scheduler-engagement", "followup.*.engagement.>"),
        ConsumerSpec::new(FOLLOWUP, "scheduler-cases", "followup.*.cases.>"),
        ConsumerSpec::new(
            FOLLOWUP,
            "scheduler-notifications",
            "followup.*.notifications.>",
        ),
    ]
}

/// The handler of every consumer of the service.
#[derive(Clone)]
pub struct Events {
    pub store: Store,
}

impl Handler for Events {
    async fn handle(&self, conn: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        self.apply(conn, event).await
    }

    /// The event's patient: each event locks its patient's facts (`facts::lock_patient`), and the runner
    /// takes a batch's patients up front in one order, so concurrent batches never deadlock on them.
    fn lock_key(&self, event: &Envelope) -> Option<String> {
        patient_of(event).map(|patient| facts::patient_lock_key(&event.tenant_id, &patient))
    }
}

/// The patient an event is about, for the events whose handling locks one.
fn patient_of(e: &Envelope) -> Option<String> {
    fn field<M: prost::Message + prost::Name + Default>(
        e: &Envelope,
        patient: impl FnOnce(M) -> String,
    ) -> Option<String> {
        e.decode::<M>().ok().map(patient)
    }
    let appointment = |a: Option<ev::Appointment>| a.unwrap_or_default().patient_id;
    let patient = match e.event_type() {
        "patient.upserted" => field(e, |m: ev::PatientUpserted| m.patient_id),
        "appointment.booked" => field(e, |m: ev::AppointmentBooked| appointment(m.appointment)),
        "appointment.cancelled" => {
            field(e, |m: ev::AppointmentCancelled| appointment(m.appointment))
        }
        "appointment.no_show" => field(e, |m: ev::AppointmentNoShow| appointment(m.appointment)),
        "appointment.attended" => field(e, |m: ev::AppointmentAttended| appointment(m.appointment)),
        "enquiry.created" => field(e, |m: ev::EnquiryCreated| m.patient_id),
        "consultation.completed" => field(e, |m: ev::ConsultationCompleted| m.patient_id),
        "care_case.upserted" => field(e, |m: ev::CareCaseUpserted| m.patient_id),
        "invoice.issued" => field(e, |m: ev::InvoiceIssued| m.patient_id),
        "plans.plan_created" => field(e, |m: ev::PlanCreated| m.patient_id),
        "plans.plan_sent" => field(e, |m: ev::PlanSent| m.patient_id),
        "plans.plan_approved" => field(e, |m: ev::PlanApproved| m.patient_id),
        "plans.plan_revised" => field(e, |m: ev::PlanRevised| m.patient_id),
        "plans.item_completed" => field(e, |m: ev::PlanItemCompleted| m.patient_id),
        "plans.plan_completed" => field(e, |m: ev::PlanCompleted| m.patient_id),
        "plans.plan_cancelled" => field(e, |m: ev::PlanCancelled| m.patient_id),
        "engagement.plan_viewed" => field(e, |m: ev::PlanViewed| m.patient_id),
        "engagement.engagement_updated" => field(e, |m: ev::EngagementUpdated| m.patient_id),
        "cases.case_status_changed" => field(e, |m: ev::CaseStatusChanged| m.patient_id),
        "cases.case_owner_assigned" => field(e, |m: ev::CaseOwnerAssigned| m.patient_id),
        "notifications.patient_replied" => field(e, |m: ev::PatientReplied| m.patient_id),
        "notifications.contact_opted_out" => field(e, |m: ev::ContactOptedOut| m.patient_id),
        "notifications.contact_opted_in" => field(e, |m: ev::ContactOptedIn| m.patient_id),
        _ => None,
    }?;
    (!patient.is_empty()).then_some(patient)
}

fn time(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(followup_platform::event::from_timestamp)
}

impl Events {
    async fn apply(&self, conn: &mut PgConnection, e: &Envelope) -> Result<(), HandlerError> {
        let at = e.occurred_at;
        let tenant = e.tenant_id.as_str();
        match e.event_type() {
            "patient.upserted" => {
                let p: ev::PatientUpserted = e.decode()?;
                facts::lock_patient(conn, tenant, &p.patient_id).await?;
                facts::patient_upserted(conn, &p, at).await?;
            }
            "appointment.booked" => {
                let b: ev::AppointmentBooked = e.decode()?;
                let a = b.appointment.clone().unwrap_or_default();
                facts::lock_patient(conn, tenant, &a.patient_id).await?;
                self.booked(conn, tenant, &a, &b.rescheduled_from_appointment_id, e)
                    .await?;
                waitlist::on_booked(&self.store, conn, tenant, &b).await?;
            }
            "appointment.cancelled" => {
                let c: ev::AppointmentCancelled = e.decode()?;
                let a = c.appointment.clone().unwrap_or_default();
                facts::lock_patient(conn, tenant, &a.patient_id).await?;
                facts::appointment(conn, tenant, &a, AppointmentState::Cancelled, at, "").await?;
                self.cancelled(conn, tenant, &a, e).await?;
                waitlist::on_cancelled(&self.store, conn, tenant, &c).await?;
            }
            "appointment.no_show" => {
                let n: ev::AppointmentNoShow = e.decode()?;
                let a = n.appointment.unwrap_or_default();
                facts::lock_patient(conn, tenant, &a.patient_id).await?;
                facts::appointment(conn, tenant, &a, AppointmentState::NoShow, at, "").await?;
                self.enroll_patient_level(conn, tenant, TriggerType::NoShow, &a, e)
                    .await?;
            }
            "appointment.attended" => {
                let n: ev::AppointmentAttended = e.decode()?;
                let a = n.appointment.unwrap_or_default();
                facts::lock_patient(conn, tenant, &a.patient_id).await?;
                facts::appointment(conn, tenant, &a, AppointmentState::Attended, at, "").await?;
                facts::touch_patient(conn, tenant, &a.patient_id, PatientTime::Attended, at)
                    .await?;
                self.attended(conn, tenant, &a, e).await?;
            }
            "enquiry.created" => {
                let q: ev::EnquiryCreated = e.decode()?;
                facts::lock_patient(conn, tenant, &q.patient_id).await?;
                self.enquiry(conn, tenant, &q, e).await?;
            }
            "consultation.completed" => {
                let c: ev::ConsultationCompleted = e.decode()?;
                facts::lock_patient(conn, tenant, &c.patient_id).await?;
                self.consultation(conn, tenant, &c, e).await?;
            }
            "care_case.upserted" => {
                let c: ev::CareCaseUpserted = e.decode()?;
                facts::lock_patient(conn, tenant, &c.patient_id).await?;
                facts::care_case_upserted(conn, &c, at).await?;
                self.care_case(conn, tenant, &c, e).await?;
            }
            "invoice.issued" => {
                let i: ev::InvoiceIssued = e.decode()?;
                facts::lock_patient(conn, tenant, &i.patient_id).await?;
                facts::invoice(conn, &i, at).await?;
            }
            "plans.plan_created" => {
                let p: ev::PlanCreated = e.decode()?;
                facts::lock_patient(conn, tenant, &p.patient_id).await?;
                facts::plan_created(conn, &p, at).await?;
            }
            "plans.plan_sent" => {
                let p: ev::PlanSent = e.decode()?;
                facts::lock_patient(conn, tenant, &p.patient_id).await?;
                let clinic = settings::load(conn, tenant).await?;
                facts::plan_sent(conn, &p, at, clinic.tz).await?;
                self.plan_sent(conn, tenant, &p, e).await?;
            }
            "plans.plan_approved" => {
                let p: ev::PlanApproved = e.decode()?;
                facts::lock_patient(conn, tenant, &p.patient_id).await?;
                facts::plan_approved(conn, &p).await?;
                self.stop_case(
                    conn,
                    tenant,
                    &p.plan_id,
                    StopReason::Approved,
                    "plan approved",
                    e,
                )
                .await?;
            }
            "plans.plan_revised" => {
                let p: ev::PlanRevised = e.decode()?;
                facts::lock_patient(conn, tenant, &p.patient_id).await?;
                facts::plan_revised(conn, &p, at).await?;
            }
            "plans.item_completed" => {
                let p: ev::PlanItemCompleted = e.decode()?;
                facts::lock_patient(conn, tenant, &p.patient_id).await?;
                facts::item_completed(conn, &p, at).await?;
            }
            "plans.plan_completed" => {
                let p: ev::PlanCompleted = e.decode()?;
                facts::lock_patient(conn, tenant, &p.patient_id).await?;
                facts::presentation_status(
                    conn,
                    tenant,
                    &p.plan_id,
                    &p.patient_id,
                    CaseStatus::TreatmentCompleted,
                    at,
                )
                .await?;
                self.stop_case(
                    conn,
                    tenant,
                    &p.plan_id,
                    StopReason::PlanCompleted,
                    "plan completed",
                    e,
                )
                .await?;
            }
            "plans.plan_cancelled" => {
                let p: ev::PlanCancelled = e.decode()?;
                facts::lock_patient(conn, tenant, &p.patient_id).await?;
                facts::presentation_status(
                    conn,
                    tenant,
                    &p.plan_id,
                    &p.patient_id,
                    CaseStatus::PatientRejected,
                    at,
                )
                .await?;
                self.stop_case(
                    conn,
                    tenant,
                    &p.plan_id,
                    StopReason::PlanCancelled,
                    "plan cancelled",
                    e,
                )
                .await?;
            }
            "engagement.plan_viewed" => {
                let v: ev::PlanViewed = e.decode()?;
                facts::lock_patient(conn, tenant, &v.patient_id).await?;
                facts::viewed(conn, tenant, &v.plan_id, &v.patient_id, at).await?;
                self.plan_viewed(conn, tenant, &v, e).await?;
            }
            "engagement.engagement_updated" => {
                let u: ev::EngagementUpdated = e.decode()?;
                facts::lock_patient(conn, tenant, &u.patient_id).await?;
                if let Some(f) = u.facts.as_ref().filter(|f| f.view_count > 0) {
                    let first = time(f.first_view_time.as_ref()).unwrap_or(at);
                    facts::viewed(conn, tenant, &u.plan_id, &u.patient_id, first).await?;
                }
            }
            "cases.case_status_changed" => {
                let c: ev::CaseStatusChanged = e.decode()?;
                facts::lock_patient(conn, tenant, &c.patient_id).await?;
                facts::case_status_changed(conn, &c, at).await?;
                self.case_status(conn, tenant, &c, e).await?;
            }
            "cases.case_owner_assigned" => {
                let c: ev::CaseOwnerAssigned = e.decode()?;
                facts::lock_patient(conn, tenant, &c.patient_id).await?;
                facts::owner(conn, tenant, &c.case_id, &c.owner_staff_id, at).await?;
            }
            "notifications.patient_replied" => {
                let r: ev::PatientReplied = e.decode()?;
                facts::lock_patient(conn, tenant, &r.patient_id).await?;
                facts::touch_patient(conn, tenant, &r.patient_id, PatientTime::Replied, at).await?;
                let cause = Cause {
                    reason: StopReason::PatientReplied,
                    detail: "the patient replied".into(),
                    event_id: &e.event_id,
                    occurred_at: at,
                    momentary: true,
                };
                stop::stop(
                    &self.store,
                    conn,
                    tenant,
                    Scope::Patient(&r.patient_id),
                    &cause,
                    |_| true,
                )
                .await?;
                waitlist::on_reply(&self.store, conn, tenant, &r).await?;
            }
            "notifications.contact_opted_out" => {
                let o: ev::ContactOptedOut = e.decode()?;
                facts::lock_patient(conn, tenant, &o.patient_id).await?;
                facts::consent(
                    conn,
                    tenant,
                    &o.patient_id,
                    o.channel,
                    &o.category,
                    true,
                    at,
                )
                .await?;
                let channel = Channel::try_from(o.channel).unwrap_or(Channel::Unspecified);
                let detail = if o.category.is_empty() {
                    "opted out of every category".to_string()
                } else {
                    format!("opted out of {}", o.category)
                };
                let cause = Cause {
                    reason: StopReason::OptedOut,
                    detail,
                    event_id: &e.event_id,
                    occurred_at: at,
                    momentary: false,
                };
                stop::stop(
                    &self.store,
                    conn,
                    tenant,
                    Scope::Patient(&o.patient_id),
                    &cause,
                    |def: &RuleDef| enrollment::opt_out_stops(def, &o.category, channel),
                )
                .await?;
                waitlist::on_opted_out(conn, tenant, &o).await?;
            }
            "waitlist_entry.upserted" => {
                let w: ev::WaitlistEntryUpserted = e.decode()?;
                if let Some(entry) = waitlist::entry_from_event(&w, at) {
                    waitlist::upsert_entry(conn, tenant, &entry, self.store.now()).await?;
                }
            }
            "notifications.contact_opted_in" => {
                let o: ev::ContactOptedIn = e.decode()?;
                facts::lock_patient(conn, tenant, &o.patient_id).await?;
                facts::consent(
                    conn,
                    tenant,
                    &o.patient_id,
                    o.channel,
                    &o.category,
                    false,
                    at,
                )
                .await?;
            }
            "notifications.message_sent" => {
                let m: ev::MessageSent = e.decode()?;
                self.outcome(conn, tenant, m.message.as_ref(), "sent", at)
                    .await?;
            }
            "notifications.message_delivered" => {
                let m: ev::MessageDelivered = e.decode()?;
                self.outcome(conn, tenant, m.message.as_ref(), "delivered", at)
                    .await?;
            }
            "notifications.message_failed" => {
                let m: ev::MessageFailed = e.decode()?;
                self.outcome(conn, tenant, m.message.as_ref(), "failed", at)
                    .await?;
            }
            "notifications.message_suppressed" => {
                let m: ev::MessageSuppressed = e.decode()?;
                let reason =
                    followup_proto::followup::common::v1::SuppressionReason::try_from(m.reason)
                        .map(|r| {
                            r.as_str_name()
                                .trim_start_matches("SUPPRESSION_REASON_")
                                .to_lowercase()
                        })
                        .unwrap_or_default();
                self.outcome(
                    conn,
                    tenant,
                    m.message.as_ref(),
                    &format!("suppressed: {reason}"),
                    at,
                )
                .await?;
            }
            "notifications.task_created" => {
                let t: ev::TaskCreated = e.decode()?;
                facts::step_outcome(conn, tenant, &t.idempotency_key, "task created", at).await?;
            }
            // Staff records, inbound messages (notifications reads them), digests and the rest: nothing
            // for rules or the waitlist.
            _ => {}
        }
        Ok(())
    }

    async fn outcome(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        message: Option<&ev::MessageRef>,
        outcome: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        match message {
            Some(m) if !m.idempotency_key.is_empty() => {
                facts::step_outcome(conn, tenant, &m.idempotency_key, outcome, at).await
            }
            _ => Ok(()),
        }
    }

    async fn stop_case(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        plan_id: &str,
        reason: StopReason,
        detail: &str,
        e: &Envelope,
    ) -> Result<usize> {
        let cause = Cause {
            reason,
            detail: detail.into(),
            event_id: &e.event_id,
            occurred_at: e.occurred_at,
            momentary: false,
        };
        stop::stop(
            &self.store,
            conn,
            tenant,
            Scope::Case(CaseKind::CasePresentation, plan_id),
            &cause,
            |_| true,
        )
        .await
    }

    async fn booked(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        a: &ev::Appointment,
        replaces: &str,
        e: &Envelope,
    ) -> Result<()> {
        let at = e.occurred_at;
        facts::appointment(conn, tenant, a, AppointmentState::Booked, at, replaces).await?;
        facts::touch_patient(conn, tenant, &a.patient_id, PatientTime::Booked, at).await?;
        if !a.plan_id.is_empty() {
            facts::presentation_status(
                conn,
                tenant,
                &a.plan_id,
                &a.patient_id,
                CaseStatus::PatientBooked,
                at,
            )
            .await?;
        }
        let cause = Cause {
            reason: StopReason::Booked,
            detail: format!("appointment {} booked", a.appointment_id),
            event_id: &e.event_id,
            occurred_at: at,
            momentary: true,
        };
        stop::stop(
            &self.store,
            conn,
            tenant,
            Scope::Patient(&a.patient_id),
            &cause,
            |_| true,
        )
        .await?;
        if !a.plan_id.is_empty() {
            let cause = Cause {
                momentary: false,
                ..cause
            };
            stop::stop(
                &self.store,
                conn,
                tenant,
                Scope::Case(CaseKind::CasePresentation, &a.plan_id),
                &cause,
                |_| true,
            )
            .await?;
        }
        if !a.care_case_id.is_empty() {
            self.sessions_reached(conn, tenant, &a.care_case_id, &a.patient_id, e)
                .await?;
        }
        Ok(())
    }

    /// The subject of a patient-level trigger for a rule: the appointment's case of the rule's kind if
    /// it names one, else the patient.
    fn subject_for(def: &RuleDef, patient_id: &str, plan_id: &str, care_case_id: &str) -> Subject {
        match def.case_kind {
            CaseKind::CasePresentation if !plan_id.is_empty() => Subject::Case {
                kind: CaseKind::CasePresentation,
                id: plan_id.to_string(),
            },
            CaseKind::CareCase if !care_case_id.is_empty() => Subject::Case {
                kind: CaseKind::CareCase,
                id: care_case_id.to_string(),
            },
            _ => Subject::Patient(patient_id.to_string()),
        }
    }

    fn appointment_variables(a: &ev::Appointment) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::from([("appointment_id".to_string(), a.appointment_id.clone())]);
        if let Some(start) = time(a.slot.as_ref().and_then(|s| s.start_time.as_ref())) {
            vars.insert(
                "appointment_time".into(),
                start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        }
        if let Some(practitioner) = a
            .slot
            .as_ref()
            .map(|s| &s.practitioner_id)
            .filter(|p| !p.is_empty())
        {
            vars.insert("practitioner_id".into(), practitioner.clone());
        }
        vars
    }

    async fn rules(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        kind: TriggerType,
    ) -> Result<Vec<PlayingRule>> {
        enroll::playing_rules(&self.store, conn, tenant, &[kind]).await
    }

    async fn start(
        &self,
        conn: &mut PgConnection,
        rule: &PlayingRule,
        t: &Triggered,
    ) -> Result<()> {
        let outcome = enroll::enroll(&self.store, conn, rule, t).await?;
        if let Enrolled::Skipped(why) = outcome {
            tracing::debug!(tenant = %t.tenant, rule_id = %rule.rule_id, trigger = %t.trigger, why, "not enrolled");
        }
        Ok(())
    }

    async fn enroll_patient_level(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        kind: TriggerType,
        a: &ev::Appointment,
        e: &Envelope,
    ) -> Result<()> {
        if a.patient_id.is_empty() {
            return Ok(());
        }
        for rule in self.rules(conn, tenant, kind).await? {
            let t = Triggered {
                tenant: tenant.to_string(),
                subject: Self::subject_for(&rule.def, &a.patient_id, &a.plan_id, &a.care_case_id),
                patient_id: a.patient_id.clone(),
                contact: None,
                variables: Self::appointment_variables(a),
                trigger: e.event_type().to_string(),
                trigger_event_id: e.event_id.clone(),
                trigger_at: e.occurred_at,
            };
            self.start(conn, &rule, &t).await?;
        }
        Ok(())
    }

    async fn cancelled(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        a: &ev::Appointment,
        e: &Envelope,
    ) -> Result<()> {
        if a.patient_id.is_empty() {
            return Ok(());
        }
        for rule in self.rules(conn, tenant, TriggerType::Cancellation).await? {
            let grace = rule.def.trigger.cancellation_grace;
            timers::arm(
                conn,
                &Timer {
                    tenant: tenant.to_string(),
                    rule_id: rule.rule_id,
                    timer_key: format!("appointment:{}", a.appointment_id),
                    subject: Self::subject_for(
                        &rule.def,
                        &a.patient_id,
                        &a.plan_id,
                        &a.care_case_id,
                    ),
                    patient_id: a.patient_id.clone(),
                    anchor_at: e.occurred_at,
                    due_at: e.occurred_at + grace,
                    trigger: e.event_type().to_string(),
                    cause_event_id: e.event_id.clone(),
                    variables: Self::appointment_variables(a),
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn attended(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        a: &ev::Appointment,
        e: &Envelope,
    ) -> Result<()> {
        let lapsed = self.rules(conn, tenant, TriggerType::LapsedPatient).await?;
        if !lapsed.is_empty() && !a.patient_id.is_empty() {
            let clinic = settings::load(conn, tenant).await?;
            // The newest attended visit is the anchor (an older one processed late changes nothing).
            let last = facts::patient(conn, tenant, &a.patient_id)
                .await?
                .last_attended_at
                .unwrap_or(e.occurred_at);
            for rule in &lapsed {
                let timer =
                    timers::lapsed_timer(tenant, rule, &a.patient_id, last, &e.event_id, clinic.tz);
                timers::arm(conn, &timer).await?;
            }
        }
        if !a.care_case_id.is_empty() {
            self.sessions_reached(conn, tenant, &a.care_case_id, &a.patient_id, e)
                .await?;
        }
        Ok(())
    }

    async fn sessions_reached(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        care_case_id: &str,
        patient_id: &str,
        e: &Envelope,
    ) -> Result<()> {
        let rules = self
            .rules(conn, tenant, TriggerType::CareCaseSessionsReached)
            .await?;
        if rules.is_empty() {
            return Ok(());
        }
        let done =
            facts::care_case_sessions_done(conn, tenant, care_case_id, self.store.now()).await?;
        for rule in rules {
            if done < rule.def.trigger.session_threshold as i32 {
                continue;
            }
            let t = Triggered {
                tenant: tenant.to_string(),
                subject: Subject::Case {
                    kind: CaseKind::CareCase,
                    id: care_case_id.to_string(),
                },
                patient_id: patient_id.to_string(),
                contact: None,
                variables: BTreeMap::from([("sessions_done".to_string(), done.to_string())]),
                trigger: e.event_type().to_string(),
                trigger_event_id: e.event_id.clone(),
                trigger_at: e.occurred_at,
            };
            self.start(conn, &rule, &t).await?;
        }
        Ok(())
    }

    async fn enquiry(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        q: &ev::EnquiryCreated,
        e: &Envelope,
    ) -> Result<()> {
        let (subject, contact) = if q.patient_id.is_empty() {
            let contact = q.contact.as_ref().map(Contact::from);
            (Subject::Enquiry(q.enquiry_id.clone()), contact)
        } else {
            (Subject::Patient(q.patient_id.clone()), None)
        };
        let mut variables = BTreeMap::from([("enquiry_id".to_string(), q.enquiry_id.clone())]);
        for (key, value) in [
            ("enquiry_interest", &q.interest),
            ("enquiry_source", &q.source),
        ] {
            if !value.is_empty() {
                variables.insert(key.to_string(), value.clone());
            }
        }
        if let Ok(channel) = Channel::try_from(q.channel)
            && channel != Channel::Unspecified
        {
            variables.insert(
                "reply_channel".into(),
                channel
                    .as_str_name()
                    .trim_start_matches("CHANNEL_")
                    .to_lowercase(),
            );
        }
        for rule in self.rules(conn, tenant, TriggerType::NewEnquiry).await? {
            let t = Triggered {
                tenant: tenant.to_string(),
                subject: subject.clone(),
                patient_id: q.patient_id.clone(),
                contact: contact.clone(),
                variables: variables.clone(),
                trigger: e.event_type().to_string(),
                trigger_event_id: e.event_id.clone(),
                trigger_at: e.occurred_at,
            };
            self.start(conn, &rule, &t).await?;
        }
        Ok(())
    }

    async fn consultation(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        c: &ev::ConsultationCompleted,
        e: &Envelope,
    ) -> Result<()> {
        if c.next_visit_booked || c.patient_id.is_empty() {
            return Ok(());
        }
        for rule in self
            .rules(conn, tenant, TriggerType::ConsultationNoNextVisit)
            .await?
        {
            let Some(window) = rule.def.trigger.window else {
                continue;
            };
            let mut variables =
                BTreeMap::from([("consultation_id".to_string(), c.appointment_id.clone())]);
            if !c.practitioner_id.is_empty() {
                variables.insert("practitioner_id".into(), c.practitioner_id.clone());
            }
            timers::arm(
                conn,
                &Timer {
                    tenant: tenant.to_string(),
                    rule_id: rule.rule_id,
                    timer_key: format!("consultation:{}", c.appointment_id),
                    subject: Self::subject_for(&rule.def, &c.patient_id, &c.plan_id, ""),
                    patient_id: c.patient_id.clone(),
                    anchor_at: e.occurred_at,
                    due_at: e.occurred_at + window,
                    trigger: "timer.consultation_no_next_visit".into(),
                    cause_event_id: e.event_id.clone(),
                    variables,
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn care_case(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        c: &ev::CareCaseUpserted,
        e: &Envelope,
    ) -> Result<()> {
        use followup_proto::followup::common::v1::CareCaseStatus;
        if c.status == CareCaseStatus::Closed as i32 {
            let cause = Cause {
                reason: StopReason::CaseClosed,
                detail: "care case closed".into(),
                event_id: &e.event_id,
                occurred_at: e.occurred_at,
                momentary: false,
            };
            stop::stop(
                &self.store,
                conn,
                tenant,
                Scope::Case(CaseKind::CareCase, &c.care_case_id),
                &cause,
                |_| true,
            )
            .await?;
            return Ok(());
        }
        if let Some(expiry) = crate::domain::schedule::parse_date(&c.expiry_date) {
            let rules = self
                .rules(conn, tenant, TriggerType::CareCaseExpiring)
                .await?;
            if !rules.is_empty() {
                let clinic = settings::load(conn, tenant).await?;
                for rule in &rules {
                    if let Some(timer) = timers::expiring_timer(
                        tenant,
                        rule,
                        &c.care_case_id,
                        &c.patient_id,
                        expiry,
                        e.occurred_at,
                        &e.event_id,
                        clinic.tz,
                    ) {
                        timers::arm(conn, &timer).await?;
                    }
                }
            }
        }
        self.sessions_reached(conn, tenant, &c.care_case_id, &c.patient_id, e)
            .await
    }

    async fn plan_sent(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        p: &ev::PlanSent,
        e: &Envelope,
    ) -> Result<()> {
        let sent_at = time(p.sent_time.as_ref()).unwrap_or(e.occurred_at);
        let subject = Subject::Case {
            kind: CaseKind::CasePresentation,
            id: p.plan_id.clone(),
        };
        let rules = enroll::playing_rules(
            &self.store,
            conn,
            tenant,
            &[TriggerType::PlanSent, TriggerType::QuoteUnanswered],
        )
        .await?;
        for rule in rules {
            match rule.def.trigger.kind {
                TriggerType::PlanSent => {
                    let t = Triggered {
                        tenant: tenant.to_string(),
                        subject: subject.clone(),
                        patient_id: p.patient_id.clone(),
                        contact: None,
                        variables: BTreeMap::new(),
                        trigger: e.event_type().to_string(),
                        trigger_event_id: e.event_id.clone(),
                        trigger_at: sent_at,
                    };
                    self.start(conn, &rule, &t).await?;
                }
                _ => {
                    let window = rule.def.trigger.window.unwrap_or(Duration::days(7));
                    timers::arm(
                        conn,
                        &Timer {
                            tenant: tenant.to_string(),
                            rule_id: rule.rule_id,
                            timer_key: subject.key(),
                            subject: subject.clone(),
                            patient_id: p.patient_id.clone(),
                            anchor_at: sent_at,
                            due_at: sent_at + window,
                            trigger: "timer.quote_unanswered".into(),
                            cause_event_id: e.event_id.clone(),
                            variables: BTreeMap::new(),
                        },
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn plan_viewed(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        v: &ev::PlanViewed,
        e: &Envelope,
    ) -> Result<()> {
        let subject = Subject::Case {
            kind: CaseKind::CasePresentation,
            id: v.plan_id.clone(),
        };
        for rule in self
            .rules(conn, tenant, TriggerType::PlanViewedNoResponse)
            .await?
        {
            let Some(window) = rule.def.trigger.window else {
                continue;
            };
            timers::arm(
                conn,
                &Timer {
                    tenant: tenant.to_string(),
                    rule_id: rule.rule_id,
                    timer_key: subject.key(),
                    subject: subject.clone(),
                    patient_id: v.patient_id.clone(),
                    anchor_at: e.occurred_at,
                    due_at: e.occurred_at + window,
                    trigger: "timer.plan_viewed_no_response".into(),
                    cause_event_id: e.event_id.clone(),
                    variables: BTreeMap::new(),
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn case_status(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        c: &ev::CaseStatusChanged,
        e: &Envelope,
    ) -> Result<()> {
        let status = CaseStatus::try_from(c.to_status).unwrap_or(CaseStatus::Unspecified);
        let (reason, detail) = match status {
            CaseStatus::PatientBooked => (StopReason::Booked, "case booked"),
            CaseStatus::PatientRejected => (StopReason::Rejected, "case rejected"),
            CaseStatus::TreatmentCompleted => (StopReason::PlanCompleted, "treatment completed"),
            // Another option of the group was taken: the case is closed without a rejection.
            CaseStatus::Superseded => (
                StopReason::CaseClosed,
                "superseded by another plan of its group",
            ),
            _ => return Ok(()),
        };
        self.stop_case(conn, tenant, &c.case_id, reason, detail, e)
            .await?;
        Ok(())
    }
}
