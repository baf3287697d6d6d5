-- Per channel, what a clinic wants done with an attempt whose outcome is unknown (followup.notifications.v1
-- UnknownOutcomePolicy numbers: 1 at-most-once, the default; 2 at-least-once).
ALTER TABLE delivery_settings
    ADD COLUMN sms_unknown_outcome     integer NOT NULL DEFAULT 1,
    ADD COLUMN email_unknown_outcome   integer NOT NULL DEFAULT 1,
    ADD COLUMN webhook_unknown_outcome integer NOT NULL DEFAULT 1;
