-- Scheduled sends: a message stored at once (delivery_status 'scheduled') and handed to Twilio at
-- `scheduled_for` by the durable queue; canceled ones are 'canceled'. Quiet hours schedule too,
-- and say why; a send forced through them is recorded as such.
ALTER TABLE sms_messages
    ADD COLUMN scheduled_for     TIMESTAMPTZ,
    ADD COLUMN schedule_reason   TEXT CHECK (schedule_reason IN ('requested', 'quiet_hours')),
    ADD COLUMN quiet_hours_override BOOLEAN NOT NULL DEFAULT false;
