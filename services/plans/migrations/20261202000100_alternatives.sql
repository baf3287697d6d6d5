-- How each alternative group was settled, per plan: superseded by another option of its group (approved
-- here, or accepted as the cases service saw it: a booking, an approval, a completion). One row per plan,
-- replaced only by a later fact (`changed_at`), so the cases events may arrive in any order.
CREATE TABLE plan_supersessions (
    tenant_id  text        NOT NULL,
    plan_id    uuid        NOT NULL,
    superseded boolean     NOT NULL,
    -- The option chosen instead, when known.
    by_plan_id uuid,
    -- 'approval' (this service) or 'cases'.
    source     text        NOT NULL,
    -- When the choice (or the reopening) happened.
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, plan_id),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans ON DELETE CASCADE
);
