-- no-transaction
-- The reconciler's index holds only what it can still act on: outbound messages at Twilio, not
-- final, with a sid, and not stopped (a 404, or given up after RECONCILE_GIVE_UP_AFTER_SECS).
-- The index it replaces (sms_messages_outbound_open_idx, dropped next) kept every never-final
-- message forever, stopped ones included, so each pass read more as history grew (issue 21:
-- 13,600 entries, 305 ms a pass). Its statuses are `delivery::open_at_twilio()`, checked by
-- schema::every_status_list_in_the_schema_is_the_enums.
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_messages_reconcilable_idx ON sms_messages (status_updated_at)
    WHERE direction = 'outbound' AND delivery_status IN ('accepted', 'queued', 'sending', 'sent')
      AND twilio_sid IS NOT NULL AND reconcile_stopped IS NULL;
