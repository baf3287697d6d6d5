-- The aggregator updates a session and a plan row for nearly every beacon. Keep those updates HOT (no
-- index entry rewritten): no index on a column that changes with each beacon, and room on each page.

-- Pruning scans by time; rows arrive in time order, so a BRIN index is enough and costs nothing per insert.
DROP INDEX beacon_events_received_at;
CREATE INDEX beacon_events_received_brin ON beacon_events USING brin (received_at);

-- end_at changes with every beacon. Page views that ended by inactivity are found through their plan
-- (live_sessions below), then by the primary key.
DROP INDEX view_sessions_unsummarized;
ALTER TABLE view_sessions SET (fillfactor = 70);

-- A plan with page views not yet reported in an engagement_updated.
ALTER TABLE plan_engagement ADD COLUMN live_sessions boolean NOT NULL DEFAULT true;
ALTER TABLE plan_engagement SET (fillfactor = 70);
DROP INDEX plan_engagement_dirty;
CREATE INDEX plan_engagement_pending ON plan_engagement (published_at NULLS FIRST)
    WHERE dirty OR live_sessions;
