-- The cases service's own tables. Every table carries tenant_id (the clinic) and every query filters by it.

-- A clinic's case settings; NULL = the service's configured default. A row exists for every clinic with a
-- case, so the digest worker knows whom to visit.
CREATE TABLE case_settings (
    tenant_id            text PRIMARY KEY,
    response_window_secs bigint,
    digest_hour          integer,
    time_zone            text,
    last_digest_date     date,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Names for the dashboard, from clinic.<tenant>.patient.upserted. `search` is the name folded (lower case,
-- no accents) for the text filter.
CREATE TABLE patients (
    tenant_id    text NOT NULL,
    patient_id   text NOT NULL,
    display_name text NOT NULL,
    search       text NOT NULL,
    archived     boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, patient_id)
);

-- Owners, from clinic.<tenant>.staff.upserted.
CREATE TABLE staff (
    tenant_id    text NOT NULL,
    staff_id     text NOT NULL,
    display_name text NOT NULL,
    role         integer NOT NULL DEFAULT 0,
    active       boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, staff_id)
);

-- One row per case presentation. `state` is the whole domain case (serde JSON); the columns beside it are
-- what lists filter and sort on, derived from it at every write.
CREATE TABLE cases (
    tenant_id            text NOT NULL,
    case_id              uuid NOT NULL,
    patient_id           text NOT NULL,
    patient_name         text NOT NULL DEFAULT '',
    patient_search       text NOT NULL DEFAULT '',
    status               smallint NOT NULL,
    is_open              boolean NOT NULL,
    owner_staff_id       text,
    owner_key            text GENERATED ALWAYS AS (coalesce(owner_staff_id, '')) STORED,
    value_minor          bigint NOT NULL DEFAULT 0,
    currency             text NOT NULL DEFAULT '',
    alternative_group_id text,
    -- Counts in totals: false for the options of an alternative group other than its representative.
    is_representative    boolean NOT NULL DEFAULT true,
    viewed               boolean NOT NULL DEFAULT false,
    first_sent_at        timestamptz,
    last_sent_at         timestamptz,
    -- Sort keys that are never NULL, so keyset pagination is one row comparison.
    sent_sort            timestamptz NOT NULL,
    priority_tier        smallint NOT NULL,
    contact_sort         timestamptz NOT NULL,
    last_activity_at     timestamptz NOT NULL,
    -- Set while a response window runs; the timer claims due rows through the partial index below.
    response_due_at      timestamptz,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    state                jsonb NOT NULL,
    -- Treatments and images of the last send: large, and written only by a send.
    presentation         jsonb,
    PRIMARY KEY (tenant_id, case_id)
);

CREATE INDEX cases_by_sent ON cases (tenant_id, sent_sort DESC, case_id DESC);
CREATE INDEX cases_by_owner_sent ON cases (tenant_id, owner_key, sent_sort DESC, case_id DESC);
CREATE INDEX cases_by_value ON cases (tenant_id, value_minor DESC, case_id DESC);
CREATE INDEX cases_by_priority ON cases (tenant_id, priority_tier, (-value_minor), contact_sort, case_id);
CREATE INDEX cases_by_activity ON cases (tenant_id, last_activity_at DESC, case_id DESC);
CREATE INDEX cases_by_patient ON cases (tenant_id, patient_id);
CREATE INDEX cases_by_group ON cases (tenant_id, alternative_group_id) WHERE alternative_group_id IS NOT NULL;
CREATE INDEX cases_by_first_sent ON cases (tenant_id, first_sent_at) WHERE first_sent_at IS NOT NULL;
CREATE INDEX cases_response_due ON cases (response_due_at) WHERE response_due_at IS NOT NULL;

-- The activity timeline. An entry is keyed per case by what made it (an event, a message, a view session),
-- so a replayed event adds nothing, and a message's later result (delivered) replaces its earlier one.
CREATE TABLE timeline (
    tenant_id  text NOT NULL,
    case_id    uuid NOT NULL,
    dedupe_key text NOT NULL,
    entry_id   uuid NOT NULL,
    kind       smallint NOT NULL,
    at         timestamptz NOT NULL,
    rank       smallint NOT NULL,
    entry      jsonb NOT NULL,
    PRIMARY KEY (tenant_id, case_id, dedupe_key)
);
CREATE INDEX timeline_by_time ON timeline (tenant_id, case_id, at DESC, entry_id DESC);

-- Per-status counts and representative value, per owner and currency, kept current so a list never counts a
-- 200k-case clinic per request. Writers only append deltas (no hot row to contend on); a compactor folds
-- them into case_counts; readers add both.
CREATE TABLE case_counts (
    tenant_id  text NOT NULL,
    owner_key  text NOT NULL,
    status     smallint NOT NULL,
    currency   text NOT NULL,
    case_count bigint NOT NULL,
    rep_value  bigint NOT NULL,
    PRIMARY KEY (tenant_id, owner_key, status, currency)
);

CREATE TABLE case_count_deltas (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    owner_key   text NOT NULL,
    status      smallint NOT NULL,
    currency    text NOT NULL,
    case_delta  integer NOT NULL,
    value_delta bigint NOT NULL
);
CREATE INDEX case_count_deltas_by_tenant ON case_count_deltas (tenant_id);

CREATE FUNCTION cases_count_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO case_count_deltas (tenant_id, owner_key, status, currency, case_delta, value_delta)
        VALUES (OLD.tenant_id, coalesce(OLD.owner_staff_id, ''), OLD.status, OLD.currency, -1,
                CASE WHEN OLD.is_representative THEN -OLD.value_minor ELSE 0 END);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO case_count_deltas (tenant_id, owner_key, status, currency, case_delta, value_delta)
        VALUES (NEW.tenant_id, coalesce(NEW.owner_staff_id, ''), NEW.status, NEW.currency, 1,
                CASE WHEN NEW.is_representative THEN NEW.value_minor ELSE 0 END);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER cases_count_insert AFTER INSERT ON cases
    FOR EACH ROW EXECUTE FUNCTION cases_count_delta();
CREATE TRIGGER cases_count_update AFTER UPDATE ON cases
    FOR EACH ROW
    WHEN ((OLD.status, OLD.owner_staff_id, OLD.currency, OLD.value_minor, OLD.is_representative)
          IS DISTINCT FROM
          (NEW.status, NEW.owner_staff_id, NEW.currency, NEW.value_minor, NEW.is_representative))
    EXECUTE FUNCTION cases_count_delta();
CREATE TRIGGER cases_count_delete AFTER DELETE ON cases
    FOR EACH ROW EXECUTE FUNCTION cases_count_delta();

-- Waitlist slots refilled (scheduler slot_claimed), for the report.
CREATE TABLE slot_refills (
    tenant_id     text NOT NULL,
    slot_offer_id text NOT NULL,
    case_id       uuid,
    claimed_at    timestamptz NOT NULL,
    value_minor   bigint NOT NULL,
    currency      text NOT NULL,
    PRIMARY KEY (tenant_id, slot_offer_id)
);
CREATE INDEX slot_refills_by_time ON slot_refills (tenant_id, claimed_at);
