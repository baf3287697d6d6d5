-- The platform's own tables, present in every service's database. Tracked in
-- `_followup_platform_migrations`, apart from the service's `_sqlx_migrations`.

-- Events written in the same transaction as the state change they announce; the relay publishes them
-- (Nats-Msg-Id = id) and marks them published after the PubAck.
CREATE TABLE outbox (
    id           uuid        PRIMARY KEY,          -- the event id (UUIDv7)
    tenant_id    text        NOT NULL,
    subject      text        NOT NULL,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}', -- traceparent, CloudEvents attributes
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

-- The relay's only question: what is pending, oldest first. Published rows leave the index.
CREATE INDEX outbox_pending ON outbox (created_at, id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Event ids a consumer has applied, recorded in the transaction of the effect: a redelivery is a no-op.
CREATE TABLE inbox (
    consumer     text        NOT NULL,
    tenant_id    text        NOT NULL,
    event_id     text        NOT NULL,
    subject      text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, tenant_id, event_id)
);

CREATE INDEX inbox_processed_at ON inbox (processed_at);
