//! Applying events to cases, the one way: consumers, the response-window timer and staff actions all go
//! through [`Engine::apply`].
//!
//! In one transaction it locks the cases concerned (in key order), runs the pure domain function for each
//! event in order, settles alternative groups (supersedes the other options of an accepted one, picks the
//! option that counts in totals), then writes the cases, their timeline entries, the events to publish
//! (through the outbox) and a NOTIFY per changed case for WatchCases, each kind in one statement.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use followup_platform::event::{OutgoingEvent, new_event_id, timestamp};
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::events::v1 as ev;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::case::{
    self, Applied, CAUSE_GROUP, CaseEvent, CaseSettings, CaseState, DomainError, Input,
    Presentation, group_representative,
};
use crate::domain::timeline::NewEntry;
use crate::domain::vocab::Money;
use crate::error::Error;
use crate::storage::settings::{SettingsStore, register_tenants};
use crate::storage::{self, CaseKey, CaseWrite};

/// Which case(s) an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The case of a plan (a missing case is created when the command allows it).
    Case(Uuid),
    /// The patient's open case sent most recently (a booking or reply that names no plan).
    PatientLatestOpen(String),
    /// Every open, sent case of the patient (an opt-out).
    PatientOpen(String),
    /// The patient's case booked by this appointment (a cancellation or no-show that names no plan).
    PatientBooking {
        patient_id: String,
        appointment_id: String,
    },
}

/// One event for the engine.
#[derive(Clone, Debug)]
pub struct Command {
    pub tenant_id: String,
    pub target: Target,
    pub input: Input,
    /// May a missing case be created (events: yes, events arrive before the plan's; staff: no)?
    pub create: bool,
}

/// What happened to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to these cases (possibly none: a patient with no open case).
    Applied(Vec<Uuid>),
    NotFound,
    Rejected(DomainError),
}

struct Slot {
    state: CaseState,
    /// The patient id the case had when loaded (None: new).
    loaded_patient: Option<String>,
    /// What the case counted for when loaded (None: new), for the per-status count deltas.
    loaded_count: Option<CountCell>,
    representative: bool,
    dirty: bool,
    created: bool,
    updated: bool,
    presentation: Option<Presentation>,
    last_entry: Option<Uuid>,
}

/// What a case counts for in the per-status counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CountCell {
    tenant_id: String,
    owner_key: String,
    status: i16,
    currency: String,
    /// The value it adds to totals (0 when another option of its group counts instead).
    value: i64,
}

impl CountCell {
    fn of(state: &CaseState, representative: bool) -> Self {
        Self {
            tenant_id: state.tenant_id.clone(),
            owner_key: state.owner_staff_id.clone().unwrap_or_default(),
            status: state.status.number() as i16,
            currency: state
                .value
                .as_ref()
                .map_or_else(String::new, |m| m.currency.clone()),
            value: if representative {
                state.value.as_ref().map_or(0, |m| m.amount_minor)
            } else {
                0
            },
        }
    }
}

/// The changes of the batch to the per-status counts, one row per cell: each written case leaves the
/// cell it was in and enters the one it is in now.
fn count_deltas(slots: &HashMap<CaseKey, Slot>) -> Vec<storage::counts::Delta> {
    let mut cells: std::collections::BTreeMap<(String, String, i16, String), (i64, i64)> =
        Default::default();
    for slot in slots.values().filter(|s| s.dirty) {
        let now = CountCell::of(&slot.state, slot.representative);
        if slot.loaded_count.as_ref() == Some(&now) {
            continue;
        }
        if let Some(before) = &slot.loaded_count {
            let cell = cells
                .entry((
                    before.tenant_id.clone(),
                    before.owner_key.clone(),
                    before.status,
                    before.currency.clone(),
                ))
                .or_default();
            cell.0 -= 1;
            cell.1 -= before.value;
        }
        let cell = cells
            .entry((now.tenant_id, now.owner_key, now.status, now.currency))
            .or_default();
        cell.0 += 1;
        cell.1 += now.value;
    }
    cells
        .into_iter()
        .filter(|(_, (n, v))| *n != 0 || *v != 0)
        .map(
            |((tenant_id, owner_key, status, currency), (count, value))| storage::counts::Delta {
                tenant_id,
                owner_key,
                status,
                currency,
                count,
                value,
            },
        )
        .collect()
}

