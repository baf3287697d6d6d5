-- The scheduler's own state: the clinic's settings, the case facts it keeps from other services' events
-- (event-carried state), its rules and their versions, enrollments with their steps, and the timers of
-- time-based triggers. Every table carries tenant_id (the clinic).

CREATE TABLE settings (
    tenant_id              text PRIMARY KEY,
    time_zone              text        NOT NULL DEFAULT 'UTC',
    closed_weekdays        smallint[]  NOT NULL DEFAULT '{}',  -- followup.scheduler.v1.Weekday: 1 = Monday … 7 = Sunday
    closed_dates           date[]      NOT NULL DEFAULT '{}',
    default_owner_staff_id text        NOT NULL DEFAULT '',
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Per patient: zone, last attended visit ("lapsed"), and the times that stop sequences.
CREATE TABLE patients (
    tenant_id        text NOT NULL,
    patient_id       text NOT NULL,
    time_zone        text NOT NULL DEFAULT '',
    archived         boolean NOT NULL DEFAULT false,
    record_at        timestamptz,            -- occurred_at of the patient.upserted applied
    last_attended_at timestamptz,
    last_booked_at   timestamptz,
    last_replied_at  timestamptz,
    PRIMARY KEY (tenant_id, patient_id)
);

-- Opt-outs as notifications reports them; channel 0 = every channel, category '' = every category.
CREATE TABLE consents (
    tenant_id  text        NOT NULL,
    patient_id text        NOT NULL,
    channel    smallint    NOT NULL,
    category   text        NOT NULL,
    opted_out  boolean     NOT NULL,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, patient_id, channel, category)
);

-- Both kinds of case: 1 = case presentation (case_id = plan id), 2 = care case (the clinic's id).
-- Each group of facts remembers the time of the event it came from, so an older event never overwrites
-- a newer one.
CREATE TABLE cases (
    tenant_id            text     NOT NULL,
    case_kind            smallint NOT NULL,
    case_id              text     NOT NULL,
    patient_id           text     NOT NULL DEFAULT '',
    name                 text     NOT NULL DEFAULT '',
    open                 boolean  NOT NULL DEFAULT true,
    issue_date           date,
    expiry_date          date,
    max_sessions         integer  NOT NULL DEFAULT 0,
    sessions_done        integer  NOT NULL DEFAULT 0,   -- presentations: visits completed
    invoiced_minor       bigint,                        -- presentations: completed value
    invoiced_currency    text,
    invoiceable_minor    bigint,
    invoiceable_currency text,
    status               smallint,                      -- followup.common.v1.CaseStatus (presentations)
    viewed               boolean  NOT NULL DEFAULT false,
    first_viewed_at      timestamptz,
    sent_at              timestamptz,
    approved             boolean  NOT NULL DEFAULT false,
    value_minor          bigint,
    value_currency       text,
    owner_staff_id       text     NOT NULL DEFAULT '',
    portal_url           text     NOT NULL DEFAULT '',  -- contains a signed token: never logged
    record_at            timestamptz,                   -- the care case record / the last plan_sent
    status_at            timestamptz,
    progress_at          timestamptz,
    owner_at             timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, case_kind, case_id)
);
CREATE INDEX cases_open_expiring ON cases (tenant_id, expiry_date) WHERE case_kind = 2 AND open;

CREATE TABLE appointments (
    tenant_id       text NOT NULL,
    appointment_id  text NOT NULL,
    patient_id      text NOT NULL,
    plan_id         text NOT NULL DEFAULT '',
    care_case_id    text NOT NULL DEFAULT '',
    start_at        timestamptz,
    state           text NOT NULL CHECK (state IN ('booked', 'cancelled', 'no_show', 'attended')),
    state_at        timestamptz NOT NULL,     -- occurred_at of the event that set the state
    booked_at       timestamptz,              -- occurred_at of its appointment.booked
    replaces_appointment_id text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, appointment_id)
);
CREATE INDEX appointments_care_case ON appointments (tenant_id, care_case_id) WHERE care_case_id <> '';
CREATE INDEX appointments_patient_booked ON appointments (tenant_id, patient_id, booked_at);
CREATE INDEX appointments_replaces ON appointments (tenant_id, replaces_appointment_id)
    WHERE replaces_appointment_id <> '';

CREATE TABLE invoices (
    tenant_id    text   NOT NULL,
    invoice_id   text   NOT NULL,
    patient_id   text   NOT NULL,
    plan_id      text   NOT NULL DEFAULT '',
    care_case_id text   NOT NULL DEFAULT '',
    amount_minor bigint NOT NULL,
    currency     text   NOT NULL,
    issued_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, invoice_id)
);
CREATE INDEX invoices_care_case ON invoices (tenant_id, care_case_id) WHERE care_case_id <> '';

