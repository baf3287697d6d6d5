-- Engagement facts folded from portal beacons. Every table carries tenant_id; every query filters by it.

-- Each beacon event counted once: a retried request, or an event repeated in two requests, finds its key
-- here and adds nothing. Pruned after the BEACONS stream's retention, when no redelivery can come.
CREATE TABLE beacon_events (
    tenant_id        text        NOT NULL,
    plan_id          uuid        NOT NULL,
    session_id       text        NOT NULL,
    client_event_id  text        NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, plan_id, session_id, client_event_id)
);
CREATE INDEX beacon_events_received_at ON beacon_events (received_at);

-- One page view of the portal.
CREATE TABLE view_sessions (
    tenant_id             text        NOT NULL,
    plan_id               uuid        NOT NULL,
    session_id            text        NOT NULL,
    plan_version          integer     NOT NULL,
    patient_id            text        NOT NULL,
    start_at              timestamptz NOT NULL,
    end_at                timestamptz NOT NULL,
    view_ms               bigint      NOT NULL DEFAULT 0 CHECK (view_ms >= 0),
    cover_ms              bigint      NOT NULL DEFAULT 0 CHECK (cover_ms >= 0),
    treatment_details_ms  bigint      NOT NULL DEFAULT 0 CHECK (treatment_details_ms >= 0),
    images_ms             bigint      NOT NULL DEFAULT 0 CHECK (images_ms >= 0),
    models_3d_ms          bigint      NOT NULL DEFAULT 0 CHECK (models_3d_ms >= 0),
    event_count           integer     NOT NULL DEFAULT 0,
    closed                boolean     NOT NULL DEFAULT false,
    -- Reported in an engagement_updated's ended_sessions (reset when the page view comes back).
    summarized            boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, plan_id, session_id)
);
CREATE INDEX view_sessions_newest ON view_sessions (tenant_id, plan_id, start_at DESC, session_id DESC);
CREATE INDEX view_sessions_unsummarized ON view_sessions (end_at) WHERE NOT summarized;

-- The facts of one plan.
CREATE TABLE plan_engagement (
    tenant_id             text        NOT NULL,
    plan_id               uuid        NOT NULL,
    plan_version          integer     NOT NULL,
    patient_id            text        NOT NULL,
    first_view_at         timestamptz NOT NULL,
    last_view_at          timestamptz NOT NULL,
    view_count            integer     NOT NULL DEFAULT 0,
    total_view_ms         bigint      NOT NULL DEFAULT 0 CHECK (total_view_ms >= 0),
    cover_ms              bigint      NOT NULL DEFAULT 0 CHECK (cover_ms >= 0),
    treatment_details_ms  bigint      NOT NULL DEFAULT 0 CHECK (treatment_details_ms >= 0),
    images_ms             bigint      NOT NULL DEFAULT 0 CHECK (images_ms >= 0),
    models_3d_ms          bigint      NOT NULL DEFAULT 0 CHECK (models_3d_ms >= 0),
    last_section          smallint,
    last_section_at       timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- Changed since the last engagement_updated; published_at paces the next one.
    dirty                 boolean     NOT NULL DEFAULT true,
    published_at          timestamptz,
    PRIMARY KEY (tenant_id, plan_id)
);
CREATE INDEX plan_engagement_dirty ON plan_engagement (published_at NULLS FIRST) WHERE dirty;
