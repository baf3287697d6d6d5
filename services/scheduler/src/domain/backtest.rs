//! A dry run of one rule over past events: the case facts, triggers, timers, steps and stops of the live
//! service, kept in memory and driven by a clock that follows the events. It writes nothing anywhere; its
//! only output is the [`Report`] (and the actions it would have taken).
//!
//! The live service keeps facts in PostgreSQL and fires steps from a timer; here the same decisions are
//! made with the same domain functions (conditions, schedules, stop rules) on in-memory state, so a
//! replay runs at tens of thousands of events a second. Before an event at time `t` is applied, every
//! step and trigger timer due at or before `t` fires, in due order — what the timer would have done.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use followup_proto::followup::common::v1::{CaseKind, CaseStatus, Channel, StopReason};
use followup_proto::followup::scheduler::v1::{ScheduleZone, TriggerType};

use super::condition::{self, Today};
use super::enrollment::{self, Subject};
use super::facts::{CaseFacts, Money};
use super::pacing::Pacing;
use super::preview::closed_reason;
use super::rule::{Action, RuleDef};
use super::schedule::{ClinicCalendar, local_date};

/// An appointment as events carry it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Appointment {
    pub id: String,
    pub patient_id: String,
    pub plan_id: String,
    pub care_case_id: String,
    pub start: Option<DateTime<Utc>>,
}

/// What the simulation reads from an event (the fields the live consumers use).
#[derive(Clone, Debug, PartialEq)]
pub enum SimEvent {
    Patient {
        patient_id: String,
        time_zone: Option<Tz>,
        archived: bool,
    },
    Booked {
        appointment: Appointment,
        replaces: String,
    },
    Cancelled(Appointment),
    NoShow(Appointment),
    Attended(Appointment),
    Enquiry {
        enquiry_id: String,
        patient_id: String,
    },
    Consultation {
        appointment_id: String,
        patient_id: String,
        plan_id: String,
        next_visit_booked: bool,
    },
    CareCase {
        care_case_id: String,
        patient_id: String,
        name: String,
        open: bool,
        issue_date: Option<NaiveDate>,
        expiry_date: Option<NaiveDate>,
        max_sessions: i32,
        invoiceable: Option<Money>,
    },
    Invoice {
        care_case_id: String,
        amount: Money,
    },
    PlanCreated {
        plan_id: String,
        patient_id: String,
        title: String,
        value: Option<Money>,
    },
    PlanSent {
        plan_id: String,
        patient_id: String,
        title: String,
        value: Option<Money>,
        sent_at: DateTime<Utc>,
        expiry_date: Option<NaiveDate>,
        visit_count: i32,
        visits_completed: i32,
    },
    PlanApproved {
        plan_id: String,
        patient_id: String,
    },
    PlanRevised {
        plan_id: String,
        value: Option<Money>,
    },
    ItemCompleted {
        plan_id: String,
        patient_id: String,
        visits_completed: i32,
        visit_count: i32,
        completed_value: Option<Money>,
    },
    PlanClosed {
        plan_id: String,
        patient_id: String,
        status: CaseStatus,
    },
    Viewed {
        plan_id: String,
        patient_id: String,
    },
    CaseStatus {
        case_id: String,
        patient_id: String,
        status: CaseStatus,
    },
    Replied {
        patient_id: String,
    },
    Consent {
        patient_id: String,
        channel: Channel,
        category: String,
        opted_out: bool,
    },
    /// A message the notifications service sent: it counts toward the patient's cap.
    MessageSent {
        patient_id: String,
        capped: bool,
    },
}

/// One action the rule would have taken.
#[derive(Clone, Debug, PartialEq)]
pub struct SimAction {
    pub fire: DateTime<Utc>,
    /// None when the cap would have suppressed it.
    pub send: Option<DateTime<Utc>>,
    pub subject: Subject,
    pub patient_id: String,
    pub step_index: usize,
    pub channel: Channel,
    pub template_key: String,
    pub held_by_quiet_hours: bool,
    pub held_by_frequency_cap: bool,
}

/// The counts a backtest reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub events: u64,
    pub first_event: Option<DateTime<Utc>>,
    pub last_event: Option<DateTime<Utc>>,
    pub cases_enrolled: u32,
    /// Patient messages and tasks, by channel.
    pub by_channel: Vec<(Channel, u32)>,
    pub messages: u32,
    pub tasks: u32,
    pub held_by_quiet_hours: u32,
    pub held_by_frequency_cap: u32,
    /// Enrollments whose patient booked after the enrollment started, and how long after.
    pub booked: u32,
    pub time_to_book: Vec<Duration>,
    /// The first `sample_size` actions, by fire time.
    pub sample: Vec<SimAction>,
}