/// When a case was accepted: its booking or completion, else its approval.
fn acceptance_time(case: &CaseState) -> DateTime<Utc> {
    match case.status {
        crate::domain::CaseStatus::PatientBooked
        | crate::domain::CaseStatus::TreatmentCompleted => case.status_at,
        _ => case.approved_at.unwrap_or(case.status_at),
    }
}

#[derive(Clone)]
pub struct Engine {
    pub settings: SettingsStore,
    source: &'static str,
}

impl Engine {
    pub fn new(settings: SettingsStore, source: &'static str) -> Self {
        Self { settings, source }
    }

    /// Applies commands in order, in the caller's transaction.
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
        commands: &[Command],
    ) -> Result<Vec<Outcome>, Error> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        // Lock every case the batch may touch, in one statement, in key order.
        let mut keys: BTreeSet<CaseKey> = BTreeSet::new();
        let mut patients: BTreeSet<(String, String)> = BTreeSet::new();
        for command in commands {
            match &command.target {
                Target::Case(id) => {
                    keys.insert((command.tenant_id.clone(), *id));
                }
                Target::PatientLatestOpen(p)
                | Target::PatientOpen(p)
                | Target::PatientBooking { patient_id: p, .. } => {
                    patients.insert((command.tenant_id.clone(), p.clone()));
                }
            }
        }
        let patients: Vec<(String, String)> = patients.into_iter().collect();
        keys.extend(storage::patient_case_keys(conn, &patients).await?);
        let keys: Vec<CaseKey> = keys.into_iter().collect();
        let mut found = storage::lock_cases(conn, &keys).await?;
        let mut placeholders: Vec<CaseKey> = Vec::new();
        // Cases events may create: claim the missing ones, and read those another transaction created
        // while we looked.
        let creatable: BTreeSet<CaseKey> = commands
            .iter()
            .filter(|c| c.create)
            .filter_map(|c| match c.target {
                Target::Case(id) => Some((c.tenant_id.clone(), id)),
                _ => None,
            })
            .filter(|key| !found.contains_key(key))
            .collect();
        if !creatable.is_empty() {
            let creatable: Vec<CaseKey> = creatable.into_iter().collect();
            let ours: BTreeSet<CaseKey> = storage::claim_new_cases(conn, &creatable)
                .await?
                .into_iter()
                .collect();
            let theirs: Vec<CaseKey> = creatable
                .into_iter()
                .filter(|key| !ours.contains(key))
                .collect();
            placeholders.extend(ours);
            found.extend(storage::lock_cases(conn, &theirs).await?);
        }
        let mut slots: HashMap<CaseKey, Slot> = found
            .into_iter()
            .map(|(key, (state, representative))| {
                (
                    key,
                    Slot {
                        loaded_patient: Some(state.patient_id.clone()),
                        loaded_count: Some(CountCell::of(&state, representative)),
                        state,
                        representative,
                        dirty: false,
                        created: false,
                        updated: false,
                        presentation: None,
                        last_entry: None,
                    },
                )
            })
            .collect();

        let tenants: BTreeSet<&str> = commands.iter().map(|c| c.tenant_id.as_str()).collect();
        let tenants: Vec<&str> = tenants.into_iter().collect();
        let settings = self.settings.get_many(conn, &tenants).await?;
        let defaults = self.settings.defaults().clone();
        let settings_of = |tenant: &str| settings.get(tenant).unwrap_or(&defaults);

        let mut effects = Effects::default();
        let mut groups: BTreeSet<(String, String)> = BTreeSet::new();
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            let tenant = command.tenant_id.as_str();
            let targets = resolve(&slots, tenant, &command.target);
            if let Target::Case(id) = command.target
                && !command.create
                && !slots.contains_key(&(tenant.to_string(), id))
            {
                outcomes.push(Outcome::NotFound);
                continue;
            }
            let mut applied_to = Vec::with_capacity(targets.len());
            let mut rejected = None;
            for case_id in targets {
                let key = (tenant.to_string(), case_id);
                let current = slots.get(&key).map(|s| &s.state);
                let applied = match case::apply(
                    current,
                    tenant,
                    case_id,
                    &command.input,
                    settings_of(tenant),
                ) {
                    Ok(applied) => applied,
                    Err(err) => {
                        rejected = Some(err);
                        break;
                    }
                };
                applied_to.push(case_id);
                if !applied.changed {
                    continue;
                }
                let was_accepted = current.is_some_and(CaseState::accepted);
                let old_status = current.map(|s| s.status);
                let old_value = current.and_then(|s| s.value.clone());
                note_group_work(&mut groups, &applied, was_accepted, old_status, old_value);
                self.absorb(&mut slots, &mut effects, key, applied)?;
            }
            outcomes.push(match rejected {
                Some(err) => Outcome::Rejected(err),
                None => Outcome::Applied(applied_to),
            });
        }

        for (tenant, group) in groups {
            self.settle_group(
                conn,
                &mut slots,
                &mut effects,
                &tenant,
                &group,
                settings_of(&tenant),
            )
            .await?;
        }

        let mut patient_keys: Vec<String> = slots
            .values()
            .filter(|s| s.dirty && !s.state.patient_id.is_empty())
            .filter(|s| s.loaded_patient.as_deref() != Some(s.state.patient_id.as_str()))
            .map(|s| storage::patient_lock_key(&s.state.tenant_id, &s.state.patient_id))
            .collect();
        patient_keys.sort();
        patient_keys.dedup();
        storage::lock_patients(conn, &patient_keys).await?;
        let writes: Vec<CaseWrite<'_>> = slots
            .values()
            .filter(|s| s.dirty)
            .map(|s| CaseWrite {
                state: &s.state,
                presentation: s.presentation.as_ref(),
                representative: s.representative,
            })
            .collect();
        storage::write_cases(conn, &writes).await?;
        storage::counts::add_deltas(conn, &count_deltas(&slots)).await?;
        let unused: Vec<CaseKey> = placeholders
            .into_iter()
            .filter(|key| !slots.get(key).is_some_and(|s| s.dirty))
            .collect();
        storage::delete_placeholders(conn, &unused).await?;
        let created_tenants: BTreeSet<&str> = slots
            .values()
            .filter(|s| s.created)
            .map(|s| s.state.tenant_id.as_str())
            .collect();
        register_tenants(conn, &created_tenants.into_iter().collect::<Vec<_>>()).await?;
        storage::timeline::write_entries(conn, &effects.entries).await?;
        followup_platform::outbox::enqueue_events(conn, &effects.events).await?;
        let payloads: Vec<String> = slots
            .values()
            .filter(|s| s.dirty || s.last_entry.is_some())
            .map(|s| {
                let kind = if s.created {
                    "created"
                } else if s.updated {
                    "updated"
                } else {
                    "activity"
                };
                let entry = s.last_entry.map(|e| e.to_string()).unwrap_or_default();
                format!(
                    "{}\t{}\t{kind}\t{entry}",
                    s.state.tenant_id, s.state.case_id
                )
            })
            .collect();
        storage::notify_watchers(conn, &payloads).await?;
        Ok(outcomes)
    }

    /// Takes one applied event into the batch: the new state, its entries, the events it announces.
    fn absorb(
        &self,
        slots: &mut HashMap<CaseKey, Slot>,
        effects: &mut Effects,
        key: CaseKey,
        applied: Applied,
    ) -> Result<(), Error> {
        let state_changed = slots.get(&key).is_none_or(|s| s.state != applied.state);
        let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
            loaded_patient: None,
            loaded_count: None,
            state: applied.state.clone(),
            representative: true,
            dirty: true,
            created: true,
            updated: false,
            presentation: None,
            last_entry: None,
        });
        slot.state = applied.state;
        slot.dirty |= state_changed || applied.created;
        slot.updated |= state_changed;
        if applied.presentation.is_some() {
            slot.presentation = applied.presentation;
            slot.dirty = true;
        }
        for entry in applied.entries {
            slot.last_entry = Some(entry.entry.entry_id);
            effects.entries.push((key.0.clone(), key.1, entry));
        }
        if let Some(change) = applied.status_change {
            effects
                .events
                .push(self.status_changed(&slot.state, &change)?);
        }
        if let Some(change) = applied.owner_change {
            effects
                .events
                .push(self.owner_assigned(&slot.state, &change)?);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle_group(
        &self,
        conn: &mut PgConnection,
        slots: &mut HashMap<CaseKey, Slot>,
        effects: &mut Effects,
        tenant: &str,
        group: &str,
        settings: &CaseSettings,
    ) -> Result<(), Error> {
        for (state, representative) in storage::lock_group(conn, tenant, group).await? {
            let key = (tenant.to_string(), state.case_id);
            slots.entry(key).or_insert(Slot {
                loaded_patient: Some(state.patient_id.clone()),
                loaded_count: Some(CountCell::of(&state, representative)),
                state,
                representative,
                dirty: false,
                created: false,
                updated: false,
                presentation: None,
                last_entry: None,
            });
        }
        let mut members: Vec<Uuid> = slots
            .iter()
            .filter(|((t, _), s)| {
                t == tenant && s.state.alternative_group_id.as_deref() == Some(group)
            })
            .map(|((_, id), _)| *id)
            .collect();
        members.sort();
        // The accepted option (booked or completed before approved), if any: the options presented
        // before its acceptance close as superseded, whichever order their events came in.
        let accepted = members
            .iter()
            .filter_map(|m| slots.get(&(tenant.to_string(), *m)).map(|s| &s.state))
            .filter(|s| s.accepted())
            .max_by_key(|s| {
                let strength = matches!(
                    s.status,
                    crate::domain::CaseStatus::PatientBooked
                        | crate::domain::CaseStatus::TreatmentCompleted
                );
                (
                    strength,
                    std::cmp::Reverse(acceptance_time(s)),
                    std::cmp::Reverse(s.case_id),
                )
            })
            .map(|s| (s.case_id, acceptance_time(s)));
        if let Some((accepted, accepted_at)) = accepted {
            for member in members.iter().filter(|m| **m != accepted) {
                let key = (tenant.to_string(), *member);
                let Some(slot) = slots.get(&key) else {
                    continue;
                };
                if slot.state.created_at > accepted_at {
                    // Offered after the choice was made: a new option, not a superseded one.
                    continue;
                }
                let input = Input {
                    event: CaseEvent::Superseded {
                        by_case_id: accepted,
                    },
                    at: accepted_at,
                    event_id: format!("group:{accepted}"),
                    cause: CAUSE_GROUP.into(),
                };
                let applied = case::apply(Some(&slot.state), tenant, *member, &input, settings)?;
                if applied.changed {
                    self.absorb(slots, effects, key, applied)?;
                }
            }
        }
        let states: Vec<CaseState> = members
            .iter()
            .filter_map(|m| {
                slots
                    .get(&(tenant.to_string(), *m))
                    .map(|s| s.state.clone())
            })
            .collect();
        let representative = group_representative(&states);
        for member in members {
            if let Some(slot) = slots.get_mut(&(tenant.to_string(), member)) {
                let counts = Some(member) == representative;
                if slot.representative != counts {
                    slot.representative = counts;
                    slot.dirty = true;
                    slot.updated = true;
                }
            }
        }
        Ok(())
    }

    fn status_changed(
        &self,
        state: &CaseState,
        change: &case::StatusChange,
    ) -> Result<OutgoingEvent, Error> {
        let event = ev::CaseStatusChanged {
            event_id: new_event_id().to_string(),
            tenant_id: state.tenant_id.clone(),
            occurred_at: Some(timestamp(state.status_at)),
            case_id: state.case_id.to_string(),
            patient_id: state.patient_id.clone(),
            from_status: change.from.map_or(0, |s| s.number()),
            to_status: change.to.number(),
            source: if change.by_staff.is_some() {
                ev::ChangeSource::Staff as i32
            } else {
                ev::ChangeSource::Automatic as i32
            },
            changed_by_staff_id: change.by_staff.clone().unwrap_or_default(),
            cause: change.cause.clone(),
            cause_event_id: change.cause_event_id.clone(),
            reason: change.reason.clone(),
            value: state.value.as_ref().map(money),
            owner_staff_id: state.owner_staff_id.clone().unwrap_or_default(),
            alternative_group_id: state.alternative_group_id.clone().unwrap_or_default(),
        };
        self.outgoing(&event)
    }

    fn owner_assigned(
        &self,
        state: &CaseState,
        change: &case::OwnerChange,
    ) -> Result<OutgoingEvent, Error> {
        let event = ev::CaseOwnerAssigned {
            event_id: new_event_id().to_string(),
            tenant_id: state.tenant_id.clone(),
            occurred_at: Some(timestamp(state.last_activity_at)),
            case_id: state.case_id.to_string(),
            patient_id: state.patient_id.clone(),
            owner_staff_id: change.owner.clone().unwrap_or_default(),
            previous_owner_staff_id: change.previous.clone().unwrap_or_default(),
            assigned_by_staff_id: change.by_staff.clone().unwrap_or_default(),
        };
        self.outgoing(&event)
    }

    fn outgoing<E: followup_proto::subjects::Event>(
        &self,
        event: &E,
    ) -> Result<OutgoingEvent, Error> {
        let subject = event
            .subject()
            .map_err(|e| Error::invalid("tenant", format!("{e:?}")))?;
        Ok(OutgoingEvent::new(self.source, subject, event)?)
    }
}

