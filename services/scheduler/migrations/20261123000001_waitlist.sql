-- Refilling cancelled slots: the clinic's refill settings, its waitlist, the slots being offered and
-- the offers to each candidate. Every table carries tenant_id.

CREATE TABLE waitlist_settings (
    tenant_id           text PRIMARY KEY,
    enabled             boolean NOT NULL DEFAULT true,
    batch_size          integer NOT NULL DEFAULT 3,
    batch_interval_secs bigint  NOT NULL DEFAULT 900,
    cutoff_secs         bigint  NOT NULL DEFAULT 7200,
    offer_template_key  text    NOT NULL DEFAULT 'slot_offer',
    taken_template_key  text    NOT NULL DEFAULT 'slot_taken',
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Patients waiting for an earlier appointment; entry_id is a UUIDv7 (gRPC) or the clinic's own id
-- (waitlist_entry.upserted, which replaces the entry when newer: record_at).
CREATE TABLE waitlist_entries (
    tenant_id              text    NOT NULL,
    entry_id               text    NOT NULL,
    patient_id             text    NOT NULL,
    practitioner_ids       text[]  NOT NULL DEFAULT '{}',
    location_ids           text[]  NOT NULL DEFAULT '{}',
    duration_secs          bigint  NOT NULL,
    earliest_at            timestamptz,
    latest_at              timestamptz,
    current_appointment_id text    NOT NULL DEFAULT '',
    plan_id                text    NOT NULL DEFAULT '',
    note                   text    NOT NULL DEFAULT '',  -- staff's words: never logged
    source                 text    NOT NULL CHECK (source IN ('grpc', 'clinic_event')),
    active                 boolean NOT NULL DEFAULT true,
    record_at              timestamptz NOT NULL,
    created_at             timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, entry_id)
);
CREATE INDEX waitlist_entries_active ON waitlist_entries (tenant_id, created_at, entry_id) WHERE active;

-- The slot of each cancelled appointment on offer; settings are copied at opening (later changes do
-- not move a slot already open).
CREATE TABLE open_slots (
    tenant_id                text    NOT NULL,
    slot_id                  uuid    NOT NULL,
    cancelled_appointment_id text    NOT NULL,
    start_at                 timestamptz NOT NULL,
    duration_secs            bigint  NOT NULL,
    practitioner_id          text    NOT NULL DEFAULT '',
    location_id              text    NOT NULL DEFAULT '',
    state                    text    NOT NULL CHECK (state IN ('offering', 'claimed', 'rebooked', 'cutoff',
                                                               'exhausted', 'no_candidates')),
    batch_size               integer NOT NULL,
    batch_interval_secs      bigint  NOT NULL,
    cutoff_at                timestamptz NOT NULL,
    offer_template_key       text    NOT NULL,
    taken_template_key       text    NOT NULL,
    offers_sent              integer NOT NULL DEFAULT 0,
    candidate_count          integer NOT NULL DEFAULT 0,
    next_batch_at            timestamptz,
    claimed_offer_id         uuid,
    claimed_patient_id       text    NOT NULL DEFAULT '',
    opened_at                timestamptz NOT NULL,
    closed_at                timestamptz,
    PRIMARY KEY (tenant_id, slot_id)
);
CREATE UNIQUE INDEX open_slots_appointment ON open_slots (tenant_id, cancelled_appointment_id);
-- The timer's question: which offering slots need their next batch (or their cut-off) now.
CREATE INDEX open_slots_due ON open_slots (next_batch_at) WHERE state = 'offering';
CREATE INDEX open_slots_offering_at ON open_slots (tenant_id, start_at) WHERE state = 'offering';

CREATE TABLE slot_offers (
    tenant_id              text    NOT NULL,
    offer_id               uuid    NOT NULL,
    slot_id                uuid    NOT NULL,
    patient_id             text    NOT NULL,
    rank                   integer NOT NULL,
    batch                  integer NOT NULL,
    state                  text    NOT NULL CHECK (state IN ('queued', 'sent', 'claimed', 'declined', 'taken',
                                                             'withdrawn')),
    entry_id               text    NOT NULL DEFAULT '',
    case_kind              smallint NOT NULL DEFAULT 0,
    case_id                text    NOT NULL DEFAULT '',
    current_appointment_id text    NOT NULL DEFAULT '',
    value_minor            bigint,
    value_currency         text,
    sent_at                timestamptz,
    responded_at           timestamptz,
    no_more_offers         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, offer_id)
);
CREATE UNIQUE INDEX slot_offers_rank ON slot_offers (tenant_id, slot_id, rank);
CREATE INDEX slot_offers_patient ON slot_offers (tenant_id, patient_id, sent_at) WHERE state = 'sent';

-- The practitioners of each visit of a plan ({"1": ["dr-ana"], "2": [...]}, from plan_sent's items), so a
-- cancelled slot can be offered to patients whose next visit is with its practitioner.
ALTER TABLE cases ADD COLUMN visit_practitioners jsonb NOT NULL DEFAULT '{}';
