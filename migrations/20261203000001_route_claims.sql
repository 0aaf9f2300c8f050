-- A route job's claim on its message while it calls the agent. A second run of the same work (a
-- job re-queued while its first run still works, a replay) finds the claim and does not call the
-- agent again; a claim left by a run that died expires and the next run takes it over, counted.
-- Nullable columns and a constant default: no table rewrite, old binaries unaffected.
ALTER TABLE sms_messages
    ADD COLUMN route_claimed_by uuid,
    ADD COLUMN route_claimed_until timestamptz,
    ADD COLUMN route_calls integer NOT NULL DEFAULT 0;

COMMENT ON COLUMN sms_messages.route_calls IS
    'Agent calls started for this message (claims taken): more than its routing decisions means a run died after claiming.';
