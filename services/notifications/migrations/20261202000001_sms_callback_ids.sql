-- The ids of the SMS provider callbacks already applied (the Standard Webhooks `webhook-id`, the
-- provider's message id of an inbound text, Twilio's idempotency token), so a callback replayed or
-- retried within the retention is answered without being applied twice. Pruned after 24 hours, far
-- longer than the generic adapter's 5-minute signature window and than providers' retries.
CREATE TABLE sms_callback_ids (
    tenant_id text NOT NULL,
    provider text NOT NULL,
    callback_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, provider, callback_id)
);
CREATE INDEX sms_callback_ids_received_at ON sms_callback_ids (received_at);
