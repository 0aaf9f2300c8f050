-- Usage is a ledger, not a scan (issue 21): /usage read every message of its window (4 s for 30
-- days on a year of data, 17 MB answers). Counts and segments per tenant, direction, status and
-- UTC day are kept by triggers on sms_messages, in the transactions that change the messages, so
-- the ledger is exact whichever binary (or psql session) writes. Triggers append to
-- sms_usage_deltas rather than updating a day's row: concurrent writers of one tenant's day would
-- otherwise queue on that row's lock until commit. The reconciler folds deltas into
-- sms_usage_logs (shared::usage::fold); a read sums both, in one snapshot, so it is exact whether
-- or not the fold has run. Like the old query, only messages linked to a conversation count, and
-- each for the tenant it belonged to (messages.tenant_id; '' here for none, as the key needs a
-- value). The backfill of what is already stored is the next migration, so that this one's lock
-- on sms_messages (to create the triggers) is brief.
SET lock_timeout = '5s';
SET statement_timeout = '30s';

CREATE TABLE sms_usage_logs (
    tenant_id TEXT   NOT NULL,
    direction TEXT   NOT NULL,
    status    TEXT   NOT NULL,
    day       DATE   NOT NULL,
    messages  BIGINT NOT NULL,
    segments  BIGINT NOT NULL,
    -- A page of /usage walks tenants in order, a tenant's rows grouped as the answer groups them.
    PRIMARY KEY (tenant_id, direction, status, day)
);

CREATE TABLE sms_usage_deltas (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id TEXT   NOT NULL,
    direction TEXT   NOT NULL,
    status    TEXT   NOT NULL,
    day       DATE   NOT NULL,
    messages  BIGINT NOT NULL,
    segments  BIGINT NOT NULL
);

-- Inserts: one delta row per (tenant, direction, status, day) of the statement (a group commit
-- of 64 webhooks writes one or a few).
CREATE FUNCTION sms_usage_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sms_usage_deltas (tenant_id, direction, status, day, messages, segments)
    SELECT COALESCE(tenant_id, ''), direction, delivery_status, (created_at AT TIME ZONE 'UTC')::date,
           count(*), COALESCE(sum(num_segments), 0)
    FROM usage_new WHERE conversation_id IS NOT NULL
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

-- Updates and deletes: the old row's contribution out, the new one's in.
CREATE FUNCTION sms_usage_changed() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END $$;

CREATE TRIGGER sms_usage_insert AFTER INSERT ON sms_messages
    REFERENCING NEW TABLE AS usage_new FOR EACH STATEMENT EXECUTE FUNCTION sms_usage_inserted();

-- Row-level with a column list and WHEN, so that the many updates that change nothing counted
-- (routing, reconcile marks, language) cost nothing.
CREATE TRIGGER sms_usage_update
    AFTER UPDATE OF tenant_id, conversation_id, direction, delivery_status, num_segments, created_at
    ON sms_messages FOR EACH ROW
    WHEN ((OLD.tenant_id, OLD.conversation_id IS NULL, OLD.direction, OLD.delivery_status,
           OLD.num_segments, OLD.created_at)
          IS DISTINCT FROM
          (NEW.tenant_id, NEW.conversation_id IS NULL, NEW.direction, NEW.delivery_status,
           NEW.num_segments, NEW.created_at))
    EXECUTE FUNCTION sms_usage_changed();

CREATE TRIGGER sms_usage_delete AFTER DELETE ON sms_messages
    FOR EACH ROW EXECUTE FUNCTION sms_usage_changed();
