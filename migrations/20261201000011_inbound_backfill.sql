-- Inbound backfill: Twilio keeps every inbound SMS in its message log even when its webhook never
-- reached us (the service down longer than Twilio retries). The reconciler lists what Twilio
-- received since this durable watermark and stores what we do not have, through the webhook's
-- own path (idempotent by MessageSid).
CREATE TABLE inbound_backfill (
    id         BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    watermark  TIMESTAMPTZ NOT NULL,
    ran_at     TIMESTAMPTZ NOT NULL
);
