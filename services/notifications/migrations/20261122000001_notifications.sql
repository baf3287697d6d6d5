-- The notifications service's tables. Every table is keyed by tenant_id (the clinic) first.

-- Patients' contact details, learned from clinic.<tenant>.patient.upserted or set over gRPC.
CREATE TABLE contacts (
    tenant_id         text        NOT NULL,
    patient_id        text        NOT NULL,
    given_name        text        NOT NULL DEFAULT '',
    family_name       text        NOT NULL DEFAULT '',
    preferred_name    text        NOT NULL DEFAULT '',
    phone_e164        text        NOT NULL DEFAULT '',
    email             text        NOT NULL DEFAULT '',
    time_zone         text        NOT NULL DEFAULT '',
    preferred_channel integer     NOT NULL DEFAULT 0,
    language          text        NOT NULL DEFAULT '',
    archived          boolean     NOT NULL DEFAULT false,
    -- "clinic_event" or "grpc"
    source            text        NOT NULL,
    -- occurred_at of the clinic event last applied: an older upsert never overwrites a newer one.
    source_time       timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, patient_id)
);
CREATE INDEX contacts_by_phone ON contacts (tenant_id, phone_e164) WHERE phone_e164 <> '';
CREATE INDEX contacts_by_email ON contacts (tenant_id, lower(email)) WHERE email <> '';
CREATE INDEX contacts_by_name ON contacts (tenant_id, family_name, given_name, patient_id);

CREATE TABLE staff_contacts (
    tenant_id           text        NOT NULL,
    staff_id            text        NOT NULL,
    display_name        text        NOT NULL DEFAULT '',
    email               text        NOT NULL DEFAULT '',
    role                integer     NOT NULL DEFAULT 0,
    active              boolean     NOT NULL DEFAULT true,
    disabled_categories text[]      NOT NULL DEFAULT '{}',
    source_time         timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, staff_id)
);

