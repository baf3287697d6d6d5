-- The trace of the request or event that created a message: the worker that sends it later continues it,
-- so a patient journey is one trace from the trigger to the provider call. Empty for messages created
-- before this column (they start their own trace when sent).
ALTER TABLE messages ADD COLUMN traceparent text NOT NULL DEFAULT '';
