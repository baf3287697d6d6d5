-- What the test handler applies: one row per event it saw, so a duplicate shows as a second row.
CREATE TABLE applied (
    tenant_id text NOT NULL,
    event_id  text NOT NULL,
    subject   text NOT NULL
);
