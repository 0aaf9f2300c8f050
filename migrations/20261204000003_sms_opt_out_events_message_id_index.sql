-- no-transaction
-- The index the foreign key on sms_opt_out_events.message_id needs: deleting a message checks sms_opt_out_events
-- for references to it (a ledger event's message), a sequential scan of the table without this index
-- (these checks were 94% of the cost of deleting one message on a year of data).
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_opt_out_events_message_id_idx
    ON sms_opt_out_events (message_id);
