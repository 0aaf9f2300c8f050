-- Inbound messages stored and not yet processed, oldest first: what an inbound job takes along
-- under a backlog. Partial, so it holds only the waiting few.
CREATE INDEX IF NOT EXISTS sms_messages_inbound_waiting_idx
    ON sms_messages (created_at)
    WHERE direction = 'inbound' AND processed_at IS NULL;