#[derive(Default)]
struct Effects {
    entries: Vec<(String, Uuid, NewEntry)>,
    events: Vec<OutgoingEvent>,
}

/// Marks the case's group for settling when something that decides the group changed.
fn note_group_work(
    groups: &mut BTreeSet<(String, String)>,
    applied: &Applied,
    was_accepted: bool,
    old_status: Option<crate::domain::CaseStatus>,
    old_value: Option<Money>,
) {
    let state = &applied.state;
    let Some(group) = &state.alternative_group_id else {
        return;
    };
    let relevant = applied.created
        || old_status != Some(state.status)
        || old_value != state.value
        || state.accepted() != was_accepted;
    if relevant {
        groups.insert((state.tenant_id.clone(), group.clone()));
    }
}

/// The cases a command's target names, among the locked ones.
fn resolve(slots: &HashMap<CaseKey, Slot>, tenant: &str, target: &Target) -> Vec<Uuid> {
    fn of_patient<'a>(
        slots: &'a HashMap<CaseKey, Slot>,
        tenant: &'a str,
        patient: &'a str,
    ) -> impl Iterator<Item = &'a CaseState> + 'a {
        slots
            .iter()
            .filter(move |((t, _), s)| t == tenant && s.state.patient_id == patient)
            .map(|(_, s)| &s.state)
    }
    let sent_open = |s: &&CaseState| s.open() && s.last_sent_at.is_some();
    match target {
        Target::Case(id) => vec![*id],
        Target::PatientLatestOpen(patient) => of_patient(slots, tenant, patient)
            .filter(sent_open)
            .max_by_key(|s| (s.last_sent_at, s.case_id))
            .map(|s| vec![s.case_id])
            .unwrap_or_default(),
        Target::PatientOpen(patient) => {
            let mut ids: Vec<Uuid> = of_patient(slots, tenant, patient)
                .filter(sent_open)
                .map(|s| s.case_id)
                .collect();
            ids.sort();
            ids
        }
        Target::PatientBooking {
            patient_id,
            appointment_id,
        } => {
            let mut ids: Vec<Uuid> = of_patient(slots, tenant, patient_id)
                .filter(|s| s.booked_appointment_id.as_deref() == Some(appointment_id.as_str()))
                .map(|s| s.case_id)
                .collect();
            ids.sort();
            ids
        }
    }
}

pub fn money(m: &Money) -> common::Money {
    common::Money {
        amount_minor: m.amount_minor,
        currency: m.currency.clone(),
    }
}
