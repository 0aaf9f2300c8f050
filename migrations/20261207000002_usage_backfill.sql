-- The usage ledger's starting point: what is already stored, counted once, online (no lock that
-- stops writers; the triggers of the previous migration record every change from its commit).
-- Exact by construction: one statement is one snapshot, so the messages it counts and the deltas
-- it deletes (changes committed after the triggers but already in those counts) are the same
-- state; deltas committed later stay and are folded later. The fold takes the same advisory lock
-- (shared::usage::FOLD_LOCK), so none runs between this statement's snapshot and its commit.
SET lock_timeout = '5s';

SELECT pg_advisory_xact_lock(7320113);

WITH counted AS (
         SELECT COALESCE(tenant_id, '') AS tenant_id, direction, delivery_status AS status,
                (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS messages,
                COALESCE(sum(num_segments), 0) AS segments
         FROM sms_messages WHERE conversation_id IS NOT NULL
         GROUP BY 1, 2, 3, 4),
     old_deltas AS (DELETE FROM sms_usage_deltas),
     -- Empty on a first run; run again (as a repair), days nothing counts any more go.
     stale AS (DELETE FROM sms_usage_logs l WHERE NOT EXISTS (
         SELECT 1 FROM counted c
         WHERE (c.tenant_id, c.direction, c.status, c.day) = (l.tenant_id, l.direction, l.status, l.day)))
INSERT INTO sms_usage_logs (tenant_id, direction, status, day, messages, segments)
SELECT * FROM counted
ON CONFLICT (tenant_id, direction, status, day) DO UPDATE
SET messages = EXCLUDED.messages, segments = EXCLUDED.segments;
