-- The trace of the event that armed a trigger timer or started an enrollment: the timer that fires them
-- later continues it, so a patient journey is one trace from the trigger to the message it causes.
-- Empty for rows made before these columns (their steps start a trace of their own).
ALTER TABLE trigger_timers ADD COLUMN traceparent text NOT NULL DEFAULT '';
ALTER TABLE enrollments ADD COLUMN traceparent text NOT NULL DEFAULT '';
