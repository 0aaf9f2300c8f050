-- no-transaction
-- The decisions too long for sms_routing_decisions_page_idx (few).
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_routing_decisions_page_long_idx
    ON sms_routing_decisions (conversation_id, message_id, id)
    WHERE conversation_id IS NOT NULL AND NOT sms_decision_fits(agent_url, detail);