CREATE TABLE rules (
    tenant_id      text     NOT NULL,
    rule_id        uuid     NOT NULL,
    name           text     NOT NULL,
    state          text     NOT NULL CHECK (state IN ('draft', 'playing', 'paused', 'deleted')),
    latest_version integer  NOT NULL,
    trigger_type   smallint NOT NULL,   -- of the latest version
    template_id    text     NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    updated_by     text     NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, rule_id)
);
CREATE UNIQUE INDEX rules_name ON rules (tenant_id, lower(name)) WHERE state <> 'deleted';
CREATE UNIQUE INDEX rules_template ON rules (tenant_id, template_id)
    WHERE template_id <> '' AND state <> 'deleted';
CREATE INDEX rules_playing ON rules (tenant_id, trigger_type) WHERE state = 'playing';

-- Every version of every rule, as the followup.scheduler.v1.Rule protobuf the client wrote (its
-- compatibility rules keep old versions readable). Versions never change once another exists.
CREATE TABLE rule_versions (
    tenant_id  text    NOT NULL,
    rule_id    uuid    NOT NULL,
    version    integer NOT NULL,
    definition bytea   NOT NULL,
    created_at timestamptz NOT NULL,
    created_by text    NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, rule_id, version)
);

CREATE TABLE enrollments (
    tenant_id        text     NOT NULL,
    enrollment_id    uuid     NOT NULL,
    rule_id          uuid     NOT NULL,
    rule_version     integer  NOT NULL,
    subject_key      text     NOT NULL,   -- plan:<id>, care_case:<id>, patient:<id>, enquiry:<id>
    case_kind        smallint NOT NULL DEFAULT 0,
    case_id          text     NOT NULL DEFAULT '',
    patient_id       text     NOT NULL DEFAULT '',
    recipient        jsonb,               -- a direct contact (an enquirer who is not a patient): personal data
    variables        jsonb    NOT NULL DEFAULT '{}',
    state            text     NOT NULL CHECK (state IN ('active', 'finished', 'stopped')),
    trigger          text     NOT NULL,
    trigger_event_id text     NOT NULL DEFAULT '',
    trigger_at       timestamptz NOT NULL,
    time_zone        text     NOT NULL,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    stop_reason      smallint,
    stop_detail      text     NOT NULL DEFAULT '',
    stopped_by       text     NOT NULL DEFAULT '',
    stop_event_id    text     NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, enrollment_id)
);
-- One running enrollment per rule and subject; once-per-case rules also look at ended ones.
CREATE UNIQUE INDEX enrollments_one_active ON enrollments (tenant_id, rule_id, subject_key) WHERE state = 'active';
CREATE INDEX enrollments_subject ON enrollments (tenant_id, rule_id, subject_key);
CREATE INDEX enrollments_patient_active ON enrollments (tenant_id, patient_id) WHERE state = 'active';
CREATE INDEX enrollments_case ON enrollments (tenant_id, case_kind, case_id, enrollment_id);
CREATE INDEX enrollments_patient ON enrollments (tenant_id, patient_id, enrollment_id);
CREATE INDEX enrollments_rule ON enrollments (tenant_id, rule_id, state);

-- The firing steps of each enrollment, due times fixed at enrollment. 'held' = pending while the rule
-- is paused (out of the due index, so a paused rule costs the claim nothing).
CREATE TABLE step_runs (
    tenant_id     text     NOT NULL,
    enrollment_id uuid     NOT NULL,
    step_index    integer  NOT NULL,
    rule_id       uuid     NOT NULL,
    due_at        timestamptz NOT NULL,
    state         text     NOT NULL CHECK (state IN ('pending', 'held', 'fired', 'skipped', 'cancelled')),
    is_last       boolean  NOT NULL,
    fired_at      timestamptz,
    reason        text     NOT NULL DEFAULT '',
    outcome       text     NOT NULL DEFAULT '',
    outcome_at    timestamptz,
    PRIMARY KEY (tenant_id, enrollment_id, step_index)
);
-- The timer's one question: what is pending and due, earliest first (across clinics).
CREATE INDEX step_runs_due ON step_runs (due_at) WHERE state = 'pending';
CREATE INDEX step_runs_rule_waiting ON step_runs (tenant_id, rule_id) WHERE state IN ('pending', 'held');

-- Time-based triggers waiting for their moment: viewed-no-response, quote unanswered, cancellation
-- grace, consultation without next visit, lapsed patient, care case expiring. One per rule and key;
-- arming again replaces it.
CREATE TABLE trigger_timers (
    tenant_id        text     NOT NULL,
    rule_id          uuid     NOT NULL,
    timer_key        text     NOT NULL,   -- plan:<id>, appointment:<id>, patient:<id>, care_case:<id>
    subject_key      text     NOT NULL,
    case_kind        smallint NOT NULL DEFAULT 0,
    case_id          text     NOT NULL DEFAULT '',
    patient_id       text     NOT NULL DEFAULT '',
    anchor_at        timestamptz NOT NULL,   -- when the arming fact happened
    due_at           timestamptz NOT NULL,
    trigger          text     NOT NULL,
    cause_event_id   text     NOT NULL DEFAULT '',
    variables        jsonb    NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, rule_id, timer_key)
);
CREATE INDEX trigger_timers_due ON trigger_timers (due_at);
