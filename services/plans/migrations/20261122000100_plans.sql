-- The plans service's tables. Every table carries tenant_id (the clinic) and every key starts with it.

-- A clinic's own list of procedure codes: the only codes its plans can use.
CREATE TABLE codes (
    tenant_id      text        NOT NULL,
    code           text        NOT NULL,
    name           text        NOT NULL,
    category       smallint    NOT NULL DEFAULT 0,
    tooth_expected boolean     NOT NULL DEFAULT false,
    active         boolean     NOT NULL DEFAULT true,
    source         text        NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, code)
);
-- Code-prefix search ("D27") whatever the database collation.
CREATE INDEX codes_prefix ON codes (tenant_id, code text_pattern_ops);

CREATE TABLE fee_schedules (
    tenant_id       text        NOT NULL,
    fee_schedule_id uuid        NOT NULL,
    name            text        NOT NULL,
    currency        text        NOT NULL,
    is_default      boolean     NOT NULL DEFAULT false,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fee_schedule_id)
);
CREATE UNIQUE INDEX fee_schedules_name ON fee_schedules (tenant_id, lower(name));
-- At most one default per clinic, enforced by the database rather than by care.
CREATE UNIQUE INDEX fee_schedules_one_default ON fee_schedules (tenant_id) WHERE is_default;

CREATE TABLE fees (
    tenant_id       text   NOT NULL,
    fee_schedule_id uuid   NOT NULL,
    code            text   NOT NULL,
    amount_minor    bigint NOT NULL CHECK (amount_minor >= 0),
    PRIMARY KEY (tenant_id, fee_schedule_id, code),
    FOREIGN KEY (tenant_id, fee_schedule_id) REFERENCES fee_schedules ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, code) REFERENCES codes
);

-- A plan's identity; its versions are in plan_versions. Locked (FOR UPDATE) by every change.
CREATE TABLE plans (
    tenant_id       text        NOT NULL,
    plan_id         uuid        NOT NULL,
    patient_id      text        NOT NULL,
    current_version integer     NOT NULL,
    create_time     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, plan_id)
);
CREATE INDEX plans_patient ON plans (tenant_id, patient_id, plan_id DESC);

CREATE TABLE plan_versions (
    tenant_id            text        NOT NULL,
    plan_id              uuid        NOT NULL,
    version              integer     NOT NULL,
    is_current           boolean     NOT NULL,
    patient_id           text        NOT NULL,
    title                text        NOT NULL,
    status               text        NOT NULL,
    fee_schedule_id      uuid,
    currency             text        NOT NULL,
    owner_staff_id       text        NOT NULL DEFAULT '',
    alternative_group_id text        NOT NULL DEFAULT '',
    quote_expiry_date    date,
    internal_note        text        NOT NULL DEFAULT '',
    patient_note         text        NOT NULL DEFAULT '',
    images               jsonb       NOT NULL DEFAULT '[]',
    created_by           text        NOT NULL,
    create_time          timestamptz NOT NULL,
    update_time          timestamptz NOT NULL,
    last_send_time       timestamptz,
    send_count           integer     NOT NULL DEFAULT 0,
    approval_channel     text,
    approved_by_staff_id text        NOT NULL DEFAULT '',
    approve_time         timestamptz,
    consent_evidence     jsonb,
    complete_time        timestamptz,
    cancel_time          timestamptz,
    cancel_reason        text        NOT NULL DEFAULT '',
    cancelled_by         text        NOT NULL DEFAULT '',
    revision_reason      text        NOT NULL DEFAULT '',
    -- Totals kept with the version, so lists and billing summaries read them without the items.
    total_minor          bigint      NOT NULL DEFAULT 0,
    completed_minor      bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, plan_id, version),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans ON DELETE CASCADE
);
CREATE INDEX plan_versions_current ON plan_versions (tenant_id, plan_id DESC) WHERE is_current;
CREATE INDEX plan_versions_patient ON plan_versions (tenant_id, patient_id) WHERE is_current;

CREATE TABLE plan_items (
    tenant_id             text        NOT NULL,
    plan_id               uuid        NOT NULL,
    version               integer     NOT NULL,
    item_id               uuid        NOT NULL,
    position              integer     NOT NULL,
    code                  text        NOT NULL,
    code_name             text        NOT NULL,
    tooth_numbering       smallint,
    tooth_number          text,
    tooth_surfaces        text,
    practitioner_id       text        NOT NULL DEFAULT '',
    schedule_fee_minor    bigint,
    price_override_minor  bigint,
    price_override_reason text        NOT NULL DEFAULT '',
    visit                 integer     NOT NULL DEFAULT 0,
    depends_on            uuid[]      NOT NULL DEFAULT '{}',
    note                  text        NOT NULL DEFAULT '',
    completed             boolean     NOT NULL DEFAULT false,
    complete_time         timestamptz,
    completed_by          text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, plan_id, version, item_id),
    FOREIGN KEY (tenant_id, plan_id, version) REFERENCES plan_versions ON DELETE CASCADE
);

-- Every send of a plan: the portal link's token id, its expiry and what the page shows.
CREATE TABLE plan_sends (
    tenant_id        text        NOT NULL,
    link_id          text        NOT NULL,
    plan_id          uuid        NOT NULL,
    version          integer     NOT NULL,
    patient_id       text        NOT NULL,
    sent_by          text        NOT NULL,
    send_time        timestamptz NOT NULL,
    expire_time      timestamptz NOT NULL,
    sections         text[]      NOT NULL,
    delivery_channel integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, link_id),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans ON DELETE CASCADE
);
CREATE INDEX plan_sends_plan ON plan_sends (tenant_id, plan_id, send_time DESC);
