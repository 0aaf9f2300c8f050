-- no-transaction
-- A page's decisions side by side, with the columns the page shows: an index-only scan.
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_routing_decisions_page_idx
    ON sms_routing_decisions (conversation_id, message_id, id)
    INCLUDE (attempt, reason, agent_url, agent_status, outcome, detail, latency_ms, decided_at)
    WHERE conversation_id IS NOT NULL AND sms_decision_fits(agent_url, detail);