impl Report {
    pub fn median_time_to_book(&self) -> Option<Duration> {
        let mut times = self.time_to_book.clone();
        times.sort_unstable();
        match times.len() {
            0 => None,
            n if n % 2 == 1 => Some(times[n / 2]),
            n => Some((times[n / 2 - 1] + times[n / 2]) / 2),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Patient {
    tz: Option<Tz>,
    archived: bool,
    last_attended: Option<DateTime<Utc>>,
    last_booked: Option<DateTime<Utc>>,
    last_replied: Option<DateTime<Utc>>,
    bookings: Vec<DateTime<Utc>>,
    /// (channel, category) opted out of; channel UNSPECIFIED = all, category "" = all.
    opted_out: HashSet<(i32, String)>,
    /// Automated messages counted toward the cap (sent instants).
    counted: Vec<DateTime<Utc>>,
    /// Enrollments of the patient (any state), for stops and "booked anyway".
    enrollments: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Case {
    facts: CaseFacts,
    patient_id: String,
    approved: bool,
    appointments: Vec<String>,
    /// When the presentation status was last set.
    status_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
struct AppointmentRow {
    appointment: Appointment,
    state: AppointmentState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AppointmentState {
    Booked,
    Cancelled,
    NoShow,
    Attended,
}

#[derive(Clone, Debug)]
struct Enrollment {
    subject: Subject,
    patient_id: String,
    started: DateTime<Utc>,
    trigger_at: DateTime<Utc>,
    active: bool,
    booked: bool,
    /// The last firing step's index.
    last_step: usize,
}

#[derive(Clone, Debug)]
struct Timer {
    subject: Subject,
    patient_id: String,
    anchor: DateTime<Utc>,
    due: DateTime<Utc>,
    /// The cancelled appointment (cancellation) or the expiry armed for (expiring).
    detail: String,
}

/// The dry run of one rule.
pub struct Simulation {
    rule: RuleDef,
    clinic_tz: Tz,
    calendar: ClinicCalendar,
    pacing: Pacing,
    sample_size: usize,
    now: Option<DateTime<Utc>>,
    patients: HashMap<String, Patient>,
    cases: HashMap<(CaseKind, String), Case>,
    appointments: HashMap<String, AppointmentRow>,
    replaced: HashSet<String>,
    invoiced: HashMap<String, Vec<Money>>,
    ever: HashSet<String>,
    active: HashMap<String, usize>,
    enrollments: Vec<Enrollment>,
    steps: BTreeSet<(DateTime<Utc>, usize, usize)>,
    timers: HashMap<String, Timer>,
    timer_queue: BTreeSet<(DateTime<Utc>, String)>,
    by_channel: HashMap<Channel, u32>,
    report: Report,
    /// The event time of the event being applied, which may be before the clock (delivered late):
    /// bookings and replies keep it, as the live facts keep `occurred_at`, so what they stop and how
    /// soon after enrolling a patient booked do not depend on delivery order.
    happened: DateTime<Utc>,
}

impl Simulation {
    pub fn new(
        rule: RuleDef,
        clinic_tz: Tz,
        calendar: ClinicCalendar,
        pacing: Pacing,
        sample_size: usize,
    ) -> Self {
        Self {
            rule,
            clinic_tz,
            calendar,
            pacing,
            sample_size,
            now: None,
            patients: HashMap::new(),
            cases: HashMap::new(),
            appointments: HashMap::new(),
            replaced: HashSet::new(),
            invoiced: HashMap::new(),
            ever: HashSet::new(),
            active: HashMap::new(),
            enrollments: Vec::new(),
            steps: BTreeSet::new(),
            timers: HashMap::new(),
            timer_queue: BTreeSet::new(),
            by_channel: HashMap::new(),
            report: Report::default(),
            happened: DateTime::<Utc>::MIN_UTC,
        }
    }

    pub fn cases_enrolled(&self) -> u32 {
        self.report.cases_enrolled
    }

    pub fn events(&self) -> u64 {
        self.report.events
    }

    /// The replay clock: the time of the latest event (or due work) seen.
    pub fn now(&self) -> Option<DateTime<Utc>> {
        self.now
    }

    /// Applies one event that happened at `at`; what fell due before it fires first.
    pub fn apply(&mut self, at: DateTime<Utc>, event: &SimEvent) {
        self.happened = at;
        // The clock never moves backwards: a late event is applied at the current time.
        let at = self.now.map_or(at, |now| now.max(at));
        self.advance(at);
        self.report.events += 1;
        if self.report.first_event.is_none() {
            self.report.first_event = Some(at);
        }
        self.report.last_event = Some(at);
        self.event(at, event);
    }

    /// An event rules ignore (or cannot read): it counts, and moves the clock.
    pub fn tick(&mut self, at: DateTime<Utc>) {
        let at = self.now.map_or(at, |now| now.max(at));
        self.advance(at);
        self.report.events += 1;
        if self.report.first_event.is_none() {
            self.report.first_event = Some(at);
        }
        self.report.last_event = Some(at);
    }

    /// Fires everything due up to `until` (the end of the range), then reports.
    pub fn finish(mut self, until: DateTime<Utc>) -> Report {
        self.advance(until);
        let mut by_channel: Vec<(Channel, u32)> = self.by_channel.into_iter().collect();
        by_channel.sort_by_key(|(c, _)| *c as i32);
        self.report.by_channel = by_channel;
        self.report
    }

    /// Moves the clock to `to`, firing due steps and timers in due order.
    pub fn advance(&mut self, to: DateTime<Utc>) {
        loop {
            let step = self.steps.first().copied().filter(|s| s.0 <= to);
            let timer = self.timer_queue.first().cloned().filter(|t| t.0 <= to);
            match (step, timer) {
                (None, None) => break,
                (Some(s), Some(t)) if t.0 < s.0 => self.fire_timer(t),
                (Some(s), _) => self.fire_step(s),
                (None, Some(t)) => self.fire_timer(t),
            }
        }
        if self.now.is_none_or(|now| now < to) {
            self.now = Some(to);
        }
    }

    fn set_now(&mut self, at: DateTime<Utc>) {
        if self.now.is_none_or(|now| now < at) {
            self.now = Some(at);
        }
    }

    fn today(&self, at: DateTime<Utc>) -> Today {
        Today {
            date: local_date(at, self.clinic_tz),
            tz: self.clinic_tz,
        }
    }

    fn patient(&mut self, id: &str) -> &mut Patient {
        self.patients.entry(id.to_string()).or_default()
    }

    fn case(&mut self, kind: CaseKind, id: &str, patient_id: &str) -> &mut Case {
        let case = self
            .cases
            .entry((kind, id.to_string()))
            .or_insert_with(|| Case {
                facts: CaseFacts::empty(kind),
                patient_id: patient_id.to_string(),
                approved: false,
                appointments: Vec::new(),
                status_at: None,
            });
        if case.patient_id.is_empty() {
            case.patient_id = patient_id.to_string();
        }
        case
    }

    /// A case's facts at `at`, with bookings and sessions counted from its appointments.
    fn facts(&self, kind: CaseKind, id: &str, at: DateTime<Utc>) -> CaseFacts {
        let Some(case) = self.cases.get(&(kind, id.to_string())) else {
            return CaseFacts::empty(kind);
        };
        let mut facts = case.facts.clone();
        let (mut booked, mut done) = (0, 0);
        for a in case
            .appointments
            .iter()
            .filter_map(|a| self.appointments.get(a))
        {
            match a.state {
                AppointmentState::Booked => {
                    booked += 1;
                    if a.appointment.start.is_some_and(|s| s <= at) {
                        done += 1;
                    }
                }
                AppointmentState::Attended => {
                    booked += 1;
                    done += 1;
                }
                _ => {}
            }
        }
        facts.sessions_booked = booked;
        if kind == CaseKind::CareCase {
            facts.sessions_done = done;
            let invoices = self.invoiced.get(id);
            facts.total_invoiced = match (&facts.invoiceable_amount, invoices) {
                (_, None) => None,
                (Some(limit), Some(list)) => {
                    let sum: i64 = list
                        .iter()
                        .filter(|m| m.currency == limit.currency)
                        .map(|m| m.amount_minor)
                        .sum();
                    Some(Money::new(sum, limit.currency.clone()))
                }
                (None, Some(list)) => {
                    let currencies: HashSet<&str> =
                        list.iter().map(|m| m.currency.as_str()).collect();
                    match currencies.into_iter().next() {
                        Some(c) if list.iter().all(|m| m.currency == c) => Some(Money::new(
                            list.iter().map(|m| m.amount_minor).sum(),
                            c.to_string(),
                        )),
                        _ => None,
                    }
                }
            };
        }
        facts
    }

    fn subject_facts(&self, subject: &Subject, at: DateTime<Utc>) -> (CaseFacts, bool) {
        match subject.case() {
            Some((kind, id)) => {
                let approved = self
                    .cases
                    .get(&(kind, id.to_string()))
                    .is_some_and(|c| c.approved);
                (self.facts(kind, id, at), approved)
            }
            None => (CaseFacts::empty(self.rule.case_kind), false),
        }
    }

    fn subject_for(&self, patient_id: &str, plan_id: &str, care_case_id: &str) -> Subject {
        match self.rule.case_kind {
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

    fn trigger(&self) -> TriggerType {
        self.rule.trigger.kind
    }

    fn arm(&mut self, key: String, timer: Timer) {
        if let Some(old) = self.timers.get(&key) {
            if old.anchor > timer.anchor {
                return;
            }
            self.timer_queue.remove(&(old.due, key.clone()));
        }
        self.timer_queue.insert((timer.due, key.clone()));
        self.timers.insert(key, timer);
    }

    fn event(&mut self, at: DateTime<Utc>, event: &SimEvent) {
        use SimEvent as E;
        match event {
            E::Patient {
                patient_id,
                time_zone,
                archived,
            } => {
                let p = self.patient(patient_id);
                p.tz = *time_zone;
                p.archived = *archived;
            }
            E::Booked {
                appointment,
                replaces,
            } => self.booked(at, appointment, replaces),
            E::Cancelled(a) => {
                self.record_appointment(a, AppointmentState::Cancelled);
                if self.trigger() == TriggerType::Cancellation && !a.patient_id.is_empty() {
                    let subject = self.subject_for(&a.patient_id, &a.plan_id, &a.care_case_id);
                    let due = at + self.rule.trigger.cancellation_grace;
                    self.arm(
                        format!("appointment:{}", a.id),
                        Timer {
                            subject,
                            patient_id: a.patient_id.clone(),
                            anchor: at,
                            due,
                            detail: a.id.clone(),
                        },
                    );
                }
            }
            E::NoShow(a) => {
                self.record_appointment(a, AppointmentState::NoShow);
                if self.trigger() == TriggerType::NoShow && !a.patient_id.is_empty() {
                    let subject = self.subject_for(&a.patient_id, &a.plan_id, &a.care_case_id);
                    self.enroll(subject, &a.patient_id, at, at);
                }
            }
            E::Attended(a) => {
                self.record_appointment(a, AppointmentState::Attended);
                if !a.patient_id.is_empty() {
                    let p = self.patient(&a.patient_id);
                    let last = p.last_attended.map_or(at, |l| l.max(at));
                    p.last_attended = Some(last);
                    if self.trigger() == TriggerType::LapsedPatient {
                        let tz = self.clinic_tz;
                        let due = enrollment::lapsed_at(last, self.rule.trigger.lapsed_months, tz);
                        self.arm(
                            format!("patient:{}", a.patient_id),
                            Timer {
                                subject: Subject::Patient(a.patient_id.clone()),
                                patient_id: a.patient_id.clone(),
                                anchor: last,
                                due,
                                detail: String::new(),
                            },
                        );
                    }
                }
                if !a.care_case_id.is_empty() {
                    self.sessions_reached(&a.care_case_id, &a.patient_id, at);
                }
            }
            E::Enquiry {
                enquiry_id,
                patient_id,
            } => {
                if self.trigger() == TriggerType::NewEnquiry {
                    let subject = if patient_id.is_empty() {
                        Subject::Enquiry(enquiry_id.clone())
                    } else {
                        Subject::Patient(patient_id.clone())
                    };
                    self.enroll(subject, patient_id, at, at);
                }
            }
            E::Consultation {
                appointment_id,
                patient_id,
                plan_id,
                next_visit_booked,
            } => {
                if self.trigger() == TriggerType::ConsultationNoNextVisit
                    && !next_visit_booked
                    && !patient_id.is_empty()
                    && let Some(window) = self.rule.trigger.window
                {
                    let subject = self.subject_for(patient_id, plan_id, "");
                    self.arm(
                        format!("consultation:{appointment_id}"),
                        Timer {
                            subject,
                            patient_id: patient_id.clone(),
                            anchor: at,
                            due: at + window,
                            detail: String::new(),
                        },
                    );
                }
            }
            E::CareCase {
                care_case_id,
                patient_id,
                name,
                open,
                issue_date,
                expiry_date,
                max_sessions,
                invoiceable,
            } => {
                let case = self.case(CaseKind::CareCase, care_case_id, patient_id);
                case.patient_id = patient_id.clone();
                let f = &mut case.facts;
                f.name = name.clone();
                f.open = *open;
                f.issue_date = *issue_date;
                f.expiry_date = *expiry_date;
                f.max_sessions = (*max_sessions).max(0);
                f.invoiceable_amount = invoiceable.clone();
                f.value = invoiceable.clone();
                if !open {
                    self.stop_case(CaseKind::CareCase, care_case_id, StopReason::CaseClosed, at);
                    return;
                }
                if self.trigger() == TriggerType::CareCaseExpiring
                    && let (Some(expiry), Some(window)) = (expiry_date, self.rule.trigger.window)
                {
                    let due = enrollment::expiring_at(*expiry, window, self.clinic_tz);
                    self.arm(
                        format!("care_case:{care_case_id}"),
                        Timer {
                            subject: Subject::Case {
                                kind: CaseKind::CareCase,
                                id: care_case_id.clone(),
                            },
                            patient_id: patient_id.clone(),
                            anchor: at,
                            due,
                            detail: expiry.to_string(),
                        },
                    );
                }
                self.sessions_reached(care_case_id, patient_id, at);
            }
            E::Invoice {
                care_case_id,
                amount,
            } => {
                if !care_case_id.is_empty() {
                    self.invoiced
                        .entry(care_case_id.clone())
                        .or_default()
                        .push(amount.clone());
                }
            }
            E::PlanCreated {
                plan_id,
                patient_id,
                title,
                value,
            } => {
                let case = self.case(CaseKind::CasePresentation, plan_id, patient_id);
                if case.facts.sent_at.is_none() {
                    case.facts.name = title.clone();
                    case.facts.value = value.clone();
                }
                if case.facts.presentation_status.is_none() {
                    case.facts.presentation_status = Some(CaseStatus::DraftNotSent);
                }
            }
            E::PlanSent {
                plan_id,
                patient_id,
                title,
                value,
                sent_at,
                expiry_date,
                visit_count,
                visits_completed,
            } => {
                let tz = self.clinic_tz;
                let case = self.case(CaseKind::CasePresentation, plan_id, patient_id);
                let f = &mut case.facts;
                f.name = title.clone();
                f.sent_at = Some(*sent_at);
                f.issue_date = Some(local_date(*sent_at, tz));
                f.expiry_date = *expiry_date;
                f.max_sessions = (*visit_count).max(0);
                f.sessions_done = f.sessions_done.max(*visits_completed);
                f.value = value.clone();
                f.invoiceable_amount = value.clone();
                let closed = f
                    .presentation_status
                    .is_some_and(super::facts::is_closed_status);
                if !closed {
                    f.presentation_status = Some(if f.viewed {
                        CaseStatus::SentViewed
                    } else {
                        CaseStatus::SentNotViewed
                    });
                    f.open = true;
                }
                let subject = Subject::Case {
                    kind: CaseKind::CasePresentation,
                    id: plan_id.clone(),
                };
                match self.trigger() {
                    TriggerType::PlanSent => self.enroll(subject, patient_id, *sent_at, at),
                    TriggerType::QuoteUnanswered => {
                        let window = self.rule.trigger.window.unwrap_or(Duration::days(7));
                        self.arm(
                            subject.key(),
                            Timer {
                                subject,
                                patient_id: patient_id.clone(),
                                anchor: *sent_at,
                                due: *sent_at + window,
                                detail: String::new(),
                            },
                        );
                    }
                    _ => {}
                }
            }
            E::PlanApproved {
                plan_id,
                patient_id,
            } => {
                self.case(CaseKind::CasePresentation, plan_id, patient_id)
                    .approved = true;
                self.stop_case(
                    CaseKind::CasePresentation,
                    plan_id,
                    StopReason::Approved,
                    at,
                );
            }
            E::PlanRevised { plan_id, value } => {
                let case = self.case(CaseKind::CasePresentation, plan_id, "");
                case.facts.value = value.clone();
                case.facts.invoiceable_amount = value.clone();
                case.approved = false;
            }
            E::ItemCompleted {
                plan_id,
                patient_id,
                visits_completed,
                visit_count,
                completed_value,
            } => {
                let f = &mut self
                    .case(CaseKind::CasePresentation, plan_id, patient_id)
                    .facts;
                f.sessions_done = f.sessions_done.max(*visits_completed);
                f.max_sessions = f.max_sessions.max(*visit_count);
                f.total_invoiced = completed_value.clone();
            }
            E::PlanClosed {
                plan_id,
                patient_id,
                status,
            } => {
                self.set_status(plan_id, patient_id, *status, at);
                let reason = if *status == CaseStatus::TreatmentCompleted {
                    StopReason::PlanCompleted
                } else {
                    StopReason::PlanCancelled
                };
                self.stop_case(CaseKind::CasePresentation, plan_id, reason, at);
            }
            E::Viewed {
                plan_id,
                patient_id,
            } => {
                let f = &mut self
                    .case(CaseKind::CasePresentation, plan_id, patient_id)
                    .facts;
                let first = !f.viewed;
                f.viewed = true;
                if matches!(
                    f.presentation_status,
                    None | Some(CaseStatus::SentNotViewed)
                ) {
                    f.presentation_status = Some(CaseStatus::SentViewed);
                }
                if first
                    && self.trigger() == TriggerType::PlanViewedNoResponse
                    && let Some(window) = self.rule.trigger.window
                {
                    let subject = Subject::Case {
                        kind: CaseKind::CasePresentation,
                        id: plan_id.clone(),
                    };
                    self.arm(
                        subject.key(),
                        Timer {
                            subject,
                            patient_id: patient_id.clone(),
                            anchor: at,
                            due: at + window,
                            detail: String::new(),
                        },
                    );
                }
            }
            E::CaseStatus {
                case_id,
                patient_id,
                status,
            } => {
                self.set_status(case_id, patient_id, *status, at);
                let reason = match status {
                    CaseStatus::PatientBooked => StopReason::Booked,
                    CaseStatus::PatientRejected => StopReason::Rejected,
                    CaseStatus::TreatmentCompleted => StopReason::PlanCompleted,
                    CaseStatus::Superseded => StopReason::CaseClosed,
                    _ => return,
                };
                self.stop_case(CaseKind::CasePresentation, case_id, reason, at);
            }
            E::Replied { patient_id } => {
                let at = self.happened.min(at);
                let p = self.patient(patient_id);
                p.last_replied = Some(p.last_replied.map_or(at, |l| l.max(at)));
                self.stop_patient(patient_id, StopReason::PatientReplied, at, true, |_| true);
            }
            E::Consent {
                patient_id,
                channel,
                category,
                opted_out,
            } => {
                let key = (*channel as i32, category.clone());
                let p = self.patient(patient_id);
                if *opted_out {
                    p.opted_out.insert(key);
                    let (category, channel) = (category.clone(), *channel);
                    self.stop_patient(patient_id, StopReason::OptedOut, at, false, move |rule| {
                        enrollment::opt_out_stops(rule, &category, channel)
                    });
                } else {
                    p.opted_out.remove(&key);
                }
            }
            E::MessageSent { patient_id, capped } => {
                if *capped && !patient_id.is_empty() {
                    let window = at - followup_platform::pacing::cap_window();
                    let p = self.patient(patient_id);
                    p.counted.retain(|t| *t > window);
                    p.counted.push(at);
                }
            }
        }
    }

    fn set_status(
        &mut self,
        plan_id: &str,
        patient_id: &str,
        status: CaseStatus,
        at: DateTime<Utc>,
    ) {
        let case = self.case(CaseKind::CasePresentation, plan_id, patient_id);
        case.status_at = Some(at);
        let f = &mut case.facts;
        f.presentation_status = Some(status);
        f.open = !super::facts::is_closed_status(status);
    }

    fn record_appointment(&mut self, a: &Appointment, state: AppointmentState) {
        let known = self.appointments.contains_key(&a.id);
        self.appointments.insert(
            a.id.clone(),
            AppointmentRow {
                appointment: a.clone(),
                state,
            },
        );
        if known {
            return;
        }
        if !a.plan_id.is_empty() {
            self.case(CaseKind::CasePresentation, &a.plan_id, &a.patient_id)
                .appointments
                .push(a.id.clone());
        }
        if !a.care_case_id.is_empty() {
            self.case(CaseKind::CareCase, &a.care_case_id, &a.patient_id)
                .appointments
                .push(a.id.clone());
        }
    }

    fn booked(&mut self, at: DateTime<Utc>, a: &Appointment, replaces: &str) {
        let at = self.happened.min(at);
        self.record_appointment(a, AppointmentState::Booked);
        if !replaces.is_empty() {
            self.replaced.insert(replaces.to_string());
        }
        if !a.patient_id.is_empty() {
            let p = self.patient(&a.patient_id);
            p.last_booked = Some(p.last_booked.map_or(at, |l| l.max(at)));
            p.bookings.push(at);
            // "Booked anyway": every enrollment of the patient started before this booking, once.
            let ids = p.enrollments.clone();
            for i in ids {
                let e = &mut self.enrollments[i];
                if !e.booked && e.started <= at {
                    e.booked = true;
                    self.report.booked += 1;
                    self.report.time_to_book.push(at - e.started);
                }
            }
        }
        if !a.plan_id.is_empty() {
            self.set_status(&a.plan_id, &a.patient_id, CaseStatus::PatientBooked, at);
        }
        self.stop_patient(&a.patient_id, StopReason::Booked, at, true, |_| true);
        if !a.plan_id.is_empty() {
            self.stop_case(
                CaseKind::CasePresentation,
                &a.plan_id,
                StopReason::Booked,
                at,
            );
        }
        if !a.care_case_id.is_empty() {
            self.sessions_reached(&a.care_case_id, &a.patient_id, at);
        }
    }

    fn sessions_reached(&mut self, care_case_id: &str, patient_id: &str, at: DateTime<Utc>) {
        if self.trigger() != TriggerType::CareCaseSessionsReached {
            return;
        }
        let done = self
            .facts(CaseKind::CareCase, care_case_id, at)
            .sessions_done;
        if done >= self.rule.trigger.session_threshold as i32 {
            let subject = Subject::Case {
                kind: CaseKind::CareCase,
                id: care_case_id.to_string(),
            };
            self.enroll(subject, patient_id, at, at);
        }
    }

    fn stop_patient(
        &mut self,
        patient_id: &str,
        reason: StopReason,
        at: DateTime<Utc>,
        momentary: bool,
        also: impl Fn(&RuleDef) -> bool,
    ) {
        if !self.rule.stops_on(reason) || !also(&self.rule) {
            return;
        }
        let Some(p) = self.patients.get(patient_id) else {
            return;
        };
        for i in p.enrollments.clone() {
            let e = &self.enrollments[i];
            if e.active && !(momentary && at < e.trigger_at) {
                self.end(i);
            }
        }
    }

    fn stop_case(&mut self, kind: CaseKind, id: &str, reason: StopReason, _at: DateTime<Utc>) {
        if !self.rule.stops_on(reason) {
            return;
        }
        let key = Subject::Case {
            kind,
            id: id.to_string(),
        }
        .key();
        if let Some(i) = self.active.get(&key).copied() {
            self.end(i);
        }
    }

    fn end(&mut self, i: usize) {
        let e = &mut self.enrollments[i];
        e.active = false;
        let key = e.subject.key();
        if self.active.get(&key) == Some(&i) {
            self.active.remove(&key);
        }
        // Pending steps stay in the queue and are dropped when they come up (cheaper than a scan).
    }

    /// Enrolls a subject when nothing forbids it (the checks of a live enrollment).
    fn enroll(
        &mut self,
        subject: Subject,
        patient_id: &str,
        trigger_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        let key = subject.key();
        if self.rule.once_per_case() && self.ever.contains(&key) {
            return;
        }
        if self.active.contains_key(&key) {
            return;
        }
        let mut patient_tz = None;
        let mut stops = Vec::new();
        if !patient_id.is_empty()
            && let Some(p) = self.patients.get(patient_id)
        {
            if p.archived {
                return;
            }
            let category = self.rule.category.as_str();
            if p.opted_out.contains(&(0, String::new()))
                || p.opted_out.contains(&(0, category.to_string()))
            {
                return;
            }
            // A booking or reply after the trigger (applied first, out of order) ends the sequence as
            // soon as it starts, as live (`enrollment::LateStop`).
            stops.push((
                StopReason::Booked,
                p.last_booked,
                "booked since the trigger",
            ));
            stops.push((
                StopReason::PatientReplied,
                p.last_replied,
                "replied since the trigger",
            ));
            patient_tz = p.tz;
        }
        let (facts, approved) = self.subject_facts(&subject, now);
        if let Some((kind, id)) = subject.case()
            && let Some(case) = self.cases.get(&(kind, id.to_string()))
            && let Some(why) = closed_reason(&facts, approved, &self.rule)
        {
            let status = facts.presentation_status;
            let closed_at = case.status_at.filter(|at| *at > trigger_at);
            match (status.and_then(|s| self.status_stop(kind, s)), closed_at) {
                (Some(reason), Some(at))
                    if facts
                        .presentation_status
                        .is_some_and(super::facts::is_closed_status) =>
                {
                    stops.push((reason, Some(at), why));
                }
                _ => return,
            }
        }
        let late = enrollment::late_stop(&self.rule, trigger_at, &stops);
        if let Some(c) = &self.rule.condition
            && !condition::holds(c, &facts, self.today(now))
        {
            return;
        }
        let tz = match (self.rule.schedule_zone, patient_tz) {
            (ScheduleZone::Patient, Some(tz)) => tz,
            _ => self.clinic_tz,
        };
        let start = enrollment::start_time(trigger_at, now);
        let planned = enrollment::plan(&self.rule, start, tz, &self.calendar);
        let Some(last) = planned.last().map(|p| p.step_index) else {
            return;
        };
        let i = self.enrollments.len();
        // The schedule's start, not the clock: an enrollment of a trigger applied late (after a booking
        // that happened later) started when the trigger happened, as it would have in order.
        self.enrollments.push(Enrollment {
            subject,
            patient_id: patient_id.to_string(),
            started: start,
            trigger_at,
            active: true,
            booked: false,
            last_step: last,
        });
        self.ever.insert(key.clone());
        self.active.insert(key, i);
        self.report.cases_enrolled += 1;
        if !patient_id.is_empty() {
            let p = self.patient(patient_id);
            p.enrollments.push(i);
            // "Booked anyway" by a booking already applied that happened after the start.
            if let Some(booked) = p.bookings.iter().filter(|b| **b >= start).min().copied() {
                self.enrollments[i].booked = true;
                self.report.booked += 1;
                self.report.time_to_book.push(booked - start);
            }
        }
        if late.is_some() {
            self.end(i);
            return;
        }
        for p in planned {
            self.steps.insert((p.due, i, p.step_index));
        }
    }

    /// The stop a closed presentation status (or a closed care case) stands for, for this rule.
    fn status_stop(&self, kind: CaseKind, status: CaseStatus) -> Option<StopReason> {
        if kind == CaseKind::CareCase {
            return Some(StopReason::CaseClosed);
        }
        match status {
            CaseStatus::PatientBooked => Some(StopReason::Booked),
            CaseStatus::PatientRejected if self.rule.stops_on(StopReason::Rejected) => {
                Some(StopReason::Rejected)
            }
            CaseStatus::PatientRejected => Some(StopReason::PlanCancelled),
            CaseStatus::TreatmentCompleted => Some(StopReason::PlanCompleted),
            CaseStatus::Superseded => Some(StopReason::CaseClosed),
            _ => None,
        }
    }

    fn fire_timer(&mut self, entry: (DateTime<Utc>, String)) {
        self.timer_queue.remove(&entry);
        let Some(timer) = self.timers.remove(&entry.1) else {
            return;
        };
        let now = entry.0;
        self.set_now(now);
        if self.still_applies(&timer, now) {
            let patient = timer.patient_id.clone();
            self.enroll(timer.subject, &patient, timer.due, now);
        }
    }

    fn still_applies(&self, t: &Timer, now: DateTime<Utc>) -> bool {
        let p = self.patients.get(&t.patient_id);
        let since = |at: Option<DateTime<Utc>>| at.is_some_and(|at| at > t.anchor);
        let replied = p.is_some_and(|p| since(p.last_replied));
        let booked = p.is_some_and(|p| since(p.last_booked));
        let case = t
            .subject
            .case()
            .and_then(|(k, id)| self.cases.get(&(k, id.to_string())));
        let booked_between = |replacing: &str| {
            p.is_some_and(|p| p.bookings.iter().any(|b| *b >= t.anchor && *b <= t.due))
                || (!replacing.is_empty() && self.replaced.contains(replacing))
        };
        match self.trigger() {
            TriggerType::PlanViewedNoResponse => {
                case.is_some_and(|c| c.facts.open && c.facts.viewed && !c.approved)
                    && !replied
                    && !booked
            }
            TriggerType::QuoteUnanswered => {
                case.is_some_and(|c| c.facts.open && !c.approved) && !booked
            }
            TriggerType::Cancellation => !booked_between(&t.detail),
            TriggerType::ConsultationNoNextVisit => !booked_between(""),
            TriggerType::LapsedPatient => p.is_some_and(|p| {
                !p.archived
                    && p.last_attended.is_some_and(|at| at <= t.anchor)
                    && !self.appointments.values().any(|a| {
                        a.state == AppointmentState::Booked
                            && a.appointment.patient_id == t.patient_id
                            && a.appointment.start.is_some_and(|s| s > now)
                    })
            }),
            TriggerType::CareCaseExpiring => case.is_some_and(|c| {
                c.facts.open
                    && c.facts
                        .expiry_date
                        .is_some_and(|d| d.to_string() == t.detail)
            }),
            _ => false,
        }
    }

    fn fire_step(&mut self, entry: (DateTime<Utc>, usize, usize)) {
        self.steps.remove(&entry);
        let (due, i, step_index) = entry;
        self.set_now(due);
        let e = &self.enrollments[i];
        if !e.active {
            return;
        }
        let last = step_index == e.last_step;
        let subject = e.subject.clone();
        let patient_id = e.patient_id.clone();
        let step = self.rule.steps[step_index].clone();
        let guard_ok = match &step.only_if {
            Some(guard) => {
                let (facts, _) = self.subject_facts(&subject, due);
                condition::holds(guard, &facts, self.today(due))
            }
            None => true,
        };
        if guard_ok {
            self.act(due, &subject, &patient_id, step_index, &step.action);
        }
        if last {
            self.end(i);
        }
    }

    fn act(
        &mut self,
        due: DateTime<Utc>,
        subject: &Subject,
        patient_id: &str,
        step_index: usize,
        action: &Action,
    ) {
        let (channel, template_key) = match action {
            Action::Wait(_) => return,
            Action::Send {
                channel,
                template_key,
            } => (*channel, template_key.clone()),
            Action::Task { .. } => (Channel::Task, String::new()),
            Action::Webhook { .. } => (Channel::Webhook, String::new()),
        };
        *self.by_channel.entry(channel).or_default() += 1;
        let mut action = SimAction {
            fire: due,
            send: Some(due),
            subject: subject.clone(),
            patient_id: patient_id.to_string(),
            step_index,
            channel,
            template_key,
            held_by_quiet_hours: false,
            held_by_frequency_cap: false,
        };
        match channel {
            Channel::Sms | Channel::Email | Channel::Chat => {
                self.report.messages += 1;
                let clinic_tz = self.clinic_tz;
                let capped = !self.rule.transactional;
                let pacing = self.pacing;
                let (tz, counted) = match self.patients.get(patient_id) {
                    Some(p) => (p.tz.unwrap_or(clinic_tz), p.counted.as_slice()),
                    None => (clinic_tz, &[][..]),
                };
                let paced = pacing.pace(due, tz, capped, counted);
                action.send = paced.send;
                action.held_by_quiet_hours = paced.held_by_quiet_hours;
                action.held_by_frequency_cap = paced.held_by_frequency_cap;
                if paced.held_by_quiet_hours {
                    self.report.held_by_quiet_hours += 1;
                }
                if paced.held_by_frequency_cap {
                    self.report.held_by_frequency_cap += 1;
                }
                if capped
                    && !patient_id.is_empty()
                    && let Some(sent) = paced.send
                {
                    self.patient(patient_id).counted.push(sent);
                }
            }
            Channel::Task => self.report.tasks += 1,
            _ => {}
        }
        if self.report.sample.len() < self.sample_size {
            self.report.sample.push(action);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rule::tests::plan_follow_up;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn sent(plan: &str, patient: &str, at: DateTime<Utc>) -> SimEvent {
        SimEvent::PlanSent {
            plan_id: plan.into(),
            patient_id: patient.into(),
            title: "Crown".into(),
            value: Some(Money::new(100_000, "USD")),
            sent_at: at,
            expiry_date: None,
            visit_count: 2,
            visits_completed: 0,
        }
    }

    fn booked(plan: &str, patient: &str) -> SimEvent {
        SimEvent::Booked {
            appointment: Appointment {
                id: format!("appt-{plan}"),
                patient_id: patient.into(),
                plan_id: plan.into(),
                ..Default::default()
            },
            replaces: String::new(),
        }
    }

    #[test]
    fn plan_follow_up_over_a_month_counts_messages_bookings_and_quiet_hours() {
        let london: Tz = "Europe/London".parse().unwrap_or(chrono_tz::UTC);
        let mut sim = Simulation::new(
            plan_follow_up(),
            london,
            ClinicCalendar::default(),
            Pacing::default(),
            10,
        );
        let day0 = utc("2026-05-01T09:00:00Z");
        sim.apply(day0, &sent("p1", "a", day0));
        sim.apply(day0, &sent("p2", "b", day0));
        // b books on day 3: its sequence stops before any message.
        sim.apply(day0 + Duration::days(3), &booked("p2", "b"));
        // a is sent again on day 5 (once per case: no second enrollment) and books on day 10.
        sim.apply(
            day0 + Duration::days(5),
            &sent("p1", "a", day0 + Duration::days(5)),
        );
        sim.apply(day0 + Duration::days(10), &booked("p1", "a"));
        let report = sim.finish(day0 + Duration::days(30));
        assert_eq!(report.cases_enrolled, 2);
        // Only a's day-7 message fired (10:00 BST, not quiet).
        assert_eq!(report.messages, 1);
        assert_eq!(report.by_channel, vec![(Channel::Sms, 1)]);
        assert_eq!(report.sample[0].fire, utc("2026-05-08T09:00:00Z"));
        assert_eq!(report.held_by_quiet_hours, 0);
        assert_eq!(report.booked, 2);
        assert_eq!(
            report.median_time_to_book(),
            Some(Duration::days(13) / 2 + Duration::days(0))
        );
    }

    #[test]
    fn quiet_hours_and_the_cap_hold_messages() {
        let mut rule = plan_follow_up();
        // Three sends a minute apart at 23:00 UTC.
        rule.steps = vec![rule.steps[1].clone(), rule.steps[3].clone()];
        let mut sim = Simulation::new(
            rule,
            chrono_tz::UTC,
            ClinicCalendar::default(),
            Pacing {
                weekly_cap: 2,
                ..Pacing::default()
            },
            10,
        );
        let night = utc("2026-05-01T23:00:00Z");
        sim.apply(
            night - Duration::days(1),
            &SimEvent::MessageSent {
                patient_id: "a".into(),
                capped: true,
            },
        );
        sim.apply(night, &sent("p1", "a", night));
        let report = sim.finish(night + Duration::days(10));
        assert_eq!(report.messages, 2);
        assert_eq!(report.held_by_quiet_hours, 2);
        // The first goes at 08:00 (one counted before it, cap 2); the second waits for the cap.
        assert_eq!(report.held_by_frequency_cap, 1);
        assert_eq!(report.sample[0].send, Some(utc("2026-05-02T08:00:00Z")));
        assert_eq!(
            report.sample[1].send,
            Some(utc("2026-05-07T23:00:00Z") + Duration::hours(9))
        );
    }

    /// What a run ended with, for comparing runs: every enrollment (subject, still active, booked
    /// anyway) and the report's counts.
    fn outcome(mut sim: Simulation, until: DateTime<Utc>) -> (Vec<(String, bool, bool)>, Report) {
        sim.advance(until);
        let mut enrollments: Vec<(String, bool, bool)> = sim
            .enrollments
            .iter()
            .map(|e| (e.subject.key(), e.active, e.booked))
            .collect();
        enrollments.sort();
        let mut report = sim.finish(until);
        // How soon a patient booked after enrolling is attributed per patient booking and can differ
        // when one patient's bookings and plans interleave: compared by the unit test of the issue's
        // scenario, not here.
        report.time_to_book.clear();
        report.sample.clear();
        report.first_event = None;
        report.last_event = None;
        (enrollments, report)
    }

    fn replay(
        events: &[(DateTime<Utc>, SimEvent)],
        until: DateTime<Utc>,
    ) -> (Vec<(String, bool, bool)>, Report) {
        let mut sim = Simulation::new(
            plan_follow_up(),
            chrono_tz::UTC,
            ClinicCalendar::default(),
            Pacing::default(),
            0,
        );
        for (at, event) in events {
            sim.apply(*at, event);
        }
        outcome(sim, until)
    }

    #[test]
    fn a_booking_delivered_before_its_plan_sent_gives_the_same_enrollment() {
        // The plans outbox lagged: the booking (3 s after the send in event time) came first.
        let t = utc("2026-05-01T09:00:00Z");
        let in_order = vec![
            (t, sent("p1", "a", t)),
            (t + Duration::seconds(3), booked("p1", "a")),
        ];
        let reversed: Vec<_> = in_order.iter().rev().cloned().collect();
        let until = t + Duration::days(60);
        let (enrollments, report) = replay(&reversed, until);
        assert_eq!(enrollments, vec![("plan:p1".to_string(), false, true)]);
        assert_eq!(
            (report.cases_enrolled, report.booked, report.messages),
            (1, 1, 0)
        );
        assert_eq!(replay(&in_order, until), (enrollments, report));
        let mut sim = Simulation::new(
            plan_follow_up(),
            chrono_tz::UTC,
            ClinicCalendar::default(),
            Pacing::default(),
            0,
        );
        for (at, event) in &reversed {
            sim.apply(*at, event);
        }
        assert_eq!(sim.finish(until).time_to_book, vec![Duration::seconds(3)]);
    }

    proptest::proptest! {
        /// Plans sent over a minute, each to its own patient, some booked or replied to a few seconds later;
        /// delivered in any order within a window (each event late by up to 20 s): the enrollments,
        /// how they ended, the messages and the "booked anyway" count are those of the in-order run.
        #[test]
        fn delivery_order_within_a_window_does_not_change_enrollments(
            plans in proptest::collection::vec(
                (0i64..60, proptest::option::of(1i64..10), proptest::option::of(1i64..10)),
                1..12,
            ),
            jitter in proptest::collection::vec(0i64..20_000, 36),
        ) {
            let t0 = utc("2026-05-01T09:00:00Z");
            let mut events: Vec<(DateTime<Utc>, SimEvent)> = Vec::new();
            for (i, (offset, booking, reply)) in plans.iter().enumerate() {
                let plan = format!("p{i}");
                // One patient per plan: a patient's bookings and replies across several of their plans
                // interleaved out of order are not covered yet (see the README's known gaps).
                let patient = format!("patient-{i}");
                let at = t0 + Duration::seconds(*offset);
                events.push((at, sent(&plan, &patient, at)));
                if let Some(d) = booking {
                    events.push((at + Duration::seconds(*d), booked(&plan, &patient)));
                }
                if let Some(d) = reply {
                    events.push((
                        at + Duration::seconds(*d) + Duration::milliseconds(500),
                        SimEvent::Replied { patient_id: patient.clone() },
                    ));
                }
            }
            events.sort_by_key(|(at, _)| *at);
            let until = t0 + Duration::days(60);
            let expected = replay(&events, until);
            let mut delivered: Vec<(i64, usize)> = events
                .iter()
                .enumerate()
                .map(|(n, (at, _))| (at.timestamp_millis() + jitter[n % jitter.len()], n))
                .collect();
            delivered.sort();
            let shuffled: Vec<_> = delivered.iter().map(|(_, n)| events[*n].clone()).collect();
            proptest::prop_assert_eq!(replay(&shuffled, until), expected);
        }
    }
}
