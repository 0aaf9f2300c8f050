-- no-transaction
-- A tenant-scoped conversation page: as sms_messages_conversation_page_idx, one tenant's rows
-- together (a busy number's other owners are never read).
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_messages_conversation_tenant_page_idx
    ON sms_messages (conversation_id, tenant_id, created_at DESC, id DESC)
    INCLUDE (direction, message_content, twilio_sid, delivery_status, language_detected, route_status,
             scheduled_for)
    WHERE conversation_id IS NOT NULL AND sms_page_fits(message_content, twilio_sid, tenant_id);
