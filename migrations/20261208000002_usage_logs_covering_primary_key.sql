-- The covering index becomes the primary key (same key columns, so the fold's ON CONFLICT and
-- every reader are unchanged) and the old index goes: one index to keep up, not two. Both steps
-- are catalog changes under one short lock; the index was built before, concurrently.
SET lock_timeout = '5s';
SET statement_timeout = '30s';
ALTER TABLE sms_usage_logs
    -- The constraint dropped is added back in this statement, under its name:
    -- squawk-ignore ban-drop-constraint
    DROP CONSTRAINT sms_usage_logs_pkey,
    ADD CONSTRAINT sms_usage_logs_pkey PRIMARY KEY USING INDEX sms_usage_logs_covering;
