-- no-transaction
-- An unscoped conversation page: the page's columns in the page's order, read by an index-only
-- scan (see sms_page_fits).
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS sms_messages_conversation_page_idx
    ON sms_messages (conversation_id, created_at DESC, id DESC)
    INCLUDE (direction, message_content, twilio_sid, delivery_status, language_detected, route_status,
             tenant_id, scheduled_for)
    WHERE conversation_id IS NOT NULL AND sms_page_fits(message_content, twilio_sid, tenant_id);
