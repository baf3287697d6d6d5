-- Cheaper writes of cases, found by the benchmark (BENCHMARKS.md, Cases): every index on `cases` is paid
-- for by every update that changes an indexed column, and engagement updates are the most frequent event.
--
-- * Per-status counts: the engine appends one aggregated delta per (owner, status, currency) and batch
--   instead of a trigger inserting two rows per changed case.
-- * Fewer indexes: an owner's list and the report read through the other indexes (owner and first-sent
--   filters narrow rows the tenant's index already reaches).
-- * Room on each page, so an update that changes no indexed column stays on its page (a HOT update:
--   no index entry at all).
DROP TRIGGER cases_count_insert ON cases;
DROP TRIGGER cases_count_update ON cases;
DROP TRIGGER cases_count_delete ON cases;
DROP FUNCTION cases_count_delta();

DROP INDEX cases_by_owner_sent;
DROP INDEX cases_by_first_sent;

ALTER TABLE cases SET (fillfactor = 80);

-- Sorting by last activity reads the clinic's matching cases instead: an index on last_activity_at would
-- make every engagement update a non-HOT update touching every index.
DROP INDEX cases_by_activity;
