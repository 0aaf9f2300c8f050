-- The reconciler records each check of a stuck message (when, what Twilio said), so the next pass
-- moves on to others; a message Twilio does not know (404) or that stayed non-final past
-- RECONCILE_GIVE_UP_AFTER_SECS is settled and no longer polled.
ALTER TABLE sms_messages
    ADD COLUMN reconciled_at     TIMESTAMPTZ,
    ADD COLUMN reconcile_note    TEXT,
    ADD COLUMN reconcile_stopped TEXT CHECK (reconcile_stopped IN ('not_found', 'gave_up'));