-- The consent evidence log: append-only (no UPDATE or DELETE is ever issued on it).
CREATE TABLE consent_events (
    tenant_id   text        NOT NULL,
    id          uuid        NOT NULL,
    patient_id  text        NOT NULL,
    -- 0 = every channel
    channel     integer     NOT NULL DEFAULT 0,
    -- '' = every category
    category    text        NOT NULL DEFAULT '',
    granted     boolean     NOT NULL,
    source      integer     NOT NULL,
    staff_id    text        NOT NULL DEFAULT '',
    message_id  text        NOT NULL DEFAULT '',
    text        text        NOT NULL DEFAULT '',
    note        text        NOT NULL DEFAULT '',
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX consent_events_by_patient ON consent_events (tenant_id, patient_id, occurred_at DESC, id DESC);

-- The clinic's own categories and overrides of the built-in ones.
CREATE TABLE categories (
    tenant_id     text    NOT NULL,
    key           text    NOT NULL,
    display_name  text    NOT NULL DEFAULT '',
    description   text    NOT NULL DEFAULT '',
    audience      integer NOT NULL DEFAULT 1,
    transactional boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE delivery_settings (
    tenant_id                   text        NOT NULL PRIMARY KEY,
    time_zone                   text        NOT NULL,
    quiet_hours_start           text        NOT NULL,
    quiet_hours_end             text        NOT NULL,
    weekly_cap                  integer     NOT NULL,
    cap_deferral_limit_secs     bigint      NOT NULL,
    clinic_name                 text        NOT NULL DEFAULT '',
    clinic_phone                text        NOT NULL DEFAULT '',
    help_reply                  text        NOT NULL DEFAULT '',
    default_task_owner_staff_id text        NOT NULL DEFAULT '',
    email_from                  text        NOT NULL DEFAULT '',
    updated_at                  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE templates (
    tenant_id  text        NOT NULL,
    id         uuid        NOT NULL,
    key        text        NOT NULL,
    channel    integer     NOT NULL,
    name       text        NOT NULL DEFAULT '',
    subject    text        NOT NULL DEFAULT '',
    body       text        NOT NULL,
    html_body  text        NOT NULL DEFAULT '',
    category   text        NOT NULL DEFAULT '',
    enabled    boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, key, channel)
);

-- One row per intent. status: queued, deferred, retrying, sending, sent, delivered, failed, suppressed.
-- due_at is when a worker should look at it next (NULL once final); a row in 'sending' has due_at at the
-- end of its lease, so a worker that died mid-send is taken over after the lease.
CREATE TABLE messages (
    tenant_id           text        NOT NULL,
    id                  uuid        NOT NULL,
    idempotency_key     text,
    channel             integer     NOT NULL,
    category            text        NOT NULL DEFAULT '',
    transactional       boolean     NOT NULL DEFAULT false,
    automated           boolean     NOT NULL DEFAULT true,
    patient_id          text        NOT NULL DEFAULT '',
    staff_id            text        NOT NULL DEFAULT '',
    -- An enquirer who is not a patient: {given_name, family_name, phone_e164, email, time_zone}.
    direct_contact      jsonb,
    to_address          text        NOT NULL DEFAULT '',
    case_plan_id        text        NOT NULL DEFAULT '',
    case_care_case_id   text        NOT NULL DEFAULT '',
    enrollment_id       text        NOT NULL DEFAULT '',
    template_key        text        NOT NULL DEFAULT '',
    -- Request-supplied template variables (personal data: never logged).
    variables           jsonb       NOT NULL DEFAULT '{}',
    -- For TASK: {title, description, due_time}.
    task                jsonb,
    owner_staff_id      text        NOT NULL DEFAULT '',
    webhook_endpoint_id text        NOT NULL DEFAULT '',
    plan_id             text        NOT NULL DEFAULT '',
    rendered_subject    text        NOT NULL DEFAULT '',
    rendered_body       text        NOT NULL DEFAULT '',
    rendered_html       text        NOT NULL DEFAULT '',
    sms_encoding        integer     NOT NULL DEFAULT 0,
    segment_count       integer     NOT NULL DEFAULT 0,
    character_count     integer     NOT NULL DEFAULT 0,
    status              text        NOT NULL,
    due_at              timestamptz,
    deferral_reason     integer     NOT NULL DEFAULT 0,
    suppression_reason  integer     NOT NULL DEFAULT 0,
    suppression_detail  text        NOT NULL DEFAULT '',
    failure_reason      text        NOT NULL DEFAULT '',
    provider            text        NOT NULL DEFAULT '',
    provider_message_id text        NOT NULL DEFAULT '',
    attempt_count       integer     NOT NULL DEFAULT 0,
    not_before          timestamptz,
    expire_at           timestamptz,
    -- When it first counted toward the patient's frequency cap (its first attempt).
    counted_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    delivered_at        timestamptz,
    requested_by        text        NOT NULL DEFAULT '',
    request_event_id    text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, id),
    -- Exactly one message per intent. NULL keys (staff replies without one) are all distinct.
    UNIQUE (tenant_id, idempotency_key)
);
-- The workers' queue: only rows with work left are indexed (River / Graphile Worker style).
CREATE INDEX messages_due ON messages (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX messages_by_patient ON messages (tenant_id, patient_id, created_at DESC, id DESC);
CREATE INDEX messages_by_case ON messages (tenant_id, case_plan_id, case_care_case_id, created_at DESC);
CREATE INDEX messages_by_staff ON messages (tenant_id, staff_id, created_at DESC) WHERE staff_id <> '';
CREATE INDEX messages_by_created ON messages (tenant_id, created_at DESC, id DESC);
CREATE INDEX messages_cap ON messages (tenant_id, patient_id, counted_at)
    WHERE counted_at IS NOT NULL AND automated AND NOT transactional;
CREATE INDEX messages_by_provider_id ON messages (provider, provider_message_id) WHERE provider_message_id <> '';

-- Every attempt at handing a message to its provider. outcome: followup.notifications.v1.AttemptOutcome;
-- UNKNOWN (4) is written before the request and replaced after it, so a crash leaves the evidence.
CREATE TABLE delivery_attempts (
    tenant_id      text        NOT NULL,
    message_id     uuid        NOT NULL,
    attempt        integer     NOT NULL,
    started_at     timestamptz NOT NULL,
    latency_ms     bigint      NOT NULL DEFAULT 0,
    outcome        integer     NOT NULL,
    status_code    integer     NOT NULL DEFAULT 0,
    detail         text        NOT NULL DEFAULT '',
    retry_after_ms bigint,
    PRIMARY KEY (tenant_id, message_id, attempt)
);

-- Both directions of a patient's conversation. Outbound rows point at their message.
CREATE TABLE conversation_messages (
    tenant_id           text        NOT NULL,
    id                  uuid        NOT NULL,
    patient_id          text        NOT NULL,
    direction           integer     NOT NULL,
    channel             integer     NOT NULL,
    text                text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    author_staff_id     text        NOT NULL DEFAULT '',
    classification      integer     NOT NULL DEFAULT 0,
    read                boolean     NOT NULL DEFAULT false,
    message_id          uuid,
    provider_message_id text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX conversation_by_patient ON conversation_messages (tenant_id, patient_id, created_at DESC, id DESC);
-- An inbound message delivered twice by a provider bridge is stored once.
CREATE UNIQUE INDEX conversation_inbound_provider_id ON conversation_messages (tenant_id, provider_message_id)
    WHERE provider_message_id <> '' AND direction = 1;

CREATE TABLE tasks (
    tenant_id             text        NOT NULL,
    id                    uuid        NOT NULL,
    owner_staff_id        text        NOT NULL,
    title                 text        NOT NULL,
    description           text        NOT NULL DEFAULT '',
    patient_id            text        NOT NULL DEFAULT '',
    case_plan_id          text        NOT NULL DEFAULT '',
    case_care_case_id     text        NOT NULL DEFAULT '',
    due_at                timestamptz,
    state                 integer     NOT NULL DEFAULT 1,
    outcome               text        NOT NULL DEFAULT '',
    note                  text        NOT NULL DEFAULT '',
    completed_by_staff_id text        NOT NULL DEFAULT '',
    completed_at          timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    idempotency_key       text        NOT NULL DEFAULT '',
    enrollment_id         text        NOT NULL DEFAULT '',
    message_id            uuid,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX tasks_by_owner ON tasks (tenant_id, owner_staff_id, state, due_at NULLS FIRST, id);

CREATE TABLE webhook_endpoints (
    tenant_id                  text        NOT NULL,
    id                         uuid        NOT NULL,
    url                        text        NOT NULL,
    description                text        NOT NULL DEFAULT '',
    event_types                text[]      NOT NULL DEFAULT '{}',
    enabled                    boolean     NOT NULL DEFAULT true,
    -- Signing secrets (whsec_…). Stored as given: the service must sign with them.
    secret                     text        NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    secret_rotated_at          timestamptz,
    deleted                    boolean     NOT NULL DEFAULT false,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
