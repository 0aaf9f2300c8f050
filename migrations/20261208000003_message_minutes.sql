-- The console's health chart (messages in and out per minute, last hour) counted the last hour's
-- messages on every view: 2.9 s when an hour held 420,000, so the page an operator opens during a
-- surge was the slowest one. Per-minute counts are now appended by the insert trigger the usage
-- ledger already has (one row per minute and direction of each statement), compacted and pruned
-- to the last two hours by the usage fold every 5 s; the chart sums at most a few hundred rows.
-- A tenant-scoped chart still counts its tenant's messages through (tenant_id, created_at): one
-- tenant's hour, and a message's tenant can change after it arrives.
SET lock_timeout = '5s';
SET statement_timeout = '30s';

-- No message is stored between the count of what the last two hours hold (at the end) and the
-- triggers' new text taking effect: writers wait for this transaction.
LOCK TABLE sms_messages IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE sms_message_minutes (
    minute    TIMESTAMPTZ NOT NULL,
    direction TEXT        NOT NULL,
    messages  BIGINT      NOT NULL
);

CREATE OR REPLACE FUNCTION sms_usage_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sms_usage_deltas (tenant_id, direction, status, day, messages, segments)
    SELECT COALESCE(tenant_id, ''), direction, delivery_status, (created_at AT TIME ZONE 'UTC')::date,
           count(*), COALESCE(sum(num_segments), 0)
    FROM usage_new WHERE conversation_id IS NOT NULL
    GROUP BY 1, 2, 3, 4;
    -- Every message counts here, linked to a conversation or not yet: the chart shows arrivals.
    INSERT INTO sms_message_minutes (minute, direction, messages)
    SELECT date_trunc('minute', created_at), direction, count(*)
    FROM usage_new WHERE created_at >= now() - interval '2 hours'
    GROUP BY 1, 2;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION sms_usage_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.conversation_id IS NOT NULL THEN
        INSERT INTO sms_usage_deltas (tenant_id, direction, status, day, messages, segments)
        VALUES (COALESCE(OLD.tenant_id, ''), OLD.direction, OLD.delivery_status,
                (OLD.created_at AT TIME ZONE 'UTC')::date, -1, -COALESCE(OLD.num_segments, 0));
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.conversation_id IS NOT NULL THEN
        INSERT INTO sms_usage_deltas (tenant_id, direction, status, day, messages, segments)
        VALUES (COALESCE(NEW.tenant_id, ''), NEW.direction, NEW.delivery_status,
                (NEW.created_at AT TIME ZONE 'UTC')::date, 1, COALESCE(NEW.num_segments, 0));
    END IF;
    -- A message leaves its minute only when deleted, or when its time or direction is rewritten
    -- by hand; status and tenant changes (the usual updates) write nothing here.
    IF TG_OP = 'DELETE' THEN
        IF OLD.created_at >= now() - interval '2 hours' THEN
            INSERT INTO sms_message_minutes (minute, direction, messages)
            VALUES (date_trunc('minute', OLD.created_at), OLD.direction, -1);
        END IF;
    ELSIF (OLD.created_at, OLD.direction) IS DISTINCT FROM (NEW.created_at, NEW.direction) THEN
        IF OLD.created_at >= now() - interval '2 hours' THEN
            INSERT INTO sms_message_minutes (minute, direction, messages)
            VALUES (date_trunc('minute', OLD.created_at), OLD.direction, -1);
        END IF;
        IF NEW.created_at >= now() - interval '2 hours' THEN
            INSERT INTO sms_message_minutes (minute, direction, messages)
            VALUES (date_trunc('minute', NEW.created_at), NEW.direction, 1);
        END IF;
    END IF;
    RETURN NULL;
END $$;

-- What the last two hours already hold.
INSERT INTO sms_message_minutes (minute, direction, messages)
SELECT date_trunc('minute', created_at), direction, count(*)
FROM sms_messages WHERE created_at >= now() - interval '2 hours'
GROUP BY 1, 2;
